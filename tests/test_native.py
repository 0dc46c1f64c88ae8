"""The compiled hot path (``transforms.NATIVE_MODULES``, built by ``scripts/build_native.py``).

mypyc compiles the same source, but a compiled function checks its annotated argument and
variable types where Python would not, so a wrong annotation shows up as a ``TypeError`` (and a
message quarantined as INTERNAL_ERROR) only in the compiled build. Hence the differential test:
every message of the corpus, a generated day with broken messages and thousands of random
mutations of them go through the loader's preparation in this process (compiled, as `make test`
builds it) and in one with ``HL7ICS_NATIVE=off`` (the Python source), and must come out the same.
"""
from __future__ import annotations

import json
import os
import pickle
import random
import shutil
import subprocess
import sys
from pathlib import Path


ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
NOW = "2026-03-01 10:00:00"


def _compiled() -> bool:
    import importlib

    import transforms

    return transforms.NATIVE == "compiled" and all(
        (importlib.import_module(f"transforms.{m}").__file__ or "").endswith(".so") for m in transforms.NATIVE_MODULES)


def _require_compiled() -> None:
    """Where there is no C compiler the package runs the Python source: allowed on a laptop, not in
    CI, where the compiled build is what production runs."""
    from conftest import require

    import transforms

    require(None if _compiled() else f"the compiled modules are not in use (state: {transforms.NATIVE})",
            "run `make native`, which says why a build fails")


def test_make_test_runs_the_compiled_modules():
    """`make test` builds them (make native) before the tests run."""
    _require_compiled()


def test_native_state_follows_the_sources(tmp_path, monkeypatch):
    from transforms import NATIVE_MODULES, build_state, native_state, source_hashes

    for m in NATIVE_MODULES:
        shutil.copy(ROOT / "transforms" / f"{m}.py", tmp_path / f"{m}.py")
    record = tmp_path / "native-build.json"
    monkeypatch.delenv("HL7ICS_NATIVE", raising=False)
    assert native_state(tmp_path, record) == "absent"
    record.write_text(json.dumps({"sources": source_hashes(tmp_path), "python": sys.version}))
    assert native_state(tmp_path, record) == "compiled"
    monkeypatch.setenv("HL7ICS_NATIVE", "off")
    assert native_state(tmp_path, record) == "off"
    assert build_state(tmp_path, record) == "compiled"  # what `make native --if-stale` asks
    monkeypatch.delenv("HL7ICS_NATIVE")
    # Built by another interpreter (a .venv remade from another Python 3.11 build): rebuilt.
    record.write_text(json.dumps({"sources": source_hashes(tmp_path), "python": "3.11.7 (main, May  9 2026)"}))
    assert native_state(tmp_path, record) == "stale"
    record.write_text(json.dumps({"sources": source_hashes(tmp_path), "python": sys.version}))
    with open(tmp_path / "facts.py", "a") as fh:  # an edit after the build
        fh.write("\n# edited\n")
    assert native_state(tmp_path, record) == "stale"
    record.write_text("{not json")
    assert native_state(tmp_path, record) == "absent"


def test_native_off_imports_the_python_source():
    out = subprocess.run([sys.executable, "-c", "import transforms, transforms.facts, transforms.parser; "
                          "print(transforms.NATIVE, transforms.facts.__file__, transforms.parser.__file__)"],
                         env={**os.environ, "HL7ICS_NATIVE": "off"}, cwd=ROOT, capture_output=True, text=True,
                         check=True)
    state, facts, parser = out.stdout.split()
    assert state == "off" and facts.endswith("facts.py") and parser.endswith("parser.py")


def test_only_the_current_build_shadows_a_source():
    """A compiled file of a module the build does not list (left from an older list, or copied in)
    is never imported: the finder hands out the source of every other module."""
    import transforms
    from transforms import NATIVE_MODULES, _PythonSource

    spec = _PythonSource.find_spec("transforms.quality")
    assert "quality" not in NATIVE_MODULES and spec is not None and spec.origin.endswith("quality.py")
    assert _PythonSource.find_spec("transforms.no_such_module") is None
    assert _PythonSource.find_spec("json") is None
    listed = _PythonSource.find_spec("transforms.facts")
    if transforms.NATIVE == "compiled":
        assert listed is None  # the normal import, which finds the compiled file
    else:
        assert listed is not None and listed.origin.endswith("facts.py")


# -- differential: compiled and Python source ---------------------------------------------------
_BYTES = [b"|", b"^", b"~", b"\\", b"&", b"\r", b"\n", b" ", b"", b"X", b"0", b"9", b"\xc3\xa9", b"\xe9", b"\x00",
          b"\\E\\", b"\\X41\\", b"\\H\\", b"\\.br\\", b'""', b"\xc9\x96", b"\xff\xfe", b"MSH|", b"\rOBX|1|NM|",
          b"\rPID|1||", b"\rPV1|1|I|", b"20240230", b"2024", b"-0500", b"+0100", b"1,5", b"nan", b"1e400"]


def _mutants(base: list[bytes], n: int, seed: int) -> list[bytes]:
    """Random edits of real messages: a byte or a token replaced, inserted or a span deleted,
    segments duplicated or dropped, MSH-18 and MSH-12 changed."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        raw = bytearray(rng.choice(base))
        for _ in range(rng.randint(1, 4)):
            pos = rng.randrange(len(raw) + 1)
            op = rng.random()
            if op < 0.45:
                raw[pos:pos + rng.randint(0, 2)] = rng.choice(_BYTES)
            elif op < 0.6:
                del raw[pos:pos + rng.randint(1, 40)]
            elif op < 0.75:
                segs = bytes(raw).split(b"\r")
                i = rng.randrange(len(segs))
                segs.insert(i, segs[i]) if rng.random() < 0.5 else segs.pop(i)
                raw = bytearray(b"\r".join(segs))
            else:
                fields = bytes(raw).split(b"\r", 1)
                msh = fields[0].split(b"|")
                if len(msh) > 17:
                    msh[rng.choice((11, 17))] = rng.choice([b"8859/1", b"UNICODE UTF-8", b"ASCII", b"2.3.1",
                                                             b"2.9", b"", b"GB 18030-2000", b"8859/15"])
                raw = bytearray(b"|".join(msh) + (b"\r" + fields[1] if len(fields) > 1 else b""))
        out.append(bytes(raw))
    return out


def _messages(work: Path) -> list[tuple[str | None, bytes]]:
    """(facility code or None, raw bytes): corpus files, a generated day, mutants of both."""
    from transforms import generator
    from transforms.config import Settings
    from transforms.parser import iter_file

    msgs: list[tuple[str | None, bytes]] = []
    files = sorted(p for p in (FIXTURES / "corpus").rglob("*") if p.is_file() and p.suffix not in (".md", ".jsonl"))
    files += sorted((FIXTURES / "hl7").glob("*.hl7"))
    facs = [f.as_dict() for f in Settings.load().facilities()]
    generator.generate(work / "gen", facs, days=1, seed=11, per_day=2_000, broken_share=0.05,
                       messages_per_file=500)
    generated = sorted((work / "gen" / "inbound").rglob("*.hl7"))
    for path in files + generated:
        fac = path.parent.name if path in generated else None
        with open(path, "rb") as fh:
            msgs.extend((fac, u.raw) for u in iter_file(fh))
    base = [raw for _, raw in msgs if raw.startswith(b"MSH")]
    codes = [f["code"] for f in facs] + [None]
    rng = random.Random(5)
    msgs.extend((rng.choice(codes), raw) for raw in _mutants(base, 4_000, seed=3))
    return msgs


def _outcomes(msgs: list[tuple[str | None, bytes]]) -> list[tuple[str, str]]:
    """What the loader and `hl7ics parse` make of each message: (status, all of it as text)."""
    from unittest import mock

    from transforms import load
    from transforms.config import Settings
    from transforms.extract import to_record
    from transforms.facts import PatientKeyer
    from transforms.load import Incoming, Loader
    from transforms.parser import parse
    from transforms.quality import QualityOptions

    loader = Loader(Settings.load().facilities(), PatientKeyer(b"k" * 32), QualityOptions(True))
    out = []
    with mock.patch.object(load, "utcnow", return_value=NOW):
        for i, (fac, raw) in enumerate(msgs):
            (p,) = loader.prepare([Incoming(raw, "folder", f"f:{i}", fac)])
            full = to_record(parse(raw, "utf-8"), None)
            out.append((p.rec["status"],
                        repr((p.rec, p.facility, p.tz, p.facts, p.fact_error, p.check, p.check_context, full))))
    return out


def test_compiled_and_python_source_prepare_the_same(tmp_path):
    _require_compiled()
    msgs = _messages(tmp_path)
    (tmp_path / "msgs.pickle").write_bytes(pickle.dumps(msgs))
    env = {**os.environ, "HL7ICS_NATIVE": "off", "HL7ICS_HOME": str(tmp_path / "home")}
    subprocess.run([sys.executable, __file__, str(tmp_path / "msgs.pickle"), str(tmp_path / "python.pickle")],
                   env=env, cwd=ROOT, check=True, timeout=600)
    python = pickle.loads((tmp_path / "python.pickle").read_bytes())
    compiled = _outcomes(msgs)
    assert len(python) == len(compiled) == len(msgs) > 5_000
    differ = [i for i, (a, b) in enumerate(zip(python, compiled)) if a != b]
    # The index only: the outcomes hold the generated patients' names.
    assert not differ, f"{len(differ)} message(s) prepared differently, first at index {differ[0]}"
    # The mutants reach the error paths too: some quarantined, some with warnings.
    assert {status for status, _ in python} == {"ok", "error"}
    assert sum("INTERNAL_ERROR" in text for _, text in python) == 0


if __name__ == "__main__":  # the Python-source side of the differential test
    sys.path.insert(0, str(ROOT))
    import transforms

    assert transforms.NATIVE == "off", transforms.NATIVE
    Path(sys.argv[2]).write_bytes(pickle.dumps(_outcomes(pickle.loads(Path(sys.argv[1]).read_bytes()))))
