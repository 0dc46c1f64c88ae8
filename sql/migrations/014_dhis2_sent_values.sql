-- 014: the DHIS2 cells handed over, per data set and period (transforms/dhis2.py). Zeros are left
-- out of a payload, so a count that falls to zero after its week was sent (a cholera admission
-- cancelled by an A11) used to leave DHIS2 with the old value. The next payload of that period
-- now carries an explicit "0" for every cell recorded here with another value that is now absent.
-- Written when a file is written and when DHIS2 accepted an import (not after a dry run).

CREATE TABLE dhis2_sent_value (
    data_set               TEXT NOT NULL,
    period                 TEXT NOT NULL,
    org_unit               TEXT NOT NULL,
    data_element           TEXT NOT NULL,
    category_option_combo  TEXT NOT NULL,
    attribute_option_combo TEXT NOT NULL,
    value                  TEXT NOT NULL,
    sent_at                TIMESTAMP NOT NULL,
    PRIMARY KEY (data_set, period, org_unit, data_element, category_option_combo, attribute_option_combo)
);
