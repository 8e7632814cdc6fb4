//! OTLP export (HTTP/protobuf) of traces and metrics, on only when an endpoint is configured
//! through the standard variables (`OTEL_EXPORTER_OTLP_ENDPOINT` or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`; `OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_SERVICE_NAME`,
//! `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER` and `OTEL_TRACES_SAMPLER_ARG` are honoured
//! by the SDK and the exporter themselves). Off, nothing here runs and spans cost what
//! `tracing` alone costs.
//!
//! Exports leave the request path: spans are batched on the SDK's own thread, and the HTTP
//! calls run on a small runtime of their own, so a slow collector never blocks an actix worker.

use opentelemetry::KeyValue;
use opentelemetry_http::{Bytes, HttpClient, HttpError, Request, Response};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// True when the environment names an OTLP endpoint (and the SDK is not disabled).
pub fn configured() -> bool {
    let set = |name: &str| std::env::var(name).is_ok_and(|v| !v.trim().is_empty());
    let disabled = std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.eq_ignore_ascii_case("true"));
    !disabled && (set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
}

/// True when metrics should also go out over OTLP.
pub fn metrics_configured() -> bool {
    let set = |name: &str| std::env::var(name).is_ok_and(|v| !v.trim().is_empty());
    configured() || set("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT")
}

/// This process's id in exported telemetry (`service.instance.id`): unique per start, so two
/// nodes (or a restarted one) are told apart.
pub fn node_id() -> &'static str {
    static ID: OnceLock<String> = OnceLock::new();
    ID.get_or_init(|| uuid::Uuid::now_v7().to_string())
}

/// Service name (`OTEL_SERVICE_NAME`, default `neulbi`), version and node id.
pub fn resource() -> Resource {
    let mut builder = Resource::builder().with_attributes([
        KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
        KeyValue::new("service.instance.id", node_id()),
    ]);
    if std::env::var("OTEL_SERVICE_NAME").is_err() {
        builder = builder.with_service_name("neulbi");
    }
    builder.build()
}

/// The tracer provider exporting to the configured endpoint.
pub fn tracer_provider() -> Result<SdkTracerProvider, opentelemetry_otlp::ExporterBuildError> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .with_http_client(ExportClient::new()?)
        .build()?;
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource())
        .build())
}

/// A reader that pushes the node's metrics to the configured endpoint every
/// `OTEL_METRIC_EXPORT_INTERVAL` (60 s by default).
pub fn metric_reader() -> Result<
    opentelemetry_sdk::metrics::PeriodicReader<opentelemetry_otlp::MetricExporter>,
    opentelemetry_otlp::ExporterBuildError,
> {
    let exporter = opentelemetry_otlp::MetricExporter::builder()
        .with_http()
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .with_http_client(ExportClient::new()?)
        .build()?;
    Ok(opentelemetry_sdk::metrics::PeriodicReader::builder(exporter).build())
}

/// The exporters' HTTP client: hyper, driven on a dedicated one-thread runtime (the SDK's
/// batch thread awaits the answer without a reactor of its own).
#[derive(Debug, Clone)]
struct ExportClient {
    inner: Arc<opentelemetry_http::hyper::HyperClient>,
    runtime: tokio::runtime::Handle,
}

impl ExportClient {
    fn new() -> Result<Self, opentelemetry_otlp::ExporterBuildError> {
        let runtime = export_runtime().cloned().ok_or_else(|| {
            opentelemetry_otlp::ExporterBuildError::InternalFailure(
                "the OTLP export thread could not start".into(),
            )
        })?;
        Ok(Self {
            inner: Arc::new(
                opentelemetry_http::hyper::HyperClient::with_default_connector(
                    export_timeout(),
                    None,
                ),
            ),
            runtime,
        })
    }
}

#[async_trait::async_trait]
impl HttpClient for ExportClient {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let inner = self.inner.clone();
        self.runtime
            .spawn(async move { inner.send_bytes(request).await })
            .await
            .map_err(|e| Box::new(e) as HttpError)?
    }
}

/// `OTEL_EXPORTER_OTLP_TIMEOUT` in milliseconds, 10 s by default.
fn export_timeout() -> Duration {
    std::env::var("OTEL_EXPORTER_OTLP_TIMEOUT")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map_or(Duration::from_secs(10), Duration::from_millis)
}

/// One worker thread for every export call of the process, started on first use; `None` if
/// it could not start (OTLP then stays off, with an error logged).
fn export_runtime() -> Option<&'static tokio::runtime::Handle> {
    static RUNTIME: OnceLock<Option<tokio::runtime::Handle>> = OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            let (tx, rx) = std::sync::mpsc::channel();
            // The runtime lives on its own thread for the rest of the process.
            let spawned = std::thread::Builder::new()
                .name("otlp-export".into())
                .spawn(move || {
                    match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(rt) => {
                            let _ = tx.send(Some(rt.handle().clone()));
                            rt.block_on(std::future::pending::<()>());
                        }
                        Err(_) => {
                            let _ = tx.send(None);
                        }
                    }
                });
            spawned.ok().and_then(|_| rx.recv().ok().flatten())
        })
        .as_ref()
}
