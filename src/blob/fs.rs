//! Blobs as files in one directory (the embedded default), served by the node itself.

use super::{BlobError, BlobInfo, BlobStore, validate_key};
use async_trait::async_trait;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

/// Files under `root`, named by key; URLs point at `GET {base_url}/images/{key}`.
pub struct FsBlobStore {
    root: PathBuf,
    base_url: String,
}

impl FsBlobStore {
    /// Opens (creating if needed) the directory `root`; `base_url` is the node's public URL.
    pub fn open(root: impl Into<PathBuf>, base_url: &str) -> Result<Self, BlobError> {
        let root = root.into();
        std::fs::create_dir_all(&root)
            .map_err(|e| BlobError::Config(format!("cannot create {}: {e}", root.display())))?;
        Ok(Self {
            root,
            base_url: base_url.trim_end_matches('/').to_owned(),
        })
    }

    /// The directory holding the blobs.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path(&self, key: &str) -> Result<PathBuf, BlobError> {
        validate_key(key)?;
        Ok(self.root.join(key))
    }
}

fn io(e: std::io::Error) -> BlobError {
    BlobError::Unavailable(e.to_string())
}

#[async_trait]
impl BlobStore for FsBlobStore {
    async fn put(&self, key: &str, bytes: Vec<u8>, _content_type: &str) -> Result<(), BlobError> {
        let path = self.path(key)?;
        // Written under a temporary name and renamed, so a reader never sees half a file.
        let tmp = self
            .root
            .join(format!(".tmp-{}", uuid::Uuid::new_v4().simple()));
        tokio::fs::write(&tmp, bytes).await.map_err(io)?;
        if let Err(e) = tokio::fs::rename(&tmp, &path).await {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(io(e));
        }
        Ok(())
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, BlobError> {
        match tokio::fs::read(self.path(key)?).await {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(e)),
        }
    }

    async fn delete(&self, key: &str) -> Result<(), BlobError> {
        match tokio::fs::remove_file(self.path(key)?).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(e)),
        }
    }

    async fn list(&self) -> Result<Vec<BlobInfo>, BlobError> {
        let mut out = Vec::new();
        let mut dir = tokio::fs::read_dir(&self.root).await.map_err(io)?;
        while let Some(entry) = dir.next_entry().await.map_err(io)? {
            let Ok(key) = entry.file_name().into_string() else {
                continue;
            };
            // Only keys this service makes (temporary files of a put in flight are skipped).
            if validate_key(&key).is_err() {
                continue;
            }
            let meta = entry.metadata().await.map_err(io)?;
            if !meta.is_file() {
                continue;
            }
            out.push(BlobInfo {
                key,
                modified: meta.modified().map_err(io)?,
            });
        }
        Ok(out)
    }

    async fn url(&self, key: &str) -> Result<String, BlobError> {
        validate_key(key)?;
        Ok(format!("{}/images/{key}", self.base_url))
    }

    fn served_by_node(&self) -> bool {
        true
    }
}
