-- Weekly surveillance bulletin queries (transforms/bulletin.py). One file, several named queries:
-- each starts at a "-- name: <key>" line and runs unchanged on SQLite and PostgreSQL.
--
-- Only the statisticians' published tables (moh_*, already small-cell suppressed) and dim_facility
-- are read: never rpt_* or phi_*. Weeks are ISO weeks as zero-padded text 'YYYY-Www', which sorts
-- in time order across years, so a window of weeks is a plain text range on iso_week (the first
-- column of each table's primary key) and needs no date arithmetic that differs between databases.

-- name: idsr_window
-- District totals only (age_group = sex = 'ALL'): adding the age and sex bands to them would count
-- every case twice.
SELECT iso_week, region, district, disease, notification, suspected, confirmed, deaths, suppressed
  FROM moh_idsr_weekly
 WHERE iso_week >= :week_from AND iso_week <= :week_to
   AND age_group = 'ALL' AND sex = 'ALL'
 ORDER BY iso_week, region, district, disease;

-- name: lab_week
SELECT region, district, test, tests_done, positives, positivity_rate, suppressed
  FROM moh_lab_activity
 WHERE iso_week = :week
 ORDER BY region, district, test;

-- name: completeness_week
-- LEFT JOIN: a facility missing from dim_facility still shows, under its code.
SELECT c.facility_code, f.name, c.region, c.district, c.expected_days, c.reporting_days, c.on_time_days,
       c.completeness, c.timeliness, c.messages, c.late_messages
  FROM moh_completeness c
  LEFT JOIN dim_facility f ON f.facility_code = c.facility_code
 WHERE c.iso_week = :week
 ORDER BY c.region, c.district, c.facility_code;

-- name: districts
-- Every district with a facility, so a district that published nothing still has its row.
SELECT DISTINCT region, district FROM dim_facility ORDER BY region, district;

-- name: data_as_of
-- When the week's published figures were last rebuilt (NULL when nothing is published).
SELECT MAX(u) AS as_of
  FROM (SELECT MAX(updated_at) AS u FROM moh_idsr_weekly WHERE iso_week = :week
        UNION ALL SELECT MAX(updated_at) FROM moh_lab_activity WHERE iso_week = :week
        UNION ALL SELECT MAX(updated_at) FROM moh_completeness WHERE iso_week = :week) AS t;
