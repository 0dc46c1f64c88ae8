-- 015: what the insurer sees of a claim, hashed apart. content_sha256 covers every column an
-- extract may carry, so a change in a column the insurer's extract does not hold (patient class,
-- diagnoses, admission date for a private insurer) made a sent claim 'corrected', and a
-- correction version then carried a claim byte-identical to the one the insurer had. A claim is
-- now changed for its insurer only when both hashes differ: content_sha256 (whatever the insurer
-- carries) and visible_sha256 (the insurer's configured columns). Changing an insurer's columns in
-- insurers.yaml changes visible_sha256 alone, so it does not turn sent claims 'corrected' either.
-- Rows written before this migration have no visible hash: they compare on content_sha256 alone,
-- as before.

ALTER TABLE claim ADD COLUMN visible_sha256 TEXT;
ALTER TABLE claim ADD COLUMN sent_visible_sha256 TEXT;
ALTER TABLE claim_extract_item ADD COLUMN visible_sha256 TEXT;
