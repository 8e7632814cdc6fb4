//! The HTTP edge (actix-web): routes, the JSON error shape, and the request span.

pub mod auth;
pub mod calls;
pub mod client_ip;
pub mod directory;
pub mod error;
pub mod health;
pub mod images;
pub mod read_models;
pub mod rooms;
pub mod trace;
pub mod users;
pub mod web_client;

use actix_web::{HttpResponse, web};

pub use error::ApiError;

/// Registers every route of the HTTP API.
pub fn configure(cfg: &mut web::ServiceConfig) {
    // Malformed query strings and bodies get the JSON error shape too, and bodies are bounded.
    cfg.app_data(web::QueryConfig::default().error_handler(|err, _| {
        ApiError::new(
            actix_web::http::StatusCode::BAD_REQUEST,
            "invalid_query",
            err.to_string(),
        )
        .into()
    }))
    .app_data(
        web::JsonConfig::default()
            .limit(64 * 1024)
            .error_handler(|err, _| {
                ApiError::new(
                    actix_web::http::StatusCode::BAD_REQUEST,
                    "invalid_body",
                    err.to_string(),
                )
                .into()
            }),
    );
    cfg.route("/healthz", web::get().to(health::healthz))
        .route("/readyz", web::get().to(health::readyz))
        .route("/counselors", web::get().to(directory::list))
        .configure(web_client::configure)
        .configure(auth::configure)
        .configure(users::configure)
        .configure(images::configure)
        .configure(read_models::configure)
        .configure(rooms::configure)
        .configure(calls::configure);
}

/// Parses a UUID from a path or body field; anything else is a 400 with `code`, naming
/// `what` but never echoing the input.
pub fn uuid_field(value: &str, code: &'static str, what: &str) -> Result<uuid::Uuid, ApiError> {
    uuid::Uuid::parse_str(value).map_err(|_| {
        ApiError::new(
            actix_web::http::StatusCode::BAD_REQUEST,
            code,
            format!("{what} must be a UUID"),
        )
    })
}

/// The answer for every unknown route: the JSON error shape, not an empty 404.
pub async fn not_found() -> Result<HttpResponse, ApiError> {
    Err(ApiError::not_found("no such route"))
}
