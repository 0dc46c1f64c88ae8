"""Privacy by design: audited reads of ``phi_*`` tables and the PostgreSQL roles that separate
statisticians from identities.

Inputs: a warehouse engine. Outputs: ``audit_event`` rows (``phi_read``: which table, for what
purpose, how many rows — never the values) for every read of a ``phi_*`` table made through the
service's tools, and on PostgreSQL the roles of ``sql/roles.sql``: ``moh_analyst`` reads the
reporting tables (``moh_*``) and reference tables, nothing under ``phi_*`` nor the restricted
working level (``rpt_*``); ``data_engineer`` reads everything. Roles are NOLOGIN groups: a person's
login role is granted one of them (``GRANT moh_analyst TO alice``).
"""
from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.engine import Engine

from .warehouse import load_sql, utcnow

ROLES = ("moh_analyst", "data_engineer")


def audit_phi_read(engine: Engine, table: str, purpose: str, sql: str, keys: list, actor: str = "hl7ics") -> dict:
    """Run ``sql`` (with ``{marks}`` for the key list) in chunks and audit the read; returns
    {first column: second column}. The audit row is written even when the read fails."""
    if not table.startswith("phi_"):
        raise ValueError("audit_phi_read is for phi_* tables")
    out: dict = {}
    outcome = "success"
    try:
        with engine.connect() as conn:
            for i in range(0, len(keys), 900):
                chunk = keys[i:i + 900]
                marks = ", ".join(f":k{j}" for j in range(len(chunk)))
                for a, b in conn.execute(text(sql.format(marks=marks)), {f"k{j}": k for j, k in enumerate(chunk)}):
                    out[a] = b
    except Exception:
        outcome = "failure"
        raise
    finally:
        with engine.begin() as conn:
            record_phi_read(conn, f"{table}: {purpose}: {len(out)} of {len(keys)} rows", outcome, actor)
    return out


def record_phi_read(conn, detail: str, outcome: str = "success", actor: str = "hl7ics") -> None:
    """The ``audit_event`` row of a read of ``phi_*`` (``detail``: table, purpose, row counts)."""
    conn.execute(text("INSERT INTO audit_event (created_at, event_type, outcome, peer, facility_code, detail) "
                      "VALUES (:t, 'phi_read', :o, :a, NULL, :d)"),
                 {"t": utcnow(), "o": outcome, "a": actor, "d": detail[:500]})


def create_roles(engine: Engine) -> list[str]:
    """Create (idempotently) the roles and grants of sql/roles.sql; PostgreSQL only."""
    if engine.dialect.name != "postgresql":
        raise ValueError("roles exist on PostgreSQL only; the embedded SQLite warehouse is a single-user file")
    sql = load_sql("roles.sql")
    with engine.begin() as conn:
        db = conn.execute(text("SELECT current_database()")).scalar_one()
        conn.exec_driver_sql(sql.replace("{{DATABASE}}", f'"{db}"'))
        return grant_tables(conn)


def grant_tables(conn) -> list[str]:
    """Give each table its grants: data_engineer reads all, moh_analyst the analyst tables only
    (returned). Nothing in a database where ``hl7ics db roles`` was never run: the roles belong to
    the whole server, so their existence says nothing about this database (its CONNECT grant does)."""
    if not conn.execute(text(
            "SELECT COALESCE(datacl::text LIKE '%data_engineer=%', FALSE) AND EXISTS "
            "(SELECT 1 FROM pg_roles WHERE rolname = 'moh_analyst') FROM pg_database "
            "WHERE datname = current_database()")).scalar():
        return []
    tables = [r[0] for r in conn.execute(text(
        "SELECT tablename FROM pg_tables WHERE schemaname = current_schema() ORDER BY tablename"))]
    for t in tables:
        conn.exec_driver_sql(f'GRANT SELECT ON "{t}" TO data_engineer')
        if is_analyst_table(t):
            conn.exec_driver_sql(f'GRANT SELECT ON "{t}" TO moh_analyst')
        else:
            conn.exec_driver_sql(f'REVOKE ALL ON "{t}" FROM moh_analyst')
    return [t for t in tables if is_analyst_table(t)]


ANALYST_PREFIXES = ("moh_",)
ANALYST_TABLES = ("dim_facility", "dq_daily", "interface_volume_hourly")


def is_analyst_table(name: str) -> bool:
    return name.startswith(ANALYST_PREFIXES) or name in ANALYST_TABLES
