-- Data-quality report queries (transforms/dq_report.py). One file, several named queries: each
-- starts at a "-- name: <key>" line and runs unchanged on SQLite and PostgreSQL.
--
-- Days are UTC days: *_at columns hold naive UTC, stored as text 'YYYY-MM-DD HH:MM:SS' on SQLite
-- and as TIMESTAMP on PostgreSQL, so the first ten characters of the text form are the day on
-- both. Ranges filter on the raw column (half-open, bound as 'YYYY-MM-DD HH:MM:SS' text) so the
-- ix_dq_result_created index still serves them.

-- name: delete_days
DELETE FROM dq_daily WHERE day >= :day_from AND day <= :day_to;

-- name: aggregate_days
-- severity is not part of dq_daily's key: if an expectation's severity changed during a day, the
-- day's row takes the more severe one ('error') rather than violating the key.
SELECT substr(CAST(created_at AS TEXT), 1, 10) AS day,
       facility_code,
       table_name,
       expectation,
       CASE WHEN MAX(CASE WHEN severity = 'error' THEN 1 ELSE 0 END) = 1 THEN 'error' ELSE MIN(severity) END
           AS severity,
       CAST(SUM(evaluated) AS BIGINT) AS evaluated,
       CAST(SUM(failed) AS BIGINT) AS failed,
       CASE WHEN SUM(evaluated) > 0 THEN CAST(SUM(failed) AS DOUBLE PRECISION) / SUM(evaluated) ELSE 0.0 END
           AS failure_rate
  FROM dq_result
 WHERE created_at >= :start_at AND created_at < :end_at
 GROUP BY substr(CAST(created_at AS TEXT), 1, 10), facility_code, table_name, expectation
 ORDER BY 1, 2, 3, 4;

-- name: summary
-- CAST(:facility AS TEXT): PostgreSQL must know the parameter's type to test it for NULL.
SELECT facility_code,
       table_name,
       expectation,
       severity,
       CAST(SUM(evaluated) AS BIGINT) AS evaluated,
       CAST(SUM(failed) AS BIGINT) AS failed,
       CASE WHEN SUM(evaluated) > 0 THEN CAST(SUM(failed) AS DOUBLE PRECISION) / SUM(evaluated) ELSE 0.0 END
           AS failure_rate
  FROM dq_result
 WHERE created_at >= :since_at
   AND (CAST(:facility AS TEXT) IS NULL OR facility_code = CAST(:facility AS TEXT))
 GROUP BY facility_code, table_name, expectation, severity
 ORDER BY facility_code, failed DESC, table_name, expectation, severity;

-- name: daily_window
SELECT day, facility_code, table_name, expectation, severity, evaluated, failed, failure_rate
  FROM dq_daily
 WHERE day >= :day_from AND day <= :day_to
 ORDER BY facility_code, day, table_name, expectation;
