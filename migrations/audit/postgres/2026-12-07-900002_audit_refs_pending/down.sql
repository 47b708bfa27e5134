DROP TABLE IF EXISTS audit_refs_pending;
