//! The event log: one trait, several backends, one contract test suite, and what every
//! reader of the log shares (the envelope, the codec to domain events, sealed personal
//! fields, the threads that follow the log).
//!
//! This crate sits between `neulbi-domain` and everything that reads or writes the log: the
//! projections crate depends on it and on the domain only, and the root crate (the edge,
//! the actors, the wiring) on all three. It knows nothing of HTTP, STOMP or actors.
//!
//! Every write in Neulbi is an append to a stream with optimistic concurrency; every read
//! model, delivery and audit tool reads committed events back in global order. Backends:
//! [`sqlite`] (embedded default) and [`postgres`] (multi-node). Both batch concurrent appends
//! into one durable transaction ([`group_commit`]) without weakening per-append
//! acknowledgement: a caller's `append` returns only after its own events are committed.

pub mod cipher;
pub mod codec;
pub mod crypto_store;
pub mod data_key;
pub mod error;
pub mod group_commit;
#[cfg(feature = "kurrentdb")]
pub mod kurrent;
pub mod lanes;
pub mod metrics;
pub mod model;
pub mod postgres;
mod recent;
pub mod sealed;
mod sql_read;
pub mod sqlite;
mod sqlite_read;
mod sqlite_writer;
pub mod subscription;
pub mod trace;

use async_trait::async_trait;
use futures::stream::BoxStream;
use neulbi_domain::StreamName;
use std::sync::Arc;

pub use crypto_store::CryptoStore;
pub use data_key::{DataKey, DataKeys};
pub use error::StoreError;
pub use model::{AppendResult, Direction, EventData, ExpectedVersion, Metadata, RecordedEvent};

/// Limits every backend enforces on what a client controls.
#[derive(Debug, Clone, Copy)]
pub struct StoreLimits {
    /// Largest accepted event (data + metadata, serialized), in bytes.
    pub max_event_bytes: usize,
    /// Most events accepted in one append.
    pub max_events_per_append: usize,
    /// Most appends folded into one group commit.
    pub max_group_commit: usize,
    /// SQLite: the WAL size past which the checkpointer makes it start over, holding new
    /// appends back for a moment (see `sqlite::checkpoint_loop`); also the size a WAL that
    /// starts over is cut back to.
    pub wal_restart_bytes: u64,
}

impl Default for StoreLimits {
    fn default() -> Self {
        Self {
            max_event_bytes: 1024 * 1024,
            max_events_per_append: 1000,
            max_group_commit: 512,
            wal_restart_bytes: 64 * 1024 * 1024,
        }
    }
}

/// What a backend promises about global positions. The contract suite checks each backend
/// against its own promise, and tools that move a log choose how to append by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Positions {
    /// 0, 1, 2, ... in commit order with no gap, assigned by group commit in the order
    /// appends are queued (SQLite, PostgreSQL): `head + 1` is the number of events, and
    /// appends queued concurrently commit in queue order.
    GapFree,
    /// Increasing in commit order, never repeated, but not contiguous (KurrentDB's `$all`
    /// commit positions are byte offsets in its transaction log). Resuming from "last seen
    /// plus one" still skips nothing; counting needs a read.
    Ordered,
}

/// The append-only log every actor writes and every reader follows.
#[async_trait]
pub trait EventStore: Send + Sync + 'static {
    /// Appends `events` atomically to `stream` if its version matches `expected`.
    ///
    /// Repeating an append whose event ids are already stored (a retry after a lost reply)
    /// succeeds without writing anything and returns the original positions.
    async fn append(
        &self,
        stream: &StreamName,
        expected: ExpectedVersion,
        events: Vec<EventData>,
    ) -> Result<AppendResult, StoreError>;

    /// Reads up to `limit` events of one stream starting at `from_version` (inclusive), in
    /// the given direction.
    async fn read_stream(
        &self,
        stream: &StreamName,
        from_version: u64,
        direction: Direction,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError>;

    /// Reads up to `limit` events in global order from `from_position` (inclusive).
    async fn read_all(
        &self,
        from_position: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError>;

    /// Reads up to `limit` events just before `before_position` (exclusive), newest first:
    /// for readers that start at the head and walk back (`events tail -n`, the token-epoch
    /// rebuild). The default is for gap-free positions, where those are the `limit`
    /// positions below; backends with gaps override it.
    async fn read_all_backward(
        &self,
        before_position: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let start = before_position.saturating_sub(limit as u64);
        let n = usize::try_from(before_position - start).unwrap_or(usize::MAX);
        let mut page = self.read_all(start, n).await?;
        page.retain(|e| e.position < before_position);
        page.reverse();
        Ok(page)
    }

    /// Like [`EventStore::read_all`], but personal fields stay as the log stores them
    /// (sealed): projectors copy them into read models without ever holding plaintext.
    /// Backends store what they are given, so by default this is `read_all`; the encrypting
    /// front overrides it to skip opening.
    async fn read_all_sealed(
        &self,
        from_position: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.read_all(from_position, limit).await
    }

    /// The data keys that open this store's sealed fields (the encrypting front has them),
    /// so readers of sealed read models can be given the same keys.
    fn data_keys(&self) -> Option<Arc<dyn DataKeys>> {
        None
    }

    /// What this backend promises about positions; see [`Positions`].
    fn positions(&self) -> Positions {
        Positions::GapFree
    }

    /// The position of the last committed event, or `None` for an empty log.
    async fn head_position(&self) -> Result<Option<u64>, StoreError>;

    /// Follows the log from `from_position` (inclusive): first the stored events, then live
    /// ones as they commit, never skipping or reordering one. Resume from a checkpoint by
    /// passing the last seen position plus one.
    fn subscribe_all(
        &self,
        from_position: u64,
    ) -> BoxStream<'static, Result<RecordedEvent, StoreError>>;

    /// Wakes on commits (the newest position): for readers that need a doorbell, not the
    /// events, such as the projector loops, which read their batches themselves. Commits by
    /// other processes on SQLite are not announced, so such readers poll as well.
    fn head_changes(&self) -> tokio::sync::watch::Receiver<Option<u64>>;

    /// Checks the backend is reachable (for `/readyz`).
    async fn ping(&self) -> Result<(), StoreError>;

    /// Stops accepting appends, finishes the ones already queued, and waits until they are
    /// durable. Called on graceful shutdown.
    async fn close(&self);
}

/// A shared handle to whichever backend the configuration selected.
pub type SharedStore = Arc<dyn EventStore>;

/// The database behind the store, for what lives beside the log (data keys, read models).
#[derive(Clone, Debug)]
pub enum Database {
    /// The embedded SQLite file (reader pool).
    Sqlite(sqlx::SqlitePool),
    /// A PostgreSQL server.
    Postgres(sqlx::PgPool),
}

/// Whether `url` names a KurrentDB / EventStoreDB log (`kurrentdb://`, `esdb://`,
/// `esdb+discover://`, `kdb://`, ...), whether or not this build has the backend.
pub fn is_kurrent_url(url: &str) -> bool {
    [
        "kurrentdb",
        "kurrentdb+discover",
        "kdb",
        "kdb+discover",
        "esdb",
        "esdb+discover",
    ]
    .iter()
    .any(|s| url.strip_prefix(s).is_some_and(|r| r.starts_with("://")))
}

/// The SQL database beside a log at `log_url`: the log's own database for SQLite and
/// PostgreSQL; for KurrentDB `state` if given, else the SQLite file in `data_dir`. Keys,
/// read models and checkpoints need transactions KurrentDB does not offer.
pub fn state_url_for(log_url: &str, state: Option<&str>, data_dir: &std::path::Path) -> String {
    if !is_kurrent_url(log_url) {
        return log_url.to_owned();
    }
    state.map_or_else(
        || format!("sqlite://{}", data_dir.join("neulbi.db").display()),
        str::to_owned,
    )
}

/// A SQLite or PostgreSQL log, with its database.
pub async fn open_sql(
    url: &str,
    limits: StoreLimits,
    migrate: bool,
) -> Result<(SharedStore, Database), StoreError> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let s = postgres::PostgresStore::connect(url, limits, migrate).await?;
        let db = Database::Postgres(s.pool().clone());
        Ok((Arc::new(s), db))
    } else if url.starts_with("sqlite:") {
        let s = sqlite::SqliteStore::open(url, limits, migrate).await?;
        let db = Database::Sqlite(s.pool().clone());
        Ok((Arc::new(s), db))
    } else {
        Err(StoreError::Config(format!(
            "unsupported database URL scheme in {:?}: use sqlite://PATH, postgres://... or \
             kurrentdb://... (esdb://, esdb+discover://)",
            redact_url(url)
        )))
    }
}

/// The KurrentDB log named by `url`.
#[cfg(feature = "kurrentdb")]
pub async fn open_kurrent(url: &str, limits: StoreLimits) -> Result<SharedStore, StoreError> {
    Ok(Arc::new(kurrent::KurrentStore::connect(url, limits).await?))
}

/// Without the `kurrentdb` feature a KurrentDB URL is a configuration error that says so.
#[cfg(not(feature = "kurrentdb"))]
pub async fn open_kurrent(url: &str, _limits: StoreLimits) -> Result<SharedStore, StoreError> {
    Err(StoreError::Config(format!(
        "{:?} names a KurrentDB log, but this build has no KurrentDB backend: build with \
         `--features kurrentdb`",
        redact_url(url)
    )))
}

/// Hides a password in a database URL so it can appear in an error message or a log line.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &url[scheme_end + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => {
                    format!("{}://{}:***@{}", &url[..scheme_end], user, &url[at + 1..])
                }
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn redacts_passwords_only() {
        assert_eq!(
            redact_url("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(redact_url("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(
            redact_url("sqlite://data/neulbi.db"),
            "sqlite://data/neulbi.db"
        );
    }
}
