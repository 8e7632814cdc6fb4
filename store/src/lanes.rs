//! Threads of their own for background work, so it never queues behind, or in front of, the
//! commands on the actor thread: the projectors catching up with the log, and the chat
//! broker fanning the live feed out to connections. Each lane is one thread running a
//! single-threaded tokio runtime for the life of the process, so database connections a lane
//! opens stay usable from every other thread.

use std::sync::OnceLock;
use tokio::runtime::Handle;

/// A background thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    /// The projector loops (read models).
    Projections,
    /// The chat broker's live feed.
    Deliveries,
}

impl Lane {
    fn name(self) -> &'static str {
        match self {
            Lane::Projections => "neulbi-projections",
            Lane::Deliveries => "neulbi-deliveries",
        }
    }
}

/// Runs `future` on `lane`'s thread. If the thread could not be started, the future runs on
/// the caller's runtime instead (slower under load, but correct).
pub fn spawn<F>(lane: Lane, future: F) -> tokio::task::JoinHandle<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    static PROJECTIONS: OnceLock<Option<Handle>> = OnceLock::new();
    static DELIVERIES: OnceLock<Option<Handle>> = OnceLock::new();
    let cell = match lane {
        Lane::Projections => &PROJECTIONS,
        Lane::Deliveries => &DELIVERIES,
    };
    match cell.get_or_init(|| start(lane)) {
        Some(handle) => handle.spawn(future),
        None => tokio::spawn(future),
    }
}

fn start(lane: Lane) -> Option<Handle> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    let started = runtime.and_then(|runtime| {
        let handle = runtime.handle().clone();
        std::thread::Builder::new()
            .name(lane.name().into())
            .spawn(move || runtime.block_on(std::future::pending::<()>()))
            .map(|_| handle)
    });
    match started {
        Ok(handle) => Some(handle),
        Err(error) => {
            tracing::warn!(lane = lane.name(), %error, "no thread for the lane; sharing the caller's");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn each_lane_runs_on_its_own_named_thread() {
        for lane in [Lane::Projections, Lane::Deliveries] {
            let name = spawn(lane, async {
                std::thread::current().name().map(str::to_owned)
            })
            .await
            .expect("join");
            assert_eq!(name.as_deref(), Some(lane.name()));
        }
    }
}
