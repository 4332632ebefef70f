"""make_plan(files, history) → Plan: what to apply and what stops us. Pure: no I/O."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from pgsluice.migrations import Migration
from pgsluice.problems import Problem
from pgsluice.records import HistoryRow, RowStatus
from pgsluice.sql import harm_to_table


class State(StrEnum):
    """A migration's state, as ``status`` shows it."""

    APPLIED = "applied"
    PENDING = "pending"
    CHANGED = "changed"
    MISSING = "missing"
    STARTED = "started"


@dataclass(frozen=True)
class Entry:
    """One version: its file, its history row, its state."""

    version: int
    name: str
    state: State
    migration: Migration | None
    row: HistoryRow | None
    out_of_order: bool = False


@dataclass(frozen=True)
class Plan:
    """Every version in order, the migrations to apply, and the problems that forbid applying."""

    entries: tuple[Entry, ...]
    pending: tuple[Migration, ...]
    problems: tuple[Problem, ...]
    warnings: tuple[Problem, ...]

    @property
    def current_version(self) -> int | None:
        """The highest applied version."""
        applied = [e.version for e in self.entries if e.row is not None and e.row.status == RowStatus.APPLIED]
        return max(applied) if applied else None

    @property
    def target_version(self) -> int | None:
        """The highest version once the pending migrations are applied."""
        versions = [m.version for m in self.pending]
        current = self.current_version
        if current is not None:
            versions.append(current)
        return max(versions) if versions else None


def _unchanged(migration: Migration, row: HistoryRow) -> bool:
    if row.file_sha256 and row.file_sha256 == migration.file_sha256:
        return True  # byte-identical: no need to parse the file
    return row.checksum == migration.checksum


def _sql_checks(migration: Migration, history_table: tuple[str, str] | None) -> tuple[list[Problem], list[Problem]]:
    problems = migration.sql_problems()
    warnings = migration.warnings()
    if history_table is not None:
        schema, name = history_table
        for command in migration.analysis.commands:
            harm = harm_to_table(command.tree, schema, name) if command.tree is not None else None
            if harm:
                line = command.piece.origin.line
                problems.append(
                    Problem(
                        f"{migration.filename} line {line}: {harm} pgsluice's history table {schema}.{name}",
                        "a migration must leave the history alone: pgsluice records each migration there in the "
                        "same transaction; use another table name for the application",
                        filename=migration.filename,
                        line=line,
                        version=migration.version,
                    )
                )
    return problems, warnings


def make_plan(
    migrations: Sequence[Migration],
    history: Sequence[HistoryRow],
    *,
    allow_out_of_order: bool = False,
    check_sql: bool = True,
    history_table: tuple[str, str] | None = None,
) -> Plan:
    """Compare the files with the history; every disagreement is a Problem naming the versions."""
    files = {m.version: m for m in migrations}
    rows = {r.version: r for r in history}
    max_applied = max((r.version for r in history if r.status == RowStatus.APPLIED), default=None)
    entries: list[Entry] = []
    pending: list[Migration] = []
    problems: list[Problem] = []
    warnings: list[Problem] = []

    for version in sorted(files.keys() | rows.keys()):
        migration, row = files.get(version), rows.get(version)
        if row is None:
            assert migration is not None  # noqa: S101 - one of the two exists
            late = max_applied is not None and version < max_applied
            entries.append(Entry(version, migration.name, State.PENDING, migration, None, late))
            pending.append(migration)
            if late and not allow_out_of_order:
                problems.append(
                    Problem(
                        f"{migration.filename} is pending but version {max_applied} is already applied (out of order)",
                        f"renumber it above {max_applied}, or pass --allow-out-of-order if it does not "
                        "depend on the later ones",
                        filename=migration.filename,
                        version=version,
                    )
                )
            continue
        if row.status == RowStatus.STARTED:
            entries.append(Entry(version, row.name, State.STARTED, migration, row))
            when = row.started_at.isoformat(timespec="seconds") if row.started_at else "an unknown time"
            problems.append(
                Problem(
                    f"migration {version} ({row.name}) started at {when} on {row.hostname or 'an unknown host'} "
                    "and never finished: it is half-applied",
                    f"check what it did, finish or undo it by hand, then run 'pgsluice resolve {version} --applied' "
                    f"or 'pgsluice resolve {version} --rolled-back'",
                    filename=migration.filename if migration else None,
                    version=version,
                )
            )
            continue
        if migration is None:
            entries.append(Entry(version, row.name, State.MISSING, None, row))
            problems.append(
                Problem(
                    f"migration {version} ({row.name}) is applied but its file is missing",
                    f"restore {version:03d}_{row.name}.sql from version control; applied migrations stay in "
                    "the folder for good",
                    version=version,
                )
            )
            continue
        if not _unchanged(migration, row):
            entries.append(Entry(version, row.name, State.CHANGED, migration, row))
            when = row.applied_at.isoformat(timespec="seconds") if row.applied_at else "?"
            problems.append(
                Problem(
                    f"{migration.filename} was changed after it was applied at {when} "
                    f"(checksum {row.checksum[:15]}… is now {migration.checksum[:15]}…)",
                    "restore the file as it was applied and put the change in a new migration",
                    filename=migration.filename,
                    version=version,
                )
            )
            continue
        if row.name != migration.name:
            warnings.append(
                Problem(
                    f"{migration.filename} was applied under the name {row.name!r}",
                    "the SQL is unchanged, so this is only a rename",
                    filename=migration.filename,
                    version=version,
                )
            )
        entries.append(Entry(version, migration.name, State.APPLIED, migration, row))

    if check_sql:
        for migration in pending:
            found, said = _sql_checks(migration, history_table)
            problems.extend(found)
            warnings.extend(said)
    return Plan(tuple(entries), tuple(pending), tuple(problems), tuple(warnings))
