"""Compile the message hot path (``transforms.NATIVE_MODULES``) to C extension modules with mypyc.

Input: the modules' Python source (type-checked by mypy on the way). Output: ``transforms/*.so``
beside the sources and ``transforms/native-build.json``, which records the hash of each source
they were built from; ``transforms/__init__.py`` uses them only while those hashes still match.

Without a C compiler (or on any build error) it says so and exits 0: the package then runs the
same code from the Python source, about a fifth slower on ingest (docs/performance.md).
``--check`` only reports whether the compiled modules are in use; ``--if-stale`` builds only when
they do not match their sources (what ``make native`` runs).
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from transforms import NATIVE_MODULES, NATIVE_RECORD, build_state, native_state, source_hashes  # noqa: E402

GROUP = "transforms.native"  # the shared library: transforms/native__mypyc.*.so


def _clean() -> None:
    """Removes the record and every compiled file, including those of modules no longer listed."""
    NATIVE_RECORD.unlink(missing_ok=True)
    for f in (ROOT / "transforms").glob("*.so"):
        f.unlink()


def build() -> bool:
    from mypyc.build import mypycify
    from setuptools import Distribution

    _clean()
    paths = [f"transforms/{m}.py" for m in NATIVE_MODULES]
    before = source_hashes()
    work = Path(tempfile.mkdtemp(prefix="hl7ics-native-"))
    cwd = os.getcwd()
    os.chdir(ROOT)  # mypyc names modules by their path from here
    try:
        exts = mypycify(paths, opt_level="3", group_name=GROUP, target_dir=str(work / "c"))
        # A bare Distribution: setup() would also read pyproject.toml, which only the build
        # front end (pip) needs to understand.
        dist = Distribution({"name": "hl7ics-native", "ext_modules": exts})
        cmd = dist.get_command_obj("build_ext")
        cmd.inplace = True
        cmd.build_temp = str(work / "tmp")
        dist.run_command("build_ext")
    finally:
        os.chdir(cwd)
        shutil.rmtree(work, ignore_errors=True)
    if source_hashes() != before:
        print("build_native: a source changed during the build; run it again", file=sys.stderr)
        _clean()
        return False
    NATIVE_RECORD.write_text(json.dumps({"sources": before, "python": sys.version}, indent=1) + "\n")
    return True


def main(argv: list[str]) -> int:
    if "--check" in argv:
        state = native_state()
        print(f"compiled modules: {state}")
        return 0 if state == "compiled" else 1
    if "--if-stale" in argv and build_state() == "compiled":  # whatever HL7ICS_NATIVE says about using it
        return 0
    try:
        ok = build()
    except SystemExit as exc:  # distutils reports compiler errors this way
        ok = False
        print(f"build_native: the C build failed ({exc})", file=sys.stderr)
    except Exception as exc:
        ok = False
        print(f"build_native: the C build failed ({type(exc).__name__}: {exc})", file=sys.stderr)
    if not ok:
        _clean()
        print("build_native: using the Python source (same results, slower ingest)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
