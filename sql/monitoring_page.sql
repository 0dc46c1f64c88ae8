-- Interface monitoring page queries (transforms/monitoring_page.py, served by the Airflow plugin
-- plugins/hl7ics_monitoring_plugin.py). One file, several named queries: each starts at a
-- "-- name: <key>" line and runs unchanged on SQLite and PostgreSQL.
--
-- The page reads only what the interface_monitoring DAG maintains (interface_health,
-- interface_volume_hourly), the alerts, the open quarantine and dim_facility: never a range of
-- message_store (the only access to it is a primary-key lookup per open quarantine row, and only
-- when a region or facility filter is set; tests/test_monitoring_ui.py checks the plans).
--
-- Filters: :region and :facility are NULL when not set. CAST(:x AS TEXT): PostgreSQL must know a
-- parameter's type to test it for NULL. Times are naive UTC bound as 'YYYY-MM-DD HH:MM:SS' text;
-- ranges are half-open and filter on the raw column so the indexes serve them. The first ten
-- characters of CAST(hour AS TEXT) are the UTC day on both databases.

-- name: facilities
SELECT facility_code, name, region, district
  FROM dim_facility
 ORDER BY region, facility_code;

-- name: latest_check
-- ix_interface_health_latest answers this without reading the history.
SELECT MAX(checked_at) AS checked_at FROM interface_health;

-- name: interfaces
-- The latest snapshot, worst first. Interfaces of a facility missing from dim_facility (UNKNOWN)
-- show when no region is chosen.
SELECT h.checked_at, h.facility_code, f.name, f.region, f.district, h.source, h.message_type, h.status,
       h.messages_1h, h.messages_24h, h.expected_1h, h.quarantine_rate_24h, h.last_message_at,
       h.silence_minutes, h.ack_p50_ms, h.ack_p95_ms, h.ack_p99_ms, h.backlog, h.backlog_oldest_at,
       h.problems
  FROM interface_health h
  LEFT JOIN dim_facility f ON f.facility_code = h.facility_code
 WHERE h.checked_at = :checked_at
   AND (CAST(:region AS TEXT) IS NULL OR f.region = CAST(:region AS TEXT))
   AND (CAST(:facility AS TEXT) IS NULL OR h.facility_code = CAST(:facility AS TEXT))
 ORDER BY CASE h.status WHEN 'critical' THEN 0 WHEN 'warning' THEN 1 WHEN 'ok' THEN 2 ELSE 3 END,
          h.facility_code, h.source, h.message_type;

-- name: hourly_volume
-- One row per interface and hour that had messages (hours without a row had none).
SELECT v.hour, v.facility_code, v.source, v.message_type, v.messages, v.quarantined
  FROM interface_volume_hourly v
  LEFT JOIN dim_facility f ON f.facility_code = v.facility_code
 WHERE v.hour >= :since_at AND v.hour < :until_at
   AND (CAST(:region AS TEXT) IS NULL OR f.region = CAST(:region AS TEXT))
   AND (CAST(:facility AS TEXT) IS NULL OR v.facility_code = CAST(:facility AS TEXT));

-- name: daily_volume
SELECT substr(CAST(v.hour AS TEXT), 1, 10) AS day,
       CAST(SUM(v.messages) AS BIGINT) AS messages,
       CAST(SUM(v.quarantined) AS BIGINT) AS quarantined,
       CAST(SUM(v.duplicates) AS BIGINT) AS duplicates
  FROM interface_volume_hourly v
  LEFT JOIN dim_facility f ON f.facility_code = v.facility_code
 WHERE v.hour >= :since_at AND v.hour < :until_at
   AND (CAST(:region AS TEXT) IS NULL OR f.region = CAST(:region AS TEXT))
   AND (CAST(:facility AS TEXT) IS NULL OR v.facility_code = CAST(:facility AS TEXT))
 GROUP BY substr(CAST(v.hour AS TEXT), 1, 10)
 ORDER BY 1;

-- name: open_alerts
-- Alerts without a facility (backlog, TLS certificate, disk, a whole-DAG failure) concern every
-- facility, so they stay visible under a filter. total counts every match, not only the first 50.
-- "Since" is when the problem opened (alert_state.opened_at), not its latest reminder.
SELECT a.id, COALESCE(s.opened_at, a.created_at) AS created_at, a.dag_id, a.task_id, a.facility_code, a.severity,
       a.error_class, a.message, a.log_url, COUNT(*) OVER () AS total
  FROM ops_alert a
  LEFT JOIN alert_state s ON s.alert_key = a.alert_key AND s.state = 'open'
  LEFT JOIN dim_facility f ON f.facility_code = a.facility_code
 WHERE a.resolved_at IS NULL
   -- one row per open problem: its latest message (reminders and escalations add rows)
   AND (a.alert_key IS NULL OR a.id = (SELECT MAX(b.id) FROM ops_alert b
                                        WHERE b.alert_key = a.alert_key AND b.resolved_at IS NULL))
   AND (CAST(:region AS TEXT) IS NULL OR a.facility_code IS NULL OR f.region = CAST(:region AS TEXT))
   AND (CAST(:facility AS TEXT) IS NULL OR a.facility_code IS NULL OR a.facility_code = CAST(:facility AS TEXT))
 ORDER BY COALESCE(s.opened_at, a.created_at) DESC, a.id DESC
 LIMIT :limit;

-- name: quarantine_reasons
-- Without a filter: the quarantine table alone.
SELECT q.stage, q.reason, COUNT(*) AS n, MIN(q.created_at) AS oldest_at
  FROM quarantine q
 WHERE q.resolved_at IS NULL
 GROUP BY q.stage, q.reason
 ORDER BY n DESC, q.reason, q.stage;

-- name: quarantine_reasons_filtered
-- With a filter the facility is the message's, looked up by primary key for each open quarantine
-- row (a scalar subquery: a join would let the planner hash-join a full scan of message_store).
SELECT o.stage, o.reason, COUNT(*) AS n, MIN(o.created_at) AS oldest_at
  FROM (SELECT q.stage, q.reason, q.created_at,
               (SELECT m.facility_code FROM message_store m WHERE m.id = q.message_id) AS facility_code
          FROM quarantine q
         WHERE q.resolved_at IS NULL) o
  LEFT JOIN dim_facility f ON f.facility_code = o.facility_code
 WHERE (CAST(:region AS TEXT) IS NULL OR f.region = CAST(:region AS TEXT))
   AND (CAST(:facility AS TEXT) IS NULL OR o.facility_code = CAST(:facility AS TEXT))
 GROUP BY o.stage, o.reason
 ORDER BY n DESC, o.reason, o.stage;

-- name: outbound_by_destination
-- Routed copies waiting, retrying, dead or delivered, per destination (never payloads).
SELECT destination, status, COUNT(*) AS n, MIN(created_at) AS oldest_at
  FROM outbound_queue
 GROUP BY destination, status
 ORDER BY destination, status;
