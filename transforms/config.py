"""Configuration: where things are, and the validated facility registry.

Inputs: ``config/`` (or ``--config DIR`` / ``HL7ICS_CONFIG``) with ``facilities.yaml``; environment
variables for locations (``HL7ICS_HOME`` for runtime state, default ``./var``; ``HL7ICS_DATA_DIR``
for facility drop folders, default ``$HL7ICS_HOME/data``; ``HL7ICS_WAREHOUSE_URL``, default the
embedded SQLite file ``$HL7ICS_HOME/warehouse.db``). Output: ``Settings`` and ``Facility`` objects.
Validation errors name the file, the facility and the key, so an onboarding mistake is fixed in
minutes, and never echo secrets.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from . import charset as _charset

PROJECT_ROOT = Path(__file__).resolve().parent.parent
REGIONS = ("Lomé-Commune", "Maritime", "Plateaux", "Centrale", "Kara", "Savanes")
FACILITY_TYPES = ("chu", "chr", "district_hospital", "reference_lab", "pharmacy", "peripheral_unit", "clinic")
SOURCE_TYPES = ("folder", "sftp", "queue")
_CODE = re.compile(r"^[A-Z0-9][A-Z0-9_-]{1,39}$")
_MSGTYPE = re.compile(r"^[A-Z0-9]{3}\^[A-Z0-9]{3}$")


class ConfigError(ValueError):
    """Invalid configuration; the message says which file, entry and key."""


@dataclass(frozen=True)
class Source:
    type: str
    options: dict

    @property
    def path(self) -> str:
        return self.options.get("path", "")


@dataclass(frozen=True)
class Facility:
    code: str
    name: str
    type: str
    region: str
    district: str
    dhis2_org_unit: str
    charset: str | None
    timezone: str
    message_types: tuple[str, ...]
    working_hours: tuple[int, int]
    expected_interval_minutes: int
    sources: tuple[Source, ...] = field(default_factory=tuple)

    def as_dict(self) -> dict:
        return {
            "code": self.code, "name": self.name, "type": self.type, "region": self.region,
            "district": self.district, "dhis2_org_unit": self.dhis2_org_unit, "charset": self.charset,
            "timezone": self.timezone, "message_types": list(self.message_types),
            "working_hours": list(self.working_hours),
            "expected_interval_minutes": self.expected_interval_minutes,
            "sources": [{"type": s.type, **s.options} for s in self.sources],
        }


@dataclass(frozen=True)
class Settings:
    config_dir: Path
    home: Path
    data_dir: Path
    warehouse_url: str

    @classmethod
    def load(cls, config_dir: str | os.PathLike | None = None, warehouse_url: str | None = None) -> "Settings":
        cdir = Path(config_dir or os.environ.get("HL7ICS_CONFIG") or PROJECT_ROOT / "config").resolve()
        home = Path(os.environ.get("HL7ICS_HOME") or PROJECT_ROOT / "var").resolve()
        data = Path(os.environ.get("HL7ICS_DATA_DIR") or home / "data").resolve()
        url = warehouse_url or os.environ.get("HL7ICS_WAREHOUSE_URL") or f"sqlite:///{home / 'warehouse.db'}"
        return cls(cdir, home, data, url)

    def facilities(self) -> list[Facility]:
        return load_facilities(self.config_dir / "facilities.yaml")


def _req(entry: dict, key: str, where: str, typ=str):
    if key not in entry or entry[key] in (None, ""):
        raise ConfigError(f"{where}: missing required key '{key}'")
    val = entry[key]
    if typ is not None and not isinstance(val, typ):
        raise ConfigError(f"{where}: '{key}' must be a {typ.__name__}")
    return val


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)  # YAML's true/false are ints to Python


def only_keys(entry: dict, allowed: tuple[str, ...], where: str, prefix: str = "") -> None:
    """A misspelt key would otherwise be ignored and its default used without a word. ``prefix``
    names the mapping the keys sit in (``listener.``)."""
    unknown = sorted(prefix + str(k) for k in entry if k not in allowed)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(allowed)}")


def _glob(opts: dict, where: str) -> None:
    pattern = opts.setdefault("glob", "*.hl7")
    if not isinstance(pattern, str) or not pattern.strip():
        raise ConfigError(f"{where}: glob must be a non-empty pattern like '*.hl7'")
    parts = pattern.replace("\\", "/").split("/")
    if pattern.startswith(("/", "~")) or ".." in parts or (len(pattern) > 1 and pattern[1] == ":"):
        raise ConfigError(f"{where}: glob must stay inside the source's folder (no absolute path, no '..')")


_SOURCE_KEYS = {
    "folder": ("type", "path", "glob", "partial_upload", "stable_seconds", "archive"),
    "queue": ("type", "conn_id", "url", "queue", "prefetch", "max_messages", "idle_seconds"),
    "sftp": ("type", "conn_id", "path", "glob", "after", "archive", "partial_upload", "stable_seconds"),
}


def _source(raw, where: str) -> Source:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: each source must be a mapping with a 'type'")
    typ = _req(raw, "type", where)
    if typ not in SOURCE_TYPES:
        raise ConfigError(f"{where}: source type '{typ}' is not one of {', '.join(SOURCE_TYPES)}")
    only_keys(raw, _SOURCE_KEYS[typ], where)
    opts = {k: v for k, v in raw.items() if k != "type"}
    if typ in ("folder", "sftp"):
        _glob(opts, where)
        rule = opts.setdefault("partial_upload", "tmp_rename")
        if rule not in ("tmp_rename", "stable_size"):
            raise ConfigError(f"{where}: partial_upload must be 'tmp_rename' or 'stable_size'")
        secs = opts.setdefault("stable_seconds", 30)
        if not _is_int(secs) or secs < 0:
            raise ConfigError(f"{where}: stable_seconds must be a non-negative integer")
    if typ == "folder":
        _req(opts, "path", where)  # relative paths resolve under HL7ICS_DATA_DIR
        if opts.setdefault("archive", True) is not True:
            # A committed file leaves the drop folder (or every run would hash it again).
            raise ConfigError(f"{where}: archive: a folder source always moves committed files to "
                              "$HL7ICS_HOME/archive/<facility>; only 'true' is accepted")
    elif typ == "queue":
        if not (opts.get("conn_id") or opts.get("url")) or not opts.get("queue"):
            raise ConfigError(f"{where}: a queue source needs 'conn_id' (an AMQP connection) and 'queue'")
        if "url" in opts and "@" in str(opts["url"]):
            raise ConfigError(f"{where}: put queue credentials in an Airflow connection (conn_id), not in the file")
        prefetch = opts.setdefault("prefetch", 200)
        if not _is_int(prefetch) or not 1 <= prefetch <= 10_000:
            raise ConfigError(f"{where}: prefetch must be an integer between 1 and 10000")
        if "max_messages" in opts and (not _is_int(opts["max_messages"]) or opts["max_messages"] < 1):
            raise ConfigError(f"{where}: max_messages must be a positive integer")
        idle = opts.get("idle_seconds", 1.0)
        if isinstance(idle, bool) or not isinstance(idle, (int, float)) or not idle > 0:
            raise ConfigError(f"{where}: idle_seconds must be a positive number")
    elif typ == "sftp":
        if not opts.get("conn_id"):
            raise ConfigError(f"{where}: an sftp source needs 'conn_id' (an SSH connection with a pinned host key)")
        opts.setdefault("path", "/")
        if opts.setdefault("after", "move") not in ("move", "delete"):
            raise ConfigError(f"{where}: after must be 'move' (to the 'archive' folder) or 'delete'")
        archive = opts.setdefault("archive", "archive")
        if not isinstance(archive, str) or not archive.strip() or "\x00" in archive or archive.startswith("/") \
                or ".." in archive.split("/") or os.path.normpath(archive) == ".":
            raise ConfigError(f"{where}: archive must be a folder below 'path' (relative, without '..')")
        if not isinstance(opts["path"], str) or "\x00" in opts["path"]:
            raise ConfigError(f"{where}: path must be a remote folder name")
    return Source(typ, opts)


_FACILITY_KEYS = ("code", "name", "type", "region", "district", "dhis2_org_unit", "charset", "timezone",
                  "message_types", "working_hours", "expected_interval_minutes", "sources")


def parse_facilities(doc, origin: str = "facilities.yaml") -> list[Facility]:
    if not isinstance(doc, dict) or not isinstance(doc.get("facilities"), list):
        raise ConfigError(f"{origin}: expected a top-level 'facilities:' list")
    out: list[Facility] = []
    seen: set[str] = set()
    for i, entry in enumerate(doc["facilities"]):
        where = f"{origin}: facilities[{i}]"
        if not isinstance(entry, dict):
            raise ConfigError(f"{where}: must be a mapping")
        code = _req(entry, "code", where)
        where = f"{origin}: facility {code}"
        if not _CODE.match(code):
            raise ConfigError(f"{where}: code must be 2-40 upper-case letters, digits, '-' or '_'")
        if code in seen:
            raise ConfigError(f"{where}: duplicate facility code")
        seen.add(code)
        only_keys(entry, _FACILITY_KEYS, where)
        ftype = _req(entry, "type", where)
        if ftype not in FACILITY_TYPES:
            raise ConfigError(f"{where}: type '{ftype}' is not one of {', '.join(FACILITY_TYPES)}")
        region = _req(entry, "region", where)
        if region not in REGIONS:
            raise ConfigError(f"{where}: region '{region}' is not one of the six health regions {', '.join(REGIONS)}")
        cs = entry.get("charset") or None  # None: UTF-8, falling back to CP1252
        if cs is not None and not isinstance(cs, str):
            raise ConfigError(f"{where}: charset must be a name like 'utf-8' or 'cp1252' (in quotes if it is a number)")
        if cs is not None:
            try:
                _charset.normalize_codec(cs)
            except (LookupError, _charset.UnsupportedCharset):
                raise ConfigError(f"{where}: charset '{cs}' is not a known or supported codec") from None
        tz = entry.get("timezone") or "Africa/Lome"
        try:
            from zoneinfo import ZoneInfo
            ZoneInfo(tz)
        except Exception:
            raise ConfigError(f"{where}: timezone '{tz}' is not an IANA zone") from None
        mtypes = entry.get("message_types") or []
        if not isinstance(mtypes, list) or any(not isinstance(m, str) or not _MSGTYPE.match(m) for m in mtypes):
            raise ConfigError(f"{where}: message_types must be a list like ['ADT^A01', 'ORU^R01']")
        hours = entry.get("working_hours") or [0, 24]
        if (not isinstance(hours, list) or len(hours) != 2 or not all(_is_int(h) for h in hours)
                or not 0 <= hours[0] < hours[1] <= 24):
            raise ConfigError(f"{where}: working_hours must be [start, end] with 0 <= start < end <= 24")
        interval = entry.get("expected_interval_minutes", 60)
        if not _is_int(interval) or interval <= 0:
            raise ConfigError(f"{where}: expected_interval_minutes must be a positive integer")
        sources = entry.get("sources") or []
        if not isinstance(sources, list):
            raise ConfigError(f"{where}: sources must be a list")
        out.append(Facility(
            code=code, name=_req(entry, "name", where), type=ftype, region=region,
            district=_req(entry, "district", where), dhis2_org_unit=_req(entry, "dhis2_org_unit", where),
            charset=cs, timezone=tz, message_types=tuple(mtypes), working_hours=(hours[0], hours[1]),
            expected_interval_minutes=interval,
            sources=tuple(_source(s, f"{where}: sources[{j}]") for j, s in enumerate(sources)),
        ))
    # Two facilities reading one folder would each take the other's files under their own code.
    folders: dict[tuple, str] = {}
    for f in out:
        for src in f.sources:
            if src.type == "folder":
                key = ("folder", os.path.normpath(str(src.options["path"])))
            elif src.type == "sftp":
                key = ("sftp", src.options["conn_id"], os.path.normpath(str(src.options["path"])))
            else:
                key = ("queue", src.options.get("conn_id") or src.options.get("url"), str(src.options["queue"]))
            if key in folders and folders[key] != f.code:
                raise ConfigError(f"{origin}: facilities {folders[key]} and {f.code} both read {key[-1]} "
                                  f"({src.type} source); each facility needs a {'queue' if src.type == 'queue' else 'folder'} "
                                  "of its own")
            folders[key] = f.code
    return out


def read_yaml(path: str | os.PathLike, label: str | None = None):
    """The YAML document of a configuration file; a syntax error is a ``ConfigError`` naming the
    file (``label``, default its name) and the line."""
    p = Path(path)
    try:
        return yaml.safe_load(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{label or p.name}: not UTF-8 text (save it as UTF-8)") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{label or p.name}:{where} is not valid YAML") from None


def load_facilities(path: str | os.PathLike) -> list[Facility]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: facility configuration not found (set --config or HL7ICS_CONFIG)")
    return parse_facilities(read_yaml(p), str(p.name))
