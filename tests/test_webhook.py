"""The webhook target: the JSON document (checked against the shipped schema), signing,
raw format, answers; and one config feeding Redmine, RT and a webhook at once."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from imap_ingest.cli import main
from imap_ingest.config import SubmitOptions
from imap_ingest.ledger import SqliteLedger
from imap_ingest.trackers import Envelope, Kind
from imap_ingest.trackers.redmine import crlf
from imap_ingest.trackers.rt import as_piped
from imap_ingest.trackers.webhook import Webhook, WebhookTarget, classify, document

from .support.dovecot import ImapAccount
from .support.ingest_env import backlog
from .support.redmine_server import FakeRedmine, FakeRT, RecordingServer
from .test_loops import CORPUS

SCHEMA = json.loads(resources.files("imap_ingest").joinpath(
    "schemas/webhook.schema.json").read_text())
ENVELOPE = Envelope("test", "INBOX", 7, 3, "billing")


def webhook(url: str, **extra: Any) -> Webhook:
    return Webhook(WebhookTarget.model_validate({"type": "webhook", "url": url, **extra}))


@pytest.mark.parametrize("path", sorted(CORPUS.glob("*.eml")), ids=lambda p: p.name)
def test_every_corpus_message_gives_a_valid_document(path: Path) -> None:
    """Every corpus message gives a schema-valid document with its raw bytes exact."""
    # Corpus: encodings, broken MIME, hostile headers.
    raw = path.read_bytes()
    doc = document(raw, SubmitOptions(project="x"), ENVELOPE, 1024)
    jsonschema.validate(json.loads(json.dumps(doc)), SCHEMA)
    assert base64.b64decode(doc["raw_base64"]) == raw


def test_document_fields() -> None:
    """The JSON document carries envelope, options, decoded headers and parts."""
    raw = (b"From: =?utf-8?q?J=C3=BCrgen?= <j@example.org>\r\nTo: a@x.org, B <b@x.org>\r\n"
           b"Subject: =?utf-8?q?Gr=C3=B6=C3=9Fe?=\r\nMessage-ID: <d@x>\r\nMIME-Version: 1.0\r\n"
           b"Content-Type: multipart/mixed; boundary=B\r\n\r\n--B\r\n"
           b"Content-Type: text/plain; charset=utf-8\r\n\r\nHallo\r\n--B\r\n"
           b"Content-Type: application/pdf\r\nContent-Disposition: attachment; filename=a.pdf\r\n"
           b"Content-Transfer-Encoding: base64\r\n\r\n" + base64.b64encode(b"%PDF" * 10)
           + b"\r\n--B\r\nContent-Type: image/png; name=big.png\r\n"
           b"Content-Transfer-Encoding: base64\r\n\r\n" + base64.b64encode(b"x" * 2000)
           + b"\r\n--B--\r\n")
    doc = document(raw, SubmitOptions(queue="Billing"), ENVELOPE, 1024)
    assert doc["envelope"] == {"account": "test", "folder": "INBOX", "uidvalidity": 7,
                               "uid": 3, "subaddress": "billing"}
    assert doc["options"] == {"queue": "Billing"}
    assert (doc["subject"], doc["message_id"]) == ("Größe", "<d@x>")
    assert doc["from"] == [{"name": "Jürgen", "address": "j@example.org"}]
    assert doc["to"] == [{"name": "", "address": "a@x.org"}, {"name": "B", "address": "b@x.org"}]
    assert doc["text"].strip() == "Hallo" and doc["html"] is None
    pdf, png = doc["attachments"]
    assert (pdf["filename"], pdf["size"], base64.b64decode(pdf["content_base64"])) == (
        "a.pdf", 40, b"%PDF" * 10)
    assert (png["filename"], png["size"], png["content_base64"]) == ("big.png", 2000, None)
    assert ["Subject", "Größe"] in doc["headers"]


def test_signed_with_token_and_headers(hook: RecordingServer) -> None:
    """HMAC-SHA256 of the exact body, bearer token, custom headers; the answer's id kept."""
    hook.answer = lambda request: (201, b'{"ticket": {"id": 77}}', 0)
    client = webhook(hook.url + "/in", secret="shh", token="tok", headers={"X-Desk": "ops"},
                     id_pointer="/ticket/id")
    outcome = client.submit(b"Subject: x\r\n\r\nbody", SubmitOptions(), ENVELOPE)
    client.close()
    assert (outcome.kind, outcome.ticket) == (Kind.SUCCESS, "77")
    [request] = hook.requests
    expected = hmac.new(b"shh", request.body, hashlib.sha256).hexdigest()
    assert request.headers["X-Imap-Ingest-Signature"] == f"sha256={expected}"
    assert request.headers["Authorization"] == "Bearer tok"
    assert request.headers["X-Desk"] == "ops" and request.path == "/in"
    jsonschema.validate(json.loads(request.body), SCHEMA)


@pytest.mark.parametrize("key", ["signing_secret", "secret"])
def test_signing_secret_also_by_its_old_name(key: str) -> None:
    """`signing_secret` signs the body, and so does the old key `secret` of older configs."""
    raw = b"Subject: x\r\n\r\nbody"
    _, fields = webhook("http://127.0.0.1:9", **{key: "shh"}).preview(raw, SubmitOptions(),
                                                                       ENVELOPE)
    body = json.dumps(document(raw, SubmitOptions(), ENVELOPE, 1024**2), ensure_ascii=False)
    expected = hmac.new(b"shh", body.encode(), hashlib.sha256).hexdigest()
    assert ("header X-Imap-Ingest-Signature", f"sha256={expected}") in fields


def test_raw_format(hook: RecordingServer) -> None:
    """The raw format sends the exact bytes as message/rfc822 with the set method."""
    client = webhook(hook.url, format="raw", method="PUT")
    raw = b"Subject: x\n\nbody\x00"
    assert client.submit(raw, SubmitOptions(), ENVELOPE).kind is Kind.SUCCESS
    client.close()
    [request] = hook.requests
    assert (request.method, request.body) == ("PUT", raw)
    assert request.headers["Content-Type"] == "message/rfc822"


@pytest.mark.parametrize(("status", "kind"), [
    (200, Kind.SUCCESS), (202, Kind.SUCCESS), (400, Kind.PERMANENT), (422, Kind.PERMANENT),
    (401, Kind.CONFIG), (403, Kind.CONFIG), (404, Kind.CONFIG), (301, Kind.CONFIG),
    (429, Kind.TEMPORARY), (500, Kind.TEMPORARY), (503, Kind.TEMPORARY)])
def test_classify(status: int, kind: Kind) -> None:
    """A webhook's status maps to the expected kind."""
    assert classify(status, b"", None).kind is kind


def test_retry_after_is_honoured(tmp_path: Path, imap: ImapAccount,
                                 hook: RecordingServer) -> None:
    """429 with Retry-After: 120 → no retry before two minutes, whatever the backoff says."""
    hook.answer = lambda request: (429, b"", 0, {"Retry-After": "120"})
    imap.append("INBOX", b"Subject: x\r\n\r\nbody")
    path = write(tmp_path, imap, {"hook": {"type": "webhook", "url": hook.url}},
                 [{"name": "INBOX", "target": "hook"}])
    before = time.time()
    assert main(["run", "--once", "-c", str(path)]) == 75
    ledger = SqliteLedger(tmp_path / "state" / "ledger.sqlite3")
    failures, next_try = ledger.target_state("hook")
    ledger.close()
    assert failures == 1 and next_try >= before + 120


def test_a_reply_carries_the_ticket_its_thread_became(tmp_path: Path, imap: ImapAccount,
                                                      hook: RecordingServer) -> None:
    """A reply to a message the webhook answered with a ticket id says that ticket."""
    hook.answer = lambda request: (201, b'{"id": "T-1"}', 0)
    path = write(tmp_path, imap, {"hook": {"type": "webhook", "url": hook.url,
                                           "id_pointer": "/id"}},
                 [{"name": "INBOX", "target": "hook"}])
    imap.append("INBOX", b"Message-ID: <first@x>\r\nSubject: help\r\n\r\nbody")
    assert main(["run", "--once", "-c", str(path)]) == 0
    imap.append("INBOX", b"Message-ID: <second@x>\r\nIn-Reply-To: <first@x>\r\n"
                         b"References: <other@x> <first@x>\r\nSubject: Re: help\r\n\r\nmore")
    assert main(["run", "--once", "-c", str(path)]) == 0
    first, second = (json.loads(request.body) for request in hook.requests)
    for doc in (first, second):
        jsonschema.validate(doc, SCHEMA)
    assert (first["ticket"], second["ticket"]) == (None, "T-1")


def write(tmp_path: Path, imap: ImapAccount, targets: dict[str, Any],
          folders: list[dict[str, Any]]) -> Path:
    data = {"accounts": [{"name": "test", "host": imap.host, "port": imap.port,
                          "security": "none", "username": imap.username,
                          "password": imap.password, "folders": folders}],
            "targets": targets, "state_dir": str(tmp_path / "state")}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_one_config_three_trackers(tmp_path: Path, imap: ImapAccount, redmine: FakeRedmine,
                                   rt: FakeRT, hook: RecordingServer) -> None:
    """Three folders, three trackers: each gets every message in its own form."""
    # The same messages are in each folder, and every folder ends empty.
    raws = backlog(imap, 5, "ToRedmine")
    for folder in ("ToRT", "ToHook"):
        for raw in raws:
            imap.append(folder, raw)
    path = write(tmp_path, imap, {
        "redmine": {"type": "redmine", "url": redmine.url, "key": redmine.key},
        "rt": {"type": "rt", "url": rt.url, "queue": "Support"},
        "hook": {"type": "webhook", "url": hook.url, "secret": "s"}},
        [{"name": "ToRedmine", "target": "redmine", "project": "support"},
         {"name": "ToRT", "target": "rt"},
         {"name": "ToHook", "target": "hook"}])
    path.write_text(path.read_text() + "dedupe: off\n")  # the same mail, three trackers
    assert main(["run", "--once", "-c", str(path)]) == 0
    assert redmine.emails == [crlf(raw) for raw in raws]
    assert rt.messages == [as_piped(raw, None) for raw in raws] and len(rt.tickets) == 5
    docs = [json.loads(request.body) for request in hook.requests]
    assert [base64.b64decode(doc["raw_base64"]) for doc in docs] == raws
    assert all(doc["envelope"]["folder"] == "ToHook" for doc in docs)
    assert all(imap.messages(f) == {} for f in ("ToRedmine", "ToRT", "ToHook"))
