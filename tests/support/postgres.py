"""A private, throw-away PostgreSQL for the test suite (Debian's postgresql package).

``Postgres`` runs initdb into a temporary directory as an unprivileged system user (the
server refuses to run as root; Debian's ``postgres`` user when it exists) and serves on a
free loopback port, password authentication over TCP. ``database()`` makes a fresh
database per test. ``restart()`` stops the server (fast shutdown) and starts it again on
the same port, for the tests of a database that goes away mid-pass.
"""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Self

import psycopg

from .dovecot import HOST, _ensure_system_user, free_ports

USER = "ingest"


def find_postgres() -> Path | None:
    """The directory of the newest installed server binaries (initdb, postgres)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"),
                   key=lambda p: int(Path(p).parts[-3]))
    return Path(found[-1]).parent if found else None


class Postgres:
    """A PostgreSQL server of its own: ``url`` without the password, ``password`` apart."""

    def __init__(self) -> None:
        bin_dir = find_postgres()
        if bin_dir is None:
            raise RuntimeError("PostgreSQL server binaries not found (Debian package "
                               "postgresql); scripts/test installs them")
        self.bin = bin_dir
        self.account = (_ensure_system_user("postgres") if os.geteuid() == 0
                        else pwd.getpwuid(os.geteuid()))
        self.directory = Path(tempfile.mkdtemp(prefix="imap-ingest-pg-"))
        self.data = self.directory / "data"
        self.password = secrets.token_urlsafe(16)
        [self.port] = free_ports(1)
        self.url = f"postgresql://{USER}@{HOST}:{self.port}/postgres"
        self._process: subprocess.Popen[bytes] | None = None
        self._count = 0
        os.chmod(self.directory, 0o700)
        os.chown(self.directory, self.account.pw_uid, self.account.pw_gid)
        password_file = self.directory / "pw"
        password_file.write_text(self.password)
        os.chown(password_file, self.account.pw_uid, self.account.pw_gid)
        self._as_user([str(self.bin / "initdb"), "-D", str(self.data), "-U", USER,
                       "--auth-local=trust", "--auth-host=scram-sha-256",
                       f"--pwfile={password_file}", "-E", "UTF8", "--no-sync"])
        password_file.unlink()

    def _as_user(self, argv: list[str]) -> None:
        subprocess.run(argv, user=self.account.pw_uid, group=self.account.pw_gid,
                       capture_output=True, check=True, cwd=self.directory)

    def start(self) -> None:
        """Serve on 127.0.0.1:port until stop(); return once it takes connections."""
        log = open(self.directory / "postgres.log", "ab")  # noqa: SIM115 (the server's)
        self._process = subprocess.Popen(
            [str(self.bin / "postgres"), "-D", str(self.data), "-p", str(self.port),
             "-h", HOST, "-k", str(self.directory), "-c", "fsync=off",
             "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
             "-c", "max_connections=300"],
            user=self.account.pw_uid, group=self.account.pw_gid, stdout=log,
            stderr=subprocess.STDOUT, cwd=self.directory)
        log.close()
        deadline = time.monotonic() + 30
        while True:
            try:
                psycopg.connect(self.url, password=self.password, connect_timeout=2).close()
                return
            except psycopg.OperationalError:
                if self._process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("PostgreSQL did not start: "
                                       + self.log_text()[-2000:]) from None
                time.sleep(0.1)

    def stop(self) -> None:
        """A fast shutdown: sessions are cut, committed data stays."""
        if self._process is not None:
            self._process.terminate()  # SIGTERM: smart; SIGINT: fast
            self._process.send_signal(2)
            self._process.wait(30)
            self._process = None

    def restart(self, down: float = 0.0) -> None:
        """Stop, stay down for ``down`` seconds, start again on the same port."""
        self.stop()
        time.sleep(down)
        self.start()

    def database(self) -> str:
        """A fresh, empty database; its URL (no password in it)."""
        self._count += 1
        name = f"t{self._count}_{secrets.token_hex(3)}"
        with psycopg.connect(self.url, password=self.password, autocommit=True) as db:
            db.execute(f"CREATE DATABASE {name}")
        return self.url.rsplit("/", 1)[0] + f"/{name}"

    def log_text(self) -> str:
        path = self.directory / "postgres.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
