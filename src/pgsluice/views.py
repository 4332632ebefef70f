"""What ``status``, ``plan`` and ``lint`` print on stdout: a table, or JSON with ``--json``."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from datetime import UTC
from typing import TYPE_CHECKING, Any

from pgsluice.migrations import Discovery, Migration
from pgsluice.plan import Entry, Plan, RepeatableEntry, State
from pgsluice.problems import Problem
from pgsluice.records import Execution

if TYPE_CHECKING:
    from pgsluice.catalog import BackupInfo  # the catalog imports obstore: not for status and plan
    from pgsluice.safety import Finding, SafetyReport  # pglast: only when something is judged


def _entry_dict(entry: Entry) -> dict[str, Any]:
    row = entry.row
    return {
        "version": entry.version,
        "name": entry.name,
        "file": entry.migration.filename if entry.migration else None,
        "state": entry.state.value,
        "out_of_order": entry.out_of_order,
        "execution": row.execution if row else None,
        "started_at": row.started_at.isoformat() if row and row.started_at else None,
        "applied_at": row.applied_at.isoformat() if row and row.applied_at else None,
        "applied_by": row.applied_by if row else None,
        "hostname": row.hostname if row else None,
        "duration_seconds": row.duration_seconds if row else None,
        "no_transaction": entry.migration.no_transaction if entry.migration else None,
        "down": rollback_source(entry),
    }


def rollback_source(entry: Entry) -> str | None:
    """Where ``down`` would take this migration's down SQL from: folder, history, both, or None (it cannot)."""
    if entry.state not in (State.APPLIED, State.FUTURE):
        return None
    in_folder = entry.migration is not None and entry.migration.down_filename is not None
    in_history = entry.row is not None and entry.row.down_sql is not None
    if in_folder and in_history:
        return "folder+history"
    if in_folder:
        return "folder"
    return "history" if in_history else None


def _repeatable_dict(entry: RepeatableEntry) -> dict[str, Any]:
    row = entry.row
    return {
        "name": entry.name,
        "file": entry.migration.filename,
        "state": entry.state.value,
        "applied_at": row.applied_at.isoformat() if row and row.applied_at else None,
        "applied_by": row.applied_by if row else None,
    }


def _problem_dict(problem: Problem) -> dict[str, Any]:
    return {
        "message": problem.message,
        "hint": problem.hint,
        "file": problem.filename,
        "line": problem.line,
        "version": problem.version,
    }


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB"):
        if value < 1024:
            return f"{value:.0f} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows)


def _version(version: int | None) -> str:
    """A version for people: ``none`` before the first migration, never Python's None."""
    return "none" if version is None else str(version)


def print_line(text: str) -> None:
    """One line of output (``new`` prints the file it created)."""
    sys.stdout.write(text + "\n")


def _lease_line(lease: dict[str, Any]) -> str:
    if not lease:
        return ""
    state = "expired" if lease.get("expired") else f"held by {lease.get('holder')} (process {lease.get('holder_pid')})"
    return f"lease: {state} since {lease.get('holder_since')}, until {lease.get('expires_at')}\n"


def print_status(plan: Plan, *, as_json: bool, lease: dict[str, Any] | None = None) -> None:
    """Every migration with its state (and the lease lock, when there is one)."""
    if as_json:
        doc = {
            "lease": lease or None,
            "current_version": plan.current_version,
            "pending": [m.version for m in plan.pending],
            "future": list(plan.future),
            "migrations": [_entry_dict(e) for e in plan.entries],
            "repeatables": [_repeatable_dict(r) for r in plan.repeatables],
            "problems": [_problem_dict(p) for p in plan.problems],
        }
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
        return
    rows = [["VERSION", "NAME", "STATE", "APPLIED AT (UTC)", "BY", "DURATION", "DOWN"]]
    for entry in plan.entries:
        row = entry.row
        state = entry.state.value + (" (out of order)" if entry.out_of_order else "")
        if row is not None and row.execution == Execution.COMMENTS_ONLY:
            state += " (comments only)"
        when = row.applied_at or row.started_at if row else None
        rows.append(
            [
                str(entry.version),
                entry.name,
                state,
                when.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S") if when else "",
                f"{row.applied_by}@{row.hostname}" if row else "",
                f"{row.duration_seconds:.3f}s" if row and row.duration_seconds is not None else "",
                rollback_source(entry) or "",
            ]
        )
    for repeatable in plan.repeatables:
        last = repeatable.row
        rows.append(
            [
                "R",
                repeatable.name,
                repeatable.state.value,
                last.applied_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S") if last and last.applied_at else "",
                f"{last.applied_by}@{last.hostname}" if last else "",
                f"{last.duration_seconds:.3f}s" if last and last.duration_seconds is not None else "",
                "",
            ]
        )
    out = _table(rows) if len(rows) > 1 else "no migrations"
    pending = len(plan.pending)
    out += (
        f"\n\ncurrent version: {_version(plan.current_version)}; pending: {pending}; problems: {len(plan.problems)}\n"
    )
    for problem in plan.problems:
        out += f"  ! {problem}\n"
    out += _lease_line(lease or {})
    sys.stdout.write(out)


def _pending_dict(m: Migration, findings: Sequence[Finding] = ()) -> dict[str, Any]:
    return {
        "version": None if m.repeatable else m.version,
        "file": m.filename,
        "no_transaction": m.no_transaction,
        "statements": len(m.analysis.commands),
        "execution": str(m.execution),
        "findings": [f.log_fields() for f in findings],
    }


def _by_file(safety: SafetyReport | None) -> dict[str, list[Finding]]:
    found: dict[str, list[Finding]] = {}
    for finding in safety.findings if safety is not None else ():
        found.setdefault(finding.file, []).append(finding)
    return found


def finding_line(finding: Finding, *, offline: bool = False) -> str:
    """``warn large index-not-concurrent: <message>; <safe form, or how to accept it>`` on one line; offline
    (``lint``), a finding the live database decides says so."""
    line = f"{finding.action} {finding.severity} {finding.rule}: {finding.message}; {finding.hint}"
    if offline and finding.needs_live_facts:
        line += " (the live database decides: migrate and plan judge it by the table's size and catalog)"
    return line


def _apply_line(m: Migration) -> str:
    if m.analysis.comment_only:
        return f"  apply {m.filename} (comments only: recorded as applied, nothing runs)"
    mode = "no-transaction, as psql runs it" if m.no_transaction else "one transaction"
    return f"  apply {m.filename} ({len(m.analysis.commands)} statement(s), {mode})"


def print_plan(plan: Plan, *, as_json: bool, safety: SafetyReport | None = None) -> None:
    """The migrations migrate would apply, in order: versioned ones, then outdated repeatable ones, each with
    the safety gate's findings about it."""
    findings = _by_file(safety)
    if as_json:
        doc = {
            "current_version": plan.current_version,
            "target_version": plan.target_version,
            "server_version": safety.server_version if safety is not None else None,
            "pending": [_pending_dict(m, findings.get(m.filename, ())) for m in plan.pending],
            "repeatables": [_pending_dict(m, findings.get(m.filename, ())) for m in plan.outdated],
            "deferred": [m.version for m in plan.deferred],
            "future": list(plan.future),
            "problems": [_problem_dict(p) for p in plan.problems],
            "warnings": [_problem_dict(p) for p in plan.warnings],
        }
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
        return
    lines = [f"current version: {_version(plan.current_version)}; target version: {_version(plan.target_version)}"]
    if not plan.pending and not plan.outdated:
        lines.append("nothing to apply")
    for m in (*plan.pending, *plan.outdated):
        lines.append(_apply_line(m))
        lines += [f"    {finding_line(f)}" for f in findings.get(m.filename, ())]
    lines += [f"  later (beyond --target): {m.filename}" for m in plan.deferred]
    if plan.future:
        lines.append(f"  newer than every file (a newer release's, accepted): {list(plan.future)}")
    lines += [f"  ! {problem}" for problem in plan.problems]
    lines += [f"  ~ {warning}" for warning in plan.warnings]
    sys.stdout.write("\n".join(lines) + "\n")


def print_lint(
    found: Discovery,
    problems: list[Problem],
    warnings: list[Problem],
    notes: list[Problem],
    *,
    safety: SafetyReport | None = None,
) -> None:
    """``error: <file> line <n>: message: hint`` per problem, the safety gate's findings (assuming
    ``--pg-version``, no table sizes), then a summary line."""
    for kind, items in (("error", problems), ("warning", warnings), ("note", notes)):
        for problem in items:
            sys.stdout.write(f"{kind}: {problem}\n")
    shown = [f for f in safety.findings if f.action != "ignored"] if safety is not None else []
    for finding in shown:
        sys.stdout.write(f"safety: {finding_line(finding, offline=True)}\n")
    summary = f"{len(found.migrations)} migration(s), {len(problems)} error(s), {len(warnings)} warning(s)"
    if safety is not None:
        blocking = len(safety.blocking)
        summary += f", {len(shown)} safety finding(s) ({blocking} blocking) assuming PostgreSQL {safety.server_version}"
    sys.stdout.write(summary + "\n")


def print_backups(backups: list[BackupInfo], *, as_json: bool) -> None:
    """The complete backups, newest first."""
    if as_json:
        sys.stdout.write(json.dumps([b.as_json() for b in backups], indent=2) + "\n")
        return
    rows = [["ID", "FINISHED (UTC)", "SIZE", "VERSIONS"]]
    for b in backups:
        versions = f"{b.from_version or 0} -> {b.to_version or 0}"  # as in the id: 0 is "no migration yet"
        rows.append([b.id, b.finished_at[:19].replace("T", " "), _size(b.size), versions])
    sys.stdout.write((_table(rows) if backups else "no complete backups") + "\n")


def target_status(target: str, plan: Plan) -> dict[str, Any]:
    """One fleet target's line of ``status --targets``."""
    return {
        "target": target,
        "current_version": plan.current_version,
        "pending": [m.version for m in plan.pending],
        "problems": [_problem_dict(p) for p in plan.problems],
    }


def print_fleet_status(rows: list[dict[str, Any]], *, as_json: bool) -> None:
    """``status --targets``: one line per target."""
    if as_json:
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
        return
    table = [["TARGET", "CURRENT", "PENDING", "PROBLEMS"]]
    for row in rows:
        if "error" in row:
            table.append([row["target"], "", "", f"error: {row['error']}"])
            continue
        problems = row["problems"]
        table.append(
            [
                row["target"],
                _version(row["current_version"]),
                str(len(row["pending"])),
                problems[0]["message"] if problems else "",
            ]
        )
    sys.stdout.write(_table(table) + "\n")
