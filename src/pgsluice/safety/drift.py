"""Schema drift: has the schema changed outside pgsluice since its last run?

After each run that applied something, pgsluice records a fingerprint of the user schemas
in a table of its own (``<history schema>.<history name>_schema``, one row); before
applying, it compares the live schema with it and names what was added, removed or
changed since: object names only, never values or definitions.

The fingerprint is computed server-side in ONE query from catalog facts (not pg_dump): a
mapping object key → md5 of a canonical text of the object —

- ``schema s``; ``extension e`` (version, schema: its objects are left out);
  ``table s.t`` (kind, persistence, partitioning, row level security, storage parameters);
  ``column s.t.c`` (type, NOT NULL, default, identity, generated, collation);
  ``constraint s.t.c`` (``pg_get_constraintdef``); ``index s.i`` (its definition and
  validity; an index behind a constraint counts as the constraint); ``trigger s.t.tg``
  (and whether it is enabled); ``policy s.t.p``; ``rule s.t.r``; ``view s.v`` /
  ``materialized view s.v`` (``pg_get_viewdef``); ``sequence s.q`` (its parameters, not
  its current value); ``function s.f(args)`` (kind, result, language, body, volatility,
  strictness, security, settings); ``type s.e`` (enum labels in order, domain
  base/default/constraints, range subtype, composite columns).

and a digest: one order-free 64-bit number over every key and canonical text
(``bit_xor(hashtextextended(…))``, no sort). The check compares digests first; only when
they differ are the md5 mappings built and sent, and compared here (``compare_fingerprints``,
pure). A dependent object whose printed definition names a renamed column (a view, an
index printed by ``pg_get_indexdef``) shows as changed with it.

Left out: ``pg_catalog``, ``information_schema``, ``pg_toast`` and every ``pg_*`` schema,
objects that belong to an extension (and schemas an extension created), and pgsluice's
own tables: the history table, ``<history>_repeatable``, ``<history>_lock`` (the lease)
and ``<history>_schema`` (this one), with their columns, indexes and constraints.
Statistics, row counts, sequence values, privileges, owners and comments do not count.
Canonical texts avoid OIDs except fixed built-in ones (below 10000), so a restored copy of
the database has the same fingerprint.

Only ``record_fingerprint``, ``check_drift`` and ``fetch_fingerprint`` talk to the database.
They expect an autocommit connection, like every pgsluice connection. The mapping is
stored as ``json`` (not ``jsonb``: building jsonb sorts 20,000 keys, a quarter of the budget).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from pgsluice.config import TableName

if TYPE_CHECKING:
    import psycopg
    from psycopg import sql

DRIFT_SUFFIX = "_schema"
OWN_SUFFIXES = ("", "_repeatable", "_lock", DRIFT_SUFFIX)
"""pgsluice's own tables beside the history table, by suffix of its name."""

OBJECTS_SQL = """
ns AS (
    SELECT n.oid, quote_ident(n.nspname) AS q FROM pg_namespace n
    WHERE n.nspname !~ '^pg_' AND n.nspname <> 'information_schema'
      AND (%(only)s::text IS NULL OR n.nspname = %(only)s::text)
      AND NOT EXISTS (SELECT 1 FROM pg_depend d
                      WHERE d.classid = 'pg_namespace'::regclass AND d.objid = n.oid AND d.deptype = 'e')
),
own AS (SELECT to_regclass(x)::oid AS oid FROM unnest(%(own)s::text[]) AS x),
rels AS (
    SELECT c.oid, c.relkind, c.relpersistence, c.relpartbound, c.relrowsecurity, c.relforcerowsecurity, c.reloptions,
           ns.q AS nq, ns.q || '.' || quote_ident(c.relname) AS q
    FROM pg_class c JOIN ns ON ns.oid = c.relnamespace
    WHERE c.relkind IN ('r', 'p', 'f', 'v', 'm', 'S', 'c')
      AND c.oid NOT IN (SELECT oid FROM own WHERE oid IS NOT NULL)
      AND NOT EXISTS (SELECT 1 FROM pg_depend d
                      WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e')
),
objects(key, body) AS MATERIALIZED (
    SELECT 'schema ' || ns.q, '' FROM ns
    UNION ALL
    SELECT 'extension ' || quote_ident(e.extname), e.extversion || ' ' || e.extnamespace::regnamespace::text
    FROM pg_extension e
    UNION ALL
    SELECT CASE WHEN r.relkind = 'c' THEN 'type ' ELSE 'table ' END || r.q,
           r.relkind::text || r.relpersistence::text
           || CASE WHEN r.relkind = 'p' THEN pg_get_partkeydef(r.oid) ELSE '' END
           || CASE WHEN r.relpartbound IS NULL THEN '' ELSE pg_get_expr(r.relpartbound, r.oid) END
           || CASE WHEN r.relrowsecurity THEN ' rls' ELSE '' END
           || CASE WHEN r.relforcerowsecurity THEN ' force' ELSE '' END
           || coalesce(' ' || r.reloptions::text, '')
    FROM rels r WHERE r.relkind IN ('r', 'p', 'f', 'c')
    UNION ALL
    SELECT 'column ' || r.q || '.' || quote_ident(a.attname),
           format_type(a.atttypid, a.atttypmod) || a.attnotnull::text || a.attidentity::text
           || a.attgenerated::text
           || CASE WHEN a.attcollation IN (0, 100) THEN '' ELSE a.attcollation::regcollation::text END
           -- a default has no column references (a generated column's expression has): no relation context
           || CASE WHEN d.adbin IS NULL THEN ''
                   ELSE pg_get_expr(d.adbin, CASE WHEN a.attgenerated = '' THEN 0 ELSE d.adrelid END) END
    FROM rels r JOIN pg_attribute a ON a.attrelid = r.oid
    LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
    WHERE r.relkind IN ('r', 'p', 'f', 'c') AND a.attnum > 0 AND NOT a.attisdropped
    UNION ALL
    SELECT CASE WHEN r.relkind = 'v' THEN 'view ' ELSE 'materialized view ' END || r.q, pg_get_viewdef(r.oid)
    FROM rels r WHERE r.relkind IN ('v', 'm')
    UNION ALL
    SELECT 'sequence ' || r.q,
           concat_ws(' ', s.seqtypid, s.seqstart, s.seqincrement, s.seqmax, s.seqmin, s.seqcache, s.seqcycle)
    FROM rels r JOIN pg_sequence s ON s.seqrelid = r.oid
    UNION ALL
    -- an index behind a constraint is the constraint's. A plain non-unique index on columns, with built-in
    -- operator classes and collations (fixed OIDs below 10000), is described by its catalog row; any other by
    -- pg_get_indexdef (twenty times slower)
    SELECT 'index ' || r.nq || '.' || quote_ident(x.relname),
           CASE WHEN NOT i.indisunique AND i.indexprs IS NULL AND i.indpred IS NULL AND x.relam < 10000
                     AND 10000 > ALL (i.indclass::oid[]) AND 10000 > ALL (i.indcollation::oid[])
                THEN concat_ws(' ', x.relam, i.indkey, i.indclass, i.indoption, i.indcollation, i.indnkeyatts,
                               x.reloptions)
                ELSE pg_get_indexdef(i.indexrelid) END
           || i.indisvalid::text
    FROM pg_index i JOIN rels r ON r.oid = i.indrelid JOIN pg_class x ON x.oid = i.indexrelid
    WHERE NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = i.indexrelid AND k.conrelid = i.indrelid
                      AND k.contype IN ('p', 'u', 'x'))
    UNION ALL
    -- a primary key on columns with built-in operator classes and collations: its catalog rows, as above
    SELECT 'constraint ' || r.q || '.' || quote_ident(k.conname),
           CASE WHEN k.contype = 'p' AND i.indexprs IS NULL AND x.relam < 10000
                     AND 10000 > ALL (i.indclass::oid[]) AND 10000 > ALL (i.indcollation::oid[])
                THEN concat_ws(' ', k.contype, k.conkey, k.condeferrable, k.condeferred, x.relam, i.indclass,
                               i.indoption, i.indcollation, i.indnkeyatts, x.reloptions, i.indisvalid)
                ELSE pg_get_constraintdef(k.oid) END
    FROM pg_constraint k JOIN rels r ON r.oid = k.conrelid
    LEFT JOIN pg_index i ON k.contype = 'p' AND i.indexrelid = k.conindid
    LEFT JOIN pg_class x ON x.oid = i.indexrelid
    UNION ALL
    SELECT 'trigger ' || r.q || '.' || quote_ident(t.tgname), pg_get_triggerdef(t.oid) || ' ' || t.tgenabled::text
    FROM pg_trigger t JOIN rels r ON r.oid = t.tgrelid WHERE NOT t.tgisinternal
    UNION ALL
    SELECT 'policy ' || r.q || '.' || quote_ident(p.polname),
           concat_ws(' ', p.polcmd, p.polpermissive, p.polroles::regrole[]::text,
                     pg_get_expr(p.polqual, p.polrelid), pg_get_expr(p.polwithcheck, p.polrelid))
    FROM pg_policy p JOIN rels r ON r.oid = p.polrelid
    UNION ALL
    SELECT 'rule ' || r.q || '.' || quote_ident(w.rulename), pg_get_ruledef(w.oid) || ' ' || w.ev_enabled::text
    FROM pg_rewrite w JOIN rels r ON r.oid = w.ev_class WHERE w.rulename <> '_RETURN'
    UNION ALL
    SELECT 'function ' || ns.q || '.' || quote_ident(p.proname)
           || '(' || pg_get_function_identity_arguments(p.oid) || ')',
           concat_ws(' ', p.prokind, pg_get_function_result(p.oid), l.lanname, p.provolatile, p.proisstrict,
                     p.prosecdef, p.proleakproof, p.proparallel, p.proconfig::text, p.probin, p.prosrc)
    FROM pg_proc p JOIN ns ON ns.oid = p.pronamespace JOIN pg_language l ON l.oid = p.prolang
    WHERE NOT EXISTS (SELECT 1 FROM pg_depend d
                      WHERE d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e')
    UNION ALL
    SELECT 'type ' || ns.q || '.' || quote_ident(t.typname),
           t.typtype::text || coalesce(CASE t.typtype
               WHEN 'e' THEN (SELECT string_agg(e.enumlabel, ',' ORDER BY e.enumsortorder)
                              FROM pg_enum e WHERE e.enumtypid = t.oid)
               WHEN 'd' THEN concat_ws(' ', format_type(t.typbasetype, t.typtypmod), t.typnotnull, t.typdefault,
                                       (SELECT string_agg(pg_get_constraintdef(k.oid), ',' ORDER BY k.conname)
                                        FROM pg_constraint k WHERE k.contypid = t.oid))
               ELSE (SELECT rngsubtype::regtype::text FROM pg_range WHERE rngtypid = t.oid)
           END, '')
    FROM pg_type t JOIN ns ON ns.oid = t.typnamespace
    WHERE t.typtype IN ('e', 'd', 'r')
      AND NOT EXISTS (SELECT 1 FROM pg_depend d
                      WHERE d.classid = 'pg_type'::regclass AND d.objid = t.oid AND d.deptype = 'e')
)"""
"""Every fingerprinted object of the user schemas as ``objects(key, body)``, the canonical text per object.
Parameters ``own``: pgsluice's own tables (``schema.name`` as text), left out; ``only``: one schema (a fleet's
schema target, whose fingerprint must not grow with the other tenants), or None for every user schema."""

MAPPING = "coalesce(json_object_agg(key, md5(body)), '{}'::json)"
"""The fingerprint: ``{"table public.users": "<md5 of its canonical text>", …}``."""
DIGEST = "coalesce(bit_xor(hashtextextended(key || E'\\n' || body, 0)), 0)"
"""One 64-bit number for the whole schema, order-free (no sort): equal digests, nothing to compare. A shortcut
only: when digests differ, the md5 mappings decide (a new major version's hash function cannot cause drift)."""
FINGERPRINT_SQL = f"WITH {OBJECTS_SQL}\nSELECT {MAPPING}, {DIGEST} FROM objects"
"""The live fingerprint and digest, one row."""


@dataclass(frozen=True)
class Drift:
    """What changed since the recorded fingerprint: object names only."""

    added: tuple[str, ...]
    removed: tuple[str, ...]
    changed: tuple[str, ...]
    recorded_at: datetime | None = None
    recorded_by: str | None = None
    """The pgsluice version that recorded the fingerprint."""
    migration_version: int | None = None
    """The highest applied version when it was recorded."""

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.changed)

    def log_fields(self, limit: int = 50) -> dict[str, Any]:
        """The ``drift.detected`` event's key/values (each list cut to ``limit`` names, with the counts)."""
        return {
            "added": list(self.added[:limit]),
            "removed": list(self.removed[:limit]),
            "changed": list(self.changed[:limit]),
            "counts": {"added": len(self.added), "removed": len(self.removed), "changed": len(self.changed)},
            "recorded_at": self.recorded_at.isoformat() if self.recorded_at else None,
            "recorded_by": self.recorded_by,
            "recorded_at_version": self.migration_version,
        }

    def summary(self, limit: int = 5) -> str:
        """``2 added (index public.a_idx, …), 1 changed (column public.users.email)``."""
        parts = []
        for what, names in (("added", self.added), ("removed", self.removed), ("changed", self.changed)):
            if names:
                shown = ", ".join(names[:limit]) + (", …" if len(names) > limit else "")
                parts.append(f"{len(names)} {what} ({shown})")
        return "; ".join(parts) or "no change"


def compare_fingerprints(stored: Mapping[str, str], current: Mapping[str, str]) -> Drift:
    """What was added, removed and changed from ``stored`` to ``current``, each sorted; pure."""
    added = sorted(current.keys() - stored.keys())
    removed = sorted(stored.keys() - current.keys())
    changed = sorted(k for k in stored.keys() & current.keys() if stored[k] != current[k])
    return Drift(tuple(added), tuple(removed), tuple(changed))


def drift_table(history_table: TableName) -> TableName:
    """Where the fingerprint is kept: ``<history schema>.<history name>_schema``."""
    return TableName(history_table.schema, f"{history_table.name}{DRIFT_SUFFIX}")


def own_tables(history_table: TableName) -> list[str]:
    """pgsluice's own tables, quoted ``schema.name``, as the fingerprint query leaves them out."""
    from psycopg import sql

    return [
        sql.Identifier(history_table.schema, f"{history_table.name}{suffix}").as_string(None) for suffix in OWN_SUFFIXES
    ]


def _ident(table: TableName) -> sql.Identifier:
    from psycopg import sql

    return sql.Identifier(table.schema, table.name)


def fetch_fingerprint(
    conn: psycopg.Connection[Any], history_table: TableName, *, schema: str | None = None
) -> dict[str, str]:
    """The live schema's fingerprint (one query); for tests and tools, the run only records and checks."""
    row = conn.execute(FINGERPRINT_SQL, {"own": own_tables(history_table), "only": schema}).fetchone()
    assert row is not None  # noqa: S101 - an aggregate returns one row
    return dict(row[0])


def record_fingerprint(
    conn: psycopg.Connection[Any],
    history_table: TableName,
    *,
    migration_version: int | None,
    pgsluice_version: str,
    schema: str | None = None,
) -> None:
    """Store the live schema's fingerprint (computed and stored server-side, nothing travels), creating the table
    when missing. Call it after a run that applied something, under the migration lock."""
    from psycopg import sql

    table = _ident(drift_table(history_table))
    conn.execute(
        sql.SQL(
            "CREATE TABLE IF NOT EXISTS {} ("
            " singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),"
            " fingerprint json NOT NULL,"
            " digest bigint NOT NULL,"
            " recorded_at timestamptz NOT NULL DEFAULT clock_timestamp(),"
            " pgsluice_version text,"
            " migration_version numeric)"
        ).format(table)
    )
    conn.execute(
        sql.SQL(
            "WITH {objects}"
            " INSERT INTO {table} (singleton, fingerprint, digest, recorded_at, pgsluice_version, migration_version)"
            " SELECT true, {mapping}, {digest}, clock_timestamp(), %(pv)s, %(mv)s FROM objects"
            " ON CONFLICT (singleton) DO UPDATE SET fingerprint = excluded.fingerprint, digest = excluded.digest,"
            " recorded_at = excluded.recorded_at, pgsluice_version = excluded.pgsluice_version,"
            " migration_version = excluded.migration_version"
        ).format(objects=sql.SQL(OBJECTS_SQL), table=table, mapping=sql.SQL(MAPPING), digest=sql.SQL(DIGEST)),
        {"own": own_tables(history_table), "pv": pgsluice_version, "mv": migration_version, "only": schema},
    )


def clear_fingerprint(conn: psycopg.Connection[Any], history_table: TableName) -> None:
    """Forget the recorded fingerprint (when a new one could not be recorded: no fingerprint beats a stale one)."""
    from psycopg import sql

    conn.execute(sql.SQL("DELETE FROM {}").format(_ident(drift_table(history_table))))


def check_drift(conn: psycopg.Connection[Any], history_table: TableName, *, schema: str | None = None) -> Drift | None:
    """Compare the live schema with the recorded fingerprint, in one query: when the digests agree nothing else
    is computed or sent; otherwise both md5 mappings travel and are compared here. None when nothing was recorded
    yet (the first run); an empty Drift when nothing changed."""
    import psycopg
    from psycopg import sql

    query = sql.SQL(
        "WITH {objects}, live AS (SELECT {digest} AS digest FROM objects)"
        " SELECT s.recorded_at, s.pgsluice_version, s.migration_version,"
        " CASE WHEN s.digest = live.digest THEN NULL ELSE s.fingerprint END,"
        " CASE WHEN s.digest = live.digest THEN NULL ELSE (SELECT {mapping} FROM objects) END"
        " FROM {table} s, live"
    ).format(
        objects=sql.SQL(OBJECTS_SQL),
        digest=sql.SQL(DIGEST),
        mapping=sql.SQL(MAPPING),
        table=_ident(drift_table(history_table)),
    )
    try:
        row = conn.execute(query, {"own": own_tables(history_table), "only": schema}).fetchone()
    except (psycopg.errors.UndefinedTable, psycopg.errors.InvalidSchemaName):
        return None
    if row is None:
        return None
    recorded_at, recorded_by, version, stored, current = row
    found = compare_fingerprints(stored or {}, current or {})
    return Drift(
        found.added,
        found.removed,
        found.changed,
        recorded_at=recorded_at,
        recorded_by=recorded_by,
        migration_version=int(version) if version is not None else None,
    )
