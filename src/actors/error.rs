//! What can go wrong between a command and its acknowledgement.

use crate::store::StoreError;
use neulbi_domain::DomainError;
use thiserror::Error;

/// Why a command was not acknowledged. Only `Domain` means "rejected"; the others mean the
/// command may be retried (with the same ids, so a retry is idempotent).
#[derive(Debug, Error)]
pub enum ActorError {
    /// The domain rejected the command.
    #[error(transparent)]
    Domain(#[from] DomainError),
    /// The aggregate's mailbox is full: the caller should back off and retry.
    #[error("the aggregate is busy; retry shortly")]
    Busy,
    /// Another writer kept changing the stream; the retry after reloading also conflicted.
    #[error("concurrent modification of {0}; retry")]
    Conflict(String),
    /// A stored event of this stream could not be decoded into the domain type.
    #[error("cannot decode event {event_type} at position {position}: {reason}")]
    Decode {
        /// The stored type name.
        event_type: String,
        /// The event's global position.
        position: u64,
        /// The decoder's message.
        reason: String,
    },
    /// The event store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The actor stopped before answering (shutdown, or passivated twice in a row).
    #[error("the aggregate actor is unavailable")]
    Unavailable,
}

impl From<crate::store::codec::CodecError> for ActorError {
    fn from(e: crate::store::codec::CodecError) -> Self {
        ActorError::Decode {
            event_type: e.event_type,
            position: e.position,
            reason: e.reason,
        }
    }
}
