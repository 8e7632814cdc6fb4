//! `[keys]` configuration: where the key-encryption key (KEK) that wraps every data key comes
//! from, the keys that wrapped older rows (during a rotation), and the unwrapped-key cache.
//!
//! A KEK is named by a spec: `file:PATH` (32 random bytes, base64, created on first run only
//! for the default file), `env:VAR` (the base64 key in an environment variable) or
//! `kms:KEY-ID-OR-ARN` (an AWS KMS key; data keys come from `GenerateDataKey`). The KEK never
//! sits in the database, so a copy of the database alone opens nothing.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The `[keys]` section.
#[derive(Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KeySettings {
    /// The KEK that wraps new keys (`NEULBI_KEK`); default: the file `neulbi.kek` beside the
    /// SQLite database, or in the data directory with PostgreSQL.
    pub kek: Option<String>,
    /// KEKs that wrapped older rows and still unwrap them until `neulbi keys rotate-kek` has
    /// rewrapped everything (`NEULBI_KEK_PREVIOUS`, comma-separated).
    pub previous: Vec<String>,
    /// KMS endpoint URL, for KMS-compatible servers (`NEULBI_KMS_ENDPOINT`); AWS when unset.
    pub kms_endpoint: Option<String>,
    /// KMS region (`NEULBI_KMS_REGION`, else `AWS_REGION`).
    pub kms_region: String,
    /// Seconds a KMS call may take before the key store counts as unavailable.
    pub kms_timeout_secs: u64,
    /// Seconds an unwrapped data key stays cached (`NEULBI_KEY_CACHE_TTL_SECS`); an erasure on
    /// another node takes effect on this node's reads within this time.
    pub cache_ttl_secs: u64,
    /// Most unwrapped data keys held in memory (`NEULBI_KEY_CACHE_MAX`).
    pub cache_max: usize,
    /// KMS access key id (environment only: `NEULBI_KMS_ACCESS_KEY_ID` or `AWS_ACCESS_KEY_ID`).
    #[serde(skip)]
    pub kms_access_key_id: Option<String>,
    /// KMS secret (environment only: `NEULBI_KMS_SECRET_ACCESS_KEY` or `AWS_SECRET_ACCESS_KEY`).
    #[serde(skip)]
    pub kms_secret_access_key: Option<String>,
    /// KMS session token (environment only: `AWS_SESSION_TOKEN`).
    #[serde(skip)]
    pub kms_session_token: Option<String>,
}

impl std::fmt::Debug for KeySettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeySettings")
            .field("kek", &self.kek.as_deref().map(redact_spec))
            .field(
                "previous",
                &self
                    .previous
                    .iter()
                    .map(|s| redact_spec(s))
                    .collect::<Vec<_>>(),
            )
            .field("kms_endpoint", &self.kms_endpoint)
            .field("kms_region", &self.kms_region)
            .field("cache_ttl_secs", &self.cache_ttl_secs)
            .field("cache_max", &self.cache_max)
            .field(
                "kms_credentials",
                &self.kms_access_key_id.as_ref().map(|_| "<set>"),
            )
            .finish()
    }
}

/// A spec as it may appear in a log line: the kind and the non-secret part.
pub fn redact_spec(spec: &str) -> String {
    // Every spec kind names where the key is, never the key itself; a bare value that is not
    // a spec may be a pasted key, so it is hidden.
    match spec.split_once(':') {
        Some((kind @ ("file" | "env" | "kms"), rest)) => format!("{kind}:{rest}"),
        _ => "<not a KEK spec>".to_owned(),
    }
}

impl Default for KeySettings {
    fn default() -> Self {
        Self {
            kek: None,
            previous: Vec::new(),
            kms_endpoint: None,
            kms_region: "us-east-1".into(),
            kms_timeout_secs: 5,
            cache_ttl_secs: 30,
            cache_max: 100_000,
            kms_access_key_id: None,
            kms_secret_access_key: None,
            kms_session_token: None,
        }
    }
}

impl KeySettings {
    /// Defaults with the `NEULBI_KEK*`/`NEULBI_KMS_*` variables of the process applied: what
    /// a tool that opens a database without a config file uses.
    pub fn from_env() -> Result<Self, String> {
        let mut s = Self::default();
        s.apply_env(&|k| std::env::var(k).ok())?;
        Ok(s)
    }

    /// Applies `NEULBI_KEK`, `NEULBI_KEK_PREVIOUS`, `NEULBI_KMS_*`, `NEULBI_KEY_CACHE_*` and
    /// the `AWS_*` credentials read through `get`.
    pub fn apply_env(&mut self, get: &impl Fn(&str) -> Option<String>) -> Result<(), String> {
        if let Some(v) = get("NEULBI_KEK").filter(|v| !v.trim().is_empty()) {
            self.kek = Some(v.trim().to_owned());
        }
        if let Some(v) = get("NEULBI_KEK_PREVIOUS") {
            self.previous = v
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect();
        }
        if let Some(v) = get("NEULBI_KMS_ENDPOINT").filter(|v| !v.is_empty()) {
            self.kms_endpoint = Some(v);
        }
        if let Some(v) = get("NEULBI_KMS_REGION")
            .or_else(|| get("AWS_REGION"))
            .filter(|v| !v.is_empty())
        {
            self.kms_region = v;
        }
        if let Some(v) = get("NEULBI_KEY_CACHE_TTL_SECS") {
            self.cache_ttl_secs = crate::env_value::env_num("NEULBI_KEY_CACHE_TTL_SECS", &v)?;
        }
        if let Some(v) = get("NEULBI_KEY_CACHE_MAX") {
            self.cache_max = crate::env_value::env_num("NEULBI_KEY_CACHE_MAX", &v)?;
        }
        self.kms_access_key_id =
            get("NEULBI_KMS_ACCESS_KEY_ID").or_else(|| get("AWS_ACCESS_KEY_ID"));
        self.kms_secret_access_key =
            get("NEULBI_KMS_SECRET_ACCESS_KEY").or_else(|| get("AWS_SECRET_ACCESS_KEY"));
        self.kms_session_token = get("AWS_SESSION_TOKEN");
        for spec in self.kek.iter().chain(&self.previous) {
            if !matches!(spec.split_once(':'), Some(("file" | "env" | "kms", r)) if !r.is_empty()) {
                return Err(format!(
                    "NEULBI_KEK/NEULBI_KEK_PREVIOUS: {} is not file:PATH, env:VAR or kms:KEY-ID",
                    redact_spec(spec)
                ));
            }
        }
        Ok(())
    }

    /// The file that holds the KEK when none is configured: `neulbi.kek` beside a SQLite
    /// database file, else in `data_dir`.
    pub fn default_kek_file(database_url: &str, data_dir: &Path) -> PathBuf {
        let sqlite_path = database_url
            .strip_prefix("sqlite://")
            .or_else(|| database_url.strip_prefix("sqlite:"))
            .map(|p| p.split('?').next().unwrap_or(p))
            .filter(|p| !p.is_empty() && !p.contains(":memory:"));
        match sqlite_path {
            Some(p) => Path::new(p)
                .parent()
                .unwrap_or(Path::new("."))
                .join("neulbi.kek"),
            None => data_dir.join("neulbi.kek"),
        }
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
    fn environment_names_the_keys_and_the_kms() {
        let mut s = KeySettings::default();
        s.apply_env(&env(&[
            ("NEULBI_KEK", "kms:arn:aws:kms:us-east-1:1:key/abc"),
            ("NEULBI_KEK_PREVIOUS", "file:/etc/old.kek, env:OLD_KEK,"),
            ("NEULBI_KMS_ENDPOINT", "http://127.0.0.1:5000"),
            ("AWS_REGION", "ap-northeast-2"),
            ("AWS_ACCESS_KEY_ID", "id"),
            ("NEULBI_KMS_SECRET_ACCESS_KEY", "secret"),
            ("NEULBI_KEY_CACHE_TTL_SECS", "5"),
        ]))
        .expect("valid");
        assert_eq!(
            s.kek.as_deref(),
            Some("kms:arn:aws:kms:us-east-1:1:key/abc")
        );
        assert_eq!(s.previous, ["file:/etc/old.kek", "env:OLD_KEK"]);
        assert_eq!(s.kms_region, "ap-northeast-2");
        assert_eq!(s.kms_access_key_id.as_deref(), Some("id"));
        assert_eq!(s.kms_secret_access_key.as_deref(), Some("secret"));
        assert_eq!(s.cache_ttl_secs, 5);
        let shown = format!("{s:?}");
        assert!(!shown.contains("secret"), "{shown}");
    }

    #[test]
    fn a_pasted_key_is_refused_without_echoing_it() {
        let mut s = KeySettings::default();
        let err = s
            .apply_env(&env(&[("NEULBI_KEK", "c2VjcmV0LWtleS1tYXRlcmlhbA==")]))
            .expect_err("not a spec");
        assert!(!err.contains("c2VjcmV0"), "{err}");
        assert!(err.contains("file:PATH"), "{err}");
    }

    #[test]
    fn the_default_file_sits_beside_sqlite_or_in_the_data_dir() {
        let dir = Path::new("/srv/neulbi");
        assert_eq!(
            KeySettings::default_kek_file("sqlite:///var/db/neulbi.db?mode=rwc", dir),
            Path::new("/var/db/neulbi.kek")
        );
        assert_eq!(
            KeySettings::default_kek_file("sqlite://data/neulbi.db", dir),
            Path::new("data/neulbi.kek")
        );
        assert_eq!(
            KeySettings::default_kek_file("postgres://u@h/db", dir),
            Path::new("/srv/neulbi/neulbi.kek")
        );
    }
}
