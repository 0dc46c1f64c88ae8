-- 006: alerting. alert_state holds one row per problem key (a failing task, a silent facility,
-- an expiring certificate, ...): whether it is open, the highest severity already sent, when a
-- message last went out and how often the problem was seen. transforms/alerting.py decides from
-- it whether a new occurrence opens, escalates, reminds or is suppressed, and resolves it. The
-- primary key is what makes two workers firing the same key at once send one message
-- (INSERT ... ON CONFLICT on alert_key, then the row is locked while deciding).
-- ops_alert keeps one row per message sent; alert_key ties the rows of one problem together so
-- a resolve can close them. No patient data in either table: codes, counts and class names only.

CREATE TABLE alert_state (
    alert_key     TEXT PRIMARY KEY,
    state         TEXT NOT NULL,
    kind          TEXT NOT NULL,
    severity      TEXT NOT NULL,
    facility_code TEXT,
    dag_id        TEXT,
    task_id       TEXT,
    run_id        TEXT,
    error_class   TEXT,
    log_url       TEXT,
    params        TEXT,
    opened_at     TIMESTAMP NOT NULL,
    last_seen_at  TIMESTAMP NOT NULL,
    last_sent_at  TIMESTAMP NOT NULL,
    resolved_at   TIMESTAMP,
    occurrences   BIGINT NOT NULL,
    messages      BIGINT NOT NULL,
    updated_at    TIMESTAMP NOT NULL
);
CREATE INDEX ix_alert_state_open ON alert_state (state, alert_key);

ALTER TABLE ops_alert ADD COLUMN alert_key TEXT;
CREATE INDEX ix_ops_alert_key ON ops_alert (alert_key, resolved_at);
