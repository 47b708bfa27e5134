DROP TRIGGER audit_events_append_only_delete;
DROP TRIGGER audit_events_append_only_update;
DROP TABLE audit_refs;
DROP TABLE audit_events;
