//! Shared helpers of the integration tests: real backends started per test.
#![allow(dead_code)]

pub mod app;
pub mod capture;
pub mod coturn;
pub mod http;
pub mod moto;
pub mod node;
pub mod oidc;
pub mod peer;
pub mod pg;
pub mod raw;
pub mod rtc;
pub mod scenario;
pub mod stomp;

use neulbi::store::{self, SharedStore, StoreLimits};
use std::sync::Arc;

/// A store backend under test, with what is needed to open a second instance on the same
/// database (a restart, or a second node) and to tamper with rows.
pub struct Backend {
    pub name: &'static str,
    pub url: String,
    pub store: SharedStore,
    _guard: Arc<dyn Send + Sync>,
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
        let store = store::open(&url, limits, true)
            .await
            .expect("open sqlite store");
        Self {
            name: "sqlite",
            url,
            store,
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
        let store = store::open(&url, limits, true)
            .await
            .expect("open postgres store");
        Self {
            name: "postgres",
            url,
            store,
            _guard: Arc::new(pg),
        }
    }

    /// Another store instance on the same database (another node, or the same after restart).
    pub async fn open_again(&self) -> SharedStore {
        store::open(&self.url, StoreLimits::default(), false)
            .await
            .expect("reopen store")
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
