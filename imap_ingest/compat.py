"""`imap-ingest deliver`, and the flag-compatible `rt-mailgate` and `rdm-mailhandler` modes:
an alias line that pipes into rt-mailgate or rdm-mailhandler changes only its program name.

Each mode builds the config its flags describe (one target, one route), on top of a
config file given with -c (for its rules, ledger and the rest), and hands the message on
stdin to deliver.py under a hard deadline: the MTA is never blocked past --timeout.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from .handoff import COMMANDS, RDM_TIMEOUT, RT_TIMEOUT, hand_over

if TYPE_CHECKING:  # the rest is imported on use: a hand-off to the server needs none of it
    import argparse
    import logging
    from types import FrameType

    from .config import Config

_RT_TARGET = "rt-mailgate"
_RDM_TARGET = "rdm-mailhandler"


def _log() -> logging.Logger:
    import logging

    return logging.getLogger("imap_ingest")


def add_commands(commands: Any, config_default: str) -> None:
    """Add deliver, rt-mailgate and rdm-mailhandler to the CLI's subcommands."""
    import argparse
    from pathlib import Path

    from .errors import EX_USAGE

    class _Help(argparse.Action):
        """-h/--help: the help, then 64, as rt-mailgate and rdm-mailhandler exit 1: in an
        alias line by mistake, it makes the MTA bounce the mail, where 0 would lose it."""

        def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
            super().__init__(option_strings, argparse.SUPPRESS, nargs=0,
                             default=argparse.SUPPRESS,
                             help="show this help and exit 64 (an MTA bounces the mail)")

        def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                     values: object, option_string: str | None = None) -> None:
            parser.print_help()
            parser.exit(EX_USAGE)

    def sub(name: str, help: str, description: str, epilog: str,
            run: Callable[[argparse.Namespace], int]) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = commands.add_parser(
            name, help=help, description=description, epilog=epilog, add_help=False,
            formatter_class=argparse.RawDescriptionHelpFormatter)
        parser.add_argument("-h", "--help", action=_Help)
        parser.set_defaults(command=run, standalone=True, log_format="text")
        parser.add_argument("--log-format", choices=("text", "json"), default="text",
                            help="log lines to stderr as text (default) or JSON")
        return parser

    deliver = sub("deliver", "deliver one message from stdin (an MTA's pipe) through a route",
                  "Read one message on stdin, run the route's loop checks and rules, submit "
                  "it and exit with a code the MTA understands.", _EXITS, _deliver)
    deliver.add_argument("-c", "--config", default=config_default, metavar="FILE",
                         help="YAML configuration file with a routes: section")
    deliver.add_argument("--route", required=True, metavar="NAME",
                         help="the routes: entry to deliver through")
    deliver.add_argument("--timeout", type=float, default=RT_TIMEOUT, metavar="S",
                         help="exit 75 after S seconds, whatever is in hand (default 180)")
    deliver.add_argument("--debug", action="store_true", help="log the HTTP exchange")

    rt = sub("rt-mailgate", "a drop-in for rt-mailgate: same flags, plus rules and a ledger",
             "rt-mailgate's flags and $EXTENSION, with imap-ingest's loop checks, dedupe and "
             "spool. An alias changes only its program name:\n  bugs: \"|imap-ingest "
             "rt-mailgate --queue bugs --action correspond --url http://rt.example/\"",
             _EXITS, _rt_mailgate)
    rt.add_argument("--url", required=True, help="RT's base URL")
    rt.add_argument("--queue", help="the queue (name or id; RT's default: General)")
    rt.add_argument("--action", default="correspond",
                    help="correspond, comment, take or resolve, chained with - (default "
                         "correspond)")
    rt.add_argument("--extension", choices=("queue", "action", "ticket"), type=str.lower,
                    help="$EXTENSION (the MTA's +ext) gives this field")
    rt.add_argument("--timeout", type=float, default=RT_TIMEOUT, metavar="S",
                    help="seconds before giving up with 75 (default 180)")
    tls = rt.add_mutually_exclusive_group()
    tls.add_argument("--ca-file", type=Path, metavar="FILE", help="trust this CA bundle")
    tls.add_argument("--no-verify-ssl", action="store_true",
                     help="do not verify RT's certificate")
    tls.add_argument("--verify-ssl", action="store_true", help="verify it (the default)")
    rt.add_argument("--debug", action="store_true", help="log the HTTP exchange")
    # Taken so that an alias line with it still delivers: RT's gateway keeps no session.
    rt.add_argument("--jar", metavar="FILE", help="ignored (RT's mail gateway needs no cookies)")
    _ours(rt, "rt-mailgate")

    rdm = sub("rdm-mailhandler", "a drop-in for rdm-mailhandler: same flags, plus rules "
              "and a ledger", "rdm-mailhandler's flags, with imap-ingest's loop checks, dedupe "
              "and spool. An alias changes only its program name:\n  support: \"|imap-ingest "
              "rdm-mailhandler --url https://redmine.example --key-file /etc/redmine.key\"",
              _EXITS, _rdm_mailhandler)
    rdm.add_argument("-u", "--url", required=True, help="Redmine's base URL")
    key = rdm.add_mutually_exclusive_group(required=True)
    key.add_argument("-k", "--key", help="the incoming-mail API key (visible in ps: prefer "
                     "--key-file)")
    key.add_argument("--key-file", type=Path, metavar="FILE", help="a file holding the key")
    rdm.add_argument("--no-check-certificate", action="store_true",
                     help="do not verify Redmine's certificate")
    rdm.add_argument("--certificate-bundle", type=Path, metavar="FILE",
                     help="trust this CA bundle")
    rdm.add_argument("-v", "--verbose", dest="debug", action="store_true",
                     help="log the HTTP exchange")
    rdm.add_argument("--timeout", type=float, default=RDM_TIMEOUT, metavar="S",
                     help="seconds before giving up with 75 (default 60)")
    rdm.add_argument("--unknown-user", choices=("ignore", "accept", "create"))
    rdm.add_argument("--default-group", metavar="GROUP")
    for flag in ("--no-permission-check", "--no-account-notice", "--no-notification"):
        rdm.add_argument(flag, action="store_true")
    rdm.add_argument("--project-from-subaddress", metavar="ADDR")
    for short, name in (("-p", "project"), ("-s", "status"), ("-t", "tracker"), ("", "category"),
                        ("", "priority"), ("", "assigned-to"), ("", "fixed-version")):
        rdm.add_argument(*filter(None, (short, f"--{name}")), metavar=name.upper())
    rdm.add_argument("--private", action="store_true", help="create new issues as private")
    rdm.add_argument("-o", "--allow-override", metavar="ATTRS")
    _ours(rdm, "rdm-mailhandler")


def _ours(parser: argparse.ArgumentParser, route: str) -> None:
    """What the compatible modes add: a config file, a route in it, the state dir."""
    from pathlib import Path

    group = parser.add_argument_group("imap-ingest's own")
    group.add_argument("-c", "--config", metavar="FILE",
                       help="a config file for rules, loop checks, dedupe and state_dir")
    group.add_argument("--route", default=route, metavar="NAME",
                       help=f"the routes: entry of -c whose rules apply (default {route})")
    group.add_argument("--state-dir", type=Path, metavar="DIR",
                       help="the ledger and spool (default: -c's state_dir, else "
                            "$XDG_STATE_HOME/imap-ingest)")
    group.add_argument("--no-loop-checks", action="store_true",
                       help="submit auto-replies and bounces too, as the original tool does")


_EXITS = """\
exit codes (sysexits.h), as an MTA reads them:
  0   delivered, or kept in the spool (refused for good, held, skipped: see status)
  75  not now (tracker down, timeout, ledger busy): the MTA keeps it and tries again
  67  no such route            78  the config file is invalid
  2   a bad or missing flag (argparse's usage error): the MTA bounces the mail
"""


def _deliver(args: argparse.Namespace) -> int:
    from .config import load

    return _pipe(lambda: load(args.config), args.route, args.timeout, None)


def _rt_mailgate(args: argparse.Namespace) -> int:
    options = {"queue": args.queue, "action": args.action}
    # As rt-mailgate: $EXTENSION fills the --extension field and is prepended as
    # X-RT-Mail-Extension, the latter also without --extension.
    extension = os.environ.get("EXTENSION") or None
    return _pipe(lambda: _compat_config(args, _RT_TARGET, rt_target(args), options),
                 args.route, args.timeout, extension)


def rt_target(args: argparse.Namespace) -> dict[str, object]:
    """The RT target rt-mailgate's flags describe."""
    target: dict[str, object] = {
        "type": "rt", "url": args.url.rstrip("/"), "action": args.action,
        "extension": args.extension, "timeout": args.timeout,
        "verify_tls": not args.no_verify_ssl, "allow_insecure": _in_clear(args.url)}
    if args.ca_file is not None:
        target["ca_file"] = args.ca_file
    return target


def _rdm_mailhandler(args: argparse.Namespace) -> int:
    options = {name: getattr(args, name) for name in (
        "project", "status", "tracker", "category", "priority", "assigned_to", "fixed_version",
        "allow_override")}
    options["is_private"] = args.private or None
    return _pipe(lambda: _compat_config(args, _RDM_TARGET, redmine_target(args), options),
                 args.route, args.timeout, None)


def redmine_target(args: argparse.Namespace) -> dict[str, object]:
    """The Redmine target rdm-mailhandler's flags describe."""
    target: dict[str, object] = {
        "type": "redmine", "url": args.url.rstrip("/"), "timeout": args.timeout,
        "verify_tls": not args.no_check_certificate, "allow_insecure": _in_clear(args.url),
        "unknown_user": args.unknown_user, "default_group": args.default_group,
        "no_permission_check": args.no_permission_check,
        "no_account_notice": args.no_account_notice, "no_notification": args.no_notification,
        "project_from_subaddress": args.project_from_subaddress}
    if args.key_file is not None:
        target["key_file"] = args.key_file
    else:
        target["key"] = args.key
    if args.certificate_bundle is not None:
        target["ca_file"] = args.certificate_bundle
    return target


def _in_clear(url: str) -> bool:
    """An http:// --url: the alias line's own choice, taken as rt-mailgate and rdm-mailhandler
    take it (refusing it would bounce the mail), with a warning on every delivery."""
    if not url.lower().startswith("http://"):
        return False
    _log().warning("--url %s is plain http: the mail (and a Redmine key) cross the network in "
                "clear; use https://", url.split("?")[0])
    return True


def _compat_config(args: argparse.Namespace, name: str, target: dict[str, object],
                   options: dict[str, object]) -> Config:
    """The config the flags describe: target ``name`` and a route into it, on top of -c."""
    from pydantic import ValidationError

    from . import loops
    from .config import Config, Route, load
    from .errors import ConfigError
    from .trackers import registry

    flags = {key: value for key, value in options.items() if value is not None}
    base = load(args.config) if args.config else None
    route = base.routes.get(args.route) if base else None
    checks = dict.fromkeys(loops.NAMES, False) if args.no_loop_checks else {}
    try:
        routes = {args.route: Route.model_validate(
            {**(route.model_dump(exclude_unset=True) if route else {}), **flags,
             "target": name})}
        if base is None:
            data: dict[str, Any] = {"targets": {name: target}, "routes": routes,
                                    "loop_checks": checks}
            return Config(**data, **({"state_dir": args.state_dir} if args.state_dir else {}))
        model = registry.lookup(str(target["type"])).model
        update: dict[str, object] = {
            "targets": {**base.targets, name: model.model_validate(target)},
            "routes": {**base.routes, **routes},
            "loop_checks": {**base.loop_checks, **checks}}
    except ValidationError as exc:
        raise ConfigError("; ".join(
            f"{'.'.join(map(str, error['loc']))}: {error['msg']}"
            for error in exc.errors(include_input=False, include_url=False))) from None
    if args.state_dir:
        update["state_dir"] = args.state_dir
    return base.model_copy(update=update)


def _pipe(make_config: Callable[[], Config], route: str, timeout: float,
          extension: str | None) -> int:
    """Deliver stdin through ``route`` within ``timeout`` seconds; the exit code."""
    import math
    import signal
    import time

    from .errors import EX_NOUSER, EX_TEMPFAIL, IngestError

    log = _log()
    deadline = time.monotonic() + timeout
    signal.signal(signal.SIGALRM, _out_of_time)
    signal.alarm(max(1, math.ceil(timeout)))
    try:
        raw = sys.stdin.buffer.read()
    except OSError as exc:
        log.error("cannot read the message on stdin: %s", exc.strerror)
        return EX_TEMPFAIL
    config = make_config()
    from . import logs
    from .deliver import deliver

    logs.hide(config.secrets())
    if route not in config.routes:
        log.error("no route named %r (configured: %s)", route, ", ".join(config.routes) or "none")
        return EX_NOUSER
    try:
        delivery = deliver(config, route, raw, extension, deadline)
    except IngestError as exc:
        # The ledger or spool cannot be used: the MTA keeps the message meanwhile.
        log.error("%s; left to the MTA to try again", exc)
        return EX_TEMPFAIL
    except OSError as exc:
        log.error("cannot keep the message (%s: %s); left to the MTA to try again",
                  exc.filename, exc.strerror)
        return EX_TEMPFAIL
    finally:
        signal.alarm(0)
    return delivery.code


def _out_of_time(signum: int, frame: FrameType | None) -> None:
    """The MTA must not wait longer: what was committed stays, the rest is its to retry.
    A post that may have reached the tracker is in the ledger as in doubt."""
    from .errors import EX_TEMPFAIL

    os.write(2, b"imap-ingest: --timeout reached; left to the MTA to try again\n")
    os._exit(EX_TEMPFAIL)


def entry(argv: Sequence[str] | None = None) -> int:
    """The imap-ingest program. The MTA's commands are handed to a running deliver-server
    when there is one (handoff.py), else run here, without importing the rest of the CLI
    (the scheduler, IMAP, OAuth): an MTA starts one process per message."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] and argv[0] in COMMANDS and (code := hand_over(argv)) is not None:
        return code
    return run(argv)


def run(argv: list[str]) -> int:
    """The command ``argv`` in this process: what entry() does without a server, and what
    the server's child does with a client's command."""
    if argv[:1] and argv[0] in COMMANDS:
        import argparse

        from . import logs
        from .config import CONFIG_VARIABLE
        from .errors import IngestError

        parser = argparse.ArgumentParser(prog="imap-ingest")
        add_commands(parser.add_subparsers(), os.environ.get(CONFIG_VARIABLE, "config.yaml"))
        args = parser.parse_args(argv)
        with logs.configured(args.log_format, args.debug):
            try:
                code: int = args.command(args)
                return code
            except IngestError as exc:
                _log().error("%s", exc)
                return exc.exit_code
    from .cli import main

    return main(argv)


def main_rt_mailgate() -> int:
    """The imap-ingest-rt-mailgate console script: `imap-ingest rt-mailgate`."""
    return entry(["rt-mailgate", *sys.argv[1:]])


def main_rdm_mailhandler() -> int:
    """The imap-ingest-rdm-mailhandler console script: `imap-ingest rdm-mailhandler`."""
    return entry(["rdm-mailhandler", *sys.argv[1:]])

