//! STOMP over WebSocket at `/chat/websocket`, black-box over 127.0.0.1 with a real WebSocket
//! client: two members chat (RECEIPT after the append, delivery from the log's live feed), an
//! outsider is refused, and a bad token is refused; a reconnecting subscriber catches up by
//! `since-message-id`; `/user/queue/rooms` pushes; one send rate per user across sessions;
//! stopping the server closes open connections.

use crate::support;

use crate::support::app::TestApp;
use crate::support::stomp::{Client, signup};
use futures::SinkExt;
use neulbi::edge::stomp::frame::{Command, Frame};
use neulbi::edge::stomp::settings::ChatSettings;
use neulbi::store::Metadata;
use neulbi_domain::chat_room::RoomCommand;
use neulbi_domain::{Actor, Context, Role, RoomId};
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;
use uuid::Uuid;

#[actix_rt::test]
async fn two_members_chat_and_outsiders_are_refused() {
    let app = TestApp::start(|_| {}).await;
    let (addr, handle, state) = (app.addr, app.handle.clone(), app.state.clone());

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
    let app = TestApp::start(|_| {}).await;
    let (addr, handle) = (app.addr, app.handle.clone());

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

/// A node on 127.0.0.1 with these chat settings; the temp dir lives as long as the guard.

#[actix_rt::test]
async fn reconnect_with_since_message_id_gets_exactly_the_missed_messages_then_live_ones() {
    let chat = ChatSettings {
        max_catch_up: 3,
        ..ChatSettings::default()
    };
    let app = TestApp::start(|c| c.chat = chat).await;
    let (addr, stopper) = (app.addr, app.stopper.clone());
    let (alice_token, alice) = signup(addr, "alice.catchup@example.com").await;
    let (bob_token, bob) = signup(addr, "bob.catchup@example.com").await;
    let room = app.open_room_direct(alice, bob).await;
    let topic = format!("/topic/rooms.{room}");

    let mut bob_ws = Client::connect(addr, &bob_token).await;
    assert_eq!(bob_ws.subscribe(room, "b").await.command, Command::Receipt);
    let mut alice_ws = Client::connect(addr, &alice_token).await;
    alice_ws.post(room, "one").await;
    let seen = bob_ws.next_json().await;
    assert_eq!(seen["body"], "one");
    let last_seen = seen["id"].as_str().expect("id").to_owned();
    bob_ws.send(Frame::new(Command::Disconnect)).await;
    assert!(bob_ws.next().await.is_none());

    // Bob is away while two messages are posted.
    alice_ws.post(room, "two").await;
    alice_ws.post(room, "three").await;

    let mut bob_ws = Client::connect(addr, &bob_token).await;
    bob_ws
        .send(
            Frame::new(Command::Subscribe)
                .header("id", "b")
                .header("destination", topic.as_str())
                .header("since-message-id", last_seen.as_str())
                .header("receipt", "caught-up"),
        )
        .await;
    assert_eq!(bob_ws.next_json().await["body"], "two");
    assert_eq!(bob_ws.next_json().await["body"], "three");
    assert_eq!(
        bob_ws.expect(Command::Receipt).await.get("receipt-id"),
        Some("caught-up"),
        "the RECEIPT follows the replay"
    );
    // An id that is not a message of this room is refused too.
    let mut odd = Client::connect(addr, &bob_token).await;
    let unknown = Uuid::now_v7().to_string();
    let refused = odd
        .subscribe_with(&topic, "o", &[("since-message-id", unknown.as_str())])
        .await;
    assert_eq!(
        refused.get("message"),
        Some("since-message-id is not a message of this room")
    );
    // Then live ones, each once.
    alice_ws.post(room, "four").await;
    assert_eq!(bob_ws.next_json().await["body"], "four");
    alice_ws.post(room, "five").await;
    assert_eq!(bob_ws.next_json().await["body"], "five");

    // Four missed messages are more than the configured three: page over HTTP instead.
    let mut late = Client::connect(addr, &bob_token).await;
    let refused = late
        .subscribe_with(&topic, "l", &[("since-message-id", last_seen.as_str())])
        .await;
    assert_eq!(refused.command, Command::Error, "{refused:?}");
    assert!(
        refused
            .get("message")
            .is_some_and(|m| m.contains(&format!("GET /rooms/{room}/messages"))),
        "{refused:?}"
    );
    stopper.stop(true).await;
}

#[actix_rt::test]
async fn my_room_list_queue_gets_opened_message_read_and_closed_pushes() {
    let app = TestApp::start(|_| {}).await;
    let (addr, stopper) = (app.addr, app.stopper.clone());
    let (alice_token, alice) = signup(addr, "alice.queue@example.com").await;
    let (bob_token, bob) = signup(addr, "bob.queue@example.com").await;
    // Opened before anyone subscribed: its members come from the read model.
    let first = app.open_room_direct(alice, bob).await;

    let mut alice_ws = Client::connect(addr, &alice_token).await;
    let answer = alice_ws.subscribe_with("/user/queue/rooms", "q", &[]).await;
    assert_eq!(answer.command, Command::Receipt, "{answer:?}");

    let mut bob_ws = Client::connect(addr, &bob_token).await;
    bob_ws.post(first, "a private text").await;
    let message = alice_ws.expect(Command::Message).await;
    assert_eq!(message.get("destination"), Some("/user/queue/rooms"));
    assert_eq!(message.get("subscription"), Some("q"));
    let text = String::from_utf8(message.body.clone()).expect("utf8");
    assert!(
        !text.contains("private"),
        "no bodies in room-list pushes: {text}"
    );
    let push: serde_json::Value = serde_json::from_str(&text).expect("json");
    assert_eq!(push["type"], "message");
    assert_eq!(push["roomId"], first.to_string());
    assert_eq!(push["authorId"], bob.to_string());
    assert_eq!(push["unread"], true);
    let message_id = push["messageId"].as_str().expect("id").to_owned();

    // Read marker over STOMP: RECEIPT once durable, and a push to my queue.
    alice_ws
        .send(
            Frame::new(Command::Send)
                .header("destination", format!("/app/rooms.{first}.read"))
                .header("message-id", message_id.as_str())
                .header("receipt", "read-1"),
        )
        .await;
    let (mut receipted, mut pushed) = (false, false);
    while !(receipted && pushed) {
        let f = alice_ws.next().await.expect("a frame");
        match f.command {
            Command::Receipt => {
                assert_eq!(f.get("receipt-id"), Some("read-1"));
                receipted = true;
            }
            Command::Message => {
                let push: serde_json::Value = serde_json::from_slice(&f.body).expect("json");
                assert_eq!(push["type"], "read");
                assert_eq!(push["upTo"], message_id.as_str());
                pushed = true;
            }
            other => panic!("unexpected {other}: {f:?}"),
        }
    }

    // A room opened now is pushed from the live feed.
    let second = app.open_room_direct(alice, bob).await;
    let push = alice_ws.next_json().await;
    assert_eq!(push["type"], "opened");
    assert_eq!(push["roomId"], second.to_string());
    assert_eq!(push["counselorId"], bob.to_string());

    // Closed.
    let ctx = Context::new(Actor::user(bob, Role::Client), chrono::Utc::now());
    app.state
        .rooms
        .execute(first.0, RoomCommand::Close, ctx, Metadata::default())
        .await
        .expect("close");
    let push = alice_ws.next_json().await;
    assert_eq!(push["type"], "closed");
    assert_eq!(push["roomId"], first.to_string());

    // Someone else's queue is refused.
    let refused = bob_ws
        .subscribe_with(&format!("/user/{alice}/queue/rooms"), "x", &[])
        .await;
    assert_eq!(refused.command, Command::Error);
    stopper.stop(true).await;
}

#[actix_rt::test]
async fn two_sessions_of_one_user_share_one_send_rate() {
    let chat = ChatSettings {
        send_burst: 3,
        sends_per_second: 1,
        ..ChatSettings::default()
    };
    let app = TestApp::start(|c| c.chat = chat).await;
    let (addr, stopper) = (app.addr, app.stopper.clone());
    let (alice_token, alice) = signup(addr, "alice.rate@example.com").await;
    let (_, bob) = signup(addr, "bob.rate@example.com").await;
    let room = app.open_room_direct(alice, bob).await;
    let mut first = Client::connect(addr, &alice_token).await;
    let mut second = Client::connect(addr, &alice_token).await;
    first.post(room, "1").await;
    second.post(room, "2").await;
    first.post(room, "3").await;
    // The burst of three is spent across both sessions; each alone sent fewer.
    second
        .send(
            Frame::new(Command::Send)
                .header("destination", format!("/app/rooms.{room}.send"))
                .body("4"),
        )
        .await;
    let error = second.expect(Command::Error).await;
    assert_eq!(error.get("message"), Some("sending too fast"));
    assert!(second.next().await.is_none(), "ERROR closes");
    stopper.stop(true).await;
}

#[actix_rt::test]
async fn stopping_the_server_closes_open_stomp_connections_promptly() {
    let app = TestApp::start(|_| {}).await;
    let (addr, stopper, _state) = (app.addr, app.stopper.clone(), app.state.clone());
    let (token, _) = signup(addr, "alice.shutdown@example.com").await;
    let mut idle = Client::connect(addr, &token).await;
    let answer = idle.subscribe_with("/user/queue/rooms", "q", &[]).await;
    assert_eq!(answer.command, Command::Receipt);
    let started = std::time::Instant::now();
    // The server's graceful timeout is 60 s; the open socket must not hold it.
    tokio::time::timeout(Duration::from_secs(10), stopper.stop(true))
        .await
        .expect("graceful stop did not wait for the STOMP connection");
    assert!(started.elapsed() < Duration::from_secs(10));
    let error = idle.expect(Command::Error).await;
    assert_eq!(error.get("message"), Some("server shutting down"));
    assert!(idle.next().await.is_none(), "the transport closed");
}

#[actix_rt::test]
async fn erasing_an_account_ends_its_open_stomp_sessions() {
    let app = TestApp::start(|_| {}).await;
    let (addr, stopper) = (app.addr, app.stopper.clone());
    let (token, alice) = signup(addr, "alice.erased@example.com").await;
    let (bob_token, bob) = signup(addr, "bob.erased@example.com").await;
    let room = app.open_room_direct(alice, bob).await;
    let mut alice_ws = Client::connect(addr, &token).await;
    let mut bob_ws = Client::connect(addr, &bob_token).await;
    assert_eq!(bob_ws.subscribe(room, "b").await.command, Command::Receipt);

    let r = support::http::request(
        addr,
        "DELETE",
        "/users/me",
        &[("Authorization", &format!("Bearer {token}"))],
        "",
    )
    .await;
    assert_eq!(r.status, 204, "{}", r.body);
    // The access token is still within its lifetime, but the session ends with the account.
    let error = tokio::time::timeout(Duration::from_secs(10), alice_ws.expect(Command::Error))
        .await
        .expect("ERROR in time");
    assert_eq!(error.get("message"), Some("account closed"));
    assert!(alice_ws.next().await.is_none(), "the transport closed");
    // Everyone else's session goes on (post waits for its RECEIPT).
    bob_ws.post(room, "still here").await;
    stopper.stop(true).await;
}

/// SUBSCRIBE authorization is read-your-writes: with the read models held back (the
/// projectors stopped, as when they trail the log by seconds under load), a member of a room
/// opened a moment ago subscribes at once, because the room's actor vouches for them; an
/// outsider is still refused.
#[actix_rt::test]
async fn a_new_member_subscribes_at_once_while_the_projector_is_held_back() {
    let app = TestApp::start(|_| {}).await;
    let addr = app.addr;
    let (alice_token, alice) = signup(addr, "alice.heldback@example.com").await;
    let (bob_token, bob) = signup(addr, "bob.heldback@example.com").await;
    let (eve_token, _) = signup(addr, "eve.heldback@example.com").await;
    app.state.projections.stop().await;

    let room = RoomId(Uuid::now_v7());
    let open = RoomCommand::Open {
        room_id: room,
        client: alice,
        counselor: bob,
    };
    let ctx = Context::new(Actor::user(alice, Role::Client), chrono::Utc::now());
    app.state
        .rooms
        .execute(room.0, open, ctx, Metadata::default())
        .await
        .expect("open");
    let member = neulbi::projections::queries::is_member(
        &app.state.read,
        &room.to_string(),
        &alice.to_string(),
    )
    .await
    .expect("query");
    assert!(!member, "the read model must not know the room yet");

    for (token, id) in [(&alice_token, "a"), (&bob_token, "b")] {
        let mut ws = Client::connect(addr, token).await;
        let answer = ws.subscribe(room, id).await;
        assert_eq!(answer.command, Command::Receipt, "first try: {answer:?}");
    }
    let mut eve_ws = Client::connect(addr, &eve_token).await;
    let answer = eve_ws.subscribe(room, "e").await;
    assert_eq!(answer.command, Command::Error, "{answer:?}");
    app.stop().await;
}
