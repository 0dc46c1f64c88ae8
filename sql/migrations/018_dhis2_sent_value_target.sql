-- 018: dhis2_sent_value per target. A push to the internal instance, a push to a public one and
-- a file shared one record of the cells handed over: once the internal push had sent a cell's
-- zero, the public instance was never told and kept the old count. The target is the instance's
-- base URL, or 'file' for a file written to be imported elsewhere. Rows recorded before this
-- migration have the target '' and count for every target.

CREATE TABLE dhis2_sent_value_by_target (
    target                 TEXT NOT NULL,
    data_set               TEXT NOT NULL,
    period                 TEXT NOT NULL,
    org_unit               TEXT NOT NULL,
    data_element           TEXT NOT NULL,
    category_option_combo  TEXT NOT NULL,
    attribute_option_combo TEXT NOT NULL,
    value                  TEXT NOT NULL,
    sent_at                TIMESTAMP NOT NULL,
    PRIMARY KEY (target, data_set, period, org_unit, data_element, category_option_combo, attribute_option_combo)
);
INSERT INTO dhis2_sent_value_by_target (target, data_set, period, org_unit, data_element, category_option_combo,
                                        attribute_option_combo, value, sent_at)
SELECT '', data_set, period, org_unit, data_element, category_option_combo, attribute_option_combo, value, sent_at
  FROM dhis2_sent_value;
DROP TABLE dhis2_sent_value;
ALTER TABLE dhis2_sent_value_by_target RENAME TO dhis2_sent_value;
