"""Built-in loop protection on a corpus of real-world-shaped mail (tests/data/mail/).

expected.tsv gives, per message, the built-in checks that must fire ("-": none; it must
become a ticket) and the decoded Subject.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from imap_ingest import loops
from imap_ingest.cli import main
from imap_ingest.config import Folder
from imap_ingest.message import Message
from imap_ingest.rules import Act, RuleSet

from .support.dovecot import ImapAccount
from .support.ingest_env import write_config
from .support.redmine_server import FakeRedmine

CORPUS = Path(__file__).parent / "data" / "mail"
OWN = {"redmine@example.org", "rt@example.net"}
ROWS = list(csv.DictReader((CORPUS / "expected.tsv").read_text(encoding="utf-8").splitlines(),
                          delimiter="\t"))


def test_corpus_is_complete() -> None:
    """Every .eml has exactly one row, and there are at least 60."""
    files = sorted(path.name for path in CORPUS.glob("*.eml"))
    assert sorted(row["file"] for row in ROWS) == files and len(files) >= 60
    fired = {name for row in ROWS for name in row["checks"].split(",") if name != "-"}
    assert fired == set(loops.NAMES), "every check has a message that fires it"


@pytest.mark.parametrize("row", ROWS, ids=[row["file"] for row in ROWS])
def test_checks_and_decision(row: dict[str, str]) -> None:
    """The checks that fire are exactly the expected ones; the message is held iff any do."""
    message = Message((CORPUS / row["file"]).read_bytes())
    fired = sorted(hit.name for _, hit in loops.run(message, loops.NAMES, OWN) if hit)
    assert (",".join(fired) or "-") == row["checks"]
    decision = RuleSet(Folder(name="INBOX"), own=OWN).evaluate(message)
    assert decision.act is (Act.SUBMIT if row["checks"] == "-" else Act.HOLD)
    assert (message.subject or "-") == row["subject"]


def test_whole_corpus_through_dovecot(tmp_path: Path, imap: ImapAccount,
                                      redmine: FakeRedmine) -> None:
    """End to end: only the legitimate mail reaches Redmine; the rest waits in Loops."""
    raws = {row["file"]: (CORPUS / row["file"]).read_bytes() for row in ROWS}
    with imap.client() as client:
        for raw in raws.values():
            client.append("INBOX", raw)
    path = write_config(tmp_path / "c.yaml", imap, redmine.url, loops_folder="Loops",
                        target={"addresses": sorted(OWN)}, folder={"max_message_size": "1M"})
    assert main(["run", "--once", "-c", str(path)]) == 0
    legit = {Message(raws[row["file"]]).message_id for row in ROWS if row["checks"] == "-"}
    posted = [Message(raw).message_id for raw in redmine.emails]
    assert sorted(map(str, posted)) == sorted(map(str, legit)) and len(posted) == len(legit)
    held = len(ROWS) - len(legit)
    assert len(imap.messages("Loops")) == held and imap.messages("INBOX") == {}
