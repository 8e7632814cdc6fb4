-- Per-user data keys for crypto-shredding, in their own schema so that roles serving read
-- models or analytics can be denied access to it. Erasing a user deletes the key bytes (the
-- row stays, so a destroyed key is never silently re-created).
CREATE SCHEMA IF NOT EXISTS neulbi_keys;
CREATE TABLE IF NOT EXISTS neulbi_keys.data_keys (
    owner        UUID    PRIMARY KEY,
    key_id       UUID    NOT NULL,
    key          BYTEA,            -- NULL once destroyed
    created_at   BIGINT  NOT NULL, -- microseconds since the Unix epoch
    destroyed_at BIGINT
);
REVOKE ALL ON SCHEMA neulbi_keys FROM PUBLIC;
REVOKE ALL ON neulbi_keys.data_keys FROM PUBLIC;
