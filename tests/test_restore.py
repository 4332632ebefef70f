"""drop_unknown_settings(): what a newer pg_restore's script loses on its way to an older server."""

from __future__ import annotations

from pgsluice.restore import drop_unknown_settings

SCRIPT = b"""--
-- PostgreSQL database dump
--
\\restrict abc
SET statement_timeout = 0;
SET transaction_timeout = 0;
SET client_encoding = 'UTF8';
SELECT pg_catalog.set_config('search_path', '', false);
CREATE TABLE public.t (a text);
COPY public.t (a) FROM stdin;
SET transaction_timeout = 0;
SET made_up = 1;
\\.
SET transaction_timeout = 0;
ALTER TABLE public.t OWNER TO app;
"""


def test_only_unknown_settings_outside_copy_data_are_dropped() -> None:
    """A 17 script on a 15 server: transaction_timeout goes; rows that look like SET stay; so does the rest."""
    known = {"statement_timeout", "client_encoding", "search_path"}
    dropped: set[str] = set()
    lines = SCRIPT.splitlines(keepends=True)
    out = b"".join(drop_unknown_settings(lines, known, dropped))
    assert dropped == {"transaction_timeout"}
    expected = [line for i, line in enumerate(lines) if i not in (5, 13)]  # the two SETs outside COPY data
    assert out == b"".join(expected)
    assert b"SET made_up = 1;\n" in out and out.count(b"SET transaction_timeout") == 1  # the COPY row


def test_a_server_that_knows_every_setting_gets_the_script_unchanged() -> None:
    lines = SCRIPT.splitlines(keepends=True)
    known = {"statement_timeout", "transaction_timeout", "client_encoding"}
    dropped: set[str] = set()
    assert b"".join(drop_unknown_settings(lines, known, dropped)) == SCRIPT
    assert dropped == set()
