//! The UmaDB peer of the `append` benchmark (feature `bench-umadb`).
//!
//! Starts the `umadb` server (benches/peers/install-umadb.sh installs it) on a free port of
//! 127.0.0.1 with its database in a temp dir, and drives it with the same load shape as
//! Neulbi: each writer appends one event per call to its own consistency boundary (a tag
//! unique to the writer), with an append condition that is UmaDB's equivalent of an expected
//! version — fail if any event with that tag exists after the writer's last known position.
//! UmaDB commits durably (fdatasync) before it answers an append.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use umadb_client::AsyncUmaDbClient;
use umadb_dcb::{DcbAppendCondition, DcbEvent, DcbEventStoreAsync, DcbQuery, DcbQueryItem};
use uuid::Uuid;

/// How long the server gets to start accepting connections.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Writers per client (one gRPC connection, an HTTP/2 channel multiplexing their appends):
/// a small pool. UmaDB's own benchmarks give every writer its own client, but on this
/// 2-CPU machine 256 connections ran ~30% slower than 4; 1, 4 and 8 for 256 writers were
/// within noise of each other, 4 slightly ahead, and at 16 writers all shapes were equal.
const WRITERS_PER_CLIENT: usize = 64;

/// A `umadb` server process with its database in a temp dir; killed on drop.
pub struct Server {
    child: Child,
    addr: SocketAddr,
    // Dropped after the process is killed (fields drop after `Drop::drop`).
    dir: tempfile::TempDir,
}

impl Server {
    /// Starts the server and waits until it accepts connections.
    pub fn start() -> Self {
        let binary = find_binary().unwrap_or_else(|| {
            panic!(
                "the `umadb` server is not installed (not on PATH nor in ~/.cargo/bin): \
                 run benches/peers/install-umadb.sh"
            )
        });
        let dir = tempfile::tempdir().expect("temp dir for UmaDB");
        let addr = free_port();
        let log = std::fs::File::create(dir.path().join("umadb.log")).expect("UmaDB log file");
        let child = Command::new(&binary)
            .arg("--listen")
            .arg(addr.to_string())
            .arg("--db-path")
            .arg(dir.path().join("uma.db"))
            // Settings that would make the plain-text client fail to connect or authenticate.
            .env_remove("UMADB_TLS_CERT")
            .env_remove("UMADB_TLS_KEY")
            .env_remove("UMADB_API_KEY")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("UmaDB log file"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", binary.display()));
        let mut server = Server { child, addr, dir };
        server.wait_ready();
        server
    }

    /// The gRPC URL of the server.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().expect("UmaDB process status") {
                panic!("umadb exited during start-up ({status}):\n{}", self.log());
            }
            if TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)).is_ok() {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "umadb did not accept connections on {} within {START_TIMEOUT:?}:\n{}",
                    self.addr,
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("umadb.log")).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `umadb` on PATH, else in `$CARGO_HOME/bin` or `~/.cargo/bin`.
fn find_binary() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let cargo_bins = [
        std::env::var_os("CARGO_HOME").map(|h| PathBuf::from(h).join("bin")),
        std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo/bin")),
    ];
    std::env::split_paths(&path)
        .chain(cargo_bins.into_iter().flatten())
        .map(|dir| dir.join("umadb"))
        .find(|candidate| candidate.is_file())
}

fn free_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("ephemeral port")
}

/// Appends for `writers` writers, each to its own boundary (tag `stream:<uuid>`).
pub async fn append_fn(server: &Server, writers: usize) -> super::AppendFn {
    let mut clients = Vec::new();
    for _ in 0..writers.div_ceil(WRITERS_PER_CLIENT).max(1) {
        let client = AsyncUmaDbClient::connect(server.url(), None, None, None)
            .await
            .unwrap_or_else(|e| panic!("connecting to UmaDB at {}: {e}", server.url()));
        clients.push(Arc::new(client));
    }
    let clients = Arc::new(clients);
    let tags: Arc<Vec<String>> = Arc::new(
        (0..writers)
            .map(|_| format!("stream:{}", Uuid::now_v7()))
            .collect(),
    );
    // The position of each writer's last event: its expected version.
    let last: Arc<Vec<AtomicU64>> = Arc::new((0..writers).map(|_| AtomicU64::new(0)).collect());
    Arc::new(move |w, seq| {
        let client = clients[w / WRITERS_PER_CLIENT].clone();
        let tags = tags.clone();
        let last = last.clone();
        Box::pin(async move {
            let tag = &tags[w];
            let boundary = DcbQuery::new().item(DcbQueryItem::new().tags([tag.as_str()]));
            // seq 0: no event may carry the tag yet (no stream); then none after our last one.
            let after = (seq > 0).then(|| last[w].load(Ordering::Acquire));
            let condition = DcbAppendCondition::new(boundary).after(after);
            let data = serde_json::to_vec(
                &serde_json::json!({ "body": "안녕하세요, 상담 부탁드립니다.", "seq": seq }),
            )?;
            let event = DcbEvent::new()
                .event_type("MessagePosted")
                .tags([tag.as_str()])
                .data(data)
                .uuid(Uuid::now_v7());
            let position = client
                .append(vec![event], Some(condition), None)
                .await
                .with_context(|| format!("UmaDB append of event {seq} of writer {w}"))?;
            if let Some(after) = after
                && position <= after
            {
                bail!("UmaDB returned position {position}, not after {after}");
            }
            last[w].store(position, Ordering::Release);
            Ok(())
        })
    })
}
