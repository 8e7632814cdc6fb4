//! Seals and opens the personal fields inside an event's JSON.
//!
//! Plain form (what the domain serializes): `{"$personal": {"owner": O, "value": V}}`.
//! Sealed form (what the log stores): `{"$personal": {"owner": O, "kid": K, "sealed": B64}}`
//! where `B64` is the 24-byte nonce followed by the XChaCha20-Poly1305 ciphertext of `V`'s
//! JSON, authenticated together with the owner and key id.
//! Erased form (what readers get once the key is gone): `{"$personal": {"owner": O, "erased": true}}`.

use crate::DataKey;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use chacha20poly1305::aead::{Aead, AeadCore, OsRng, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use neulbi_domain::personal::PERSONAL_KEY;
use serde_json::{Map, Value, json};
use std::collections::{BTreeSet, HashMap};
use thiserror::Error;
use uuid::Uuid;

const NONCE_LEN: usize = 24;

/// Why a personal field could not be sealed or opened.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum CipherError {
    /// A `$personal` object without a valid owner, or with neither value nor sealed data.
    #[error("malformed personal field: {0}")]
    Malformed(&'static str),
    /// The ciphertext does not authenticate under the owner's key (tampered or wrong key).
    #[error("personal field of {0} does not decrypt")]
    Undecryptable(Uuid),
}

/// Which personal fields [`owners`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fields {
    /// Plain fields (`value`), which need the owner's key to be sealed.
    Plain,
    /// Sealed fields, which need the owner's key to be opened.
    Sealed,
}

/// Collects the owners of the personal fields of the given kind in `value`, so keys are
/// looked up only where they are needed.
pub fn owners(value: &Value, which: Fields, out: &mut BTreeSet<Uuid>) -> Result<(), CipherError> {
    visit(value, &mut |field| {
        let owner = owner_of(field)?;
        let wanted = match which {
            Fields::Plain => field.contains_key("value"),
            Fields::Sealed => field.contains_key("sealed"),
        };
        if wanted {
            out.insert(owner);
        }
        Ok(())
    })
}

/// Seals every plain personal field in place. Owners mapped to `None` (erased) get the erased
/// form directly: nothing personal of an erased user is ever written again.
pub fn seal(value: &mut Value, keys: &HashMap<Uuid, Option<DataKey>>) -> Result<(), CipherError> {
    visit_mut(value, &mut |field| {
        let owner = owner_of(field)?;
        let Some(plain) = field.get("value") else {
            // Already sealed or erased (an import or a re-append): keep as is.
            return Ok(());
        };
        *field = match keys.get(&owner).and_then(Option::as_ref) {
            Some(key) => {
                let msg = serde_json::to_vec(plain).map_err(|_| CipherError::Malformed("value"))?;
                let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
                let aad = aad(owner, key.id);
                let ct = key
                    .cipher
                    .encrypt(
                        &nonce,
                        Payload {
                            msg: &msg,
                            aad: &aad,
                        },
                    )
                    .map_err(|_| CipherError::Malformed("encryption failed"))?;
                let mut sealed = nonce.to_vec();
                sealed.extend_from_slice(&ct);
                object(json!({ "owner": owner, "kid": key.id, "sealed": B64.encode(sealed) }))
            }
            None => erased(owner),
        };
        Ok(())
    })
}

/// Opens every sealed personal field in place; fields whose owner's key is gone become the
/// erased form.
pub fn open(value: &mut Value, keys: &HashMap<Uuid, Option<DataKey>>) -> Result<(), CipherError> {
    visit_mut(value, &mut |field| {
        let owner = owner_of(field)?;
        let Some(sealed) = field.get("sealed").and_then(Value::as_str) else {
            return Ok(());
        };
        let Some(key) = keys.get(&owner).and_then(Option::as_ref) else {
            *field = erased(owner);
            return Ok(());
        };
        let kid = field
            .get("kid")
            .and_then(Value::as_str)
            .and_then(|k| Uuid::parse_str(k).ok())
            .ok_or(CipherError::Malformed("kid"))?;
        if kid != key.id {
            // Sealed under a key this owner no longer has: as good as erased.
            *field = erased(owner);
            return Ok(());
        }
        let bytes = B64
            .decode(sealed)
            .map_err(|_| CipherError::Malformed("sealed"))?;
        if bytes.len() < NONCE_LEN {
            return Err(CipherError::Malformed("sealed"));
        }
        let (nonce, ct) = bytes.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce
            .try_into()
            .map_err(|_| CipherError::Malformed("sealed"))?;
        let aad = aad(owner, kid);
        let msg = key
            .cipher
            .decrypt(&XNonce::from(nonce), Payload { msg: ct, aad: &aad })
            .map_err(|_| CipherError::Undecryptable(owner))?;
        let plain: Value =
            serde_json::from_slice(&msg).map_err(|_| CipherError::Undecryptable(owner))?;
        *field = object(json!({ "owner": owner, "value": plain }));
        Ok(())
    })
}

fn aad(owner: Uuid, kid: Uuid) -> [u8; 32] {
    let mut a = [0u8; 32];
    a[..16].copy_from_slice(owner.as_bytes());
    a[16..].copy_from_slice(kid.as_bytes());
    a
}

fn erased(owner: Uuid) -> Map<String, Value> {
    object(json!({ "owner": owner, "erased": true }))
}

fn object(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

pub(super) fn owner_of(field: &Map<String, Value>) -> Result<Uuid, CipherError> {
    field
        .get("owner")
        .and_then(Value::as_str)
        .and_then(|s| Uuid::parse_str(s).ok())
        .ok_or(CipherError::Malformed("owner"))
}

/// Calls `f` with the inner object of every `{"$personal": {...}}` in `value`.
fn visit(
    value: &Value,
    f: &mut impl FnMut(&Map<String, Value>) -> Result<(), CipherError>,
) -> Result<(), CipherError> {
    match value {
        Value::Object(map) => {
            if let Some(inner) = personal_inner(map) {
                return match inner {
                    Value::Object(inner) => f(inner),
                    _ => Err(CipherError::Malformed("not an object")),
                };
            }
            map.values().try_for_each(|v| visit(v, f))
        }
        Value::Array(items) => items.iter().try_for_each(|v| visit(v, f)),
        _ => Ok(()),
    }
}

/// Calls `f` with the inner object of every `{"$personal": {...}}` in `value`, mutably.
pub(super) fn visit_mut(
    value: &mut Value,
    f: &mut impl FnMut(&mut Map<String, Value>) -> Result<(), CipherError>,
) -> Result<(), CipherError> {
    match value {
        Value::Object(map) => {
            if map.len() == 1 && map.contains_key(PERSONAL_KEY) {
                return match map.get_mut(PERSONAL_KEY) {
                    Some(Value::Object(inner)) => f(inner),
                    _ => Err(CipherError::Malformed("not an object")),
                };
            }
            map.values_mut().try_for_each(|v| visit_mut(v, f))
        }
        Value::Array(items) => items.iter_mut().try_for_each(|v| visit_mut(v, f)),
        _ => Ok(()),
    }
}

fn personal_inner(map: &Map<String, Value>) -> Option<&Value> {
    (map.len() == 1).then(|| map.get(PERSONAL_KEY)).flatten()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chacha20poly1305::aead::KeyInit;

    fn key() -> DataKey {
        DataKey {
            id: Uuid::now_v7(),
            cipher: XChaCha20Poly1305::new(&XChaCha20Poly1305::generate_key(&mut OsRng)),
        }
    }

    #[test]
    fn seals_opens_and_erases_per_owner() {
        let (alice, bob) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let original = json!({
            "body": { "$personal": { "owner": alice, "value": "안녕하세요 alice@example.com" } },
            "list": [ { "$personal": { "owner": bob, "value": { "nested": 1 } } } ],
            "count": 3
        });
        let mut keys = HashMap::from([(alice, Some(key())), (bob, Some(key()))]);
        let mut v = original.clone();
        seal(&mut v, &keys).expect("seal");
        let text = v.to_string();
        assert!(
            !text.contains("alice@example.com") && !text.contains("nested"),
            "{text}"
        );
        assert_eq!(v["count"], 3);
        let mut found = BTreeSet::new();
        owners(&v, Fields::Sealed, &mut found).expect("owners");
        assert_eq!(found, BTreeSet::from([alice, bob]));
        let mut plain = BTreeSet::new();
        owners(&v, Fields::Plain, &mut plain).expect("owners");
        assert!(plain.is_empty(), "nothing left to seal");

        let mut opened = v.clone();
        open(&mut opened, &keys).expect("open");
        assert_eq!(opened, original);

        keys.insert(alice, None);
        let mut shredded = v.clone();
        open(&mut shredded, &keys).expect("open after erasure");
        assert_eq!(
            shredded["body"],
            json!({ "$personal": { "owner": alice, "erased": true } })
        );
        assert_eq!(
            shredded["list"], original["list"],
            "bob's data is untouched"
        );
    }

    #[test]
    fn tampering_and_malformed_fields_are_errors() {
        let alice = Uuid::from_u128(1);
        let keys = HashMap::from([(alice, Some(key()))]);
        let mut v = json!({ "$personal": { "owner": alice, "value": "secret" } });
        seal(&mut v, &keys).expect("seal");
        let sealed = v["$personal"]["sealed"]
            .as_str()
            .expect("sealed")
            .to_owned();
        let mut bytes = B64.decode(&sealed).expect("b64");
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        v["$personal"]["sealed"] = Value::String(B64.encode(bytes));
        assert_eq!(open(&mut v, &keys), Err(CipherError::Undecryptable(alice)));

        let mut bad = json!({ "$personal": { "owner": "nobody", "value": 1 } });
        assert_eq!(seal(&mut bad, &keys), Err(CipherError::Malformed("owner")));
        let mut bad = json!({ "$personal": "flat" });
        assert_eq!(
            seal(&mut bad, &keys),
            Err(CipherError::Malformed("not an object"))
        );
    }

    #[test]
    fn writing_for_an_erased_owner_stores_nothing_personal() {
        let alice = Uuid::from_u128(1);
        let keys = HashMap::from([(alice, None)]);
        let mut v = json!({ "x": { "$personal": { "owner": alice, "value": "late message" } } });
        seal(&mut v, &keys).expect("seal");
        assert_eq!(
            v["x"],
            json!({ "$personal": { "owner": alice, "erased": true } })
        );
    }
}
