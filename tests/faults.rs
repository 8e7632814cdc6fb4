//! Faults operators meet, on real components: a projector that cannot get past one event
//! stalls visibly instead of spinning and resumes by itself after the fix; a full disk under
//! the log gives clients clear errors, corrupts nothing, and heals when space returns.

use crate::support;

use crate::support::app::TestApp;
use neulbi::projections::runtime;
use neulbi::store::Metadata;
use neulbi_domain::chat_room::RoomCommand;
use neulbi_domain::{Actor, Context, MessageId, Role, RoomId, UserId};
use std::time::{Duration, Instant};

/// Posts `body` as `author` through the room's actor (what a STOMP SEND does).
async fn post(app: &TestApp, room: RoomId, author: UserId, role: Role, body: &str) {
    let ctx = Context::new(Actor::user(author, role), chrono::Utc::now());
    app.state
        .rooms
        .execute(
            room.as_uuid(),
            RoomCommand::PostMessage {
                message_id: MessageId::from_uuid(uuid::Uuid::now_v7()),
                body: body.to_owned(),
                client_message_id: None,
            },
            ctx,
            Metadata::default(),
        )
        .await
        .expect("post");
}

async fn status_of(app: &TestApp, name: &str) -> runtime::Status {
    let read = neulbi::projections::ReadDb::connect(&read_url(app))
        .await
        .expect("read db");
    runtime::status(&app.state.store, &read)
        .await
        .expect("status")
        .into_iter()
        .find(|s| s.name == name)
        .expect("projector")
}

fn read_url(app: &TestApp) -> String {
    read_url_in(app.data_dir())
}

fn read_url_in(data_dir: &std::path::Path) -> String {
    format!(
        "sqlite://{}?mode=rwc",
        data_dir.join("neulbi-read.db").display()
    )
}

async fn until<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[actix_rt::test]
async fn a_poison_event_stalls_one_projector_visibly_and_it_resumes_after_the_fix() {
    let app = TestApp::start(|_| {}).await;
    let client = app.client("poison.client@example.com").await;
    let counselor = app.counselor("poison.counselor@example.com").await;
    let room = app.open_room_direct(client.id, counselor.id).await;
    post(&app, room, client.id, Role::Client, "before").await;

    // The read model refuses the counselor's messages: what a projector bug or a broken
    // read-model schema looks like from the runtime's side.
    let read = neulbi::projections::ReadDb::connect(&read_url(&app))
        .await
        .expect("read db");
    let trigger = format!(
        "CREATE TRIGGER poison BEFORE INSERT ON rm_messages WHEN NEW.author_id = X'{}' \
         BEGIN SELECT RAISE(ABORT, 'read model refuses this row'); END",
        counselor.id.0.simple()
    );
    sqlx::query(sqlx::AssertSqlSafe(trigger))
        .execute(&read.pool)
        .await
        .expect("trigger");
    post(&app, room, counselor.id, Role::Counselor, "poison").await;
    let poison = app
        .state
        .store
        .head_position()
        .await
        .expect("head")
        .expect("some");
    post(&app, room, client.id, Role::Client, "after").await;

    until(
        "the rooms projector reports the stall",
        Duration::from_secs(40),
        || async { status_of(&app, "rooms").await.stalled.is_some() },
    )
    .await;
    let rooms = status_of(&app, "rooms").await;
    let stall = rooms.stalled.clone().expect("stalled");
    assert_eq!(stall.position, poison, "pinned to the one event: {stall:?}");
    assert_eq!(rooms.position, poison, "everything before it is applied");
    assert!(
        stall.error.contains("read model refuses this row"),
        "{stall:?}"
    );
    // The other projectors are not held up.
    let audit = status_of(&app, "audit").await;
    assert!(
        audit.stalled.is_none() && audit.position > poison,
        "{audit:?}"
    );
    // It does not spin: over a few seconds only a handful of retries (1, 2, 4, 8 s...).
    let before = stall.failures;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let later = status_of(&app, "rooms")
        .await
        .stalled
        .expect("still stalled");
    assert!(
        later.failures <= before + 2,
        "{before} → {}",
        later.failures
    );
    assert_eq!(later.since, stall.since, "the same stall");

    // The fix: the read model accepts the row again. The projector resumes on its own.
    sqlx::query("DROP TRIGGER poison")
        .execute(&read.pool)
        .await
        .expect("drop trigger");
    until(
        "the rooms projector resumes",
        Duration::from_secs(45),
        || async {
            let s = status_of(&app, "rooms").await;
            s.stalled.is_none() && s.lag == 0
        },
    )
    .await;
    let bodies: Vec<Option<String>> =
        sqlx::query_scalar("SELECT body FROM rm_messages WHERE room_id = $1 ORDER BY seq")
            .bind(room.0.as_bytes().to_vec())
            .fetch_all(&read.pool)
            .await
            .expect("messages");
    assert_eq!(bodies.len(), 3, "nothing lost or duplicated: {bodies:?}");
    app.stop().await;
}

/// The bodies of the chat messages in `events`, in log order.
fn message_bodies(events: &[neulbi::store::RecordedEvent]) -> Vec<String> {
    events
        .iter()
        .filter(|e| e.event_type == "MessagePosted")
        .filter_map(|e| {
            e.data["body"]["$personal"]["value"]
                .as_str()
                .map(str::to_owned)
        })
        .collect()
}

/// A small tmpfs the test mounts (as root, which `bash .ci/run` is), unmounted on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Self {
        let dir = tempfile::tempdir().expect("dir");
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("run mount");
        assert!(
            status.success(),
            "mounting a tmpfs needs root (bash .ci/run runs the suite as root)"
        );
        Self { dir }
    }

    fn path(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// Fills the filesystem to the last byte with `filler`.
    fn fill(&self) {
        use std::io::Write;
        let mut f = std::fs::File::create(self.path().join("filler")).expect("filler");
        let chunk = vec![0u8; 64 * 1024];
        loop {
            match f.write(&chunk) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        let one = [0u8; 1];
        while f.write(&one).is_ok_and(|n| n == 1) {}
        let _ = f.sync_all();
    }

    /// Fills whatever space appeared since `fill` (a rolled-back transaction's journal, a
    /// checkpointed WAL), keeping the filler.
    fn top_up(&self) {
        use std::io::Write;
        let Ok(mut f) = std::fs::OpenOptions::new()
            .append(true)
            .open(self.path().join("filler"))
        else {
            return;
        };
        let chunk = vec![0u8; 64 * 1024];
        while f.write(&chunk).is_ok_and(|n| n > 0) {}
        let one = [0u8; 1];
        while f.write(&one).is_ok_and(|n| n == 1) {}
        let _ = f.sync_all();
    }

    fn free(&self) {
        std::fs::remove_file(self.path().join("filler")).expect("free space");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// Sends `body` to `room` with a receipt; the frame that answers (RECEIPT or ERROR).
async fn send(
    client: &mut support::stomp::Client,
    room: RoomId,
    body: &str,
) -> neulbi::edge::stomp::frame::Frame {
    let receipt = format!("r-{}", uuid::Uuid::new_v4());
    client
        .send(
            neulbi::edge::stomp::frame::Frame::new(neulbi::edge::stomp::frame::Command::Send)
                .header("destination", format!("/app/rooms.{room}.send"))
                .header("receipt", receipt)
                .body(body),
        )
        .await;
    loop {
        let f = client.next().await.expect("an answer");
        if f.command != neulbi::edge::stomp::frame::Command::Message {
            return f;
        }
    }
}

#[actix_rt::test]
async fn a_full_disk_gives_clear_errors_corrupts_nothing_and_heals_when_space_returns() {
    let fs = Tmpfs::mount("24m");
    let data = fs.path().to_owned();
    let app = TestApp::start(move |c| c.data_dir = data).await;
    let client = app.client("disk.client@example.com").await;
    let counselor = app.counselor("disk.counselor@example.com").await;
    let other = app.counselor("disk.other@example.com").await;
    let room: RoomId = app
        .open_room(&client, &counselor)
        .await
        .parse()
        .expect("room");
    let mut stomp = support::stomp::Client::connect(app.addr, &client.token).await;
    stomp.post(room, "before the disk filled").await;

    fs.fill();
    // STOMP: a SEND is acknowledged (stored) or refused with an ERROR frame that says to
    // retry; the WAL may still have room for a few, so send until the disk is felt.
    let mut acknowledged = vec!["before the disk filled".to_owned()];
    let mut refused = None;
    for i in 0..2000 {
        let body = format!("while the disk is full {i}");
        let answer = send(&mut stomp, room, &body).await;
        match answer.command {
            neulbi::edge::stomp::frame::Command::Receipt => acknowledged.push(body),
            neulbi::edge::stomp::frame::Command::Error
                if answer.get("message") == Some("sending too fast") =>
            {
                // The per-session rate limit, not the disk: slow down on a new session.
                tokio::time::sleep(Duration::from_secs(1)).await;
                stomp = support::stomp::Client::connect(app.addr, &client.token).await;
            }
            neulbi::edge::stomp::frame::Command::Error => {
                let message = answer.get("message").unwrap_or_default().to_owned();
                assert!(
                    message.contains("unavailable") || message.contains("retry"),
                    "{answer:?}"
                );
                refused = Some(body);
                break;
            }
            other => panic!("unexpected {other}: {answer:?}"),
        }
    }
    let refused = refused.expect("a full disk is felt within 2000 messages");
    // HTTP: 503 with a JSON error. A rolled-back transaction or a WAL checkpoint may give a
    // few pages back between the top-up and the request, so a write that still fitted is
    // acknowledged (200) and the disk is topped up again; each try is a new append.
    let mut answers = Vec::new();
    for i in 0..20 {
        fs.top_up();
        let r = support::http::request(
            app.addr,
            "PATCH",
            "/users/me",
            &[
                ("Authorization", &client.bearer()),
                ("Content-Type", "application/json"),
            ],
            &serde_json::json!({ "nickname": format!("Disk client {i}") }).to_string(),
        )
        .await;
        answers.push(r.status);
        if r.status == 503 {
            assert_eq!(r.json()["error"]["code"], "unavailable", "{}", r.body);
            break;
        }
        assert_eq!(r.status, 200, "{}", r.body);
    }
    assert_eq!(answers.last(), Some(&503), "never refused: {answers:?}");

    // Space returns: the node recovers by itself, no restart.
    fs.free();
    let mut again = support::stomp::Client::connect(app.addr, &client.token).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let answer = send(&mut again, room, "after the disk was freed").await;
        if answer.command == neulbi::edge::stomp::frame::Command::Receipt {
            break;
        }
        assert!(Instant::now() < deadline, "no recovery: {answer:?}");
        again = support::stomp::Client::connect(app.addr, &client.token).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let r = support::http::post_json(
        app.addr,
        "/rooms",
        &serde_json::json!({ "counselor_id": other.id.to_string() }),
        &[("Authorization", &client.bearer())],
    )
    .await;
    assert!(matches!(r.status, 200 | 201), "{}: {}", r.status, r.body);

    // The read models catch up too (their database sat on the same full disk).
    until(
        "every projector caught up, none stalled",
        Duration::from_secs(60),
        || async {
            let read = neulbi::projections::ReadDb::connect(&read_url_in(fs.path()))
                .await
                .expect("read db");
            runtime::status(&app.state.store, &read)
                .await
                .is_ok_and(|all| all.iter().all(|s| s.lag == 0 && s.stalled.is_none()))
        },
    )
    .await;

    // The log is intact: contiguous positions, each acknowledged message once, the refused
    // one never.
    let events = app
        .state
        .store
        .read_all(0, 100_000)
        .await
        .expect("read log");
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e.position, i as u64, "contiguous positions");
    }
    let bodies = message_bodies(&events);
    acknowledged.push("after the disk was freed".to_owned());
    assert_eq!(
        bodies, acknowledged,
        "every acknowledged message once, in order"
    );
    assert!(
        !bodies.contains(&refused),
        "the refused message was not stored"
    );
    let url = format!("sqlite://{}", fs.path().join("neulbi.db").display());
    let mut c = <sqlx::SqliteConnection as sqlx::Connection>::connect(&url)
        .await
        .expect("connect");
    let check: String = sqlx::query_scalar("PRAGMA integrity_check")
        .fetch_one(&mut c)
        .await
        .expect("integrity check");
    assert_eq!(check, "ok");
    drop(c);
    drop(stomp);
    drop(again);
    app.stop().await;
}

/// What a chat client saw while it kept posting.
#[derive(Default)]
struct Posted {
    acknowledged: Vec<String>,
    errors: usize,
    last_error: Option<Instant>,
    acknowledged_at: Vec<Instant>,
}

#[actix_rt::test]
async fn postgres_restarted_under_chat_load_loses_nothing_acknowledged() {
    use neulbi::edge::stomp::frame::{Command, Frame};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let pg = support::pg::TempPostgres::start();
    let url = pg.url();
    let app = TestApp::start(move |c| {
        c.database_url = Some(url);
        // The load stays under the per-user send limit: only the outage may cause errors.
        c.chat.sends_per_second = 1000;
        c.chat.send_burst = 1000;
    })
    .await;
    let client = app.client("restart.client@example.com").await;
    let counselor = app.counselor("restart.counselor@example.com").await;
    let room: RoomId = app
        .open_room(&client, &counselor)
        .await
        .parse()
        .expect("room");

    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (addr, token, stop) = (app.addr, client.token.clone(), Arc::clone(&stop));
        actix_rt::spawn(async move {
            let mut seen = Posted::default();
            let mut c = support::stomp::Client::connect(addr, &token).await;
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) {
                let body = format!("load {i}");
                i += 1;
                c.send(
                    Frame::new(Command::Send)
                        .header("destination", format!("/app/rooms.{room}.send"))
                        .header("receipt", body.clone())
                        .body(body.as_str()),
                )
                .await;
                let answer = loop {
                    match c.next_within(Duration::from_secs(30)).await {
                        Ok(Some(f)) if f.command == Command::Message => continue,
                        other => break other,
                    }
                };
                match answer {
                    Ok(Some(f)) if f.command == Command::Receipt => {
                        seen.acknowledged.push(body);
                        seen.acknowledged_at.push(Instant::now());
                    }
                    // ERROR (then closed), closed, or no answer: an error the client sees;
                    // it reconnects and goes on, as the web client does.
                    _ => {
                        seen.errors += 1;
                        seen.last_error = Some(Instant::now());
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        c = support::stomp::Client::connect(addr, &token).await;
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            seen
        })
    };
    tokio::time::sleep(Duration::from_millis(1500)).await;
    pg.stop();
    tokio::time::sleep(Duration::from_secs(2)).await;
    pg.start_again();
    let up = Instant::now();
    tokio::time::sleep(Duration::from_secs(8)).await;
    stop.store(true, Ordering::SeqCst);
    let seen = writer.await.expect("writer");

    let after_restart = seen.acknowledged_at.iter().filter(|t| **t > up).count();
    assert!(
        after_restart >= 20,
        "chat works again after the restart: {after_restart}"
    );
    if let Some(last) = seen.last_error {
        assert!(
            last < up + Duration::from_secs(5),
            "errors only around the outage: the last came {:?} after PostgreSQL was back",
            last.saturating_duration_since(up)
        );
    }
    // Every acknowledged message is in the log, once; nothing else of the load is.
    let events = app.state.store.read_all(0, 1_000_000).await.expect("log");
    let stored = message_bodies(&events);
    let mut unique = stored.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), stored.len(), "no message stored twice");
    for body in &seen.acknowledged {
        assert!(stored.contains(body), "acknowledged {body} was lost");
    }
    assert!(
        stored.len() <= seen.acknowledged.len() + seen.errors,
        "only messages that were sent are stored"
    );
    app.stop().await;
}
