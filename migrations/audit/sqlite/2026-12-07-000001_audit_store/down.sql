-- The trail is kept: an audit store is not rolled back.
SELECT 1;
