//! The SQLite log's readers: plain `rusqlite` connections, used one at a time on tokio's
//! blocking threads. sqlx's SQLite driver runs each connection on a worker thread that copies
//! every column of every row (`sqlite3_value_dup`, through the C allocator) and sends each row
//! across a channel of 50; a page of 4,096 events spent half its time there. Here a page is one
//! hop to a blocking thread, and each row is decoded straight from SQLite's own buffers.

use super::model::RawRow;
use super::sql_read::{EventRows, clamp, select_events};
use super::{Direction, RecordedEvent, StoreError};
use async_trait::async_trait;
use neulbi_domain::StreamName;
use rusqlite::{Connection, OpenFlags, Row};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Semaphore;

const READ_ALL: &str = select_events!("WHERE position >= ?1 ORDER BY position LIMIT ?2");
const READ_FORWARD: &str =
    select_events!("WHERE stream = ?1 AND version >= ?2 ORDER BY version LIMIT ?3");
const READ_BACKWARD: &str =
    select_events!("WHERE stream = ?1 AND version <= ?2 ORDER BY version DESC LIMIT ?3");

/// What a reader connection is set up with: read-only use of the WAL-mode log, the busy
/// timeout, and the page mapping of the store's options (see `SqliteStore::open`).
#[derive(Debug, Clone)]
pub(super) struct ReaderSettings {
    /// The database file.
    pub path: PathBuf,
    /// How long a read waits for a lock (a checkpoint truncating the WAL).
    pub busy_timeout: Duration,
    /// `PRAGMA mmap_size`.
    pub mmap_bytes: u64,
    /// `PRAGMA cache_size` (negative: KiB).
    pub cache_size: i64,
    /// How many connections read at once.
    pub connections: usize,
}

/// A small pool of reader connections. Cheap to clone.
#[derive(Clone)]
pub(super) struct SqliteRows {
    shared: Arc<Shared>,
}

struct Shared {
    settings: ReaderSettings,
    /// Idle connections; opened on demand, at most `settings.connections`.
    idle: Mutex<Vec<Connection>>,
    permits: Arc<Semaphore>,
}

impl SqliteRows {
    /// Readers of the database in `settings`; the first one is opened now, so a bad path fails
    /// at start-up rather than at the first read.
    pub(super) fn open(settings: ReaderSettings) -> Result<Self, StoreError> {
        let first = open_reader(&settings)?;
        let permits = Arc::new(Semaphore::new(settings.connections.max(1)));
        Ok(Self {
            shared: Arc::new(Shared {
                settings,
                idle: Mutex::new(vec![first]),
                permits,
            }),
        })
    }

    /// Runs `read` on an idle connection on a blocking thread, within the caller's span.
    async fn with<T, F>(&self, read: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let permit = self
            .shared
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| StoreError::Closed)?;
        let shared = self.shared.clone();
        let span = tracing::Span::current();
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let _span = span.enter();
            let idle = shared.idle().pop();
            let conn = match idle {
                Some(conn) => conn,
                None => open_reader(&shared.settings)?,
            };
            let out = read(&conn);
            // A connection that failed is still usable: SQLite reports per statement.
            shared.idle().push(conn);
            out
        })
        .await
        .map_err(|e| StoreError::Unavailable(format!("a log reader stopped: {e}")))?
    }
}

impl Shared {
    fn idle(&self) -> std::sync::MutexGuard<'_, Vec<Connection>> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn open_reader(settings: &ReaderSettings) -> Result<Connection, StoreError> {
    let conn = Connection::open_with_flags(
        &settings.path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(settings.busy_timeout)?;
    // Readers never write, whatever a bug asks of them.
    conn.pragma_update(None, "query_only", "ON")?;
    conn.pragma_update(None, "mmap_size", clamp(settings.mmap_bytes))?;
    conn.pragma_update(None, "cache_size", settings.cache_size)?;
    conn.set_prepared_statement_cache_capacity(8);
    Ok(conn)
}

/// Decodes one `select_events!` row without copying its text. A column of the wrong type
/// (SQLite keeps whatever was written) is a [`StoreError::Corrupt`] at the row's position.
fn decode(row: &Row<'_>) -> Result<RecordedEvent, StoreError> {
    let position: i64 = row.get(0)?;
    let corrupt = |reason: String| StoreError::Corrupt { position, reason };
    let text = |i: usize, column: &str| -> Result<&str, StoreError> {
        row.get_ref(i)?
            .as_str()
            .map_err(|_| corrupt(format!("{column} is not text")))
    };
    let integer = |i: usize, column: &str| -> Result<i64, StoreError> {
        row.get_ref(i)?
            .as_i64()
            .map_err(|_| corrupt(format!("{column} is not an integer")))
    };
    RawRow {
        position,
        event_id: uuid::Uuid::parse_str(text(1, "event_id")?)
            .map_err(|e| corrupt(format!("event id: {e}")))?,
        stream: text(2, "stream")?,
        version: integer(3, "version")?,
        event_type: text(4, "event_type")?,
        schema_version: integer(5, "schema_version")?,
        data: text(6, "data")?,
        metadata: text(7, "metadata")?,
        recorded_at: integer(8, "recorded_at")?,
    }
    .decode()
}

/// Runs `sql` with `params` and decodes every row.
fn query(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
    capacity: usize,
) -> Result<Vec<RecordedEvent>, StoreError> {
    let mut statement = conn.prepare_cached(sql)?;
    let mut rows = statement.query(params)?;
    let mut events = Vec::with_capacity(capacity.min(4096));
    while let Some(row) = rows.next()? {
        events.push(decode(row)?);
    }
    Ok(events)
}

#[async_trait]
impl EventRows for SqliteRows {
    // Another process (a CLI, a second server) may write the same file; poll to see it.
    const POLL: Duration = Duration::from_millis(500);

    async fn read_all(&self, from: u64, limit: usize) -> Result<Vec<RecordedEvent>, StoreError> {
        self.with(move |conn| query(conn, READ_ALL, (clamp(from), clamp(limit as u64)), limit))
            .await
    }

    async fn read_stream(
        &self,
        stream: &StreamName,
        from: u64,
        direction: Direction,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let stream = stream.to_string();
        self.with(move |conn| {
            let sql = match direction {
                Direction::Forward => READ_FORWARD,
                Direction::Backward => READ_BACKWARD,
            };
            query(conn, sql, (stream, clamp(from), clamp(limit as u64)), limit)
        })
        .await
    }

    async fn head_position(&self) -> Result<Option<u64>, StoreError> {
        self.with(|conn| {
            let head: Option<i64> = conn
                .prepare_cached("SELECT MAX(position) FROM events")?
                .query_row([], |r| r.get(0))?;
            Ok(head.and_then(|h| u64::try_from(h).ok()))
        })
        .await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.with(|conn| {
            conn.prepare_cached("SELECT 1")?.query_row([], |_| Ok(()))?;
            Ok(())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sqlite::SqliteStore;
    use crate::{EventData, EventStore, ExpectedVersion, StoreLimits};
    use neulbi_domain::StreamKind;

    async fn log_of(events: u64) -> (tempfile::TempDir, SqliteStore, StreamName) {
        let dir = tempfile::tempdir().expect("dir");
        let url = format!("sqlite://{}", dir.path().join("log.db").display());
        let store = SqliteStore::open(&url, StoreLimits::default(), true)
            .await
            .expect("open");
        let stream = StreamName::new(StreamKind::Room, uuid::Uuid::now_v7());
        let batch = (0..events)
            .map(|i| EventData::new("Posted", serde_json::json!({ "n": i })))
            .collect();
        store
            .append(&stream, ExpectedVersion::NoStream, batch)
            .await
            .expect("append");
        (dir, store, stream)
    }

    fn settings(dir: &tempfile::TempDir, connections: usize) -> ReaderSettings {
        ReaderSettings {
            path: dir.path().join("log.db"),
            busy_timeout: Duration::from_secs(1),
            mmap_bytes: 1 << 20,
            cache_size: -1024,
            connections,
        }
    }

    #[tokio::test]
    async fn a_column_of_the_wrong_type_is_a_corrupt_row_at_its_position() {
        let (dir, store, stream) = log_of(3).await;
        let raw = Connection::open(dir.path().join("log.db")).expect("raw");
        raw.execute("UPDATE events SET data = x'00ff' WHERE position = 1", [])
            .expect("blob");
        raw.execute("UPDATE events SET version = 'two' WHERE position = 2", [])
            .expect("text");
        let rows = SqliteRows::open(settings(&dir, 1)).expect("readers");
        let err = rows.read_all(0, 10).await.expect_err("blob data");
        assert!(
            matches!(&err, StoreError::Corrupt { position: 1, reason } if reason.contains("data")),
            "{err}"
        );
        let err = rows.read_all(2, 10).await.expect_err("text version");
        assert!(
            matches!(&err, StoreError::Corrupt { position: 2, reason } if reason.contains("version")),
            "{err}"
        );
        // The healthy row before them still reads, by log and by stream.
        assert_eq!(rows.read_all(0, 1).await.expect("healthy").len(), 1);
        let first = rows
            .read_stream(&stream, 0, Direction::Forward, 1)
            .await
            .expect("stream");
        assert_eq!(first[0].data, serde_json::json!({ "n": 0 }));
        store.close().await;
    }

    #[tokio::test]
    async fn readers_refuse_to_write() {
        let (dir, store, _) = log_of(1).await;
        let rows = SqliteRows::open(settings(&dir, 1)).expect("readers");
        let err = rows
            .with(|conn| Ok(conn.execute("DELETE FROM events", [])?))
            .await
            .expect_err("query_only");
        assert!(matches!(err, StoreError::Sqlite(_)), "{err}");
        assert_eq!(rows.head_position().await.expect("head"), Some(0));
        store.close().await;
    }

    #[tokio::test]
    async fn more_reads_than_connections_wait_for_one_and_all_succeed() {
        let (dir, store, stream) = log_of(50).await;
        let rows = SqliteRows::open(settings(&dir, 2)).expect("readers");
        let reads = (0..16).map(|i| {
            let rows = rows.clone();
            tokio::spawn(async move {
                if i % 2 == 0 {
                    rows.read_all(i, 100).await.map(|e| e.len())
                } else {
                    rows.read_stream(&stream, 49, Direction::Backward, 100)
                        .await
                        .map(|e| e.len())
                }
            })
        });
        let lens: Vec<usize> = futures::future::join_all(reads)
            .await
            .into_iter()
            .map(|r| r.expect("joined").expect("read"))
            .collect();
        for (i, len) in lens.iter().enumerate() {
            let want = if i % 2 == 0 { 50 - i } else { 50 };
            assert_eq!(*len, want, "read {i}");
        }
        assert!(
            rows.shared.idle().len() <= 2,
            "at most two connections opened"
        );
        rows.ping().await.expect("ping");
        store.close().await;
    }
}
