//! Access-token signing keys: one signs, several verify, so keys can rotate without logging
//! anyone out. Ed25519 (JWS `EdDSA`): small keys, fast verification, and key generation is
//! 32 random bytes — no parameter choices to get wrong.
//!
//! Keys come from the environment (`NEULBI_AUTH_SIGNING_KEY`, plus `NEULBI_AUTH_VERIFY_KEYS`
//! for the previous ones) or, in the embedded default, are generated on first run and kept in
//! the `auth_signing_keys` table. Each key's `kid` is derived from its public key, so every
//! node computes the same one.

use super::AuthError;
use crate::privacy::{KekRing, WrapContext};
use crate::store::Database;
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use chacha20poly1305::aead::OsRng;
use chacha20poly1305::aead::rand_core::RngCore;
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use jsonwebtoken::{DecodingKey, EncodingKey};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use zeroize::Zeroizing;

/// The DER prefix of an Ed25519 SubjectPublicKeyInfo; the 32 key bytes follow.
const SPKI_ED25519_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// How often a node re-reads the signing keys kept in the database, so a rotation made
/// elsewhere (`neulbi keys rotate-signing`, another node) reaches the key it signs with.
pub const SIGNING_REFRESH_SECS: u64 = 60;

/// How long a retired signing key keeps verifying: one token lifetime, plus the time a node
/// may still sign with it before it re-reads the keys.
pub fn grace_secs(access_token_ttl_secs: u64) -> i64 {
    i64::try_from(access_token_ttl_secs.saturating_add(SIGNING_REFRESH_SECS)).unwrap_or(i64::MAX)
}

/// A stored signing key: generation, plaintext DER of older versions, wrapped DER, KEK id.
type SigningRow = (i64, Vec<u8>, Option<Vec<u8>>, Option<String>);

/// A key that signs new access tokens. Deliberately not `Debug`: it holds private bytes.
pub struct SigningKey {
    kid: String,
    encoding: EncodingKey,
}

/// A public key that verifies access tokens.
#[derive(Clone)]
pub struct VerifyingKey {
    /// The key id in token headers and the JWKS.
    pub kid: String,
    decoding: DecodingKey,
    public: [u8; 32],
}

/// The signing key plus every key that still verifies.
pub struct KeyRing {
    signing: SigningKey,
    verifying: HashMap<String, VerifyingKey>,
}

/// The `kid` of a public key: the first 16 characters of its base64url SHA-256.
pub fn kid_of(public: &[u8; 32]) -> String {
    let digest = Sha256::digest(public);
    URL_SAFE_NO_PAD.encode(digest)[..16].to_owned()
}

fn verifying(public: [u8; 32]) -> Result<VerifyingKey, AuthError> {
    let decoding = DecodingKey::from_ed_components(&URL_SAFE_NO_PAD.encode(public))
        .map_err(|e| AuthError::Key(e.to_string()))?;
    Ok(VerifyingKey {
        kid: kid_of(&public),
        decoding,
        public,
    })
}

/// Parses a PKCS#8 DER Ed25519 private key into its signing and verifying halves.
fn from_private_der(der: &[u8]) -> Result<(SigningKey, VerifyingKey), AuthError> {
    let key = ed25519_dalek::SigningKey::from_pkcs8_der(der)
        .map_err(|_| AuthError::Key("not a PKCS#8 Ed25519 private key".into()))?;
    let public = key.verifying_key().to_bytes();
    let v = verifying(public)?;
    Ok((
        SigningKey {
            kid: v.kid.clone(),
            encoding: EncodingKey::from_ed_der(der),
        },
        v,
    ))
}

/// A fresh Ed25519 private key as PKCS#8 DER.
pub fn generate_private_der() -> Result<Vec<u8>, AuthError> {
    let mut seed = [0u8; 32];
    OsRng.fill_bytes(&mut seed);
    let key = ed25519_dalek::SigningKey::from_bytes(&seed);
    let der = key
        .to_pkcs8_der()
        .map_err(|e| AuthError::Key(e.to_string()))?;
    Ok(der.as_bytes().to_vec())
}

/// A fresh Ed25519 private key as a PKCS#8 PEM block (what `NEULBI_AUTH_SIGNING_KEY` holds).
pub fn generate_private_pem() -> Result<String, AuthError> {
    Ok(to_pem("PRIVATE KEY", &generate_private_der()?))
}

fn to_pem(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// The PEM blocks of `text` as (label, DER) pairs.
fn pem_blocks(text: &str) -> Result<Vec<(String, Vec<u8>)>, AuthError> {
    let mut blocks = Vec::new();
    let mut current: Option<(String, String)> = None;
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if let Some(label) = line
            .strip_prefix("-----BEGIN ")
            .and_then(|l| l.strip_suffix("-----"))
        {
            current = Some((label.to_owned(), String::new()));
        } else if line.starts_with("-----END ") {
            let (label, body) = current
                .take()
                .ok_or_else(|| AuthError::Key("PEM END without BEGIN".into()))?;
            let der = STANDARD
                .decode(body.as_bytes())
                .map_err(|_| AuthError::Key("PEM body is not base64".into()))?;
            blocks.push((label, der));
        } else if let Some((_, body)) = current.as_mut() {
            body.push_str(line);
        }
    }
    if blocks.is_empty() {
        return Err(AuthError::Key("no PEM block found".into()));
    }
    Ok(blocks)
}

/// A verifying key from a PEM block: a private key (its public half) or an SPKI public key.
fn verifying_from_block(label: &str, der: &[u8]) -> Result<VerifyingKey, AuthError> {
    match label {
        "PRIVATE KEY" => Ok(from_private_der(der)?.1),
        "PUBLIC KEY" => {
            let raw = der
                .strip_prefix(&SPKI_ED25519_PREFIX[..])
                .and_then(|k| <[u8; 32]>::try_from(k).ok())
                .ok_or_else(|| AuthError::Key("not an Ed25519 public key".into()))?;
            verifying(raw)
        }
        other => Err(AuthError::Key(format!("unexpected PEM block {other:?}"))),
    }
}

impl KeyRing {
    /// A ring from configured PEM text: the signing key, and optionally older keys that still
    /// verify (private or public PEM blocks).
    pub fn from_pem(signing_pem: &str, verify_pem: Option<&str>) -> Result<Self, AuthError> {
        let blocks = pem_blocks(signing_pem)?;
        let (label, der) = &blocks[0];
        if label != "PRIVATE KEY" {
            return Err(AuthError::Key(
                "NEULBI_AUTH_SIGNING_KEY must be a PKCS#8 `PRIVATE KEY` PEM block".into(),
            ));
        }
        let (signing, v) = from_private_der(der)?;
        let mut verifying = HashMap::from([(v.kid.clone(), v)]);
        if let Some(text) = verify_pem {
            for (label, der) in pem_blocks(text)? {
                let v = verifying_from_block(&label, &der)?;
                verifying.insert(v.kid.clone(), v);
            }
        }
        Ok(Self { signing, verifying })
    }

    /// The ring kept in the database, generating the first key if there is none. Keys retired
    /// more than `grace_secs` ago no longer verify.
    pub async fn load_or_create(
        db: &Database,
        kek: &KekRing,
        grace_secs: i64,
    ) -> Result<Self, AuthError> {
        if let Some(ring) = Self::load(db, kek, grace_secs).await? {
            return Ok(ring);
        }
        // Two nodes starting at once both try generation 1; the primary key lets one win and
        // both then load the winner.
        insert_generation(db, kek, 1).await?;
        Self::load(db, kek, grace_secs)
            .await?
            .ok_or_else(|| AuthError::Key("no signing key after creating one".into()))
    }

    /// Adds a new signing key in the database and retires the previous ones (they keep
    /// verifying for `grace_secs`, the access-token lifetime). Returns the new ring.
    pub async fn rotate(db: &Database, kek: &KekRing, grace_secs: i64) -> Result<Self, AuthError> {
        let max: Option<i64> = on_db!(db, p => sqlx::query_scalar(
            "SELECT MAX(generation) FROM auth_signing_keys").fetch_one(p).await?);
        let next = max.unwrap_or(0) + 1;
        insert_generation(db, kek, next).await?;
        let now = chrono::Utc::now().timestamp_micros();
        on_db!(db, p => sqlx::query(
            "UPDATE auth_signing_keys SET retired_at = $1 WHERE generation < $2 AND retired_at IS NULL")
            .bind(now).bind(next).execute(p).await?.rows_affected());
        Self::load(db, kek, grace_secs)
            .await?
            .ok_or_else(|| AuthError::Key("no signing key after rotation".into()))
    }

    /// The ring as the database holds it now, or `None` before the first key exists (the
    /// rotation command reads it to name the key it rotates away from).
    pub async fn current(
        db: &Database,
        kek: &KekRing,
        grace_secs: i64,
    ) -> Result<Option<Self>, AuthError> {
        Self::load(db, kek, grace_secs).await
    }

    async fn load(
        db: &Database,
        kek: &KekRing,
        grace_secs: i64,
    ) -> Result<Option<Self>, AuthError> {
        let cutoff = chrono::Utc::now().timestamp_micros() - grace_secs.saturating_mul(1_000_000);
        let rows: Vec<SigningRow> = on_db!(db, p => sqlx::query_as(
            "SELECT generation, private_der, wrapped, kek_id FROM auth_signing_keys \
             WHERE retired_at IS NULL OR retired_at > $1 ORDER BY generation DESC")
            .bind(cutoff).fetch_all(p).await?);
        let mut signing = None;
        let mut verifying = HashMap::new();
        for (generation, legacy, wrapped, kek_id) in rows {
            let der = match (wrapped, kek_id) {
                (Some(wrapped), Some(kek_id)) => kek
                    .unwrap(&kek_id, &WrapContext::Signing { generation }, &wrapped)
                    .await
                    .map_err(|e| AuthError::Key(e.to_string()))?,
                // Written before envelope encryption and not migrated yet.
                _ => Zeroizing::new(legacy),
            };
            let (s, v) = from_private_der(&der)?;
            verifying.insert(v.kid.clone(), v);
            if signing.is_none() {
                signing = Some(s);
            }
        }
        Ok(signing.map(|signing| Self { signing, verifying }))
    }

    /// The key id that new tokens carry.
    pub fn signing_kid(&self) -> &str {
        &self.signing.kid
    }

    /// The key that signs.
    pub fn encoding_key(&self) -> &EncodingKey {
        &self.signing.encoding
    }

    /// The verifying key for `kid`, if it is in the ring.
    pub fn decoding_key(&self, kid: &str) -> Option<&DecodingKey> {
        self.verifying.get(kid).map(|v| &v.decoding)
    }

    /// The public keys as a JWK Set, for `/.well-known/jwks.json`.
    pub fn jwks(&self) -> Value {
        let mut keys: Vec<&VerifyingKey> = self.verifying.values().collect();
        keys.sort_by(|a, b| a.kid.cmp(&b.kid));
        let keys: Vec<Value> = keys
            .into_iter()
            .map(|k| {
                json!({
                    "kty": "OKP",
                    "crv": "Ed25519",
                    "use": "sig",
                    "alg": "EdDSA",
                    "kid": k.kid,
                    "x": URL_SAFE_NO_PAD.encode(k.public),
                })
            })
            .collect();
        json!({ "keys": keys })
    }
}

async fn insert_generation(db: &Database, kek: &KekRing, generation: i64) -> Result<(), AuthError> {
    let der = Zeroizing::new(generate_private_der()?);
    let public = ed25519_dalek::SigningKey::from_pkcs8_der(&der)
        .map_err(|e| AuthError::Key(e.to_string()))?
        .verifying_key()
        .to_bytes();
    let now = chrono::Utc::now().timestamp_micros();
    // Only the wrapped key is stored; `private_der` stays empty (older versions kept it there).
    let (kek_id, wrapped) = kek
        .wrap(&WrapContext::Signing { generation }, &der)
        .await
        .map_err(|e| AuthError::Key(e.to_string()))?;
    on_db!(db, p => sqlx::query(
        "INSERT INTO auth_signing_keys (generation, kid, private_der, wrapped, kek_id, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING")
        .bind(generation).bind(kid_of(&public)).bind(Vec::<u8>::new()).bind(wrapped).bind(kek_id)
        .bind(now).execute(p).await?.rows_affected());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_round_trip_and_public_blocks() {
        let pem = generate_private_pem().expect("pem");
        let ring = KeyRing::from_pem(&pem, None).expect("ring");
        let blocks = pem_blocks(&pem).expect("blocks");
        let (_, v) = from_private_der(&blocks[0].1).expect("der");
        assert_eq!(ring.signing_kid(), v.kid);
        let mut spki = SPKI_ED25519_PREFIX.to_vec();
        spki.extend_from_slice(&v.public);
        let public_pem = to_pem("PUBLIC KEY", &spki);
        let other = generate_private_pem().expect("pem");
        let ring2 = KeyRing::from_pem(&other, Some(&public_pem)).expect("ring");
        assert!(
            ring2.decoding_key(&v.kid).is_some(),
            "old key still verifies"
        );
        assert_ne!(ring2.signing_kid(), v.kid);
        assert_eq!(ring2.jwks()["keys"].as_array().map(Vec::len), Some(2));
    }

    #[test]
    fn bad_pem_is_a_clear_error() {
        assert!(KeyRing::from_pem("not a key", None).is_err());
        let public_only = to_pem("PUBLIC KEY", &[0u8; 44]);
        assert!(KeyRing::from_pem(&public_only, None).is_err());
    }
}
