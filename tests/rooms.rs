//! Rooms over HTTP, black-box on 127.0.0.1: a client opens a room with a counselor (once, even
//! when asked twice), members mark messages read and close the room, and everyone else gets
//! the protocol's own errors with nothing appended.

use crate::support;

use crate::support::app::{Person, TestApp};
use crate::support::http::{post_json, request};
use neulbi::store::Direction;
use neulbi_domain::{StreamKind, StreamName};
use serde_json::json;
use std::time::Duration;
use uuid::Uuid;

async fn post(
    app: &TestApp,
    path: &str,
    who: &Person,
    body: serde_json::Value,
) -> support::http::Response {
    post_json(app.addr, path, &body, &[("Authorization", &who.bearer())]).await
}

async fn room_events(app: &TestApp, room: &str) -> Vec<String> {
    let stream = StreamName::new(StreamKind::Room, room.parse().expect("uuid"));
    app.state
        .store
        .read_stream(&stream, 0, Direction::Forward, 100)
        .await
        .expect("read")
        .into_iter()
        .map(|e| e.event_type.clone())
        .collect()
}

#[actix_rt::test]
async fn a_client_opens_one_room_with_a_counselor() {
    let app = TestApp::start(|_| {}).await;
    let client = app.client("client.rooms@example.com").await;
    let counselor = app.counselor("counselor.rooms@example.com").await;
    let other = app.client("other.rooms@example.com").await;

    let r = post(
        &app,
        "/rooms",
        &client,
        json!({ "counselor_id": counselor.id.to_string() }),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let room = r.json()["room_id"].as_str().expect("room id").to_owned();
    assert_eq!(
        r.header("Location").as_deref(),
        Some(format!("/rooms/{room}").as_str())
    );
    assert_eq!(r.json()["counselor_id"], json!(counselor.id.to_string()));
    assert_eq!(room_events(&app, &room).await, ["Opened"]);

    // Asking again once the read model knows the room answers with the same room.
    app.wait_member(&room, &client).await;
    let again = post(
        &app,
        "/rooms",
        &client,
        json!({ "counselor_id": counselor.id.to_string() }),
    )
    .await;
    assert_eq!(again.status, 200, "{}", again.body);
    assert_eq!(again.json()["room_id"], json!(room));

    // The room shows up in both members' lists.
    app.wait_member(&room, &counselor).await;
    for who in [&client, &counselor] {
        let r = request(
            app.addr,
            "GET",
            "/users/me/rooms",
            &[("Authorization", &who.bearer())],
            "",
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.json()["items"][0]["room_id"], json!(room));
    }

    // Refusals: not a counselor, a counselor opening, bad ids, unknown fields, no token.
    let cases = [
        (
            &client,
            json!({ "counselor_id": other.id.to_string() }),
            404,
            "not_found",
        ),
        (
            &client,
            json!({ "counselor_id": Uuid::now_v7().to_string() }),
            404,
            "not_found",
        ),
        (
            &counselor,
            json!({ "counselor_id": client.id.to_string() }),
            403,
            "forbidden",
        ),
        (
            &client,
            json!({ "counselor_id": "nope" }),
            400,
            "invalid_counselor_id",
        ),
        (
            &client,
            json!({ "counselor": counselor.id.to_string() }),
            400,
            "invalid_body",
        ),
    ];
    for (who, body, status, code) in cases {
        let r = post(&app, "/rooms", who, body.clone()).await;
        assert_eq!(r.status, status, "{body}: {}", r.body);
        assert_eq!(r.json()["error"]["code"], json!(code), "{body}: {}", r.body);
    }
    let r = post_json(
        app.addr,
        "/rooms",
        &json!({ "counselor_id": counselor.id.to_string() }),
        &[],
    )
    .await;
    assert_eq!(r.status, 401, "{}", r.body);
    app.handle.stop(true).await;
}

#[actix_rt::test]
async fn members_mark_read_and_close_others_are_refused() {
    let app = TestApp::start(|_| {}).await;
    let client = app.client("client.read@example.com").await;
    let counselor = app.counselor("counselor.read@example.com").await;
    let outsider = app.client("outsider.read@example.com").await;
    let room = app.open_room(&client, &counselor).await;

    // A message to read, posted through the room actor as the counselor.
    let message = Uuid::now_v7();
    app.state
        .rooms
        .execute(
            room.parse().expect("uuid"),
            neulbi_domain::chat_room::RoomCommand::PostMessage {
                message_id: neulbi_domain::MessageId::from_uuid(message),
                body: "어떻게 지내세요?".into(),
                client_message_id: None,
            },
            support::scenario::as_user(counselor.id, neulbi_domain::Role::Counselor),
            neulbi::store::Metadata::default(),
        )
        .await
        .expect("post");

    let read = format!("/rooms/{room}/read");
    let r = post(
        &app,
        &read,
        &outsider,
        json!({ "up_to": message.to_string() }),
    )
    .await;
    assert_eq!(r.status, 403, "{}", r.body);
    let r = post(
        &app,
        &read,
        &client,
        json!({ "up_to": Uuid::now_v7().to_string() }),
    )
    .await;
    assert_eq!(r.status, 422, "unknown message: {}", r.body);
    let r = post(&app, &read, &client, json!({ "up_to": "x" })).await;
    assert_eq!(r.status, 400, "{}", r.body);
    let r = post(
        &app,
        &format!("/rooms/{}/read", Uuid::now_v7()),
        &client,
        json!({ "up_to": message.to_string() }),
    )
    .await;
    assert_eq!(r.status, 404, "no such room: {}", r.body);
    assert_eq!(
        room_events(&app, &room).await,
        ["Opened", "MessagePosted"],
        "refusals append nothing"
    );

    let r = post(
        &app,
        &read,
        &client,
        json!({ "up_to": message.to_string() }),
    )
    .await;
    assert_eq!(r.status, 204, "{}", r.body);
    // Reading the same message again changes nothing.
    let r = post(
        &app,
        &read,
        &client,
        json!({ "up_to": message.to_string() }),
    )
    .await;
    assert_eq!(r.status, 204, "{}", r.body);
    assert_eq!(
        room_events(&app, &room).await,
        ["Opened", "MessagePosted", "MessageRead"]
    );

    // The unread count in the client's list follows the read marker.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let r = request(
            app.addr,
            "GET",
            "/users/me/rooms",
            &[("Authorization", &client.bearer())],
            "",
        )
        .await;
        let item = &r.json()["items"][0];
        if item["message_count"] == json!(1) && item["unread_count"] == json!(0) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "read model never caught up: {item}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let close = format!("/rooms/{room}/close");
    let r = post(&app, &close, &outsider, json!({})).await;
    assert_eq!(r.status, 403, "{}", r.body);
    for _ in 0..2 {
        let r = request(
            app.addr,
            "POST",
            &close,
            &[("Authorization", &counselor.bearer())],
            "",
        )
        .await;
        assert_eq!(r.status, 204, "closing twice is fine: {}", r.body);
    }
    assert_eq!(
        room_events(&app, &room).await,
        ["Opened", "MessagePosted", "MessageRead", "Closed"]
    );
    app.handle.stop(true).await;
}
