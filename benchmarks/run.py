"""pgsluice against dbmate (npm package ``dbmate``), same server, same run, whole processes.

    python benchmarks/run.py            # (a)-(d): the gate
    python benchmarks/run.py --backup   # also the backup benchmark (pgbench -i -s 70, about 1 GB)

Prints medians and ratios as a Markdown table (the README quotes it). Starts its own
throwaway PostgreSQL (tests/support/pgserver.py) and, for --backup, moto's S3 server.
dbmate is installed with npm into benchmarks/.cache on first use.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.pgserver import PostgresServer  # noqa: E402

CACHE = ROOT / "benchmarks" / ".cache"
PYTHON = sys.executable
PGSLUICE = [PYTHON, "-m", "pgsluice"]


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
    """The same tiny migrations for both tools."""
    ours, theirs = root / f"pgsluice-{count}", root / f"dbmate-{count}"
    ours.mkdir()
    theirs.mkdir()
    for n in range(1, count + 1):
        sql = f"CREATE TABLE t{n} (a int);\n"  # tiny: the tool's cost, not the server's DDL
        (ours / f"{n:04d}_m{n}.sql").write_text(sql)
        (theirs / f"{n:04d}_m{n}.sql").write_text(f"-- migrate:up\n{sql}-- migrate:down\n")
    return ours, theirs


class Bench:
    def __init__(self, server: PostgresServer) -> None:
        self.server = server
        self.admin = server.url("postgres")

    def fresh(self, name: str) -> str:
        subprocess.run(
            [
                "psql",
                "-q",
                self.admin,
                "-c",
                f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)',
                "-c",
                f'CREATE DATABASE "{name}"',
            ],
            check=True,
        )
        return self.server.url(name)

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


def gate(bench: Bench, work: Path, runs: int) -> list[tuple[str, float, str, float, str]]:
    mate = dbmate()
    rows: list[tuple[str, float, str, float, str]] = []
    p100, d100 = write_sets(work, 100)
    p1000, d1000 = write_sets(work, 1000)
    p200, _ = write_sets(work, 200)

    # (d) the floor, and (a) a no-op run with 100 applied migrations.
    url_p, url_d = bench.fresh("noop_p"), bench.fresh("noop_d")
    bench.timed([*PGSLUICE, "migrate", "--migrations-dir", str(p100)], bench.env(url_p))
    mate_url = url_d + "?sslmode=disable"
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
        url = bench.fresh("b1000") + "?sslmode=disable"
        return bench.timed([mate, "--no-dump-schema", "--migrations-dir", str(d1000), "migrate"], bench.env(url))

    ours, theirs = repeat(max(3, runs // 3), ours_1000, theirs_1000)
    rows.append(
        (
            "(b) 1000 tiny migrations from empty, vs dbmate",
            median(ours),
            "dbmate",
            median(theirs),
            f"{median(ours) / median(theirs):.2f}x (target <= 0.8x)",
        )
    )

    # (c) 8 runners at once on 200 migrations vs one alone.
    def lone() -> float:
        url = bench.fresh("c200")
        return bench.timed([*PGSLUICE, "migrate", "--migrations-dir", str(p200)], bench.env(url))

    def eight() -> float:
        url = bench.fresh("c200")
        started = time.perf_counter()
        procs = [
            subprocess.Popen(
                [*PGSLUICE, "migrate", "--migrations-dir", str(p200)],
                env=bench.env(url),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for _ in range(8)
        ]
        codes = [p.wait() for p in procs]
        elapsed = time.perf_counter() - started
        if codes != [0] * 8:
            raise RuntimeError(f"8 runners exited {codes}")
        return elapsed

    def eight_floors() -> float:
        """What starting 8 Python processes that connect costs on this machine, with no work at all."""
        started = time.perf_counter()
        procs = [subprocess.Popen(floor_cmd, env=bench.env(url_p)) for _ in range(8)]
        if [p.wait() for p in procs] != [0] * 8:
            raise RuntimeError("floor processes failed")
        return time.perf_counter() - started

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


def backup_bench(bench: Bench, runs: int) -> list[tuple[str, float, str, float, str]]:
    """pgsluice backup to the loopback S3 server vs pg_dump -Fc > /dev/null, same compression; peak RSS."""
    from tests.support.s3server import S3Server

    rows: list[tuple[str, float, str, float, str]] = []
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=9, help="samples per measurement (medians are quoted)")
    parser.add_argument("--backup", action="store_true", help="also run the 1 GB backup benchmark")
    parser.add_argument("--only-backup", action="store_true", help="only the backup benchmark")
    args = parser.parse_args()
    # As the image ships it, with bytecode compiled at build time: a machine that sets
    # PYTHONDONTWRITEBYTECODE (this one does) would otherwise recompile pgsluice's modules
    # from source in every run it times (~20 ms each).
    subprocess.run([PYTHON, "-m", "compileall", "-q", str(ROOT / "src" / "pgsluice")], check=True)
    work = Path(tempfile.mkdtemp(prefix="pgsluice-bench-"))
    rows: list[tuple[str, float, str, float, str]] = []
    with PostgresServer() as server:
        bench = Bench(server)
        print(f"PostgreSQL {server.version}, {os.cpu_count()} cores, {args.runs} runs, medians", file=sys.stderr)
        if not args.only_backup:
            rows += gate(bench, work, args.runs)
        if args.backup or args.only_backup:
            rows += backup_bench(bench, args.runs)
    shutil.rmtree(work, ignore_errors=True)
    print("| measurement | pgsluice (median) | peer | peer (median) | ratio |")
    print("| --- | --- | --- | --- | --- |")
    for name, ours, peer, theirs, ratio in rows:
        unit = "MiB" if peer == "MiB" else "s"
        ours_text = f"{ours:.1f} MiB" if unit == "MiB" else f"{ours:.3f} s"
        theirs_text = f"{theirs:.0f} MiB" if unit == "MiB" else (f"{theirs:.3f} s" if peer else "")
        print(f"| {name} | {ours_text} | {peer if unit != 'MiB' else 'limit'} | {theirs_text} | {ratio} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
