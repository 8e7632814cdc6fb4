//! The state every request handler, STOMP and signaling session shares: the store, the actor
//! registries and the read models. Its own module below both `startup` (which builds it) and
//! the edge (which uses it), so neither imports the other.

use crate::actors::Registry;
use crate::config::Config;
use crate::projections::{self, ReadDb};
use crate::store::SharedStore;
use neulbi_domain::call_session::CallSessionDecider;
use neulbi_domain::chat_room::ChatRoomDecider;
use neulbi_domain::user::UserDecider;
use std::sync::Arc;

/// What every request handler can reach: the store and the actor registries.
pub struct AppState {
    /// The event log.
    pub store: SharedStore,
    /// User aggregates.
    pub users: Registry<UserDecider>,
    /// Chat-room aggregates.
    pub rooms: Registry<ChatRoomDecider>,
    /// Call-session aggregates.
    pub calls: Registry<CallSessionDecider>,
    /// The URL browsers use to reach this node.
    pub public_url: String,
    /// The read models.
    pub read: ReadDb,
    /// The running projectors (readiness).
    pub projections: Arc<projections::runtime::Running>,
    /// Call rules and signaling limits.
    pub call_settings: crate::edge::signaling::settings::CallSettings,
}

impl AppState {
    /// Registries over `store` with the configured actor settings.
    pub fn new(
        store: SharedStore,
        config: &Config,
        public_url: String,
        read: ReadDb,
        projections: Arc<projections::runtime::Running>,
    ) -> Self {
        let rc = config.registry_config();
        Self {
            users: Registry::new(store.clone(), rc),
            rooms: Registry::new(store.clone(), rc),
            calls: Registry::new(store.clone(), rc),
            store,
            public_url,
            read,
            projections,
            call_settings: config.calls.clone(),
        }
    }
}
