"""A private Debian Postfix on loopback whose aliases pipe into `imap-ingest`.

Postfix runs an alias's command as the alias file's owner, or as ``default_privs`` when root
owns it, never as root (pipe(8) refuses root outright). This interpreter lives under /root
(mode 0700), so that user cannot start it. The instance therefore runs commands as
``nobody`` through Debian's /usr/bin/python3 (the same CPython 3.11 ABI), with a readable
copy of exactly the installed distributions the project depends on, and the project's own
source from the worktree.
"""

from __future__ import annotations

import importlib.metadata
import os
import pwd
import re
import shutil
import smtplib
import socket
import subprocess
import sysconfig
import tempfile
import time
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from packaging.requirements import Requirement

from .ingest_env import ROOT

USER = "nobody"  # Postfix's default_privs: who runs a root-owned alias file's commands
DOMAIN = "desk.test"
SYSTEM_PYTHON = Path("/usr/bin/python3")


def readable_python(directory: Path) -> Path:
    """A wrapper ``directory/imap-ingest`` that any user can run: Debian's python3 with a
    copy of the project's installed dependencies (their files as the wheels recorded them)
    and the worktree's source."""
    site = directory / "site"
    installed = Path(sysconfig.get_paths()["purelib"]).resolve()
    for path in _dependency_files():
        try:
            relative = path.relative_to(installed)
        except ValueError:
            continue  # a console script or header outside site-packages: not imported
        if "__pycache__" not in relative.parts and path.is_file():
            (site / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, site / relative)
    subprocess.run([str(SYSTEM_PYTHON), "-m", "compileall", "-q", str(site)], check=True)
    wrapper = directory / "imap-ingest"
    wrapper.write_text(
        "#!/bin/sh\n"
        f"export PYTHONPATH={site}:{ROOT} PYTHONDONTWRITEBYTECODE=1\n"
        f'exec {SYSTEM_PYTHON} -s -m imap_ingest "$@"\n')
    for path in (directory, *directory.rglob("*")):
        path.chmod(0o755 if path.is_dir() or path == wrapper else 0o644)
    return wrapper


def _dependency_files() -> Iterator[Path]:
    """Every installed file of the project's runtime dependencies, recursively."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    todo = [Requirement(line) for line in project["dependencies"]]
    seen: set[str] = set()
    while todo:
        requirement = todo.pop()
        name = re.sub(r"[-_.]+", "-", requirement.name).lower()
        if name in seen or (requirement.marker and not requirement.marker.evaluate(
                {"extra": ""})):
            continue
        seen.add(name)
        distribution = importlib.metadata.distribution(name)
        yield from (Path(str(distribution.locate_file(file))).resolve()
                    for file in distribution.files or [])
        todo.extend(Requirement(line) for line in distribution.requires or [])


@dataclass
class Postfix:
    """One running instance: its config directory, SMTP port and mail log."""

    config: Path
    port: int
    log: Path
    state: Path  # the imap-ingest state dir the aliases use, owned by USER
    program: Path  # the imap-ingest that USER can run

    def send(self, raw: bytes, to: str) -> None:
        """Submit ``raw`` over SMTP for ``to`` (a local part of DOMAIN)."""
        with smtplib.SMTP("127.0.0.1", self.port, timeout=30) as smtp:
            smtp.sendmail("alice@example.org", [f"{to}@{DOMAIN}"], raw)

    def wait_for(self, pattern: str, count: int = 1, timeout: float = 120) -> list[str]:
        """The mail log's lines matching ``pattern`` once there are ``count`` of them."""
        deadline = time.monotonic() + timeout
        while True:
            text = self.log.read_text(errors="replace") if self.log.exists() else ""
            found = [line for line in text.splitlines() if re.search(pattern, line)]
            if len(found) >= count:
                return found
            assert time.monotonic() < deadline, f"no {pattern!r} in the mail log:\n{text}"
            time.sleep(0.2)

    def flush(self) -> None:
        """Ask the queue manager to retry the deferred mail now (postqueue -f)."""
        subprocess.run(["postqueue", "-c", str(self.config), "-f"], check=True)

    def queued(self) -> str:
        """postqueue -p: what waits in the queue."""
        return subprocess.run(["postqueue", "-c", str(self.config), "-p"], check=True,
                              capture_output=True, text=True).stdout


@contextmanager
def postfix(aliases: dict[str, str], environment: dict[str, str] | None = None
            ) -> Iterator[Postfix]:
    """A Postfix on 127.0.0.1 for DOMAIN; ``aliases`` maps a local part to arguments of
    ``imap-ingest`` (``{state}`` is the state dir), whose commands also get ``environment``
    (import_environment, export_environment). Stopped and removed afterwards."""
    # Under /tmp, not pytest's tmp_path: that is root's alone, and USER must reach it.
    top = Path(tempfile.mkdtemp(prefix="postfix-"))
    top.chmod(0o755)
    user = pwd.getpwnam(USER)
    try:
        wrapper = readable_python(top / "python")
        state = top / "state"
        state.mkdir(mode=0o700)
        os.chown(state, user.pw_uid, user.pw_gid)
        config = top / "etc"
        config.mkdir()
        (top / "queue").mkdir()  # its subdirectories: `postfix start` makes them
        (top / "data").mkdir(mode=0o700)
        owner = pwd.getpwnam("postfix")
        os.chown(top / "data", owner.pw_uid, owner.pw_gid)
        port = _free_port()
        (config / "master.cf").write_text(_master_cf(port))
        (config / "main.cf").write_text("")
        (config / "aliases").write_text("".join(
            f'{name}: "|{wrapper} {args.format(state=state)}"\n'
            for name, args in aliases.items()))
        settings = {
            "compatibility_level": "3.6", "queue_directory": top / "queue",
            "data_directory": top / "data", "inet_interfaces": "127.0.0.1",
            "inet_protocols": "ipv4", "myhostname": f"mx.{DOMAIN}", "mydomain": DOMAIN,
            "mydestination": DOMAIN, "mynetworks": "127.0.0.0/8", "relayhost": "",
            "alias_maps": f"hash:{config}/aliases", "alias_database": f"hash:{config}/aliases",
            "local_recipient_maps": "$alias_maps", "recipient_delimiter": "+",
            "default_privs": USER, "maillog_file": top / "maillog", "maillog_file_prefixes": top,
            "smtpd_relay_restrictions": "permit_mynetworks, reject", "biff": "no",
            # Retry soon: the test flushes the queue itself, the scheduler must not first.
            "minimal_backoff_time": "300s", "maximal_backoff_time": "600s",
            "queue_run_delay": "300s", "smtputf8_enable": "no"}
        if environment:
            imported = subprocess.run(["postconf", "-dh", "import_environment",
                                       "export_environment"], check=True, text=True,
                                      capture_output=True).stdout.splitlines()
            settings["import_environment"] = " ".join(
                [imported[0], *(f"{k}={v}" for k, v in environment.items())])
            settings["export_environment"] = " ".join([imported[1], *environment])
        subprocess.run(["postconf", "-c", str(config), "-e",
                        *(f"{key}={value}" for key, value in settings.items())], check=True)
        subprocess.run(["postalias", "-c", str(config), f"hash:{config}/aliases"], check=True)
        started = subprocess.run(["postfix", "-c", str(config), "start"], capture_output=True,
                                 text=True)
        assert started.returncode == 0, started.stderr
        instance = Postfix(config, port, top / "maillog", state, wrapper)
        try:
            _wait_listening(port)
            yield instance
        finally:
            subprocess.run(["postfix", "-c", str(config), "stop"], capture_output=True)
    finally:
        shutil.rmtree(top, ignore_errors=True)


def _master_cf(port: int) -> str:
    """Debian's master.cf without chroot (the queue is ours, not /var/spool/postfix), the
    SMTP server on ``127.0.0.1:port`` and no pickup of a shared maildrop."""
    lines = []
    for line in Path("/etc/postfix/master.cf").read_text().splitlines():
        fields = line.split()
        if fields and not line[0].isspace() and not line.startswith("#") and len(fields) >= 8:
            if fields[1] == "inet":
                fields[0] = f"127.0.0.1:{port}"
            fields[4] = "n"
            line = "  ".join(fields)
        lines.append(line)
    return "\n".join(lines) + "\n"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _wait_listening(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            assert time.monotonic() < deadline, f"Postfix is not listening on {port}"
            time.sleep(0.1)
