//! The projectors' instruments (position, lag, stalls, rebuild progress), recorded into the
//! node's meter once the node installs it ([`install`]); no-ops before that.

use neulbi_store::metrics::Instruments;
use opentelemetry::metrics::{Counter, Gauge, Meter};

pub use neulbi_store::metrics::label;

/// The projectors' instruments, labelled by projector name.
pub struct ProjectorMetrics {
    /// The next log position each projector will apply.
    pub projector_position: Gauge<u64>,
    /// Events between the log's head and each projector.
    pub projector_lag_events: Gauge<u64>,
    /// Age of the oldest event a projector has not applied yet (0 when caught up).
    pub projector_lag_seconds: Gauge<f64>,
    /// 1 while a projector is stalled on an event it cannot apply.
    pub projector_stalled: Gauge<u64>,
    /// Events applied by each projector.
    pub projector_events: Counter<u64>,
    /// A running rebuild's progress, 0 to 1.
    pub rebuild_progress: Gauge<f64>,
}

impl ProjectorMetrics {
    fn new(m: &Meter) -> Self {
        Self {
            projector_position: m
                .u64_gauge("neulbi.projector.position")
                .with_description("The next log position the projector will apply")
                .build(),
            projector_lag_events: m
                .u64_gauge("neulbi.projector.lag.events")
                .with_description("Events between the log's head and the projector")
                .build(),
            projector_lag_seconds: m
                .f64_gauge("neulbi.projector.lag")
                .with_unit("s")
                .with_description("Age of the oldest event the projector has not applied")
                .build(),
            projector_stalled: m
                .u64_gauge("neulbi.projector.stalled")
                .with_description("1 while the projector is stalled on an event it cannot apply")
                .build(),
            projector_events: m
                .u64_counter("neulbi.projector.events")
                .with_description("Events applied by the projector")
                .build(),
            rebuild_progress: m
                .f64_gauge("neulbi.projector.rebuild.progress")
                .with_description("A running rebuild's progress from 0 to 1")
                .build(),
        }
    }
}

static PROJECTORS: Instruments<ProjectorMetrics> = Instruments::new(ProjectorMetrics::new);

/// Records the projectors' instruments into `meter` (the node's) from now on; only the
/// first call counts.
pub fn install(meter: &Meter) -> bool {
    PROJECTORS.install(meter)
}

/// The projectors' instruments.
pub fn metrics() -> &'static ProjectorMetrics {
    PROJECTORS.get()
}
