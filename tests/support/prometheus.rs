//! A Prometheus server (Debian `prometheus`) a test owns: its own config, rule files and data
//! directory in the test's temp dir, on a free loopback port, scraping only the targets the
//! test names. Killed and reaped on drop, even when the test panics. A missing `prometheus`
//! or `promtool` fails the test.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A running Prometheus.
pub struct Prometheus {
    child: Child,
    pub addr: SocketAddr,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts Prometheus scraping `target` (job `neulbi`) every `interval`, with `rules` loaded.
pub async fn start(dir: &Path, target: SocketAddr, interval: Duration, rules: &Path) -> Prometheus {
    let port = super::free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let secs = interval.as_secs().max(1);
    let config = format!(
        "global:\n  scrape_interval: {secs}s\n  evaluation_interval: {secs}s\n\
         rule_files:\n  - {rules}\n\
         scrape_configs:\n  - job_name: neulbi\n    metrics_path: /metrics\n    \
         static_configs:\n      - targets: ['{target}']\n",
        rules = rules.display(),
    );
    let conf = dir.join("prometheus.yml");
    std::fs::write(&conf, config).expect("write prometheus config");
    let log = std::fs::File::create(dir.join("prometheus.log")).expect("log file");
    let child = Command::new("prometheus")
        .arg(format!("--config.file={}", conf.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address={addr}"))
        .arg("--web.console.templates=")
        .arg("--web.console.libraries=")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("`prometheus` not found: install the Debian package `prometheus` (.ci/run does)");
    let server = Prometheus { child, addr };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok((200, _)) = get(addr, "/-/ready").await {
            return server;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "Prometheus not ready: {}",
            std::fs::read_to_string(dir.join("prometheus.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

impl Prometheus {
    /// GETs an API path (`/api/v1/rules`...) and returns its JSON (a non-200 fails the test).
    pub async fn api(&self, path: &str) -> serde_json::Value {
        let (status, body) = get(self.addr, path).await.expect("Prometheus API");
        assert_eq!(status, 200, "{path}: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
    }

    /// Runs an instant query; returns the result vector (an error status fails the test).
    pub async fn query(&self, expr: &str) -> Vec<serde_json::Value> {
        let q: String = form_urlencoded::Serializer::new(String::new())
            .append_pair("query", expr)
            .finish();
        let (status, body) = get(self.addr, &format!("/api/v1/query?{q}"))
            .await
            .expect("query Prometheus");
        let json: serde_json::Value = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("not JSON ({e}) for {expr}: {body}"));
        assert_eq!(status, 200, "{expr}: {body}");
        assert_eq!(json["status"], "success", "{expr}: {body}");
        match &json["data"]["result"] {
            serde_json::Value::Array(rows) => rows.clone(),
            // A scalar or string result is one value.
            other => vec![other.clone()],
        }
    }
}

/// Runs `promtool ARGS` and returns its success and combined output; `stdin` is piped in.
pub fn promtool(args: &[&str], stdin: Option<&str>) -> (bool, String) {
    use std::io::Write;
    let mut child = Command::new("promtool")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("`promtool` not found: install the Debian package `prometheus` (.ci/run does)");
    if let Some(input) = stdin
        && let Some(mut pipe) = child.stdin.take()
    {
        pipe.write_all(input.as_bytes())
            .expect("write promtool stdin");
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().expect("promtool output");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// One HTTP/1.0 GET (so the body is never chunked); status and body.
async fn get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let fut = async {
        let mut s = TcpStream::connect(addr).await?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
            .await?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await?;
        let text = String::from_utf8_lossy(&buf).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        Ok((status, body.to_owned()))
    };
    tokio::time::timeout(Duration::from_secs(10), fut)
        .await
        .unwrap_or_else(|_| Err(std::io::Error::other("timed out")))
}
