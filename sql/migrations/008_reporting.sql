-- 008: MoH reporting (IDSR weekly surveillance, lab, hospital and immunisation activity, reporting
-- completeness) built by the moh_reporting DAG. rpt_* tables are the restricted working level
-- (pseudonymous case list, facility cells, small counts); moh_* tables are what statisticians read:
-- district level, age bands, small cells suppressed (NULL and suppressed = 1). No names or IDs.

CREATE TABLE rpt_idsr_case (
    disease       TEXT NOT NULL,
    facility_code TEXT NOT NULL,
    patient_key   TEXT NOT NULL,
    iso_week      TEXT NOT NULL,
    week_start    DATE NOT NULL,
    age_group     TEXT NOT NULL,
    sex           TEXT NOT NULL,
    suspected     INTEGER NOT NULL,
    confirmed     INTEGER NOT NULL,
    died          INTEGER NOT NULL,
    first_at      TIMESTAMP NOT NULL,
    updated_at    TIMESTAMP NOT NULL,
    PRIMARY KEY (disease, facility_code, patient_key, iso_week)
);
CREATE INDEX ix_rpt_idsr_case_week ON rpt_idsr_case (week_start);

CREATE TABLE rpt_idsr_weekly (
    iso_week      TEXT NOT NULL,
    week_start    DATE NOT NULL,
    region        TEXT NOT NULL,
    district      TEXT NOT NULL,
    facility_code TEXT NOT NULL,
    disease       TEXT NOT NULL,
    age_group     TEXT NOT NULL,
    sex           TEXT NOT NULL,
    suspected     INTEGER NOT NULL,
    confirmed     INTEGER NOT NULL,
    deaths        INTEGER NOT NULL,
    updated_at    TIMESTAMP NOT NULL,
    PRIMARY KEY (iso_week, facility_code, disease, age_group, sex)
);

CREATE TABLE moh_idsr_weekly (
    iso_week      TEXT NOT NULL,
    week_start    DATE NOT NULL,
    region        TEXT NOT NULL,
    district      TEXT NOT NULL,
    disease       TEXT NOT NULL,
    notification  TEXT NOT NULL,
    age_group     TEXT NOT NULL,
    sex           TEXT NOT NULL,
    suspected     INTEGER,
    confirmed     INTEGER,
    deaths        INTEGER,
    suppressed    INTEGER NOT NULL,
    updated_at    TIMESTAMP NOT NULL,
    PRIMARY KEY (iso_week, district, disease, age_group, sex)
);

CREATE TABLE moh_lab_activity (
    iso_week        TEXT NOT NULL,
    week_start      DATE NOT NULL,
    region          TEXT NOT NULL,
    district        TEXT NOT NULL,
    test            TEXT NOT NULL,
    tests_done      INTEGER,
    positives       INTEGER,
    positivity_rate DOUBLE PRECISION,
    suppressed      INTEGER NOT NULL,
    updated_at      TIMESTAMP NOT NULL,
    PRIMARY KEY (iso_week, district, test)
);

CREATE TABLE moh_hospital_activity (
    month               TEXT NOT NULL,
    facility_code       TEXT NOT NULL,
    region              TEXT NOT NULL,
    district            TEXT NOT NULL,
    admissions          INTEGER NOT NULL,
    discharges          INTEGER NOT NULL,
    deaths              INTEGER NOT NULL,
    bed_days            INTEGER NOT NULL,
    mean_length_of_stay DOUBLE PRECISION,
    updated_at          TIMESTAMP NOT NULL,
    PRIMARY KEY (month, facility_code)
);

CREATE TABLE moh_immunization (
    month       TEXT NOT NULL,
    region      TEXT NOT NULL,
    district    TEXT NOT NULL,
    antigen     TEXT NOT NULL,
    doses       INTEGER,
    suppressed  INTEGER NOT NULL,
    updated_at  TIMESTAMP NOT NULL,
    PRIMARY KEY (month, district, antigen)
);

CREATE TABLE moh_completeness (
    iso_week       TEXT NOT NULL,
    week_start     DATE NOT NULL,
    facility_code  TEXT NOT NULL,
    region         TEXT NOT NULL,
    district       TEXT NOT NULL,
    expected_days  INTEGER NOT NULL,
    reporting_days INTEGER NOT NULL,
    on_time_days   INTEGER NOT NULL,
    completeness   DOUBLE PRECISION NOT NULL,
    timeliness     DOUBLE PRECISION NOT NULL,
    messages       INTEGER NOT NULL,
    late_messages  INTEGER NOT NULL,
    updated_at     TIMESTAMP NOT NULL,
    PRIMARY KEY (iso_week, facility_code)
);

-- Immediately notifiable diseases already alerted (one notification per disease, facility, week).
CREATE TABLE idsr_notification (
    disease       TEXT NOT NULL,
    facility_code TEXT NOT NULL,
    iso_week      TEXT NOT NULL,
    district      TEXT NOT NULL,
    cases         INTEGER NOT NULL,
    notified_at   TIMESTAMP NOT NULL,
    PRIMARY KEY (disease, facility_code, iso_week)
);

-- DHIS2 exports and pushes with the server's import summary.
CREATE TABLE dhis2_export (
    id          {{ID}},
    created_at  TIMESTAMP NOT NULL,
    period      TEXT NOT NULL,
    data_set    TEXT NOT NULL,
    mode        TEXT NOT NULL,
    target      TEXT,
    values_sent INTEGER NOT NULL,
    status      TEXT NOT NULL,
    imported    INTEGER,
    updated     INTEGER,
    ignored     INTEGER,
    deleted     INTEGER,
    conflicts   INTEGER,
    summary     TEXT
);
