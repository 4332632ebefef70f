"""Splitting as psql splits, and inspection with the real PostgreSQL parser; no database."""

from __future__ import annotations

from pgsluice.sql import Command, Echo, analyze, analyze_text, line_col, token_checksum

TRICKY = """-- a licence header; with a semicolon
/* nested /* comment; */ still comment; */
CREATE FUNCTION f() RETURNS text LANGUAGE plpgsql AS $body$
BEGIN
  RETURN 'a;b';  -- not a statement end
END;
$body$;
SELECT E'it\\'s; fine', 'ä; ö';
"""


def test_split_ignores_semicolons_in_dollar_quotes_comments_and_e_strings() -> None:
    """Dollar quotes, nested comments and E'' strings do not end a statement."""
    analysis = analyze_text(TRICKY)
    assert [c.node for c in analysis.commands] == ["CreateFunctionStmt", "SelectStmt"]
    assert analysis.commands[1].sql == "SELECT E'it\\'s; fine', 'ä; ö'"
    assert analysis.parse_errors == ()


def test_sql_standard_function_body_keeps_its_semicolons() -> None:
    """psqlscan.l's rule: inside CREATE FUNCTION … BEGIN ATOMIC … END, semicolons do not split."""
    text = (
        "CREATE FUNCTION g() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; SELECT CASE WHEN true THEN 2 END; END;\n"
    )
    analysis = analyze_text(text + "SELECT 3;\n")
    assert [c.node for c in analysis.commands] == ["CreateFunctionStmt", "SelectStmt"]


def test_statement_lines_are_found_after_non_ascii_text() -> None:
    """Lines and columns count characters, also after multi-byte characters."""
    text = "SELECT 'ääää';\nCREATE TABLE t (a int);\n"
    second = analyze_text(text).commands[1]
    assert second.sql == "CREATE TABLE t (a int)"
    assert second.piece.origin.line == 2
    assert line_col(text, text.index("CREATE")) == (2, 1)


def test_whole_file_begin_commit_wrapper_runs_as_the_migration_transaction() -> None:
    """The psql style BEGIN; … COMMIT; wraps one migration; the wrapper is not a statement."""
    analysis = analyze_text(
        "-- x\nBEGIN;\nALTER TABLE users ADD COLUMN v boolean;\nUPDATE users SET v = true;\nCOMMIT;\n"
    )
    assert [c.node for c in analysis.commands] == ["AlterTableStmt", "UpdateStmt"]
    assert analysis.merged_blocks == ((2, 5),)
    assert analysis.errors == ()


def test_blocks_with_statements_between_them_merge_into_one_transaction() -> None:
    """Statements, BEGIN … COMMIT, more statements, another block: one transaction, every block listed."""
    text = "CREATE TABLE a (x int);\nBEGIN;\nINSERT INTO a VALUES (1);\nCOMMIT;\nCREATE TABLE b (x int);\n"
    text += "START TRANSACTION;\nINSERT INTO b VALUES (2);\nEND;\n"
    analysis = analyze_text(text)
    assert analysis.errors == ()
    assert [c.node for c in analysis.commands] == ["CreateStmt", "InsertStmt", "CreateStmt", "InsertStmt"]
    assert analysis.merged_blocks == ((2, 4), (6, 8))
    as_psql = analyze_text(text, no_transaction=True)
    assert [(len(b.steps), b.explicit) for b in as_psql.blocks] == [(1, False), (1, True), (1, False), (1, True)]


def test_unbalanced_or_dangerous_transaction_control_is_an_error_with_its_line() -> None:
    """COMMIT without BEGIN, ROLLBACK, PREPARE TRANSACTION, COMMIT AND CHAIN, an unclosed BEGIN."""
    cases = {
        "CREATE TABLE a (x int);\nCOMMIT;\n": (2, "COMMIT without a BEGIN"),
        "BEGIN;\nSELECT 1;\nROLLBACK;\n": (3, "ROLLBACK would silently drop"),
        "BEGIN;\nSELECT 1;\nPREPARE TRANSACTION 'x';\n": (3, "PREPARE TRANSACTION"),
        "BEGIN;\nSELECT 1;\nCOMMIT AND CHAIN;\nCOMMIT;\n": (3, "COMMIT AND CHAIN"),
        "SELECT 1;\nBEGIN;\nSELECT 2;\n": (2, "BEGIN is never committed"),
        "BEGIN;\nBEGIN;\nCOMMIT;\n": (2, "BEGIN inside a block"),
    }
    for text, (line, words) in cases.items():
        errors = analyze_text(text).errors
        assert [(e.origin.line, words in e.message) for e in errors] == [(line, True)], text


def test_transaction_control_is_found_where_the_parser_fails() -> None:
    """PostgreSQL 17's grammar reserves system_user; the lexer still finds the COMMIT in that file."""
    analysis = analyze_text("CREATE TABLE half_before (system_user int);\nCOMMIT;\nCREATE TABLE half_after (x int);\n")
    assert [e.origin.line for e in analysis.parse_errors] == [1]
    assert ["COMMIT without a BEGIN" in e.message for e in analysis.errors] == [True]


def test_savepoints_are_allowed() -> None:
    """SAVEPOINT / RELEASE / ROLLBACK TO work inside the migration's transaction."""
    analysis = analyze_text("SAVEPOINT s;\nSELECT 1;\nROLLBACK TO SAVEPOINT s;\nRELEASE s;\n")
    assert analysis.errors == ()
    assert len(analysis.commands) == 4


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
        assert [i.message for i in analyze_text(text).non_transactional] == [expected], text
    assert analyze_text("ANALYZE t; CREATE INDEX i ON t (a)").non_transactional == ()


def test_unparsable_statement_is_kept_alone_with_the_error_location() -> None:
    """Newer syntax: the statement is sent as written, alone, and the parse error names its line."""
    text = "SELECT 1;\nSELEC 2;\nSELECT 3;\n"
    analysis = analyze_text(text)
    assert [e.origin.line for e in analysis.parse_errors] == [2]
    assert [(c.sql, c.node) for c in analysis.commands] == [
        ("SELECT 1", "SelectStmt"),
        ("SELEC 2", "unparsed"),
        ("SELECT 3", "SelectStmt"),
    ]


def test_meta_commands_are_ignored_echoed_or_refused() -> None:
    """\\restrict is ignored, \\echo logged, \\set ON_ERROR_STOP ignored, \\gexec and \\connect refused."""
    text = (
        "\\restrict abc\n\\set ON_ERROR_STOP on\n\\echo hello there\nSELECT 1;\n\\gexec\n\\c other\n\\unrestrict abc\n"
    )
    analysis = analyze_text(text)
    assert [type(s).__name__ for s in analysis.steps] == ["Echo", "Command"]
    assert isinstance(analysis.steps[0], Echo)
    assert analysis.steps[0].message == "hello there"
    assert [e.origin.line for e in analysis.errors] == [5, 6]
    assert [i.message for i in analysis.ignored] == [
        "\\restrict is ignored",
        "\\set ON_ERROR_STOP is ignored",
        "\\unrestrict is ignored",
    ]


def test_copy_from_stdin_carries_its_inline_data() -> None:
    """The rows after COPY … FROM stdin; up to \\. are data, never SQL; the data counts in the checksum."""
    text = "COPY t (a, b) FROM stdin;\n1\tx;y\n2\t\\N\n\\.\nSELECT 1;\n"
    analysis = analyze_text(text)
    copy, select = analysis.commands
    assert copy.copy_data is not None
    assert text.encode()[copy.copy_data.start : copy.copy_data.end] == b"1\tx;y\n2\t\\N\n"
    assert select.sql == "SELECT 1"
    assert analysis.checksum != analyze_text(text.replace("x;y", "x;z")).checksum
    to_stdout = analyze_text("COPY t TO STDOUT;\n")
    assert ["writes output nobody reads" in e.message for e in to_stdout.errors] == [True]


def test_variables_are_substituted_outside_quotes_and_an_undefined_one_is_an_error() -> None:
    """:name as text, :'name' as a literal, :"name" as an identifier; not in quotes, dollar quotes or slices."""
    text = "\\set owner 'app'\nSELECT :'owner', :\"tbl\", :n, ':n', $$ :n $$, a[1:m] FROM x;\nSELECT :missing;\n"
    analysis = analyze_text(text, variables={"tbl": 'my "t"', "n": "5"})
    first = analysis.commands[0]
    assert first.sql == 'SELECT \'app\', "my ""t""", 5, \':n\', $$ :n $$, a[1:m] FROM x'  # m: a slice, as psql
    assert [(e.origin.line, e.message.split(" (")[0]) for e in analysis.errors] == [
        (3, "variable :missing is not defined")
    ]
    assert analysis.checksum == analyze_text(text, variables={"tbl": "other", "n": "6"}).checksum


def test_includes_are_inlined_relative_to_the_folder_or_the_including_file() -> None:
    """\\i names a file from the folder, \\ir from the including file; escapes and cycles are errors."""
    sources = {
        "001_a.sql": b"\\i lib/one.sql\nSELECT 'main';\n\\i ../outside.sql\n",
        "lib/one.sql": b"SELECT 'one';\n\\ir two.sql\n",
        "lib/two.sql": b"SELECT 'two';\n\\ir two.sql\n",
    }
    analysis = analyze("001_a.sql", sources)
    assert [c.sql for c in analysis.commands] == ["SELECT 'one'", "SELECT 'two'", "SELECT 'main'"]
    assert [("outside" in e.message, "cycle" in e.message) for e in analysis.errors] == [(False, True), (True, False)]
    assert analysis.sources == ("001_a.sql", "lib/one.sql", "lib/two.sql")
    edited = {**sources, "lib/two.sql": b"SELECT 'TWO';\n\\ir two.sql\n"}
    assert analyze("001_a.sql", edited).checksum != analysis.checksum


def test_comment_only_file_is_a_no_op() -> None:
    """A file of comments only has nothing to run and is no error."""
    analysis = analyze_text("-- index already exists on this database\n/* kept for the numbering */\n")
    assert (analysis.commands, analysis.errors, analysis.comment_only) == ((), (), True)


def test_checksum_ignores_comments_whitespace_keyword_case_and_the_wrapper() -> None:
    """A licence header, a formatter or a BEGIN/COMMIT wrapper do not change the checksum."""
    base = token_checksum("CREATE TABLE users (id int);")
    assert analyze_text("-- Licence: MIT\n\ncreate   table USERS (\n  id INT\n) ;\n").checksum == base
    assert analyze_text("BEGIN;\nCREATE TABLE users (id int);\nCOMMIT;\n").checksum == base
    assert analyze_text("/* header */ CREATE TABLE users (id int)").checksum == base
    assert analyze_text("\\restrict k1\nCREATE TABLE users (id int);\n\\unrestrict k1\n").checksum == base


def test_checksum_changes_with_any_real_change() -> None:
    """Identifiers in quotes, literals, and statements are part of the checksum."""
    base = token_checksum("CREATE TABLE users (id int);")
    assert token_checksum("CREATE TABLE users (id bigint);") != base
    assert token_checksum('CREATE TABLE "Users" (id int);') != base
    assert token_checksum("SELECT 'a'") != token_checksum("SELECT 'A'")
    assert analyze_text("CREATE TABLE users (id int);", no_transaction=True).checksum != base


def test_session_neutral_files_skip_the_session_reset() -> None:
    """Plain DDL/DML leaves no session state; SET, temp objects, DO, SELECT or PREPARE might."""
    assert analyze_text("CREATE TABLE a (x int); INSERT INTO a VALUES (1); CREATE INDEX i ON a (x);").session_neutral
    for text in (
        "SET search_path = app; CREATE TABLE a (x int);",
        "CREATE TEMP TABLE scratch (x int);",
        "CREATE TEMP VIEW v AS SELECT 1;",
        "DO $$ BEGIN PERFORM set_config('role', 'x', false); END $$;",
        "SELECT pg_advisory_lock(1);",
        "PREPARE q AS SELECT 1;",
    ):
        assert not analyze_text(text).session_neutral, text


def test_statements_joined_by_backslash_semicolon_are_sent_one_by_one() -> None:
    """psql's \\; keeps two statements in one query; pgsluice sends each on its own, in order."""
    commands = analyze_text("SELECT 1 \\; SELECT 2;\n").commands
    assert [c.sql.strip() for c in commands] == ["SELECT 1", "SELECT 2"]
    assert all(isinstance(c, Command) for c in commands)
