//! Sets up `tracing` once per process: an env-filter and a pretty or JSON formatter on stderr;
//! and holds the node's metrics.

pub mod metrics;

use crate::config::LogFormat;
use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. Safe to call more than once (later calls do nothing), so
/// tests and the CLI can both call it.
pub fn init(filter: &str, format: LogFormat) {
    let filter =
        EnvFilter::try_new(with_quiet_media(filter)).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Pretty => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
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
