-- 005: data quality. dq_result counts, per run, facility, table and expectation, the rows that
-- were checked and the rows that failed (one row accumulates the batches of a run, in the same
-- transaction as each batch's load, so a re-run adds nothing twice). dq_daily is the plain
-- per-day table the data_quality_report DAG rebuilds from dq_result for statisticians.

CREATE TABLE dq_result (
    run_id        TEXT NOT NULL,
    facility_code TEXT NOT NULL,
    table_name    TEXT NOT NULL,
    expectation   TEXT NOT NULL,
    severity      TEXT NOT NULL,
    evaluated     BIGINT NOT NULL,
    failed        BIGINT NOT NULL,
    created_at    TIMESTAMP NOT NULL,
    updated_at    TIMESTAMP NOT NULL,
    PRIMARY KEY (run_id, facility_code, table_name, expectation)
);
CREATE INDEX ix_dq_result_created ON dq_result (created_at, facility_code);

CREATE TABLE dq_daily (
    day           DATE NOT NULL,
    facility_code TEXT NOT NULL,
    table_name    TEXT NOT NULL,
    expectation   TEXT NOT NULL,
    severity      TEXT NOT NULL,
    evaluated     BIGINT NOT NULL,
    failed        BIGINT NOT NULL,
    failure_rate  DOUBLE PRECISION NOT NULL,
    updated_at    TIMESTAMP NOT NULL,
    PRIMARY KEY (day, facility_code, table_name, expectation)
);
