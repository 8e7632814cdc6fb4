//! The unique-keyed table that maps a way of signing in (a local e-mail, or an external
//! provider + subject) to one user id.
//!
//! Rows are found by HMAC-SHA256 under a server secret, never by plaintext, so the table holds
//! no personal data and erasure only has to delete the user's rows. A row is *claimed* (with
//! the id the user will get) before the `Register` command and *confirmed* after it; the
//! primary key makes concurrent first sign-ins agree on one user, and a claim whose
//! registration failed is released so no half-registered user remains.

use super::AuthError;
use super::tokens::hex_lower;
use crate::privacy::{KekRing, WrapContext};
use crate::store::Database;
use chacha20poly1305::aead::OsRng;
use chacha20poly1305::aead::rand_core::RngCore;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use uuid::Uuid;
use zeroize::Zeroizing;

/// The name of the generated lookup secret in `auth_secrets`.
const LOOKUP_SECRET: &str = "identity_lookup";

/// One way of signing in.
#[derive(Debug, Clone, Copy)]
pub enum IdentityKey<'a> {
    /// A local account's e-mail (compared case-insensitively).
    Email(&'a str),
    /// An external provider's subject.
    External {
        /// The provider name (`google`, an OIDC issuer's configured name, ...).
        provider: &'a str,
        /// The subject at that provider.
        subject: &'a str,
    },
}

impl IdentityKey<'_> {
    /// The `kind` column value.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Email(_) => "email",
            Self::External { .. } => "external",
        }
    }
}

/// A row of the identity table.
#[derive(Clone, PartialEq, Eq)]
pub struct IdentityRow {
    /// The user this identity signs in as.
    pub user_id: Uuid,
    /// The argon2id PHC string, for local accounts.
    pub password_hash: Option<String>,
    /// When the row was claimed (microseconds since the epoch).
    pub created_at: i64,
    /// When the user stream was confirmed to exist; `None` while the claim is pending.
    pub registered_at: Option<i64>,
}

impl std::fmt::Debug for IdentityRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdentityRow")
            .field("user_id", &self.user_id)
            .field("registered_at", &self.registered_at)
            .finish_non_exhaustive()
    }
}

/// Access to the identity table.
#[derive(Clone)]
pub struct IdentityStore {
    db: Database,
    secret: Vec<u8>,
}

impl IdentityStore {
    /// An identity store keyed by `secret`: the configured one, or one generated on first run
    /// and kept in the database.
    pub async fn open(
        db: Database,
        configured: Option<&str>,
        kek: &KekRing,
    ) -> Result<Self, AuthError> {
        let secret = match configured {
            Some(s) if s.len() >= 32 => s.as_bytes().to_vec(),
            Some(_) => {
                return Err(AuthError::Key(
                    "NEULBI_AUTH_SECRET must be at least 32 bytes".into(),
                ));
            }
            None => stored_secret(&db, kek, LOOKUP_SECRET).await?.to_vec(),
        };
        Ok(Self { db, secret })
    }

    /// The lookup hash of an identity.
    pub fn lookup(&self, key: IdentityKey<'_>) -> String {
        let mut mac = match Hmac::<Sha256>::new_from_slice(&self.secret) {
            Ok(m) => m,
            // HMAC accepts keys of any length; this arm is unreachable in practice.
            Err(_) => return String::new(),
        };
        match key {
            IdentityKey::Email(email) => {
                mac.update(b"email\0");
                mac.update(email.trim().to_lowercase().as_bytes());
            }
            IdentityKey::External { provider, subject } => {
                mac.update(b"external\0");
                mac.update(provider.as_bytes());
                mac.update(b"\0");
                mac.update(subject.as_bytes());
            }
        }
        hex_lower(&mac.finalize().into_bytes())
    }

    /// The row for `lookup`, if any.
    pub async fn find(&self, lookup: &str) -> Result<Option<IdentityRow>, AuthError> {
        let row: Option<(String, Option<String>, i64, Option<i64>)> = on_db!(&self.db, p => sqlx::query_as(
            "SELECT user_id, password_hash, created_at, registered_at \
             FROM auth_identities WHERE lookup = $1")
            .bind(lookup).fetch_optional(p).await?);
        row.map(|(user, password_hash, created_at, registered_at)| {
            Ok(IdentityRow {
                user_id: Uuid::parse_str(&user)
                    .map_err(|_| AuthError::Key("corrupt identity row".into()))?,
                password_hash,
                created_at,
                registered_at,
            })
        })
        .transpose()
    }

    /// Claims `lookup` for `user_id`; false if another claim holds it.
    pub async fn claim(
        &self,
        lookup: &str,
        kind: &str,
        user_id: Uuid,
        password_hash: Option<&str>,
    ) -> Result<bool, AuthError> {
        let now = chrono::Utc::now().timestamp_micros();
        let done = on_db!(&self.db, p => sqlx::query(
            "INSERT INTO auth_identities (lookup, user_id, kind, password_hash, created_at) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING")
            .bind(lookup).bind(user_id.to_string()).bind(kind).bind(password_hash).bind(now)
            .execute(p).await?.rows_affected());
        Ok(done == 1)
    }

    /// Marks a claim as backed by a registered user.
    pub async fn confirm(&self, lookup: &str, user_id: Uuid) -> Result<(), AuthError> {
        let now = chrono::Utc::now().timestamp_micros();
        on_db!(&self.db, p => sqlx::query(
            "UPDATE auth_identities SET registered_at = $1 \
             WHERE lookup = $2 AND user_id = $3 AND registered_at IS NULL")
            .bind(now).bind(lookup).bind(user_id.to_string()).execute(p).await?.rows_affected());
        Ok(())
    }

    /// Drops a pending claim of `user_id` (its registration failed or was abandoned).
    pub async fn release(&self, lookup: &str, user_id: Uuid) -> Result<(), AuthError> {
        on_db!(&self.db, p => sqlx::query(
            "DELETE FROM auth_identities \
             WHERE lookup = $1 AND user_id = $2 AND registered_at IS NULL")
            .bind(lookup).bind(user_id.to_string()).execute(p).await?.rows_affected());
        Ok(())
    }

    /// How many identity rows name `user_id` (tests and audits).
    pub async fn count_for_user(&self, user_id: Uuid) -> Result<i64, AuthError> {
        Ok(on_db!(&self.db, p => sqlx::query_scalar(
            "SELECT COUNT(*) FROM auth_identities WHERE user_id = $1")
            .bind(user_id.to_string()).fetch_one(p).await?))
    }
}

/// Deletes every identity row of a user (erasure): after it, the e-mail or external account
/// can sign up again as a new person.
pub async fn forget_user_identities(db: &Database, user_id: Uuid) -> Result<(), sqlx::Error> {
    on_db!(db, p => sqlx::query("DELETE FROM auth_identities WHERE user_id = $1")
        .bind(user_id.to_string()).execute(p).await?.rows_affected());
    Ok(())
}

/// A 32-byte secret kept in `auth_secrets` under `name`, wrapped by the KEK and generated on
/// first use. Concurrent first uses agree on one value (the primary key keeps the first
/// insert).
pub async fn stored_secret(
    db: &Database,
    kek: &KekRing,
    name: &str,
) -> Result<Zeroizing<Vec<u8>>, AuthError> {
    let ctx = WrapContext::Secret {
        name: name.to_owned(),
    };
    let mut fresh = Zeroizing::new([0u8; 32]);
    OsRng.fill_bytes(&mut *fresh);
    let (kek_id, wrapped) = kek
        .wrap(&ctx, &*fresh)
        .await
        .map_err(|e| AuthError::Key(e.to_string()))?;
    let now = chrono::Utc::now().timestamp_micros();
    on_db!(db, p => sqlx::query(
        "INSERT INTO auth_secrets (name, value, wrapped, kek_id, created_at) \
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING")
        .bind(name).bind(Vec::<u8>::new()).bind(wrapped).bind(kek_id).bind(now)
        .execute(p).await?.rows_affected());
    let (value, wrapped, kek_id): (Vec<u8>, Option<Vec<u8>>, Option<String>) = on_db!(db, p => sqlx::query_as(
            "SELECT value, wrapped, kek_id FROM auth_secrets WHERE name = $1")
            .bind(name).fetch_one(p).await?);
    match (wrapped, kek_id) {
        (Some(wrapped), Some(kek_id)) => kek
            .unwrap(&kek_id, &ctx, &wrapped)
            .await
            .map_err(|e| AuthError::Key(e.to_string())),
        // Written by a version before envelope encryption, not migrated yet.
        _ if !value.is_empty() => Ok(Zeroizing::new(value)),
        _ => Err(AuthError::Key(format!("server secret {name} is empty"))),
    }
}
