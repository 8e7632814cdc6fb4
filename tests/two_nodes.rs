//! Two nodes, each its own server, on one PostgreSQL: chat posted on one reaches subscribers on
//! the other, commands to one room racing on both nodes leave one gap-free stream in which
//! every acknowledged message appears exactly once, a call's signaling on the node without its
//! media is redirected to the node that has it, and a node SIGKILLed under chat load loses no
//! acknowledged message: its clients resume on the other node with catch-up.

use crate::support;

use crate::support::app::{TestApp, shared_kek, shared_node};
use crate::support::scenario::as_user;
use crate::support::stomp::Client;
use neulbi::actors::ActorError;
use neulbi::store::{Direction, Metadata};
use neulbi_domain::chat_room::RoomCommand;
use neulbi_domain::{MessageId, Role, RoomId, StreamKind, StreamName};
use std::collections::HashSet;
use std::time::Duration;

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
    // Node A has a signaling URL of its own; it is recorded with the calls it holds.
    let a_listen: std::net::SocketAddr = ([127, 0, 0, 1], support::free_port()).into();
    let a_url = format!("ws://{a_listen}/rtc");
    let node_a = shared_node(&pg.url(), &kek, "node-a");
    let a = TestApp::start({
        let a_url = a_url.clone();
        move |c: &mut neulbi::config::Config| {
            node_a(c);
            c.listen = a_listen;
            c.calls.node_url = Some(a_url);
        }
    })
    .await;
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
    assert_eq!(redirect["url"], a_url.as_str(), "{redirect}");
    let on_b_joins = joined_on(&a, &call).await;
    assert_eq!(
        on_b_joins,
        vec![client.id.to_string()],
        "nobody joined on node B"
    );

    // Following the redirect's URL, the counselor joins on node A, beside the client.
    let url = redirect["url"].as_str().expect("url");
    let mut followed = support::rtc::Rtc::connect_url(url, &counselor.token).await;
    followed.join(&call).await;
    followed.expect("offer").await;
    let joined = joined_on(&a, &call).await;
    assert_eq!(
        joined,
        vec![client.id.to_string(), counselor.id.to_string()],
        "both joined on node A"
    );
    a.stop().await;
    b.stop().await;
}

/// Who joined `call`'s media, in order, as its events on `app`'s log say.
async fn joined_on(app: &TestApp, call: &str) -> Vec<String> {
    app.call_events(call)
        .await
        .into_iter()
        .filter(|(t, _)| t == "ParticipantJoined")
        .map(|(_, data)| data["user_id"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// The variables as `serve` takes them.
fn borrow<'a>(v: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    v.iter().map(|(k, s)| (*k, s.as_str())).collect()
}

/// One SEND with a receipt: true once its RECEIPT came, false if the connection is gone (the
/// node died) first. MESSAGEs that arrive meanwhile are skipped.
async fn post_until_gone(client: &mut Client, room: RoomId, body: &str) -> bool {
    use neulbi::edge::stomp::frame::{Command, Frame};
    let receipt = format!("r-{body}");
    client
        .send(
            Frame::new(Command::Send)
                .header("destination", format!("/app/rooms.{room}.send"))
                .header("receipt", receipt.clone())
                .body(body),
        )
        .await;
    loop {
        match client.next_within(Duration::from_secs(10)).await {
            Ok(Some(f)) if f.command == Command::Receipt => {
                return f.get("receipt-id") == Some(receipt.as_str());
            }
            Ok(Some(f)) if f.command == Command::Message => continue,
            _ => return false,
        }
    }
}

#[tokio::test]
async fn a_node_killed_under_chat_load_loses_no_acknowledged_message() {
    use crate::support::binary::{neulbi, serve_at};
    use neulbi::edge::stomp::frame::{Command, Frame};
    let pg = support::pg::TempPostgres::start();
    let keys = tempfile::tempdir().expect("dir");
    let kek = shared_kek(keys.path());
    let url = pg.url();
    let env = |node: &'static str| {
        vec![
            ("NEULBI_DATABASE_URL", url.clone()),
            ("NEULBI_KEK", kek.clone()),
            ("NEULBI_PUBLIC_URL", "http://neulbi.test".to_owned()),
            ("NEULBI_NODE", node.to_owned()),
        ]
    };
    let (dir_a, dir_b) = (
        tempfile::tempdir().expect("dir"),
        tempfile::tempdir().expect("dir"),
    );
    let (env_a, env_b) = (env("node-a"), env("node-b"));
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
    };
    let (a, b) = (free(), free());
    let mut node_a = serve_at(dir_a.path(), a, &borrow(&env_a)).await;
    let mut node_b = serve_at(dir_b.path(), b, &borrow(&env_b)).await;

    let (client_token, _) = support::stomp::signup(a, "killed.client@example.com").await;
    let (_, counselor) = support::stomp::signup(a, "killed.counselor@example.com").await;
    let mut grant = neulbi(dir_a.path());
    grant.args(["users", "grant-counselor", &counselor.to_string()]);
    for (k, v) in &env_a {
        grant.env(k, v);
    }
    let granted = grant.output().expect("grant");
    assert!(
        granted.status.success(),
        "{}",
        String::from_utf8_lossy(&granted.stderr)
    );
    let login = support::http::post_json(
        a,
        "/auth/login",
        &serde_json::json!({"email": "killed.counselor@example.com", "password": "a long password"}),
        &[],
    )
    .await;
    assert_eq!(login.status, 200, "{}", login.body);
    let counselor_token = login.json()["access_token"]
        .as_str()
        .expect("token")
        .to_owned();
    let opened = support::http::post_json(
        a,
        "/rooms",
        &serde_json::json!({"counselor_id": counselor.to_string()}),
        &[("Authorization", &format!("Bearer {client_token}"))],
    )
    .await;
    assert!(matches!(opened.status, 200 | 201), "{}", opened.body);
    let room: RoomId = opened.json()["room_id"]
        .as_str()
        .expect("room")
        .parse()
        .expect("room");

    // The counselor listens on node A; the client posts on node A as fast as receipts come.
    let mut listener = loop {
        let mut c = Client::connect(a, &counselor_token).await;
        if c.subscribe(room, "l").await.command == Command::Receipt {
            break c;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut poster = Client::connect(a, &client_token).await;
    let mut acknowledged = Vec::new();
    for i in 0..15 {
        let body = format!("m{i}");
        assert!(
            post_until_gone(&mut poster, room, &body).await,
            "{body} before the kill"
        );
        acknowledged.push(body);
    }
    // Under load: a burst in flight while node A is SIGKILLed.
    let killer = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(30)).await;
        node_a.kill().expect("SIGKILL");
        node_a.wait().expect("reap");
    });
    for i in 15..500 {
        let body = format!("m{i}");
        if !post_until_gone(&mut poster, room, &body).await {
            break;
        }
        acknowledged.push(body);
    }
    killer.await.expect("killer");

    // What the listener saw on node A before it died.
    let mut seen: Vec<(String, String)> = Vec::new();
    while let Ok(Some(f)) = listener.next_within(Duration::from_millis(500)).await {
        if f.command == Command::Message {
            let json: serde_json::Value = serde_json::from_slice(&f.body).expect("json");
            seen.push((
                json["id"].as_str().expect("id").to_owned(),
                json["body"].as_str().expect("body").to_owned(),
            ));
        }
    }
    let last = seen
        .last()
        .map(|(id, _)| id.clone())
        .expect("saw messages before the kill");

    // The listener resumes on node B from its last message: the rest, then live ones.
    let mut resumed = Client::connect(b, &counselor_token).await;
    resumed
        .send(
            Frame::new(Command::Subscribe)
                .header("id", "l")
                .header("destination", format!("/topic/rooms.{room}"))
                .header("since-message-id", last.as_str())
                .header("receipt", "caught-up"),
        )
        .await;
    loop {
        let f = resumed
            .next_within(Duration::from_secs(10))
            .await
            .expect("catch-up in time")
            .expect("a frame");
        match f.command {
            Command::Message => {
                let json: serde_json::Value = serde_json::from_slice(&f.body).expect("json");
                seen.push((
                    json["id"].as_str().expect("id").to_owned(),
                    json["body"].as_str().expect("body").to_owned(),
                ));
            }
            Command::Receipt => break,
            other => panic!("unexpected {other}: {f:?}"),
        }
    }
    let mut poster = Client::connect(b, &client_token).await;
    assert!(post_until_gone(&mut poster, room, "after the kill").await);
    let live = resumed.next_json().await;
    assert_eq!(live["body"], "after the kill");

    let bodies: Vec<&str> = seen.iter().map(|(_, b)| b.as_str()).collect();
    let unique: HashSet<&str> = bodies.iter().copied().collect();
    assert_eq!(unique.len(), bodies.len(), "no message twice: {bodies:?}");
    for body in &acknowledged {
        assert!(
            unique.contains(body.as_str()),
            "acknowledged {body} lost: {bodies:?}"
        );
    }
    assert!(
        (15..500).contains(&acknowledged.len()),
        "node A died mid-burst: {}",
        acknowledged.len()
    );
    support::binary::sigterm(&node_b);
    assert!(node_b.wait().expect("wait").success());
}
