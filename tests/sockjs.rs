//! STOMP over SockJS at `/chat`, black-box over 127.0.0.1: CONNECT/CONNECTED through each
//! transport, two members chatting (one on the SockJS websocket, one on xhr_streaming +
//! xhr_send), xhr polling, bad origins refused, and the session reuse rules.

use crate::support::app::TestApp;
use crate::support::http::{Response, request};
use crate::support::stomp::signup;
use futures::{SinkExt, StreamExt};
use neulbi::edge::stomp::codec::{Decoder, Limits, encode};
use neulbi::edge::stomp::frame::{Command, Frame, Version};
use neulbi_domain::RoomId;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(10);

fn stomp_text(frame: &Frame) -> String {
    let mut out = Vec::new();
    encode(frame, Version::V1_2, &mut out).expect("encode");
    String::from_utf8(out).expect("text")
}

/// The STOMP frames in SockJS messages (heart-beat EOLs skipped).
fn stomp_frames(messages: &[String]) -> Vec<Frame> {
    let mut decoder = Decoder::new(Limits::default());
    decoder.set_version(Version::V1_2);
    let mut frames = Vec::new();
    for m in messages {
        decoder
            .feed(m.as_bytes(), &mut frames)
            .expect("server frames decode");
    }
    frames
}

/// The messages of an `a[...]` SockJS frame; other frames carry none.
fn sockjs_messages(frame: &str) -> Vec<String> {
    frame
        .strip_prefix('a')
        .map(|json| serde_json::from_str(json).expect("a[...] is a JSON array of strings"))
        .unwrap_or_default()
}

fn connect(token: &str) -> Frame {
    Frame::new(Command::Connect)
        .header("accept-version", "1.2")
        .header("heart-beat", "0,0")
        .header("Authorization", format!("Bearer {token}"))
}

fn subscribe(room: RoomId, id: &str) -> Frame {
    Frame::new(Command::Subscribe)
        .header("id", id)
        .header("destination", format!("/topic/rooms.{room}"))
        .header("receipt", format!("sub-{id}"))
}

fn post(room: RoomId, body: &str) -> Frame {
    Frame::new(Command::Send)
        .header("destination", format!("/app/rooms.{room}.send"))
        .header("content-type", "text/plain")
        .body(body)
}

/// A chunked body decoded (the helper client reads raw HTTP).
fn dechunk(r: &Response) -> String {
    let chunked = r
        .header("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
    if !chunked {
        return r.body.clone();
    }
    let mut rest = r.body.as_str();
    let mut out = String::new();
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).expect("chunk size");
        if size == 0 {
            break;
        }
        out.push_str(&tail[..size]);
        rest = &tail[size + 2..];
    }
    out
}

/// A SockJS session over the SockJS-framed websocket.
struct WsSession {
    ws: tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>,
}

impl WsSession {
    async fn open(addr: SocketAddr) -> Self {
        let url = format!("ws://{addr}/chat/123/{}/websocket", Uuid::new_v4().simple());
        let (ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("websocket");
        let mut s = Self { ws };
        assert_eq!(s.frame().await.as_deref(), Some("o"));
        s
    }

    async fn frame(&mut self) -> Option<String> {
        loop {
            let msg = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("a frame in time");
            match msg {
                Some(Ok(Message::Text(t))) => return Some(t.to_string()),
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return None,
                Some(Ok(_)) => {}
            }
        }
    }

    async fn send(&mut self, frame: &Frame) {
        let json = serde_json::to_string(&[stomp_text(frame)]).expect("json");
        self.ws.send(Message::text(json)).await.expect("send");
    }

    async fn stomp(&mut self) -> Frame {
        loop {
            let frame = self.frame().await.expect("session open");
            if let Some(f) = stomp_frames(&sockjs_messages(&frame)).into_iter().next() {
                return f;
            }
        }
    }
}

/// An `xhr_streaming` receiver: each newline-terminated SockJS frame of a chunked response.
struct Streaming {
    reader: BufReader<TcpStream>,
    pub head: String,
    pending: String,
}

impl Streaming {
    async fn open(addr: SocketAddr, path: &str, origin: Option<&str>) -> Self {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        let origin = origin
            .map(|o| format!("Origin: {o}\r\n"))
            .unwrap_or_default();
        let req =
            format!("POST {path} HTTP/1.1\r\nHost: {addr}\r\n{origin}Content-Length: 0\r\n\r\n");
        s.write_all(req.as_bytes()).await.expect("write");
        let mut reader = BufReader::new(s);
        let mut head = String::new();
        loop {
            let mut line = String::new();
            let n = tokio::time::timeout(WAIT, reader.read_line(&mut line))
                .await
                .expect("head in time")
                .expect("read");
            if n == 0 || line == "\r\n" {
                break;
            }
            head.push_str(&line);
        }
        Self {
            reader,
            head,
            pending: String::new(),
        }
    }

    /// The next frame (`None` once the response ended).
    async fn frame(&mut self) -> Option<String> {
        loop {
            if let Some((frame, rest)) = self.pending.split_once('\n') {
                let frame = frame.to_owned();
                self.pending = rest.to_owned();
                return Some(frame);
            }
            let mut size = String::new();
            tokio::time::timeout(WAIT, self.reader.read_line(&mut size))
                .await
                .expect("a chunk in time")
                .expect("read");
            let size = usize::from_str_radix(size.trim(), 16).ok()?;
            if size == 0 {
                return None;
            }
            let mut chunk = vec![0; size + 2];
            self.reader.read_exact(&mut chunk).await.expect("chunk");
            chunk.truncate(size);
            self.pending
                .push_str(std::str::from_utf8(&chunk).expect("utf-8"));
        }
    }

    async fn stomp(&mut self) -> Frame {
        loop {
            let frame = self.frame().await.expect("stream open");
            if let Some(f) = stomp_frames(&sockjs_messages(&frame)).into_iter().next() {
                return f;
            }
        }
    }
}

async fn xhr_send(addr: SocketAddr, session: &str, frames: &[Frame]) -> Response {
    let messages: Vec<String> = frames.iter().map(stomp_text).collect();
    let body = serde_json::to_string(&messages).expect("json");
    request(
        addr,
        "POST",
        &format!("/chat/1/{session}/xhr_send"),
        &[],
        &body,
    )
    .await
}

async fn xhr_poll(addr: SocketAddr, session: &str) -> String {
    let r = request(addr, "POST", &format!("/chat/1/{session}/xhr"), &[], "").await;
    assert_eq!(r.status, 200, "{}", r.body);
    dechunk(&r)
}

#[actix_rt::test]
async fn stomp_over_sockjs_websocket_xhr_streaming_and_polling() {
    let app = TestApp::start(|_| {}).await;
    let (addr, handle) = (app.addr, app.handle.clone());

    let (alice_token, alice) = signup(addr, "alice.sockjs@example.com").await;
    let (bob_token, bob) = signup(addr, "bob.sockjs@example.com").await;
    let room = app.open_room_direct(alice, bob).await;

    // The greeting and info (websocket on, no sticky cookie by default).
    let r = request(addr, "GET", "/chat", &[], "").await;
    assert_eq!((r.status, r.body.as_str()), (200, "Welcome to SockJS!\n"));
    let r = request(addr, "GET", "/chat/info", &[], "").await;
    let info: serde_json::Value = serde_json::from_str(&dechunk(&r)).expect("json");
    assert_eq!(info["websocket"], true);
    assert_eq!(info["cookie_needed"], false);
    // The test services are off by default.
    assert_eq!(
        request(addr, "GET", "/echo/info", &[], "").await.status,
        404
    );

    // Alice on the SockJS websocket. Membership reaches the read model asynchronously, and a
    // refused SUBSCRIBE ends the session: retry with a new one.
    let mut alice_ws = None;
    for attempt in 0..100 {
        let mut ws = WsSession::open(addr).await;
        ws.send(&connect(&alice_token)).await;
        let connected = ws.stomp().await;
        assert_eq!(connected.command, Command::Connected, "{connected:?}");
        assert_eq!(connected.get("version"), Some("1.2"));
        ws.send(&subscribe(room, "a")).await;
        let answer = ws.stomp().await;
        if answer.command == Command::Receipt {
            alice_ws = Some(ws);
            break;
        }
        assert!(attempt < 99, "never became a member: {answer:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut alice_ws = alice_ws.expect("subscribed");

    // Bob on xhr_streaming + xhr_send, from an allowed origin (the node's own).
    let bob_session = Uuid::new_v4().simple().to_string();
    let path = format!("/chat/2/{bob_session}/xhr_streaming");
    let origin = format!("http://{addr}");
    let mut bob_rx = Streaming::open(addr, &path, Some(&origin)).await;
    assert!(bob_rx.head.starts_with("HTTP/1.1 200"), "{}", bob_rx.head);
    assert!(
        bob_rx
            .head
            .to_ascii_lowercase()
            .contains(&format!("access-control-allow-origin: {origin}")),
        "{}",
        bob_rx.head
    );
    assert_eq!(
        bob_rx.frame().await.map(|f| f.len()),
        Some(2048),
        "h prelude"
    );
    assert_eq!(bob_rx.frame().await.as_deref(), Some("o"));
    let r = xhr_send(addr, &bob_session, &[connect(&bob_token)]).await;
    assert_eq!(r.status, 204, "{}", r.body);
    assert_eq!(bob_rx.stomp().await.command, Command::Connected);
    let r = xhr_send(addr, &bob_session, &[subscribe(room, "b")]).await;
    assert_eq!(r.status, 204);
    let answer = bob_rx.stomp().await;
    assert_eq!(answer.command, Command::Receipt, "{answer:?}");

    // One receiver per session: a second stream is told so and ended.
    let mut second = Streaming::open(addr, &path, None).await;
    second.frame().await.expect("prelude");
    assert_eq!(
        second.frame().await.as_deref(),
        Some(r#"c[2010,"Another connection still open"]"#)
    );
    assert_eq!(second.frame().await, None);

    // They chat both ways.
    alice_ws.send(&post(room, "안녕, Bob")).await;
    let message = bob_rx.stomp().await;
    assert_eq!(message.command, Command::Message, "{message:?}");
    let body: serde_json::Value = serde_json::from_slice(&message.body).expect("json");
    assert_eq!(body["body"], "안녕, Bob");
    let own = alice_ws.stomp().await;
    assert_eq!(
        own.command,
        Command::Message,
        "the sender is a subscriber too"
    );
    let r = xhr_send(addr, &bob_session, &[post(room, "hi \u{2028} Alice")]).await;
    assert_eq!(r.status, 204);
    let message = alice_ws.stomp().await;
    assert_eq!(message.command, Command::Message, "{message:?}");
    let body: serde_json::Value = serde_json::from_slice(&message.body).expect("json");
    assert_eq!(body["body"], "hi \u{2028} Alice");

    // xhr polling: o, then CONNECTED, then DISCONNECT ends the session with c[3000].
    let polled = Uuid::new_v4().simple().to_string();
    assert_eq!(xhr_poll(addr, &polled).await, "o\n");
    let r = xhr_send(addr, &polled, &[connect(&alice_token)]).await;
    assert_eq!(r.status, 204);
    let frames = stomp_frames(&sockjs_messages(xhr_poll(addr, &polled).await.trim_end()));
    assert_eq!(frames.first().map(|f| f.command), Some(Command::Connected));
    let bye = Frame::new(Command::Disconnect).header("receipt", "bye");
    assert_eq!(xhr_send(addr, &polled, &[bye]).await.status, 204);
    let frames = stomp_frames(&sockjs_messages(xhr_poll(addr, &polled).await.trim_end()));
    assert_eq!(frames.first().map(|f| f.command), Some(Command::Receipt));
    for _ in 0..2 {
        assert_eq!(xhr_poll(addr, &polled).await, "c[3000,\"Go away!\"]\n");
    }
    assert_eq!(
        xhr_send(addr, &polled, &[]).await.status,
        404,
        "closed session"
    );

    // Payload rules of xhr_send.
    let unknown = Uuid::new_v4().simple().to_string();
    assert_eq!(xhr_send(addr, &unknown, &[]).await.status, 404);
    let r = request(
        addr,
        "POST",
        &format!("/chat/1/{bob_session}/xhr_send"),
        &[],
        "",
    )
    .await;
    assert_eq!((r.status, dechunk(&r).as_str()), (500, "Payload expected."));
    let r = request(
        addr,
        "POST",
        &format!("/chat/1/{bob_session}/xhr_send"),
        &[],
        "[\"x",
    )
    .await;
    assert_eq!(
        (r.status, dechunk(&r).as_str()),
        (500, "Broken JSON encoding.")
    );
    let huge = format!("[\"{}\"]", "x".repeat(1024 * 1024));
    let r = request(
        addr,
        "POST",
        &format!("/chat/1/{bob_session}/xhr_send"),
        &[],
        &huge,
    )
    .await;
    assert_eq!(r.status, 413, "bounded");
    // Ids with dots are not session URLs.
    let r = request(addr, "POST", "/chat/1/a.b/xhr", &[], "").await;
    assert_eq!(r.status, 404);

    // Bad origins are refused on every SockJS endpoint.
    let evil = [("Origin", "https://evil.example")];
    for (method, path) in [
        ("GET", "/chat/info".to_owned()),
        ("OPTIONS", "/chat/info".to_owned()),
        ("POST", format!("/chat/1/{}/xhr", Uuid::new_v4().simple())),
        ("POST", format!("/chat/1/{bob_session}/xhr_send")),
        (
            "GET",
            format!("/chat/1/{}/eventsource", Uuid::new_v4().simple()),
        ),
    ] {
        let r = request(addr, method, &path, &evil, "[]").await;
        assert_eq!(r.status, 403, "{method} {path}");
        assert!(r.header("access-control-allow-origin").is_none());
    }
    let mut ws_req =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(format!(
            "ws://{addr}/chat/1/{}/websocket",
            Uuid::new_v4().simple()
        ))
        .expect("request");
    ws_req
        .headers_mut()
        .insert("Origin", "https://evil.example".parse().expect("header"));
    assert!(
        tokio_tungstenite::connect_async(ws_req).await.is_err(),
        "websocket refused"
    );

    // Bob's stream ends with the session: DISCONNECT, the RECEIPT, then c[3000].
    let bye = Frame::new(Command::Disconnect).header("receipt", "bob-bye");
    assert_eq!(xhr_send(addr, &bob_session, &[bye]).await.status, 204);
    // Bob's own message reaches him too (he is subscribed), before or after the DISCONNECT.
    let mut answer = bob_rx.stomp().await;
    if answer.command == Command::Message {
        answer = bob_rx.stomp().await;
    }
    assert_eq!(answer.command, Command::Receipt, "{answer:?}");
    assert_eq!(
        bob_rx.frame().await.as_deref(),
        Some(r#"c[3000,"Go away!"]"#)
    );
    assert_eq!(bob_rx.frame().await, None);

    alice_ws.send(&Frame::new(Command::Disconnect)).await;
    assert_eq!(
        alice_ws.frame().await.as_deref(),
        Some(r#"c[3000,"Go away!"]"#)
    );
    assert_eq!(alice_ws.frame().await, None);

    handle.stop(true).await;
}

#[actix_rt::test]
async fn sessions_beat_expire_are_interrupted_and_are_bounded_per_node() {
    let app = TestApp::start(|config| {
        config.chat.sockjs.disconnect_delay_secs = 1;
        config.chat.sockjs.max_sessions = 2;
        config.chat.sockjs.heartbeat_secs = 1;
    })
    .await;
    let (addr, handle) = (app.addr, app.handle.clone());

    // A session without a receiver is forgotten after the disconnect delay.
    let idle = Uuid::new_v4().simple().to_string();
    assert_eq!(xhr_poll(addr, &idle).await, "o\n");
    assert_eq!(xhr_send(addr, &idle, &[]).await.status, 204, "live");
    // A poll with nothing to deliver is answered with a heart-beat frame.
    let started = std::time::Instant::now();
    assert_eq!(xhr_poll(addr, &idle).await, "h\n");
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );
    // Two sessions at most: a third is refused while both live.
    let vanishing = Uuid::new_v4().simple().to_string();
    assert_eq!(xhr_poll(addr, &vanishing).await, "o\n");
    let third = request(addr, "POST", "/chat/1/third/xhr", &[], "").await;
    assert_eq!(third.status, 503);

    // A long-poll whose client vanishes interrupts its session at once.
    let mut poll = TcpStream::connect(addr).await.expect("connect");
    let req = format!(
        "POST /chat/1/{vanishing}/xhr HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\n\r\n"
    );
    poll.write_all(req.as_bytes()).await.expect("write");
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(poll);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        xhr_poll(addr, &vanishing).await,
        "c[1002,\"Connection interrupted\"]\n"
    );
    assert_eq!(xhr_send(addr, &vanishing, &[]).await.status, 404, "ended");

    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(xhr_send(addr, &idle, &[]).await.status, 404, "expired");
    assert_eq!(xhr_poll(addr, &idle).await, "o\n", "the id is free again");
    let third = request(addr, "POST", "/chat/1/third/xhr", &[], "").await;
    assert_eq!(third.status, 200, "slots were freed");

    handle.stop(true).await;
}
