"""Tests for transforms/generator.py (synthetic HL7 v2 traffic for Togo facilities)."""
from __future__ import annotations

import json
import re
from collections import Counter, defaultdict

import pytest

from transforms import generator as gen
from transforms.generator import DEFAULT_FACILITIES, generate, generate_mix, iter_messages

FAC = {f["code"]: f for f in DEFAULT_FACILITIES}
LATIN1_FACS = {c for c, f in FAC.items() if f["charset"] == "iso-8859-1"}
UTF8_FACS = set(FAC) - LATIN1_FACS
EWE_LETTERS = set("ɖƒɣŋɔɛʋ")
SEG_SPLIT = re.compile(r"\r\n|\r|\n")

# One shared sample keeps the suite fast: 3 days x 400 messages, small files so that the
# per-file choices (terminators, batch files) occur often enough to be checked.
ARGS = dict(facilities=None, days=3, seed=7, broken_share=0.05, per_day=400)
MPF = 20


def segments(raw: bytes, codec: str) -> list[str]:
    return [s for s in SEG_SPLIT.split(raw.decode(codec)) if s]


def msh_fields(raw: bytes, codec: str) -> list[str] | None:
    segs = segments(raw, codec)
    return segs[0].split("|") if segs and segs[0].startswith("MSH|") else None


def seg_fields(segs: list[str], name: str) -> list[list[str]]:
    return [s.split("|") for s in segs if s.startswith(name + "|")]


def field(fields: list[str], i: int) -> str:
    return fields[i] if i < len(fields) else ""


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    out = tmp_path_factory.mktemp("gen")
    manifest = generate(out, messages_per_file=MPF, **ARGS)
    msgs = list(iter_messages(messages_per_file=MPF, **ARGS))
    files = {p.relative_to(out).as_posix(): p.read_bytes()
             for p in sorted(out.rglob("*")) if p.is_file()}
    return out, manifest, msgs, files


def hl7_files(files: dict) -> dict:
    return {k: v for k, v in files.items() if k.endswith(".hl7")}


def file_codec(relpath: str) -> str:
    code = relpath.split("/")[1]
    return "iso-8859-1" if code in LATIN1_FACS else "utf-8"


# ---------------------------------------------------------------------------------------
def test_determinism_same_seed_same_bytes_other_seed_differs(tmp_path):
    def run(d, seed):
        m = generate(tmp_path / d, None, 2, seed, per_day=150, messages_per_file=15)
        return m, {p.relative_to(tmp_path / d).as_posix(): p.read_bytes()
                   for p in sorted((tmp_path / d).rglob("*")) if p.is_file()}

    m1, f1 = run("a", 11)
    m2, f2 = run("b", 11)
    m3, f3 = run("c", 12)
    assert f1 == f2 and m1 == m2
    assert len(f1) > 10
    assert f1 != f3
    assert sum(f1[k] != f3.get(k) for k in f1) > len(f1) // 2


def test_layout_names_and_no_tmp_left(sample):
    out, manifest, _msgs, files = sample
    assert not [k for k in files if k.endswith(".tmp")]
    for rel in hl7_files(files):
        parts = rel.split("/")
        assert parts[0] == "inbound" and parts[1] in FAC, rel
        assert re.fullmatch(rf"{re.escape(parts[1])}_2026110[234]_\d{{4}}\.hl7", parts[2]), rel
    assert json.loads((out / "manifest.json").read_text("utf-8")) == manifest


def test_facilities_only_send_their_types_and_msh_is_consistent(sample):
    _out, _m, msgs, _f = sample
    seen = defaultdict(set)
    for m in msgs:
        assert m.message_type in FAC[m.facility]["message_types"], (m.facility, m.message_type)
        seen[m.facility].add(m.message_type)
        f = msh_fields(m.raw, m.charset)
        if m.broken in ("NO_MSH",):
            assert f is None
            continue
        assert f is not None
        assert f[1] == "^~\\&" and f[2] and f[3] == m.facility and f[4:6] == ["HL7ICS", "MOH-TG"]
        assert re.fullmatch(r"\d{14}(\+0000)?", f[6]), f[6]
        assert f[11] == m.version
        if m.broken != "EMPTY_MSH9":
            comps = f[8].split("^")
            assert "^".join(comps[:2]) == m.message_type
            assert len(comps) == (2 if m.version == "2.3" else 3), (m.version, f[8])
    # every facility actually exercises most of its list (the mix is not degenerate)
    for code, types in seen.items():
        assert len(types) >= min(3, len(FAC[code]["message_types"])), code


def test_versions_cover_all_and_order_types_respect_version_limits(sample):
    _out, manifest, msgs, _f = sample
    versions = {m.version for m in msgs}
    assert versions == {"2.3", "2.3.1", "2.4", "2.5", "2.5.1"}
    assert set(manifest["by_version"]) == versions
    for m in msgs:
        if m.message_type == "ORM^O01":
            assert m.version in ("2.3", "2.3.1", "2.4")
        if m.message_type == "OML^O21":
            assert m.version in ("2.5", "2.5.1")
    # a facility may use one version for ADT and another for its lab feed
    chu = {(m.message_type[:3], m.version) for m in msgs if m.facility == "CHU-SO"}
    assert ("ADT", "2.5") in chu and ("ORU", "2.4") in chu


def test_coded_fields_ce_before_25_cwe_after(sample):
    _out, _m, msgs, _f = sample
    checked = Counter()
    for m in msgs:
        if m.message_type != "ORU^R01" or m.broken:
            continue
        for obx in seg_fields(segments(m.raw, m.charset), "OBX"):
            assert len(obx[3].split("^")) <= 6, obx[3]      # OBX-3 is CE up to 2.5.1
            ncomp = len(obx[5].split("^"))
            if m.version < "2.5":
                assert obx[2] in ("NM", "CE", "TX"), obx[:4]
                assert ncomp <= 6, obx[5]
            else:
                assert obx[2] in ("NM", "CWE", "TX"), obx[:4]
                checked["cwe9"] += obx[2] == "CWE" and ncomp == 9
            checked[m.version] += 1
    assert checked["cwe9"] > 0 and checked["2.3"] > 0 and checked["2.5.1"] > 0


def test_latin1_facilities_write_latin1_with_msh18(sample):
    _out, _m, msgs, files = sample
    n = 0
    for rel, data in hl7_files(files).items():
        code = rel.split("/")[1]
        if code not in LATIN1_FACS:
            data.decode("utf-8")                 # UTF-8 facilities: strictly valid UTF-8
            continue
        n += 1
        text = data.decode("iso-8859-1")
        assert "Ã" not in text and "\ufffd" not in text      # no UTF-8 mojibake
        assert not EWE_LETTERS & set(text)
        assert all(ord(c) < 256 for c in text)
        for seg in SEG_SPLIT.split(text):
            if seg.startswith("MSH|"):
                assert seg.split("|")[17] == "8859/1", seg[:60]
    assert n > 5
    latin = b"".join(m.raw for m in msgs if m.facility in LATIN1_FACS)
    assert b"\xe9" in latin                      # é as one Latin-1 byte
    with pytest.raises(UnicodeDecodeError):
        latin.decode("utf-8")
    for m in msgs:
        assert m.charset == ("iso-8859-1" if m.facility in LATIN1_FACS else "utf-8")


def test_utf8_facilities_carry_ewe_and_kabiye_letters(sample):
    _out, _m, msgs, files = sample
    text = "".join(d.decode("utf-8") for k, d in hl7_files(files).items()
                   if k.split("/")[1] in UTF8_FACS)
    assert len(EWE_LETTERS & set(text)) >= 4
    decl = {f[17] if len(f) > 17 else "" for m in msgs if m.facility in UTF8_FACS
            for f in [msh_fields(m.raw, m.charset)] if f}
    assert decl == {"UNICODE UTF-8", ""}         # some declare UTF-8, some leave it empty


def test_terminators_vary_per_file_and_are_consistent_within_a_file(sample):
    _out, _m, _msgs, files = sample
    kinds = Counter()
    for rel, data in hl7_files(files).items():
        if b"\r\n" in data:
            kind = "crlf"
            assert b"\r" not in data.replace(b"\r\n", b"") and b"\n" not in data.replace(
                b"\r\n", b"")
        elif b"\n" in data:
            kind = "lf"
            assert b"\r" not in data
        else:
            kind = "cr"
        assert data.endswith(b"\r" if kind == "cr" else b"\n"), rel
        kinds[kind] += 1
    assert kinds["lf"] > 0 and kinds["crlf"] > 0
    assert kinds["cr"] > kinds["lf"] + kinds["crlf"]


def test_batch_files_are_well_formed_and_clean(sample):
    _out, manifest, _msgs, files = sample
    batches = 0
    for rel, data in hl7_files(files).items():
        segs = segments(data, file_codec(rel))
        if not segs[0].startswith("FHS|"):
            assert not any(s[:3] in ("FHS", "BHS", "BTS", "FTS") for s in segs), rel
            continue
        batches += 1
        code = rel.split("/")[1]
        assert FAC[code]["type"] in ("chu", "chr", "district_hospital", "reference_lab")
        assert segs[0].startswith("FHS|^~\\&|") and segs[1].startswith("BHS|^~\\&|")
        assert segs[-2].startswith("BTS|") and segs[-1] == "FTS|1"
        mshs = [s.split("|") for s in segs if s.startswith("MSH|")]
        assert int(segs[-2].split("|")[1]) == len(mshs) > 0
        # no broken message inside a batch: every message complete and well identified
        assert segs[2].startswith("MSH|")
        for f in mshs:
            assert f[8] and f[9]
        assert not any("20230230" in s or "20231301" in s for s in segs)
        for s in segs:
            if s.startswith("PID|"):
                assert len(s.split("|")) >= 17, s[:40]
    assert batches == manifest["batch_files"] > 0


def test_manifest_counts_add_up(sample):
    _out, manifest, msgs, files = sample
    n = manifest["messages"]
    assert n == len(msgs) == 3 * 400
    assert sum(manifest["by_facility"].values()) == n
    assert sum(manifest["by_type"].values()) == n
    assert sum(manifest["by_version"].values()) == n
    assert manifest["files"] == len(hl7_files(files))
    assert manifest["seed"] == 7 and manifest["days"] == 3 and manifest["start"] == "2026-11-02"
    msh = sum(1 for rel, d in hl7_files(files).items()
              for s in segments(d, file_codec(rel)) if s.startswith("MSH|"))
    assert msh + manifest["broken"].get("NO_MSH", 0) == n
    assert manifest["broken"] == dict(Counter(m.broken for m in msgs if m.broken))
    assert manifest["by_type"] == dict(Counter(m.message_type for m in msgs))
    # volumes follow facility size
    bf = manifest["by_facility"]
    assert bf["CHU-SO"] > bf["CHR-SOKODE"] > bf["HD-TSEVIE"] > bf["INH-LOME"] \
        > bf["PHARM-ATAKPAME"] > bf["USP-NANERGOU"] > 0


def test_raw_bytes_are_exactly_what_the_files_hold(sample):
    _out, _m, msgs, files = sample
    per_fac = defaultdict(list)
    for rel in sorted(hl7_files(files)):            # names sort chronologically per facility
        data = files[rel]
        if data.startswith(b"FHS|"):
            term = b"\r\n" if b"\r\n" in data else b"\n" if b"\n" in data else b"\r"
            parts = data.split(term)
            assert parts[-1] == b""
            data = term.join(parts[2:-3]) + term     # drop FHS, BHS and BTS, FTS
        per_fac[rel.split("/")[1]].append(data)
    raws = defaultdict(list)
    for m in msgs:
        raws[m.facility].append(m.raw)
    assert set(per_fac) == set(raws)
    for code in raws:
        assert b"".join(per_fac[code]) == b"".join(raws[code]), code


def test_broken_share_and_reasons(tmp_path):
    msgs = list(iter_messages(None, 2, 3, broken_share=0.1, per_day=1000))
    assert len(msgs) == 2000
    broken = [m for m in msgs if m.broken]
    assert 0.05 <= len(broken) / len(msgs) <= 0.15
    assert {m.broken for m in broken} == set(gen.BROKEN_REASONS)
    for m in broken:
        segs = segments(m.raw, m.charset)
        if m.broken == "NO_MSH":
            assert not segs[0].startswith("MSH") and segs[0][:3] in ("EVN", "PID", "SCH")
            continue
        f = segs[0].split("|")
        assert f[0] == "MSH"
        if m.broken == "EMPTY_MSH9":
            assert f[8] == "" and f[9]
        elif m.broken == "EMPTY_MSH10":
            assert f[9] == "" and f[8]
        elif m.broken == "INVALID_DATE":
            pid7 = [field(p, 7) for p in seg_fields(segs, "PID")]
            obx14 = [field(o, 14) for o in seg_fields(segs, "OBX")]
            assert "20230230" in pid7 or "20231301" in obx14
        elif m.broken == "TRUNCATED":
            assert len(segs) <= 3 and segs[-1].startswith("PID")
            assert len(segs[-1].split("|")) < 17
    clean = [m for m in msgs if not m.broken]
    assert all(m.raw.startswith(b"MSH|") for m in clean)
    assert not any(m.broken for m in iter_messages(None, 1, 3, broken_share=0.0))


def test_oru_has_2_to_20_obx(sample):
    _out, _m, msgs, _f = sample
    counts = [len(seg_fields(segments(m.raw, m.charset), "OBX"))
              for m in msgs if m.message_type == "ORU^R01" and not m.broken]
    assert len(counts) > 100
    assert min(counts) >= 2 and max(counts) <= 20
    assert max(counts) >= 8                     # panels, not only single tests
    text = "".join(m.raw.decode(m.charset) for m in msgs if m.message_type == "ORU^R01")
    for loinc in ("70569-9", "32700-7", "718-7", "6690-2", "777-3", "68961-2", "5196-1"):
        assert loinc in text, loinc
    assert "\\T\\" in text or "\\.br\\" in text or "\\S\\" in text


def test_dft_insurance_member_ids(sample):
    _out, _m, msgs, _f = sample
    with_in1 = 0
    amounts = set()
    for m in msgs:
        if m.message_type != "DFT^P03" or m.broken:
            continue
        segs = segments(m.raw, m.charset)
        ft1 = seg_fields(segs, "FT1")
        assert ft1
        for f in ft1:
            assert re.fullmatch(r"\d+&XOF", f[11]), f[11]
            amounts.add(f[7].split("^")[0])
        for f in seg_fields(segs, "IN1"):
            with_in1 += 1
            insurer, member = f[3], f[36]
            assert insurer in ("INAM", "CNSS")
            assert re.fullmatch(r"\d{9}" if insurer == "INAM" else r"\d{10}", member), member
            assert f"{member}^^^{insurer}^MB" in seg_fields(segs, "PID")[0][3]
    assert with_in1 > 5
    assert {"CONS-GEN", "HOSP-JOUR"} <= amounts


def test_visit_lifecycle_is_consistent(sample):
    _out, _m, msgs, _f = sample
    admitted = {}
    matched = lab_matched = 0
    for m in msgs:
        if m.broken:
            continue
        segs = segments(m.raw, m.charset)
        pv1 = seg_fields(segs, "PV1")
        pid = seg_fields(segs, "PID")
        if not pv1 or len(pv1[0]) < 20:
            continue
        key = (m.facility, pv1[0][19])
        pid3 = pid[0][3].split("~")[0]
        if m.message_type in ("ADT^A01", "ADT^A04"):
            assert key not in admitted                  # visit numbers are unique
            admitted[key] = pid3
            assert pv1[0][2] == ("I" if m.message_type == "ADT^A01" else pv1[0][2])
        elif m.message_type == "ADT^A03":
            f = pv1[0]
            assert f[36] in ("01", "02", "07", "20") and f[44] < f[45]
            assert f[45] == msh_fields(m.raw, m.charset)[6][:14]
            if key in admitted:
                matched += 1
                assert admitted[key] == pid3
        elif m.message_type in ("ORU^R01", "DFT^P03", "ORM^O01", "OML^O21") and key in admitted:
            lab_matched += 1
            assert admitted[key] == pid3
    assert matched > 5 and lab_matched > 20


def test_events_within_working_hours_and_control_ids_unique(sample):
    _out, _m, msgs, _f = sample
    ids = defaultdict(set)
    for m in msgs:
        h0, h1 = FAC[m.facility]["working_hours"]
        assert h0 <= m.at.hour < h1, (m.facility, m.at)
        f = msh_fields(m.raw, m.charset)
        if f and f[9]:
            assert re.fullmatch(rf"{re.escape(m.facility)}-\d{{8}}-\d{{6}}", f[9])
            assert f[9] not in ids[m.facility]
            ids[m.facility].add(f[9])
            assert f[6][:8] == m.at.strftime("%Y%m%d") == f[9].split("-")[-2]


def test_patient_fields_look_togolese(sample):
    _out, _m, msgs, _f = sample
    seen = Counter()
    for m in msgs:
        if m.broken:
            continue
        for pid in seg_fields(segments(m.raw, m.charset), "PID"):
            assert re.fullmatch(rf"\d+\^\^\^{re.escape(m.facility)}\^MR"
                                r"(~\d+\^\^\^(INAM|CNSS)\^MB)?", pid[3]), pid[3]
            assert pid[5].count("^") >= 1
            assert re.fullmatch(r"\d{4}(\d{2}(\d{2})?)?", pid[7]), pid[7]
            seen[len(pid[7])] += 1
            assert pid[8] in ("M", "F", "U")
            assert pid[11].endswith("^^TG")
            assert pid[13] == "" or re.match(r"\+228[79]\d{7}", pid[13])
    assert seen[8] > seen[4] > 0 and seen[6] > 0
    text = "".join(m.raw.decode(m.charset) for m in msgs)
    assert "\nZTG|" in text or "\rZTG|" in text


def test_generate_mix_is_clean_and_deterministic():
    a = generate_mix(600, seed=5)
    assert len(a) == 600 and a == generate_mix(600, seed=5) and a != generate_mix(600, seed=6)
    for raw in a:
        assert raw.startswith(b"MSH|")
        f = raw.split(b"|", 12)
        assert f[8] and f[9]
        assert b"20230230" not in raw and b"20231301" not in raw
    assert generate_mix(0) == []


def test_config_handling(tmp_path):
    fac = dict(FAC["USP-NANERGOU"], code="USP-X", message_types=["ADT^A04", "QBP^Q11"],
               sources=[{"type": "folder", "path": "../escape"}])
    with pytest.raises(ValueError, match="USP-X"):
        list(iter_messages([fac], 1, 1))
    fac["sources"] = [{"type": "folder", "path": "in/x"}]
    msgs = list(iter_messages([fac], 1, 1, per_day=30))
    assert len(msgs) == 30 and {m.message_type for m in msgs} == {"ADT^A04"}
    m = generate(tmp_path, [fac], 1, 1, per_day=30)
    assert m["by_facility"] == {"USP-X": 30} and (tmp_path / "in" / "x").is_dir()
    with pytest.raises(ValueError):
        list(iter_messages([fac, dict(fac)], 1, 1))
    with pytest.raises(ValueError):
        list(iter_messages(None, 1, 1, broken_share=1.5))


def test_repr_does_not_expose_message_content():
    m = next(iter_messages(None, 1, 1))
    assert "raw" not in repr(m) and "PID" not in repr(m)
