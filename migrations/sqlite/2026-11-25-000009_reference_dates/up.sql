-- A reference row carries the date of the resource that makes it, when its type has one single-valued
-- date that places it in time (resources::TIMELINES: Appointment.start, CareTeam.period,
-- Consent.dateTime, PractitionerRole.period). A search by reference and date, such as a therapist's
-- appointments in a week, is then one range of the lookup index (target, then date) rather than a
-- probe of idx_date for every appointment the therapist ever had. date_long marks a range of a day
-- or more, or an open one, which a search cannot bound by its start: those are read by a second range.
ALTER TABLE idx_reference ADD COLUMN date_low BIGINT;
ALTER TABLE idx_reference ADD COLUMN date_high BIGINT;
ALTER TABLE idx_reference ADD COLUMN date_long BOOLEAN;

-- Open ends are i64::MIN and i64::MAX: CASE tests them before subtracting, so nothing overflows.
UPDATE idx_reference SET
    date_low = d.low,
    date_high = d.high,
    date_long = CASE WHEN d.low < -4611686018427387904 OR d.high > 4611686018427387903 THEN TRUE
                     ELSE d.high - d.low >= 86400000 END
-- Both bounds of each row, so that a period that ends before it starts gives an ordered hull (as
-- resources::index::timeline does).
FROM (SELECT res_type, res_id,
             MIN(CASE WHEN low <= high THEN low ELSE high END) AS low,
             MAX(CASE WHEN low <= high THEN high ELSE low END) AS high
      FROM idx_date
      WHERE param = 'date' AND res_type IN ('Appointment', 'CareTeam', 'Consent', 'PractitionerRole')
      GROUP BY res_type, res_id) d
WHERE idx_reference.res_type = d.res_type AND idx_reference.res_id = d.res_id;

-- The lookup index, extended by the date, replaces the old one. (The server migrates before it
-- serves, in one transaction.)
CREATE INDEX idx_reference_dated ON idx_reference (res_type, param, target_id, target_type, date_long, date_low);
DROP INDEX idx_reference_lookup;
-- (PostgreSQL also has a trigger that fills the date for replicas of the previous release during a
-- rolling upgrade. A SQLite file has one server, so nothing older writes to it after this.)
