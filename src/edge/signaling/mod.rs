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
use crate::media::turn::{IceCredentials, TurnServer, TurnSettings};
use settings::CallSettings;
use std::time::SystemTime;

/// What every signaling connection on this node shares.
pub struct Signaling {
    /// The media layer.
    pub sfu: Sfu,
    /// Call rules, limits, node name, ICE URLs.
    pub settings: CallSettings,
    /// Browser origins allowed besides the page's own (the chat's setting).
    pub allowed_origins: Vec<String>,
    /// Where clients get TURN credentials, if anywhere.
    pub turn: Turn,
}

/// The TURN relay handed to clients with each join.
pub enum Turn {
    /// None configured: host candidates (and `calls.ice_urls`) only.
    None,
    /// The embedded server of this node.
    Embedded(TurnServer),
    /// An external server (coturn) sharing the REST secret.
    External(TurnSettings),
}

impl Turn {
    fn credentials(&self, user: &str, now: SystemTime) -> Option<IceCredentials> {
        match self {
            Turn::None => None,
            Turn::Embedded(server) => Some(server.credentials(user, now)),
            Turn::External(settings) => settings.external_credentials(user, now),
        }
    }
}

impl Signaling {
    /// The ICE servers a client in a call should use.
    /// Short-lived TURN credentials are minted per join for this user, so a leaked one
    /// expires on its own and names whom it was given to.
    pub fn ice_servers(&self, user: uuid::Uuid) -> Vec<protocol::IceServer> {
        let mut servers: Vec<protocol::IceServer> = self
            .settings
            .ice_urls
            .iter()
            .map(|url| protocol::IceServer {
                urls: vec![url.clone()],
                username: None,
                credential: None,
            })
            .collect();
        if let Some(creds) = self.turn.credentials(&user.to_string(), SystemTime::now()) {
            servers.push(protocol::IceServer {
                urls: creds.urls,
                username: Some(creds.username),
                credential: Some(creds.credential),
            });
        }
        servers
    }
}
