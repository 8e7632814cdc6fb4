//! External sign-in: the authorization-code flow with `state` and PKCE (S256) against Google,
//! Naver, Kakao, and any OpenID Connect issuer found by discovery (id_token checked, nonce
//! included).
//!
//! The `oauth2` crate builds every authorization request and the PKCE pair. OIDC issuers go
//! through `openidconnect` end to end. For Google, Naver and Kakao the code exchange is a plain
//! form POST parsed leniently, because Naver answers with `expires_in` as a string and reports
//! errors with status 200, which a strict RFC 6749 parser rejects; their profiles are then
//! fetched from each provider's documented user endpoint and mapped by [`profiles`].
//!
//! Between the redirect and the callback the flow's secrets (PKCE verifier, nonce, return URL)
//! wait in `auth_pending_logins`, keyed by the SHA-256 of `state`, so any node can finish the
//! flow; the browser holds `state` in a cookie too, so a callback from another browser (login
//! CSRF) fails. The row is deleted when used: a replayed callback fails.

pub mod oidc;
pub mod profiles;

use super::tokens::{hash_secret, random_secret};
use crate::store::Database;
use oauth2::{AuthUrl, ClientId, CsrfToken, PkceCodeChallenge, RedirectUrl, Scope, TokenUrl};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;
use thiserror::Error;

/// How long a started sign-in may take at the provider.
const PENDING_TTL_MICROS: i64 = 600 * 1_000_000;

/// Which protocol dialect a provider speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    /// Google (OAuth 2.0 + its OIDC userinfo endpoint).
    Google,
    /// Naver Login.
    Naver,
    /// Kakao Login.
    Kakao,
    /// Any OpenID Connect issuer, configured by `issuer_url` (discovery).
    Oidc,
}

/// One provider's configuration (`[auth.providers.NAME]`). Client id and secret come from
/// `NEULBI_AUTH_<NAME>_CLIENT_ID` / `_CLIENT_SECRET` only.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderSettings {
    /// The dialect.
    pub kind: ProviderKind,
    /// The issuer to discover (`oidc` only).
    #[serde(default)]
    pub issuer_url: Option<String>,
    /// Overrides of the documented endpoints (for proxies and tests).
    #[serde(default)]
    pub auth_url: Option<String>,
    /// Token endpoint override.
    #[serde(default)]
    pub token_url: Option<String>,
    /// User-profile endpoint override.
    #[serde(default)]
    pub userinfo_url: Option<String>,
    /// Scopes to request; each kind has a sensible default.
    #[serde(default)]
    pub scopes: Option<Vec<String>>,
    /// The button label on the login page.
    #[serde(default)]
    pub display_name: Option<String>,
    /// The OAuth client id (environment only).
    #[serde(skip)]
    pub client_id: Option<String>,
    /// The OAuth client secret (environment only).
    #[serde(skip)]
    pub client_secret: Option<String>,
}

impl std::fmt::Debug for ProviderSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProviderSettings")
            .field("kind", &self.kind)
            .field("issuer_url", &self.issuer_url)
            .field("client_id", &self.client_id)
            .field(
                "client_secret",
                &self.client_secret.as_ref().map(|_| "<set>"),
            )
            .finish_non_exhaustive()
    }
}

impl ProviderSettings {
    /// Settings of `kind` with the documented endpoints and no credentials yet.
    pub fn new(kind: ProviderKind) -> Self {
        Self {
            kind,
            issuer_url: None,
            auth_url: None,
            token_url: None,
            userinfo_url: None,
            scopes: None,
            display_name: None,
            client_id: None,
            client_secret: None,
        }
    }

    fn endpoint(&self, which: &str) -> Option<String> {
        let (auth, token, user) = match self.kind {
            ProviderKind::Google => (
                "https://accounts.google.com/o/oauth2/v2/auth",
                "https://oauth2.googleapis.com/token",
                "https://openidconnect.googleapis.com/v1/userinfo",
            ),
            ProviderKind::Naver => (
                "https://nid.naver.com/oauth2.0/authorize",
                "https://nid.naver.com/oauth2.0/token",
                "https://openapi.naver.com/v1/nid/me",
            ),
            ProviderKind::Kakao => (
                "https://kauth.kakao.com/oauth/authorize",
                "https://kauth.kakao.com/oauth/token",
                "https://kapi.kakao.com/v2/user/me",
            ),
            ProviderKind::Oidc => return None,
        };
        let (configured, default) = match which {
            "auth" => (&self.auth_url, auth),
            "token" => (&self.token_url, token),
            _ => (&self.userinfo_url, user),
        };
        Some(configured.clone().unwrap_or_else(|| default.to_owned()))
    }

    fn scopes(&self) -> Vec<String> {
        if let Some(s) = &self.scopes {
            return s.clone();
        }
        match self.kind {
            ProviderKind::Google | ProviderKind::Oidc => {
                vec!["openid".into(), "email".into(), "profile".into()]
            }
            // Naver and Kakao grant what the app's console configures; no scope is needed.
            ProviderKind::Naver | ProviderKind::Kakao => Vec::new(),
        }
    }
}

/// One person as an external provider describes them.
#[derive(Clone, PartialEq, Eq)]
pub struct ExternalIdentity {
    /// The provider's configured name.
    pub provider: String,
    /// The stable subject id at that provider.
    pub subject: String,
    /// The (verified) e-mail address, if shared.
    pub email: Option<String>,
    /// A display name, if shared.
    pub nickname: Option<String>,
    /// A profile picture URL, if shared.
    pub picture: Option<String>,
}

impl ExternalIdentity {
    /// An identity with empty strings treated as absent.
    pub fn new(
        provider: &str,
        subject: String,
        email: Option<String>,
        nickname: Option<String>,
        picture: Option<String>,
    ) -> Self {
        let present = |v: Option<String>| v.map(|s| s.trim().to_owned()).filter(|s| !s.is_empty());
        Self {
            provider: provider.to_owned(),
            subject,
            email: present(email),
            nickname: present(nickname),
            picture: present(picture),
        }
    }
}

impl std::fmt::Debug for ExternalIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExternalIdentity")
            .field("provider", &self.provider)
            .finish_non_exhaustive()
    }
}

/// Why an external sign-in failed. Messages are safe to show.
#[derive(Debug, Error)]
pub enum ProviderError {
    /// No provider of that name is configured.
    #[error("unknown sign-in provider")]
    Unknown,
    /// `state` is missing, does not match the browser's, or was already used.
    #[error("invalid or expired sign-in state: {0}")]
    InvalidState(&'static str),
    /// The return URL is not on the allow-list.
    #[error("return URL not allowed")]
    ReturnUrlNotAllowed,
    /// The provider redirected back with `error=`.
    #[error("the provider refused the sign-in: {0}")]
    Denied(String),
    /// The provider rejected the code exchange (wrong PKCE verifier, used or expired code).
    #[error("the provider rejected the authorization code: {0}")]
    Rejected(String),
    /// The provider timed out, answered 5xx, or could not be reached.
    #[error("the sign-in provider is unavailable: {0}")]
    Unavailable(String),
    /// The profile or id_token could not be used.
    #[error("unusable answer from the provider: {0}")]
    BadProfile(String),
    /// The provider did not share an e-mail address, which an account needs.
    #[error("the provider did not share a verified e-mail address; allow it and try again")]
    EmailRequired,
    /// The request is malformed.
    #[error("invalid request: {0}")]
    InvalidRequest(&'static str),
    /// Configuration is incomplete (missing client id, issuer URL).
    #[error("provider misconfigured: {0}")]
    Config(String),
    /// The pending-login table failed.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

impl From<sqlx::Error> for ProviderError {
    fn from(e: sqlx::Error) -> Self {
        Self::Store(e.into())
    }
}

/// A started sign-in: where to send the browser, and the `state` for its cookie.
#[derive(Debug)]
pub struct Started {
    /// The provider's authorization URL.
    pub redirect: String,
    /// The `state` value (also set as a cookie).
    pub state: String,
}

/// A finished sign-in.
#[derive(Debug)]
pub struct Finished {
    /// Who signed in.
    pub identity: ExternalIdentity,
    /// Where the browser goes next (allow-listed when the sign-in started).
    pub return_to: String,
}

/// The configured providers and what they share.
pub struct Providers {
    providers: BTreeMap<String, ProviderSettings>,
    public_url: String,
    web_client_url: String,
    allowed_return_urls: Vec<oauth2::url::Url>,
    http: oauth2::reqwest::Client,
    db: Database,
    discovered: oidc::DiscoveryCache,
}

impl Providers {
    /// The providers of `settings`, with redirect URIs derived from `public_url`.
    pub fn new(
        settings: &super::AuthSettings,
        public_url: &str,
        db: Database,
    ) -> Result<Self, ProviderError> {
        let http = oauth2::reqwest::Client::builder()
            // Following redirects from a provider would open the door to SSRF.
            .redirect(oauth2::reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(settings.provider_timeout_secs.max(1)))
            .build()
            .map_err(|e| ProviderError::Config(e.to_string()))?;
        let public_url = public_url.trim_end_matches('/').to_owned();
        let web_client_url = settings
            .web_client_url
            .clone()
            .unwrap_or_else(|| format!("{public_url}/"));
        let mut allowed = vec![web_client_url.clone()];
        allowed.extend(settings.allowed_return_urls.iter().cloned());
        let allowed_return_urls = allowed
            .iter()
            .map(|u| {
                oauth2::url::Url::parse(u)
                    .map_err(|e| ProviderError::Config(format!("return URL {u:?}: {e}")))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            providers: settings
                .providers
                .iter()
                .filter(|(_, p)| p.client_id.is_some())
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            public_url,
            web_client_url,
            allowed_return_urls,
            http,
            db,
            discovered: oidc::DiscoveryCache::default(),
        })
    }

    /// The configured providers (name, label), for the login page.
    pub fn list(&self) -> Vec<(String, String)> {
        self.providers
            .iter()
            .map(|(name, p)| {
                (
                    name.clone(),
                    p.display_name.clone().unwrap_or_else(|| name.clone()),
                )
            })
            .collect()
    }

    /// True if `name` is a configured provider (so it may label a metric: the set is bounded).
    pub fn is_configured(&self, name: &str) -> bool {
        self.providers.contains_key(name)
    }

    /// The callback URL of `name`, derived from the public URL.
    pub fn redirect_uri(&self, name: &str) -> String {
        format!("{}/login/oauth2/code/{name}", self.public_url)
    }

    /// Checks a requested return URL against the allow-list: same scheme, host and port as an
    /// allowed URL, and a path under its path. Absent means the web client.
    pub fn check_return_url(&self, requested: Option<&str>) -> Result<String, ProviderError> {
        let Some(requested) = requested.filter(|r| !r.is_empty()) else {
            return Ok(self.web_client_url.clone());
        };
        let url =
            oauth2::url::Url::parse(requested).map_err(|_| ProviderError::ReturnUrlNotAllowed)?;
        let allowed = self.allowed_return_urls.iter().any(|a| {
            a.scheme() == url.scheme()
                && a.host_str() == url.host_str()
                && a.port_or_known_default() == url.port_or_known_default()
                && url.username().is_empty()
                && url.password().is_none()
                && url.path().starts_with(a.path())
        });
        if allowed {
            Ok(url.to_string())
        } else {
            Err(ProviderError::ReturnUrlNotAllowed)
        }
    }

    fn get(&self, name: &str) -> Result<&ProviderSettings, ProviderError> {
        self.providers.get(name).ok_or(ProviderError::Unknown)
    }

    /// Starts a sign-in at provider `name`: remembers state, PKCE verifier, nonce and return
    /// URL, and returns the provider's authorization URL.
    pub async fn begin(
        &self,
        name: &str,
        return_to: Option<&str>,
    ) -> Result<Started, ProviderError> {
        let provider = self.get(name)?;
        let return_to = self.check_return_url(return_to)?;
        let redirect_uri = RedirectUrl::new(self.redirect_uri(name))
            .map_err(|e| ProviderError::Config(e.to_string()))?;
        let client_id = provider
            .client_id
            .clone()
            .ok_or_else(|| ProviderError::Config("client id missing".into()))?;
        let state = random_secret("");
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let (redirect, nonce) = if provider.kind == ProviderKind::Oidc {
            let metadata = self.discovered.get(&self.http, name, provider).await?;
            let nonce = random_secret("");
            let url = oidc::authorize_url(
                metadata,
                provider,
                &client_id,
                redirect_uri,
                &state,
                &nonce,
                challenge,
            );
            (url, Some(nonce))
        } else {
            let auth_url = AuthUrl::new(provider.endpoint("auth").unwrap_or_default())
                .map_err(|e| ProviderError::Config(e.to_string()))?;
            let token_url = TokenUrl::new(provider.endpoint("token").unwrap_or_default())
                .map_err(|e| ProviderError::Config(e.to_string()))?;
            let client = oauth2::basic::BasicClient::new(ClientId::new(client_id))
                .set_auth_uri(auth_url)
                .set_token_uri(token_url)
                .set_redirect_uri(redirect_uri);
            let state_value = state.clone();
            let (url, _) = client
                .authorize_url(move || CsrfToken::new(state_value))
                .add_scopes(provider.scopes().into_iter().map(Scope::new))
                .set_pkce_challenge(challenge)
                .url();
            (url.to_string(), None)
        };
        let now = chrono::Utc::now().timestamp_micros();
        on_db!(&self.db, p => sqlx::query("DELETE FROM auth_pending_logins WHERE expires_at < $1")
            .bind(now).execute(p).await?.rows_affected());
        let expires = now + PENDING_TTL_MICROS;
        on_db!(&self.db, p => sqlx::query(
            "INSERT INTO auth_pending_logins \
             (state_hash, provider, pkce_verifier, nonce, return_to, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6)")
            .bind(hash_secret(&state)).bind(name).bind(verifier.secret())
            .bind(nonce).bind(&return_to).bind(expires).execute(p).await?.rows_affected());
        Ok(Started { redirect, state })
    }

    /// Finishes a sign-in from the callback's query: checks `state` against the browser's
    /// cookie and the stored flow, exchanges the code with the PKCE verifier, and reads the
    /// identity.
    pub async fn finish(
        &self,
        name: &str,
        query: &CallbackQuery,
        cookie_state: Option<&str>,
    ) -> Result<Finished, ProviderError> {
        let provider = self.get(name)?;
        if let Some(error) = &query.error {
            let error: String = error
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
                .take(64)
                .collect();
            return Err(ProviderError::Denied(error));
        }
        let state = query
            .state
            .as_deref()
            .ok_or(ProviderError::InvalidState("state is missing"))?;
        let cookie = cookie_state.ok_or(ProviderError::InvalidState(
            "this browser did not start the sign-in",
        ))?;
        use subtle::ConstantTimeEq;
        if !bool::from(state.as_bytes().ct_eq(cookie.as_bytes())) {
            return Err(ProviderError::InvalidState("state does not match"));
        }
        let code = query
            .code
            .as_deref()
            .ok_or(ProviderError::InvalidRequest("code is missing"))?;
        let now = chrono::Utc::now().timestamp_micros();
        let pending: Option<(String, String, Option<String>, String, i64)> = on_db!(&self.db, p => sqlx::query_as(
            "DELETE FROM auth_pending_logins WHERE state_hash = $1 \
             RETURNING provider, pkce_verifier, nonce, return_to, expires_at")
            .bind(hash_secret(state)).fetch_optional(p).await?);
        let (pending_provider, verifier, nonce, return_to, expires) =
            pending.ok_or(ProviderError::InvalidState("unknown or already used state"))?;
        if pending_provider != name || expires < now {
            return Err(ProviderError::InvalidState(
                "expired or for another provider",
            ));
        }
        let redirect_uri = self.redirect_uri(name);
        let identity = match provider.kind {
            ProviderKind::Oidc => {
                let metadata = self.discovered.get(&self.http, name, provider).await?;
                oidc::exchange(
                    &self.http,
                    metadata,
                    name,
                    provider,
                    &redirect_uri,
                    code,
                    verifier,
                    nonce.unwrap_or_default(),
                )
                .await?
            }
            kind => {
                let access = self
                    .exchange_plain(provider, &redirect_uri, code, &verifier)
                    .await?;
                let body = self.userinfo(provider, &access).await?;
                match kind {
                    ProviderKind::Google => profiles::google(name, &body)?,
                    ProviderKind::Naver => profiles::naver(name, &body)?,
                    _ => profiles::kakao(name, &body)?,
                }
            }
        };
        Ok(Finished {
            identity,
            return_to,
        })
    }

    /// The code exchange of Google, Naver and Kakao (see the module docs for why by hand).
    async fn exchange_plain(
        &self,
        provider: &ProviderSettings,
        redirect_uri: &str,
        code: &str,
        verifier: &str,
    ) -> Result<String, ProviderError> {
        #[derive(Deserialize)]
        struct TokenAnswer {
            access_token: Option<String>,
            error: Option<String>,
        }
        let mut form = vec![
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", redirect_uri),
            ("code_verifier", verifier),
        ];
        let client_id = provider.client_id.clone().unwrap_or_default();
        let secret = provider.client_secret.clone().unwrap_or_default();
        form.push(("client_id", &client_id));
        if !secret.is_empty() {
            form.push(("client_secret", &secret));
        }
        let url = provider.endpoint("token").unwrap_or_default();
        let res = self
            .http
            .post(&url)
            .header("Accept", "application/json")
            .form(&form)
            .send()
            .await
            .map_err(|e| ProviderError::Unavailable(unavailable_reason(&e)))?;
        let status = res.status();
        if status.is_server_error() {
            return Err(ProviderError::Unavailable(format!(
                "token endpoint answered {status}"
            )));
        }
        let body = res
            .bytes()
            .await
            .map_err(|e| ProviderError::Unavailable(unavailable_reason(&e)))?;
        let answer: TokenAnswer = serde_json::from_slice(&body)
            .map_err(|_| ProviderError::BadProfile("token answer is not JSON".into()))?;
        match (answer.access_token, answer.error) {
            (Some(token), None) if status.is_success() => Ok(token),
            (_, error) => Err(ProviderError::Rejected(
                error.unwrap_or_else(|| status.to_string()),
            )),
        }
    }

    async fn userinfo(
        &self,
        provider: &ProviderSettings,
        access_token: &str,
    ) -> Result<Vec<u8>, ProviderError> {
        let url = provider.endpoint("userinfo").unwrap_or_default();
        let res = self
            .http
            .get(&url)
            .bearer_auth(access_token)
            .header("Accept", "application/json")
            .send()
            .await
            .map_err(|e| ProviderError::Unavailable(unavailable_reason(&e)))?;
        let status = res.status();
        if status.is_server_error() {
            return Err(ProviderError::Unavailable(format!(
                "profile endpoint answered {status}"
            )));
        }
        if !status.is_success() {
            return Err(ProviderError::BadProfile(format!(
                "profile endpoint answered {status}"
            )));
        }
        Ok(res
            .bytes()
            .await
            .map_err(|e| ProviderError::Unavailable(unavailable_reason(&e)))?
            .to_vec())
    }
}

/// A short reason for a transport failure, without URLs (which may carry codes).
pub(crate) fn unavailable_reason(e: &oauth2::reqwest::Error) -> String {
    if e.is_timeout() {
        "timed out".into()
    } else if e.is_connect() {
        "connection failed".into()
    } else {
        "transport error".into()
    }
}

/// The callback's query string.
#[derive(Debug, Default, Deserialize)]
pub struct CallbackQuery {
    /// The authorization code.
    pub code: Option<String>,
    /// The state echoed back.
    pub state: Option<String>,
    /// The provider's error code, when the sign-in did not happen.
    pub error: Option<String>,
}
