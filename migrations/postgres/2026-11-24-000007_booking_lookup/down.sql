DROP INDEX IF EXISTS bookings_actor;
