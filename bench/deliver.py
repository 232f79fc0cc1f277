"""Mail an MTA pipes in: one process per message, as Postfix's pipe(8) runs them.

  - start-up cost: N messages through the real /usr/bin/rt-mailgate, `imap-ingest
    rt-mailgate` and `imap-ingest rdm-mailhandler` into the zero-cost sink (bench/sink.py
    answers at once), in-process and handed over to a running `imap-ingest deliver-server`,
    beside N runs of a bare `python3 -c pass`, so that what is imap-ingest's own (imports,
    config, ledger) stands out; wall and CPU per message (through the server: the client's
    CPU plus the server's and its children's, from /proc)
  - side by side into one real RT 5.0.3 (tests/e2e/rt.py, reset before each run): N messages
    through the real /usr/bin/rt-mailgate and N through `imap-ingest rt-mailgate` with the
    same flags, one after the other; each message must end as exactly one ticket

Run: python -m bench.deliver [N] [--no-rt] [--before DIR]      (default N: 50)
  --before DIR: a checkout of an earlier commit (git archive C | tar -x -C DIR), whose
  rdm-mailhandler runs into the sink interleaved with this one's
"""

from __future__ import annotations

import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bench.common import message, sink
from imap_ingest.handoff import SOCKET_VARIABLE
from tests.support.ingest_env import ROOT

VIA = "imap-ingest via deliver-server: "


def per_message(argvs: list[list[str]], messages: list[bytes],
                env: dict[str, str] | None = None, cwd: Path = ROOT,
                server: int | None = None) -> tuple[float, float, list[int]]:
    """(wall s, CPU s) per message for one process per message, and the exit codes; the CPU
    also counts the process ``server`` and its reaped children."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    served = server_cpu(server)
    codes = []
    started = time.perf_counter()
    for argv, raw in zip(argvs, messages, strict=True):
        codes.append(subprocess.run(argv, input=raw, capture_output=True, env=env, cwd=cwd,
                                    check=False).returncode)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    cpu += server_cpu(server) - served
    return wall / len(messages), cpu / len(messages), codes


def server_cpu(pid: int | None) -> float:
    """CPU seconds of process ``pid`` and its reaped children so far (0 for None)."""
    if pid is None:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # utime, stime, cutime, cstime: fields 14-17 of proc(5), counted after the ")"
    return sum(int(value) for value in fields[11:15]) / os.sysconf("SC_CLK_TCK")


@contextmanager
def deliver_server(env: dict[str, str], directory: str) -> Iterator[tuple[int, str]]:
    """A running `imap-ingest deliver-server`: (its pid, its socket)."""
    path = f"{directory}/deliver.sock"
    server = subprocess.Popen(ours("deliver-server", "--socket", path), env=env, cwd=ROOT,
                              stderr=subprocess.DEVNULL)
    try:
        while not Path(path).exists():
            if server.poll() is not None:
                raise RuntimeError("deliver-server did not start")
            time.sleep(0.05)
        yield server.pid, path
    finally:
        server.terminate()
        server.wait()


def ours(*args: str) -> list[str]:
    return [sys.executable, "-m", "imap_ingest", *args]


def child_env(pycache: str, root: Path = ROOT) -> dict[str, str]:
    """The children's environment: ``root`` first, and bytecode cached (in ``pycache``)
    as an installed package has it, whatever PYTHONDONTWRITEBYTECODE says here."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    return {**env, "PYTHONPATH": str(root), "PYTHONPYCACHEPREFIX": f"{pycache}/{root.name}"}


def startup(count: int, messages: list[bytes], pycache: str, before: Path | None) -> None:
    """Each command once per message into the zero-cost sink (RT's "ok", Redmine's 201),
    in five interleaved rounds so that the machine's load weighs on all of them alike."""
    from bench.rt_tools import ACTION, MAILGATE, QUEUE

    rounds = 5
    with sink(200, "ok\n") as (rt_url, rt_answered), sink() as (rdm_url, rdm_answered), \
            tempfile.TemporaryDirectory() as state, \
            deliver_server(child_env(pycache), f"{state}/run") as (server, socket):
        rt_flags = ["--queue", QUEUE, "--action", ACTION, "--url", rt_url]
        rdm = ["rdm-mailhandler", "--url", rdm_url, "--key", "k"]
        commands = {
            "python3 -c pass (the floor)": [sys.executable, "-c", "pass"],
            "rt-mailgate (Perl)": [MAILGATE, *rt_flags],
            "imap-ingest rt-mailgate": ours("rt-mailgate", *rt_flags, "--state-dir",
                                            f"{state}/rt"),
            "imap-ingest rdm-mailhandler": ours(*rdm, "--state-dir", f"{state}/rdm"),
            VIA + "rt-mailgate": ours("rt-mailgate", *rt_flags, "--state-dir",
                                      f"{state}/via-rt"),
            VIA + "rdm-mailhandler": ours(*rdm, "--state-dir", f"{state}/via-rdm")}
        trees = dict.fromkeys(commands, ROOT)
        if before is not None:
            name = f"imap-ingest rdm-mailhandler, {before.name}"
            commands[name] = ours(*rdm, "--state-dir", f"{state}/before")
            trees[name] = before
        envs = {name: {**child_env(pycache, trees[name]), SOCKET_VARIABLE: socket
                       if name.startswith(VIA) else f"{state}/no-server"} for name in commands}
        for name, argv in commands.items():  # compiles the bytecode once; nothing is posted
            per_message([argv], [b""], envs[name], trees[name])
        seconds = {name: [0.0, 0.0] for name in commands}  # wall, CPU
        exits: dict[str, set[int]] = {name: set() for name in commands}
        for first in range(rounds):
            part = messages[first::rounds]
            for name, argv in commands.items():
                wall, cpu, codes = per_message([argv] * len(part), part, envs[name],
                                               trees[name],
                                               server if name.startswith(VIA) else None)
                seconds[name][0] += wall * len(part)
                seconds[name][1] += cpu * len(part)
                exits[name].update(codes)
    print(f"{'into the zero-cost sink, per message':<52} {'wall':>7} {'CPU':>7}  exits")
    for name, (wall, cpu) in seconds.items():
        print(f"{name:<52} {wall / count * 1000:4.0f} ms {cpu / count * 1000:4.0f} ms  "
              f"{sorted(exits[name])}")
    print(f"requests the sinks answered: RT "
          f"{rt_answered[0]} for 3 x {count} messages, Redmine {rdm_answered[0]} for "
          f"{count * (len(set(trees.values())) + 1)}")


def side_by_side(count: int, messages: list[bytes], env: dict[str, str]) -> None:
    from bench.rt_tools import ACTION, MAILGATE, QUEUE, Run, verify  # needs matplotlib
    from tests.e2e.rt import RealRT

    with RealRT() as rt, tempfile.TemporaryDirectory() as run_dir, \
            deliver_server(env, run_dir) as (server, socket):
        flags = ["--queue", QUEUE, "--action", ACTION, "--url", rt.url]
        for name, argv, pid in (("rt-mailgate", [MAILGATE, *flags], None),
                                ("imap-ingest rt-mailgate", None, None),
                                ("imap-ingest via deliver-server", None, server)):
            rt.reset()
            with tempfile.TemporaryDirectory() as state:
                command = argv or ours("rt-mailgate", *flags, "--state-dir", state)
                wall, cpu, codes = per_message(
                    [command] * count, messages,
                    {**env, SOCKET_VARIABLE: socket if pid else f"{state}/no-server"},
                    server=pid)
            run = Run(name, 1, wall * count, count)
            verify(rt, messages, run)
            print(f"{name:<30} {wall * 1000:6.0f} ms wall, {cpu * 1000:6.0f} ms CPU (client, "
                  f"and server) per message; exits {sorted(set(codes))}; problems "
                  f"{dict(run.problems) or 'none'}")


def main() -> None:
    count = int(next((a for a in sys.argv[1:] if a.isdigit()), "50"))
    rng = random.Random(18)
    messages = [message(i, rng) for i in range(count)]
    print(f"{count} messages, one process each; load average {os.getloadavg()[0]:.1f}")
    before = Path(sys.argv[sys.argv.index("--before") + 1]).resolve() \
        if "--before" in sys.argv else None
    with tempfile.TemporaryDirectory() as pycache:
        startup(count, messages, pycache, before)
        if "--no-rt" not in sys.argv:
            side_by_side(count, messages, child_env(pycache))
    print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
