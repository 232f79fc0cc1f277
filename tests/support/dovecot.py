"""A private, throw-away Dovecot IMAP (and, when asked, POP3) server for the test suite.

``Dovecot`` writes a fresh configuration under its own temporary directory (no ``!include`` of
the system configuration, its own ``base_dir``/``state_dir``/log), listens only on 127.0.0.1 on
two free ports (plain IMAP offering STARTTLS, and implicit-TLS IMAPS; with ``pop3`` two more,
POP3 offering STLS and POP3S, on the same mailboxes) and authenticates *any*
username with one password, so every new username is a fresh, empty Maildir.

``ImapAccount`` describes one login on such a server and offers a few helpers that talk to the
server with ``imapclient`` directly (never through ``imap_ingest``), for arranging and checking
mailbox state in tests.
"""

from __future__ import annotations

import contextlib
import ctypes
import grp
import os
import pwd
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

import trustme
from imapclient import IMAPClient

HOST = "127.0.0.1"
DEFAULT_PASSWORD = "imap-ingest-test-password"
MAIL_USER = "imapingest-test"
DOVECOT_CANDIDATES = ("/usr/sbin/dovecot", "/usr/local/sbin/dovecot")

_START_TIMEOUT = 15.0
_STOP_TIMEOUT = 10.0
_SAFE_PATH = re.compile(r"^[A-Za-z0-9_./+-]+$")
_SAFE_PASSWORD = re.compile(r"^[A-Za-z0-9_.+@=-]+$")
_APPENDUID = re.compile(rb"\[APPENDUID (\d+) (\d+)\]", re.IGNORECASE)
_CAPABILITY = re.compile(rb"\[CAPABILITY ([^\]]*)\]", re.IGNORECASE)
# A logout line's counters: pop3 "top=1/202, retr=0/0", imap "body_count=0".
_COUNTED = re.compile(r"\b(top|retr|del|hdr_count|body_count)=(\d+)")

# Post-login capability lists of a default-configured server, per dovecot binary.
_capability_cache: dict[str, tuple[str, ...]] = {}


class Lifecycle:
    """A test server as a context manager: start on entering (closed again if that fails),
    close on leaving."""

    def start(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


class DovecotError(RuntimeError):
    """The test Dovecot could not be set up, started or stopped."""


class DovecotNotInstalled(DovecotError):
    """No dovecot binary was found."""


def find_dovecot() -> str | None:
    """Return the path of the dovecot binary, or None if it is not installed."""
    found = shutil.which("dovecot")
    if found:
        return found
    for candidate in DOVECOT_CANDIDATES:
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def new_username(prefix: str = "t") -> str:
    """A fresh username; with the static userdb it is a brand-new, empty mailbox."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


@dataclass(frozen=True)
class ImapAccount:
    """One login on a test IMAP server, with imapclient-based helpers for arranging/checking."""

    host: str
    port: int
    ssl_port: int
    username: str
    password: str
    ca_file: str

    def ssl_context(self) -> ssl.SSLContext:
        """A client context that trusts (only) the test CA."""
        return ssl.create_default_context(cafile=self.ca_file)

    def client(self, timeout: float = 10.0) -> IMAPClient:
        """A logged-in IMAPClient over the plain port (use as a context manager to log out)."""
        client = IMAPClient(self.host, port=self.port, ssl=False, timeout=timeout)
        try:
            client.login(self.username, self.password)
        except BaseException:
            client.shutdown()
            raise
        return client

    def create(self, folder: str) -> None:
        """Create ``folder`` unless it already exists."""
        with self.client() as client:
            if not client.folder_exists(folder):
                client.create_folder(folder)

    def folders(self) -> list[str]:
        """All folder names, sorted."""
        with self.client() as client:
            return sorted(str(name) for _flags, _delim, name in client.list_folders())

    def append(self, folder: str, raw: bytes, flags: Sequence[str | bytes] = ()) -> int:
        """APPEND ``raw`` to ``folder`` (created if missing); return the new message's UID.

        Note: imaplib rewrites every bare CR and bare LF to CRLF before sending (and Dovecot would
        serve bare LFs as CRLF anyway), so only CRLF messages come back byte-identical.
        """
        with self.client() as client:
            if not client.folder_exists(folder):
                client.create_folder(folder)
            response = client.append(folder, raw, flags=tuple(flags))
        text = response if isinstance(response, bytes) else str(response).encode()
        match = _APPENDUID.search(text)
        if match is None:
            raise AssertionError(f"no APPENDUID in APPEND response {text!r}")
        return int(match.group(2))

    def messages(self, folder: str) -> dict[int, tuple[tuple[bytes, ...], bytes]]:
        """UID -> (sorted flags without \\Recent, raw message) for non-deleted messages.

        Read-only (EXAMINE + BODY.PEEK[]), so it changes no flags. Empty if ``folder`` is missing.
        """
        with self.client() as client:
            if not client.folder_exists(folder):
                return {}
            client.select_folder(folder, readonly=True)
            uids = client.search(["UNDELETED"])
            if not uids:
                return {}
            fetched = client.fetch(uids, ["FLAGS", "BODY.PEEK[]"])
        result: dict[int, tuple[tuple[bytes, ...], bytes]] = {}
        for uid, data in fetched.items():
            if data.get(b"BODY[]") is None:
                continue  # expunged by the pass under test between the SEARCH and the FETCH
            flags = tuple(sorted(bytes(f) for f in data[b"FLAGS"] if bytes(f) != b"\\Recent"))
            result[int(uid)] = (flags, bytes(data[b"BODY[]"]))
        return result


class Dovecot(Lifecycle):
    """A private Dovecot instance under a temporary directory.

    ``without`` names capabilities to remove from the post-login CAPABILITY (e.g. ``["MOVE"]``).
    Removing a capability only stops Dovecot from *advertising* it; Dovecot still executes the
    command if a client sends it anyway.

    ``extra`` lines are added to the configuration as they are (a ``namespace`` block, say).

    With ``introspection_url``, XOAUTH2 and OAUTHBEARER logins are checked by the oauth2 passdb,
    which POSTs the token there (over https trusting ``introspection_ca_file``) and expects
    ``{"active": true, "username": USER}``; LOGIN and PLAIN keep the static password.

    With ``pop3`` (Debian package dovecot-pop3d) it also serves POP3 on ``pop3_port`` (STLS
    offered) and ``pop3s_port`` (implicit TLS), UIDLs as dovecot's default (UID and
    UIDVALIDITY).
    """

    host = HOST

    def __init__(
        self,
        *,
        without: Iterable[str] = (),
        password: str = DEFAULT_PASSWORD,
        directory: str | os.PathLike[str] | None = None,
        binary: str | None = None,
        introspection_url: str | None = None,
        introspection_ca_file: str | None = None,
        pop3: bool = False,
        extra: Sequence[str] = (),
    ) -> None:
        found = binary or find_dovecot()
        if found is None:
            raise DovecotNotInstalled(
                "dovecot is not installed (Debian package dovecot-imapd); "
                "the test command in README.md installs it"
            )
        if not _SAFE_PASSWORD.match(password):
            raise ValueError(f"password must match {_SAFE_PASSWORD.pattern}")
        self.binary = found
        self.password = password
        self.without = frozenset(name.upper() for name in without)
        self.introspection_url = introspection_url
        self.introspection_ca_file = introspection_ca_file
        self.pop3 = pop3
        self.extra = tuple(extra)
        self.port = 0
        self.ssl_port = 0
        self.pop3_port = 0
        self.pop3s_port = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._capability: str | None = None
        self._log_offsets: dict[Path, int] = {}

        if directory is None:
            self.directory = Path(tempfile.mkdtemp(prefix="imapingest-dovecot-"))
            self._owns_directory = True
        else:
            self.directory = Path(directory).resolve()
            self.directory.mkdir(parents=True, exist_ok=True)
            self._owns_directory = False
        if not _SAFE_PATH.match(str(self.directory)):
            raise DovecotError(f"unsupported characters in directory path {self.directory}")
        try:
            self._prepare_directory()
        except BaseException:
            self.close()
            raise

    # -- public API --------------------------------------------------------------------------

    @property
    def ca_file(self) -> str:
        """PEM file of the CA that signed the server certificate (localhost, 127.0.0.1)."""
        return str(self.directory / "ca.pem")

    @property
    def log_file(self) -> Path:
        return self.directory / "dovecot.log"

    @property
    def config_file(self) -> Path:
        return self.directory / "dovecot.conf"

    @property
    def _stderr_file(self) -> Path:
        return self.directory / "dovecot.stderr"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def account(self, username: str | None = None) -> ImapAccount:
        """An account on this server; a new username means a new, empty mailbox."""
        return ImapAccount(
            host=self.host,
            port=self.port,
            ssl_port=self.ssl_port,
            username=username or new_username(),
            password=self.password,
            ca_file=self.ca_file,
        )

    def renumber(self, account: ImapAccount, folder: str = "INBOX") -> None:
        """Make dovecot give ``folder`` a new UIDVALIDITY, as after a lost uidlist or a
        migration: its uidlist and indexes are removed, so every message gets a new UID."""
        maildir = self.directory / "home" / account.username / "Maildir"
        if folder != "INBOX":
            maildir = maildir / f".{folder}"
        time.sleep(1.1)  # dovecot's new UIDVALIDITY is the current second
        (maildir / "dovecot-uidlist").unlink()
        for index in maildir.glob("dovecot.index*"):
            index.unlink()

    def start(self) -> None:
        """Start the server and wait until it greets on the plain port.

        The first start picks free ports; later starts (see ``restart``) reuse them.
        """
        if self.running:
            return
        self.stop()  # reap what is left of a crashed instance
        first_start = self.port == 0
        if self.without and self._capability is None:
            self._capability = self._capability_override()
        attempts = 3 if first_start else 1
        for attempt in range(attempts):
            if first_start:
                self._pick_ports()
            try:
                self._launch(self._capability)
                return
            except DovecotError:
                # Someone else may have grabbed a freshly chosen port: try new ones.
                if attempt + 1 == attempts or not self._port_conflict():
                    raise

    def stop(self) -> None:
        """Stop the server and all its processes; wait until they are gone."""
        proc = self._proc
        if proc is None:
            return
        pgid = proc.pid  # started with start_new_session: master is its group leader
        # SIGTERM the whole group: signalled alone, the master needs ~1 s to stop its children.
        # Repeat it: a child that is still starting up can miss the first one, and the master
        # would then wait 5 s before SIGQUITting it.
        # Once all its children are gone the master sometimes still idles for 1 s: kill it then.
        deadline = time.monotonic() + _STOP_TIMEOUT
        alone_since: float | None = None
        while proc.poll() is None:
            if time.monotonic() > deadline:
                _killpg(pgid, signal.SIGKILL)
                proc.wait()
                break
            _killpg(pgid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=0.01)
            if proc.poll() is None and set(_live_group_members(pgid)) <= {pgid}:
                if alone_since is None:
                    alone_since = time.monotonic()
                elif time.monotonic() - alone_since >= 0.05:
                    proc.kill()
                    proc.wait()
        self._proc = None
        with contextlib.suppress(FileNotFoundError):  # stale after a kill; its PID may be reused
            (self.directory / "run" / "master.pid").unlink()
        deadline = time.monotonic() + _STOP_TIMEOUT
        killed = False
        while _live_group_members(pgid):
            if time.monotonic() > deadline:
                raise DovecotError(f"dovecot processes of group {pgid} did not exit")
            if not killed and time.monotonic() > deadline - _STOP_TIMEOUT / 2:
                _killpg(pgid, signal.SIGKILL)
                killed = True
            time.sleep(0.005)

    def restart(self) -> None:
        """Stop, then start again on the same ports (existing connections are dropped)."""
        self.stop()
        self.start()

    def close(self) -> None:
        """Stop the server and delete its directory (if it created it)."""
        try:
            self.stop()
        finally:
            if self._owns_directory:
                shutil.rmtree(self.directory, ignore_errors=True)

    def log_text(self, *, since_start: bool = False) -> str:
        """dovecot's log plus anything it printed to stdout/stderr (all runs, or the last)."""
        parts = []
        for path in (self.log_file, self._stderr_file):
            with contextlib.suppress(OSError), path.open("rb") as f:
                f.seek(self._log_offsets.get(path, 0) if since_start else 0)
                parts.append(f.read().decode(errors="replace"))
        return "".join(parts)

    def commands(self, protocol: str, username: str) -> dict[str, int]:
        """What ``username``'s finished sessions did, summed from dovecot's logout lines:
        for pop3 ``top``, ``retr``, ``del`` (commands); for imap ``hdr_count``,
        ``body_count`` (FETCHes of headers and of bodies)."""
        counts: dict[str, int] = {}
        for line in self.log_text().splitlines():
            if f"{protocol}({username})" in line and "Disconnected" in line:
                for name, value in _COUNTED.findall(line):
                    counts[name] = counts.get(name, 0) + int(value)
        return counts

    def sessions(self, protocol: str, username: str) -> int:
        """How many of ``username``'s sessions have finished (logged their logout line)."""
        return sum(f"{protocol}({username})" in line and "Disconnected" in line
                   for line in self.log_text().splitlines())

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<Dovecot {self.host}:{self.port}/{self.ssl_port} {state} {self.directory}>"

    # -- internals ---------------------------------------------------------------------------

    def _prepare_directory(self) -> None:
        self.users = users = system_users()
        root = self.directory
        if os.geteuid() == 0:
            # dovenull/dovecot/the mail user must be able to reach base_dir and the homes.
            root.chmod(0o755)
            for parent in root.parents:
                if not parent.stat().st_mode & 0o001:
                    raise DovecotError(
                        f"{parent} is not searchable by other users, so dovecot's unprivileged "
                        f"processes could not reach {root}; use a directory under /tmp"
                    )
        for sub in ("run", "state"):
            (root / sub).mkdir(exist_ok=True)
        home = root / "home"
        home.mkdir(exist_ok=True)
        if os.geteuid() == 0:
            os.chown(home, users.mail_uid, users.mail_gid)

        ca = trustme.CA()
        cert = ca.issue_cert("localhost", HOST)
        ca.cert_pem.write_to_path(self.ca_file)
        cert_file = root / "server-cert.pem"
        key_file = root / "server-key.pem"
        cert_file.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
        key_file.touch(mode=0o600)
        cert.private_key_pem.write_to_path(str(key_file))

    def _config(self, capability: str | None) -> str:
        d, u = self.directory, self.users
        chroot = [] if os.geteuid() == 0 else ["  chroot ="]  # only root may chroot
        lines = [
            "# Written by tests/support/dovecot.py for the imap_ingest test suite.",
            f"base_dir = {d}/run",
            f"state_dir = {d}/state",
            f"instance_name = imapingest-{self.port}",
            f"log_path = {d}/dovecot.log",
            "protocols = imap" + (" pop3" if self.pop3 else ""),
            f"listen = {HOST}",
            f"default_login_user = {u.login_user}",
            f"default_internal_user = {u.internal_user}",
            f"default_internal_group = {u.internal_group}",
            f"first_valid_uid = {u.mail_uid}",
            "last_valid_uid = 0",
            f"first_valid_gid = {u.mail_gid}",
            "ssl = yes",
            f"ssl_cert = <{d}/server-cert.pem",
            f"ssl_key = <{d}/server-key.pem",
            "disable_plaintext_auth = no",
            "auth_mechanisms = plain login"
            + (" xoauth2 oauthbearer" if self.introspection_url else ""),
            # Failed logins: no fixed delay (a ~0.5 s granularity remains) ...
            "auth_failure_delay = 0",
            "mail_location = maildir:~/Maildir",
            *self._oauth2_passdb(),
            "passdb {",
            "  driver = static",
            "  mechanisms = plain login",
            f"  args = password={self.password}",
            "}",
            "userdb {",
            "  driver = static",
            f"  args = uid={u.mail_uid} gid={u.mail_gid} home={d}/home/%u",
            "}",
            "protocol imap {",
            "  mail_max_userip_connections = 1000",
            "}",
            "service imap-login {",
            *chroot,
            "  inet_listener imap {",
            f"    address = {HOST}",
            f"    port = {self.port}",
            "  }",
            "  inet_listener imaps {",
            f"    address = {HOST}",
            f"    port = {self.ssl_port}",
            "    ssl = yes",
            "  }",
            "}",
            # ... and no growing per-IP penalty (up to 15 s per login from 127.0.0.1): with the
            # anvil-auth-penalty socket disabled, auth finds no socket and turns penalties off.
            *self._pop3_service(chroot),
            "service anvil {",
            *chroot,
            "  unix_listener anvil-auth-penalty {",
            "    mode = 0",
            "  }",
            "}",
        ]
        if capability is not None:
            lines.append(f"imap_capability = {capability}")
        lines += self.extra
        return "\n".join(lines) + "\n"

    def _pop3_service(self, chroot: list[str]) -> list[str]:
        if not self.pop3:
            return []
        return ["protocol pop3 {", "  mail_max_userip_connections = 1000", "}",
                "service pop3-login {", *chroot,
                "  inet_listener pop3 {", f"    address = {HOST}", f"    port = {self.pop3_port}",
                "  }",
                "  inet_listener pop3s {", f"    address = {HOST}",
                f"    port = {self.pop3s_port}", "    ssl = yes", "  }", "}"]

    def _oauth2_passdb(self) -> list[str]:
        if self.introspection_url is None:
            return []
        settings = self.directory / "dovecot-oauth2.conf.ext"
        ca = self.introspection_ca_file
        if ca is not None:  # dovecot's auth process may not reach the test's own directory
            ca = str(shutil.copy(ca, self.directory / "introspection-ca.pem"))
        settings.write_text("introspection_mode = post\n"
                            f"introspection_url = {self.introspection_url}\n"
                            "username_attribute = username\n"
                            "active_attribute = active\n"
                            "active_value = true\n"
                            + (f"tls_ca_cert_file = {ca}\n" if ca else ""))
        return ["passdb {", "  driver = oauth2", "  mechanisms = xoauth2 oauthbearer",
                f"  args = {settings}", "}"]

    def _launch(self, capability: str | None) -> None:
        self.config_file.write_text(self._config(capability))
        for path in (self.log_file, self._stderr_file):
            self._log_offsets[path] = path.stat().st_size if path.exists() else 0
        with open(self._stderr_file, "ab") as output:
            self._proc = subprocess.Popen(
                [self.binary, "-F", "-c", str(self.config_file)],
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent(),
            )
        try:
            self._wait_ready()
        except BaseException as exc:
            self.stop()
            if isinstance(exc, DovecotError):
                log = self.log_text(since_start=True)
                raise DovecotError(f"{exc}\n--- dovecot log ---\n{log}") from None
            raise

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + _START_TIMEOUT
        ports = [(self.port, True), (self.ssl_port, False)]
        if self.pop3:
            ports += [(self.pop3_port, False), (self.pop3s_port, False)]
        for port, want_greeting in ports:
            while True:
                proc = self._proc
                if proc is None or proc.poll() is not None:
                    code = None if proc is None else proc.returncode
                    raise DovecotError(f"dovecot exited during start-up (exit code {code})")
                if "Fatal: " in self.log_text(since_start=True):
                    raise DovecotError("dovecot reported a fatal error during start-up")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise DovecotError(f"dovecot did not become ready on port {port}")
                try:
                    with socket.create_connection((HOST, port), timeout=remaining) as sock:
                        if want_greeting:
                            greeting = _read_line(sock)
                            if not greeting.startswith(b"* OK"):
                                raise DovecotError(f"unexpected greeting {greeting!r}")
                    break
                except OSError:  # not listening yet, or closed before greeting
                    time.sleep(0.005)

    def _pick_ports(self) -> None:
        ports = free_ports(4 if self.pop3 else 2)
        self.port, self.ssl_port = ports[:2]
        if self.pop3:
            self.pop3_port, self.pop3s_port = ports[2:]

    def _port_conflict(self) -> bool:
        text = self.log_text(since_start=True)
        return "Address already in use" in text or "EADDRINUSE" in text

    def _capability_override(self) -> str:
        """Dovecot's normal post-login capability list minus ``self.without``."""
        normal = _capability_cache.get(self.binary)
        if normal is None:
            normal = self._probe_capabilities()
            _capability_cache[self.binary] = normal
        unknown = self.without - {name.upper() for name in normal}
        if unknown:
            raise ValueError(f"cannot remove {sorted(unknown)}: not in {' '.join(normal)}")
        return " ".join(name for name in normal if name.upper() not in self.without)

    def _probe_capabilities(self) -> tuple[str, ...]:
        """Start with default capabilities once and read the post-login CAPABILITY."""
        if self.port == 0:
            self._pick_ports()
        self._launch(None)
        try:
            with socket.create_connection((HOST, self.port), timeout=10) as sock:
                _read_line(sock)
                sock.sendall(f'a LOGIN "capability-probe" "{self.password}"\r\n'.encode())
                tagged = _read_tagged(sock, b"a")
                match = _CAPABILITY.search(tagged)
                if match is None:
                    sock.sendall(b"b CAPABILITY\r\n")
                    untagged = _read_tagged(sock, b"b")
                    match = re.search(rb"^\* CAPABILITY (.*)$", untagged, re.MULTILINE)
                sock.sendall(b"c LOGOUT\r\n")
            if match is None:
                raise DovecotError(f"no CAPABILITY after login: {tagged!r}")
            return tuple(match.group(1).decode().split())
        finally:
            self.stop()


# -- helpers ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class SystemUsers:
    """Who dovecot's processes run as, and who owns the mail."""

    mail_uid: int
    mail_gid: int
    login_user: str  # default_login_user (imap-login)
    internal_user: str  # default_internal_user (auth, stats, ...)
    internal_group: str  # default_internal_group


def system_users() -> SystemUsers:
    """As root: the mail user ``imapingest-test`` (created if missing) and Debian's dovenull and
    dovecot accounts (the mail user stands in for any that is missing). Otherwise: ourselves."""
    if os.geteuid() != 0:
        me = pwd.getpwuid(os.geteuid())
        group = grp.getgrgid(me.pw_gid).gr_name
        return SystemUsers(me.pw_uid, me.pw_gid, me.pw_name, me.pw_name, group)
    mail = _ensure_system_user(MAIL_USER)
    mail_group = grp.getgrgid(mail.pw_gid).gr_name
    return SystemUsers(
        mail_uid=mail.pw_uid,
        mail_gid=mail.pw_gid,
        login_user="dovenull" if _user_exists("dovenull") else MAIL_USER,
        internal_user="dovecot" if _user_exists("dovecot") else MAIL_USER,
        internal_group="dovecot" if _group_exists("dovecot") else mail_group,
    )


def _group_exists(name: str) -> bool:
    try:
        grp.getgrnam(name)
    except KeyError:
        return False
    return True


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def _ensure_system_user(name: str) -> pwd.struct_passwd:
    with contextlib.suppress(KeyError):
        return pwd.getpwnam(name)
    shell = "/usr/sbin/nologin" if os.path.exists("/usr/sbin/nologin") else "/bin/false"
    useradd = shutil.which("useradd") or "/usr/sbin/useradd"
    done = subprocess.run(
        [
            useradd,
            "--system",
            "--user-group",
            "--no-create-home",
            "--home-dir",
            "/nonexistent",
            "--shell",
            shell,
            "--comment",
            "imap_ingest test mail storage",
            name,
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    try:
        return pwd.getpwnam(name)  # also covers a concurrent creation by another process
    except KeyError:
        raise DovecotError(f"could not create system user {name}: {done.stderr.strip()}") from None


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind((HOST, 0))
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _read_line(sock: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\r\n"):
        chunk = sock.recv(1)
        if not chunk:
            raise ConnectionError(f"connection closed after {data!r}")
        data += chunk
    return data


def _read_tagged(sock: socket.socket, tag: bytes) -> bytes:
    """Read lines until the tagged response; return all of them (no literals expected)."""
    lines = []
    while True:
        line = _read_line(sock)
        lines.append(line)
        if line.startswith(tag + b" "):
            return b"".join(lines)


def _killpg(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _live_group_members(pgid: int) -> list[int]:
    """Non-zombie processes in process group ``pgid`` (Linux /proc; zombies hold no sockets,
    and PID 1 in containers does not always reap orphans)."""
    proc = Path("/proc")
    if not proc.is_dir():
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return []
        return [pgid]
    members = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_bytes()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] not in (b"Z", b"X"):
            members.append(int(entry.name))
    return members


def _die_with_parent() -> Callable[[], None] | None:
    """preexec_fn: SIGTERM dovecot's master if the test process dies (Linux only)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig = 1

    def preexec() -> None:
        prctl(pr_set_pdeathsig, int(signal.SIGTERM), 0, 0, 0)

    return preexec
