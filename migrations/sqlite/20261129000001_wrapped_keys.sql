-- Envelope encryption (src/privacy/kek.rs): data keys, signing keys and server secrets are
-- stored wrapped by a key-encryption key (KEK) that never sits in the database. `kek_id` names
-- the KEK (`local:…` or `kms:…`). The start-up migration (src/privacy/rewrap.rs) wraps the
-- plaintext values older versions wrote and empties their old columns.
ALTER TABLE data_keys ADD COLUMN wrapped BLOB;
ALTER TABLE data_keys ADD COLUMN kek_id TEXT;
ALTER TABLE auth_signing_keys ADD COLUMN wrapped BLOB;
ALTER TABLE auth_signing_keys ADD COLUMN kek_id TEXT;
ALTER TABLE auth_secrets ADD COLUMN wrapped BLOB;
ALTER TABLE auth_secrets ADD COLUMN kek_id TEXT;
