//! The node's metrics: OpenTelemetry instruments, read at `/metrics` in the Prometheus text
//! format. One set per process, so every subsystem records into the same registry without
//! passing handles around, and a scrape sees the whole node.
//!
//! Names follow Prometheus conventions once exported (`neulbi.store.append.duration` with
//! unit `s` becomes `neulbi_store_append_duration_seconds`; counters gain `_total`). Labels
//! are bounded sets (backend, kind, transport, route pattern, outcome): never an id, a raw
//! path or a personal value. Series an operator's dashboard plots are created at zero on
//! start, so a panel shows 0 rather than "no data" before the first event.

use opentelemetry::metrics::{Counter, Gauge, Histogram, Meter, MeterProvider, UpDownCounter};
use opentelemetry_sdk::metrics::SdkMeterProvider;
use std::sync::OnceLock;

pub use neulbi_store::metrics::label;
use neulbi_store::metrics::{SIZES, seconds};

/// The STOMP transports a session can arrive on (the `transport` label).
/// (A SockJS session may switch between its HTTP transports, so they count as one.)
pub const TRANSPORTS: [&str; 3] = ["websocket", "sockjs-websocket", "sockjs-http"];

/// Every instrument of the node.
pub struct Metrics {
    /// The provider (kept so its reader stays registered).
    _provider: SdkMeterProvider,
    registry: prometheus::Registry,

    /// Commands handled by aggregate kind and outcome (`ok`, `unchanged`, `rejected`,
    /// `conflict`, `error`).
    pub commands: Counter<u64>,
    /// Events committed by aggregate kind and event type: the domain's flow (rooms opened,
    /// messages posted, calls requested, accepted, ended...).
    pub events_committed: Counter<u64>,
    /// Live aggregate actors by kind.
    pub actors_active: UpDownCounter<i64>,
    /// Idle actors stopped by kind.
    pub passivations: Counter<u64>,
    /// Commands refused because an actor's mailbox was full.
    pub busy_refusals: Counter<u64>,
    /// Messages already waiting when a command is queued.
    pub mailbox_depth: Histogram<u64>,

    /// Open STOMP sessions by transport.
    pub stomp_sessions: UpDownCounter<i64>,
    /// Active STOMP subscriptions.
    pub stomp_subscriptions: UpDownCounter<i64>,
    /// MESSAGE frames handed to sessions.
    pub stomp_deliveries: Counter<u64>,
    /// Sessions closed because they could not keep up.
    pub slow_consumers: Counter<u64>,
    /// From a SEND with a receipt to its RECEIPT (the append included).
    pub receipt_duration: Histogram<f64>,
    /// ERROR frames sent, by reason code.
    pub stomp_errors: Counter<u64>,

    /// Open `/rtc` signaling sessions.
    pub signaling_sessions: UpDownCounter<i64>,
    /// Calls with media on this node.
    pub calls_active: UpDownCounter<i64>,
    /// Published tracks the SFU forwards.
    pub sfu_tracks: UpDownCounter<i64>,
    /// RTP packets the SFU forwarded to subscribers.
    pub sfu_packets: Counter<u64>,
    /// RTP payload bytes the SFU forwarded.
    pub sfu_bytes: Counter<u64>,
    /// RTP packets the SFU dropped (a subscriber too slow to take them, or its link down).
    pub sfu_dropped: Counter<u64>,
    /// Live TURN allocations on the embedded relay (sampled every few seconds).
    pub turn_allocations: Gauge<u64>,

    /// HTTP requests by route pattern, method and status.
    pub http_requests: Counter<u64>,
    /// HTTP request latency by route pattern and method.
    pub http_duration: Histogram<f64>,
    /// Sign-ins by provider (`password` or an identity provider) and outcome.
    pub sign_ins: Counter<u64>,
}

static METRICS: OnceLock<Metrics> = OnceLock::new();

/// The node's metrics, created on first use.
pub fn metrics() -> &'static Metrics {
    METRICS.get_or_init(Metrics::new)
}

/// The `/metrics` body: every instrument in the Prometheus text exposition format.
pub fn render() -> Result<String, prometheus::Error> {
    use prometheus::Encoder;
    let mut out = Vec::new();
    prometheus::TextEncoder::new().encode(&metrics().registry.gather(), &mut out)?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// The content type of [`render`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

impl Metrics {
    fn new() -> Self {
        let registry = prometheus::Registry::new();
        let builder = opentelemetry_prometheus::exporter()
            .with_registry(registry.clone())
            .without_target_info()
            .scope_info_enabled(false);
        let mut provider = SdkMeterProvider::builder().with_resource(super::otlp::resource());
        match builder.build() {
            Ok(exporter) => provider = provider.with_reader(exporter),
            Err(e) => {
                tracing::error!(error = %e, "metrics exporter unavailable; /metrics stays empty")
            }
        }
        // The same instruments over OTLP too, when an endpoint is configured.
        if super::otlp::metrics_configured() {
            match super::otlp::metric_reader() {
                Ok(reader) => provider = provider.with_reader(reader),
                Err(e) => tracing::error!(error = %e, "OTLP metrics export could not start"),
            }
        }
        let provider = provider.build();
        let m = provider.meter("neulbi");
        // The log's and the projectors' instruments live in their crates; they record into
        // this meter from now on.
        if !neulbi_store::metrics::install(&m) || !neulbi_projections::metrics::install(&m) {
            tracing::warn!("the log's or the projectors' metrics were installed twice");
        }
        let metrics = Self::instruments(&m, provider.clone(), registry);
        metrics.zero_series();
        metrics
    }

    fn instruments(m: &Meter, provider: SdkMeterProvider, registry: prometheus::Registry) -> Self {
        let seconds = |name, help| seconds(m, name, help);
        Self {
            _provider: provider,
            registry,
            commands: m
                .u64_counter("neulbi.commands")
                .with_description("Commands handled by aggregate kind and outcome")
                .build(),
            events_committed: m
                .u64_counter("neulbi.events.committed")
                .with_description("Events committed by aggregate kind and event type")
                .build(),
            actors_active: m
                .i64_up_down_counter("neulbi.actors.active")
                .with_description("Live aggregate actors by kind")
                .build(),
            passivations: m
                .u64_counter("neulbi.actors.passivations")
                .with_description("Idle aggregate actors stopped, by kind")
                .build(),
            busy_refusals: m
                .u64_counter("neulbi.actors.busy_refusals")
                .with_description("Commands refused because the actor's mailbox was full")
                .build(),
            mailbox_depth: m
                .u64_histogram("neulbi.actors.mailbox_depth")
                .with_description("Messages already queued when a command is sent to an actor")
                .with_boundaries(SIZES.to_vec())
                .build(),
            stomp_sessions: m
                .i64_up_down_counter("neulbi.stomp.sessions")
                .with_description("Open STOMP sessions by transport")
                .build(),
            stomp_subscriptions: m
                .i64_up_down_counter("neulbi.stomp.subscriptions")
                .with_description("Active STOMP subscriptions")
                .build(),
            stomp_deliveries: m
                .u64_counter("neulbi.stomp.deliveries")
                .with_description("MESSAGE frames handed to STOMP sessions")
                .build(),
            slow_consumers: m
                .u64_counter("neulbi.stomp.slow_consumer_disconnects")
                .with_description("STOMP sessions closed because they could not keep up")
                .build(),
            receipt_duration: seconds(
                "neulbi.stomp.receipt.duration",
                "From a SEND asking for a receipt to its RECEIPT, the append included",
            ),
            stomp_errors: m
                .u64_counter("neulbi.stomp.errors")
                .with_description("STOMP ERROR frames sent, by reason")
                .build(),
            signaling_sessions: m
                .i64_up_down_counter("neulbi.signaling.sessions")
                .with_description("Open /rtc signaling sessions")
                .build(),
            calls_active: m
                .i64_up_down_counter("neulbi.calls.active")
                .with_description("Calls with media on this node")
                .build(),
            sfu_tracks: m
                .i64_up_down_counter("neulbi.sfu.tracks")
                .with_description("Published tracks the SFU forwards")
                .build(),
            sfu_packets: m
                .u64_counter("neulbi.sfu.forwarded.packets")
                .with_description("RTP packets the SFU forwarded to subscribers")
                .build(),
            sfu_bytes: m
                .u64_counter("neulbi.sfu.forwarded")
                .with_unit("By")
                .with_description("RTP payload bytes the SFU forwarded to subscribers")
                .build(),
            sfu_dropped: m
                .u64_counter("neulbi.sfu.packets_dropped")
                .with_description(
                    "RTP packets the SFU dropped: a subscriber too slow, or its link down",
                )
                .build(),
            turn_allocations: m
                .u64_gauge("neulbi.turn.allocations")
                .with_description("Live allocations on the embedded TURN relay")
                .build(),
            http_requests: m
                .u64_counter("neulbi.http.requests")
                .with_description("HTTP requests by route pattern, method and status")
                .build(),
            http_duration: seconds(
                "neulbi.http.request.duration",
                "HTTP request latency by route pattern and method",
            ),
            sign_ins: m
                .u64_counter("neulbi.sign_ins")
                .with_description("Sign-ins by provider and outcome")
                .build(),
        }
    }

    /// Creates at zero the series dashboards and alerts read, so they show 0, not nothing.
    fn zero_series(&self) {
        for kind in ["user", "room", "call", "system"] {
            let k = [label("kind", kind)];
            for outcome in ["ok", "rejected"] {
                self.commands
                    .add(0, &[label("kind", kind), label("outcome", outcome)]);
            }
            self.actors_active.add(0, &k);
            self.passivations.add(0, &k);
            self.busy_refusals.add(0, &k);
        }
        for transport in TRANSPORTS {
            self.stomp_sessions.add(0, &[label("transport", transport)]);
        }
        self.stomp_subscriptions.add(0, &[]);
        self.stomp_deliveries.add(0, &[]);
        self.slow_consumers.add(0, &[]);
        self.signaling_sessions.add(0, &[]);
        self.calls_active.add(0, &[]);
        for event in ["Requested", "Accepted", "Declined", "Ended"] {
            self.events_committed
                .add(0, &[label("kind", "call"), label("type", event)]);
        }
        self.sfu_tracks.add(0, &[]);
        self.sfu_packets.add(0, &[]);
        self.sfu_bytes.add(0, &[]);
        self.sfu_dropped.add(0, &[]);
        self.turn_allocations.record(0, &[]);
        for outcome in ["ok", "failed"] {
            self.sign_ins.add(
                0,
                &[label("provider", "password"), label("outcome", outcome)],
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text_now() -> String {
        render().expect("render")
    }

    #[test]
    fn the_exposition_names_follow_prometheus_conventions() {
        let m = metrics();
        let store = neulbi_store::metrics::metrics();
        store
            .appends
            .add(1, &[label("backend", "sqlite"), label("outcome", "ok")]);
        store
            .append_duration
            .record(0.002, &[label("backend", "sqlite")]);
        m.sfu_bytes.add(10, &[]);
        let text = render().expect("render");
        assert!(
            text.contains("neulbi_store_appends_total{backend=\"sqlite\",outcome=\"ok\"}"),
            "{text}"
        );
        assert!(
            text.contains(
                "neulbi_store_append_duration_seconds_bucket{backend=\"sqlite\",le=\"0.0025\"}"
            ),
            "{text}"
        );
        assert!(text.contains("neulbi_sfu_forwarded_bytes_total"), "{text}");
        assert!(
            text.contains("neulbi_stomp_sessions{transport=\"sockjs-http\"} 0"),
            "{text}"
        );
        neulbi_projections::metrics::metrics()
            .projector_lag_seconds
            .record(1.5, &[label("projector", "rooms")]);
        assert!(
            text_now().contains("neulbi_projector_lag_seconds{projector=\"rooms\"} 1.5"),
            "{text}"
        );
        assert!(!text.contains("otel_scope"), "{text}");
        assert!(!text.contains("target_info"), "{text}");
    }
}
