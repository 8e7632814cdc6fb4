//! One client's STOMP session as a sans-IO state machine. The transport feeds it decoded
//! frames, activity and the time; it drains [`Output`]s: frames and heart-beats to write,
//! questions to answer (is this token valid, may this user read this room, post this message,
//! what did this subscriber miss), and when to close. No sockets, clocks or awaits inside, so
//! every protocol rule is unit-tested with plain values and simulated time.

use super::codec::DecodeError;
pub use super::destination::{Destination, Topic};
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
    /// The trace of the command behind it (only while spans are exported): each recipient's
    /// delivery span continues it.
    pub traceparent: Option<std::sync::Arc<str>>,
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
    /// The access token the session connected with was revoked (role change, sign-out
    /// everywhere) while connected.
    AccessRevoked,
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

    /// The access token the session connected with was revoked (the person signed out
    /// everywhere, or their role changed): tell the client to sign in again, and close.
    pub fn handle_access_revoked(&mut self, now: Instant) {
        if self.state == State::Closed {
            return;
        }
        self.error("access revoked; sign in again", None, now);
        self.set_close_reason(CloseReason::AccessRevoked);
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
            Some(Destination::UserCalls) => Topic::UserCalls(user),
            _ if destination.starts_with("/user/") => {
                // `/user/{someone}/...` would let one user read another's queue: only the
                // connected user's own queue exists.
                return self.error(
                    "only /user/queue/rooms and /user/queue/calls (the connected user's own queues) may be subscribed",
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
            (Some(_), Topic::UserRooms(_) | Topic::UserCalls(_)) => {
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
            // One's own queues need no authorization.
            Topic::UserRooms(_) | Topic::UserCalls(_) => self.authorized(&id, Ok(()), now),
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

mod delivery;
mod transactions;

#[cfg(test)]
mod tests;
