//! Access tokens: short-lived EdDSA JWTs with a `kid`, checked against the key ring.

use super::AuthError;
use super::keys::KeyRing;
use jsonwebtoken::{Algorithm, Header, Validation};
use neulbi_domain::Role;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Tolerated clock difference between nodes when checking `exp`, in seconds.
pub const LEEWAY_SECS: u64 = 30;

/// The claims of an access token. A user token has `role`; a service-client token has none
/// and its `sub` is `client:{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessClaims {
    /// The issuer: this deployment's public URL.
    pub iss: String,
    /// The user id, or `client:{id}` for a service client.
    pub sub: String,
    /// The audience: the API.
    pub aud: String,
    /// Expiry, seconds since the epoch.
    pub exp: i64,
    /// Issued at, seconds since the epoch.
    pub iat: i64,
    /// A unique id, for audits.
    pub jti: String,
    /// The client the token was issued to (`web`, or a service client id).
    pub client_id: String,
    /// Space-separated scopes (empty for a signed-in person).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub scope: String,
    /// The user's role, for user tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
    /// The version of the user's stream when the token was issued (user tokens). A token is
    /// refused once a revoking event with a higher version is in the log (see
    /// [`super::epochs`]); a token without it counts as older than any revocation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_version: Option<u64>,
}

impl AccessClaims {
    /// The same claims, stamped with the user stream's version they were issued at.
    pub fn at_user_version(self, version: u64) -> Self {
        Self {
            user_version: Some(version),
            ..self
        }
    }
}

/// Issues and checks access tokens for one issuer and audience.
pub struct TokenIssuer {
    issuer: String,
    audience: String,
    ttl_secs: i64,
    validation: Validation,
}

impl TokenIssuer {
    /// An issuer named `issuer` (the public URL) for `audience`, issuing tokens that live
    /// `ttl_secs`.
    pub fn new(issuer: &str, audience: &str, ttl_secs: u64) -> Self {
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_audience(&[audience]);
        validation.set_issuer(&[issuer]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = LEEWAY_SECS;
        Self {
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
            ttl_secs: i64::try_from(ttl_secs).unwrap_or(600),
            validation,
        }
    }

    /// The same issuer and audience with another token lifetime: for dev tools that mint
    /// tokens for load tests (`neulbi dev bench-fixture`), never for the HTTP API.
    pub fn with_ttl(&self, ttl_secs: u64) -> Self {
        Self::new(&self.issuer, &self.audience, ttl_secs)
    }

    /// The lifetime of issued tokens, in seconds.
    pub fn ttl_secs(&self) -> i64 {
        self.ttl_secs
    }

    /// Claims for `sub`, valid from `now` (seconds since the epoch) for the configured TTL.
    pub fn claims(
        &self,
        sub: String,
        client_id: &str,
        scope: &str,
        role: Option<Role>,
        now: i64,
    ) -> AccessClaims {
        AccessClaims {
            iss: self.issuer.clone(),
            sub,
            aud: self.audience.clone(),
            exp: now + self.ttl_secs,
            iat: now,
            jti: Uuid::now_v7().to_string(),
            client_id: client_id.to_owned(),
            scope: scope.to_owned(),
            role,
            user_version: None,
        }
    }

    /// Signs `claims` with the ring's signing key.
    pub fn sign(&self, ring: &KeyRing, claims: &AccessClaims) -> Result<String, AuthError> {
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(ring.signing_kid().to_owned());
        header.typ = Some("at+jwt".into());
        jsonwebtoken::encode(&header, claims, ring.encoding_key())
            .map_err(|e| AuthError::Key(e.to_string()))
    }

    /// The key id a token names, without checking anything else (to pick the key).
    pub fn kid_of(token: &str) -> Result<String, AuthError> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| AuthError::InvalidToken("malformed token or unsupported algorithm"))?;
        if header.alg != Algorithm::EdDSA {
            return Err(AuthError::InvalidToken("unsupported algorithm"));
        }
        header
            .kid
            .ok_or(AuthError::InvalidToken("token has no key id"))
    }

    /// Checks signature, algorithm, issuer, audience and expiry; returns the claims.
    pub fn verify(&self, ring: &KeyRing, token: &str) -> Result<AccessClaims, AuthError> {
        let kid = Self::kid_of(token)?;
        let key = ring
            .decoding_key(&kid)
            .ok_or(AuthError::InvalidToken("unknown signing key"))?;
        jsonwebtoken::decode::<AccessClaims>(token, key, &self.validation)
            .map(|d| d.claims)
            .map_err(|e| {
                use jsonwebtoken::errors::ErrorKind;
                AuthError::InvalidToken(match e.kind() {
                    ErrorKind::ExpiredSignature => "token expired",
                    ErrorKind::InvalidAudience => "token is for another audience",
                    ErrorKind::InvalidIssuer => "token is from another issuer",
                    ErrorKind::InvalidSignature => "bad signature",
                    ErrorKind::InvalidAlgorithm => "unsupported algorithm",
                    ErrorKind::MissingRequiredClaim(_) => "a required claim is missing",
                    _ => "malformed token",
                })
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::keys::generate_private_pem;
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    fn ring() -> KeyRing {
        KeyRing::from_pem(&generate_private_pem().expect("pem"), None).expect("ring")
    }

    fn now() -> i64 {
        chrono::Utc::now().timestamp()
    }

    #[test]
    fn a_signed_token_verifies_and_carries_its_claims() {
        let (ring, issuer) = (ring(), TokenIssuer::new("http://x", "api", 60));
        let claims = issuer.claims("u1".into(), "web", "", Some(Role::Client), now());
        let token = issuer.sign(&ring, &claims).expect("sign");
        assert_eq!(issuer.verify(&ring, &token).expect("verify"), claims);
    }

    #[test]
    fn expired_wrong_audience_wrong_key_and_none_are_rejected() {
        let (ring, issuer) = (ring(), TokenIssuer::new("http://x", "api", 60));
        let mut expired = issuer.claims("u1".into(), "web", "", None, now() - 3600);
        expired.exp = now() - 600;
        let t = issuer.sign(&ring, &expired).expect("sign");
        assert!(matches!(
            issuer.verify(&ring, &t),
            Err(AuthError::InvalidToken("token expired"))
        ));

        let other = TokenIssuer::new("http://x", "other-api", 60);
        let t = other
            .sign(&ring, &other.claims("u1".into(), "web", "", None, now()))
            .expect("sign");
        assert!(issuer.verify(&ring, &t).is_err());

        // Another key with the same kid claim: the signature does not match.
        let stranger = self::ring();
        let t = issuer
            .sign(
                &stranger,
                &issuer.claims("u1".into(), "web", "", None, now()),
            )
            .expect("sign");
        assert!(issuer.verify(&ring, &t).is_err());

        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
        let body = URL_SAFE_NO_PAD.encode(
            serde_json::to_vec(&issuer.claims("u1".into(), "web", "", None, now())).expect("json"),
        );
        assert!(issuer.verify(&ring, &format!("{header}.{body}.")).is_err());
        assert!(issuer.verify(&ring, "garbage").is_err());
    }
}
