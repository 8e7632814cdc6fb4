//! The `[chat]` section of the configuration: STOMP limits, heart-beats, allowed origins and
//! the SockJS transport's timers. Every value a client could push against has a bound here,
//! and the defaults are safe for a public deployment.

use super::codec::Limits;
use super::session::SessionConfig;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Chat edge settings (`[chat]`, `NEULBI_CHAT_*`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ChatSettings {
    /// Browser origins allowed besides the page's own (`NEULBI_CHAT_ALLOWED_ORIGINS`, comma
    /// separated). `*` allows every origin and must be configured explicitly.
    pub allowed_origins: Vec<String>,
    /// Largest STOMP frame in bytes, headers included.
    pub max_frame_bytes: usize,
    /// Largest STOMP body in bytes.
    pub max_body_bytes: usize,
    /// Headers in one frame.
    pub max_headers: usize,
    /// Subscriptions one session may hold.
    pub max_subscriptions: usize,
    /// Frames queued for one client before it is disconnected as a slow consumer.
    pub max_outbound: usize,
    /// Seconds between server heart-beats the server offers (0: none).
    pub heartbeat_send_secs: u64,
    /// Seconds between client heart-beats the server asks for (0: none).
    pub heartbeat_receive_secs: u64,
    /// Seconds a connection may take to send CONNECT.
    pub connect_timeout_secs: u64,
    /// SENDs one user may make in a burst, across all of their sessions.
    pub send_burst: u32,
    /// SENDs per second one user may sustain, across all of their sessions.
    pub sends_per_second: u32,
    /// Unacknowledged MESSAGEs one `client`/`client-individual` subscription may have before
    /// the client is closed as a slow consumer.
    pub max_unacked: usize,
    /// Transactions (BEGIN without COMMIT/ABORT yet) one session may have open.
    pub max_transactions: usize,
    /// SEND/ACK/NACK frames one transaction may buffer.
    pub max_transaction_frames: usize,
    /// Most missed messages a SUBSCRIBE with `since-message-id` replays; more → ERROR asking
    /// the client to page `GET /rooms/{id}/messages`.
    pub max_catch_up: usize,
    /// The SockJS transports at `/chat`.
    pub sockjs: SockJsSettings,
}

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

/// SockJS session timers and limits (`[chat.sockjs]`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SockJsSettings {
    /// Serve SockJS at `/chat` at all.
    pub enabled: bool,
    /// Seconds between `h` frames on an idle receiving connection (proxies close silent ones).
    pub heartbeat_secs: u64,
    /// Seconds a session lives without a receiving connection before it is closed.
    pub disconnect_delay_secs: u64,
    /// Bytes a streaming response carries before the client is told to open a new one.
    pub response_limit_bytes: usize,
    /// Whether `/chat/info` tells clients a sticky-session cookie is needed (load balancers).
    pub cookie_needed: bool,
    /// Test only: also serve the SockJS protocol test services (`/echo`, `/close`,
    /// `/disabled_websocket_echo`, `/cookie_needed_echo`) for conformance suites.
    pub test_services: bool,
    /// SockJS sessions (all transports) one node holds at most; more are refused with 503.
    pub max_sessions: usize,
}

impl Default for SockJsSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            heartbeat_secs: 25,
            disconnect_delay_secs: 5,
            response_limit_bytes: 128 * 1024,
            cookie_needed: false,
            test_services: false,
            max_sessions: 10_000,
        }
    }
}

impl ChatSettings {
    /// Applies `NEULBI_CHAT_*` variables read through `get`.
    pub fn apply_env(&mut self, get: &impl Fn(&str) -> Option<String>) -> Result<(), String> {
        if let Some(v) = get("NEULBI_CHAT_ALLOWED_ORIGINS") {
            self.allowed_origins = v
                .split(',')
                .map(|o| o.trim().trim_end_matches('/').to_owned())
                .filter(|o| !o.is_empty())
                .collect();
        }
        // Each numeric setting, by its variable.
        macro_rules! numbers {
            ($($var:literal => $field:expr),* $(,)?) => {
                $(if let Some(v) = get($var) {
                    $field = crate::config::env_num($var, &v)?;
                })*
            };
        }
        numbers!(
            "NEULBI_CHAT_MAX_FRAME_BYTES" => self.max_frame_bytes,
            "NEULBI_CHAT_MAX_BODY_BYTES" => self.max_body_bytes,
            "NEULBI_CHAT_MAX_SUBSCRIPTIONS" => self.max_subscriptions,
            "NEULBI_CHAT_MAX_OUTBOUND" => self.max_outbound,
            "NEULBI_CHAT_MAX_UNACKED" => self.max_unacked,
            "NEULBI_CHAT_MAX_TRANSACTIONS" => self.max_transactions,
            "NEULBI_CHAT_MAX_TRANSACTION_FRAMES" => self.max_transaction_frames,
            "NEULBI_CHAT_MAX_CATCH_UP" => self.max_catch_up,
            "NEULBI_CHAT_SENDS_PER_SECOND" => self.sends_per_second,
            "NEULBI_CHAT_SEND_BURST" => self.send_burst,
            "NEULBI_CHAT_HEARTBEAT_SEND_SECS" => self.heartbeat_send_secs,
            "NEULBI_CHAT_HEARTBEAT_RECEIVE_SECS" => self.heartbeat_receive_secs,
            "NEULBI_SOCKJS_MAX_SESSIONS" => self.sockjs.max_sessions,
            "NEULBI_SOCKJS_HEARTBEAT_SECS" => self.sockjs.heartbeat_secs,
            "NEULBI_SOCKJS_DISCONNECT_DELAY_SECS" => self.sockjs.disconnect_delay_secs,
        );
        if let Some(v) = get("NEULBI_SOCKJS_ENABLED") {
            self.sockjs.enabled = match v.trim() {
                "true" | "1" => true,
                "false" | "0" => false,
                other => {
                    return Err(format!(
                        "NEULBI_SOCKJS_ENABLED: {other:?} is not true or false"
                    ));
                }
            };
        }
        Ok(())
    }

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
