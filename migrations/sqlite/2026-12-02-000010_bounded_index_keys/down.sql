ALTER TABLE idx_uri DROP COLUMN uri_full;
ALTER TABLE idx_string DROP COLUMN norm_full;
