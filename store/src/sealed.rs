//! Personal values in read models, kept sealed under their owner's data key.
//!
//! A read model stores a personal value as its *token*: the log's sealed form of the field,
//! `{"owner", "kid", "sealed"}` as JSON text ([`super::cipher`]). Projectors copy tokens
//! from the log without opening them ([`for_projection`]); queries open them with one key
//! lookup per owner per page ([`PageKeys`]). Destroying a person's key therefore makes every
//! copy unreadable at once — the log, every read model, their dead row versions, the WAL,
//! replicas and backups — and no plaintext personal data is ever written to a read model.

use super::cipher::{self, CipherError, Fields};
use crate::data_key::{KeyUse, keys_of};
use crate::{DataKey, DataKeys, StoreError};
use neulbi_domain::personal::PERSONAL_KEY;
use serde_json::{Map, Value, json};
use std::collections::{BTreeSet, HashMap};
use uuid::Uuid;

/// What [`for_projection`] did to an event's personal fields.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Converted {
    /// Sealed fields turned into tokens.
    pub sealed: usize,
    /// Fields the log holds in the clear (events of versions before sealing), withheld from
    /// the read models as if erased, because no read model may hold plaintext.
    pub withheld: usize,
}

/// Prepares an event's data, as the log stores it, for the projectors: each sealed personal
/// field becomes a readable `{"$personal": {"owner", "value": TOKEN}}` whose value is the
/// field's token, so the domain types decode and a projector that copies the value copies
/// the token; erased fields stay erased; plain fields are withheld (made erased).
pub fn for_projection(data: &mut Value) -> Result<Converted, CipherError> {
    let mut done = Converted::default();
    cipher::visit_mut(data, &mut |field| {
        let owner = cipher::owner_of(field)?;
        if field.contains_key("sealed") {
            let token =
                serde_json::to_string(&*field).map_err(|_| CipherError::Malformed("sealed"))?;
            *field = object(json!({ "owner": owner, "value": token }));
            done.sealed += 1;
        } else if field.contains_key("value") {
            *field = object(json!({ "owner": owner, "erased": true }));
            done.withheld += 1;
        }
        Ok(())
    })?;
    Ok(done)
}

fn object(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

/// A token as the `$personal` value the cipher opens, or `None` if it is not a token (a
/// value written before read models were sealed, or garbage).
fn personal_of(token: &str) -> Option<Value> {
    let inner: Map<String, Value> = serde_json::from_str(token).ok()?;
    (inner.contains_key("sealed") && inner.contains_key("kid"))
        .then(|| json!({ PERSONAL_KEY: Value::Object(inner) }))
}

/// The data keys needed to open one page of tokens: each owner's key looked up once.
pub struct PageKeys {
    keys: HashMap<Uuid, Option<DataKey>>,
}

impl PageKeys {
    /// Looks up the key of every owner named by `tokens` (through the key cache). Without a
    /// key store every token opens as erased.
    pub async fn load<'a>(
        store: Option<&dyn DataKeys>,
        tokens: impl IntoIterator<Item = &'a str>,
    ) -> Result<Self, StoreError> {
        let mut owners = BTreeSet::new();
        for token in tokens {
            if let Some(v) = personal_of(token) {
                // A malformed owner is reported when the token is opened.
                let _ = cipher::owners(&v, Fields::Sealed, &mut owners);
            }
        }
        let keys = match store {
            Some(store) => keys_of(store, owners, KeyUse::Open).await?,
            None => HashMap::new(),
        };
        Ok(Self { keys })
    }

    /// Opens a stored token: `None` for no value, an erased owner (key destroyed), or a
    /// value that is not a token; an error if the ciphertext does not authenticate.
    pub fn open(&self, token: Option<&str>) -> Result<Option<String>, CipherError> {
        let Some(mut v) = token.and_then(personal_of) else {
            return Ok(None);
        };
        cipher::open(&mut v, &self.keys)?;
        Ok(v[PERSONAL_KEY]["value"].as_str().map(str::to_owned))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chacha20poly1305::XChaCha20Poly1305;
    use chacha20poly1305::aead::{KeyInit, OsRng};
    use neulbi_domain::Personal;

    fn key() -> DataKey {
        DataKey {
            id: Uuid::now_v7(),
            cipher: XChaCha20Poly1305::new(&XChaCha20Poly1305::generate_key(&mut OsRng)),
        }
    }

    fn personal(owner: Uuid, value: &str) -> Value {
        json!({ "$personal": { "owner": owner, "value": value } })
    }

    /// An event's data as the log stores it, with a token for the projectors.
    fn sealed_event(keys: &HashMap<Uuid, Option<DataKey>>, owner: Uuid) -> (Value, String) {
        let mut data = json!({ "author": owner, "body": personal(owner, "안녕 secret text") });
        cipher::seal(&mut data, keys).expect("seal");
        let done = for_projection(&mut data).expect("convert");
        assert_eq!(
            done,
            Converted {
                sealed: 1,
                withheld: 0
            }
        );
        let body: Personal<String> =
            serde_json::from_value(data["body"].clone()).expect("decodes as a domain field");
        let token = body.value().expect("a token").clone();
        (data, token)
    }

    #[test]
    fn tokens_carry_no_plaintext_and_open_with_the_owners_key() {
        let (alice, bob) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let keys = HashMap::from([(alice, Some(key())), (bob, Some(key()))]);
        let (data, token) = sealed_event(&keys, alice);
        assert!(!data.to_string().contains("secret"), "{data}");
        assert!(!token.contains("secret"), "{token}");
        let page = PageKeys { keys };
        assert_eq!(
            page.open(Some(&token)).expect("open"),
            Some("안녕 secret text".to_owned())
        );
        assert_eq!(page.open(None).expect("none"), None);
    }

    #[test]
    fn an_erased_owner_or_a_missing_key_store_reads_as_absent() {
        let alice = Uuid::from_u128(1);
        let keys = HashMap::from([(alice, Some(key()))]);
        let (_, token) = sealed_event(&keys, alice);
        let erased = PageKeys {
            keys: HashMap::from([(alice, None)]),
        };
        assert_eq!(erased.open(Some(&token)).expect("open"), None);
        let keyless = PageKeys {
            keys: HashMap::new(),
        };
        assert_eq!(keyless.open(Some(&token)).expect("open"), None);
    }

    #[test]
    fn plaintext_is_withheld_and_erased_fields_stay_erased() {
        let alice = Uuid::from_u128(1);
        let mut data = json!({
            "old": personal(alice, "written in the clear"),
            "gone": { "$personal": { "owner": alice, "erased": true } },
        });
        let done = for_projection(&mut data).expect("convert");
        assert_eq!(
            done,
            Converted {
                sealed: 0,
                withheld: 1
            }
        );
        assert!(!data.to_string().contains("clear"), "{data}");
        for field in ["old", "gone"] {
            let p: Personal<String> = serde_json::from_value(data[field].clone()).expect("decode");
            assert!(p.is_erased(), "{field}");
        }
    }

    #[test]
    fn non_tokens_read_as_absent_and_tampering_is_an_error() {
        let alice = Uuid::from_u128(1);
        let keys = HashMap::from([(alice, Some(key()))]);
        let (_, token) = sealed_event(&keys, alice);
        let page = PageKeys { keys };
        assert_eq!(
            page.open(Some("plain nickname")).expect("not a token"),
            None
        );
        assert_eq!(page.open(Some("{\"a\":1}")).expect("not a token"), None);
        let mut inner: Map<String, Value> = serde_json::from_str(&token).expect("json");
        let sealed = inner["sealed"].as_str().expect("sealed").to_owned();
        let flipped = if sealed.ends_with('A') { "B" } else { "A" };
        inner.insert(
            "sealed".into(),
            Value::String(format!("{}{flipped}", &sealed[..sealed.len() - 1])),
        );
        let tampered = serde_json::to_string(&inner).expect("json");
        assert!(page.open(Some(&tampered)).is_err());
    }
}
