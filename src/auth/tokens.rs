//! Opaque refresh tokens and one-time login codes, stored only as SHA-256 hashes.
//!
//! A refresh token belongs to a *family* (one sign-in session). Using it marks it rotated and
//! issues its successor in the same family; presenting a rotated token again means it was
//! copied, so the whole family is revoked (RFC 6819 §5.2.2.3, OAuth 2.0 Security BCP §4.14).
//! Every state change is one conditional `UPDATE`, so two concurrent uses cannot both win.

use super::AuthError;
use crate::store::Database;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chacha20poly1305::aead::OsRng;
use chacha20poly1305::aead::rand_core::RngCore;
use sha2::{Digest, Sha256};
use uuid::Uuid;

/// A new random secret: 256 bits, base64url, with a prefix naming its kind (so a leaked one
/// is recognisable by secret scanners).
pub fn random_secret(prefix: &str) -> String {
    let mut bytes = [0u8; 32];
    OsRng.fill_bytes(&mut bytes);
    format!("{prefix}{}", URL_SAFE_NO_PAD.encode(bytes))
}

/// The stored form of a token or code.
pub fn hash_secret(secret: &str) -> String {
    hex_lower(&Sha256::digest(secret.as_bytes()))
}

pub(crate) fn hex_lower(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn now_micros() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

fn secs_to_micros(secs: u64) -> i64 {
    i64::try_from(secs)
        .unwrap_or(i64::MAX / 1_000_000)
        .saturating_mul(1_000_000)
}

/// What a refresh token stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The user id or `client:{id}`.
    pub subject: String,
    /// The client it was issued to.
    pub client_id: String,
    /// The granted scopes.
    pub scope: String,
    /// The session (token family).
    pub family_id: String,
}

/// A freshly issued refresh token (the only time its plaintext exists on the server).
#[derive(Debug)]
pub struct IssuedRefresh {
    /// The token to hand to the client.
    pub token: String,
    /// The grant it stands for.
    pub grant: Grant,
    /// On a rotation, when the token it replaces was issued (microseconds since the epoch):
    /// a session older than the person's last "sign out everywhere" must not go on.
    pub predecessor_created_at: Option<i64>,
}

/// Refresh tokens and login codes in the database beside the log.
#[derive(Clone)]
pub struct TokenStore {
    db: Database,
    refresh_ttl_secs: u64,
    code_ttl_secs: u64,
}

impl TokenStore {
    /// A store over `db` with the given lifetimes.
    pub fn new(db: Database, refresh_ttl_secs: u64, code_ttl_secs: u64) -> Self {
        Self {
            db,
            refresh_ttl_secs,
            code_ttl_secs,
        }
    }

    /// Issues a refresh token for `subject`, starting a new family unless one is given.
    pub async fn issue_refresh(
        &self,
        subject: &str,
        client_id: &str,
        scope: &str,
        family_id: Option<&str>,
    ) -> Result<IssuedRefresh, AuthError> {
        let token = random_secret("nrt_");
        let family_id = family_id.map_or_else(|| Uuid::now_v7().to_string(), str::to_owned);
        let now = now_micros();
        let expires = now.saturating_add(secs_to_micros(self.refresh_ttl_secs));
        on_db!(&self.db, p => sqlx::query(
            "INSERT INTO auth_refresh_tokens \
             (token_hash, family_id, subject, client_id, scope, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)")
            .bind(hash_secret(&token)).bind(&family_id).bind(subject).bind(client_id)
            .bind(scope).bind(now).bind(expires).execute(p).await?.rows_affected());
        Ok(IssuedRefresh {
            token,
            predecessor_created_at: None,
            grant: Grant {
                subject: subject.to_owned(),
                client_id: client_id.to_owned(),
                scope: scope.to_owned(),
                family_id,
            },
        })
    }

    /// Uses a refresh token: marks it rotated and issues its successor. A rotated token
    /// presented again revokes its family and fails with [`AuthError::TokenReuse`].
    pub async fn rotate(&self, token: &str) -> Result<IssuedRefresh, AuthError> {
        let hash = hash_secret(token);
        let now = now_micros();
        let claimed: Option<(String, String, String, String, i64)> = on_db!(&self.db, p => sqlx::query_as(
            "UPDATE auth_refresh_tokens SET rotated_at = $1 \
             WHERE token_hash = $2 AND rotated_at IS NULL AND revoked_at IS NULL \
               AND expires_at > $1 \
             RETURNING subject, client_id, scope, family_id, created_at")
            .bind(now).bind(&hash).fetch_optional(p).await?);
        if let Some((subject, client_id, scope, family_id, created_at)) = claimed {
            let mut issued = self
                .issue_refresh(&subject, &client_id, &scope, Some(&family_id))
                .await?;
            issued.predecessor_created_at = Some(created_at);
            return Ok(issued);
        }
        let known: Option<(String, Option<i64>)> = on_db!(&self.db, p => sqlx::query_as(
            "SELECT family_id, rotated_at FROM auth_refresh_tokens WHERE token_hash = $1")
            .bind(&hash).fetch_optional(p).await?);
        match known {
            Some((family_id, Some(_))) => {
                self.revoke_family(&family_id).await?;
                tracing::warn!(family_id = %family_id, "refresh token reuse; family revoked");
                Err(AuthError::TokenReuse)
            }
            Some(_) => Err(AuthError::InvalidGrant("refresh token expired or revoked")),
            None => Err(AuthError::InvalidGrant("unknown refresh token")),
        }
    }

    /// Whose token this is (any state), for recording a reuse.
    pub async fn subject_of(&self, token: &str) -> Result<Option<String>, AuthError> {
        let hash = hash_secret(token);
        Ok(on_db!(&self.db, p => sqlx::query_scalar(
            "SELECT subject FROM auth_refresh_tokens WHERE token_hash = $1")
            .bind(&hash).fetch_optional(p).await?))
    }

    /// Revokes every token of a family (logout, reuse detection).
    pub async fn revoke_family(&self, family_id: &str) -> Result<(), AuthError> {
        let now = now_micros();
        on_db!(&self.db, p => sqlx::query(
            "UPDATE auth_refresh_tokens SET revoked_at = $1 \
             WHERE family_id = $2 AND revoked_at IS NULL")
            .bind(now).bind(family_id).execute(p).await?.rows_affected());
        Ok(())
    }

    /// Revokes every family of `subject` ("sign out everywhere").
    pub async fn revoke_subject(&self, subject: &str) -> Result<(), AuthError> {
        let now = now_micros();
        on_db!(&self.db, p => sqlx::query(
            "UPDATE auth_refresh_tokens SET revoked_at = $1 \
             WHERE subject = $2 AND revoked_at IS NULL")
            .bind(now).bind(subject).execute(p).await?.rows_affected());
        Ok(())
    }

    /// Expires the unused login codes of `user_id` ("sign out everywhere"): a code from a
    /// sign-in before it must not start a session after it.
    pub async fn expire_login_codes(&self, user_id: Uuid) -> Result<(), AuthError> {
        let now = now_micros();
        on_db!(&self.db, p => sqlx::query(
            "UPDATE auth_login_codes SET expires_at = $1 \
             WHERE user_id = $2 AND used_at IS NULL AND expires_at > $1")
            .bind(now).bind(user_id.to_string()).execute(p).await?.rows_affected());
        Ok(())
    }

    /// Revokes the family of `token`, if it is known (logout). Unknown tokens are ignored,
    /// so logout is idempotent and reveals nothing.
    pub async fn revoke_by_token(&self, token: &str) -> Result<(), AuthError> {
        let family: Option<String> = on_db!(&self.db, p => sqlx::query_scalar(
            "SELECT family_id FROM auth_refresh_tokens WHERE token_hash = $1")
            .bind(hash_secret(token)).fetch_optional(p).await?);
        if let Some(family) = family {
            self.revoke_family(&family).await?;
        }
        Ok(())
    }

    /// Whether a family still has a live token (used by tests and audits).
    pub async fn family_is_live(&self, family_id: &str) -> Result<bool, AuthError> {
        let n: i64 = on_db!(&self.db, p => sqlx::query_scalar(
            "SELECT COUNT(*) FROM auth_refresh_tokens \
             WHERE family_id = $1 AND revoked_at IS NULL AND rotated_at IS NULL")
            .bind(family_id).fetch_one(p).await?);
        Ok(n > 0)
    }

    /// Creates a one-time login code for `user_id`, signed in through `provider`.
    pub async fn create_login_code(
        &self,
        user_id: Uuid,
        provider: &str,
    ) -> Result<String, AuthError> {
        let code = random_secret("nlc_");
        let expires = now_micros().saturating_add(secs_to_micros(self.code_ttl_secs));
        on_db!(&self.db, p => sqlx::query(
            "INSERT INTO auth_login_codes (code_hash, user_id, provider, expires_at) \
             VALUES ($1, $2, $3, $4)")
            .bind(hash_secret(&code)).bind(user_id.to_string()).bind(provider)
            .bind(expires).execute(p).await?.rows_affected());
        Ok(code)
    }

    /// Redeems a login code once: returns its user and provider. A replayed code fails and
    /// revokes the session issued for it (the code may have been stolen).
    pub async fn redeem_login_code(&self, code: &str) -> Result<(Uuid, String), AuthError> {
        let hash = hash_secret(code);
        let now = now_micros();
        let row: Option<(String, String)> = on_db!(&self.db, p => sqlx::query_as(
            "UPDATE auth_login_codes SET used_at = $1 \
             WHERE code_hash = $2 AND used_at IS NULL AND expires_at > $1 \
             RETURNING user_id, provider")
            .bind(now).bind(&hash).fetch_optional(p).await?);
        if let Some((user, provider)) = row {
            let user = Uuid::parse_str(&user)
                .map_err(|_| AuthError::InvalidGrant("corrupt login code"))?;
            return Ok((user, provider));
        }
        let used: Option<(Option<i64>, Option<String>)> = on_db!(&self.db, p => sqlx::query_as(
            "SELECT used_at, family_id FROM auth_login_codes WHERE code_hash = $1")
            .bind(&hash).fetch_optional(p).await?);
        match used {
            Some((Some(_), family)) => {
                if let Some(family) = family {
                    self.revoke_family(&family).await?;
                }
                tracing::warn!("login code replayed; its session was revoked");
                Err(AuthError::InvalidGrant("login code already used"))
            }
            Some(_) => Err(AuthError::InvalidGrant("login code expired")),
            None => Err(AuthError::InvalidGrant("unknown login code")),
        }
    }

    /// Remembers which session a login code started, so a replay can revoke it.
    pub async fn bind_code_family(&self, code: &str, family_id: &str) -> Result<(), AuthError> {
        on_db!(&self.db, p => sqlx::query(
            "UPDATE auth_login_codes SET family_id = $1 WHERE code_hash = $2")
            .bind(family_id).bind(hash_secret(code)).execute(p).await?.rows_affected());
        Ok(())
    }
}

/// Deletes every refresh token and login code of a user (erasure): the rows name the user id,
/// and a deleted token can no longer be refreshed.
pub async fn forget_user_tokens(db: &Database, user_id: Uuid) -> Result<(), sqlx::Error> {
    let id = user_id.to_string();
    on_db!(db, p => {
        sqlx::query("DELETE FROM auth_refresh_tokens WHERE subject = $1")
            .bind(&id).execute(p).await?;
        sqlx::query("DELETE FROM auth_login_codes WHERE user_id = $1")
            .bind(&id).execute(p).await?;
    });
    Ok(())
}
