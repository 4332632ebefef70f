"""A psql script, split as psql splits it: statements, backslash meta-commands and COPY data. No I/O.

psql is the reference for what a migration file means, and ``psqlscan.l`` defines how psql
cuts a file into statements: a semicolon ends a statement unless it is inside quotes,
dollar quotes, comments, parentheses, or the ``BEGIN … END`` of a SQL-standard function
body; a backslash outside quotes starts a meta-command that runs to the end of the line;
``:name``, ``:'name'`` and ``:"name"`` outside quotes are variables. This module follows
those rules on the file's bytes (UTF-8 is ASCII-compatible, as psql's lexer relies on),
without the SQL grammar: it works on files pglast cannot parse, and finds transaction
control, meta-commands and ``COPY … FROM STDIN`` data in them too.

Deliberate differences from psql (documented in the README, "Coming from psql"):
- an undefined ``:name`` is an error (psql sends it as written); inside ``[…]`` (an array
  slice such as ``a[1:n]``) and for all-digit names it is left as psql leaves it;
- a variable's value is inserted as text and not lexed again, so a value holding quotes,
  a semicolon, a dollar sign, a backslash or a comment is refused (use ``:'name'``);
- ``\\i`` and ``\\ir`` name files inside the migrations folder only.
"""

from __future__ import annotations

import posixpath
import re
import sys
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass, field

# psqlscan.l: ident_start [A-Za-z\200-\377_], ident_cont adds [0-9$]; variable_char [A-Za-z\200-\377_0-9].
_TOKEN = re.compile(
    rb"""
      (?P<ws>[ \t\r\f\v]+)
    | (?P<nl>\n)
    | (?P<line_comment>--[^\n]*)
    | (?P<block_comment>/\*)
    | (?P<estring>[eE]')
    | (?P<string>(?:[uU]&|[bBxXnN])?')
    | (?P<qident>(?:[uU]&)?")
    | (?P<dollar>\$(?:[A-Za-z\x80-\xff_][A-Za-z\x80-\xff_0-9]*)?\$)
    | (?P<param>\$[0-9]+)
    | (?P<ident>[A-Za-z\x80-\xff_][A-Za-z\x80-\xff_0-9$]*)
    | (?P<typecast>::|:=)
    | (?P<qvar>:'[A-Za-z\x80-\xff_0-9]+'|:"[A-Za-z\x80-\xff_0-9]+")
    | (?P<var>:[A-Za-z\x80-\xff_0-9]+)
    | (?P<backslash>\\)
    | (?P<open>\()
    | (?P<close>\))
    | (?P<bopen>\[)
    | (?P<bclose>\])
    | (?P<semi>;)
    | (?P<other>[0-9.]+|[^ \t\r\f\v\n'"$A-Za-z\x80-\xff_:\\();/\-\[\]0-9.]+|.)
    """,
    re.VERBOSE | re.DOTALL,
)
_BLANK = frozenset({"ws", "nl", "line_comment"})
_ESTRING_END = re.compile(rb"(?:[^'\\]|\\.|'')*'", re.DOTALL)
_COMMENT_MARK = re.compile(rb"/\*|\*/")
_META_NAME = re.compile(rb"[^\s\\]+")
_META_ARG = re.compile(
    rb"""
      (?P<ws>[ \t\r\f\v]+)
    | (?P<end>\n|\\\\)
    | (?P<squote>'(?:[^'\\]|\\.|'')*'?)
    | (?P<dquote>"(?:[^"]|"")*"?)
    | (?P<backtick>`)
    | (?P<qvar>:'[A-Za-z\x80-\xff_0-9]+'|:"[A-Za-z\x80-\xff_0-9]+")
    | (?P<var>:[A-Za-z\x80-\xff_0-9]+)
    | (?P<word>[^\s'"`:\\]+|:|\\)
    """,
    re.VERBOSE | re.DOTALL,
)
_ARG_ESCAPES = {"n": "\n", "t": "\t", "b": "\b", "r": "\r", "f": "\f"}
_UNSAFE_VALUE = re.compile(r"[;'\"$\\]|--|/\*")
_CREATE_ROUTINE = {b"create": "c", b"or": "o", b"replace": "r", b"function": "f", b"procedure": "p"}

INCLUDE_COMMANDS = ("i", "include", "ir", "include_relative")


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a piece starts: its file (relative to the migrations folder), byte offset and line."""

    source: str
    offset: int
    line: int


@dataclass(frozen=True, slots=True)
class SqlPiece:
    """One SQL statement as psql would send it."""

    text: str
    """What goes to the server: variables substituted, ``\\;`` as ``;``, without the final semicolon."""
    end: int
    """Where the statement as written (with its semicolon) ends in the source: what the checksum covers runs
    from ``origin.offset`` to here."""
    origin: Origin
    keywords: tuple[str, ...]
    """Its first top-level words, lowercased (``("begin",)``, ``("copy", …)``)."""
    copy_from_stdin: bool = False
    segments: tuple[tuple[int, int], ...] = ()
    """``(byte offset in text, source byte offset)`` per run: a copied run maps to where it is in the source,
    an inserted value to ``-1 - offset`` of its variable (see ``source_offset``)."""

    def source_offset(self, char_offset: int) -> int:
        """The byte offset in the source of character ``char_offset`` of ``text`` (for an error's position)."""
        byte = len(self.text[:char_offset].encode())
        chosen = self.segments[0] if self.segments else (0, self.origin.offset)
        for segment in self.segments:
            if segment[0] <= byte:
                chosen = segment
        out, src = chosen
        return -1 - src if src < 0 else src + (byte - out)


@dataclass(frozen=True, slots=True)
class MetaPiece:
    """One backslash meta-command (``\\set``, ``\\echo``, ``\\restrict``…)."""

    name: str
    args: tuple[str, ...]
    origin: Origin
    raw: bytes


@dataclass(frozen=True, slots=True)
class DataPiece:
    """The inline rows after ``COPY … FROM STDIN;``, up to a ``\\.`` line or the end of the file."""

    source: str
    start: int
    end: int
    origin: Origin


Piece = SqlPiece | MetaPiece | DataPiece


@dataclass(frozen=True, slots=True)
class ScriptProblem:
    """Something in the script that stops the run before anything is applied."""

    message: str
    hint: str
    origin: Origin


@dataclass(frozen=True)
class Script:
    """A file and what it includes, as a sequence of pieces in the order psql runs them."""

    pieces: tuple[Piece, ...]
    problems: tuple[ScriptProblem, ...]
    sources: tuple[str, ...]
    """Every file read, the file itself first, then its includes."""


@dataclass
class _Statement:
    """The statement being collected: where it starts, and what psql changes in it."""

    start: int = -1
    line: int = 0
    edits: list[tuple[int, int, bytes]] = field(default_factory=list)
    """``(start, end, replacement)`` in the source: substituted variables, ``\\;`` as ``;``."""
    keywords: list[str] = field(default_factory=list)
    routine: list[str] = field(default_factory=list)
    identifiers: int = 0
    paren: int = 0
    bracket: int = 0
    begin: int = 0

    def body(self, data: bytes, end: int) -> tuple[bytes, tuple[tuple[int, int], ...]]:
        """The statement's bytes as sent, and ``(byte offset in them, source byte offset)`` per run:
        a copied run maps to its source offset, an inserted value to ``-1 - offset`` of its variable."""
        if not self.edits:
            return data[self.start : end], ()
        parts: list[bytes] = []
        segments: list[tuple[int, int]] = []
        out = 0
        pos = self.start
        for start, stop, replacement in self.edits:
            segments.append((out, pos))
            parts.append(data[pos:start])
            out += start - pos
            segments.append((out, -1 - start))
            parts.append(replacement)
            out += len(replacement)
            pos = stop
        segments.append((out, pos))
        parts.append(data[pos:end])
        return b"".join(parts), tuple(segments)


class _Lexer:
    def __init__(
        self,
        sources: Mapping[str, bytes],
        *,
        variables: MutableMapping[str, str],
        pieces: list[Piece],
        problems: list[ScriptProblem],
        stack: tuple[str, ...],
        max_statements: int | None = None,
    ) -> None:
        self.max_statements = max_statements
        self.sources = sources
        self.variables = variables
        self.pieces = pieces
        self.problems = problems
        self.stack = stack
        self.source = stack[-1]
        self.data = sources[self.source]
        self.line = 1
        self.counted = 0  # self.line is the line of byte offset self.counted
        self.read: list[str] = []

    def line_of(self, offset: int) -> int:
        if offset >= self.counted:
            self.line += self.data.count(b"\n", self.counted, offset)
        else:
            self.line -= self.data.count(b"\n", offset, self.counted)
        self.counted = offset
        return self.line

    def origin(self, offset: int) -> Origin:
        return Origin(self.source, offset, self.line_of(offset))

    def problem(self, message: str, hint: str, offset: int) -> None:
        self.problems.append(ScriptProblem(message, hint, self.origin(offset)))

    def run(self) -> None:
        data, size, match = self.data, len(self.data), _TOKEN.match
        pos, stmt = 0, _Statement()
        while pos < size:
            if self._too_many(pos):
                return
            m = match(data, pos)
            assert m is not None  # noqa: S101 - the last alternative matches any byte
            kind, end = m.lastgroup, m.end()
            if kind in _BLANK or (stmt.start < 0 and kind == "semi"):
                pos = end  # whitespace, a line comment, or an empty statement (psql sends nothing)
                continue
            if stmt.start < 0 and kind != "backslash":
                stmt.start, stmt.line = pos, self.line_of(pos)
            if kind == "backslash":
                pos = self._backslash(stmt, pos)
            elif kind in ("var", "qvar"):
                self._variable(stmt, m.group(), pos)
                pos = end
            elif kind == "semi" and stmt.paren == 0 and stmt.begin == 0:
                pos = self._finish(stmt, end)
                stmt = _Statement()
            else:
                pos = self._opaque_end(kind, m) or self._track(kind, m.group(), stmt, end)
        if stmt.start >= 0:
            self._finish(stmt, size)  # psql sends an unterminated last statement at the end of the file

    def _too_many(self, pos: int) -> bool:
        if self.max_statements is None or len(self.pieces) <= self.max_statements:
            return False
        self.problem(
            f"more than {self.max_statements} statements in the file (--max-statements): pgsluice stopped "
            "reading it here rather than hold them all in memory",
            "load bulk data with COPY … FROM STDIN (pg_dump --data-only writes it) or split the file; "
            "or raise --max-statements if the machine has the memory (about 1 KiB a statement)",
            pos,
        )
        return True

    def _opaque_end(self, kind: str | None, m: re.Match[bytes]) -> int | None:
        """Where a comment, a quoted string or identifier, or a dollar-quoted string ends; None for other tokens."""
        pos, end = m.start(), m.end()
        if kind == "block_comment":
            return self._block_comment_end(pos)
        if kind == "estring":
            found = _ESTRING_END.match(self.data, end)
            return found.end() if found else self._unterminated("an E'…' string", pos)
        if kind == "string":
            return self._quoted_end(end, b"'", "a quoted string", pos)
        if kind == "qident":
            return self._quoted_end(end, b'"', "a quoted identifier", pos)
        if kind == "dollar":
            close = self.data.find(m.group(), end)
            return close + len(m.group()) if close >= 0 else self._unterminated("a dollar-quoted string", pos)
        return None

    def _track(self, kind: str | None, token: bytes, stmt: _Statement, end: int) -> int:
        """Follow parentheses, brackets and the words psql watches; returns where the token ends."""
        if kind == "ident":
            self._identifier(stmt, token)
        elif kind == "open":
            stmt.paren += 1
        elif kind == "close":
            stmt.paren = max(0, stmt.paren - 1)
        elif kind == "bopen":
            stmt.bracket += 1
        elif kind == "bclose":
            stmt.bracket = max(0, stmt.bracket - 1)
        return end

    def _unterminated(self, what: str, start: int) -> int:
        self.problem(
            f"{what} starting here is never closed",
            "close it; psql would wait for more input and run nothing of this statement",
            start,
        )
        return len(self.data)

    def _quoted_end(self, pos: int, quote: bytes, what: str, start: int) -> int:
        data = self.data
        while True:
            close = data.find(quote, pos)
            if close < 0:
                return self._unterminated(what, start)
            if data[close + 1 : close + 2] == quote:
                pos = close + 2
                continue
            return close + 1

    def _block_comment_end(self, start: int) -> int:
        depth = 0
        pos = start + 2
        while True:
            found = _COMMENT_MARK.search(self.data, pos)
            if found is None:
                return self._unterminated("a /* comment", start)
            if found.group() == b"/*":
                depth += 1
            elif depth == 0:
                return found.end()
            else:
                depth -= 1
            pos = found.end()

    def _identifier(self, stmt: _Statement, word: bytes) -> None:
        lower = word.lower()
        if stmt.paren == 0 and len(stmt.keywords) < 4:
            stmt.keywords.append(sys.intern(lower.decode("utf-8", errors="replace")))
        # psqlscan.l: inside CREATE [OR REPLACE] FUNCTION|PROCEDURE, BEGIN … END (and CASE … END
        # within it) holds the semicolons of a SQL-standard body.
        if stmt.identifiers < 4:
            stmt.routine.append(_CREATE_ROUTINE.get(lower, ""))
        stmt.identifiers += 1
        ids = [*stmt.routine, "", "", "", ""]
        if (
            ids[0] == "c"
            and (ids[1] in ("f", "p") or (ids[1] == "o" and ids[2] == "r" and ids[3] in ("f", "p")))
            and stmt.paren == 0
        ):
            if lower == b"begin" or (lower == b"case" and stmt.begin >= 1):
                stmt.begin += 1
            elif lower == b"end" and stmt.begin > 0:
                stmt.begin -= 1

    def _variable(self, stmt: _Statement, token: bytes, pos: int) -> None:
        text = token.decode("utf-8", errors="replace")
        quoted = text[1] in "'\""
        name = text[2:-1] if quoted else text[1:]
        value = self.variables.get(name)
        if value is None:
            if not quoted and (stmt.bracket > 0 or name.isdigit()):
                return  # an array slice, a[1:n]: psql leaves it too
            self.problem(
                f"variable :{name} is not defined ({text} would be sent to the server as written)",
                f"define it with --var {name}=VALUE (or PGSLUICE_VAR_{name}), or with \\set {name} VALUE "
                "earlier in the file",
                pos,
            )
            return
        end = pos + len(token)
        if text[1] == "'":
            stmt.edits.append((pos, end, ("'" + value.replace("'", "''") + "'").encode()))
        elif text[1] == '"':
            stmt.edits.append((pos, end, ('"' + value.replace('"', '""') + '"').encode()))
        else:
            if _UNSAFE_VALUE.search(value) or value.count("(") != value.count(")"):
                self.problem(
                    f"variable :{name}'s value holds quotes, a semicolon, '$', a backslash or a comment, which "
                    "psql would read again as SQL and pgsluice does not",
                    f"write :'{name}' for a string literal or :\"{name}\" for an identifier, or simplify the value",
                    pos,
                )
            stmt.edits.append((pos, end, value.encode()))

    def _backslash(self, stmt: _Statement, pos: int) -> int:
        data = self.data
        after = data[pos + 1 : pos + 2]
        if after in (b";", b":"):  # \; and \: put the character itself into the statement
            if stmt.start < 0:
                stmt.start, stmt.line = pos, self.line_of(pos)
            stmt.edits.append((pos, pos + 2, after))
            return pos + 2
        name_match = _META_NAME.match(data, pos + 1)
        name = name_match.group().decode("utf-8", errors="replace") if name_match else ""
        end = name_match.end() if name_match else pos + 1
        args, end = self._meta_args(end, pos)
        meta = MetaPiece(name, tuple(args), self.origin(pos), data[pos:end].rstrip(b"\n"))
        if name in INCLUDE_COMMANDS:
            self._include(meta)
        else:
            if name == "set" and args:
                self.variables[args[0]] = "".join(args[1:])
            elif name == "unset" and args:
                self.variables.pop(args[0], None)
            self.pieces.append(meta)
        return end

    def _meta_args(self, pos: int, start: int) -> tuple[list[str], int]:
        data = self.data
        args: list[str] = []
        current: list[str] | None = None
        while pos < len(data):
            m = _META_ARG.match(data, pos)
            assert m is not None  # noqa: S101 - 'word' matches any remaining byte
            kind, token = m.lastgroup, m.group()
            pos = m.end()
            if kind == "end":
                break
            if kind == "ws":
                current = None
                continue
            if current is None:
                current = []
                args.append("")
            text = token.decode("utf-8", errors="replace")
            if kind == "squote":
                current.append(_unquote_arg(text))
            elif kind == "backtick":
                self.problem(
                    "a backquoted shell command in a meta-command argument needs psql and a shell",
                    "write the value itself",
                    start,
                )
            elif kind == "qvar":
                name = text[2:-1]
                value = self.variables.get(name)
                if value is None:
                    self.problem(f"variable :{name} is not defined", f"define it with --var {name}=VALUE", start)
                    value = text
                elif text[1] == "'":
                    value = "'" + value.replace("'", "''") + "'"
                else:
                    value = '"' + value.replace('"', '""') + '"'
                current.append(value)
            elif kind == "var":
                value = self.variables.get(text[1:])
                current.append(text if value is None else value)
            else:
                current.append(text)
            args[-1] = "".join(current)
        return args, pos

    def _include(self, meta: MetaPiece) -> None:
        if not meta.args:
            self.problem(f"\\{meta.name} names no file", "write the file name after it", meta.origin.offset)
            return
        name = meta.args[0]
        base = posixpath.dirname(self.source) if meta.name in ("ir", "include_relative") else ""
        target = posixpath.normpath(posixpath.join(base, name))
        if posixpath.isabs(name) or target.startswith("../") or target == "..":
            self.problem(
                f"\\{meta.name} {name}: the file is outside the migrations folder",
                "keep included files inside the migrations folder (\\i is relative to the folder, \\ir to the "
                "including file)",
                meta.origin.offset,
            )
            return
        if target in self.stack:
            self.problem(
                f"\\{meta.name} {name} includes {target}, which is already being included (a cycle)",
                "remove the include",
                meta.origin.offset,
            )
            return
        if target not in self.sources:
            self.problem(
                f"\\{meta.name} {name}: no such file in the migrations folder ({target})",
                "check the name; \\i is relative to the migrations folder, \\ir to the including file",
                meta.origin.offset,
            )
            return
        self.read.append(target)
        child = _Lexer(
            self.sources,
            variables=self.variables,
            pieces=self.pieces,
            problems=self.problems,
            stack=(*self.stack, target),
            max_statements=self.max_statements,
        )
        child.run()
        self.read.extend(child.read)

    def _finish(self, stmt: _Statement, end: int) -> int:
        """Emit the statement; for COPY … FROM STDIN, also its data. Returns where lexing goes on."""
        body, segments = stmt.body(self.data, end)
        origin = Origin(self.source, stmt.start, stmt.line)
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            self.problems.append(
                ScriptProblem(
                    f"not valid UTF-8 (byte {stmt.start + exc.start} of the file)",
                    "re-save the file as UTF-8",
                    Origin(self.source, stmt.start + exc.start, self.line_of(stmt.start + exc.start)),
                )
            )
            text = body.decode("utf-8", errors="replace")
        text = text.rstrip()
        if text.endswith(";"):
            text = text[:-1].rstrip()
        keywords = tuple(stmt.keywords)
        copy_in = _is_copy_from_stdin(keywords, body)
        self.pieces.append(SqlPiece(text, end, origin, keywords, copy_in, segments))
        if not copy_in:
            return end
        newline = self.data.find(b"\n", end)
        rest = self.data[end : newline if newline >= 0 else len(self.data)]
        if rest.strip() and not rest.strip().startswith(b"--"):
            self.problem(
                "text after COPY … FROM STDIN; on the same line",
                "put the data on the lines after the COPY statement, and nothing after its semicolon",
                end,
            )
        if newline < 0:
            return len(self.data)
        start = newline + 1
        stop = start
        while True:
            marker = self.data.find(b"\\.", stop)
            if marker < 0:
                data_end, resume = len(self.data), len(self.data)
                break
            at_line_start = marker == start or self.data[marker - 1 : marker] == b"\n"
            tail = self.data[marker + 2 : marker + 4]
            if at_line_start and (tail[:1] in (b"\n", b"") or tail == b"\r\n"):
                data_end = marker
                resume = self.data.find(b"\n", marker)
                resume = len(self.data) if resume < 0 else resume + 1
                break
            stop = marker + 2
        self.pieces.append(DataPiece(self.source, start, data_end, self.origin(start)))
        return resume


def _is_copy_from_stdin(keywords: tuple[str, ...], body: bytes) -> bool:
    if not keywords or keywords[0] != "copy":
        return False
    return bool(re.search(rb"(?i)\bfrom\s+stdin\b", body))


def _unquote_arg(text: str) -> str:
    """A single-quoted meta-command argument as psql reads it: '' is ', and backslash escapes."""
    inner = text[1:-1] if len(text) > 1 and text.endswith("'") else text[1:]
    out: list[str] = []
    index = 0
    while index < len(inner):
        char = inner[index]
        if char == "'" and inner[index + 1 : index + 2] == "'":
            out.append("'")
            index += 2
            continue
        if char == "\\" and index + 1 < len(inner):
            nxt = inner[index + 1]
            out.append(_ARG_ESCAPES.get(nxt, nxt))
            index += 2
            continue
        out.append(char)
        index += 1
    return "".join(out)


def split_script(
    source: str,
    sources: Mapping[str, bytes],
    variables: Mapping[str, str] | None = None,
    max_statements: int | None = None,
) -> Script:
    """Split ``sources[source]`` (and what it includes from ``sources``) the way psql would run it; past
    ``max_statements`` pieces it stops with a problem instead of holding an unbounded number of them."""
    pieces: list[Piece] = []
    problems: list[ScriptProblem] = []
    lexer = _Lexer(
        sources,
        variables=dict(variables or {}),
        pieces=pieces,
        problems=problems,
        stack=(source,),
        max_statements=max_statements,
    )
    lexer.run()
    return Script(tuple(pieces), tuple(problems), (source, *dict.fromkeys(lexer.read)))


def include_targets(source: str, data: bytes) -> list[str]:
    """The files ``\\i``/``\\ir`` lines of ``data`` name (normalised, relative to the folder); for the reader,
    which must read them before the script can be split. Cheap when the file has no backslash."""
    if b"\\i" not in data:
        return []
    found: list[str] = []
    for match in re.finditer(rb"(?m)^[ \t]*\\(i|include|ir|include_relative)[ \t]+(\S+)", data):
        command, name = match.group(1).decode(), match.group(2).decode("utf-8", errors="replace").strip("'\"")
        base = posixpath.dirname(source) if command in ("ir", "include_relative") else ""
        found.append(posixpath.normpath(posixpath.join(base, name)))
    return found
