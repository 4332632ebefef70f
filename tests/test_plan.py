"""make_plan: files against history, pure."""

from __future__ import annotations

from datetime import UTC, datetime

from pgsluice.migrations import Migration, discover
from pgsluice.plan import State, make_plan
from pgsluice.records import HistoryRow, RowStatus

NOW = datetime(2026, 11, 24, 8, 0, tzinfo=UTC)


def files(*names: str) -> tuple[Migration, ...]:
    return discover([(n, f"CREATE TABLE t{i} (a int);".encode()) for i, n in enumerate(names)]).migrations


def row(
    m: Migration, status: RowStatus = RowStatus.APPLIED, checksum: str | None = None, sha: str | None = "same"
) -> HistoryRow:
    return HistoryRow(
        m.version,
        m.name,
        checksum or m.checksum,
        m.file_sha256 if sha == "same" else sha,
        status,
        "transaction",
        NOW,
        NOW,
        0.1,
        "app",
        "pod-1",
        "0.1.0",
    )


def test_pending_are_the_files_without_rows_in_order() -> None:
    """Nothing applied: everything pending, current version None."""
    migs = files("001_a.sql", "002_b.sql")
    plan = make_plan(migs, [])
    assert [m.version for m in plan.pending] == [1, 2]
    assert (plan.current_version, plan.target_version, plan.problems) == (None, 2, ())


def test_changed_file_is_a_problem_naming_it() -> None:
    """An applied file whose SQL changed stops the run."""
    a, b = files("001_a.sql", "002_b.sql")
    plan = make_plan([a, b], [row(a), row(b, checksum="t1:old", sha="other")])
    assert [e.state for e in plan.entries] == [State.APPLIED, State.CHANGED]
    assert plan.problems[0].message.startswith("002_b.sql was changed after it was applied")


def test_missing_file_and_started_row_are_problems() -> None:
    """An applied version without its file, and a half-applied one, both stop the run."""
    a, b, c = files("001_a.sql", "002_b.sql", "003_c.sql")
    plan = make_plan([a, c], [row(a), row(b), row(c, status=RowStatus.STARTED)])
    assert [(e.version, e.state) for e in plan.entries] == [(1, State.APPLIED), (2, State.MISSING), (3, State.STARTED)]
    assert "restore 002_b.sql" in plan.problems[0].hint
    assert "pgsluice resolve 3 --applied" in plan.problems[1].hint


def test_out_of_order_needs_the_flag() -> None:
    """A pending version below the highest applied is a problem unless allowed."""
    a, b, c = files("001_a.sql", "002_b.sql", "003_c.sql")
    plan = make_plan([a, b, c], [row(a), row(c)])
    assert plan.problems[0].message == "002_b.sql is pending but version 3 is already applied (out of order)"
    allowed = make_plan([a, b, c], [row(a), row(c)], allow_out_of_order=True)
    assert (allowed.problems, [m.version for m in allowed.pending]) == ((), [2])
    assert allowed.entries[1].out_of_order


def test_byte_identical_file_is_not_parsed() -> None:
    """The raw hash short-cuts the token checksum on a no-op run."""
    (a,) = files("001_a.sql")
    plan = make_plan([a], [row(a, checksum="t1:whatever")])
    assert plan.problems == ()
    assert "analysis" not in a.__dict__


def test_cosmetic_change_is_not_a_change() -> None:
    """Comments and whitespace edited after applying: same token checksum, still applied."""
    (a,) = files("001_a.sql")
    (edited,) = discover([("001_a.sql", b"-- header\ncreate table T0 (\n  a INT\n);\n")]).migrations
    plan = make_plan([edited], [row(a, sha="different")])
    assert [e.state for e in plan.entries] == [State.APPLIED]
