"""The ledger's vocabulary reads and writes the strings ledgers already hold."""

from __future__ import annotations

import pytest

from imap_ingest.states import Disposition, Result, State


@pytest.mark.parametrize(("text", "disposition"), [
    ("delete", Disposition("delete")),
    ("move:Done", Disposition("move", "Done")),
    ("move:INBOX/a:b", Disposition("move", "INBOX/a:b")),
    ("mark:$ImapIngestFailed", Disposition("mark", "$ImapIngestFailed")),
    ("copy:Archive", Disposition("copy", "Archive")),
], ids=["delete", "move", "move-colon", "mark", "copy"])
def test_disposition_round_trip(text: str, disposition: Disposition) -> None:
    """Each stored form parses to its value and prints back unchanged."""
    assert Disposition.parse(text) == disposition and str(disposition) == text


def test_unknown_disposition_is_refused() -> None:
    """A string that is no disposition is an error, not a silent delete."""
    with pytest.raises(ValueError, match="not a disposition"):
        Disposition.parse("burn:it")


def test_values_are_the_stored_strings() -> None:
    """States and outcomes compare, print and store as the ledger's strings."""
    assert [str(s) for s in State] == ["submitting", "submitted", "decided", "waiting",
                                       "disposed"]
    assert Result("refused-key") is Result.REFUSED_KEY and f"{Result.DEFERRED}" == "deferred"
