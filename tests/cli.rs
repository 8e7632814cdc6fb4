//! The `neulbi` binary as an operator uses it: serve, SIGTERM, and the log tools.

use crate::support;

use crate::support::binary::{neulbi, serve, sigterm};
use neulbi::store::{self, EventData, ExpectedVersion, StoreLimits};
use neulbi_domain::{StreamKind, StreamName};
use std::process::Stdio;
use std::time::Duration;
use uuid::Uuid;

#[tokio::test]
async fn serve_prints_its_url_answers_and_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (mut child, addr) = serve(dir.path(), &[]).await;
    assert_eq!(support::http::get(addr, "/healthz").await.status, 200);

    sigterm(&child);
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .expect("join")
        .expect("wait");
    assert!(status.success(), "graceful shutdown exits 0, got {status}");
}

/// Out of the box, with info logs and stderr on the same terminal as stdout, the first line a
/// person sees is the URL to open; the start-up log follows it, none of it lost.
#[test]
fn serve_prints_the_url_before_any_log_line() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().expect("temp dir");
    let mut command = neulbi(dir.path());
    // One pipe for both, as a terminal shows them.
    let (reader, writer) = std::io::pipe().expect("pipe");
    command
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("NEULBI_LOG", "info")
        .stdout(writer.try_clone().expect("clone"))
        .stderr(writer);
    let mut child = command.spawn().expect("spawn");
    drop(command);
    let mut lines = BufReader::new(reader).lines();
    let first = lines.next().expect("a line").expect("read");
    assert!(
        first.starts_with("Neulbi is ready at http://127.0.0.1:"),
        "first line: {first:?}"
    );
    // The held start-up log comes after it (demo data, migrations, the listener).
    let mut rest = Vec::new();
    for line in lines.by_ref() {
        let line = line.expect("read");
        let done = line.contains("listening");
        rest.push(line);
        if done || rest.len() > 500 {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        rest.iter().any(|l| l.contains("listening")),
        "the start-up log follows the URL: {rest:#?}"
    );
    assert!(
        rest.len() > 1,
        "more than one start-up line was held: {rest:#?}"
    );
}

/// SIGTERM with a STOMP client connected: the client gets ERROR "server shutting down" and a
/// close, and the process exits long before its 60 s graceful timeout.
#[tokio::test]
async fn sigterm_closes_open_stomp_connections_instead_of_waiting_for_them() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (mut child, addr) = serve(dir.path(), &[("NEULBI_SHUTDOWN_TIMEOUT", "60")]).await;
    let (token, _) = support::stomp::signup(addr, "sigterm.stomp@example.com").await;
    let mut client = support::stomp::Client::connect(addr, &token).await;

    let started = std::time::Instant::now();
    sigterm(&child);
    let error = client
        .expect(neulbi::edge::stomp::frame::Command::Error)
        .await;
    assert_eq!(error.get("message"), Some("server shutting down"));
    assert!(client.next().await.is_none(), "the socket closes");
    let status = tokio::time::timeout(
        Duration::from_secs(20),
        tokio::task::spawn_blocking(move || child.wait()),
    )
    .await
    .expect("exited without waiting for the graceful timeout")
    .expect("join")
    .expect("wait");
    assert!(status.success(), "graceful shutdown exits 0, got {status}");
    assert!(started.elapsed() < Duration::from_secs(20));
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
fn users_grant_counselor_refuses_bad_and_unknown_users() {
    let dir = tempfile::tempdir().expect("temp dir");
    let id = Uuid::now_v7().to_string();
    let cases: [(&[&str], &str); 2] = [
        (&["users", "grant-counselor", "x"], "invalid user id"),
        (&["users", "grant-counselor", &id], "does not exist"),
    ];
    for (args, expected) in cases {
        let out = neulbi(dir.path()).args(args).output().expect("run");
        assert!(!out.status.success(), "{args:?} must fail");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(expected), "{args:?}: {err}");
    }
}

#[actix_rt::test]
async fn users_grant_counselor_makes_a_client_a_counselor_once() {
    use neulbi_domain::user::{UserCommand, UserDecider};
    use neulbi_domain::{Role, UserId};
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("neulbi.db").display());
    let storage = store::open_storage(&url, StoreLimits::default(), true)
        .await
        .expect("storage");
    let users = neulbi::actors::Registry::<UserDecider>::new(
        storage.events.clone(),
        neulbi::actors::RegistryConfig::default(),
    );
    let user = UserId::from_uuid(Uuid::now_v7());
    let register = UserCommand::Register {
        user_id: user,
        provider: "local".into(),
        subject: "grant@example.com".into(),
        email: "grant@example.com".into(),
        nickname: "grant".into(),
        role: Role::Client,
    };
    users
        .execute(
            user.as_uuid(),
            register,
            support::scenario::system(),
            Default::default(),
        )
        .await
        .expect("register");
    let mut out = Vec::new();
    for _ in 0..2 {
        neulbi::cli::users_grant_counselor(&storage, &user.to_string(), &mut out)
            .await
            .expect("grant");
    }
    let out = String::from_utf8(out).expect("utf-8");
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        [
            format!("user {user} is now a counselor"),
            format!("user {user} already is a counselor")
        ]
    );
    let stream = StreamName::new(StreamKind::User, user.as_uuid());
    let types: Vec<String> = storage
        .events
        .read_stream(&stream, 0, store::Direction::Forward, 10)
        .await
        .expect("read")
        .into_iter()
        .map(|e| e.event_type)
        .collect();
    assert_eq!(types, ["Registered", "RoleGranted"]);
    storage.events.close().await;
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

#[test]
fn keys_commands_report_rotate_and_refuse_a_missing_kek() {
    let dir = tempfile::tempdir().expect("temp dir");
    let run = |args: &[&str], env: &[(&str, String)]| {
        let mut c = neulbi(dir.path());
        c.args(args);
        for (k, v) in env {
            c.env(k, v);
        }
        let out = c.output().expect("run neulbi");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // Two signing-key generations, wrapped by the default KEK file created on first use.
    for _ in 0..2 {
        let (ok, out, err) = run(&["keys", "rotate-signing"], &[]);
        assert!(ok, "{out}{err}");
        assert!(out.contains("new tokens are signed with"), "{out}");
    }
    let old = dir.path().join("neulbi.kek");
    assert!(old.exists(), "default KEK file beside the database");
    let (ok, out, err) = run(&["keys", "status", "--json"], &[]);
    assert!(ok, "{err}");
    let status: serde_json::Value = serde_json::from_str(out.trim()).expect("json");
    let old_id = status["current_kek"].as_str().expect("kek").to_owned();
    assert_eq!(status["tables"]["signing keys"]["wrapped"][&old_id], 2);

    // Rotate to a new KEK with the old one as previous.
    let new = dir.path().join("new.kek");
    std::fs::write(
        &new,
        "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=\n", // 32 bytes, base64
    )
    .expect("write kek");
    let both = [
        ("NEULBI_KEK", format!("file:{}", new.display())),
        ("NEULBI_KEK_PREVIOUS", format!("file:{}", old.display())),
    ];
    let (ok, out, err) = run(&["keys", "status"], &both);
    assert!(ok, "{err}");
    assert!(out.contains("run `neulbi keys rotate-kek`"), "{out}");
    let (ok, out, err) = run(&["keys", "rotate-kek"], &both);
    assert!(ok, "{err}");
    assert!(out.contains("rewrapped 2 keys"), "{out}");
    assert!(out.contains("0 rows remain"), "{out}");
    let only_new = [("NEULBI_KEK", format!("file:{}", new.display()))];
    let (ok, out, err) = run(&["keys", "status"], &only_new);
    assert!(ok, "{err}");
    assert!(
        out.contains("every stored key is wrapped by the current KEK"),
        "{out}"
    );
    // Each rotation is in the security audit, naming the keys and never a secret.
    let (ok, out, err) = run(&["audit", "security", "--since", "1h", "--json"], &only_new);
    assert!(ok, "{err}");
    let rotations: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .filter(|r: &serde_json::Value| r["event_type"] == "KeysRotated")
        .collect();
    assert_eq!(rotations.len(), 3, "{out}");
    assert!(rotations.iter().all(|r| {
        r["stream"]
            .as_str()
            .is_some_and(|s| s.starts_with("system-"))
    }));
    let details: Vec<&str> = rotations
        .iter()
        .map(|r| r["detail"].as_str().unwrap_or_default())
        .collect();
    assert!(details[0].starts_with("signing - -> "), "{details:?}");
    assert!(
        details[1].starts_with("signing ") && details[1].ends_with("(1 rows)"),
        "{details:?}"
    );
    assert_eq!(
        details[2],
        format!(
            "kek {old_id} -> {} (2 rows)",
            serde_json::from_str::<serde_json::Value>(
                run(&["keys", "status", "--json"], &only_new).1.trim()
            )
            .expect("json")["current_kek"]
                .as_str()
                .expect("kek")
        ),
        "{details:?}"
    );
    assert!(!out.contains("MDEyMzQ1"), "{out}");

    // The old KEK alone no longer opens the database: refused, naming what is missing.
    let (ok, _, err) = run(&["keys", "status"], &[]);
    assert!(!ok);
    assert!(
        err.contains("does not have") && err.contains("NEULBI_KEK"),
        "{err}"
    );
    // A pasted key instead of a spec is refused without being echoed.
    let (ok, _, err) = run(
        &["keys", "status"],
        &[(
            "NEULBI_KEK",
            "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=".into(),
        )],
    );
    assert!(!ok);
    assert!(
        err.contains("file:PATH") && !err.contains("MDEyMzQ1"),
        "{err}"
    );
}

#[tokio::test]
async fn audit_security_lists_failed_and_successful_sign_ins() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (mut child, addr) = serve(dir.path(), &[]).await;
    let (_, user) = support::stomp::signup(addr, "audited@example.com").await;
    for (password, status) in [("not the password", 401), ("a long password", 200)] {
        let body = serde_json::json!({ "email": "audited@example.com", "password": password });
        let r = support::http::post_json(addr, "/auth/login", &body, &[]).await;
        assert_eq!(r.status, status, "{}", r.body);
    }
    // An unknown account is recorded in the security journal, without the address tried.
    let r = support::http::post_json(
        addr,
        "/auth/login",
        &serde_json::json!({ "email": "nobody@example.com", "password": "whatever it is" }),
        &[],
    )
    .await;
    assert_eq!(r.status, 401);

    let stream = format!("user-{user}");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let listed = loop {
        let out = neulbi(dir.path())
            .args(["audit", "security", "--since", "1h", "--json"])
            .output()
            .expect("run audit");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let rows: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).expect("json line"))
            .filter(|r: &serde_json::Value| r["stream"] == stream.as_str())
            .collect();
        let types: Vec<String> = rows
            .iter()
            .map(|r| r["event_type"].as_str().unwrap_or_default().to_owned())
            .collect();
        if types.contains(&"SignInFailed".to_owned()) && types.len() >= 3 {
            break types;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not listed: {types:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    // Sign-up's login, the failed attempt, the successful one; nothing that is not security.
    assert_eq!(
        listed.iter().filter(|t| *t == "SignInFailed").count(),
        1,
        "{listed:?}"
    );
    assert!(
        listed.iter().filter(|t| *t == "LoggedIn").count() >= 1,
        "{listed:?}"
    );
    assert!(!listed.contains(&"Registered".to_owned()), "{listed:?}");
    let (text, unknown) = loop {
        let out = neulbi(dir.path())
            .args(["audit", "security", "--since", "1h", "--json"])
            .output()
            .expect("run audit");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let unknown: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("json line"))
            .filter(|r: &serde_json::Value| r["event_type"] == "UnknownAccountSignInFailed")
            .collect();
        if !unknown.is_empty() {
            break (text, unknown);
        }
        assert!(std::time::Instant::now() < deadline, "not listed: {text}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert_eq!(unknown.len(), 1, "{text}");
    assert_eq!(unknown[0]["detail"], "method=password", "{text}");
    assert!(
        unknown[0]["stream"]
            .as_str()
            .is_some_and(|s| s.starts_with("system-")),
        "{text}"
    );
    assert!(!text.contains("nobody@example.com"), "{text}");
    assert!(!text.contains("audited@example.com"), "{text}");
    // Far in the past: nothing.
    let out = neulbi(dir.path())
        .args(["audit", "security", "--since", "2000-01-01T00:00:00Z"])
        .output()
        .expect("run audit");
    assert!(out.status.success());
    let out = neulbi(dir.path())
        .args(["audit", "security", "--since", "soon"])
        .output()
        .expect("run audit");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--since"));
    sigterm(&child);
    assert!(child.wait().expect("wait").success());
}
