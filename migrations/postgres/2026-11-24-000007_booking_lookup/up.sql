-- The double-booking check looks up, per actor, the booking that starts last before a new one
-- ends (an actor's bookings never overlap, so it is the only one that can clash): a btree probe,
-- where the exclusion constraint's GiST index would visit every booking of the actor.
-- Not CONCURRENTLY: two of those in one database can deadlock on each other's transactions, and
-- the build is short (bookings are narrow rows); appointment writes wait for it meanwhile.
CREATE INDEX IF NOT EXISTS bookings_actor ON bookings (actor, start_ms, end_ms);
