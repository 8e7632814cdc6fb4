//! The read-model API for a signed-in person, black-box over HTTP: my rooms with unread
//! counts, a room's history (members only), my calls, and the export of my own data —
//! which after erasure no longer holds what I wrote.

use crate::support;

use crate::support::app::TestApp;
use crate::support::http::{get, request};
use neulbi::store::Metadata;
use neulbi_domain::chat_room::RoomCommand;
use neulbi_domain::{Actor, Context, MessageId, Role, UserId};
use serde_json::{Value, json};
use std::time::Duration;
use uuid::Uuid;

async fn authed(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    token: &str,
) -> support::http::Response {
    request(
        addr,
        method,
        path,
        &[("Authorization", &format!("Bearer {token}"))],
        "",
    )
    .await
}

/// Polls until `path` answers with at least `n` items (projection is asynchronous).
async fn items(addr: std::net::SocketAddr, path: &str, token: &str, n: usize) -> Value {
    for _ in 0..200 {
        let r = authed(addr, "GET", path, token).await;
        assert_eq!(r.status, 200, "{path}: {}", r.body);
        let v = r.json();
        if v["items"].as_array().is_some_and(|a| a.len() >= n) {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{path} never reached {n} items");
}

#[actix_rt::test]
async fn my_rooms_history_and_export_over_http() {
    let app = TestApp::start(|_| {}).await;
    let (addr, state) = (app.addr, app.state.clone());
    let client_person = app.client("client.read@example.com").await;
    let counselor_person = app.counselor("counselor.read@example.com").await;
    let outsider = app.client("outsider.read@example.com").await;
    let (client_token, client) = (client_person.token.clone(), client_person.id);
    let (counselor_token, counselor) = (counselor_person.token.clone(), counselor_person.id);
    let outsider_token = outsider.token;
    let room: Uuid = app
        .open_room(&client_person, &counselor_person)
        .await
        .parse()
        .expect("uuid");

    // Messages through the room actor (the STOMP path has tests of its own).
    let as_user = |u: UserId| Context::new(Actor::user(u, Role::Client), chrono::Utc::now());
    for (author, text) in [
        (client, "client-wrote-this"),
        (counselor, "counselor-wrote-this"),
        (client, "client-again"),
    ] {
        let post = RoomCommand::PostMessage {
            message_id: MessageId(Uuid::now_v7()),
            body: text.into(),
            client_message_id: None,
        };
        state
            .rooms
            .execute(room, post, as_user(author), Metadata::default())
            .await
            .expect("post");
    }

    let rooms = items(addr, "/users/me/rooms", &client_token, 1).await;
    for _ in 0..200 {
        let rooms = authed(addr, "GET", "/users/me/rooms", &client_token)
            .await
            .json();
        if rooms["items"][0]["message_count"] == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let rooms_now = authed(addr, "GET", "/users/me/rooms", &client_token)
        .await
        .json();
    assert_eq!(rooms_now["items"][0]["message_count"], 3, "{rooms}");
    assert_eq!(rooms_now["items"][0]["unread_count"], 1);
    assert_eq!(
        rooms_now["items"][0]["last_message_preview"],
        "client-again"
    );

    let path = format!("/rooms/{room}/messages?limit=2");
    let page = authed(addr, "GET", &path, &counselor_token).await;
    assert_eq!(page.status, 200, "{}", page.body);
    let page = page.json();
    assert_eq!(page["items"].as_array().map(Vec::len), Some(2));
    let cursor = page["next_cursor"].as_str().expect("cursor").to_owned();
    let older = authed(
        addr,
        "GET",
        &format!("/rooms/{room}/messages?before={cursor}"),
        &counselor_token,
    )
    .await
    .json();
    assert_eq!(older["items"][0]["body"], "client-wrote-this");

    // The room list names the other member, and carries their read marker.
    let mine = &rooms_now["items"][0];
    assert_eq!(mine["peer_id"], counselor.to_string());
    assert_eq!(mine["peer_nickname"], "counselor.read");
    assert_eq!(
        mine["peer_read_seq"], 0,
        "the counselor has read nothing yet"
    );
    let newest = page["items"][0]["message_id"]
        .as_str()
        .expect("id")
        .to_owned();
    let r = request(
        addr,
        "POST",
        &format!("/rooms/{room}/read"),
        &[
            ("Authorization", &format!("Bearer {counselor_token}")),
            ("Content-Type", "application/json"),
        ],
        &json!({ "up_to": newest }).to_string(),
    )
    .await;
    assert!(r.status < 300, "{}", r.body);
    let mut seen = Value::Null;
    for _ in 0..200 {
        seen = authed(addr, "GET", "/users/me/rooms", &client_token)
            .await
            .json();
        if seen["items"][0]["peer_read_seq"] == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(seen["items"][0]["peer_read_seq"], 3, "{seen}");
    let theirs = authed(addr, "GET", "/users/me/rooms", &counselor_token)
        .await
        .json();
    assert_eq!(theirs["items"][0]["peer_id"], client.to_string());
    assert_eq!(theirs["items"][0]["unread_count"], 0);

    // Outsiders, anonymous callers and bad input.
    assert_eq!(
        authed(addr, "GET", &path, &outsider_token).await.status,
        404
    );
    assert_eq!(get(addr, &path).await.status, 401);
    let bad = authed(addr, "GET", "/rooms/not-a-uuid/messages", &client_token).await;
    assert_eq!(
        (bad.status, bad.json()["error"]["code"].clone()),
        (400, json!("invalid_room_id"))
    );
    let bad = authed(
        addr,
        "GET",
        &format!("/rooms/{room}/messages?before=xyz"),
        &client_token,
    )
    .await;
    assert_eq!(
        (bad.status, bad.json()["error"]["code"].clone()),
        (400, json!("invalid_cursor"))
    );
    assert_eq!(
        authed(addr, "GET", "/users/me/calls", &client_token)
            .await
            .json()["items"],
        json!([])
    );

    // Export: my account, my words, not the counselor's.
    let export = authed(addr, "GET", "/users/me/export", &client_token).await;
    assert_eq!(export.status, 200);
    assert!(
        export
            .header("content-disposition")
            .is_some_and(|d| d.contains("attachment"))
    );
    let body = export.body.clone();
    assert!(
        body.contains("client-wrote-this") && body.contains("client-again"),
        "{body}"
    );
    assert!(!body.contains("counselor-wrote-this"), "only my own data");
    assert!(
        body.contains("client.read@example.com"),
        "account events are opened for their owner"
    );

    // After erasure the counselor's export still has their words; mine are gone from history.
    assert_eq!(
        authed(addr, "DELETE", "/users/me", &client_token)
            .await
            .status,
        204
    );
    for _ in 0..200 {
        let h = authed(
            addr,
            "GET",
            &format!("/rooms/{room}/messages"),
            &counselor_token,
        )
        .await
        .body;
        if !h.contains("client-wrote-this") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let history = authed(
        addr,
        "GET",
        &format!("/rooms/{room}/messages"),
        &counselor_token,
    )
    .await
    .body;
    assert!(
        !history.contains("client-wrote-this") && history.contains("counselor-wrote-this"),
        "{history}"
    );
    app.handle.stop(true).await;
}
