//! RTCP the SFU acts on: keyframe requests (PLI/FIR) relayed to publishers, and the throttle
//! that keeps a crowd of subscribers from asking a publisher for a keyframe per packet.
//!
//! What the `webrtc` crate does on its own, through its default interceptors
//! (`register_default_interceptors`), on every SFU peer connection:
//! - **NACK, hop by hop.** The responder buffers what the SFU sends on each downstream track
//!   and retransmits what a subscriber NACKs; the generator NACKs gaps in a publisher's uplink.
//!   So loss on either leg is repaired on that leg and the SFU never relays a NACK.
//! - **Reports.** Sender reports on every downstream track, receiver reports on every uplink.
//! - **TWCC receiver** on the uplink, so the publisher's browser can estimate its bandwidth.
//!
//! What it does not do, and this module adds: inbound RTCP stops at the end of the
//! interceptor chain, so a subscriber's PLI/FIR never reaches the application unless an
//! interceptor marks it. [`KeyframeRequestMarker`] marks exactly those; the participant reads
//! them from its downstream tracks and asks the publisher (through
//! `Forwarder::request_keyframe`) for a keyframe.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use rtc::interceptor::{Attribute, Interceptor, Packet, StreamInfo, TaggedPacket};
use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::sansio::Protocol;
use rtc::shared::error::Error;

/// Where the marker sits in the chain: application-most, after every interceptor that reads
/// RTCP (the defaults end well below this), so they all see the whole packet first.
pub(crate) const KEYFRAME_MARKER_SLOT: usize = 14_000;

/// The shortest gap between two keyframe requests the SFU sends one publisher for one track.
///
/// A keyframe is 10-50 times a delta frame; three subscribers joining at once, or a
/// subscriber's PLI repeated each RTT while it waits, must cost the publisher one keyframe,
/// not five. Browsers themselves rate-limit keyframes to about this.
pub(crate) const KEYFRAME_MIN_INTERVAL: Duration = Duration::from_millis(300);

/// Whether an RTCP packet asks for a keyframe.
pub(crate) fn is_keyframe_request(packet: &dyn rtc::rtcp::Packet) -> bool {
    let any = packet.as_any();
    any.is::<PictureLossIndication>() || any.is::<FullIntraRequest>()
}

/// A PLI for the stream `media_ssrc`, as the SFU sends it to a publisher.
pub(crate) fn picture_loss_indication(media_ssrc: u32) -> Box<dyn rtc::rtcp::Packet> {
    Box::new(PictureLossIndication {
        sender_ssrc: 0,
        media_ssrc,
    })
}

/// Decides whether a keyframe request may go out now (sans-IO).
///
/// A request inside [`KEYFRAME_MIN_INTERVAL`] of the last one sent is not dropped but
/// deferred: the caller learns when to retry, so the last subscriber of a burst still gets
/// its keyframe.
#[derive(Debug, Clone)]
pub(crate) struct KeyframeThrottle {
    min_interval: Duration,
    last_sent: Option<Instant>,
    deferred: bool,
}

/// What to do with a keyframe request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyframeDecision {
    /// Send a PLI now.
    Send,
    /// One was sent too recently; send at this instant (unless already scheduled).
    DeferUntil(Instant),
    /// One was sent too recently and a deferred one is already scheduled.
    AlreadyScheduled,
}

impl KeyframeThrottle {
    pub(crate) fn new(min_interval: Duration) -> Self {
        Self {
            min_interval,
            last_sent: None,
            deferred: false,
        }
    }

    /// A keyframe was asked for at `now`.
    pub(crate) fn request(&mut self, now: Instant) -> KeyframeDecision {
        match self.last_sent {
            Some(last) if now.saturating_duration_since(last) < self.min_interval => {
                if self.deferred {
                    KeyframeDecision::AlreadyScheduled
                } else {
                    self.deferred = true;
                    KeyframeDecision::DeferUntil(last + self.min_interval)
                }
            }
            _ => {
                self.last_sent = Some(now);
                KeyframeDecision::Send
            }
        }
    }

    /// The deferred request's time has come (at `now`): it is sent.
    pub(crate) fn deferred_due(&mut self, now: Instant) {
        self.deferred = false;
        self.last_sent = Some(now);
    }
}

/// Marks inbound PLI and FIR for the application and drops the rest of the inbound RTCP at
/// this point (every interceptor below has already acted on it).
///
/// Without it a subscriber's keyframe request would end in the chain and its video would
/// stay broken until the publisher's next periodic keyframe (often 10 s or more in Chrome).
pub(crate) struct KeyframeRequestMarker {
    read_queue: VecDeque<TaggedPacket>,
    write_queue: VecDeque<TaggedPacket>,
}

impl KeyframeRequestMarker {
    pub(crate) fn new() -> Self {
        Self {
            read_queue: VecDeque::new(),
            write_queue: VecDeque::new(),
        }
    }
}

impl Protocol<TaggedPacket, TaggedPacket, ()> for KeyframeRequestMarker {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = Error;
    type Time = Instant;

    fn handle_read(&mut self, mut msg: TaggedPacket) -> Result<(), Self::Error> {
        if let Packet::Rtcp(packets) = &msg.message.packet {
            let requests: Vec<Box<dyn rtc::rtcp::Packet>> = packets
                .iter()
                .filter(|packet| is_keyframe_request(packet.as_ref()))
                .cloned()
                .collect();
            if requests.is_empty() {
                return Ok(());
            }
            msg.message.packet = Packet::Rtcp(requests);
            msg.message.add(Attribute::DeliverToApplication);
        }
        self.read_queue.push_back(msg);
        Ok(())
    }

    fn poll_read(&mut self) -> Option<Self::Rout> {
        self.read_queue.pop_front()
    }

    fn handle_write(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        self.write_queue.push_back(msg);
        Ok(())
    }

    fn poll_write(&mut self) -> Option<Self::Wout> {
        self.write_queue.pop_front()
    }
}

impl Interceptor for KeyframeRequestMarker {
    fn bind_local_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_local_stream(&mut self, _info: &StreamInfo) {}
    fn bind_remote_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_remote_stream(&mut self, _info: &StreamInfo) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn the_first_request_goes_out_at_once() {
        let t0 = Instant::now();
        let mut t = KeyframeThrottle::new(ms(300));
        assert_eq!(t.request(t0), KeyframeDecision::Send);
    }

    #[test]
    fn a_burst_costs_one_keyframe_now_and_one_deferred() {
        let t0 = Instant::now();
        let mut t = KeyframeThrottle::new(ms(300));
        assert_eq!(t.request(t0), KeyframeDecision::Send);
        assert_eq!(
            t.request(t0 + ms(10)),
            KeyframeDecision::DeferUntil(t0 + ms(300))
        );
        assert_eq!(t.request(t0 + ms(20)), KeyframeDecision::AlreadyScheduled);
        assert_eq!(t.request(t0 + ms(299)), KeyframeDecision::AlreadyScheduled);
        t.deferred_due(t0 + ms(300));
        assert_eq!(
            t.request(t0 + ms(400)),
            KeyframeDecision::DeferUntil(t0 + ms(600))
        );
        t.deferred_due(t0 + ms(600));
        assert_eq!(t.request(t0 + ms(1000)), KeyframeDecision::Send);
    }

    #[test]
    fn pli_and_fir_are_keyframe_requests_and_receiver_reports_are_not() {
        let pli = picture_loss_indication(7);
        assert!(is_keyframe_request(pli.as_ref()));
        let fir = FullIntraRequest::default();
        assert!(is_keyframe_request(&fir));
        let rr = rtc::rtcp::receiver_report::ReceiverReport::default();
        assert!(!is_keyframe_request(&rr));
    }
}
