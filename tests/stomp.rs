//! STOMP over WebSocket at `/chat/websocket`, black-box over 127.0.0.1 with a real WebSocket
//! client: two members chat (RECEIPT after the append, delivery from the log's live feed), an
//! outsider is refused, and a bad token is refused.

mod support;

use futures::SinkExt;
use neulbi::config::Config;
use neulbi::edge::stomp::frame::{Command, Frame};
use neulbi::startup::Application;
use neulbi::store::Metadata;
use neulbi_domain::chat_room::RoomCommand;
use neulbi_domain::{Actor, Context, Role, RoomId};
use std::time::Duration;
use support::stomp::{Client, signup};
use tokio_tungstenite::tungstenite::Message;
use uuid::Uuid;

#[actix_rt::test]
async fn two_members_chat_and_outsiders_are_refused() {
    let dir = tempfile::tempdir().expect("dir");
    let config = Config {
        listen: "127.0.0.1:0".parse().expect("addr"),
        data_dir: dir.path().to_owned(),
        ..Config::default()
    };
    let app = Application::build(&config).await.expect("app");
    let (addr, handle, state) = (app.local_addr(), app.handle(), app.state());
    actix_rt::spawn(app.run_until_stopped());

    let (alice_token, alice) = signup(addr, "alice.stomp@example.com").await;
    let (bob_token, bob) = signup(addr, "bob.stomp@example.com").await;
    let (eve_token, _) = signup(addr, "eve.stomp@example.com").await;

    // Opening rooms over HTTP is a later slice: open it through the actor.
    let room = RoomId(Uuid::now_v7());
    let open = RoomCommand::Open {
        room_id: room,
        client: alice,
        counselor: bob,
    };
    let ctx = Context::new(Actor::user(alice, Role::Client), chrono::Utc::now());
    state
        .rooms
        .execute(room.0, open, ctx, Metadata::default())
        .await
        .expect("open");

    // Membership comes from the read model, which follows the log asynchronously.
    let mut alice_ws = Client::connect(addr, &alice_token).await;
    let mut answer = alice_ws.subscribe(room, "a").await;
    for attempt in 0..100 {
        if answer.command == Command::Receipt {
            break;
        }
        assert!(attempt < 99, "never became a member: {answer:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
        alice_ws = Client::connect(addr, &alice_token).await;
        answer = alice_ws.subscribe(room, "a").await;
    }
    assert_eq!(answer.get("receipt-id"), Some("sub-a"));
    let mut bob_ws = Client::connect(addr, &bob_token).await;
    let answer = bob_ws.subscribe(room, "b").await;
    assert_eq!(answer.command, Command::Receipt, "{answer:?}");

    alice_ws
        .send(
            Frame::new(Command::Send)
                .header("destination", format!("/app/rooms.{room}.send"))
                .header("receipt", "post-1")
                .header("client-message-id", "c-1")
                .header("content-type", "text/plain")
                .body("안녕하세요, hello"),
        )
        .await;
    // The sender gets the RECEIPT (after the append) and, as a subscriber, the MESSAGE too.
    let mut got_receipt = false;
    let mut got_message = false;
    while !(got_receipt && got_message) {
        let f = alice_ws.next().await.expect("frame");
        match f.command {
            Command::Receipt => {
                assert_eq!(f.get("receipt-id"), Some("post-1"));
                got_receipt = true;
            }
            Command::Message => got_message = true,
            other => panic!("unexpected {other}: {f:?}"),
        }
    }
    let message = bob_ws.expect(Command::Message).await;
    assert_eq!(message.get("subscription"), Some("b"));
    assert_eq!(
        message.get("destination"),
        Some(format!("/topic/rooms.{room}").as_str())
    );
    let body: serde_json::Value = serde_json::from_slice(&message.body).expect("json");
    assert_eq!(body["body"], "안녕하세요, hello");
    assert_eq!(body["authorId"], alice.to_string());
    assert_eq!(body["clientMessageId"], "c-1");

    // An outsider may connect but not subscribe.
    let mut eve_ws = Client::connect(addr, &eve_token).await;
    let refused = eve_ws.subscribe(room, "e").await;
    assert_eq!(refused.command, Command::Error);
    assert_eq!(refused.get("message"), Some("not a member of this room"));
    assert!(eve_ws.next().await.is_none(), "ERROR closes the connection");

    // A bad token is refused at CONNECT.
    let mut forged = Client::open(addr).await;
    forged
        .send(
            Frame::new(Command::Connect)
                .header("accept-version", "1.2")
                .header("Authorization", "Bearer not-a-jwt"),
        )
        .await;
    let error = forged.expect(Command::Error).await;
    assert_eq!(
        error.get("message"),
        Some("invalid or expired access token")
    );

    // DISCONNECT with a receipt.
    bob_ws
        .send(Frame::new(Command::Disconnect).header("receipt", "bye"))
        .await;
    assert_eq!(
        bob_ws.expect(Command::Receipt).await.get("receipt-id"),
        Some("bye")
    );
    assert!(bob_ws.next().await.is_none());

    alice_ws.send(Frame::new(Command::Disconnect)).await;
    assert!(alice_ws.next().await.is_none());

    handle.stop(true).await;
}

#[actix_rt::test]
async fn malformed_and_oversized_input_gets_error_then_close() {
    let dir = tempfile::tempdir().expect("dir");
    let config = Config {
        listen: "127.0.0.1:0".parse().expect("addr"),
        data_dir: dir.path().to_owned(),
        ..Config::default()
    };
    let app = Application::build(&config).await.expect("app");
    let (addr, handle) = (app.local_addr(), app.handle());
    actix_rt::spawn(app.run_until_stopped());

    // A frame before CONNECT.
    let mut c = Client::open(addr).await;
    c.send(Frame::new(Command::Subscribe).header("id", "0"))
        .await;
    let error = c.expect(Command::Error).await;
    assert_eq!(error.get("message"), Some("expected CONNECT"));
    assert!(c.next().await.is_none());

    // Not STOMP at all.
    let mut c = Client::open(addr).await;
    c.ws.send(Message::text("GET / HTTP/1.1\n\n\0"))
        .await
        .expect("send");
    let error = c.expect(Command::Error).await;
    assert_eq!(
        error.get("message"),
        Some("malformed frame: unknown command")
    );
    assert!(c.next().await.is_none());

    // A body far over the limit, announced by content-length: refused before it arrives.
    let mut c = Client::open(addr).await;
    c.ws.send(Message::text(
        "CONNECT\naccept-version:1.2\ncontent-length:99999999\n\n",
    ))
    .await
    .expect("send");
    let error = c.expect(Command::Error).await;
    assert!(
        error
            .get("message")
            .is_some_and(|m| m.starts_with("malformed frame: body exceeds")),
        "{error:?}"
    );
    assert!(c.next().await.is_none());

    handle.stop(true).await;
}
