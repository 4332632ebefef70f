"""make_plan(files, history) → Plan: what to apply and what stops us. Pure: no I/O."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from pgsluice.migrations import Discovery, Migration, down_of
from pgsluice.problems import Problem
from pgsluice.records import HistoryRow, RepeatableRow, RowStatus
from pgsluice.sql import harm_to_table


class State(StrEnum):
    """A migration's state, as ``status`` shows it."""

    APPLIED = "applied"
    PENDING = "pending"
    CHANGED = "changed"
    MISSING = "missing"
    STARTED = "started"
    FUTURE = "future"
    """Applied, and newer than every file: a newer release's migration (a rollback, or a rolling update)."""
    CURRENT = "current"
    """A repeatable migration applied as it is now."""
    OUTDATED = "outdated"
    """A repeatable migration never applied, or changed since."""


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
class RepeatableEntry:
    """A repeatable migration: its file, its last application, its state (current or outdated)."""

    name: str
    state: State
    migration: Migration
    row: RepeatableRow | None


@dataclass(frozen=True)
class Plan:
    """Every version in order, the migrations to apply, and the problems that forbid applying."""

    entries: tuple[Entry, ...]
    pending: tuple[Migration, ...]
    problems: tuple[Problem, ...]
    warnings: tuple[Problem, ...]
    future: tuple[int, ...] = ()
    """Applied versions newer than every file (accepted unless --strict-future)."""
    deferred: tuple[Migration, ...] = ()
    """Pending migrations beyond --target: reported, not applied."""
    repeatables: tuple[RepeatableEntry, ...] = ()

    @property
    def outdated(self) -> tuple[Migration, ...]:
        """The repeatable migrations to apply, in name order."""
        return tuple(r.migration for r in self.repeatables if r.state == State.OUTDATED)

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
    strict_future: bool = False,
    target: int | None = None,
    repeatables: Sequence[Migration] = (),
    repeatable_rows: Sequence[RepeatableRow] = (),
) -> Plan:
    """Compare the files with the history; every disagreement is a Problem naming the versions.

    Applied versions newer than every file are the newer release's (a rollback brought this older
    folder back, or an old pod restarted during a rolling update): accepted and listed in
    ``future`` unless ``strict_future``. With ``target``, pending versions beyond it are ``deferred``."""
    files = {m.version: m for m in migrations}
    rows = {r.version: r for r in history}
    max_applied = max((r.version for r in history if r.status == RowStatus.APPLIED), default=None)
    highest_file = max(files, default=None)
    entries: list[Entry] = []
    pending: list[Migration] = []
    problems: list[Problem] = []
    warnings: list[Problem] = []
    future: list[int] = []

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
        if migration is None and highest_file is not None and version > highest_file:
            entries.append(Entry(version, row.name, State.FUTURE, None, row))
            future.append(version)
            if strict_future:
                problems.append(
                    Problem(
                        f"migration {version} ({row.name}) is applied but newer than every file "
                        "(--strict-future refuses it)",
                        "run the release that has it, or drop --strict-future to accept a newer release's "
                        "migrations (a rollback, a rolling update)",
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

    deferred = [m for m in pending if target is not None and m.version > target]
    pending = [m for m in pending if m not in deferred]
    last = {r.name: r for r in repeatable_rows}
    repeatable_entries = tuple(
        RepeatableEntry(
            m.name,
            State.CURRENT if m.name in last and _unchanged_repeatable(m, last[m.name]) else State.OUTDATED,
            m,
            last.get(m.name),
        )
        for m in repeatables
    )
    if check_sql:
        for migration in [*pending, *(r.migration for r in repeatable_entries if r.state == State.OUTDATED)]:
            found, said = _sql_checks(migration, history_table)
            problems.extend(found)
            warnings.extend(said)
    return Plan(
        tuple(entries),
        tuple(pending),
        tuple(problems),
        tuple(warnings),
        tuple(future),
        tuple(deferred),
        repeatable_entries,
    )


def _unchanged_repeatable(migration: Migration, row: RepeatableRow) -> bool:
    if row.file_sha256 and row.file_sha256 == migration.file_sha256:
        return True
    return row.checksum == migration.checksum


@dataclass(frozen=True)
class DownStep:
    """One migration to undo: its down SQL as a Migration, and where that SQL comes from."""

    version: int
    name: str
    migration: Migration
    source: str
    """``folder`` (its .down.sql) or ``history`` (stored when it was applied)."""


@dataclass(frozen=True)
class DownPlan:
    """The migrations ``down`` undoes, newest first, and what stops it before anything runs."""

    steps: tuple[DownStep, ...]
    problems: tuple[Problem, ...]
    warnings: tuple[Problem, ...]


def _chosen(history: Sequence[HistoryRow], highest_file: int | None, to: int | None, steps: int | None) -> list[int]:
    applied = sorted((r.version for r in history), reverse=True)
    if to is not None:
        return [v for v in applied if v > to]
    if steps is not None:
        return applied[:steps]
    return [v for v in applied if highest_file is not None and v > highest_file]  # --future


def make_down_plan(
    found: Discovery,
    history: Sequence[HistoryRow],
    *,
    to: int | None = None,
    steps: int | None = None,
    variables: tuple[tuple[str, str], ...] = (),
) -> DownPlan:
    """What ``down --to VERSION`` / ``--steps N`` / ``--future`` (neither of the first two) undoes.

    Each down SQL comes from the folder's ``NNN_name.down.sql`` or, when the folder lacks it (an older
    release rolling back a newer one's migrations), from what was stored in the history when the
    migration was applied; when both exist and differ, the folder wins and a warning says so. A
    migration without either stops the plan, naming every such version."""
    files = {m.version: m for m in found.migrations}
    rows = {r.version: r for r in history}
    problems: list[Problem] = []
    warnings: list[Problem] = []
    plan: list[DownStep] = []
    without: list[str] = []
    for version in _chosen(history, max(files, default=None), to, steps):
        row = rows[version]
        if row.status != RowStatus.APPLIED:
            problems.append(
                Problem(
                    f"migration {version} ({row.name}) is half-applied ('started'): down will not guess what to undo",
                    f"settle it first: 'pgsluice resolve {version} --applied' or '--rolled-back'",
                    version=version,
                )
            )
            continue
        migration = files.get(version)
        from_folder = found.down_file(migration) if migration is not None else None
        if migration is not None:
            problems.extend(found.down_problems(migration))
        stored = None
        if row.down_sql is not None:
            stored, bad = down_of(
                version,
                row.name,
                filename=f"{version}_{row.name}.down.sql (stored in the history)",
                content=row.down_sql.encode(),
                files=found.files,
                variables=variables,
            )
            problems.extend(bad)
        if from_folder is not None:
            if stored is not None and row.down_checksum and row.down_checksum != from_folder.checksum:
                warnings.append(
                    Problem(
                        f"{from_folder.filename} differs from the down SQL stored when {version} was applied",
                        "the folder's file is used; the stored one is what that release would have run",
                        filename=from_folder.filename,
                        version=version,
                    )
                )
            plan.append(DownStep(version, row.name, from_folder, "folder"))
        elif stored is not None:
            plan.append(DownStep(version, row.name, stored, "history"))
        else:
            without.append(f"{version} ({row.name})")
    if without:
        problems.append(
            Problem(
                f"no down SQL for {', '.join(without)}: neither a .down.sql file in the folder nor SQL stored in "
                "the history",
                "write NNN_name.down.sql for each (pgsluice stores it with the migration when it is applied), or "
                "roll forward with a new migration instead",
            )
        )
    for step in plan:
        problems.extend(step.migration.sql_problems())
    return DownPlan(tuple(plan), tuple(problems), tuple(warnings))
