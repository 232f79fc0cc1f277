"""The leak test: every failure scenario at once, then every output channel searched for
every configured secret in raw, URL-encoded, JSON-escaped and base64 form.

Scenarios: a tracker unreachable (its URL carrying a proxy's user:password), a 403 echoing
the key, a 500 echoing the request's headers, a TLS failure, a redirect to another host with
the secrets in its Location, a timeout, an IMAP server echoing the credentials it was sent,
an OAuth token endpoint that cannot be reached, a secret pasted into key_file:/key_env:, and
a service reloaded by SIGHUP with new secrets and a tracker echoing them; each command in
text and JSON logs, with and without --debug.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import signal
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import pytest
import yaml

from imap_ingest import logs
from imap_ingest.cli import main
from imap_ingest.config import load
from imap_ingest.errors import MailboxError
from imap_ingest.mailbox import Mailbox
from imap_ingest.trackers import Envelope, open_tracker

from .support.daemon import Daemon, free_port, get, get_quiet
from .support.dovecot import Dovecot, ImapAccount
from .support.hostile_imap import HostileImap, Script
from .support.ingest_env import ROOT, command
from .support.mail import make
from .support.process import wait_for
from .support.redmine_server import FakeRedmine, FakeRT, RecordingServer

IMAP_PASSWORD = "Imap+p@ss=w0rd.9"  # dovecot's static passdb takes [A-Za-z0-9_.+@=-]
SECRETS = {
    "imap password": IMAP_PASSWORD,
    "echoed imap password": 'echo-p@ss/w0rd"+=&x',
    "redmine key": 'rm-k3y/wörd"+=&%x',
    "reloaded redmine key": "rm-new/kéy+=&after",
    "url password": "url-p@ss:wörd/+=",
    "webhook token": "wh-tok/en+wörd==",
    "reloaded webhook token": "wh-new+tok/én=",
    "signing secret": 'sign-s3cret"\\ö+/',
    "header value": "hdr-v@lue/ö+x=1",
    "webhook path": "pathSecret9xyz",
    "oauth client secret": "oauth-cl/ient+séc=ret",
    "refresh token": "refresh-tok/en+val=ue",
}
FOLDERS = {"down": "down", "forbidden": "forbidden", "broken": "broken", "tls": "tls",
           "moved": "moved", "slow": "slow", "files": "files"}


def forms(secret: str) -> set[str]:
    """The forms a secret can travel in."""
    b64 = {base64.b64encode(secret.encode()).decode(),
           base64.urlsafe_b64encode(secret.encode()).decode()}
    return {secret, quote(secret), quote(secret, safe=""), quote_plus(secret),
            json.dumps(secret)[1:-1], json.dumps(secret, ensure_ascii=False)[1:-1],
            secret.encode().decode("latin-1"), *{text.rstrip("=") for text in b64}}


NEEDLES = [(name, form) for name, secret in SECRETS.items() for form in sorted(forms(secret))]
CHANNELS = ["run --once", "run --once --debug --log-format json", "check",
            "check --debug --log-format json", "explain", "status", "history",
            "pasted key_file", "pasted key_env", "daemon stderr", "daemon after reload",
            "metrics", "ledger", "files", "outcomes", "exceptions", "config repr"]


def _hostile_servers() -> dict[str, Any]:
    forbidden = FakeRedmine("another-key-entirely")
    forbidden.answer = lambda request: (
        (403, b"Access denied for key " + request.form.get("key", [b""])[0], 0)
        if request.method == "POST" else (200, b"", 0))
    broken = RecordingServer()
    broken.answer = lambda request: (500, json.dumps(request.headers).encode()
                                     + request.path.encode(), 0)
    tls = RecordingServer()  # plain http, named by an https:// URL
    moved = FakeRT()
    location = (f"http://proxy:{quote(SECRETS['url password'], safe='')}@10.1.2.3:8080/x"
                f"?key={quote(SECRETS['redmine key'], safe='')}")
    moved.answer = lambda request: (307, b"", 0, {"Location": location})
    slow = RecordingServer()
    slow.answer = lambda request: (204, b"", 2.0)
    return {"forbidden": forbidden, "broken": broken, "tls": tls, "moved": moved,
            "slow": slow}


def _config(tmp: Path, dovecot: Dovecot, username: str, echo: HostileImap,
            servers: dict[str, Any], listen: int) -> dict[str, Any]:
    url_pass = quote(SECRETS["url password"], safe="")
    hook_path = f"/services/T0ABC/B0DEF/{SECRETS['webhook path']}"
    hook = {"type": "webhook", "token": SECRETS["webhook token"],
            "signing_secret": SECRETS["signing secret"], "timeout": "1s",
            "headers": {"X-Api-Key": SECRETS["header value"]}}
    (tmp / "refresh-token.json").write_text(json.dumps({"refresh_token":
                                                        SECRETS["refresh token"]}))
    return {
        "accounts": [
            {"name": "main", "host": dovecot.host, "port": dovecot.port, "security": "none",
             "username": username, "password": IMAP_PASSWORD,
             "folders": [{"name": name, "target": target} for name, target in FOLDERS.items()]},
            {"name": "echo", "host": "127.0.0.1", "port": echo.port, "security": "none",
             "username": "echo-user", "password": SECRETS["echoed imap password"],
             "folders": [{"name": "INBOX", "target": "files"}]},
            {"name": "oauth", "host": dovecot.host, "port": dovecot.port, "security": "none",
             "username": username, "auth": "xoauth2",
             "oauth2": {"provider": "generic", "client_id": "imap-ingest",
                        "client_secret": SECRETS["oauth client secret"],
                        "token_url": f"https://127.0.0.1:{free_port()}/token",
                        "refresh_token_file": str(tmp / "refresh-token.json"), "timeout": "2s"},
             "folders": [{"name": "INBOX", "target": "files"}]},
        ],
        "targets": {
            "down": {"type": "redmine", "key": SECRETS["redmine key"], "timeout": "2s",
                     "url": f"https://proxy:{url_pass}@127.0.0.1:{free_port()}"},
            "forbidden": {"type": "redmine", "key": SECRETS["redmine key"],
                          "url": servers["forbidden"].url, "timeout": "2s"},
            "broken": {**hook, "url": servers["broken"].url + hook_path + "?t=q"},
            "tls": {**hook, "url": servers["tls"].url.replace("http:", "https:") + hook_path},
            "moved": {"type": "rt", "url": f"http://proxy:{url_pass}@" + servers["moved"].url[7:],
                      "timeout": "2s"},
            "slow": {**hook, "url": servers["slow"].url + hook_path},
            "files": {"type": "directory", "path": str(tmp / "out")},
        },
        "state_dir": str(tmp / "state"),
        "retry": {"first_delay": "1s"},
        "http": {"listen": f"127.0.0.1:{listen}"},
    }


def _run(path: Path, *args: str) -> str:
    """What ``imap-ingest ARGS -c PATH`` printed, as a process."""
    result = subprocess.run(command(*args, "-c", str(path)), cwd=ROOT, capture_output=True,
                            text=True, timeout=60)
    return result.stdout + result.stderr


def _main(path: Path, *args: str) -> str:
    """What ``imap-ingest ARGS -c PATH`` printed, run in this process (faster)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        main([*args, "-c", str(path)])
    return out.getvalue()


def _ledger(state: Path) -> str:
    db = sqlite3.connect(state / "ledger.sqlite3")
    tables = [row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
    rows = [repr(row) for table in tables for row in db.execute(f"SELECT * FROM {table}")]
    db.close()
    return "\n".join(rows)


def _files(*roots: Path) -> str:
    texts = []
    for root in roots:
        for file in sorted(root.rglob("*")):
            if file.is_file():
                texts.append(file.read_bytes().decode("utf-8", "replace"))
    return "\n".join(texts)


def _in_process(path: Path) -> tuple[str, str]:
    """Every tracker's submit and check reasons, and the IMAP errors' texts."""
    config = load(path)
    logs.hide(config.secrets())  # as the command line does once it has loaded the file
    reasons, errors = [], []
    raw = make(subject="in process")
    for name, target in config.targets.items():
        tracker = open_tracker(target)
        try:
            folder = config.accounts[0].folders[0]
            reasons.append(tracker.submit(raw, folder, Envelope("main", name, 1, 1)).reason)
            reasons.append(tracker.check().reason)
        finally:
            tracker.close()
    for account in config.accounts[1:]:
        try:
            with Mailbox(account):
                pass
        except MailboxError as exc:
            errors.append(f"{exc} {exc.reason}")
    return "\n".join(reasons), "\n".join(errors)


@pytest.fixture(scope="module")
def channels(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Run every scenario once; what each output channel showed."""
    tmp = tmp_path_factory.mktemp("leaks")
    with contextlib.ExitStack() as stack:
        dovecot = stack.enter_context(Dovecot(password=IMAP_PASSWORD))
        echo = stack.enter_context(HostileImap(Script(echo_logins=True)))
        servers = _hostile_servers()
        for server in servers.values():
            stack.callback(server.close)
        account = dovecot.account()
        for folder in FOLDERS:
            account.create(folder)
            account.append(folder, make(subject=f"to {folder}", message_id=f"<{folder}@leak>"))
        port = free_port()
        path = tmp / "config.yaml"
        path.write_text(yaml.safe_dump(_config(tmp, dovecot, account.username, echo, servers,
                                               port), allow_unicode=True))
        yield _scenarios(tmp, path, port, account, servers["forbidden"])


def _scenarios(tmp: Path, path: Path, port: int, account: ImapAccount,
               forbidden: FakeRedmine) -> dict[str, str]:
    """Each command on the config at ``path``, then the service; what each channel showed."""
    seen: dict[str, str] = {}
    seen["run --once"] = _run(path, "run", "--once")
    seen["run --once --debug --log-format json"] = _run(
        path, "run", "--once", "--retry-now", "--debug", "--log-format", "json")
    seen["check"] = _run(path, "check")
    seen["check --debug --log-format json"] = _run(path, "check", "--debug",
                                                   "--log-format", "json")
    (tmp / "m.eml").write_bytes(make(subject="explain me"))
    seen["explain"] = "\n".join(
        _main(path, "explain", "--account", "main", "--folder", folder, str(tmp / "m.eml"))
        for folder in FOLDERS)
    seen["status"] = _main(path, "status")
    seen["history"] = "\n".join(_main(path, "history", f"<{folder}@leak>")
                                for folder in FOLDERS)
    for key, value in (("key_file", SECRETS["redmine key"]),
                       ("key_env", SECRETS["redmine key"])):
        pasted = yaml.safe_load(path.read_text())
        del pasted["targets"]["down"]["key"]
        pasted["targets"]["down"][key] = value
        (tmp / f"pasted-{key}.yaml").write_text(yaml.safe_dump(pasted, allow_unicode=True))
        seen[f"pasted {key}"] = _main(tmp / f"pasted-{key}.yaml", "check")
    seen["outcomes"], seen["exceptions"] = _in_process(path)
    seen["config repr"] = repr(load(path)) + str(load(path))
    seen["daemon stderr"], seen["daemon after reload"], seen["metrics"] = _daemon(
        path, port, account, forbidden)
    seen["ledger"] = _ledger(tmp / "state")
    seen["files"] = _files(tmp / "state", tmp / "out")
    return seen


def _daemon(path: Path, port: int, account: ImapAccount, forbidden: FakeRedmine
            ) -> tuple[str, str, str]:
    """The service started, its /metrics, then SIGHUP with new secrets, echoed back."""
    daemon = Daemon(path)
    try:
        wait_for(lambda: get_quiet(port, "/readyz") in (200, 503), timeout=20)
        time.sleep(1.5)  # a few passes and retries
        metrics = get(port, "/metrics")[1] + get(port, "/readyz")[1] + get(port, "/healthz")[1]
        data = yaml.safe_load(path.read_text())
        data["targets"]["forbidden"]["key"] = SECRETS["reloaded redmine key"]
        data["targets"]["broken"]["token"] = SECRETS["reloaded webhook token"]
        path.write_text(yaml.safe_dump(data, allow_unicode=True))
        daemon.process.send_signal(signal.SIGHUP)
        new = SECRETS["reloaded redmine key"].encode()
        account.append("forbidden", make(subject="after the reload"))
        wait_for(lambda: any(r.form.get("key") == [new] for r in forbidden.requests),
                 timeout=20)
        time.sleep(0.5)
        metrics += get(port, "/metrics")[1]
        err = daemon.stop()
    finally:
        if daemon.process.poll() is None:
            daemon.process.kill()
            daemon.process.communicate()
    before, _, after = err.partition("configuration reloaded")
    return before, after, metrics


def test_every_scenario_ran(channels: dict[str, str]) -> None:
    """The scenarios happened: each failure shows up where it should, secrets masked."""
    for reason in ("cannot connect to https://127.0.0.1:", "Redmine refused the key (403)",
                   "the webhook is in trouble (500)", "TLS failure talking to https://127.0.0.1:",
                   "redirected to http://10.1.2.3:8080", "no answer from http://127.0.0.1:"):
        assert reason in channels["run --once"]
    assert "refused: LOGIN" in channels["exceptions"]
    assert "FAIL  target down: cannot connect to https://127.0.0.1:" in channels["check"]
    assert "FAIL  account echo: login refused" in channels["check"]
    assert "cannot read the file named here" in channels["pasted key_file"]
    assert "the environment variable named here" in channels["pasted key_env"]
    assert "configuration reloaded" not in channels["daemon after reload"]
    assert "Access denied for key ***" in channels["daemon after reload"]
    assert "imap_ingest" in channels["metrics"]


@pytest.mark.parametrize("channel", CHANNELS)
def test_no_secret_in_any_channel(channels: dict[str, str], channel: str) -> None:
    """No form of any configured secret shows up in this output channel."""
    text = channels[channel]
    assert text.strip(), f"{channel} showed nothing: the scenario did not run"
    # Without backslashes: a secret escaped any number of times (JSON, IMAP quoting, repr).
    bare = text.replace("\\", "")
    found = sorted({name for name, form in NEEDLES if form in text}
                   | {name for name, secret in SECRETS.items()
                      if secret.replace("\\", "") in bare})
    assert not found, f"{channel} shows {found}:\n{text[:3000]}"
