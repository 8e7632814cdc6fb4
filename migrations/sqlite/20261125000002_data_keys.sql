-- Per-user data keys for crypto-shredding. Kept outside the event streams: erasing a user
-- deletes the key bytes (the row stays, so a destroyed key is never silently re-created).
CREATE TABLE IF NOT EXISTS data_keys (
    owner        TEXT    PRIMARY KEY,
    key_id       TEXT    NOT NULL,
    key          BLOB,             -- NULL once destroyed
    created_at   INTEGER NOT NULL, -- microseconds since the Unix epoch
    destroyed_at INTEGER
);
