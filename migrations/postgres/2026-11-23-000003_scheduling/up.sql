-- The time each active Appointment holds for each of its people and places: one row per
-- (appointment, actor). The exclusion constraint refuses two overlapping rows of one actor, whatever
-- the number of replicas writing at once (half-open ranges: back-to-back sessions do not clash).
-- btree_gist gives text equality in a GiST index; it lives in public so that no schema drop removes it.
CREATE EXTENSION IF NOT EXISTS btree_gist WITH SCHEMA public;
CREATE TABLE bookings (
    row_id         BIGSERIAL PRIMARY KEY,
    appointment_id TEXT   NOT NULL,
    actor          TEXT   NOT NULL, -- Practitioner/x, Patient/x, Location/x, or an absolute URL
    start_ms       BIGINT NOT NULL,
    end_ms         BIGINT NOT NULL,
    CHECK (end_ms > start_ms),
    CONSTRAINT bookings_no_overlap EXCLUDE USING gist (actor WITH =, int8range(start_ms, end_ms, '[)') WITH &&)
);
CREATE INDEX bookings_appointment ON bookings (appointment_id);
