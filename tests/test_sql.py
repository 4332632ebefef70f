"""Splitting and inspection with the real PostgreSQL parser; no database."""

from __future__ import annotations

from pgsluice.sql import analyze, line_col, token_checksum

TRICKY = """-- a licence header; with a semicolon
/* nested /* comment; */ still comment; */
CREATE FUNCTION f() RETURNS text LANGUAGE plpgsql AS $body$
BEGIN
  RETURN 'a;b';  -- not a statement end
END;
$body$;
SELECT E'it\\'s; fine', 'ä; ö';
COMMIT_NOT_A_KEYWORD_IN_STRING := 1;
"""


def test_split_ignores_semicolons_in_dollar_quotes_comments_and_e_strings() -> None:
    """Dollar quotes, nested comments and E'' strings do not end a statement."""
    analysis = analyze(TRICKY.replace("COMMIT_NOT_A_KEYWORD_IN_STRING := 1;\n", ""))
    assert [s.node for s in analysis.statements] == ["CreateFunctionStmt", "SelectStmt"]
    assert analysis.statements[1].text == "SELECT E'it\\'s; fine', 'ä; ö'"
    assert analysis.parse_error is None


def test_statement_offsets_index_the_text_with_non_ascii_before_them() -> None:
    """Offsets are character offsets, also after multi-byte characters."""
    text = "SELECT 'ääää';\nCREATE TABLE t (a int);\n"
    analysis = analyze(text)
    second = analysis.statements[1]
    assert text[second.start : second.start + len(second.text)] == "CREATE TABLE t (a int)"
    assert line_col(text, second.start) == (2, 1)


def test_whole_file_begin_commit_wrapper_is_recognised_and_removed() -> None:
    """The psql style BEGIN; … COMMIT; wraps one migration; the wrapper is not a statement."""
    analysis = analyze("-- x\nBEGIN;\nALTER TABLE users ADD COLUMN v boolean;\nUPDATE users SET v = true;\nCOMMIT;\n")
    assert analysis.wrapped
    assert [s.node for s in analysis.statements] == ["AlterTableStmt", "UpdateStmt"]
    assert analysis.forbidden_transaction_control == ()


def test_transaction_control_inside_a_file_is_reported_with_its_offset() -> None:
    """COMMIT in the middle, ROLLBACK at the end or PREPARE TRANSACTION are forbidden."""
    text = "CREATE TABLE a (x int);\nCOMMIT;\nCREATE TABLE b (x int);\n"
    analysis = analyze(text)
    assert not analysis.wrapped
    assert len(analysis.forbidden_transaction_control) == 1
    assert line_col(text, analysis.forbidden_transaction_control[0].offset) == (2, 1)
    assert analyze("BEGIN;\nSELECT 1;\nROLLBACK;\n").forbidden_transaction_control != ()


def test_savepoints_are_allowed() -> None:
    """SAVEPOINT / RELEASE / ROLLBACK TO work inside the migration's transaction."""
    analysis = analyze("SAVEPOINT s;\nSELECT 1;\nROLLBACK TO SAVEPOINT s;\nRELEASE s;\n")
    assert analysis.forbidden_transaction_control == ()


def test_non_transactional_statements_are_detected() -> None:
    """Each statement PostgreSQL refuses inside a transaction block is named."""
    cases = {
        "CREATE INDEX CONCURRENTLY i ON t (a)": "CREATE INDEX CONCURRENTLY",
        "DROP INDEX CONCURRENTLY i": "DROP INDEX CONCURRENTLY",
        "REINDEX INDEX CONCURRENTLY i": "REINDEX CONCURRENTLY",
        "VACUUM t": "VACUUM",
        "ALTER SYSTEM SET work_mem = '8MB'": "ALTER SYSTEM",
        "CREATE DATABASE x": "CREATE DATABASE",
        "ALTER TABLE p DETACH PARTITION c CONCURRENTLY": "DETACH PARTITION CONCURRENTLY",
    }
    for text, expected in cases.items():
        assert [i.message for i in analyze(text).non_transactional] == [expected], text
    assert analyze("ANALYZE t; CREATE INDEX i ON t (a)").non_transactional == ()


def test_unparsable_file_is_kept_whole_with_the_error_location() -> None:
    """Newer syntax: one statement, the whole text, and where the parser stopped."""
    text = "SELECT 1;\nSELEC 2;\n"
    analysis = analyze(text)
    assert analysis.parse_error is not None
    assert line_col(text, analysis.parse_error.offset) == (2, 1)
    assert [s.text for s in analysis.statements] == [text]


def test_psql_meta_commands_and_copy_from_stdin_are_unsupported() -> None:
    """Backslash commands and COPY FROM STDIN need psql itself."""
    assert analyze("\\set ON_ERROR_STOP on\nSELECT 1;\n").unsupported[0].message.startswith("psql meta-command \\set")
    assert "FROM STDIN" in analyze("COPY t FROM STDIN;\n").unsupported[0].message


def test_checksum_ignores_comments_whitespace_keyword_case_and_the_wrapper() -> None:
    """A licence header, a formatter or a BEGIN/COMMIT wrapper do not change the checksum."""
    base = token_checksum("CREATE TABLE users (id int);")
    assert analyze("-- Licence: MIT\n\ncreate   table USERS (\n  id INT\n) ;\n").checksum == base
    assert analyze("BEGIN;\nCREATE TABLE users (id int);\nCOMMIT;\n").checksum == base
    assert analyze("/* header */ CREATE TABLE users (id int)").checksum == base


def test_checksum_changes_with_any_real_change() -> None:
    """Identifiers in quotes, literals, and statements are part of the checksum."""
    base = token_checksum("CREATE TABLE users (id int);")
    assert token_checksum("CREATE TABLE users (id bigint);") != base
    assert token_checksum('CREATE TABLE "Users" (id int);') != base
    assert token_checksum("SELECT 'a'") != token_checksum("SELECT 'A'")
    assert analyze("CREATE TABLE users (id int);", no_transaction=True).checksum != base


def test_session_neutral_files_skip_the_session_reset() -> None:
    """Plain DDL/DML leaves no session state; SET, temp objects, DO, SELECT or PREPARE might."""
    assert analyze("CREATE TABLE a (x int); INSERT INTO a VALUES (1); CREATE INDEX i ON a (x);").session_neutral
    for text in (
        "SET search_path = app; CREATE TABLE a (x int);",
        "CREATE TEMP TABLE scratch (x int);",
        "CREATE TEMP VIEW v AS SELECT 1;",
        "DO $$ BEGIN PERFORM set_config('role', 'x', false); END $$;",
        "SELECT pg_advisory_lock(1);",
        "PREPARE q AS SELECT 1;",
    ):
        assert not analyze(text).session_neutral, text
