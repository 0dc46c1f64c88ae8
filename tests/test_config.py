"""The facility registry: the shipped file is valid, and mistakes get errors naming file, facility and key."""
from __future__ import annotations

import pytest
import yaml

from transforms.config import ConfigError, Settings, load_facilities, parse_facilities

GOOD = {"code": "CHU-X", "name": "CHU X", "type": "chu", "region": "Kara", "district": "Kozah",
        "dhis2_org_unit": "TG-X", "charset": "8859/1", "message_types": ["ADT^A01"],
        "sources": [{"type": "folder", "path": "inbound/CHU-X"}]}


def test_shipped_configuration_is_valid():
    facs = Settings.load().facilities()
    assert len(facs) >= 6
    assert {f.region for f in facs} == {"Lomé-Commune", "Maritime", "Plateaux", "Centrale", "Kara", "Savanes"}
    assert {"chu", "chr", "district_hospital", "reference_lab", "pharmacy", "peripheral_unit"} <= {f.type for f in facs}
    for f in facs:
        assert f.sources and f.sources[0].type == "folder"


def test_defaults_are_filled():
    (f,) = parse_facilities({"facilities": [GOOD]})
    assert f.timezone == "Africa/Lome" and f.working_hours == (0, 24)
    src = f.sources[0]
    assert src.options["glob"] == "*.hl7" and src.options["partial_upload"] == "tmp_rename"


@pytest.mark.parametrize("change,message", [
    ({"code": "chu x"}, "facility chu x: code must be"),
    ({"region": "Lomé"}, "region 'Lomé' is not one of the six health regions"),
    ({"type": "hospital"}, "type 'hospital' is not one of"),
    ({"charset": "klingon"}, "charset 'klingon' is not a known"),
    ({"charset": "UNICODE UTF-16"}, "charset 'UNICODE UTF-16'"),
    ({"timezone": "Mars/Olympus"}, "timezone 'Mars/Olympus'"),
    ({"message_types": ["ADT-A01"]}, "message_types must be"),
    ({"working_hours": [18, 8]}, "working_hours must be"),
    ({"sources": [{"type": "ftp"}]}, "source type 'ftp' is not one of"),
    ({"sources": [{"type": "folder"}]}, "missing required key 'path'"),
    ({"sources": [{"type": "folder", "path": "x", "partial_upload": "hope"}]}, "partial_upload must be"),
    ({"name": None}, "missing required key 'name'"),
    # Found by review: each of these was accepted, or crashed with an unclear error.
    ({"expected_interval_minute": 5}, "unknown key(s) expected_interval_minute"),
    ({"expected_interval_minutes": True}, "expected_interval_minutes must be a positive integer"),
    ({"working_hours": [True, 18]}, "working_hours must be"),
    ({"charset": 1252}, "charset must be a name"),
    ({"sources": [{"type": "folder", "path": "x", "glob": "../CHU-SO/*.hl7"}]}, "glob must stay inside"),
    ({"sources": [{"type": "folder", "path": "x", "glob": "/x/*"}]}, "glob must stay inside"),
    ({"sources": [{"type": "folder", "path": "x", "glob": ""}]}, "glob must be a non-empty pattern"),
    ({"sources": [{"type": "folder", "path": "x", "glob": None}]}, "glob must be a non-empty pattern"),
    ({"sources": [{"type": "sftp", "conn_id": "c", "glob": None}]}, "glob must be a non-empty pattern"),
    ({"sources": [{"type": "folder", "path": "x", "stable_seconds": False}]}, "stable_seconds must be"),
    ({"sources": [{"type": "folder", "path": "x", "stable_second": 5}]}, "unknown key(s) stable_second"),
    ({"sources": [{"type": "queue", "conn_id": "c", "queue": "q", "prefetch": True}]}, "prefetch must be"),
    ({"sources": [{"type": "sftp", "conn_id": "c", "archive": "../../etc"}]}, "archive must be a folder below"),
    ({"sources": [{"type": "folder", "path": "x", "archive": False}]}, "only 'true' is accepted"),
    ({"sources": [{"type": "sftp", "conn_id": "c", "archive": "/srv/old"}]}, "archive must be a folder below"),
    ({"sources": [{"type": "sftp", "conn_id": "c", "archive": "./"}]}, "archive must be a folder below"),
])
def test_errors_name_the_facility_and_key(change, message):
    entry = {**GOOD, **change}
    with pytest.raises(ConfigError) as err:
        parse_facilities({"facilities": [entry]}, "facilities.yaml")
    assert message in str(err.value) and "facilities.yaml" in str(err.value)


def test_two_facilities_cannot_read_one_folder():
    other = {**GOOD, "code": "CHR-Y", "sources": [{"type": "folder", "path": "inbound/./CHU-X"}]}
    with pytest.raises(ConfigError, match=r"facilities CHU-X and CHR-Y both read inbound/CHU-X \(folder source\)"):
        parse_facilities({"facilities": [GOOD, other]})
    other["sources"] = [{"type": "folder", "path": "inbound/CHR-Y"}]
    assert len(parse_facilities({"facilities": [GOOD, other]})) == 2


def test_two_facilities_cannot_read_one_queue():
    """Each would take the other's messages under its own code."""
    queue = {"type": "queue", "conn_id": "amqp", "queue": "hl7.shared"}
    one = {**GOOD, "sources": [queue]}
    other = {**GOOD, "code": "CHR-Y", "sources": [queue]}
    with pytest.raises(ConfigError, match=r"facilities CHU-X and CHR-Y both read hl7.shared \(queue source\); "
                                          r"each facility needs a queue of its own"):
        parse_facilities({"facilities": [one, other]})
    other["sources"] = [{**queue, "queue": "hl7.chr-y"}]
    assert len(parse_facilities({"facilities": [one, other]})) == 2


def test_duplicate_codes_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="duplicate facility code"):
        parse_facilities({"facilities": [GOOD, GOOD]})
    p = tmp_path / "facilities.yaml"
    p.write_text("facilities:\n  - code: [unclosed\n")
    with pytest.raises(ConfigError, match=r"line \d+ is not valid YAML"):
        load_facilities(p)
    with pytest.raises(ConfigError, match="not found"):
        load_facilities(tmp_path / "missing.yaml")
    p.write_text(yaml.safe_dump({"facility": []}))
    with pytest.raises(ConfigError, match="top-level 'facilities:'"):
        load_facilities(p)


def test_config_dir_from_flag_and_environment(tmp_path, monkeypatch):
    (tmp_path / "facilities.yaml").write_text(yaml.safe_dump({"facilities": [GOOD]}, allow_unicode=True))
    assert [f.code for f in Settings.load(tmp_path).facilities()] == ["CHU-X"]
    monkeypatch.setenv("HL7ICS_CONFIG", str(tmp_path))
    assert [f.code for f in Settings.load().facilities()] == ["CHU-X"]
