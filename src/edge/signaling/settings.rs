//! What signaling makes of the `[calls]` settings (`config::calls`): their defaults, the call
//! policy and the signaling session's limits.

pub use crate::config::calls::CallSettings;

use super::session::SessionConfig;
use neulbi_domain::call_session::CallPolicy;
use std::time::Duration;

impl Default for CallSettings {
    fn default() -> Self {
        let policy = CallPolicy::default();
        let session = SessionConfig::default();
        Self {
            max_participants: policy.max_participants,
            ring_timeout_secs: policy.ring_timeout_secs,
            grace_secs: policy.grace_secs,
            stall_secs: 3,
            node: "local".into(),
            node_url: None,
            auth_timeout_secs: session.auth_timeout.as_secs(),
            max_message_bytes: session.max_message_bytes,
            messages_per_sec: session.rate_per_sec,
            burst: session.burst,
            media_udp: Vec::new(),
            media_public_ips: Vec::new(),
            ice_urls: Vec::new(),
        }
    }
}

impl CallSettings {
    /// The rules a new call runs under.
    pub fn policy(&self) -> CallPolicy {
        CallPolicy {
            max_participants: self.max_participants,
            ring_timeout_secs: self.ring_timeout_secs,
            grace_secs: self.grace_secs,
        }
    }

    /// The signaling session's limits.
    pub fn session(&self) -> SessionConfig {
        SessionConfig {
            auth_timeout: Duration::from_secs(self.auth_timeout_secs.max(1)),
            max_message_bytes: self.max_message_bytes.max(1024),
            rate_per_sec: self.messages_per_sec.max(1),
            burst: self.burst.max(1),
            ..SessionConfig::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    #[test]
    fn variables_override_the_defaults() {
        let mut s = CallSettings::default();
        let vars = [
            ("NEULBI_CALL_RING_TIMEOUT_SECS", "5"),
            ("NEULBI_CALL_GRACE_SECS", "7"),
            ("NEULBI_MEDIA_UDP", "127.0.0.1:0, 127.0.0.1:40000"),
            ("NEULBI_NODE", "node-b"),
            ("NEULBI_MEDIA_PUBLIC_IPS", "203.0.113.7"),
        ];
        s.apply_env(&|k| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        })
        .expect("valid");
        assert_eq!(s.policy().ring_timeout_secs, 5);
        assert_eq!(s.policy().grace_secs, 7);
        assert_eq!(s.media_udp.len(), 2);
        assert_eq!(s.node, "node-b");
        assert_eq!(
            s.media_public_ips,
            vec!["203.0.113.7".parse::<std::net::IpAddr>().expect("ip")]
        );
        let bad = s.apply_env(&|k| (k == "NEULBI_MEDIA_UDP").then(|| "nowhere".to_string()));
        assert!(bad.is_err_and(|e| e.contains("NEULBI_MEDIA_UDP")));
    }

    #[test]
    fn media_binds_the_listen_ip_by_default() {
        let s = CallSettings::default();
        let listen: SocketAddr = "127.0.0.1:8080".parse().expect("addr");
        assert_eq!(
            s.media_addrs(listen),
            vec![SocketAddr::from(([127, 0, 0, 1], 0))]
        );
    }
}
