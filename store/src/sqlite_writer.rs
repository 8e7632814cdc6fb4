//! The SQLite log's writer: one plain (synchronous) connection that the group-commit thread
//! drives directly. Through sqlx every statement of a commit was a round trip to the
//! driver's worker thread — five thread wake-ups per batch on top of the fsync, which on two
//! cores cost more than the fsync at one writer. Here a batch is a run of cached prepared
//! statements on the writer's own thread.

use super::group_commit::{self, AppendRequest, Committer, KnownHead, Plan, StoredId};
use super::sql_read::clamp;
use super::sqlite::BUSY_TIMEOUT;
use super::{StoreError, StoreLimits};
use async_trait::async_trait;
use rusqlite::{Connection, ErrorCode, OpenFlags, OptionalExtension, TransactionBehavior};
use std::collections::{HashMap, HashSet};
use std::path::Path;

/// The statements a commit runs, prepared once per connection.
const HEAD: &str = "SELECT MAX(position) FROM events";
const STREAM_VERSION: &str = "SELECT MAX(version) FROM events WHERE stream = ?1";
const STORED_ID: &str = "SELECT stream, version, position FROM events WHERE event_id = ?1";
const INSERT: &str = "INSERT INTO events (position, event_id, stream, version, event_type, \
                      schema_version, data, metadata, recorded_at) \
                      VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)";

/// The writer's connection and what it remembers between batches.
pub(crate) struct SqliteCommitter {
    conn: Connection,
    /// The head after our last commit, so a batch need not ask for it. Another process may
    /// append to the same file meanwhile: then our first insert collides with its position
    /// (primary key), the batch fails as a whole, the cache is dropped, and the retry reads
    /// the real head. A stale cache can cost a retry, never a wrong position.
    head: KnownHead,
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        Self::Sqlite(e)
    }
}

/// The log's last position on `conn`.
fn read_head(conn: &Connection) -> Result<Option<u64>, StoreError> {
    let head: Option<i64> = conn.prepare_cached(HEAD)?.query_row([], |r| r.get(0))?;
    Ok(head.and_then(|h| u64::try_from(h).ok()))
}

impl SqliteCommitter {
    /// Opens the writer on the (migrated, WAL-mode) database at `path`: every commit is
    /// durable (`synchronous=FULL`), erased rows leave no plaintext in free pages, and it
    /// never checkpoints inline (the store's checkpointer does, off the commit path).
    pub(crate) fn open(path: &Path, limits: &StoreLimits) -> Result<Self, StoreError> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        let mode: String =
            conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Config(format!(
                "the log needs WAL mode, but SQLite kept {mode} for {}",
                path.display()
            )));
        }
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "secure_delete", "ON")?;
        conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        conn.pragma_update(None, "journal_size_limit", clamp(limits.wal_restart_bytes))?;
        conn.set_prepared_statement_cache_capacity(8);
        Ok(Self {
            conn,
            head: KnownHead::default(),
        })
    }

    /// The log's last position, as a new store announces it.
    pub(crate) fn head(&mut self) -> Result<Option<u64>, StoreError> {
        read_head(&self.conn)
    }

    /// One transaction for the batch; on failure the cached head is forgotten.
    fn commit_once(&mut self, batch: &[AppendRequest]) -> Result<Plan, StoreError> {
        let outcome = self.write(batch);
        self.head.after(&outcome);
        outcome
    }

    fn write(&mut self, batch: &[AppendRequest]) -> Result<Plan, StoreError> {
        // Rolled back when dropped: any error below leaves nothing written.
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        // Read under the write lock, so no other process can append between it and ours.
        let head = match self.head.get() {
            Some(head) => head,
            None => read_head(&tx)?,
        };
        let mut versions = HashMap::new();
        let mut asked = HashSet::new();
        let mut existing = HashMap::new();
        {
            let mut version = tx.prepare_cached(STREAM_VERSION)?;
            let mut stored = tx.prepare_cached(STORED_ID)?;
            let mut id_buf = uuid::Uuid::encode_buffer();
            for req in batch {
                let stream = req.stream.to_string();
                if asked.insert(stream.clone()) {
                    let v: Option<i64> = version.query_row([&stream], |r| r.get(0))?;
                    if let Some(v) = v {
                        versions.insert(stream, u64::try_from(v).unwrap_or(0));
                    }
                }
                for e in &req.events {
                    let id: &str = e.event_id.hyphenated().encode_lower(&mut id_buf);
                    let hit = stored
                        .query_row([id], |r| {
                            Ok(StoredId {
                                stream: r.get(0)?,
                                version: u64::try_from(r.get::<_, i64>(1)?).unwrap_or(0),
                                position: u64::try_from(r.get::<_, i64>(2)?).unwrap_or(0),
                            })
                        })
                        .optional()?;
                    if let Some(hit) = hit {
                        existing.insert(e.event_id, hit);
                    }
                }
            }
        }
        let plan = group_commit::plan_now(batch, head, versions, existing);
        if plan.rows.is_empty() {
            // Nothing to write (all rejected or retried): the drop rolls back.
            return Ok(plan);
        }
        {
            let mut insert = tx.prepare_cached(INSERT)?;
            let mut id_buf = uuid::Uuid::encode_buffer();
            let mut last_req = usize::MAX;
            let mut stream = String::new();
            for row in &plan.rows {
                let req = &batch[row.req];
                if row.req != last_req {
                    stream = req.stream.to_string();
                    last_req = row.req;
                }
                let e = &req.events[row.ev];
                let id: &str = e.event_id.hyphenated().encode_lower(&mut id_buf);
                insert.execute(rusqlite::params![
                    clamp(row.position),
                    id,
                    stream,
                    clamp(row.version),
                    e.event_type,
                    i64::from(e.schema_version),
                    e.data,
                    e.metadata,
                    e.recorded_at.unwrap_or(plan.recorded_at),
                ])?;
            }
        }
        tx.commit()?;
        Ok(plan)
    }
}

#[async_trait]
impl Committer for SqliteCommitter {
    async fn commit(&mut self, batch: &[AppendRequest]) -> Result<Plan, StoreError> {
        let cached = self.head.get().is_some();
        match self.commit_once(batch) {
            // Another process moved the head under our cache: try again with the real one.
            Err(StoreError::Sqlite(e)) if cached && is_unique_violation(&e) => {
                self.commit_once(batch)
            }
            other => other,
        }
    }
}

fn is_unique_violation(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _) if f.code == ErrorCode::ConstraintViolation)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::group_commit::SerializedEvent;
    use crate::{AppendResult, ExpectedVersion};
    use neulbi_domain::{StreamKind, StreamName};
    use uuid::Uuid;

    /// A migrated log file in a directory of its own, removed when dropped.
    struct TempLog(std::path::PathBuf);

    impl TempLog {
        async fn new() -> Self {
            let dir = std::env::temp_dir().join(format!("neulbi-writer-{}", Uuid::new_v4()));
            std::fs::create_dir_all(&dir).expect("temp dir");
            let url = format!("sqlite://{}", dir.join("log.db").display());
            let store = crate::sqlite::SqliteStore::open(&url, StoreLimits::default(), true)
                .await
                .expect("migrate");
            crate::EventStore::close(&store).await;
            Self(dir)
        }

        fn path(&self) -> std::path::PathBuf {
            self.0.join("log.db")
        }

        fn rows(&self) -> Vec<(i64, String, String)> {
            let conn = Connection::open(self.path()).expect("open");
            let mut stmt = conn
                .prepare("SELECT position, stream, event_type FROM events ORDER BY position")
                .expect("prepare");
            stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .expect("query")
                .collect::<Result<_, _>>()
                .expect("rows")
        }
    }

    impl Drop for TempLog {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn room(n: u128) -> StreamName {
        StreamName::new(StreamKind::Room, Uuid::from_u128(n))
    }

    fn req(stream: StreamName, expected: ExpectedVersion, types: &[&str]) -> AppendRequest {
        AppendRequest {
            stream,
            expected,
            events: types
                .iter()
                .map(|t| SerializedEvent::empty(Uuid::new_v4(), t))
                .collect(),
        }
    }

    fn commit(w: &mut SqliteCommitter, batch: &[AppendRequest]) -> Result<Plan, StoreError> {
        futures::executor::block_on(w.commit(batch))
    }

    /// The real writer, then a crash before anyone hears of the commit: the process dying
    /// between a durable batch and its acknowledgements.
    struct CrashAfterCommit(SqliteCommitter);

    #[async_trait]
    impl Committer for CrashAfterCommit {
        async fn commit(&mut self, batch: &[AppendRequest]) -> Result<Plan, StoreError> {
            let _durable = self.0.commit(batch).await?;
            panic!("crashed between the batch and its acks (expected by this test)");
        }
    }

    #[tokio::test]
    async fn a_crash_between_a_durable_batch_and_its_acks_loses_nothing_and_a_retry_lands_once() {
        let log = TempLog::new().await;
        let limits = StoreLimits::default();
        let ids = [Uuid::new_v4(), Uuid::new_v4()];
        let append = || AppendRequest {
            stream: room(1),
            expected: ExpectedVersion::NoStream,
            events: vec![
                SerializedEvent::empty(ids[0], "A"),
                SerializedEvent::empty(ids[1], "B"),
            ],
        };
        let crashing = CrashAfterCommit(SqliteCommitter::open(&log.path(), &limits).expect("open"));
        let committed = group_commit::Committed {
            head: tokio::sync::watch::channel(None).0,
            recent: Default::default(),
        };
        let writer =
            group_commit::GroupCommit::start_on_thread("crashing", crashing, limits, committed)
                .expect("thread");
        let outcome = writer.submit(append()).await;
        assert!(
            matches!(outcome, Err(StoreError::Closed)),
            "no acknowledgement: {outcome:?}"
        );
        // The batch is in the file all the same.
        let types =
            |rows: Vec<(i64, String, String)>| rows.into_iter().map(|r| r.2).collect::<Vec<_>>();
        assert_eq!(types(log.rows()), ["A", "B"]);
        // The client, unanswered, retries with the same ids against a restarted writer: it is
        // answered as the append that landed, and nothing is written twice.
        let mut restarted = SqliteCommitter::open(&log.path(), &limits).expect("open");
        let plan = commit(&mut restarted, &[append()]).expect("commit");
        assert!(matches!(
            plan.results[0],
            Ok(AppendResult {
                first_position: 0,
                last_position: 1,
                next_expected_version: 1,
            })
        ));
        assert_eq!(types(log.rows()), ["A", "B"]);
    }

    #[tokio::test]
    async fn a_batch_writes_its_accepted_appends_in_one_transaction() {
        let log = TempLog::new().await;
        let mut w = SqliteCommitter::open(&log.path(), &StoreLimits::default()).expect("open");
        // Durable before the ack: the WAL is synced on every commit.
        let sync: i64 = w
            .conn
            .pragma_query_value(None, "synchronous", |r| r.get(0))
            .expect("synchronous");
        assert_eq!(sync, 2, "synchronous=FULL");
        assert_eq!(w.head().expect("head"), None);
        let batch = [
            req(room(1), ExpectedVersion::NoStream, &["A", "B"]),
            req(room(1), ExpectedVersion::NoStream, &["rejected"]),
            req(room(2), ExpectedVersion::Exact(4), &["rejected"]),
            req(room(2), ExpectedVersion::Any, &["C"]),
        ];
        let plan = commit(&mut w, &batch).expect("commit");
        assert!(matches!(
            plan.results[0],
            Ok(AppendResult {
                first_position: 0,
                last_position: 1,
                ..
            })
        ));
        assert!(plan.results[1].as_ref().is_err_and(StoreError::is_conflict));
        assert!(plan.results[2].as_ref().is_err_and(StoreError::is_conflict));
        assert!(matches!(
            plan.results[3],
            Ok(AppendResult {
                first_position: 2,
                ..
            })
        ));
        let types: Vec<String> = log.rows().into_iter().map(|r| r.2).collect();
        assert_eq!(types, ["A", "B", "C"]);
        assert_eq!(w.head().expect("head"), Some(2));

        // Retrying the first append answers as before and writes nothing.
        let again = commit(&mut w, &batch[..1]).expect("retry");
        assert!(matches!(
            again.results[0],
            Ok(AppendResult {
                first_position: 0,
                ..
            })
        ));
        assert!(again.rows.is_empty());
        assert_eq!(log.rows().len(), 3);
    }

    #[tokio::test]
    async fn a_head_moved_by_another_writer_costs_a_retry_not_a_wrong_position() {
        let log = TempLog::new().await;
        let mut w = SqliteCommitter::open(&log.path(), &StoreLimits::default()).expect("open");
        commit(&mut w, &[req(room(1), ExpectedVersion::NoStream, &["A"])]).expect("first");
        // Another process appends position 1 behind the writer's cached head.
        let mut other = SqliteCommitter::open(&log.path(), &StoreLimits::default()).expect("open");
        commit(
            &mut other,
            &[req(room(2), ExpectedVersion::NoStream, &["B"])],
        )
        .expect("other");
        let plan = commit(&mut w, &[req(room(3), ExpectedVersion::NoStream, &["C"])])
            .expect("retried with the real head");
        assert!(matches!(
            plan.results[0],
            Ok(AppendResult {
                first_position: 2,
                ..
            })
        ));
        let positions: Vec<i64> = log.rows().into_iter().map(|r| r.0).collect();
        assert_eq!(positions, [0, 1, 2]);
    }

    #[tokio::test]
    async fn a_failing_batch_writes_nothing_and_the_next_one_lands() {
        let log = TempLog::new().await;
        // A failure the plan cannot foresee, in the middle of a batch's inserts.
        Connection::open(log.path())
            .expect("open")
            .execute_batch(
                "CREATE TRIGGER poison BEFORE INSERT ON events WHEN NEW.event_type = 'poison' \
                 BEGIN SELECT RAISE(ABORT, 'poisoned'); END;",
            )
            .expect("trigger");
        let mut w = SqliteCommitter::open(&log.path(), &StoreLimits::default()).expect("open");
        commit(&mut w, &[req(room(1), ExpectedVersion::NoStream, &["A"])]).expect("first");
        let err = commit(
            &mut w,
            &[
                req(room(2), ExpectedVersion::NoStream, &["B"]),
                req(room(3), ExpectedVersion::NoStream, &["poison"]),
            ],
        )
        .expect_err("poisoned");
        assert!(err.to_string().contains("poisoned"), "{err}");
        assert_eq!(log.rows().len(), 1, "nothing of the failed batch is stored");
        let plan =
            commit(&mut w, &[req(room(2), ExpectedVersion::NoStream, &["B"])]).expect("next batch");
        assert!(matches!(
            plan.results[0],
            Ok(AppendResult {
                first_position: 1,
                ..
            })
        ));
        assert_eq!(log.rows().len(), 2);
    }
}
