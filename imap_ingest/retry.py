"""`imap-ingest retry FOLDER`: give messages that were set aside another try.

FOLDER is a failure or quarantine folder (its messages go back to the folder they came
from) or a source folder (its messages marked failed in place are unmarked). A message the
ledger shows as having reached the tracker stays where it is: retrying it would make a
second ticket.
"""

from __future__ import annotations

from collections.abc import Iterator

from .config import Account
from .ledger import Ledger
from .mailbox import Mailbox
from .message import Message
from .oauth import Tokens
from .pop3 import UIDVALIDITY
from .states import FAILED, Result

_ANY_SIZE = 2**62


def retry_account(ledger: Ledger, account: Account, folder: str,
                  only: list[int] | None = None, tokens: Tokens | None = None) -> Iterator[str]:
    """:func:`retry` on the account's server, or :func:`retry_maildrop` for a POP3
    account, whose refused messages are known to the ledger only."""
    if not account.has_folders:
        yield from retry_maildrop(ledger, account, only)
        return
    with Mailbox(account, tokens) as mailbox:
        yield from retry(mailbox, ledger, account, folder, only)


def retry_maildrop(ledger: Ledger, account: Account,
                   only: list[int] | None = None) -> Iterator[str]:
    """A POP3 account's refused and quarantined messages (``only`` these UIDs, when given),
    still on the server: released, so that its next pass tries them again."""
    folder = account.folders[0].name
    ids = [record.id for uid, record in ledger.set_aside(account.name, folder,
                                                         UIDVALIDITY).items()
           if record.outcome is not Result.HELD and (only is None or uid in only)]
    ledger.release(ids)
    yield f"released {len(ids)} message(s) of {account.name}/{folder}: tried on the next pass"


def retry(mailbox: Mailbox, ledger: Ledger, account: Account, folder: str,
          only: list[int] | None = None) -> Iterator[str]:
    """Move or unmark the messages of ``folder`` (``only`` these UIDs, when given); yields
    one line per decision."""
    sources = {f.name for f in account.folders}
    failing_into = {f.move_on_failure: f.name for f in account.folders if f.move_on_failure}
    in_place = folder in sources
    mailbox.select(folder)
    if in_place and not mailbox.keywords:
        # The server kept no mark: the ledger knows which messages were set aside.
        marked = set(ledger.marked(account.name, folder, mailbox.uidvalidity, FAILED))
        uids = [uid for uid in mailbox.search(["UNDELETED"]) if uid in marked]
    else:
        uids = mailbox.search(["KEYWORD", FAILED] if in_place else ["UNDELETED"])
    if only is not None:
        uids = [uid for uid in uids if uid in only]
    back: dict[str, list[int]] = {}
    for fetched in mailbox.fetch(uids, 100, _ANY_SIZE):
        message = Message(fetched.raw or b"")
        records = ledger.sources(account.name, message.message_id, message.digest())
        where = f"uid {fetched.uid} {message.message_id or '(no Message-ID)'}"
        reached = next((r for r in records if r.outcome in (Result.SUBMITTED, Result.PARTIAL)),
                       None)
        if reached is not None:
            ticket = f" as {reached.ticket}" if reached.ticket else ""
            part = " (at least in part)" if reached.outcome is Result.PARTIAL else ""
            yield f"kept {where}: already in the tracker{part}{ticket} (from {reached.folder})"
            continue
        source = folder if in_place else (records[0].folder if records
                                          else failing_into.get(folder))
        if source is None:
            yield f"kept {where}: no record of its folder, and no folder fails into {folder}"
            continue
        ledger.release([record.id for record in records])
        back.setdefault(source, []).append(fetched.uid)
    for source, moved in back.items():
        if in_place:
            mailbox.unmark(moved, FAILED)
            yield f"unmarked {len(moved)} message(s) in {source}: they are tried on the next pass"
        else:
            mailbox.move(moved, source)
            yield f"moved {len(moved)} message(s) back to {source}: tried on its next pass"
