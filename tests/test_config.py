"""Loading the configuration: defaults, environment overrides, and errors naming file and key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from imap_ingest.config import load, parse_duration, parse_size
from imap_ingest.errors import ConfigError
from imap_ingest.trackers.redmine import RedmineTarget


def base() -> dict[str, Any]:
    return {
        "accounts": [{
            "name": "support", "host": "imap.example.org", "username": "helpdesk",
            "password": "hunter2",
            "folders": [{"name": "INBOX"}, {"name": "Requests", "interval": "5m"}],
        }],
        "targets": {"redmine": {"type": "redmine", "url": "https://redmine.example.org/",
                                "key": "k3y"}},
    }


def write(tmp_path: Path, data: object) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return path


def error(tmp_path: Path, data: object, environ: dict[str, str] | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load(write(tmp_path, data), environ or {})
    return info.value


def test_defaults(tmp_path: Path) -> None:
    """A minimal file gets port 993 for ssl, 60 s interval, verified TLS, the one target."""
    config = load(write(tmp_path, base()), {})
    account = config.accounts[0]
    assert (account.effective_port, account.security, account.verify_tls) == (993, "ssl", True)
    assert [f.interval for f in account.folders] == [60.0, 300.0]
    target = config.targets["redmine"]
    assert isinstance(target, RedmineTarget) and target.url == "https://redmine.example.org"
    assert config.target_for(account.folders[0]) == "redmine"


def test_environment_overrides_by_index_and_by_name(tmp_path: Path) -> None:
    """IMAP_INGEST_ variables reach list items by index or name, and dict keys."""
    environ = {
        "IMAP_INGEST_ACCOUNTS__0__PASSWORD": "from-env",
        "IMAP_INGEST_ACCOUNTS__SUPPORT__FOLDERS__REQUESTS__INTERVAL": "30s",
        "IMAP_INGEST_TARGETS__REDMINE__KEY": "env-key",
        "IMAP_INGEST_ACCOUNTS__0__FOLDERS__0__RULES": '[{"then": "skip"}]',
    }
    config = load(write(tmp_path, base()), environ)
    account = config.accounts[0]
    assert account.secret.get_secret_value() == "from-env"
    assert account.folders[1].interval == 30.0
    assert account.folders[0].rules[0].action.skip
    target = config.targets["redmine"]
    assert isinstance(target, RedmineTarget) and target.secret.get_secret_value() == "env-key"


def test_state_dir_default_and_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """state_dir defaults under $XDG_STATE_HOME; the container sets IMAP_INGEST_STATE_DIR."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    path = write(tmp_path, base())
    assert load(path, {}).state_dir == tmp_path / "xdg" / "imap-ingest"
    overridden = load(path, {"IMAP_INGEST_STATE_DIR": "/var/lib/imap-ingest"})
    assert overridden.state_dir == Path("/var/lib/imap-ingest")
    dockerfile = (Path(__file__).parent.parent / "Dockerfile").read_text()
    assert "IMAP_INGEST_STATE_DIR=/var/lib/imap-ingest" in dockerfile


def test_yaml_off_is_dedupe_off(tmp_path: Path) -> None:
    """`dedupe: off` is what users write; YAML 1.1 hands it over as false."""
    path = write(tmp_path, yaml.safe_dump(base()) + "dedupe: off\n")
    assert load(path, {}).dedupe == "off"


def test_config_variable_is_not_a_key(tmp_path: Path) -> None:
    """IMAP_INGEST_CONFIG names the file (the -c default); it is not read as a key."""
    path = write(tmp_path, base())
    assert load(path, {"IMAP_INGEST_CONFIG": str(path)}).accounts[0].name == "support"


def test_secrets_from_file_and_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """password_file and key_env are read at load time; a trailing newline is dropped."""
    (tmp_path / "pw").write_text("file-pass\n")
    data = base()
    del data["accounts"][0]["password"]
    data["accounts"][0]["password_file"] = str(tmp_path / "pw")
    data["targets"]["redmine"] = {"type": "redmine", "url": "https://r", "key_env": "RM_KEY"}
    monkeypatch.setenv("RM_KEY", "key-from-env")
    config = load(write(tmp_path, data), {})
    assert config.accounts[0].secret.get_secret_value() == "file-pass"
    target = config.targets["redmine"]
    assert isinstance(target, RedmineTarget)
    assert target.secret.get_secret_value() == "key-from-env"


def _set(data: dict[str, Any], path: str, value: object) -> dict[str, Any]:
    node: Any = data
    *keys, last = path.split(".")
    for key in keys:
        node = node[int(key)] if key.isdigit() else node[key]
    if value is None:
        del node[int(last) if last.isdigit() else last]
    else:
        node[int(last) if last.isdigit() else last] = value
    return data


BAD = [
    ("accounts.0.folders.1.move_on_faliure", "x", "accounts[0].folders[1].move_on_faliure",
     "unknown key"),
    ("accounts.0.folders.0.interval", "soon", "accounts[0].folders[0].interval",
     "not a duration"),
    ("accounts.0.password", None, "accounts[0]", "give one of password"),
    ("accounts.0.password_env", "NOPE_UNSET", "accounts[0].password_env",
     "variable named here is not set"),
    ("accounts.0.password_file", "/nonexistent/pw", "accounts[0].password_file",
     "cannot read the file named here (No such file"),
    ("accounts.0.security", "none", "accounts[0].security", "clear text"),
    ("accounts.0.security", "tls", "accounts[0].security", "'ssl', 'starttls' or 'none'"),
    ("accounts.0.folders.0.target", "jira", "accounts[0].folders[0].target",
     "no target named 'jira'"),
    ("accounts.0.folders.0.rules", [{"if": ["^From:", "!^Subject: ("], "then": "skip"}],
     "accounts[0].folders[0].rules[0].if[1]", "bad regular expression"),
    ("accounts.0.folders.0.rules", [{"then": "sumbit"}], "accounts[0].folders[0].rules[0].then",
     "'sumbit' is not an action"),
    ("accounts.0.folders.0.rules", [{"then": {"submit": {"projekt": "x"}}}],
     "accounts[0].folders[0].rules[0].then.submit.projekt", "unknown key"),
    ("accounts.0.folders.0.rules", [{"then": {"submit": {"target": "rt"}}}],
     "accounts[0].folders[0].rules[0].then.submit.target", "no target named 'rt'"),
    ("accounts.0.folders.0.rules", [{"then": {"move": "X", "skip": True}}],
     "accounts[0].folders[0].rules[0].then", "give one of submit, skip, move, discard"),
    ("accounts.0.folders", [], "accounts[0].folders", "at least 1"),
    ("targets.redmine.url", "redmine.example.org", "targets.redmine.url", "http:// or https://"),
    ("targets.redmine.key", None, "targets.redmine", "give one of key"),
    ("targets.redmine.type", "jira", "targets.redmine.type",
     "must be one of redmine, rt, webhook, directory"),
    ("targets.redmine.unknown_user", "maybe", "targets.redmine.unknown_user", "'accept'"),
    ("accounts.0.port", 99999, "accounts[0].port", "less than or equal to 65535"),
]


@pytest.mark.parametrize(("path", "value", "key", "reason"), BAD, ids=[b[2] + ":" + b[3]
                                                                       for b in BAD])
def test_bad_config_names_file_key_and_reason(tmp_path: Path, path: str, value: object, key: str,
                                              reason: str) -> None:
    """Each mistake gives one message naming the file, the key path and what is wrong."""
    exc = error(tmp_path, _set(base(), path, value))
    assert str(tmp_path / "config.yaml") in str(exc)
    assert f"{key}: " in str(exc) and reason in str(exc)
    assert exc.exit_code == 78


def test_several_targets_need_a_name(tmp_path: Path) -> None:
    """With two targets a folder must say which one it uses."""
    data = base()
    data["targets"]["other"] = {"type": "redmine", "url": "https://o", "key": "x"}
    exc = error(tmp_path, data)
    assert "accounts[0].folders[0].target: several targets" in str(exc)


@pytest.mark.parametrize(("text", "reason"), [
    ("accounts:\n  - name: x\n   host: y\n", "not valid YAML: line 3"),
    ("- just a list\n", "top level must be a mapping"),
])
def test_unreadable_yaml(tmp_path: Path, text: str, reason: str) -> None:
    """YAML that does not parse or has the wrong shape is named with its line."""
    assert reason in str(error(tmp_path, text))


def test_missing_file(tmp_path: Path) -> None:
    """A missing config file is a ConfigError naming it."""
    with pytest.raises(ConfigError, match=r"nope\.yaml: cannot read: No such file"):
        load(tmp_path / "nope.yaml", {})


def test_bad_env_override_names_variable(tmp_path: Path) -> None:
    """An override pointing at a list item that does not exist says so."""
    exc = error(tmp_path, base(), {"IMAP_INGEST_ACCOUNTS__7__PASSWORD": "x"})
    assert "IMAP_INGEST_ACCOUNTS__7__PASSWORD: no item '7'" in str(exc)


def test_errors_never_contain_secrets(tmp_path: Path) -> None:
    """Even a secret of the wrong type is not echoed back in the error."""
    data = base()
    data["accounts"][0]["password"] = ["hunter2-in-a-list"]
    data["targets"]["redmine"]["key"] = {"k": "k3y-in-a-map"}
    text = str(error(tmp_path, data))
    assert "accounts[0].password" in text and "targets.redmine.key" in text
    assert "hunter2" not in text and "k3y" not in text


@pytest.mark.parametrize(("text", "seconds"), [(30, 30), ("45s", 45), ("5m", 300), ("1h", 3600),
                                               ("500ms", 0.5), ("2d", 172800)])
def test_durations(text: object, seconds: float) -> None:
    """Durations parse from seconds or a number with a unit."""
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(("text", "size"), [(100, 100), ("512k", 524288), ("25M", 26214400),
                                            ("1G", 1073741824), ("10MB", 10485760)])
def test_sizes(text: object, size: int) -> None:
    """Sizes parse from bytes or a number with a binary unit."""
    assert parse_size(text) == size


def test_example_config_loads_and_reproduces_the_seed_rule(monkeypatch: pytest.MonkeyPatch,
                                                          tmp_path: Path) -> None:
    """config.example.yaml is valid and its rules pass form mail, not Redmine's own notices."""
    from imap_ingest.message import Message
    from imap_ingest.rules import Act, RuleSet

    from .support.mail import make

    (tmp_path / "pw").write_text("pw")
    monkeypatch.setenv("REDMINE_MAIL_KEY", "k")
    example = Path(__file__).parent.parent / "config.example.yaml"
    config = load(example, {"IMAP_INGEST_ACCOUNTS__SUPPORT__PASSWORD_FILE": str(tmp_path / "pw")})
    rules = RuleSet.for_folder(config.accounts[0].folders[0], config)
    form = make(sender="Request form <request@example.org>",
                headers={"Auto-Submitted": "auto-generated"})
    notice = make(sender="request@example.org",
                  headers={"Auto-Submitted": "auto-generated", "X-Mailer": "Redmine"})
    assert rules.evaluate(Message(form)).act is Act.SUBMIT
    assert rules.evaluate(Message(notice)).act is Act.SKIP


@pytest.mark.parametrize("line", ["申請者: taro@example.org", "Requester: taro@example.org"])
def test_example_config_takes_the_requester_from_the_form_body(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, line: str) -> None:
    """config.example.yaml's form rule makes the requester in the body the From."""
    from imap_ingest.message import Message
    from imap_ingest.rules import Act, RuleSet

    from .support.mail import make

    (tmp_path / "pw").write_text("pw")
    monkeypatch.setenv("REDMINE_MAIL_KEY", "k")
    example = Path(__file__).parent.parent / "config.example.yaml"
    config = load(example, {"IMAP_INGEST_ACCOUNTS__SUPPORT__PASSWORD_FILE": str(tmp_path / "pw")})
    form = make(sender="request@example.org", headers={"Auto-Submitted": "auto-generated"},
                body=f"New laptop\n{line}\n")
    decision = RuleSet.for_folder(config.accounts[0].folders[0], config).evaluate(Message(form))
    assert (decision.act, decision.rule) == (Act.SUBMIT, "request-form-requester")
    assert Message(decision.submission(form)).sender == "taro@example.org"
