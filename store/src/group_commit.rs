//! Group commit: concurrent appends are queued to one writer task that folds them into a
//! single durable transaction, then answers each caller with its own result.
//!
//! This is how an fsync-bound log reaches high throughput without weakening acknowledgement:
//! every `append` still returns only after the transaction holding its events has committed,
//! and one append's rejection (wrong version, duplicate id) never affects its neighbours,
//! because the batch is *planned* (versions checked, positions assigned) before any row is
//! written, and rejected appends contribute no rows.

use super::recent::Recent;
use super::{
    EventData, ExpectedVersion, RecordedEvent, StoreError, StoreLimits, model::AppendResult,
};
use crate::metrics::{label, metrics};
use async_trait::async_trait;
use chrono::DateTime;
use futures::FutureExt;
use futures::future::BoxFuture;
use neulbi_domain::StreamName;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::Instrument;
use uuid::Uuid;

/// An event ready to be written: validated, with data and metadata serialized once.
#[derive(Debug, Clone)]
pub(crate) struct SerializedEvent {
    pub event_id: Uuid,
    pub event_type: String,
    pub schema_version: u32,
    pub data: String,
    pub metadata: String,
    /// The original commit time of an imported event (microseconds).
    pub recorded_at: Option<i64>,
    /// `data` and `metadata` as the caller gave them: the commit hands its events to
    /// [`Recent`] without parsing the text back.
    pub value: serde_json::Value,
    pub meta: super::Metadata,
}

#[cfg(test)]
impl SerializedEvent {
    /// An event with empty data and metadata, for tests of the writers.
    pub(crate) fn empty(event_id: Uuid, event_type: &str) -> Self {
        Self {
            event_id,
            event_type: event_type.into(),
            schema_version: 1,
            data: "{}".into(),
            metadata: "{}".into(),
            recorded_at: None,
            value: serde_json::json!({}),
            meta: Default::default(),
        }
    }
}

/// One caller's append as the writer sees it.
#[derive(Debug)]
pub(crate) struct AppendRequest {
    pub stream: StreamName,
    pub expected: ExpectedVersion,
    pub events: Vec<SerializedEvent>,
}

/// Where an already stored event id lives, to recognise retried appends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StoredId {
    pub stream: String,
    pub version: u64,
    pub position: u64,
}

/// One row the batch will insert: request `req`, event `ev` at the given place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PlannedRow {
    pub req: usize,
    pub ev: usize,
    pub position: u64,
    pub version: u64,
}

/// The outcome of planning a batch: the rows to write and one answer per request.
#[derive(Debug)]
pub(crate) struct Plan {
    pub rows: Vec<PlannedRow>,
    pub results: Vec<Result<AppendResult, StoreError>>,
    /// The log's head after the batch commits.
    pub head: Option<u64>,
    /// The commit time of the batch's events (microseconds; imports keep their own).
    pub recorded_at: i64,
}

/// The head a committer's last commit left, while no error has put it in doubt: a batch
/// planned on it need not ask for the head. `None`: unknown (ask).
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct KnownHead(Option<Option<u64>>);

impl KnownHead {
    /// The remembered head (`Some(None)`: the log was empty), if any.
    pub fn get(self) -> Option<Option<u64>> {
        self.0
    }

    /// Remembers the head a batch that wrote rows left; forgets it after an error, since
    /// the commit may or may not have landed.
    pub fn after(&mut self, outcome: &Result<Plan, StoreError>) {
        match outcome {
            Ok(plan) if !plan.rows.is_empty() => self.0 = Some(plan.head),
            Ok(_) => {}
            Err(_) => self.0 = None,
        }
    }
}

/// [`plan`] for a batch being committed now: every backend stamps its rows with the time of
/// the commit, taken here once.
pub(crate) fn plan_now(
    batch: &[AppendRequest],
    head: Option<u64>,
    versions: HashMap<String, u64>,
    existing: HashMap<Uuid, StoredId>,
) -> Plan {
    plan(
        batch,
        head,
        versions,
        existing,
        chrono::Utc::now().timestamp_micros(),
    )
}

/// Checks every request of a batch against the stored state and assigns positions and
/// versions. Pure: the backends fetch `head`, `versions` (last version per stream of the
/// batch, absent = no stream) and `existing` (stored locations of the batch's event ids).
pub(crate) fn plan(
    batch: &[AppendRequest],
    head: Option<u64>,
    mut versions: HashMap<String, u64>,
    mut existing: HashMap<Uuid, StoredId>,
    recorded_at: i64,
) -> Plan {
    let mut next_position = head.map_or(0, |h| h + 1);
    let mut rows = Vec::new();
    let mut results = Vec::with_capacity(batch.len());
    for (req_index, req) in batch.iter().enumerate() {
        let stream = req.stream.to_string();
        let hits: Vec<Option<&StoredId>> = req
            .events
            .iter()
            .map(|e| existing.get(&e.event_id))
            .collect();
        if hits.iter().all(Option::is_some) {
            results.push(idempotent_result(req, &stream, &hits));
            continue;
        }
        if let Some(pos) = hits.iter().position(Option::is_some) {
            results.push(Err(StoreError::DuplicateEventId {
                event_id: req.events[pos].event_id,
            }));
            continue;
        }
        let mut seen = HashSet::with_capacity(req.events.len());
        if let Some(dup) = req.events.iter().find(|e| !seen.insert(e.event_id)) {
            results.push(Err(StoreError::DuplicateEventId {
                event_id: dup.event_id,
            }));
            continue;
        }
        let current = versions.get(&stream).copied();
        if !req.expected.matches(current) {
            results.push(Err(StoreError::WrongExpectedVersion {
                stream,
                expected: req.expected,
                actual: current,
            }));
            continue;
        }
        let first_position = next_position;
        let mut version = current.map_or(0, |v| v + 1);
        for (ev_index, event) in req.events.iter().enumerate() {
            rows.push(PlannedRow {
                req: req_index,
                ev: ev_index,
                position: next_position,
                version,
            });
            existing.insert(
                event.event_id,
                StoredId {
                    stream: stream.clone(),
                    version,
                    position: next_position,
                },
            );
            next_position += 1;
            version += 1;
        }
        versions.insert(stream, version - 1);
        results.push(Ok(AppendResult {
            next_expected_version: version - 1,
            first_position,
            last_position: next_position - 1,
        }));
    }
    Plan {
        rows,
        results,
        head: next_position.checked_sub(1),
        recorded_at,
    }
}

/// A retried append whose ids are all stored: the same append if stream and order match.
fn idempotent_result(
    req: &AppendRequest,
    stream: &str,
    hits: &[Option<&StoredId>],
) -> Result<AppendResult, StoreError> {
    let stored: Vec<&StoredId> = hits.iter().flatten().copied().collect();
    let first = stored[0];
    for (i, s) in stored.iter().enumerate() {
        let same = s.stream == stream
            && s.version == first.version + i as u64
            && s.position == first.position + i as u64;
        if !same {
            return Err(StoreError::DuplicateEventId {
                event_id: req.events[i].event_id,
            });
        }
    }
    let last = stored[stored.len() - 1];
    Ok(AppendResult {
        next_expected_version: last.version,
        first_position: first.position,
        last_position: last.position,
    })
}

/// Validates and serializes an append before it is queued, so oversized or malformed input
/// is refused without touching the database.
pub(crate) fn prepare(
    stream: &StreamName,
    expected: ExpectedVersion,
    events: Vec<EventData>,
    limits: &StoreLimits,
) -> Result<AppendRequest, StoreError> {
    if events.is_empty() {
        return Err(StoreError::InvalidAppend(
            "an append needs at least one event".into(),
        ));
    }
    if events.len() > limits.max_events_per_append {
        return Err(StoreError::InvalidAppend(format!(
            "{} events in one append exceed the limit of {}",
            events.len(),
            limits.max_events_per_append
        )));
    }
    let mut out = Vec::with_capacity(events.len());
    for e in events {
        if e.event_type.is_empty() || e.event_type.len() > 128 {
            return Err(StoreError::InvalidAppend(
                "an event type must have 1 to 128 characters".into(),
            ));
        }
        let data = serde_json::to_string(&e.data)
            .map_err(|err| StoreError::InvalidAppend(format!("event data: {err}")))?;
        let metadata = serde_json::to_string(&e.metadata)
            .map_err(|err| StoreError::InvalidAppend(format!("event metadata: {err}")))?;
        let size = data.len() + metadata.len();
        if size > limits.max_event_bytes {
            return Err(StoreError::EventTooLarge {
                size,
                limit: limits.max_event_bytes,
            });
        }
        out.push(SerializedEvent {
            event_id: e.event_id,
            event_type: e.event_type,
            schema_version: e.schema_version,
            data,
            metadata,
            recorded_at: e.recorded_at.map(|t| t.timestamp_micros()),
            value: e.data,
            meta: e.metadata,
        });
    }
    Ok(AppendRequest {
        stream: *stream,
        expected,
        events: out,
    })
}

/// What a backend does with one batch: one transaction that either commits the whole plan or
/// nothing. Returns the plan's results and the new head.
#[async_trait]
pub(crate) trait Committer: Send + 'static {
    async fn commit(&mut self, batch: &[AppendRequest]) -> Result<Plan, StoreError>;
}

struct Pending {
    request: AppendRequest,
    reply: oneshot::Sender<Result<AppendResult, StoreError>>,
    /// The caller's `append` span, told the size of the group its append committed in.
    span: tracing::Span,
}

/// The queue in front of the writer, shared by all callers of one store.
pub(crate) struct GroupCommit {
    sender: RwLock<Option<mpsc::Sender<Pending>>>,
    /// Resolves when the writer has answered its last append and stopped.
    done: Mutex<Option<BoxFuture<'static, ()>>>,
    limits: StoreLimits,
}

impl GroupCommit {
    /// Starts the writer task. `head` is told the new head after every commit.
    pub fn start<C: Committer>(
        backend: &'static str,
        committer: C,
        limits: StoreLimits,
        out: Committed,
    ) -> Self {
        let (tx, rx) = mpsc::channel(limits.max_group_commit * 4);
        let task = tokio::spawn(run(backend, committer, rx, limits.max_group_commit, out));
        Self {
            sender: RwLock::new(Some(tx)),
            done: Mutex::new(Some(task.map(|_| ()).boxed())),
            limits,
        }
    }

    /// Starts the writer on an OS thread of its own, for a committer that never waits on
    /// anything but its database (a synchronous SQLite connection): an append then costs two
    /// thread wake-ups (to the writer and back), not one per statement through a driver's
    /// worker, and the writer never competes with the runtime's tasks for a worker thread.
    pub fn start_on_thread<C: Committer>(
        backend: &'static str,
        committer: C,
        limits: StoreLimits,
        out: Committed,
    ) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel(limits.max_group_commit * 4);
        let (stopped, done) = oneshot::channel();
        let max_batch = limits.max_group_commit;
        std::thread::Builder::new()
            .name(format!("{backend}-writer"))
            .spawn(move || {
                // The committer's futures complete without yielding; the thread parks only
                // while the queue is empty.
                futures::executor::block_on(run(backend, committer, rx, max_batch, out));
                let _ = stopped.send(());
            })?;
        Ok(Self {
            sender: RwLock::new(Some(tx)),
            done: Mutex::new(Some(done.map(|_| ()).boxed())),
            limits,
        })
    }

    /// A backend's `append`: validates, queues, waits for the commit, all in an `append`
    /// span naming the backend.
    pub async fn append(
        &self,
        backend: &'static str,
        stream: &StreamName,
        expected: ExpectedVersion,
        events: Vec<EventData>,
    ) -> Result<AppendResult, StoreError> {
        let span = tracing::info_span!(
            "append",
            backend,
            %stream,
            events = events.len(),
            group_size = tracing::field::Empty
        );
        let started = std::time::Instant::now();
        let count = events.len() as u64;
        let result = async {
            let request = prepare(stream, expected, events, &self.limits)?;
            self.submit(request).await
        }
        .instrument(span)
        .await;
        let m = metrics();
        let outcome = match &result {
            Ok(_) => {
                m.events_appended.add(count, &[label("backend", backend)]);
                "ok"
            }
            Err(StoreError::WrongExpectedVersion { .. }) => "conflict",
            Err(_) => "error",
        };
        m.appends
            .add(1, &[label("backend", backend), label("outcome", outcome)]);
        m.append_duration.record(
            started.elapsed().as_secs_f64(),
            &[label("backend", backend)],
        );
        result
    }

    /// Queues an append and waits until it is committed (or rejected).
    pub async fn submit(&self, request: AppendRequest) -> Result<AppendResult, StoreError> {
        let sender = self
            .sender
            .read()
            .map_err(|_| StoreError::Closed)?
            .clone()
            .ok_or(StoreError::Closed)?;
        let (reply, answer) = oneshot::channel();
        sender
            .send(Pending {
                request,
                reply,
                span: tracing::Span::current(),
            })
            .await
            .map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    /// Refuses new appends, lets the writer finish the queued ones, and waits for it.
    pub async fn close(&self) {
        if let Ok(mut s) = self.sender.write() {
            s.take();
        }
        let done = self.done.lock().ok().and_then(|mut t| t.take());
        if let Some(done) = done {
            done.await;
        }
    }
}

/// Where a writer tells what it committed: the head announcements and the recent events.
#[derive(Clone)]
pub(crate) struct Committed {
    pub head: watch::Sender<Option<u64>>,
    pub recent: Arc<Recent>,
}

impl Committed {
    /// Hands a committed plan's events to [`Recent`] (taking their values out of `batch`),
    /// then announces the new head: a reader woken by the announcement finds them there.
    fn publish(&self, batch: &mut [AppendRequest], plan: &Plan) {
        if !plan.rows.is_empty() {
            let events = plan
                .rows
                .iter()
                .filter_map(|row| {
                    let req = batch.get_mut(row.req)?;
                    let stream = req.stream;
                    let e = req.events.get_mut(row.ev)?;
                    Some(RecordedEvent {
                        position: row.position,
                        stream,
                        version: row.version,
                        event_id: e.event_id,
                        event_type: std::mem::take(&mut e.event_type),
                        schema_version: e.schema_version,
                        data: e.value.take(),
                        metadata: std::mem::take(&mut e.meta),
                        recorded_at: DateTime::from_timestamp_micros(
                            e.recorded_at.unwrap_or(plan.recorded_at),
                        )
                        .unwrap_or_default(),
                    })
                })
                .collect();
            self.recent.push(events);
        }
        publish_head(&self.head, plan.head);
    }
}

async fn run<C: Committer>(
    backend: &'static str,
    mut committer: C,
    mut rx: mpsc::Receiver<Pending>,
    max_batch: usize,
    out: Committed,
) {
    let mut batch = Vec::with_capacity(max_batch);
    while rx.recv_many(&mut batch, max_batch).await > 0 {
        let group = batch.len();
        let (mut requests, replies): (Vec<_>, Vec<_>) = batch
            .drain(..)
            .map(|p| {
                p.span.record("group_size", group);
                (p.request, p.reply)
            })
            .unzip();
        let events: usize = requests.iter().map(|r| r.events.len()).sum();
        let span = tracing::info_span!("group_commit", appends = requests.len(), events);
        let started = std::time::Instant::now();
        let outcome = committer.commit(&requests).instrument(span.clone()).await;
        let m = metrics();
        m.group_size
            .record(requests.len() as u64, &[label("backend", backend)]);
        m.commit_duration.record(
            started.elapsed().as_secs_f64(),
            &[label("backend", backend)],
        );
        match outcome {
            Ok(plan) => {
                out.publish(&mut requests, &plan);
                for (reply, result) in replies.into_iter().zip(plan.results) {
                    let _ = reply.send(result);
                }
            }
            Err(err) if requests.len() > 1 => {
                // One request may have broken the whole transaction (e.g. a constraint the
                // plan could not foresee); commit each alone so the others still land.
                tracing::warn!(parent: &span, error = %err, "group commit failed; retrying appends one by one");
                for (request, reply) in requests.into_iter().zip(replies) {
                    let mut single = [request];
                    let result = match committer.commit(&single).await {
                        Ok(mut plan) => {
                            out.publish(&mut single, &plan);
                            plan.results.pop().unwrap_or(Err(StoreError::Closed))
                        }
                        Err(e) => Err(e),
                    };
                    let _ = reply.send(result);
                }
            }
            Err(err) => {
                for reply in replies {
                    let _ = reply.send(Err(clone_err(&err)));
                }
            }
        }
    }
}

/// `StoreError` holds driver errors that are not `Clone`; callers get an equivalent value.
fn clone_err(err: &StoreError) -> StoreError {
    match err {
        StoreError::WrongExpectedVersion {
            stream,
            expected,
            actual,
        } => StoreError::WrongExpectedVersion {
            stream: stream.clone(),
            expected: *expected,
            actual: *actual,
        },
        StoreError::DuplicateEventId { event_id } => StoreError::DuplicateEventId {
            event_id: *event_id,
        },
        StoreError::EventTooLarge { size, limit } => StoreError::EventTooLarge {
            size: *size,
            limit: *limit,
        },
        StoreError::Closed => StoreError::Closed,
        other => StoreError::Unavailable(other.to_string()),
    }
}

/// Raises the published head, never lowers it (a notification from another node may be ahead).
pub(crate) fn publish_head(head: &watch::Sender<Option<u64>>, new: Option<u64>) {
    if let Some(new) = new {
        head.send_if_modified(|h| {
            if h.is_none_or(|h| h < new) {
                *h = Some(new);
                true
            } else {
                false
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use neulbi_domain::StreamKind;

    fn req(stream: StreamName, expected: ExpectedVersion, ids: &[u128]) -> AppendRequest {
        AppendRequest {
            stream,
            expected,
            events: ids
                .iter()
                .map(|&id| SerializedEvent::empty(Uuid::from_u128(id), "T"))
                .collect(),
        }
    }

    #[test]
    fn a_rejected_append_writes_nothing_and_does_not_shift_the_next() {
        let a = StreamName::new(StreamKind::Room, Uuid::from_u128(1));
        let b = StreamName::new(StreamKind::Room, Uuid::from_u128(2));
        let batch = vec![
            req(a, ExpectedVersion::NoStream, &[10, 11]),
            req(b, ExpectedVersion::Exact(3), &[12]),
            req(a, ExpectedVersion::Exact(1), &[13]),
        ];
        let plan = plan(&batch, Some(4), HashMap::new(), HashMap::new(), 0);
        assert_eq!(plan.rows.len(), 3);
        assert!(matches!(
            plan.results[0],
            Ok(AppendResult {
                first_position: 5,
                last_position: 6,
                next_expected_version: 1
            })
        ));
        assert!(matches!(
            plan.results[1],
            Err(StoreError::WrongExpectedVersion { actual: None, .. })
        ));
        assert!(matches!(
            plan.results[2],
            Ok(AppendResult {
                first_position: 7,
                last_position: 7,
                next_expected_version: 2
            })
        ));
        assert_eq!(plan.head, Some(7));
    }

    #[test]
    fn a_repeated_append_in_the_same_batch_is_idempotent() {
        let a = StreamName::new(StreamKind::Room, Uuid::from_u128(1));
        let batch = vec![
            req(a, ExpectedVersion::NoStream, &[10]),
            req(a, ExpectedVersion::NoStream, &[10]),
            req(a, ExpectedVersion::Any, &[10, 11]),
        ];
        let plan = plan(&batch, None, HashMap::new(), HashMap::new(), 0);
        assert_eq!(plan.rows.len(), 1);
        assert!(matches!(
            plan.results[1],
            Ok(AppendResult {
                first_position: 0,
                ..
            })
        ));
        assert!(matches!(
            plan.results[2],
            Err(StoreError::DuplicateEventId { .. })
        ));
    }

    /// Records the thread each commit ran on; tells when it is dropped.
    struct Probe {
        threads: Arc<Mutex<Vec<String>>>,
        dropped: Arc<std::sync::atomic::AtomicBool>,
    }

    #[async_trait]
    impl Committer for Probe {
        async fn commit(&mut self, batch: &[AppendRequest]) -> Result<Plan, StoreError> {
            let name = std::thread::current().name().unwrap_or_default().to_owned();
            self.threads.lock().expect("threads").push(name);
            Ok(plan(batch, None, HashMap::new(), HashMap::new(), 0))
        }
    }

    impl Drop for Probe {
        fn drop(&mut self) {
            self.dropped
                .store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }

    #[tokio::test]
    async fn a_writer_thread_commits_hands_on_what_it_committed_and_stops_with_its_queue() {
        let threads = Arc::new(Mutex::new(Vec::new()));
        let dropped = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let probe = Probe {
            threads: threads.clone(),
            dropped: dropped.clone(),
        };
        let committed = Committed {
            head: watch::channel(None).0,
            recent: Default::default(),
        };
        let mut head = committed.head.subscribe();
        let writer =
            GroupCommit::start_on_thread("probe", probe, StoreLimits::default(), committed.clone())
                .expect("thread");
        let stream = StreamName::new(StreamKind::Room, Uuid::from_u128(1));
        let result = writer
            .submit(req(stream, ExpectedVersion::NoStream, &[1, 2]))
            .await
            .expect("committed");
        assert_eq!((result.first_position, result.last_position), (0, 1));
        assert_eq!(*threads.lock().expect("threads"), ["probe-writer"]);
        // The head is announced after the events are where readers of the tail look.
        assert!(head.has_changed().expect("sender alive"));
        assert_eq!(*head.borrow_and_update(), Some(1));
        let tail = committed.recent.page(0, 10, Some(1)).expect("in memory");
        assert_eq!(
            tail.iter().map(|e| e.event_id).collect::<Vec<_>>(),
            [Uuid::from_u128(1), Uuid::from_u128(2)]
        );
        // Dropping the queue ends the thread, and the committer (its connection) with it.
        drop(writer);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !dropped.load(std::sync::atomic::Ordering::SeqCst) {
            assert!(
                std::time::Instant::now() < deadline,
                "the writer thread kept running"
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;
        use std::collections::BTreeMap;

        fn arb_request() -> impl Strategy<Value = (u128, u8, Vec<u128>)> {
            // A few streams, a few expectations, and ids drawn from a small pool so that
            // retries and collisions happen often.
            (0u128..3, 0u8..4, proptest::collection::vec(0u128..12, 1..4))
        }

        proptest! {
            #[test]
            fn plans_are_gap_free_and_reject_without_writing(
                head in proptest::option::of(0u64..5),
                reqs in proptest::collection::vec(arb_request(), 1..12),
            ) {
                let batch: Vec<AppendRequest> = reqs
                    .iter()
                    .map(|(s, e, ids)| {
                        let stream = StreamName::new(StreamKind::Room, Uuid::from_u128(*s));
                        let expected = match e {
                            0 => ExpectedVersion::Any,
                            1 => ExpectedVersion::NoStream,
                            v => ExpectedVersion::Exact(u64::from(*v) - 2),
                        };
                        req(stream, expected, ids)
                    })
                    .collect();
                let plan = plan(&batch, head, HashMap::new(), HashMap::new(), 0);
                let first = head.map_or(0, |h| h + 1);
                let positions: Vec<u64> = plan.rows.iter().map(|r| r.position).collect();
                prop_assert_eq!(positions, (first..first + plan.rows.len() as u64).collect::<Vec<_>>());
                prop_assert_eq!(plan.head, (first + plan.rows.len() as u64).checked_sub(1));
                let mut versions: BTreeMap<String, Vec<u64>> = BTreeMap::new();
                let mut ids = HashSet::new();
                for row in &plan.rows {
                    versions.entry(batch[row.req].stream.to_string()).or_default().push(row.version);
                    prop_assert!(ids.insert(batch[row.req].events[row.ev].event_id), "an id is written once");
                }
                for v in versions.values() {
                    prop_assert_eq!(v.clone(), (0..v.len() as u64).collect::<Vec<_>>());
                }
                for (i, result) in plan.results.iter().enumerate() {
                    let written = plan.rows.iter().filter(|r| r.req == i).count();
                    match result {
                        Ok(r) if written > 0 => {
                            prop_assert_eq!(written, batch[i].events.len());
                            prop_assert_eq!(r.last_position - r.first_position + 1, written as u64);
                        }
                        Ok(_) => {} // an idempotent repeat of an earlier request
                        Err(_) => prop_assert_eq!(written, 0),
                    }
                }
            }
        }
    }
}
