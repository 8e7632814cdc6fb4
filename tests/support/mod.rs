//! Shared helpers of the integration tests: real backends started per test.
#![allow(dead_code)]

pub mod app;
pub mod binary;
pub mod capture;
pub mod certs;
pub mod coturn;
pub mod http;
pub mod moto;
pub mod node;
pub mod oidc;
pub mod peer;
pub mod pg;
pub mod prometheus;
pub mod raw;
pub mod rtc;
pub mod scenario;
pub mod stomp;

use neulbi::privacy::KeySettings;
use neulbi::store::{self, SharedStore, Storage, StoreLimits};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A TCP port on 127.0.0.1 nobody listens on right now; defined in `pg.rs`, which the
/// benches include on its own.
pub use pg::free_port;

/// A store backend under test, with what is needed to open a second instance on the same
/// database (a restart, or a second node) and to tamper with rows.
pub struct Backend {
    pub name: &'static str,
    pub url: String,
    pub store: SharedStore,
    /// Where the default key-encryption key file of a PostgreSQL backend lives (a SQLite
    /// backend keeps it beside the database file).
    pub key_dir: PathBuf,
    _guard: Arc<dyn Send + Sync>,
}

/// Opens `url` with the default key settings and `key_dir` as the data directory.
pub async fn open_keyed(url: &str, limits: StoreLimits, migrate: bool, key_dir: &Path) -> Storage {
    store::open_storage_with(url, limits, migrate, &KeySettings::default(), key_dir)
        .await
        .expect("open store")
}

impl Backend {
    /// A fresh SQLite file in a temp dir.
    pub async fn sqlite() -> Self {
        Self::sqlite_with(StoreLimits::default()).await
    }

    /// A fresh SQLite file with the given limits.
    pub async fn sqlite_with(limits: StoreLimits) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}", dir.path().join("events.db").display());
        let key_dir = dir.path().to_owned();
        let store = open_keyed(&url, limits, true, &key_dir).await.events;
        Self {
            name: "sqlite",
            url,
            store,
            key_dir,
            _guard: Arc::new(dir),
        }
    }

    /// A throwaway PostgreSQL server of its own.
    pub async fn postgres() -> Self {
        Self::postgres_with(StoreLimits::default()).await
    }

    /// A throwaway PostgreSQL server with the given limits.
    pub async fn postgres_with(limits: StoreLimits) -> Self {
        let pg = pg::TempPostgres::start();
        let url = pg.url();
        let keys = tempfile::tempdir().expect("temp dir");
        let key_dir = keys.path().to_owned();
        let store = open_keyed(&url, limits, true, &key_dir).await.events;
        Self {
            name: "postgres",
            url,
            store,
            key_dir,
            _guard: Arc::new((pg, keys)),
        }
    }

    /// The KurrentDB server or cluster named by `NEULBI_KURRENTDB_URL` (shared by every test:
    /// each one works on streams of its own), with a SQLite state database in a temp dir.
    /// Panics when the variable is unset or the server does not answer: a contract run
    /// that was asked for never passes without a server.
    #[cfg(feature = "kurrentdb")]
    pub async fn kurrentdb() -> Self {
        let url = std::env::var("NEULBI_KURRENTDB_URL").expect(
            "NEULBI_KURRENTDB_URL must name the KurrentDB server the contract runs against \
             (see docs/architecture.md)",
        );
        let dir = tempfile::tempdir().expect("temp dir");
        let key_dir = dir.path().to_owned();
        // The default state database of a KurrentDB log: neulbi.db in the data dir.
        let store = open_keyed(&url, StoreLimits::default(), true, &key_dir)
            .await
            .events;
        Self {
            name: "kurrentdb",
            url,
            store,
            key_dir,
            _guard: Arc::new(dir),
        }
    }

    /// Whether this backend's positions are 0, 1, 2, ... (SQLite, PostgreSQL) rather than
    /// only ordered (KurrentDB): the contract states each difference per backend.
    pub fn gap_free(&self) -> bool {
        self.store.positions() == store::Positions::GapFree
    }

    /// Another store instance on the same database (another node, or the same after restart).
    pub async fn open_again(&self) -> SharedStore {
        self.storage(false).await.events
    }

    /// Everything opened from this backend's database, with its key-encryption key.
    pub async fn storage(&self, migrate: bool) -> Storage {
        open_keyed(&self.url, StoreLimits::default(), migrate, &self.key_dir).await
    }

    /// Runs raw SQL against the database, bypassing the store (to corrupt rows on purpose).
    pub async fn execute_raw(&self, sql: &'static str) {
        use sqlx::Connection;
        if self.name == "sqlite" {
            let mut c = sqlx::SqliteConnection::connect(&self.url)
                .await
                .expect("connect");
            sqlx::query(sql).execute(&mut c).await.expect("raw sql");
        } else {
            let mut c = sqlx::PgConnection::connect(&self.url)
                .await
                .expect("connect");
            sqlx::query(sql).execute(&mut c).await.expect("raw sql");
        }
    }
}

/// Every file under `dir`, concatenated: what a raw scan of a database's files reads.
pub fn read_tree(dir: &Path, out: &mut Vec<u8>) {
    for entry in std::fs::read_dir(dir).expect("read dir").flatten() {
        let path = entry.path();
        if path.is_dir() {
            read_tree(&path, out);
        } else if let Ok(bytes) = std::fs::read(&path) {
            out.extend(bytes);
        }
    }
}

/// Whether `needle` occurs in `haystack` (an empty needle always does).
pub fn contains_bytes(haystack: &[u8], needle: &[u8]) -> bool {
    let Some((&first, rest)) = needle.split_first() else {
        return true;
    };
    haystack
        .iter()
        .enumerate()
        .filter(|(_, b)| **b == first)
        .any(|(i, _)| haystack[i + 1..].starts_with(rest))
}
