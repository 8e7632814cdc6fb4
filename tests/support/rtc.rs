//! A signaling client for `/rtc` over tokio-tungstenite: sends JSON messages, reads the
//! server's, and waits for a given `type` with a bound, so call tests read as a script.

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

/// How long a test waits for any one signaling message.
pub const WAIT: Duration = Duration::from_secs(20);

/// One `/rtc` connection.
pub struct Rtc {
    pub ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    /// Messages read while waiting for another type, in order.
    pub seen: Vec<Value>,
}

impl Rtc {
    /// Opens `/rtc` without signing in.
    pub async fn open(addr: SocketAddr) -> Self {
        Self::open_url(&format!("ws://{addr}/rtc")).await
    }

    /// Opens a signaling URL as given (a redirect's `url`) without signing in.
    pub async fn open_url(url: &str) -> Self {
        let (ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("websocket");
        Self {
            ws,
            seen: Vec::new(),
        }
    }

    /// Opens a signaling URL and signs in with `token`; panics unless `welcome` comes back.
    pub async fn connect_url(url: &str, token: &str) -> Self {
        let mut rtc = Self::open_url(url).await;
        rtc.send(json!({"v": 1, "type": "auth", "token": token}))
            .await;
        rtc.expect("welcome").await;
        rtc
    }

    /// Opens `/rtc` and signs in with `token`; panics unless `welcome` comes back.
    pub async fn connect(addr: SocketAddr, token: &str) -> Self {
        Self::connect_url(&format!("ws://{addr}/rtc"), token).await
    }

    /// Sends one message.
    pub async fn send(&mut self, message: Value) {
        self.send_text(message.to_string()).await;
    }

    /// Sends raw text.
    pub async fn send_text(&mut self, text: String) {
        self.ws
            .send(Message::Text(text.into()))
            .await
            .expect("send");
    }

    /// The next message, or `None` when the socket closed (or nothing came within `WAIT`).
    pub async fn next(&mut self) -> Option<Value> {
        loop {
            let message = tokio::time::timeout(WAIT, self.ws.next()).await.ok()??;
            match message.ok()? {
                Message::Text(text) => {
                    return Some(serde_json::from_str(&text).expect("server sends JSON"));
                }
                Message::Close(_) => return None,
                _ => continue,
            }
        }
    }

    /// Reads until a message of `kind` (others are kept in `seen`); panics on close or time.
    pub async fn expect(&mut self, kind: &str) -> Value {
        loop {
            match self.next().await {
                Some(m) if m["type"] == kind => return m,
                Some(m) => self.seen.push(m),
                None => panic!("no {kind} message; seen {:?}", self.seen),
            }
        }
    }

    /// Reads until a message matching `pred`; panics on close or time.
    pub async fn expect_where(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        loop {
            match self.next().await {
                Some(m) if pred(&m) => return m,
                Some(m) => self.seen.push(m),
                None => panic!("no {what}; seen {:?}", self.seen),
            }
        }
    }

    /// Reads until an `error` message and returns its code.
    pub async fn expect_error(&mut self) -> String {
        let e = self.expect("error").await;
        e["code"].as_str().expect("code").to_owned()
    }

    /// Joins `call` and returns the `joined` message; the server's offer follows.
    pub async fn join(&mut self, call: &str) -> Value {
        self.send(json!({"type": "join", "call_id": call})).await;
        self.expect("joined").await
    }
}
