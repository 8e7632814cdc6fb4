//! Personal data, marked in the type system so no event can forget it.
//!
//! Every field that identifies or describes a person (email, nickname, profile text, message
//! bodies, IP addresses, image keys) is a [`Personal`] value naming its *owner*, the data
//! subject. The store encrypts each one with the owner's data key; erasing the owner destroys
//! that key, after which the field reads back as [`Personal::Erased`] while the rest of the
//! event (ids, types, timestamps, counts) stays readable and replays.
//!
//! On the wire a personal field is `{"$personal": {"owner": ID, "value": V}}` (or
//! `{"$personal": {"owner": ID, "erased": true}}`); the store recognises that shape, so
//! encryption needs no per-event code. `Debug` never prints the value, so a personal field
//! cannot leak into a log line through `{:?}`.

use crate::UserId;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// The JSON key that marks a personal field.
pub const PERSONAL_KEY: &str = "$personal";

/// A personal value of `owner`, or the marker that it was erased.
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum Personal<T> {
    /// The value is readable.
    Known {
        /// The data subject whose key protects the value.
        owner: UserId,
        /// The value itself.
        value: T,
    },
    /// The owner was erased; the value is gone for good.
    Erased {
        /// The data subject that was erased.
        owner: UserId,
    },
}

impl<T> Personal<T> {
    /// A readable personal value belonging to `owner`.
    pub const fn new(owner: UserId, value: T) -> Self {
        Self::Known { owner, value }
    }

    /// The data subject.
    pub const fn owner(&self) -> UserId {
        match self {
            Self::Known { owner, .. } | Self::Erased { owner } => *owner,
        }
    }

    /// The value, unless erased.
    pub const fn value(&self) -> Option<&T> {
        match self {
            Self::Known { value, .. } => Some(value),
            Self::Erased { .. } => None,
        }
    }

    /// True once the owner has been erased.
    pub const fn is_erased(&self) -> bool {
        matches!(self, Self::Erased { .. })
    }

    /// The value, or `erased` in its place (for display in audits and replays).
    pub fn value_or<'a>(&'a self, erased: &'a T) -> &'a T {
        self.value().unwrap_or(erased)
    }
}

impl<T> fmt::Debug for Personal<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Known { owner, .. } => write!(f, "Personal(owner={owner}, <redacted>)"),
            Self::Erased { owner } => write!(f, "Personal(owner={owner}, <erased>)"),
        }
    }
}

#[derive(Serialize)]
struct WireOut<'a, T> {
    owner: UserId,
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<&'a T>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    erased: bool,
}

#[derive(Deserialize)]
#[serde(bound = "T: DeserializeOwned")]
struct WireIn<T> {
    owner: UserId,
    #[serde(default = "Option::default")]
    value: Option<T>,
    #[serde(default)]
    erased: bool,
}

impl<T: Serialize> Serialize for Personal<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let wire = WireOut {
            owner: self.owner(),
            value: self.value(),
            erased: self.is_erased(),
        };
        let mut map = s.serialize_map(Some(1))?;
        map.serialize_entry(PERSONAL_KEY, &wire)?;
        map.end()
    }
}

impl<'de, T: DeserializeOwned> Deserialize<'de> for Personal<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(bound = "T: DeserializeOwned")]
        struct Outer<T> {
            #[serde(rename = "$personal")]
            inner: WireIn<T>,
        }
        let Outer { inner } = Outer::<T>::deserialize(d)?;
        match (inner.value, inner.erased) {
            (Some(value), false) => Ok(Self::Known {
                owner: inner.owner,
                value,
            }),
            (None, true) => Ok(Self::Erased { owner: inner.owner }),
            _ => Err(serde::de::Error::custom(
                "a personal field holds either a value or `erased: true`",
            )),
        }
    }
}
