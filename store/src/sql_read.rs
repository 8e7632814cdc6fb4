//! The read side both SQL backends share: a stream's page, a page of the whole log, the head,
//! and the live `subscribe_all` feed. [`SqlReader`] is the one body that serves SQLite and
//! PostgreSQL; [`EventRows`] is where its rows come from — sqlx for any [`SqlBackend`]
//! (PostgreSQL: only the SQL text, how a row's columns decode, and the poll interval differ),
//! plain `rusqlite` connections for SQLite (`sqlite_read`), whose sqlx driver copies every
//! column and hands every row across threads.

use super::group_commit::Committed;
use super::model::RawRow;
use super::recent::Recent;
use super::subscription::{self, ReadPage};
use super::{Direction, RecordedEvent, StoreError};
use async_trait::async_trait;
use futures::FutureExt;
use futures::stream::BoxStream;
use neulbi_domain::StreamName;
use sqlx::{Database, Executor, Pool};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Builds a static `SELECT` of every event column, in [`RawRow`]'s order; sqlx only accepts
/// audited static SQL.
macro_rules! select_events {
    ($tail:literal) => {
        concat!(
            "SELECT position, event_id, stream, version, event_type, schema_version, data, metadata, recorded_at FROM events ",
            $tail
        )
    };
}
pub(super) use select_events;

/// What a SQL backend's read path is made of: its statements (placeholders differ), how it
/// decodes an event row, and how often a subscriber polls for commits it was not told of.
pub(super) trait SqlBackend: Database {
    /// Events from a position on, in log order: binds `from`, `limit`.
    const READ_ALL: &'static str;
    /// A stream's events from a version on: binds `stream`, `from`, `limit`.
    const READ_FORWARD: &'static str;
    /// A stream's events up to a version, newest first: binds `stream`, `from`, `limit`.
    const READ_BACKWARD: &'static str;
    /// How often a subscriber looks for commits made by another process it heard nothing of.
    const POLL: Duration;

    /// The columns of one `select_events!` row.
    fn raw(row: &Self::Row) -> Result<RawRow<'_>, StoreError>;

    /// The single `MAX(position)` column of a head query.
    fn head(row: &Self::Row) -> Result<Option<i64>, StoreError>;
}

/// Where a reader's events come from: a page of the log, a page of a stream, the head, and a
/// liveness probe.
#[async_trait]
pub(super) trait EventRows: Clone + Send + Sync + 'static {
    /// How often a subscriber looks for commits made by another process it heard nothing of.
    const POLL: Duration;

    /// Events from position `from` on, in log order, at most `limit`.
    async fn read_all(&self, from: u64, limit: usize) -> Result<Vec<RecordedEvent>, StoreError>;

    /// A stream's events from version `from`, in `direction`, at most `limit`.
    async fn read_stream(
        &self,
        stream: &StreamName,
        from: u64,
        direction: Direction,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError>;

    /// The log's last position.
    async fn head_position(&self) -> Result<Option<u64>, StoreError>;

    /// Whether the database answers.
    async fn ping(&self) -> Result<(), StoreError>;
}

#[async_trait]
impl<DB> EventRows for Pool<DB>
where
    DB: SqlBackend,
    DB::Arguments: sqlx::IntoArguments<DB>,
    for<'c> &'c Pool<DB>: Executor<'c, Database = DB>,
    for<'t> i64: sqlx::Encode<'t, DB> + sqlx::Type<DB>,
    for<'t> String: sqlx::Encode<'t, DB> + sqlx::Type<DB>,
{
    const POLL: Duration = DB::POLL;

    async fn read_all(&self, from: u64, limit: usize) -> Result<Vec<RecordedEvent>, StoreError> {
        let rows = sqlx::query::<DB>(DB::READ_ALL)
            .bind(clamp(from))
            .bind(clamp(limit as u64))
            .fetch_all(self)
            .await?;
        rows.iter().map(|r| DB::raw(r)?.decode()).collect()
    }

    async fn read_stream(
        &self,
        stream: &StreamName,
        from: u64,
        direction: Direction,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let sql = match direction {
            Direction::Forward => DB::READ_FORWARD,
            Direction::Backward => DB::READ_BACKWARD,
        };
        let rows = sqlx::query::<DB>(sql)
            .bind(stream.to_string())
            .bind(clamp(from))
            .bind(clamp(limit as u64))
            .fetch_all(self)
            .await?;
        rows.iter().map(|r| DB::raw(r)?.decode()).collect()
    }

    async fn head_position(&self) -> Result<Option<u64>, StoreError> {
        let row = sqlx::query::<DB>("SELECT MAX(position) FROM events")
            .fetch_one(self)
            .await?;
        Ok(DB::head(&row)?.and_then(|h| u64::try_from(h).ok()))
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query::<DB>("SELECT 1").execute(self).await?;
        Ok(())
    }
}

/// The read half of a SQL event store: where its rows come from, the head announcements,
/// and the recent commits a read of the log's tail is served from.
pub(super) struct SqlReader<R: EventRows> {
    rows: R,
    head: watch::Sender<Option<u64>>,
    recent: Arc<Recent>,
}

/// A position, version or count as SQL's signed 64-bit integer (saturating).
pub(super) fn clamp(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl<R: EventRows> SqlReader<R> {
    pub(super) fn new(rows: R, committed: &Committed) -> Self {
        Self {
            rows,
            head: committed.head.clone(),
            recent: committed.recent.clone(),
        }
    }

    pub(super) fn rows(&self) -> &R {
        &self.rows
    }

    /// A page of the log from `from`: from [`Recent`] when it certainly holds the answer,
    /// else from the database.
    async fn page(
        rows: &R,
        recent: &Recent,
        announced: Option<u64>,
        from: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        if let Some(events) = recent.page(from, limit, announced) {
            return Ok(events);
        }
        rows.read_all(from, limit).await
    }

    pub(super) async fn read_all(
        &self,
        from: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let announced = *self.head.borrow();
        Self::page(&self.rows, &self.recent, announced, from, limit).await
    }

    pub(super) async fn read_stream(
        &self,
        stream: &StreamName,
        from_version: u64,
        direction: Direction,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.rows
            .read_stream(stream, from_version, direction, limit)
            .await
    }

    pub(super) async fn head_position(&self) -> Result<Option<u64>, StoreError> {
        self.rows.head_position().await
    }

    pub(super) fn head_changes(&self) -> watch::Receiver<Option<u64>> {
        self.head.subscribe()
    }

    pub(super) fn subscribe_all(
        &self,
        from_position: u64,
    ) -> BoxStream<'static, Result<RecordedEvent, StoreError>> {
        let rows = self.rows.clone();
        let recent = self.recent.clone();
        let head = self.head.subscribe();
        let read: ReadPage = Arc::new(move |from, limit| {
            let rows = rows.clone();
            let recent = recent.clone();
            let announced = *head.borrow();
            async move { Self::page(&rows, &recent, announced, from, limit).await }.boxed()
        });
        subscription::follow(read, self.head.subscribe(), from_position, R::POLL)
    }

    pub(super) async fn ping(&self) -> Result<(), StoreError> {
        self.rows.ping().await
    }
}
