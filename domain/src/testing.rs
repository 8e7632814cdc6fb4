//! A tiny given/when/then harness for deciders, so every business rule reads as a specification.
//!
//! ```
//! use neulbi_domain::testing::{Spec, at, system_ctx, user_id};
//! use neulbi_domain::user::{UserCommand, UserDecider, UserEvent};
//! use neulbi_domain::{Personal, Role};
//!
//! let id = user_id(1);
//! let ctx = system_ctx(at(0));
//! Spec::<UserDecider>::given(vec![])
//!     .when(
//!         UserCommand::Register {
//!             user_id: id,
//!             provider: "google".into(),
//!             subject: "sub-1".into(),
//!             email: "a@example.com".into(),
//!             nickname: "Ann".into(),
//!             role: Role::Client,
//!         },
//!         &ctx,
//!     )
//!     .then(vec![UserEvent::Registered {
//!         user_id: id,
//!         provider: "google".into(),
//!         subject: Personal::new(id, "sub-1".into()),
//!         email: Personal::new(id, "a@example.com".into()),
//!         nickname: Personal::new(id, "Ann".into()),
//!         role: Role::Client,
//!         at: at(0),
//!     }]);
//! ```
//!
//! The module is public (not `cfg(test)`) so the root crate's tests can use the same harness
//! and fixtures. It panics on mismatch by design: it exists only to drive assertions.

use crate::{Actor, Context, Decider, DomainError, Role, UserId};
use chrono::{DateTime, Utc};
use std::fmt::Debug;
use uuid::Uuid;

/// The "given" half of a specification: a decider's history, folded into its state.
pub struct Spec<D: Decider> {
    history: Vec<D::Event>,
    state: D::State,
}

impl<D: Decider> Spec<D> {
    /// Starts a specification from the events already in the stream (empty for a new stream).
    pub fn given(events: Vec<D::Event>) -> Self {
        let state = D::fold(events.iter());
        Self {
            history: events,
            state,
        }
    }

    /// Starts a specification from an empty stream; reads better than `given(vec![])`.
    pub fn given_nothing() -> Self {
        Self::given(Vec::new())
    }

    /// The state folded from the given events, for assertions on the precondition itself.
    pub fn state(&self) -> &D::State {
        &self.state
    }

    /// Decides `command` in the given state, keeping everything needed for a clear failure.
    pub fn when(self, command: D::Command, ctx: &Context) -> Outcome<D> {
        let command_text = format!("{command:?}");
        let result = D::decide(&self.state, command, ctx);
        Outcome {
            history: self.history,
            state: self.state,
            command_text,
            ctx: *ctx,
            result,
        }
    }
}

/// The "then" half of a specification: the decision, checked by one of the `then*` methods.
pub struct Outcome<D: Decider> {
    history: Vec<D::Event>,
    state: D::State,
    command_text: String,
    ctx: Context,
    result: Result<Vec<D::Event>, DomainError>,
}

impl<D: Decider> Outcome<D> {
    /// The raw decision, for tests that need more than equality.
    pub fn result(&self) -> &Result<Vec<D::Event>, DomainError> {
        &self.result
    }

    /// Describes the scenario for panic messages, so a failing test says what was decided.
    fn scenario(&self) -> String {
        format!(
            "\n  given:   {:?}\n  when:    {}\n  as:      {:?} at {}\n",
            self.history, self.command_text, self.ctx.actor, self.ctx.now
        )
    }

    /// Asserts that the command was rejected with exactly `expected`.
    #[track_caller]
    pub fn then_error(self, expected: DomainError) {
        match &self.result {
            Err(actual) => assert_eq!(
                actual,
                &expected,
                "rejected with the wrong error{}",
                self.scenario()
            ),
            Ok(events) => panic!(
                "expected rejection {expected:?}, but the command was accepted with {events:?}{}",
                self.scenario()
            ),
        }
    }

    /// Asserts that the command was rejected with an error of the given code (`"invalid"`, ...),
    /// for validation tests where the exact reason text is not the point.
    #[track_caller]
    pub fn then_error_code(self, code: &str) {
        match &self.result {
            Err(actual) => assert_eq!(
                actual.code(),
                code,
                "rejected with the wrong kind of error ({actual:?}){}",
                self.scenario()
            ),
            Ok(events) => panic!(
                "expected a {code:?} rejection, but the command was accepted with {events:?}{}",
                self.scenario()
            ),
        }
    }
}

impl<D: Decider> Outcome<D>
where
    D::Event: PartialEq,
{
    /// Asserts that the command was accepted with exactly `expected`, and returns the state
    /// after applying them so the test can check accessors too.
    #[track_caller]
    pub fn then(self, expected: Vec<D::Event>) -> D::State {
        let scenario = self.scenario();
        match self.result {
            Ok(actual) => {
                assert_eq!(actual, expected, "accepted with the wrong events{scenario}");
                actual.iter().fold(self.state, D::evolve)
            }
            Err(error) => panic!(
                "expected events {expected:?}, but the command was rejected with {error:?}{scenario}"
            ),
        }
    }

    /// Asserts that the command was accepted but changed nothing (an idempotent repeat).
    #[track_caller]
    pub fn then_nothing(self) -> D::State {
        self.then(Vec::new())
    }
}

impl<D: Decider> Debug for Outcome<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outcome")
            .field("history", &self.history)
            .field("command", &self.command_text)
            .field("result", &self.result)
            .finish()
    }
}

/// A fixed instant `secs` seconds after the Unix epoch, so tests never read a clock.
///
/// # Panics
/// If `secs` is outside chrono's range (a test bug).
pub fn at(secs: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(secs, 0).expect("test timestamp out of range")
}

/// A deterministic user id for fixtures: `user_id(1) != user_id(2)`, stable across runs.
pub const fn user_id(n: u128) -> UserId {
    UserId::from_uuid(Uuid::from_u128(n))
}

/// A context in which signed-in `user` acts in `role` at `now`.
pub const fn user_ctx(user: UserId, role: Role, now: DateTime<Utc>) -> Context {
    Context::new(Actor::user(user, role), now)
}

/// A context in which the system itself acts at `now` (sign-in flow, sweepers).
pub const fn system_ctx(now: DateTime<Utc>) -> Context {
    Context::new(Actor::system(), now)
}

/// Rewrites `events` the way the store returns them once `owner`'s data key is destroyed:
/// every personal field of `owner` becomes the erased form, everything else is untouched.
///
/// It works on the JSON shape (the same one the store encrypts), so it needs no per-event
/// code and catches a personal field an event forgot to mark: such a field stays readable.
/// Test-only because `serde_json` is a dev-dependency of this crate.
///
/// # Panics
/// If an event does not round-trip through JSON (a test bug).
#[cfg(test)]
pub(crate) fn erase_personal_data<E: crate::DomainEvent>(events: &[E], owner: UserId) -> Vec<E> {
    use crate::personal::PERSONAL_KEY;
    use serde_json::{Value, json};

    fn erase(value: &mut Value, owner: &Value) {
        match value {
            Value::Object(map) => {
                if let Some(inner) = map.get_mut(PERSONAL_KEY) {
                    if inner.get("owner") == Some(owner) {
                        *inner = json!({ "owner": owner, "erased": true });
                    }
                    return;
                }
                map.values_mut().for_each(|v| erase(v, owner));
            }
            Value::Array(items) => items.iter_mut().for_each(|v| erase(v, owner)),
            _ => {}
        }
    }

    let owner = json!(owner);
    events
        .iter()
        .map(|event| {
            let mut value = serde_json::to_value(event).expect("event serializes");
            erase(&mut value, &owner);
            serde_json::from_value(value).expect("erased event deserializes")
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Personal;
    use crate::user::{UserCommand, UserDecider, UserEvent};

    fn registered() -> UserEvent {
        let id = user_id(1);
        UserEvent::Registered {
            user_id: id,
            provider: "google".into(),
            subject: Personal::new(id, "s".into()),
            email: Personal::new(id, "a@example.com".into()),
            nickname: Personal::new(id, "Ann".into()),
            role: Role::Client,
            at: at(0),
        }
    }

    #[test]
    #[should_panic(expected = "accepted with the wrong events")]
    fn then_reports_wrong_events() {
        Spec::<UserDecider>::given(vec![registered()])
            .when(UserCommand::Deactivate, &system_ctx(at(1)))
            .then(vec![UserEvent::Deactivated { at: at(2) }]);
    }

    #[test]
    #[should_panic(expected = "but the command was rejected with")]
    fn then_reports_an_unexpected_rejection() {
        Spec::<UserDecider>::given_nothing()
            .when(UserCommand::Deactivate, &system_ctx(at(1)))
            .then(vec![]);
    }

    #[test]
    #[should_panic(expected = "but the command was accepted with")]
    fn then_error_reports_an_unexpected_acceptance() {
        Spec::<UserDecider>::given(vec![registered()])
            .when(UserCommand::Deactivate, &system_ctx(at(1)))
            .then_error(DomainError::NotFound("user"));
    }

    #[test]
    #[should_panic(expected = "rejected with the wrong error")]
    fn then_error_reports_the_wrong_error() {
        Spec::<UserDecider>::given_nothing()
            .when(UserCommand::Deactivate, &system_ctx(at(1)))
            .then_error(DomainError::Conflict("nope"));
    }

    #[test]
    fn erase_personal_data_erases_only_the_owners_fields() {
        let mine = registered();
        let theirs = UserEvent::ProfileUpdated {
            nickname: Personal::new(user_id(2), "Bob".into()),
            at: at(1),
        };
        let erased = erase_personal_data(&[mine, theirs.clone()], user_id(1));
        let UserEvent::Registered {
            email, provider, ..
        } = &erased[0]
        else {
            panic!("expected Registered, got {:?}", erased[0]);
        };
        assert_eq!(email, &Personal::Erased { owner: user_id(1) });
        assert_eq!(provider, "google");
        assert_eq!(erased[1], theirs);
    }

    #[test]
    fn then_returns_the_state_after_the_new_events() {
        let state = Spec::<UserDecider>::given(vec![registered()])
            .when(UserCommand::Deactivate, &system_ctx(at(1)))
            .then(vec![UserEvent::Deactivated { at: at(1) }]);
        assert!(state.is_deactivated());
    }
}
