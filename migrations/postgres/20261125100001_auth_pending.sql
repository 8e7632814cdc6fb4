-- External sign-ins between the redirect to the provider and its callback (src/auth/providers).
-- Keyed by SHA-256 of `state`; deleted when the callback uses it, so a replay fails. Rows live
-- ten minutes at most; the PKCE verifier and nonce are single-use secrets of one attempt.
CREATE TABLE IF NOT EXISTS auth_pending_logins (
    state_hash    TEXT    PRIMARY KEY,
    provider      TEXT    NOT NULL,
    pkce_verifier TEXT    NOT NULL,
    nonce         TEXT,
    return_to     TEXT    NOT NULL,
    expires_at    BIGINT NOT NULL
);
