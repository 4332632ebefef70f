"""pgsluice against dbmate (npm package ``dbmate``), same server, same run, whole processes.

    python benchmarks/run.py                      # (a)-(d), (e) pooler, (f) fleet, on both clusters
    python benchmarks/run.py --cluster fast       # only the throwaway cluster (fsync=off)
    python benchmarks/run.py --fleet-runs 0       # without the fleet rows (the slowest part)
    python benchmarks/run.py --backup             # also the backup benchmark (pgbench -i -s 70, about 1 GB)

Prints medians and ratios as a Markdown table (the README quotes it), under a line saying
the date, the machine, the clusters and the versions. Every row is measured on each
cluster and labelled with it:

- ``fast``: a throwaway cluster (tests/support/pgserver.py: initdb in a temporary folder,
  fsync=off, synchronous_commit=off, full_page_writes=off).
- ``default``: the distribution's default cluster, as Debian's ``postgresql`` package
  created it (``pg_lsclusters``: the ``main`` cluster of the newest version), with its own
  postgresql.conf (fsync on, ssl on). Needs root. Started with ``pg_ctlcluster`` when it is
  down and stopped again at the end; reached over TCP on 127.0.0.1 as a role
  ``pgsluice_bench`` created for the run (through the postgres user's Unix socket) and
  dropped at the end with the ``pgsluice_bench_*`` databases it owns. pgsluice and psycopg
  connect with libpq's default ``sslmode=prefer`` (TLS, since the cluster has ssl on);
  dbmate with ``sslmode=require``, so that it pays for TLS too.

(e) runs Debian's ``pgbouncer`` (tests/support/pgbouncer.py) in transaction mode with
PgBouncer's default pool size (20); both of its arms connect with ``sslmode=disable``, so
the comparison is the pooler and the lock, not TLS (PgBouncer's client side has no TLS by
default). dbmate is installed with npm into benchmarks/.cache on first use; for --backup,
moto's S3 server is started too.

The header names the pgsluice measured (commit, uncommitted changes). To measure one
revision while src/ is being edited, put a snapshot first on the path:

    git archive HEAD src | tar -x -C /tmp/snap && PYTHONPATH=/tmp/snap/src python benchmarks/run.py
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import platform
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.pgbouncer import PgBouncer, PgBouncerUnavailableError, find_pgbouncer  # noqa: E402
from tests.support.pgserver import PASSWORD, SUPERUSER, PostgresServer  # noqa: E402

CACHE = ROOT / "benchmarks" / ".cache"
PYTHON = sys.executable
PGSLUICE = [PYTHON, "-m", "pgsluice"]
DB_PREFIX = "pgsluice_bench_"  # every database this benchmark creates; on the default cluster nothing else is touched
BENCH_ROLE = "pgsluice_bench"
AS_POSTGRES = ["runuser", "-u", "postgres", "--"]
RACERS = 8
FLEET_TARGETS = 200
FLEET_SMALL = 50
FLEET_MIGRATIONS = 20
RACE_TIMEOUT_SECONDS = 600.0

# (measurement, pgsluice median, peer, peer median, ratio)
Row = tuple[str, float, str, float, str]


class ClusterUnavailableError(RuntimeError):
    """Raised when the default cluster cannot be measured: the message is the reason, printed with the skip."""


SETTINGS_QUERY = (
    "SELECT current_setting('server_version'), current_setting('fsync'), current_setting('synchronous_commit'),"
    " current_setting('full_page_writes'), current_setting('ssl')"
)


@dataclass
class Cluster:
    """A running PostgreSQL the rows are measured on, reached over TCP on 127.0.0.1 as a superuser."""

    label: str  # "fast" or "default": the suffix of its rows
    port: int
    user: str
    password: str
    mate_sslmode: str  # dbmate's driver (lib/pq) has no "prefer": "disable" without TLS, "require" with it
    description: str = ""  # what it is, for the header line (filled in by describe())
    version: str = ""

    def url(self, dbname: str = "postgres", sslmode: str | None = None) -> str:
        """A libpq URL for ``dbname`` on this cluster (libpq's default sslmode unless one is given)."""
        url = f"postgresql://{self.user}:{self.password}@127.0.0.1:{self.port}/{dbname}"
        return f"{url}?sslmode={sslmode}" if sslmode else url

    def describe(self, what: str) -> None:
        """Read the server's version and durability settings, as the header line shows them."""
        out = subprocess.run(
            ["psql", "-XAtq", "-F", "|", self.url(), "-c", SETTINGS_QUERY],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        version, fsync, synchronous_commit, full_page_writes, ssl = out.split("|")
        self.version = version.split()[0]  # "15.18 (Debian 15.18-0+deb12u1)"
        self.description = (
            f"{what}: fsync={fsync}, synchronous_commit={synchronous_commit},"
            f" full_page_writes={full_page_writes}, ssl={ssl}"
        )


@contextlib.contextmanager
def fast_cluster() -> Iterator[Cluster]:
    """Today's throwaway cluster: tests/support/pgserver.PostgresServer (fsync=off), removed at the end."""
    with PostgresServer() as server:
        cluster = Cluster("fast", server.port, SUPERUSER, PASSWORD, mate_sslmode="disable")
        cluster.describe("a throwaway cluster (tests/support/pgserver.py)")
        yield cluster


def debian_cluster() -> dict[str, object]:
    """The cluster Debian's ``postgresql`` package created: ``main`` of the newest version in ``pg_lsclusters``."""
    if shutil.which("pg_lsclusters") is None:
        raise ClusterUnavailableError("no Debian cluster: pg_lsclusters is not installed (postgresql-common)")
    listed = json.loads(subprocess.run(["pg_lsclusters", "--json"], check=True, capture_output=True).stdout or "[]")
    mains = sorted((c for c in listed if c.get("cluster") == "main"), key=lambda c: int(c["version"]))
    if not mains:
        names = ", ".join(f"{c['version']}/{c['cluster']}" for c in listed) or "none"
        raise ClusterUnavailableError(f"no Debian default cluster: pg_lsclusters lists no 'main' cluster ({names})")
    return dict(mains[-1])


def as_postgres_psql(port: int, socketdir: str, script: str) -> str:
    """Run ``script`` with psql as the postgres user through the cluster's Unix socket (peer authentication)."""
    proc = subprocess.run(
        [*AS_POSTGRES, "psql", "-XAtq", "-v", "ON_ERROR_STOP=1", "-h", socketdir, "-p", str(port), "-d", "postgres"],
        input=script,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"psql as postgres on port {port} failed: {proc.stderr.strip()}")
    return proc.stdout


def drop_bench_role_script() -> str:
    """SQL that drops the bench role's databases, what it owns in ``postgres``, and the role (when it exists)."""
    owned = f"(SELECT oid FROM pg_roles WHERE rolname = '{BENCH_ROLE}')"
    return (
        f"SELECT format('DROP DATABASE %I WITH (FORCE)', datname) FROM pg_database WHERE datdba = {owned} \\gexec\n"
        f"SELECT 'DROP OWNED BY {BENCH_ROLE}' FROM pg_roles WHERE rolname = '{BENCH_ROLE}' \\gexec\n"
        f"DROP ROLE IF EXISTS {BENCH_ROLE};\n"
    )


def port_is_busy(port: int) -> bool:
    """Whether something accepts TCP connections on 127.0.0.1:``port``."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def default_cluster() -> Iterator[Cluster]:
    """Debian's default cluster with a bench role; started and stopped here only if it was down.

    ClusterUnavailableError (before anything is changed) when it cannot be used."""
    info = debian_cluster()
    version, port, socketdir = str(info["version"]), int(str(info["port"])), str(info["socketdir"])
    name = f"{version}/main"
    if os.geteuid() != 0:
        raise ClusterUnavailableError(f"the Debian cluster {name} needs root (runuser, pg_ctlcluster)")
    started_here = False
    if not info.get("running"):
        if port_is_busy(port):
            raise ClusterUnavailableError(
                f"the Debian cluster {name} is down and its port 127.0.0.1:{port} is taken by another process"
            )
        proc = subprocess.run(["pg_ctlcluster", version, "main", "start"], capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise ClusterUnavailableError(f"pg_ctlcluster {version} main start failed: {proc.stderr.strip()}")
        started_here = True
    password = secrets.token_hex(16)
    try:
        as_postgres_psql(
            port,
            socketdir,
            drop_bench_role_script() + f"CREATE ROLE {BENCH_ROLE} LOGIN SUPERUSER PASSWORD '{password}';\n",
        )
        cluster = Cluster("default", port, BENCH_ROLE, password, mate_sslmode="disable")
        cluster.describe(f"Debian's {name} in {info['pgdata']} with its own postgresql.conf")
        if cluster.description.endswith("ssl=on"):
            cluster.mate_sslmode = "require"
        yield cluster
    finally:
        with contextlib.suppress(RuntimeError):
            as_postgres_psql(port, socketdir, drop_bench_role_script())
        if started_here:
            subprocess.run(["pg_ctlcluster", version, "main", "stop"], check=False, capture_output=True)


CLUSTERS: dict[str, Callable[[], contextlib.AbstractContextManager[Cluster]]] = {
    "fast": fast_cluster,
    "default": default_cluster,
}


def dbmate() -> str:
    exe = CACHE / "node_modules" / ".bin" / "dbmate"
    if not exe.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["npm", "install", "--prefix", str(CACHE), "--no-audit", "--no-fund", "dbmate"],
            check=True,
            stdout=subprocess.DEVNULL,
        )
    return str(exe)


def write_sets(root: Path, count: int) -> tuple[Path, Path]:
    """The same tiny migrations for both tools (written once per folder)."""
    ours, theirs = root / f"pgsluice-{count}", root / f"dbmate-{count}"
    if ours.exists():
        return ours, theirs
    ours.mkdir(parents=True)
    theirs.mkdir()
    for n in range(1, count + 1):
        sql = f"CREATE TABLE t{n} (a int);\n"  # tiny: the tool's cost, not the server's DDL
        (ours / f"{n:04d}_m{n}.sql").write_text(sql)
        (theirs / f"{n:04d}_m{n}.sql").write_text(f"-- migrate:up\n{sql}-- migrate:down\n")
    return ours, theirs


class Bench:
    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.admin = cluster.url("postgres")

    @staticmethod
    def database(name: str) -> str:
        """The real name of the benchmark's database ``name`` (prefixed, so nothing else is ever dropped)."""
        return DB_PREFIX + name

    def fresh(self, name: str) -> str:
        """Drop and create the database ``name``; its URL."""
        real = self.database(name)
        subprocess.run(
            [
                "psql",
                "-Xq",
                self.admin,
                "-c",
                "SET client_min_messages = warning",
                "-c",
                f'DROP DATABASE IF EXISTS "{real}" WITH (FORCE)',
                "-c",
                f'CREATE DATABASE "{real}"',
            ],
            check=True,
        )
        return self.cluster.url(real)

    def scalar(self, name: str, query: str) -> str:
        """The one value ``query`` returns in the database ``name``."""
        return subprocess.run(
            ["psql", "-XAtq", self.cluster.url(self.database(name)), "-c", query],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()

    @staticmethod
    def timed(cmd: list[str], env: dict[str, str]) -> float:
        started = time.perf_counter()
        proc = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False)
        elapsed = time.perf_counter() - started
        if proc.returncode != 0:
            raise RuntimeError(f"{cmd[:3]} exited {proc.returncode}: {proc.stderr.decode()[-2000:]}")
        return elapsed

    @staticmethod
    def env(url: str, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PGSLUICE_", "DATABASE_URL"))}
        env.update(DATABASE_URL=url, **extra)
        return env


def median(samples: list[float]) -> float:
    return statistics.median(samples)


def repeat(runs: int, *fns: Callable[[], float]) -> list[list[float]]:
    """Interleave the measured commands, so drift hits them alike."""
    out: list[list[float]] = [[] for _ in fns]
    for _ in range(runs):
        for i, fn in enumerate(fns):
            out[i].append(fn())
    return out


def race(cmd: list[str], env: dict[str, str], count: int = RACERS) -> float:
    """Start ``count`` copies of ``cmd`` at once; the seconds until the last one finished (all must exit 0)."""
    logs = [tempfile.TemporaryFile() for _ in range(count)]  # noqa: SIM115 - closed below, after the wait
    try:
        started = time.perf_counter()
        procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=log) for log in logs]
        codes = []
        for proc in procs:
            try:
                codes.append(proc.wait(timeout=RACE_TIMEOUT_SECONDS))
            except subprocess.TimeoutExpired:
                for other in procs:
                    other.kill()
                    other.wait()
                raise
        elapsed = time.perf_counter() - started
        if codes != [0] * count:
            failed = codes.index(next(c for c in codes if c != 0))
            logs[failed].seek(0)
            raise RuntimeError(
                f"{count} racers exited {codes}; the first failure's log ends:\n{logs[failed].read()[-2000:].decode()}"
            )
        return elapsed
    finally:
        for log in logs:
            log.close()


def gate(bench: Bench, work: Path, runs: int) -> list[Row]:
    mate = dbmate()
    rows: list[Row] = []
    p100, d100 = write_sets(work, 100)
    p1000, d1000 = write_sets(work, 1000)
    p200, _ = write_sets(work, 200)
    sslmode = bench.cluster.mate_sslmode

    # (d) the floor, and (a) a no-op run with 100 applied migrations.
    url_p, url_d = bench.fresh("noop_p"), bench.fresh("noop_d")
    bench.timed([*PGSLUICE, "migrate", "--migrations-dir", str(p100)], bench.env(url_p))
    mate_url = f"{url_d}?sslmode={sslmode}"
    mate_cmd = [mate, "--no-dump-schema", "--migrations-dir", str(d100), "migrate"]
    bench.timed(mate_cmd, bench.env(mate_url))
    floor_cmd = [PYTHON, "-c", "import os, psycopg; psycopg.connect(os.environ['DATABASE_URL']).execute('SELECT 1')"]
    floor, noop, noop_mate = repeat(
        runs,
        lambda: bench.timed(floor_cmd, bench.env(url_p)),
        lambda: bench.timed([*PGSLUICE, "migrate", "--migrations-dir", str(p100)], bench.env(url_p)),
        lambda: bench.timed(mate_cmd, bench.env(mate_url)),
    )
    rows.append(("(d) floor: python -c 'import psycopg; connect; SELECT 1'", median(floor), "", 0.0, ""))
    rows.append(
        (
            "(a) no-op run, 100 applied, vs the floor (d)",
            median(noop),
            "floor",
            median(floor),
            f"{median(noop) / median(floor):.2f}x (target <= 2x)",
        )
    )
    rows.append(
        (
            "(a') dbmate no-op run, 100 applied, vs the floor (d)",
            median(noop_mate),
            "floor",
            median(floor),
            f"{median(noop_mate) / median(floor):.2f}x",
        )
    )

    # (b) 1000 tiny migrations from an empty database.
    def ours_1000() -> float:
        url = bench.fresh("b1000")
        return bench.timed([*PGSLUICE, "migrate", "--migrations-dir", str(p1000)], bench.env(url))

    def theirs_1000() -> float:
        url = f"{bench.fresh('b1000')}?sslmode={sslmode}"
        return bench.timed([mate, "--no-dump-schema", "--migrations-dir", str(d1000), "migrate"], bench.env(url))

    # psql, the reference: one `psql -f` per file as by hand, and the floor: every file in one psql -1 -f.
    together_sql = work / "all-1000.sql"
    if not together_sql.exists():
        together_sql.write_text("".join(f.read_text() for f in sorted(p1000.glob("*.sql"))))

    def psql_each() -> float:
        url = bench.fresh("b1000")
        started = time.perf_counter()
        for file in sorted(p1000.glob("*.sql")):
            subprocess.run(["psql", "-Xq", "-v", "ON_ERROR_STOP=1", url, "-f", str(file)], check=True)
        return time.perf_counter() - started

    def psql_one() -> float:
        url = bench.fresh("b1000")
        return bench.timed(["psql", "-Xq", "-1", "-v", "ON_ERROR_STOP=1", url, "-f", str(together_sql)], bench.env(url))

    ours, theirs, by_hand, one_psql = repeat(max(3, runs // 3), ours_1000, theirs_1000, psql_each, psql_one)
    rows.append(
        (
            "(b) 1000 tiny migrations from empty, vs dbmate",
            median(ours),
            "dbmate",
            median(theirs),
            f"{median(ours) / median(theirs):.2f}x (target <= 0.8x)",
        )
    )
    rows.append(
        (
            "(b-psql) the same 1000 files, vs `psql -v ON_ERROR_STOP=1 -f` run per file (by hand)",
            median(ours),
            "psql per file",
            median(by_hand),
            f"{median(ours) / median(by_hand):.2f}x",
        )
    )
    rows.append(
        (
            "(b-floor) the same 1000 files, vs all of them in one `psql -1 -f` (no history, no lock: the floor)",
            median(ours),
            "psql -1, one file",
            median(one_psql),
            f"{median(ours) / median(one_psql):.2f}x",
        )
    )

    # (c) 8 runners at once on 200 migrations vs one alone.
    def lone() -> float:
        url = bench.fresh("c200")
        return bench.timed([*PGSLUICE, "migrate", "--migrations-dir", str(p200)], bench.env(url))

    def eight() -> float:
        url = bench.fresh("c200")
        return race([*PGSLUICE, "migrate", "--migrations-dir", str(p200)], bench.env(url))

    def eight_floors() -> float:
        """What starting 8 Python processes that connect costs on this machine, with no work at all."""
        return race(floor_cmd, bench.env(url_p))

    alone, together, floors = repeat(max(3, runs // 3), lone, eight, eight_floors)
    rows.append(
        (
            f"(c') context: 8 bare floors (d) at once on {os.cpu_count()} cores, vs one floor",
            median(floors),
            "floor (d)",
            median(floor),
            f"{median(floors) / median(floor):.2f}x: the machine's own cost of 8 interpreters at once",
        )
    )
    rows.append(
        (
            "(c) 8 runners at once on 200 migrations (last finish; all exit 0), vs one alone",
            median(together),
            "lone runner",
            median(alone),
            f"{median(together) / median(alone):.2f}x (target <= 2x)",
        )
    )
    return rows


class BenchBouncer(PgBouncer):
    """tests/support's PgBouncer, authenticating the cluster's role (the default cluster's is not the test one)."""

    def __init__(self, cluster: Cluster) -> None:
        super().__init__(cluster.port, pool_mode="transaction", default_pool_size=20)  # 20: PgBouncer's default
        self.cluster = cluster

    def _write_files(self) -> None:
        super()._write_files()
        self.auth_file.write_text(f'"{self.cluster.user}" "{self.cluster.password}"\n')

    def bench_url(self, dbname: str) -> str:
        """A URL for ``dbname`` through this PgBouncer, as the cluster's role, without TLS (see the docstring)."""
        return self.url(dbname, user=self.cluster.user, password=self.cluster.password) + "?sslmode=disable"


def pooler_bench(bench: Bench, work: Path, runs: int) -> list[Row]:
    """(e) issue 13: 8 racers through PgBouncer (transaction mode) with the lease lock vs 8 direct with the
    advisory lock, 200 tiny migrations, whole wall time of the 8 (last finish)."""
    try:
        bouncer = BenchBouncer(bench.cluster)
    except PgBouncerUnavailableError as exc:
        print(f"(e) skipped on {bench.cluster.label}: {exc}", file=sys.stderr)
        return []
    p200, _ = write_sets(work, 200)
    empty = work / "empty"
    empty.mkdir(exist_ok=True)

    def prepared(env: dict[str, str], *lock: str) -> dict[str, str]:
        # A fresh database, as in (c), but where an earlier release already ran: one run with no migrations first
        # creates pgsluice's tables (history, lease). 8 lease racers creating the lease table at once can crash one
        # of them (DuplicateObject on its type, exit 1): a first-deploy bug for the tests, not a cost to time here.
        bench.timed([*PGSLUICE, "migrate", "--migrations-dir", str(empty), *lock], env)
        return env

    def direct() -> float:
        env = prepared(bench.env(bench.fresh("pool") + "?sslmode=disable"))
        return race([*PGSLUICE, "migrate", "--migrations-dir", str(p200)], env)

    def pooled() -> float:
        bench.fresh("pool")
        lease = ("--lock-strategy", "lease")
        env = prepared(bench.env(bouncer.bench_url(bench.database("pool"))), *lease)
        return race([*PGSLUICE, "migrate", "--migrations-dir", str(p200), *lease], env)

    with bouncer:
        advisory, lease = repeat(runs, direct, pooled)
    applied = bench.scalar("pool", "SELECT count(*) FROM public.pgsluice_history")
    if applied != "200":
        raise RuntimeError(f"(e): the pooled racers left {applied} history rows, not 200")
    return [
        (
            (
                "(e) 8 racers through PgBouncer (transaction mode) with --lock-strategy lease, 200 migrations,"
                " vs 8 direct with the advisory lock (last finish; all exit 0; pgsluice's own tables already there)"
            ),
            median(lease),
            "8 direct, advisory",
            median(advisory),
            f"{median(lease) / median(advisory):.2f}x",
        )
    ]


# The shell loop of (f-a): bash -c FLEET_LOOP bash PYTHON MIGRATIONS_DIR ONE_TARGET_FILE...
FLEET_LOOP = (
    'set -e; py=$1; dir=$2; shift 2; for t in "$@"; do'
    ' "$py" -m pgsluice migrate --migrations-dir "$dir" --targets "$t"; done'
)


def fleet_files(folder: Path, dbname: str) -> tuple[list[Path], Path, Path]:
    """The targets files: one per schema (for the shell loop), all 200, and the first 50."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = [f"{dbname}:tenant_{n:03d}\n" for n in range(FLEET_TARGETS)]
    singles = []
    for n, line in enumerate(lines):
        single = folder / f"one-{n:03d}.txt"
        single.write_text(line)
        singles.append(single)
    every, first = folder / f"all-{FLEET_TARGETS}.txt", folder / f"all-{FLEET_SMALL}.txt"
    every.write_text("".join(lines))
    first.write_text("".join(lines[:FLEET_SMALL]))
    return singles, every, first


def fleet_bench(bench: Bench, work: Path, runs: int) -> list[Row]:
    """(f) issue 14: 200 schema targets x 20 tiny migrations: a shell loop of single runs, vs one process with
    --targets (--parallel 1 and 4), and how the one process grows from 50 to 200 targets. Fresh database each."""
    mdir, _ = write_sets(work, FLEET_MIGRATIONS)
    singles, every, first = fleet_files(work / "fleet", bench.database("fleet"))
    migrate = [*PGSLUICE, "migrate", "--migrations-dir", str(mdir)]

    def checked(expected: int, cmd: list[str]) -> float:
        elapsed = bench.timed(cmd, bench.env(bench.fresh("fleet")))
        found = bench.scalar("fleet", "SELECT count(*) FROM pg_tables WHERE tablename = 'pgsluice_history'")
        if found != str(expected):
            raise RuntimeError(f"(f): {cmd[-3:]} left {found} history tables, not {expected}")
        return elapsed

    def loop() -> float:
        return checked(FLEET_TARGETS, ["bash", "-c", FLEET_LOOP, "bash", PYTHON, str(mdir), *map(str, singles)])

    def fleet(targets: Path, count: int, parallel: int) -> Callable[[], float]:
        return lambda: checked(count, [*migrate, "--targets", str(targets), "--parallel", str(parallel)])

    # The loop is itself 200 runs in a row, and costs as much as the rest together: one sample per three rounds.
    one_process = (
        fleet(every, FLEET_TARGETS, 1),
        fleet(every, FLEET_TARGETS, 4),
        fleet(first, FLEET_SMALL, 1),
        fleet(first, FLEET_SMALL, 4),
    )
    a: list[float] = []
    samples: list[list[float]] = [[] for _ in one_process]
    for n in range(runs):
        if n % 3 == 0:
            a.append(loop())
        for into, fn in zip(samples, one_process, strict=True):
            into.append(fn())
    b, c, b50, c50 = samples
    shape = f"{FLEET_TARGETS} schemas x {FLEET_MIGRATIONS} tiny migrations"
    return [
        (
            f"(f-a) fleet, {shape}: a shell loop of {FLEET_TARGETS} single `migrate --targets one.txt`",
            median(a),
            "",
            0.0,
            f"{median(a) / FLEET_TARGETS * 1000:.0f} ms per target",
        ),
        (
            f"(f-b) fleet, {shape}: one `migrate --targets all.txt --parallel 1`, vs the loop (f-a)",
            median(b),
            "shell loop",
            median(a),
            f"{median(b) / median(a):.2f}x",
        ),
        (
            f"(f-c) fleet, {shape}: one `migrate --targets all.txt --parallel 4`, vs the loop (f-a)",
            median(c),
            "shell loop",
            median(a),
            f"{median(c) / median(a):.2f}x",
        ),
        (
            f"(f-b') growth of (f-b), {FLEET_SMALL} to {FLEET_TARGETS} targets",
            median(b),
            f"{FLEET_SMALL} targets",
            median(b50),
            f"{median(b) / median(b50):.2f}x (linear: {FLEET_TARGETS / FLEET_SMALL:.1f}x)",
        ),
        (
            f"(f-c') growth of (f-c), {FLEET_SMALL} to {FLEET_TARGETS} targets",
            median(c),
            f"{FLEET_SMALL} targets",
            median(c50),
            f"{median(c) / median(c50):.2f}x (linear: {FLEET_TARGETS / FLEET_SMALL:.1f}x)",
        ),
    ]


def backup_bench(bench: Bench, runs: int) -> list[Row]:
    """pgsluice backup to the loopback S3 server vs pg_dump -Fc > /dev/null, same compression; peak RSS."""
    from tests.support.s3server import S3Server

    rows: list[Row] = []
    s3 = S3Server()
    try:
        migrations = Path(tempfile.mkdtemp()) / "m"
        migrations.mkdir()
        (migrations / "001_noop.sql").write_text("SELECT 1;\n")
        results: dict[int, float] = {}
        for scale in (7, 70):  # about 100 MB and 1 GB of table data
            url = bench.fresh(f"pgb{scale}")
            subprocess.run(
                ["pgbench", "-q", "-i", "-s", str(scale), url],
                check=True,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            size = subprocess.run(
                ["psql", "-Atq", url, "-c", "SELECT pg_database_size(current_database())"],
                check=True,
                capture_output=True,
                text=True,
            ).stdout.strip()
            bucket = f"bench{scale}"
            s3.client().create_bucket(Bucket=bucket)
            env = bench.env(url, **s3.env(), PGSLUICE_LOG_LEVEL="info", PGSLUICE_LOG_FORMAT="json")
            version = subprocess.run(["pg_dump", "--version"], capture_output=True, text=True, check=True).stdout
            compress = "zstd:3" if int(version.split(")")[1].split(".")[0]) >= 16 else "6"

            def ours(env: dict[str, str] = env, bucket: str = bucket, verify: bool = False) -> tuple[float, int, float]:
                started = time.perf_counter()
                proc = subprocess.Popen(
                    [
                        *PGSLUICE,
                        "backup",
                        "--backup-url",
                        f"s3://{bucket}/b",
                        "--migrations-dir",
                        str(migrations),
                        "--backup-verify" if verify else "--no-backup-verify",
                    ],
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                )
                _, status, usage = os.wait4(proc.pid, 0)
                elapsed = time.perf_counter() - started
                log = proc.stderr.read().decode() if proc.stderr else ""
                if os.waitstatus_to_exitcode(status) != 0:
                    raise RuntimeError(log[-2000:])
                stamps = {}
                for line in log.splitlines():
                    event = json.loads(line) if line.startswith("{") else {}
                    if event.get("event") in ("backup.started", "backup.uploaded"):
                        stamps[event["event"]] = datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00"))
                streaming = (stamps["backup.uploaded"] - stamps["backup.started"]).total_seconds()
                return elapsed, usage.ru_maxrss * 1024, streaming

            def plain(url: str = url, compress: str = compress) -> float:
                started = time.perf_counter()
                with open(os.devnull, "wb") as sink:
                    subprocess.run(
                        ["pg_dump", "--format=custom", f"--compress={compress}", url], stdout=sink, check=True
                    )
                return time.perf_counter() - started

            samples_ours: list[float] = []
            samples_plain: list[float] = []
            samples_stream: list[float] = []
            samples_verified: list[float] = []
            rss: list[int] = []
            for _ in range(runs):
                elapsed, peak, streaming = ours()
                samples_ours.append(elapsed)
                samples_stream.append(streaming)
                rss.append(peak)
                samples_plain.append(plain())
                if scale >= 70:
                    samples_verified.append(ours(verify=True)[0])
            results[scale] = max(rss)
            label = f"{int(size) / 1024**2:.0f} MiB database (pgbench -s {scale})"
            rows.append(
                (
                    f"backup to loopback S3, {label}, vs pg_dump -Fc > /dev/null",
                    median(samples_ours),
                    "pg_dump",
                    median(samples_plain),
                    f"{median(samples_ours) / median(samples_plain):.2f}x"
                    + (" (target <= 1.15x)" if scale >= 70 else ""),
                )
            )
            rows.append(
                (
                    f"  of which streaming (backup.started to backup.uploaded), {label}, vs pg_dump",
                    median(samples_stream),
                    "pg_dump",
                    median(samples_plain),
                    f"{median(samples_stream) / median(samples_plain):.2f}x",
                )
            )
            if samples_verified:
                rows.append(
                    (
                        f"  the same with the read-back verification on (the default), {label}, vs pg_dump",
                        median(samples_verified),
                        "pg_dump",
                        median(samples_plain),
                        f"{median(samples_verified) / median(samples_plain):.2f}x",
                    )
                )
        growth = results[70] / results[7] - 1
        rows.append(
            (
                (
                    f"peak RSS of pgsluice: {results[7] / 1024**2:.0f} MiB at ~100 MB, "
                    f"{results[70] / 1024**2:.0f} MiB at ~1 GB"
                ),
                results[70] / 1024**2,
                "MiB",
                200.0,
                f"growth {growth * 100:+.0f}% (target < 20%, under 200 MiB)",
            )
        )
    finally:
        s3.stop()
    return rows


def machine() -> str:
    """The CPU model and core count, as the header line shows them."""
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    load = os.getloadavg()[0]  # another workload on the machine shows here (taken before the run starts)
    return f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores ({model}), load {load:.2f} at start"


def pgsluice_source() -> Path:
    """The pgsluice package the measured processes import: this checkout's src/, or a snapshot put first on
    PYTHONPATH (``git archive REV src | tar -x -C DIR``) so that edits made during the run are not measured."""
    spec = importlib.util.find_spec("pgsluice")
    if spec is None or spec.origin is None:
        raise RuntimeError("pgsluice is not importable: run with the project's .venv/bin/python")
    return Path(spec.origin).parent


def describe_source(source: Path) -> str:
    """Which pgsluice was measured: the commit, and whether src/ had uncommitted changes; or the snapshot's path."""
    if source != ROOT / "src" / "pgsluice":
        return f"pgsluice from {source}"

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=False).stdout

    dirty = " + uncommitted changes in src/" if git("status", "--porcelain", "--", "src").strip() else ""
    return f"pgsluice {git('rev-parse', '--short', 'HEAD').strip() or '(no git)'}{dirty}"


def tool_versions() -> str:
    """PgBouncer's and dbmate's versions, and the Python that runs pgsluice."""
    try:
        out = subprocess.run([str(find_pgbouncer()), "--version"], capture_output=True, text=True, check=False)
        bouncer = out.stdout.splitlines()[0] if out.stdout else "unknown version"
    except PgBouncerUnavailableError:
        bouncer = "PgBouncer: not installed"
    mate = CACHE / "node_modules" / "dbmate" / "package.json"
    mate_version = json.loads(mate.read_text())["version"] if mate.exists() else "not installed"
    return f"{bouncer}; dbmate {mate_version}; Python {platform.python_version()}"


def header(host: str, source: str, clusters: list[Cluster], skipped: list[str], args: argparse.Namespace) -> str:
    """The line above the table: date, machine, PostgreSQL, clusters, tools, runs."""
    today = datetime.now(UTC).date().isoformat()
    versions = sorted({c.version for c in clusters})
    described = [f"{c.label} = {c.description}" for c in clusters] + skipped
    runs = f"medians of {args.runs} runs ((b), (c), (e): {max(3, args.runs // 3)}"
    if args.fleet_runs:
        runs += f"; (f): {args.fleet_runs}, of which the shell loop (f-a): {len(range(0, args.fleet_runs, 3))}"
    runs += ")"
    return (
        f"{today}, {host}, PostgreSQL {', '.join(versions)}; clusters: {'; '.join(described)};"
        f" {source}; {tool_versions()}; {runs}."
    )


def measure(cluster: Cluster, work: Path, args: argparse.Namespace) -> list[Row]:
    """Every row this invocation asks for, on one cluster; its databases are dropped at the end."""
    bench = Bench(cluster)
    rows: list[Row] = []
    started = time.monotonic()
    if not args.only_backup:
        rows += gate(bench, work, args.runs)
        rows += pooler_bench(bench, work, max(3, args.runs // 3))
        if args.fleet_runs:
            fleet_started = time.monotonic()
            rows += fleet_bench(bench, work, args.fleet_runs)
            print(f"{cluster.label}: fleet rows took {time.monotonic() - fleet_started:.0f} s", file=sys.stderr)
    if args.backup or args.only_backup:
        rows += backup_bench(bench, args.runs)
    print(f"{cluster.label}: all rows took {time.monotonic() - started:.0f} s", file=sys.stderr)
    return [(f"{name} ({cluster.label})", ours, peer, theirs, ratio) for name, ours, peer, theirs, ratio in rows]


def interleave(per_cluster: list[list[Row]]) -> list[Row]:
    """Each measurement's rows next to each other, one per cluster (every cluster measures the same rows)."""
    out: list[Row] = []
    for i in range(max((len(rows) for rows in per_cluster), default=0)):
        out += [rows[i] for rows in per_cluster if i < len(rows)]
    return out


def print_table(rows: list[Row]) -> None:
    print("| measurement | pgsluice (median) | peer | peer (median) | ratio |")
    print("| --- | --- | --- | --- | --- |")
    for name, ours, peer, theirs, ratio in rows:
        unit = "MiB" if peer == "MiB" else "s"
        ours_text = f"{ours:.1f} MiB" if unit == "MiB" else f"{ours:.3f} s"
        theirs_text = f"{theirs:.0f} MiB" if unit == "MiB" else (f"{theirs:.3f} s" if peer else "")
        print(f"| {name} | {ours_text} | {peer if unit != 'MiB' else 'limit'} | {theirs_text} | {ratio} |")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=9, help="samples per measurement (medians are quoted)")
    parser.add_argument("--backup", action="store_true", help="also run the 1 GB backup benchmark")
    parser.add_argument("--only-backup", action="store_true", help="only the backup benchmark")
    parser.add_argument(
        "--cluster",
        choices=("fast", "default", "both"),
        default="both",
        help="fast: a throwaway cluster with fsync=off; default: the distribution's default cluster; both (default)",
    )
    parser.add_argument(
        "--fleet-runs",
        type=int,
        default=3,
        help=(
            "samples of the fleet rows (f), the slowest part (about 30 s per sample and cluster, plus about a"
            " minute for the shell loop (f-a), sampled once every 3); 0 skips them"
        ),
    )
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    # SIGTERM unwinds like Ctrl-C, so the clusters, PgBouncers and the bench role are cleaned up.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    # As the image ships it, with bytecode compiled at build time: a machine that sets
    # PYTHONDONTWRITEBYTECODE (this one does) would otherwise recompile pgsluice's modules
    # from source in every run it times (~20 ms each).
    source = pgsluice_source()
    subprocess.run([PYTHON, "-m", "compileall", "-q", str(source)], check=True)
    started, host = time.monotonic(), machine()
    work = Path(tempfile.mkdtemp(prefix="pgsluice-bench-"))
    measured: list[Cluster] = []
    skipped: list[str] = []
    per_cluster: list[list[Row]] = []
    try:
        for label in ("fast", "default") if args.cluster == "both" else (args.cluster,):
            try:
                with CLUSTERS[label]() as cluster:
                    print(f"{label}: PostgreSQL {cluster.version}, {cluster.description}", file=sys.stderr)
                    per_cluster.append(measure(cluster, work / label, args))
                    measured.append(cluster)
            except ClusterUnavailableError as exc:
                print(f"{label}: skipped: {exc}", file=sys.stderr)
                skipped.append(f"{label} = skipped: {exc}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if not measured:
        print("nothing measured: " + "; ".join(skipped), file=sys.stderr)
        return 1
    print(header(host, describe_source(source), measured, skipped, args))
    print()
    print_table(interleave(per_cluster))
    print(f"whole run: {time.monotonic() - started:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
