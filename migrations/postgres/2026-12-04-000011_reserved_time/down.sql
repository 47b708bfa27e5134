DROP INDEX IF EXISTS bookings_reserved;
ALTER TABLE bookings DROP CONSTRAINT bookings_reserved_for_groups;
DELETE FROM bookings WHERE kind = 'reserved';
ALTER TABLE bookings DROP CONSTRAINT bookings_no_overlap;
ALTER TABLE bookings ADD CONSTRAINT bookings_no_overlap
    EXCLUDE USING gist (actor WITH =, int8range(start_ms, end_ms, '[)') WITH &&);
ALTER TABLE bookings DROP COLUMN kind;
