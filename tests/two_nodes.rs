//! Two nodes, each its own server, on one PostgreSQL: chat posted on one reaches subscribers on
//! the other, commands to one room racing on both nodes leave one gap-free stream in which
//! every acknowledged message appears exactly once, and a call's signaling on the node without
//! its media is redirected to the node that has it.

mod support;

use neulbi::actors::ActorError;
use neulbi::store::{Direction, Metadata};
use neulbi_domain::chat_room::RoomCommand;
use neulbi_domain::{MessageId, Role, RoomId, StreamKind, StreamName};
use std::collections::HashSet;
use std::time::Duration;
use support::app::{TestApp, shared_kek, shared_node};
use support::scenario::as_user;
use support::stomp::Client;

#[actix_rt::test]
async fn a_message_posted_on_one_node_reaches_subscribers_on_the_other() {
    let pg = support::pg::TempPostgres::start();
    let keys = tempfile::tempdir().expect("dir");
    let kek = shared_kek(keys.path());
    let a = TestApp::start(shared_node(&pg.url(), &kek, "node-a")).await;
    let b = TestApp::start(shared_node(&pg.url(), &kek, "node-b")).await;
    let client = a.client("two.nodes.client@example.com").await;
    let counselor = a.counselor("two.nodes.counselor@example.com").await;
    let room: RoomId = a
        .open_room(&client, &counselor)
        .await
        .parse()
        .expect("room id");
    b.wait_member(&room.to_string(), &counselor).await;

    let mut on_a = Client::connect(a.addr, &counselor.token).await;
    let answer = on_a.subscribe(room, "a1").await;
    assert_eq!(answer.command.to_string(), "RECEIPT", "{answer:?}");
    let mut on_b = Client::connect(b.addr, &client.token).await;
    let answer = on_b.subscribe(room, "b1").await;
    assert_eq!(answer.command.to_string(), "RECEIPT", "{answer:?}");
    for i in 0..3 {
        on_b.post(room, &format!("across nodes {i}")).await;
        let got = tokio::time::timeout(Duration::from_secs(10), on_a.next_json())
            .await
            .expect("delivered on the other node in time");
        assert_eq!(got["body"], format!("across nodes {i}"), "{got}");
    }
    a.stop().await;
    b.stop().await;
}

#[actix_rt::test]
async fn commands_racing_on_both_nodes_leave_one_gap_free_stream() {
    let pg = support::pg::TempPostgres::start();
    let keys = tempfile::tempdir().expect("dir");
    let kek = shared_kek(keys.path());
    let a = TestApp::start(shared_node(&pg.url(), &kek, "node-a")).await;
    let b = TestApp::start(shared_node(&pg.url(), &kek, "node-b")).await;
    let client = a.client("racing.client@example.com").await;
    let counselor = a.counselor("racing.counselor@example.com").await;
    let room = a.open_room_direct(client.id, counselor.id).await;

    // 2 × 20 posts at once, half through each node's actor for the same room. A post that
    // loses a race twice in a row comes back as a conflict; the client retries it with the
    // same client message id, as the web client does.
    const EACH: usize = 20;
    let post = |app: &TestApp, n: usize, node: &'static str| {
        let state = app.state.clone();
        let author = client.id;
        async move {
            let key = format!("{node}-{n}");
            for _ in 0..20 {
                let command = RoomCommand::PostMessage {
                    message_id: MessageId::from_uuid(uuid::Uuid::now_v7()),
                    body: format!("race {key}"),
                    client_message_id: Some(key.clone()),
                };
                match state
                    .rooms
                    .execute(
                        room.as_uuid(),
                        command,
                        as_user(author, Role::Client),
                        Metadata::default(),
                    )
                    .await
                {
                    Ok(_) => return key,
                    Err(ActorError::Conflict(_) | ActorError::Busy) => {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    Err(e) => panic!("post {key}: {e}"),
                }
            }
            panic!("post {key} never got through");
        }
    };
    let mut racing = Vec::new();
    for n in 0..EACH {
        racing.push(actix_rt::spawn(post(&a, n, "a")));
        racing.push(actix_rt::spawn(post(&b, n, "b")));
    }
    let mut acknowledged = HashSet::new();
    for r in racing {
        acknowledged.insert(r.await.expect("join"));
    }
    assert_eq!(acknowledged.len(), 2 * EACH);

    let stream = StreamName::new(StreamKind::Room, room.as_uuid());
    let events = a
        .state
        .store
        .read_stream(&stream, 0, Direction::Forward, 10_000)
        .await
        .expect("read the room");
    // One stream, versions 0, 1, 2, ... with no gap and no duplicate.
    for (i, e) in events.iter().enumerate() {
        assert_eq!(
            e.version, i as u64,
            "gap or duplicate at {i}: {}",
            e.event_type
        );
    }
    let posted: Vec<String> = events
        .iter()
        .filter(|e| e.event_type == "MessagePosted")
        .map(|e| {
            e.data["client_message_id"]
                .as_str()
                .expect("client message id")
                .to_owned()
        })
        .collect();
    assert_eq!(
        posted.len(),
        2 * EACH,
        "each acknowledged post exactly once"
    );
    assert_eq!(posted.iter().collect::<HashSet<_>>().len(), 2 * EACH);
    assert!(acknowledged.iter().all(|k| posted.contains(k)));
    a.stop().await;
    b.stop().await;
}

#[actix_rt::test]
async fn joining_a_call_on_the_node_without_its_media_is_redirected() {
    let pg = support::pg::TempPostgres::start();
    let keys = tempfile::tempdir().expect("dir");
    let kek = shared_kek(keys.path());
    let a = TestApp::start(shared_node(&pg.url(), &kek, "node-a")).await;
    let b = TestApp::start(shared_node(&pg.url(), &kek, "node-b")).await;
    let client = a.client("call.two.nodes.client@example.com").await;
    let counselor = a.counselor("call.two.nodes.counselor@example.com").await;
    let room = a.open_room(&client, &counselor).await;
    let post = |app: &TestApp, path: String, who: &support::app::Person| {
        let (addr, bearer) = (app.addr, who.bearer());
        async move {
            support::http::post_json(
                addr,
                &path,
                &serde_json::json!({}),
                &[("Authorization", &bearer)],
            )
            .await
        }
    };
    b.wait_member(&room, &counselor).await;
    let started = post(&a, format!("/rooms/{room}/calls"), &client).await;
    assert_eq!(started.status, 201, "{}", started.body);
    let call = started.json()["call_id"]
        .as_str()
        .expect("call id")
        .to_owned();
    // The counselor answers through the other node: any node takes commands.
    let accepted = post(&b, format!("/calls/{call}/accept"), &counselor).await;
    assert_eq!(accepted.status, 200, "{}", accepted.body);

    // The first join, on node A, takes the call's media there.
    let mut on_a = support::rtc::Rtc::connect(a.addr, &client.token).await;
    on_a.join(&call).await;
    on_a.expect("offer").await;
    // The counselor's signaling reached node B: sent to node A, not joined on B.
    let mut on_b = support::rtc::Rtc::connect(b.addr, &counselor.token).await;
    on_b.send(serde_json::json!({"type": "join", "call_id": call}))
        .await;
    let redirect = on_b.expect("redirect").await;
    assert_eq!(redirect["node"], "node-a", "{redirect}");
    let joined: Vec<String> = a
        .call_events(&call)
        .await
        .into_iter()
        .filter(|(t, _)| t == "ParticipantJoined")
        .map(|(_, data)| data["user_id"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(
        joined,
        vec![client.id.to_string()],
        "only the join on node A"
    );
    a.stop().await;
    b.stop().await;
}
