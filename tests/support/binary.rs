//! The `neulbi` binary as a black box: started with a clean environment on an ephemeral
//! loopback port, stopped with SIGTERM.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

/// `neulbi` with an empty environment (PATH only), its data in `data_dir`, logging warnings.
pub fn neulbi(data_dir: &std::path::Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_neulbi"));
    c.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("NEULBI_DATA_DIR", data_dir)
        .env("NEULBI_LOG", "warn")
        .current_dir(data_dir);
    c
}

/// Starts `neulbi serve` on an ephemeral loopback port with `env`, and returns it with the
/// address its first line ("Neulbi is ready at URL") names.
pub async fn serve(
    dir: &std::path::Path,
    env: &[(&str, &str)],
) -> (std::process::Child, std::net::SocketAddr) {
    let (child, url) = start(dir, "127.0.0.1:0", env).await;
    let addr = url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .parse()
        .expect("URL names the bound address");
    (child, addr)
}

/// Starts `neulbi serve` on `listen` (for nodes whose public URL names no address) and waits
/// for its first line.
pub async fn serve_at(
    dir: &std::path::Path,
    listen: std::net::SocketAddr,
    env: &[(&str, &str)],
) -> std::process::Child {
    start(dir, &listen.to_string(), env).await.0
}

async fn start(
    dir: &std::path::Path,
    listen: &str,
    env: &[(&str, &str)],
) -> (std::process::Child, String) {
    let mut command = neulbi(dir);
    command
        .args(["serve", "--listen", listen])
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    for (k, v) in env {
        command.env(k, v);
    }
    let mut child = command.spawn().expect("spawn neulbi serve");
    let stdout = child.stdout.take().expect("stdout");
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).map(|_| line)
    });
    let line = tokio::time::timeout(Duration::from_secs(30), line)
        .await
        .expect("serve printed its URL in time")
        .expect("join")
        .expect("read line");
    let url = line
        .trim()
        .strip_prefix("Neulbi is ready at ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_owned();
    (child, url)
}

/// Sends SIGTERM to `child`.
pub fn sigterm(child: &std::process::Child) {
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill")
            .success()
    );
}
