//! The per-user data keys that seal personal fields, as readers of the log see them.
//!
//! Where keys are kept (a table beside the log, wrapped by a KMS or file KEK) is the root
//! crate's business (`privacy::KeyStore`); the codec, the sealed read models and the
//! projectors only need to ask for one owner's key, so they depend on this trait alone.

use crate::StoreError;
use async_trait::async_trait;
use chacha20poly1305::XChaCha20Poly1305;
use std::collections::HashMap;
use uuid::Uuid;

/// A usable data key. Deliberately not `Debug`: key bytes must never reach a log.
#[derive(Clone)]
pub struct DataKey {
    /// Recorded beside every sealed field, so keys can be rotated later.
    pub id: Uuid,
    /// The AEAD instance for this key.
    pub cipher: XChaCha20Poly1305,
}

/// Looks up data keys by owner.
#[async_trait]
pub trait DataKeys: Send + Sync + 'static {
    /// The owner's key for sealing, created on first use; `None` once the owner is erased.
    async fn for_write(&self, owner: Uuid) -> Result<Option<DataKey>, StoreError>;

    /// The owner's key for opening; `None` if it never existed or was destroyed.
    async fn for_read(&self, owner: Uuid) -> Result<Option<DataKey>, StoreError>;
}

/// What a page of events needs keys for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyUse {
    /// Sealing: keys are created on first use ([`DataKeys::for_write`]).
    Seal,
    /// Opening: keys are only looked up ([`DataKeys::for_read`]).
    Open,
}

/// Each owner's key, looked up once: sealing or opening a page of events needs the keys of
/// a few owners many times over.
pub async fn keys_of(
    keys: &dyn DataKeys,
    owners: impl IntoIterator<Item = Uuid>,
    purpose: KeyUse,
) -> Result<HashMap<Uuid, Option<DataKey>>, StoreError> {
    let mut out = HashMap::new();
    for owner in owners {
        let key = match purpose {
            KeyUse::Seal => keys.for_write(owner).await?,
            KeyUse::Open => keys.for_read(owner).await?,
        };
        out.insert(owner, key);
    }
    Ok(out)
}
