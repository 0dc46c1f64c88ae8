-- 019: moh_hospital_activity with small counts hidden, as in every moh_* table. It published a
-- facility's exact admissions, discharges and deaths per month (a single death, and that
-- patient's length of stay). Counts of 1 to k-1 are now NULL with suppressed = 1, and so are
-- bed-days of fewer than k stays and a mean stay of fewer than k discharges. Rows already built
-- are copied with k = 5 (the default small_cell_k); each month gets the configured k when it is
-- built again.

CREATE TABLE moh_hospital_activity_k (
    month               TEXT NOT NULL,
    facility_code       TEXT NOT NULL,
    region              TEXT NOT NULL,
    district            TEXT NOT NULL,
    admissions          INTEGER,
    discharges          INTEGER,
    deaths              INTEGER,
    bed_days            INTEGER,
    mean_length_of_stay DOUBLE PRECISION,
    suppressed          INTEGER NOT NULL,
    updated_at          TIMESTAMP NOT NULL,
    PRIMARY KEY (month, facility_code)
);
INSERT INTO moh_hospital_activity_k (month, facility_code, region, district, admissions, discharges, deaths, bed_days,
                                     mean_length_of_stay, suppressed, updated_at)
SELECT month, facility_code, region, district,
       CASE WHEN admissions BETWEEN 1 AND 4 THEN NULL ELSE admissions END,
       CASE WHEN discharges BETWEEN 1 AND 4 THEN NULL ELSE discharges END,
       CASE WHEN deaths BETWEEN 1 AND 4 THEN NULL ELSE deaths END,
       CASE WHEN admissions < 5 AND discharges < 5 THEN NULL ELSE bed_days END,
       CASE WHEN discharges < 5 THEN NULL ELSE mean_length_of_stay END,
       CASE WHEN admissions BETWEEN 1 AND 4 OR discharges BETWEEN 1 AND 4 OR deaths BETWEEN 1 AND 4
                 OR (admissions < 5 AND discharges < 5 AND bed_days > 0) THEN 1 ELSE 0 END,
       updated_at
  FROM moh_hospital_activity;
DROP TABLE moh_hospital_activity;
ALTER TABLE moh_hospital_activity_k RENAME TO moh_hospital_activity;
