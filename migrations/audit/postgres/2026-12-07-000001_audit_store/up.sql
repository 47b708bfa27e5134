-- The audit trail in a database of its own, when TANDEM_AUDIT_DATABASE_URL names one (by default it
-- shares the main database, whose migration 000004 made these tables: then nothing is created).
-- The same tables as the main database's, created only where they are missing.
CREATE TABLE IF NOT EXISTS audit_events (
    seq       BIGSERIAL PRIMARY KEY,
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

CREATE TABLE IF NOT EXISTS audit_refs (
    event_id TEXT NOT NULL,
    kind     TEXT NOT NULL, -- agent, entity, patient
    ref      TEXT NOT NULL  -- Type/id
);
CREATE INDEX IF NOT EXISTS audit_refs_lookup ON audit_refs (kind, ref, event_id);

CREATE OR REPLACE FUNCTION audit_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit events are append-only';
END;
$$;
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgname = 'audit_events_append_only'
                   AND tgrelid = 'audit_events'::regclass) THEN
        CREATE TRIGGER audit_events_append_only BEFORE UPDATE OR DELETE ON audit_events
            FOR EACH ROW EXECUTE FUNCTION audit_events_append_only();
    END IF;
END;
$$;
