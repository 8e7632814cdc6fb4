//! A real OpenID Connect provider (npm `oidc-provider`, tests/e2e/oidc-provider.mjs) started
//! per test on a free loopback port, stopped when dropped. A missing Node.js or a missing
//! `npm ci` in tests/e2e is a test failure with instructions, never a skip.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct OidcProvider {
    child: Child,
    pub port: u16,
    pub issuer: String,
}

impl OidcProvider {
    /// Starts the provider on `port` with one client whose redirect URI is `redirect_uri`.
    pub fn start(port: u16, redirect_uri: &str, client_id: &str, client_secret: &str) -> Self {
        Self::try_start(port, redirect_uri, client_id, client_secret)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Like [`OidcProvider::start`], but an early exit (the port was taken between
    /// [`super::free_port`] and node binding it, by a test running in parallel) is an error the
    /// caller may retry with another port.
    pub fn try_start(
        port: u16,
        redirect_uri: &str,
        client_id: &str,
        client_secret: &str,
    ) -> Result<Self, String> {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/e2e");
        assert!(
            dir.join("node_modules/oidc-provider").exists(),
            "npm package oidc-provider not installed: run `npm ci` in tests/e2e (bash .ci/run does)"
        );
        let mut child = Command::new("node")
            .current_dir(&dir)
            .arg("oidc-provider.mjs")
            .arg(port.to_string())
            .arg(redirect_uri)
            .arg(client_id)
            .arg(client_secret)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run `node` ({e}): install Node.js 20+ (bash .ci/run does)")
            });
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.starts_with("READY ") {
                    let _ = tx.send(line);
                }
            }
        });
        // Node loads oidc-provider slowly on a busy 2-core machine; 90 s is still bounded.
        let deadline = Instant::now() + Duration::from_secs(90);
        let line = loop {
            if let Ok(line) = rx.recv_timeout(Duration::from_millis(100)) {
                break line;
            }
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!("oidc-provider exited early ({status})"));
            }
            assert!(
                Instant::now() < deadline,
                "oidc-provider did not start in 30 s"
            );
        };
        let issuer = line.trim_start_matches("READY ").trim().to_owned();
        Ok(Self {
            child,
            port,
            issuer,
        })
    }
}

impl Drop for OidcProvider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
