//! The `[calls]` section of the configuration: call rules (participants, ring timeout, grace
//! period), signaling limits, and where media listens. Every port and address is a setting;
//! a taken one is a startup error that names the setting.

use super::session::SessionConfig;
use neulbi_domain::call_session::CallPolicy;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::time::Duration;

/// Call and signaling settings (`[calls]`, `NEULBI_CALL_*`, `NEULBI_MEDIA_*`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CallSettings {
    /// Most people in one call, the requester included (`NEULBI_CALL_MAX_PARTICIPANTS`).
    pub max_participants: u8,
    /// Seconds invitees are rung before the call ends unanswered
    /// (`NEULBI_CALL_RING_TIMEOUT_SECS`).
    pub ring_timeout_secs: u32,
    /// Seconds a dropped participant may take to come back (`NEULBI_CALL_GRACE_SECS`).
    pub grace_secs: u32,
    /// Seconds without RTP from a publisher before the others are told its media stalled
    /// (`NEULBI_CALL_STALL_SECS`).
    pub stall_secs: u64,
    /// This node's name in `MediaNodeAssigned` (`NEULBI_NODE`).
    pub node: String,
    /// Seconds a signaling connection may take to send `auth`.
    pub auth_timeout_secs: u64,
    /// Largest signaling message, in bytes (`NEULBI_SIGNALING_MAX_MESSAGE_BYTES`).
    pub max_message_bytes: usize,
    /// Signaling messages per second one connection may sustain.
    pub messages_per_sec: u32,
    /// Signaling messages one connection may send in a burst.
    pub burst: u32,
    /// Addresses the media (ICE host candidates) binds, as `IP:PORT` (port 0: any free port)
    /// (`NEULBI_MEDIA_UDP`, comma separated). Empty: the HTTP listen address's IP, port 0.
    /// Never a wildcard: the WebRTC stack skips loopback when it expands one, and a wildcard
    /// would offer every interface of the machine.
    pub media_udp: Vec<SocketAddr>,
    /// The public address browsers reach each `media_udp` address at, behind 1:1 NAT (a cloud
    /// VM's public IP, a container host's IP) (`NEULBI_MEDIA_PUBLIC_IPS`, comma separated, in
    /// the same order). Empty: the bound addresses are advertised as they are.
    pub media_public_ips: Vec<std::net::IpAddr>,
    /// STUN/TURN URLs handed to clients as they are (`NEULBI_CALL_ICE_URLS`, comma separated),
    /// besides the TURN server's own.
    pub ice_urls: Vec<String>,
}

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
    /// Applies `NEULBI_CALL_*`, `NEULBI_MEDIA_UDP`, `NEULBI_NODE` and
    /// `NEULBI_SIGNALING_*` variables read through `get`.
    pub fn apply_env(&mut self, get: &impl Fn(&str) -> Option<String>) -> Result<(), String> {
        macro_rules! numbers {
            ($($var:literal => $field:expr),* $(,)?) => {
                $(if let Some(v) = get($var) {
                    $field = crate::config::env_num($var, &v)?;
                })*
            };
        }
        numbers!(
            "NEULBI_CALL_MAX_PARTICIPANTS" => self.max_participants,
            "NEULBI_CALL_RING_TIMEOUT_SECS" => self.ring_timeout_secs,
            "NEULBI_CALL_GRACE_SECS" => self.grace_secs,
            "NEULBI_CALL_STALL_SECS" => self.stall_secs,
            "NEULBI_SIGNALING_MAX_MESSAGE_BYTES" => self.max_message_bytes,
        );
        if let Some(v) = get("NEULBI_NODE").filter(|v| !v.trim().is_empty()) {
            self.node = v.trim().to_owned();
        }
        if let Some(v) = get("NEULBI_MEDIA_UDP") {
            self.media_udp = crate::config::env_list("NEULBI_MEDIA_UDP", &v, "IP:PORT")?;
        }
        if let Some(v) = get("NEULBI_MEDIA_PUBLIC_IPS") {
            self.media_public_ips =
                crate::config::env_list("NEULBI_MEDIA_PUBLIC_IPS", &v, "an IP address")?;
        }
        if let Some(v) = get("NEULBI_CALL_ICE_URLS") {
            self.ice_urls = v
                .split(',')
                .map(|u| u.trim().to_owned())
                .filter(|u| !u.is_empty())
                .collect();
        }
        Ok(())
    }

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

    /// Where media binds: the configured addresses, or `listen`'s IP on any free port.
    pub fn media_addrs(&self, listen: SocketAddr) -> Vec<SocketAddr> {
        if self.media_udp.is_empty() {
            vec![SocketAddr::new(listen.ip(), 0)]
        } else {
            self.media_udp.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
