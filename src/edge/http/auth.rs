//! Sign-in routes: local sign-up and sign-in, the OAuth 2.0 token endpoint, logout, and the
//! public keys. Tokens travel only in bodies, headers and an HttpOnly cookie — never in a URL.

use super::ApiError;
use crate::auth::providers::{CallbackQuery, ProviderError};
use crate::auth::service::{ClientInfo, NewUser};
use crate::auth::{AuthError, AuthService, TokenResponse};
use crate::state::AppState;
use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpRequest, HttpResponse, web};
use base64::Engine as _;
use serde::Deserialize;
use tracing::Instrument;

/// The cookie that carries the refresh token for the browser client.
pub const REFRESH_COOKIE: &str = "neulbi_refresh";

/// Registers the sign-in routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    let form = web::FormConfig::default()
        .limit(16 * 1024)
        .error_handler(|e, _| {
            ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", e.to_string()).into()
        });
    let json = web::JsonConfig::default()
        .limit(16 * 1024)
        .error_handler(|e, _| {
            ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", e.to_string()).into()
        });
    cfg.route("/.well-known/jwks.json", web::get().to(jwks))
        .route("/auth/providers", web::get().to(providers))
        .route(
            "/oauth2/authorization/{provider}",
            web::get().to(start_external),
        )
        .route(
            "/login/oauth2/code/{provider}",
            web::get().to(finish_external),
        )
        .service(
            web::resource("/oauth/token")
                .app_data(form)
                .route(web::post().to(token)),
        )
        .service(
            web::scope("/auth")
                .app_data(json)
                .route("/signup", web::post().to(signup))
                .route("/login", web::post().to(login))
                .route("/logout", web::post().to(logout))
                .route("/logout-all", web::post().to(logout_all)),
        );
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        let (status, code) = match &e {
            AuthError::MissingToken | AuthError::InvalidToken(_) => {
                (StatusCode::UNAUTHORIZED, "invalid_token")
            }
            AuthError::TokenRevoked => (StatusCode::UNAUTHORIZED, "token_revoked"),
            AuthError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            AuthError::InvalidGrant(_) | AuthError::TokenReuse => {
                (StatusCode::BAD_REQUEST, "invalid_grant")
            }
            AuthError::InvalidClient => (StatusCode::UNAUTHORIZED, "invalid_client"),
            AuthError::UnsupportedGrantType => (StatusCode::BAD_REQUEST, "unsupported_grant_type"),
            AuthError::InvalidRequest(_) => (StatusCode::BAD_REQUEST, "invalid_request"),
            AuthError::BadCredentials => (StatusCode::UNAUTHORIZED, "invalid_credentials"),
            AuthError::RateLimited(_) => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
            AuthError::EmailTaken => (StatusCode::CONFLICT, "email_taken"),
            AuthError::RegistrationInProgress => (StatusCode::CONFLICT, "registration_in_progress"),
            AuthError::AccountClosed => (StatusCode::FORBIDDEN, "account_closed"),
            AuthError::Actor(_) | AuthError::Store(_) => {
                return match e {
                    AuthError::Actor(a) => a.into(),
                    AuthError::Store(s) => s.into(),
                    _ => ApiError::unavailable("retry later"),
                };
            }
            AuthError::Key(_) => {
                tracing::error!(error = %e, "sign-in key failure");
                return ApiError::unavailable("sign-in is unavailable; retry later");
            }
        };
        ApiError::new(status, code, e.to_string())
    }
}

/// The client's address (through trusted proxies) and user agent, for the `LoggedIn` event
/// and the sign-in rate limiter.
fn client_info(req: &HttpRequest) -> ClientInfo {
    let trusted = req
        .app_data::<web::Data<super::client_ip::TrustedProxies>>()
        .map(|t| t.get_ref().clone())
        .unwrap_or_default();
    let forwarded = req
        .headers()
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok());
    ClientInfo {
        ip: trusted
            .client(req.peer_addr().map(|a| a.ip()), forwarded)
            .map(|ip| ip.to_string()),
        user_agent: req
            .headers()
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
    }
}

/// The refresh token in the request's cookie, if any.
fn refresh_cookie(req: &HttpRequest) -> Option<String> {
    req.headers()
        .get_all(header::COOKIE)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == REFRESH_COOKIE)
        .map(|(_, value)| value.to_owned())
        .filter(|v| !v.is_empty())
}

fn cookie_header(auth: &AuthService, value: &str, max_age: u64) -> Option<HeaderValue> {
    let secure = if auth.settings().cookie_secure {
        "; Secure"
    } else {
        ""
    };
    HeaderValue::from_str(&format!(
        "{REFRESH_COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}"
    ))
    .ok()
}

/// A token response: JSON, never cached, and the refresh token also set as a cookie.
fn token_response(auth: &AuthService, tokens: &TokenResponse) -> HttpResponse {
    let mut res = HttpResponse::Ok();
    res.insert_header((header::CACHE_CONTROL, "no-store"))
        .insert_header((header::PRAGMA, "no-cache"));
    if let Some(cookie) = tokens
        .refresh_token
        .as_deref()
        .and_then(|t| cookie_header(auth, t, auth.settings().refresh_token_ttl_secs))
    {
        res.append_header((header::SET_COOKIE, cookie));
    }
    res.json(tokens)
}

/// `GET /.well-known/jwks.json`: the public keys that verify access tokens.
async fn jwks(auth: web::Data<AuthService>) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "public, max-age=300"))
        .json(auth.jwks())
}

/// The token endpoint's form (RFC 6749 §4.1.3, §4.4.2, §6).
#[derive(Deserialize)]
struct TokenForm {
    grant_type: String,
    code: Option<String>,
    refresh_token: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
    scope: Option<String>,
}

/// Client credentials from `Authorization: Basic` (RFC 6749 §2.3.1).
fn basic_credentials(req: &HttpRequest) -> Option<(String, String)> {
    let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (id, secret) = text.split_once(':')?;
    Some((id.to_owned(), secret.to_owned()))
}

/// `POST /oauth/token`: `authorization_code` (a login code), `refresh_token` (from the form or
/// the cookie), `client_credentials` (service clients).
async fn token(
    req: HttpRequest,
    auth: web::Data<AuthService>,
    form: web::Form<TokenForm>,
) -> Result<HttpResponse, ApiError> {
    let form = form.into_inner();
    let span = tracing::info_span!("oauth_token", grant_type = %form.grant_type);
    let tokens = grant(&req, &auth, form).instrument(span).await?;
    Ok(token_response(&auth, &tokens))
}

async fn grant(
    req: &HttpRequest,
    auth: &AuthService,
    form: TokenForm,
) -> Result<TokenResponse, ApiError> {
    Ok(match form.grant_type.as_str() {
        "authorization_code" => {
            let code = form
                .code
                .ok_or_else(|| AuthError::InvalidRequest("code is required".into()))?;
            auth.exchange_login_code(&code).await?
        }
        "refresh_token" => {
            let token = form
                .refresh_token
                .or_else(|| refresh_cookie(req))
                .ok_or_else(|| AuthError::InvalidRequest("refresh_token is required".into()))?;
            auth.refresh(&token).await?
        }
        "client_credentials" => {
            let (id, secret) = match (form.client_id, form.client_secret) {
                (Some(id), Some(secret)) => (id, secret),
                _ => basic_credentials(req).ok_or(AuthError::InvalidClient)?,
            };
            auth.client_credentials(&id, &secret, form.scope.as_deref())
                .await?
        }
        _ => return Err(AuthError::UnsupportedGrantType.into()),
    })
}

/// Sign-up body.
#[derive(Deserialize)]
struct SignupBody {
    email: String,
    password: String,
    nickname: Option<String>,
}

/// `POST /auth/signup`: a new local account (role client), signed in.
async fn signup(
    req: HttpRequest,
    state: web::Data<AppState>,
    auth: web::Data<AuthService>,
    body: web::Json<SignupBody>,
) -> Result<HttpResponse, ApiError> {
    let tokens = auth
        .signup(
            &state.users,
            &body.email,
            &body.password,
            body.nickname.as_deref(),
            &client_info(&req),
        )
        .instrument(tracing::info_span!("signup"))
        .await?;
    let mut res = token_response(&auth, &tokens);
    *res.status_mut() = StatusCode::CREATED;
    Ok(res)
}

/// Sign-in body.
#[derive(Deserialize)]
struct LoginBody {
    email: String,
    password: String,
}

/// `POST /auth/login`: e-mail + password; rate-limited per account and per address.
async fn login(
    req: HttpRequest,
    state: web::Data<AppState>,
    auth: web::Data<AuthService>,
    body: web::Json<LoginBody>,
) -> Result<HttpResponse, ApiError> {
    match auth
        .login(
            &state.users,
            &body.email,
            &body.password,
            &client_info(&req),
        )
        .instrument(tracing::info_span!("login"))
        .await
    {
        Ok(tokens) => Ok(token_response(&auth, &tokens)),
        Err(AuthError::RateLimited(secs)) => {
            let body = ApiError::from(AuthError::RateLimited(secs));
            let mut res = actix_web::ResponseError::error_response(&body);
            if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                res.headers_mut().insert(header::RETRY_AFTER, v);
            }
            Ok(res)
        }
        Err(e) => Err(e.into()),
    }
}

/// Logout body (optional: the cookie works too).
#[derive(Deserialize, Default)]
struct LogoutBody {
    refresh_token: Option<String>,
}

/// `POST /auth/logout`: revokes the session of the presented refresh token and clears the
/// cookie. Idempotent; 204 whether or not the token was known.
async fn logout(
    req: HttpRequest,
    auth: web::Data<AuthService>,
    body: Option<web::Json<LogoutBody>>,
) -> Result<HttpResponse, ApiError> {
    let token = body
        .and_then(|b| b.into_inner().refresh_token)
        .or_else(|| refresh_cookie(&req))
        .ok_or_else(|| AuthError::InvalidRequest("refresh_token is required".into()))?;
    auth.logout(&token)
        .instrument(tracing::info_span!("logout"))
        .await?;
    Ok(clear_cookie(&auth, HttpResponse::NoContent()))
}

/// `POST /auth/logout-all` ("sign out everywhere"): ends every session of the signed-in
/// person on every node. Their access tokens issued so far are refused from now on (401
/// `token_revoked`), their open STOMP and `/rtc` sessions are closed, and every refresh token
/// of theirs is revoked; the cookie is cleared. 204. Signing in again starts afresh.
async fn logout_all(
    user: crate::auth::AuthUser,
    state: web::Data<AppState>,
    auth: web::Data<AuthService>,
) -> Result<HttpResponse, ApiError> {
    let (ctx, metadata) = user.command_context();
    auth.sign_out_everywhere(&state.users, user.user_id, ctx, metadata)
        .instrument(tracing::info_span!("logout_all", user_id = %user.user_id))
        .await?;
    Ok(clear_cookie(&auth, HttpResponse::NoContent()))
}

/// Finishes `res` with a header that deletes the refresh cookie.
pub fn clear_cookie(auth: &AuthService, mut res: actix_web::HttpResponseBuilder) -> HttpResponse {
    if let Some(cookie) = cookie_header(auth, "", 0) {
        res.append_header((header::SET_COOKIE, cookie));
    }
    res.finish()
}

/// The cookie that binds an external sign-in to the browser that started it.
pub const STATE_COOKIE: &str = "neulbi_oauth_state";

impl From<ProviderError> for ApiError {
    fn from(e: ProviderError) -> Self {
        let (status, code) = match &e {
            ProviderError::Unknown => (StatusCode::NOT_FOUND, "unknown_provider"),
            ProviderError::InvalidState(_) => (StatusCode::BAD_REQUEST, "invalid_state"),
            ProviderError::ReturnUrlNotAllowed => (StatusCode::BAD_REQUEST, "invalid_return_url"),
            ProviderError::Denied(_) => (StatusCode::BAD_REQUEST, "provider_error"),
            ProviderError::Rejected(_) => (StatusCode::BAD_REQUEST, "invalid_grant"),
            ProviderError::Unavailable(_) => (StatusCode::BAD_GATEWAY, "provider_unavailable"),
            ProviderError::BadProfile(_) => (StatusCode::BAD_GATEWAY, "provider_bad_answer"),
            ProviderError::EmailRequired => (StatusCode::BAD_REQUEST, "email_required"),
            ProviderError::InvalidRequest(_) => (StatusCode::BAD_REQUEST, "invalid_request"),
            ProviderError::Config(_) => {
                tracing::error!(error = %e, "sign-in provider misconfigured");
                return ApiError::unavailable("this sign-in provider is misconfigured");
            }
            ProviderError::Store(_) => {
                return match e {
                    ProviderError::Store(s) => s.into(),
                    _ => ApiError::unavailable("retry later"),
                };
            }
        };
        if status.is_server_error() {
            tracing::warn!(error = %e, "sign-in provider failed");
        }
        ApiError::new(status, code, e.to_string())
    }
}

/// `GET /auth/providers`: the configured external providers, for the login page.
async fn providers(auth: web::Data<AuthService>) -> HttpResponse {
    let list: Vec<serde_json::Value> = auth
        .providers()
        .list()
        .into_iter()
        .map(|(name, label)| {
            serde_json::json!({
                "name": name,
                "display_name": label,
                "authorization_url": format!("/oauth2/authorization/{name}"),
            })
        })
        .collect();
    HttpResponse::Ok().json(serde_json::json!({
        "providers": list,
        "local": true,
        "demo": auth.demo_accounts(),
    }))
}

fn query<T: serde::de::DeserializeOwned>(req: &HttpRequest) -> Result<T, ApiError> {
    web::Query::<T>::from_query(req.query_string())
        .map(web::Query::into_inner)
        .map_err(|_| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "malformed query",
            )
        })
}

fn cookie_value(req: &HttpRequest, name: &str) -> Option<String> {
    req.headers()
        .get_all(header::COOKIE)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, value)| value.to_owned())
        .filter(|v| !v.is_empty())
}

fn state_cookie(auth: &AuthService, value: &str, max_age: u64) -> Option<HeaderValue> {
    let secure = if auth.settings().cookie_secure {
        "; Secure"
    } else {
        ""
    };
    // Lax, not Strict: the provider's redirect back is a cross-site top-level navigation.
    HeaderValue::from_str(&format!(
        "{STATE_COOKIE}={value}; Path=/login/oauth2; HttpOnly; SameSite=Lax; Max-Age={max_age}{secure}"
    ))
    .ok()
}

#[derive(Deserialize)]
struct StartQuery {
    return_to: Option<String>,
}

/// `GET /oauth2/authorization/{provider}`: redirects to the provider with `state`, PKCE and
/// (for OIDC) a nonce. `return_to` must be on the allow-list.
async fn start_external(
    req: HttpRequest,
    auth: web::Data<AuthService>,
    provider: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let q: StartQuery = query(&req)?;
    let span = tracing::info_span!("oauth2_start", provider = %provider);
    let started = auth
        .providers()
        .begin(&provider, q.return_to.as_deref())
        .instrument(span)
        .await?;
    let mut res = HttpResponse::Found();
    res.insert_header((header::LOCATION, started.redirect))
        .insert_header((header::CACHE_CONTROL, "no-store"));
    if let Some(c) = state_cookie(&auth, &started.state, 600) {
        res.append_header((header::SET_COOKIE, c));
    }
    Ok(res.finish())
}

/// `GET /login/oauth2/code/{provider}`: the provider's redirect back. Checks state, exchanges
/// the code, signs the person in (registering them on first sign-in), and sends the browser to
/// the return URL with a one-time login code in the fragment (never a token).
async fn finish_external(
    req: HttpRequest,
    state: web::Data<AppState>,
    auth: web::Data<AuthService>,
    provider: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let q: CallbackQuery = query(&req)?;
    let cookie = cookie_value(&req, STATE_COOKIE);
    let span = tracing::info_span!("oauth2_callback", provider = %provider);
    let result = async {
        let finished = auth
            .providers()
            .finish(&provider, &q, cookie.as_deref())
            .await?;
        let id = finished.identity;
        let email = id.email.clone().ok_or(ProviderError::EmailRequired)?;
        let nickname: String = id
            .nickname
            .clone()
            .unwrap_or_else(|| email.split('@').next().unwrap_or("user").to_owned())
            .chars()
            .take(neulbi_domain::user::NICKNAME_MAX_CHARS)
            .collect();
        let new = NewUser {
            provider: id.provider.clone(),
            subject: Some(id.subject.clone()),
            email,
            nickname,
            role: neulbi_domain::Role::Client,
        };
        let code = auth
            .external_sign_in(&state.users, &new, &client_info(&req))
            .await?;
        let mut target = oauth2::url::Url::parse(&finished.return_to)
            .map_err(|_| ProviderError::ReturnUrlNotAllowed)?;
        target.set_fragment(Some(&format!("login_code={code}")));
        let mut res = HttpResponse::Found();
        res.insert_header((header::LOCATION, target.to_string()))
            .insert_header((header::CACHE_CONTROL, "no-store"))
            .insert_header(("Referrer-Policy", "no-referrer"));
        if let Some(c) = state_cookie(&auth, "", 0) {
            res.append_header((header::SET_COOKIE, c));
        }
        Ok(res.finish())
    }
    .instrument(span)
    .await;
    // Only configured names label the metric: the path segment is the client's to choose.
    let name = if auth.providers().is_configured(&provider) {
        provider.into_inner()
    } else {
        "unknown".to_owned()
    };
    let outcome = if result.is_ok() { "ok" } else { "failed" };
    crate::telemetry::metrics::metrics().sign_ins.add(
        1,
        &[
            opentelemetry::KeyValue::new("provider", name),
            crate::telemetry::metrics::label("outcome", outcome),
        ],
    );
    result
}
