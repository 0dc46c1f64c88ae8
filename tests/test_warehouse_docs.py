"""docs/warehouse.md is the contract with MoH statisticians (issue 3): every table and column of the
migrated schema must be described there, each column in a row of its table's section with an
English and a French description. A migration that adds a column without documenting it fails here."""
from __future__ import annotations

import re

from sqlalchemy import inspect

from transforms.config import PROJECT_ROOT
from transforms.warehouse import get_engine

_SEPARATOR = re.compile(r"^\|\s*-")
_HEADER = re.compile(r"^\|\s*column\s*\|")


def _sections(lines: list[str]) -> list[tuple[str, list[str]]]:
    """(heading, lines under it) for every Markdown heading outside code fences."""
    out: list[tuple[str, list[str]]] = []
    fence = False
    for line in lines:
        if line.startswith("```"):
            fence = not fence
        elif not fence and line.startswith("#"):
            out.append((line, []))
            continue
        if out:
            out[-1][1].append(line)
    return out


def _described(section: list[str]) -> dict[str, bool]:
    """column name -> whether its row has both an EN and a FR cell ("a, b" and "a / b" rows name several)."""
    found: dict[str, bool] = {}
    for line in section:
        if not line.startswith("|") or _SEPARATOR.match(line) or _HEADER.match(line):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 3:
            for name in re.split(r"[,/]", cells[0]):
                if name.strip().strip("`").strip():
                    found[name.strip().strip("`").strip()] = bool(cells[1]) and bool(cells[2])
    return found


def test_every_table_and_column_is_documented_in_english_and_french(sqlite_url):
    insp = inspect(get_engine(sqlite_url))
    schema = {t: [c["name"] for c in insp.get_columns(t)] for t in insp.get_table_names() + insp.get_view_names()}
    sections = _sections((PROJECT_ROOT / "docs" / "warehouse.md").read_text(encoding="utf-8").splitlines())
    problems = []
    for table, columns in sorted(schema.items()):
        name = re.compile(r"(?<!\w)" + re.escape(table) + r"(?!\w)")
        described: dict[str, bool] = {}
        mine = [body for head, body in sections if name.search(head)]
        if not mine:
            problems.append(f"{table}: no section")
        for body in mine:
            described.update(_described(body))
        problems += [f"{table}.{c}: {'no row' if c not in described else 'an empty EN or FR cell'}"
                     for c in columns if mine and not described.get(c)]
    assert not problems, "docs/warehouse.md is missing:\n" + "\n".join(problems)
    assert len(schema) > 40  # the schema was really read
