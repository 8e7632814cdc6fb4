//! The servers under load: Neulbi (the release `neulbi serve` as its own process, or in
//! process for the smoke run) and RabbitMQ Web-STOMP (benches/peers/rabbitmq.sh), and
//! reading a process's resident memory.

use anyhow::{Context, bail};
use neulbi::tools::bench_fixture::{Fixture, FixtureSpec};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a server gets to become ready.
const START_TIMEOUT: Duration = Duration::from_secs(120);

/// Chat limits raised for the load test (the defaults would cap it): per-user send rate and
/// burst, frames queued per client. Heart-beats stay at the defaults (10 s).
pub const SENDS_PER_SECOND: u32 = 1_000_000;
/// See [`SENDS_PER_SECOND`].
pub const SEND_BURST: u32 = 1_000_000;
/// Frames queued for one client before it counts as a slow consumer.
pub const MAX_OUTBOUND: usize = 65_536;

/// Resident memory of process `pid` in KiB (`VmRSS`), if it is readable.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// A free port on 127.0.0.1.
pub fn free_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("ephemeral port")
}

/// `GET path` over plain HTTP/1.1; the status code.
fn http_status(addr: SocketAddr, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut head = [0u8; 12];
    s.read_exact(&mut head).ok()?;
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}

/// The release `neulbi` binary next to this bench's target dir.
pub fn neulbi_binary() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("NEULBI_BIN") {
        return Ok(PathBuf::from(p));
    }
    // benches run from target/release/deps/stomp_load-HASH.
    let exe = std::env::current_exe().context("own path")?;
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .context("bench binary is not in target/PROFILE/deps")?;
    let candidate = profile_dir.join("neulbi");
    if !candidate.is_file() {
        bail!(
            "{} is missing: run `cargo build --release --bin neulbi` first (or set NEULBI_BIN)",
            candidate.display()
        );
    }
    Ok(candidate)
}

/// `neulbi serve` in its own process with a temp data dir; killed on drop.
pub struct NeulbiProcess {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl NeulbiProcess {
    /// Writes a config, creates the fixture with `neulbi dev bench-fixture`, starts
    /// `neulbi serve` and waits until `/readyz` answers 200 (read models caught up).
    pub fn start(binary: &Path, spec: FixtureSpec) -> anyhow::Result<(Self, Fixture)> {
        let dir = tempfile::tempdir().context("temp dir for Neulbi")?;
        let addr = free_addr();
        let config = dir.path().join("neulbi.toml");
        std::fs::write(
            &config,
            format!(
                "listen = \"{addr}\"\ndata_dir = \"{}\"\nlog = \"warn\"\n\n\
                 [auth]\nseed_demo_users = false\n\n\
                 [chat]\nmax_outbound = {MAX_OUTBOUND}\nsends_per_second = {SENDS_PER_SECOND}\n\
                 send_burst = {SEND_BURST}\n",
                dir.path().join("data").display()
            ),
        )?;
        let fixture_path = dir.path().join("fixture.json");
        let started = Instant::now();
        let out = Command::new(binary)
            .arg("--config")
            .arg(&config)
            .args(["dev", "bench-fixture"])
            .args(["--rooms", &spec.rooms.to_string()])
            .args(["--subscribers", &spec.subscribers.to_string()])
            .args(["--token-ttl-secs", &spec.token_ttl_secs.to_string()])
            .arg("--out")
            .arg(&fixture_path)
            .env_remove("NEULBI_DATABASE_URL")
            .output()
            .with_context(|| format!("running {} dev bench-fixture", binary.display()))?;
        if !out.status.success() {
            bail!(
                "neulbi dev bench-fixture failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        eprintln!(
            "  neulbi fixture: {} rooms in {:.1} s",
            spec.rooms,
            started.elapsed().as_secs_f64()
        );
        let fixture: Fixture = serde_json::from_slice(&std::fs::read(&fixture_path)?)
            .context("reading the fixture")?;
        let log = std::fs::File::create(dir.path().join("neulbi.log"))?;
        let child = Command::new(binary)
            .arg("--config")
            .arg(&config)
            .arg("serve")
            .env_remove("NEULBI_DATABASE_URL")
            .env("NEULBI_CHAT_SENDS_PER_SECOND", SENDS_PER_SECOND.to_string())
            .env("NEULBI_CHAT_SEND_BURST", SEND_BURST.to_string())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {} serve", binary.display()))?;
        let mut server = NeulbiProcess { child, addr, dir };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = server.child.try_wait()? {
                bail!("neulbi serve exited ({status}):\n{}", server.log());
            }
            if http_status(addr, "/readyz") == Some(200) {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "neulbi serve not ready within {START_TIMEOUT:?}:\n{}",
                    server.log()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok((server, fixture))
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The last part of the server's log.
    pub fn log(&self) -> String {
        let s = std::fs::read_to_string(self.dir.path().join("neulbi.log")).unwrap_or_default();
        let cut = s.len().saturating_sub(4000);
        s.get(cut..).unwrap_or_default().to_owned()
    }
}

impl Drop for NeulbiProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// RabbitMQ with the Web-STOMP plugin, started by benches/peers/rabbitmq.sh; stopped on drop.
pub struct Rabbit {
    dir: tempfile::TempDir,
    /// The broker's (beam.smp) process id.
    pub pid: u32,
    script: PathBuf,
}

impl Rabbit {
    /// Installs (if missing) and starts the broker; waits until Web-STOMP accepts connections.
    pub fn start() -> anyhow::Result<Self> {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/peers/rabbitmq.sh");
        let dir = tempfile::Builder::new()
            .prefix("rabbitmq-bench")
            .tempdir()
            .context("temp dir for RabbitMQ")?;
        let status = Command::new("bash").arg(&script).arg("install").status()?;
        if !status.success() {
            bail!("{} install failed", script.display());
        }
        let out = Command::new("bash")
            .arg(&script)
            .arg("start")
            .arg(dir.path())
            // A watchdog stops the broker should this process die without dropping `Rabbit`.
            .arg(std::process::id().to_string())
            .stderr(Stdio::inherit())
            .output()?;
        let mut rabbit = Rabbit {
            pid: 0,
            dir,
            script,
        };
        if !out.status.success() {
            bail!("{} start failed", rabbit.script.display());
        }
        rabbit.pid = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .context("rabbitmq.sh start prints the broker's pid")?;
        Ok(rabbit)
    }

    /// The Web-STOMP endpoint.
    pub fn url(&self) -> String {
        "ws://127.0.0.1:15674/ws".into()
    }
}

impl Drop for Rabbit {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(&self.script)
            .arg("stop")
            .arg(self.dir.path())
            .status();
    }
}

/// Neulbi in this process (the smoke run): the application on 127.0.0.1:0 in its own actix
/// system on a thread, with the fixture made through its registries.
pub struct InProcess {
    /// Where it listens.
    pub addr: SocketAddr,
    handle: actix_web::dev::ServerHandle,
    thread: Option<std::thread::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl InProcess {
    /// Starts the application and creates the fixture.
    pub fn start(spec: FixtureSpec) -> anyhow::Result<(Self, Fixture)> {
        let dir = tempfile::tempdir()?;
        let mut config = neulbi::config::Config {
            listen: "127.0.0.1:0".parse()?,
            data_dir: dir.path().to_owned(),
            ..neulbi::config::Config::default()
        };
        config.auth.seed_demo_users = Some(false);
        config.chat.sends_per_second = SENDS_PER_SECOND;
        config.chat.send_burst = SEND_BURST;
        config.chat.max_outbound = MAX_OUTBOUND;
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            actix_web::rt::System::new().block_on(async move {
                let started = async {
                    let app = neulbi::startup::Application::build(&config).await?;
                    let state = app.state();
                    let fixture = neulbi::tools::bench_fixture::create(
                        &state.users,
                        &state.rooms,
                        &app.auth(),
                        spec,
                    )
                    .await?;
                    anyhow::Ok((app, fixture))
                };
                match started.await {
                    Ok((app, fixture)) => {
                        let _ = tx.send(Ok((app.local_addr(), app.handle(), fixture)));
                        let _ = app.run_until_stopped().await;
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e));
                    }
                }
            })
        });
        let (addr, handle, fixture) = rx.recv().context("the in-process server thread ended")??;
        // The read model of members must know the new rooms before SUBSCRIBE asks.
        let deadline = Instant::now() + START_TIMEOUT;
        while http_status(addr, "/readyz") != Some(200) {
            if Instant::now() > deadline {
                bail!("in-process Neulbi not ready");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok((
            InProcess {
                addr,
                handle,
                thread: Some(thread),
                _dir: dir,
            },
            fixture,
        ))
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        let stopped = self.handle.stop(true);
        futures::executor::block_on(stopped);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// CPU time (user + system) process `pid` has used so far, in seconds.
pub fn cpu_secs(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start at state, field 3.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    // Clock ticks; 100 per second on Linux.
    Some((utime + stime) / 100.0)
}
