-- References still waiting go into audit_refs first, so that no event stops being found.
WITH RECURSIVE split(event_id, rest, item) AS (
    SELECT event_id, substr(refs, 2), NULL FROM audit_refs_pending
    UNION ALL
    SELECT event_id, substr(rest, instr(rest, char(10)) + 1), substr(rest, 1, instr(rest, char(10)) - 1)
    FROM split WHERE rest <> ''
)
INSERT OR IGNORE INTO audit_refs (kind, ref, event_id)
SELECT substr(item, 1, instr(item, '|') - 1), substr(item, instr(item, '|') + 1), event_id
FROM split WHERE item IS NOT NULL AND item <> '';
DROP TABLE IF EXISTS audit_refs_pending;
