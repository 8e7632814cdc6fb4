//! Stall detection for a publisher's uplink, sans-IO.
//!
//! A browser whose camera freezes, whose tab is throttled or whose network drops keeps its
//! peer connection up for a while (ICE consent takes ~30 s to expire) while no media arrives.
//! The others see a frozen picture and cannot tell why. The SFU therefore watches each
//! publisher's RTP and reports a stall after `stall_after` of silence, and the resumption at
//! the first packet after it, so signaling can show "connection problem" instead of a frozen
//! face. The monitor holds no clock and no timer: the caller feeds packet arrivals and polls
//! with the current time, so every path is tested on simulated time.

use std::time::{Duration, Instant};

/// A change in a publisher's media flow that the others should hear about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StallEvent {
    /// No RTP arrived for at least the configured silence after media had been flowing.
    Stalled,
    /// RTP arrived again after a reported stall.
    Resumed,
}

/// Watches one publisher's RTP arrivals (all of its tracks together).
///
/// Nothing is reported before the first packet: a participant who joined with camera and
/// microphone off is silent, not stalled.
#[derive(Debug, Clone)]
pub struct StallMonitor {
    stall_after: Duration,
    last_packet: Option<Instant>,
    stalled_since: Option<Instant>,
}

impl StallMonitor {
    /// A monitor that reports a stall after `stall_after` without RTP.
    pub fn new(stall_after: Duration) -> Self {
        Self {
            stall_after,
            last_packet: None,
            stalled_since: None,
        }
    }

    /// Records that an RTP packet arrived at `at`.
    ///
    /// Arrivals may be fed slightly out of order (two tracks read on two tasks); the newest
    /// instant wins.
    pub fn packet_at(&mut self, at: Instant) {
        match self.last_packet {
            Some(last) if last >= at => {}
            _ => self.last_packet = Some(at),
        }
    }

    /// Returns the change to report at `now`, if any. Call it periodically; each stall and
    /// each resumption is returned exactly once.
    pub fn poll(&mut self, now: Instant) -> Option<StallEvent> {
        let last = self.last_packet?;
        match self.stalled_since {
            Some(since) if last > since => {
                self.stalled_since = None;
                Some(StallEvent::Resumed)
            }
            Some(_) => None,
            None if now.saturating_duration_since(last) >= self.stall_after => {
                self.stalled_since = Some(now);
                Some(StallEvent::Stalled)
            }
            None => None,
        }
    }

    /// The instant at which the next [`poll`](Self::poll) could report a stall, so a driver
    /// can sleep until then. `None` before the first packet or while already stalled (a
    /// resumption is reported at the first poll after the next packet).
    pub fn poll_timeout(&self) -> Option<Instant> {
        match (self.last_packet, self.stalled_since) {
            (Some(last), None) => Some(last + self.stall_after),
            _ => None,
        }
    }

    /// Whether a stall has been reported and not yet followed by a resumption.
    pub fn is_stalled(&self) -> bool {
        self.stalled_since.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STALL: Duration = Duration::from_secs(3);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn silence_before_the_first_packet_is_not_a_stall() {
        let t0 = Instant::now();
        let mut m = StallMonitor::new(STALL);
        assert_eq!(m.poll(t0 + Duration::from_secs(60)), None);
        assert_eq!(m.poll_timeout(), None);
    }

    #[test]
    fn steady_media_never_stalls() {
        let t0 = Instant::now();
        let mut m = StallMonitor::new(STALL);
        for i in 0..1000 {
            let at = t0 + ms(20 * i);
            m.packet_at(at);
            assert_eq!(m.poll(at + ms(10)), None);
        }
    }

    #[test]
    fn silence_of_stall_after_is_reported_once_then_resumption_once() {
        let t0 = Instant::now();
        let mut m = StallMonitor::new(STALL);
        m.packet_at(t0);
        assert_eq!(m.poll_timeout(), Some(t0 + STALL));
        assert_eq!(m.poll(t0 + STALL - ms(1)), None);
        assert_eq!(m.poll(t0 + STALL), Some(StallEvent::Stalled));
        assert!(m.is_stalled());
        assert_eq!(m.poll(t0 + STALL + ms(500)), None);
        assert_eq!(m.poll(t0 + Duration::from_secs(30)), None);
        m.packet_at(t0 + Duration::from_secs(31));
        assert_eq!(
            m.poll(t0 + Duration::from_secs(31)),
            Some(StallEvent::Resumed)
        );
        assert!(!m.is_stalled());
        assert_eq!(m.poll(t0 + Duration::from_secs(32)), None);
        // And it can stall again.
        assert_eq!(
            m.poll(t0 + Duration::from_secs(34)),
            Some(StallEvent::Stalled)
        );
    }

    #[test]
    fn a_late_arrival_fed_out_of_order_does_not_move_time_back() {
        let t0 = Instant::now();
        let mut m = StallMonitor::new(STALL);
        m.packet_at(t0 + ms(100));
        m.packet_at(t0 + ms(50));
        assert_eq!(m.poll(t0 + ms(3050)), None);
        assert_eq!(m.poll(t0 + ms(3100)), Some(StallEvent::Stalled));
    }

    #[test]
    fn a_packet_stamped_before_the_stall_was_noticed_does_not_resume() {
        let t0 = Instant::now();
        let mut m = StallMonitor::new(STALL);
        m.packet_at(t0);
        assert_eq!(m.poll(t0 + ms(4000)), Some(StallEvent::Stalled));
        // Fed late, but it arrived before the stall was reported.
        m.packet_at(t0 + ms(3500));
        assert_eq!(m.poll(t0 + ms(4100)), None);
        m.packet_at(t0 + ms(4200));
        assert_eq!(m.poll(t0 + ms(4200)), Some(StallEvent::Resumed));
    }
}
