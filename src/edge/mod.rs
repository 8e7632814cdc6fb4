//! Everything that speaks to the outside: HTTP, STOMP (chat) and WebRTC signaling (calls).

pub mod http;
pub mod signaling;
pub mod stomp;
pub mod tls;
