//! The sign-in service: every flow that ends in tokens (local sign-up and sign-in, login-code
//! exchange, refresh rotation, service clients), and the checks of access tokens. It talks to
//! user aggregates only through the users registry, like every other writer.

use super::AuthError;
use super::epochs::{Epoch, RevocationKind, TokenEpochs};
use super::identities::{IdentityKey, IdentityStore};
use super::jwt::{AccessClaims, TokenIssuer};
use super::keys::KeyRing;
use super::password::{check_password_rules, hash_password, verify_password};
use super::rate_limit::RateLimiter;
use super::settings::AuthSettings;
use super::tokens::{TokenStore, hash_secret};
use crate::actors::{ActorError, Registry, codec};
use crate::privacy::KeyStore;
use crate::store::{Database, Direction, Metadata, SharedStore, Storage};
use neulbi_domain::system::SystemCommand;
use neulbi_domain::user::{UserCommand, UserDecider, UserEvent, UserState};
use neulbi_domain::{Actor, Context, Decider, DomainError, Role, StreamKind, StreamName, UserId};
use serde::Serialize;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;
use tracing::Instrument;
use uuid::Uuid;

/// The provider name of local (e-mail + password) accounts.
pub const LOCAL_PROVIDER: &str = "local";
/// The client id of the browser client.
pub const WEB_CLIENT_ID: &str = "web";
/// A pending identity claim older than this is considered abandoned (its registering node
/// crashed) and is repaired by the next sign-in.
const STALE_CLAIM_MICROS: i64 = 30_000_000;
/// How long a sign-in waits for a concurrent sign-in of the same identity to finish.
const CLAIM_WAIT: Duration = Duration::from_secs(5);
/// Least time between two key-ring reloads triggered by an unknown `kid`.
const RELOAD_INTERVAL: Duration = Duration::from_secs(5);
/// Security records waiting for the recorder; more are dropped (and logged) rather than
/// slowing sign-in down.
const SECURITY_QUEUE: usize = 4096;

/// See [`super::keys::SIGNING_REFRESH_SECS`].
const SIGNING_REFRESH: Duration = Duration::from_secs(super::keys::SIGNING_REFRESH_SECS);

/// The demo accounts seeded on the first run of the embedded default (documented in README).
pub const DEMO_USERS: [(&str, &str, &str, Role); 2] = [
    (
        "client@demo.neulbi.local",
        "demo-client-pass",
        "Demo Client",
        Role::Client,
    ),
    (
        "counselor@demo.neulbi.local",
        "demo-counselor-pass",
        "Demo Counselor",
        Role::Counselor,
    ),
];

/// The token endpoint's answer (RFC 6749 §5.1).
#[derive(Clone, Serialize)]
pub struct TokenResponse {
    /// The access JWT.
    pub access_token: String,
    /// Always `Bearer`.
    pub token_type: &'static str,
    /// Seconds until the access token expires.
    pub expires_in: i64,
    /// The new refresh token (absent for service clients).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
    /// Granted scopes (service clients).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// The signed-in user (absent for service clients).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_id: Option<Uuid>,
    /// The refresh token's session, kept server-side only.
    #[serde(skip)]
    pub family_id: Option<String>,
}

impl std::fmt::Debug for TokenResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenResponse")
            .field("user_id", &self.user_id)
            .field("expires_in", &self.expires_in)
            .finish_non_exhaustive()
    }
}

/// Where a sign-in came from, for the `LoggedIn` event.
#[derive(Debug, Clone, Default)]
pub struct ClientInfo {
    /// The peer address.
    pub ip: Option<String>,
    /// The `User-Agent` header.
    pub user_agent: Option<String>,
}

/// A new account's details, for [`AuthService::find_or_register`].
#[derive(Clone)]
pub struct NewUser {
    /// `local`, `google`, ...
    pub provider: String,
    /// The provider's subject (for local accounts: `None`, the user id is used).
    pub subject: Option<String>,
    /// The e-mail address.
    pub email: String,
    /// The display name.
    pub nickname: String,
    /// The initial role.
    pub role: Role,
}

/// Whether an existing identity is a sign-in (external providers) or a conflict (sign-up).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExistingIdentity {
    /// Sign in as the existing user.
    SignIn,
    /// Refuse: the identity is taken.
    Refuse,
}

/// A security fact the node's recorder appends off the request path.
#[derive(Debug)]
pub enum SecurityRecord {
    /// About one account: goes to that user's stream.
    User(Uuid, UserCommand),
    /// About no account (a sign-in on an unknown e-mail): goes to the day's security journal.
    Journal(SystemCommand),
}

/// Everything sign-in needs; shared by the HTTP handlers as `web::Data<AuthService>`.
pub struct AuthService {
    settings: AuthSettings,
    issuer: TokenIssuer,
    ring: RwLock<Arc<KeyRing>>,
    ring_in_db: bool,
    /// Security records (failed sign-ins, token reuse) for the node's recorder task, which
    /// appends them through the user actors off the request path: a refused sign-in must not
    /// take longer for an existing account than for an unknown one.
    security: tokio::sync::mpsc::Sender<SecurityRecord>,
    security_feed: Mutex<Option<tokio::sync::mpsc::Receiver<SecurityRecord>>>,
    last_reload: Mutex<Instant>,
    last_signing_load: Mutex<Instant>,
    db: Database,
    events: SharedStore,
    keys: Arc<KeyStore>,
    tokens: TokenStore,
    identities: IdentityStore,
    providers: super::providers::Providers,
    account_limiter: RateLimiter,
    ip_limiter: RateLimiter,
    dummy_hash: String,
    epochs: Arc<TokenEpochs>,
    /// Whether this node seeded the demo accounts, so the sign-in page may offer them.
    demo: std::sync::atomic::AtomicBool,
}

fn system_ctx() -> Context {
    Context::new(Actor::system(), chrono::Utc::now())
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, AuthError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|_| AuthError::Actor(ActorError::Unavailable))
}

impl AuthService {
    /// Opens the sign-in service over `storage`: loads (or creates) the signing keys and the
    /// lookup secret. `issuer` is the public URL.
    pub async fn open(
        settings: &AuthSettings,
        storage: &Storage,
        issuer: &str,
    ) -> Result<Self, AuthError> {
        let grace = super::keys::grace_secs(settings.access_token_ttl_secs);
        let (ring, ring_in_db) = match &settings.signing_key_pem {
            Some(pem) => (
                KeyRing::from_pem(pem, settings.verify_keys_pem.as_deref())?,
                false,
            ),
            None => (
                KeyRing::load_or_create(&storage.database, &storage.kek, grace).await?,
                true,
            ),
        };
        let identities = IdentityStore::open(
            storage.database.clone(),
            settings.lookup_secret.as_deref(),
            &storage.kek,
        )
        .await?;
        let window = Duration::from_secs(settings.login_window_secs.max(1));
        let dummy_hash = blocking(|| hash_password("neulbi timing equaliser"))
            .await?
            .map_err(|e| AuthError::Key(e.to_string()))?;
        let providers =
            super::providers::Providers::new(settings, issuer, storage.database.clone())
                .map_err(|e| AuthError::Key(e.to_string()))?;
        let (security, security_feed) = tokio::sync::mpsc::channel(SECURITY_QUEUE);
        Ok(Self {
            security,
            security_feed: Mutex::new(Some(security_feed)),
            providers,
            issuer: TokenIssuer::new(
                issuer,
                &settings.audience,
                settings.access_token_ttl_secs.max(1),
            ),
            ring: RwLock::new(Arc::new(ring)),
            ring_in_db,
            last_reload: Mutex::new(Instant::now()),
            last_signing_load: Mutex::new(Instant::now()),
            db: storage.database.clone(),
            events: storage.events.clone(),
            keys: storage.keys.clone(),
            tokens: TokenStore::new(
                storage.database.clone(),
                settings.refresh_token_ttl_secs.max(1),
                settings.login_code_ttl_secs.max(1),
            ),
            identities,
            account_limiter: RateLimiter::new(settings.login_max_failures, window),
            ip_limiter: RateLimiter::new(settings.login_max_failures.saturating_mul(10), window),
            dummy_hash,
            demo: std::sync::atomic::AtomicBool::new(false),
            epochs: Arc::new(TokenEpochs::new(
                Duration::from_secs(settings.access_token_ttl_secs.max(1)),
                Duration::from_secs(super::jwt::LEEWAY_SECS),
            )),
            settings: settings.clone(),
        })
    }

    /// The per-user token epochs every check consults. Empty until
    /// [`TokenEpochs::follow`] rebuilt them from the log (`serve` does so before listening).
    pub fn epochs(&self) -> &Arc<TokenEpochs> {
        &self.epochs
    }

    /// The settings in force.
    pub fn settings(&self) -> &AuthSettings {
        &self.settings
    }

    /// The refresh tokens and login codes.
    pub fn tokens(&self) -> &TokenStore {
        &self.tokens
    }

    /// The external sign-in providers.
    pub fn providers(&self) -> &super::providers::Providers {
        &self.providers
    }

    /// The identity table.
    pub fn identities(&self) -> &IdentityStore {
        &self.identities
    }

    /// The access-token issuer (claims, signing, checks).
    pub fn issuer(&self) -> &TokenIssuer {
        &self.issuer
    }

    /// The current key ring.
    pub fn key_ring(&self) -> Arc<KeyRing> {
        self.ring.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The public keys, for `/.well-known/jwks.json`.
    pub fn jwks(&self) -> serde_json::Value {
        self.key_ring().jwks()
    }

    /// Rotates the signing key kept in the database (operators; the old key keeps verifying
    /// for one access-token lifetime). With keys from the environment, rotate there instead.
    pub async fn rotate_signing_key(&self) -> Result<(), AuthError> {
        if !self.ring_in_db {
            return Err(AuthError::Key(
                "signing keys come from NEULBI_AUTH_SIGNING_KEY; rotate them there".into(),
            ));
        }
        let ring = KeyRing::rotate(&self.db, self.keys.ring(), self.grace_secs()).await?;
        *self.ring.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(ring);
        Ok(())
    }

    /// The security records for the node's recorder (once; `None` after the first call).
    pub fn take_security_feed(&self) -> Option<tokio::sync::mpsc::Receiver<SecurityRecord>> {
        self.security_feed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }

    /// Queues a security record without waiting.
    fn record_security(&self, record: SecurityRecord) {
        if let Err(e) = self.security.try_send(record) {
            tracing::warn!(error = %e, "security record dropped");
        }
    }

    /// How long a retired signing key keeps verifying.
    fn grace_secs(&self) -> i64 {
        super::keys::grace_secs(self.settings.access_token_ttl_secs)
    }

    /// The ring to sign with, re-read from the database at most every [`SIGNING_REFRESH`].
    async fn signing_ring(&self) -> Arc<KeyRing> {
        if self.ring_in_db {
            let due = {
                let mut last = self
                    .last_signing_load
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                let due = last.elapsed() >= SIGNING_REFRESH;
                if due {
                    *last = Instant::now();
                }
                due
            };
            if due {
                match KeyRing::load_or_create(&self.db, self.keys.ring(), self.grace_secs()).await {
                    Ok(ring) => {
                        *self.ring.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(ring)
                    }
                    Err(e) => tracing::warn!(
                        error = %e,
                        "re-reading the signing keys failed; signing with the cached ones"
                    ),
                }
            }
        }
        self.key_ring()
    }

    /// Checks an access token: signature, claims, and for a person's token that their access
    /// was not revoked after it was issued (an in-memory lookup, see [`super::epochs`]).
    pub async fn verify_access(&self, token: &str) -> Result<AccessClaims, AuthError> {
        let claims = self.verify_signed(token).await?;
        if claims.role.is_some()
            && let Ok(user) = claims.sub.parse::<UserId>()
            && self.epochs.revoked(user, claims.user_version).is_some()
        {
            tracing::debug!(user_id = %user, "revoked access token refused");
            return Err(AuthError::TokenRevoked);
        }
        Ok(claims)
    }

    /// Checks signature and claims. An unknown `kid` reloads the ring from the database (at
    /// most every few seconds), so a rotation on another node is picked up.
    async fn verify_signed(&self, token: &str) -> Result<AccessClaims, AuthError> {
        match self.issuer.verify(&self.key_ring(), token) {
            Err(AuthError::InvalidToken("unknown signing key")) if self.ring_in_db => {
                let due = {
                    let mut last = self.last_reload.lock().unwrap_or_else(|p| p.into_inner());
                    let due = last.elapsed() >= RELOAD_INTERVAL;
                    if due {
                        *last = Instant::now();
                    }
                    due
                };
                if due {
                    let ring =
                        KeyRing::load_or_create(&self.db, self.keys.ring(), self.grace_secs())
                            .await?;
                    *self.ring.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(ring);
                }
                self.issuer.verify(&self.key_ring(), token)
            }
            other => other,
        }
    }

    /// The user aggregate's current state, folded from its stream.
    pub async fn load_user(&self, user: Uuid) -> Result<UserState, AuthError> {
        Ok(self.load_user_at(user).await?.0)
    }

    /// The user aggregate's current state and the stream version it was folded up to (`0`
    /// for a stream that does not exist): what a token issued from this state carries.
    pub async fn load_user_at(&self, user: Uuid) -> Result<(UserState, u64), AuthError> {
        const PAGE: usize = 512;
        let stream = StreamName::new(StreamKind::User, user);
        let mut state = UserState::default();
        let mut from = 0;
        let mut version = 0;
        loop {
            let page = self
                .events
                .read_stream(&stream, from, Direction::Forward, PAGE)
                .await?;
            for recorded in &page {
                let event: UserEvent = codec::decode(recorded).map_err(ActorError::from)?;
                state = UserDecider::evolve(state, &event);
                version = recorded.version;
            }
            match page.last() {
                Some(last) if page.len() == PAGE => from = last.version + 1,
                _ => return Ok((state, version)),
            }
        }
    }

    /// Access + refresh token for a signed-in user, continuing `family` on a rotation.
    /// `version` is the user stream's version the role was read at: revocations after it
    /// refuse the token, earlier ones do not.
    async fn issue_for_user(
        &self,
        user: Uuid,
        role: Role,
        version: u64,
        refresh: Option<super::tokens::IssuedRefresh>,
    ) -> Result<TokenResponse, AuthError> {
        let refresh = match refresh {
            Some(r) => r,
            None => {
                self.tokens
                    .issue_refresh(&user.to_string(), WEB_CLIENT_ID, "", None)
                    .await?
            }
        };
        let now = chrono::Utc::now().timestamp();
        let claims = self
            .issuer
            .claims(user.to_string(), WEB_CLIENT_ID, "", Some(role), now)
            .at_user_version(version);
        let access_token = self.issuer.sign(&*self.signing_ring().await, &claims)?;
        Ok(TokenResponse {
            access_token,
            token_type: "Bearer",
            expires_in: self.issuer.ttl_secs(),
            refresh_token: Some(refresh.token),
            scope: None,
            user_id: Some(user),
            family_id: Some(refresh.grant.family_id),
        })
    }

    /// Finds the user of an identity, registering a new one (appending `Registered`) on the
    /// first sign-in. Concurrent first sign-ins agree on one user through the identity
    /// table; a failed registration releases its claim.
    pub async fn find_or_register(
        &self,
        users: &Registry<UserDecider>,
        key: IdentityKey<'_>,
        password_hash: Option<&str>,
        new: &NewUser,
        existing: ExistingIdentity,
    ) -> Result<(Uuid, bool), AuthError> {
        let lookup = self.identities.lookup(key);
        let started = Instant::now();
        while started.elapsed() < CLAIM_WAIT {
            match self.identities.find(&lookup).await? {
                Some(row) if row.registered_at.is_some() => {
                    return match existing {
                        ExistingIdentity::SignIn => Ok((row.user_id, false)),
                        ExistingIdentity::Refuse => Err(AuthError::EmailTaken),
                    };
                }
                Some(row) => {
                    let age = chrono::Utc::now().timestamp_micros() - row.created_at;
                    if age > STALE_CLAIM_MICROS {
                        self.repair_claim(&lookup, row.user_id).await?;
                    } else {
                        tokio::time::sleep(Duration::from_millis(25)).await;
                    }
                }
                None => {
                    let id = Uuid::now_v7();
                    if !self
                        .identities
                        .claim(&lookup, key.kind(), id, password_hash)
                        .await?
                    {
                        continue;
                    }
                    return self.register_claimed(users, &lookup, id, new).await;
                }
            }
        }
        Err(AuthError::RegistrationInProgress)
    }

    async fn register_claimed(
        &self,
        users: &Registry<UserDecider>,
        lookup: &str,
        id: Uuid,
        new: &NewUser,
    ) -> Result<(Uuid, bool), AuthError> {
        let command = UserCommand::Register {
            user_id: UserId::from_uuid(id),
            provider: new.provider.clone(),
            subject: new.subject.clone().unwrap_or_else(|| id.to_string()),
            email: new.email.clone(),
            nickname: new.nickname.clone(),
            role: new.role,
        };
        let span = tracing::info_span!("register_user", user_id = %id, provider = %new.provider);
        let result = users
            .execute(id, command, system_ctx(), Metadata::acting(id))
            .instrument(span)
            .await;
        match result {
            Ok(_) => {
                self.identities.confirm(lookup, id).await?;
                tracing::info!(user_id = %id, "user registered");
                Ok((id, true))
            }
            Err(e) => {
                // The append may have happened even though the answer was lost; only a user
                // stream that really does not exist gives its claim back.
                self.repair_claim(lookup, id).await?;
                Err(e.into())
            }
        }
    }

    /// Settles a pending claim: confirmed if the user stream exists, released otherwise.
    async fn repair_claim(&self, lookup: &str, id: Uuid) -> Result<(), AuthError> {
        if self.load_user(id).await?.is_registered() {
            self.identities.confirm(lookup, id).await
        } else {
            self.identities.release(lookup, id).await
        }
    }

    /// Appends `LoggedIn` and returns the user's state (its role goes into the token).
    pub async fn record_login(
        &self,
        users: &Registry<UserDecider>,
        user: Uuid,
        provider: &str,
        client: &ClientInfo,
    ) -> Result<UserState, AuthError> {
        Ok(self.record_login_at(users, user, provider, client).await?.0)
    }

    /// [`AuthService::record_login`], also returning the stream version of the `LoggedIn`
    /// event (what the token issued for this sign-in carries).
    async fn record_login_at(
        &self,
        users: &Registry<UserDecider>,
        user: Uuid,
        provider: &str,
        client: &ClientInfo,
    ) -> Result<(UserState, u64), AuthError> {
        let command = UserCommand::RecordLogin {
            provider: provider.to_owned(),
            ip: client.ip.clone(),
            user_agent: client.user_agent.clone(),
        };
        match users
            .execute(user, command, system_ctx(), Metadata::acting(user))
            .await
        {
            Ok(outcome) => Ok((outcome.state, outcome.version.unwrap_or(0))),
            Err(ActorError::Domain(DomainError::Conflict(_) | DomainError::NotFound(_))) => {
                Err(AuthError::AccountClosed)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Signs in a user found by an external identity (or registered now) and returns a
    /// one-time login code for the web client.
    pub async fn external_sign_in(
        &self,
        users: &Registry<UserDecider>,
        new: &NewUser,
        client: &ClientInfo,
    ) -> Result<String, AuthError> {
        let subject = new
            .subject
            .as_deref()
            .ok_or_else(|| AuthError::InvalidRequest("the provider sent no subject".into()))?;
        let key = IdentityKey::External {
            provider: &new.provider,
            subject,
        };
        let (user, _) = self
            .find_or_register(users, key, None, new, ExistingIdentity::SignIn)
            .await?;
        self.record_login(users, user, &new.provider, client)
            .await?;
        self.tokens.create_login_code(user, &new.provider).await
    }

    /// `POST /auth/signup`: a new local account, signed in.
    pub async fn signup(
        &self,
        users: &Registry<UserDecider>,
        email: &str,
        password: &str,
        nickname: Option<&str>,
        client: &ClientInfo,
    ) -> Result<TokenResponse, AuthError> {
        check_password_rules(password).map_err(|m| AuthError::InvalidRequest(m.into()))?;
        let email = email.trim();
        if !email.contains('@') || email.len() > neulbi_domain::user::EMAIL_MAX_CHARS {
            return Err(AuthError::InvalidRequest(
                "email is not an e-mail address".into(),
            ));
        }
        let nickname = nickname
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .map_or_else(
                || email.split('@').next().unwrap_or("user").to_owned(),
                str::to_owned,
            );
        let password = password.to_owned();
        let hash = blocking(move || hash_password(&password))
            .await?
            .map_err(|e| AuthError::Key(e.to_string()))?;
        let new = NewUser {
            provider: LOCAL_PROVIDER.into(),
            subject: None,
            email: email.to_owned(),
            nickname,
            role: Role::Client,
        };
        let (user, _) = self
            .find_or_register(
                users,
                IdentityKey::Email(email),
                Some(&hash),
                &new,
                ExistingIdentity::Refuse,
            )
            .await?;
        let (state, version) = self
            .record_login_at(users, user, LOCAL_PROVIDER, client)
            .await?;
        self.issue_for_user(user, state.role().unwrap_or(Role::Client), version, None)
            .await
    }

    /// `POST /auth/login`: e-mail + password. Failures are counted per account and per
    /// client address; an unknown e-mail costs the same argon2 work as a wrong password.
    pub async fn login(
        &self,
        users: &Registry<UserDecider>,
        email: &str,
        password: &str,
        client: &ClientInfo,
    ) -> Result<TokenResponse, AuthError> {
        let lookup = self.identities.lookup(IdentityKey::Email(email));
        let account_key = format!("acct:{lookup}");
        let ip_key = format!("ip:{}", client.ip.as_deref().unwrap_or("-"));
        self.account_limiter
            .check(&account_key)
            .and_then(|()| self.ip_limiter.check(&ip_key))
            .map_err(AuthError::RateLimited)?;
        let row = self
            .identities
            .find(&lookup)
            .await?
            .filter(|r| r.registered_at.is_some());
        let stored = row.as_ref().and_then(|r| r.password_hash.clone());
        let known = stored.is_some();
        let phc = stored.unwrap_or_else(|| self.dummy_hash.clone());
        let candidate = password.chars().take(1024).collect::<String>();
        let matches = blocking(move || verify_password(&candidate, &phc)).await?;
        let user = match row {
            Some(r) if matches && known => r.user_id,
            other => {
                self.account_limiter.fail(&account_key);
                self.ip_limiter.fail(&ip_key);
                let method = "password".to_owned();
                // Both kinds are bounded by the limiters above, so a flood of guesses cannot
                // grow the log faster than they allow.
                self.record_security(match other.filter(|_| known) {
                    Some(r) => {
                        SecurityRecord::User(r.user_id, UserCommand::RecordFailedSignIn { method })
                    }
                    None => SecurityRecord::Journal(SystemCommand::RecordUnknownSignIn { method }),
                });
                password_sign_in("failed");
                return Err(AuthError::BadCredentials);
            }
        };
        self.account_limiter.reset(&account_key);
        password_sign_in("ok");
        let (state, version) = self
            .record_login_at(users, user, LOCAL_PROVIDER, client)
            .await?;
        self.issue_for_user(user, state.role().unwrap_or(Role::Client), version, None)
            .await
    }

    /// `grant_type=authorization_code`: redeems a one-time login code.
    pub async fn exchange_login_code(&self, code: &str) -> Result<TokenResponse, AuthError> {
        let (user, _provider) = self.tokens.redeem_login_code(code).await?;
        let (state, version) = self.load_user_at(user).await?;
        if !state.is_active() {
            return Err(AuthError::AccountClosed);
        }
        let response = self
            .issue_for_user(user, state.role().unwrap_or(Role::Client), version, None)
            .await?;
        if let Some(family) = &response.family_id {
            self.tokens.bind_code_family(code, family).await?;
        }
        Ok(response)
    }

    /// `grant_type=refresh_token`: rotates the refresh token and issues a new access token
    /// with the user's current role.
    pub async fn refresh(&self, token: &str) -> Result<TokenResponse, AuthError> {
        let issued = match self.tokens.rotate(token).await {
            Err(AuthError::TokenReuse) => {
                if let Some(user) = self
                    .tokens
                    .subject_of(token)
                    .await?
                    .and_then(|s| Uuid::parse_str(&s).ok())
                {
                    self.record_security(SecurityRecord::User(user, UserCommand::RecordTokenReuse));
                }
                return Err(AuthError::TokenReuse);
            }
            other => other?,
        };
        let user = Uuid::parse_str(&issued.grant.subject)
            .map_err(|_| AuthError::InvalidGrant("not a user session"))?;
        let (state, version) = self.load_user_at(user).await?;
        if !state.is_active() {
            self.tokens.revoke_family(&issued.grant.family_id).await?;
            return Err(AuthError::AccountClosed);
        }
        // A refresh racing "sign out everywhere" may have rotated its token just before the
        // families were revoked; a token older than the sign-out never starts a session.
        if let (Some(signed_out), Some(created)) = (
            state.signed_out_everywhere_at(),
            issued.predecessor_created_at,
        ) && created <= signed_out.timestamp_micros()
        {
            self.tokens.revoke_family(&issued.grant.family_id).await?;
            return Err(AuthError::InvalidGrant("the session was signed out"));
        }
        self.issue_for_user(
            user,
            state.role().unwrap_or(Role::Client),
            version,
            Some(issued),
        )
        .await
    }

    /// `grant_type=client_credentials`: an access token for a registered service client,
    /// with the requested subset of its scopes (all of them if none is requested).
    pub async fn client_credentials(
        &self,
        client_id: &str,
        secret: &str,
        scope: Option<&str>,
    ) -> Result<TokenResponse, AuthError> {
        let presented = hash_secret(secret);
        let client = self
            .settings
            .service_clients
            .iter()
            .find(|c| c.id == client_id)
            .filter(|c| {
                c.secret.as_deref().is_some_and(|s| {
                    bool::from(hash_secret(s).as_bytes().ct_eq(presented.as_bytes()))
                })
            })
            .ok_or(AuthError::InvalidClient)?;
        let granted: Vec<&str> = match scope.map(str::split_whitespace) {
            Some(requested) => {
                let requested: Vec<&str> = requested.collect();
                if let Some(bad) = requested
                    .iter()
                    .find(|s| !client.scopes.iter().any(|a| a == *s))
                {
                    return Err(AuthError::InvalidRequest(format!(
                        "scope {bad:?} is not granted to this client"
                    )));
                }
                requested
            }
            None => client.scopes.iter().map(String::as_str).collect(),
        };
        let scope = granted.join(" ");
        let now = chrono::Utc::now().timestamp();
        let claims = self.issuer.claims(
            format!("client:{}", client.id),
            &client.id,
            &scope,
            None,
            now,
        );
        Ok(TokenResponse {
            access_token: self.issuer.sign(&*self.signing_ring().await, &claims)?,
            token_type: "Bearer",
            expires_in: self.issuer.ttl_secs(),
            refresh_token: None,
            scope: Some(scope),
            user_id: None,
            family_id: None,
        })
    }

    /// `POST /auth/logout`: revokes the session of a refresh token.
    pub async fn logout(&self, refresh_token: &str) -> Result<(), AuthError> {
        self.tokens.revoke_by_token(refresh_token).await
    }

    /// `POST /auth/logout-all`: ends every session of `user`. Appends `SignedOutEverywhere`
    /// (every node then refuses the access tokens issued before it, and cuts the sessions
    /// opened with them), applies it to this node's epochs at once, and revokes every refresh
    /// token family and unused login code of the user.
    pub async fn sign_out_everywhere(
        &self,
        users: &Registry<UserDecider>,
        user: UserId,
        ctx: Context,
        metadata: Metadata,
    ) -> Result<(), AuthError> {
        let outcome = users
            .execute(
                user.as_uuid(),
                UserCommand::SignOutEverywhere,
                ctx,
                metadata,
            )
            .await?;
        if let Some(version) = outcome.version {
            self.epochs.bump(
                user,
                Epoch {
                    version,
                    recorded_at: chrono::Utc::now(),
                    kind: RevocationKind::SignInAgain,
                },
                chrono::Utc::now(),
            );
        }
        self.tokens
            .revoke_subject(&user.as_uuid().to_string())
            .await?;
        self.tokens.expire_login_codes(user.as_uuid()).await?;
        tracing::info!(user_id = %user, "signed out everywhere");
        Ok(())
    }

    /// `DELETE /users/me`: erases the user as themself (which also deletes their identity rows
    /// and tokens).
    pub async fn erase(
        &self,
        users: &Registry<UserDecider>,
        user: UserId,
        role: Role,
    ) -> Result<crate::privacy::erasure::ErasureReport, AuthError> {
        let ctx = Context::new(Actor::user(user, role), chrono::Utc::now());
        let report = crate::privacy::erasure::erase_user(
            users,
            &self.keys,
            &self.db,
            user,
            ctx,
            Metadata::acting(user.as_uuid()),
        )
        .await?;
        // The feed brings `Erased` to every node; this node refuses the old tokens at once.
        let (_, version) = self.load_user_at(user.as_uuid()).await?;
        self.epochs.bump(
            user,
            Epoch {
                version,
                recorded_at: chrono::Utc::now(),
                kind: RevocationKind::AccountClosed,
            },
            chrono::Utc::now(),
        );
        Ok(report)
    }

    /// True when the demo accounts are on (the embedded default): the sign-in page names them.
    pub fn demo_accounts(&self) -> bool {
        self.demo.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Creates the demo accounts unless they exist (first run of the embedded default).
    pub async fn seed_demo_users(&self, users: &Registry<UserDecider>) -> Result<(), AuthError> {
        self.demo.store(true, std::sync::atomic::Ordering::Relaxed);
        for (email, password, nickname, role) in DEMO_USERS {
            let lookup = self.identities.lookup(IdentityKey::Email(email));
            if self.identities.find(&lookup).await?.is_some() {
                continue;
            }
            let hash = blocking(move || hash_password(password))
                .await?
                .map_err(|e| AuthError::Key(e.to_string()))?;
            let new = NewUser {
                provider: LOCAL_PROVIDER.into(),
                subject: None,
                email: email.into(),
                nickname: nickname.into(),
                role,
            };
            match self
                .find_or_register(
                    users,
                    IdentityKey::Email(email),
                    Some(&hash),
                    &new,
                    ExistingIdentity::Refuse,
                )
                .await
            {
                // The demo counselor is listed in the directory, so a demo client can find
                // someone to talk to on the first run.
                Ok((id, true)) if role == Role::Counselor => {
                    let command = UserCommand::PublishCounselorProfile {
                        headline: "Demo counselor: listening first".into(),
                        bio: "A demo account of the embedded setup. Start a chat to try Neulbi."
                            .into(),
                    };
                    let ctx =
                        Context::new(Actor::user(UserId::from_uuid(id), role), chrono::Utc::now());
                    users
                        .execute(id, command, ctx, Metadata::default())
                        .await
                        .map_err(AuthError::from)?;
                }
                Ok(_) | Err(AuthError::EmailTaken) => {}
                Err(e) => return Err(e),
            }
        }
        tracing::info!("demo users seeded");
        Ok(())
    }
}

/// Counts a password sign-in by outcome.
fn password_sign_in(outcome: &'static str) {
    use crate::telemetry::metrics::{label, metrics};
    metrics().sign_ins.add(
        1,
        &[label("provider", "password"), label("outcome", outcome)],
    );
}
