"""export-training over N archived messages against a local fake RT REST 2.0, batched (a
hundred Message-IDs or tickets per request) beside one query per mail (the cron script's
way): tracker requests and time.

    PYTHONPATH=. python3 bench/training.py [N]
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from imap_ingest import tickets
from imap_ingest.archive import put
from imap_ingest.config import Config
from imap_ingest.ledger import Begun, Key, Ledger
from imap_ingest.states import Result, State
from imap_ingest.training import export, parse_filter


class _FakeRT(BaseHTTPRequestHandler):
    """Attachments carry Message-ID <bench-N@…> in transaction N on ticket N; a third of the
    tickets are rejected in Spam, a third resolved in General, the rest open."""

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        query = parse_qs(urlsplit(self.path).query)
        ids = [int(part.split("=")[1]) for part in query["query"][0].split(" OR ")]
        self._items([{"id": str(n), "Status": ("rejected", "resolved", "open")[n % 3],
                      "Queue": {"id": "1", "Name": "Spam" if n % 3 == 0 else "General"}}
                     for n in ids])

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        values = body[0]["value"]
        if "/attachments" in self.path:
            self._items([{"MessageId": v, "TransactionId": v.split("-")[1].split("@")[0]}
                         for v in values])
        else:
            self._items([{"id": v, "ObjectType": "RT::Ticket", "ObjectId": v} for v in values])

    def _items(self, items: list[dict[str, Any]]) -> None:
        data = json.dumps({"items": items, "pages": 1}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def _archive(config: Config, n: int) -> None:
    ledger = Ledger.open(config.state_dir)
    assert config.archive is not None
    for i in range(1, n + 1):
        raw = (f"Message-ID: <bench-{i}@example.org>\r\nSubject: message {i}\r\n\r\n"
               f"body {i}\r\n").encode()
        key = Key("bench", "INBOX", 1, i)
        begun = ledger.begin_submit(key, f"<bench-{i}@example.org>", len(raw), f"{i:064x}",
                                    "-", "rt", "message-id")
        assert isinstance(begun, Begun)
        ledger.answered(key, "rt", State.SUBMITTED, Result.SUBMITTED, "RT took it")
        ledger.archived(begun.id, put(config.archive.maildir, f"{i}.bench", raw))
    ledger.close()


def run(n: int, batch: int) -> tuple[int, float, dict[str, int]]:
    """(tracker requests, seconds, exported by kind) with ``batch`` per request."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeRT)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    directory = Path(tempfile.mkdtemp(prefix="bench-training-"))
    try:
        config = Config.model_validate({
            "routes": {"mta": {}}, "state_dir": directory / "state",
            "archive": {"maildir": directory / "archive"},
            "targets": {"rt": {"type": "rt", "url": f"http://127.0.0.1:{server.server_port}",
                               "rest_token": "bench"}}})
        _archive(config, n)
        tickets.BATCH = batch
        started = time.monotonic()
        report = export(config, 86400, parse_filter("queue=spam status=rejected"),
                        parse_filter("status=resolved"), directory / "out")
        return report.requests, time.monotonic() - started, report.exported
    finally:
        server.shutdown()
        shutil.rmtree(directory)


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
    for name, batch in (("batched (100 per request)", 100), ("one query per mail", 1)):
        requests, seconds, exported = run(n, batch)
        print(f"{name:28} {n} archived: {requests:6} requests, {seconds:6.2f} s, "
              f"exported {exported}")


if __name__ == "__main__":
    main()
