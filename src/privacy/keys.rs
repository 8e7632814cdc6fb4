//! Per-user data keys, kept in a table outside the event streams.
//!
//! A key row is created on the first personal field a user owns and its bytes are deleted on
//! erasure; the row itself stays, so a destroyed key is never re-created and later personal
//! fields of an erased user are stored as erased straight away. Keys are cached for a short
//! time; on another node an erasure takes effect on reads within that time.

use crate::store::{Database, StoreError};
use chacha20poly1305::XChaCha20Poly1305;
use chacha20poly1305::aead::{KeyInit, OsRng};
use chrono::Utc;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use uuid::Uuid;

/// How long a looked-up key (or its absence) is trusted before asking the database again.
const CACHE_TTL: Duration = Duration::from_secs(30);
/// Most cached keys; the cache is cleared when it grows past this.
const CACHE_MAX: usize = 100_000;

/// A usable data key. Deliberately not `Debug`: key bytes must never reach a log.
#[derive(Clone)]
pub struct DataKey {
    /// Recorded beside every sealed field, so keys can be rotated later.
    pub id: Uuid,
    /// The AEAD instance for this key.
    pub cipher: XChaCha20Poly1305,
}

#[derive(Clone)]
enum Cached {
    Active(DataKey),
    Destroyed,
    Missing,
}

/// Reads, creates and destroys data keys.
pub struct KeyStore {
    db: Database,
    cache: Mutex<HashMap<Uuid, (Cached, Instant)>>,
}

impl KeyStore {
    /// A key store over the same database as the events.
    pub fn new(db: Database) -> Self {
        Self {
            db,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The key to seal `owner`'s new personal data with, created on first use; `None` if the
    /// owner has been erased.
    pub async fn for_write(&self, owner: Uuid) -> Result<Option<DataKey>, StoreError> {
        match self.lookup(owner).await? {
            Cached::Active(k) => Ok(Some(k)),
            Cached::Destroyed => Ok(None),
            Cached::Missing => {
                self.create(owner).await?;
                self.forget(owner);
                match self.lookup(owner).await? {
                    Cached::Active(k) => Ok(Some(k)),
                    _ => Ok(None),
                }
            }
        }
    }

    /// The key to open `owner`'s personal data with; `None` if erased (or never created).
    pub async fn for_read(&self, owner: Uuid) -> Result<Option<DataKey>, StoreError> {
        match self.lookup(owner).await? {
            Cached::Active(k) => Ok(Some(k)),
            Cached::Destroyed | Cached::Missing => Ok(None),
        }
    }

    /// Destroys `owner`'s key for good. Idempotent; also blocks creating a key later.
    pub async fn destroy(&self, owner: Uuid) -> Result<(), StoreError> {
        let now = Utc::now().timestamp_micros();
        let key_id = Uuid::now_v7();
        match &self.db {
            Database::Sqlite(pool) => {
                sqlx::query(
                    "INSERT INTO data_keys (owner, key_id, key, created_at, destroyed_at) VALUES (?, ?, NULL, ?, ?) \
                     ON CONFLICT (owner) DO UPDATE SET key = NULL, destroyed_at = COALESCE(data_keys.destroyed_at, excluded.destroyed_at)",
                )
                .bind(owner.to_string())
                .bind(key_id.to_string())
                .bind(now)
                .bind(now)
                .execute(pool)
                .await?;
            }
            Database::Postgres(pool) => {
                sqlx::query(
                    "INSERT INTO neulbi_keys.data_keys (owner, key_id, key, created_at, destroyed_at) VALUES ($1, $2, NULL, $3, $3) \
                     ON CONFLICT (owner) DO UPDATE SET key = NULL, destroyed_at = COALESCE(neulbi_keys.data_keys.destroyed_at, excluded.destroyed_at)",
                )
                .bind(owner)
                .bind(key_id)
                .bind(now)
                .execute(pool)
                .await?;
            }
        }
        self.cache_put(owner, Cached::Destroyed);
        Ok(())
    }

    /// Whether `owner`'s key has been destroyed (ignores the cache).
    pub async fn is_destroyed(&self, owner: Uuid) -> Result<bool, StoreError> {
        self.forget(owner);
        Ok(matches!(self.lookup(owner).await?, Cached::Destroyed))
    }

    async fn lookup(&self, owner: Uuid) -> Result<Cached, StoreError> {
        if let Some(hit) = self.cache_get(owner) {
            return Ok(hit);
        }
        let row: Option<(Uuid, Option<Vec<u8>>)> = match &self.db {
            Database::Sqlite(pool) => {
                let row: Option<(String, Option<Vec<u8>>)> =
                    sqlx::query_as("SELECT key_id, key FROM data_keys WHERE owner = ?")
                        .bind(owner.to_string())
                        .fetch_optional(pool)
                        .await?;
                match row {
                    Some((id, key)) => Some((
                        Uuid::parse_str(&id)
                            .map_err(|e| StoreError::Unavailable(format!("bad key id: {e}")))?,
                        key,
                    )),
                    None => None,
                }
            }
            Database::Postgres(pool) => {
                sqlx::query_as("SELECT key_id, key FROM neulbi_keys.data_keys WHERE owner = $1")
                    .bind(owner)
                    .fetch_optional(pool)
                    .await?
            }
        };
        let state = match row {
            None => Cached::Missing,
            Some((_, None)) => Cached::Destroyed,
            Some((id, Some(bytes))) => {
                let cipher = XChaCha20Poly1305::new_from_slice(&bytes).map_err(|_| {
                    StoreError::Unavailable(format!(
                        "data key of {owner} has {} bytes, expected 32",
                        bytes.len()
                    ))
                })?;
                Cached::Active(DataKey { id, cipher })
            }
        };
        // "Missing" is not cached: another node may create the key a moment later, and a
        // sealed field whose key is missing here must not read as erased for long.
        if !matches!(state, Cached::Missing) {
            self.cache_put(owner, state.clone());
        }
        Ok(state)
    }

    async fn create(&self, owner: Uuid) -> Result<(), StoreError> {
        let key = XChaCha20Poly1305::generate_key(&mut OsRng);
        let key_id = Uuid::now_v7();
        let now = Utc::now().timestamp_micros();
        // ON CONFLICT DO NOTHING: a concurrent first write (or another node) may win; both then
        // read back the same winning key.
        match &self.db {
            Database::Sqlite(pool) => {
                sqlx::query(
                    "INSERT INTO data_keys (owner, key_id, key, created_at) VALUES (?, ?, ?, ?) ON CONFLICT (owner) DO NOTHING",
                )
                .bind(owner.to_string())
                .bind(key_id.to_string())
                .bind(&key[..])
                .bind(now)
                .execute(pool)
                .await?;
            }
            Database::Postgres(pool) => {
                sqlx::query(
                    "INSERT INTO neulbi_keys.data_keys (owner, key_id, key, created_at) VALUES ($1, $2, $3, $4) ON CONFLICT (owner) DO NOTHING",
                )
                .bind(owner)
                .bind(key_id)
                .bind(&key[..])
                .bind(now)
                .execute(pool)
                .await?;
            }
        }
        Ok(())
    }

    fn cache_get(&self, owner: Uuid) -> Option<Cached> {
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache
            .get(&owner)
            .filter(|(_, at)| at.elapsed() < CACHE_TTL)
            .map(|(c, _)| c.clone())
    }

    fn cache_put(&self, owner: Uuid, state: Cached) {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= CACHE_MAX {
            cache.clear();
        }
        cache.insert(owner, (state, Instant::now()));
    }

    fn forget(&self, owner: Uuid) {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache.remove(&owner);
    }
}
