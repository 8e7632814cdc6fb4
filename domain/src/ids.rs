//! Typed identifiers, so a room id can never be passed where a user id is expected.

use serde::{Deserialize, Serialize};
use std::fmt;
use uuid::Uuid;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub Uuid);

        impl $name {
            /// Wraps an existing UUID (ids are generated outside the pure domain).
            pub const fn from_uuid(id: Uuid) -> Self {
                Self(id)
            }

            /// The raw UUID, for storage and stream names.
            pub const fn as_uuid(&self) -> Uuid {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl std::str::FromStr for $name {
            type Err = uuid::Error;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(s).map(Self)
            }
        }
    };
}

id_type!(
    /// Identifies a user (client or counselor); the id of the `user-{id}` stream.
    UserId
);
id_type!(
    /// Identifies a chat room; the id of the `room-{id}` stream.
    RoomId
);
id_type!(
    /// Identifies a call session; the id of the `call-{id}` stream.
    CallId
);
id_type!(
    /// Identifies one chat message inside a room.
    MessageId
);
