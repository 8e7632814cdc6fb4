//! The `[calls]` section of the configuration: call rules (participants, ring timeout, grace
//! period), signaling limits, and where media listens. Every port and address is a setting;
//! a taken one is a startup error that names the setting. The defaults and what signaling
//! makes of these numbers are in `edge::signaling::settings`.

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;

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
    /// Where browsers reach this node's signaling directly, e.g.
    /// `wss://node-a.neulbi.example/rtc` (`NEULBI_NODE_URL`). Recorded with the calls whose
    /// media this node holds, so a join that lands on another node is redirected here. Unset
    /// (single node, or nodes only reachable through one balancer): the redirect names the
    /// node but carries no URL.
    pub node_url: Option<String>,
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

impl CallSettings {
    /// Applies `NEULBI_CALL_*`, `NEULBI_MEDIA_UDP`, `NEULBI_NODE` and
    /// `NEULBI_SIGNALING_*` variables read through `get`.
    pub fn apply_env(&mut self, get: &impl Fn(&str) -> Option<String>) -> Result<(), String> {
        crate::env_value::env_numbers!(
            get,
            "NEULBI_CALL_MAX_PARTICIPANTS" => self.max_participants,
            "NEULBI_CALL_RING_TIMEOUT_SECS" => self.ring_timeout_secs,
            "NEULBI_CALL_GRACE_SECS" => self.grace_secs,
            "NEULBI_CALL_STALL_SECS" => self.stall_secs,
            "NEULBI_SIGNALING_MAX_MESSAGE_BYTES" => self.max_message_bytes,
        );
        if let Some(v) = get("NEULBI_NODE").filter(|v| !v.trim().is_empty()) {
            self.node = v.trim().to_owned();
        }
        if let Some(v) = get("NEULBI_NODE_URL") {
            let v = v.trim();
            self.node_url = (!v.is_empty()).then(|| v.to_owned());
        }
        if let Some(v) = get("NEULBI_MEDIA_UDP") {
            self.media_udp = crate::env_value::env_list("NEULBI_MEDIA_UDP", &v, "IP:PORT")?;
        }
        if let Some(v) = get("NEULBI_MEDIA_PUBLIC_IPS") {
            self.media_public_ips =
                crate::env_value::env_list("NEULBI_MEDIA_PUBLIC_IPS", &v, "an IP address")?;
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

    /// Checks `node_url` before anything is bound, so a typo stops the start with the setting's
    /// name instead of sending browsers to a URL they cannot open.
    pub fn check_node_url(&self) -> Result<(), String> {
        let Some(url) = &self.node_url else {
            return Ok(());
        };
        let problem = match oauth2::url::Url::parse(url) {
            Err(e) => Some(e.to_string()),
            Ok(u) if !matches!(u.scheme(), "ws" | "wss") => {
                Some("the scheme must be ws or wss".to_owned())
            }
            Ok(u) if u.host_str().is_none() => Some("no host".to_owned()),
            Ok(u) if !u.username().is_empty() || u.password().is_some() => {
                Some("no credentials in the URL".to_owned())
            }
            Ok(u) if u.query().is_some() || u.fragment().is_some() => {
                Some("no query or fragment (tokens never travel in URLs)".to_owned())
            }
            Ok(_) if url.chars().count() > neulbi_domain::call_session::NODE_URL_MAX_CHARS => {
                Some(format!(
                    "longer than {} characters",
                    neulbi_domain::call_session::NODE_URL_MAX_CHARS
                ))
            }
            Ok(_) => None,
        };
        match problem {
            Some(p) => Err(format!(
                "calls.node_url / NEULBI_NODE_URL {url:?} is not a signaling URL browsers can open: {p} (e.g. wss://node-a.example.org/rtc)"
            )),
            None => Ok(()),
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
    fn node_url_comes_from_the_env_and_must_be_a_websocket_url() {
        let mut s = CallSettings::default();
        assert_eq!(s.node_url, None);
        assert!(s.check_node_url().is_ok());
        s.apply_env(&|k| (k == "NEULBI_NODE_URL").then(|| " wss://node-a.example.org/rtc ".into()))
            .expect("env");
        assert_eq!(s.node_url.as_deref(), Some("wss://node-a.example.org/rtc"));
        assert!(s.check_node_url().is_ok());
        for bad in [
            "https://node-a.example.org/rtc",
            "wss://node-a.example.org/rtc?token=x",
            "wss://user:pw@node-a.example.org/rtc",
            "node-a:8080",
        ] {
            s.node_url = Some(bad.into());
            let err = s.check_node_url().expect_err(bad);
            assert!(err.contains("NEULBI_NODE_URL"), "{err}");
        }
        s.apply_env(&|k| (k == "NEULBI_NODE_URL").then(String::new))
            .expect("env");
        assert_eq!(s.node_url, None, "an empty value unsets it");
    }
}
