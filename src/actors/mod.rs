//! The actor runtime: one actix actor per live aggregate, created on demand by a [`Registry`].
//!
//! A command's path is validate → decide → append(expected = current version) → evolve →
//! reply. The actor owns its stream's state in memory; the log stays the source of truth, so
//! an actor can be dropped (passivated) at any time and rebuilt by reading its stream.

pub mod aggregate;
pub use crate::store::codec;
pub mod error;
pub mod registry;

pub use aggregate::{AggregateActor, CommandOutcome};
pub use error::ActorError;
pub use registry::{Registry, RegistryConfig};
