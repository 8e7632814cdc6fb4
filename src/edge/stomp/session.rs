//! One client's STOMP session as a sans-IO state machine. The transport feeds it decoded
//! frames, activity and the time; it drains [`Output`]s: frames and heart-beats to write,
//! questions to answer (is this token valid, may this user read this room, post this message),
//! and when to close. No sockets, clocks or awaits inside, so every protocol rule is
//! unit-tested with plain values and simulated time.

use super::codec::DecodeError;
use super::frame::{Command, Frame, Version};
use neulbi_domain::{RoomId, UserId};
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::time::{Duration, Instant};

/// The name sent in CONNECTED's `server` header.
const SERVER: &str = "neulbi";

/// Session limits and heart-beat wishes; everything a client controls is bounded here.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Subscriptions one session may hold at once.
    pub max_subscriptions: usize,
    /// Frames queued for the client before it counts as a slow consumer and is disconnected.
    pub max_outbound: usize,
    /// The shortest interval at which the server sends heart-beats (0: never).
    pub heartbeat_send: Duration,
    /// The interval at which the server wants client heart-beats (0: not required).
    pub heartbeat_receive: Duration,
    /// How long a connection may stay without a successful CONNECT.
    pub connect_timeout: Duration,
    /// SENDs a session may make in a burst before the rate applies.
    pub send_burst: u32,
    /// SENDs per second a session may sustain; faster clients get ERROR and are closed.
    pub sends_per_second: u32,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            max_subscriptions: 64,
            max_outbound: 1024,
            heartbeat_send: Duration::from_secs(10),
            heartbeat_receive: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            send_burst: 20,
            sends_per_second: 5,
        }
    }
}

/// A bearer token from CONNECT. Its `Debug` is redacted so it never reaches a log.
#[derive(Clone, PartialEq, Eq)]
pub struct BearerToken(pub String);

impl fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BearerToken(..)")
    }
}

/// How a subscriber acknowledges messages (STOMP `ack` header).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckMode {
    /// Messages count as acknowledged once sent.
    Auto,
    /// ACK acknowledges this and every earlier message.
    Client,
    /// ACK acknowledges only the named message.
    ClientIndividual,
}

impl AckMode {
    fn parse(value: Option<&str>) -> Option<Self> {
        match value {
            None | Some("auto") => Some(AckMode::Auto),
            Some("client") => Some(AckMode::Client),
            Some("client-individual") => Some(AckMode::ClientIndividual),
            Some(_) => None,
        }
    }
}

/// Where a frame points, parsed once at the edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    /// `/topic/rooms.{roomId}`: a room's messages (subscribe only).
    RoomTopic(RoomId),
    /// `/app/rooms.{roomId}.send`: post to a room (send only).
    RoomSend(RoomId),
}

impl Destination {
    /// Parses a destination header; anything else is not routable here.
    pub fn parse(value: &str) -> Option<Self> {
        if let Some(id) = value.strip_prefix("/topic/rooms.") {
            return id.parse().ok().map(Destination::RoomTopic);
        }
        let id = value.strip_prefix("/app/rooms.")?.strip_suffix(".send")?;
        id.parse().ok().map(Destination::RoomSend)
    }

    /// The wire form, for MESSAGE frames.
    pub fn to_wire(self) -> String {
        match self {
            Destination::RoomTopic(room) => format!("/topic/rooms.{room}"),
            Destination::RoomSend(room) => format!("/app/rooms.{room}.send"),
        }
    }
}

/// A message to deliver to the subscribers of a room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The room.
    pub room: RoomId,
    /// A unique id of the message (the STOMP `message-id`).
    pub message_id: String,
    /// The body, usually JSON.
    pub body: Vec<u8>,
    /// Its content type.
    pub content_type: &'static str,
}

/// Why a caller refused a request; the text goes into the ERROR frame, so it must be safe to
/// show to the client (no personal data, no internals).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal(pub String);

/// What the session wants done. Requests (`Authenticate`, `Authorize`, `Post`) must be
/// answered with the matching method before the next frame is fed, so replies stay in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Write this frame to the client.
    Frame(Frame),
    /// Write a heart-beat EOL.
    Heartbeat,
    /// Verify this token; answer with [`Session::authenticated`].
    Authenticate(BearerToken),
    /// May the user read this room? Answer with [`Session::authorized`].
    Authorize {
        /// The subscription id.
        subscription: String,
        /// The room.
        room: RoomId,
        /// The user.
        user: UserId,
    },
    /// Post a message; answer with [`Session::posted`] once it is durable (or refused).
    Post {
        /// The room.
        room: RoomId,
        /// The author.
        user: UserId,
        /// The text.
        body: String,
        /// The client's idempotency key (`client-message-id` header), if any.
        client_message_id: Option<String>,
        /// The receipt to send once durable.
        receipt: Option<String>,
    },
    /// The session now receives `room`'s deliveries for this subscription.
    Subscribed {
        /// The subscription id.
        subscription: String,
        /// The room.
        room: RoomId,
    },
    /// The session no longer receives deliveries for this subscription.
    Unsubscribed {
        /// The subscription id.
        subscription: String,
        /// The room.
        room: RoomId,
    },
    /// Flush what was written and close the connection; every subscription ends with it.
    Close(CloseReason),
}

/// Why the session ended, for metrics and tests (never personal data).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The client sent DISCONNECT.
    Disconnected,
    /// The session sent ERROR.
    ProtocolError,
    /// No heart-beat or frame from the client in time, or no CONNECT in time.
    TimedOut,
    /// The client did not read fast enough.
    SlowConsumer,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Waiting for CONNECT/STOMP.
    Start,
    /// CONNECT received; waiting for [`Session::authenticated`].
    Authenticating,
    Connected,
    Closed,
}

#[derive(Debug, Clone)]
struct Subscription {
    room: RoomId,
    ack: AckMode,
    /// False until the caller authorized it.
    active: bool,
    receipt: Option<String>,
}

/// Negotiated heart-beat intervals (zero means off).
#[derive(Debug, Clone, Copy, Default)]
struct Heartbeats {
    send: Duration,
    receive: Duration,
}

/// One STOMP session.
#[derive(Debug)]
pub struct Session {
    config: SessionConfig,
    state: State,
    version: Option<Version>,
    user: Option<UserId>,
    connect_receipt: Option<String>,
    subscriptions: HashMap<String, Subscription>,
    heartbeats: Heartbeats,
    started: Instant,
    last_received: Instant,
    last_sent: Instant,
    out: VecDeque<Output>,
    message_seq: u64,
    /// Token bucket for SEND: tokens left, refilled with time.
    send_tokens: f64,
    send_refilled: Instant,
}

impl Session {
    /// A new session for a connection opened at `now`.
    pub fn new(config: SessionConfig, now: Instant) -> Self {
        let send_tokens = f64::from(config.send_burst);
        Self {
            config,
            state: State::Start,
            version: None,
            user: None,
            connect_receipt: None,
            subscriptions: HashMap::new(),
            heartbeats: Heartbeats::default(),
            started: now,
            last_received: now,
            last_sent: now,
            out: VecDeque::new(),
            message_seq: 0,
            send_tokens,
            send_refilled: now,
        }
    }

    /// The negotiated version, once CONNECT was accepted; the transport switches its codec.
    pub fn version(&self) -> Option<Version> {
        self.version
    }

    /// The authenticated user, once connected.
    pub fn user(&self) -> Option<UserId> {
        self.user
    }

    /// True once the session asked to close; further input is ignored.
    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    /// The next thing to do, in order.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// Bytes (of any kind, heart-beats included) arrived: the client is alive.
    pub fn handle_activity(&mut self, now: Instant) {
        self.last_received = now;
    }

    /// The decoder failed: tell the client why, then close.
    pub fn handle_decode_error(&mut self, error: &DecodeError, now: Instant) {
        self.error(&format!("malformed frame: {error}"), None, now);
    }

    /// When [`Session::handle_timeout`] should next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            State::Closed => None,
            State::Start | State::Authenticating => {
                Some(self.started + self.config.connect_timeout)
            }
            State::Connected => {
                let send = (!self.heartbeats.send.is_zero())
                    .then(|| self.last_sent + self.heartbeats.send);
                let receive = (!self.heartbeats.receive.is_zero())
                    .then(|| self.last_received + self.receive_grace());
                match (send, receive) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                }
            }
        }
    }

    /// Time passed: send a heart-beat, or close a silent or never-connected client.
    pub fn handle_timeout(&mut self, now: Instant) {
        match self.state {
            State::Closed => {}
            State::Start | State::Authenticating => {
                if now >= self.started + self.config.connect_timeout {
                    self.close(CloseReason::TimedOut);
                }
            }
            State::Connected => {
                if !self.heartbeats.receive.is_zero()
                    && now >= self.last_received + self.receive_grace()
                {
                    self.close(CloseReason::TimedOut);
                    return;
                }
                if !self.heartbeats.send.is_zero() && now >= self.last_sent + self.heartbeats.send {
                    self.out.push_back(Output::Heartbeat);
                    self.last_sent = now;
                }
            }
        }
    }

    /// Client heart-beats may arrive late by network jitter; the spec leaves the tolerance to
    /// the server, so allow twice the interval.
    fn receive_grace(&self) -> Duration {
        self.heartbeats.receive * 2
    }

    /// Handles one decoded client frame.
    pub fn handle_frame(&mut self, frame: Frame, now: Instant) {
        self.last_received = now;
        let receipt = frame.get("receipt").map(str::to_owned);
        match (self.state, frame.command) {
            (State::Closed, _) => {}
            (State::Start, Command::Connect | Command::Stomp) => self.connect(&frame, now),
            (State::Start, _) => self.error("expected CONNECT", receipt, now),
            (State::Authenticating, _) => self.error("frame before CONNECTED", receipt, now),
            (State::Connected, Command::Connect | Command::Stomp) => {
                self.error("already connected", receipt, now)
            }
            (State::Connected, Command::Subscribe) => self.subscribe(&frame, receipt, now),
            (State::Connected, Command::Unsubscribe) => self.unsubscribe(&frame, receipt, now),
            (State::Connected, Command::Send) => self.send(frame, receipt, now),
            (State::Connected, Command::Ack | Command::Nack) => {
                // Deliveries come from the durable log and a client catches up by message id,
                // so there is nothing to redeliver; ACK/NACK are accepted and only receipted.
                self.receipt(receipt, now);
            }
            (State::Connected, Command::Begin | Command::Commit | Command::Abort) => {
                self.error("transactions are not supported", receipt, now)
            }
            (State::Connected, Command::Disconnect) => {
                self.receipt(receipt, now);
                self.close(CloseReason::Disconnected);
            }
            (
                State::Connected,
                Command::Connected | Command::Message | Command::Receipt | Command::Error,
            ) => self.error("server frame sent by client", receipt, now),
        }
    }

    fn connect(&mut self, frame: &Frame, now: Instant) {
        let version = match frame.get("accept-version") {
            None => Some(Version::V1_0),
            Some(list) => {
                let offered: Vec<Version> = list.split(',').filter_map(Version::parse).collect();
                Version::ALL_DESC.into_iter().find(|v| offered.contains(v))
            }
        };
        let Some(version) = version else {
            // The ERROR must name the versions we speak; the client's frame used none of them.
            self.push_frame(
                Frame::new(Command::Error)
                    .header("version", "1.2,1.1,1.0")
                    .header("content-type", "text/plain")
                    .header("message", "no supported protocol version")
                    .body("Supported protocol versions are 1.2, 1.1 and 1.0"),
                now,
            );
            self.close(CloseReason::ProtocolError);
            return;
        };
        self.version = Some(version);
        let token = frame
            .headers
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case("authorization"))
            .and_then(|(_, value)| {
                let (scheme, token) = value.split_once(' ')?;
                let token = token.trim();
                (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty())
                    .then(|| token.to_owned())
            });
        let Some(token) = token else {
            self.error("authentication required", None, now);
            return;
        };
        let (client_send, client_receive) = frame
            .get("heart-beat")
            .and_then(parse_heartbeat)
            .unwrap_or((0, 0));
        // Each direction runs at the slower of what one side can do and the other wants;
        // zero on either side switches it off.
        let negotiate = |can: u64, wants: u64| {
            if can == 0 || wants == 0 {
                Duration::ZERO
            } else {
                Duration::from_millis(can.max(wants))
            }
        };
        self.heartbeats = Heartbeats {
            send: negotiate(
                u64::try_from(self.config.heartbeat_send.as_millis()).unwrap_or(MAX_HEARTBEAT_MS),
                client_receive,
            ),
            receive: negotiate(
                client_send,
                u64::try_from(self.config.heartbeat_receive.as_millis())
                    .unwrap_or(MAX_HEARTBEAT_MS),
            ),
        };
        self.connect_receipt = frame.get("receipt").map(str::to_owned);
        self.state = State::Authenticating;
        self.out.push_back(Output::Authenticate(BearerToken(token)));
    }

    /// The answer to [`Output::Authenticate`].
    pub fn authenticated(&mut self, result: Result<UserId, Refusal>, now: Instant) {
        if self.state != State::Authenticating {
            return;
        }
        match result {
            Ok(user) => {
                self.user = Some(user);
                self.state = State::Connected;
                let version = self.version.unwrap_or(Version::V1_0);
                let mut connected = Frame::new(Command::Connected)
                    .header("version", version.as_str())
                    .header("server", SERVER);
                if version >= Version::V1_1 {
                    connected = connected.header(
                        "heart-beat",
                        format!(
                            "{},{}",
                            self.config.heartbeat_send.as_millis(),
                            self.config.heartbeat_receive.as_millis()
                        ),
                    );
                } else {
                    self.heartbeats = Heartbeats::default();
                }
                self.push_frame(connected, now);
                let receipt = self.connect_receipt.take();
                self.receipt(receipt, now);
            }
            Err(Refusal(reason)) => self.error(&reason, None, now),
        }
    }

    fn subscribe(&mut self, frame: &Frame, receipt: Option<String>, now: Instant) {
        let Some(destination) = frame.get("destination") else {
            return self.error("SUBSCRIBE without destination", receipt, now);
        };
        let id = match (frame.get("id"), self.version) {
            (Some(id), _) => id.to_owned(),
            // STOMP 1.0 made the id optional; the destination then names the subscription.
            (None, Some(Version::V1_0)) => destination.to_owned(),
            (None, _) => return self.error("SUBSCRIBE without id", receipt, now),
        };
        let Some(ack) = AckMode::parse(frame.get("ack")) else {
            return self.error("unknown ack mode", receipt, now);
        };
        let Some(Destination::RoomTopic(room)) = Destination::parse(destination) else {
            return self.error("cannot subscribe to this destination", receipt, now);
        };
        if self.subscriptions.contains_key(&id) {
            return self.error("subscription id already in use", receipt, now);
        }
        if self.subscriptions.len() >= self.config.max_subscriptions {
            return self.error("too many subscriptions", receipt, now);
        }
        let Some(user) = self.user else {
            return self.error("not connected", receipt, now);
        };
        self.subscriptions.insert(
            id.clone(),
            Subscription {
                room,
                ack,
                active: false,
                receipt,
            },
        );
        self.out.push_back(Output::Authorize {
            subscription: id,
            room,
            user,
        });
    }

    /// The answer to [`Output::Authorize`].
    pub fn authorized(&mut self, subscription: &str, allowed: Result<(), Refusal>, now: Instant) {
        if self.state != State::Connected {
            return;
        }
        let Some(sub) = self.subscriptions.get_mut(subscription) else {
            return;
        };
        if sub.active {
            return;
        }
        match allowed {
            Ok(()) => {
                sub.active = true;
                let room = sub.room;
                let receipt = sub.receipt.take();
                self.out.push_back(Output::Subscribed {
                    subscription: subscription.to_owned(),
                    room,
                });
                self.receipt(receipt, now);
            }
            Err(Refusal(reason)) => {
                let receipt = self
                    .subscriptions
                    .remove(subscription)
                    .and_then(|s| s.receipt);
                self.error(&reason, receipt, now);
            }
        }
    }

    fn unsubscribe(&mut self, frame: &Frame, receipt: Option<String>, now: Instant) {
        let id = match (frame.get("id"), frame.get("destination"), self.version) {
            (Some(id), _, _) => id,
            (None, Some(destination), Some(Version::V1_0)) => destination,
            _ => return self.error("UNSUBSCRIBE without id", receipt, now),
        };
        if let Some(sub) = self.subscriptions.remove(id)
            && sub.active
        {
            self.out.push_back(Output::Unsubscribed {
                subscription: id.to_owned(),
                room: sub.room,
            });
        }
        self.receipt(receipt, now);
    }

    /// Takes one SEND token, refilling by the time passed; false when the bucket is empty.
    fn take_send_token(&mut self, now: Instant) -> bool {
        let elapsed = now
            .saturating_duration_since(self.send_refilled)
            .as_secs_f64();
        self.send_refilled = now;
        self.send_tokens = (self.send_tokens + elapsed * f64::from(self.config.sends_per_second))
            .min(f64::from(self.config.send_burst));
        if self.send_tokens < 1.0 {
            return false;
        }
        self.send_tokens -= 1.0;
        true
    }

    fn send(&mut self, frame: Frame, receipt: Option<String>, now: Instant) {
        if !self.take_send_token(now) {
            return self.error("sending too fast", receipt, now);
        }
        if frame.get("transaction").is_some() {
            return self.error("transactions are not supported", receipt, now);
        }
        let Some(Destination::RoomSend(room)) =
            frame.get("destination").and_then(Destination::parse)
        else {
            return self.error("cannot send to this destination", receipt, now);
        };
        let client_message_id = frame.get("client-message-id").map(str::to_owned);
        let Ok(body) = String::from_utf8(frame.body) else {
            return self.error("message body is not UTF-8", receipt, now);
        };
        let Some(user) = self.user else {
            return self.error("not connected", receipt, now);
        };
        self.out.push_back(Output::Post {
            room,
            user,
            body,
            client_message_id,
            receipt,
        });
    }

    /// The answer to [`Output::Post`]: the RECEIPT goes out only now, after the append.
    pub fn posted(&mut self, receipt: Option<String>, result: Result<(), Refusal>, now: Instant) {
        if self.state != State::Connected {
            return;
        }
        match result {
            Ok(()) => self.receipt(receipt, now),
            Err(Refusal(reason)) => self.error(&reason, receipt, now),
        }
    }

    /// A message for `delivery.room`: one MESSAGE per active subscription on that room. A
    /// client whose queue is full is disconnected instead of growing server memory.
    pub fn deliver(&mut self, delivery: &Delivery, now: Instant) {
        if self.state != State::Connected {
            return;
        }
        let mut targets: Vec<(String, AckMode)> = self
            .subscriptions
            .iter()
            .filter(|(_, s)| s.active && s.room == delivery.room)
            .map(|(id, s)| (id.clone(), s.ack))
            .collect();
        targets.sort_by(|a, b| a.0.cmp(&b.0));
        for (id, ack) in targets {
            if self.out.len() >= self.config.max_outbound {
                self.handle_overflow(now);
                return;
            }
            self.message_seq += 1;
            let mut message = Frame::new(Command::Message)
                .header("subscription", id)
                .header("message-id", delivery.message_id.clone())
                .header(
                    "destination",
                    Destination::RoomTopic(delivery.room).to_wire(),
                )
                .header("content-type", delivery.content_type);
            if ack != AckMode::Auto && self.version == Some(Version::V1_2) {
                message = message.header(
                    "ack",
                    format!("{}-{}", delivery.message_id, self.message_seq),
                );
            }
            self.push_frame(message.body(delivery.body.clone()), now);
        }
    }

    /// The client does not read fast enough (here or in the transport's queue): drop what is
    /// queued, send ERROR and close.
    pub fn handle_overflow(&mut self, now: Instant) {
        if self.state == State::Closed {
            return;
        }
        self.subscriptions.clear();
        self.out.clear();
        self.error("slow consumer", None, now);
        if let Some(Output::Close(reason)) = self.out.back_mut() {
            *reason = CloseReason::SlowConsumer;
        }
    }

    fn receipt(&mut self, receipt: Option<String>, now: Instant) {
        if let Some(id) = receipt {
            self.push_frame(Frame::new(Command::Receipt).header("receipt-id", id), now);
        }
    }

    /// Sends ERROR (with `receipt-id` when the failing frame asked for a receipt) and closes,
    /// as the spec requires after an ERROR.
    fn error(&mut self, message: &str, receipt: Option<String>, now: Instant) {
        if self.state == State::Closed {
            return;
        }
        let mut frame = Frame::new(Command::Error)
            .header("message", message)
            .header("content-type", "text/plain");
        if let Some(id) = receipt {
            frame = frame.header("receipt-id", id);
        }
        self.push_frame(frame.body(message), now);
        self.close(CloseReason::ProtocolError);
    }

    fn push_frame(&mut self, frame: Frame, now: Instant) {
        self.last_sent = now;
        self.out.push_back(Output::Frame(frame));
    }

    fn close(&mut self, reason: CloseReason) {
        if self.state == State::Closed {
            return;
        }
        self.state = State::Closed;
        self.subscriptions.clear();
        self.out.push_back(Output::Close(reason));
    }
}

/// The longest heart-beat interval a client may ask for (one day), so client-chosen numbers
/// can never overflow the clock arithmetic.
const MAX_HEARTBEAT_MS: u64 = 24 * 60 * 60 * 1000;

/// Parses `heart-beat: cx,cy` (milliseconds, capped); malformed values mean no heart-beats.
fn parse_heartbeat(value: &str) -> Option<(u64, u64)> {
    let (a, b) = value.split_once(',')?;
    let ms = |v: &str| {
        v.trim()
            .parse::<u64>()
            .ok()
            .map(|n| n.min(MAX_HEARTBEAT_MS))
    };
    Some((ms(a)?, ms(b)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    const ROOM: RoomId = RoomId::from_uuid(Uuid::from_u128(7));
    const USER: UserId = UserId::from_uuid(Uuid::from_u128(42));

    fn t0() -> Instant {
        Instant::now()
    }

    fn drain(s: &mut Session) -> Vec<Output> {
        std::iter::from_fn(|| s.poll_output()).collect()
    }

    fn frames(outputs: &[Output]) -> Vec<&Frame> {
        outputs
            .iter()
            .filter_map(|o| match o {
                Output::Frame(f) => Some(f),
                _ => None,
            })
            .collect()
    }

    fn connect_frame(versions: &str) -> Frame {
        Frame::new(Command::Connect)
            .header("accept-version", versions)
            .header("host", "neulbi")
            .header("Authorization", "Bearer tok")
    }

    /// A connected 1.2 session without heart-beats.
    fn connected(now: Instant) -> Session {
        let mut s = Session::new(SessionConfig::default(), now);
        s.handle_frame(connect_frame("1.2"), now);
        assert_eq!(
            drain(&mut s),
            vec![Output::Authenticate(BearerToken("tok".into()))]
        );
        s.authenticated(Ok(USER), now);
        drain(&mut s);
        s
    }

    fn room_topic() -> String {
        Destination::RoomTopic(ROOM).to_wire()
    }

    fn subscribed(now: Instant, id: &str, ack: &str) -> Session {
        let mut s = connected(now);
        s.handle_frame(
            Frame::new(Command::Subscribe)
                .header("id", id)
                .header("destination", room_topic())
                .header("ack", ack),
            now,
        );
        drain(&mut s);
        s.authorized(id, Ok(()), now);
        drain(&mut s);
        s
    }

    fn is_error_then_close(outputs: &[Output], message: &str) {
        let [Output::Frame(f), Output::Close(_)] = outputs else {
            panic!("expected ERROR then close, got {outputs:?}");
        };
        assert_eq!(f.command, Command::Error);
        assert_eq!(f.get("message"), Some(message));
    }

    #[test]
    fn destinations_parse() {
        let room = "00000000-0000-0000-0000-000000000007";
        assert_eq!(
            Destination::parse(&format!("/topic/rooms.{room}")),
            Some(Destination::RoomTopic(ROOM))
        );
        assert_eq!(
            Destination::parse(&format!("/app/rooms.{room}.send")),
            Some(Destination::RoomSend(ROOM))
        );
        assert_eq!(Destination::parse("/topic/rooms.nope"), None);
        assert_eq!(Destination::parse(&format!("/app/rooms.{room}")), None);
        assert_eq!(
            Destination::RoomSend(ROOM).to_wire(),
            format!("/app/rooms.{room}.send")
        );
    }

    #[test]
    fn negotiates_the_highest_shared_version() {
        let now = t0();
        for (offer, expected) in [("1.0,1.1,1.2", "1.2"), ("1.1,1.0", "1.1"), ("1.0", "1.0")] {
            let mut s = Session::new(SessionConfig::default(), now);
            s.handle_frame(connect_frame(offer), now);
            drain(&mut s);
            s.authenticated(Ok(USER), now);
            let out = drain(&mut s);
            assert_eq!(frames(&out)[0].command, Command::Connected);
            assert_eq!(frames(&out)[0].get("version"), Some(expected));
            assert_eq!(s.version().map(Version::as_str), Some(expected));
        }
        let mut s = Session::new(SessionConfig::default(), now);
        s.handle_frame(
            Frame::new(Command::Connect).header("Authorization", "Bearer tok"),
            now,
        );
        drain(&mut s);
        s.authenticated(Ok(USER), now);
        assert_eq!(
            s.version(),
            Some(Version::V1_0),
            "no accept-version means 1.0"
        );
    }

    #[test]
    fn no_shared_version_is_an_error_naming_ours() {
        let now = t0();
        let mut s = Session::new(SessionConfig::default(), now);
        s.handle_frame(connect_frame("2.0,3.1"), now);
        let out = drain(&mut s);
        assert_eq!(frames(&out)[0].command, Command::Error);
        assert_eq!(frames(&out)[0].get("version"), Some("1.2,1.1,1.0"));
        assert_eq!(out.last(), Some(&Output::Close(CloseReason::ProtocolError)));
        assert!(s.is_closed());
    }

    #[test]
    fn connect_requires_a_bearer_token() {
        let now = t0();
        for auth in [None, Some("Basic abc"), Some("Bearer "), Some("Bearer")] {
            let mut s = Session::new(SessionConfig::default(), now);
            let mut f = Frame::new(Command::Stomp).header("accept-version", "1.2");
            if let Some(a) = auth {
                f = f.header("authorization", a);
            }
            s.handle_frame(f, now);
            is_error_then_close(&drain(&mut s), "authentication required");
        }
    }

    #[test]
    fn a_refused_token_is_an_error() {
        let now = t0();
        let mut s = Session::new(SessionConfig::default(), now);
        s.handle_frame(connect_frame("1.2"), now);
        drain(&mut s);
        s.authenticated(Err(Refusal("invalid token".into())), now);
        is_error_then_close(&drain(&mut s), "invalid token");
        assert_eq!(s.user(), None);
    }

    #[test]
    fn token_is_redacted_in_debug() {
        assert_eq!(
            format!("{:?}", Output::Authenticate(BearerToken("secret".into()))),
            "Authenticate(BearerToken(..))"
        );
    }

    #[test]
    fn frames_before_connect_or_while_authenticating_are_errors() {
        let now = t0();
        let mut s = Session::new(SessionConfig::default(), now);
        s.handle_frame(Frame::new(Command::Send).header("receipt", "r1"), now);
        let out = drain(&mut s);
        is_error_then_close(&out, "expected CONNECT");
        assert_eq!(frames(&out)[0].get("receipt-id"), Some("r1"));

        let mut s = Session::new(SessionConfig::default(), now);
        s.handle_frame(connect_frame("1.2"), now);
        drain(&mut s);
        s.handle_frame(Frame::new(Command::Disconnect), now);
        is_error_then_close(&drain(&mut s), "frame before CONNECTED");
    }

    #[test]
    fn connect_receipt_follows_connected() {
        let now = t0();
        let mut s = Session::new(SessionConfig::default(), now);
        s.handle_frame(connect_frame("1.2").header("receipt", "c"), now);
        drain(&mut s);
        s.authenticated(Ok(USER), now);
        let out = drain(&mut s);
        let f = frames(&out);
        assert_eq!(f[0].command, Command::Connected);
        assert_eq!(f[1].get("receipt-id"), Some("c"));
    }

    #[test]
    fn heartbeats_are_negotiated_and_sent() {
        let now = t0();
        let config = SessionConfig {
            heartbeat_send: Duration::from_millis(5000),
            heartbeat_receive: Duration::from_millis(4000),
            ..SessionConfig::default()
        };
        let mut s = Session::new(config, now);
        // The client can send every 10s and wants to hear from us every 1s.
        s.handle_frame(connect_frame("1.2").header("heart-beat", "10000,1000"), now);
        drain(&mut s);
        s.authenticated(Ok(USER), now);
        let out = drain(&mut s);
        assert_eq!(frames(&out)[0].get("heart-beat"), Some("5000,4000"));
        // We send every max(5000, 1000) = 5s.
        assert_eq!(s.poll_timeout(), Some(now + Duration::from_secs(5)));
        s.handle_timeout(now + Duration::from_secs(5));
        assert_eq!(drain(&mut s), vec![Output::Heartbeat]);
        // The client must send every max(10000, 4000) = 10s; silence past twice that closes.
        s.handle_activity(now + Duration::from_secs(15));
        s.handle_timeout(now + Duration::from_secs(34));
        assert!(!s.is_closed());
        s.handle_timeout(now + Duration::from_secs(35));
        assert!(s.is_closed());
        assert_eq!(
            drain(&mut s).last(),
            Some(&Output::Close(CloseReason::TimedOut))
        );
    }

    #[test]
    fn huge_heartbeat_values_are_capped_not_overflowed() {
        let now = t0();
        let mut s = Session::new(SessionConfig::default(), now);
        s.handle_frame(
            connect_frame("1.2").header("heart-beat", "18446744073709551615,18446744073709551615"),
            now,
        );
        s.authenticated(Ok(USER), now);
        drain(&mut s);
        let day = Duration::from_millis(MAX_HEARTBEAT_MS);
        assert_eq!(s.poll_timeout(), Some(now + day));
        s.handle_timeout(now + day * 3);
        assert!(s.is_closed(), "silent for more than twice the interval");
        let mut s = Session::new(SessionConfig::default(), now);
        s.handle_frame(connect_frame("1.2").header("heart-beat", "x,-1"), now);
        s.authenticated(Ok(USER), now);
        assert_eq!(s.poll_timeout(), None, "malformed means none");
    }

    #[test]
    fn zero_heartbeats_switch_them_off() {
        let now = t0();
        let mut s = connected(now);
        assert_eq!(s.poll_timeout(), None);
        s.handle_timeout(now + Duration::from_secs(3600));
        assert!(drain(&mut s).is_empty());
        assert!(!s.is_closed());
    }

    #[test]
    fn a_connection_without_connect_times_out() {
        let now = t0();
        let mut s = Session::new(SessionConfig::default(), now);
        assert_eq!(s.poll_timeout(), Some(now + Duration::from_secs(10)));
        s.handle_timeout(now + Duration::from_secs(10));
        assert_eq!(drain(&mut s), vec![Output::Close(CloseReason::TimedOut)]);
    }

    #[test]
    fn subscribe_asks_for_authorization_before_delivering() {
        let now = t0();
        let mut s = connected(now);
        s.handle_frame(
            Frame::new(Command::Subscribe)
                .header("id", "sub-0")
                .header("destination", room_topic())
                .header("receipt", "r"),
            now,
        );
        assert_eq!(
            drain(&mut s),
            vec![Output::Authorize {
                subscription: "sub-0".into(),
                room: ROOM,
                user: USER
            }]
        );
        let delivery = Delivery {
            room: ROOM,
            message_id: "m1".into(),
            body: b"{}".to_vec(),
            content_type: "application/json",
        };
        s.deliver(&delivery, now);
        assert!(drain(&mut s).is_empty(), "nothing before authorization");
        s.authorized("sub-0", Ok(()), now);
        let out = drain(&mut s);
        assert_eq!(
            out[0],
            Output::Subscribed {
                subscription: "sub-0".into(),
                room: ROOM
            }
        );
        assert_eq!(frames(&out)[0].get("receipt-id"), Some("r"));
        s.deliver(&delivery, now);
        let out = drain(&mut s);
        let m = frames(&out)[0];
        assert_eq!(m.command, Command::Message);
        assert_eq!(m.get("subscription"), Some("sub-0"));
        assert_eq!(m.get("message-id"), Some("m1"));
        assert_eq!(m.get("destination"), Some(room_topic().as_str()));
        assert_eq!(m.get("ack"), None, "auto mode needs no ack id");
        assert_eq!(m.body, b"{}");
    }

    #[test]
    fn an_outsider_is_refused() {
        let now = t0();
        let mut s = connected(now);
        s.handle_frame(
            Frame::new(Command::Subscribe)
                .header("id", "0")
                .header("destination", room_topic()),
            now,
        );
        drain(&mut s);
        s.authorized("0", Err(Refusal("not a member of this room".into())), now);
        is_error_then_close(&drain(&mut s), "not a member of this room");
    }

    #[test]
    fn subscribe_validates_its_headers() {
        let now = t0();
        let cases = [
            (
                Frame::new(Command::Subscribe).header("id", "1"),
                "SUBSCRIBE without destination",
            ),
            (
                Frame::new(Command::Subscribe).header("destination", room_topic()),
                "SUBSCRIBE without id",
            ),
            (
                Frame::new(Command::Subscribe)
                    .header("id", "1")
                    .header("destination", room_topic())
                    .header("ack", "sometimes"),
                "unknown ack mode",
            ),
            (
                Frame::new(Command::Subscribe)
                    .header("id", "1")
                    .header("destination", "/queue/other"),
                "cannot subscribe to this destination",
            ),
        ];
        for (frame, message) in cases {
            let mut s = connected(now);
            s.handle_frame(frame, now);
            is_error_then_close(&drain(&mut s), message);
        }
        let mut s = subscribed(now, "1", "auto");
        s.handle_frame(
            Frame::new(Command::Subscribe)
                .header("id", "1")
                .header("destination", room_topic()),
            now,
        );
        is_error_then_close(&drain(&mut s), "subscription id already in use");
    }

    #[test]
    fn subscriptions_per_session_are_limited() {
        let now = t0();
        let config = SessionConfig {
            max_subscriptions: 2,
            ..SessionConfig::default()
        };
        let mut s = Session::new(config, now);
        s.handle_frame(connect_frame("1.2"), now);
        s.authenticated(Ok(USER), now);
        drain(&mut s);
        for id in ["a", "b", "c"] {
            s.handle_frame(
                Frame::new(Command::Subscribe)
                    .header("id", id)
                    .header("destination", room_topic()),
                now,
            );
        }
        let out = drain(&mut s);
        assert_eq!(out.len(), 4, "{out:?}");
        is_error_then_close(&out[2..], "too many subscriptions");
    }

    #[test]
    fn client_ack_modes_carry_an_ack_id() {
        let now = t0();
        for mode in ["client", "client-individual"] {
            let mut s = subscribed(now, "s", mode);
            s.deliver(
                &Delivery {
                    room: ROOM,
                    message_id: "m".into(),
                    body: Vec::new(),
                    content_type: "application/json",
                },
                now,
            );
            let out = drain(&mut s);
            assert_eq!(frames(&out)[0].get("ack"), Some("m-1"));
            s.handle_frame(
                Frame::new(Command::Ack)
                    .header("id", "m-1")
                    .header("receipt", "a"),
                now,
            );
            assert_eq!(frames(&drain(&mut s))[0].get("receipt-id"), Some("a"));
        }
    }

    #[test]
    fn unsubscribe_stops_deliveries() {
        let now = t0();
        let mut s = subscribed(now, "s", "auto");
        s.handle_frame(
            Frame::new(Command::Unsubscribe)
                .header("id", "s")
                .header("receipt", "u"),
            now,
        );
        let out = drain(&mut s);
        assert_eq!(
            out[0],
            Output::Unsubscribed {
                subscription: "s".into(),
                room: ROOM
            }
        );
        assert_eq!(frames(&out)[0].get("receipt-id"), Some("u"));
        s.deliver(
            &Delivery {
                room: ROOM,
                message_id: "m".into(),
                body: Vec::new(),
                content_type: "application/json",
            },
            now,
        );
        assert!(drain(&mut s).is_empty());
    }

    #[test]
    fn send_posts_and_receipts_only_after_the_append() {
        let now = t0();
        let mut s = connected(now);
        s.handle_frame(
            Frame::new(Command::Send)
                .header("destination", Destination::RoomSend(ROOM).to_wire())
                .header("receipt", "r9")
                .header("client-message-id", "c1")
                .body("hello"),
            now,
        );
        assert_eq!(
            drain(&mut s),
            vec![Output::Post {
                room: ROOM,
                user: USER,
                body: "hello".into(),
                client_message_id: Some("c1".into()),
                receipt: Some("r9".into()),
            }]
        );
        s.posted(Some("r9".into()), Ok(()), now);
        let out = drain(&mut s);
        assert_eq!(frames(&out)[0].command, Command::Receipt);
        assert_eq!(frames(&out)[0].get("receipt-id"), Some("r9"));
    }

    #[test]
    fn a_refused_post_is_an_error_with_the_receipt_id() {
        let now = t0();
        let mut s = connected(now);
        s.posted(
            Some("r".into()),
            Err(Refusal("only members may post".into())),
            now,
        );
        let out = drain(&mut s);
        is_error_then_close(&out, "only members may post");
        assert_eq!(frames(&out)[0].get("receipt-id"), Some("r"));
    }

    #[test]
    fn send_validates_destination_body_and_transactions() {
        let now = t0();
        let send = || {
            Frame::new(Command::Send).header("destination", Destination::RoomSend(ROOM).to_wire())
        };
        for (frame, message) in [
            (
                Frame::new(Command::Send).header("destination", room_topic()),
                "cannot send to this destination",
            ),
            (send().body(vec![0xff]), "message body is not UTF-8"),
            (
                send().header("transaction", "t"),
                "transactions are not supported",
            ),
            (
                Frame::new(Command::Begin).header("transaction", "t"),
                "transactions are not supported",
            ),
            (Frame::new(Command::Message), "server frame sent by client"),
            (connect_frame("1.2"), "already connected"),
        ] {
            let mut s = connected(now);
            s.handle_frame(frame, now);
            is_error_then_close(&drain(&mut s), message);
        }
    }

    #[test]
    fn sends_are_rate_limited_with_a_burst() {
        let now = t0();
        let config = SessionConfig {
            send_burst: 3,
            sends_per_second: 2,
            ..SessionConfig::default()
        };
        let mut s = Session::new(config, now);
        s.handle_frame(connect_frame("1.2"), now);
        s.authenticated(Ok(USER), now);
        drain(&mut s);
        let send = || {
            Frame::new(Command::Send)
                .header("destination", Destination::RoomSend(ROOM).to_wire())
                .body("x")
        };
        for _ in 0..3 {
            s.handle_frame(send(), now);
        }
        // Half a second refills one token.
        let later = now + Duration::from_millis(500);
        s.handle_frame(send(), later);
        let posts = drain(&mut s);
        assert_eq!(posts.len(), 4, "{posts:?}");
        assert!(posts.iter().all(|o| matches!(o, Output::Post { .. })));
        s.handle_frame(send(), later);
        is_error_then_close(&drain(&mut s), "sending too fast");
    }

    #[test]
    fn disconnect_sends_its_receipt_then_closes() {
        let now = t0();
        let mut s = connected(now);
        s.handle_frame(
            Frame::new(Command::Disconnect).header("receipt", "bye"),
            now,
        );
        let out = drain(&mut s);
        assert_eq!(frames(&out)[0].get("receipt-id"), Some("bye"));
        assert_eq!(out.last(), Some(&Output::Close(CloseReason::Disconnected)));
        s.handle_frame(Frame::new(Command::Send), now);
        assert!(drain(&mut s).is_empty(), "a closed session ignores input");
    }

    #[test]
    fn a_slow_consumer_is_disconnected() {
        let now = t0();
        let config = SessionConfig {
            max_outbound: 3,
            ..SessionConfig::default()
        };
        let mut s = Session::new(config, now);
        s.handle_frame(connect_frame("1.2"), now);
        s.authenticated(Ok(USER), now);
        s.handle_frame(
            Frame::new(Command::Subscribe)
                .header("id", "s")
                .header("destination", room_topic()),
            now,
        );
        s.authorized("s", Ok(()), now);
        let d = Delivery {
            room: ROOM,
            message_id: "m".into(),
            body: Vec::new(),
            content_type: "application/json",
        };
        for _ in 0..10 {
            s.deliver(&d, now);
        }
        let out = drain(&mut s);
        assert!(out.len() <= 3, "{out:?}");
        assert_eq!(out.last(), Some(&Output::Close(CloseReason::SlowConsumer)));
    }

    #[test]
    fn decode_errors_become_error_frames() {
        let now = t0();
        let mut s = connected(now);
        s.handle_decode_error(&DecodeError::FrameTooLarge(10), now);
        is_error_then_close(&drain(&mut s), "malformed frame: frame exceeds 10 bytes");
    }

    #[test]
    fn stomp_1_0_subscriptions_may_omit_the_id() {
        let now = t0();
        let mut s = Session::new(SessionConfig::default(), now);
        s.handle_frame(
            Frame::new(Command::Connect).header("Authorization", "Bearer t"),
            now,
        );
        s.authenticated(Ok(USER), now);
        drain(&mut s);
        s.handle_frame(
            Frame::new(Command::Subscribe).header("destination", room_topic()),
            now,
        );
        let out = drain(&mut s);
        assert!(
            matches!(&out[0], Output::Authorize { subscription, .. } if *subscription == room_topic())
        );
    }
}
