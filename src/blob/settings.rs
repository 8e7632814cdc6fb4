//! `[images]` configuration: limits, sweeper timing and the blob backend.

use serde::{Deserialize, Serialize};

/// Which backend stores image blobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum BlobBackend {
    /// Files under `<data_dir>/images`, served by the node (the embedded default).
    #[default]
    Fs,
    /// An S3 (or S3-compatible) bucket, served by presigned URLs.
    S3,
}

/// Where the S3 backend stores blobs. Credentials come from the environment only
/// (`NEULBI_S3_ACCESS_KEY_ID`/`NEULBI_S3_SECRET_ACCESS_KEY`, or the `AWS_*` pair), so a
/// config file never holds secrets.
#[derive(Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct S3Settings {
    /// Endpoint URL for S3-compatible servers (`NEULBI_S3_ENDPOINT`); AWS when unset.
    pub endpoint: Option<String>,
    /// Region (`NEULBI_S3_REGION`).
    pub region: String,
    /// The private bucket (`NEULBI_S3_BUCKET`).
    pub bucket: String,
    /// Path-style addressing, which most S3-compatible servers need (`NEULBI_S3_PATH_STYLE`).
    pub path_style: bool,
    /// Lifetime of presigned GET URLs, in seconds (`NEULBI_S3_PRESIGN_TTL_SECS`).
    pub presign_ttl_secs: u64,
    /// Seconds a request may take before the store counts as unavailable.
    pub timeout_secs: u64,
    /// Access key id (environment only).
    #[serde(skip)]
    pub access_key_id: Option<String>,
    /// Secret access key (environment only).
    #[serde(skip)]
    pub secret_access_key: Option<String>,
}

impl std::fmt::Debug for S3Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Settings")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("bucket", &self.bucket)
            .field("path_style", &self.path_style)
            .field("presign_ttl_secs", &self.presign_ttl_secs)
            .field("credentials", &self.access_key_id.as_ref().map(|_| "<set>"))
            .finish()
    }
}

impl Default for S3Settings {
    fn default() -> Self {
        Self {
            endpoint: None,
            region: "us-east-1".into(),
            bucket: "neulbi-images".into(),
            path_style: false,
            presign_ttl_secs: 900,
            timeout_secs: 10,
            access_key_id: None,
            secret_access_key: None,
        }
    }
}

/// Limits and backend of profile images.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ImageSettings {
    /// `fs` or `s3` (`NEULBI_IMAGES_BACKEND`).
    pub backend: BlobBackend,
    /// Largest accepted upload in bytes (`NEULBI_IMAGES_MAX_BYTES`); more is a 413.
    pub max_upload_bytes: usize,
    /// Most pixels (width × height) a decoded image may have; more is refused before the
    /// pixels are allocated (decompression bombs).
    pub max_pixels: u64,
    /// Longest side of the stored full image; larger images are scaled down.
    pub max_side: u32,
    /// Side of the square thumbnail.
    pub thumbnail_side: u32,
    /// Seconds between sweeps of unreferenced blobs (0 turns the periodic sweep off).
    pub sweep_interval_secs: u64,
    /// Age in seconds below which an unreferenced blob is spared (an upload in flight).
    pub sweep_grace_secs: u64,
    /// Longest a sweep waits for the `images` read model to catch up with the log before it
    /// gives up for this round (deleting nothing).
    pub sweep_wait_secs: u64,
    /// The S3 backend, when selected.
    pub s3: S3Settings,
}

impl Default for ImageSettings {
    fn default() -> Self {
        Self {
            backend: BlobBackend::Fs,
            max_upload_bytes: 5 * 1024 * 1024,
            max_pixels: 25_000_000,
            max_side: 1024,
            thumbnail_side: 256,
            sweep_interval_secs: 3600,
            sweep_grace_secs: 3600,
            sweep_wait_secs: 60,
            s3: S3Settings::default(),
        }
    }
}

impl ImageSettings {
    /// Applies `NEULBI_IMAGES_*` and `NEULBI_S3_*` variables (and the `AWS_*` credential pair
    /// as a fallback) read through `get`.
    pub fn apply_env(&mut self, get: &impl Fn(&str) -> Option<String>) -> Result<(), String> {
        if let Some(v) = get("NEULBI_IMAGES_BACKEND") {
            self.backend = match v.trim() {
                "fs" => BlobBackend::Fs,
                "s3" => BlobBackend::S3,
                other => return Err(format!("NEULBI_IMAGES_BACKEND: {other:?} is not fs or s3")),
            };
        }
        if let Some(v) = get("NEULBI_IMAGES_MAX_BYTES") {
            self.max_upload_bytes = crate::env_value::env_num("NEULBI_IMAGES_MAX_BYTES", &v)?;
        }
        if let Some(v) = get("NEULBI_S3_ENDPOINT").filter(|v| !v.is_empty()) {
            self.s3.endpoint = Some(v);
        }
        if let Some(v) = get("NEULBI_S3_REGION").filter(|v| !v.is_empty()) {
            self.s3.region = v;
        }
        if let Some(v) = get("NEULBI_S3_BUCKET").filter(|v| !v.is_empty()) {
            self.s3.bucket = v;
        }
        if let Some(v) = get("NEULBI_S3_PATH_STYLE") {
            self.s3.path_style = matches!(v.trim(), "1" | "true" | "yes");
        }
        if let Some(v) = get("NEULBI_S3_PRESIGN_TTL_SECS") {
            self.s3.presign_ttl_secs = crate::env_value::env_num("NEULBI_S3_PRESIGN_TTL_SECS", &v)?;
        }
        self.s3.access_key_id = get("NEULBI_S3_ACCESS_KEY_ID").or_else(|| get("AWS_ACCESS_KEY_ID"));
        self.s3.secret_access_key =
            get("NEULBI_S3_SECRET_ACCESS_KEY").or_else(|| get("AWS_SECRET_ACCESS_KEY"));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn environment_selects_s3_and_limits() {
        let mut s = ImageSettings::default();
        assert_eq!(s.max_upload_bytes, 5 * 1024 * 1024);
        s.apply_env(&env(&[
            ("NEULBI_IMAGES_BACKEND", "s3"),
            ("NEULBI_IMAGES_MAX_BYTES", "1024"),
            ("NEULBI_S3_ENDPOINT", "http://127.0.0.1:9000"),
            ("NEULBI_S3_BUCKET", "pics"),
            ("NEULBI_S3_PATH_STYLE", "true"),
            ("NEULBI_S3_PRESIGN_TTL_SECS", "60"),
            ("AWS_ACCESS_KEY_ID", "id"),
            ("NEULBI_S3_SECRET_ACCESS_KEY", "very-secret"),
        ]))
        .expect("valid");
        assert_eq!(s.backend, BlobBackend::S3);
        assert_eq!(s.max_upload_bytes, 1024);
        assert_eq!(s.s3.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
        assert_eq!(s.s3.bucket, "pics");
        assert!(s.s3.path_style);
        assert_eq!(s.s3.presign_ttl_secs, 60);
        assert_eq!(s.s3.access_key_id.as_deref(), Some("id"));
        // Debug output never shows the secret.
        assert!(!format!("{s:?}").contains("very-secret"));
        assert!(
            ImageSettings::default()
                .apply_env(&env(&[("NEULBI_IMAGES_BACKEND", "ftp")]))
                .is_err()
        );
    }

    #[test]
    fn file_cannot_carry_credentials() {
        let parsed: Result<ImageSettings, _> =
            toml::from_str("[s3]\nbucket = \"b\"\nsecret_access_key = \"x\"\n");
        assert!(parsed.is_err());
        let parsed: ImageSettings =
            toml::from_str("backend = \"s3\"\nmax_upload_bytes = 10\n[s3]\nbucket = \"b\"\n")
                .expect("valid");
        assert_eq!(parsed.backend, BlobBackend::S3);
        assert_eq!(parsed.s3.bucket, "b");
    }
}
