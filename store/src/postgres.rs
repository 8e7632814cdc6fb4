//! The multi-node backend on PostgreSQL.
//!
//! Gap-free visibility: every append transaction first takes one transaction-scoped advisory
//! lock, then assigns positions after the current maximum. Transactions that write the log
//! therefore commit one after another in position order, so when a reader sees position n,
//! every lower position is already visible, and a subscriber that reads "everything after my
//! checkpoint" can never skip a slow transaction. Group commit keeps the lock cheap: one node
//! folds all its concurrent appends into a single transaction. Commits are announced with
//! `NOTIFY`, so other nodes' subscribers wake without waiting for their poll.

use super::group_commit::{
    self, AppendRequest, Committed, Committer, GroupCommit, KnownHead, Plan, StoredId,
};
use super::model::RawRow;
use super::sql_read::{SqlBackend, SqlReader, clamp, select_events};
use super::{
    AppendResult, Direction, EventData, EventStore, ExpectedVersion, RecordedEvent, StoreError,
    StoreLimits,
};
use async_trait::async_trait;
use futures::stream::BoxStream;
use neulbi_domain::StreamName;
use sqlx::Row;
use sqlx::postgres::{PgListener, PgPool, PgPoolOptions, PgRow};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use uuid::Uuid;

/// Embedded migrations for PostgreSQL.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/postgres");

/// The advisory lock key that serializes log writers across all nodes ("neulbi" in ASCII).
const APPEND_LOCK: i64 = 0x6e65_756c_6269;
/// The channel on which commits are announced; the payload is the new head position.
const CHANNEL: &str = "neulbi_events";

impl SqlBackend for sqlx::Postgres {
    const READ_ALL: &'static str =
        select_events!("WHERE position >= $1 ORDER BY position LIMIT $2");
    const READ_RANGE: &'static str =
        select_events!("WHERE position >= $1 AND position < $2 ORDER BY position");
    const READ_FORWARD: &'static str =
        select_events!("WHERE stream = $1 AND version >= $2 ORDER BY version LIMIT $3");
    const READ_BACKWARD: &'static str =
        select_events!("WHERE stream = $1 AND version <= $2 ORDER BY version DESC LIMIT $3");
    // Commits are announced with NOTIFY; polling covers a lost LISTEN connection.
    const POLL: Duration = Duration::from_secs(1);

    fn raw(row: &PgRow) -> Result<RawRow<'_>, StoreError> {
        // Unchecked: the columns' types are the schema's (`select_events!`), and the per-column
        // type check was a tenth of a `read_all` page's decoding.
        let schema_version: i32 = row.try_get_unchecked(5)?;
        Ok(RawRow {
            position: row.try_get_unchecked(0)?,
            event_id: row.try_get_unchecked(1)?,
            stream: row.try_get_unchecked(2)?,
            version: row.try_get_unchecked(3)?,
            event_type: row.try_get_unchecked(4)?,
            schema_version: i64::from(schema_version),
            data: row.try_get_unchecked(6)?,
            metadata: row.try_get_unchecked(7)?,
            recorded_at: row.try_get_unchecked(8)?,
        })
    }

    fn head(row: &PgRow) -> Result<Option<i64>, StoreError> {
        Ok(row.try_get(0)?)
    }
}

/// The PostgreSQL event store. Cheap to clone; all clones share one writer.
#[derive(Clone)]
pub struct PostgresStore {
    inner: Arc<Inner>,
}

struct Inner {
    /// The pool and the head announcements.
    reader: SqlReader<PgPool>,
    writer: GroupCommit,
    listener: JoinHandle<()>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.listener.abort();
    }
}

impl PostgresStore {
    /// Connects to `url`, running migrations first when `migrate` is set.
    pub async fn connect(
        url: &str,
        limits: StoreLimits,
        migrate: bool,
    ) -> Result<Self, StoreError> {
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(10))
            .connect(url)
            .await?;
        if migrate {
            MIGRATOR.run(&pool).await?;
        }
        let head: Option<i64> = sqlx::query_scalar("SELECT MAX(position) FROM events")
            .fetch_one(&pool)
            .await?;
        let committed = Committed {
            head: watch::channel(head.and_then(|h| u64::try_from(h).ok())).0,
            recent: Default::default(),
        };
        let mut listener = PgListener::connect_with(&pool).await?;
        listener.listen(CHANNEL).await?;
        let listener = tokio::spawn(listen(listener, committed.head.clone()));
        let writer = GroupCommit::start(
            "postgres",
            PgCommitter::new(pool.clone()),
            limits,
            committed.clone(),
        );
        Ok(Self {
            inner: Arc::new(Inner {
                reader: SqlReader::new(pool, &committed),
                writer,
                listener,
            }),
        })
    }

    /// The connection pool, for read models that live in the same database.
    pub fn pool(&self) -> &PgPool {
        self.inner.reader.rows()
    }
}

/// Forwards commit announcements from other nodes (and our own) to local subscribers.
async fn listen(mut listener: PgListener, head: watch::Sender<Option<u64>>) {
    loop {
        match listener.recv().await {
            Ok(n) => {
                if let Ok(pos) = n.payload().parse::<u64>() {
                    group_commit::publish_head(&head, Some(pos));
                }
            }
            Err(e) => {
                // The listener reconnects on its own; subscribers poll in the meantime.
                tracing::warn!(error = %e, "LISTEN connection lost; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

#[async_trait]
impl EventStore for PostgresStore {
    async fn append(
        &self,
        stream: &StreamName,
        expected: ExpectedVersion,
        events: Vec<EventData>,
    ) -> Result<AppendResult, StoreError> {
        self.inner
            .writer
            .append("postgres", stream, expected, events)
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
            .reader
            .read_stream(stream, from_version, direction, limit)
            .await
    }

    async fn read_all(
        &self,
        from_position: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.inner.reader.read_all(from_position, limit).await
    }

    async fn head_position(&self) -> Result<Option<u64>, StoreError> {
        self.inner.reader.head_position().await
    }

    fn head_changes(&self) -> tokio::sync::watch::Receiver<Option<u64>> {
        self.inner.reader.head_changes()
    }

    fn subscribe_all(
        &self,
        from_position: u64,
    ) -> BoxStream<'static, Result<RecordedEvent, StoreError>> {
        self.inner.reader.subscribe_all(from_position)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.inner.reader.ping().await
    }

    async fn close(&self) {
        self.inner.writer.close().await;
    }
}

struct PgCommitter {
    pool: PgPool,
    /// The head after this node's last commit: with it a batch can be planned from its
    /// callers' expectations and checked by the insert itself.
    head: KnownHead,
}

/// What a batch is planned on when it skips the look at the log: the cached head and, per
/// stream, the version its first caller expects. The insert checks both under the lock.
struct Prediction {
    head: Option<u64>,
    streams: Vec<String>,
    versions: Vec<Option<i64>>,
}

impl PgCommitter {
    fn new(pool: PgPool) -> Self {
        Self {
            pool,
            head: KnownHead::default(),
        }
    }

    /// A prediction when every caller names the version it expects (actors do); `Any` needs
    /// the look at the log.
    fn predict(&self, batch: &[AppendRequest]) -> Option<Prediction> {
        let head = self.head.get()?;
        let mut seen = HashSet::new();
        let (mut streams, mut versions) = (Vec::new(), Vec::new());
        for req in batch {
            let expected = match req.expected {
                ExpectedVersion::Exact(v) => Some(clamp(v)),
                ExpectedVersion::NoStream => None,
                ExpectedVersion::Any => return None,
            };
            let name = req.stream.to_string();
            if seen.insert(name.clone()) {
                streams.push(name);
                versions.push(expected);
            }
        }
        Some(Prediction {
            head,
            streams,
            versions,
        })
    }

    /// Begins a log transaction holding the append lock. The lock is its own statement: the
    /// statements after it then read a snapshot taken once the previous batch has committed.
    async fn begin(&self) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, StoreError> {
        Ok(self
            .pool
            .begin_with(sqlx::AssertSqlSafe(format!(
                "BEGIN; SELECT pg_advisory_xact_lock({APPEND_LOCK})"
            )))
            .await?)
    }

    /// Three round trips when the prediction holds (begin with the lock, the checked insert
    /// with its notification, commit); a stale one costs the look at the log in the same
    /// transaction, a retried event id a new transaction.
    async fn commit_batch(&mut self, batch: &[AppendRequest]) -> Result<Plan, StoreError> {
        let mut tx = self.begin().await?;
        if let Some(prediction) = self.predict(batch) {
            let versions = prediction
                .streams
                .iter()
                .zip(&prediction.versions)
                .filter_map(|(s, v)| Some((s.clone(), u64::try_from((*v)?).ok()?)))
                .collect();
            let plan = group_commit::plan_now(batch, prediction.head, versions, HashMap::new());
            if !plan.rows.is_empty() {
                match insert(&mut tx, batch, &plan, Some(&prediction)).await {
                    Ok(true) => {
                        tx.commit().await?;
                        return Ok(plan);
                    }
                    // Another node wrote, or a stream is not where its caller thinks: look.
                    Ok(false) => {}
                    // An event id already stored (a retried append): the look finds it.
                    Err(StoreError::Database(sqlx::Error::Database(e)))
                        if e.is_unique_violation() =>
                    {
                        tx.rollback().await?;
                        tx = self.begin().await?;
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        let plan = look_and_plan(&mut tx, batch).await?;
        if plan.rows.is_empty() {
            tx.rollback().await?;
            return Ok(plan);
        }
        insert(&mut tx, batch, &plan, None).await?;
        tx.commit().await?;
        Ok(plan)
    }
}

/// Reads the head, the batch's streams' last versions and where its event ids are stored,
/// and plans the batch on them.
async fn look_and_plan(
    tx: &mut sqlx::Transaction<'static, sqlx::Postgres>,
    batch: &[AppendRequest],
) -> Result<Plan, StoreError> {
    let mut names: Vec<String> = batch.iter().map(|r| r.stream.to_string()).collect();
    names.sort();
    names.dedup();
    let ids: Vec<Uuid> = batch
        .iter()
        .flat_map(|r| r.events.iter().map(|e| e.event_id))
        .collect();
    // Kind 0: the head; 1: a stream's last version (one index probe per stream: `GROUP
    // BY` over `= ANY` read every version of every stream); 2: where an event id is stored.
    let rows = sqlx::query(
        "SELECT 0 AS k, NULL::text, NULL::uuid, MAX(position), NULL::bigint FROM events \
         UNION ALL \
         SELECT 1, s, NULL, (SELECT MAX(version) FROM events WHERE stream = s), NULL FROM UNNEST($1::text[]) AS s \
         UNION ALL \
         SELECT 2, stream, event_id, version, position FROM events WHERE event_id = ANY($2)",
    )
    .bind(&names)
    .bind(&ids)
    .fetch_all(&mut **tx)
    .await?;
    let mut head = None;
    let mut versions = HashMap::new();
    let mut existing = HashMap::new();
    let count = |v: i64| u64::try_from(v).unwrap_or(0);
    for r in rows {
        match r.try_get::<i32, _>(0)? {
            0 => head = r.try_get::<Option<i64>, _>(3)?.map(count),
            1 => {
                if let Some(v) = r.try_get::<Option<i64>, _>(3)? {
                    versions.insert(r.try_get(1)?, count(v));
                }
            }
            _ => {
                existing.insert(
                    r.try_get(2)?,
                    StoredId {
                        stream: r.try_get(1)?,
                        version: count(r.try_get(3)?),
                        position: count(r.try_get(4)?),
                    },
                );
            }
        }
    }
    Ok(group_commit::plan_now(batch, head, versions, existing))
}

/// Inserts the plan's rows and announces the new head. With a prediction, only if the head
/// and every stream's version are still what it says (one statement, under the lock); the
/// answer is whether the rows went in.
async fn insert(
    tx: &mut sqlx::Transaction<'static, sqlx::Postgres>,
    batch: &[AppendRequest],
    plan: &Plan,
    check: Option<&Prediction>,
) -> Result<bool, StoreError> {
    let n = plan.rows.len();
    let mut positions = Vec::with_capacity(n);
    let mut event_ids = Vec::with_capacity(n);
    let mut streams = Vec::with_capacity(n);
    let mut versions = Vec::with_capacity(n);
    let mut types = Vec::with_capacity(n);
    let mut schemas = Vec::with_capacity(n);
    let mut datas = Vec::with_capacity(n);
    let mut metas = Vec::with_capacity(n);
    let mut times = Vec::with_capacity(n);
    for row in &plan.rows {
        let req = &batch[row.req];
        let e = &req.events[row.ev];
        positions.push(clamp(row.position));
        event_ids.push(e.event_id);
        streams.push(req.stream.to_string());
        versions.push(clamp(row.version));
        types.push(e.event_type.as_str());
        schemas.push(i32::try_from(e.schema_version).unwrap_or(i32::MAX));
        datas.push(e.data.as_str());
        metas.push(e.metadata.as_str());
        times.push(e.recorded_at.unwrap_or(plan.recorded_at));
    }
    let (checked, head, check_streams, check_versions): (_, _, &[String], &[Option<i64>]) =
        match check {
            Some(p) => (true, p.head.map(clamp), &p.streams, &p.versions),
            None => (false, None, &[], &[]),
        };
    // `ok` is true without a check; with one, the head and each stream's last version must be
    // the predicted ones (NULL: no events).
    let row = sqlx::query(
        "WITH ok AS (SELECT NOT $12::bool OR ( \
             (SELECT MAX(position) FROM events) IS NOT DISTINCT FROM $13::bigint \
             AND NOT EXISTS (SELECT 1 FROM UNNEST($14::text[], $15::bigint[]) AS c(s, v) \
                 WHERE (SELECT MAX(version) FROM events WHERE stream = c.s) IS DISTINCT FROM c.v)) AS ok), \
         ins AS (INSERT INTO events (position, event_id, stream, version, event_type, schema_version, data, metadata, recorded_at) \
             SELECT p, i, s, v, t, sv, d, m, r FROM UNNEST($1::bigint[], $2::uuid[], $3::text[], $4::bigint[], $5::text[], $6::int[], $7::text[], $8::text[], $9::bigint[]) \
             AS x(p, i, s, v, t, sv, d, m, r) WHERE (SELECT ok FROM ok)) \
         SELECT ok, CASE WHEN ok THEN pg_notify($10, $11) END FROM ok",
    )
    .bind(&positions)
    .bind(&event_ids)
    .bind(&streams)
    .bind(&versions)
    .bind(&types)
    .bind(&schemas)
    .bind(&datas)
    .bind(&metas)
    .bind(&times)
    .bind(CHANNEL)
    .bind(plan.head.map_or_else(String::new, |h| h.to_string()))
    .bind(checked)
    .bind(head)
    .bind(check_streams)
    .bind(check_versions)
    .fetch_one(&mut **tx)
    .await?;
    Ok(row.try_get::<bool, _>(0)?)
}

#[async_trait]
impl Committer for PgCommitter {
    async fn commit(&mut self, batch: &[AppendRequest]) -> Result<Plan, StoreError> {
        let outcome = self.commit_batch(batch).await;
        self.head.after(&outcome);
        outcome
    }
}
