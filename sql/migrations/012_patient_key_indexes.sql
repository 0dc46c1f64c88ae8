-- 012: a patient merge (ADT A40/A41/A42, transforms/load.py merge_patient) moves the retired
-- key's history with one UPDATE per fact table, WHERE patient_key = old key. Without an index each
-- of those UPDATEs read the whole table: a day of 200,000 messages with 80 merges spent a quarter
-- of its load time there, and the cost grew with the warehouse. Statisticians' per-patient
-- queries use the same indexes.
-- ix_message_store_status is dropped: (status, updated_at) from 011 serves every lookup by status
-- and costs every insert one B-tree update less.

CREATE INDEX ix_fact_encounter_patient ON fact_encounter (patient_key);
CREATE INDEX ix_encounter_event_patient ON encounter_event (patient_key);
CREATE INDEX ix_fact_lab_order_patient ON fact_lab_order (patient_key);
CREATE INDEX ix_fact_lab_result_patient ON fact_lab_result (patient_key);
CREATE INDEX ix_fact_medication_patient ON fact_medication (patient_key);
CREATE INDEX ix_fact_charge_patient ON fact_charge (patient_key);
CREATE INDEX ix_fact_immunization_patient ON fact_immunization (patient_key);
DROP INDEX ix_message_store_status;
