//! The `[chat]` section of the configuration: STOMP limits, heart-beats, allowed origins and
//! the SockJS transport's timers. Every value a client could push against has a bound here,
//! and the defaults are safe for a public deployment (they come from the STOMP edge's own
//! defaults: `edge::stomp::settings`, which also turns these numbers into its limits).

use serde::{Deserialize, Serialize};

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
        crate::env_value::env_numbers!(
            get,
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
}
