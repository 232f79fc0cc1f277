"""`imap-ingest explain`: why a message would (not) become a ticket, step by step, offline."""

from __future__ import annotations

import sys
from pathlib import Path

from .config import Account, Config, SubmitOptions
from .errors import EX_NOINPUT, EX_OK, EX_USAGE
from .message import Message
from .rules import Act, Decision, RuleSet
from .smime import Gate
from .trackers import Envelope, open_tracker


def explain(config: Config, file: str, folder_name: str, account_name: str | None) -> int:
    """Print each check and rule on the message in ``file`` (``-``: stdin), the decision,
    and what would be submitted; contact no server."""
    matches = [(a, f) for a in config.accounts for f in a.folders
               if f.name == folder_name and account_name in (None, a.name)]
    if len(matches) != 1:
        known = ", ".join(f"{a.name}/{f.name}" for a in config.accounts for f in a.folders)
        print(f"--folder {folder_name} names {len(matches)} configured folders; give "
              f"--account when several accounts have it (configured: {known})", file=sys.stderr)
        return EX_USAGE
    account, folder = matches[0]
    try:
        raw = sys.stdin.buffer.read() if file == "-" else Path(file).read_bytes()
    except OSError as exc:
        print(f"cannot read {file}: {exc.strerror}", file=sys.stderr)
        return EX_NOINPUT
    message = Message(raw)
    print(f"message {message.message_id or '(no Message-ID)'}, {len(raw)} bytes, subject "
          f"{message.subject!r}, in {account.name}/{folder.name}")
    opened = Gate.for_folder(config, account, folder).open(message)
    for step in opened.steps:
        print(f"  smime: {step}")
    if opened.failure is not None:
        print(f"decision: failed before the rules (S/MIME: {opened.failure})")
        return EX_OK
    message = opened.message
    rules = RuleSet.for_folder(folder, config)
    decision = rules.evaluate(message)
    _trace(rules, decision)
    if decision.act is Act.SUBMIT and decision.options is not None:
        _preview(config, account, folder.name, message, decision, decision.options)
    return EX_OK


def _trace(rules: RuleSet, decision: Decision) -> None:
    print("\n".join(trace_lines(rules, decision)))


def trace_lines(rules: RuleSet, decision: Decision) -> list[str]:
    """Each built-in check and rule: hit, miss or not reached; then the decision."""
    checks = [step for step in decision.trace if step.kind == "check"]
    steps = [step for step in decision.trace if step.kind == "rule"]
    lines = ["built-in checks:"]
    lines += [f"  {'HIT ' if step.matched else 'miss'}  {step.name}: {step.why}"
              for step in checks]
    lines.append("rules (first match wins):")
    lines += [f"  {'HIT ' if step.matched else 'miss'}  {step.name}: {step.why}"
              for step in steps]
    lines += [f"  ----  {name}: not reached" for name in rules.names[len(steps):]]
    values = [step for step in decision.trace if step.kind in ("capture", "value")]
    if values:
        lines.append("values taken from the mail (captures, then each substitution):")
    lines += [f"  {step.kind:<7}  {step.name} = {step.why}" if step.kind == "capture"
              else f"  {'put' if step.matched else 'REFUSED':<8} {step.why}" for step in values]
    lines.append(f"decision: {decision.act.value} (rule {decision.rule})"
                 + (f": {decision.reason}" if decision.reason else ""))
    if decision.copies:
        lines.append(f"  copied first to: {', '.join(decision.copies)}")
    if decision.folder:
        lines.append(f"  goes to folder {decision.folder}")
    return lines


def _preview(config: Config, account: Account, folder: str, message: Message,
             decision: Decision, options: SubmitOptions) -> None:
    """What would be submitted: the header edits, the tracker URL and the fields, masked."""
    target = config.target_for(options)
    tracker = open_tracker(config.targets[target])
    envelope = Envelope.of(account, message, folder)
    if envelope.subaddress:
        print(f"  sub-address: {envelope.subaddress}")
    action, fields = tracker.preview(decision.submission(message.raw), options, envelope)
    tracker.close()
    if edits := decision.edits:
        done = [f"removed {', '.join(edits.remove_header)}" if edits.remove_header else "",
                f"set {', '.join(edits.set_header)}" if edits.set_header else "",
                f"From taken from {edits.from_header}" if edits.from_header else ""]
        print(f"  header edits: {'; '.join(filter(None, done))}")
    print(f"  target {target}: {action}")
    for name, value in fields:
        print(f"    {name} = {value}")
