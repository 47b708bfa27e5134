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

-- The lookup index, extended by the date, replaces the old one. The migration is one transaction,
-- and from its ALTER TABLE on it holds idx_reference locked: searches and writes that touch the
-- table wait until it commits (so no row can slip in between the fill above and what follows).
CREATE INDEX idx_reference_dated ON idx_reference (res_type, param, target_id, target_type, date_long, date_low);
DROP INDEX idx_reference_lookup;

-- While a rolling upgrade replaces them, replicas of the release before this one still write
-- reference rows without the date. The database fills it in for them, as the migration did above.
CREATE FUNCTION idx_reference_fill_date() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    SELECT MIN(CASE WHEN low <= high THEN low ELSE high END), MAX(CASE WHEN low <= high THEN high ELSE low END)
    INTO NEW.date_low, NEW.date_high FROM idx_date
    WHERE res_type = NEW.res_type AND res_id = NEW.res_id AND param = 'date';
    IF NEW.date_low IS NOT NULL THEN
        NEW.date_long := CASE WHEN NEW.date_low < -4611686018427387904 OR NEW.date_high > 4611686018427387903
                              THEN TRUE ELSE NEW.date_high - NEW.date_low >= 86400000 END;
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER idx_reference_fill_date BEFORE INSERT ON idx_reference FOR EACH ROW
WHEN (NEW.date_low IS NULL AND NEW.res_type IN ('Appointment', 'CareTeam', 'Consent', 'PractitionerRole'))
EXECUTE FUNCTION idx_reference_fill_date();
