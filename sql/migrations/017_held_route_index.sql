-- 017: the routing pass looks for copies held for review or failed to build (to route them again
-- every 15 minutes, and to know whether a destination's routing_held alert may close). A partial
-- index holds only those rows, so the look-up does not scan every hop ever recorded.

CREATE INDEX ix_message_route_held ON message_route (destination, created_at) WHERE outcome IN ('review', 'error');
