"""Data-quality pre-screen: whether an expectation passes on a batch, decided from the batch's
values, without a Great Expectations run, for the expectation types and arguments whose GX
semantics it reproduces exactly.

Why: a GX run costs mostly a fixed amount per expectation, whatever the number of rows (about
0.3 s per 20,000-message chunk for the 36 shipped expectations, a fifth of the ingest's CPU),
and nearly every chunk passes nearly every expectation. The screen answers those from plain
lists in a few milliseconds. Every expectation it does not pass (it failed, or the screen does
not know it) still goes to GX, which decides and locates the failing rows
(``quality.Validator.validate``). So a failure is always GX's finding; the screen only ever
spares GX the run of an expectation that passes.

Inputs: one expectation as the suite's JSON holds it (``type``, ``kwargs``), a function giving a
column's values as a list (one value per row of the batch), and the suite parameters
(``known_facilities``...). Output: True (GX would pass it), False (GX would fail it) or None
(unknown here; GX decides).

Exactness rules: only the four types the shipped suites use, only the kwargs listed below, only
text columns where GX compares text, and row conditions made of ``col == "x"``,
``col.isin([...])`` and ``col.notnull()`` joined by ``&``. Regexes run through the same pandas
call GX makes (``astype(str).str.contains``) on the distinct values, so the regex engine is the
one GX uses. ``tests/test_dq_screen.py`` compares every verdict with GX's on random batches;
``HL7ICS_DQ_PRESCREEN=off`` sends every expectation to GX.
"""
from __future__ import annotations

import ast
import re
from typing import Callable

Values = Callable[[str | None], "list | None"]  # a column's values, or None when the batch lacks it

_COMMON = {"row_condition", "condition_parser", "meta", "result_format", "catch_exceptions"}
_KWARGS = {
    "expect_column_values_to_not_be_null": {"column"} | _COMMON,
    "expect_column_values_to_be_in_set": {"column", "value_set"} | _COMMON,
    "expect_column_values_to_match_regex": {"column", "regex"} | _COMMON,
    "expect_column_pair_values_a_to_be_greater_than_b": {"column_A", "column_B", "or_equal", "ignore_row_if"}
    | _COMMON,
}
_EQ = re.compile(r"""(\w+)\s*==\s*(?:"([^"\\]*)"|'([^'\\]*)')""")
_ISIN = re.compile(r"(\w+)\.isin\(\s*(\[[^\[\]]*\])\s*\)")
_NOTNULL = re.compile(r"(\w+)\.notnull\(\)")


def is_null(v) -> bool:
    """What pandas' ``isnull`` finds in the values the loader puts in frames (None, NaN)."""
    return v is None or (v.__class__ is float and v != v)


def _all_text(col: list) -> bool:
    """Whether every value of ``col`` is text or None. (Only a float can be NaN, so a text
    column's missing values are its Nones.)

    A plain loop: compiled (``transforms.NATIVE_MODULES``), it is one type test per value, 14
    times faster than building ``set(map(type, col))``; from source it is slower than that set,
    and the screen is still far cheaper than the GX run it spares."""
    for v in col:
        if v is not None and type(v) is not str:
            return False
    return True


def column(rows: list[tuple], i: int) -> list:
    """The ``i``-th value of every row: a frame column of row tuples (``quality._Columns``)."""
    return [r[i] for r in rows]


def spread(values: list, owner: list[int]) -> list:
    """``values`` (one per message) spread to rows: ``owner`` gives each row's message."""
    return [values[k] for k in owner]


def gather(facts: list[dict], tables: list[str], with_message: bool) -> tuple[dict[str, tuple[list, list]], list[dict]]:
    """Each checked table's rows from every message's ``facts`` (table -> row tuples), with each
    row's owner (the message's position), in one pass; and per message, its row count in each
    checked table it has rows in (``message_store``, one row each, when ``with_message``)."""
    gathered: dict[str, tuple[list, list]] = {t: ([], []) for t in tables}
    counts: list[dict] = []
    for i, own_facts in enumerate(facts):
        mine: dict = {"message_store": 1} if with_message else {}
        for table, own in own_facts.items():  # the few tables a message has rows in
            slot = gathered.get(table)
            if slot is not None and own:
                n = len(own)
                slot[0].extend(own)
                if n == 1:
                    slot[1].append(i)
                else:
                    slot[1].extend([i] * n)
                mine[table] = n
        counts.append(mine)
    return gathered, counts


def _present(col: list) -> set | None:
    """The distinct values of ``col`` that are not missing, if all are text; else None."""
    if not _all_text(col):
        return None
    present = set(col)
    present.discard(None)
    return present


def _no_nulls(col: list) -> bool:
    """What GX's not-null check finds: no None, and no NaN when the column holds a float."""
    has_float = False
    for v in col:
        if v is None:
            return False
        if type(v) is float:
            has_float = True
    return not has_float or not any(v != v for v in col)


def screen(expectation: dict, values: Values, parameters: dict) -> bool | None:
    kwargs = expectation.get("kwargs") or {}
    kind = expectation.get("type")
    if kind not in _KWARGS or not set(kwargs) <= _KWARGS[kind]:
        return None
    rows = _selected(kwargs, values)
    if rows is None:
        return None
    if kind == "expect_column_pair_values_a_to_be_greater_than_b":
        return _pair(kwargs, values, rows)
    col = values(kwargs.get("column"))
    if col is None:
        return None
    if rows is not _ALL:
        col = [col[i] for i in rows]
    if kind == "expect_column_values_to_not_be_null":
        return _no_nulls(col)
    present = _present(col)  # GX leaves missing values out of these two
    if present is None:
        return None
    if kind == "expect_column_values_to_be_in_set":
        allowed = kwargs.get("value_set")
        if isinstance(allowed, dict):
            if set(allowed) != {"$PARAMETER"} or allowed["$PARAMETER"] not in parameters:
                return None
            allowed = parameters[allowed["$PARAMETER"]]
        if allowed is None:
            return True  # GX: vacuously true
        if not isinstance(allowed, (list, tuple, set)) or any(v.__class__ is not str for v in allowed):
            return None
        return present <= set(allowed)
    regex = kwargs.get("regex")
    if not isinstance(regex, str):
        return None
    try:
        re.compile(regex)
    except re.error:
        return None  # GX reports the pattern, even on a chunk with nothing to match
    if not present:
        return True
    import pandas as pd

    from .quality import _column

    return bool(pd.Series(_column(sorted(present))).astype(str).str.contains(regex).all())


class _All:
    """Every row (no row condition)."""


_ALL = _All()


def _selected(kwargs: dict, values: Values):
    """The rows a row condition keeps (list of positions), ``_ALL``, or None if unknown here."""
    cond = kwargs.get("row_condition")
    if not cond:
        return _ALL
    if kwargs.get("condition_parser") != "pandas" or not isinstance(cond, str):
        return None
    keep = None
    for term in cond.split("&"):
        term = term.strip()
        if m := _EQ.fullmatch(term):
            col, test = m.group(1), {m.group(2) if m.group(2) is not None else m.group(3)}
        elif m := _ISIN.fullmatch(term):
            try:
                listed = ast.literal_eval(m.group(2))
            except (ValueError, SyntaxError):
                return None
            if any(v.__class__ is not str for v in listed):
                return None
            col, test = m.group(1), set(listed)
        elif m := _NOTNULL.fullmatch(term):
            col, test = m.group(1), None
        else:
            return None
        vals = values(col)
        if vals is None:
            return None
        if test is None:
            hits = [not is_null(v) for v in vals]
        elif not _all_text(vals):
            return None  # text compared with numbers: left to GX
        else:
            hits = [v in test for v in vals]  # a missing value is in no set of text
        keep = hits if keep is None else [a and b for a, b in zip(keep, hits)]
    return [i for i, k in enumerate(keep or ()) if k]


def _pair(kwargs: dict, values: Values, rows) -> bool | None:
    a, b = values(kwargs.get("column_A")), values(kwargs.get("column_B"))
    if a is None or b is None:
        return None
    ignore = kwargs.get("ignore_row_if", "both_values_are_missing")
    if ignore not in ("either_value_is_missing", "both_values_are_missing", "neither"):
        return None
    if rows is not _ALL:
        a, b = [a[i] for i in rows], [b[i] for i in rows]
    if not (_all_text(a) and _all_text(b)):
        return None  # only text is compared here
    if ignore != "either_value_is_missing":
        for x, y in zip(a, b):
            if (x is None) != (y is None) or (ignore == "neither" and x is None):
                return None  # a comparison with a missing value: left to GX
    if kwargs.get("or_equal"):
        return not any(x is not None and y is not None and x < y for x, y in zip(a, b))
    return not any(x is not None and y is not None and x <= y for x, y in zip(a, b))
