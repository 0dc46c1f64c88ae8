"""Routing throughput: 50 rules with code mapping on the generated mix (transforms.routing).

Three measurements on the same messages, median of runs:
- parse + match: the hot path every received message pays (tokenize, header, 50 compiled rules);
- route without version change: match, then build every destination's copy (code mapping through
  the deployed tables, field edits, Z-segments stripped, re-encoding) - the 10,000 msgs/s target;
- route with version conversion: the same rules where lab orders go to a 2.3 lab and lab results
  of older senders to a 2.5.1 surveillance gateway, so those copies are converted and validated
  with hl7apy; the share of messages that went through hl7apy is reported next to the rate.
"""
from __future__ import annotations

from pathlib import Path

from transforms import generator, hl7transform
from transforms.parser import parse
from transforms.routing import RouteConfig, Router

from .common import median_time, table

CONFIG = Path(__file__).resolve().parent.parent / "config"
FACILITIES = ("CHU-SO", "CHU-KARA", "CHR-SOKODE", "HD-TSEVIE", "INH-LOME", "PHARM-ATAKPAME", "USP-NANERGOU")
FAMILIES = {  # rule family -> (message types, extra predicate)
    "adt": (["ADT"], "PID-3 exists"),
    "orders": (["ORM^O01", "OML^O21"], "ORC-1 in [NW, CA, XO]"),
    "results": (["ORU^R01"], "OBX-3.1 exists"),
    "pharmacy": (["RDE", "RDS"], "ORC exists"),
    "billing": (["DFT"], "FT1-7 exists"),
    "immunization": (["VXU"], "RXA-5.1 exists"),
    "other": (["SIU", "MDM"], "MSH-11 = P"),
}
TRANSFORMS = {"transforms": {
    "codes": {"steps": [
        {"map": {"field": "OBX-3", "table": "lab_local_to_loinc", "source_system": "L", "on_unmapped": "review"}},
        {"map": {"field": "RXE-2", "table": "drug_local_to_national", "source_system": "L"}},
        {"map": {"field": "RXD-2", "table": "drug_local_to_national", "source_system": "L"}},
        {"map": {"field": "MSH-4.1", "table": "facility_to_dhis2", "into": "MSH-4.2"}},
        {"set": {"field": "MSH-5", "value": "HL7ICS-OUT"}},
        {"strip_z": True},
    ]},
    "lab": {"steps": [{"strip_z": True}, {"patient_ids": {"prefer": ["MR"], "keep": "first"}}]},
}}


def _doc(convert: bool) -> dict:
    """50 rules: a test-message filter, then one per facility x family, most with a field predicate."""
    dests = {f"fac-{f.lower()}": {"type": "folder", "path": f"/srv/out/{f}", "charset": "utf-8"} for f in FACILITIES}
    dests["lab-legacy"] = {"type": "mllp", "host": "lab.example", "port": 2575,
                           "version": "2.3" if convert else "keep", "charset": "utf-8"}
    dests["surveillance"] = {"type": "queue", "queue": "surv", "conn_id": "mq",
                             "version": "2.5.1" if convert else "keep", "charset": "utf-8"}
    rules = [{"name": "drop-tests", "match": {"where": ["MSH-11 = T"]}, "to": []}]
    for fam, (types, pred) in FAMILIES.items():
        for fac in FACILITIES:
            to = [{"destination": f"fac-{fac.lower()}", "transform": "codes"}]
            if fam == "orders" and fac.startswith("CHU"):
                to.append({"destination": "lab-legacy", "transform": "lab"})
            if fam == "results":
                to.append({"destination": "surveillance", "transform": "codes"})
            rules.append({"name": f"{fam}-{fac.lower()}",
                          "match": {"sending_facility": [fac], "message_type": types, "where": [pred]},
                          "to": to})
    assert len(rules) == 50
    return {"destinations": dests, "rules": rules}


def _router(convert: bool) -> Router:
    return Router(RouteConfig.from_dict(_doc(convert), "bench-routes", CONFIG, transforms_doc=TRANSFORMS,
                                        tables=hl7transform.load_mappings(CONFIG / "mappings")))


def _match_all(router: Router, msgs: list[bytes]) -> None:
    for m in msgs:
        router.match(parse(m))


def _route_all(router: Router, msgs: list[bytes], stats: dict | None = None) -> None:
    for m in msgs:
        res = router.route(m)
        if stats is not None:
            stats["outputs"] += sum(r.payload is not None for r in res)
            stats["review"] += any(r.review for r in res)


def run(quick: bool = False) -> dict:
    n = 4_000 if quick else 20_000
    n_conv = 600 if quick else 1_500
    runs = 3 if quick else 5
    msgs = generator.generate_mix(n, seed=13)
    plain, converting = _router(False), _router(True)

    t_match = median_time(lambda: _match_all(plain, msgs), runs)
    stats = {"outputs": 0, "review": 0}
    _route_all(plain, msgs, stats)
    t_route = median_time(lambda: _route_all(plain, msgs), runs)

    # Count the messages that went through hl7apy validation (one pass, outside the timing).
    sample = msgs[:n_conv]
    validated: set[int] = set()
    real = hl7transform.validate_outbound
    current = {"i": -1}

    def counting(*a, **kw):
        validated.add(current["i"])
        return real(*a, **kw)

    hl7transform.validate_outbound = counting
    try:
        for i, m in enumerate(sample):
            current["i"] = i
            converting.route(m)
    finally:
        hl7transform.validate_outbound = real
    conv_runs = 3
    t_conv = median_time(lambda: _route_all(converting, sample), conv_runs)
    share = len(validated) / len(sample)

    rows = [
        ["parse + match, 50 rules", n / t_match, "", ""],
        ["route: match + codes mapped, no version change", n / t_route, stats["outputs"] / t_route, "0%"],
        ["route: + 2.5.1->2.3 orders, <2.5->2.5.1 results", len(sample) / t_conv, "", f"{share:.1%}"],
    ]
    print(table(f"Routing ({n:,} generated messages, {len(sample):,} with conversions; median of {runs} and "
                f"{conv_runs} runs)", ["routing", "msgs/s", "copies/s", "msgs via hl7apy"], rows))
    return {"rules": 50, "messages": n, "match_msgs_per_s": n / t_match, "route_msgs_per_s": n / t_route,
            "copies_per_s": stats["outputs"] / t_route, "held_for_review_share": stats["review"] / n,
            "route_with_conversion_msgs_per_s": len(sample) / t_conv, "hl7apy_share": share}
