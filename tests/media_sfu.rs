//! The SFU against real `webrtc`-crate peers acting like browsers, over loopback.
//!
//! Each [`Client`] answers the SFU's offers, sends synthetic Opus (50 pps) and VP8
//! (100 pps) RTP whose payload starts with its participant id and a kind byte, and records
//! what it receives per remote track. Every wait is on a condition with a generous bound, so
//! a loaded machine makes the tests slower, not flaky.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::peer::{local_track, negotiated_codec, packet, payload_type, rand_u32};
use neulbi::media::{ConnectionState, MediaEvent, MediaKind, MediaSettings, Participant, Sfu};
use rtc::interceptor::{Attribute, Interceptor, Packet, Slot, StreamInfo, TaggedPacket};
use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;
use rtc::sansio::Protocol;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use uuid::Uuid;
use webrtc::media_stream::track_local::{TrackLocal, TrackLocalEvent};
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{
    MediaEngine, PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler,
    RTCIceCandidateInit, RTCPeerConnectionIceEvent, RTCSessionDescription, Registry,
    register_default_interceptors,
};
use webrtc::rtp_transceiver::RtpSender;

/// The bound on every wait: far above what any step takes on an idle machine.
const PATIENCE: Duration = Duration::from_secs(20);

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}

fn sfu(stall_after: Duration) -> Sfu {
    Sfu::new(MediaSettings {
        udp_addrs: vec![SocketAddr::from(([127, 0, 0, 1], 0))],
        stall_after,
        ..MediaSettings::default()
    })
    .expect("sfu")
}

/// Waits until `condition` holds, polling; panics with `what` after [`PATIENCE`].
async fn eventually(what: &str, condition: impl Fn() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What one remote track delivered.
#[derive(Debug, Clone, Default)]
struct Received {
    mime: String,
    /// Payload type of the last packet (names the codec when `mime` is empty).
    payload_type: u8,
    packets: u64,
    /// Publisher id and kind byte read from the payloads (the last one seen).
    origin: Option<(Uuid, u8)>,
    /// Sequence numbers, the most recent ones.
    recent_seqs: VecDeque<u16>,
    /// The largest distance (either way, modulo 2^16) between consecutive sequence numbers.
    largest_jump: u16,
}

#[derive(Default)]
struct Observed {
    /// Remote tracks by track id.
    tracks: Mutex<HashMap<String, Received>>,
    on_track_calls: AtomicU64,
    /// Remote tracks by track id, to send RTCP on them.
    remotes: Mutex<HashMap<String, Arc<dyn TrackRemote>>>,
    /// Keyframe requests (PLI/FIR) that reached this client's senders.
    keyframe_requests: AtomicU64,
    offers: Mutex<Vec<String>>,
    events: Mutex<Vec<MediaEvent>>,
    answers_applied: AtomicU64,
    /// The SFU reported this participant's connection up.
    connected: AtomicBool,
}

impl Observed {
    fn tracks(&self) -> HashMap<String, Received> {
        self.tracks.lock().unwrap().clone()
    }

    /// Tracks that carried media from `publisher` with kind byte `kind`.
    fn from(&self, publisher: Uuid, kind: u8) -> Vec<(String, Received)> {
        self.tracks()
            .into_iter()
            .filter(|(_, r)| r.origin == Some((publisher, kind)))
            .collect()
    }

    fn packets_from(&self, publisher: Uuid, kind: u8) -> u64 {
        self.from(publisher, kind)
            .iter()
            .map(|(_, r)| r.packets)
            .sum()
    }

    fn saw(&self, wanted: impl Fn(&MediaEvent) -> bool) -> bool {
        self.events.lock().unwrap().iter().any(wanted)
    }

    fn connected(&self) -> bool {
        self.connected.load(Ordering::SeqCst)
    }
}

/// A browser stand-in: one webrtc-crate peer connection answering the SFU.
struct Client {
    id: Uuid,
    participant: Participant,
    pc: Arc<dyn PeerConnection>,
    seen: Arc<Observed>,
    sending: Arc<AtomicBool>,
    /// While set, offers are recorded but not answered (a slow browser).
    hold_answers: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<()>>,
}

struct ClientHandler {
    candidates: mpsc::Sender<RTCIceCandidateInit>,
    seen: Arc<Observed>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for ClientHandler {
    async fn on_ice_candidate(&self, event: RTCPeerConnectionIceEvent) {
        if let Ok(init) = event.candidate.to_json() {
            let _ = self.candidates.try_send(init);
        }
    }

    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        self.seen.on_track_calls.fetch_add(1, Ordering::SeqCst);
        let seen = Arc::clone(&self.seen);
        tokio::spawn(async move {
            let id = track.track_id().await.to_string();
            let ssrc = track.ssrcs().await.first().copied().unwrap_or_default();
            let mut mime = track
                .codec(ssrc)
                .await
                .map(|c| c.mime_type)
                .unwrap_or_default();
            seen.tracks
                .lock()
                .unwrap()
                .entry(id.clone())
                .or_default()
                .mime = mime.clone();
            seen.remotes
                .lock()
                .unwrap()
                .insert(id.clone(), Arc::clone(&track));
            while let Some(event) = track.poll().await {
                if let TrackRemoteEvent::OnRtpPacket(packet) = event {
                    // The codec may not be known yet when the track is announced.
                    if mime.is_empty() {
                        mime = track
                            .codec(packet.header.ssrc)
                            .await
                            .map(|c| c.mime_type)
                            .unwrap_or_default();
                    }
                    let mut tracks = seen.tracks.lock().unwrap();
                    let r = tracks.entry(id.clone()).or_default();
                    if r.mime.is_empty() {
                        r.mime = mime.clone();
                    }
                    r.packets += 1;
                    r.payload_type = packet.header.payload_type;
                    if packet.payload.len() >= 17 {
                        let uuid = Uuid::from_slice(&packet.payload[..16]).unwrap_or_default();
                        r.origin = Some((uuid, packet.payload[16]));
                    }
                    let seq = packet.header.sequence_number;
                    if let Some(last) = r.recent_seqs.back() {
                        let jump = seq.wrapping_sub(*last).min(last.wrapping_sub(seq));
                        r.largest_jump = r.largest_jump.max(jump);
                    }
                    r.recent_seqs.push_back(seq);
                    if r.recent_seqs.len() > 64 {
                        r.recent_seqs.pop_front();
                    }
                }
            }
        });
    }
}

/// Marks inbound PLI/FIR for the application, so the test sees what reached the publisher.
struct KeyframeMarker {
    reads: VecDeque<TaggedPacket>,
    writes: VecDeque<TaggedPacket>,
}

impl Protocol<TaggedPacket, TaggedPacket, ()> for KeyframeMarker {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = rtc::shared::error::Error;
    type Time = Instant;

    fn handle_read(&mut self, mut msg: TaggedPacket) -> Result<(), Self::Error> {
        if let Packet::Rtcp(packets) = &msg.message.packet {
            let keep: Vec<_> = packets
                .iter()
                .filter(|p| {
                    p.as_any().is::<PictureLossIndication>() || p.as_any().is::<FullIntraRequest>()
                })
                .cloned()
                .collect();
            if keep.is_empty() {
                return Ok(());
            }
            msg.message.packet = Packet::Rtcp(keep);
            msg.message.add(Attribute::DeliverToApplication);
        }
        self.reads.push_back(msg);
        Ok(())
    }
    fn poll_read(&mut self) -> Option<TaggedPacket> {
        self.reads.pop_front()
    }
    fn handle_write(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        self.writes.push_back(msg);
        Ok(())
    }
    fn poll_write(&mut self) -> Option<TaggedPacket> {
        self.writes.pop_front()
    }
}

impl Interceptor for KeyframeMarker {
    fn bind_local_stream(&mut self, _: &StreamInfo) {}
    fn unbind_local_stream(&mut self, _: &StreamInfo) {}
    fn bind_remote_stream(&mut self, _: &StreamInfo) {}
    fn unbind_remote_stream(&mut self, _: &StreamInfo) {}
}

impl Client {
    async fn join(sfu: &Sfu, call: Uuid, id: Uuid) -> Client {
        Client::join_holding(sfu, call, id, false).await
    }

    async fn join_holding(sfu: &Sfu, call: Uuid, id: Uuid, hold: bool) -> Client {
        let hold_answers = Arc::new(AtomicBool::new(hold));
        let (events_tx, mut events) = mpsc::channel(64);
        let participant = sfu.join(call, id, events_tx).await.expect("join");
        let seen = Arc::new(Observed::default());
        let (candidates_tx, mut candidates) = mpsc::channel(64);

        let mut media_engine = MediaEngine::default();
        media_engine.register_default_codecs().unwrap();
        let registry = register_default_interceptors(Registry::new(), &mut media_engine)
            .unwrap()
            .with(
                Slot::from(14_000),
                KeyframeMarker {
                    reads: VecDeque::new(),
                    writes: VecDeque::new(),
                },
            );
        let pc: Arc<dyn PeerConnection> = Arc::new(
            PeerConnectionBuilder::new()
                .with_media_engine(media_engine)
                .with_interceptor_registry(registry)
                .with_handler(Arc::new(ClientHandler {
                    candidates: candidates_tx,
                    seen: Arc::clone(&seen),
                }))
                .with_udp_addrs(vec![SocketAddr::from(([127, 0, 0, 1], 0))])
                .build()
                .await
                .expect("client pc"),
        );

        let (audio_ssrc, video_ssrc) = (rand_u32(), rand_u32());
        let audio = local_track(RtpCodecKind::Audio, "audio/opus", 48_000, 2, audio_ssrc);
        let video = local_track(RtpCodecKind::Video, "video/VP8", 90_000, 0, video_ssrc);
        let sending = Arc::new(AtomicBool::new(true));
        let mut tasks = Vec::new();

        // Signaling: answer every offer, attaching the local tracks to the first (uplink)
        // audio and video sections on the first one; apply the SFU's candidates.
        let (senders_tx, mut senders_rx) = mpsc::channel::<[Arc<dyn RtpSender>; 2]>(1);
        {
            let pc = Arc::clone(&pc);
            let participant = participant.clone();
            let seen = Arc::clone(&seen);
            let hold = Arc::clone(&hold_answers);
            let (audio, video) = (Arc::clone(&audio), Arc::clone(&video));
            tasks.push(tokio::spawn(async move {
                let mut attached = false;
                while let Some(event) = events.recv().await {
                    match &event {
                        MediaEvent::Offer { sdp } => {
                            seen.offers.lock().unwrap().push(sdp.clone());
                            while hold.load(Ordering::SeqCst) {
                                tokio::time::sleep(Duration::from_millis(10)).await;
                            }
                            let offer = RTCSessionDescription::offer(sdp.clone()).unwrap();
                            pc.set_remote_description(offer)
                                .await
                                .expect("remote offer");
                            if !attached {
                                attached = true;
                                let a = pc
                                    .add_track(Arc::clone(&audio) as Arc<dyn TrackLocal>)
                                    .await
                                    .unwrap();
                                let v = pc
                                    .add_track(Arc::clone(&video) as Arc<dyn TrackLocal>)
                                    .await
                                    .unwrap();
                                let _ = senders_tx.send([a, v]).await;
                            }
                            let answer = pc.create_answer(None).await.expect("answer");
                            pc.set_local_description(answer)
                                .await
                                .expect("local answer");
                            let sdp = pc.local_description().await.unwrap().sdp;
                            participant.apply_answer(sdp).await.expect("apply answer");
                            seen.answers_applied.fetch_add(1, Ordering::SeqCst);
                        }
                        MediaEvent::Candidate {
                            candidate,
                            sdp_mid,
                            sdp_mline_index,
                        } => {
                            let init = RTCIceCandidateInit {
                                candidate: candidate.clone(),
                                sdp_mid: sdp_mid.clone(),
                                sdp_mline_index: *sdp_mline_index,
                                ..Default::default()
                            };
                            pc.add_ice_candidate(init).await.expect("sfu candidate");
                        }
                        MediaEvent::Connection(state) => seen
                            .connected
                            .store(*state == ConnectionState::Connected, Ordering::SeqCst),
                        _ => {}
                    }
                    seen.events.lock().unwrap().push(event);
                }
            }));
        }
        {
            let participant = participant.clone();
            tasks.push(tokio::spawn(async move {
                while let Some(init) = candidates.recv().await {
                    participant
                        .add_ice_candidate(init.candidate, init.sdp_mid, init.sdp_mline_index)
                        .await
                        .expect("client candidate");
                }
            }));
        }
        // Media: Opus every 20 ms, VP8 every 10 ms, once the senders exist.
        {
            let sending = Arc::clone(&sending);
            let seen = Arc::clone(&seen);
            tasks.push(tokio::spawn(async move {
                let Some([audio_sender, video_sender]) = senders_rx.recv().await else {
                    return;
                };
                for sender in [&audio_sender, &video_sender] {
                    let track = Arc::clone(sender.track());
                    let seen = Arc::clone(&seen);
                    tokio::spawn(async move {
                        while let Some(event) = track.poll().await {
                            if let TrackLocalEvent::OnRtcpPacket(packets) = event {
                                seen.keyframe_requests
                                    .fetch_add(packets.len() as u64, Ordering::SeqCst);
                            }
                        }
                    });
                }
                let mut audio_pt = None;
                let mut video_pt = None;
                let mut tick: u32 = 0;
                let seq_base = rand_u32() as u16;
                let ts_base = rand_u32();
                let mut interval = tokio::time::interval(Duration::from_millis(10));
                loop {
                    interval.tick().await;
                    tick = tick.wrapping_add(1);
                    if !seen.connected.load(Ordering::SeqCst) {
                        continue;
                    }
                    if audio_pt.is_none() {
                        audio_pt = payload_type(&audio_sender, "audio/opus").await;
                        video_pt = payload_type(&video_sender, "video/VP8").await;
                    }
                    let (Some(apt), Some(vpt)) = (audio_pt, video_pt) else {
                        continue;
                    };
                    if !sending.load(Ordering::SeqCst) {
                        continue;
                    }
                    // Random starts, as a browser's: a rejoin starts somewhere else entirely.
                    let video_seq = (tick as u16).wrapping_add(seq_base);
                    let video_ts = tick.wrapping_mul(900).wrapping_add(ts_base);
                    let _ = video
                        .write_rtp(packet(
                            id,
                            b'V',
                            vpt,
                            video_ssrc,
                            video_seq,
                            video_ts,
                            tick.is_multiple_of(3),
                        ))
                        .await;
                    if tick.is_multiple_of(2) {
                        let n = tick / 2;
                        let (seq, ts) = (
                            (n as u16).wrapping_add(seq_base),
                            n.wrapping_mul(960).wrapping_add(ts_base),
                        );
                        let _ = audio
                            .write_rtp(packet(id, b'A', apt, audio_ssrc, seq, ts, false))
                            .await;
                    }
                }
            }));
        }
        Client {
            id,
            participant,
            pc,
            seen,
            sending,
            hold_answers,
            tasks,
        }
    }

    /// Closes the client side (the browser tab went away) without telling the SFU.
    async fn vanish(self) {
        for task in &self.tasks {
            task.abort();
        }
        let _ = self.pc.close().await;
    }
}

/// Waits until `to` receives audio and video from `from` with the right codecs.
async fn receives_from(to: &Client, from: &Client) {
    let seen = Arc::clone(&to.seen);
    let from_id = from.id;
    eventually(
        &format!("{} receives {}'s audio and video", to.id, from_id),
        || seen.packets_from(from_id, b'A') >= 10 && seen.packets_from(from_id, b'V') >= 20,
    )
    .await;
    for (kind, mime) in [(b'A', "audio/opus"), (b'V', "video/VP8")] {
        let tracks = seen.from(from_id, kind);
        assert_eq!(
            tracks.len(),
            1,
            "one {} track from {from_id}: {tracks:?}",
            kind as char
        );
        // An unnamed codec (webrtc 0.21 loses it when a renegotiation lands between a
        // stream's first packet and its track event) is the one negotiated for the packets.
        let track = &tracks[0].1;
        let got = if track.mime.is_empty() {
            negotiated_codec(&to.pc, track.payload_type).await
        } else {
            track.mime.clone()
        };
        assert!(
            got.eq_ignore_ascii_case(mime),
            "codec of {} is {got:?} (payload type {})",
            kind as char,
            track.payload_type
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_peers_receive_each_others_opus_and_vp8() {
    init_tracing();
    let sfu = sfu(Duration::from_secs(3));
    let call = Uuid::new_v4();
    let a = Client::join(&sfu, call, Uuid::new_v4()).await;
    let b = Client::join(&sfu, call, Uuid::new_v4()).await;
    receives_from(&a, &b).await;
    receives_from(&b, &a).await;
    assert_eq!(a.seen.tracks().len(), 2, "a receives only b's two tracks");
    let stats = sfu.stats();
    assert_eq!(stats.calls, 1);
    assert_eq!(stats.participants, 2);
    assert_eq!(stats.published_tracks, 4);
    assert_eq!(stats.subscribed_tracks, 4);
    assert!(stats.forwarded_packets > 0 && stats.forwarded_bytes > 0);
    a.participant.leave().await;
    b.participant.leave().await;
    assert_eq!(sfu.stats().calls, 0);
}

/// The SFU's API hops onto its own runtime, so a current-thread runtime (an actix-web
/// worker's) can drive it.
#[test]
fn a_current_thread_runtime_can_drive_the_sfu() {
    init_tracing();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let sfu = sfu(Duration::from_secs(3));
    runtime.block_on(async {
        let call = Uuid::new_v4();
        let a = Client::join(&sfu, call, Uuid::new_v4()).await;
        let b = Client::join(&sfu, call, Uuid::new_v4()).await;
        receives_from(&a, &b).await;
        receives_from(&b, &a).await;
        sfu.end_call(call).await;
        assert_eq!(sfu.stats().calls, 0);
        let _ = a
            .participant
            .apply_answer("v=0".into())
            .await
            .expect_err("gone");
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_peers_each_receive_two_audio_and_two_video() {
    init_tracing();
    let sfu = sfu(Duration::from_secs(3));
    let call = Uuid::new_v4();
    let a = Client::join(&sfu, call, Uuid::new_v4()).await;
    let b = Client::join(&sfu, call, Uuid::new_v4()).await;
    let c = Client::join(&sfu, call, Uuid::new_v4()).await;
    for (to, from) in [(&a, &b), (&a, &c), (&b, &a), (&b, &c), (&c, &a), (&c, &b)] {
        receives_from(to, from).await;
    }
    for client in [&a, &b, &c] {
        assert_eq!(client.seen.tracks().len(), 4);
    }
    // The offer's shape, as a browser sees it: the uplink first (recvonly audio, recvonly
    // video), then one sendonly section per received track, its msid naming the publisher.
    let offer = c.seen.offers.lock().unwrap().last().unwrap().clone();
    let sections: Vec<&str> = offer.split("\r\nm=").skip(1).collect();
    assert!(sections[0].starts_with("audio") && sections[0].contains("a=recvonly"));
    assert!(sections[1].starts_with("video") && sections[1].contains("a=recvonly"));
    for publisher in [a.id, b.id] {
        for kind in ["audio", "video"] {
            let msid = format!("a=msid:{publisher} {publisher}-{kind}");
            assert!(
                sections[2..]
                    .iter()
                    .any(|s| s.starts_with(kind) && s.contains(&msid) && s.contains("a=sendonly")),
                "a sendonly {kind} section with {msid}"
            );
        }
    }
    // One leaves: the others are renegotiated and keep receiving each other.
    let offers_before = b.seen.offers.lock().unwrap().len();
    c.participant.leave().await;
    let seen = Arc::clone(&b.seen);
    eventually("b gets an offer without c's tracks", || {
        seen.offers.lock().unwrap().len() > offers_before
    })
    .await;
    let before = b.seen.packets_from(a.id, b'V');
    let seen = Arc::clone(&b.seen);
    let a_id = a.id;
    eventually("b still receives a after c left", || {
        seen.packets_from(a_id, b'V') > before + 20
    })
    .await;
    assert_eq!(sfu.stats().participants, 2);
}

fn ice_ufrag(sdp: &str) -> Option<String> {
    sdp.lines()
        .find_map(|l| l.trim_end().strip_prefix("a=ice-ufrag:"))
        .map(str::to_owned)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_restarts_ice_and_keeps_receiving() {
    init_tracing();
    let sfu = sfu(Duration::from_secs(3));
    let call = Uuid::new_v4();
    let a = Client::join(&sfu, call, Uuid::new_v4()).await;
    let b = Client::join(&sfu, call, Uuid::new_v4()).await;
    receives_from(&a, &b).await;
    receives_from(&b, &a).await;
    let offers_before = a.seen.offers.lock().unwrap().len();
    let answers_before = a.seen.answers_applied.load(Ordering::SeqCst);
    let ufrag_before = ice_ufrag(a.seen.offers.lock().unwrap().last().unwrap());
    a.participant.restart_ice().await.expect("restart");
    let seen = Arc::clone(&a.seen);
    eventually("a answered the restart offer", || {
        seen.answers_applied.load(Ordering::SeqCst) > answers_before
    })
    .await;
    let offers = a.seen.offers.lock().unwrap().clone();
    assert_eq!(offers.len(), offers_before + 1);
    assert_ne!(
        ice_ufrag(offers.last().unwrap()),
        ufrag_before,
        "fresh ICE credentials"
    );
    let (a_from_b, b_from_a) = (
        a.seen.packets_from(b.id, b'V'),
        b.seen.packets_from(a.id, b'V'),
    );
    let (sa, sb, a_id, b_id) = (Arc::clone(&a.seen), Arc::clone(&b.seen), a.id, b.id);
    eventually("media flows both ways after the restart", || {
        sa.packets_from(b_id, b'V') > a_from_b + 100 && sb.packets_from(a_id, b'V') > b_from_a + 100
    })
    .await;
    assert!(
        !a.seen
            .saw(|e| *e == MediaEvent::Connection(ConnectionState::Failed))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_disconnects_and_rejoins_and_the_others_keep_their_tracks() {
    init_tracing();
    let sfu = sfu(Duration::from_secs(3));
    let call = Uuid::new_v4();
    let a_id = Uuid::new_v4();
    let a = Client::join(&sfu, call, a_id).await;
    let b = Client::join(&sfu, call, Uuid::new_v4()).await;
    receives_from(&b, &a).await;
    receives_from(&a, &b).await;
    let on_tracks = b.seen.on_track_calls.load(Ordering::SeqCst);
    let offers = b.seen.offers.lock().unwrap().len();
    let tracks_before: Vec<String> = b.seen.tracks().into_keys().collect();

    // Signaling lost: the SFU closes a's connection, the tab goes away.
    a.participant.disconnect().await;
    let stale = a.participant.clone();
    a.vanish().await;
    let before = b.seen.packets_from(a_id, b'V');

    // A new connection for the same participant.
    let a2 = Client::join(&sfu, call, a_id).await;
    receives_from(&a2, &b).await;
    let seen = Arc::clone(&b.seen);
    eventually("b receives a's video again", || {
        seen.packets_from(a_id, b'V') > before + 50
    })
    .await;
    assert_eq!(
        b.seen.on_track_calls.load(Ordering::SeqCst),
        on_tracks,
        "no new remote track at b"
    );
    assert_eq!(
        b.seen.offers.lock().unwrap().len(),
        offers,
        "b was not renegotiated"
    );
    let mut tracks_after: Vec<String> = b.seen.tracks().into_keys().collect();
    let mut tracks_before = tracks_before;
    tracks_after.sort();
    tracks_before.sort();
    assert_eq!(tracks_after, tracks_before, "the same remote tracks");
    for (_, received) in b.seen.from(a_id, b'V') {
        assert!(
            received.largest_jump < 1000,
            "sequence numbers continue across the rejoin (largest jump {})",
            received.largest_jump
        );
    }
    // The stale handle can no longer disturb the new connection.
    assert!(stale.apply_answer("v=0".into()).await.is_err());
    stale.leave().await;
    assert_eq!(sfu.stats().participants, 2);
    // Rejoining while still connected replaces the connection the same way.
    let a3 = Client::join(&sfu, call, a_id).await;
    let before = b.seen.packets_from(a_id, b'V');
    let seen = Arc::clone(&b.seen);
    eventually("b receives a's third connection", || {
        seen.packets_from(a_id, b'V') > before + 50
    })
    .await;
    assert_eq!(b.seen.on_track_calls.load(Ordering::SeqCst), on_tracks);
    receives_from(&a3, &b).await;
    drop(a2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joining_subscriber_makes_the_sfu_ask_the_publisher_for_a_keyframe() {
    init_tracing();
    let sfu = sfu(Duration::from_secs(3));
    let call = Uuid::new_v4();
    let a = Client::join(&sfu, call, Uuid::new_v4()).await;
    let (seen, a_id) = (Arc::clone(&a.seen), a.id);
    eventually("a's video is published", || {
        seen.saw(|e| {
            *e == MediaEvent::TrackPublished {
                participant: a_id,
                kind: MediaKind::Video,
            }
        })
    })
    .await;
    assert_eq!(
        a.seen.keyframe_requests.load(Ordering::SeqCst),
        0,
        "nobody watches yet"
    );
    let b = Client::join(&sfu, call, Uuid::new_v4()).await;
    receives_from(&b, &a).await;
    assert!(
        b.seen.saw(|e| *e
            == MediaEvent::TrackPublished {
                participant: a_id,
                kind: MediaKind::Video
            }),
        "a joiner hears of the tracks already published"
    );
    eventually("the publisher got a PLI", || {
        seen.keyframe_requests.load(Ordering::SeqCst) > 0
    })
    .await;
    assert!(sfu.stats().keyframe_requests > 0);

    // A subscriber's own PLI (its decoder lost a frame) is relayed to the publisher, even
    // right after the join's request (it is deferred, not dropped, by the throttle).
    let before = a.seen.keyframe_requests.load(Ordering::SeqCst);
    let (id, _) = b.seen.from(a_id, b'V').pop().expect("a's video at b");
    let remote = b
        .seen
        .remotes
        .lock()
        .unwrap()
        .get(&id)
        .cloned()
        .expect("remote track");
    let media_ssrc = remote.ssrcs().await.first().copied().expect("ssrc");
    remote
        .write_rtcp(vec![Box::new(PictureLossIndication {
            sender_ssrc: 0,
            media_ssrc,
        })])
        .await
        .expect("pli");
    eventually("the subscriber's PLI reached the publisher", || {
        seen.keyframe_requests.load(Ordering::SeqCst) > before
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_publisher_is_reported_stalled_and_then_resumed() {
    init_tracing();
    let stall_after = Duration::from_secs(1);
    let sfu = sfu(stall_after);
    let call = Uuid::new_v4();
    let a = Client::join(&sfu, call, Uuid::new_v4()).await;
    let b = Client::join(&sfu, call, Uuid::new_v4()).await;
    receives_from(&b, &a).await;
    let a_id = a.id;
    a.sending.store(false, Ordering::SeqCst);
    let stopped = Instant::now();
    let seen = Arc::clone(&b.seen);
    eventually("b hears that a stalled", || {
        seen.saw(|e| *e == MediaEvent::PublisherStalled { participant: a_id })
    })
    .await;
    let took = stopped.elapsed();
    assert!(
        took >= stall_after - Duration::from_millis(100),
        "not before stall_after ({took:?})"
    );
    // Generous for a loaded machine; on an idle one it is stall_after + ~0.3 s.
    assert!(took < stall_after + Duration::from_secs(5), "took {took:?}");
    assert!(
        !a.seen
            .saw(|e| matches!(e, MediaEvent::PublisherStalled { .. })),
        "the publisher itself is not told"
    );
    a.sending.store(true, Ordering::SeqCst);
    eventually("b hears that a resumed", || {
        seen.saw(|e| *e == MediaEvent::PublisherResumed { participant: a_id })
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_without_an_offer_is_refused() {
    init_tracing();
    let sfu = sfu(Duration::from_secs(3));
    let call = Uuid::new_v4();
    let a = Client::join(&sfu, call, Uuid::new_v4()).await;
    let seen = Arc::clone(&a.seen);
    eventually("a is connected", || seen.connected()).await;
    let error = a
        .participant
        .apply_answer("v=0\r\n".into())
        .await
        .expect_err("no offer outstanding");
    assert!(
        matches!(error, neulbi::media::MediaError::NoOfferOutstanding),
        "{error}"
    );
    a.participant.leave().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_while_an_offer_is_unanswered_become_one_follow_up_offer() {
    init_tracing();
    let sfu = sfu(Duration::from_secs(3));
    let call = Uuid::new_v4();
    let a = Client::join_holding(&sfu, call, Uuid::new_v4(), true).await;
    let seen = Arc::clone(&a.seen);
    eventually("a has its first offer", || {
        !seen.offers.lock().unwrap().is_empty()
    })
    .await;
    // Two others join and publish while a sits on its offer.
    let b = Client::join(&sfu, call, Uuid::new_v4()).await;
    let c = Client::join(&sfu, call, Uuid::new_v4()).await;
    receives_from(&b, &c).await;
    receives_from(&c, &b).await;
    let stats_sfu = sfu.clone();
    eventually("a's connection holds b's and c's tracks", || {
        // b and c send each other 4 tracks; a gets 4 more.
        stats_sfu.stats().subscribed_tracks == 8
    })
    .await;
    assert_eq!(
        a.seen.offers.lock().unwrap().len(),
        1,
        "no second offer while one is unanswered"
    );
    a.hold_answers.store(false, Ordering::SeqCst);
    receives_from(&a, &b).await;
    receives_from(&a, &c).await;
    assert_eq!(
        a.seen.offers.lock().unwrap().len(),
        2,
        "the four new tracks came in one follow-up offer"
    );
}

/// Address and port of a `candidate:` line.
fn candidate_address(candidate: &str) -> Option<(String, u16)> {
    let fields: Vec<&str> = candidate.split_whitespace().collect();
    Some((fields.get(4)?.to_string(), fields.get(5)?.parse().ok()?))
}

fn candidates(seen: &Observed) -> Vec<(String, u16)> {
    seen.events
        .lock()
        .unwrap()
        .iter()
        .filter_map(|e| match e {
            MediaEvent::Candidate { candidate, .. } => candidate_address(candidate),
            _ => None,
        })
        .collect()
}

/// Ten consecutive UDP ports on 127.0.0.1 that were free a moment ago.
fn free_port_range() -> (u16, u16) {
    for _ in 0..50 {
        let probe = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let low = probe.local_addr().unwrap().port();
        drop(probe);
        if low < 65_000
            && (low..low + 10).all(|p| std::net::UdpSocket::bind(("127.0.0.1", p)).is_ok())
        {
            return (low, low + 9);
        }
    }
    panic!("no free port range");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ports_come_from_the_configured_range_and_public_ips_are_advertised() {
    init_tracing();
    let (low, high) = free_port_range();
    let sfu = Sfu::new(MediaSettings {
        udp_port_range: Some((low, high)),
        ..MediaSettings::default()
    })
    .expect("sfu");
    let call = Uuid::new_v4();
    let a = Client::join(&sfu, call, Uuid::new_v4()).await;
    let b = Client::join(&sfu, call, Uuid::new_v4()).await;
    receives_from(&a, &b).await;
    receives_from(&b, &a).await;
    let ports: Vec<u16> = [&a, &b]
        .iter()
        .flat_map(|c| candidates(&c.seen))
        .map(|(_, port)| port)
        .collect();
    assert!(!ports.is_empty());
    assert!(
        ports.iter().all(|p| (low..=high).contains(p)),
        "{ports:?} in {low}-{high}"
    );

    // 1:1 NAT: the candidates name the public address, not the bound one.
    let public: std::net::IpAddr = "203.0.113.7".parse().unwrap();
    let sfu = Sfu::new(MediaSettings {
        public_ips: vec![public],
        ..MediaSettings::default()
    })
    .expect("sfu");
    let c = Client::join(&sfu, Uuid::new_v4(), Uuid::new_v4()).await;
    let seen = Arc::clone(&c.seen);
    eventually("a candidate is trickled", || !candidates(&seen).is_empty()).await;
    let addresses: Vec<String> = candidates(&c.seen).into_iter().map(|(a, _)| a).collect();
    assert!(
        addresses.iter().all(|a| *a == public.to_string()),
        "{addresses:?}"
    );
    for offer in c.seen.offers.lock().unwrap().iter() {
        for line in offer.lines().filter(|l| l.starts_with("a=candidate:")) {
            let (address, _) = candidate_address(&line[2..]).expect("candidate line");
            assert_eq!(address, public.to_string(), "{line}");
        }
    }
}
