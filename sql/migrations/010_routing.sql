-- 010: routing and outbound delivery. Every message a route produces for a destination is a row of
-- outbound_queue (durable, ordered per destination and patient, retried with backoff, then dead
-- letter); message_route traces each hop from the received message to each delivered message and
-- its ACK; route_review holds messages held back because a code had no mapping.

CREATE TABLE outbound_queue (
    id               {{ID}},
    message_id       BIGINT NOT NULL,            -- the received message (message_store.id)
    route            TEXT NOT NULL,              -- rule name in config/routes.yaml
    destination      TEXT NOT NULL,              -- destination name in config/routes.yaml
    order_key        TEXT NOT NULL,              -- delivery order is kept per destination and order_key (patient)
    payload          {{BLOB}} NOT NULL,          -- the exact bytes to send
    control_id       TEXT,
    status           TEXT NOT NULL,              -- pending | sending | delivered | failed | dead
    attempts         INTEGER NOT NULL,
    next_attempt_at  TIMESTAMP NOT NULL,
    last_error       TEXT,                       -- no patient data (codes, ERR segment codes, exception class)
    ack_code         TEXT,
    ack              {{BLOB}},
    created_at       TIMESTAMP NOT NULL,
    updated_at       TIMESTAMP NOT NULL,
    delivered_at     TIMESTAMP,
    UNIQUE (message_id, route, destination)
);
CREATE INDEX ix_outbound_due ON outbound_queue (destination, status, next_attempt_at);
CREATE INDEX ix_outbound_order ON outbound_queue (destination, order_key, id);

CREATE TABLE message_route (
    id              {{ID}},
    message_id      BIGINT NOT NULL,
    route           TEXT NOT NULL,
    destination     TEXT,
    outbound_id     BIGINT,
    outcome         TEXT NOT NULL,               -- queued | review | filtered | error
    detail          TEXT,
    created_at      TIMESTAMP NOT NULL
);
CREATE INDEX ix_message_route_message ON message_route (message_id);

CREATE TABLE route_review (
    id            {{ID}},
    message_id    BIGINT NOT NULL,
    route         TEXT NOT NULL,
    destination   TEXT NOT NULL,
    mapping       TEXT NOT NULL,                 -- config/mappings/<name>.csv
    code          TEXT NOT NULL,                 -- the unmapped code (a code, not patient data)
    created_at    TIMESTAMP NOT NULL,
    resolved_at   TIMESTAMP,
    UNIQUE (message_id, route, destination, mapping, code)
);
