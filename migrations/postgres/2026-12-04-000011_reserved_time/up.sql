-- Time set aside for group sessions (a Slot marked group-therapy on a practitioner's or room's
-- Schedule) is held in the bookings table as rows of kind 'reserved', beside the bookings of
-- Appointments ('individual', 'group'). Two exclusion constraints then guard both rules whatever the
-- number of replicas writing at once: no two Appointments of one actor overlap (reserved rows left
-- out), and no individual session of an actor overlaps its reserved time (group sessions may).
ALTER TABLE bookings ADD COLUMN kind TEXT NOT NULL DEFAULT 'individual';
-- The bookings written before this migration: those of group sessions (one scan, once).
UPDATE bookings SET kind = 'group'
WHERE appointment_id IN (
    SELECT res_id FROM resources
    WHERE res_type = 'Appointment' AND deleted = false
      AND body LIKE '%extension-Appointment.subject%'
);
ALTER TABLE bookings DROP CONSTRAINT bookings_no_overlap;
ALTER TABLE bookings ADD CONSTRAINT bookings_no_overlap
    EXCLUDE USING gist (actor WITH =, int8range(start_ms, end_ms, '[)') WITH &&) WHERE (kind <> 'reserved');
ALTER TABLE bookings ADD CONSTRAINT bookings_reserved_for_groups
    EXCLUDE USING gist (actor WITH =, int8range(start_ms, end_ms, '[)') WITH &&, kind WITH <>)
    WHERE (kind IN ('individual', 'reserved'));
-- An actor's reserved time that ends after an instant: the lookup of an individual session's check.
CREATE INDEX bookings_reserved ON bookings (actor, end_ms) WHERE kind = 'reserved';
