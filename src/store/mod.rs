//! Opening the event log with what the node keeps beside it: the data keys that seal
//! personal fields, the key-encryption keys that wrap them, and the database handle the
//! read models use.
//!
//! The log itself (the trait, its backends, the envelope and codec) is the `neulbi-store`
//! crate, re-exported here so the rest of the node names it `crate::store`.

pub use neulbi_store::*;

use std::sync::Arc;

/// Everything opened from one database URL.
pub struct Storage {
    /// The event log, with personal fields sealed and opened transparently.
    pub events: SharedStore,
    /// The backend without the encryption layer: sealed fields stay sealed (export/import).
    pub raw: SharedStore,
    /// The per-user data keys (erasure destroys them).
    pub keys: Arc<crate::privacy::KeyStore>,
    /// The key-encryption keys that wrap every key stored beside the log.
    pub kek: Arc<crate::privacy::KekRing>,
    /// The database itself.
    pub database: Database,
}

/// Opens the store named by a database URL (`sqlite://PATH` or `postgres://...`), running
/// migrations first when `migrate` is set. The result encrypts personal fields.
pub async fn open(
    url: &str,
    limits: StoreLimits,
    migrate: bool,
) -> Result<SharedStore, StoreError> {
    Ok(open_storage(url, limits, migrate).await?.events)
}

/// Like [`open`], but also returns the key store and the database handle. The key-encryption
/// key comes from the `NEULBI_KEK*` variables, else from the default key file (beside a
/// SQLite file; in `NEULBI_DATA_DIR`, default `data`, with PostgreSQL).
pub async fn open_storage(
    url: &str,
    limits: StoreLimits,
    migrate: bool,
) -> Result<Storage, StoreError> {
    let keys = crate::privacy::KeySettings::from_env().map_err(StoreError::Config)?;
    let data_dir = std::env::var_os("NEULBI_DATA_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| "data".into());
    open_storage_with(url, limits, migrate, &keys, &data_dir).await
}

/// Like [`open_storage`], with the `[keys]` settings and data directory of a configuration.
/// Fails at once when stored keys are wrapped by a KEK the settings do not name; with
/// `migrate`, wraps plaintext keys left by older versions. A KurrentDB log keeps its keys
/// in the default state database (the SQLite file in `data_dir`); see [`open_storage_in`].
pub async fn open_storage_with(
    url: &str,
    limits: StoreLimits,
    migrate: bool,
    key_settings: &crate::privacy::KeySettings,
    data_dir: &std::path::Path,
) -> Result<Storage, StoreError> {
    let state = state_url_for(url, None, data_dir);
    open_storage_in(url, &state, limits, migrate, key_settings, data_dir).await
}

/// Opens the log at `url` and, beside it, the state database at `state_url` (the same URL
/// unless the log is in KurrentDB; see [`state_url_for`]).
pub async fn open_storage_in(
    url: &str,
    state_url: &str,
    limits: StoreLimits,
    migrate: bool,
    key_settings: &crate::privacy::KeySettings,
    data_dir: &std::path::Path,
) -> Result<Storage, StoreError> {
    let (backend, database): (SharedStore, Database) = if is_kurrent_url(url) {
        let log = open_kurrent(url, limits).await?;
        if is_kurrent_url(state_url) {
            return Err(StoreError::Config(
                "the state database (state_database_url) must be sqlite:// or postgres://".into(),
            ));
        }
        let (state, database) = open_sql(state_url, limits, migrate).await?;
        // Only its pool is kept: the state database's own log table stays unused.
        state.close().await;
        (log, database)
    } else {
        open_sql(url, limits, migrate).await?
    };
    let kek = Arc::new(open_kek(&database, state_url, migrate, key_settings, data_dir).await?);
    let keys = Arc::new(crate::privacy::KeyStore::new(
        database.clone(),
        kek.clone(),
        std::time::Duration::from_secs(key_settings.cache_ttl_secs),
        key_settings.cache_max,
    ));
    let events: SharedStore = Arc::new(crate::privacy::CryptoStore::new(
        backend.clone(),
        keys.clone() as Arc<dyn crate::store::DataKeys>,
    ));
    Ok(Storage {
        events,
        raw: backend,
        keys,
        kek,
        database,
    })
}

/// The KEK ring for `database`, checked against what the database holds; with `migrate`,
/// plaintext keys of older versions are wrapped (with a progress bar on a terminal).
async fn open_kek(
    database: &Database,
    url: &str,
    migrate: bool,
    settings: &crate::privacy::KeySettings,
    data_dir: &std::path::Path,
) -> Result<crate::privacy::KekRing, StoreError> {
    use crate::privacy::{KekRing, KeySettings, rewrap};
    let default_file = KeySettings::default_kek_file(url, data_dir);
    let ring = KekRing::open(settings, &default_file)
        .await
        .map_err(|e| StoreError::Config(e.to_string()))?;
    if let Err(e) = rewrap::check_coverage(database, &ring).await {
        // A key file created just now cannot be the right one: leave no decoy behind.
        if let Some(created) = ring.created_file() {
            let _ = std::fs::remove_file(created);
        }
        return Err(e);
    }
    if migrate {
        let bar = indicatif::ProgressBar::new(0).with_style(
            indicatif::ProgressStyle::with_template(
                "wrapping stored keys under the KEK: {msg} {bar:30} {pos}/{len}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        let wrapped = rewrap::wrap_plaintext(database, &ring, &bar).await?;
        bar.finish_and_clear();
        if wrapped > 0 {
            crate::privacy::erasure::scrub_free_space(database).await?;
            tracing::info!(
                wrapped,
                kek = ring.current_id(),
                "wrapped plaintext keys left by an older version; old backups and, on \
                 PostgreSQL, dead tuples and WAL still hold them until they age out"
            );
        }
    }
    Ok(ring)
}
