//! `neulbi projections rebuild NAME`: rebuild a read model from position 0 into shadow
//! tables while the live ones keep serving, then swap them in one transaction.

use super::db::{Dialect, ReadDb};
use super::runtime::{self, Batch, apply_all, begin, checkpoint, set_checkpoint};
use super::{Names, ProjectionError, ProjectorDef};
use neulbi_store::SharedStore;
use std::time::Instant;

/// Events per transaction while rebuilding (larger than live batches: nobody waits on them).
const REBUILD_BATCH: usize = 5000;

/// What a rebuild did.
#[derive(Debug, Clone, Copy)]
pub struct RebuildReport {
    /// Events applied to the shadow tables.
    pub events: u64,
    /// Wall time, seconds.
    pub secs: f64,
}

/// Rebuilds `def`. `progress(next_position, head)` is called after every batch.
pub async fn rebuild(
    store: &SharedStore,
    db: &ReadDb,
    def: &ProjectorDef,
    mut progress: impl FnMut(u64, u64),
) -> Result<RebuildReport, ProjectionError> {
    let start = Instant::now();
    runtime::prepare(db).await?;
    let shadow = Names::new("__shadow", db.dialect);
    let key = format!("{}__shadow", def.name);
    runtime::drop_tables(db, def, &shadow, &key).await?;
    runtime::ensure_schema(db, def, &shadow).await?;
    let mut events = 0u64;
    loop {
        let head = store.head_position().await?.map_or(0, |h| h + 1);
        match runtime::step(store, db, def, &shadow, &key, REBUILD_BATCH).await? {
            Batch::Applied(n) => {
                events += n as u64;
                let at = checkpoint(db, &key).await?.map_or(0, |(p, _)| p);
                crate::metrics::metrics().rebuild_progress.record(
                    if head == 0 {
                        1.0
                    } else {
                        at as f64 / head as f64
                    },
                    &[crate::metrics::label("projector", def.name)],
                );
                progress(at, head);
            }
            Batch::CaughtUp => break,
            Batch::Raced => {
                return Err(ProjectionError::Unknown(
                    key,
                    "another rebuild of the same projector is running".into(),
                ));
            }
        }
    }
    events += swap(store, db, def, &shadow, &key).await?;
    Ok(RebuildReport {
        events,
        secs: start.elapsed().as_secs_f64(),
    })
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
    let lock = match db.dialect {
        Dialect::Sqlite => "SELECT position FROM projection_checkpoints WHERE name = $1",
        Dialect::Postgres => {
            "SELECT position FROM projection_checkpoints WHERE name = $1 FOR UPDATE"
        }
    };
    let live: Option<i64> = sqlx::query_scalar(lock)
        .bind(def.name)
        .fetch_optional(&mut *tx)
        .await?;
    let live = live.map_or(0, |p| u64::try_from(p).unwrap_or(0));
    let shadow_at: Option<i64> = sqlx::query_scalar(lock)
        .bind(key)
        .fetch_optional(&mut *tx)
        .await?;
    let mut at = shadow_at.map_or(0, |p| u64::try_from(p).unwrap_or(0));
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
        let next = last.position + 1;
        apply_all(&mut tx, projector.as_ref(), &events).await?;
        applied += events.len() as u64;
        at = next;
    }
    let live_names = Names::new("", db.dialect);
    let schema = def.schema()?;
    for base in schema.bases() {
        let drop = format!("DROP TABLE IF EXISTS {}", live_names.table(base));
        sqlx::query(sqlx::AssertSqlSafe(drop))
            .execute(&mut *tx)
            .await?;
        let rename = format!(
            "ALTER TABLE {} RENAME TO {}",
            shadow.table(base),
            live_names.table(base)
        );
        sqlx::query(sqlx::AssertSqlSafe(rename))
            .execute(&mut *tx)
            .await?;
    }
    for idx in &schema.indexes {
        let drop = format!("DROP INDEX IF EXISTS {}{}", idx.name, shadow.suffix());
        sqlx::query(sqlx::AssertSqlSafe(drop))
            .execute(&mut *tx)
            .await?;
        let create = format!(
            "CREATE INDEX IF NOT EXISTS {} ON {} ({})",
            idx.name,
            live_names.table(idx.table),
            idx.columns
        );
        sqlx::query(sqlx::AssertSqlSafe(create))
            .execute(&mut *tx)
            .await?;
    }
    set_checkpoint(&mut tx, def.name, at, def.version).await?;
    sqlx::query("DELETE FROM projection_checkpoints WHERE name = $1")
        .bind(key)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(applied)
}
