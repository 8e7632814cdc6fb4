-- Envelope encryption (src/privacy/kek.rs): data keys, signing keys and server secrets are
-- stored wrapped by a key-encryption key (KEK) that never sits in the database. `kek_id` names
-- the KEK (`local:…` or `kms:…`). The start-up migration (src/privacy/rewrap.rs) wraps the
-- plaintext values older versions wrote and empties their old columns.
ALTER TABLE neulbi_keys.data_keys ADD COLUMN IF NOT EXISTS wrapped BYTEA;
ALTER TABLE neulbi_keys.data_keys ADD COLUMN IF NOT EXISTS kek_id TEXT;
ALTER TABLE auth_signing_keys ADD COLUMN IF NOT EXISTS wrapped BYTEA;
ALTER TABLE auth_signing_keys ADD COLUMN IF NOT EXISTS kek_id TEXT;
ALTER TABLE auth_secrets ADD COLUMN IF NOT EXISTS wrapped BYTEA;
ALTER TABLE auth_secrets ADD COLUMN IF NOT EXISTS kek_id TEXT;
