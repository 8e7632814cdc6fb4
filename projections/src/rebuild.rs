//! `neulbi projections rebuild NAME`: rebuild a read model from position 0 into shadow
//! tables while the live ones keep serving, then swap them in one transaction.

use super::db::ReadDb;
use super::runtime::{self, apply_all, begin, set_checkpoint};
use super::{Names, Projected, ProjectionError, ProjectorDef};
use neulbi_store::{Positions, SharedStore};
use std::time::Instant;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::Instrument;

/// Events per transaction while rebuilding (larger than live batches: nobody waits on them).
const REBUILD_BATCH: usize = 5000;

/// Rooms (or whatever a projector folds by) whose state a rebuild keeps in memory between
/// batches ([`crate::Projector::rebuild_batch`]): about 1 KiB each (a room's row, its
/// members and its last messages' ids), so about 50 MiB at most.
pub const REBUILD_KEEP: usize = 50_000;

/// Pages each reader keeps ready ahead of the one being applied.
const READ_AHEAD: usize = 2;

/// Tasks reading and decoding the log side by side: decoding costs about as much as
/// applying, so one reader would hold the projector back on a machine with cores to spare.
const READERS: usize = 2;

/// How a rebuild batches its work; the defaults are what `projections rebuild` uses.
#[derive(Debug, Clone, Copy)]
pub struct RebuildOptions {
    /// Events per page read and per shadow transaction.
    pub batch: usize,
    /// Fold entries kept in memory between batches (see [`REBUILD_KEEP`]).
    pub keep: usize,
    /// Tasks reading the log side by side where positions are gap-free (see [`READERS`]).
    pub readers: usize,
}

impl Default for RebuildOptions {
    fn default() -> Self {
        Self {
            batch: REBUILD_BATCH,
            keep: REBUILD_KEEP,
            readers: READERS,
        }
    }
}

/// What a rebuild did.
#[derive(Debug, Clone, Copy)]
pub struct RebuildReport {
    /// Events applied to the shadow tables.
    pub events: u64,
    /// Wall time, seconds.
    pub secs: f64,
}

/// Rebuilds `def` with the default options. `progress(next_position, head)` is called after
/// every batch.
pub async fn rebuild(
    store: &SharedStore,
    db: &ReadDb,
    def: &ProjectorDef,
    progress: impl FnMut(u64, u64),
) -> Result<RebuildReport, ProjectionError> {
    rebuild_with(store, db, def, RebuildOptions::default(), progress).await
}

/// Rebuilds `def`: the log is read pages ahead by tasks of its own ([`ReadAhead`]) while
/// the projector applies the page before, each page in its own shadow transaction with the
/// shadow's checkpoint.
pub async fn rebuild_with(
    store: &SharedStore,
    db: &ReadDb,
    def: &ProjectorDef,
    options: RebuildOptions,
    mut progress: impl FnMut(u64, u64),
) -> Result<RebuildReport, ProjectionError> {
    let start = Instant::now();
    runtime::prepare(db).await?;
    // Indexes named for this rebuild: the swap leaves them on the live tables as they are.
    let generation = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
    let shadow = Names::generation("__shadow", generation, db.dialect);
    let key = format!("{}__shadow", def.name);
    runtime::drop_tables(db, def, &shadow, &key).await?;
    runtime::ensure_schema_with(db, def, &shadow, |idx| {
        def.rebuild_indexes
            .is_none_or(|needed| needed.contains(&idx.name))
    })
    .await?;
    let projector = (def.bind)(&shadow);
    let mut pages = ReadAhead::start(store.clone(), options.batch.max(1), options.readers);
    let mut from = 0u64;
    let mut events = 0u64;
    while let Some(page) = pages.next().await? {
        let Some(last) = page.last() else { break };
        let next = last.event.position + 1;
        let head = store.head_position().await?.map_or(0, |h| h + 1);
        let mut tx = begin(db).await?;
        if !runtime::claim(&mut tx, db.dialect, &key, from, def.version).await? {
            tx.rollback().await?;
            return Err(ProjectionError::Unknown(
                key,
                "another rebuild of the same projector is running".into(),
            ));
        }
        projector
            .rebuild_batch(&mut tx, &page, options.keep)
            .await?;
        set_checkpoint(&mut tx, &key, next, def.version).await?;
        tx.commit().await?;
        events += page.len() as u64;
        from = next;
        crate::metrics::metrics().rebuild_progress.record(
            if head == 0 {
                1.0
            } else {
                from as f64 / head as f64
            },
            &[crate::metrics::label("projector", def.name)],
        );
        progress(from, head);
    }
    let mut tx = begin(db).await?;
    projector.finish_rebuild(&mut tx).await?;
    tx.commit().await?;
    // The indexes left for now ([`ProjectorDef::rebuild_indexes`]) are built here, one
    // transaction each, outside the swap's locks (live projectors go on between them).
    for statement in def.schema()?.create_indexes(&shadow) {
        let mut tx = begin(db).await?;
        runtime::lock_ddl(&mut tx, db.dialect).await?;
        runtime::run_all(&mut tx, vec![statement]).await?;
        tx.commit().await?;
    }
    events += swap(store, db, def, &shadow, &key).await?;
    Ok(RebuildReport {
        events,
        secs: start.elapsed().as_secs_f64(),
    })
}

/// The tasks that read the log for a rebuild, each [`READ_AHEAD`] pages ahead; stopped when
/// dropped.
///
/// Where positions are gap-free ([`Positions::GapFree`]), page `i` starts at position
/// `i × batch` and [`READERS`] tasks take turns by page; elsewhere (KurrentDB's byte
/// offsets) one task reads each page from the position after the last (as it does when
/// asked for one). Should a page run into the next one's range anyway, the events already
/// handed out are dropped from the later page. The first short page is the last one (the log's head when it was read);
/// what is appended after it is the swap's catch-up.
struct ReadAhead {
    lanes: Vec<mpsc::Receiver<Result<Vec<Projected>, ProjectionError>>>,
    tasks: Vec<JoinHandle<()>>,
    batch: usize,
    /// The lane of the next page.
    turn: usize,
    /// The first position not yet handed out.
    next: u64,
    done: bool,
}

impl ReadAhead {
    fn start(store: SharedStore, batch: usize, readers: usize) -> Self {
        let readers = match store.positions() {
            Positions::GapFree => readers.max(1),
            Positions::Ordered => 1,
        };
        let mut lanes = Vec::with_capacity(readers);
        let mut tasks = Vec::with_capacity(readers);
        for lane in 0..readers {
            let (send, pages) = mpsc::channel(READ_AHEAD);
            let store = store.clone();
            let span = tracing::debug_span!("rebuild_read", lane);
            tasks.push(tokio::spawn(
                async move {
                    let stride = (batch * readers) as u64;
                    let mut from = (batch * lane) as u64;
                    loop {
                        let page = runtime::read_batch(&store, from, batch).await;
                        let next = match &page {
                            Ok(events) if events.len() == batch => match events.last() {
                                Some(last) if readers == 1 => Some(last.event.position + 1),
                                _ => Some(from + stride),
                            },
                            _ => None,
                        };
                        if send.send(page).await.is_err() {
                            return;
                        }
                        match next {
                            Some(next) => from = next,
                            None => return,
                        }
                    }
                }
                .instrument(span),
            ));
            lanes.push(pages);
        }
        Self {
            lanes,
            tasks,
            batch,
            turn: 0,
            next: 0,
            done: false,
        }
    }

    /// The next page in log order; `None` once the log is read to its head.
    async fn next(&mut self) -> Result<Option<Vec<Projected>>, ProjectionError> {
        while !self.done {
            let lane = self.turn;
            self.turn = (lane + 1) % self.lanes.len();
            let Some(page) = self.lanes[lane].recv().await else {
                break;
            };
            let mut page = page?;
            self.done = page.len() < self.batch;
            let next = self.next;
            page.retain(|e| e.event.position >= next);
            if let Some(last) = page.last() {
                self.next = last.event.position + 1;
                return Ok(Some(page));
            }
        }
        Ok(None)
    }
}

impl Drop for ReadAhead {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Brings the shadow up to the live checkpoint and swaps it in, all in one transaction.
/// Returns how many events the final catch-up applied.
async fn swap(
    store: &SharedStore,
    db: &ReadDb,
    def: &ProjectorDef,
    shadow: &Names,
    key: &str,
) -> Result<u64, ProjectionError> {
    let mut tx = begin(db).await?;
    // DDL lock first, then the checkpoint rows: the same order as every other DDL.
    runtime::lock_ddl(&mut tx, db.dialect).await?;
    let live = runtime::locked_position(&mut tx, db.dialect, def.name)
        .await?
        .unwrap_or(0);
    let shadow_at = runtime::locked_position(&mut tx, db.dialect, key).await?;
    let mut at = shadow_at.unwrap_or(0);
    // The live projector may have moved on while we rebuilt: the shadow must not be behind
    // it, or the events in between would never be applied after the swap.
    let projector = (def.bind)(shadow);
    let mut applied = 0u64;
    while at < live {
        let limit = usize::try_from(live - at)
            .unwrap_or(usize::MAX)
            .min(REBUILD_BATCH);
        let events = runtime::read_batch(store, at, limit).await?;
        let Some(last) = events.last() else { break };
        let next = last.event.position + 1;
        apply_all(&mut tx, projector.as_ref(), &events).await?;
        applied += events.len() as u64;
        at = next;
    }
    let live_names = Names::new("", db.dialect);
    let schema = def.schema()?;
    runtime::run_all(&mut tx, schema.drop_tables(&live_names)).await?;
    let renames = schema
        .bases()
        .map(|base| {
            format!(
                "ALTER TABLE {} RENAME TO {}",
                shadow.table(base),
                live_names.table(base)
            )
        })
        .collect();
    // The renamed tables keep their indexes, named for this rebuild's generation (the
    // dropped live tables took the last generation's with them): the swap builds nothing.
    runtime::run_all(&mut tx, renames).await?;
    set_checkpoint(&mut tx, def.name, at, def.version).await?;
    sqlx::query("DELETE FROM projection_checkpoints WHERE name = $1")
        .bind(key)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(applied)
}
