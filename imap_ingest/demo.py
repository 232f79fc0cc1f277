"""`imap-ingest demo`: the whole path on a throwaway IMAP server, with nothing to set up.

It starts pymap's in-memory IMAP server on loopback (the ``demo`` extra), fills INBOX with
20 sample messages (requests, a reply, auto-replies, a bounce, a form mail, a tracker's own
notification, list mail, a broken message), runs one pass into a ``directory`` target, and
prints what became of each message. The server and the ledger are thrown away afterwards;
the accepted messages stay in the output directory as .eml + .json.
"""

from __future__ import annotations

import importlib.util
import socket
import subprocess
import sys
import tempfile
import time
import unicodedata
from collections.abc import Iterator
from contextlib import contextmanager
from email.header import Header
from pathlib import Path

from imapclient import IMAPClient

from .config import Config
from .errors import EX_OK, EX_TEMPFAIL, EX_UNAVAILABLE
from .ledger import Ledger, SqliteLedger
from .service import Service
from .states import Disposition

USER, PASSWORD = "demouser", "demopass"


def _message(n: int, subject: str, sender: str = "Alice <alice@example.org>",
             headers: str = "", body: str = "Hello,\n\nplease help.\n") -> bytes:
    head = (f"From: {sender}\nTo: support@example.org\nSubject: {subject}\n"
            f"Date: Sat, 21 Nov 2026 09:{n:02d}:00 +0000\nMessage-ID: <demo-{n}@example.org>\n"
            f"MIME-Version: 1.0\n{headers}")
    if "Content-Type:" not in headers:
        head += "Content-Type: text/plain; charset=utf-8\n"
    return (head + "\n" + body).replace("\n", "\r\n").encode()


def samples() -> list[bytes]:
    """20 messages of the kinds a support mailbox gets."""
    requests = ["Printer on fire on floor 3", "VPN drops every hour", "New laptop for Bob",
                "Password reset, please", "Cannot open the shared calendar",
                "Projector in room 2 is dim", "Access to the billing folder",
                "Monitor flickers", "Phone extension for the new hire"]
    mail = [_message(i + 1, subject) for i, subject in enumerate(requests)]
    mail += [
        _message(10, Header("申請\uff1aサーバ再起動", "iso-2022-jp").encode(),
                 "Taro <taro@example.jp>", body="Please restart server A.\n"),
        _message(11, "Re: [Support - Request #1] Printer on fire on floor 3",
                 headers="In-Reply-To: <redmine.issue-1.20261121090100.1@example.org>\n",
                 body="It is out now, thanks.\n"),
        _message(12, "Automatic reply: Printer on fire", "Carol <carol@example.org>",
                 "Auto-Submitted: auto-replied\nX-MS-Exchange-Inbox-Rules-Loop: carol@example.org"
                 "\n", "I am out of the office until Monday.\n"),
        _message(13, "Undelivered Mail Returned to Sender",
                 "MAILER-DAEMON@mail.example.org (Mail Delivery System)",
                 "Return-Path: <>\nContent-Type: multipart/report; report-type=delivery-status;"
                 " boundary=\"B\"\n", "--B\nContent-Type: text/plain\n\nUser unknown.\n"
                 "--B\nContent-Type: message/delivery-status\n\nStatus: 5.1.1\n--B--\n"),
        _message(14, "Request: new mailing list", "Request form <request@example.org>",
                 "Auto-Submitted: auto-generated\nReply-To: Dave <dave@example.org>\n",
                 "List name: ops-announce\nOwner: dave@example.org\n"),
        _message(15, "[Support - Request #1] (New) Printer on fire on floor 3",
                 "Redmine <redmine@example.org>",
                 "X-Mailer: Redmine\nX-Redmine-Project: support\nAuto-Submitted: auto-generated"
                 "\n", "Issue #1 has been reported by Alice.\n"),
        _message(16, "[users] Meeting notes", "Erin <erin@lists.example.org>",
                 "List-Id: <users.lists.example.org>\nPrecedence: list\n"),
        _message(17, "Vacation", "Frank <frank@example.org>",
                 "X-Autoreply: yes\nPrecedence: junk\n", "Back next week.\n"),
        _message(18, "Broken attachment", headers="Content-Type: multipart/mixed; "
                 "boundary=\"never-closed\"\n", body="--never-closed\nContent-Type: "
                 "text/plain\nContent-Transfer-Encoding: base64\n\n!!not base64!!\n"),
        _message(19, "Monthly newsletter", "News <news@example.com>", "Precedence: bulk\n"),
        _message(20, "Keyboard missing keys", "Gina <gina@example.org>"),
    ]
    return mail


def config(port: int, out: Path, state: Path) -> Config:
    """One account on the demo server, a directory target, and the seed's form-mail rule."""
    return Config.model_validate({
        "accounts": [{
            "name": "demo", "host": "127.0.0.1", "port": port, "security": "none",
            "username": USER, "password": PASSWORD,
            "folders": [{
                "name": "INBOX", "project": "support", "move_on_success": "Done",
                "move_on_failure": "Failed", "loops_folder": "Loops",
                "rules": [
                    {"name": "request-form", "if": ["^From:.*request@example\\.org"],
                     "allow": ["auto-submitted"],
                     "then": {"submit": {"category": "request"},
                              "remove_header": "Auto-Submitted", "from_header": "Reply-To"}},
                    {"name": "mailing-lists", "if": ["^List-Id:"], "then": {"move": "Lists"}},
                ]}]}],
        "targets": {"demo": {"type": "directory", "path": str(out),
                             "addresses": ["redmine@example.org"]}},
        "state_dir": str(state),
    })


def run(out: Path) -> int:
    """The demo; returns the exit code."""
    if importlib.util.find_spec("pymap") is None:
        print("imap-ingest demo runs its own IMAP server, pymap: "
              "pip install 'imap-ingest[demo]'", file=sys.stderr)
        return EX_UNAVAILABLE
    mail = samples()
    try:
        with tempfile.TemporaryDirectory(prefix="imap-ingest-demo-") as tmp, pymap_server() as port:
            return _demo(port, mail, out, Path(tmp))
    except RuntimeError as exc:
        print(exc, file=sys.stderr)
        return EX_UNAVAILABLE


def _demo(port: int, mail: list[bytes], out: Path, state: Path) -> int:
    """Fill the server, run one pass, print the table."""
    with IMAPClient("127.0.0.1", port=port, ssl=False, timeout=10) as client:
        client.login(USER, PASSWORD)
        for raw in mail:
            client.append("INBOX", raw)
    print(f"pymap IMAP server on 127.0.0.1:{port}; {len(mail)} messages in INBOX; "
          f"accepted mail is written to {out}/\n", flush=True)
    service = Service(config(port, out, state))
    try:
        code = service.run_once()
    finally:
        service.close()
    print()
    _table(SqliteLedger.open(state), mail, out)
    return EX_OK if code in (EX_OK, EX_TEMPFAIL) else code


def _table(ledger: Ledger, mail: list[bytes], out: Path) -> None:
    from .message import Message

    rows = [("#", "message", "rule", "outcome", "where it is now")]
    for n, raw in enumerate(mail, 1):
        message = Message(raw)
        [(record, _)] = ledger.history(message.message_id or "") or [({}, [])]
        to = record.get("dispose_to")
        where = (to.where if isinstance(to, Disposition) and to.verb == "move"
                 else "INBOX (marked)")
        if record.get("ticket"):
            where += f" + {out.name}/{record['ticket']}.eml"
        rows.append((str(n), (message.subject or "")[:38], str(record.get("rule", "-")),
                     str(record.get("outcome", "-")), where))
    ledger.close()
    widths = [max(_width(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        print("".join(cell + " " * (width - _width(cell) + 2)
                      for cell, width in zip(row, widths, strict=False)) + row[4])


def _width(text: str) -> int:
    """Columns on a terminal: East Asian wide characters take two."""
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


@contextmanager
def pymap_server() -> Iterator[int]:
    """pymap's in-memory server on a free loopback port, stopped afterwards."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-c", "import sys; from pymap.main import main; sys.argv[0] = 'pymap';"
         " sys.exit(main())", "--host", "127.0.0.1", "--port", str(port), "--no-tls", "dict",
         "--demo-user", USER, "--demo-password", PASSWORD],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError("the demo IMAP server (pymap) did not start") from None
                time.sleep(0.1)
        yield port
    finally:
        server.terminate()
        server.wait(timeout=10)
