"""`imap-ingest deliver-server` and the hand-off of the MTA's commands to it: the real server
in a subprocess on a temporary socket, clients run as an MTA runs them (one process per
message), trackers recording servers on loopback."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from imap_ingest import deliver_server, errors, handoff
from imap_ingest.config import load
from imap_ingest.handoff import HEADER_LIMIT, Request, decode, encode, length, wait_seconds
from tests.support.hostile_http import HostileHttp, drip
from tests.support.ingest_env import ROOT, command
from tests.support.mail import make
from tests.support.redmine_server import Answer, RecordingServer

from .test_deliver import _MODULES_AFTER, NOT_OK, OK, mailgate, messages

NOBODY = 65534


class Server:
    """`imap-ingest deliver-server` on ``socket``, in a session (and process group) of its
    own; its stderr in ``log``."""

    def __init__(self, path: Path, in_flight: int | None = None) -> None:
        self.socket = path
        self.log = path.parent.parent / "server.log"
        self._log = self.log.open("wb")
        args = ["deliver-server", "--socket", str(path), "--debug"]
        self.process = subprocess.Popen(
            command(*args) if in_flight is None else [sys.executable, "-c", _BOUNDED,
                                                      str(in_flight), *args], cwd=ROOT,
            stderr=self._log,
            env={**os.environ, "PYTHONPATH": str(ROOT)}, start_new_session=True)
        deadline = time.monotonic() + 60
        while b"listening on" not in self.log.read_bytes():
            assert self.process.poll() is None, self.log.read_text()
            assert time.monotonic() < deadline, "deliver-server did not start"
            time.sleep(0.05)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(30)
        self._log.close()
        return code


_BOUNDED = """\
import sys
from imap_ingest import compat, deliver_server
deliver_server.IN_FLIGHT = int(sys.argv[1])
sys.exit(compat.run(sys.argv[2:]))
"""


@pytest.fixture
def place() -> Iterator[Path]:
    """A short directory (a socket path has at most 107 bytes)."""
    top = Path(tempfile.mkdtemp(prefix="ds", dir="/tmp"))
    yield top
    shutil.rmtree(top)


@pytest.fixture
def server(place: Path) -> Iterator[Server]:
    running = Server(place / "run" / "deliver.sock")
    yield running
    running.stop()


@pytest.fixture
def rt() -> Iterator[RecordingServer]:
    recording = RecordingServer()
    recording.answer = lambda request: OK
    yield recording
    recording.close()


def client(raw: bytes, *args: str, sock: Path | None,
           timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
    """``imap-ingest ARGS`` as Postfix's pipe runs it, handing over to the server on
    ``sock`` (None: a socket that does not exist, so in-process)."""
    env = {k: v for k, v in os.environ.items() if k != "EXTENSION"}
    env["PYTHONPATH"] = str(ROOT)
    env[handoff.SOCKET_VARIABLE] = str(sock or "/nonexistent/deliver.sock")
    return subprocess.run(command(*args), input=raw, cwd=ROOT, env=env, capture_output=True,
                          timeout=timeout)


def test_a_request_survives_its_frame() -> None:
    """encode() then length() and decode() give back argv, environment and cwd."""
    request = Request(["rt-mailgate", "--url", "x"], {"EXTENSION": "Billing", "é": "ü"}, "/")
    frame = encode(request)
    assert length(frame) == len(frame) - 4
    assert decode(frame[4:]) == request


def test_a_frame_is_bounded() -> None:
    """A header over HEADER_LIMIT is neither sent nor read."""
    with pytest.raises(ValueError, match="over"):
        encode(Request([], {"X": "x" * HEADER_LIMIT}, "/"))
    with pytest.raises(ValueError, match="announced"):
        length((HEADER_LIMIT + 1).to_bytes(4, "big"))


@pytest.mark.parametrize("body", [b"[]", b'{"argv": [], "env": {}}', b'{"argv": [1], "env": {}, '
                                  b'"cwd": "/"}', b'{"argv": [], "env": {"a": 1}, "cwd": "/"}',
                                  b'{"argv": [], "env": {}, "cwd": null}', b"\xff"],
                         ids=["list", "no-cwd", "argv", "env", "cwd", "not-json"])
def test_a_malformed_header_is_refused(body: bytes) -> None:
    """decode() accepts only an object of argv (strings), env (strings) and cwd."""
    with pytest.raises(ValueError):
        decode(body)


@pytest.mark.parametrize(("argv", "seconds"), [
    (["rt-mailgate"], 180), (["deliver", "--route", "r"], 180), (["rdm-mailhandler"], 60),
    (["rt-mailgate", "--timeout", "5"], 5), (["rdm-mailhandler", "--timeout=7.5"], 7.5),
    (["rt-mailgate", "--time", "3"], 3), (["rt-mailgate", "--timeout", "4", "--timeout", "9"], 9),
    (["rt-mailgate", "--timeout", "soon"], 180), (["rt-mailgate", "--timeout"], 180),
    (["rt-mailgate", "--t", "3"], 180)])
def test_the_client_waits_as_long_as_the_command_may(argv: list[str], seconds: float) -> None:
    """wait_seconds() reads --timeout as argparse does (last, =, abbreviated), else defaults."""
    assert wait_seconds(argv) == seconds


def test_the_clients_tempfail_is_the_commands() -> None:
    """handoff's copy of EX_TEMPFAIL (errors.py imports logging) is errors.EX_TEMPFAIL."""
    assert handoff.EX_TEMPFAIL == errors.EX_TEMPFAIL


def test_the_socket_variable_is_no_config_key(tmp_path: Path) -> None:
    """$IMAP_INGEST_DELIVER_SOCKET, in the config overrides' namespace, is not read as a key."""
    config = tmp_path / "c.yaml"
    config.write_text("targets:\n  rt: {type: rt, url: 'http://127.0.0.1:1'}\nroutes: {r: {}}\n")
    assert load(config, {handoff.SOCKET_VARIABLE: "/x", "IMAP_INGEST_STATE_DIR": str(tmp_path)}
                ).state_dir == tmp_path


_PRELOADED = """\
import json, sys, threading
from imap_ingest import deliver_server
deliver_server.preload()
assert threading.active_count() == 1, threading.enumerate()
before = set(sys.modules)
from imap_ingest.compat import run
code = run(sys.argv[2:])
with open(sys.argv[1], "w") as out:
    json.dump(sorted(set(sys.modules) - before), out)
sys.exit(code)
"""


@pytest.mark.parametrize("mode", ["rt-mailgate", "rdm-mailhandler"])
def test_after_preload_a_delivery_imports_nothing(rt: RecordingServer, tmp_path: Path,
                                                  mode: str) -> None:
    """preload() starts no thread and leaves a delivery nothing of ours or pydantic's to import."""
    rt.answer = lambda request: (201, b"", 0) if mode == "rdm-mailhandler" else NOT_OK
    args = mailgate(rt, tmp_path) if mode == "rt-mailgate" else [
        "rdm-mailhandler", "--url", rt.url, "--key", "k", "--state-dir", str(tmp_path)]
    out = tmp_path / "modules.json"
    done = subprocess.run([sys.executable, "-c", _PRELOADED, str(out), *args], input=make(),
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                          capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert len(rt.requests) == 1
    assert [name for name in json.loads(out.read_text()) if name.split(".")[0] in (
        "imap_ingest", "pydantic", "pydantic_core", "requests", "urllib3", "yaml")] == []


@pytest.mark.parametrize("mode", ["rt-mailgate", "rdm-mailhandler"])
def test_a_handed_over_delivery_imports_nothing_heavy(server: Server, rt: RecordingServer,
                                                      tmp_path: Path, mode: str) -> None:
    """Through the server, the client posts without importing pydantic, requests or logging."""
    rt.answer = lambda request: (201, b"", 0) if mode == "rdm-mailhandler" else OK
    args = mailgate(rt, tmp_path) if mode == "rt-mailgate" else [
        "rdm-mailhandler", "--url", rt.url, "--key", "k", "--state-dir", str(tmp_path)]
    out = tmp_path / "modules.json"
    done = subprocess.run([sys.executable, "-c", _MODULES_AFTER, str(out), *args],
                          input=make(), cwd=ROOT, capture_output=True, timeout=60, env={
                              **os.environ, "PYTHONPATH": str(ROOT),
                              handoff.SOCKET_VARIABLE: str(server.socket)})
    assert done.returncode == 0, done.stderr
    assert len(rt.requests) == 1 and b"submitted" in done.stderr
    assert "delivers for a connection" in server.log.read_text()
    loaded = set(json.loads(out.read_text()))
    heavy = ("pydantic", "requests", "urllib3", "argparse", "logging", "sqlite3", "yaml",
             "imap_ingest.config", "imap_ingest.logs", "imap_ingest.errors",
             "imap_ingest.deliver")
    assert sorted(loaded & set(heavy)) == []


def test_exit_codes_are_those_of_the_in_process_path(server: Server, rt: RecordingServer,
                                                     place: Path) -> None:
    """0, 75, 67, 78, 2 (usage) and 64 (--help): the same through the server as in-process."""
    down = RecordingServer()
    closed = down.url
    down.close()
    config = place / "c.yaml"
    config.write_text(f"state_dir: {place}/state\ntargets:\n  rt: {{type: rt, url: "
                      f"'{rt.url}'}}\nroutes:\n  bugs: {{queue: General}}\n")
    bad = place / "bad.yaml"
    bad.write_text("targets: {rt: {type: nope}}\n")
    cases: dict[str, tuple[int, Callable[[str], list[str]]]] = {
        "delivered": (0, lambda run: mailgate(rt, place / run)),
        "refused, spooled": (0, lambda run: ["deliver", "-c", str(config), "--route", "bugs"]),
        "down": (75, lambda run: ["rt-mailgate", "--url", closed, "--state-dir",
                                  str(place / run)]),
        "no route": (67, lambda run: ["deliver", "-c", str(config), "--route", "nope"]),
        "bad config": (78, lambda run: ["deliver", "-c", str(bad), "--route", "bugs"]),
        "usage": (2, lambda run: ["rt-mailgate", "--queue", "q"]),
        "help": (64, lambda run: ["rdm-mailhandler", "--help"])}
    for name, (expected, argv) in cases.items():
        if name == "refused, spooled":
            rt.answer = lambda request: NOT_OK
        codes = [client(make(subject=f"{name} {run}"), *argv(run), sock=sock).returncode
                 for run, sock in (("in", None), ("via", server.socket))]
        assert codes == [expected, expected], name
        rt.answer = lambda request: OK
    assert len(rt.requests) == 4  # delivered and refused, each both ways
    assert b"refused a client" not in server.log.read_bytes()


def test_a_client_with_a_closed_fd_delivers_itself(server: Server, rt: RecordingServer,
                                                   place: Path) -> None:
    """stdout closed (no fd 1 to pass, its number free for the socket): delivered in-process."""
    out = place / "modules.json"
    argv = shlex.join([sys.executable, "-c", _MODULES_AFTER, str(out),
                       *mailgate(rt, place / "state")])
    done = subprocess.run(["sh", "-c", f"exec {argv} >&-"], input=make(), cwd=ROOT,
                          stderr=subprocess.PIPE, timeout=60, env={
                              **os.environ, "PYTHONPATH": str(ROOT),
                              handoff.SOCKET_VARIABLE: str(server.socket)})
    assert done.returncode == 0, done.stderr
    assert len(rt.requests) == 1
    assert "pydantic" in json.loads(out.read_text())  # built its config itself


def test_a_dripping_tracker_ends_at_the_timeout_through_the_server(server: Server,
                                                                   tmp_path: Path) -> None:
    """A dripping tracker: the child's HTTP deadline ends it before --timeout; in doubt: spooled."""
    dripping = HostileHttp(drip(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n", 0.2))
    try:
        started = time.monotonic()
        done = client(make(), "rt-mailgate", "--url", dripping.url, "--timeout", "3",
                      "--state-dir", str(tmp_path), sock=server.socket)
        elapsed = time.monotonic() - started
    finally:
        dripping.close()
    assert done.returncode == 0, done.stderr
    assert b"no answer from" in done.stderr and b"--timeout reached" not in done.stderr
    assert b"outcome=quarantined" in done.stderr
    assert elapsed < 3 and dripping.served == 1


def test_the_server_serves_only_its_own_uid(server: Server, rt: RecordingServer,
                                            tmp_path: Path) -> None:
    """A client of another uid that reaches the socket gets EOF, nothing is posted; logged."""
    _open_to_all(server.socket)  # as a careless admin might: the peer check still holds

    def connect() -> str:
        with socket.socket(socket.AF_UNIX) as connection:
            connection.connect(str(server.socket))
            read, write = os.pipe()
            socket.send_fds(connection, [encode(Request(mailgate(rt, tmp_path), {}, "/"))],
                            [read, write, write])
            try:
                return "closed" if connection.recv(1) == b"" else "answered"
            except ConnectionResetError:  # closed with the header unread
                return "closed"

    assert _as_nobody(connect) == "closed"
    time.sleep(0.5)
    assert f"refused a client of uid {NOBODY}" in server.log.read_text()
    assert rt.requests == []


def test_the_client_hands_over_only_to_its_own_uid(server: Server,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A client of another uid delivers in-process rather than give a root server its fds."""
    _open_to_all(server.socket)
    monkeypatch.setenv(handoff.SOCKET_VARIABLE, str(server.socket))
    got = _as_nobody(lambda: repr(handoff.hand_over(["rt-mailgate", "--url", "http://x"])))
    assert got == "None"  # without its own check: 75, from the server's refusal


def _open_to_all(path: Path) -> None:
    path.chmod(0o666)
    path.parent.chmod(0o755)
    path.parent.parent.chmod(0o755)


def _as_nobody(work: Callable[[], str]) -> str:
    """What ``work`` returns, run in a forked child as uid 65534."""
    if os.geteuid() != 0:
        pytest.skip("needs root to run a client as another uid")
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            os.write(write, work().encode())
        except BaseException as exc:
            os.write(write, f"failed: {exc!r}".encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as out:
        got = out.read().decode()
    os.waitpid(pid, 0)
    return got


def test_a_client_that_sends_nothing_is_dropped(server: Server) -> None:
    """A connection without a header is closed after HEADER_WAIT seconds, its child gone."""
    with socket.socket(socket.AF_UNIX) as connection:
        connection.connect(str(server.socket))
        connection.settimeout(deliver_server.HEADER_WAIT + 20)
        started = time.monotonic()
        assert connection.recv(1) == b""
        assert time.monotonic() - started >= deliver_server.HEADER_WAIT - 1
    assert "a client's hand-off failed: timed out" in server.log.read_text()


@pytest.mark.parametrize(("frame", "said"), [
    ((HEADER_LIMIT + 1).to_bytes(4, "big"), "announced, over"),
    (b"\0\0\0\2[]", "not an object"),
    (b"\0\0\0\xff{", "closed mid-header")], ids=["too-big", "malformed", "cut"])
def test_a_bad_header_is_refused_by_the_server(server: Server, frame: bytes,
                                               said: str) -> None:
    """A header over the bound, malformed or cut short: EOF, logged, nothing run."""
    with socket.socket(socket.AF_UNIX) as connection:
        connection.connect(str(server.socket))
        read, write = os.pipe()
        socket.send_fds(connection, [frame], [read, write, write])
        connection.shutdown(socket.SHUT_WR)
        os.close(read)
        os.close(write)
        assert connection.recv(1) == b""
    time.sleep(0.3)
    assert said in server.log.read_text()


def test_the_client_waits_no_longer_than_its_timeout(rt: RecordingServer, place: Path) -> None:
    """A server that takes the message and never answers: 75 at --timeout + GRACE seconds."""
    path = place / "silent.sock"
    held: list[socket.socket] = []

    def take() -> None:  # the fds closed (else the client's pipes stay open), no answer
        connection, _ = silent.accept()
        held.append(connection)
        for fd in socket.recv_fds(connection, 1 << 17, 3)[1]:
            os.close(fd)

    with socket.socket(socket.AF_UNIX) as silent:
        silent.bind(str(path))
        silent.listen()
        taker = threading.Thread(target=take)
        taker.start()
        started = time.monotonic()
        done = client(make(), *mailgate(rt, place / "state", "--timeout", "1"), sock=path)
        elapsed = time.monotonic() - started
        taker.join()
    held[0].close()
    assert done.returncode == 75
    assert 1 + handoff.GRACE <= elapsed < 1 + handoff.GRACE + 10
    assert rt.requests == []  # handed over (to no one), not delivered in-process


def test_a_stale_socket_means_in_process(rt: RecordingServer, place: Path) -> None:
    """A socket no server listens on: the client delivers in-process; a server replaces it."""
    path = place / "run" / "deliver.sock"
    path.parent.mkdir()
    with socket.socket(socket.AF_UNIX) as dead:
        dead.bind(str(path))
    done = client(make(), *mailgate(rt, place / "state"), sock=path)
    assert done.returncode == 0, done.stderr
    assert len(rt.requests) == 1
    replacing = Server(path)
    try:
        assert "replacing" in replacing.log.read_text()
        assert client(make(subject="via"), *mailgate(rt, place / "state"),
                      sock=path).returncode == 0
        assert len(rt.requests) == 2
    finally:
        assert replacing.stop() == 0
    assert not path.exists()


def test_a_second_server_on_a_live_socket_exits(server: Server) -> None:
    """Another server on a socket in use exits 73, saying so; the first keeps serving."""
    second = subprocess.run(command("deliver-server", "--socket", str(server.socket)),
                            cwd=ROOT, capture_output=True, text=True, timeout=60,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert second.returncode == 73
    assert "another deliver-server is running on" in second.stderr
    assert server.socket.exists() and server.process.poll() is None


def test_the_socket_is_private(server: Server) -> None:
    """The socket is 0600 in a directory created 0700."""
    assert server.socket.stat().st_mode & 0o777 == 0o600
    assert server.socket.parent.stat().st_mode & 0o777 == 0o700


def test_a_server_killed_mid_delivery_means_75_then_one_ticket(server: Server,
                                                               rt: RecordingServer,
                                                               place: Path) -> None:
    """Server and child killed mid-post: 75; the retry (in-process) spools it in doubt."""
    rt.answer = lambda request: (200, b"ok\n", 30)
    raw = make(subject="killed")
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(client, raw, *mailgate(rt, place / "state"), sock=server.socket)
        deadline = time.monotonic() + 30
        while not rt.requests:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        os.killpg(server.process.pid, signal.SIGKILL)
        done = pending.result()
    assert done.returncode == 75
    rt.answer = lambda request: OK
    again = client(raw, *mailgate(rt, place / "state"), sock=server.socket)
    assert again.returncode == 0, again.stderr
    assert len(rt.requests) == 1
    [about] = (place / "state" / "spool" / "rt-mailgate").glob("*.json")
    assert json.loads(about.read_text())["result"] == "quarantined"


def test_a_killed_server_leaves_its_child_and_no_listener(server: Server, rt: RecordingServer,
                                                          place: Path) -> None:
    """The server alone killed: the delivery in hand ends 0; the next client delivers itself."""
    rt.answer = lambda request: (200, b"ok\n", 3)
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(client, make(subject="in hand"), *mailgate(rt, place / "state"),
                              sock=server.socket)
        while not rt.requests:
            time.sleep(0.05)
        server.process.kill()
        server.process.wait()
        rt.answer = lambda request: OK
        started = time.monotonic()
        after = client(make(subject="after"), *mailgate(rt, place / "state", "--timeout", "60"),
                       sock=server.socket)
        assert after.returncode == 0 and time.monotonic() - started < 30  # not the timeout
        assert pending.result().returncode == 0
    assert len(rt.requests) == 2


def test_sigterm_finishes_the_delivery_in_hand(server: Server, rt: RecordingServer,
                                               place: Path) -> None:
    """SIGTERM mid-delivery: the socket goes at once, the delivery ends 0, the server 0."""
    rt.answer = lambda request: (200, b"ok\n", 1)
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(client, make(), *mailgate(rt, place / "state"),
                              sock=server.socket)
        while not rt.requests:
            time.sleep(0.05)
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(30) == 0
        assert not server.socket.exists()
        assert pending.result().returncode == 0


def test_children_in_flight_are_bounded(rt: RecordingServer, place: Path) -> None:
    """With room for 2 children, a third connection is served once one of them has exited."""
    arrived: list[float] = []

    def slow(request: object) -> Answer:
        arrived.append(time.monotonic())
        return 200, b"ok\n", 3

    rt.answer = slow
    server = Server(place / "run" / "deliver.sock", in_flight=2)
    try:
        with ThreadPoolExecutor(3) as pool:
            codes = list(pool.map(lambda i: client(
                make(subject=f"bounded {i}"), *mailgate(rt, place / "state"),
                sock=server.socket).returncode, range(3)))
    finally:
        server.stop()
    assert codes == [0, 0, 0]
    first, second, third = sorted(arrived)
    assert second - first < 2.5 <= third - first
    assert server.log.read_text().count("delivers for a connection") == 3


@pytest.mark.timeout(300)
def test_fifty_concurrent_deliveries_through_the_server(server: Server, rt: RecordingServer,
                                                        place: Path) -> None:
    """50 clients at once, 25 messages each twice: each reaches RT once, all exit 0."""
    raws = [make(subject=f"concurrent {i}") for i in range(25)]
    with ThreadPoolExecutor(50) as pool:
        codes = list(pool.map(lambda raw: client(
            raw, *mailgate(rt, place / "state", "--timeout", "200"), sock=server.socket,
            timeout=250).returncode, raws + raws))
    assert codes == [0] * 50
    assert sorted(messages(rt)) == sorted(raw.replace(b"\r\n", b"\n") for raw in raws)
    assert b"Traceback" not in server.log.read_bytes()
