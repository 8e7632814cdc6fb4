//! Runs projectors: batches of events applied in one transaction with a compare-and-set
//! checkpoint, and a live loop per projector inside `serve`.

use super::db::{Dialect, ReadDb, sql};
use super::{Names, Projected, ProjectionError, ProjectorDef, schema};
use crate::metrics::{label, metrics};
use neulbi_store::cipher::{self, Fields};
use neulbi_store::codec;
use neulbi_store::data_key::{KeyUse, keys_of};
use neulbi_store::sealed;
use neulbi_store::{RecordedEvent, SharedStore, StoreError};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::Instrument;

/// Events applied per transaction.
pub const BATCH: usize = 1000;

/// How long a live projector lets commits gather after the doorbell rings before it reads
/// them: under chat load a commit lands every few milliseconds, and a read-model
/// transaction per commit per projector cost the server more CPU than the chat itself
/// (a third of it at 4,000 deliveries/s). 100 ms rather than 20 ms: each read-model commit
/// writes every page it touched to the WAL (one per room of the batch in the message key),
/// and five times fewer commits cost the server 8–10% less CPU at 4,000 deliveries/s, p99
/// unchanged (docs/benchmarks.md). Read models trail the log by this much more; deliveries
/// and receipts do not wait for them.
pub const COALESCE: Duration = Duration::from_millis(100);

/// The advisory lock that serializes read-model DDL across nodes: PostgreSQL's
/// `CREATE TABLE IF NOT EXISTS` is not safe against a concurrent twin.
const DDL_LOCK: i64 = 0x6e65_756c_6264;

/// Takes the read-model DDL lock for the rest of `tx` (PostgreSQL; SQLite has one writer).
/// Every transaction that creates, drops or renames read-model tables or indexes takes it
/// first, so a rebuild's swap never drops a table under another node's `CREATE INDEX`.
pub(crate) async fn lock_ddl(tx: &mut WriteTx, dialect: Dialect) -> Result<(), ProjectionError> {
    if dialect == Dialect::Postgres {
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(DDL_LOCK)
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

/// Creates the checkpoint table and `def`'s tables (with `names`) if missing.
pub async fn ensure_schema(
    db: &ReadDb,
    def: &ProjectorDef,
    names: &Names,
) -> Result<(), ProjectionError> {
    ensure_schema_with(db, def, names, |_| true).await
}

/// [`ensure_schema`] creating only the indexes `pick` chooses (a rebuild's shadow tables get
/// the rest before the swap).
pub(crate) async fn ensure_schema_with(
    db: &ReadDb,
    def: &ProjectorDef,
    names: &Names,
    pick: impl Fn(&schema::Index) -> bool,
) -> Result<(), ProjectionError> {
    let mut tx = begin(db).await?;
    lock_ddl(&mut tx, db.dialect).await?;
    for statement in schema::statements(schema::RUNTIME) {
        sqlx::query(sqlx::AssertSqlSafe(statement))
            .execute(&mut *tx)
            .await?;
    }
    let schema = def.schema()?;
    for table in &schema.tables {
        let stmt = names.render(table.ddl, &[table.base]);
        sqlx::query(sql(&stmt)).execute(&mut *tx).await?;
    }
    let mut indexes = Vec::new();
    for idx in schema.indexes.iter().filter(|idx| pick(idx)) {
        // A rebuild's swap leaves the live tables with indexes named for its generation.
        let existing = index_names(&mut tx, db.dialect, &names.table(idx.table)).await?;
        if !existing.iter().any(|name| idx.is_named(name)) {
            indexes.push(idx.create(names));
        }
    }
    run_all(&mut tx, indexes).await?;
    tx.commit().await?;
    Ok(())
}

/// The names of the indexes on `table`.
pub(crate) async fn index_names(
    tx: &mut sqlx::AnyConnection,
    dialect: Dialect,
    table: &str,
) -> Result<Vec<String>, ProjectionError> {
    let query = match dialect {
        Dialect::Sqlite => "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = $1",
        Dialect::Postgres => {
            "SELECT indexname::text FROM pg_indexes WHERE tablename = $1 AND schemaname = current_schema()"
        }
    };
    Ok(sqlx::query_scalar(query)
        .bind(table)
        .fetch_all(&mut *tx)
        .await?)
}

/// Empties a SQLite read model's WAL ([`neulbi_store::sqlite::truncate_wal`]); one that
/// stays blocked is logged as an error, since the old page images then stay in the WAL until
/// it is written over.
async fn truncate_wal(db: &ReadDb) -> Result<(), ProjectionError> {
    let truncated = neulbi_store::sqlite::truncate_wal(neulbi_store::sqlite::TRUNCATE_WAIT, || {
        sqlx::query_scalar::<_, i64>(neulbi_store::sqlite::TRUNCATE_CHECKPOINT).fetch_one(&db.pool)
    })
    .await?;
    if !truncated {
        tracing::error!("read-model WAL not emptied: another checkpoint kept running");
    }
    Ok(())
}

/// Runs generated DDL statements in order inside `tx`.
pub(crate) async fn run_all(
    tx: &mut sqlx::AnyConnection,
    statements: Vec<String>,
) -> Result<(), ProjectionError> {
    for stmt in statements {
        sqlx::query(sqlx::AssertSqlSafe(stmt))
            .execute(&mut *tx)
            .await?;
    }
    Ok(())
}

/// Drops `def`'s tables bound with `names` (and their checkpoint).
pub async fn drop_tables(
    db: &ReadDb,
    def: &ProjectorDef,
    names: &Names,
    checkpoint: &str,
) -> Result<(), ProjectionError> {
    let mut tx = begin(db).await?;
    lock_ddl(&mut tx, db.dialect).await?;
    run_all(&mut tx, def.schema()?.drop_tables(names)).await?;
    sqlx::query("DELETE FROM projection_checkpoints WHERE name = $1")
        .bind(checkpoint)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

/// The next position `checkpoint` will apply (0 if it never ran), and its schema version.
pub async fn checkpoint(db: &ReadDb, name: &str) -> Result<Option<(u64, i64)>, ProjectionError> {
    let row: Option<(i64, i64)> =
        sqlx::query_as("SELECT position, version FROM projection_checkpoints WHERE name = $1")
            .bind(name)
            .fetch_optional(&db.pool)
            .await?;
    Ok(row.map(|(p, v)| (u64::try_from(p).unwrap_or(0), v)))
}

/// Starts a write transaction; SQLite takes the write lock up front so two writers wait for
/// each other instead of failing on upgrade.
pub async fn begin(db: &ReadDb) -> Result<WriteTx, ProjectionError> {
    let conn = db.pool.acquire().await?;
    let start = match db.dialect {
        Dialect::Sqlite => "BEGIN IMMEDIATE",
        Dialect::Postgres => "BEGIN",
    };
    // Held by the guard before BEGIN is sent: if this future is dropped while BEGIN runs,
    // `Drop` still rolls the transaction back.
    let mut tx = WriteTx { conn: Some(conn) };
    sqlx::query(start).execute(&mut *tx).await?;
    Ok(tx)
}

/// A read-model write transaction driven by plain `BEGIN`/`COMMIT`/`ROLLBACK` on one pooled
/// connection. sqlx's own transaction bookkeeping gets stuck when SQLite rolls a transaction
/// back by itself (a full disk: `SQLITE_FULL` on commit), and the pooled connection then
/// refuses every later `begin` ("non-zero transaction depth") even after space returns. Here a
/// failed transaction is rolled back explicitly, and a connection whose state is in doubt is
/// closed instead of going back to the pool.
pub struct WriteTx {
    conn: Option<sqlx::pool::PoolConnection<sqlx::Any>>,
}

impl WriteTx {
    /// Commits; on failure the transaction is rolled back (or its connection closed).
    pub async fn commit(mut self) -> Result<(), ProjectionError> {
        let Some(conn) = self.conn.as_mut() else {
            return Ok(());
        };
        // The connection stays in `self` until COMMIT has answered: if this future is dropped
        // meanwhile (a projector stopped mid-batch) or COMMIT fails, `Drop` rolls back.
        sqlx::query("COMMIT").execute(&mut **conn).await?;
        // Committed: the connection goes back to the pool as it is.
        drop(self.conn.take());
        Ok(())
    }

    /// Rolls back (in the background, see `Drop`).
    pub async fn rollback(self) -> Result<(), ProjectionError> {
        drop(self);
        Ok(())
    }
}

/// Rolls back whatever is open on `conn`; if that fails for another reason than "no
/// transaction" (SQLite may have rolled back already), the connection is closed.
async fn finish(mut conn: sqlx::pool::PoolConnection<sqlx::Any>) {
    if let Err(e) = sqlx::query("ROLLBACK").execute(&mut *conn).await
        && !e.to_string().contains("no transaction")
    {
        tracing::warn!(error = %e, "rollback failed; closing the read-model connection");
        let _ = conn.close().await;
    }
}

impl Drop for WriteTx {
    fn drop(&mut self) {
        // Dropped with the transaction open (an early return, a failed COMMIT, a projector
        // stopped mid-batch): the connection must not go back to the pool holding the write
        // lock, so it is rolled back (or closed) in the background.
        if let Some(conn) = self.conn.take() {
            match tokio::runtime::Handle::try_current() {
                Ok(handle) => {
                    handle.spawn(finish(conn));
                }
                Err(_) => drop(conn.detach()),
            }
        }
    }
}

impl std::ops::Deref for WriteTx {
    type Target = sqlx::AnyConnection;
    fn deref(&self) -> &Self::Target {
        match &self.conn {
            Some(c) => c,
            None => unreachable!("a WriteTx holds its connection until commit or rollback"),
        }
    }
}

impl std::ops::DerefMut for WriteTx {
    fn deref_mut(&mut self) -> &mut Self::Target {
        match &mut self.conn {
            Some(c) => c,
            None => unreachable!("a WriteTx holds its connection until commit or rollback"),
        }
    }
}

/// Outcome of one batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Batch {
    /// Applied this many events; the checkpoint moved past them.
    Applied(usize),
    /// Nothing new in the log.
    CaughtUp,
    /// Someone else moved the checkpoint first (another node, or a rebuild's swap).
    Raced,
}

/// Applies the next batch of events to the projector bound as `names` with checkpoint key
/// `key`, exactly once.
pub async fn step(
    store: &SharedStore,
    db: &ReadDb,
    def: &ProjectorDef,
    names: &Names,
    key: &str,
    limit: usize,
) -> Result<Batch, ProjectionError> {
    let mut at = Step::from_database(limit);
    step_shared(&SharedBatch::default(), store, db, def, names, key, &mut at).await
}

/// What one step of a projector is given: how many events it may apply, and where its
/// checkpoint stands if its loop knows (it wrote it itself a moment ago).
#[derive(Debug, Clone, Copy)]
pub struct Step {
    /// At most this many events.
    pub limit: usize,
    /// The checkpoint as this loop last left it; `None` reads it from the database. A step
    /// that knows skips that read (a round trip to the database per projector and batch);
    /// the batch's transaction still checks it (`claim`), so a checkpoint moved meanwhile by
    /// another node or a rebuild's swap ends in [`Batch::Raced`] and the next step reads it.
    pub from: Option<u64>,
}

impl Step {
    /// A step that reads the checkpoint first.
    pub fn from_database(limit: usize) -> Self {
        Self { limit, from: None }
    }
}

/// The newest batch the live projectors read, decoded once for all of them: they wake on
/// the same commits and stand at the same checkpoint, so one read of the log, one upcast
/// and one decode serve every read model instead of one each.
#[derive(Default)]
pub struct SharedBatch {
    /// Where the batch starts, and the batch. Held across the read, so projectors that
    /// arrive meanwhile wait for it rather than read the same events again.
    last: tokio::sync::Mutex<Option<(u64, Arc<Vec<Projected>>)>>,
}

impl SharedBatch {
    /// Up to `limit` events from `from`: the shared batch when it starts there, else a new
    /// read that becomes the shared one. A batch read while another projector was behind may
    /// end before the head; a short batch only means "wait for the next commit".
    pub async fn read(
        &self,
        store: &SharedStore,
        from: u64,
        limit: usize,
    ) -> Result<(Arc<Vec<Projected>>, usize), ProjectionError> {
        let mut last = self.last.lock().await;
        if let Some((at, batch)) = last.as_ref()
            && *at == from
            && !batch.is_empty()
        {
            return Ok((batch.clone(), batch.len().min(limit)));
        }
        let batch = Arc::new(read_batch(store, from, limit).await?);
        if limit >= BATCH {
            // A narrowed read (a projector pinning down a failing event) is not shared: the
            // others would take its one event for a short batch.
            *last = Some((from, batch.clone()));
        }
        let len = batch.len();
        Ok((batch, len))
    }
}

/// [`step`], reading through `shared` so projectors at the same checkpoint share one batch.
pub async fn step_shared(
    shared: &SharedBatch,
    store: &SharedStore,
    db: &ReadDb,
    def: &ProjectorDef,
    names: &Names,
    key: &str,
    at: &mut Step,
) -> Result<Batch, ProjectionError> {
    let from = match at.from.take() {
        Some(from) => from,
        None => checkpoint(db, key).await?.map_or(0, |(p, _)| p),
    };
    let (batch, len) = shared.read(store, from, at.limit).await?;
    let events = &batch[..len];
    let live = key == def.name;
    if events.is_empty() {
        if live {
            observe(store, def.name, from, None);
        }
        at.from = Some(from);
        return Ok(Batch::CaughtUp);
    }
    let projector = (def.bind)(names);
    // With spans exported, each event's trace gets a `project` span for this projector (on
    // whichever node applies it), open until the batch commits.
    let _traced: Vec<tracing::Span> = if live && neulbi_store::trace::exporting() {
        events
            .iter()
            .map(|p| &p.event)
            .filter(|e| e.metadata.traceparent.is_some())
            .map(|e| {
                let span = tracing::info_span!(
                    parent: None,
                    "project",
                    projector = def.name,
                    position = e.position,
                    event_type = %e.event_type,
                    batch = events.len()
                );
                neulbi_store::trace::continue_trace(&span, e.metadata.traceparent.as_deref());
                span
            })
            .collect()
    } else {
        Vec::new()
    };
    let span = tracing::debug_span!("project", projector = def.name, from, events = events.len());
    async {
        let mut tx = begin(db).await?;
        if !claim(&mut tx, db.dialect, key, from, def.version).await? {
            tx.rollback().await?;
            return Ok(Batch::Raced);
        }
        apply_all(&mut tx, projector.as_ref(), events).await?;
        let next = events.last().map_or(from, |e| e.event.position + 1);
        set_checkpoint(&mut tx, key, next, def.version).await?;
        tx.commit().await?;
        if live {
            observe(
                store,
                def.name,
                next,
                events.last().map(|e| e.event.recorded_at),
            );
        }
        if db.dialect == Dialect::Sqlite && events.iter().any(|e| e.event.event_type == "Erased") {
            // The scrubbed rows' old page images must not linger in the WAL file.
            truncate_wal(db).await?;
        }
        at.from = Some(next);
        Ok(Batch::Applied(events.len()))
    }
    .instrument(span)
    .await
}

/// Records a live projector's position and lag: `next` is its checkpoint after a batch whose
/// newest event was committed at `newest` (`None` when there was nothing to apply). The lag
/// in seconds is that event's age while events remain, 0 once caught up.
fn observe(
    store: &SharedStore,
    name: &'static str,
    next: u64,
    newest: Option<chrono::DateTime<chrono::Utc>>,
) {
    let head = store.head_changes().borrow().map_or(0, |h| h + 1);
    let behind = head.saturating_sub(next);
    let m = metrics();
    let p = [label("projector", name)];
    m.projector_position.record(next, &p);
    m.projector_lag_events.record(behind, &p);
    let age = match newest {
        Some(at) if behind > 0 => (chrono::Utc::now() - at).num_milliseconds().max(0) as f64 / 1e3,
        _ => 0.0,
    };
    m.projector_lag_seconds.record(age, &p);
}

/// Reads the next batch for the projectors as the log stores it: personal fields stay
/// sealed and reach the projectors as tokens ([`neulbi_store::sealed`]), so read models
/// only ever hold sealed copies and projecting opens nothing. Old event versions are upcast
/// first; a field an old version logged in the clear (schema v1 message bodies) is sealed
/// here with its owner's key, or withheld when the store has no keys.
pub async fn read_batch(
    store: &SharedStore,
    from: u64,
    limit: usize,
) -> Result<Vec<Projected>, ProjectionError> {
    let mut events = store.read_all_sealed(from, limit).await?;
    let corrupt = |e: &RecordedEvent, err: cipher::CipherError| StoreError::Corrupt {
        position: i64::try_from(e.position).unwrap_or(i64::MAX),
        reason: err.to_string(),
    };
    let mut plain = BTreeSet::new();
    for e in &mut events {
        if let Some(current) = codec::upcast(&e.event_type, e.schema_version, &e.data) {
            e.data = current;
        }
        cipher::owners(&e.data, Fields::Plain, &mut plain).map_err(|err| corrupt(e, err))?;
    }
    if let (false, Some(keys)) = (plain.is_empty(), store.data_keys()) {
        let found = keys_of(keys.as_ref(), plain, KeyUse::Seal).await?;
        for e in &mut events {
            cipher::seal(&mut e.data, &found).map_err(|err| corrupt(e, err))?;
        }
    }
    let mut withheld = 0;
    for e in &mut events {
        let done = sealed::for_projection(&mut e.data).map_err(|err| corrupt(e, err))?;
        withheld += done.withheld;
    }
    if withheld > 0 {
        tracing::warn!(
            fields = withheld,
            "personal fields an older version logged in the clear are left out of the read models"
        );
    }
    Ok(events.into_iter().map(Projected::of).collect())
}

/// Applies events in order inside an open transaction.
pub async fn apply_all(
    tx: &mut sqlx::AnyConnection,
    projector: &dyn super::Projector,
    events: &[Projected],
) -> Result<(), ProjectionError> {
    projector.apply_batch(tx, events).await
}

/// The checkpoint of `key`, its row locked for the rest of the transaction (PostgreSQL;
/// on SQLite the transaction already holds the write lock).
pub(crate) async fn locked_position(
    tx: &mut sqlx::AnyConnection,
    dialect: Dialect,
    key: &str,
) -> Result<Option<u64>, ProjectionError> {
    let q = Names::new("", dialect).render(
        "SELECT position FROM projection_checkpoints WHERE name = $1 FOR UPDATE",
        &[],
    );
    let position: Option<i64> = sqlx::query_scalar(sql(&q))
        .bind(key)
        .fetch_optional(&mut *tx)
        .await?;
    Ok(position.map(|p| u64::try_from(p).unwrap_or(0)))
}

/// Locks the checkpoint row and checks it still says `from`.
pub(crate) async fn claim(
    tx: &mut sqlx::AnyConnection,
    dialect: Dialect,
    key: &str,
    from: u64,
    version: i64,
) -> Result<bool, ProjectionError> {
    match locked_position(tx, dialect, key).await? {
        Some(p) => Ok(p == from),
        None if from == 0 => {
            // First batch ever: create the row; a concurrent creator makes this fail.
            let inserted = sqlx::query(
                "INSERT INTO projection_checkpoints (name, position, version, updated_at) VALUES ($1, 0, $2, $3) \
                 ON CONFLICT (name) DO NOTHING",
            )
            .bind(key)
            .bind(version)
            .bind(chrono::Utc::now().timestamp_micros())
            .execute(&mut *tx)
            .await?;
            Ok(inserted.rows_affected() == 1)
        }
        None => Ok(false),
    }
}

/// Moves the checkpoint to `next` inside the batch's transaction.
pub async fn set_checkpoint(
    tx: &mut sqlx::AnyConnection,
    key: &str,
    next: u64,
    version: i64,
) -> Result<(), ProjectionError> {
    sqlx::query(
        "INSERT INTO projection_checkpoints (name, position, version, updated_at) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (name) DO UPDATE SET position = excluded.position, version = excluded.version, updated_at = excluded.updated_at",
    )
    .bind(key)
    .bind(i64::try_from(next).unwrap_or(i64::MAX))
    .bind(version)
    .bind(chrono::Utc::now().timestamp_micros())
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Prepares every projector's tables; a projector whose stored version differs from the
/// code's is dropped and will rebuild from position 0.
pub async fn prepare(db: &ReadDb) -> Result<(), ProjectionError> {
    for def in super::all() {
        let names = Names::new("", db.dialect);
        ensure_schema(db, def, &names).await?;
        if let Some((_, version)) = checkpoint(db, def.name).await?
            && version != def.version
        {
            tracing::warn!(
                projector = def.name,
                stored = version,
                current = def.version,
                "read model changed shape; rebuilding from the start"
            );
            drop_tables(db, def, &names, def.name).await?;
            if db.dialect == Dialect::Sqlite {
                // An older shape may have held plaintext (before version 2 of `users` and
                // `rooms`): with secure_delete the freed pages are zeroed, and the WAL that
                // still holds them is emptied.
                truncate_wal(db).await?;
            }
        }
        ensure_schema(db, def, &names).await?;
    }
    Ok(())
}

/// Runs every projector until `stop` turns true. Each loop wakes on new commits (through a
/// subscription used only as a doorbell) or once a second.
pub fn spawn_all(
    store: SharedStore,
    db: ReadDb,
    stop: watch::Receiver<bool>,
    caught_up: Arc<AtomicUsize>,
) -> Vec<JoinHandle<()>> {
    let shared = Arc::new(SharedBatch::default());
    super::all()
        .into_iter()
        .map(|def| {
            let shared = shared.clone();
            let store = store.clone();
            let db = db.clone();
            let mut stop = stop.clone();
            let caught_up = caught_up.clone();
            neulbi_store::lanes::spawn(neulbi_store::lanes::Lane::Projections, async move {
                let names = Names::new("", db.dialect);
                let mut first_catch_up = true;
                // Only a wake-up: each step reads its own batch, so the doorbell carries no events.
                let mut doorbell = store.head_changes();
                let mut failing = Failing::default();
                // Where this loop left its checkpoint, carried from step to step (`Step::from`).
                let mut at = Step::from_database(BATCH);
                let stalled = [label("projector", def.name)];
                metrics().projector_stalled.record(0, &stalled);
                metrics().projector_events.add(0, &stalled);
                loop {
                    if *stop.borrow() {
                        return;
                    }
                    at.limit = if failing.narrow_until.is_some() {
                        1
                    } else {
                        BATCH
                    };
                    match step_shared(&shared, &store, &db, def, &names, def.name, &mut at).await {
                        Ok(Batch::Applied(n)) => {
                            metrics()
                                .projector_events
                                .add(n as u64, &[label("projector", def.name)]);
                            failing.succeeded(&db, def.name).await;
                            // A full batch: more may be waiting. A short one read up to the
                            // head: caught up, so wait for the doorbell instead of reading
                            // again at once (see COALESCE).
                            if n >= at.limit {
                                continue;
                            }
                        }
                        Ok(Batch::Raced) => continue,
                        Ok(Batch::CaughtUp) => {
                            failing.succeeded(&db, def.name).await;
                            failing.narrow_until = None;
                        }
                        Err(e) => {
                            let wait = failing.failed(&db, def.name, &e).await;
                            tokio::select! {
                                _ = tokio::time::sleep(wait) => {}
                                _ = stop.changed() => {}
                            }
                            continue;
                        }
                    }
                    if first_catch_up {
                        first_catch_up = false;
                        caught_up.fetch_add(1, Ordering::AcqRel);
                    }
                    tokio::select! {
                        rang = doorbell.changed() => {
                            if rang.is_err() {
                                // The store is gone (shutting down): fall back to the poll.
                                tokio::time::sleep(Duration::from_secs(1)).await;
                            } else {
                                tokio::select! {
                                    _ = tokio::time::sleep(COALESCE) => {}
                                    _ = stop.changed() => {}
                                }
                            }
                        }
                        // Quiet for a second: read the checkpoint again, so one moved by
                        // another node or a rebuild's swap is seen even with no new commits.
                        _ = tokio::time::sleep(Duration::from_secs(1)) => at.from = None,
                        _ = stop.changed() => {}
                    }
                }
            })
        })
        .collect()
}

/// A projector's run of failures: how many in a row, and how far it applies one event at a
/// time to find the event that fails.
#[derive(Default)]
struct Failing {
    failures: u32,
    /// While set, batches are one event long, up to this position (the end of the batch that
    /// failed), so a poison event is pinned down and everything before it is applied.
    narrow_until: Option<u64>,
}

impl Failing {
    /// Notes a failure and returns how long to wait before the next try.
    async fn failed(&mut self, db: &ReadDb, name: &'static str, e: &ProjectionError) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let position = checkpoint(db, name)
            .await
            .ok()
            .flatten()
            .map_or(0, |(p, _)| p);
        if self.narrow_until.is_none() {
            self.narrow_until = Some(position.saturating_add(BATCH as u64));
        }
        let wait = super::faults::backoff(self.failures);
        let n = self.failures;
        if n < super::faults::STALL_AFTER {
            tracing::warn!(projector = name, position, failures = n, error = %e, retry_in_secs = wait.as_secs(), "projection failed; retrying");
        } else {
            if n == super::faults::STALL_AFTER || n.is_multiple_of(10) {
                tracing::error!(
                    projector = name,
                    position,
                    failures = n,
                    error = %e,
                    "projector stalled: the event at this position keeps failing; other projectors \
                     go on, this one retries every {} s and resumes by itself once a retry succeeds \
                     (see `neulbi projections status`)",
                    super::faults::MAX_BACKOFF.as_secs()
                );
            }
            metrics()
                .projector_stalled
                .record(1, &[label("projector", name)]);
            if let Err(record) = super::faults::record(db, name, position, &e.to_string(), n).await
            {
                tracing::warn!(projector = name, error = %record, "recording the stall failed");
            }
        }
        wait
    }

    /// Notes progress: a stall is over.
    async fn succeeded(&mut self, db: &ReadDb, name: &'static str) {
        if let Some(end) = self.narrow_until {
            let position = checkpoint(db, name)
                .await
                .ok()
                .flatten()
                .map_or(0, |(p, _)| p);
            if position >= end {
                self.narrow_until = None;
            }
        }
        if self.failures == 0 {
            return;
        }
        if self.failures >= super::faults::STALL_AFTER {
            tracing::info!(
                projector = name,
                failures = self.failures,
                "projector resumed"
            );
        }
        self.failures = 0;
        metrics()
            .projector_stalled
            .record(0, &[label("projector", name)]);
        if let Err(e) = super::faults::clear(db, name).await {
            tracing::warn!(projector = name, error = %e, "clearing the stall failed");
        }
    }
}

/// Lag of one projector: how far its checkpoint is behind the log's head.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Status {
    /// Projector name.
    pub name: &'static str,
    /// What it serves.
    pub description: &'static str,
    /// Next position it will apply.
    pub position: u64,
    /// Events committed but not yet applied.
    pub lag: u64,
    /// Set while the projector cannot get past one event.
    pub stalled: Option<super::faults::Stall>,
}

/// The status of every projector.
pub async fn status(store: &SharedStore, db: &ReadDb) -> Result<Vec<Status>, ProjectionError> {
    prepare(db).await?;
    let next = store.head_position().await?.map_or(0, |h| h + 1);
    let mut out = Vec::new();
    let mut stalls = super::faults::all(db).await?;
    for def in super::all() {
        let position = checkpoint(db, def.name).await?.map_or(0, |(p, _)| p);
        out.push(Status {
            name: def.name,
            description: def.description,
            position,
            lag: next.saturating_sub(position),
            stalled: stalls.remove(def.name),
        });
    }
    Ok(out)
}

/// Applies everything up to the head for every projector (tests, CLI tools, readiness).
pub async fn catch_up(store: &SharedStore, db: &ReadDb) -> Result<(), ProjectionError> {
    for def in super::all() {
        let names = Names::new("", db.dialect);
        ensure_schema(db, def, &names).await?;
        while step(store, db, def, &names, def.name, BATCH).await? != Batch::CaughtUp {}
    }
    Ok(())
}

/// A handle that stops the projector loops.
pub struct Running {
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    caught_up: Arc<AtomicUsize>,
}

impl Running {
    /// Starts every projector over `store` into `db`.
    pub async fn start(store: SharedStore, db: ReadDb) -> Result<Arc<Self>, ProjectionError> {
        prepare(&db).await?;
        let (stop, rx) = watch::channel(false);
        let caught_up = Arc::new(AtomicUsize::new(0));
        let tasks = spawn_all(store, db, rx, caught_up.clone());
        Ok(Arc::new(Self {
            stop,
            tasks,
            caught_up,
        }))
    }

    /// True once every projector has caught up with the log at least once since start.
    pub fn ready(&self) -> bool {
        self.caught_up.load(Ordering::Acquire) >= self.tasks.len()
    }

    /// Stops the loops after their current batch.
    pub async fn stop(&self) {
        let _ = self.stop.send(true);
        for t in &self.tasks {
            t.abort();
        }
    }
}
