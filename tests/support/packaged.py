"""Debian's Cyrus IMAP and Courier-IMAP as private test servers, without installing them.

Both conflict with dovecot-imapd as packages, so scripts/test extracts their .debs
(``apt-get download`` + ``dpkg -x``) under ``EXTRACTED``. Each server runs as root in a mount
namespace of its own (``unshare -m``) in which the extraction is laid over ``/usr``, the
server's private files over the package's ``/etc`` (both read-only overlays) and a private
directory over ``/run``: the binaries find their compiled-in paths (``/etc/imapd.conf``,
``/etc/courier/...``, ``/run/courier/authdaemon/socket``) and the machine's own are untouched.
The configuration is the package's default one; only paths, the listening address and the
users differ. Every server makes a pool of users with one password when it starts.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from .dovecot import (
    DEFAULT_PASSWORD,
    HOST,
    ImapAccount,
    Lifecycle,
    _live_group_members,
    free_ports,
    system_users,
)

EXTRACTED = Path(os.environ.get("IMAP_INGEST_SERVERS", "/var/tmp/imap-ingest-servers")) / "root"
USERS = 40

_START_TIMEOUT = 15.0

# Inside the namespace: the extraction over /usr, the package's etc over the machine's with the
# private etc on top (what the server writes there lands in it), and a private /run.
_SANDBOX = """set -e
mount -t overlay overlay -o lowerdir="$EXTRACTED/usr:/usr" /usr
mount -t overlay overlay \
  -o "lowerdir=$EXTRACTED/etc:/etc,upperdir=$PRIVATE/etc,workdir=$PRIVATE/work" /etc
mount --bind "$PRIVATE/run" /run
exec "$@"
"""


class NotExtracted(RuntimeError):
    """The packages are not extracted, or this process may not make a mount namespace."""


def missing() -> str | None:
    """Why the packaged servers cannot run here, or None."""
    binaries = ("usr/lib/cyrus/bin/master", "usr/sbin/couriertcpd")
    if not all((EXTRACTED / binary).exists() for binary in binaries):
        return (f"Cyrus and Courier are not extracted under {EXTRACTED}; scripts/test "
                "downloads and extracts them (apt-get download + dpkg -x)")
    if os.geteuid() != 0:
        return "the Cyrus and Courier tests run them as root (in a mount namespace of their own)"
    return None


class Packaged(Lifecycle):
    """One server from an extracted package: a private directory, a free port, a user pool."""

    name = ""

    def __init__(self) -> None:
        reason = missing()
        if reason is not None:
            raise NotExtracted(reason)
        self.host = HOST
        self.password = DEFAULT_PASSWORD
        self.port = 0
        self.directory = Path(tempfile.mkdtemp(prefix=f"imapingest-{self.name}-"))
        self.directory.chmod(0o755)
        self.users = system_users()
        self._proc: subprocess.Popen[bytes] | None = None
        self._next_user = 0

    @property
    def log_file(self) -> Path:
        return self.directory / "server.log"

    def account(self) -> ImapAccount:
        """The next unused login of the pool: an empty mailbox."""
        self._next_user += 1
        if self._next_user > USERS:
            raise RuntimeError(f"all {USERS} users of the test {self.name} are taken")
        return ImapAccount(self.host, self.port, 0, f"user{self._next_user:02d}",
                           self.password, "")

    def log_text(self) -> str:
        with contextlib.suppress(OSError):
            return self.log_file.read_text(errors="replace")
        return ""

    def start(self) -> None:
        (self.port,) = free_ports(1)
        for sub in ("etc", "run", "work"):
            (self.directory / sub).mkdir(exist_ok=True)
        self.prepare()
        with open(self.log_file, "ab") as log:
            self._proc = subprocess.Popen(self.sandboxed(*self.command()),
                                          env=self._sandbox_env(), stdin=subprocess.DEVNULL,
                                          stdout=log, stderr=subprocess.STDOUT,
                                          start_new_session=True)
        self._wait_ready()

    def close(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            deadline = time.monotonic() + 10
            while _live_group_members(proc.pid) and time.monotonic() < deadline:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                time.sleep(0.01)
        shutil.rmtree(self.directory, ignore_errors=True)

    # -- what each server says ---------------------------------------------------------------

    def prepare(self) -> None:
        """Write the private configuration and the users."""
        raise NotImplementedError

    def command(self) -> list[str]:
        """The server in the foreground (run in the sandbox)."""
        raise NotImplementedError

    # -- helpers -----------------------------------------------------------------------------

    def sandboxed(self, *argv: str) -> list[str]:
        """``argv`` run in the namespace where the package looks installed."""
        return ["unshare", "--mount", "--propagation", "private", "sh", "-c", _SANDBOX, "sh",
                *argv]

    def run(self, *argv: str, stdin: str = "") -> None:
        """Run a tool of the package to completion (fails the fixture on an error)."""
        done = subprocess.run(self.sandboxed(*argv), env=self._sandbox_env(), input=stdin,
                              capture_output=True, text=True, check=False)
        if done.returncode:
            raise RuntimeError(f"{argv[0]} failed ({done.returncode}): {done.stderr.strip()}")

    def own(self, *paths: Path) -> None:
        """Give ``paths`` (recursively) to the mail user the server runs as."""
        for path in paths:
            for one in (path, *path.rglob("*")):
                os.chown(one, self.users.mail_uid, self.users.mail_gid)

    def _sandbox_env(self) -> dict[str, str]:
        return {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "EXTRACTED": str(EXTRACTED),
                "PRIVATE": str(self.directory)}

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + _START_TIMEOUT
        while True:
            proc = self._proc
            if proc is None or proc.poll() is not None:
                raise RuntimeError(f"the test {self.name} exited while starting:\n"
                                   f"{self.log_text()}")
            try:
                with socket.create_connection((self.host, self.port), timeout=2) as sock:
                    if sock.recv(4).startswith(b"* OK"):
                        break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the test {self.name} did not answer on port "
                                       f"{self.port}:\n{self.log_text()}") from None
                time.sleep(0.05)
        with self.account_for_probe().client():
            pass  # a login, so the users are ready too

    def account_for_probe(self) -> ImapAccount:
        """The pool's last user, kept for the readiness probe (a login, not just a port)."""
        return ImapAccount(self.host, self.port, 0, f"user{USERS + 1:02d}", self.password, "")

    def user_names(self) -> list[str]:
        return [f"user{n:02d}" for n in range(1, USERS + 2)]


class Cyrus(Packaged):
    """Debian's Cyrus IMAP 3.6 with Debian's imapd.conf (``altnamespace: no``,
    ``unixhierarchysep: no``: NAMESPACE (("INBOX." "."))), no idled (as Debian ships
    cyrus.conf), users in a private sasldb."""

    name = "cyrus"

    def prepare(self) -> None:
        private = self.directory
        for sub in ("lib", "spool", "sieve", "news", "run/cyrus"):
            (private / sub).mkdir(parents=True, exist_ok=True)
        package = (EXTRACTED / "etc/imapd.conf").read_text()
        conf = (package.replace("/var/lib/cyrus", f"{private}/lib")
                .replace("/var/spool/cyrus/mail", f"{private}/spool")
                .replace("/var/spool/cyrus/news", f"{private}/news")
                .replace("/var/spool/sieve", f"{private}/sieve"))
        user = pwd.getpwuid(self.users.mail_uid).pw_name
        group = grp.getgrgid(self.users.mail_gid).gr_name
        conf += (f"\ncyrus_user: {user}\ncyrus_group: {group}\n"
                 f"sasl_sasldb_path: {private}/lib/sasldb2\nservername: imap-ingest-test\n")
        (private / "etc/imapd.conf").write_text(conf)
        # Debian's SERVICES minus what the tests do not use; imapd on loopback only.
        (private / "etc/cyrus.conf").write_text(
            'START {\n  recover cmd="/usr/sbin/cyrus ctl_cyrusdb -r"\n}\n'
            f'SERVICES {{\n  imap cmd="imapd -U 30" listen="{HOST}:{self.port}" prefork=0 '
            "maxchild=100\n}\nEVENTS {\n}\n")
        script = "".join(
            f'printf %s "$1" | saslpasswd2 -f {private}/lib/sasldb2 -u imap-ingest-test '
            f"-c -p {user_name}\n" for user_name in self.user_names())
        self.run("sh", "-ec", script, "sh", self.password)
        self.own(private / "lib", private / "spool", private / "sieve", private / "news",
                 private / "run")

    def command(self) -> list[str]:
        return ["/usr/lib/cyrus/bin/master"]


class Courier(Packaged):
    """Debian's Courier-IMAP 5.0 with Debian's /etc/courier/imapd (``IMAP_ENHANCEDIDLE=0``;
    NAMESPACE (("INBOX." "."))), its authdaemond reading a private userdb."""

    name = "courier"

    def prepare(self) -> None:
        private = self.directory
        etc = private / "etc/courier"
        etc.mkdir(parents=True, exist_ok=True)
        home = private / "home"
        crypted = subprocess.run(["openssl", "passwd", "-6", "-stdin"], input=self.password,
                                 capture_output=True, text=True, check=True).stdout.strip()
        lines = []
        for user_name in self.user_names():
            maildir = home / user_name / "Maildir"
            for sub in ("cur", "new", "tmp"):
                (maildir / sub).mkdir(parents=True, exist_ok=True)
            lines.append(f"{user_name}\tuid={self.users.mail_uid}|gid={self.users.mail_gid}|"
                         f"home={home / user_name}|mail={maildir}|systempw={crypted}\n")
        userdb = etc / "userdb"
        userdb.write_text("".join(lines))
        userdb.chmod(0o600)
        self.own(home)
        package = (EXTRACTED / "etc/courier/authdaemonrc").read_text()
        (etc / "authdaemonrc").write_text(
            package.replace('authmodulelist="authpam"', 'authmodulelist="authuserdb"'))
        self.run("makeuserdb")

    def command(self) -> list[str]:
        # As /usr/lib/courier/imapd start does it, in the foreground and on loopback; the
        # authdaemond beside it as its own start script would, with the userdb module.
        script = (
            "mkdir -p /run/courier/authdaemon\n"
            "(set -a; . /etc/courier/authdaemonrc; "
            "exec /usr/lib/courier/courier-authlib/authdaemond) &\n"
            "while [ ! -S /run/courier/authdaemon/socket ]; do sleep 0.01; done\n"
            "set -a; . /etc/courier/imapd-ssl; . /etc/courier/imapd\n"
            "IMAP_STARTTLS=NO\n"
            f"exec couriertcpd -address={HOST} -maxprocs=$MAXDAEMONS -maxperip=$MAXPERIP "
            f"$TCPDOPTS {self.port} /usr/lib/courier/courier/imaplogin /usr/bin/imapd "
            "$MAILDIRPATH\n")
        return ["sh", "-c", script]

