-- 011: routing watermark. route_pending (transforms/outbound.py) routes each loaded message once:
-- a message is routed when it has at least one message_route row (NOT EXISTS), which alone is
-- correct but would read every loaded message ever stored on each run. routing_state keeps the
-- time up to which a complete pass found nothing left (scanned_to); the next pass reads only the
-- messages whose status changed since then, less a settle window for loads that committed late
-- (message_store.updated_at is set when the status changes, also on replay). The index makes
-- that read a range scan instead of a scan of every loaded row.

CREATE TABLE routing_state (
    name        TEXT PRIMARY KEY,              -- 'route_pending'
    scanned_to  TIMESTAMP NOT NULL,            -- start of the last complete pass
    updated_at  TIMESTAMP NOT NULL
);
CREATE INDEX ix_message_store_status_updated ON message_store (status, updated_at);
