"""Connection budgets: which folders are pushed and which polled, without a server."""

from __future__ import annotations

from typing import cast

from imap_ingest.budget import Plan, default_budget, plan
from imap_ingest.config import Folder
from imap_ingest.worker import Connection, FolderWorker


def folders(count: int, **settings: object) -> list[Folder]:
    return [Folder.model_validate({"name": f"F{i}", **settings}) for i in range(count)]


def test_provider_defaults() -> None:
    """Gmail's 15, Exchange Online's 20, else dovecot's 10, each less two for other clients."""
    assert default_budget("imap.gmail.com") == 13
    assert default_budget("Outlook.Office365.com") == 18
    assert default_budget("mail.example.org") == 8


def test_folders_that_fit_each_hold_two_connections() -> None:
    """Five folders in ten connections: each its own pass connection and IDLE watcher."""
    five = plan(folders(5), 10)
    assert five == Plan(False, ("F0", "F1", "F2", "F3", "F4"), ())
    assert five.connections == 10


def test_more_folders_share_a_pass_connection_and_idle_where_room_is_left() -> None:
    """Eight folders in ten: one shared pass connection, nine IDLE watchers at most."""
    eight = plan(folders(8), 10)
    assert eight.shared and len(eight.pushed) == 8 and eight.connections == 9
    twenty = plan(folders(20), 10)
    assert twenty.pushed == tuple(f"F{i}" for i in range(9))
    assert twenty.polled == tuple(f"F{i}" for i in range(9, 20))
    assert twenty.connections == 10


def test_folders_without_idle_are_polled_and_cost_no_watcher() -> None:
    """idle: false folders are polled; a budget of one polls everything over one connection."""
    assert plan(folders(3, idle=False), 10) == Plan(False, (), ("F0", "F1", "F2"))
    assert plan(folders(3), 1) == Plan(True, (), ("F0", "F1", "F2"))


def test_an_announced_pass_goes_before_the_queued_polls() -> None:
    """On a shared connection, the pass IDLE asked for runs next, ahead of queued polls."""
    shared = Connection(shared=True)
    holder, polled, other, pushed = (cast(FolderWorker, object()) for _ in range(4))
    assert shared.take(holder)
    for waiting in (polled, other, pushed):
        assert not shared.take(waiting)
    assert not shared.take(pushed, announced=True)  # IDLE heard of mail: it jumps the queue
    assert [shared.next_or_release() for _ in range(3)] == [pushed, polled, other]
    assert shared.next_or_release() is None


def test_notify_watches_on_one_connection_what_idle_cannot_fit() -> None:
    """With NOTIFY, one connection watches the folders past the IDLE watchers' room."""
    twenty = plan(folders(20), 10, notify=True)
    assert twenty.pushed == tuple(f"F{i}" for i in range(8))
    assert twenty.notified == tuple(f"F{i}" for i in range(8, 20)) and twenty.polled == ()
    assert twenty.connections == 10
    assert twenty.without_notify() == plan(folders(20), 10)  # the server has no NOTIFY
    assert plan(folders(5), 10, notify=True) == plan(folders(5), 10)  # all fit: no NOTIFY
    assert plan(folders(3), 2, notify=True) == Plan(True, (), (), ("F0", "F1", "F2"))
    assert plan(folders(3), 1, notify=True) == plan(folders(3), 1)  # no room for a watcher
    named = [*folders(2), Folder(name="Ärger"), Folder(name="B")]
    assert plan(named, 2, notify=True) == Plan(True, (), ("Ärger",), ("F0", "F1", "B"))
