//! Stream names: `{kind}-{uuid}`. Parsed at the edge so a malformed name never reaches the store.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use thiserror::Error;
use uuid::Uuid;

/// The kinds of aggregate that own a stream; the prefix of every stream name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StreamKind {
    /// `user-{uuid}`: one person's account, profile and sessions.
    User,
    /// `room-{uuid}`: a chat room between a client and a counselor.
    Room,
    /// `call-{uuid}`: one video counseling session.
    Call,
    /// `system-{uuid}`: the installation's security journal, one stream per day.
    System,
}

impl StreamKind {
    /// Every kind, for tools that list or validate categories.
    pub const ALL: [StreamKind; 4] = [
        StreamKind::User,
        StreamKind::Room,
        StreamKind::Call,
        StreamKind::System,
    ];

    /// The prefix used in stream names.
    pub const fn prefix(self) -> &'static str {
        match self {
            StreamKind::User => "user",
            StreamKind::Room => "room",
            StreamKind::Call => "call",
            StreamKind::System => "system",
        }
    }
}

impl fmt::Display for StreamKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.prefix())
    }
}

/// Why a string is not a valid stream name.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum StreamNameError {
    /// The part before the first `-` is not a known aggregate kind.
    #[error("unknown stream kind {0:?} (expected one of user, room, call, system)")]
    UnknownKind(String),
    /// The id after the kind is not a UUID.
    #[error("malformed stream id {0:?}: expected a UUID")]
    MalformedId(String),
    /// There is no `-` separating kind and id.
    #[error("malformed stream name {0:?}: expected KIND-UUID")]
    Malformed(String),
}

/// A validated stream name. Construct with [`StreamName::new`] or parse with `str::parse`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamName {
    kind: StreamKind,
    id: Uuid,
}

impl StreamName {
    /// Names the stream of aggregate `id` of the given kind.
    pub const fn new(kind: StreamKind, id: Uuid) -> Self {
        Self { kind, id }
    }

    /// The aggregate kind owning this stream.
    pub const fn kind(&self) -> StreamKind {
        self.kind
    }

    /// The aggregate id.
    pub const fn id(&self) -> Uuid {
        self.id
    }
}

impl fmt::Display for StreamName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.kind.prefix(), self.id)
    }
}

impl FromStr for StreamName {
    type Err = StreamNameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // Names are short; refuse long input before doing any work with it.
        if s.len() > 64 {
            return Err(StreamNameError::Malformed(s.chars().take(64).collect()));
        }
        let (kind, id) = s
            .split_once('-')
            .ok_or_else(|| StreamNameError::Malformed(s.to_owned()))?;
        let kind = match kind {
            "user" => StreamKind::User,
            "room" => StreamKind::Room,
            "call" => StreamKind::Call,
            "system" => StreamKind::System,
            other => return Err(StreamNameError::UnknownKind(other.to_owned())),
        };
        let id = Uuid::parse_str(id).map_err(|_| StreamNameError::MalformedId(id.to_owned()))?;
        Ok(Self { kind, id })
    }
}

impl Serialize for StreamName {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for StreamName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_display_and_parse() {
        let id = Uuid::from_u128(0x1234);
        let name = StreamName::new(StreamKind::Room, id);
        assert_eq!(name.to_string(), format!("room-{id}"));
        assert_eq!(name.to_string().parse::<StreamName>(), Ok(name));
    }

    #[test]
    fn rejects_unknown_kinds_and_bad_ids() {
        assert!(matches!(
            "chat-00000000-0000-0000-0000-000000000000".parse::<StreamName>(),
            Err(StreamNameError::UnknownKind(k)) if k == "chat"
        ));
        assert!(matches!(
            "room-not-a-uuid".parse::<StreamName>(),
            Err(StreamNameError::MalformedId(_))
        ));
        assert!(matches!(
            "room".parse::<StreamName>(),
            Err(StreamNameError::Malformed(_))
        ));
        assert!(matches!(
            "x".repeat(1000).parse::<StreamName>(),
            Err(StreamNameError::Malformed(_))
        ));
    }
}
