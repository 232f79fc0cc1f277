"""What the configuration does with secrets and with the ways they can leak: whitespace and
control characters, errors that never echo a value, plain http off loopback, secrets inside
URLs and webhook headers, duplicate names, and the cautions `check` and the service show."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from imap_ingest.cli import main
from imap_ingest.config import Config, load
from imap_ingest.errors import ConfigError

from .support.dovecot import ImapAccount
from .support.ingest_env import write_config
from .support.mail import make
from .support.redmine_server import FakeRedmine

WEBHOOK = {"type": "webhook", "url": "https://hooks.example.org/services/T0/B0/abcd1234efgh"}


def base(**target: Any) -> dict[str, Any]:
    return {
        "accounts": [{"name": "support", "host": "imap.example.org", "username": "helpdesk",
                      "password": "hunter2-long", "folders": [{"name": "INBOX"}]}],
        "targets": {"redmine": {"type": "redmine", "url": "https://redmine.example.org",
                                "key": "redmine-key-1", **target}},
    }


def load_data(tmp_path: Path, data: dict[str, Any], environ: dict[str, str] | None = None
              ) -> Config:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return load(path, environ or {})


def error(tmp_path: Path, data: dict[str, Any], environ: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load_data(tmp_path, data, environ)
    return str(info.value)


def test_whitespace_around_secrets_from_files_and_the_environment_is_stripped(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """password_file, key_env and an IMAP_INGEST_ override lose surrounding whitespace."""
    (tmp_path / "pw").write_text("  file-password \r\n\n")
    monkeypatch.setenv("RM_KEY", "\tkey-from-env\n")
    data = base()
    del data["accounts"][0]["password"], data["targets"]["redmine"]["key"]
    data["accounts"][0]["password_file"] = str(tmp_path / "pw")
    data["targets"]["redmine"]["key_env"] = "RM_KEY"
    data["targets"]["hook"] = dict(WEBHOOK)
    data["accounts"][0]["folders"][0]["target"] = "redmine"
    config = load_data(tmp_path, data, {"IMAP_INGEST_TARGETS__HOOK__TOKEN": "hook-token\n"})
    assert config.accounts[0].secret.get_secret_value() == "file-password"
    assert {"key-from-env", "hook-token"} <= set(config.secrets())


@pytest.mark.parametrize("where", ["password", "password_file", "password_env", "override",
                                   "header"])
def test_a_control_character_in_a_secret_is_refused_naming_the_key_only(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    """A line break or ESC inside a secret is refused at load, naming the key, not the value."""
    value = "secret-\x1b[0m-part\nsecond-line"
    data = base()
    environ = {}
    account = data["accounts"][0]
    if where == "password":
        account["password"] = value
    elif where == "password_file":
        del account["password"]
        (tmp_path / "pw").write_text(value)
        account["password_file"] = str(tmp_path / "pw")
    elif where == "password_env":
        del account["password"]
        monkeypatch.setenv("IMAP_PW", value)
        account["password_env"] = "IMAP_PW"
    elif where == "override":
        environ["IMAP_INGEST_ACCOUNTS__SUPPORT__PASSWORD"] = value
    else:
        data["targets"] = {"hook": {**WEBHOOK, "headers": {"X-Api-Key": value}}}
    text = error(tmp_path, data, environ)
    key = "targets.hook.headers.X-Api-Key" if where == "header" else (
        f"accounts[0].{'password' if where == 'override' else where}")
    assert f"{key}: " in text and "control character" in text
    assert "secret-" not in text and "second-line" not in text


@pytest.mark.parametrize("key", ["key_file", "key_env"])
def test_a_secret_pasted_into_key_file_or_key_env_is_not_echoed(tmp_path: Path,
                                                               key: str) -> None:
    """The value of key_file or key_env that names nothing readable is never shown."""
    data = base()
    del data["targets"]["redmine"]["key"]
    data["targets"]["redmine"][key] = "Pasted-Secret-4f3a9c"
    text = error(tmp_path, data)
    assert f"targets.redmine.{key}: " in text
    assert "Pasted-Secret" not in text and "4f3a9c" not in text


@pytest.mark.parametrize(("url", "allow", "refused"), [
    ("http://redmine.example.org", False, True),
    ("http://redmine.example.org", True, False),
    ("http://127.0.0.1:3000", False, False),
    ("http://[::1]:3000", False, False),
    ("http://localhost:3000", False, False),
    ("https://redmine.example.org", False, False),
], ids=["off-loopback", "allowed", "ipv4-loopback", "ipv6-loopback", "localhost", "https"])
def test_plain_http_off_loopback_needs_allow_insecure(tmp_path: Path, url: str, allow: bool,
                                                      refused: bool) -> None:
    """http:// to a tracker off loopback is refused unless allow_insecure: true."""
    data = base(url=url, allow_insecure=allow)
    if refused:
        text = error(tmp_path, data)
        assert "targets.redmine.url: " in text and "allow_insecure: true" in text
    else:
        assert load_data(tmp_path, data).targets["redmine"]


def test_url_userinfo_webhook_paths_and_header_values_are_secrets(tmp_path: Path) -> None:
    """secrets() holds URL userinfo, a webhook URL's path and query, and its header values."""
    data = base(url="https://proxy-user:p%40ss%2Fw0rd@redmine.example.org/redmine")
    data["targets"]["hook"] = {**WEBHOOK, "url": WEBHOOK["url"] + "?token=q-s3cret",
                               "headers": {"authorization": "Basic dXNlcjpwYXNz",
                                           "X-Api-Key": "api-key-123"}}
    data["accounts"][0]["folders"][0]["target"] = "redmine"
    secrets = set(load_data(tmp_path, data).secrets())
    assert {"p%40ss%2Fw0rd", "p@ss/w0rd", "proxy-user:p%40ss%2Fw0rd"} <= secrets
    assert "/services/T0/B0/abcd1234efgh?token=q-s3cret" in secrets
    assert {"Basic dXNlcjpwYXNz", "api-key-123"} <= secrets
    assert "/redmine" not in secrets  # a Redmine sub-path is not a secret


def test_duplicate_account_names_are_refused(tmp_path: Path) -> None:
    """Two accounts of one name (any case) are refused, naming the second."""
    data = base()
    data["accounts"].append({**data["accounts"][0], "name": "Support"})
    assert "accounts[1].name: another account is named 'support'" in error(tmp_path, data)


def test_duplicate_folder_names_in_an_account_are_refused(tmp_path: Path) -> None:
    """One folder listed twice in an account is refused; INBOX in any case is one folder."""
    data = base()
    data["accounts"][0]["folders"] = [{"name": "INBOX"}, {"name": "Requests"},
                                      {"name": "inbox"}]
    text = error(tmp_path, data)
    assert "accounts[0].folders[2].name: the account lists folder 'inbox' twice" in text
    data["accounts"][0]["folders"] = [{"name": "Requests"}, {"name": "requests"}]
    assert load_data(tmp_path, data)  # IMAP names other than INBOX are case-sensitive


def test_cautions_name_what_crosses_the_network_unprotected(tmp_path: Path) -> None:
    """Turned-off certificate checks and allowed plain http are listed, with their keys."""
    data = base(url="http://redmine.example.org", allow_insecure=True)
    data["accounts"][0]["verify_tls"] = False
    data["targets"]["hook"] = {**WEBHOOK, "verify_tls": False}
    data["accounts"][0]["folders"][0]["target"] = "redmine"
    cautions = dict(load_data(tmp_path, data).cautions())
    assert set(cautions) == {"accounts[0].verify_tls", "targets.redmine.url",
                             "targets.hook.verify_tls"}
    assert "http://redmine.example.org:80 is plain http" in cautions["targets.redmine.url"]
    assert "certificate checks are off" in cautions["targets.hook.verify_tls"]
    assert load_data(tmp_path, base()).cautions() == []


def test_check_warns_of_what_crosses_the_network_unprotected(
        tmp_path: Path, imap: ImapAccount, redmine: FakeRedmine,
        capsys: pytest.CaptureFixture[str]) -> None:
    """check prints a WARN line per caution, and its exit code stays that of the checks."""
    path = write_config(tmp_path / "config.yaml", imap, redmine.url, key=redmine.key,
                        target={"verify_tls": False})
    assert main(["check", "-c", str(path)]) == 0
    out = capsys.readouterr().out
    assert "WARN  targets.redmine.verify_tls: certificate checks are off" in out


def test_the_service_logs_its_cautions_at_start(tmp_path: Path, imap: ImapAccount,
                                                redmine: FakeRedmine,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """A run with verify_tls: false logs it as a warning before anything else."""
    path = write_config(tmp_path / "config.yaml", imap, redmine.url, key=redmine.key,
                        account={"verify_tls": False})
    assert main(["run", "--once", "-c", str(path)]) == 0
    err = capsys.readouterr().err
    assert "WARNING accounts[0].verify_tls: certificate checks are off" in err


def test_explain_masks_webhook_headers_and_secret_paths(tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]
                                                        ) -> None:
    """explain names the method once and shows no header value, URL path or password."""
    data = base()
    data["targets"] = {"hook": {**WEBHOOK, "method": "PUT", "token": "bearer-token-1",
                                "headers": {"authorization": "Basic dXNlcjpwYXNz",
                                            "X-Api-Key": "api-key-123"}}}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    (tmp_path / "m.eml").write_bytes(make(subject="hello"))
    assert main(["explain", "-c", str(path), "--folder", "INBOX", str(tmp_path / "m.eml")]) == 0
    out = capsys.readouterr().out
    assert "target hook: PUT https://hooks.example.org:443/***" in out
    assert "POST" not in out and "PUT PUT" not in out
    assert "header X-Api-Key = ***" in out and "header authorization = ***" in out
    for secret in ("dXNlcjpwYXNz", "api-key-123", "bearer-token-1", "abcd1234efgh"):
        assert secret not in out


def test_an_alert_webhook_url_and_password_are_secrets(tmp_path: Path) -> None:
    """The alert's Slack-style webhook path and its SMTP password are redacted too."""
    data = base()
    data["alert"] = {"webhook": {"url": "https://hooks.example.org/services/T1/B1/alertSecret9"},
                     "email": {"to": "ops@example.org", "username": "ops",
                               "password": "smtp-password-1\n"}}
    secrets = set(load_data(tmp_path, data).secrets())
    assert {"/services/T1/B1/alertSecret9", "smtp-password-1"} <= secrets
