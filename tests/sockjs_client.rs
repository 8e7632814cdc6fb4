//! The real sockjs-client (npm, tests/e2e/sockjs-client.mjs) against `/chat` on 127.0.0.1,
//! over the websocket, xhr-streaming and xhr-polling transports: STOMP CONNECT/CONNECTED and
//! DISCONNECT/RECEIPT, then the server's close. A missing Node or package fails, never skips.

use crate::support::app::TestApp;
use crate::support::stomp::signup;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

#[actix_rt::test]
async fn sockjs_client_connects_over_websocket_xhr_streaming_and_xhr_polling() {
    let e2e = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/e2e");
    assert!(
        e2e.join("node_modules/sockjs-client").exists(),
        "npm package sockjs-client not installed: run `npm ci` in tests/e2e (bash .ci/run does)"
    );
    let app = TestApp::start(|_| {}).await;
    let (addr, handle) = (app.addr, app.handle.clone());
    let (token, _) = signup(addr, "sockjs.client@example.com").await;

    let child = tokio::process::Command::new("node")
        .arg(e2e.join("sockjs-client.mjs"))
        .arg(format!("http://{addr}/chat"))
        .env("NEULBI_TOKEN", &token)
        .current_dir(&e2e)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run `node` ({e}): install Node.js 20+ (bash .ci/run does)")
        });
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("sockjs-client finished within 60 s")
        .expect("output");
    handle.stop(true).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report = format!("{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "sockjs-client failed:\n{report}");
    for transport in ["websocket", "xhr-streaming", "xhr-polling"] {
        let line = stdout
            .lines()
            .find(|l| l.contains(&format!("\"transport\":\"{transport}\"")))
            .unwrap_or_else(|| panic!("no result for {transport}:\n{report}"));
        let result: serde_json::Value = serde_json::from_str(line).expect("json");
        assert_eq!(result["ok"], true, "{line}");
    }
}
