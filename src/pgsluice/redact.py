"""Removing secrets from text before it is logged, raised or written anywhere."""

from __future__ import annotations

import re
from collections.abc import Iterable

MASK = "***"

# scheme://user:password@host — the password runs to the *last* '@' of the token, because an
# unencoded '@' in a password (u:Sup3r@cret@host) must not leave its tail behind.
_URL_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^:/@\s]*):(?P<pw>\S*)@")
# key=value in a conninfo string: password, sslpassword, oauth_client_secret, …
_KV_SECRET = re.compile(
    r"(?P<key>(?<![?&;])\b\w*(?:password|secret)\w*\s*=\s*)(?P<val>'(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE
)
# ?key=value in a URL: libpq's password parameters, S3 presigned signatures and credentials,
# Azure SAS signatures, tokens.
_QUERY_SECRET = re.compile(
    r"(?P<key>[?&;](?:[\w.-]*(?:password|secret|token|signature|credential)[\w.-]*|sig|key)=)(?P<val>[^&\s\"']+)",
    re.IGNORECASE,
)


class Redactor:
    """Masks passwords in URLs and conninfo strings, signatures in URLs, and every known secret value."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        # Longest first, so a secret that contains another is masked whole.
        self._secrets = sorted({s for s in secrets if s and len(s) >= 3}, key=len, reverse=True)

    def add(self, *secrets: str | None) -> None:
        """Also mask each of ``secrets`` from now on."""
        for secret in secrets:
            if secret and len(secret) >= 3 and secret not in self._secrets:
                self._secrets.append(secret)
        self._secrets.sort(key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        text = _URL_USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:{MASK}@", text)
        text = _QUERY_SECRET.sub(lambda m: f"{m['key']}{MASK}", text)
        return _KV_SECRET.sub(lambda m: f"{m['key']}{MASK}", text)
