-- (Versions 9xxxxx of a day are this audit set's, so that they never meet the main set's 0000NN on
-- a database the two share.)
--
-- An event's references, waiting to be indexed. The audit writer appends one row per event here,
-- at the end of the table, instead of one row per reference on a random page of audit_refs'
-- (kind, ref, event_id) B-tree; the audit indexer moves them into audit_refs behind it, sorted, in
-- batches, each batch's rows deleted here and inserted there in one transaction. A search reads
-- both (audit_refs, and this table, small, scanned), so it is exact at every moment.
--
-- refs: each reference as '\n' || kind || '|' || ref, and a final '\n' ("\nagent|Practitioner/a
-- \nentity|Appointment/b\n"). A reference never holds a control character (audit::to_row), so
-- '\n' || kind || '|' || ref || '\n' matches one whole reference and nothing else.
CREATE TABLE IF NOT EXISTS audit_refs_pending (
    seq      BIGSERIAL PRIMARY KEY,
    event_id TEXT NOT NULL,
    refs     TEXT NOT NULL
);
