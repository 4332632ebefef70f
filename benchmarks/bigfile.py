"""Big migration files against psql, the floor: a file of single-row INSERTs and a COPY … FROM stdin data file.

    python benchmarks/bigfile.py                 # 50 MB each, 3 runs, medians
    python benchmarks/bigfile.py --mb 10 --runs 1

Starts a throwaway PostgreSQL (tests/support/pgserver.py, fsync=off), writes the two files into a temporary
folder (seed data as users write it: one ``INSERT … VALUES (…);`` per row, and what ``pg_dump --data-only``
writes), and times, each in a fresh database: ``psql -X -1 -v ON_ERROR_STOP=1 -f`` (one transaction, no history,
no lock: the floor), ``pgsluice migrate`` (``--max-statements`` raised to fit the file) and ``pgsluice lint``.
Peak RSS comes from ``/usr/bin/time``. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.pgserver import PostgresServer  # noqa: E402 - after the path is set

TABLE = "CREATE TABLE seed (id int PRIMARY KEY, name text, amount numeric, note text);\n"


def write_inserts(path: Path, size: int) -> int:
    """One INSERT per row until the file is ``size`` bytes; the number of rows."""
    rng = random.Random(1)
    rows = 0
    with path.open("w") as out:
        out.write(TABLE)
        while out.tell() < size:
            rows += 1
            out.write(
                f"INSERT INTO seed (id, name, amount, note) VALUES "
                f"({rows}, 'name {rows}', {rng.random() * 1000:.2f}, 'a note about row {rows}');\n"
            )
    return rows


def write_copy(path: Path, size: int) -> int:
    """A COPY … FROM stdin block of ``size`` bytes, as pg_dump --data-only writes it; the number of rows."""
    rng = random.Random(2)
    rows = 0
    with path.open("w") as out:
        out.write(TABLE)
        out.write("COPY seed (id, name, amount, note) FROM stdin;\n")
        while out.tell() < size:
            rows += 1
            out.write(f"{rows}\tname {rows}\t{rng.random() * 1000:.2f}\ta note about row {rows}\n")
        out.write("\\.\n")
    return rows


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, int]:
    """Seconds and peak RSS (MiB) of ``cmd``, which must succeed."""
    with tempfile.NamedTemporaryFile() as rss:
        started = time.perf_counter()
        done = subprocess.run(
            ["/usr/bin/time", "-f", "%M", "-o", rss.name, *cmd], env=env, capture_output=True, text=True, check=False
        )
        elapsed = time.perf_counter() - started
        if done.returncode != 0:
            raise RuntimeError(f"{cmd[:3]} exited {done.returncode}: {done.stderr[-1500:]}")
        return elapsed, int(Path(rss.name).read_text().split()[-1]) // 1024


def main() -> int:
    """Write the files, time each tool, print the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=int, default=50, help="size of each file in MB")
    parser.add_argument("--runs", type=int, default=3, help="samples per measurement (medians)")
    args = parser.parse_args()
    size = args.mb * 1024 * 1024
    rows_out: list[str] = []
    with tempfile.TemporaryDirectory() as tmp, PostgresServer() as pg:
        base_env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "PGSLUICE_", "DATABASE_URL"))}
        admin = pg.url()

        def fresh(name: str) -> str:
            subprocess.run(
                ["psql", "-Xq", admin, "-c", "SET client_min_messages = warning", "-c",
                 f"DROP DATABASE IF EXISTS {name} WITH (FORCE)", "-c", f"CREATE DATABASE {name}"],
                check=True,
            )  # fmt: skip
            return admin.rsplit("/", 1)[0] + "/" + name

        for kind, writer in (("single-row INSERTs", write_inserts), ("COPY … FROM stdin", write_copy)):
            folder = Path(tmp) / kind.split()[0].lower().replace("-", "")
            folder.mkdir()
            rows = writer(folder / "001_seed.sql", size)
            env = {
                **base_env,
                "PGSLUICE_MIGRATIONS_DIR": str(folder),
                "PGSLUICE_LOG_FORMAT": "json",
                "PGSLUICE_MAX_STATEMENTS": str(rows + 10),
                "PGSLUICE_MAX_FILE_SIZE": str(size * 2),
            }
            samples: dict[str, list[tuple[float, int]]] = {"psql": [], "migrate": [], "lint": []}
            for _ in range(args.runs):
                url = fresh("floor")
                samples["psql"].append(
                    timed(["psql", "-Xq", "-1", "-v", "ON_ERROR_STOP=1", url, "-f", str(folder / "001_seed.sql")], env)
                )
                url = fresh("ours")
                samples["migrate"].append(
                    timed([sys.executable, "-m", "pgsluice", "migrate"], {**env, "DATABASE_URL": url})
                )
                samples["lint"].append(timed([sys.executable, "-m", "pgsluice", "lint"], env))
            floor = statistics.median(s[0] for s in samples["psql"])
            for name in ("psql", "migrate", "lint"):
                seconds = statistics.median(s[0] for s in samples[name])
                peak = max(s[1] for s in samples[name])
                label = "psql -1 -f (the floor)" if name == "psql" else f"pgsluice {name}"
                rows_out.append(
                    f"| {args.mb} MB of {kind} ({rows} rows) | {label} | {seconds:.1f} s | "
                    f"{seconds / floor:.2f}x | {peak} MiB |"
                )
    print(f"{time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores, throwaway cluster (fsync=off), medians of {args.runs}")
    print("| file | tool | time | vs psql | peak RSS |")
    print("| --- | --- | --- | --- | --- |")
    print("\n".join(rows_out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
