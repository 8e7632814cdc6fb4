//! The CallSession aggregate (`call-{uuid}`): one video counseling call, from ring to hang-up.

use crate::{CallId, Context, Decider, DomainError, DomainEvent, RoomId, StreamKind, UserId};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Longest end reason, in characters; reasons are short codes such as `hangup` or `timeout`.
pub const REASON_MAX_CHARS: usize = 128;
/// The reason recorded when the last participant leaves and the call ends by itself.
pub const REASON_ALL_LEFT: &str = "all_left";

/// Decides the CallSession aggregate's commands; see [`CallCommand`] for the rules.
pub struct CallSessionDecider;

/// What can be asked of a call session. The acting user comes from the [`Context`].
#[derive(Debug, Clone)]
pub enum CallCommand {
    /// Rings `invitee`; the acting user is the requester.
    Request {
        /// The call's id (also the stream id).
        call_id: CallId,
        /// The chat room the call belongs to.
        room_id: RoomId,
        /// The user being called; must differ from the requester.
        invitee: UserId,
    },
    /// The invitee picks up.
    Accept,
    /// The invitee refuses.
    Decline,
    /// The requester or invitee enters the accepted call's media session.
    Join,
    /// The acting participant leaves; the call ends when the last one does.
    Leave,
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
    /// A user rang another.
    Requested {
        /// The call's id.
        call_id: CallId,
        /// The chat room the call belongs to.
        room_id: RoomId,
        /// Who rang.
        requested_by: UserId,
        /// Who is being rung.
        invitee: UserId,
        /// When the call was requested.
        at: DateTime<Utc>,
    },
    /// The invitee picked up.
    Accepted {
        /// The invitee.
        by: UserId,
        /// When they accepted.
        at: DateTime<Utc>,
    },
    /// The invitee refused; the call is over.
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
    /// A participant left the media session.
    ParticipantLeft {
        /// Who left.
        user_id: UserId,
        /// When they left.
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
            Self::ParticipantLeft { .. } => "ParticipantLeft",
            Self::Ended { .. } => "Ended",
        }
    }
}

/// Where a call is in its life; signaling branches on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CallPhase {
    /// No call has been requested on this stream yet.
    #[default]
    Idle,
    /// Ringing: waiting for the invitee to accept or decline.
    Requested,
    /// Accepted: parties may join (and may be in the call).
    Accepted,
    /// The invitee declined; terminal.
    Declined,
    /// The call ended; terminal.
    Ended,
}

/// Who the call is between, fixed when it is requested.
#[derive(Debug, Clone, Copy)]
struct Request {
    call_id: CallId,
    room_id: RoomId,
    requested_by: UserId,
    invitee: UserId,
    at: DateTime<Utc>,
}

/// The call as far as the rules need it; `Default` is "not requested".
#[derive(Debug, Clone, Default)]
pub struct CallState {
    request: Option<Request>,
    phase: CallPhase,
    accepted_at: Option<DateTime<Utc>>,
    declined_at: Option<DateTime<Utc>>,
    /// Participants currently in the media session, in join order.
    participants: Vec<UserId>,
    first_joined_at: Option<DateTime<Utc>>,
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
        self.request.map(|r| r.call_id)
    }

    /// The chat room the call belongs to.
    pub fn room_id(&self) -> Option<RoomId> {
        self.request.map(|r| r.room_id)
    }

    /// Who rang.
    pub fn requested_by(&self) -> Option<UserId> {
        self.request.map(|r| r.requested_by)
    }

    /// Who was rung.
    pub fn invitee(&self) -> Option<UserId> {
        self.request.map(|r| r.invitee)
    }

    /// When the call was requested.
    pub fn requested_at(&self) -> Option<DateTime<Utc>> {
        self.request.map(|r| r.at)
    }

    /// True if `user` is the requester or the invitee.
    pub fn is_party(&self, user: UserId) -> bool {
        self.request
            .is_some_and(|r| r.requested_by == user || r.invitee == user)
    }

    /// True if `user` is currently in the media session.
    pub fn is_joined(&self, user: UserId) -> bool {
        self.participants.contains(&user)
    }

    /// The users currently in the media session, in join order.
    pub fn participants(&self) -> &[UserId] {
        &self.participants
    }

    /// When the invitee accepted.
    pub fn accepted_at(&self) -> Option<DateTime<Utc>> {
        self.accepted_at
    }

    /// When the invitee declined.
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

    /// Whole seconds from the first join to `now`; 0 if nobody joined or the clock went back.
    fn duration_until(&self, now: DateTime<Utc>) -> u64 {
        self.first_joined_at.map_or(0, |start| {
            u64::try_from((now - start).num_seconds()).unwrap_or(0)
        })
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
        // Most commands may only come from the requester or the invitee, as themselves.
        let party = |what: &'static str| {
            actor
                .user_id
                .filter(|&u| state.is_party(u))
                .ok_or(DomainError::Forbidden(what))
        };

        match command {
            CallCommand::Request {
                call_id,
                room_id,
                invitee,
            } => {
                let requested_by = actor
                    .user_id
                    .ok_or(DomainError::Forbidden("a call is requested by a user"))?;
                if state.is_requested() {
                    return Err(DomainError::AlreadyExists("call"));
                }
                if requested_by == invitee {
                    return Err(DomainError::invalid(
                        "invitee",
                        "must be someone other than the requester",
                    ));
                }
                Ok(vec![CallEvent::Requested {
                    call_id,
                    room_id,
                    requested_by,
                    invitee,
                    at: now,
                }])
            }
            _ if !state.is_requested() => Err(DomainError::NotFound("call")),
            CallCommand::Accept => {
                let by = actor
                    .user_id
                    .filter(|&u| state.invitee() == Some(u))
                    .ok_or(DomainError::Forbidden("only the invitee may accept"))?;
                match state.phase {
                    CallPhase::Requested => Ok(vec![CallEvent::Accepted { by, at: now }]),
                    CallPhase::Accepted => Ok(vec![]),
                    CallPhase::Declined => Err(DomainError::Conflict("call was declined")),
                    CallPhase::Ended | CallPhase::Idle => {
                        Err(DomainError::Conflict("call has ended"))
                    }
                }
            }
            CallCommand::Decline => {
                let by = actor
                    .user_id
                    .filter(|&u| state.invitee() == Some(u))
                    .ok_or(DomainError::Forbidden("only the invitee may decline"))?;
                match state.phase {
                    CallPhase::Requested => Ok(vec![CallEvent::Declined { by, at: now }]),
                    CallPhase::Declined => Ok(vec![]),
                    CallPhase::Accepted => Err(DomainError::Conflict("call was already accepted")),
                    CallPhase::Ended | CallPhase::Idle => {
                        Err(DomainError::Conflict("call has ended"))
                    }
                }
            }
            CallCommand::Join => {
                let user = party("only the requester or the invitee may join")?;
                match state.phase {
                    CallPhase::Accepted if state.is_joined(user) => Ok(vec![]),
                    CallPhase::Accepted => Ok(vec![CallEvent::ParticipantJoined {
                        user_id: user,
                        at: now,
                    }]),
                    CallPhase::Requested => {
                        Err(DomainError::Conflict("call has not been accepted yet"))
                    }
                    CallPhase::Declined => Err(DomainError::Conflict("call was declined")),
                    CallPhase::Ended | CallPhase::Idle => {
                        Err(DomainError::Conflict("call has ended"))
                    }
                }
            }
            CallCommand::Leave => {
                let user = party("only the requester or the invitee may leave")?;
                if !state.is_joined(user) {
                    return Ok(vec![]);
                }
                let mut events = vec![CallEvent::ParticipantLeft {
                    user_id: user,
                    at: now,
                }];
                // The last one out hangs up: an empty media session has nothing left to do.
                if state.participants.iter().all(|&p| p == user) {
                    events.push(CallEvent::Ended {
                        reason: REASON_ALL_LEFT.to_owned(),
                        duration_secs: state.duration_until(now),
                        at: now,
                    });
                }
                Ok(events)
            }
            CallCommand::End { reason } => {
                let is_party = actor.user_id.is_some_and(|u| state.is_party(u));
                if !(is_party || actor.is_privileged()) {
                    return Err(DomainError::Forbidden(
                        "only the requester, the invitee or an operator may end a call",
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
                invitee,
                at,
            } => {
                state.request = Some(Request {
                    call_id: *call_id,
                    room_id: *room_id,
                    requested_by: *requested_by,
                    invitee: *invitee,
                    at: *at,
                });
                state.phase = CallPhase::Requested;
            }
            CallEvent::Accepted { at, .. } => {
                state.phase = CallPhase::Accepted;
                state.accepted_at = Some(*at);
            }
            CallEvent::Declined { at, .. } => {
                state.phase = CallPhase::Declined;
                state.declined_at = Some(*at);
            }
            CallEvent::ParticipantJoined { user_id, at } => {
                if !state.participants.contains(user_id) {
                    state.participants.push(*user_id);
                }
                state.first_joined_at.get_or_insert(*at);
            }
            CallEvent::ParticipantLeft { user_id, .. } => {
                state.participants.retain(|p| p != user_id);
            }
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
    const CALLER: UserId = user_id(1);
    const CALLEE: UserId = user_id(2);
    const STRANGER: UserId = user_id(3);

    fn caller(secs: i64) -> Context {
        user_ctx(CALLER, Role::Client, at(secs))
    }

    fn callee(secs: i64) -> Context {
        user_ctx(CALLEE, Role::Counselor, at(secs))
    }

    fn stranger(secs: i64) -> Context {
        user_ctx(STRANGER, Role::Client, at(secs))
    }

    fn operator(secs: i64) -> Context {
        user_ctx(user_id(99), Role::Operator, at(secs))
    }

    fn requested() -> CallEvent {
        CallEvent::Requested {
            call_id: CALL,
            room_id: ROOM,
            requested_by: CALLER,
            invitee: CALLEE,
            at: at(0),
        }
    }

    fn accepted() -> CallEvent {
        CallEvent::Accepted {
            by: CALLEE,
            at: at(10),
        }
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

    fn ended(reason: &str, duration_secs: u64, secs: i64) -> CallEvent {
        CallEvent::Ended {
            reason: reason.into(),
            duration_secs,
            at: at(secs),
        }
    }

    fn request_cmd(invitee: UserId) -> CallCommand {
        CallCommand::Request {
            call_id: CALL,
            room_id: ROOM,
            invitee,
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

    // --- Request ------------------------------------------------------------------------------

    #[test]
    fn user_requests_a_call() {
        let state = Spec::<CallSessionDecider>::given_nothing()
            .when(request_cmd(CALLEE), &caller(0))
            .then(vec![requested()]);
        assert_eq!(state.phase(), CallPhase::Requested);
        assert_eq!(state.requested_by(), Some(CALLER));
        assert_eq!(state.invitee(), Some(CALLEE));
        assert_eq!(state.room_id(), Some(ROOM));
        assert!(state.is_party(CALLER) && state.is_party(CALLEE));
        assert!(!state.is_party(STRANGER));
    }

    #[test]
    fn requesting_twice_is_rejected() {
        Spec::<CallSessionDecider>::given(vec![requested()])
            .when(request_cmd(CALLEE), &caller(1))
            .then_error(DomainError::AlreadyExists("call"));
    }

    #[test]
    fn calling_yourself_is_invalid() {
        Spec::<CallSessionDecider>::given_nothing()
            .when(request_cmd(CALLER), &caller(0))
            .then_error(DomainError::invalid(
                "invitee",
                "must be someone other than the requester",
            ));
    }

    #[test]
    fn the_system_cannot_request_a_call() {
        Spec::<CallSessionDecider>::given_nothing()
            .when(request_cmd(CALLEE), &system_ctx(at(0)))
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
        ];
        for command in commands {
            Spec::<CallSessionDecider>::given_nothing()
                .when(command, &callee(1))
                .then_error(DomainError::NotFound("call"));
        }
    }

    // --- Accept / Decline ---------------------------------------------------------------------

    #[test]
    fn invitee_accepts() {
        let state = Spec::<CallSessionDecider>::given(vec![requested()])
            .when(CallCommand::Accept, &callee(10))
            .then(vec![accepted()]);
        assert_eq!(state.phase(), CallPhase::Accepted);
        assert_eq!(state.accepted_at(), Some(at(10)));
    }

    #[test]
    fn only_the_invitee_accepts() {
        for ctx in [caller(10), stranger(10), operator(10)] {
            Spec::<CallSessionDecider>::given(vec![requested()])
                .when(CallCommand::Accept, &ctx)
                .then_error(DomainError::Forbidden("only the invitee may accept"));
        }
    }

    #[test]
    fn accepting_twice_changes_nothing() {
        Spec::<CallSessionDecider>::given(vec![requested(), accepted()])
            .when(CallCommand::Accept, &callee(11))
            .then_nothing();
    }

    #[test]
    fn accepting_a_declined_or_ended_call_conflicts() {
        Spec::<CallSessionDecider>::given(vec![requested(), declined()])
            .when(CallCommand::Accept, &callee(11))
            .then_error(DomainError::Conflict("call was declined"));
        Spec::<CallSessionDecider>::given(vec![requested(), ended("cancelled", 0, 5)])
            .when(CallCommand::Accept, &callee(11))
            .then_error(DomainError::Conflict("call has ended"));
    }

    #[test]
    fn invitee_declines() {
        let state = Spec::<CallSessionDecider>::given(vec![requested()])
            .when(CallCommand::Decline, &callee(10))
            .then(vec![declined()]);
        assert_eq!(state.phase(), CallPhase::Declined);
        assert!(state.is_over());
        assert_eq!(state.declined_at(), Some(at(10)));
    }

    #[test]
    fn only_the_invitee_declines() {
        Spec::<CallSessionDecider>::given(vec![requested()])
            .when(CallCommand::Decline, &caller(10))
            .then_error(DomainError::Forbidden("only the invitee may decline"));
    }

    #[test]
    fn declining_twice_changes_nothing() {
        Spec::<CallSessionDecider>::given(vec![requested(), declined()])
            .when(CallCommand::Decline, &callee(11))
            .then_nothing();
    }

    #[test]
    fn declining_an_accepted_call_conflicts() {
        Spec::<CallSessionDecider>::given(vec![requested(), accepted()])
            .when(CallCommand::Decline, &callee(11))
            .then_error(DomainError::Conflict("call was already accepted"));
    }

    // --- Join ---------------------------------------------------------------------------------

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
        assert_eq!(state.participants(), &[CALLER, CALLEE]);
        assert_eq!(state.first_joined_at(), Some(at(20)));
    }

    #[test]
    fn outsiders_cannot_join() {
        for ctx in [stranger(20), operator(20)] {
            Spec::<CallSessionDecider>::given(vec![requested(), accepted()])
                .when(CallCommand::Join, &ctx)
                .then_error(DomainError::Forbidden(
                    "only the requester or the invitee may join",
                ));
        }
    }

    #[test]
    fn joining_before_accept_conflicts() {
        Spec::<CallSessionDecider>::given(vec![requested()])
            .when(CallCommand::Join, &caller(5))
            .then_error(DomainError::Conflict("call has not been accepted yet"));
    }

    #[test]
    fn joining_an_ended_call_conflicts() {
        let mut history = in_call();
        history.push(ended("hangup", 40, 60));
        Spec::<CallSessionDecider>::given(history)
            .when(CallCommand::Join, &caller(70))
            .then_error(DomainError::Conflict("call has ended"));
    }

    #[test]
    fn joining_a_declined_call_conflicts() {
        Spec::<CallSessionDecider>::given(vec![requested(), declined()])
            .when(CallCommand::Join, &caller(20))
            .then_error(DomainError::Conflict("call was declined"));
    }

    #[test]
    fn joining_twice_changes_nothing() {
        Spec::<CallSessionDecider>::given(in_call())
            .when(CallCommand::Join, &caller(40))
            .then_nothing();
    }

    // --- Leave --------------------------------------------------------------------------------

    #[test]
    fn a_participant_leaves_while_the_other_stays() {
        let state = Spec::<CallSessionDecider>::given(in_call())
            .when(CallCommand::Leave, &caller(50))
            .then(vec![left(CALLER, 50)]);
        assert_eq!(state.participants(), &[CALLEE]);
        assert_eq!(state.phase(), CallPhase::Accepted);
    }

    #[test]
    fn the_last_one_out_ends_the_call() {
        let mut history = in_call();
        history.push(left(CALLER, 50));
        let state = Spec::<CallSessionDecider>::given(history)
            .when(CallCommand::Leave, &callee(80))
            .then(vec![left(CALLEE, 80), ended(REASON_ALL_LEFT, 60, 80)]);
        assert!(state.is_ended());
        assert_eq!(state.end_reason(), Some(REASON_ALL_LEFT));
        assert_eq!(state.duration_secs(), Some(60));
        assert!(state.participants().is_empty());
    }

    #[test]
    fn leaving_when_not_joined_changes_nothing() {
        Spec::<CallSessionDecider>::given(vec![requested(), accepted(), joined(CALLER, 20)])
            .when(CallCommand::Leave, &callee(30))
            .then_nothing();
        Spec::<CallSessionDecider>::given(vec![requested()])
            .when(CallCommand::Leave, &caller(5))
            .then_nothing();
    }

    #[test]
    fn leaving_an_ended_call_changes_nothing() {
        let mut history = in_call();
        history.push(ended("hangup", 40, 60));
        Spec::<CallSessionDecider>::given(history)
            .when(CallCommand::Leave, &caller(70))
            .then_nothing();
    }

    #[test]
    fn outsiders_cannot_leave() {
        Spec::<CallSessionDecider>::given(in_call())
            .when(CallCommand::Leave, &stranger(50))
            .then_error(DomainError::Forbidden(
                "only the requester or the invitee may leave",
            ));
    }

    // --- End ----------------------------------------------------------------------------------

    #[test]
    fn a_participant_ends_the_call_with_its_duration() {
        let state = Spec::<CallSessionDecider>::given(in_call())
            .when(end_cmd(" hangup "), &callee(95))
            .then(vec![ended("hangup", 75, 95)]);
        assert!(state.is_ended());
        assert_eq!(state.ended_at(), Some(at(95)));
        assert!(!state.is_joined(CALLER));
    }

    #[test]
    fn ending_before_anyone_joined_lasts_zero_seconds() {
        // The requester cancels while it is still ringing.
        Spec::<CallSessionDecider>::given(vec![requested()])
            .when(end_cmd("cancelled"), &caller(5))
            .then(vec![ended("cancelled", 0, 5)]);
        // Accepted, but nobody made it into the media session.
        Spec::<CallSessionDecider>::given(vec![requested(), accepted()])
            .when(end_cmd("timeout"), &system_ctx(at(70)))
            .then(vec![ended("timeout", 0, 70)]);
    }

    #[test]
    fn an_operator_may_end_any_call() {
        Spec::<CallSessionDecider>::given(in_call())
            .when(end_cmd("moderated"), &operator(50))
            .then(vec![ended("moderated", 30, 50)]);
    }

    #[test]
    fn outsiders_cannot_end_a_call() {
        Spec::<CallSessionDecider>::given(in_call())
            .when(end_cmd("hangup"), &stranger(50))
            .then_error(DomainError::Forbidden(
                "only the requester, the invitee or an operator may end a call",
            ));
    }

    #[test]
    fn ending_an_ended_or_declined_call_changes_nothing() {
        let mut history = in_call();
        history.push(ended("hangup", 40, 60));
        Spec::<CallSessionDecider>::given(history)
            .when(end_cmd("hangup"), &caller(70))
            .then_nothing();
        Spec::<CallSessionDecider>::given(vec![requested(), declined()])
            .when(end_cmd("hangup"), &caller(70))
            .then_nothing();
    }

    #[test]
    fn end_reason_is_validated() {
        Spec::<CallSessionDecider>::given(in_call())
            .when(end_cmd("  "), &caller(50))
            .then_error(DomainError::invalid("reason", "must not be blank"));
        Spec::<CallSessionDecider>::given(in_call())
            .when(end_cmd(&"r".repeat(129)), &caller(50))
            .then_error(DomainError::invalid(
                "reason",
                "must be at most 128 characters",
            ));
    }

    #[test]
    fn a_clock_that_went_back_yields_zero_duration() {
        Spec::<CallSessionDecider>::given(in_call())
            .when(end_cmd("hangup"), &caller(10))
            .then(vec![ended("hangup", 0, 10)]);
    }

    // --- Serialization ------------------------------------------------------------------------

    #[test]
    fn events_round_trip_through_json_adjacently_tagged() {
        let events = vec![
            requested(),
            accepted(),
            declined(),
            joined(CALLER, 20),
            left(CALLER, 30),
            ended("hangup", 10, 30),
        ];
        for event in events {
            let json = serde_json::to_value(&event).expect("serialize");
            assert_eq!(json["type"], event.event_type());
            assert!(json["data"].is_object(), "{json}");
            let back: CallEvent = serde_json::from_value(json).expect("deserialize");
            assert_eq!(back, event);
        }
        let json = serde_json::to_value(ended("all_left", 42, 1)).expect("serialize");
        assert_eq!(json["type"], "Ended");
        assert_eq!(json["data"]["duration_secs"], 42);
        assert_eq!(json["data"]["reason"], "all_left");
    }

    #[test]
    fn kind_is_call() {
        assert_eq!(CallSessionDecider::KIND, StreamKind::Call);
    }
}
