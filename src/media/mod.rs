//! The SFU: forwards each call participant's audio and video to the others without decoding.
//!
//! This module speaks call and participant uuids and SDP strings, nothing else: signaling
//! (`edge/signaling`) decides who may join which call and carries [`MediaEvent`]s and the
//! browser's answers and candidates back and forth; the domain and the event store never see
//! a peer connection. Like LiveKit's `pkg/rtc`, one file per concern:
//! - `participant.rs`: one server-side peer connection per participant, driven by an actor
//!   that serializes negotiation (the SFU is always the offerer);
//! - `router.rs`: calls, members, and one forwarder per publisher+kind fanning RTP out to a
//!   downstream track per subscriber;
//! - `rtcp.rs`: keyframe requests (PLI/FIR) relayed to publishers, throttled;
//! - `monitor.rs`: publisher stall detection, sans-IO.
//!
//! # Threads
//! The `webrtc` crate spawns each peer connection's driver with `tokio::spawn` on the
//! runtime it is built on. So that peer connections never run on (and never die with) an
//! actix-web worker's current-thread runtime, the [`Sfu`] owns a multi-thread runtime of its
//! own (`worker_threads` threads named `neulbi-media`); every method hops onto it through
//! channels, so the API can be called from any tokio runtime.

#![warn(missing_docs)]

mod monitor;
mod network;
mod participant;
mod router;
mod rtcp;
pub mod turn;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tracing::Instrument;
use uuid::Uuid;

pub use monitor::{StallEvent, StallMonitor};
pub use participant::Participant;

use router::{Call, Counters, lock};

/// How the SFU binds and behaves; part of the node's configuration.
#[derive(Debug, Clone)]
pub struct MediaSettings {
    /// Local UDP addresses to bind for each peer connection's host candidates (port 0 picks
    /// an ephemeral port per connection). Name concrete interface addresses: a wildcard
    /// (`0.0.0.0`) is expanded by the `webrtc` crate into one socket per interface *skipping
    /// loopback*, so tests and single-machine setups must say `127.0.0.1:0`.
    pub udp_addrs: Vec<SocketAddr>,
    /// If set, the inclusive range the UDP ports of `udp_addrs` entries with port 0 are taken
    /// from (one port per connection and address), so a firewall or a container's port
    /// mapping can open exactly that range. `None`: any ephemeral port.
    pub udp_port_range: Option<(u16, u16)>,
    /// Addresses to advertise in host candidates instead of the bound interface addresses
    /// (1:1 NAT: a cloud VM's public IP, a container host's IP): `public_ips[i]` for
    /// `udp_addrs[i]`, or one address for all. Empty: advertise what is bound.
    pub public_ips: Vec<IpAddr>,
    /// How long a publisher's RTP may be silent before the others get
    /// [`MediaEvent::PublisherStalled`].
    pub stall_after: Duration,
    /// STUN/TURN servers for the SFU's own candidates. A server with a public address rarely
    /// needs any; behind NAT, a TURN server gives it a reachable relay candidate.
    pub ice_servers: Vec<IceServer>,
    /// Threads of the SFU's own runtime, which drives every peer connection and forwarder.
    pub worker_threads: usize,
}

impl Default for MediaSettings {
    /// Loopback only, 3 s stall detection, no ICE servers, two threads: enough for tests and
    /// a single machine; production names the public interface in `udp_addrs`.
    fn default() -> Self {
        Self {
            udp_addrs: vec![SocketAddr::from(([127, 0, 0, 1], 0))],
            udp_port_range: None,
            public_ips: Vec::new(),
            stall_after: Duration::from_secs(3),
            ice_servers: Vec::new(),
            worker_threads: 2,
        }
    }
}

/// A STUN or TURN server, as RTCIceServer in the browser API. `Debug` redacts the
/// credential, so settings can be logged.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct IceServer {
    /// `stun:` / `turn:` / `turns:` URLs.
    pub urls: Vec<String>,
    /// TURN user name (empty for STUN).
    pub username: String,
    /// TURN credential (empty for STUN).
    pub credential: String,
}

impl std::fmt::Debug for IceServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IceServer")
            .field("urls", &self.urls)
            .field("username", &self.username)
            .field("credential", &"<redacted>")
            .finish()
    }
}

/// What went wrong in a media operation, and what the caller should do about it.
#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    /// An answer arrived while the SFU had no offer waiting for one.
    ///
    /// Handling: a protocol error of the client (a duplicate or late answer); tell it with a
    /// signaling error and carry on — the participant's connection is unaffected.
    #[error("no offer is waiting for an answer")]
    NoOfferOutstanding,
    /// The browser's SDP could not be parsed or applied.
    ///
    /// Handling: the client's fault; report it. The offer stays outstanding (so no other
    /// offer, ICE restarts included, can follow) and a corrected answer may still be applied;
    /// if none comes, `join` again: a fresh connection starts over, tracks kept.
    #[error("session description refused: {0}")]
    InvalidDescription(String),
    /// The browser's ICE candidate could not be parsed or applied.
    ///
    /// Handling: the client's fault; report or ignore it — other candidates may still work.
    #[error("ICE candidate refused: {0}")]
    InvalidCandidate(String),
    /// This handle's participant left, was disconnected, or was replaced by a newer `join`.
    ///
    /// Handling: drop the handle; the newest `join`'s handle is the one to use.
    #[error("the participant is no longer connected through this handle")]
    Gone,
    /// The settings cannot work (no runtime threads could be started).
    ///
    /// Handling: a configuration or startup error; fail startup.
    #[error("media settings: {0}")]
    Settings(String),
    /// The `webrtc` crate failed to build or drive a peer connection (e.g. no UDP address
    /// could be bound).
    ///
    /// Handling: infrastructure; log it and tell the client the call's media is unavailable
    /// on this node. Retrying the join may succeed if the cause was transient.
    #[error("peer connection: {0}")]
    PeerConnection(String),
}

/// Media kinds the SFU forwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MediaKind {
    /// Microphone (Opus, or G.722/PCMU/PCMA if that is what the browser sends).
    Audio,
    /// Camera or screen (VP8, VP9, H.264, AV1 — whatever the publisher's browser picked).
    Video,
}

impl MediaKind {
    /// `"audio"` or `"video"`, as in SDP and in downstream track ids.
    pub fn as_str(self) -> &'static str {
        match self {
            MediaKind::Audio => "audio",
            MediaKind::Video => "video",
        }
    }
}

/// A participant's peer connection state, as the browser's `connectionState` but without
/// the states signaling never acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionState {
    /// ICE/DTLS in progress (also the initial state).
    Connecting,
    /// Media can flow.
    Connected,
    /// Connectivity lost, possibly temporarily; ICE may recover on its own.
    Disconnected,
    /// Connectivity lost for good: `restart_ice` (or a rejoin) is needed.
    Failed,
    /// The connection was closed.
    Closed,
}

/// Everything the SFU tells signaling about one participant, on the channel given to
/// [`Sfu::join`]. Offers and candidates must be relayed to that participant's browser.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MediaEvent {
    /// A new SDP offer for the browser to answer (initial, renegotiation or ICE restart).
    /// The next offer is never sent before this one is answered.
    Offer {
        /// The offer's SDP.
        sdp: String,
    },
    /// One of the SFU's ICE candidates (trickle ICE); never sent before the offer it
    /// belongs to.
    Candidate {
        /// The `candidate:` attribute line.
        candidate: String,
        /// The media section it belongs to (the first one; everything is bundled).
        sdp_mid: Option<String>,
        /// The index of that media section.
        sdp_mline_index: Option<u16>,
    },
    /// The participant's peer connection changed state.
    Connection(ConnectionState),
    /// Another participant's media stopped arriving for `stall_after`.
    PublisherStalled {
        /// Whose media stopped.
        participant: Uuid,
    },
    /// That participant's media arrives again.
    PublisherResumed {
        /// Whose media is back.
        participant: Uuid,
    },
    /// A participant's track started arriving at the SFU: sent to everyone in the call (the
    /// publisher included) when it first arrives, and to each later joiner, before its first
    /// offer, for every track already published. Not repeated when a publisher rejoins.
    TrackPublished {
        /// Who publishes.
        participant: Uuid,
        /// What.
        kind: MediaKind,
    },
}

/// A snapshot of the SFU's counters, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SfuStats {
    /// Calls with at least one member.
    pub calls: u64,
    /// Members of those calls (connected or awaiting a rejoin).
    pub participants: u64,
    /// Tracks publishers send to the SFU (one per publisher and kind).
    pub published_tracks: u64,
    /// Downstream tracks, one per subscriber and publisher track.
    pub subscribed_tracks: u64,
    /// RTP packets written to downstream tracks since start.
    pub forwarded_packets: u64,
    /// Payload bytes of those packets.
    pub forwarded_bytes: u64,
    /// Packets not forwarded (slow subscriber, codec the subscriber did not negotiate,
    /// track not negotiated yet).
    pub dropped_packets: u64,
    /// PLIs sent to publishers.
    pub keyframe_requests: u64,
}

/// State shared by the handle, the participants' actors and the forwarders. Tasks on the
/// SFU's runtime hold this, never the runtime itself, so the runtime is never dropped from
/// inside itself.
pub(crate) struct Shared {
    pub(crate) settings: MediaSettings,
    pub(crate) calls: Mutex<HashMap<Uuid, Arc<Call>>>,
    pub(crate) counters: Arc<Counters>,
    pub(crate) ports: network::PortAllocator,
    pub(crate) public: network::PublicAddresses,
    ids: AtomicU64,
}

impl Shared {
    /// A process-unique id (generations, sources, sinks).
    pub(crate) fn next_id(&self) -> u64 {
        self.ids.fetch_add(1, Ordering::Relaxed) + 1
    }

    pub(crate) fn call(&self, id: Uuid) -> Option<Arc<Call>> {
        lock(&self.calls).get(&id).cloned()
    }

    /// Forgets the call if nobody is in it any more.
    pub(crate) fn remove_call_if_empty(&self, id: Uuid) {
        let mut calls = lock(&self.calls);
        if calls
            .get(&id)
            .is_some_and(|call| lock(&call.members).is_empty())
        {
            calls.remove(&id);
        }
    }
}

/// Owns the SFU's runtime; dropped with the last [`Sfu`] or [`Participant`] handle.
struct RuntimeOwner {
    runtime: Option<tokio::runtime::Runtime>,
}

impl Drop for RuntimeOwner {
    fn drop(&mut self) {
        // Not `drop(runtime)`: that blocks and panics inside an async context, and the last
        // handle may well be dropped inside one (an actix worker, a test).
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// The selective forwarding unit of this node. Cheap to clone; all clones are one SFU.
#[derive(Clone)]
pub struct Sfu {
    shared: Arc<Shared>,
    handle: tokio::runtime::Handle,
    _runtime: Arc<RuntimeOwner>,
}

impl std::fmt::Debug for Sfu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sfu").field("stats", &self.stats()).finish()
    }
}

impl Sfu {
    /// Starts the SFU's runtime and its stall watcher. Synchronous so that startup code can
    /// call it anywhere; it binds nothing until the first `join`.
    pub fn new(settings: MediaSettings) -> Result<Sfu, MediaError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(settings.worker_threads.max(1))
            .thread_name("neulbi-media")
            .enable_all()
            .build()
            .map_err(|error| MediaError::Settings(error.to_string()))?;
        let handle = runtime.handle().clone();
        let stall_after = settings.stall_after;
        let shared = Arc::new(Shared {
            ports: network::PortAllocator::new(settings.udp_port_range),
            public: network::PublicAddresses::new(&settings.udp_addrs, &settings.public_ips),
            settings,
            calls: Mutex::new(HashMap::new()),
            counters: Arc::new(Counters::default()),
            ids: AtomicU64::new(0),
        });
        handle.spawn(watch_stalls(Arc::downgrade(&shared), stall_after));
        Ok(Sfu {
            shared,
            handle,
            _runtime: Arc::new(RuntimeOwner {
                runtime: Some(runtime),
            }),
        })
    }

    /// Enters call `call` as `participant` and sends the first [`MediaEvent::Offer`] on
    /// `events`.
    ///
    /// The SFU is always the offerer: the offer has a recvonly audio and a recvonly video
    /// section (the participant's uplink, always the first two) and a sendonly section for
    /// every track the others already publish. Whenever someone publishes or leaves, a new
    /// offer follows, never while one is unanswered.
    ///
    /// Joining again as a participant who is in the call (disconnected, or still connected —
    /// then the old peer connection is closed and its handle goes stale) is a *rejoin*: the
    /// others keep the same downstream tracks from this participant, continued seamlessly
    /// from the new connection's media, without renegotiating.
    ///
    /// `events` should have room for a few dozen events and be read promptly: offers wait for
    /// room; candidates, state changes and notices are dropped (with a warning) when it is full.
    pub async fn join(
        &self,
        call: Uuid,
        participant: Uuid,
        events: mpsc::Sender<MediaEvent>,
    ) -> Result<Participant, MediaError> {
        let span = tracing::info_span!("media.join", %call, %participant);
        let shared = Arc::clone(&self.shared);
        let started = self
            .handle
            .spawn(participant::start(shared, call, participant, events).instrument(span))
            .await
            .map_err(|error| MediaError::PeerConnection(error.to_string()))??;
        Ok(Participant::new(self.clone(), call, participant, started))
    }

    /// Ends call `call` for everyone: closes every peer connection and forgets the call.
    /// Handles of its participants go stale.
    pub async fn end_call(&self, call: Uuid) {
        let span = tracing::info_span!("media.end_call", %call);
        let shared = Arc::clone(&self.shared);
        let task = self
            .handle
            .spawn(participant::end_call(shared, call).instrument(span));
        if let Err(error) = task.await {
            tracing::warn!(%error, "ending the call failed");
        }
    }

    /// Counters and gauges for metrics.
    pub fn stats(&self) -> SfuStats {
        let counters = &self.shared.counters;
        let mut stats = SfuStats {
            forwarded_packets: counters.forwarded_packets.load(Ordering::Relaxed),
            forwarded_bytes: counters.forwarded_bytes.load(Ordering::Relaxed),
            dropped_packets: counters.dropped_packets.load(Ordering::Relaxed),
            keyframe_requests: counters.keyframe_requests.load(Ordering::Relaxed),
            subscribed_tracks: counters.subscribed_tracks.load(Ordering::Relaxed),
            ..SfuStats::default()
        };
        let calls: Vec<Arc<Call>> = lock(&self.shared.calls).values().cloned().collect();
        stats.calls = calls.len() as u64;
        for call in calls {
            let members = lock(&call.members);
            stats.participants += members.len() as u64;
            stats.published_tracks += members
                .values()
                .map(|member| member.published.len() as u64)
                .sum::<u64>();
        }
        stats
    }

    pub(crate) fn handle(&self) -> &tokio::runtime::Handle {
        &self.handle
    }

    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }
}

/// Polls every publisher's stall monitor and tells the others about stalls and resumptions.
/// Ends when the SFU is gone.
async fn watch_stalls(shared: Weak<Shared>, stall_after: Duration) {
    let period = (stall_after / 4).clamp(Duration::from_millis(50), Duration::from_millis(500));
    let mut interval = tokio::time::interval(period);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let calls: Vec<Arc<Call>> = lock(&shared.calls).values().cloned().collect();
        let now = Instant::now();
        for call in calls {
            let members = lock(&call.members);
            for (publisher, member) in members.iter() {
                let Some(change) = lock(&member.monitor).poll(now) else {
                    continue;
                };
                tracing::info!(call = %call.id, participant = %publisher, ?change, "publisher media");
                let event = match change {
                    StallEvent::Stalled => MediaEvent::PublisherStalled {
                        participant: *publisher,
                    },
                    StallEvent::Resumed => MediaEvent::PublisherResumed {
                        participant: *publisher,
                    },
                };
                for (other, member) in members.iter() {
                    if other != publisher && member.events.try_send(event.clone()).is_err() {
                        tracing::warn!(participant = %other, "media event dropped: channel full");
                    }
                }
            }
        }
    }
}
