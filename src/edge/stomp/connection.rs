//! Answers a [`Session`]'s questions with a [`ChatBackend`]: token verification, room
//! membership and posting. The backend is a trait so the whole request/answer loop is tested
//! with a fake; [`AppBackend`] is the real one over [`AuthService`] and [`AppState`].

use super::frame::Frame;
use super::session::{CatchUp, CloseReason, Output, Refusal, Session, Topic};
use crate::actors::ActorError;
use crate::auth::AuthService;
use crate::auth::epochs::Revocation;
use crate::state::AppState;
use crate::store::{Direction, Metadata};
use futures::future::LocalBoxFuture;
use neulbi_domain::chat_room::RoomCommand;
use neulbi_domain::{
    Actor, Context, DomainError, MessageId, Role, RoomId, StreamKind, StreamName, UserId,
};
use std::time::Instant;
use tracing::Instrument;

/// Who a verified token speaks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    /// The user.
    pub user: UserId,
    /// The role the token was issued with (the room actor checks it).
    pub role: Role,
    /// The user stream's version the token was issued at (`None`: unversioned), which
    /// decides whether a later revocation ends this session.
    pub user_version: Option<u64>,
}

/// What a STOMP connection needs from the rest of the system.
#[async_trait::async_trait(?Send)]
pub trait ChatBackend {
    /// Verifies a bearer access token; refusals must not echo the token.
    async fn verify(&self, token: &str) -> Result<Identity, Refusal>;
    /// Whether `user` may read `room` (members only).
    async fn may_read(&self, user: UserId, room: RoomId) -> Result<(), Refusal>;
    /// Posts a message and returns once it is durably appended.
    async fn post(
        &self,
        who: Identity,
        room: RoomId,
        body: String,
        client_message_id: Option<String>,
    ) -> Result<(), Refusal>;
    /// Moves `who`'s read marker in `room` to `up_to`; returns once durable.
    async fn mark_read(&self, who: Identity, room: RoomId, up_to: MessageId)
    -> Result<(), Refusal>;
    /// The room's messages after `since` (oldest first, at most `limit`), for a reconnecting
    /// subscriber; more than `limit` (or an unknown `since`) is a refusal telling the client
    /// to page the history over HTTP.
    async fn history_after(
        &self,
        room: RoomId,
        since: MessageId,
        limit: usize,
    ) -> Result<CatchUp, Refusal>;
    /// Resolves when the access token `who` connected with is revoked, so an open session
    /// ends with it; backends without revocation never resolve.
    fn revocation(&self, who: Identity) -> Revocation {
        let _ = who;
        Box::pin(std::future::pending())
    }
}

/// Routes deliveries to this connection: the broker in production, a recorder in tests. Called
/// while the session's requests are answered, so a catch-up reads history only after its
/// live feed is routed (no gap).
pub trait Router {
    /// Starts routing `topic` to this connection (once more, for one more subscription).
    fn join(&self, topic: Topic);
    /// Undoes one [`Router::join`].
    fn leave(&self, topic: Topic);
}

/// What the transport must do after the session's requests were answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Write a frame.
    Write(Frame),
    /// Write a heart-beat EOL.
    Heartbeat,
    /// Flush and close.
    Close(CloseReason),
}

/// A session plus the identity it authenticated as.
#[derive(Debug)]
pub struct Connection {
    /// The protocol state machine.
    pub session: Session,
    identity: Option<Identity>,
    /// Writes asked for while another was in flight, oldest first.
    waiting: std::collections::VecDeque<Write>,
}

impl Connection {
    /// Wraps a fresh session.
    pub fn new(session: Session) -> Self {
        Self {
            session,
            identity: None,
            waiting: std::collections::VecDeque::new(),
        }
    }

    /// Whom the session authenticated as, once connected.
    pub fn identity(&self) -> Option<Identity> {
        self.identity
    }

    /// Drains the session, answering its questions with `backend` in order and routing
    /// subscriptions with `router`, and returns what the transport must write now plus, at
    /// most, one write (a post or read marker) to run *beside* the connection: its RECEIPT is
    /// only made by [`Connection::finish`] once the append is durable, while deliveries keep
    /// flowing meanwhile. With a write already in flight (`busy`), later writes wait here in
    /// order and start, one at a time, from the settles after it finished.
    pub async fn settle<'b, B: ChatBackend + ?Sized, R: Router + ?Sized>(
        &mut self,
        backend: &'b B,
        router: &R,
        now: impl Fn() -> Instant,
        busy: bool,
    ) -> (Vec<Effect>, Option<InFlight<'b>>) {
        let mut effects = Vec::new();
        let mut started = None;
        if !busy && let Some(write) = self.next_write() {
            started = Some(self.start(backend, write));
        }
        while let Some(output) = self.session.poll_output() {
            match output {
                Output::Frame(frame) => effects.push(Effect::Write(frame)),
                Output::Heartbeat => effects.push(Effect::Heartbeat),
                Output::Subscribed { topic, .. } => router.join(topic),
                Output::Unsubscribed { topic, .. } => router.leave(topic),
                Output::Close(reason) => effects.push(Effect::Close(reason)),
                Output::Authenticate(token) => {
                    let result = backend.verify(&token.0).await;
                    self.identity = result.as_ref().ok().copied();
                    self.session
                        .authenticated(result.map(|who| who.user), now());
                }
                Output::Authorize {
                    subscription,
                    room,
                    user,
                } => {
                    let result = backend.may_read(user, room).await;
                    self.session.authorized(&subscription, result, now());
                }
                Output::CatchUp {
                    subscription,
                    room,
                    since,
                    limit,
                } => {
                    let span = tracing::debug_span!("stomp.catch_up", %room, limit);
                    let result = backend
                        .history_after(room, since, limit)
                        .instrument(span)
                        .await;
                    self.session.caught_up(&subscription, result, now());
                }
                Output::Post {
                    room,
                    body,
                    client_message_id,
                    receipt,
                    confirm,
                    ..
                } => self.waiting.push_back(Write {
                    kind: WriteKind::Post {
                        room,
                        body,
                        client_message_id,
                    },
                    receipt,
                    confirm,
                }),
                Output::MarkRead {
                    room,
                    up_to,
                    receipt,
                    confirm,
                    ..
                } => self.waiting.push_back(Write {
                    kind: WriteKind::MarkRead { room, up_to },
                    receipt,
                    confirm,
                }),
            }
            if !busy
                && started.is_none()
                && let Some(write) = self.next_write()
            {
                started = Some(self.start(backend, write));
            }
        }
        (effects, started)
    }

    /// The oldest waiting write, unless the session has closed meanwhile: then none of them
    /// is performed (the rest of a COMMIT after a refused SEND is dropped, as the session
    /// drops requests it had not handed out yet).
    fn next_write(&mut self) -> Option<Write> {
        if self.session.is_closed() {
            self.waiting.clear();
        }
        self.waiting.pop_front()
    }

    /// Hands a finished write's outcome to the session (a RECEIPT, or an ERROR that closes).
    pub fn finish(&mut self, write: InFlight<'_>, result: Result<(), Refusal>, now: Instant) {
        self.session
            .posted(write.receipt, write.confirm, result, now);
    }

    /// Starts one write; the future runs in the caller's loop.
    fn start<'b, B: ChatBackend + ?Sized>(&self, backend: &'b B, write: Write) -> InFlight<'b> {
        let identity = self.identity;
        let future: LocalBoxFuture<'b, Result<(), Refusal>> = match write.kind {
            WriteKind::Post {
                room,
                body,
                client_message_id,
            } => {
                // Each SEND starts its own trace (a connection lives for hours), linked to the
                // connection's span.
                let span = tracing::info_span!(parent: None, "stomp.send", %room);
                span.follows_from(tracing::Span::current());
                Box::pin(
                    async move {
                        let who = identity.ok_or_else(|| Refusal("not connected".into()))?;
                        backend.post(who, room, body, client_message_id).await
                    }
                    .instrument(span),
                )
            }
            WriteKind::MarkRead { room, up_to } => {
                let span = tracing::debug_span!("stomp.mark_read", %room);
                Box::pin(
                    async move {
                        let who = identity.ok_or_else(|| Refusal("not connected".into()))?;
                        backend.mark_read(who, room, up_to).await
                    }
                    .instrument(span),
                )
            }
        };
        InFlight {
            future,
            receipt: write.receipt,
            confirm: write.confirm,
        }
    }
}

/// A write the session asked for, waiting for the one before it to finish.
#[derive(Debug)]
struct Write {
    kind: WriteKind,
    receipt: Option<String>,
    confirm: bool,
}

#[derive(Debug)]
enum WriteKind {
    Post {
        room: RoomId,
        body: String,
        client_message_id: Option<String>,
    },
    MarkRead {
        room: RoomId,
        up_to: MessageId,
    },
}

/// A started write: the driver polls `future` beside deliveries and hands its result to
/// [`Connection::finish`].
pub struct InFlight<'b> {
    /// Resolves once the append is durable (or refused).
    pub future: LocalBoxFuture<'b, Result<(), Refusal>>,
    receipt: Option<String>,
    confirm: bool,
}

/// The production backend: JWTs from [`AuthService`], membership from the read model (or the
/// room actor when the read model does not know yet), posts through the room actor.
#[derive(Clone)]
pub struct AppBackend {
    /// Token verification.
    pub auth: actix_web::web::Data<AuthService>,
    /// Registries and read models.
    pub state: actix_web::web::Data<AppState>,
}

#[async_trait::async_trait(?Send)]
impl ChatBackend for AppBackend {
    async fn verify(&self, token: &str) -> Result<Identity, Refusal> {
        let refused = || Refusal("invalid or expired access token".into());
        let claims = self.auth.verify_access(token).await.map_err(|e| match e {
            crate::auth::AuthError::TokenRevoked => Refusal(e.to_string()),
            _ => refused(),
        })?;
        let role = claims
            .role
            .ok_or_else(|| Refusal("a service token cannot chat".into()))?;
        let user = claims.sub.parse::<UserId>().map_err(|_| refused())?;
        Ok(Identity {
            user,
            role,
            user_version: claims.user_version,
        })
    }

    fn revocation(&self, who: Identity) -> Revocation {
        self.auth.epochs().revocation(who.user, who.user_version)
    }

    async fn may_read(&self, user: UserId, room: RoomId) -> Result<(), Refusal> {
        // The read model answers most checks without touching an actor. It trails the log,
        // though (by seconds under load), so "not a member" there is not the last word: the
        // room's actor, the authority, decides read-your-writes for a room just opened.
        let member = crate::projections::queries::is_member(
            &self.state.read,
            &room.to_string(),
            &user.to_string(),
        )
        .await
        .unwrap_or(false);
        if member {
            return Ok(());
        }
        let state = self
            .state
            .rooms
            .state(room.as_uuid())
            .await
            .map_err(|_| Refusal("membership could not be checked; retry".into()))?;
        if state.is_member(user) {
            Ok(())
        } else {
            Err(Refusal("not a member of this room".into()))
        }
    }

    async fn post(
        &self,
        who: Identity,
        room: RoomId,
        body: String,
        client_message_id: Option<String>,
    ) -> Result<(), Refusal> {
        let command = RoomCommand::PostMessage {
            message_id: MessageId::from_uuid(uuid::Uuid::now_v7()),
            body,
            client_message_id,
        };
        self.execute(who, room, command).await
    }

    async fn mark_read(
        &self,
        who: Identity,
        room: RoomId,
        up_to: MessageId,
    ) -> Result<(), Refusal> {
        self.execute(who, room, RoomCommand::MarkRead { up_to })
            .await
    }

    async fn history_after(
        &self,
        room: RoomId,
        since: MessageId,
        limit: usize,
    ) -> Result<CatchUp, Refusal> {
        let stream = StreamName::new(StreamKind::Room, room.as_uuid());
        let too_many = || {
            Refusal(format!(
                "more than {limit} messages were missed; page the history over HTTP GET /rooms/{room}/messages"
            ))
        };
        // Newest first, page by page, until the `since` message; other room events (read
        // markers) count against a scan bound so a chatty stream cannot make this unbounded.
        let max_events = limit.saturating_mul(4).saturating_add(CATCH_UP_PAGE);
        let mut newer = Vec::new();
        let mut scanned = 0usize;
        let mut from = u64::MAX;
        loop {
            let page = self
                .state
                .store
                .read_stream(&stream, from, Direction::Backward, CATCH_UP_PAGE)
                .await
                .map_err(|_| Refusal("the history could not be read; retry".into()))?;
            let Some(last) = page.last() else {
                return Err(Refusal(
                    "since-message-id is not a message of this room".into(),
                ));
            };
            let next_from = last.version.checked_sub(1);
            for event in &page {
                scanned += 1;
                let Some(delivery) = super::broker::delivery_of(event) else {
                    continue;
                };
                if delivery.message_id == since.to_string() {
                    newer.reverse();
                    return Ok(CatchUp {
                        messages: newer,
                        floor: event.position,
                    });
                }
                if newer.len() >= limit {
                    return Err(too_many());
                }
                newer.push(delivery);
            }
            if scanned >= max_events {
                return Err(too_many());
            }
            match next_from {
                Some(v) => from = v,
                None => {
                    return Err(Refusal(
                        "since-message-id is not a message of this room".into(),
                    ));
                }
            }
        }
    }
}

/// Events read per page while looking for a catch-up's `since` message.
const CATCH_UP_PAGE: usize = 256;

impl AppBackend {
    /// Runs a room command as `who` and maps its failure to a refusal safe to show.
    async fn execute(
        &self,
        who: Identity,
        room: RoomId,
        command: RoomCommand,
    ) -> Result<(), Refusal> {
        let ctx = Context::new(Actor::user(who.user, who.role), chrono::Utc::now());
        let metadata = Metadata::acting(who.user.as_uuid());
        match self
            .state
            .rooms
            .execute(room.as_uuid(), command, ctx, metadata)
            .await
        {
            Ok(_) => Ok(()),
            Err(ActorError::Domain(DomainError::NotFound(_))) => {
                Err(Refusal("no such room".into()))
            }
            Err(ActorError::Domain(e)) => Err(Refusal(e.to_string())),
            Err(ActorError::Busy | ActorError::Conflict(_)) => {
                Err(Refusal("the room is busy; retry".into()))
            }
            Err(_) => Err(Refusal("the message could not be stored; retry".into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::edge::stomp::frame::Command;
    use crate::edge::stomp::session::{Delivery, Destination, SessionConfig};
    use std::cell::RefCell;
    use uuid::Uuid;

    const ROOM: RoomId = RoomId::from_uuid(Uuid::from_u128(1));
    const ALICE: UserId = UserId::from_uuid(Uuid::from_u128(2));

    /// A backend that knows one token, one member and records posts.
    #[derive(Default)]
    struct Fake {
        posts: RefCell<Vec<(UserId, RoomId, String)>>,
        routes: RefCell<Vec<Route>>,
    }

    #[async_trait::async_trait(?Send)]
    impl ChatBackend for Fake {
        async fn verify(&self, token: &str) -> Result<Identity, Refusal> {
            (token == "alice")
                .then_some(Identity {
                    user: ALICE,
                    role: Role::Client,
                    user_version: Some(1),
                })
                .ok_or(Refusal("invalid".into()))
        }
        async fn may_read(&self, user: UserId, room: RoomId) -> Result<(), Refusal> {
            (user == ALICE && room == ROOM)
                .then_some(())
                .ok_or(Refusal("not a member of this room".into()))
        }
        async fn post(
            &self,
            who: Identity,
            room: RoomId,
            body: String,
            _: Option<String>,
        ) -> Result<(), Refusal> {
            if body == "refused" {
                return Err(Refusal("refused".into()));
            }
            self.posts.borrow_mut().push((who.user, room, body));
            Ok(())
        }
        async fn mark_read(&self, _: Identity, _: RoomId, _: MessageId) -> Result<(), Refusal> {
            Ok(())
        }
        async fn history_after(
            &self,
            room: RoomId,
            _: MessageId,
            _: usize,
        ) -> Result<CatchUp, Refusal> {
            // The history is read after the live route is in place.
            assert_eq!(*self.routes.borrow(), [Route::Join(Topic::Room(room))]);
            Ok(CatchUp {
                messages: vec![Delivery {
                    topic: Topic::Room(room),
                    message_id: "missed".into(),
                    position: 3,
                    body: Vec::new(),
                    content_type: "application/json",
                    traceparent: None,
                }],
                floor: 2,
            })
        }
    }

    #[derive(Debug, PartialEq)]
    enum Route {
        Join(Topic),
        Leave(Topic),
    }

    impl Router for Fake {
        fn join(&self, topic: Topic) {
            self.routes.borrow_mut().push(Route::Join(topic));
        }
        fn leave(&self, topic: Topic) {
            self.routes.borrow_mut().push(Route::Leave(topic));
        }
    }

    /// Handles `frame` and settles until no write is left, each write awaited as it starts.
    fn run(conn: &mut Connection, backend: &Fake, frame: Frame) -> Vec<Effect> {
        conn.session.handle_frame(frame, Instant::now());
        futures::executor::block_on(async {
            let mut all = Vec::new();
            loop {
                let (effects, write) = conn.settle(backend, backend, Instant::now, false).await;
                all.extend(effects);
                let Some(mut write) = write else {
                    return all;
                };
                let result = write.future.as_mut().await;
                conn.finish(write, result, Instant::now());
            }
        })
    }

    fn commands(effects: &[Effect]) -> Vec<Command> {
        effects
            .iter()
            .filter_map(|e| match e {
                Effect::Write(f) => Some(f.command),
                _ => None,
            })
            .collect()
    }

    fn connect(token: &str) -> Frame {
        Frame::new(Command::Connect)
            .header("accept-version", "1.2")
            .header("Authorization", format!("Bearer {token}"))
    }

    #[test]
    fn a_member_connects_subscribes_and_posts() {
        let backend = Fake::default();
        let mut conn = Connection::new(Session::new(SessionConfig::default(), Instant::now()));
        assert_eq!(
            commands(&run(&mut conn, &backend, connect("alice"))),
            [Command::Connected]
        );
        let effects = run(
            &mut conn,
            &backend,
            Frame::new(Command::Subscribe)
                .header("id", "0")
                .header("destination", Destination::RoomTopic(ROOM).to_wire()),
        );
        assert!(effects.is_empty(), "{effects:?}");
        assert_eq!(*backend.routes.borrow(), [Route::Join(Topic::Room(ROOM))]);
        let effects = run(
            &mut conn,
            &backend,
            Frame::new(Command::Send)
                .header("destination", Destination::RoomSend(ROOM).to_wire())
                .header("receipt", "r")
                .body("hi"),
        );
        assert_eq!(commands(&effects), [Command::Receipt]);
        assert_eq!(*backend.posts.borrow(), [(ALICE, ROOM, "hi".to_owned())]);
    }

    #[test]
    fn a_bad_token_and_an_outsider_are_refused() {
        let backend = Fake::default();
        let mut conn = Connection::new(Session::new(SessionConfig::default(), Instant::now()));
        let effects = run(&mut conn, &backend, connect("mallory"));
        assert_eq!(commands(&effects), [Command::Error]);
        assert!(matches!(effects.last(), Some(Effect::Close(_))));

        let mut conn = Connection::new(Session::new(SessionConfig::default(), Instant::now()));
        run(&mut conn, &backend, connect("alice"));
        let other = RoomId::from_uuid(Uuid::from_u128(99));
        let effects = run(
            &mut conn,
            &backend,
            Frame::new(Command::Subscribe)
                .header("id", "0")
                .header("destination", Destination::RoomTopic(other).to_wire()),
        );
        assert_eq!(commands(&effects), [Command::Error]);
    }

    #[test]
    fn a_catch_up_reads_history_after_routing_then_unsubscribe_leaves() {
        let backend = Fake::default();
        let mut conn = Connection::new(Session::new(SessionConfig::default(), Instant::now()));
        run(&mut conn, &backend, connect("alice"));
        let effects = run(
            &mut conn,
            &backend,
            Frame::new(Command::Subscribe)
                .header("id", "0")
                .header("destination", Destination::RoomTopic(ROOM).to_wire())
                .header("since-message-id", Uuid::from_u128(5).to_string())
                .header("receipt", "r"),
        );
        assert_eq!(commands(&effects), [Command::Message, Command::Receipt]);
        run(
            &mut conn,
            &backend,
            Frame::new(Command::Unsubscribe).header("id", "0"),
        );
        assert_eq!(
            *backend.routes.borrow(),
            [
                Route::Join(Topic::Room(ROOM)),
                Route::Leave(Topic::Room(ROOM))
            ]
        );
    }

    #[test]
    fn a_refused_send_drops_the_rest_of_its_commit() {
        let backend = Fake::default();
        let mut conn = Connection::new(Session::new(SessionConfig::default(), Instant::now()));
        run(&mut conn, &backend, connect("alice"));
        run(
            &mut conn,
            &backend,
            Frame::new(Command::Begin).header("transaction", "t"),
        );
        for body in ["first", "refused", "third"] {
            run(
                &mut conn,
                &backend,
                Frame::new(Command::Send)
                    .header("destination", Destination::RoomSend(ROOM).to_wire())
                    .header("transaction", "t")
                    .body(body),
            );
        }
        assert!(backend.posts.borrow().is_empty(), "nothing before COMMIT");
        let effects = run(
            &mut conn,
            &backend,
            Frame::new(Command::Commit)
                .header("transaction", "t")
                .header("receipt", "c"),
        );
        assert_eq!(commands(&effects), [Command::Error]);
        assert!(matches!(effects.last(), Some(Effect::Close(_))));
        assert_eq!(
            *backend.posts.borrow(),
            [(ALICE, ROOM, "first".to_owned())],
            "earlier posts stay, later ones are dropped"
        );
    }
}
