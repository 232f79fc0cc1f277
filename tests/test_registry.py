"""The tracker registry: a tracker declared in one file, as docs/adding-a-tracker.md says, is
picked up by config loading, open_tracker, run, check, explain and init."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import pytest
import yaml

from imap_ingest.cli import main
from imap_ingest.config import SubmitOptions, Target, load, target_types, templates
from imap_ingest.errors import ConfigError
from imap_ingest.trackers import Envelope, Kind, Outcome, open_tracker, registry
from imap_ingest.trackers.registry import register

from .support.dovecot import ImapAccount
from .support.ingest_env import ROOT
from .support.mail import make

# The toy tracker: all a new tracker needs, in one place, as a module of trackers/ has it.


class ToyTarget(Target):
    """A list in memory: each message's subject line and the toy's label."""

    type: Literal["toy"]
    label: str


SUBMITTED: list[tuple[str, bytes]] = []


class Toy:
    def __init__(self, target: ToyTarget) -> None:
        self._label = target.label

    def submit(self, raw: bytes, options: SubmitOptions, envelope: Envelope) -> Outcome:
        SUBMITTED.append((self._label, raw))
        return Outcome(Kind.SUCCESS, "the toy took it", ticket=str(len(SUBMITTED)))

    def preview(self, raw: bytes, options: SubmitOptions,
                envelope: Envelope) -> tuple[str, list[tuple[str, str]]]:
        return f"POST toy:{self._label}", [("bytes", str(len(raw)))]

    def check(self) -> Outcome:
        return Outcome(Kind.SUCCESS, f"toy {self._label} is listening")

    def close(self) -> None:
        pass


register(ToyTarget, Toy)


@pytest.fixture
def submitted() -> Iterator[list[tuple[str, bytes]]]:
    SUBMITTED.clear()
    yield SUBMITTED
    SUBMITTED.clear()


def write(tmp_path: Path, imap: ImapAccount | None, **toy: object) -> Path:
    account = {"name": "test", "host": imap.host if imap else "127.0.0.1",
               "port": imap.port if imap else 143, "security": "none",
               "username": imap.username if imap else "u",
               "password": imap.password if imap else "p", "folders": [{"name": "INBOX"}]}
    data = {"accounts": [account], "state_dir": str(tmp_path / "state"),
            "targets": {"play": {"type": "toy", "label": "blue", **toy}}}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_a_registered_tracker_is_a_target_type(tmp_path: Path) -> None:
    """`type: toy` loads into the toy's model, which gives the defaults every target has."""
    config = load(write(tmp_path, None, addresses=["Toy@example.org"]), {})
    target = config.targets["play"]
    assert isinstance(target, ToyTarget) and target.label == "blue"
    assert config.concurrency("play") == 1 and config.own_addresses() == {"toy@example.org"}
    assert isinstance(open_tracker(target), Toy)
    assert "toy" in target_types()


def test_its_keys_are_checked_like_any_other(tmp_path: Path) -> None:
    """The toy's model validates its entry: unknown keys and missing ones are named."""
    with pytest.raises(ConfigError) as info:
        load(write(tmp_path, None, colour="red", label=None), {})
    assert "targets.play.colour: unknown key" in str(info.value)
    with pytest.raises(ConfigError) as info:
        load(write(tmp_path, None, type="toys"), {})
    assert "targets.play.type: must be one of redmine, rt, webhook, directory, toy" in str(
        info.value)


def test_run_check_and_explain_go_through_it(tmp_path: Path, imap: ImapAccount,
                                             submitted: list[tuple[str, bytes]],
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """A pass submits through the toy, check reaches it, explain previews its submission."""
    raws = [make(subject=f"toy {n}") for n in range(3)]
    for raw in raws:
        imap.append("INBOX", raw)
    path = write(tmp_path, imap)
    (tmp_path / "one.eml").write_bytes(raws[0])
    assert main(["explain", "-c", str(path), "--folder", "INBOX", str(tmp_path / "one.eml")]) == 0
    assert f"target play: POST toy:blue\n    bytes = {len(raws[0])}" in capsys.readouterr().out
    assert main(["check", "-c", str(path)]) == 0
    assert "OK    target play: toy blue is listening" in capsys.readouterr().out
    assert main(["run", "--once", "-c", str(path)]) == 0
    assert submitted == [("blue", raw) for raw in raws]
    assert imap.messages("INBOX") == {}


def test_init_offers_it_once_it_has_a_template(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    """Without templates/toy.yaml init does not offer the toy; with one it writes it."""
    assert "toy" not in templates()
    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "toy.yaml").write_text(write(tmp_path, None).read_text())
    monkeypatch.setattr("imap_ingest.config.targets.TEMPLATES", tmp_path / "templates")
    assert list(templates()) == ["toy"]  # argparse's choices: main refuses any other
    out = tmp_path / "out.yaml"
    assert main(["init", "--tracker", "toy", "-o", str(out)]) == 0
    assert isinstance(load(out, {}).targets["play"], ToyTarget)


_LOOKUP = """\
import sys
from imap_ingest.trackers import registry
found = registry.lookup(sys.argv[1])
print(found.model.__name__, *(m for m in sys.modules if m.startswith("imap_ingest.trackers.")))
"""


# What each type's module imports of the others: directory writes webhook's JSON document.
_NEEDS = {"rt": set(), "redmine": set(), "webhook": set(), "directory": {"webhook"}}


@pytest.mark.parametrize("kind", sorted(_NEEDS))
def test_a_lookup_imports_only_its_trackers_module(kind: str) -> None:
    """Looking one type up imports trackers/TYPE.py and no tracker it does not use."""
    done = subprocess.run([sys.executable, "-c", _LOOKUP, kind], capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, check=True)
    found, *modules = done.stdout.split()
    assert found.lower() == f"{kind}target"
    trackers = {f"imap_ingest.trackers.{name}" for name in _NEEDS}
    assert trackers & set(modules) == {f"imap_ingest.trackers.{name}"
                                       for name in {kind, *_NEEDS[kind]}}


@pytest.mark.parametrize("name", ["toys", "_http", "registry", "../rt"])
def test_a_type_no_tracker_has_is_unknown(name: str) -> None:
    """A name that is no tracker's type, or a module of trackers/ that is none: KeyError."""
    with pytest.raises(KeyError):
        registry.lookup(name)


def test_a_tracker_registered_elsewhere_is_found() -> None:
    """The toy, registered by this file, is looked up like the package's own."""
    assert registry.lookup("toy").model is ToyTarget


def test_a_package_tracker_lives_in_the_module_its_type_names() -> None:
    """A model of trackers/foo.py for type bar is refused: a lookup of bar would not find it."""
    model = type("BarTarget", (Target,), {"__module__": "imap_ingest.trackers.foo",
                                          "__annotations__": {"type": Literal["bar"]}})
    with pytest.raises(TypeError, match=r"imap_ingest\.trackers\.bar"):
        register(model, Toy)
