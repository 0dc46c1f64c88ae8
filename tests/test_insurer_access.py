"""Insurer row-level security on the real PostgreSQL: each insurer's staff, logging in with their own
role, read only their insurer's claims and lines through the two views, and nothing else."""
from __future__ import annotations

import uuid

import pytest

CLAIM_COLUMNS = ["claim_id", "insurer_code", "facility_code", "visit_number", "member_id", "plan_code",
                 "patient_class", "admit_at", "discharge_at", "diagnosis_codes", "lines", "total_amount",
                 "copay_rate", "copay_amount", "claimed_amount", "currency", "status"]
LINE_COLUMNS = ["claim_id", "line_no", "charge_code", "description", "quantity", "unit_amount", "amount",
                "currency", "charged_at"]
CLAIMS = {"C-INAM-1": "INAM", "C-INAM-2": "INAM", "C-CNSS-1": "CNSS", "C-SUNU-1": "SUNU", "C-NOROLE-1": "XNOROLE"}
ADMIN = "host=127.0.0.1 user=postgres dbname=postgres"


def _insert_claims(eng):
    from sqlalchemy import text

    with eng.begin() as conn:
        for i, (claim_id, insurer) in enumerate(sorted(CLAIMS.items())):
            conn.execute(text(
                "INSERT INTO claim (claim_id, insurer_code, facility_code, visit_number, patient_key, member_id, "
                "plan_code, patient_class, admit_at, discharge_at, diagnosis_codes, first_charge_at, last_charge_at, "
                "lines, total_amount, copay_rate, copay_amount, claimed_amount, currency, status, content_sha256, "
                "updated_at) VALUES (:id, :ins, 'CHU-SO', :visit, :pk, :member, 'P1', 'I', '2026-11-02 08:00:00', "
                "'2026-11-04 10:00:00', 'B54', '2026-11-02 09:00:00', '2026-11-03 09:00:00', 2, 15000, 0.2, 3000, "
                "12000, 'XOF', 'ready', :sha, '2026-11-05 00:00:00')"),
                {"id": claim_id, "ins": insurer, "visit": f"V{i}", "pk": f"pk{i:030d}", "member": f"M{i}",
                 "sha": f"{i:064d}"})
            for line in (1, 2):
                conn.execute(text(
                    "INSERT INTO claim_line (claim_id, line_no, message_id, ft1_seq, charge_code, description, "
                    "quantity, unit_amount, amount, currency, charged_at) VALUES (:id, :n, :m, :n, 'CONS', "
                    "'Consultation', 1, 7500, 7500, 'XOF', '2026-11-02 09:00:00')"),
                    {"id": claim_id, "n": line, "m": 100 + i})


@pytest.mark.postgres
def test_each_insurer_sees_only_its_own_claims(pg_url, hl7ics_home):
    import psycopg

    from transforms.insurer_access import create_insurer_roles
    from transforms.privacy import create_roles
    from transforms.warehouse import dispose_all, get_engine

    eng = get_engine(pg_url)
    _insert_claims(eng)
    create_roles(eng)  # production order: sql/roles.sql revokes the schema from PUBLIC
    assert create_insurer_roles(eng, ["INAM", "CNSS", "SUNU"]) == ["insurer_inam", "insurer_cnss", "insurer_sunu"]
    assert create_insurer_roles(eng, ["INAM", "CNSS", "SUNU", "inam"]) == [
        "insurer_inam", "insurer_cnss", "insurer_sunu"]  # idempotent
    db = pg_url.rsplit("/", 1)[1]
    tag = uuid.uuid4().hex[:8]
    users = {"INAM": f"t_inam_{tag}", "CNSS": f"t_cnss_{tag}", "direct": f"t_direct_{tag}",
             "engineer": f"t_eng_{tag}"}
    with psycopg.connect(ADMIN, autocommit=True) as admin:
        admin.execute(f'CREATE ROLE "{users["INAM"]}" LOGIN IN ROLE insurer_inam')
        admin.execute(f'CREATE ROLE "{users["CNSS"]}" LOGIN IN ROLE insurer_cnss')
        admin.execute(f'CREATE ROLE "{users["direct"]}" LOGIN IN ROLE insurer_cnss')
        admin.execute(f'CREATE ROLE "{users["engineer"]}" LOGIN IN ROLE data_engineer')
    try:
        def connect(user):
            return psycopg.connect(f"host=127.0.0.1 user={user} dbname={db}", autocommit=True)

        def denied(user, sql) -> bool:
            with connect(user) as c:
                try:
                    c.execute(sql).fetchall()
                    return False
                except psycopg.errors.InsufficientPrivilege:
                    return True

        for insurer in ("INAM", "CNSS"):
            user = users[insurer]
            own = sorted(k for k, v in CLAIMS.items() if v == insurer)
            with connect(user) as c:
                cur = c.execute("SELECT * FROM insurer_claims ORDER BY claim_id")
                assert [d.name for d in cur.description] == CLAIM_COLUMNS  # no patient_key
                rows = cur.fetchall()
                assert [r[0] for r in rows] == own
                assert {r[1] for r in rows} == {insurer}
                cur = c.execute("SELECT * FROM insurer_claim_lines ORDER BY claim_id, line_no")
                assert [d.name for d in cur.description] == LINE_COLUMNS
                assert [(r[0], r[1]) for r in cur.fetchall()] == [(k, n) for k in own for n in (1, 2)]
                other = "CNSS" if insurer == "INAM" else "INAM"
                assert c.execute("SELECT COUNT(*) FROM insurer_claims WHERE insurer_code = %s",
                                 (other,)).fetchone()[0] == 0
                assert c.execute("SELECT COUNT(*) FROM insurer_claim_lines WHERE claim_id LIKE %s",
                                 (f"C-{other}-%",)).fetchone()[0] == 0
                # A leaky function of the user's own sees only rows the view's filter let through
                # (security_barrier): it raises a notice for every claim it is shown.
                seen: list[str] = []
                c.add_notice_handler(lambda d: seen.append(d.message_primary))
                c.execute("CREATE FUNCTION pg_temp.peek(text) RETURNS boolean LANGUAGE plpgsql COST 0.0000001 "
                          "AS $$ BEGIN RAISE NOTICE 'saw %', $1; RETURN true; END $$")
                c.execute("SELECT claim_id FROM insurer_claims WHERE pg_temp.peek(claim_id)").fetchall()
                assert sorted(seen) == [f"saw {k}" for k in own]
            for sql in ("SELECT claim_id FROM claim", "SELECT * FROM claim", "SELECT claim_id FROM claim_line",
                        "SELECT * FROM phi_patient", "SELECT * FROM message_store", "SELECT * FROM fact_charge",
                        "SELECT * FROM fact_coverage", "SELECT * FROM claim_extract", "SELECT * FROM dim_patient"):
                assert denied(user, sql), (insurer, sql)

        # Row-level security on the base tables too: a CNSS member granted the table directly (a
        # mistake the policies contain) still reads only CNSS rows.
        with psycopg.connect(f"host=127.0.0.1 user=postgres dbname={db}", autocommit=True) as owner:
            owner.execute(f'GRANT SELECT ON claim, claim_line TO "{users["direct"]}"')
        with connect(users["direct"]) as c:
            assert [r[0] for r in c.execute("SELECT claim_id FROM claim ORDER BY 1")] == ["C-CNSS-1"]
            assert {r[0] for r in c.execute("SELECT claim_id FROM claim_line")} == {"C-CNSS-1"}

        # data_engineer keeps reading every claim (RLS must not hide them from operations).
        with connect(users["engineer"]) as c:
            assert c.execute("SELECT COUNT(*) FROM claim").fetchone()[0] == len(CLAIMS)
            assert c.execute("SELECT COUNT(*) FROM claim_line").fetchone()[0] == 2 * len(CLAIMS)

        # The service (the owner) still sees everything; an insurer without a role is seen by nobody
        # through the views, and does not break them.
        with psycopg.connect(f"host=127.0.0.1 user=postgres dbname={db}") as c:
            assert c.execute("SELECT COUNT(*) FROM claim").fetchone()[0] == len(CLAIMS)
            assert "C-NOROLE-1" not in {r[0] for r in c.execute("SELECT claim_id FROM insurer_claims")}
    finally:
        dispose_all()
        with psycopg.connect(f"host=127.0.0.1 user=postgres dbname={db}", autocommit=True) as owner:
            for user in users.values():
                owner.execute(f'DROP OWNED BY "{user}"')  # revokes the direct grants in this database
        with psycopg.connect(ADMIN, autocommit=True) as admin:
            for user in users.values():
                admin.execute(f'DROP ROLE IF EXISTS "{user}"')


def test_insurer_codes_are_validated_and_sqlite_is_refused(sqlite_url):
    from transforms.config import ConfigError
    from transforms.insurer_access import create_insurer_roles, insurer_role
    from transforms.warehouse import get_engine

    assert insurer_role("INAM") == "insurer_inam"
    for bad in ("", "IN'AM", "a b", "x" * 41, "-X", "INAM;DROP"):
        with pytest.raises(ConfigError):
            insurer_role(bad)
    with pytest.raises(ValueError, match="PostgreSQL only"):
        create_insurer_roles(get_engine(sqlite_url), ["INAM"])
