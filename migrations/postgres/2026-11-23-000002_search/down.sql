DROP TABLE search_results;
DROP TABLE search_snapshots;
