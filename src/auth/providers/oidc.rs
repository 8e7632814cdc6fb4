//! Any OpenID Connect issuer, found by discovery: the authorization request carries a nonce
//! and a PKCE challenge, and the id_token is verified (signature by the issuer's JWKS, issuer,
//! audience, expiry, nonce) before its claims are used.

use super::{ExternalIdentity, ProviderError, ProviderSettings, unavailable_reason};
use openidconnect::core::{CoreAuthenticationFlow, CoreClient, CoreProviderMetadata};
use openidconnect::{
    AuthorizationCode, ClientId, ClientSecret, CsrfToken, IssuerUrl, Nonce, PkceCodeChallenge,
    PkceCodeVerifier, RedirectUrl, Scope, TokenResponse as _,
};
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::Mutex;

/// Discovered metadata per provider name, fetched on first use and kept (issuers change it
/// rarely; a restart refreshes it).
#[derive(Default)]
pub struct DiscoveryCache {
    entries: Mutex<HashMap<String, Arc<CoreProviderMetadata>>>,
}

impl DiscoveryCache {
    /// The metadata of `name`, discovering it if needed.
    pub async fn get(
        &self,
        http: &openidconnect::reqwest::Client,
        name: &str,
        provider: &ProviderSettings,
    ) -> Result<Arc<CoreProviderMetadata>, ProviderError> {
        let mut entries = self.entries.lock().await;
        if let Some(m) = entries.get(name) {
            return Ok(m.clone());
        }
        let issuer = provider
            .issuer_url
            .clone()
            .ok_or_else(|| ProviderError::Config("issuer_url is required for oidc".into()))?;
        let issuer = IssuerUrl::new(issuer).map_err(|e| ProviderError::Config(e.to_string()))?;
        let metadata = CoreProviderMetadata::discover_async(issuer, http)
            .await
            .map_err(|e| ProviderError::Unavailable(discovery_reason(&e)))?;
        let metadata = Arc::new(metadata);
        entries.insert(name.to_owned(), metadata.clone());
        Ok(metadata)
    }
}

fn discovery_reason<E: std::error::Error>(e: &openidconnect::DiscoveryError<E>) -> String {
    match e {
        openidconnect::DiscoveryError::Request(_) => "discovery request failed".into(),
        openidconnect::DiscoveryError::Response(status, _, _) => {
            format!("discovery answered {status}")
        }
        other => format!("discovery failed: {other}"),
    }
}

/// The authorization URL for an OIDC issuer.
pub fn authorize_url(
    metadata: Arc<CoreProviderMetadata>,
    provider: &ProviderSettings,
    client_id: &str,
    redirect_uri: RedirectUrl,
    state: &str,
    nonce: &str,
    challenge: PkceCodeChallenge,
) -> String {
    let client = CoreClient::from_provider_metadata(
        (*metadata).clone(),
        ClientId::new(client_id.to_owned()),
        provider.client_secret.clone().map(ClientSecret::new),
    )
    .set_redirect_uri(redirect_uri);
    let (state, nonce) = (state.to_owned(), nonce.to_owned());
    let mut request = client
        .authorize_url(
            CoreAuthenticationFlow::AuthorizationCode,
            move || CsrfToken::new(state),
            move || Nonce::new(nonce),
        )
        .set_pkce_challenge(challenge);
    for scope in provider.scopes().into_iter().filter(|s| s != "openid") {
        request = request.add_scope(Scope::new(scope));
    }
    request.url().0.to_string()
}

/// Exchanges the code (with the PKCE verifier) and verifies the id_token with the nonce.
#[allow(clippy::too_many_arguments)]
pub async fn exchange(
    http: &openidconnect::reqwest::Client,
    metadata: Arc<CoreProviderMetadata>,
    name: &str,
    provider: &ProviderSettings,
    redirect_uri: &str,
    code: &str,
    verifier: String,
    nonce: String,
) -> Result<ExternalIdentity, ProviderError> {
    let client = CoreClient::from_provider_metadata(
        (*metadata).clone(),
        ClientId::new(provider.client_id.clone().unwrap_or_default()),
        provider.client_secret.clone().map(ClientSecret::new),
    )
    .set_redirect_uri(
        RedirectUrl::new(redirect_uri.to_owned())
            .map_err(|e| ProviderError::Config(e.to_string()))?,
    );
    let response = client
        .exchange_code(AuthorizationCode::new(code.to_owned()))
        .map_err(|e| ProviderError::Config(e.to_string()))?
        .set_pkce_verifier(PkceCodeVerifier::new(verifier))
        .request_async(http)
        .await
        .map_err(|e| match e {
            openidconnect::RequestTokenError::ServerResponse(r) => {
                ProviderError::Rejected(r.error().to_string())
            }
            openidconnect::RequestTokenError::Request(inner) => {
                ProviderError::Unavailable(match &inner {
                    openidconnect::HttpClientError::Reqwest(r) => unavailable_reason(r),
                    _ => "transport error".into(),
                })
            }
            openidconnect::RequestTokenError::Parse(_, body) => {
                // A 5xx page is not JSON; say "unavailable" rather than "bad answer".
                ProviderError::Unavailable(format!(
                    "token endpoint gave an unreadable answer ({} bytes)",
                    body.len()
                ))
            }
            other => ProviderError::Unavailable(other.to_string()),
        })?;
    let id_token = response
        .id_token()
        .ok_or_else(|| ProviderError::BadProfile("no id_token in the token response".into()))?;
    let claims = id_token
        .claims(&client.id_token_verifier(), &Nonce::new(nonce))
        .map_err(|e| ProviderError::BadProfile(format!("id_token rejected: {e}")))?;
    let email = claims
        .email()
        .filter(|_| claims.email_verified() != Some(false))
        .map(|e| e.as_str().to_owned());
    let nickname = claims
        .nickname()
        .and_then(|n| n.get(None))
        .map(|n| n.as_str().to_owned())
        .or_else(|| {
            claims
                .name()
                .and_then(|n| n.get(None))
                .map(|n| n.as_str().to_owned())
        })
        .or_else(|| claims.preferred_username().map(|u| u.as_str().to_owned()));
    let picture = claims
        .picture()
        .and_then(|p| p.get(None))
        .map(|p| p.as_str().to_owned());
    Ok(ExternalIdentity::new(
        name,
        claims.subject().as_str().to_owned(),
        email,
        nickname,
        picture,
    ))
}
