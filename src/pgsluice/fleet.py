"""Fleets: one migration set over many databases or schemas, spread by a Kubernetes Indexed Job.

pgsluice supplies the per-target work and the reporting; Kubernetes supplies the spreading
(each pod's ``JOB_COMPLETION_INDEX``, retries per index, ``FailIndex`` on permanent codes,
``maxFailedIndexes``). No scheduler here: a pod takes the targets whose position modulo the
shard count is its index, and runs each exactly as a single ``pgsluice migrate`` runs one
database — wait, lock, plan, backup, apply, report — up to ``--parallel`` at once.

A target is ``database`` or ``database:schema``. Credentials never appear in the list: each
target is the configured connection with its database replaced. A schema target runs its
migrations with ``search_path`` set to the schema, keeps its own history table there, and
its lock key includes the schema, so tenants progress independently.
"""

from __future__ import annotations

import dataclasses
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from pgsluice.config import Config, TableName
from pgsluice.errors import (
    PERMANENT,
    TRANSIENT,
    CanaryFailedError,
    ConfigError,
    ExitCode,
    Interrupted,
    PgsluiceError,
)
from pgsluice.events import Event
from pgsluice.report import Report

log = structlog.get_logger("pgsluice.fleet")

_DATABASE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.$-]{0,62}$")
_SCHEMA = re.compile(r"^[a-z_][a-z0-9_$]{0,62}$")
_CREDENTIAL_HINTS = ("@", "://", "=", "password")
CANARY_POLL_SECONDS = 2.0


@dataclass(frozen=True)
class Target:
    """One database, or one schema of a database."""

    database: str
    schema: str | None = None

    def __str__(self) -> str:
        return f"{self.database}:{self.schema}" if self.schema else self.database


def parse_targets(text: str, source: str) -> list[Target]:
    """The targets of a list, one per line (``#`` comments and blank lines skipped); ConfigError naming the
    first bad line: a credential in it, a name that is not a plain name, a duplicate."""
    targets: list[Target] = []
    seen: dict[Target, int] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        target = _parse_line(line, f"{source} line {number}")
        if target in seen:
            raise ConfigError(
                f"{source} line {number}: target {target} is already on line {seen[target]}",
                hint="list each target once",
            )
        seen[target] = number
        targets.append(target)
    return targets


def _parse_line(line: str, where: str) -> Target:
    if any(h in line.lower() for h in _CREDENTIAL_HINTS):
        raise ConfigError(
            f"{where}: looks like a connection string, not a target name (the line is not shown: it may hold a secret)",
            hint="write 'database' or 'database:schema'; credentials come only from the database URL or PG* variables",
        )
    database, _, schema = line.partition(":")
    if not _DATABASE.match(database):
        raise ConfigError(
            f"{where}: {database!r} is not a database name",
            hint="letters, digits, _ . $ - (at most 63); write 'database' or 'database:schema'",
        )
    if schema and not _SCHEMA.match(schema):
        raise ConfigError(
            f"{where}: {schema!r} is not a schema name",
            hint="lowercase letters, digits, _ and $ (at most 63), starting with a letter or _",
        )
    return Target(database, schema or None)


def shard_of(targets: Sequence[Target], index: int, count: int, canary: int) -> tuple[list[Target], list[Target]]:
    """``(canaries this shard runs first, the rest of its targets)``: the first ``canary`` targets of the whole
    list belong to shard 0 alone; the others go by position modulo ``count``."""
    if index >= count:
        raise ConfigError(
            f"--shard-index {index} is not below --shard-count {count}",
            hint="set PGSLUICE_SHARD_COUNT to the Job's completions (the chart does)",
        )
    canaries = list(targets[:canary])
    rest = [t for position, t in enumerate(targets) if position >= canary and position % count == index]
    return (canaries if index == 0 else []), rest


def severity(code: int) -> int:
    """How bad an exit code is for the pod: permanent (an internal error is one) over transient over success."""
    if code in PERMANENT:
        return 2
    if code in TRANSIENT or code in (ExitCode.SIGINT, ExitCode.SIGTERM):
        return 1
    return 0


def pod_exit_code(codes: Sequence[int]) -> ExitCode:
    """0 when every target is current; otherwise the most severe code (the first of its rank)."""
    worst = ExitCode.OK
    for code in codes:
        if severity(code) > severity(worst):
            worst = ExitCode(code)
    return worst


def target_config(config: Config, target: Target) -> Config:
    """The configuration of one target: the database replaced; for a schema target, the history table in that
    schema (which also keys the lock) and the search_path of its migrations."""
    from psycopg.conninfo import make_conninfo

    database_url = make_conninfo(config.database_url, dbname=target.database)
    history = config.history_table
    if target.schema:
        history = TableName(target.schema, history.name)
    return dataclasses.replace(
        config,
        database_url=database_url,
        history_table=history,
        target=str(target),
        search_schema=target.schema,
    )


def read_targets(config: Config, query_runner: Callable[[str], list[tuple[Any, ...]]] | None) -> list[Target]:
    """The targets from ``--targets`` or ``--targets-query`` (run by ``query_runner`` on the base database)."""
    if config.targets_file is not None:
        path = Path(config.targets_file)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"--targets: cannot read {path}: {exc}", hint="mount the list of targets") from exc
        return parse_targets(text, str(path))
    assert config.targets_query is not None and query_runner is not None  # noqa: S101 - checked by the caller
    rows = query_runner(config.targets_query)
    lines = [":".join(str(v) for v in row if v is not None) for row in rows]
    return parse_targets("\n".join(lines), "--targets-query")


@dataclass
class _Outcome:
    target: Target
    code: ExitCode
    report: Report
    reason: str | None


class Fleet:
    """Runs one command over this pod's targets and reports each, then the whole."""

    def __init__(self, config: Config, runner: Callable[[Config, Report], ExitCode]) -> None:
        self.config = config
        self.runner = runner
        self.stop = threading.Event()
        self.reports: list[Report] = []
        self.lock = threading.Lock()

    def one(self, target: Target) -> _Outcome:
        """Run the command for ``target`` exactly as a single run, and say how it went."""
        config = target_config(self.config, target)
        report = Report(command=self.config.command)
        with self.lock:
            self.reports.append(report)
        structlog.contextvars.bind_contextvars(target=str(target))
        reason: str | None = None
        try:
            code = self.runner(config, report)
            reason = report.reason
        except PgsluiceError as exc:
            code, reason = exc.exit_code, config.redactor(str(exc))
            report.details.update(exc.report_fields())
        except Exception as exc:
            log.exception(Event.RUN_CRASHED)
            code, reason = ExitCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc}"
        finally:
            structlog.contextvars.unbind_contextvars("target")
        outcome = _Outcome(target, code, report, reason)
        self._finished(outcome)
        return outcome

    def _finished(self, outcome: _Outcome) -> None:
        report = outcome.report
        report.step_seconds["total"] = round(time.monotonic() - report.started, 4)
        fields: dict[str, Any] = {
            "target": str(outcome.target),
            "outcome": "success" if outcome.code == ExitCode.OK else "failure",
            "exit_code": int(outcome.code),
            "applied": report.applied,
            "current_version": report.current_version,
            "durations": report.step_seconds,
        }
        if outcome.reason:
            fields["reason"] = self.config.redactor(outcome.reason)
        if outcome.code == ExitCode.OK:
            log.info(Event.TARGET_FINISHED, **fields)
        else:
            log.error(Event.TARGET_FINISHED, **fields)

    def run_all(self, targets: Sequence[Target]) -> list[_Outcome]:
        """Every target, up to ``--parallel`` at once; with ``--fail-fast`` none is started after a failure."""
        outcomes: list[_Outcome] = []
        if self.config.parallel <= 1:
            for target in targets:
                if self.stop.is_set():
                    break
                outcomes.append(self.one(target))
                if outcomes[-1].code != ExitCode.OK and self.config.fail_fast:
                    self.stop.set()
            return outcomes
        queue = list(targets)
        with ThreadPoolExecutor(self.config.parallel, thread_name_prefix="pgsluice-target") as pool:
            running: set[Future[_Outcome]] = set()
            try:
                while queue or running:
                    while queue and len(running) < self.config.parallel and not self.stop.is_set():
                        running.add(pool.submit(self.one, queue.pop(0)))
                    if not running:
                        break
                    done, running = wait(running, return_when=FIRST_COMPLETED)
                    for future in done:
                        outcomes.append(future.result())
                        if outcomes[-1].code != ExitCode.OK and self.config.fail_fast:
                            self.stop.set()
            except Interrupted:
                self.stop.set()
                self.cancel_running()
                raise
        return outcomes

    def cancel_running(self) -> None:
        """SIGTERM: cancel every target's running statement (each rolls back and releases its lock)."""
        with self.lock:
            connections = [conn for report in self.reports for conn in report.connections]
        for conn in connections:
            if not conn.closed:
                conn.cancel_safe()


def wait_for_canaries(config: Config, canaries: Sequence[Target], is_current: Callable[[Target], str | None]) -> None:
    """Other shards: wait until every canary target is current (``is_current`` returns None), or stop with exit
    11 when one failed (it returns why) or the deadline passes."""
    if not canaries:
        return
    deadline = time.monotonic() + config.canary_timeout_seconds
    log.info(
        Event.FLEET_CANARY_WAITING, canaries=[str(c) for c in canaries], timeout_seconds=config.canary_timeout_seconds
    )
    while True:
        states = {c: is_current(c) for c in canaries}
        failed = {c: why for c, why in states.items() if why and why.startswith("failed")}
        if failed:
            target, why = next(iter(failed.items()))
            raise CanaryFailedError(
                f"canary target {target} {why}: this shard applied nothing",
                hint="fix the migration (see the canary pod's logs), then run the rollout again",
            )
        if all(why is None for why in states.values()):
            return
        if time.monotonic() >= deadline:
            waiting = [str(c) for c, why in states.items() if why is not None]
            raise CanaryFailedError(
                f"the canary targets {waiting} were not current after {config.canary_timeout_seconds:.0f}s: this "
                "shard applied nothing",
                hint="see the canary pod (shard 0); raise --canary-timeout for slow migrations",
            )
        time.sleep(CANARY_POLL_SECONDS)


def summarize(outcomes: Sequence[_Outcome], targets: int) -> ExitCode:
    """Log ``fleet.finished`` and return the pod's exit code."""
    counts = Counter("success" if o.code == ExitCode.OK else f"exit {int(o.code)}" for o in outcomes)
    failed = [str(o.target) for o in outcomes if o.code != ExitCode.OK]
    code = pod_exit_code([o.code for o in outcomes])
    fields = {"targets": targets, "done": len(outcomes), "outcomes": dict(counts), "failed": failed}
    if code == ExitCode.OK:
        log.info(Event.FLEET_FINISHED, **fields)
    else:
        log.error(Event.FLEET_FINISHED, **fields)
    return code
