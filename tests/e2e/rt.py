"""A real Request Tracker 5 from Debian's ``request-tracker5`` package, private to the tests.

``RealRT`` runs Debian's ``rt-server`` (Plack + Starlet) on 127.0.0.1 on a free port with all
of its state under its own temporary directory: its own ``RT_SiteConfig.pm`` and an empty
``RT_SiteConfig.d`` (through RT's ``RT_SITE_CONFIG`` and ``RT_SITE_CONFIG_DIR``, so nothing
under /etc/request-tracker5 is read), an SQLite database, ``$RT::VarPath`` (where the
``mbox`` mail command writes RT's outgoing mail: nothing leaves the machine), the Mason cache
and the session files. The system instance's database is never touched.

The initialised database (schema, core data, Debian's initialdata, then ``SEED``: queues
Support and Billing, rights, a privileged ``staff`` user, root's password) is built once as a
template with ``rt-setup-database`` and cached under /var/tmp, keyed by the package version and
a digest of everything that went into it. ``reset`` brings a running server back to that
template in a few milliseconds: SQLite's online backup writes the template into the live
database (RT's Starlet workers see the new pages at their next statement, and RT flushes its
record and ACL caches after every request), so no restart is needed.

Assertions go through RT's own REST 2.0 API as root (HTTP basic auth), never through
imap-ingest's logs or ledger.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import mailbox
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from ..support.dovecot import Lifecycle, _die_with_parent, _killpg, _live_group_members

HOST = "127.0.0.1"
PACKAGE = "request-tracker5"
PREFIX = Path("/usr/share/request-tracker5")
RT_SERVER = PREFIX / "libexec" / "rt-server"
SETUP_DATABASE = Path("/usr/sbin/rt-setup-database-5")
CACHE_DIR = Path("/var/tmp/imap-ingest-e2e")  # shared with the Redmine end-to-end tests
# rt5-standalone (Starlet) is request-tracker5's first choice of web server, so apt picks it
# unless rt5-apache2 or rt5-fcgi is there already: name it.
NEEDED_PACKAGES = "request-tracker5 rt5-db-sqlite rt5-standalone"

RTNAME = "rt.example.net"
ORGANIZATION = "example.net"
RT_ADDRESS = "rt@example.net"  # $CorrespondAddress and $CommentAddress
OWNER_EMAIL = "rt-owner@example.net"
ROOT_PASSWORD = "rt-root-password"
STAFF = "staff@example.org"  # privileged: may take and resolve tickets by mail

_START_TIMEOUT = 60.0
_STOP_TIMEOUT = 10.0
_HTTP_TIMEOUT = 30.0

NOT_INSTALLED = (
    f"The RT end-to-end tests need Debian's RT server with SQLite and Starlet ({RT_SERVER}, "
    f"{SETUP_DATABASE}, Perl's DBD::SQLite and Starlet): apt-get install {NEEDED_PACKAGES}"
)

# rt-setup-database --action insert --datafile: what the tests need beyond Debian's initialdata.
SEED = r"""
@Queues = (
    { Name => 'Support' },
    { Name => 'Billing' },
);
@Users = (
    { Name => 'staff@example.org', EmailAddress => 'staff@example.org',
      RealName => 'Staff Member', Privileged => 1 },
);
@ACL = (
    # Anyone may open tickets, reply and comment by mail (RT's usual public helpdesk) ...
    map( { { GroupDomain => 'SystemInternal', GroupType => 'Everyone', Right => $_ } }
         qw(CreateTicket ReplyToTicket CommentOnTicket) ),
    # ... but only staff may take (OwnTicket) and resolve (ModifyTicket).
    map( { { UserId => 'staff@example.org', Right => $_ } }
         qw(SeeQueue ShowTicket ShowTicketComments OwnTicket TakeTicket ModifyTicket) ),
);
@Final = (
    sub {
        my $root = RT::User->new( RT->SystemUser );
        $root->Load('root');
        my ( $ok, $msg ) = $root->SetPassword('__ROOT_PASSWORD__');
        die "setting root's password: $msg\n" unless $ok;
    },
);
1;
""".replace("__ROOT_PASSWORD__", ROOT_PASSWORD)


class RealRTError(RuntimeError):
    """The test RT could not be built, started or asked."""


class RealRTNotInstalled(RealRTError):
    """Debian's request-tracker5 (or its SQLite driver) is not installed."""


@dataclass(frozen=True)
class Ticket:
    """A ticket as RT's REST 2.0 API shows it."""

    id: int
    queue: str
    status: str
    owner: str
    subject: str
    requestors: tuple[str, ...]


@dataclass(frozen=True)
class Transaction:
    """One entry of a ticket's history (REST 2.0 ``ticket/N/history``)."""

    id: int
    type: str  # Create, Correspond, Comment, Set, SetWatcher, Status, EmailRecord, ...
    creator: str
    field: str
    old: str
    new: str


@dataclass(frozen=True)
class Record:
    """Where RT stored an incoming message: the transaction that carries it."""

    ticket: int
    transaction: int
    type: str
    attachment: int


def installed() -> bool:
    """True when Debian's RT server, its setup tool, Starlet and the SQLite driver are here."""
    return (RT_SERVER.is_file() and SETUP_DATABASE.is_file()
            and _perl_has("DBD::SQLite", "Plack::Handler::Starlet"))


def package_version() -> str:
    """The installed request-tracker5 version, as dpkg knows it (the template's cache key)."""
    try:
        done = subprocess.run(["dpkg-query", "-W", "-f=${Version}", PACKAGE],
                              capture_output=True, text=True, check=False, timeout=30)
    except OSError:
        done = None
    if done is not None and done.returncode == 0 and done.stdout.strip():
        return done.stdout.strip()
    generated = (PREFIX / "lib" / "RT" / "Generated.pm").read_text(errors="replace")
    match = re.search(r"\$VERSION\s*=\s*'([^']+)'", generated)
    return match[1] if match else "unknown"


def site_config(directory: Path, database: Path, port: int) -> str:
    """RT_SiteConfig.pm for an instance whose state all lives under ``directory``."""
    def perl(value: str | Path) -> str:
        text = str(value)
        if "'" in text or "\\" in text:
            raise RealRTError(f"unsupported character in {text!r}")
        return f"'{text}'"

    return "\n".join([
        "# Written by tests/e2e/rt.py for imap-ingest's end-to-end tests.",
        f"Set($rtname, {perl(RTNAME)});",
        f"Set($Organization, {perl(ORGANIZATION)});",
        f"Set($WebDomain, {perl(HOST)});",
        f"Set($WebPort, {port});",
        "Set($WebPath, '');",
        f"Set($CorrespondAddress, {perl(RT_ADDRESS)});",
        f"Set($CommentAddress, {perl(RT_ADDRESS)});",
        f"Set($RTAddressRegexp, qr/^{re.escape(RT_ADDRESS).replace('@', '[@]')}$/i);",
        f"Set($OwnerEmail, {perl(OWNER_EMAIL)});",
        "Set($DatabaseType, 'SQLite');",
        f"Set($DatabaseName, {perl(database)});",
        # Outgoing mail is appended to $RT::VarPath/<start time>.mbox: it never leaves.
        "Set($MailCommand, 'mbox');",
        "Set(@MailPlugins, qw(Auth::MailFrom Action::Take Action::Resolve));",
        "Set($DevelMode, 0);",  # stock answers: no ticket id after "ok"
        "Set($Timezone, 'UTC');",
        "Set($LogToSyslog, undef);",
        "Set($LogToFile, undef);",
        "Set($LogToSTDERR, 'info');",
        "Set($BcryptCost, 4);",  # root's REST logins in milliseconds, not a quarter second
        f"$RT::VarPath = {perl(directory / 'var')};",
        f"$RT::MasonDataDir = {perl(directory / 'mason')};",
        f"$RT::MasonSessionDir = {perl(directory / 'sessions')};",
        "1;",
        "",
    ])


def template(cache_dir: Path = CACHE_DIR) -> tuple[Path, float | None]:
    """The seeded database (built once per package version and seed) and the build's seconds."""
    # The seconds are None when the template came from the cache.
    version = package_version()
    digest = hashlib.sha256((SEED + site_config(Path("/x"), Path("/x/db"), 1)).encode())
    path = cache_dir / f"rt-{version}-{digest.hexdigest()[:12]}.sqlite3"
    if path.is_file():
        return path, None
    if not installed():
        raise RealRTNotInstalled(NOT_INSTALLED)
    cache_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="build-", dir=cache_dir) as scratch:
        work = Path(scratch)
        database = work / "rt.sqlite3"
        _prepare(work, database, port=1)
        (work / "seed.pl").write_text(SEED)
        env = _environment(work)
        for args in (["--action", "init", "--skip-create"],
                     ["--action", "insert", "--datafile", str(work / "seed.pl")]):
            done = subprocess.run([str(SETUP_DATABASE), *args], env=env, cwd=work,
                                  stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                  check=False, timeout=300)
            if done.returncode != 0 or "ERROR" in done.stdout + done.stderr:
                raise RealRTError(f"rt-setup-database {' '.join(args)} failed "
                                  f"(exit {done.returncode}):\n{done.stdout}{done.stderr}")
        partial = path.with_name(f".{path.name}.{os.getpid()}")
        _copy_database(database, partial)
        os.replace(partial, path)  # atomic: a concurrent build just wins or loses the race
    return path, time.monotonic() - started


class RealRT(Lifecycle):
    """A private RT 5 server from Debian's package (see the module docstring)."""

    host = HOST

    def __init__(self, *, workers: int = 2, cache_dir: Path = CACHE_DIR) -> None:
        if not installed():
            raise RealRTNotInstalled(NOT_INSTALLED)
        self.workers = workers
        self.cache_dir = cache_dir
        self.port = 0
        self.directory = Path(tempfile.mkdtemp(prefix="imapingest-rt-"))
        self.database = self.directory / "rt.sqlite3"
        self.var_dir = self.directory / "var"
        self.log_file = self.directory / "rt-server.log"
        self.timings: dict[str, float] = {}
        self._template: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0
        self._http = requests.Session()
        self._http.auth = ("root", ROOT_PASSWORD)

    # -- life cycle --------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """What imap-ingest's ``url:`` names (rt-mailgate's ``--url``)."""
        return f"http://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        """Copy the template database in, then serve it; return once RT answers REST."""
        if self.running:
            return
        self._template, built = template(self.cache_dir)
        if built is not None:
            self.timings["template_build"] = built
        started = time.monotonic()
        _copy_database(self._template, self.database)
        for attempt in range(3):
            self.port = _free_port()
            _prepare(self.directory, self.database, self.port)
            try:
                self._launch()
                break
            except RealRTError:
                in_use = "couldn't start up a web server" in self.log_text(since_start=True)
                if attempt == 2 or not in_use:
                    raise
        self.timings["start"] = time.monotonic() - started

    def reset(self) -> None:
        """Back to the freshly seeded database, with no outgoing mail: a few milliseconds."""
        if self._template is None:
            raise RealRTError("reset before start")
        started = time.monotonic()
        _copy_database(self._template, self.database)
        for path in self.var_dir.glob("*.mbox"):
            path.unlink()
        self.timings["reset"] = time.monotonic() - started

    def stop(self) -> None:
        """Stop rt-server and its workers (SIGTERM to the group, SIGKILL if they linger)."""
        # Never SIGINT: Debian's rt-server, running as root, answers it with
        # `chown -R www-data:www-data /var/lib/request-tracker5` (the system instance's state).
        proc = self._proc
        if proc is None:
            return
        started = time.monotonic()
        pgid = proc.pid  # started with start_new_session: the master leads its group
        _killpg(pgid, signal.SIGTERM)
        try:
            proc.wait(timeout=_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            _killpg(pgid, signal.SIGKILL)
            proc.wait()
        deadline = time.monotonic() + _STOP_TIMEOUT
        while _live_group_members(pgid):  # workers the master left behind
            if time.monotonic() > deadline:
                _killpg(pgid, signal.SIGKILL)
                deadline = time.monotonic() + _STOP_TIMEOUT
            time.sleep(0.01)
        self._proc = None
        self.timings["stop"] = time.monotonic() - started

    def close(self) -> None:
        """Stop the server, close the REST session and delete the directory."""
        try:
            self.stop()
        finally:
            self._http.close()
            shutil.rmtree(self.directory, ignore_errors=True)


    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<RealRT {self.url} {state} {self.directory}>"

    def log_text(self, *, since_start: bool = False) -> str:
        """rt-server's output: RT's own log lines (info and up) and Starlet's."""
        with contextlib.suppress(OSError), self.log_file.open("rb") as f:
            f.seek(self._log_offset if since_start else 0)
            return f.read().decode(errors="replace")
        return ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    # -- what RT did, through its REST 2.0 API ---------------------------------------------

    def rest(self, method: str, path: str, *, params: dict[str, str] | None = None,
             body: Any = None) -> Any:
        """One REST 2.0 call as root; the decoded JSON answer."""
        answer = self._http.request(method, f"{self.url}/REST/2.0/{path}", params=params,
                                    json=body, timeout=_HTTP_TIMEOUT)
        if answer.status_code >= 400 or "json" not in answer.headers.get("Content-Type", ""):
            raise RealRTError(f"REST 2.0 {method} {path} {params or ''}: {answer.status_code} "
                              f"{answer.text[:500]}")
        return answer.json()

    def _items(self, method: str, path: str, params: dict[str, str],
               body: Any = None) -> Iterator[dict[str, Any]]:
        page = 1
        while True:
            answer = self.rest(method, path, params={**params, "per_page": "100",
                                                     "page": str(page)}, body=body)
            yield from answer["items"]
            if page >= int(answer.get("pages") or 1):
                return
            page += 1

    def tickets(self, query: str = "id > 0") -> list[Ticket]:
        """Tickets matching a TicketSQL query, by id."""
        params = {"query": query, "orderby": "id", "order": "ASC",
                  "fields": "Queue,Status,Owner,Subject,Requestor", "fields[Queue]": "Name"}
        return [Ticket(
            id=int(item["id"]),
            queue=str(item["Queue"]["Name"]),
            status=str(item["Status"]),
            owner=str(item["Owner"]["id"]),
            subject=str(item["Subject"]),
            requestors=tuple(str(user["id"]) for user in item["Requestor"]),
        ) for item in self._items("GET", "tickets", params)]

    def ticket(self, number: int) -> Ticket:
        """One ticket (raises if RT has no such ticket)."""
        found = self.tickets(f"id = {int(number)}")
        if len(found) != 1:
            raise RealRTError(f"RT has no ticket {number}")
        return found[0]

    def history(self, number: int) -> list[Transaction]:
        """A ticket's transactions, oldest first."""
        params = {"fields": "Type,Creator,Field,OldValue,NewValue"}
        return [Transaction(
            id=int(item["id"]),
            type=str(item["Type"]),
            creator=str(item["Creator"]["id"]),
            field=str(item.get("Field") or ""),
            old=str(item.get("OldValue") or ""),
            new=str(item.get("NewValue") or ""),
        ) for item in self._items("GET", f"ticket/{int(number)}/history", params)]

    def records(self, message_id: str) -> list[Record]:
        """Every transaction in RT whose stored message has this Message-ID."""
        # RT keeps the id without its angle brackets in Attachments.MessageId
        search = [{"field": "MessageId", "value": message_id.strip().strip("<>")}]
        found = []
        for item in self._items("POST", "attachments", {"fields": "TransactionId"}, search):
            transaction = self.rest("GET", f"transaction/{int(item['TransactionId'])}")
            found.append(Record(ticket=int(transaction["Object"]["id"]),
                                transaction=int(transaction["id"]),
                                type=str(transaction["Type"]),
                                attachment=int(item["id"])))
        return found

    def auth_token(self, user: str = "root") -> str:
        """A new REST 2.0 auth token for ``user`` (RT's own RT::AuthToken, as its web page
        makes them)."""
        script = ("use RT; RT::LoadConfig(); RT::Init(); my $u = RT::User->new(RT->SystemUser);"
                  " $u->Load($ARGV[0]) or die 'no such user'; my ($ok, $msg, $auth) = "
                  "RT::AuthToken->new(RT->SystemUser)->Create(Owner => $u->Id, Description => "
                  "'imap-ingest'); die qq($msg\\n) unless $ok; print $auth;")
        done = subprocess.run(["perl", f"-I{PREFIX / 'lib'}", "-e", script, user],
                              env=_environment(self.directory), capture_output=True, text=True,
                              timeout=_START_TIMEOUT, check=False)
        if done.returncode != 0:
            raise RealRTError(f"making a token for {user}: {done.stderr[-500:]}")
        return done.stdout.strip()

    def attachment_content(self, number: int) -> bytes:
        """The bytes RT stored for one attachment (a part of a received mail)."""
        return base64.b64decode(self.rest("GET", f"attachment/{int(number)}")["Content"])

    def outgoing(self) -> list[bytes]:
        """The mail RT has sent since the last reset (from the mbox files), CRLF line ends."""
        mails: list[bytes] = []
        for path in sorted(self.var_dir.glob("*.mbox")):
            box = mailbox.mbox(path, create=False)
            try:
                mails.extend(re.sub(rb"\r?\n", b"\r\n", box.get_bytes(key))
                             for key in box.iterkeys())
            finally:
                box.close()
        return mails

    # -- internals ---------------------------------------------------------------------------

    def _launch(self) -> None:
        self._log_offset = self.log_file.stat().st_size if self.log_file.exists() else 0
        command = [str(RT_SERVER), "--server", "Starlet", "--host", HOST,
                   "--port", str(self.port), "--max-workers", str(self.workers)]
        with self.log_file.open("ab") as output:
            self._proc = subprocess.Popen(command, env=_environment(self.directory),
                                          cwd=self.directory, stdin=subprocess.DEVNULL,
                                          stdout=output, stderr=subprocess.STDOUT,
                                          start_new_session=True,
                                          preexec_fn=_die_with_parent())
        try:
            self._wait_ready()
        except BaseException as exc:
            self.stop()
            if isinstance(exc, RealRTError):
                raise RealRTError(f"{exc}\n--- rt-server log (last lines) ---\n"
                                  f"{self.log_tail()}") from None
            raise

    def _wait_ready(self) -> None:
        """Until REST 1.0's root answers as RT does ("RT/5.0.3... 401 Credentials required")."""
        deadline = time.monotonic() + _START_TIMEOUT
        while True:
            proc = self._proc
            if proc is None or proc.poll() is not None:
                code = None if proc is None else proc.returncode
                raise RealRTError(f"rt-server exited during start-up (exit code {code})")
            if time.monotonic() > deadline:
                raise RealRTError(f"rt-server did not answer on {self.url} "
                                  f"within {_START_TIMEOUT:.0f} s")
            with contextlib.suppress(OSError):
                if _http_get(self.host, self.port, "/REST/1.0/").startswith(b"RT/"):
                    return
            time.sleep(0.02)


def _prepare(directory: Path, database: Path, port: int) -> None:
    for sub in ("var", "mason", "sessions", "RT_SiteConfig.d"):
        (directory / sub).mkdir(exist_ok=True)
    (directory / "RT_SiteConfig.pm").write_text(site_config(directory, database, port))


def _environment(directory: Path) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items()
           if not name.startswith(("RT_", "PERL"))}
    env.update(RT_SITE_CONFIG=str(directory / "RT_SiteConfig.pm"),
               RT_SITE_CONFIG_DIR=str(directory / "RT_SiteConfig.d"),
               LANG="C.UTF-8", LC_ALL="C.UTF-8", TZ="UTC")
    return env


def _copy_database(source: Path, destination: Path) -> None:
    """SQLite's online backup: safe while RT's workers have ``destination`` open."""
    read_only = f"{source.resolve().as_uri()}?mode=ro"  # never write to the template
    with contextlib.closing(sqlite3.connect(read_only, uri=True)) as src, \
            contextlib.closing(sqlite3.connect(destination, timeout=30)) as dst:
        src.backup(dst)


def _perl_has(*modules: str) -> bool:
    try:
        done = subprocess.run(["perl", *(f"-M{module}" for module in modules), "-e1"],
                              capture_output=True, check=False, timeout=30)
    except OSError:
        return False
    return done.returncode == 0


def _http_get(host: str, port: int, path: str) -> bytes:
    """A bare HTTP/1.0 GET (readiness probe: no pools, no retries); the body."""
    with socket.create_connection((host, port), timeout=5) as sock:
        sock.sendall(f"GET {path} HTTP/1.0\r\nHost: {host}:{port}\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return data.partition(b"\r\n\r\n")[2]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])
