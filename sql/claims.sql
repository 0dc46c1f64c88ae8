-- Insurer claims queries (transforms/claims.py). One file, several named queries: each starts at a
-- "-- name: <key>" line and runs unchanged on SQLite and PostgreSQL (except "lock", PostgreSQL
-- only: SQLite already serialises writers with BEGIN IMMEDIATE).
--
-- ":facilities", ":insurers" and ":ids" are expanding parameters (a Python list becomes the IN
-- list). Timestamps are naive UTC; the drivers return text on SQLite and datetimes on PostgreSQL,
-- and transforms/claims.py normalises both. Rows are sorted in Python where order matters
-- (PostgreSQL sorts text by collation, SQLite by bytes).

-- name: lock
-- One claims writer per insurer at a time (build, extract and delivery of the same insurer).
SELECT pg_advisory_xact_lock(724300, hashtext(:insurer));

-- name: charges
-- Every charge of the facilities some insurer contracts, oldest message first: a resent
-- transaction (same FT1-2 and FT1-6) read later replaces the earlier one.
SELECT c.message_id, c.ft1_seq, c.facility_code, c.patient_key, c.visit_number, c.transaction_id,
       c.transaction_type, c.charge_code, c.description, c.quantity, c.unit_amount, c.amount,
       c.currency, c.charged_at, c.diagnosis_codes
  FROM fact_charge c
 WHERE c.facility_code IN :facilities
 ORDER BY c.message_id, c.ft1_seq;

-- name: coverages
SELECT patient_key, facility_code, insurer_code, member_id, plan_code, valid_from, valid_to, message_id
  FROM fact_coverage
 WHERE facility_code IN :facilities AND insurer_code IN :insurers;

-- name: encounters
-- Only the visits that have charges (the join keeps the read small on a large warehouse).
SELECT e.facility_code, e.visit_number, e.patient_class, e.admit_at, e.discharge_at, e.diagnosis_codes
  FROM fact_encounter e
  JOIN (SELECT DISTINCT facility_code, visit_number FROM fact_charge WHERE facility_code IN :facilities) c
    ON c.facility_code = e.facility_code AND c.visit_number = e.visit_number;

-- name: sent_charges
-- The charges already claimed from an insurer (a line of a claim delivered to it), with what
-- identifies a charge across resends (facility, FT1-2, FT1-6).
SELECT c.insurer_code, l.message_id, l.ft1_seq, f.facility_code, f.transaction_id, f.transaction_type
  FROM claim_line l
  JOIN claim c ON c.claim_id = l.claim_id
  LEFT JOIN fact_charge f ON f.message_id = l.message_id AND f.ft1_seq = l.ft1_seq
 WHERE c.sent_sha256 IS NOT NULL;

-- name: existing_claims
SELECT claim_id, insurer_code, facility_code, visit_number, patient_key, member_id, plan_code, patient_class,
       admit_at, discharge_at, diagnosis_codes, first_charge_at, last_charge_at, lines, copay_rate, currency,
       status, content_sha256, sent_sha256, sent_period, visible_sha256, sent_visible_sha256
  FROM claim
 WHERE insurer_code IN :insurers;

-- name: claim_patients
-- The patient each of these claims was built for (a visit number shared by two patients stays
-- with the patient whose claim it already is).
SELECT claim_id, patient_key FROM claim WHERE claim_id IN :ids;

-- name: extracted_claim_ids
SELECT DISTINCT i.claim_id
  FROM claim_extract_item i
  JOIN claim_extract e ON e.id = i.extract_id
 WHERE e.insurer_code IN :insurers;

-- name: delete_lines
DELETE FROM claim_line WHERE claim_id IN :ids;

-- name: delete_claims
DELETE FROM claim WHERE claim_id IN :ids;

-- name: insurer_claims
-- What extract needs to choose a period's claims.
SELECT claim_id, patient_class, discharge_at, last_charge_at, lines, status, content_sha256, visible_sha256
  FROM claim
 WHERE insurer_code = :insurer;

-- name: items
-- Every extract item of the insurer in extract order: the last one seen per claim is its latest.
SELECT i.claim_id, i.content_sha256, i.visible_sha256, e.id AS extract_id, e.period, e.version
  FROM claim_extract_item i
  JOIN claim_extract e ON e.id = i.extract_id
 WHERE e.insurer_code = :insurer
 ORDER BY e.id;

-- name: period_versions
SELECT id, version, reason, created_at, manifest_sha256, out_dir
  FROM claim_extract
 WHERE insurer_code = :insurer AND period = :period
 ORDER BY version;

-- name: version_items
SELECT claim_id, content_sha256 FROM claim_extract_item WHERE extract_id = :extract_id;

-- name: claims_by_id
SELECT claim_id, insurer_code, facility_code, visit_number, member_id, plan_code, patient_class, admit_at,
       discharge_at, diagnosis_codes, lines, copay_rate, currency, content_sha256
  FROM claim
 WHERE claim_id IN :ids;

-- name: lines_by_claim
-- FT1-6 is not kept in claim_line: it is read back from the charge the line came from.
SELECT l.claim_id, l.line_no, l.charge_code, l.description, l.quantity, l.unit_amount, l.amount, l.currency,
       l.charged_at, c.transaction_type
  FROM claim_line l
  LEFT JOIN fact_charge c ON c.message_id = l.message_id AND c.ft1_seq = l.ft1_seq
 WHERE l.claim_id IN :ids;

-- name: facility_names
SELECT facility_code, name FROM dim_facility;

-- name: insert_extract
INSERT INTO claim_extract (id, insurer_code, period, version, reason, claims, total_claimed, manifest_sha256,
                           out_dir, created_at)
VALUES (:id, :insurer, :period, :version, :reason, :claims, :total_claimed, :manifest_sha256, :out_dir,
        :created_at);

-- name: insert_item
INSERT INTO claim_extract_item (extract_id, claim_id, content_sha256, visible_sha256)
VALUES (:extract_id, :claim_id, :content_sha256, :visible_sha256);

-- name: insert_audit
INSERT INTO audit_event (created_at, event_type, outcome, peer, facility_code, detail)
VALUES (:created_at, 'export', :outcome, :peer, NULL, :detail);

-- name: extract_by_id
SELECT id, insurer_code, period, version, reason, claims, total_claimed, manifest_sha256, out_dir, created_at
  FROM claim_extract
 WHERE id = :extract_id;

-- name: undelivered_extracts
-- Versions with no successful delivery, in the order they must reach the insurer.
SELECT e.id
  FROM claim_extract e
 WHERE e.insurer_code = :insurer
   AND NOT EXISTS (SELECT 1 FROM claim_delivery d WHERE d.extract_id = e.id AND d.status = 'delivered')
 ORDER BY e.period, e.version, e.id;

-- name: move_extract
UPDATE claim_extract SET out_dir = :out_dir WHERE id = :id;

-- name: delivered_of
SELECT id, target, files, delivered_at
  FROM claim_delivery
 WHERE extract_id = :extract_id AND status = 'delivered'
 ORDER BY id;

-- name: insert_delivery
INSERT INTO claim_delivery (extract_id, target, status, files, detail, delivered_at)
VALUES (:extract_id, :target, :status, :files, :detail, :delivered_at);

-- name: mark_sent
-- The insurer now holds the content this extract carried. A claim that also went into a later
-- extract is left alone (delivering an old version again must not roll a claim back); a claim
-- whose content changed after extraction is 'corrected' at once.
UPDATE claim
   SET sent_sha256 = (SELECT i.content_sha256 FROM claim_extract_item i
                       WHERE i.extract_id = :extract_id AND i.claim_id = claim.claim_id),
       sent_visible_sha256 = (SELECT i.visible_sha256 FROM claim_extract_item i
                               WHERE i.extract_id = :extract_id AND i.claim_id = claim.claim_id),
       sent_period = :period,
       status = CASE WHEN EXISTS (SELECT 1 FROM claim_extract_item i
                                   WHERE i.extract_id = :extract_id AND i.claim_id = claim.claim_id
                                     AND (i.content_sha256 = claim.content_sha256
                                          OR i.visible_sha256 = claim.visible_sha256))
                     THEN 'sent' ELSE 'corrected' END,
       updated_at = :now
 WHERE claim_id IN (SELECT i.claim_id FROM claim_extract_item i WHERE i.extract_id = :extract_id)
   AND NOT EXISTS (SELECT 1 FROM claim_extract_item j
                    WHERE j.claim_id = claim.claim_id AND j.extract_id > :extract_id);

-- name: status_versions
SELECT e.id, e.period, e.version, e.reason, e.claims, e.total_claimed, e.created_at, e.out_dir,
       (SELECT COUNT(*) FROM claim_delivery d WHERE d.extract_id = e.id AND d.status = 'delivered') AS delivered,
       (SELECT COUNT(*) FROM claim_delivery d WHERE d.extract_id = e.id AND d.status <> 'delivered') AS failed,
       (SELECT MAX(d.delivered_at) FROM claim_delivery d WHERE d.extract_id = e.id AND d.status = 'delivered')
           AS delivered_at
  FROM claim_extract e
 WHERE e.insurer_code = :insurer
 ORDER BY e.period, e.version;

-- name: status_targets
SELECT d.extract_id, d.target, d.status
  FROM claim_delivery d
  JOIN claim_extract e ON e.id = d.extract_id
 WHERE e.insurer_code = :insurer
 ORDER BY d.id;

-- name: status_counts
SELECT status, COUNT(*) AS n FROM claim WHERE insurer_code = :insurer GROUP BY status;
