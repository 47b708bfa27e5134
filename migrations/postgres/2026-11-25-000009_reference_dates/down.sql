DROP TRIGGER idx_reference_fill_date ON idx_reference;
DROP FUNCTION idx_reference_fill_date();
CREATE INDEX idx_reference_lookup ON idx_reference (res_type, param, target_id, target_type);
DROP INDEX idx_reference_dated;
ALTER TABLE idx_reference DROP COLUMN date_long;
ALTER TABLE idx_reference DROP COLUMN date_high;
ALTER TABLE idx_reference DROP COLUMN date_low;
