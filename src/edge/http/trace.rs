//! One `tracing` span and one metrics sample per HTTP request. Only method, route path and
//! status are recorded: query strings are left out because they are where tokens and codes
//! leak, and metrics carry the route's pattern, never the raw path (ids in paths would make
//! a series per room and user).

use crate::telemetry::metrics::{label, metrics};
use actix_web::Error;
use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use opentelemetry::KeyValue;
use tracing::Instrument;

/// Wraps every request in a `request` span and logs its outcome.
pub async fn request_span(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, Error> {
    // A SockJS session id works like a bearer secret (whoever has it can poll or send in
    // the session): those routes are logged by their pattern.
    let pattern = req.match_pattern();
    let path = match &pattern {
        Some(pattern) if pattern.ends_with("/{session}/{transport}") => pattern.clone(),
        _ => req.path().to_owned(),
    };
    let route = pattern.unwrap_or_else(|| "unmatched".to_owned());
    let method = method_label(req.method());
    let started = std::time::Instant::now();
    let span = tracing::info_span!(
        "request",
        method = %req.method(),
        path = %path,
        status = tracing::field::Empty,
    );
    // A caller's (or proxy's) W3C trace context is continued when spans are exported.
    crate::telemetry::continue_trace(
        &span,
        req.headers()
            .get("traceparent")
            .and_then(|v| v.to_str().ok()),
    );
    let res = next.call(req).instrument(span.clone()).await;
    let status = match &res {
        Ok(r) => r.status().as_u16(),
        Err(e) => e.as_response_error().status_code().as_u16(),
    };
    let m = metrics();
    m.http_duration.record(
        started.elapsed().as_secs_f64(),
        &[
            KeyValue::new("route", route.clone()),
            label("method", method),
        ],
    );
    m.http_requests.add(
        1,
        &[
            KeyValue::new("route", route),
            label("method", method),
            KeyValue::new("status", i64::from(status)),
        ],
    );
    match &res {
        Ok(r) => {
            span.record("status", r.status().as_u16());
            tracing::debug!(parent: &span, status = r.status().as_u16(), "request finished");
        }
        Err(e) => tracing::warn!(parent: &span, error = %e, "request failed"),
    }
    res
}

/// The request method as a bounded label: anything unusual counts as `other`.
fn method_label(method: &actix_web::http::Method) -> &'static str {
    use actix_web::http::Method;
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}
