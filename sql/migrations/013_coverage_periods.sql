-- 013: one fact_coverage row per coverage period. The key was (patient, facility, insurer, member
-- ID), so a renewal (a new IN1-12/IN1-13 for the same member) overwrote the dates of the period
-- before it, and claims for charges in that earlier period lost their coverage: a claim already
-- sent turned 'corrected' with no lines. A period is now keyed by its start, period_start
-- (IN1-12 as sent, or '' when the coverage is open-ended: a key column cannot be NULL). A later
-- IN1 with the same start updates that period (an extension or a correction of its end).
-- The table is rebuilt, because SQLite cannot change a primary key in place. On PostgreSQL the
-- rebuilt table has no grants: run `hl7ics db roles` after upgrading, as after any migration that
-- adds a table.

CREATE TABLE fact_coverage_periods (
    patient_key   TEXT NOT NULL,
    facility_code TEXT NOT NULL,
    insurer_code  TEXT NOT NULL,
    member_id     TEXT NOT NULL,
    period_start  TEXT NOT NULL,
    insurer_name  TEXT,
    plan_code     TEXT,
    valid_from    TEXT,
    valid_to      TEXT,
    message_id    BIGINT NOT NULL,
    updated_at    TIMESTAMP NOT NULL,
    PRIMARY KEY (patient_key, facility_code, insurer_code, member_id, period_start)
);
INSERT INTO fact_coverage_periods (patient_key, facility_code, insurer_code, member_id, period_start,
                                   insurer_name, plan_code, valid_from, valid_to, message_id, updated_at)
SELECT patient_key, facility_code, insurer_code, member_id, COALESCE(valid_from, ''),
       insurer_name, plan_code, valid_from, valid_to, message_id, updated_at
  FROM fact_coverage;
DROP TABLE fact_coverage;
ALTER TABLE fact_coverage_periods RENAME TO fact_coverage;
