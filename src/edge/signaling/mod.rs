//! WebRTC signaling at `/rtc`: a WebSocket per participant carrying JSON messages (the
//! schema is in [`protocol`] and `docs/architecture.md`). [`session`] holds the protocol's
//! rules as a sans-IO state machine; [`driver`] moves messages between the socket, the call
//! actor, the media layer and the [`hub`] of call events from the log.

pub mod driver;
pub mod hub;
pub mod protocol;
pub mod session;
pub mod settings;

use crate::media::Sfu;
use settings::CallSettings;

/// What every signaling connection on this node shares.
pub struct Signaling {
    /// The media layer.
    pub sfu: Sfu,
    /// Call rules, limits, node name, ICE URLs.
    pub settings: CallSettings,
    /// Browser origins allowed besides the page's own (the chat's setting).
    pub allowed_origins: Vec<String>,
}

impl Signaling {
    /// The ICE servers a client in a call should use.
    pub fn ice_servers(&self, _user: uuid::Uuid) -> Vec<protocol::IceServer> {
        self.settings
            .ice_urls
            .iter()
            .map(|url| protocol::IceServer {
                urls: vec![url.clone()],
                username: None,
                credential: None,
            })
            .collect()
    }
}
