//! The embedded default backend: one SQLite file in WAL mode with `synchronous=FULL`, so an
//! acknowledged append survives a power cut. One writer connection on a thread of its own
//! (fed by group commit, see `sqlite_writer`) and a few log readers (`sqlite_read`), which WAL
//! lets run alongside the writer; an sqlx pool on the same file serves migrations, read models
//! and tools.

use super::group_commit::{Committed, GroupCommit};
use super::sql_read::SqlReader;
use super::sqlite_read::{ReaderSettings, SqliteRows};
use super::sqlite_writer::SqliteCommitter;
use super::{
    AppendResult, Direction, EventData, EventStore, ExpectedVersion, RecordedEvent, StoreError,
    StoreLimits,
};
use async_trait::async_trait;
use futures::stream::BoxStream;
use neulbi_domain::StreamName;
use sqlx::Connection;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tracing::Instrument;

/// Embedded migrations for SQLite.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/sqlite");

/// The SQLite event store. Cheap to clone; all clones share one writer.
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    /// The log's readers and the head announcements.
    readers: SqlReader<SqliteRows>,
    /// sqlx connections for the read models and tools that share the file (and migrations).
    pool: SqlitePool,
    writer: GroupCommit,
    checkpointer: tokio::task::JoinHandle<()>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.checkpointer.abort();
    }
}

/// How long a RESTART checkpoint may hold new appends back waiting for readers to leave
/// the WAL; past it, it gives up and tries again on a later tick.
const RESTART_WAIT: Duration = Duration::from_millis(200);

/// How long the checkpointer waits before trying RESTART again after readers kept one from
/// finishing.
const RESTART_BACKOFF: Duration = Duration::from_secs(2);

/// Starts [`checkpoint_loop`] on a connection of its own to the database `options` open
/// (already in WAL mode): commits on connections with `wal_autocheckpoint=0` then never
/// copy the WAL back themselves. It runs until the handle is aborted, checkpointing `every`
/// so often (the log: [`CHECKPOINT_EVERY`]).
pub async fn spawn_checkpointer(
    options: &SqliteConnectOptions,
    restart_bytes: u64,
    every: Duration,
) -> Result<tokio::task::JoinHandle<()>, sqlx::Error> {
    // Waits at most RESTART_WAIT for a lock.
    let mut conn =
        SqliteConnection::connect_with(&options.clone().busy_timeout(RESTART_WAIT)).await?;
    let page_size: i64 = sqlx::query_scalar("PRAGMA page_size")
        .fetch_one(&mut conn)
        .await?;
    let page_size = u64::try_from(page_size).unwrap_or(4096).max(512);
    let restart_frames = i64::try_from(restart_bytes / page_size).unwrap_or(i64::MAX);
    Ok(tokio::spawn(checkpoint_loop(conn, restart_frames, every)))
}

/// How often the log's WAL is copied back into its file.
pub const CHECKPOINT_EVERY: Duration = Duration::from_millis(500);

/// Copies the WAL back into the database file every `every`, off the commit path. PASSIVE
/// never blocks the writer or readers; it does what it can and tries again next time.
///
/// PASSIVE alone never lets the WAL start over under appends that never pause: SQLite
/// reuses the WAL from its start only when a write begins after a checkpoint copied every
/// frame, and the writer is always mid-append (a 10M-event burst left a 7.4 GB WAL). So
/// once the WAL holds more
/// than `restart_frames`, the checkpointer runs RESTART: new appends wait (at most
/// [`RESTART_WAIT`], plus copying what the last PASSIVE left) until every reader is past
/// the WAL, and the next append writes it from the start; `journal_size_limit` cuts the
/// file back.
async fn checkpoint_loop(mut conn: SqliteConnection, restart_frames: i64, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // After a RESTART that readers kept from finishing, the next waits a while: each attempt
    // holds appends back.
    let mut restart_after = tokio::time::Instant::now();
    loop {
        tick.tick().await;
        let frames = match sqlx::query_as::<_, (i64, i64, i64)>("PRAGMA wal_checkpoint(PASSIVE)")
            .fetch_one(&mut conn)
            .await
        {
            Ok((_, frames, _)) => frames,
            Err(e) => {
                tracing::debug!(error = %e, "WAL checkpoint skipped");
                continue;
            }
        };
        if frames <= restart_frames || tokio::time::Instant::now() < restart_after {
            continue;
        }
        let span = tracing::debug_span!("wal_restart", frames);
        match sqlx::query_as::<_, (i64, i64, i64)>("PRAGMA wal_checkpoint(RESTART)")
            .fetch_one(&mut conn)
            .instrument(span)
            .await
        {
            Ok((0, _, _)) => tracing::debug!(frames, "WAL restarted"),
            Ok(_) => {
                restart_after = tokio::time::Instant::now() + RESTART_BACKOFF;
                tracing::debug!(frames, "WAL restart deferred: readers still in it");
            }
            Err(e) => {
                restart_after = tokio::time::Instant::now() + RESTART_BACKOFF;
                tracing::debug!(error = %e, "WAL restart skipped");
            }
        }
    }
}

/// How long a truncating checkpoint keeps trying while another checkpoint holds SQLite's
/// checkpoint lock (the store's checkpointer runs one twice a second; a read-model commit
/// may run one too).
pub const TRUNCATE_WAIT: Duration = Duration::from_secs(5);

/// The checkpoint that empties the WAL file; its first column is 0 once it did.
pub const TRUNCATE_CHECKPOINT: &str = "PRAGMA wal_checkpoint(TRUNCATE)";

/// Runs `attempt` — one [`TRUNCATE_CHECKPOINT`], answering the first column of its row —
/// until it reports the WAL emptied (0), for at most `wait`. Returns false if it never
/// did. SQLite does not wait for a checkpoint already running (not even with a busy
/// timeout): it answers 1 at once, so a single try can leave the WAL, and the old page
/// images in it, where they were.
pub async fn truncate_wal<E, F, Fut>(wait: Duration, mut attempt: F) -> Result<bool, E>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<i64, E>>,
{
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        if attempt().await? == 0 {
            return Ok(true);
        }
        if tokio::time::Instant::now() >= deadline {
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// How much of the log a reader maps: all of it, in practice (see `SqliteStore::open`).
/// SQLite silently caps it at `SQLITE_MAX_MMAP_SIZE`, which `.cargo/config.toml` raises to
/// this for every build from the repository.
pub const READER_MMAP_BYTES: u64 = 1 << 40;

/// How long any connection to the log (writer, log readers, the sqlx pool) waits for a lock
/// another holds (a checkpoint, another process's commit) before it reports busy.
pub(super) const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Pages a reader keeps (`PRAGMA cache_size`; negative: KiB): 32 MiB.
const READER_CACHE_SIZE: i64 = -32768;

impl SqliteStore {
    /// Opens (creating if needed) the database at `url` (`sqlite://PATH`).
    pub async fn open(url: &str, limits: StoreLimits, migrate: bool) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            // Erased data (keys, read-model rows) must not survive in free pages.
            .pragma("secure_delete", "ON")
            .pragma("journal_size_limit", limits.wal_restart_bytes.to_string())
            .busy_timeout(BUSY_TIMEOUT);
        let path = options.get_filename();
        if path.as_os_str().is_empty() || path.to_string_lossy().contains(":memory:") {
            return Err(StoreError::Config(
                "an in-memory SQLite database cannot be shared by the writer and readers; give a file path".into(),
            ));
        }
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| StoreError::Config(format!("cannot create {}: {e}", dir.display())))?;
        }
        // Readers map the file (up to 1 TiB: the build raises SQLite's 2 GiB cap in
        // `.cargo/config.toml`) and keep up to 32 MiB of pages each: reading the log page by
        // page (rebuilds, catch-ups) then copies no page through `pread`, which at 10M
        // events (7 GB) cost a rebuild a quarter of its rate. The writer keeps the default,
        // so a failing disk still reports errors, not SIGBUS.
        let pool_options = options
            .clone()
            .pragma("mmap_size", READER_MMAP_BYTES.to_string())
            .pragma("cache_size", READER_CACHE_SIZE.to_string());
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(pool_options)
            .await?;
        if migrate {
            MIGRATOR.run(&pool).await?;
        }
        let rows = SqliteRows::open(ReaderSettings {
            path: path.to_owned(),
            busy_timeout: BUSY_TIMEOUT,
            mmap_bytes: READER_MMAP_BYTES,
            cache_size: READER_CACHE_SIZE,
            connections: 4,
        })?;
        let checkpointer =
            spawn_checkpointer(&options, limits.wal_restart_bytes, CHECKPOINT_EVERY).await?;
        // The writer never checkpoints inline: a checkpoint syncs the database file and would
        // stall the commit that triggers it. A background task checkpoints instead.
        let mut committer = SqliteCommitter::open(path, &limits)?;
        let head = committer.head()?;
        let committed = Committed {
            head: watch::channel(head).0,
            recent: Default::default(),
        };
        let writer = GroupCommit::start_on_thread("sqlite", committer, limits, committed.clone())
            .map_err(|e| {
            StoreError::Unavailable(format!("cannot start the log's writer: {e}"))
        })?;
        Ok(Self {
            inner: Arc::new(Inner {
                readers: SqlReader::new(rows, &committed),
                pool,
                writer,
                checkpointer,
            }),
        })
    }

    /// The sqlx pool, for read models and tools that share the database file.
    pub fn pool(&self) -> &SqlitePool {
        &self.inner.pool
    }
}

#[async_trait]
impl EventStore for SqliteStore {
    async fn append(
        &self,
        stream: &StreamName,
        expected: ExpectedVersion,
        events: Vec<EventData>,
    ) -> Result<AppendResult, StoreError> {
        self.inner
            .writer
            .append("sqlite", stream, expected, events)
            .await
    }

    async fn read_stream(
        &self,
        stream: &StreamName,
        from_version: u64,
        direction: Direction,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.inner
            .readers
            .read_stream(stream, from_version, direction, limit)
            .await
    }

    async fn read_all(
        &self,
        from_position: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.inner.readers.read_all(from_position, limit).await
    }

    async fn head_position(&self) -> Result<Option<u64>, StoreError> {
        self.inner.readers.head_position().await
    }

    fn head_changes(&self) -> tokio::sync::watch::Receiver<Option<u64>> {
        self.inner.readers.head_changes()
    }

    fn subscribe_all(
        &self,
        from_position: u64,
    ) -> BoxStream<'static, Result<RecordedEvent, StoreError>> {
        self.inner.readers.subscribe_all(from_position)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.inner.readers.ping().await
    }

    async fn close(&self) {
        self.inner.writer.close().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_blocked_truncation_is_tried_again_until_it_is_done_or_time_is_up() {
        let mut answers = vec![1, 1, 0].into_iter();
        let done = truncate_wal(TRUNCATE_WAIT, || {
            let busy = answers.next().unwrap_or(0);
            async move { Ok::<_, ()>(busy) }
        })
        .await;
        assert_eq!(done, Ok(true));
        assert_eq!(answers.next(), None, "three tries");

        let started = tokio::time::Instant::now();
        let done = truncate_wal(Duration::from_secs(1), || async { Ok::<_, ()>(1) }).await;
        assert_eq!(done, Ok(false));
        assert!(started.elapsed() >= Duration::from_secs(1));

        let failed = truncate_wal(TRUNCATE_WAIT, || async { Err::<i64, _>("gone") }).await;
        assert_eq!(failed, Err("gone"));
    }
}
