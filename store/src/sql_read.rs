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
use futures::stream::BoxStream;
use futures::{FutureExt, TryStreamExt};
use neulbi_domain::StreamName;
use sqlx::{Database, Executor, Pool};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tracing::Instrument;

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
    /// Events at positions `from..to`, in log order: binds `from`, `to`.
    const READ_RANGE: &'static str;
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

    /// A page of [`PAGE_PARTS`] sub-ranges read side by side, each on its own connection and
    /// decoded as its rows arrive: one query at a time left the server and this process
    /// waiting on each other (half of both cores idle in a `read_all` pass). The first part
    /// is the plain query; the others are position ranges, which the log's gap-free positions
    /// make exact, kept only while they continue it (a part read a moment later may see
    /// commits the first did not, so the page stops where a part falls short).
    async fn read_all(&self, from: u64, limit: usize) -> Result<Vec<RecordedEvent>, StoreError> {
        let parts = (limit / MIN_PART).clamp(1, PAGE_PARTS);
        let size = limit.div_ceil(parts);
        let span = tracing::Span::current();
        let rest: Vec<_> = (1..parts)
            .map(|i| {
                let start = from.saturating_add((i * size) as u64);
                let end = start.saturating_add(size.min(limit - i * size) as u64);
                let range = sqlx::query::<DB>(DB::READ_RANGE)
                    .bind(clamp(start))
                    .bind(clamp(end));
                let pool = self.clone();
                tokio::spawn(
                    async move { decode_rows::<DB>(range.fetch(&pool), end - start).await }
                        .instrument(span.clone()),
                )
            })
            .collect();
        let first = sqlx::query::<DB>(DB::READ_ALL)
            .bind(clamp(from))
            .bind(clamp(size as u64));
        let mut page = decode_rows::<DB>(first.fetch(self), size as u64).await;
        let mut rest = rest.into_iter();
        for part in rest.by_ref() {
            let Ok(events) = &mut page else { break };
            let next = from.saturating_add(events.len() as u64);
            if events.last().is_none_or(|e| e.position + 1 != next) || events.len() % size != 0 {
                // Short (the log's end) or not gap-free (never on PostgreSQL): the page ends.
                part.abort();
                break;
            }
            let mut more = part
                .await
                .map_err(|e| StoreError::Unavailable(format!("a log read stopped: {e}")))??;
            if more.first().is_none_or(|e| e.position != next) {
                break;
            }
            events.append(&mut more);
        }
        rest.for_each(|part| part.abort());
        page
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
        let query = sqlx::query::<DB>(sql)
            .bind(stream.to_string())
            .bind(clamp(from))
            .bind(clamp(limit as u64));
        decode_rows::<DB>(query.fetch(self), limit as u64).await
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

/// Sub-ranges a page of the log is read in side by side (see `EventRows::read_all` for
/// `Pool`): two keep both cores busy on a two-core machine, the server on one part while this
/// process decodes the other.
const PAGE_PARTS: usize = 2;
/// Parts smaller than this are not worth a second connection.
const MIN_PART: usize = 512;

/// Decodes a query's rows as they arrive (a whole page collected first would leave this
/// process idle while the server sends it).
async fn decode_rows<DB: SqlBackend>(
    mut rows: BoxStream<'_, Result<DB::Row, sqlx::Error>>,
    expected: u64,
) -> Result<Vec<RecordedEvent>, StoreError> {
    let mut events = Vec::with_capacity(usize::try_from(expected).unwrap_or(0).min(1 << 16));
    while let Some(row) = rows.try_next().await? {
        events.push(DB::raw(&row)?.decode()?);
    }
    Ok(events)
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
