-- Search result snapshots: the ordered ids of a search that spans several pages, so that every page
-- of it is served from the same fixed list (stable while data changes; any replica can serve it).
CREATE TABLE search_snapshots (
    id      TEXT   PRIMARY KEY,
    created BIGINT NOT NULL, -- ms since the epoch; snapshots expire
    total   BIGINT NOT NULL
);
CREATE INDEX search_snapshots_created ON search_snapshots (created);

CREATE TABLE search_results (
    search_id TEXT   NOT NULL,
    pos       BIGINT NOT NULL,
    res_type  TEXT   NOT NULL,
    res_id    TEXT   NOT NULL,
    PRIMARY KEY (search_id, pos)
);

-- Date criteria bounded by the end of a range (gt, ge, eb) search on high.
CREATE INDEX idx_date_high ON idx_date (res_type, param, high);

-- Composite search parameters of two token components (Group characteristic-value): one row per
-- pair taken from the same element, so that both components must match together.
CREATE TABLE idx_composite (
    row_id   INTEGER PRIMARY KEY AUTOINCREMENT,
    res_type TEXT NOT NULL,
    res_id   TEXT NOT NULL,
    param    TEXT NOT NULL,
    system1  TEXT,
    code1    TEXT,
    system2  TEXT,
    code2    TEXT
);
CREATE INDEX idx_composite_lookup ON idx_composite (res_type, param, code1, code2);
CREATE INDEX idx_composite_owner ON idx_composite (res_type, res_id);
