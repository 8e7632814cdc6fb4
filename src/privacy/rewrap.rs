//! Keeping every stored key wrapped by a configured KEK: the start-up migration of plaintext
//! keys written by older versions, `neulbi keys rotate-kek` (rewrap under the current KEK) and
//! `neulbi keys status`. The three tables that hold keys — data keys, JWT signing keys and
//! server secrets — are handled alike through a small descriptor.

use super::kek::{KekRing, WrapContext};
use crate::auth::on_db;
use crate::store::{Database, StoreError};
use indicatif::ProgressBar;
use serde::Serialize;
use std::collections::BTreeMap;
use uuid::Uuid;

/// Rows handled per query.
const BATCH: i64 = 500;

/// A table that holds keys.
#[derive(Debug, Clone, Copy)]
struct Table {
    /// Shown in status and progress.
    what: &'static str,
    sqlite: &'static str,
    postgres: &'static str,
    /// Primary key column.
    pk: &'static str,
    /// How PostgreSQL reads the primary key from a text parameter.
    pk_cast_pg: &'static str,
    /// The plaintext column older versions wrote.
    legacy: &'static str,
    /// What the plaintext column holds once emptied (`NULL` would mean "destroyed" for data
    /// keys; the other two tables declare it NOT NULL, so it becomes empty bytes).
    legacy_empty: Option<&'static [u8]>,
    kind: Kind,
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    DataKey,
    Signing,
    Secret,
}

const TABLES: [Table; 3] = [
    Table {
        what: "data keys",
        sqlite: "data_keys",
        postgres: "neulbi_keys.data_keys",
        pk: "owner",
        pk_cast_pg: "::uuid",
        legacy: "key",
        legacy_empty: None,
        kind: Kind::DataKey,
    },
    Table {
        what: "signing keys",
        sqlite: "auth_signing_keys",
        postgres: "auth_signing_keys",
        pk: "generation",
        pk_cast_pg: "::bigint",
        legacy: "private_der",
        legacy_empty: Some(b""),
        kind: Kind::Signing,
    },
    Table {
        what: "server secrets",
        sqlite: "auth_secrets",
        postgres: "auth_secrets",
        pk: "name",
        pk_cast_pg: "",
        legacy: "value",
        legacy_empty: Some(b""),
        kind: Kind::Secret,
    },
];

impl Table {
    fn name(&self, db: &Database) -> &'static str {
        match db {
            Database::Sqlite(_) => self.sqlite,
            Database::Postgres(_) => self.postgres,
        }
    }

    fn pk_param(&self, db: &Database, n: usize) -> String {
        match db {
            Database::Sqlite(_) => format!("${n}"),
            Database::Postgres(_) => format!("${n}{}", self.pk_cast_pg),
        }
    }

    fn key_id_column(&self) -> &'static str {
        match self.kind {
            Kind::DataKey => "CAST(key_id AS TEXT)",
            Kind::Signing | Kind::Secret => "CAST(NULL AS TEXT)",
        }
    }

    fn context(&self, pk: &str, key_id: Option<&str>) -> Result<WrapContext, StoreError> {
        let bad = |what: &str| StoreError::Unavailable(format!("{}: bad {what} {pk:?}", self.what));
        Ok(match self.kind {
            Kind::DataKey => WrapContext::DataKey {
                owner: Uuid::parse_str(pk).map_err(|_| bad("owner"))?,
                key_id: key_id
                    .and_then(|k| Uuid::parse_str(k).ok())
                    .ok_or_else(|| bad("key id of"))?,
            },
            Kind::Signing => WrapContext::Signing {
                generation: pk.parse().map_err(|_| bad("generation"))?,
            },
            Kind::Secret => WrapContext::Secret {
                name: pk.to_owned(),
            },
        })
    }

    fn legacy_filter(&self) -> String {
        format!("{0} IS NOT NULL AND length({0}) > 0", self.legacy)
    }
}

/// How the keys of one table are stored.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct TableStatus {
    /// Wrapped rows per KEK id.
    pub wrapped: BTreeMap<String, u64>,
    /// Rows still in plaintext (written before envelope encryption, not migrated yet).
    pub plaintext: u64,
    /// Destroyed keys (erased users); data keys only.
    pub destroyed: u64,
}

/// How every stored key is wrapped: what `neulbi keys status` prints, and what tells an
/// operator when a previous KEK may be removed.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct KeyStatus {
    /// The KEK that wraps new keys.
    pub current_kek: String,
    /// Per table (`data keys`, `signing keys`, `server secrets`).
    pub tables: BTreeMap<String, TableStatus>,
}

impl KeyStatus {
    /// KEK ids that still wrap some row, with their row counts.
    pub fn keks_in_use(&self) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        for t in self.tables.values() {
            for (k, n) in &t.wrapped {
                *out.entry(k.clone()).or_default() += n;
            }
        }
        out
    }

    /// Rows still stored in plaintext.
    pub fn plaintext(&self) -> u64 {
        self.tables.values().map(|t| t.plaintext).sum()
    }
}

/// Counts every table's rows by how they are stored.
pub async fn status(db: &Database, ring: &KekRing) -> Result<KeyStatus, StoreError> {
    let mut out = KeyStatus {
        current_kek: ring.current_id().to_owned(),
        tables: BTreeMap::new(),
    };
    for t in TABLES {
        let name = t.name(db);
        let rows: Vec<(Option<String>, i64)> = on_db!(db, p => sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT kek_id, COUNT(*) FROM {name} WHERE wrapped IS NOT NULL GROUP BY kek_id")))
            .fetch_all(p).await?);
        let plaintext: i64 = on_db!(db, p => sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT COUNT(*) FROM {name} WHERE {}", t.legacy_filter())))
            .fetch_one(p).await?);
        let destroyed: i64 = match t.kind {
            Kind::DataKey => on_db!(db, p => sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                "SELECT COUNT(*) FROM {name} WHERE destroyed_at IS NOT NULL")))
                .fetch_one(p).await?),
            Kind::Signing | Kind::Secret => 0,
        };
        out.tables.insert(
            t.what.to_owned(),
            TableStatus {
                wrapped: rows
                    .into_iter()
                    .map(|(k, n)| (k.unwrap_or_else(|| "(none)".into()), n.max(0) as u64))
                    .collect(),
                plaintext: plaintext.max(0) as u64,
                destroyed: destroyed.max(0) as u64,
            },
        );
    }
    Ok(out)
}

/// Fails with a clear message when some row is wrapped by a KEK the ring does not hold, so a
/// missing or wrong key is found at start-up rather than on some later read.
pub async fn check_coverage(db: &Database, ring: &KekRing) -> Result<(), StoreError> {
    let known = ring.ids();
    let missing: Vec<String> = status(db, ring)
        .await?
        .keks_in_use()
        .into_iter()
        .filter(|(k, _)| !known.contains(k))
        .map(|(k, n)| format!("{n} by {k}"))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(StoreError::Config(format!(
        "stored keys are wrapped by a key-encryption key this node does not have ({}); this \
         node has {}. Configure the right KEK (NEULBI_KEK, or NEULBI_KEK_PREVIOUS during a \
         rotation), or restore the key file",
        missing.join(", "),
        known.join(", ")
    )))
}

/// Wraps every plaintext key older versions stored, under the current KEK, and empties the
/// plaintext columns. Returns how many rows it wrapped.
pub async fn wrap_plaintext(
    db: &Database,
    ring: &KekRing,
    progress: &ProgressBar,
) -> Result<u64, StoreError> {
    let mut done = 0;
    for t in TABLES {
        let filter = t.legacy_filter();
        done += process(db, ring, t, &filter, None, progress).await?;
    }
    Ok(done)
}

/// Rewraps every wrapped key not under the current KEK (a rotation). Rows keep working on
/// every node that holds both KEKs throughout. Returns how many rows it rewrapped.
pub async fn rewrap(
    db: &Database,
    ring: &KekRing,
    progress: &ProgressBar,
) -> Result<u64, StoreError> {
    let mut done = 0;
    let current = ring.current_id().to_owned();
    for t in TABLES {
        let filter = "wrapped IS NOT NULL AND (kek_id IS NULL OR kek_id <> $1)".to_owned();
        done += process(db, ring, t, &filter, Some(&current), progress).await?;
    }
    if done > 0 {
        // Rows wrapped by the old KEK must not linger in free pages (SQLite).
        super::erasure::scrub_free_space(db).await?;
    }
    Ok(done)
}

/// Primary key, key id, plaintext column, wrapped, KEK id — as selected.
type RawRow = (
    String,
    Option<String>,
    Option<Vec<u8>>,
    Option<Vec<u8>>,
    Option<String>,
);

struct Row {
    pk: String,
    key_id: Option<String>,
    legacy: Option<Vec<u8>>,
    wrapped: Option<Vec<u8>>,
    kek_id: Option<String>,
}

async fn process(
    db: &Database,
    ring: &KekRing,
    t: Table,
    filter: &str,
    param: Option<&str>,
    progress: &ProgressBar,
) -> Result<u64, StoreError> {
    let name = t.name(db);
    let count_sql = format!("SELECT COUNT(*) FROM {name} WHERE {filter}");
    let total: i64 = on_db!(db, p => {
        let mut q = sqlx::query_scalar(sqlx::AssertSqlSafe(count_sql.as_str()));
        if let Some(v) = param { q = q.bind(v); }
        q.fetch_one(p).await?
    });
    if total <= 0 {
        return Ok(0);
    }
    progress.set_length(progress.length().unwrap_or(0) + total as u64);
    progress.set_message(t.what);
    let select = format!(
        "SELECT CAST({pk} AS TEXT), {key_id}, {legacy}, wrapped, kek_id FROM {name} \
         WHERE {filter} LIMIT {BATCH}",
        pk = t.pk,
        key_id = t.key_id_column(),
        legacy = t.legacy,
    );
    let mut done = 0u64;
    loop {
        let rows: Vec<RawRow> = on_db!(db, p => {
            let mut q = sqlx::query_as(sqlx::AssertSqlSafe(select.as_str()));
            if let Some(v) = param { q = q.bind(v); }
            q.fetch_all(p).await?
        });
        if rows.is_empty() {
            return Ok(done);
        }
        let mut changed = 0;
        for (pk, key_id, legacy, wrapped, kek_id) in rows {
            let row = Row {
                pk,
                key_id,
                legacy,
                wrapped,
                kek_id,
            };
            changed += rewrap_row(db, ring, t, &row).await?;
            progress.inc(1);
        }
        if changed == 0 {
            // Every row of the batch changed under us and still matches: nothing we do here
            // will finish; say so instead of looping.
            return Err(StoreError::Unavailable(format!(
                "{}: rows keep changing while being rewrapped; run again",
                t.what
            )));
        }
        done += changed;
    }
}

/// Wraps one row's key under the current KEK; the update only applies if the row is still as
/// read (an erasure or another rewrap in between wins).
async fn rewrap_row(db: &Database, ring: &KekRing, t: Table, row: &Row) -> Result<u64, StoreError> {
    let ctx = t.context(&row.pk, row.key_id.as_deref())?;
    let plain = match (&row.legacy, &row.wrapped, &row.kek_id) {
        (Some(plain), _, _) if !plain.is_empty() => zeroize::Zeroizing::new(plain.clone()),
        (_, Some(wrapped), Some(kek)) => ring
            .unwrap(kek, &ctx, wrapped)
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))?,
        _ => return Ok(0),
    };
    let (kek_id, wrapped) = ring
        .wrap(&ctx, &plain)
        .await
        .map_err(|e| StoreError::Unavailable(e.to_string()))?;
    let name = t.name(db);
    let sql = format!(
        "UPDATE {name} SET wrapped = $1, kek_id = $2, {legacy} = $3 \
         WHERE {pk} = {param} AND wrapped IS NOT DISTINCT FROM $5 AND {legacy} IS NOT DISTINCT FROM $6",
        legacy = t.legacy,
        pk = t.pk,
        param = t.pk_param(db, 4),
    );
    let empty = t.legacy_empty.map(<[u8]>::to_vec);
    let affected = on_db!(db, p => sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
        .bind(wrapped)
        .bind(kek_id)
        .bind(empty)
        .bind(&row.pk)
        .bind(row.wrapped.clone())
        .bind(row.legacy.clone())
        .execute(p).await?.rows_affected());
    Ok(affected)
}
