-- The append-only event log. `position` is global and gap-free in commit order: appends take a
-- transaction-scoped advisory lock, so transactions commit in position order and a reader never
-- sees position n+1 before n. `version` is per stream, from 0.
CREATE TABLE IF NOT EXISTS events (
    position       BIGINT  PRIMARY KEY,
    event_id       UUID    NOT NULL UNIQUE,
    stream         TEXT    NOT NULL,
    version        BIGINT  NOT NULL,
    event_type     TEXT    NOT NULL,
    schema_version INTEGER NOT NULL,
    data           TEXT    NOT NULL,
    metadata       TEXT    NOT NULL,
    recorded_at    BIGINT  NOT NULL, -- microseconds since the Unix epoch
    UNIQUE (stream, version)
);
