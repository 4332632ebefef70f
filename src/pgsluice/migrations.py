"""discover(files) → migrations: names, versions, directives, checksums. No I/O, no database.

The folder is read by ``source.read_folder``; this module only judges what it read.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cached_property

from pgsluice.sql import Analysis, analyze, line_col

FILE_NAME = re.compile(r"^(?P<version>\d+)_(?P<name>[a-z0-9_]+?)(?P<down>\.down)?\.sql$")
DIRECTIVE = re.compile(r"^--\s*pgsluice:\s*(?P<value>.*?)\s*$")
KNOWN_DIRECTIVES = ("no-transaction",)
_ROLLBACK_WORDS = re.compile(r"rollback|revert|undo|down")


@dataclass(frozen=True)
class Problem:
    """Something wrong with the files that stops a run before anything is applied."""

    message: str
    hint: str
    filename: str | None = None
    line: int | None = None
    version: int | None = None

    def __str__(self) -> str:
        return f"{self.message}: {self.hint}" if self.hint else self.message


@dataclass(frozen=True)
class Migration:
    """One ``NNN_name.sql`` file."""

    version: int
    name: str
    filename: str
    text: str
    no_transaction: bool = False
    down_filename: str | None = None
    file_sha256: str = field(default="", compare=False)

    @cached_property
    def analysis(self) -> Analysis:
        """The parser's view of the file, computed on first use (a no-op run never needs it)."""
        return analyze(self.text, no_transaction=self.no_transaction)

    @property
    def checksum(self) -> str:
        """The token-stream checksum stored in the history table."""
        return self.analysis.checksum

    def sql_problems(self) -> list[Problem]:
        """What stops this file from being applied: transaction control, missing directive, psql-only syntax."""
        problems: list[Problem] = []
        analysis = self.analysis
        if analysis.parse_error is None and not analysis.statements:
            problems.append(
                Problem(
                    f"{self.filename}: has no SQL statement",
                    "write the migration's SQL, or delete the file",
                    self.filename,
                    None,
                    self.version,
                )
            )
        for issue in analysis.unsupported:
            line, _ = line_col(self.text, issue.offset)
            problems.append(
                Problem(
                    f"{self.filename} line {line}: {issue.message}",
                    "rewrite it as plain SQL",
                    self.filename,
                    line,
                    self.version,
                )
            )
        if analysis.parse_error is not None:
            return problems  # the server will judge it; warnings() says so
        for issue in analysis.forbidden_transaction_control:
            line, _ = line_col(self.text, issue.offset)
            problems.append(
                Problem(
                    f"{self.filename} line {line}: transaction control {issue.message} is not allowed",
                    "pgsluice runs each migration in its own transaction; wrap the whole file in one "
                    "BEGIN; … COMMIT; or use none, and split the rest into separate migrations",
                    self.filename,
                    line,
                    self.version,
                )
            )
        if self.no_transaction and analysis.wrapped:
            problems.append(
                Problem(
                    f"{self.filename}: has the no-transaction directive but is wrapped in BEGIN; … COMMIT;",
                    "remove the directive or the wrapper",
                    self.filename,
                    1,
                    self.version,
                )
            )
        if not self.no_transaction:
            for issue in analysis.non_transactional:
                line, _ = line_col(self.text, issue.offset)
                problems.append(
                    Problem(
                        f"{self.filename} line {line}: {issue.message} cannot run inside a transaction block",
                        "put it in a migration of its own whose first line is '-- pgsluice: no-transaction'",
                        self.filename,
                        line,
                        self.version,
                    )
                )
        return problems

    def warnings(self) -> list[Problem]:
        """What is worth saying but does not stop the run."""
        error = self.analysis.parse_error
        if error is None:
            return []
        line, col = line_col(self.text, error.offset)
        return [
            Problem(
                f"{self.filename} line {line}, column {col}: pgsluice's parser cannot parse it ({error.message})",
                "it will be sent to the server whole, in one transaction, and the server will judge it",
                self.filename,
                line,
                self.version,
            )
        ]


@dataclass(frozen=True)
class Discovery:
    """The migrations found, in version order, and what is wrong with the folder."""

    migrations: tuple[Migration, ...]
    problems: tuple[Problem, ...]
    warnings: tuple[Problem, ...]


def _directives(text: str, filename: str) -> tuple[set[str], list[Problem]]:
    found: set[str] = set()
    problems: list[Problem] = []
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped:
            continue
        if not stripped.startswith("--"):
            break  # directives live in the leading comment block only
        match = DIRECTIVE.match(stripped)
        if match:
            value = match["value"].lower()
            if value in KNOWN_DIRECTIVES:
                found.add(value)
            else:
                problems.append(
                    Problem(
                        f"{filename} line {number}: unknown directive {match['value']!r}",
                        f"known directives: {', '.join(KNOWN_DIRECTIVES)}",
                        filename,
                        number,
                    )
                )
    return found, problems


def discover(files: Iterable[tuple[str, bytes]]) -> Discovery:
    """Judge the ``(file name, content)`` pairs of a migrations folder."""
    problems: list[Problem] = []
    by_version: dict[int, list[tuple[str, str]]] = {}
    downs: dict[int, str] = {}
    for filename, content in sorted(files):
        if not filename.endswith(".sql"):
            continue  # README.md, info.md and friends
        match = FILE_NAME.match(filename)
        if match is None:
            problems.append(
                Problem(
                    f"{filename}: not a migration file name",
                    "name it NNN_name.sql: digits, an underscore, then lowercase letters, digits and "
                    "underscores (a rollback script: NNN_name.down.sql)",
                    filename,
                )
            )
            continue
        version = int(match["version"])
        if match["down"]:
            downs[version] = filename
            continue
        try:
            text = content.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = content[: exc.start].count(b"\n") + 1
            problems.append(
                Problem(
                    f"{filename} line {line}: not valid UTF-8 (byte offset {exc.start})",
                    "re-save the file as UTF-8",
                    filename,
                    line,
                    version,
                )
            )
            continue
        text = text.removeprefix("\ufeff")
        by_version.setdefault(version, []).append((filename, text))

    migrations: list[Migration] = []
    for version in sorted(by_version):
        entries = by_version[version]
        if len(entries) > 1:
            names = [name for name, _ in entries]
            rollback = [n for n in names if _ROLLBACK_WORDS.search(n.split("_", 1)[1])]
            if len(rollback) == 1 and len(names) == 2:
                main = next(n for n in names if n != rollback[0])
                hint = f"if {rollback[0]} undoes {main}, rename it {main.removesuffix('.sql')}.down.sql"
            else:
                hint = "give each migration its own version number"
            problems.append(
                Problem(
                    f"version {version} is used by {len(names)} files: {', '.join(names)}",
                    hint,
                    names[0],
                    None,
                    version,
                )
            )
            continue
        filename, text = entries[0]
        directives, directive_problems = _directives(text, filename)
        problems.extend(directive_problems)
        if not text.strip():
            problems.append(
                Problem(
                    f"{filename}: the file is empty",
                    "write the migration's SQL, or delete the file",
                    filename,
                    None,
                    version,
                )
            )
            continue
        match = FILE_NAME.match(filename)
        assert match is not None  # noqa: S101 - matched above
        migration = Migration(
            version=version,
            name=match["name"],
            filename=filename,
            text=text,
            no_transaction="no-transaction" in directives,
            down_filename=downs.get(version),
            file_sha256=hashlib.sha256(text.encode()).hexdigest(),
        )
        migrations.append(migration)

    warnings = [
        Problem(
            f"{name}: rollback script for version {version}, which has no migration file",
            "rename or remove it",
            name,
            None,
            version,
        )
        for version, name in sorted(downs.items())
        if version not in by_version
    ]
    return Discovery(tuple(migrations), tuple(problems), tuple(warnings))
