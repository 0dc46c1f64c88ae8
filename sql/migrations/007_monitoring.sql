-- 007: interface monitoring and the SLA. The listener writes its heartbeat (uptime) and, each
-- minute, its ACK latencies as histogram buckets (percentiles and the SLA's "within 2 s / 5 s"
-- shares are computed from them without a row per message). The interface_monitoring DAG keeps
-- an hourly volume rollup (so the monitoring page never scans message_store) and a snapshot of
-- every interface's health every 5 minutes. No patient data in any of them.

CREATE TABLE listener_heartbeat (
    instance    TEXT NOT NULL,
    started_at  TIMESTAMP NOT NULL,
    beat_at     TIMESTAMP NOT NULL,
    stopped_at  TIMESTAMP,
    PRIMARY KEY (instance, started_at)
);

CREATE TABLE ack_latency (
    minute        TIMESTAMP NOT NULL,
    facility_code TEXT NOT NULL,
    message_type  TEXT NOT NULL,
    bucket_ms     INTEGER NOT NULL,
    n             BIGINT NOT NULL,
    PRIMARY KEY (minute, facility_code, message_type, bucket_ms)
);

CREATE TABLE interface_volume_hourly (
    hour          TIMESTAMP NOT NULL,
    facility_code TEXT NOT NULL,
    source        TEXT NOT NULL,
    message_type  TEXT NOT NULL,
    messages      BIGINT NOT NULL,
    quarantined   BIGINT NOT NULL,
    duplicates    BIGINT NOT NULL,
    updated_at    TIMESTAMP NOT NULL,
    PRIMARY KEY (hour, facility_code, source, message_type)
);
CREATE INDEX ix_interface_volume_facility ON interface_volume_hourly (facility_code, hour);

CREATE TABLE interface_health (
    checked_at          TIMESTAMP NOT NULL,
    facility_code       TEXT NOT NULL,
    source              TEXT NOT NULL,
    message_type        TEXT NOT NULL,
    status              TEXT NOT NULL,
    messages_1h         BIGINT NOT NULL,
    messages_24h        BIGINT NOT NULL,
    expected_1h         DOUBLE PRECISION,
    quarantine_rate_24h DOUBLE PRECISION,
    last_message_at     TIMESTAMP,
    silence_minutes     DOUBLE PRECISION,
    ack_p50_ms          DOUBLE PRECISION,
    ack_p95_ms          DOUBLE PRECISION,
    ack_p99_ms          DOUBLE PRECISION,
    backlog             BIGINT NOT NULL,
    backlog_oldest_at   TIMESTAMP,
    problems            TEXT,
    PRIMARY KEY (checked_at, facility_code, source, message_type)
);
CREATE INDEX ix_interface_health_latest ON interface_health (checked_at);
