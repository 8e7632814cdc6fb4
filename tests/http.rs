//! The HTTP edge, black-box: a real server on a loopback port, talked to over TCP.

use crate::support;

use crate::support::http::get;
use neulbi::config::Config;
use neulbi::startup::Application;

async fn spawn_app() -> (
    std::net::SocketAddr,
    actix_web::dev::ServerHandle,
    tempfile::TempDir,
) {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = Config {
        listen: "127.0.0.1:0".parse().expect("addr"),
        data_dir: dir.path().to_owned(),
        ..Config::default()
    };
    let app = Application::build(&config).await.expect("build app");
    let addr = app.local_addr();
    let handle = app.handle();
    actix_rt::spawn(app.run_until_stopped());
    (addr, handle, dir)
}

#[actix_rt::test]
async fn health_and_readiness_answer_json() {
    let (addr, handle, dir) = spawn_app().await;
    let r = get(addr, "/healthz").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["status"], "ok");
    let r = support::http::wait_ready(addr).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["status"], "ready");
    assert!(
        dir.path().join("neulbi.db").exists(),
        "the embedded default is a SQLite file in the data dir"
    );
    handle.stop(true).await;
}

#[actix_rt::test]
async fn unknown_routes_get_the_json_error_shape() {
    let (addr, handle, _dir) = spawn_app().await;
    let r = get(addr, "/no/such/thing?token=secret").await;
    assert_eq!(r.status, 404);
    let body = r.json();
    assert_eq!(body["error"]["code"], "not_found");
    assert!(body["error"]["message"].is_string());
    let r = get(addr, "/counselors?limit=nope").await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["code"], "invalid_query");
    let r = get(addr, "/counselors").await;
    assert_eq!(r.status, 200);
    // At most the demo counselor, seeded with a profile on the first run.
    let items = r.json()["items"].as_array().expect("items").clone();
    assert!(items.len() <= 1, "{items:?}");
    let r = get(addr, "/").await;
    assert_eq!(r.status, 200);
    assert!(
        r.headers
            .to_ascii_lowercase()
            .contains("content-type: text/html")
    );
    handle.stop(true).await;
}

#[actix_rt::test]
async fn a_bad_database_url_is_a_clear_startup_error() {
    let config = Config {
        listen: "127.0.0.1:0".parse().expect("addr"),
        database_url: Some("mysql://user:hunter2@localhost/db".into()),
        ..Config::default()
    };
    let err = Application::build(&config).await.err().expect("must fail");
    let msg = format!("{err:#}");
    assert!(msg.contains("unsupported database URL"), "{msg}");
    assert!(
        !msg.contains("hunter2"),
        "passwords never appear in errors: {msg}"
    );
}

#[actix_rt::test]
async fn the_web_client_is_served_with_a_strict_policy_and_revalidates() {
    let (addr, handle, _dir) = spawn_app().await;
    let page = get(addr, "/").await;
    assert_eq!(page.status, 200);
    let csp = page.header("Content-Security-Policy").expect("CSP");
    assert!(csp.contains("script-src 'self'"), "{csp}");
    assert!(!csp.contains("unsafe-eval") && !csp.contains('*'), "{csp}");
    // Every script the page loads is served, as JavaScript.
    for src in ["/web/vendor/stomp.umd.min.js", "/web/app.js"] {
        assert!(
            page.body.contains(&format!("src=\"{src}\"")),
            "page loads {src}"
        );
        let r = get(addr, src).await;
        assert_eq!(r.status, 200, "{src}");
        assert!(
            r.header("Content-Type")
                .is_some_and(|t| t.starts_with("text/javascript")),
            "{src}"
        );
        assert_eq!(
            r.header("X-Content-Type-Options").as_deref(),
            Some("nosniff")
        );
        let etag = r.header("ETag").expect("etag");
        let again = support::http::request(addr, "GET", src, &[("If-None-Match", &etag)], "").await;
        assert_eq!(again.status, 304, "{src}");
        assert!(again.body.is_empty());
    }
    // The SockJS iframe page loads this node's own copy of sockjs-client, no third-party host.
    let iframe = get(addr, "/chat/iframe.html").await;
    assert_eq!(iframe.status, 200);
    let src = "/web/vendor/sockjs.min.js";
    assert!(
        iframe.body.contains(&format!("src=\"{src}\"")),
        "{}",
        iframe.body
    );
    assert!(!iframe.body.contains("://"), "{}", iframe.body);
    assert_eq!(get(addr, src).await.status, 200);
    let r = get(addr, "/web/nope.js").await;
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"]["code"], "not_found");
    handle.stop(true).await;
}
