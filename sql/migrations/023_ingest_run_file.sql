-- 023: what each run committed of each file. ingest_run used to count a file's messages for the
-- run that first registered the file (ingested_file.run_id); a file that run left part-way and a
-- later run resumed after its lease showed the later run's messages in neither run's summary.
-- Counts are added in the transaction that commits the messages (transforms/ingest.py), so a
-- crash counts nothing twice, and a re-run that finds the file committed adds nothing.

CREATE TABLE ingest_run_file (
    run_id        TEXT NOT NULL,
    file_sha256   TEXT NOT NULL,
    facility_code TEXT NOT NULL,
    messages      INTEGER NOT NULL,
    loaded        INTEGER NOT NULL,
    duplicates    INTEGER NOT NULL,
    quarantined   INTEGER NOT NULL,
    updated_at    TIMESTAMP NOT NULL,
    PRIMARY KEY (run_id, file_sha256)
);
