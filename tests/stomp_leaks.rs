//! No token or personal data in logs or spans while chatting over STOMP: a whole session
//! (CONNECT with a bearer token, SUBSCRIBE, SEND, delivery, a refused token) runs with every
//! level and span event captured, then the capture is searched. Its own binary, because the
//! subscriber is global (the server's worker threads must log into it too).

use crate::support::app::TestApp;
use crate::support::stomp::{Client, signup};
use neulbi::edge::stomp::frame::{Command, Frame};
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tracing_subscriber::fmt::format::FmtSpan;

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("capture").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

const SECRET_TEXT: &str = "stomp-secret-message-text";
const EMAIL: &str = "leaky.stomp@example.com";

#[actix_rt::test]
async fn a_stomp_session_logs_no_token_or_message() {
    let capture = Capture::default();
    let writer = capture.clone();
    tracing_subscriber::fmt()
        // The test's own WebSocket client (tungstenite) traces its payloads; it is not the
        // server, so it is left out.
        .with_env_filter("trace,tungstenite=off,tokio_tungstenite=off")
        .with_span_events(FmtSpan::FULL)
        .with_writer(move || writer.clone())
        .init();

    let app = TestApp::start(|_| {}).await;
    let (addr, handle) = (app.addr, app.handle.clone());

    let (token, alice) = signup(addr, EMAIL).await;
    let (_, bob) = signup(addr, "other.leaky.stomp@example.com").await;
    let room = app.open_room_direct(alice, bob).await;

    let mut ws = Client::connect(addr, &token).await;
    let mut answer = ws.subscribe(room, "s").await;
    for _ in 0..100 {
        if answer.command == Command::Receipt {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        ws = Client::connect(addr, &token).await;
        answer = ws.subscribe(room, "s").await;
    }
    assert_eq!(answer.command, Command::Receipt, "{answer:?}");
    ws.send(
        Frame::new(Command::Send)
            .header("destination", format!("/app/rooms.{room}.send"))
            .header("receipt", "r")
            .body(SECRET_TEXT),
    )
    .await;
    let mut seen = 0;
    while seen < 2 {
        let f = ws.next().await.expect("frame");
        assert!(
            matches!(f.command, Command::Receipt | Command::Message),
            "{f:?}"
        );
        seen += 1;
    }
    // A refused (altered) token is logged, if at all, without the token.
    let mut forged = Client::open(addr).await;
    forged
        .send(
            Frame::new(Command::Connect)
                .header("accept-version", "1.2")
                .header("Authorization", format!("Bearer {token}x")),
        )
        .await;
    forged.expect(Command::Error).await;
    ws.send(Frame::new(Command::Disconnect)).await;
    assert!(ws.next().await.is_none());
    handle.stop(true).await;

    let logs = String::from_utf8(capture.0.lock().expect("capture").clone()).expect("utf8");
    assert!(
        logs.contains("/chat/websocket"),
        "the server's request spans were not captured"
    );
    for (name, secret) in [
        ("token", token.as_str()),
        ("message", SECRET_TEXT),
        ("email", EMAIL),
    ] {
        if let Some(at) = logs.find(secret) {
            let from = logs[..at].rfind('\n').map_or(0, |n| n + 1);
            let line = &logs[from..logs[at..].find('\n').map_or(logs.len(), |n| at + n)];
            let redacted = line.replace(secret, "<SECRET>");
            panic!("logs contain the {name}: {redacted}");
        }
    }
    // The signature part of the JWT alone must not appear either.
    let signature = token.rsplit('.').next().expect("jwt");
    assert!(
        !logs.contains(signature),
        "logs contain the token's signature"
    );
}
