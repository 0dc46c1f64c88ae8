-- 001: message store, quarantine, file ledger, runs, alerts, dimensions and facts.
-- Portable SQL for SQLite and PostgreSQL. Two placeholders are filled per dialect by
-- transforms/warehouse.py: {{ID}} (auto-increment primary key) and {{BLOB}} (raw bytes).
-- Timestamps named *_at are UTC without zone; text timestamps elsewhere are ISO 8601 as sent.

CREATE TABLE message_store (
    id                  {{ID}},
    facility_code       TEXT,
    sending_facility    TEXT,
    sending_application TEXT,
    control_id          TEXT,
    message_type        TEXT,
    trigger_event       TEXT,
    version             TEXT,
    message_datetime    TIMESTAMP,
    received_at         TIMESTAMP NOT NULL,
    source              TEXT NOT NULL,
    source_ref          TEXT NOT NULL,
    file_sha256         TEXT,
    sha256              TEXT NOT NULL,
    raw                 {{BLOB}} NOT NULL,
    size_bytes          INTEGER NOT NULL,
    charset             TEXT,
    status              TEXT NOT NULL,
    error               TEXT,
    flags               TEXT,
    updated_at          TIMESTAMP NOT NULL,
    CONSTRAINT uq_message_store_source UNIQUE (source, source_ref),
    CONSTRAINT ck_message_store_status CHECK (status IN ('received', 'loaded', 'duplicate', 'quarantined'))
);
CREATE INDEX ix_message_store_control ON message_store (control_id);
CREATE INDEX ix_message_store_status ON message_store (status);
CREATE INDEX ix_message_store_file ON message_store (file_sha256);
CREATE INDEX ix_message_store_facility_received ON message_store (facility_code, received_at);

CREATE TABLE quarantine (
    id          {{ID}},
    message_id  BIGINT NOT NULL REFERENCES message_store (id),
    stage       TEXT NOT NULL,
    reason      TEXT NOT NULL,
    detail      TEXT,
    created_at  TIMESTAMP NOT NULL,
    resolved_at TIMESTAMP,
    CONSTRAINT uq_quarantine UNIQUE (message_id, stage, reason)
);
CREATE INDEX ix_quarantine_reason ON quarantine (reason, resolved_at);

CREATE TABLE ingested_file (
    sha256        TEXT PRIMARY KEY,
    facility_code TEXT NOT NULL,
    source        TEXT NOT NULL,
    original_name TEXT NOT NULL,
    size_bytes    BIGINT NOT NULL,
    messages      INTEGER NOT NULL DEFAULT 0,
    status        TEXT NOT NULL,
    error         TEXT,
    run_id        TEXT,
    first_seen_at TIMESTAMP NOT NULL,
    completed_at  TIMESTAMP,
    CONSTRAINT ck_ingested_file_status CHECK (status IN ('processing', 'done', 'quarantined'))
);

CREATE TABLE ingest_run (
    run_id        TEXT NOT NULL,
    facility_code TEXT NOT NULL,
    files         INTEGER NOT NULL,
    messages      INTEGER NOT NULL,
    loaded        INTEGER NOT NULL,
    duplicates    INTEGER NOT NULL,
    quarantined   INTEGER NOT NULL,
    updated_at    TIMESTAMP NOT NULL,
    PRIMARY KEY (run_id, facility_code)
);

CREATE TABLE ops_alert (
    id            {{ID}},
    created_at    TIMESTAMP NOT NULL,
    dag_id        TEXT,
    task_id       TEXT,
    run_id        TEXT,
    facility_code TEXT,
    severity      TEXT NOT NULL,
    error_class   TEXT,
    message       TEXT NOT NULL,
    log_url       TEXT,
    resolved_at   TIMESTAMP
);

CREATE TABLE dim_facility (
    facility_code  TEXT PRIMARY KEY,
    name           TEXT NOT NULL,
    type           TEXT NOT NULL,
    region         TEXT NOT NULL,
    district       TEXT NOT NULL,
    dhis2_org_unit TEXT NOT NULL,
    timezone       TEXT NOT NULL,
    charset        TEXT NOT NULL,
    updated_at     TIMESTAMP NOT NULL
);

CREATE TABLE phi_patient (
    patient_key       TEXT PRIMARY KEY,
    facility_code     TEXT NOT NULL,
    patient_id        TEXT NOT NULL,
    id_authority      TEXT,
    family_name       TEXT,
    given_name        TEXT,
    birth_date        TEXT,
    sex               TEXT,
    address           TEXT,
    district          TEXT,
    phone             TEXT,
    last_message_id   BIGINT,
    updated_at        TIMESTAMP NOT NULL
);

CREATE TABLE dim_patient (
    patient_key   TEXT PRIMARY KEY,
    facility_code TEXT NOT NULL,
    sex           TEXT,
    birth_year    INTEGER,
    district      TEXT,
    merged_into   TEXT,
    updated_at    TIMESTAMP NOT NULL
);

CREATE TABLE patient_merge (
    old_key    TEXT PRIMARY KEY,
    new_key    TEXT NOT NULL,
    message_id BIGINT NOT NULL,
    merged_at  TIMESTAMP
);

CREATE TABLE encounter_event (
    message_id            BIGINT PRIMARY KEY,
    facility_code         TEXT NOT NULL,
    visit_number          TEXT NOT NULL,
    trigger_event         TEXT NOT NULL,
    event_at              TIMESTAMP,
    patient_key           TEXT,
    patient_class         TEXT,
    location              TEXT,
    admit_at              TIMESTAMP,
    discharge_at          TIMESTAMP,
    discharge_disposition TEXT,
    diagnosis_codes       TEXT
);
CREATE INDEX ix_encounter_event_visit ON encounter_event (facility_code, visit_number);

CREATE TABLE fact_encounter (
    facility_code         TEXT NOT NULL,
    visit_number          TEXT NOT NULL,
    patient_key           TEXT,
    patient_class         TEXT,
    location              TEXT,
    admit_at              TIMESTAMP,
    discharge_at          TIMESTAMP,
    discharge_disposition TEXT,
    diagnosis_codes       TEXT,
    last_event            TEXT,
    last_event_at         TIMESTAMP,
    cancelled             INTEGER NOT NULL DEFAULT 0,
    updated_at            TIMESTAMP NOT NULL,
    PRIMARY KEY (facility_code, visit_number)
);
CREATE INDEX ix_fact_encounter_admit ON fact_encounter (admit_at);

CREATE TABLE fact_lab_order (
    facility_code       TEXT NOT NULL,
    placer_order_number TEXT NOT NULL,
    test_code           TEXT NOT NULL,
    patient_key         TEXT,
    visit_number        TEXT,
    filler_order_number TEXT,
    test_code_system    TEXT,
    test_name           TEXT,
    ordered_at          TIMESTAMP,
    order_status        TEXT,
    message_id          BIGINT NOT NULL,
    updated_at          TIMESTAMP NOT NULL,
    PRIMARY KEY (facility_code, placer_order_number, test_code)
);

CREATE TABLE fact_lab_result (
    message_id          BIGINT NOT NULL,
    obx_seq             INTEGER NOT NULL,
    facility_code       TEXT NOT NULL,
    patient_key         TEXT,
    visit_number        TEXT,
    placer_order_number TEXT,
    test_code           TEXT,
    test_code_system    TEXT,
    test_name           TEXT,
    value_type          TEXT,
    value               TEXT,
    value_numeric       DOUBLE PRECISION,
    units               TEXT,
    reference_range     TEXT,
    abnormal_flag       TEXT,
    result_status       TEXT,
    observed_at         TIMESTAMP,
    PRIMARY KEY (message_id, obx_seq)
);
CREATE INDEX ix_fact_lab_result_code ON fact_lab_result (test_code, observed_at);

CREATE TABLE fact_medication (
    facility_code TEXT NOT NULL,
    order_number  TEXT NOT NULL,
    drug_code     TEXT NOT NULL,
    patient_key   TEXT,
    drug_name     TEXT,
    quantity      DOUBLE PRECISION,
    units         TEXT,
    ordered_at    TIMESTAMP,
    dispensed_at  TIMESTAMP,
    message_id    BIGINT NOT NULL,
    updated_at    TIMESTAMP NOT NULL,
    PRIMARY KEY (facility_code, order_number, drug_code)
);

CREATE TABLE fact_immunization (
    facility_code       TEXT NOT NULL,
    patient_key         TEXT NOT NULL,
    vaccine_code        TEXT NOT NULL,
    administered_at     TIMESTAMP NOT NULL,
    vaccine_code_system TEXT,
    vaccine_name        TEXT,
    dose_number         TEXT,
    lot_number          TEXT,
    message_id          BIGINT NOT NULL,
    PRIMARY KEY (facility_code, patient_key, vaccine_code, administered_at)
);

CREATE TABLE fact_charge (
    message_id      BIGINT NOT NULL,
    ft1_seq         INTEGER NOT NULL,
    facility_code   TEXT NOT NULL,
    patient_key     TEXT,
    visit_number    TEXT,
    transaction_id  TEXT,
    charge_code     TEXT,
    description     TEXT,
    quantity        DOUBLE PRECISION,
    unit_amount     NUMERIC(14, 2),
    amount          NUMERIC(14, 2),
    currency        TEXT,
    charged_at      TIMESTAMP,
    diagnosis_codes TEXT,
    PRIMARY KEY (message_id, ft1_seq)
);

CREATE TABLE fact_coverage (
    patient_key   TEXT NOT NULL,
    facility_code TEXT NOT NULL,
    insurer_code  TEXT NOT NULL,
    member_id     TEXT NOT NULL,
    insurer_name  TEXT,
    plan_code     TEXT,
    valid_from    TEXT,
    valid_to      TEXT,
    message_id    BIGINT NOT NULL,
    updated_at    TIMESTAMP NOT NULL,
    PRIMARY KEY (patient_key, facility_code, insurer_code, member_id)
);
