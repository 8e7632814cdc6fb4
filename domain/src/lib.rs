//! The pure domain of Neulbi.
//!
//! Every aggregate (user, chat room, call session) is a *decider*: a pure `decide` from state
//! and command to events, and a pure `evolve` from state and event to the next state. Nothing
//! here performs I/O, awaits, reads a clock or generates random ids: time and ids are passed in
//! by the caller, so every business rule is a plain, deterministic unit test.

pub mod call_session;
pub mod chat_room;
pub mod decider;
pub mod error;
pub mod ids;
pub mod personal;
pub mod stream;
pub mod system;
pub mod testing;
pub mod user;

pub use decider::{Actor, Context, Decider, DomainEvent, Role};
pub use error::DomainError;
pub use ids::{CallId, MessageId, RoomId, UserId};
pub use personal::Personal;
pub use stream::{StreamKind, StreamName, StreamNameError};
