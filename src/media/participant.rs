//! One participant's server-side peer connection, driven by an actor task.
//!
//! Everything that touches the connection's negotiation goes through the actor's queue, in
//! order: answers, candidates, ICE restarts, tracks to add or remove. That is what makes the
//! rule "never a new offer while one is unanswered" simple: the actor keeps a
//! [`Negotiation`] (needs an offer? one outstanding? restart ICE?) and offers only when the
//! previous one was answered.
//!
//! The connection's own callbacks run on its driver task, which the actor's calls into the
//! connection wait for; the callbacks therefore never wait on the actor (bounded queue,
//! `try_send`), and the work a new uplink track causes runs on a task of its own.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Instant;

use rtc::interceptor::Slot;
use rtc::media_stream::MediaStreamTrack;
use rtc::rtp;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::Instrument;
use uuid::Uuid;
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_local::{TrackLocal, TrackLocalEvent};
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{
    MediaEngine, PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler,
    RTCConfigurationBuilder, RTCIceCandidateInit, RTCIceServer, RTCPeerConnectionIceEvent,
    RTCPeerConnectionState, RTCSessionDescription, Registry, SettingEngineBuilder,
    register_default_interceptors,
};
use webrtc::rtp_transceiver::{
    RTCRtpTransceiverDirection, RTCRtpTransceiverInit, RtpSender, RtpTransceiver,
};

use super::monitor::StallMonitor;
use super::router::{Call, Counters, Forwarder, Member, SINK_CAPACITY, Sink, lock};
use super::rtcp::{KEYFRAME_MARKER_SLOT, KeyframeRequestMarker, is_keyframe_request};
use super::{ConnectionState, MediaError, MediaEvent, MediaKind, Sfu, Shared};

/// Capacity of a participant's command queue (API calls and routing changes).
const COMMAND_CAPACITY: usize = 64;
/// Capacity of the queue from the connection's callbacks (candidates, state changes).
const INTERNAL_CAPACITY: usize = 256;
/// Remote candidates kept while no answer has been applied yet.
const MAX_EARLY_CANDIDATES: usize = 64;

/// A participant's handle: answer offers, add candidates, restart ICE, leave.
///
/// Cheap to clone. After [`leave`](Self::leave), [`disconnect`](Self::disconnect) or a newer
/// [`Sfu::join`] of the same participant, its calls return [`MediaError::Gone`] (or do
/// nothing), so a stale signaling session cannot disturb the new one.
#[derive(Clone)]
pub struct Participant {
    sfu: Sfu,
    call: Uuid,
    id: Uuid,
    generation: u64,
    commands: mpsc::Sender<Command>,
}

impl std::fmt::Debug for Participant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Participant")
            .field("call", &self.call)
            .field("id", &self.id)
            .field("generation", &self.generation)
            .finish()
    }
}

/// What `start` hands back to the [`Sfu`] for the handle.
pub(crate) struct Started {
    generation: u64,
    commands: mpsc::Sender<Command>,
}

impl Participant {
    pub(crate) fn new(sfu: Sfu, call: Uuid, id: Uuid, started: Started) -> Self {
        Self {
            sfu,
            call,
            id,
            generation: started.generation,
            commands: started.commands,
        }
    }

    /// The participant's id, as given to `join`.
    pub fn id(&self) -> Uuid {
        self.id
    }

    /// The call's id, as given to `join`.
    pub fn call(&self) -> Uuid {
        self.call
    }

    /// Applies the browser's answer to the outstanding offer. Errors when no offer is
    /// outstanding or the SDP is refused; see [`MediaError`] for what to do.
    pub async fn apply_answer(&self, sdp: String) -> Result<(), MediaError> {
        self.ask(|reply| Command::Answer { sdp, reply }).await
    }

    /// Adds one of the browser's ICE candidates. An empty candidate (end of candidates) is
    /// accepted and ignored; candidates that arrive before the first answer are kept and
    /// applied with it.
    pub async fn add_ice_candidate(
        &self,
        candidate: String,
        sdp_mid: Option<String>,
        sdp_mline_index: Option<u16>,
    ) -> Result<(), MediaError> {
        if candidate.trim().is_empty() {
            return Ok(());
        }
        let init = RTCIceCandidateInit {
            candidate,
            sdp_mid,
            sdp_mline_index,
            ..Default::default()
        };
        self.ask(|reply| Command::Candidate { init, reply }).await
    }

    /// Sends a new offer with fresh ICE credentials (after [`ConnectionState::Failed`], or
    /// when the browser's network changed). If an offer is outstanding, the restart offer
    /// follows its answer.
    pub async fn restart_ice(&self) -> Result<(), MediaError> {
        self.ask(|reply| Command::RestartIce { reply }).await
    }

    /// Asks the publishers of every video this participant receives for a keyframe, e.g.
    /// when its browser re-attached the `<video>` elements. Browsers also ask on their own
    /// (PLI), which the SFU relays; this is for signaling-level recovery.
    pub async fn request_keyframe(&self) {
        let _ = self.commands.send(Command::RequestKeyframes).await;
    }

    /// Leaves the call: closes the connection and removes this participant's tracks from the
    /// others (who get a new offer). Works on a disconnected participant too (the end of the
    /// rejoin grace period); does nothing if a newer `join` replaced this handle.
    pub async fn leave(&self) {
        let span = tracing::info_span!("media.leave", call = %self.call, participant = %self.id);
        let shared = Arc::clone(self.sfu.shared());
        let task = self
            .sfu
            .handle()
            .spawn(leave(shared, self.call, self.id, self.generation).instrument(span));
        let _ = task.await;
    }

    /// Signaling to the browser was lost: closes the peer connection but keeps this
    /// publisher's downstream tracks in the others' connections, so that a `join` within the
    /// grace period feeds the same tracks and the others' `<video>` elements keep working
    /// without renegotiation. Call [`leave`](Self::leave) when the grace period ends.
    pub async fn disconnect(&self) {
        let span =
            tracing::info_span!("media.disconnect", call = %self.call, participant = %self.id);
        let shared = Arc::clone(self.sfu.shared());
        let task = self
            .sfu
            .handle()
            .spawn(disconnect(shared, self.call, self.id, self.generation).instrument(span));
        let _ = task.await;
    }

    async fn ask(
        &self,
        command: impl FnOnce(oneshot::Sender<Result<(), MediaError>>) -> Command,
    ) -> Result<(), MediaError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(command(reply))
            .await
            .map_err(|_| MediaError::Gone)?;
        answer.await.map_err(|_| MediaError::Gone)?
    }
}

/// Work for a participant's actor.
pub(crate) enum Command {
    Answer {
        sdp: String,
        reply: oneshot::Sender<Result<(), MediaError>>,
    },
    Candidate {
        init: RTCIceCandidateInit,
        reply: oneshot::Sender<Result<(), MediaError>>,
    },
    RestartIce {
        reply: oneshot::Sender<Result<(), MediaError>>,
    },
    RequestKeyframes,
    /// Another participant publishes this track: send it to this participant.
    Subscribe(Arc<Forwarder>),
    /// That participant left: stop sending its tracks.
    Unsubscribe(Uuid),
    /// Close the connection and end the actor.
    Close {
        reply: oneshot::Sender<()>,
    },
}

/// What the connection's callbacks report to the actor.
enum Internal {
    Candidate(RTCIceCandidateInit),
    State(RTCPeerConnectionState),
}

/// The offer/answer bookkeeping of one connection (sans-IO): at most one offer outstanding,
/// later needs coalesced into one follow-up offer.
#[derive(Debug, Default, Clone)]
pub(crate) struct Negotiation {
    outstanding: bool,
    needed: bool,
    restart: bool,
}

impl Negotiation {
    /// Something changed that the browser must learn through a new offer.
    pub(crate) fn request(&mut self) {
        self.needed = true;
    }

    /// The next offer must restart ICE.
    pub(crate) fn request_restart(&mut self) {
        self.needed = true;
        self.restart = true;
    }

    /// Whether an offer should be made now.
    pub(crate) fn should_offer(&self) -> bool {
        self.needed && !self.outstanding
    }

    /// An offer is being made; returns whether it restarts ICE.
    pub(crate) fn offering(&mut self) -> bool {
        self.outstanding = true;
        self.needed = false;
        std::mem::take(&mut self.restart)
    }

    /// Making the offer failed; nothing is outstanding.
    pub(crate) fn offer_failed(&mut self) {
        self.outstanding = false;
    }

    /// Whether an answer is awaited.
    pub(crate) fn is_outstanding(&self) -> bool {
        self.outstanding
    }

    /// The answer was applied.
    pub(crate) fn answered(&mut self) {
        self.outstanding = false;
    }
}

/// The connection's callbacks: forwarded to the actor without ever waiting, except
/// `on_track`, whose work runs on a task of its own.
struct Handler {
    internal: mpsc::Sender<Internal>,
    shared: Weak<Shared>,
    call: Uuid,
    participant: Uuid,
    generation: u64,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_ice_candidate(&self, event: RTCPeerConnectionIceEvent) {
        match event.candidate.to_json() {
            Ok(init) => {
                if self.internal.try_send(Internal::Candidate(init)).is_err() {
                    tracing::warn!(participant = %self.participant, "local candidate dropped");
                }
            }
            Err(error) => tracing::debug!(%error, "local candidate not serializable"),
        }
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        let _ = self.internal.try_send(Internal::State(state));
    }

    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        let Some(shared) = self.shared.upgrade() else {
            return;
        };
        let Some(call) = shared.call(self.call) else {
            return;
        };
        let span =
            tracing::info_span!("media.publish", call = %call.id, participant = %self.participant);
        tokio::spawn(
            publish(shared, call, self.participant, self.generation, track).instrument(span),
        );
    }
}

/// A new uplink track arrived (its first RTP packet): make it the source of this
/// participant's forwarder of that kind — new, so the others subscribe, or existing after a
/// rejoin, so the others' tracks just continue — then forward its packets until it ends.
async fn publish(
    shared: Arc<Shared>,
    call: Arc<Call>,
    participant: Uuid,
    generation: u64,
    track: Arc<dyn TrackRemote>,
) {
    let kind = match track.kind().await {
        RtpCodecKind::Audio => MediaKind::Audio,
        RtpCodecKind::Video => MediaKind::Video,
        _ => return,
    };
    let Some(ssrc) = track.ssrcs().await.first().copied() else {
        return;
    };
    let codec = track.codec(ssrc).await;
    let clock_rate = codec
        .as_ref()
        .map(|codec| codec.clock_rate)
        .filter(|rate| *rate > 0)
        .unwrap_or(match kind {
            MediaKind::Audio => 48_000,
            MediaKind::Video => 90_000,
        });
    let source_id = shared.next_id();
    let (forwarder, monitor, fresh, others) = {
        let mut members = lock(&call.members);
        let Some(member) = members.get_mut(&participant) else {
            return;
        };
        if member.generation != generation {
            // A replaced connection's late track.
            return;
        }
        let (forwarder, fresh) = match member.published.get(&kind) {
            Some(forwarder) => (Arc::clone(forwarder), false),
            None => {
                let forwarder = Arc::new(Forwarder::new(
                    participant,
                    kind,
                    Arc::clone(&shared.counters),
                ));
                member.published.insert(kind, Arc::clone(&forwarder));
                (forwarder, true)
            }
        };
        forwarder.set_source(source_id, Arc::clone(&track), ssrc, clock_rate);
        let monitor = Arc::clone(&member.monitor);
        let others: Vec<(
            Uuid,
            Option<mpsc::Sender<Command>>,
            mpsc::Sender<MediaEvent>,
        )> = members
            .iter()
            .map(|(id, member)| (*id, member.link.clone(), member.events.clone()))
            .collect();
        (forwarder, monitor, fresh, others)
    };
    let mime = codec.map(|codec| codec.mime_type).unwrap_or_default();
    tracing::info!(kind = kind.as_str(), %mime, ssrc, fresh, "uplink track");
    if fresh {
        for (id, link, events) in others {
            if id != participant
                && let Some(link) = link
            {
                let _ = link.send(Command::Subscribe(Arc::clone(&forwarder))).await;
            }
            if events
                .try_send(MediaEvent::TrackPublished { participant, kind })
                .is_err()
            {
                tracing::warn!(participant = %id, "media event dropped: channel full");
            }
        }
    } else {
        // The subscribers' decoders continue from the old source's last frame; a keyframe
        // of the new one makes the switch clean.
        forwarder.request_keyframe().await;
    }
    while let Some(event) = track.poll().await {
        match event {
            TrackRemoteEvent::OnRtpPacket(packet) => {
                let now = Instant::now();
                lock(&monitor).packet_at(now);
                forwarder.forward(source_id, packet, now);
            }
            TrackRemoteEvent::OnEnded => break,
            _ => {}
        }
    }
    tracing::debug!(kind = kind.as_str(), "uplink track ended");
}

/// One downstream track in this participant's connection: another publisher's track of
/// one kind.
struct DownTrack {
    forwarder: Arc<Forwarder>,
    sink_id: u64,
    transceiver: Arc<dyn RtpTransceiver>,
    sender: Option<Arc<dyn RtpSender>>,
    state: Arc<DownState>,
    tasks: [JoinHandle<()>; 2],
}

/// What a downstream track's writer needs.
struct DownState {
    ssrc: u32,
    track: Arc<TrackLocalStaticRTP>,
    /// Whether the connection is up (DTLS done): before that, SRTP cannot protect a packet.
    link_up: Arc<AtomicBool>,
    /// Payload types negotiated on this leg; empty until an answer enabled sending.
    payload_types: Mutex<Vec<u8>>,
}

impl DownTrack {
    /// Reads what the last answer negotiated for this track.
    async fn refresh(&self) {
        let sending = self
            .transceiver
            .current_direction()
            .await
            .is_ok_and(|direction| direction.has_send());
        let mut payload_types = Vec::new();
        if sending
            && let Some(sender) = &self.sender
            && let Ok(parameters) = sender.get_parameters().await
        {
            // Media payload types only: the crate de-encapsulates a publisher's RTX before
            // the forwarder sees it, and this leg's NACK responder makes its own.
            payload_types = parameters
                .rtp_parameters
                .codecs
                .iter()
                .filter(|codec| !is_repair_codec(&codec.rtp_codec.mime_type))
                .map(|codec| codec.payload_type)
                .collect();
        }
        *lock(&self.state.payload_types) = payload_types;
    }
}

/// Writes a forwarder's packets into one subscriber's track: the leg's own SSRC, only
/// payload types that leg negotiated, and no header extensions (their ids are per leg; the
/// crate's interceptors add what this leg uses).
async fn write_downstream(
    state: Arc<DownState>,
    mut queue: mpsc::Receiver<rtp::Packet>,
    counters: Arc<Counters>,
) {
    while let Some(mut packet) = queue.recv().await {
        let allowed = state.link_up.load(Ordering::Relaxed)
            && lock(&state.payload_types).contains(&packet.header.payload_type);
        if !allowed || packet.payload.is_empty() {
            counters.dropped();
            continue;
        }
        packet.header.ssrc = state.ssrc;
        // Padding was stripped on receipt; nothing to re-add.
        packet.header.padding = false;
        packet.header.extension = false;
        packet.header.extension_profile = 0;
        packet.header.extensions.clear();
        packet.header.extensions_padding = 0;
        let bytes = packet.payload.len() as u64;
        match state.track.write_rtp(packet).await {
            Ok(()) => counters.forwarded(bytes),
            Err(_) => counters.dropped(),
        }
    }
}

/// Relays a subscriber's keyframe requests about one downstream track to its publisher.
async fn read_feedback(track: Arc<TrackLocalStaticRTP>, forwarder: Weak<Forwarder>) {
    while let Some(event) = track.poll().await {
        let TrackLocalEvent::OnRtcpPacket(packets) = event else {
            continue;
        };
        if packets
            .iter()
            .any(|packet| is_keyframe_request(packet.as_ref()))
        {
            let Some(forwarder) = forwarder.upgrade() else {
                return;
            };
            forwarder.request_keyframe().await;
        }
    }
}

/// Whether the SFU resolves browsers' mDNS (`.local`) host candidates. The crate opens a
/// multicast socket per connection for that, and fails the whole connection where multicast
/// cannot be joined (no route covers 224.0.0.0/4: a container or namespace with only `lo`).
/// Probed once: where it cannot work, it is off, and browsers' other candidates still connect.
fn mdns_mode() -> rtc::ice::mdns::MulticastDnsMode {
    use rtc::ice::mdns::MulticastDnsMode;
    static MODE: std::sync::OnceLock<MulticastDnsMode> = std::sync::OnceLock::new();
    *MODE.get_or_init(|| {
        let joined =
            std::net::UdpSocket::bind((std::net::Ipv4Addr::UNSPECIFIED, 0)).and_then(|s| {
                s.join_multicast_v4(
                    &std::net::Ipv4Addr::new(224, 0, 0, 251),
                    &std::net::Ipv4Addr::UNSPECIFIED,
                )
            });
        match joined {
            Ok(()) => MulticastDnsMode::QueryOnly,
            Err(error) => {
                tracing::info!(%error, "multicast unavailable: mDNS candidates are not resolved");
                MulticastDnsMode::Disabled
            }
        }
    })
}

/// Builds a peer connection with the default codecs (Opus, G.722, PCMU, PCMA; VP8, VP9,
/// H.264, AV1, H.265, RTX), the default interceptors (NACK both ways, reports, TWCC receiver)
/// and the keyframe-request marker.
async fn build_peer_connection(
    shared: &Shared,
    handler: Handler,
) -> Result<Arc<dyn PeerConnection>, MediaError> {
    let settings = &shared.settings;
    let udp_addrs = shared.ports.addresses(&settings.udp_addrs)?;
    let failed = |error: webrtc::error::Error| MediaError::PeerConnection(error.to_string());
    let mut media_engine = MediaEngine::default();
    media_engine.register_default_codecs().map_err(failed)?;
    let registry =
        register_default_interceptors(Registry::new(), &mut media_engine).map_err(failed)?;
    let registry = registry.with(
        Slot::from(KEYFRAME_MARKER_SLOT),
        KeyframeRequestMarker::new(),
    );
    let ice_servers = settings
        .ice_servers
        .iter()
        .map(|server| RTCIceServer {
            urls: server.urls.clone(),
            username: server.username.clone(),
            credential: server.credential.clone(),
        })
        .collect();
    let configuration = RTCConfigurationBuilder::new()
        .with_ice_servers(ice_servers)
        .build();
    let setting_engine = SettingEngineBuilder::new()
        .with_multicast_dns_mode(mdns_mode())
        .build();
    let pc = PeerConnectionBuilder::new()
        .with_configuration(configuration)
        .with_setting_engine(setting_engine)
        .with_media_engine(media_engine)
        .with_interceptor_registry(registry)
        .with_handler(Arc::new(handler))
        .with_udp_addrs(udp_addrs)
        .build()
        .await
        .map_err(failed)?;
    Ok(Arc::new(pc))
}

/// Creates the participant's connection and actor, registers it in the call (replacing and
/// closing an older connection of the same participant), and lets the actor send the first
/// offer.
pub(crate) async fn start(
    shared: Arc<Shared>,
    call_id: Uuid,
    participant: Uuid,
    events: mpsc::Sender<MediaEvent>,
) -> Result<Started, MediaError> {
    let generation = shared.next_id();
    let (internal_tx, internal_rx) = mpsc::channel(INTERNAL_CAPACITY);
    let handler = Handler {
        internal: internal_tx,
        shared: Arc::downgrade(&shared),
        call: call_id,
        participant,
        generation,
    };
    let pc = build_peer_connection(&shared, handler).await?;
    for kind in [RtpCodecKind::Audio, RtpCodecKind::Video] {
        let uplink = RTCRtpTransceiverInit {
            direction: RTCRtpTransceiverDirection::Recvonly,
            streams: vec![],
            send_encodings: vec![],
        };
        if let Err(error) = pc.add_transceiver_from_kind(kind, Some(uplink)).await {
            let _ = pc.close().await;
            return Err(MediaError::PeerConnection(error.to_string()));
        }
    }
    let (commands_tx, commands_rx) = mpsc::channel(COMMAND_CAPACITY);
    // Under the calls lock (then the members lock, the order `remove_call_if_empty` uses),
    // so a concurrent last `leave` cannot forget the call between lookup and insertion.
    let (call, rejoin, replaced, forwarders) = {
        let mut calls = lock(&shared.calls);
        let call = Arc::clone(
            calls
                .entry(call_id)
                .or_insert_with(|| Arc::new(Call::new(call_id))),
        );
        let mut members = lock(&call.members);
        let forwarders: Vec<Arc<Forwarder>> = members
            .iter()
            .filter(|(id, _)| **id != participant)
            .flat_map(|(_, member)| member.published.values().cloned())
            .collect();
        let rejoin = members.contains_key(&participant);
        let replaced = match members.get_mut(&participant) {
            Some(member) => {
                member.generation = generation;
                member.events = events.clone();
                member.link.replace(commands_tx.clone())
            }
            None => {
                members.insert(
                    participant,
                    Member {
                        generation,
                        link: Some(commands_tx.clone()),
                        events: events.clone(),
                        published: HashMap::new(),
                        monitor: Arc::new(Mutex::new(StallMonitor::new(
                            shared.settings.stall_after,
                        ))),
                    },
                );
                None
            }
        };
        drop(members);
        (call, rejoin, replaced, forwarders)
    };
    if let Some(old) = replaced {
        close_actor(old).await;
    }
    for forwarder in &forwarders {
        let published = MediaEvent::TrackPublished {
            participant: forwarder.publisher,
            kind: forwarder.kind,
        };
        if events.try_send(published).is_err() {
            tracing::warn!("media event dropped: channel full");
        }
    }
    tracing::info!(rejoin, subscriptions = forwarders.len(), "joined");
    let actor = Actor {
        shared,
        call,
        participant,
        pc,
        events,
        downs: HashMap::new(),
        negotiation: Negotiation::default(),
        connected: false,
        link_up: Arc::new(AtomicBool::new(false)),
        awaiting_keyframe: Vec::new(),
        early_candidates: Vec::new(),
        answered_once: false,
        first_mid: None,
    };
    // The actor's span is its own (not a child of `media.join`, which ends now): it covers
    // the life of this connection.
    let span = tracing::info_span!(parent: None, "media.participant", call = %call_id, %participant, generation);
    tokio::spawn(
        actor
            .run(commands_rx, internal_rx, forwarders)
            .instrument(span),
    );
    Ok(Started {
        generation,
        commands: commands_tx,
    })
}

/// Tells an actor to close its connection and waits until it has.
async fn close_actor(link: mpsc::Sender<Command>) {
    let (reply, done) = oneshot::channel();
    if link.send(Command::Close { reply }).await.is_ok() {
        let _ = done.await;
    }
}

/// `Participant::leave`, on the SFU's runtime.
async fn leave(shared: Arc<Shared>, call_id: Uuid, participant: Uuid, generation: u64) {
    let Some(call) = shared.call(call_id) else {
        return;
    };
    let (member, others) = {
        let mut members = lock(&call.members);
        if members
            .get(&participant)
            .is_none_or(|member| member.generation != generation)
        {
            return;
        }
        let Some(member) = members.remove(&participant) else {
            return;
        };
        let others: Vec<mpsc::Sender<Command>> =
            members.values().filter_map(|m| m.link.clone()).collect();
        (member, others)
    };
    shared.remove_call_if_empty(call_id);
    for forwarder in member.published.values() {
        forwarder.close();
    }
    if let Some(link) = member.link {
        close_actor(link).await;
    }
    for other in others {
        let _ = other.send(Command::Unsubscribe(participant)).await;
    }
    tracing::info!("left");
}

/// `Participant::disconnect`, on the SFU's runtime.
async fn disconnect(shared: Arc<Shared>, call_id: Uuid, participant: Uuid, generation: u64) {
    let Some(call) = shared.call(call_id) else {
        return;
    };
    let link = {
        let mut members = lock(&call.members);
        match members.get_mut(&participant) {
            Some(member) if member.generation == generation => member.link.take(),
            _ => None,
        }
    };
    if let Some(link) = link {
        close_actor(link).await;
        tracing::info!("disconnected; tracks kept for a rejoin");
    }
}

/// `Sfu::end_call`, on the SFU's runtime.
pub(crate) async fn end_call(shared: Arc<Shared>, call_id: Uuid) {
    let Some(call) = lock(&shared.calls).remove(&call_id) else {
        return;
    };
    let members: Vec<Member> = lock(&call.members).drain().map(|(_, m)| m).collect();
    for member in &members {
        for forwarder in member.published.values() {
            forwarder.close();
        }
    }
    for member in members {
        if let Some(link) = member.link {
            close_actor(link).await;
        }
    }
    tracing::info!("call ended");
}

/// Owns one participant's connection and serializes everything done to it.
struct Actor {
    shared: Arc<Shared>,
    call: Arc<Call>,
    participant: Uuid,
    pc: Arc<dyn PeerConnection>,
    events: mpsc::Sender<MediaEvent>,
    downs: HashMap<(Uuid, MediaKind), DownTrack>,
    negotiation: Negotiation,
    connected: bool,
    /// `connected`, shared with the downstream tracks' writers.
    link_up: Arc<AtomicBool>,
    /// Publishers whose tracks were added since the last answer: they get a PLI once the
    /// answer is applied and the connection is up.
    awaiting_keyframe: Vec<Arc<Forwarder>>,
    early_candidates: Vec<RTCIceCandidateInit>,
    answered_once: bool,
    first_mid: Option<String>,
}

impl Actor {
    async fn run(
        mut self,
        mut commands: mpsc::Receiver<Command>,
        mut internal: mpsc::Receiver<Internal>,
        initial: Vec<Arc<Forwarder>>,
    ) {
        for forwarder in initial {
            self.subscribe(forwarder).await;
        }
        self.negotiation.request();
        let _ = self.offer_if_due().await;
        loop {
            tokio::select! {
                command = commands.recv() => match command {
                    Some(Command::Close { reply }) => {
                        self.shutdown().await;
                        let _ = reply.send(());
                        return;
                    }
                    Some(command) => self.handle(command).await,
                    None => break,
                },
                Some(event) = internal.recv() => self.handle_internal(event).await,
            }
            let _ = self.offer_if_due().await;
        }
        self.shutdown().await;
    }

    async fn handle(&mut self, command: Command) {
        match command {
            Command::Answer { sdp, reply } => {
                let result = self.apply_answer(sdp).await;
                let applied = result.is_ok();
                let _ = reply.send(result);
                if applied {
                    self.after_answer().await;
                }
            }
            Command::Candidate { init, reply } => {
                let result = if self.answered_once {
                    self.pc
                        .add_ice_candidate(init)
                        .await
                        .map_err(|error| MediaError::InvalidCandidate(error.to_string()))
                } else if self.early_candidates.len() < MAX_EARLY_CANDIDATES {
                    self.early_candidates.push(init);
                    Ok(())
                } else {
                    Err(MediaError::InvalidCandidate(
                        "too many candidates before the answer".to_owned(),
                    ))
                };
                let _ = reply.send(result);
            }
            Command::RestartIce { reply } => {
                self.negotiation.request_restart();
                let result = self.offer_if_due().await;
                let _ = reply.send(result);
            }
            Command::RequestKeyframes => {
                for down in self.downs.values() {
                    down.forwarder.request_keyframe().await;
                }
            }
            Command::Subscribe(forwarder) => self.subscribe(forwarder).await,
            Command::Unsubscribe(publisher) => self.unsubscribe(publisher).await,
            Command::Close { reply } => {
                // Handled in `run`; kept total for the compiler.
                let _ = reply.send(());
            }
        }
    }

    async fn handle_internal(&mut self, event: Internal) {
        match event {
            Internal::Candidate(init) => {
                let event = MediaEvent::Candidate {
                    candidate: self.shared.public.candidate(&init.candidate),
                    sdp_mid: self.first_mid.clone(),
                    sdp_mline_index: Some(0),
                };
                self.notify(event);
            }
            Internal::State(state) => {
                let state = match state {
                    RTCPeerConnectionState::New | RTCPeerConnectionState::Connecting => {
                        ConnectionState::Connecting
                    }
                    RTCPeerConnectionState::Connected => ConnectionState::Connected,
                    RTCPeerConnectionState::Disconnected => ConnectionState::Disconnected,
                    RTCPeerConnectionState::Failed => ConnectionState::Failed,
                    RTCPeerConnectionState::Closed => ConnectionState::Closed,
                    _ => return,
                };
                tracing::info!(?state, "connection");
                let was_connected = self.connected;
                self.connected = state == ConnectionState::Connected;
                self.link_up.store(self.connected, Ordering::Relaxed);
                if self.connected && !was_connected {
                    // Everything this participant receives starts from a keyframe.
                    self.awaiting_keyframe.clear();
                    for down in self.downs.values() {
                        down.forwarder.request_keyframe().await;
                    }
                }
                self.notify(MediaEvent::Connection(state));
            }
        }
    }

    /// Sends a non-offer event without waiting: a full channel drops it.
    fn notify(&self, event: MediaEvent) {
        if self.events.try_send(event).is_err() {
            tracing::warn!(participant = %self.participant, "media event dropped: channel full");
        }
    }

    async fn apply_answer(&mut self, sdp: String) -> Result<(), MediaError> {
        if !self.negotiation.is_outstanding() {
            return Err(MediaError::NoOfferOutstanding);
        }
        let refused =
            |error: webrtc::error::Error| MediaError::InvalidDescription(error.to_string());
        let answer = RTCSessionDescription::answer(sdp).map_err(refused)?;
        self.pc
            .set_remote_description(answer)
            .await
            .map_err(refused)?;
        self.negotiation.answered();
        Ok(())
    }

    async fn after_answer(&mut self) {
        if !self.answered_once {
            self.answered_once = true;
            for init in std::mem::take(&mut self.early_candidates) {
                if let Err(error) = self.pc.add_ice_candidate(init).await {
                    tracing::debug!(%error, "early remote candidate refused");
                }
            }
        }
        for down in self.downs.values() {
            down.refresh().await;
        }
        if self.connected {
            for forwarder in std::mem::take(&mut self.awaiting_keyframe) {
                forwarder.request_keyframe().await;
            }
        }
    }

    /// Makes an offer if one is needed and none is outstanding.
    async fn offer_if_due(&mut self) -> Result<(), MediaError> {
        if !self.negotiation.should_offer() {
            return Ok(());
        }
        let restart = self.negotiation.offering();
        let span = tracing::info_span!(
            "media.renegotiate",
            call = %self.call.id,
            participant = %self.participant,
            restart,
            tracks = self.downs.len()
        );
        let result = self.offer(restart).instrument(span).await;
        if let Err(error) = &result {
            tracing::error!(participant = %self.participant, %error, "offer failed");
            self.negotiation.offer_failed();
        }
        result
    }

    async fn offer(&mut self, restart: bool) -> Result<(), MediaError> {
        let failed = |error: webrtc::error::Error| MediaError::PeerConnection(error.to_string());
        if restart {
            self.pc.restart_ice().await.map_err(failed)?;
        }
        let offer = self.pc.create_offer(None).await.map_err(failed)?;
        self.pc.set_local_description(offer).await.map_err(failed)?;
        let sdp = self
            .pc
            .local_description()
            .await
            .map(|description| description.sdp)
            .ok_or_else(|| MediaError::PeerConnection("no local description".to_owned()))?;
        self.first_mid = first_mid(&sdp);
        let sdp = self.shared.public.sdp(&sdp);
        tracing::debug!("offer sent");
        // Offers must not be lost: wait for room (the receiver is signaling).
        let _ = self.events.send(MediaEvent::Offer { sdp }).await;
        Ok(())
    }

    async fn subscribe(&mut self, forwarder: Arc<Forwarder>) {
        let key = (forwarder.publisher, forwarder.kind);
        if forwarder.publisher == self.participant || self.downs.contains_key(&key) {
            return;
        }
        let ssrc = random_ssrc();
        let stream_id = forwarder.publisher.to_string();
        let track_id = format!("{}-{}", forwarder.publisher, forwarder.kind.as_str());
        let kind = match forwarder.kind {
            MediaKind::Audio => RtpCodecKind::Audio,
            MediaKind::Video => RtpCodecKind::Video,
        };
        // No codec on the encoding: every registered codec of the kind is offered, the
        // browser keeps what it decodes, and a publisher who rejoins with another codec
        // still fits.
        let encoding = RTCRtpEncodingParameters {
            rtp_coding_parameters: RTCRtpCodingParameters {
                ssrc: Some(ssrc),
                ..Default::default()
            },
            ..Default::default()
        };
        let track = Arc::new(TrackLocalStaticRTP::new(MediaStreamTrack::new(
            stream_id.clone(),
            track_id.clone(),
            track_id,
            kind,
            vec![encoding],
        )));
        let init = RTCRtpTransceiverInit {
            direction: RTCRtpTransceiverDirection::Sendonly,
            streams: vec![stream_id],
            send_encodings: vec![],
        };
        let transceiver = match self
            .pc
            .add_transceiver_from_track(Arc::clone(&track) as Arc<dyn TrackLocal>, Some(init))
            .await
        {
            Ok(transceiver) => transceiver,
            Err(error) => {
                tracing::warn!(publisher = %forwarder.publisher, %error, "downstream track not added");
                return;
            }
        };
        let sender = transceiver.sender().await.ok().flatten();
        let state = Arc::new(DownState {
            ssrc,
            track: Arc::clone(&track),
            link_up: Arc::clone(&self.link_up),
            payload_types: Mutex::new(Vec::new()),
        });
        let (queue, packets) = mpsc::channel(SINK_CAPACITY);
        let sink_id = self.shared.next_id();
        forwarder.add_sink(self.participant, Sink { id: sink_id, queue });
        let writer = tokio::spawn(write_downstream(
            Arc::clone(&state),
            packets,
            Arc::clone(&self.shared.counters),
        ));
        let feedback = tokio::spawn(read_feedback(track, Arc::downgrade(&forwarder)));
        Counters::add(&self.shared.counters.subscribed_tracks, 1);
        self.awaiting_keyframe.push(Arc::clone(&forwarder));
        self.downs.insert(
            key,
            DownTrack {
                forwarder,
                sink_id,
                transceiver,
                sender,
                state,
                tasks: [writer, feedback],
            },
        );
        self.negotiation.request();
    }

    async fn unsubscribe(&mut self, publisher: Uuid) {
        for kind in [MediaKind::Audio, MediaKind::Video] {
            if let Some(down) = self.downs.remove(&(publisher, kind)) {
                // Stop the tasks first: the feedback reader holds the track's event queue,
                // which `remove_track` unbinds.
                let sender = down.sender.clone();
                self.release(down);
                if let Some(sender) = sender
                    && let Err(error) = self.pc.remove_track(&sender).await
                {
                    tracing::debug!(%error, "downstream track not removed");
                }
                self.negotiation.request();
            }
        }
        self.awaiting_keyframe
            .retain(|forwarder| forwarder.publisher != publisher);
    }

    /// Detaches a downstream track from its forwarder and stops its tasks.
    fn release(&self, down: DownTrack) {
        down.forwarder.remove_sink(self.participant, down.sink_id);
        for task in &down.tasks {
            task.abort();
        }
        self.shared
            .counters
            .subscribed_tracks
            .fetch_sub(1, Ordering::Relaxed);
    }

    async fn shutdown(&mut self) {
        for (_, down) in std::mem::take(&mut self.downs) {
            self.release(down);
        }
        if let Err(error) = self.pc.close().await {
            tracing::debug!(%error, "close");
        }
    }
}

/// Whether a negotiated codec is a repair format (RTX, FEC, RED) rather than media.
fn is_repair_codec(mime_type: &str) -> bool {
    let subtype = mime_type
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    matches!(
        subtype.as_str(),
        "rtx" | "red" | "ulpfec" | "flexfec" | "flexfec-03"
    )
}

/// The mid of the first media section, which trickled candidates name (all are bundled).
fn first_mid(sdp: &str) -> Option<String> {
    sdp.lines()
        .find_map(|line| line.trim_end().strip_prefix("a=mid:"))
        .map(str::to_owned)
}

/// A random non-zero SSRC for a downstream track.
fn random_ssrc() -> u32 {
    let bytes = Uuid::new_v4().into_bytes();
    u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_offer_is_made_at_once() {
        let mut n = Negotiation::default();
        n.request();
        assert!(n.should_offer());
        assert!(!n.offering());
        assert!(n.is_outstanding());
        assert!(!n.should_offer());
    }

    #[test]
    fn changes_while_an_offer_is_outstanding_become_one_follow_up_offer() {
        let mut n = Negotiation::default();
        n.request();
        n.offering();
        n.request();
        n.request();
        assert!(!n.should_offer(), "never two offers outstanding");
        n.answered();
        assert!(n.should_offer());
        n.offering();
        n.answered();
        assert!(!n.should_offer(), "the two changes needed one offer");
    }

    #[test]
    fn an_ice_restart_waits_for_the_outstanding_answer_and_restarts_once() {
        let mut n = Negotiation::default();
        n.request();
        n.offering();
        n.request_restart();
        assert!(!n.should_offer());
        n.answered();
        assert!(n.should_offer());
        assert!(n.offering(), "this offer restarts ICE");
        n.answered();
        n.request();
        assert!(!n.offering(), "the next one does not");
    }

    #[test]
    fn a_failed_offer_leaves_nothing_outstanding() {
        let mut n = Negotiation::default();
        n.request();
        n.offering();
        n.offer_failed();
        assert!(!n.is_outstanding());
        assert!(!n.should_offer());
    }

    #[test]
    fn repair_formats_are_not_forwarded_as_media() {
        assert!(is_repair_codec("video/rtx"));
        assert!(is_repair_codec("video/ulpfec"));
        assert!(is_repair_codec("video/flexfec-03"));
        assert!(!is_repair_codec("video/VP8"));
        assert!(!is_repair_codec("audio/opus"));
    }

    #[test]
    fn first_mid_reads_the_first_media_section() {
        let sdp =
            "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\nm=video 9 x 96\r\na=mid:1\r\n";
        assert_eq!(first_mid(sdp).as_deref(), Some("0"));
        assert_eq!(first_mid("v=0\r\n"), None);
    }
}
