//! Where STOMP frames point: the destinations clients name, parsed once at the edge, and the
//! topics the broker routes deliveries by.

use neulbi_domain::{RoomId, UserId};

/// What a subscription listens to; the broker routes deliveries by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Topic {
    /// A room's messages (`/topic/rooms.{roomId}`).
    Room(RoomId),
    /// One user's room-list changes (`/user/queue/rooms`, resolved to the connected user).
    UserRooms(UserId),
    /// One user's call invitations and call state changes (`/user/queue/calls`).
    UserCalls(UserId),
}

impl Topic {
    /// The destination the client subscribed to, for MESSAGE frames.
    pub fn to_wire(self) -> String {
        match self {
            Topic::Room(room) => Destination::RoomTopic(room).to_wire(),
            Topic::UserRooms(_) => Destination::UserRooms.to_wire(),
            Topic::UserCalls(_) => Destination::UserCalls.to_wire(),
        }
    }
}

/// Where a frame points, parsed once at the edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    /// `/topic/rooms.{roomId}`: a room's messages (subscribe only).
    RoomTopic(RoomId),
    /// `/app/rooms.{roomId}.send`: post to a room (send only).
    RoomSend(RoomId),
    /// `/app/rooms.{roomId}.read`: move my read marker (send only).
    RoomRead(RoomId),
    /// `/user/queue/rooms`: my room-list changes (subscribe only).
    UserRooms,
    /// `/user/queue/calls`: calls ringing me and how they go (subscribe only).
    UserCalls,
}

impl Destination {
    /// Parses a destination header; anything else is not routable here.
    pub fn parse(value: &str) -> Option<Self> {
        if value == "/user/queue/rooms" {
            return Some(Destination::UserRooms);
        }
        if value == "/user/queue/calls" {
            return Some(Destination::UserCalls);
        }
        if let Some(id) = value.strip_prefix("/topic/rooms.") {
            return id.parse().ok().map(Destination::RoomTopic);
        }
        let rest = value.strip_prefix("/app/rooms.")?;
        if let Some(id) = rest.strip_suffix(".send") {
            return id.parse().ok().map(Destination::RoomSend);
        }
        let id = rest.strip_suffix(".read")?;
        id.parse().ok().map(Destination::RoomRead)
    }

    /// The wire form, for MESSAGE frames.
    pub fn to_wire(self) -> String {
        match self {
            Destination::RoomTopic(room) => format!("/topic/rooms.{room}"),
            Destination::RoomSend(room) => format!("/app/rooms.{room}.send"),
            Destination::RoomRead(room) => format!("/app/rooms.{room}.read"),
            Destination::UserRooms => "/user/queue/rooms".to_owned(),
            Destination::UserCalls => "/user/queue/calls".to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    const ROOM: RoomId = RoomId::from_uuid(Uuid::from_u128(7));

    #[test]
    fn destinations_parse() {
        let room = "00000000-0000-0000-0000-000000000007";
        assert_eq!(
            Destination::parse(&format!("/topic/rooms.{room}")),
            Some(Destination::RoomTopic(ROOM))
        );
        assert_eq!(
            Destination::parse(&format!("/app/rooms.{room}.send")),
            Some(Destination::RoomSend(ROOM))
        );
        assert_eq!(Destination::parse("/topic/rooms.nope"), None);
        assert_eq!(
            Destination::parse("/user/queue/calls"),
            Some(Destination::UserCalls)
        );
        assert_eq!(Destination::parse("/user/someone/queue/calls"), None);
        assert_eq!(Destination::parse(&format!("/app/rooms.{room}")), None);
        assert_eq!(
            Destination::RoomSend(ROOM).to_wire(),
            format!("/app/rooms.{room}.send")
        );
    }
}
