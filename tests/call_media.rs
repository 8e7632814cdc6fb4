//! Calls with real media, end to end over 127.0.0.1: `webrtc`-crate peers stand in for
//! browsers, sign in on `/rtc`, answer the server's offers and send synthetic Opus and VP8;
//! each must receive the others' with the right codec and payload. Also: mute reaches the
//! others, an ICE restart keeps media flowing, a vanished participant rejoins within the
//! grace period on the same tracks, hang-up records the duration, and media goes through the
//! embedded TURN server and through a real coturn when ICE is relay-only.

use crate::support;

use crate::support::app::{Person, TestApp};
use crate::support::http::post_json;
use crate::support::peer::{Browser, eventually};
use neulbi::store::Metadata;
use neulbi_domain::call_session::{CallCommand, CallPolicy};
use neulbi_domain::{Actor, CallId, Context, Role, RoomId};
use serde_json::json;
use std::sync::atomic::Ordering;
use std::time::Duration;

async fn accept(app: &TestApp, call: &str, who: &Person) {
    let r = post_json(
        app.addr,
        &format!("/calls/{call}/accept"),
        &json!({}),
        &[("Authorization", &who.bearer())],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
}

/// A client and a counselor with an accepted call between them.
async fn accepted_call(app: &TestApp, tag: &str) -> (Person, Person, String) {
    let client = app.client(&format!("client.{tag}@example.com")).await;
    let counselor = app.counselor(&format!("counselor.{tag}@example.com")).await;
    let room = app.open_room(&client, &counselor).await;
    let r = post_json(
        app.addr,
        &format!("/rooms/{room}/calls"),
        &json!({}),
        &[("Authorization", &client.bearer())],
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let call = r.json()["call_id"].as_str().expect("call").to_owned();
    accept(app, &call, &counselor).await;
    (client, counselor, call)
}

#[actix_rt::test]
async fn two_browsers_see_and_hear_each_other_and_hang_up_with_the_duration() {
    let app = TestApp::start(|_| {}).await;
    let (client, counselor, call) = accepted_call(&app, "media2").await;
    let a = Browser::join(app.addr, &client.token, &call, false).await;
    let b = Browser::join(app.addr, &counselor.token, &call, false).await;
    a.receives(b.id, 10, 20).await;
    b.receives(a.id, 10, 20).await;

    // A candidate for a media section that does not exist is refused; media goes on.
    a.send(json!({
        "type": "candidate",
        "candidate": "candidate:1 1 udp 2130706431 127.0.0.1 9 typ host",
        "sdp_mid": "99",
        "sdp_mline_index": 99
    }))
    .await;
    let error = a.wait_message("an error", |m| m["type"] == "error").await;
    assert_eq!(error["re"], "candidate", "{error}");

    b.send(json!({"type": "media", "audio_muted": true, "video_off": true}))
        .await;
    let media = a
        .wait_message("b's mute", |m| {
            m["type"] == "media" && m["audio_muted"] == true
        })
        .await;
    assert_eq!(media["user_id"], counselor.id.to_string());
    assert_eq!(media["video_off"], true);
    a.receives(b.id, 5, 10).await;

    tokio::time::sleep(Duration::from_millis(1000)).await;
    a.send(json!({"type": "hangup"})).await;
    let ended = b.wait_message("ended", |m| m["type"] == "ended").await;
    assert_eq!(ended["reason"], "hangup");
    let events = app.call_events(&call).await;
    let (last, data) = events.last().expect("events");
    assert_eq!(last, "Ended");
    assert!(
        data["duration_secs"].as_u64().expect("duration") >= 1,
        "{data}"
    );
    a.vanish().await;
    b.vanish().await;
    app.stop().await;
}

#[actix_rt::test]
async fn three_browsers_each_receive_the_two_others() {
    let app = TestApp::start(|_| {}).await;
    let a_person = app.client("a.media3@example.com").await;
    let b_person = app.counselor("b.media3@example.com").await;
    let c_person = app.client("c.media3@example.com").await;
    // Group calls need a room of three, which the chat rooms do not have yet: the call
    // actor is told the members directly, as the room actor would.
    let call = CallId::from_uuid(uuid::Uuid::now_v7());
    let ctx = Context::new(Actor::user(a_person.id, Role::Client), chrono::Utc::now());
    app.state
        .calls
        .execute(
            call.as_uuid(),
            CallCommand::Request {
                call_id: call,
                room_id: RoomId::from_uuid(uuid::Uuid::now_v7()),
                invitees: vec![b_person.id, c_person.id],
                room_members: vec![a_person.id, b_person.id, c_person.id],
                policy: CallPolicy::default(),
            },
            ctx,
            Metadata::default(),
        )
        .await
        .expect("request");
    let call = call.to_string();
    accept(&app, &call, &b_person).await;
    accept(&app, &call, &c_person).await;
    let a = Browser::join(app.addr, &a_person.token, &call, false).await;
    let b = Browser::join(app.addr, &b_person.token, &call, false).await;
    let c = Browser::join(app.addr, &c_person.token, &call, false).await;
    for (to, from) in [(&a, &b), (&a, &c), (&b, &a), (&b, &c), (&c, &a), (&c, &b)] {
        to.receives(from.id, 10, 20).await;
    }
    for browser in [a, b, c] {
        browser.vanish().await;
    }
    app.stop().await;
}

#[actix_rt::test]
async fn an_ice_restart_keeps_media_flowing() {
    let app = TestApp::start(|_| {}).await;
    let (client, counselor, call) = accepted_call(&app, "restart").await;
    let a = Browser::join(app.addr, &client.token, &call, false).await;
    let b = Browser::join(app.addr, &counselor.token, &call, false).await;
    a.receives(b.id, 10, 20).await;
    let answers = a.seen.answers_sent.load(Ordering::SeqCst);
    a.send(json!({"type": "restart_ice"})).await;
    eventually("a answers the restart offer", || {
        a.seen.answers_sent.load(Ordering::SeqCst) > answers
    })
    .await;
    a.receives(b.id, 20, 40).await;
    b.receives(a.id, 20, 40).await;
    a.vanish().await;
    b.vanish().await;
    app.stop().await;
}

#[actix_rt::test]
async fn a_vanished_browser_rejoins_within_the_grace_period_on_the_same_tracks() {
    let app = TestApp::start(|c| c.calls.grace_secs = 60).await;
    let (client, counselor, call) = accepted_call(&app, "rejoin2").await;
    let a = Browser::join(app.addr, &client.token, &call, false).await;
    let b = Browser::join(app.addr, &counselor.token, &call, false).await;
    a.receives(b.id, 10, 20).await;
    let tracks_before = a.seen.on_track_calls.load(Ordering::SeqCst);
    let b_id = b.id;
    b.vanish().await;
    a.wait_message("b dropped", |m| {
        m["type"] == "participant" && m["event"] == "dropped"
    })
    .await;
    let b = Browser::join(app.addr, &counselor.token, &call, false).await;
    assert_eq!(b.joined["rejoined"], true, "{}", b.joined);
    // a keeps its video element: more media from b on the same remote tracks.
    a.receives(b_id, 20, 40).await;
    assert_eq!(
        a.seen.on_track_calls.load(Ordering::SeqCst),
        tracks_before,
        "no new remote tracks after the rejoin"
    );
    b.receives(a.id, 10, 20).await;
    a.vanish().await;
    b.vanish().await;
    app.stop().await;
}

/// The embedded TURN server on loopback with a test secret.
fn embedded_turn(c: &mut neulbi::config::Config) {
    let loopback = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    c.media.turn.listen_udp = Some(loopback);
    c.media.turn.listen_tcp = Some(loopback);
    c.media.turn.relay_ip = loopback.ip();
    c.media.turn.secret = "call-media-test-secret".into();
    c.media.turn.realm = "neulbi.test".into();
}

fn all_relayed(browser: &Browser) -> bool {
    let candidates = browser.seen.local_candidates.lock().expect("lock").clone();
    !candidates.is_empty() && candidates.iter().all(|c| c.contains("typ relay"))
}

#[actix_rt::test]
async fn relay_only_media_goes_through_the_embedded_turn_server() {
    let app = TestApp::start(embedded_turn).await;
    let (client, counselor, call) = accepted_call(&app, "relay").await;
    let a = Browser::join(app.addr, &client.token, &call, true).await;
    let b = Browser::join(app.addr, &counselor.token, &call, true).await;
    a.receives(b.id, 10, 20).await;
    b.receives(a.id, 10, 20).await;
    assert!(all_relayed(&a) && all_relayed(&b), "only relay candidates");
    a.vanish().await;
    b.vanish().await;
    app.stop().await;
}

#[actix_rt::test]
async fn relay_only_media_goes_through_an_external_coturn() {
    let dir = tempfile::tempdir().expect("temp dir");
    let secret = "coturn-call-secret";
    let mut coturn = support::coturn::start(dir.path(), secret, "neulbi.test");
    support::coturn::wait_ready(&mut coturn, dir.path()).await;
    let port = coturn.port;
    let app = TestApp::start(move |c| {
        c.media.turn.external = Some(neulbi::media::turn::ExternalTurn {
            urls: vec![format!("turn:127.0.0.1:{port}?transport=udp")],
            secret: secret.into(),
        });
    })
    .await;
    let (client, counselor, call) = accepted_call(&app, "coturn").await;
    let a = Browser::join(app.addr, &client.token, &call, true).await;
    let b = Browser::join(app.addr, &counselor.token, &call, true).await;
    a.receives(b.id, 10, 20).await;
    b.receives(a.id, 10, 20).await;
    assert!(all_relayed(&a) && all_relayed(&b), "only relay candidates");
    let logs = support::coturn::logs(dir.path());
    assert!(
        logs.contains("ALLOCATE"),
        "coturn allocated relays:\n{logs}"
    );
    a.vanish().await;
    b.vanish().await;
    app.stop().await;
}

#[actix_rt::test]
async fn a_silent_publisher_is_reported_stalled_to_the_others_and_in_the_log() {
    let app = TestApp::start(|c| c.calls.stall_secs = 1).await;
    let (client, counselor, call) = accepted_call(&app, "stall").await;
    let a = Browser::join(app.addr, &client.token, &call, false).await;
    let b = Browser::join(app.addr, &counselor.token, &call, false).await;
    a.receives(b.id, 10, 20).await;
    b.sending.store(false, Ordering::SeqCst);
    let stalled = a
        .wait_message("b stalled", |m| m["type"] == "media_stalled")
        .await;
    assert_eq!(stalled["user_id"], counselor.id.to_string());
    b.sending.store(true, Ordering::SeqCst);
    a.wait_message("b resumed", |m| m["type"] == "media_resumed")
        .await;
    let types: Vec<String> = app
        .call_events(&call)
        .await
        .into_iter()
        .map(|(t, _)| t)
        .collect();
    assert!(types.contains(&"MediaStalled".to_owned()), "{types:?}");
    assert!(types.contains(&"MediaResumed".to_owned()), "{types:?}");
    a.vanish().await;
    b.vanish().await;
    app.stop().await;
}
