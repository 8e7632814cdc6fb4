//! Reliability: a server killed with SIGKILL while projecting under write load restarts and
//! ends with read models equal to a fresh rebuild — exact unread counts, no duplicate or
//! missing rows.

use crate::support;

use neulbi::projections::{ReadDb, runtime};
use neulbi::store::{self, StoreLimits};
use neulbi::tools::seed::{SeedSpec, seed};
use sqlx::Connection;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const TABLES: [&str; 8] = [
    "rm_users",
    "rm_counselors",
    "rm_rooms",
    "rm_room_members",
    "rm_messages",
    "rm_calls",
    "rm_call_participants",
    "rm_audit",
];

fn serve(dir: &std::path::Path) -> (Child, std::net::SocketAddr) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_neulbi"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("NEULBI_DATA_DIR", dir)
        .env("NEULBI_LOG", "error")
        .current_dir(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn serve");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("read URL");
    let addr = line
        .trim()
        .trim_start_matches("Neulbi is ready at http://")
        .trim_end_matches('/')
        .parse()
        .unwrap_or_else(|_| panic!("unexpected first line {line:?}"));
    (child, addr)
}

/// Every row of every read-model table, as sorted text.
async fn dump(path: &std::path::Path) -> String {
    let mut c = sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display()))
        .await
        .expect("open read db");
    let mut out = String::new();
    for t in TABLES {
        let cols: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT name FROM pragma_table_info('{t}')"
        )))
        .fetch_all(&mut c)
        .await
        .expect("columns");
        let expr = cols
            .iter()
            .map(|c| format!("quote({c})"))
            .collect::<Vec<_>>()
            .join("||','||");
        let rows: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT {expr} FROM {t} ORDER BY 1"
        )))
        .fetch_all(&mut c)
        .await
        .expect("rows");
        let mut rows = rows;
        rows.sort();
        out.push_str(&format!("== {t} ({})\n{}\n", rows.len(), rows.join("\n")));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_while_projecting_loses_and_duplicates_nothing() {
    let dir = tempfile::tempdir().expect("dir");
    let url = format!("sqlite://{}", dir.path().join("neulbi.db").display());
    let (mut first, _) = serve(dir.path());

    // Write load from another process's point of view: this test appends to the same log
    // while the server projects, and the server dies in the middle of it.
    let store = store::open(&url, StoreLimits::default(), true)
        .await
        .expect("store");
    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            for round in 0..6 {
                let spec = SeedSpec {
                    counselors: 2,
                    clients: 5,
                    rooms: 10,
                    messages: 600,
                    calls: 3,
                    seed: round + 1,
                };
                seed(&store, spec, |_, _| {}).await.expect("seed");
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(400)).await;
    first.kill().expect("SIGKILL");
    first.wait().expect("reap");
    writer.await.expect("writer");

    let (mut second, addr) = serve(dir.path());
    assert_eq!(
        support::http::wait_ready(addr).await.status,
        200,
        "restarted server catches up"
    );
    // Readiness means the first catch-up after start is done; wait for a zero lag.
    let read_path = dir.path().join("neulbi-read.db");
    let read = ReadDb::connect(&format!("sqlite://{}?mode=rwc", read_path.display()))
        .await
        .expect("read db");
    for _ in 0..200 {
        let status = runtime::status(&store, &read).await.expect("status");
        if status.iter().all(|s| s.lag == 0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    support::binary::sigterm(&second);
    assert!(second.wait().expect("wait").success());

    let fresh_path = dir.path().join("fresh-read.db");
    let fresh = ReadDb::connect(&format!("sqlite://{}?mode=rwc", fresh_path.display()))
        .await
        .expect("fresh db");
    runtime::catch_up(&store, &fresh)
        .await
        .expect("fresh rebuild");
    let (live, rebuilt) = (dump(&read_path).await, dump(&fresh_path).await);
    assert!(
        live.contains("== rm_messages (3600)"),
        "all messages projected: {}",
        &live[..live.len().min(400)]
    );
    assert!(
        live == rebuilt,
        "read models after SIGKILL + restart equal a fresh rebuild"
    );
    store.close().await;
}
