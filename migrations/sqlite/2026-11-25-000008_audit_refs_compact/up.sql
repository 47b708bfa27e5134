-- An audit event's references as one B-tree keyed the way searches ask (kind, ref, event), rather
-- than a table plus an index over it: each reference is written once, not twice. Every request adds
-- two or three references, so this is on the path of every read.
CREATE TABLE audit_refs_keyed (
    kind     TEXT NOT NULL, -- agent, entity, patient
    ref      TEXT NOT NULL, -- Type/id
    event_id TEXT NOT NULL,
    PRIMARY KEY (kind, ref, event_id)
) WITHOUT ROWID;
INSERT OR IGNORE INTO audit_refs_keyed (kind, ref, event_id) SELECT kind, ref, event_id FROM audit_refs;
DROP TABLE audit_refs;
ALTER TABLE audit_refs_keyed RENAME TO audit_refs;
