"""Shared fixtures: real Dovecot IMAP servers (see tests/support/dovecot.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium import webdriver

from imap_ingest.demo import PASSWORD, USER, pymap_server
from imap_ingest.handoff import SOCKET_VARIABLE

from .support.browser import chromium
from .support.daemon import Daemon
from .support.dovecot import Dovecot, DovecotNotInstalled, ImapAccount, find_dovecot
from .support.packaged import Courier, Cyrus, Packaged, missing
from .support.pki import pki  # noqa: F401  (the session-scoped PKI fixture)
from .support.postgres import Postgres
from .support.redmine_server import FakeRedmine, FakeRT, RecordingServer
from .support.token_service import TokenService

NOT_INSTALLED = (
    "Dovecot is required for the IMAP tests but no dovecot binary was found "
    "(Debian package dovecot-imapd). Run the test command from README.md, which installs it."
)


@pytest.fixture(autouse=True, scope="session")
def _no_deliver_server() -> Iterator[None]:
    """The commands the tests run deliver in-process: a deliver-server this machine runs on
    the default socket (another tree's code) gets none of them; the tests that want one
    start their own (tests/test_deliver_server.py)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(SOCKET_VARIABLE, "/nonexistent/imap-ingest-tests/deliver.sock")
        yield


# Cyrus's and Courier's layout: personal folders under INBOX., levels separated by dots.
INBOX_PREFIX = ("namespace inbox {", "  inbox = yes", "  prefix = INBOX.", "  separator = .",
                "}")


def _start(without: tuple[str, ...] = (), introspection: TokenService | None = None,
           extra: tuple[str, ...] = (), pop3: bool = False) -> Dovecot:
    if find_dovecot() is None:
        pytest.fail(NOT_INSTALLED, pytrace=False)
    try:
        server = Dovecot(without=without, extra=extra,
                         introspection_url=introspection.url + "/introspect" if introspection
                         else None,
                         introspection_ca_file=introspection.ca_file if introspection else None,
                         pop3=pop3)
    except DovecotNotInstalled:
        pytest.fail(NOT_INSTALLED, pytrace=False)
    try:
        server.start()
    except BaseException:
        server.close()
        raise
    return server


@pytest.fixture(scope="session")
def dovecot() -> Iterator[Dovecot]:
    """A Dovecot with its full capability list, shared by the whole session."""
    server = _start()
    yield server
    server.close()


@pytest.fixture(scope="session")
def dovecot_nomove() -> Iterator[Dovecot]:
    """A Dovecot that does not advertise MOVE (but still UIDPLUS, IDLE, ...)."""
    server = _start(without=("MOVE",))
    yield server
    server.close()


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """A PostgreSQL server of the suite's own on a free loopback port, for the session."""
    with Postgres() as server:
        yield server


@pytest.fixture(scope="session")
def dovecot_prefixed() -> Iterator[Dovecot]:
    """A Dovecot laid out as Cyrus and Courier are: NAMESPACE (("INBOX." ".")), so a
    folder outside INBOX. cannot be created."""
    server = _start(extra=INBOX_PREFIX)
    yield server
    server.close()


@pytest.fixture(params=["dovecot_prefixed", "cyrus", "courier"])
def imap_prefixed(request: pytest.FixtureRequest) -> ImapAccount:
    """A fresh, empty mailbox on each server keeping folders under INBOX.: dovecot laid out
    so, and Debian's Cyrus and Courier as they come."""
    server: Dovecot | Packaged = request.getfixturevalue(request.param)
    return server.account()


def _packaged(kind: type[Packaged]) -> Iterator[Packaged]:
    reason = missing()
    if reason is not None:
        pytest.fail(reason, pytrace=False)
    with kind() as server:
        yield server


@pytest.fixture(scope="session")
def cyrus() -> Iterator[Packaged]:
    """Debian's Cyrus IMAP 3.6 as the package configures it (INBOX. namespace, no idled),
    shared by the session (tests/support/packaged.py)."""
    yield from _packaged(Cyrus)


@pytest.fixture(scope="session")
def courier() -> Iterator[Packaged]:
    """Debian's Courier-IMAP 5.0 as the package configures it (INBOX. namespace,
    IMAP_ENHANCEDIDLE=0), shared by the session."""
    yield from _packaged(Courier)


@pytest.fixture
def pymap() -> Iterator[ImapAccount]:
    """pymap's in-memory server (the demo's): PERMANENTFLAGS without \\*, so no keywords."""
    with pymap_server() as port:
        yield ImapAccount("127.0.0.1", port, 0, USER, PASSWORD, "")


@pytest.fixture(scope="session")
def token_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TokenService]:
    """A local OAuth2 provider over https (token endpoint, device code, OIDC discovery,
    introspection) for the session."""
    server = TokenService(tmp_path_factory.mktemp("token-service"))
    yield server
    server.close()


@pytest.fixture
def provider(token_service: TokenService) -> TokenService:
    """The session's OAuth2 provider, back to its defaults for this test."""
    token_service.reset()
    return token_service


@pytest.fixture(scope="session")
def dovecot_oauth(token_service: TokenService) -> Iterator[Dovecot]:
    """A Dovecot that takes XOAUTH2 and OAUTHBEARER logins checked against the token service
    (and passwords, as the others do). Started only by the tests that need it."""
    server = _start(introspection=token_service)
    yield server
    server.close()


@pytest.fixture(scope="session")
def dovecot_pop3(token_service: TokenService) -> Iterator[Dovecot]:
    """A Dovecot that also serves POP3 (plain with STLS, and POP3S) and takes OAuth2 logins
    as dovecot_oauth does. Started only by the POP3 tests."""
    server = _start(introspection=token_service, pop3=True)
    yield server
    server.close()


@pytest.fixture
def imap(dovecot: Dovecot) -> ImapAccount:
    """A fresh, empty mailbox (new username) on the full-capability server."""
    return dovecot.account()


@pytest.fixture
def imap_nomove(dovecot_nomove: Dovecot) -> ImapAccount:
    """A fresh, empty mailbox on the server without MOVE."""
    return dovecot_nomove.account()


@pytest.fixture(params=["move", "nomove"])
def imap_any(request: pytest.FixtureRequest) -> ImapAccount:
    """A fresh, empty mailbox on each server: with MOVE (id ``move``) and without (``nomove``)."""
    name = "dovecot" if request.param == "move" else "dovecot_nomove"
    server: Dovecot = request.getfixturevalue(name)
    return server.account()


@pytest.fixture
def redmine() -> Iterator[FakeRedmine]:
    """A real HTTP server on loopback answering as Redmine's /mail_handler (201 by default)."""
    server = FakeRedmine()
    yield server
    server.close()


@pytest.fixture
def rt() -> Iterator[FakeRT]:
    """A real HTTP server on loopback answering as RT's mail gateway does."""
    server = FakeRT()
    yield server
    server.close()


@pytest.fixture
def hook() -> Iterator[RecordingServer]:
    """A real HTTP server on loopback that records requests and answers 204."""
    server = RecordingServer()
    yield server
    server.close()


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[webdriver.Chrome]:
    """A real headless Chromium with a fresh profile (tests/support/browser.py)."""
    with chromium(tmp_path / "profile") as driver:
        yield driver


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[list[Daemon]]:
    """The services a test starts (append them); any still running at the end are killed."""
    # Asking for tmp_path makes the kill come before tmp_path's own teardown.
    started: list[Daemon] = []
    yield started
    for one in started:
        if one.process.poll() is None:
            one.process.kill()
            one.process.communicate()
