//! Builds a node from its configuration: store, actor registries, HTTP server. Tests use the
//! same path (`Application::build` on port 0) as `neulbi serve`.

use crate::config::Config;
use crate::edge::http;
use crate::projections::{self, ReadDb};
use crate::state::AppState;
use crate::store::{self, SharedStore};
use actix_web::dev::{Server, ServerHandle};
use actix_web::middleware::from_fn;
use actix_web::{App, HttpServer, web};
use anyhow::Context as _;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument as _;

/// The SFU and what signaling connections share. Fixed media ports are checked here, so a
/// taken one stops the start with a message that names it and its setting instead of
/// failing the first call.
async fn start_signaling(
    config: &Config,
    listen: SocketAddr,
    public_url: &str,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> anyhow::Result<crate::edge::signaling::Signaling> {
    config.calls.check_node_url().map_err(anyhow::Error::msg)?;
    // The web client follows a redirect only to its own origin (its CSP allows no other).
    let host = |u: &str| {
        oauth2::url::Url::parse(u)
            .ok()
            .map(|u| (u.host_str().map(str::to_owned), u.port_or_known_default()))
    };
    if let Some(node_url) = &config.calls.node_url
        && host(node_url) != host(public_url)
    {
        tracing::warn!(
            node_url,
            public_url,
            "calls.node_url is not on the public URL's host and port: browsers will not follow redirects to it"
        );
    }
    let addrs = config.calls.media_addrs(listen);
    for addr in &addrs {
        if addr.ip().is_unspecified() {
            anyhow::bail!(
                "media address {addr} is a wildcard (setting calls.media_udp / NEULBI_MEDIA_UDP): \
                 name the interface address browsers reach"
            );
        }
        if addr.port() != 0 {
            std::net::UdpSocket::bind(addr).with_context(|| {
                format!("media UDP port {addr} is not available (setting calls.media_udp / NEULBI_MEDIA_UDP)")
            })?;
        }
    }
    let sfu = crate::media::Sfu::new(crate::media::MediaSettings {
        udp_addrs: addrs,
        stall_after: Duration::from_secs(config.calls.stall_secs.max(1)),
        public_ips: config.calls.media_public_ips.clone(),
        ..crate::media::MediaSettings::default()
    })
    .context("starting the media server")?;
    let turn_settings = &config.media.turn;
    let turn = if turn_settings.external.is_some() {
        crate::edge::signaling::Turn::External(turn_settings.clone())
    } else if !turn_settings.secret.is_empty() {
        // `turns:` URLs name the host the certificate is for: the public URL's, by default.
        let mut turn_settings = turn_settings.clone();
        if turn_settings.tls_host.is_none() {
            turn_settings.tls_host = oauth2::url::Url::parse(public_url)
                .ok()
                .and_then(|u| u.host_str().map(str::to_owned));
        }
        // The error names the port and its setting when one is taken.
        let server = crate::media::turn::TurnServer::start_with_tls(&turn_settings, tls)
            .await
            .context("starting the embedded TURN server")?;
        crate::edge::signaling::Turn::Embedded(server)
    } else {
        crate::edge::signaling::Turn::None
    };
    Ok(crate::edge::signaling::Signaling {
        sfu,
        settings: config.calls.clone(),
        allowed_origins: config.chat.allowed_origins.clone(),
        turn,
    })
}

/// A node that is bound and ready to run.
pub struct Application {
    server: Server,
    state: web::Data<AppState>,
    auth: web::Data<crate::auth::AuthService>,
    images: web::Data<crate::blob::Images>,
    addr: SocketAddr,
    store: SharedStore,
    public_url: String,
    projections: Arc<projections::runtime::Running>,
    broker: Arc<crate::edge::stomp::broker::Broker>,
    /// Servers beside the main one: the `/metrics` listener and the HTTPS redirect.
    side: Vec<Server>,
    /// The separate `/metrics` listener (`NEULBI_METRICS_LISTEN`), if configured.
    metrics_addr: Option<SocketAddr>,
    /// The plain-HTTP listener redirecting to HTTPS (`NEULBI_TLS_REDIRECT_LISTEN`), if any.
    redirect_addr: Option<SocketAddr>,
}

/// Binds the plain-HTTP listener that sends every request to HTTPS (308 keeps the method).
fn redirect_server(
    addr: SocketAddr,
    public_url: Option<String>,
    https_port: u16,
) -> anyhow::Result<(Server, SocketAddr)> {
    let listener = TcpListener::bind(addr).with_context(|| {
        format!("binding the HTTPS redirect listener {addr} (NEULBI_TLS_REDIRECT_LISTEN)")
    })?;
    let bound = listener.local_addr()?;
    let server = HttpServer::new(move || {
        let public_url = public_url.clone();
        App::new().default_service(web::to(move |req: actix_web::HttpRequest| {
            let target = crate::edge::tls::redirect_target(
                public_url.as_deref(),
                req.headers()
                    .get(actix_web::http::header::HOST)
                    .and_then(|h| h.to_str().ok()),
                https_port,
                req.uri()
                    .path_and_query()
                    .map_or("/", |p| p.as_str()),
            );
            async move {
                match target {
                    Some(location) => actix_web::HttpResponse::PermanentRedirect()
                        .insert_header((actix_web::http::header::LOCATION, location))
                        .finish(),
                    None => actix_web::HttpResponse::BadRequest()
                        .json(serde_json::json!({"error": {"code": "bad_host", "message": "a Host header naming this server is required"}})),
                }
            }
        }))
    })
    .workers(1)
    .shutdown_timeout(1)
    .listen(listener)?
    .run();
    Ok((server, bound))
}

/// How often the TURN allocation gauge is sampled (the relay counts them on request).
const TURN_SAMPLE: Duration = Duration::from_secs(5);

/// Binds the separate `/metrics` listener: the probes and metrics, nothing else.
fn metrics_server(
    addr: SocketAddr,
    state: web::Data<AppState>,
) -> anyhow::Result<(Server, SocketAddr)> {
    let listener = TcpListener::bind(addr)
        .with_context(|| format!("binding the metrics listener {addr} (NEULBI_METRICS_LISTEN)"))?;
    let bound = listener.local_addr()?;
    let server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .route("/metrics", web::get().to(http::health::metrics))
            // The probes too: a private port for everything an orchestrator polls.
            .route("/healthz", web::get().to(http::health::healthz))
            .route("/readyz", web::get().to(http::health::readyz))
            .default_service(web::to(http::not_found))
    })
    .workers(1)
    .shutdown_timeout(1)
    .listen(listener)?
    .run();
    Ok((server, bound))
}

/// Stops a running node gracefully: open STOMP connections are told and closed first, so the
/// HTTP server's graceful shutdown does not wait for them until its timeout.
#[derive(Clone)]
pub struct Stopper {
    server: ServerHandle,
    broker: Arc<crate::edge::stomp::broker::Broker>,
}

impl Stopper {
    /// Closes every STOMP connection, then stops the server (waiting for in-flight requests
    /// when `graceful`).
    pub async fn stop(&self, graceful: bool) {
        self.broker.shutdown();
        self.server.stop(graceful).await;
    }
}

impl Application {
    /// Opens the store (migrating if configured), binds the listener and builds the server.
    pub async fn build(config: &Config) -> anyhow::Result<Self> {
        // The node's meter first: the log and the projectors record into it once it exists.
        crate::telemetry::metrics::metrics();
        let url = config.database_url();
        let storage = config
            .open_storage(config.store.auto_migrate)
            .await
            .with_context(|| format!("opening the event store at {}", store::redact_url(&url)))?;
        let store = storage.events.clone();
        let read_url = projections::db::read_model_url(&config.state_url());
        let read = ReadDb::connect(&read_url)
            .await
            .with_context(|| {
                format!(
                    "opening the read models at {}",
                    store::redact_url(&read_url)
                )
            })?
            // Personal values in the read models are sealed; queries open them with these.
            .with_keys(Some(storage.keys.clone()));
        let running = projections::runtime::Running::start(store.clone(), read.clone())
            .await
            .context("starting the projectors")?;
        let listener = TcpListener::bind(config.listen)
            .with_context(|| format!("binding {}", config.listen))?;
        let addr = listener.local_addr()?;
        let public_url = config.public_url(addr);
        let state = web::Data::from(Arc::new(AppState::new(
            store.clone(),
            config,
            public_url.clone(),
            read,
            running.clone(),
        )));
        let images = web::Data::new(
            crate::blob::Images::open(&config.images, &config.data_dir, &public_url, store.clone())
                .await
                .context("opening the image store")?,
        );
        // The sweeper reads what is referenced from the `images` read model, so it needs the
        // read models with their keys, not just the log.
        Arc::new(crate::blob::Sweeper::new(
            images.blobs().clone(),
            store.clone(),
            state.read.clone(),
            &config.images,
        ))
        .spawn();
        let auth = web::Data::new(
            crate::auth::AuthService::open(&config.auth, &storage, &public_url)
                .await
                .context("starting sign-in")?,
        );
        // Revocations from before this start, then the live feed: a restarted node refuses
        // revoked access tokens before it serves its first request.
        auth.epochs()
            .follow(storage.raw.clone())
            .await
            .context("rebuilding the token epochs from the log")?;
        // Security records (failed sign-ins, token reuse) go to the user streams and the
        // security journal off the request path.
        if let Some(mut feed) = auth.take_security_feed() {
            let state = state.clone();
            let journal = crate::actors::Registry::<neulbi_domain::system::SystemDecider>::new(
                storage.events.clone(),
                crate::actors::RegistryConfig::default(),
            );
            actix_web::rt::spawn(async move {
                while let Some(record) = feed.recv().await {
                    let now = chrono::Utc::now();
                    let ctx = neulbi_domain::Context::new(neulbi_domain::Actor::system(), now);
                    let meta = crate::store::Metadata::default();
                    let result = match record {
                        crate::auth::SecurityRecord::User(user, command) => {
                            let span = tracing::info_span!("security_record", user_id = %user);
                            state
                                .users
                                .execute(user, command, ctx, meta)
                                .instrument(span)
                                .await
                                .map(drop)
                        }
                        crate::auth::SecurityRecord::Journal(command) => {
                            let id = neulbi_domain::system::journal_for(now);
                            let span = tracing::info_span!("security_journal", stream_id = %id);
                            journal
                                .execute(id, command, ctx, meta)
                                .instrument(span)
                                .await
                                .map(drop)
                        }
                    };
                    if let Err(e) = result {
                        tracing::warn!(error = %e, "security record not stored");
                    }
                }
            });
        }
        // Demo accounts only where nobody configured a database: the embedded default.
        if config
            .auth
            .seed_demo_users
            .unwrap_or(config.database_url.is_none())
        {
            auth.seed_demo_users(&state.users)
                .await
                .context("seeding the demo users")?;
        }
        let (state_data, auth_data, images_data) = (state.clone(), auth.clone(), images.clone());
        // Room messages for STOMP subscribers, from the log's live feed.
        let broker_arc =
            crate::edge::stomp::broker::Broker::start(store.clone(), Some(state.read.clone()))
                .await;
        let broker = web::Data::from(broker_arc.clone());
        // HTTPS from the PEM files, checked now (a broken certificate stops the start), then
        // watched for renewals.
        let tls = if config.tls.enabled() {
            let reloader = crate::edge::tls::CertReloader::open(&config.tls)
                .context("loading the TLS certificate (tls.cert_file / tls.key_file)")?;
            reloader.watch(Duration::from_secs(config.tls.reload_secs.max(1)));
            let server_config = reloader.server_config().context("configuring TLS")?;
            Some((reloader, server_config))
        } else {
            None
        };
        let signaling = web::Data::new(
            start_signaling(
                config,
                addr,
                &public_url,
                tls.as_ref().map(|(_, c)| Arc::new(c.clone())),
            )
            .await?,
        );
        if let crate::edge::signaling::Turn::Embedded(_) = &signaling.turn {
            // Weak: the sampler must not keep the relay (and its ports) alive.
            let signaling = Arc::downgrade(&signaling.clone().into_inner());
            actix_web::rt::spawn(async move {
                let mut every = tokio::time::interval(TURN_SAMPLE);
                loop {
                    every.tick().await;
                    let Some(signaling) = signaling.upgrade() else {
                        return;
                    };
                    if let crate::edge::signaling::Turn::Embedded(turn) = &signaling.turn {
                        let n = turn.allocations().await.len() as u64;
                        crate::telemetry::metrics::metrics()
                            .turn_allocations
                            .record(n, &[]);
                    }
                }
            });
        }
        let stomp = web::Data::new(config.chat.stomp_config());
        let sockjs = web::Data::new(crate::edge::stomp::sockjs::SockJs::new(&config.chat));
        let metrics = config
            .metrics_listen
            .map(|at| metrics_server(at, state.clone()))
            .transpose()?;
        let metrics_here = metrics.is_none();
        let hsts = config.tls.hsts().filter(|_| tls.is_some());
        let redirect = match config.tls.redirect_listen.filter(|_| tls.is_some()) {
            Some(at) => Some(redirect_server(at, config.public_url.clone(), addr.port())?),
            None => None,
        };
        let trusted = web::Data::new(crate::edge::http::client_ip::TrustedProxies(
            config.trusted_proxies.clone(),
        ));
        let builder = HttpServer::new(move || {
            App::new()
                .app_data(trusted.clone())
                .app_data(stomp.clone())
                .app_data(state.clone())
                .app_data(auth_data.clone())
                .app_data(images_data.clone())
                .app_data(broker.clone())
                .app_data(signaling.clone())
                .wrap(from_fn(http::trace::request_span))
                .wrap(actix_web::middleware::Condition::new(
                    hsts.is_some(),
                    actix_web::middleware::DefaultHeaders::new().add((
                        actix_web::http::header::STRICT_TRANSPORT_SECURITY,
                        hsts.clone().unwrap_or_default(),
                    )),
                ))
                .configure(http::configure)
                .configure(|cfg| {
                    if metrics_here {
                        cfg.route("/metrics", web::get().to(http::health::metrics));
                    }
                })
                .configure(crate::edge::stomp::websocket::configure)
                .configure(crate::edge::signaling::driver::configure)
                .configure(|cfg| crate::edge::stomp::sockjs::routes::configure(cfg, sockjs.clone()))
                .default_service(web::to(http::not_found))
        })
        .shutdown_timeout(config.shutdown_timeout_secs)
        // A client that closes its side is gone: drop its response at once, so a SockJS
        // long-poll or stream whose browser vanished ends its session now, not at the next
        // heart-beat write.
        .h1_allow_half_closed(false)
        .client_request_timeout(Duration::from_secs(10))
        // Chat frames are small and latency-bound: Nagle's algorithm would hold a MESSAGE
        // written right after a RECEIPT until the client's delayed ACK (~40 ms).
        .tcp_nodelay(true);
        let server = match tls {
            Some((_, server_config)) => builder.listen_rustls_0_23(listener, server_config)?,
            None => builder.listen(listener)?,
        }
        .run();
        let (metrics_addr, redirect_addr) = (
            metrics.as_ref().map(|m| m.1),
            redirect.as_ref().map(|r| r.1),
        );
        let side = metrics
            .into_iter()
            .chain(redirect)
            .map(|(s, _)| s)
            .collect();
        Ok(Self {
            server,
            state: state_data,
            auth,
            images,
            addr,
            store,
            public_url,
            projections: running,
            broker: broker_arc,
            side,
            metrics_addr,
            redirect_addr,
        })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where `/metrics` is served: the separate listener if configured, else the main one.
    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics_addr.unwrap_or(self.addr)
    }

    /// The plain-HTTP listener that redirects to HTTPS, if configured.
    pub fn redirect_addr(&self) -> Option<SocketAddr> {
        self.redirect_addr
    }

    /// The shared state of the handlers (registries), for tests and tools in-process.
    pub fn state(&self) -> web::Data<AppState> {
        self.state.clone()
    }

    /// The sign-in service, for tests and tools in-process.
    pub fn auth(&self) -> web::Data<crate::auth::AuthService> {
        self.auth.clone()
    }

    /// The profile-image service, for tests and tools in-process (e.g. to run a sweep).
    pub fn images(&self) -> web::Data<crate::blob::Images> {
        self.images.clone()
    }

    /// The URL of the web client.
    pub fn public_url(&self) -> &str {
        &self.public_url
    }

    /// A handle to stop the server from elsewhere (tests, signal handlers).
    pub fn handle(&self) -> ServerHandle {
        self.server.handle()
    }

    /// A handle that closes open STOMP connections before stopping the server; prefer it to
    /// [`Application::handle`] when clients may be connected.
    pub fn stopper(&self) -> Stopper {
        Stopper {
            server: self.server.handle(),
            broker: self.broker.clone(),
        }
    }

    /// Serves until SIGTERM/SIGINT (or `handle().stop()`), waits for in-flight requests, then
    /// closes the store so every acknowledged and queued append is durable before exit. On
    /// SIGTERM/SIGINT open STOMP connections get ERROR "server shutting down" and close, while
    /// actix (which listens for the same signals) stops the HTTP server.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let on_signal = tokio::spawn(close_stomp_on_signal(self.broker.clone()));
        let side: Vec<_> = self
            .side
            .into_iter()
            .map(|server| {
                let handle = server.handle();
                (actix_web::rt::spawn(server), handle)
            })
            .collect();
        let result = self.server.await;
        for (task, handle) in side {
            handle.stop(false).await;
            let _ = task.await;
        }
        on_signal.abort();
        // Whatever stopped the server, no STOMP connection outlives it.
        self.broker.shutdown();
        self.projections.stop().await;
        self.store.close().await;
        tracing::info!("stopped");
        result.context("HTTP server failed")
    }
}

/// Waits for SIGTERM or SIGINT, then closes every open STOMP connection.
async fn close_stomp_on_signal(broker: Arc<crate::edge::stomp::broker::Broker>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            tracing::warn!("STOMP: cannot listen for shutdown signals");
            return;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    }
    #[cfg(not(unix))]
    if tokio::signal::ctrl_c().await.is_err() {
        return;
    }
    tracing::info!("shutting down: closing STOMP connections");
    broker.shutdown();
}
