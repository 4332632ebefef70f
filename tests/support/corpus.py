"""Real migration folders that nobody here wrote, fetched from PyPI and npm by the test setup, never vendored.

Each package is downloaded once with its registry's own client (``pip download --no-deps
--only-binary :all:``, ``npm pack``) into ``.cache/corpus/`` at the repository root
(git-ignored), its sha256 is checked against the constant below before it is kept, and
its migration folder is read straight out of the archive. Once cached, nothing here
touches the network.

``build_folder`` copies every migration, byte for byte, into a folder of
``<version>_<name>.sql`` files. The version reproduces the package's own order
(strictly increasing, checked); ``name`` is the ``slug`` of the original name (lowercase,
each run of characters outside ``[a-z0-9]`` turned into one ``_``):

- procrastinate (``procrastinate/sql/migrations/XX.YY.ZZ_NN_name.sql``): applied in lexical
  order, which is semver order because every part is zero-padded; version = the digits
  ``XXYYZZNN`` as one number (``00.05.00_02_drop_started_at_column.sql`` ->
  ``00050002_drop_started_at_column.sql``). ``schema.sql``, ``queries.sql`` and
  ``future_migrations/`` sit outside the folder.
- matrix-synapse (``synapse/storage/schema/{common,main,state}/``): what Synapse's
  ``prepare_database.py`` runs on a new PostgreSQL database: the three
  ``full_schemas/72/full.sql.postgres``, then for each schema version 73..86 the
  ``delta/<v>/`` files of the three folders together, sorted by (file name, path); only
  ``*.sql`` and ``*.sql.postgres`` (``*.sql.sqlite`` is SQLite's, ``*.py`` needs Synapse).
  version = ``v * 1000 + position in v``; name = ``<folder>_<file name without .sql[.postgres]>``
  (``main/delta/73/05old_push_actions.sql.postgres`` -> ``73008_main_05old_push_actions.sql``).
  It stops at 86: 87's ``02_per_connection_state.sql`` has a ``$%AUTO_INCREMENT_PRIMARY_KEY%$``
  placeholder that only Synapse's Python replaces, and later deltas need it.
- litellm-proxy-extras (``litellm_proxy_extras/migrations/<folder>/migration.sql``): Prisma
  applies the folders in lexical order of their names, which is not numeric
  (``20260108_add_user_email_lower_idx`` sorts after ``20260108...`` 14-digit ones) and not
  unique (three pairs share a timestamp); version = the rank, 4 digits
  (``20250326162113_baseline/`` -> ``0001_baseline.sql``).
- temboard (``temboardui/model/versions/NNN_name.sql``): ``sorted()`` base names; version =
  ``NNN + 1`` so that none is 0 (``007_drop-alembic.sql`` -> ``008_drop_alembic.sql``). Its
  ``GRANT … TO temboard`` needs the role (``Package.roles``).
- @workflow/world-postgres (``package/src/drizzle/migrations/NNNN_tag.sql``): drizzle applies
  the entries of ``meta/_journal.json`` in their order; version = ``NNNN + 1``
  (``0015_move_enums_to_workflow_schema.sql`` -> ``0016_move_enums_to_workflow_schema.sql``).
- umami (``package/db/postgresql/migrations/NN_name/migration.sql``): Prisma, lexical order;
  version = ``NN`` (``01_init/`` -> ``01_init.sql``).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Literal

from psycopg.conninfo import conninfo_to_dict, make_conninfo

from tests.support.cli import ROOT

CACHE = ROOT / ".cache" / "corpus"
NAME = re.compile(r"(\d+)_([a-z0-9_]+)\.sql")
DOWNLOAD_TIMEOUT_SECONDS = 300
BOILERPLATE = ("npm error A complete log", "npm error If you are behind a proxy", "npm error network If you are behind")
# The wheels pip is asked for whatever the host: the same pinned files on every machine and Python
# (Synapse's is a platform wheel; the SQL inside is the same in all of them).
PIP_TARGET = ("--platform", "manylinux_2_28_x86_64", "--python-version", "3.11", "--implementation", "cp")


class CorpusUnavailableError(Exception):
    """Raised when a package is neither cached nor downloadable (registry or client unreachable)."""


class CorpusChecksumError(Exception):
    """Raised when a download's or a cached archive's sha256 is not the pinned one."""


@dataclass(frozen=True)
class CorpusFile:
    """One migration of a built folder: its pgsluice name and where it came from in the package."""

    name: str
    source: str

    @property
    def version(self) -> int:
        """The leading digits of the name, as pgsluice reads them."""
        return int(self.name.split("_", 1)[0])

    @property
    def label(self) -> str:
        """The name without version and ``.sql``: what the history's ``name`` column holds."""
        return self.name.split("_", 1)[1].removesuffix(".sql")


Order = Callable[[Mapping[str, bytes]], list[tuple[str, str]]]
"""The package's own order: (path under the package's folder, new name) for each migration, first to last."""


@dataclass(frozen=True)
class Package:
    """A pinned package and the migration folder inside it."""

    key: str
    registry: Literal["pypi", "npm"]
    name: str
    version: str
    archive: str
    sha256: str
    folder: str
    order: Order
    files: int
    roles: tuple[str, ...] = ()

    @property
    def spec(self) -> str:
        """The requirement as the registry's client spells it."""
        return f"{self.name}=={self.version}" if self.registry == "pypi" else f"{self.name}@{self.version}"


def slug(text: str) -> str:
    """Lowercase; every run of characters outside ``[a-z0-9]`` becomes one ``_``; trimmed."""
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


def _children(members: Mapping[str, bytes], folder: str = "") -> list[str]:
    """The file names directly inside ``folder`` (a path under the package's folder)."""
    prefix = f"{folder}/" if folder else ""
    return [p[len(prefix) :] for p in members if p.startswith(prefix) and "/" not in p[len(prefix) :]]


def _subfolders(members: Mapping[str, bytes], folder: str = "") -> list[str]:
    """The names of the folders directly inside ``folder``."""
    prefix = f"{folder}/" if folder else ""
    return sorted(
        {p[len(prefix) :].split("/", 1)[0] for p in members if p.startswith(prefix) and "/" in p[len(prefix) :]}
    )


def procrastinate_order(members: Mapping[str, bytes]) -> list[tuple[str, str]]:
    """``XX.YY.ZZ_NN_name.sql`` in lexical order, as ``XXYYZZNN_name.sql``."""
    out = []
    for name in sorted(n for n in _children(members) if n.endswith(".sql")):
        match = re.fullmatch(r"(\d\d)\.(\d\d)\.(\d\d)_(\d\d)_(.+)\.sql", name)
        if match is None:
            raise ValueError(f"procrastinate: unexpected migration name {name!r}")
        out.append((name, f"{''.join(match.group(1, 2, 3, 4))}_{slug(match.group(5))}.sql"))
    return out


SYNAPSE_LAST_VERSION = 86


def synapse_order(members: Mapping[str, bytes]) -> list[tuple[str, str]]:
    """Full schema 72, then the deltas of each version to 86, the three databases' files merged by (name, path)."""
    out = []
    for version in range(72, SYNAPSE_LAST_VERSION + 1):
        folder = "full_schemas/72" if version == 72 else f"delta/{version}"
        entries = sorted(
            (name, f"{db}/{folder}/{name}")
            for db in ("common", "main", "state")
            for name in _children(members, f"{db}/{folder}")
            if name.endswith((".sql", ".sql.postgres"))
        )
        for position, (name, path) in enumerate(entries, 1):
            base = re.sub(r"\.sql(\.postgres)?$", "", name)
            out.append((path, f"{version * 1000 + position}_{path.split('/', 1)[0]}_{slug(base)}.sql"))
    return out


def litellm_order(members: Mapping[str, bytes]) -> list[tuple[str, str]]:
    """Prisma folders in lexical order, numbered by rank (their timestamps are neither unique nor numeric-ordered)."""
    return [
        (f"{folder}/migration.sql", f"{rank:04d}_{slug(folder.partition('_')[2])}.sql")
        for rank, folder in enumerate(_subfolders(members), 1)
    ]


def temboard_order(members: Mapping[str, bytes]) -> list[tuple[str, str]]:
    """``NNN_name.sql`` sorted, as ``<NNN + 1>_name.sql``."""
    out = []
    for name in sorted(n for n in _children(members) if n.endswith(".sql")):
        match = re.fullmatch(r"(\d+)_(.+)\.sql", name)
        if match is None:
            raise ValueError(f"temboard: unexpected migration name {name!r}")
        out.append((name, f"{int(match.group(1)) + 1:03d}_{slug(match.group(2))}.sql"))
    return out


def drizzle_order(members: Mapping[str, bytes]) -> list[tuple[str, str]]:
    """The entries of ``meta/_journal.json`` in order, as ``<NNNN + 1>_tag.sql``; every ``.sql`` must be listed."""
    tags = [str(entry["tag"]) for entry in json.loads(members["meta/_journal.json"])["entries"]]
    on_disk = sorted(n for n in _children(members) if n.endswith(".sql"))
    if sorted(f"{tag}.sql" for tag in tags) != on_disk:
        raise ValueError(f"drizzle: the journal lists {tags}, the folder holds {on_disk}")
    out = []
    for tag in tags:
        number, _, name = tag.partition("_")
        out.append((f"{tag}.sql", f"{int(number) + 1:04d}_{slug(name)}.sql"))
    return out


def prisma_order(members: Mapping[str, bytes]) -> list[tuple[str, str]]:
    """Prisma folders ``NN_name/`` in lexical order, as ``NN_name.sql``."""
    return [
        (f"{folder}/migration.sql", f"{folder.partition('_')[0]}_{slug(folder.partition('_')[2])}.sql")
        for folder in _subfolders(members)
    ]


PACKAGES = (
    Package(
        key="procrastinate",
        registry="pypi",
        name="procrastinate",
        version="3.10.0",
        archive="procrastinate-3.10.0-py3-none-any.whl",
        sha256="949ad25b4377c30e03a9d0e053d15dfa47ef02b3f12ae8a7f3254686183c152c",
        folder="procrastinate/sql/migrations",
        order=procrastinate_order,
        files=38,
    ),
    Package(
        key="synapse",
        registry="pypi",
        name="matrix-synapse",
        version="1.163.2",
        archive="matrix_synapse-1.163.2-cp310-abi3-manylinux_2_28_x86_64.whl",
        sha256="6cecae98b6e1b55dd68e689329cf1677cba103d4160c320f04b26bd081ff1558",
        folder="synapse/storage/schema",
        order=synapse_order,
        files=72,
    ),
    Package(
        key="litellm",
        registry="pypi",
        name="litellm-proxy-extras",
        version="0.4.110",
        archive="litellm_proxy_extras-0.4.110-py3-none-any.whl",
        sha256="2a488653b7e5eb97e7a2c84fb67818dfbdbd1d799cd61832f1b5d151c229e907",
        folder="litellm_proxy_extras/migrations",
        order=litellm_order,
        files=220,
    ),
    Package(
        key="temboard",
        registry="pypi",
        name="temboard",
        version="9.0.1",
        archive="temboard-9.0.1-py2.py3-none-any.whl",
        sha256="3d6b4d267fb3f25d2bc276ed677c034262ec21f31755989323af9f3ddded5748",
        folder="temboardui/model/versions",
        order=temboard_order,
        files=12,
        roles=("temboard",),
    ),
    Package(
        key="workflow",
        registry="npm",
        name="@workflow/world-postgres",
        version="4.3.7",
        archive="workflow-world-postgres-4.3.7.tgz",
        sha256="2aa374a640cc7fce78dbc7ad6d73e09691a8361dced534b902c90a3c9f725fd8",
        folder="package/src/drizzle/migrations",
        order=drizzle_order,
        files=12,
    ),
    Package(
        key="umami",
        registry="npm",
        name="umami",
        version="2.10.0",
        archive="umami-2.10.0.tgz",
        sha256="1544b6862a5bf5e19dc58c8c382f8de3fd9f3f1c2b4110fbf7de9d7f4bd58850",
        folder="package/db/postgresql/migrations",
        order=prisma_order,
        files=4,
    ),
)


def file_sha256(path: Path) -> str:
    """The hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _download_command(package: Package, into: Path) -> list[str]:
    """The registry client's command that writes the package's archive into ``into``."""
    if package.registry == "pypi":
        return [
            sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check", "--no-deps",
            "--only-binary", ":all:", "--retries", "1", "--timeout", "15", *PIP_TARGET,
            "--dest", str(into), package.spec,
        ]  # fmt: skip
    npm = shutil.which("npm")
    if npm is None:
        raise CorpusUnavailableError(f"{package.spec} is not cached and npm, which would download it, is not installed")
    return [
        npm, "pack", "--quiet", "--ignore-scripts", "--fetch-retries", "0", "--fetch-timeout", "15000",
        "--pack-destination", str(into), package.spec,
    ]  # fmt: skip


def fetch(package: Package, cache: Path = CACHE) -> Path:
    """The package's archive in ``cache``, downloaded first when absent; its sha256 is always checked."""
    target = cache / package.archive
    if not target.is_file():
        cache.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cache, prefix=".download-") as tmp:
            command = _download_command(package, Path(tmp))
            try:
                done = subprocess.run(
                    command, capture_output=True, text=True, timeout=DOWNLOAD_TIMEOUT_SECONDS, check=False, cwd=tmp
                )
            except subprocess.TimeoutExpired as exc:
                raise CorpusUnavailableError(
                    f"{package.spec} is not cached in {cache} and downloading it took over {exc.timeout:.0f} s"
                ) from exc
            if done.returncode != 0:
                raise CorpusUnavailableError(
                    f"{package.spec} is not cached in {cache} and {package.registry} did not serve it "
                    f"(exit {done.returncode}): {_gist(done.stderr or done.stdout)}"
                )
            got = Path(tmp) / package.archive
            if not got.is_file():
                raise CorpusChecksumError(
                    f"{package.spec}: expected {package.archive}, the registry gave {sorted(os.listdir(tmp))}"
                )
            _check_sha256(package, got, "the registry served other bytes; nothing was cached: find out why first")
            os.replace(got, target)
    _check_sha256(package, target, "the cached file is not the pinned one: delete it to download it again")
    return target


def _gist(output: str) -> str:
    """The first lines of a client's error output that say something (not npm's log-file and proxy boilerplate)."""
    lines = [line.strip() for line in output.splitlines()]
    said = [line for line in lines if line not in ("", "npm error") and not line.startswith(BOILERPLATE)]
    return " | ".join(said[:3])


def _check_sha256(package: Package, path: Path, advice: str) -> None:
    """CorpusChecksumError, ending with ``advice``, unless ``path`` has the pinned sha256."""
    actual = file_sha256(path)
    if actual != package.sha256:
        raise CorpusChecksumError(
            f"{package.spec}: {path.name} has sha256 {actual}, expected {package.sha256}; {advice}"
        )


def read_folder(archive: Path, folder: str) -> dict[str, bytes]:
    """Every regular file under ``folder`` in a wheel (zip) or an npm tarball, by its path under ``folder``."""
    prefix = folder.rstrip("/") + "/"
    members: dict[str, bytes] = {}
    if archive.suffix == ".whl":
        with zipfile.ZipFile(archive) as wheel:
            for info in wheel.infolist():
                if info.filename.startswith(prefix) and not info.is_dir():
                    members[info.filename[len(prefix) :]] = wheel.read(info)
        return members
    with tarfile.open(archive, "r:gz") as tarball:
        for member in tarball:
            if member.name.startswith(prefix) and member.isfile():
                data = tarball.extractfile(member)
                if data is not None:
                    members[member.name[len(prefix) :]] = data.read()
    return members


def build_folder(package: Package, archive: Path, dest: Path) -> list[CorpusFile]:
    """Write the package's migrations into ``dest`` as ``<version>_<name>.sql``, bytes unchanged; in order."""
    members = read_folder(archive, package.folder)
    ordered = package.order(members)
    files = [CorpusFile(new, f"{package.folder}/{path}") for path, new in ordered]
    problems = [f.name for f in files if NAME.fullmatch(f.name) is None]
    versions = [f.version for f in files]
    if problems:
        raise ValueError(f"{package.key}: names pgsluice would refuse: {problems}")
    if any(a >= b for a, b in pairwise(versions)):
        raise ValueError(f"{package.key}: the versions do not strictly increase in the package's order: {versions}")
    if len(files) != package.files:
        raise ValueError(f"{package.key}: {len(files)} migrations in {package.folder}, expected {package.files}")
    dest.mkdir(parents=True, exist_ok=True)
    for path, new in ordered:
        (dest / new).write_bytes(members[path])
    return files


@dataclass(frozen=True)
class Client:
    """psql and pg_dump of one PostgreSQL installation, connected by URL with the password in the environment."""

    bindir: Path | None

    def program(self, name: str) -> str:
        """The full path of ``name`` (from ``bindir``, else PATH); CorpusUnavailableError when it is absent."""
        found = shutil.which(name, path=str(self.bindir)) if self.bindir else shutil.which(name)
        if found is None:
            raise CorpusUnavailableError(
                f"{name} not found (in {self.bindir or 'PATH'}): install the PostgreSQL client"
            )
        return found

    def _connect(self, url: str) -> tuple[str, dict[str, str]]:
        """A conninfo without the password, and an environment carrying it (no inherited PG* variable)."""
        params = conninfo_to_dict(url)
        password = params.pop("password", None)
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["PGCLIENTENCODING"] = "UTF8"  # the files are UTF-8, whatever this process's locale says
        if password is not None:
            env["PGPASSWORD"] = str(password)
        return make_conninfo("", **params), env

    def psql_file(self, url: str, path: Path) -> subprocess.CompletedProcess[str]:
        """``psql -X -v ON_ERROR_STOP=1 -f FILE`` against ``url``; the finished process."""
        conninfo, env = self._connect(url)
        argv = [self.program("psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-f", str(path), "-d", conninfo]
        return subprocess.run(
            argv, env=env, capture_output=True, encoding="utf-8", errors="replace", timeout=300, check=False
        )

    def pg_dump(self, url: str, *args: str) -> str:
        """``pg_dump ARGS`` of ``url``, decoded from UTF-8; AssertionError with pg_dump's stderr when it fails."""
        conninfo, env = self._connect(url)
        done = subprocess.run(
            [self.program("pg_dump"), *args, "-d", conninfo],
            env=env,
            capture_output=True,
            encoding="utf-8",  # the databases are UTF8 and so is the client encoding set above
            timeout=300,
            check=False,
        )
        assert done.returncode == 0, f"pg_dump {' '.join(args)} failed: {done.stderr}"
        return done.stdout


def comparable_schema(dump: str) -> str:
    """A plain dump without ``--`` comment lines and ``\\restrict``/``\\unrestrict`` lines (their key is random)."""
    kept = [line for line in dump.splitlines() if not line.startswith(("--", "\\restrict ", "\\unrestrict "))]
    return "\n".join(kept) + "\n"
