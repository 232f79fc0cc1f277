"""The ledger's tables, as versioned migration steps both backends apply."""

from __future__ import annotations

SCHEMA_VERSION = 2  # 2: the flood, starts, archived and uidls tables

# Version N's step takes a ledger at N - 1 to N; step 1 makes a new one. Both backends
# apply the same steps (postgres.py rewrites the column types it spells differently).
# Step 2 tolerates its tables half there: development ledgers marked 1 had flood and starts;
# it runs again on a current ledger, so a table or index added to it needs no new version.
MIGRATIONS: dict[int, str] = {1: """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE folders (
    account TEXT NOT NULL, folder TEXT NOT NULL, uidvalidity INTEGER NOT NULL,
    PRIMARY KEY (account, folder));
CREATE TABLE messages (
    id INTEGER PRIMARY KEY,
    account TEXT NOT NULL, folder TEXT NOT NULL, uidvalidity INTEGER NOT NULL,
    uid INTEGER NOT NULL,
    message_id TEXT, size INTEGER NOT NULL, hash TEXT NOT NULL,
    rule TEXT, target TEXT,
    state TEXT NOT NULL,          -- submitting | submitted | decided | waiting | disposed
    outcome TEXT,                 -- submitted | failed | partial | skipped | moved | ...
                                  -- duplicate | held | quarantined | retried | superseded
    ticket TEXT, reason TEXT,
    dispose_to TEXT,              -- delete | move:FOLDER | mark:KEYWORD
    attempts INTEGER NOT NULL DEFAULT 0,
    first_seen REAL NOT NULL, updated REAL NOT NULL, next_try REAL,
    UNIQUE (account, folder, uidvalidity, uid));
CREATE INDEX messages_message_id ON messages (message_id);
CREATE INDEX messages_hash ON messages (hash);
CREATE TABLE attempts (
    message INTEGER NOT NULL REFERENCES messages (id),
    at REAL NOT NULL, target TEXT NOT NULL, outcome TEXT NOT NULL,
    status INTEGER, ticket TEXT, reason TEXT);
CREATE INDEX attempts_message ON attempts (message);
CREATE TABLE targets (
    name TEXT PRIMARY KEY, failures INTEGER NOT NULL, next_try REAL,
    last_error TEXT, last_error_at REAL);
""", 2: """
CREATE TABLE IF NOT EXISTS flood (   -- one row per message let through, per limit key
    key TEXT NOT NULL, at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS flood_key ON flood (key, at);
CREATE TABLE IF NOT EXISTS starts (  -- where a folder's first run started
    account TEXT NOT NULL, folder TEXT NOT NULL, uidvalidity INTEGER NOT NULL,
    first_uid INTEGER NOT NULL, at REAL NOT NULL, since REAL,
    PRIMARY KEY (account, folder));
CREATE TABLE IF NOT EXISTS archived (
    message INTEGER PRIMARY KEY REFERENCES messages (id),
    path TEXT NOT NULL, at REAL NOT NULL,
    exported TEXT, exported_at REAL);  -- spam | ham: written out for training, once
CREATE INDEX IF NOT EXISTS archived_at ON archived (at);
CREATE TABLE IF NOT EXISTS uidls (  -- a POP3 message's UIDL, and the UID it stands under
    uid INTEGER PRIMARY KEY, account TEXT NOT NULL, folder TEXT NOT NULL, uidl TEXT NOT NULL,
    UNIQUE (account, folder, uidl));
-- the few rows still to be disposed of: a pass looks for unfinished deletions among them
CREATE INDEX IF NOT EXISTS messages_pending ON messages (account, folder, uidvalidity, uid)
    WHERE state IN ('submitted', 'decided');
"""}


def steps(version: int) -> range:
    """The migration steps a ledger at ``version`` takes: the latest again when it is
    current, since a step may gain a table without a new version (uidls joined step 2)."""
    return range(min(version + 1, SCHEMA_VERSION) if version else 1, SCHEMA_VERSION + 1)
