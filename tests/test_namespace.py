"""Configured folder names resolved against the server's namespace: a pure table."""

from __future__ import annotations

import pytest

from imap_ingest.namespace import Namespace

DOVECOT = Namespace.of([("", ".")])  # Maildir's default
GMAIL = Namespace.of([("", "/")], None, None)
CYRUS = Namespace.of([("INBOX.", ".")], [("user.", ".")], [("", ".")])
COURIER = Namespace.of([("INBOX.", ".")], None, [("#shared.", ".")])
FLAT = Namespace.of([("", None)])


@pytest.mark.parametrize(("namespace", "name", "resolved"), [
    (DOVECOT, "INBOX", "INBOX"),
    (DOVECOT, "inbox", "INBOX"),
    (DOVECOT, "Done", "Done"),
    (DOVECOT, "redmine.failed", "redmine.failed"),
    (DOVECOT, "redmine/failed", "redmine.failed"),
    (GMAIL, "Done", "Done"),
    (GMAIL, "redmine/failed", "redmine/failed"),
    (GMAIL, "redmine.failed", "redmine.failed"),
    (GMAIL, "[Gmail]/Spam", "[Gmail]/Spam"),
    (CYRUS, "INBOX", "INBOX"),
    (CYRUS, "Done", "INBOX.Done"),
    (CYRUS, "INBOX.Done", "INBOX.Done"),
    (CYRUS, "inbox.Done", "INBOX.Done"),
    (CYRUS, "INBOX/Done", "INBOX.Done"),
    (CYRUS, "redmine.failed", "INBOX.redmine.failed"),
    (CYRUS, "redmine/failed", "INBOX.redmine.failed"),
    (CYRUS, "user.bob.Shared", "user.bob.Shared"),
    (COURIER, "Plain", "INBOX.Plain"),
    (COURIER, "#shared.Tickets", "#shared.Tickets"),
    (FLAT, "a/b", "a/b"),
    (Namespace.of(None, None, None), "Done", "Done"),
])
def test_resolve(namespace: Namespace, name: str, resolved: str) -> None:
    """Each configured name becomes the server's name as the README's rule says."""
    assert namespace.resolve(name) == resolved


def test_a_resolved_name_resolves_to_itself() -> None:
    """Resolving twice changes nothing: a name from the ledger or a log can be given again."""
    for name in ("Done", "a/b", "INBOX", "x.y"):
        once = CYRUS.resolve(name)
        assert CYRUS.resolve(once) == once


@pytest.mark.parametrize(("namespace", "name", "parents"), [
    (CYRUS, "INBOX.Archive.2024", ("INBOX.Archive",)),
    (CYRUS, "INBOX.Done", ()),
    (DOVECOT, "Archive.2024", ("Archive",)),
    (GMAIL, "a/b/c", ("a", "a/b")),
    (COURIER, "#shared.Tickets.Old", ("#shared.Tickets",)),
    (FLAT, "a/b", ()),
])
def test_parents(namespace: Namespace, name: str, parents: tuple[str, ...]) -> None:
    """The levels above a server name, below its namespace's prefix: what a CREATE may make."""
    assert namespace.parents(name) == parents
