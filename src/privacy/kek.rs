//! Key-encryption keys (KEKs): envelope encryption of every secret the database holds.
//!
//! Data keys, JWT signing keys and server secrets are stored wrapped (sealed) by a KEK that
//! never sits in the database: a local 32-byte key from a file or an environment variable, or
//! an AWS KMS key. Each wrapped value is bound to what it belongs to (the owner and key id of
//! a data key, the generation of a signing key, the name of a secret), so a row copied onto
//! another row does not open. A ring holds the current KEK, which wraps everything new, and
//! previous ones that still unwrap older rows until `neulbi keys rotate-kek` rewraps them.

use super::settings::{KeySettings, redact_spec};
use aws_sdk_kms::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::types::DataKeySpec;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;
use thiserror::Error;
use uuid::Uuid;
use zeroize::Zeroizing;

/// Length of every key a KEK wraps or generates.
pub const KEY_LEN: usize = 32;
const NONCE_LEN: usize = 24;

/// Why a key could not be wrapped or unwrapped.
#[derive(Debug, Error)]
pub enum KekError {
    /// The `[keys]` settings name a KEK that cannot be loaded.
    #[error("key-encryption key: {0}")]
    Config(String),
    /// A row was wrapped by a KEK this node does not hold.
    #[error(
        "a key is wrapped by KEK {0}, which is not configured here (set it as NEULBI_KEK or in NEULBI_KEK_PREVIOUS)"
    )]
    Unknown(String),
    /// The KEK is right by name but the wrapped bytes do not open: tampered, or bound to
    /// another row.
    #[error("a key wrapped by KEK {0} does not open: the row was altered or copied")]
    Corrupt(String),
    /// KMS refused or could not be reached.
    #[error("KMS: {0}")]
    Kms(String),
}

/// What a wrapped value belongs to; it is authenticated with the value (AEAD associated data,
/// KMS encryption context).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WrapContext {
    /// A user's data key.
    DataKey {
        /// The owner of the personal data.
        owner: Uuid,
        /// The key's id, recorded beside every field it seals.
        key_id: Uuid,
    },
    /// A JWT signing key of one generation.
    Signing {
        /// The generation (table primary key).
        generation: i64,
    },
    /// A named server secret (e.g. the identity-lookup HMAC key).
    Secret {
        /// The secret's name.
        name: String,
    },
}

impl WrapContext {
    fn pairs(&self) -> Vec<(&'static str, String)> {
        match self {
            Self::DataKey { owner, key_id } => vec![
                ("neulbi:purpose", "data-key".into()),
                ("neulbi:owner", owner.to_string()),
                ("neulbi:key-id", key_id.to_string()),
            ],
            Self::Signing { generation } => vec![
                ("neulbi:purpose", "signing-key".into()),
                ("neulbi:generation", generation.to_string()),
            ],
            Self::Secret { name } => vec![
                ("neulbi:purpose", "secret".into()),
                ("neulbi:name", name.clone()),
            ],
        }
    }

    fn aad(&self) -> Vec<u8> {
        let mut out = b"neulbi-wrap-v1".to_vec();
        for (k, v) in self.pairs() {
            out.push(0);
            out.extend_from_slice(k.as_bytes());
            out.push(b'=');
            out.extend_from_slice(v.as_bytes());
        }
        out
    }

    fn kms_context(&self) -> HashMap<String, String> {
        self.pairs()
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect()
    }
}

/// One key-encryption key.
enum Kek {
    Local {
        id: String,
        cipher: XChaCha20Poly1305,
    },
    Kms {
        id: String,
        key_id: String,
        client: aws_sdk_kms::Client,
    },
}

impl Kek {
    fn id(&self) -> &str {
        match self {
            Self::Local { id, .. } | Self::Kms { id, .. } => id,
        }
    }

    fn local(key: &[u8; KEY_LEN]) -> Self {
        let digest = Sha256::new()
            .chain_update(b"neulbi-kek-id\0")
            .chain_update(key)
            .finalize();
        let id = format!("local:{}", hex(&digest[..6]));
        Self::Local {
            id,
            cipher: XChaCha20Poly1305::new(key.into()),
        }
    }

    async fn wrap(&self, ctx: &WrapContext, plain: &[u8]) -> Result<Vec<u8>, KekError> {
        match self {
            Self::Local { id, cipher } => {
                let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
                let aad = ctx.aad();
                let sealed = cipher
                    .encrypt(
                        &nonce,
                        Payload {
                            msg: plain,
                            aad: &aad,
                        },
                    )
                    .map_err(|_| KekError::Corrupt(id.clone()))?;
                let mut out = Vec::with_capacity(NONCE_LEN + sealed.len());
                out.extend_from_slice(&nonce);
                out.extend_from_slice(&sealed);
                Ok(out)
            }
            Self::Kms { key_id, client, .. } => {
                let out = client
                    .encrypt()
                    .key_id(key_id)
                    .plaintext(Blob::new(plain.to_vec()))
                    .set_encryption_context(Some(ctx.kms_context()))
                    .send()
                    .await
                    .map_err(|e| KekError::Kms(describe(&e)))?;
                out.ciphertext_blob
                    .map(Blob::into_inner)
                    .ok_or_else(|| KekError::Kms("Encrypt returned no ciphertext".into()))
            }
        }
    }

    async fn unwrap(
        &self,
        ctx: &WrapContext,
        wrapped: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, KekError> {
        match self {
            Self::Local { id, cipher } => {
                if wrapped.len() < NONCE_LEN {
                    return Err(KekError::Corrupt(id.clone()));
                }
                let (nonce, sealed) = wrapped.split_at(NONCE_LEN);
                let nonce: [u8; NONCE_LEN] = nonce
                    .try_into()
                    .map_err(|_| KekError::Corrupt(id.clone()))?;
                let aad = ctx.aad();
                cipher
                    .decrypt(
                        &XNonce::from(nonce),
                        Payload {
                            msg: sealed,
                            aad: &aad,
                        },
                    )
                    .map(Zeroizing::new)
                    .map_err(|_| KekError::Corrupt(id.clone()))
            }
            Self::Kms {
                id, key_id, client, ..
            } => {
                let out = client
                    .decrypt()
                    .key_id(key_id)
                    .ciphertext_blob(Blob::new(wrapped.to_vec()))
                    .set_encryption_context(Some(ctx.kms_context()))
                    .send()
                    .await
                    .map_err(|e| match e.as_service_error() {
                        Some(s) if s.is_invalid_ciphertext_exception() => {
                            KekError::Corrupt(id.clone())
                        }
                        _ => KekError::Kms(describe(&e)),
                    })?;
                out.plaintext
                    .map(|b| Zeroizing::new(b.into_inner()))
                    .ok_or_else(|| KekError::Kms("Decrypt returned no plaintext".into()))
            }
        }
    }

    /// A fresh 32-byte key and its wrapped form (KMS: `GenerateDataKey`).
    async fn generate(&self, ctx: &WrapContext) -> Result<(Zeroizing<Vec<u8>>, Vec<u8>), KekError> {
        match self {
            Self::Local { .. } => {
                let key = Zeroizing::new(XChaCha20Poly1305::generate_key(&mut OsRng).to_vec());
                let wrapped = self.wrap(ctx, &key).await?;
                Ok((key, wrapped))
            }
            Self::Kms { key_id, client, .. } => {
                let out = client
                    .generate_data_key()
                    .key_id(key_id)
                    .key_spec(DataKeySpec::Aes256)
                    .set_encryption_context(Some(ctx.kms_context()))
                    .send()
                    .await
                    .map_err(|e| KekError::Kms(describe(&e)))?;
                match (out.plaintext, out.ciphertext_blob) {
                    (Some(plain), Some(blob)) if plain.as_ref().len() == KEY_LEN => {
                        Ok((Zeroizing::new(plain.into_inner()), blob.into_inner()))
                    }
                    _ => Err(KekError::Kms(
                        "GenerateDataKey returned no 32-byte key".into(),
                    )),
                }
            }
        }
    }
}

/// An SDK error with its service message (the `Display` of `SdkError` alone says little).
fn describe<E: std::error::Error + 'static>(e: &E) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The KEKs of a node: the current one and those that wrapped older rows.
pub struct KekRing {
    current: Kek,
    previous: Vec<Kek>,
    /// The default key file, when this run created it (so start-up can undo that if the
    /// database turns out to need another key).
    created: Option<PathBuf>,
}

impl KekRing {
    /// The ring the settings name. With no KEK configured, the key lives in `default_file`,
    /// which is created (mode 0600) on the first run.
    pub async fn open(settings: &KeySettings, default_file: &Path) -> Result<Self, KekError> {
        let mut created = None;
        let current = match &settings.kek {
            Some(spec) => load(spec, settings).await?,
            None => {
                if !default_file.exists() {
                    create_key_file(default_file)?;
                    created = Some(default_file.to_owned());
                }
                Kek::local(&read_key_file(default_file)?)
            }
        };
        let mut previous = Vec::new();
        for spec in &settings.previous {
            let kek = load(spec, settings).await?;
            if kek.id() != current.id() {
                previous.push(kek);
            }
        }
        Ok(Self {
            current,
            previous,
            created,
        })
    }

    /// A ring of one local KEK (tests and tools).
    pub fn local(key: &[u8; KEY_LEN]) -> Self {
        Self {
            current: Kek::local(key),
            previous: Vec::new(),
            created: None,
        }
    }

    /// The id of the KEK that wraps new keys (`local:…` or `kms:…`), stored beside each row.
    pub fn current_id(&self) -> &str {
        self.current.id()
    }

    /// Every KEK id this ring can unwrap.
    pub fn ids(&self) -> Vec<String> {
        std::iter::once(&self.current)
            .chain(&self.previous)
            .map(|k| k.id().to_owned())
            .collect()
    }

    /// The key file this run created, if any.
    pub fn created_file(&self) -> Option<&Path> {
        self.created.as_deref()
    }

    /// Wraps `plain` under the current KEK; returns the KEK id and the wrapped bytes.
    pub async fn wrap(
        &self,
        ctx: &WrapContext,
        plain: &[u8],
    ) -> Result<(String, Vec<u8>), KekError> {
        let wrapped = self.current.wrap(ctx, plain).await?;
        Ok((self.current.id().to_owned(), wrapped))
    }

    /// Unwraps bytes that `kek_id` wrapped for `ctx`.
    pub async fn unwrap(
        &self,
        kek_id: &str,
        ctx: &WrapContext,
        wrapped: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, KekError> {
        let kek = std::iter::once(&self.current)
            .chain(&self.previous)
            .find(|k| k.id() == kek_id)
            .ok_or_else(|| KekError::Unknown(kek_id.to_owned()))?;
        kek.unwrap(ctx, wrapped).await
    }

    /// A new 32-byte key for `ctx`, with the current KEK's id and the wrapped bytes.
    pub async fn generate(
        &self,
        ctx: &WrapContext,
    ) -> Result<(Zeroizing<Vec<u8>>, String, Vec<u8>), KekError> {
        let (key, wrapped) = self.current.generate(ctx).await?;
        Ok((key, self.current.id().to_owned(), wrapped))
    }
}

async fn load(spec: &str, settings: &KeySettings) -> Result<Kek, KekError> {
    match spec.split_once(':') {
        Some(("file", path)) => Ok(Kek::local(&read_key_file(Path::new(path))?)),
        Some(("env", var)) => {
            let value = std::env::var(var)
                .map_err(|_| KekError::Config(format!("environment variable {var} is not set")))?;
            Ok(Kek::local(&decode_key(&value).map_err(|why| {
                KekError::Config(format!("{var}: {why}"))
            })?))
        }
        Some(("kms", key_id)) if !key_id.is_empty() => Ok(Kek::Kms {
            id: format!("kms:{key_id}"),
            key_id: key_id.to_owned(),
            client: kms_client(settings)?,
        }),
        _ => Err(KekError::Config(format!(
            "{} is not file:PATH, env:VAR or kms:KEY-ID",
            redact_spec(spec)
        ))),
    }
}

fn kms_client(settings: &KeySettings) -> Result<aws_sdk_kms::Client, KekError> {
    let (Some(id), Some(secret)) = (
        settings.kms_access_key_id.clone(),
        settings.kms_secret_access_key.clone(),
    ) else {
        return Err(KekError::Config(
            "a kms: KEK needs credentials: set NEULBI_KMS_ACCESS_KEY_ID and \
             NEULBI_KMS_SECRET_ACCESS_KEY (or AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)"
                .into(),
        ));
    };
    let timeout = Duration::from_secs(settings.kms_timeout_secs.max(1));
    let mut builder = aws_sdk_kms::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(settings.kms_region.clone()))
        .credentials_provider(Credentials::new(
            id,
            secret,
            settings.kms_session_token.clone(),
            None,
            "neulbi",
        ))
        .timeout_config(
            aws_sdk_kms::config::timeout::TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(2).min(timeout))
                .operation_timeout(timeout)
                .build(),
        );
    if let Some(endpoint) = &settings.kms_endpoint {
        builder = builder.endpoint_url(endpoint);
    }
    Ok(aws_sdk_kms::Client::from_conf(builder.build()))
}

/// A 32-byte key from base64 text.
fn decode_key(text: &str) -> Result<[u8; KEY_LEN], String> {
    let bytes = Zeroizing::new(
        STANDARD
            .decode(text.trim())
            .map_err(|_| "not base64".to_owned())?,
    );
    <[u8; KEY_LEN]>::try_from(bytes.as_slice()).map_err(|_| {
        format!(
            "holds {} bytes, expected {KEY_LEN} (make one with `head -c 32 /dev/urandom | base64`)",
            bytes.len()
        )
    })
}

fn read_key_file(path: &Path) -> Result<[u8; KEY_LEN], KekError> {
    let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| {
        KekError::Config(format!("cannot read the KEK file {}: {e}", path.display()))
    })?);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(path)
            && meta.permissions().mode() & 0o077 != 0
        {
            tracing::warn!(
                file = %path.display(),
                "the KEK file is readable by group or others; chmod 600 it"
            );
        }
    }
    decode_key(&text).map_err(|why| KekError::Config(format!("{}: {why}", path.display())))
}

/// Writes a new random key to `path`, readable by the owner only; never overwrites.
fn create_key_file(path: &Path) -> Result<(), KekError> {
    use std::io::Write;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| KekError::Config(format!("cannot create {}: {e}", dir.display())))?;
    }
    let key = Zeroizing::new(XChaCha20Poly1305::generate_key(&mut OsRng).to_vec());
    let text = Zeroizing::new(format!("{}\n", STANDARD.encode(&*key)));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    match options.open(path) {
        Ok(mut file) => {
            file.write_all(text.as_bytes())
                .and_then(|()| file.sync_all())
                .map_err(|e| KekError::Config(format!("cannot write {}: {e}", path.display())))?;
            tracing::info!(
                file = %path.display(),
                "created the key-encryption key; back it up apart from the database: \
                 without it no personal data can be read"
            );
            Ok(())
        }
        // Another process (a second node or a test) created it first: use theirs.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(KekError::Config(format!(
            "cannot create {}: {e}",
            path.display()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner_ctx(owner: Uuid) -> WrapContext {
        WrapContext::DataKey {
            owner,
            key_id: Uuid::nil(),
        }
    }

    #[tokio::test]
    async fn a_wrapped_key_opens_only_for_its_own_row_and_kek() {
        let ring = KekRing::local(&[7; KEY_LEN]);
        let owner = Uuid::now_v7();
        let (key, id, wrapped) = ring.generate(&owner_ctx(owner)).await.expect("generate");
        assert_eq!(id, ring.current_id());
        assert!(id.starts_with("local:"));
        assert_eq!(key.len(), KEY_LEN);
        assert!(!wrapped.windows(KEY_LEN).any(|w| w == key.as_slice()));
        let opened = ring
            .unwrap(&id, &owner_ctx(owner), &wrapped)
            .await
            .expect("opens");
        assert_eq!(opened.as_slice(), key.as_slice());
        // Copied onto another user's row: refused.
        let other = ring.unwrap(&id, &owner_ctx(Uuid::now_v7()), &wrapped).await;
        assert!(matches!(other, Err(KekError::Corrupt(_))), "{other:?}");
        // Another KEK by name: refused as unknown, never tried.
        let foreign = KekRing::local(&[8; KEY_LEN]);
        let err = foreign
            .unwrap(&id, &owner_ctx(owner), &wrapped)
            .await
            .expect_err("unknown kek");
        assert!(matches!(err, KekError::Unknown(ref k) if k == &id), "{err}");
        // A flipped bit: refused.
        let mut bad = wrapped.clone();
        bad[30] ^= 1;
        assert!(ring.unwrap(&id, &owner_ctx(owner), &bad).await.is_err());
        assert!(
            ring.unwrap(&id, &owner_ctx(owner), &bad[..5])
                .await
                .is_err()
        );
    }

    #[tokio::test]
    async fn a_previous_kek_unwraps_and_the_current_one_wraps() {
        let dir = tempfile::tempdir().expect("tmp");
        let old = dir.path().join("old.kek");
        std::fs::write(&old, format!("{}\n", STANDARD.encode([1u8; KEY_LEN]))).expect("write");
        let new = dir.path().join("new.kek");
        std::fs::write(&new, STANDARD.encode([2u8; KEY_LEN])).expect("write");
        let old_ring = KekRing::local(&[1; KEY_LEN]);
        let ctx = WrapContext::Signing { generation: 3 };
        let (old_id, wrapped) = old_ring.wrap(&ctx, b"secret").await.expect("wrap");
        let settings = KeySettings {
            kek: Some(format!("file:{}", new.display())),
            previous: vec![format!("file:{}", old.display())],
            ..KeySettings::default()
        };
        let ring = KekRing::open(&settings, &dir.path().join("unused.kek"))
            .await
            .expect("ring");
        assert_ne!(ring.current_id(), old_id);
        assert_eq!(ring.ids().len(), 2);
        let opened = ring
            .unwrap(&old_id, &ctx, &wrapped)
            .await
            .expect("old opens");
        assert_eq!(opened.as_slice(), b"secret");
        let (new_id, _) = ring.wrap(&ctx, b"secret").await.expect("wrap");
        assert_eq!(new_id, ring.current_id());
        assert!(!dir.path().join("unused.kek").exists());
    }

    #[tokio::test]
    async fn the_default_file_is_created_once_private_and_reused() {
        let dir = tempfile::tempdir().expect("tmp");
        let file = dir.path().join("sub/neulbi.kek");
        let first = KekRing::open(&KeySettings::default(), &file)
            .await
            .expect("ring");
        assert_eq!(first.created_file(), Some(file.as_path()));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&file).expect("meta").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let second = KekRing::open(&KeySettings::default(), &file)
            .await
            .expect("ring");
        assert_eq!(second.created_file(), None);
        assert_eq!(first.current_id(), second.current_id());
    }

    #[tokio::test]
    async fn bad_key_material_is_a_clear_error() {
        let dir = tempfile::tempdir().expect("tmp");
        let short = dir.path().join("short.kek");
        std::fs::write(&short, STANDARD.encode([1u8; 16])).expect("write");
        let settings = KeySettings {
            kek: Some(format!("file:{}", short.display())),
            ..KeySettings::default()
        };
        let err = KekRing::open(&settings, &short)
            .await
            .err()
            .expect("refused");
        assert!(err.to_string().contains("holds 16 bytes"), "{err}");
        let missing = KeySettings {
            kek: Some(format!("file:{}", dir.path().join("nope").display())),
            ..KeySettings::default()
        };
        let err = KekRing::open(&missing, &short)
            .await
            .err()
            .expect("refused");
        assert!(
            err.to_string().contains("cannot read the KEK file"),
            "{err}"
        );
        let kms = KeySettings {
            kek: Some("kms:alias/neulbi".into()),
            ..KeySettings::default()
        };
        let err = KekRing::open(&kms, &short).await.err().expect("refused");
        assert!(
            err.to_string().contains("NEULBI_KMS_ACCESS_KEY_ID"),
            "{err}"
        );
    }
}
