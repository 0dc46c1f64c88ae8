"""Outbound message building for routing: version conversion, code mapping, field edits, encoding.

Purpose
    Turn one received message into the exact bytes a destination expects: in the HL7 version it
    speaks, with its codes, its delimiters and its character set, or refuse with a reason.

Inputs
    A tokenized message (``transforms.parser.Message``), a ``Target`` (version, charset, delimiters,
    validation policy of a destination) and optionally a compiled ``Transform`` (steps declared in
    ``config/transforms.yaml``), mapping tables from ``config/mappings/*.csv``.

Outputs
    ``build_outbound(...) -> Outcome(payload, review, error, notes)``:
    - ``payload``: the bytes to send (None when held for review or in error);
    - ``review``: ``[(mapping, code), ...]`` codes without a mapping; the message is held for that
      destination rather than sent with a wrong code;
    - ``error``: ``"CODE: detail"`` (HL7 locations and codes only, never values);
    - ``notes``: what the conversion had to drop or move (``DROPPED_FIELD:OBX-23``, ...).

Design
    The working form is the parser's: a list of segments, each a list of still-escaped field strings
    in the source's delimiters. Edits split a field only when they touch it, so a message that only
    gets a code mapped costs a few microseconds. hl7apy (about 6-15 ms a message) is used only where
    its knowledge of the standard pays: the shape of each field's data type in the target version
    (read once per segment and cached) and the validation of messages whose structure we changed.
    Two hl7apy 1.3.5 defects are worked around here rather than inherited: its group finder is
    greedy (a second ORDER of an OML^O21 lands in PRIOR_RESULT and "fails"), and its validator
    treats a *choice* (ORM^O01's OBR|RQD|RQ1|RXO|ODS|ODT) as a sequence where every alternative is
    required. We match the segment sequence against hl7apy's own structure definition with a
    backtracking matcher, build the hl7apy tree group by group, and validate it against a copy of
    the definition in which the alternatives of a choice are optional.
"""
from __future__ import annotations

import csv
import importlib
import inspect
import re
import unicodedata
from dataclasses import dataclass, field as dc_field
from functools import lru_cache
from pathlib import Path
from typing import Callable

from . import charset as _charset
from .config import ConfigError
from .extract import message_structure
from .parser import Delimiters, Message, escape, unescape

# Versions we convert between. hl7apy knows 2.1 to 2.8, but the conversions below (TQ1, SPM, CWE)
# are written and tested for the versions Togo's facilities actually send.
CONVERTIBLE = ("2.3", "2.3.1", "2.4", "2.5", "2.5.1")
VALIDATE_POLICIES = ("converted", "always", "never")
VALIDATION_LEVELS = ("structure", "strict")
# Segments that carry patient identity: codes there are patient data, so mapping tables (whose
# misses are written to review rows) may not read them.
PATIENT_SEGMENTS = frozenset({"PID", "PD1", "NK1", "GT1", "IN1", "IN2", "IN3", "MRG"})
_GROUP_BREAKERS = frozenset({"MSH", "PID", "PD1", "PV1", "PV2", "NK1", "IN1", "IN2", "IN3", "GT1", "AL1", "DSC"})
_VERSION_RE = re.compile(r"^(2\.\d+(?:\.\d+)?)")

class TransformError(Exception):
    """A message cannot be built for a destination. Code and detail name HL7 locations, never values."""

    def __init__(self, code: str, detail: str = ""):
        super().__init__(code, detail)
        self.code = code
        self.detail = detail

    def __str__(self) -> str:
        return f"{self.code}: {self.detail}" if self.detail else self.code


def version_key(v: str) -> tuple[int, ...]:
    return tuple(int(x) for x in v.split(".") if x.isdigit())


def norm_version(v: str) -> str:
    """'2.3.CustomZ' -> '2.3', '2.5.1' -> '2.5.1', '' -> ''."""
    m = _VERSION_RE.match(v.strip())
    return m.group(1) if m else v.strip()


# ---------------------------------------------------------------------------------------------
# Field paths: SEG[occ]-F[rep].C.S  (OBX-3.1, PID-3[2].1, OBX[1]-5, ZPV)
_PATH_RE = re.compile(r"([A-Z][A-Z0-9]{2})(?:\[([1-9]\d*)\])?"
                      r"(?:-([1-9]\d{0,2})(?:\[([1-9]\d*)\])?(?:\.([1-9]\d{0,2})(?:\.([1-9]\d{0,2}))?)?)?")


@dataclass(frozen=True)
class FieldPath:
    seg: str
    occ: int | None  # 1-based segment occurrence; None = every occurrence
    field: int | None
    rep: int | None  # 1-based repetition; None = every repetition (read) / the first (write)
    comp: int | None
    sub: int | None
    text: str

    @property
    def level(self) -> int:
        """0 segment, 1 field, 2 component, 3 subcomponent."""
        return 0 if self.field is None else 1 if self.comp is None else 2 if self.sub is None else 3

    @property
    def index(self) -> int:
        """Token index in a parser segment (MSH-n is element n-1: MSH-1 is the separator itself)."""
        return self.field - 1 if self.seg == "MSH" else self.field  # type: ignore[operator]


def parse_path(text, where: str) -> FieldPath:
    if not isinstance(text, str):
        raise ConfigError(f"{where}: field path must be a string like OBX-3.1")
    m = _PATH_RE.fullmatch(text.strip())
    if not m:
        raise ConfigError(f"{where}: bad field path '{text}' (expected SEG-F, SEG-F.C or SEG-F.C.S, "
                          f"optionally SEG[n] and F[r]: OBX-3.1, PID-3[2].1, OBX[1]-5, ZPV)")
    seg, occ, f, rep, comp, sub = m.groups()
    return FieldPath(seg, int(occ) if occ else None, int(f) if f else None, int(rep) if rep else None,
                     int(comp) if comp else None, int(sub) if sub else None, text.strip())


def writable_path(text, where: str, *, min_level: int = 1) -> FieldPath:
    p = parse_path(text, where)
    if p.level < min_level:
        raise ConfigError(f"{where}: '{text}' names a segment; a field is needed (e.g. {p.seg}-3)")
    if p.seg == "MSH" and p.field in (1, 2):
        raise ConfigError(f"{where}: MSH-1 and MSH-2 are the delimiters; set the destination's 'delimiters'")
    if p.seg == "MSH" and p.field == 12:
        raise ConfigError(f"{where}: MSH-12 is the version; set the destination's 'version'")
    if p.seg == "MSH" and p.field == 18:
        raise ConfigError(f"{where}: MSH-18 is the character set; set the destination's 'charset'")
    return p


# ---------------------------------------------------------------------------------------------
# Token helpers (values stay escaped; separators inside values are always escape sequences)
def get_field(seg: list[str], n: int) -> str:
    i = n - 1 if seg[0] == "MSH" else n
    return seg[i] if i < len(seg) else ""


def set_field(seg: list[str], n: int, value: str) -> None:
    i = n - 1 if seg[0] == "MSH" else n
    if i >= len(seg):
        if not value:
            return
        seg.extend([""] * (i + 1 - len(seg)))
    seg[i] = value
    while len(seg) > 1 and seg[-1] == "" and not (seg[0] == "MSH" and len(seg) <= 2):
        seg.pop()


def _join(parts: list[str], sep: str) -> str:
    while parts and parts[-1] == "":
        parts.pop()
    return sep.join(parts)


def _part(parts: list[str], i: int) -> str:
    return parts[i] if i < len(parts) else ""


def get_at(value: str, d: Delimiters, rep: int | None, comp: int | None, sub: int | None) -> str:
    """The escaped value at a repetition/component/subcomponent of a field value (the first
    repetition when none is named)."""
    if rep is not None or d.repetition in value:
        reps = value.split(d.repetition)
        value = _part(reps, (rep or 1) - 1)
    if comp is None:
        return value
    value = _part(value.split(d.component), comp - 1)
    if sub is None:
        return value
    return _part(value.split(d.subcomponent), sub - 1)


def set_at(value: str, d: Delimiters, rep: int | None, comp: int | None, sub: int | None, new: str) -> str:
    if comp is None and rep is None:
        return new
    reps = value.split(d.repetition) if value else [""]
    r = (rep or 1) - 1
    reps.extend([""] * (r + 1 - len(reps)))
    if comp is None:
        reps[r] = new
    else:
        comps = reps[r].split(d.component)
        c = comp - 1
        comps.extend([""] * (c + 1 - len(comps)))
        if sub is None:
            comps[c] = new
        else:
            subs = comps[c].split(d.subcomponent)
            s = sub - 1
            subs.extend([""] * (s + 1 - len(subs)))
            subs[s] = new
            comps[c] = _join(subs, d.subcomponent)
        reps[r] = _join(comps, d.component)
    return _join(reps, d.repetition)


def _segments_of(segs: list[list[str]], p: FieldPath) -> list[list[str]]:
    found = [s for s in segs if s[0] == p.seg]
    if p.occ is not None:
        return found[p.occ - 1:p.occ]
    return found


def read_path(segs: list[list[str]], d: Delimiters, p: FieldPath, seg: list[str] | None = None) -> str:
    """Escaped value at ``p`` in ``seg`` (or the first segment it addresses); '' when absent."""
    if seg is None:
        found = _segments_of(segs, p)
        if not found:
            return ""
        seg = found[0]
    if p.field is None:
        return d.field.join(seg)
    return get_at(get_field(seg, p.field), d, p.rep, p.comp, p.sub)


def write_path(seg: list[str], d: Delimiters, p: FieldPath, new: str) -> None:
    old = get_field(seg, p.field)  # type: ignore[arg-type]
    set_field(seg, p.field, set_at(old, d, p.rep, p.comp, p.sub, new))  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# Mapping tables
MAPPING_COLUMNS = ["source_code", "target_code", "target_text", "target_system"]


@dataclass(frozen=True)
class MappingTable:
    name: str
    path: str
    rows: dict  # source_code -> (target_code, target_text, target_system)
    target_systems: frozenset

    def get(self, code: str):
        return self.rows.get(code)


def load_mapping_table(path: str | Path) -> MappingTable:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise ConfigError(f"{p}: mapping tables must be UTF-8 (accented labels are kept exactly)") from None
    reader = csv.reader(text.splitlines())
    rows: dict[str, tuple[str, str, str]] = {}
    header = None
    for lineno, row in enumerate(reader, 1):
        if not row or (len(row) == 1 and not row[0].strip()):
            continue
        if header is None:
            header = [c.strip() for c in row]
            if header != MAPPING_COLUMNS:
                raise ConfigError(f"{p}: line {lineno}: header must be {','.join(MAPPING_COLUMNS)}")
            continue
        if len(row) != 4:
            raise ConfigError(f"{p}: line {lineno}: expected 4 columns, found {len(row)}")
        src, tgt, txt, sysname = (c.strip() for c in row)
        if not src or not tgt:
            raise ConfigError(f"{p}: line {lineno}: source_code and target_code are required")
        if src in rows:
            raise ConfigError(f"{p}: line {lineno}: duplicate source_code '{src}'")
        rows[src] = (tgt, txt, sysname)
    if header is None:
        raise ConfigError(f"{p}: empty mapping table (header {','.join(MAPPING_COLUMNS)} expected)")
    return MappingTable(p.stem, str(p), rows, frozenset(v[2] for v in rows.values() if v[2]))


def load_mappings(directory: str | Path) -> dict[str, MappingTable]:
    d = Path(directory)
    if not d.is_dir():
        return {}
    return {t.name: t for t in (load_mapping_table(f) for f in sorted(d.glob("*.csv")))}


# ---------------------------------------------------------------------------------------------
# The working message and the hook context
class Work:
    """A message being transformed: parser-style segments (escaped tokens) in ``delims``."""

    __slots__ = ("segments", "delims", "version", "structure", "notes", "review", "converted")

    def __init__(self, segments: list[list[str]], delims: Delimiters, version: str):
        self.segments = segments
        self.delims = delims
        self.version = version
        self.structure = ""
        self.notes: dict[str, None] = {}  # ordered set
        self.review: dict[tuple[str, str], None] = {}
        self.converted = False

    @classmethod
    def from_message(cls, msg: Message) -> "Work":
        segs = [list(s) for s in msg.segments]
        msh = segs[0] if segs and segs[0][0] == "MSH" else None
        version = norm_version(unescape(get_field(msh, 12).split(msg.delims.component, 1)[0], msg.delims)) if msh else ""
        return cls(segs, msg.delims, version)

    def note(self, code: str) -> None:
        self.notes[code] = None

    @property
    def msh(self) -> list[str]:
        return self.segments[0]


@dataclass
class HookContext:
    """What a hook receives besides the segments. ``segments`` are lists of escaped field strings
    in ``delimiters`` (parser convention: for MSH, element n is MSH-(n+1)). Use ``unescape`` /
    ``escape`` from transforms.parser on values; call ``review(mapping, code)`` to hold the message
    for a missing mapping, ``note(code)`` to record a change. Raise to refuse the message: the
    exception's class name (never its text) becomes the route error."""

    delimiters: Delimiters
    version: str
    source_version: str
    destination: str
    rule: str
    transform: str
    params: dict
    tables: dict
    _work: Work = dc_field(repr=False, default=None)  # type: ignore[assignment]

    def review(self, mapping: str, code: str) -> None:
        self._work.review[(mapping, code)] = None

    def note(self, code: str) -> None:
        self._work.note(code)


# ---------------------------------------------------------------------------------------------
# Steps (compiled once at config load)
class Step:
    label = ""

    def apply(self, work: Work, ctx: "StepContext") -> None:  # pragma: no cover - interface
        raise NotImplementedError


@dataclass
class StepContext:
    destination: str
    rule: str
    transform: str
    tables: dict
    source_version: str


class SetStep(Step):
    label = "set"

    def __init__(self, path: FieldPath, value: str, if_empty: bool):
        self.path, self.value, self.if_empty = path, value, if_empty

    def apply(self, work, ctx):
        d = work.delims
        new = escape(self.value, d)
        for seg in _segments_of(work.segments, self.path):
            if self.if_empty and read_path(work.segments, d, self.path, seg):
                continue
            write_path(seg, d, self.path, new)


class CopyStep(Step):
    label = "copy"

    def __init__(self, src: FieldPath, dst: FieldPath):
        self.src, self.dst = src, dst

    def apply(self, work, ctx):
        d = work.delims
        segs = work.segments
        if self.src.seg == self.dst.seg and self.src.occ is None and self.dst.occ is None:
            # Same segment type: copy within each occurrence (OBR-2 -> OBR-3 of every OBR).
            for seg in _segments_of(segs, self.dst):
                self._dropped(work, seg)
                write_path(seg, d, self.dst, read_path(segs, d, self.src, seg))
            return
        found = _segments_of(segs, self.src)
        if not found:
            return
        self._dropped(work, found[0])
        value = read_path(segs, d, self.src, found[0])
        for seg in _segments_of(segs, self.dst):
            write_path(seg, d, self.dst, value)


    def _dropped(self, work, seg: list[str]) -> None:
        """One repetition is copied (most destinations do not repeat): say so when there were more."""
        if self.src.rep is None and self.src.field is not None and \
                work.delims.repetition in get_field(seg, self.src.field):
            work.note(f"DROPPED_REPETITION:{self.src.text}")


class RemoveStep(Step):
    label = "remove"

    def __init__(self, paths: list[FieldPath]):
        self.paths = paths

    def apply(self, work, ctx):
        d = work.delims
        for p in self.paths:
            for seg in _segments_of(work.segments, p):
                if p.level == 1 and p.rep is None:
                    set_field(seg, p.field, "")  # type: ignore[arg-type]
                elif p.rep is None:
                    # A component named without a repetition goes from every repetition: a second
                    # address's street must not reach a destination the first one's could not.
                    reps = get_field(seg, p.field).split(d.repetition)  # type: ignore[arg-type]
                    set_field(seg, p.field, _join([set_at(r, d, None, p.comp, p.sub, "") for r in reps],  # type: ignore[arg-type]
                                                  d.repetition))
                else:
                    write_path(seg, d, p, "")


class RemoveSegmentsStep(Step):
    label = "remove_segments"

    def __init__(self, ids: frozenset, z: bool = False):
        self.ids, self.z = ids, z

    def apply(self, work, ctx):
        ids, z = self.ids, self.z
        work.segments = [s for s in work.segments
                         if s[0] == "MSH" or not (s[0] in ids or (z and s[0][:1] == "Z"))]


class PatientIdsStep(Step):
    """PID-3 repetitions for receivers that read only the first one (legacy labs): the preferred
    identifier (by type code CX.5, or assigning authority CX.4.1) first, optionally the others
    dropped or moved to PID-4 / PID-2."""

    label = "patient_ids"

    def __init__(self, prefer: tuple[str, ...], keep: str, others_to: str | None):
        self.prefer, self.keep, self.others_to = prefer, keep, others_to

    def apply(self, work, ctx):
        apply_patient_ids(work, self.prefer, self.keep, self.others_to)


def apply_patient_ids(work: Work, prefer, keep: str, others_to: str | None) -> None:
    d = work.delims
    for seg in work.segments:
        if seg[0] != "PID":
            continue
        value = get_field(seg, 3)
        if not value:
            continue
        reps = [r for r in value.split(d.repetition) if r]
        if not reps:
            continue

        def rank(r: str) -> int:
            comps = r.split(d.component)
            ident_type = _part(comps, 4)
            authority = _part(comps, 3).split(d.subcomponent, 1)[0]
            for i, want in enumerate(prefer):
                if want in (ident_type, authority):
                    return i
            return len(prefer)

        ordered = sorted(reps, key=rank)  # stable: senders' order kept among equals
        if keep == "first":
            first, others = ordered[:1], ordered[1:]
            set_field(seg, 3, first[0])
            if others and others_to:
                n = int(others_to.split("-")[1])
                existing = [r for r in get_field(seg, n).split(d.repetition) if r]
                moved = existing + [o for o in others if o not in existing]
                if n == 2 and len(moved) > 1:
                    # PID-2 does not repeat: one identifier fits, the rest is dropped and said so.
                    moved = moved[:1]
                    work.note("DROPPED_REPETITION:PID-3")
                set_field(seg, n, d.repetition.join(moved))
            elif others:
                work.note("DROPPED_REPETITION:PID-3")
        else:
            set_field(seg, 3, d.repetition.join(ordered))


class MapStep(Step):
    """Code mapping through a table; a miss is a review entry (or kept / an error, as declared)."""

    label = "map"

    def __init__(self, path: FieldPath, table: MappingTable, source_system: str | None, keep_original: bool,
                 on_unmapped: str, into: FieldPath | None):
        self.path, self.table, self.source_system = path, table, source_system
        self.keep_original, self.on_unmapped, self.into = keep_original, on_unmapped, into
        self.coded = path.comp is None

    def _miss(self, work: Work, code: str) -> None:
        if self.on_unmapped == "keep":
            return
        if self.on_unmapped == "error":
            raise TransformError("UNMAPPED_CODE", f"{self.table.name} ({self.path.text})")
        work.review[(self.table.name, code)] = None

    def apply(self, work, ctx):
        d = work.delims
        p = self.path
        for seg in _segments_of(work.segments, p):
            value = get_field(seg, p.field)  # type: ignore[arg-type]
            if not value:
                continue
            if self.coded:
                new = self._map_coded(work, value, d)
                if new != value:
                    set_field(seg, p.field, new)  # type: ignore[arg-type]
            else:
                # Without a repetition in the path, every repetition's code is mapped (an unmapped
                # second code must be held for review like a first one).
                dest = self.into or p
                n_reps = 1 if p.rep is not None else len(value.split(d.repetition))
                for k in range(n_reps):
                    raw = get_at(value, d, p.rep or k + 1, p.comp, p.sub)
                    if not raw:
                        continue
                    code = unescape(raw, d)
                    hit = self.table.get(code)
                    if hit is None:
                        self._miss(work, code)
                        continue
                    at = dest if dest.rep is not None or n_reps == 1 else \
                        FieldPath(dest.seg, dest.occ, dest.field, k + 1, dest.comp, dest.sub, dest.text)
                    write_path(seg, d, at, escape(hit[0], d))

    def _map_coded(self, work: Work, value: str, d: Delimiters) -> str:
        out = []
        for rep in value.split(d.repetition):
            if not rep:
                out.append(rep)
                continue
            comps = rep.split(d.component)
            comps.extend([""] * (6 - len(comps)))
            primary, alternate = comps[0:3], comps[3:6]
            ss = self.source_system
            if ss is None:
                orig = primary
            elif primary[2] == ss:
                orig = primary
            elif alternate[2] == ss:
                orig = alternate
            else:
                # No code in the source system: already standard if the primary is in a target system.
                if primary[2] and primary[2] in self.table.target_systems:
                    out.append(rep)
                    continue
                orig = primary
            code = unescape(orig[0], d)
            if not code:
                out.append(rep)
                continue
            hit = self.table.get(code)
            if hit is None:
                self._miss(work, code)
                out.append(rep)
                continue
            tcode, ttext, tsys = hit
            new_primary = [escape(tcode, d), escape(ttext, d) if ttext else orig[1], escape(tsys, d)]
            if orig is primary:
                new_alt = list(orig) if self.keep_original and orig != new_primary else alternate
            else:
                new_alt = alternate if self.keep_original else ["", "", ""]
            rest = comps[6:]
            if rest:
                rest = ["", ""] + rest[2:]  # CWE.7/.8 versions described the old codes; CWE.9 original text stays
            out.append(_join(new_primary + list(new_alt) + rest, d.component))
        return d.repetition.join(out)


class HookStep(Step):
    label = "hook"

    def __init__(self, name: str, fn: Callable, params: dict):
        self.name, self.fn, self.params = name, fn, params

    def apply(self, work, ctx):
        hctx = HookContext(work.delims, work.version, ctx.source_version, ctx.destination, ctx.rule,
                           ctx.transform, dict(self.params), ctx.tables, work)
        try:
            result = self.fn(work.segments, hctx)
        except TransformError:
            raise
        except Exception as exc:  # the hook's message may quote values: only its class is reported
            raise TransformError("HOOK_FAILED", f"{self.name} ({type(exc).__name__})") from None
        if result is not None:
            if not isinstance(result, list) or not result or result[0][:1] != ["MSH"] \
                    or not all(isinstance(s, list) and s and isinstance(s[0], str) for s in result):
                raise TransformError("HOOK_FAILED", f"{self.name} (returned something other than segments starting with MSH)")
            work.segments = result


def load_hook(dotted: str, where: str) -> Callable:
    if not isinstance(dotted, str) or not re.fullmatch(r"[A-Za-z_][\w.]*[:.][A-Za-z_]\w*", dotted):
        raise ConfigError(f"{where}: hook must be a dotted path 'package.module:function'")
    mod_name, _, fn_name = dotted.rpartition(":") if ":" in dotted else dotted.rpartition(".")
    try:
        mod = importlib.import_module(mod_name)
    except Exception as exc:
        raise ConfigError(f"{where}: cannot import hook module '{mod_name}' ({type(exc).__name__})") from None
    fn = getattr(mod, fn_name, None)
    if not callable(fn):
        raise ConfigError(f"{where}: '{mod_name}' has no function '{fn_name}'")
    try:
        inspect.signature(fn).bind(None, None)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: hook '{dotted}' must accept (segments, ctx)") from None
    return fn


# ---------------------------------------------------------------------------------------------
# Transform specs
@dataclass(frozen=True)
class ConvertOptions:
    message_types: tuple = ()  # (("OML^O21", "ORM^O01"), ...) overrides of the default type changes
    orders_to_oml: bool = True  # upward to >= 2.5: ORM^O01 with lab orders only -> OML^O21
    merge_pid2_pid4: bool = True  # upward to >= 2.5: deprecated PID-2 / PID-4 become PID-3 repetitions
    patient_ids: tuple | None = None  # (prefer, keep, others_to) applied during conversion


@dataclass(frozen=True)
class Transform:
    name: str
    description: str
    convert: ConvertOptions
    steps: tuple


STEP_KEYS = ("set", "copy", "remove", "remove_segments", "strip_z", "map", "patient_ids", "hook")
_MSG_TYPE = re.compile(r"^[A-Z0-9]{3}\^[A-Z0-9]{3}$")


def _bool(v, where: str, key: str) -> bool:
    if not isinstance(v, bool):
        raise ConfigError(f"{where}: '{key}' must be true or false")
    return v


def _known_keys(entry: dict, allowed, where: str) -> None:
    unknown = sorted(set(entry) - set(allowed))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(map(str, unknown))} (allowed: {', '.join(allowed)})")


def _patient_ids_spec(v, where: str) -> tuple:
    if not isinstance(v, dict):
        raise ConfigError(f"{where}: patient_ids must be a mapping with prefer / keep / others_to")
    _known_keys(v, ("prefer", "keep", "others_to"), where)
    prefer = v.get("prefer", [])
    if isinstance(prefer, str):
        prefer = [prefer]
    if not isinstance(prefer, list) or not all(isinstance(x, str) and x for x in prefer):
        raise ConfigError(f"{where}: patient_ids.prefer must be a list of identifier type codes or authorities")
    keep = v.get("keep", "all")
    if keep not in ("all", "first"):
        raise ConfigError(f"{where}: patient_ids.keep must be 'all' or 'first'")
    others = v.get("others_to")
    if others not in (None, "PID-2", "PID-4"):
        raise ConfigError(f"{where}: patient_ids.others_to must be PID-2 or PID-4")
    if others and keep != "first":
        raise ConfigError(f"{where}: patient_ids.others_to needs keep: first")
    return (tuple(prefer), keep, others)


def compile_step(raw, where: str, tables: dict) -> Step:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: a step is a mapping with one of {', '.join(STEP_KEYS)}")
    actions = [k for k in raw if k in STEP_KEYS]
    if len(actions) != 1:
        raise ConfigError(f"{where}: a step needs exactly one of {', '.join(STEP_KEYS)}"
                          + (f" (found {', '.join(map(str, raw))})" if raw else ""))
    action = actions[0]
    w = f"{where}.{action}"
    v = raw[action]
    _known_keys(raw, (action, "params") if action == "hook" else (action,), where)
    if action == "set":
        if not isinstance(v, dict):
            raise ConfigError(f"{w}: expected {{field: PATH, value: TEXT}}")
        _known_keys(v, ("field", "value", "if_empty"), w)
        if "value" not in v or not isinstance(v["value"], (str, int, float)) or isinstance(v["value"], bool):
            raise ConfigError(f"{w}: 'value' must be a string (quote numbers to keep leading zeros)")
        return SetStep(writable_path(v.get("field"), f"{w}.field"), str(v["value"]),
                       _bool(v.get("if_empty", False), w, "if_empty"))
    if action == "copy":
        if not isinstance(v, dict):
            raise ConfigError(f"{w}: expected {{from: PATH, to: PATH}}")
        _known_keys(v, ("from", "to"), w)
        src = parse_path(v.get("from"), f"{w}.from")
        dst = writable_path(v.get("to"), f"{w}.to")
        if src.level < 1:
            raise ConfigError(f"{w}.from: '{src.text}' names a segment; a field is needed")
        if dst.level > src.level:
            raise ConfigError(f"{w}: copying {src.text} into the deeper {dst.text} would nest separators; "
                              f"name a component of the source")
        return CopyStep(src, dst)
    if action == "remove":
        items = v if isinstance(v, list) else [v]
        return RemoveStep([writable_path(x, f"{w}[{i}]") for i, x in enumerate(items)])
    if action == "remove_segments":
        items = v if isinstance(v, list) else [v]
        for i, x in enumerate(items):
            if not isinstance(x, str) or not re.fullmatch(r"[A-Z][A-Z0-9]{2}", x) or x == "MSH":
                raise ConfigError(f"{w}[{i}]: '{x}' is not a segment ID that can be removed")
        return RemoveSegmentsStep(frozenset(items))
    if action == "strip_z":
        if v is not True:
            raise ConfigError(f"{w}: write 'strip_z: true' (omit the step to keep Z-segments)")
        return RemoveSegmentsStep(frozenset(), z=True)
    if action == "patient_ids":
        return PatientIdsStep(*_patient_ids_spec(v, w))
    if action == "map":
        if not isinstance(v, dict):
            raise ConfigError(f"{w}: expected {{field: PATH, table: NAME}}")
        _known_keys(v, ("field", "table", "source_system", "keep_original", "on_unmapped", "into"), w)
        path = writable_path(v.get("field"), f"{w}.field")
        if path.seg in PATIENT_SEGMENTS:
            raise ConfigError(f"{w}.field: {path.text} is in a patient segment; mapping tables are for codes "
                              f"(a miss is written to review rows, which must never hold patient data)")
        tname = v.get("table")
        if tname not in tables:
            raise ConfigError(f"{w}.table: unknown mapping table '{tname}' (known: {', '.join(sorted(tables)) or 'none'})")
        ss = v.get("source_system")
        if ss is not None and (not isinstance(ss, str) or not ss):
            raise ConfigError(f"{w}.source_system: must be a coding system name such as L or 99LOCAL")
        if ss is not None and path.comp is not None:
            raise ConfigError(f"{w}: source_system applies to a whole coded field (e.g. OBX-3), not {path.text}")
        on = v.get("on_unmapped", "review")
        if on not in ("review", "keep", "error"):
            raise ConfigError(f"{w}.on_unmapped: must be review, keep or error")
        into = v.get("into")
        into_p = writable_path(into, f"{w}.into") if into is not None else None
        if into_p is not None and (path.comp is None or into_p.seg != path.seg or into_p.comp is None):
            raise ConfigError(f"{w}.into: needs a component path of the same segment as 'field' (e.g. MSH-4.2)")
        return MapStep(path, tables[tname], ss, _bool(v.get("keep_original", True), w, "keep_original"),
                       on, into_p)
    # hook
    params = raw.get("params", {})
    if not isinstance(params, dict):
        raise ConfigError(f"{where}.params: must be a mapping")
    return HookStep(v, load_hook(v, w), params)


def compile_transform(name: str, raw, where: str, tables: dict) -> Transform:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: must be a mapping with 'steps' (and optionally 'description', 'convert')")
    _known_keys(raw, ("description", "convert", "steps"), where)
    conv = raw.get("convert") or {}
    if not isinstance(conv, dict):
        raise ConfigError(f"{where}.convert: must be a mapping")
    _known_keys(conv, ("message_types", "orders_to_oml", "merge_pid2_pid4", "patient_ids"), f"{where}.convert")
    mt = conv.get("message_types") or {}
    if not isinstance(mt, dict) or not all(isinstance(k, str) and isinstance(x, str) and _MSG_TYPE.match(k)
                                           and _MSG_TYPE.match(x) for k, x in mt.items()):
        raise ConfigError(f"{where}.convert.message_types: must map 'OML^O21' style types to types")
    opts = ConvertOptions(
        message_types=tuple(mt.items()),
        orders_to_oml=_bool(conv.get("orders_to_oml", True), f"{where}.convert", "orders_to_oml"),
        merge_pid2_pid4=_bool(conv.get("merge_pid2_pid4", True), f"{where}.convert", "merge_pid2_pid4"),
        patient_ids=_patient_ids_spec(conv["patient_ids"], f"{where}.convert") if "patient_ids" in conv else None,
    )
    steps = raw.get("steps") or []
    if not isinstance(steps, list):
        raise ConfigError(f"{where}.steps: must be a list")
    desc = raw.get("description") or ""
    return Transform(name, str(desc), opts,
                     tuple(compile_step(s, f"{where}.steps[{i}]", tables) for i, s in enumerate(steps)))


# ---------------------------------------------------------------------------------------------
# hl7apy knowledge, read once and cached
@lru_cache(maxsize=None)
def _message_ref(version: str, structure: str):
    from hl7apy import load_reference

    try:
        return load_reference(structure, "Message", version)
    except Exception:
        return None


@lru_cache(maxsize=None)
def structure_segments(version: str, structure: str) -> frozenset | None:
    """Segment IDs a message structure may contain in a version (None: unknown structure)."""
    ref = _message_ref(version, structure)
    if ref is None:
        return None
    out: set[str] = set()

    def walk(r):
        for c in r[1]:
            if c[3] == "SEG":
                out.add(c[0])
            else:
                walk(c[1])

    walk(ref)
    return frozenset(out)


def _comp_shape(children) -> tuple[int, ...]:
    """Per component: 0 for a primitive, else its number of subcomponents."""
    out = []
    for c in children:
        ref = c[1]
        out.append(len(ref[1]) if ref[0] == "sequence" and ref[1] else 0)
    return tuple(out)


@lru_cache(maxsize=None)
def datatype_shape(version: str, datatype: str) -> tuple[int, ...] | None:
    """Component shape of a data type (() for a primitive, None when unknown)."""
    from hl7apy import load_reference

    try:
        children = load_reference(datatype, "Datatypes_Structs", version)
    except Exception:
        return () if datatype and datatype.isalpha() and len(datatype) <= 3 else None
    return _comp_shape(children)


@lru_cache(maxsize=None)
def segment_shape(version: str, sid: str):
    """Per field: (max repetitions, datatype, component shape or None for 'varies'); None if unknown."""
    from hl7apy import load_reference

    try:
        ref = load_reference(sid, "Segment", version)
    except Exception:
        return None
    fields = []
    for c in ref[1]:
        fref, card = c[1], c[2]
        dt = fref[2] if len(fref) > 2 else None
        if fref[0] == "sequence":
            comps = _comp_shape(fref[1])
        elif dt == "varies":
            comps = None
        else:
            comps = ()
        fields.append((card[1], dt, comps))
    return tuple(fields)


@lru_cache(maxsize=None)
def required_fields(version: str, sid: str) -> frozenset:
    """Field numbers hl7apy's definition marks required (min cardinality >= 1)."""
    from hl7apy import load_reference

    try:
        ref = load_reference(sid, "Segment", version)
    except Exception:
        return frozenset()
    return frozenset(int(c[0].rsplit("_", 1)[1]) for c in ref[1] if c[2][0] >= 1)


def has_datatype(version: str, datatype: str) -> bool:
    from hl7apy import load_reference

    try:
        load_reference(datatype, "Datatypes_Structs", version)
        return True
    except Exception:
        return False


# ---------------------------------------------------------------------------------------------
# Version conversion
def _order_groups(segs: list[list[str]]) -> list[dict]:
    """Order groups of ORM/OML/ORU: an ORC, or an OBR without its own ORC, starts one."""
    groups: list[dict] = []
    cur: dict | None = None
    for i, s in enumerate(segs):
        sid = s[0]
        if sid == "ORC":
            cur = {"ORC": i, "OBR": None, "idx": [i]}
            groups.append(cur)
        elif sid == "OBR":
            if cur is None or cur["OBR"] is not None:
                cur = {"ORC": None, "OBR": i, "idx": [i]}
                groups.append(cur)
            else:
                cur["OBR"] = i
                cur["idx"].append(i)
        elif sid in _GROUP_BREAKERS:
            cur = None
        elif cur is not None:
            cur["idx"].append(i)
    return groups


_DURATION_UNITS = {"S": "s", "M": "min", "H": "h", "D": "d", "W": "wk", "L": "mo"}
_UNIT_DURATION = {v: k for k, v in _DURATION_UNITS.items()}


def _tq1_to_tq(tq1: list[str], d: Delimiters, work: Work) -> str:
    """One TQ1 segment -> one TQ repetition (ORC-7 / OBR-27 before 2.5)."""
    C, S, R = d.component, d.subcomponent, d.repetition
    f = lambda n: get_field(tq1, n)  # noqa: E731
    qty = f(2).split(C)
    units = _part(qty, 1).split(S)[0]
    tq = [""] * 12
    tq[0] = _part(qty, 0) + (S + units if units else "")
    rpt = f(3).split(R)[0].split(C)[0].split(S)[0]
    explicit = ",".join(x for x in f(4).split(R) if x)
    tq[1] = rpt + (S + explicit if explicit else "")
    dur = f(6).split(C)
    if _part(dur, 0):
        unit = _UNIT_DURATION.get(_part(dur, 1).split(S)[0])
        if unit:
            tq[2] = f"{unit}{_part(dur, 0)}"
        else:
            work.note("DROPPED_FIELD:TQ1-6")
    tq[3] = f(7).split(C)[0]
    tq[4] = f(8).split(C)[0]
    tq[5] = f(9).split(R)[0].split(C)[0]
    tq[6] = f(10)
    tq[7] = f(11)
    tq[8] = f(12)
    tq[10] = S.join(f(13).split(C)[:6])
    tq[11] = f(14)
    if f(5):
        work.note("DROPPED_FIELD:TQ1-5")
    return _join(tq, C)


def _tq_to_tq1(tq: str, setid: int, d: Delimiters, work: Work) -> list[str]:
    """One TQ repetition (ORC-7 / OBR-27) -> one TQ1 segment."""
    C, S, R = d.component, d.subcomponent, d.repetition
    c = tq.split(C)
    c.extend([""] * (12 - len(c)))
    out = [""] * 15
    out[0] = "TQ1"
    out[1] = str(setid)
    q = c[0].split(S)
    out[2] = _join([_part(q, 0), _part(q, 1)], C)
    ri = c[1].split(S)
    out[3] = _part(ri, 0)
    out[4] = R.join(x for x in _part(ri, 1).split(",") if x)
    dur = c[2].strip()
    m = re.fullmatch(r"([SMHDWL])(\d+)", dur)
    if m:
        out[6] = f"{m.group(2)}{C}{_DURATION_UNITS[m.group(1)]}"
    elif re.fullmatch(r"X(\d+)", dur) and not c[11]:
        out[14] = dur[1:]
    elif dur and dur != "INDEF":
        work.note("DROPPED_COMPONENT:TQ.3")
    out[7] = c[3].split(S)[0]
    out[8] = c[4].split(S)[0]
    out[9] = c[5]
    out[10] = c[6]
    out[11] = c[7]
    out[12] = c[8]
    if c[9]:
        work.note("DROPPED_COMPONENT:TQ.10")
    out[13] = C.join(c[10].split(S)) if c[10] else ""
    if c[11]:
        out[14] = c[11]
    while len(out) > 2 and out[-1] == "":
        out.pop()
    return out


def _timing_down(work: Work) -> None:
    """TQ1 (2.5+) -> ORC-7 and OBR-27 (TQ) of the same order group; TQ2 has no older form."""
    d = work.delims
    segs = work.segments
    for g in _order_groups(segs):
        tq1s = [segs[i] for i in g["idx"] if segs[i][0] == "TQ1"]
        if not tq1s:
            continue
        value = d.repetition.join(_tq1_to_tq(t, d, work) for t in tq1s)
        for key, n in (("ORC", 7), ("OBR", 27)):
            i = g[key]
            if i is not None and not get_field(segs[i], n):
                set_field(segs[i], n, value)
        work.note("TQ1->ORC-7/OBR-27")
    if any(s[0] == "TQ2" for s in segs):
        work.note("DROPPED_SEGMENT:TQ2")
    work.segments = [s for s in segs if s[0] not in ("TQ1", "TQ2")]


def _default_timing(work: Work, target: str) -> None:
    """2.3 makes ORC-7 and OBR-27 required. Within an order group one fills the other (they carry
    the same order's timing); an order without any timing is routine (TQ.6 = R is HL7's default
    priority), so that default is written out rather than failing the order."""
    need = {sid: n for sid, n in (("ORC", 7), ("OBR", 27)) if n in required_fields(target, sid)}
    if not need:
        return
    segs = work.segments
    default = work.delims.component * 5 + "R"
    for g in _order_groups(segs):
        members = [(segs[g[sid]], n) for sid, n in (("ORC", 7), ("OBR", 27)) if g[sid] is not None]
        known = next((get_field(s, n) for s, n in members if get_field(s, n)), "")
        for s, n in members:
            if s[0] in need and not get_field(s, n):
                set_field(s, n, known or default)
                if not known:
                    work.note(f"DEFAULT_PRIORITY_R:{s[0]}-{n}")


def _timing_up(work: Work, structure: str) -> None:
    """ORC-7 / OBR-27 (TQ) -> TQ1 segments where the 2.5+ structure puts them."""
    if structure not in ("OML_O21", "ORU_R01"):
        return
    d = work.delims
    segs = work.segments
    inserts: dict[int, list[list[str]]] = {}
    for g in _order_groups(segs):
        orc = segs[g["ORC"]] if g["ORC"] is not None else None
        obr = segs[g["OBR"]] if g["OBR"] is not None else None
        orc7, obr27 = (get_field(orc, 7) if orc else ""), (get_field(obr, 27) if obr else "")
        value = orc7 or obr27
        if not value:
            continue
        tq1s = [_tq_to_tq1(rep, k, d, work) for k, rep in enumerate([r for r in value.split(d.repetition) if r], 1)]
        if structure == "OML_O21":
            if g["ORC"] is None:
                continue
            at = g["ORC"]
        else:
            if g["OBR"] is None:
                continue
            at = g["OBR"]
            while at + 1 < len(segs) and segs[at + 1][0] == "NTE":  # ORU_R01: OBR, NTE*, TQ1 ...
                at += 1
        inserts.setdefault(at, []).extend(tq1s)
        if orc:
            set_field(orc, 7, "")
        if obr and obr27 and orc7 and obr27 != orc7:
            # The order's own timing differs from the common order's: TQ1 carries ORC-7's, and
            # OBR-27 (kept in 2.5 for backward compatibility) keeps its own rather than vanish.
            work.note("OBR-27_KEPT")
        elif obr:
            set_field(obr, 27, "")
        work.note("ORC-7/OBR-27->TQ1")
    _insert_after(work, segs, inserts)


def _insert_after(work: Work, segs: list[list[str]], inserts: dict[int, list]) -> None:
    """New segments into ``work``: ``inserts[i]`` goes right after ``segs[i]``."""
    if inserts:
        out: list[list[str]] = []
        for i, s in enumerate(segs):
            out.append(s)
            out.extend(inserts.get(i, ()))
        work.segments = out


_CODING_SYSTEM = re.compile(r"^(HL7\d{4}|L|LN|SCT|SNM3?|99[A-Z0-9]*)$")


def _specimen_down(work: Work) -> None:
    """SPM (2.5+) -> OBR-15 specimen source, OBR-7 and OBR-9 where empty. SPS holds the type (1),
    additives as text (2), a free text (3: the description), the site (4) and its modifier (5),
    and from 2.3.1 the role (7; ``_shape`` drops it for 2.3, with a note). What has no place is
    noted: the specimen ID, the collection method (SPS-6 is a modifier of it), an SPM beyond
    the first of an order, and an SPM whose order has no OBR or an OBR-15 of its own."""
    d = work.delims
    C, S, R = d.component, d.subcomponent, d.repetition
    segs = work.segments

    def sub(value: str) -> str:  # the first repetition of a CWE, as SPS subcomponents
        return S.join(value.split(R)[0].split(C)[:6])

    for g in _order_groups(segs):
        spms = [segs[i] for i in g["idx"] if segs[i][0] == "SPM"]
        if not spms:
            continue
        if g["OBR"] is None:
            work.note("DROPPED_SEGMENT:SPM")
            continue
        obr = segs[g["OBR"]]
        spm = spms[0]
        if get_field(obr, 15):  # the order names its specimen already: it stays, the SPM goes
            work.note("DROPPED_SEGMENT:SPM")
        else:
            additives = [_part(a, 1) or _part(a, 0) for a in (r.split(C) for r in get_field(spm, 6).split(R))]
            sps = [sub(get_field(spm, 4)), ", ".join(a for a in additives if a), get_field(spm, 14),
                   sub(get_field(spm, 8)), sub(get_field(spm, 9)), "", sub(get_field(spm, 11))]
            if any(sps):
                set_field(obr, 15, _join(sps, C))
            for n in (2, 7):
                if get_field(spm, n):
                    work.note(f"DROPPED_FIELD:SPM-{n}")
            if len(spms) > 1:
                work.note("DROPPED_SEGMENT:SPM")
            work.note("SPM->OBR-15")
        coll = get_field(spm, 17).split(C)[0]
        if coll and not get_field(obr, 7):
            set_field(obr, 7, coll)
        amount = get_field(spm, 12).split(R)[0]
        if amount and not get_field(obr, 9):
            set_field(obr, 9, amount)
    if any(s[0] == "SAC" for s in segs):
        work.note("DROPPED_SEGMENT:SAC")
    work.segments = [s for s in segs if s[0] not in ("SPM", "SAC")]


def _specimen_up(work: Work, structure: str) -> None:
    """OBR-15 (before 2.5) -> an SPM segment at the end of the order's specimen position: the
    type (SPM-4), additives (SPM-6, as text), site (SPM-8) and its modifier (SPM-9), role
    (SPM-11), the free text as description (SPM-14) and OBR-7 as collection time (SPM-17). The
    collection method modifier (SPS-6) has no place in SPM and is noted."""
    if structure not in ("OML_O21", "ORU_R01"):
        return
    d = work.delims
    C, S = d.component, d.subcomponent
    segs = work.segments
    inserts: dict[int, list[list[str]]] = {}
    for g in _order_groups(segs):
        if g["OBR"] is None:
            continue
        obr = segs[g["OBR"]]
        sps = get_field(obr, 15)
        if not sps:
            continue
        parts = sps.split(C)
        spm = ["SPM", "1"] + [""] * 16
        if S not in parts[0] and len(parts) >= 3 and _CODING_SYSTEM.match(parts[2]) and not _part(parts, 3):
            # A common sender mistake: the specimen CE written as components, not subcomponents.
            spm[4] = C.join(parts[:3])
            work.note("OBR-15_CE_AS_COMPONENTS")
        else:
            spm[4] = C.join(parts[0].split(S))
            if _part(parts, 1):
                spm[6] = C + _part(parts, 1)  # TX additives: the text of a CWE
            spm[8] = C.join(_part(parts, 3).split(S))
            spm[9] = C.join(_part(parts, 4).split(S))
            spm[11] = C.join(_part(parts, 6).split(S))
            spm[14] = _part(parts, 2)
            if _part(parts, 5):
                work.note("DROPPED_COMPONENT:OBR-15.6")
        spm[17] = get_field(obr, 7).split(C)[0]
        while spm[-1] == "":
            spm.pop()
        # Position: OML_O21 - end of OBSERVATION_REQUEST (before FT1/CTI/BLG of the order);
        # ORU_R01 - end of ORDER_OBSERVATION.
        tail = [i for i in g["idx"] if i > g["OBR"]]
        at = g["OBR"]
        for i in tail:
            if structure == "OML_O21" and segs[i][0] in ("FT1", "CTI", "BLG"):
                break
            if segs[i][0][:1] != "Z":
                at = i
        inserts.setdefault(at, []).append(spm)
        set_field(obr, 15, "")
        work.note("OBR-15->SPM")
    _insert_after(work, segs, inserts)


def _merge_deprecated_ids(work: Work) -> None:
    """2.5 deprecates PID-2 and PID-4: their identifiers become PID-3 repetitions."""
    d = work.delims
    for seg in work.segments:
        if seg[0] != "PID":
            continue
        extra = [r for n in (2, 4) for r in get_field(seg, n).split(d.repetition) if r]
        if not extra:
            continue
        reps = [r for r in get_field(seg, 3).split(d.repetition) if r]
        for r in extra:
            if r not in reps:
                reps.append(r)
        set_field(seg, 3, d.repetition.join(reps))
        set_field(seg, 2, "")
        set_field(seg, 4, "")
        work.note("PID-2/PID-4->PID-3")


def _shape(work: Work, src: str, target: str) -> None:
    """Fit every field to its data type in the target version (hl7apy's definitions): fields,
    repetitions, components and subcomponents the target cannot hold are dropped (noted)."""
    d = work.delims
    R, C, S = d.repetition, d.component, d.subcomponent
    for seg in work.segments:
        sid = seg[0]
        if sid[:1] == "Z":
            continue
        tshape = segment_shape(target, sid)
        if tshape is None:
            continue
        sshape = segment_shape(src, sid)
        is_msh = sid == "MSH"
        nf = len(tshape)
        last = nf - 1 if is_msh else nf
        if len(seg) - 1 > last:
            for i in range(last + 1, len(seg)):
                if seg[i]:
                    work.note(f"DROPPED_FIELD:{sid}-{i + 1 if is_msh else i}")
            del seg[last + 1:]
        for n in range(3 if is_msh else 1, nf + 1):
            i = n - 1 if is_msh else n
            if i >= len(seg):
                break
            v = seg[i]
            if not v or (R not in v and C not in v and S not in v):
                continue
            maxrep, dt, comps = tshape[n - 1]
            scomps = sshape[n - 1][2] if sshape and n - 1 < len(sshape) else None
            if comps is None:  # 'varies': OBX-5 takes OBX-2's type
                if sid == "OBX" and n == 5:
                    comps = datatype_shape(target, get_field(seg, 2).split(C)[0])
                    scomps = datatype_shape(src, get_field(seg, 2).split(C)[0])
                if not comps:
                    continue
            reps = v.split(R) if R in v else [v]
            if maxrep == 1 and len(reps) > 1:
                if any(reps[1:]):
                    work.note(f"DROPPED_REPETITION:{sid}-{n}")
                reps = reps[:1]
            if comps == ():
                # Primitive in the target: only cut components if the source type was composite
                # (lenient senders leave separators unescaped in free text; keep that text).
                if scomps:
                    new = []
                    for r in reps:
                        parts = r.split(C)
                        if any(parts[1:]):
                            work.note(f"DROPPED_COMPONENT:{sid}-{n}")
                        new.append(parts[0])
                    reps = new
                seg[i] = R.join(reps)
                continue
            new_reps = []
            for r in reps:
                parts = r.split(C)
                if len(parts) > len(comps):
                    if any(parts[len(comps):]):
                        work.note(f"DROPPED_COMPONENT:{sid}-{n}")
                    parts = parts[:len(comps)]
                for k, part in enumerate(parts):
                    if S not in part:
                        continue
                    tsub = comps[k]
                    ssub = scomps[k] if scomps and k < len(scomps) else 0
                    subs = part.split(S)
                    if tsub == 0 and ssub:
                        if any(subs[1:]):
                            work.note(f"DROPPED_SUBCOMPONENT:{sid}-{n}.{k + 1}")
                        parts[k] = subs[0]
                    elif tsub and len(subs) > tsub:
                        if any(subs[tsub:]):
                            work.note(f"DROPPED_SUBCOMPONENT:{sid}-{n}.{k + 1}")
                        parts[k] = _join(subs[:tsub], S)
                new_reps.append(_join(parts, C))
            seg[i] = R.join(new_reps)
        while len(seg) > 2 and seg[-1] == "":
            seg.pop()


_ORDER_DETAIL_NON_LAB = frozenset({"RQD", "RQ1", "RXO", "ODS", "ODT"})
# OBR-24 diagnostic service sections (HL7 table 0074) that are not a laboratory's: imaging
# (radiology, CT, MR, nuclear medicine, ultrasound), cardiology, therapy, pharmacy and nursing.
# An ORM^O01 for one of them is not an OML^O21 (a laboratory order): it keeps its type, or has
# none to go to where the target has no ORM_O01 (its imaging form, OMI^O23, needs an IPC).
_NON_LAB_SECTIONS = frozenset({"RAD", "RX", "RUS", "CT", "MR", "NMR", "NMS", "CUS", "OUS", "VUS", "XRC", "CTH",
                               "EC", "EN", "AU", "PF", "PT", "OT", "RT", "RC", "NRS", "ICU", "PHR", "PHY"})


def convert(work: Work, target: str, opts: ConvertOptions) -> None:
    """Convert ``work`` in place to ``target`` (between 2.3 and 2.5.1, either direction)."""
    src = work.version
    if src == target:
        return
    if src not in CONVERTIBLE:
        raise TransformError("UNSUPPORTED_CONVERSION", f"{src or 'no version'} -> {target}")
    d = work.delims
    C = d.component
    msh = work.msh
    m9 = get_field(msh, 9).split(C)
    mtype, event = _part(m9, 0), _part(m9, 1)
    structure = message_structure(mtype, event, _part(m9, 2))
    old = f"{mtype}^{event}"
    new = dict(opts.message_types).get(old)
    ids = {s[0] for s in work.segments}
    if new is None:
        if old == "OML^O21" and structure_segments(target, "OML_O21") is None:
            new = "ORM^O01"
        elif old == "ORM^O01" and opts.orders_to_oml and version_key(target) >= (2, 5) \
                and "OBR" in ids and not ids & _ORDER_DETAIL_NON_LAB \
                and not any(get_field(s, 24).split(C)[0].strip().upper() in _NON_LAB_SECTIONS
                            for s in work.segments if s[0] == "OBR"):
            new = "OML^O21"
    if new and new != old:
        mtype, event = new.split("^")
        structure = message_structure(mtype, event, "")
        work.note(f"MESSAGE_TYPE:{old}->{new}")
    if not mtype:
        raise TransformError("NO_MESSAGE_TYPE", "MSH-9 is empty")
    known = structure_segments(target, structure)
    if known is None:
        raise TransformError("UNSUPPORTED_STRUCTURE", f"{structure or 'no message type'} does not exist in {target}")
    up = version_key(src) < (2, 5) <= version_key(target)
    if "TQ1" in ids and "TQ1" not in known:
        _timing_down(work)
    elif up and "TQ1" in known:
        _timing_up(work, structure)
    _default_timing(work, target)
    if "SPM" in ids and "SPM" not in known:
        _specimen_down(work)
    elif up and "SPM" in known:
        _specimen_up(work, structure)
    for seg in work.segments:
        if seg[0] == "OBX":
            vt = get_field(seg, 2)
            if vt in ("CWE", "CNE") and not has_datatype(target, vt):
                set_field(seg, 2, "CE")
            elif vt == "CE" and version_key(target) >= (2, 5):
                set_field(seg, 2, "CWE")
    if event and 1 in required_fields(target, "EVN"):
        # EVN-1 (event type) is required before 2.5 and "backward compatible" after: MSH-9.2 says it.
        for seg in work.segments:
            if seg[0] == "EVN" and not get_field(seg, 1):
                set_field(seg, 1, event)
    if up and opts.merge_pid2_pid4:
        _merge_deprecated_ids(work)
    if opts.patient_ids:
        apply_patient_ids(work, *opts.patient_ids)
    kept = []
    for s in work.segments:
        if s[0] == "MSH" or s[0][:1] == "Z" or s[0] in known:
            kept.append(s)
        else:
            work.note(f"DROPPED_SEGMENT:{s[0]}")
    work.segments = kept
    msh = work.msh
    mshape = segment_shape(target, "MSH")
    m9_parts = len(mshape[8][2] or ()) if mshape and len(mshape) > 8 else 3
    set_field(msh, 9, C.join([mtype, event, structure][:max(2, min(3, m9_parts))]))
    # MSH-12 is a VID from 2.3.1 on: its localisation (2.3.1^TGO) goes along where the target has
    # room for it, and is noted where it has none.
    m12_parts = len(mshape[11][2] or ()) if mshape and len(mshape) > 11 else 0
    local = get_field(msh, 12).split(d.repetition, 1)[0].split(C)[1:]
    kept = local[:max(0, m12_parts - 1)]
    if any(local[len(kept):]):
        work.note("DROPPED_COMPONENT:MSH-12")
    set_field(msh, 12, _join([target, *kept], C))
    _shape(work, src, target)
    work.version = target
    work.structure = structure
    work.converted = True


# ---------------------------------------------------------------------------------------------
# Output: delimiters, charset, validation
_ESC_CODES = (("field", "F"), ("component", "S"), ("repetition", "R"), ("subcomponent", "T"))


def translate_delimiters(value: str, src: Delimiters, dst: Delimiters) -> str:
    """Re-express an escaped value in other delimiters. \\F\\ \\S\\ \\T\\ \\R\\ \\E\\ name the *message's*
    delimiters, so they are decoded to the character they stood for and re-escaped only if that
    character is a delimiter of the output; other escapes (\\X..\\, \\.br\\) keep their content."""
    mapping = {src.component: dst.component, src.repetition: dst.repetition,
               src.subcomponent: dst.subcomponent}
    specials = set(mapping) | {src.escape} | {dst.field, dst.component, dst.repetition, dst.subcomponent, dst.escape}
    if not any(ch in specials for ch in value):
        return value
    literal = {getattr(dst, name): code for name, code in _ESC_CODES}
    literal[dst.escape] = "E"
    if dst.truncation:
        literal[dst.truncation] = "P"
    named = {"F": src.field, "S": src.component, "R": src.repetition, "T": src.subcomponent, "E": src.escape}
    if src.truncation:
        named["P"] = src.truncation

    def lit(c: str) -> str:
        return f"{dst.escape}{literal[c]}{dst.escape}" if c in literal else c

    out = []
    i, n = 0, len(value)
    while i < n:
        ch = value[i]
        if ch == src.escape:
            j = value.find(src.escape, i + 1)
            if j < 0:  # unterminated: the rest is literal text
                out.extend(lit(c) for c in value[i:])
                break
            content = value[i + 1:j]
            out.append(lit(named[content]) if content in named else dst.escape + content + dst.escape)
            i = j + 1
            continue
        out.append(mapping[ch] if ch in mapping else lit(ch))
        i += 1
    return "".join(out)


def render(work: Work, out_delims: Delimiters | None) -> list[str]:
    """Segment strings in the output delimiters; raw line breaks inside fields become \\.br\\."""
    src = work.delims
    dst = out_delims or src
    same = dst == src
    fs = dst.field
    lines = []
    for seg in work.segments:
        if same:
            toks = seg
        else:
            toks = [seg[0]] + [translate_delimiters(t, src, dst) for t in seg[1:]]
            if seg[0] == "MSH":
                toks[1] = dst.encoding_characters
        line = fs.join(toks)
        if "\n" in line:
            line = line.replace("\n", f"{dst.escape}.br{dst.escape}")
        lines.append(line)
    return lines


@lru_cache(maxsize=None)
def _hex_escapes(esc: str) -> tuple[re.Pattern, re.Pattern]:
    """For the escape character ``esc``: a run of adjacent ``\\Xhh..\\`` escapes (one byte string: a
    UTF-8 letter may be split over two, as the parser reads them), and one escape's hex digits."""
    one = re.escape(esc) + r"X([0-9A-Fa-f]{2,})" + re.escape(esc)
    return re.compile(f"(?:{one})+"), re.compile(one)


def recode_hex_escapes(lines: list[str], d: Delimiters, src_codec: str, dst_codec: str) -> list[str]:
    """\\Xhh..\\ escapes are bytes of the message's charset: re-express them in the new one."""
    if src_codec == dst_codec:
        return lines
    pat, hexes = _hex_escapes(d.escape)

    def sub(m):
        parts = hexes.findall(m.group(0))
        if any(len(h) % 2 for h in parts):
            return m.group(0)
        h = "".join(parts)
        try:
            text = bytes.fromhex(h).decode(src_codec)
            return f"{d.escape}X{text.encode(dst_codec).hex().upper()}{d.escape}"
        except (UnicodeError, LookupError):
            raise TransformError("CHARSET_UNREPRESENTABLE", f"a \\X escape cannot be expressed in {dst_codec}") from None

    return [pat.sub(sub, ln) if d.escape + "X" in ln else ln for ln in lines]


def encode_lines(lines: list[str], fs: str, codec: str) -> bytes:
    text = "\r".join(lines) + "\r"
    try:
        return text.encode(codec)
    except UnicodeEncodeError:
        pass
    try:
        # Letters written decomposed (e + combining acute) exist precomposed in 8-bit charsets.
        return unicodedata.normalize("NFC", text).encode(codec)
    except UnicodeEncodeError:
        lines = [unicodedata.normalize("NFC", ln) for ln in lines]
    bad: dict[str, None] = {}
    for line in lines:
        toks = line.split(fs)
        sid = toks[0]
        for i, t in enumerate(toks[1:], 1):
            try:
                t.encode(codec)
            except UnicodeEncodeError:
                bad[f"{sid}-{i + 1 if sid == 'MSH' else i}"] = None
    locs = ", ".join(list(bad)[:6])
    raise TransformError("CHARSET_UNREPRESENTABLE", f"{locs} cannot be encoded in {codec}")


class _Matcher:
    """Backtracking match of a segment-ID sequence against an hl7apy message definition.

    Unlike hl7apy's greedy group finder it tries every grouping, so a second ORDER of an OML^O21
    is not swallowed by PRIOR_RESULT. Returns the group tree of the first complete match."""

    def __init__(self, ids: list[str]):
        self.ids = ids
        self.memo: dict = {}
        self.furthest = 0

    def group(self, ref, pos: int) -> dict:
        key = (id(ref), pos)
        hit = self.memo.get(key)
        if hit is not None:
            return hit
        if ref[0] == "choice":
            out: dict = {}
            for c in ref[1]:
                for e, tr in self.repeat(c, {pos: []}).items():
                    out.setdefault(e, tr)
        else:
            out = {pos: []}
            for c in ref[1]:
                out = self.repeat(c, out)
                if not out:
                    break
        self.memo[key] = out
        return out

    def child(self, c, pos: int) -> dict:
        name, ref, _card, kind = c
        if kind == "SEG":
            if pos < len(self.ids) and self.ids[pos] == name:
                self.furthest = max(self.furthest, pos + 1)
                return {pos + 1: (name, pos)}
            return {}
        return {e: (name, tr) for e, tr in self.group(ref, pos).items()}

    def repeat(self, c, states: dict) -> dict:
        mn, mx = c[2]
        result = dict(states) if mn == 0 else {}
        frontier, visited, k = states, set(), 0
        while frontier and (mx == -1 or k < mx):
            k += 1
            nxt: dict = {}
            for p, tr in frontier.items():
                for e, t in self.child(c, p).items():
                    if e == p:  # a group that matched nothing satisfies a required occurrence
                        if k == 1:
                            result.setdefault(p, tr + [t])
                        continue
                    if e not in nxt and e not in visited:
                        nxt[e] = tr + [t]
            for e, tr in nxt.items():
                result.setdefault(e, tr)
            visited.update(nxt)
            frontier = nxt
        return result


def _optional_choices(ref):
    """Copy of an hl7apy definition where each alternative of a choice is optional (hl7apy
    validates a choice like a sequence, so every alternative would be 'required')."""
    kind = ref[0]
    kids = []
    for name, r, card, k in ref[1]:
        if k == "GRP":
            r = _optional_choices(r)
        if kind == "choice":
            card = (0, 1)
        kids.append((name, r, card, k))
    return (kind, tuple(kids)) + tuple(ref[2:])


@lru_cache(maxsize=None)
def _validation_refs(version: str, structure: str):
    ref = _message_ref(version, structure)
    if ref is None:
        return None
    patched = _optional_choices(ref)
    names: dict = {}

    def walk(r):
        for c in r[1]:
            names.setdefault(c[0], c[1])
            if c[3] == "GRP":
                walk(c[1])

    walk(patched)
    return ref, patched, names


_STRUCT_NAMES = re.compile(r"\b[A-Z][A-Z0-9]{1,2}(?:_[A-Z0-9]+|\.[A-Z0-9_]+)+\b")
_VALIDATION_KINDS = (("Missing required child", "MISSING_REQUIRED"), ("Child limit exceeded", "TOO_MANY"),
                     ("Invalid children detected", "NOT_ALLOWED"), ("Datatype", "BAD_DATATYPE"),
                     ("Unknown element", "UNKNOWN_ELEMENT"), ("Invalid element", "UNKNOWN_ELEMENT"))


def _describe(exc: Exception) -> str:
    """Validation exception -> code and structure names (no values: hl7apy messages can quote them)."""
    text = str(exc)
    kind = next((code for prefix, code in _VALIDATION_KINDS if text.startswith(prefix)), type(exc).__name__)
    names = sorted(set(_STRUCT_NAMES.findall(text)))[:4]
    return kind + (" " + ",".join(names) if names else "")


def validate_outbound(segments: list[list[str]], d: Delimiters, version: str, structure: str,
                      level: str = "structure") -> list[str]:
    """hl7apy validation of a message we built: [] when valid, else codes such as
    'MISSING_REQUIRED ORC.ORC_1' or 'SEGMENT_ORDER SPM#6'. Z-segments are not validated."""
    from hl7apy.consts import VALIDATION_LEVEL
    from hl7apy.core import Group, Message as ApyMessage
    from hl7apy.parser import parse_field, parse_segment
    from hl7apy.validation import Validator

    refs = _validation_refs(version, structure)
    if refs is None:
        return [f"UNKNOWN_STRUCTURE {structure or '?'} {version}"]
    ref, patched, names = refs
    positions = [i for i, s in enumerate(segments) if s[0][:1] != "Z"]
    ids = [segments[i][0] for i in positions]
    m = _Matcher(ids)
    ends = m.group(ref, 0)
    if len(ids) not in ends:
        at = m.furthest
        where = f"{ids[at]}#{positions[at] + 1}" if at < len(ids) else "END"
        return [f"SEGMENT_ORDER {where}"]
    lvl = VALIDATION_LEVEL.STRICT if level == "strict" else VALIDATION_LEVEL.TOLERANT
    enc = {"FIELD": d.field, "COMPONENT": d.component, "SUBCOMPONENT": d.subcomponent,
           "REPETITION": d.repetition, "ESCAPE": d.escape, "GROUP": "\r", "SEGMENT": "\r"}
    errors: list[str] = []

    def seg_of(name: str, idx: int):
        seg = segments[positions[idx]]
        try:
            return parse_segment(d.field.join(seg), version=version, encoding_chars=enc,
                                 validation_level=lvl, reference=names[name])
        except Exception as exc:
            # Locate the field (re-parsing field by field happens only on this failure path).
            fref = {c[0]: c[1] for c in names[name][1]}
            first = 2 if seg[0] == "MSH" else 1
            for i in range(first, len(seg)):
                n = i + 1 if seg[0] == "MSH" else i
                fname = f"{seg[0]}_{n}"
                if not seg[i] or fname not in fref:
                    continue
                try:
                    parse_field(seg[i], name=fname, version=version, encoding_chars=enc,
                                validation_level=lvl, reference=fref[fname])
                except Exception as fexc:
                    errors.append(f"VALUE_FORMAT {seg[0]}-{n} ({type(fexc).__name__})")
                    break
            else:
                errors.append(f"VALUE_FORMAT {seg[0]}#{positions[idx] + 1} ({type(exc).__name__})")
            return None

    def build(tree):
        out = []
        for name, x in tree:
            if isinstance(x, int):
                el = seg_of(name, x)
            else:
                el = Group(name, version=version, reference=names[name], validation_level=lvl)
                for ch in build(x):
                    el.add(ch)
            if el is not None:
                out.append(el)
        return out

    try:
        msg = ApyMessage(structure, version=version, validation_level=lvl, encoding_chars=enc)
        msg.children = build(ends[len(ids)])
    except Exception as exc:
        return errors or [f"BUILD_FAILED ({type(exc).__name__})"]
    if errors:
        return errors
    try:
        Validator.validate(msg, reference=patched)
    except Exception as exc:
        errors.append(_describe(exc))
    return errors


# ---------------------------------------------------------------------------------------------
# Targets and the whole build
@dataclass(frozen=True)
class Target:
    """What a destination receives: version ('keep' = the sender's), codec (None = the sender's),
    delimiters (None = the sender's), MSH-18 text, validation policy and level."""

    name: str
    version: str = "keep"
    codec: str | None = None
    msh18: str | None = None
    delimiters: Delimiters | None = None
    validate: str = "converted"
    validation_level: str = "structure"
    receiving_application: str | None = None
    receiving_facility: str | None = None


@dataclass
class Outcome:
    payload: bytes | None
    review: list | None
    error: str | None
    notes: list


def _fix_declared_charset(work: Work, codec: str) -> str:
    """Charset 'keep': the bytes go out in the codec the message was read with (returned); if the
    sender's MSH-18 named another one (a mislabelled sender) or none for 8-bit text, say what the
    bytes really are.

    CP1252 has no name in HL7 table 0211. Text that Latin-1 holds is the same bytes in both, and
    goes out labelled 8859/1; text with a CP1252-only character (€, œ, ’...) goes out in UTF-8,
    labelled so, rather than as bytes no label describes."""
    if codec == "cp1252" and work.version not in ("2.1", "2.2"):
        hexes = _hex_escapes(work.delims.escape)[1]
        try:
            for seg in work.segments:
                for f in seg:
                    f.encode("iso-8859-1")
                    for h in hexes.findall(f) if work.delims.escape + "X" in f else ():
                        if len(h) % 2 == 0:  # \X..\ escapes are CP1252 bytes too
                            bytes.fromhex(h).decode("cp1252").encode("iso-8859-1")
            codec = "iso-8859-1"
        except UnicodeError:
            codec = "utf-8"
            work.note("CHARSET_RECODED")
    declared = get_field(work.msh, 18).split(work.delims.repetition, 1)[0].split(work.delims.component, 1)[0]
    if not declared:
        # No MSH-18 means ASCII to a receiver: bytes beyond it (a Latin-1 sender that relied on
        # the facility's default) must be named, or é, è and ô are misread. MSH-18 exists from 2.3.
        if _charset.msh18_name(codec) and work.version not in ("2.1", "2.2") and \
                not all(f.isascii() for seg in work.segments for f in seg):
            set_field(work.msh, 18, _charset.msh18_name(codec))  # type: ignore[arg-type]
            work.note("MSH-18_SET")
        return codec
    try:
        same = _charset.normalize_codec(declared) == codec
    except (LookupError, _charset.UnsupportedCharset):
        same = False
    if not same and _charset.msh18_name(codec):
        set_field(work.msh, 18, _charset.msh18_name(codec))  # type: ignore[arg-type]
        work.note("MSH-18_CORRECTED")
    return codec


def build_outbound(msg: Message, target: Target, transform: Transform | None, rule: str,
                   tables: dict) -> Outcome:
    work = Work.from_message(msg)
    if not work.segments or work.segments[0][0] != "MSH":
        return Outcome(None, None, "NO_MSH: message does not start with MSH", [])
    src_version = work.version
    try:
        if target.version != "keep" and target.version != work.version:
            convert(work, target.version, transform.convert if transform else ConvertOptions())
        d = work.delims
        if target.receiving_application is not None:
            set_field(work.msh, 5, escape(target.receiving_application, d))
        if target.receiving_facility is not None:
            set_field(work.msh, 6, escape(target.receiving_facility, d))
        if transform is not None:
            ctx = StepContext(target.name, rule, transform.name, tables, src_version)
            for step in transform.steps:
                step.apply(work, ctx)
            if not work.segments or work.segments[0][0] != "MSH":
                raise TransformError("NO_MSH", "the transformation removed MSH")
        if work.review:
            return Outcome(None, list(work.review), None, list(work.notes))
        codec = target.codec or msg.codec
        if target.codec is not None:
            set_field(work.msh, 18, escape(target.msh18 or "", d))
        else:
            codec = _fix_declared_charset(work, codec)
        if "INVALID_BYTES" in msg.flags:
            # Bytes the sender's charset could not decode are U+FFFD in what is sent: said so.
            work.note("SOURCE_INVALID_BYTES")
        out_d = target.delimiters or d
        lines = render(work, out_d)
        lines = recode_hex_escapes(lines, out_d, msg.codec, codec)
        payload = encode_lines(lines, out_d.field, codec)
        if target.validate == "always" or (target.validate == "converted" and work.converted):
            structure = work.structure
            if not structure:
                m9 = get_field(work.msh, 9).split(d.component)
                structure = message_structure(_part(m9, 0), _part(m9, 1), _part(m9, 2))
            final = [ln.split(out_d.field) for ln in lines]
            problems = validate_outbound(final, out_d, work.version or "2.5", structure, target.validation_level)
            if problems:
                return Outcome(None, None, f"VALIDATION_FAILED {work.version} {structure}: " + "; ".join(problems[:8]),
                               list(work.notes))
        return Outcome(payload, None, None, list(work.notes))
    except TransformError as exc:
        return Outcome(None, None, str(exc), list(work.notes))


# ---------------------------------------------------------------------------------------------
# Built-in hooks (examples of the rare complex case; referenced from config/transforms.yaml)
def hook_insurer_id_to_pid2(segments: list[list[str]], ctx: HookContext):
    """Legacy receivers that read the insurer's member number only in PID-2 (external ID): copy
    the PID-3 repetition whose assigning authority (CX.4.1) is ``params['authority']`` there."""
    d = ctx.delimiters
    authority = ctx.params.get("authority", "INAM")
    for seg in segments:
        if seg[0] != "PID":
            continue
        for rep in get_field(seg, 3).split(d.repetition):
            comps = rep.split(d.component)
            if _part(comps, 3).split(d.subcomponent, 1)[0] == authority:
                set_field(seg, 2, rep)
                ctx.note("PID-3->PID-2")
                break
    return None
