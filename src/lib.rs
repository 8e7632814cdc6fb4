//! Neulbi: a real-time counseling service built as an event-sourced actor system.
//!
//! Every user, chat room and call session is an actor owning one stream of an append-only
//! event log ([`store`]); the [`actors`] runtime routes commands to them; the [`edge`] speaks
//! HTTP (and, as features land, STOMP and WebRTC signaling); [`media`] is the SFU that
//! forwards the calls' audio and video. See `docs/architecture.md`.

pub mod actors;
pub mod auth;
pub mod blob;
pub mod cli;
pub mod config;
pub mod edge;
pub mod env_value;
pub use neulbi_store::lanes;
pub mod media;
pub mod privacy;
pub mod projections;
pub mod startup;
pub mod state;
pub mod store;
pub mod telemetry;
pub mod tools;
