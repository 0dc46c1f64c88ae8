"""Insurer claims (issue 8): DFT charges with IN1 coverage for INAM, CNSS and a private insurer,
one uninsured patient, an expired coverage, an open inpatient visit, a credit and a payment, with
known totals per insurer, facility and period; the manifest reconciled against the warehouse;
byte-identical re-runs; a correction (late charge on a sent claim -> version 2 with that claim
only); formula injection neutralised; only the configured columns, never patient identity;
status output; configuration errors; the Airflow DAG end to end for one insurer.
"""
from __future__ import annotations

import csv
import hashlib
import io
import itertools
import json
import sys
import types
from datetime import date, datetime, timezone
from decimal import Decimal
from pathlib import Path

import pytest

from transforms.claims import (CorrectionNeeded, NothingToCorrect, PeriodError, build_claims, claim_counts,
                               claim_id_for, cli_extract, cli_status, deliver_extract, extract, load_insurers,
                               neutralize, parse_insurers, parse_period, previous_period, status)
from transforms.config import ConfigError, Settings
from transforms.ingest import Ingestor

from test_ingest import rows, scalar, write

ROOT = Path(__file__).resolve().parent.parent
SETTINGS = Settings.load()
CFG = load_insurers(SETTINGS.config_dir / "insurers.yaml", [f.code for f in SETTINGS.facilities()])
_n = itertools.count(1)
NAMES = ("Ɖogbé", "Kossiwa", "Agbéko")  # every patient below carries these names
PIDS = [f"P{c}-00{i}" for i, c in enumerate("ABCDEFGHKL", 1)]


# -- messages ------------------------------------------------------------------------------------

def hl7(when: datetime, *segments: str, facility="CHU-SO", mtype="DFT^P03") -> str:
    return (f"MSH|^~\\&|FACT|{facility}|HL7ICS|MOH|{when:%Y%m%d%H%M%S}||{mtype}|C{next(_n)}|P|2.5\n"
            + "\n".join(segments) + "\n")


def pid(pid_: str, facility: str) -> str:
    return f"PID|1||{pid_}^^^{facility}^MR||{NAMES[0]}^{NAMES[1]}^{NAMES[2]}||19800101|F"


def pv1(visit: str, cls="O", admit: datetime | None = None, discharge: datetime | None = None) -> str:
    f = ["PV1", "1", cls] + [""] * 43
    f[19] = visit
    f[44] = f"{admit:%Y%m%d%H%M}" if admit else ""
    f[45] = f"{discharge:%Y%m%d%H%M}" if discharge else ""
    return "|".join(f).rstrip("|")


def ft1(i: int, when: datetime, code: str, label: str, qty: int, unit: int, ttype="CG", txid="", dx="") -> str:
    t = f"{when:%Y%m%d%H%M}"
    return (f"FT1|{i}|{txid}||{t}|{t}|{ttype}|{code}^{label}^L|||{qty}|{unit * qty}&XOF|{unit}&XOF|CONS"
            f"||||||{dx}")


def in1(insurer: str, plan: str, member: str, valid_from="", valid_to="") -> str:
    f = [""] * 50
    f[0], f[1], f[2], f[3], f[4] = "IN1", "1", f"{plan}^Régime^L", insurer, f"{insurer} assurance"
    f[12], f[13], f[36], f[49] = valid_from, valid_to, member, f"{member}^^^{insurer}^MB"
    return "|".join(f)


def dft(when, pid_, visit, lines, coverage=(), facility="CHU-SO", cls="O") -> str:
    return hl7(when, f"EVN|P03|{when:%Y%m%d%H%M}", pid(pid_, facility), pv1(visit, cls),
               *[ft1(i, *ln) for i, ln in enumerate(lines, 1)], *coverage, facility=facility)


def adt(event: str, when, pid_, visit, admit, discharge=None, facility="CHU-SO", dx="A01.0") -> str:
    return hl7(when, f"EVN|{event}|{when:%Y%m%d%H%M}", pid(pid_, facility), pv1(visit, "I", admit, discharge),
               f"DG1|1||{dx}^diag^I10||", facility=facility, mtype=f"ADT^{event}")


def d(day: int, hour: int = 10, month: int = 11) -> datetime:
    return datetime(2026, month, day, hour)


INAM_A = in1("INAM", "INAM-AMO", "123456789")


def traffic() -> dict[str, list[str]]:
    """Known content. INAM, week 2026-W45 (2-8 Nov): CHU-SO A 7000, B 45000, H 4000; pharmacy F 5000."""
    chu, kara, pha = [], [], []
    # A: INAM outpatient, two charges (one label is a formula) and a payment at the desk (never claimed).
    chu.append(dft(d(3), PIDS[0], "VA1", [(d(3), "CONS-GEN", "Consultation", 1, 5000, "CG", "", "B54"),
                                        (d(3), "LAB-GE", "=1+2 Goutte épaisse", 1, 2000),
                                        (d(3), "PAY", "Paiement ticket", 1, 1400, "PY")], [INAM_A]))
    # B: INAM inpatient, admitted 2 Nov, discharged 5 Nov; a lab charge later credited (CD).
    chu.append(adt("A01", d(2, 8), PIDS[1], "VB1", d(2, 8)))
    chu.append(dft(d(3), PIDS[1], "VB1", [(d(3), "LAB-NFS", "NFS", 1, 3000, "CG", "T-B1")],
                   [in1("INAM", "INAM-AMO", "234567891")], cls="I"))
    chu.append(dft(d(5, 16), PIDS[1], "VB1", [(d(5, 16), "HOSP-JOUR", "Journée d'hospitalisation", 3, 15000),
                                             (d(5, 16), "LAB-NFS", "Annulation NFS", 1, 3000, "CD", "T-B1")],
                   [in1("INAM", "INAM-AMO", "234567891")], cls="I"))
    chu.append(adt("A03", d(5, 17), PIDS[1], "VB1", d(2, 8), d(5, 17)))
    # C: CNSS outpatient at CHU-KARA, 10 Nov (CNSS, month 2026-11).
    kara.append(dft(d(10), PIDS[2], "VC1", [(d(10), "CONS-SPE", "Consultation spécialisée", 1, 10000)],
                    [in1("CNSS", "CNSS-AT", "1234567890")], facility="CHU-KARA"))
    # D: CNSS inpatient admitted 20 Nov, never discharged: the claim stays open.
    chu.append(adt("A01", d(20, 8), PIDS[3], "VD1", d(20, 8)))
    chu.append(dft(d(21), PIDS[3], "VD1", [(d(21), "HOSP-JOUR", "Journée", 1, 15000)],
                   [in1("CNSS", "CNSS-AT", "2345678901")], cls="I"))
    # E: uninsured, two charges: not claimed.
    chu.append(dft(d(4), PIDS[4], "VE1", [(d(4), "CONS-GEN", "Consultation", 1, 5000),
                                        (d(4), "LAB-TDR", "TDR paludisme", 1, 1500)]))
    # F: INAM at the pharmacy, 6 Nov.
    pha.append(dft(d(6), PIDS[5], "VF1", [(d(6), "PHA-ALU", "@SUM(A1) Artéméther-luméfantrine", 2, 2500)],
                   [in1("INAM", "INAM-AMO", "456789123")], facility="PHARM-ATAKPAME"))
    # G: INAM coverage that expired on 31 Oct: not claimed.
    chu.append(dft(d(4), PIDS[6], "VG1", [(d(4), "CONS-GEN", "Consultation", 1, 5000)],
                   [in1("INAM", "INAM-AMO", "567891234", "20250101", "20261031")]))
    # H: INAM and the private GTA-C2A both valid: claimed once, from INAM (first in insurers.yaml).
    chu.append(dft(d(5), PIDS[7], "VH1", [(d(5), "CONS-SPE", "+Consultation spécialisée", 1, 4000)],
                   [in1("INAM", "INAM-AMO", "345678912"), in1("GTA-C2A", "GTA-SANTE", "GTA-77")]))
    # K: INAM at CHU-KARA on 12 Nov (week 2026-W46).
    kara.append(dft(d(12), PIDS[8], "VK1", [(d(12), "CONS-GEN", "Consultation", 1, 6000)],
                    [in1("INAM", "INAM-AMO", "678912345")], facility="CHU-KARA"))
    # L: CNSS member at the pharmacy, which CNSS does not contract: not claimed.
    pha.append(dft(d(6), PIDS[9], "VL1", [(d(6), "PHA-PARA", "Paracétamol", 1, 500)],
                   [in1("CNSS", "CNSS-AT", "3456789012")], facility="PHARM-ATAKPAME"))
    return {"CHU-SO": chu, "CHU-KARA": kara, "PHARM-ATAKPAME": pha}


# -- fixtures --------------------------------------------------------------------------------------

@pytest.fixture
def ingestor(warehouse_url, hl7ics_home):
    ing = Ingestor(Settings.load(warehouse_url=warehouse_url), run_id="run-claims")
    ing.sync_facilities()
    return ing


def load(ing, tmp_path, messages: list[str], facility: str):
    f = write(tmp_path / f"{facility}-{next(_n)}.hl7", "".join(messages))
    r = ing.ingest_file(f, facility)
    assert r.counts.quarantined == 0, rows(ing.engine, "SELECT reason, detail FROM quarantine")
    return r


@pytest.fixture
def loaded(ingestor, tmp_path):
    for fac, msgs in traffic().items():
        load(ingestor, tmp_path, msgs, fac)
    return ingestor.engine


def money(v) -> Decimal:
    return Decimal(str(v)).quantize(Decimal("0.01"))


def parquet_rows(path: Path) -> list[dict]:
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist()


def csv_rows(path: Path) -> list[dict]:
    raw = path.read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf")  # UTF-8 with BOM
    return list(csv.DictReader(io.StringIO(raw[3:].decode("utf-8"), newline=""), delimiter=";"))


def file_hashes(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


# -- unit-level ------------------------------------------------------------------------------------

def test_periods():
    assert parse_period("weekly", "2026W45") == parse_period("weekly", "2026-W45")
    p = parse_period("weekly", "2026-W45")
    assert (p.label, p.start, p.last_day) == ("2026-W45", date(2026, 11, 2), date(2026, 11, 8))
    m = parse_period("monthly", "2026-12")
    assert (m.label, m.start, m.end) == ("2026-12", date(2026, 12, 1), date(2027, 1, 1))
    for kind, bad in (("weekly", "2026-11"), ("monthly", "2026-W45"), ("weekly", "2026-W60"), ("monthly", "2026-13"),
                      ("weekly", None)):
        with pytest.raises(PeriodError):
            parse_period(kind, bad)
    assert previous_period("weekly", datetime(2026, 11, 9, 6)).label == "2026-W45"    # Monday run
    assert previous_period("monthly", datetime(2026, 12, 1, 6)).label == "2026-11"    # 1st of the month
    assert previous_period("monthly", datetime(2027, 1, 1, 6)).label == "2026-12"
    assert previous_period("weekly", date(2027, 1, 4)).label == "2026-W53"


def test_neutralize_formula_cells():
    for c in "=+-@\t\r\n":
        assert neutralize(c + "x") == "'" + c + "x"
    assert neutralize("Consultation") == "Consultation" and neutralize("") == ""


def test_insurers_config_is_valid_and_documented():
    assert CFG.codes[:2] == ["INAM", "CNSS"] and len(CFG.codes) >= 3
    inam, cnss = CFG.get("INAM"), CFG.get("CNSS")
    assert (inam.period, inam.schedule, cnss.period, cnss.schedule) == ("weekly", "0 6 * * 1", "monthly", "0 6 1 * *")
    assert inam.plan_on("INAM-AMO", "2026-11-02").copay == 0.2 and cnss.plan_on("CNSS-AT", "2026-11-02").copay == 0.0
    assert {i.dag_id for i in CFG.insurers} == {"insurer_claims_extract_inam", "insurer_claims_extract_cnss",
                                                "insurer_claims_extract_gta_c2a"}
    src = (SETTINGS.config_dir / "insurers.yaml").read_text(encoding="utf-8")
    assert "ticket modérateur" in src and "minimum necessary" in src


GOOD = {"code": "INAM", "name": "x", "schedule": "0 6 * * 1", "period": "weekly", "ready_after_days": 3,
        "formats": ["csv"], "columns": ["numero_demande", "montant_reclame"],
        "delivery": {"type": "outbox", "path": "out"}, "facilities": ["CHU-SO"],
        "plans": [{"code": "INAM-AMO", "copay": 0.2}]}


@pytest.mark.parametrize("change, message", [
    ({"columns": ["numero_demande", "montant_reclame", "patient_key"]}, "unknown column(s) patient_key"),
    ({"columns": ["montant_reclame"]}, "must include numero_demande"),
    ({"period": "daily"}, "period must be one of weekly, monthly"),
    ({"schedule": "every monday"}, "5-field cron"),
    ({"plans": [{"code": "INAM-AMO", "copay": 1.5}]}, "copay (ticket modérateur) must be a number from 0 to 1"),
    ({"delivery": {"type": "sftp", "conn_id": "x", "path": "/c", "password": "s3cret"}}, "password must not be here"),
    ({"delivery": {"type": "sftp", "path": "/c"}}, "sftp needs conn_id"),
    ({"facilities": ["CHU-XX"]}, "facilities CHU-XX are not in facilities.yaml"),
    ({"formats": ["xlsx"]}, "formats must be a non-empty list of parquet, csv"),
    ({"ready_after_days": -1}, "ready_after_days must be an integer"),
    ({"code": "inam"}, "code must be 2-40 upper-case"),
    ({"plans": [{"code": "INAM-AMO", "copay": 0.2, "until": "2026-12-31"},
                {"code": "INAM-AMO", "copay": 0.3, "from": "2026-12-31"}]}, "plan INAM-AMO is listed twice with dates"),
    ({"plans": [{"code": "INAM-AMO", "copay": 0.2}, {"code": "INAM-AMO", "copay": 0.3}]}, "dates that overlap"),
    ({"plans": [{"code": "INAM-AMO", "copay": 0.2, "from": "1 janvier 2027"}]}, "'from' must be a date"),
    ({"facilities": [{"code": "CHU-SO", "from": "2026-12-01", "until": "2026-11-30"}]}, "'until' is before 'from'"),
    ({"facilities": ["CHU-SO", {"code": "CHU-SO", "until": "2026-11-30"}]}, "a facility is listed twice"),
])
def test_insurers_config_errors_name_the_insurer_and_key(change, message):
    with pytest.raises(ConfigError) as err:
        parse_insurers({"insurers": [{**GOOD, **change}]}, "insurers.yaml", ["CHU-SO"])
    assert message in str(err.value) and "insurers.yaml" in str(err.value)
    assert "s3cret" not in str(err.value)


# -- build, extract, re-run, deliver, correct --------------------------------------------------------

INAM_W45 = {"CHU-SO": {"claims": 3, "lines": 6, "montant": "56000.00", "ticket_moderateur": "11200.00",
                       "montant_reclame": "44800.00"},
            "PHARM-ATAKPAME": {"claims": 1, "lines": 1, "montant": "5000.00", "ticket_moderateur": "1000.00",
                               "montant_reclame": "4000.00"}}


def test_build_claims_statuses_exclusions_and_idempotence(loaded):
    eng = loaded
    r = build_claims(eng, CFG, d(10, 6))
    sk = r["skipped"]
    assert (sk["payments"], sk["uninsured"], sk["coverage_not_valid"], sk["facility_not_contracted"]) == (1, 2, 1, 1)
    assert sk["unknown_plan"] == sk["no_visit"] == sk["foreign_currency"] == 0
    claims = {(c[0], c[1], c[2]): c[3:] for c in rows(eng, "SELECT insurer_code, facility_code, visit_number, status, "
                                                           "lines, total_amount, copay_amount, claimed_amount "
                                                           "FROM claim")}
    assert set(claims) == {("INAM", "CHU-SO", "VA1"), ("INAM", "CHU-SO", "VB1"), ("INAM", "CHU-SO", "VH1"),
                           ("INAM", "PHARM-ATAKPAME", "VF1"), ("INAM", "CHU-KARA", "VK1"),
                           ("CNSS", "CHU-KARA", "VC1"), ("CNSS", "CHU-SO", "VD1")}
    st = {k: v[0] for k, v in claims.items()}
    assert st[("INAM", "CHU-SO", "VB1")] == "ready"      # discharged 5 Nov, settled 3 days later
    assert st[("INAM", "CHU-KARA", "VK1")] == "open"     # charge dated 12 Nov: not settled on 10 Nov
    assert st[("CNSS", "CHU-SO", "VD1")] == "open"       # inpatient still in the ward
    b = claims[("INAM", "CHU-SO", "VB1")]
    assert b[1] == 3 and [money(x) for x in b[2:]] == [money(45000), money(9000), money(36000)]  # credit nets out
    credit = rows(eng, "SELECT quantity, amount FROM claim_line l JOIN claim c ON c.claim_id = l.claim_id "
                       "WHERE c.visit_number = 'VB1' AND l.charge_code = 'LAB-NFS' ORDER BY l.amount")
    assert [(q, money(a)) for q, a in credit] == [(-1.0, money(-3000)), (1.0, money(3000))]
    assert r["insurers"]["INAM"]["ready"] == 4 and r["insurers"]["CNSS"]["open"] == 2
    assert claim_id_for("INAM", "CHU-SO", "VB1") in {c[0] for c in rows(eng, "SELECT claim_id FROM claim")}
    # Idempotent: a second build changes nothing, not even updated_at.
    before = rows(eng, "SELECT * FROM claim ORDER BY claim_id") + rows(eng, "SELECT * FROM claim_line "
                                                                          "ORDER BY claim_id, line_no")
    again = build_claims(eng, CFG, d(10, 6))
    assert all(s["written"] == 0 and s["deleted"] == 0 for s in again["insurers"].values())
    assert rows(eng, "SELECT * FROM claim ORDER BY claim_id") + rows(
        eng, "SELECT * FROM claim_line ORDER BY claim_id, line_no") == before
    # Building one insurer leaves the others alone and gives the same claims.
    only = build_claims(eng, CFG, d(10, 6), insurers=["CNSS"])
    assert set(only["insurers"]) == {"CNSS"} and only["insurers"]["CNSS"]["claims"] == 2


def test_extract_reconciles_reruns_identically_and_corrects(ingestor, loaded, tmp_path):
    eng = loaded
    out = tmp_path / "claims"
    build_claims(eng, CFG, d(10, 6))
    with pytest.raises(PeriodError):  # week 46 is not over on 10 Nov
        extract(eng, CFG, "INAM", "2026-W46", out, d(10, 6))
    res = extract(eng, CFG, "INAM", "2026-W45", out, d(10, 6))
    m = json.loads(res.manifest_path.read_text(encoding="utf-8"))
    assert res.version == 1 and not res.rerun and res.out_dir == out / "INAM" / "2026-W45" / "v1"
    assert (m["insurer"], m["period"], m["version"], m["reason"], m["schema_version"]) == ("INAM", "2026-W45", 1,
                                                                                          None, 1)
    assert m["generated_at"] == "2026-11-10T06:00:00Z"
    assert m["by_facility"] == INAM_W45
    assert (m["claims"], m["lines"], m["totals"]) == (4, 7, {"montant": "61000.00", "ticket_moderateur": "12200.00",
                                                             "montant_reclame": "48800.00"})

    # Reconciliation: the manifest against the warehouse, per facility, by SQL.
    ext_id = res.extract_id
    sql = {f: (n, money(t), money(c), money(cl)) for f, n, t, c, cl in rows(eng,
           "SELECT c.facility_code, COUNT(*), SUM(c.total_amount), SUM(c.copay_amount), SUM(c.claimed_amount) "
           "FROM claim c JOIN claim_extract_item i ON i.claim_id = c.claim_id WHERE i.extract_id = :e "
           "GROUP BY c.facility_code", e=ext_id)}
    assert sql == {f: (v["claims"], money(v["montant"]), money(v["ticket_moderateur"]), money(v["montant_reclame"]))
                   for f, v in m["by_facility"].items()}
    # ... and the claimed lines against the charges they came from (credits negative).
    facts = rows(eng, "SELECT SUM(CASE WHEN f.transaction_type = 'CD' THEN -f.amount ELSE f.amount END), COUNT(*) "
                      "FROM claim_line l JOIN fact_charge f ON f.message_id = l.message_id AND f.ft1_seq = l.ft1_seq "
                      "JOIN claim_extract_item i ON i.claim_id = l.claim_id WHERE i.extract_id = :e", e=ext_id)[0]
    assert (money(facts[0]), facts[1]) == (money(m["totals"]["montant"]), m["lines"])
    assert money(scalar(eng, "SELECT total_claimed FROM claim_extract WHERE id = :e", e=ext_id)) == \
        money(m["totals"]["montant_reclame"])

    # The files: the manifest's checksums and row counts, and the same totals in every format.
    names = {f["name"]: f for f in m["files"]}
    for p in res.files:
        if p.name in names:
            assert hashlib.sha256(p.read_bytes()).hexdigest() == names[p.name]["sha256"]
    pq_path = next(p for p in res.files if p.suffix == ".parquet")
    csv_path = next(p for p in res.files if p.suffix == ".csv")
    prows, crows = parquet_rows(pq_path), csv_rows(csv_path)
    assert len(prows) == len(crows) == names[pq_path.name]["rows"] == 7
    assert sum(r["montant_reclame"] for r in prows) == money(m["totals"]["montant_reclame"])
    assert sum(Decimal(r["montant_reclame"].replace(",", ".")) for r in crows) == money(m["totals"]["montant_reclame"])
    assert [(r["formation"], r["numero_visite"], r["ligne"]) for r in prows] == sorted(
        (r["formation"], r["numero_visite"], r["ligne"]) for r in prows)

    # Minimum necessary: exactly the configured columns; no name, patient ID or pseudonym anywhere.
    import pyarrow.parquet as pq

    assert pq.read_schema(pq_path).names == list(CFG.get("INAM").columns) == list(crows[0])
    keys = [k for (k,) in rows(eng, "SELECT DISTINCT patient_key FROM claim")]
    secrets = [*NAMES, *PIDS, *keys]
    for p in res.files:
        blob = p.read_bytes().decode("utf-8", "replace")
        assert not [s for s in secrets if s in blob], p.name
    cells = {str(v) for r in prows for v in r.values()}
    assert not cells & set(secrets)
    audit = rows(eng, "SELECT outcome, peer, detail FROM audit_event WHERE event_type = 'export'")
    assert len(audit) == 1 and audit[0][:2] == ("success", "INAM") and "4 claims" in audit[0][2]
    assert not [s for s in secrets if s in audit[0][2]]

    # Formula injection: neutralised in the CSV, kept raw in Parquet; negative amounts stay numbers.
    labels = {r["libelle_acte"] for r in crows}
    assert {"'=1+2 Goutte épaisse", "'+Consultation spécialisée", "'@SUM(A1) Artéméther-luméfantrine"} <= labels
    assert "=1+2 Goutte épaisse" in {r["libelle_acte"] for r in prows}
    credit = next(r for r in crows if r["type_transaction"] == "CD")
    assert (credit["quantite"], credit["montant"], credit["ticket_moderateur"]) == ("-1", "-3000,00", "-600,00")
    summary = next(p for p in res.files if p.name.endswith("_resume.md")).read_text(encoding="utf-8")
    assert "INAM" in summary and "2026-W45" in summary and "48\u00a0800,00" in summary and "INAM-AMO" in summary

    # Re-run: the same bytes (in place and elsewhere), the same extract, no new version.
    first = file_hashes(res.out_dir)
    again = extract(eng, CFG, "INAM", "2026-W45", out, d(12, 9))
    assert again.rerun and again.extract_id == ext_id and again.version == 1
    assert file_hashes(res.out_dir) == first
    other = extract(eng, CFG, "INAM", "2026-W45", tmp_path / "elsewhere", d(13, 9))
    assert file_hashes(other.out_dir) == first
    assert scalar(eng, "SELECT COUNT(*) FROM claim_extract") == 1
    with pytest.raises(NothingToCorrect):
        extract(eng, CFG, "INAM", "2026-W45", out, d(13, 9), reason="pour voir")

    # A failed delivery is recorded and raised; nothing is marked sent.
    with pytest.raises(ConfigError):
        deliver_extract(eng, ext_id, {"type": "sftp", "conn_id": "hl7ics_sftp_nowhere", "path": "/claims"})
    assert rows(eng, "SELECT status FROM claim_delivery") == [("failed",)]
    assert scalar(eng, "SELECT COUNT(*) FROM claim WHERE sent_sha256 IS NOT NULL") == 0
    # Delivery (transforms.delivery) marks the claims sent; a second delivery is not made.
    outbox = tmp_path / "outbox"
    dl = deliver_extract(eng, ext_id, {"type": "outbox", "path": str(outbox)}, now=d(10, 7))
    assert dl["status"] == "delivered"
    assert sorted(p.name for p in outbox.iterdir()) == sorted(first)
    assert rows(eng, "SELECT DISTINCT status, sent_period FROM claim c JOIN claim_extract_item i "
                     "ON i.claim_id = c.claim_id WHERE i.extract_id = :e", e=ext_id) == [("sent", "2026-W45")]
    assert deliver_extract(eng, ext_id, {"type": "outbox", "path": str(outbox)})["status"] == "already_delivered"
    assert scalar(eng, "SELECT COUNT(*) FROM claim_delivery WHERE status = 'delivered'") == 1

    # A late charge on A's visit (dated 3 Nov, received later): the sent claim becomes 'corrected'.
    load(ingestor, tmp_path, [dft(d(14), PIDS[0], "VA1", [(d(3, 15), "LAB-NFS", "NFS", 1, 3000)], [INAM_A])],
         "CHU-SO")
    build_claims(eng, CFG, d(17, 6))
    a_id = claim_id_for("INAM", "CHU-SO", "VA1")
    assert scalar(eng, "SELECT status FROM claim WHERE claim_id = :c", c=a_id) == "corrected"
    assert scalar(eng, "SELECT COUNT(*) FROM claim WHERE status = 'corrected'") == 1
    # The next week's extract does not carry it (it belongs to W45) ...
    w46 = extract(eng, CFG, "INAM", "2026-W46", out, d(17, 6))
    assert w46.version == 1 and w46.manifest["by_facility"] == {
        "CHU-KARA": {"claims": 1, "lines": 1, "montant": "6000.00", "ticket_moderateur": "1200.00",
                     "montant_reclame": "4800.00"}}
    # ... W45 without a reason is refused and writes nothing ...
    with pytest.raises(CorrectionNeeded) as refused:
        extract(eng, CFG, "INAM", "2026-W45", out, d(17, 6))
    assert "1 of its claims changed" in str(refused.value)
    assert not (out / "INAM" / "2026-W45" / "v2").exists()
    # ... and with one, version 2 holds that claim only, in full, with the reason; v1 is untouched.
    v2 = extract(eng, CFG, "INAM", "2026-W45", out, d(17, 6), reason="Acte tardif : NFS du 3 novembre")
    m2 = v2.manifest
    assert (v2.version, v2.claims, m2["reason"], m2["previous_version"]) == (2, 1, "Acte tardif : NFS du 3 novembre", 1)
    assert m2["previous_manifest_sha256"] == hashlib.sha256(res.manifest_path.read_bytes()).hexdigest()
    assert m2["by_facility"] == {"CHU-SO": {"claims": 1, "lines": 3, "montant": "10000.00",
                                            "ticket_moderateur": "2000.00", "montant_reclame": "8000.00"}}
    assert {r["numero_demande"] for r in parquet_rows(next(p for p in v2.files if p.suffix == ".parquet"))} == {a_id}
    assert file_hashes(res.out_dir) == first
    assert rows(eng, "SELECT version, reason FROM claim_extract WHERE period = '2026-W45' ORDER BY version") == [
        (1, None), (2, "Acte tardif : NFS du 3 novembre")]
    # Status before delivering v2: the correction is issued (nothing pending), v2 not delivered yet.
    st = status(eng, "INAM")
    assert [(s["period"], s["version"], s["claims"], s["delivered"], s["corrections_pending"]) for s in st] == [
        ("2026-W45", 1, 4, 1, 0), ("2026-W45", 2, 1, 0, 0), ("2026-W46", 1, 1, 0, 0)]
    deliver_extract(eng, v2.extract_id, {"type": "outbox", "path": str(outbox / "v2")}, now=d(17, 7))
    assert scalar(eng, "SELECT status FROM claim WHERE claim_id = :c", c=a_id) == "sent"
    assert scalar(eng, "SELECT sent_sha256 = content_sha256 FROM claim WHERE claim_id = :c", c=a_id) in (1, True)
    # Delivering v1 again (forced) does not roll A back to its old content.
    deliver_extract(eng, ext_id, {"type": "outbox", "path": str(outbox / "again")}, force=True)
    assert scalar(eng, "SELECT status FROM claim WHERE claim_id = :c", c=a_id) == "sent"
    assert claim_counts(eng, "INAM") == {"open": 0, "ready": 1, "sent": 4, "corrected": 0, "ready_not_extracted": 0}


def test_monthly_insurer_and_status_cli(loaded, tmp_path, capsys):
    eng = loaded
    build_claims(eng, CFG, d(1, 6, month=12))
    res = extract(eng, CFG, "CNSS", "2026-11", tmp_path / "claims", d(1, 6, month=12))
    assert res.manifest["by_facility"] == {"CHU-KARA": {"claims": 1, "lines": 1, "montant": "10000.00",
                                                        "ticket_moderateur": "0.00", "montant_reclame": "10000.00"}}
    cols = list(csv_rows(next(p for p in res.files if p.suffix == ".csv"))[0])
    assert cols == list(CFG.get("CNSS").columns)
    # The private insurer got nothing: H's charge went to INAM.
    gta = extract(eng, CFG, "GTA-C2A", "2026-11", tmp_path / "claims", d(1, 6, month=12))
    assert gta.claims == 0 and [p.suffix for p in gta.files] == [".csv", ".md", ".json"]
    assert csv_rows(gta.files[0]) == [] and "Aucune demande" in gta.files[1].read_text(encoding="utf-8")
    ns = types.SimpleNamespace(insurer="CNSS", warehouse_url=str(eng.url.render_as_string(hide_password=False)),
                               config=None)
    assert cli_status(ns) == 0
    printed = capsys.readouterr().out
    assert "CNSS" in printed and "2026-11" in printed and "not delivered" in printed
    assert "open 1" in printed and "ready 1" in printed


def test_fully_credited_claim_is_not_issued_and_a_sent_one_is_cancelled(ingestor, tmp_path):
    eng = ingestor.engine
    cov = [in1("INAM", "INAM-AMO", "789123456")]
    load(ingestor, tmp_path, [dft(d(3), "PZ-1", "VZ1", [(d(3), "CONS-GEN", "Consultation", 1, 5000, "CG", "T1")], cov),
                              dft(d(3), "PY-1", "VY1", [(d(3), "CONS-GEN", "Consultation", 1, 5000, "CG", "T2"),
                                                        (d(3), "CONS-GEN", "Annulation", 1, 5000, "CD", "T3")], cov)],
         "CHU-SO")
    r = build_claims(eng, CFG, d(10, 6), insurers=["INAM"])
    assert r["not_issued_non_positive"] == 1 and r["insurers"]["INAM"]["claims"] == 1
    res = extract(eng, CFG, "INAM", "2026-W45", tmp_path / "c", d(10, 6))
    deliver_extract(eng, res.extract_id, {"type": "outbox", "path": str(tmp_path / "o")})
    # The billing system credits the sent claim afterwards: it is cancelled by a correction.
    load(ingestor, tmp_path, [dft(d(11), "PZ-1", "VZ1", [(d(3), "CONS-GEN", "Annulation", 1, 5000, "CD", "T4")],
                                  cov)], "CHU-SO")
    build_claims(eng, CFG, d(17, 6), insurers=["INAM"])
    v2 = extract(eng, CFG, "INAM", "2026-W45", tmp_path / "c", d(17, 6), reason="Annulation par la formation")
    assert v2.manifest["totals"]["montant_reclame"] == "0.00" and v2.claims == 1
    # A resent transaction (same FT1-2) replaces the earlier copy instead of adding to it.
    load(ingestor, tmp_path, [dft(d(12), "PZ-1", "VZ1", [(d(3), "CONS-GEN", "Annulation", 1, 5000, "CD", "T4")],
                                  cov)], "CHU-SO")
    r = build_claims(eng, CFG, d(17, 6), insurers=["INAM"])
    assert r["resent_replaced"] == 1 and r["insurers"]["INAM"]["written"] == 0


def test_a_coverage_renewal_keeps_the_claims_of_the_period_before(ingestor, tmp_path):
    """A renewal (a new IN1-12/13 for the same member) used to overwrite the earlier period's
    dates: the sent 2026 claim lost its coverage and turned 'corrected' with no lines."""
    eng = ingestor.engine
    load(ingestor, tmp_path, [dft(d(3), "PR-1", "VR1", [(d(3), "CONS-GEN", "Consultation", 1, 5000)],
                                  [in1("INAM", "INAM-AMO", "912345678", "20260101", "20261231")])], "CHU-SO")
    build_claims(eng, CFG, d(10, 6), insurers=["INAM"])
    res = extract(eng, CFG, "INAM", "2026-W45", tmp_path / "c", d(10, 6))
    deliver_extract(eng, res.extract_id, {"type": "outbox", "path": str(tmp_path / "o")})
    jan = datetime(2027, 1, 12, 10)
    load(ingestor, tmp_path, [dft(jan, "PR-1", "VR2", [(jan, "CONS-GEN", "Consultation", 1, 6000)],
                                  [in1("INAM", "INAM-AMO", "912345678", "20270101", "20271231")])], "CHU-SO")
    r = build_claims(eng, CFG, datetime(2027, 1, 20, 6), insurers=["INAM"])
    assert r["skipped"]["coverage_not_valid"] == 0
    assert rows(eng, "SELECT visit_number, status, lines FROM claim WHERE insurer_code = 'INAM' "
                     "ORDER BY visit_number") == [("VR1", "sent", 1), ("VR2", "ready", 1)]
    assert rows(eng, "SELECT period_start, valid_from, valid_to FROM fact_coverage ORDER BY 1") == [
        ("2026-01-01", "2026-01-01", "2026-12-31"), ("2027-01-01", "2027-01-01", "2027-12-31")]
    # The same period sent again with a new end (an extension) updates that period only.
    load(ingestor, tmp_path, [dft(jan, "PR-1", "VR2", [], [in1("INAM", "INAM-AMO", "912345678", "20270101",
                                                               "20280630")])], "CHU-SO")
    assert rows(eng, "SELECT period_start, valid_to FROM fact_coverage ORDER BY 1") == [
        ("2026-01-01", "2026-12-31"), ("2027-01-01", "2028-06-30")]


def test_same_for_insurer():
    from transforms.claims import same_for_insurer

    assert same_for_insurer("a", "v", "a", None) and same_for_insurer("b", "v", "a", "v")
    assert not same_for_insurer("b", "v", "a", None)  # delivered before migration 015: content only
    assert not same_for_insurer("b", "w", "a", "v")


def test_an_undated_coverage_made_precise_later_no_longer_covers_every_date(ingestor, tmp_path):
    eng = ingestor.engine
    load(ingestor, tmp_path, [dft(d(1), "PU-1", "VU1", [], [in1("INAM", "INAM-AMO", "697812345")])], "CHU-SO")
    load(ingestor, tmp_path, [dft(d(4), "PU-1", "VU1", [(d(4), "CONS-GEN", "Consultation", 1, 5000)],
                                  [in1("INAM", "INAM-AMO", "697812345", "20260101", "20261031")])], "CHU-SO")
    assert rows(eng, "SELECT period_start, valid_to FROM fact_coverage WHERE member_id = '697812345'") == [
        ("2026-01-01", "2026-10-31")]
    assert build_claims(eng, CFG, d(10, 6))["skipped"]["coverage_not_valid"] == 1


def test_a_visit_sent_to_one_insurer_is_not_billed_to_another(ingestor, tmp_path):
    """INAM comes first in insurers.yaml, but its IN1 arrived after the visit was claimed from
    GTA-C2A: the visit stays with GTA-C2A instead of being billed to both."""
    eng = ingestor.engine
    load(ingestor, tmp_path, [dft(d(3), "PG-1", "VG2", [(d(3), "CONS-GEN", "Consultation", 1, 5000)],
                                  [in1("GTA-C2A", "GTA-SANTE", "GTA-91")])], "CHU-SO")
    build_claims(eng, CFG, datetime(2026, 12, 1, 7))
    res = extract(eng, CFG, "GTA-C2A", "2026-11", tmp_path / "c", datetime(2026, 12, 1, 7))
    deliver_extract(eng, res.extract_id, {"type": "outbox", "path": str(tmp_path / "o")})
    load(ingestor, tmp_path, [dft(d(4, month=12), "PG-1", "VG2", [],
                                  [in1("INAM", "INAM-AMO", "192345678"), in1("GTA-C2A", "GTA-SANTE", "GTA-91")])],
         "CHU-SO")
    build_claims(eng, CFG, datetime(2026, 12, 7, 6))
    assert rows(eng, "SELECT insurer_code, visit_number, status FROM claim WHERE visit_number = 'VG2'") == [
        ("GTA-C2A", "VG2", "sent")]


def test_a_visit_split_between_two_insurers_stays_split(ingestor, tmp_path):
    """CNSS covered the visit's first charge; INAM coverage starts later and covers the second.
    Both claims delivered, a rebuild moves neither charge (keying the stickiness on the visit
    moved one insurer's charges to the other, in an order the database chose)."""
    eng = ingestor.engine
    load(ingestor, tmp_path, [
        dft(d(3), "PS-1", "VS1", [(d(3), "CONS-SPE", "Consultation", 1, 10000, "CG", "T-S1")],
            [in1("CNSS", "CNSS-AT", "4567890123", "20260101", "20261104")]),
        dft(d(6), "PS-1", "VS1", [(d(6), "CONS-GEN", "Consultation", 1, 5000, "CG", "T-S2")],
            [in1("INAM", "INAM-AMO", "495678123", "20261105", "20271231"),
             in1("CNSS", "CNSS-AT", "4567890123", "20260101", "20261104")])], "CHU-SO")
    build_claims(eng, CFG, datetime(2026, 12, 1, 7))
    for code, period in (("INAM", "2026-W45"), ("CNSS", "2026-11")):
        res = extract(eng, CFG, code, period, tmp_path / "c", datetime(2026, 12, 1, 7))
        deliver_extract(eng, res.extract_id, {"type": "outbox", "path": str(tmp_path / "o" / code)})
    for _ in range(2):
        build_claims(eng, CFG, datetime(2026, 12, 8, 7))
        assert rows(eng, "SELECT insurer_code, status, lines FROM claim WHERE visit_number = 'VS1' "
                         "ORDER BY insurer_code") == [("CNSS", "sent", 1), ("INAM", "sent", 1)]


def test_versions_not_delivered_go_out_with_the_next_delivery(ingestor, tmp_path, monkeypatch):
    """A first version whose delivery failed, then a correction made by hand: both reach the
    insurer, in order, and the claims of both are marked sent. The extract was made with a
    relative --out from another directory: the recorded folder is absolute."""
    from transforms.claims import deliver_pending

    eng = ingestor.engine
    cov = [in1("INAM", "INAM-AMO", "293456781")]
    load(ingestor, tmp_path, [dft(d(3), "PD-1", "VD8", [(d(3), "CONS-GEN", "Consultation", 1, 5000)], cov),
                              dft(d(4), "PD-2", "VD9", [(d(4), "CONS-GEN", "Consultation", 1, 3000)], cov)], "CHU-SO")
    build_claims(eng, CFG, d(10, 6))
    monkeypatch.chdir(tmp_path)
    v1 = extract(eng, CFG, "INAM", "2026-W45", "rel-out", d(10, 6))
    assert rows(eng, "SELECT out_dir FROM claim_extract") == [(str(tmp_path / "rel-out" / "INAM" / "2026-W45" / "v1"),)]
    monkeypatch.chdir(ROOT)
    load(ingestor, tmp_path, [dft(d(11), "PD-1", "VD8", [(d(3), "LAB-GE", "Goutte épaisse", 1, 2000)], cov)],
         "CHU-SO")
    build_claims(eng, CFG, d(17, 6))
    v2 = extract(eng, CFG, "INAM", "2026-W45", tmp_path / "rel-out", d(17, 6), reason="Acte oublié")
    assert (v1.version, v2.version) == (1, 2)
    done = deliver_pending(eng, "INAM", {"type": "outbox", "path": str(tmp_path / "o")})
    assert [(r["extract_id"], r["status"]) for r in done] == [(v1.extract_id, "delivered"), (v2.extract_id, "delivered")]
    assert rows(eng, "SELECT visit_number, status FROM claim ORDER BY visit_number") == [("VD8", "sent"), ("VD9", "sent")]
    assert deliver_pending(eng, "INAM", {"type": "outbox", "path": str(tmp_path / "o")}) == []


def test_a_change_the_insurer_cannot_see_is_not_a_correction(ingestor, tmp_path):
    """INAM's extract has no type_patient: an A08 turning the visit from O to E leaves its sent
    claim 'sent' (it became 'corrected', and the correction was byte-identical to version 1).
    Adding a column to INAM's configuration does not reopen sent claims either. A change INAM
    does see still makes a correction."""
    import dataclasses

    from transforms.claims import InsurersConfig

    eng = ingestor.engine
    cov = [in1("INAM", "INAM-AMO", "394567812")]
    load(ingestor, tmp_path, [adt("A04", d(3, 8), "PV-1", "VV1", d(3, 8)).replace("|I|", "|O|", 1),
                              dft(d(3), "PV-1", "VV1", [(d(3), "CONS-GEN", "Consultation", 1, 5000)], cov)], "CHU-SO")
    build_claims(eng, CFG, d(10, 6), insurers=["INAM"])
    res = extract(eng, CFG, "INAM", "2026-W45", tmp_path / "c", d(10, 6))
    deliver_extract(eng, res.extract_id, {"type": "outbox", "path": str(tmp_path / "o")})
    inam = CFG.get("INAM")
    wider = InsurersConfig(tuple(dataclasses.replace(i, columns=i.columns + ("type_patient",)) if i is inam else i
                                 for i in CFG.insurers))
    build_claims(eng, wider, d(10, 7), insurers=["INAM"])
    assert rows(eng, "SELECT status FROM claim WHERE visit_number = 'VV1'") == [("sent",)]
    build_claims(eng, CFG, d(10, 8), insurers=["INAM"])
    load(ingestor, tmp_path, [adt("A08", d(11, 8), "PV-1", "VV1", d(3, 8)).replace("|I|", "|E|", 1)], "CHU-SO")
    assert rows(eng, "SELECT patient_class FROM fact_encounter WHERE visit_number = 'VV1'") == [("E",)]
    build_claims(eng, CFG, d(17, 6), insurers=["INAM"])
    assert rows(eng, "SELECT status, patient_class FROM claim WHERE visit_number = 'VV1'") == [("sent", "E")]
    assert extract(eng, CFG, "INAM", "2026-W45", tmp_path / "c", d(17, 6)).rerun  # no CorrectionNeeded
    assert sum(r["corrections_pending"] for r in status(eng, "INAM")) == 0
    load(ingestor, tmp_path, [dft(d(12), "PV-1", "VV1", [(d(3), "LAB-GE", "Goutte épaisse", 1, 2000)], cov)],
         "CHU-SO")
    build_claims(eng, CFG, d(17, 6), insurers=["INAM"])
    assert rows(eng, "SELECT status FROM claim WHERE visit_number = 'VV1'") == [("corrected",)]


def test_an_old_version_that_cannot_be_delivered_does_not_hold_back_the_others(ingestor, tmp_path):
    from transforms.claims import deliver_pending

    eng = ingestor.engine
    cov = [in1("INAM", "INAM-AMO", "596781234")]
    load(ingestor, tmp_path, [dft(d(3), "PB-1", "VB8", [(d(3), "CONS-GEN", "Consultation", 1, 5000)], cov)], "CHU-SO")
    build_claims(eng, CFG, d(10, 6))
    w45 = extract(eng, CFG, "INAM", "2026-W45", tmp_path / "c", d(10, 6))
    for p in w45.out_dir.iterdir():
        p.unlink()  # its files were cleaned up before anyone delivered them
    load(ingestor, tmp_path, [dft(d(10), "PB-2", "VB9", [(d(10), "CONS-GEN", "Consultation", 1, 3000)], cov)],
         "CHU-SO")
    build_claims(eng, CFG, d(17, 6))
    w46 = extract(eng, CFG, "INAM", "2026-W46", tmp_path / "c", d(17, 6))
    got = deliver_pending(eng, "INAM", {"type": "outbox", "path": str(tmp_path / "o")})
    assert [(r["extract_id"], r["status"]) for r in got] == [(w45.extract_id, "failed"), (w46.extract_id, "delivered")]
    assert "manifest" in got[0]["error"] and "VB8" not in got[0]["error"]


def test_claim_ready_after_its_period_was_extracted_goes_into_the_next_one(ingestor, tmp_path):
    eng = ingestor.engine
    cov = [in1("INAM", "INAM-AMO", "891234567")]
    load(ingestor, tmp_path, [dft(d(3), "PN-1", "VN1", [(d(3), "CONS-GEN", "Consultation", 1, 5000)], cov),
                              dft(d(8, 20), "PN-2", "VN2", [(d(8, 20), "CONS-GEN", "Consultation", 1, 3000)], cov)],
         "CHU-SO")
    build_claims(eng, CFG, d(10, 6))  # VN2's charge (Sunday evening) is not settled yet
    w45 = extract(eng, CFG, "INAM", "2026-W45", tmp_path / "c", d(10, 6))
    assert w45.claims == 1
    build_claims(eng, CFG, d(12, 6))  # now it is: the extracted week is not reopened ...
    again = extract(eng, CFG, "INAM", "2026-W45", tmp_path / "c", d(12, 6))
    assert again.rerun and again.claims == 1 and again.extract_id == w45.extract_id
    build_claims(eng, CFG, d(17, 6))  # ... the next week's first version carries it
    w46 = extract(eng, CFG, "INAM", "2026-W46", tmp_path / "c", d(17, 6))
    assert {r["numero_visite"] for r in parquet_rows(w46.files[0])} == {"VN2"}
    assert rows(eng, "SELECT COUNT(*), COUNT(DISTINCT claim_id) FROM claim_extract_item") == [(2, 2)]


def test_cli_extract_exit_codes(loaded, tmp_path, capsys):
    url = loaded.url.render_as_string(hide_password=False)

    def ns(**k):
        return types.SimpleNamespace(**{"insurer": "INAM", "period": "2026-W45", "out": str(tmp_path / "c"),
                                        "warehouse_url": url, "reason": None, "config": None, **k})

    assert cli_extract(ns()) == 0
    printed = capsys.readouterr().out
    assert "INAM 2026-W45 version 1" in printed and "48800.00" in printed and "uninsured 2" in printed
    assert not [s for s in (*NAMES, *PIDS) if s in printed]
    assert cli_extract(ns()) == 0 and "re-run" in capsys.readouterr().out
    assert cli_extract(ns(reason="rien")) == 1 and "no claim changed" in capsys.readouterr().err
    assert cli_extract(ns(period="2026-11")) == 2 and "2026-W45 (ISO week)" in capsys.readouterr().err
    assert cli_extract(ns(insurer="NOPE")) == 2 and "no insurer 'NOPE'" in capsys.readouterr().err


# -- Airflow ----------------------------------------------------------------------------------------



def test_one_dag_per_insurer_with_guards(dagbag):
    assert not {k: v for k, v in dagbag.import_errors.items() if "insurer_claims_extract" in k}
    for ins in CFG.insurers:
        dag = dagbag.get_dag(ins.dag_id)
        assert dag is not None, ins.dag_id
        assert dag.catchup is False and dag.max_active_runs == 1 and "hl7ics" in dag.tags
        assert dag.on_failure_callback and dag.on_success_callback and "Un DAG par assureur" in dag.doc_md
        assert sorted(t.task_id for t in dag.tasks) == ["build_claims", "deliver", "extract_period"]
        assert dag.get_task("extract_period").upstream_task_ids == {"build_claims"}
        assert dag.get_task("deliver").upstream_task_ids == {"extract_period"}
        assert all(t.retries >= 1 and t.owner == "data-engineering" for t in dag.tasks)


def test_dag_file_is_cheap_to_import():
    import subprocess

    code = ("import sys; sys.path.insert(0, 'plugins'); import runpy; "
            "runpy.run_path('dags/insurer_claims_extract.py'); "
            "print(sorted(m for m in ('pandas', 'pyarrow', 'great_expectations') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"


def test_private_insurer_dag_end_to_end(dagbag, hl7ics_home, tmp_path):
    """A month of claims for the outbox insurer: build -> extract 2026-11 -> outbox; a re-run of the
    DAG writes the same files and delivers nothing twice."""
    from transforms.warehouse import get_engine

    ing = Ingestor(Settings.load(), run_id="run-dag")
    ing.sync_facilities()
    gta = [in1("GTA-C2A", "GTA-SANTE", "GTA-123")]
    load(ing, tmp_path, [dft(d(12), "PM-1", "VM1", [(d(12), "CONS-GEN", "Consultation", 1, 5000)], gta),
                         dft(d(13), "PM-2", "VM2", [(d(13), "LAB-GE", "Goutte épaisse", 2, 2000)], gta)], "CHU-SO")
    ins = CFG.get("GTA-C2A")
    run_after = datetime(2026, 12, 1, 7, tzinfo=timezone.utc)
    dr = dagbag.get_dag(ins.dag_id).test(run_after=run_after, logical_date=run_after)
    assert str(dr.state).endswith("success")
    outbox = Settings.load().data_dir / ins.delivery["path"]
    files = sorted(p.name for p in outbox.iterdir())
    assert files == ["GTA-C2A_2026-11_v1_demandes.csv", "GTA-C2A_2026-11_v1_manifeste.json",
                     "GTA-C2A_2026-11_v1_resume.md"]
    m = json.loads((outbox / files[1]).read_text(encoding="utf-8"))
    assert m["by_facility"] == {"CHU-SO": {"claims": 2, "lines": 2, "montant": "9000.00", "ticket_moderateur": "900.00",
                                           "montant_reclame": "8100.00"}}
    eng = get_engine(Settings.load().warehouse_url)
    assert rows(eng, "SELECT DISTINCT status FROM claim WHERE insurer_code = 'GTA-C2A'") == [("sent",)]
    before = file_hashes(Settings.load().data_dir / "claims")
    dr2 = dagbag.get_dag(ins.dag_id).test(run_after=run_after.replace(hour=8), logical_date=run_after.replace(hour=8))
    assert str(dr2.state).endswith("success")
    assert file_hashes(Settings.load().data_dir / "claims") == before
    assert scalar(eng, "SELECT COUNT(*) FROM claim_delivery") == 1
    assert scalar(eng, "SELECT COUNT(*) FROM claim_extract") == 1
    # A late charge on a sent claim: the next run of the same period does not fail, issues nothing
    # on its own (a correction needs a person's reason) and reports the correction due.
    load(ing, tmp_path, [dft(d(20), "PM-1", "VM1", [(d(12), "LAB-GE", "Goutte épaisse", 1, 2000)], gta)], "CHU-SO")
    dr3 = dagbag.get_dag(ins.dag_id).test(run_after=run_after.replace(hour=9), logical_date=run_after.replace(hour=9))
    assert str(dr3.state).endswith("success")
    assert scalar(eng, "SELECT COUNT(*) FROM claim_extract") == 1
    assert [r["corrections_pending"] for r in status(eng, "GTA-C2A")] == [1]
    assert scalar(eng, "SELECT status FROM claim WHERE visit_number = 'VM1'") == "corrected"


def test_extract_is_delivered_to_the_insurers_sftp_and_a_wrong_host_key_is_refused(ingestor, loaded, tmp_path,
                                                                                     monkeypatch):
    """Issue 8: delivery to a real SFTP server on loopback; a server with another key gets nothing."""
    from sftp_support import SftpServer

    from transforms.sftp import SftpHostKeyError

    eng = ingestor.engine
    build_claims(eng, CFG, d(10, 6))
    res = extract(eng, CFG, "INAM", "2026-W45", tmp_path / "claims", d(10, 6))
    with SftpServer(tmp_path / "inam-sftp") as srv:
        (srv.root / "claims").mkdir()
        wrong = srv.connection("/")
        wrong["extra"] = {**wrong["extra"], "host_key": SftpServer(tmp_path / "other").host_key_line}
        wrong["extra"].pop("known_hosts", None)
        monkeypatch.setenv("AIRFLOW_CONN_HL7ICS_SFTP_INAM_TEST", json.dumps(wrong))
        with pytest.raises(SftpHostKeyError):
            deliver_extract(eng, res.extract_id, {"type": "sftp", "conn_id": "hl7ics_sftp_inam_test",
                                                  "path": "/claims"})
        assert not list((srv.root / "claims").iterdir())
        assert scalar(eng, "SELECT COUNT(*) FROM claim WHERE sent_sha256 IS NOT NULL") == 0
        monkeypatch.setenv("AIRFLOW_CONN_HL7ICS_SFTP_INAM_TEST", json.dumps(srv.connection("/")))
        dl = deliver_extract(eng, res.extract_id, {"type": "sftp", "conn_id": "hl7ics_sftp_inam_test",
                                                   "path": "/claims"})
        assert dl["status"] == "delivered" and "sftp://127.0.0.1" in dl["target"]
        delivered = {p.name: p.read_bytes() for p in (srv.root / "claims").iterdir()}
        assert delivered == {p.name: p.read_bytes() for p in res.files}
        assert rows(eng, "SELECT status FROM claim_delivery ORDER BY id") == [("failed",), ("delivered",)]


# --- found by review (2026-12-06): each failed before its fix ---------------------------------------

def _ft1raw(i, when, code, label, qty, ext, unit, ttype="CG"):
    t = f"{when:%Y%m%d%H%M}"
    return f"FT1|{i}|||{t}|{t}|{ttype}|{code}^{label}^L|||{qty}|{ext}|{unit}|CONS"


def _a_normal_claim_and(ingestor, tmp_path, visit: str, *ft1: str) -> None:
    """Load visit VOK (one 5,000 XOF consultation) and ``visit`` with the FT1 segments given."""
    cov = in1("INAM", "INAM-AMO", "777888999")
    load(ingestor, tmp_path, [
        hl7(d(3), f"EVN|P03|{d(3):%Y%m%d%H%M}", pid("PO-1", "CHU-SO"), pv1("VOK"),
            _ft1raw(1, d(3), "CONS", "Consultation", "1", "5000&XOF", "5000&XOF"), cov),
        hl7(d(4), f"EVN|P03|{d(4):%Y%m%d%H%M}", pid("PO-2", "CHU-SO"), pv1(visit), *ft1, cov)], "CHU-SO")


def test_a_credit_with_quantity_zero_does_not_block_the_extract(ingestor, tmp_path):
    """A CD credit with quantity 0 was negated to -0.0, which SQLite gives back as 0.0: the
    extract's content-hash check failed for the whole insurer, rebuild after rebuild."""
    eng = ingestor.engine
    load(ingestor, tmp_path, [
        hl7(d(3), f"EVN|P03|{d(3):%Y%m%d%H%M}", pid("PQ-1", "CHU-SO"), pv1("VQ1"),
            _ft1raw(1, d(3), "CONS", "Consultation", "1", "5000&XOF", "5000&XOF"),
            _ft1raw(2, d(3), "REM", "Remise sur consultation", "0", "500&XOF", "", "CD"),
            in1("INAM", "INAM-AMO", "123123123"))], "CHU-SO")
    build_claims(eng, CFG, d(10, 6))
    res = extract(eng, CFG, "INAM", "2026-W45", tmp_path / "c", d(10, 6))
    assert res.claims == 1
    assert rows(eng, "SELECT quantity FROM claim_line ORDER BY line_no") == [(1.0,), (0.0,)]


def test_a_typo_d_amount_is_skipped_not_the_whole_build(ingestor, tmp_path):
    """Quantity 10,000,000 x 500,000 XOF (no FT1-11) does not fit NUMERIC(14, 2): PostgreSQL
    failed the whole build, SQLite every extract. The line is counted, the rest is claimed."""
    eng = ingestor.engine
    _a_normal_claim_and(ingestor, tmp_path, "VBAD", _ft1raw(1, d(4), "PHA-X", "Comprimé", "10000000", "", "500000&XOF"))
    r = build_claims(eng, CFG, d(10, 6))
    assert r["skipped"]["amount_out_of_range"] == 1
    assert extract(eng, CFG, "INAM", "2026-W45", tmp_path / "c", d(10, 6)).claims == 1
    assert rows(eng, "SELECT visit_number FROM claim") == [("VOK",)]


def test_an_expiry_sent_as_a_month_or_a_year_covers_all_of_it(ingestor, tmp_path):
    """IN1-13 '202612' (valid through December) or '2026' was compared as text with the charge's
    day and ended coverage at the start of that month or year."""
    eng = ingestor.engine
    load(ingestor, tmp_path, [
        dft(datetime(2026, 12, 10, 9), "PX-1", "VX1", [(datetime(2026, 12, 10, 9), "CONS-GEN", "Consultation", 1, 5000)],
            [in1("INAM", "INAM-AMO", "111222333", "20260101", "202612")]),
        dft(datetime(2026, 6, 10, 9), "PX-2", "VX2", [(datetime(2026, 6, 10, 9), "CONS-GEN", "Consultation", 1, 5000)],
            [in1("INAM", "INAM-AMO", "444555666", "2026", "2026")]),
        dft(datetime(2027, 1, 4, 9), "PX-1", "VX3", [(datetime(2027, 1, 4, 9), "CONS-GEN", "Consultation", 1, 5000)])],
        "CHU-SO")
    r = build_claims(eng, CFG, datetime(2027, 1, 21, 6))
    assert rows(eng, "SELECT visit_number FROM claim ORDER BY visit_number") == [("VX1",), ("VX2",)]
    assert r["skipped"]["coverage_not_valid"] == 1  # January 2027 is past "through 12/2026"


def test_two_patients_under_one_visit_number_are_not_one_claim(ingestor, tmp_path):
    """A reused ticket number: patient B's charge was billed in patient A's claim, under the
    member number of whoever was charged last. The visit's claim stays with the patient it was
    built for, even when the other patient's charge is dated earlier, and the other patient's
    charges make a claim of their own."""
    eng = ingestor.engine
    load(ingestor, tmp_path, [
        dft(d(4), "PA-1", "T001", [(d(4), "CONS-GEN", "Consultation", 1, 5000)], [in1("INAM", "INAM-AMO", "111111111")])],
        "CHU-SO")
    build_claims(eng, CFG, d(10, 6))
    first = rows(eng, "SELECT claim_id, member_id, lines FROM claim")
    assert [r[1:] for r in first] == [("111111111", 1)]
    load(ingestor, tmp_path, [
        dft(d(3), "PB-2", "T001", [(d(3), "LAB-GE", "Goutte épaisse", 1, 2000)], [in1("INAM", "INAM-AMO", "222222222")]),
    ], "CHU-SO")
    r = build_claims(eng, CFG, d(10, 6))
    got = rows(eng, "SELECT claim_id, visit_number, member_id, lines, total_amount FROM claim ORDER BY member_id")
    assert [g[1:4] for g in got] == [("T001", "111111111", 1), ("T001", "222222222", 1)]
    assert got[0][0] == first[0][0] and got[1][0] != first[0][0]  # A's claim keeps its number
    assert r["visit_conflicts"] == 1
    again = build_claims(eng, CFG, d(10, 6))  # idempotent
    assert rows(eng, "SELECT claim_id, visit_number, member_id, lines, total_amount FROM claim ORDER BY member_id") == got
    assert again["visit_conflicts"] == 1


def test_a_claim_total_too_large_for_its_column_is_held_back(ingestor, tmp_path):
    """Two lines each under 10^12 XOF whose sum is not: the claim's total column (NUMERIC(14, 2))
    failed the whole build on PostgreSQL. That claim is counted and left as it was."""
    eng = ingestor.engine
    _a_normal_claim_and(ingestor, tmp_path, "VBIG",
                        _ft1raw(1, d(4), "PHA-X", "Comprimé", "1", "600000000000&XOF", "600000000000&XOF"),
                        _ft1raw(2, d(4), "PHA-Y", "Comprimé", "1", "600000000000&XOF", "600000000000&XOF"))
    r = build_claims(eng, CFG, d(10, 6))
    assert r["skipped"]["amount_out_of_range"] == 2
    assert rows(eng, "SELECT visit_number FROM claim") == [("VOK",)]


def test_a_negative_zero_amount_is_written_as_zero_in_the_csv():
    """A credit line whose co-payment rounds to no franc (-0.3 XOF) is Decimal('-0.00'): its CSV
    cell is 0,00, not -0,00; other amounts keep their sign and the claim hash is unchanged."""
    from decimal import Decimal

    from transforms.claims import _canon, _copay, _csv_cell

    nothing = _copay(Decimal("-3"), Decimal("0.1"))
    assert nothing.is_signed() and nothing == 0
    assert [_csv_cell(v, "amount") for v in (nothing, Decimal("-3000"), Decimal("600"))] == ["0,00", "-3000,00",
                                                                                            "600,00"]
    assert _canon(nothing) == "-0.00"  # what recorded claim hashes were computed with


def test_terms_in_force_on_the_charge_date_leave_sent_claims_alone(ingestor, tmp_path):
    """insurers.yaml changes over time: a new co-payment rate from December and the end of a
    facility's contract. Written as dated terms, they apply to charges of their own dates; the
    November claim already sent keeps its rate and stays sent, a December charge gets the new
    rate, and a charge after the contract ended is not claimed."""
    from datetime import date

    def config(plans, facilities):
        return parse_insurers({"insurers": [{**GOOD, "columns": ["numero_demande", "montant", "ticket_moderateur",
                                                                 "montant_reclame"],
                                             "plans": plans, "facilities": facilities}]}, "insurers.yaml", ["CHU-SO"])

    before = config([{"code": "INAM-AMO", "copay": 0.2}], ["CHU-SO"])
    after = config([{"code": "INAM-AMO", "copay": 0.2, "until": date(2026, 11, 30)},
                    {"code": "INAM-AMO", "name": "AMO 2027", "copay": 0.3, "from": "2026-12-01"}],
                   [{"code": "CHU-SO", "until": "2026-12-15"}])
    eng = ingestor.engine
    cov = [in1("INAM", "INAM-AMO", "891234567")]
    load(ingestor, tmp_path, [dft(d(3), "PT-1", "VT1", [(d(3), "CONS-GEN", "Consultation", 1, 5000)], cov)], "CHU-SO")
    build_claims(eng, before, d(10, 6))
    res = extract(eng, before, "INAM", "2026-W45", tmp_path / "c", d(10, 6))
    deliver_extract(eng, res.extract_id, {"type": "outbox", "path": str(tmp_path / "o")})
    dec, late = d(8, month=12), d(20, month=12)
    load(ingestor, tmp_path, [dft(dec, "PT-2", "VT2", [(dec, "CONS-GEN", "Consultation", 1, 5000)], cov),
                              dft(late, "PT-3", "VT3", [(late, "CONS-GEN", "Consultation", 1, 5000)], cov)], "CHU-SO")
    r = build_claims(eng, after, d(28, month=12))
    assert r["skipped"]["facility_not_contracted"] == 1
    got = rows(eng, "SELECT visit_number, status, copay_rate, copay_amount FROM claim ORDER BY visit_number")
    assert [(v, st, rate, money(a)) for v, st, rate, a in got] == [
        ("VT1", "sent", 0.2, money(1000)), ("VT2", "ready", 0.3, money(1500))]
    assert after.get("INAM").plan_on("INAM-AMO", "2026-12-01").name == "AMO 2027"
    assert after.get("INAM").plan_on("INAM-AMO", "2026-11-30").copay == 0.2
