//! The last commits of this process, kept in memory for the readers that follow the log
//! live. Every commit is read back by each of them — the STOMP broker's feed, the token
//! epochs, every projector — and through the SQL drivers each read is a round trip to a
//! worker thread plus a JSON parse per row, once per reader. The writer hands its committed
//! events here instead (it still has them), and a read of the log's tail is served from
//! memory.
//!
//! Only what is certainly the log is served: a run of positions this process committed one
//! after another (another node's commit in between starts the run over), and "nothing
//! after this" only briefly after our last commit and only while no later head was
//! announced, so another node's commits are seen as soon as polling or a notification
//! would have shown them.

use super::RecordedEvent;
use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How many of the latest events are kept: a few seconds of chat at full load, so a reader
/// a little behind is still served from memory.
pub(crate) const RECENT_EVENTS: usize = 16_384;

/// How long after our last commit the tail counts as the log's end without asking the
/// database (another process may commit to the same log meanwhile).
pub(crate) const FRESH: Duration = Duration::from_millis(100);

/// A contiguous run of the latest committed events.
#[derive(Default)]
pub(crate) struct Recent {
    inner: Mutex<Run>,
}

#[derive(Default)]
struct Run {
    events: VecDeque<RecordedEvent>,
    /// When the last event was committed.
    at: Option<Instant>,
}

impl Recent {
    /// Adds a commit's events (in position order). A commit that does not follow the last
    /// one (another node wrote in between) starts the run over.
    pub(crate) fn push(&self, events: Vec<RecordedEvent>) {
        let Some(first) = events.first() else {
            return;
        };
        let mut run = self.lock();
        if run
            .events
            .back()
            .is_some_and(|last| last.position + 1 != first.position)
        {
            run.events.clear();
        }
        run.events.extend(events);
        let excess = run.events.len().saturating_sub(RECENT_EVENTS);
        run.events.drain(..excess);
        run.at = Some(Instant::now());
    }

    /// Up to `limit` events from position `from`, if memory certainly holds what the log
    /// would answer; `None` sends the reader to the database. `announced` is the latest
    /// head this process heard of (its own commits and other nodes' notifications).
    pub(crate) fn page(
        &self,
        from: u64,
        limit: usize,
        announced: Option<u64>,
    ) -> Option<Vec<RecordedEvent>> {
        let run = self.lock();
        let first = run.events.front()?.position;
        let last = run.events.back()?.position;
        if from < first || limit == 0 {
            return None;
        }
        let start = usize::try_from(from - first).ok()?;
        let end = start.saturating_add(limit).min(run.events.len());
        // A page that reaches our last commit (or asks past it) also says "nothing after":
        // only true if no later head was announced and our commit is recent.
        let reaches_end = start.saturating_add(limit) > run.events.len();
        if reaches_end {
            let fresh = run.at.is_some_and(|at| at.elapsed() < FRESH);
            if !fresh || announced.is_some_and(|h| h > last) || from > last + 1 {
                return None;
            }
        }
        Some(run.events.range(start.min(end)..end).cloned().collect())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Run> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use neulbi_domain::{StreamKind, StreamName};
    use uuid::Uuid;

    fn ev(position: u64) -> RecordedEvent {
        RecordedEvent {
            position,
            stream: StreamName::new(StreamKind::Room, Uuid::from_u128(1)),
            version: position,
            event_id: Uuid::from_u128(u128::from(position) + 100),
            event_type: "T".into(),
            schema_version: 1,
            data: serde_json::json!({ "n": position }),
            metadata: Default::default(),
            recorded_at: Utc::now(),
        }
    }

    fn positions(page: Option<Vec<RecordedEvent>>) -> Option<Vec<u64>> {
        page.map(|p| p.iter().map(|e| e.position).collect())
    }

    #[test]
    fn serves_the_tail_it_holds_and_sends_older_reads_to_the_database() {
        let recent = Recent::default();
        assert_eq!(
            positions(recent.page(0, 10, None)),
            None,
            "empty: ask the database"
        );
        recent.push((5..8).map(ev).collect());
        recent.push((8..10).map(ev).collect());
        assert_eq!(
            positions(recent.page(4, 10, Some(9))),
            None,
            "older than the run"
        );
        assert_eq!(positions(recent.page(5, 2, Some(9))), Some(vec![5, 6]));
        assert_eq!(positions(recent.page(7, 10, Some(9))), Some(vec![7, 8, 9]));
        assert_eq!(
            positions(recent.page(10, 10, Some(9))),
            Some(vec![]),
            "caught up"
        );
        assert_eq!(
            positions(recent.page(11, 10, Some(9))),
            None,
            "past the head"
        );
    }

    #[test]
    fn another_nodes_commit_starts_the_run_over_and_a_later_head_goes_to_the_database() {
        let recent = Recent::default();
        recent.push((0..3).map(ev).collect());
        // Another node committed 3 and 4; we commit 5.
        assert_eq!(positions(recent.page(3, 10, Some(4))), None);
        recent.push(vec![ev(5)]);
        assert_eq!(
            positions(recent.page(0, 10, Some(5))),
            None,
            "the run starts at 5"
        );
        assert_eq!(positions(recent.page(5, 10, Some(5))), Some(vec![5]));
        assert_eq!(
            positions(recent.page(5, 1, Some(7))),
            Some(vec![5]),
            "a full page is fine"
        );
        assert_eq!(
            positions(recent.page(5, 10, Some(7))),
            None,
            "7 was announced"
        );
    }

    #[test]
    fn the_end_of_the_run_is_trusted_only_briefly() {
        let recent = Recent::default();
        recent.push((0..3).map(ev).collect());
        std::thread::sleep(FRESH + Duration::from_millis(20));
        assert_eq!(positions(recent.page(0, 2, Some(2))), Some(vec![0, 1]));
        assert_eq!(
            positions(recent.page(0, 10, Some(2))),
            None,
            "another process may have written"
        );
        assert_eq!(positions(recent.page(3, 10, Some(2))), None);
    }

    #[test]
    fn keeps_only_the_latest_events() {
        let recent = Recent::default();
        let n = RECENT_EVENTS as u64;
        recent.push((0..n).map(ev).collect());
        recent.push((n..n + 10).map(ev).collect());
        assert_eq!(positions(recent.page(9, 1, None)), None);
        assert_eq!(positions(recent.page(10, 1, None)), Some(vec![10]));
    }
}
