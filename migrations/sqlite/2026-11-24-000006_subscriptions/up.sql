-- Active rest-hook Subscriptions, by the type their criteria search: every write of a resource
-- looks up the subscriptions on its type here (an index scan that finds nothing when there are none).
CREATE TABLE subscription_index (
    sub_id   TEXT    PRIMARY KEY,
    res_type TEXT    NOT NULL,
    criteria TEXT    NOT NULL, -- the query after '?'
    endpoint TEXT    NOT NULL,
    payload  TEXT,             -- MIME type; NULL: an empty POST
    headers  TEXT    NOT NULL, -- JSON array of "Name: value"
    active   BOOLEAN NOT NULL,
    end_ms   BIGINT            -- Subscription.end
);
CREATE INDEX subscription_index_type ON subscription_index (res_type, active);

-- Notifications to send, written in the same transaction as the change that matched (an outbox):
-- none is lost to a restart, none is sent for a write that rolled back.
CREATE TABLE subscription_deliveries (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    sub_id       TEXT    NOT NULL,
    res_type     TEXT    NOT NULL,
    res_id       TEXT    NOT NULL,
    version_id   BIGINT  NOT NULL,
    state        TEXT    NOT NULL, -- pending, sending, failed
    attempts     INTEGER NOT NULL,
    next_attempt BIGINT  NOT NULL, -- ms since the epoch
    lease_until  BIGINT,           -- while sending: when another worker may take it over
    last_error   TEXT,
    created      BIGINT  NOT NULL
);
CREATE INDEX subscription_deliveries_due ON subscription_deliveries (state, next_attempt);
CREATE INDEX subscription_deliveries_sub ON subscription_deliveries (sub_id);
