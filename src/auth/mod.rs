//! Sign-in and tokens: local accounts (argon2id), access JWTs (EdDSA, `kid`, JWKS, rotation),
//! opaque rotating refresh tokens with reuse detection, one-time login codes, service clients.
//!
//! Nothing here writes a user stream directly: registration and sign-ins are commands to the
//! users registry (`Registered`, `LoggedIn`). The tables beside the log hold only hashes
//! (tokens, codes, keyed identity lookups), so erasure deletes rows and leaves no plaintext.

/// Runs `$body` with `$pool` bound to whichever sqlx pool the database has. The SQL is shared:
/// both backends accept `$n` placeholders and `ON CONFLICT`/`RETURNING`.
macro_rules! on_db {
    ($db:expr, $pool:ident => $body:expr) => {
        match $db {
            $crate::store::Database::Sqlite($pool) => $body,
            $crate::store::Database::Postgres($pool) => $body,
        }
    };
}
pub(crate) use on_db;

pub mod epochs;
pub mod error;
pub mod extractor;
pub mod identities;
pub mod jwt;
pub mod keys;
pub mod password;
pub mod providers;
pub mod rate_limit;
pub mod service;
pub mod settings;
pub mod tokens;

pub use error::AuthError;
pub use extractor::{AuthUser, Principal};
pub use service::{AuthService, ClientInfo, SecurityRecord, TokenResponse};
pub use settings::AuthSettings;

/// Removes what sign-in keeps about a user (identity rows, refresh tokens, login codes); part
/// of erasure.
pub async fn forget_user(
    db: &crate::store::Database,
    user: uuid::Uuid,
) -> Result<(), crate::store::StoreError> {
    identities::forget_user_identities(db, user).await?;
    tokens::forget_user_tokens(db, user).await?;
    Ok(())
}
