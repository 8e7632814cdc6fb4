//! Errors of the event store, typed so callers can react (retry on a conflict, report "too
//! large", surface "unavailable") without matching on strings.

use super::model::ExpectedVersion;
use thiserror::Error;
use uuid::Uuid;

/// Why an event-store operation failed. A failed append has written nothing.
#[derive(Debug, Error)]
pub enum StoreError {
    /// The stream's version did not match the caller's expectation (another writer won).
    #[error("wrong expected version for {stream}: expected {expected}, actual {}", display_version(*.actual))]
    WrongExpectedVersion {
        /// The stream name.
        stream: String,
        /// What the caller expected.
        expected: ExpectedVersion,
        /// The stream's current version (`None`: no stream).
        actual: Option<u64>,
    },
    /// An event id is already stored with a different stream or position: ids are global.
    #[error("event id {event_id} is already used by another event")]
    DuplicateEventId {
        /// The reused id.
        event_id: Uuid,
    },
    /// The stream was deleted (KurrentDB soft delete or tombstone): it takes no appends and,
    /// after a tombstone, no reads.
    #[error("stream {stream} has been deleted")]
    StreamDeleted {
        /// The stream name.
        stream: String,
    },
    /// An event exceeds the configured size limit.
    #[error("event of {size} bytes exceeds the limit of {limit} bytes")]
    EventTooLarge {
        /// Serialized data + metadata size.
        size: usize,
        /// The configured limit.
        limit: usize,
    },
    /// An append carried no events or more than allowed.
    #[error("invalid append: {0}")]
    InvalidAppend(String),
    /// A stored row could not be decoded; the log needs an operator's attention.
    #[error("corrupted event at position {position}: {reason}")]
    Corrupt {
        /// The position of the bad row.
        position: i64,
        /// What was wrong with it.
        reason: String,
    },
    /// The store configuration is unusable (bad URL, unsupported scheme).
    #[error("store configuration: {0}")]
    Config(String),
    /// The store has been closed for shutdown and accepts no more appends.
    #[error("the event store is shutting down")]
    Closed,
    /// The backend failed for a reason a retry later may cure (connection lost, disk full).
    #[error("event store unavailable: {0}")]
    Unavailable(String),
    /// Migrations failed to apply.
    #[error("migration failed: {0}")]
    Migration(sqlx::migrate::MigrateError),
    /// The database reported an error or could not be reached.
    #[error("database error: {0}")]
    Database(sqlx::Error),
    /// The SQLite log's writer (a plain connection, not sqlx) reported an error.
    #[error("database error: {0}")]
    Sqlite(rusqlite::Error),
}

// Not `#[from]`: the driver's message is already in our Display, and marking it as the
// source too would print it twice in an error chain.
impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        Self::Database(e)
    }
}

impl From<sqlx::migrate::MigrateError> for StoreError {
    fn from(e: sqlx::migrate::MigrateError) -> Self {
        Self::Migration(e)
    }
}

fn display_version(v: Option<u64>) -> String {
    v.map_or_else(|| "no stream".to_owned(), |v| v.to_string())
}

impl StoreError {
    /// True for errors that say "someone else wrote first": the caller may reload and retry.
    pub fn is_conflict(&self) -> bool {
        matches!(self, Self::WrongExpectedVersion { .. })
    }
}
