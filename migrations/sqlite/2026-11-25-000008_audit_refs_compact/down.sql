CREATE TABLE audit_refs_rowid (
    event_id TEXT NOT NULL,
    kind     TEXT NOT NULL,
    ref      TEXT NOT NULL
);
INSERT INTO audit_refs_rowid (event_id, kind, ref) SELECT event_id, kind, ref FROM audit_refs;
DROP TABLE audit_refs;
ALTER TABLE audit_refs_rowid RENAME TO audit_refs;
CREATE INDEX audit_refs_lookup ON audit_refs (kind, ref, event_id);
