"""The real trackers, one server each for the whole session (see redmine.py and rt.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .redmine import REDMINE_6_FORM_LIMIT, RealRedmine, RedmineNotInstalled
from .rt import NOT_INSTALLED, RealRT, installed


def _server(form_limit: int | None = None) -> Iterator[RealRedmine]:
    try:
        server = RealRedmine(form_limit=form_limit)
    except RedmineNotInstalled as exc:
        pytest.fail(f"{exc}; the README's test command installs it", pytrace=False)
    with server:
        yield server


@pytest.fixture(scope="session")
def redmine_stock() -> Iterator[RealRedmine]:
    """Debian's Redmine as shipped (Rack's 4 MiB form limit), one server for the session."""
    yield from _server()


@pytest.fixture(scope="session")
def redmine_roomy() -> Iterator[RealRedmine]:
    """The same Redmine with Rack's form limit raised to 32 MiB, as Redmine 6.0.6 does."""
    yield from _server(REDMINE_6_FORM_LIMIT)


@pytest.fixture(scope="session")
def rt_server() -> Iterator[RealRT]:
    """One real RT for the session (the template database is built once and cached)."""
    if not installed():
        pytest.fail(NOT_INSTALLED, pytrace=False)
    server = RealRT()
    try:
        server.start()
    except BaseException:
        server.close()
        raise
    yield server
    server.close()


@pytest.fixture
def real_rt(rt_server: RealRT) -> RealRT:
    """The session's RT, back to the freshly seeded database with no outgoing mail."""
    return fresh(rt_server)


def fresh(server: RealRT) -> RealRT:
    """``server`` running, back to the freshly seeded database with no outgoing mail."""
    if not server.running:  # an earlier test took it down: bring it back
        server.start()
    server.reset()
    return server
