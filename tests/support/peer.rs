//! A browser stand-in for call tests: a `webrtc`-crate peer connection that speaks `/rtc`
//! signaling like the web client does (auth, join, answer every server offer, trickle ICE),
//! sends synthetic Opus (50 pps) and VP8 (100 pps) RTP whose payload starts with its user id
//! and a kind byte, and records what it receives per remote track and every signaling
//! message. Relay-only mode uses the TURN servers handed out in `joined`.

use futures::{SinkExt, StreamExt};
use rtc::media_stream::MediaStreamTrack;
use rtc::rtp;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use uuid::Uuid;
use webrtc::media_stream::track_local::TrackLocal;
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{
    MediaEngine, PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler,
    RTCConfigurationBuilder, RTCIceCandidateInit, RTCIceServer, RTCIceTransportPolicy,
    RTCPeerConnectionIceEvent, RTCPeerConnectionState, RTCSessionDescription, Registry,
    register_default_interceptors,
};
use webrtc::rtp_transceiver::RtpSender;

/// The bound on every wait: far above what any step takes on an idle machine.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// What one remote track delivered.
#[derive(Debug, Clone, Default)]
pub struct Received {
    /// The codec the track names; empty when webrtc 0.21 could not name it (see `receives`).
    pub mime: String,
    /// Payload type of the last packet, to find the negotiated codec when `mime` is empty.
    pub payload_type: u8,
    pub packets: u64,
    /// Publisher id and kind byte read from the payloads (the last one seen).
    pub origin: Option<(Uuid, u8)>,
}

/// Everything the browser saw.
#[derive(Default)]
pub struct Observed {
    /// Remote tracks by track id.
    pub tracks: Mutex<HashMap<String, Received>>,
    pub on_track_calls: AtomicU64,
    /// Every signaling message from the server, in order.
    pub messages: Mutex<Vec<Value>>,
    pub answers_sent: AtomicU64,
    pub connected: AtomicBool,
    /// Candidate lines of the local description, for relay checks.
    pub local_candidates: Mutex<Vec<String>>,
}

impl Observed {
    /// Packets received from `publisher` of kind `kind` (`b'A'` / `b'V'`), over all tracks.
    pub fn packets_from(&self, publisher: Uuid, kind: u8) -> u64 {
        self.from(publisher, kind)
            .iter()
            .map(|(_, r)| r.packets)
            .sum()
    }

    /// The tracks that carried `publisher`'s media of `kind`.
    pub fn from(&self, publisher: Uuid, kind: u8) -> Vec<(String, Received)> {
        self.tracks
            .lock()
            .expect("lock")
            .iter()
            .filter(|(_, r)| r.origin == Some((publisher, kind)))
            .map(|(id, r)| (id.clone(), r.clone()))
            .collect()
    }

    /// The signaling messages seen so far.
    pub fn messages(&self) -> Vec<Value> {
        self.messages.lock().expect("lock").clone()
    }
}

/// One browser in a call.
pub struct Browser {
    pub id: Uuid,
    pub seen: Arc<Observed>,
    pub joined: Value,
    /// Clear it and the browser stops sending media (a frozen camera, a stalled uplink).
    pub sending: Arc<AtomicBool>,
    out: mpsc::Sender<Value>,
    pc: Arc<dyn PeerConnection>,
    tasks: Vec<JoinHandle<()>>,
}

struct Handler {
    candidates: mpsc::Sender<RTCIceCandidateInit>,
    seen: Arc<Observed>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_ice_candidate(&self, event: RTCPeerConnectionIceEvent) {
        if let Ok(init) = event.candidate.to_json() {
            self.seen
                .local_candidates
                .lock()
                .expect("lock")
                .push(init.candidate.clone());
            let _ = self.candidates.try_send(init);
        }
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        self.seen
            .connected
            .store(state == RTCPeerConnectionState::Connected, Ordering::SeqCst);
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
                .expect("lock")
                .entry(id.clone())
                .or_default()
                .mime = mime.clone();
            while let Some(event) = track.poll().await {
                if let TrackRemoteEvent::OnRtpPacket(packet) = event {
                    // The codec may not be known yet when the track is announced (seen on a
                    // loaded machine): ask again with the packets' SSRC until it is.
                    if mime.is_empty() {
                        mime = track
                            .codec(packet.header.ssrc)
                            .await
                            .map(|c| c.mime_type)
                            .unwrap_or_default();
                    }
                    let mut tracks = seen.tracks.lock().expect("lock");
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
                }
            }
        });
    }
}

/// A local RTP track of `mime` with a fixed SSRC, for a peer that writes synthetic packets.
pub fn local_track(
    kind: RtpCodecKind,
    mime: &str,
    clock_rate: u32,
    channels: u16,
    ssrc: u32,
) -> Arc<TrackLocalStaticRTP> {
    let name = format!("local-{}", mime.replace('/', "-"));
    Arc::new(TrackLocalStaticRTP::new(MediaStreamTrack::new(
        "local".to_owned(),
        name.clone(),
        name,
        kind,
        vec![RTCRtpEncodingParameters {
            rtp_coding_parameters: RTCRtpCodingParameters {
                ssrc: Some(ssrc),
                ..Default::default()
            },
            codec: RTCRtpCodec {
                mime_type: mime.to_owned(),
                clock_rate,
                channels,
                ..Default::default()
            },
            ..Default::default()
        }],
    )))
}

impl Browser {
    /// Signs in on `/rtc`, joins `call` and starts answering offers and sending media.
    /// `relay` forces ICE through the TURN servers handed out in `joined`.
    pub async fn join(addr: SocketAddr, token: &str, call: &str, relay: bool) -> Browser {
        let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/rtc"))
            .await
            .expect("websocket");
        let (mut sink, mut stream) = ws.split();
        let mut next = async || -> Value {
            loop {
                let m = tokio::time::timeout(PATIENCE, stream.next())
                    .await
                    .expect("a signaling message in time")
                    .expect("socket open")
                    .expect("socket ok");
                if let Message::Text(text) = m {
                    return serde_json::from_str(&text).expect("json");
                }
            }
        };
        sink.send(Message::Text(
            json!({"type": "auth", "token": token}).to_string().into(),
        ))
        .await
        .expect("send auth");
        let welcome = next().await;
        assert_eq!(welcome["type"], "welcome", "{welcome}");
        let id: Uuid = welcome["user_id"]
            .as_str()
            .expect("id")
            .parse()
            .expect("uuid");
        sink.send(Message::Text(
            json!({"type": "join", "call_id": call}).to_string().into(),
        ))
        .await
        .expect("send join");
        let joined = next().await;
        assert_eq!(joined["type"], "joined", "{joined}");

        let mut config = RTCConfigurationBuilder::new();
        if relay {
            let servers: Vec<RTCIceServer> = joined["ice_servers"]
                .as_array()
                .expect("ice servers")
                .iter()
                .filter(|s| s["username"].is_string())
                .map(|s| RTCIceServer {
                    urls: s["urls"]
                        .as_array()
                        .expect("urls")
                        .iter()
                        .filter_map(|u| u.as_str())
                        // webrtc 0.21 relays over UDP only.
                        .filter(|u| !u.contains("transport=tcp"))
                        .map(str::to_owned)
                        .collect(),
                    username: s["username"].as_str().unwrap_or_default().to_owned(),
                    credential: s["credential"].as_str().unwrap_or_default().to_owned(),
                })
                .collect();
            assert!(!servers.is_empty(), "a TURN server is handed out: {joined}");
            config = config
                .with_ice_servers(servers)
                .with_ice_transport_policy(RTCIceTransportPolicy::Relay);
        }
        let seen = Arc::new(Observed::default());
        let (candidates_tx, mut candidates) = mpsc::channel(64);
        let mut media_engine = MediaEngine::default();
        media_engine.register_default_codecs().expect("codecs");
        let registry =
            register_default_interceptors(Registry::new(), &mut media_engine).expect("registry");
        let pc: Arc<dyn PeerConnection> = Arc::new(
            PeerConnectionBuilder::new()
                .with_configuration(config.build())
                .with_media_engine(media_engine)
                .with_interceptor_registry(registry)
                .with_handler(Arc::new(Handler {
                    candidates: candidates_tx,
                    seen: Arc::clone(&seen),
                }))
                .with_udp_addrs(vec![SocketAddr::from(([127, 0, 0, 1], 0))])
                .build()
                .await
                .expect("browser pc"),
        );

        let (out, mut out_rx) = mpsc::channel::<Value>(256);
        let mut tasks = Vec::new();
        // Writer: one task owns the socket's sending half.
        tasks.push(tokio::spawn(async move {
            while let Some(v) = out_rx.recv().await {
                if sink
                    .send(Message::Text(v.to_string().into()))
                    .await
                    .is_err()
                {
                    break;
                }
            }
            let _ = sink.close().await;
        }));
        // Local candidates go to the server.
        {
            let out = out.clone();
            tasks.push(tokio::spawn(async move {
                while let Some(init) = candidates.recv().await {
                    let _ = out
                        .send(json!({
                            "type": "candidate",
                            "candidate": init.candidate,
                            "sdp_mid": init.sdp_mid,
                            "sdp_mline_index": init.sdp_mline_index,
                        }))
                        .await;
                }
            }));
        }
        let (audio_ssrc, video_ssrc) = (rand_u32(), rand_u32());
        let audio = local_track(RtpCodecKind::Audio, "audio/opus", 48_000, 2, audio_ssrc);
        let video = local_track(RtpCodecKind::Video, "video/VP8", 90_000, 0, video_ssrc);
        let (senders_tx, mut senders_rx) = mpsc::channel::<[Arc<dyn RtpSender>; 2]>(1);
        // Reader: answer offers (attaching the local tracks on the first), apply candidates.
        {
            let pc = Arc::clone(&pc);
            let seen = Arc::clone(&seen);
            let out = out.clone();
            let (audio, video) = (Arc::clone(&audio), Arc::clone(&video));
            tasks.push(tokio::spawn(async move {
                let mut attached = false;
                while let Some(Ok(message)) = stream.next().await {
                    let Message::Text(text) = message else {
                        continue;
                    };
                    let Ok(v) = serde_json::from_str::<Value>(&text) else {
                        continue;
                    };
                    seen.messages.lock().expect("lock").push(v.clone());
                    match v["type"].as_str() {
                        Some("offer") => {
                            let sdp = v["sdp"].as_str().unwrap_or_default().to_owned();
                            let offer = RTCSessionDescription::offer(sdp).expect("offer");
                            pc.set_remote_description(offer)
                                .await
                                .expect("remote offer");
                            if !attached {
                                attached = true;
                                let a = pc
                                    .add_track(Arc::clone(&audio) as Arc<dyn TrackLocal>)
                                    .await
                                    .expect("audio");
                                let b = pc
                                    .add_track(Arc::clone(&video) as Arc<dyn TrackLocal>)
                                    .await
                                    .expect("video");
                                let _ = senders_tx.send([a, b]).await;
                            }
                            let answer = pc.create_answer(None).await.expect("answer");
                            pc.set_local_description(answer)
                                .await
                                .expect("local answer");
                            let sdp = pc.local_description().await.expect("local").sdp;
                            let _ = out.send(json!({"type": "answer", "sdp": sdp})).await;
                            seen.answers_sent.fetch_add(1, Ordering::SeqCst);
                        }
                        Some("candidate") => {
                            let init = RTCIceCandidateInit {
                                candidate: v["candidate"].as_str().unwrap_or_default().to_owned(),
                                sdp_mid: v["sdp_mid"].as_str().map(str::to_owned),
                                sdp_mline_index: v["sdp_mline_index"]
                                    .as_u64()
                                    .and_then(|i| u16::try_from(i).ok()),
                                ..Default::default()
                            };
                            let _ = pc.add_ice_candidate(init).await;
                        }
                        _ => {}
                    }
                }
            }));
        }
        // Media: Opus every 20 ms, VP8 every 10 ms, once connected.
        let sending = Arc::new(AtomicBool::new(true));
        {
            let seen = Arc::clone(&seen);
            let sending = Arc::clone(&sending);
            tasks.push(tokio::spawn(async move {
                let Some([audio_sender, video_sender]) = senders_rx.recv().await else {
                    return;
                };
                let (mut apt, mut vpt) = (None, None);
                let mut tick: u32 = 0;
                let mut interval = tokio::time::interval(Duration::from_millis(10));
                loop {
                    interval.tick().await;
                    tick = tick.wrapping_add(1);
                    if !seen.connected.load(Ordering::SeqCst) || !sending.load(Ordering::SeqCst) {
                        continue;
                    }
                    if apt.is_none() {
                        apt = payload_type(&audio_sender, "audio/opus").await;
                        vpt = payload_type(&video_sender, "video/VP8").await;
                    }
                    let (Some(a), Some(v)) = (apt, vpt) else {
                        continue;
                    };
                    let _ = video
                        .write_rtp(packet(
                            id,
                            b'V',
                            v,
                            video_ssrc,
                            tick as u16,
                            tick.wrapping_mul(900),
                            tick.is_multiple_of(3),
                        ))
                        .await;
                    if tick.is_multiple_of(2) {
                        let n = tick / 2;
                        let _ = audio
                            .write_rtp(packet(
                                id,
                                b'A',
                                a,
                                audio_ssrc,
                                n as u16,
                                n.wrapping_mul(960),
                                false,
                            ))
                            .await;
                    }
                }
            }));
        }
        Browser {
            id,
            seen,
            joined,
            sending,
            out,
            pc,
            tasks,
        }
    }

    /// Sends a signaling message.
    pub async fn send(&self, v: Value) {
        self.out.send(v).await.expect("writer alive");
    }

    /// Waits until a signaling message matches `pred`; panics after [`PATIENCE`].
    pub async fn wait_message(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(m) = self.seen.messages().into_iter().find(|m| pred(m)) {
                return m;
            }
            assert!(
                Instant::now() < deadline,
                "no {what}; saw {:?}",
                self.seen.messages()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until this browser receives `from`'s audio and video (Opus and VP8) at least
    /// `audio` / `video` packets more than it had.
    pub async fn receives(&self, from: Uuid, audio: u64, video: u64) {
        let (a0, v0) = (
            self.seen.packets_from(from, b'A'),
            self.seen.packets_from(from, b'V'),
        );
        eventually(&format!("{} receives {from}", self.id), || {
            self.seen.packets_from(from, b'A') >= a0 + audio
                && self.seen.packets_from(from, b'V') >= v0 + video
        })
        .await;
        for (kind, mime) in [(b'A', "audio/opus"), (b'V', "video/VP8")] {
            let tracks = self.seen.from(from, kind);
            assert_eq!(
                tracks.len(),
                1,
                "one {} track from {from}: {tracks:?}",
                kind as char
            );
            // webrtc 0.21 cannot name a track's codec when a renegotiation resets the
            // receiver's codings between a stream's first packet and the track event (a race
            // seen on loaded machines): then the codec is the one negotiated for the packets'
            // payload type, as a browser would decode them.
            let track = &tracks[0].1;
            let got = if track.mime.is_empty() {
                negotiated_codec(&self.pc, track.payload_type).await
            } else {
                track.mime.clone()
            };
            assert!(
                got.eq_ignore_ascii_case(mime),
                "codec of {} is {got:?} (payload type {})",
                kind as char,
                track.payload_type,
            );
        }
    }

    /// The browser tab goes away without a word: socket and peer connection closed.
    pub async fn vanish(self) {
        for task in &self.tasks {
            task.abort();
        }
        let _ = self.pc.close().await;
    }
}

/// The codec `pc`'s receive side negotiated for `payload_type`, over all transceivers: what
/// names a remote track's codec when webrtc 0.21 lost the name (see [`Browser::receives`]).
pub async fn negotiated_codec(pc: &Arc<dyn PeerConnection>, payload_type: u8) -> String {
    for transceiver in pc.get_transceivers().await {
        let Ok(Some(receiver)) = transceiver.receiver().await else {
            continue;
        };
        let Ok(parameters) = receiver.get_parameters().await else {
            continue;
        };
        if let Some(codec) = parameters
            .rtp_parameters
            .codecs
            .iter()
            .find(|c| c.payload_type == payload_type)
        {
            return codec.rtp_codec.mime_type.clone();
        }
    }
    String::new()
}

/// Waits until `condition` holds; panics with `what` after [`PATIENCE`].
pub async fn eventually(what: &str, condition: impl Fn() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The payload type `sender` negotiated for `mime`, once negotiated.
pub async fn payload_type(sender: &Arc<dyn RtpSender>, mime: &str) -> Option<u8> {
    let parameters = sender.get_parameters().await.ok()?;
    parameters
        .rtp_parameters
        .codecs
        .iter()
        .find(|c| c.rtp_codec.mime_type.eq_ignore_ascii_case(mime))
        .map(|c| c.payload_type)
}

/// A synthetic RTP packet whose payload starts with `id` and the `kind` byte.
pub fn packet(
    id: Uuid,
    kind: u8,
    pt: u8,
    ssrc: u32,
    seq: u16,
    ts: u32,
    marker: bool,
) -> rtp::Packet {
    let mut payload = id.as_bytes().to_vec();
    payload.push(kind);
    payload.extend_from_slice(&[0xAB; 40]);
    rtp::Packet {
        header: rtp::header::Header {
            version: 2,
            marker,
            payload_type: pt,
            sequence_number: seq,
            timestamp: ts,
            ssrc,
            ..Default::default()
        },
        payload: payload.into(),
    }
}

/// A random odd `u32` (SSRCs, sequence bases).
pub fn rand_u32() -> u32 {
    let b = Uuid::new_v4().into_bytes();
    u32::from_be_bytes([b[0], b[1], b[2], b[3]]) | 1
}
