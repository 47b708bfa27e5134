-- The audit trail: one row per FHIR interaction (and per refused attempt), with the AuditEvent
-- resource it is served as, and the columns its search parameters use. Append-only: the trigger
-- refuses any UPDATE or DELETE (an operator who purges old events drops it on purpose).
CREATE TABLE audit_events (
    seq       BIGSERIAL PRIMARY KEY,
    id        TEXT   NOT NULL UNIQUE,
    recorded  BIGINT NOT NULL, -- ms since the epoch, UTC
    action    TEXT   NOT NULL, -- C R U D E
    subtype   TEXT   NOT NULL, -- the restful interaction (read, search-type, operation…)
    outcome   TEXT   NOT NULL, -- 0 success, 4 minor failure (4xx), 8 serious failure (5xx)
    altid     TEXT,            -- the token's sub
    client_id TEXT,
    address   TEXT,            -- the caller's IP address
    body      TEXT   NOT NULL  -- the AuditEvent as FHIR JSON
);
CREATE INDEX audit_events_recorded ON audit_events (recorded);

-- References of an event, for the agent, entity and patient search parameters.
CREATE TABLE audit_refs (
    event_id TEXT NOT NULL,
    kind     TEXT NOT NULL, -- agent, entity, patient
    ref      TEXT NOT NULL  -- Type/id
);
CREATE INDEX audit_refs_lookup ON audit_refs (kind, ref, event_id);

CREATE FUNCTION audit_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit events are append-only';
END;
$$;
CREATE TRIGGER audit_events_append_only BEFORE UPDATE OR DELETE ON audit_events
    FOR EACH ROW EXECUTE FUNCTION audit_events_append_only();
