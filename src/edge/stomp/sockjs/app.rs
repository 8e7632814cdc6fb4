//! What runs inside a SockJS session: the STOMP connection for `/chat`, or one of the
//! protocol's test applications (echo, close at once) for the conformance suite. All of them
//! see the session only as a [`Transport`].

use crate::edge::stomp::broker::Broker;
use crate::edge::stomp::connection::AppBackend;
use crate::edge::stomp::driver::{Transport, drive};
use crate::edge::stomp::websocket::StompConfig;
use actix_web::web;

/// The application of a SockJS service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppKind {
    /// A STOMP 1.2 connection (`/chat`).
    Stomp,
    /// Sends every message back (test service).
    Echo,
    /// Closes the session at once (test service).
    Close,
}

/// What a STOMP application needs; absent parts (a bare test app) close the session.
#[derive(Clone)]
pub struct AppContext {
    /// Token checks, membership and posting.
    pub backend: Option<AppBackend>,
    /// Room deliveries.
    pub broker: Option<web::Data<Broker>>,
    /// STOMP limits and heart-beats.
    pub config: StompConfig,
}

/// Runs `kind` over `transport` until it or the client ends the session.
pub async fn run<T: Transport>(kind: AppKind, mut transport: T, ctx: AppContext) {
    match kind {
        AppKind::Stomp => match (ctx.backend, ctx.broker) {
            (Some(backend), Some(broker)) => drive(transport, backend, &broker, ctx.config).await,
            _ => {
                tracing::warn!("SockJS: STOMP session without sign-in or broker; closing");
                transport.close().await;
            }
        },
        AppKind::Echo => {
            while let Some(message) = transport.recv().await {
                if transport.send(message).await.is_err() {
                    break;
                }
            }
            transport.close().await;
        }
        AppKind::Close => transport.close().await,
    }
}
