-- The time each active Appointment holds for each of its people and places: one row per
-- (appointment, actor). SQLite has one writer, so the overlap check made inside a write transaction
-- (after the write lock is taken) is the guard; PostgreSQL adds an exclusion constraint.
CREATE TABLE bookings (
    row_id         INTEGER PRIMARY KEY AUTOINCREMENT,
    appointment_id TEXT   NOT NULL,
    actor          TEXT   NOT NULL, -- Practitioner/x, Patient/x, Location/x, or an absolute URL
    start_ms       BIGINT NOT NULL,
    end_ms         BIGINT NOT NULL,
    CHECK (end_ms > start_ms)
);
CREATE INDEX bookings_actor ON bookings (actor, start_ms, end_ms);
CREATE INDEX bookings_appointment ON bookings (appointment_id);
