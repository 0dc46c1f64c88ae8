-- DHIS2 export queries (transforms/dhis2.py). One file, several named queries: each starts at a
-- "-- name: <key>" line and runs unchanged on SQLite and PostgreSQL.
--
-- Rows are not ordered here: PostgreSQL sorts text by the database collation and SQLite by bytes,
-- so the payload order is fixed in Python, where it is the same on both.

-- name: weekly_cells
-- One row per DHIS2 org unit, disease, age band and sex for one ISO week. Summed per org unit:
-- two facilities sharing an org unit code must not send two values for one DHIS2 cell (the
-- second would overwrite the first).
SELECT f.dhis2_org_unit AS org_unit,
       w.disease,
       w.age_group,
       w.sex,
       CAST(SUM(w.suspected) AS BIGINT) AS suspected,
       CAST(SUM(w.confirmed) AS BIGINT) AS confirmed,
       CAST(SUM(w.deaths) AS BIGINT) AS deaths,
       COUNT(DISTINCT w.facility_code) AS facilities
  FROM rpt_idsr_weekly w
  JOIN dim_facility f ON f.facility_code = w.facility_code
 WHERE w.iso_week = :iso_week
   AND f.dhis2_org_unit <> ''
 GROUP BY f.dhis2_org_unit, w.disease, w.age_group, w.sex;

-- name: unmapped_facilities
-- Facilities with counts this week but no DHIS2 org unit (absent from dim_facility or an empty
-- code): their counts cannot be sent and the export says so.
SELECT w.facility_code,
       CAST(SUM(w.suspected) AS BIGINT) AS suspected,
       CAST(SUM(w.confirmed) AS BIGINT) AS confirmed,
       CAST(SUM(w.deaths) AS BIGINT) AS deaths
  FROM rpt_idsr_weekly w
  LEFT JOIN dim_facility f ON f.facility_code = w.facility_code
 WHERE w.iso_week = :iso_week
   AND (f.facility_code IS NULL OR f.dhis2_org_unit = '')
 GROUP BY w.facility_code;

-- name: insert_export
INSERT INTO dhis2_export (created_at, period, data_set, mode, target, values_sent, status, imported, updated,
                          ignored, deleted, conflicts, summary)
VALUES (:created_at, :period, :data_set, :mode, :target, :values_sent, :status, :imported, :updated,
        :ignored, :deleted, :conflicts, :summary)
RETURNING id;

-- name: exports_for_period
SELECT id, created_at, period, data_set, mode, target, values_sent, status, imported, updated, ignored, deleted,
       conflicts, summary
  FROM dhis2_export
 WHERE period = :period
 ORDER BY id;

-- name: sent_values
-- The last value handed over for each cell of a data set and period (table dhis2_sent_value), to
-- one target and before targets were recorded ('').
SELECT org_unit, data_element, category_option_combo, attribute_option_combo, value, target
  FROM dhis2_sent_value
 WHERE data_set = :data_set AND period = :period AND target IN (:target, '');

-- name: mapped_org_units
-- The DHIS2 org units the configuration maps facilities to now.
SELECT DISTINCT dhis2_org_unit FROM dim_facility WHERE dhis2_org_unit <> '';
