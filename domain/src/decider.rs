//! The decider abstraction every aggregate implements, and the context a command runs in.

use crate::{DomainError, StreamKind, UserId};
use chrono::{DateTime, Utc};
use serde::{Serialize, de::DeserializeOwned};
use std::fmt::Debug;

/// What a user is allowed to be; authorization rules in the deciders branch on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// A person seeking counseling.
    Client,
    /// A counselor who may publish a directory profile and accept calls.
    Counselor,
    /// An operator acting through the CLI or admin tools.
    Operator,
    /// The system itself (sign-in flow, sweepers, timers).
    System,
}

/// Who issues a command. Authorization depends on it, so it travels with every command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Actor {
    /// The acting user, if the command comes from a signed-in person.
    pub user_id: Option<UserId>,
    /// The role the actor acts in.
    pub role: Role,
}

impl Actor {
    /// A signed-in user acting in `role`.
    pub const fn user(user_id: UserId, role: Role) -> Self {
        Self {
            user_id: Some(user_id),
            role,
        }
    }

    /// The system itself (no person behind the command).
    pub const fn system() -> Self {
        Self {
            user_id: None,
            role: Role::System,
        }
    }

    /// An operator acting through the CLI or admin tools (no person's account behind it).
    pub const fn operator() -> Self {
        Self {
            user_id: None,
            role: Role::Operator,
        }
    }

    /// True if the actor is exactly this user.
    pub fn is(&self, user: UserId) -> bool {
        self.user_id == Some(user)
    }

    /// True for operators and the system, which may act on behalf of anyone.
    pub fn is_privileged(&self) -> bool {
        matches!(self.role, Role::Operator | Role::System)
    }
}

/// Everything a decision may depend on besides state and command: who asks and when.
/// Time is passed in because the domain never reads a clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Context {
    /// The acting user and role.
    pub actor: Actor,
    /// The time the command is decided at.
    pub now: DateTime<Utc>,
}

impl Context {
    /// A context for `actor` at time `now`.
    pub const fn new(actor: Actor, now: DateTime<Utc>) -> Self {
        Self { actor, now }
    }
}

/// An event type stored in the log: its name and schema version go into the envelope.
///
/// Events serialize adjacently tagged (`{"type": ..., "data": ...}`) so the store can keep the
/// type name and the data apart, and old names keep working when fields are added.
pub trait DomainEvent:
    Serialize + DeserializeOwned + Clone + Debug + Send + Sync + 'static
{
    /// The event's type name, as stored in the envelope (`MessagePosted`, ...).
    fn event_type(&self) -> &'static str;

    /// The schema version of this event type's data. Bump it when the shape changes and add
    /// an upcaster for the old version.
    fn schema_version(&self) -> u32 {
        1
    }
}

/// An aggregate as a pair of pure functions. The actor runtime calls `decide` with the current
/// state, appends the resulting events, and folds them in with `evolve`.
pub trait Decider: 'static {
    /// The state folded from the stream's events; `Default` is the state of an empty stream.
    type State: Default + Clone + Debug + Send + Unpin + 'static;
    /// The commands this aggregate accepts.
    type Command: Clone + Debug + Send + 'static;
    /// The events this aggregate emits.
    type Event: DomainEvent;

    /// The stream kind this aggregate lives in.
    const KIND: StreamKind;

    /// Decides which events follow from `command` in `state`. An empty vector means the command
    /// changed nothing (an idempotent repeat) and nothing is appended.
    fn decide(
        state: &Self::State,
        command: Self::Command,
        ctx: &Context,
    ) -> Result<Vec<Self::Event>, DomainError>;

    /// Applies one event to the state. Never fails: events are facts.
    fn evolve(state: Self::State, event: &Self::Event) -> Self::State;

    /// Folds a sequence of events from the initial state.
    fn fold<'a>(events: impl IntoIterator<Item = &'a Self::Event>) -> Self::State {
        events
            .into_iter()
            .fold(Self::State::default(), |s, e| Self::evolve(s, e))
    }
}
