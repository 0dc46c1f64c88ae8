"""Insurer access to the claims on PostgreSQL: one role per insurer, two views, row-level security.

Inputs: a PostgreSQL warehouse engine (migration 009 applied) and the insurer codes (``INAM``,
``CNSS``, a private insurer's code). Outputs: the objects of ``sql/claims_access.sql``: per insurer a
NOLOGIN group role ``insurer_<code in lower case>`` (a person's login role is granted it), the views
``insurer_claims`` and ``insurer_claim_lines`` with the minimum necessary columns of ``claim`` and
``claim_line`` (no ``patient_key``), filtered to the rows of the insurers the querying user belongs
to, and row-level security on the two base tables with the same rule. Insurer roles may read the
two views and nothing else. Idempotent, and safe to run again after adding an insurer.

The embedded SQLite warehouse is a single-user file: there, insurers receive extracts instead.
"""
from __future__ import annotations

import re

from sqlalchemy import text
from sqlalchemy.engine import Engine

from .config import ConfigError
from .warehouse import load_sql

_CODE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,39}$")
_LOCK = 724109  # advisory lock: one run at a time per database (policies are dropped and re-created)


def insurer_role(code: str) -> str:
    """The group role of an insurer code (``INAM`` -> ``insurer_inam``)."""
    if not isinstance(code, str) or not _CODE.match(code):
        raise ConfigError("insurer codes are 1-40 letters, digits, '_' or '-', starting with a letter or digit")
    return f"insurer_{code.lower()}"


def create_insurer_roles(engine: Engine, insurers: list[str]) -> list[str]:
    """Create (idempotently) the insurer roles, views, policies and grants; returns the role names
    in the order of ``insurers`` (duplicates removed). PostgreSQL only."""
    if engine.dialect.name != "postgresql":
        raise ValueError("insurer roles exist on PostgreSQL only; the embedded SQLite warehouse is a single-user file")
    roles: list[str] = []
    for code in insurers:
        role = insurer_role(code)
        if role not in roles:
            roles.append(role)
    # Codes are validated above (letters, digits, '_', '-'), so quoting them as literals is safe.
    array = "ARRAY[" + ", ".join(f"'{r}'" for r in roles) + "]" if roles else "ARRAY[]"
    sql = load_sql("claims_access.sql").replace("{{ROLES}}", array)
    with engine.begin() as conn:
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _LOCK})
        # Straight to the driver: one multi-statement script, and its '%' (format(), LIKE) must not
        # be read as parameter markers.
        conn.connection.driver_connection.execute(sql)
    return roles


__all__ = ["create_insurer_roles", "insurer_role"]
