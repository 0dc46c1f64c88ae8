-- 009: insurer claims (AMU: INAM, CNSS and private insurers). One claim per insurer x facility x
-- visit, its lines from DFT FT1 charges; extracts per insurer and period are versioned (a correction
-- is a new version holding only the changed claims, with its reason), each file delivery recorded.
-- Insurers see only minimum necessary columns, and on PostgreSQL only their own rows (row-level
-- security, see sql/claims_access.sql).

CREATE TABLE claim (
    claim_id          TEXT PRIMARY KEY,          -- stable: hash of insurer, facility and visit
    insurer_code      TEXT NOT NULL,
    facility_code     TEXT NOT NULL,
    visit_number      TEXT NOT NULL,
    patient_key       TEXT,
    member_id         TEXT NOT NULL,
    plan_code         TEXT,
    patient_class     TEXT,
    admit_at          TIMESTAMP,
    discharge_at      TIMESTAMP,
    diagnosis_codes   TEXT,
    first_charge_at   TIMESTAMP,
    last_charge_at    TIMESTAMP,
    lines             INTEGER NOT NULL,
    total_amount      NUMERIC(14, 2) NOT NULL,
    copay_rate        DOUBLE PRECISION NOT NULL,
    copay_amount      NUMERIC(14, 2) NOT NULL,
    claimed_amount    NUMERIC(14, 2) NOT NULL,
    currency          TEXT NOT NULL,
    status            TEXT NOT NULL,             -- open | ready | sent | corrected
    content_sha256    TEXT NOT NULL,             -- of the claim as extracted: changes mean a correction
    sent_sha256       TEXT,                      -- content as last delivered
    sent_period       TEXT,
    updated_at        TIMESTAMP NOT NULL
);
CREATE INDEX ix_claim_insurer_status ON claim (insurer_code, status);

CREATE TABLE claim_line (
    claim_id       TEXT NOT NULL,
    line_no        INTEGER NOT NULL,
    message_id     BIGINT NOT NULL,
    ft1_seq        INTEGER NOT NULL,
    charge_code    TEXT,
    description    TEXT,
    quantity       DOUBLE PRECISION,
    unit_amount    NUMERIC(14, 2),
    amount         NUMERIC(14, 2),
    currency       TEXT,
    charged_at     TIMESTAMP,
    PRIMARY KEY (claim_id, line_no)
);

CREATE TABLE claim_extract (
    id              {{ID}},
    insurer_code    TEXT NOT NULL,
    period          TEXT NOT NULL,               -- 2026-11 (monthly) or 2026-W45 (weekly)
    version         INTEGER NOT NULL,
    reason          TEXT,                        -- NULL for the first version; why a correction was issued
    claims          INTEGER NOT NULL,
    total_claimed   NUMERIC(16, 2) NOT NULL,
    manifest_sha256 TEXT NOT NULL,
    out_dir         TEXT NOT NULL,
    created_at      TIMESTAMP NOT NULL,
    UNIQUE (insurer_code, period, version)
);

CREATE TABLE claim_extract_item (
    extract_id     BIGINT NOT NULL,
    claim_id       TEXT NOT NULL,
    content_sha256 TEXT NOT NULL,
    PRIMARY KEY (extract_id, claim_id)
);

CREATE TABLE claim_delivery (
    id            {{ID}},
    extract_id    BIGINT NOT NULL,
    target        TEXT NOT NULL,                 -- outbox path or sftp://host/path (never credentials)
    status        TEXT NOT NULL,                 -- delivered | failed
    files         INTEGER NOT NULL,
    detail        TEXT,
    delivered_at  TIMESTAMP NOT NULL
);
