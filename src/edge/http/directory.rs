//! The public counselor directory, served from its read model.

use super::ApiError;
use crate::projections::queries;
use crate::state::AppState;
use actix_web::{HttpResponse, web};
use serde::Deserialize;
use serde_json::json;

/// Query string of `GET /counselors`.
#[derive(Debug, Deserialize)]
pub struct ListQuery {
    /// How many to return (1..=200, default 50).
    pub limit: Option<i64>,
    /// Words that must all appear in the name, headline or bio (case-insensitive).
    pub q: Option<String>,
}

/// Longest search accepted, in characters.
const MAX_QUERY_CHARS: usize = 100;

/// `GET /counselors[?q=words]`: published counselors, most recently published first.
pub async fn list(
    state: web::Data<AppState>,
    images: web::Data<crate::blob::Images>,
    q: web::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    let search = q.q.as_deref().map(str::trim).filter(|s| !s.is_empty());
    if search.is_some_and(|s| s.chars().count() > MAX_QUERY_CHARS) {
        return Err(ApiError::new(
            actix_web::http::StatusCode::BAD_REQUEST,
            "invalid_query",
            format!("a search is at most {MAX_QUERY_CHARS} characters"),
        ));
    }
    let mut items = queries::counselors(&state.read, q.limit.unwrap_or(50), search)
        .await
        .map_err(ApiError::from)?;
    for c in &mut items {
        if let Some(key) = &c.thumbnail_key {
            c.photo_url = images.thumbnail_url(key).await;
        }
    }
    Ok(HttpResponse::Ok().json(json!({ "items": items })))
}
