"""Deterministic synthetic HL7 v2 traffic for Togo health facilities.

Purpose
    Produce realistic HL7 v2 messages (ADT, ORM/OML, ORU, DFT, RDE/RDS, VXU, SIU, MDM) as
    Togolese facilities would send them, to feed the demo, the tests and the benchmarks of
    the integration service. The traffic is coherent: patients and visits are reused
    (A01/A04 -> A02/A08 -> A03 share PID-3 and PV1-19; lab orders are followed by results
    for the same patient), and it deliberately carries the quirks of real feeds: several
    HL7 versions, Latin-1 and UTF-8 files, ``\\r``/``\\n``/``\\r\\n`` terminators, batch files,
    Z-segments, escape sequences, decimal commas and a share of broken messages.

Inputs
    facilities     list of facility dicts as loaded from ``config/facilities.yaml`` (keys used:
                   code, type, region, district, dhis2_org_unit, charset, timezone,
                   message_types, working_hours, sources); ``None`` -> DEFAULT_FACILITIES.
    days, start    number of days generated from ``start`` (default 2026-11-02, a Monday).
    per_day        total messages per day over all facilities (default 400), split by
                   facility size and spread over each facility's working hours.
    seed           the only source of randomness: same arguments -> byte-identical output.
    broken_share   share of deliberately broken messages (never inside batch files).

Outputs
    iter_messages  stream of GeneratedMessage (raw = the exact bytes written to the file,
                   terminators included; ordered by day, then facility, then time).
    generate       files ``out_dir/<source path>/<CODE>_<YYYYMMDD>_<nnnn>.hl7`` (written as
                   ``*.tmp`` then renamed) and ``out_dir/manifest.json``; returns the manifest.
    generate_mix   ``n`` raw messages (bytes, none broken) for benchmarks.

All names are synthetic. The module never prints or logs message content, and
GeneratedMessage hides ``raw`` from its repr so a logged object cannot leak a name.
Only the standard library is used.
"""
from __future__ import annotations

import dataclasses
import base64
import itertools
import json
import os
import random
import zlib
from collections import deque
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from pathlib import Path, PurePosixPath
from typing import Callable, Iterator

__all__ = [
    "DEFAULT_FACILITIES",
    "GeneratedMessage",
    "BROKEN_REASONS",
    "iter_messages",
    "generate",
    "generate_mix",
]

DEFAULT_START = date(2026, 11, 2)
DEFAULT_PER_DAY = 400
BROKEN_REASONS = ("NO_MSH", "EMPTY_MSH9", "EMPTY_MSH10", "INVALID_DATE", "TRUNCATED")
VERSIONS = ("2.3", "2.3.1", "2.4", "2.5", "2.5.1")


# --------------------------------------------------------------------------------------
# Public types and default configuration
# --------------------------------------------------------------------------------------
@dataclass(slots=True)
class GeneratedMessage:
    facility: str
    message_type: str          # "ADT^A01"
    version: str               # MSH-12
    raw: bytes = field(repr=False)  # exact bytes written, terminators included
    charset: str               # python codec used to encode raw
    broken: str | None         # reason code when deliberately broken
    at: datetime               # event time, UTC naive


def _default_facility(code, name, ftype, region, district, org, charset, types, hours,
                      interval, partial):
    src = {"type": "folder", "path": f"inbound/{code}", "glob": "*.hl7",
           "partial_upload": partial}
    if partial == "stable_size":
        src["stable_seconds"] = 5
    return {
        "code": code, "name": name, "type": ftype, "region": region, "district": district,
        "dhis2_org_unit": org, "charset": charset, "timezone": "Africa/Lome",
        "message_types": list(types), "working_hours": list(hours),
        "expected_interval_minutes": interval, "sources": [src],
    }


# Mirrors config/facilities.yaml so tests and benchmarks run without reading the config.
DEFAULT_FACILITIES: list[dict] = [
    _default_facility(
        "CHU-SO", "CHU Sylvanus Olympio", "chu", "Lomé-Commune", "Golfe", "TG-LC-GOL-CHUSO",
        "utf-8", ["ADT^A01", "ADT^A02", "ADT^A03", "ADT^A04", "ADT^A08", "ADT^A11", "ADT^A40",
                  "ORM^O01", "ORU^R01", "DFT^P03", "SIU^S12", "MDM^T02"],
        [0, 24], 60, "tmp_rename"),
    _default_facility(
        "CHU-KARA", "CHU de Kara", "chu", "Kara", "Kozah", "TG-KA-KOZ-CHUK", "utf-8",
        ["ADT^A01", "ADT^A03", "ADT^A04", "ADT^A08", "OML^O21", "ORU^R01", "DFT^P03",
         "VXU^V04"], [0, 24], 120, "tmp_rename"),
    _default_facility(
        "CHR-SOKODE", "Centre Hospitalier Régional de Sokodé", "chr", "Centrale", "Tchaoudjo",
        "TG-CE-TCH-CHRS", "iso-8859-1",
        ["ADT^A01", "ADT^A03", "ADT^A04", "ADT^A28", "ADT^A31", "ORM^O01", "ORU^R01",
         "DFT^P03"], [7, 19], 240, "stable_size"),
    _default_facility(
        "HD-TSEVIE", "Hôpital de district de Tsévié", "district_hospital", "Maritime", "Zio",
        "TG-MA-ZIO-HDT", "iso-8859-1",
        ["ADT^A01", "ADT^A03", "ADT^A04", "ORU^R01", "VXU^V04", "DFT^P03"], [7, 18], 360,
        "stable_size"),
    _default_facility(
        "INH-LOME", "Institut National d'Hygiène (laboratoire national de référence)",
        "reference_lab", "Lomé-Commune", "Golfe", "TG-LC-GOL-INH", "utf-8",
        ["OML^O21", "ORU^R01"], [7, 20], 180, "tmp_rename"),
    _default_facility(
        "PHARM-ATAKPAME", "Pharmacie de l'Hôpital d'Atakpamé", "pharmacy", "Plateaux", "Ogou",
        "TG-PL-OGO-PHA", "utf-8", ["RDE^O11", "RDS^O13", "DFT^P03"], [8, 18], 480,
        "tmp_rename"),
    _default_facility(
        "USP-NANERGOU", "Unité de Soins Périphérique de Nanergou", "peripheral_unit", "Savanes",
        "Tône", "TG-SA-TON-USPN", "iso-8859-1", ["ADT^A04", "ADT^A08", "ORU^R01", "VXU^V04"],
        [8, 16], 720, "stable_size"),
]


# --------------------------------------------------------------------------------------
# Reference tables
# --------------------------------------------------------------------------------------
def _wtab(pairs, size: int = 400) -> tuple:
    """Expand (item, weight) pairs into a lookup table: table[int(random()*len)] is a
    weighted draw at the cost of one random() call (random.choices is ~10x slower)."""
    pairs = [(item, w) for item, w in pairs if w > 0]
    total = float(sum(w for _, w in pairs))
    out: list = []
    for item, w in pairs:
        out.extend([item] * max(1, round(w / total * size)))
    return tuple(out)


def _coded(code, text, system, alt_code="", alt_text="", alt_system="", version="",
           orig="") -> tuple[str, str]:
    """(CE, CWE) renderings of one coded value. CE has at most 6 components; CWE (2.5+,
    e.g. a coded OBX-5 with OBX-2 = CWE) adds version and original text, up to 9. Fields
    still typed CE in 2.5/2.5.1 (OBX-3, DG1-3, RXA-5...) always use the CE rendering."""
    ce = "^".join((code, text, system, alt_code, alt_text, alt_system)).rstrip("^")
    cwe = "^".join((code, text, system, alt_code, alt_text, alt_system, version, "",
                    orig)).rstrip("^")
    return ce, cwe


FACILITY_WEIGHT = {"chu": 30, "chr": 16, "district_hospital": 10, "reference_lab": 8,
                   "pharmacy": 6, "clinic": 5, "peripheral_unit": 3}

# Relative volume of each message type; only the facility's own message_types are kept.
_BASE_TYPE_WEIGHTS = {
    "ADT^A01": 10, "ADT^A02": 3, "ADT^A03": 9.5, "ADT^A04": 16, "ADT^A08": 7, "ADT^A11": 0.5,
    "ADT^A28": 3, "ADT^A31": 2, "ADT^A40": 0.5, "ORM^O01": 8, "OML^O21": 8, "ORU^R01": 22,
    "DFT^P03": 8, "SIU^S12": 4, "MDM^T02": 3, "VXU^V04": 5, "RDE^O11": 3, "RDS^O13": 3,
}
_TYPE_WEIGHT_OVERRIDES = {
    "district_hospital": {"ADT^A04": 25, "VXU^V04": 10, "ORU^R01": 25},
    "reference_lab": {"ORU^R01": 70, "OML^O21": 30, "ORM^O01": 30},
    "pharmacy": {"RDE^O11": 45, "RDS^O13": 40, "DFT^P03": 15},
    "peripheral_unit": {"ADT^A04": 40, "ADT^A08": 10, "ORU^R01": 30, "VXU^V04": 25},
}
_UNKNOWN_ADT_WEIGHT = 2

_STRUCTURE = {
    "ADT^A01": "ADT_A01", "ADT^A02": "ADT_A02", "ADT^A03": "ADT_A03", "ADT^A04": "ADT_A01",
    "ADT^A08": "ADT_A01", "ADT^A11": "ADT_A09", "ADT^A28": "ADT_A05", "ADT^A31": "ADT_A05",
    "ADT^A40": "ADT_A39", "ORM^O01": "ORM_O01", "OML^O21": "OML_O21", "ORU^R01": "ORU_R01",
    "DFT^P03": "DFT_P03", "SIU^S12": "SIU_S12", "MDM^T02": "MDM_T02", "VXU^V04": "VXU_V04",
    "RDE^O11": "RDE_O11", "RDS^O13": "RDS_O13",
}

# Version candidates per facility type and application family; one is picked per facility
# from a stable hash of its code, so a facility keeps its versions from run to run.
_VERSION_CANDIDATES = {
    "chu": {"adt": ("2.5",), "lab": ("2.4", "2.5.1"), "imm": ("2.5.1",), "rx": ("2.5",)},
    "chr": {"adt": ("2.3.1",), "lab": ("2.3.1", "2.4"), "imm": ("2.5.1",), "rx": ("2.4",)},
    "district_hospital": {"adt": ("2.3", "2.3.1"), "lab": ("2.3",), "imm": ("2.5.1",),
                          "rx": ("2.4",)},
    "reference_lab": {"adt": ("2.5",), "lab": ("2.5.1", "2.5"), "imm": ("2.5.1",),
                      "rx": ("2.5",)},
    "pharmacy": {"adt": ("2.4",), "lab": ("2.4",), "imm": ("2.5.1",), "rx": ("2.4", "2.5")},
    "peripheral_unit": {"adt": ("2.3",), "lab": ("2.3", "2.3.1"), "imm": ("2.5.1",),
                        "rx": ("2.4",)},
    "clinic": {"adt": ("2.4", "2.3.1"), "lab": ("2.4",), "imm": ("2.5.1",), "rx": ("2.4",)},
}
_APPS = {
    "chu": {"adt": "SIH-CHU", "lab": "LABSYS", "imm": "SIH-CHU", "rx": "PHARMA"},
    "chr": {"adt": "OPENMRS", "lab": "OPENMRS", "imm": "DHIS2-TRACKER", "rx": "PHARMA"},
    "district_hospital": {"adt": "OPENMRS", "lab": "OPENMRS", "imm": "DHIS2-TRACKER",
                          "rx": "PHARMA"},
    "reference_lab": {"adt": "LABSYS", "lab": "LABSYS", "imm": "LABSYS", "rx": "PHARMA"},
    "pharmacy": {"adt": "PHARMA", "lab": "PHARMA", "imm": "PHARMA", "rx": "PHARMA"},
    "peripheral_unit": {"adt": "OPENMRS", "lab": "DHIS2-LAB", "imm": "DHIS2-TRACKER",
                        "rx": "PHARMA"},
    "clinic": {"adt": "OPENMRS", "lab": "OPENMRS", "imm": "OPENMRS", "rx": "PHARMA"},
}
# Lab systems stamp an explicit UTC offset on MSH-7; the others send bare local time.
_APPS_WITH_TZ = {"LABSYS", "DHIS2-LAB"}
_UTF8_DECLARING_TYPES = {"chu", "reference_lab"}   # others leave MSH-18 empty
_BATCH_TYPES = {"chu", "chr", "district_hospital", "reference_lab"}
_BATCH_SHARE = 0.10
_ZSEG_RATE = {"chu": 0.15, "district_hospital": 0.25, "peripheral_unit": 0.40, "chr": 0.05}
_ZCAT = {"ADT": "ADT", "ORM": "LAB", "OML": "LAB", "ORU": "LAB", "VXU": "PEV",
         "RDE": "PHARMA", "RDS": "PHARMA", "DFT": "FIN", "SIU": "RDV", "MDM": "DOC"}
_HL7_CHARSET = {"iso8859-1": "8859/1", "iso8859-15": "8859/15", "ascii": "ASCII"}
_TERMINATORS = _wtab([("\r", 80), ("\n", 10), ("\r\n", 10)], 100)
_BROKEN_TABLE = _wtab([("NO_MSH", 20), ("EMPTY_MSH9", 15), ("EMPTY_MSH10", 15),
                       ("INVALID_DATE", 25), ("TRUNCATED", 25)], 100)

# Hour-of-day profile (local time): morning peak, afternoon shoulder, quiet nights.
_HOUR_WEIGHT = (1, 1, 1, 1, 1, 1.5, 3, 6, 10, 11, 11, 10, 7, 6, 8, 8, 7, 5, 3.5, 2.5, 2, 1.5,
                1.2, 1)

# ---- names (French, Ewe, Kabiyè). Latin-1 facilities only get the encodable subset.
_FAMILY = (
    "Agbéko", "Kpodar", "Tchalla", "Ɖogbé", "Amégnran", "Gnassingbé", "Kodjo", "Ayéva",
    "Sénamé", "Ƒiawoo", "Aƒeli", "Eyadéma-Kossi", "N'Guessan", "Bawa", "Tchédré", "Kuɖawu",
    "Aŋani", "Dzɔgbedzi", "Lawson-Body", "Adjavon", "Akakpo", "Amouzou", "Agbodjan", "Tété",
    "Ekué", "Kpémissi", "Gbéassor", "Olympio", "d'Almeida", "Ouro-Djobo", "Boukari",
    "Issifou", "Alassani", "Tchassona", "Kpatcha", "Sossou", "Houngbédji", "Amédégnato",
    "Dɔvi", "Aʋedzi", "Agbɛnyɔ", "Tsɔlenyanu", "Hɔmenu", "Noëlie", "Kokoroko", "Dossèh",
)
_GIVEN_M = (
    "Kodjo", "Komlan", "Kɔku", "Koffi", "Gérôme", "Ɛdem", "Yao", "Kossi", "Kwami", "Essowè",
    "Pyabalo", "Tchilabalo", "Édouard", "Kokou", "Mawuli", "Ayité", "Dodzi", "Séna", "Aŋɔ",
    "Kɔmi", "Jérôme", "Noël",
)
_GIVEN_F = (
    "Améyo", "Akossiwa", "Yawa", "Ablavi", "Afi", "Pélagie", "Élodie", "Adjoa", "Akouvi",
    "Ama", "Essozimna", "Abla", "Noëlle", "Ahoéfa", "Dédé", "Ɛnyɔnam", "Hélène", "Mawuéna",
)
_GIVEN_U = ("Sénamé", "Mawuénam", "Eyram", "Dzifa", "Ɣaɖo", "Kafui", "Sélom", "Eʋenyo")

_CITIES = {
    "Golfe": ("Lomé", ("Bè", "Tokoin", "Nyékonakpoè", "Adidogomé", "Hédzranawoé", "Agoè-Nyivé",
                       "Kodjoviakopé")),
    "Kozah": ("Kara", ("Tomdè", "Kpéwa", "Dongoyo", "Landa", "Pya")),
    "Tchaoudjo": ("Sokodé", ("Kpangalam", "Komah", "Kouloundè", "Didaouré")),
    "Zio": ("Tsévié", ("Davié", "Mission-Tové", "Gapé", "Agbélouvé")),
    "Ogou": ("Atakpamé", ("Agbonou", "Djama", "Gnagna", "Glei")),
    "Tône": ("Dapaong", ("Nanergou", "Naki-Est", "Toaga", "Kantindi")),
}
_PHONE_PREFIX = ("90", "91", "92", "93", "96", "97", "98", "99", "70", "79")
_LANG = _wtab([("fr^Français^ISO6391", 55), ("ee^Éwé^ISO6391", 25),
               ("kbp^Kabiyè^ISO6392", 15), ("en^Anglais^ISO6391", 1)], 100)
_MARITAL = _wtab([("S", 35), ("M", 50), ("W", 8), ("D", 4), ("", 10)], 100)
# (min age days, max age days), weights: Togo's young population dominates clinic traffic
_AGE_BANDS = _wtab([((0, 365), 12), ((365, 1825), 13), ((1825, 5475), 15),
                    ((5475, 18250), 45), ((18250, 32850), 15)], 200)

# ---- diagnoses (ICD-10, French labels). (code, label, ward)
_DX = {
    "B54": ("Paludisme, sans précision", None),
    "B50.9": ("Paludisme à Plasmodium falciparum, sans précision", None),
    "B50.0": ("Paludisme à Plasmodium falciparum avec complications cérébrales", None),
    "A09": ("Diarrhée et gastro-entérite d'origine présumée infectieuse", None),
    "J18.9": ("Pneumopathie, sans précision", None),
    "O80": ("Accouchement unique et spontané", "MAT"),
    "A00.9": ("Choléra, sans précision", "INF"),
    "B05.9": ("Rougeole sans complication", "INF"),
    "A39.0": ("Méningite à méningocoques", "INF"),
    "A95.9": ("Fièvre jaune, sans précision", "INF"),
    "E43": ("Malnutrition protéino-énergétique grave, sans précision", None),
    "I10": ("Hypertension essentielle (primitive)", None),
    "B20": ("Maladie due au VIH à l'origine de maladies infectieuses et parasitaires", "INF"),
    "D50.9": ("Anémie par carence en fer, sans précision", None),
    "A01.0": ("Fièvre typhoïde", None),
    "E11.9": ("Diabète sucré de type 2, sans complication", None),
    "S06.0": ("Commotion cérébrale", "CHIR"),
}
_DX_CHILD = _wtab([("B54", 30), ("B50.9", 12), ("B50.0", 4), ("A09", 15), ("J18.9", 14),
                   ("E43", 6), ("B05.9", 3), ("A39.0", 2), ("A00.9", 2), ("D50.9", 5),
                   ("A95.9", 1), ("A01.0", 2)])
_DX_WOMAN = _wtab([("B54", 25), ("O80", 22), ("B50.9", 8), ("A09", 6), ("J18.9", 6),
                   ("B20", 4), ("I10", 8), ("D50.9", 5), ("A39.0", 1), ("A00.9", 1),
                   ("A01.0", 4), ("E11.9", 4), ("S06.0", 2), ("A95.9", 1)])
_DX_ADULT = _wtab([("B54", 30), ("B50.9", 8), ("A09", 8), ("J18.9", 10), ("B20", 5),
                   ("I10", 14), ("E11.9", 8), ("S06.0", 8), ("A01.0", 5), ("A39.0", 2),
                   ("A00.9", 2), ("A95.9", 1)])
# DG1 prefixes: <2.5 carries coding method and the deprecated DG1-4 description.
_DG1 = {code: (f"DG1|1|I10|{code}^{label}^I10|{label}|", f"DG1|1||{code}^{label}^I10||")
        for code, (label, _w) in _DX.items()}
_WARD_SERVICE = {"MED": "MED", "PED": "PED", "MAT": "OBS", "CHIR": "SUR", "INF": "MED"}
_DISPOSITION = _wtab([("01", 88), ("02", 4), ("07", 5), ("20", 3)], 100)

# ---- laboratory
_POS = _coded("10828004", "Positif", "SCT", "POS", "Positif", "L", "20240301", "Positif")
_NEG = _coded("260385009", "Négatif", "SCT", "NEG", "Négatif", "L", "20240301", "Négatif")


def _obs(loinc, label, local, system="LN"):
    if system == "LN":
        return _coded(loinc, label, "LN", local, label, "L", "2.74", label)
    return _coded(loinc, label, system, "", "", "", "", label)


def _units(u):
    return (f"{u}^{u}^UCUM", f"{u}^{u}^UCUM")


class _Test:
    """One lab analyte; NM ones draw a value around `mean`, coded ones a pos/neg result."""
    __slots__ = ("code", "kind", "units", "rng", "lo", "hi", "mean", "sd", "fmt", "vmin",
                 "pos_rate", "pos", "neg")

    def __init__(self, code, kind, units=("", ""), rng="", lo=0.0, hi=0.0, mean=0.0, sd=0.0,
                 dec=1, vmin=0.0, pos_rate=0.0, pos=(), neg=_NEG):
        self.code, self.kind, self.units, self.rng = code, kind, units, rng
        self.lo, self.hi, self.mean, self.sd, self.vmin = lo, hi, mean, sd, vmin
        self.fmt = f"{{:.{dec}f}}".format
        self.pos_rate, self.pos, self.neg = pos_rate, pos, neg


_T = {
    "RDT": _Test(_obs("70569-9", "TDR paludisme (Ag Plasmodium)", "TDR-PALU"), "CW",
                 pos_rate=0.38, pos=(_POS,)),
    "SMEAR": _Test(_obs("32700-7", "Goutte épaisse - Plasmodium", "GE"), "CW", pos_rate=0.30,
                   pos=(_coded("PF", "Plasmodium falciparum", "L"),) * 8
                   + (_coded("PM", "Plasmodium malariae", "L"),
                      _coded("PO", "Plasmodium ovale", "L"))),
    # parasite density only makes sense after a positive smear: drawn log-uniformly then
    "DENS": _Test(_obs("DENS-PF", "Densité parasitaire", "L", system="L"), "DN",
                  _units("/uL"), "0", 0, 0),
    "TEMP": _Test(_obs("8310-5", "Température corporelle", "TEMP"), "NM", _units("Cel"),
                  "36.0-37.5", 36.0, 37.5, 37.9, 1.0, 1, 35.0),
    "HGB": _Test(_obs("718-7", "Hémoglobine", "HGB"), "NM", _units("g/dL"), "12.0-16.0",
                 12.0, 16.0, 11.8, 2.3, 1, 3.0),
    "WBC": _Test(_obs("6690-2", "Leucocytes", "GB"), "NM", _units("10*3/uL"), "4.0-10.0",
                 4.0, 10.0, 7.8, 3.2, 1, 0.8),
    "PLT": _Test(_obs("777-3", "Plaquettes", "PLQ"), "NM", _units("10*3/uL"), "150-400",
                 150, 400, 235, 90, 0, 8),
    "RBC": _Test(_obs("789-8", "Hématies", "GR"), "NM", _units("10*6/uL"), "4.2-5.4", 4.2,
                 5.4, 4.4, 0.7, 2, 1.5),
    "HCT": _Test(_obs("4544-3", "Hématocrite", "HT"), "NM", _units("%"), "36-46", 36, 46, 36,
                 6, 1, 10),
    "MCV": _Test(_obs("787-2", "VGM", "VGM"), "NM", _units("fL"), "80-100", 80, 100, 84, 8,
                 1, 55),
    "NEUT": _Test(_obs("770-8", "Neutrophiles", "PNN"), "NM", _units("%"), "40-75", 40, 75,
                  58, 12, 1, 5),
    "LYMPH": _Test(_obs("736-9", "Lymphocytes", "LYM"), "NM", _units("%"), "20-45", 20, 45,
                   32, 10, 1, 3),
    "HIV": _Test(_obs("68961-2", "VIH 1+2 Ac", "VIH"), "CW", pos_rate=0.03, pos=(_POS,)),
    "HBSAG": _Test(_obs("5196-1", "Ag HBs (hépatite B)", "AGHBS"), "CW", pos_rate=0.09,
                   pos=(_POS,)),
    "CSF_APP": _Test(_obs("LCR-ASP", "Aspect du LCR", "L", system="L"), "CW", pos_rate=0.45,
                     pos=(_coded("TROUBLE", "Trouble", "L"), _coded("HEMAT", "Hématique", "L")),
                     neg=_coded("CLAIR", "Clair", "L")),
    "CSF_WBC": _Test(_obs("LCR-GB", "Leucocytes LCR", "L", system="L"), "NM", _units("/uL"),
                     "0-5", 0, 5, 180, 400, 0, 0),
    "CSF_CULT": _Test(_obs("606-0", "Culture du LCR", "CULT-LCR"), "CW", pos_rate=0.18,
                      pos=(_coded("17872004", "Neisseria meningitidis", "SCT"),) * 3
                      + (_coded("9861002", "Streptococcus pneumoniae", "SCT"),),
                      neg=_coded("264868006", "Pas de croissance", "SCT")),
    "GLU": _Test(_obs("2345-7", "Glycémie", "GLY"), "NM", _units("mg/dL"), "70-110", 70, 110,
                 98, 30, 0, 25),
    "CREA": _Test(_obs("2160-0", "Créatinine", "CREA"), "NM", _units("mg/dL"), "0.6-1.2",
                  0.6, 1.2, 1.0, 0.45, 2, 0.2),
    "ALT": _Test(_obs("1742-6", "ALAT", "ALAT"), "NM", _units("U/L"), "7-40", 7, 40, 30, 18,
                 0, 4),
}
_COMMENT_CODE = _obs("48767-8", "Commentaire", "COMM")
# Free text as lab systems send it: HL7 escapes for &, ^, line breaks and (rarely) raw CR.
_COMMENTS = _wtab([
    ("Trophozoïtes \\T\\ gamétocytes présents", 20),
    ("Prélèvement hémolysé\\.br\\Résultat à confirmer", 20),
    ("P. falciparum \\S\\ P. malariae (infection mixte)", 10),
    ("Échantillon reçu à 10h30\\.br\\Technicien : poste 2", 15),
    ("Valeur contrôlée sur second prélèvement", 25),
    ("Valeur critique communiquée au service\\X0D\\", 3),
], 100)
# (OBR universal service id, specimen type, [(test key, inclusion probability)])
_GROUPS = {
    "rdt": (_coded("TDR-PALU", "TDR paludisme", "L"), "BLD^Sang total^HL70487",
            (("RDT", 1), ("TEMP", 1))),
    "smear": (_coded("GE", "Goutte épaisse / frottis", "L"), "BLD^Sang total^HL70487",
              (("SMEAR", 1), ("DENS", 1))),
    "cbc": (_coded("58410-2", "NFS (numération formule sanguine)", "LN"),
            "BLD^Sang total^HL70487",
            (("HGB", 1), ("WBC", 1), ("PLT", 1), ("RBC", .6), ("HCT", .6), ("MCV", .6),
             ("NEUT", .6), ("LYMPH", .6))),
    "sero": (_coded("SERO", "Sérologies VIH / hépatite B", "L"), "SER^Sérum^HL70487",
             (("HIV", 1), ("HBSAG", 1))),
    "csf": (_coded("LCR", "Analyse du LCR", "L"), "CSF^Liquide céphalo-rachidien^HL70487",
            (("CSF_APP", 1), ("CSF_WBC", 1), ("CSF_CULT", 1))),
    "chem": (_coded("BIOCHIM", "Biochimie sanguine", "L"), "SER^Sérum^HL70487",
             (("GLU", 1), ("CREA", 1), ("ALT", .5))),
}
_PANELS = {"rdt": ("rdt",), "smear": ("smear",), "cbc": ("cbc",), "cbc_rdt": ("cbc", "rdt"),
           "sero": ("sero",), "csf": ("csf",), "chem": ("chem",),
           "big": ("cbc", "chem", "rdt", "sero")}
_PANEL_WEIGHTS = {
    "hospital": [("rdt", 28), ("smear", 10), ("cbc", 20), ("cbc_rdt", 10), ("sero", 10),
                 ("csf", 3), ("chem", 12), ("big", 7)],
    "reference_lab": [("rdt", 5), ("smear", 15), ("cbc", 10), ("cbc_rdt", 5), ("sero", 25),
                      ("csf", 20), ("chem", 10), ("big", 10)],
    "peripheral_unit": [("rdt", 60), ("smear", 10), ("cbc", 5), ("cbc_rdt", 5), ("sero", 20)],
}

# ---- billing (XOF). (code, label, unit price)
_CHARGES = {
    "CONS-GEN": ("Consultation de médecine générale", 1500),
    "CONS-PED": ("Consultation pédiatrique", 1500),
    "CONS-SPE": ("Consultation spécialisée", 5000),
    "LAB-GE": ("Goutte épaisse", 1000),
    "LAB-TDR": ("Test de diagnostic rapide paludisme", 500),
    "LAB-NFS": ("Numération formule sanguine", 3000),
    "LAB-GLY": ("Glycémie", 1500),
    "LAB-SERO": ("Sérologie VIH / Ag HBs", 2000),
    "IMG-RX": ("Radiographie du thorax", 10000),
    "IMG-ECHO": ("Échographie", 8000),
    "SOIN-PANS": ("Pansement simple", 1000),
    "CHIR-MIN": ("Petite chirurgie", 25000),
    "ACC-EUT": ("Accouchement eutocique", 15000),
    "HOSP-JOUR": ("Journée d'hospitalisation", 5000),
    "PHA-ALU": ("Artéméther-luméfantrine (CTA)", 1200),
    "PHA-AMOX": ("Amoxicilline 500 mg", 800),
    "PHA-PARA": ("Paracétamol 500 mg", 300),
    "PHA-SRO": ("Sels de réhydratation orale", 250),
    "PHA-CEFT": ("Ceftriaxone 1 g injectable", 1500),
}
_EXTRA_CHARGES = _wtab([("LAB-GE", 20), ("LAB-TDR", 20), ("LAB-NFS", 15), ("LAB-GLY", 8),
                        ("LAB-SERO", 8), ("IMG-RX", 6), ("IMG-ECHO", 6), ("SOIN-PANS", 8),
                        ("CHIR-MIN", 3), ("PHA-ALU", 10), ("PHA-AMOX", 8), ("PHA-PARA", 10)])
_PHARMA_CHARGES = ("PHA-ALU", "PHA-AMOX", "PHA-PARA", "PHA-SRO", "PHA-CEFT")
_FT1_CE = {code: (f"{code}^{label}^L", f"{code}^{label}^L") for code, (label, _p) in
           _CHARGES.items()}
_INSURERS = {
    "INAM": ("INAM-AMO^Assurance maladie obligatoire^L",
             "Institut National d'Assurance Maladie"),
    "CNSS": ("CNSS-AT^Risques professionnels^L", "Caisse Nationale de Sécurité Sociale"),
}

# ---- pharmacy: local code, label, national code (LNME = national essential medicines
# list), dosage form, give units, give amount, frequency, days, route
_DRUGS = (
    ("ALU2012", "Artéméther 20 mg + Luméfantrine 120 mg, comprimé", "LNME-0101", "CP", "cp",
     "4", "BID", 3, "PO"),
    ("ARTS60", "Artésunate 60 mg injectable", "LNME-0107", "INJ", "mg", "120", "Q12H", 3,
     "IV"),
    ("AMOX500", "Amoxicilline 500 mg, gélule", "LNME-0211", "GEL", "gel", "1", "TID", 7,
     "PO"),
    ("AMOXS125", "Amoxicilline 125 mg/5 mL, suspension buvable", "LNME-0212", "SUSP", "mL",
     "5", "TID", 7, "PO"),
    ("PARA500", "Paracétamol 500 mg, comprimé", "LNME-0305", "CP", "cp", "2", "TID", 3,
     "PO"),
    ("PARAS120", "Paracétamol 120 mg/5 mL, sirop", "LNME-0306", "SIR", "mL", "5", "QID", 3,
     "PO"),
    ("SRO", "Sels de réhydratation orale, sachet", "LNME-0410", "SACH", "sachet", "1", "QID",
     3, "PO"),
    ("ZINC20", "Zinc 20 mg, comprimé dispersible", "LNME-0411", "CP", "cp", "1", "QD", 10,
     "PO"),
    ("COTRI480", "Cotrimoxazole 480 mg, comprimé", "LNME-0220", "CP", "cp", "2", "BID", 5,
     "PO"),
    ("METRO250", "Métronidazole 250 mg, comprimé", "LNME-0231", "CP", "cp", "2", "TID", 7,
     "PO"),
    ("FERAF", "Fer + acide folique, comprimé", "LNME-0502", "CP", "cp", "1", "QD", 30, "PO"),
    ("CEFT1G", "Ceftriaxone 1 g, poudre injectable", "LNME-0240", "INJ", "g", "1", "QD", 5,
     "IV"),
    ("SP500", "Sulfadoxine 500 mg + Pyriméthamine 25 mg, comprimé", "LNME-0115", "CP", "cp",
     "3", "ONCE", 1, "PO"),
    ("TLD", "Ténofovir/Lamivudine/Dolutégravir 300/300/50 mg", "LNME-0620", "CP", "cp", "1",
     "QD", 30, "PO"),
    ("OXYT10", "Ocytocine 10 UI injectable", "LNME-0710", "INJ", "UI", "10", "ONCE", 1,
     "IM"),
    ("IBU400", "Ibuprofène 400 mg, comprimé", "LNME-0310", "CP", "cp", "1", "TID", 3, "PO"),
)
_DRUG_TABLE = _wtab([(d, w) for d, w in zip(
    _DRUGS, (25, 6, 14, 8, 18, 8, 8, 6, 6, 5, 6, 4, 4, 5, 2, 5))], 400)
_FREQ_PER_DAY = {"QD": 1, "BID": 2, "TID": 3, "QID": 4, "Q12H": 2, "ONCE": 1}
_ROUTES = {
    "IM": _coded("IM", "Intramusculaire", "HL70162", "C28161", "Intramusculaire", "NCIT"),
    "PO": _coded("PO", "Orale", "HL70162", "C38288", "Orale", "NCIT"),
    "ID": _coded("ID", "Intradermique", "HL70162", "C38238", "Intradermique", "NCIT"),
    "SC": _coded("SC", "Sous-cutanée", "HL70162", "C38299", "Sous-cutanée", "NCIT"),
    "IV": _coded("IV", "Intraveineuse", "HL70162", "C38276", "Intraveineuse", "NCIT"),
}

# ---- EPI vaccines: key, coded (CVX, or local when CVX has none), age window in days,
# amount mL, route, manufacturer. MR uses CVX 04 ("M/R"); 94 is MMRV, 03 is MMR.
_MVX_SII = "OTH^Serum Institute of India^MVX"
_VACCINES = (
    ("BCG", _coded("19", "BCG", "CVX", "BCG", "BCG", "L"), (0, 14), "0.05", "ID", _MVX_SII),
    ("VPO", _coded("02", "VPO (polio oral)", "CVX", "VPO", "VPO", "L"), (0, 110), "0.1",
     "PO", _MVX_SII),
    ("PENTA", _coded("102", "Pentavalent DTC-HepB-Hib", "CVX", "PENTA", "Penta", "L"),
     (42, 110), "0.5", "IM", _MVX_SII),
    ("PCV13", _coded("133", "Pneumocoque conjugué 13 (PCV13)", "CVX", "PCV13", "PCV13", "L"),
     (42, 110), "0.5", "IM", "PFR^Pfizer^MVX"),
    ("ROTA", _coded("119", "Rotavirus monovalent", "CVX", "ROTA", "Rota", "L"), (42, 80),
     "1.5", "PO", "SKB^GlaxoSmithKline^MVX"),
    ("VPI", _coded("10", "VPI (polio injectable)", "CVX", "VPI", "VPI", "L"), (98, 110),
     "0.5", "IM", _MVX_SII),
    ("RR", _coded("04", "Rougeole-Rubéole (RR)", "CVX", "RR", "RR", "L"), (270, 470), "0.5",
     "SC", _MVX_SII),
    ("VAA", _coded("37", "Fièvre jaune (VAA)", "CVX", "VAA", "VAA", "L"), (270, 300), "0.5",
     "SC", "PMC^Sanofi Pasteur^MVX"),
    ("MENA", _coded("MENA", "Méningocoque A conjugué (MenAfriVac)", "L"), (450, 480), "0.5",
     "IM", _MVX_SII),
    ("TD", _coded("09", "Td (femme enceinte)", "CVX", "TD", "Td", "L"), None, "0.5", "IM",
     _MVX_SII),
)
_VACCINE_TABLE = _wtab([(v, w) for v, w in zip(_VACCINES, (14, 22, 18, 14, 8, 5, 7, 5, 3, 8))])
_NIP001 = "00^Nouvel enregistrement^NIP001"

# ---- scheduling and documents
_APPT_REASONS = _wtab([(_coded("CPN", "Consultation prénatale", "L"), 30),
                       (_coded("ARV", "Suivi ARV", "L"), 15),
                       (_coded("VACC", "Séance de vaccination", "L"), 15),
                       (_coded("SUIVI", "Consultation de suivi", "L"), 30),
                       (_coded("ECHO", "Échographie", "L"), 10)], 100)
_NEW_APPT = "NEW^Nouveau rendez-vous^L"
_DOCS = tuple(
    (_coded(code, label, "LN"), kind, text, base64.b64encode(text.encode("utf-8")).decode())
    for code, label, kind, text in (
        ("18842-5", "Compte rendu d'hospitalisation", "DS",
         "Compte rendu de sortie. Paludisme grave traité par artésunate IV puis relais per os."
         " Évolution favorable. Contrôle dans 7 jours."),
        ("11488-4", "Note de consultation", "CN",
         "Consultation de suivi. Tension artérielle contrôlée. Poursuite du traitement."),
        ("11504-8", "Compte rendu opératoire", "OP",
         "Intervention réalisée sous anesthésie locale. Suites opératoires simples."),
    ))

_P8 = "|" * 8
_P13 = "|" * 13
_P17 = "|" * 17
_P25 = "|" * 25

_HMS_CACHE: list[str] = []


def _hms_table() -> list[str]:
    """'HHMMSS' for every second of a day: one list index instead of three int formats."""
    if not _HMS_CACHE:
        _HMS_CACHE.extend(f"{h:02d}{m:02d}{s:02d}" for h in range(24) for m in range(60)
                          for s in range(60))
    return _HMS_CACHE


# --------------------------------------------------------------------------------------
# Facility setup
# --------------------------------------------------------------------------------------
def _codec_name(charset: str | None) -> str:
    import codecs
    cs = (charset or "utf-8").strip()
    alias = {"8859/1": "iso-8859-1", "unicode utf-8": "utf-8", "8859/15": "iso-8859-15"}
    cs = alias.get(cs.lower(), cs)
    name = codecs.lookup(cs).name   # raises LookupError for unknown codecs
    return {"iso8859-1": "iso-8859-1", "latin-1": "iso-8859-1"}.get(name, name)


def _encodable(codec: str, names) -> tuple:
    out = []
    for n in names:
        try:
            n.encode(codec)
        except UnicodeEncodeError:
            continue
        out.append(n)
    return tuple(out)


def _source_path(fac: dict, code: str) -> PurePosixPath:
    path = None
    for src in fac.get("sources") or ():
        if isinstance(src, dict) and src.get("path"):
            if src.get("type", "folder") == "folder":
                path = src["path"]
                break
            path = path or src["path"]
    p = PurePosixPath(str(path or f"inbound/{code}").replace("\\", "/"))
    # Files must stay under out_dir whatever the config says.
    if p.is_absolute() or ".." in p.parts or not p.parts:
        raise ValueError(f"facility {code}: sources.path must be a relative path inside the "
                         f"data directory, got {path!r}")
    return p


def _family(mtype: str, ftype: str) -> str:
    head = mtype[:3]
    if head in ("ORM", "OML", "ORU"):
        return "lab"
    if head == "VXU":
        return "imm"
    if head in ("RDE", "RDS") or (head == "DFT" and ftype == "pharmacy"):
        return "rx"
    return "adt"


def _version_for(mtype: str, base: str) -> str:
    i = VERSIONS.index(base)
    if mtype == "ORM^O01":                      # ORM disappears after 2.4
        i = min(i, 2)
    elif mtype == "OML^O21":                    # OML exists from 2.5
        i = max(i, 3)
    elif mtype in ("RDE^O11", "RDS^O13"):       # O11/O13 trigger events appear in 2.4
        i = max(i, 2)
    return VERSIONS[i]


class _TypeInfo:
    __slots__ = ("mtype", "version", "cwe", "msh9", "app", "tz", "build", "evn", "zcat",
                 "event")

    def __init__(self, mtype, version, app, tz, build):
        self.mtype, self.version, self.app, self.tz, self.build = mtype, version, app, tz, build
        self.cwe = 1 if VERSIONS.index(version) >= 3 else 0
        struct = _STRUCTURE.get(mtype, "ADT_A01")
        self.msh9 = mtype if version == "2.3" else f"{mtype}^{struct}"
        self.event = mtype[4:]
        self.evn = "EVN||" if self.cwe else f"EVN|{self.event}|"
        self.zcat = _ZCAT.get(mtype[:3], "")


class _Patient:
    __slots__ = ("mrn", "pid3", "fam", "given", "second", "dob", "sex", "age0", "addr",
                 "phone", "lang", "marital", "ins", "nk1", "deceased", "pid")


class _Visit:
    __slots__ = ("vn", "pat", "cls", "ward", "loc", "prior", "att", "adm_type", "admit",
                 "disc", "disp", "dx", "head")


class _Fac:
    """Static profile of one facility plus its mutable patient/visit state."""

    def __init__(self, eng: "_Engine", cfg: dict):
        if not isinstance(cfg, dict) or not cfg.get("code"):
            raise ValueError(f"facility entry without a code: {cfg!r:.80}")
        code = str(cfg["code"]).strip()
        self.code = code
        ftype = str(cfg.get("type") or "clinic")
        self.ftype = ftype if ftype in _VERSION_CANDIDATES else "clinic"
        self.region = str(cfg.get("region") or "")
        self.district = str(cfg.get("district") or "")
        self.org = str(cfg.get("dhis2_org_unit") or code)
        try:
            self.codec = _codec_name(cfg.get("charset"))
            "éèëôïàç".encode(self.codec)
        except (LookupError, UnicodeEncodeError) as exc:
            raise ValueError(f"facility {code}: unsupported charset "
                             f"{cfg.get('charset')!r} ({exc})") from None
        if self.codec == "utf-8":
            msh18 = "UNICODE UTF-8" if self.ftype in _UTF8_DECLARING_TYPES else ""
        else:
            import codecs
            msh18 = _HL7_CHARSET.get(codecs.lookup(self.codec).name, "")
        self.msh_tail = f"||{msh18}" if msh18 else ""
        self.relpath = _source_path(cfg, code)
        self.off = _utc_offset(cfg.get("timezone"), eng.start)
        self.tz = _fmt_offset(self.off)

        wh = cfg.get("working_hours") or (0, 24)
        try:
            h0, h1 = int(wh[0]), int(wh[1])
        except (TypeError, ValueError, IndexError):
            raise ValueError(f"facility {code}: working_hours must be [start, end], "
                             f"got {wh!r}") from None
        if not (0 <= h0 <= 24 and 0 <= h1 <= 24):
            raise ValueError(f"facility {code}: working_hours out of 0..24: {wh!r}")
        h0 %= 24
        h1 = h1 if h1 != h0 else h0 + 24
        hours = [h % 24 for h in range(h0, h1 if h1 > h0 else h1 + 24)]
        self.hours = _wtab([(h * 3600, _HOUR_WEIGHT[h]) for h in hours], 480)

        crc = zlib.crc32(code.encode("utf-8"))
        cand = _VERSION_CANDIDATES[self.ftype]
        apps = _APPS[self.ftype]
        fam_version = {k: v[crc % len(v)] for k, v in cand.items()}
        weights = dict(_BASE_TYPE_WEIGHTS)
        weights.update(_TYPE_WEIGHT_OVERRIDES.get(self.ftype, {}))
        self.info: dict[str, _TypeInfo] = {}
        pairs = []
        for raw_type in cfg.get("message_types") or ():
            mtype = str(raw_type).strip().upper()
            if mtype in self.info:
                continue
            build = eng.builder(mtype)
            if build is None:       # a type this generator cannot produce is skipped
                continue
            fam = _family(mtype, self.ftype)
            app = apps[fam]
            self.info[mtype] = _TypeInfo(mtype, _version_for(mtype, fam_version[fam]), app,
                                         self.tz if app in _APPS_WITH_TZ else "", build)
            pairs.append((mtype, weights.get(mtype, _UNKNOWN_ADT_WEIGHT)))
        self.types = _wtab(pairs, 1000) if pairs else ()
        self.weight = FACILITY_WEIGHT.get(self.ftype, 5) if pairs else 0
        self.batch_ok = self.ftype in _BATCH_TYPES
        self.zrate = _ZSEG_RATE.get(self.ftype, 0.0)
        self.ztg = f"ZTG|1|{self.org}|{self.region}|{self.district}|"
        self.app = apps["lab" if self.ftype == "reference_lab" else
                        "rx" if self.ftype == "pharmacy" else "adt"]
        panel_key = ("reference_lab" if self.ftype == "reference_lab" else
                     "peripheral_unit" if self.ftype == "peripheral_unit" else "hospital")
        self.panels = _wtab(_PANEL_WEIGHTS[panel_key], 200)
        self.reuse = 0.5 if self.ftype in ("reference_lab", "pharmacy") else 0.85

        # names this facility's charset can carry (Latin-1 files cannot hold ɖ ƒ ɣ ŋ ɔ ɛ ʋ)
        self.family = _encodable(self.codec, _FAMILY)
        self.given_m = _encodable(self.codec, _GIVEN_M + _GIVEN_U)
        self.given_f = _encodable(self.codec, _GIVEN_F + _GIVEN_U)
        city, quarters = _CITIES.get(self.district, (self.district or self.region or "Lomé",
                                                     ("Centre",)))
        self.city, self.quarters = city, quarters
        self.other_cities = tuple((c, d) for d, (c, _q) in _CITIES.items()
                                  if d != self.district)
        rnd = eng.rnd
        self.mrn_base = 1_000_000 * (1 + crc % 89)
        self.doctors = tuple(
            f"D{(crc % 900) + 100:03d}{i:02d}^{_pick(rnd, self.family)}^"
            f"{_pick(rnd, self.given_m if rnd() < .5 else self.given_f)}^^^Dr"
            for i in range(8))
        self.lots = {v[0]: tuple(f"{v[0]}{2026 - int(rnd() * 2)}{chr(65 + int(rnd() * 6))}"
                                 f"{int(rnd() * 9000) + 1000}" for _ in range(2))
                     for v in _VACCINES}

        # mutable state
        self.patients: list[_Patient] = []
        self.mrn_seq = 0
        self.visit_seq = 0
        self.order_seq = 0
        self.doc_seq = 0
        self.ctrl = 0
        self.open: list[_Visit] = []                   # admitted, not yet discharged
        self.recent: deque[_Visit] = deque(maxlen=400)  # visits clinical messages reuse
        self.pending_orders: deque = deque(maxlen=300)
        self.pending_rx: deque = deque(maxlen=300)


def _pick(rnd, seq):
    return seq[int(rnd() * len(seq))]


def _utc_offset(tz: str | None, start: date) -> int:
    if not tz:
        return 0
    try:
        from zoneinfo import ZoneInfo
        off = ZoneInfo(str(tz)).utcoffset(datetime.combine(start, time(12)))
    except Exception:   # unknown zone or no tz database: Togo is UTC+0 anyway
        return 0
    return int(off.total_seconds()) if off is not None else 0


def _fmt_offset(off: int) -> str:
    sign = "-" if off < 0 else "+"
    m = abs(off) // 60
    return f"{sign}{m // 60:02d}{m % 60:02d}"


def _allocate(total: int, weights: list[float]) -> list[int]:
    """Split `total` proportionally to weights with largest remainders (exact sum)."""
    wsum = sum(weights)
    if total <= 0 or wsum <= 0:
        return [0] * len(weights)
    raw = [total * w / wsum for w in weights]
    out = [int(x) for x in raw]
    order = sorted(range(len(weights)), key=lambda i: (-(raw[i] - out[i]), i))
    for i in order[: total - sum(out)]:
        out[i] += 1
    return out


# --------------------------------------------------------------------------------------
# Engine
# --------------------------------------------------------------------------------------
@dataclass(slots=True)
class _FilePlan:
    relpath: PurePosixPath
    batch: bool
    header: bytes
    trailer: bytes
    messages: list[GeneratedMessage]


class _Engine:
    def __init__(self, facilities: list[dict], seed: int, start: date):
        self.rng = random.Random(seed)
        self.rnd = self.rng.random
        self.gauss = self.rng.gauss
        self.start = start
        self.start_ord = start.toordinal()
        self.base_dt = datetime.combine(start, time())
        self.hms = _hms_table()
        self.days: dict[int, str] = {}
        self.facs = [_Fac(self, f) for f in facilities]
        codes = [f.code for f in self.facs]
        dup = sorted({c for c in codes if codes.count(c) > 1})
        if dup:
            raise ValueError(f"duplicate facility code(s): {', '.join(dup)}")

    # ---- time helpers (seconds since start-day midnight, facility local time)
    def day(self, d: int) -> str:
        s = self.days.get(d)
        if s is None:
            s = self.days[d] = date.fromordinal(self.start_ord + d).strftime("%Y%m%d")
        return s

    def ts(self, sec: int) -> str:
        d, r = divmod(sec, 86400)
        s = self.days.get(d)
        if s is None:
            s = self.day(d)
        return s + self.hms[r]

    def builder(self, mtype: str) -> Callable | None:
        fn = {
            "ADT^A01": self._a01, "ADT^A02": self._a02, "ADT^A03": self._a03,
            "ADT^A04": self._a04, "ADT^A08": self._a08, "ADT^A11": self._a11,
            "ADT^A28": self._a28, "ADT^A31": self._a31, "ADT^A40": self._a40,
            "ORM^O01": self._order, "OML^O21": self._order, "ORU^R01": self._oru,
            "DFT^P03": self._dft, "VXU^V04": self._vxu, "RDE^O11": self._rde,
            "RDS^O13": self._rds, "SIU^S12": self._siu, "MDM^T02": self._mdm,
        }.get(mtype)
        if fn is None and mtype.startswith("ADT^A") and len(mtype) == 7:
            fn = self._adt_generic
        return fn

    # ---- files
    def files(self, days: int, per_day: int, broken_share: float,
              messages_per_file: int) -> Iterator[_FilePlan]:
        counts = _allocate(per_day, [f.weight for f in self.facs])
        rnd = self.rnd
        for d in range(days):
            for fac, n in zip(self.facs, counts):
                if not n:
                    continue
                fac.ctrl = 0
                day0 = d * 86400
                hours = fac.hours
                nh = len(hours)
                secs = sorted(day0 + hours[int(rnd() * nh)] + int(rnd() * 3600)
                              for _ in range(n))
                dstr = self.day(d)
                # broken messages are kept out of batch files, so the other files carry more
                p_broken = broken_share / (1.0 - _BATCH_SHARE) if fac.batch_ok else broken_share
                p_broken = min(1.0, p_broken)
                for fileno, i in enumerate(range(0, n, messages_per_file), 1):
                    chunk = secs[i:i + messages_per_file]
                    term = _TERMINATORS[int(rnd() * len(_TERMINATORS))]
                    batch = fac.batch_ok and rnd() < _BATCH_SHARE
                    p = 0.0 if batch else p_broken
                    msgs = [self.message(fac, s, dstr, term, p) for s in chunk]
                    # Segments without an MSH after another message are, to any receiver, the tail
                    # of that message; a header-less message is only recognisable at the start of
                    # a file, which is where it is put so every generated message is countable.
                    msgs = [m for m in msgs if m.broken == "NO_MSH"] + [m for m in msgs if m.broken != "NO_MSH"]
                    name = f"{_code_safe(fac.code)}_{dstr}_{fileno:04d}.hl7"
                    header = trailer = b""
                    if batch:
                        fts = self.ts(chunk[-1] + 60)
                        ctl = f"{fac.code}-{dstr}-{fileno:04d}"
                        header = (f"FHS|^~\\&|{fac.app}|{fac.code}|HL7ICS|MOH-TG|{fts}||{name}||"
                                  f"F{ctl}{term}BHS|^~\\&|{fac.app}|{fac.code}|HL7ICS|MOH-TG|"
                                  f"{fts}||{name}||B{ctl}{term}").encode(fac.codec)
                        trailer = f"BTS|{len(msgs)}{term}FTS|1{term}".encode(fac.codec)
                    yield _FilePlan(fac.relpath / name, batch, header, trailer, msgs)

    def message(self, fac: _Fac, sec: int, dstr: str, term: str, p_broken: float
                ) -> GeneratedMessage:
        rnd = self.rnd
        types = fac.types
        ti = fac.info[types[int(rnd() * len(types))]]
        broken = None
        if p_broken and rnd() < p_broken:
            broken = _BROKEN_TABLE[int(rnd() * len(_BROKEN_TABLE))]
        segs = ti.build(fac, sec, ti)
        if fac.zrate and rnd() < fac.zrate:
            segs.append(fac.ztg + ti.zcat)
        fac.ctrl += 1
        msh9 = ti.msh9
        ctrl = f"{fac.code}-{dstr}-{fac.ctrl:06d}"
        if broken is not None:
            if broken == "EMPTY_MSH9":
                msh9 = ""
            elif broken == "EMPTY_MSH10":
                ctrl = ""
            else:
                segs = _break(segs, broken, rnd)
        msh = (f"MSH|^~\\&|{ti.app}|{fac.code}|HL7ICS|MOH-TG|{self.ts(sec)}{ti.tz}||{msh9}|"
               f"{ctrl}|P|{ti.version}|||AL|NE{fac.msh_tail}")
        if broken == "NO_MSH":
            text = term.join(segs) + term
        else:
            text = msh + term + term.join(segs) + term
        return GeneratedMessage(fac.code, ti.mtype, ti.version, text.encode(fac.codec),
                                fac.codec, broken,
                                self.base_dt + timedelta(seconds=sec - fac.off))

    # ---- patients and visits
    def new_patient(self, fac: _Fac, sec: int, sex: str | None = None,
                    age_days: int | None = None) -> _Patient:
        rnd = self.rnd
        p = _Patient()
        fac.mrn_seq += 1
        p.mrn = str(fac.mrn_base + fac.mrn_seq)
        if sex is None:
            r = rnd()
            sex = "F" if r < 0.51 else "M" if r < 0.99 else "U"
        p.sex = sex
        if age_days is None:
            lo, hi = _AGE_BANDS[int(rnd() * len(_AGE_BANDS))]
            age_days = lo + int(rnd() * (hi - lo))
        today = sec // 86400
        p.age0 = today - age_days          # birth day index relative to start
        dob = self.day(p.age0)
        if age_days > 14600:               # older adults often only know the year
            r = rnd()
            dob = dob[:4] if r < 0.25 else dob[:6] if r < 0.35 else dob
        p.dob = dob
        p.fam = _pick(rnd, fac.family)
        given = fac.given_f if sex == "F" else fac.given_m if sex == "M" else \
            (fac.given_f if rnd() < .5 else fac.given_m)
        p.given = _pick(rnd, given)
        p.second = _pick(rnd, given) if rnd() < 0.15 else ""
        if p.second == p.given:
            p.second = ""
        ins = None
        r = rnd()
        if age_days >= 6570 or r < 0.2:
            if r < 0.22:
                ins = ("INAM", f"{int(rnd() * 900_000_000) + 100_000_000}")
            elif r < 0.30:
                ins = ("CNSS", f"{int(rnd() * 9_000_000_000) + 1_000_000_000}")
        p.ins = ins
        p.pid3 = f"{p.mrn}^^^{fac.code}^MR" + (f"~{ins[1]}^^^{ins[0]}^MB" if ins else "")
        self._contact(fac, p)
        p.lang = _LANG[int(rnd() * len(_LANG))]
        p.marital = _MARITAL[int(rnd() * len(_MARITAL))] if age_days >= 6570 else ""
        p.nk1 = None
        if age_days < 5475:
            mother = f"{p.fam}^{_pick(rnd, fac.given_f)}"
            p.nk1 = f"NK1|1|{mother}|MTH^Mère^HL70063||{p.phone}"
        p.deceased = False
        p.pid = [None, None]
        fac.patients.append(p)
        return p

    def _contact(self, fac: _Fac, p: _Patient) -> None:
        rnd = self.rnd
        if rnd() < 0.88:
            city, district = fac.city, fac.district
            street = (f"Rue {int(rnd() * 450) + 1}" if rnd() < 0.6 else
                      f"Quartier {_pick(rnd, fac.quarters)}")
        else:
            city, district = _pick(rnd, fac.other_cities) if fac.other_cities else \
                (fac.city, fac.district)
            street = f"Rue {int(rnd() * 450) + 1}"
        p.addr = f"{street}^^{city}^{district}^^TG"
        p.phone = (f"+228{_pick(rnd, _PHONE_PREFIX)}{int(rnd() * 1_000_000):06d}"
                   if rnd() < 0.92 else "")
        p.pid = [None, None]

    def pid(self, p: _Patient, cwe: int) -> str:
        s = p.pid[cwe]
        if s is None:
            if cwe:
                name = f"{p.fam}^{p.given}^{p.second}^^^^L"
                phone = f"{p.phone}^PRN^CP" if p.phone else ""
            else:
                name = f"{p.fam}^{p.given}^{p.second}" if p.second else f"{p.fam}^{p.given}"
                phone = p.phone
            s = p.pid[cwe] = (f"PID|1||{p.pid3}||{name}||{p.dob}|{p.sex}|||{p.addr}||{phone}||"
                              f"{p.lang}|{p.marital}")
        return s

    def pick_patient(self, fac: _Fac, sec: int, returning: float = 0.25) -> _Patient:
        pats = fac.patients
        if pats and self.rnd() < returning:
            p = pats[int(self.rnd() * len(pats))]
            if not p.deceased:
                return p
        return self.new_patient(fac, sec)

    def new_visit(self, fac: _Fac, sec: int, cls: str, pat: _Patient | None = None,
                  admit: int | None = None) -> _Visit:
        rnd = self.rnd
        if pat is None:
            pat = self.pick_patient(fac, sec)
        v = _Visit()
        fac.visit_seq += 1
        v.vn = f"V{fac.visit_seq:07d}^^^{fac.code}^VN"
        v.pat = pat
        v.cls = cls
        age = sec // 86400 - pat.age0
        if age < 5475:
            tab = _DX_CHILD
        elif pat.sex == "F" and age < 18250:
            tab = _DX_WOMAN
        else:
            tab = _DX_ADULT
        v.dx = tab[int(rnd() * len(tab))]
        if cls == "I":
            ward = _DX[v.dx][1] or ("PED" if age < 5475 else "MED")
            v.loc = f"{ward}^{int(rnd() * 30) + 101}^{int(rnd() * 4) + 1}^{fac.code}"
            v.adm_type = "L" if v.dx == "O80" else ("E" if rnd() < 0.45 else "R")
        elif cls == "E":
            ward = "URG"
            v.loc = f"URG^BOX{int(rnd() * 12) + 1}^^{fac.code}"
            v.adm_type = "E"
        else:
            ward = "CONS"
            v.loc = f"CONS^C{int(rnd() * 15) + 1}^^{fac.code}"
            v.adm_type = "R"
        v.ward = ward
        v.prior = ""
        v.att = _pick(rnd, fac.doctors)
        v.admit = sec if admit is None else admit
        v.disc = None
        v.disp = ""
        v.head = None
        fac.recent.append(v)
        return v

    def pv1(self, v: _Visit) -> str:
        head = v.head
        if head is None:
            head = v.head = "|".join((
                "PV1", "1", v.cls, v.loc, v.adm_type, "", v.prior, v.att, "", "",
                _WARD_SERVICE.get(v.ward, v.ward), "", "", "", "", "", "", "", "", v.vn))
        if v.disc is None:
            return f"{head}{_P25}{self.ts(v.admit)}"
        return f"{head}{_P17}{v.disp}{_P8}{self.ts(v.admit)}|{self.ts(v.disc)}"

    def service_visit(self, fac: _Fac, sec: int) -> _Visit:
        """Visit for an order, result, charge or dispense: mostly an existing one."""
        rec = fac.recent
        if rec and self.rnd() < fac.reuse:
            return rec[int(self.rnd() * len(rec))]
        return self.new_visit(fac, sec, "O" if self.rnd() < 0.8 else "E",
                              admit=sec - int(self.rnd() * 3600))

    def dg1(self, v: _Visit, ti: _TypeInfo, sec: int, kind: str) -> str:
        return f"{_DG1[v.dx][ti.cwe]}{self.ts(sec)}|{kind}"

    # ---- ADT
    def _adt_head(self, ti: _TypeInfo, sec: int, p: _Patient) -> list[str]:
        return [ti.evn + self.ts(sec), self.pid(p, ti.cwe)]

    def _a01(self, fac, sec, ti):
        v = self.new_visit(fac, sec, "I", self.pick_patient(fac, sec, 0.2))
        fac.open.append(v)
        segs = self._adt_head(ti, sec, v.pat)
        if v.pat.nk1:
            segs.append(v.pat.nk1)
        segs.append(self.pv1(v))
        segs.append(self.dg1(v, ti, sec, "A"))
        return segs

    def _a04(self, fac, sec, ti):
        v = self.new_visit(fac, sec, "O" if self.rnd() < 0.8 else "E",
                           self.pick_patient(fac, sec, 0.3))
        segs = self._adt_head(ti, sec, v.pat)
        if v.pat.nk1:
            segs.append(v.pat.nk1)
        segs.append(self.pv1(v))
        if self.rnd() < 0.6:
            segs.append(self.dg1(v, ti, sec, "W"))
        return segs

    def _admitted(self, fac: _Fac, sec: int, min_stay: int, discharge: bool) -> _Visit:
        """An open inpatient visit admitted at least `min_stay` seconds ago (removed from
        the open list when discharged); when none exists the patient was admitted before
        the generated window."""
        rnd = self.rnd
        opened = fac.open
        if opened:
            # the longest-staying patients are the likeliest to leave
            i = int(rnd() * rnd() * len(opened))
            if opened[i].admit > sec - min_stay:
                i = 0
            if opened[i].admit <= sec - min_stay:
                return opened.pop(i) if discharge else opened[i]
        v = self.new_visit(fac, sec, "I", self.pick_patient(fac, sec, 0.2),
                           admit=sec - min_stay - int(rnd() * 4 * 86400))
        if not discharge:
            opened.insert(0, v)
        return v

    def _a02(self, fac, sec, ti):
        v = self._admitted(fac, sec, 3600, discharge=False)
        v.prior = v.loc
        ward = v.ward
        if self.rnd() < 0.4 and ward not in ("MAT", "PED"):
            ward = v.ward = "CHIR" if ward == "MED" else "MED"
        v.loc = f"{ward}^{int(self.rnd() * 30) + 101}^{int(self.rnd() * 4) + 1}^{fac.code}"
        v.head = None
        return [*self._adt_head(ti, sec, v.pat), self.pv1(v)]

    def _a03(self, fac, sec, ti):
        v = self._admitted(fac, sec, 4 * 3600, discharge=True)
        v.disc = sec
        v.disp = _DISPOSITION[int(self.rnd() * len(_DISPOSITION))]
        p = v.pat
        pid = self.pid(p, ti.cwe)
        if v.disp == "20":
            p.deceased = True
            # PID-29 death date/time, PID-30 death indicator
            pid = f"{pid}{_P13}{self.ts(sec)}|Y"
        return [ti.evn + self.ts(sec), pid, self.pv1(v), self.dg1(v, ti, sec, "F")]

    def _a08(self, fac, sec, ti):
        v = fac.recent[int(self.rnd() * len(fac.recent))] if fac.recent else \
            self.new_visit(fac, sec, "O")
        if self.rnd() < 0.3:
            self._contact(fac, v.pat)        # the usual reason for an update
        segs = [*self._adt_head(ti, sec, v.pat), self.pv1(v)]
        if self.rnd() < 0.3:
            segs.append(self.dg1(v, ti, sec, "W"))
        return segs

    def _a11(self, fac, sec, ti):
        opened = fac.open
        if opened and opened[-1].admit >= sec - 2 * 86400:
            v = opened.pop()
        else:
            v = self.new_visit(fac, sec, "I", admit=sec - 1800)
        return [*self._adt_head(ti, sec, v.pat), self.pv1(v)]

    def _a28(self, fac, sec, ti):
        return [*self._adt_head(ti, sec, self.new_patient(fac, sec)), "PV1|1|N"]

    def _a31(self, fac, sec, ti):
        p = self.pick_patient(fac, sec, 0.9)
        self._contact(fac, p)
        return [*self._adt_head(ti, sec, p), "PV1|1|N"]

    def _a40(self, fac, sec, ti):
        p = self.pick_patient(fac, sec, 0.9)
        fac.mrn_seq += 1     # the duplicate record registered by mistake
        dup = f"{fac.mrn_base + fac.mrn_seq}^^^{fac.code}^MR"
        mrg = f"MRG|{dup}" if ti.version == "2.3" else \
            f"MRG|{dup}||||||{p.fam}^{p.given}"
        return [*self._adt_head(ti, sec, p), mrg]

    def _adt_generic(self, fac, sec, ti):
        v = self.service_visit(fac, sec)
        return [*self._adt_head(ti, sec, v.pat), self.pv1(v)]

    # ---- laboratory
    def _placer(self, fac: _Fac) -> str:
        fac.order_seq += 1
        return f"CMD{fac.order_seq:07d}"

    def _order(self, fac, sec, ti):
        """ORM^O01 (<= 2.4) or OML^O21 (>= 2.5); the order is remembered so a later
        ORU reports on the same patient, visit and placer number."""
        rnd = self.rnd
        v = self.service_visit(fac, sec)
        panel = fac.panels[int(rnd() * len(fac.panels))]
        placer = self._placer(fac)
        t = self.ts(sec)
        doc = v.att
        segs = [self.pid(v.pat, ti.cwe), self.pv1(v)]
        cwe = ti.cwe
        for i, g in enumerate(_PANELS[panel], 1):
            svc, spec, _tests = _GROUPS[g]
            pl = f"{placer}-{i}^{ti.app}"
            if cwe:
                segs.append(f"ORC|NW|{pl}|||||||{t}|||{doc}")
                segs.append(f"OBR|{i}|{pl}||{svc[1]}|||{t}|||||||||{doc}")
                segs.append(f"SPM|1|S{placer[3:]}{i}&{ti.app}||{spec}{_P13}{t}")
            else:
                segs.append(f"ORC|NW|{pl}|||||^^^{t}^^R||{t}|||{doc}")
                segs.append(f"OBR|{i}|{pl}||{svc[0]}|||{t}|||||||||{doc}")
        fac.pending_orders.append((v, placer, panel, sec))
        return segs

    def _oru(self, fac, sec, ti):
        rnd = self.rnd
        gauss = self.gauss
        cwe = ti.cwe
        pend = fac.pending_orders
        if pend and rnd() < 0.7:
            v, placer, panel, osec = pend.popleft()
            coll = osec + int(rnd() * (sec - osec))
        else:
            v = self.service_visit(fac, sec)
            panel = fac.panels[int(rnd() * len(fac.panels))]
            placer = self._placer(fac)
            coll = sec - 1200 - int(rnd() * 6 * 3600)
        ct = self.ts(coll)
        rt = self.ts(sec)
        doc = v.att
        app = ti.app
        vt_cw = "CWE" if cwe else "CE"
        segs = [self.pid(v.pat, cwe), self.pv1(v)]
        groups = _PANELS[panel]
        positive = False
        for gi, g in enumerate(groups, 1):
            svc, spec, tests = _GROUPS[g]
            pl = f"{placer}-{gi}^{app}"
            fl = f"R{placer[3:]}{gi}^{app}"
            segs.append(f"ORC|RE|{pl}|{fl}||CM" if cwe else f"ORC|RE|{pl}|{fl}||CM||^^^{ct}^^R")
            # before 2.5, specimen source is OBR-15 and timing OBR-27; 2.5 moved both out
            segs.append(f"OBR|{gi}|{pl}|{fl}|{svc[cwe]}|||{ct}|||||||{ct}|"
                        f"{'' if cwe else spec}|{doc}||||||{rt}|||F"
                        f"{'' if cwe else f'||^^^{ct}^^R'}")
            k = 0
            for key, prob in tests:
                if prob < 1 and rnd() >= prob:
                    continue
                t = _T[key]
                k += 1
                if t.kind == "DN":
                    if positive:
                        segs.append(f"OBX|{k}|NM|{t.code[0]}||{int(10 ** (2 + rnd() * 3.5))}|"
                                    f"{t.units[cwe]}|{t.rng}|H|||F|||{ct}")
                    else:
                        segs.append(f"OBX|{k}|NM|{t.code[0]}||0|{t.units[cwe]}|{t.rng}|N"
                                    f"|||F|||{ct}")
                elif t.kind == "NM":
                    x = t.mean + t.sd * gauss()
                    if x < t.vmin:
                        x = t.vmin
                    val = t.fmt(x)
                    if rnd() < 0.003:                # some analysers export decimal commas
                        val = val.replace(".", ",")
                    flag = "H" if x > t.hi else "L" if x < t.lo else "N"
                    segs.append(f"OBX|{k}|NM|{t.code[0]}||{val}|{t.units[cwe]}|{t.rng}|{flag}"
                                f"|||F|||{ct}")
                else:
                    positive = rnd() < t.pos_rate
                    if positive:
                        val = t.pos[int(rnd() * len(t.pos))][cwe]
                        flag = "A"
                    else:
                        val = t.neg[cwe]
                        flag = "N"
                    segs.append(f"OBX|{k}|{vt_cw}|{t.code[0]}||{val}|||{flag}|||F|||{ct}")
            if gi == len(groups) and rnd() < 0.15:
                k += 1
                segs.append(f"OBX|{k}|TX|{_COMMENT_CODE[0]}||"
                            f"{_COMMENTS[int(rnd() * len(_COMMENTS))]}||||||F|||{ct}")
            if cwe:
                segs.append(f"SPM|1|S{placer[3:]}{gi}&{app}||{spec}{_P13}{ct}")
        return segs

    # ---- billing
    def _dft(self, fac, sec, ti):
        rnd = self.rnd
        cwe = ti.cwe
        t = self.ts(sec)
        if fac.ftype == "pharmacy":
            v = self.service_visit(fac, sec)
            codes = [_pick(rnd, _PHARMA_CHARGES) for _ in range(1 + int(rnd() * 3))]
            qtys = [1 + int(rnd() * 3) for _ in codes]
        else:
            v = self.service_visit(fac, sec)
            if v.cls == "I":
                days = max(1, ((v.disc or sec) - v.admit) // 86400)
                codes = ["HOSP-JOUR", "CONS-SPE" if rnd() < 0.3 else "CONS-GEN"]
                qtys = [days, 1]
                if v.dx == "O80":
                    codes.append("ACC-EUT")
                    qtys.append(1)
            else:
                age = sec // 86400 - v.pat.age0
                codes = ["CONS-PED" if age < 5475 else
                         "CONS-SPE" if rnd() < 0.2 else "CONS-GEN"]
                qtys = [1]
            for _ in range(int(rnd() * 4)):
                codes.append(_EXTRA_CHARGES[int(rnd() * len(_EXTRA_CHARGES))])
                qtys.append(1)
        segs = [ti.evn + t, self.pid(v.pat, cwe), self.pv1(v)]
        for i, (code, qty) in enumerate(zip(codes, qtys), 1):
            price = _CHARGES[code][1]
            segs.append(f"FT1|{i}|||{t}|{t}|CG|{_FT1_CE[code][cwe]}|||{qty}|{price * qty}&XOF|"
                        f"{price}&XOF|{v.ward}")
        if fac.ftype != "pharmacy":
            segs.append(self.dg1(v, ti, v.admit, "F" if v.disc is not None else "W"))
        p = v.pat
        if p.ins is not None and rnd() < 0.9:
            org, member = p.ins
            plan, org_name = _INSURERS[org]
            f = [""] * (50 if cwe else 37)
            f[0], f[1], f[2], f[3], f[4] = "IN1", "1", plan, org, org_name
            f[16] = f"{p.fam}^{p.given}"
            f[17] = "SEL" if ti.version == "2.3" else "SEL^Lui-même^HL70063"
            f[36] = member
            if cwe:
                f[49] = f"{member}^^^{org}^MB"
            segs.append("|".join(f))
        return segs

    # ---- pharmacy
    def _rde(self, fac, sec, ti):
        rnd = self.rnd
        cwe = ti.cwe
        v = self.service_visit(fac, sec)
        t = self.ts(sec)
        placer = self._placer(fac)
        segs = [self.pid(v.pat, cwe), self.pv1(v)]
        for i in range(1, 2 + int(rnd() * rnd() * 3)):
            drug = _DRUG_TABLE[int(rnd() * len(_DRUG_TABLE))]
            local, label, national, form, unit, dose, freq, days, route = drug
            code = f"{local}^{label}^L^{national}^{label}^LNME"
            qty = int(dose) * _FREQ_PER_DAY[freq] * days if dose.isdigit() else 1
            rxno = f"RX{placer[3:]}{i}"
            end = self.ts(sec + days * 86400)
            segs.append(f"ORC|NW|{placer}-{i}^{ti.app}|||||||{t}|||{v.att}")
            segs.append(f"RXE|1^{freq}^^{t}^{end}|{code}|{dose}||{unit}|{form}||||{qty}|{unit}|0"
                        f"||PH{fac.code[-3:]}01|{rxno}|0")
            segs.append(f"RXR|{_ROUTES[route][cwe]}")
            fac.pending_rx.append((v, f"{placer}-{i}", drug, code, qty, rxno))
        return segs

    def _rds(self, fac, sec, ti):
        rnd = self.rnd
        cwe = ti.cwe
        pend = fac.pending_rx
        if pend and rnd() < 0.8:
            v, placer, drug, code, qty, rxno = pend.popleft()
        else:
            v = self.service_visit(fac, sec)
            placer = self._placer(fac) + "-1"
            drug = _DRUG_TABLE[int(rnd() * len(_DRUG_TABLE))]
            code = f"{drug[0]}^{drug[1]}^L^{drug[2]}^{drug[1]}^LNME"
            qty = 10
            rxno = f"RX{placer[3:]}"
        t = self.ts(sec)
        return [self.pid(v.pat, cwe), self.pv1(v),
                f"ORC|RE|{placer}^{ti.app}|D{placer[3:]}^{ti.app}||CM",
                f"RXD|1|{code}|{t}|{qty}|{drug[4]}|{drug[3]}|{rxno}|0||PH{fac.code[-3:]}01",
                f"RXR|{_ROUTES[drug[8]][cwe]}"]

    # ---- immunization
    def _vxu(self, fac, sec, ti):
        rnd = self.rnd
        cwe = ti.cwe
        key, coded, window, amount, route, mfr = _VACCINE_TABLE[int(rnd() * len(_VACCINE_TABLE))]
        if window is None:       # Td: women of child-bearing age
            p = self.new_patient(fac, sec, "F", 6570 + int(rnd() * 7000))
        else:
            p = self.new_patient(fac, sec, None, window[0] + int(rnd() * (window[1] - window[0])))
        t = self.ts(sec)
        fac.order_seq += 1
        segs = [self.pid(p, cwe)]
        if p.nk1:
            segs.append(p.nk1)
        if cwe:
            segs.append(f"ORC|RE||V{fac.order_seq:07d}^{ti.app}")
        lot = _pick(rnd, fac.lots[key])
        exp = self.day(sec // 86400 + 180 + int(rnd() * 500))
        segs.append(f"RXA|0|1|{t}|{t}|{coded[cwe]}|{amount}|mL^mL^UCUM||{_NIP001}|"
                    f"{_pick(rnd, fac.doctors)}|^^^{fac.code}||||{lot}|{exp}|{mfr}|||CP|A")
        segs.append(f"RXR|{_ROUTES[route][cwe]}")
        return segs

    # ---- scheduling and documents
    def _siu(self, fac, sec, ti):
        rnd = self.rnd
        cwe = ti.cwe
        p = self.pick_patient(fac, sec, 0.7)
        reason = _APPT_REASONS[int(rnd() * len(_APPT_REASONS))][cwe]
        start = (sec // 86400 + 1 + int(rnd() * 30)) * 86400 + (8 + int(rnd() * 7)) * 3600 + \
            int(rnd() * 4) * 900
        dur = 15 * (1 + int(rnd() * 3))
        fac.order_seq += 1
        appt = f"RDV{fac.order_seq:07d}"
        st, en = self.ts(start), self.ts(start + dur * 60)
        doc = _pick(rnd, fac.doctors)
        f = ["SCH", f"{appt}^{ti.app}", f"{appt}^{ti.app}", "", "", "", _NEW_APPT, reason,
             "NORMAL", str(dur), "min", f"^^{dur}^{st}^{en}", "", "", "", "", doc, "", "", "",
             doc, "", "", "", "", "Booked"]
        loc = f"CONS^C{int(rnd() * 15) + 1}^^{fac.code}"
        return ["|".join(f), self.pid(p, cwe), "RGS|1|A",
                f"AIL|1|A|{loc}|CONS^Consultation^L||{st}|||{dur}|min",
                f"AIP|1|A|{doc}|MD^Médecin^L||{st}|||{dur}|min"]

    def _mdm(self, fac, sec, ti):
        rnd = self.rnd
        cwe = ti.cwe
        v = self.service_visit(fac, sec)
        code, kind, text, b64 = _pick(rnd, _DOCS)
        t = self.ts(sec)
        fac.doc_seq += 1
        txa = "|".join(("TXA", "1", kind, "TX", t, v.att, t, t, "", v.att, "", "",
                        f"DOC{fac.doc_seq:07d}^{ti.app}", "", "", "", "", "AU", "", "AV"))
        segs = [ti.evn + t, self.pid(v.pat, cwe), self.pv1(v), txa,
                f"OBX|1|ED|{code[cwe]}||^TEXT^PLAIN^Base64^{b64}||||||F|||{t}"]
        if rnd() < 0.5:
            segs.append(f"OBX|2|TX|{code[cwe]}||{text[:60]}||||||F|||{t}")
        return segs


def _code_safe(code: str) -> str:
    """Facility code as used in file names (codes are A-Z 0-9 - _ by config contract)."""
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in code)


def _break(segs: list[str], reason: str, rnd) -> list[str]:
    """Apply a breakage to the segments after MSH (MSH-level ones are done by the caller)."""
    if reason == "NO_MSH":
        return segs
    pid_i = next((i for i, s in enumerate(segs) if s.startswith("PID|")), 0)
    if reason == "INVALID_DATE":
        obx = [i for i, s in enumerate(segs) if s.startswith("OBX|")]
        if obx and rnd() < 0.5:
            i = obx[int(rnd() * len(obx))]
            f = segs[i].split("|")
            f.extend([""] * (15 - len(f)))
            f[14] = "20231301"
        else:
            i = pid_i
            f = segs[i].split("|")
            f[7] = "20230230"
        segs[i] = "|".join(f)
        return segs
    if reason == "TRUNCATED":
        cut = segs[pid_i]
        return segs[:pid_i] + [cut[:max(5, len(cut) // 2)]]
    raise ValueError(reason)


# --------------------------------------------------------------------------------------
# Public functions
# --------------------------------------------------------------------------------------
def _check_args(facilities, days, start, broken_share, per_day, messages_per_file):
    if facilities is None:
        facilities = DEFAULT_FACILITIES
    if not isinstance(facilities, (list, tuple)):
        raise ValueError("facilities must be a list of facility dicts")
    if int(days) < 0:
        raise ValueError(f"days must be >= 0, got {days}")
    if start is None:
        start = DEFAULT_START
    elif isinstance(start, datetime):
        start = start.date()
    elif isinstance(start, str):
        start = date.fromisoformat(start)
    elif not isinstance(start, date):
        raise ValueError(f"start must be a date, got {start!r}")
    if not 0.0 <= float(broken_share) <= 1.0:
        raise ValueError(f"broken_share must be within [0, 1], got {broken_share}")
    per_day = DEFAULT_PER_DAY if per_day is None else int(per_day)
    if per_day < 0:
        raise ValueError(f"per_day must be >= 0, got {per_day}")
    if int(messages_per_file) < 1:
        raise ValueError(f"messages_per_file must be >= 1, got {messages_per_file}")
    return list(facilities), int(days), start, float(broken_share), per_day, \
        int(messages_per_file)


def _iter_files(facilities, days, seed, start, broken_share, per_day, messages_per_file
                ) -> tuple[date, Iterator[_FilePlan]]:
    facilities, days, start, broken_share, per_day, mpf = _check_args(
        facilities, days, start, broken_share, per_day, messages_per_file)
    eng = _Engine(facilities, seed, start)
    return start, eng.files(days, per_day, broken_share, mpf)


def iter_messages(facilities: list[dict] | None, days: int, seed: int,
                  start: date | None = None, broken_share: float = 0.02,
                  per_day: int | None = None, *, messages_per_file: int = 200
                  ) -> Iterator[GeneratedMessage]:
    """Yield the messages, day by day, facility by facility, in time order.

    With the same arguments (messages_per_file included) as `generate`, each message's
    ``raw`` is exactly the byte range written for it in its file, since the per-file
    terminator and batch choices are made here.
    """
    _start, plans = _iter_files(facilities, days, seed, start, broken_share, per_day,
                                messages_per_file)
    for plan in plans:
        yield from plan.messages


def generate(out_dir: str | Path, facilities: list[dict] | None, days: int, seed: int,
             start: date | None = None, broken_share: float = 0.02,
             per_day: int | None = None, messages_per_file: int = 200, dq_fault_share: float = 0.0) -> dict:
    """Write the files and manifest.json under out_dir; return the manifest dict.

    ``dq_fault_share`` of the well-formed messages get one data-quality fault each
    (``transforms.faults``: they parse, and the data-quality suites must catch them); the manifest
    counts them under ``dq_faults``. Existing files with the same names are replaced; other files
    are left alone.
    """
    if not 0.0 <= float(dq_fault_share) <= 1.0:
        raise ValueError(f"dq_fault_share must be within [0, 1], got {dq_fault_share}")
    from . import faults

    # A stream of its own, so the traffic with a share of 0 is byte for byte what it always was.
    dq_rnd = random.Random(f"dq-{seed}").random
    dq_faults: dict[str, int] = {}
    out = Path(out_dir)
    start_d, plans = _iter_files(facilities, days, seed, start, broken_share, per_day,
                                 messages_per_file)
    fac_list = DEFAULT_FACILITIES if facilities is None else facilities
    by_facility = {str(f["code"]).strip(): 0 for f in fac_list}
    by_type: dict[str, int] = {}
    by_version: dict[str, int] = {}
    broken: dict[str, int] = {}
    n_files = n_batch = n_msgs = 0
    made_dirs: set[Path] = set()
    for plan in plans:
        path = out.joinpath(*plan.relpath.parts)
        parent = path.parent
        if parent not in made_dirs:
            parent.mkdir(parents=True, exist_ok=True)
            made_dirs.add(parent)
        if dq_fault_share:
            for k, m in enumerate(plan.messages):
                if m.broken is None and dq_rnd() < dq_fault_share:
                    options = [(name, b) for name in faults.FAULTS
                               if (b := faults.break_message(m.raw, name)) is not None]
                    if options:
                        name, raw = options[int(dq_rnd() * len(options))]
                        plan.messages[k] = dataclasses.replace(m, raw=raw)
                        dq_faults[name] = dq_faults.get(name, 0) + 1
        data = plan.header + b"".join(m.raw for m in plan.messages) + plan.trailer
        _atomic_write(path, data)
        n_files += 1
        n_batch += plan.batch
        for m in plan.messages:
            n_msgs += 1
            by_facility[m.facility] = by_facility.get(m.facility, 0) + 1
            by_type[m.message_type] = by_type.get(m.message_type, 0) + 1
            by_version[m.version] = by_version.get(m.version, 0) + 1
            if m.broken:
                broken[m.broken] = broken.get(m.broken, 0) + 1
    manifest = {
        "seed": seed,
        "days": int(days),
        "start": start_d.isoformat(),
        "files": n_files,
        "messages": n_msgs,
        "by_facility": by_facility,
        "by_type": dict(sorted(by_type.items())),
        "by_version": {v: by_version[v] for v in sorted(by_version, key=_version_key)},
        "broken": dict(sorted(broken.items())),
        "dq_faults": dict(sorted(dq_faults.items())),
        "batch_files": n_batch,
    }
    out.mkdir(parents=True, exist_ok=True)
    _atomic_write(out / "manifest.json",
                  (json.dumps(manifest, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))
    return manifest


def _version_key(v: str):
    return VERSIONS.index(v) if v in VERSIONS else len(VERSIONS)


def _atomic_write(path: Path, data: bytes) -> None:
    # Consumers ignore *.tmp (partial_upload: tmp_rename), so they never see half a file.
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)


def generate_mix(n: int, seed: int = 1, facilities: list[dict] | None = None) -> list[bytes]:
    """`n` raw messages of the realistic mix (no broken ones), for benchmarks."""
    n = int(n)
    if n <= 0:
        return []
    per_day = min(n, 4000)
    days = -(-n // per_day)
    msgs = iter_messages(facilities, days, seed, None, 0.0, per_day)
    return [m.raw for m in itertools.islice(msgs, n)]
