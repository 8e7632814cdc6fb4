//! The User aggregate (`user-{uuid}`): one person's account, profile, role and sign-ins.
//!
//! Every personal field of a user event is a [`Personal`] owned by the user whose stream it
//! is, so erasing that user (crypto-shredding their key) leaves a stream that still replays:
//! the state keeps ids, roles, counts and timestamps, and reports the personal values as gone.

use crate::{Context, Decider, DomainError, DomainEvent, Personal, Role, StreamKind, UserId};
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
/// Longest blob key of a profile image; the edge makes short random keys, so this only
/// keeps a misbehaving caller from storing arbitrary text in the log.
pub const IMAGE_KEY_MAX_CHARS: usize = 200;

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
    /// Sets (or replaces) the profile image, already stored under the given blob keys.
    /// The user themself or a privileged actor only; not on a deactivated or erased account.
    ChangeProfileImage {
        /// Blob key of the re-encoded full image.
        image_key: String,
        /// Blob key of its square thumbnail.
        thumbnail_key: String,
    },
    /// Removes the profile image. The user themself or a privileged actor only; removing
    /// when there is none changes nothing.
    RemoveProfileImage,
    /// Forgets the person (right to erasure): records `Erased`, after which the store destroys
    /// the user's data key so every personal field of theirs reads back as erased. The user
    /// themself or a privileged actor only; works on a deactivated account too; repeating it
    /// changes nothing. Every later command on the account is a conflict.
    Erase,
    /// Ends every session of the person at once ("sign out everywhere"): records
    /// `SignedOutEverywhere`, after which access tokens issued before it are refused. The user
    /// themself or a privileged actor only; not on a deactivated or erased account (those
    /// are signed out already). Every request records a new event, since sessions started
    /// after the previous one must end too.
    SignOutEverywhere,
    /// The sign-in flow refused a sign-in to this account (a wrong password, a refused
    /// external sign-in): a security event operators can list. System or operator only;
    /// recorded on deactivated accounts too (attempts on a closed account matter).
    RecordFailedSignIn {
        /// How the person tried: `password` or an identity provider's name.
        method: String,
    },
    /// A rotated refresh token of this person was presented again (stolen or replayed); the
    /// session was revoked, and operators must be able to see it. System or operator only.
    RecordTokenReuse,
}

/// The facts recorded in a `user-{uuid}` stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum UserEvent {
    /// The account was created.
    Registered {
        /// The user's id.
        user_id: UserId,
        /// The identity provider that vouched for the user (not personal: a handful of names).
        provider: String,
        /// The user's subject identifier at that provider; it identifies the person.
        subject: Personal<String>,
        /// The user's e-mail address.
        email: Personal<String>,
        /// The display name (trimmed).
        nickname: Personal<String>,
        /// The initial role.
        role: Role,
        /// When the account was created.
        at: DateTime<Utc>,
    },
    /// The display name changed.
    ProfileUpdated {
        /// The new display name (trimmed).
        nickname: Personal<String>,
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
        headline: Personal<String>,
        /// The longer description (trimmed).
        bio: Personal<String>,
        /// When it was published.
        at: DateTime<Utc>,
    },
    /// The user signed in.
    LoggedIn {
        /// The identity provider used.
        provider: String,
        /// The client's address, if known.
        ip: Option<Personal<String>>,
        /// The client's user agent, if known (cut to 512 characters).
        user_agent: Option<Personal<String>>,
        /// When the sign-in happened.
        at: DateTime<Utc>,
    },
    /// The profile image was set or replaced. Blob keys are personal: they lead to a picture
    /// of the person, so erasure shreds them with the rest.
    ProfileImageChanged {
        /// Blob key of the full image.
        image: Personal<String>,
        /// Blob key of the thumbnail.
        thumbnail: Personal<String>,
        /// When it changed.
        at: DateTime<Utc>,
    },
    /// The profile image was removed.
    ProfileImageRemoved {
        /// When it was removed.
        at: DateTime<Utc>,
    },
    /// The account was closed.
    Deactivated {
        /// When it was closed.
        at: DateTime<Utc>,
    },
    /// The person was forgotten; their personal fields are unreadable from now on.
    Erased {
        /// When the erasure was decided.
        at: DateTime<Utc>,
    },
    /// The person ended every session: access tokens issued before this event are refused
    /// and their refresh tokens revoked.
    SignedOutEverywhere {
        /// When it was decided.
        at: DateTime<Utc>,
    },
    /// A sign-in to this account was refused (security audit; changes no state).
    SignInFailed {
        /// `password` or the identity provider's name (not personal: a handful of names).
        method: String,
        /// When it was refused.
        at: DateTime<Utc>,
    },
    /// A rotated refresh token was presented again and its session revoked (security
    /// audit; changes no state).
    RefreshTokenReused {
        /// When it was detected.
        at: DateTime<Utc>,
    },
}

/// The user events an operator's security audit lists (`neulbi audit security`).
pub const SECURITY_EVENTS: [&str; 7] = [
    "LoggedIn",
    "SignInFailed",
    "RefreshTokenReused",
    "RoleGranted",
    "Deactivated",
    "Erased",
    "SignedOutEverywhere",
];

/// The types of the user events after which access tokens issued earlier must be refused
/// (the role in them is stale, the account is gone, or the person signed out everywhere).
/// Readers that follow the log match on these names without decoding the event.
pub const ACCESS_REVOKING_EVENTS: [&str; 4] = [
    "RoleGranted",
    "Deactivated",
    "Erased",
    "SignedOutEverywhere",
];

/// The types of the user events after which the account is closed for good.
pub const ACCOUNT_CLOSING_EVENTS: [&str; 2] = ["Deactivated", "Erased"];

impl DomainEvent for UserEvent {
    fn event_type(&self) -> &'static str {
        match self {
            Self::Registered { .. } => "Registered",
            Self::ProfileUpdated { .. } => "ProfileUpdated",
            Self::RoleGranted { .. } => "RoleGranted",
            Self::CounselorProfilePublished { .. } => "CounselorProfilePublished",
            Self::LoggedIn { .. } => "LoggedIn",
            Self::ProfileImageChanged { .. } => "ProfileImageChanged",
            Self::ProfileImageRemoved { .. } => "ProfileImageRemoved",
            Self::Deactivated { .. } => "Deactivated",
            Self::Erased { .. } => "Erased",
            Self::SignedOutEverywhere { .. } => "SignedOutEverywhere",
            Self::SignInFailed { .. } => "SignInFailed",
            Self::RefreshTokenReused { .. } => "RefreshTokenReused",
        }
    }
}

impl UserEvent {
    /// True if access tokens issued before this event must no longer be accepted.
    pub fn revokes_access(&self) -> bool {
        ACCESS_REVOKING_EVENTS.contains(&self.event_type())
    }
}

/// A counselor's published directory entry, as folded from `CounselorProfilePublished`.
///
/// It exists only while its text is readable: once the counselor is erased the state holds
/// no profile at all, rather than a profile with holes in it.
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
///
/// Personal values stay wrapped in [`Personal`] (whose `Debug` redacts them), so dumping a
/// state into a log line cannot leak them either.
#[derive(Debug, Clone)]
struct Account {
    user_id: UserId,
    provider: String,
    subject: Personal<String>,
    email: Personal<String>,
    nickname: Personal<String>,
    role: Role,
    registered_at: DateTime<Utc>,
    counselor_profile: Option<Personal<CounselorProfile>>,
    last_login_at: Option<DateTime<Utc>>,
    last_login_ip: Option<Personal<String>>,
    last_login_user_agent: Option<Personal<String>>,
    login_count: u64,
    profile_image: Option<ProfileImage>,
    deactivated_at: Option<DateTime<Utc>>,
    erased_at: Option<DateTime<Utc>>,
    signed_out_everywhere_at: Option<DateTime<Utc>>,
}

/// The current profile image's blob keys, as folded from `ProfileImageChanged`.
#[derive(Debug, Clone)]
struct ProfileImage {
    image: Personal<String>,
    thumbnail: Personal<String>,
}

impl Account {
    /// Drops every personal value, keeping only the markers that they existed.
    fn forget_personal_data(&mut self, at: DateTime<Utc>) {
        let owner = self.user_id;
        self.subject = Personal::Erased { owner };
        self.email = Personal::Erased { owner };
        self.nickname = Personal::Erased { owner };
        self.counselor_profile = self
            .counselor_profile
            .as_ref()
            .map(|_| Personal::Erased { owner });
        self.last_login_ip = None;
        self.last_login_user_agent = None;
        self.profile_image = None;
        self.erased_at = Some(at);
    }
}

impl UserState {
    /// True once `Registered` has happened.
    pub fn is_registered(&self) -> bool {
        self.account.is_some()
    }

    /// True if the account exists and has been neither deactivated nor erased.
    pub fn is_active(&self) -> bool {
        self.account
            .as_ref()
            .is_some_and(|a| a.deactivated_at.is_none() && a.erased_at.is_none())
    }

    /// True if the account has been deactivated.
    pub fn is_deactivated(&self) -> bool {
        self.deactivated_at().is_some()
    }

    /// True once the person has been erased: the account is a tombstone that keeps its id,
    /// role and timestamps but no personal value, and accepts no further command.
    pub fn is_erased(&self) -> bool {
        self.erased_at().is_some()
    }

    /// The user's id, once registered.
    pub fn user_id(&self) -> Option<UserId> {
        self.account.as_ref().map(|a| a.user_id)
    }

    /// The identity provider the account was registered with.
    pub fn provider(&self) -> Option<&str> {
        self.account.as_ref().map(|a| a.provider.as_str())
    }

    /// The subject identifier at the registering provider; `None` once erased.
    pub fn subject(&self) -> Option<&str> {
        self.account.as_ref().and_then(|a| known_str(&a.subject))
    }

    /// The e-mail address; `None` once erased.
    pub fn email(&self) -> Option<&str> {
        self.account.as_ref().and_then(|a| known_str(&a.email))
    }

    /// The current display name; `None` once erased.
    pub fn nickname(&self) -> Option<&str> {
        self.account.as_ref().and_then(|a| known_str(&a.nickname))
    }

    /// The current role.
    pub fn role(&self) -> Option<Role> {
        self.account.as_ref().map(|a| a.role)
    }

    /// True if the user currently holds the counselor role.
    pub fn is_counselor(&self) -> bool {
        self.role() == Some(Role::Counselor)
    }

    /// The published counselor profile, if any and still readable (`None` once erased).
    pub fn counselor_profile(&self) -> Option<&CounselorProfile> {
        self.account
            .as_ref()
            .and_then(|a| a.counselor_profile.as_ref())
            .and_then(Personal::value)
    }

    /// When the account was registered.
    pub fn registered_at(&self) -> Option<DateTime<Utc>> {
        self.account.as_ref().map(|a| a.registered_at)
    }

    /// When the user last signed in.
    pub fn last_login_at(&self) -> Option<DateTime<Utc>> {
        self.account.as_ref().and_then(|a| a.last_login_at)
    }

    /// The client address of the last sign-in, if it was known and is still readable.
    pub fn last_login_ip(&self) -> Option<&str> {
        self.account
            .as_ref()
            .and_then(|a| a.last_login_ip.as_ref())
            .and_then(known_str)
    }

    /// The user agent of the last sign-in, if it was known and is still readable.
    pub fn last_login_user_agent(&self) -> Option<&str> {
        self.account
            .as_ref()
            .and_then(|a| a.last_login_user_agent.as_ref())
            .and_then(known_str)
    }

    /// Blob keys `(image, thumbnail)` of the current profile image, if any and readable.
    pub fn profile_image(&self) -> Option<(&str, &str)> {
        let image = self.account.as_ref()?.profile_image.as_ref()?;
        Some((known_str(&image.image)?, known_str(&image.thumbnail)?))
    }

    /// True if a profile image is set (even one whose keys were erased).
    pub fn has_profile_image(&self) -> bool {
        self.account
            .as_ref()
            .is_some_and(|a| a.profile_image.is_some())
    }

    /// How many sign-ins have been recorded.
    pub fn login_count(&self) -> u64 {
        self.account.as_ref().map_or(0, |a| a.login_count)
    }

    /// When the account was deactivated.
    pub fn deactivated_at(&self) -> Option<DateTime<Utc>> {
        self.account.as_ref().and_then(|a| a.deactivated_at)
    }

    /// When the person was erased.
    pub fn erased_at(&self) -> Option<DateTime<Utc>> {
        self.account.as_ref().and_then(|a| a.erased_at)
    }

    /// When the person last signed out everywhere: refresh tokens issued before it are void.
    pub fn signed_out_everywhere_at(&self) -> Option<DateTime<Utc>> {
        self.account
            .as_ref()
            .and_then(|a| a.signed_out_everywhere_at)
    }
}

/// The text of a personal string, or `None` if it was erased.
fn known_str(value: &Personal<String>) -> Option<&str> {
    value.value().map(String::as_str)
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
                // An erased account still exists (as a tombstone), so its id is never reused.
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
                    subject: Personal::new(user_id, subject),
                    email: Personal::new(user_id, email),
                    nickname: Personal::new(user_id, nickname),
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
                ensure_active(account)?;
                let nickname = validate_nickname(&nickname)?;
                // An erased current nickname equals nothing, so a new one is always recorded.
                if account.nickname.value() == Some(&nickname) {
                    return Ok(vec![]);
                }
                Ok(vec![UserEvent::ProfileUpdated {
                    nickname: Personal::new(account.user_id, nickname),
                    at: now,
                }])
            }
            UserCommand::GrantCounselorRole => {
                let account = existing()?;
                if !actor.is_privileged() {
                    return Err(DomainError::Forbidden("only operators grant roles"));
                }
                ensure_active(account)?;
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
                ensure_active(account)?;
                if account.role != Role::Counselor {
                    return Err(DomainError::Forbidden("only counselors publish a profile"));
                }
                let headline = bounded_text("headline", &headline, 1, HEADLINE_MAX_CHARS)?;
                let bio = bounded_text("bio", &bio, 0, BIO_MAX_CHARS)?;
                if account
                    .counselor_profile
                    .as_ref()
                    .and_then(Personal::value)
                    .is_some_and(|p| p.headline == headline && p.bio == bio)
                {
                    return Ok(vec![]);
                }
                Ok(vec![UserEvent::CounselorProfilePublished {
                    headline: Personal::new(account.user_id, headline),
                    bio: Personal::new(account.user_id, bio),
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
                ensure_active(account)?;
                let provider = identity("provider", &provider)?;
                let owner = account.user_id;
                Ok(vec![UserEvent::LoggedIn {
                    provider,
                    ip: ip.map(|s| Personal::new(owner, truncate_chars(s.trim(), IP_MAX_CHARS))),
                    user_agent: user_agent.map(|s| {
                        Personal::new(owner, truncate_chars(s.trim(), USER_AGENT_MAX_CHARS))
                    }),
                    at: now,
                }])
            }
            UserCommand::ChangeProfileImage {
                image_key,
                thumbnail_key,
            } => {
                let account = existing()?;
                if !may_act_for(account) {
                    return Err(DomainError::Forbidden(
                        "only the user may change their profile image",
                    ));
                }
                ensure_active(account)?;
                let image = image_key_field("image_key", &image_key)?;
                let thumbnail = image_key_field("thumbnail_key", &thumbnail_key)?;
                if image == thumbnail {
                    return Err(DomainError::invalid(
                        "thumbnail_key",
                        "must differ from image_key",
                    ));
                }
                let owner = account.user_id;
                Ok(vec![UserEvent::ProfileImageChanged {
                    image: Personal::new(owner, image),
                    thumbnail: Personal::new(owner, thumbnail),
                    at: now,
                }])
            }
            UserCommand::RemoveProfileImage => {
                let account = existing()?;
                if !may_act_for(account) {
                    return Err(DomainError::Forbidden(
                        "only the user may remove their profile image",
                    ));
                }
                ensure_active(account)?;
                if account.profile_image.is_none() {
                    return Ok(vec![]);
                }
                Ok(vec![UserEvent::ProfileImageRemoved { at: now }])
            }
            UserCommand::Deactivate => {
                let account = existing()?;
                if !may_act_for(account) {
                    return Err(DomainError::Forbidden(
                        "only the user may deactivate their account",
                    ));
                }
                ensure_not_erased(account)?;
                if account.deactivated_at.is_some() {
                    return Ok(vec![]);
                }
                Ok(vec![UserEvent::Deactivated { at: now }])
            }
            UserCommand::Erase => {
                let account = existing()?;
                if !may_act_for(account) {
                    return Err(DomainError::Forbidden(
                        "only the user may erase their account",
                    ));
                }
                // A repeated request (a retry, or a second operator) finds the work done.
                if account.erased_at.is_some() {
                    return Ok(vec![]);
                }
                Ok(vec![UserEvent::Erased { at: now }])
            }
            UserCommand::SignOutEverywhere => {
                let account = existing()?;
                if !may_act_for(account) {
                    return Err(DomainError::Forbidden(
                        "only the user may sign out their sessions",
                    ));
                }
                ensure_active(account)?;
                Ok(vec![UserEvent::SignedOutEverywhere { at: now }])
            }
            UserCommand::RecordFailedSignIn { method } => {
                existing()?;
                if !actor.is_privileged() {
                    return Err(DomainError::Forbidden(
                        "only the sign-in flow records failed sign-ins",
                    ));
                }
                let method = identity("method", &method)?;
                Ok(vec![UserEvent::SignInFailed { method, at: now }])
            }
            UserCommand::RecordTokenReuse => {
                existing()?;
                if !actor.is_privileged() {
                    return Err(DomainError::Forbidden(
                        "only the sign-in flow records token reuse",
                    ));
                }
                Ok(vec![UserEvent::RefreshTokenReused { at: now }])
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
            // A second `Registered` cannot be decided; ignoring it keeps an erased account
            // from being revived with readable values.
            if state.account.is_some() {
                return state;
            }
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
                last_login_ip: None,
                last_login_user_agent: None,
                login_count: 0,
                profile_image: None,
                deactivated_at: None,
                erased_at: None,
                signed_out_everywhere_at: None,
            });
            return state;
        }
        // Events other than `Registered` cannot precede it in a valid stream, and none can
        // follow `Erased`; ignoring them keeps `evolve` total and an erased state clean.
        let Some(account) = state.account.as_mut().filter(|a| a.erased_at.is_none()) else {
            return state;
        };
        match event {
            UserEvent::Registered { .. } => {}
            UserEvent::ProfileUpdated { nickname, .. } => account.nickname = nickname.clone(),
            UserEvent::RoleGranted { role, .. } => account.role = *role,
            UserEvent::CounselorProfilePublished { headline, bio, at } => {
                // The profile is readable only while both texts are; replayed after an
                // erasure it is kept as an erased marker.
                account.counselor_profile = Some(match (headline.value(), bio.value()) {
                    (Some(headline), Some(bio)) => Personal::new(
                        account.user_id,
                        CounselorProfile {
                            headline: headline.clone(),
                            bio: bio.clone(),
                            published_at: *at,
                        },
                    ),
                    _ => Personal::Erased {
                        owner: account.user_id,
                    },
                });
            }
            UserEvent::LoggedIn {
                at, ip, user_agent, ..
            } => {
                account.last_login_at = Some(*at);
                account.last_login_ip = ip.clone();
                account.last_login_user_agent = user_agent.clone();
                account.login_count += 1;
            }
            UserEvent::ProfileImageChanged {
                image, thumbnail, ..
            } => {
                account.profile_image = Some(ProfileImage {
                    image: image.clone(),
                    thumbnail: thumbnail.clone(),
                });
            }
            UserEvent::ProfileImageRemoved { .. } => account.profile_image = None,
            UserEvent::Deactivated { at } => {
                account.deactivated_at = Some(*at);
                // A deactivated user's images are deleted, so the state no longer points at them.
                account.profile_image = None;
            }
            UserEvent::Erased { at } => account.forget_personal_data(*at),
            UserEvent::SignedOutEverywhere { at } => account.signed_out_everywhere_at = Some(*at),
            // Security audit records: facts for operators, no state of the account.
            UserEvent::SignInFailed { .. } | UserEvent::RefreshTokenReused { .. } => {}
        }
        state
    }
}

/// Rejects any command on an erased account: nothing about a forgotten person is decidable.
fn ensure_not_erased(account: &Account) -> Result<(), DomainError> {
    if account.erased_at.is_some() {
        return Err(DomainError::Conflict("user erased"));
    }
    Ok(())
}

/// Rejects commands that need a live account (neither erased nor deactivated).
fn ensure_active(account: &Account) -> Result<(), DomainError> {
    ensure_not_erased(account)?;
    if account.deactivated_at.is_some() {
        return Err(DomainError::Conflict("user is deactivated"));
    }
    Ok(())
}

/// Trims `value` and checks its length in characters is within `min..=max`.
pub(crate) fn bounded_text(
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

/// A blob key: 1..=200 characters of `[A-Za-z0-9._/-]`, no `..`, so every backend can
/// store it as a path or object key without escaping.
fn image_key_field(field: &'static str, value: &str) -> Result<String, DomainError> {
    let key = bounded_text(field, value, 1, IMAGE_KEY_MAX_CHARS)?;
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/');
    if !key.chars().all(allowed) || key.contains("..") || key.starts_with('/') {
        return Err(DomainError::invalid(field, "is not a valid blob key"));
    }
    Ok(key)
}

/// Cuts `value` to at most `max` characters, on a character boundary.
fn truncate_chars(value: &str, max: usize) -> String {
    value.chars().take(max).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{Spec, at, erase_personal_data, system_ctx, user_ctx, user_id};

    const ME: UserId = user_id(1);
    const OTHER: UserId = user_id(2);

    /// A readable personal value of the user under test.
    fn p(value: impl Into<String>) -> Personal<String> {
        Personal::new(ME, value.into())
    }

    fn registered_as(role: Role) -> UserEvent {
        UserEvent::Registered {
            user_id: ME,
            provider: "google".into(),
            subject: p("sub-1"),
            email: p("me@example.com"),
            nickname: p("Mina"),
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
                subject: p("sub-1"),
                email: p("me@example.com"),
                nickname: p("가".repeat(40)),
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
            UserCommand::Erase,
            UserCommand::SignOutEverywhere,
            UserCommand::RecordFailedSignIn {
                method: "password".into(),
            },
            UserCommand::RecordTokenReuse,
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
                nickname: p("Minji"),
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
                nickname: p("Minji"),
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
                headline: p("Family therapist"),
                bio: p("Ten years."),
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
                headline: p("Family therapist"),
                bio: p("Ten years."),
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
                headline: p("h".repeat(120)),
                bio: p("b".repeat(4000)),
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
                ip: Some(p("127.0.0.1")),
                user_agent: Some(p("x".repeat(USER_AGENT_MAX_CHARS))),
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

    // --- Security audit records ----------------------------------------------------------------

    #[test]
    fn the_sign_in_flow_records_a_failed_sign_in_without_changing_the_account() {
        let before = Spec::<UserDecider>::given(vec![registered()])
            .when(UserCommand::SignOutEverywhere, &me(3))
            .then(vec![signed_out(3)]);
        let state = Spec::<UserDecider>::given(vec![registered(), signed_out(3)])
            .when(
                UserCommand::RecordFailedSignIn {
                    method: " password ".into(),
                },
                &system_ctx(at(7)),
            )
            .then(vec![UserEvent::SignInFailed {
                method: "password".into(),
                at: at(7),
            }]);
        assert_eq!(
            state.signed_out_everywhere_at(),
            before.signed_out_everywhere_at()
        );
        assert_eq!(state.login_count(), 0);
        assert!(
            !UserEvent::SignInFailed {
                method: "password".into(),
                at: at(7)
            }
            .revokes_access()
        );
    }

    #[test]
    fn failed_sign_ins_are_recorded_on_a_deactivated_account_too() {
        Spec::<UserDecider>::given(vec![registered(), deactivated()])
            .when(
                UserCommand::RecordFailedSignIn {
                    method: "google".into(),
                },
                &system_ctx(at(9)),
            )
            .then(vec![UserEvent::SignInFailed {
                method: "google".into(),
                at: at(9),
            }]);
    }

    #[test]
    fn only_the_sign_in_flow_records_security_events() {
        Spec::<UserDecider>::given(vec![registered()])
            .when(
                UserCommand::RecordFailedSignIn {
                    method: "password".into(),
                },
                &me(7),
            )
            .then_error(DomainError::Forbidden(
                "only the sign-in flow records failed sign-ins",
            ));
        Spec::<UserDecider>::given(vec![registered()])
            .when(UserCommand::RecordTokenReuse, &me(7))
            .then_error(DomainError::Forbidden(
                "only the sign-in flow records token reuse",
            ));
        Spec::<UserDecider>::given(vec![registered()])
            .when(
                UserCommand::RecordFailedSignIn {
                    method: String::new(),
                },
                &system_ctx(at(7)),
            )
            .then_error(DomainError::invalid("method", "must not be blank"));
    }

    #[test]
    fn the_sign_in_flow_records_refresh_token_reuse() {
        Spec::<UserDecider>::given(vec![registered()])
            .when(UserCommand::RecordTokenReuse, &system_ctx(at(8)))
            .then(vec![UserEvent::RefreshTokenReused { at: at(8) }]);
    }

    // --- SignOutEverywhere --------------------------------------------------------------------

    fn signed_out(secs: i64) -> UserEvent {
        UserEvent::SignedOutEverywhere { at: at(secs) }
    }

    #[test]
    fn user_signs_out_everywhere() {
        let state = Spec::<UserDecider>::given(vec![registered()])
            .when(UserCommand::SignOutEverywhere, &me(7))
            .then(vec![signed_out(7)]);
        assert_eq!(state.signed_out_everywhere_at(), Some(at(7)));
        assert!(state.is_active(), "signing out does not close the account");
    }

    #[test]
    fn operator_signs_a_user_out_everywhere_but_others_may_not() {
        Spec::<UserDecider>::given(vec![registered()])
            .when(UserCommand::SignOutEverywhere, &operator(7))
            .then(vec![signed_out(7)]);
        Spec::<UserDecider>::given(vec![registered()])
            .when(UserCommand::SignOutEverywhere, &other(7))
            .then_error(DomainError::Forbidden(
                "only the user may sign out their sessions",
            ));
    }

    #[test]
    fn signing_out_everywhere_again_is_recorded_again() {
        // Sessions started after the first sign-out must end too, so it is no no-op.
        let state = Spec::<UserDecider>::given(vec![registered(), signed_out(7)])
            .when(UserCommand::SignOutEverywhere, &me(9))
            .then(vec![signed_out(9)]);
        assert_eq!(state.signed_out_everywhere_at(), Some(at(9)));
    }

    #[test]
    fn a_deactivated_user_cannot_sign_out_everywhere() {
        Spec::<UserDecider>::given(vec![registered(), deactivated()])
            .when(UserCommand::SignOutEverywhere, &me(9))
            .then_error(DomainError::Conflict("user is deactivated"));
    }

    #[test]
    fn role_changes_closures_and_sign_outs_revoke_access_tokens() {
        let revoking = [
            UserEvent::RoleGranted {
                role: Role::Counselor,
                at: at(1),
            },
            deactivated(),
            UserEvent::Erased { at: at(6) },
            signed_out(7),
        ];
        for event in &revoking {
            assert!(event.revokes_access(), "{}", event.event_type());
        }
        let names: Vec<&str> = revoking.iter().map(DomainEvent::event_type).collect();
        assert_eq!(names, ACCESS_REVOKING_EVENTS);
        let harmless = [
            registered(),
            UserEvent::ProfileUpdated {
                nickname: p("Minji"),
                at: at(1),
            },
            UserEvent::LoggedIn {
                provider: "google".into(),
                ip: None,
                user_agent: None,
                at: at(2),
            },
            UserEvent::ProfileImageRemoved { at: at(3) },
        ];
        for event in &harmless {
            assert!(!event.revokes_access(), "{}", event.event_type());
        }
        for closing in ACCOUNT_CLOSING_EVENTS {
            assert!(ACCESS_REVOKING_EVENTS.contains(&closing));
        }
    }

    // --- Erase --------------------------------------------------------------------------------

    fn erased(secs: i64) -> UserEvent {
        UserEvent::Erased { at: at(secs) }
    }

    /// A user with every kind of personal data: profile, counselor profile and a sign-in.
    fn full_history() -> Vec<UserEvent> {
        vec![
            registered_as(Role::Counselor),
            UserEvent::ProfileUpdated {
                nickname: p("Minji"),
                at: at(1),
            },
            UserEvent::CounselorProfilePublished {
                headline: p("Family therapist"),
                bio: p("Ten years."),
                at: at(2),
            },
            UserEvent::LoggedIn {
                provider: "google".into(),
                ip: Some(p("203.0.113.7")),
                user_agent: Some(p("Firefox")),
                at: at(3),
            },
        ]
    }

    /// Asserts that `state` keeps the account's structure but no personal value.
    #[track_caller]
    fn assert_forgotten(state: &UserState) {
        assert_eq!(state.email(), None);
        assert_eq!(state.nickname(), None);
        assert_eq!(state.subject(), None);
        assert_eq!(state.counselor_profile(), None);
        assert_eq!(state.last_login_ip(), None);
        assert_eq!(state.last_login_user_agent(), None);
        let dump = format!("{state:?}");
        for personal in [
            "me@example.com",
            "Minji",
            "sub-1",
            "Family",
            "203.0.113.7",
            "Firefox",
        ] {
            assert!(!dump.contains(personal), "{personal} leaked into {dump}");
        }
    }

    #[test]
    fn full_history_is_readable_before_erasure() {
        let state = UserDecider::fold(&full_history());
        assert_eq!(state.email(), Some("me@example.com"));
        assert_eq!(state.nickname(), Some("Minji"));
        assert_eq!(state.subject(), Some("sub-1"));
        assert_eq!(state.last_login_ip(), Some("203.0.113.7"));
        assert_eq!(state.last_login_user_agent(), Some("Firefox"));
        assert_eq!(
            state.counselor_profile().map(|p| p.headline.as_str()),
            Some("Family therapist")
        );
        assert!(!state.is_erased());
    }

    #[test]
    fn user_erases_themself() {
        let state = Spec::<UserDecider>::given(full_history())
            .when(UserCommand::Erase, &counselor_ctx(9))
            .then(vec![erased(9)]);
        assert!(state.is_erased());
        assert_eq!(state.erased_at(), Some(at(9)));
        assert!(!state.is_active());
        assert!(state.is_registered());
    }

    #[test]
    fn operator_or_system_erases_a_user() {
        for ctx in [operator(9), system_ctx(at(9))] {
            Spec::<UserDecider>::given(vec![registered()])
                .when(UserCommand::Erase, &ctx)
                .then(vec![erased(9)]);
        }
    }

    #[test]
    fn another_user_cannot_erase() {
        Spec::<UserDecider>::given(vec![registered()])
            .when(UserCommand::Erase, &other(9))
            .then_error(DomainError::Forbidden(
                "only the user may erase their account",
            ));
    }

    #[test]
    fn a_deactivated_user_can_be_erased() {
        let state = Spec::<UserDecider>::given(vec![registered(), deactivated()])
            .when(UserCommand::Erase, &me(9))
            .then(vec![erased(9)]);
        assert!(state.is_erased());
        assert!(state.is_deactivated());
        assert_eq!(state.deactivated_at(), Some(at(5)));
    }

    #[test]
    fn erasing_twice_changes_nothing() {
        for ctx in [me(10), operator(10)] {
            Spec::<UserDecider>::given(vec![registered(), erased(9)])
                .when(UserCommand::Erase, &ctx)
                .then_nothing();
        }
    }

    #[test]
    fn commands_on_an_erased_user_conflict() {
        let commands = [
            UserCommand::UpdateProfile {
                nickname: "New".into(),
            },
            UserCommand::GrantCounselorRole,
            publish("h", "b"),
            UserCommand::RecordLogin {
                provider: "google".into(),
                ip: None,
                user_agent: None,
            },
            UserCommand::Deactivate,
            UserCommand::SignOutEverywhere,
        ];
        for command in commands {
            // Erased after deactivation too: erasure wins over "deactivated".
            for history in [
                vec![registered_as(Role::Counselor), erased(9)],
                vec![registered_as(Role::Counselor), deactivated(), erased(9)],
            ] {
                Spec::<UserDecider>::given(history)
                    .when(command.clone(), &system_ctx(at(10)))
                    .then_error(DomainError::Conflict("user erased"));
            }
        }
        // The user themself is told the same.
        Spec::<UserDecider>::given(vec![registered(), erased(9)])
            .when(
                UserCommand::UpdateProfile {
                    nickname: "New".into(),
                },
                &me(10),
            )
            .then_error(DomainError::Conflict("user erased"));
        // Authorization still comes first: a stranger learns nothing new.
        Spec::<UserDecider>::given(vec![registered(), erased(9)])
            .when(UserCommand::Deactivate, &other(10))
            .then_error(DomainError::Forbidden(
                "only the user may deactivate their account",
            ));
    }

    #[test]
    fn an_erased_user_cannot_be_registered_again() {
        // The id stays taken by the tombstone; a returning person signs up under a new id.
        Spec::<UserDecider>::given(vec![registered(), erased(9)])
            .when(register_cmd("Mina", "me@example.com"), &system_ctx(at(10)))
            .then_error(DomainError::AlreadyExists("user"));
    }

    #[test]
    fn erased_state_holds_no_personal_values() {
        let mut history = full_history();
        history.push(erased(9));
        let state = UserDecider::fold(&history);
        assert_forgotten(&state);
        // Everything that is not personal survives.
        assert_eq!(state.user_id(), Some(ME));
        assert_eq!(state.provider(), Some("google"));
        assert_eq!(state.role(), Some(Role::Counselor));
        assert_eq!(state.registered_at(), Some(at(0)));
        assert_eq!(state.last_login_at(), Some(at(3)));
        assert_eq!(state.login_count(), 1);
        assert!(state.is_erased());
        assert!(!state.is_active());
    }

    #[test]
    fn events_with_erased_fields_still_fold() {
        // As the store returns the stream after the key was shredded.
        let mut history = erase_personal_data(&full_history(), ME);
        assert!(matches!(
            &history[0],
            UserEvent::Registered { email, .. } if email.is_erased() && email.owner() == ME
        ));
        let state = UserDecider::fold(&history);
        assert_forgotten(&state);
        assert_eq!(state.user_id(), Some(ME));
        assert_eq!(state.role(), Some(Role::Counselor));
        assert_eq!(state.registered_at(), Some(at(0)));
        assert_eq!(state.last_login_at(), Some(at(3)));
        assert_eq!(state.login_count(), 1);
        // ... and the `Erased` event itself replays on top of them.
        history.push(erased(9));
        let state = UserDecider::fold(&history);
        assert_forgotten(&state);
        assert!(state.is_erased());
    }

    #[test]
    fn an_erased_nickname_never_equals_a_new_one() {
        // Fields erased without an `Erased` event (not decidable, but the fold must cope).
        let history = vec![UserEvent::Registered {
            user_id: ME,
            provider: "google".into(),
            subject: Personal::Erased { owner: ME },
            email: Personal::Erased { owner: ME },
            nickname: Personal::Erased { owner: ME },
            role: Role::Client,
            at: at(0),
        }];
        Spec::<UserDecider>::given(history)
            .when(
                UserCommand::UpdateProfile {
                    nickname: "Mina".into(),
                },
                &me(1),
            )
            .then(vec![UserEvent::ProfileUpdated {
                nickname: p("Mina"),
                at: at(1),
            }]);
    }

    #[test]
    fn debug_of_events_and_state_redacts_personal_values() {
        let history = full_history();
        let dump = format!("{history:?} {:?}", UserDecider::fold(&history));
        for personal in [
            "me@example.com",
            "Minji",
            "sub-1",
            "Family",
            "203.0.113.7",
            "Firefox",
        ] {
            assert!(!dump.contains(personal), "{personal} leaked into {dump}");
        }
    }

    // --- Serialization ------------------------------------------------------------------------

    #[test]
    fn events_round_trip_through_json_adjacently_tagged() {
        let events = vec![
            registered(),
            UserEvent::ProfileUpdated {
                nickname: p("Minji"),
                at: at(1),
            },
            UserEvent::RoleGranted {
                role: Role::Counselor,
                at: at(2),
            },
            UserEvent::CounselorProfilePublished {
                headline: p("h"),
                bio: p("b"),
                at: at(3),
            },
            UserEvent::LoggedIn {
                provider: "google".into(),
                ip: None,
                user_agent: Some(p("ua")),
                at: at(4),
            },
            deactivated(),
            erased(6),
            UserEvent::SignedOutEverywhere { at: at(7) },
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
        assert_eq!(json["data"]["provider"], "google");
    }

    #[test]
    fn personal_fields_carry_the_personal_wrapper_with_their_owner() {
        let owned =
            |value: &str| serde_json::json!({ "$personal": { "owner": ME, "value": value } });
        let json = serde_json::to_value(registered()).expect("serialize");
        assert_eq!(json["data"]["email"], owned("me@example.com"));
        assert_eq!(json["data"]["nickname"], owned("Mina"));
        assert_eq!(json["data"]["subject"], owned("sub-1"));
        let json = serde_json::to_value(&full_history()[2]).expect("serialize");
        assert_eq!(json["data"]["headline"], owned("Family therapist"));
        assert_eq!(json["data"]["bio"], owned("Ten years."));
        let json = serde_json::to_value(&full_history()[3]).expect("serialize");
        assert_eq!(json["data"]["ip"], owned("203.0.113.7"));
        assert_eq!(json["data"]["user_agent"], owned("Firefox"));
        let json = serde_json::to_value(UserEvent::LoggedIn {
            provider: "google".into(),
            ip: None,
            user_agent: None,
            at: at(4),
        })
        .expect("serialize");
        assert_eq!(json["data"]["ip"], serde_json::Value::Null);
    }

    #[test]
    fn erased_personal_fields_deserialize() {
        let erased_field = serde_json::json!({ "$personal": { "owner": ME, "erased": true } });
        let json = serde_json::json!({
            "type": "Registered",
            "data": {
                "user_id": ME,
                "provider": "google",
                "subject": erased_field,
                "email": erased_field,
                "nickname": erased_field,
                "role": "counselor",
                "at": at(0),
            }
        });
        let event: UserEvent = serde_json::from_value(json).expect("deserialize");
        let UserEvent::Registered {
            email, nickname, ..
        } = &event
        else {
            panic!("expected Registered, got {event:?}");
        };
        assert_eq!(email, &Personal::Erased { owner: ME });
        assert_eq!(nickname, &Personal::Erased { owner: ME });
        // Written back, the erased form is exactly what was read.
        let back = serde_json::to_value(&event).expect("serialize");
        assert_eq!(back["data"]["email"], erased_field);
        let json = serde_json::json!({
            "type": "LoggedIn",
            "data": { "provider": "google", "ip": erased_field, "user_agent": null, "at": at(3) }
        });
        let event: UserEvent = serde_json::from_value(json).expect("deserialize");
        assert!(matches!(
            event,
            UserEvent::LoggedIn { ip: Some(ip), user_agent: None, .. } if ip.is_erased()
        ));
    }

    #[test]
    fn kind_is_user() {
        assert_eq!(UserDecider::KIND, StreamKind::User);
    }

    // --- Profile image ----------------------------------------------------------------------

    fn change_image(image: &str, thumb: &str) -> UserCommand {
        UserCommand::ChangeProfileImage {
            image_key: image.into(),
            thumbnail_key: thumb.into(),
        }
    }

    fn image_changed(image: &str, thumb: &str, secs: i64) -> UserEvent {
        UserEvent::ProfileImageChanged {
            image: p(image),
            thumbnail: p(thumb),
            at: at(secs),
        }
    }

    #[test]
    fn user_sets_own_profile_image() {
        let state = Spec::<UserDecider>::given(vec![registered()])
            .when(change_image("images/a.webp", "images/a_t.webp"), &me(1))
            .then(vec![image_changed("images/a.webp", "images/a_t.webp", 1)]);
        assert_eq!(
            state.profile_image(),
            Some(("images/a.webp", "images/a_t.webp"))
        );
    }

    #[test]
    fn operator_may_replace_anyones_image_but_others_may_not() {
        Spec::<UserDecider>::given(vec![registered(), image_changed("a", "a_t", 1)])
            .when(change_image("b", "b_t"), &operator(2))
            .then(vec![image_changed("b", "b_t", 2)]);
        Spec::<UserDecider>::given(vec![registered()])
            .when(change_image("b", "b_t"), &other(2))
            .then_error(DomainError::Forbidden(
                "only the user may change their profile image",
            ));
        Spec::<UserDecider>::given(vec![registered(), image_changed("a", "a_t", 1)])
            .when(UserCommand::RemoveProfileImage, &other(2))
            .then_error(DomainError::Forbidden(
                "only the user may remove their profile image",
            ));
    }

    #[test]
    fn image_keys_are_validated() {
        for (image, thumb) in [
            ("", "t"),
            ("a", " "),
            ("../etc/passwd", "t"),
            ("/abs", "t"),
            ("a b", "t"),
            ("same", "same"),
        ] {
            Spec::<UserDecider>::given(vec![registered()])
                .when(change_image(image, thumb), &me(1))
                .then_error_code("invalid");
        }
        let long = "k".repeat(IMAGE_KEY_MAX_CHARS + 1);
        Spec::<UserDecider>::given(vec![registered()])
            .when(change_image(&long, "t"), &me(1))
            .then_error_code("invalid");
    }

    #[test]
    fn user_removes_the_image_and_removing_none_changes_nothing() {
        let state = Spec::<UserDecider>::given(vec![registered(), image_changed("a", "a_t", 1)])
            .when(UserCommand::RemoveProfileImage, &me(2))
            .then(vec![UserEvent::ProfileImageRemoved { at: at(2) }]);
        assert_eq!(state.profile_image(), None);
        Spec::<UserDecider>::given(vec![registered()])
            .when(UserCommand::RemoveProfileImage, &me(2))
            .then(vec![]);
    }

    #[test]
    fn image_commands_on_deactivated_or_erased_users_conflict() {
        for command in [change_image("a", "a_t"), UserCommand::RemoveProfileImage] {
            Spec::<UserDecider>::given(vec![registered(), deactivated()])
                .when(command.clone(), &me(10))
                .then_error(DomainError::Conflict("user is deactivated"));
            Spec::<UserDecider>::given(vec![registered(), erased(9)])
                .when(command, &system_ctx(at(10)))
                .then_error(DomainError::Conflict("user erased"));
        }
    }

    #[test]
    fn deactivation_and_erasure_forget_the_image() {
        let state = UserDecider::fold(&[registered(), image_changed("a", "a_t", 1), deactivated()]);
        assert!(!state.has_profile_image());
        let state = UserDecider::fold(&[registered(), image_changed("a", "a_t", 1), erased(9)]);
        assert_eq!(state.profile_image(), None);
        assert!(!state.has_profile_image());
        // Replayed with shredded keys, the image is known to exist but unreadable.
        let shredded = erase_personal_data(&[registered(), image_changed("a", "a_t", 1)], ME);
        let state = UserDecider::fold(&shredded);
        assert!(state.has_profile_image());
        assert_eq!(state.profile_image(), None);
    }

    #[test]
    fn image_events_round_trip_with_personal_keys() {
        let event = image_changed("a", "a_t", 1);
        let json = serde_json::to_value(&event).expect("serializes");
        assert_eq!(json["type"], "ProfileImageChanged");
        assert!(json["data"]["image"].get("$personal").is_some());
        let back: UserEvent = serde_json::from_value(json).expect("deserializes");
        assert_eq!(back, event);
        assert!(!format!("{event:?}").contains("a_t"));
    }
}
