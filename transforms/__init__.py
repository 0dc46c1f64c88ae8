"""hl7ics transforms: pure-Python HL7 v2 parsing, transformation and warehouse code.

Nothing in this package imports Airflow, so every function here is unit-tested in milliseconds and
shared by the DAGs (through ``plugins/``) and by the ``hl7ics`` command line.

The message hot path (``NATIVE_MODULES``) can also be compiled to C with mypyc
(``scripts/build_native.py``, run by ``make``): the same source, not a second implementation. A
compiled module is used only while its source is unchanged since the build (``native-build.json``
records each source's SHA-256); after an edit, or with ``HL7ICS_NATIVE=off``, the package imports
the Python source instead, so a stale build can never run code that is not in the repository.
"""
from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import json
import os
import sys
import warnings
from pathlib import Path

__version__ = "0.1.0"

# Parsing, the canonical record, fact extraction, the loader's per-message work and the
# data-quality pre-screen: about two thirds of a message's CPU on ingest.
NATIVE_MODULES = ("charset", "datetimes", "parser", "extract", "facts", "load", "dq_screen", "pgcopy")
NATIVE_RECORD = Path(__file__).with_name("native-build.json")
_HERE = Path(__file__).parent


def source_hashes(folder: Path = _HERE) -> dict[str, str]:
    """SHA-256 of each compiled module's source, as the build records them."""
    return {m: hashlib.sha256((folder / f"{m}.py").read_bytes()).hexdigest() for m in NATIVE_MODULES}


def native_state(folder: Path = _HERE, record: Path | None = None) -> str:
    """``off`` (HL7ICS_NATIVE=off), else what ``build_state`` finds."""
    if os.environ.get("HL7ICS_NATIVE", "on").strip().lower() in ("off", "0", "false", "no"):
        return "off"
    return build_state(folder, record)


def build_state(folder: Path = _HERE, record: Path | None = None) -> str:
    """``compiled`` (built from the current source by this interpreter), ``stale`` (a source changed
    since the build, or another interpreter built it) or ``absent`` (never built, e.g. no C
    compiler)."""
    record = record or folder / NATIVE_RECORD.name
    try:
        built = json.loads(record.read_text())
    except (OSError, ValueError):
        return "absent"
    # The interpreter's full version string names its build too: modules compiled against another
    # build's headers (a .venv remade from another Python 3.11) are rebuilt, not trusted.
    if not isinstance(built, dict) or built.get("sources") != source_hashes(folder) \
            or built.get("python") != sys.version:
        return "stale"
    return "compiled"


class _PythonSource:
    """Finds ``transforms.<module>`` as its ``.py`` file even where a compiled one lies beside it
    (the import system prefers extension modules): every module but the current build's."""

    @staticmethod
    def find_spec(name, path=None, target=None):
        pkg, _, mod = name.rpartition(".")
        if pkg != __name__ or (NATIVE == "compiled" and mod in NATIVE_MODULES):
            return None
        src = _HERE / f"{mod}.py"
        if not src.is_file():
            return None
        return importlib.util.spec_from_file_location(name, src,
                                                      loader=importlib.machinery.SourceFileLoader(name, str(src)))


NATIVE = native_state()
# Also when the build is current: a compiled file left from a module no longer compiled (or
# copied in by hand) must not shadow its source.
sys.meta_path.insert(0, _PythonSource)
if NATIVE == "stale":
    warnings.warn("the compiled hl7ics modules are older than their source or were built by another "
                  "interpreter: using the Python source (run `make native` to rebuild them)", RuntimeWarning,
                  stacklevel=2)
