//! `rebuild` benchmark: `projections rebuild` of the message-history and my-rooms read model
//! (`rooms`) over a seeded log, on SQLite and PostgreSQL.
//!
//! Full run:   cargo bench --bench rebuild   (1,000,000 then 10,000,000 events;
//!             `-- --events N[,M...] --backends sqlite,postgres`)
//! Smoke run:  cargo test --bench rebuild    (a few thousand events; used by .ci/run)
//!
//! With more than one size, each backend's rebuild times are compared at the end: a linear
//! rebuild takes (size ratio) × the time, and the table says how far from that each is.
//!
//! To explore: `--keep N` and `--readers N` set the rebuild's options
//! ([`rebuild::RebuildOptions`]), `--no-read` skips the read+decode pass, `--repeat N`
//! rebuilds each log N times and reports the median run; the time of each million events
//! applied goes to stderr as the rebuild runs. `--logs DIR` (SQLite) keeps
//! each seeded log as `DIR/log-N.db` and reuses it in later runs, so a rebuild can be run
//! again over the same log in a fresh process without seeding it again.

#[allow(dead_code)]
#[path = "../tests/support/pg.rs"]
mod pg;

use neulbi::projections::db::read_model_url;
use neulbi::projections::{Decoded, ReadDb, by_name, rebuild};
use neulbi::store::{self, StoreLimits};
use neulbi::tools::seed::{SeedSpec, seed};
use std::time::Instant;

/// The allocator of the `neulbi` binary, whose `projections rebuild` this measures.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn arg(args: &[String], flag: &str) -> Option<String> {
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

/// Removes a SQLite database named by `url` and its WAL and shared-memory files, if any.
fn remove_sqlite_files(url: &str) {
    if let Some(path) = url
        .strip_prefix("sqlite://")
        .and_then(|p| p.split('?').next())
    {
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{path}{suffix}"));
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let full = args.iter().any(|a| a == "--bench");
    let sizes: Vec<usize> = arg(&args, "--events")
        .map(|v| {
            v.split(',')
                .map(|n| {
                    n.trim()
                        .parse()
                        .expect("--events takes numbers, comma separated")
                })
                .collect()
        })
        .unwrap_or(if full {
            vec![1_000_000, 10_000_000]
        } else {
            vec![1_500, 3_000]
        });
    let backends: Vec<String> = arg(&args, "--backends")
        .map(|v| v.split(',').map(str::to_owned).collect())
        .unwrap_or_else(|| vec!["sqlite".into(), "postgres".into()]);
    let mut options = rebuild::RebuildOptions::default();
    let number =
        |flag: &str| arg(&args, flag).map(|v| v.parse::<usize>().expect("a number after the flag"));
    if let Some(keep) = number("--keep") {
        options.keep = keep;
    }
    if let Some(readers) = number("--readers") {
        options.readers = readers;
    }
    let read_pass = !args.iter().any(|a| a == "--no-read");
    let logs = arg(&args, "--logs").map(std::path::PathBuf::from);
    let repeat = number("--repeat").unwrap_or(1).max(1);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut rows = Vec::new();
    let mut read_rates: Vec<f64> = Vec::new();
    rt.block_on(async {
        for (backend, events) in backends
            .iter()
            .flat_map(|b| sizes.iter().map(move |n| (b, *n)))
        {
            let dir = tempfile::tempdir().expect("dir");
            let server;
            let url = match backend.as_str() {
                "sqlite" => {
                    let file = match &logs {
                        Some(logs) => {
                            std::fs::create_dir_all(logs).expect("--logs dir");
                            logs.join(format!("log-{events}.db"))
                        }
                        None => dir.path().join("bench.db"),
                    };
                    format!("sqlite://{}", file.display())
                }
                "postgres" => {
                    server = pg::TempPostgres::start_with("-c fsync=on");
                    server.url()
                }
                other => panic!("unknown backend {other:?}"),
            };
            let s = store::open(&url, StoreLimits::default(), true)
                .await
                .expect("store");
            // ~95% of the events are room events (messages and read markers).
            let spec = SeedSpec {
                counselors: (events / 5000).max(2),
                clients: (events / 500).max(4),
                rooms: (events / 100).max(2),
                messages: events * 9 / 10,
                calls: events / 1000,
                seed: 1,
            };
            let t = Instant::now();
            let (seeded, seed_secs) = match s.head_position().await.expect("head") {
                // A kept log (`--logs`): positions are gap-free on SQLite.
                Some(head) => (head + 1, f64::NAN),
                None => {
                    let seeded = seed(&s, spec, |_, _| {}).await.expect("seed");
                    (seeded, t.elapsed().as_secs_f64())
                }
            };
            // The read side alone: the log read with personal fields opened, then decoded
            // into domain events. Every rebuild pays this; it is the floor under the rate.
            let t = Instant::now();
            let mut from = 0;
            let mut decoded = 0u64;
            loop {
                if !read_pass {
                    break;
                }
                let page = s.read_all(from, 5000).await.expect("read");
                let Some(last) = page.last() else { break };
                from = last.position + 1;
                decoded += page
                    .iter()
                    .filter(|e| !matches!(Decoded::of(e), Decoded::Unknown))
                    .count() as u64;
            }
            read_rates.push(decoded as f64 / t.elapsed().as_secs_f64().max(1e-9));
            let mut reports = Vec::new();
            for run in 1..=repeat {
                // A read model of its own per run: the last run's connections may still be
                // closing, and SQLite deletes a closing database's WAL by its path.
                let read_url =
                    read_model_url(&url).replacen("-read.db", &format!("-read-{run}.db"), 1);
                remove_sqlite_files(&read_url);
                let db = ReadDb::connect_for_batch(&read_url)
                    .await
                    .expect("read db");
                let (started, mut lap, mut millions) = (Instant::now(), Instant::now(), 0u64);
                let report = rebuild::rebuild_with(
                    &s,
                    &db,
                    by_name("rooms").expect("rooms"),
                    options,
                    |at, _| {
                        if at / 1_000_000 > millions {
                            millions = at / 1_000_000;
                            eprintln!(
                                "{backend} {events} run {run}: {millions}M applied in {:.2} s (at {:.1} s)",
                                lap.elapsed().as_secs_f64(),
                                started.elapsed().as_secs_f64()
                            );
                            lap = Instant::now();
                        }
                    },
                )
                .await
                .expect("rebuild");
                eprintln!("{backend} {events} run {run}: {:.2} s", report.secs);
                db.pool.close().await;
                drop(db);
                // Each run's read model goes once measured (at 10M events it is ~3 GB).
                remove_sqlite_files(&read_url);
                reports.push(report);
            }
            // The median run (runs of one binary vary by about ±10% on a 2-core machine).
            reports.sort_by(|a, b| a.secs.total_cmp(&b.secs));
            let report = reports[reports.len() / 2];
            rows.push((backend.clone(), seeded, seed_secs, report));
            s.close().await;
        }
    });
    println!("\nrebuild of `rooms` (my rooms + message history) over a seeded log");
    println!(
        "{:<10} {:>10} {:>12} {:>16} {:>10} {:>14}",
        "backend", "events", "seed ev/s", "read+decode ev/s", "rebuild s", "rebuild ev/s"
    );
    for ((name, n, seed_secs, r), read) in rows.iter().zip(&read_rates) {
        // A kept log (`--logs`) was seeded by an earlier run.
        let seed_rate = if seed_secs.is_nan() {
            "kept".to_owned()
        } else {
            format!("{:.0}", *n as f64 / seed_secs.max(1e-9))
        };
        println!(
            "{:<10} {:>10} {:>12} {:>16.0} {:>10.2} {:>14.0}",
            name,
            n,
            seed_rate,
            read,
            r.secs,
            r.events as f64 / r.secs.max(1e-9)
        );
    }
    // Linearity: each size against the smallest of the same backend.
    if sizes.len() > 1 {
        println!("\nlinearity (rebuild time ratio against size ratio; 1.00 = linear)");
        println!(
            "{:<10} {:>10} {:>10} {:>12} {:>12} {:>10}",
            "backend", "from", "to", "size ratio", "time ratio", "excess"
        );
        for backend in &backends {
            let mine: Vec<_> = rows.iter().filter(|(b, ..)| b == backend).collect();
            let Some((_, n0, _, r0)) = mine.first() else {
                continue;
            };
            for (_, n, _, r) in mine.iter().skip(1) {
                let size = *n as f64 / (*n0).max(1) as f64;
                let time = r.secs / r0.secs.max(1e-9);
                println!(
                    "{:<10} {:>10} {:>10} {:>12.2} {:>12.2} {:>10.2}",
                    backend,
                    n0,
                    n,
                    size,
                    time,
                    time / size
                );
            }
        }
    }
    assert!(
        rows.iter().all(|(_, n, _, r)| r.events == *n),
        "a rebuild must apply every event"
    );
}
