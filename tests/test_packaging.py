"""The container and service files agree with the code (there is no Docker engine here)."""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from pathlib import Path

import pytest
import yaml

from imap_ingest import handoff
from imap_ingest.cli import _parser
from imap_ingest.config import CONFIG_VARIABLE, load
from imap_ingest.errors import EX_CONFIG, EX_NOPERM
from imap_ingest.health import PATHS

from .support.ingest_env import ROOT

DOCKERFILE = (ROOT / "Dockerfile").read_text()
SCRIPT = next(iter(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]))


def instruction(name: str) -> str:
    found = re.search(rf"^{name}\s+((?:.*\\\n)*.*)$", DOCKERFILE, re.MULTILINE)
    assert found, name
    return found[1].replace("\\\n", " ")


def docker_env() -> dict[str, str]:
    return dict(part.split("=", 1) for part in shlex.split(instruction("ENV")))


def test_entrypoint_and_command_are_ours() -> None:
    """The image's ENTRYPOINT is our script and its CMD a real subcommand."""
    assert json.loads(instruction("ENTRYPOINT")) == [SCRIPT] == ["imap-ingest"]
    command = json.loads(instruction("CMD"))
    assert command == ["run"]
    _parser().parse_args(command)  # a real subcommand


def test_paths_ports_and_health(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The image's environment gives the paths, listener and health check it declares."""
    # The environment is read by the real loader; the health check asks a path the
    # listener serves.
    env = docker_env()
    assert env[CONFIG_VARIABLE] == "/etc/imap-ingest/config.yaml"
    port = env["IMAP_INGEST_HTTP__LISTEN"].rpartition(":")[2]
    assert instruction("EXPOSE") == port
    assert instruction("VOLUME") == env["IMAP_INGEST_STATE_DIR"] == "/var/lib/imap-ingest"
    health = re.search(r"http://127\.0\.0\.1:(\d+)(/\w+)", instruction("HEALTHCHECK"))
    assert health and health[1] == port and health[2] in PATHS
    config = tmp_path / "config.yaml"
    config.write_text(kubernetes()["ConfigMap"]["data"]["config.yaml"])
    monkeypatch.setenv("IMAP_PASSWORD", "x")
    monkeypatch.setenv("REDMINE_MAIL_KEY", "y")
    loaded = load(config, env)
    assert loaded.http is not None and loaded.http.address == ("0.0.0.0", int(port))
    assert str(loaded.state_dir) == env["IMAP_INGEST_STATE_DIR"]


def kubernetes() -> dict[str, dict]:  # type: ignore[type-arg]
    docs = yaml.safe_load_all((ROOT / "contrib" / "kubernetes.yaml").read_text())
    return {doc["kind"]: doc for doc in docs}


def test_kubernetes_manifest() -> None:
    """The Kubernetes manifest agrees with the listener, the image and the config."""
    # Probes use the listener's paths and the image's port; the config is mounted where
    # the image reads it; secrets come from the Secret the config names.
    kinds = kubernetes()
    assert {"ConfigMap", "Secret", "Deployment"} <= set(kinds)
    [container] = kinds["Deployment"]["spec"]["template"]["spec"]["containers"]
    assert container["args"] == json.loads(instruction("CMD"))
    [port] = container["ports"]
    assert str(port["containerPort"]) == instruction("EXPOSE")
    assert {container["livenessProbe"]["httpGet"]["path"],
            container["readinessProbe"]["httpGet"]["path"]} == {"/healthz", "/readyz"}
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts["config"] + "/config.yaml" == docker_env()[CONFIG_VARIABLE]
    assert mounts["state"] == docker_env()["IMAP_INGEST_STATE_DIR"]
    config = kinds["ConfigMap"]["data"]["config.yaml"]
    for name in re.findall(r"_env: (\w+)", config):
        assert name in kinds["Secret"]["stringData"]


def test_systemd_unit_and_crontab() -> None:
    """The systemd unit and crontab run real commands with the right options."""
    unit = (ROOT / "contrib" / "imap-ingest.service").read_text()
    exec_start = shlex.split(re.search(r"^ExecStart=(.*)$", unit, re.MULTILINE)[1])  # type: ignore[index]
    assert Path(exec_start[0]).name == SCRIPT
    args = _parser().parse_args(exec_start[1:])
    assert args.config == docker_env()[CONFIG_VARIABLE] and not args.once
    assert "ExecReload=/bin/kill -HUP $MAINPID" in unit
    codes = re.search(r"^RestartPreventExitStatus=(.*)$", unit, re.MULTILINE)
    assert codes and {int(c) for c in codes[1].split()} == {EX_NOPERM, EX_CONFIG}
    for option in ("NoNewPrivileges=yes", "ProtectSystem=strict", "DynamicUser=yes"):
        assert option in unit
    line = next(line for line in (ROOT / "contrib" / "crontab").read_text().splitlines()
                if line and not line.startswith("#"))
    command = shlex.split(line.split(None, 5)[5].split("2>>")[0])
    assert command[0] == SCRIPT and _parser().parse_args(command[1:]).once


def test_deliver_server_unit(monkeypatch: pytest.MonkeyPatch) -> None:
    """The deliver-server unit runs it on the commands' default socket, and outwaits them."""
    monkeypatch.delenv(handoff.SOCKET_VARIABLE, raising=False)
    unit = (ROOT / "contrib" / "imap-ingest-deliver.service").read_text()
    exec_start = shlex.split(re.search(r"^ExecStart=(.*)$", unit, re.MULTILINE)[1])  # type: ignore[index]
    assert Path(exec_start[0]).name == SCRIPT
    args = _parser().parse_args(exec_start[1:])
    assert args.socket == handoff.DEFAULT_SOCKET
    runtime = re.search(r"^RuntimeDirectory=(.*)$", unit, re.MULTILINE)
    assert runtime and f"/run/{runtime[1]}/deliver.sock" == handoff.DEFAULT_SOCKET
    assert "RuntimeDirectoryMode=0700" in unit
    stop = re.search(r"^TimeoutStopSec=(\d+)$", unit, re.MULTILINE)
    assert stop and int(stop[1]) > handoff.RT_TIMEOUT + handoff.GRACE
    for option in ("PrivateTmp", "ProtectHome", "ProtectSystem"):  # the pipe's view of files
        assert f"\n{option}=" not in unit
