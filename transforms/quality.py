"""Data quality: check each batch's warehouse rows against the Great Expectations suites in
``expectations/`` before they are loaded.

Inputs: the ``Prepared`` messages of a batch (``load.Loader.prepare``), the suites (one JSON file
per warehouse table, editable without Python; each expectation carries ``meta.name`` and
``meta.severity``) and ``QualityOptions`` (environment: ``HL7ICS_DQ`` on/off,
``HL7ICS_EXPECTATIONS_DIR``, ``HL7ICS_DQ_MAX_FAILURE_RATE``, ``HL7ICS_DQ_MIN_BATCH``).
Output: a ``Verdict`` on every validated message (``p.dq``): the rows it has per table, the rows
that failed each expectation, and whether its batch was held because too many messages failed.
``load.Loader.write`` turns verdicts into message states (an ``error`` failure quarantines the
message with the expectation's name as reason; a ``warning`` is loaded, flagged and counted) and
``dq_result`` rows.

GX runs in an ephemeral context (nothing on disk) built once per process and suite directory; the
cost of a validation is mostly per expectation, not per row, so callers validate large chunks
(``ingest`` validates up to ``VALIDATION_CHUNK`` messages at a time). Values never leave this
module: only expectation names and row counts do, so nothing here can leak patient data.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from .config import PROJECT_ROOT, ConfigError
from .dq_screen import column, gather, screen, spread
# The message_store row the suite checks is built with the facts (facts.message_row, compiled
# with them: see transforms.NATIVE_MODULES).
from .facts import COLUMNS, MESSAGE_COLUMNS

SEVERITIES = ("error", "warning")
THRESHOLD_REASON = "DQ_THRESHOLD"
STAGE = "dq"
# The check whose failures also raise an ops_alert (an onboarding gap, not bad data).
UNKNOWN_FACILITY_CHECK = "facility_known"
VALIDATION_CHUNK = 20_000
# Columns every frame carries besides its table's own, so suites can compare a row with its message.
CONTEXT_COLUMNS = ("_message_type", "_trigger_event", "_message_at", "_now")
# The suite for ``message_store`` checks one row per message; the others check the rows a message
# adds to that table.
TABLES = {"message_store": MESSAGE_COLUMNS,
          **{t: COLUMNS[t] for t in ("phi_patient", "encounter_event", "fact_lab_order", "fact_lab_result",
                                     "fact_medication", "fact_immunization", "fact_charge", "fact_coverage")}}
_NAME = re.compile(r"^[a-z][a-z0-9_]{2,63}$")
_COLUMN_KWARGS = ("column", "column_A", "column_B")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class QualityConfigError(ConfigError):
    """A suite file is invalid; the message names the file, the expectation and the problem."""


@dataclass(frozen=True)
class Check:
    name: str
    table: str
    severity: str
    description: str


@dataclass
class Suite:
    table: str
    path: Path
    document: dict
    checks: list[Check]
    columns: tuple[str, ...] = ()  # the columns its expectations read: only these go into the frame


@dataclass
class Verdict:
    """What validation found for one message (counts only, never values)."""

    rows: dict = field(default_factory=dict)      # table -> rows this message has in it
    failed: dict = field(default_factory=dict)    # expectation name -> rows that failed
    held: bool = False                            # its batch passed the failure-rate threshold

    def errors(self, checks: dict[str, Check]) -> list[str]:
        return [n for n in self.failed if checks[n].severity == "error"]

    def warnings(self, checks: dict[str, Check]) -> list[str]:
        return [n for n in self.failed if checks[n].severity == "warning"]


@dataclass(frozen=True)
class QualityOptions:
    enabled: bool = True
    directory: Path = PROJECT_ROOT / "expectations"
    max_failure_rate: float = 0.5
    min_batch: int = 20
    # Whether ``dq_screen`` may pass expectations without a GX run (off: GX evaluates every one).
    prescreen: bool = True

    @classmethod
    def from_env(cls) -> "QualityOptions":
        flag = os.environ.get("HL7ICS_DQ", "on").strip().lower()
        screen = os.environ.get("HL7ICS_DQ_PRESCREEN", "on").strip().lower()
        for name, value in (("HL7ICS_DQ", flag), ("HL7ICS_DQ_PRESCREEN", screen)):
            if value not in ("on", "off", "true", "false", "1", "0"):
                raise ConfigError(f"{name} must be 'on' or 'off'")
        try:
            rate = float(os.environ.get("HL7ICS_DQ_MAX_FAILURE_RATE", "0.5"))
            min_batch = int(os.environ.get("HL7ICS_DQ_MIN_BATCH", "20"))
        except ValueError:
            raise ConfigError("HL7ICS_DQ_MAX_FAILURE_RATE must be a number and HL7ICS_DQ_MIN_BATCH an integer") from None
        if not 0.0 < rate <= 1.0:
            raise ConfigError("HL7ICS_DQ_MAX_FAILURE_RATE must be in (0, 1]")
        return cls(flag in ("on", "true", "1"),
                   Path(os.environ.get("HL7ICS_EXPECTATIONS_DIR") or PROJECT_ROOT / "expectations"), rate, max(1, min_batch),
                   screen in ("on", "true", "1"))


def load_suites(directory: str | os.PathLike) -> dict[str, Suite]:
    """Read and check every ``*.json`` suite; errors name the file and the expectation."""
    directory = Path(directory)
    suites: dict[str, Suite] = {}
    names: dict[str, Path] = {}
    files = sorted(directory.glob("*.json"))
    if not files:
        raise QualityConfigError(f"{directory}: no expectation suites (*.json) found")
    for path in files:
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise QualityConfigError(f"{path.name}: not readable JSON ({type(exc).__name__}: {exc})") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("expectations"), list):
            raise QualityConfigError(f"{path.name}: expected an object with 'name' and an 'expectations' list")
        table = (doc.get("meta") or {}).get("table") or doc.get("name")
        if table not in TABLES:
            raise QualityConfigError(f"{path.name}: meta.table '{table}' is not one of {', '.join(TABLES)}")
        if table in suites:
            raise QualityConfigError(f"{path.name}: a second suite for table '{table}' ({suites[table].path.name})")
        columns = set(TABLES[table]) | set(CONTEXT_COLUMNS)
        checks = []
        needed: set[str] = set()
        for i, exp in enumerate(doc["expectations"]):
            where = f"{path.name}: expectation #{i + 1}"
            if not isinstance(exp, dict) or not isinstance(exp.get("type"), str) or not isinstance(exp.get("kwargs"), dict):
                raise QualityConfigError(f"{where}: needs 'type' and 'kwargs'")
            meta = exp.get("meta") or {}
            name = meta.get("name")
            if not isinstance(name, str) or not _NAME.match(name):
                raise QualityConfigError(f"{where}: meta.name must be lower_snake_case (3-64 characters)")
            where = f"{path.name}: expectation '{name}'"
            if name in names:
                raise QualityConfigError(f"{where}: name already used in {names[name].name} (names are replay reasons)")
            names[name] = path
            if meta.get("severity") not in SEVERITIES:
                raise QualityConfigError(f"{where}: meta.severity must be 'error' or 'warning'")
            if "mostly" in exp["kwargs"]:
                raise QualityConfigError(f"{where}: 'mostly' is not supported: every failing row decides its "
                                         "message's state, and HL7ICS_DQ_MAX_FAILURE_RATE holds a whole batch")
            used = [exp["kwargs"][k] for k in _COLUMN_KWARGS if k in exp["kwargs"]]
            used += list(exp["kwargs"].get("column_list") or [])
            for col in used:
                if col not in columns:
                    raise QualityConfigError(f"{where}: column '{col}' is not in {table} "
                                             f"(known: {', '.join(sorted(columns))})")
            cond = exp["kwargs"].get("row_condition") or ""
            if not isinstance(cond, str):
                raise QualityConfigError(f"{where}: row_condition must be a string (pandas query syntax)")
            used += [c for c in _IDENT.findall(cond) if c in columns]
            needed.update(used)
            checks.append(Check(name, table, meta["severity"], str(meta.get("description") or name)))
        suites[table] = Suite(table, path, doc, checks, tuple(c for c in (*TABLES[table], *CONTEXT_COLUMNS)
                                                               if c in needed))
    return suites


def known_insurers(config_dir: Path | None = None) -> list[str]:
    """Insurer codes of config/insurers.yaml (the ``known_insurers`` suite parameter)."""
    import yaml

    from .config import Settings

    path = (config_dir or Settings.load().config_dir) / "insurers.yaml"
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return ["CNSS", "INAM"]  # the two public schemes of the AMU
    return sorted(str(i.get("code")) for i in doc.get("insurers") or [] if isinstance(i, dict) and i.get("code"))


class _Engine:
    """The GX objects for one suite directory: context, one dataframe asset per table, suites."""

    def __init__(self, suites: dict[str, Suite]):
        os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
        import great_expectations as gx
        from great_expectations.data_context.types.base import ProgressBarsConfig
        from great_expectations.expectations.expectation import (ColumnMapExpectation, ColumnPairMapExpectation,
                                                                 MulticolumnMapExpectation)

        _skip_fingerprints()
        self.context = gx.get_context(mode="ephemeral")
        self.context.variables.progress_bars = ProgressBarsConfig(globally=False)
        source = self.context.data_sources.add_pandas("hl7ics_dq")
        self.batches = {}
        self.suites = {}
        self.documents: dict[str, dict] = {}
        for table, suite in suites.items():
            asset = source.add_dataframe_asset(table)
            self.batches[table] = asset.add_batch_definition_whole_dataframe(f"{table}_batch")
            try:
                gsuite = gx.ExpectationSuite(name=suite.document.get("name") or table,
                                             expectations=suite.document["expectations"],
                                             meta=suite.document.get("meta") or {})
            except Exception as exc:
                raise QualityConfigError(f"{suite.path.name}: {type(exc).__name__}: {exc}") from None
            built = {e.meta.get("name") for e in gsuite.expectations}
            for check, exp in zip(suite.checks, suite.document["expectations"]):
                # GX logs and drops an expectation it cannot build instead of raising.
                if check.name not in built:
                    raise QualityConfigError(f"{suite.path.name}: expectation '{check.name}' of type "
                                             f"'{exp['type']}' is unknown to Great Expectations or has invalid kwargs")
            for exp, check in zip(gsuite.expectations, suite.checks):
                # Only row-level expectations can send a row to quarantine.
                if not isinstance(exp, (ColumnMapExpectation, ColumnPairMapExpectation, MulticolumnMapExpectation)):
                    raise QualityConfigError(f"{suite.path.name}: expectation '{check.name}' ({type(exp).__name__}) "
                                             "is not row-level; only column map, column pair and multicolumn "
                                             "expectations are supported")
            self.suites[table] = gsuite
            self.documents[table] = suite.document
        self._located: dict[tuple, object] = {}

    def run(self, table: str, frame, parameters: dict, names: tuple[str, ...] | None = None) -> list:
        """GX's results for ``table``'s suite on ``frame``: each expectation's once, and for the
        ones that failed, with the positions of the failing rows. ``names``: only these
        expectations, located at once (``dq_screen`` found them failing or could not tell).

        Why two passes: most chunks fail few expectations, and asking GX for positions
        (``COMPLETE``) costs about 70% more than asking for pass or fail (``BOOLEAN_ONLY``), mostly
        in fixed work per expectation. So every expectation is screened, and only those that
        failed run again, on the same batch, for their positions. Without ``mostly`` (which
        ``load_suites`` refuses), an expectation passes exactly when no row fails it."""
        batch = self.batches[table].get_batch(batch_parameters={"dataframe": frame})
        if names is not None:
            return batch.validate(self._locating(table, names), result_format=_RESULT_FORMAT,
                                  expectation_parameters=parameters).results
        screened = batch.validate(self.suites[table], result_format=_SCREEN_FORMAT,
                                  expectation_parameters=parameters).results
        failed = tuple(r.expectation_config.meta["name"] for r in screened
                       if not r.success and _raised(r) is None)
        if not failed:
            return screened
        located = batch.validate(self._locating(table, failed), result_format=_RESULT_FORMAT,
                                 expectation_parameters=parameters).results
        return [r for r in screened if r.expectation_config.meta["name"] not in failed] + located

    def _locating(self, table: str, names: tuple[str, ...]):
        """The suite of ``table``'s expectations named ``names`` (kept: few combinations fail)."""
        suite = self._located.get((table, names))
        if suite is None:
            import great_expectations as gx

            doc = self.documents[table]
            suite = self._located[(table, names)] = gx.ExpectationSuite(
                name=f"{doc.get('name') or table}_located",
                expectations=[e for e in doc["expectations"] if e["meta"]["name"] in names])
        return suite


def _skip_fingerprints() -> None:
    """Stop GX fingerprinting every frame it is given.

    Why: GX hashes each batch's whole frame (``hash_pandas_object``, then MD5) into a batch
    marker that nothing here reads: a fifth of GX's time on a 20,000-message chunk. It skips the
    hash for frames of ``HASH_THRESHOLD`` bytes or more; a threshold of 0 sends every frame down
    that existing path. It is a module setting of the pinned GX, not a documented option:
    ``test_gx_does_not_fingerprint_frames`` fails if an upgrade renames it."""
    from great_expectations.execution_engine import pandas_execution_engine

    if hasattr(pandas_execution_engine, "HASH_THRESHOLD"):
        pandas_execution_engine.HASH_THRESHOLD = 0


def _raised(result) -> str | None:
    """The message of an exception GX caught while evaluating ``result``'s expectation, or None.

    GX reports an exception of the expectation itself at the top of ``exception_info``, but one
    of a metric it computes (a range check on a text column, say) under that metric's id, with
    the result merely unsuccessful: read as a failure with no failing rows, the check passed."""
    info = result.exception_info or {}
    if info.get("raised_exception"):
        return str(info.get("exception_message") or "")
    for value in info.values():
        if isinstance(value, dict) and value.get("raised_exception") not in (None, False, "False"):
            return str(value.get("exception_message") or "")
    return None


_SCREEN_FORMAT = {"result_format": "BOOLEAN_ONLY"}
# Only the failing rows' positions: GX then skips gathering the failing values themselves (and
# the sample lists and queries built from them), which also keeps patient data out of results.
_RESULT_FORMAT = {"result_format": "COMPLETE", "exclude_unexpected_values": True, "partial_unexpected_count": 0,
                  "include_unexpected_rows": False, "return_unexpected_index_query": False}
_ENGINES: dict[tuple, _Engine] = {}
_GX_THREAD: tuple[int, object] | None = None  # (pid, executor): a forked worker makes its own


def _off_our_stack(fn, *args):
    """``fn(*args)`` in a thread of its own, waited for.

    Why: GX raises and catches exceptions internally and keeps some of them in reference cycles.
    A kept traceback holds its frames, and each frame its caller (``f_back``) with the caller's
    locals, up to the top of the stack: run from the loader, that was the whole chunk of 20,000
    prepared messages, alive until the cyclic collector found it (half a second per chunk, and
    the chunk's memory held meanwhile). A thread's stack ends at the thread."""
    global _GX_THREAD
    if _GX_THREAD is None or _GX_THREAD[0] != os.getpid():
        from concurrent.futures import ThreadPoolExecutor

        _GX_THREAD = (os.getpid(), ThreadPoolExecutor(1, thread_name_prefix="hl7ics-gx"))
    return _GX_THREAD[1].submit(fn, *args).result()


def before_fork() -> None:
    """Stop the GX thread and wait for it. After ``result()`` returns, the thread is still
    freeing the run's objects; a fork at that moment can copy a lock it holds (allocator,
    logging) into the child, which then deadlocks. A forked worker starts its own thread."""
    global _GX_THREAD
    if _GX_THREAD is not None and _GX_THREAD[0] == os.getpid():
        _GX_THREAD[1].shutdown(wait=True)
    _GX_THREAD = None


def _engine_for(directory: Path, suites: dict[str, Suite]) -> _Engine:
    key = (str(directory), tuple(sorted((s.path.name, s.path.stat().st_mtime_ns) for s in suites.values())))
    eng = _ENGINES.get(key)
    if eng is None:
        eng = _ENGINES[key] = _Engine(suites)
    return eng


@dataclass
class BatchResult:
    validated: int = 0
    failed_messages: int = 0
    held: bool = False


def _column(values: list):
    """A frame column of ``values``, of the dtype pandas would infer for them.

    Why: a column of text (and missing values) becomes pandas' pyarrow-backed ``str`` dtype, and
    pandas checks every value in Python on the way; pyarrow converts the same list itself at
    about twice the speed (a fifth of the frames' cost). Anything else (numbers, flags, mixed
    types, all missing) is left to pandas' inference. Fact values are never ``bytes``, which
    pyarrow would also take as text."""
    import pandas as pd
    import pyarrow as pa

    global _STR
    if _STR is None:
        _STR = pd.Series(["x"]).dtype
    if not (isinstance(_STR, pd.StringDtype) and _STR.storage == "pyarrow"):
        return values  # a pandas that infers another string dtype: let it
    try:
        arr = pa.array(values, type=pa.large_string())
    except (pa.ArrowTypeError, pa.ArrowInvalid):
        return values
    if arr.null_count == len(arr):
        return values  # pandas infers object for a column of nothing but missing values
    return pd.arrays.ArrowStringArray(arr, dtype=_STR)


_STR = None  # the dtype pandas infers for text, found on first use (pandas is imported lazily)


class _Columns:
    """A table's columns as lists, each built on first use: ``values(name)``, None for a column
    the table does not have. The rows' own columns come from the row tuples, the context columns
    from each row's message (``owner``: its position in the batch), ``_now`` is the run's time."""

    def __init__(self, rows: list[tuple], columns: tuple[str, ...], owner: list[int], context: list[list], now: str):
        self.rows, self.owner, self.context, self.now = rows, owner, context, now
        self.position = {c: i for i, c in enumerate(columns)}
        self.built: dict[str, list] = {}

    def __call__(self, name: str) -> list | None:
        got = self.built.get(name)
        if got is None:
            if name in self.position:
                got = column(self.rows, self.position[name])
            elif name == "_now":
                got = [self.now] * len(self.rows)
            elif name in CONTEXT_COLUMNS:
                got = spread(self.context[CONTEXT_COLUMNS.index(name)], self.owner)
            else:
                return None
            self.built[name] = got
        return got


class Validator:
    """Validates batches of ``Prepared`` messages; one per loader."""

    def __init__(self, options: QualityOptions, known_facilities: list[str]):
        self.options = options
        self.suites = load_suites(options.directory)
        self.checks = {c.name: c for s in self.suites.values() for c in s.checks}
        self.parameters = {"known_facilities": sorted(known_facilities), "known_insurers": known_insurers()}
        self._engine: _Engine | None = None

    @property
    def engine(self) -> _Engine:
        if self._engine is None:
            self._engine = _engine_for(self.options.directory, self.suites)
        return self._engine

    def failures(self, table: str, frame, names: tuple[str, ...] | None = None) -> dict[str, list[int]]:
        """Run ``table``'s suite (or only its expectations ``names``) on ``frame``: expectation
        name -> positions of the failing rows."""
        suite = self.suites[table]
        missing = [c for c in suite.columns if c not in frame.columns]
        if missing:
            raise QualityConfigError(f"{suite.path.name}: the frame lacks column(s) {', '.join(missing)}")
        if not (frame.index.is_monotonic_increasing and (len(frame) == 0 or frame.index[-1] == len(frame) - 1)):
            frame = frame.reset_index(drop=True)  # positions, not labels, identify failing rows
        results = _off_our_stack(self.engine.run, table, frame, self.parameters, names)
        out: dict[str, list[int]] = {}
        for r in results:
            name = r.expectation_config.meta["name"]
            problem = _raised(r)
            if problem is not None:
                # The exception text may quote data; its start and the check are enough.
                raise QualityConfigError(f"{suite.path.name}: expectation '{name}' could not be evaluated "
                                         f"({problem.split(':', 1)[0][:80]})")
            out[name] = list((r.result or {}).get("unexpected_index_list") or ())
        return out

    def validate(self, prepared: list, now: str, hold: bool = True) -> BatchResult:
        """Set ``p.dq`` on each message with facts; hold the whole batch past the threshold
        (unless ``hold`` is False: a replay judges each message on its own checks)."""
        import pandas as pd

        todo = [p for p in prepared if p.facts is not None and p.check is not None and p.dq is None]
        result = BatchResult(validated=len(todo))
        if not todo:
            return result
        # Context columns are gathered once per message and spread to rows by position, which is
        # several times cheaper than widening every row tuple.
        context = [[p.check_context[i] for p in todo] for i in range(3)]
        gathered, counts = gather([p.facts for p in todo], [t for t in self.suites if t != "message_store"],
                                  "message_store" in self.suites)
        for p, rows in zip(todo, counts):
            p.dq = Verdict(rows)
        if "message_store" in self.suites:
            gathered["message_store"] = ([p.check for p in todo], list(range(len(todo))))
        erring: set[int] = set()  # positions in todo of messages failing an error-severity check
        for table, suite in self.suites.items():
            rows, owner = gathered[table]
            if not rows:
                continue
            values = _Columns(rows, TABLES[table], owner, context, now)
            names = None
            if self.options.prescreen:
                names = tuple(c.name for c, exp in zip(suite.checks, suite.document["expectations"])
                              if screen(exp, values, self.parameters) is not True)
                if not names:
                    continue  # GX would pass every expectation: no frame, no run
            # Only the columns the suite reads: names, addresses and phone numbers never reach GX.
            # Built column by column: a fifth cheaper than from row tuples.
            frame = pd.DataFrame({c: _column(values(c)) for c in suite.columns}, index=pd.RangeIndex(len(rows)))
            for name, indexes in self.failures(table, frame, names).items():
                error = self.checks[name].severity == "error"
                for idx in indexes:
                    i = owner[idx]
                    failed = todo[i].dq.failed
                    failed[name] = failed.get(name, 0) + 1
                    if error:
                        erring.add(i)
        result.failed_messages = len(erring)
        if hold and result.validated >= self.options.min_batch \
                and result.failed_messages / result.validated > self.options.max_failure_rate:
            result.held = True
            for p in todo:
                p.dq.held = True
        return result
