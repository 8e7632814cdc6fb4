//! The raw WebSocket transport at `/chat/websocket`: moves bytes between the socket and the
//! codec, time into the session, and deliveries from the [`Broker`]. Protocol decisions all
//! live in the sans-IO [`Session`]; this file only does I/O.

use super::broker::Broker;
use super::codec::{self, Decoder, Limits};
use super::connection::{AppBackend, ChatBackend, Connection, Effect};
use super::frame::Version;
use super::session::{Session, SessionConfig};
use crate::auth::AuthService;
use crate::startup::AppState;
use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use actix_ws::Message;
use std::time::{Duration, Instant};

/// How long one write may wait for a client that does not read before it is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// STOMP-over-WebSocket subprotocols, newest first (what stomp.js offers).
const SUBPROTOCOLS: [&str; 3] = ["v12.stomp", "v11.stomp", "v10.stomp"];

/// Transport settings; a `web::Data<StompConfig>` in the app overrides the defaults.
#[derive(Debug, Clone, Default)]
pub struct StompConfig {
    /// Frame size limits of the codec.
    pub limits: Limits,
    /// Session limits and heart-beats.
    pub session: SessionConfig,
    /// Browser origins allowed besides the page's own (never `*` implicitly).
    pub allowed_origins: Vec<String>,
}

/// Registers `/chat/websocket`.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/chat/websocket", web::get().to(websocket));
}

/// Same origin (the `Host` the browser used, or the public URL) or a configured origin; a
/// request without `Origin` is not from a browser page and cannot be a cross-site attack.
fn origin_allowed(req: &HttpRequest, public_url: &str, allowed: &[String]) -> bool {
    let Some(origin) = req.headers().get(header::ORIGIN) else {
        return true;
    };
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    let origin = origin.trim_end_matches('/');
    if origin == public_url.trim_end_matches('/') || allowed.iter().any(|a| a == origin) {
        return true;
    }
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok());
    let origin_host = origin.split_once("://").map(|(_, rest)| rest);
    matches!((host, origin_host), (Some(h), Some(o)) if h.eq_ignore_ascii_case(o))
}

async fn websocket(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<AppState>,
    auth: Option<web::Data<AuthService>>,
    broker: Option<web::Data<Broker>>,
    config: Option<web::Data<StompConfig>>,
) -> Result<HttpResponse, actix_web::Error> {
    let config = config.map(|c| c.get_ref().clone()).unwrap_or_default();
    if !origin_allowed(&req, &state.public_url, &config.allowed_origins) {
        return Ok(HttpResponse::Forbidden().finish());
    }
    let (Some(auth), Some(broker)) = (auth, broker) else {
        return Ok(HttpResponse::ServiceUnavailable().finish());
    };
    let (response, ws, stream) = actix_ws::handle_with_protocols(&req, body, &SUBPROTOCOLS)?;
    let backend = AppBackend { auth, state };
    actix_web::rt::spawn(serve(ws, stream, backend, broker, config));
    Ok(response)
}

/// Runs one connection until the session or the peer closes it.
async fn serve<B: ChatBackend>(
    mut ws: actix_ws::Session,
    stream: actix_ws::MessageStream,
    backend: B,
    broker: web::Data<Broker>,
    config: StompConfig,
) {
    let mut stream = stream.max_frame_size(config.limits.max_frame_bytes);
    let (conn_id, mut deliveries) = broker.register(config.session.max_outbound);
    let mut conn = Connection::new(Session::new(config.session.clone(), Instant::now()));
    let mut decoder = Decoder::new(config.limits);
    let mut frames = Vec::new();
    let mut out = Vec::new();
    'run: loop {
        let deadline = conn.session.poll_timeout();
        let timer = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
                None => std::future::pending().await,
            }
        };
        let mut decoded = Ok(());
        tokio::select! {
            message = stream.recv() => {
                let now = Instant::now();
                let bytes = match message {
                    Some(Ok(Message::Text(text))) => text.into_bytes(),
                    Some(Ok(Message::Binary(bytes))) => bytes,
                    Some(Ok(Message::Continuation(item))) => match item {
                        actix_ws::Item::FirstText(b)
                        | actix_ws::Item::FirstBinary(b)
                        | actix_ws::Item::Continue(b)
                        | actix_ws::Item::Last(b) => b,
                    },
                    Some(Ok(Message::Ping(payload))) => {
                        if ws.pong(&payload).await.is_err() {
                            break 'run;
                        }
                        continue 'run;
                    }
                    Some(Ok(Message::Pong(_) | Message::Nop)) => continue 'run,
                    Some(Ok(Message::Close(_)) | Err(_)) | None => break 'run,
                };
                conn.session.handle_activity(now);
                decoded = decoder.feed(&bytes, &mut frames);
            }
            delivery = deliveries.recv() => match delivery {
                Some(delivery) => conn.session.deliver(&delivery, Instant::now()),
                None => conn.session.handle_overflow(Instant::now()),
            },
            () = timer => conn.session.handle_timeout(Instant::now()),
        }
        // One frame at a time, each settled before the next, so replies keep their order.
        let mut pending = std::mem::take(&mut frames).into_iter();
        loop {
            let effects = conn.settle(&backend, Instant::now).await;
            if let Some(version) = conn.session.version() {
                decoder.set_version(version);
            }
            for effect in effects {
                match effect {
                    Effect::Write(frame) => {
                        out.clear();
                        let version = conn.session.version().unwrap_or(Version::V1_0);
                        if codec::encode(&frame, version, &mut out).is_err() {
                            tracing::warn!(command = %frame.command, "STOMP: unencodable frame");
                            break 'run;
                        }
                        let send = async {
                            match std::str::from_utf8(&out) {
                                Ok(text) => ws.text(text.to_owned()).await,
                                Err(_) => ws.binary(out.clone()).await,
                            }
                        };
                        if !matches!(tokio::time::timeout(WRITE_TIMEOUT, send).await, Ok(Ok(()))) {
                            break 'run;
                        }
                    }
                    Effect::Heartbeat => {
                        let send = tokio::time::timeout(WRITE_TIMEOUT, ws.text("\n"));
                        if !matches!(send.await, Ok(Ok(()))) {
                            break 'run;
                        }
                    }
                    Effect::Subscribed(room) => broker.join(conn_id, room),
                    Effect::Unsubscribed(room) => broker.leave(conn_id, room),
                    Effect::Close(reason) => {
                        tracing::debug!(?reason, "STOMP session closed");
                        break 'run;
                    }
                }
            }
            match pending.next() {
                Some(frame) => conn.session.handle_frame(frame, Instant::now()),
                None => match std::mem::replace(&mut decoded, Ok(())) {
                    Err(error) => conn.session.handle_decode_error(&error, Instant::now()),
                    Ok(()) => break,
                },
            }
        }
    }
    broker.unregister(conn_id);
    // The socket is going away either way; a client that does not read cannot hold the task.
    let _ = tokio::time::timeout(WRITE_TIMEOUT, ws.close(None)).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    #[test]
    fn only_same_or_configured_origins_are_allowed() {
        let public = "https://neulbi.example";
        let allowed = vec!["https://partner.example".to_owned()];
        let check = |origin: Option<&str>| {
            let mut req = TestRequest::get()
                .uri("/chat/websocket")
                .insert_header((header::HOST, "chat.internal:8080"));
            if let Some(o) = origin {
                req = req.insert_header((header::ORIGIN, o));
            }
            origin_allowed(&req.to_http_request(), public, &allowed)
        };
        assert!(check(None), "not a browser page");
        assert!(check(Some("https://neulbi.example")));
        assert!(check(Some("https://partner.example")));
        assert!(check(Some("http://chat.internal:8080")), "same host");
        assert!(!check(Some("https://evil.example")));
        assert!(!check(Some("null")));
        assert!(!check(Some("https://neulbi.example.evil.example")));
    }
}
