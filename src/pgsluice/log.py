"""configure_logging() and nothing else: structlog to stderr, JSON or console, secrets masked."""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

from pgsluice.events import Event
from pgsluice.redact import Redactor

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def _redacting(redactor: Redactor) -> structlog.types.Processor:
    def scrub(value: Any) -> Any:
        if isinstance(value, str):
            return redactor(value)
        if isinstance(value, dict):
            return {k: scrub(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [scrub(v) for v in value]
        return value

    def processor(_logger: Any, _name: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        for key, value in event_dict.items():
            event_dict[key] = scrub(value)
        return event_dict

    return processor


class _StructlogHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        structlog.get_logger(record.name).log(
            record.levelno, Event.LIBRARY_LOGGED, logger=record.name, message=record.getMessage()
        )


def configure_logging(
    log_format: str = "auto", level: str = "info", redactor: Redactor | None = None, stream: TextIO | None = None
) -> None:
    """Send structlog events to ``stream`` (stderr): JSON lines, or a console view on a terminal.

    Logs go to stderr so that ``status --json`` and ``plan --json`` keep stdout for data.
    Every string value passes the redactor last, after tracebacks are rendered.
    """
    stream = stream or sys.stderr
    as_json = log_format == "json" or (log_format == "auto" and not stream.isatty())
    processors: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if as_json:
        # show_locals=False: a frame's locals can hold the connection string.
        processors.append(
            structlog.processors.ExceptionRenderer(structlog.tracebacks.ExceptionDictTransformer(show_locals=False))
        )
    else:
        processors.append(structlog.processors.format_exc_info)
    if redactor is not None:
        processors.append(_redacting(redactor))
    if as_json:
        processors.append(structlog.processors.JSONRenderer())
    else:
        from pgsluice.progress import clear_console_lines

        processors.append(clear_console_lines)  # a progress line redrawn in place is erased before the next event
        processors.append(
            structlog.dev.ConsoleRenderer(colors=stream.isatty(), exception_formatter=structlog.dev.plain_traceback)
        )
    # Libraries that log through the standard library (psycopg) come out as events too,
    # structured and redacted like ours, instead of bare lines in the JSON stream.
    root = logging.getLogger()
    root.handlers[:] = [_StructlogHandler()]
    root.setLevel(_LEVELS[level])
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )
