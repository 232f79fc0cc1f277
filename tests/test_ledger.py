"""The ledger on its own: states, duplicates under each policy, atomicity, bad files; each
behaviour over both backends (SQLite and PostgreSQL)."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from imap_ingest.backoff import Backoff
from imap_ingest.firstrun import Started
from imap_ingest.ledger import (
    SCHEMA_VERSION,
    Begun,
    Earlier,
    Key,
    Ledger,
    LedgerError,
    Record,
    SqliteLedger,
)
from imap_ingest.ledger.postgres import PostgresLedger
from imap_ingest.states import Disposition, Result, State

from .support.ledger_files import as_left_by
from .support.postgres import Postgres

Opener = Callable[[], Ledger]


@pytest.fixture(params=["sqlite", "postgres"])
def opener(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Opener]:
    """Opens another connection to one fresh ledger, of either backend."""
    if request.param == "sqlite":
        yield lambda: SqliteLedger(tmp_path / "state" / "ledger.sqlite3")
        return
    server: Postgres = request.getfixturevalue("postgres")
    url = server.database()
    yield lambda: PostgresLedger(url, server.password)


@pytest.fixture
def ledger(opener: Opener) -> Iterator[Ledger]:
    opened = opener()
    yield opened
    opened.close()


A1 = Key("acct", "INBOX", 7, 1)
B1 = Key("acct", "Other", 9, 1)


def find(ledger: Ledger, key: Key) -> Record | None:
    return ledger.records(key.account, key.folder, key.uidvalidity, [key.uid]).get(key.uid)


def begin(ledger: Ledger, key: Key, message_id: str | None = "<m@x>", digest: str = "h1",
          dedupe: str = "message-id", target: str = "redmine") -> Begun | Earlier:
    return ledger.begin_submit(key, message_id, 10, digest, "default", target,
                               dedupe)  # type: ignore[arg-type]


def submit(ledger: Ledger, key: Key, message_id: str | None = "<m@x>", digest: str = "h1",
           dedupe: str = "message-id") -> str | None:
    """Where the earlier copy is, or None when this one was recorded as submitting."""
    found = begin(ledger, key, message_id, digest, dedupe)
    return found.where if isinstance(found, Earlier) else None


def test_states_move_forward(ledger: Ledger) -> None:
    """submitting → submitted (with ticket and attempt) → disposed."""
    assert submit(ledger, A1) is None
    record = find(ledger, A1)
    assert record is not None and record.state == "submitting"
    ledger.answered(A1, "redmine", State.SUBMITTED, Result.SUBMITTED, "ok", status=201,
                    ticket="42", dispose_to=Disposition("delete"))
    record = find(ledger, A1)
    assert record is not None
    assert (record.state, record.ticket, record.attempts, record.dispose_to) == (
        "submitted", "42", 1, Disposition("delete"))
    ledger.disposed([A1])
    assert find(ledger, A1).state == "disposed"  # type: ignore[union-attr]


@pytest.mark.parametrize(("dedupe", "message_id", "digest", "duplicate"), [
    ("message-id", "<m@x>", "other", False),  # another message reusing the Message-ID
    ("message-id", "<n@x>", "h1", False),
    ("content", "<n@x>", "h1", True),
    ("content", "<m@x>", "other", False),
    ("off", "<m@x>", "h1", False),  # another folder: not matched when dedupe is off
])
def test_duplicates_by_policy(ledger: Ledger, dedupe: str, message_id: str | None,
                              digest: str, duplicate: bool) -> None:
    """Each dedupe policy matches an earlier submission by its own key, or not."""
    assert submit(ledger, A1, dedupe=dedupe) is None
    earlier = submit(ledger, B1, message_id, digest, dedupe)
    assert (earlier is not None) is duplicate
    if duplicate:
        assert earlier == "acct/INBOX uid 1"


def test_no_message_id_dedupes_by_content(ledger: Ledger) -> None:
    """Mail without a Message-ID is deduplicated by content."""
    assert submit(ledger, A1, message_id=None) is None
    assert submit(ledger, B1, message_id=None) == "acct/INBOX uid 1"


def test_same_folder_new_uidvalidity_matched_even_with_dedupe_off(ledger: Ledger) -> None:
    """After a UIDVALIDITY change the same message (Message-ID and content) is recognised."""
    assert submit(ledger, A1, dedupe="off") is None
    moved = Key("acct", "INBOX", 8, 55)
    assert submit(ledger, moved, dedupe="off") == "acct/INBOX uid 1"
    assert submit(ledger, moved, digest="changed", dedupe="off") is None


def test_refused_messages_do_not_block_a_copy(ledger: Ledger) -> None:
    """A copy of a message that was refused (not in the tracker) may be submitted."""
    submit(ledger, A1)
    ledger.answered(A1, "redmine", State.DECIDED, Result.FAILED, "422",
                    dispose_to=Disposition("move", "Failed"))
    assert submit(ledger, B1) is None


def test_check_and_insert_is_atomic_across_threads(ledger: Ledger, opener: Opener) -> None:
    """Ten threads with ten copies, two connections: exactly one may submit."""
    other = opener()
    results: list[str | None] = []
    keys = [Key("acct", f"F{i}", 1, 1) for i in range(10)]
    threads = [threading.Thread(target=lambda k=k, i=i: results.append(
        submit(ledger if i % 2 else other, k))) for i, k in enumerate(keys)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    other.close()
    assert results.count(None) == 1


def test_uidvalidity_change_detected(ledger: Ledger) -> None:
    """A folder's UIDVALIDITY change is reported once the first value is known."""
    assert not ledger.uidvalidity_changed("acct", "INBOX", 7)
    assert not ledger.uidvalidity_changed("acct", "INBOX", 7)
    assert ledger.uidvalidity_changed("acct", "INBOX", 8)


def test_target_backoff(ledger: Ledger) -> None:
    """Target failures count up and push the next try later; success resets them."""
    backoff = Backoff(first=30, cap=3600)
    first = ledger.target_failed("redmine", "down", backoff)
    second = ledger.target_failed("redmine", "down", backoff)
    failures, next_try = ledger.target_state("redmine")
    assert failures == 2 and next_try == second and second > first
    ledger.target_ok("redmine")
    assert ledger.target_state("redmine")[0] == 0


@pytest.mark.parametrize(("failures", "low", "high"), [
    (1, 15, 30), (2, 30, 60), (3, 60, 120), (8, 1800, 3600), (30, 1800, 3600)])
def test_backoff_doubles_with_jitter_and_cap(failures: int, low: float, high: float) -> None:
    """Backoff doubles per failure, jittered down to half, up to the cap."""
    delays = {Backoff(first=30, cap=3600).delay(failures) for _ in range(50)}
    assert all(low <= d <= high for d in delays) and len(delays) > 1


def test_corrupt_file_is_a_clear_error(tmp_path: Path) -> None:
    """A file that is not a database is a LedgerError exiting 78."""
    path = tmp_path / "ledger.sqlite3"
    path.write_bytes(b"this is not a database at all" * 100)
    with pytest.raises(LedgerError, match="cannot be used") as info:
        SqliteLedger(path)
    assert info.value.exit_code == 78


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    """A ledger with a newer schema version is refused."""
    path = tmp_path / "ledger.sqlite3"
    SqliteLedger(path).close()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'",
                   (str(SCHEMA_VERSION + 1),))
    db.close()
    with pytest.raises(LedgerError, match="newer imap-ingest"):
        SqliteLedger(path)


def test_newer_schema_is_refused_by_postgres(postgres: Postgres) -> None:
    """A PostgreSQL ledger with a newer schema version is refused, exiting 78."""
    url = postgres.database()
    PostgresLedger(url, postgres.password).close()
    with psycopg.connect(url, password=postgres.password, autocommit=True) as db:
        db.execute("UPDATE meta SET value = %s WHERE key = 'schema_version'",
                   (str(SCHEMA_VERSION + 1),))
    with pytest.raises(LedgerError, match="newer imap-ingest") as info:
        PostgresLedger(url, postgres.password)
    assert info.value.exit_code == 78


def test_a_second_opening_migrates_nothing(ledger: Ledger, opener: Opener) -> None:
    """Opening a ledger that is up to date keeps its records."""
    submit(ledger, A1)
    again = opener()
    assert find(again, A1) is not None
    again.close()


def test_reports_read_the_same_on_both_backends(ledger: Ledger) -> None:
    """summary, pending, hourly, latest and history answer in the same shapes."""
    submit(ledger, A1)
    ledger.answered(A1, "redmine", State.WAITING, Result.DEFERRED, "503", next_try=5e9)
    assert [row[:4] for row in ledger.summary()] == [("acct", "INBOX", "waiting", 1)]
    [(account, folder, _oldest, waiting, held, failed, quarantined, error)] = ledger.pending()
    assert (account, folder, waiting, held, failed, quarantined, error) == (
        "acct", "INBOX", 1, 0, 0, 0, "503")
    [(hour, outcome, count)] = ledger.hourly(0)
    assert hour % 3600 == 0 and hour <= time.time() and (outcome, count) == ("deferred", 1)
    assert ledger.latest(5)[0]["outcome"] == "deferred"
    [(record, attempts)] = ledger.history("<m@x>")
    assert record["uid"] == 1 and attempts[0]["reason"] == "503"


def test_earlier_copy_says_its_standing(ledger: Ledger) -> None:
    """begin_submit names the earlier copy with its state and outcome."""
    begin(ledger, A1)
    found = begin(ledger, B1)
    assert isinstance(found, Earlier)
    assert (found.where, found.state, found.outcome) == ("acct/INBOX uid 1", State.SUBMITTING,
                                                         None)
    ledger.answered(A1, "redmine", State.SUBMITTED, Result.SUBMITTED, "ok", ticket="42",
                    dispose_to=Disposition("delete"))
    ledger.disposed([A1])
    found = begin(ledger, B1)
    assert isinstance(found, Earlier)
    assert (found.state, found.outcome, found.ticket) == (State.DISPOSED, Result.SUBMITTED, "42")


def test_dedupe_is_per_target(ledger: Ledger) -> None:
    """One mail for two targets is two submissions, one per target."""
    assert isinstance(begin(ledger, A1, target="redmine"), Begun)
    assert isinstance(begin(ledger, B1, target="security"), Begun)
    assert isinstance(begin(ledger, Key("acct", "Third", 1, 1), target="security"), Earlier)


def test_reused_message_id_is_a_new_message_named(ledger: Ledger) -> None:
    """Under message-id, other content with a seen Message-ID is submitted, naming the other."""
    begin(ledger, A1)
    assert begin(ledger, B1, digest="other") == Begun(reused="acct/INBOX uid 1")
    assert begin(ledger, Key("acct", "C", 1, 1), message_id="<n@x>") == Begun()


def test_take_over_inherits_the_retry(ledger: Ledger) -> None:
    """A take-over keeps attempts, first sight and next try; only one copy can take it."""
    begin(ledger, A1)
    ledger.answered(A1, "redmine", State.WAITING, Result.DEFERRED, "503", next_try=5e9)
    earlier = begin(ledger, B1)
    assert isinstance(earlier, Earlier) and earlier.state is State.WAITING
    old = find(ledger, A1)
    record = ledger.take_over(earlier, B1, "<m@x>", 10, "h1", "default", "redmine")
    assert record is not None and old is not None
    assert (record.state, record.outcome, record.attempts, record.first_seen,
            record.next_try, record.reason) == (State.WAITING, Result.DEFERRED, 1,
                                                old.first_seen, 5e9, "503")
    assert find(ledger, B1) == record
    assert (find(ledger, A1).state, find(ledger, A1).outcome) == (  # type: ignore[union-attr]
        State.DISPOSED, Result.SUPERSEDED)
    assert ledger.take_over(earlier, Key("acct", "C", 1, 1), "<m@x>", 10, "h1", "default",
                            "redmine") is None
    assert isinstance(begin(ledger, B1), Begun)  # the copy now submits on its own record
    assert find(ledger, B1).attempts == 1  # type: ignore[union-attr]


def test_retry_after_is_bounded_by_the_cap(ledger: Ledger) -> None:
    """A huge Retry-After holds a target back no longer than the backoff's cap."""
    backoff = Backoff(first=30, cap=3600)
    for at_least in (1e300, float("inf"), float("nan")):
        next_try = ledger.target_failed("redmine", "429", backoff, at_least=at_least)
        assert next_try - time.time() <= 3600


def test_schema_two_ledger_gains_the_uidls_table(tmp_path: Path) -> None:
    """A schema 2 ledger written before the uidls table opens, gains it, and maps UIDLs."""
    as_left_by(tmp_path, "DROP TABLE uidls; "
                         "UPDATE meta SET value = '2' WHERE key = 'schema_version';")
    ledger = Ledger.open(tmp_path)
    try:
        first = ledger.uids("pop", "INBOX", ["a", "b"])
        again = ledger.uids("pop", "INBOX", ["b", "c"])
        assert again == {"b": first["b"], "c": max(first.values()) + 1}
    finally:
        ledger.close()
    with sqlite3.connect(tmp_path / "ledger.sqlite3") as db:
        assert db.execute("SELECT value FROM meta").fetchone()[0] == str(SCHEMA_VERSION) == "2"


def test_uidls_keep_their_uids_on_both_backends(ledger: Ledger) -> None:
    """uids gives a UIDL seen before its old UID and a new UIDL a new one, on both backends."""
    first = ledger.uids("pop", "INBOX", ["a", "b"])
    again = ledger.uids("pop", "INBOX", ["b", "c"])
    assert again["b"] == first["b"] and again["c"] not in first.values()
    assert ledger.uids("other", "INBOX", ["a"])["a"] not in {*first.values(), again["c"]}


def test_flood_counts_and_first_runs_on_both_backends(ledger: Ledger) -> None:
    """admit counts within the window up to the limit; start keeps the first run's record."""
    limits = [("sender:a@x", 2, 60.0)]
    assert ledger.admit(limits, 1000.0) is None
    assert ledger.admit(limits, 1001.0) is None
    assert ledger.admit(limits, 1002.0) == ("sender:a@x", 2)
    assert ledger.admit(limits, 1061.5) is None  # the first has left the window
    assert ledger.started("acct", "INBOX") is None
    first = Started(7, 100, 1000.0, None)
    assert ledger.start("acct", "INBOX", first) == first
    assert ledger.start("acct", "INBOX", Started(7, 200, 2000.0, None)) == first
    assert ledger.started("acct", "INBOX") == first


def test_schema_1_ledger_is_migrated_to_2(tmp_path: Path) -> None:
    """A ledger of schema 1 (no archived table) opens, gains the table and says version 2."""
    path = tmp_path / "ledger.sqlite3"
    SqliteLedger(path).close()
    with sqlite3.connect(path) as db:
        db.execute("DROP TABLE archived")
        db.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    db.close()
    ledger = SqliteLedger(path)
    assert ledger.archive_summary() == (0, 0, 0, 0)
    ledger.close()
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT value FROM meta").fetchone() == ("2",)
    db.close()
