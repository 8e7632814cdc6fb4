//! The one error shape of the HTTP API: `{ "error": { "code", "message" } }` with the right
//! status, converted once from the typed errors of the layers below.

use crate::actors::ActorError;
use crate::store::StoreError;
use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use neulbi_domain::DomainError;
use serde_json::json;
use std::fmt;

/// An error as the HTTP client sees it.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    /// An error with an explicit status, code and client-safe message.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    /// 404 with code `not_found`.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 503 with code `unavailable`.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }

    /// The machine-readable code.
    pub fn code(&self) -> &'static str {
        self.code
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}): {}", self.status, self.code, self.message)
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        HttpResponse::build(self.status).json(json!({
            "error": { "code": self.code, "message": self.message }
        }))
    }
}

impl From<DomainError> for ApiError {
    fn from(e: DomainError) -> Self {
        let status = match e {
            DomainError::NotFound(_) => StatusCode::NOT_FOUND,
            DomainError::AlreadyExists(_) | DomainError::Conflict(_) => StatusCode::CONFLICT,
            DomainError::Forbidden(_) => StatusCode::FORBIDDEN,
            DomainError::Invalid { .. } => StatusCode::UNPROCESSABLE_ENTITY,
        };
        Self::new(status, e.code(), e.to_string())
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::WrongExpectedVersion { .. } => {
                Self::new(StatusCode::CONFLICT, "conflict", e.to_string())
            }
            StoreError::EventTooLarge { .. } => {
                Self::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", e.to_string())
            }
            StoreError::InvalidAppend(_) | StoreError::DuplicateEventId { .. } => {
                Self::new(StatusCode::BAD_REQUEST, "invalid", e.to_string())
            }
            other => {
                // Driver details stay in the log; the client learns only that it may retry.
                tracing::error!(error = %other, "event store failure");
                Self::unavailable("the event store is unavailable; retry later")
            }
        }
    }
}

impl From<crate::projections::ProjectionError> for ApiError {
    fn from(e: crate::projections::ProjectionError) -> Self {
        use crate::projections::ProjectionError;
        match e {
            ProjectionError::InvalidCursor(_) => {
                Self::new(StatusCode::BAD_REQUEST, "invalid_cursor", e.to_string())
            }
            ProjectionError::Store(s) => s.into(),
            other => {
                tracing::error!(error = %other, "read-model query failed");
                Self::unavailable("the read models are unavailable; retry later")
            }
        }
    }
}

impl From<ActorError> for ApiError {
    fn from(e: ActorError) -> Self {
        match e {
            ActorError::Domain(d) => d.into(),
            ActorError::Store(s) => s.into(),
            ActorError::Busy => Self::new(StatusCode::TOO_MANY_REQUESTS, "busy", e.to_string()),
            ActorError::Conflict(_) => Self::new(StatusCode::CONFLICT, "conflict", e.to_string()),
            other => {
                tracing::error!(error = %other, "command failed");
                Self::unavailable("the service could not process the request; retry later")
            }
        }
    }
}
