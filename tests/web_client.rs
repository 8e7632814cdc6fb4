//! The web client in headless Chromium (tests/e2e/web-chat.mjs, playwright-core): the demo
//! client finds the demo counselor, opens a room and chats with them live; markup in a message
//! stays text.

mod support;

use std::process::Stdio;
use std::time::Duration;
use support::app::TestApp;

#[actix_rt::test]
async fn demo_client_and_counselor_chat_in_the_browser() {
    let app = TestApp::start(|_| {}).await;
    // The directory lists the demo counselor once its profile is projected.
    support::http::wait_ready(app.addr).await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/e2e/web-chat.mjs");
    let child = tokio::process::Command::new("node")
        .arg(script)
        .env("NEULBI_URL", format!("http://{}", app.addr))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("node must be installed (bash .ci/run installs it, and chromium)");
    let out = tokio::time::timeout(Duration::from_secs(90), child.wait_with_output())
        .await
        .expect("the browser test timed out")
        .expect("run node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.trim_end().ends_with("OK"),
        "{}: {stdout}",
        out.status
    );
    app.handle.stop(true).await;
}
