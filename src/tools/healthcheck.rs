//! `neulbi healthcheck`: asks the node configured here whether it is ready (`GET /readyz`),
//! for container `HEALTHCHECK`s and scripts on images that carry no curl.

use crate::config::Config;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long the probe may take in all.
const LIMIT: Duration = Duration::from_secs(5);

/// Where the probe goes: the metrics listener if there is one (it serves the probes over
/// plain HTTP), else the main listener, on loopback when the node binds every interface.
pub fn probe_addr(config: &Config) -> anyhow::Result<SocketAddr> {
    let addr = match config.metrics_listen {
        Some(at) => at,
        None if config.tls.enabled() => anyhow::bail!(
            "the main listener speaks TLS: set NEULBI_METRICS_LISTEN (e.g. 127.0.0.1:9464), \
             where the node serves /healthz and /readyz over plain HTTP"
        ),
        None => config.listen,
    };
    Ok(match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv4Addr::LOCALHOST.into(), addr.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv6Addr::LOCALHOST.into(), addr.port())
        }
        _ => addr,
    })
}

/// `Ok` when `/readyz` answers 200; otherwise why not, in one line.
pub async fn check(addr: SocketAddr) -> anyhow::Result<()> {
    let probe = async {
        let mut stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| anyhow::anyhow!("{addr}: {e}"))?;
        stream
            .write_all(b"GET /readyz HTTP/1.0\r\nHost: localhost\r\n\r\n")
            .await?;
        let mut answer = Vec::new();
        stream.take(64 * 1024).read_to_end(&mut answer).await?;
        let text = String::from_utf8_lossy(&answer);
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse::<u16>().ok())
            .ok_or_else(|| anyhow::anyhow!("{addr}: not an HTTP answer"))?;
        if status == 200 {
            return Ok(());
        }
        let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b).trim();
        anyhow::bail!("{addr}: not ready ({status}): {body}")
    };
    tokio::time::timeout(LIMIT, probe)
        .await
        .map_err(|_| anyhow::anyhow!("{addr}: no answer within {} s", LIMIT.as_secs()))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_go_to_loopback_and_to_the_metrics_listener_when_there_is_one() {
        let mut c = Config {
            listen: "0.0.0.0:8080".parse().expect("addr"),
            ..Config::default()
        };
        assert_eq!(probe_addr(&c).expect("addr").to_string(), "127.0.0.1:8080");
        c.listen = "[::]:8080".parse().expect("addr");
        assert_eq!(probe_addr(&c).expect("addr").to_string(), "[::1]:8080");
        c.tls.cert_file = Some("/c.pem".into());
        c.tls.key_file = Some("/k.pem".into());
        let err = probe_addr(&c).expect_err("TLS").to_string();
        assert!(err.contains("NEULBI_METRICS_LISTEN"), "{err}");
        c.metrics_listen = Some("127.0.0.1:9464".parse().expect("addr"));
        assert_eq!(probe_addr(&c).expect("addr").to_string(), "127.0.0.1:9464");
    }
}
