"""discover(folder) → migrations: names, versions, directives, checksums. No I/O, no database.

The folder is read by ``source.read_folder``; this module only judges what it read.
"""

from __future__ import annotations

import codecs
import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property

from pgsluice.problems import Problem
from pgsluice.records import Execution
from pgsluice.script import include_targets
from pgsluice.source import FolderContent
from pgsluice.sql import ALLOW_UNPARSED, Analysis, SqlIssue, analyze

FILE_NAME = re.compile(r"^(?P<version>\d+)_(?P<name>[a-z0-9_]+?)(?P<down>\.down)?\.sql$")
REPEATABLE_NAME = re.compile(r"^R_(?P<name>[a-z0-9_]+)\.sql$")
DIRECTIVE = re.compile(r"^--\s*pgsluice:\s*(?P<value>.*?)\s*$")
ALLOW = re.compile(r"^allow\s+(?P<rule>[a-z0-9-]+)\s*(?:--\s*(?P<reason>.*))?$", re.IGNORECASE)
KNOWN_DIRECTIVES = ("no-transaction", "allow <rule-id> -- <reason>")
_ROLLBACK_WORDS = re.compile(r"rollback|revert|undo|down")
_BOM = b"\xef\xbb\xbf"
TEMPLATE_MARK = "by pgsluice new."
"""In the header 'pgsluice new' writes: a file of comments only that still has it was never written."""


@dataclass(frozen=True)
class Directives:
    """What a file's leading ``-- pgsluice:`` comments ask for."""

    no_transaction: bool = False
    allows: tuple[tuple[str, str], ...] = ()
    """``(rule id, reason)`` for each ``-- pgsluice: allow <rule-id> -- <reason>``."""

    def allowed(self, rule: str) -> str | None:
        """The reason given for accepting ``rule`` in this file, or None."""
        return next((reason for allowed, reason in self.allows if allowed == rule), None)


@dataclass(frozen=True)
class Migration:
    """One ``NNN_name.sql`` file."""

    version: int
    name: str
    filename: str
    content: bytes = field(repr=False, compare=False)
    files: Mapping[str, bytes] = field(default_factory=dict, repr=False, compare=False)
    """Every file of the folder it may include."""
    directives: Directives = field(default_factory=Directives)
    down_filename: str | None = None
    file_sha256: str = field(default="", compare=False)
    repeatable: bool = False
    """An ``R_<name>.sql`` file: applied after the versioned ones whenever its checksum changes."""
    variables: tuple[tuple[str, str], ...] = field(default=(), compare=False, repr=False)
    max_statements: int | None = field(default=None, compare=False, repr=False)

    @cached_property
    def analysis(self) -> Analysis:
        """The file as psql would run it, computed on first use (a no-op run never needs it).

        A file with a statement PostgreSQL refuses inside a transaction block (CREATE INDEX
        CONCURRENTLY…) runs as psql runs it, statement by statement, even without the
        ``no-transaction`` directive: its checksum is the same either way."""
        sources = {**self.files, self.filename: self.content}
        variables = dict(self.variables)
        limit = self.max_statements
        directive = self.directives.no_transaction
        found = analyze(self.filename, sources, variables=variables, no_transaction=directive, max_statements=limit)
        if not directive and found.non_transactional:
            return analyze(self.filename, sources, variables=variables, no_transaction=True, max_statements=limit)
        return found

    @property
    def no_transaction(self) -> bool:
        """Runs statement by statement (the directive, or a statement that cannot run in a transaction)."""
        return self.directives.no_transaction or bool(self.analysis.non_transactional)

    @property
    def checksum(self) -> str:
        """The token-stream checksum stored in the history table."""
        return self.analysis.checksum

    @property
    def execution(self) -> Execution:
        """How it runs, as the history's ``execution`` column says: transaction, no-transaction, comments only."""
        if self.analysis.comment_only:
            return Execution.COMMENTS_ONLY
        return Execution.NO_TRANSACTION if self.no_transaction else Execution.TRANSACTION

    def _problem(self, issue: SqlIssue, message: str | None = None, hint: str | None = None) -> Problem:
        where = issue.origin.source
        prefix = f"{self.filename}" if where == self.filename else f"{self.filename} (in {where})"
        return Problem(
            f"{prefix} line {issue.origin.line}: {message or issue.message}",
            hint if hint is not None else issue.hint,
            filename=self.filename,
            line=issue.origin.line,
            version=self.version,
        )

    def sql_problems(self, *, strict_syntax: bool = False) -> list[Problem]:
        """What stops this file from being applied: transaction control, psql-only commands, undefined
        variables; with ``strict_syntax`` (lint) also SQL pgsluice's parser cannot parse, unless allowed."""
        analysis = self.analysis
        problems = [self._problem(issue) for issue in analysis.errors]
        if analysis.comment_only and TEMPLATE_MARK.encode() in self.content:
            problems.append(
                Problem(
                    f"{self.filename}: has no SQL statement: it is still the template 'pgsluice new' wrote",
                    "write the migration's SQL, or delete the file (a file of comments only is a deliberate "
                    "no-op: remove the 'Created … by pgsluice new.' line to keep it as one)",
                    filename=self.filename,
                    version=self.version,
                )
            )
        if strict_syntax and not self.directives.allowed(ALLOW_UNPARSED):
            problems += [self._problem(issue) for issue in analysis.parse_errors]
        return problems

    def warnings(self, *, strict_syntax: bool = False) -> list[Problem]:
        """What is worth saying but does not stop the run."""
        analysis = self.analysis
        found: list[Problem] = []
        if not strict_syntax or self.directives.allowed(ALLOW_UNPARSED):
            found += [
                self._problem(
                    issue,
                    hint="it is sent to the server as written, and the server judges it",
                )
                for issue in analysis.parse_errors
            ]
        if analysis.non_transactional and not self.directives.no_transaction:
            first = analysis.non_transactional[0]
            found.append(
                self._problem(
                    first,
                    message=f"{first.message} cannot run inside a transaction: the file runs statement by statement, "
                    "as psql runs it, not atomically",
                    hint="say so in the file with a first line '-- pgsluice: no-transaction'",
                )
            )
        return found

    def lint_notes(self) -> list[Problem]:
        """Meta-commands pgsluice ignores, for ``lint``."""
        return [self._problem(issue) for issue in self.analysis.ignored]


@dataclass(frozen=True)
class Discovery:
    """The migrations found, in version order, and what is wrong with the folder."""

    migrations: tuple[Migration, ...]
    problems: tuple[Problem, ...]
    warnings: tuple[Problem, ...]
    repeatables: tuple[Migration, ...] = ()
    """``R_<name>.sql`` files, in name order."""
    files: Mapping[str, bytes] = field(default_factory=dict, repr=False)
    """Every file read (down files and includes too), by path relative to the folder."""

    def fingerprint(self) -> str:
        """What the folder is, in one hash: every migration's version and bytes (a fleet's rollout id)."""
        parts = [f"{m.version}:{m.file_sha256}" for m in self.migrations]
        parts += [f"R:{m.name}:{m.file_sha256}" for m in self.repeatables]
        return _sha256("\n".join(parts).encode())

    def down_file(self, migration: Migration) -> Migration | None:
        """``migration``'s ``.down.sql`` from the folder, as a Migration; None when there is none (or it is
        invalid: ``down_problems`` says why)."""
        down, _ = self._down(migration)
        return down

    def down_problems(self, migration: Migration) -> list[Problem]:
        """What is wrong with ``migration``'s ``.down.sql``."""
        _, problems = self._down(migration)
        return problems

    def _down(self, migration: Migration) -> tuple[Migration | None, list[Problem]]:
        if migration.down_filename is None:
            return None, []
        return down_of(
            migration.version,
            migration.name,
            filename=migration.down_filename,
            content=self.files[migration.down_filename],
            files=self.files,
            variables=migration.variables,
            max_statements=migration.max_statements,
        )


def _directives(text: str, filename: str) -> tuple[Directives, list[Problem]]:
    no_transaction = False
    allows: list[tuple[str, str]] = []
    problems: list[Problem] = []
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped:
            continue
        if not stripped.startswith("--"):
            break  # directives live in the leading comment block only
        match = DIRECTIVE.match(stripped)
        if not match:
            continue
        value = match["value"]
        allow = ALLOW.match(value)
        if value.lower() == Execution.NO_TRANSACTION:
            no_transaction = True
        elif allow and (allow["reason"] or "").strip():
            allows.append((allow["rule"].lower(), allow["reason"].strip()))
        elif allow:
            problems.append(
                Problem(
                    f"{filename} line {number}: 'allow {allow['rule']}' gives no reason",
                    f"write why: -- pgsluice: allow {allow['rule']} -- <reason>",
                    filename=filename,
                    line=number,
                )
            )
        else:
            problems.append(
                Problem(
                    f"{filename} line {number}: unknown directive {value!r}",
                    f"known directives: {', '.join(KNOWN_DIRECTIVES)}",
                    filename=filename,
                    line=number,
                )
            )
    return Directives(no_transaction, tuple(allows)), problems


def _utf8_problem(filename: str, content: bytes, version: int) -> Problem | None:
    """Checked in 1 MiB steps, so a large data file is never held twice."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    view = memoryview(content)
    step = 1024 * 1024
    for start in range(0, len(content) or 1, step):
        try:
            decoder.decode(view[start : start + step], final=start + step >= len(content))
        except UnicodeDecodeError as exc:
            offset = start + exc.start
            line = content.count(b"\n", 0, offset) + 1
            return Problem(
                f"{filename} line {line}: not valid UTF-8 (byte offset {offset})",
                "re-save the file as UTF-8",
                filename=filename,
                line=line,
                version=version,
            )
    return None


def _one_file(
    filename: str,
    version: int,
    name: str,
    files: Mapping[str, bytes],
    *,
    variables: tuple[tuple[str, str], ...],
    max_statements: int | None,
    repeatable: bool = False,
    down_filename: str | None = None,
) -> tuple[Migration | None, list[Problem]]:
    """A file as a Migration, or the problems that keep it from being one (encoding, directives, emptiness)."""
    content = files[filename]
    bad_encoding = _utf8_problem(filename, content, version)
    if bad_encoding is not None:
        return None, [bad_encoding]
    head = content[:65536].decode("utf-8", errors="ignore")
    directives, problems = _directives(head, filename)
    if not content or content.isspace():  # strip() would copy a large file
        problems.append(
            Problem(
                f"{filename}: the file is empty",
                "write the migration's SQL, or delete the file",
                filename=filename,
                version=version,
            )
        )
        return None, problems
    migration = Migration(
        version=version,
        name=name,
        filename=filename,
        content=content,
        files=files,
        directives=directives,
        down_filename=down_filename,
        file_sha256=_sha256(content, *_included(filename, files)),
        variables=variables,
        max_statements=max_statements,
        repeatable=repeatable,
    )
    return migration, problems


def down_of(
    version: int,
    name: str,
    *,
    filename: str,
    content: bytes,
    files: Mapping[str, bytes],
    variables: tuple[tuple[str, str], ...] = (),
    max_statements: int | None = None,
) -> tuple[Migration | None, list[Problem]]:
    """A down migration as a Migration: from its ``.down.sql`` file, or from the SQL stored in the history
    (``filename`` then says so). Run and judged like an up file: same transaction rules and directives."""
    return _one_file(
        filename,
        version,
        name,
        {**files, filename: content.removeprefix(_BOM)},
        variables=variables,
        max_statements=max_statements,
    )


def _sha256(*parts: bytes) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part)
    return digest.hexdigest()


def discover(
    folder: FolderContent | Iterable[tuple[str, bytes]],
    variables: Mapping[str, str] | None = None,
    *,
    max_statements: int | None = None,
) -> Discovery:
    """Judge the ``.sql`` files of a migrations folder (or of ``(name, bytes)`` pairs)."""
    if not isinstance(folder, FolderContent):
        folder = FolderContent.of(folder)
    problems: list[Problem] = list(folder.problems)
    by_version: dict[int, list[str]] = {}
    downs: dict[int, str] = {}
    repeatable_names: list[tuple[str, str]] = []
    for filename in folder.names:
        repeatable = REPEATABLE_NAME.match(filename)
        if repeatable:
            repeatable_names.append((filename, repeatable["name"]))
            continue
        match = FILE_NAME.match(filename)
        if match is None:
            problems.append(
                Problem(
                    f"{filename}: not a migration file name",
                    "name it NNN_name.sql: digits, an underscore, then lowercase letters, digits and "
                    "underscores (a rollback script: NNN_name.down.sql; a repeatable migration: R_name.sql)",
                    filename=filename,
                )
            )
            continue
        version = int(match["version"])
        if match["down"]:
            downs[version] = filename
        else:
            by_version.setdefault(version, []).append(filename)

    files = {name: content.removeprefix(_BOM) for name, content in folder.files.items()}
    pairs = tuple(sorted((variables or {}).items()))
    migrations: list[Migration] = []
    for version in sorted(by_version):
        names = by_version[version]
        if len(names) > 1:
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
                    filename=names[0],
                    version=version,
                )
            )
            continue
        filename = names[0]
        match = FILE_NAME.match(filename)
        assert match is not None  # noqa: S101 - matched above
        migration, found = _one_file(
            filename,
            version,
            match["name"],
            files,
            variables=pairs,
            max_statements=max_statements,
            down_filename=downs.get(version),
        )
        problems.extend(found)
        if migration is not None:
            migrations.append(migration)
    repeatables: list[Migration] = []
    for filename, name in repeatable_names:
        migration, found = _one_file(
            filename, 0, name, files, variables=pairs, max_statements=max_statements, repeatable=True
        )
        problems.extend(found)
        if migration is not None:
            repeatables.append(migration)

    warnings = [
        Problem(
            f"{name}: rollback script for version {version}, which has no migration file",
            "rename or remove it",
            filename=name,
            version=version,
        )
        for version, name in sorted(downs.items())
        if version not in by_version
    ]
    return Discovery(tuple(migrations), tuple(problems), tuple(warnings), tuple(repeatables), files)


def _included(filename: str, files: Mapping[str, bytes]) -> list[bytes]:
    """The content of every file ``filename`` includes, transitively, so that editing one counts."""
    seen: list[str] = []
    queue = [filename]
    while queue:
        current = queue.pop()
        for target in include_targets(current, files.get(current, b"")):
            if target in files and target not in seen and target != filename:
                seen.append(target)
                queue.append(target)
    return [files[name] for name in seen]
