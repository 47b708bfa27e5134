-- Index columns hold a bounded key of long values (resources::index::index_key: the value itself up
-- to 1,000 bytes, else its first ~900 bytes and its SHA-256), because PostgreSQL's btree refuses an
-- entry over 2,704 bytes. The whole value of a keyed string or uri is kept beside its key, unindexed,
-- for :contains and for prefixes longer than the key's. NULL when the key is the value itself.
ALTER TABLE idx_string ADD COLUMN norm_full TEXT;
ALTER TABLE idx_uri ADD COLUMN uri_full TEXT;
