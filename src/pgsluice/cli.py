"""argparse → Config → run; maps every error to its exit code. The only place that exits."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
from collections.abc import Sequence
from types import FrameType
from typing import Any, NoReturn

import structlog

from pgsluice import __version__
from pgsluice.config import OPTIONS, Config, load_config, termination_log_of
from pgsluice.errors import ConfigError, ExitCode, Interrupted, PgsluiceError
from pgsluice.events import Event
from pgsluice.log import configure_logging
from pgsluice.options import COMMANDS
from pgsluice.redact import Redactor
from pgsluice.report import Report, finish

log = structlog.get_logger("pgsluice.cli")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # exit 2 with a one-line reason, like every usage error
        raise ConfigError(f"{self.prog}: {message}", hint=f"see '{self.prog} --help'")


def _add_command_arguments(command: str, sub: argparse.ArgumentParser) -> None:
    """The positional arguments and switches of ``command``: not settings, so no environment variable."""
    if command in ("status", "plan", "backups"):
        sub.add_argument("--json", dest="json_output", action="store_true", help="print JSON on stdout")
    if command == "status":
        sub.add_argument(
            "--exit-code",
            dest="state_as_exit_code",
            action="store_true",
            help="exit 9 when anything is pending, 6 when files and history disagree (or, with --drift, the schema "
            "drifted)",
        )
        sub.add_argument(
            "--drift",
            dest="check_drift",
            action="store_true",
            help="compare the schema with its fingerprint from pgsluice's last run: drift.detected names what changed",
        )
    if command in ("baseline", "resolve"):
        sub.add_argument("version", type=int, metavar="VERSION")
    if command == "resolve":
        group = sub.add_mutually_exclusive_group(required=True)
        group.add_argument(
            "--applied",
            dest="resolve_as",
            action="store_const",
            const="applied",
            help="it did complete: mark it applied",
        )
        group.add_argument(
            "--rolled-back",
            dest="resolve_as",
            action="store_const",
            const="rolled-back",
            help="it was undone: forget it, so migrate runs it again",
        )
    if command == "new":
        sub.add_argument("name", metavar="NAME", help="lowercase words joined by underscores")
    if command == "down":
        group = sub.add_mutually_exclusive_group(required=True)
        group.add_argument("--to", dest="down_to", type=int, metavar="VERSION", help="undo every version above it")
        group.add_argument("--steps", dest="down_steps", type=int, metavar="N", help="undo the N newest versions")
        group.add_argument(
            "--future",
            dest="down_future",
            action="store_true",
            help="undo every applied version newer than every file (a newer release's, with its stored down SQL)",
        )
    if command == "restore":
        sub.add_argument("backup_id", metavar="ID", help="a backup id from 'pgsluice backups'")
        sub.add_argument("--clean", action="store_true", help="allow restoring into a non-empty database")


def build_parser() -> argparse.ArgumentParser:
    """The command line: one sub-command each, its options from config.OPTIONS."""
    parser = _Parser(prog="pgsluice", description="One-shot PostgreSQL migration job that gates a rollout.")
    parser.add_argument("--version", action="version", version=f"pgsluice {__version__}")
    subs = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for command, about in COMMANDS.items():
        sub = subs.add_parser(command, help=about, description=about)
        for opt in OPTIONS:
            if command not in opt.commands:
                continue
            env = f" [env {opt.env or (opt.env_prefix or '') + '<name>'}]"
            if opt.boolean:
                action: Any = argparse.BooleanOptionalAction
                sub.add_argument(opt.flag, dest=opt.name, action=action, default=None, help=f"{opt.help}{env}")
                continue
            unit = f" ({opt.unit})" if opt.unit else ""
            sub.add_argument(
                opt.flag,
                dest=opt.name,
                default=None,
                action="append" if opt.repeatable else "store",
                metavar=opt.metavar,
                help=f"{opt.help}{unit}{env}",
            )
        _add_command_arguments(command, sub)
    return parser


def _with_default_command(argv: list[str]) -> list[str]:
    if not argv or (argv[0].startswith("-") and argv[0] not in ("-h", "--help", "--version")):
        return ["migrate", *argv]
    return argv


def _install_signal_handlers() -> None:
    def handler(signum: int, _frame: FrameType | None) -> None:
        # Once: the cleanup that follows (rollback, unlock) must not be interrupted again.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        raise Interrupted(signum)

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def main(argv: Sequence[str] | None = None) -> int:
    """Run pgsluice; return the exit code (``__main__`` and ``entrypoint.py`` exit with it)."""
    args = list(sys.argv[1:] if argv is None else argv)
    report = Report(command="?")
    try:
        namespace = build_parser().parse_args(_with_default_command(args))
        config = load_config(vars(namespace))
    except ConfigError as exc:
        # The configuration is what failed: log and write the termination message as far as we can tell where.
        env_format = os.environ.get("PGSLUICE_LOG_FORMAT", "auto").lower()
        configure_logging(env_format if env_format in ("json", "console") else "auto", "info", Redactor())
        finish(report, exc.exit_code, str(exc), Redactor(), termination_log_of(args))
        return int(exc.exit_code)
    except SystemExit as exc:  # --help, --version
        return int(exc.code or 0)

    configure_logging(config.log_format, config.log_level, config.redactor)
    for warning in config.warnings:
        log.warning(Event.CONFIG_WARNING, warning=warning)
    report.command = config.command
    _install_signal_handlers()
    code, reason = _run(config, report)
    finish(report, code, reason, config.redactor, config.termination_log)
    return int(code)


def _run(config: Config, report: Report) -> tuple[ExitCode, str | None]:
    from pgsluice.run import dispatch

    try:
        return dispatch(config, report), None
    except Interrupted as exc:
        return exc.exit_code, exc.reason()
    except PgsluiceError as exc:
        report.details.update(exc.report_fields())
        return exc.exit_code, str(exc)
    except Exception as exc:
        log.exception(Event.RUN_CRASHED)
        return ExitCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc}"


def exit_with(code: int) -> NoReturn:
    """Leave with ``code`` once stdout and stderr are flushed, skipping interpreter teardown.

    By the time main() returns, every connection is closed, every child reaped, the lock
    released and the termination message written; tearing the interpreter down would only
    free memory, which costs a one-shot job ~25 ms of its start-to-exit time (benchmarks/).
    """
    if sys.getprofile() is not None or sys.gettrace() is not None:
        sys.exit(code)  # cProfile, coverage, a debugger: they write their data at teardown
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # a closed pipe must not change the exit code
            stream.flush()
    os._exit(code)


def run() -> NoReturn:
    """The console script, ``python -m pgsluice`` and the image's entrypoint."""
    exit_with(main())
