//! `sfu_load`: the SFU (`neulbi::media`) under load, side by side with Janus VideoRoom, in
//! one run, with the same load peers and the same load shapes.
//!
//! Load peers are `webrtc` 0.21 peer connections in this process (mDNS off, bound to one
//! concrete address, never a wildcard) that send synthetic RTP:
//! - video shaped like VP8 at ~1 Mbit/s: 30 frames/s of 4 packets of ~1 KB (120 pps), and a
//!   30-packet "keyframe" burst every 3 s (payloads start with a valid VP8 descriptor and
//!   frame tag, so an SFU that inspects keyframes sees real ones);
//! - audio shaped like Opus: 50 packets/s of 100 bytes (the small-calls shape only).
//!
//! Every payload carries the publisher, the stream, a sequence number and the send time
//! (µs on this process's monotonic clock), so receivers measure forwarding delay (load peer
//! → SFU → load peer, including both load peers' SRTP work) and loss.
//!
//! Shapes (`--shape`, comma-separated):
//! - `PxS`: one call, P publishers (video only) and S subscribers; every publisher also
//!   receives the other publishers, as in a Neulbi call (on Janus each publisher has a
//!   subscriber handle for the others). Defaults `1x10,1x50,1x100,4x4`.
//! - `calls:N`: N calls of 2 participants, both sending audio + video (the counseling shape).
//!   Default `calls:50`.
//!
//! Per shape and server: forwarded packets/s (unique packets the subscribers received, of
//! those sent in the measurement window), server CPU per forwarded packet, loss %, forwarding
//! delay p50/p99, and join → first media p50/p99 (from the start of a joiner's join to the
//! first RTP packet its connection receives; measured for the subscribers of `PxS` and the
//! second participant of each call). Joins run one at a time: each waits for the previous
//! joiner's first packet (or 20 s), so a join is measured alone, under the load already there.
//!
//! Server CPU: Neulbi's SFU runs in this process on its own runtime, whose threads are all
//! named `neulbi-media`: the sum of their utime+stime from /proc/self/task/*/stat. Janus: its
//! process's utime+stime from /proc/PID/stat. Both taken at the start and end of the window.
//! "load CPU" is the load peers' CPU in the same window (the rest of the bench process).
//!
//! Janus (Debian `janus` 1.1: `apt-get install janus`; this bench never installs it) runs
//! inside a private network namespace, because its ICE never gathers loopback: the bench
//! re-executes itself as `setpriv --pdeathsig KILL unshare -n <bench> --janus-child ...`
//! (root needed), which brings `lo` up, adds a veth pair with 198.18.0.1/32 on one end (the
//! pair and the address exist only in that namespace; nothing leaves it), starts `janus` with
//! a temp config (HTTP transport on 127.0.0.1:8088 only, VideoRoom only, no event handlers or
//! loggers), drives it over its HTTP API (create session → attach `janus.plugin.videoroom` →
//! `create` room → publisher `join` + `configure` with an offer → subscriber `join` with the
//! feeds → `start` with the answer; events by long-poll) with load peers bound to 198.18.0.1,
//! prints its result as one `RESULT {json}` line and kills Janus. Neulbi's side binds
//! 127.0.0.1. Janus is killed when the child ends, also on failure (a guard, and
//! `--pdeathsig` if the child dies); the child is killed when the bench ends or it overruns.
//!
//! Full run:  cargo bench --bench sfu_load
//!            options after `--` (or env `SFU_LOAD_<NAME>`, e.g. SFU_LOAD_DURATION=20):
//!            --shape 1x10,1x50,1x100,4x4,calls:50   --servers neulbi,janus
//!            --duration 10 (measured seconds)  --warmup 2
//!            --sfu-threads 2 (the SFU runtime's threads)
//!            --peer-ice-check-ms MS (the load peers' ICE check interval; crate default 200)
//! Smoke run: cargo test --bench sfu_load   (or `--smoke`: shape 1x2, 2 s, Neulbi only;
//!            exits 0 only when packets flowed; used by .ci/run)
//!
//! Every wait is bounded and every loop ends by the clock, so the bench ends by itself.

use std::collections::HashMap;
use std::io::BufRead;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use neulbi::media::{ConnectionState, MediaEvent, MediaSettings, Sfu};
use rtc::ice::mdns::MulticastDnsMode;
use rtc::media_stream::MediaStreamTrack;
use rtc::rtp;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use uuid::Uuid;
use webrtc::media_stream::track_local::TrackLocal;
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{
    MediaEngine, PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler,
    RTCIceCandidateInit, RTCIceGatheringState, RTCPeerConnectionIceEvent, RTCPeerConnectionState,
    RTCSessionDescription, Registry, SettingEngineBuilder, register_default_interceptors,
};
use webrtc::rtp_transceiver::RtpSender;

/// The bound on every single wait (a join, an answer, the first packet).
const PATIENCE: Duration = Duration::from_secs(20);
/// Where the Janus side lives, inside its namespace.
const NAMESPACE_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const JANUS_HTTP: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 8088);
/// Probe header: magic, publisher (u32), kind (u8), sequence (u32), send time µs (u64).
const PROBE_MAGIC: [u8; 2] = *b"SF";
const PROBE_OFFSET: usize = 12;
const PROBE_LEN: usize = 2 + 4 + 1 + 4 + 8;
const KIND_AUDIO: u8 = 0;
const KIND_VIDEO: u8 = 1;
/// Video: 30 frames/s × 4 packets of 960 B, a 30-packet keyframe every 90 frames (3 s):
/// (120 × 960 + 30 × 1000 / 3) × 8 ≈ 1.0 Mbit/s.
const VIDEO_FPS: u64 = 30;
const VIDEO_PACKETS_PER_FRAME: usize = 4;
const VIDEO_PACKET_BYTES: usize = 960;
const KEYFRAME_EVERY_FRAMES: u64 = 90;
const KEYFRAME_PACKETS: usize = 30;
const KEYFRAME_PACKET_BYTES: usize = 1000;
const AUDIO_PACKET_BYTES: usize = 100;

static EPOCH: OnceLock<Instant> = OnceLock::new();

fn now_us() -> u64 {
    EPOCH.get_or_init(Instant::now).elapsed().as_micros() as u64
}

// ---------------------------------------------------------------------------------------
// Options
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, Serialize, Deserialize)]
enum Shape {
    /// One call: publishers × subscribers, video only.
    Fanout {
        publishers: usize,
        subscribers: usize,
    },
    /// N calls of two participants, audio + video both ways.
    Calls { calls: usize },
}

impl Shape {
    fn parse(s: &str) -> anyhow::Result<Shape> {
        if let Some(n) = s.strip_prefix("calls:") {
            let calls = n.parse().context("calls:N takes a number")?;
            return Ok(Shape::Calls { calls });
        }
        let (p, s2) = s
            .split_once('x')
            .ok_or_else(|| anyhow!("a shape is PxS or calls:N, not {s}"))?;
        Ok(Shape::Fanout {
            publishers: p.parse().context("P of PxS")?,
            subscribers: s2.parse().context("S of PxS")?,
        })
    }

    fn name(&self) -> String {
        match self {
            Shape::Fanout {
                publishers,
                subscribers,
            } => format!("{publishers}x{subscribers}"),
            Shape::Calls { calls } => format!("calls:{calls}"),
        }
    }
}

#[derive(Debug, Clone)]
struct Options {
    smoke: bool,
    shapes: Vec<Shape>,
    servers: Vec<String>,
    duration: f64,
    warmup: f64,
    sfu_threads: usize,
    janus_child: bool,
}

fn options() -> anyhow::Result<Options> {
    let args: Vec<String> = std::env::args().collect();
    let flag = |name: &str| {
        args.iter().any(|a| a == name)
            || std::env::var(env_name(name)).is_ok_and(|v| v == "1" || v == "true")
    };
    let value = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
            .or_else(|| std::env::var(env_name(name)).ok())
    };
    let number = |name: &str, default: f64| -> anyhow::Result<f64> {
        value(name).map_or(Ok(default), |v| {
            v.parse().with_context(|| format!("{name} takes a number"))
        })
    };
    // `cargo bench` passes --bench; `cargo test --bench` does not: that is the smoke run.
    let janus_child = args.iter().any(|a| a == "--janus-child");
    let smoke = flag("--smoke") || (!args.iter().any(|a| a == "--bench") && !janus_child);
    let default_shapes = if smoke {
        "1x2"
    } else {
        "1x10,1x50,1x100,4x4,calls:50"
    };
    let shapes = value("--shape")
        .unwrap_or_else(|| default_shapes.into())
        .split(',')
        .map(Shape::parse)
        .collect::<anyhow::Result<Vec<_>>>()?;
    let servers = value("--servers")
        .unwrap_or_else(|| if smoke { "neulbi" } else { "neulbi,janus" }.into())
        .split(',')
        .map(str::to_owned)
        .collect();
    Ok(Options {
        smoke,
        shapes,
        servers,
        duration: number("--duration", if smoke { 2.0 } else { 10.0 })?,
        warmup: number("--warmup", if smoke { 0.5 } else { 2.0 })?,
        sfu_threads: number("--sfu-threads", 2.0)?.max(1.0) as usize,
        janus_child,
    })
}

fn env_name(flag: &str) -> String {
    format!(
        "SFU_LOAD_{}",
        flag.trim_start_matches('-')
            .replace('-', "_")
            .to_uppercase()
    )
}

// ---------------------------------------------------------------------------------------
// Synthetic media
// ---------------------------------------------------------------------------------------

/// One stream a publisher sends; receivers are told which streams to expect.
struct TxStream {
    publisher: u32,
    kind: u8,
    ssrc: u32,
    /// The next probe sequence number (0-based, one per packet).
    next_seq: AtomicU32,
}

struct Probe {
    publisher: u32,
    kind: u8,
    seq: u32,
    sent_us: u64,
}

fn payload(stream: &TxStream, seq: u32, size: usize, frame_start: Option<bool>) -> Vec<u8> {
    let mut p = vec![0u8; size.max(PROBE_OFFSET + PROBE_LEN)];
    match (stream.kind, frame_start) {
        // VP8 payload descriptor (S=1, partition 0) and frame tag; a keyframe also carries
        // the start code and a 640x480 size.
        (KIND_VIDEO, Some(true)) => {
            p[..11].copy_from_slice(&[0x10, 0x10, 0, 0, 0x9d, 0x01, 0x2a, 0x80, 0x02, 0xe0, 0x01])
        }
        (KIND_VIDEO, Some(false)) => p[..4].copy_from_slice(&[0x10, 0x11, 0, 0]),
        (KIND_VIDEO, None) => p[0] = 0x00,
        _ => p[0] = 0x78, // an Opus TOC byte (SILK-only 20 ms wide-band, as browsers start)
    }
    let h = &mut p[PROBE_OFFSET..PROBE_OFFSET + PROBE_LEN];
    h[..2].copy_from_slice(&PROBE_MAGIC);
    h[2..6].copy_from_slice(&stream.publisher.to_be_bytes());
    h[6] = stream.kind;
    h[7..11].copy_from_slice(&seq.to_be_bytes());
    h[11..19].copy_from_slice(&now_us().to_be_bytes());
    p
}

fn probe(payload: &[u8]) -> Option<Probe> {
    let h = payload.get(PROBE_OFFSET..PROBE_OFFSET + PROBE_LEN)?;
    if h[..2] != PROBE_MAGIC {
        return None;
    }
    Some(Probe {
        publisher: u32::from_be_bytes(h[2..6].try_into().ok()?),
        kind: h[6],
        seq: u32::from_be_bytes(h[7..11].try_into().ok()?),
        sent_us: u64::from_be_bytes(h[11..19].try_into().ok()?),
    })
}

fn rand_u32() -> u32 {
    let b = Uuid::new_v4().into_bytes();
    u32::from_be_bytes([b[0], b[1], b[2], b[3]]) | 1
}

fn local_track(kind: u8, ssrc: u32) -> Arc<TrackLocalStaticRTP> {
    let (codec_kind, mime, clock_rate, channels) = if kind == KIND_AUDIO {
        (RtpCodecKind::Audio, "audio/opus", 48_000, 2)
    } else {
        (RtpCodecKind::Video, "video/VP8", 90_000, 0)
    };
    let name = format!("load-{}", mime.replace('/', "-"));
    Arc::new(TrackLocalStaticRTP::new(MediaStreamTrack::new(
        format!("load-{}", Uuid::new_v4()),
        name.clone(),
        name,
        codec_kind,
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

async fn payload_type(sender: &Arc<dyn RtpSender>, kind: u8) -> Option<u8> {
    let mime = if kind == KIND_AUDIO {
        "audio/opus"
    } else {
        "video/VP8"
    };
    let parameters = sender.get_parameters().await.ok()?;
    parameters
        .rtp_parameters
        .codecs
        .iter()
        .find(|c| c.rtp_codec.mime_type.eq_ignore_ascii_case(mime))
        .map(|c| c.payload_type)
}

/// Sends one stream until `stop` or `deadline`, once `rx` says the connection is up and the
/// payload type is negotiated.
async fn send_stream(
    sender: Arc<dyn RtpSender>,
    track: Arc<TrackLocalStaticRTP>,
    stream: Arc<TxStream>,
    connected: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    deadline: Instant,
) {
    let pt = loop {
        if stop.load(Ordering::Relaxed) || Instant::now() > deadline {
            return;
        }
        if connected.load(Ordering::Relaxed)
            && let Some(pt) = payload_type(&sender, stream.kind).await
        {
            break pt;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let ssrc = stream.ssrc;
    let seq_base = rand_u32() as u16;
    let ts_base = rand_u32();
    let write = |seq: u32, ts: u32, marker: bool, body: Vec<u8>| rtp::Packet {
        header: rtp::header::Header {
            version: 2,
            marker,
            payload_type: pt,
            sequence_number: seq_base.wrapping_add(seq as u16),
            timestamp: ts,
            ssrc,
            ..Default::default()
        },
        payload: body.into(),
    };
    let period = if stream.kind == KIND_AUDIO {
        Duration::from_millis(20)
    } else {
        Duration::from_micros(1_000_000 / VIDEO_FPS)
    };
    let mut interval = tokio::time::interval(period);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut frame: u64 = 0;
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        interval.tick().await;
        if stream.kind == KIND_AUDIO {
            let seq = stream.next_seq.fetch_add(1, Ordering::Relaxed);
            let ts = ts_base.wrapping_add((frame as u32).wrapping_mul(960));
            let body = payload(&stream, seq, AUDIO_PACKET_BYTES, None);
            let _ = track.write_rtp(write(seq, ts, false, body)).await;
        } else {
            let key = frame.is_multiple_of(KEYFRAME_EVERY_FRAMES);
            let (count, size) = if key {
                (KEYFRAME_PACKETS, KEYFRAME_PACKET_BYTES)
            } else {
                (VIDEO_PACKETS_PER_FRAME, VIDEO_PACKET_BYTES)
            };
            let ts = ts_base.wrapping_add((frame as u32).wrapping_mul(90_000 / VIDEO_FPS as u32));
            for i in 0..count {
                let seq = stream.next_seq.fetch_add(1, Ordering::Relaxed);
                let start = (i == 0).then_some(key);
                let body = payload(&stream, seq, size, start);
                let _ = track.write_rtp(write(seq, ts, i + 1 == count, body)).await;
            }
        }
        frame += 1;
    }
}

// ---------------------------------------------------------------------------------------
// Receiving
// ---------------------------------------------------------------------------------------

/// The measurement window, by send time.
#[derive(Default)]
struct Window {
    start_us: AtomicU64,
    end_us: AtomicU64,
}

impl Window {
    fn new() -> Arc<Window> {
        Arc::new(Window {
            start_us: AtomicU64::new(u64::MAX),
            end_us: AtomicU64::new(u64::MAX),
        })
    }
    fn contains(&self, t: u64) -> bool {
        t >= self.start_us.load(Ordering::Relaxed) && t < self.end_us.load(Ordering::Relaxed)
    }
}

#[derive(Default)]
struct StreamRx {
    /// Bit per probe sequence number received.
    seen: Vec<u64>,
    /// Send → receive, µs, for packets sent inside the window.
    delays_us: Vec<u32>,
}

impl StreamRx {
    fn mark(&mut self, seq: u32) {
        let (word, bit) = ((seq / 64) as usize, seq % 64);
        if word >= self.seen.len() {
            self.seen.resize(word + 1, 0);
        }
        self.seen[word] |= 1 << bit;
    }
    fn count(&self, from: u32, to: u32) -> u64 {
        (from..to)
            .filter(|&s| {
                self.seen
                    .get((s / 64) as usize)
                    .is_some_and(|w| w & (1 << (s % 64)) != 0)
            })
            .count() as u64
    }
}

/// What one participant's connections received.
struct PeerRx {
    window: Arc<Window>,
    first_media_us: AtomicU64,
    /// When the first of its connections reached `connected` (ICE + DTLS done).
    connected_us: AtomicU64,
    connected: Arc<AtomicBool>,
    streams: Mutex<HashMap<(u32, u8), StreamRx>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl PeerRx {
    fn new(window: &Arc<Window>) -> Arc<PeerRx> {
        Arc::new(PeerRx {
            window: Arc::clone(window),
            first_media_us: AtomicU64::new(0),
            connected_us: AtomicU64::new(0),
            connected: Arc::new(AtomicBool::new(false)),
            streams: Mutex::new(HashMap::new()),
            tasks: Mutex::new(Vec::new()),
        })
    }

    fn has(&self, stream: &TxStream) -> bool {
        self.streams
            .lock()
            .unwrap()
            .contains_key(&(stream.publisher, stream.kind))
    }
}

async fn read_track(track: Arc<dyn TrackRemote>, rx: Arc<PeerRx>) {
    while let Some(event) = track.poll().await {
        let TrackRemoteEvent::OnRtpPacket(packet) = event else {
            continue;
        };
        let now = now_us();
        let Some(p) = probe(&packet.payload) else {
            continue;
        };
        let _ = rx
            .first_media_us
            .compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed);
        let in_window = rx.window.contains(p.sent_us);
        let mut streams = rx.streams.lock().unwrap();
        let s = streams.entry((p.publisher, p.kind)).or_default();
        s.mark(p.seq);
        if in_window {
            s.delays_us
                .push(now.saturating_sub(p.sent_us).min(u32::MAX as u64) as u32);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Load peer connections
// ---------------------------------------------------------------------------------------

struct Handler {
    rx: Arc<PeerRx>,
    /// Local candidates; `None` when gathering is complete.
    candidates: mpsc::UnboundedSender<Option<RTCIceCandidateInit>>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_ice_candidate(&self, event: RTCPeerConnectionIceEvent) {
        if let Ok(init) = event.candidate.to_json() {
            let _ = self.candidates.send(Some(init));
        }
    }

    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        if state == RTCIceGatheringState::Complete {
            let _ = self.candidates.send(None);
        }
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        if state == RTCPeerConnectionState::Connected {
            let _ = self.rx.connected_us.compare_exchange(
                0,
                now_us(),
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
            self.rx.connected.store(true, Ordering::Relaxed);
        }
    }

    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        let task = tokio::spawn(read_track(track, Arc::clone(&self.rx)));
        self.rx.tasks.lock().unwrap().push(task);
    }
}

/// `--peer-ice-check-ms` / SFU_LOAD_PEER_ICE_CHECK_MS: the load peers' ICE check interval
/// (the `webrtc` crate's default is 200 ms), to see how much of join → media is theirs.
fn peer_ice_check_ms() -> Option<u64> {
    static MS: OnceLock<Option<u64>> = OnceLock::new();
    *MS.get_or_init(|| {
        let args: Vec<String> = std::env::args().collect();
        args.iter()
            .position(|a| a == "--peer-ice-check-ms")
            .and_then(|i| args.get(i + 1).cloned())
            .or_else(|| std::env::var("SFU_LOAD_PEER_ICE_CHECK_MS").ok())
            .and_then(|v| v.parse().ok())
    })
}

type Candidates = mpsc::UnboundedReceiver<Option<RTCIceCandidateInit>>;

async fn build_pc(
    bind: IpAddr,
    rx: &Arc<PeerRx>,
) -> anyhow::Result<(Arc<dyn PeerConnection>, Candidates)> {
    let (tx, candidates) = mpsc::unbounded_channel();
    let mut media_engine = MediaEngine::default();
    media_engine.register_default_codecs()?;
    let registry = register_default_interceptors(Registry::new(), &mut media_engine)?;
    let mut settings =
        SettingEngineBuilder::new().with_multicast_dns_mode(MulticastDnsMode::Disabled);
    if let Some(ms) = peer_ice_check_ms() {
        settings = settings.with_ice_connection_attempts(Some(Duration::from_millis(ms)), None);
    }
    let settings = settings.build();
    let pc = PeerConnectionBuilder::new()
        .with_media_engine(media_engine)
        .with_setting_engine(settings)
        .with_interceptor_registry(registry)
        .with_handler(Arc::new(Handler {
            rx: Arc::clone(rx),
            candidates: tx,
        }))
        .with_udp_addrs(vec![SocketAddr::new(bind, 0)])
        .build()
        .await?;
    Ok((Arc::new(pc), candidates))
}

/// A participant's media as a publisher: its tracks and streams.
struct Publishing {
    tracks: Vec<(Arc<TrackLocalStaticRTP>, Arc<TxStream>)>,
}

impl Publishing {
    fn new(publisher: u32, audio: bool) -> Publishing {
        let kinds: &[u8] = if audio {
            &[KIND_AUDIO, KIND_VIDEO]
        } else {
            &[KIND_VIDEO]
        };
        Publishing {
            tracks: kinds
                .iter()
                .map(|&kind| {
                    let ssrc = rand_u32();
                    (
                        local_track(kind, ssrc),
                        Arc::new(TxStream {
                            publisher,
                            kind,
                            ssrc,
                            next_seq: AtomicU32::new(0),
                        }),
                    )
                })
                .collect(),
        }
    }

    fn streams(&self) -> Vec<Arc<TxStream>> {
        self.tracks.iter().map(|(_, s)| Arc::clone(s)).collect()
    }

    /// Adds the tracks to `pc` and starts their sending tasks.
    async fn attach(
        &self,
        pc: &Arc<dyn PeerConnection>,
        run: &Run,
        connected: &Arc<AtomicBool>,
    ) -> anyhow::Result<Vec<JoinHandle<()>>> {
        let mut tasks = Vec::new();
        for (track, stream) in &self.tracks {
            let sender = pc
                .add_track(Arc::clone(track) as Arc<dyn TrackLocal>)
                .await?;
            tasks.push(tokio::spawn(send_stream(
                sender,
                Arc::clone(track),
                Arc::clone(stream),
                Arc::clone(connected),
                Arc::clone(&run.stop),
                run.deadline,
            )));
        }
        Ok(tasks)
    }
}

/// State shared by everything in one shape's run.
struct Run {
    window: Arc<Window>,
    stop: Arc<AtomicBool>,
    /// No sending task outlives this.
    deadline: Instant,
    bind: IpAddr,
}

/// One participant's connections (Neulbi: one; Janus: a publisher and/or a subscriber).
struct Peer {
    rx: Arc<PeerRx>,
    pcs: Vec<Arc<dyn PeerConnection>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Peer {
    async fn close(self) {
        for task in &self.tasks {
            task.abort();
        }
        for task in self.rx.tasks.lock().unwrap().drain(..) {
            task.abort();
        }
        for pc in &self.pcs {
            let _ = tokio::time::timeout(Duration::from_secs(2), pc.close()).await;
        }
    }
}

// ---------------------------------------------------------------------------------------
// Neulbi
// ---------------------------------------------------------------------------------------

/// Joins `call` as a Neulbi participant that answers every offer, publishing `publishing`'s
/// tracks on its uplink sections if given.
async fn neulbi_join(
    sfu: &Sfu,
    call: Uuid,
    run: &Run,
    rx: Arc<PeerRx>,
    publishing: Option<&Publishing>,
) -> anyhow::Result<Peer> {
    let (events_tx, mut events) = mpsc::channel(64);
    let participant = sfu.join(call, Uuid::new_v4(), events_tx).await?;
    let (pc, mut candidates) = build_pc(run.bind, &rx).await?;
    let mut tasks = Vec::new();
    // Tracks are added once the first offer is applied, so they take the uplink sections.
    let mut pending = publishing.map(|p| p.tracks.clone());
    {
        let pc = Arc::clone(&pc);
        let participant = participant.clone();
        let (stop, deadline) = (Arc::clone(&run.stop), run.deadline);
        let connected = Arc::clone(&rx.connected);
        let rx = Arc::clone(&rx);
        tasks.push(tokio::spawn(async move {
            while let Some(event) = events.recv().await {
                match event {
                    MediaEvent::Offer { sdp } => {
                        let Ok(offer) = RTCSessionDescription::offer(sdp) else {
                            return;
                        };
                        if pc.set_remote_description(offer).await.is_err() {
                            return;
                        }
                        for (track, stream) in pending.take().unwrap_or_default() {
                            let Ok(sender) = pc
                                .add_track(Arc::clone(&track) as Arc<dyn TrackLocal>)
                                .await
                            else {
                                return;
                            };
                            let sending = tokio::spawn(send_stream(
                                sender,
                                track,
                                stream,
                                Arc::clone(&connected),
                                Arc::clone(&stop),
                                deadline,
                            ));
                            rx.tasks.lock().unwrap().push(sending);
                        }
                        let Ok(answer) = pc.create_answer(None).await else {
                            return;
                        };
                        if pc.set_local_description(answer).await.is_err() {
                            return;
                        }
                        let Some(local) = pc.local_description().await else {
                            return;
                        };
                        if let Err(error) = participant.apply_answer(local.sdp).await {
                            eprintln!("neulbi: answer refused: {error}");
                        }
                    }
                    MediaEvent::Candidate {
                        candidate,
                        sdp_mid,
                        sdp_mline_index,
                    } => {
                        let init = RTCIceCandidateInit {
                            candidate,
                            sdp_mid,
                            sdp_mline_index,
                            ..Default::default()
                        };
                        let _ = pc.add_ice_candidate(init).await;
                    }
                    MediaEvent::Connection(ConnectionState::Connected) => {
                        connected.store(true, Ordering::Relaxed)
                    }
                    _ => {}
                }
            }
        }));
    }
    {
        let participant = participant.clone();
        tasks.push(tokio::spawn(async move {
            while let Some(candidate) = candidates.recv().await {
                if let Some(init) = candidate {
                    let _ = participant
                        .add_ice_candidate(init.candidate, init.sdp_mid, init.sdp_mline_index)
                        .await;
                }
            }
        }));
    }
    Ok(Peer {
        rx,
        pcs: vec![pc],
        tasks,
    })
}

// ---------------------------------------------------------------------------------------
// Janus (HTTP API)
// ---------------------------------------------------------------------------------------

/// One HTTP/1.1 exchange on a fresh connection (`Connection: close`): the status and body.
async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&Value>,
    timeout: Duration,
) -> anyhow::Result<(u16, String)> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        let text = String::from_utf8_lossy(&response).into_owned();
        let (head, rest) = text
            .split_once("\r\n\r\n")
            .ok_or_else(|| anyhow!("no HTTP header in {text:?}"))?;
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| anyhow!("no HTTP status in {head:?}"))?;
        let chunked = head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked");
        let body = if chunked {
            dechunk(rest)?
        } else {
            rest.to_owned()
        };
        anyhow::Ok((status, body))
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| anyhow!("{method} {path}: no answer within {timeout:?}"))?
}

fn dechunk(mut rest: &str) -> anyhow::Result<String> {
    let mut out = String::new();
    loop {
        let (size, after) = rest
            .split_once("\r\n")
            .ok_or_else(|| anyhow!("bad chunk"))?;
        let size = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16)?;
        if size == 0 {
            return Ok(out);
        }
        out.push_str(after.get(..size).ok_or_else(|| anyhow!("short chunk"))?);
        rest = after.get(size + 2..).unwrap_or("");
    }
}

/// A Janus session with one long-poll loop that hands events to whoever waits for their
/// transaction.
struct Janus {
    session: u64,
    waiters: Mutex<HashMap<String, oneshot::Sender<Value>>>,
    next: AtomicU64,
    poller: Mutex<Option<JoinHandle<()>>>,
    /// hangup / slowlink events seen (should stay 0).
    trouble: AtomicU64,
}

impl Janus {
    async fn connect() -> anyhow::Result<Arc<Janus>> {
        let created = Self::post_to("/janus", json!({"janus": "create", "transaction": "c"}))
            .await
            .context("create a Janus session")?;
        let session = created["data"]["id"]
            .as_u64()
            .ok_or_else(|| anyhow!("no session id in {created}"))?;
        let janus = Arc::new(Janus {
            session,
            waiters: Mutex::new(HashMap::new()),
            next: AtomicU64::new(1),
            poller: Mutex::new(None),
            trouble: AtomicU64::new(0),
        });
        let weak = Arc::downgrade(&janus);
        let poller = tokio::spawn(async move {
            let path = format!("/janus/{session}?maxev=50");
            loop {
                let result = http(JANUS_HTTP, "GET", &path, None, Duration::from_secs(40)).await;
                let Some(janus) = weak.upgrade() else {
                    return;
                };
                let events = match result {
                    Ok((200, body)) => match serde_json::from_str::<Value>(&body) {
                        Ok(Value::Array(events)) => events,
                        Ok(event) => vec![event],
                        Err(_) => continue,
                    },
                    _ => {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                for event in events {
                    janus.dispatch(event);
                }
            }
        });
        *janus.poller.lock().unwrap() = Some(poller);
        Ok(janus)
    }

    fn dispatch(&self, event: Value) {
        match event["janus"].as_str() {
            Some("hangup") | Some("slowlink") => {
                self.trouble.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
        if let Some(tx) = event["transaction"]
            .as_str()
            .and_then(|t| self.waiters.lock().unwrap().remove(t))
        {
            let _ = tx.send(event);
        }
    }

    async fn post_to(path: &str, body: Value) -> anyhow::Result<Value> {
        let (status, text) = http(JANUS_HTTP, "POST", path, Some(&body), PATIENCE).await?;
        if status != 200 {
            bail!("Janus {path}: HTTP {status}: {text}");
        }
        let value: Value = serde_json::from_str(&text)?;
        if value["janus"] == "error" {
            bail!("Janus {path}: {}", value["error"]);
        }
        Ok(value)
    }

    fn transaction(&self) -> String {
        format!("t{}", self.next.fetch_add(1, Ordering::Relaxed))
    }

    async fn attach(&self) -> anyhow::Result<u64> {
        let t = self.transaction();
        let reply = Self::post_to(
            &format!("/janus/{}", self.session),
            json!({"janus": "attach", "plugin": "janus.plugin.videoroom", "transaction": t}),
        )
        .await?;
        reply["data"]["id"]
            .as_u64()
            .ok_or_else(|| anyhow!("no handle id in {reply}"))
    }

    /// A VideoRoom request: the synchronous answer, or the asynchronous event that answers
    /// it (plugin errors become errors).
    async fn request(
        &self,
        handle: u64,
        body: Value,
        jsep: Option<Value>,
    ) -> anyhow::Result<Value> {
        let t = self.transaction();
        let (tx, rx) = oneshot::channel();
        self.waiters.lock().unwrap().insert(t.clone(), tx);
        let mut message = json!({"janus": "message", "transaction": t, "body": body});
        if let Some(jsep) = jsep {
            message["jsep"] = jsep;
        }
        let path = format!("/janus/{}/{handle}", self.session);
        let reply = match Self::post_to(&path, message).await {
            Ok(reply) => reply,
            Err(error) => {
                self.waiters.lock().unwrap().remove(&t);
                return Err(error);
            }
        };
        let reply = if reply["janus"] == "ack" {
            tokio::time::timeout(PATIENCE, rx)
                .await
                .map_err(|_| anyhow!("no Janus event for {body}"))??
        } else {
            self.waiters.lock().unwrap().remove(&t);
            reply
        };
        let data = &reply["plugindata"]["data"];
        if data.get("error").is_some() {
            bail!("Janus VideoRoom {}: {}", body["request"], data["error"]);
        }
        Ok(reply)
    }

    /// Trickles this connection's candidates to `handle` until gathering completes.
    fn trickle(self: &Arc<Self>, handle: u64, mut candidates: Candidates) -> JoinHandle<()> {
        let janus = Arc::clone(self);
        tokio::spawn(async move {
            while let Some(candidate) = candidates.recv().await {
                let candidate = match candidate {
                    Some(init) => {
                        let c = if init.candidate.starts_with("candidate:") {
                            init.candidate
                        } else {
                            format!("candidate:{}", init.candidate)
                        };
                        json!({"candidate": c, "sdpMid": init.sdp_mid.unwrap_or_else(|| "0".into()),
                               "sdpMLineIndex": init.sdp_mline_index.unwrap_or(0)})
                    }
                    None => json!({"completed": true}),
                };
                let t = janus.transaction();
                let _ = Janus::post_to(
                    &format!("/janus/{}/{handle}", janus.session),
                    json!({"janus": "trickle", "transaction": t, "candidate": candidate}),
                )
                .await;
            }
        })
    }

    async fn create_room(&self, room: u64, publishers: usize) -> anyhow::Result<()> {
        let handle = self.attach().await?;
        self.request(
            handle,
            json!({"request": "create", "room": room, "publishers": publishers.max(2),
                   "audiocodec": "opus", "videocodec": "vp8", "notify_joining": false}),
            None,
        )
        .await
        .map(|_| ())
    }

    fn stop(&self) {
        if let Some(poller) = self.poller.lock().unwrap().take() {
            poller.abort();
        }
    }
}

/// Publishes `publishing` in `room` as feed `feed` (join, then configure with an offer).
async fn janus_publish(
    janus: &Arc<Janus>,
    room: u64,
    feed: u64,
    run: &Run,
    rx: &Arc<PeerRx>,
    publishing: &Publishing,
) -> anyhow::Result<(Arc<dyn PeerConnection>, Vec<JoinHandle<()>>)> {
    let handle = janus.attach().await?;
    janus
        .request(
            handle,
            json!({"request": "join", "ptype": "publisher", "room": room, "id": feed}),
            None,
        )
        .await?;
    let (pc, candidates) = build_pc(run.bind, rx).await?;
    let mut tasks = publishing.attach(&pc, run, &rx.connected).await?;
    let offer = pc.create_offer(None).await?;
    pc.set_local_description(offer).await?;
    let sdp = pc
        .local_description()
        .await
        .ok_or_else(|| anyhow!("no local offer"))?
        .sdp;
    tasks.push(janus.trickle(handle, candidates));
    let audio = publishing.tracks.len() > 1;
    let reply = janus
        .request(
            handle,
            json!({"request": "configure", "audio": audio, "video": true}),
            Some(json!({"type": "offer", "sdp": sdp})),
        )
        .await?;
    let answer = reply["jsep"]["sdp"]
        .as_str()
        .ok_or_else(|| anyhow!("no answer in {reply}"))?;
    pc.set_remote_description(RTCSessionDescription::answer(answer.to_owned())?)
        .await?;
    Ok((pc, tasks))
}

/// Subscribes to `feeds` in `room` on one connection (join with the feeds, start with the
/// answer).
async fn janus_subscribe(
    janus: &Arc<Janus>,
    room: u64,
    feeds: &[u64],
    run: &Run,
    rx: &Arc<PeerRx>,
) -> anyhow::Result<(Arc<dyn PeerConnection>, JoinHandle<()>)> {
    let handle = janus.attach().await?;
    let streams: Vec<Value> = feeds.iter().map(|f| json!({"feed": f})).collect();
    let reply = janus
        .request(
            handle,
            json!({"request": "join", "ptype": "subscriber", "room": room, "streams": streams}),
            None,
        )
        .await?;
    let offer = reply["jsep"]["sdp"]
        .as_str()
        .ok_or_else(|| anyhow!("no offer in {reply}"))?;
    let (pc, candidates) = build_pc(run.bind, rx).await?;
    pc.set_remote_description(RTCSessionDescription::offer(offer.to_owned())?)
        .await?;
    let answer = pc.create_answer(None).await?;
    pc.set_local_description(answer).await?;
    let sdp = pc
        .local_description()
        .await
        .ok_or_else(|| anyhow!("no local answer"))?
        .sdp;
    let trickle = janus.trickle(handle, candidates);
    janus
        .request(
            handle,
            json!({"request": "start"}),
            Some(json!({"type": "answer", "sdp": sdp})),
        )
        .await?;
    Ok((pc, trickle))
}

// ---------------------------------------------------------------------------------------
// Servers under test
// ---------------------------------------------------------------------------------------

enum Target {
    Neulbi(Sfu),
    Janus(Arc<Janus>),
}

/// A call or room on the target.
#[derive(Clone, Copy)]
struct Group {
    call: Uuid,
    room: u64,
}

impl Target {
    fn name(&self) -> &'static str {
        match self {
            Target::Neulbi(_) => "Neulbi",
            Target::Janus(_) => "Janus",
        }
    }

    async fn group(&self, index: usize, publishers: usize) -> anyhow::Result<Group> {
        let group = Group {
            call: Uuid::new_v4(),
            room: 10_000 + index as u64,
        };
        if let Target::Janus(janus) = self {
            janus.create_room(group.room, publishers).await?;
        }
        Ok(group)
    }

    /// A participant that publishes; on Janus it receives nothing until `subscribe`.
    async fn join_publisher(
        &self,
        group: Group,
        run: &Run,
        publishing: &Publishing,
    ) -> anyhow::Result<Peer> {
        let rx = PeerRx::new(&run.window);
        let feed = publishing.tracks[0].1.publisher as u64 + 1;
        match self {
            Target::Neulbi(sfu) => neulbi_join(sfu, group.call, run, rx, Some(publishing)).await,
            Target::Janus(janus) => {
                let (pc, tasks) =
                    janus_publish(janus, group.room, feed, run, &rx, publishing).await?;
                Ok(Peer {
                    rx,
                    pcs: vec![pc],
                    tasks,
                })
            }
        }
    }

    /// A participant that publishes and receives `others` (Janus: the publisher and a
    /// subscriber connection, set up at the same time, as the VideoRoom demo does).
    async fn join_both(
        &self,
        group: Group,
        run: &Run,
        publishing: &Publishing,
        others: &[u64],
    ) -> anyhow::Result<Peer> {
        match self {
            Target::Neulbi(_) => self.join_publisher(group, run, publishing).await,
            Target::Janus(janus) => {
                let rx = PeerRx::new(&run.window);
                let feed = publishing.tracks[0].1.publisher as u64 + 1;
                let (publisher, subscriber) = tokio::join!(
                    janus_publish(janus, group.room, feed, run, &rx, publishing),
                    janus_subscribe(janus, group.room, others, run, &rx)
                );
                let (ppc, mut tasks) = publisher?;
                let (spc, trickle) = subscriber?;
                tasks.push(trickle);
                Ok(Peer {
                    rx,
                    pcs: vec![ppc, spc],
                    tasks,
                })
            }
        }
    }

    /// On Janus, lets a publisher receive `feeds` too (Neulbi does that by itself).
    async fn subscribe(
        &self,
        group: Group,
        run: &Run,
        peer: &mut Peer,
        feeds: &[u64],
    ) -> anyhow::Result<()> {
        if let Target::Janus(janus) = self {
            let (pc, trickle) = janus_subscribe(janus, group.room, feeds, run, &peer.rx).await?;
            peer.pcs.push(pc);
            peer.tasks.push(trickle);
        }
        Ok(())
    }

    /// A participant that only receives (the publishers' `feeds` on Janus).
    async fn join_subscriber(
        &self,
        group: Group,
        run: &Run,
        feeds: &[u64],
    ) -> anyhow::Result<Peer> {
        let rx = PeerRx::new(&run.window);
        match self {
            Target::Neulbi(sfu) => neulbi_join(sfu, group.call, run, rx, None).await,
            Target::Janus(janus) => {
                let (pc, trickle) = janus_subscribe(janus, group.room, feeds, run, &rx).await?;
                Ok(Peer {
                    rx,
                    pcs: vec![pc],
                    tasks: vec![trickle],
                })
            }
        }
    }

    /// Server CPU seconds so far.
    fn cpu_seconds(&self, janus_pid: Option<u32>) -> f64 {
        match self {
            Target::Neulbi(_) => threads_cpu_seconds("self", |comm| comm == "neulbi-media"),
            Target::Janus(_) => janus_pid.map_or(0.0, |pid| process_cpu_seconds(&pid.to_string())),
        }
    }
}

// ---------------------------------------------------------------------------------------
// CPU from /proc
// ---------------------------------------------------------------------------------------

fn clock_ticks() -> f64 {
    static TICKS: OnceLock<f64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// (comm, utime + stime in ticks) of a /proc stat line.
fn parse_stat(stat: &str) -> Option<(String, u64)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat[open + 1..close].to_owned();
    let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
    // Fields after the comm start at field 3 (state); utime is field 14, stime field 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((comm, utime + stime))
}

fn process_cpu_seconds(pid: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| parse_stat(&s))
        .map_or(0.0, |(_, t)| t as f64 / clock_ticks())
}

fn threads_cpu_seconds(pid: &str, which: impl Fn(&str) -> bool) -> f64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0.0;
    };
    let ticks: u64 = tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("stat")).ok())
        .filter_map(|s| parse_stat(&s))
        .filter(|(comm, _)| which(comm))
        .map(|(_, t)| t)
        .sum();
    ticks as f64 / clock_ticks()
}

// ---------------------------------------------------------------------------------------
// Running a shape
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct ShapeResult {
    shape: String,
    server: String,
    /// Receiver × stream pairs that should carry media.
    subscriptions: usize,
    window_s: f64,
    /// Packets the publishers sent per second (the offered load).
    sent_pps: f64,
    /// Unique packets the receivers got per second, of those sent in the window.
    forwarded_pps: f64,
    server_cpu_s: f64,
    cpu_us_per_packet: f64,
    /// The load peers' CPU in the window.
    load_cpu_s: f64,
    loss_pct: f64,
    delay_p50_ms: f64,
    delay_p99_ms: f64,
    join_p50_ms: f64,
    join_p99_ms: f64,
    /// Join → the joiner's connection up (ICE + DTLS), the part of the above before media.
    join_connected_p50_ms: f64,
    joins: usize,
    /// Joiners that never received media.
    joins_without_media: usize,
    /// Subscriptions that carried nothing by the start of the window.
    silent_subscriptions: usize,
    notes: String,
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Runs one shape against `target` and measures it.
async fn run_shape(
    target: &Target,
    shape: &Shape,
    o: &Options,
    bind: IpAddr,
    janus_pid: Option<u32>,
) -> anyhow::Result<ShapeResult> {
    // Generous: setup of every join one after the other plus the window.
    let joins = match shape {
        Shape::Fanout {
            publishers,
            subscribers,
        } => publishers + subscribers,
        Shape::Calls { calls } => calls * 2,
    };
    let budget = Duration::from_secs_f64(60.0 + joins as f64 * 2.0 + o.warmup + o.duration);
    let run = Run {
        window: Window::new(),
        stop: Arc::new(AtomicBool::new(false)),
        deadline: Instant::now() + budget,
        bind,
    };
    let mut peers: Vec<Peer> = Vec::new();
    let mut groups: Vec<Group> = Vec::new();
    let result = tokio::time::timeout(
        budget,
        drive(target, shape, o, &run, janus_pid, &mut peers, &mut groups),
    )
    .await
    .unwrap_or_else(|_| Err(anyhow!("the shape overran its {budget:?} budget")));
    run.stop.store(true, Ordering::Relaxed);
    for peer in peers {
        peer.close().await;
    }
    if let Target::Neulbi(sfu) = target {
        for group in &groups {
            sfu.end_call(group.call).await;
        }
    }
    result
}

/// Waits until `condition` holds or `patience` passes; says whether it held.
async fn wait_for(patience: Duration, condition: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + patience;
    while !condition() {
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    true
}

async fn drive(
    target: &Target,
    shape: &Shape,
    o: &Options,
    run: &Run,
    janus_pid: Option<u32>,
    peers: &mut Vec<Peer>,
    groups: &mut Vec<Group>,
) -> anyhow::Result<ShapeResult> {
    // (receiver, stream) pairs expected to carry media, and (joiner, join start µs).
    let mut expected: Vec<(Arc<PeerRx>, Arc<TxStream>)> = Vec::new();
    let mut joiners: Vec<(Arc<PeerRx>, u64)> = Vec::new();
    let mut all_streams: Vec<Arc<TxStream>> = Vec::new();
    match *shape {
        Shape::Fanout {
            publishers,
            subscribers,
        } => {
            let group = target.group(0, publishers).await?;
            groups.push(group);
            let publishing: Vec<Publishing> = (0..publishers)
                .map(|i| Publishing::new(i as u32, false))
                .collect();
            let feeds: Vec<u64> = (1..=publishers as u64).collect();
            let mut pubs = Vec::new();
            for p in &publishing {
                let peer = target.join_publisher(group, run, p).await?;
                let streams = p.streams();
                if !wait_for(PATIENCE, || {
                    streams
                        .iter()
                        .all(|s| s.next_seq.load(Ordering::Relaxed) > 0)
                })
                .await
                {
                    bail!("a publisher never started sending (not connected?)");
                }
                all_streams.extend(streams);
                pubs.push(peer);
            }
            for (i, peer) in pubs.iter_mut().enumerate() {
                let others: Vec<u64> = feeds
                    .iter()
                    .copied()
                    .filter(|&f| f != i as u64 + 1)
                    .collect();
                if !others.is_empty() {
                    target.subscribe(group, run, peer, &others).await?;
                    for (j, p) in publishing.iter().enumerate() {
                        if j != i {
                            for s in p.streams() {
                                expected.push((Arc::clone(&peer.rx), s));
                            }
                        }
                    }
                }
            }
            peers.extend(pubs);
            tokio::time::sleep(Duration::from_millis(300)).await;
            for _ in 0..subscribers {
                let started = now_us();
                let peer = target.join_subscriber(group, run, &feeds).await?;
                // One at a time: the next join starts once this one has media (or gave up),
                // so each join is measured alone.
                let rx = Arc::clone(&peer.rx);
                wait_for(PATIENCE, || rx.first_media_us.load(Ordering::Relaxed) != 0).await;
                for s in &all_streams {
                    expected.push((Arc::clone(&peer.rx), Arc::clone(s)));
                }
                joiners.push((Arc::clone(&peer.rx), started));
                peers.push(peer);
            }
        }
        Shape::Calls { calls } => {
            for c in 0..calls {
                let group = target.group(c, 2).await?;
                groups.push(group);
                let (pa, pb) = (
                    Publishing::new((2 * c) as u32, true),
                    Publishing::new((2 * c + 1) as u32, true),
                );
                let (feed_a, feed_b) = ((2 * c + 1) as u64, (2 * c + 2) as u64);
                let mut a = target.join_publisher(group, run, &pa).await?;
                let streams_a = pa.streams();
                if !wait_for(PATIENCE, || {
                    streams_a
                        .iter()
                        .all(|s| s.next_seq.load(Ordering::Relaxed) > 0)
                })
                .await
                {
                    bail!("call {c}: the first participant never started sending");
                }
                let started = now_us();
                let b = target.join_both(group, run, &pb, &[feed_a]).await?;
                let rx = Arc::clone(&b.rx);
                wait_for(PATIENCE, || rx.first_media_us.load(Ordering::Relaxed) != 0).await;
                joiners.push((Arc::clone(&b.rx), started));
                // B's uplink may come up after its downlink: Janus knows the feed once B sends.
                let streams_b = pb.streams();
                wait_for(PATIENCE, || {
                    streams_b
                        .iter()
                        .all(|s| s.next_seq.load(Ordering::Relaxed) > 0)
                })
                .await;
                target.subscribe(group, run, &mut a, &[feed_b]).await?;
                for s in pb.streams() {
                    expected.push((Arc::clone(&a.rx), s));
                }
                for s in pa.streams() {
                    expected.push((Arc::clone(&b.rx), s));
                }
                all_streams.extend(pa.streams());
                all_streams.extend(pb.streams());
                peers.push(a);
                peers.push(b);
            }
        }
    }

    // Everyone receives everything (or the patience ran out), then warm up and measure.
    let ready = wait_for(PATIENCE, || expected.iter().all(|(rx, s)| rx.has(s))).await;
    tokio::time::sleep(Duration::from_secs_f64(o.warmup)).await;
    let silent = expected.iter().filter(|(rx, s)| !rx.has(s)).count();
    let seq_at = |streams: &[Arc<TxStream>]| -> HashMap<(u32, u8), u32> {
        streams
            .iter()
            .map(|s| ((s.publisher, s.kind), s.next_seq.load(Ordering::Relaxed)))
            .collect()
    };
    let process_cpu = || process_cpu_seconds("self");
    let dropped = || match target {
        Target::Neulbi(sfu) => sfu.stats().dropped_packets,
        Target::Janus(_) => 0,
    };
    let dropped0 = dropped();
    let (cpu0, proc0) = (target.cpu_seconds(janus_pid), process_cpu());
    let seq0 = seq_at(&all_streams);
    let t0 = Instant::now();
    run.window.start_us.store(now_us(), Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs_f64(o.duration)).await;
    run.window.end_us.store(now_us(), Ordering::Relaxed);
    let seq1 = seq_at(&all_streams);
    let window_s = t0.elapsed().as_secs_f64();
    let (cpu1, proc1) = (target.cpu_seconds(janus_pid), process_cpu());
    let dropped_in_window = dropped() - dropped0;
    // Packets sent at the end of the window are still on their way.
    tokio::time::sleep(Duration::from_millis(500)).await;
    run.stop.store(true, Ordering::Relaxed);

    let mut received = 0u64;
    let mut expected_packets = 0u64;
    let mut delays: Vec<f64> = Vec::new();
    let mut receivers: Vec<&Arc<PeerRx>> = Vec::new();
    for (rx, s) in &expected {
        let key = (s.publisher, s.kind);
        let (from, to) = (seq0[&key], seq1[&key]);
        expected_packets += (to - from) as u64;
        if let Some(srx) = rx.streams.lock().unwrap().get(&key) {
            received += srx.count(from, to);
        }
        if !receivers.iter().any(|r| Arc::ptr_eq(r, rx)) {
            receivers.push(rx);
        }
    }
    for rx in receivers {
        for srx in rx.streams.lock().unwrap().values() {
            delays.extend(srx.delays_us.iter().map(|&d| d as f64 / 1000.0));
        }
    }
    delays.sort_by(f64::total_cmp);
    let sent: u64 = all_streams
        .iter()
        .map(|s| {
            let key = (s.publisher, s.kind);
            (seq1[&key] - seq0[&key]) as u64
        })
        .sum();
    let mut join_ms: Vec<f64> = joiners
        .iter()
        .filter_map(|(rx, started)| {
            let first = rx.first_media_us.load(Ordering::Relaxed);
            (first != 0).then(|| first.saturating_sub(*started) as f64 / 1000.0)
        })
        .collect();
    join_ms.sort_by(f64::total_cmp);
    let mut connected_ms: Vec<f64> = joiners
        .iter()
        .filter_map(|(rx, started)| {
            let up = rx.connected_us.load(Ordering::Relaxed);
            (up != 0).then(|| up.saturating_sub(*started) as f64 / 1000.0)
        })
        .collect();
    connected_ms.sort_by(f64::total_cmp);
    let server_cpu_s = cpu1 - cpu0;
    let load_cpu_s = match target {
        // The bench process minus the SFU's threads.
        Target::Neulbi(_) => (proc1 - proc0) - server_cpu_s,
        Target::Janus(_) => proc1 - proc0,
    };
    let mut notes = Vec::new();
    if !ready {
        notes.push(format!(
            "{silent} subscriptions silent at the window's start"
        ));
    }
    if let Target::Janus(janus) = target {
        let trouble = janus.trouble.load(Ordering::Relaxed);
        if trouble > 0 {
            notes.push(format!("{trouble} hangup/slowlink events"));
        }
    }
    if dropped_in_window > 0 {
        notes.push(format!("SFU dropped {dropped_in_window} packets"));
    }
    Ok(ShapeResult {
        shape: shape.name(),
        server: target.name().to_owned(),
        subscriptions: expected.len(),
        window_s,
        sent_pps: sent as f64 / window_s,
        forwarded_pps: received as f64 / window_s,
        server_cpu_s,
        cpu_us_per_packet: if received > 0 {
            server_cpu_s * 1e6 / received as f64
        } else {
            f64::NAN
        },
        load_cpu_s,
        loss_pct: if expected_packets > 0 {
            100.0 * (expected_packets - received.min(expected_packets)) as f64
                / expected_packets as f64
        } else {
            f64::NAN
        },
        delay_p50_ms: percentile(&delays, 0.50),
        delay_p99_ms: percentile(&delays, 0.99),
        join_p50_ms: percentile(&join_ms, 0.50),
        join_p99_ms: percentile(&join_ms, 0.99),
        join_connected_p50_ms: percentile(&connected_ms, 0.50),
        joins: joiners.len(),
        joins_without_media: joiners.len() - join_ms.len(),
        silent_subscriptions: silent,
        notes: notes.join("; "),
    })
}

// ---------------------------------------------------------------------------------------
// The Janus side: a child process in its own network namespace
// ---------------------------------------------------------------------------------------

/// Kills and reaps a child process when dropped.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn run_cmd(program: &str, args: &[&str]) -> anyhow::Result<()> {
    let status = std::process::Command::new(program)
        .args(args)
        .status()
        .with_context(|| format!("run {program}"))?;
    if !status.success() {
        bail!("{program} {args:?}: {status}");
    }
    Ok(())
}

fn janus_bin() -> String {
    std::env::var("JANUS_BIN").unwrap_or_else(|_| "janus".into())
}

/// Where Janus's modules are (Debian's multiarch lib directory).
fn janus_lib_dir() -> anyhow::Result<String> {
    for dir in [
        "/usr/lib/x86_64-linux-gnu/janus",
        "/usr/lib/aarch64-linux-gnu/janus",
        "/usr/lib/janus",
        "/opt/janus/lib/janus",
    ] {
        if std::path::Path::new(dir)
            .join("plugins/libjanus_videoroom.so")
            .exists()
        {
            return Ok(dir.to_owned());
        }
    }
    bail!("no Janus VideoRoom plugin found (apt-get install janus)")
}

fn write_janus_config(dir: &std::path::Path) -> anyhow::Result<()> {
    let lib = janus_lib_dir()?;
    let keep_only = |kind: &str, keep: &str| -> anyhow::Result<String> {
        let mut names: Vec<String> = std::fs::read_dir(format!("{lib}/{kind}"))?
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".so") && n != keep)
            .collect();
        names.sort();
        Ok(names.join(","))
    };
    let janus = format!(
        r#"general: {{
	configs_folder = "{dir}"
	plugins_folder = "{lib}/plugins"
	transports_folder = "{lib}/transports"
	events_folder = "{lib}/events"
	loggers_folder = "{lib}/loggers"
	debug_level = 3
	session_timeout = 120
}}
media: {{
	rtp_port_range = "20000-40000"
}}
nat: {{
	nice_debug = false
	ice_ignore_list = "vmnet"
}}
plugins: {{
	disable = "{plugins}"
}}
transports: {{
	disable = "{transports}"
}}
loggers: {{
	disable = "{loggers}"
}}
events: {{
	broadcast = false
	disable = "{events}"
}}
"#,
        dir = dir.display(),
        plugins = keep_only("plugins", "libjanus_videoroom.so")?,
        transports = keep_only("transports", "libjanus_http.so")?,
        loggers = keep_only("loggers", "")?,
        events = keep_only("events", "")?,
    );
    std::fs::write(dir.join("janus.jcfg"), janus)?;
    std::fs::write(
        dir.join("janus.transport.http.jcfg"),
        format!(
            "general: {{\n\tjson = \"plain\"\n\tbase_path = \"/janus\"\n\thttp = true\n\t\
             port = {}\n\tip = \"127.0.0.1\"\n\thttps = false\n}}\nadmin: {{\n\tadmin_http = false\n}}\n",
            JANUS_HTTP.port()
        ),
    )?;
    std::fs::write(dir.join("janus.plugin.videoroom.jcfg"), "general: {\n}\n")?;
    Ok(())
}

/// The network namespace of a process.
fn netns(pid: &str) -> Option<std::path::PathBuf> {
    std::fs::read_link(format!("/proc/{pid}/ns/net")).ok()
}

/// `--janus-child`: set up the namespace, start Janus, run the shapes, print results.
async fn janus_child(o: &Options) -> anyhow::Result<()> {
    // Refuse to touch a network namespace shared with the parent (e.g. run by hand).
    let ppid = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .and_then(|(_, r)| r.split_whitespace().nth(1).map(str::to_owned))
        })
        .ok_or_else(|| anyhow!("no parent pid"))?;
    if netns("self").is_none() || netns("self") == netns(&ppid) {
        bail!("--janus-child must run in a network namespace of its own (unshare -n)");
    }
    run_cmd("ip", &["link", "set", "lo", "up"])?;
    run_cmd(
        "ip",
        &[
            "link", "add", "sfub0", "type", "veth", "peer", "name", "sfub1",
        ],
    )?;
    let addr = format!("{NAMESPACE_ADDR}/32");
    run_cmd("ip", &["addr", "add", &addr, "dev", "sfub0"])?;
    run_cmd("ip", &["link", "set", "sfub0", "up"])?;
    run_cmd("ip", &["link", "set", "sfub1", "up"])?;
    // Janus finds "its" address by routing towards the outside: a default route into the
    // veth (whose other end is in this namespace too) gives it 198.18.0.1.
    run_cmd("ip", &["route", "add", "default", "dev", "sfub0"])?;

    let dir = tempfile::tempdir()?;
    write_janus_config(dir.path())?;
    let log_path = dir.path().join("janus.log");
    let log = std::fs::File::create(&log_path)?;
    // Spawned from the main thread, so --pdeathsig fires only when this process ends.
    let janus = std::process::Command::new("setpriv")
        .args(["--pdeathsig", "KILL", "--"])
        .arg(janus_bin())
        .arg("-C")
        .arg(dir.path().join("janus.jcfg"))
        .arg("-F")
        .arg(dir.path())
        .arg("-o")
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("start janus")?;
    let janus = KillOnDrop(janus);
    let pid = janus.0.id();
    let up = async {
        loop {
            if let Ok((200, _)) = http(
                JANUS_HTTP,
                "GET",
                "/janus/info",
                None,
                Duration::from_secs(1),
            )
            .await
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    if tokio::time::timeout(Duration::from_secs(15), up)
        .await
        .is_err()
    {
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        bail!("Janus did not come up in 15 s; its log:\n{log}");
    }
    let mut failed = None;
    for shape in &o.shapes {
        let client = Janus::connect().await?;
        let target = Target::Janus(Arc::clone(&client));
        let result = run_shape(&target, shape, o, IpAddr::V4(NAMESPACE_ADDR), Some(pid)).await;
        client.stop();
        match result {
            Ok(result) => println!("RESULT {}", serde_json::to_string(&result)?),
            Err(error) => {
                failed = Some(error);
                break;
            }
        }
    }
    drop(janus);
    if let Some(error) = failed {
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(30).collect();
        eprintln!(
            "Janus log (last lines):\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
        return Err(error);
    }
    Ok(())
}

/// Runs one shape on Janus in a child process in its own network namespace.
fn run_janus(shape: &Shape, o: &Options) -> anyhow::Result<ShapeResult> {
    let exe = std::env::current_exe()?;
    let mut child = std::process::Command::new("setpriv")
        .args(["--pdeathsig", "KILL", "--", "unshare", "-n", "--"])
        .arg(exe)
        .args([
            "--janus-child",
            "--shape",
            &shape.name(),
            "--duration",
            &o.duration.to_string(),
            "--warmup",
            &o.warmup.to_string(),
            "--peer-ice-check-ms",
            &peer_ice_check_ms().map_or(String::new(), |ms| ms.to_string()),
        ])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("start the Janus side (setpriv, unshare -n; needs root)")?;
    let stdout = child.stdout.take().expect("piped");
    let mut child = KillOnDrop(child);
    let (tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let joins = match shape {
        Shape::Fanout {
            publishers,
            subscribers,
        } => publishers + subscribers,
        Shape::Calls { calls } => calls * 2,
    };
    let deadline =
        Instant::now() + Duration::from_secs_f64(90.0 + joins as f64 * 2.0 + o.warmup + o.duration);
    let mut result = None;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) => match line.strip_prefix("RESULT ") {
                Some(json) => result = Some(serde_json::from_str::<ShapeResult>(json)?),
                None => eprintln!("janus side: {line}"),
            },
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                bail!("the Janus side overran its time; killed")
            }
        }
    }
    let status = child.0.wait()?;
    match result {
        Some(result) if status.success() => Ok(result),
        _ => bail!("the Janus side failed ({status})"),
    }
}

// ---------------------------------------------------------------------------------------
// Output
// ---------------------------------------------------------------------------------------

fn fmt_num(v: f64, decimals: usize) -> String {
    if v.is_nan() {
        "–".into()
    } else {
        format!("{v:.decimals$}")
    }
}

fn print_table(results: &[ShapeResult]) {
    println!();
    println!(
        "| shape | server | subs | sent pps | fwd pps | server CPU s | CPU µs/pkt | load CPU s | loss % | delay p50 / p99 ms | join→media p50 / p99 ms | join→connected p50 ms | notes |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|");
    for r in results {
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} / {} | {} / {} | {} | {} |",
            r.shape,
            r.server,
            r.subscriptions,
            fmt_num(r.sent_pps, 0),
            fmt_num(r.forwarded_pps, 0),
            fmt_num(r.server_cpu_s, 2),
            fmt_num(r.cpu_us_per_packet, 1),
            fmt_num(r.load_cpu_s, 2),
            fmt_num(r.loss_pct, 3),
            fmt_num(r.delay_p50_ms, 2),
            fmt_num(r.delay_p99_ms, 2),
            fmt_num(r.join_p50_ms, 0),
            fmt_num(r.join_p99_ms, 0),
            fmt_num(r.join_connected_p50_ms, 0),
            r.notes
        );
    }
    let shapes: Vec<&String> = {
        let mut s: Vec<&String> = results.iter().map(|r| &r.shape).collect();
        s.dedup();
        s
    };
    let pairs: Vec<(&ShapeResult, &ShapeResult)> = shapes
        .iter()
        .filter_map(|shape| {
            let n = results
                .iter()
                .find(|r| &&r.shape == shape && r.server == "Neulbi")?;
            let j = results
                .iter()
                .find(|r| &&r.shape == shape && r.server == "Janus")?;
            Some((n, j))
        })
        .collect();
    if pairs.is_empty() {
        return;
    }
    println!();
    println!(
        "| shape | Neulbi / Janus: fwd pps | CPU µs/pkt | loss % (N vs J) | delay p50 | delay p99 | join p50 | join p99 |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    let ratio = |a: f64, b: f64| {
        if a.is_nan() || b.is_nan() || b == 0.0 {
            "–".to_owned()
        } else {
            format!("{:.2}×", a / b)
        }
    };
    for (n, j) in pairs {
        println!(
            "| {} | {} | {} | {} vs {} | {} | {} | {} | {} |",
            n.shape,
            ratio(n.forwarded_pps, j.forwarded_pps),
            ratio(n.cpu_us_per_packet, j.cpu_us_per_packet),
            fmt_num(n.loss_pct, 3),
            fmt_num(j.loss_pct, 3),
            ratio(n.delay_p50_ms, j.delay_p50_ms),
            ratio(n.delay_p99_ms, j.delay_p99_ms),
            ratio(n.join_p50_ms, j.join_p50_ms),
            ratio(n.join_p99_ms, j.join_p99_ms),
        );
    }
}

// ---------------------------------------------------------------------------------------
// Main
// ---------------------------------------------------------------------------------------

fn janus_available() -> Result<(), String> {
    let root = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false);
    if !root {
        return Err("the Janus side needs root (unshare -n, ip link)".into());
    }
    let found = std::process::Command::new(janus_bin())
        .arg("--help")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        return Err("janus not found: apt-get install janus (Debian `janus` 1.1)".into());
    }
    janus_lib_dir().map(|_| ()).map_err(|e| e.to_string())
}

async fn main_async(o: Options) -> anyhow::Result<()> {
    if o.janus_child {
        return janus_child(&o).await;
    }
    let janus = o.servers.iter().any(|s| s == "janus");
    let neulbi = o.servers.iter().any(|s| s == "neulbi");
    let janus_ok = if janus {
        match janus_available() {
            Ok(()) => true,
            Err(why) => {
                eprintln!("sfu_load: skipping Janus: {why}");
                false
            }
        }
    } else {
        false
    };
    eprintln!(
        "sfu_load: {} run, shapes {}, {} s measured after {} s warm-up, SFU threads {}, {} CPUs",
        if o.smoke { "smoke" } else { "full" },
        o.shapes
            .iter()
            .map(Shape::name)
            .collect::<Vec<_>>()
            .join(","),
        o.duration,
        o.warmup,
        o.sfu_threads,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    );
    let mut results = Vec::new();
    let mut failures = Vec::new();
    for shape in &o.shapes {
        if neulbi {
            let sfu = Sfu::new(MediaSettings {
                udp_addrs: vec![SocketAddr::from(([127, 0, 0, 1], 0))],
                worker_threads: o.sfu_threads,
                ..MediaSettings::default()
            })?;
            let target = Target::Neulbi(sfu);
            eprintln!("sfu_load: {} on Neulbi…", shape.name());
            match run_shape(&target, shape, &o, IpAddr::V4(Ipv4Addr::LOCALHOST), None).await {
                Ok(r) => {
                    eprintln!("  {:?}", r);
                    results.push(r)
                }
                Err(e) => {
                    eprintln!("  failed: {e:#}");
                    failures.push(format!("{} on Neulbi: {e:#}", shape.name()));
                }
            }
            drop(target);
            // Let the SFU's runtime wind down before the next shape.
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        if janus_ok {
            eprintln!("sfu_load: {} on Janus…", shape.name());
            match run_janus(shape, &o) {
                Ok(r) => {
                    eprintln!("  {:?}", r);
                    results.push(r)
                }
                Err(e) => {
                    eprintln!("  failed: {e:#}");
                    failures.push(format!("{} on Janus: {e:#}", shape.name()));
                }
            }
        }
    }
    print_table(&results);
    if o.smoke {
        // The smoke run guards that the bench still works: media flowed, nothing failed.
        let flowed = results
            .iter()
            .all(|r| r.forwarded_pps > 0.0 && r.joins_without_media == 0);
        if results.is_empty() || !flowed || !failures.is_empty() {
            bail!("smoke run: no media flowed or a shape failed: {failures:?}");
        }
        eprintln!("sfu_load: smoke run ok");
    } else if !failures.is_empty() {
        for f in &failures {
            eprintln!("FAILED: {f}");
        }
        bail!("{} shape(s) failed", failures.len());
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "error".into()),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let o = options()?;
    let _ = now_us();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("sfu-load")
        .enable_all()
        .build()?;
    let result = runtime.block_on(main_async(o));
    runtime.shutdown_timeout(Duration::from_secs(2));
    result
}
