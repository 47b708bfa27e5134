-- Time set aside for group sessions is held in the bookings table as rows of kind 'reserved',
-- beside the bookings of Appointments ('individual', 'group'). SQLite has one writer: the checks
-- made inside a write transaction are the guard (PostgreSQL adds exclusion constraints).
ALTER TABLE bookings ADD COLUMN kind TEXT NOT NULL DEFAULT 'individual';
UPDATE bookings SET kind = 'group'
WHERE appointment_id IN (
    SELECT res_id FROM resources
    WHERE res_type = 'Appointment' AND deleted = 0
      AND body LIKE '%extension-Appointment.subject%'
);
CREATE INDEX bookings_reserved ON bookings (actor, end_ms) WHERE kind = 'reserved';
