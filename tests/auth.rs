//! Sign-in, black-box: real servers on loopback ports (SQLite, and PostgreSQL where
//! concurrency matters), driven over HTTP. Every bad input of the issue gets a test here.

use crate::support;

use crate::support::http::{get, post_form, post_json, request};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use neulbi::auth::jwt::TokenIssuer;
use neulbi::auth::keys::{KeyRing, generate_private_pem};
use neulbi::auth::service::{ClientInfo, NewUser};
use neulbi::auth::settings::ServiceClient;
use neulbi::auth::{AuthService, identities::IdentityKey};
use neulbi::config::Config;
use neulbi::startup::Application;
use neulbi::state::AppState;
use neulbi_domain::Role;
use serde_json::{Value, json};

struct App {
    addr: std::net::SocketAddr,
    handle: actix_web::dev::ServerHandle,
    state: actix_web::web::Data<AppState>,
    auth: actix_web::web::Data<AuthService>,
    _dir: tempfile::TempDir,
    _pg: Option<support::pg::TempPostgres>,
}

impl App {
    async fn stop(self) {
        self.handle.stop(true).await;
    }
}

async fn spawn_with(tweak: impl FnOnce(&mut Config), postgres: bool) -> App {
    let dir = tempfile::tempdir().expect("temp dir");
    let pg = postgres.then(support::pg::TempPostgres::start);
    let mut config = Config {
        listen: "127.0.0.1:0".parse().expect("addr"),
        data_dir: dir.path().to_owned(),
        database_url: pg.as_ref().map(|p| p.url()),
        ..Config::default()
    };
    tweak(&mut config);
    let app = Application::build(&config).await.expect("build app");
    let (addr, handle, state, auth) = (app.local_addr(), app.handle(), app.state(), app.auth());
    actix_rt::spawn(app.run_until_stopped());
    App {
        addr,
        handle,
        state,
        auth,
        _dir: dir,
        _pg: pg,
    }
}

async fn spawn() -> App {
    spawn_with(|_| {}, false).await
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

async fn me(app: &App, token: &str) -> support::http::Response {
    let auth = bearer(token);
    request(
        app.addr,
        "GET",
        "/users/me",
        &[("Authorization", &auth)],
        "",
    )
    .await
}

async fn refresh(app: &App, token: &str) -> support::http::Response {
    post_form(
        app.addr,
        "/oauth/token",
        &[("grant_type", "refresh_token"), ("refresh_token", token)],
        &[],
    )
    .await
}

fn field(v: &Value, name: &str) -> String {
    v[name]
        .as_str()
        .unwrap_or_else(|| panic!("no {name} in {v}"))
        .to_owned()
}

#[actix_rt::test]
async fn signup_me_refresh_rotation_reuse_and_logout() {
    let app = spawn().await;
    let r = post_json(
        app.addr,
        "/auth/signup",
        &json!({"email": "Mina@Example.com", "password": "long enough pw", "nickname": "Mina"}),
        &[("User-Agent", "tests/1.0")],
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let cookie = r.header("set-cookie").expect("refresh cookie");
    for attr in [
        "neulbi_refresh=nrt_",
        "HttpOnly",
        "Secure",
        "SameSite=Strict",
    ] {
        assert!(cookie.contains(attr), "{cookie}");
    }
    assert_eq!(r.header("cache-control").as_deref(), Some("no-store"));
    let t = r.json();
    assert_eq!(t["token_type"], "Bearer");
    let (access, refresh1) = (field(&t, "access_token"), field(&t, "refresh_token"));

    let r = me(&app, &access).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let p = r.json();
    assert_eq!(p["email"], "Mina@Example.com");
    assert_eq!(p["nickname"], "Mina");
    assert_eq!(p["role"], "client");
    assert_eq!(p["provider"], "local");
    assert_eq!(p["login_count"], 1);

    // The same e-mail (any case) cannot sign up twice.
    let r = post_json(
        app.addr,
        "/auth/signup",
        &json!({"email": "mina@example.COM", "password": "another password"}),
        &[],
    )
    .await;
    assert_eq!(r.status, 409, "{}", r.body);
    assert_eq!(r.json()["error"]["code"], "email_taken");

    // Rotation: the old refresh token gives a new one, once.
    let r = refresh(&app, &refresh1).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let refresh2 = field(&r.json(), "refresh_token");
    assert_ne!(refresh1, refresh2);
    assert_eq!(
        me(&app, &field(&r.json(), "access_token")).await.status,
        200
    );

    // Reuse of the rotated token revokes the whole family, including its successor.
    let r = refresh(&app, &refresh1).await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.json()["error"]["code"], "invalid_grant");
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("reuse")
    );
    let r = refresh(&app, &refresh2).await;
    assert_eq!(r.status, 400, "the successor is revoked too: {}", r.body);
    // The reuse is a security event in the person's stream (recorded off the request path).
    let user = p["id"].as_str().expect("user id").to_owned();
    let stream: neulbi_domain::StreamName = format!("user-{user}").parse().expect("stream");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let events = app
            .state
            .store
            .read_stream(&stream, 0, neulbi::store::Direction::Forward, 100)
            .await
            .expect("read");
        if events.iter().any(|e| e.event_type == "RefreshTokenReused") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "reuse not recorded");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    // Sign in again; refresh through the cookie; log out through the cookie.
    let r = post_json(
        app.addr,
        "/auth/login",
        &json!({"email": "mina@example.com", "password": "long enough pw"}),
        &[],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let refresh3 = field(&r.json(), "refresh_token");
    let cookie = format!("neulbi_refresh={refresh3}");
    let r = post_form(
        app.addr,
        "/oauth/token",
        &[("grant_type", "refresh_token")],
        &[("Cookie", &cookie)],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let refresh4 = field(&r.json(), "refresh_token");
    let cookie = format!("other=1; neulbi_refresh={refresh4}");
    let r = request(app.addr, "POST", "/auth/logout", &[("Cookie", &cookie)], "").await;
    assert_eq!(r.status, 204, "{}", r.body);
    assert!(
        r.header("set-cookie")
            .unwrap_or_default()
            .contains("Max-Age=0"),
        "logout clears the cookie"
    );
    let r = refresh(&app, &refresh4).await;
    assert_eq!(
        r.status, 400,
        "a logged-out session cannot refresh: {}",
        r.body
    );

    let r = post_form(app.addr, "/oauth/token", &[("grant_type", "password")], &[]).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["code"], "unsupported_grant_type");
    let r = post_form(
        app.addr,
        "/oauth/token",
        &[("grant_type", "refresh_token")],
        &[],
    )
    .await;
    assert_eq!(r.json()["error"]["code"], "invalid_request");
    let r = refresh(&app, "nrt_made_up").await;
    assert_eq!(r.json()["error"]["code"], "invalid_grant");
    app.stop().await;
}

#[actix_rt::test]
async fn forged_expired_none_wrong_key_and_wrong_audience_tokens_are_rejected() {
    let pem = generate_private_pem().expect("pem");
    let signing = pem.clone();
    let app = spawn_with(move |c| c.auth.signing_key_pem = Some(signing), false).await;
    let ring = KeyRing::from_pem(&pem, None).expect("ring");
    let issuer_url = format!("http://{}", app.addr);
    let issuer = TokenIssuer::new(&issuer_url, "neulbi-api", 600);
    let r = post_json(
        app.addr,
        "/auth/login",
        &json!({"email": "client@demo.neulbi.local", "password": "demo-client-pass"}),
        &[],
    )
    .await;
    assert_eq!(r.status, 200, "demo client is seeded: {}", r.body);
    let good = field(&r.json(), "access_token");
    let user = field(&r.json(), "user_id");
    assert_eq!(me(&app, &good).await.status, 200);

    // The JWKS publishes the key the token names.
    let jwks = get(app.addr, "/.well-known/jwks.json").await.json();
    let header: Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(good.split('.').next().expect("header"))
            .expect("b64"),
    )
    .expect("json");
    assert_eq!(header["alg"], "EdDSA");
    assert_eq!(jwks["keys"][0]["kid"], header["kid"]);
    assert_eq!(jwks["keys"][0]["crv"], "Ed25519");

    let now = chrono::Utc::now().timestamp();
    let claims = |aud: &str| {
        TokenIssuer::new(&issuer_url, aud, 600).claims(
            user.clone(),
            "web",
            "",
            Some(Role::Client),
            now,
        )
    };
    let mut expired = claims("neulbi-api");
    expired.iat = now - 7200;
    expired.exp = now - 3600;
    let stranger = KeyRing::from_pem(&generate_private_pem().expect("pem"), None).expect("ring");
    let mut parts: Vec<String> = good.split('.').map(str::to_owned).collect();
    let mut body: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(&parts[1]).expect("b64")).expect("json");
    body["role"] = json!("operator");
    parts[1] = URL_SAFE_NO_PAD.encode(body.to_string());
    let tampered = parts.join(".");
    let none = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#),
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims("neulbi-api")).expect("json"))
    );
    // A stranger's key, but claiming the server's kid.
    let mut wrong_key_header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
    wrong_key_header.kid = header["kid"].as_str().map(str::to_owned);
    let wrong_key = jsonwebtoken::encode(
        &wrong_key_header,
        &claims("neulbi-api"),
        stranger.encoding_key(),
    )
    .expect("sign");
    let cases = [
        ("expired", issuer.sign(&ring, &expired).expect("sign")),
        (
            "wrong audience",
            issuer.sign(&ring, &claims("other-api")).expect("sign"),
        ),
        (
            "unknown kid",
            issuer.sign(&stranger, &claims("neulbi-api")).expect("sign"),
        ),
        ("wrong key", wrong_key),
        ("tampered", tampered),
        ("alg none", none),
        ("garbage", "not.a.jwt".to_owned()),
    ];
    for (name, token) in cases {
        let r = me(&app, &token).await;
        assert_eq!(r.status, 401, "{name}: {}", r.body);
        assert_eq!(r.json()["error"]["code"], "invalid_token", "{name}");
    }
    let r = get(app.addr, "/users/me").await;
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error"]["code"], "invalid_token");
    let r = request(
        app.addr,
        "GET",
        "/users/me",
        &[("Authorization", "Basic Zm9vOmJhcg==")],
        "",
    )
    .await;
    assert_eq!(r.status, 401);
    // A well-formed token of the right key still works.
    let fresh = issuer.sign(&ring, &claims("neulbi-api")).expect("sign");
    assert_eq!(me(&app, &fresh).await.status, 200);
    app.stop().await;
}

#[actix_rt::test]
async fn brute_force_on_local_login_is_rate_limited() {
    let app = spawn_with(|c| c.auth.login_max_failures = 3, false).await;
    let addr = app.addr;
    let attempt = |password: &'static str| async move {
        let body = json!({"email": "counselor@demo.neulbi.local", "password": password});
        post_json(addr, "/auth/login", &body, &[]).await
    };
    for _ in 0..3 {
        let r = attempt("wrong password").await;
        assert_eq!(r.status, 401, "{}", r.body);
        assert_eq!(r.json()["error"]["code"], "invalid_credentials");
    }
    let r = attempt("demo-counselor-pass").await;
    assert_eq!(r.status, 429, "even the right password waits: {}", r.body);
    assert_eq!(r.json()["error"]["code"], "rate_limited");
    assert!(r.header("retry-after").is_some());
    // An unknown e-mail answers exactly like a wrong password.
    let r = post_json(
        app.addr,
        "/auth/login",
        &json!({"email": "nobody@example.com", "password": "whatever123"}),
        &[],
    )
    .await;
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error"]["code"], "invalid_credentials");
    app.stop().await;
}

#[actix_rt::test]
async fn demo_counselor_gets_the_counselor_role_and_publishes_a_profile() {
    let app = spawn().await;
    let r = post_json(
        app.addr,
        "/auth/login",
        &json!({"email": "counselor@demo.neulbi.local", "password": "demo-counselor-pass"}),
        &[],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let token = field(&r.json(), "access_token");
    let p = me(&app, &token).await.json();
    assert_eq!(p["role"], "counselor");
    // Seeded with a directory profile, so a demo client finds someone on the first run.
    assert_eq!(
        p["counselor_profile"]["headline"],
        "Demo counselor: listening first"
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let listed = get(app.addr, "/counselors").await.json();
        if listed["items"][0]["user_id"] == p["id"] {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "not listed: {listed}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let auth = bearer(&token);
    let profile = json!({"headline": "Listening first", "bio": "Ten years of counseling."});
    let r = request(
        app.addr,
        "PUT",
        "/users/me/counselor-profile",
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
        ],
        &profile.to_string(),
    )
    .await;
    assert_eq!(r.status, 204, "{}", r.body);
    let p = me(&app, &token).await.json();
    assert_eq!(p["counselor_profile"]["headline"], "Listening first");

    // A client may not publish one.
    let r = post_json(
        app.addr,
        "/auth/login",
        &json!({"email": "client@demo.neulbi.local", "password": "demo-client-pass"}),
        &[],
    )
    .await;
    let client = bearer(&field(&r.json(), "access_token"));
    let r = request(
        app.addr,
        "PUT",
        "/users/me/counselor-profile",
        &[
            ("Authorization", &client),
            ("Content-Type", "application/json"),
        ],
        &profile.to_string(),
    )
    .await;
    assert_eq!(r.status, 403, "{}", r.body);

    // Anyone may rename themself, within the aggregate's rules; unknown fields are refused.
    let json_headers = [
        ("Authorization", client.as_str()),
        ("Content-Type", "application/json"),
    ];
    for (body, status) in [
        (json!({"nickname": "  새 이름 "}), 204),
        (json!({"nickname": "   "}), 422),
        (json!({"nickname": "x".repeat(41)}), 422),
        (json!({"nickname": "ok", "role": "operator"}), 400),
        (json!({}), 400),
    ] {
        let r = request(
            app.addr,
            "PATCH",
            "/users/me",
            &json_headers,
            &body.to_string(),
        )
        .await;
        assert_eq!(r.status, status, "{body}: {}", r.body);
        assert!(
            r.status == 204 || r.json()["error"]["code"].is_string(),
            "{}",
            r.body
        );
    }
    let token = client.trim_start_matches("Bearer ").to_owned();
    assert_eq!(me(&app, &token).await.json()["nickname"], "새 이름");
    app.stop().await;
}

#[actix_rt::test]
async fn login_codes_are_one_time_and_a_replay_revokes_the_session() {
    let app = spawn().await;
    let new = NewUser {
        provider: "test-oidc".into(),
        subject: Some("subject-1".into()),
        email: "ext@example.com".into(),
        nickname: "Ext".into(),
        role: Role::Client,
    };
    let code = app
        .auth
        .external_sign_in(&app.state.users, &new, &ClientInfo::default())
        .await
        .expect("sign in");
    let exchange = |code: String| async move {
        post_form(
            app.addr,
            "/oauth/token",
            &[("grant_type", "authorization_code"), ("code", &code)],
            &[],
        )
        .await
    };
    let r = exchange(code.clone()).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let tokens = r.json();
    let p = me(&app, &field(&tokens, "access_token")).await.json();
    assert_eq!(p["provider"], "test-oidc");
    let r = exchange(code).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["code"], "invalid_grant");
    let r = refresh(&app, &field(&tokens, "refresh_token")).await;
    assert_eq!(r.status, 400, "the replay revoked the session: {}", r.body);
    let r = exchange("nlc_unknown".into()).await;
    assert_eq!(r.status, 400);

    // The same provider subject signs in as the same user.
    let code = app
        .auth
        .external_sign_in(&app.state.users, &new, &ClientInfo::default())
        .await
        .expect("sign in again");
    let again = exchange(code).await.json();
    assert_eq!(again["user_id"], tokens["user_id"]);
    app.stop().await;
}

async fn concurrent_first_sign_ins_register_one_user(postgres: bool) {
    let app = spawn_with(|_| {}, postgres).await;
    let new = NewUser {
        provider: "test-oidc".into(),
        subject: Some("racer".into()),
        email: "racer@example.com".into(),
        nickname: "Racer".into(),
        role: Role::Client,
    };
    let attempts = (0..8).map(|_| {
        let (auth, state, new) = (app.auth.clone(), app.state.clone(), new.clone());
        actix_rt::spawn(async move {
            let code = auth
                .external_sign_in(&state.users, &new, &ClientInfo::default())
                .await
                .expect("sign in");
            auth.exchange_login_code(&code)
                .await
                .expect("exchange")
                .user_id
        })
    });
    let ids: Vec<_> = futures::future::join_all(attempts)
        .await
        .into_iter()
        .map(|r| r.expect("task"))
        .collect();
    assert!(ids.windows(2).all(|w| w[0] == w[1]), "{ids:?}");
    let user = ids[0].expect("user id");
    let registered = app
        .state
        .store
        .read_all(0, 10_000)
        .await
        .expect("read")
        .into_iter()
        .filter(|e| e.event_type == "Registered" && e.stream.to_string() == format!("user-{user}"))
        .count();
    assert_eq!(registered, 1);
    let all_registered = app
        .state
        .store
        .read_all(0, 10_000)
        .await
        .expect("read")
        .into_iter()
        .filter(|e| e.event_type == "Registered")
        .count();
    // Demo users are seeded only for the embedded default.
    assert_eq!(all_registered, if postgres { 1 } else { 3 });
    assert_eq!(
        app.auth
            .identities()
            .count_for_user(user)
            .await
            .expect("count"),
        1
    );

    // Concurrent sign-ups with one e-mail: exactly one wins.
    let attempts = (0..6).map(|i| {
        let addr = app.addr;
        actix_rt::spawn(async move {
            post_json(
                addr,
                "/auth/signup",
                &json!({"email": "same@example.com", "password": format!("password-{i}")}),
                &[],
            )
            .await
            .status
        })
    });
    let mut statuses: Vec<u16> = futures::future::join_all(attempts)
        .await
        .into_iter()
        .map(|r| r.expect("task"))
        .collect();
    statuses.sort_unstable();
    assert_eq!(statuses, vec![201, 409, 409, 409, 409, 409]);
    app.stop().await;
}

#[actix_rt::test]
async fn sqlite_concurrent_first_sign_ins_register_one_user() {
    concurrent_first_sign_ins_register_one_user(false).await;
}

#[actix_rt::test]
async fn postgres_concurrent_first_sign_ins_register_one_user() {
    concurrent_first_sign_ins_register_one_user(true).await;
}

#[actix_rt::test]
async fn a_rejected_registration_leaves_no_half_registered_user() {
    let app = spawn().await;
    let long_name = "n".repeat(41);
    let r = post_json(
        app.addr,
        "/auth/signup",
        &json!({"email": "half@example.com", "password": "long enough pw", "nickname": long_name}),
        &[],
    )
    .await;
    assert_eq!(r.status, 422, "{}", r.body);
    let lookup = app
        .auth
        .identities()
        .lookup(IdentityKey::Email("half@example.com"));
    assert!(
        app.auth
            .identities()
            .find(&lookup)
            .await
            .expect("find")
            .is_none(),
        "the claim was released"
    );
    let r = post_json(
        app.addr,
        "/auth/signup",
        &json!({"email": "half@example.com", "password": "long enough pw", "nickname": "Half"}),
        &[],
    )
    .await;
    assert_eq!(r.status, 201, "the e-mail is free again: {}", r.body);
    for bad in [
        json!({"email": "no-at-sign", "password": "long enough pw"}),
        json!({"email": "a@b.c", "password": "short"}),
        json!({"email": "a@b.c"}),
    ] {
        let r = post_json(app.addr, "/auth/signup", &bad, &[]).await;
        assert_eq!(r.status, 400, "{bad}: {}", r.body);
        assert_eq!(r.json()["error"]["code"], "invalid_request");
    }
    app.stop().await;
}

#[actix_rt::test]
async fn service_clients_get_scoped_tokens_that_cannot_act_as_users() {
    let app = spawn_with(
        |c| {
            c.auth.service_clients = vec![ServiceClient {
                id: "dashboard".into(),
                scopes: vec!["audit:read".into(), "metrics:read".into()],
                secret: Some("dashboard-secret-0123456789".into()),
            }]
        },
        false,
    )
    .await;
    let r = post_form(
        app.addr,
        "/oauth/token",
        &[
            ("grant_type", "client_credentials"),
            ("client_id", "dashboard"),
            ("client_secret", "dashboard-secret-0123456789"),
            ("scope", "audit:read"),
        ],
        &[],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let t = r.json();
    assert_eq!(t["scope"], "audit:read");
    assert!(t.get("refresh_token").is_none());
    let claims = app
        .auth
        .verify_access(&field(&t, "access_token"))
        .await
        .expect("valid");
    assert_eq!(claims.sub, "client:dashboard");
    let r = me(&app, &field(&t, "access_token")).await;
    assert_eq!(r.status, 403, "{}", r.body);

    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("dashboard:dashboard-secret-0123456789")
    );
    let r = post_form(
        app.addr,
        "/oauth/token",
        &[("grant_type", "client_credentials")],
        &[("Authorization", &basic)],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["scope"], "audit:read metrics:read");
    for (secret, scope, status, code) in [
        ("wrong", "audit:read", 401, "invalid_client"),
        (
            "dashboard-secret-0123456789",
            "admin",
            400,
            "invalid_request",
        ),
    ] {
        let r = post_form(
            app.addr,
            "/oauth/token",
            &[
                ("grant_type", "client_credentials"),
                ("client_id", "dashboard"),
                ("client_secret", secret),
                ("scope", scope),
            ],
            &[],
        )
        .await;
        assert_eq!(r.status, status, "{}", r.body);
        assert_eq!(r.json()["error"]["code"], code);
    }
    app.stop().await;
}

#[actix_rt::test]
async fn deleting_me_erases_the_user_and_their_sign_in() {
    let app = spawn().await;
    let r = post_json(
        app.addr,
        "/auth/signup",
        &json!({"email": "gone@example.com", "password": "long enough pw"}),
        &[],
    )
    .await;
    let t = r.json();
    let (access, refresh_token) = (field(&t, "access_token"), field(&t, "refresh_token"));
    let user: uuid::Uuid = field(&t, "user_id").parse().expect("uuid");
    let auth_header = bearer(&access);
    let r = request(
        app.addr,
        "DELETE",
        "/users/me",
        &[("Authorization", &auth_header)],
        "",
    )
    .await;
    assert_eq!(r.status, 204, "{}", r.body);
    // The erased person's access token is refused at once, before any route loads the user.
    let r = me(&app, &access).await;
    assert_eq!(r.status, 401, "{}", r.body);
    assert_eq!(r.json()["error"]["code"], "token_revoked");
    assert_eq!(refresh(&app, &refresh_token).await.status, 400);
    let r = post_json(
        app.addr,
        "/auth/login",
        &json!({"email": "gone@example.com", "password": "long enough pw"}),
        &[],
    )
    .await;
    assert_eq!(r.status, 401);
    assert_eq!(
        app.auth
            .identities()
            .count_for_user(user)
            .await
            .expect("count"),
        0
    );
    let state = app.auth.load_user(user).await.expect("state");
    assert!(state.is_erased() && state.email().is_none());
    // The e-mail can start over as a new person.
    let r = post_json(
        app.addr,
        "/auth/signup",
        &json!({"email": "gone@example.com", "password": "long enough pw"}),
        &[],
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_ne!(r.json()["user_id"], json!(user.to_string()));
    app.stop().await;
}

#[actix_rt::test]
async fn rotated_keys_keep_verifying_old_tokens_and_restarts_keep_keys() {
    let app = spawn().await;
    let addr = app.addr;
    let login = || async move {
        let body = json!({"email": "client@demo.neulbi.local", "password": "demo-client-pass"});
        post_json(addr, "/auth/login", &body, &[]).await
    };
    let old = field(&login().await.json(), "access_token");
    let old_kid = TokenIssuer::kid_of(&old).expect("kid");
    app.auth.rotate_signing_key().await.expect("rotate");
    let new = field(&login().await.json(), "access_token");
    assert_ne!(TokenIssuer::kid_of(&new).expect("kid"), old_kid);
    assert_eq!(me(&app, &old).await.status, 200, "old tokens still verify");
    assert_eq!(me(&app, &new).await.status, 200);
    let jwks = get(app.addr, "/.well-known/jwks.json").await.json();
    assert_eq!(jwks["keys"].as_array().map(Vec::len), Some(2));
    app.stop().await;
}

#[actix_rt::test]
async fn postgres_refresh_rotation_reuse_and_erasure() {
    let app = spawn_with(|_| {}, true).await;
    let r = post_json(
        app.addr,
        "/auth/signup",
        &json!({"email": "pg@example.com", "password": "long enough pw"}),
        &[],
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let t = r.json();
    let refresh1 = field(&t, "refresh_token");
    let r = refresh(&app, &refresh1).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let t2 = r.json();
    assert_eq!(refresh(&app, &refresh1).await.status, 400, "reuse");
    assert_eq!(
        refresh(&app, &field(&t2, "refresh_token")).await.status,
        400,
        "family revoked"
    );
    let auth = bearer(&field(&t2, "access_token"));
    let r = request(
        app.addr,
        "DELETE",
        "/users/me",
        &[("Authorization", &auth)],
        "",
    )
    .await;
    assert_eq!(r.status, 204, "{}", r.body);
    let user: uuid::Uuid = field(&t, "user_id").parse().expect("uuid");
    assert_eq!(
        app.auth
            .identities()
            .count_for_user(user)
            .await
            .expect("count"),
        0
    );
    app.stop().await;
}
