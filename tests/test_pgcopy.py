"""COPY rows through transforms.pgcopy.send_rows: framing, blocks and stamps (no database), and the
same table contents as the driver's own Copy.write_row on the real PostgreSQL, text and binary."""
from __future__ import annotations

from datetime import datetime

import pytest
from sqlalchemy import text

from transforms import pgcopy, warehouse
from transforms.warehouse import Writer, get_engine


def _collect(rows, binary=False, stamps=()):
    seen, writes = [], []

    def fmt(row, tx, buf):
        seen.append(list(row))
        buf += b"r" * 1000

    pgcopy.send_rows(rows, fmt, "tx", lambda b: writes.append(bytes(b)), binary, stamps)
    return seen, writes


def test_binary_rows_are_framed_and_sent_in_blocks():
    rows = [("a", "2026-12-07 08:00:00", None)] * 200
    seen, writes = _collect(rows, binary=True, stamps=[1])
    data = b"".join(writes)
    # PostgreSQL's framing: signature, flags and header extension (19 bytes); field count -1.
    assert data[:19] == b"PGCOPY\n\xff\r\n\x00" + bytes(8) and data[-2:] == b"\xff\xff"
    assert len(data) == 19 + 200 * 1000 + 2
    assert len(writes) == 4 and all(len(w) >= pgcopy.BLOCK_BYTES for w in writes[:-1])
    # The text stamp became a datetime, the others are untouched; the caller's rows are not changed.
    assert seen[0] == ["a", datetime(2026, 12, 7, 8), None] and rows[0][1] == "2026-12-07 08:00:00"


def test_text_rows_have_no_framing_and_keep_their_values():
    seen, writes = _collect([("x", "2026-12-07", 1)], stamps=())
    assert writes == [b"r" * 1000] and seen == [["x", "2026-12-07", 1]]
    assert _collect([]) == ([], [])


NAMES = ["Akpédzé Ɖoe", "Kɔkɔ Ŋuʋi\tcoupé", "Ƒafa\\n", "Éwé\r\nligne", None, ""]


@pytest.mark.parametrize("binary", [False, True], ids=["text", "binary"])
def test_copied_rows_read_back_as_the_drivers_write_row_sends_them(pg_url, monkeypatch, binary):
    """The driver's formatter through send_rows, and Copy.write_row (the fallback), load the same
    values: tabs, newlines, backslashes, NULLs, Ewe letters, numbers, timestamps and bytes."""
    eng = get_engine(pg_url)
    rows = [(i, name, i * 1.5 if i % 2 else None, f"2026-12-0{1 + i % 5} 0{i % 10}:30:00",
             bytes([i % 256, 0, 255, 10, 9]) + (name or "").encode("utf-8"))
            for i, name in enumerate(NAMES * 3000)]
    cols = ("id", "name", "amount", "at", "raw")
    got = {}
    for how in ("send_rows", "write_row"):
        if how == "write_row":
            monkeypatch.setattr(warehouse, "_row_formatter", lambda binary: None)
        with eng.begin() as conn:
            conn.exec_driver_sql(f"CREATE TABLE copy_{how} (id BIGINT, name TEXT, amount DOUBLE PRECISION, "
                                 "at TIMESTAMP, raw BYTEA)")
            w = Writer(conn)
            if binary:
                w.copy(f"copy_{how}", cols, rows, binary=True)
            else:
                # The text format carries bytea as hex, as the driver would dump bytes.
                w.copy(f"copy_{how}", cols, [r[:4] + ("\\x" + r[4].hex(),) for r in rows])
            got[how] = conn.execute(text(f"SELECT id, name, amount, at, raw FROM copy_{how} ORDER BY id")).all()
    assert got["send_rows"] == got["write_row"]
    assert len(got["send_rows"]) == len(rows)
    first = got["send_rows"][1]
    assert first.name == "Kɔkɔ Ŋuʋi\tcoupé" and first.amount == 1.5 and first.at == datetime(2026, 12, 2, 1, 30)
    assert bytes(first.raw) == bytes([1, 0, 255, 10, 9]) + "Kɔkɔ Ŋuʋi\tcoupé".encode("utf-8")
    assert [r.name for r in got["send_rows"][:6]] == NAMES


def test_a_binary_staged_upsert_stores_what_the_text_one_does(pg_url):
    """Writer.upsert(binary=True), as the loader stages patients and encounters: the same rows,
    updates and conflicts as through the text COPY."""
    eng = get_engine(pg_url)
    cols = ("k", "name", "year", "at", "n")
    first = [(f"k{i}", NAMES[i % len(NAMES)], 1980 + i % 40, f"2026-12-07 08:{i % 60:02d}:00", i) for i in range(500)]
    later = [(f"k{i}", "Ɛyram Ʋɔ\\", None, "2026-12-08T09:00:00", -i) for i in range(0, 1000, 3)]
    got = {}
    for binary in (False, True):
        table = f"up_{int(binary)}"
        with eng.begin() as conn:
            conn.exec_driver_sql(f"CREATE TABLE {table} (k TEXT PRIMARY KEY, name TEXT, year INTEGER, "
                                 "at TIMESTAMP, n BIGINT)")
            w = Writer(conn)
            for rows in (first, later):
                w.upsert(table, cols, rows, key=("k",), update=("name", "at", "n"), binary=binary,
                         where=f"excluded.n <> {table}.n")
            got[binary] = conn.execute(text(f"SELECT k, name, year, at, n FROM {table} ORDER BY k")).all()
    assert got[True] == got[False]
    assert len(got[True]) == 500 + len([r for r in later if int(r[0][1:]) >= 500])
    k3 = dict((r.k, r) for r in got[True])["k3"]
    assert (k3.name, k3.year, k3.at, k3.n) == ("Ɛyram Ʋɔ\\", 1983, datetime(2026, 12, 8, 9), -3)
