//! Everything that speaks to the outside: HTTP and STOMP now; signaling as it lands.

pub mod http;
pub mod stomp;
