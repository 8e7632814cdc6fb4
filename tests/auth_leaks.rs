//! No credential or personal data in logs or spans during sign-in: sign up, sign in (right
//! and wrong password), refresh, reuse a rotated token, exchange and replay a login code, log
//! out, sign out everywhere (and be refused with the revoked token) — with every log level and
//! span event captured — then search the capture.

use crate::support::capture::Capture;
use crate::support::http::{post_form, post_json, request};
use neulbi::auth::service::{ClientInfo, NewUser};
use neulbi::config::Config;
use neulbi::startup::Application;
use neulbi_domain::Role;
use serde_json::json;

const EMAIL: &str = "leaky.person@example.kr";
const PASSWORD: &str = "correct-horse-battery";
const WRONG: &str = "wrong-horse-battery";

#[actix_rt::test]
async fn sign_in_flows_log_no_tokens_passwords_or_emails() {
    let capture = Capture::install();

    let dir = tempfile::tempdir().expect("dir");
    let config = Config {
        listen: "127.0.0.1:0".parse().expect("addr"),
        data_dir: dir.path().to_owned(),
        ..Config::default()
    };
    let app = Application::build(&config).await.expect("app");
    let (addr, handle, auth, state) = (app.local_addr(), app.handle(), app.auth(), app.state());
    actix_rt::spawn(app.run_until_stopped());

    let mut secrets = vec![EMAIL.to_owned(), PASSWORD.to_owned(), WRONG.to_owned()];
    let r = post_json(
        addr,
        "/auth/signup",
        &json!({"email": EMAIL, "password": PASSWORD, "nickname": "Leaky"}),
        &[],
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let t = r.json();
    let access = t["access_token"].as_str().expect("access").to_owned();
    let refresh = t["refresh_token"].as_str().expect("refresh").to_owned();
    let wrong = post_json(
        addr,
        "/auth/login",
        &json!({"email": EMAIL, "password": WRONG}),
        &[],
    )
    .await;
    assert_eq!(wrong.status, 401);
    let bearer = format!("Bearer {access}");
    assert_eq!(
        request(addr, "GET", "/users/me", &[("Authorization", &bearer)], "")
            .await
            .status,
        200
    );
    let r = post_form(
        addr,
        "/oauth/token",
        &[("grant_type", "refresh_token"), ("refresh_token", &refresh)],
        &[],
    )
    .await;
    let refresh2 = r.json()["refresh_token"]
        .as_str()
        .expect("refresh")
        .to_owned();
    let reuse = post_form(
        addr,
        "/oauth/token",
        &[("grant_type", "refresh_token"), ("refresh_token", &refresh)],
        &[],
    )
    .await;
    assert_eq!(reuse.status, 400);

    let new = NewUser {
        provider: "test-oidc".into(),
        subject: Some("subject-leak-42".into()),
        email: "external.leak@example.kr".into(),
        nickname: "ExtLeak".into(),
        role: Role::Client,
    };
    let code = auth
        .external_sign_in(&state.users, &new, &ClientInfo::default())
        .await
        .expect("external");
    for _ in 0..2 {
        post_form(
            addr,
            "/oauth/token",
            &[("grant_type", "authorization_code"), ("code", &code)],
            &[],
        )
        .await;
    }
    let cookie = format!("neulbi_refresh={refresh2}");
    assert_eq!(
        request(addr, "POST", "/auth/logout", &[("Cookie", &cookie)], "")
            .await
            .status,
        204
    );
    let login = post_json(
        addr,
        "/auth/login",
        &json!({"email": EMAIL, "password": PASSWORD}),
        &[],
    )
    .await;
    let access2 = login.json()["access_token"]
        .as_str()
        .expect("access")
        .to_owned();
    let bearer2 = format!("Bearer {access2}");
    assert_eq!(
        request(
            addr,
            "POST",
            "/auth/logout-all",
            &[("Authorization", &bearer2)],
            ""
        )
        .await
        .status,
        204
    );
    assert_eq!(
        request(addr, "GET", "/users/me", &[("Authorization", &bearer2)], "")
            .await
            .status,
        401
    );
    handle.stop(true).await;

    secrets.extend([
        access,
        access2,
        refresh,
        refresh2,
        code,
        "subject-leak-42".into(),
        "external.leak@example.kr".into(),
    ]);
    let text = capture.text();
    assert!(
        text.contains("request") && text.contains("login") && text.contains("token_epoch.bump"),
        "spans were captured"
    );
    for needle in &secrets {
        assert!(
            !text.contains(needle.as_str()),
            "{needle:?} leaked into the logs"
        );
    }
}
