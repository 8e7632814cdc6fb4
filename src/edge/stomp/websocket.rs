//! The raw WebSocket transport at `/chat/websocket`: the origin check, the upgrade, and a
//! [`Transport`] over actix-ws. The connection loop is [`drive`]; protocol decisions live in
//! the sans-IO session.

use super::broker::Broker;
use super::codec::Limits;
use super::connection::{AppBackend, ChatBackend};
use super::driver::{Transport, TransportClosed, drive};
use super::session::SessionConfig;
use crate::auth::AuthService;
use crate::state::AppState;
use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use actix_ws::Message;
use tracing::Instrument;

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

/// Same origin (the `Host` the browser used, or the public URL) or a configured origin (`*`
/// only when configured); a request without `Origin` is not from a browser page and cannot be
/// a cross-site attack.
pub fn origin_allowed(req: &HttpRequest, public_url: &str, allowed: &[String]) -> bool {
    let Some(origin) = req.headers().get(header::ORIGIN) else {
        return true;
    };
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    let origin = origin.trim_end_matches('/');
    if origin == public_url.trim_end_matches('/') || allowed.iter().any(|a| a == origin || a == "*")
    {
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

/// The actix-ws side of a raw STOMP-over-WebSocket connection.
struct WsTransport {
    ws: actix_ws::Session,
    stream: actix_ws::MessageStream,
}

#[async_trait::async_trait(?Send)]
impl Transport for WsTransport {
    async fn recv(&mut self) -> Option<Vec<u8>> {
        loop {
            // Fragments go to the incremental decoder as they come; it bounds the frame size.
            match self.stream.recv().await? {
                Ok(Message::Text(text)) => return Some(text.into_bytes().to_vec()),
                Ok(Message::Binary(bytes)) => return Some(bytes.to_vec()),
                Ok(Message::Continuation(item)) => match item {
                    actix_ws::Item::FirstText(b)
                    | actix_ws::Item::FirstBinary(b)
                    | actix_ws::Item::Continue(b)
                    | actix_ws::Item::Last(b) => return Some(b.to_vec()),
                },
                Ok(Message::Ping(payload)) => {
                    self.ws.pong(&payload).await.ok()?;
                }
                Ok(Message::Pong(_) | Message::Nop) => {}
                Ok(Message::Close(_)) | Err(_) => return None,
            }
        }
    }

    async fn send(&mut self, bytes: Vec<u8>) -> Result<(), TransportClosed> {
        let sent = match String::from_utf8(bytes) {
            Ok(text) => self.ws.text(text).await,
            Err(e) => self.ws.binary(e.into_bytes()).await,
        };
        sent.map_err(|_| TransportClosed)
    }

    async fn close(&mut self) {
        let _ = self.ws.clone().close(None).await;
    }

    fn label(&self) -> &'static str {
        "websocket"
    }
}

/// Runs one connection until the session or the peer closes it.
async fn serve<B: ChatBackend>(
    ws: actix_ws::Session,
    stream: actix_ws::MessageStream,
    backend: B,
    broker: web::Data<Broker>,
    config: StompConfig,
) {
    let stream = stream.max_frame_size(config.limits.max_frame_bytes);
    drive(WsTransport { ws, stream }, backend, &broker, config)
        .instrument(tracing::info_span!("stomp_websocket"))
        .await;
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
        let any = vec!["*".to_owned()];
        let req = TestRequest::get()
            .insert_header((header::ORIGIN, "https://evil.example"))
            .to_http_request();
        assert!(origin_allowed(&req, public, &any), "only when configured");
    }
}
