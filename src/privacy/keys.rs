//! Per-user data keys, kept in a table outside the event streams, wrapped by the
//! key-encryption key ([`super::kek`]) so the table alone opens nothing.
//!
//! A key row is created on the first personal field a user owns and its bytes are deleted on
//! erasure; the row itself stays, so a destroyed key is never re-created and later personal
//! fields of an erased user are stored as erased straight away. Unwrapped keys are cached for
//! a short time (bounded); on another node an erasure takes effect on reads within that time.

use super::kek::{KekError, KekRing, WrapContext};
use crate::store::{Database, StoreError};
use chacha20poly1305::XChaCha20Poly1305;
use chacha20poly1305::aead::KeyInit;
use chrono::Utc;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use uuid::Uuid;

pub use crate::store::DataKey;

#[derive(Clone)]
enum Cached {
    Active(DataKey),
    Destroyed,
    Missing,
}

/// Reads, creates and destroys data keys.
pub struct KeyStore {
    db: Database,
    ring: Arc<KekRing>,
    cache: Mutex<HashMap<Uuid, (Cached, Instant)>>,
    cache_ttl: Duration,
    cache_max: usize,
}

/// A stored key row: key id, legacy plaintext key, wrapped key, KEK id, destroyed.
type KeyRow = (Uuid, Option<Vec<u8>>, Option<Vec<u8>>, Option<String>, bool);
/// The same row as SQLite returns it (ids as text).
type SqliteKeyRow = (
    String,
    Option<Vec<u8>>,
    Option<Vec<u8>>,
    Option<String>,
    bool,
);

fn kek_error(e: KekError) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

#[async_trait::async_trait]
impl crate::store::DataKeys for KeyStore {
    async fn for_write(&self, owner: Uuid) -> Result<Option<DataKey>, StoreError> {
        KeyStore::for_write(self, owner).await
    }

    async fn for_read(&self, owner: Uuid) -> Result<Option<DataKey>, StoreError> {
        KeyStore::for_read(self, owner).await
    }
}

impl KeyStore {
    /// A key store over the same database as the events, wrapping keys with `ring` and
    /// caching unwrapped keys for `cache_ttl`, at most `cache_max` of them.
    pub fn new(db: Database, ring: Arc<KekRing>, cache_ttl: Duration, cache_max: usize) -> Self {
        Self {
            db,
            ring,
            cache: Mutex::new(HashMap::new()),
            cache_ttl,
            cache_max: cache_max.max(1),
        }
    }

    /// The KEKs this store wraps and unwraps with.
    pub fn ring(&self) -> &Arc<KekRing> {
        &self.ring
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
                     ON CONFLICT (owner) DO UPDATE SET key = NULL, wrapped = NULL, \
                     destroyed_at = COALESCE(data_keys.destroyed_at, excluded.destroyed_at)",
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
                     ON CONFLICT (owner) DO UPDATE SET key = NULL, wrapped = NULL, \
                     destroyed_at = COALESCE(neulbi_keys.data_keys.destroyed_at, excluded.destroyed_at)",
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
        let row: Option<KeyRow> = match &self.db {
            Database::Sqlite(pool) => {
                let row: Option<SqliteKeyRow> = sqlx::query_as(
                    "SELECT key_id, key, wrapped, kek_id, destroyed_at IS NOT NULL \
                         FROM data_keys WHERE owner = ?",
                )
                .bind(owner.to_string())
                .fetch_optional(pool)
                .await?;
                match row {
                    Some((id, key, wrapped, kek, destroyed)) => Some((
                        Uuid::parse_str(&id)
                            .map_err(|e| StoreError::Unavailable(format!("bad key id: {e}")))?,
                        key,
                        wrapped,
                        kek,
                        destroyed,
                    )),
                    None => None,
                }
            }
            Database::Postgres(pool) => {
                sqlx::query_as(
                    "SELECT key_id, key, wrapped, kek_id, destroyed_at IS NOT NULL \
                     FROM neulbi_keys.data_keys WHERE owner = $1",
                )
                .bind(owner)
                .fetch_optional(pool)
                .await?
            }
        };
        let state = match row {
            None => Cached::Missing,
            Some((_, _, _, _, true)) | Some((_, None, None, _, _)) => Cached::Destroyed,
            Some((id, _, Some(wrapped), Some(kek_id), false)) => {
                let ctx = WrapContext::DataKey { owner, key_id: id };
                let bytes = self
                    .ring
                    .unwrap(&kek_id, &ctx, &wrapped)
                    .await
                    .map_err(kek_error)?;
                Cached::Active(DataKey {
                    id,
                    cipher: cipher_of(owner, &bytes)?,
                })
            }
            // Written by a version before envelope encryption and not migrated yet.
            Some((id, Some(bytes), _, _, false)) => Cached::Active(DataKey {
                id,
                cipher: cipher_of(owner, &bytes)?,
            }),
            Some((_, None, Some(_), None, false)) => {
                return Err(StoreError::Unavailable(format!(
                    "data key of {owner} is wrapped but names no KEK"
                )));
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
        let key_id = Uuid::now_v7();
        let ctx = WrapContext::DataKey { owner, key_id };
        // Only the wrapped form is stored; the plaintext is dropped (zeroed) here and the
        // winning row is read back and unwrapped like any other.
        let (_, kek_id, wrapped) = self.ring.generate(&ctx).await.map_err(kek_error)?;
        let now = Utc::now().timestamp_micros();
        // ON CONFLICT DO NOTHING: a concurrent first write (or another node) may win; both then
        // read back the same winning key.
        match &self.db {
            Database::Sqlite(pool) => {
                sqlx::query(
                    "INSERT INTO data_keys (owner, key_id, key, wrapped, kek_id, created_at) \
                     VALUES (?, ?, NULL, ?, ?, ?) ON CONFLICT (owner) DO NOTHING",
                )
                .bind(owner.to_string())
                .bind(key_id.to_string())
                .bind(wrapped)
                .bind(kek_id)
                .bind(now)
                .execute(pool)
                .await?;
            }
            Database::Postgres(pool) => {
                sqlx::query(
                    "INSERT INTO neulbi_keys.data_keys (owner, key_id, key, wrapped, kek_id, created_at) \
                     VALUES ($1, $2, NULL, $3, $4, $5) ON CONFLICT (owner) DO NOTHING",
                )
                .bind(owner)
                .bind(key_id)
                .bind(wrapped)
                .bind(kek_id)
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
            .filter(|(_, at)| at.elapsed() < self.cache_ttl)
            .map(|(c, _)| c.clone())
    }

    fn cache_put(&self, owner: Uuid, state: Cached) {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= self.cache_max {
            let ttl = self.cache_ttl;
            cache.retain(|_, (_, at)| at.elapsed() < ttl);
            if cache.len() >= self.cache_max {
                cache.clear();
            }
        }
        cache.insert(owner, (state, Instant::now()));
    }

    fn forget(&self, owner: Uuid) {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache.remove(&owner);
    }
}

fn cipher_of(owner: Uuid, bytes: &[u8]) -> Result<XChaCha20Poly1305, StoreError> {
    XChaCha20Poly1305::new_from_slice(bytes).map_err(|_| {
        StoreError::Unavailable(format!(
            "data key of {owner} has {} bytes, expected 32",
            bytes.len()
        ))
    })
}
