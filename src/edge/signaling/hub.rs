//! The node-local fan-out of call events: every event of a `call-{uuid}` stream, read from the
//! log's live feed, goes to the signaling connections of that call on this node, and the
//! events that concern a party's phone (ringing, accepted, declined, ended) become pushes on
//! their `/user/queue/calls`. Deliveries come from the log, not from the sender's connection,
//! so what one participant does reaches the others exactly as it was recorded.

use neulbi_domain::call_session::CallEvent;
use neulbi_domain::{RoomId, UserId};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;
use uuid::Uuid;

/// One recorded call event, as delivered to the call's connections.
#[derive(Debug, Clone)]
pub struct CallNews {
    /// The call.
    pub call: Uuid,
    /// The event's global position.
    pub position: u64,
    /// The event.
    pub event: CallEvent,
}

/// Identifies one connection's registration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Listener(u64);

/// Calls whose parties are remembered for `/user/queue/calls` pushes.
const PARTY_CACHE_CALLS: usize = 4096;

#[derive(Default)]
struct Parties {
    calls: HashMap<Uuid, (RoomId, Vec<UserId>, u64)>,
    tick: u64,
}

/// Each call's connections and their queues.
type Listeners = HashMap<Uuid, HashMap<Listener, mpsc::Sender<Arc<CallNews>>>>;

/// Routes call events to the connections in each call.
#[derive(Default)]
pub struct CallHub {
    listeners: Mutex<Listeners>,
    parties: Mutex<Parties>,
    next: AtomicU64,
}

impl CallHub {
    /// Registers a connection for `call`'s events, with a queue of `capacity`.
    pub fn register(
        &self,
        call: Uuid,
        capacity: usize,
    ) -> (Listener, mpsc::Receiver<Arc<CallNews>>) {
        let id = Listener(self.next.fetch_add(1, Ordering::Relaxed));
        let (tx, rx) = mpsc::channel(capacity.max(1));
        self.lock().entry(call).or_default().insert(id, tx);
        (id, rx)
    }

    /// Forgets a registration.
    pub fn unregister(&self, call: Uuid, id: Listener) {
        let mut listeners = self.lock();
        if let Some(conns) = listeners.get_mut(&call) {
            conns.remove(&id);
            if conns.is_empty() {
                listeners.remove(&call);
            }
        }
    }

    /// How many connections listen to `call` on this node.
    pub fn listeners(&self, call: Uuid) -> usize {
        self.lock().get(&call).map_or(0, HashMap::len)
    }

    /// Delivers one event of `call` to its connections. A connection whose queue is full is
    /// dropped from the hub (its queue closes and it ends), as the chat broker does with a
    /// slow consumer. Returns the call's room and parties when known, for the user pushes.
    pub fn publish(&self, news: CallNews) -> Option<(RoomId, Vec<UserId>)> {
        let parties = self.remember(&news);
        let news = Arc::new(news);
        let mut listeners = self.lock();
        if let Some(conns) = listeners.get_mut(&news.call) {
            let _span = tracing::debug_span!(
                "call.deliver",
                position = news.position,
                connections = conns.len()
            )
            .entered();
            conns.retain(|_, queue| queue.try_send(news.clone()).is_ok());
            if conns.is_empty() {
                listeners.remove(&news.call);
            }
        }
        parties
    }

    /// Keeps each call's room and parties from its `Requested` until it is over.
    fn remember(&self, news: &CallNews) -> Option<(RoomId, Vec<UserId>)> {
        let mut parties = self.parties.lock().unwrap_or_else(|p| p.into_inner());
        parties.tick += 1;
        let tick = parties.tick;
        if let CallEvent::Requested {
            room_id,
            requested_by,
            invitees,
            ..
        } = &news.event
        {
            if parties.calls.len() >= PARTY_CACHE_CALLS
                && let Some(oldest) = parties
                    .calls
                    .iter()
                    .min_by_key(|(_, (_, _, used))| *used)
                    .map(|(c, _)| *c)
            {
                parties.calls.remove(&oldest);
            }
            let mut all = vec![*requested_by];
            all.extend(invitees.iter().copied());
            parties.calls.insert(news.call, (*room_id, all, tick));
        }
        let found = parties
            .calls
            .get_mut(&news.call)
            .map(|(room, users, used)| {
                *used = tick;
                (*room, users.clone())
            });
        if matches!(news.event, CallEvent::Ended { .. }) {
            parties.calls.remove(&news.call);
        }
        found
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Listeners> {
        // Single inserts and removals: a poisoned lock still holds a consistent map.
        self.listeners.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The `/user/queue/calls` body for `event`, if it is news for a party's phone: ids, times
/// and reasons only, never personal data.
pub fn user_push(call: Uuid, room: RoomId, event: &CallEvent) -> Option<serde_json::Value> {
    let value = match event {
        CallEvent::Requested {
            requested_by,
            invitees,
            policy,
            at,
            ..
        } => serde_json::json!({
            "type": "ringing",
            "call_id": call,
            "room_id": room,
            "from": requested_by,
            "invitees": invitees,
            "ring_timeout_secs": policy.ring_timeout_secs,
            "at": at,
        }),
        CallEvent::Accepted { by, at } => serde_json::json!({
            "type": "accepted", "call_id": call, "room_id": room, "by": by, "at": at,
        }),
        CallEvent::Declined { by, at } => serde_json::json!({
            "type": "declined", "call_id": call, "room_id": room, "by": by, "at": at,
        }),
        CallEvent::Ended {
            reason,
            duration_secs,
            at,
        } => serde_json::json!({
            "type": "ended",
            "call_id": call,
            "room_id": room,
            "reason": reason,
            "duration_secs": duration_secs,
            "at": at,
        }),
        _ => return None,
    };
    Some(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use neulbi_domain::call_session::CallPolicy;

    fn news(call: Uuid, position: u64, event: CallEvent) -> CallNews {
        CallNews {
            call,
            position,
            event,
        }
    }

    #[test]
    fn events_reach_the_calls_listeners_only() {
        let hub = CallHub::default();
        let (a, b) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let (_, mut rx_a) = hub.register(a, 4);
        let (_, mut rx_b) = hub.register(b, 4);
        let at = chrono::DateTime::UNIX_EPOCH;
        let user = UserId::from_uuid(Uuid::from_u128(9));
        hub.publish(news(
            a,
            1,
            CallEvent::EmojiSent {
                by: user,
                emoji: "👍".into(),
                at,
            },
        ));
        assert_eq!(rx_a.try_recv().map(|n| n.position).ok(), Some(1));
        assert!(rx_b.try_recv().is_err());
    }

    #[test]
    fn a_full_queue_drops_its_listener() {
        let hub = CallHub::default();
        let call = Uuid::from_u128(1);
        let (_, _rx) = hub.register(call, 1);
        let at = chrono::DateTime::UNIX_EPOCH;
        let user = UserId::from_uuid(Uuid::from_u128(9));
        let event = CallEvent::EmojiSent {
            by: user,
            emoji: "👍".into(),
            at,
        };
        hub.publish(news(call, 1, event.clone()));
        assert_eq!(hub.listeners(call), 1);
        hub.publish(news(call, 2, event));
        assert_eq!(hub.listeners(call), 0);
    }

    #[test]
    fn parties_are_known_from_the_request_until_the_end() {
        let hub = CallHub::default();
        let call = Uuid::from_u128(1);
        let room = RoomId::from_uuid(Uuid::from_u128(5));
        let (caller, callee) = (
            UserId::from_uuid(Uuid::from_u128(7)),
            UserId::from_uuid(Uuid::from_u128(8)),
        );
        let at = chrono::DateTime::UNIX_EPOCH;
        let requested = CallEvent::Requested {
            call_id: neulbi_domain::CallId::from_uuid(call),
            room_id: room,
            requested_by: caller,
            invitees: vec![callee],
            policy: CallPolicy::default(),
            at,
        };
        let parties = hub.publish(news(call, 1, requested.clone()));
        assert_eq!(parties, Some((room, vec![caller, callee])));
        let push = user_push(call, room, &requested).expect("ringing is news");
        assert_eq!(push["type"], "ringing");
        assert_eq!(push["from"], caller.to_string());
        let ended = CallEvent::Ended {
            reason: "hangup".into(),
            duration_secs: 3,
            at,
        };
        assert!(hub.publish(news(call, 2, ended)).is_some());
        let emoji = CallEvent::EmojiSent {
            by: caller,
            emoji: "👍".into(),
            at,
        };
        assert_eq!(
            hub.publish(news(call, 3, emoji.clone())),
            None,
            "forgotten after the end"
        );
        assert!(
            user_push(call, room, &emoji).is_none(),
            "reactions are not phone news"
        );
    }
}
