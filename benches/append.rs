//! `append` benchmark: durable appends of one event per command, each writer on its own
//! stream, at several concurrencies, for every backend — and UmaDB as the peer in the same
//! run (with `--features bench-umadb`). Then `read_all` throughput over what was written.
//!
//! Full run:   cargo bench --features bench-umadb --bench append
//!             (options after `--`: --secs N, --writers 1,16,256, --backends sqlite,postgres,umadb,
//!             --reads N: read the whole log N times and report the fastest pass)
//! Smoke run:  cargo test --bench append   (a fraction of a second per cell; used by .ci/run)
//!
//! All traffic stays on 127.0.0.1; every server the bench starts is stopped when it ends.

#[allow(dead_code)]
#[path = "../tests/support/pg.rs"]
mod pg;

#[cfg(feature = "bench-umadb")]
mod umadb_peer;

use futures::future::BoxFuture;
use neulbi::store::{self, EventData, ExpectedVersion, SharedStore, StoreLimits};
use neulbi_domain::{StreamKind, StreamName};
use std::sync::Arc;
use std::time::{Duration, Instant};
use uuid::Uuid;

/// The server's allocator (`src/main.rs`): glibc's malloc was a third of a `read_all` pass.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Appends event number `seq` (from 0) of writer `w` to that writer's own stream.
type AppendFn = Arc<dyn Fn(usize, u64) -> BoxFuture<'static, anyhow::Result<()>> + Send + Sync>;

struct Options {
    secs: f64,
    writers: Vec<usize>,
    backends: Vec<String>,
    /// Passes of `read_all` over the written log; the fastest is reported.
    reads: usize,
}

fn options() -> Options {
    let args: Vec<String> = std::env::args().collect();
    // `cargo bench` passes --bench; `cargo test --bench` does not: that is the smoke run.
    let full = args.iter().any(|a| a == "--bench");
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let mut o = if full {
        Options {
            secs: 5.0,
            writers: vec![1, 16, 256],
            backends: vec!["sqlite".into(), "postgres".into(), "umadb".into()],
            reads: 1,
        }
    } else {
        Options {
            secs: 0.3,
            writers: vec![1, 16],
            backends: vec!["sqlite".into(), "postgres".into()],
            reads: 1,
        }
    };
    if let Some(v) = value("--secs") {
        o.secs = v.parse().expect("--secs takes a number");
    }
    if let Some(v) = value("--writers") {
        o.writers = v
            .split(',')
            .map(|n| n.parse().expect("--writers takes numbers"))
            .collect();
    }
    if let Some(v) = value("--reads") {
        o.reads = v.parse().expect("--reads takes a number");
    }
    if let Some(v) = value("--backends") {
        o.backends = v.split(',').map(str::to_owned).collect();
    }
    o
}

struct Cell {
    backend: String,
    writers: usize,
    events_per_sec: f64,
    p50_us: u64,
    p99_us: u64,
}

/// Runs `writers` tasks appending as fast as they can for `secs`, recording each latency.
async fn load(append: AppendFn, writers: usize, secs: f64) -> (u64, f64, Vec<u32>) {
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let start = Instant::now();
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let append = append.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut seq = 0u64;
                while Instant::now() < deadline {
                    let t0 = Instant::now();
                    append(w, seq).await.expect("append failed");
                    latencies.push(u32::try_from(t0.elapsed().as_micros()).unwrap_or(u32::MAX));
                    seq += 1;
                }
                latencies
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("writer task"));
    }
    let elapsed = start.elapsed().as_secs_f64();
    all.sort_unstable();
    (all.len() as u64, elapsed, all)
}

fn percentile(sorted: &[u32], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    u64::from(sorted[i])
}

fn neulbi_append(store: SharedStore, writers: usize) -> AppendFn {
    let streams: Arc<Vec<StreamName>> = Arc::new(
        (0..writers)
            .map(|_| StreamName::new(StreamKind::Room, Uuid::now_v7()))
            .collect(),
    );
    Arc::new(move |w, seq| {
        let store = store.clone();
        let stream = streams[w];
        Box::pin(async move {
            let expected = if seq == 0 {
                ExpectedVersion::NoStream
            } else {
                ExpectedVersion::Exact(seq - 1)
            };
            let event = EventData::new(
                "MessagePosted",
                serde_json::json!({ "body": "안녕하세요, 상담 부탁드립니다.", "seq": seq }),
            );
            store.append(&stream, expected, vec![event]).await?;
            Ok(())
        })
    })
}

async fn read_all_rate(store: &SharedStore) -> (u64, f64) {
    let start = Instant::now();
    let mut from = 0;
    let mut n = 0u64;
    loop {
        let page = store.read_all(from, 4096).await.expect("read_all");
        let Some(last) = page.last() else { break };
        from = last.position + 1;
        n += page.len() as u64;
    }
    (n, start.elapsed().as_secs_f64())
}

async fn run_neulbi(
    name: &str,
    url: &str,
    o: &Options,
    cells: &mut Vec<Cell>,
    reads: &mut Vec<(String, u64, f64)>,
) {
    for &writers in &o.writers {
        // A fresh store per cell would hide warm-up; one store per backend is what a node runs.
        let store = store::open(url, StoreLimits::default(), true)
            .await
            .expect("open store");
        let (events, secs, lat) =
            load(neulbi_append(store.clone(), writers), writers, o.secs).await;
        cells.push(Cell {
            backend: name.to_owned(),
            writers,
            events_per_sec: events as f64 / secs,
            p50_us: percentile(&lat, 0.50),
            p99_us: percentile(&lat, 0.99),
        });
        store.close().await;
    }
    let store = store::open(url, StoreLimits::default(), false)
        .await
        .expect("open store");
    let mut best = read_all_rate(&store).await;
    for _ in 1..o.reads {
        let pass = read_all_rate(&store).await;
        if pass.1 < best.1 {
            best = pass;
        }
    }
    let (n, secs) = best;
    reads.push((name.to_owned(), n, secs));
    store.close().await;
}

fn main() {
    let o = options();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut cells = Vec::new();
    let mut reads = Vec::new();
    rt.block_on(async {
        for backend in &o.backends {
            match backend.as_str() {
                "sqlite" => {
                    let dir = tempfile::tempdir().expect("temp dir");
                    let url = format!("sqlite://{}", dir.path().join("bench.db").display());
                    run_neulbi("sqlite", &url, &o, &mut cells, &mut reads).await;
                }
                "postgres" => {
                    // Durable settings: fsync and synchronous_commit on (the defaults).
                    let server =
                        pg::TempPostgres::start_with("-c fsync=on -c synchronous_commit=on");
                    run_neulbi("postgres", &server.url(), &o, &mut cells, &mut reads).await;
                }
                "umadb" => run_umadb(&o, &mut cells).await,
                other => panic!("unknown backend {other:?} (sqlite, postgres, umadb)"),
            }
        }
    });
    print_report(&o, &cells, &reads);
}

#[cfg(feature = "bench-umadb")]
async fn run_umadb(o: &Options, cells: &mut Vec<Cell>) {
    let server = umadb_peer::Server::start();
    for &writers in &o.writers {
        let append = umadb_peer::append_fn(&server, writers).await;
        let (events, secs, lat) = load(append, writers, o.secs).await;
        cells.push(Cell {
            backend: "umadb".into(),
            writers,
            events_per_sec: events as f64 / secs,
            p50_us: percentile(&lat, 0.50),
            p99_us: percentile(&lat, 0.99),
        });
    }
}

#[cfg(not(feature = "bench-umadb"))]
async fn run_umadb(_: &Options, _: &mut Vec<Cell>) {
    panic!(
        "the UmaDB peer needs `--features bench-umadb` (and the `umadb` server: benches/peers/install-umadb.sh)"
    );
}

fn print_report(o: &Options, cells: &[Cell], reads: &[(String, u64, f64)]) {
    println!(
        "\nappend: one durable event per append, each writer on its own stream, {:.1} s per cell",
        o.secs
    );
    println!(
        "{:<10} {:>8} {:>12} {:>9} {:>9} {:>14} {:>12}",
        "backend", "writers", "events/s", "p50 µs", "p99 µs", "× umadb rate", "× umadb p99"
    );
    for c in cells {
        let peer = cells
            .iter()
            .find(|p| p.backend == "umadb" && p.writers == c.writers);
        let (rate, p99) = match peer {
            Some(p) if c.backend != "umadb" => (
                format!(
                    "{:.2}",
                    c.events_per_sec / p.events_per_sec.max(f64::MIN_POSITIVE)
                ),
                format!("{:.2}", c.p99_us as f64 / (p.p99_us.max(1)) as f64),
            ),
            _ => ("-".into(), "-".into()),
        };
        println!(
            "{:<10} {:>8} {:>12.0} {:>9} {:>9} {:>14} {:>12}",
            c.backend, c.writers, c.events_per_sec, c.p50_us, c.p99_us, rate, p99
        );
    }
    println!("\nread_all: pages of 4096 over the whole log");
    println!("{:<10} {:>10} {:>12}", "backend", "events", "events/s");
    for (name, n, secs) in reads {
        println!(
            "{:<10} {:>10} {:>12.0}",
            name,
            n,
            *n as f64 / secs.max(f64::MIN_POSITIVE)
        );
    }
    // A smoke run must have done real work, or it proves nothing.
    assert!(
        cells.iter().all(|c| c.events_per_sec > 0.0),
        "a cell appended nothing"
    );
}
