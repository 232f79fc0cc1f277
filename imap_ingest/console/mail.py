"""The console's mail side: the messages set aside (held, failed, quarantined; moved away or
marked in place on IMAP, left in the maildrop on POP3, where the ledger says which), one
message with its trace, and the Retry / Release actions."""

from __future__ import annotations

from dataclasses import dataclass

from ..config import Account, Config
from ..errors import MailboxError
from ..explain import trace_lines
from ..ledger import Key, Ledger
from ..mailbox import Mailbox
from ..message import Message
from ..oauth import Tokens
from ..retry import retry_account
from ..rules import RuleSet
from ..source import Source, open_source
from ..states import FAILED, SKIPPED, Result, State
from ..trackers import Envelope, Kind, Tracker

SHOWN = 30  # messages listed per folder, newest first
_KINDS = {Result.HELD: "held", Result.FAILED: "failed", Result.QUARANTINED: "quarantined"}


@dataclass(frozen=True, slots=True)
class Aside:
    """A message in a failure, quarantine or loops folder, or marked failed or held in
    place."""

    account: str
    folder: str  # where it is now
    uid: int
    subject: str
    sender: str
    kind: str  # held | failed | quarantined
    reason: str


def aside_folders(config: Config, account: Account) -> dict[str, str]:
    """The folders where this account's messages are set aside: name → kind."""
    found = {name: "held" for name in [config.loops_folder,
                                       *(f.loops_folder for f in account.folders)] if name}
    found |= {f.move_on_failure: "failed" for f in account.folders if f.move_on_failure}
    found[config.quarantine_folder] = "quarantined"
    return found


def set_aside(config: Config, ledger: Ledger, tokens: dict[str, Tokens],
              only: tuple[str, str] | None = None) -> list[Aside]:
    """Every message set aside (``only`` those in this account's folder), with what the
    ledger says of why; a folder that cannot be read (not created yet) lists nothing."""
    found: list[Aside] = []
    for account in config.accounts:
        if only is not None and account.name != only[0]:
            continue
        try:
            if not account.has_folders:
                with open_source(account, tokens.get(account.name), ledger) as source:
                    found += _in_maildrop(source, ledger, account)
                continue
            with Mailbox(account, tokens.get(account.name)) as mailbox:
                places = [(name, kind, ["UNDELETED"])
                          for name, kind in aside_folders(config, account).items()]
                places += [(f.name, "failed", ["KEYWORD", FAILED]) for f in account.folders
                           if not f.move_on_failure]
                # Marked skipped in place: held (no loops folder) or skipped by a rule or by
                # age; the ledger tells which.
                places += [(f.name, "held", ["UNDELETED", "KEYWORD", SKIPPED])
                           for f in account.folders]
                for name, kind, criteria in places:
                    if only is not None and name != only[1]:
                        continue
                    found += _listed(mailbox, ledger, account, name, kind, criteria)
        except MailboxError:
            continue
    return found


def _in_maildrop(source: Source, ledger: Ledger, account: Account) -> list[Aside]:
    """A POP3 maildrop's messages set aside, as the ledger knows them (the server keeps no
    folders or marks), with the headers TOP gives."""
    folder = account.folders[0].name
    source.select(folder, readonly=True)
    records = ledger.set_aside(account.name, folder, source.uidvalidity)
    heads = source.fetch(sorted(records)[-SHOWN:], SHOWN, 0, headers=True)
    listed = []
    for one in reversed(list(heads)):
        message, record = Message(one.header or b""), records[one.uid]
        assert record.outcome is not None  # set_aside's are refused, quarantined or held
        listed.append(Aside(account.name, folder, one.uid, message.subject or "(no subject)",
                            message.sender, _KINDS[record.outcome], record.reason or ""))
    return listed


def _listed(mailbox: Mailbox, ledger: Ledger, account: Account, folder: str, kind: str,
            criteria: list[str]) -> list[Aside]:
    try:
        mailbox.select(folder, readonly=True)
        uids = mailbox.search(criteria)[-SHOWN:]
        fetched = list(mailbox.fetch(uids, SHOWN, account.folders[0].max_message_size))
    except MailboxError:
        return []
    in_place = SKIPPED in criteria
    listed = []
    for one in reversed(fetched):
        message = Message(one.raw or b"")
        rows = [row for row, _ in reversed(ledger.history(message.message_id))
                ] if message.message_id else []
        if in_place and not held_here(rows, account.name, folder, one.uid):
            continue
        reasons = [str(row["reason"]) for row in rows if row["reason"]]
        listed.append(Aside(account.name, folder, one.uid, message.subject or "(no subject)",
                            message.sender, kind, reasons[0] if reasons else ""))
    return listed


def held_here(rows: list[dict[str, object]], account: str, folder: str, uid: int) -> bool:
    """Whether the newest of a message's ledger ``rows`` (newest first) for this place says
    it was held there, not skipped."""
    here = next((r for r in rows if (r["account"], r["folder"], r["uid"])
                 == (account, folder, uid)), None)
    return here is not None and here["outcome"] == Result.HELD


def raw(config: Config, ledger: Ledger, tokens: dict[str, Tokens], account_name: str,
        folder: str, uid: int) -> bytes | None:
    """The message's bytes as the server has them, or None when it is not there."""
    account = _account(config, account_name)
    with open_source(account, tokens.get(account.name), ledger) as source:
        source.select(folder, readonly=True)
        for one in source.fetch([uid], 1, 2**62):
            return one.raw
    return None


def trace(config: Config, account_name: str, folder: str, raw_bytes: bytes) -> list[str]:
    """What `imap-ingest explain` says of the message, as read by its source folder."""
    account = _account(config, account_name)
    source = next((f for f in account.folders if f.name == folder), account.folders[0])
    rules = RuleSet.for_folder(source, config)
    return [f"(rules of {account.name}/{source.name})", *trace_lines(
        rules, rules.evaluate(Message(raw_bytes)))]


def do_retry(config: Config, ledger: Ledger, tokens: dict[str, Tokens], account_name: str,
             folder: str, uid: int) -> list[str]:
    """`imap-ingest retry FOLDER` for this one message (POP3: released in the ledger, as
    nothing on the server says it was refused)."""
    return list(retry_account(ledger, _account(config, account_name), folder, [uid],
                              tokens.get(account_name)))


def do_release(config: Config, ledger: Ledger, trackers: dict[str, Tracker],
               tokens: dict[str, Tokens], account_name: str, folder: str, uid: int) -> str:
    """Submit a held message despite the check that held it, as its source folder would;
    recorded as submitted, then disposed of as the source folder says."""
    account = _account(config, account_name)
    with open_source(account, tokens.get(account.name), ledger) as mailbox:
        mailbox.select(folder)
        fetched = next(iter(mailbox.fetch([uid], 1, 2**62)), None)
        if fetched is None or not fetched.raw:
            return f"uid {uid} is no longer in {folder}"
        message = Message(fetched.raw)
        rows = ledger.history(message.message_id) if message.message_id else []
        row = next((r for r, _ in reversed(rows) if r["account"] == account.name
                    and r["outcome"] == Result.HELD), None)
        if row is None:
            return f"uid {uid}: no record of where it was held from; not released"
        source = next(f for f in account.folders if f.name == row["folder"])
        key = Key(account.name, source.name, int(str(row["uidvalidity"])), int(str(row["uid"])))
        target = config.target_for(source.options())
        outcome = trackers[target].submit(message.raw, source.options(),
                                          Envelope.of(account, message, source.name))
        if outcome.kind is not Kind.SUCCESS:
            return f"uid {uid}: {target} did not take it: {outcome.reason}"
        ledger.answered(key, target, State.SUBMITTED, Result.SUBMITTED,
                        "released from " + folder, status=outcome.status, ticket=outcome.ticket)
        if folder == source.name:  # held in place: the mark would keep it unseen
            mailbox.unmark([uid], SKIPPED)
        if source.move_on_success:
            mailbox.move([uid], source.move_on_success)
        else:
            mailbox.delete([uid])
        mailbox.commit()  # POP3: QUIT, so that a DELE takes effect
        ledger.disposed([key])
        return (f"uid {uid} released: submitted to {target}"
                + (f" as {outcome.ticket}" if outcome.ticket else ""))


def _account(config: Config, name: str) -> Account:
    account = next((a for a in config.accounts if a.name == name), None)
    if account is None:
        raise LookupError(f"no account {name}")
    return account
