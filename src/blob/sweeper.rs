//! The sweeper: deletes blobs that no user's current state references and that are older
//! than a grace period. They are left by a crash between storing a blob and recording it, by
//! a delete that failed, and by deactivations (which leave the blobs to the sweeper).
//!
//! What is referenced comes from the `images` read model ([`crate::projections::images`]),
//! not from the log, so a sweep costs the number of blobs and of users with an image however
//! long the log grows. Two guards keep a referenced blob alive:
//! - The read model must have applied the log up to its head as read when the sweep starts:
//!   every image recorded before the sweep is then in it (the projector's checkpoint and its
//!   rows are read in one snapshot, so a rebuild cannot slip in between). The sweep waits up
//!   to `sweep_wait_secs` for that, and otherwise deletes nothing ([`SweepError::Behind`]).
//! - An upload recorded after that head stored its blobs just before its event, so they are
//!   younger than `sweep_grace_secs` and spared.

use super::{BlobError, ImageSettings, SharedBlobStore};
use crate::projections::{self, ProjectionError, ReadDb, queries, runtime};
use crate::store::{SharedStore, StoreError};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use thiserror::Error;
use tracing::Instrument;

/// How often a sweep looks again whether the read model has caught up.
const POLL: Duration = Duration::from_millis(100);

/// Why a sweep did not run to the end. Nothing referenced is deleted in any case; the next
/// sweep starts over.
#[derive(Debug, Error)]
pub enum SweepError {
    /// The `images` read model had not applied the log up to where it stood when the sweep
    /// started, within the wait; nothing was deleted. Handling: none, the next sweep tries
    /// again; if it keeps happening the `images` projector is stalled or not running
    /// (`neulbi projections status`).
    #[error(
        "the images read model is behind the log (at position {position}, needs {needed}); nothing swept"
    )]
    Behind {
        /// The projector's checkpoint: the next log position it will apply.
        position: u64,
        /// One past the log's head when the sweep started.
        needed: u64,
    },
    /// Reading the log's head failed. Handling: the next sweep retries.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Reading the read model failed, or a stored key did not open. Handling: the next sweep
    /// retries; a key that does not open means a tampered read model (rebuild it).
    #[error(transparent)]
    ReadModel(#[from] ProjectionError),
    /// The blob store failed. Handling: the next sweep retries.
    #[error(transparent)]
    Blob(#[from] BlobError),
}

/// What one sweep did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// Blobs the current state of some user references.
    pub referenced: usize,
    /// Unreferenced blobs deleted.
    pub deleted: usize,
    /// Unreferenced blobs spared because they are younger than the grace period.
    pub spared: usize,
}

/// Sweeps one blob store against the read models of one log.
pub struct Sweeper {
    blobs: SharedBlobStore,
    store: SharedStore,
    read: ReadDb,
    grace: Duration,
    wait: Duration,
    interval: Duration,
}

impl Sweeper {
    /// A sweeper over `blobs`; `store` is the log whose head the read models `read` must have
    /// reached (`read` needs the data keys: the stored image keys are sealed).
    pub fn new(
        blobs: SharedBlobStore,
        store: SharedStore,
        read: ReadDb,
        settings: &ImageSettings,
    ) -> Self {
        Self {
            blobs,
            store,
            read,
            grace: Duration::from_secs(settings.sweep_grace_secs),
            wait: Duration::from_secs(settings.sweep_wait_secs),
            interval: Duration::from_secs(settings.sweep_interval_secs),
        }
    }

    /// Deletes every blob that no user's current state references and that is older than
    /// the grace period (as of `now`). Erased and deactivated users reference nothing.
    pub async fn sweep(&self, now: SystemTime) -> Result<SweepReport, SweepError> {
        let span = tracing::info_span!("image_sweep");
        async {
            let referenced = self.referenced().await?;
            let mut report = SweepReport::default();
            for blob in self.blobs.list().await? {
                if referenced.contains(&blob.key) {
                    report.referenced += 1;
                    continue;
                }
                let age = now.duration_since(blob.modified).unwrap_or_default();
                if age < self.grace {
                    report.spared += 1;
                    continue;
                }
                self.blobs.delete(&blob.key).await?;
                report.deleted += 1;
            }
            if report.deleted > 0 {
                tracing::info!(deleted = report.deleted, "swept unreferenced image blobs");
            }
            Ok(report)
        }
        .instrument(span)
        .await
    }

    /// Runs [`Sweeper::sweep`] every `sweep_interval_secs` (not at all when 0) on the current
    /// runtime, for the life of the process.
    pub fn spawn(self: Arc<Self>) {
        if self.interval.is_zero() {
            return;
        }
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(self.interval);
            tick.tick().await;
            loop {
                tick.tick().await;
                match self.sweep(SystemTime::now()).await {
                    Ok(_) => {}
                    Err(e @ SweepError::Behind { .. }) => {
                        tracing::warn!(error = %e, "image sweep skipped");
                    }
                    Err(e) => tracing::warn!(error = %e, "image sweep failed"),
                }
            }
        });
    }

    /// The keys referenced as of a read model that has applied at least the log's current
    /// head, waiting up to the configured time for the projector to get there.
    async fn referenced(&self) -> Result<HashSet<String>, SweepError> {
        let needed = self.store.head_position().await?.map_or(0, |h| h + 1);
        let deadline = tokio::time::Instant::now() + self.wait;
        loop {
            // The checkpoint alone is cheap; the keys are read and opened once it is there.
            let position = runtime::checkpoint(&self.read, projections::images::DEF.name)
                .await?
                .map_or(0, |(p, _)| p);
            if position >= needed {
                let found = queries::image_keys(&self.read).await?;
                // Behind again only if a version change restarted it between the two reads.
                if found.position >= needed {
                    return Ok(found.keys);
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(SweepError::Behind { position, needed });
            }
            tokio::time::sleep(POLL).await;
        }
    }
}
