"""connect(config): one place that opens connections, with keepalives and timeouts."""

from __future__ import annotations

import re
from typing import Any

import psycopg

from pgsluice import __version__
from pgsluice.config import Config
from pgsluice.errors import AuthenticationError

APPLICATION_NAME = "pgsluice"

# libpq reports connection failures without a SQLSTATE (there is no result to
# carry one), so the server's own FATAL texts are the only signal. These are
# the failures that waiting cannot heal; anything else is retried to the deadline.
_PERMANENT = re.compile(
    r"password authentication failed"
    r"|authentication failed for user"
    r"|no pg_hba\.conf entry"
    r"|role \".*\" does not exist"
    r"|database \".*\" does not exist"
    r"|permission denied"
    r"|is not permitted to log in"
    r"|no password supplied"
    r"|fe_sendauth"
    r"|server does not support SSL, but SSL was required"
    r"|certificate verify failed"
    r"|invalid (?:integer value|value for parameter|sslmode value|connection option|URI)",
    re.IGNORECASE,
)


def is_permanent_connect_error(exc: BaseException) -> bool:
    """True for failures that retrying cannot fix: credentials, role, database, pg_hba."""
    if isinstance(exc, psycopg.OperationalError):
        return bool(_PERMANENT.search(str(exc)))
    return isinstance(exc, psycopg.ProgrammingError)


# Server-side settings of every session. The server must notice a vanished
# pgsluice quickly: an idle lock session by TCP keepalive, a running migration by
# client_connection_check_interval (PostgreSQL 14+), so that a killed runner's
# lock and transaction go in seconds, not hours.
SESSION_OPTIONS = (
    "-c tcp_keepalives_idle=10 -c tcp_keepalives_interval=5 -c tcp_keepalives_count=3"
    " -c client_connection_check_interval=1000"
)


def connect_kwargs(config: Config, purpose: str) -> dict[str, Any]:
    """libpq parameters every pgsluice connection uses, on top of the configured URL."""
    kwargs: dict[str, Any] = {
        "application_name": f"{APPLICATION_NAME} {__version__} {purpose}",
        "connect_timeout": max(1, round(config.connect_timeout_seconds)),
        # A vanished peer is noticed in ~20 s instead of the kernel's two hours.
        "keepalives": 1,
        "keepalives_idle": 10,
        "keepalives_interval": 5,
        "keepalives_count": 3,
        "options": f"{config.pg_options} {SESSION_OPTIONS}".strip(),
        # In a SQL_ASCII database psycopg would return text as bytes; ask for UTF-8.
        "client_encoding": "UTF8",
        "autocommit": True,
    }
    if config.password is not None:
        kwargs["password"] = config.password
    return kwargs


def connect(config: Config, purpose: str) -> psycopg.Connection[Any]:
    """Open a connection for ``purpose`` (lock, apply, history…); errors are redacted."""
    try:
        return psycopg.connect(config.database_url, **connect_kwargs(config, purpose))
    except psycopg.OperationalError as exc:
        if is_permanent_connect_error(exc):
            raise AuthenticationError(
                f"the database refused the connection: {describe_connect_error(exc, config)}",
                hint="check the user, password, database name and pg_hba.conf; retrying will not help",
            ) from None
        raise


def describe_connect_error(exc: BaseException, config: Config) -> str:
    """One line, no secrets: libpq's message with its newlines folded."""
    text = " ".join(str(exc).split())
    return config.redactor(text)


def server_target(conn: psycopg.Connection[Any]) -> dict[str, Any]:
    """Where we are connected, for logs: never the password."""
    info = conn.info
    return {
        "host": info.host,
        "port": info.port,
        "database": info.dbname,
        "user": info.user,
        "server_version": info.server_version,
    }
