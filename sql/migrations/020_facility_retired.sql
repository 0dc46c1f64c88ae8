-- 020: when a facility left the configuration. dim_facility keeps every facility ever configured
-- (facts refer to them); reporting completeness counted a facility removed from facilities.yaml
-- as reporting nothing, every week, for ever. retired_at is set when it leaves the
-- configuration (NULL again if it comes back); weeks from then on do not expect it.

ALTER TABLE dim_facility ADD COLUMN retired_at TIMESTAMP;
