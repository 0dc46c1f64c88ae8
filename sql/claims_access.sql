-- Insurer access to claims (PostgreSQL only). Applied by transforms/insurer_access.py
-- (create_insurer_roles); idempotent. {{ROLES}} is replaced by ARRAY['insurer_inam', ...] built from
-- validated insurer codes.
--
-- Each insurer (INAM, CNSS, a private insurer) is a NOLOGIN group role insurer_<code in lower case>;
-- a person's login role is granted it (GRANT insurer_inam TO alice). A row of claim belongs to the
-- insurer whose group role is 'insurer_' || lower(insurer_code).
--
-- Insurers read two views and nothing else: insurer_claims and insurer_claim_lines expose the
-- minimum necessary columns (no patient_key, no internal message ids or hashes) of their own rows.
-- The views run with their owner's rights (security_invoker = false), so an insurer needs no grant on
-- the base tables; the row filter is in the view and tests current_user, which inside a view is still
-- the person querying. security_barrier = true makes PostgreSQL apply that filter before any function
-- the querying user adds, so a leaky function cannot see other insurers' rows.
--
-- The base tables also have row-level security with the same rule (defence in depth): a role other
-- than the owner that is ever granted claim or claim_line directly sees only its insurer's rows, or
-- nothing. The owner (the service, which writes claims) is not subject to it; data_engineer, which
-- reads every table (sql/roles.sql), keeps reading every claim.
--
-- Membership is looked up through pg_roles, so a claim whose insurer has no role yet is simply
-- invisible (pg_has_role on a missing role name would be an error for every query).

CREATE OR REPLACE VIEW insurer_claims WITH (security_barrier = true, security_invoker = false) AS
SELECT c.claim_id, c.insurer_code, c.facility_code, c.visit_number, c.member_id, c.plan_code,
       c.patient_class, c.admit_at, c.discharge_at, c.diagnosis_codes, c.lines, c.total_amount,
       c.copay_rate, c.copay_amount, c.claimed_amount, c.currency, c.status
  FROM claim c
 WHERE 'insurer_' || lower(c.insurer_code) IN (
       SELECT r.rolname FROM pg_roles r
        WHERE r.rolname LIKE 'insurer\_%' AND pg_has_role(current_user, r.oid, 'MEMBER'));

CREATE OR REPLACE VIEW insurer_claim_lines WITH (security_barrier = true, security_invoker = false) AS
SELECT l.claim_id, l.line_no, l.charge_code, l.description, l.quantity, l.unit_amount, l.amount,
       l.currency, l.charged_at
  FROM claim_line l
  JOIN claim c ON c.claim_id = l.claim_id
 WHERE 'insurer_' || lower(c.insurer_code) IN (
       SELECT r.rolname FROM pg_roles r
        WHERE r.rolname LIKE 'insurer\_%' AND pg_has_role(current_user, r.oid, 'MEMBER'));

ALTER TABLE claim ENABLE ROW LEVEL SECURITY;
ALTER TABLE claim_line ENABLE ROW LEVEL SECURITY;

DROP POLICY IF EXISTS claim_insurer_read ON claim;
CREATE POLICY claim_insurer_read ON claim FOR SELECT USING (
    'insurer_' || lower(insurer_code) IN (
        SELECT r.rolname FROM pg_roles r
         WHERE r.rolname LIKE 'insurer\_%' AND pg_has_role(current_user, r.oid, 'MEMBER')));

DROP POLICY IF EXISTS claim_line_insurer_read ON claim_line;
CREATE POLICY claim_line_insurer_read ON claim_line FOR SELECT USING (
    EXISTS (SELECT 1 FROM claim c WHERE c.claim_id = claim_line.claim_id));

DROP POLICY IF EXISTS claim_data_engineer_read ON claim;
CREATE POLICY claim_data_engineer_read ON claim FOR SELECT USING (
    EXISTS (SELECT 1 FROM pg_roles r
             WHERE r.rolname = 'data_engineer' AND pg_has_role(current_user, r.oid, 'MEMBER')));

DROP POLICY IF EXISTS claim_line_data_engineer_read ON claim_line;
CREATE POLICY claim_line_data_engineer_read ON claim_line FOR SELECT USING (
    EXISTS (SELECT 1 FROM pg_roles r
             WHERE r.rolname = 'data_engineer' AND pg_has_role(current_user, r.oid, 'MEMBER')));

-- The insurer roles: created if missing (roles belong to the whole server, so another database may
-- have created them first), allowed to connect and to read the two views, and stripped of any other
-- privilege on this schema's tables, views and sequences.
DO $$
DECLARE
    r text;
BEGIN
    FOREACH r IN ARRAY {{ROLES}}::text[] LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r) THEN
            BEGIN
                EXECUTE format('CREATE ROLE %I NOLOGIN', r);
            EXCEPTION WHEN duplicate_object OR unique_violation THEN
                NULL;  -- created concurrently by another database's run
            END;
        END IF;
        EXECUTE format('GRANT CONNECT ON DATABASE %I TO %I', current_database(), r);
        EXECUTE format('GRANT USAGE ON SCHEMA %I TO %I', current_schema(), r);
        EXECUTE format('REVOKE ALL ON ALL TABLES IN SCHEMA %I FROM %I', current_schema(), r);
        EXECUTE format('REVOKE ALL ON ALL SEQUENCES IN SCHEMA %I FROM %I', current_schema(), r);
        EXECUTE format('GRANT SELECT ON insurer_claims, insurer_claim_lines TO %I', r);
    END LOOP;
END
$$;
