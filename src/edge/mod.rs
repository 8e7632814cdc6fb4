//! Everything that speaks to the outside: HTTP now; STOMP and signaling as they land.

pub mod http;
