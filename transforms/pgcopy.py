"""Rows onto an open PostgreSQL COPY in one compiled loop.

Input: a list of row tuples, the driver's row formatter for the COPY's format (psycopg's C
``format_row_text`` or ``format_row_binary``) with its transformer, and the COPY's ``write``.
Output: the rows sent in blocks of about 64 KiB; in binary format framed by the format's header
and trailer (PostgreSQL's COPY documentation), and with ISO text timestamps of the ``stamps``
columns turned into datetimes, as binary values must be of their column's type.

Why: ``Copy.write_row`` runs two Python frames per row around the same C formatter, and the
loader sends four to five rows per message (docs/performance.md, session 17). The formatting
itself is still the driver's, the function ``Copy.write_row`` calls; ``transforms.warehouse``
falls back to ``write_row`` where it cannot find it. No database driver is imported here
(compiled with mypyc, ``transforms.NATIVE_MODULES``).
"""
from __future__ import annotations

from datetime import datetime
from typing import Callable, Sequence

# PostgreSQL's binary COPY framing: signature, flags (no OIDs), header extension length; and the
# field count -1 that ends the data.
BINARY_HEADER = b"PGCOPY\n\xff\r\n\x00" + b"\x00\x00\x00\x00" + b"\x00\x00\x00\x00"
BINARY_TRAILER = b"\xff\xff"
BLOCK_BYTES = 1 << 16


def send_rows(rows: list[Sequence[object]], format_row: Callable[[Sequence[object], object, bytearray], None],
              transformer: object, write: Callable[[bytearray], None], binary: bool = False,
              stamps: Sequence[int] = ()) -> None:
    buf = bytearray(BINARY_HEADER) if binary else bytearray()
    # The rows of a chunk share some stamps (its write time, say): each distinct text is parsed once.
    parsed: dict[str, datetime] = {}
    for r in rows:
        if stamps:
            row: list[object] = list(r)
            for i in stamps:
                v = row[i]
                if isinstance(v, str):
                    d = parsed.get(v)
                    if d is None:
                        if len(parsed) > 4096:
                            parsed.clear()
                        d = parsed[v] = datetime.fromisoformat(v)
                    row[i] = d
            format_row(row, transformer, buf)
        else:
            format_row(r, transformer, buf)
        if len(buf) >= BLOCK_BYTES:
            write(buf)
            buf = bytearray()
    if binary:
        buf += BINARY_TRAILER
    if buf:
        write(buf)
