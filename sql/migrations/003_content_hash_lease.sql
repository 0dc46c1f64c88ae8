-- 003: duplicate detection on message content (not on the line endings that happened to follow
-- it in a file), a processing lease on files (two workers never process one file at once), and
-- the FT1-6 transaction type of charges (credits and payments are not charges).

ALTER TABLE message_store ADD COLUMN content_sha256 TEXT;
CREATE INDEX ix_message_store_content ON message_store (content_sha256);

ALTER TABLE ingested_file ADD COLUMN lease_owner TEXT;
ALTER TABLE ingested_file ADD COLUMN lease_until TIMESTAMP;

ALTER TABLE fact_charge ADD COLUMN transaction_type TEXT;
