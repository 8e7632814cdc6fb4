//! Runs a script of tests/e2e under Node (third-party clients, headless Chromium) and returns
//! its standard output; the script prints "OK" last when every check passed.

use std::process::Stdio;
use std::time::Duration;

/// Runs `tests/e2e/{script}` with `env`, for at most `limit`; panics unless it ends with "OK".
pub async fn run_ok(script: &str, env: &[(&str, &str)], limit: Duration) {
    let path = format!("{}/tests/e2e/{script}", env!("CARGO_MANIFEST_DIR"));
    let mut command = tokio::process::Command::new("node");
    command
        .arg(&path)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    for (k, v) in env {
        command.env(k, v);
    }
    let child = command.spawn().expect(
        "node must be installed (bash .ci/run installs it, chromium and tests/e2e's packages)",
    );
    let out = tokio::time::timeout(limit, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{script} timed out"))
        .expect("run node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.trim_end().ends_with("OK"),
        "{script}: {}: {stdout}",
        out.status
    );
}
