"""RT: imap-ingest against RT's own rt-mailgate, and against RT's ceiling.

A real RT 5.0.3 (Debian's request-tracker5: rt-server, Plack + Starlet with 2 workers, one per
core of the 2-core machine the issue names; SQLite) on loopback, from tests/e2e/rt.py, back to
its freshly seeded database (``RealRT.reset``) before every run. The same N realistic messages
(bench/common.py: 2-20 KB, one in ten with a 200 KB attachment, each from its own unknown
sender, whom RT creates as it opens the ticket: Everyone may CreateTicket), all new tickets in
queue General, action correspond. Runs, in turn, ROUNDS times over:
  - rt-mailgate as an MTA delivering a backlog runs it: one process per message, one after
    the other, the message on stdin (--queue General --action correspond --url URL --debug,
    the debug output only to read RT's answer)
  - imap-ingest run --once with the RT target's concurrency 1, 2 and 4: the messages in a
    fresh dovecot mailbox, a fresh state directory; the process is timed, start to exit
  - the ceiling: the same N POSTs to the mail gateway, multipart as rt-mailgate sends them
    (queue, action, message without a filename; built before the clock starts), by a minimal
    client of 2, 4 and 8 threads with one connection each; the best thread count is the ceiling
After every run each message must be exactly one ticket (RT's REST 2.0, by subject): a
message missing or doubled, an answer other than ``ok``, a message imap-ingest left in its
folder (deferred) or moved to Failed, all count as failures and are printed, never hidden.
Each figure is the best of the rounds (least disturbed by whatever else the machine runs);
every round's figure is printed too, with the 1-minute load average at its end, and the CPU
seconds RT itself (rt-server and its workers) spent per message, and from it the cores RT
kept busy (messages/s x CPU s/message): near 1.0 means RT was working on exactly one message
at every moment, which is all SQLite's single writer allows however many workers there are.

N defaults to 100: RT on SQLite takes 0.25-0.35 s a message whoever sends it (3-4 msg/s), so
one round (7 runs of N) takes about 3.5 minutes and two rounds, with RT's start and the checks,
about 7.5 minutes (under 10 on a busy machine); the 500 of the Redmine benchmark would take
over half an hour.

Run: python -m bench.rt_tools [N] [JSON]      (defaults: 100, no JSON; or BENCH_RT_JSON=path;
BENCH_RT_ROUNDS=1 for one round). imap-ingest runs at the default (auto) and at 1, 2 and 4.
The JSON holds the data points for a chart: rt-mailgate, the ceiling (by threads) and
imap-ingest (by concurrency), in messages per second, and the failures.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import yaml

from bench import plot
from bench.common import (
    BASE,
    limits_over_time,
    message,
    rates,
    run_once,
    sent_again,
    submitted_over_time,
    timed_threads,
)
from imap_ingest.trackers.rt import GATEWAY
from tests.e2e.rt import RealRT
from tests.support.dovecot import Dovecot, ImapAccount

ROUNDS = int(os.environ.get("BENCH_RT_ROUNDS", "2"))
AUTO = 0  # the setting that stands for concurrency: auto (the default: no number set)
BASE_AUTO = -1  # auto, run from the tree BENCH_BASE names (bench/common.py)
TIMELINES: dict[str, tuple[list[float], list[float]]] = {}  # messages/s over the last round
LIMITS: dict[str, tuple[list[float], list[float]]] = {}  # auto's limit over the last round
WINDOW = 10.0  # seconds each point of the throughput over time averages: RT takes ~0.3 s
WORKERS = 2  # Starlet workers: one per core
CONCURRENCY = (1, 2, 4)  # imap-ingest's RT target
THREADS = (2, 4, 8)  # the ceiling client
MAILGATE = "/usr/bin/rt-mailgate"
QUEUE, ACTION = "General", "correspond"
FAILED = "Failed"


@dataclass
class Run:
    """One run: what was measured and everything that went wrong."""

    kind: str  # "rt-mailgate", "imap-ingest", "ceiling"
    setting: int  # concurrency or threads (1 for rt-mailgate)
    seconds: float
    count: int
    problems: Counter[str] = field(default_factory=Counter)
    rt_cpu: float = 0.0  # CPU seconds RT's rt-server and workers spent, per message
    load: float = 0.0  # the 1-minute load average at the run's end
    retried: int = 0  # refusals among others imap-ingest sent again

    @property
    def rate(self) -> float:
        return self.count / self.seconds

    @property
    def rt_busy(self) -> float:
        """Cores RT kept busy on average: 1.0 is one worker at a time, all the time."""
        return self.rate * self.rt_cpu

    @property
    def failures(self) -> int:
        return sum(self.problems.values())

    @property
    def label(self) -> str:
        if self.kind == "imap-ingest":
            return f"imap-ingest --once, concurrency {setting_name(self.setting)}"
        if self.kind == "ceiling":
            return f"ceiling, {self.setting} threads"
        return "rt-mailgate, a process per message"


def setting_name(setting: int) -> str:
    return {AUTO: "auto", BASE_AUTO: "auto base"}.get(setting, str(setting))


def subject_of(raw: bytes) -> str:
    return raw.split(b"\r\nSubject: ", 1)[1].split(b"\r\n", 1)[0].decode()


def verify(rt: RealRT, messages: list[bytes], run: Run) -> None:
    """Every message is exactly one ticket: count the missing and the doubled."""
    made = Counter(ticket.subject for ticket in rt.tickets())
    expected = Counter(subject_of(raw) for raw in messages)
    if missing := sum((expected - made).values()):
        run.problems["not a ticket"] += missing
    if extra := sum((made - expected).values()):
        run.problems["extra tickets"] += extra


def mailgate(rt: RealRT, messages: list[bytes]) -> Run:
    """rt-mailgate once per message, one after the other, as an MTA delivers a backlog."""
    argv = [MAILGATE, "--queue", QUEUE, "--action", ACTION, "--url", rt.url, "--debug"]
    answers: list[tuple[int, str]] = []
    started = time.perf_counter()
    for raw in messages:
        done = subprocess.run(argv, input=raw, capture_output=True, check=False)
        answers.append((done.returncode, done.stderr.decode(errors="replace")))
    run = Run("rt-mailgate", 1, time.perf_counter() - started, len(messages))
    for code, said in answers:
        lines = said.splitlines()
        if code != 0:
            run.problems[f"rt-mailgate exit {code}"] += 1
        elif not any(line.startswith("ok") for line in lines):
            refusal = next((line for line in lines if line.startswith("not ok")), "no ok")
            run.problems[refusal[:60]] += 1
    return run


def config(path: Path, imap: ImapAccount, url: str, concurrency: int) -> Path:
    data = {
        "accounts": [{
            "name": "bench", "host": imap.host, "port": imap.port, "security": "none",
            "username": imap.username, "password": imap.password,
            "folders": [{"name": "INBOX", "batch_size": 500, "move_on_failure": FAILED}],
        }],
        "targets": {"rt": {"type": "rt", "url": url, "queue": QUEUE, "action": ACTION,
                           "timeout": "180s",
                           **({"concurrency": concurrency} if concurrency > 0 else {})}},
        "state_dir": str(path.parent / "state"),
    }
    path.write_text(yaml.safe_dump(data))
    return path


def ours(dovecot: Dovecot, rt: RealRT, messages: list[bytes], concurrency: int) -> Run:
    """imap-ingest run --once over a fresh mailbox holding the messages, fresh state."""
    imap = dovecot.account()
    with imap.client() as client:
        for raw in messages:
            client.append("INBOX", raw)
    with tempfile.TemporaryDirectory() as tmp:
        path = config(Path(tmp) / "config.yaml", imap, rt.url, concurrency)
        with submitted_over_time(path.parent / "state" / "ledger.sqlite3") as samples:
            seconds, log, status = run_once(path, base=concurrency == BASE_AUTO)
        run = Run("imap-ingest", concurrency, seconds, len(messages),
                  retried=sent_again(log))
    if status != 0:
        run.problems[f"imap-ingest exit {status}"] += 1
        print(log[-2000:], file=sys.stderr)
    if concurrency <= 0:
        TIMELINES[setting_name(concurrency)] = rates(samples, window=WINDOW)
        LIMITS[setting_name(concurrency)] = limits_over_time(log)
    if left := len(imap.messages("INBOX")):
        run.problems["left in INBOX (deferred)"] += left
    if failed := len(imap.messages(FAILED)):
        run.problems[f"moved to {FAILED}"] += failed
    return run


def multipart(raw: bytes) -> tuple[bytes, str]:
    """The body rt-mailgate posts (form-data: queue, action, message without a filename)."""
    boundary = "rt-tools-bench-boundary-7f3a9c"
    body = b""
    for name, value in (("queue", QUEUE.encode()), ("action", ACTION.encode())):
        body += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n"
                 ).encode() + value + b"\r\n"
    body += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"message\"\r\n"
             "Content-Type: application/octet-stream\r\n\r\n").encode() + raw + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def ceiling(rt: RealRT, bodies: list[tuple[bytes, str]], threads: int) -> Run:
    """The same POSTs from ``threads`` threads, one connection each, as fast as RT answers."""
    target = urlsplit(rt.url)
    pending = iter(range(len(bodies)))
    lock = threading.Lock()
    answers: list[str] = [""] * len(bodies)

    def work() -> None:
        connection = http.client.HTTPConnection(target.hostname or "127.0.0.1", target.port,
                                                timeout=180)
        while True:
            with lock:
                i = next(pending, None)
            if i is None:
                break
            body, content_type = bodies[i]
            try:
                connection.request("POST", GATEWAY, body, {"Content-Type": content_type})
                answer = connection.getresponse()
                text = answer.read().decode(errors="replace").strip()
                answers[i] = text if answer.status == 200 else f"HTTP {answer.status}"
            except (OSError, http.client.HTTPException) as exc:
                answers[i] = f"error {type(exc).__name__}"
                connection.close()
        connection.close()

    run = Run("ceiling", threads, timed_threads(work, threads), len(bodies))
    for text in answers:
        if not text.startswith("ok"):
            run.problems[text.splitlines()[0][:60] if text else "no answer"] += 1
    return run


def rt_cpu(rt: RealRT) -> float:
    """CPU seconds of rt-server's process group so far (workers reaped: in the master's)."""
    assert rt._proc is not None  # started
    group, total = rt._proc.pid, 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(stat[2]) == group:  # utime, stime, cutime, cstime
            total += sum(int(ticks) for ticks in stat[11:15])
    return total / os.sysconf("SC_CLK_TCK")


def load() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def best(runs: list[Run], kind: str, setting: int | None = None) -> Run:
    chosen = [r for r in runs if r.kind == kind and setting in (None, r.setting)]
    return max(chosen, key=lambda r: r.rate)


def main(count: int, json_path: str | None) -> None:
    rng = random.Random(1)
    messages = [message(i, rng) for i in range(count)]
    bodies = [multipart(raw) for raw in messages]
    size = sum(len(raw) for raw in messages) / count / 1024
    print(f"{count} messages ({size:.1f} KiB on average), {ROUNDS} rounds; RT 5.0.3 on SQLite, "
          f"Starlet with {WORKERS} workers, {os.cpu_count()} cores; load average {load()}")
    runs: list[Run] = []
    with Dovecot() as dovecot, RealRT(workers=WORKERS) as rt:
        # the first requests each worker serves compile RT's code: not part of any figure
        ceiling(rt, bodies[:8], WORKERS)
        subprocess.run([MAILGATE, "--queue", QUEUE, "--action", ACTION, "--url", rt.url],
                       input=messages[0], capture_output=True, check=False)
        for round_ in range(1, ROUNDS + 1):
            plan = [("rt-mailgate", 1), ("imap-ingest", AUTO),
                    *([("imap-ingest", BASE_AUTO)] if BASE else [])]
            for c, t in zip(CONCURRENCY, THREADS, strict=True):
                plan += [("imap-ingest", c), ("ceiling", t)]
            for kind, setting in plan:
                rt.reset()
                cpu, before = rt_cpu(rt), os.getloadavg()[0]
                if kind == "rt-mailgate":
                    run = mailgate(rt, messages)
                elif kind == "imap-ingest":
                    run = ours(dovecot, rt, messages, setting)
                else:
                    run = ceiling(rt, bodies, setting)
                run.rt_cpu = (rt_cpu(rt) - cpu) / count
                run.load = os.getloadavg()[0]
                verify(rt, messages, run)
                runs.append(run)
                said = ", ".join(f"{n} {what}" for what, n in run.problems.items()) or "none"
                print(f"  round {round_}: {run.label:<40} {run.rate:5.2f} msg/s "
                      f"({run.seconds:5.1f} s)  RT {run.rt_cpu:.3f} CPU s/msg, "
                      f"{run.rt_busy:.2f} cores busy  load {before:.2f} -> {run.load:.2f}  "
                      f"sent again {run.retried}  failures: {said}", flush=True)
    print(f"load average after: {load()}")
    tool, top = best(runs, "rt-mailgate"), best(runs, "ceiling")
    print(f"\nbest of {ROUNDS} rounds, {count} messages each; ceiling = best thread count "
          f"({top.setting} threads)")
    print(f"  {'':<40} {'msg/s':>6}  {'of ceiling':>10}  {'vs rt-mailgate':>14}  "
          f"{'RT CPU s/msg':>12}  {'RT cores busy':>13}  {'failures (all rounds)':>21}")
    autos = (AUTO, BASE_AUTO) if BASE else (AUTO,)
    rows = [tool, *(best(runs, "imap-ingest", c) for c in (*autos, *CONCURRENCY)),
            *(best(runs, "ceiling", t) for t in THREADS)]
    for run in rows:
        failures = sum(r.failures for r in runs if (r.kind, r.setting) == (run.kind, run.setting))
        print(f"  {run.label:<40} {run.rate:6.2f}  {run.rate / top.rate:10.0%}  "
              f"{run.rate / tool.rate:13.2f}x  {run.rt_cpu:12.3f}  "
              f"{run.rt_busy:13.2f}  {failures:>21}")
    widest = float(max(*CONCURRENCY, *THREADS))
    plot.line("rt-throughput.png", f"RT 5.0.3 (SQLite, Starlet, {WORKERS} workers), {count} "
              "messages", "requests in flight (imap-ingest concurrency, ceiling threads)",
              "messages/s", {
                  "imap-ingest run --once": ([float(c) for c in CONCURRENCY],
                                             [best(runs, "imap-ingest", c).rate
                                              for c in CONCURRENCY]),
                  "ceiling (minimal client)": ([float(t) for t in THREADS],
                                               [best(runs, "ceiling", t).rate for t in THREADS]),
                  "rt-mailgate, a process per message": ([1.0, widest], [tool.rate] * 2),
              })
    plot.timeline("rt-auto.png", f"RT (SQLite, Starlet, {WORKERS} workers): throughput over "
                  "a run", {f"concurrency: {name}": steps for name, steps in TIMELINES.items()},
                  {f"{name}: limit": steps for name, steps in LIMITS.items()
                   if name != "auto base"},  # an older tree does not log its limit
                  WINDOW)
    if json_path:
        data = {
            "messages": count, "rounds": ROUNDS, "statistic": "best of rounds",
            "unit": "messages per second", "rt_workers": WORKERS,
            "rt_mailgate": round(tool.rate, 3),
            "ceiling": round(top.rate, 3), "ceiling_threads": top.setting,
            "ceiling_by_threads": {str(t): round(best(runs, "ceiling", t).rate, 3)
                                   for t in THREADS},
            "imap_ingest_by_concurrency": {str(c): round(best(runs, "imap-ingest", c).rate, 3)
                                           for c in CONCURRENCY},
            "runs": [{"kind": r.kind, "setting": r.setting, "seconds": round(r.seconds, 3),
                      "msg_per_s": round(r.rate, 3), "rt_cpu_per_msg": round(r.rt_cpu, 4),
                      "load": round(r.load, 2), "failures": dict(r.problems)}
                     for r in runs],
        }
        Path(json_path).write_text(json.dumps(data, indent=2) + "\n")
        print(f"data: {json_path}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 100,
         sys.argv[2] if len(sys.argv) > 2 else os.environ.get("BENCH_RT_JSON"))
