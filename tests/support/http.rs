//! A minimal HTTP/1.1 client for black-box tests: enough for status, headers and JSON bodies.

use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A parsed response.
pub struct Response {
    pub status: u16,
    pub headers: String,
    pub body: String,
}

impl Response {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// Sends one GET to `addr` and reads the whole response (the server closes the connection).
pub async fn get(addr: std::net::SocketAddr, path: &str) -> Response {
    let fut = async {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.expect("write");
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.expect("read");
        let text = String::from_utf8_lossy(&buf).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").expect("response head");
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("status code");
        Response {
            status,
            headers: head.to_owned(),
            body: body.to_owned(),
        }
    };
    tokio::time::timeout(Duration::from_secs(10), fut)
        .await
        .expect("HTTP request timed out")
}

/// Polls `/readyz` until it answers 200 (the read models caught up), for at most 10 s.
pub async fn wait_ready(addr: std::net::SocketAddr) -> Response {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let r = get(addr, "/readyz").await;
        if r.status == 200 || tokio::time::Instant::now() > deadline {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
