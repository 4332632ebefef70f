"""Secrets are masked in URLs, conninfo strings and wherever a known value appears."""

from __future__ import annotations

from pgsluice.redact import Redactor


def test_urls_conninfo_and_known_values_are_masked() -> None:
    """Every shape a password takes in a message."""
    redact = Redactor(["plainvalue"])
    assert redact("postgresql://app:p%40ss@db:5432/x") == "postgresql://app:***@db:5432/x"
    assert redact("host=db password='a b\\'c' dbname=x") == "host=db password=*** dbname=x"
    assert redact("postgresql://db/x?password=abc&sslmode=require") == "postgresql://db/x?password=***&sslmode=require"
    assert redact("it was plainvalue") == "it was ***"
