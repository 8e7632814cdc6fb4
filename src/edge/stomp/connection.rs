//! Answers a [`Session`]'s questions with a [`ChatBackend`]: token verification, room
//! membership and posting. The backend is a trait so the whole request/answer loop is tested
//! with a fake; [`AppBackend`] is the real one over [`AuthService`] and [`AppState`].

use super::frame::Frame;
use super::session::{CloseReason, Output, Refusal, Session};
use crate::actors::ActorError;
use crate::auth::AuthService;
use crate::startup::AppState;
use crate::store::Metadata;
use neulbi_domain::chat_room::RoomCommand;
use neulbi_domain::{Actor, Context, DomainError, MessageId, Role, RoomId, UserId};
use std::time::Instant;

/// Who a verified token speaks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    /// The user.
    pub user: UserId,
    /// The role the token was issued with (the room actor checks it).
    pub role: Role,
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
}

/// What the transport must do after the session's requests were answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Write a frame.
    Write(Frame),
    /// Write a heart-beat EOL.
    Heartbeat,
    /// Start routing `room`'s deliveries to this connection.
    Subscribed(RoomId),
    /// Stop routing `room`'s deliveries for one subscription.
    Unsubscribed(RoomId),
    /// Flush and close.
    Close(CloseReason),
}

/// A session plus the identity it authenticated as.
#[derive(Debug)]
pub struct Connection {
    /// The protocol state machine.
    pub session: Session,
    identity: Option<Identity>,
}

impl Connection {
    /// Wraps a fresh session.
    pub fn new(session: Session) -> Self {
        Self {
            session,
            identity: None,
        }
    }

    /// Drains the session, answering each request with `backend` in order (so a RECEIPT is
    /// never written before the append it confirms), and returns what the transport must do.
    pub async fn settle<B: ChatBackend + ?Sized>(
        &mut self,
        backend: &B,
        now: impl Fn() -> Instant,
    ) -> Vec<Effect> {
        let mut effects = Vec::new();
        while let Some(output) = self.session.poll_output() {
            match output {
                Output::Frame(frame) => effects.push(Effect::Write(frame)),
                Output::Heartbeat => effects.push(Effect::Heartbeat),
                Output::Subscribed { room, .. } => effects.push(Effect::Subscribed(room)),
                Output::Unsubscribed { room, .. } => effects.push(Effect::Unsubscribed(room)),
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
                Output::Post {
                    room,
                    body,
                    client_message_id,
                    receipt,
                    ..
                } => {
                    let result = match self.identity {
                        Some(who) => backend.post(who, room, body, client_message_id).await,
                        None => Err(Refusal("not connected".into())),
                    };
                    self.session.posted(receipt, result, now());
                }
            }
        }
        effects
    }
}

/// How often membership is checked before a SUBSCRIBE is refused, and the pause between.
const MEMBERSHIP_CHECKS: u32 = 5;
const MEMBERSHIP_RECHECK: std::time::Duration = std::time::Duration::from_millis(100);

/// The production backend: JWTs from [`AuthService`], membership from the read model, posts
/// through the room actor.
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
        let claims = self
            .auth
            .verify_access(token)
            .await
            .map_err(|_| refused())?;
        let role = claims
            .role
            .ok_or_else(|| Refusal("a service token cannot chat".into()))?;
        let user = claims.sub.parse::<UserId>().map_err(|_| refused())?;
        Ok(Identity { user, role })
    }

    async fn may_read(&self, user: UserId, room: RoomId) -> Result<(), Refusal> {
        // The read model follows the log a few milliseconds behind, so a room opened just now
        // may not list its members yet: ask again briefly before refusing.
        for attempt in 0..MEMBERSHIP_CHECKS {
            let member = crate::projections::queries::is_member(
                &self.state.read,
                &room.to_string(),
                &user.to_string(),
            )
            .await
            .map_err(|_| Refusal("membership could not be checked; retry".into()))?;
            if member {
                return Ok(());
            }
            if attempt + 1 < MEMBERSHIP_CHECKS {
                tokio::time::sleep(MEMBERSHIP_RECHECK).await;
            }
        }
        Err(Refusal("not a member of this room".into()))
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
        let ctx = Context::new(Actor::user(who.user, who.role), chrono::Utc::now());
        let metadata = Metadata {
            correlation_id: Some(uuid::Uuid::now_v7()),
            user_id: Some(who.user.as_uuid()),
            ..Metadata::default()
        };
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
    use crate::edge::stomp::session::{Destination, SessionConfig};
    use std::cell::RefCell;
    use uuid::Uuid;

    const ROOM: RoomId = RoomId::from_uuid(Uuid::from_u128(1));
    const ALICE: UserId = UserId::from_uuid(Uuid::from_u128(2));

    /// A backend that knows one token, one member and records posts.
    #[derive(Default)]
    struct Fake {
        posts: RefCell<Vec<(UserId, RoomId, String)>>,
    }

    #[async_trait::async_trait(?Send)]
    impl ChatBackend for Fake {
        async fn verify(&self, token: &str) -> Result<Identity, Refusal> {
            (token == "alice")
                .then_some(Identity {
                    user: ALICE,
                    role: Role::Client,
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
            self.posts.borrow_mut().push((who.user, room, body));
            Ok(())
        }
    }

    fn run(conn: &mut Connection, backend: &Fake, frame: Frame) -> Vec<Effect> {
        conn.session.handle_frame(frame, Instant::now());
        futures::executor::block_on(conn.settle(backend, Instant::now))
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
        assert_eq!(effects, [Effect::Subscribed(ROOM)]);
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
}
