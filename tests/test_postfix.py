"""A real MTA in front: Debian's Postfix on loopback delivers to aliases that pipe into
`imap-ingest rt-mailgate` and `imap-ingest rdm-mailhandler`, as /etc/aliases would; the
trackers are recording servers, so the tests can say what reached them and when."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator

import pytest

from tests.support.ingest_env import ROOT, command
from tests.support.mail import make
from tests.support.postfix import Postfix, postfix
from tests.support.redmine_server import RecordingServer

pytestmark = pytest.mark.skipif(shutil.which("postfix") is None, reason="needs Postfix")

OK = (200, b"ok\n", 0)
NOT_OK = (200, b"not ok - operation unsuccessful\n", 0)


class Trackers:
    """The servers the aliases point at; ``down_port`` has nothing listening at first."""

    def __init__(self) -> None:
        self.rt, self.refusing, self.redmine = RecordingServer(), RecordingServer(), \
            RecordingServer()
        self.rt.answer = lambda request: OK
        self.refusing.answer = lambda request: NOT_OK
        self.redmine.answer = lambda request: (201, b"", 0)
        self.down_port = _closed_port()

    def close(self) -> None:
        for server in (self.rt, self.refusing, self.redmine):
            server.close()


def _closed_port() -> int:
    server = RecordingServer()
    port = int(server.url.rsplit(":", 1)[1])
    server.close()
    return port


@pytest.fixture(scope="module")
def trackers() -> Iterator[Trackers]:
    servers = Trackers()
    yield servers
    servers.close()


@pytest.fixture(scope="module")
def mta(trackers: Trackers) -> Iterator[Postfix]:
    def rt(name: str, url: str, *more: str) -> str:
        return " ".join(["rt-mailgate", "--url", url, "--queue", "General", "--action",
                         "correspond", "--state-dir", f"{{state}}/{name}", *more])

    aliases = {
        "billing": rt("billing", trackers.rt.url, "--extension", "queue"),
        "refused": rt("refused", trackers.refusing.url, "-c", "{state}/refused.yaml",
                      "--route", "refused"),
        "later": rt("later", f"http://127.0.0.1:{trackers.down_port}", "--timeout", "30"),
        "support": f"rdm-mailhandler --url {trackers.redmine.url} --key s3cret --project "
                   "support --state-dir {state}/support"}
    with postfix(aliases) as instance:
        yield instance


def test_extension_from_the_recipient_files_into_its_queue(trackers: Trackers,
                                                           mta: Postfix) -> None:
    """billing+Billing@ reaches RT through Postfix with queue and X-RT-Mail-Extension set."""
    mta.send(make(subject="invoice"), "billing+Billing")
    mta.wait_for(r"to=<billing\+Billing@.*status=sent")
    [request] = trackers.rt.requests
    # Postfix folds the address, so $EXTENSION is lower case, for rt-mailgate as for us;
    # RT finds a queue by name without regard to case.
    assert request.field("queue") == b"billing"
    assert request.field("message").startswith(b"X-RT-Mail-Extension: billing\n")


def test_not_ok_is_spooled_delivered_and_shown_in_status(trackers: Trackers,
                                                         mta: Postfix) -> None:
    """RT's `not ok`: Postfix sees 0 (status=sent), the mail is in the spool and in status."""
    config = mta.state / "refused.yaml"
    config.write_text(f"state_dir: {mta.state / 'refused'}\ntargets:\n  rt:\n    type: rt\n"
                      f"    url: '{trackers.refusing.url}'\nroutes:\n  refused: {{}}\n")
    config.chmod(0o644)
    raw = make(subject="refused for good")
    mta.send(raw, "refused")
    mta.wait_for(r"to=<refused@.*status=sent")
    assert len(trackers.refusing.requests) == 1
    [eml] = (mta.state / "refused" / "spool" / "refused").glob("*.eml")
    about = json.loads(eml.with_suffix(".json").read_text())
    assert about["result"] == "failed" and "RT refused the message" in about["reason"]
    assert b"Subject: refused for good" in eml.read_bytes()
    status = subprocess.run(command("status", "-c", str(config)), cwd=ROOT, text=True,
                            capture_output=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert "spool/refused: 1 kept in" in status.stdout, status.stdout + status.stderr


def test_tracker_down_is_queued_by_postfix_then_delivered_once(trackers: Trackers,
                                                               mta: Postfix) -> None:
    """RT down: 75 keeps it in Postfix's queue; RT up, a flush delivers it exactly once."""
    raw = make(subject="while RT was down")
    mta.send(raw, "later")
    mta.wait_for(r"to=<later@.*status=deferred")
    assert "later@" in mta.queued()
    back = RecordingServer(port=trackers.down_port)
    try:
        back.answer = lambda request: OK
        mta.flush()
        mta.wait_for(r"to=<later@.*status=sent")
        mta.flush()
        assert "later@" not in mta.queued()
        [request] = back.requests
        assert b"Subject: while RT was down" in request.field("message")
    finally:
        back.close()


def test_rdm_mailhandler_alias_creates_the_issue(trackers: Trackers, mta: Postfix) -> None:
    """support@ pipes into the rdm-mailhandler mode: Redmine gets the key, project and mail."""
    mta.send(make(subject="printer on fire"), "support")
    mta.wait_for(r"to=<support@.*status=sent")
    [request] = trackers.redmine.requests
    assert request.field("key") == b"s3cret" and request.field("issue[project]") == b"support"
    assert b"Subject: printer on fire" in request.field("email")

