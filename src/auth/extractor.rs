//! actix extractors that turn `Authorization: Bearer <jwt>` into a verified caller. A handler
//! that takes [`AuthUser`] cannot run for an anonymous, forged, expired or foreign token.

use super::jwt::AccessClaims;
use super::{AuthError, AuthService};
use crate::edge::http::ApiError;
use actix_web::dev::Payload;
use actix_web::http::header::AUTHORIZATION;
use actix_web::{FromRequest, HttpRequest, web};
use futures::future::LocalBoxFuture;
use neulbi_domain::{Role, UserId};

/// Any caller with a valid access token: a person or a service client.
#[derive(Debug, Clone)]
pub struct Principal {
    /// The verified claims.
    pub claims: AccessClaims,
}

impl Principal {
    /// True if the token grants `scope`.
    pub fn has_scope(&self, scope: &str) -> bool {
        self.claims.scope.split_whitespace().any(|s| s == scope)
    }
}

/// A signed-in person (a user token, not a service-client token).
#[derive(Debug, Clone)]
pub struct AuthUser {
    /// The user.
    pub user_id: UserId,
    /// The role the token was issued with.
    pub role: Role,
    /// The verified claims.
    pub claims: AccessClaims,
}

impl AuthUser {
    /// The context and metadata of a command this person gives through the HTTP API: they act
    /// as themself, and the events carry a fresh correlation id and their user id.
    pub fn command_context(&self) -> (neulbi_domain::Context, crate::store::Metadata) {
        let ctx = neulbi_domain::Context::new(
            neulbi_domain::Actor::user(self.user_id, self.role),
            chrono::Utc::now(),
        );
        (ctx, crate::store::Metadata::acting(self.user_id.as_uuid()))
    }
}

/// The bearer token of a request, if the header holds one.
fn bearer(req: &HttpRequest) -> Option<String> {
    let value = req.headers().get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_owned())
        .filter(|t| !t.is_empty())
}

async fn verify(
    auth: Option<web::Data<AuthService>>,
    token: Option<String>,
) -> Result<AccessClaims, ApiError> {
    let auth = auth.ok_or_else(|| ApiError::unavailable("sign-in is not configured"))?;
    let token = token.ok_or(AuthError::MissingToken)?;
    Ok(auth.verify_access(&token).await?)
}

impl FromRequest for Principal {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let auth = req.app_data::<web::Data<AuthService>>().cloned();
        let token = bearer(req);
        Box::pin(async move {
            Ok(Self {
                claims: verify(auth, token).await?,
            })
        })
    }
}

impl FromRequest for AuthUser {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let auth = req.app_data::<web::Data<AuthService>>().cloned();
        let token = bearer(req);
        Box::pin(async move {
            let claims = verify(auth, token).await?;
            let role = claims
                .role
                .ok_or(AuthError::Forbidden("a service token cannot act as a user"))?;
            let user_id = claims
                .sub
                .parse::<UserId>()
                .map_err(|_| AuthError::InvalidToken("subject is not a user"))?;
            Ok(Self {
                user_id,
                role,
                claims,
            })
        })
    }
}
