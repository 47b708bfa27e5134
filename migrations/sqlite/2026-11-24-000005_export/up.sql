-- Bulk Data export jobs ($export): the job's state lives here, not in a process, so any replica
-- answers its status, a restart loses nothing, and a job whose runner died (no heartbeat) is taken
-- up again by another.
CREATE TABLE export_jobs (
    id               TEXT   PRIMARY KEY,
    state            TEXT   NOT NULL, -- queued, running, completed, failed, cancelled
    level            TEXT   NOT NULL, -- system, patient, group
    group_id         TEXT,
    types            TEXT   NOT NULL, -- the resource types, comma-separated
    since            BIGINT,          -- _since, ms since the epoch
    request_url      TEXT   NOT NULL, -- the kick-off request, for the manifest
    requester        TEXT   NOT NULL, -- issuer|subject of the token that asked: only it may read the job
    created          BIGINT NOT NULL,
    transaction_time BIGINT,          -- the watermark the export was taken at
    progress         TEXT,
    owner            TEXT,            -- the runner that holds the job
    heartbeat        BIGINT,          -- its last sign of life
    error            TEXT,
    expires          BIGINT           -- when a finished job and its files are removed
);
CREATE INDEX export_jobs_state ON export_jobs (state, heartbeat);

-- The NDJSON output, one row per file (at most a fixed number of resources each).
CREATE TABLE export_files (
    job_id   TEXT   NOT NULL,
    seq      BIGINT NOT NULL,
    res_type TEXT   NOT NULL,
    count    BIGINT NOT NULL,
    content  TEXT   NOT NULL,
    PRIMARY KEY (job_id, seq)
);
