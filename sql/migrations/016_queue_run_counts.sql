-- 016: what each run consumed from a facility's queues (transforms/ingest.py ingest_messages).
-- ingest_run is recomputed from the file ledger, and queue messages come in no file: a facility
-- fed only by RabbitMQ showed zero messages every run. Counts are added in the transaction that
-- commits the messages (before the broker is acked), so a crash counts nothing twice: redelivered
-- messages are recognised and neither stored nor counted again.

CREATE TABLE ingest_run_queue (
    run_id        TEXT NOT NULL,
    facility_code TEXT NOT NULL,
    messages      INTEGER NOT NULL,
    loaded        INTEGER NOT NULL,
    duplicates    INTEGER NOT NULL,
    quarantined   INTEGER NOT NULL,
    updated_at    TIMESTAMP NOT NULL,
    PRIMARY KEY (run_id, facility_code)
);
