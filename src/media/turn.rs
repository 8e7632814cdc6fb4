//! The embedded TURN relay (RFC 8656) and TURN REST credentials.
//!
//! Browsers behind symmetric NATs or UDP-hostile firewalls cannot reach the SFU directly; a
//! TURN server relays their media. A single-node Neulbi runs its own relay (this module, on
//! the `turn` crate of webrtc-rs), larger deployments point browsers at an external coturn.
//! Both take the same credentials: the TURN REST API scheme of
//! draft-uberti-behave-turn-rest (coturn's `use-auth-secret`), where the username carries its
//! own expiry and the password is an HMAC of the username under a secret shared with the
//! signaling layer. No per-user state is stored and a leaked credential dies on its own.
//!
//! Client-to-server transports: UDP, TCP (RFC 8656 §5, framed STUN and padded ChannelData on
//! one stream) for networks that block UDP, and TLS over TCP (`turns:`, RFC 8656 §3.1 / RFC
//! 7443) for networks that let only TLS on 443-like ports through. TLS uses the HTTPS
//! listener's certificate and picks up its renewals. Relayed transport is UDP only.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha1::Sha1;
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{Mutex, watch};
use tokio::task::{JoinHandle, JoinSet};
use tracing::{Instrument, debug, info, info_span, warn};
use turn::auth::{AuthHandler, generate_auth_key};
use turn::relay::relay_range::RelayAddressGeneratorRanges;
use turn::server::Server;
use turn::server::config::{ConnConfig, ServerConfig};
use webrtc_util::Conn;
use webrtc_util::vnet::net::Net;

/// Where each setting lives, so errors can name the knob an operator must turn: the config
/// file key and the environment variable.
mod names {
    pub const LISTEN_UDP: (&str, &str) = ("media.turn.listen_udp", "NEULBI_TURN_LISTEN_UDP");
    pub const LISTEN_TCP: (&str, &str) = ("media.turn.listen_tcp", "NEULBI_TURN_LISTEN_TCP");
    pub const LISTEN_TLS: (&str, &str) = ("media.turn.listen_tls", "NEULBI_TURN_LISTEN_TLS");
    pub const TLS_HOST: (&str, &str) = ("media.turn.tls_host", "NEULBI_TURN_TLS_HOST");
    pub const RELAY_IP: (&str, &str) = ("media.turn.relay_ip", "NEULBI_TURN_RELAY_IP");
    pub const RELAY_BIND: (&str, &str) = ("media.turn.relay_bind", "NEULBI_TURN_RELAY_BIND");
    pub const RELAY_PORTS: (&str, &str) = ("media.turn.relay_ports", "NEULBI_TURN_RELAY_PORTS");
    pub const REALM: (&str, &str) = ("media.turn.realm", "NEULBI_TURN_REALM");
    pub const SECRET: (&str, &str) = ("media.turn.secret", "NEULBI_TURN_SECRET");
    pub const CREDENTIAL_TTL: (&str, &str) = (
        "media.turn.credential_ttl_secs",
        "NEULBI_TURN_CREDENTIAL_TTL_SECS",
    );
    pub const EXTERNAL_URLS: (&str, &str) =
        ("media.turn.external.urls", "NEULBI_TURN_EXTERNAL_URLS");
    pub const EXTERNAL_SECRET: (&str, &str) =
        ("media.turn.external.secret", "NEULBI_TURN_EXTERNAL_SECRET");
}

/// The default TURN port (RFC 8656 §18), for both UDP and TCP.
pub const DEFAULT_TURN_PORT: u16 = 3478;

/// The default TURN-over-TLS port (RFC 8656 §18), as coturn and browsers expect it.
pub const DEFAULT_TURNS_PORT: u16 = 5349;

/// The ALPN id of STUN/TURN over TLS (RFC 7443). The HTTPS listener's configuration offers
/// only `http/1.1`; a client that offers `stun.turn` must not be refused for it.
const ALPN_TURN: &[u8] = b"stun.turn";

/// How long a TLS client may take to finish its handshake before its connection is dropped,
/// so half-open connections cannot pile up.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Connections one stream listener (TCP or TLS) serves at once; further ones are closed on
/// accept. Each holds a task, a socket and possibly an allocation.
const MAX_STREAM_CLIENTS: usize = 4096;

/// Why the TURN server could not start, or a TURN setting is unusable. Every variant names
/// the setting (config key and environment variable) so the operator knows what to change.
#[derive(Debug, Error)]
pub enum TurnError {
    /// Another process (or another Neulbi) holds the listening port.
    #[error("TURN {proto} port {addr} is in use (setting {setting} / {env})")]
    PortInUse {
        /// `UDP` or `TCP`.
        proto: &'static str,
        /// The address that could not be bound.
        addr: SocketAddr,
        /// The config file key.
        setting: &'static str,
        /// The environment variable.
        env: &'static str,
    },
    /// Binding the listener failed for another reason (no such address, permission).
    #[error("cannot bind TURN {proto} listener {addr} (setting {setting} / {env}): {source}")]
    Bind {
        /// `UDP` or `TCP`.
        proto: &'static str,
        /// The address that could not be bound.
        addr: SocketAddr,
        /// The config file key.
        setting: &'static str,
        /// The environment variable.
        env: &'static str,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// A setting holds a value the server cannot run with.
    #[error("invalid TURN setting {setting} / {env}: {message}")]
    Invalid {
        /// The config file key.
        setting: &'static str,
        /// The environment variable.
        env: &'static str,
        /// What is wrong and what would be accepted.
        message: String,
    },
    /// The `turn` crate refused its configuration.
    #[error("TURN server failed to start: {0}")]
    Server(#[source] turn::Error),
}

impl TurnError {
    fn invalid(name: (&'static str, &'static str), message: impl Into<String>) -> Self {
        TurnError::Invalid {
            setting: name.0,
            env: name.1,
            message: message.into(),
        }
    }
}

/// The UDP ports relayed allocations may use (both ends inclusive). A range, not "any
/// port", so a firewall in front of the relay can be opened for exactly these ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortRange {
    /// Lowest relay port; must be at least 1.
    pub min: u16,
    /// Highest relay port; at least `min`.
    pub max: u16,
}

impl Default for PortRange {
    /// The IANA dynamic range, coturn's default too.
    fn default() -> Self {
        PortRange {
            min: 49152,
            max: 65535,
        }
    }
}

/// An external TURN server (coturn with `use-auth-secret`) to hand out instead of, or
/// besides, the embedded one: deployments with several nodes or a dedicated relay host
/// share one TURN fleet, with the same REST credential scheme.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct ExternalTurn {
    /// ICE server URLs browsers get, e.g. `turn:turn.example.com:3478?transport=udp`.
    pub urls: Vec<String>,
    /// coturn's `static-auth-secret`.
    pub secret: String,
}

impl fmt::Debug for ExternalTurn {
    /// Redacts the secret: settings are logged at startup.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExternalTurn")
            .field("urls", &self.urls)
            .field("secret", &redacted(&self.secret))
            .finish()
    }
}

/// Settings of the embedded TURN server and of the credentials handed to browsers
/// (`[media.turn]` in the config file, `NEULBI_TURN_*` in the environment).
///
/// Defaults: `listen_udp` and `listen_tcp` = `0.0.0.0:3478` (the production default; tests
/// always bind 127.0.0.1), `relay_ip` = `127.0.0.1` (set it to the address peers reach the
/// relay at), `relay_bind` = none (relays bind `relay_ip`; set `0.0.0.0` behind a 1:1 NAT
/// whose public address is `relay_ip`), `relay_ports` = 49152–65535, `realm` = `neulbi`,
/// `secret` = empty (the server refuses to start without one), `credential_ttl_secs` =
/// 86400, `external` = none.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TurnSettings {
    /// UDP listener (`NEULBI_TURN_LISTEN_UDP`); `None` disables TURN over UDP.
    pub listen_udp: Option<SocketAddr>,
    /// TCP listener (`NEULBI_TURN_LISTEN_TCP`); `None` disables TURN over TCP.
    pub listen_tcp: Option<SocketAddr>,
    /// TLS listener (`NEULBI_TURN_LISTEN_TLS`, typically `0.0.0.0:5349`); `None` (the
    /// default) disables TURN over TLS. Needs the node's TLS certificate (`[tls]`).
    pub listen_tls: Option<SocketAddr>,
    /// Host name in the `turns:` URLs browsers get (`NEULBI_TURN_TLS_HOST`); the certificate
    /// must name it. Unset: the host of the node's public URL.
    pub tls_host: Option<String>,
    /// Address advertised in relayed candidates and, for a wildcard listener, in the ICE
    /// server URLs (`NEULBI_TURN_RELAY_IP`).
    pub relay_ip: IpAddr,
    /// Address relay sockets bind, when it differs from `relay_ip` (`NEULBI_TURN_RELAY_BIND`).
    pub relay_bind: Option<IpAddr>,
    /// Ports of relayed allocations (`NEULBI_TURN_RELAY_PORTS`, e.g. `49152-65535`).
    pub relay_ports: PortRange,
    /// TURN realm; part of the long-term key, so it must match what clients are told.
    pub realm: String,
    /// Shared secret for REST credentials (`NEULBI_TURN_SECRET`). Keep it out of files in
    /// production; anyone with it can mint credentials.
    pub secret: String,
    /// How long handed-out credentials stay valid (`NEULBI_TURN_CREDENTIAL_TTL_SECS`).
    /// Allocation refreshes reuse the credential, so this must exceed the longest call.
    #[serde(rename = "credential_ttl_secs", with = "secs")]
    pub credential_ttl: Duration,
    /// An external TURN server (coturn) to hand out instead of the embedded one.
    pub external: Option<ExternalTurn>,
}

impl Default for TurnSettings {
    fn default() -> Self {
        let any = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), DEFAULT_TURN_PORT);
        TurnSettings {
            listen_udp: Some(any),
            listen_tcp: Some(any),
            listen_tls: None,
            tls_host: None,
            relay_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            relay_bind: None,
            relay_ports: PortRange::default(),
            realm: "neulbi".to_owned(),
            secret: String::new(),
            credential_ttl: Duration::from_secs(24 * 60 * 60),
            external: None,
        }
    }
}

impl fmt::Debug for TurnSettings {
    /// Redacts the secret: settings are logged at startup.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TurnSettings")
            .field("listen_udp", &self.listen_udp)
            .field("listen_tcp", &self.listen_tcp)
            .field("listen_tls", &self.listen_tls)
            .field("tls_host", &self.tls_host)
            .field("relay_ip", &self.relay_ip)
            .field("relay_bind", &self.relay_bind)
            .field("relay_ports", &self.relay_ports)
            .field("realm", &self.realm)
            .field("secret", &redacted(&self.secret))
            .field("credential_ttl", &self.credential_ttl)
            .field("external", &self.external)
            .finish()
    }
}

fn redacted(secret: &str) -> &'static str {
    if secret.is_empty() {
        "<empty>"
    } else {
        "<redacted>"
    }
}

/// Durations in the config file are whole seconds, like the rest of Neulbi's settings.
mod secs {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_secs())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_secs)
    }
}

impl TurnSettings {
    /// Applies `NEULBI_TURN_*` variables read through `get` (injected, as in `config.rs`, so
    /// tests need no process environment). An empty `NEULBI_TURN_LISTEN_*` disables that
    /// listener.
    pub fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) -> Result<(), TurnError> {
        fn parse<T: std::str::FromStr>(
            name: (&'static str, &'static str),
            v: &str,
        ) -> Result<T, TurnError>
        where
            T::Err: fmt::Display,
        {
            v.trim()
                .parse()
                .map_err(|e: T::Err| TurnError::invalid(name, format!("{v:?}: {e}")))
        }
        let listener = |name, v: String| -> Result<Option<SocketAddr>, TurnError> {
            if v.trim().is_empty() {
                Ok(None)
            } else {
                parse(name, &v).map(Some)
            }
        };
        if let Some(v) = get(names::LISTEN_UDP.1) {
            self.listen_udp = listener(names::LISTEN_UDP, v)?;
        }
        if let Some(v) = get(names::LISTEN_TCP.1) {
            self.listen_tcp = listener(names::LISTEN_TCP, v)?;
        }
        if let Some(v) = get(names::LISTEN_TLS.1) {
            self.listen_tls = listener(names::LISTEN_TLS, v)?;
        }
        if let Some(v) = get(names::TLS_HOST.1) {
            let v = v.trim();
            self.tls_host = (!v.is_empty()).then(|| v.to_owned());
        }
        if let Some(v) = get(names::RELAY_IP.1) {
            self.relay_ip = parse(names::RELAY_IP, &v)?;
        }
        if let Some(v) = get(names::RELAY_BIND.1) {
            self.relay_bind = if v.trim().is_empty() {
                None
            } else {
                Some(parse(names::RELAY_BIND, &v)?)
            };
        }
        if let Some(v) = get(names::RELAY_PORTS.1) {
            let (min, max) = v.split_once('-').ok_or_else(|| {
                TurnError::invalid(names::RELAY_PORTS, format!("{v:?}: expected MIN-MAX"))
            })?;
            self.relay_ports = PortRange {
                min: parse(names::RELAY_PORTS, min)?,
                max: parse(names::RELAY_PORTS, max)?,
            };
        }
        if let Some(v) = get(names::REALM.1) {
            self.realm = v;
        }
        if let Some(v) = get(names::SECRET.1) {
            self.secret = v;
        }
        if let Some(v) = get(names::CREDENTIAL_TTL.1) {
            self.credential_ttl = Duration::from_secs(parse(names::CREDENTIAL_TTL, &v)?);
        }
        let urls = get(names::EXTERNAL_URLS.1);
        let secret = get(names::EXTERNAL_SECRET.1);
        if urls.is_some() || secret.is_some() {
            let external = self.external.get_or_insert_with(ExternalTurn::default);
            if let Some(v) = urls {
                external.urls = v
                    .split(',')
                    .map(str::trim)
                    .filter(|u| !u.is_empty())
                    .map(str::to_owned)
                    .collect();
            }
            if let Some(v) = secret {
                external.secret = v;
            }
        }
        Ok(())
    }

    /// Checks what `TurnServer::start` needs before anything is bound, so a bad setting is
    /// reported by name rather than as a socket error.
    pub fn validate(&self) -> Result<(), TurnError> {
        if self.listen_udp.is_none() && self.listen_tcp.is_none() && self.listen_tls.is_none() {
            return Err(TurnError::invalid(
                names::LISTEN_UDP,
                "none of listen_udp, listen_tcp and listen_tls is set; the embedded TURN server has nothing to listen on",
            ));
        }
        if let Some(host) = &self.tls_host
            && (host.is_empty() || host.contains(['/', '?', '#', '@', ' ']))
        {
            return Err(TurnError::invalid(
                names::TLS_HOST,
                format!("{host:?} is not a host name"),
            ));
        }
        if self.secret.is_empty() {
            return Err(TurnError::invalid(
                names::SECRET,
                "empty; the embedded TURN server needs a shared secret for its credentials",
            ));
        }
        if self.relay_ip.is_unspecified() {
            return Err(TurnError::invalid(
                names::RELAY_IP,
                format!("{} cannot be advertised to peers", self.relay_ip),
            ));
        }
        if let Some(bind) = self.relay_bind
            && bind.is_ipv4() != self.relay_ip.is_ipv4()
        {
            return Err(TurnError::invalid(
                names::RELAY_BIND,
                format!("{bind} and relay_ip {} differ in IP version", self.relay_ip),
            ));
        }
        let PortRange { min, max } = self.relay_ports;
        if min == 0 || max < min {
            return Err(TurnError::invalid(
                names::RELAY_PORTS,
                format!("{min}-{max}: need 1 <= min <= max"),
            ));
        }
        if self.realm.is_empty() {
            return Err(TurnError::invalid(names::REALM, "empty"));
        }
        if self.credential_ttl.is_zero() {
            return Err(TurnError::invalid(names::CREDENTIAL_TTL, "zero"));
        }
        Ok(())
    }

    /// Credentials for the external TURN server, if one is configured; the signaling layer
    /// prefers these over the embedded server's.
    pub fn external_credentials(&self, user: &str, now: SystemTime) -> Option<IceCredentials> {
        let external = self.external.as_ref()?;
        if external.urls.is_empty() {
            return None;
        }
        Some(rest_credentials(
            &external.secret,
            user,
            self.credential_ttl,
            now,
            &external.urls,
        ))
    }
}

/// One ICE server entry as a browser's `RTCPeerConnection` takes it (`urls`, `username`,
/// `credential`), plus when it stops working so the client can ask for fresh ones.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IceCredentials {
    /// TURN URLs, e.g. `turn:203.0.113.7:3478?transport=udp`.
    pub urls: Vec<String>,
    /// `<expiry unix seconds>:<user id>`.
    pub username: String,
    /// base64(HMAC-SHA1(secret, username)).
    pub credential: String,
    /// Expiry, in seconds since the Unix epoch (the number in `username`).
    pub expires_at: u64,
}

/// TURN REST API credentials (draft-uberti-behave-turn-rest; coturn `use-auth-secret`):
/// username `<now + ttl as unix seconds>:<user>`, password base64(HMAC-SHA1(secret,
/// username)). Pure, so the signaling layer can hand them out with each join and tests can
/// make expired ones; the same secret works for the embedded server and an external coturn.
pub fn rest_credentials(
    secret: &str,
    user: &str,
    ttl: Duration,
    now: SystemTime,
    urls: &[String],
) -> IceCredentials {
    let expires_at = unix_secs(now).saturating_add(ttl.as_secs());
    let username = format!("{expires_at}:{user}");
    let credential = rest_password(secret, &username);
    IceCredentials {
        urls: urls.to_vec(),
        username,
        credential,
        expires_at,
    }
}

fn unix_secs(t: SystemTime) -> u64 {
    // A clock before 1970 is broken; treating it as the epoch makes every credential expired.
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// base64(HMAC-SHA1(secret, username)): the REST API password of `username`.
fn rest_password(secret: &str, username: &str) -> String {
    let Ok(mut mac) = Hmac::<Sha1>::new_from_slice(secret.as_bytes()) else {
        // HMAC takes keys of any length; this branch cannot run.
        return String::new();
    };
    mac.update(username.as_bytes());
    BASE64.encode(mac.finalize().into_bytes())
}

/// Why a REST username is refused.
#[derive(Debug, Error, PartialEq, Eq)]
enum RestUsernameError {
    #[error("username does not start with an expiry timestamp")]
    Malformed,
    #[error("credential expired at {expires_at} (now {now})")]
    Expired { expires_at: u64, now: u64 },
}

/// The expiry of a REST username, `<expiry>` or `<expiry>:<user>` as coturn accepts them,
/// if it is still in the future.
fn check_rest_username(username: &str, now: SystemTime) -> Result<u64, RestUsernameError> {
    let stamp = username.split_once(':').map_or(username, |(t, _)| t);
    let expires_at: u64 = stamp.parse().map_err(|_| RestUsernameError::Malformed)?;
    let now = unix_secs(now);
    if expires_at <= now {
        return Err(RestUsernameError::Expired { expires_at, now });
    }
    Ok(expires_at)
}

/// The `turn` crate's hook: given a username it returns the long-term key
/// MD5(username ":" realm ":" password) (RFC 5389 §15.4 / RFC 8489 §9.2.2), with which the
/// server checks MESSAGE-INTEGRITY. Refusing expired or malformed usernames here makes the
/// server answer 401 without a key to check against.
struct RestAuthHandler {
    secret: String,
}

impl RestAuthHandler {
    /// The key for `username` at `now`, or why there is none; split from the trait method
    /// so tests can move the clock.
    fn key(
        &self,
        username: &str,
        realm: &str,
        now: SystemTime,
    ) -> Result<Vec<u8>, RestUsernameError> {
        check_rest_username(username, now)?;
        let password = rest_password(&self.secret, username);
        Ok(generate_auth_key(username, realm, &password))
    }
}

impl AuthHandler for RestAuthHandler {
    fn auth_handle(
        &self,
        username: &str,
        realm: &str,
        src_addr: SocketAddr,
    ) -> Result<Vec<u8>, turn::Error> {
        self.key(username, realm, SystemTime::now())
            .map_err(|reason| {
                info!(%src_addr, username, %reason, "TURN credential refused");
                turn::Error::Other(reason.to_string())
            })
    }
}

/// Summary of one live allocation, for health checks and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllocationSummary {
    /// The REST username that made it (`<expiry>:<user>`).
    pub username: String,
    /// Client transport address as the server sees it.
    pub client: SocketAddr,
    /// The relayed transport address peers send to.
    pub relay_addr: SocketAddr,
    /// Bytes relayed so far, both directions.
    pub relayed_bytes: usize,
}

/// A running embedded TURN server: one UDP, one TCP and one TLS listener (each optional),
/// and the allocations they serve. Dropping it stops the listeners in the background;
/// `close` waits until they are gone.
pub struct TurnServer {
    udp: Option<UdpListener>,
    tcp: Option<TcpAcceptor>,
    tls: Option<TcpAcceptor>,
    urls: Vec<String>,
    secret: String,
    credential_ttl: Duration,
}

struct UdpListener {
    addr: SocketAddr,
    server: Server,
    closed: watch::Receiver<bool>,
}

struct TcpAcceptor {
    addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<()>,
    servers: Arc<std::sync::Mutex<HashMap<SocketAddr, Arc<Server>>>>,
}

/// What every TCP or TLS connection's server is built from.
struct TcpContext {
    local: SocketAddr,
    realm: String,
    auth: Arc<RestAuthHandler>,
    relay: RelayPlan,
    servers: Arc<std::sync::Mutex<HashMap<SocketAddr, Arc<Server>>>>,
    /// `Some` on the TLS listener: each connection's handshake comes first.
    tls: Option<tokio_rustls::TlsAcceptor>,
    /// Admits at most [`MAX_STREAM_CLIENTS`] connections at once.
    slots: Arc<tokio::sync::Semaphore>,
}

/// How relayed addresses are made, cloned into each listener's allocation manager.
#[derive(Clone)]
struct RelayPlan {
    advertised: IpAddr,
    bind: IpAddr,
    ports: PortRange,
}

impl RelayPlan {
    fn generator(&self) -> Box<RelayAddressGeneratorRanges> {
        let address = match self.bind {
            IpAddr::V4(ip) => ip.to_string(),
            IpAddr::V6(ip) => format!("[{ip}]"),
        };
        Box::new(RelayAddressGeneratorRanges {
            relay_address: self.advertised,
            min_port: self.ports.min,
            max_port: self.ports.max,
            // Random picks in the range; a busy range needs more than the crate's 10 tries.
            max_retries: 64,
            address,
            net: Arc::new(Net::new(None)),
        })
    }
}

impl TurnServer {
    /// Binds the UDP and TCP listeners and starts serving; a node without a certificate.
    /// A TLS listener in `settings` is refused (see [`TurnServer::start_with_tls`]).
    pub async fn start(settings: &TurnSettings) -> Result<TurnServer, TurnError> {
        Self::start_with_tls(settings, None).await
    }

    /// Binds the listeners and starts serving. A taken port is an error naming the address
    /// and the setting, not a silent fallback: browsers are told this exact port. `tls` is
    /// the node's certificate (the HTTPS listener's, so renewals reach TURN too); the TLS
    /// listener needs it.
    pub async fn start_with_tls(
        settings: &TurnSettings,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> Result<TurnServer, TurnError> {
        settings.validate()?;
        let tls = match (settings.listen_tls, tls) {
            (None, _) => None,
            (Some(_), None) => {
                return Err(TurnError::invalid(
                    names::LISTEN_TLS,
                    "TURN over TLS needs the node's certificate: set tls.cert_file and tls.key_file (NEULBI_TLS_CERT, NEULBI_TLS_KEY)",
                ));
            }
            (Some(_), Some(config)) => {
                let Some(host) = settings.tls_host.clone() else {
                    return Err(TurnError::invalid(
                        names::TLS_HOST,
                        "unset, and no public URL to take the host from; turns: URLs need the host name the certificate names",
                    ));
                };
                // The HTTPS configuration offers only http/1.1; TURN clients may offer
                // stun.turn (RFC 7443) or nothing.
                let mut config = (*config).clone();
                config.alpn_protocols = vec![ALPN_TURN.to_vec()];
                Some((tokio_rustls::TlsAcceptor::from(Arc::new(config)), host))
            }
        };
        let span = info_span!(
            "turn_server",
            udp = ?settings.listen_udp,
            tcp = ?settings.listen_tcp,
            tls = ?settings.listen_tls
        );
        async move {
            let auth = Arc::new(RestAuthHandler {
                secret: settings.secret.clone(),
            });
            let relay = RelayPlan {
                advertised: settings.relay_ip,
                bind: settings.relay_bind.unwrap_or(settings.relay_ip),
                ports: settings.relay_ports,
            };
            // Bind all before serving any, so a taken TCP port leaves no UDP server behind.
            let udp_socket = match settings.listen_udp {
                Some(addr) => Some(bind_udp(addr).await?),
                None => None,
            };
            let tcp_listener = match settings.listen_tcp {
                Some(addr) => Some(bind_stream(addr, "TCP", names::LISTEN_TCP).await?),
                None => None,
            };
            let tls_listener = match settings.listen_tls {
                Some(addr) => Some(bind_stream(addr, "TLS", names::LISTEN_TLS).await?),
                None => None,
            };

            let mut urls = Vec::new();
            let udp = match udp_socket {
                Some(socket) => {
                    let addr = socket.local_addr().map_err(|source| TurnError::Bind {
                        proto: "UDP",
                        addr: settings
                            .listen_udp
                            .unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0))),
                        setting: names::LISTEN_UDP.0,
                        env: names::LISTEN_UDP.1,
                        source,
                    })?;
                    let (conn, closed) = UdpConn::new(socket, addr);
                    let server = Server::new(ServerConfig {
                        conn_configs: vec![ConnConfig {
                            conn: Arc::new(conn),
                            relay_addr_generator: relay.generator(),
                        }],
                        realm: settings.realm.clone(),
                        auth_handler: auth.clone(),
                        channel_bind_timeout: Duration::ZERO,
                        alloc_close_notify: None,
                    })
                    .await
                    .map_err(TurnError::Server)?;
                    urls.push(turn_url(addr, settings.relay_ip, "udp"));
                    info!(%addr, "TURN listening on UDP");
                    Some(UdpListener {
                        addr,
                        server,
                        closed,
                    })
                }
                None => None,
            };
            let stream = |listener: TcpListener,
                          configured: Option<SocketAddr>,
                          name: (&'static str, &'static str),
                          tls: Option<tokio_rustls::TlsAcceptor>| {
                let addr = listener.local_addr().map_err(|source| TurnError::Bind {
                    proto: if tls.is_some() { "TLS" } else { "TCP" },
                    addr: configured.unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0))),
                    setting: name.0,
                    env: name.1,
                    source,
                })?;
                let servers = Arc::new(std::sync::Mutex::new(HashMap::new()));
                let ctx = Arc::new(TcpContext {
                    local: addr,
                    realm: settings.realm.clone(),
                    auth: auth.clone(),
                    relay: relay.clone(),
                    servers: servers.clone(),
                    tls,
                    slots: Arc::new(tokio::sync::Semaphore::new(MAX_STREAM_CLIENTS)),
                });
                let (shutdown, shutdown_rx) = watch::channel(false);
                let task = tokio::spawn(
                    accept_loop(listener, ctx, shutdown_rx).instrument(tracing::Span::current()),
                );
                Ok::<_, TurnError>(TcpAcceptor {
                    addr,
                    shutdown,
                    task,
                    servers,
                })
            };
            let tcp = match tcp_listener {
                Some(listener) => {
                    let acceptor = stream(listener, settings.listen_tcp, names::LISTEN_TCP, None)?;
                    urls.push(turn_url(acceptor.addr, settings.relay_ip, "tcp"));
                    info!(addr = %acceptor.addr, "TURN listening on TCP");
                    Some(acceptor)
                }
                None => None,
            };
            let tls = match (tls_listener, tls) {
                (Some(listener), Some((acceptor, host))) => {
                    let acceptor = stream(
                        listener,
                        settings.listen_tls,
                        names::LISTEN_TLS,
                        Some(acceptor),
                    )?;
                    urls.push(turns_url(&host, acceptor.addr.port()));
                    info!(addr = %acceptor.addr, %host, "TURN listening on TLS");
                    Some(acceptor)
                }
                _ => None,
            };
            Ok(TurnServer {
                udp,
                tcp,
                tls,
                urls,
                secret: settings.secret.clone(),
                credential_ttl: settings.credential_ttl,
            })
        }
        .instrument(span)
        .await
    }

    /// The bound UDP address (the real port when the setting asked for port 0).
    pub fn udp_addr(&self) -> Option<SocketAddr> {
        self.udp.as_ref().map(|u| u.addr)
    }

    /// The bound TCP address (the real port when the setting asked for port 0).
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.tcp.as_ref().map(|t| t.addr)
    }

    /// The bound TLS address (the real port when the setting asked for port 0).
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls.as_ref().map(|t| t.addr)
    }

    /// The ICE server URLs of this server, UDP first, then TCP, then TLS: what browsers are
    /// told.
    pub fn urls(&self) -> &[String] {
        &self.urls
    }

    /// Fresh REST credentials for `user` on this server, valid for the configured TTL.
    pub fn credentials(&self, user: &str, now: SystemTime) -> IceCredentials {
        rest_credentials(&self.secret, user, self.credential_ttl, now, &self.urls)
    }

    /// The live allocations on every listener, for health checks and metrics.
    pub async fn allocations(&self) -> Vec<AllocationSummary> {
        let mut servers: Vec<Arc<Server>> = Vec::new();
        for stream in self.tcp.iter().chain(&self.tls) {
            if let Ok(map) = stream.servers.lock() {
                servers.extend(map.values().cloned());
            }
        }
        let mut out = Vec::new();
        let udp = self.udp.as_ref().map(|u| &u.server);
        for server in udp.into_iter().chain(servers.iter().map(|s| &**s)) {
            match server.get_allocations_info(None).await {
                Ok(infos) => out.extend(infos.into_iter().map(|(five, info)| AllocationSummary {
                    username: info.username,
                    client: five.src_addr,
                    relay_addr: info.relay_addr,
                    relayed_bytes: info.relayed_bytes,
                })),
                Err(e) => debug!(error = %e, "TURN allocation info unavailable"),
            }
        }
        out
    }

    /// Stops both listeners, releases every allocation and waits until the sockets are
    /// closed, so the ports can be bound again when this returns.
    pub async fn close(self) {
        let span = info_span!(
            "turn_server_close",
            udp = ?self.udp_addr(),
            tcp = ?self.tcp_addr(),
            tls = ?self.tls_addr()
        );
        async move {
            for stream in self.tcp.into_iter().chain(self.tls) {
                stream.shutdown.send_replace(true);
                if let Err(e) = stream.task.await {
                    warn!(error = %e, "TURN stream acceptor ended abnormally");
                }
            }
            if let Some(mut udp) = self.udp {
                if let Err(e) = udp.server.close().await {
                    warn!(error = %e, "TURN UDP server close failed");
                }
                // The read loop closes the socket last; wait for it (bounded) so the port is free.
                let done = tokio::time::timeout(
                    Duration::from_secs(5),
                    udp.closed.wait_for(|closed| *closed),
                )
                .await;
                if done.is_err() {
                    warn!("TURN UDP socket did not close within 5 s");
                }
            }
            info!("TURN server closed");
        }
        .instrument(span)
        .await
    }
}

/// `turn:HOST:PORT?transport=…`; a wildcard listener is advertised at the relay IP.
fn turn_url(addr: SocketAddr, relay_ip: IpAddr, transport: &str) -> String {
    let ip = if addr.ip().is_unspecified() {
        relay_ip
    } else {
        addr.ip()
    };
    let host = match ip {
        IpAddr::V4(ip) => ip.to_string(),
        IpAddr::V6(ip) => format!("[{ip}]"),
    };
    format!("turn:{host}:{}?transport={transport}", addr.port())
}

/// `turns:HOST:PORT?transport=tcp`: browsers check the certificate against `HOST`.
fn turns_url(host: &str, port: u16) -> String {
    format!("turns:{host}:{port}?transport=tcp")
}

async fn bind_udp(addr: SocketAddr) -> Result<UdpSocket, TurnError> {
    UdpSocket::bind(addr)
        .await
        .map_err(|source| bind_error("UDP", addr, names::LISTEN_UDP, source))
}

async fn bind_stream(
    addr: SocketAddr,
    proto: &'static str,
    name: (&'static str, &'static str),
) -> Result<TcpListener, TurnError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| bind_error(proto, addr, name, source))
}

fn bind_error(
    proto: &'static str,
    addr: SocketAddr,
    name: (&'static str, &'static str),
    source: std::io::Error,
) -> TurnError {
    if source.kind() == std::io::ErrorKind::AddrInUse {
        TurnError::PortInUse {
            proto,
            addr,
            setting: name.0,
            env: name.1,
        }
    } else {
        TurnError::Bind {
            proto,
            addr,
            setting: name.0,
            env: name.1,
            source,
        }
    }
}

/// The UDP listener as the `turn` crate wants it, telling `close` when the crate's read
/// loop has let go of the socket.
struct UdpConn {
    // Fields drop in order: the socket first, so the port is free when `_closed` fires.
    socket: UdpSocket,
    local: SocketAddr,
    _closed: SignalOnDrop,
}

impl UdpConn {
    fn new(socket: UdpSocket, local: SocketAddr) -> (Self, watch::Receiver<bool>) {
        let (closed, rx) = watch::channel(false);
        (
            UdpConn {
                socket,
                local,
                _closed: SignalOnDrop(closed),
            },
            rx,
        )
    }
}

/// Sets its flag when dropped; as the last field of its owner it fires after the others
/// (the socket) are gone.
struct SignalOnDrop(watch::Sender<bool>);

impl Drop for SignalOnDrop {
    fn drop(&mut self) {
        self.0.send_replace(true);
    }
}

#[async_trait::async_trait]
impl Conn for UdpConn {
    async fn connect(&self, addr: SocketAddr) -> webrtc_util::Result<()> {
        Ok(self.socket.connect(addr).await?)
    }

    async fn recv(&self, buf: &mut [u8]) -> webrtc_util::Result<usize> {
        Ok(self.socket.recv(buf).await?)
    }

    async fn recv_from(&self, buf: &mut [u8]) -> webrtc_util::Result<(usize, SocketAddr)> {
        Ok(self.socket.recv_from(buf).await?)
    }

    async fn send(&self, buf: &[u8]) -> webrtc_util::Result<usize> {
        Ok(self.socket.send(buf).await?)
    }

    async fn send_to(&self, buf: &[u8], target: SocketAddr) -> webrtc_util::Result<usize> {
        Ok(self.socket.send_to(buf, target).await?)
    }

    fn local_addr(&self) -> webrtc_util::Result<SocketAddr> {
        Ok(self.local)
    }

    fn remote_addr(&self) -> Option<SocketAddr> {
        None
    }

    async fn close(&self) -> webrtc_util::Result<()> {
        // The socket itself closes when the crate drops its last handle (see Drop).
        Ok(())
    }

    fn as_any(&self) -> &(dyn std::any::Any + Send + Sync) {
        self
    }
}

/// Accepts TURN-over-TCP (or TLS) clients until shutdown; each connection gets its own
/// `turn` server (the crate serves datagram sockets only), so its allocations die with the
/// connection, as RFC 8656 §3.1 wants.
async fn accept_loop(
    listener: TcpListener,
    ctx: Arc<TcpContext>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut conns = JoinSet::new();
    let for_conns = shutdown.clone();
    loop {
        tokio::select! {
            () = stopped(&mut shutdown) => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let Ok(slot) = ctx.slots.clone().try_acquire_owned() else {
                        warn!(%peer, limit = MAX_STREAM_CLIENTS, "TURN stream client refused: too many connections");
                        continue;
                    };
                    let span = info_span!("turn_stream_conn", %peer, tls = ctx.tls.is_some());
                    let (ctx, shutdown) = (ctx.clone(), for_conns.clone());
                    conns.spawn(
                        async move {
                            serve_stream(stream, peer, ctx, shutdown).await;
                            drop(slot);
                        }
                        .instrument(span),
                    );
                }
                Err(e) => {
                    // Out of descriptors and the like: back off rather than spin.
                    warn!(error = %e, "TURN stream accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    drop(listener);
    while conns.join_next().await.is_some() {}
}

/// Resolves once the flag is set (or its sender is gone, which also means stop).
async fn stopped(flag: &mut watch::Receiver<bool>) {
    let _ = flag.wait_for(|set| *set).await;
}

/// One stream client: the TLS handshake first on the TLS listener (bounded, so a silent
/// client cannot hold a slot), then the framed TURN exchange.
async fn serve_stream(
    stream: TcpStream,
    peer: SocketAddr,
    ctx: Arc<TcpContext>,
    shutdown: watch::Receiver<bool>,
) {
    // Media rides on this stream; Nagle would hold small packets back.
    if let Err(e) = stream.set_nodelay(true) {
        debug!(error = %e, "TCP_NODELAY not set");
    }
    match &ctx.tls {
        None => {
            let (reader, writer) = stream.into_split();
            serve_framed(reader, writer, peer, &ctx, shutdown).await;
        }
        Some(acceptor) => {
            match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => {
                    let (reader, writer) = tokio::io::split(tls);
                    serve_framed(reader, writer, peer, &ctx, shutdown).await;
                }
                Ok(Err(e)) => debug!(error = %e, "TURN TLS handshake failed"),
                Err(_) => debug!("TURN TLS handshake timed out"),
            }
        }
    }
}

async fn serve_framed<R, W>(
    reader: R,
    writer: W,
    peer: SocketAddr,
    ctx: &TcpContext,
    mut shutdown: watch::Receiver<bool>,
) where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let (conn, mut closed) = FramedConn::new(reader, writer, ctx.local, peer);
    let conn = Arc::new(conn);
    let server = match Server::new(ServerConfig {
        conn_configs: vec![ConnConfig {
            conn: conn.clone(),
            relay_addr_generator: ctx.relay.generator(),
        }],
        realm: ctx.realm.clone(),
        auth_handler: ctx.auth.clone(),
        channel_bind_timeout: Duration::ZERO,
        alloc_close_notify: None,
    })
    .await
    {
        Ok(server) => Arc::new(server),
        Err(e) => {
            warn!(error = %e, "TURN stream connection not served");
            return;
        }
    };
    if let Ok(mut map) = ctx.servers.lock() {
        map.insert(peer, server.clone());
    }
    debug!("TURN stream client connected");
    tokio::select! {
        () = stopped(&mut closed) => {}
        () = stopped(&mut shutdown) => {}
    }
    if let Ok(mut map) = ctx.servers.lock() {
        map.remove(&peer);
    }
    if let Err(e) = server.close().await {
        debug!(error = %e, "TURN stream server close failed");
    }
    let _ = conn.close().await;
    debug!("TURN stream client gone");
}

/// One TURN-over-TCP (or TLS) connection as a datagram `Conn`: each `recv_from` yields one
/// whole STUN message or ChannelData frame (RFC 8656 §12.5: padded to 4 bytes on streams),
/// each `send_to` writes one.
struct FramedConn<R, W> {
    reader: Mutex<R>,
    writer: Mutex<W>,
    local: SocketAddr,
    peer: SocketAddr,
    closed: watch::Sender<bool>,
}

impl<R, W> FramedConn<R, W> {
    fn new(
        reader: R,
        writer: W,
        local: SocketAddr,
        peer: SocketAddr,
    ) -> (Self, watch::Receiver<bool>) {
        let (closed, rx) = watch::channel(false);
        (
            FramedConn {
                reader: Mutex::new(reader),
                writer: Mutex::new(writer),
                local,
                peer,
                closed,
            },
            rx,
        )
    }
}

/// Reads one STUN message (first two bits 00; 20-byte header + length) or ChannelData
/// frame (bits 01; 4-byte header + length padded to 4).
async fn read_frame<R: AsyncRead + Unpin>(reader: &mut R) -> std::io::Result<Vec<u8>> {
    let mut head = [0u8; 4];
    reader.read_exact(&mut head).await?;
    let len = usize::from(u16::from_be_bytes([head[2], head[3]]));
    let total = match head[0] >> 6 {
        0b00 => 20 + len,
        0b01 => 4 + len.next_multiple_of(4),
        _ => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "neither STUN nor ChannelData on a TURN stream",
            ));
        }
    };
    let mut frame = vec![0u8; total];
    frame[..4].copy_from_slice(&head);
    reader.read_exact(&mut frame[4..]).await?;
    Ok(frame)
}

#[async_trait::async_trait]
impl<R, W> Conn for FramedConn<R, W>
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    async fn connect(&self, _addr: SocketAddr) -> webrtc_util::Result<()> {
        Ok(())
    }

    async fn recv(&self, buf: &mut [u8]) -> webrtc_util::Result<usize> {
        self.recv_from(buf).await.map(|(n, _)| n)
    }

    async fn recv_from(&self, buf: &mut [u8]) -> webrtc_util::Result<(usize, SocketAddr)> {
        let mut reader = self.reader.lock().await;
        loop {
            match read_frame(&mut *reader).await {
                Ok(frame) if frame.len() <= buf.len() => {
                    buf[..frame.len()].copy_from_slice(&frame);
                    return Ok((frame.len(), self.peer));
                }
                Ok(frame) => {
                    debug!(len = frame.len(), "oversized TURN stream frame dropped");
                }
                Err(e) => {
                    self.closed.send_replace(true);
                    return Err(e.into());
                }
            }
        }
    }

    async fn send(&self, buf: &[u8]) -> webrtc_util::Result<usize> {
        self.send_to(buf, self.peer).await
    }

    async fn send_to(&self, buf: &[u8], _target: SocketAddr) -> webrtc_util::Result<usize> {
        let mut writer = self.writer.lock().await;
        let result = async {
            writer.write_all(buf).await?;
            // ChannelData must be padded to 4 bytes on a stream (the crate pads already;
            // this keeps framing intact if it ever stops).
            let pad = buf.len().next_multiple_of(4) - buf.len();
            if pad > 0 && buf.first().is_some_and(|b| b >> 6 == 0b01) {
                writer.write_all(&[0u8; 3][..pad]).await?;
            }
            // A TLS writer holds records back until flushed.
            writer.flush().await?;
            Ok::<_, std::io::Error>(buf.len())
        }
        .await;
        if result.is_err() {
            self.closed.send_replace(true);
        }
        Ok(result?)
    }

    fn local_addr(&self) -> webrtc_util::Result<SocketAddr> {
        Ok(self.local)
    }

    fn remote_addr(&self) -> Option<SocketAddr> {
        Some(self.peer)
    }

    async fn close(&self) -> webrtc_util::Result<()> {
        self.closed.send_replace(true);
        let _ = self.writer.lock().await.shutdown().await;
        Ok(())
    }

    fn as_any(&self) -> &(dyn std::any::Any + Send + Sync) {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "s3cret";
    const REALM: &str = "neulbi.test";

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn rest_credentials_follow_the_turn_rest_scheme() {
        let c = rest_credentials(SECRET, "user-1", Duration::from_secs(600), at(1_000), &[]);
        assert_eq!(c.username, "1600:user-1");
        assert_eq!(c.expires_at, 1600);
        // base64(HMAC-SHA1("s3cret", "1600:user-1")), as coturn computes it.
        let mut mac = Hmac::<Sha1>::new_from_slice(SECRET.as_bytes()).expect("any key length");
        mac.update(b"1600:user-1");
        assert_eq!(c.credential, BASE64.encode(mac.finalize().into_bytes()));
        assert_eq!(c.credential.len(), 28);
    }

    #[test]
    fn unexpired_credentials_with_the_right_password_are_accepted() {
        let auth = RestAuthHandler {
            secret: SECRET.into(),
        };
        let c = rest_credentials(SECRET, "u", Duration::from_secs(60), at(1_000), &[]);
        let key = auth.key(&c.username, REALM, at(1_030)).expect("accepted");
        assert_eq!(key, generate_auth_key(&c.username, REALM, &c.credential));
    }

    #[test]
    fn expired_credentials_are_refused() {
        let auth = RestAuthHandler {
            secret: SECRET.into(),
        };
        let c = rest_credentials(SECRET, "u", Duration::from_secs(60), at(1_000), &[]);
        assert_eq!(
            auth.key(&c.username, REALM, at(1_060)),
            Err(RestUsernameError::Expired {
                expires_at: 1060,
                now: 1060
            })
        );
        assert!(auth.key(&c.username, REALM, at(5_000)).is_err());
    }

    #[test]
    fn a_wrong_password_does_not_match_the_servers_key() {
        let auth = RestAuthHandler {
            secret: SECRET.into(),
        };
        let c = rest_credentials(SECRET, "u", Duration::from_secs(60), at(1_000), &[]);
        let key = auth.key(&c.username, REALM, at(1_000)).expect("unexpired");
        // The server checks MESSAGE-INTEGRITY with this key; a client that derived its key
        // from another password (or another secret) fails that check.
        assert_ne!(key, generate_auth_key(&c.username, REALM, "wrong"));
        let forged = rest_credentials("other", "u", Duration::from_secs(60), at(1_000), &[]);
        assert_ne!(
            key,
            generate_auth_key(&c.username, REALM, &forged.credential)
        );
    }

    #[test]
    fn malformed_usernames_are_refused() {
        let auth = RestAuthHandler {
            secret: SECRET.into(),
        };
        for name in ["", "alice", ":1600", "-5:u", "1e9:u"] {
            assert_eq!(
                auth.key(name, REALM, at(0)),
                Err(RestUsernameError::Malformed),
                "{name:?}"
            );
        }
        // coturn also accepts a bare timestamp.
        assert!(auth.key("1600", REALM, at(0)).is_ok());
    }

    #[test]
    fn settings_defaults_and_toml() {
        let d = TurnSettings::default();
        assert_eq!(d.listen_udp, Some("0.0.0.0:3478".parse().expect("addr")));
        assert_eq!(d.listen_tcp, Some("0.0.0.0:3478".parse().expect("addr")));
        assert_eq!(
            d.relay_ports,
            PortRange {
                min: 49152,
                max: 65535
            }
        );
        assert_eq!(d.credential_ttl, Duration::from_secs(86_400));
        assert!(!format!("{d:?}").contains("s3cret"));

        let s: TurnSettings = toml::from_str(
            r#"
            listen_udp = "127.0.0.1:3479"
            relay_ip = "127.0.0.1"
            relay_ports = { min = 40000, max = 40100 }
            secret = "s3cret"
            credential_ttl_secs = 3600
            [external]
            urls = ["turn:turn.example.com:3478?transport=udp"]
            secret = "coturn"
            "#,
        )
        .expect("valid settings");
        assert_eq!(s.listen_udp, Some("127.0.0.1:3479".parse().expect("addr")));
        assert_eq!(s.listen_tcp, d.listen_tcp);
        assert_eq!(s.credential_ttl, Duration::from_secs(3600));
        assert!(s.validate().is_ok());
        assert!(!format!("{s:?}").contains("s3cret"));
        assert!(!format!("{s:?}").contains("coturn"));
        let ext = s
            .external_credentials("u", at(0))
            .expect("external configured");
        assert_eq!(ext.urls, ["turn:turn.example.com:3478?transport=udp"]);
        assert_eq!(ext.credential, rest_password("coturn", &ext.username));
    }

    #[test]
    fn env_overrides_and_named_errors() {
        let mut s = TurnSettings::default();
        let env: HashMap<&str, &str> = [
            ("NEULBI_TURN_LISTEN_UDP", "127.0.0.1:4000"),
            ("NEULBI_TURN_LISTEN_TCP", ""),
            ("NEULBI_TURN_RELAY_PORTS", "50000-50010"),
            ("NEULBI_TURN_SECRET", "x"),
            ("NEULBI_TURN_EXTERNAL_URLS", "turn:a:3478, turn:b:3478"),
        ]
        .into_iter()
        .collect();
        s.apply_env(|k| env.get(k).map(|v| v.to_string()))
            .expect("valid env");
        assert_eq!(s.listen_udp, Some("127.0.0.1:4000".parse().expect("addr")));
        assert_eq!(s.listen_tcp, None);
        assert_eq!(
            s.relay_ports,
            PortRange {
                min: 50000,
                max: 50010
            }
        );
        assert_eq!(s.external.as_ref().map(|e| e.urls.len()), Some(2));

        let err = TurnSettings::default()
            .apply_env(|k| (k == "NEULBI_TURN_RELAY_PORTS").then(|| "5-".to_owned()))
            .expect_err("bad range");
        assert!(err.to_string().contains("NEULBI_TURN_RELAY_PORTS"), "{err}");

        let err = TurnSettings::default().validate().expect_err("no secret");
        assert!(err.to_string().contains("media.turn.secret"), "{err}");

        // TLS is off by default; the env turns it on and names the certificate's host.
        let mut s = TurnSettings {
            secret: "x".into(),
            ..TurnSettings::default()
        };
        assert_eq!(s.listen_tls, None);
        let env: HashMap<&str, &str> = [
            ("NEULBI_TURN_LISTEN_TLS", "0.0.0.0:5349"),
            ("NEULBI_TURN_TLS_HOST", " turn.example.org "),
        ]
        .into_iter()
        .collect();
        s.apply_env(|k| env.get(k).map(|v| v.to_string()))
            .expect("valid env");
        assert_eq!(s.listen_tls, Some("0.0.0.0:5349".parse().expect("addr")));
        assert_eq!(s.tls_host.as_deref(), Some("turn.example.org"));
        assert!(s.validate().is_ok());
        for bad in ["turn.example.org/x", "user@host", "a b"] {
            s.tls_host = Some(bad.into());
            let err = s.validate().expect_err("not a host");
            assert!(err.to_string().contains("NEULBI_TURN_TLS_HOST"), "{err}");
        }
        // TLS alone is enough to listen on.
        let only_tls = TurnSettings {
            listen_udp: None,
            listen_tcp: None,
            listen_tls: Some("127.0.0.1:5349".parse().expect("addr")),
            secret: "x".into(),
            ..TurnSettings::default()
        };
        assert!(only_tls.validate().is_ok());
        let none = TurnSettings {
            listen_tls: None,
            ..only_tls
        };
        assert!(none.validate().is_err());
    }

    #[test]
    fn urls_advertise_the_relay_ip_for_wildcard_listeners() {
        let relay: IpAddr = "203.0.113.7".parse().expect("ip");
        assert_eq!(
            turn_url("0.0.0.0:3478".parse().expect("addr"), relay, "udp"),
            "turn:203.0.113.7:3478?transport=udp"
        );
        assert_eq!(
            turn_url("127.0.0.1:5000".parse().expect("addr"), relay, "tcp"),
            "turn:127.0.0.1:5000?transport=tcp"
        );
        assert_eq!(
            turns_url("turn.example.org", DEFAULT_TURNS_PORT),
            "turns:turn.example.org:5349?transport=tcp"
        );
    }
}
