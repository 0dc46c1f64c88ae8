"""Routing and version transformation (transforms/routing.py, transforms/hl7transform.py).

Messages are built here (project-written, synthetic names). The mapping tables are the real ones
in config/mappings, so every table is exercised as deployed.
"""
from __future__ import annotations

import argparse
import io
import textwrap
from pathlib import Path

import pytest

from transforms.config import ConfigError
from transforms.extract import to_record
from transforms.hl7transform import (Target, Work, build_outbound, convert, ConvertOptions, load_mapping_table,
                                     validate_outbound)
from transforms.parser import Delimiters, parse, unescape
from transforms.routing import RouteConfig, Router, cli_route_test, compile_predicate

ROOT = Path(__file__).resolve().parent.parent
MAPPINGS = ROOT / "config" / "mappings"

# ---------------------------------------------------------------------------------------------
# Messages
# An EHR's ORM^O01 in 2.5.1 (ORC-7 timing is still allowed in ORM), with two patient identifiers,
# a CX carrying components 2.3 does not have, a 9-component coded order and an Ewe name.
ORM_251 = (
    "MSH|^~\\&|SIH-CHU|CHU-SO|HL7ICS|MOH-TG|20261102083000||ORM^O01^ORM_O01|CHUSO-0100|P|2.5.1|||AL|NE||UNICODE UTF-8\r"
    "PID|1||CHU000123^^^CHU-SO^MR^^20200101~123456789^^^INAM^MB||Ɖogbé^Ɛnyɔnam^Aŋani^^^^L||19870412|F|||"
    "Rue 12^^Lomé^Golfe^^TG||+22890123456^PRN^CP\r"
    "PV1|1|I|MED^12^3^CHU-SO||||D123^Kpodar^Kɔku^^^Dr\r"
    "ORC|NW|ORD-1001^SIH-CHU|||||^^^20261102090000^^S||20261102083000|||D123^Kpodar^Kɔku^^^Dr\r"
    "OBR|1|ORD-1001^SIH-CHU||70569-9^TDR paludisme^LN^TDR-PALU^TDR paludisme^L^2.74^^TDR palu|||20261102083000"
    "||||||||D123^Kpodar^Kɔku^^^Dr\r"
    "ZPV|1|Chambre 12\r"
).encode()

# The same order as an OML^O21 with TQ1 timing and SPM specimens, two orders (hl7apy's own group
# finder misplaces the second ORDER; ours must not).
OML_251 = (
    "MSH|^~\\&|SIH-CHU|CHU-SO|HL7ICS|MOH-TG|20261102083000||OML^O21^OML_O21|CHUSO-0101|P|2.5.1|||AL|NE||UNICODE UTF-8\r"
    "PID|1||CHU000123^^^CHU-SO^MR~123456789^^^INAM^MB||Ɖogbé^Ɛnyɔnam^Aŋani^^^^L||19870412|F\r"
    "PV1|1|I|MED^12^3^CHU-SO\r"
    "ORC|NW|ORD-1001^SIH-CHU|||||||20261102083000\r"
    "TQ1|1|1^mL||||3^d|20261102090000||S^Stat^HL70485\r"
    "OBR|1|ORD-1001^SIH-CHU||TDR-PALU^TDR paludisme^L|||20261102083000\r"
    "SPM|1|S1001&SIH-CHU||BLD^Sang total^HL70487|||||||||||||20261102084500\r"
    "ORC|NW|ORD-1002^SIH-CHU|||||||20261102083000\r"
    "OBR|2|ORD-1002^SIH-CHU||HGB^Hémoglobine^L|||20261102083000\r"
    "SPM|1|S1002&SIH-CHU||BLD^Sang total^HL70487\r"
).encode()

# The legacy lab's result in 2.3: deprecated PID-2/PID-4, ORC-7/OBR-27 timing, OBR-15 specimen,
# CE results, an escaped ampersand in a note, a Z-segment.
ORU_23 = (
    "MSH|^~\\&|SIL-INH|INH-LOME|SIH-CHU|CHU-SO|20261102120000||ORU^R01|INH-0001|P|2.3|||AL|NE||UNICODE UTF-8\r"
    "PID|1|123456789^^^INAM^MB|CHU000123^^^CHU-SO^MR|INH-77^^^INH-LOME^PI|Ɖogbé^Ɛnyɔnam^Aŋani||19870412|F\r"
    "PV1|1|I|MED^12^3^CHU-SO\r"
    "ORC|RE|ORD-1001^SIH-CHU|LAB-5001^SIL-INH||CM||^^^20261102090000^^S\r"
    "OBR|1|ORD-1001^SIH-CHU|LAB-5001^SIL-INH|TDR-PALU^TDR paludisme^L|||20261102090000|||||||20261102091000|"
    "BLD&Sang total&HL70487|D123^Kpodar^Kɔku||||||20261102115500|||F||^^^20261102090000^^S\r"
    "OBX|1|CE|TDR-PALU^TDR paludisme^L||POS^Positif^L||||||F|||20261102115500\r"
    "OBX|2|NM|HGB^Hémoglobine^L||9.5|g/dL|12-16|L|||F|||20261102115500\r"
    "NTE|1||Prélèvement hémolysé \\T\\ à contrôler\r"
    "ZLB|1|poste 2\r"
).encode()


def oru(obx: str, *, facility: str = "CHU-SO", family: str = "Agbéko", given: str = "Noëlle",
        version: str = "2.5.1", processing: str = "P", control: str = "CHUSO-0300") -> bytes:
    return (f"MSH|^~\\&|LABSYS|{facility}|HL7ICS|MOH-TG|20261102120000||ORU^R01^ORU_R01|{control}|{processing}|"
            f"{version}|||AL|NE||UNICODE UTF-8\r"
            f"PID|1||CHU000555^^^{facility}^MR||{family}^{given}||19900101|F|||Quartier Bè^^Lomé^Golfe^^TG||+22890000000\r"
            f"PV1|1|O|CONS^1^^{facility}\r"
            f"OBR|1|ORD-3001^LABSYS|LAB-3001^LABSYS|58410-2^NFS^LN|||20261102110000\r"
            f"{obx}").encode()


RDS = (
    "MSH|^~\\&|PHARMA|PHARM-ATAKPAME|HL7ICS|MOH-TG|20261102100000||RDS^O13^RDS_O13|PHA-0001|P|2.5|||AL|NE||UNICODE UTF-8\r"
    "PID|1||PHA000042^^^PHARM-ATAKPAME^MR||Tchalla^Essozimna||19850303|F\r"
    "ORC|RE|CMD0000009-1^PHARMA|D0000009-1^PHARMA||CM\r"
    "RXD|1|ALU2012^Artéméther 20 mg + Luméfantrine 120 mg, comprimé^L^LNME-0101^Artéméther^LNME|20261102100000|24|cp|CP|RX9|0\r"
    "RXR|PO^Orale^HL70162\r"
).encode()


def cfg(tmp_path: Path, routes: str, transforms: str | None = None, name: str = "routes.yaml") -> RouteConfig:
    (tmp_path / name).write_text(textwrap.dedent(routes).replace("@MAPPINGS@", str(MAPPINGS)), encoding="utf-8")
    if transforms is not None:
        (tmp_path / "transforms.yaml").write_text(textwrap.dedent(transforms), encoding="utf-8")
    return RouteConfig.load(tmp_path / name)


BASIC_DESTS = """
    mappings_dir: @MAPPINGS@
    destinations:
      a: {type: folder, path: /tmp/a}
      b: {type: folder, path: /tmp/b}
      c: {type: folder, path: /tmp/c}
"""


def router_for(tmp_path, rules: str, transforms: str | None = None, dests: str = BASIC_DESTS) -> Router:
    return Router(cfg(tmp_path, textwrap.dedent(dests) + "rules:\n" + textwrap.indent(textwrap.dedent(rules), "  "),
                      transforms))


def hits(router: Router, raw: bytes) -> list[tuple[str, str]]:
    return [(r.rule, r.destination) for r in router.route(raw)]


def record(payload: bytes) -> dict:
    return to_record(parse(payload))


def seg(payload: bytes, sid: str, occ: int = 1) -> list[str]:
    segs = [s for s in parse(payload).segments if s[0] == sid]
    return segs[occ - 1]


# ---------------------------------------------------------------------------------------------
# The deployed configuration
def test_deployed_configuration_loads_and_routes_the_story():
    config = RouteConfig.load(ROOT / "config" / "routes.yaml")
    router = Router(config)
    assert {"inh-sil", "dpi-chu-so", "surveillance-dhis2", "lmis-cameg"} <= set(config.destinations)
    assert {"lab_local_to_loinc", "facility_to_dhis2", "drug_local_to_national"} <= set(config.tables)
    # EHR order -> legacy lab (2.3) and the archive copy, unchanged for the archive.
    order = ORM_251.replace("Ɖogbé^Ɛnyɔnam^Aŋani".encode(), "Agbéko^Noëlle^".encode()).replace("Kɔku".encode(), b"Kokou")
    results = {r.destination: r for r in router.route(order)}
    assert set(results) == {"inh-sil", "archive-lab-orders"}
    lab = results["inh-sil"]
    assert lab.error is None and lab.review is None
    assert lab.payload.startswith(b"MSH|^~\\&|SIH-CHU|CHU-SO|SIL-INH|INH-LOME|")
    assert seg(lab.payload, "MSH")[11] == "2.3" and seg(lab.payload, "MSH")[17] == "8859/1"
    assert "Agbéko".encode("latin-1") in lab.payload
    pid = seg(lab.payload, "PID")
    assert pid[3] == "CHU000123^^^CHU-SO^MR"  # one identifier for the SIL ...
    assert pid[2] == "123456789^^^INAM^MB"  # ... and the insurer's number where it reads it (hook)
    assert b"ZPV" not in lab.payload
    assert results["archive-lab-orders"].payload == order
    # Lab result for a CHU-SO patient -> the EHR (continue) and surveillance.
    result = ORU_23.replace(b"SIH-CHU|CHU-SO", b"HL7ICS|MOH-TG")
    assert hits(router, result) == [("inh-results-to-chu-so", "dpi-chu-so"),
                                    ("notifiable-results-to-surveillance", "surveillance-dhis2")]
    # Test messages are dropped by the first rule.
    assert router.route(oru("OBX|1|CWE|70569-9^TDR^LN||POS\r", processing="T")) == []


# ---------------------------------------------------------------------------------------------
# Rule matching
@pytest.mark.parametrize("predicate, raw, expected", [
    ("PV1-2 = O", oru(""), True),
    ("PV1-2 = I", oru(""), False),
    ("PV1-2 == O", oru(""), True),
    ("MSH-4 != CHU-SO", oru(""), False),
    ("MSH-4 != CHU-KARA", oru(""), True),
    ("OBX-3.1 in [70569-9, 718-7]", oru("OBX|1|NM|718-7^Hb^LN||9\r"), True),
    ("OBX-3.1 in [70569-9, 718-7]", oru("OBX|1|NM|777-3^Plq^LN||9\r"), False),
    ("OBX-3.1 not in [70569-9, 718-7]", oru("OBX|1|NM|777-3^Plq^LN||9\r"), True),
    ("OBX-3.1 not in [70569-9, 718-7]", oru("OBX|1|NM|777-3^Plq^LN||9\rOBX|2|NM|718-7^Hb^LN||9\r"), False),
    ("OBX-3 in [718-7]", oru("OBX|1|NM|718-7^Hb^LN||9\r"), True),  # a field compares its first component
    ("OBX-5 matches '^(POS|10828004)'", oru("OBX|1|CWE|70569-9^TDR^LN||10828004^Positif^SCT\r"), True),
    ("OBX-5 matches '^POS'", oru("OBX|1|CWE|70569-9^TDR^LN||NEG\r"), False),
    ("OBX-5 not matches '^POS'", oru("OBX|1|CWE|70569-9^TDR^LN||NEG\r"), True),
    ("OBX exists", oru("OBX|1|NM|718-7^Hb^LN||9\r"), True),
    ("OBX exists", oru(""), False),
    ("ZLB not exists", oru(""), True),
    ("PID-13 exists", oru(""), True),
    ("PID-19 exists", oru(""), False),
    ("PID-3.4 = CHU-SO", oru(""), True),
    ("PID-11.3 = Lomé", oru(""), True),  # accented values compare exactly
    ("OBX[2]-3.1 = 718-7", oru("OBX|1|NM|777-3^Plq^LN||9\rOBX|2|NM|718-7^Hb^LN||9\r"), True),
    ("OBX[1]-3.1 = 718-7", oru("OBX|1|NM|777-3^Plq^LN||9\rOBX|2|NM|718-7^Hb^LN||9\r"), False),
    ("OBX-3[2].1 = HGB", oru("OBX|1|NM|718-7^Hb^LN~HGB^Hb^L||9\r"), True),
    ("OBX-3[1].1 = HGB", oru("OBX|1|NM|718-7^Hb^LN~HGB^Hb^L||9\r"), False),
    ("OBX-5 = A&B", oru("OBX|1|ST|X^x^L||A\\T\\B\r"), True),  # compared unescaped
    ("OBR-15.1.2 = 'Sang total'", oru("").replace(b"|20261102110000\r", b"|20261102110000||||||||BLD&Sang total\r"), True),
])
def test_each_operator(predicate, raw, expected):
    assert compile_predicate(predicate, "t")(parse(raw)) is expected


def test_header_criteria_ordering_continue_and_filters(tmp_path):
    router = router_for(tmp_path, """
        - name: tests-dropped
          match: {where: [MSH-11 = T]}
          to: []
        - name: kara-results
          match: {sending_facility: CHU-KARA, message_type: [ORU^R01]}
          continue: true
          to: [a]
        - name: any-oru-new-version
          match: {message_type: ["ORU^*"], version: [">=2.5"]}
          to: [b]
        - name: old-versions
          match: {version: ["2.3", "2.4"], where_any: [PV1-2 = I, OBX-3.1 = 718-7]}
          to: [c]
        - name: never-reached-for-oru
          match: {message_type: ORU}
          to: [c]
    """)
    assert hits(router, oru("", facility="CHU-KARA")) == [("kara-results", "a"), ("any-oru-new-version", "b")]
    assert hits(router, oru("")) == [("any-oru-new-version", "b")]  # first match stops
    assert hits(router, oru("", facility="CHU-KARA", processing="T")) == []  # filtered before anything
    assert hits(router, oru("OBX|1|NM|718-7^Hb^LN||9\r", version="2.4")) == [("old-versions", "c")]
    assert hits(router, oru("", version="2.4")) == [("never-reached-for-oru", "c")]  # where_any failed
    assert hits(router, ORM_251) == []  # no rule: filtered
    assert [r.name for r in router.match(parse(oru("", facility="CHU-KARA")))] == ["kara-results", "any-oru-new-version"]


def test_a_destination_reached_twice_is_built_once(tmp_path):
    router = router_for(tmp_path, """
        - name: first
          match: {message_type: ORU}
          continue: true
          to: [a, b]
        - name: second
          to: [a]
    """)
    assert hits(router, oru("")) == [("first", "a"), ("first", "b")]


def test_routing_is_pure(tmp_path):
    router = router_for(tmp_path, """
        - name: convert
          to: [{destination: a, transform: t}]
    """, """
        transforms:
          t:
            steps:
              - strip_z: true
              - set: {field: MSH-5, value: LAB}
    """, dests=BASIC_DESTS.replace("a: {type: folder, path: /tmp/a}", "a: {type: folder, path: /tmp/a, version: '2.3'}"))
    msg = parse(ORM_251)
    before = [list(s) for s in msg.segments]
    first = router.route(ORM_251, msg)
    assert first == router.route(ORM_251, msg) == router.route(ORM_251)
    assert msg.segments == before  # the parsed message is not modified
    assert first[0].payload is not None and b"ZPV" not in first[0].payload


def test_unroutable_message_is_not_routed(tmp_path):
    router = router_for(tmp_path, """
        - name: everything
          to: [a]
    """)
    assert router.route(b"PID|1||X\r") == []
    assert Router.unroutable(parse(b"PID|1||X\r")) == "MISSING_MSH"


# ---------------------------------------------------------------------------------------------
# Configuration errors name the file, the rule and the key
ONE_RULE = BASIC_DESTS + """
    rules:
      - name: r1
        match: {message_type: ORU}
        to: [{destination: a, transform: t1}]
"""
T1 = """
    transforms:
      t1:
        steps:
          - set: {field: MSH-5, value: X}
"""


@pytest.mark.parametrize("routes, transforms, expected", [
    (ONE_RULE.replace("destination: a", "destination: nowhere"), T1,
     ["routes.yaml", "rule 'r1'", "to[0].destination", "unknown destination 'nowhere'"]),
    (ONE_RULE.replace("transform: t1", "transform: t9"), T1,
     ["routes.yaml", "rule 'r1'", "to[0].transform", "unknown transformation 't9'"]),
    (ONE_RULE.replace("{message_type: ORU}", "{where: [OBX3.1 = X]}"), T1,
     ["routes.yaml", "rule 'r1'", "where[0]", "bad field path 'OBX3.1'"]),
    (ONE_RULE.replace("{message_type: ORU}", "{where: [OBX-3.1 like X]}"), T1,
     ["routes.yaml", "rule 'r1'", "where[0]", "OP one of"]),
    (ONE_RULE.replace("{message_type: ORU}", "{where: [OBX-3.1 in 70569-9]}"), T1,
     ["rule 'r1'", "where[0]", "list in brackets"]),
    (ONE_RULE.replace("{message_type: ORU}", "{where: [\"OBX-5 matches '(POS'\"]}"), T1,
     ["rule 'r1'", "where[0]", "bad regular expression"]),
    (ONE_RULE.replace("{message_type: ORU}", "{where: [OBX exists 1]}"), T1,
     ["rule 'r1'", "where[0]", "takes no value"]),
    (ONE_RULE.replace("{message_type: ORU}", "{mesage_type: ORU}"), T1,
     ["rule 'r1'", "match", "unknown key(s) mesage_type"]),
    (ONE_RULE.replace("{message_type: ORU}", "{message_type: ORU-R01}"), T1,
     ["rule 'r1'", "match.message_type"]),
    (ONE_RULE.replace("{message_type: ORU}", "{version: [2.5.x]}"), T1,
     ["rule 'r1'", "match.version"]),
    (ONE_RULE.replace("        to: [{destination: a, transform: t1}]\n", ""), T1,
     ["rule 'r1'", "missing required key 'to'"]),
    (ONE_RULE + "      - name: r1\n        to: [a]\n", T1, ["rule 'r1'", "duplicate rule name"]),
    (ONE_RULE.replace("a: {type: folder, path: /tmp/a}", "a: {type: mllp, host: h}"), T1,
     ["destination 'a'", "missing required key 'port'"]),
    (ONE_RULE.replace("a: {type: folder, path: /tmp/a}", "a: {type: fax, path: /tmp/a}"), T1,
     ["destination 'a'", "type", "'fax' is not one of"]),
    (ONE_RULE.replace("a: {type: folder, path: /tmp/a}", "a: {type: sftp, conn_id: c, path: /x, password: p}"), T1,
     ["destination 'a'", "password", "secrets do not belong"]),
    (ONE_RULE.replace("a: {type: folder, path: /tmp/a}", "a: {type: folder, path: /tmp/a, version: '2.6'}"), T1,
     ["destination 'a'", "version", "'2.6'"]),
    (ONE_RULE.replace("a: {type: folder, path: /tmp/a}", "a: {type: folder, path: /tmp/a, charset: klingon}"), T1,
     ["destination 'a'", "charset", "klingon"]),
    (ONE_RULE.replace("a: {type: folder, path: /tmp/a}", "a: {type: folder, path: /tmp/a, delimiters: '|^~'}"), T1,
     ["destination 'a'", "delimiters"]),
    (ONE_RULE.replace("a: {type: folder, path: /tmp/a}", "a: {type: folder, path: /tmp/a, validate: sometimes}"), T1,
     ["destination 'a'", "validate"]),
    (ONE_RULE, T1.replace("set: {field: MSH-5, value: X}", "set: {field: MSH-12, value: '2.3'}"),
     ["transforms.yaml", "transform 't1'", "steps[0].set.field", "MSH-12 is the version"]),
    (ONE_RULE, T1.replace("set: {field: MSH-5, value: X}", "set: {field: PV1.2, value: I}"),
     ["transforms.yaml", "transform 't1'", "steps[0].set.field", "bad field path 'PV1.2'"]),
    (ONE_RULE, T1.replace("set: {field: MSH-5, value: X}", "map: {field: OBX-3, table: nope}"),
     ["transforms.yaml", "transform 't1'", "steps[0].map.table", "unknown mapping table 'nope'"]),
    (ONE_RULE, T1.replace("set: {field: MSH-5, value: X}", "map: {field: PID-3.1, table: facility_to_dhis2}"),
     ["transform 't1'", "steps[0].map.field", "patient segment"]),
    (ONE_RULE, T1.replace("set: {field: MSH-5, value: X}", "map: {field: OBX-3, table: lab_local_to_loinc, "
                          "on_unmapped: ignore}"),
     ["transform 't1'", "steps[0].map.on_unmapped"]),
    (ONE_RULE, T1.replace("set: {field: MSH-5, value: X}", "frobnicate: true"),
     ["transform 't1'", "steps[0]", "exactly one of"]),
    (ONE_RULE, T1.replace("set: {field: MSH-5, value: X}", "copy: {from: OBX-3, to: OBX-4.1}"),
     ["transform 't1'", "steps[0].copy", "nest separators"]),
    (ONE_RULE, T1.replace("set: {field: MSH-5, value: X}", "hook: no_such_module_xyz:fn"),
     ["transform 't1'", "steps[0].hook", "cannot import hook module 'no_such_module_xyz'"]),
    (ONE_RULE, T1.replace("set: {field: MSH-5, value: X}", "hook: transforms.hl7transform:no_fn"),
     ["transform 't1'", "steps[0].hook", "has no function 'no_fn'"]),
])
def test_configuration_errors_name_file_rule_and_key(tmp_path, routes, transforms, expected):
    with pytest.raises(ConfigError) as err:
        cfg(tmp_path, routes, transforms)
    for part in expected:
        assert part in str(err.value)


def test_mapping_table_errors_name_file_and_line(tmp_path):
    bad = tmp_path / "dup.csv"
    bad.write_text("source_code,target_code,target_text,target_system\nA,1,un,L\nA,2,deux,L\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"dup.csv: line 3: duplicate source_code 'A'"):
        load_mapping_table(bad)
    bad.write_text("code,target\nA,1\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"dup.csv: line 1: header must be"):
        load_mapping_table(bad)
    bad.write_text("source_code,target_code,target_text,target_system\nA,,un,L\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"line 2: source_code and target_code are required"):
        load_mapping_table(bad)


def test_invalid_yaml_names_the_line(tmp_path):
    with pytest.raises(ConfigError, match=r"routes.yaml: line \d+ is not valid YAML"):
        cfg(tmp_path, "destinations: [a\nrules: x\n")


# ---------------------------------------------------------------------------------------------
# Version conversion, both ways, fields compared
def test_orm_251_to_legacy_lab_23():
    out = build_outbound(parse(ORM_251), Target("lab", "2.3", "utf-8", "UNICODE UTF-8"), None, "r", {})
    assert out.error is None, out.error
    src, dst = record(ORM_251), record(out.payload)
    msh, pid, orc, obr = (seg(out.payload, s) for s in ("MSH", "PID", "ORC", "OBR"))
    assert msh[8] == "ORM^O01" and msh[11] == "2.3"  # 2.3 MSH-9 has no structure component
    assert dst["patient"] == src["patient"]  # id, authority, names, birth date, sex
    assert dst["patient"]["family_name"] == "Ɖogbé" and dst["patient"]["given_name"] == "Ɛnyɔnam"
    assert pid[3] == "CHU000123^^^CHU-SO^MR~123456789^^^INAM^MB"  # CX cut to 6 components, both kept
    assert pid[5] == "Ɖogbé^Ɛnyɔnam^Aŋani^^^^L"
    assert orc[2] == "ORD-1001^SIH-CHU" and obr[2] == "ORD-1001^SIH-CHU"
    assert obr[4] == "70569-9^TDR paludisme^LN^TDR-PALU^TDR paludisme^L"  # CWE-style 9 -> CE 6
    assert orc[7] == "^^^20261102090000^^S" and obr[27] == "^^^20261102090000^^S"
    assert seg(out.payload, "PV1")[7] == "D123^Kpodar^Kɔku^^^Dr"
    assert "DROPPED_COMPONENT:OBR-4" in out.notes and "DROPPED_COMPONENT:PID-3" in out.notes
    assert seg(out.payload, "ZPV") == ["ZPV", "1", "Chambre 12"]  # Z-segments are the transform's call


def test_oml_251_with_tq1_and_spm_to_orm_23():
    out = build_outbound(parse(OML_251), Target("lab", "2.3", "utf-8", "UNICODE UTF-8"), None, "r", {})
    assert out.error is None, out.error
    ids = [s[0] for s in parse(out.payload).segments]
    assert ids == ["MSH", "PID", "PV1", "ORC", "OBR", "ORC", "OBR"]
    assert seg(out.payload, "MSH")[8] == "ORM^O01"
    orc1, obr1, orc2, obr2 = seg(out.payload, "ORC"), seg(out.payload, "OBR"), seg(out.payload, "ORC", 2), seg(out.payload, "OBR", 2)
    # TQ1: quantity 1 mL, duration 3 days, start, priority S -> TQ in ORC-7 and OBR-27
    assert orc1[7] == obr1[27] == "1&mL^^D3^20261102090000^^S"
    assert orc2[7] == obr2[27] == "^^^^^R"  # no timing: HL7's default priority, since 2.3 requires it
    assert obr1[15] == obr2[15] == "BLD&Sang total&HL70487"  # SPM-4 -> OBR-15.1
    assert obr1[7] == "20261102083000"  # kept; SPM-17 only fills an empty OBR-7
    assert (orc1[2], orc2[2]) == ("ORD-1001^SIH-CHU", "ORD-1002^SIH-CHU")
    assert "MESSAGE_TYPE:OML^O21->ORM^O01" in out.notes and "TQ1->ORC-7/OBR-27" in out.notes


def test_specimen_parts_go_to_obr15_or_are_noted_and_come_back():
    """Down (2.5.1 -> 2.3.1): the SPM's type, additives, description, site, site modifier and role
    fill OBR-15's components, its amount an empty OBR-9; its ID and collection method have no
    place and are noted, as an SPM whose OBR names a specimen already. Up again: each part goes
    back to its SPM field, and the collection method modifier (OBR-15.6) is noted."""
    spm = ("SPM|1|S1001&SIH-CHU||BLD^Sang total^HL70487||EDTA^EDTA K2^HL70371|VP^Ponction veineuse^HL70488|"
           "LA^Bras gauche^HL70070|L^Gauche^HL70495||P^Patient^HL70369|4^mL||Prélèvement à jeun|||20261102084500\r")
    oml = OML_251.replace("SPM|1|S1001&SIH-CHU||BLD^Sang total^HL70487|||||||||||||20261102084500\r".encode(),
                          spm.encode())
    oml = oml.replace(b"OBR|2|ORD-1002^SIH-CHU||HGB^H\xc3\xa9moglobine^L|||20261102083000",
                      "OBR|2|ORD-1002^SIH-CHU||HGB^Hémoglobine^L|||20261102083000||||||||SER&Sérum&HL70487".encode())
    down = build_outbound(parse(oml), Target("lab", "2.3.1", "utf-8", "UNICODE UTF-8"), None, "r", {})
    assert down.error is None, down.error
    obr1, obr2 = seg(down.payload, "OBR"), seg(down.payload, "OBR", 2)
    assert obr1[15] == ("BLD&Sang total&HL70487^EDTA K2^Prélèvement à jeun^LA&Bras gauche&HL70070^"
                        "L&Gauche&HL70495^^P&Patient&HL70369")
    assert obr1[9] == "4^mL" and obr2[15] == "SER&Sérum&HL70487"
    assert {"DROPPED_FIELD:SPM-2", "DROPPED_FIELD:SPM-7", "DROPPED_SEGMENT:SPM"} <= set(down.notes)
    up = build_outbound(parse(down.payload.replace(b"HL70495^^P", b"HL70495^TMED^P")),
                        Target("ehr", "2.5.1", "utf-8", "UNICODE UTF-8"), None, "r", {})
    assert up.error is None, up.error
    back = seg(up.payload, "SPM")
    assert (back[4], back[6], back[8], back[9], back[11], back[14]) == (
        "BLD^Sang total^HL70487", "^EDTA K2", "LA^Bras gauche^HL70070", "L^Gauche^HL70495", "P^Patient^HL70369",
        "Prélèvement à jeun")
    assert "DROPPED_COMPONENT:OBR-15.6" in up.notes


def test_lab_oru_23_back_to_251():
    out = build_outbound(parse(ORU_23), Target("ehr", "2.5.1", "utf-8", "UNICODE UTF-8"), None, "r", {})
    assert out.error is None, out.error
    src, dst = record(ORU_23), record(out.payload)
    p = parse(out.payload)
    ids = [s[0] for s in p.segments]
    assert ids == ["MSH", "PID", "PV1", "ORC", "OBR", "TQ1", "OBX", "OBX", "NTE", "SPM", "ZLB"]
    msh, pid, obr, tq1, spm = (seg(out.payload, s) for s in ("MSH", "PID", "OBR", "TQ1", "SPM"))
    assert msh[8] == "ORU^R01^ORU_R01" and msh[11] == "2.5.1"
    # Identifiers: PID-2 / PID-4 (deprecated in 2.5) join PID-3; the primary one stays first.
    assert pid[3] == "CHU000123^^^CHU-SO^MR~123456789^^^INAM^MB~INH-77^^^INH-LOME^PI"
    assert pid[2] == "" and pid[4] == ""
    assert dst["patient"]["id"] == src["patient"]["id"] == "CHU000123"
    assert (dst["patient"]["family_name"], dst["patient"]["given_name"]) == ("Ɖogbé", "Ɛnyɔnam")
    assert pid[5] == "Ɖogbé^Ɛnyɔnam^Aŋani"
    assert obr[2] == "ORD-1001^SIH-CHU" and obr[3] == "LAB-5001^SIL-INH" and obr[4] == "TDR-PALU^TDR paludisme^L"
    assert tq1[1] == "1" and tq1[7] == "20261102090000" and tq1[9] == "S"
    assert seg(out.payload, "ORC")[7:8] in ([], [""]) and (len(obr) <= 27 or obr[27] == "")
    assert spm[4] == "BLD^Sang total^HL70487" and spm[17] == "20261102090000"
    # Results: same codes, values, units, flags; CE results are CWE in 2.5.1.
    keys = ("code", "code_system", "value", "value_numeric", "units", "reference_range", "abnormal_flag", "status")
    assert [{k: o[k] for k in keys} for o in dst["observations"]] == [{k: o[k] for k in keys} for o in src["observations"]]
    assert [o["value_type"] for o in dst["observations"]] == ["CWE", "NM"]
    assert seg(out.payload, "NTE")[3] == "Prélèvement hémolysé \\T\\ à contrôler"  # escape kept as is


def test_orm_23_to_oml_251_round_trip_keeps_order_data():
    down = build_outbound(parse(OML_251), Target("lab", "2.3", "utf-8", "UNICODE UTF-8"), None, "r", {})
    up = build_outbound(parse(down.payload), Target("ehr", "2.5.1", "utf-8", "UNICODE UTF-8"), None, "r", {})
    assert up.error is None, up.error
    ids = [s[0] for s in parse(up.payload).segments]
    assert ids == ["MSH", "PID", "PV1", "ORC", "TQ1", "OBR", "SPM", "ORC", "TQ1", "OBR", "SPM"]
    assert seg(up.payload, "MSH")[8] == "OML^O21^OML_O21"
    tq1 = seg(up.payload, "TQ1")
    assert tq1[2] == "1^mL" and tq1[6] == "3^d" and tq1[7] == "20261102090000" and tq1[9] == "S"
    assert seg(up.payload, "SPM")[4] == "BLD^Sang total^HL70487"
    assert seg(up.payload, "PID")[5] == "Ɖogbé^Ɛnyɔnam^Aŋani^^^^L"


def test_version_conversion_keeps_msh12_localisation_where_the_target_has_room():
    """MSH-12 is a VID from 2.3.1 on (version ^ internationalization code ^ international
    version): a conversion changes the version and keeps the rest, or notes what 2.3 cannot hold."""
    local = ORM_251.replace(b"|P|2.5.1|", b"|P|2.5.1^TGO&Togo&ISO3166~2.4|")
    up = build_outbound(parse(local), Target("ehr", "2.5", "utf-8", "UNICODE UTF-8"), None, "r", {})
    assert up.error is None, up.error
    assert seg(up.payload, "MSH")[11] == "2.5^TGO&Togo&ISO3166"
    assert "DROPPED_COMPONENT:MSH-12" not in up.notes
    down = build_outbound(parse(local), Target("lab", "2.3", "utf-8", "UNICODE UTF-8"), None, "r", {})
    assert down.error is None, down.error
    assert seg(down.payload, "MSH")[11] == "2.3"
    assert "DROPPED_COMPONENT:MSH-12" in down.notes
    plain = build_outbound(parse(ORM_251), Target("ehr", "2.5", "utf-8", "UNICODE UTF-8"), None, "r", {})
    assert seg(plain.payload, "MSH")[11] == "2.5" and "DROPPED_COMPONENT:MSH-12" not in plain.notes


def test_cwe_result_to_ce_keeps_six_components():
    raw = oru("OBX|1|CWE|70569-9^TDR^LN||10828004^Positif^SCT^POS^Positif^L^20240301^^Positif|||A|||F\r")
    out = build_outbound(parse(raw), Target("x", "2.3", "utf-8", "UNICODE UTF-8"), None, "r", {})
    assert out.error is None, out.error
    obx = seg(out.payload, "OBX")
    assert obx[2] == "CE" and obx[5] == "10828004^Positif^SCT^POS^Positif^L"


def test_validation_reports_codes_never_values():
    # An OBR without its required OBR-4 in a message converted to 2.3.
    raw = ORU_23.replace(b"|LAB-5001^SIL-INH|TDR-PALU^TDR paludisme^L|", b"|LAB-5001^SIL-INH||")
    out = build_outbound(parse(raw), Target("ehr", "2.5.1", "utf-8", "UNICODE UTF-8"), None, "r", {})
    assert out.payload is None
    assert out.error.startswith("VALIDATION_FAILED 2.5.1 ORU_R01") and "OBR.OBR_4" in out.error
    assert "Ɖogbé" not in out.error and "CHU000123" not in out.error
    # A segment 2.5.1 does not allow where it stands.
    bad = parse(OML_251).segments
    bad.insert(2, ["OBX", "1", "NM", "718-7"])
    assert validate_outbound(bad, Delimiters(), "2.5.1", "OML_O21")[0].startswith("SEGMENT_ORDER OBX#3")


def test_hl7apy_group_and_choice_defects_are_not_inherited():
    # Two ORDER groups with specimens (hl7apy's greedy finder puts the second in PRIOR_RESULT) and
    # an ORM^O01 whose OBR is one alternative of a choice (hl7apy requires every alternative).
    assert validate_outbound(parse(OML_251).segments, Delimiters(), "2.5.1", "OML_O21") == []
    orm_23 = build_outbound(parse(OML_251), Target("lab", "2.3", "utf-8", "UNICODE UTF-8", validate="never"),
                            None, "r", {})
    assert validate_outbound(parse(orm_23.payload).segments, Delimiters(), "2.3", "ORM_O01") == []


def test_unsupported_conversion_is_an_error():
    raw = oru("", version="2.2")
    out = build_outbound(parse(raw), Target("x", "2.5.1"), None, "r", {})
    assert out.payload is None and out.error == "UNSUPPORTED_CONVERSION: 2.2 -> 2.5.1"
    out = build_outbound(parse(RDS), Target("x", "2.3"), None, "r", {})  # RDS^O13 appeared in 2.4
    assert out.payload is None and out.error == "UNSUPPORTED_STRUCTURE: RDS_O13 does not exist in 2.3"


def _radiology_orm_23() -> bytes:
    """ORU_23 made a 2.3 order for a chest X-ray: OBR-24 (diagnostic service section) = RAD."""
    raw = ORU_23.replace(b"ORU^R01", b"ORM^O01").replace(b"ORC|RE", b"ORC|NW")
    segs = [s.split(b"|") for s in raw.split(b"\r") if s]
    out = []
    for s in segs:
        if s[0] == b"OBX":
            continue
        if s[0] == b"OBR":
            s = s + [b""] * max(0, 25 - len(s))
            s[4], s[24] = b"36643-5^Radiographie thoracique^LN", b"RAD"
        out.append(b"|".join(s))
    return b"\r".join(out) + b"\r"


def test_a_radiology_order_converted_up_stays_an_order_not_a_lab_order():
    """An ORM^O01 whose OBR-24 names radiology is not a laboratory order: converted up to 2.5.1 it
    stays ORM^O01 (OML^O21 is for laboratories); to 2.7, which has no ORM_O01 and whose imaging
    order (OMI^O23) needs what an ORM does not hold, it is an error, never a lab order. The
    same order for a laboratory section still becomes OML^O21."""
    rad = _radiology_orm_23()
    work = Work.from_message(parse(rad))
    convert(work, "2.5.1", ConvertOptions())
    assert work.segments[0][8] == "ORM^O01^ORM_O01" and not any("MESSAGE_TYPE" in n for n in work.notes)
    out = build_outbound(parse(rad), Target("ris", "2.7", "utf-8", "UNICODE UTF-8"), None, "r", {})
    assert out.payload is None and out.error == "UNSUPPORTED_STRUCTURE: ORM_O01 does not exist in 2.7"
    lab = Work.from_message(parse(rad.replace(b"|RAD", b"|HM")))
    convert(lab, "2.5.1", ConvertOptions())
    assert lab.segments[0][8] == "OML^O21^OML_O21"


def test_convert_options_keep_orm_and_pick_identifier():
    work = Work.from_message(parse(ORU_23.replace(b"ORU^R01", b"ORM^O01").replace(b"ORC|RE", b"ORC|NW")))
    convert(work, "2.5.1", ConvertOptions(message_types=(("ORM^O01", "ORM^O01"),),
                                          patient_ids=(("INAM",), "first", None)))
    assert work.segments[0][8] == "ORM^O01^ORM_O01"
    pid = next(s for s in work.segments if s[0] == "PID")
    assert pid[3] == "123456789^^^INAM^MB"
    assert "DROPPED_REPETITION:PID-3" in work.notes


# ---------------------------------------------------------------------------------------------
# Mapping tables (each deployed table), review, field edits
TABLES = """
    transforms:
      surveillance:
        steps:
          - map: {field: OBX-3, table: lab_local_to_loinc, source_system: L}
          - map: {field: MSH-4.1, table: facility_to_dhis2, into: MSH-4.2}
          - set: {field: MSH-4.3, value: L}
          - remove: [PID-11.1, PID-13]
          - remove_segments: [NTE]
          - strip_z: true
      lmis:
        steps:
          - map: {field: RXD-2, table: drug_local_to_national, source_system: L}
          - map: {field: MSH-4.1, table: facility_to_dhis2}
      lenient:
        steps:
          - map: {field: OBX-3, table: lab_local_to_loinc, source_system: L, on_unmapped: keep}
      strict:
        steps:
          - map: {field: OBX-3, table: lab_local_to_loinc, source_system: L, on_unmapped: error}
      edits:
        steps:
          - copy: {from: OBR-2.1, to: OBR-3.1}
          - copy: {from: PV1-3.4, to: MSH-6}
          - set: {field: OBR-18, value: "A^B|C"}
          - set: {field: PV1-2, value: X, if_empty: true}
"""
TABLE_RULES = """
    - name: rds
      match: {message_type: RDS}
      to: [{destination: a, transform: lmis}]
    - name: lenient
      match: {where: [MSH-10 = LENIENT]}
      to: [{destination: a, transform: lenient}]
    - name: strict
      match: {where: [MSH-10 = STRICT]}
      to: [{destination: a, transform: strict}]
    - name: edits
      match: {where: [MSH-10 = EDITS]}
      to: [{destination: a, transform: edits}]
    - name: oru
      match: {message_type: ORU}
      to: [{destination: b, transform: surveillance}]
"""


def test_lab_codes_mapped_to_loinc_and_facility_to_dhis2(tmp_path):
    router = router_for(tmp_path, TABLE_RULES, TABLES)
    raw = oru("OBX|1|NM|HGB^Hémoglobine^L||9.5|g/dL|12-16|L|||F\r"
              "OBX|2|CWE|70569-9^TDR^LN^TDR-PALU^TDR paludisme^L^2.74^^TDR palu||POS|||A|||F\r"
              "OBX|3|NM|718-7^Hb^LN||9.5\r"
              "NTE|1||commentaire\rZLB|1\r")
    [res] = router.route(raw)
    assert res.error is None and res.review is None
    p = res.payload
    assert seg(p, "OBX")[3] == "718-7^Hémoglobine^LN^HGB^Hémoglobine^L"
    assert seg(p, "OBX", 2)[3] == "70569-9^TDR paludisme (Ag Plasmodium)^LN^TDR-PALU^TDR paludisme^L^^^TDR palu"
    assert seg(p, "OBX", 3)[3] == "718-7^Hb^LN"  # already LOINC, no local code: untouched
    assert seg(p, "MSH")[3] == "CHU-SO^TG-LC-GOL-CHUSO^L"
    pid = seg(p, "PID")
    assert pid[11] == "^^Lomé^Golfe^^TG" and (len(pid) <= 13 or pid[13] == "")
    assert pid[5] == "Agbéko^Noëlle"
    assert b"NTE" not in p and b"ZLB" not in p


def test_drug_codes_mapped_to_national_list(tmp_path):
    router = router_for(tmp_path, TABLE_RULES, TABLES)
    [res] = router.route(RDS)
    assert res.error is None and res.review is None
    assert seg(res.payload, "RXD")[2] == ("LNME-0101^Artéméther 20 mg + Luméfantrine 120 mg, comprimé^LNME^"
                                          "ALU2012^Artéméther 20 mg + Luméfantrine 120 mg, comprimé^L")
    assert seg(res.payload, "MSH")[3] == "TG-PL-OGO-PHA"


def test_unmapped_code_holds_the_message_for_review(tmp_path):
    router = router_for(tmp_path, TABLE_RULES, TABLES)
    raw = oru("OBX|1|NM|DENS-PF^Densité parasitaire^L||1200|/uL\rOBX|2|NM|HGB^Hb^L||9\rOBX|3|NM|DENS-PF^D^L||3\r")
    [res] = router.route(raw)
    assert res.payload is None and res.error is None
    assert res.review == [("lab_local_to_loinc", "DENS-PF")]  # once, however many OBX carry it
    assert res.outcome == "review"
    assert "Agbéko" not in repr(res)
    # on_unmapped: keep sends it unchanged; error refuses it with the table's name only.
    [kept] = router.route(raw.replace(b"|CHUSO-0300|", b"|LENIENT|"))
    assert kept.review is None and seg(kept.payload, "OBX")[3] == "DENS-PF^Densité parasitaire^L"
    [refused] = router.route(raw.replace(b"|CHUSO-0300|", b"|STRICT|"))
    assert refused.payload is None and refused.error == "UNMAPPED_CODE: lab_local_to_loinc (OBX-3)"


def test_unmapped_drug_is_reviewed(tmp_path):
    router = router_for(tmp_path, TABLE_RULES, TABLES)
    [res] = router.route(RDS.replace(b"ALU2012^", b"QUININE300^"))
    assert res.review == [("drug_local_to_national", "QUININE300")]


def test_set_copy_if_empty_and_escaping(tmp_path):
    router = router_for(tmp_path, TABLE_RULES, TABLES)
    [res] = router.route(oru("").replace(b"|CHUSO-0300|", b"|EDITS|"))
    obr, msh = seg(res.payload, "OBR"), seg(res.payload, "MSH")
    assert obr[3] == "ORD-3001^LABSYS"
    assert msh[5] == "CHU-SO"
    assert obr[18] == "A\\S\\B\\F\\C" and unescape(obr[18]) == "A^B|C"
    assert seg(res.payload, "PV1")[2] == "O"  # if_empty: not overwritten


# ---------------------------------------------------------------------------------------------
# Charsets and delimiters
def test_utf8_to_latin1_keeps_a_name_that_fits():
    raw = oru("OBX|1|NM|718-7^Hb^LN||9\r", family="Agbéko", given="Noëlle")
    out = build_outbound(parse(raw), Target("x", "keep", "iso-8859-1", "8859/1"), None, "r", {})
    assert out.error is None
    assert "Agbéko^Noëlle".encode("latin-1") in out.payload and "Agbéko".encode() not in out.payload
    back = parse(out.payload)
    assert back.codec == "iso-8859-1" and back.segments[0][17] == "8859/1"
    assert record(out.payload)["patient"]["family_name"] == "Agbéko"
    assert record(out.payload)["patient"]["given_name"] == "Noëlle"


def test_name_that_latin1_cannot_hold_is_an_error_not_mojibake():
    raw = oru("OBX|1|NM|718-7^Hb^LN||9\r", family="Ɖogbé", given="Ɛnyɔnam")
    out = build_outbound(parse(raw), Target("x", "keep", "iso-8859-1", "8859/1"), None, "r", {})
    assert out.payload is None
    assert out.error == "CHARSET_UNREPRESENTABLE: PID-5 cannot be encoded in iso-8859-1"
    assert "Ɖ" not in out.error and "?" not in out.error


def test_latin1_sender_to_utf8_receiver():
    raw = oru("", family="Kpémissi", given="Séna").decode().replace("UNICODE UTF-8", "8859/1").encode("latin-1")
    out = build_outbound(parse(raw), Target("x", "keep", "utf-8", "UNICODE UTF-8"), None, "r", {})
    assert "Kpémissi^Séna".encode() in out.payload and seg(out.payload, "MSH")[17] == "UNICODE UTF-8"
    # \Xhh\ escapes are bytes of the message's charset: Latin-1 E9 is UTF-8 C3A9.
    escaped = raw.replace(b"Quartier B\xe8", b"Quartier B\\XE8\\")
    out = build_outbound(parse(escaped), Target("x", "keep", "utf-8", "UNICODE UTF-8"), None, "r", {})
    assert seg(out.payload, "PID")[11].startswith("Quartier B\\XC3A8\\^")
    assert record(out.payload)["patient"]["family_name"] == "Kpémissi"


def test_delimiter_change_escapes_new_delimiters():
    raw = oru("OBX|1|ST|X^x^L||50 @ 3 \\T\\ 100% #2\r")
    out = build_outbound(parse(raw), Target("x", "keep", None, None, Delimiters("!", "@", "#", "$", "%")),
                         None, "r", {})
    p = parse(out.payload)
    assert out.payload.startswith(b"MSH!@#$%!LABSYS!CHU-SO!")
    assert p.delims == Delimiters("!", "@", "#", "$", "%")
    obx = [s for s in p.segments if s[0] == "OBX"][0]
    assert unescape(obx[5], p.delims) == "50 @ 3 & 100% #2"
    assert obx[3] == "X@x@L"
    assert [s for s in p.segments if s[0] == "PID"][0][5] == "Agbéko@Noëlle"


# ---------------------------------------------------------------------------------------------
# Hooks
HOOK_MODULE = '''
from transforms.parser import escape, unescape
from transforms.hl7transform import get_field, set_field

def upper_family(segments, ctx):
    d = ctx.delimiters
    for s in segments:
        if s[0] == "PID":
            comps = get_field(s, 5).split(d.component)
            comps[0] = escape(unescape(comps[0], d).upper(), d)
            set_field(s, 5, d.component.join(comps))
    ctx.note("FAMILY_UPPER:" + ctx.params["why"])

def needs_review(segments, ctx):
    ctx.review("ward_codes", "MED")

def explodes(segments, ctx):
    raise ValueError("patient Agbéko is broken")

def replaces(segments, ctx):
    return [s for s in segments if s[0] in ("MSH", "PID")]

def empties(segments, ctx):
    return []
'''


@pytest.fixture
def hook_module(tmp_path, monkeypatch):
    name = f"routing_hooks_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(HOOK_MODULE, encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


def test_hooks(tmp_path, hook_module):
    transforms = f"""
        transforms:
          upper:
            steps:
              - hook: {hook_module}:upper_family
                params: {{why: lab}}
          review:
            steps:
              - hook: {hook_module}:needs_review
          boom:
            steps:
              - hook: {hook_module}:explodes
          replace:
            steps:
              - hook: {hook_module}.replaces
          empty:
            steps:
              - hook: {hook_module}:empties
    """
    router = router_for(tmp_path, """
        - name: r
          to: [{destination: a, transform: upper}, {destination: b, transform: review},
               {destination: c, transform: boom}, {destination: d, transform: replace},
               {destination: e, transform: empty}]
    """, transforms, dests=BASIC_DESTS + "      d: {type: folder, path: /tmp/d}\n      e: {type: folder, path: /tmp/e}\n")
    up, rev, boom, rep, empty = router.route(oru("", family="Ɖogbé"))
    assert seg(up.payload, "PID")[5] == "ƉOGBÉ^Noëlle" and "FAMILY_UPPER:lab" in up.notes
    assert rev.payload is None and rev.review == [("ward_codes", "MED")]
    assert boom.payload is None and boom.error == f"HOOK_FAILED: {hook_module}:explodes (ValueError)"
    assert [s[0] for s in parse(rep.payload).segments] == ["MSH", "PID"]
    assert empty.payload is None and empty.error.startswith(f"HOOK_FAILED: {hook_module}:empties (returned")


def test_builtin_hook_copies_the_insurer_number(tmp_path):
    router = router_for(tmp_path, """
        - name: r
          to: [{destination: a, transform: t}]
    """, """
        transforms:
          t:
            steps:
              - hook: transforms.hl7transform:hook_insurer_id_to_pid2
                params: {authority: INAM}
    """)
    [res] = router.route(ORM_251)
    assert seg(res.payload, "PID")[2] == "123456789^^^INAM^MB"


# ---------------------------------------------------------------------------------------------
# hl7ics route test
def test_route_test_cli(tmp_path, capsys):
    routes = tmp_path / "cli" / "routes.yaml"
    routes.parent.mkdir()
    cfg(routes.parent, textwrap.dedent(BASIC_DESTS).replace("c: {type: folder, path: /tmp/c}",
                                           "c: {type: folder, path: /tmp/c, version: '2.3', charset: utf-8}")
        + "rules:\n" + textwrap.indent(textwrap.dedent(TABLE_RULES), "  ")
        + "  - name: orders\n    match: {message_type: [OML^O21]}\n    to: [c]\n", TABLES)
    good = tmp_path / "good.hl7"
    good.write_bytes(OML_251 + oru("OBX|1|NM|HGB^Hb^L||9\r") + ORM_251)
    rc = cli_route_test(argparse.Namespace(file=str(good), routes=str(routes)))
    out = capsys.readouterr().out
    assert rc == 0
    assert "rules: orders (stop)" in out and "rules: oru (stop)" in out
    assert "-> c [no transformation]" in out and "HL7 2.3" in out
    assert "\nMSH|^~\\&|SIH-CHU|CHU-SO|HL7ICS|MOH-TG|20261102083000||ORM^O01|CHUSO-0101|P|2.3" in out
    assert "\nORC|NW|ORD-1001^SIH-CHU|||||1&mL^^D3^20261102090000^^S||20261102083000\n" in out
    assert "\r" not in out
    assert "no rule matched: filtered" in out  # ORM_251 has no rule here
    assert "notes: MESSAGE_TYPE:OML^O21->ORM^O01" in out
    assert "summary: 3 messages: 2 routed, 1 filtered, 0 need review, 0 failed" in out

    bad = tmp_path / "bad.hl7"
    bad.write_bytes(oru("OBX|1|NM|DENS-PF^D^L||9\r") + RDS.replace(b"ALU2012^", b"QUININE300^"))
    rc = cli_route_test(argparse.Namespace(file=str(bad), routes=str(routes)))
    out = capsys.readouterr().out
    assert rc == 1
    assert "REVIEW held, unmapped codes: lab_local_to_loinc:DENS-PF" in out
    assert "REVIEW held, unmapped codes: drug_local_to_national:QUININE300" in out
    assert "summary: 2 messages: 0 routed, 0 filtered, 2 need review, 0 failed" in out


def test_route_test_cli_reports_errors_without_values(tmp_path):
    routes = tmp_path / "routes.yaml"
    cfg(tmp_path, textwrap.dedent(BASIC_DESTS).replace("a: {type: folder, path: /tmp/a}",
                                      "a: {type: folder, path: /tmp/a, charset: iso-8859-1}")
        + "rules:\n  - name: all\n    to: [a]\n")
    f = tmp_path / "m.hl7"
    f.write_bytes(b"garbage without header\r" + oru("", family="Ɖogbé"))
    buf = io.StringIO()
    rc = cli_route_test(argparse.Namespace(file=str(f), routes=str(routes), out=buf))
    out = buf.getvalue()
    assert rc == 1
    assert "ERROR CHARSET_UNREPRESENTABLE: PID-5 cannot be encoded in iso-8859-1" in out
    assert "ERROR unroutable: MISSING_MSH" in out
    assert "Ɖogbé" not in out
    assert "summary: 2 messages: 0 routed, 0 filtered, 0 need review, 2 failed" in out


def test_keep_charset_names_8bit_text_the_sender_left_unlabelled():
    """A Latin-1 sender with no MSH-18 (read with its facility's default): kept as Latin-1 bytes,
    the copy must say so in MSH-18, since an empty MSH-18 means ASCII and é, è, ô would be misread.
    A pure ASCII message keeps its empty MSH-18."""
    from transforms.hl7transform import get_field

    doc = {"destinations": {"keep": {"type": "folder", "path": "/tmp"}},
           "rules": [{"name": "r", "match": {}, "to": ["keep"]}]}
    router = Router(RouteConfig.from_dict(doc, transforms_doc={"transforms": {}}, tables={}))
    head = "MSH|^~\\&|APP|FAC|R|RF|20240101||ADT^A01^ADT_A01|C{n}|P|2.5.1|||||TG\rEVN|A01|20240101\r"
    latin = (head.format(n=1) + "PID|1||123^^^FAC^MR||Amégbé^Élodie è ë ô||19800101|F\rPV1|1|I\r").encode("latin-1")
    [res] = router.route(latin, facility_charset="iso-8859-1")
    out = parse(res.payload, "iso-8859-1")
    assert get_field(out.segments[0], 18) == "8859/1" and "MSH-18_SET" in res.notes
    assert "Amégbé" in out.text and res.payload.count(b"\xe9") == latin.count(b"\xe9")
    ascii_only = (head.format(n=2) + "PID|1||123^^^FAC^MR||Mensah^Kofi||19800101|M\rPV1|1|I\r").encode("ascii")
    [res] = router.route(ascii_only, facility_charset="iso-8859-1")
    assert get_field(parse(res.payload).segments[0], 18) == "" and res.payload == ascii_only


def test_a_destination_reached_by_two_rules_gets_one_copy(tmp_path):
    """Two matching rules send to the same destination with different transformations: one copy,
    the first rule's. Two would carry one MSH-10, and the receiver drops or mis-files the second."""
    router = router_for(tmp_path, """
        - name: first
          continue: true
          to: [a]
        - name: second
          to: [{destination: a, transform: upper}, b]
    """, """
        transforms:
          upper:
            steps:
              - set: {field: PID-5.1, value: X}
    """)
    results = router.route(oru(""))
    assert [(r.rule, r.destination) for r in results] == [("first", "a"), ("second", "b")]


# ---------------------------------------------------------------------------------------------
# Repetitions, timing, charsets (review of 2026-12-06)
def _xform(steps: str):
    import yaml

    from transforms.hl7transform import compile_transform, load_mappings

    tables = load_mappings(MAPPINGS)
    return compile_transform("t", {"steps": yaml.safe_load(steps)}, "t", tables), tables


def _pid11(addresses: str) -> bytes:
    return oru("OBX|1|NM|718-7^Hb^LN||9\r").replace("Quartier Bè^^Lomé^Golfe^^TG".encode(), addresses.encode())


def test_removing_a_component_clears_it_in_every_repetition():
    """Data minimisation for surveillance: the street of a second address must go too."""
    t, tables = _xform("- remove: [PID-11.1, PID-11.2]\n")
    raw = _pid11("Rue 12^Bp 45^Lomé^Golfe^^TG^H~Rue 7 Tokoin^Bp 9^Lomé^Golfe^^TG^C")
    out = build_outbound(parse(raw), Target("x"), t, "r", tables)
    assert seg(out.payload, "PID")[11] == "^^Lomé^Golfe^^TG^H~^^Lomé^Golfe^^TG^C"


def test_copying_a_repeated_field_copies_one_repetition_and_says_so():
    """Most copy destinations do not repeat (PID-3 -> PID-2): the first repetition goes, and the
    others are noted as dropped rather than lost silently."""
    t, tables = _xform("- copy: {from: PID-11, to: PID-12}\n")
    out = build_outbound(parse(_pid11("Rue 12^^Lomé~Rue 7^^Kara")), Target("x"), t, "r", tables)
    assert seg(out.payload, "PID")[12] == "Rue 12^^Lomé" and "DROPPED_REPETITION:PID-11" in out.notes
    out = build_outbound(parse(_pid11("Rue 12^^Lomé")), Target("x"), t, "r", tables)
    assert seg(out.payload, "PID")[12] == "Rue 12^^Lomé" and not any("DROPPED" in n for n in out.notes)


def test_mapping_a_component_maps_every_repetition_and_holds_an_unmapped_one():
    t, tables = _xform("- map: {field: OBX-5.1, table: lab_local_to_loinc}\n")
    out = build_outbound(parse(oru("OBX|1|CWE|X^x^L||HGB^Hb^L~DENS-PF^D^L|||A|||F\r")), Target("x"), t, "r", tables)
    assert out.payload is None and out.review == [("lab_local_to_loinc", "DENS-PF")]
    out = build_outbound(parse(oru("OBX|1|CWE|X^x^L||HGB^Hb^L~HGB^Hb^L|||A|||F\r")), Target("x"), t, "r", tables)
    assert seg(out.payload, "OBX")[5] == "718-7^Hb^L~718-7^Hb^L"


def test_a_second_identifier_moved_to_pid2_is_one_identifier():
    """PID-2 does not repeat: one identifier goes there, the others are dropped and noted."""
    t, tables = _xform("- patient_ids: {prefer: [MR], keep: first, others_to: PID-2}\n")
    raw = oru("").replace(b"CHU000555^^^CHU-SO^MR", b"CHU000555^^^CHU-SO^MR~INAM9^^^INAM^MB~NIN7^^^ANID^NI")
    out = build_outbound(parse(raw), Target("x"), t, "r", tables)
    pid = seg(out.payload, "PID")
    assert pid[3] == "CHU000555^^^CHU-SO^MR" and pid[2] == "INAM9^^^INAM^MB"
    assert "DROPPED_REPETITION:PID-3" in out.notes


def test_obr27_that_differs_from_orc7_is_kept_when_timing_moves_to_tq1():
    obr = ["OBR", "1", "ORD-1", "LAB-1", "TDR^TDR^L", "", "", "20261102"] + [""] * 20
    obr[25], obr[27] = "F", "1^Q6H^D3^20261102090000^^S"
    raw = ("MSH|^~\\&|SIL|INH|X|Y|20261102||ORU^R01|C2|P|2.3|||AL|NE||UNICODE UTF-8\r"
           "PID|1||CHU000123^^^CHU-SO^MR||Mensah^Kofi\r"
           "ORC|RE|ORD-1|LAB-1||CM||^^^20261102090000^^R\r" + "|".join(obr) + "\r"
           "OBX|1|NM|HGB^Hb^L||9.5||||||F\r").encode()
    out = build_outbound(parse(raw), Target("ehr", "2.5.1", "utf-8", "UNICODE UTF-8"), None, "r", {})
    assert out.error is None and "OBR-27_KEPT" in out.notes
    assert seg(out.payload, "OBR")[27] == "1^Q6H^D3^20261102090000^^S"
    same = raw.replace(b"1^Q6H^D3^20261102090000^^S", b"^^^20261102090000^^R")
    out = build_outbound(parse(same), Target("ehr", "2.5.1", "utf-8", "UNICODE UTF-8"), None, "r", {})
    assert len(seg(out.payload, "OBR")) <= 27 or seg(out.payload, "OBR")[27] == ""


def test_cp1252_text_is_labelled_or_sent_as_utf8_when_the_charset_is_kept():
    """A facility without MSH-18 whose bytes were read as CP1252 (no HL7 name): Latin-1 text goes
    out as 8859/1 (same bytes); text with a CP1252-only letter goes out in UTF-8, labelled."""
    base = oru("").decode().replace("UNICODE UTF-8", "")
    latin = base.replace("Agbéko", "Agbéko").encode("cp1252")
    msg = parse(latin)
    assert msg.codec == "cp1252"
    out = build_outbound(msg, Target("x"), None, "r", {})
    assert seg(out.payload, "MSH")[17] == "8859/1" and out.payload == latin.replace(b"||\rPID", b"||8859/1\rPID", 1)
    œ = base.replace("Agbéko", "Sœur Agbéko").encode("cp1252")
    out = build_outbound(parse(œ), Target("x"), None, "r", {})
    assert seg(out.payload, "MSH")[17] == "UNICODE UTF-8" and "CHARSET_RECODED" in out.notes
    assert record(out.payload)["patient"]["family_name"] == "Sœur Agbéko"
    # A CP1252-only character may hide in a \X..\ escape (80 is €): UTF-8 too, not an error.
    euro = base.replace("Agbéko", "Agbéko").replace("PV1|", "NTE|1||5 \\X80\\\rPV1|", 1).encode("cp1252")
    out = build_outbound(parse(euro), Target("x"), None, "r", {})
    assert out.error is None and seg(out.payload, "MSH")[17] == "UNICODE UTF-8"
    assert seg(out.payload, "NTE")[3] == "5 \\XE282AC\\"


def test_utf8_letter_split_over_two_hex_escapes_converts_to_latin1():
    raw = oru("NTE|1||Pr\\XC3\\\\XA9\\lèvement\r")
    out = build_outbound(parse(raw), Target("x", "keep", "iso-8859-1", "8859/1"), None, "r", {})
    assert out.error is None and seg(out.payload, "NTE")[3] == "Pr\\XE9\\lèvement"


def test_decomposed_accents_fit_latin1_and_replacement_characters_are_noted():
    import unicodedata

    raw = oru("OBX|1|NM|718-7^Hb^LN||9\r", family=unicodedata.normalize("NFD", "Agbéko"))
    out = build_outbound(parse(raw), Target("x", "keep", "iso-8859-1", "8859/1"), None, "r", {})
    assert out.error is None and "Agbéko".encode("latin-1") in out.payload
    damaged = oru("OBX|1|NM|718-7^Hb^LN||9\r").replace("Agbéko".encode(), b"Agb\xe9ko")
    out = build_outbound(parse(damaged), Target("x"), None, "r", {})
    assert "SOURCE_INVALID_BYTES" in out.notes
