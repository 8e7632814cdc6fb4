//! A throwaway PostgreSQL server per test: `initdb` + `pg_ctl` into a temp dir, on a free
//! loopback port, stopped when dropped. PostgreSQL refuses to run as root, so as root the
//! server runs as the `postgres` user the Debian package creates.
//!
//! A missing PostgreSQL installation is a test failure with instructions, never a skip.

use std::path::{Path, PathBuf};
use std::process::Command;

pub struct TempPostgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    as_postgres: bool,
    /// The `postgres` options it was started with (to start it again alike).
    opts: String,
}

fn find_bin_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("NEULBI_PG_BIN") {
        return PathBuf::from(dir);
    }
    let mut candidates: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    candidates.sort();
    match candidates.pop() {
        Some((_, bin)) => bin,
        None => panic!(
            "PostgreSQL server binaries (initdb, pg_ctl) not found under /usr/lib/postgresql: \
             install the `postgresql` package (bash .ci/run does) or set NEULBI_PG_BIN"
        ),
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// A TCP port on 127.0.0.1 nobody listens on right now (the OS's pick), for a component
/// that must be told its port before it starts.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl TempPostgres {
    /// Starts a new server tuned for tests (no fsync); panics with the server log if it does
    /// not come up.
    pub fn start() -> Self {
        Self::start_with("-c fsync=off")
    }

    /// Starts a new server with extra `postgres` options (e.g. `-c fsync=on` for benchmarks).
    pub fn start_with(extra_options: &str) -> Self {
        let bin = find_bin_dir();
        let as_postgres = is_root();
        let dir = tempfile::Builder::new()
            .prefix("neulbi-pg-")
            .tempdir()
            .expect("temp dir");
        if as_postgres {
            run(Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path()));
        }
        let mut pg = Self {
            dir,
            bin,
            port: 0,
            as_postgres,
            opts: String::new(),
        };
        let data = pg.data_dir();
        pg.pg(
            "initdb",
            &[
                "-D",
                path_str(&data),
                "-U",
                "neulbi",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
                "--no-instructions",
            ],
        );
        // A port can be taken between probing and binding; try a few.
        for attempt in 0..5 {
            pg.port = free_port();
            let opts = format!(
                "-p {} -k {} -c listen_addresses=127.0.0.1 -c max_connections=100 {extra_options}",
                pg.port,
                path_str(pg.dir.path())
            );
            let log = pg.dir.path().join("server.log");
            if pg.pg_ctl_start(&opts) {
                pg.opts = opts;
                return pg;
            }
            if attempt == 4 {
                let log = std::fs::read_to_string(&log).unwrap_or_default();
                panic!("PostgreSQL did not start:\n{log}");
            }
        }
        unreachable!()
    }

    /// The URL of the server's default database.
    pub fn url(&self) -> String {
        format!("postgres://neulbi@127.0.0.1:{}/postgres", self.port)
    }

    /// Stops the server with a fast shutdown (clients are disconnected), as a restart does.
    pub fn stop(&self) {
        let data = self.data_dir();
        self.pg(
            "pg_ctl",
            &["-D", path_str(&data), "-m", "fast", "-w", "stop"],
        );
    }

    /// Starts the stopped server again, on the same port with the same options.
    pub fn start_again(&self) {
        assert!(
            self.pg_ctl_start(&self.opts),
            "PostgreSQL did not start again"
        );
    }

    /// `pg_ctl start` with `opts`, waiting up to 60 s; false if it did not start.
    fn pg_ctl_start(&self, opts: &str) -> bool {
        let data = self.data_dir();
        let log = self.dir.path().join("server.log");
        self.pg_status(
            "pg_ctl",
            &[
                "-D",
                path_str(&data),
                "-l",
                path_str(&log),
                "-w",
                "-t",
                "60",
                "-o",
                opts,
                "start",
            ],
        )
    }

    /// The server's data directory (for raw scans of tables and WAL).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn command(&self, tool: &str) -> Command {
        let exe = self.bin.join(tool);
        if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(exe);
            c
        } else {
            Command::new(exe)
        }
    }

    fn pg(&self, tool: &str, args: &[&str]) {
        run(self.command(tool).args(args));
    }

    fn pg_status(&self, tool: &str, args: &[&str]) -> bool {
        self.command(tool)
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    }
}

impl Drop for TempPostgres {
    fn drop(&mut self) {
        let data = self.data_dir();
        let _ = self.pg_status(
            "pg_ctl",
            &["-D", path_str(&data), "-m", "immediate", "-w", "stop"],
        );
    }
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("temp paths are UTF-8")
}

fn run(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
