"""connect(config): one place that opens connections, with keepalives and timeouts.

No startup parameter beyond libpq's basics is sent: a connection pooler (PgBouncer, RDS
Proxy, Supabase's) refuses unknown ones such as ``options``. The server-side settings
pgsluice wants are set with one statement right after connecting, which is also the
health check of the wait step.
"""

from __future__ import annotations

import re
from typing import Any

import psycopg

from pgsluice import __version__
from pgsluice.config import Config
from pgsluice.errors import AuthenticationError, ConfigError

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
    r"|does not match host name"
    r"|certificate is not yet valid|certificate has expired"
    r"|could not (?:read|load|open) (?:root )?certificate"
    r"|root certificate file .* does not exist"
    r"|SSL error: (?:certificate|unsupported|wrong version|tlsv1 alert)"
    r"|invalid (?:integer value|value for parameter|sslmode value|connection option|URI)",
    re.IGNORECASE,
)
_STARTUP_PARAMETER = re.compile(r"unsupported startup parameter(?: in options)?:\s*(?P<name>[\w.-]+)", re.IGNORECASE)
_TLS = re.compile(r"certificate|SSL", re.IGNORECASE)

# Server-side settings of every session. The server must notice a vanished pgsluice
# quickly: an idle lock session by TCP keepalive, a running migration by
# client_connection_check_interval (PostgreSQL 14+), so that a killed runner's lock and
# transaction go in seconds, not hours. Set after connecting, never as a startup
# parameter; the statement is also the wait step's health check.
SESSION_SETTINGS = (
    "SELECT set_config('tcp_keepalives_idle', '10', false), set_config('tcp_keepalives_interval', '5', false),"
    " set_config('tcp_keepalives_count', '3', false), set_config('client_connection_check_interval', '1000', false)"
)


def classify_connect_error(exc: psycopg.OperationalError, config: Config) -> Exception | None:
    """The permanent error a failed connection attempt means, or None when it may heal by waiting."""
    text = describe_connect_error(exc, config)
    startup = _STARTUP_PARAMETER.search(text)
    if startup:
        return ConfigError(
            f"the server refused the startup parameter {startup['name']!r}: {text}",
            hint="a connection pooler (PgBouncer) accepts only some startup parameters: remove it from the URL "
            "(options=…) and PGOPTIONS, or add it to the pooler's ignore_startup_parameters",
        )
    if _PERMANENT.search(text):
        if _TLS.search(text) and "password" not in text.lower():
            hint = (
                "the server's certificate was not accepted: check sslrootcert (the CA that signed it) and that the "
                "host name in the URL is one the certificate names; retrying will not help"
            )
        else:
            hint = "check the user, password, database name and pg_hba.conf; retrying will not help"
        return AuthenticationError(f"the database refused the connection: {text}", hint=hint)
    return None


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
        # In a SQL_ASCII database psycopg would return text as bytes; ask for UTF-8.
        "client_encoding": "UTF8",
        "autocommit": True,
        # No server-side prepared statements: a transaction pooler hands each transaction to any server
        # connection, where a statement prepared on another one does not exist.
        "prepare_threshold": None,
    }
    if config.password is not None:
        kwargs["password"] = config.password
    return kwargs


def connect(config: Config, purpose: str) -> psycopg.Connection[Any]:
    """Open a connection for ``purpose`` (lock, apply, history…) with pgsluice's session settings.

    Raises AuthenticationError or ConfigError for what waiting cannot heal, psycopg's
    OperationalError for the rest; messages are redacted."""
    try:
        conn = psycopg.connect(config.database_url, **connect_kwargs(config, purpose))
    except psycopg.OperationalError as exc:
        permanent = classify_connect_error(exc, config)
        if permanent is not None:
            raise permanent from exc
        raise
    try:
        conn.execute(SESSION_SETTINGS)
    except BaseException:
        conn.close()
        raise
    return conn


def detect_transaction_pooling(conn: psycopg.Connection[Any], config: Config, rounds: int = 3) -> str | None:
    """Evidence that a transaction (or statement) pooler sits between pgsluice and the server, or None.

    A session of its own keeps its backend; through a transaction pooler a connection's
    backend goes back to the pool after each transaction (and a pooler hands out the most
    recently released one first). So: note this connection's backend, ask a second connection
    for its own, and ask this one again. Either the second was handed this connection's backend,
    or this connection now has another one. A direct connection or a session pooler shows neither
    (no false alarm). Other clients of the pool can hide both in one round, so a few rounds are
    tried. No transaction is held open meanwhile: holding a pooled backend while asking for
    another would deadlock a busy pool. Costs one connection and a few milliseconds, which a direct
    connection is spared: there the server's backend pid equals the one libpq got at connect time in
    BackendKeyData, while a pooler (PgBouncer, Odyssey, pgcat, Supavisor) hands out cancel keys of its own."""
    if conn.info.backend_pid == _backend(conn):
        return None
    with connect(config, "probe") as other:
        for _ in range(rounds):
            first = _backend(conn)
            second = _backend(other)
            again = _backend(conn)
            if second == first:
                return f"a second connection was handed this connection's server backend (pid {first})"
            if again != first:
                return f"this connection's server backend changed between two transactions (pid {first}, then {again})"
    return None


def _backend(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT pg_backend_pid()").fetchone()
    return int(row[0]) if row else 0


def describe_connect_error(exc: BaseException, config: Config) -> str:
    """One line, no secrets: libpq's message with its newlines folded."""
    text = " ".join(str(exc).split())
    return config.redactor(text)


def server_facts(conn: psycopg.Connection[Any]) -> dict[str, Any]:
    """Where we are connected, for logs: never the password."""
    info = conn.info
    return {
        "host": info.host,
        "port": info.port,
        "database": info.dbname,
        "user": info.user,
        "server_version": info.server_version,
    }
