//! What can go wrong while signing in or checking a token.

use crate::actors::ActorError;
use crate::store::StoreError;
use thiserror::Error;

/// Why a sign-in, token grant or token check failed. The HTTP edge maps each variant to one
/// status and error code; the messages are safe to show (no token, code or personal data).
#[derive(Debug, Error)]
pub enum AuthError {
    /// No usable `Authorization: Bearer` credential was presented.
    #[error("missing bearer token")]
    MissingToken,
    /// The access token is malformed, forged, expired, or meant for someone else.
    #[error("invalid access token: {0}")]
    InvalidToken(&'static str),
    /// The token was valid, but its person's access was revoked after it was issued (role
    /// change, sign-out everywhere, closed account): sign in again.
    #[error("access token revoked; sign in again")]
    TokenRevoked,
    /// The token is valid but does not allow this (a service token on a user route).
    #[error("forbidden: {0}")]
    Forbidden(&'static str),
    /// A refresh token, login code or client credential was not accepted.
    #[error("{0}")]
    InvalidGrant(&'static str),
    /// A rotated refresh token was presented again; its whole family is now revoked.
    #[error("refresh token reuse detected; the session was revoked")]
    TokenReuse,
    /// The client could not be authenticated (`client_credentials`).
    #[error("invalid client credentials")]
    InvalidClient,
    /// The grant type is not one this server implements.
    #[error("unsupported grant_type")]
    UnsupportedGrantType,
    /// The request is missing a field or holds a malformed one.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// E-mail or password wrong (deliberately not saying which).
    #[error("invalid e-mail or password")]
    BadCredentials,
    /// Too many failed attempts; retry after this many seconds.
    #[error("too many failed sign-in attempts; retry in {0} s")]
    RateLimited(u64),
    /// A local account with this e-mail exists already.
    #[error("an account with this e-mail already exists")]
    EmailTaken,
    /// Another sign-in for the same identity is still registering the user.
    #[error("a sign-in for this identity is in progress; retry shortly")]
    RegistrationInProgress,
    /// The account exists but is closed.
    #[error("this account is closed")]
    AccountClosed,
    /// A key could not be parsed or generated (configuration or corrupted row).
    #[error("signing key error: {0}")]
    Key(String),
    /// The command to the user aggregate failed.
    #[error(transparent)]
    Actor(#[from] ActorError),
    /// The database beside the log failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sqlx::Error> for AuthError {
    fn from(e: sqlx::Error) -> Self {
        Self::Store(StoreError::from(e))
    }
}
