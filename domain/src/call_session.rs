//! The CallSession aggregate (`call-{uuid}`): one video counseling call, from ring to hang-up.
//!
//! The life of a call: a member of an open room *requests* it, naming the other members it
//! rings → each invitee *accepts* or *declines* (or the ring times out) → parties *join* the
//! media session → they talk, chat and react → someone hangs up, the last participant leaves,
//! or the grace period of a dropped participant runs out → *ended*, with reason and duration.
//!
//! A participant whose signaling connection vanished is *dropped*, not gone: within the grace
//! period fixed when the call was requested they *rejoin* and get their tracks back. The
//! timers (ring timeout, grace expiry) live outside the domain; they send commands whose
//! decisions check the time themselves, so a late or repeated timer changes nothing.

use crate::{
    CallId, Context, Decider, DomainError, DomainEvent, MessageId, Personal, RoomId, StreamKind,
    UserId,
};
use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

/// Longest end reason, in characters; reasons are short codes such as `hangup` or `timeout`.
pub const REASON_MAX_CHARS: usize = 128;
/// The reason recorded when the last participant leaves and the call ends by itself.
pub const REASON_ALL_LEFT: &str = "all_left";
/// The reason recorded when a participant hangs up for everyone.
pub const REASON_HANGUP: &str = "hangup";
/// The reason recorded when nobody answered before the ring timeout.
pub const REASON_NO_ANSWER: &str = "no_answer";
/// The reason recorded when the last participant dropped and did not come back in time.
pub const REASON_DROPPED: &str = "dropped";
/// The most participants any call may allow, whatever the configuration says.
pub const MAX_PARTICIPANTS_LIMIT: u8 = 32;
/// Longest in-call chat message, in characters.
pub const CHAT_MAX_CHARS: usize = 2000;
/// Longest media node name, in characters.
pub const NODE_MAX_CHARS: usize = 128;

/// Longest signaling URL a media node may record: a host, a port and a path, with room.
pub const NODE_URL_MAX_CHARS: usize = 512;
/// The reactions a participant may send over the video. A fixed palette keeps reactions
/// readable for everyone and leaves nothing free-form (no personal data) in `EmojiSent`.
pub const EMOJI: &[&str] = &["👍", "❤️", "😂", "😮", "😢", "👏", "🙏", "🎉"];

/// The rules a call runs under, fixed when it is requested so every later decision (and every
/// replay) sees the same limits even if the configuration changes meanwhile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallPolicy {
    /// Most people in the media session at once (joined or dropped), the requester included.
    pub max_participants: u8,
    /// Seconds the invitees are rung before the call ends unanswered.
    pub ring_timeout_secs: u32,
    /// Seconds a dropped participant may take to rejoin before they count as gone.
    pub grace_secs: u32,
}

impl Default for CallPolicy {
    fn default() -> Self {
        Self {
            max_participants: 8,
            ring_timeout_secs: 30,
            grace_secs: 60,
        }
    }
}

/// Decides the CallSession aggregate's commands; see [`CallCommand`] for the rules.
pub struct CallSessionDecider;

/// What can be asked of a call session. The acting user comes from the [`Context`].
#[derive(Debug, Clone)]
pub enum CallCommand {
    /// Rings `invitees`; the acting user is the requester. `room_members` are the members of
    /// the room as its actor (the authority) knows them, and empty if the room is not open:
    /// the caller asks the room, the decision checks the rule.
    Request {
        /// The call's id (also the stream id).
        call_id: CallId,
        /// The chat room the call belongs to.
        room_id: RoomId,
        /// The users being called; other members of the room.
        invitees: Vec<UserId>,
        /// The open room's current members (empty if it is not open).
        room_members: Vec<UserId>,
        /// The limits the call runs under.
        policy: CallPolicy,
    },
    /// An invitee picks up.
    Accept,
    /// An invitee refuses.
    Decline,
    /// The ring timer fired: ends the call if nobody accepted within the ring timeout.
    RingTimeout,
    /// The requester or an invitee who accepted enters the media session (or comes back).
    Join,
    /// The acting participant leaves; the call ends when the last one does.
    Leave,
    /// `user_id`'s signaling connection was lost; they may rejoin within the grace period.
    Drop {
        /// The participant whose connection was lost.
        user_id: UserId,
    },
    /// The grace timer of `user_id` fired: removes them if they are still dropped and the grace
    /// period is over.
    GraceExpired {
        /// The dropped participant.
        user_id: UserId,
    },
    /// Records which node holds the call's media; the first assignment wins.
    AssignMediaNode {
        /// The node's name as the cluster knows it.
        node: String,
        /// Where browsers reach that node's signaling directly (`ws://` or `wss://`), so a
        /// join that lands elsewhere can be sent there; `None` when the node has no URL of
        /// its own.
        url: Option<String>,
    },
    /// The acting participant's microphone, camera and screen share changed.
    SetMediaState {
        /// Microphone muted.
        audio_muted: bool,
        /// Camera off.
        video_off: bool,
        /// Sharing their screen.
        screen_sharing: bool,
    },
    /// The media node saw `user_id`'s media stop (`stalled`) or come back.
    ReportMedia {
        /// The publisher.
        user_id: UserId,
        /// True when media stopped, false when it resumed.
        stalled: bool,
    },
    /// A participant writes in the in-call chat.
    PostMessage {
        /// The message's id, chosen by the caller.
        message_id: MessageId,
        /// The text, 1..=2000 characters after trimming.
        body: String,
    },
    /// A participant sends a reaction from [`EMOJI`].
    SendEmoji {
        /// One of [`EMOJI`].
        emoji: String,
    },
    /// Ends the call for everyone. Parties to the call or privileged actors only.
    End {
        /// Why the call ended (`hangup`, `timeout`, ...), 1..=128 characters.
        reason: String,
    },
}

/// The facts recorded in a `call-{uuid}` stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum CallEvent {
    /// A user rang others.
    Requested {
        /// The call's id.
        call_id: CallId,
        /// The chat room the call belongs to.
        room_id: RoomId,
        /// Who rang.
        requested_by: UserId,
        /// Who is being rung.
        invitees: Vec<UserId>,
        /// The limits the call runs under.
        policy: CallPolicy,
        /// When the call was requested.
        at: DateTime<Utc>,
    },
    /// An invitee picked up.
    Accepted {
        /// The invitee.
        by: UserId,
        /// When they accepted.
        at: DateTime<Utc>,
    },
    /// An invitee refused; the call is over once every invitee has.
    Declined {
        /// The invitee.
        by: UserId,
        /// When they declined.
        at: DateTime<Utc>,
    },
    /// A party entered the media session.
    ParticipantJoined {
        /// Who joined.
        user_id: UserId,
        /// When they joined.
        at: DateTime<Utc>,
    },
    /// A participant's connection was lost; their place is kept for the grace period.
    ParticipantDropped {
        /// Who dropped.
        user_id: UserId,
        /// When the connection was lost.
        at: DateTime<Utc>,
    },
    /// A dropped participant came back within the grace period.
    ParticipantRejoined {
        /// Who came back.
        user_id: UserId,
        /// When they came back.
        at: DateTime<Utc>,
    },
    /// A participant left the media session.
    ParticipantLeft {
        /// Who left.
        user_id: UserId,
        /// When they left.
        at: DateTime<Utc>,
    },
    /// The call's media runs on `node`; signaling elsewhere redirects there.
    MediaNodeAssigned {
        /// The node's name.
        node: String,
        /// The node's own signaling URL, if it has one (absent in events from before it was
        /// recorded).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        url: Option<String>,
        /// When it was assigned.
        at: DateTime<Utc>,
    },
    /// A participant's microphone, camera or screen share changed.
    MediaStateChanged {
        /// Whose.
        user_id: UserId,
        /// Microphone muted.
        audio_muted: bool,
        /// Camera off.
        video_off: bool,
        /// Sharing their screen.
        screen_sharing: bool,
        /// When.
        at: DateTime<Utc>,
    },
    /// A participant's media stopped reaching the media node.
    MediaStalled {
        /// Whose media stopped.
        user_id: UserId,
        /// When the node noticed.
        at: DateTime<Utc>,
    },
    /// A stalled participant's media came back.
    MediaResumed {
        /// Whose media came back.
        user_id: UserId,
        /// When.
        at: DateTime<Utc>,
    },
    /// A message in the in-call chat.
    InCallMessagePosted {
        /// The message's id.
        message_id: MessageId,
        /// Who wrote it.
        author: UserId,
        /// The text, personal data of the author.
        body: Personal<String>,
        /// When it was posted.
        at: DateTime<Utc>,
    },
    /// A reaction over the video.
    EmojiSent {
        /// Who reacted.
        by: UserId,
        /// One of [`EMOJI`].
        emoji: String,
        /// When.
        at: DateTime<Utc>,
    },
    /// The call is over.
    Ended {
        /// Why it ended (`all_left` when the last participant left).
        reason: String,
        /// Seconds from the first join to the end; 0 if nobody joined.
        duration_secs: u64,
        /// When it ended.
        at: DateTime<Utc>,
    },
}

impl DomainEvent for CallEvent {
    fn event_type(&self) -> &'static str {
        match self {
            Self::Requested { .. } => "Requested",
            Self::Accepted { .. } => "Accepted",
            Self::Declined { .. } => "Declined",
            Self::ParticipantJoined { .. } => "ParticipantJoined",
            Self::ParticipantDropped { .. } => "ParticipantDropped",
            Self::ParticipantRejoined { .. } => "ParticipantRejoined",
            Self::ParticipantLeft { .. } => "ParticipantLeft",
            Self::MediaNodeAssigned { .. } => "MediaNodeAssigned",
            Self::MediaStateChanged { .. } => "MediaStateChanged",
            Self::MediaStalled { .. } => "MediaStalled",
            Self::MediaResumed { .. } => "MediaResumed",
            Self::InCallMessagePosted { .. } => "InCallMessagePosted",
            Self::EmojiSent { .. } => "EmojiSent",
            Self::Ended { .. } => "Ended",
        }
    }

    /// `Requested` is at version 2: version 1 named one `invitee` and carried no policy.
    fn schema_version(&self) -> u32 {
        match self {
            Self::Requested { .. } => 2,
            _ => 1,
        }
    }
}

/// Where a call is in its life; signaling branches on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CallPhase {
    /// No call has been requested on this stream yet.
    #[default]
    Idle,
    /// Ringing: waiting for an invitee to accept.
    Requested,
    /// Accepted: parties may join (and may be in the call).
    Accepted,
    /// Every invitee declined; terminal.
    Declined,
    /// The call ended; terminal.
    Ended,
}

/// Whether a participant is connected or waiting to come back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presence {
    /// In the media session.
    Connected,
    /// Connection lost at this time; may rejoin within the grace period.
    Dropped(DateTime<Utc>),
}

/// A participant's microphone, camera and screen share, as they last said.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct MediaState {
    /// Microphone muted.
    pub audio_muted: bool,
    /// Camera off.
    pub video_off: bool,
    /// Sharing their screen.
    pub screen_sharing: bool,
    /// The media node saw their media stop and not (yet) come back.
    pub stalled: bool,
}

/// One person in the media session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Participant {
    /// Who.
    pub user_id: UserId,
    /// Connected or dropped.
    pub presence: Presence,
    /// Their media as last reported.
    pub media: MediaState,
}

/// Who the call is between, fixed when it is requested.
#[derive(Debug, Clone)]
struct Request {
    call_id: CallId,
    room_id: RoomId,
    requested_by: UserId,
    invitees: Vec<UserId>,
    policy: CallPolicy,
    at: DateTime<Utc>,
}

/// The call as far as the rules need it; `Default` is "not requested".
#[derive(Debug, Clone, Default)]
pub struct CallState {
    request: Option<Request>,
    phase: CallPhase,
    accepted_at: Option<DateTime<Utc>>,
    declined_at: Option<DateTime<Utc>>,
    accepted_by: Vec<UserId>,
    declined_by: Vec<UserId>,
    /// Participants in the media session (connected or dropped), in join order.
    participants: Vec<Participant>,
    first_joined_at: Option<DateTime<Utc>>,
    media_node: Option<String>,
    media_url: Option<String>,
    ended: Option<Ending>,
}

/// How the call ended.
#[derive(Debug, Clone)]
struct Ending {
    reason: String,
    duration_secs: u64,
    at: DateTime<Utc>,
}

impl CallState {
    /// True once `Requested` has happened.
    pub fn is_requested(&self) -> bool {
        self.request.is_some()
    }

    /// Where the call is in its life.
    pub fn phase(&self) -> CallPhase {
        self.phase
    }

    /// True if the call ended or was declined: nothing more can happen in it.
    pub fn is_over(&self) -> bool {
        matches!(self.phase, CallPhase::Ended | CallPhase::Declined)
    }

    /// True if the call has ended (not merely been declined).
    pub fn is_ended(&self) -> bool {
        self.phase == CallPhase::Ended
    }

    /// The call's id, once requested.
    pub fn call_id(&self) -> Option<CallId> {
        self.request.as_ref().map(|r| r.call_id)
    }

    /// The chat room the call belongs to.
    pub fn room_id(&self) -> Option<RoomId> {
        self.request.as_ref().map(|r| r.room_id)
    }

    /// Who rang.
    pub fn requested_by(&self) -> Option<UserId> {
        self.request.as_ref().map(|r| r.requested_by)
    }

    /// Who was rung.
    pub fn invitees(&self) -> &[UserId] {
        self.request.as_ref().map_or(&[], |r| r.invitees.as_slice())
    }

    /// The limits the call runs under.
    pub fn policy(&self) -> Option<CallPolicy> {
        self.request.as_ref().map(|r| r.policy)
    }

    /// When the call was requested.
    pub fn requested_at(&self) -> Option<DateTime<Utc>> {
        self.request.as_ref().map(|r| r.at)
    }

    /// True if `user` is the requester or an invitee.
    pub fn is_party(&self, user: UserId) -> bool {
        self.request
            .as_ref()
            .is_some_and(|r| r.requested_by == user || r.invitees.contains(&user))
    }

    /// True if `user` was rung.
    pub fn is_invitee(&self, user: UserId) -> bool {
        self.invitees().contains(&user)
    }

    /// True if `user` may enter the media session: the requester, or an invitee who accepted.
    pub fn may_join(&self, user: UserId) -> bool {
        self.requested_by() == Some(user) || self.accepted_by.contains(&user)
    }

    /// The invitees who accepted, in order.
    pub fn accepted_by(&self) -> &[UserId] {
        &self.accepted_by
    }

    /// The invitees who declined, in order.
    pub fn declined_by(&self) -> &[UserId] {
        &self.declined_by
    }

    /// `user`'s place in the media session, connected or dropped.
    pub fn participant(&self, user: UserId) -> Option<&Participant> {
        self.participants.iter().find(|p| p.user_id == user)
    }

    /// True if `user` is connected to the media session.
    pub fn is_joined(&self, user: UserId) -> bool {
        self.participant(user)
            .is_some_and(|p| p.presence == Presence::Connected)
    }

    /// The people in the media session (connected or dropped), in join order.
    pub fn participants(&self) -> &[Participant] {
        &self.participants
    }

    /// The node that holds the call's media, once assigned.
    pub fn media_node(&self) -> Option<&str> {
        self.media_node.as_deref()
    }

    /// Where browsers reach the media node's signaling, when it recorded a URL.
    pub fn media_url(&self) -> Option<&str> {
        self.media_url.as_deref()
    }

    /// When the first invitee accepted.
    pub fn accepted_at(&self) -> Option<DateTime<Utc>> {
        self.accepted_at
    }

    /// When the call was declined by its last invitee.
    pub fn declined_at(&self) -> Option<DateTime<Utc>> {
        self.declined_at
    }

    /// When the first participant joined; the call's duration counts from here.
    pub fn first_joined_at(&self) -> Option<DateTime<Utc>> {
        self.first_joined_at
    }

    /// When the call ended.
    pub fn ended_at(&self) -> Option<DateTime<Utc>> {
        self.ended.as_ref().map(|e| e.at)
    }

    /// Why the call ended.
    pub fn end_reason(&self) -> Option<&str> {
        self.ended.as_ref().map(|e| e.reason.as_str())
    }

    /// How long the call lasted, once ended.
    pub fn duration_secs(&self) -> Option<u64> {
        self.ended.as_ref().map(|e| e.duration_secs)
    }

    /// When the ringing stops by itself (requested at + ring timeout).
    pub fn ring_deadline(&self) -> Option<DateTime<Utc>> {
        self.request
            .as_ref()
            .map(|r| r.at + Duration::seconds(i64::from(r.policy.ring_timeout_secs)))
    }

    /// When `user`'s grace period runs out, if they are dropped.
    pub fn grace_deadline(&self, user: UserId) -> Option<DateTime<Utc>> {
        let grace = i64::from(self.policy()?.grace_secs);
        match self.participant(user)?.presence {
            Presence::Dropped(since) => Some(since + Duration::seconds(grace)),
            Presence::Connected => None,
        }
    }

    /// Whole seconds from the first join to `now`; 0 if nobody joined or the clock went back.
    fn duration_until(&self, now: DateTime<Utc>) -> u64 {
        self.first_joined_at.map_or(0, |start| {
            u64::try_from((now - start).num_seconds()).unwrap_or(0)
        })
    }

    /// `ParticipantLeft` for `user`, then `Ended` with `reason` if nobody is left.
    fn leave_events(&self, user: UserId, reason: &str, now: DateTime<Utc>) -> Vec<CallEvent> {
        let mut events = vec![CallEvent::ParticipantLeft {
            user_id: user,
            at: now,
        }];
        // The last one out hangs up: an empty media session has nothing left to do.
        if self.participants.iter().all(|p| p.user_id == user) {
            events.push(CallEvent::Ended {
                reason: reason.to_owned(),
                duration_secs: self.duration_until(now),
                at: now,
            });
        }
        events
    }

    /// Rejects commands on a call that is not in its accepted phase.
    fn require_accepted(&self) -> Result<(), DomainError> {
        match self.phase {
            CallPhase::Accepted => Ok(()),
            CallPhase::Requested => Err(DomainError::Conflict("call has not been accepted yet")),
            CallPhase::Declined => Err(DomainError::Conflict("call was declined")),
            CallPhase::Ended | CallPhase::Idle => Err(DomainError::Conflict("call has ended")),
        }
    }
}

impl Decider for CallSessionDecider {
    type State = CallState;
    type Command = CallCommand;
    type Event = CallEvent;

    const KIND: StreamKind = StreamKind::Call;

    fn decide(
        state: &CallState,
        command: CallCommand,
        ctx: &Context,
    ) -> Result<Vec<CallEvent>, DomainError> {
        let actor = ctx.actor;
        let now = ctx.now;
        // Commands of the media session come from someone connected to it, as themselves.
        let connected = |what: &'static str| {
            actor
                .user_id
                .filter(|&u| state.is_joined(u))
                .ok_or(DomainError::Forbidden(what))
        };
        let invitee = |what: &'static str| {
            actor
                .user_id
                .filter(|&u| state.is_invitee(u))
                .ok_or(DomainError::Forbidden(what))
        };
        // Timers and the media node act as the system; a participant may act for themselves.
        let for_user = |user: UserId, what: &'static str| {
            if actor.is_privileged() || actor.is(user) {
                Ok(())
            } else {
                Err(DomainError::Forbidden(what))
            }
        };

        match command {
            CallCommand::Request {
                call_id,
                room_id,
                invitees,
                room_members,
                policy,
            } => {
                let requested_by = actor
                    .user_id
                    .ok_or(DomainError::Forbidden("a call is requested by a user"))?;
                if state.is_requested() {
                    return Err(DomainError::AlreadyExists("call"));
                }
                if !room_members.contains(&requested_by) {
                    return Err(DomainError::Forbidden(
                        "only a member of an open room may start a call in it",
                    ));
                }
                let mut unique = Vec::with_capacity(invitees.len());
                for user in invitees {
                    if user == requested_by {
                        return Err(DomainError::invalid(
                            "invitees",
                            "must be someone other than the requester",
                        ));
                    }
                    if !room_members.contains(&user) {
                        return Err(DomainError::invalid(
                            "invitees",
                            "must be members of the room",
                        ));
                    }
                    if !unique.contains(&user) {
                        unique.push(user);
                    }
                }
                if unique.is_empty() {
                    return Err(DomainError::invalid(
                        "invitees",
                        "must name someone to call",
                    ));
                }
                if policy.max_participants < 2 || policy.max_participants > MAX_PARTICIPANTS_LIMIT {
                    return Err(DomainError::invalid(
                        "max_participants",
                        format!("must be between 2 and {MAX_PARTICIPANTS_LIMIT}"),
                    ));
                }
                if unique.len() + 1 > usize::from(policy.max_participants) {
                    return Err(DomainError::invalid(
                        "invitees",
                        format!(
                            "a call has at most {} participants",
                            policy.max_participants
                        ),
                    ));
                }
                Ok(vec![CallEvent::Requested {
                    call_id,
                    room_id,
                    requested_by,
                    invitees: unique,
                    policy,
                    at: now,
                }])
            }
            _ if !state.is_requested() => Err(DomainError::NotFound("call")),
            CallCommand::Accept => {
                let by = invitee("only an invitee may accept")?;
                if state.accepted_by.contains(&by) {
                    return Ok(vec![]);
                }
                if state.declined_by.contains(&by) {
                    return Err(DomainError::Conflict("you declined this call"));
                }
                match state.phase {
                    CallPhase::Requested | CallPhase::Accepted => {
                        Ok(vec![CallEvent::Accepted { by, at: now }])
                    }
                    CallPhase::Declined => Err(DomainError::Conflict("call was declined")),
                    CallPhase::Ended | CallPhase::Idle => {
                        Err(DomainError::Conflict("call has ended"))
                    }
                }
            }
            CallCommand::Decline => {
                let by = invitee("only an invitee may decline")?;
                if state.declined_by.contains(&by) {
                    return Ok(vec![]);
                }
                if state.accepted_by.contains(&by) {
                    return Err(DomainError::Conflict("call was already accepted"));
                }
                match state.phase {
                    CallPhase::Requested | CallPhase::Accepted => {
                        Ok(vec![CallEvent::Declined { by, at: now }])
                    }
                    CallPhase::Declined => Ok(vec![]),
                    CallPhase::Ended | CallPhase::Idle => {
                        Err(DomainError::Conflict("call has ended"))
                    }
                }
            }
            CallCommand::RingTimeout => {
                if !actor.is_privileged() {
                    return Err(DomainError::Forbidden("the ring timer is the system's"));
                }
                let due = state
                    .ring_deadline()
                    .is_some_and(|deadline| now >= deadline);
                if state.phase != CallPhase::Requested || !due {
                    return Ok(vec![]);
                }
                Ok(vec![CallEvent::Ended {
                    reason: REASON_NO_ANSWER.to_owned(),
                    duration_secs: 0,
                    at: now,
                }])
            }
            CallCommand::Join => {
                let user =
                    actor
                        .user_id
                        .filter(|&u| state.is_party(u))
                        .ok_or(DomainError::Forbidden(
                            "only the requester or an invitee may join",
                        ))?;
                state.require_accepted()?;
                if !state.may_join(user) {
                    return Err(DomainError::Conflict("accept the call before joining"));
                }
                match state.participant(user).map(|p| p.presence) {
                    Some(Presence::Connected) => Ok(vec![]),
                    Some(Presence::Dropped(_)) => {
                        let within = state.grace_deadline(user).is_some_and(|d| now <= d);
                        if within {
                            Ok(vec![CallEvent::ParticipantRejoined {
                                user_id: user,
                                at: now,
                            }])
                        } else {
                            // Too late to get the old place back (the grace timer was lost
                            // or is still on its way): the old place goes, a new one begins.
                            Ok(vec![
                                CallEvent::ParticipantLeft {
                                    user_id: user,
                                    at: now,
                                },
                                CallEvent::ParticipantJoined {
                                    user_id: user,
                                    at: now,
                                },
                            ])
                        }
                    }
                    None => {
                        let max = state
                            .policy()
                            .map_or(0, |p| usize::from(p.max_participants));
                        if state.participants.len() >= max {
                            return Err(DomainError::Conflict("call is full"));
                        }
                        Ok(vec![CallEvent::ParticipantJoined {
                            user_id: user,
                            at: now,
                        }])
                    }
                }
            }
            CallCommand::Leave => {
                let user =
                    actor
                        .user_id
                        .filter(|&u| state.is_party(u))
                        .ok_or(DomainError::Forbidden(
                            "only the requester or an invitee may leave",
                        ))?;
                if state.participant(user).is_none() || state.is_over() {
                    return Ok(vec![]);
                }
                Ok(state.leave_events(user, REASON_ALL_LEFT, now))
            }
            CallCommand::Drop { user_id } => {
                for_user(user_id, "only the system may drop another participant")?;
                match state.participant(user_id).map(|p| p.presence) {
                    Some(Presence::Connected) if !state.is_over() => {
                        Ok(vec![CallEvent::ParticipantDropped { user_id, at: now }])
                    }
                    _ => Ok(vec![]),
                }
            }
            CallCommand::GraceExpired { user_id } => {
                if !actor.is_privileged() {
                    return Err(DomainError::Forbidden("the grace timer is the system's"));
                }
                let due = state.grace_deadline(user_id).is_some_and(|d| now >= d);
                if !due || state.is_over() {
                    return Ok(vec![]);
                }
                Ok(state.leave_events(user_id, REASON_DROPPED, now))
            }
            CallCommand::AssignMediaNode { node, url } => {
                let is_party = actor.user_id.is_some_and(|u| state.is_party(u));
                if !(is_party || actor.is_privileged()) {
                    return Err(DomainError::Forbidden(
                        "only a party may place the call's media",
                    ));
                }
                if state.is_over() {
                    return Err(DomainError::Conflict("call has ended"));
                }
                let node = node.trim();
                if node.is_empty() || node.chars().count() > NODE_MAX_CHARS {
                    return Err(DomainError::invalid(
                        "node",
                        format!("must be 1..={NODE_MAX_CHARS} characters"),
                    ));
                }
                let url = url.as_deref().map(str::trim).filter(|u| !u.is_empty());
                if let Some(url) = url
                    && !is_signaling_url(url)
                {
                    return Err(DomainError::invalid(
                        "url",
                        format!(
                            "must be a ws:// or wss:// URL of at most {NODE_URL_MAX_CHARS} characters, without spaces"
                        ),
                    ));
                }
                match state.media_node() {
                    None => Ok(vec![CallEvent::MediaNodeAssigned {
                        node: node.to_owned(),
                        url: url.map(str::to_owned),
                        at: now,
                    }]),
                    Some(current) if current == node => Ok(vec![]),
                    Some(_) => Err(DomainError::Conflict("the call's media is on another node")),
                }
            }
            CallCommand::SetMediaState {
                audio_muted,
                video_off,
                screen_sharing,
            } => {
                let user = connected("only a participant in the call may change their media")?;
                let current = state.participant(user).map(|p| p.media).unwrap_or_default();
                let unchanged = current.audio_muted == audio_muted
                    && current.video_off == video_off
                    && current.screen_sharing == screen_sharing;
                if unchanged {
                    return Ok(vec![]);
                }
                Ok(vec![CallEvent::MediaStateChanged {
                    user_id: user,
                    audio_muted,
                    video_off,
                    screen_sharing,
                    at: now,
                }])
            }
            CallCommand::ReportMedia { user_id, stalled } => {
                if !actor.is_privileged() {
                    return Err(DomainError::Forbidden(
                        "media reports come from the media node",
                    ));
                }
                let Some(p) = state.participant(user_id) else {
                    return Ok(vec![]);
                };
                if state.is_over() || p.media.stalled == stalled {
                    return Ok(vec![]);
                }
                Ok(vec![if stalled {
                    CallEvent::MediaStalled { user_id, at: now }
                } else {
                    CallEvent::MediaResumed { user_id, at: now }
                }])
            }
            CallCommand::PostMessage { message_id, body } => {
                let author = connected("only a participant in the call may chat in it")?;
                let body = body.trim();
                if body.is_empty() {
                    return Err(DomainError::invalid("body", "must not be blank"));
                }
                if body.chars().count() > CHAT_MAX_CHARS {
                    return Err(DomainError::invalid(
                        "body",
                        format!("must be at most {CHAT_MAX_CHARS} characters"),
                    ));
                }
                Ok(vec![CallEvent::InCallMessagePosted {
                    message_id,
                    author,
                    body: Personal::new(author, body.to_owned()),
                    at: now,
                }])
            }
            CallCommand::SendEmoji { emoji } => {
                let by = connected("only a participant in the call may react")?;
                if !EMOJI.contains(&emoji.as_str()) {
                    return Err(DomainError::invalid(
                        "emoji",
                        format!("must be one of {}", EMOJI.join(" ")),
                    ));
                }
                Ok(vec![CallEvent::EmojiSent { by, emoji, at: now }])
            }
            CallCommand::End { reason } => {
                let is_party = actor.user_id.is_some_and(|u| state.is_party(u));
                if !(is_party || actor.is_privileged()) {
                    return Err(DomainError::Forbidden(
                        "only the requester, an invitee or an operator may end a call",
                    ));
                }
                if state.is_over() {
                    return Ok(vec![]);
                }
                let reason = validate_reason(&reason)?;
                Ok(vec![CallEvent::Ended {
                    reason,
                    duration_secs: state.duration_until(now),
                    at: now,
                }])
            }
        }
    }

    fn evolve(mut state: CallState, event: &CallEvent) -> CallState {
        match event {
            CallEvent::Requested {
                call_id,
                room_id,
                requested_by,
                invitees,
                policy,
                at,
            } => {
                state.request = Some(Request {
                    call_id: *call_id,
                    room_id: *room_id,
                    requested_by: *requested_by,
                    invitees: invitees.clone(),
                    policy: *policy,
                    at: *at,
                });
                state.phase = CallPhase::Requested;
            }
            CallEvent::Accepted { by, at } => {
                if state.phase == CallPhase::Requested {
                    state.phase = CallPhase::Accepted;
                    state.accepted_at = Some(*at);
                }
                if !state.accepted_by.contains(by) {
                    state.accepted_by.push(*by);
                }
            }
            CallEvent::Declined { by, at } => {
                if !state.declined_by.contains(by) {
                    state.declined_by.push(*by);
                }
                let everyone = state
                    .invitees()
                    .iter()
                    .all(|u| state.declined_by.contains(u));
                if everyone && state.phase == CallPhase::Requested {
                    state.phase = CallPhase::Declined;
                    state.declined_at = Some(*at);
                }
            }
            CallEvent::ParticipantJoined { user_id, at } => {
                if state.participant(*user_id).is_none() {
                    state.participants.push(Participant {
                        user_id: *user_id,
                        presence: Presence::Connected,
                        media: MediaState::default(),
                    });
                }
                state.first_joined_at.get_or_insert(*at);
            }
            CallEvent::ParticipantDropped { user_id, at } => {
                set_presence(&mut state, *user_id, Presence::Dropped(*at));
            }
            CallEvent::ParticipantRejoined { user_id, .. } => {
                set_presence(&mut state, *user_id, Presence::Connected);
            }
            CallEvent::ParticipantLeft { user_id, .. } => {
                state.participants.retain(|p| p.user_id != *user_id);
            }
            CallEvent::MediaNodeAssigned { node, url, .. } => {
                state.media_node = Some(node.clone());
                state.media_url = url.clone();
            }
            CallEvent::MediaStateChanged {
                user_id,
                audio_muted,
                video_off,
                screen_sharing,
                ..
            } => {
                if let Some(p) = state
                    .participants
                    .iter_mut()
                    .find(|p| p.user_id == *user_id)
                {
                    p.media.audio_muted = *audio_muted;
                    p.media.video_off = *video_off;
                    p.media.screen_sharing = *screen_sharing;
                }
            }
            CallEvent::MediaStalled { user_id, .. } | CallEvent::MediaResumed { user_id, .. } => {
                let stalled = matches!(event, CallEvent::MediaStalled { .. });
                if let Some(p) = state
                    .participants
                    .iter_mut()
                    .find(|p| p.user_id == *user_id)
                {
                    p.media.stalled = stalled;
                }
            }
            CallEvent::InCallMessagePosted { .. } | CallEvent::EmojiSent { .. } => {}
            CallEvent::Ended {
                reason,
                duration_secs,
                at,
            } => {
                state.phase = CallPhase::Ended;
                // Nobody is in a call that is over.
                state.participants.clear();
                state.ended = Some(Ending {
                    reason: reason.clone(),
                    duration_secs: *duration_secs,
                    at: *at,
                });
            }
        }
        state
    }
}

/// A WebSocket URL a browser may be sent to: `ws://` or `wss://`, a host after it, bounded,
/// and nothing a client would misread (spaces, control characters).
fn is_signaling_url(url: &str) -> bool {
    let rest = url
        .strip_prefix("wss://")
        .or_else(|| url.strip_prefix("ws://"));
    rest.is_some_and(|r| !r.is_empty() && !r.starts_with('/'))
        && url.chars().count() <= NODE_URL_MAX_CHARS
        && !url.chars().any(|c| c.is_whitespace() || c.is_control())
}

fn set_presence(state: &mut CallState, user: UserId, presence: Presence) {
    if let Some(p) = state.participants.iter_mut().find(|p| p.user_id == user) {
        p.presence = presence;
    }
}

/// An end reason: 1..=128 characters after trimming; returns the trimmed text.
fn validate_reason(reason: &str) -> Result<String, DomainError> {
    let trimmed = reason.trim();
    if trimmed.is_empty() {
        return Err(DomainError::invalid("reason", "must not be blank"));
    }
    if trimmed.chars().count() > REASON_MAX_CHARS {
        return Err(DomainError::invalid(
            "reason",
            format!("must be at most {REASON_MAX_CHARS} characters"),
        ));
    }
    Ok(trimmed.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Role;
    use crate::testing::{Spec, at, system_ctx, user_ctx, user_id};
    use uuid::Uuid;

    const CALL: CallId = CallId::from_uuid(Uuid::from_u128(0x200));
    const ROOM: RoomId = RoomId::from_uuid(Uuid::from_u128(0x100));
    const MSG: MessageId = MessageId::from_uuid(Uuid::from_u128(0x300));
    const CALLER: UserId = user_id(1);
    const CALLEE: UserId = user_id(2);
    const STRANGER: UserId = user_id(3);
    const POLICY: CallPolicy = CallPolicy {
        max_participants: 8,
        ring_timeout_secs: 30,
        grace_secs: 60,
    };

    fn caller(secs: i64) -> Context {
        user_ctx(CALLER, Role::Client, at(secs))
    }

    fn callee(secs: i64) -> Context {
        user_ctx(CALLEE, Role::Counselor, at(secs))
    }

    fn stranger(secs: i64) -> Context {
        user_ctx(STRANGER, Role::Client, at(secs))
    }

    fn member(n: u128, secs: i64) -> Context {
        user_ctx(user_id(n), Role::Client, at(secs))
    }

    fn operator(secs: i64) -> Context {
        user_ctx(user_id(99), Role::Operator, at(secs))
    }

    fn requested() -> CallEvent {
        requested_with(vec![CALLEE], POLICY)
    }

    fn requested_with(invitees: Vec<UserId>, policy: CallPolicy) -> CallEvent {
        CallEvent::Requested {
            call_id: CALL,
            room_id: ROOM,
            requested_by: CALLER,
            invitees,
            policy,
            at: at(0),
        }
    }

    fn accepted_by(user: UserId, secs: i64) -> CallEvent {
        CallEvent::Accepted {
            by: user,
            at: at(secs),
        }
    }

    fn accepted() -> CallEvent {
        accepted_by(CALLEE, 10)
    }

    fn declined() -> CallEvent {
        CallEvent::Declined {
            by: CALLEE,
            at: at(10),
        }
    }

    fn joined(user: UserId, secs: i64) -> CallEvent {
        CallEvent::ParticipantJoined {
            user_id: user,
            at: at(secs),
        }
    }

    fn left(user: UserId, secs: i64) -> CallEvent {
        CallEvent::ParticipantLeft {
            user_id: user,
            at: at(secs),
        }
    }

    fn dropped(user: UserId, secs: i64) -> CallEvent {
        CallEvent::ParticipantDropped {
            user_id: user,
            at: at(secs),
        }
    }

    fn ended(reason: &str, duration_secs: u64, secs: i64) -> CallEvent {
        CallEvent::Ended {
            reason: reason.into(),
            duration_secs,
            at: at(secs),
        }
    }

    fn request_cmd(invitees: Vec<UserId>) -> CallCommand {
        CallCommand::Request {
            call_id: CALL,
            room_id: ROOM,
            invitees,
            room_members: vec![CALLER, CALLEE],
            policy: POLICY,
        }
    }

    fn end_cmd(reason: &str) -> CallCommand {
        CallCommand::End {
            reason: reason.into(),
        }
    }

    /// An accepted call with both parties in it since t=20 and t=30.
    fn in_call() -> Vec<CallEvent> {
        vec![
            requested(),
            accepted(),
            joined(CALLER, 20),
            joined(CALLEE, 30),
        ]
    }

    fn with(
        mut events: Vec<CallEvent>,
        more: impl IntoIterator<Item = CallEvent>,
    ) -> Vec<CallEvent> {
        events.extend(more);
        events
    }

    // --- Request ------------------------------------------------------------------------------

    #[test]
    fn a_member_requests_a_call_to_the_other_member() {
        let state = Spec::<CallSessionDecider>::given_nothing()
            .when(request_cmd(vec![CALLEE]), &caller(0))
            .then(vec![requested()]);
        assert_eq!(state.phase(), CallPhase::Requested);
        assert_eq!(state.requested_by(), Some(CALLER));
        assert_eq!(state.invitees(), &[CALLEE]);
        assert_eq!(state.room_id(), Some(ROOM));
        assert_eq!(state.ring_deadline(), Some(at(30)));
        assert!(state.is_party(CALLER) && state.is_party(CALLEE));
        assert!(!state.is_party(STRANGER));
    }

    #[test]
    fn requesting_twice_is_rejected() {
        Spec::<CallSessionDecider>::given(vec![requested()])
            .when(request_cmd(vec![CALLEE]), &caller(1))
            .then_error(DomainError::AlreadyExists("call"));
    }

    #[test]
    fn an_outsider_cannot_start_a_call_in_a_room() {
        Spec::<CallSessionDecider>::given_nothing()
            .when(request_cmd(vec![CALLEE]), &stranger(0))
            .then_error(DomainError::Forbidden(
                "only a member of an open room may start a call in it",
            ));
    }

    #[test]
    fn a_closed_room_has_no_members_to_call() {
        Spec::<CallSessionDecider>::given_nothing()
            .when(
                CallCommand::Request {
                    call_id: CALL,
                    room_id: ROOM,
                    invitees: vec![CALLEE],
                    room_members: vec![],
                    policy: POLICY,
                },
                &caller(0),
            )
            .then_error_code("forbidden");
    }

    #[test]
    fn only_members_of_the_room_are_rung() {
        Spec::<CallSessionDecider>::given_nothing()
            .when(request_cmd(vec![STRANGER]), &caller(0))
            .then_error(DomainError::invalid(
                "invitees",
                "must be members of the room",
            ));
    }

    #[test]
    fn calling_yourself_or_nobody_is_invalid() {
        Spec::<CallSessionDecider>::given_nothing()
            .when(request_cmd(vec![CALLER]), &caller(0))
            .then_error(DomainError::invalid(
                "invitees",
                "must be someone other than the requester",
            ));
        Spec::<CallSessionDecider>::given_nothing()
            .when(request_cmd(vec![]), &caller(0))
            .then_error(DomainError::invalid(
                "invitees",
                "must name someone to call",
            ));
    }

    #[test]
    fn repeated_invitees_are_rung_once() {
        Spec::<CallSessionDecider>::given_nothing()
            .when(request_cmd(vec![CALLEE, CALLEE]), &caller(0))
            .then(vec![requested()]);
    }

    #[test]
    fn more_invitees_than_the_policy_allows_is_invalid() {
        let members: Vec<UserId> = (1..=9).map(user_id).collect();
        let invitees: Vec<UserId> = (2..=9).map(user_id).collect();
        Spec::<CallSessionDecider>::given_nothing()
            .when(
                CallCommand::Request {
                    call_id: CALL,
                    room_id: ROOM,
                    invitees,
                    room_members: members,
                    policy: POLICY,
                },
                &caller(0),
            )
            .then_error(DomainError::invalid(
                "invitees",
                "a call has at most 8 participants",
            ));
    }

    #[test]
    fn a_policy_outside_the_hard_limits_is_invalid() {
        for max in [0, 1, MAX_PARTICIPANTS_LIMIT + 1] {
            Spec::<CallSessionDecider>::given_nothing()
                .when(
                    CallCommand::Request {
                        call_id: CALL,
                        room_id: ROOM,
                        invitees: vec![CALLEE],
                        room_members: vec![CALLER, CALLEE],
                        policy: CallPolicy {
                            max_participants: max,
                            ..POLICY
                        },
                    },
                    &caller(0),
                )
                .then_error_code("invalid");
        }
    }

    #[test]
    fn the_system_cannot_request_a_call() {
        Spec::<CallSessionDecider>::given_nothing()
            .when(request_cmd(vec![CALLEE]), &system_ctx(at(0)))
            .then_error(DomainError::Forbidden("a call is requested by a user"));
    }

    #[test]
    fn commands_on_an_unrequested_call_are_not_found() {
        let commands = [
            CallCommand::Accept,
            CallCommand::Decline,
            CallCommand::Join,
            CallCommand::Leave,
            end_cmd("hangup"),
            CallCommand::SendEmoji {
                emoji: "👍".into()
            },
        ];
        for command in commands {
            Spec::<CallSessionDecider>::given_nothing()
                .when(command, &callee(1))
                .then_error(DomainError::NotFound("call"));
        }
    }

    // --- Accept / decline / ring timeout ------------------------------------------------------

    #[test]
    fn the_invitee_accepts() {
        let state = Spec::<CallSessionDecider>::given(vec![requested()])
            .when(CallCommand::Accept, &callee(10))
            .then(vec![accepted()]);
        assert_eq!(state.phase(), CallPhase::Accepted);
        assert_eq!(state.accepted_at(), Some(at(10)));
        assert!(state.may_join(CALLEE));
    }

    #[test]
    fn only_an_invitee_accepts_or_declines() {
        for (command, what) in [
            (CallCommand::Accept, "only an invitee may accept"),
            (CallCommand::Decline, "only an invitee may decline"),
        ] {
            Spec::<CallSessionDecider>::given(vec![requested()])
                .when(command.clone(), &caller(10))
                .then_error(DomainError::Forbidden(what));
            Spec::<CallSessionDecider>::given(vec![requested()])
                .when(command, &stranger(10))
                .then_error(DomainError::Forbidden(what));
        }
    }

    #[test]
    fn accepting_or_declining_twice_changes_nothing() {
        Spec::<CallSessionDecider>::given(vec![requested(), accepted()])
            .when(CallCommand::Accept, &callee(11))
            .then_nothing();
        Spec::<CallSessionDecider>::given(vec![requested(), declined()])
            .when(CallCommand::Decline, &callee(11))
            .then_nothing();
    }

    #[test]
    fn the_invitee_declines_and_the_call_is_over() {
        let state = Spec::<CallSessionDecider>::given(vec![requested()])
            .when(CallCommand::Decline, &callee(10))
            .then(vec![declined()]);
        assert_eq!(state.phase(), CallPhase::Declined);
        assert!(state.is_over());
    }

    #[test]
    fn accepting_a_declined_or_ended_call_conflicts() {
        Spec::<CallSessionDecider>::given(vec![requested(), declined()])
            .when(CallCommand::Accept, &callee(11))
            .then_error(DomainError::Conflict("you declined this call"));
        Spec::<CallSessionDecider>::given(vec![requested(), ended("hangup", 0, 5)])
            .when(CallCommand::Accept, &callee(11))
            .then_error(DomainError::Conflict("call has ended"));
    }

    #[test]
    fn declining_an_accepted_call_conflicts() {
        Spec::<CallSessionDecider>::given(vec![requested(), accepted()])
            .when(CallCommand::Decline, &callee(11))
            .then_error(DomainError::Conflict("call was already accepted"));
    }

    #[test]
    fn in_a_group_call_one_decline_leaves_the_others_ringing() {
        let third = user_id(4);
        let group = requested_with(vec![CALLEE, third], POLICY);
        let state = Spec::<CallSessionDecider>::given(vec![group.clone()])
            .when(CallCommand::Decline, &callee(5))
            .then(vec![CallEvent::Declined {
                by: CALLEE,
                at: at(5),
            }]);
        assert_eq!(state.phase(), CallPhase::Requested);
        let state = Spec::<CallSessionDecider>::given(vec![
            group,
            CallEvent::Declined {
                by: CALLEE,
                at: at(5),
            },
        ])
        .when(CallCommand::Decline, &member(4, 6))
        .then(vec![CallEvent::Declined {
            by: third,
            at: at(6),
        }]);
        assert_eq!(state.phase(), CallPhase::Declined);
    }

    #[test]
    fn the_ring_times_out_when_nobody_answers() {
        let state = Spec::<CallSessionDecider>::given(vec![requested()])
            .when(CallCommand::RingTimeout, &system_ctx(at(30)))
            .then(vec![ended(REASON_NO_ANSWER, 0, 30)]);
        assert!(state.is_ended());
    }

    #[test]
    fn an_early_or_late_ring_timer_changes_nothing() {
        // Early: a timer that fires before the deadline (clock skew between nodes).
        Spec::<CallSessionDecider>::given(vec![requested()])
            .when(CallCommand::RingTimeout, &system_ctx(at(29)))
            .then_nothing();
        // Late: the call was answered meanwhile.
        Spec::<CallSessionDecider>::given(vec![requested(), accepted()])
            .when(CallCommand::RingTimeout, &system_ctx(at(31)))
            .then_nothing();
        Spec::<CallSessionDecider>::given(vec![requested(), declined()])
            .when(CallCommand::RingTimeout, &system_ctx(at(31)))
            .then_nothing();
    }

    #[test]
    fn only_the_system_times_the_ring_out() {
        Spec::<CallSessionDecider>::given(vec![requested()])
            .when(CallCommand::RingTimeout, &caller(40))
            .then_error(DomainError::Forbidden("the ring timer is the system's"));
    }

    // --- Join / leave -------------------------------------------------------------------------

    #[test]
    fn parties_join_an_accepted_call() {
        let state = Spec::<CallSessionDecider>::given(vec![requested(), accepted()])
            .when(CallCommand::Join, &caller(20))
            .then(vec![joined(CALLER, 20)]);
        assert!(state.is_joined(CALLER));
        assert_eq!(state.first_joined_at(), Some(at(20)));
        let state =
            Spec::<CallSessionDecider>::given(vec![requested(), accepted(), joined(CALLER, 20)])
                .when(CallCommand::Join, &callee(30))
                .then(vec![joined(CALLEE, 30)]);
        assert_eq!(state.participants().len(), 2);
        assert_eq!(state.first_joined_at(), Some(at(20)));
    }

    #[test]
    fn outsiders_cannot_join() {
        Spec::<CallSessionDecider>::given(vec![requested(), accepted()])
            .when(CallCommand::Join, &stranger(20))
            .then_error(DomainError::Forbidden(
                "only the requester or an invitee may join",
            ));
    }

    #[test]
    fn an_invitee_who_has_not_accepted_cannot_join() {
        let third = user_id(4);
        Spec::<CallSessionDecider>::given(vec![
            requested_with(vec![CALLEE, third], POLICY),
            accepted(),
        ])
        .when(CallCommand::Join, &member(4, 20))
        .then_error(DomainError::Conflict("accept the call before joining"));
    }

    #[test]
    fn joining_before_accept_or_after_the_end_conflicts() {
        Spec::<CallSessionDecider>::given(vec![requested()])
            .when(CallCommand::Join, &caller(5))
            .then_error(DomainError::Conflict("call has not been accepted yet"));
        Spec::<CallSessionDecider>::given(vec![requested(), declined()])
            .when(CallCommand::Join, &caller(15))
            .then_error(DomainError::Conflict("call was declined"));
        Spec::<CallSessionDecider>::given(with(in_call(), [ended("hangup", 40, 60)]))
            .when(CallCommand::Join, &caller(70))
            .then_error(DomainError::Conflict("call has ended"));
    }

    #[test]
    fn joining_twice_changes_nothing() {
        Spec::<CallSessionDecider>::given(in_call())
            .when(CallCommand::Join, &caller(40))
            .then_nothing();
    }

    #[test]
    fn a_ninth_participant_is_refused() {
        // Eight in the call (the requester and seven invitees who accepted and joined); a
        // ninth member of the room was not (and could not be) rung, so they stay out.
        let invitees: Vec<UserId> = (2..=8).map(user_id).collect();
        let mut history = vec![requested_with(invitees, POLICY)];
        history.extend((2..=8).map(|n| accepted_by(user_id(n), 5)));
        history.extend((1..=8).map(|n| joined(user_id(n), 10)));
        let spec = Spec::<CallSessionDecider>::given(history);
        assert_eq!(spec.state().participants().len(), 8);
        spec.when(CallCommand::Join, &member(9, 11))
            .then_error(DomainError::Forbidden(
                "only the requester or an invitee may join",
            ));
    }

    #[test]
    fn a_full_call_refuses_another_join() {
        let small = CallPolicy {
            max_participants: 2,
            ..POLICY
        };
        let third = user_id(4);
        // Two places: the caller and the callee take them; the third invitee cannot have been
        // rung (the request would be invalid), so fill the call by a dropped participant whose
        // place is kept and check the count includes them.
        let history = vec![
            requested_with(vec![CALLEE], small),
            accepted(),
            joined(CALLER, 20),
            joined(CALLEE, 21),
        ];
        let state = Spec::<CallSessionDecider>::given(history.clone())
            .state()
            .clone();
        assert_eq!(state.participants().len(), 2);
        // The room gains a member who is not invited: still refused as an outsider.
        Spec::<CallSessionDecider>::given(history)
            .when(CallCommand::Join, &member(4, 22))
            .then_error(DomainError::Forbidden(
                "only the requester or an invitee may join",
            ));
        // A group call whose policy shrank below its invitees: the last one is refused.
        let history = vec![
            requested_with(
                vec![CALLEE, third],
                CallPolicy {
                    max_participants: 3,
                    ..POLICY
                },
            ),
            accepted(),
            accepted_by(third, 11),
            joined(CALLER, 20),
            joined(CALLEE, 21),
            dropped(CALLEE, 22),
        ];
        let mut state = Spec::<CallSessionDecider>::given(history.clone())
            .state()
            .clone();
        if let Some(r) = state.request.as_mut() {
            r.policy.max_participants = 2;
        }
        let result = CallSessionDecider::decide(&state, CallCommand::Join, &member(4, 23));
        assert_eq!(result, Err(DomainError::Conflict("call is full")));
    }

    #[test]
    fn a_participant_leaves_while_the_other_stays() {
        let state = Spec::<CallSessionDecider>::given(in_call())
            .when(CallCommand::Leave, &caller(50))
            .then(vec![left(CALLER, 50)]);
        assert_eq!(state.phase(), CallPhase::Accepted);
        assert!(!state.is_joined(CALLER) && state.is_joined(CALLEE));
    }

    #[test]
    fn the_last_one_out_ends_the_call() {
        let state = Spec::<CallSessionDecider>::given(with(in_call(), [left(CALLER, 50)]))
            .when(CallCommand::Leave, &callee(80))
            .then(vec![left(CALLEE, 80), ended(REASON_ALL_LEFT, 60, 80)]);
        assert!(state.is_ended());
        assert_eq!(state.duration_secs(), Some(60));
        assert!(state.participants().is_empty());
    }

    #[test]
    fn leaving_when_not_in_the_call_changes_nothing() {
        Spec::<CallSessionDecider>::given(vec![requested(), accepted(), joined(CALLER, 20)])
            .when(CallCommand::Leave, &callee(25))
            .then_nothing();
        Spec::<CallSessionDecider>::given(with(in_call(), [ended("hangup", 10, 40)]))
            .when(CallCommand::Leave, &caller(45))
            .then_nothing();
    }

    #[test]
    fn outsiders_cannot_leave() {
        Spec::<CallSessionDecider>::given(in_call())
            .when(CallCommand::Leave, &stranger(40))
            .then_error(DomainError::Forbidden(
                "only the requester or an invitee may leave",
            ));
    }

    // --- Drops and the grace period -----------------------------------------------------------

    #[test]
    fn a_lost_connection_drops_the_participant_and_keeps_their_place() {
        let state = Spec::<CallSessionDecider>::given(in_call())
            .when(CallCommand::Drop { user_id: CALLEE }, &system_ctx(at(40)))
            .then(vec![dropped(CALLEE, 40)]);
        assert!(!state.is_joined(CALLEE));
        assert_eq!(
            state.participant(CALLEE).map(|p| p.presence),
            Some(Presence::Dropped(at(40)))
        );
        assert_eq!(state.grace_deadline(CALLEE), Some(at(100)));
        assert_eq!(state.participants().len(), 2);
    }

    #[test]
    fn only_the_system_or_the_person_reports_a_drop() {
        Spec::<CallSessionDecider>::given(in_call())
            .when(CallCommand::Drop { user_id: CALLEE }, &caller(40))
            .then_error(DomainError::Forbidden(
                "only the system may drop another participant",
            ));
        Spec::<CallSessionDecider>::given(in_call())
            .when(CallCommand::Drop { user_id: CALLEE }, &callee(40))
            .then(vec![dropped(CALLEE, 40)]);
    }

    #[test]
    fn dropping_twice_or_when_absent_changes_nothing() {
        Spec::<CallSessionDecider>::given(with(in_call(), [dropped(CALLEE, 40)]))
            .when(CallCommand::Drop { user_id: CALLEE }, &system_ctx(at(41)))
            .then_nothing();
        Spec::<CallSessionDecider>::given(in_call())
            .when(CallCommand::Drop { user_id: STRANGER }, &system_ctx(at(41)))
            .then_nothing();
    }

    #[test]
    fn rejoining_within_the_grace_period_gets_the_place_back() {
        let state = Spec::<CallSessionDecider>::given(with(in_call(), [dropped(CALLEE, 40)]))
            .when(CallCommand::Join, &callee(100))
            .then(vec![CallEvent::ParticipantRejoined {
                user_id: CALLEE,
                at: at(100),
            }]);
        assert!(state.is_joined(CALLEE));
        assert_eq!(state.first_joined_at(), Some(at(20)));
    }

    #[test]
    fn rejoining_after_the_grace_period_is_a_new_join() {
        Spec::<CallSessionDecider>::given(with(in_call(), [dropped(CALLEE, 40)]))
            .when(CallCommand::Join, &callee(101))
            .then(vec![left(CALLEE, 101), joined(CALLEE, 101)]);
    }

    #[test]
    fn the_grace_timer_removes_a_participant_who_did_not_come_back() {
        let state = Spec::<CallSessionDecider>::given(with(in_call(), [dropped(CALLEE, 40)]))
            .when(
                CallCommand::GraceExpired { user_id: CALLEE },
                &system_ctx(at(100)),
            )
            .then(vec![left(CALLEE, 100)]);
        assert!(state.participant(CALLEE).is_none());
        assert_eq!(state.phase(), CallPhase::Accepted);
    }

    #[test]
    fn the_grace_timer_ends_the_call_when_the_dropped_one_was_the_last() {
        let history = with(in_call(), [left(CALLER, 35), dropped(CALLEE, 40)]);
        let state = Spec::<CallSessionDecider>::given(history)
            .when(
                CallCommand::GraceExpired { user_id: CALLEE },
                &system_ctx(at(100)),
            )
            .then(vec![left(CALLEE, 100), ended(REASON_DROPPED, 80, 100)]);
        assert_eq!(state.end_reason(), Some(REASON_DROPPED));
    }

    #[test]
    fn an_early_or_stale_grace_timer_changes_nothing() {
        Spec::<CallSessionDecider>::given(with(in_call(), [dropped(CALLEE, 40)]))
            .when(
                CallCommand::GraceExpired { user_id: CALLEE },
                &system_ctx(at(99)),
            )
            .then_nothing();
        Spec::<CallSessionDecider>::given(with(
            in_call(),
            [
                dropped(CALLEE, 40),
                CallEvent::ParticipantRejoined {
                    user_id: CALLEE,
                    at: at(50),
                },
            ],
        ))
        .when(
            CallCommand::GraceExpired { user_id: CALLEE },
            &system_ctx(at(100)),
        )
        .then_nothing();
        Spec::<CallSessionDecider>::given(with(in_call(), [dropped(CALLEE, 40)]))
            .when(CallCommand::GraceExpired { user_id: CALLEE }, &callee(100))
            .then_error(DomainError::Forbidden("the grace timer is the system's"));
    }

    // --- Media node, media state, chat, reactions ---------------------------------------------

    #[test]
    fn the_first_media_node_assignment_wins() {
        let assigned = CallEvent::MediaNodeAssigned {
            node: "node-a".into(),
            url: Some("wss://node-a.example.org/rtc".into()),
            at: at(20),
        };
        let state = Spec::<CallSessionDecider>::given(vec![requested(), accepted()])
            .when(
                CallCommand::AssignMediaNode {
                    node: "node-a".into(),
                    url: Some(" wss://node-a.example.org/rtc ".into()),
                },
                &system_ctx(at(20)),
            )
            .then(vec![assigned.clone()]);
        assert_eq!(state.media_node(), Some("node-a"));
        assert_eq!(state.media_url(), Some("wss://node-a.example.org/rtc"));
        // A URL browsers could not open, or that is not a WebSocket, is refused.
        for bad in [
            "https://node-a.example.org/rtc",
            "javascript:alert(1)",
            "wss://",
            "wss:///rtc",
            "wss://node a/rtc",
        ] {
            Spec::<CallSessionDecider>::given(vec![requested(), accepted()])
                .when(
                    CallCommand::AssignMediaNode {
                        node: "node-a".into(),
                        url: Some(bad.into()),
                    },
                    &system_ctx(at(20)),
                )
                .then_error_code("invalid");
        }
        Spec::<CallSessionDecider>::given(vec![requested(), accepted(), assigned.clone()])
            .when(
                CallCommand::AssignMediaNode {
                    node: "node-a".into(),
                    url: None,
                },
                &caller(21),
            )
            .then_nothing();
        Spec::<CallSessionDecider>::given(vec![requested(), accepted(), assigned])
            .when(
                CallCommand::AssignMediaNode {
                    node: "node-b".into(),
                    url: None,
                },
                &caller(21),
            )
            .then_error(DomainError::Conflict("the call's media is on another node"));
        Spec::<CallSessionDecider>::given(vec![requested(), accepted()])
            .when(
                CallCommand::AssignMediaNode {
                    node: "node-a".into(),
                    url: None,
                },
                &stranger(21),
            )
            .then_error_code("forbidden");
        Spec::<CallSessionDecider>::given(vec![requested(), accepted()])
            .when(
                CallCommand::AssignMediaNode {
                    node: " ".into(),
                    url: None,
                },
                &caller(21),
            )
            .then_error_code("invalid");
    }

    #[test]
    fn a_participant_mutes_and_turns_the_camera_off() {
        let state = Spec::<CallSessionDecider>::given(in_call())
            .when(
                CallCommand::SetMediaState {
                    audio_muted: true,
                    video_off: true,
                    screen_sharing: false,
                },
                &callee(40),
            )
            .then(vec![CallEvent::MediaStateChanged {
                user_id: CALLEE,
                audio_muted: true,
                video_off: true,
                screen_sharing: false,
                at: at(40),
            }]);
        let media = state
            .participant(CALLEE)
            .map(|p| p.media)
            .unwrap_or_default();
        assert!(media.audio_muted && media.video_off && !media.screen_sharing);
        // The same state again is no news.
        Spec::<CallSessionDecider>::given(in_call())
            .when(
                CallCommand::SetMediaState {
                    audio_muted: false,
                    video_off: false,
                    screen_sharing: false,
                },
                &callee(40),
            )
            .then_nothing();
    }

    #[test]
    fn media_state_chat_and_reactions_need_a_connected_participant() {
        let commands = [
            CallCommand::SetMediaState {
                audio_muted: true,
                video_off: false,
                screen_sharing: false,
            },
            CallCommand::PostMessage {
                message_id: MSG,
                body: "hi".into(),
            },
            CallCommand::SendEmoji {
                emoji: "👍".into()
            },
        ];
        for command in commands {
            Spec::<CallSessionDecider>::given(in_call())
                .when(command.clone(), &stranger(40))
                .then_error_code("forbidden");
            Spec::<CallSessionDecider>::given(with(in_call(), [dropped(CALLEE, 35)]))
                .when(command, &callee(40))
                .then_error_code("forbidden");
        }
    }

    #[test]
    fn the_media_node_reports_stalls_and_recoveries_once() {
        let state = Spec::<CallSessionDecider>::given(in_call())
            .when(
                CallCommand::ReportMedia {
                    user_id: CALLER,
                    stalled: true,
                },
                &system_ctx(at(40)),
            )
            .then(vec![CallEvent::MediaStalled {
                user_id: CALLER,
                at: at(40),
            }]);
        assert!(state.participant(CALLER).is_some_and(|p| p.media.stalled));
        let stalled = with(
            in_call(),
            [CallEvent::MediaStalled {
                user_id: CALLER,
                at: at(40),
            }],
        );
        Spec::<CallSessionDecider>::given(stalled.clone())
            .when(
                CallCommand::ReportMedia {
                    user_id: CALLER,
                    stalled: true,
                },
                &system_ctx(at(41)),
            )
            .then_nothing();
        Spec::<CallSessionDecider>::given(stalled)
            .when(
                CallCommand::ReportMedia {
                    user_id: CALLER,
                    stalled: false,
                },
                &system_ctx(at(42)),
            )
            .then(vec![CallEvent::MediaResumed {
                user_id: CALLER,
                at: at(42),
            }]);
        Spec::<CallSessionDecider>::given(in_call())
            .when(
                CallCommand::ReportMedia {
                    user_id: CALLER,
                    stalled: true,
                },
                &callee(40),
            )
            .then_error_code("forbidden");
    }

    #[test]
    fn a_participant_chats_in_the_call() {
        Spec::<CallSessionDecider>::given(in_call())
            .when(
                CallCommand::PostMessage {
                    message_id: MSG,
                    body: "  can you hear me?  ".into(),
                },
                &caller(40),
            )
            .then(vec![CallEvent::InCallMessagePosted {
                message_id: MSG,
                author: CALLER,
                body: Personal::new(CALLER, "can you hear me?".into()),
                at: at(40),
            }]);
    }

    #[test]
    fn in_call_chat_is_validated() {
        Spec::<CallSessionDecider>::given(in_call())
            .when(
                CallCommand::PostMessage {
                    message_id: MSG,
                    body: " ".into(),
                },
                &caller(40),
            )
            .then_error(DomainError::invalid("body", "must not be blank"));
        Spec::<CallSessionDecider>::given(in_call())
            .when(
                CallCommand::PostMessage {
                    message_id: MSG,
                    body: "말".repeat(CHAT_MAX_CHARS + 1),
                },
                &caller(40),
            )
            .then_error_code("invalid");
    }

    #[test]
    fn reactions_come_from_the_palette() {
        Spec::<CallSessionDecider>::given(in_call())
            .when(
                CallCommand::SendEmoji {
                    emoji: "🎉".into()
                },
                &callee(40),
            )
            .then(vec![CallEvent::EmojiSent {
                by: CALLEE,
                emoji: "🎉".into(),
                at: at(40),
            }]);
        Spec::<CallSessionDecider>::given(in_call())
            .when(
                CallCommand::SendEmoji {
                    emoji: "<script>".into(),
                },
                &callee(40),
            )
            .then_error_code("invalid");
    }

    // --- End ----------------------------------------------------------------------------------

    #[test]
    fn a_participant_hangs_up_with_the_duration() {
        let state = Spec::<CallSessionDecider>::given(in_call())
            .when(end_cmd(REASON_HANGUP), &caller(80))
            .then(vec![ended(REASON_HANGUP, 60, 80)]);
        assert_eq!(state.end_reason(), Some(REASON_HANGUP));
        assert_eq!(state.ended_at(), Some(at(80)));
    }

    #[test]
    fn ending_before_anyone_joined_lasts_zero_seconds() {
        Spec::<CallSessionDecider>::given(vec![requested()])
            .when(end_cmd("cancelled"), &caller(5))
            .then(vec![ended("cancelled", 0, 5)]);
    }

    #[test]
    fn an_operator_may_end_any_call_and_outsiders_none() {
        Spec::<CallSessionDecider>::given(in_call())
            .when(end_cmd("moderated"), &operator(90))
            .then(vec![ended("moderated", 70, 90)]);
        Spec::<CallSessionDecider>::given(in_call())
            .when(end_cmd("hangup"), &stranger(90))
            .then_error_code("forbidden");
    }

    #[test]
    fn ending_an_ended_or_declined_call_changes_nothing() {
        Spec::<CallSessionDecider>::given(with(in_call(), [ended("hangup", 10, 40)]))
            .when(end_cmd("hangup"), &caller(50))
            .then_nothing();
        Spec::<CallSessionDecider>::given(vec![requested(), declined()])
            .when(end_cmd("hangup"), &caller(50))
            .then_nothing();
    }

    #[test]
    fn end_reason_is_validated() {
        Spec::<CallSessionDecider>::given(in_call())
            .when(end_cmd("   "), &caller(50))
            .then_error(DomainError::invalid("reason", "must not be blank"));
        Spec::<CallSessionDecider>::given(in_call())
            .when(end_cmd(&"x".repeat(REASON_MAX_CHARS + 1)), &caller(50))
            .then_error_code("invalid");
    }

    #[test]
    fn a_clock_that_went_back_yields_zero_duration() {
        Spec::<CallSessionDecider>::given(in_call())
            .when(end_cmd("hangup"), &caller(10))
            .then(vec![ended("hangup", 0, 10)]);
    }

    #[test]
    fn a_media_node_assignment_recorded_before_urls_still_reads() {
        let old =
            r#"{"type":"MediaNodeAssigned","data":{"node":"node-a","at":"2026-01-01T00:00:00Z"}}"#;
        let event: CallEvent = serde_json::from_str(old).expect("old event decodes");
        assert!(
            matches!(&event, CallEvent::MediaNodeAssigned { node, url: None, .. } if node == "node-a"),
            "{event:?}"
        );
        let again = serde_json::to_string(&event).expect("encode");
        assert!(!again.contains("url"), "{again}");
    }

    #[test]
    fn events_round_trip_through_json_adjacently_tagged() {
        let events = with(
            in_call(),
            [
                dropped(CALLEE, 40),
                CallEvent::MediaNodeAssigned {
                    node: "n".into(),
                    url: None,
                    at: at(41),
                },
                CallEvent::MediaNodeAssigned {
                    node: "m".into(),
                    url: Some("wss://m.example.org/rtc".into()),
                    at: at(41),
                },
                CallEvent::EmojiSent {
                    by: CALLER,
                    emoji: "👍".into(),
                    at: at(42),
                },
                ended("hangup", 1, 50),
            ],
        );
        for event in events {
            let json = serde_json::to_value(&event).expect("serializes");
            assert_eq!(json["type"], event.event_type());
            let back: CallEvent = serde_json::from_value(json).expect("deserializes");
            assert_eq!(back, event);
        }
    }

    #[test]
    fn kind_is_call() {
        assert_eq!(CallSessionDecider::KIND, StreamKind::Call);
    }
}
