"""The command line as a user first meets it: help with examples, and usage errors."""

from __future__ import annotations

import os
import shutil
import subprocess

from .support.ingest_env import ROOT, command


def test_console_script_and_module_help() -> None:
    """`imap-ingest --help` and `python -m imap_ingest run --help` teach, with examples."""
    script = shutil.which("imap-ingest")
    assert script, "pip install -e . provides the imap-ingest console script"
    top = subprocess.run([script, "--help"], capture_output=True, text=True, check=True).stdout
    assert "imap-ingest run --once -c config.yaml" in top and "exit codes" in top
    for name in ("run", "check"):
        out = subprocess.run(command(name, "--help"),
                             capture_output=True, text=True, check=True, cwd=ROOT,
                             env={**os.environ}).stdout
        assert "example" in out and "--config" in out and "--log-format" in out


def test_no_command_is_a_usage_error() -> None:
    """No subcommand is a usage error exiting 64."""
    result = subprocess.run(command(), capture_output=True,
                            text=True, cwd=ROOT)
    assert result.returncode == 64 and "usage:" in result.stderr
