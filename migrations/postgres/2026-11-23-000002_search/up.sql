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
    row_id   BIGSERIAL PRIMARY KEY,
    res_type TEXT NOT NULL,
    res_id   TEXT NOT NULL,
    param    TEXT NOT NULL,
    system1  TEXT,
    code1    TEXT,
    system2  TEXT,
    code2    TEXT
);
CREATE INDEX idx_composite_lookup ON idx_composite (res_type, param, code1, code2);
CREATE INDEX idx_composite_owner ON idx_composite (res_type, res_id, param);

-- Positions (Location.position) for the special parameter near: latitude and longitude in degrees,
-- and the unit vector (x, y, z) on the sphere, so that "within distance D" is a dot product
-- x*qx + y*qy + z*qz >= cos(D / R) in plain SQL arithmetic; the latitude band narrows by index.
CREATE TABLE idx_position (
    row_id    BIGSERIAL PRIMARY KEY,
    res_type  TEXT NOT NULL,
    res_id    TEXT NOT NULL,
    param     TEXT NOT NULL,
    latitude  DOUBLE PRECISION NOT NULL,
    longitude DOUBLE PRECISION NOT NULL,
    x         DOUBLE PRECISION NOT NULL,
    y         DOUBLE PRECISION NOT NULL,
    z         DOUBLE PRECISION NOT NULL
);
CREATE INDEX idx_position_lookup ON idx_position (res_type, param, latitude);
CREATE INDEX idx_position_owner ON idx_position (res_type, res_id, param);
