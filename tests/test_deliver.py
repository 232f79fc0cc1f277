"""`imap-ingest deliver`, `rt-mailgate` and `rdm-mailhandler` as an MTA runs them: one
process per message, the message on stdin, the exit code read; trackers are recording
servers on loopback."""

from __future__ import annotations

import argparse
import json
import os
import re
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from imap_ingest.compat import add_commands, redmine_target, rt_target
from imap_ingest.trackers import registry
from tests.support.dovecot import ImapAccount, free_ports
from tests.support.ingest_env import ROOT, command
from tests.support.mail import make
from tests.support.redmine_server import RecordingServer, Request

OK = (200, b"ok\n", 0)
NOT_OK = (200, b"not ok - operation unsuccessful\n", 0)


@pytest.fixture
def rt() -> Iterator[RecordingServer]:
    server = RecordingServer()
    server.answer = lambda request: OK
    yield server
    server.close()


def pipe(raw: bytes, *args: str, extension: str | None = None,
         timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
    """Run ``imap-ingest ARGS`` as Postfix's pipe would: the message on stdin, $EXTENSION."""
    env = {k: v for k, v in os.environ.items() if k != "EXTENSION"}
    env["PYTHONPATH"] = str(ROOT)
    if extension is not None:
        env["EXTENSION"] = extension
    return subprocess.run(command(*args), input=raw, cwd=ROOT, env=env, capture_output=True,
                          timeout=timeout)


def mailgate(rt: RecordingServer, state: Path, *more: str) -> list[str]:
    return ["rt-mailgate", "--url", rt.url, "--queue", "General", "--action", "correspond",
            "--state-dir", str(state), *more]


def messages(rt: RecordingServer) -> list[bytes]:
    return [r.field("message") for r in rt.requests if r.path.endswith("/mail-gateway")]


def test_rt_not_ok_is_spooled_and_exits_0(rt: RecordingServer, tmp_path: Path) -> None:
    """RT's `not ok` keeps the message in the spool (.eml + .json, 0600) and exits 0."""
    rt.answer = lambda request: NOT_OK
    raw = make(subject="refused")
    done = pipe(raw, *mailgate(rt, tmp_path))
    assert done.returncode == 0, done.stderr
    spool = tmp_path / "spool" / "rt-mailgate"
    [eml] = list(spool.glob("*.eml"))
    assert eml.read_bytes() == raw
    about = json.loads(eml.with_suffix(".json").read_text())
    assert about["result"] == "failed" and "RT refused the message" in about["reason"]
    assert stat.S_IMODE(eml.stat().st_mode) == stat.S_IMODE(
        eml.with_suffix(".json").stat().st_mode) == 0o600
    assert b"kept in" in done.stderr


def test_tracker_down_exits_75_then_delivers_once(tmp_path: Path) -> None:
    """An unreachable tracker gives 75; the retry delivers it, a third try sends nothing."""
    raw = make(subject="later")
    down = RecordingServer()
    url = down.url
    down.close()
    args = ["rt-mailgate", "--url", url, "--queue", "General", "--state-dir", str(tmp_path)]
    assert pipe(raw, *args).returncode == 75
    rt = RecordingServer()  # RT is back (the alias line's URL, in the test a new port)
    try:
        rt.answer = lambda request: OK
        args[2] = rt.url
        assert pipe(raw, *args).returncode == 0
        assert pipe(raw, *args).returncode == 0
        assert messages(rt) == [raw.replace(b"\r\n", b"\n")]
    finally:
        rt.close()


def test_extension_files_into_its_queue(rt: RecordingServer, tmp_path: Path) -> None:
    """$EXTENSION=Billing with --extension queue posts queue=Billing and the extension header."""
    done = pipe(make(), *mailgate(rt, tmp_path, "--extension", "queue"), extension="Billing")
    assert done.returncode == 0, done.stderr
    [request] = rt.requests
    assert request.field("queue") == b"Billing"
    assert request.field("message").startswith(b"X-RT-Mail-Extension: Billing\n")


def test_extension_without_the_option_only_adds_the_header(rt: RecordingServer,
                                                            tmp_path: Path) -> None:
    """$EXTENSION without --extension leaves the queue alone but adds the header."""
    assert pipe(make(), *mailgate(rt, tmp_path), extension="x").returncode == 0
    [request] = rt.requests
    assert request.field("queue") == b"General"
    assert request.field("message").startswith(b"X-RT-Mail-Extension: x\n")


def test_alias_lines_rt_mailgate_takes_are_taken(rt: RecordingServer, tmp_path: Path) -> None:
    """--extension in any case and --jar FILE (ignored) deliver, as rt-mailgate takes them."""
    done = pipe(make(), *mailgate(rt, tmp_path, "--extension", "Queue", "--jar",
                                  str(tmp_path / "jar")), extension="Billing")
    assert done.returncode == 0, done.stderr
    [request] = rt.requests
    assert request.field("queue") == b"Billing"
    assert not (tmp_path / "jar").exists()


@pytest.mark.parametrize("mode", ["deliver", "rt-mailgate", "rdm-mailhandler"])
def test_help_in_an_alias_line_bounces_the_mail(mode: str) -> None:
    """--help prints the help and exits 64, as the tools exit 1: never 0, the mail is lost."""
    done = pipe(make(), mode, "--help")
    assert done.returncode == 64 and b"usage:" in done.stdout, done


RT_MAILGATE = Path("/usr/bin/rt-mailgate")
RDM_MAILHANDLER = Path("/usr/share/redmine/extra/mail_handler/rdm-mailhandler.rb")


def _rt_mailgate_options() -> set[str]:
    """The options of Debian's rt-mailgate, from its GetOptions call."""
    spec = re.search(r"GetOptions\(\s*\$opts,(.*?)\);", RT_MAILGATE.read_text(), re.S)
    assert spec is not None
    options = set()
    for name, negatable in re.findall(r'"([\w-]+)(?:=\w)?(!?)"', spec[1]):
        options |= {f"--{name}", f"--no-{name}"} if negatable else {f"--{name}"}
    return options


def _rdm_mailhandler_options() -> set[str]:
    """The options of Redmine's rdm-mailhandler.rb, from its opts.on calls."""
    calls = re.findall(r"opts\.on\((.*?)\)\s*\{", RDM_MAILHANDLER.read_text(), re.S)
    return {flag for call in calls for flag in re.findall(r'"(--?[\w-]+)', call)}


def _table(first_column: str) -> str:
    readme = (ROOT / "README.md").read_text()
    start = readme.index(f"| {first_column} | imap-ingest {first_column} |")
    return readme[start:readme.index("\n\n", start)]


@pytest.mark.parametrize(("tool", "path", "options"), [
    ("rt-mailgate", RT_MAILGATE, _rt_mailgate_options),
    ("rdm-mailhandler", RDM_MAILHANDLER, _rdm_mailhandler_options)])
def test_the_readme_tables_name_every_option_of_the_installed_tools(
        tool: str, path: Path, options: Callable[[], set[str]]) -> None:
    """README's compatibility tables name each option of Debian's rt-mailgate, rdm-mailhandler."""
    if not path.exists():
        pytest.skip(f"{path} is not installed")
    found = options()
    assert len(found) > 8, found  # the parse found the options, not nothing
    named = {token for span in re.findall(r"`([^`]*)`", _table(tool))
             for token in re.split(r"[\s/,]+", span) if token.startswith("-")}
    assert sorted(found - named) == []


def test_auto_reply_is_held_unless_loop_checks_are_off(rt: RecordingServer,
                                                       tmp_path: Path) -> None:
    """An auto-reply is spooled as held, nothing posted; --no-loop-checks posts it."""
    raw = make(headers={"Auto-Submitted": "auto-replied"})
    assert pipe(raw, *mailgate(rt, tmp_path)).returncode == 0
    assert rt.requests == []
    [about] = (tmp_path / "spool" / "rt-mailgate").glob("*.json")
    assert json.loads(about.read_text())["result"] == "held"
    other = tmp_path / "other"
    assert pipe(raw, *mailgate(rt, other, "--no-loop-checks")).returncode == 0
    assert len(rt.requests) == 1


def test_status_shows_and_retry_delivers_the_spool(rt: RecordingServer, tmp_path: Path) -> None:
    """`status` counts the spool; `retry spool/ROUTE` delivers it and empties it."""
    config = tmp_path / "c.yaml"
    config.write_text(f"state_dir: {tmp_path}\ntargets:\n  rt: {{type: rt, url: '{rt.url}'}}\n"
                      "routes:\n  bugs: {queue: General}\n")
    rt.answer = lambda request: NOT_OK
    raw = make(subject="retry me")
    assert pipe(raw, "deliver", "-c", str(config), "--route", "bugs").returncode == 0
    status = subprocess.run(command("status", "-c", str(config)), cwd=ROOT, capture_output=True,
                            text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert "spool/bugs: 1 kept in" in status.stdout and "1 failed" in status.stdout
    assert "mta/bugs: 1 failed" in status.stdout
    rt.answer = lambda request: OK
    again = subprocess.run(command("retry", "-c", str(config), "spool/bugs"), cwd=ROOT,
                           capture_output=True, text=True,
                           env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert again.returncode == 0, again.stderr
    assert "delivered" in again.stdout
    assert list((tmp_path / "spool" / "bugs").glob("*.eml")) == []
    assert len(messages(rt)) == 2


def failure_folder_config(path: Path, imap: ImapAccount, rt: RecordingServer,
                          account: str = "test", port: int | None = None) -> Path:
    """A route `bugs` to RT whose refusals go to the IMAP folder Refused of ``account``."""
    path.write_text(yaml.safe_dump({
        "state_dir": str(path.parent), "targets": {"rt": {"type": "rt", "url": rt.url}},
        "accounts": [{"name": "test", "host": imap.host, "port": port or imap.port,
                      "security": "none", "username": imap.username,
                      "password": imap.password, "timeout": "5s",
                      "folders": [{"name": "INBOX"}]}],
        "routes": {"bugs": {"queue": "General",
                            "failure_folder": {"account": account, "folder": "Refused"}}}}))
    return path


def refused_into(imap: ImapAccount, folder: str, rt: RecordingServer,
                 tmp_path: Path) -> tuple[Path, subprocess.CompletedProcess[bytes]]:
    """Deliver a message RT refuses on the route failing into Refused; check it is in the
    server's ``folder``, marked, and not spooled: (the config, the delivery)."""
    rt.answer = lambda request: NOT_OK
    config = failure_folder_config(tmp_path / "c.yaml", imap, rt)
    raw = make(subject="refused")
    done = pipe(raw, "deliver", "-c", str(config), "--route", "bugs")
    assert done.returncode == 0, done.stderr
    [(flags, body)] = imap.messages(folder).values()
    assert body == raw and b"$ImapIngestFailed" in flags
    assert list(tmp_path.glob("spool/bugs/*")) == []
    return config, done


def test_refusal_goes_to_the_failure_folder_else_the_spool(rt: RecordingServer, imap: ImapAccount,
                                                           tmp_path: Path) -> None:
    """`not ok` appends to failure_folder (created, keyword set); IMAP down: spool; 0 both."""
    config, done = refused_into(imap, "Refused", rt, tmp_path)
    assert b"kept in IMAP folder Refused of account test" in done.stderr
    status = subprocess.run(command("status", "-c", str(config)), cwd=ROOT, capture_output=True,
                            text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert "spool/bugs: refused and held mail goes to IMAP folder Refused of account test" \
        in status.stdout
    [closed] = free_ports(1)
    (tmp_path / "down").mkdir()
    down = failure_folder_config(tmp_path / "down" / "c.yaml", imap, rt, port=closed)
    other = make(subject="refused, IMAP down")
    done = pipe(other, "deliver", "-c", str(down), "--route", "bugs")
    assert done.returncode == 0, done.stderr
    [eml] = (tmp_path / "down" / "spool" / "bugs").glob("*.eml")
    assert eml.read_bytes() == other
    assert b"connection failed" in done.stderr
    wrong = failure_folder_config(tmp_path / "w.yaml", imap, rt, account="nope")
    assert pipe(other, "deliver", "-c", str(wrong), "--route", "bugs").returncode == 78


def test_the_failure_folder_is_resolved_under_an_inbox_prefix(
        rt: RecordingServer, imap_prefixed: ImapAccount, tmp_path: Path) -> None:
    """On Cyrus, Courier (and dovecot so laid out) the failure folder Refused is INBOX.Refused."""
    refused_into(imap_prefixed, "INBOX.Refused", rt, tmp_path)


def test_route_rules_apply(rt: RecordingServer, tmp_path: Path) -> None:
    """A route's rule that skips a message keeps it in the route's spool_on_failure."""
    spool = tmp_path / "kept"
    config = tmp_path / "c.yaml"
    config.write_text(
        f"state_dir: {tmp_path}\ntargets:\n  rt: {{type: rt, url: '{rt.url}'}}\n"
        f"routes:\n  bugs:\n    spool_on_failure: {spool}\n    rules:\n"
        "      - {name: no-spam, if: ['Subject: SPAM'], then: skip}\n")
    assert pipe(make(subject="SPAM now"), "deliver", "-c", str(config),
                "--route", "bugs").returncode == 0
    [about] = spool.glob("*.json")
    assert json.loads(about.read_text())["reason"] == "skipped by rule no-spam"
    assert pipe(make(), "deliver", "-c", str(config), "--route", "nope").returncode == 67
    assert rt.requests == []


def test_timeout_exits_75_and_the_retry_follows_in_doubt(rt: RecordingServer,
                                                         tmp_path: Path) -> None:
    """Past --timeout: 75; the next try finds the post in doubt and spools it."""
    rt.answer = lambda request: (200, b"ok\n", 5)
    raw = make()
    started = time.monotonic()
    assert pipe(raw, *mailgate(rt, tmp_path, "--timeout", "1")).returncode == 75
    assert time.monotonic() - started < 4
    rt.answer = lambda request: OK
    assert pipe(raw, *mailgate(rt, tmp_path)).returncode == 0
    assert len(rt.requests) == 1
    [about] = (tmp_path / "spool" / "rt-mailgate").glob("*.json")
    assert json.loads(about.read_text())["result"] == "quarantined"


def test_the_mtas_retry_with_a_new_envelope_line_is_the_same_message(
        rt: RecordingServer, tmp_path: Path) -> None:
    """Postfix's "From sender time_stamp" line differs per attempt: the retry is in doubt."""
    rt.answer = lambda request: (200, b"ok\n", 5)
    raw = make()
    first = b"From alice@example.org  Wed Dec  2 06:55:06 2026\n" + raw
    assert pipe(first, *mailgate(rt, tmp_path, "--timeout", "1")).returncode == 75
    rt.answer = lambda request: OK
    again = b"From alice@example.org  Wed Dec  2 07:05:06 2026\n" + raw
    assert pipe(again, *mailgate(rt, tmp_path)).returncode == 0
    assert len(rt.requests) == 1
    [about] = (tmp_path / "spool" / "rt-mailgate").glob("*.json")
    assert json.loads(about.read_text())["result"] == "quarantined"


@pytest.mark.timeout(600)
def test_fifty_concurrent_deliveries_submit_each_message_once(rt: RecordingServer,
                                                              tmp_path: Path) -> None:
    """50 processes at once, 25 messages each twice: each reaches RT once."""
    raws = [make(subject=f"concurrent {i}") for i in range(25)]
    with ThreadPoolExecutor(50) as pool:
        codes = list(pool.map(lambda raw: pipe(raw, *mailgate(rt, tmp_path, "--timeout", "400"),
                                               timeout=500).returncode, raws + raws))
    assert codes == [0] * 50
    got = sorted(messages(rt))
    assert got == sorted(raw.replace(b"\r\n", b"\n") for raw in raws)


def test_rdm_mailhandler_flags_become_the_form(tmp_path: Path) -> None:
    """Every rdm-mailhandler option reaches Redmine's form as rdm-mailhandler sends it."""
    redmine = RecordingServer()
    redmine.answer = lambda request: (201, b"", 0)
    key = tmp_path / "key"
    key.write_text("s3cret\n")
    try:
        done = pipe(make(), "rdm-mailhandler", "--url", redmine.url, "--key-file", str(key),
                    "--project", "support", "--status", "New", "--tracker", "Bug",
                    "--category", "Printers", "--priority", "High", "--assigned-to", "bob",
                    "--fixed-version", "1.0", "--private", "--allow-override", "all",
                    "--unknown-user", "create", "--default-group", "customers",
                    "--no-permission-check", "--no-account-notice", "--no-notification",
                    "--project-from-subaddress", "support@example.org", "--timeout", "30",
                    "--no-check-certificate", "-v", "--state-dir", str(tmp_path))
        assert done.returncode == 0, done.stderr
        request: Request = redmine.requests[0]
        assert {name: values[0].decode() for name, values in request.form.items()
                if name != "email"} == {
            "key": "s3cret", "unknown_user": "create", "default_group": "customers",
            "project_from_subaddress": "support@example.org", "no_permission_check": "1",
            "no_account_notice": "1", "no_notification": "1", "allow_override": "all",
            "issue[project]": "support", "issue[status]": "New", "issue[tracker]": "Bug",
            "issue[category]": "Printers", "issue[priority]": "High",
            "issue[assigned_to]": "bob", "issue[fixed_version]": "1.0",
            "issue[is_private]": "1"}
        assert b"s3cret" not in done.stderr
    finally:
        redmine.close()


def test_a_plain_http_url_is_taken_as_rt_mailgate_takes_it(
        caplog: pytest.LogCaptureFixture) -> None:
    """--url http://… off loopback is the alias line's choice: allowed, with a warning."""
    parser = argparse.ArgumentParser()
    add_commands(parser.add_subparsers(), "config.yaml")
    rt = parser.parse_args(["rt-mailgate", "--url", "http://rt.example/", "--queue", "bugs"])
    rdm = parser.parse_args(["rdm-mailhandler", "--url", "http://redmine.example",
                             "--key", "k3y-k3y-k3y"])
    secure = parser.parse_args(["rt-mailgate", "--url", "https://rt.example/"])
    assert rt_target(rt)["allow_insecure"] is True
    assert redmine_target(rdm)["allow_insecure"] is True
    assert rt_target(secure)["allow_insecure"] is False
    assert "plain http" in caplog.text
    for target in (rt_target(rt), redmine_target(rdm)):
        registry.registered()[str(target["type"])].model.model_validate(target)


# What a delivery must not import: an MTA starts a process per message, and each of these
# costs milliseconds there for nothing (the service's scheduler, IMAP, OAuth, the console,
# PostgreSQL, YAML without -c, pydantic-settings, whose sources the config does not use).
NOT_ON_THE_DELIVERY_PATH = (
    "apscheduler", "imapclient", "msal", "cryptography", "psycopg", "yaml", "dotenv",
    "pydantic_settings", "prometheus_client", "imap_ingest.cli", "imap_ingest.console",
    "imap_ingest.mailbox", "imap_ingest.oauth", "imap_ingest.service", "imap_ingest.worker",
    "imap_ingest.pop3", "imap_ingest.metrics", "http.server",
    # the trackers the mode does not post to (the registry imports a type's module alone)
    "imap_ingest.trackers.webhook", "imap_ingest.trackers.directory",
    # the IMAP and OAuth2 accounts' models, for a config with no accounts
    "imap_ingest.config.accounts")
# ... and the other compatible mode's tracker
_OTHER_TRACKER = {"rt-mailgate": "imap_ingest.trackers.redmine",
                  "rdm-mailhandler": "imap_ingest.trackers.rt"}

_MODULES_AFTER = """\
import json, sys
from imap_ingest.compat import entry
code = entry(sys.argv[2:])
with open(sys.argv[1], "w") as out:
    json.dump(sorted(sys.modules), out)
sys.exit(code)
"""


@pytest.mark.parametrize("mode", ["rt-mailgate", "rdm-mailhandler"])
def test_a_delivery_imports_only_what_it_uses(rt: RecordingServer, tmp_path: Path,
                                              mode: str) -> None:
    """A compatible mode posts, spools and exits without importing the service's modules."""
    rt.answer = lambda request: (201, b"", 0) if mode == "rdm-mailhandler" else NOT_OK
    args = mailgate(rt, tmp_path) if mode == "rt-mailgate" else [
        "rdm-mailhandler", "--url", rt.url, "--key", "k", "--state-dir", str(tmp_path)]
    out = tmp_path / "modules.json"
    done = subprocess.run([sys.executable, "-c", _MODULES_AFTER, str(out), *args], input=make(),
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                          capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert len(rt.requests) == 1  # it posted (and, for RT's `not ok`, spooled)
    loaded = set(json.loads(out.read_text()))
    assert sorted(name for name in (*NOT_ON_THE_DELIVERY_PATH, _OTHER_TRACKER[mode])
                  if name in loaded) == []
