//! Log lines on stderr, held back while `serve` starts: the first thing a person running it
//! sees is the URL to open (on stdout), then the start-up log, rather than the URL buried
//! under a screen of start-up lines.

use std::io::{self, Write};
use std::sync::Mutex;

/// Lines written while held; `None` once released (lines go straight to stderr).
static HELD: Mutex<Option<Vec<u8>>> = Mutex::new(None);

/// Caps what is held, so a start-up that logs without end cannot grow memory: past it, lines
/// go straight to stderr.
const MAX_HELD: usize = 1 << 20;

/// Starts holding log lines back (until [`release`]).
pub fn hold() {
    let mut held = HELD.lock().unwrap_or_else(|p| p.into_inner());
    held.get_or_insert_with(Vec::new);
}

/// Writes the held lines to stderr and stops holding. Safe to call when nothing is held.
pub fn release() {
    let held = HELD.lock().unwrap_or_else(|p| p.into_inner()).take();
    if let Some(lines) = held {
        let mut err = io::stderr().lock();
        let _ = err.write_all(&lines);
        let _ = err.flush();
    }
}

/// The `tracing` writer: stderr, or the hold while it lasts.
#[derive(Clone, Copy, Debug, Default)]
pub struct HeldStderr;

impl Write for HeldStderr {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        {
            let mut held = HELD.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(lines) = held.as_mut()
                && lines.len() + buf.len() <= MAX_HELD
            {
                lines.extend_from_slice(buf);
                return Ok(buf.len());
            }
        }
        io::stderr().write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        io::stderr().flush()
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for HeldStderr {
    type Writer = HeldStderr;

    fn make_writer(&'a self) -> Self::Writer {
        *self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_lines_wait_for_release_and_nothing_is_lost() {
        hold();
        let mut w = HeldStderr;
        w.write_all(b"line one\n").unwrap();
        // Other tests of this process may log meanwhile: only what this one wrote is checked.
        let held = HELD.lock().unwrap().clone().expect("held while starting");
        assert!(held.ends_with(b"line one\n"), "held while starting");
        release();
        assert!(HELD.lock().unwrap().is_none(), "released: straight through");
        release();
    }
}
