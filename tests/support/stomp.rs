//! A minimal STOMP 1.2 client over WebSocket (tokio-tungstenite) using the server's own codec,
//! and a signup helper, for the STOMP black-box tests.

use super::http::{post_json, request};
use futures::{SinkExt, StreamExt};
use neulbi::edge::stomp::codec::{Decoder, Limits, encode};
use neulbi::edge::stomp::frame::{Command, Frame, Version};
use neulbi_domain::{RoomId, UserId};
use serde_json::json;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;
use uuid::Uuid;

pub async fn signup(addr: SocketAddr, email: &str) -> (String, UserId) {
    let r = post_json(
        addr,
        "/auth/signup",
        &json!({ "email": email, "password": "a long password", "nickname": email.split('@').next() }),
        &[],
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let token = r.json()["access_token"].as_str().expect("token").to_owned();
    let me = request(
        addr,
        "GET",
        "/users/me",
        &[("Authorization", &format!("Bearer {token}"))],
        "",
    )
    .await;
    let id: Uuid = me.json()["id"].as_str().expect("id").parse().expect("uuid");
    (token, UserId(id))
}

/// A minimal STOMP 1.2 client over tokio-tungstenite, using the server's own codec.
pub struct Client {
    pub ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    decoder: Decoder,
    frames: VecDeque<Frame>,
}

impl Client {
    pub async fn open(addr: SocketAddr) -> Self {
        let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/chat/websocket"))
            .await
            .expect("websocket");
        let mut decoder = Decoder::new(Limits::default());
        decoder.set_version(Version::V1_2);
        Self {
            ws,
            decoder,
            frames: VecDeque::new(),
        }
    }

    pub async fn send(&mut self, frame: Frame) {
        let mut bytes = Vec::new();
        encode(&frame, Version::V1_2, &mut bytes).expect("encode");
        let text = String::from_utf8(bytes).expect("text frame");
        self.ws.send(Message::text(text)).await.expect("send");
    }

    /// The next frame (heart-beats skipped), or `None` when the server closed.
    pub async fn next(&mut self) -> Option<Frame> {
        self.next_within(Duration::from_secs(10))
            .await
            .expect("a frame within 10s")
    }

    /// Like [`Client::next`], but `Err(())` instead of a panic when nothing comes within
    /// `limit` (fault tests, where a slow answer is an outcome to record).
    pub async fn next_within(&mut self, limit: Duration) -> Result<Option<Frame>, ()> {
        loop {
            if let Some(f) = self.frames.pop_front() {
                return Ok(Some(f));
            }
            let msg = tokio::time::timeout(limit, self.ws.next())
                .await
                .map_err(|_| ())?;
            let bytes = match msg {
                Some(Ok(Message::Text(t))) => t.as_bytes().to_vec(),
                Some(Ok(Message::Binary(b))) => b.to_vec(),
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return Ok(None),
                Some(Ok(_)) => continue,
            };
            let mut out = Vec::new();
            self.decoder
                .feed(&bytes, &mut out)
                .expect("server frames decode");
            self.frames.extend(out);
        }
    }

    pub async fn expect(&mut self, command: Command) -> Frame {
        let f = self.next().await.expect("a frame");
        assert_eq!(f.command, command, "{f:?}");
        f
    }

    pub async fn connect(addr: SocketAddr, token: &str) -> Self {
        let mut c = Self::open(addr).await;
        c.send(
            Frame::new(Command::Connect)
                .header("accept-version", "1.1,1.2")
                .header("host", "localhost")
                .header("heart-beat", "0,0")
                .header("Authorization", format!("Bearer {token}")),
        )
        .await;
        let connected = c.expect(Command::Connected).await;
        assert_eq!(connected.get("version"), Some("1.2"));
        c
    }

    pub async fn subscribe(&mut self, room: RoomId, id: &str) -> Frame {
        self.send(
            Frame::new(Command::Subscribe)
                .header("id", id)
                .header("destination", format!("/topic/rooms.{room}"))
                .header("receipt", format!("sub-{id}")),
        )
        .await;
        self.next().await.expect("an answer")
    }

    /// SUBSCRIBE to any destination with extra headers and a receipt `sub-{id}`; the answer.
    pub async fn subscribe_with(
        &mut self,
        destination: &str,
        id: &str,
        headers: &[(&str, &str)],
    ) -> Frame {
        let mut frame = Frame::new(Command::Subscribe)
            .header("id", id)
            .header("destination", destination)
            .header("receipt", format!("sub-{id}"));
        for (name, value) in headers {
            frame = frame.header(*name, *value);
        }
        self.send(frame).await;
        self.next().await.expect("an answer")
    }

    /// Posts `body` to `room` and waits for its RECEIPT (skipping MESSAGEs meanwhile).
    pub async fn post(&mut self, room: RoomId, body: &str) {
        let receipt = format!("post-{}", Uuid::new_v4());
        self.send(
            Frame::new(Command::Send)
                .header("destination", format!("/app/rooms.{room}.send"))
                .header("receipt", receipt.clone())
                .body(body),
        )
        .await;
        loop {
            let f = self.next().await.expect("a RECEIPT");
            match f.command {
                Command::Receipt => {
                    assert_eq!(f.get("receipt-id"), Some(receipt.as_str()));
                    return;
                }
                Command::Message => continue,
                other => panic!("unexpected {other}: {f:?}"),
            }
        }
    }

    /// The next MESSAGE's JSON body (other frames are a failure).
    pub async fn next_json(&mut self) -> serde_json::Value {
        let f = self.expect(Command::Message).await;
        serde_json::from_slice(&f.body).expect("json body")
    }
}
