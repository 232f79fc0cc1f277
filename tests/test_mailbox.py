"""The IMAP session against a real dovecot: what it costs to fetch."""

from __future__ import annotations

import logging
import tracemalloc
from pathlib import Path

import pytest

from imap_ingest.config import Account, load
from imap_ingest.errors import FolderMissing
from imap_ingest.mailbox import Mailbox, status_name
from imap_ingest.states import FAILED, SKIPPED

from .support.dovecot import ImapAccount
from .support.ingest_env import write_config
from .support.mail import make

MIB = 1024 * 1024


def fetch_peak(imap: ImapAccount, tmp_path: Path) -> tuple[bytes, bytes, int]:
    """(the message, what was fetched, the peak of Python allocations while fetching)."""
    raw = make(body=("x" * 76 + "\n") * (5 * MIB // 77))
    imap.append("INBOX", raw)
    account = load(write_config(tmp_path / "c.yaml", imap, "http://127.0.0.1:9")).accounts[0]
    with Mailbox(account) as mailbox:
        mailbox.select("INBOX")
        uids = mailbox.new_uids()
        tracemalloc.start()
        try:
            fetched = [item.raw for item in mailbox.fetch(uids, 10, 60 * MIB)]
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    return raw, fetched[0] or b"", peak


def test_a_fetched_message_is_not_formatted_for_a_debug_log_that_is_off(
        imap: ImapAccount, tmp_path: Path) -> None:
    """Fetching does not format the message for a debug log that is off."""
    # imapclient turns imaplib's protocol trace on and hands it to logging, so every
    # response, a 5 MiB message included, was formatted as text even with debug logging off:
    # fetching holds the message and little else.
    raw, fetched, peak = fetch_peak(imap, tmp_path)
    assert fetched == raw
    assert peak < 1.5 * len(raw)


def test_with_debug_logging_the_protocol_trace_is_kept(
        imap: ImapAccount, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """With --debug (the imapclient logger at DEBUG), the server's responses are logged."""
    caplog.set_level(logging.DEBUG, logger="imapclient")
    fetch_peak(imap, tmp_path)
    assert any("FETCH" in record.getMessage() and record.name == "imapclient.imaplib"
               for record in caplog.records)


def account_of(imap: ImapAccount, tmp_path: Path) -> Account:
    return load(write_config(tmp_path / "c.yaml", imap, "http://127.0.0.1:9")).accounts[0]


def searches(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The UID SEARCH commands sent, as imapclient logs them at DEBUG."""
    return [record.getMessage() for record in caplog.records
            if "SEARCH" in record.getMessage() and record.getMessage().startswith("> ")]


def test_a_kept_connection_searches_only_above_the_mail_it_has_seen(
        imap: ImapAccount, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A kept connection searches only above the UIDs it has seen, and finds new mail."""
    # The first search covers the folder; later ones on the same connection ask only for
    # UIDs above those seen (flat in the folder's size).
    caplog.set_level(logging.DEBUG, logger="imapclient")
    first = [imap.append("INBOX", make()) for _ in range(3)]
    with Mailbox(account_of(imap, tmp_path)) as mailbox:
        mailbox.select("INBOX")
        assert mailbox.new_uids() == first
        mailbox.delete(first)
        newer = imap.append("INBOX", make())
        mailbox.select("INBOX")
        assert mailbox.new_uids() == [newer]
    sent = searches(caplog)
    assert "UID" not in sent[0].split("SEARCH", 1)[1]
    assert f"UID {first[-1] + 1}:*" in sent[1]


def test_mail_left_untouched_is_searched_again(imap: ImapAccount, tmp_path: Path) -> None:
    """Mail a pass left where it was is found again; mail disposed of is not."""
    # Left where it was: deferred, or not reached; found by the next pass though its UIDs
    # are below the newest seen.
    uids = [imap.append("INBOX", make()) for _ in range(5)]
    with Mailbox(account_of(imap, tmp_path)) as mailbox:
        mailbox.select("INBOX")
        assert mailbox.new_uids() == uids
        mailbox.delete(uids[:1])
        mailbox.mark(uids[2:3], SKIPPED)
        mailbox.move(uids[4:], "Done")
        mailbox.select("INBOX")
        assert mailbox.new_uids() == [uids[1], uids[3]]


def test_mail_unmarked_by_another_client_is_searched_again(
        imap: ImapAccount, tmp_path: Path) -> None:
    """Mail unmarked by another client makes the kept connection search the folder."""
    # `imap-ingest retry` (or a person) takes the failed mark off a message from another
    # connection: the kept connection hears of the flag change and searches the whole folder.
    uids = [imap.append("INBOX", make()) for _ in range(3)]
    with Mailbox(account_of(imap, tmp_path)) as mailbox:
        mailbox.select("INBOX")
        assert mailbox.new_uids() == uids
        mailbox.mark(uids, FAILED)
        mailbox.select("INBOX")
        assert mailbox.new_uids() == []
        with imap.client() as other:
            other.select_folder("INBOX")
            other.remove_flags([uids[1]], [FAILED])
        mailbox.select("INBOX")
        assert mailbox.new_uids() == [uids[1]]


def test_many_scattered_unsettled_messages_fall_back_to_a_full_search(
        imap: ImapAccount, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Many scattered unsettled messages make the next search cover the whole folder."""
    # Every other message of 1,200 left unsettled would make a UID set too long for one
    # command line: the full search finds exactly those.
    with imap.client() as client:
        for _ in range(1200):
            client.append("INBOX", make())
    with Mailbox(account_of(imap, tmp_path)) as mailbox:
        mailbox.select("INBOX")
        uids = mailbox.new_uids()
        mailbox.delete(uids[::2])
        mailbox.select("INBOX")
        caplog.set_level(logging.DEBUG, logger="imapclient")
        assert mailbox.new_uids() == uids[1::2]
    assert "UID" not in searches(caplog)[0].split("SEARCH", 1)[1]


def test_a_folder_with_nothing_new_is_not_searched_whole_again(
        imap: ImapAccount, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A folder with nothing new is searched only above its newest message at open."""
    # A poll of a folder whose mail is all handled asks only above the newest message the
    # folder held when it was opened, though no search has returned a UID yet.
    uids = [imap.append("INBOX", make(), flags=[SKIPPED]) for _ in range(3)]
    caplog.set_level(logging.DEBUG, logger="imapclient")
    with Mailbox(account_of(imap, tmp_path)) as mailbox:
        mailbox.select("INBOX")
        assert mailbox.new_uids() == []
        mailbox.select("INBOX")
        assert mailbox.new_uids() == []
    assert f"UID {uids[-1] + 1}:*" in searches(caplog)[1]


def test_switching_folders_costs_a_select_and_no_list(
        imap: ImapAccount, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Each folder switch is one SELECT; LIST is asked only when a SELECT is refused."""
    imap.create("Other")
    caplog.set_level(logging.DEBUG, logger="imapclient")
    with Mailbox(account_of(imap, tmp_path)) as mailbox:
        for folder in ("INBOX", "Other", "INBOX", "Other"):
            mailbox.select(folder)
        sent = [record.getMessage() for record in caplog.records
                if record.getMessage().startswith("> ")]
        assert sum(" SELECT " in line for line in sent) == 4
        assert not [line for line in sent if " LIST " in line]
        with pytest.raises(FolderMissing):
            mailbox.select("Nope")
        mailbox.select("Other")  # a refused SELECT closed the open folder: opened again
        assert mailbox.new_uids() == []


@pytest.mark.parametrize(("response", "name"), [
    ((b"STATUS", b"INBOX", (b"MESSAGES", 1)), "INBOX"),
    ((b"STATUS", b"&AMQ-rger Post", (b"MESSAGES", 1)), "Ärger Post"),
    ((b"STATUS", 2024, (b"MESSAGES", 1)), "2024"),
    ((3, b"EXISTS"), None),
    ((b"OK", b"Still here"), None),
], ids=["plain", "modified-utf7", "digits", "exists", "ok"])
def test_notify_news_names_the_folder_as_list_would(response: tuple[object, ...],
                                                    name: str | None) -> None:
    """A NOTIFY STATUS names its folder decoded as LIST's are; other news names none."""
    assert status_name(response) == name
