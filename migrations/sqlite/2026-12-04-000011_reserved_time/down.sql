DROP INDEX IF EXISTS bookings_reserved;
DELETE FROM bookings WHERE kind = 'reserved';
ALTER TABLE bookings DROP COLUMN kind;
