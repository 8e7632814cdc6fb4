//! One `tracing` span per HTTP request. Only method, route path and status are recorded: query
//! strings are left out because they are where tokens and codes leak.

use actix_web::Error;
use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use tracing::Instrument;

/// Wraps every request in a `request` span and logs its outcome.
pub async fn request_span(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, Error> {
    // A SockJS session id works like a bearer secret (whoever has it can poll or send in
    // the session): those routes are logged by their pattern.
    let path = match req.match_pattern() {
        Some(pattern) if pattern.ends_with("/{session}/{transport}") => pattern,
        _ => req.path().to_owned(),
    };
    let span = tracing::info_span!(
        "request",
        method = %req.method(),
        path = %path,
        status = tracing::field::Empty,
    );
    let res = next.call(req).instrument(span.clone()).await;
    match &res {
        Ok(r) => {
            span.record("status", r.status().as_u16());
            tracing::debug!(parent: &span, status = r.status().as_u16(), "request finished");
        }
        Err(e) => tracing::warn!(parent: &span, error = %e, "request failed"),
    }
    res
}
