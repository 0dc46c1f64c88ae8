-- Roles for the warehouse (PostgreSQL). Applied by `hl7ics db roles`; idempotent.
-- moh_analyst: MoH statisticians (DSNISI): the published reporting tables only (moh_*, dim_facility,
--   dq_daily, interface_volume_hourly); never phi_* nor the restricted rpt_* level.
-- data_engineer: reads every table (operations, debugging, onboarding).
-- Per-table grants are added by transforms/privacy.py, which lists the tables.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'moh_analyst') THEN
        CREATE ROLE moh_analyst NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'data_engineer') THEN
        CREATE ROLE data_engineer NOLOGIN;
    END IF;
END
$$;
REVOKE ALL ON SCHEMA public FROM PUBLIC;
GRANT CONNECT ON DATABASE {{DATABASE}} TO moh_analyst, data_engineer;
GRANT USAGE ON SCHEMA public TO moh_analyst, data_engineer;
