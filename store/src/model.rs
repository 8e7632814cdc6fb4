//! The values that go into and come out of the event store.

use chrono::{DateTime, Utc};
use neulbi_domain::StreamName;
use serde::{Deserialize, Serialize};
use std::fmt;
use uuid::Uuid;

/// The optimistic-concurrency condition of an append.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExpectedVersion {
    /// Append whatever the stream's version is.
    Any,
    /// The stream must not exist yet.
    NoStream,
    /// The stream's last event must have exactly this version.
    Exact(u64),
}

impl ExpectedVersion {
    /// Whether a stream whose last version is `actual` (`None` if absent) satisfies this.
    pub fn matches(self, actual: Option<u64>) -> bool {
        match self {
            Self::Any => true,
            Self::NoStream => actual.is_none(),
            Self::Exact(v) => actual == Some(v),
        }
    }

    /// The expectation that holds for a stream currently at `actual`.
    pub fn from_current(actual: Option<u64>) -> Self {
        actual.map_or(Self::NoStream, Self::Exact)
    }
}

impl fmt::Display for ExpectedVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Any => f.write_str("any"),
            Self::NoStream => f.write_str("no stream"),
            Self::Exact(v) => write!(f, "{v}"),
        }
    }
}

/// Where an event came from, for audits and distributed traces. Stored beside every event.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metadata {
    /// The id shared by everything one original request caused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<Uuid>,
    /// The id of the command or event that directly caused this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub causation_id: Option<Uuid>,
    /// The user on whose behalf the command ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<Uuid>,
    /// The W3C trace context of the request that caused the event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
}

impl Metadata {
    /// The metadata of a command a person gives (over HTTP or STOMP): a fresh correlation id
    /// for everything it causes, and who acted.
    pub fn acting(user: Uuid) -> Self {
        Self {
            correlation_id: Some(Uuid::now_v7()),
            user_id: Some(user),
            ..Self::default()
        }
    }
}

/// An event to append. The id is chosen by the writer (UUIDv7) so retries are idempotent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventData {
    /// Globally unique event id; repeating it makes a retried append a no-op.
    pub event_id: Uuid,
    /// The event type name (`MessagePosted`, ...).
    pub event_type: String,
    /// The schema version of `data`.
    pub schema_version: u32,
    /// The event body.
    pub data: serde_json::Value,
    /// Correlation, causation, acting user and trace context.
    pub metadata: Metadata,
    /// Only for `events import`: keep the original commit time. Everything else leaves it
    /// `None` and the store records the time of the commit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recorded_at: Option<DateTime<Utc>>,
}

impl EventData {
    /// An event with a fresh UUIDv7 id and empty metadata.
    pub fn new(event_type: impl Into<String>, data: serde_json::Value) -> Self {
        Self {
            event_id: Uuid::now_v7(),
            event_type: event_type.into(),
            schema_version: 1,
            data,
            metadata: Metadata::default(),
            recorded_at: None,
        }
    }

    /// Replaces the metadata.
    pub fn with_metadata(mut self, metadata: Metadata) -> Self {
        self.metadata = metadata;
        self
    }
}

/// A committed event as read back from the log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordedEvent {
    /// Global, gap-free position in commit order, from 0.
    pub position: u64,
    /// The stream the event belongs to.
    pub stream: StreamName,
    /// The event's version within its stream, from 0.
    pub version: u64,
    /// The event id given at append.
    pub event_id: Uuid,
    /// The event type name.
    pub event_type: String,
    /// The schema version of `data`.
    pub schema_version: u32,
    /// The event body.
    pub data: serde_json::Value,
    /// Correlation, causation, acting user and trace context.
    pub metadata: Metadata,
    /// When the store committed the event.
    pub recorded_at: DateTime<Utc>,
}

/// The outcome of a successful append.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppendResult {
    /// The stream's version after the append (the version of its last event).
    pub next_expected_version: u64,
    /// The global position of the first appended event.
    pub first_position: u64,
    /// The global position of the last appended event.
    pub last_position: u64,
}

/// The order in which `read_stream` walks a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Oldest first, from `from_version` up.
    Forward,
    /// Newest first, from `from_version` down.
    Backward,
}

/// A row as the backends read it, before validation. Decoding turns a corrupted row into a
/// typed [`StoreError::Corrupt`] instead of a panic.
#[derive(Debug)]
pub(crate) struct RawRow<'a> {
    pub position: i64,
    pub event_id: Uuid,
    pub stream: &'a str,
    pub version: i64,
    pub event_type: &'a str,
    pub schema_version: i64,
    pub data: &'a str,
    pub metadata: &'a str,
    pub recorded_at: i64,
}

impl RawRow<'_> {
    pub fn decode(self) -> Result<RecordedEvent, super::StoreError> {
        let position = self.position;
        let corrupt = |reason: String| super::StoreError::Corrupt { position, reason };
        let pos = u64::try_from(position).map_err(|_| corrupt("negative position".into()))?;
        let version =
            u64::try_from(self.version).map_err(|_| corrupt("negative version".into()))?;
        let stream = self
            .stream
            .parse()
            .map_err(|e| corrupt(format!("stream name: {e}")))?;
        let schema_version = u32::try_from(self.schema_version)
            .map_err(|_| corrupt("schema version out of range".into()))?;
        let data = serde_json::from_str(self.data)
            .map_err(|e| corrupt(format!("data is not JSON: {e}")))?;
        let metadata =
            serde_json::from_str(self.metadata).map_err(|e| corrupt(format!("metadata: {e}")))?;
        let recorded_at = DateTime::<Utc>::from_timestamp_micros(self.recorded_at)
            .ok_or_else(|| corrupt("recorded_at out of range".into()))?;
        Ok(RecordedEvent {
            position: pos,
            stream,
            version,
            event_id: self.event_id,
            event_type: self.event_type.to_owned(),
            schema_version,
            data,
            metadata,
            recorded_at,
        })
    }
}
