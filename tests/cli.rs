//! The `neulbi` binary as an operator uses it: serve, SIGTERM, and the log tools.

mod support;

use neulbi::store::{self, EventData, ExpectedVersion, StoreLimits};
use neulbi_domain::{StreamKind, StreamName};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;
use uuid::Uuid;

fn neulbi(data_dir: &std::path::Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_neulbi"));
    c.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("NEULBI_DATA_DIR", data_dir)
        .env("NEULBI_LOG", "warn")
        .current_dir(data_dir);
    c
}

#[tokio::test]
async fn serve_prints_its_url_answers_and_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut child = neulbi(dir.path())
        .args(["serve", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn neulbi serve");
    let stdout = child.stdout.take().expect("stdout");
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).map(|_| line)
    });
    let line = tokio::time::timeout(Duration::from_secs(30), line)
        .await
        .expect("serve printed its URL in time")
        .expect("join")
        .expect("read line");
    let url = line
        .trim()
        .strip_prefix("Neulbi is ready at ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
    let addr: std::net::SocketAddr = url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .parse()
        .expect("URL names the bound address");
    assert_eq!(support::http::get(addr, "/healthz").await.status, 200);

    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill")
            .success()
    );
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .expect("join")
        .expect("wait");
    assert!(status.success(), "graceful shutdown exits 0, got {status}");
}

#[tokio::test]
async fn events_read_and_tail_print_the_log() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("neulbi.db").display());
    let s = store::open(&url, StoreLimits::default(), true)
        .await
        .expect("store");
    let stream = StreamName::new(StreamKind::Room, Uuid::now_v7());
    let events = (0..3)
        .map(|i| EventData::new("MessagePosted", serde_json::json!({ "n": i })))
        .collect();
    s.append(&stream, ExpectedVersion::NoStream, events)
        .await
        .expect("append");
    s.close().await;

    let out = neulbi(dir.path())
        .args(["events", "read", &stream.to_string(), "--json"])
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[2]["version"], 2);
    assert_eq!(lines[2]["data"]["n"], 2);

    let out = neulbi(dir.path())
        .args(["events", "tail", "-n", "2"])
        .output()
        .expect("run");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.lines().count(), 2, "{text}");
    assert!(text.contains("MessagePosted@1"), "{text}");
}

#[test]
fn bad_input_exits_non_zero_with_one_line() {
    let dir = tempfile::tempdir().expect("temp dir");
    for args in [
        vec!["events", "read", "room-not-a-uuid"],
        vec![
            "events",
            "read",
            "chat-0190c3e4-0000-7000-8000-000000000000",
        ],
    ] {
        let out = neulbi(dir.path()).args(&args).output().expect("run");
        assert!(!out.status.success(), "{args:?} must fail");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
        assert!(err.starts_with("error: invalid stream name"), "{err}");
    }
    let out = neulbi(dir.path())
        .env("NEULBI_LISTEN", "not-an-address")
        .args(["migrate"])
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("NEULBI_LISTEN"));
}

#[test]
fn users_erase_refuses_without_confirmation_and_for_unknown_users() {
    let dir = tempfile::tempdir().expect("temp dir");
    let id = Uuid::now_v7().to_string();
    let cases: [(&[&str], &str); 3] = [
        (
            &["users", "erase", "not-a-uuid", "--yes"],
            "invalid user id",
        ),
        (&["users", "erase", &id], "pass --yes"),
        (&["users", "erase", &id, "--yes"], "does not exist"),
    ];
    for (args, expected) in cases {
        let out = neulbi(dir.path()).args(args).output().expect("run");
        assert!(!out.status.success(), "{args:?} must fail");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(expected), "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    }
}

#[test]
fn dev_bench_fixture_writes_rooms_and_tokens() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("fixture.json");
    let status = neulbi(dir.path())
        .args(["dev", "bench-fixture", "--rooms", "3", "--subscribers", "5"])
        .arg("--out")
        .arg(&out)
        .stdout(Stdio::null())
        .status()
        .expect("run dev bench-fixture");
    assert!(status.success());
    let fixture: neulbi::tools::bench_fixture::Fixture =
        serde_json::from_slice(&std::fs::read(&out).expect("fixture file")).expect("json");
    assert_eq!(fixture.rooms.len(), 3);
    for room in &fixture.rooms {
        assert_eq!(room.participants.len(), 2);
        assert_ne!(room.participants[0].user, room.participants[1].user);
        assert!(
            room.participants
                .iter()
                .all(|p| p.token.split('.').count() == 3)
        );
    }
    assert_eq!(fixture.fanout.subscribers.len(), 5);
    assert!(fixture.rooms.iter().all(|r| r.id != fixture.fanout.room));
}
