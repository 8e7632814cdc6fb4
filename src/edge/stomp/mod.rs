//! The STOMP 1.2 edge (also 1.0/1.1): the frame type, a sans-IO codec and, as they land, the
//! session state machine and transports. Nothing here touches a socket; transports move bytes.

pub mod broker;
pub mod codec;
pub mod connection;
pub mod destination;
pub mod driver;
pub mod frame;
pub mod limiter;
pub mod session;
pub mod settings;
pub mod sockjs;
pub mod websocket;
