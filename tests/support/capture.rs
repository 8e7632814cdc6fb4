//! Captures everything `tracing` writes — every level and span event — so leak tests can
//! search it for personal data, tokens and codes.

use std::io::Write;
use std::sync::{Arc, Mutex};
use tracing_subscriber::fmt::format::FmtSpan;

/// A shared in-memory log sink.
#[derive(Clone, Default)]
pub struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("capture").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Capture {
    /// Installs a global trace-level subscriber writing into a new capture (once per test
    /// binary; each leak test lives in its own binary).
    pub fn install() -> Self {
        Self::install_with("trace")
    }

    /// Like [`Capture::install`], with the env-filter `filter` (to leave out the test's own
    /// clients and libraries that see no secrets).
    pub fn install_with(filter: &str) -> Self {
        let capture = Self::default();
        let writer = capture.clone();
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_span_events(FmtSpan::FULL)
            .with_writer(move || writer.clone())
            .init();
        capture
    }

    /// Everything captured so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("capture")).into_owned()
    }
}
