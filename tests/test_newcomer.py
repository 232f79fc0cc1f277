"""A newcomer's first commands: init, from-rake, demo, and a clean install."""

from __future__ import annotations

import json
import subprocess
import sys
import venv
from collections.abc import Iterator
from pathlib import Path

import pytest

from imap_ingest.cli import main
from imap_ingest.config import SubmitOptions, load
from imap_ingest.trackers import Envelope, Kind
from imap_ingest.trackers.directory import Directory

from .support.ingest_env import ROOT

SEED_CRON = ("cd /usr/local/redmine && /usr/local/bin/ruby /usr/local/bin/rake -f "
             "/usr/local/redmine/Rakefile redmine:email:receive_imap RAILS_ENV=\"production\" "
             "host=192.0.2.10 port=993 username=user password=xxxxxxxx ssl=SSL "
             "folder=redmine.request project=project category=request "
             "move_on_failure=redmine.failed")
SECRETS = {"IMAP_PASSWORD": "p", "REDMINE_MAIL_KEY": "k", "WEBHOOK_SECRET": "s"}


@pytest.fixture
def secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)


@pytest.mark.parametrize("tracker", ["redmine", "rt", "webhook"])
def test_init_writes_a_config_that_loads(tmp_path: Path, tracker: str, secrets: None,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    """The starter file is valid as written (only the secrets it names must be exported)."""
    path = tmp_path / "config.yaml"
    assert main(["init", "--tracker", tracker, "-o", str(path)]) == 0
    assert "EDIT" in path.read_text() and f"imap-ingest check -c {path}" in capsys.readouterr().out
    config = load(path)
    assert config.accounts[0].folders[0].name == "INBOX"
    assert next(iter(config.targets.values())).type == tracker
    assert main(["init", "-o", str(path)]) == 73  # never overwritten silently


def test_from_rake_converts_the_seeds_cron_line(tmp_path: Path, secrets: None,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """The seed's crontab line gives a loadable config with the same folder and options."""
    assert main(["from-rake", SEED_CRON]) == 0
    out = capsys.readouterr().out
    assert "xxxxxxxx" not in out and "ssl=SSL: Redmine turns SSL on for any value" in out
    path = tmp_path / "config.yaml"
    path.write_text(out)
    config = load(path)
    account = config.accounts[0]
    assert (account.host, account.effective_port, account.security) == ("192.0.2.10", 993, "ssl")
    folder = account.folders[0]
    assert (folder.name, folder.project, folder.category, folder.move_on_failure) == (
        "redmine.request", "project", "request", "redmine.failed")


@pytest.mark.parametrize(("options", "expected", "note"), [
    ("ssl=0", "security: ssl", "ssl=0: Redmine turns SSL on for any value"),
    ("ssl=force", "verify_tls: false", "skips certificate checks"),
    ("starttls=false", "security: starttls", ""),
    ("no_permission_check=true", "no_permission_check: false", "counts only 1"),
    ("no_notification=1", "no_notification: true", ""),
    ("private=0", "is_private: true", "private for any value"),
    ("unknown_user=accept default_group=clients", "unknown_user: accept", ""),
    ("", "security: none", "the password went in clear"),
])
def test_from_rake_keeps_redmines_quirks(options: str, expected: str, note: str,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    """from-rake translates rake options as Redmine reads them, noting its quirks."""
    assert main(["from-rake", f"host=imap.example.org {options}"]) == 0
    out = capsys.readouterr().out
    assert expected in out and note in out


def test_directory_target_is_idempotent(tmp_path: Path) -> None:
    """Writing one message twice replaces its files: no second copy."""
    from imap_ingest.trackers.directory import DirectoryTarget

    target = Directory(DirectoryTarget(type="directory", path=tmp_path / "out"))
    envelope = Envelope("acct", "IN/BOX", 7, 3)
    raw = b"Subject: x\r\nMessage-ID: <d@x>\r\n\r\nbody"
    for _ in range(2):
        outcome = target.submit(raw, SubmitOptions(), envelope)
        assert outcome.kind is Kind.SUCCESS and outcome.ticket == "acct-IN_BOX-7-3"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["acct-IN_BOX-7-3.eml",
                                                                     "acct-IN_BOX-7-3.json"]
    assert (tmp_path / "out" / "acct-IN_BOX-7-3.eml").read_bytes() == raw
    summary = json.loads((tmp_path / "out" / "acct-IN_BOX-7-3.json").read_text())
    assert summary["subject"] == "x" and "raw_base64" not in summary


@pytest.fixture(scope="module")
def clean_venv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh virtualenv with the package installed from the source tree (not editable),
    with its demo extra: what `pip install '.[demo]'` gives a newcomer."""
    home = tmp_path_factory.mktemp("venv")
    venv.create(home, with_pip=True)
    subprocess.run([home / "bin" / "python", "-m", "pip", "install", "-q",
                    "--disable-pip-version-check", f"{ROOT}[demo]"], check=True,
                   capture_output=True)
    yield home / "bin"


def test_installed_console_script_help_and_init(clean_venv: Path, tmp_path: Path) -> None:
    """Entry points and package data (templates, schema) are in the installed package."""
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([clean_venv / "imap-ingest", *args], cwd=tmp_path,
                              capture_output=True, text=True)

    help_text = run("--help")
    assert help_text.returncode == 0 and "imap-ingest run --once" in help_text.stdout
    assert run("init", "--tracker", "rt").returncode == 0
    assert "type: rt" in (tmp_path / "config.yaml").read_text()
    schema = subprocess.run([clean_venv / "python", "-c", "from importlib import resources; "
                             "print(resources.files('imap_ingest').joinpath("
                             "'schemas/webhook.schema.json').read_text()[:40])"],
                            capture_output=True, text=True, cwd=tmp_path)
    assert '"$schema"' in schema.stdout


def test_demo_on_a_clean_install(clean_venv: Path, tmp_path: Path) -> None:
    """`imap-ingest demo` on a clean install shows each sample and leaves no server."""
    # For each sample it shows the rule, outcome and place, and writes the accepted mail as
    # .eml + .json.
    result = subprocess.run([clean_venv / "imap-ingest", "demo"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    table = result.stdout.splitlines()
    rows = {line.split()[0]: line for line in table if line[:2].strip().isdigit()}
    assert len(rows) == 20
    assert "request-form" in rows["14"] and "submitted" in rows["14"]
    assert "loop:auto-submitted,exchange-loop" in rows["12"] and rows["12"].endswith("Loops")
    assert "loop:dsn,mailer-daemon,empty-return-path" in rows["13"]
    assert "loop:auto-submitted,redmine,own-address" in rows["15"]
    assert "mailing-lists" in rows["16"] and rows["16"].endswith("Lists")
    assert "申請" in rows["10"] and "submitted" in rows["10"]
    written = sorted((tmp_path / "imap-ingest-demo").iterdir())
    submitted = [line for line in rows.values() if " submitted " in line]
    assert len(written) == 2 * len(submitted) == 28
    form = next(p for p in written if p.name.endswith("-114.eml")).read_bytes()
    assert b"Auto-Submitted" not in form and form.startswith(b"From: Dave <dave@example.org>")
    assert "pymap" not in subprocess.run(["ps", "-eo", "args"], capture_output=True,
                                         text=True).stdout.replace(sys.executable, "")
