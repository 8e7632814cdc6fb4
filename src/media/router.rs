//! Who receives what: the members of each call, one [`Forwarder`] per publisher and kind,
//! and the sequence rewriting that keeps a downstream track continuous when its publisher
//! reconnects.
//!
//! The `webrtc` crate binds a local track to exactly one peer connection, so "one
//! downstream track per publisher+kind" is realised as one *forwarder* per publisher+kind
//! that fans each packet out to one local track per subscriber (a [`Sink`] here, a
//! `DownTrack` in `participant.rs`). The forwarder outlives the publisher's peer connection:
//! when the publisher rejoins, its new uplink becomes the forwarder's source and the
//! subscribers' tracks — their SSRCs, track ids and `<video>` elements — stay as they were.

use crate::telemetry::metrics::metrics;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use rtc::rtp;
use tokio::sync::mpsc;
use uuid::Uuid;
use webrtc::media_stream::track_remote::TrackRemote;

use super::monitor::StallMonitor;
use super::participant::Command;
use super::rtcp::{KEYFRAME_MIN_INTERVAL, KeyframeDecision, KeyframeThrottle};
use super::{MediaEvent, MediaKind};

/// Locks a mutex, recovering the data if a panicking thread poisoned it: every structure
/// here stays consistent between statements, so the data is still good.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Process-wide counters behind [`super::SfuStats`].
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) forwarded_packets: AtomicU64,
    pub(crate) forwarded_bytes: AtomicU64,
    pub(crate) dropped_packets: AtomicU64,
    pub(crate) keyframe_requests: AtomicU64,
    pub(crate) subscribed_tracks: AtomicU64,
}

impl Counters {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// One packet dropped, here and in the node's metrics.
    pub(crate) fn dropped(&self) {
        Self::add(&self.dropped_packets, 1);
        metrics().sfu_dropped.add(1, &[]);
    }

    /// One packet of `bytes` forwarded, here and in the node's metrics.
    pub(crate) fn forwarded(&self, bytes: u64) {
        Self::add(&self.forwarded_packets, 1);
        Self::add(&self.forwarded_bytes, bytes);
        let m = metrics();
        m.sfu_packets.add(1, &[]);
        m.sfu_bytes.add(bytes, &[]);
    }
}

/// One call: its members by participant id.
pub(crate) struct Call {
    pub(crate) id: Uuid,
    pub(crate) members: Mutex<HashMap<Uuid, Member>>,
}

/// A participant as the call knows it, across reconnects.
pub(crate) struct Member {
    /// Bumped by every `join`; a handle or a peer connection of an older generation is stale.
    pub(crate) generation: u64,
    /// The live peer connection's actor; `None` while disconnected (awaiting a rejoin).
    pub(crate) link: Option<mpsc::Sender<Command>>,
    /// Where this participant's events go (the latest `join`'s channel).
    pub(crate) events: mpsc::Sender<MediaEvent>,
    /// This participant's published tracks; they survive a disconnect.
    pub(crate) published: HashMap<MediaKind, Arc<Forwarder>>,
    /// Silence detection over all of this participant's uplink RTP.
    pub(crate) monitor: Arc<Mutex<StallMonitor>>,
}

impl Call {
    pub(crate) fn new(id: Uuid) -> Self {
        metrics().calls_active.add(1, &[]);
        Self {
            id,
            members: Mutex::new(HashMap::new()),
        }
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        metrics().calls_active.add(-1, &[]);
    }
}

/// The publisher's current uplink track feeding a forwarder.
struct Source {
    id: u64,
    track: Arc<dyn TrackRemote>,
    ssrc: u32,
    clock_rate: u32,
}

/// One subscriber's queue into its downstream track's writer.
pub(crate) struct Sink {
    /// Which downstream track this is, so a replaced subscriber's cleanup removes only its own.
    pub(crate) id: u64,
    pub(crate) queue: mpsc::Sender<rtp::Packet>,
}

/// Capacity of each subscriber's queue (about a second of video). A subscriber that cannot
/// take packets this fast loses packets (counted as dropped) instead of slowing the publisher
/// down for everyone.
pub(crate) const SINK_CAPACITY: usize = 128;

/// Fans one publisher's track of one kind out to every subscriber.
pub(crate) struct Forwarder {
    pub(crate) publisher: Uuid,
    pub(crate) kind: MediaKind,
    source: Mutex<Option<Source>>,
    rewriter: Mutex<SequenceRewriter>,
    sinks: Mutex<HashMap<Uuid, Sink>>,
    keyframes: Mutex<KeyframeThrottle>,
    counters: Arc<Counters>,
}

impl Forwarder {
    pub(crate) fn new(publisher: Uuid, kind: MediaKind, counters: Arc<Counters>) -> Self {
        metrics().sfu_tracks.add(1, &[]);
        Self {
            publisher,
            kind,
            source: Mutex::new(None),
            rewriter: Mutex::new(SequenceRewriter::default()),
            sinks: Mutex::new(HashMap::new()),
            keyframes: Mutex::new(KeyframeThrottle::new(KEYFRAME_MIN_INTERVAL)),
            counters,
        }
    }

    /// Makes `track` (with SSRC `ssrc`) the source, replacing any earlier one. Returns the
    /// source id that [`forward`](Self::forward) must be given: packets still arriving from a
    /// replaced source (the old peer connection of a rejoined publisher) are ignored.
    pub(crate) fn set_source(
        &self,
        id: u64,
        track: Arc<dyn TrackRemote>,
        ssrc: u32,
        clock_rate: u32,
    ) {
        *lock(&self.source) = Some(Source {
            id,
            track,
            ssrc,
            clock_rate,
        });
    }

    /// Forwards one uplink packet to every subscriber, with sequence number and timestamp
    /// rewritten to continue the downstream stream. Never waits: a full subscriber queue
    /// drops the packet for that subscriber only.
    pub(crate) fn forward(&self, source_id: u64, mut packet: rtp::Packet, now: Instant) {
        let clock_rate = match &*lock(&self.source) {
            Some(source) if source.id == source_id => source.clock_rate,
            _ => return,
        };
        let (seq, ts) = lock(&self.rewriter).rewrite(
            packet.header.ssrc,
            packet.header.sequence_number,
            packet.header.timestamp,
            clock_rate,
            now,
        );
        packet.header.sequence_number = seq;
        packet.header.timestamp = ts;
        let sinks = lock(&self.sinks);
        for sink in sinks.values() {
            if sink.queue.try_send(packet.clone()).is_err() {
                self.counters.dropped();
            }
        }
    }

    /// Adds (or replaces) `subscriber`'s sink.
    pub(crate) fn add_sink(&self, subscriber: Uuid, sink: Sink) {
        lock(&self.sinks).insert(subscriber, sink);
    }

    /// Removes `subscriber`'s sink if it is still the one with id `sink_id`.
    pub(crate) fn remove_sink(&self, subscriber: Uuid, sink_id: u64) {
        let mut sinks = lock(&self.sinks);
        if sinks
            .get(&subscriber)
            .is_some_and(|sink| sink.id == sink_id)
        {
            sinks.remove(&subscriber);
        }
    }

    /// Drops every sink, ending their writers: the publisher left.
    pub(crate) fn close(&self) {
        lock(&self.sinks).clear();
        *lock(&self.source) = None;
    }

    /// Asks the publisher for a keyframe (PLI), at most once per
    /// [`KEYFRAME_MIN_INTERVAL`]; a request inside the interval is sent when it ends.
    pub(crate) async fn request_keyframe(self: &Arc<Self>) {
        if self.kind != MediaKind::Video {
            return;
        }
        let decision = lock(&self.keyframes).request(Instant::now());
        match decision {
            KeyframeDecision::Send => self.send_pli().await,
            KeyframeDecision::AlreadyScheduled => {}
            KeyframeDecision::DeferUntil(at) => {
                let weak: Weak<Self> = Arc::downgrade(self);
                tokio::spawn(async move {
                    tokio::time::sleep_until(at.into()).await;
                    if let Some(forwarder) = weak.upgrade() {
                        lock(&forwarder.keyframes).deferred_due(Instant::now());
                        forwarder.send_pli().await;
                    }
                });
            }
        }
    }

    async fn send_pli(&self) {
        let target = lock(&self.source)
            .as_ref()
            .map(|source| (Arc::clone(&source.track), source.ssrc));
        let Some((track, ssrc)) = target else {
            return;
        };
        Counters::add(&self.counters.keyframe_requests, 1);
        if let Err(error) = track
            .write_rtcp(vec![super::rtcp::picture_loss_indication(ssrc)])
            .await
        {
            tracing::debug!(publisher = %self.publisher, %error, "PLI not sent");
        }
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        metrics().sfu_tracks.add(-1, &[]);
    }
}

/// Rewrites sequence numbers and timestamps so that a downstream stream stays continuous
/// when its source changes (sans-IO).
///
/// A rejoined publisher's new peer connection starts a new SSRC with random sequence
/// numbers and timestamps. Forwarded unchanged, the subscriber's jitter buffer would see a
/// jump of thousands of packets and seconds (Chrome resets, NACKs a storm, or waits), so the
/// new source is mapped to continue right after the last packet sent: the next sequence
/// number, and a timestamp advanced by the wall time that passed. Within one source the
/// mapping is a constant offset, so loss, reordering and retransmissions keep their meaning.
#[derive(Debug, Clone, Default)]
pub(crate) struct SequenceRewriter {
    source: Option<u32>,
    seq_offset: u16,
    ts_offset: u32,
    highest: Option<Sent>,
}

#[derive(Debug, Clone, Copy)]
struct Sent {
    seq: u16,
    ts: u32,
    at: Instant,
}

/// Whether sequence number `a` comes after `b`, modulo wrap-around (RFC 3550 style).
fn seq_newer(a: u16, b: u16) -> bool {
    a != b && a.wrapping_sub(b) < 0x8000
}

impl SequenceRewriter {
    /// Maps an input packet (`ssrc`, `seq`, `ts`) arriving at `now` to the output sequence
    /// number and timestamp. `clock_rate` (Hz) converts the wall time of a source switch into
    /// timestamp units.
    pub(crate) fn rewrite(
        &mut self,
        ssrc: u32,
        seq: u16,
        ts: u32,
        clock_rate: u32,
        now: Instant,
    ) -> (u16, u32) {
        if self.source != Some(ssrc) {
            match self.highest {
                None => {
                    self.seq_offset = 0;
                    self.ts_offset = 0;
                }
                Some(last) => {
                    let elapsed = now.saturating_duration_since(last.at);
                    let ticks = elapsed_ticks(elapsed, clock_rate).max(1);
                    self.seq_offset = last.seq.wrapping_add(1).wrapping_sub(seq);
                    self.ts_offset = last.ts.wrapping_add(ticks).wrapping_sub(ts);
                }
            }
            self.source = Some(ssrc);
        }
        let out = (
            seq.wrapping_add(self.seq_offset),
            ts.wrapping_add(self.ts_offset),
        );
        if self.highest.is_none_or(|last| seq_newer(out.0, last.seq)) {
            self.highest = Some(Sent {
                seq: out.0,
                ts: out.1,
                at: now,
            });
        }
        out
    }
}

/// `elapsed` in units of a `clock_rate` Hz clock, saturating (a switch after days of silence
/// just wraps the 32-bit timestamp, which receivers handle).
fn elapsed_ticks(elapsed: Duration, clock_rate: u32) -> u32 {
    let ticks = elapsed.as_micros().saturating_mul(u128::from(clock_rate)) / 1_000_000;
    u32::try_from(ticks % (1u128 << 32)).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const VIDEO: u32 = 90_000;

    #[test]
    fn the_first_source_passes_through_unchanged() {
        let t0 = Instant::now();
        let mut r = SequenceRewriter::default();
        assert_eq!(r.rewrite(1, 100, 5000, VIDEO, t0), (100, 5000));
        assert_eq!(r.rewrite(1, 101, 8000, VIDEO, t0), (101, 8000));
        // Reordered and lost packets keep their relation.
        assert_eq!(r.rewrite(1, 104, 9000, VIDEO, t0), (104, 9000));
        assert_eq!(r.rewrite(1, 103, 9000, VIDEO, t0), (103, 9000));
    }

    #[test]
    fn a_new_source_continues_after_the_last_packet_sent() {
        let t0 = Instant::now();
        let mut r = SequenceRewriter::default();
        r.rewrite(1, 500, 10_000, VIDEO, t0);
        r.rewrite(1, 501, 13_000, VIDEO, t0 + Duration::from_millis(33));
        // The publisher rejoins 2 s later with a fresh random SSRC, sequence and timestamp.
        let t1 = t0 + Duration::from_millis(2033);
        let (seq, ts) = r.rewrite(2, 40_000, 3_000_000_000, VIDEO, t1);
        assert_eq!(seq, 502);
        assert_eq!(ts, 13_000 + 180_000);
        // The new source then runs on with the same offset.
        assert_eq!(
            r.rewrite(2, 40_001, 3_000_003_000, VIDEO, t1),
            (503, 196_000)
        );
    }

    #[test]
    fn sequence_numbers_wrap() {
        let t0 = Instant::now();
        let mut r = SequenceRewriter::default();
        r.rewrite(1, 65_535, 0, VIDEO, t0);
        assert_eq!(r.rewrite(1, 0, 3000, VIDEO, t0).0, 0);
        // Switch right after the wrap: continues from 0, not from 65535.
        let (seq, _) = r.rewrite(2, 7, 1, VIDEO, t0 + Duration::from_millis(10));
        assert_eq!(seq, 1);
    }

    #[test]
    fn an_immediate_switch_still_advances_the_timestamp() {
        let t0 = Instant::now();
        let mut r = SequenceRewriter::default();
        r.rewrite(1, 1, 1000, VIDEO, t0);
        let (_, ts) = r.rewrite(2, 9, 77, VIDEO, t0);
        assert_eq!(ts, 1001);
    }

    #[test]
    fn newer_is_modular() {
        assert!(seq_newer(1, 0));
        assert!(seq_newer(0, 65_535));
        assert!(!seq_newer(65_535, 0));
        assert!(!seq_newer(5, 5));
    }
}
