//! Revocation at once (issue 14): after "sign out everywhere", a role change, a deactivation
//! or an erasure, the person's earlier access tokens are refused on every node within a
//! second — on HTTP routes that never load the user, on open STOMP sessions and on `/rtc` —
//! while tokens issued afterwards keep working. Real nodes on loopback (SQLite, and two nodes
//! on one throwaway PostgreSQL).

use crate::support;

use crate::support::app::TestApp;
use crate::support::http::{post_form, post_json, request};
use crate::support::rtc::Rtc;
use crate::support::stomp::Client;
use neulbi::edge::stomp::frame::{Command, Frame};
use neulbi::store::Metadata;
use neulbi_domain::user::UserCommand;
use neulbi_domain::{Actor, Context, Role, UserId};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::time::Instant;

/// The bound the issue sets: revoked everywhere within a second.
const BOUND: Duration = Duration::from_secs(1);
const PASSWORD: &str = "a long password";

/// A signed-up person: access token, refresh token, id.
struct Signed {
    access: String,
    refresh: String,
    id: UserId,
}

fn field(v: &Value, name: &str) -> String {
    v[name]
        .as_str()
        .unwrap_or_else(|| panic!("no {name} in {v}"))
        .to_owned()
}

async fn sign_up(addr: SocketAddr, email: &str) -> Signed {
    let r = post_json(
        addr,
        "/auth/signup",
        &json!({ "email": email, "password": PASSWORD }),
        &[],
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let t = r.json();
    Signed {
        access: field(&t, "access_token"),
        refresh: field(&t, "refresh_token"),
        id: UserId(field(&t, "user_id").parse().expect("uuid")),
    }
}

async fn log_in(addr: SocketAddr, email: &str) -> String {
    let r = post_json(
        addr,
        "/auth/login",
        &json!({ "email": email, "password": PASSWORD }),
        &[],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    field(&r.json(), "access_token")
}

/// `GET /users/me/rooms`: served from the read model, it never loads the user aggregate, so
/// only the token check stands between an old token and the data.
async fn my_rooms(addr: SocketAddr, token: &str) -> support::http::Response {
    request(
        addr,
        "GET",
        "/users/me/rooms",
        &[("Authorization", &format!("Bearer {token}"))],
        "",
    )
    .await
}

async fn sign_out_everywhere(addr: SocketAddr, token: &str) -> support::http::Response {
    request(
        addr,
        "POST",
        "/auth/logout-all",
        &[("Authorization", &format!("Bearer {token}"))],
        "",
    )
    .await
}

/// Asserts `token` is refused with 401 `token_revoked` within [`BOUND`] of `since`.
async fn refused_within_bound(addr: SocketAddr, token: &str, since: Instant) {
    loop {
        let r = my_rooms(addr, token).await;
        if r.status == 401 {
            assert_eq!(r.json()["error"]["code"], "token_revoked", "{}", r.body);
            assert!(
                r.json()["error"]["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("sign in again")),
                "{}",
                r.body
            );
            return;
        }
        assert_eq!(r.status, 200, "{}", r.body);
        assert!(
            since.elapsed() < BOUND,
            "the old token still worked {:?} after the revocation",
            since.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Asserts the STOMP session gets ERROR `message` and is closed within [`BOUND`] of `since`.
async fn stomp_cut_within_bound(ws: &mut Client, message: &str, since: Instant) {
    let left = BOUND.saturating_sub(since.elapsed());
    let error = tokio::time::timeout(left, ws.expect(Command::Error))
        .await
        .unwrap_or_else(|_| panic!("no ERROR within {BOUND:?}"));
    assert_eq!(error.get("message"), Some(message));
    let closed = tokio::time::timeout(BOUND, ws.next()).await;
    assert!(
        matches!(closed, Ok(None)),
        "the connection must close after the ERROR: {closed:?}"
    );
}

/// A SUBSCRIBE with a receipt answered: the session is open and authorized.
async fn stomp_alive(ws: &mut Client, id: &str) {
    let answer = ws.subscribe_with("/user/queue/rooms", id, &[]).await;
    assert_eq!(answer.command, Command::Receipt, "{answer:?}");
}

fn operator() -> Context {
    Context::new(Actor::operator(), chrono::Utc::now())
}

#[actix_rt::test]
async fn sign_out_everywhere_refuses_old_tokens_at_once_and_a_new_sign_in_works() {
    let app = TestApp::start(|_| {}).await;
    let email = "everywhere@example.com";
    let me = sign_up(app.addr, email).await;
    let second_device = log_in(app.addr, email).await;
    assert_eq!(my_rooms(app.addr, &me.access).await.status, 200);
    assert_eq!(my_rooms(app.addr, &second_device).await.status, 200);

    let r = sign_out_everywhere(app.addr, &me.access).await;
    assert_eq!(r.status, 204, "{}", r.body);
    assert!(
        r.header("set-cookie")
            .is_some_and(|c| c.contains("neulbi_refresh=;")),
        "the refresh cookie is cleared"
    );
    // On the node that took the request the refusal is immediate, for every device's token.
    for token in [&me.access, &second_device] {
        let r = my_rooms(app.addr, token).await;
        assert_eq!(r.status, 401, "{}", r.body);
        assert_eq!(r.json()["error"]["code"], "token_revoked");
    }
    assert_eq!(sign_out_everywhere(app.addr, &me.access).await.status, 401);
    // The refresh tokens of every session are revoked too.
    let r = post_form(
        app.addr,
        "/oauth/token",
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", &me.refresh),
        ],
        &[],
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.json()["error"]["code"], "invalid_grant");

    // Signing in again (within the same second, typically) gives a token that works.
    let fresh = log_in(app.addr, email).await;
    let r = my_rooms(app.addr, &fresh).await;
    assert_eq!(r.status, 200, "{}", r.body);
    // And the next "sign out everywhere" ends that session as well.
    assert_eq!(sign_out_everywhere(app.addr, &fresh).await.status, 204);
    assert_eq!(my_rooms(app.addr, &fresh).await.status, 401);
    app.stop().await;
}

#[actix_rt::test]
async fn a_login_code_from_before_sign_out_everywhere_starts_no_session() {
    let app = TestApp::start(|_| {}).await;
    let person = neulbi::auth::service::NewUser {
        provider: "test-oidc".into(),
        subject: Some("subject-everywhere".into()),
        email: "external.everywhere@example.com".into(),
        nickname: "Ext".into(),
        role: Role::Client,
    };
    let info = neulbi::auth::ClientInfo::default();
    let pending = app
        .auth
        .external_sign_in(&app.state.users, &person, &info)
        .await
        .expect("first sign-in");
    let used = app
        .auth
        .external_sign_in(&app.state.users, &person, &info)
        .await
        .expect("second sign-in");
    let exchange = |code: String| async move {
        post_form(
            app.addr,
            "/oauth/token",
            &[("grant_type", "authorization_code"), ("code", &code)],
            &[],
        )
        .await
    };
    let r = exchange(used).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let access = field(&r.json(), "access_token");
    assert_eq!(sign_out_everywhere(app.addr, &access).await.status, 204);
    let r = exchange(pending).await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.json()["error"]["code"], "invalid_grant");
    app.stop().await;
}

#[actix_rt::test]
async fn a_role_change_revokes_older_tokens_but_not_one_issued_right_after() {
    let app = TestApp::start(|_| {}).await;
    let email = "promoted@example.com";
    let me = sign_up(app.addr, email).await;
    let mut ws = Client::connect(app.addr, &me.access).await;
    let outcome = app
        .state
        .users
        .execute(
            me.id.as_uuid(),
            UserCommand::GrantCounselorRole,
            operator(),
            Metadata::default(),
        )
        .await
        .expect("grant counselor");
    let granted = Instant::now();
    // Signed in right after the change: the token carries the new role and must work.
    let after = log_in(app.addr, email).await;
    refused_within_bound(app.addr, &me.access, granted).await;
    stomp_cut_within_bound(&mut ws, "access revoked; sign in again", granted).await;
    let r = my_rooms(app.addr, &after).await;
    assert_eq!(r.status, 200, "{}", r.body);
    // The refresh token still works (a role change is no sign-out) and gets the new role.
    let r = post_form(
        app.addr,
        "/oauth/token",
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", &me.refresh),
        ],
        &[],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let refreshed = field(&r.json(), "access_token");
    assert_eq!(my_rooms(app.addr, &refreshed).await.status, 200);
    let mut again = Client::connect(app.addr, &refreshed).await;
    stomp_alive(&mut again, "q").await;

    // The boundary, with both tokens issued in the very same second: the one that read the
    // stream before the grant is refused, the one that read it after is accepted.
    let epoch = app
        .auth
        .epochs()
        .epoch(me.id)
        .expect("the grant set an epoch");
    assert_eq!(Some(epoch.version), outcome.version);
    let iat = chrono::Utc::now().timestamp();
    let mint = |version: u64| {
        let claims = app
            .auth
            .issuer()
            .claims(me.id.to_string(), "web", "", Some(Role::Counselor), iat)
            .at_user_version(version);
        app.auth
            .issuer()
            .sign(&app.auth.key_ring(), &claims)
            .expect("sign")
    };
    let before = my_rooms(app.addr, &mint(epoch.version - 1)).await;
    assert_eq!(before.status, 401, "{}", before.body);
    let at = my_rooms(app.addr, &mint(epoch.version)).await;
    assert_eq!(at.status, 200, "{}", at.body);
    app.stop().await;
}

#[actix_rt::test]
async fn open_stomp_sessions_are_cut_within_a_second_after_sign_out_and_after_erasure() {
    let app = TestApp::start(|_| {}).await;
    let alice = sign_up(app.addr, "alice.cut@example.com").await;
    let bob = sign_up(app.addr, "bob.cut@example.com").await;
    let mut alice_1 = Client::connect(app.addr, &alice.access).await;
    let mut alice_2 = Client::connect(app.addr, &alice.access).await;
    let mut bob_ws = Client::connect(app.addr, &bob.access).await;
    stomp_alive(&mut alice_1, "a1").await;

    let r = sign_out_everywhere(app.addr, &alice.access).await;
    assert_eq!(r.status, 204, "{}", r.body);
    let done = Instant::now();
    stomp_cut_within_bound(&mut alice_1, "access revoked; sign in again", done).await;
    stomp_cut_within_bound(&mut alice_2, "access revoked; sign in again", done).await;
    // A new CONNECT with the old token is refused too; a fresh sign-in connects and stays.
    let mut stale = Client::open(app.addr).await;
    stale
        .send(
            Frame::new(Command::Connect)
                .header("accept-version", "1.2")
                .header("host", "localhost")
                .header("Authorization", format!("Bearer {}", alice.access)),
        )
        .await;
    let refused = stale.expect(Command::Error).await;
    assert_eq!(
        refused.get("message"),
        Some("access token revoked; sign in again")
    );
    let fresh = log_in(app.addr, "alice.cut@example.com").await;
    let mut alice_3 = Client::connect(app.addr, &fresh).await;
    stomp_alive(&mut alice_3, "a3").await;
    // Bob's session never noticed.
    stomp_alive(&mut bob_ws, "b").await;

    // Erasure ends the fresh session as well, as "account closed".
    let r = request(
        app.addr,
        "DELETE",
        "/users/me",
        &[("Authorization", &format!("Bearer {fresh}"))],
        "",
    )
    .await;
    assert_eq!(r.status, 204, "{}", r.body);
    let erased = Instant::now();
    let r = my_rooms(app.addr, &fresh).await;
    assert_eq!(r.status, 401, "{}", r.body);
    assert_eq!(r.json()["error"]["code"], "token_revoked");
    stomp_cut_within_bound(&mut alice_3, "account closed", erased).await;
    stomp_alive(&mut bob_ws, "b2").await;
    app.stop().await;
}

#[actix_rt::test]
async fn an_rtc_session_is_closed_with_an_error_after_sign_out_everywhere() {
    let app = TestApp::start(|_| {}).await;
    let me = sign_up(app.addr, "rtc.revoked@example.com").await;
    let other = sign_up(app.addr, "rtc.other@example.com").await;
    let mut rtc = Rtc::connect(app.addr, &me.access).await;
    let mut other_rtc = Rtc::connect(app.addr, &other.access).await;
    assert_eq!(sign_out_everywhere(app.addr, &me.access).await.status, 204);
    let done = Instant::now();
    let error = tokio::time::timeout(BOUND, rtc.expect("error"))
        .await
        .unwrap_or_else(|_| panic!("no error message within {BOUND:?}"));
    assert_eq!(error["code"], "token_revoked", "{error}");
    assert_eq!(error["fatal"], true, "{error}");
    assert!(done.elapsed() < BOUND);
    let closed = tokio::time::timeout(BOUND, rtc.next()).await;
    assert!(matches!(closed, Ok(None)), "the socket closes: {closed:?}");
    // The old token cannot sign in to /rtc again.
    let mut again = Rtc::open(app.addr).await;
    again
        .send(json!({"v": 1, "type": "auth", "token": me.access}))
        .await;
    assert_eq!(again.expect_error().await, "unauthorized");
    // Someone else's signaling goes on.
    other_rtc.send(json!({"v": 1, "type": "ping"})).await;
    other_rtc.expect("pong").await;
    app.stop().await;
}

#[actix_rt::test]
async fn a_restarted_node_still_refuses_revoked_tokens() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data_dir = dir.path().to_owned();
    // The same data and public URL (the tokens' issuer) after the restart; a new port.
    let same_node = |c: &mut neulbi::config::Config| {
        c.data_dir = data_dir.clone();
        c.public_url = Some("http://neulbi.test".into());
    };
    let first = TestApp::start(same_node).await;
    let signed_out = sign_up(first.addr, "restart.out@example.com").await;
    let deactivated = sign_up(first.addr, "restart.closed@example.com").await;
    let untouched = sign_up(first.addr, "restart.kept@example.com").await;
    assert_eq!(
        sign_out_everywhere(first.addr, &signed_out.access)
            .await
            .status,
        204
    );
    first
        .state
        .users
        .execute(
            deactivated.id.as_uuid(),
            UserCommand::Deactivate,
            operator(),
            Metadata::default(),
        )
        .await
        .expect("deactivate");
    refused_within_bound(first.addr, &deactivated.access, Instant::now()).await;
    first.stop().await;
    // Let the stopped node close its store.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let second = TestApp::start(same_node).await;
    // No waiting: the epochs are rebuilt from the log before the node serves.
    for token in [&signed_out.access, &deactivated.access] {
        let r = my_rooms(second.addr, token).await;
        assert_eq!(r.status, 401, "{}", r.body);
        assert_eq!(r.json()["error"]["code"], "token_revoked");
    }
    assert_eq!(my_rooms(second.addr, &untouched.access).await.status, 200);
    second.stop().await;
}

#[actix_rt::test]
async fn sign_out_on_one_node_cuts_the_session_and_refuses_the_token_on_another() {
    let pg = support::pg::TempPostgres::start();
    let url = pg.url();
    let keys = tempfile::tempdir().expect("dir");
    let kek = support::app::shared_kek(keys.path());
    let node = |name: &'static str| support::app::shared_node(&url, &kek, name);
    let a = TestApp::start(node("node-a")).await;
    let b = TestApp::start(node("node-b")).await;
    let me = sign_up(a.addr, "two.nodes@example.com").await;
    let other = sign_up(a.addr, "two.nodes.other@example.com").await;
    assert_eq!(my_rooms(b.addr, &me.access).await.status, 200);
    let mut on_b = Client::connect(b.addr, &me.access).await;
    let mut other_on_b = Client::connect(b.addr, &other.access).await;
    let mut rtc_on_b = Rtc::connect(b.addr, &me.access).await;
    stomp_alive(&mut on_b, "b").await;

    let r = sign_out_everywhere(a.addr, &me.access).await;
    assert_eq!(r.status, 204, "{}", r.body);
    let done = Instant::now();
    stomp_cut_within_bound(&mut on_b, "access revoked; sign in again", done).await;
    refused_within_bound(b.addr, &me.access, done).await;
    let error = tokio::time::timeout(BOUND, rtc_on_b.expect("error"))
        .await
        .expect("the rtc session on node B is told within the bound");
    assert_eq!(error["code"], "token_revoked");
    stomp_alive(&mut other_on_b, "o").await;
    // A fresh sign-in on A works on B.
    let fresh = log_in(a.addr, "two.nodes@example.com").await;
    assert_eq!(my_rooms(b.addr, &fresh).await.status, 200);
    a.stop().await;
    b.stop().await;
}
