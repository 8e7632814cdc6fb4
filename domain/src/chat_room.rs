//! The ChatRoom aggregate (`room-{uuid}`): a conversation between one client and one counselor.
//!
//! A message body is [`Personal`] data of its author, so erasing the author makes their bodies
//! unreadable while the room still replays: members, counts, read positions and resend
//! detection never depend on a body.

use crate::{
    Context, Decider, DomainError, DomainEvent, MessageId, Personal, RoomId, StreamKind, UserId,
};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};

/// Longest message body, in characters after trimming.
pub const BODY_MAX_CHARS: usize = 4000;
/// Longest client-chosen message id used for deduplicating resends.
pub const CLIENT_MESSAGE_ID_MAX_CHARS: usize = 64;

/// Decides the ChatRoom aggregate's commands; see [`RoomCommand`] for the rules.
pub struct ChatRoomDecider;

/// What can be asked of a chat room. The acting user comes from the [`Context`].
#[derive(Debug, Clone)]
pub enum RoomCommand {
    /// Creates the room. The actor must be the client, the counselor, or privileged.
    Open {
        /// The room's id (also the stream id).
        room_id: RoomId,
        /// The client seeking counseling.
        client: UserId,
        /// The counselor; must differ from the client.
        counselor: UserId,
    },
    /// Posts a message as the acting member.
    PostMessage {
        /// The server-assigned id of the new message.
        message_id: MessageId,
        /// The text, 1..=4000 characters after trimming.
        body: String,
        /// A client-chosen id (at most 64 characters) so a resend after a lost reply is
        /// recognized and not posted twice.
        client_message_id: Option<String>,
    },
    /// Marks every message up to and including `up_to` as read by the acting member.
    MarkRead {
        /// The newest message the member has seen.
        up_to: MessageId,
    },
    /// The acting member leaves the room for good.
    Leave,
    /// Closes the room; no more messages may be posted. Members or privileged actors only.
    Close,
}

/// The facts recorded in a `room-{uuid}` stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum RoomEvent {
    /// The room was created for a client and a counselor.
    Opened {
        /// The room's id.
        room_id: RoomId,
        /// The client member.
        client: UserId,
        /// The counselor member.
        counselor: UserId,
        /// When the room was opened.
        at: DateTime<Utc>,
    },
    /// A member posted a message.
    MessagePosted {
        /// The message's id.
        message_id: MessageId,
        /// The member who wrote it.
        author: UserId,
        /// The text (trimmed), personal data of the author.
        body: Personal<String>,
        /// The client-chosen deduplication id, if one was sent. Not personal: a random token
        /// the client made up, kept readable so resends are still recognised after an erasure.
        client_message_id: Option<String>,
        /// When it was posted.
        at: DateTime<Utc>,
    },
    /// A member read the messages up to and including `up_to`.
    MessageRead {
        /// The member who read.
        reader: UserId,
        /// The newest message read.
        up_to: MessageId,
        /// When it was read.
        at: DateTime<Utc>,
    },
    /// A member left the room.
    MemberLeft {
        /// The member who left.
        user_id: UserId,
        /// When they left.
        at: DateTime<Utc>,
    },
    /// The room was closed.
    Closed {
        /// The user who closed it, or `None` when the system did.
        by: Option<UserId>,
        /// When it was closed.
        at: DateTime<Utc>,
    },
}

impl DomainEvent for RoomEvent {
    fn event_type(&self) -> &'static str {
        match self {
            Self::Opened { .. } => "Opened",
            Self::MessagePosted { .. } => "MessagePosted",
            Self::MessageRead { .. } => "MessageRead",
            Self::MemberLeft { .. } => "MemberLeft",
            Self::Closed { .. } => "Closed",
        }
    }

    /// `MessagePosted` is at version 2: version 1 stored the body as a plain string, before
    /// bodies became personal data sealed with the author's key. The store upcasts v1.
    fn schema_version(&self) -> u32 {
        match self {
            Self::MessagePosted { .. } => 2,
            _ => 1,
        }
    }
}

/// Who the room is for, fixed when it opens.
#[derive(Debug, Clone, Copy)]
struct Opening {
    room_id: RoomId,
    client: UserId,
    counselor: UserId,
    at: DateTime<Utc>,
}

/// One posted message as the rules need it: the body lives in projections, not here.
#[derive(Debug, Clone, Copy)]
struct Posted {
    id: MessageId,
    author: UserId,
}

/// The room as far as the rules need it; `Default` is "not opened".
///
/// Messages are numbered by sequence (1 for the first), so read positions are plain numbers
/// and "unread" is a subtraction away.
#[derive(Debug, Clone, Default)]
pub struct RoomState {
    opening: Option<Opening>,
    left: HashSet<UserId>,
    closed: Option<(Option<UserId>, DateTime<Utc>)>,
    /// Messages in posting order; the message at index `i` has sequence `i + 1`.
    messages: Vec<Posted>,
    seq_by_id: HashMap<MessageId, u64>,
    /// Per member, the sequence of the newest message read (0: none).
    read_seq: HashMap<UserId, u64>,
    /// Per author, the client message ids already posted, to absorb resends.
    client_ids: HashMap<UserId, HashSet<String>>,
}

impl RoomState {
    /// True once `Opened` has happened.
    pub fn is_opened(&self) -> bool {
        self.opening.is_some()
    }

    /// The room's id, once opened.
    pub fn room_id(&self) -> Option<RoomId> {
        self.opening.map(|o| o.room_id)
    }

    /// The client member, once opened.
    pub fn client(&self) -> Option<UserId> {
        self.opening.map(|o| o.client)
    }

    /// The counselor member, once opened.
    pub fn counselor(&self) -> Option<UserId> {
        self.opening.map(|o| o.counselor)
    }

    /// When the room was opened.
    pub fn opened_at(&self) -> Option<DateTime<Utc>> {
        self.opening.map(|o| o.at)
    }

    /// True if `user` is the room's client or counselor, whether or not they have left.
    pub fn was_member(&self, user: UserId) -> bool {
        self.opening
            .is_some_and(|o| o.client == user || o.counselor == user)
    }

    /// True if `user` is the client or counselor and has not left.
    pub fn is_member(&self, user: UserId) -> bool {
        self.was_member(user) && !self.left.contains(&user)
    }

    /// True if `user` was a member and has left.
    pub fn has_left(&self, user: UserId) -> bool {
        self.left.contains(&user)
    }

    /// The members who have not left, client first.
    pub fn members(&self) -> Vec<UserId> {
        self.opening
            .map(|o| vec![o.client, o.counselor])
            .unwrap_or_default()
            .into_iter()
            .filter(|u| !self.left.contains(u))
            .collect()
    }

    /// True once the room has been closed.
    pub fn is_closed(&self) -> bool {
        self.closed.is_some()
    }

    /// When the room was closed.
    pub fn closed_at(&self) -> Option<DateTime<Utc>> {
        self.closed.map(|(_, at)| at)
    }

    /// Who closed the room (`None` if it is open or the system closed it).
    pub fn closed_by(&self) -> Option<UserId> {
        self.closed.and_then(|(by, _)| by)
    }

    /// How many messages have been posted.
    pub fn message_count(&self) -> u64 {
        self.messages.len() as u64
    }

    /// True if a message with this id has been posted here.
    pub fn contains_message(&self, id: MessageId) -> bool {
        self.seq_by_id.contains_key(&id)
    }

    /// The sequence number of a message (1 for the first), if it exists.
    pub fn message_seq(&self, id: MessageId) -> Option<u64> {
        self.seq_by_id.get(&id).copied()
    }

    /// The author of a message, if it exists.
    pub fn message_author(&self, id: MessageId) -> Option<UserId> {
        let seq = self.message_seq(id)?;
        self.message_at(seq).map(|m| m.author)
    }

    /// The newest message's id.
    pub fn last_message_id(&self) -> Option<MessageId> {
        self.messages.last().map(|m| m.id)
    }

    /// The sequence of the newest message `user` has read (0 if none).
    pub fn read_seq(&self, user: UserId) -> u64 {
        self.read_seq.get(&user).copied().unwrap_or(0)
    }

    /// The newest message `user` has read.
    pub fn last_read(&self, user: UserId) -> Option<MessageId> {
        self.message_at(self.read_seq(user)).map(|m| m.id)
    }

    /// How many messages by others `user` has not read yet (0 for non-members). A member's
    /// own messages never count as unread.
    pub fn unread_for(&self, user: UserId) -> u64 {
        if !self.was_member(user) {
            return 0;
        }
        let read = usize::try_from(self.read_seq(user)).unwrap_or(usize::MAX);
        self.messages
            .iter()
            .skip(read)
            .filter(|m| m.author != user)
            .count() as u64
    }

    /// True if `author` already posted a message with this client message id.
    pub fn has_client_message_id(&self, author: UserId, client_message_id: &str) -> bool {
        self.client_ids
            .get(&author)
            .is_some_and(|ids| ids.contains(client_message_id))
    }

    /// The message with sequence `seq` (1-based).
    fn message_at(&self, seq: u64) -> Option<&Posted> {
        let index = usize::try_from(seq.checked_sub(1)?).ok()?;
        self.messages.get(index)
    }
}

impl Decider for ChatRoomDecider {
    type State = RoomState;
    type Command = RoomCommand;
    type Event = RoomEvent;

    const KIND: StreamKind = StreamKind::Room;

    fn decide(
        state: &RoomState,
        command: RoomCommand,
        ctx: &Context,
    ) -> Result<Vec<RoomEvent>, DomainError> {
        let actor = ctx.actor;
        let now = ctx.now;

        match command {
            RoomCommand::Open {
                room_id,
                client,
                counselor,
            } => {
                if !(actor.is(client) || actor.is(counselor) || actor.is_privileged()) {
                    return Err(DomainError::Forbidden(
                        "only the client or the counselor may open a room",
                    ));
                }
                if state.is_opened() {
                    return Err(DomainError::AlreadyExists("room"));
                }
                if client == counselor {
                    return Err(DomainError::invalid(
                        "counselor",
                        "must be someone other than the client",
                    ));
                }
                Ok(vec![RoomEvent::Opened {
                    room_id,
                    client,
                    counselor,
                    at: now,
                }])
            }
            _ if !state.is_opened() => Err(DomainError::NotFound("room")),
            RoomCommand::PostMessage {
                message_id,
                body,
                client_message_id,
            } => {
                let author = actor
                    .user_id
                    .filter(|&u| state.was_member(u))
                    .ok_or(DomainError::Forbidden("only members may post"))?;
                if let Some(id) = &client_message_id {
                    validate_client_message_id(id)?;
                    // A resend of a message that was already accepted answers like the original,
                    // even if the room changed since: the client just lost the reply.
                    if state.has_client_message_id(author, id) {
                        return Ok(vec![]);
                    }
                }
                if state.is_closed() {
                    return Err(DomainError::Conflict("room is closed"));
                }
                if state.has_left(author) {
                    return Err(DomainError::Forbidden("members who left may not post"));
                }
                let body = validate_body(&body)?;
                if state.contains_message(message_id) {
                    return Err(DomainError::Conflict("message id already used"));
                }
                Ok(vec![RoomEvent::MessagePosted {
                    message_id,
                    author,
                    body: Personal::new(author, body),
                    client_message_id,
                    at: now,
                }])
            }
            RoomCommand::MarkRead { up_to } => {
                let reader =
                    actor
                        .user_id
                        .filter(|&u| state.is_member(u))
                        .ok_or(DomainError::Forbidden(
                            "only members may mark messages read",
                        ))?;
                let Some(seq) = state.message_seq(up_to) else {
                    return Err(DomainError::invalid(
                        "up_to",
                        "no such message in this room",
                    ));
                };
                if seq <= state.read_seq(reader) {
                    return Ok(vec![]);
                }
                Ok(vec![RoomEvent::MessageRead {
                    reader,
                    up_to,
                    at: now,
                }])
            }
            RoomCommand::Leave => {
                let user = actor
                    .user_id
                    .filter(|&u| state.was_member(u))
                    .ok_or(DomainError::Forbidden("only members may leave"))?;
                if state.has_left(user) {
                    return Ok(vec![]);
                }
                Ok(vec![RoomEvent::MemberLeft {
                    user_id: user,
                    at: now,
                }])
            }
            RoomCommand::Close => {
                let is_member = actor.user_id.is_some_and(|u| state.is_member(u));
                if !(is_member || actor.is_privileged()) {
                    return Err(DomainError::Forbidden("only members may close the room"));
                }
                if state.is_closed() {
                    return Ok(vec![]);
                }
                Ok(vec![RoomEvent::Closed {
                    by: actor.user_id,
                    at: now,
                }])
            }
        }
    }

    fn evolve(mut state: RoomState, event: &RoomEvent) -> RoomState {
        match event {
            RoomEvent::Opened {
                room_id,
                client,
                counselor,
                at,
            } => {
                state.opening = Some(Opening {
                    room_id: *room_id,
                    client: *client,
                    counselor: *counselor,
                    at: *at,
                });
            }
            RoomEvent::MessagePosted {
                message_id,
                author,
                client_message_id,
                ..
            } => {
                state.messages.push(Posted {
                    id: *message_id,
                    author: *author,
                });
                state
                    .seq_by_id
                    .insert(*message_id, state.messages.len() as u64);
                if let Some(id) = client_message_id {
                    state
                        .client_ids
                        .entry(*author)
                        .or_default()
                        .insert(id.clone());
                }
            }
            RoomEvent::MessageRead { reader, up_to, .. } => {
                // Read positions only move forward, whatever order reads were recorded in.
                if let Some(seq) = state.message_seq(*up_to) {
                    let current = state.read_seq.entry(*reader).or_insert(0);
                    *current = (*current).max(seq);
                }
            }
            RoomEvent::MemberLeft { user_id, .. } => {
                state.left.insert(*user_id);
            }
            RoomEvent::Closed { by, at } => {
                state.closed = Some((*by, *at));
            }
        }
        state
    }
}

/// A message body: 1..=4000 characters after trimming; returns the trimmed text.
fn validate_body(body: &str) -> Result<String, DomainError> {
    let trimmed = body.trim();
    if trimmed.is_empty() {
        return Err(DomainError::invalid("body", "must not be blank"));
    }
    if trimmed.chars().count() > BODY_MAX_CHARS {
        return Err(DomainError::invalid(
            "body",
            format!("must be at most {BODY_MAX_CHARS} characters"),
        ));
    }
    Ok(trimmed.to_owned())
}

/// A client message id: 1..=64 characters, compared exactly (no trimming), since clients
/// resend it byte for byte.
fn validate_client_message_id(id: &str) -> Result<(), DomainError> {
    if id.is_empty() {
        return Err(DomainError::invalid(
            "client_message_id",
            "must not be empty",
        ));
    }
    if id.chars().count() > CLIENT_MESSAGE_ID_MAX_CHARS {
        return Err(DomainError::invalid(
            "client_message_id",
            format!("must be at most {CLIENT_MESSAGE_ID_MAX_CHARS} characters"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{Spec, at, erase_personal_data, system_ctx, user_ctx, user_id};
    use crate::{Actor, Role};
    use uuid::Uuid;

    const ROOM: RoomId = RoomId::from_uuid(Uuid::from_u128(0x100));
    const CLIENT: UserId = user_id(1);
    const COUNSELOR: UserId = user_id(2);
    const STRANGER: UserId = user_id(3);

    const fn msg(n: u128) -> MessageId {
        MessageId::from_uuid(Uuid::from_u128(0x1000 + n))
    }

    fn client(secs: i64) -> Context {
        user_ctx(CLIENT, Role::Client, at(secs))
    }

    fn counselor(secs: i64) -> Context {
        user_ctx(COUNSELOR, Role::Counselor, at(secs))
    }

    fn stranger(secs: i64) -> Context {
        user_ctx(STRANGER, Role::Client, at(secs))
    }

    fn operator(secs: i64) -> Context {
        user_ctx(user_id(99), Role::Operator, at(secs))
    }

    fn opened() -> RoomEvent {
        RoomEvent::Opened {
            room_id: ROOM,
            client: CLIENT,
            counselor: COUNSELOR,
            at: at(0),
        }
    }

    fn posted(n: u128, author: UserId, client_id: Option<&str>) -> RoomEvent {
        RoomEvent::MessagePosted {
            message_id: msg(n),
            author,
            body: Personal::new(author, format!("message {n}")),
            client_message_id: client_id.map(str::to_owned),
            at: at(n as i64),
        }
    }

    fn post(n: u128, body: &str, client_id: Option<&str>) -> RoomCommand {
        RoomCommand::PostMessage {
            message_id: msg(n),
            body: body.into(),
            client_message_id: client_id.map(str::to_owned),
        }
    }

    fn open_cmd(client: UserId, counselor: UserId) -> RoomCommand {
        RoomCommand::Open {
            room_id: ROOM,
            client,
            counselor,
        }
    }

    // --- Open ---------------------------------------------------------------------------------

    #[test]
    fn client_opens_a_room() {
        let state = Spec::<ChatRoomDecider>::given_nothing()
            .when(open_cmd(CLIENT, COUNSELOR), &client(0))
            .then(vec![opened()]);
        assert!(state.is_opened());
        assert_eq!(state.room_id(), Some(ROOM));
        assert!(state.is_member(CLIENT));
        assert!(state.is_member(COUNSELOR));
        assert!(!state.is_member(STRANGER));
        assert_eq!(state.members(), vec![CLIENT, COUNSELOR]);
    }

    #[test]
    fn counselor_or_privileged_may_open_too() {
        for ctx in [counselor(0), operator(0), system_ctx(at(0))] {
            Spec::<ChatRoomDecider>::given_nothing()
                .when(open_cmd(CLIENT, COUNSELOR), &ctx)
                .then(vec![opened()]);
        }
    }

    #[test]
    fn outsiders_cannot_open_a_room_for_others() {
        Spec::<ChatRoomDecider>::given_nothing()
            .when(open_cmd(CLIENT, COUNSELOR), &stranger(0))
            .then_error(DomainError::Forbidden(
                "only the client or the counselor may open a room",
            ));
    }

    #[test]
    fn client_and_counselor_must_differ() {
        Spec::<ChatRoomDecider>::given_nothing()
            .when(open_cmd(CLIENT, CLIENT), &client(0))
            .then_error(DomainError::invalid(
                "counselor",
                "must be someone other than the client",
            ));
    }

    #[test]
    fn opening_twice_is_rejected() {
        Spec::<ChatRoomDecider>::given(vec![opened()])
            .when(open_cmd(CLIENT, COUNSELOR), &client(1))
            .then_error(DomainError::AlreadyExists("room"));
    }

    #[test]
    fn commands_on_an_unopened_room_are_not_found() {
        let commands = [
            post(1, "hi", None),
            RoomCommand::MarkRead { up_to: msg(1) },
            RoomCommand::Leave,
            RoomCommand::Close,
        ];
        for command in commands {
            Spec::<ChatRoomDecider>::given_nothing()
                .when(command, &client(1))
                .then_error(DomainError::NotFound("room"));
        }
    }

    // --- PostMessage --------------------------------------------------------------------------

    #[test]
    fn member_posts_a_trimmed_message() {
        let state = Spec::<ChatRoomDecider>::given(vec![opened()])
            .when(post(1, "  message 1\n", Some("c-1")), &client(1))
            .then(vec![posted(1, CLIENT, Some("c-1"))]);
        assert_eq!(state.message_count(), 1);
        assert_eq!(state.message_seq(msg(1)), Some(1));
        assert_eq!(state.message_author(msg(1)), Some(CLIENT));
        assert_eq!(state.last_message_id(), Some(msg(1)));
        assert!(state.has_client_message_id(CLIENT, "c-1"));
        assert!(!state.has_client_message_id(COUNSELOR, "c-1"));
    }

    #[test]
    fn non_members_cannot_post() {
        Spec::<ChatRoomDecider>::given(vec![opened()])
            .when(post(1, "hi", None), &stranger(1))
            .then_error(DomainError::Forbidden("only members may post"));
        // Privilege does not make an operator a member, and the system has no user to post as.
        for ctx in [operator(1), system_ctx(at(1))] {
            Spec::<ChatRoomDecider>::given(vec![opened()])
                .when(post(1, "hi", None), &ctx)
                .then_error(DomainError::Forbidden("only members may post"));
        }
    }

    #[test]
    fn posting_to_a_closed_room_conflicts() {
        Spec::<ChatRoomDecider>::given(vec![
            opened(),
            RoomEvent::Closed {
                by: Some(COUNSELOR),
                at: at(5),
            },
        ])
        .when(post(1, "hi", None), &client(6))
        .then_error(DomainError::Conflict("room is closed"));
    }

    #[test]
    fn members_who_left_cannot_post() {
        Spec::<ChatRoomDecider>::given(vec![
            opened(),
            RoomEvent::MemberLeft {
                user_id: CLIENT,
                at: at(5),
            },
        ])
        .when(post(1, "hi", None), &client(6))
        .then_error(DomainError::Forbidden("members who left may not post"));
    }

    #[test]
    fn body_must_be_non_blank_and_bounded() {
        Spec::<ChatRoomDecider>::given(vec![opened()])
            .when(post(1, " \n\t ", None), &client(1))
            .then_error(DomainError::invalid("body", "must not be blank"));
        Spec::<ChatRoomDecider>::given(vec![opened()])
            .when(post(1, &"말".repeat(4001), None), &client(1))
            .then_error(DomainError::invalid(
                "body",
                "must be at most 4000 characters",
            ));
        Spec::<ChatRoomDecider>::given(vec![opened()])
            .when(
                post(1, &format!(" {} ", "말".repeat(4000)), None),
                &client(1),
            )
            .then(vec![RoomEvent::MessagePosted {
                message_id: msg(1),
                author: CLIENT,
                body: Personal::new(CLIENT, "말".repeat(4000)),
                client_message_id: None,
                at: at(1),
            }]);
    }

    #[test]
    fn client_message_id_is_bounded() {
        Spec::<ChatRoomDecider>::given(vec![opened()])
            .when(post(1, "hi", Some(&"c".repeat(65))), &client(1))
            .then_error(DomainError::invalid(
                "client_message_id",
                "must be at most 64 characters",
            ));
        Spec::<ChatRoomDecider>::given(vec![opened()])
            .when(post(1, "hi", Some("")), &client(1))
            .then_error(DomainError::invalid(
                "client_message_id",
                "must not be empty",
            ));
    }

    #[test]
    fn resending_a_client_message_id_changes_nothing() {
        Spec::<ChatRoomDecider>::given(vec![opened(), posted(1, CLIENT, Some("c-1"))])
            .when(post(2, "message 1", Some("c-1")), &client(2))
            .then_nothing();
    }

    #[test]
    fn resend_is_idempotent_even_after_the_room_closed() {
        Spec::<ChatRoomDecider>::given(vec![
            opened(),
            posted(1, CLIENT, Some("c-1")),
            RoomEvent::Closed {
                by: Some(COUNSELOR),
                at: at(2),
            },
        ])
        .when(post(2, "message 1", Some("c-1")), &client(3))
        .then_nothing();
    }

    #[test]
    fn client_message_ids_are_scoped_per_author() {
        Spec::<ChatRoomDecider>::given(vec![opened(), posted(1, CLIENT, Some("c-1"))])
            .when(post(2, "message 2", Some("c-1")), &counselor(2))
            .then(vec![posted(2, COUNSELOR, Some("c-1"))]);
    }

    #[test]
    fn a_reused_message_id_conflicts() {
        Spec::<ChatRoomDecider>::given(vec![opened(), posted(1, CLIENT, None)])
            .when(post(1, "again", None), &counselor(2))
            .then_error(DomainError::Conflict("message id already used"));
    }

    // --- MarkRead -----------------------------------------------------------------------------

    fn conversation() -> Vec<RoomEvent> {
        vec![
            opened(),
            posted(1, CLIENT, None),
            posted(2, COUNSELOR, None),
            posted(3, CLIENT, None),
        ]
    }

    #[test]
    fn member_marks_messages_read() {
        let before = Spec::<ChatRoomDecider>::given(conversation());
        assert_eq!(before.state().unread_for(COUNSELOR), 2);
        assert_eq!(before.state().unread_for(CLIENT), 1);
        let state = before
            .when(RoomCommand::MarkRead { up_to: msg(1) }, &counselor(4))
            .then(vec![RoomEvent::MessageRead {
                reader: COUNSELOR,
                up_to: msg(1),
                at: at(4),
            }]);
        assert_eq!(state.read_seq(COUNSELOR), 1);
        assert_eq!(state.last_read(COUNSELOR), Some(msg(1)));
        assert_eq!(state.unread_for(COUNSELOR), 1);
        assert_eq!(state.unread_for(STRANGER), 0);
    }

    #[test]
    fn marking_read_not_beyond_the_current_position_changes_nothing() {
        let mut history = conversation();
        history.push(RoomEvent::MessageRead {
            reader: COUNSELOR,
            up_to: msg(3),
            at: at(4),
        });
        for up_to in [msg(1), msg(3)] {
            Spec::<ChatRoomDecider>::given(history.clone())
                .when(RoomCommand::MarkRead { up_to }, &counselor(5))
                .then_nothing();
        }
    }

    #[test]
    fn marking_an_unknown_message_read_is_invalid() {
        Spec::<ChatRoomDecider>::given(conversation())
            .when(RoomCommand::MarkRead { up_to: msg(42) }, &client(4))
            .then_error(DomainError::invalid(
                "up_to",
                "no such message in this room",
            ));
    }

    #[test]
    fn non_members_cannot_mark_read() {
        Spec::<ChatRoomDecider>::given(conversation())
            .when(RoomCommand::MarkRead { up_to: msg(1) }, &stranger(4))
            .then_error(DomainError::Forbidden(
                "only members may mark messages read",
            ));
    }

    #[test]
    fn read_positions_never_move_backwards_when_folded() {
        let mut history = conversation();
        history.push(RoomEvent::MessageRead {
            reader: CLIENT,
            up_to: msg(3),
            at: at(4),
        });
        history.push(RoomEvent::MessageRead {
            reader: CLIENT,
            up_to: msg(2),
            at: at(5),
        });
        let state = ChatRoomDecider::fold(&history);
        assert_eq!(state.read_seq(CLIENT), 3);
        assert_eq!(state.unread_for(CLIENT), 0);
    }

    // --- Leave / Close ------------------------------------------------------------------------

    #[test]
    fn member_leaves() {
        let state = Spec::<ChatRoomDecider>::given(vec![opened()])
            .when(RoomCommand::Leave, &client(3))
            .then(vec![RoomEvent::MemberLeft {
                user_id: CLIENT,
                at: at(3),
            }]);
        assert!(!state.is_member(CLIENT));
        assert!(state.was_member(CLIENT));
        assert!(state.has_left(CLIENT));
        assert_eq!(state.members(), vec![COUNSELOR]);
    }

    #[test]
    fn leaving_twice_changes_nothing() {
        Spec::<ChatRoomDecider>::given(vec![
            opened(),
            RoomEvent::MemberLeft {
                user_id: CLIENT,
                at: at(3),
            },
        ])
        .when(RoomCommand::Leave, &client(4))
        .then_nothing();
    }

    #[test]
    fn non_members_cannot_leave() {
        Spec::<ChatRoomDecider>::given(vec![opened()])
            .when(RoomCommand::Leave, &stranger(3))
            .then_error(DomainError::Forbidden("only members may leave"));
    }

    #[test]
    fn member_closes_the_room() {
        let state = Spec::<ChatRoomDecider>::given(vec![opened()])
            .when(RoomCommand::Close, &counselor(7))
            .then(vec![RoomEvent::Closed {
                by: Some(COUNSELOR),
                at: at(7),
            }]);
        assert!(state.is_closed());
        assert_eq!(state.closed_by(), Some(COUNSELOR));
        assert_eq!(state.closed_at(), Some(at(7)));
    }

    #[test]
    fn system_closes_the_room_anonymously() {
        Spec::<ChatRoomDecider>::given(vec![opened()])
            .when(RoomCommand::Close, &Context::new(Actor::system(), at(7)))
            .then(vec![RoomEvent::Closed {
                by: None,
                at: at(7),
            }]);
    }

    #[test]
    fn non_members_cannot_close() {
        Spec::<ChatRoomDecider>::given(vec![opened()])
            .when(RoomCommand::Close, &stranger(7))
            .then_error(DomainError::Forbidden("only members may close the room"));
    }

    #[test]
    fn closing_twice_changes_nothing() {
        Spec::<ChatRoomDecider>::given(vec![
            opened(),
            RoomEvent::Closed {
                by: None,
                at: at(7),
            },
        ])
        .when(RoomCommand::Close, &client(8))
        .then_nothing();
    }

    // --- Serialization ------------------------------------------------------------------------

    #[test]
    fn events_round_trip_through_json_adjacently_tagged() {
        let events = vec![
            opened(),
            posted(1, CLIENT, Some("c-1")),
            RoomEvent::MessageRead {
                reader: COUNSELOR,
                up_to: msg(1),
                at: at(2),
            },
            RoomEvent::MemberLeft {
                user_id: CLIENT,
                at: at(3),
            },
            RoomEvent::Closed {
                by: None,
                at: at(4),
            },
        ];
        for event in events {
            let json = serde_json::to_value(&event).expect("serialize");
            assert_eq!(json["type"], event.event_type());
            assert!(json["data"].is_object(), "{json}");
            let back: RoomEvent = serde_json::from_value(json).expect("deserialize");
            assert_eq!(back, event);
        }
        let json = serde_json::to_value(posted(1, CLIENT, None)).expect("serialize");
        assert_eq!(json["type"], "MessagePosted");
        assert_eq!(json["data"]["author"], CLIENT.to_string());
        assert_eq!(json["data"]["client_message_id"], serde_json::Value::Null);
    }

    #[test]
    fn message_body_carries_the_personal_wrapper_of_its_author() {
        let json = serde_json::to_value(posted(1, COUNSELOR, Some("c-1"))).expect("serialize");
        assert_eq!(
            json["data"]["body"],
            serde_json::json!({ "$personal": { "owner": COUNSELOR, "value": "message 1" } })
        );
        // The dedup token stays clear, so it still works after the author is erased.
        assert_eq!(json["data"]["client_message_id"], "c-1");
    }

    #[test]
    fn an_erased_body_deserializes() {
        let json = serde_json::json!({
            "type": "MessagePosted",
            "data": {
                "message_id": msg(1),
                "author": CLIENT,
                "body": { "$personal": { "owner": CLIENT, "erased": true } },
                "client_message_id": "c-1",
                "at": at(1),
            }
        });
        let event: RoomEvent = serde_json::from_value(json).expect("deserialize");
        assert_eq!(
            event,
            RoomEvent::MessagePosted {
                message_id: msg(1),
                author: CLIENT,
                body: Personal::Erased { owner: CLIENT },
                client_message_id: Some("c-1".into()),
                at: at(1),
            }
        );
    }

    #[test]
    fn debug_of_a_message_does_not_reveal_its_body() {
        let event = RoomEvent::MessagePosted {
            message_id: msg(1),
            author: CLIENT,
            body: Personal::new(CLIENT, "I have not slept in a week".into()),
            client_message_id: None,
            at: at(1),
        };
        let debug = format!("{event:?}");
        assert!(!debug.contains("slept"), "{debug}");
        assert!(debug.contains(&CLIENT.to_string()), "{debug}");
        let state = ChatRoomDecider::fold(&[opened(), event]);
        assert!(!format!("{state:?}").contains("slept"));
    }

    #[test]
    fn a_room_whose_bodies_were_erased_still_folds() {
        let mut history = conversation();
        history.push(RoomEvent::MessageRead {
            reader: COUNSELOR,
            up_to: msg(1),
            at: at(4),
        });
        history.push(posted(5, CLIENT, Some("c-5")));
        // The client was erased: their bodies read back as erased, the counselor's do not.
        let replayed = erase_personal_data(&history, CLIENT);
        let bodies: Vec<_> = replayed
            .iter()
            .filter_map(|e| match e {
                RoomEvent::MessagePosted { author, body, .. } => Some((*author, body.is_erased())),
                _ => None,
            })
            .collect();
        assert_eq!(
            bodies,
            vec![
                (CLIENT, true),
                (COUNSELOR, false),
                (CLIENT, true),
                (CLIENT, true)
            ]
        );
        let state = ChatRoomDecider::fold(&replayed);
        assert_eq!(state.message_count(), 4);
        assert_eq!(state.message_seq(msg(5)), Some(4));
        assert_eq!(state.message_author(msg(3)), Some(CLIENT));
        assert_eq!(state.last_message_id(), Some(msg(5)));
        assert_eq!(state.read_seq(COUNSELOR), 1);
        assert_eq!(state.unread_for(COUNSELOR), 2);
        assert_eq!(state.unread_for(CLIENT), 1);
        assert_eq!(state.opened_at(), Some(at(0)));
        assert!(state.has_client_message_id(CLIENT, "c-5"));
        // Decisions keep working: a resend is still absorbed, a new message still posts.
        Spec::<ChatRoomDecider>::given(replayed.clone())
            .when(post(6, "again", Some("c-5")), &client(6))
            .then_nothing();
        Spec::<ChatRoomDecider>::given(replayed)
            .when(post(6, "message 6", None), &counselor(6))
            .then(vec![posted(6, COUNSELOR, None)]);
    }

    #[test]
    fn kind_is_room() {
        assert_eq!(ChatRoomDecider::KIND, StreamKind::Room);
    }
}
