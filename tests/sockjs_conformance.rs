//! The public SockJS protocol suite (sockjs-protocol, vendored in tests/e2e/sockjs-protocol)
//! against the test services (`/echo`, `/close`, `/disabled_websocket_echo`,
//! `/cookie_needed_echo`) of a node on 127.0.0.1, run with the venv's Python. A missing
//! Python or suite fails the test; it never skips.

use neulbi::config::Config;
use neulbi::startup::Application;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

/// Cases that cannot pass, each with the reason.
const EXCLUDED: &[&str] = &[
    // Hixie-76 / hybi-00 websockets (2010 drafts, Key1/Key2 nonces): actix-ws speaks RFC 6455
    // only, as every browser since 2012 does; the case also compares bytes as py2 `str`.
    "Websocket.test_haproxy",
];

#[actix_rt::test]
async fn the_sockjs_protocol_suite_passes_against_the_test_services() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let python = root.join("tests/e2e/.venv/bin/python");
    let runner = root.join("tests/e2e/sockjs-protocol/run.py");
    assert!(
        python.exists(),
        "{} is missing; run .ci/run (it installs websocket-client into the venv)",
        python.display()
    );
    assert!(runner.exists(), "{} is missing", runner.display());

    let dir = tempfile::tempdir().expect("dir");
    let mut config = Config {
        listen: "127.0.0.1:0".parse().expect("addr"),
        data_dir: dir.path().to_owned(),
        ..Config::default()
    };
    // What the suite expects of its test server; never the production defaults.
    config.chat.sockjs.test_services = true;
    config.chat.sockjs.response_limit_bytes = 4096;
    config.chat.sockjs.disconnect_delay_secs = 5;
    config.chat.sockjs.heartbeat_secs = 25;
    // The suite sends `Origin: test` and `Origin: null` and expects them echoed.
    config.chat.allowed_origins = vec!["*".to_owned()];
    let app = Application::build(&config).await.expect("app");
    let (addr, handle) = (app.local_addr(), app.handle());
    actix_rt::spawn(app.run_until_stopped());

    let mut cmd = tokio::process::Command::new(&python);
    cmd.arg(&runner)
        .env("SOCKJS_URL", format!("http://{addr}"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for case in EXCLUDED {
        cmd.args(["--exclude", case]);
    }
    let child = cmd.spawn().expect("start the suite");
    let out = tokio::time::timeout(Duration::from_secs(150), child.wait_with_output())
        .await
        .expect("the suite finished within 150 s")
        .expect("suite output");
    handle.stop(false).await;
    let report = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "the SockJS protocol suite failed:\n{report}"
    );
    // 68 cases upstream; every one not excluded must have run.
    let ran = format!("ran {}, excluded {}", 68 - EXCLUDED.len(), EXCLUDED.len());
    assert!(report.contains(&ran), "expected `{ran}`:\n{report}");
}
