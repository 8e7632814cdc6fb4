//! Sets up `tracing` once per process: an env-filter and a pretty or JSON formatter on stderr;
//! and holds the node's metrics.

pub mod held_stderr;
pub mod metrics;
pub mod otlp;

pub use crate::store::trace::{continue_trace, current_traceparent, exporting};

use crate::config::LogFormat;
use opentelemetry::trace::TracerProvider;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Keeps the span exporter of the process; dropping it flushes the spans still queued.
#[must_use = "dropping the guard stops exporting spans"]
pub struct Telemetry {
    tracer: Option<SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.tracer.take() {
            crate::store::trace::set_exporting(false);
            if let Err(e) = provider.shutdown() {
                tracing::warn!(error = %e, "flushing spans on exit failed");
            }
        }
    }
}

/// Installs the global subscriber: the env-filter, a pretty or JSON formatter on stderr and,
/// when an OTLP endpoint is configured (`OTEL_EXPORTER_OTLP_ENDPOINT`), the span exporter.
/// Safe to call more than once (later calls do nothing), so tests and the CLI can both call it.
pub fn init(filter: &str, format: LogFormat) -> Telemetry {
    let filter =
        EnvFilter::try_new(with_quiet_media(filter)).unwrap_or_else(|_| EnvFilter::new("info"));
    let fmt = match format {
        LogFormat::Pretty => tracing_subscriber::fmt::layer()
            .with_writer(held_stderr::HeldStderr)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_writer(held_stderr::HeldStderr)
            .boxed(),
    };
    let (provider, problem) = if otlp::configured() {
        match otlp::tracer_provider() {
            Ok(p) => (Some(p), None),
            Err(e) => (None, Some(e)),
        }
    } else {
        (None, None)
    };
    let otel = provider
        .as_ref()
        .map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer("neulbi")));
    let installed = tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .with(otel)
        .try_init()
        .is_ok();
    if let Some(e) = problem {
        tracing::error!(error = %e, "OTLP export is configured but could not start; spans stay local");
    }
    let tracer = provider.filter(|_| installed);
    if tracer.is_some() {
        crate::store::trace::set_exporting(true);
        tracing::info!(node = otlp::node_id(), "exporting spans over OTLP");
    }
    Telemetry { tracer }
}

/// The WebRTC and TURN crates log every packet-level event at info (and warn for each packet
/// before encryption is up): unless the filter names them, they log warnings only.
fn with_quiet_media(filter: &str) -> String {
    const QUIET: [&str; 6] = [
        "rtc",
        "rtc_ice",
        "rtc_dtls",
        "webrtc",
        "turn",
        "webrtc_util",
    ];
    let mut out = filter.to_owned();
    for target in QUIET {
        let named = filter
            .split(',')
            .any(|d| d.trim().split('=').next() == Some(target));
        if !named {
            out.push_str(&format!(",{target}=warn"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_crates_are_quiet_unless_named() {
        let f = with_quiet_media("info");
        assert!(f.starts_with("info,") && f.contains("rtc_ice=warn") && f.contains("webrtc=warn"));
        let f = with_quiet_media("debug,webrtc=trace");
        assert!(f.contains("webrtc=trace") && !f.contains("webrtc=warn"));
    }
}
