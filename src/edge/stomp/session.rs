//! One client's STOMP session as a sans-IO state machine. The transport feeds it decoded
//! frames, activity and the time; it drains [`Output`]s: frames and heart-beats to write,
//! questions to answer (is this token valid, may this user read this room, post this message,
//! what did this subscriber miss), and when to close. No sockets, clocks or awaits inside, so
//! every protocol rule is unit-tested with plain values and simulated time.

use super::codec::DecodeError;
use super::frame::{Command, Frame, Version};
use super::limiter::SendLimiter;
use neulbi_domain::{MessageId, RoomId, UserId};
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::time::{Duration, Instant};

/// The name sent in CONNECTED's `server` header.
const SERVER: &str = "neulbi";

/// The SUBSCRIBE header naming the last message a reconnecting client saw on a room topic;
/// the subscription first delivers every later message, then live ones.
pub const SINCE_HEADER: &str = "since-message-id";

/// The MESSAGE header set on a redelivery after NACK.
pub const REDELIVERED_HEADER: &str = "redelivered";

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
    /// SENDs a user may make in a burst before the rate applies (across their sessions when
    /// the sessions share one [`SendLimiter`]).
    pub send_burst: u32,
    /// SENDs per second a user may sustain; faster clients get ERROR and are closed.
    pub sends_per_second: u32,
    /// The per-user token buckets. The driver replaces it with the broker's node-wide one;
    /// the default is private to the session (tests, tools).
    pub send_limiter: SendLimiter,
    /// Unacknowledged MESSAGEs one `client`/`client-individual` subscription may have; a
    /// client that never ACKs hits it and is closed as a slow consumer.
    pub max_unacked: usize,
    /// Transactions one session may have open at once.
    pub max_transactions: usize,
    /// SEND/ACK/NACK frames one transaction may buffer.
    pub max_transaction_frames: usize,
    /// Most missed messages a `since-message-id` subscription replays; more → ERROR (page the
    /// history over HTTP instead).
    pub max_catch_up: usize,
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
            send_limiter: SendLimiter::default(),
            max_unacked: 256,
            max_transactions: 4,
            max_transaction_frames: 32,
            max_catch_up: 200,
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

/// What a subscription listens to; the broker routes deliveries by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Topic {
    /// A room's messages (`/topic/rooms.{roomId}`).
    Room(RoomId),
    /// One user's room-list changes (`/user/queue/rooms`, resolved to the connected user).
    UserRooms(UserId),
}

impl Topic {
    /// The destination the client subscribed to, for MESSAGE frames.
    pub fn to_wire(self) -> String {
        match self {
            Topic::Room(room) => Destination::RoomTopic(room).to_wire(),
            Topic::UserRooms(_) => Destination::UserRooms.to_wire(),
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
    /// `/app/rooms.{roomId}.read`: move my read marker (send only).
    RoomRead(RoomId),
    /// `/user/queue/rooms`: my room-list changes (subscribe only).
    UserRooms,
}

impl Destination {
    /// Parses a destination header; anything else is not routable here.
    pub fn parse(value: &str) -> Option<Self> {
        if value == "/user/queue/rooms" {
            return Some(Destination::UserRooms);
        }
        if let Some(id) = value.strip_prefix("/topic/rooms.") {
            return id.parse().ok().map(Destination::RoomTopic);
        }
        let rest = value.strip_prefix("/app/rooms.")?;
        if let Some(id) = rest.strip_suffix(".send") {
            return id.parse().ok().map(Destination::RoomSend);
        }
        let id = rest.strip_suffix(".read")?;
        id.parse().ok().map(Destination::RoomRead)
    }

    /// The wire form, for MESSAGE frames.
    pub fn to_wire(self) -> String {
        match self {
            Destination::RoomTopic(room) => format!("/topic/rooms.{room}"),
            Destination::RoomSend(room) => format!("/app/rooms.{room}.send"),
            Destination::RoomRead(room) => format!("/app/rooms.{room}.read"),
            Destination::UserRooms => "/user/queue/rooms".to_owned(),
        }
    }
}

/// A message to deliver to the subscribers of a topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// Who receives it.
    pub topic: Topic,
    /// A unique id of the message (the STOMP `message-id`).
    pub message_id: String,
    /// The global log position of the event it comes from: catch-up and live deliveries are
    /// merged by it, so nothing is missed or sent twice.
    pub position: u64,
    /// The body, usually JSON.
    pub body: Vec<u8>,
    /// Its content type.
    pub content_type: &'static str,
}

/// The history a `since-message-id` subscription missed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CatchUp {
    /// The missed messages, oldest first.
    pub messages: Vec<Delivery>,
    /// The log position the history was read up to (at least the `since` message's own):
    /// live deliveries at or below it were already part of the history.
    pub floor: u64,
}

/// Why a caller refused a request; the text goes into the ERROR frame, so it must be safe to
/// show to the client (no personal data, no internals).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal(pub String);

/// What the session wants done. Requests (`Authenticate`, `Authorize`, `CatchUp`, `Post`,
/// `MarkRead`) must be answered with the matching method before the next frame is fed, so
/// replies stay in order.
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
    /// Read the room's messages after `since` (at most `limit`); answer with
    /// [`Session::caught_up`]. Comes after the matching [`Output::Subscribed`], so live
    /// deliveries are already routed (and held back) while the history is read.
    CatchUp {
        /// The subscription id.
        subscription: String,
        /// The room.
        room: RoomId,
        /// The last message the client saw.
        since: MessageId,
        /// The most messages to replay.
        limit: usize,
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
        /// The receipt id of the frame that asked (SEND, or COMMIT for a transaction).
        receipt: Option<String>,
        /// Whether success sends that RECEIPT (false for all but the last write of a COMMIT).
        confirm: bool,
    },
    /// Move the user's read marker; answer with [`Session::posted`] once durable.
    MarkRead {
        /// The room.
        room: RoomId,
        /// The reader.
        user: UserId,
        /// The newest message read.
        up_to: MessageId,
        /// The receipt id of the frame that asked (SEND, or COMMIT for a transaction).
        receipt: Option<String>,
        /// Whether success sends that RECEIPT (false for all but the last write of a COMMIT).
        confirm: bool,
    },
    /// The session now receives `topic`'s deliveries for this subscription.
    Subscribed {
        /// The subscription id.
        subscription: String,
        /// What it listens to.
        topic: Topic,
    },
    /// The session no longer receives deliveries for this subscription.
    Unsubscribed {
        /// The subscription id.
        subscription: String,
        /// What it listened to.
        topic: Topic,
    },
    /// Flush what was written and close the connection; every subscription ends with it.
    Close(CloseReason),
}

impl Output {
    /// Requests to the caller; dropped when the session closes before they are answered.
    fn is_request(&self) -> bool {
        matches!(
            self,
            Output::Authenticate(_)
                | Output::Authorize { .. }
                | Output::CatchUp { .. }
                | Output::Post { .. }
                | Output::MarkRead { .. }
        )
    }
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
    /// The client did not read (or acknowledge) fast enough.
    SlowConsumer,
    /// The server is shutting down.
    ServerShutdown,
    /// The user's account was erased or deactivated while connected.
    AccountClosed,
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

/// A MESSAGE sent to a `client`/`client-individual` subscription and not yet acknowledged.
#[derive(Debug, Clone)]
struct Unacked {
    /// The `ack` id (1.2) we sent.
    ack_id: String,
    /// The delivery, kept for one redelivery after NACK.
    delivery: Delivery,
    /// True if this already is the redelivery.
    redelivered: bool,
}

#[derive(Debug, Clone)]
struct Subscription {
    topic: Topic,
    ack: AckMode,
    /// False until the caller authorized it.
    active: bool,
    receipt: Option<String>,
    /// The last message the client saw, when it asked for a catch-up.
    since: Option<MessageId>,
    /// `Some` while the catch-up is being read: live deliveries wait here.
    held: Option<Vec<Delivery>>,
    /// Live deliveries at or below this position were part of the catch-up.
    floor: Option<u64>,
    /// Sent but not acknowledged, oldest first (empty in `auto` mode).
    unacked: VecDeque<Unacked>,
}

/// A SEND or ACK/NACK, validated, ready to perform now or at COMMIT.
#[derive(Debug, Clone)]
enum Action {
    Post {
        room: RoomId,
        body: String,
        client_message_id: Option<String>,
    },
    MarkRead {
        room: RoomId,
        up_to: MessageId,
    },
    Ack {
        nack: bool,
        target: AckTarget,
    },
}

/// Which delivery an ACK/NACK names (by version).
#[derive(Debug, Clone)]
enum AckTarget {
    /// 1.2: the `ack` id of the MESSAGE.
    AckId(String),
    /// 1.0/1.1: the `message-id`, within one subscription if named (1.1 requires it).
    MessageId {
        message_id: String,
        subscription: Option<String>,
    },
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
    /// Open transactions and their buffered actions, in arrival order.
    transactions: HashMap<String, Vec<Action>>,
    heartbeats: Heartbeats,
    started: Instant,
    last_received: Instant,
    last_sent: Instant,
    out: VecDeque<Output>,
    message_seq: u64,
}

impl Session {
    /// A new session for a connection opened at `now`.
    pub fn new(config: SessionConfig, now: Instant) -> Self {
        Self {
            config,
            state: State::Start,
            version: None,
            user: None,
            connect_receipt: None,
            subscriptions: HashMap::new(),
            transactions: HashMap::new(),
            heartbeats: Heartbeats::default(),
            started: now,
            last_received: now,
            last_sent: now,
            out: VecDeque::new(),
            message_seq: 0,
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

    /// The server is stopping: tell the client (so it reconnects elsewhere or later) and close,
    /// so graceful shutdown is not held open by idle sockets.
    pub fn handle_shutdown(&mut self, now: Instant) {
        if self.state == State::Closed {
            return;
        }
        self.error("server shutting down", None, now);
        self.set_close_reason(CloseReason::ServerShutdown);
    }

    /// The connected user was erased or deactivated: a live session must not outlast the
    /// account (its access token would stay valid for minutes), so tell the client and close.
    pub fn handle_account_closed(&mut self, now: Instant) {
        if self.state == State::Closed {
            return;
        }
        self.error("account closed", None, now);
        self.set_close_reason(CloseReason::AccountClosed);
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
            (State::Connected, Command::Ack) => self.ack_frame(&frame, false, receipt, now),
            (State::Connected, Command::Nack) => self.ack_frame(&frame, true, receipt, now),
            (State::Connected, Command::Begin) => self.begin(&frame, receipt, now),
            (State::Connected, Command::Commit) => self.commit(&frame, receipt, now),
            (State::Connected, Command::Abort) => self.abort(&frame, receipt, now),
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
        let Some(user) = self.user else {
            return self.error("not connected", receipt, now);
        };
        let topic = match Destination::parse(destination) {
            Some(Destination::RoomTopic(room)) => Topic::Room(room),
            Some(Destination::UserRooms) => Topic::UserRooms(user),
            _ if destination.starts_with("/user/") => {
                // `/user/{someone}/...` would let one user read another's queue: only the
                // connected user's own queue exists.
                return self.error(
                    "only /user/queue/rooms (the connected user's own queue) may be subscribed",
                    receipt,
                    now,
                );
            }
            _ => return self.error("cannot subscribe to this destination", receipt, now),
        };
        let since = match (frame.get(SINCE_HEADER), topic) {
            (None, _) => None,
            (Some(value), Topic::Room(_)) => match value.trim().parse::<MessageId>() {
                Ok(id) => Some(id),
                Err(_) => return self.error("since-message-id is not a message id", receipt, now),
            },
            (Some(_), Topic::UserRooms(_)) => {
                return self.error(
                    "since-message-id applies to /topic/rooms.* only",
                    receipt,
                    now,
                );
            }
        };
        if self.subscriptions.contains_key(&id) {
            return self.error("subscription id already in use", receipt, now);
        }
        if self.subscriptions.len() >= self.config.max_subscriptions {
            return self.error("too many subscriptions", receipt, now);
        }
        self.subscriptions.insert(
            id.clone(),
            Subscription {
                topic,
                ack,
                active: false,
                receipt,
                since,
                held: None,
                floor: None,
                unacked: VecDeque::new(),
            },
        );
        match topic {
            Topic::Room(room) => self.out.push_back(Output::Authorize {
                subscription: id,
                room,
                user,
            }),
            // One's own queue needs no authorization.
            Topic::UserRooms(_) => self.authorized(&id, Ok(()), now),
        }
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
                let topic = sub.topic;
                self.out.push_back(Output::Subscribed {
                    subscription: subscription.to_owned(),
                    topic,
                });
                match (sub.since, topic) {
                    (Some(since), Topic::Room(room)) => {
                        // Live deliveries are routed from now on; hold them until the history
                        // is in. The RECEIPT follows the replay.
                        sub.held = Some(Vec::new());
                        self.out.push_back(Output::CatchUp {
                            subscription: subscription.to_owned(),
                            room,
                            since,
                            limit: self.config.max_catch_up,
                        });
                    }
                    _ => {
                        let receipt = sub.receipt.take();
                        self.receipt(receipt, now);
                    }
                }
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

    /// The answer to [`Output::CatchUp`]: replays the missed messages, then the live ones that
    /// arrived meanwhile and are newer than the history, then the SUBSCRIBE's RECEIPT.
    pub fn caught_up(
        &mut self,
        subscription: &str,
        result: Result<CatchUp, Refusal>,
        now: Instant,
    ) {
        if self.state != State::Connected {
            return;
        }
        let Some(sub) = self.subscriptions.get_mut(subscription) else {
            return;
        };
        let Some(held) = sub.held.take() else {
            return;
        };
        let catch_up = match result {
            Ok(c) => c,
            Err(Refusal(reason)) => {
                let receipt = sub.receipt.take();
                return self.error(&reason, receipt, now);
            }
        };
        let floor = catch_up
            .messages
            .iter()
            .map(|d| d.position)
            .chain([catch_up.floor])
            .max()
            .unwrap_or(catch_up.floor);
        sub.floor = Some(floor);
        let receipt = sub.receipt.take();
        for delivery in &catch_up.messages {
            if !self.send_message(subscription, delivery, false, now) {
                return;
            }
        }
        for delivery in held.iter().filter(|d| d.position > floor) {
            if !self.send_message(subscription, delivery, false, now) {
                return;
            }
        }
        self.receipt(receipt, now);
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
                topic: sub.topic,
            });
        }
        self.receipt(receipt, now);
    }

    /// Takes one SEND token from the user's bucket (shared by all sessions of the user when
    /// the limiter is shared); false when it is empty.
    fn take_send_token(&mut self, now: Instant) -> bool {
        let Some(user) = self.user else {
            return false;
        };
        self.config.send_limiter.try_take(
            user,
            self.config.send_burst,
            self.config.sends_per_second,
            now,
        )
    }

    fn send(&mut self, frame: Frame, receipt: Option<String>, now: Instant) {
        if !self.take_send_token(now) {
            return self.error("sending too fast", receipt, now);
        }
        let transaction = frame.get("transaction").map(str::to_owned);
        let action = match parse_send(frame) {
            Ok(action) => action,
            Err(message) => return self.error(message, receipt, now),
        };
        match transaction {
            Some(tx) => self.buffer(&tx, action, receipt, now),
            None => self.perform(action, receipt, true, now),
        }
    }

    fn ack_frame(&mut self, frame: &Frame, nack: bool, receipt: Option<String>, now: Instant) {
        let target = match self.version {
            Some(Version::V1_2) => frame.get("id").map(|id| AckTarget::AckId(id.to_owned())),
            version => frame.get("message-id").and_then(|m| {
                let subscription = frame.get("subscription").map(str::to_owned);
                // 1.1 names the subscription; 1.0 has no such header.
                (version == Some(Version::V1_0) || subscription.is_some()).then(|| {
                    AckTarget::MessageId {
                        message_id: m.to_owned(),
                        subscription,
                    }
                })
            }),
        };
        let Some(target) = target else {
            let what = if nack { "NACK" } else { "ACK" };
            let needs = match self.version {
                Some(Version::V1_2) => "id",
                Some(Version::V1_1) => "message-id and subscription",
                _ => "message-id",
            };
            return self.error(&format!("{what} without {needs}"), receipt, now);
        };
        let action = Action::Ack { nack, target };
        match frame.get("transaction").map(str::to_owned) {
            Some(tx) => self.buffer(&tx, action, receipt, now),
            None => self.perform(action, receipt, true, now),
        }
    }

    /// Does what a SEND/ACK/NACK asks. `confirm`: send the RECEIPT when done (false for all
    /// but the last write of a COMMIT, whose receipt then follows the last append).
    fn perform(&mut self, action: Action, receipt: Option<String>, confirm: bool, now: Instant) {
        let Some(user) = self.user else {
            return self.error("not connected", receipt, now);
        };
        match action {
            Action::Post {
                room,
                body,
                client_message_id,
            } => self.out.push_back(Output::Post {
                room,
                user,
                body,
                client_message_id,
                receipt,
                confirm,
            }),
            Action::MarkRead { room, up_to } => self.out.push_back(Output::MarkRead {
                room,
                user,
                up_to,
                receipt,
                confirm,
            }),
            Action::Ack { nack, target } => {
                if self.acknowledge(nack, &target, now) {
                    if confirm {
                        self.receipt(receipt, now);
                    }
                } else {
                    let message = match target {
                        AckTarget::AckId(_) => "unknown ack id",
                        AckTarget::MessageId { .. } => "unknown message-id",
                    };
                    self.error(message, receipt, now);
                }
            }
        }
    }

    /// Applies an ACK/NACK; false if it names no unacknowledged delivery. `client` mode is
    /// cumulative (this and every earlier one), `client-individual` only this one. A NACKed
    /// delivery is sent once more with `redelivered:true`; a NACKed redelivery is dropped.
    fn acknowledge(&mut self, nack: bool, target: &AckTarget, now: Instant) -> bool {
        let found = self.subscriptions.iter().find_map(|(id, sub)| {
            let index = sub.unacked.iter().position(|u| match target {
                AckTarget::AckId(ack_id) => u.ack_id == *ack_id,
                AckTarget::MessageId {
                    message_id,
                    subscription,
                } => {
                    u.delivery.message_id == *message_id
                        && subscription.as_ref().is_none_or(|s| s == id)
                }
            })?;
            Some((id.clone(), index))
        });
        let Some((id, index)) = found else {
            return false;
        };
        let Some(sub) = self.subscriptions.get_mut(&id) else {
            return false;
        };
        let settled: Vec<Unacked> = match sub.ack {
            AckMode::Client => sub.unacked.drain(..=index).collect(),
            AckMode::ClientIndividual | AckMode::Auto => {
                sub.unacked.remove(index).into_iter().collect()
            }
        };
        // Counts only: subscription ids are client-chosen text.
        tracing::debug!(count = settled.len(), nack, "STOMP acknowledgement");
        if nack {
            for u in settled.into_iter().filter(|u| !u.redelivered) {
                if !self.send_message(&id, &u.delivery, true, now) {
                    break;
                }
            }
        }
        true
    }

    fn transaction_id<'f>(
        &mut self,
        frame: &'f Frame,
        receipt: &Option<String>,
        now: Instant,
    ) -> Option<&'f str> {
        let tx = frame.get("transaction");
        if tx.is_none() {
            let what = frame.command;
            self.error(&format!("{what} without transaction"), receipt.clone(), now);
        }
        tx
    }

    fn begin(&mut self, frame: &Frame, receipt: Option<String>, now: Instant) {
        let Some(tx) = self.transaction_id(frame, &receipt, now) else {
            return;
        };
        if self.transactions.contains_key(tx) {
            return self.error("transaction already open", receipt, now);
        }
        if self.transactions.len() >= self.config.max_transactions {
            return self.error("too many open transactions", receipt, now);
        }
        self.transactions.insert(tx.to_owned(), Vec::new());
        self.receipt(receipt, now);
    }

    /// Adds a SEND/ACK/NACK to an open transaction; its RECEIPT (if asked) says it was
    /// buffered, the COMMIT's says it was performed.
    fn buffer(&mut self, tx: &str, action: Action, receipt: Option<String>, now: Instant) {
        let max = self.config.max_transaction_frames;
        let Some(actions) = self.transactions.get_mut(tx) else {
            return self.error("unknown transaction", receipt, now);
        };
        if actions.len() >= max {
            return self.error("too many frames in the transaction", receipt, now);
        }
        actions.push(action);
        self.receipt(receipt, now);
    }

    /// Performs the buffered frames in order. The RECEIPT rides on the last SEND, so it goes
    /// out only once every buffered SEND is durable; a refused one ends the session with an
    /// ERROR (earlier SENDs stay posted, later ones are dropped).
    fn commit(&mut self, frame: &Frame, receipt: Option<String>, now: Instant) {
        let Some(tx) = self.transaction_id(frame, &receipt, now) else {
            return;
        };
        let Some(actions) = self.transactions.remove(tx) else {
            return self.error("unknown transaction", receipt, now);
        };
        let last_write = actions
            .iter()
            .rposition(|a| matches!(a, Action::Post { .. } | Action::MarkRead { .. }));
        for (i, action) in actions.into_iter().enumerate() {
            if self.state != State::Connected {
                return;
            }
            let confirm = Some(i) == last_write;
            self.perform(action, receipt.clone(), confirm, now);
        }
        if last_write.is_none() && self.state == State::Connected {
            self.receipt(receipt, now);
        }
    }

    fn abort(&mut self, frame: &Frame, receipt: Option<String>, now: Instant) {
        let Some(tx) = self.transaction_id(frame, &receipt, now) else {
            return;
        };
        if self.transactions.remove(tx).is_none() {
            return self.error("unknown transaction", receipt, now);
        }
        self.receipt(receipt, now);
    }

    /// The answer to [`Output::Post`] and [`Output::MarkRead`]: the RECEIPT goes out only
    /// now, after the append (and only if `confirm`); a refusal is an ERROR carrying the
    /// receipt id.
    pub fn posted(
        &mut self,
        receipt: Option<String>,
        confirm: bool,
        result: Result<(), Refusal>,
        now: Instant,
    ) {
        if self.state != State::Connected {
            return;
        }
        match result {
            Ok(()) if confirm => self.receipt(receipt, now),
            Ok(()) => {}
            Err(Refusal(reason)) => self.error(&reason, receipt, now),
        }
    }

    /// A delivery for `delivery.topic`: one MESSAGE per active subscription on it. A client
    /// whose queue is full is disconnected instead of growing server memory.
    pub fn deliver(&mut self, delivery: &Delivery, now: Instant) {
        if self.state != State::Connected {
            return;
        }
        let mut targets: Vec<String> = self
            .subscriptions
            .iter()
            .filter(|(_, s)| s.active && s.topic == delivery.topic)
            .map(|(id, _)| id.clone())
            .collect();
        targets.sort();
        for id in targets {
            let Some(sub) = self.subscriptions.get_mut(&id) else {
                continue;
            };
            if let Some(held) = &mut sub.held {
                if held.len() >= self.config.max_outbound {
                    return self.handle_overflow(now);
                }
                held.push(delivery.clone());
                continue;
            }
            if sub.floor.is_some_and(|floor| delivery.position <= floor) {
                // Already replayed by the catch-up.
                continue;
            }
            if !self.send_message(&id, delivery, false, now) {
                return;
            }
        }
    }

    /// Writes one MESSAGE for subscription `id`, tracking it until acknowledged in the client
    /// modes. False if the session ended instead (slow consumer).
    fn send_message(
        &mut self,
        id: &str,
        delivery: &Delivery,
        redelivered: bool,
        now: Instant,
    ) -> bool {
        if self.out.len() >= self.config.max_outbound {
            self.handle_overflow(now);
            return false;
        }
        let max_unacked = self.config.max_unacked;
        let version = self.version;
        let Some(sub) = self.subscriptions.get_mut(id) else {
            return true;
        };
        self.message_seq += 1;
        let mut message = Frame::new(Command::Message)
            .header("subscription", id)
            .header("message-id", delivery.message_id.clone())
            .header("destination", sub.topic.to_wire())
            .header("content-type", delivery.content_type);
        if sub.ack != AckMode::Auto {
            if sub.unacked.len() >= max_unacked {
                self.slow_consumer("too many unacknowledged messages", now);
                return false;
            }
            let ack_id = format!("{}-{}", delivery.message_id, self.message_seq);
            if version == Some(Version::V1_2) {
                message = message.header("ack", ack_id.clone());
            }
            sub.unacked.push_back(Unacked {
                ack_id,
                delivery: delivery.clone(),
                redelivered,
            });
        }
        if redelivered {
            message = message.header(REDELIVERED_HEADER, "true");
        }
        self.push_frame(message.body(delivery.body.clone()), now);
        true
    }

    /// The client does not read fast enough (here or in the transport's queue): drop what is
    /// queued, send ERROR and close.
    pub fn handle_overflow(&mut self, now: Instant) {
        self.slow_consumer("slow consumer", now);
    }

    fn slow_consumer(&mut self, message: &str, now: Instant) {
        if self.state == State::Closed {
            return;
        }
        self.subscriptions.clear();
        self.out.clear();
        self.error(message, None, now);
        self.set_close_reason(CloseReason::SlowConsumer);
    }

    fn set_close_reason(&mut self, reason: CloseReason) {
        if let Some(Output::Close(r)) = self.out.back_mut() {
            *r = reason;
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

    /// Ends the session: open transactions are aborted and requests not yet answered (e.g. the
    /// rest of a COMMIT after a refused SEND) are dropped.
    fn close(&mut self, reason: CloseReason) {
        if self.state == State::Closed {
            return;
        }
        self.state = State::Closed;
        if !self.transactions.is_empty() {
            tracing::debug!(
                open = self.transactions.len(),
                "STOMP: open transactions aborted"
            );
        }
        self.transactions.clear();
        self.subscriptions.clear();
        self.out.retain(|o| !o.is_request());
        self.out.push_back(Output::Close(reason));
    }
}

/// Validates a SEND: where it goes and what it carries.
fn parse_send(frame: Frame) -> Result<Action, &'static str> {
    match frame.get("destination").and_then(Destination::parse) {
        Some(Destination::RoomSend(room)) => {
            let client_message_id = frame.get("client-message-id").map(str::to_owned);
            let Ok(body) = String::from_utf8(frame.body) else {
                return Err("message body is not UTF-8");
            };
            Ok(Action::Post {
                room,
                body,
                client_message_id,
            })
        }
        Some(Destination::RoomRead(room)) => {
            // The message id as a header, or as the whole (trimmed) body.
            let from_body = std::str::from_utf8(&frame.body).ok().map(str::trim);
            let value = frame
                .get("message-id")
                .map(str::trim)
                .or(from_body)
                .filter(|v| !v.is_empty())
                .ok_or("a read marker needs a message-id")?;
            let up_to = value
                .parse::<MessageId>()
                .map_err(|_| "message-id is not a message id")?;
            Ok(Action::MarkRead { room, up_to })
        }
        _ => Err("cannot send to this destination"),
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
            topic: Topic::Room(ROOM),
            message_id: "m1".into(),
            position: 1,
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
                topic: Topic::Room(ROOM)
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
        // The two pending authorizations are dropped with the session.
        is_error_then_close(&drain(&mut s), "too many subscriptions");
    }

    #[test]
    fn client_ack_modes_carry_an_ack_id() {
        let now = t0();
        for mode in ["client", "client-individual"] {
            let mut s = subscribed(now, "s", mode);
            s.deliver(
                &Delivery {
                    topic: Topic::Room(ROOM),
                    message_id: "m".into(),
                    position: 1,
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
                topic: Topic::Room(ROOM)
            }
        );
        assert_eq!(frames(&out)[0].get("receipt-id"), Some("u"));
        s.deliver(
            &Delivery {
                topic: Topic::Room(ROOM),
                message_id: "m".into(),
                position: 1,
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
                confirm: true,
            }]
        );
        s.posted(Some("r9".into()), true, Ok(()), now);
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
            true,
            Err(Refusal("only members may post".into())),
            now,
        );
        let out = drain(&mut s);
        is_error_then_close(&out, "only members may post");
        assert_eq!(frames(&out)[0].get("receipt-id"), Some("r"));
    }

    #[test]
    fn send_validates_destination_body_and_transaction() {
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
            (send().header("transaction", "t"), "unknown transaction"),
            (Frame::new(Command::Commit), "COMMIT without transaction"),
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
            topic: Topic::Room(ROOM),
            message_id: "m".into(),
            position: 1,
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

    fn msg(topic: Topic, id: &str, position: u64) -> Delivery {
        Delivery {
            topic,
            message_id: id.into(),
            position,
            body: id.as_bytes().to_vec(),
            content_type: "application/json",
        }
    }

    fn send_to(destination: Destination) -> Frame {
        Frame::new(Command::Send).header("destination", destination.to_wire())
    }

    const MSG: &str = "00000000-0000-0000-0000-0000000000aa";

    #[test]
    fn commit_performs_buffered_frames_in_order_and_receipts_after_the_last_append() {
        let now = t0();
        let mut s = connected(now);
        s.handle_frame(
            Frame::new(Command::Begin)
                .header("transaction", "t1")
                .header("receipt", "b"),
            now,
        );
        s.handle_frame(
            send_to(Destination::RoomSend(ROOM))
                .header("transaction", "t1")
                .header("receipt", "s1")
                .body("one"),
            now,
        );
        s.handle_frame(
            send_to(Destination::RoomRead(ROOM))
                .header("transaction", "t1")
                .header("message-id", MSG),
            now,
        );
        let out = drain(&mut s);
        let receipts: Vec<_> = frames(&out).iter().map(|f| f.get("receipt-id")).collect();
        assert_eq!(
            receipts,
            [Some("b"), Some("s1")],
            "buffered, nothing performed"
        );
        assert!(!out.iter().any(Output::is_request), "{out:?}");
        s.handle_frame(
            Frame::new(Command::Commit)
                .header("transaction", "t1")
                .header("receipt", "c"),
            now,
        );
        assert_eq!(
            drain(&mut s),
            vec![
                Output::Post {
                    room: ROOM,
                    user: USER,
                    body: "one".into(),
                    client_message_id: None,
                    receipt: Some("c".into()),
                    confirm: false,
                },
                Output::MarkRead {
                    room: ROOM,
                    user: USER,
                    up_to: MSG.parse().expect("id"),
                    receipt: Some("c".into()),
                    confirm: true,
                },
            ]
        );
        s.posted(Some("c".into()), false, Ok(()), now);
        assert!(
            drain(&mut s).is_empty(),
            "no RECEIPT before the last append"
        );
        s.posted(Some("c".into()), true, Ok(()), now);
        let out = drain(&mut s);
        assert_eq!(frames(&out)[0].get("receipt-id"), Some("c"));
        // The transaction is gone after COMMIT.
        s.handle_frame(Frame::new(Command::Abort).header("transaction", "t1"), now);
        is_error_then_close(&drain(&mut s), "unknown transaction");
    }

    #[test]
    fn a_refused_send_in_a_commit_errors_and_drops_the_rest() {
        let now = t0();
        let mut s = connected(now);
        s.handle_frame(Frame::new(Command::Begin).header("transaction", "t"), now);
        for body in ["a", "b"] {
            s.handle_frame(
                send_to(Destination::RoomSend(ROOM))
                    .header("transaction", "t")
                    .body(body),
                now,
            );
        }
        s.handle_frame(
            Frame::new(Command::Commit)
                .header("transaction", "t")
                .header("receipt", "c"),
            now,
        );
        assert!(matches!(
            s.poll_output(),
            Some(Output::Post { confirm: false, .. })
        ));
        s.posted(
            Some("c".into()),
            false,
            Err(Refusal("room is closed".into())),
            now,
        );
        let out = drain(&mut s);
        is_error_then_close(&out, "room is closed");
        assert_eq!(frames(&out)[0].get("receipt-id"), Some("c"));
    }

    #[test]
    fn abort_discards_and_disconnect_aborts() {
        let now = t0();
        let mut s = connected(now);
        s.handle_frame(Frame::new(Command::Begin).header("transaction", "t"), now);
        s.handle_frame(
            send_to(Destination::RoomSend(ROOM))
                .header("transaction", "t")
                .body("x"),
            now,
        );
        s.handle_frame(
            Frame::new(Command::Abort)
                .header("transaction", "t")
                .header("receipt", "a"),
            now,
        );
        let out = drain(&mut s);
        assert_eq!(frames(&out)[0].get("receipt-id"), Some("a"));
        assert!(!out.iter().any(Output::is_request), "{out:?}");

        let mut s = connected(now);
        s.handle_frame(Frame::new(Command::Begin).header("transaction", "t"), now);
        s.handle_frame(
            send_to(Destination::RoomSend(ROOM))
                .header("transaction", "t")
                .body("x"),
            now,
        );
        s.handle_frame(Frame::new(Command::Disconnect), now);
        assert_eq!(
            drain(&mut s),
            vec![Output::Close(CloseReason::Disconnected)]
        );
        assert!(s.transactions.is_empty());
    }

    #[test]
    fn transactions_are_bounded_and_checked() {
        let now = t0();
        let config = SessionConfig {
            max_transactions: 1,
            max_transaction_frames: 1,
            ..SessionConfig::default()
        };
        let begin = |tx: &str| Frame::new(Command::Begin).header("transaction", tx);
        let fresh = || {
            let mut s = Session::new(config.clone(), now);
            s.handle_frame(connect_frame("1.2"), now);
            s.authenticated(Ok(USER), now);
            drain(&mut s);
            s
        };
        let mut s = fresh();
        s.handle_frame(begin("t"), now);
        s.handle_frame(begin("t"), now);
        is_error_then_close(&drain(&mut s), "transaction already open");
        let mut s = fresh();
        s.handle_frame(begin("t"), now);
        s.handle_frame(begin("u"), now);
        is_error_then_close(&drain(&mut s), "too many open transactions");
        let mut s = fresh();
        s.handle_frame(begin("t"), now);
        let tx_send = || {
            send_to(Destination::RoomSend(ROOM))
                .header("transaction", "t")
                .body("x")
        };
        s.handle_frame(tx_send(), now);
        s.handle_frame(tx_send(), now);
        is_error_then_close(&drain(&mut s), "too many frames in the transaction");
        let mut s = fresh();
        s.handle_frame(Frame::new(Command::Begin), now);
        is_error_then_close(&drain(&mut s), "BEGIN without transaction");
        let mut s = fresh();
        s.handle_frame(
            Frame::new(Command::Ack)
                .header("id", "x")
                .header("transaction", "nope"),
            now,
        );
        is_error_then_close(&drain(&mut s), "unknown transaction");
    }

    #[test]
    fn transactional_acks_apply_at_commit() {
        let now = t0();
        let mut s = subscribed(now, "s", "client-individual");
        s.deliver(&msg(Topic::Room(ROOM), "m", 1), now);
        drain(&mut s);
        s.handle_frame(Frame::new(Command::Begin).header("transaction", "t"), now);
        s.handle_frame(
            Frame::new(Command::Ack)
                .header("id", "m-1")
                .header("transaction", "t"),
            now,
        );
        assert_eq!(s.subscriptions["s"].unacked.len(), 1, "not yet");
        s.handle_frame(
            Frame::new(Command::Commit)
                .header("transaction", "t")
                .header("receipt", "c"),
            now,
        );
        assert_eq!(frames(&drain(&mut s))[0].get("receipt-id"), Some("c"));
        assert!(s.subscriptions["s"].unacked.is_empty());
    }

    fn ack_ids(out: &[Output]) -> Vec<String> {
        frames(out)
            .iter()
            .filter_map(|f| f.get("ack").map(str::to_owned))
            .collect()
    }

    #[test]
    fn client_ack_is_cumulative_and_client_individual_is_not() {
        let now = t0();
        let mut s = subscribed(now, "s", "client");
        for (i, id) in ["a", "b", "c"].into_iter().enumerate() {
            s.deliver(&msg(Topic::Room(ROOM), id, i as u64), now);
        }
        let ids = ack_ids(&drain(&mut s));
        assert_eq!(ids, ["a-1", "b-2", "c-3"]);
        s.handle_frame(Frame::new(Command::Ack).header("id", "b-2"), now);
        assert!(drain(&mut s).is_empty());
        let left: Vec<_> = s.subscriptions["s"]
            .unacked
            .iter()
            .map(|u| u.ack_id.clone())
            .collect();
        assert_eq!(left, ["c-3"], "a and b acknowledged together");
        s.handle_frame(
            Frame::new(Command::Ack)
                .header("id", "a-1")
                .header("receipt", "r"),
            now,
        );
        let out = drain(&mut s);
        is_error_then_close(&out, "unknown ack id");
        assert_eq!(frames(&out)[0].get("receipt-id"), Some("r"));

        let mut s = subscribed(now, "s", "client-individual");
        for (i, id) in ["a", "b"].into_iter().enumerate() {
            s.deliver(&msg(Topic::Room(ROOM), id, i as u64), now);
        }
        drain(&mut s);
        s.handle_frame(Frame::new(Command::Ack).header("id", "b-2"), now);
        s.handle_frame(Frame::new(Command::Ack).header("id", "a-1"), now);
        assert!(drain(&mut s).is_empty(), "both were still open");
        assert!(s.subscriptions["s"].unacked.is_empty());
    }

    #[test]
    fn nack_redelivers_once() {
        let now = t0();
        let mut s = subscribed(now, "s", "client-individual");
        s.deliver(&msg(Topic::Room(ROOM), "a", 1), now);
        drain(&mut s);
        s.handle_frame(Frame::new(Command::Nack).header("id", "a-1"), now);
        let out = drain(&mut s);
        let again = frames(&out)[0];
        assert_eq!(again.command, Command::Message);
        assert_eq!(again.get("message-id"), Some("a"));
        assert_eq!(again.get(REDELIVERED_HEADER), Some("true"));
        assert_eq!(again.get("ack"), Some("a-2"));
        assert_eq!(again.body, b"a");
        s.handle_frame(Frame::new(Command::Nack).header("id", "a-2"), now);
        assert!(drain(&mut s).is_empty(), "a redelivery is not redelivered");
        assert!(s.subscriptions["s"].unacked.is_empty());
        s.handle_frame(Frame::new(Command::Nack).header("id", "zzz"), now);
        is_error_then_close(&drain(&mut s), "unknown ack id");
    }

    #[test]
    fn auto_mode_has_nothing_to_ack() {
        let now = t0();
        let mut s = subscribed(now, "s", "auto");
        s.deliver(&msg(Topic::Room(ROOM), "a", 1), now);
        drain(&mut s);
        s.handle_frame(Frame::new(Command::Ack).header("id", "a-1"), now);
        is_error_then_close(&drain(&mut s), "unknown ack id");
        let mut s = subscribed(now, "s", "auto");
        s.handle_frame(Frame::new(Command::Ack), now);
        is_error_then_close(&drain(&mut s), "ACK without id");
    }

    #[test]
    fn stomp_1_1_acks_by_message_id_and_subscription() {
        let now = t0();
        let mut s = Session::new(SessionConfig::default(), now);
        s.handle_frame(connect_frame("1.1"), now);
        s.authenticated(Ok(USER), now);
        s.handle_frame(
            Frame::new(Command::Subscribe)
                .header("id", "s")
                .header("destination", room_topic())
                .header("ack", "client"),
            now,
        );
        s.authorized("s", Ok(()), now);
        drain(&mut s);
        s.deliver(&msg(Topic::Room(ROOM), "a", 1), now);
        let out = drain(&mut s);
        assert_eq!(frames(&out)[0].get("ack"), None, "1.1 acks by message-id");
        s.handle_frame(
            Frame::new(Command::Ack)
                .header("message-id", "a")
                .header("subscription", "s")
                .header("receipt", "r"),
            now,
        );
        assert_eq!(frames(&drain(&mut s))[0].get("receipt-id"), Some("r"));
        s.handle_frame(Frame::new(Command::Ack).header("message-id", "a"), now);
        is_error_then_close(&drain(&mut s), "ACK without message-id and subscription");
    }

    #[test]
    fn a_client_that_never_acks_is_a_slow_consumer() {
        let now = t0();
        let config = SessionConfig {
            max_unacked: 2,
            ..SessionConfig::default()
        };
        let mut s = Session::new(config, now);
        s.handle_frame(connect_frame("1.2"), now);
        s.authenticated(Ok(USER), now);
        s.handle_frame(
            Frame::new(Command::Subscribe)
                .header("id", "s")
                .header("destination", room_topic())
                .header("ack", "client"),
            now,
        );
        s.authorized("s", Ok(()), now);
        drain(&mut s);
        s.deliver(&msg(Topic::Room(ROOM), "a", 1), now);
        s.deliver(&msg(Topic::Room(ROOM), "b", 2), now);
        assert_eq!(drain(&mut s).len(), 2);
        s.deliver(&msg(Topic::Room(ROOM), "c", 3), now);
        let out = drain(&mut s);
        let [Output::Frame(f), Output::Close(CloseReason::SlowConsumer)] = out.as_slice() else {
            panic!("{out:?}");
        };
        assert_eq!(f.get("message"), Some("too many unacknowledged messages"));
    }

    #[test]
    fn the_user_queue_resolves_to_the_connected_user_only() {
        let now = t0();
        let mut s = connected(now);
        s.handle_frame(
            Frame::new(Command::Subscribe)
                .header("id", "q")
                .header("destination", "/user/queue/rooms")
                .header("receipt", "r"),
            now,
        );
        let out = drain(&mut s);
        assert_eq!(
            out[0],
            Output::Subscribed {
                subscription: "q".into(),
                topic: Topic::UserRooms(USER)
            }
        );
        assert_eq!(frames(&out)[0].get("receipt-id"), Some("r"));
        s.deliver(&msg(Topic::UserRooms(USER), "p", 1), now);
        let out = drain(&mut s);
        assert_eq!(
            frames(&out)[0].get("destination"),
            Some("/user/queue/rooms")
        );
        let other = UserId::from_uuid(Uuid::from_u128(43));
        s.deliver(&msg(Topic::UserRooms(other), "p", 2), now);
        assert!(drain(&mut s).is_empty());
        for destination in [
            format!("/user/{other}/queue/rooms"),
            "/user/queue/other".to_owned(),
        ] {
            let mut s = connected(now);
            s.handle_frame(
                Frame::new(Command::Subscribe)
                    .header("id", "q")
                    .header("destination", destination),
                now,
            );
            is_error_then_close(
                &drain(&mut s),
                "only /user/queue/rooms (the connected user's own queue) may be subscribed",
            );
        }
    }

    fn subscribe_since(s: &mut Session, now: Instant) {
        s.handle_frame(
            Frame::new(Command::Subscribe)
                .header("id", "s")
                .header("destination", room_topic())
                .header(SINCE_HEADER, MSG)
                .header("receipt", "r"),
            now,
        );
        drain(s);
        s.authorized("s", Ok(()), now);
    }

    #[test]
    fn catch_up_replays_then_merges_held_live_deliveries_without_gap_or_duplicate() {
        let now = t0();
        let mut s = connected(now);
        subscribe_since(&mut s, now);
        assert_eq!(
            drain(&mut s),
            vec![
                Output::Subscribed {
                    subscription: "s".into(),
                    topic: Topic::Room(ROOM)
                },
                Output::CatchUp {
                    subscription: "s".into(),
                    room: ROOM,
                    since: MSG.parse().expect("id"),
                    limit: SessionConfig::default().max_catch_up,
                },
            ]
        );
        // Live deliveries while the history is read are held back.
        s.deliver(&msg(Topic::Room(ROOM), "m5", 5), now);
        s.deliver(&msg(Topic::Room(ROOM), "m7", 7), now);
        assert!(drain(&mut s).is_empty());
        let history = CatchUp {
            messages: vec![
                msg(Topic::Room(ROOM), "m3", 3),
                msg(Topic::Room(ROOM), "m4", 4),
                msg(Topic::Room(ROOM), "m5", 5),
            ],
            floor: 2,
        };
        s.caught_up("s", Ok(history), now);
        let out = drain(&mut s);
        let ids: Vec<_> = frames(&out)
            .iter()
            .map(|f| f.get("message-id").or(f.get("receipt-id")))
            .collect();
        assert_eq!(
            ids,
            [Some("m3"), Some("m4"), Some("m5"), Some("m7"), Some("r")]
        );
        // The feed may still bring what the history held: skipped; newer ones flow.
        s.deliver(&msg(Topic::Room(ROOM), "m5", 5), now);
        assert!(drain(&mut s).is_empty());
        s.deliver(&msg(Topic::Room(ROOM), "m8", 8), now);
        assert_eq!(frames(&drain(&mut s))[0].get("message-id"), Some("m8"));
    }

    #[test]
    fn a_refused_catch_up_is_an_error_with_the_receipt_id() {
        let now = t0();
        let mut s = connected(now);
        subscribe_since(&mut s, now);
        drain(&mut s);
        s.caught_up("s", Err(Refusal("too many".into())), now);
        let out = drain(&mut s);
        is_error_then_close(&out, "too many");
        assert_eq!(frames(&out)[0].get("receipt-id"), Some("r"));
        let mut s = connected(now);
        s.handle_frame(
            Frame::new(Command::Subscribe)
                .header("id", "s")
                .header("destination", room_topic())
                .header(SINCE_HEADER, "yesterday"),
            now,
        );
        is_error_then_close(&drain(&mut s), "since-message-id is not a message id");
    }

    #[test]
    fn read_markers_take_the_message_id_from_a_header_or_the_body() {
        let now = t0();
        let up_to: MessageId = MSG.parse().expect("id");
        for frame in [
            send_to(Destination::RoomRead(ROOM)).header("message-id", MSG),
            send_to(Destination::RoomRead(ROOM)).body(format!(" {MSG}\n")),
        ] {
            let mut s = connected(now);
            s.handle_frame(frame.header("receipt", "r"), now);
            assert_eq!(
                drain(&mut s),
                vec![Output::MarkRead {
                    room: ROOM,
                    user: USER,
                    up_to,
                    receipt: Some("r".into()),
                    confirm: true
                }]
            );
        }
        for (frame, message) in [
            (
                send_to(Destination::RoomRead(ROOM)),
                "a read marker needs a message-id",
            ),
            (
                send_to(Destination::RoomRead(ROOM)).header("message-id", "nope"),
                "message-id is not a message id",
            ),
        ] {
            let mut s = connected(now);
            s.handle_frame(frame, now);
            is_error_then_close(&drain(&mut s), message);
        }
    }

    #[test]
    fn sessions_sharing_a_limiter_share_the_users_budget() {
        let now = t0();
        let config = SessionConfig {
            send_burst: 3,
            sends_per_second: 1,
            ..SessionConfig::default()
        };
        let open = || {
            let mut s = Session::new(config.clone(), now);
            s.handle_frame(connect_frame("1.2"), now);
            s.authenticated(Ok(USER), now);
            drain(&mut s);
            s
        };
        let (mut a, mut b) = (open(), open());
        let send = || send_to(Destination::RoomSend(ROOM)).body("x");
        a.handle_frame(send(), now);
        b.handle_frame(send(), now);
        a.handle_frame(send(), now);
        assert_eq!(drain(&mut a).len() + drain(&mut b).len(), 3);
        b.handle_frame(send(), now);
        is_error_then_close(&drain(&mut b), "sending too fast");
    }

    #[test]
    fn shutdown_sends_error_and_closes() {
        let now = t0();
        let mut s = subscribed(now, "s", "auto");
        s.handle_shutdown(now);
        let out = drain(&mut s);
        let [Output::Frame(f), Output::Close(CloseReason::ServerShutdown)] = out.as_slice() else {
            panic!("{out:?}");
        };
        assert_eq!(f.get("message"), Some("server shutting down"));
        s.handle_shutdown(now);
        assert!(drain(&mut s).is_empty());
    }
}
