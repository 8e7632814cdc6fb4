//! The read-model database: one `sqlx::Any` pool over SQLite or PostgreSQL, so every read
//! model is written once. Statements use `$1, $2, ...` placeholders, numbered in order of
//! first appearance, which both SQLite and PostgreSQL accept.
//!
//! With the embedded SQLite default the read models live in their own file beside the log
//! (`neulbi-read.db`): they can be deleted and rebuilt at any time, and projecting never
//! competes with appends for the log's write lock.

use neulbi_store::DataKeys;
use sqlx::AnyPool;
use sqlx::any::{AnyPoolOptions, install_default_drivers};
use std::sync::Arc;
use std::time::Duration;

/// Which SQL dialect the read models speak (DDL differs a little).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// The embedded default.
    Sqlite,
    /// The multi-node setup.
    Postgres,
}

/// A connection pool to the read-model database, and the data keys its queries open sealed
/// personal values with.
#[derive(Clone)]
pub struct ReadDb {
    /// The pool.
    pub pool: AnyPool,
    /// Its dialect.
    pub dialect: Dialect,
    /// Opens the sealed personal values queries return; without it they read as absent.
    pub keys: Option<Arc<dyn DataKeys>>,
    /// SQLite's background checkpointer, stopped with the last clone.
    _checkpointer: Option<Arc<Checkpointer>>,
}

/// Past this much WAL the read model's checkpointer makes it start over (as the log's does).
const WAL_RESTART_BYTES: u64 = 64 << 20;

/// How often a serving node's read-model WAL is copied back into its file: as often as the
/// log's ([`neulbi_store::sqlite::CHECKPOINT_EVERY`]). Each checkpoint syncs what the projectors wrote since the last, and the log's
/// appends wait behind that sync on the same disk: every 5 s, deliveries stalled 100–180 ms
/// once per checkpoint (p99 at 4,000 deliveries/s 98–112 ms, against 18 ms at 500 ms;
/// docs/benchmarks.md). Nothing else waits for it: readers see commits in the WAL.
pub const CHECKPOINT_EVERY: Duration = neulbi_store::sqlite::CHECKPOINT_EVERY;

/// How often a command-line rebuild's read-model WAL is copied back: no deliveries wait on
/// the disk there, and fewer, larger checkpoints rewrite each page less often (a 10M-event
/// rebuild took 73.3–73.6 s at twice a second, 69.1–69.9 s at every 5 s).
pub const BATCH_CHECKPOINT_EVERY: Duration = Duration::from_secs(5);

/// A PostgreSQL read-model connection idle at least this long is pinged before use.
const PING_AFTER_IDLE: Duration = Duration::from_secs(30);

/// Aborts the checkpointer task when dropped.
struct Checkpointer(tokio::task::JoinHandle<()>);

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl std::fmt::Debug for ReadDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadDb")
            .field("dialect", &self.dialect)
            .field("keys", &self.keys.is_some())
            .finish_non_exhaustive()
    }
}

/// Column `i` held a value its type cannot be read from (an id that is not a UUID).
pub(crate) fn undecodable(
    i: usize,
    e: impl std::error::Error + Send + Sync + 'static,
) -> crate::ProjectionError {
    crate::ProjectionError::Database(sqlx::Error::ColumnDecode {
        index: i.to_string(),
        source: Box::new(e),
    })
}

/// A prebuilt statement: built once per projector instance (table names vary by suffix
/// during a rebuild), executed many times.
pub type Sql = Arc<str>;

/// Wraps a prebuilt statement for sqlx, which only takes audited SQL: ours is built from
/// constant templates and table names we choose, never from input.
pub fn sql(s: &Sql) -> sqlx::AssertSqlSafe<Arc<str>> {
    sqlx::AssertSqlSafe(s.clone())
}

/// The read-model URL for an event-store URL: the same PostgreSQL database, or a sibling
/// SQLite file (`x.db` → `x-read.db`).
pub fn read_model_url(store_url: &str) -> String {
    match store_url.strip_prefix("sqlite://") {
        Some(path) => {
            let (path, query) = path.split_once('?').map_or((path, ""), |(p, q)| (p, q));
            let stem = path.strip_suffix(".db").unwrap_or(path);
            let q = if query.is_empty() {
                String::new()
            } else {
                format!("&{query}")
            };
            format!("sqlite://{stem}-read.db?mode=rwc{q}")
        }
        None => store_url.to_owned(),
    }
}

impl ReadDb {
    /// Connects to `url` (as produced by [`read_model_url`]) for a serving node.
    pub async fn connect(url: &str) -> Result<Self, sqlx::Error> {
        Self::connect_checkpointing(url, CHECKPOINT_EVERY).await
    }

    /// Connects to `url` for batch work with nobody waiting on deliveries (the `projections`
    /// commands: a rebuild), checkpointing SQLite's WAL every [`BATCH_CHECKPOINT_EVERY`].
    pub async fn connect_for_batch(url: &str) -> Result<Self, sqlx::Error> {
        Self::connect_checkpointing(url, BATCH_CHECKPOINT_EVERY).await
    }

    /// Connects to `url`, copying SQLite's WAL back into the file every `every`.
    async fn connect_checkpointing(url: &str, every: Duration) -> Result<Self, sqlx::Error> {
        install_default_drivers();
        let dialect = if url.starts_with("sqlite:") {
            Dialect::Sqlite
        } else {
            Dialect::Postgres
        };
        let dir = url
            .trim_start_matches("sqlite://")
            .split('?')
            .next()
            .and_then(|p| std::path::Path::new(p).parent())
            .filter(|d| !d.as_os_str().is_empty());
        if let (Dialect::Sqlite, Some(dir)) = (dialect, dir) {
            std::fs::create_dir_all(dir).map_err(sqlx::Error::Io)?;
        }
        let pool = AnyPoolOptions::new()
            .max_connections(if dialect == Dialect::Sqlite { 4 } else { 8 })
            .acquire_timeout(Duration::from_secs(10))
            // sqlx pings every connection it hands out: on SQLite one more trip to its worker
            // thread and back per projector transaction, for a file that cannot go away.
            // PostgreSQL connections idle a while are pinged, so one the server or a proxy
            // dropped is replaced instead of failing its query.
            .test_before_acquire(false)
            .before_acquire(move |conn, meta| {
                Box::pin(async move {
                    if dialect == Dialect::Postgres && meta.idle_for >= PING_AFTER_IDLE {
                        sqlx::Connection::ping(conn).await?;
                    }
                    Ok(true)
                })
            })
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if dialect == Dialect::Sqlite {
                        // Read models are rebuildable, so NORMAL sync is enough; secure_delete
                        // keeps erased plaintext out of free pages. A page cache of up to
                        // 64 MiB per connection (and statement journals in memory) keeps a
                        // batch's B-tree pages from spilling to the WAL mid-transaction. No
                        // commit checkpoints: a background task does (see `connect`).
                        // The WAL file is cut back to what the checkpointer restarts at.
                        let pragmas = format!(
                            "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; \
                             PRAGMA busy_timeout=10000; PRAGMA secure_delete=ON; \
                             PRAGMA cache_size=-65536; PRAGMA temp_store=MEMORY; \
                             PRAGMA wal_autocheckpoint=0; PRAGMA journal_size_limit={WAL_RESTART_BYTES};"
                        );
                        sqlx::raw_sql(sqlx::AssertSqlSafe(pragmas))
                            .execute(&mut *conn)
                            .await?;
                    }
                    Ok(())
                })
            })
            .connect(url)
            .await?;
        // Checkpoints run off the commit path (the log store's checkpointer): a commit that
        // crossed the threshold used to copy the WAL back and sync the file before returning
        // (after a rebuild's deferred index, ~400 MB at 10M events).
        let checkpointer = match dialect {
            Dialect::Sqlite => {
                let options = std::str::FromStr::from_str(url)?;
                let task =
                    neulbi_store::sqlite::spawn_checkpointer(&options, WAL_RESTART_BYTES, every)
                        .await?;
                Some(Arc::new(Checkpointer(task)))
            }
            Dialect::Postgres => None,
        };
        Ok(Self {
            pool,
            dialect,
            keys: None,
            _checkpointer: checkpointer,
        })
    }

    /// The same read models, opening sealed personal values with `keys` (the event store's
    /// data keys: [`neulbi_store::EventStore::data_keys`]).
    pub fn with_keys(mut self, keys: Option<Arc<dyn DataKeys>>) -> Self {
        self.keys = keys;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::{ReadDb, read_model_url};

    /// Commits never copy the WAL back themselves (`wal_autocheckpoint=0`): the pages reach
    /// the database file only through the background checkpointer.
    #[tokio::test]
    async fn the_checkpointer_copies_committed_pages_into_the_file() {
        let dir = tempfile::tempdir().expect("dir");
        let file = dir.path().join("r.db");
        let db = ReadDb::connect(&format!("sqlite://{}?mode=rwc", file.display()))
            .await
            .expect("connect");
        let mut conn = db.pool.acquire().await.expect("connection");
        for (pragma, expected) in [
            ("wal_autocheckpoint", 0),
            (
                "journal_size_limit",
                i64::try_from(super::WAL_RESTART_BYTES).expect("fits"),
            ),
        ] {
            let value: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("PRAGMA {pragma}")))
                .fetch_one(&mut *conn)
                .await
                .expect("pragma");
            assert_eq!(value, expected, "{pragma}");
        }
        drop(conn);
        sqlx::query("CREATE TABLE t (b BLOB)")
            .execute(&db.pool)
            .await
            .expect("table");
        let before = std::fs::metadata(&file).expect("file").len();
        for _ in 0..64 {
            sqlx::query("INSERT INTO t VALUES (zeroblob(65536))")
                .execute(&db.pool)
                .await
                .expect("insert");
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let now = std::fs::metadata(&file).expect("file").len();
            if now >= before + (4 << 20) {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "4 MiB committed, the file grew from {before} to {now} bytes in 20 s"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        drop(db);
    }

    #[test]
    fn read_models_sit_beside_a_sqlite_log_and_share_postgres() {
        assert_eq!(
            read_model_url("sqlite://data/neulbi.db"),
            "sqlite://data/neulbi-read.db?mode=rwc"
        );
        assert_eq!(read_model_url("postgres://u@h/db"), "postgres://u@h/db");
    }
}
