"""Discovery of the migrations folder; no database, no files: names and bytes in, verdicts out."""

from __future__ import annotations

from pgsluice.migrations import discover


def test_versions_are_numbers_of_any_width_in_numeric_order() -> None:
    """9 comes before 10 and 0100; other files are ignored."""
    found = discover(
        [
            ("10_b.sql", b"SELECT 1;"),
            ("9_a.sql", b"SELECT 1;"),
            ("0100_c.sql", b"SELECT 1;"),
            ("README.md", b""),
            ("info.md", b""),
        ]
    )
    assert found.problems == ()
    assert [(m.version, m.name) for m in found.migrations] == [(9, "a"), (10, "b"), (100, "c")]


def test_malformed_names_are_errors_naming_the_file() -> None:
    """Upper case, dashes or no version: a clear error, before anything runs."""
    found = discover([("004-add.sql", b"SELECT 1"), ("Add_users.sql", b"SELECT 1"), ("005_Add.sql", b"SELECT 1")])
    assert sorted(str(p.filename) for p in found.problems) == ["004-add.sql", "005_Add.sql", "Add_users.sql"]
    assert all("NNN_name.sql" in p.hint for p in found.problems)


def test_duplicate_version_with_a_psql_era_rollback_file_gets_the_down_hint() -> None:
    """004_rollback.sql beside 004_add_new_column.sql: rename it 004_add_new_column.down.sql."""
    found = discover([("004_add_new_column.sql", b"SELECT 1"), ("004_rollback.sql", b"SELECT 1")])
    assert len(found.problems) == 1
    problem = found.problems[0]
    assert problem.message == "version 4 is used by 2 files: 004_add_new_column.sql, 004_rollback.sql"
    assert problem.hint == "if 004_rollback.sql undoes 004_add_new_column.sql, rename it 004_add_new_column.down.sql"


def test_down_files_are_recognised_and_never_migrations() -> None:
    """NNN_name.down.sql belongs to its migration; an orphan is a warning."""
    found = discover(
        [
            ("004_add.sql", b"SELECT 1"),
            ("004_add.down.sql", b"SELECT 2"),
            ("007_gone.down.sql", b"SELECT 3"),
        ]
    )
    assert [(m.version, m.down_filename) for m in found.migrations] == [(4, "004_add.down.sql")]
    assert [w.filename for w in found.warnings] == ["007_gone.down.sql"]


def test_non_utf8_and_empty_files_are_errors_with_line() -> None:
    """Latin-1 bytes name the line; a file of whitespace is an error, a file of comments a deliberate no-op."""
    found = discover([("001_a.sql", b"SELECT 1;\nSELECT '\xe9';\n"), ("002_b.sql", b"  \n")])
    messages = sorted(p.message for p in found.problems)
    assert messages == ["001_a.sql line 2: not valid UTF-8 (byte offset 18)", "002_b.sql: the file is empty"]
    comment_only = discover([("003_c.sql", b"-- index already exists\n")]).migrations[0]
    assert comment_only.sql_problems() == []
    assert comment_only.execution == "comments only"


def test_directive_and_non_transactional_statements() -> None:
    """CREATE INDEX CONCURRENTLY runs as psql runs it, with a warning that names the directive; with it, silence."""
    without = discover([("005_idx.sql", b"CREATE INDEX CONCURRENTLY i ON t (a);\n")]).migrations[0]
    assert without.sql_problems() == []
    assert without.no_transaction
    warnings = without.warnings()
    assert [w.message for w in warnings] == [
        (
            "005_idx.sql line 1: CREATE INDEX CONCURRENTLY cannot run inside a transaction: the file runs statement "
            "by statement, as psql runs it, not atomically"
        )
    ]
    assert "-- pgsluice: no-transaction" in warnings[0].hint
    with_directive = discover(
        [("005_idx.sql", b"-- pgsluice: no-transaction\nCREATE INDEX CONCURRENTLY i ON t (a);\n")]
    ).migrations[0]
    assert with_directive.no_transaction
    assert with_directive.sql_problems() == []
    assert with_directive.warnings() == []
    assert with_directive.checksum == without.checksum  # saying so does not change the file


def test_unknown_directive_is_an_error() -> None:
    """A typo in a directive must not silently run the file in a transaction."""
    found = discover([("001_a.sql", b"-- pgsluice: no-transactions\nSELECT 1;\n")])
    assert [p.message for p in found.problems] == ["001_a.sql line 1: unknown directive 'no-transactions'"]


def test_checksum_is_not_computed_until_needed() -> None:
    """Discovery alone does not parse SQL (a no-op run compares file hashes first)."""
    migration = discover([("001_a.sql", b"SELECT 1;")]).migrations[0]
    assert "analysis" not in migration.__dict__
    assert migration.checksum.startswith("t1:")
    assert "analysis" in migration.__dict__
