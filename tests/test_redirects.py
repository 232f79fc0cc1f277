"""Mail and keys go only where configured: redirects, reasons that name a server only,
and failures of the HTTP layer turned into Outcomes."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme

from imap_ingest.config import SubmitOptions
from imap_ingest.trackers import Envelope, Kind, Outcome
from imap_ingest.trackers._http import Client
from imap_ingest.trackers.redmine import Redmine, RedmineTarget
from imap_ingest.trackers.rt import GATEWAY, RequestTracker, RtTarget
from imap_ingest.trackers.webhook import Webhook, WebhookTarget
from imap_ingest.urls import origin

from .support.mail import make
from .support.redmine_server import FakeRedmine, FakeRT, RecordingServer

ENVELOPE = Envelope("test", "INBOX", 1, 1)


@pytest.fixture
def tls(tmp_path: Path) -> Iterator[tuple[RecordingServer, Path]]:
    """An HTTPS RecordingServer and the CA file that trusts it."""
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    ca.cert_pem.write_to_path(tmp_path / "ca.pem")
    server = RecordingServer(context)
    yield server, tmp_path / "ca.pem"
    server.close()


def _to(location: str) -> Any:
    return lambda request: (307, b"", 0, {"Location": location})


def test_rt_follows_a_redirect_on_the_same_host(rt: FakeRT) -> None:
    """A 307 to the same host is re-posted there, as rt-mailgate does."""
    front = RecordingServer()
    front.answer = _to(rt.url + GATEWAY)
    client = RequestTracker(RtTarget.model_validate({"type": "rt", "url": front.url}))
    outcome = client.submit(make(), SubmitOptions(), ENVELOPE)
    client.close()
    front.close()
    assert outcome.kind is Kind.SUCCESS and len(rt.messages) == 1


def test_rt_never_reposts_to_another_host(rt: FakeRT) -> None:
    """A redirect to another host is a configuration error: the mail goes nowhere else."""
    front = RecordingServer()
    front.answer = _to(rt.url.replace("127.0.0.1", "localhost") + GATEWAY)
    client = RequestTracker(RtTarget.model_validate({"type": "rt", "url": front.url}))
    outcome = client.submit(make(), SubmitOptions(), ENVELOPE)
    client.close()
    front.close()
    assert outcome.kind is Kind.CONFIG and rt.requests == []
    assert "localhost" in outcome.reason and GATEWAY not in outcome.reason


def test_rt_never_reposts_from_https_to_http(rt: FakeRT,
                                             tls: tuple[RecordingServer, Path]) -> None:
    """https → http on the same host is refused: the mail would cross in clear."""
    front, ca = tls
    front.answer = _to(rt.url + GATEWAY)
    client = RequestTracker(RtTarget.model_validate({"type": "rt", "url": front.url,
                                                     "ca_file": str(ca)}))
    outcome = client.submit(make(), SubmitOptions(), ENVELOPE)
    client.close()
    assert outcome.kind is Kind.CONFIG and rt.requests == [] and len(front.requests) == 1


def test_a_header_the_http_layer_refuses_is_an_outcome_without_its_value() -> None:
    """A token with a trailing newline: no exception, nothing sent, no value in the reason."""
    server = RecordingServer()
    client = Client(WebhookTarget.model_validate({"type": "webhook", "url": server.url}))
    answer = client.request("POST", server.url, data=b"{}",
                            headers={"Authorization": "Bearer tok-secret-value\n"})
    client.close()
    server.close()
    assert isinstance(answer, Outcome)
    assert answer.kind is Kind.CONFIG and server.requests == []
    assert "tok-secret-value" not in answer.reason


@pytest.mark.parametrize("url", [
    "https://user:pa55word-in-url@127.0.0.1:{port}/redmine",
    "http://127.0.0.1:{port}/services/T000/B000/XXXXsecretpath?token=qq",
], ids=["userinfo", "secret-path"])
def test_reasons_name_scheme_host_port_only(url: str) -> None:
    """Unreachable: the reason names scheme://host:port, never userinfo, path or query."""
    import socket

    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    url = url.format(port=port)
    hook = Webhook(WebhookTarget.model_validate({"type": "webhook", "url": url,
                                                 "timeout": 2}))
    outcomes = [hook.submit(make(), SubmitOptions(), ENVELOPE), hook.check()]
    hook.close()
    for outcome in outcomes:
        assert outcome.kind is Kind.TEMPORARY
        assert origin(url) in outcome.reason
        for secret in ("user", "pa55word", "secretpath", "qq", "services"):
            assert secret not in outcome.reason


def test_origin() -> None:
    """Default ports are named; IPv6 hosts keep their brackets."""
    assert origin("https://u:p@Example.org/x?y") == "https://example.org:443"
    assert origin("http://[::1]:8080/p") == "http://[::1]:8080"


def test_redmine_check_never_puts_the_key_in_a_url(redmine: FakeRedmine) -> None:
    """check posts the key with no email (Redmine answers 422): no URL carries it."""
    good = Redmine(RedmineTarget.model_validate({"type": "redmine", "url": redmine.url,
                                                 "key": redmine.key}))
    bad = Redmine(RedmineTarget.model_validate({"type": "redmine", "url": redmine.url,
                                                "key": "wrong-key-value"}))
    assert good.check().kind is Kind.SUCCESS
    assert bad.check().kind is Kind.CONFIG
    good.close()
    bad.close()
    for request in redmine.requests:
        assert "key" not in request.path and "email" not in request.form
        assert request.method == "POST"


def test_redmine_check_refuses_what_creates_from_nothing() -> None:
    """A 201 to a post without an email is not Redmine's mail handler."""
    server = RecordingServer()
    server.answer = lambda request: (201, b"", 0)
    tracker = Redmine(RedmineTarget.model_validate({"type": "redmine", "url": server.url,
                                                    "key": "some-key-value"}))
    outcome = tracker.check()
    tracker.close()
    server.close()
    assert outcome.kind is Kind.CONFIG


