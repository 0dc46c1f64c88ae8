"""Warehouse access: engines, versioned migrations and dialect-neutral bulk writes.

Inputs: a SQLAlchemy URL (``sqlite:///path`` for the embedded default, ``postgresql+psycopg://...``
in production). Outputs: an ``Engine`` with the schema at the latest migration, and ``Writer``
helpers that insert/upsert batches inside the caller's transaction, using batched ``executemany`` on
SQLite and ``COPY`` into a temporary staging table on PostgreSQL.

Migrations are the numbered files in ``sql/migrations/`` (``NNN_name.sql``), applied in order once
each and recorded in ``schema_migrations``. They are written once for both databases; the only
dialect differences are the two placeholders documented in ``001_core.sql``.
"""
from __future__ import annotations

import json
import re
from functools import lru_cache, wraps
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Iterable, Sequence

from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Connection, Engine

from .config import PROJECT_ROOT, ConfigError
from .pgcopy import send_rows

SQL_DIR = PROJECT_ROOT / "sql"
MIGRATIONS_DIR = SQL_DIR / "migrations"
_PLACEHOLDERS = {
    "sqlite": {"{{ID}}": "INTEGER PRIMARY KEY AUTOINCREMENT", "{{BLOB}}": "BLOB"},
    "postgresql": {"{{ID}}": "BIGSERIAL PRIMARY KEY", "{{BLOB}}": "BYTEA"},
}
_ENGINES: dict[str, Engine] = {}
_MIGRATED: set[str] = set()  # URLs whose migrations this process has applied


def timestamp_text(v) -> str | None:
    """A stored timestamp as the warehouse writes it, ``YYYY-MM-DD HH:MM:SS`` (PostgreSQL returns
    datetimes, SQLite text; a date is its midnight); None for no value."""
    if v is None or v == "":
        return None
    if isinstance(v, datetime):
        return v.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(v, date):
        return v.strftime("%Y-%m-%d 00:00:00")
    s = str(v).replace("T", " ")
    return s[:19] if len(s) >= 19 else (s[:10] + " 00:00:00" if len(s) >= 10 else s)


def utcnow() -> str:
    """Current UTC time as the warehouse stores it (naive, second precision)."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def printable_url(url: str) -> str:
    """``url`` fit for output and logs: the password, if any, masked."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "(unreadable warehouse URL)"  # an unparseable URL may still hold a password


def normalize_url(url: str) -> str:
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def _sqlite_pragmas(dbapi_conn, _record):
    cur = dbapi_conn.cursor()
    # WAL lets the listener write while the DAG reads; FULL fsyncs every commit, which is what
    # makes "ACK after commit" mean "ACK after it is on disk".
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=FULL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    # 8 MiB of page cache (default 2 MiB) for the hot index pages. Measured on a 200,000-message
    # day: 64 MiB loaded no faster (the OS caches the file too) and cost ~60 MB per connection,
    # which made the ingest workers' memory grow with the day.
    cur.execute("PRAGMA cache_size=-8192")
    cur.close()


# PostgreSQL ends some messages with the offending value: 'invalid input syntax for type ...: "x"'.
_QUOTED_VALUE = re.compile(r'(:\s*)"[^"]*"\s*$')


def safe_db_message(message: str) -> str:
    """A database error message without the values it may quote: its first line only (PostgreSQL's
    DETAIL lines repeat the failing row or key, a patient's name or ID among them), and a value
    quoted at its end replaced. Names of tables, columns and constraints stay."""
    lines = message.strip().splitlines()
    return _QUOTED_VALUE.sub('\\1"…"', lines[0]) if lines else message


def _scrub(exc: BaseException) -> str | None:
    """Rewrite a database exception's message with ``safe_db_message``, in place; the new
    message, or None when there was nothing to remove."""
    text_ = str(exc)
    safe = safe_db_message(text_)
    if safe == text_:
        return None
    exc.args = (safe,)
    return safe


def _driver_values_hidden(method):
    """``Writer`` methods talk to the driver directly (COPY, staged upserts), past SQLAlchemy's
    ``handle_error``: the same rewrite of a database error's message, same exception object."""

    @wraps(method)
    def wrapper(*args, **kwargs):
        try:
            return method(*args, **kwargs)
        except Exception as exc:
            if type(exc).__module__.split(".", 1)[0] in ("psycopg", "sqlite3") and exc.args:
                _scrub(exc)
            raise

    return wrapper


def _without_values(ctx) -> None:
    """``handle_error`` hook: the exception raised (what a task log or the CLI shows) keeps its
    class, so retry rules still apply, but not the values (``hide_parameters`` drops the bound
    parameters; this drops what the server's message repeats of them)."""
    orig = ctx.original_exception
    safe = _scrub(orig)
    exc = ctx.sqlalchemy_exception
    if safe is not None and exc is not None:
        exc.args = (f"({type(orig).__module__}.{type(orig).__name__}) {safe}",)


def get_engine(url: str, migrate: bool = True) -> Engine:
    """Engine for a warehouse URL (cached per process); applies pending migrations on first use."""
    url = normalize_url(url)
    eng = _ENGINES.get(url)
    if eng is None and not url.startswith(("sqlite:", "sqlite+", "postgresql:", "postgresql+")):
        # The migrations and the loader's SQL are written for these two (MySQL, say, would fail
        # somewhere in the middle of a load instead of here).
        raise ConfigError("warehouse: the URL must be SQLite (sqlite:///PATH) or PostgreSQL "
                          "(postgresql://USER@HOST/DB)")
    if eng is not None:
        if migrate and url not in _MIGRATED:  # first made without migrating (an alert callback)
            upgrade(eng)
            _MIGRATED.add(url)
        return eng
    if url.startswith("sqlite"):
        path = url.split("///", 1)[1] if "///" in url else ""
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        eng = create_engine(url, connect_args={"timeout": 30}, hide_parameters=True)
        event.listen(eng, "connect", _sqlite_pragmas)
        # pysqlite's own transaction handling defers BEGIN; take control so BEGIN IMMEDIATE works.
        @event.listens_for(eng, "connect")
        def _no_autobegin(dbapi_conn, _rec):
            dbapi_conn.isolation_level = None

        @event.listens_for(eng, "begin")
        def _begin(conn):
            conn.exec_driver_sql("BEGIN IMMEDIATE")
    else:
        # A database that does not answer must fail a connection in seconds, not after the
        # system's TCP retries (minutes): tasks retry, and alert callbacks go on without it.
        args = {} if "connect_timeout" in url else {"connect_timeout": 10}
        eng = create_engine(url, pool_pre_ping=True, hide_parameters=True, connect_args=args)
    event.listen(eng, "handle_error", _without_values)
    if migrate:
        upgrade(eng)
        _MIGRATED.add(url)
    _ENGINES[url] = eng
    return eng


def dispose_all() -> None:
    for eng in _ENGINES.values():
        eng.dispose()
    _ENGINES.clear()
    _MIGRATED.clear()


def migrations() -> list[tuple[int, str, Path]]:
    out = []
    for p in sorted(MIGRATIONS_DIR.glob("*.sql")):
        m = re.match(r"^(\d{3})_(.+)\.sql$", p.name)
        if m:
            out.append((int(m.group(1)), m.group(2), p))
    return out


def _statements(sql: str) -> list[str]:
    # Our migration files hold plain DDL; statements end with ';' at end of line. Comments are
    # stripped first so a ';' inside a comment cannot split a statement.
    body = "\n".join(line for line in sql.splitlines() if not line.lstrip().startswith("--"))
    return [s.strip() for s in body.split(";\n") if s.strip().rstrip(";").strip()]


def render(sql: str, dialect: str) -> str:
    for k, v in _PLACEHOLDERS["postgresql" if dialect.startswith("postgres") else "sqlite"].items():
        sql = sql.replace(k, v)
    return sql


def upgrade(engine: Engine) -> list[int]:
    """Apply pending migrations; returns the versions applied. Safe to call concurrently."""
    applied: list[int] = []
    dialect = engine.dialect.name
    with engine.begin() as conn:
        if dialect == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(724100)"))  # one migrator at a time
        conn.execute(text(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, "
            "applied_at TIMESTAMP NOT NULL)"))
        done = {r[0] for r in conn.execute(text("SELECT version FROM schema_migrations"))}
        for version, name, path in migrations():
            if version in done:
                continue
            for stmt in _statements(render(path.read_text(encoding="utf-8"), dialect)):
                conn.exec_driver_sql(stmt)
            conn.execute(text("INSERT INTO schema_migrations (version, name, applied_at) VALUES (:v, :n, :t)"),
                         {"v": version, "n": name, "t": utcnow()})
            applied.append(version)
        if applied and dialect == "postgresql":
            # A migration that makes or remakes a table leaves it without the grants `hl7ics db
            # roles` gave: where those roles exist, the same grants are given again.
            from .privacy import grant_tables

            grant_tables(conn)
    return applied


# How a PostgreSQL warehouse database is created (config/postgres/init.sql, the tests' and the
# benchmark's throwaway databases): text compared and sorted in byte order, as SQLite does by
# default, so a query orders and matches the same on both. Every indexed text column of the
# warehouse is a code, an identifier or a hash; under a linguistic collation (en_US.UTF-8, the
# postgres image's default, or even C.UTF-8) each B-tree comparison goes through strcoll. On the
# 200,000-message benchmark day this took 3-4 µs of the server's 39-41 µs of CPU per message
# (docs/performance.md, session 17). LC_CTYPE stays the server's: upper() and lower() of é or ɛ.
PG_DATABASE_OPTIONS = "TEMPLATE template0 LC_COLLATE 'C'"


def collation_advice(engine: Engine) -> str | None:
    """What to do about a PostgreSQL warehouse database not created with ``PG_DATABASE_OPTIONS``
    (a collation is fixed when a database is created); ``None`` when it was, and on SQLite."""
    if engine.dialect.name != "postgresql":
        return None
    with engine.connect() as conn:
        collate = conn.execute(text(
            "SELECT datcollate FROM pg_database WHERE datname = current_database()")).scalar_one()
    if collate in ("C", "POSIX"):
        return None
    return (f"the warehouse database sorts text by {collate!r}, not in byte order: create it with "
            f"CREATE DATABASE ... {PG_DATABASE_OPTIONS} and move the data there (pg_dump, pg_restore) "
            f"for loads about a tenth lighter on the server (docs/operations.md, \"Database collation\")")


def current_version(engine: Engine) -> int:
    with engine.connect() as conn:
        return conn.execute(text("SELECT COALESCE(MAX(version), 0) FROM schema_migrations")).scalar_one()


def load_sql(name: str) -> str:
    """Text of ``sql/<name>`` (queries live in files, not in Python strings)."""
    return (SQL_DIR / name).read_text(encoding="utf-8")


@lru_cache(maxsize=None)
def named_queries(name: str) -> dict[str, str]:
    """The named queries of ``sql/<name>`` (``-- name: key`` starts each one; ``;`` optional)."""
    out: dict[str, str] = {}
    key, body = None, []
    for line in load_sql(name).splitlines() + ["-- name: _end"]:
        m = re.match(r"^--\s*name:\s*(\w+)\s*$", line)
        if m:
            if key:
                out[key] = "\n".join(body).strip().rstrip(";").strip()
            key, body = m.group(1), []
        elif key and not line.lstrip().startswith("--"):
            # comment lines are dropped: text() would read a ":word" in a comment as a parameter
            body.append(line)
    return out


def _row_formatter(binary: bool):
    """The driver's own row formatter for a COPY format (the one ``Copy.write_row`` calls), or
    ``None`` if this psycopg has none where it is looked for."""
    try:
        from psycopg import _copy_base
    except ImportError:
        return None
    return getattr(_copy_base, "format_row_binary" if binary else "format_row_text", None)


def _send(cp, rows: list, binary: bool = False, stamps: Sequence[int] = ()) -> None:
    """``rows`` onto the open COPY ``cp`` (``pgcopy.send_rows``); with a psycopg whose formatter
    is not where it is looked for, row by row through ``Copy.write_row``."""
    fmt = _row_formatter(binary)
    tx = getattr(getattr(cp, "formatter", None), "transformer", None)
    if fmt is None or tx is None:
        # No framing of our own (binary=False): write_row adds the binary header and trailer.
        send_rows(rows, lambda row, _tx, _buf: cp.write_row(row), None, cp.write, False, stamps)
    else:
        send_rows(rows, fmt, tx, cp.write, binary, stamps)


class Writer:
    """Batched writes inside one open transaction (``Connection``)."""

    def __init__(self, conn: Connection):
        self.conn = conn
        self.dialect = conn.dialect.name
        self._staged: set[str] = set()

    @property
    def dbapi(self):
        return self.conn.connection.driver_connection

    def allocate_ids(self, table: str, n: int) -> list[int]:
        """Reserve ``n`` ids for ``table.id`` so facts can reference rows before they are written."""
        if n == 0:
            return []
        if self.dialect == "postgresql":
            # One array value instead of n rows: a row each through SQLAlchemy cost 1 µs per id.
            # Ascending, as the callers assign them in order; not always consecutive (other writers
            # draw from the same sequence).
            return self.query(f"SELECT array_agg(v ORDER BY v) FROM (SELECT nextval('{table}_id_seq') AS v "
                              "FROM generate_series(1, ?)) s", [n])[0][0]
        # SQLite: the transaction began IMMEDIATE, so no other writer can interleave.
        start = self.conn.execute(text(f"SELECT COALESCE(MAX(id), 0) FROM {table}")).scalar_one()
        seq = self.conn.execute(text("SELECT seq FROM sqlite_sequence WHERE name = :t"), {"t": table}).scalar()
        start = max(start, seq or 0)
        return list(range(start + 1, start + n + 1))

    @_driver_values_hidden
    def query(self, sql: str, params: Sequence = ()) -> list[tuple]:
        """Run a read with ``?`` placeholders straight on the driver (no SQL compilation per call:
        batches look up hundreds of keys at a time)."""
        if self.dialect == "postgresql":
            sql = sql.replace("?", "%s")
        cur = self.dbapi.cursor()
        cur.execute(sql, tuple(params))
        return cur.fetchall()

    def query_in(self, sql: str, column: str, values: Sequence, params: Sequence = ()) -> list[tuple]:
        """``query`` for every value of ``values``: ``{match}`` in ``sql`` becomes ``column`` matched
        against them, after ``params``. PostgreSQL gets one array parameter (``= ANY``: one plan
        whatever the count; a long IN list costs it more to plan than to run), text values as a
        JSON array; SQLite chunks of IN lists under its 999-parameter limit."""
        out: list[tuple] = []
        if not values:
            return out
        values = list(values)
        step = 50_000 if self.dialect == "postgresql" else 900
        for i in range(0, len(values), step):
            chunk = values[i:i + step]
            if self.dialect == "postgresql" and all(type(v) is str for v in chunk):
                # Text values travel as one JSON array: the driver quotes each element of a list
                # parameter in Python, with a regex per element. For a chunk's 20,000 control IDs
                # that took 59-109 ms of client CPU; json.dumps, one C call, 9-12 ms.
                match = f"{column} = ANY(ARRAY(SELECT json_array_elements_text(?::json)))"
                out.extend(self.query(sql.replace("{match}", match), [*params, json.dumps(chunk)]))
            elif self.dialect == "postgresql":
                out.extend(self.query(sql.replace("{match}", f"{column} = ANY(?)"), [*params, chunk]))
            else:
                out.extend(self.query(sql.replace("{match}", f"{column} IN ({', '.join('?' * len(chunk))})"),
                                      [*params, *chunk]))
        return out

    @_driver_values_hidden
    def copy(self, table: str, columns: Sequence[str], rows: Iterable[Sequence], binary: bool = False) -> None:
        """Plain bulk INSERT for rows that cannot conflict (new ids): COPY straight into the table on
        PostgreSQL, executemany on SQLite. A conflict would fail the batch, never skip rows.

        ``binary``: COPY in PostgreSQL's binary format, for rows that carry raw bytes (see
        ``_copy_binary``); their values must be of their columns' types (text timestamps are
        converted)."""
        rows = list(rows)
        if not rows:
            return
        cols = ", ".join(columns)
        if self.dialect == "postgresql":
            if binary:
                self._copy_binary(table, cols, self._column_types(table, columns), rows)
                return
            with self.dbapi.cursor().copy(f"COPY {table} ({cols}) FROM STDIN") as cp:
                _send(cp, rows)
        else:
            marks = ", ".join("?" for _ in columns)
            self.dbapi.cursor().executemany(f"INSERT INTO {table} ({cols}) VALUES ({marks})", rows)

    def _column_types(self, table: str, columns: Sequence[str]) -> list[str]:
        """PostgreSQL type names of ``columns`` of ``table``, from the catalog."""
        got = dict(self.query("SELECT attname, format_type(atttypid, NULL) FROM pg_attribute "
                              "WHERE attrelid = ?::regclass AND attnum > 0 AND NOT attisdropped", [table]))
        return [got[c] for c in columns]

    def _copy_binary(self, table: str, cols: str, types: list[str], rows: list[Sequence]) -> None:
        """COPY in binary format: raw message bytes go as they are, where the text format would
        send them as hex and make both sides convert them (measured on message_store rows: 3.7
        instead of 7.9 µs per row, client and server together), and text goes unescaped (the
        driver's text format checks every byte for a tab, newline or backslash; the loader's
        fact rows, session 17). Binary values must have their column's exact type, so text
        timestamps become datetimes."""
        with self.dbapi.cursor().copy(f"COPY {table} ({cols}) FROM STDIN (FORMAT BINARY)") as cp:
            cp.set_types(types)
            _send(cp, rows, binary=True, stamps=[i for i, t in enumerate(types) if t.startswith("timestamp")])

    def insert(self, table: str, columns: Sequence[str], rows: Iterable[Sequence], on_conflict_nothing: Sequence[str] = ()):
        self.upsert(table, columns, rows, key=on_conflict_nothing, update=())

    @_driver_values_hidden
    def upsert(self, table: str, columns: Sequence[str], rows: Iterable[Sequence], key: Sequence[str] = (),
               update: Sequence[str] | None = None, where: str | None = None, coalesce: bool = False,
               newer: str | None = None, binary: bool = False):
        """INSERT rows; with ``key``, ON CONFLICT(key) DO UPDATE ``update`` columns (or DO NOTHING).

        ``coalesce`` keeps the stored value where the new one is NULL. With ``newer`` (a column
        that orders versions, e.g. the message id), a row older than the stored one only fills
        the stored NULLs, and ``newer`` keeps the larger value.
        ``where`` is an optional SQL condition on the update (e.g. only newer events win); it may
        refer to ``excluded.col`` and ``<table>.col``. Rows with the same key must be deduplicated
        by the caller (PostgreSQL refuses to update one row twice in a statement).
        ``binary``: stage the rows with a binary COPY, as ``copy`` does (values of their columns'
        types; no NUMERIC column, which takes no float in binary).
        """
        rows = list(rows)
        if not rows:
            return
        cols = ", ".join(columns)
        conflict = ""
        if key:
            upd = [c for c in (columns if update is None else update) if c not in key]
            if upd:
                if coalesce and newer:
                    later = f"excluded.{newer} >= {table}.{newer}"
                    sets = ", ".join(
                        f"{c} = CASE WHEN {later} THEN excluded.{c} ELSE {table}.{c} END" if c == newer else
                        f"{c} = CASE WHEN {later} THEN COALESCE(excluded.{c}, {table}.{c}) "
                        f"ELSE COALESCE({table}.{c}, excluded.{c}) END" for c in upd)
                elif coalesce:
                    sets = ", ".join(f"{c} = COALESCE(excluded.{c}, {table}.{c})" for c in upd)
                else:
                    sets = ", ".join(f"{c} = excluded.{c}" for c in upd)
                conflict = f" ON CONFLICT ({', '.join(key)}) DO UPDATE SET {sets}"
                if where:
                    conflict += f" WHERE {where}"
            else:
                conflict = f" ON CONFLICT ({', '.join(key)}) DO NOTHING"
        if self.dialect == "postgresql":
            stg = f"stg_{table}"
            if stg not in self._staged:
                # Created once per database session and emptied at each commit: creating and
                # dropping it in every transaction would churn the catalog on every batch.
                self.conn.exec_driver_sql(
                    f"CREATE TEMP TABLE IF NOT EXISTS {stg} (LIKE {table} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS")
                self._staged.add(stg)
            cur = self.dbapi.cursor()
            cur.execute(f"TRUNCATE {stg}")
            if binary:
                self._copy_binary(stg, cols, self._column_types(table, columns), rows)
            else:
                with cur.copy(f"COPY {stg} ({cols}) FROM STDIN") as cp:
                    _send(cp, rows)
            # Key order: concurrent loaders (parallel facilities) then lock shared rows in the same
            # order, so they wait for each other instead of deadlocking.
            order = f" ORDER BY {', '.join(key)}" if key else ""
            cur.execute(f"INSERT INTO {table} ({cols}) SELECT {cols} FROM {stg}{order}{conflict}")
        else:
            marks = ", ".join("?" for _ in columns)
            self.dbapi.cursor().executemany(f"INSERT INTO {table} ({cols}) VALUES ({marks}){conflict}", rows)
