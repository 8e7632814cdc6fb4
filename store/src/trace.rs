//! Traces that cross the log: an event's metadata carries the W3C `traceparent` of the
//! request that caused it, so work done later (a projector, a delivery, another node)
//! joins that trace. The node turns exporting on when it sends spans somewhere
//! ([`set_exporting`]); otherwise nothing is carried.

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TraceContextExt;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use tracing_opentelemetry::OpenTelemetrySpanExt;

static EXPORTING: AtomicBool = AtomicBool::new(false);

/// Whether spans are exported (then events carry, and readers continue, traces).
pub fn exporting() -> bool {
    EXPORTING.load(Ordering::Acquire)
}

/// Turns carrying traces on or off (the node's telemetry setup calls this).
pub fn set_exporting(on: bool) {
    EXPORTING.store(on, Ordering::Release);
}

/// The W3C `traceparent` of the current span, for an event's metadata; `None` unless spans
/// are exported (then there is no trace to continue).
pub fn current_traceparent() -> Option<String> {
    if !exporting() {
        return None;
    }
    let cx = tracing::Span::current().context();
    if !cx.span().span_context().is_valid() {
        return None;
    }
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&cx, &mut carrier);
    carrier.remove("traceparent")
}

/// Makes `span` (just created, not yet entered) continue the trace an event's `traceparent`
/// names, so work done later or on another node joins the trace of the request behind it.
pub fn continue_trace(span: &tracing::Span, traceparent: Option<&str>) {
    let Some(traceparent) = traceparent.filter(|_| exporting()) else {
        return;
    };
    let carrier = HashMap::from([("traceparent".to_owned(), traceparent.to_owned())]);
    let cx = TraceContextPropagator::new().extract(&carrier);
    if cx.span().span_context().is_valid() {
        let _ = span.set_parent(cx);
    }
}
