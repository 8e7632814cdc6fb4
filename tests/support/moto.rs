//! A throwaway S3-compatible server (moto's server mode) on 127.0.0.1, per test. `.ci/run`
//! installs it into `tests/e2e/.venv`; a missing server fails the test, it never skips.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Moto {
    child: Child,
    pub addr: SocketAddr,
}

impl Moto {
    /// Starts `moto_server` on a free loopback port and waits until it accepts connections.
    pub fn start() -> Self {
        let venv =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/e2e/.venv/bin/moto_server");
        let program = if venv.exists() {
            venv
        } else {
            PathBuf::from("moto_server")
        };
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let child = Command::new(&program)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {} ({e}); run .ci/run or \
                     `python3 -m venv tests/e2e/.venv && tests/e2e/.venv/bin/pip install 'moto[server]'`",
                    program.display()
                )
            });
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut moto = Self { child, addr };
        let deadline = Instant::now() + Duration::from_secs(60);
        while TcpStream::connect(addr).is_err() {
            if let Ok(Some(status)) = moto.child.try_wait() {
                panic!("moto_server exited early: {status}");
            }
            assert!(Instant::now() < deadline, "moto_server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        moto
    }

    /// The endpoint URL for the S3 client.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// S3 settings pointing at this server, with moto's accepted dummy credentials.
    pub fn settings(&self, bucket: &str) -> neulbi::blob::S3Settings {
        neulbi::blob::S3Settings {
            endpoint: Some(self.endpoint()),
            region: "us-east-1".into(),
            bucket: bucket.into(),
            path_style: true,
            presign_ttl_secs: 300,
            timeout_secs: 5,
            access_key_id: Some("testing".into()),
            secret_access_key: Some("testing".into()),
        }
    }

    /// Stops the server now (to simulate S3 being down).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        self.stop();
    }
}
