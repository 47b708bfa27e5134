-- References still waiting go into audit_refs first, so that no event stops being found.
INSERT INTO audit_refs (event_id, kind, ref)
SELECT p.event_id, split_part(e, '|', 1), substr(e, strpos(e, '|') + 1)
FROM audit_refs_pending p, regexp_split_to_table(p.refs, E'\n') AS e
WHERE e <> '';
DROP TABLE IF EXISTS audit_refs_pending;
