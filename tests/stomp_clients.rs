//! Third-party STOMP clients against a running node: `@stomp/stompjs` (over `ws` and over
//! `sockjs-client`) and the older `stompjs` `Stomp.over(socket)`, each in tests/e2e/
//! stomp-chat.mjs under Node. Two members chat, the outsider is refused, a resend is not a
//! second message, a client that reconnects with its last seen message id gets exactly what it
//! missed and then live messages, and each RECEIPT arrives only once its `MessagePosted` is in
//! the log: the script stops at every RECEIPT until this test has found the event.

use crate::support::app::TestApp;
use neulbi::store::Direction;
use neulbi_domain::{StreamKind, StreamName};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// Client-message ids of the room's `MessagePosted` events, in log order.
async fn posted(app: &TestApp, room: &str) -> Vec<String> {
    let stream = StreamName::new(StreamKind::Room, room.parse().expect("uuid"));
    app.state
        .store
        .read_stream(&stream, 0, Direction::Forward, 1000)
        .await
        .expect("read")
        .into_iter()
        .filter(|e| e.event_type == "MessagePosted")
        .filter_map(|e| e.data["client_message_id"].as_str().map(str::to_owned))
        .collect()
}

/// Runs the chat script over one transport and answers its RECEIPT checkpoints.
async fn chat_over(transport: &str) {
    let app = TestApp::start(|_| {}).await;
    let alice = app.client(&format!("alice.{transport}@example.com")).await;
    let bob = app.counselor(&format!("bob.{transport}@example.com")).await;
    let eve = app.client(&format!("eve.{transport}@example.com")).await;
    let room = app.open_room(&alice, &bob).await;
    app.wait_member(&room, &alice).await;
    app.wait_member(&room, &bob).await;

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/e2e/stomp-chat.mjs");
    let mut child = tokio::process::Command::new("node")
        .arg(script)
        .arg(transport)
        .env("NEULBI_URL", format!("http://{}", app.addr))
        .env("ROOM", &room)
        .env("ALICE_TOKEN", &alice.token)
        .env("BOB_TOKEN", &bob.token)
        .env("EVE_TOKEN", &eve.token)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("node must be installed (bash .ci/run installs it) with tests/e2e's npm packages");
    let mut stdin = child.stdin.take().expect("stdin");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let run = async {
        while let Some(line) = lines.next_line().await.expect("read") {
            if let Some(cmid) = line.strip_prefix("RECEIPT ") {
                assert!(
                    posted(&app, &room).await.iter().any(|c| c == cmid),
                    "{transport}: RECEIPT for {cmid} before its MessagePosted was in the log"
                );
                stdin.write_all(b"CHECKED\n").await.expect("write");
            } else if line == "OK" {
                return;
            } else {
                panic!("{transport}: {line}");
            }
        }
        panic!("{transport}: the script ended without OK");
    };
    tokio::time::timeout(Duration::from_secs(40), run)
        .await
        .unwrap_or_else(|_| panic!("{transport}: timed out"));
    let status = child.wait().await.expect("wait");
    assert!(status.success(), "{transport}: {status}");
    // The resend with the same client message id added nothing.
    let expected: Vec<String> = ["1", "2", "m0", "m1", "m2", "live"]
        .iter()
        .map(|s| format!("c-{transport}-{s}"))
        .collect();
    assert_eq!(posted(&app, &room).await, expected);
    app.handle.stop(true).await;
}

#[actix_rt::test]
async fn stompjs_over_websocket() {
    chat_over("ws").await;
}

#[actix_rt::test]
async fn legacy_stompjs_over_websocket() {
    chat_over("legacy-ws").await;
}

#[actix_rt::test]
async fn stompjs_over_sockjs_websocket() {
    chat_over("sockjs-websocket").await;
}

#[actix_rt::test]
async fn stompjs_over_sockjs_xhr_streaming() {
    chat_over("sockjs-xhr-streaming").await;
}

#[actix_rt::test]
async fn stompjs_over_sockjs_xhr_polling() {
    chat_over("sockjs-xhr-polling").await;
}

#[actix_rt::test]
async fn legacy_stompjs_over_sockjs_xhr_streaming() {
    chat_over("legacy-sockjs-xhr-streaming").await;
}
