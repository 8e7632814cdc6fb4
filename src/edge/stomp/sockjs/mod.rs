//! SockJS (protocol 0.3.3) at `/chat`: the fallback transports for browsers and proxies that
//! cannot keep a WebSocket open. Each SockJS session runs one STOMP connection through the
//! same [`drive`](super::driver::drive) loop as the raw WebSocket; this module only moves
//! messages. `framing` holds the wire format, `session` the session rules and registry,
//! `app` what runs inside a session, `routes` the actix handlers.

pub mod app;
pub mod framing;
pub mod routes;
pub mod session;

use super::settings::{ChatSettings, SockJsSettings};
use super::websocket::StompConfig;
use session::{Registry, Slots};
use std::sync::Arc;
use std::time::Duration;

/// The SockJS state of one node: settings, the HTTP sessions and the session limit.
pub struct SockJs {
    /// Timers, limits and switches of `[chat.sockjs]`.
    pub settings: SockJsSettings,
    /// What STOMP sessions inside SockJS sessions run with.
    pub stomp: StompConfig,
    /// HTTP-transport sessions by id.
    pub registry: Registry,
    /// Open sessions (all transports) against `max_sessions`.
    pub slots: Arc<Slots>,
}

impl SockJs {
    /// The node's SockJS state from the `[chat]` settings.
    pub fn new(chat: &ChatSettings) -> Self {
        Self {
            settings: chat.sockjs.clone(),
            stomp: chat.stomp_config(),
            registry: Registry::default(),
            slots: Slots::new(chat.sockjs.max_sessions.max(1)),
        }
    }

    /// Largest `xhr_send`/`jsonp_send` body or websocket message: a few STOMP frames, which
    /// sockjs-client batches while a send is in flight.
    pub fn max_message_bytes(&self) -> usize {
        self.stomp.limits.max_frame_bytes.saturating_mul(4)
    }

    /// Messages queued for a client before its application waits (and then ends as a slow
    /// consumer).
    pub fn max_outbound(&self) -> usize {
        self.stomp.session.max_outbound.max(1)
    }

    /// Between `h` frames on an idle receiving connection.
    pub fn heartbeat(&self) -> Duration {
        Duration::from_secs(self.settings.heartbeat_secs.max(1))
    }

    /// How long a session lives without a receiving connection.
    pub fn disconnect_delay(&self) -> Duration {
        Duration::from_secs(self.settings.disconnect_delay_secs.max(1))
    }
}
