//! The installation's security journal: facts that belong to no one person's stream, such as
//! key rotations and failed sign-ins on accounts that do not exist.
//!
//! The journal is one `system-{uuid}` stream per UTC day ([`journal_id`]), so no stream grows
//! without bound however many attempts a day brings, and each holds only ids, key ids and
//! method names — never an e-mail address or an IP.

use crate::user::bounded_text;
use crate::{Context, Decider, DomainError, DomainEvent, StreamKind};
use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The event types `neulbi audit security` lists from the journal.
pub const SECURITY_EVENTS: [&str; 2] = ["KeysRotated", "UnknownAccountSignInFailed"];

/// Longest key id a rotation names (KMS ARNs are about 100 characters).
pub const KEY_ID_MAX_CHARS: usize = 256;

/// Most previous keys one rotation lists.
pub const FROM_MAX: usize = 64;

/// Longest sign-in method name (`password` or a provider's name).
pub const METHOD_MAX_CHARS: usize = 64;

/// The high half of every journal id: "NEULBI" and a purpose tag, so journal ids never
/// collide with the random UUIDs of users, rooms and calls (those carry version bits here).
const JOURNAL_TAG: u64 = 0x4e45_554c_4249_0001;

/// The id of the journal stream for `day`. Deterministic, so every node writes the same day to
/// the same stream.
pub fn journal_id(day: NaiveDate) -> Uuid {
    let days = day.signed_duration_since(NaiveDate::default()).num_days();
    Uuid::from_u64_pair(JOURNAL_TAG, days as u64)
}

/// The journal stream a command decided at `now` belongs to.
pub fn journal_for(now: DateTime<Utc>) -> Uuid {
    journal_id(now.date_naive())
}

/// Which keys were rotated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyKind {
    /// The key-encryption key that wraps data keys, signing keys and secrets.
    Kek,
    /// The key that signs access tokens.
    Signing,
}

impl KeyKind {
    /// The name operators see (`kek`, `signing`).
    pub const fn as_str(self) -> &'static str {
        match self {
            KeyKind::Kek => "kek",
            KeyKind::Signing => "signing",
        }
    }
}

/// What may be recorded in the journal. Only operators and the system record; a signed-in
/// person never writes here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SystemCommand {
    /// Keys were rotated: `rows` stored keys moved from the keys in `from` to `to`.
    RecordKeyRotation {
        /// Which keys.
        what: KeyKind,
        /// The key ids rotated away from (may be empty for a first signing key).
        from: Vec<String>,
        /// The key id now in use.
        to: String,
        /// How many stored rows were rewrapped (a signing rotation adds one key).
        rows: u64,
    },
    /// Someone tried to sign in to an account that does not exist (or is not yet registered).
    RecordUnknownSignIn {
        /// How they tried: `password` or an identity provider's name.
        method: String,
    },
}

/// The facts recorded in a `system-{uuid}` journal stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum SystemEvent {
    /// Keys were rotated.
    KeysRotated {
        /// Which keys.
        what: KeyKind,
        /// The key ids rotated away from.
        from: Vec<String>,
        /// The key id now in use.
        to: String,
        /// How many stored rows moved.
        rows: u64,
        /// When.
        at: DateTime<Utc>,
    },
    /// A sign-in failed on an account that does not exist.
    UnknownAccountSignInFailed {
        /// How they tried.
        method: String,
        /// When.
        at: DateTime<Utc>,
    },
}

impl DomainEvent for SystemEvent {
    fn event_type(&self) -> &'static str {
        match self {
            SystemEvent::KeysRotated { .. } => "KeysRotated",
            SystemEvent::UnknownAccountSignInFailed { .. } => "UnknownAccountSignInFailed",
        }
    }
}

impl SystemEvent {
    /// A one-line summary with no personal data, for the audit listing.
    pub fn summary(&self) -> String {
        match self {
            SystemEvent::KeysRotated {
                what,
                from,
                to,
                rows,
                ..
            } => {
                let from = if from.is_empty() {
                    "-".to_owned()
                } else {
                    from.join(",")
                };
                format!("{} {from} -> {to} ({rows} rows)", what.as_str())
            }
            SystemEvent::UnknownAccountSignInFailed { method, .. } => format!("method={method}"),
        }
    }
}

/// What the journal remembers: how many facts it holds (nothing in it constrains a decision).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SystemState {
    recorded: u64,
}

impl SystemState {
    /// How many facts the stream holds.
    pub fn recorded(&self) -> u64 {
        self.recorded
    }
}

/// The journal's decider.
#[derive(Debug)]
pub struct SystemDecider;

impl Decider for SystemDecider {
    type State = SystemState;
    type Command = SystemCommand;
    type Event = SystemEvent;

    const KIND: StreamKind = StreamKind::System;

    fn decide(
        _state: &SystemState,
        command: SystemCommand,
        ctx: &Context,
    ) -> Result<Vec<SystemEvent>, DomainError> {
        if !ctx.actor.is_privileged() {
            return Err(DomainError::Forbidden(
                "only operators and the system write the security journal",
            ));
        }
        let at = ctx.now;
        match command {
            SystemCommand::RecordKeyRotation {
                what,
                from,
                to,
                rows,
            } => {
                let to = key_id("to", &to)?;
                if from.len() > FROM_MAX {
                    return Err(DomainError::invalid(
                        "from",
                        format!("must list at most {FROM_MAX} keys"),
                    ));
                }
                let mut previous = Vec::with_capacity(from.len());
                for id in &from {
                    let id = key_id("from", id)?;
                    if id == to {
                        return Err(DomainError::invalid(
                            "from",
                            "must not contain the key rotated to",
                        ));
                    }
                    if !previous.contains(&id) {
                        previous.push(id);
                    }
                }
                if what == KeyKind::Kek && (previous.is_empty() || rows == 0) {
                    return Err(DomainError::invalid(
                        "rows",
                        "a KEK rotation moves at least one row from at least one previous KEK",
                    ));
                }
                Ok(vec![SystemEvent::KeysRotated {
                    what,
                    from: previous,
                    to,
                    rows,
                    at,
                }])
            }
            SystemCommand::RecordUnknownSignIn { method } => {
                let method = bounded_text("method", &method, 1, METHOD_MAX_CHARS)?;
                Ok(vec![SystemEvent::UnknownAccountSignInFailed { method, at }])
            }
        }
    }

    fn evolve(state: SystemState, _event: &SystemEvent) -> SystemState {
        SystemState {
            recorded: state.recorded + 1,
        }
    }
}

/// A key id: 1..=256 printable ASCII characters without spaces, so it prints on one line.
fn key_id(field: &'static str, value: &str) -> Result<String, DomainError> {
    let id = bounded_text(field, value, 1, KEY_ID_MAX_CHARS)?;
    if !id.chars().all(|c| c.is_ascii_graphic()) {
        return Err(DomainError::invalid(field, "must be printable ASCII"));
    }
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{Spec, at, system_ctx, user_ctx, user_id};
    use crate::{Actor, Role};

    fn operator(now: DateTime<Utc>) -> Context {
        Context::new(Actor::operator(), now)
    }

    fn kek_rotation(from: &[&str], to: &str, rows: u64) -> SystemCommand {
        SystemCommand::RecordKeyRotation {
            what: KeyKind::Kek,
            from: from.iter().map(|s| (*s).to_owned()).collect(),
            to: to.into(),
            rows,
        }
    }

    #[test]
    fn an_operator_records_a_kek_rotation() {
        let state = Spec::<SystemDecider>::given_nothing()
            .when(
                kek_rotation(&["local:aa", "local:aa", " local:bb "], "kms:arn", 12),
                &operator(at(5)),
            )
            .then(vec![SystemEvent::KeysRotated {
                what: KeyKind::Kek,
                from: vec!["local:aa".into(), "local:bb".into()],
                to: "kms:arn".into(),
                rows: 12,
                at: at(5),
            }]);
        assert_eq!(state.recorded(), 1);
    }

    #[test]
    fn a_first_signing_key_has_no_predecessor() {
        Spec::<SystemDecider>::given_nothing()
            .when(
                SystemCommand::RecordKeyRotation {
                    what: KeyKind::Signing,
                    from: vec![],
                    to: "k2".into(),
                    rows: 1,
                },
                &system_ctx(at(1)),
            )
            .then(vec![SystemEvent::KeysRotated {
                what: KeyKind::Signing,
                from: vec![],
                to: "k2".into(),
                rows: 1,
                at: at(1),
            }]);
    }

    #[test]
    fn a_kek_rotation_that_moved_nothing_is_not_a_rotation() {
        Spec::<SystemDecider>::given_nothing()
            .when(kek_rotation(&["local:aa"], "local:bb", 0), &operator(at(1)))
            .then_error_code("invalid");
        Spec::<SystemDecider>::given_nothing()
            .when(kek_rotation(&[], "local:bb", 3), &operator(at(1)))
            .then_error_code("invalid");
    }

    #[test]
    fn key_ids_are_bounded_printable_and_distinct_from_the_target() {
        let long = "k".repeat(KEY_ID_MAX_CHARS + 1);
        for bad in [
            kek_rotation(&["a"], "", 1),
            kek_rotation(&["a"], &long, 1),
            kek_rotation(&["a b"], "c", 1),
            kek_rotation(&["a\u{7}"], "c", 1),
            kek_rotation(&["c"], "c", 1),
        ] {
            Spec::<SystemDecider>::given_nothing()
                .when(bad, &operator(at(1)))
                .then_error_code("invalid");
        }
        let many: Vec<String> = (0..=FROM_MAX).map(|i| format!("k{i}")).collect();
        let refs: Vec<&str> = many.iter().map(String::as_str).collect();
        Spec::<SystemDecider>::given_nothing()
            .when(kek_rotation(&refs, "new", 1), &operator(at(1)))
            .then_error_code("invalid");
    }

    #[test]
    fn the_sign_in_flow_records_unknown_accounts() {
        Spec::<SystemDecider>::given(vec![SystemEvent::UnknownAccountSignInFailed {
            method: "google".into(),
            at: at(1),
        }])
        .when(
            SystemCommand::RecordUnknownSignIn {
                method: " password ".into(),
            },
            &system_ctx(at(2)),
        )
        .then(vec![SystemEvent::UnknownAccountSignInFailed {
            method: "password".into(),
            at: at(2),
        }]);
        Spec::<SystemDecider>::given_nothing()
            .when(
                SystemCommand::RecordUnknownSignIn {
                    method: "x".repeat(METHOD_MAX_CHARS + 1),
                },
                &system_ctx(at(2)),
            )
            .then_error_code("invalid");
    }

    #[test]
    fn people_cannot_write_the_journal() {
        for role in [Role::Client, Role::Counselor] {
            Spec::<SystemDecider>::given_nothing()
                .when(
                    SystemCommand::RecordUnknownSignIn {
                        method: "password".into(),
                    },
                    &user_ctx(user_id(1), role, at(1)),
                )
                .then_error_code("forbidden");
        }
    }

    #[test]
    fn one_journal_per_utc_day_that_no_random_id_can_hit() {
        let day = |s: &str| s.parse::<NaiveDate>().expect("a date");
        let a = journal_id(day("2026-11-29"));
        assert_eq!(a, journal_id(day("2026-11-29")));
        assert_ne!(a, journal_id(day("2026-11-30")));
        assert_eq!(journal_for(at(0)), journal_id(day("1970-01-01")));
        // Random (v4) and time-ordered (v7) ids carry a version nibble this tag never has.
        assert!(a.get_version_num() != 4 && a.get_version_num() != 7);
        assert_eq!(a.as_u64_pair().0, JOURNAL_TAG);
    }

    #[test]
    fn summaries_hold_ids_and_counts_only() {
        let e = SystemEvent::KeysRotated {
            what: KeyKind::Kek,
            from: vec!["local:aa".into()],
            to: "local:bb".into(),
            rows: 3,
            at: at(1),
        };
        assert_eq!(e.summary(), "kek local:aa -> local:bb (3 rows)");
        let u = SystemEvent::UnknownAccountSignInFailed {
            method: "password".into(),
            at: at(1),
        };
        assert_eq!(u.summary(), "method=password");
        assert_eq!(u.event_type(), "UnknownAccountSignInFailed");
    }
}
