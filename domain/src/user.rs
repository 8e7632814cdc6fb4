//! The User aggregate (`user-{uuid}`): one person's account, profile, role and sign-ins.

use crate::{Context, Decider, DomainError, DomainEvent, Role, StreamKind, UserId};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Longest nickname, in characters; it is shown in room lists and chat headers.
pub const NICKNAME_MAX_CHARS: usize = 40;
/// Longest e-mail address, per RFC 5321's path limit.
pub const EMAIL_MAX_CHARS: usize = 254;
/// Longest counselor headline, in characters; it is one line in the directory.
pub const HEADLINE_MAX_CHARS: usize = 120;
/// Longest counselor bio, in characters.
pub const BIO_MAX_CHARS: usize = 4000;
/// Longest provider or subject identifier we store; identity providers stay far below it.
pub const IDENTITY_MAX_CHARS: usize = 255;
/// Longest user agent kept in a `LoggedIn` event; the rest is cut, since sign-in must not fail
/// over an informational header.
pub const USER_AGENT_MAX_CHARS: usize = 512;
/// Longest client address kept in a `LoggedIn` event (an IPv6 text form fits easily).
pub const IP_MAX_CHARS: usize = 64;

/// Decides the User aggregate's commands; see [`UserCommand`] for the rules.
pub struct UserDecider;

/// What can be asked of a user account.
#[derive(Debug, Clone)]
pub enum UserCommand {
    /// Creates the account on first sign-in. Only the system or an operator may register.
    Register {
        /// The new user's id (also the stream id).
        user_id: UserId,
        /// The identity provider that vouched for the user (`google`, `kakao`, ...).
        provider: String,
        /// The user's stable subject identifier at that provider.
        subject: String,
        /// The e-mail address the provider reported.
        email: String,
        /// The display name, 1..=40 characters after trimming.
        nickname: String,
        /// The initial role (`Client`, `Counselor` or `Operator`; never `System`).
        role: Role,
    },
    /// Changes the display name. The user themself or a privileged actor only.
    UpdateProfile {
        /// The new display name, 1..=40 characters after trimming.
        nickname: String,
    },
    /// Makes the user a counselor. Privileged actors only.
    GrantCounselorRole,
    /// Publishes (or replaces) the counselor's directory profile. Counselors only.
    PublishCounselorProfile {
        /// A one-line summary, 1..=120 characters after trimming.
        headline: String,
        /// A longer description, at most 4000 characters.
        bio: String,
    },
    /// Records a successful sign-in, for the user's session history.
    RecordLogin {
        /// The identity provider used for this sign-in.
        provider: String,
        /// The client's address, if known.
        ip: Option<String>,
        /// The client's user agent, if known.
        user_agent: Option<String>,
    },
    /// Closes the account for good. The user themself or a privileged actor only.
    Deactivate,
}

/// The facts recorded in a `user-{uuid}` stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum UserEvent {
    /// The account was created.
    Registered {
        /// The user's id.
        user_id: UserId,
        /// The identity provider that vouched for the user.
        provider: String,
        /// The user's subject identifier at that provider.
        subject: String,
        /// The user's e-mail address.
        email: String,
        /// The display name (trimmed).
        nickname: String,
        /// The initial role.
        role: Role,
        /// When the account was created.
        at: DateTime<Utc>,
    },
    /// The display name changed.
    ProfileUpdated {
        /// The new display name (trimmed).
        nickname: String,
        /// When it changed.
        at: DateTime<Utc>,
    },
    /// The user was given a new role.
    RoleGranted {
        /// The role now held.
        role: Role,
        /// When it was granted.
        at: DateTime<Utc>,
    },
    /// A counselor published or replaced their directory profile.
    CounselorProfilePublished {
        /// The one-line summary (trimmed).
        headline: String,
        /// The longer description (trimmed).
        bio: String,
        /// When it was published.
        at: DateTime<Utc>,
    },
    /// The user signed in.
    LoggedIn {
        /// The identity provider used.
        provider: String,
        /// The client's address, if known.
        ip: Option<String>,
        /// The client's user agent, if known (cut to 512 characters).
        user_agent: Option<String>,
        /// When the sign-in happened.
        at: DateTime<Utc>,
    },
    /// The account was closed.
    Deactivated {
        /// When it was closed.
        at: DateTime<Utc>,
    },
}

impl DomainEvent for UserEvent {
    fn event_type(&self) -> &'static str {
        match self {
            Self::Registered { .. } => "Registered",
            Self::ProfileUpdated { .. } => "ProfileUpdated",
            Self::RoleGranted { .. } => "RoleGranted",
            Self::CounselorProfilePublished { .. } => "CounselorProfilePublished",
            Self::LoggedIn { .. } => "LoggedIn",
            Self::Deactivated { .. } => "Deactivated",
        }
    }
}

/// A counselor's published directory entry, as folded from `CounselorProfilePublished`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CounselorProfile {
    /// The one-line summary.
    pub headline: String,
    /// The longer description.
    pub bio: String,
    /// When this version was published.
    pub published_at: DateTime<Utc>,
}

/// The account as far as the rules need it; `Default` is "not registered".
#[derive(Debug, Clone, Default)]
pub struct UserState {
    account: Option<Account>,
}

/// Everything known about a registered account; kept private so the state stays read-only.
#[derive(Debug, Clone)]
struct Account {
    user_id: UserId,
    provider: String,
    subject: String,
    email: String,
    nickname: String,
    role: Role,
    registered_at: DateTime<Utc>,
    counselor_profile: Option<CounselorProfile>,
    last_login_at: Option<DateTime<Utc>>,
    login_count: u64,
    deactivated_at: Option<DateTime<Utc>>,
}

impl UserState {
    /// True once `Registered` has happened.
    pub fn is_registered(&self) -> bool {
        self.account.is_some()
    }

    /// True if the account exists and has not been deactivated.
    pub fn is_active(&self) -> bool {
        self.account
            .as_ref()
            .is_some_and(|a| a.deactivated_at.is_none())
    }

    /// True if the account has been deactivated.
    pub fn is_deactivated(&self) -> bool {
        self.deactivated_at().is_some()
    }

    /// The user's id, once registered.
    pub fn user_id(&self) -> Option<UserId> {
        self.account.as_ref().map(|a| a.user_id)
    }

    /// The identity provider the account was registered with.
    pub fn provider(&self) -> Option<&str> {
        self.account.as_ref().map(|a| a.provider.as_str())
    }

    /// The subject identifier at the registering provider.
    pub fn subject(&self) -> Option<&str> {
        self.account.as_ref().map(|a| a.subject.as_str())
    }

    /// The e-mail address.
    pub fn email(&self) -> Option<&str> {
        self.account.as_ref().map(|a| a.email.as_str())
    }

    /// The current display name.
    pub fn nickname(&self) -> Option<&str> {
        self.account.as_ref().map(|a| a.nickname.as_str())
    }

    /// The current role.
    pub fn role(&self) -> Option<Role> {
        self.account.as_ref().map(|a| a.role)
    }

    /// True if the user currently holds the counselor role.
    pub fn is_counselor(&self) -> bool {
        self.role() == Some(Role::Counselor)
    }

    /// The published counselor profile, if any.
    pub fn counselor_profile(&self) -> Option<&CounselorProfile> {
        self.account
            .as_ref()
            .and_then(|a| a.counselor_profile.as_ref())
    }

    /// When the account was registered.
    pub fn registered_at(&self) -> Option<DateTime<Utc>> {
        self.account.as_ref().map(|a| a.registered_at)
    }

    /// When the user last signed in.
    pub fn last_login_at(&self) -> Option<DateTime<Utc>> {
        self.account.as_ref().and_then(|a| a.last_login_at)
    }

    /// How many sign-ins have been recorded.
    pub fn login_count(&self) -> u64 {
        self.account.as_ref().map_or(0, |a| a.login_count)
    }

    /// When the account was deactivated.
    pub fn deactivated_at(&self) -> Option<DateTime<Utc>> {
        self.account.as_ref().and_then(|a| a.deactivated_at)
    }
}

impl Decider for UserDecider {
    type State = UserState;
    type Command = UserCommand;
    type Event = UserEvent;

    const KIND: StreamKind = StreamKind::User;

    fn decide(
        state: &UserState,
        command: UserCommand,
        ctx: &Context,
    ) -> Result<Vec<UserEvent>, DomainError> {
        let actor = ctx.actor;
        let now = ctx.now;
        // Every command but `Register` needs the account to exist; authorization depends on it.
        let existing = || state.account.as_ref().ok_or(DomainError::NotFound("user"));
        let may_act_for = |account: &Account| actor.is(account.user_id) || actor.is_privileged();

        match command {
            UserCommand::Register {
                user_id,
                provider,
                subject,
                email,
                nickname,
                role,
            } => {
                if !actor.is_privileged() {
                    return Err(DomainError::Forbidden(
                        "only the sign-in flow registers users",
                    ));
                }
                if state.is_registered() {
                    return Err(DomainError::AlreadyExists("user"));
                }
                let provider = identity("provider", &provider)?;
                let subject = identity("subject", &subject)?;
                let email = validate_email(&email)?;
                let nickname = validate_nickname(&nickname)?;
                if role == Role::System {
                    return Err(DomainError::invalid(
                        "role",
                        "the system role is reserved for the service itself",
                    ));
                }
                Ok(vec![UserEvent::Registered {
                    user_id,
                    provider,
                    subject,
                    email,
                    nickname,
                    role,
                    at: now,
                }])
            }
            UserCommand::UpdateProfile { nickname } => {
                let account = existing()?;
                if !may_act_for(account) {
                    return Err(DomainError::Forbidden(
                        "only the user may edit their profile",
                    ));
                }
                if account.deactivated_at.is_some() {
                    return Err(DomainError::Conflict("user is deactivated"));
                }
                let nickname = validate_nickname(&nickname)?;
                if nickname == account.nickname {
                    return Ok(vec![]);
                }
                Ok(vec![UserEvent::ProfileUpdated { nickname, at: now }])
            }
            UserCommand::GrantCounselorRole => {
                let account = existing()?;
                if !actor.is_privileged() {
                    return Err(DomainError::Forbidden("only operators grant roles"));
                }
                if account.deactivated_at.is_some() {
                    return Err(DomainError::Conflict("user is deactivated"));
                }
                if account.role == Role::Counselor {
                    return Ok(vec![]);
                }
                Ok(vec![UserEvent::RoleGranted {
                    role: Role::Counselor,
                    at: now,
                }])
            }
            UserCommand::PublishCounselorProfile { headline, bio } => {
                let account = existing()?;
                if !may_act_for(account) {
                    return Err(DomainError::Forbidden(
                        "only the counselor may publish their profile",
                    ));
                }
                if account.deactivated_at.is_some() {
                    return Err(DomainError::Conflict("user is deactivated"));
                }
                if account.role != Role::Counselor {
                    return Err(DomainError::Forbidden("only counselors publish a profile"));
                }
                let headline = bounded_text("headline", &headline, 1, HEADLINE_MAX_CHARS)?;
                let bio = bounded_text("bio", &bio, 0, BIO_MAX_CHARS)?;
                if account
                    .counselor_profile
                    .as_ref()
                    .is_some_and(|p| p.headline == headline && p.bio == bio)
                {
                    return Ok(vec![]);
                }
                Ok(vec![UserEvent::CounselorProfilePublished {
                    headline,
                    bio,
                    at: now,
                }])
            }
            UserCommand::RecordLogin {
                provider,
                ip,
                user_agent,
            } => {
                let account = existing()?;
                if !may_act_for(account) {
                    return Err(DomainError::Forbidden(
                        "only the sign-in flow records logins",
                    ));
                }
                if account.deactivated_at.is_some() {
                    return Err(DomainError::Conflict("user is deactivated"));
                }
                let provider = identity("provider", &provider)?;
                Ok(vec![UserEvent::LoggedIn {
                    provider,
                    ip: ip.map(|s| truncate_chars(s.trim(), IP_MAX_CHARS)),
                    user_agent: user_agent.map(|s| truncate_chars(s.trim(), USER_AGENT_MAX_CHARS)),
                    at: now,
                }])
            }
            UserCommand::Deactivate => {
                let account = existing()?;
                if !may_act_for(account) {
                    return Err(DomainError::Forbidden(
                        "only the user may deactivate their account",
                    ));
                }
                if account.deactivated_at.is_some() {
                    return Ok(vec![]);
                }
                Ok(vec![UserEvent::Deactivated { at: now }])
            }
        }
    }

    fn evolve(mut state: UserState, event: &UserEvent) -> UserState {
        if let UserEvent::Registered {
            user_id,
            provider,
            subject,
            email,
            nickname,
            role,
            at,
        } = event
        {
            state.account = Some(Account {
                user_id: *user_id,
                provider: provider.clone(),
                subject: subject.clone(),
                email: email.clone(),
                nickname: nickname.clone(),
                role: *role,
                registered_at: *at,
                counselor_profile: None,
                last_login_at: None,
                login_count: 0,
                deactivated_at: None,
            });
            return state;
        }
        // Events other than `Registered` cannot precede it in a valid stream; ignoring them
        // keeps `evolve` total.
        let Some(account) = state.account.as_mut() else {
            return state;
        };
        match event {
            UserEvent::Registered { .. } => {}
            UserEvent::ProfileUpdated { nickname, .. } => account.nickname = nickname.clone(),
            UserEvent::RoleGranted { role, .. } => account.role = *role,
            UserEvent::CounselorProfilePublished { headline, bio, at } => {
                account.counselor_profile = Some(CounselorProfile {
                    headline: headline.clone(),
                    bio: bio.clone(),
                    published_at: *at,
                });
            }
            UserEvent::LoggedIn { at, .. } => {
                account.last_login_at = Some(*at);
                account.login_count += 1;
            }
            UserEvent::Deactivated { at } => account.deactivated_at = Some(*at),
        }
        state
    }
}

/// Trims `value` and checks its length in characters is within `min..=max`.
fn bounded_text(
    field: &'static str,
    value: &str,
    min: usize,
    max: usize,
) -> Result<String, DomainError> {
    let trimmed = value.trim();
    let len = trimmed.chars().count();
    if len < min {
        return Err(DomainError::invalid(field, "must not be blank"));
    }
    if len > max {
        return Err(DomainError::invalid(
            field,
            format!("must be at most {max} characters"),
        ));
    }
    Ok(trimmed.to_owned())
}

/// A display name: 1..=40 characters after trimming.
fn validate_nickname(nickname: &str) -> Result<String, DomainError> {
    bounded_text("nickname", nickname, 1, NICKNAME_MAX_CHARS)
}

/// An e-mail address: must contain `@` and be at most 254 characters. Deeper checks belong to
/// the identity provider, which already verified it.
fn validate_email(email: &str) -> Result<String, DomainError> {
    let email = bounded_text("email", email, 1, EMAIL_MAX_CHARS)?;
    if !email.contains('@') {
        return Err(DomainError::invalid("email", "must contain '@'"));
    }
    Ok(email)
}

/// A provider name or subject identifier: non-blank and reasonably short.
fn identity(field: &'static str, value: &str) -> Result<String, DomainError> {
    bounded_text(field, value, 1, IDENTITY_MAX_CHARS)
}

/// Cuts `value` to at most `max` characters, on a character boundary.
fn truncate_chars(value: &str, max: usize) -> String {
    value.chars().take(max).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{Spec, at, system_ctx, user_ctx, user_id};

    const ME: UserId = user_id(1);
    const OTHER: UserId = user_id(2);

    fn registered_as(role: Role) -> UserEvent {
        UserEvent::Registered {
            user_id: ME,
            provider: "google".into(),
            subject: "sub-1".into(),
            email: "me@example.com".into(),
            nickname: "Mina".into(),
            role,
            at: at(0),
        }
    }

    fn registered() -> UserEvent {
        registered_as(Role::Client)
    }

    fn register_cmd(nickname: &str, email: &str) -> UserCommand {
        UserCommand::Register {
            user_id: ME,
            provider: "google".into(),
            subject: "sub-1".into(),
            email: email.into(),
            nickname: nickname.into(),
            role: Role::Client,
        }
    }

    fn me(secs: i64) -> Context {
        user_ctx(ME, Role::Client, at(secs))
    }

    fn other(secs: i64) -> Context {
        user_ctx(OTHER, Role::Client, at(secs))
    }

    fn operator(secs: i64) -> Context {
        user_ctx(user_id(99), Role::Operator, at(secs))
    }

    fn deactivated() -> UserEvent {
        UserEvent::Deactivated { at: at(5) }
    }

    // --- Register ---------------------------------------------------------------------------

    #[test]
    fn system_registers_a_new_user() {
        let state = Spec::<UserDecider>::given_nothing()
            .when(
                register_cmd("  Mina ", "me@example.com"),
                &system_ctx(at(0)),
            )
            .then(vec![registered()]);
        assert!(state.is_registered());
        assert!(state.is_active());
        assert_eq!(state.nickname(), Some("Mina"));
        assert_eq!(state.role(), Some(Role::Client));
        assert_eq!(state.user_id(), Some(ME));
        assert_eq!(state.registered_at(), Some(at(0)));
    }

    #[test]
    fn registering_twice_is_rejected() {
        Spec::<UserDecider>::given(vec![registered()])
            .when(register_cmd("Mina", "me@example.com"), &system_ctx(at(1)))
            .then_error(DomainError::AlreadyExists("user"));
    }

    #[test]
    fn only_privileged_actors_register() {
        Spec::<UserDecider>::given_nothing()
            .when(register_cmd("Mina", "me@example.com"), &me(0))
            .then_error(DomainError::Forbidden(
                "only the sign-in flow registers users",
            ));
    }

    #[test]
    fn register_validates_nickname() {
        for bad in ["", "   ", &"가".repeat(41)] {
            Spec::<UserDecider>::given_nothing()
                .when(register_cmd(bad, "me@example.com"), &system_ctx(at(0)))
                .then_error_code("invalid");
        }
        // 40 multi-byte characters are fine: limits count characters, not bytes.
        Spec::<UserDecider>::given_nothing()
            .when(
                register_cmd(&"가".repeat(40), "me@example.com"),
                &system_ctx(at(0)),
            )
            .then(vec![UserEvent::Registered {
                user_id: ME,
                provider: "google".into(),
                subject: "sub-1".into(),
                email: "me@example.com".into(),
                nickname: "가".repeat(40),
                role: Role::Client,
                at: at(0),
            }]);
    }

    #[test]
    fn register_validates_email() {
        Spec::<UserDecider>::given_nothing()
            .when(register_cmd("Mina", "not-an-email"), &system_ctx(at(0)))
            .then_error(DomainError::invalid("email", "must contain '@'"));
        let long = format!("{}@example.com", "a".repeat(250));
        Spec::<UserDecider>::given_nothing()
            .when(register_cmd("Mina", &long), &system_ctx(at(0)))
            .then_error(DomainError::invalid(
                "email",
                "must be at most 254 characters",
            ));
    }

    #[test]
    fn register_rejects_blank_identity_and_system_role() {
        Spec::<UserDecider>::given_nothing()
            .when(
                UserCommand::Register {
                    user_id: ME,
                    provider: " ".into(),
                    subject: "sub-1".into(),
                    email: "me@example.com".into(),
                    nickname: "Mina".into(),
                    role: Role::Client,
                },
                &system_ctx(at(0)),
            )
            .then_error(DomainError::invalid("provider", "must not be blank"));
        Spec::<UserDecider>::given_nothing()
            .when(
                UserCommand::Register {
                    user_id: ME,
                    provider: "google".into(),
                    subject: "sub-1".into(),
                    email: "me@example.com".into(),
                    nickname: "Mina".into(),
                    role: Role::System,
                },
                &system_ctx(at(0)),
            )
            .then_error_code("invalid");
    }

    // --- Unregistered / deactivated -----------------------------------------------------------

    #[test]
    fn commands_on_an_unregistered_user_are_not_found() {
        let commands = [
            UserCommand::UpdateProfile {
                nickname: "x".into(),
            },
            UserCommand::GrantCounselorRole,
            UserCommand::PublishCounselorProfile {
                headline: "h".into(),
                bio: "b".into(),
            },
            UserCommand::RecordLogin {
                provider: "google".into(),
                ip: None,
                user_agent: None,
            },
            UserCommand::Deactivate,
        ];
        for command in commands {
            Spec::<UserDecider>::given_nothing()
                .when(command, &system_ctx(at(1)))
                .then_error(DomainError::NotFound("user"));
        }
    }

    #[test]
    fn commands_on_a_deactivated_user_conflict() {
        let commands = [
            UserCommand::UpdateProfile {
                nickname: "New".into(),
            },
            UserCommand::GrantCounselorRole,
            UserCommand::PublishCounselorProfile {
                headline: "h".into(),
                bio: "b".into(),
            },
            UserCommand::RecordLogin {
                provider: "google".into(),
                ip: None,
                user_agent: None,
            },
        ];
        for command in commands {
            Spec::<UserDecider>::given(vec![registered_as(Role::Counselor), deactivated()])
                .when(command, &system_ctx(at(9)))
                .then_error(DomainError::Conflict("user is deactivated"));
        }
    }

    // --- UpdateProfile ------------------------------------------------------------------------

    #[test]
    fn user_updates_own_nickname() {
        let state = Spec::<UserDecider>::given(vec![registered()])
            .when(
                UserCommand::UpdateProfile {
                    nickname: " Minji ".into(),
                },
                &me(3),
            )
            .then(vec![UserEvent::ProfileUpdated {
                nickname: "Minji".into(),
                at: at(3),
            }]);
        assert_eq!(state.nickname(), Some("Minji"));
    }

    #[test]
    fn operator_may_update_anyones_nickname() {
        Spec::<UserDecider>::given(vec![registered()])
            .when(
                UserCommand::UpdateProfile {
                    nickname: "Minji".into(),
                },
                &operator(3),
            )
            .then(vec![UserEvent::ProfileUpdated {
                nickname: "Minji".into(),
                at: at(3),
            }]);
    }

    #[test]
    fn another_user_may_not_update_the_profile() {
        Spec::<UserDecider>::given(vec![registered()])
            .when(
                UserCommand::UpdateProfile {
                    nickname: "Hacked".into(),
                },
                &other(3),
            )
            .then_error(DomainError::Forbidden(
                "only the user may edit their profile",
            ));
    }

    #[test]
    fn same_nickname_changes_nothing() {
        Spec::<UserDecider>::given(vec![registered()])
            .when(
                UserCommand::UpdateProfile {
                    nickname: "Mina ".into(),
                },
                &me(3),
            )
            .then_nothing();
    }

    #[test]
    fn update_profile_validates_nickname() {
        Spec::<UserDecider>::given(vec![registered()])
            .when(
                UserCommand::UpdateProfile {
                    nickname: "\t".into(),
                },
                &me(3),
            )
            .then_error(DomainError::invalid("nickname", "must not be blank"));
        Spec::<UserDecider>::given(vec![registered()])
            .when(
                UserCommand::UpdateProfile {
                    nickname: "x".repeat(41),
                },
                &me(3),
            )
            .then_error(DomainError::invalid(
                "nickname",
                "must be at most 40 characters",
            ));
    }

    // --- GrantCounselorRole -------------------------------------------------------------------

    #[test]
    fn operator_grants_counselor_role() {
        let state = Spec::<UserDecider>::given(vec![registered()])
            .when(UserCommand::GrantCounselorRole, &operator(4))
            .then(vec![UserEvent::RoleGranted {
                role: Role::Counselor,
                at: at(4),
            }]);
        assert!(state.is_counselor());
    }

    #[test]
    fn users_cannot_grant_themselves_the_counselor_role() {
        Spec::<UserDecider>::given(vec![registered()])
            .when(UserCommand::GrantCounselorRole, &me(4))
            .then_error(DomainError::Forbidden("only operators grant roles"));
    }

    #[test]
    fn granting_the_role_to_a_counselor_changes_nothing() {
        Spec::<UserDecider>::given(vec![registered_as(Role::Counselor)])
            .when(UserCommand::GrantCounselorRole, &operator(4))
            .then_nothing();
        Spec::<UserDecider>::given(vec![
            registered(),
            UserEvent::RoleGranted {
                role: Role::Counselor,
                at: at(1),
            },
        ])
        .when(UserCommand::GrantCounselorRole, &system_ctx(at(4)))
        .then_nothing();
    }

    // --- PublishCounselorProfile --------------------------------------------------------------

    fn publish(headline: &str, bio: &str) -> UserCommand {
        UserCommand::PublishCounselorProfile {
            headline: headline.into(),
            bio: bio.into(),
        }
    }

    fn counselor_ctx(secs: i64) -> Context {
        user_ctx(ME, Role::Counselor, at(secs))
    }

    #[test]
    fn counselor_publishes_a_profile() {
        let state = Spec::<UserDecider>::given(vec![registered_as(Role::Counselor)])
            .when(publish("Family therapist", "Ten years."), &counselor_ctx(5))
            .then(vec![UserEvent::CounselorProfilePublished {
                headline: "Family therapist".into(),
                bio: "Ten years.".into(),
                at: at(5),
            }]);
        assert_eq!(
            state.counselor_profile(),
            Some(&CounselorProfile {
                headline: "Family therapist".into(),
                bio: "Ten years.".into(),
                published_at: at(5),
            })
        );
    }

    #[test]
    fn clients_cannot_publish_a_profile() {
        Spec::<UserDecider>::given(vec![registered()])
            .when(publish("Family therapist", "Ten years."), &me(5))
            .then_error(DomainError::Forbidden("only counselors publish a profile"));
    }

    #[test]
    fn nobody_else_publishes_a_counselors_profile() {
        Spec::<UserDecider>::given(vec![registered_as(Role::Counselor)])
            .when(publish("Fake", "Fake"), &other(5))
            .then_error(DomainError::Forbidden(
                "only the counselor may publish their profile",
            ));
    }

    #[test]
    fn publishing_the_same_profile_changes_nothing() {
        Spec::<UserDecider>::given(vec![
            registered_as(Role::Counselor),
            UserEvent::CounselorProfilePublished {
                headline: "Family therapist".into(),
                bio: "Ten years.".into(),
                at: at(5),
            },
        ])
        .when(publish("Family therapist", "Ten years."), &counselor_ctx(6))
        .then_nothing();
    }

    #[test]
    fn profile_lengths_are_validated() {
        Spec::<UserDecider>::given(vec![registered_as(Role::Counselor)])
            .when(publish(&"h".repeat(121), "bio"), &counselor_ctx(5))
            .then_error(DomainError::invalid(
                "headline",
                "must be at most 120 characters",
            ));
        Spec::<UserDecider>::given(vec![registered_as(Role::Counselor)])
            .when(publish("  ", "bio"), &counselor_ctx(5))
            .then_error(DomainError::invalid("headline", "must not be blank"));
        Spec::<UserDecider>::given(vec![registered_as(Role::Counselor)])
            .when(publish("Headline", &"b".repeat(4001)), &counselor_ctx(5))
            .then_error(DomainError::invalid(
                "bio",
                "must be at most 4000 characters",
            ));
        Spec::<UserDecider>::given(vec![registered_as(Role::Counselor)])
            .when(
                publish(&"h".repeat(120), &"b".repeat(4000)),
                &counselor_ctx(5),
            )
            .then(vec![UserEvent::CounselorProfilePublished {
                headline: "h".repeat(120),
                bio: "b".repeat(4000),
                at: at(5),
            }]);
    }

    // --- RecordLogin --------------------------------------------------------------------------

    #[test]
    fn system_records_a_login() {
        let state = Spec::<UserDecider>::given(vec![registered()])
            .when(
                UserCommand::RecordLogin {
                    provider: "google".into(),
                    ip: Some("127.0.0.1".into()),
                    user_agent: Some("x".repeat(600)),
                },
                &system_ctx(at(7)),
            )
            .then(vec![UserEvent::LoggedIn {
                provider: "google".into(),
                ip: Some("127.0.0.1".into()),
                user_agent: Some("x".repeat(USER_AGENT_MAX_CHARS)),
                at: at(7),
            }]);
        assert_eq!(state.last_login_at(), Some(at(7)));
        assert_eq!(state.login_count(), 1);
    }

    #[test]
    fn another_user_cannot_record_a_login() {
        Spec::<UserDecider>::given(vec![registered()])
            .when(
                UserCommand::RecordLogin {
                    provider: "google".into(),
                    ip: None,
                    user_agent: None,
                },
                &other(7),
            )
            .then_error(DomainError::Forbidden(
                "only the sign-in flow records logins",
            ));
    }

    // --- Deactivate ---------------------------------------------------------------------------

    #[test]
    fn user_deactivates_own_account() {
        let state = Spec::<UserDecider>::given(vec![registered()])
            .when(UserCommand::Deactivate, &me(5))
            .then(vec![deactivated()]);
        assert!(state.is_deactivated());
        assert!(!state.is_active());
        assert_eq!(state.deactivated_at(), Some(at(5)));
    }

    #[test]
    fn operator_deactivates_an_account() {
        Spec::<UserDecider>::given(vec![registered()])
            .when(UserCommand::Deactivate, &operator(5))
            .then(vec![deactivated()]);
    }

    #[test]
    fn another_user_cannot_deactivate() {
        Spec::<UserDecider>::given(vec![registered()])
            .when(UserCommand::Deactivate, &other(5))
            .then_error(DomainError::Forbidden(
                "only the user may deactivate their account",
            ));
    }

    #[test]
    fn deactivating_twice_changes_nothing() {
        Spec::<UserDecider>::given(vec![registered(), deactivated()])
            .when(UserCommand::Deactivate, &me(6))
            .then_nothing();
    }

    // --- Serialization ------------------------------------------------------------------------

    #[test]
    fn events_round_trip_through_json_adjacently_tagged() {
        let events = vec![
            registered(),
            UserEvent::ProfileUpdated {
                nickname: "Minji".into(),
                at: at(1),
            },
            UserEvent::RoleGranted {
                role: Role::Counselor,
                at: at(2),
            },
            UserEvent::CounselorProfilePublished {
                headline: "h".into(),
                bio: "b".into(),
                at: at(3),
            },
            UserEvent::LoggedIn {
                provider: "google".into(),
                ip: None,
                user_agent: Some("ua".into()),
                at: at(4),
            },
            deactivated(),
        ];
        for event in events {
            let json = serde_json::to_value(&event).expect("serialize");
            assert_eq!(json["type"], event.event_type());
            assert!(json["data"].is_object(), "{json}");
            let back: UserEvent = serde_json::from_value(json).expect("deserialize");
            assert_eq!(back, event);
        }
        let json = serde_json::to_value(registered()).expect("serialize");
        assert_eq!(json["data"]["role"], "client");
        assert_eq!(json["data"]["user_id"], ME.to_string());
    }

    #[test]
    fn kind_is_user() {
        assert_eq!(UserDecider::KIND, StreamKind::User);
    }
}
