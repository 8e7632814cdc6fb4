//! The public counselor directory, served from its read model.

use super::ApiError;
use crate::projections::queries;
use crate::startup::AppState;
use actix_web::{HttpResponse, web};
use serde::Deserialize;
use serde_json::json;

/// Query string of `GET /counselors`.
#[derive(Debug, Deserialize)]
pub struct ListQuery {
    /// How many to return (1..=200, default 50).
    pub limit: Option<i64>,
}

/// `GET /counselors`: published counselors, most recently published first.
pub async fn list(
    state: web::Data<AppState>,
    q: web::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    let items = queries::counselors(&state.read, q.limit.unwrap_or(50))
        .await
        .map_err(ApiError::from)?;
    Ok(HttpResponse::Ok().json(json!({ "items": items })))
}
