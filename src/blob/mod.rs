//! Profile-image blobs: where image bytes live, behind one [`BlobStore`] trait with a local
//! filesystem backend (the embedded default) and an S3 backend, plus the image pipeline
//! ([`picture`]), the upload/replace/remove service ([`images`]) and the [`sweeper`] that
//! removes blobs no user's current image references.

pub mod fs;
pub mod images;
pub mod picture;
pub mod s3;
pub mod settings;
pub mod sweeper;

use async_trait::async_trait;
use std::sync::Arc;
use std::time::SystemTime;
use thiserror::Error;

pub use images::Images;
pub use settings::{BlobBackend, ImageSettings, S3Settings};
pub use sweeper::{SweepError, SweepReport, Sweeper};

/// Why a blob operation failed.
#[derive(Debug, Error)]
pub enum BlobError {
    /// The key is not one this service would have made (path tricks, odd characters).
    #[error("invalid blob key")]
    InvalidKey,
    /// The backend could not be reached or refused the operation; the caller may retry.
    #[error("blob store unavailable: {0}")]
    Unavailable(String),
    /// The backend is misconfigured (bucket, credentials, directory).
    #[error("blob store misconfigured: {0}")]
    Config(String),
}

/// A stored blob as the sweeper sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobInfo {
    /// The blob's key.
    pub key: String,
    /// When it was last written, so the sweeper can spare blobs still being committed.
    pub modified: SystemTime,
}

/// Stores opaque bytes under keys; the images service is its only user.
#[async_trait]
pub trait BlobStore: Send + Sync + 'static {
    /// Stores `bytes` under `key`, replacing any blob there.
    async fn put(&self, key: &str, bytes: Vec<u8>, content_type: &str) -> Result<(), BlobError>;
    /// The bytes under `key`, or `None` if there is no such blob.
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, BlobError>;
    /// Deletes `key`; deleting a missing blob succeeds (so retries and sweeps are idempotent).
    async fn delete(&self, key: &str) -> Result<(), BlobError>;
    /// Every stored blob, for the sweeper.
    async fn list(&self) -> Result<Vec<BlobInfo>, BlobError>;
    /// The URL a browser uses to fetch `key` (a node route or a presigned URL).
    async fn url(&self, key: &str) -> Result<String, BlobError>;
    /// True if this node serves the blobs itself at `GET /images/{key}`.
    fn served_by_node(&self) -> bool;
}

/// A shared handle to whichever backend the configuration selected.
pub type SharedBlobStore = Arc<dyn BlobStore>;

/// Checks a key is one this service makes: 1..=200 characters of `[A-Za-z0-9._-]`, no `..`,
/// so it is safe as a file name and as an object key.
pub fn validate_key(key: &str) -> Result<(), BlobError> {
    let ok = !key.is_empty()
        && key.len() <= 200
        && !key.contains("..")
        && !key.starts_with('.')
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(BlobError::InvalidKey)
    }
}

#[cfg(test)]
mod tests {
    use super::validate_key;

    #[test]
    fn keys_are_restricted() {
        assert!(validate_key("0190a-b_c.jpg").is_ok());
        for bad in [
            "",
            "../x",
            "a/b",
            ".hidden",
            "a b",
            "a\\b",
            &"k".repeat(201),
        ] {
            assert!(validate_key(bad).is_err(), "{bad:?}");
        }
    }
}
