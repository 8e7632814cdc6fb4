//! Crypto-shredding: the log never changes, yet a person can be forgotten.
//!
//! Personal fields of events (marked by `neulbi_domain::Personal`) are sealed with a per-user
//! data key ([`keys`]) before they reach the log, and opened on the way out ([`cipher`],
//! [`crypto_store`]). Erasing a user destroys their key: their events still replay (ids,
//! types, timestamps, counts), but their personal fields read as erased. Other people's
//! fields in the same streams stay readable, because each field is sealed with its own
//! owner's key.

pub mod erasure;
pub mod kek;
pub mod keys;
pub mod rewrap;
pub mod settings;

pub use crate::store::{CryptoStore, cipher, crypto_store, sealed};
pub use kek::{KekError, KekRing, WrapContext};
pub use keys::{DataKey, KeyStore};
pub use settings::KeySettings;
