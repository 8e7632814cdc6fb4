//! Media plane: the SFU's peer connections and the TURN relay browsers reach it through.
//! Knows nothing of HTTP or STOMP; signaling drives it (see `docs/architecture.md`).

pub mod turn;
