"""Debian's Postfix on loopback in front of the real RT and Redmine: aliases pipe into
`imap-ingest rt-mailgate` and `imap-ingest rdm-mailhandler` as /etc/aliases would, and
every outcome is read back through the tracker's own API (tests/support/postfix.py;
tests/test_postfix.py has the same aliases in front of recording servers)."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from imap_ingest.handoff import SOCKET_VARIABLE

from ..support.ingest_env import ROOT, command
from ..support.mail import make
from ..support.postfix import USER, Postfix, postfix
from .redmine import MAIL_KEY, RealRedmine
from .rt import RTNAME, RealRT

pytestmark = pytest.mark.skipif(shutil.which("postfix") is None, reason="needs Postfix")

ALICE = "alice@example.org"  # may open RT tickets; a Reporter of Redmine's "support"


@pytest.fixture(scope="module")
def mta(rt_server: RealRT, redmine_stock: RealRedmine) -> Iterator[Postfix]:
    rt_server.start()  # running already, unless an earlier module took it down

    def rt(name: str, *more: str, queue: str = "Support") -> str:
        return " ".join(["rt-mailgate", "--url", rt_server.url, "--queue", queue,
                         "--action", "correspond", "--state-dir", f"{{state}}/{name}", *more])

    aliases = {
        "help": rt("help"),
        "billing": rt("billing", "--extension", "queue"),
        "lost": rt("lost", "-c", "{state}/lost.yaml", "--route", "lost"),
        "nowhere": rt("nowhere", queue="Nope"),
        "support": f"rdm-mailhandler --url {redmine_stock.url} --key {MAIL_KEY} --project "
                   "support --state-dir {state}/support"}
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
