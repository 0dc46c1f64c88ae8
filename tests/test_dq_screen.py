"""The data-quality pre-screen (``transforms/dq_screen.py``) against Great Expectations itself.

The screen may spare GX the run of an expectation only when GX would pass it. So on random
batches built from the shipped suites' columns (the values of ``test_quality``'s cases plus edge
values: missing, NaN, blanks, non-breaking and ideographic spaces, trailing newlines, French and
Ewe letters), every verdict the screen gives must be GX's: per row, on the whole batch and on
random sub-batches. It must also give a verdict for every shipped expectation, or the fast path
would silently not be taken. Then whole chunks: ``Validator.validate`` with the screen on and
off must reach the same verdicts on generated traffic with planted faults.
"""
from __future__ import annotations

import random

import pytest

from transforms import faults, generator
from transforms.config import Settings
from transforms.dq_screen import is_null, screen
from transforms.facts import PatientKeyer
from transforms.load import Incoming, Loader
from transforms.quality import CONTEXT_COLUMNS, TABLES, QualityOptions, Validator, _column

from test_quality import BASE, CASES, CONTEXT, SUITES

FACILITIES = ["CHU-SO", "CHU-KARA", "INH-LOME", "PHARM-ATAKPAME", "USP-NANERGOU"]
EDGE_TEXT = [None, "", " ", "\u00a0", "\u3000", "\t", "LN\n", "ln", "Ɖ", "é", "ŋɔ", "0", "123456789", "1234567890",
             "99", "99É", "CNSS", "INAM", "XOF", "F", "C", "NM", "2026-11-10", "2026-11-10 08:30:00",
             "2027-01-01 00:00:00", "1990-01-01", "ADT", "A01", "A03"]
EDGE_NUMBER = [None, float("nan"), 0.0, -1.0, 12.5]


@pytest.fixture(scope="module")
def validator():
    return Validator(QualityOptions(True, SUITES, prescreen=False), FACILITIES)


def _base(table: str) -> dict:
    return {**{c: BASE[table].get(c) for c in TABLES[table]}, **CONTEXT}


def _pools(table: str) -> dict[str, list]:
    base = _base(table)
    pools: dict[str, list] = {c: [v] for c, v in base.items()}
    for t, good, bad in CASES.values():
        if t == table:
            for change in (good, bad):
                for c, v in change.items():
                    pools[c].append(v)
    for c, v in base.items():
        if isinstance(v, bool):
            pools[c] += [True, False]
        elif isinstance(v, (int, float)):
            pools[c] += EDGE_NUMBER
        else:
            pools[c] += EDGE_TEXT
    return pools


def _batch(table: str, n: int, rng: random.Random) -> dict[str, list]:
    """``n`` rows: each column keeps its base value half of the time, so that some sub-batches pass."""
    base = _base(table)
    pools = _pools(table)
    cols = [*TABLES[table], *CONTEXT_COLUMNS]
    return {c: [base[c] if rng.random() < 0.5 else rng.choice(pools[c]) for _ in range(n)] for c in cols}


def _gx_failing_rows(validator, table: str, cols: dict[str, list]) -> dict[str, set[int]]:
    import pandas as pd

    n = len(next(iter(cols.values())))
    # As the validator builds its frames, column by column.
    frame = pd.DataFrame({c: _column(v) for c, v in cols.items()}, index=pd.RangeIndex(n))
    return {name: set(rows) for name, rows in validator.failures(table, frame).items()}


def _sub(cols: dict[str, list], rows: list[int]) -> dict[str, list]:
    return {c: [v[i] for i in rows] for c, v in cols.items()}


@pytest.mark.parametrize("table", sorted(TABLES))
def test_every_screen_verdict_is_the_verdict_of_gx(validator, table):
    rng = random.Random(f"screen-{table}")
    cols = _batch(table, 400, rng)
    failing = _gx_failing_rows(validator, table, cols)
    suite = validator.suites[table]
    expectations = list(zip(suite.checks, suite.document["expectations"]))
    n = len(cols["_now"])
    assert any(failing.values()) and len(set().union(*failing.values())) < n, "some rows must pass, some fail"
    samples = [[i] for i in range(n)] + [list(range(n))]
    samples += [rng.sample(range(n), rng.randint(2, 12)) for _ in range(150)]
    compared = 0
    for rows in samples:
        sub = _sub(cols, rows)
        for check, exp in expectations:
            got = screen(exp, sub.get, validator.parameters)
            assert got is not None, f"{check.name}: the screen gives no verdict on shipped data"
            assert got == (not failing[check.name] & set(rows)), (check.name, rows)
            compared += 1
    assert compared >= len(expectations) * 500


@pytest.mark.parametrize("exp, values, expected", [
    # Nothing the screen cannot reproduce exactly is decided by it: GX decides.
    ({"type": "expect_column_values_to_be_between", "kwargs": {"column": "x", "min_value": 1}}, {"x": [1]}, None),
    ({"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "x", "mostly": 0.9}}, {"x": [1]}, None),
    ({"type": "expect_column_values_to_be_in_set", "kwargs": {"column": "x", "value_set": [1, 2]}}, {"x": [1]}, None),
    ({"type": "expect_column_values_to_be_in_set", "kwargs": {"column": "x", "value_set": ["1"]}}, {"x": [1]}, None),
    ({"type": "expect_column_values_to_be_in_set", "kwargs": {"column": "x", "value_set": {"$PARAMETER": "nope"}}},
     {"x": ["a"]}, None),
    ({"type": "expect_column_values_to_match_regex", "kwargs": {"column": "x", "regex": "a"}}, {"x": ["a", 3]}, None),
    ({"type": "expect_column_values_to_not_be_null",
      "kwargs": {"column": "x", "row_condition": "y > 3", "condition_parser": "pandas"}}, {"x": [1], "y": [4]}, None),
    ({"type": "expect_column_values_to_not_be_null",
      "kwargs": {"column": "x", "row_condition": 'y == "a" | y == "b"', "condition_parser": "pandas"}},
     {"x": [1], "y": ["a"]}, None),
    ({"type": "expect_column_values_to_not_be_null",
      "kwargs": {"column": "x", "row_condition": 'y == "a"', "condition_parser": "great_expectations"}},
     {"x": [1], "y": ["a"]}, None),
    ({"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "missing"}}, {"x": [1]}, None),
    ({"type": "expect_column_pair_values_a_to_be_greater_than_b",
      "kwargs": {"column_A": "a", "column_B": "b", "ignore_row_if": "neither"}}, {"a": ["2"], "b": [None]}, None),
    ({"type": "expect_column_pair_values_a_to_be_greater_than_b",
      "kwargs": {"column_A": "a", "column_B": "b", "ignore_row_if": "either_value_is_missing"}},
     {"a": [2.0], "b": [1.0]}, None),
    ({"type": "expect_column_values_to_match_regex", "kwargs": {"column": "x", "regex": "(["}}, {"x": [None]}, None),
    # And what it decides:
    ({"type": "expect_column_values_to_be_in_set", "kwargs": {"column": "x", "value_set": None}}, {"x": ["z"]}, True),
    ({"type": "expect_column_values_to_be_in_set", "kwargs": {"column": "x", "value_set": {"$PARAMETER": "known"}}},
     {"x": ["a", None]}, True),
    ({"type": "expect_column_values_to_not_be_null",
      "kwargs": {"column": "x", "row_condition": "y.isin(['a', \"b\"]) & z.notnull()", "condition_parser": "pandas"}},
     {"x": [None, None, 1], "y": ["a", "c", "b"], "z": [None, "q", "q"]}, True),
    ({"type": "expect_column_pair_values_a_to_be_greater_than_b",
      "kwargs": {"column_A": "a", "column_B": "b", "ignore_row_if": "both_values_are_missing"}},
     {"a": ["2", None], "b": ["1", None]}, True),
    ({"type": "expect_column_pair_values_a_to_be_greater_than_b",
      "kwargs": {"column_A": "a", "column_B": "b", "or_equal": False, "ignore_row_if": "either_value_is_missing"}},
     {"a": ["2", "1"], "b": ["1", "1"]}, False),
])
def test_the_screen_decides_only_what_it_reproduces(exp, values, expected):
    assert screen(exp, values.get, {"known": ["a"]}) is expected


def test_nan_is_missing():
    assert is_null(None) and is_null(float("nan")) and not is_null("") and not is_null(0.0)


def _prepared(seed: int):
    facilities = Settings.load().facilities()
    msgs = generator.generate_mix(600, seed=seed)
    bad, planted = faults.inject(msgs, 0.08, seed=seed)
    loader = Loader(facilities, PatientKeyer(b"k" * 32), QualityOptions(True, SUITES))
    return loader.prepare([Incoming(raw, "folder", f"t:{i}") for i, raw in enumerate(bad)]), planted


def test_a_chunk_gets_the_same_verdicts_with_and_without_the_screen():
    """Generated traffic with planted faults (several expectations fail, most pass): the screen
    changes which expectations GX runs, never a message's verdict."""
    on, planted = _prepared(5)
    off, _ = _prepared(5)
    assert len(planted) >= 20
    now = "2026-11-20 12:00:00"
    r_on = Validator(QualityOptions(True, SUITES, prescreen=True), FACILITIES).validate(on, now)
    r_off = Validator(QualityOptions(True, SUITES, prescreen=False), FACILITIES).validate(off, now)
    assert (r_on.validated, r_on.failed_messages, r_on.held) == (r_off.validated, r_off.failed_messages, r_off.held)
    assert r_on.failed_messages > 0
    got = [(p.dq.rows, p.dq.failed, p.dq.held) if p.dq else None for p in on]
    want = [(p.dq.rows, p.dq.failed, p.dq.held) if p.dq else None for p in off]
    assert got == want


def test_a_clean_chunk_runs_no_gx(monkeypatch):
    """What the screen is for: a chunk that passes every expectation costs no GX run at all."""
    from transforms import quality

    facilities = Settings.load().facilities()
    loader = Loader(facilities, PatientKeyer(b"k" * 32), QualityOptions(True, SUITES))
    prepared = loader.prepare([Incoming(raw, "folder", f"t:{i}")
                               for i, raw in enumerate(generator.generate_mix(300, seed=3))])
    runs = []
    monkeypatch.setattr(quality, "_off_our_stack", lambda fn, *a: runs.append(a[0]) or [])
    result = Validator(QualityOptions(True, SUITES), [f.code for f in facilities]).validate(prepared, "2030-01-01 00:00:00")
    assert result.validated > 200 and result.failed_messages == 0
    assert runs == []


def test_the_prescreen_switch_comes_from_the_environment(monkeypatch):
    from transforms.config import ConfigError

    assert QualityOptions.from_env().prescreen is True
    monkeypatch.setenv("HL7ICS_DQ_PRESCREEN", "off")
    assert QualityOptions.from_env().prescreen is False
    monkeypatch.setenv("HL7ICS_DQ_PRESCREEN", "sometimes")
    with pytest.raises(ConfigError, match="HL7ICS_DQ_PRESCREEN must be 'on' or 'off'"):
        QualityOptions.from_env()


def test_gather_keeps_every_row_with_its_message_and_counts_rows_per_table():
    """``gather`` feeds every frame: each checked table gets all its rows in message order, each
    row's owner is its message's position, unchecked tables are left out, and a message counts its
    rows per table (empty row lists count nothing)."""
    from transforms.dq_screen import gather

    rng = random.Random(7)
    tables = ["fact_lab_result", "phi_patient", "encounter_event"]
    facts = [{t: [(i, t, k) for k in range(rng.randrange(0, 4))]
              for t in rng.sample(tables + ["fact_unchecked"], rng.randrange(0, 4))} for i in range(300)]
    for with_message in (True, False):
        gathered, counts = gather(facts, tables, with_message)
        assert sorted(gathered) == sorted(tables)
        for t in tables:
            rows, owner = gathered[t]
            assert rows == [r for f in facts for r in f.get(t, [])]
            assert owner == [r[0] for r in rows]
        assert counts == [{**({"message_store": 1} if with_message else {}),
                           **{t: len(rs) for t, rs in f.items() if t in tables and rs}} for f in facts]
