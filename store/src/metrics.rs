//! The log's own instruments (appends, group commits), recorded into the node's meter.
//!
//! The node (the root crate) owns the meter provider and its `/metrics` registry, and hands
//! its meter to [`install`] at start; until then, and in programs that never install one
//! (tests, tools), records go to a no-op meter. Names follow the node's conventions
//! (`neulbi.store.append.duration` in seconds becomes
//! `neulbi_store_append_duration_seconds`).

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Histogram, Meter};
use std::sync::OnceLock;

/// Latency buckets in seconds, from half a millisecond (a cached read) to thirty seconds (a
/// stalled database). Every latency histogram of the node uses them.
pub const SECONDS: [f64; 15] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Powers of two up to the largest group commit.
pub const SIZES: [f64; 12] = [
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 4096.0,
];

/// A label from a bounded set (never an id, a raw path or a personal value).
pub fn label(key: &'static str, value: &'static str) -> KeyValue {
    KeyValue::new(key, value)
}

/// A latency histogram in seconds with the node's buckets.
pub fn seconds(m: &Meter, name: &'static str, help: &'static str) -> Histogram<f64> {
    m.f64_histogram(name)
        .with_unit("s")
        .with_description(help)
        .with_boundaries(SECONDS.to_vec())
        .build()
}

/// The event log's instruments.
pub struct StoreMetrics {
    /// Appends by backend and outcome (`ok`, `conflict`, `error`).
    pub appends: Counter<u64>,
    /// Events written by committed appends.
    pub events_appended: Counter<u64>,
    /// From queueing an append to its durable commit.
    pub append_duration: Histogram<f64>,
    /// Appends folded into one transaction.
    pub group_size: Histogram<u64>,
    /// One group's transaction, commit (and its fsync) included.
    pub commit_duration: Histogram<f64>,
}

impl StoreMetrics {
    fn new(m: &Meter) -> Self {
        Self {
            appends: m
                .u64_counter("neulbi.store.appends")
                .with_description("Appends to the event log by backend and outcome")
                .build(),
            events_appended: m
                .u64_counter("neulbi.store.events_appended")
                .with_description("Events written by committed appends")
                .build(),
            append_duration: seconds(
                m,
                "neulbi.store.append.duration",
                "From queueing an append to its durable commit",
            ),
            group_size: m
                .u64_histogram("neulbi.store.commit.group_size")
                .with_description("Appends folded into one durable transaction")
                .with_boundaries(SIZES.to_vec())
                .build(),
            commit_duration: seconds(
                m,
                "neulbi.store.commit.duration",
                "One group commit's transaction, fsync included",
            ),
        }
    }
}

/// A crate's set of instruments, built on the node's meter once it is installed and on a
/// no-op meter before that. Records made before [`Instruments::install`] are dropped, and
/// installing still works after them.
pub struct Instruments<T> {
    installed: OnceLock<T>,
    uninstalled: OnceLock<T>,
    build: fn(&Meter) -> T,
}

impl<T> Instruments<T> {
    /// Instruments that `build` creates on a meter.
    pub const fn new(build: fn(&Meter) -> T) -> Self {
        Self {
            installed: OnceLock::new(),
            uninstalled: OnceLock::new(),
            build,
        }
    }

    /// Records into `meter` from now on. Only the first call counts; returns whether this
    /// one did.
    pub fn install(&self, meter: &Meter) -> bool {
        let mut installed = false;
        self.installed.get_or_init(|| {
            installed = true;
            (self.build)(meter)
        });
        installed
    }

    /// The installed instruments, else no-ops.
    pub fn get(&self) -> &T {
        self.installed.get().unwrap_or_else(|| {
            self.uninstalled
                .get_or_init(|| (self.build)(&opentelemetry::global::meter("neulbi")))
        })
    }
}

static STORE: Instruments<StoreMetrics> = Instruments::new(StoreMetrics::new);

/// Records the log's instruments into `meter` (the node's) from now on; see
/// [`Instruments::install`].
pub fn install(meter: &Meter) -> bool {
    STORE.install(meter)
}

/// The log's instruments.
pub fn metrics() -> &'static StoreMetrics {
    STORE.get()
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::metrics::MeterProvider;
    use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData};
    use opentelemetry_sdk::metrics::{InMemoryMetricExporter, PeriodicReader, SdkMeterProvider};

    #[test]
    fn records_reach_the_meter_installed_after_a_first_use() {
        static SET: Instruments<Counter<u64>> =
            Instruments::new(|m| m.u64_counter("neulbi.test.counted").build());
        // Used before the node installs its meter: a no-op, not a panic, and not stuck.
        SET.get().add(1, &[]);
        let exporter = InMemoryMetricExporter::default();
        let provider = SdkMeterProvider::builder()
            .with_reader(PeriodicReader::builder(exporter.clone()).build())
            .build();
        assert!(SET.install(&provider.meter("neulbi")));
        assert!(
            !SET.install(&provider.meter("neulbi")),
            "only the first install counts"
        );
        SET.get().add(2, &[]);
        provider.force_flush().expect("flush");
        let exported = exporter.get_finished_metrics().expect("metrics");
        let sums: Vec<(String, u64)> = exported
            .iter()
            .flat_map(|r| r.scope_metrics())
            .flat_map(|s| s.metrics())
            .map(|m| {
                let total = match m.data() {
                    AggregatedMetrics::U64(MetricData::Sum(sum)) => {
                        sum.data_points().map(|p| p.value()).sum()
                    }
                    _ => 0,
                };
                (m.name().to_owned(), total)
            })
            .collect();
        // The record made before the install went nowhere; the one after it counts.
        assert_eq!(sums, [("neulbi.test.counted".to_owned(), 2)]);
    }
}
