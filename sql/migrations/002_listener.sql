-- 002: real-time MLLP listener: the ACK sent for each stored message (replayed for duplicates),
-- and an audit trail of security-relevant events (ATNA-style: node authentication failures,
-- sender/certificate mismatches, listener start and stop). No patient data in either.

CREATE TABLE mllp_ack (
    message_id  BIGINT PRIMARY KEY REFERENCES message_store (id),
    ack_code    TEXT NOT NULL,
    ack         {{BLOB}} NOT NULL,
    created_at  TIMESTAMP NOT NULL
);

CREATE TABLE audit_event (
    id            {{ID}},
    created_at    TIMESTAMP NOT NULL,
    event_type    TEXT NOT NULL,
    outcome       TEXT NOT NULL,
    peer          TEXT,
    facility_code TEXT,
    detail        TEXT
);
CREATE INDEX ix_audit_event_type ON audit_event (event_type, created_at);
