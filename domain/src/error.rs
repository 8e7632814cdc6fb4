//! The one error type of every decider, so the edge maps rejections to protocol errors in one place.

use thiserror::Error;

/// Why a command was rejected. Rejections are values, never panics: the edge turns each variant
/// into an HTTP status, a STOMP ERROR frame or a signaling error message.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DomainError {
    /// The aggregate the command addresses has not been created yet.
    #[error("{0} does not exist")]
    NotFound(&'static str),
    /// A creation command reached an aggregate that already exists.
    #[error("{0} already exists")]
    AlreadyExists(&'static str),
    /// The acting user may not do this (not a member, wrong role, not the owner...).
    #[error("forbidden: {0}")]
    Forbidden(&'static str),
    /// The aggregate is in a state where the command makes no sense (call ended, room closed...).
    #[error("conflict: {0}")]
    Conflict(&'static str),
    /// A command field failed validation.
    #[error("invalid {field}: {reason}")]
    Invalid {
        /// The offending field's name as the client knows it.
        field: &'static str,
        /// A human-readable reason, safe to show to the client.
        reason: String,
    },
}

impl DomainError {
    /// Shorthand for [`DomainError::Invalid`], used by validation code.
    pub fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        Self::Invalid {
            field,
            reason: reason.into(),
        }
    }

    /// A stable machine-readable code for the error, used as `error.code` in API responses.
    pub fn code(&self) -> &'static str {
        match self {
            Self::NotFound(_) => "not_found",
            Self::AlreadyExists(_) => "already_exists",
            Self::Forbidden(_) => "forbidden",
            Self::Conflict(_) => "conflict",
            Self::Invalid { .. } => "invalid",
        }
    }
}
