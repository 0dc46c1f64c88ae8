-- 022: what a warehouse must remember about how it was loaded. patient_key_check is a fingerprint
-- of the patient key (an HMAC of a fixed text under it: it does not reveal the key): a loader
-- started with another key (another HL7ICS_HOME, a missing HL7ICS_PATIENT_KEY) gave the same
-- patient a second patient_key in the same warehouse, silently; it is now refused.

CREATE TABLE warehouse_setting (
    name VARCHAR(64) PRIMARY KEY,
    value TEXT NOT NULL,
    updated_at TIMESTAMP NOT NULL
);
