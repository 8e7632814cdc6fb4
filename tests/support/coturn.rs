//! A coturn server (Debian `coturn`) a test owns: the external TURN option. Started on free
//! loopback ports with its own config, logs and pid file in the test's temp dir; killed and
//! reaped on drop, even when the test panics. Missing coturn fails the test.

use neulbi::media::turn::PortRange;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio::net::UdpSocket;
use tokio::time::timeout;

/// Relay ports outside Linux's ephemeral range (32768–60999) and the embedded server's.
pub const RELAY_PORTS: PortRange = PortRange {
    min: 63000,
    max: 64999,
};
/// How long coturn may take to answer.
const STEP: Duration = Duration::from_secs(15);

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port)
}

/// A coturn process the test owns; killed (and reaped) on drop, even when the test panics.
pub struct Coturn {
    pub child: Child,
    pub port: u16,
}

impl Drop for Coturn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port free on 127.0.0.1 for both UDP and TCP right now.
fn free_port() -> u16 {
    for _ in 0..50 {
        let udp = std::net::UdpSocket::bind(loopback(0)).expect("probe UDP");
        let port = udp.local_addr().expect("addr").port();
        if std::net::TcpListener::bind(loopback(port)).is_ok() {
            return port;
        }
    }
    panic!("no port free for both UDP and TCP");
}

pub fn start(dir: &Path, secret: &str, realm: &str) -> Coturn {
    let port = free_port();
    let d = dir.display();
    let config = format!(
        "listening-ip=127.0.0.1\n\
         relay-ip=127.0.0.1\n\
         listening-port={port}\n\
         min-port={min}\n\
         max-port={max}\n\
         realm={realm}\n\
         use-auth-secret\n\
         static-auth-secret={secret}\n\
         allow-loopback-peers\n\
         fingerprint\n\
         no-cli\n\
         no-tls\n\
         no-dtls\n\
         no-rfc5780\n\
         no-software-attribute\n\
         userdb={d}/turndb\n\
         pidfile={d}/turnserver.pid\n\
         log-file={d}/turnserver.log\n\
         simple-log\n\
         verbose\n",
        min = RELAY_PORTS.min,
        max = RELAY_PORTS.max,
    );
    let conf = dir.join("turnserver.conf");
    std::fs::write(&conf, config).expect("write coturn config");
    let out = std::fs::File::create(dir.join("stdout.log")).expect("stdout log");
    let err = out.try_clone().expect("stderr log");
    let child = Command::new("turnserver")
        .arg("-c")
        .arg(&conf)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .unwrap_or_else(|e| {
            panic!("coturn is required for this test (Debian package `coturn`): turnserver: {e}")
        });
    Coturn { child, port }
}

pub fn logs(dir: &Path) -> String {
    let mut logs = String::new();
    for f in ["stdout.log", "turnserver.log"] {
        logs.push_str(&format!("--- {f}\n"));
        logs.push_str(&std::fs::read_to_string(dir.join(f)).unwrap_or_default());
    }
    logs
}

/// Waits until coturn answers a STUN Binding request on UDP.
pub async fn wait_ready(coturn: &mut Coturn, dir: &Path) {
    let socket = UdpSocket::bind(loopback(0)).await.expect("probe socket");
    let deadline = Instant::now() + STEP;
    // Binding request: type 0x0001, length 0, magic cookie, transaction id.
    let mut request = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42];
    request.extend_from_slice(b"neulbi-probe");
    let mut buf = [0u8; 512];
    loop {
        if let Ok(Some(status)) = coturn.child.try_wait() {
            panic!("coturn exited early ({status}):\n{}", logs(dir));
        }
        assert!(
            Instant::now() < deadline,
            "coturn did not answer on port {} in time:\n{}",
            coturn.port,
            logs(dir)
        );
        let _ = socket.send_to(&request, loopback(coturn.port)).await;
        if let Ok(Ok((n, _))) =
            timeout(Duration::from_millis(200), socket.recv_from(&mut buf)).await
            && n >= 20
            && buf[0..2] == [0x01, 0x01]
        {
            return;
        }
    }
}
