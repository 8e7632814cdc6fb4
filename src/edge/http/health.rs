//! Liveness and readiness probes for orchestrators and load balancers, and the metrics
//! Prometheus scrapes.

use super::ApiError;
use crate::state::AppState;
use actix_web::{HttpResponse, web};
use serde_json::json;

/// 200 as soon as the process serves HTTP: "do not restart me".
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({ "status": "ok" }))
}

/// 200 once the event store answers and the read models have caught up with the log since
/// start: "send me traffic".
pub async fn readyz(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    state.store.ping().await.map_err(|e| {
        tracing::warn!(error = %e, "readiness check failed");
        ApiError::unavailable("the event store is not reachable")
    })?;
    if !state.projections.ready() {
        return Err(ApiError::unavailable(
            "the read models are still catching up",
        ));
    }
    Ok(HttpResponse::Ok().json(json!({ "status": "ready" })))
}

/// `GET /metrics`: every instrument of the node in the Prometheus text format.
pub async fn metrics() -> Result<HttpResponse, ApiError> {
    let body = crate::telemetry::metrics::render().map_err(|e| {
        tracing::warn!(error = %e, "encoding metrics failed");
        ApiError::unavailable("metrics are not available")
    })?;
    Ok(HttpResponse::Ok()
        .content_type(crate::telemetry::metrics::CONTENT_TYPE)
        .insert_header((actix_web::http::header::CACHE_CONTROL, "no-store"))
        .body(body))
}
