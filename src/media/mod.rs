//! The SFU: forwards each call participant's audio and video to the others without decoding.
//! (Being built: the stall monitor comes first, the forwarding next.)

#![warn(missing_docs)]

mod monitor;
mod rtcp;

pub use monitor::{StallEvent, StallMonitor};
