-- Current version of every resource (one row per logical resource, deleted ones included).
CREATE TABLE resources (
    res_type     TEXT    NOT NULL,
    res_id       TEXT    NOT NULL,
    version_id   BIGINT  NOT NULL,
    last_updated BIGINT  NOT NULL, -- milliseconds since the Unix epoch, UTC
    deleted      BOOLEAN NOT NULL,
    body         TEXT,             -- FHIR JSON; NULL when deleted
    PRIMARY KEY (res_type, res_id)
);

-- Every version ever written; seq orders history across resources.
CREATE TABLE resource_versions (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    res_type     TEXT    NOT NULL,
    res_id       TEXT    NOT NULL,
    version_id   BIGINT  NOT NULL,
    last_updated BIGINT  NOT NULL,
    method       TEXT    NOT NULL, -- POST, PUT or DELETE
    body         TEXT,
    UNIQUE (res_type, res_id, version_id)
);
CREATE INDEX resource_versions_type_seq ON resource_versions (res_type, seq);
CREATE INDEX resource_versions_updated ON resource_versions (last_updated);

-- Search indexes, rewritten for a resource on each of its writes, in the same transaction. The
-- owner indexes lead with (res_type, res_id, param): they serve the rewrite, and a search criterion
-- that checks one candidate resource (EXISTS) finds its rows by three equalities.
CREATE TABLE idx_token (
    row_id   INTEGER PRIMARY KEY AUTOINCREMENT,
    res_type TEXT NOT NULL,
    res_id   TEXT NOT NULL,
    param    TEXT NOT NULL,
    system   TEXT,
    code     TEXT,
    display  TEXT -- normalised text of the CodeableConcept / Coding / Identifier.type, for :text and :of-type
);
CREATE INDEX idx_token_lookup ON idx_token (res_type, param, code, system);
CREATE INDEX idx_token_owner ON idx_token (res_type, res_id, param);

CREATE TABLE idx_string (
    row_id   INTEGER PRIMARY KEY AUTOINCREMENT,
    res_type TEXT NOT NULL,
    res_id   TEXT NOT NULL,
    param    TEXT NOT NULL,
    norm     TEXT NOT NULL, -- lower case, accents removed
    exact    TEXT NOT NULL
);
CREATE INDEX idx_string_lookup ON idx_string (res_type, param, norm);
CREATE INDEX idx_string_owner ON idx_string (res_type, res_id, param);

CREATE TABLE idx_date (
    row_id   INTEGER PRIMARY KEY AUTOINCREMENT,
    res_type TEXT   NOT NULL,
    res_id   TEXT   NOT NULL,
    param    TEXT   NOT NULL,
    low      BIGINT NOT NULL, -- inclusive, ms since epoch (i64::MIN when open)
    high     BIGINT NOT NULL  -- inclusive, ms since epoch (i64::MAX when open)
);
CREATE INDEX idx_date_lookup ON idx_date (res_type, param, low, high);
CREATE INDEX idx_date_owner ON idx_date (res_type, res_id, param, low, high);

CREATE TABLE idx_reference (
    row_id      INTEGER PRIMARY KEY AUTOINCREMENT,
    res_type    TEXT NOT NULL,
    res_id      TEXT NOT NULL,
    param       TEXT NOT NULL,
    target_type TEXT,
    target_id   TEXT,
    url         TEXT -- absolute or otherwise non-local reference
);
CREATE INDEX idx_reference_lookup ON idx_reference (res_type, param, target_id, target_type);
CREATE INDEX idx_reference_target ON idx_reference (target_type, target_id);
CREATE INDEX idx_reference_owner ON idx_reference (res_type, res_id, param);

CREATE TABLE idx_uri (
    row_id   INTEGER PRIMARY KEY AUTOINCREMENT,
    res_type TEXT NOT NULL,
    res_id   TEXT NOT NULL,
    param    TEXT NOT NULL,
    uri      TEXT NOT NULL
);
CREATE INDEX idx_uri_lookup ON idx_uri (res_type, param, uri);
CREATE INDEX idx_uri_owner ON idx_uri (res_type, res_id, param);

CREATE TABLE idx_number (
    row_id   INTEGER PRIMARY KEY AUTOINCREMENT,
    res_type TEXT NOT NULL,
    res_id   TEXT NOT NULL,
    param    TEXT NOT NULL,
    value    DOUBLE PRECISION NOT NULL,
    system   TEXT,
    code     TEXT
);
CREATE INDEX idx_number_lookup ON idx_number (res_type, param, value);
CREATE INDEX idx_number_owner ON idx_number (res_type, res_id, param);

-- SQLite has one writer: every write transaction first takes the write lock by touching this row,
-- so that two writers never both read and then try to upgrade (which SQLite answers with SQLITE_BUSY).
CREATE TABLE write_lock (id INTEGER PRIMARY KEY, n BIGINT NOT NULL);
INSERT INTO write_lock (id, n) VALUES (1, 0);
