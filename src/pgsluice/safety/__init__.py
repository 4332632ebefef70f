"""The safety gate: pending migrations judged against the live database before they run.

- ``facts``: ``touched_tables`` (pure) names what the pending migrations reference;
  ``fetch_facts`` reads the server version, TimeZone, sizes and catalog of those tables in
  one query; ``assumed_facts`` stands in for it offline (``lint``).
- ``rules``: one small pure function per rule; ``check_migrations`` judges every statement
  and the ``Policy`` decides what to do with each finding.
- ``preflight``: ``find_blocking_sessions``, who the migrations would queue behind.
- ``drift``: ``record_fingerprint`` / ``check_drift``, schema changes made outside pgsluice.

Only ``fetch_facts``, ``find_blocking_sessions``, ``record_fingerprint``, ``check_drift``
and ``fetch_fingerprint`` talk to the database. pglast and psycopg are imported where used.
"""

from __future__ import annotations

from pgsluice.safety.facts import (
    Facts,
    RelName,
    TableFacts,
    Touched,
    assumed_facts,
    fetch_facts,
    touched_tables,
)
from pgsluice.safety.rules import (
    RULES,
    Action,
    Finding,
    Kind,
    Policy,
    SafetyReport,
    Severity,
    check_migrations,
    readme_table,
    rule_ids,
)

__all__ = [
    "RULES",
    "Action",
    "Facts",
    "Finding",
    "Kind",
    "Policy",
    "RelName",
    "SafetyReport",
    "Severity",
    "TableFacts",
    "Touched",
    "assumed_facts",
    "check_migrations",
    "fetch_facts",
    "readme_table",
    "rule_ids",
    "touched_tables",
]
