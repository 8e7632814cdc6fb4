//! Video calls, black-box over 127.0.0.1: a member of a room rings the other (a push on
//! `/user/queue/calls`), who accepts; both join over `/rtc`, get the server's offer, chat,
//! react and mute; a dropped participant rejoins within the grace period; hang-up ends the
//! call with its duration in the stream; the ring times out; and bad signaling input gets
//! typed errors while the call goes on.

use crate::support;

use crate::support::app::{Person, TestApp};
use crate::support::http::{post_json, request};
use crate::support::rtc::Rtc;
use crate::support::stomp::Client;
use neulbi::edge::stomp::frame::Command;
use serde_json::json;
use std::time::Duration;

async fn post(app: &TestApp, path: &str, who: &Person) -> support::http::Response {
    post_json(
        app.addr,
        path,
        &json!({}),
        &[("Authorization", &who.bearer())],
    )
    .await
}

/// A client, a counselor and their room.
async fn setup(app: &TestApp, tag: &str) -> (Person, Person, String) {
    let client = app.client(&format!("client.{tag}@example.com")).await;
    let counselor = app.counselor(&format!("counselor.{tag}@example.com")).await;
    let room = app.open_room(&client, &counselor).await;
    (client, counselor, room)
}

/// `who` starts a call in `room`; returns its id.
async fn start_call(app: &TestApp, room: &str, who: &Person) -> String {
    let r = post(app, &format!("/rooms/{room}/calls"), who).await;
    assert_eq!(r.status, 201, "{}", r.body);
    r.json()["call_id"].as_str().expect("call id").to_owned()
}

/// Both parties of an accepted call, joined over `/rtc` with the server's offer received.
async fn in_call(app: &TestApp, tag: &str) -> (Person, Person, String, Rtc, Rtc) {
    let (client, counselor, room) = setup(app, tag).await;
    let call = start_call(app, &room, &client).await;
    let r = post(app, &format!("/calls/{call}/accept"), &counselor).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let mut a = Rtc::connect(app.addr, &client.token).await;
    a.join(&call).await;
    a.expect("offer").await;
    let mut b = Rtc::connect(app.addr, &counselor.token).await;
    b.join(&call).await;
    b.expect("offer").await;
    (client, counselor, call, a, b)
}

#[actix_rt::test]
async fn a_call_rings_is_accepted_joined_and_hung_up_with_its_duration() {
    let app = TestApp::start(|_| {}).await;
    let (client, counselor, room) = setup(&app, "flow").await;
    let mut phone = Client::connect(app.addr, &counselor.token).await;
    let answer = phone
        .subscribe_with("/user/queue/calls", "calls", &[])
        .await;
    assert_eq!(answer.command, Command::Receipt, "{answer:?}");

    let call = start_call(&app, &room, &client).await;
    let ringing = phone.next_json().await;
    assert_eq!(ringing["type"], "ringing");
    assert_eq!(ringing["call_id"], call);
    assert_eq!(ringing["room_id"], room);
    assert_eq!(ringing["from"], client.id.to_string());

    let shown = request(
        app.addr,
        "GET",
        &format!("/calls/{call}"),
        &[("Authorization", &counselor.bearer())],
        "",
    )
    .await;
    assert_eq!(shown.status, 200, "{}", shown.body);
    assert_eq!(shown.json()["status"], "ringing");

    let r = post(&app, &format!("/calls/{call}/accept"), &counselor).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["status"], "accepted");
    assert_eq!(phone.next_json().await["type"], "accepted");

    let mut a = Rtc::connect(app.addr, &client.token).await;
    let joined = a.join(&call).await;
    assert_eq!(joined["call_id"], call);
    assert_eq!(joined["rejoined"], false);
    assert!(
        a.expect("offer").await["sdp"]
            .as_str()
            .expect("sdp")
            .starts_with("v=0")
    );
    let mut b = Rtc::connect(app.addr, &counselor.token).await;
    let joined = b.join(&call).await;
    assert_eq!(joined["participants"].as_array().map(Vec::len), Some(2));
    b.expect("offer").await;
    let seen = a
        .expect_where("counselor joined", |m| {
            m["type"] == "participant" && m["event"] == "joined"
        })
        .await;
    assert_eq!(seen["user_id"], counselor.id.to_string());

    // In-call chat, a reaction and a mute reach the other participant from the log.
    b.send(json!({"type": "chat", "body": "can you hear me?"}))
        .await;
    let chat = a.expect("chat").await;
    assert_eq!(chat["body"], "can you hear me?");
    assert_eq!(chat["user_id"], counselor.id.to_string());
    a.send(json!({"type": "emoji", "emoji": "👍"})).await;
    let emoji = b.expect("emoji").await;
    assert_eq!(emoji["emoji"], "👍");
    assert_eq!(emoji["user_id"], client.id.to_string());
    a.send(json!({"type": "media", "audio_muted": true, "video_off": false}))
        .await;
    let media = b.expect("media").await;
    assert_eq!(media["user_id"], client.id.to_string());
    assert_eq!(media["audio_muted"], true);

    tokio::time::sleep(Duration::from_millis(1100)).await;
    a.send(json!({"type": "hangup"})).await;
    let ended = b.expect("ended").await;
    assert_eq!(ended["reason"], "hangup");
    assert_eq!(
        a.expect("ended").await["reason"],
        "hangup",
        "the one who hung up hears it too"
    );
    assert_eq!(phone.next_json().await["type"], "ended");

    let events = app.call_events(&call).await;
    let types: Vec<&str> = events.iter().map(|(t, _)| t.as_str()).collect();
    for expected in [
        "Requested",
        "Accepted",
        "ParticipantJoined",
        "MediaNodeAssigned",
        "InCallMessagePosted",
        "EmojiSent",
        "MediaStateChanged",
        "Ended",
    ] {
        assert!(types.contains(&expected), "{expected} in {types:?}");
    }
    let (_, ended) = events.last().expect("events");
    assert!(
        ended["duration_secs"].as_u64().expect("duration") >= 1,
        "{ended}"
    );

    // The room's call entries list it, with its duration, once the projection caught up.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let list = request(
            app.addr,
            "GET",
            &format!("/rooms/{room}/calls"),
            &[("Authorization", &client.bearer())],
            "",
        )
        .await;
        assert_eq!(list.status, 200, "{}", list.body);
        let items = list.json()["items"].clone();
        if items[0]["status"] == "ended" {
            assert_eq!(items[0]["call_id"], call);
            assert_eq!(items[0]["end_reason"], "hangup");
            assert!(items[0]["duration_secs"].as_i64().expect("duration") >= 1);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never listed: {items}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    app.stop().await;
}

#[actix_rt::test]
async fn an_unanswered_call_times_out_and_a_declined_one_is_over() {
    let app = TestApp::start(|c| c.calls.ring_timeout_secs = 1).await;
    let (client, counselor, room) = setup(&app, "ring").await;
    let mut phone = Client::connect(app.addr, &counselor.token).await;
    phone
        .subscribe_with("/user/queue/calls", "calls", &[])
        .await;
    let call = start_call(&app, &room, &client).await;
    assert_eq!(phone.next_json().await["type"], "ringing");
    let ended = phone.next_json().await;
    assert_eq!(ended["type"], "ended");
    assert_eq!(ended["reason"], "no_answer");
    let r = post(&app, &format!("/calls/{call}/accept"), &counselor).await;
    assert_eq!(r.status, 409, "too late to accept: {}", r.body);

    let second = start_call(&app, &room, &client).await;
    assert_eq!(phone.next_json().await["type"], "ringing");
    let r = post(&app, &format!("/calls/{second}/decline"), &counselor).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["status"], "declined");
    assert_eq!(phone.next_json().await["type"], "declined");
    app.stop().await;
}

#[actix_rt::test]
async fn only_members_start_calls_and_only_parties_join_them() {
    let app = TestApp::start(|_| {}).await;
    let (client, counselor, room) = setup(&app, "rules").await;
    let outsider = app.client("outsider.rules@example.com").await;
    let r = post(&app, &format!("/rooms/{room}/calls"), &outsider).await;
    assert_eq!(r.status, 403, "{}", r.body);
    let call = start_call(&app, &room, &client).await;
    let r = post(&app, &format!("/calls/{call}/accept"), &client).await;
    assert_eq!(r.status, 403, "the requester cannot accept: {}", r.body);
    let shown = request(
        app.addr,
        "GET",
        &format!("/calls/{call}"),
        &[("Authorization", &outsider.bearer())],
        "",
    )
    .await;
    assert_eq!(shown.status, 404, "{}", shown.body);

    // Joining before the call is accepted, or as an outsider, is a typed error.
    let mut early = Rtc::connect(app.addr, &client.token).await;
    early.send(json!({"type": "join", "call_id": call})).await;
    assert_eq!(early.expect_error().await, "conflict");
    let mut stranger = Rtc::connect(app.addr, &outsider.token).await;
    stranger
        .send(json!({"type": "join", "call_id": call}))
        .await;
    assert_eq!(stranger.expect_error().await, "not_found");
    stranger
        .send(json!({"type": "join", "call_id": uuid::Uuid::now_v7()}))
        .await;
    assert_eq!(stranger.expect_error().await, "not_found");
    let _ = counselor;
    app.stop().await;
}

#[actix_rt::test]
async fn bad_signaling_input_gets_typed_errors_and_the_call_goes_on() {
    let app = TestApp::start(|c| {
        c.calls.messages_per_sec = 20;
        c.calls.burst = 40;
    })
    .await;
    let (_client, counselor, _call, mut a, mut b) = in_call(&app, "bad").await;
    let cases = [
        ("{not json".to_owned(), "malformed"),
        (json!({"type": "teleport"}).to_string(), "unknown_type"),
        (json!({"type": "candidate"}).to_string(), "invalid"),
        (
            json!({"v": 9, "type": "ping"}).to_string(),
            "unsupported_version",
        ),
        (
            json!({"type": "offer", "sdp": "v=0"}).to_string(),
            "server_is_offerer",
        ),
        (
            json!({"type": "answer", "sdp": "garbage"}).to_string(),
            "invalid_sdp",
        ),
        (
            json!({"type": "join", "call_id": uuid::Uuid::now_v7()}).to_string(),
            "already_in_call",
        ),
        (
            json!({"type": "emoji", "emoji": "💩"}).to_string(),
            "invalid",
        ),
        (
            json!({"type": "chat", "body": "   "}).to_string(),
            "invalid",
        ),
        (
            json!({"type": "chat", "body": "x".repeat(200 * 1024)}).to_string(),
            "too_large",
        ),
    ];
    for (text, code) in cases {
        a.send_text(text.clone()).await;
        let got = a.expect_error().await;
        assert_eq!(got, code, "for {}", &text[..text.len().min(80)]);
    }
    // The call went on: the other participant still hears from this one.
    a.send(json!({"type": "chat", "body": "still here"})).await;
    assert_eq!(b.expect("chat").await["body"], "still here");

    // A flood is rate limited, then the connection is closed; the call goes on for b.
    let mut limited = false;
    for _ in 0..300 {
        a.send(json!({"type": "ping"})).await;
    }
    while let Some(m) = a.next().await {
        if m["type"] == "error" && m["code"] == "rate_limited" {
            limited = true;
        }
    }
    assert!(limited, "a flood is refused with rate_limited");
    let dropped = b
        .expect_where("a dropped", |m| {
            m["type"] == "participant" && m["event"] == "dropped"
        })
        .await;
    assert_ne!(dropped["user_id"], counselor.id.to_string());
    b.send(json!({"type": "ping"})).await;
    b.expect("pong").await;
    app.stop().await;
}

#[actix_rt::test]
async fn signaling_needs_a_valid_token_first() {
    let app = TestApp::start(|c| c.calls.auth_timeout_secs = 1).await;
    let mut forged = Rtc::open(app.addr).await;
    forged
        .send(json!({"type": "auth", "token": "eyJhbGciOiJFZERTQSJ9.e30.AAAA"}))
        .await;
    let e = forged.expect("error").await;
    assert_eq!(e["code"], "unauthorized");
    assert_eq!(e["fatal"], true);
    assert!(forged.next().await.is_none(), "closed after a forged token");

    let mut first = Rtc::open(app.addr).await;
    first
        .send(json!({"type": "join", "call_id": uuid::Uuid::now_v7()}))
        .await;
    assert_eq!(first.expect_error().await, "unauthenticated");
    assert!(first.next().await.is_none());

    let mut silent = Rtc::open(app.addr).await;
    assert_eq!(silent.expect_error().await, "auth_timeout");
    assert!(silent.next().await.is_none());
    app.stop().await;
}

#[actix_rt::test]
async fn a_dropped_participant_rejoins_within_the_grace_period() {
    let app = TestApp::start(|c| c.calls.grace_secs = 30).await;
    let (_client, counselor, call, mut a, b) = in_call(&app, "rejoin").await;
    drop(b);
    let dropped = a
        .expect_where("dropped", |m| {
            m["type"] == "participant" && m["event"] == "dropped"
        })
        .await;
    assert_eq!(dropped["user_id"], counselor.id.to_string());
    let mut again = Rtc::connect(app.addr, &counselor.token).await;
    let joined = again.join(&call).await;
    assert_eq!(joined["rejoined"], true);
    again.expect("offer").await;
    a.expect_where("rejoined", |m| {
        m["type"] == "participant" && m["event"] == "rejoined"
    })
    .await;
    let types: Vec<String> = app
        .call_events(&call)
        .await
        .into_iter()
        .map(|(t, _)| t)
        .collect();
    assert!(
        types.contains(&"ParticipantDropped".to_owned()),
        "{types:?}"
    );
    assert!(
        types.contains(&"ParticipantRejoined".to_owned()),
        "{types:?}"
    );
    app.stop().await;
}

#[actix_rt::test]
async fn a_dropped_participant_who_does_not_return_ends_a_call_left_empty() {
    let app = TestApp::start(|c| c.calls.grace_secs = 1).await;
    let (_client, _counselor, call, mut a, b) = in_call(&app, "grace").await;
    a.send(json!({"type": "leave"})).await;
    drop(b);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let events = app.call_events(&call).await;
        if let Some((_, ended)) = events.iter().find(|(t, _)| t == "Ended") {
            assert_eq!(ended["reason"], "dropped");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never ended: {events:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    app.stop().await;
}

#[actix_rt::test]
async fn a_join_on_the_wrong_node_is_redirected_to_the_media_node() {
    let app = TestApp::start(|c| c.calls.node = "node-a".into()).await;
    let (client, counselor, room) = setup(&app, "redirect").await;
    let call = start_call(&app, &room, &client).await;
    let r = post(&app, &format!("/calls/{call}/accept"), &counselor).await;
    assert_eq!(r.status, 200, "{}", r.body);
    // Another node took the call's media first.
    let ctx = neulbi_domain::Context::new(neulbi_domain::Actor::system(), chrono::Utc::now());
    app.state
        .calls
        .execute(
            call.parse().expect("uuid"),
            neulbi_domain::call_session::CallCommand::AssignMediaNode {
                node: "node-b".into(),
                url: None,
            },
            ctx,
            neulbi::store::Metadata::default(),
        )
        .await
        .expect("assign");
    let mut rtc = Rtc::connect(app.addr, &client.token).await;
    rtc.send(json!({"type": "join", "call_id": call})).await;
    let redirect = rtc.expect("redirect").await;
    assert_eq!(redirect["node"], "node-b");
    // Node B recorded no URL of its own: the client is told where, not how to get there.
    assert!(redirect["url"].is_null(), "{redirect}");
    let types: Vec<String> = app
        .call_events(&call)
        .await
        .into_iter()
        .map(|(t, _)| t)
        .collect();
    assert!(
        !types.contains(&"ParticipantJoined".to_owned()),
        "nobody joined here: {types:?}"
    );
    app.stop().await;
}

#[actix_rt::test]
async fn a_taken_media_or_turn_port_stops_the_start_and_names_the_setting() {
    let taken = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr");
    let dir = tempfile::tempdir().expect("dir");
    let mut config = neulbi::config::Config {
        listen: "127.0.0.1:0".parse().expect("addr"),
        data_dir: dir.path().to_owned(),
        ..neulbi::config::Config::default()
    };
    config.calls.media_udp = vec![addr];
    let error = match neulbi::startup::Application::build(&config).await {
        Ok(_) => panic!("started on a taken media port"),
        Err(e) => format!("{e:#}"),
    };
    assert!(error.contains("NEULBI_MEDIA_UDP"), "{error}");
    assert!(error.contains(&addr.to_string()), "{error}");

    let mut config = neulbi::config::Config {
        listen: "127.0.0.1:0".parse().expect("addr"),
        data_dir: dir.path().to_owned(),
        ..neulbi::config::Config::default()
    };
    config.media.turn.secret = "s".into();
    config.media.turn.listen_udp = Some(addr);
    config.media.turn.listen_tcp = None;
    let error = match neulbi::startup::Application::build(&config).await {
        Ok(_) => panic!("started on a taken TURN port"),
        Err(e) => format!("{e:#}"),
    };
    assert!(error.contains("NEULBI_TURN_LISTEN_UDP"), "{error}");
    assert!(error.contains(&addr.to_string()), "{error}");
}
