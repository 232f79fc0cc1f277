"""The command line: subcommands, and the only place that turns errors into exit codes."""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path

from . import __version__, compat, handoff, logs
from .config import CONFIG_VARIABLE, Config, load, parse_duration, templates
from .errors import EX_CANTCREAT, EX_OK, EX_USAGE, IngestError
from .ledger import open_ledger
from .processes import once
from .retry import retry_account
from .service import serve

log = logging.getLogger("imap_ingest")

Command = Callable[[Config, argparse.Namespace], int]
Standalone = Callable[[argparse.Namespace], int]  # a command that needs no config file

DEFAULT_CONFIG = os.environ.get(CONFIG_VARIABLE, "config.yaml")

_DESCRIPTION = """\
Turn mail in IMAP folders into Redmine tickets: each new message passes the folder's
procmail-like header rules, is posted to the tracker, and is then deleted or moved.
Nothing is marked seen before the tracker has answered; a message the tracker cannot take
now stays where it is for the next pass.
"""

_EPILOG = """\
examples:
  imap-ingest check -c config.yaml         test the config, the logins and the trackers
  imap-ingest run --once -c config.yaml    one pass over every folder (for cron)
  imap-ingest run -c config.yaml           poll each folder on its interval
  imap-ingest auth login support -c config.yaml
                                           sign in once for an OAuth2 (Microsoft 365,
                                           Gmail) account; its token is then renewed

exit codes (sysexits.h): 0 done, 64 usage, 75 some messages left for a retry,
  77 login or tracker key refused, 78 configuration error.
environment: IMAP_INGEST_CONFIG is the default for -c; IMAP_INGEST_<KEY>__<KEY>=value
  overrides a key of the file, e.g. IMAP_INGEST_TARGETS__REDMINE__KEY.
"""


_AUTH_EXAMPLES = """\
examples:
  imap-ingest auth login support -c config.yaml
      Microsoft 365: prints a URL and a code; enter it, sign in as the mailbox's user
  imap-ingest auth login gmail -c config.yaml --no-browser --port 8765
      Gmail: prints the sign-in URL; on a server, first: ssh -L 8765:127.0.0.1:8765 HOST
  imap-ingest check -c config.yaml
      then: logs in with the new token and says how long it lasts
"""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "command"):
        parser.print_help(sys.stderr)
        return EX_USAGE
    with logs.configured(args.log_format, args.debug):
        try:
            if args.standalone:
                code: int = args.command(args)
                return code
            config = load(args.config)
            logs.hide(config.secrets())
            code = args.command(config, args)
            return code
        except IngestError as exc:
            log.error("%s", exc)
            return exc.exit_code


def _run(config: Config, args: argparse.Namespace) -> int:
    if not args.once:
        return serve(args.config, config, retry_now=args.retry_now)
    return once(config, args.retry_now)


def _check(config: Config, args: argparse.Namespace) -> int:
    from .check import check

    return check(config, args.config)


def _auth_login(config: Config, args: argparse.Namespace) -> int:
    account = next((a for a in config.accounts if a.name == args.account), None)
    if account is None:
        print(f"no account named {args.account!r} (configured: "
              + ", ".join(a.name for a in config.accounts) + ")", file=sys.stderr)
        return EX_USAGE
    oauth2 = account.oauth2
    if oauth2 is None or oauth2.refresh_token_file is None:
        print(f"account {account.name} does not keep a refresh token: auth login is for "
              "oauth2 with flow: refresh_token", file=sys.stderr)
        return EX_USAGE
    browser = args.browser or (not args.device and oauth2.provider == "google")
    needed = "authorize_url" if browser else "device_url"
    if (oauth2.effective_authorize_url if browser else oauth2.effective_device_url) is None:
        print(f"account {account.name}: oauth2.{needed} is needed for this login",
              file=sys.stderr)
        return EX_USAGE

    def say(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    from . import authorize  # the browser/device login stack, only for this command

    if browser:
        authorize.browser_login(account.name, oauth2, say, args.port, not args.no_browser)
    else:
        authorize.device_login(account.name, oauth2, say)
    print(f"refresh token stored in {oauth2.refresh_token_file}; now: imap-ingest check "
          f"-c {args.config}")
    return EX_OK


def _status(config: Config, args: argparse.Namespace) -> int:
    from .status import status

    return status(config)


def _history(config: Config, args: argparse.Namespace) -> int:
    from .status import history

    return history(config, args.message_id)


def _export_training(config: Config, args: argparse.Namespace) -> int:
    from .training import export, parse_filter  # the HTTP stack, only for this command

    try:
        spam, ham = parse_filter(args.spam), parse_filter(args.ham)
        since = parse_duration(args.since)
    except ValueError as exc:
        print(f"export-training: {exc}", file=sys.stderr)
        return EX_USAGE
    report = export(config, since, spam, ham, Path(args.out or config.state_dir / "training"),
                    args.target, shlex.split(args.sa_learn) if args.learn else None)
    for line in report.lines():
        print(line)
    return EX_OK


def _retry(config: Config, args: argparse.Namespace) -> int:
    route = args.folder.removeprefix("spool/")
    if route != args.folder and route in config.routes:
        from . import deliver

        for line in deliver.retry(config, route):
            print(line)
        return EX_OK
    candidates = [a for a in config.accounts if args.account in (None, a.name)]
    if args.account is None and len(candidates) > 1:
        candidates = [a for a in candidates if any(
            args.folder in (f.name, f.move_on_failure) for f in a.folders)]
    if len(candidates) != 1:
        print("name the account with --account (one of: "
              + ", ".join(a.name for a in config.accounts) + ")", file=sys.stderr)
        return EX_USAGE
    ledger = open_ledger(config)
    try:
        for line in retry_account(ledger, candidates[0], args.folder):
            print(line)
    finally:
        ledger.close()
    return EX_OK


def _explain(config: Config, args: argparse.Namespace) -> int:
    from .explain import explain

    return explain(config, args.message, args.folder, args.account)


def _init(args: argparse.Namespace) -> int:
    path = Path(args.output)
    if path.exists() and not args.force:
        print(f"{path} exists; use --force to replace it", file=sys.stderr)
        return EX_CANTCREAT
    template = templates()[args.tracker]
    path.write_text(template.read_text(encoding="utf-8"), encoding="utf-8")
    print(f"wrote {path}: edit the lines marked EDIT, export the secrets it names, then\n"
          f"  imap-ingest check -c {path}\n  imap-ingest run --once -c {path}")
    return EX_OK


def _demo(args: argparse.Namespace) -> int:
    from . import demo

    return demo.run(Path(args.dir))


def _from_rake(args: argparse.Namespace) -> int:
    from .from_rake import convert

    print(convert(" ".join(args.options)), end="")
    return EX_OK


def _from_fetchmail(args: argparse.Namespace) -> int:
    from .from_fetchmail import convert as from_fetchmail

    print(from_fetchmail(Path(args.file).expanduser().read_text(encoding="utf-8")), end="")
    return EX_OK


def _deliver_server(args: argparse.Namespace) -> int:
    from .deliver_server import serve

    return serve(Path(args.socket))


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-c", "--config", default=DEFAULT_CONFIG, metavar="FILE",
                        help="YAML configuration file (default: $IMAP_INGEST_CONFIG or "
                        "config.yaml; see config.example.yaml)")
    common.add_argument("--debug", action="store_true",
                        help="also log the IMAP and HTTP exchanges (secrets redacted)")
    common.add_argument("--log-format", choices=("text", "json"), default="text",
                        help="log lines to stderr as text (default) or JSON, one per line")

    parser = argparse.ArgumentParser(
        prog="imap-ingest", description=_DESCRIPTION, epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")

    def add(name: str, command: Command | Standalone, help: str, description: str,
            epilog: str, standalone: bool = False) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, parents=[common], help=help, epilog=epilog,
                                  description=textwrap.fill(description, 78),
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
        sub.set_defaults(command=command, standalone=standalone)
        return sub

    run = add("run", _run,
            help="ingest mail: once (--once), or polling each folder on its interval",
            description="Ingest new mail from every configured folder.",
            epilog="examples:\n"
                   "  imap-ingest run --once -c /etc/imap-ingest/config.yaml   # from cron\n"
                   "  imap-ingest run -c config.yaml --log-format json          # as a service\n\n"
                   "--once exits 0 when every message was dealt with, 75 when some are left\n"
                   "for a retry (tracker down), 77 when a login or the tracker key is refused.\n"
                   "Without --once: folders with IDLE are watched and mail is taken as it\n"
               "arrives (each folder's interval poll stays as a safety net); SIGTERM or\n"
               "Ctrl-C finish the message in hand and exit 0; SIGHUP reloads the config\n"
               "(an invalid one is reported and the running one kept).")
    run.add_argument("--once", action="store_true",
                     help="make one pass over every folder and exit (for cron)")
    run.add_argument("--retry-now", action="store_true",
                     help="retry messages and trackers now, ignoring their backoff timers")

    add("check", _check,
            help="validate the config, log in, open each folder, reach each tracker",
            description="Check everything a run needs, creating nothing: the config file, each "
                        "account's login, each folder, and each tracker's URL and key.",
            epilog="example:\n  imap-ingest check -c config.yaml\n\n"
                   "prints one line per check, OK or FAIL with the reason; exits 0 when all pass.")

    auth = commands.add_parser(
        "auth", help="OAuth2: obtain and store an account's first refresh token",
        description=textwrap.fill(
            "Accounts with auth: xoauth2 or oauthbearer and an oauth2 refresh token need a "
            "person once, to sign in and consent; imap-ingest then renews the token by itself "
            "and writes each rotated one back to refresh_token_file.", 78),
        epilog=_AUTH_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    auth_commands = auth.add_subparsers(title="commands", metavar="COMMAND")
    login = auth_commands.add_parser(
        "login", parents=[common], help="sign in as the mailbox's user; store the token",
        description=textwrap.fill(
            "Sign in for ACCOUNT and store its refresh token (mode 0600). With the device "
            "code flow (Microsoft's default) you open a URL on any device and type a code; "
            "with --browser (Gmail's default: Google does not allow the Gmail scope in the "
            "device flow) a browser on this machine is sent back to http://127.0.0.1:PORT/.",
            78),
        epilog=_AUTH_EXAMPLES + "\nexits 0 when the token is stored, 77 when the sign-in "
        "was refused or timed out,\n64 when the account does not use a refresh token.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    login.set_defaults(command=_auth_login, standalone=False)
    login.add_argument("account", metavar="ACCOUNT", help="the name of a configured account")
    flow = login.add_mutually_exclusive_group()
    flow.add_argument("--device", action="store_true",
                      help="device code flow (default, except for Google)")
    flow.add_argument("--browser", action="store_true",
                      help="browser with a loopback redirect (default for Google)")
    login.add_argument("--no-browser", action="store_true",
                       help="with --browser: print the URL, do not try to open a browser")
    login.add_argument("--port", type=int, default=0, metavar="PORT",
                       help="with --browser: the loopback port to listen on (default: any free "
                            "one; fix it to tunnel it over SSH)")

    add("status", _status,
            help="what the ledger knows: messages per folder by state, failing targets",
            description="Summarise the ledger (no network): per folder, how many messages were "
                        "submitted, failed, skipped, are waiting for a retry (and since when); per "
                        "target, whether it is failing and its last error.",
            epilog="example:\n  imap-ingest status -c config.yaml")

    history_parser = add("history", _history,
            help="every attempt for one message, and where it ended up",
            description="Show every record and attempt the ledger has for a Message-ID.",
            epilog="example:\n  imap-ingest history -c config.yaml '<CAF=abc@mail.example.org>'\n\n"
                   "exits 1 when the ledger has no record of it.")
    history_parser.add_argument("message_id", metavar="MESSAGE-ID",
                                help="the Message-ID header, with its angle brackets")

    training = add(
        "export-training", _export_training,
        help="archived mail whose tickets are judged, as spam/ and ham/ Maildirs for sa-learn",
        description="Ask the tracker (a hundred tickets per request) which archived messages' "
                    "tickets now match --spam or --ham, in the tracker's own field names, and "
                    "write those messages to OUT/spam and OUT/ham (Maildirs sa-learn reads); "
                    "each message once, whatever the number of runs. Prunes every archive by "
                    "its keep_for. Safe from cron while the service runs.",
        epilog="examples:\n"
               "  imap-ingest export-training -c config.yaml --since 30d \\\n"
               "      --spam 'queue=spam status=rejected' --ham 'status=resolved' --learn\n"
               "  imap-ingest export-training -c config.yaml --target redmine \\\n"
               "      --spam 'tracker=Spam status=Rejected' --ham 'status=Closed'\n\n"
               "filters: FIELD=VALUE (or FIELD!=VALUE), all must hold; values match names or\n"
               "ids, without case, * and ? as in shell patterns. RT: queue, status, owner, type;\n"
               "Redmine: project, tracker, status, priority, category, assigned_to, author.")
    training.add_argument("--since", default="30d", metavar="DURATION",
                          help="archived within this long (default 30d)")
    training.add_argument("--spam", required=True, metavar="FILTER",
                          help="tickets whose message is spam, e.g. 'queue=spam status=rejected'")
    training.add_argument("--ham", required=True, metavar="FILTER",
                          help="tickets whose message is ham, e.g. 'status=resolved'")
    training.add_argument("--out", metavar="DIR",
                          help="where spam/ and ham/ go (default STATE_DIR/training)")
    training.add_argument("--target", metavar="NAME", help="only this target's messages")
    training.add_argument("--learn", action="store_true",
                          help="then run sa-learn --spam OUT/spam and --ham OUT/ham")
    training.add_argument("--sa-learn", default="sa-learn", metavar="COMMAND",
                          help="the sa-learn command with its options (default sa-learn), "
                               "e.g. 'sa-learn --dbpath /var/lib/spamassassin/bayes'")

    again = add("retry", _retry,
            help="give set-aside messages another try, after you fixed the cause",
            description="Move the messages of a failure or quarantine folder back to the folder "
                        "they came from (or, for a source folder, unmark the messages marked "
                        "failed in place), so that the next pass submits them again. A message "
                        "the ledger shows as already in the tracker is left where it is.",
            epilog="examples:\n  imap-ingest retry -c config.yaml redmine.failed\n"
                   "  imap-ingest retry -c config.yaml spool/ROUTE   # a route's spool\n"
                   "  imap-ingest retry -c config.yaml Quarantine   # after checking the tracker:\n"
                   "      quarantined mail may already be there; delete those copies first")
    again.add_argument("folder", metavar="FOLDER", help="the folder to take messages from")
    again.add_argument("--account", metavar="NAME",
                       help="the account (needed when several have such a folder)")

    explain_parser = add(
        "explain", _explain,
        help="why a message would (not) become a ticket: each check and rule, no network",
        description="Run the built-in loop checks and a folder's rules on one message file "
                    "and print each step (hit or miss, and why), the decision, and what would "
                    "be submitted: the tracker URL and form fields, secrets masked. Nothing is "
                    "sent and no server is contacted.",
        epilog="examples:\n  imap-ingest explain -c config.yaml --folder INBOX message.eml\n"
               "  imap-ingest explain -c config.yaml --folder INBOX - < message.eml")
    explain_parser.add_argument("message", metavar="FILE",
                                help="the raw message (.eml), or - for stdin")
    explain_parser.add_argument("--folder", required=True, metavar="NAME",
                                help="the configured folder whose rules apply")
    explain_parser.add_argument("--account", metavar="NAME",
                                help="the account (needed when several have that folder)")

    init = add(
        "init", _init, standalone=True,
        help="write a commented starter config.yaml",
        description="Write a starter configuration for one tracker, with comments; the lines "
                    "to edit are marked EDIT. Asks nothing.",
        epilog="examples:\n  imap-ingest init                       # config.yaml for Redmine\n"
               "  imap-ingest init --tracker rt -o /etc/imap-ingest/config.yaml\n\n"
               "exits 73 when the file exists (use --force).")
    init.add_argument("--tracker", choices=list(templates()), default="redmine",
                      help="the tracker to configure (default: redmine)")
    init.add_argument("-o", "--output", default="config.yaml", metavar="FILE",
                      help="where to write it (default: config.yaml)")
    init.add_argument("--force", action="store_true", help="replace an existing file")

    demo_parser = add(
        "demo", _demo, standalone=True,
        help="see it work: a throwaway IMAP server, 20 sample messages, one pass",
        description="Start pymap's in-memory IMAP server on loopback, fill a folder with 20 "
                    "sample messages (requests, a reply, auto-replies, a bounce, a form mail, "
                    "Redmine's own notification, list mail, a broken message), run one pass "
                    "into a directory target and print what became of each. No network "
                    "beyond loopback; needs the demo extra: pip install 'imap-ingest[demo]'.",
        epilog="example:\n  imap-ingest demo                 # writes ./imap-ingest-demo/")
    demo_parser.add_argument("--dir", default="imap-ingest-demo", metavar="DIR",
                             help="where accepted messages are written (default: "
                                  "imap-ingest-demo)")

    fetchmail = add(
        "from-fetchmail", _from_fetchmail, standalone=True,
        help="turn a .fetchmailrc into imap-ingest YAML",
        description="Print the configuration that reads what a .fetchmailrc polled (POP3 or "
                    "IMAP, user, keep, ssl, folder), with what does not translate (mda, "
                    "smtphost, ...) said in comments.",
        epilog="example:\n  imap-ingest from-fetchmail ~/.fetchmailrc > config.yaml")
    fetchmail.add_argument("file", metavar="FETCHMAILRC", help="the .fetchmailrc to read")

    rake = add(
        "from-rake", _from_rake, standalone=True,
        help="turn a rake redmine:email:receive_imap line into imap-ingest YAML",
        description="Print the configuration that does what a rake redmine:email:receive_imap "
                    "cron line did, with Redmine's quirks said in comments (ssl= with any "
                    "value means on; the no_* options count only when 1).",
        epilog="example:\n  imap-ingest from-rake 'host=imap.example.org port=993 ssl=1 "
               "username=rm folder=INBOX\n      project=support move_on_failure=failed' "
               "> config.yaml")
    rake.add_argument("options", nargs="+", metavar="KEY=VALUE",
                      help="the rake line, or just its key=value options")
    compat.add_commands(commands, DEFAULT_CONFIG)
    server = add(
        "deliver-server", _deliver_server, standalone=True,
        help="serve deliver, rt-mailgate and rdm-mailhandler without their start-up cost",
        description="Import once what a delivery needs, listen on a Unix socket (mode 0600) "
                    "and fork a child for each delivery the MTA's commands hand over: they "
                    "then cost about a bare Python start-up. Only clients of this process's "
                    "uid are served; without a server the commands deliver by themselves, "
                    "only slower. Runs in the foreground, logs to stderr; SIGTERM stops it "
                    "(the deliveries in hand finish first).",
        epilog="example:\n  imap-ingest deliver-server    # as the user the MTA's pipe runs as"
               "\n\nexits 73 when another server listens on the socket.")
    server.add_argument("--socket", default=handoff.socket_path(os.environ), metavar="PATH",
                        help=f"the socket (default: ${handoff.SOCKET_VARIABLE}, else "
                             f"{handoff.DEFAULT_SOCKET}); the commands use the same default")
    return parser
