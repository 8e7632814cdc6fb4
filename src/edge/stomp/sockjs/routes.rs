//! The actix handlers of the SockJS services: greeting, `info`, the iframe page, and the
//! session transports (`websocket`, `xhr`, `xhr_streaming`, `xhr_send`, `eventsource`,
//! `htmlfile`, `jsonp`, `jsonp_send`). CORS answers only allowed origins (the same rule as
//! the raw WebSocket); everything a client controls is bounded.

use super::SockJs;
use super::app::{self, AppContext, AppKind};
use super::framing::{self, Frame, PayloadError, Wrap};
use super::session::{Attach, Channel, INBOUND_BATCHES, Inbound, RECEIVER_GRACE, Session};
use crate::auth::AuthService;
use crate::edge::stomp::broker::Broker;
use crate::edge::stomp::connection::AppBackend;
use crate::edge::stomp::driver::WRITE_TIMEOUT;
use crate::edge::stomp::websocket::origin_allowed;
use crate::state::AppState;
use actix_web::http::Method;
use actix_web::http::header;
use actix_web::web::Bytes;
use actix_web::{HttpRequest, HttpResponse, HttpResponseBuilder, web};
use actix_ws::AggregatedMessage;
use std::collections::VecDeque;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::{OwnedMutexGuard, mpsc};
use tracing::Instrument;

/// One SockJS service: a base URL and the application behind it.
#[derive(Debug, Clone, Copy)]
pub struct Service {
    /// The base URL (never ends with `/`).
    pub base: &'static str,
    /// What runs in each session.
    pub app: AppKind,
    /// Whether the websocket transports are offered.
    pub websocket: bool,
    /// Whether `info` asks for a sticky-session cookie (`JSESSIONID`).
    pub cookie_needed: bool,
}

/// The services of this node: `/chat`, plus the protocol's test services when configured.
pub fn services(sockjs: &SockJs) -> Vec<Service> {
    let mut services = vec![Service {
        base: "/chat",
        app: AppKind::Stomp,
        websocket: true,
        cookie_needed: sockjs.settings.cookie_needed,
    }];
    if sockjs.settings.test_services {
        let echo = |base, websocket, cookie_needed| Service {
            base,
            app: AppKind::Echo,
            websocket,
            cookie_needed,
        };
        services.push(echo("/echo", true, false));
        services.push(echo("/disabled_websocket_echo", false, false));
        services.push(echo("/cookie_needed_echo", true, true));
        services.push(Service {
            base: "/close",
            app: AppKind::Close,
            websocket: true,
            cookie_needed: false,
        });
    }
    services
}

/// Registers every service of [`services`] (none when SockJS is disabled). Register after
/// `/chat/websocket` (raw STOMP), which must keep matching first.
pub fn configure(cfg: &mut web::ServiceConfig, sockjs: web::Data<SockJs>) {
    if !sockjs.settings.enabled {
        return;
    }
    for service in services(&sockjs) {
        let mut scope = web::scope(service.base)
            .app_data(web::Data::new(service))
            .app_data(sockjs.clone())
            .route("", web::get().to(greeting))
            .route("/", web::get().to(greeting))
            .route("/info", web::route().to(info));
        if service.app != AppKind::Stomp {
            // `/chat/websocket` is raw STOMP (websocket.rs); test services echo raw here.
            scope = scope.route("/websocket", web::route().to(raw_websocket));
        }
        scope = scope.route("/{file}", web::get().to(iframe)).route(
            "/{server}/{session}/{transport}",
            web::route().to(transport),
        );
        cfg.service(scope);
    }
}

const NOT_CACHED: &str = "no-store, no-cache, no-transform, must-revalidate, max-age=0";
const ONE_YEAR_SECS: u64 = 365 * 24 * 3600;
const JAVASCRIPT: &str = "application/javascript; charset=UTF-8";
const PLAIN: &str = "text/plain; charset=UTF-8";
const HTML: &str = "text/html; charset=UTF-8";
/// Where the iframe page loads the client from: this node's own copy (web/vendor), so no page
/// of ours runs a script from a third-party host.
const SOCKJS_URL: &str = crate::edge::http::web_client::SOCKJS_CLIENT_PATH;
/// Messages one `a[...]` frame carries at most, in bytes (more go in the next frame).
const BATCH_BYTES: usize = 64 * 1024;

async fn greeting() -> HttpResponse {
    HttpResponse::Ok()
        .content_type(PLAIN)
        .body("Welcome to SockJS!\n")
}

fn forbidden() -> HttpResponse {
    HttpResponse::Forbidden()
        .content_type(PLAIN)
        .body("Origin not allowed")
}

fn not_found() -> HttpResponse {
    HttpResponse::NotFound()
        .content_type(PLAIN)
        .body("Not found")
}

/// Adds the CORS headers for an allowed origin (callers refused the others).
fn cors(req: &HttpRequest, res: &mut HttpResponseBuilder) {
    if let Some(origin) = req.headers().get(header::ORIGIN) {
        res.insert_header((header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone()))
            .insert_header((header::ACCESS_CONTROL_ALLOW_CREDENTIALS, "true"))
            .insert_header((header::VARY, "Origin"));
    }
}

fn allowed(req: &HttpRequest, state: &AppState, sockjs: &SockJs) -> bool {
    origin_allowed(req, &state.public_url, &sockjs.stomp.allowed_origins)
}

fn expires_in_a_year() -> String {
    header::HttpDate::from(SystemTime::now() + Duration::from_secs(ONE_YEAR_SECS)).to_string()
}

/// The answer to a CORS preflight: cacheable for a year.
fn preflight(req: &HttpRequest, methods: &str) -> HttpResponse {
    let mut res = HttpResponse::NoContent();
    res.insert_header((
        header::CACHE_CONTROL,
        format!("public, max-age={ONE_YEAR_SECS}"),
    ))
    .insert_header((header::EXPIRES, expires_in_a_year()))
    .insert_header((header::ACCESS_CONTROL_MAX_AGE, ONE_YEAR_SECS.to_string()))
    .insert_header((header::ACCESS_CONTROL_ALLOW_METHODS, methods));
    if let Some(h) = req
        .headers()
        .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
        .filter(|h| !h.is_empty())
    {
        res.insert_header((header::ACCESS_CONTROL_ALLOW_HEADERS, h.clone()));
    }
    cors(req, &mut res);
    res.finish()
}

async fn info(
    req: HttpRequest,
    service: web::Data<Service>,
    sockjs: web::Data<SockJs>,
    state: web::Data<AppState>,
) -> HttpResponse {
    if !allowed(&req, &state, &sockjs) {
        return forbidden();
    }
    match *req.method() {
        Method::OPTIONS => preflight(&req, "OPTIONS, GET"),
        Method::GET => {
            // `origins` is ignored by clients; the protocol fixes its value.
            let body = serde_json::json!({
                "websocket": service.websocket,
                "cookie_needed": service.cookie_needed,
                "origins": ["*:*"],
                "entropy": (uuid::Uuid::new_v4().as_u128() & u128::from(u32::MAX)) as u32,
            });
            let mut res = HttpResponse::Ok();
            res.content_type("application/json; charset=UTF-8")
                .insert_header((header::CACHE_CONTROL, NOT_CACHED));
            cors(&req, &mut res);
            res.body(body.to_string())
        }
        _ => not_found(),
    }
}

static IFRAME: LazyLock<(String, String)> = LazyLock::new(|| {
    let body = format!(
        r#"<!DOCTYPE html>
<html>
<head>
  <meta http-equiv="X-UA-Compatible" content="IE=edge" />
  <meta http-equiv="Content-Type" content="text/html; charset=UTF-8" />
  <script src="{SOCKJS_URL}"></script>
  <script>
    document.domain = document.domain;
    SockJS.bootstrap_iframe();
  </script>
</head>
<body>
  <h2>Don't panic!</h2>
  <p>This is a SockJS hidden iframe. It's used for cross domain magic.</p>
</body>
</html>"#
    );
    let etag = crate::edge::http::web_client::etag(body.as_bytes());
    (body, etag)
});

/// `iframe.html` and versioned `iframe-<anything>.html`: static, strongly cached.
fn is_iframe(file: &str) -> bool {
    file.strip_prefix("iframe")
        .and_then(|rest| rest.strip_suffix(".html"))
        .is_some_and(|version| {
            version.is_empty()
                || (version.starts_with('-')
                    && version
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_')))
        })
}

async fn iframe(req: HttpRequest, file: web::Path<String>) -> HttpResponse {
    if !is_iframe(&file) {
        return not_found();
    }
    let (body, etag) = &*IFRAME;
    let matches = req
        .headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag));
    let mut res = if matches {
        HttpResponse::NotModified()
    } else {
        HttpResponse::Ok()
    };
    res.insert_header((
        header::CACHE_CONTROL,
        format!("public, max-age={ONE_YEAR_SECS}"),
    ))
    .insert_header((header::EXPIRES, expires_in_a_year()))
    .insert_header((header::ETAG, etag.as_str()));
    if matches {
        return res.finish();
    }
    res.content_type(HTML).body(body.clone())
}

/// The `JSESSIONID` cookie for sticky load balancing: the client's own (when it is a plain
/// token) or `dummy`.
fn jsessionid(req: &HttpRequest, service: &Service, res: &mut HttpResponseBuilder) {
    if !service.cookie_needed {
        return;
    }
    let value = req
        .headers()
        .get_all(header::COOKIE)
        .filter_map(|h| h.to_str().ok())
        .flat_map(|h| h.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == "JSESSIONID")
        .map(|(_, v)| v.to_owned())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= 128
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        })
        .unwrap_or_else(|| "dummy".to_owned());
    res.insert_header((header::SET_COOKIE, format!("JSESSIONID={value}; Path=/")));
}

/// The extractors every session transport needs.
struct Ctx {
    req: HttpRequest,
    service: Service,
    sockjs: web::Data<SockJs>,
    app: AppContext,
    session_id: String,
}

#[allow(clippy::too_many_arguments)]
async fn transport(
    req: HttpRequest,
    path: web::Path<(String, String, String)>,
    body: web::Payload,
    service: web::Data<Service>,
    sockjs: web::Data<SockJs>,
    state: web::Data<AppState>,
    auth: Option<web::Data<AuthService>>,
    broker: Option<web::Data<Broker>>,
) -> Result<HttpResponse, actix_web::Error> {
    let (server, session_id, kind) = path.into_inner();
    if !framing::valid_id(&server) || !framing::valid_id(&session_id) {
        return Ok(not_found());
    }
    let method = req.method().clone();
    let known = matches!(
        kind.as_str(),
        "websocket"
            | "xhr"
            | "xhr_streaming"
            | "xhr_send"
            | "eventsource"
            | "htmlfile"
            | "jsonp"
            | "jsonp_send"
    );
    if !known || (kind == "websocket" && !service.websocket) {
        return Ok(not_found());
    }
    if !allowed(&req, &state, &sockjs) {
        return Ok(forbidden());
    }
    let app = AppContext {
        backend: auth.map(|auth| AppBackend {
            auth,
            state: state.clone(),
        }),
        broker,
        config: sockjs.stomp.clone(),
    };
    let ctx = Ctx {
        req,
        service: **service,
        sockjs,
        app,
        session_id,
    };
    let span = tracing::debug_span!("sockjs", service = ctx.service.base, transport = %kind);
    async move {
        Ok(match (kind.as_str(), method) {
            ("websocket", Method::GET) => return websocket(ctx, body, false).await,
            ("websocket", _) => HttpResponse::MethodNotAllowed()
                .insert_header((header::ALLOW, "GET"))
                .finish(),
            ("xhr" | "xhr_streaming" | "xhr_send", Method::OPTIONS) => {
                preflight(&ctx.req, "OPTIONS, POST")
            }
            ("xhr", Method::POST) => receive(ctx, Wrap::Xhr, false, String::new()).await,
            ("xhr_streaming", Method::POST) => receive(ctx, Wrap::Xhr, true, String::new()).await,
            ("eventsource", Method::GET) => {
                receive(ctx, Wrap::EventSource, true, String::new()).await
            }
            ("htmlfile" | "jsonp", Method::GET) => {
                let wrap = if kind == "jsonp" {
                    Wrap::Jsonp
                } else {
                    Wrap::HtmlFile
                };
                match callback(&ctx.req) {
                    Ok(cb) => receive(ctx, wrap, wrap == Wrap::HtmlFile, cb).await,
                    Err(message) => server_error(message),
                }
            }
            ("xhr_send" | "jsonp_send", Method::POST) => {
                let bytes = body.to_bytes_limited(ctx.sockjs.max_message_bytes()).await;
                let Ok(Ok(bytes)) = bytes else {
                    return Ok(HttpResponse::PayloadTooLarge().finish());
                };
                send(ctx, &bytes, kind == "jsonp_send").await
            }
            _ => not_found(),
        })
    }
    .instrument(span)
    .await
}

fn server_error(message: &str) -> HttpResponse {
    HttpResponse::InternalServerError()
        .content_type(PLAIN)
        .body(message.to_owned())
}

/// The validated `c` parameter of `jsonp` and `htmlfile`.
fn callback(req: &HttpRequest) -> Result<String, &'static str> {
    let query =
        web::Query::<std::collections::HashMap<String, String>>::from_query(req.query_string())
            .map_err(|_| "invalid \"callback\" parameter")?;
    let cb = query
        .get("c")
        .filter(|c| !c.is_empty())
        .ok_or("\"callback\" parameter required")?;
    if framing::valid_callback(cb) {
        Ok(cb.clone())
    } else {
        Err("invalid \"callback\" parameter")
    }
}

/// `xhr_send` / `jsonp_send`: client messages into a live session.
async fn send(ctx: Ctx, body: &[u8], jsonp: bool) -> HttpResponse {
    let Some(session) = ctx.sockjs.registry.get(ctx.service.base, &ctx.session_id) else {
        return not_found();
    };
    let form = ctx
        .req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    let parsed = if jsonp {
        framing::parse_jsonp_send(body, form)
    } else {
        framing::parse_messages(body)
    };
    let messages = match parsed {
        Ok(m) => m,
        Err(e @ (PayloadError::Expected | PayloadError::BrokenJson)) => {
            return server_error(&e.to_string());
        }
    };
    // A closed session takes nothing more.
    let Some(inbound) = session.inbound() else {
        return not_found();
    };
    if !messages.is_empty() {
        let deadline = tokio::time::Instant::now() + WRITE_TIMEOUT;
        let (batch, taken) = Inbound::tracked(messages);
        // A full queue holds this request (back-pressure) up to the write timeout.
        if !matches!(
            tokio::time::timeout_at(deadline, inbound.send(batch)).await,
            Ok(Ok(()))
        ) {
            return HttpResponse::ServiceUnavailable().finish();
        }
        // Answer once the application has handled the batch (an echo is then queued for the
        // next poll); the messages are accepted either way, so a busy application only delays
        // the answer, up to the same deadline.
        let _ = tokio::time::timeout_at(deadline, taken).await;
    }
    let mut res = if jsonp {
        HttpResponse::Ok()
    } else {
        HttpResponse::NoContent()
    };
    res.content_type(PLAIN)
        .insert_header((header::CACHE_CONTROL, NOT_CACHED));
    cors(&ctx.req, &mut res);
    jsessionid(&ctx.req, &ctx.service, &mut res);
    if jsonp { res.body("ok") } else { res.finish() }
}

/// Creates the session `id` of `service` with its application and expiry watch.
fn open_session(ctx: &Ctx) -> Option<Arc<Session>> {
    let sockjs = ctx.sockjs.clone();
    let base = ctx.service.base;
    let id = ctx.session_id.clone();
    let created = sockjs.registry.get_or_create(base, &id, || {
        let slot = sockjs.slots.take()?;
        let (session, channel) = Session::new(Instant::now(), sockjs.max_outbound());
        let span = tracing::info_span!("sockjs_session", service = base);
        actix_web::rt::spawn(
            app::run(ctx.service.app, channel, ctx.app.clone()).instrument(span.clone()),
        );
        actix_web::rt::spawn(
            expire(sockjs.clone(), base, id.clone(), session.clone()).instrument(span),
        );
        Ok::<_, super::session::Full>((session, slot))
    });
    match created {
        Ok((session, _)) => Some(session),
        Err(full) => {
            tracing::warn!(error = %full, "SockJS: session refused");
            None
        }
    }
}

/// Forgets the session once it had no receiver for the disconnect delay; that ends its
/// application (and so frees its broker registration).
async fn expire(sockjs: web::Data<SockJs>, base: &'static str, id: String, session: Arc<Session>) {
    let delay = sockjs.disconnect_delay();
    loop {
        let left = session.lifecycle().expires_in(Instant::now(), delay);
        match left {
            Some(wait) => tokio::time::sleep(wait).await,
            None => break,
        }
    }
    tracing::debug!("SockJS session expired");
    sockjs.registry.remove(base, &id, &session);
}

/// A receiving request: polling (one frame) or streaming (until the response limit).
async fn receive(ctx: Ctx, wrap: Wrap, streaming: bool, callback: String) -> HttpResponse {
    let Some(session) = open_session(&ctx) else {
        return HttpResponse::ServiceUnavailable().finish();
    };
    let mut res = HttpResponse::Ok();
    let content_type = match wrap {
        Wrap::Xhr | Wrap::Jsonp => JAVASCRIPT,
        Wrap::EventSource => "text/event-stream",
        Wrap::HtmlFile => HTML,
    };
    res.content_type(content_type)
        .insert_header((header::CACHE_CONTROL, NOT_CACHED));
    cors(&ctx.req, &mut res);
    jsessionid(&ctx.req, &ctx.service, &mut res);
    let mut chunks = VecDeque::new();
    if streaming {
        chunks.push_back(match wrap {
            Wrap::Xhr => framing::xhr_streaming_prelude(),
            Wrap::EventSource => framing::EVENTSOURCE_PRELUDE.to_owned(),
            Wrap::HtmlFile => framing::htmlfile_prelude(&callback),
            Wrap::Jsonp => String::new(),
        });
    }
    let attach = session.attach(RECEIVER_GRACE).await;
    let mut receiver = Receiver {
        session: session.clone(),
        sockjs: ctx.sockjs.clone(),
        wrap,
        callback,
        streaming,
        chunks,
        rx: None,
        sent: 0,
        done: false,
        attached: false,
        finished: false,
    };
    match attach {
        Attach::Refuse(frame) => {
            receiver.push(&frame);
            receiver.done = true;
        }
        // `Session::attach` has already waited and refused.
        Attach::Busy => {
            receiver.push(&Frame::another_connection());
            receiver.done = true;
        }
        Attach::Open | Attach::Receive => {
            receiver.attached = true;
            // The lifecycle admits one receiver; a previous one may still be releasing.
            receiver.rx = Some(session.outbound.clone().lock_owned().await);
            if attach == Attach::Open {
                receiver.push(&Frame::Open);
            }
        }
    }
    let body = futures::stream::unfold(receiver, |mut r| async move {
        let chunk = r.next().await?;
        Some((Ok::<_, actix_web::Error>(chunk), r))
    });
    // HTTP/1.0 has no chunked encoding: the body ends when the connection closes.
    let http10 = ctx.req.version() == actix_web::http::Version::HTTP_10;
    if http10 {
        res.force_close();
    }
    let mut response = res.streaming(body);
    if http10 {
        response.head_mut().no_chunking(true);
    }
    response
}

/// The state of one receiving response.
struct Receiver {
    session: Arc<Session>,
    sockjs: web::Data<SockJs>,
    wrap: Wrap,
    callback: String,
    streaming: bool,
    chunks: VecDeque<String>,
    rx: Option<OwnedMutexGuard<mpsc::Receiver<String>>>,
    sent: usize,
    done: bool,
    attached: bool,
    finished: bool,
}

impl Receiver {
    /// Queues `frame`; a polling response, or a streaming one past its limit, then ends.
    fn push(&mut self, frame: &Frame) {
        let chunk = self.wrap.frame(frame, &self.callback);
        self.sent += chunk.len();
        self.chunks.push_back(chunk);
        if !self.streaming || self.sent >= self.sockjs.settings.response_limit_bytes {
            self.done = true;
        }
    }

    async fn next(&mut self) -> Option<Bytes> {
        loop {
            if let Some(chunk) = self.chunks.pop_front() {
                return Some(Bytes::from(chunk));
            }
            if self.done {
                self.finished = true;
                return None;
            }
            let Some(rx) = self.rx.as_mut() else {
                self.finished = true;
                return None;
            };
            let heartbeat = tokio::time::sleep(self.sockjs.heartbeat());
            tokio::select! {
                message = rx.recv() => match message {
                    Some(first) => {
                        let mut size = first.len();
                        let mut messages = vec![first];
                        while size < BATCH_BYTES {
                            let Ok(m) = rx.try_recv() else { break };
                            size += m.len();
                            messages.push(m);
                        }
                        self.push(&Frame::Messages(messages));
                    }
                    None => {
                        let frame = self.session.lifecycle().close();
                        self.push(&frame);
                        self.done = true;
                    }
                },
                () = heartbeat => self.push(&Frame::Heartbeat),
            }
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if !self.attached {
            return;
        }
        // Release the queue before another receiver may attach.
        self.rx = None;
        let interrupted = !self.finished;
        if self.session.detach(Instant::now(), interrupted) {
            tracing::debug!("SockJS receiver vanished; session interrupted");
            self.session.end_application();
        }
    }
}

/// `{base}/websocket` of the test services: the application's messages as raw text frames.
async fn raw_websocket(
    req: HttpRequest,
    body: web::Payload,
    service: web::Data<Service>,
    sockjs: web::Data<SockJs>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, actix_web::Error> {
    if !service.websocket {
        return Ok(not_found());
    }
    if req.method() != Method::GET {
        return Ok(HttpResponse::MethodNotAllowed()
            .insert_header((header::ALLOW, "GET"))
            .finish());
    }
    if !allowed(&req, &state, &sockjs) {
        return Ok(forbidden());
    }
    let ctx = Ctx {
        req,
        service: **service,
        sockjs: sockjs.clone(),
        app: AppContext {
            backend: None,
            broker: None,
            config: sockjs.stomp.clone(),
        },
        session_id: String::new(),
    };
    websocket(ctx, body, true).await
}

/// A websocket session: SockJS-framed (`o`, `h`, `a[...]`, `c[...]`), or raw for the test
/// services. Its lifetime is the socket's; session ids are not shared.
async fn websocket(
    ctx: Ctx,
    body: web::Payload,
    raw: bool,
) -> Result<HttpResponse, actix_web::Error> {
    let Ok(slot) = ctx.sockjs.slots.take() else {
        return Ok(HttpResponse::ServiceUnavailable().finish());
    };
    let (response, ws, stream) = actix_ws::handle(&ctx.req, body)?;
    let max = ctx.sockjs.max_message_bytes();
    let stream = stream
        .max_frame_size(max)
        .aggregate_continuations()
        .max_continuation_size(max);
    let (in_tx, in_rx) = mpsc::channel(INBOUND_BATCHES);
    let (out_tx, out_rx) = mpsc::channel(ctx.sockjs.max_outbound());
    let span = tracing::info_span!("sockjs_websocket", service = ctx.service.base, raw);
    actix_web::rt::spawn(
        app::run(
            ctx.service.app,
            Channel::new(in_rx, out_tx).over_websocket(),
            ctx.app.clone(),
        )
        .instrument(span.clone()),
    );
    let heartbeat = ctx.sockjs.heartbeat();
    actix_web::rt::spawn(
        async move {
            serve_websocket(ws, stream, in_tx, out_rx, heartbeat, raw).await;
            drop(slot);
        }
        .instrument(span),
    );
    Ok(response)
}

/// Writes one text frame; a client that does not read for [`WRITE_TIMEOUT`] is dropped.
async fn send_text(ws: &mut actix_ws::Session, text: String) -> bool {
    matches!(
        tokio::time::timeout(WRITE_TIMEOUT, ws.text(text)).await,
        Ok(Ok(()))
    )
}

async fn serve_websocket(
    mut ws: actix_ws::Session,
    mut stream: actix_ws::AggregatedMessageStream,
    inbound: mpsc::Sender<Inbound>,
    mut outbound: mpsc::Receiver<String>,
    heartbeat: Duration,
    raw: bool,
) {
    if !raw && !send_text(&mut ws, "o".to_owned()).await {
        return;
    }
    // A parsed batch the application has no room for yet: stop reading until it has.
    let mut pending: Option<Vec<String>> = None;
    loop {
        let beat = tokio::time::sleep(heartbeat);
        tokio::select! {
            permit = inbound.reserve(), if pending.is_some() => {
                let Ok(permit) = permit else { break };
                permit.send(Inbound::new(pending.take().unwrap_or_default()));
            }
            message = stream.recv(), if pending.is_none() => {
                let text = match message {
                    Some(Ok(AggregatedMessage::Text(text))) => text.to_string(),
                    Some(Ok(AggregatedMessage::Binary(bytes))) => {
                        String::from_utf8_lossy(&bytes).into_owned()
                    }
                    Some(Ok(AggregatedMessage::Ping(payload))) => {
                        let pong = tokio::time::timeout(WRITE_TIMEOUT, ws.pong(&payload)).await;
                        if !matches!(pong, Ok(Ok(()))) { break }
                        continue;
                    }
                    Some(Ok(AggregatedMessage::Pong(_))) => continue,
                    Some(Ok(AggregatedMessage::Close(_)) | Err(_)) | None => break,
                };
                if raw {
                    pending = Some(vec![text]);
                    continue;
                }
                match framing::parse_messages(text.as_bytes()) {
                    Ok(messages) if messages.is_empty() => {}
                    Ok(messages) => pending = Some(messages),
                    Err(PayloadError::Expected) => {}
                    // Broken JSON ends the connection abruptly, as the protocol asks.
                    Err(PayloadError::BrokenJson) => break,
                }
            }
            message = outbound.recv() => {
                let Some(first) = message else {
                    let close = actix_ws::CloseReason {
                        code: actix_ws::CloseCode::Other(3000),
                        description: Some("Go away!".into()),
                    };
                    if !raw {
                        send_text(&mut ws, Frame::go_away().encode()).await;
                    }
                    let _ = tokio::time::timeout(WRITE_TIMEOUT, ws.close(Some(close))).await;
                    return;
                };
                let sent = if raw {
                    send_text(&mut ws, first).await
                } else {
                    let mut size = first.len();
                    let mut messages = vec![first];
                    while size < BATCH_BYTES {
                        let Ok(m) = outbound.try_recv() else { break };
                        size += m.len();
                        messages.push(m);
                    }
                    send_text(&mut ws, Frame::Messages(messages).encode()).await
                };
                if !sent { break }
            }
            () = beat, if !raw => {
                if !send_text(&mut ws, Frame::Heartbeat.encode()).await { break }
            }
        }
    }
    // Dropping `inbound` ends the application, which frees its broker registration.
    drop(inbound);
    let _ = tokio::time::timeout(WRITE_TIMEOUT, ws.close(None)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iframe_names_are_matched_strictly() {
        for ok in [
            "iframe.html",
            "iframe-a.html",
            "iframe-.html",
            "iframe-0.1.2abc-dirty.2144.html",
        ] {
            assert!(is_iframe(ok), "{ok}");
        }
        for bad in [
            "iframe.htm",
            "iframe",
            "IFRAME.HTML",
            "iframe.HTML",
            "iframe.xml",
            "iframea.html",
        ] {
            assert!(!is_iframe(bad), "{bad}");
        }
    }

    #[test]
    fn test_services_exist_only_when_configured() {
        let mut chat = crate::edge::stomp::settings::ChatSettings::default();
        assert_eq!(services(&SockJs::new(&chat)).len(), 1);
        chat.sockjs.test_services = true;
        let all = services(&SockJs::new(&chat));
        assert!(
            all.iter()
                .any(|s| s.base == "/disabled_websocket_echo" && !s.websocket)
        );
        assert!(
            all.iter()
                .any(|s| s.base == "/cookie_needed_echo" && s.cookie_needed)
        );
    }
}
