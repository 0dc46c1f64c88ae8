"""Rule-based routing: which destinations receive a message, and in which form.

Purpose
    An EHR's lab orders must reach the lab's system, the lab's results must go back to the EHR and
    to surveillance, each in the HL7 version, codes, delimiters and character set the receiving
    system understands. This module decides *where* (ordered rules) and delegates *what* (the exact
    bytes) to ``transforms.hl7transform``.

Inputs
    ``config/routes.yaml`` (destinations and ordered rules), ``config/transforms.yaml`` (named
    transformations) and ``config/mappings/*.csv`` (code tables), all validated by
    ``RouteConfig.load(path)``: an error names the file, the rule or transformation, and the key.
    Messages as raw bytes (optionally already tokenized by ``transforms.parser.parse``).

Outputs
    ``Router.route(raw, msg=None) -> list[RouteResult]``, one per (matched rule, destination):
    ``payload`` the bytes to send, or ``review`` ``[(mapping, code)]`` (held: a code had no
    mapping), or ``error`` (codes and HL7 locations, never values). Pure: no database, no I/O;
    the outbound queue stores the results. ``cli_route_test(ns)`` is ``hl7ics route test``.

Matching is on the hot path (every received message), so predicates are compiled once at load
into closures over the parser's tokens; nothing here imports hl7apy. Only destinations whose
version differs from the sender's pay for hl7apy (conversion shapes and validation).
"""
from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NamedTuple


from . import charset as _charset
from .config import ConfigError, read_yaml
from .hl7transform import (CONVERTIBLE, VALIDATE_POLICIES, VALIDATION_LEVELS, FieldPath, MappingTable,
                           Target, Transform, build_outbound, compile_transform, load_mappings,
                           norm_version, parse_path, version_key)
from .parser import Delimiters, Message, parse, unescape

DESTINATION_TYPES = ("mllp", "folder", "sftp", "queue")
_COMMON_DEST_KEYS = ("type", "description", "version", "charset", "msh18", "delimiters", "validate", "validation",
                     "receiving_application", "receiving_facility",
                     # delivery policy, read by the outbound queue (transforms.outbound)
                     "max_attempts", "backoff_seconds", "backoff_max_seconds")
# Per type: (required keys, optional keys), the parameters transforms.outbound delivers with.
# Secrets never live in routes.yaml: conn_id names an Airflow connection (AIRFLOW_CONN_<ID>).
_DEST_KEYS = {
    "mllp": (("host", "port"), ("tls", "tls_ca", "tls_cert", "tls_key", "server_name", "ack_timeout",
                                "connect_timeout")),
    "folder": (("path",), ()),
    "sftp": (("conn_id", "path"), ()),
    "queue": (("queue",), ("conn_id", "url", "exchange")),
}
_SECRET_KEYS = re.compile(r"(^|_)(password|passwd|secret|token|private_key)$")
_MATCH_KEYS = ("sending_facility", "sending_application", "receiving_facility", "receiving_application",
               "message_type", "version", "where", "where_any")
_RULE_KEYS = ("name", "description", "match", "continue", "to")
# Parse problems that make a message unroutable (it is quarantined at ingest anyway).
_FATAL = frozenset({"MISSING_MSH", "BAD_DELIMITERS", "UNSUPPORTED_CHARSET"})


class ReviewItem(NamedTuple):
    mapping: str  # table name (config/mappings/<mapping>.csv)
    code: str  # the code that has no mapping (a code, never patient data)


class RouteResult(NamedTuple):
    rule: str
    destination: str
    payload: bytes | None  # exact bytes for the destination; None when held (review) or in error
    review: list | None  # [ReviewItem(mapping, code)] when held for review
    error: str | None  # "CODE: detail" with HL7 locations and codes only
    notes: tuple = ()  # what a version conversion moved or dropped (DROPPED_FIELD:OBX-23 ...)
    transform: str | None = None

    @property
    def outcome(self) -> str:
        """queued | review | error (message_route.outcome)."""
        return "error" if self.error else "review" if self.review else "queued"


@dataclass(frozen=True)
class Destination:
    name: str
    type: str
    params: dict
    target: Target
    description: str = ""

    def spec(self) -> dict:
        """The delivery parameters as transforms.outbound.check_destination expects them."""
        return {"type": self.type, **self.params}

    def describe(self) -> str:
        p = self.params
        where = {"mllp": lambda: f"{p['host']}:{p['port']}", "folder": lambda: p["path"],
                 "sftp": lambda: f"{p['conn_id']}:{p['path']}",
                 "queue": lambda: p["queue"]}[self.type]()
        t = self.target
        return (f"{self.type} {where}, HL7 {t.version}, charset {t.codec or 'keep'}"
                + (f", delimiters {t.delimiters.field}{t.delimiters.encoding_characters}" if t.delimiters else ""))


# ---------------------------------------------------------------------------------------------
# Predicates
_PRED_RE = re.compile(r"^\s*(?P<path>\S+)\s+(?P<op>not\s+exists|exists|not\s+in|in|not\s+matches|matches|!=|==|=)"
                      r"(?:\s+(?P<value>.*?))?\s*$")


def _unquote(s: str) -> str:
    s = s.strip()
    if len(s) >= 2 and s[0] == s[-1] and s[0] in "'\"":
        return s[1:-1]
    return s


def _parse_list(s: str, where: str) -> list[str]:
    s = s.strip()
    if not (s.startswith("[") and s.endswith("]")):
        raise ConfigError(f"{where}: 'in' needs a list in brackets, e.g. [70569-9, 32700-7]")
    body = s[1:-1]
    items, cur, quote = [], [], ""
    for ch in body:
        if quote:
            if ch == quote:
                quote = ""
            else:
                cur.append(ch)
        elif ch in "'\"" and not "".join(cur).strip():
            quote = ch
        elif ch == ",":
            items.append("".join(cur).strip())
            cur = []
        else:
            cur.append(ch)
    if quote:
        raise ConfigError(f"{where}: unterminated quote in list")
    last = "".join(cur).strip()
    if last or items:
        items.append(last)
    if not items or any(i == "" for i in items):
        raise ConfigError(f"{where}: empty list item (quote values that contain commas)")
    return items


def _getter(p: FieldPath, atomic: bool) -> Callable[[Message], list[str]]:
    """Values at ``p`` (unescaped), every occurrence and repetition unless indexed. ``atomic``
    (comparisons): a field means its first component, a component its first subcomponent."""
    seg, occ, fno, rep = p.seg, p.occ, p.field, p.rep
    comp, sub = p.comp, p.sub
    if atomic:
        comp = comp or 1
        sub = sub or 1
    if fno is None:
        def seg_get(msg: Message) -> list[str]:
            segs = msg.index.get(seg) or ()
            if occ is not None:
                segs = segs[occ - 1:occ]
            return ["1" for _ in segs]
        return seg_get
    idx = fno - 1 if seg == "MSH" else fno

    def get(msg: Message) -> list[str]:
        segs = msg.index.get(seg)
        if not segs:
            return []
        if occ is not None:
            segs = segs[occ - 1:occ]
        d = msg.delims
        R, C, S, E = d.repetition, d.component, d.subcomponent, d.escape
        out = []
        for s in segs:
            if seg == "MSH" and fno <= 2:
                out.append(d.field if fno == 1 else (s[1] if len(s) > 1 else ""))
                continue
            v = s[idx] if idx < len(s) else ""
            if not v:
                continue
            reps = v.split(R) if R in v else (v,)
            if rep is not None:
                reps = reps[rep - 1:rep]
            for r in reps:
                if comp is not None:
                    if C in r:
                        parts = r.split(C)
                        if comp > len(parts):
                            continue
                        r = parts[comp - 1]
                    elif comp > 1:
                        continue
                    if sub is not None:
                        if S in r:
                            subs = r.split(S)
                            if sub > len(subs):
                                continue
                            r = subs[sub - 1]
                        elif sub > 1:
                            continue
                if r:
                    out.append(unescape(r, d) if E in r else r)
        return out
    return get


def compile_predicate(text, where: str) -> Callable[[Message], bool]:
    """'OBX-3.1 in [70569-9, 32700-7]', 'PV1-2 = I', 'ZPV not exists', "OBX-5 matches '^POS'"."""
    if not isinstance(text, str):
        raise ConfigError(f"{where}: a predicate is a string like 'PV1-2 = I'")
    m = _PRED_RE.match(text)
    if not m:
        raise ConfigError(f"{where}: cannot read predicate '{text}' (expected 'PATH OP VALUE' with OP one of "
                          f"=, !=, in, not in, matches, not matches, exists, not exists)")
    path = parse_path(m.group("path"), where)
    op = " ".join(m.group("op").split())
    value = m.group("value")
    if op in ("exists", "not exists"):
        if value:
            raise ConfigError(f"{where}: '{op}' takes no value")
        get = _getter(path, atomic=False)
        return (lambda msg: bool(get(msg))) if op == "exists" else (lambda msg: not get(msg))
    if path.level == 0:
        raise ConfigError(f"{where}: '{path.text}' names a segment; '{op}' needs a field (e.g. {path.seg}-3)")
    if value is None or value == "":
        raise ConfigError(f"{where}: bad operator use: '{op}' needs a value")
    get = _getter(path, atomic=True)
    if op in ("=", "==", "!="):
        want = _unquote(value)
        if op == "!=":
            return lambda msg: want not in get(msg)
        return lambda msg: want in get(msg)
    if op in ("in", "not in"):
        wanted = frozenset(_parse_list(value, where))
        if op == "in":
            return lambda msg: not wanted.isdisjoint(get(msg))
        return lambda msg: wanted.isdisjoint(get(msg))
    try:
        rx = re.compile(_unquote(value))
    except re.error as exc:
        raise ConfigError(f"{where}: bad regular expression ({exc.msg})") from None
    if op == "matches":
        return lambda msg: any(rx.search(v) for v in get(msg))
    return lambda msg: not any(rx.search(v) for v in get(msg))


# ---------------------------------------------------------------------------------------------
# Header (computed once per message; rules compare sets)
class Header(NamedTuple):
    sending_application: str
    sending_facility: str
    receiving_application: str
    receiving_facility: str
    message_type: str
    event: str
    version: str
    control_id: str


def read_header(msg: Message) -> Header:
    msh = msg.segments[0] if msg.segments and msg.segments[0][0] == "MSH" else None
    if msh is None:
        return Header("", "", "", "", "", "", "", "")
    C = msg.delims.component
    n = len(msh)

    def c1(i: int) -> str:
        v = msh[i] if i < n else ""
        return v.split(C, 1)[0] if C in v else v

    m9 = (msh[8] if n > 8 else "").split(C)
    return Header(c1(2), c1(3), c1(4), c1(5), m9[0], m9[1] if len(m9) > 1 else "", norm_version(c1(11)), c1(9))


def _str_list(v, where: str, key: str) -> list[str]:
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, list) or not v or not all(isinstance(x, (str, int, float)) and not isinstance(x, bool)
                                                   and str(x) for x in v):
        raise ConfigError(f"{where}: '{key}' must be a string or a non-empty list of strings")
    return [str(x) for x in v]


_VERSION_COND = re.compile(r"^(>=|<=|>|<|=)?\s*(2\.\d+(?:\.\d+)?)$")


def _version_check(values: list[str], where: str) -> Callable[[str], bool]:
    conds = []
    for v in values:
        m = _VERSION_COND.match(v.strip())
        if not m:
            raise ConfigError(f"{where}: version '{v}' must look like 2.5.1 or >=2.5")
        conds.append((m.group(1) or "=", version_key(m.group(2)), m.group(2)))

    def check(ver: str) -> bool:
        if not ver:
            return False
        k = version_key(ver)
        for op, want, text in conds:
            if (op == "=" and ver == text) or (op == ">=" and k >= want) or (op == "<=" and k <= want) \
                    or (op == ">" and k > want) or (op == "<" and k < want):
                return True
        return False
    return check


@dataclass
class Rule:
    name: str
    index: int
    checks: tuple  # callables (msg, header) -> bool, all must hold
    cont: bool
    to: tuple  # ((destination name, transform name or None), ...); empty: filter (drop)
    description: str = ""

    def matches(self, msg: Message, hdr: Header) -> bool:
        for chk in self.checks:
            if not chk(msg, hdr):
                return False
        return True


def _compile_match(raw, where: str) -> tuple:
    if raw is None:
        return ()
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: 'match' must be a mapping")
    unknown = sorted(set(raw) - set(_MATCH_KEYS))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(map(str, unknown))} (allowed: {', '.join(_MATCH_KEYS)})")
    checks: list = []
    for key, attr in (("sending_facility", 1), ("sending_application", 0), ("receiving_facility", 3),
                      ("receiving_application", 2)):
        if key in raw:
            allowed = frozenset(_str_list(raw[key], f"{where}.{key}", key))
            checks.append(lambda m, h, a=allowed, i=attr: h[i] in a)
    if "message_type" in raw:
        pairs, types = set(), set()
        for t in _str_list(raw["message_type"], f"{where}.message_type", "message_type"):
            mm = re.fullmatch(r"([A-Z0-9]{3})(?:\^([A-Z0-9]{3}|\*))?", t.strip())
            if not mm:
                raise ConfigError(f"{where}.message_type: '{t}' must look like ORU^R01, ORU or ORU^*")
            if mm.group(2) in (None, "*"):
                types.add(mm.group(1))
            else:
                pairs.add((mm.group(1), mm.group(2)))
        checks.append(lambda m, h, p=frozenset(pairs), t=frozenset(types):
                      h.message_type in t or (h.message_type, h.event) in p)
    if "version" in raw:
        vc = _version_check(_str_list(raw["version"], f"{where}.version", "version"), f"{where}.version")
        checks.append(lambda m, h, c=vc: c(h.version))
    for key in ("where", "where_any"):
        if key not in raw:
            continue
        items = raw[key]
        if isinstance(items, str):
            items = [items]
        if not isinstance(items, list) or not items:
            raise ConfigError(f"{where}.{key}: must be a list of predicates such as 'PV1-2 = I'")
        preds = tuple(compile_predicate(p, f"{where}.{key}[{i}]") for i, p in enumerate(items))
        if key == "where":
            checks.extend(lambda m, h, p=p: p(m) for p in preds)
        else:
            checks.append(lambda m, h, ps=preds: any(p(m) for p in ps))
    # Header checks are cheapest: keep them first (they are, by construction order).
    return tuple(checks)


# ---------------------------------------------------------------------------------------------
# Config
def _destination(name: str, raw, where: str) -> Destination:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: must be a mapping with a 'type'")
    typ = raw.get("type")
    if typ not in DESTINATION_TYPES:
        raise ConfigError(f"{where}.type: '{typ}' is not one of {', '.join(DESTINATION_TYPES)}")
    required, optional = _DEST_KEYS[typ]
    for k in raw:
        if _SECRET_KEYS.search(str(k)):
            raise ConfigError(f"{where}.{k}: secrets do not belong in routes.yaml; name an Airflow "
                              f"connection (conn_id, AIRFLOW_CONN_<ID>)")
    unknown = sorted(set(raw) - set(_COMMON_DEST_KEYS) - set(required) - set(optional))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(map(str, unknown))} for a {typ} destination "
                          f"(allowed: {', '.join(required + optional)} and {', '.join(_COMMON_DEST_KEYS[1:])})")
    for k in required:
        if raw.get(k) in (None, ""):
            raise ConfigError(f"{where}: missing required key '{k}' for a {typ} destination")
    params = {k: raw[k] for k in required + optional if k in raw}
    if "port" in params and (not isinstance(params["port"], int) or isinstance(params["port"], bool)
                             or not 0 < params["port"] < 65536):
        raise ConfigError(f"{where}.port: must be an integer between 1 and 65535")
    if "tls" in params and not isinstance(params["tls"], bool):
        raise ConfigError(f"{where}.tls: must be true or false")
    for k in ("ack_timeout", "connect_timeout", "backoff_seconds", "backoff_max_seconds", "max_attempts"):
        if k in raw and (not isinstance(raw[k], (int, float)) or isinstance(raw[k], bool) or raw[k] < 0):
            raise ConfigError(f"{where}.{k}: must be a non-negative number")
        if k in raw:
            params[k] = raw[k]
    for k in ("host", "path", "queue", "exchange", "conn_id", "url", "tls_ca", "tls_cert", "tls_key", "server_name"):
        if k in params and not isinstance(params[k], str):
            raise ConfigError(f"{where}.{k}: must be a string")
    if typ == "queue" and not (params.get("conn_id") or params.get("url")):
        raise ConfigError(f"{where}: a queue destination needs conn_id (an Airflow connection) or url")
    if re.match(r"^[a-z]+://[^/@]*:[^/@]*@", params.get("url", "")):
        raise ConfigError(f"{where}.url: credentials do not belong in routes.yaml; use conn_id")
    # What the receiver understands.
    version = raw.get("version", "keep")
    if isinstance(version, float):
        version = repr(version)  # YAML reads 2.3 as a number; quote versions to be safe
    if version != "keep" and version not in CONVERTIBLE:
        raise ConfigError(f"{where}.version: '{version}' must be 'keep' or one of {', '.join(CONVERTIBLE)}")
    cs = raw.get("charset", "keep")
    codec = None
    if cs != "keep":
        try:
            codec = _charset.normalize_codec(str(cs))
        except (LookupError, _charset.UnsupportedCharset):
            raise ConfigError(f"{where}.charset: '{cs}' is not a supported character set") from None
    msh18 = raw.get("msh18")
    if msh18 is not None and not isinstance(msh18, str):
        raise ConfigError(f"{where}.msh18: must be a string (HL7 table 0211, e.g. 8859/1)")
    if codec and msh18 is None:
        msh18 = _charset.msh18_name(codec)
        if msh18 is None:
            raise ConfigError(f"{where}.charset: '{cs}' has no HL7 table 0211 name; set msh18 explicitly")
    delims = None
    dl = raw.get("delimiters", "keep")
    if dl != "keep":
        if not isinstance(dl, str) or len(dl) != 5 or len(set(dl)) != 5 \
                or any(ch.isalnum() or ch.isspace() for ch in dl):
            raise ConfigError(f"{where}.delimiters: must be 'keep' or 5 distinct non-alphanumeric characters, "
                              f"field separator first (e.g. '|^~\\&')")
        delims = Delimiters(dl[0], dl[1], dl[2], dl[3], dl[4])
    validate = raw.get("validate", "converted")
    if validate not in VALIDATE_POLICIES:
        raise ConfigError(f"{where}.validate: must be one of {', '.join(VALIDATE_POLICIES)}")
    level = raw.get("validation", "structure")
    if level not in VALIDATION_LEVELS:
        raise ConfigError(f"{where}.validation: must be one of {', '.join(VALIDATION_LEVELS)}")
    for k in ("receiving_application", "receiving_facility", "description"):
        if k in raw and not isinstance(raw[k], str):
            raise ConfigError(f"{where}.{k}: must be a string")
    target = Target(name, version, codec, msh18, delims, validate, level,
                    raw.get("receiving_application"), raw.get("receiving_facility"))
    return Destination(name, typ, params, target, raw.get("description", ""))


def _load_yaml(p: Path):
    if not p.is_file():
        raise ConfigError(f"{p}: not found")
    return read_yaml(p)


@dataclass
class RouteConfig:
    path: str
    destinations: dict
    transforms: dict
    tables: dict
    rules: list

    @classmethod
    def load(cls, path: str | os.PathLike) -> "RouteConfig":
        p = Path(path)
        return cls.from_dict(_load_yaml(p), p.name, p.parent)

    @classmethod
    def from_dict(cls, doc, origin: str = "routes.yaml", base_dir: str | os.PathLike = ".",
                  transforms_doc=None, tables: dict | None = None) -> "RouteConfig":
        """Build from parsed YAML. ``transforms_doc`` / ``tables`` override the files named in the
        document (benchmarks and tests build configurations in memory)."""
        base = Path(base_dir)
        if not isinstance(doc, dict):
            raise ConfigError(f"{origin}: expected a mapping with 'destinations' and 'rules'")
        unknown = sorted(set(doc) - {"destinations", "rules", "transforms_file", "mappings_dir"})
        if unknown:
            raise ConfigError(f"{origin}: unknown top-level key(s) {', '.join(map(str, unknown))}")
        # Mapping tables, then transformations (which name tables), then destinations and rules.
        if tables is None:
            mdir = base / str(doc.get("mappings_dir", "mappings"))
            if "mappings_dir" in doc and not mdir.is_dir():
                raise ConfigError(f"{origin}: mappings_dir '{doc['mappings_dir']}' is not a directory")
            tables = load_mappings(mdir)
        transforms: dict[str, Transform] = {}
        t_origin = "transforms"
        if transforms_doc is None and "transforms_file" in doc:
            tp = base / str(doc["transforms_file"])
            t_origin = tp.name
            transforms_doc = _load_yaml(tp)
        elif transforms_doc is None and (base / "transforms.yaml").is_file():
            t_origin = "transforms.yaml"
            transforms_doc = _load_yaml(base / "transforms.yaml")
        if transforms_doc is not None:
            if not isinstance(transforms_doc, dict) or not isinstance(transforms_doc.get("transforms"), dict):
                raise ConfigError(f"{t_origin}: expected a top-level 'transforms:' mapping of name -> steps")
            for name, raw in transforms_doc["transforms"].items():
                transforms[str(name)] = compile_transform(str(name), raw, f"{t_origin}: transform '{name}'", tables)
        dests_raw = doc.get("destinations")
        if not isinstance(dests_raw, dict) or not dests_raw:
            raise ConfigError(f"{origin}: 'destinations' must be a mapping of name -> destination")
        destinations = {}
        for name, raw in dests_raw.items():
            if not isinstance(name, str) or not re.fullmatch(r"[a-z0-9][a-z0-9_.-]{0,63}", name):
                raise ConfigError(f"{origin}: destination name '{name}' must be lower-case letters, digits, '-', '_' or '.'")
            destinations[name] = _destination(name, raw, f"{origin}: destination '{name}'")
        rules_raw = doc.get("rules")
        if not isinstance(rules_raw, list) or not rules_raw:
            raise ConfigError(f"{origin}: 'rules' must be a non-empty list")
        rules, seen = [], set()
        for i, raw in enumerate(rules_raw):
            where = f"{origin}: rules[{i}]"
            if not isinstance(raw, dict):
                raise ConfigError(f"{where}: must be a mapping with 'name', 'match' and 'to'")
            name = raw.get("name")
            if not isinstance(name, str) or not name:
                raise ConfigError(f"{where}: missing required key 'name'")
            where = f"{origin}: rule '{name}'"
            if name in seen:
                raise ConfigError(f"{where}: duplicate rule name")
            seen.add(name)
            unknown = sorted(set(raw) - set(_RULE_KEYS))
            if unknown:
                raise ConfigError(f"{where}: unknown key(s) {', '.join(map(str, unknown))} (allowed: {', '.join(_RULE_KEYS)})")
            if "to" not in raw:
                raise ConfigError(f"{where}: missing required key 'to' (use 'to: []' to drop matching messages)")
            to_raw = raw["to"]
            if not isinstance(to_raw, list):
                to_raw = [to_raw]
            to = []
            for j, t in enumerate(to_raw):
                tw = f"{where}: to[{j}]"
                if isinstance(t, str):
                    dname, tname = t, None
                elif isinstance(t, dict):
                    bad = sorted(set(t) - {"destination", "transform"})
                    if bad:
                        raise ConfigError(f"{tw}: unknown key(s) {', '.join(map(str, bad))} (allowed: destination, transform)")
                    dname, tname = t.get("destination"), t.get("transform")
                else:
                    raise ConfigError(f"{tw}: must be a destination name or {{destination: NAME, transform: NAME}}")
                if dname not in destinations:
                    raise ConfigError(f"{tw}.destination: unknown destination '{dname}' "
                                      f"(known: {', '.join(sorted(destinations))})")
                if tname is not None and tname not in transforms:
                    raise ConfigError(f"{tw}.transform: unknown transformation '{tname}' "
                                      f"(known: {', '.join(sorted(transforms)) or 'none'})")
                to.append((dname, tname))
            cont = raw.get("continue", False)
            if not isinstance(cont, bool):
                raise ConfigError(f"{where}.continue: must be true or false")
            rules.append(Rule(name, i, _compile_match(raw.get("match"), f"{where}: match"), cont, tuple(to),
                              str(raw.get("description", ""))))
        return cls(origin, destinations, transforms, tables, rules)


# ---------------------------------------------------------------------------------------------
class Router:
    """Routes messages with a validated ``RouteConfig``. Thread-safe: holds no per-message state."""

    def __init__(self, config: RouteConfig):
        self.config = config
        self.rules = config.rules
        self.destinations = config.destinations
        self.transforms = config.transforms
        self.tables: dict[str, MappingTable] = config.tables

    @staticmethod
    def unroutable(msg: Message) -> str | None:
        """Why a message cannot be routed (codes), or None."""
        fatal = sorted({i.code for i in msg.issues if i.code in _FATAL})
        return ",".join(fatal) if fatal else None

    def match(self, msg: Message, hdr: Header | None = None) -> list[Rule]:
        """Rules that match, in order, stopping after the first one without ``continue: true``."""
        hdr = hdr or read_header(msg)
        out = []
        for rule in self.rules:
            if rule.matches(msg, hdr):
                out.append(rule)
                if not rule.cont:
                    break
        return out

    def route(self, raw: bytes, msg: Message | None = None, facility_charset: str | None = None) -> list[RouteResult]:
        """One RouteResult per (matched rule, destination); [] when no rule matched, a matching
        rule has ``to: []`` (filtered) or the message is unroutable (see ``unroutable``). A
        destination reached by several rules gets one copy, the first matching rule's: two
        copies would carry one MSH-10, and receivers drop or mis-file the second."""
        if msg is None:
            msg = parse(raw, facility_charset)
        if self.unroutable(msg):
            return []
        results = []
        seen: set = set()
        for rule in self.match(msg):
            for dname, tname in rule.to:
                if dname in seen:
                    continue
                seen.add(dname)
                results.append(self._build(msg, rule.name, dname, tname))
        return results

    def _build(self, msg: Message, rule: str, dname: str, tname: str | None) -> RouteResult:
        dest = self.destinations[dname]
        transform = self.transforms[tname] if tname else None
        try:
            out = build_outbound(msg, dest.target, transform, rule, self.tables)
        except Exception as exc:  # a bug must hold this destination's copy, not stop the pipeline
            return RouteResult(rule, dname, None, None, f"INTERNAL_ERROR: {type(exc).__name__}", (), tname)
        review = [ReviewItem(m, c) for m, c in out.review] if out.review else None
        return RouteResult(rule, dname, out.payload, review, out.error, tuple(out.notes), tname)


# ---------------------------------------------------------------------------------------------
# hl7ics route test FILE [--routes PATH]
def cli_route_test(ns) -> int:
    """Dry run: for each message of FILE, the rules that match and the exact bytes each
    destination would receive (segments on separate lines), review entries and errors.
    Exit 0 when every message was routed or filtered, 1 when one needs review or failed."""
    from .config import Settings
    from .parser import iter_file

    out = getattr(ns, "out", None) or sys.stdout
    routes = getattr(ns, "routes", None)
    if not routes:
        routes = Settings.load(getattr(ns, "config", None)).config_dir / "routes.yaml"
    router = Router(RouteConfig.load(routes))
    files = getattr(ns, "file", None) or getattr(ns, "files", None) or getattr(ns, "paths", None)
    if isinstance(files, (str, os.PathLike)):
        files = [files]
    fallback = getattr(ns, "facility_charset", None)
    counts = {"messages": 0, "routed": 0, "filtered": 0, "review": 0, "failed": 0}
    for path in files or []:
        try:
            fh = open(path, "rb")
        except OSError as exc:
            print(f"{path}: cannot read ({type(exc).__name__})", file=out)
            counts["failed"] += 1
            continue
        with fh:
            for rm in iter_file(fh):
                counts["messages"] += 1
                _print_message(router, path, rm, fallback, counts, out)
    print(f"summary: {counts['messages']} messages: {counts['routed']} routed, {counts['filtered']} filtered, "
          f"{counts['review']} need review, {counts['failed']} failed", file=out)
    return 1 if counts["review"] or counts["failed"] or not counts["messages"] else 0


def _print_message(router: Router, path, rm, fallback, counts: dict, out) -> None:
    msg = parse(rm.raw, fallback)
    hdr = read_header(msg)
    title = (f"{path}#{rm.index}: {hdr.message_type}^{hdr.event} v{hdr.version or '?'} from "
             f"{hdr.sending_facility or '?'} (control {hdr.control_id or '?'})")
    why = Router.unroutable(msg) if not rm.fragment else "MISSING_MSH"
    if why:
        print(f"{title}\n  ERROR unroutable: {why}", file=out)
        counts["failed"] += 1
        return
    rules = router.match(msg, hdr)
    if not rules:
        print(f"{title}\n  no rule matched: filtered", file=out)
        counts["filtered"] += 1
        return
    print(title, file=out)
    print("  rules: " + ", ".join(f"{r.name} ({'continue' if r.cont else 'stop'})" for r in rules), file=out)
    results = router.route(rm.raw, msg)
    if not results:
        print("  no destination (to: []): filtered", file=out)
        counts["filtered"] += 1
        return
    state = "routed"
    for r in results:
        dest = router.destinations[r.destination]
        head = f"  -> {r.destination} [{r.transform or 'no transformation'}] ({dest.describe()})"
        if r.error:
            print(f"{head}\n     ERROR {r.error}", file=out)
            state = "failed"
        elif r.review:
            items = ", ".join(f"{i.mapping}:{i.code}" for i in r.review)
            print(f"{head}\n     REVIEW held, unmapped codes: {items}", file=out)
            if state != "failed":
                state = "review"
        else:
            codec = dest.target.codec or msg.codec
            print(f"{head}: {len(r.payload)} bytes in {codec}", file=out)  # type: ignore[arg-type]
            text = r.payload.decode(codec)  # type: ignore[union-attr]
            out.write(text.replace("\r", "\n"))
        if r.notes:
            print("     notes: " + ", ".join(r.notes), file=out)
    counts[state] += 1
