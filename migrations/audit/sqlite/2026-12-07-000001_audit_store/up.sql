-- The audit trail in a database of its own (TANDEM_AUDIT_DATABASE_URL; by default a file beside the
-- main one): its own write-ahead log, writer and checkpoints, so that writing the trail never waits
-- for the clinic's writes nor they for it. The same tables as the main database's (migrations
-- 000004 and 000008), created only where they are missing: a store that shares the main database
-- already has them.
CREATE TABLE IF NOT EXISTS audit_events (
    seq       INTEGER PRIMARY KEY AUTOINCREMENT,
    id        TEXT   NOT NULL UNIQUE,
    recorded  BIGINT NOT NULL, -- ms since the epoch, UTC
    action    TEXT   NOT NULL, -- C R U D E
    subtype   TEXT   NOT NULL, -- the restful interaction (read, search-type, operation…)
    outcome   TEXT   NOT NULL, -- 0 success, 4 minor failure (4xx), 8 serious failure (5xx)
    altid     TEXT,            -- the token's sub
    client_id TEXT,
    address   TEXT,            -- the caller's IP address
    body      TEXT   NOT NULL  -- the event's facts (audit::Stored), rendered as an AuditEvent when read
);
CREATE INDEX IF NOT EXISTS audit_events_recorded ON audit_events (recorded);

-- An event's references (agent, entity, patient) as one B-tree keyed the way searches ask.
CREATE TABLE IF NOT EXISTS audit_refs (
    kind     TEXT NOT NULL, -- agent, entity, patient
    ref      TEXT NOT NULL, -- Type/id
    event_id TEXT NOT NULL,
    PRIMARY KEY (kind, ref, event_id)
) WITHOUT ROWID;

CREATE TRIGGER IF NOT EXISTS audit_events_append_only_update BEFORE UPDATE ON audit_events
BEGIN SELECT RAISE(ABORT, 'audit events are append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_events_append_only_delete BEFORE DELETE ON audit_events
BEGIN SELECT RAISE(ABORT, 'audit events are append-only'); END;
