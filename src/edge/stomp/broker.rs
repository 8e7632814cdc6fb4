//! Routes room messages from the event log's live feed to the connections of this node that
//! subscribed to the room. Deliveries come from the log (not from the sender's connection), so
//! a message posted on another node reaches local subscribers the same way.
//!
//! Each connection has one bounded queue. A connection whose queue is full is dropped from the
//! broker, which closes its queue; the connection then ends as a slow consumer instead of
//! letting the server buffer without bound.

use super::session::Delivery;
use crate::store::{RecordedEvent, SharedStore};
use futures::StreamExt;
use neulbi_domain::chat_room::RoomEvent;
use neulbi_domain::{RoomId, StreamKind};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use tokio::sync::mpsc;

/// Identifies one connection inside the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnId(u64);

#[derive(Default)]
struct Routes {
    /// Each registered connection's queue.
    queues: HashMap<ConnId, mpsc::Sender<Arc<Delivery>>>,
    /// Per room, the connections and how many of their subscriptions point at it.
    rooms: HashMap<RoomId, HashMap<ConnId, usize>>,
}

/// The node-local fan-out of room messages.
#[derive(Default)]
pub struct Broker {
    routes: Mutex<Routes>,
    next: AtomicU64,
}

impl Broker {
    /// A broker fed by `store`'s live feed from the current head on; the feed task ends when
    /// the broker is dropped, and resubscribes where it stopped if the feed fails.
    pub async fn start(store: SharedStore) -> Arc<Self> {
        let broker = Arc::new(Self::default());
        let from = store
            .head_position()
            .await
            .ok()
            .flatten()
            .map_or(0, |h| h + 1);
        let weak = Arc::downgrade(&broker);
        tokio::spawn(feed(store, from, weak));
        broker
    }

    /// Registers a connection with a queue of `capacity` deliveries.
    pub fn register(&self, capacity: usize) -> (ConnId, mpsc::Receiver<Arc<Delivery>>) {
        let id = ConnId(self.next.fetch_add(1, Ordering::Relaxed));
        let (tx, rx) = mpsc::channel(capacity.max(1));
        self.routes().queues.insert(id, tx);
        (id, rx)
    }

    /// Routes `room` to `conn` (once more, for one more subscription).
    pub fn join(&self, conn: ConnId, room: RoomId) {
        let mut routes = self.routes();
        if routes.queues.contains_key(&conn) {
            *routes
                .rooms
                .entry(room)
                .or_default()
                .entry(conn)
                .or_default() += 1;
        }
    }

    /// Undoes one [`Broker::join`].
    pub fn leave(&self, conn: ConnId, room: RoomId) {
        let mut routes = self.routes();
        if let Some(members) = routes.rooms.get_mut(&room) {
            if let Some(n) = members.get_mut(&conn) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    members.remove(&conn);
                }
            }
            if members.is_empty() {
                routes.rooms.remove(&room);
            }
        }
    }

    /// Forgets a connection (it closed, or it was too slow).
    pub fn unregister(&self, conn: ConnId) {
        let mut routes = self.routes();
        routes.queues.remove(&conn);
        routes.rooms.retain(|_, members| {
            members.remove(&conn);
            !members.is_empty()
        });
    }

    /// Queues `delivery` for every connection subscribed to its room; drops the full ones.
    pub fn publish(&self, delivery: Arc<Delivery>) {
        let mut slow = Vec::new();
        {
            let routes = self.routes();
            let Some(members) = routes.rooms.get(&delivery.room) else {
                return;
            };
            for conn in members.keys() {
                if let Some(queue) = routes.queues.get(conn)
                    && queue.try_send(delivery.clone()).is_err()
                {
                    slow.push(*conn);
                }
            }
        }
        for conn in slow {
            self.unregister(conn);
        }
    }

    fn routes(&self) -> std::sync::MutexGuard<'_, Routes> {
        // The maps stay consistent even if a holder panicked: every update is one insert or
        // remove.
        self.routes.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The JSON body of a MESSAGE on `/topic/rooms.{roomId}`.
fn delivery_of(event: &RecordedEvent) -> Option<Delivery> {
    if event.stream.kind() != StreamKind::Room || event.event_type != "MessagePosted" {
        return None;
    }
    let RoomEvent::MessagePosted {
        message_id,
        author,
        body,
        client_message_id,
        at,
    } = crate::actors::codec::decode::<RoomEvent>(event).ok()?
    else {
        return None;
    };
    let room = RoomId::from_uuid(event.stream.id());
    let json = serde_json::json!({
        "id": message_id,
        "roomId": room,
        "authorId": author,
        "body": body.value(),
        "clientMessageId": client_message_id,
        "at": at,
        "position": event.position,
    });
    Some(Delivery {
        room,
        message_id: message_id.to_string(),
        body: json.to_string().into_bytes(),
        content_type: "application/json",
    })
}

/// Follows the log from `from`; after a feed error it resubscribes from the next position
/// (after a pause), so a database hiccup delays deliveries instead of ending them.
async fn feed(store: SharedStore, mut from: u64, broker: Weak<Broker>) {
    loop {
        let mut events = store.subscribe_all(from);
        while let Some(next) = events.next().await {
            let Some(broker) = broker.upgrade() else {
                return;
            };
            match next {
                Ok(event) => {
                    from = event.position + 1;
                    if let Some(delivery) = delivery_of(&event) {
                        broker.publish(Arc::new(delivery));
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "STOMP broker: live feed failed; resubscribing");
                    break;
                }
            }
        }
        if broker.strong_count() == 0 {
            return;
        }
        tokio::time::sleep(FEED_RETRY).await;
    }
}

/// The pause before resubscribing to the live feed after it failed or ended.
const FEED_RETRY: std::time::Duration = std::time::Duration::from_secs(1);

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    fn delivery(room: RoomId) -> Arc<Delivery> {
        Arc::new(Delivery {
            room,
            message_id: "m".into(),
            body: Vec::new(),
            content_type: "application/json",
        })
    }

    #[test]
    fn routes_only_to_joined_rooms_and_drops_slow_consumers() {
        let broker = Broker::default();
        let a = RoomId::from_uuid(Uuid::from_u128(1));
        let b = RoomId::from_uuid(Uuid::from_u128(2));
        let (c1, mut r1) = broker.register(1);
        let (c2, mut r2) = broker.register(8);
        broker.join(c1, a);
        broker.join(c2, b);
        broker.publish(delivery(a));
        assert!(r1.try_recv().is_ok());
        assert!(r2.try_recv().is_err());
        // c1's queue holds one; the second publish overflows it and c1 is dropped.
        broker.publish(delivery(a));
        broker.publish(delivery(a));
        assert!(r1.try_recv().is_ok());
        assert!(matches!(
            r1.try_recv(),
            Err(mpsc::error::TryRecvError::Disconnected)
        ));
        broker.leave(c2, b);
        broker.publish(delivery(b));
        assert!(r2.try_recv().is_err());
        broker.unregister(c2);
        assert!(broker.routes().rooms.is_empty());
        assert!(broker.routes().queues.is_empty());
    }
}
