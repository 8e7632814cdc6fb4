//! Routes deliveries from the event log's live feed to the connections of this node: room
//! messages to `/topic/rooms.{id}` subscribers, and room-list changes to the members' own
//! `/user/queue/rooms`. Deliveries come from the log (not from the sender's connection), so an
//! event appended on another node reaches local subscribers the same way.
//!
//! Each connection has one bounded queue. A connection whose queue is full is dropped from the
//! broker, which closes its queue; the connection then ends as a slow consumer instead of
//! letting the server buffer without bound.
//!
//! The broker is also the node-wide place for what all STOMP connections share: the per-user
//! SEND budget ([`SendLimiter`]) and the shutdown signal that closes every connection.

use super::limiter::SendLimiter;
use super::session::{Delivery, Topic};
use crate::projections::ReadDb;
use crate::store::{RecordedEvent, SharedStore};
use futures::StreamExt;
use neulbi_domain::chat_room::RoomEvent;
use neulbi_domain::{RoomId, StreamKind, UserId};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use tokio::sync::{mpsc, watch};

/// Identifies one connection inside the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnId(u64);

#[derive(Default)]
struct Routes {
    /// Each registered connection's queue.
    queues: HashMap<ConnId, mpsc::Sender<Arc<Delivery>>>,
    /// Per topic, the connections and how many of their subscriptions point at it.
    topics: HashMap<Topic, HashMap<ConnId, usize>>,
    /// How many of `topics` are `/user/queue/rooms` ones (none: room-list pushes are skipped).
    user_queues: usize,
}

/// Room members as last seen, so a room event is routed to members' queues without asking the
/// read model each time (membership changes arrive on the same feed). Bounded: an entry goes
/// when the room closes, when no `/user/queue/rooms` subscriber is left on this node, or
/// (least recently used first) when the map is full.
struct MemberCache {
    rooms: HashMap<RoomId, (Vec<UserId>, u64)>,
    tick: u64,
    capacity: usize,
}

/// Rooms whose membership is cached at once.
const MEMBER_CACHE_ROOMS: usize = 4096;

impl MemberCache {
    fn get(&mut self, room: RoomId) -> Option<Vec<UserId>> {
        self.tick += 1;
        let tick = self.tick;
        self.rooms.get_mut(&room).map(|(members, used)| {
            *used = tick;
            members.clone()
        })
    }

    fn put(&mut self, room: RoomId, members: Vec<UserId>) {
        self.tick += 1;
        if !self.rooms.contains_key(&room)
            && self.rooms.len() >= self.capacity
            && let Some(oldest) = self
                .rooms
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(r, _)| *r)
        {
            self.rooms.remove(&oldest);
        }
        self.rooms.insert(room, (members, self.tick));
    }
}

/// The node-local fan-out of deliveries.
pub struct Broker {
    routes: Mutex<Routes>,
    next: AtomicU64,
    limiter: SendLimiter,
    shutdown: watch::Sender<bool>,
    members: Mutex<MemberCache>,
    /// Membership of rooms first seen after they opened (before this node started).
    read: Option<ReadDb>,
    /// Call events for this node's signaling connections (the same live feed).
    calls: Arc<crate::edge::signaling::hub::CallHub>,
}

impl Default for Broker {
    fn default() -> Self {
        Self::new(None)
    }
}

impl Broker {
    fn new(read: Option<ReadDb>) -> Self {
        Self {
            routes: Mutex::default(),
            next: AtomicU64::new(0),
            limiter: SendLimiter::default(),
            shutdown: watch::channel(false).0,
            members: Mutex::new(MemberCache {
                rooms: HashMap::new(),
                tick: 0,
                capacity: MEMBER_CACHE_ROOMS,
            }),
            read,
            calls: Arc::default(),
        }
    }

    /// The fan-out of call events to this node's signaling connections.
    pub fn call_hub(&self) -> Arc<crate::edge::signaling::hub::CallHub> {
        self.calls.clone()
    }

    /// A broker fed by `store`'s live feed from the current head on, asking `read` for the
    /// members of rooms opened before that; the feed task ends when the broker is dropped,
    /// and resubscribes where it stopped if the feed fails.
    pub async fn start(store: SharedStore, read: Option<ReadDb>) -> Arc<Self> {
        let broker = Arc::new(Self::new(read));
        let from = store
            .head_position()
            .await
            .ok()
            .flatten()
            .map_or(0, |h| h + 1);
        let weak = Arc::downgrade(&broker);
        crate::lanes::spawn(crate::lanes::Lane::Deliveries, feed(store, from, weak));
        broker
    }

    /// The node-wide per-user SEND budget every session on this node shares.
    pub fn send_limiter(&self) -> SendLimiter {
        self.limiter.clone()
    }

    /// Tells every connection (present and future) that the server is stopping; each sends
    /// ERROR and closes, so graceful shutdown is not held open by idle sockets.
    pub fn shutdown(&self) {
        self.shutdown.send_replace(true);
    }

    /// Becomes `true` once [`Broker::shutdown`] was called.
    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    /// Registers a connection with a queue of `capacity` deliveries.
    pub fn register(&self, capacity: usize) -> (ConnId, mpsc::Receiver<Arc<Delivery>>) {
        let id = ConnId(self.next.fetch_add(1, Ordering::Relaxed));
        let (tx, rx) = mpsc::channel(capacity.max(1));
        self.routes().queues.insert(id, tx);
        (id, rx)
    }

    /// Routes `topic` to `conn` (once more, for one more subscription).
    pub fn join(&self, conn: ConnId, topic: Topic) {
        let mut routes = self.routes();
        if routes.queues.contains_key(&conn) {
            if matches!(topic, Topic::UserRooms(_)) && !routes.topics.contains_key(&topic) {
                routes.user_queues += 1;
            }
            *routes
                .topics
                .entry(topic)
                .or_default()
                .entry(conn)
                .or_default() += 1;
        }
    }

    /// Undoes one [`Broker::join`].
    pub fn leave(&self, conn: ConnId, topic: Topic) {
        let mut routes = self.routes();
        if let Some(members) = routes.topics.get_mut(&topic) {
            if let Some(n) = members.get_mut(&conn) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    members.remove(&conn);
                }
            }
            if members.is_empty() {
                routes.topics.remove(&topic);
                if matches!(topic, Topic::UserRooms(_)) {
                    routes.user_queues = routes.user_queues.saturating_sub(1);
                }
            }
        }
    }

    /// Forgets a connection (it closed, or it was too slow).
    pub fn unregister(&self, conn: ConnId) {
        let mut routes = self.routes();
        let Routes {
            queues,
            topics,
            user_queues,
        } = &mut *routes;
        queues.remove(&conn);
        topics.retain(|topic, members| {
            members.remove(&conn);
            let keep = !members.is_empty();
            if !keep && matches!(topic, Topic::UserRooms(_)) {
                *user_queues = user_queues.saturating_sub(1);
            }
            keep
        });
    }

    /// Queues `delivery` for every connection subscribed to its topic; drops the full ones.
    pub fn publish(&self, delivery: Arc<Delivery>) {
        let mut slow = Vec::new();
        {
            let routes = self.routes();
            let Some(members) = routes.topics.get(&delivery.topic) else {
                return;
            };
            let _span = tracing::debug_span!(
                "stomp.deliver",
                topic = topic_kind(delivery.topic),
                position = delivery.position,
                connections = members.len()
            )
            .entered();
            for conn in members.keys() {
                if let Some(queue) = routes.queues.get(conn)
                    && queue.try_send(delivery.clone()).is_err()
                {
                    slow.push(*conn);
                }
            }
        }
        for conn in slow {
            tracing::debug!("STOMP broker: a slow consumer was dropped");
            self.unregister(conn);
        }
    }

    /// Routes one event of the log.
    async fn on_event(&self, event: &RecordedEvent) {
        if event.stream.kind() == StreamKind::Call {
            self.on_call_event(event);
            return;
        }
        if event.stream.kind() != StreamKind::Room {
            return;
        }
        let Ok(room_event) = crate::actors::codec::decode::<RoomEvent>(event) else {
            return;
        };
        let room = RoomId::from_uuid(event.stream.id());
        if let Some(mut delivery) = message_delivery(room, &room_event, event.position) {
            delivery.traceparent = trace_of(event);
            self.publish(Arc::new(delivery));
        }
        self.push_room_change(room, &room_event, event.position)
            .await;
    }

    /// Routes one call event to the call's signaling connections and, when it is news for a
    /// party's phone, to their `/user/queue/calls`.
    fn on_call_event(&self, event: &RecordedEvent) {
        use crate::edge::signaling::hub::{CallNews, user_push};
        use neulbi_domain::call_session::CallEvent;
        let Ok(call_event) = crate::actors::codec::decode::<CallEvent>(event) else {
            return;
        };
        let call = event.stream.id();
        let push = self.calls.publish(CallNews {
            call,
            position: event.position,
            event: call_event.clone(),
        });
        let Some((room, parties)) = push else {
            return;
        };
        let Some(body) = user_push(call, room, &call_event) else {
            return;
        };
        let body = body.to_string().into_bytes();
        let traceparent = trace_of(event);
        for user in parties {
            let topic = Topic::UserCalls(user);
            if self.routes().topics.contains_key(&topic) {
                self.publish(Arc::new(Delivery {
                    topic,
                    message_id: format!("call-{call}-{}", event.position),
                    position: event.position,
                    body: body.clone(),
                    content_type: "application/json",
                    traceparent: traceparent.clone(),
                }));
            }
        }
    }

    /// Pushes a room-list change to every member with a local `/user/queue/rooms` subscriber.
    async fn push_room_change(&self, room: RoomId, event: &RoomEvent, position: u64) {
        if !self.any_user_queue() {
            self.members_cache().rooms.clear();
            return;
        }
        let cached = match event {
            RoomEvent::Opened {
                client, counselor, ..
            } => Some(vec![*client, *counselor]),
            _ => self.members_cache().get(room),
        };
        let mut members = match cached {
            Some(members) => members,
            None => match self.load_members(room).await {
                Some(members) => members,
                // Unknown to the read model (yet): nothing to push, and nothing cached, so
                // the next event asks again.
                None => return,
            },
        };
        for &user in &members {
            if self.has_user_queue(user)
                && let Some(delivery) = room_change(room, event, position, user)
            {
                self.publish(Arc::new(delivery));
            }
        }
        if let RoomEvent::MemberLeft { user_id, .. } = event {
            members.retain(|u| u != user_id);
        }
        let mut cache = self.members_cache();
        if !matches!(event, RoomEvent::Closed { .. }) {
            cache.put(room, members);
        } else {
            cache.rooms.remove(&room);
        }
    }

    /// The room's current members from the read model (rooms opened before this node's feed
    /// started); `None` if there is no read model, it cannot be asked, or it does not know the
    /// room yet (it trails the log).
    async fn load_members(&self, room: RoomId) -> Option<Vec<UserId>> {
        let read = self.read.as_ref()?;
        match crate::projections::queries::room_members(read, &room.to_string()).await {
            Ok(ids) => {
                let members: Vec<UserId> = ids.iter().filter_map(|id| id.parse().ok()).collect();
                (!members.is_empty()).then_some(members)
            }
            Err(error) => {
                tracing::warn!(%error, %room, "STOMP broker: room members could not be read");
                None
            }
        }
    }

    fn has_user_queue(&self, user: UserId) -> bool {
        self.routes().topics.contains_key(&Topic::UserRooms(user))
    }

    fn any_user_queue(&self) -> bool {
        self.routes().user_queues > 0
    }

    fn routes(&self) -> std::sync::MutexGuard<'_, Routes> {
        // The maps stay consistent even if a holder panicked: every update is one insert or
        // remove.
        self.routes.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn members_cache(&self) -> std::sync::MutexGuard<'_, MemberCache> {
        self.members.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The trace an event continues, for its deliveries (nothing unless spans are exported).
fn trace_of(event: &RecordedEvent) -> Option<Arc<str>> {
    event
        .metadata
        .traceparent
        .as_deref()
        .filter(|_| crate::telemetry::exporting())
        .map(Arc::from)
}

/// A topic's kind for spans (never an id of a person).
fn topic_kind(topic: Topic) -> &'static str {
    match topic {
        Topic::Room(_) => "room",
        Topic::UserRooms(_) => "user_rooms",
        Topic::UserCalls(_) => "user_calls",
    }
}

/// The MESSAGE for `/topic/rooms.{roomId}` of a recorded `MessagePosted`, if it is one; also
/// used to replay a room's history for a catch-up, so both read the same shape.
pub(crate) fn delivery_of(event: &RecordedEvent) -> Option<Delivery> {
    if event.stream.kind() != StreamKind::Room || event.event_type != "MessagePosted" {
        return None;
    }
    let room_event = crate::actors::codec::decode::<RoomEvent>(event).ok()?;
    message_delivery(
        RoomId::from_uuid(event.stream.id()),
        &room_event,
        event.position,
    )
}

/// The JSON body of a MESSAGE on `/topic/rooms.{roomId}`.
fn message_delivery(room: RoomId, event: &RoomEvent, position: u64) -> Option<Delivery> {
    let RoomEvent::MessagePosted {
        message_id,
        author,
        body,
        client_message_id,
        at,
    } = event
    else {
        return None;
    };
    let json = serde_json::json!({
        "id": message_id,
        "roomId": room,
        "authorId": author,
        "body": body.value(),
        "clientMessageId": client_message_id,
        "at": at,
        "position": position,
    });
    Some(Delivery {
        topic: Topic::Room(room),
        message_id: message_id.to_string(),
        position,
        body: json.to_string().into_bytes(),
        content_type: "application/json",
        traceparent: None,
    })
}

/// The `/user/queue/rooms` push for member `user` about a room event, if it concerns them.
/// Only ids, times and counts: never a message body.
fn room_change(room: RoomId, event: &RoomEvent, position: u64, user: UserId) -> Option<Delivery> {
    let json = match event {
        RoomEvent::Opened {
            client,
            counselor,
            at,
            ..
        } => serde_json::json!({
            "type": "opened",
            "roomId": room,
            "clientId": client,
            "counselorId": counselor,
            "at": at,
        }),
        RoomEvent::MessagePosted {
            message_id,
            author,
            at,
            ..
        } => serde_json::json!({
            "type": "message",
            "roomId": room,
            "messageId": message_id,
            "authorId": author,
            "at": at,
            "unread": *author != user,
        }),
        // To the reader (their unread count is now zero) and to the others (a read marker
        // under their messages).
        RoomEvent::MessageRead { reader, up_to, at } => serde_json::json!({
            "type": "read",
            "roomId": room,
            "readerId": reader,
            "upTo": up_to,
            "at": at,
            "mine": *reader == user,
        }),
        RoomEvent::MemberLeft { user_id, at } => serde_json::json!({
            "type": "left",
            "roomId": room,
            "userId": user_id,
            "at": at,
        }),
        RoomEvent::Closed { at, .. } => serde_json::json!({
            "type": "closed",
            "roomId": room,
            "at": at,
        }),
    };
    Some(Delivery {
        topic: Topic::UserRooms(user),
        message_id: format!("rooms-{position}"),
        position,
        body: json.to_string().into_bytes(),
        content_type: "application/json",
        traceparent: None,
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
                    broker.on_event(&event).await;
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
    use chrono::Utc;
    use neulbi_domain::MessageId;
    use uuid::Uuid;

    fn delivery(room: RoomId) -> Arc<Delivery> {
        Arc::new(Delivery {
            topic: Topic::Room(room),
            message_id: "m".into(),
            position: 1,
            body: Vec::new(),
            content_type: "application/json",
            traceparent: None,
        })
    }

    #[test]
    fn routes_only_to_joined_topics_and_drops_slow_consumers() {
        let broker = Broker::default();
        let a = Topic::Room(RoomId::from_uuid(Uuid::from_u128(1)));
        let b = RoomId::from_uuid(Uuid::from_u128(2));
        let (c1, mut r1) = broker.register(1);
        let (c2, mut r2) = broker.register(8);
        broker.join(c1, a);
        broker.join(c2, Topic::Room(b));
        let Topic::Room(a_room) = a else {
            unreachable!()
        };
        broker.publish(delivery(a_room));
        assert!(r1.try_recv().is_ok());
        assert!(r2.try_recv().is_err());
        // c1's queue holds one; the second publish overflows it and c1 is dropped.
        broker.publish(delivery(a_room));
        broker.publish(delivery(a_room));
        assert!(r1.try_recv().is_ok());
        assert!(matches!(
            r1.try_recv(),
            Err(mpsc::error::TryRecvError::Disconnected)
        ));
        broker.leave(c2, Topic::Room(b));
        broker.publish(delivery(b));
        assert!(r2.try_recv().is_err());
        let me = Topic::UserRooms(UserId::from_uuid(Uuid::from_u128(9)));
        broker.join(c2, me);
        broker.join(c2, me);
        assert!(broker.any_user_queue());
        broker.leave(c2, me);
        assert!(broker.any_user_queue(), "one subscription left");
        broker.unregister(c2);
        assert!(!broker.any_user_queue());
        assert!(broker.routes().topics.is_empty());
        assert!(broker.routes().queues.is_empty());
    }

    #[test]
    fn room_changes_carry_no_body_and_reach_only_whom_they_concern() {
        let room = RoomId::from_uuid(Uuid::from_u128(1));
        let (me, other) = (
            UserId::from_uuid(Uuid::from_u128(2)),
            UserId::from_uuid(Uuid::from_u128(3)),
        );
        let message = MessageId::from_uuid(Uuid::from_u128(4));
        let posted = RoomEvent::MessagePosted {
            message_id: message,
            author: other,
            body: neulbi_domain::Personal::new(other, "secret text".to_owned()),
            client_message_id: None,
            at: Utc::now(),
        };
        let push = room_change(room, &posted, 9, me).expect("a push");
        assert_eq!(push.topic, Topic::UserRooms(me));
        let text = String::from_utf8(push.body).expect("utf8");
        assert!(!text.contains("secret"), "{text}");
        let json: serde_json::Value = serde_json::from_str(&text).expect("json");
        assert_eq!(json["type"], "message");
        assert_eq!(json["unread"], true);
        assert_eq!(json["messageId"], message.to_string());
        let own = room_change(room, &posted, 9, other).expect("a push");
        let json: serde_json::Value = serde_json::from_slice(&own.body).expect("json");
        assert_eq!(json["unread"], false, "one's own message is not unread");
        let read = RoomEvent::MessageRead {
            reader: me,
            up_to: message,
            at: Utc::now(),
        };
        let json: serde_json::Value =
            serde_json::from_slice(&room_change(room, &read, 10, me).expect("push").body)
                .expect("json");
        assert_eq!(json["type"], "read");
        assert_eq!(json["upTo"], message.to_string());
        assert_eq!(json["mine"], true);
        // The author sees the read marker: who read, up to which message.
        let json: serde_json::Value =
            serde_json::from_slice(&room_change(room, &read, 10, other).expect("push").body)
                .expect("json");
        assert_eq!(json["readerId"], me.to_string());
        assert_eq!(json["mine"], false);
    }

    #[test]
    fn member_cache_is_bounded() {
        let mut cache = MemberCache {
            rooms: HashMap::new(),
            tick: 0,
            capacity: 2,
        };
        let room = |n| RoomId::from_uuid(Uuid::from_u128(n));
        cache.put(room(1), Vec::new());
        cache.put(room(2), Vec::new());
        assert!(cache.get(room(1)).is_some());
        cache.put(room(3), Vec::new());
        assert_eq!(cache.rooms.len(), 2);
        assert!(cache.get(room(2)).is_none(), "least recently used goes");
    }

    #[tokio::test]
    async fn shutdown_is_seen_by_present_and_later_receivers() {
        let broker = Broker::default();
        let mut early = broker.shutdown_signal();
        broker.shutdown();
        assert!(early.wait_for(|s| *s).await.is_ok());
        assert!(*broker.shutdown_signal().borrow());
    }
}
