"""Connection strings: checked before anything connects, their secrets found, and never echoed.

libpq accepts a URL (``postgresql://user:password@host:5432/db?sslmode=require``) or a
conninfo string (``host=db dbname=app``). Its own error messages quote what it could not
parse, which may be part of a password; so pgsluice checks the shape itself first and
says *what* is wrong (scheme, port, bracket, percent-encoding, an unencoded ``@``)
without repeating the value. No I/O.
"""

from __future__ import annotations

import re
from typing import Any

URL_SCHEMES = ("postgresql://", "postgres://")
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_BAD_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")
_PORT = re.compile(r"^[0-9]{1,5}$")
SECRET_KEY = re.compile(r"password|secret", re.IGNORECASE)
"""Connection parameters whose value is a credential: password, sslpassword, oauth_client_secret, …"""


class ConninfoError(ValueError):
    """A connection string that libpq would refuse; the message never contains the string."""


def is_secret_param(key: str) -> bool:
    """True for ``password``, ``sslpassword`` and any credential-like parameter libpq adds."""
    return bool(SECRET_KEY.search(key))


def _check_port(port: str, what: str) -> None:
    for item in port.split(","):
        if item and (not _PORT.match(item) or not 1 <= int(item) <= 65535):
            raise ConninfoError(f"{what}: the port is not a number from 1 to 65535")


def _check_url(text: str, what: str) -> None:
    rest = text.split("://", 1)[1]
    authority = rest.split("/", 1)[0].split("?", 1)[0]
    if authority.count("@") > 1 or ("@" not in authority and "@" in rest.split("?", 1)[0]):
        raise ConninfoError(
            f"{what}: the URL has an '@' that is not percent-encoded (more than one '@' before the host, "
            "or one after a '/'): percent-encode '@' as %40, '/' as %2F and ':' as %3A in the user name "
            "and password, or give the password through PGPASSWORD_FILE"
        )
    if _BAD_PERCENT.search(text):
        raise ConninfoError(f"{what}: the URL has a '%' that does not start a %XX escape: write a literal '%' as %25")
    hosts = authority.rsplit("@", 1)[-1]
    for host in hosts.split(","):
        if host.startswith("["):
            end = host.find("]")
            if end < 0:
                raise ConninfoError(f"{what}: an IPv6 address opens '[' without the closing ']'")
            after = host[end + 1 :]
            if after and not after.startswith(":"):
                raise ConninfoError(f"{what}: unexpected text after the IPv6 address's ']'")
            _check_port(after[1:], what)
        elif "]" in host:
            raise ConninfoError(f"{what}: a ']' without its opening '['")
        elif ":" in host:
            _check_port(host.split(":", 1)[1], what)


def parse_conninfo(text: str, what: str = "the database URL") -> dict[str, str]:
    """The parameters of a libpq URL or conninfo string; ConninfoError saying what is wrong, without the value."""
    from psycopg import ProgrammingError
    from psycopg.conninfo import conninfo_to_dict

    scheme = _SCHEME.match(text)
    if scheme:
        if not text.startswith(URL_SCHEMES):
            raise ConninfoError(
                f"{what}: the scheme {scheme.group(0)!r} is not postgresql:// or postgres://",
            )
        _check_url(text, what)
    try:
        params: dict[str, Any] = dict(conninfo_to_dict(text))
    except ProgrammingError:
        shape = "URL" if scheme else "conninfo string (key=value pairs)"
        raise ConninfoError(
            f"{what}: libpq cannot parse this {shape}: an unknown parameter name, a value with spaces that is "
            "not single-quoted, or a missing '='"
        ) from None  # libpq's own message quotes the text, which may hold the password
    if "port" in params and params["port"] is not None:
        _check_port(str(params["port"]), what)
    return {k: str(v) for k, v in params.items() if v is not None}


def secret_fragments(text: str) -> list[str]:
    """Every part of ``text`` that may be a credential, for the redactor: parameter values, and for a
    URL with unencoded characters, everything between ``://`` and the last ``@`` (and its pieces)."""
    found: list[str] = []
    if _SCHEME.match(text) and "@" in text:
        userinfo = text.split("://", 1)[1].rsplit("@", 1)[0]
        password = userinfo.split(":", 1)[1] if ":" in userinfo else ""
        found += [password, *password.split("@"), *password.split("/")]
    try:
        params = parse_conninfo(text)
    except ConninfoError:
        return [f for f in found if f]
    found += [value for key, value in params.items() if is_secret_param(key)]
    return [f for f in found if f]


def parse_conninfo_or_empty(text: str) -> dict[str, str]:
    """The parameters, or an empty dict when ``text`` does not parse (it is reported elsewhere)."""
    try:
        return parse_conninfo(text)
    except ConninfoError:
        return {}
