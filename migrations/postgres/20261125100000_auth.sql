-- Sign-in state beside the log (src/auth). Nothing here is plaintext personal data: identities
-- are found by a keyed hash of the e-mail or provider+subject, tokens and codes by SHA-256.
-- Erasing a user deletes their identity rows and revokes their tokens.

-- Server secrets generated on the first run of the embedded default (the HMAC key of the
-- identity lookups). Deployments set them from the environment instead.
CREATE TABLE IF NOT EXISTS auth_secrets (
    name       TEXT    PRIMARY KEY,
    value      BYTEA NOT NULL,
    created_at BIGINT NOT NULL
);

-- Access-token signing keys (Ed25519, PKCS#8 DER). The highest generation signs; every key
-- not yet retired verifies, so tokens signed before a rotation stay valid until they expire.
CREATE TABLE IF NOT EXISTS auth_signing_keys (
    generation  BIGINT PRIMARY KEY,
    kid         TEXT    NOT NULL UNIQUE,
    private_der BYTEA NOT NULL,
    created_at  BIGINT NOT NULL,
    retired_at  BIGINT
);

-- One row per way of signing in. `lookup` is HMAC-SHA256(secret, kind || value), unique, and
-- written before the Register command, so concurrent first logins agree on one user id.
-- `registered_at` stays NULL until the user stream exists (a pending claim).
CREATE TABLE IF NOT EXISTS auth_identities (
    lookup        TEXT    PRIMARY KEY,
    user_id       TEXT    NOT NULL,
    kind          TEXT    NOT NULL,
    password_hash TEXT,
    created_at    BIGINT NOT NULL,
    registered_at BIGINT
);
CREATE INDEX IF NOT EXISTS auth_identities_user ON auth_identities (user_id);

-- Opaque refresh tokens, stored as SHA-256. A rotation marks the old row `rotated_at` and
-- inserts its successor in the same family; presenting a rotated token revokes the family.
CREATE TABLE IF NOT EXISTS auth_refresh_tokens (
    token_hash TEXT    PRIMARY KEY,
    family_id  TEXT    NOT NULL,
    subject    TEXT    NOT NULL,
    client_id  TEXT    NOT NULL,
    scope      TEXT    NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    rotated_at BIGINT,
    revoked_at BIGINT
);
CREATE INDEX IF NOT EXISTS auth_refresh_tokens_family ON auth_refresh_tokens (family_id);
CREATE INDEX IF NOT EXISTS auth_refresh_tokens_subject ON auth_refresh_tokens (subject);

-- One-time login codes handed to the web client after a sign-in, stored as SHA-256.
CREATE TABLE IF NOT EXISTS auth_login_codes (
    code_hash  TEXT    PRIMARY KEY,
    user_id    TEXT    NOT NULL,
    provider   TEXT    NOT NULL,
    expires_at BIGINT NOT NULL,
    used_at    BIGINT,
    family_id  TEXT
);
