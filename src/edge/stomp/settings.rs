//! What the STOMP edge makes of the `[chat]` settings (`config::chat`): its defaults, and the
//! codec limits and session settings in force.

pub use crate::config::chat::{ChatSettings, SockJsSettings};

use super::codec::Limits;
use super::session::SessionConfig;
use std::time::Duration;

impl Default for ChatSettings {
    fn default() -> Self {
        let limits = Limits::default();
        let session = SessionConfig::default();
        Self {
            allowed_origins: Vec::new(),
            max_frame_bytes: limits.max_frame_bytes,
            max_body_bytes: limits.max_body,
            max_headers: limits.max_headers,
            max_subscriptions: session.max_subscriptions,
            max_outbound: session.max_outbound,
            heartbeat_send_secs: session.heartbeat_send.as_secs(),
            heartbeat_receive_secs: session.heartbeat_receive.as_secs(),
            connect_timeout_secs: session.connect_timeout.as_secs(),
            send_burst: session.send_burst,
            sends_per_second: session.sends_per_second,
            max_unacked: session.max_unacked,
            max_transactions: session.max_transactions,
            max_transaction_frames: session.max_transaction_frames,
            max_catch_up: session.max_catch_up,
            sockjs: SockJsSettings::default(),
        }
    }
}

impl ChatSettings {
    /// The codec limits in force (never zero).
    pub fn limits(&self) -> Limits {
        let defaults = Limits::default();
        Limits {
            max_frame_bytes: self.max_frame_bytes.max(1024),
            max_headers: self.max_headers.max(8),
            max_header_line: defaults.max_header_line,
            max_body: self.max_body_bytes.min(self.max_frame_bytes).max(1),
        }
    }

    /// The session settings in force.
    pub fn session(&self) -> SessionConfig {
        SessionConfig {
            max_subscriptions: self.max_subscriptions.max(1),
            max_outbound: self.max_outbound.max(1),
            heartbeat_send: Duration::from_secs(self.heartbeat_send_secs),
            heartbeat_receive: Duration::from_secs(self.heartbeat_receive_secs),
            connect_timeout: Duration::from_secs(self.connect_timeout_secs.max(1)),
            send_burst: self.send_burst.max(1),
            sends_per_second: self.sends_per_second.max(1),
            // The driver swaps in the broker's node-wide limiter.
            send_limiter: super::limiter::SendLimiter::default(),
            max_unacked: self.max_unacked.max(1),
            max_transactions: self.max_transactions,
            max_transaction_frames: self.max_transaction_frames.max(1),
            max_catch_up: self.max_catch_up.max(1),
        }
    }

    /// The transport settings in force.
    pub fn stomp_config(&self) -> super::websocket::StompConfig {
        super::websocket::StompConfig {
            limits: self.limits(),
            session: self.session(),
            allowed_origins: self.allowed_origins.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_bounded_and_env_overrides() {
        let mut s = ChatSettings::default();
        assert!(s.allowed_origins.is_empty(), "no origin but the page's own");
        assert!(!s.sockjs.test_services);
        s.apply_env(&|k: &str| match k {
            "NEULBI_CHAT_ALLOWED_ORIGINS" => Some("https://a.example/, https://b.example".into()),
            "NEULBI_CHAT_SENDS_PER_SECOND" => Some("9".into()),
            "NEULBI_CHAT_MAX_CATCH_UP" => Some("50".into()),
            "NEULBI_SOCKJS_ENABLED" => Some("false".into()),
            _ => None,
        })
        .expect("env");
        assert_eq!(
            s.allowed_origins,
            ["https://a.example", "https://b.example"]
        );
        assert_eq!(s.session().sends_per_second, 9);
        assert_eq!(s.max_catch_up, 50);
        assert!(!s.sockjs.enabled);
        let err = s
            .apply_env(&|k: &str| (k == "NEULBI_CHAT_SEND_BURST").then(|| "lots".into()))
            .expect_err("not a number");
        assert!(err.contains("NEULBI_CHAT_SEND_BURST"), "{err}");
    }
}
