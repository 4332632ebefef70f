"""Removing secrets from text before it is logged, raised or written anywhere."""

from __future__ import annotations

import re
from collections.abc import Iterable

MASK = "***"

_URL_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^:/@\s]*):(?P<pw>[^@\s]*)@")
_KV_PASSWORD = re.compile(
    r"(?P<key>(?<![?&])\b(?:password|sslpassword)\s*=\s*)(?P<val>'(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE
)
_QUERY_PASSWORD = re.compile(r"(?P<key>[?&](?:password|sslpassword)=)(?P<val>[^&\s]+)", re.IGNORECASE)


class Redactor:
    """Masks passwords in URLs and conninfo strings, and every known secret value."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        # Longest first, so a secret that contains another is masked whole.
        self._secrets = sorted({s for s in secrets if s and len(s) >= 3}, key=len, reverse=True)

    def add(self, secret: str | None) -> None:
        """Also mask ``secret`` from now on."""
        if secret and len(secret) >= 3 and secret not in self._secrets:
            self._secrets.append(secret)
            self._secrets.sort(key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        text = _URL_USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:{MASK}@", text)
        text = _QUERY_PASSWORD.sub(lambda m: f"{m['key']}{MASK}", text)
        return _KV_PASSWORD.sub(lambda m: f"{m['key']}{MASK}", text)
