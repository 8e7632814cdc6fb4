//! The tools over the log: export → import round-trips exactly and refuses to overwrite,
//! an old log version upcasts on read, replay shows past state, and the CLI wires it all.

use crate::support::Backend;
use neulbi::actors::codec;
use neulbi::store::Direction;
use neulbi::tools::replay::{At, replay};
use neulbi::tools::seed::{SeedSpec, seed};
use neulbi::tools::transfer::{CopyError, CopyProgress, ImportError, check, copy, export, import};
use neulbi_domain::chat_room::{ChatRoomDecider, RoomEvent};
use neulbi_domain::{Decider, StreamName};
use std::io::Cursor;
use std::process::Command;

const FIXTURE: &str = include_str!("fixtures/v1-room-log.ndjson");

async fn export_bytes(b: &Backend) -> Vec<u8> {
    let storage = b.storage(true).await;
    let mut out = Vec::new();
    export(&storage.raw, &mut out, |_| {})
        .await
        .expect("export");
    storage.events.close().await;
    out
}

async fn round_trip(a: Backend, b: Backend) {
    let spec = SeedSpec {
        counselors: 3,
        clients: 10,
        rooms: 12,
        messages: 300,
        calls: 4,
        seed: 7,
    };
    let n = seed(&a.store, spec, |_, _| {}).await.expect("seed");
    assert!(n > 300);
    let first = export_bytes(&a).await;
    assert_eq!(first.iter().filter(|&&c| c == b'\n').count() as u64, n);
    let text = String::from_utf8_lossy(&first);
    assert!(
        !text.contains("안녕하세요"),
        "exports carry sealed personal fields only"
    );

    let target = b.storage(true).await;
    check(&target.raw, Cursor::new(&first))
        .await
        .expect("check");
    import(&target.raw, Cursor::new(&first), |_| {})
        .await
        .expect("import");
    target.events.close().await;
    let second = export_bytes(&b).await;
    assert!(first == second, "export → import → export is byte-exact");

    // Importing again refuses: the streams exist now. Nothing is written.
    let again = b.storage(false).await;
    let head = again.events.head_position().await.expect("head");
    let err = check(&again.events, Cursor::new(&first))
        .await
        .expect_err("exists");
    assert!(matches!(err, ImportError::StreamExists(_)), "{err}");
    assert_eq!(again.events.head_position().await.expect("head"), head);
    again.events.close().await;
}

#[tokio::test]
async fn sqlite_export_import_round_trips_exactly() {
    round_trip(Backend::sqlite().await, Backend::sqlite().await).await;
}

#[tokio::test]
async fn postgres_export_import_round_trips_exactly() {
    round_trip(Backend::sqlite().await, Backend::postgres().await).await;
}

/// `events copy` SQLite → PostgreSQL → SQLite: the final log exports byte for byte like the
/// source, the report counts every event and stream, and a non-empty target is refused
/// before anything is written.
#[tokio::test]
async fn copy_sqlite_to_postgres_to_sqlite_is_byte_exact() {
    let a = Backend::sqlite().await;
    let spec = SeedSpec {
        counselors: 2,
        clients: 6,
        rooms: 8,
        messages: 200,
        calls: 3,
        seed: 11,
    };
    let n = seed(&a.store, spec, |_, _| {}).await.expect("seed");
    let first = export_bytes(&a).await;
    let pg = Backend::postgres().await;
    let last = Backend::sqlite().await;

    let (src, mid, dst) = (
        a.storage(false).await,
        pg.storage(true).await,
        last.storage(true).await,
    );
    let mut seen = Vec::new();
    let report = copy(&src.raw, &mid.raw, |p| seen.push(p))
        .await
        .expect("sqlite → postgres");
    assert_eq!(report.events, n);
    assert!(report.streams > 8, "{report:?}");
    assert_eq!(seen.last(), Some(&CopyProgress::Verified(n)));
    assert!(seen.contains(&CopyProgress::Copied(n)), "{seen:?}");
    let again = copy(&src.raw, &mid.raw, |_| {})
        .await
        .expect_err("non-empty target");
    assert!(
        matches!(again, CopyError::TargetNotEmpty { head } if head + 1 == n),
        "{again}"
    );
    assert!(again.to_string().contains("not empty"), "{again}");
    let back = copy(&mid.raw, &dst.raw, |_| {})
        .await
        .expect("postgres → sqlite");
    assert_eq!(back, report);
    for s in [&src, &mid, &dst] {
        s.raw.close().await;
    }
    assert!(
        export_bytes(&pg).await == first,
        "the PostgreSQL copy exports like the source"
    );
    assert!(
        export_bytes(&last).await == first,
        "SQLite → PostgreSQL → SQLite exports byte for byte like the source"
    );
}

#[tokio::test]
async fn bad_import_files_are_refused_with_the_line() {
    let b = Backend::sqlite().await;
    let err = check(&b.store, Cursor::new("{\"not\": \"an event\"}\n"))
        .await
        .expect_err("bad");
    assert!(matches!(err, ImportError::BadLine { line: 1, .. }), "{err}");
    let gap: String = FIXTURE
        .lines()
        .filter(|l| !l.contains("\"version\": 1,"))
        .map(|l| format!("{l}\n"))
        .collect();
    let err = check(&b.store, Cursor::new(gap)).await.expect_err("gap");
    assert!(matches!(err, ImportError::Gap { version: 2, .. }), "{err}");
    let plain = r#"{"position":0,"stream":"room-0190c3e4-0000-7000-8000-00000000aa01","version":0,"event_id":"0190c3e4-0000-7000-8000-00000000e001","event_type":"MessagePosted","schema_version":2,"data":{"body":{"$personal":{"owner":"0190c3e4-0000-7000-8000-0000000000c1","value":"plain"}}},"metadata":{},"recorded_at":"2025-06-01T09:00:00Z"}"#;
    let err = check(&b.store, Cursor::new(plain))
        .await
        .expect_err("plain personal field");
    assert!(matches!(err, ImportError::Unsealed(1)), "{err}");
    assert_eq!(b.store.head_position().await.expect("head"), None);
}

#[tokio::test]
async fn a_v1_log_upcasts_and_replays() {
    let b = Backend::sqlite().await;
    import(&b.store, Cursor::new(FIXTURE), |_| {})
        .await
        .expect("import fixture");
    let room: StreamName = "room-0190c3e4-0000-7000-8000-00000000aa01"
        .parse()
        .expect("name");
    let recorded = b
        .store
        .read_stream(&room, 0, Direction::Forward, 10)
        .await
        .expect("read");
    assert_eq!(recorded[1].schema_version, 1, "the log is never rewritten");
    let events: Vec<RoomEvent> = recorded
        .iter()
        .map(|r| codec::decode(r).expect("upcast + decode"))
        .collect();
    match &events[1] {
        RoomEvent::MessagePosted { body, author, .. } => {
            assert_eq!(
                body.value().map(String::as_str),
                Some("v1 plain body from 2025")
            );
            assert_eq!(body.owner(), *author);
        }
        other => panic!("unexpected {other:?}"),
    }
    let state = ChatRoomDecider::fold(&events);
    assert_eq!(state.message_count(), 2);

    let then = replay(&b.store, &room, At::Position(1))
        .await
        .expect("replay");
    assert_eq!((then.events, then.version), (2, Some(1)));
    let by_time = replay(
        &b.store,
        &room,
        "2025-06-01T09:01:30Z".parse().expect("time"),
    )
    .await
    .expect("replay");
    assert_eq!(by_time.events, 2);
    let before = replay(
        &b.store,
        &room,
        "2025-01-01T00:00:00Z".parse().expect("time"),
    )
    .await
    .expect("replay");
    assert_eq!(before.events, 0);
    assert!("yesterday".parse::<At>().is_err());
}

use crate::support::binary::neulbi;

fn run_ok(c: &mut Command) -> String {
    let out = c.output().expect("run");
    assert!(
        out.status.success(),
        "{c:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_cli_seeds_rebuilds_audits_replays_and_transfers() {
    let dir = tempfile::tempdir().expect("dir");
    let d = dir.path();
    let out = run_ok(neulbi(d).args([
        "dev",
        "seed",
        "--messages",
        "200",
        "--rooms",
        "5",
        "--clients",
        "4",
        "--counselors",
        "2",
        "--calls",
        "2",
    ]));
    assert!(out.starts_with("seeded "), "{out}");
    let status = run_ok(neulbi(d).args(["projections", "status", "--json"]));
    let rows: serde_json::Value = serde_json::from_str(&status).expect("json");
    assert!(
        rows.as_array()
            .expect("rows")
            .iter()
            .all(|r| r["lag"].as_u64() > Some(0)),
        "nothing projected yet"
    );
    let out = run_ok(neulbi(d).args(["projections", "rebuild", "rooms"]));
    assert!(out.starts_with("rebuilt rooms: "), "{out}");
    let status = run_ok(neulbi(d).args(["projections", "status", "--json"]));
    let rows: serde_json::Value = serde_json::from_str(&status).expect("json");
    let rooms = rows
        .as_array()
        .expect("rows")
        .iter()
        .find(|r| r["name"] == "rooms")
        .expect("rooms")
        .clone();
    assert_eq!(rooms["lag"], 0);

    let log = run_ok(neulbi(d).args(["events", "tail", "-n", "100000", "--json"]));
    let first_room = log
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("line"))
        .find(|e| e["stream"].as_str().is_some_and(|s| s.starts_with("room-")))
        .expect("a room");
    let stream = first_room["stream"].as_str().expect("stream").to_owned();
    let audit = run_ok(neulbi(d).args([
        "audit",
        "room",
        stream.trim_start_matches("room-"),
        "--json",
    ]));
    assert!(
        audit.lines().count() > 1 && audit.contains("MessagePosted"),
        "{audit}"
    );
    let at = first_room["position"].to_string();
    let replayed = run_ok(neulbi(d).args(["replay", &stream, "--at", &at]));
    assert!(
        replayed.starts_with(&format!("{stream} after 1 events (version 0")),
        "{replayed}"
    );
    let early = neulbi(d)
        .args(["replay", &stream, "--at", "0"])
        .output()
        .expect("run");
    assert!(
        at == "0" || !early.status.success(),
        "before its first event the stream did not exist"
    );

    let export_file = d.join("log.ndjson");
    run_ok(
        neulbi(d)
            .args(["events", "export", "--out"])
            .arg(&export_file),
    );
    let other = tempfile::tempdir().expect("dir");
    let out = run_ok(
        neulbi(other.path())
            .args(["events", "import"])
            .arg(&export_file),
    );
    assert!(out.starts_with("imported "), "{out}");
    let again = neulbi(other.path())
        .args(["events", "import"])
        .arg(&export_file)
        .output()
        .expect("run");
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));

    // `events copy` between two SQLite files; without a terminal, progress is a counter line.
    let copied = tempfile::tempdir().expect("dir");
    let source_url = format!("sqlite://{}", d.join("neulbi.db").display());
    let target_url = format!("sqlite://{}", copied.path().join("copy.db").display());
    let out = neulbi(d)
        .args(["events", "copy", "--from", &source_url, "--to", &target_url])
        .output()
        .expect("run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.starts_with("copied "), "{stdout}");
    assert!(stdout.contains("checksums match"), "{stdout}");
    assert!(stderr.contains("events copy: verified "), "{stderr}");
    let refused = neulbi(d)
        .args(["events", "copy", "--from", &source_url, "--to", &target_url])
        .output()
        .expect("run");
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("target log is not empty"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );

    for (args, expected) in [
        (vec!["projections", "rebuild", "nope"], "no projector named"),
        (vec!["audit", "user", "not-a-uuid"], "invalid id"),
        (
            vec!["replay", &stream, "--at", "yesterday"],
            "neither a log position",
        ),
    ] {
        let out = neulbi(d).args(&args).output().expect("run");
        assert!(!out.status.success(), "{args:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(expected),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
