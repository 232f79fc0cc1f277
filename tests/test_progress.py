"""The progress line a large backlog shows on a terminal."""

from __future__ import annotations

import pytest


def test_progress_line_only_on_a_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    """No progress line is shown when stderr is not a terminal."""
    from imap_ingest.ingest import _Progress

    quiet = _Progress("a/INBOX", 500)
    quiet.show(10)
    assert not quiet.shown and capsys.readouterr().err == ""


def test_progress_line_on_a_terminal_for_a_large_backlog(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a terminal, over 100 messages get a progress bar, cleared at the end."""
    # Fewer than that get none.
    import io
    import sys

    from imap_ingest.ingest import _Progress

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    screen = Terminal()
    monkeypatch.setattr(sys, "stderr", screen)
    _Progress("a/INBOX", 100).show(50)
    assert screen.getvalue() == ""
    progress = _Progress("a/INBOX", 200)
    progress.show(100)
    assert screen.getvalue() == f"\ra/INBOX [{'#' * 15:<30}] 100/200"
    progress.close()
    assert screen.getvalue().endswith("\r\x1b[K")
