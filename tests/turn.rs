//! The embedded TURN server (and an external coturn) relaying real WebRTC traffic.
//!
//! Everything binds 127.0.0.1 explicitly and every wait is bounded. The peers are
//! webrtc-rs 0.21 peer connections with ICE transport policy `relay`: they gather only relayed
//! candidates, so a connection that comes up has gone through the TURN server.
//! webrtc 0.21 skips `?transport=tcp` TURN URLs ("Skipping unsupported non-UDP TURN url"), so
//! TURN over TCP is driven with the `turn` crate's client over a framed TCP stream instead.

use crate::support;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use neulbi::media::turn::{
    ExternalTurn, IceCredentials, PortRange, TurnError, TurnServer, TurnSettings, rest_credentials,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::{Mutex, mpsc};
use tokio::time::timeout;
use webrtc::data_channel::{DataChannel, DataChannelEvent};
use webrtc::peer_connection::{
    PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler, RTCConfigurationBuilder,
    RTCIceGatheringState, RTCIceServer, RTCIceTransportPolicy, RTCPeerConnectionIceErrorEvent,
    RTCPeerConnectionState,
};

const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const SECRET: &str = "test-turn-secret";
/// Bound on any single wait; a relayed loopback connection needs well under a second.
const STEP: Duration = Duration::from_secs(15);
/// Relay port ranges outside Linux's ephemeral range (32768–60999), one per server kind.
const EMBEDDED_RELAY_PORTS: PortRange = PortRange {
    min: 61000,
    max: 62999,
};

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::new(LOCALHOST, port)
}

/// Embedded server settings on loopback, ephemeral listener ports.
fn settings() -> TurnSettings {
    TurnSettings {
        listen_udp: Some(loopback(0)),
        listen_tcp: Some(loopback(0)),
        listen_tls: None,
        tls_host: None,
        relay_ip: LOCALHOST,
        relay_bind: None,
        relay_ports: EMBEDDED_RELAY_PORTS,
        realm: "neulbi.test".into(),
        secret: SECRET.into(),
        credential_ttl: Duration::from_secs(600),
        external: None,
    }
}

fn ice_server(creds: &IceCredentials, transport: &str) -> RTCIceServer {
    RTCIceServer {
        urls: creds
            .urls
            .iter()
            .filter(|u| u.ends_with(&format!("transport={transport}")))
            .cloned()
            .collect(),
        username: creds.username.clone(),
        credential: creds.credential.clone(),
    }
}

// ── WebRTC peers ──────────────────────────────────────────────────────────────

/// Forwards what the tests wait for out of the peer connection's callbacks.
struct Events {
    gathered: mpsc::UnboundedSender<()>,
    state: mpsc::UnboundedSender<RTCPeerConnectionState>,
    channels: mpsc::UnboundedSender<Arc<dyn DataChannel>>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Events {
    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        if state == RTCIceGatheringState::Complete {
            let _ = self.gathered.send(());
        }
    }

    async fn on_ice_candidate_error(&self, event: RTCPeerConnectionIceErrorEvent) {
        tracing::warn!(?event, "ICE candidate error");
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        let _ = self.state.send(state);
    }

    async fn on_data_channel(&self, dc: Arc<dyn DataChannel>) {
        let _ = self.channels.send(dc);
    }
}

struct Peer {
    pc: Box<dyn PeerConnection>,
    gathered: mpsc::UnboundedReceiver<()>,
    state: mpsc::UnboundedReceiver<RTCPeerConnectionState>,
    channels: mpsc::UnboundedReceiver<Arc<dyn DataChannel>>,
}

async fn relay_only_peer(ice: RTCIceServer) -> Peer {
    let (gathered, gathered_rx) = mpsc::unbounded_channel();
    let (state, state_rx) = mpsc::unbounded_channel();
    let (channels, channels_rx) = mpsc::unbounded_channel();
    let pc = PeerConnectionBuilder::new()
        .with_configuration(
            RTCConfigurationBuilder::new()
                .with_ice_servers(vec![ice])
                .with_ice_transport_policy(RTCIceTransportPolicy::Relay)
                .build(),
        )
        .with_handler(Arc::new(Events {
            gathered,
            state,
            channels,
        }))
        .with_udp_addrs(vec![loopback(0).to_string()])
        .build()
        .await
        .expect("build peer connection");
    Peer {
        pc: Box::new(pc),
        gathered: gathered_rx,
        state: state_rx,
        channels: channels_rx,
    }
}

/// Sets the local description and waits for gathering, so the SDP carries every candidate.
async fn gather(peer: &mut Peer) -> String {
    timeout(STEP, peer.gathered.recv())
        .await
        .expect("ICE gathering completes in time");
    let sdp = peer
        .pc
        .local_description()
        .await
        .expect("local description")
        .sdp;
    let candidates: Vec<&str> = sdp
        .lines()
        .filter(|l| l.starts_with("a=candidate:"))
        .collect();
    assert!(
        !candidates.is_empty(),
        "no relayed candidate gathered:\n{sdp}"
    );
    for c in &candidates {
        assert!(
            c.contains(" typ relay"),
            "non-relay candidate under policy relay: {c}"
        );
    }
    sdp
}

async fn wait_connected(peer: &mut Peer, who: &str) {
    timeout(STEP, async {
        loop {
            match peer.state.recv().await {
                Some(RTCPeerConnectionState::Connected) => return,
                Some(RTCPeerConnectionState::Failed) | None => {
                    panic!("{who}: peer connection failed")
                }
                Some(_) => {}
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{who}: not connected in time"));
}

async fn next_message(dc: &Arc<dyn DataChannel>, who: &str) -> String {
    timeout(STEP, async {
        loop {
            match dc.poll().await {
                Some(DataChannelEvent::OnMessage(msg)) => {
                    return String::from_utf8_lossy(&msg.data).into_owned();
                }
                Some(DataChannelEvent::OnClose) | None => panic!("{who}: data channel closed"),
                Some(_) => {}
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{who}: no message in time"))
}

/// Two connected peers and the relayed candidates they offered.
struct Connected {
    a: Peer,
    b: Peer,
    candidates: Vec<String>,
}

impl Connected {
    async fn close(self) {
        self.a.pc.close().await.expect("close offerer");
        self.b.pc.close().await.expect("close answerer");
    }
}

/// Two relay-only peers connect and exchange a message each way over a data channel.
async fn relayed_data_channel(offerer_ice: RTCIceServer, answerer_ice: RTCIceServer) -> Connected {
    let mut a = relay_only_peer(offerer_ice).await;
    let mut b = relay_only_peer(answerer_ice).await;

    let dc_a =
        a.pc.create_data_channel("turn-test", None)
            .await
            .expect("create data channel");
    let offer = a.pc.create_offer(None).await.expect("offer");
    a.pc.set_local_description(offer).await.expect("set offer");
    let t0 = Instant::now();
    let offer_sdp = gather(&mut a).await;
    tracing::info!(elapsed = ?t0.elapsed(), "offerer gathered");
    let offer =
        a.pc.local_description()
            .await
            .expect("offer with candidates");

    b.pc.set_remote_description(offer)
        .await
        .expect("remote offer");
    let answer = b.pc.create_answer(None).await.expect("answer");
    b.pc.set_local_description(answer)
        .await
        .expect("set answer");
    let answer_sdp = gather(&mut b).await;
    tracing::info!(elapsed = ?t0.elapsed(), "answerer gathered");
    let answer =
        b.pc.local_description()
            .await
            .expect("answer with candidates");
    a.pc.set_remote_description(answer)
        .await
        .expect("remote answer");

    wait_connected(&mut a, "offerer").await;
    wait_connected(&mut b, "answerer").await;
    tracing::info!(elapsed = ?t0.elapsed(), "connected");

    // Offerer: wait for open, then say hello.
    timeout(STEP, async {
        loop {
            match dc_a.poll().await {
                Some(DataChannelEvent::OnOpen) => return,
                Some(DataChannelEvent::OnClose) | None => panic!("offerer channel closed"),
                Some(_) => {}
            }
        }
    })
    .await
    .expect("offerer data channel opens");
    dc_a.send_text("hello through TURN").await.expect("send");

    let dc_b = timeout(STEP, b.channels.recv())
        .await
        .expect("answerer gets the channel in time")
        .expect("answerer channel");
    assert_eq!(next_message(&dc_b, "answerer").await, "hello through TURN");
    dc_b.send_text("and back").await.expect("reply");
    assert_eq!(next_message(&dc_a, "offerer").await, "and back");
    tracing::info!(elapsed = ?t0.elapsed(), "exchanged");

    let candidates = offer_sdp
        .lines()
        .chain(answer_sdp.lines())
        .filter(|l| l.starts_with("a=candidate:"))
        .map(str::to_owned)
        .collect();
    Connected { a, b, candidates }
}

/// The port of a candidate line (`a=candidate:F C udp P ADDR PORT typ relay ...`).
fn candidate_addr(line: &str) -> SocketAddr {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let ip: IpAddr = fields
        .get(4)
        .and_then(|f| f.parse().ok())
        .expect("candidate ip");
    let port: u16 = fields
        .get(5)
        .and_then(|f| f.parse().ok())
        .expect("candidate port");
    SocketAddr::new(ip, port)
}

fn assert_in_range(candidates: &[String], range: PortRange) {
    for c in candidates {
        let addr = candidate_addr(c);
        assert_eq!(addr.ip(), LOCALHOST, "{c}");
        assert!(
            (range.min..=range.max).contains(&addr.port()),
            "relayed port outside {range:?}: {c}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_relay_only_peers_exchange_data_through_the_embedded_server_over_udp() {
    init_tracing();
    let started = Instant::now();
    let server = TurnServer::start(&settings()).await.expect("TURN starts");
    let alice = server.credentials("alice", SystemTime::now());
    let bob = server.credentials("bob", SystemTime::now());

    let connected = relayed_data_channel(ice_server(&alice, "udp"), ice_server(&bob, "udp")).await;
    assert_in_range(&connected.candidates, EMBEDDED_RELAY_PORTS);

    // The server holds both peers' allocations and has carried their traffic.
    let allocations = server.allocations().await;
    for user in ["alice", "bob"] {
        let a = allocations
            .iter()
            .find(|a| a.username.ends_with(&format!(":{user}")))
            .unwrap_or_else(|| panic!("no allocation for {user}: {allocations:?}"));
        assert!(a.relayed_bytes > 0, "{a:?}");
    }

    connected.close().await;
    server.close().await;
    tracing::info!(elapsed = ?started.elapsed(), "UDP relay test");
}

// ── TURN over TCP (turn crate client; webrtc 0.21 has no TCP TURN) ─────────────

/// A TURN client's view of a TCP (or TLS) connection to the server: STUN and ChannelData
/// framed on the stream (RFC 8656 §12.5). Written independently of the server's framing on
/// purpose.
struct FramedTcp<R, W> {
    r: Mutex<R>,
    w: Mutex<W>,
    local: SocketAddr,
    server: SocketAddr,
}

impl<R, W> FramedTcp<R, W> {
    fn new(r: R, w: W, local: SocketAddr, server: SocketAddr) -> Arc<Self> {
        Arc::new(FramedTcp {
            r: Mutex::new(r),
            w: Mutex::new(w),
            local,
            server,
        })
    }
}

#[async_trait::async_trait]
impl<R, W> webrtc_util::Conn for FramedTcp<R, W>
where
    R: tokio::io::AsyncRead + Unpin + Send + 'static,
    W: tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    async fn connect(&self, _: SocketAddr) -> webrtc_util::Result<()> {
        Ok(())
    }
    async fn recv(&self, buf: &mut [u8]) -> webrtc_util::Result<usize> {
        Ok(self.recv_from(buf).await?.0)
    }
    async fn recv_from(&self, buf: &mut [u8]) -> webrtc_util::Result<(usize, SocketAddr)> {
        let mut r = self.r.lock().await;
        let mut head = [0u8; 4];
        r.read_exact(&mut head).await?;
        let len = u16::from_be_bytes([head[2], head[3]]) as usize;
        let body = if head[0] < 0x40 {
            16 + len
        } else {
            len.next_multiple_of(4)
        };
        let total = 4 + body;
        if total > buf.len() {
            return Err(webrtc_util::Error::Other(format!("frame of {total} bytes")));
        }
        buf[..4].copy_from_slice(&head);
        r.read_exact(&mut buf[4..total]).await?;
        Ok((total, self.server))
    }
    async fn send(&self, buf: &[u8]) -> webrtc_util::Result<usize> {
        self.send_to(buf, self.server).await
    }
    async fn send_to(&self, buf: &[u8], _: SocketAddr) -> webrtc_util::Result<usize> {
        let mut w = self.w.lock().await;
        w.write_all(buf).await?;
        w.flush().await?;
        Ok(buf.len())
    }
    fn local_addr(&self) -> webrtc_util::Result<SocketAddr> {
        Ok(self.local)
    }
    fn remote_addr(&self) -> Option<SocketAddr> {
        Some(self.server)
    }
    async fn close(&self) -> webrtc_util::Result<()> {
        let _ = self.w.lock().await.shutdown().await;
        Ok(())
    }
    fn as_any(&self) -> &(dyn std::any::Any + Send + Sync) {
        self
    }
}

async fn turn_client(
    conn: Arc<dyn webrtc_util::Conn + Send + Sync>,
    server: SocketAddr,
    creds: &IceCredentials,
) -> turn::client::Client {
    let client = turn::client::Client::new(turn::client::ClientConfig {
        stun_serv_addr: server.to_string(),
        turn_serv_addr: server.to_string(),
        username: creds.username.clone(),
        password: creds.credential.clone(),
        realm: String::new(),
        software: String::new(),
        rto_in_ms: 0,
        conn,
        vnet: None,
    })
    .await
    .expect("TURN client");
    client.listen().await.expect("client listens");
    client
}

/// Allocates through `client` and relays one datagram out to a plain UDP peer and three back
/// (the later ones over a channel binding); returns the relay, its address and the peer.
async fn relay_both_ways(
    client: &turn::client::Client,
    label: &str,
) -> (impl webrtc_util::Conn, SocketAddr, UdpSocket) {
    use webrtc_util::Conn as _;
    let relay = timeout(STEP, client.allocate())
        .await
        .expect("allocation in time")
        .expect("allocation");
    let relayed = relay.local_addr().expect("relayed address");
    assert_eq!(relayed.ip(), LOCALHOST);
    assert!((EMBEDDED_RELAY_PORTS.min..=EMBEDDED_RELAY_PORTS.max).contains(&relayed.port()));

    // A plain UDP peer on the far side of the relay.
    let peer = UdpSocket::bind(loopback(0)).await.expect("peer socket");
    let peer_addr = peer.local_addr().expect("peer addr");
    timeout(STEP, relay.send_to(label.as_bytes(), peer_addr))
        .await
        .expect("send in time")
        .expect("send through the relay");
    let mut buf = [0u8; 1500];
    let (n, from) = timeout(STEP, peer.recv_from(&mut buf))
        .await
        .expect("peer receives in time")
        .expect("peer receives");
    assert_eq!(&buf[..n], label.as_bytes());
    assert_eq!(from, relayed, "the peer sees the relayed address");

    // And back, several times: the second and later go over a channel binding.
    for i in 0..3 {
        let msg = format!("reply {i}");
        peer.send_to(msg.as_bytes(), relayed)
            .await
            .expect("peer replies");
        let (n, from) = timeout(STEP, relay.recv_from(&mut buf))
            .await
            .expect("client receives in time")
            .expect("client receives");
        assert_eq!(&buf[..n], msg.as_bytes());
        assert_eq!(from, peer_addr);
    }
    (relay, relayed, peer)
}

/// Hangs up a stream client and waits until the server has released its allocation (RFC
/// 8656 §3.1: allocations over a stream die with it).
async fn hang_up(
    server: &TurnServer,
    client: &turn::client::Client,
    conn: Arc<dyn webrtc_util::Conn + Send + Sync>,
    local: SocketAddr,
) {
    client.close().await.expect("client close");
    conn.close().await.expect("hang up");
    timeout(STEP, async {
        while server.allocations().await.iter().any(|a| a.client == local) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("allocation released when the connection closes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn turn_over_tcp_relays_udp_both_ways() {
    init_tracing();
    let started = Instant::now();
    let server = TurnServer::start(&settings()).await.expect("TURN starts");
    let tcp_addr = server.tcp_addr().expect("TCP listener");
    assert_eq!(server.tls_addr(), None, "no TLS listener unless asked for");
    let creds = server.credentials("carol", SystemTime::now());

    let stream = TcpStream::connect(tcp_addr)
        .await
        .expect("connect TURN/TCP");
    let local = stream.local_addr().expect("local addr");
    let (r, w) = stream.into_split();
    let conn = FramedTcp::new(r, w, local, tcp_addr);
    let client = turn_client(conn.clone(), tcp_addr, &creds).await;
    let (_relay, relayed, _peer) = relay_both_ways(&client, "over tcp").await;

    let allocations = server.allocations().await;
    let mine = allocations
        .iter()
        .find(|a| a.client == local)
        .expect("the TCP client's allocation is listed");
    assert_eq!(mine.relay_addr, relayed);
    assert!(mine.relayed_bytes > 0, "{mine:?}");

    hang_up(&server, &client, conn, local).await;
    server.close().await;
    tracing::info!(elapsed = ?started.elapsed(), "TCP relay test");
}

// ── TURN over TLS, on the HTTPS certificate ───────────────────────────────────

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn turn_over_tls_relays_on_the_nodes_certificate_and_takes_renewals() {
    init_tracing();
    let files = tempfile::tempdir().expect("dir");
    let (first, renewed) = (
        support::certs::issue("turn-first"),
        support::certs::issue("turn-renewed"),
    );
    support::certs::install(files.path(), &first);
    let reloader = neulbi::edge::tls::CertReloader::open(&neulbi::edge::tls::TlsSettings {
        cert_file: Some(files.path().join("fullchain.pem")),
        key_file: Some(files.path().join("privkey.pem")),
        ..Default::default()
    })
    .expect("certificate loads");
    let https = Arc::new(reloader.server_config().expect("rustls config"));

    // Without a certificate the TLS listener is refused by name.
    let tls_settings = TurnSettings {
        listen_udp: None,
        listen_tcp: None,
        listen_tls: Some(loopback(0)),
        tls_host: Some("localhost".into()),
        ..settings()
    };
    let refused = match TurnServer::start(&tls_settings).await {
        Ok(_) => panic!("TLS without a certificate must not start"),
        Err(e) => e.to_string(),
    };
    assert!(refused.contains("NEULBI_TURN_LISTEN_TLS"), "{refused}");
    assert!(refused.contains("NEULBI_TLS_CERT"), "{refused}");

    let server = TurnServer::start_with_tls(&tls_settings, Some(https))
        .await
        .expect("TURN over TLS starts");
    let tls_addr = server.tls_addr().expect("TLS listener");
    assert_eq!(
        server.urls(),
        [format!("turns:localhost:{}?transport=tcp", tls_addr.port())],
        "browsers get a turns: URL naming the certificate's host"
    );
    let creds = server.credentials("dana", SystemTime::now());

    // A client offering the TURN ALPN id (RFC 7443) is served; it sees the node's certificate.
    let connector =
        support::certs::connector_with_alpn(&[&first.ca, &renewed.ca], vec![b"stun.turn".to_vec()]);
    let stream = support::certs::connect(&connector, tls_addr).await;
    assert_eq!(support::certs::shown(&stream), first.leaf);
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"stun.turn"[..]));
    let local = stream.get_ref().0.local_addr().expect("local addr");
    let (r, w) = tokio::io::split(stream);
    let conn = FramedTcp::new(r, w, local, tls_addr);
    let client = turn_client(conn.clone(), tls_addr, &creds).await;
    let (relay, relayed, peer) = relay_both_ways(&client, "over tls").await;
    assert!(
        server
            .allocations()
            .await
            .iter()
            .any(|a| a.client == local && a.relay_addr == relayed),
        "the TLS client's allocation is listed"
    );

    // Renewal: the files are swapped and reloaded; new handshakes get the new certificate
    // while the open connection's allocation keeps relaying.
    support::certs::install(files.path(), &renewed);
    assert!(reloader.reload_if_changed(), "the renewal is picked up");
    // A new client: a resumed session would not show the certificate again.
    let connector =
        support::certs::connector_with_alpn(&[&first.ca, &renewed.ca], vec![b"stun.turn".to_vec()]);
    let fresh = support::certs::connect(&connector, tls_addr).await;
    assert_eq!(support::certs::shown(&fresh), renewed.leaf);
    drop(fresh);
    peer.send_to(b"after renewal", relayed)
        .await
        .expect("peer sends");
    let mut buf = [0u8; 1500];
    let (n, _) = {
        use webrtc_util::Conn as _;
        timeout(STEP, relay.recv_from(&mut buf))
            .await
            .expect("old connection still relays")
            .expect("receive")
    };
    assert_eq!(&buf[..n], b"after renewal");

    // A client that connects and never says hello does not keep anyone else out; one that
    // speaks plain TURN to the TLS port is dropped.
    let silent = TcpStream::connect(tls_addr).await.expect("connect");
    let mut plain = TcpStream::connect(tls_addr).await.expect("connect");
    plain
        .write_all(&[
            0, 1, 0, 0, 0x21, 0x12, 0xa4, 0x42, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        ])
        .await
        .expect("write");
    let mut end = [0u8; 64];
    let n = timeout(STEP, plain.read(&mut end))
        .await
        .expect("plain TURN on the TLS port is answered in time");
    assert!(
        matches!(n, Ok(0) | Err(_)) || end[0] == 0x15,
        "closed or a TLS alert, never a STUN answer: {n:?} {:?}",
        &end[..4]
    );
    let third = support::certs::connect(&connector, tls_addr).await;
    assert_eq!(support::certs::shown(&third), renewed.leaf);
    drop((silent, third));

    hang_up(&server, &client, conn, local).await;
    server.close().await;
}

// ── Credentials on the wire ───────────────────────────────────────────────────

async fn allocate_over_udp(
    server: SocketAddr,
    creds: &IceCredentials,
) -> Result<SocketAddr, String> {
    use webrtc_util::Conn as _;
    let socket = Arc::new(UdpSocket::bind(loopback(0)).await.expect("client socket"));
    let client = turn_client(socket, server, creds).await;
    let result = match timeout(STEP, client.allocate()).await {
        Ok(Ok(relay)) => relay.local_addr().map_err(|e| e.to_string()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("allocate timed out".into()),
    };
    let _ = client.close().await;
    result
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_or_forged_credentials_are_refused_on_the_wire() {
    init_tracing();
    let server = TurnServer::start(&settings()).await.expect("TURN starts");
    let udp = server.udp_addr().expect("UDP listener");
    let ttl = Duration::from_secs(600);

    let expired = rest_credentials(
        SECRET,
        "dave",
        ttl,
        SystemTime::now() - 2 * ttl,
        server.urls(),
    );
    let err = allocate_over_udp(udp, &expired)
        .await
        .expect_err("expired credentials refused");
    tracing::info!(%err, "expired");

    let mut wrong = server.credentials("dave", SystemTime::now());
    wrong.credential = "d3JvbmcgcGFzc3dvcmQ=".into();
    allocate_over_udp(udp, &wrong)
        .await
        .expect_err("wrong password refused");

    let forged = rest_credentials(
        "not-the-secret",
        "dave",
        ttl,
        SystemTime::now(),
        server.urls(),
    );
    allocate_over_udp(udp, &forged)
        .await
        .expect_err("credentials under another secret refused");

    let good = server.credentials("dave", SystemTime::now());
    let relayed = allocate_over_udp(udp, &good)
        .await
        .expect("fresh credentials accepted");
    assert_eq!(relayed.ip(), LOCALHOST);

    server.close().await;
}

// ── Listener errors ───────────────────────────────────────────────────────────

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_port_names_the_address_and_the_setting() {
    init_tracing();
    let taken_udp = std::net::UdpSocket::bind(loopback(0)).expect("hold a UDP port");
    let addr = taken_udp.local_addr().expect("addr");
    let err = TurnServer::start(&TurnSettings {
        listen_udp: Some(addr),
        listen_tcp: None,
        ..settings()
    })
    .await
    .err()
    .expect("taken UDP port refused");
    assert!(matches!(err, TurnError::PortInUse { .. }), "{err:?}");
    let msg = err.to_string();
    assert_eq!(
        msg,
        format!(
            "TURN UDP port {addr} is in use (setting media.turn.listen_udp / NEULBI_TURN_LISTEN_UDP)"
        )
    );

    let taken_tcp = std::net::TcpListener::bind(loopback(0)).expect("hold a TCP port");
    let addr = taken_tcp.local_addr().expect("addr");
    let msg = TurnServer::start(&TurnSettings {
        listen_tcp: Some(addr),
        ..settings()
    })
    .await
    .err()
    .expect("taken TCP port refused")
    .to_string();
    assert!(msg.contains(&addr.to_string()), "{msg}");
    assert!(msg.contains("media.turn.listen_tcp"), "{msg}");
    assert!(msg.contains("NEULBI_TURN_LISTEN_TCP"), "{msg}");

    // close() gives the ports back.
    let server = TurnServer::start(&settings()).await.expect("TURN starts");
    let (udp, tcp) = (
        server.udp_addr().expect("udp"),
        server.tcp_addr().expect("tcp"),
    );
    server.close().await;
    std::net::UdpSocket::bind(udp).expect("UDP port free after close");
    std::net::TcpListener::bind(tcp).expect("TCP port free after close");
}

// ── coturn as the external TURN server ────────────────────────────────────────

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_relay_only_peers_exchange_data_through_coturn_with_rest_credentials() {
    init_tracing();
    let started = Instant::now();
    let dir = tempfile::tempdir().expect("temp dir");
    let coturn_secret = "coturn-shared-secret";
    let mut coturn = support::coturn::start(dir.path(), coturn_secret, "neulbi.test");
    support::coturn::wait_ready(&mut coturn, dir.path()).await;

    let settings = TurnSettings {
        external: Some(ExternalTurn {
            urls: vec![format!("turn:127.0.0.1:{}?transport=udp", coturn.port)],
            secret: coturn_secret.into(),
        }),
        ..settings()
    };
    let alice = settings
        .external_credentials("alice", SystemTime::now())
        .expect("external TURN configured");
    let bob = settings
        .external_credentials("bob", SystemTime::now())
        .expect("external TURN configured");

    let connected = timeout(
        4 * STEP,
        relayed_data_channel(ice_server(&alice, "udp"), ice_server(&bob, "udp")),
    )
    .await
    .unwrap_or_else(|_| {
        panic!(
            "relay through coturn timed out:\n{}",
            support::coturn::logs(dir.path())
        )
    });
    assert_in_range(&connected.candidates, support::coturn::RELAY_PORTS);
    connected.close().await;
    let logs = support::coturn::logs(dir.path());
    for user in ["alice", "bob"] {
        assert!(
            logs.lines()
                .any(|l| l.contains("ALLOCATE processed, success") && l.contains(user)),
            "coturn logged no allocation for {user}:\n{logs}"
        );
    }

    drop(coturn);
    tracing::info!(elapsed = ?started.elapsed(), "coturn relay test");
}
