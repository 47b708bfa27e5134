DROP TABLE idx_position;
DROP TABLE idx_composite;
DROP INDEX idx_date_high;
DROP TABLE search_results;
DROP TABLE search_snapshots;
