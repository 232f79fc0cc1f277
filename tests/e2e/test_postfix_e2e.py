"""Debian's Postfix on loopback in front of the real RT and Redmine: aliases pipe into
`imap-ingest rt-mailgate` and `imap-ingest rdm-mailhandler` as /etc/aliases would, and
every outcome is read back through the tracker's own API (tests/support/postfix.py;
tests/test_postfix.py has the same aliases in front of recording servers). A tracker that is
down, or whose answer is lost, is the real one behind a scripted relay (tests/support/relay.py)
on a port where nothing listens at first."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from imap_ingest.handoff import SOCKET_VARIABLE
from imap_ingest.message import Message

from ..support.ingest_env import ROOT, command
from ..support.mail import make
from ..support.postfix import DOMAIN, USER, Postfix, postfix
from ..support.relay import Mode, Relay, closed_ports
from .redmine import MAIL_KEY, RealRedmine
from .rt import RTNAME, RealRT

pytestmark = pytest.mark.skipif(shutil.which("postfix") is None, reason="needs Postfix")

ALICE = "alice@example.org"  # may open RT tickets; a Reporter of Redmine's "support"


@pytest.fixture(scope="module")
def down() -> dict[str, int]:
    """A loopback port per relayed alias, with nothing listening on it until a test's Relay."""
    return dict(zip(("later", "later-rdm", "slow", "held", "doubt"), closed_ports(5),
                    strict=True))


@pytest.fixture(scope="module")
def mta(rt_server: RealRT, redmine_stock: RealRedmine,
        down: dict[str, int]) -> Iterator[Postfix]:
    rt_server.start()  # running already, unless an earlier module took it down

    def rt(name: str, *more: str, queue: str = "Support", url: str = rt_server.url) -> str:
        return " ".join(["rt-mailgate", "--url", url, "--queue", queue,
                         "--action", "correspond", "--state-dir", f"{{state}}/{name}", *more])

    def relayed(name: str) -> str:
        return f"http://127.0.0.1:{down[name]}"

    def rdm(name: str, url: str, *more: str) -> str:
        return " ".join(["rdm-mailhandler", "--url", url, "--key", MAIL_KEY, "--project",
                         "support", "--state-dir", f"{{state}}/{name}", *more])

    aliases = {
        "help": rt("help"),
        "billing": rt("billing", "--extension", "queue"),
        "lost": rt("lost", "-c", "{state}/lost.yaml", "--route", "lost"),
        "nowhere": rt("nowhere", queue="Nope"),
        "support": rdm("support", redmine_stock.url),
        "later": rt("later", "--timeout", "30", url=relayed("later")),
        "later-rdm": rdm("later-rdm", relayed("later-rdm"), "--timeout", "30"),
        # 1 s: the alarm ends the process (75) before the post's own deadline (1 s from
        # the post, which comes later), as any --timeout does when the run is that late.
        "slow": rt("slow", "-c", "{state}/slow.yaml", "--route", "slow", "--timeout", "1",
                   url=relayed("slow")),
        # 5 s: the post's own deadline (1 s before) comes first unless the run took 4 s to
        # get there.
        "held": rt("held", "--timeout", "5", url=relayed("held")),
        "doubt": rt("doubt", "-c", "{state}/doubt.yaml", "--route", "doubt", "--timeout", "5",
                    url=relayed("doubt"))}
    with postfix(aliases) as instance:
        yield instance


def test_rt_mailgate_alias_opens_a_ticket(real_rt: RealRT, mta: Postfix) -> None:
    """help@ pipes into the rt-mailgate mode: RT opens one ticket in Support."""
    mta.send(make(subject="Printer jam", sender=ALICE), "help")
    mta.wait_for(r"to=<help@.*status=sent")
    assert [(t.subject, t.queue) for t in real_rt.tickets()] == [("Printer jam", "Support")]


def test_extension_files_into_billing(real_rt: RealRT, mta: Postfix) -> None:
    """billing+Billing@ with --extension queue opens the ticket in RT's Billing queue."""
    mta.send(make(subject="Invoice 42", sender=ALICE), "billing+Billing")
    mta.wait_for(r"to=<billing\+Billing@.*status=sent")
    # Postfix folds $EXTENSION to "billing"; RT finds the queue regardless of case.
    assert [(t.subject, t.queue) for t in real_rt.tickets()] == [("Invoice 42", "Billing")]


def test_not_ok_is_spooled_and_shown_in_status(real_rt: RealRT, mta: Postfix) -> None:
    """RT's `not ok` (a reply to a ticket it does not have): exit 0, spooled, in status."""
    config = mta.state / "lost.yaml"
    config.write_text(f"state_dir: {mta.state / 'lost'}\ntargets:\n  rt:\n    type: rt\n"
                      f"    url: '{real_rt.url}'\nroutes:\n  lost: {{}}\n")
    config.chmod(0o644)
    mta.send(make(subject=f"[{RTNAME} #999] Re: lost", sender=ALICE), "lost")
    mta.wait_for(r"to=<lost@.*status=sent")
    assert real_rt.tickets() == []
    [eml] = (mta.state / "lost" / "spool" / "lost").glob("*.eml")
    about = json.loads(eml.with_suffix(".json").read_text())
    assert about["result"] == "failed" and "RT refused the message" in about["reason"]
    assert "Could not find a ticket with id 999" in real_rt.log_text()
    status = subprocess.run(command("status", "-c", str(config)), cwd=ROOT, text=True,
                            capture_output=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert "spool/lost: 1 kept in" in status.stdout, status.stdout + status.stderr


def test_unknown_queue_is_left_in_the_postfix_queue(real_rt: RealRT, mta: Postfix) -> None:
    """An unknown queue is RT's temporary failure (not `not ok`): 75, Postfix defers it."""
    mta.send(make(subject="No such queue", sender=ALICE), "nowhere")
    mta.wait_for(r"to=<nowhere@.*status=deferred")
    assert "nowhere@" in mta.queued()
    assert real_rt.tickets() == [] and "RT couldn't find the queue: Nope" in real_rt.log_text()
    assert list((mta.state / "nowhere").glob("spool/*/*.eml")) == []


def test_rdm_mailhandler_alias_creates_the_issue(redmine_stock: RealRedmine,
                                                 mta: Postfix) -> None:
    """support@ pipes into the rdm-mailhandler mode: Redmine creates the issue."""
    redmine_stock.reset()
    mta.send(make(subject="Monitor flickers", sender=ALICE), "support")
    mta.wait_for(r"to=<support@.*status=sent")
    assert [i["subject"] for i in redmine_stock.issues()] == ["Monitor flickers"]


def _in_rt_once(rt: RealRT, raw: bytes, subject: str) -> None:
    """RT has exactly one ticket, ``subject`` in Support, made from exactly one copy of
    ``raw`` (found by its Message-ID)."""
    assert [(t.subject, t.queue) for t in rt.tickets()] == [(subject, "Support")]
    [record] = rt.records(Message(raw).message_id or "")
    assert record.type == "Create"


def _deferred(mta: Postfix, alias: str) -> str:
    """postqueue -p's entry for ``alias``: it waits in the queue with a temporary reason."""
    entries = [entry for entry in mta.queued().split("\n\n") if f"{alias}@{DOMAIN}" in entry]
    assert len(entries) == 1, mta.queued()
    assert "(temporary failure" in entries[0], entries[0]
    return entries[0]


def _not_queued(mta: Postfix, alias: str) -> None:
    """Nothing for ``alias`` waits in Postfix's queue (nowhere@'s mail stays there)."""
    assert f"{alias}@{DOMAIN}" not in (queued := mta.queued()), queued


def _status(config: Path) -> str:
    done = subprocess.run(command("status", "-c", str(config)), cwd=ROOT, text=True,
                          capture_output=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    return done.stdout + done.stderr


def _route_config(mta: Postfix, rt: RealRT, route: str, extra: str = "") -> Path:
    """STATE/ROUTE.yaml: the state dir the alias uses, and the route (readable by USER)."""
    config = mta.state / f"{route}.yaml"
    config.write_text(f"state_dir: {mta.state / route}\n{extra}targets:\n  rt:\n    type: rt\n"
                      f"    url: '{rt.url}'\nroutes:\n  {route}: {{}}\n")
    config.chmod(0o644)
    return config


def test_rt_down_is_queued_by_postfix_then_filed_once(real_rt: RealRT, mta: Postfix,
                                                      down: dict[str, int]) -> None:
    """RT refusing connections: 75, Postfix defers it; RT back, a flush files it once."""
    raw = make(subject="While RT was down", sender=ALICE)
    mta.send(raw, "later")
    [line] = mta.wait_for(r"to=<later@.*status=deferred")
    assert "dsn=4." in line and "cannot connect to" in line, line
    _deferred(mta, "later")
    assert real_rt.tickets() == []
    relay = Relay(down["later"], real_rt.port)
    relay.start()
    try:
        mta.flush()
        mta.wait_for(r"to=<later@.*status=sent")
        mta.flush()  # nothing left to deliver again
        _not_queued(mta, "later")
    finally:
        relay.close()
    _in_rt_once(real_rt, raw, "While RT was down")
    assert relay.accepted == 1


def test_redmine_down_is_queued_by_postfix_then_created_once(
        redmine_stock: RealRedmine, mta: Postfix, down: dict[str, int]) -> None:
    """Redmine refusing connections: 75, Postfix defers it; back, a flush creates it once."""
    redmine_stock.reset()
    raw = make(subject="While Redmine was down", sender=ALICE)
    mta.send(raw, "later-rdm")
    [line] = mta.wait_for(r"to=<later-rdm@.*status=deferred")
    assert "dsn=4." in line and "cannot connect to" in line, line
    _deferred(mta, "later-rdm")
    assert redmine_stock.issues() == []
    relay = Relay(down["later-rdm"], int(redmine_stock.url.rsplit(":", 1)[1]))
    relay.start()
    try:
        mta.flush()
        mta.wait_for(r"to=<later-rdm@.*status=sent")
        mta.flush()
        _not_queued(mta, "later-rdm")
    finally:
        relay.close()
    assert [i["subject"] for i in redmine_stock.issues()] == ["While Redmine was down"]
    assert redmine_stock.mail_handler_posts() == 1


def _until(check: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        time.sleep(0.2)


def test_timeout_is_queued_and_the_retry_spools_what_rt_took(
        real_rt: RealRT, mta: Postfix, down: dict[str, int]) -> None:
    """RT took it, no answer by --timeout: 75, queued; the retry spools it in doubt: 1 ticket."""
    config = _route_config(mta, real_rt, "slow")
    raw = make(subject="Answer lost on the way", sender=ALICE)
    relay = Relay(down["slow"], real_rt.port, Mode.HOLD)
    relay.start()
    try:
        mta.send(raw, "slow")
        [line] = mta.wait_for(r"to=<slow@.*status=deferred")
        assert "dsn=4." in line and "--timeout reached" in line, line
        _deferred(mta, "slow")
        _until(lambda: len(real_rt.tickets()) == 1, "RT files the first post (unless the "
               "1 s ran out before it was sent: the machine is far too loaded)")
        relay.mode = Mode.PASS
        mta.flush()
        mta.wait_for(r"to=<slow@.*status=sent")
        _not_queued(mta, "slow")
    finally:
        relay.close()
    assert relay.accepted == 1  # the retry did not post
    _in_rt_once(real_rt, raw, "Answer lost on the way")
    [about] = (mta.state / "slow" / "spool" / "slow").glob("*.json")
    assert json.loads(about.read_text())["result"] == "quarantined"
    assert "spool/slow: 1 kept in" in _status(config)


def test_no_answer_within_timeout_is_spooled_and_a_redelivery_posts_nothing(
        real_rt: RealRT, mta: Postfix, down: dict[str, int]) -> None:
    """No answer by --timeout (RT took it): spooled in doubt, exit 0; a redelivery posts none."""
    raw = make(subject="Taken, but silent", sender=ALICE)
    relay = Relay(down["held"], real_rt.port, Mode.HOLD)
    relay.start()
    try:
        mta.send(raw, "held")
        mta.wait_for(r"to=<held@.*status=sent")
        _until(lambda: len(real_rt.tickets()) == 1, "RT files the post")
        relay.mode = Mode.PASS
        mta.send(raw, "held")
        mta.wait_for(r"to=<held@.*status=sent", count=2)
    finally:
        relay.close()
    assert relay.accepted == 1
    _in_rt_once(real_rt, raw, "Taken, but silent")
    [about] = (mta.state / "held" / "spool" / "rt-mailgate").glob("*.json")
    about_text = json.loads(about.read_text())
    assert about_text["result"] == "quarantined", about_text
    assert "may or may not have it" in about_text["reason"]


def test_resubmit_in_doubt_leaves_it_to_postfix_then_files_it(
        real_rt: RealRT, mta: Postfix, down: dict[str, int]) -> None:
    """in_doubt: resubmit: the lost post is 75, Postfix queues it, its retry files 1 ticket."""
    _route_config(mta, real_rt, "doubt", "in_doubt: resubmit\n")
    raw = make(subject="Lost in transit", sender=ALICE)
    relay = Relay(down["doubt"], real_rt.port, Mode.SWALLOW)
    relay.start()
    try:
        mta.send(raw, "doubt")
        [line] = mta.wait_for(r"to=<doubt@.*status=deferred")
        assert "dsn=4." in line and "no answer from" in line, line
        _deferred(mta, "doubt")
        assert real_rt.tickets() == []
        relay.mode = Mode.PASS
        mta.flush()
        mta.wait_for(r"to=<doubt@.*status=sent")
        _not_queued(mta, "doubt")
    finally:
        relay.close()
    assert relay.accepted == 2
    _in_rt_once(real_rt, raw, "Lost in transit")
    assert list((mta.state / "doubt").glob("spool/*/*.eml")) == []


@pytest.fixture(scope="module")
def fast_mta(rt_server: RealRT) -> Iterator[tuple[Postfix, Path]]:
    """A Postfix whose pipes find a deliver-server running as their user: (it, its log)."""
    rt_server.start()
    top = Path(tempfile.mkdtemp(prefix="ds-"))
    top.chmod(0o755)
    run = top / "run"
    run.mkdir(mode=0o700)
    user = pwd.getpwnam(USER)
    os.chown(run, user.pw_uid, user.pw_gid)
    socket = run / "deliver.sock"
    aliases = {"fast": f"rt-mailgate --url {rt_server.url} --queue Support --action "
                       "correspond --state-dir {state}/fast"}
    log = top / "server.log"
    try:
        with postfix(aliases, {SOCKET_VARIABLE: str(socket)}) as instance, \
                log.open("wb") as err:
            server = subprocess.Popen([str(instance.program), "deliver-server", "--socket",
                                       str(socket), "--debug"], stderr=err, cwd="/",
                                      user=user.pw_uid, group=user.pw_gid, extra_groups=[])
            try:
                deadline = time.monotonic() + 60
                while b"listening on" not in log.read_bytes():
                    assert server.poll() is None and time.monotonic() < deadline, \
                        log.read_text()
                    time.sleep(0.1)
                yield instance, log
            finally:
                server.terminate()
                server.wait(30)
    finally:
        shutil.rmtree(top, ignore_errors=True)


def test_an_alias_through_the_deliver_server(real_rt: RealRT,
                                             fast_mta: tuple[Postfix, Path]) -> None:
    """fast@ pipes into rt-mailgate, which hands the message to the server: one RT ticket."""
    mta, log = fast_mta
    mta.send(make(subject="Handed over", sender=ALICE), "fast")
    mta.wait_for(r"to=<fast@.*status=sent")
    assert [(t.subject, t.queue) for t in real_rt.tickets()] == [("Handed over", "Support")]
    assert "delivers for a connection" in log.read_text()
