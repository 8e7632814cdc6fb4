//! The KurrentDB (EventStoreDB) backend, behind the cargo feature `kurrentdb`, on the
//! official gRPC client crate `kurrentdb` (servers 20.6.1 and newer: EventStoreDB and
//! KurrentDB alike; `docs/architecture.md` says why this crate and not `eventstore`).
//!
//! Teams that already run KurrentDB, often as a cluster, keep Neulbi's log there. Each
//! Neulbi stream is a KurrentDB stream of the same name; an event's body is its JSON data,
//! and what KurrentDB has no field for — correlation, causation, acting user, traceparent,
//! schema version, and the original commit time of a copied or imported event — goes into
//! the event's (custom) metadata as JSON, with KurrentDB's own `$correlationId` and
//! `$causationId` names so its system projections understand them.
//!
//! Positions: a [`RecordedEvent::position`] is the event's `$all` **commit** position. The
//! server writes every gRPC append as an implicit transaction, so each event's prepare
//! position equals its commit position, and `(p, p)` is the checkpoint a reader resumes
//! from. Commit positions are byte offsets in the transaction log: increasing, never
//! repeated, **not contiguous** ([`Positions::Ordered`]). Resuming from "last seen + 1"
//! still skips nothing, because a read of `$all` starts at the closest record at or after
//! the position given. Reads of `$all` and the subscription are filtered on the server to
//! Neulbi's stream prefixes (`user-`, `room-`, `call-`, `system-`), so system streams and
//! other applications' streams never reach Neulbi.
//!
//! Differences from the SQL backends, stated per backend by the contract suite: positions
//! are ordered but not gap-free; event ids are not checked for global uniqueness (KurrentDB
//! only recognises a retried append to the same stream, which is what idempotent retries
//! need); a retried append answers with the stream's current revision. Read models,
//! projector checkpoints and data keys never live here: they stay in the SQLite or
//! PostgreSQL *state database* named by `state_database_url`.

/// The official client this backend is built on, for callers (tests, tools) that talk to
/// the server directly.
pub use ::kurrentdb as client;

use super::group_commit::{self};
use super::{
    AppendResult, Direction, EventData, EventStore, ExpectedVersion, Positions, RecordedEvent,
    StoreError, StoreLimits,
};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::stream::{self, BoxStream, StreamExt};
use kurrentdb::{
    AppendToStreamOptions, Client, ClientSettings, CurrentRevision, Position, ReadAllOptions,
    ReadStreamOptions, StreamPosition, StreamState, SubscribeToAllOptions, SubscriptionEvent,
    SubscriptionFilter,
};
use neulbi_domain::{StreamKind, StreamName};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{RwLock, watch};
use tokio::task::JoinHandle;
use tracing::Instrument;
use uuid::Uuid;

/// Parses a connection string with the client's own parser: single node, gossip seeds
/// (`host1:2113,host2:2113`) or DNS discovery (`+discover`), `tls`, `tlsVerifyCert`,
/// `tlsCaFile`, `nodePreference`, credentials. A bad string is a configuration error that
/// names what the parser disliked, never the password.
pub fn parse_settings(url: &str) -> Result<ClientSettings, StoreError> {
    url.parse::<ClientSettings>().map_err(|e| {
        // The client's message quotes the whole string, password included.
        let mut why = e.message().replace(url, &super::redact_url(url));
        if let Some(password) = password_of(url) {
            why = why.replace(password, "***");
        }
        let detail = e.error().map(|d| format!(" ({d})")).unwrap_or_default();
        StoreError::Config(format!(
            "KurrentDB connection string {:?}: {why}{detail}",
            super::redact_url(url)
        ))
    })
}

/// The password of a connection string's user info, if any.
fn password_of(url: &str) -> Option<&str> {
    let rest = &url[url.find("://")? + 3..];
    let userinfo = &rest[..rest.find('@')?];
    userinfo
        .split_once(':')
        .map(|(_, p)| p)
        .filter(|p| !p.is_empty())
}

/// The server-side filter of every `$all` read and subscription: Neulbi's stream prefixes.
pub fn neulbi_filter() -> SubscriptionFilter {
    StreamKind::ALL
        .iter()
        .fold(SubscriptionFilter::on_stream_name(), |f, k| {
            f.add_prefix(format!("{}-", k.prefix()))
        })
}

/// The trait's expectation as KurrentDB's: exact → the stream's last revision, no stream →
/// `NoStream`, any → `Any`. (KurrentDB's `StreamExists` has no counterpart in Neulbi.)
pub fn stream_state(expected: ExpectedVersion) -> StreamState {
    match expected {
        ExpectedVersion::Any => StreamState::Any,
        ExpectedVersion::NoStream => StreamState::NoStream,
        ExpectedVersion::Exact(v) => StreamState::StreamRevision(v),
    }
}

/// A Neulbi checkpoint as the `$all` position a **read** starts at (inclusive): `(p, p)`,
/// since every event's prepare position equals its commit position.
pub fn read_from(position: u64) -> StreamPosition<Position> {
    match position {
        0 => StreamPosition::Start,
        p => StreamPosition::Position(Position {
            commit: p,
            prepare: p,
        }),
    }
}

/// A Neulbi checkpoint as the `$all` position a **subscription** starts after (the server's
/// subscriptions are exclusive, the trait's `subscribe_all` is inclusive): `(p-1, p-1)`.
pub fn subscribe_after(position: u64) -> StreamPosition<Position> {
    match position {
        0 => StreamPosition::Start,
        p => StreamPosition::Position(Position {
            commit: p - 1,
            prepare: p - 1,
        }),
    }
}

/// The Neulbi position of an event at `$all` position `p`: its commit position. An event
/// whose prepare position differs (written in an explicit transaction by a legacy TCP
/// client) cannot be resumed from `(p, p)` without skipping, so it is refused as corrupt
/// rather than silently misplaced.
pub fn neulbi_position(p: Position) -> Result<u64, StoreError> {
    if p.prepare != p.commit {
        return Err(StoreError::Corrupt {
            position: clamp(p.commit),
            reason: format!(
                "$all position {p} has a prepare position apart from its commit position \
                 (an explicit transaction); Neulbi cannot resume from it"
            ),
        });
    }
    Ok(p.commit)
}

fn clamp(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Maps a client error to the store's. `stream` and `expected` describe the append (or
/// read) that failed, for a conflict's message.
pub fn map_error(stream: &str, expected: ExpectedVersion, e: kurrentdb::Error) -> StoreError {
    use kurrentdb::Error as K;
    match e {
        K::WrongExpectedVersion { current, .. } => StoreError::WrongExpectedVersion {
            stream: stream.to_owned(),
            expected,
            actual: match current {
                CurrentRevision::Current(v) => Some(v),
                CurrentRevision::NoStream => None,
            },
        },
        K::ResourceDeleted => StoreError::StreamDeleted {
            stream: stream.to_owned(),
        },
        K::AccessDenied => StoreError::Config(
            "KurrentDB denied access: check the user and password of the connection string".into(),
        ),
        K::UnsupportedFeature => StoreError::Config(
            "the KurrentDB server does not support this operation (20.6.1 or newer is needed)"
                .into(),
        ),
        K::InitializationError(m) => StoreError::Config(format!("KurrentDB client: {m}")),
        // Leader changes, lost connections, time-outs, server faults: a retry may cure them
        // (the client rediscovers the cluster's leader by itself).
        other => StoreError::Unavailable(format!("KurrentDB: {other}")),
    }
}

/// What Neulbi keeps in a KurrentDB event's metadata (JSON). `$correlationId` and
/// `$causationId` are KurrentDB's conventional names (its `$by_correlation_id` projection
/// reads them).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventMetadata {
    /// The id shared by everything one original request caused.
    #[serde(
        rename = "$correlationId",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub correlation_id: Option<Uuid>,
    /// The command or event that directly caused this one.
    #[serde(
        rename = "$causationId",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub causation_id: Option<Uuid>,
    /// The acting user.
    #[serde(rename = "userId", default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<Uuid>,
    /// The W3C trace context of the request that caused the event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    /// The schema version of the data (Neulbi's upcasters need it).
    #[serde(rename = "schemaVersion")]
    pub schema_version: u32,
    /// The original commit time (µs since the epoch) of an event copied or imported from
    /// another log; absent for events appended here, whose time is the server's `created`.
    #[serde(
        rename = "recordedAt",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub recorded_at: Option<i64>,
}

impl EventMetadata {
    /// The metadata stored for `e`.
    pub fn of(e: &EventData) -> Self {
        Self {
            correlation_id: e.metadata.correlation_id,
            causation_id: e.metadata.causation_id,
            user_id: e.metadata.user_id,
            traceparent: e.metadata.traceparent.clone(),
            schema_version: e.schema_version,
            recorded_at: e.recorded_at.map(|t| t.timestamp_micros()),
        }
    }
}

/// The client's event for `e`: JSON data with `e`'s id (so a retried append is recognised)
/// and [`EventMetadata`].
pub fn encode(e: &EventData) -> Result<kurrentdb::EventData, StoreError> {
    kurrentdb::EventData::json(&e.event_type, &e.data)
        .and_then(|d| d.id(e.event_id).metadata_as_json(&EventMetadata::of(e)))
        .map_err(|err| StoreError::InvalidAppend(format!("event data: {err}")))
}

/// The parts of a stored KurrentDB event Neulbi reads (the client's `RecordedEvent` cannot be
/// built outside the client, so decoding takes its fields).
pub struct StoredEvent<'a> {
    /// The KurrentDB stream id.
    pub stream_id: &'a str,
    /// The event id.
    pub id: Uuid,
    /// The event's revision in its stream.
    pub revision: u64,
    /// The event type.
    pub event_type: &'a str,
    /// The JSON body.
    pub data: &'a [u8],
    /// The custom (user) metadata: [`EventMetadata`] as JSON.
    pub custom_metadata: &'a [u8],
    /// The `$all` position.
    pub position: Position,
    /// When the server stored the event.
    pub created: DateTime<Utc>,
}

impl<'a> From<&'a kurrentdb::RecordedEvent> for StoredEvent<'a> {
    fn from(e: &'a kurrentdb::RecordedEvent) -> Self {
        Self {
            stream_id: e.stream_id(),
            id: e.id,
            revision: e.revision,
            event_type: &e.event_type,
            data: &e.data,
            custom_metadata: &e.custom_metadata,
            position: e.position,
            created: e.created,
        }
    }
}

/// Turns a stored event back into Neulbi's; anything malformed (a stream name that is not
/// Neulbi's, data that is not JSON, metadata without a schema version) is a typed
/// [`StoreError::Corrupt`] at the event's commit position, never a panic.
pub fn decode(e: StoredEvent<'_>) -> Result<RecordedEvent, StoreError> {
    let position = neulbi_position(e.position)?;
    let corrupt = |reason: String| StoreError::Corrupt {
        position: clamp(position),
        reason,
    };
    let stream = e
        .stream_id
        .parse::<StreamName>()
        .map_err(|err| corrupt(format!("stream name: {err}")))?;
    let data = serde_json::from_slice(e.data)
        .map_err(|err| corrupt(format!("data is not JSON: {err}")))?;
    let meta: EventMetadata = serde_json::from_slice(e.custom_metadata)
        .map_err(|err| corrupt(format!("metadata: {err}")))?;
    let recorded_at = match meta.recorded_at {
        Some(us) => DateTime::<Utc>::from_timestamp_micros(us)
            .ok_or_else(|| corrupt("recordedAt out of range".into()))?,
        // The other backends keep microseconds; so does this one.
        None => DateTime::<Utc>::from_timestamp_micros(e.created.timestamp_micros())
            .ok_or_else(|| corrupt("created out of range".into()))?,
    };
    Ok(RecordedEvent {
        position,
        stream,
        version: e.revision,
        event_id: e.id,
        event_type: e.event_type.to_owned(),
        schema_version: meta.schema_version,
        data,
        metadata: super::Metadata {
            correlation_id: meta.correlation_id,
            causation_id: meta.causation_id,
            user_id: meta.user_id,
            traceparent: meta.traceparent,
        },
        recorded_at,
    })
}

fn decode_resolved(e: &kurrentdb::ResolvedEvent) -> Option<Result<RecordedEvent, StoreError>> {
    // Links are never resolved (resolve_link_tos is off), so `event` is the event itself.
    e.event.as_ref().map(|e| decode(e.into()))
}

/// The KurrentDB event store. Cheap to clone; all clones share one client.
#[derive(Clone)]
pub struct KurrentStore {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    limits: StoreLimits,
    head: watch::Sender<Option<u64>>,
    /// `true` once closed. Appends hold the read side while they run; `close` takes the
    /// write side, so it waits for them and later appends see the flag.
    closed: RwLock<bool>,
    watcher: JoinHandle<()>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.watcher.abort();
    }
}

impl KurrentStore {
    /// Connects to the server or cluster named by `url` and checks it answers (a filtered
    /// read of `$all`), so a wrong address fails at start rather than on the first append.
    pub async fn connect(url: &str, limits: StoreLimits) -> Result<Self, StoreError> {
        let settings = parse_settings(url)?;
        let client = Client::new(settings)
            .map_err(|e| StoreError::Config(format!("KurrentDB client: {e}")))?;
        let head = tokio::time::timeout(Duration::from_secs(30), head_of(&client))
            .await
            .map_err(|_| {
                StoreError::Unavailable(format!(
                    "KurrentDB at {} did not answer within 30 s",
                    super::redact_url(url)
                ))
            })??;
        let (head_tx, _) = watch::channel(head);
        let watcher = tokio::spawn(watch_head(client.clone(), head_tx.clone(), head));
        Ok(Self {
            inner: Arc::new(Inner {
                client,
                limits,
                head: head_tx,
                closed: RwLock::new(false),
                watcher,
            }),
        })
    }

    async fn append_inner(
        &self,
        stream: &StreamName,
        expected: ExpectedVersion,
        events: Vec<EventData>,
    ) -> Result<AppendResult, StoreError> {
        let closed = self.inner.closed.read().await;
        if *closed {
            return Err(StoreError::Closed);
        }
        // The same checks as the SQL backends (count, type, size), before any I/O.
        group_commit::prepare(stream, expected, events.clone(), &self.inner.limits)?;
        let mut ids = HashSet::with_capacity(events.len());
        if let Some(dup) = events.iter().find(|e| !ids.insert(e.event_id)) {
            return Err(StoreError::DuplicateEventId {
                event_id: dup.event_id,
            });
        }
        let count = events.len() as u64;
        let encoded = events.iter().map(encode).collect::<Result<Vec<_>, _>>()?;
        let name = stream.to_string();
        let options = AppendToStreamOptions::default().stream_state(stream_state(expected));
        let written = self
            .inner
            .client
            .append_to_stream(name.as_str(), &options, encoded)
            .await
            .map_err(|e| map_error(&name, expected, e))?;
        let at = neulbi_position(written.position)?;
        // The server answers with the last event's position, and with none at all for a
        // retry it recognised (the client reports that as the start of the log): then, and
        // for the first event of a batch, the positions are read back.
        let (first_position, last_position) = if count == 1 && written.position != Position::start()
        {
            (at, at)
        } else {
            let first_version = written
                .next_expected_version
                .saturating_add(1)
                .saturating_sub(count);
            let read = self
                .read_stream(
                    stream,
                    first_version,
                    Direction::Forward,
                    usize::try_from(count).unwrap_or(usize::MAX),
                )
                .await?;
            match (read.first(), read.last()) {
                (Some(first), Some(last)) => (first.position, last.position),
                _ => (at, at),
            }
        };
        group_commit::publish_head(&self.inner.head, Some(last_position));
        drop(closed);
        Ok(AppendResult {
            next_expected_version: written.next_expected_version,
            first_position,
            last_position,
        })
    }
}

impl KurrentStore {
    /// Reads `$all` with `options`, keeping the events `keep` accepts (given how many it
    /// kept so far).
    async fn read_all_where(
        &self,
        options: &ReadAllOptions,
        mut keep: impl FnMut(&RecordedEvent, usize) -> bool,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let fail = |e| map_error("$all", ExpectedVersion::Any, e);
        let mut read = self.inner.client.read_all(options).await.map_err(fail)?;
        let mut out = Vec::new();
        while let Some(e) = read.next().await.map_err(fail)? {
            if let Some(e) = decode_resolved(&e) {
                let e = e?;
                if keep(&e, out.len()) {
                    out.push(e);
                }
            }
        }
        Ok(out)
    }
}

/// The position of the newest Neulbi event, by a filtered backwards read of `$all`.
async fn head_of(client: &Client) -> Result<Option<u64>, StoreError> {
    let options = ReadAllOptions::default()
        .position(StreamPosition::End)
        .backwards()
        .max_count(1)
        .filter(neulbi_filter());
    let unavailable = |e| map_error("$all", ExpectedVersion::Any, e);
    let mut read = client.read_all(&options).await.map_err(unavailable)?;
    match read.next().await.map_err(unavailable)? {
        Some(e) => match decode_resolved(&e) {
            Some(e) => Ok(Some(e?.position)),
            None => Ok(None),
        },
        None => Ok(None),
    }
}

/// Rings the head watch on every Neulbi event any node commits: a live, filtered
/// subscription to `$all` from its end. The client reconnects by itself; if the
/// subscription still fails, it is opened again after a second.
async fn watch_head(client: Client, head: watch::Sender<Option<u64>>, from: Option<u64>) {
    let mut after = from.map_or(StreamPosition::End, |p| subscribe_after(p + 1));
    loop {
        let options = SubscribeToAllOptions::default()
            .position(after)
            .filter(neulbi_filter());
        let mut sub = client.subscribe_to_all(&options).await;
        loop {
            match sub.next_subscription_event().await {
                Ok(SubscriptionEvent::EventAppeared(e)) => {
                    if let Some(Ok(p)) = e.event.as_ref().map(|e| neulbi_position(e.position)) {
                        group_commit::publish_head(&head, Some(p));
                        after = subscribe_after(p + 1);
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "KurrentDB head subscription lost; retrying");
                    break;
                }
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[async_trait]
impl EventStore for KurrentStore {
    async fn append(
        &self,
        stream: &StreamName,
        expected: ExpectedVersion,
        events: Vec<EventData>,
    ) -> Result<AppendResult, StoreError> {
        let span = tracing::info_span!(
            "append",
            backend = "kurrentdb",
            %stream,
            events = events.len(),
        );
        self.append_inner(stream, expected, events)
            .instrument(span)
            .await
    }

    async fn read_stream(
        &self,
        stream: &StreamName,
        from_version: u64,
        direction: Direction,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let from = match (direction, from_version) {
            (Direction::Backward, u64::MAX) => StreamPosition::End,
            (_, v) => StreamPosition::Position(v),
        };
        let options = ReadStreamOptions::default().position(from).max_count(limit);
        let options = match direction {
            Direction::Forward => options.forwards(),
            Direction::Backward => options.backwards(),
        };
        let name = stream.to_string();
        let fail = |e| map_error(&name, ExpectedVersion::Any, e);
        let mut read = match self.inner.client.read_stream(name.as_str(), &options).await {
            Ok(r) => r,
            Err(kurrentdb::Error::ResourceNotFound) => return Ok(Vec::new()),
            Err(e) => return Err(fail(e)),
        };
        let mut out = Vec::new();
        loop {
            match read.next().await {
                Ok(Some(e)) => {
                    if let Some(e) = decode_resolved(&e) {
                        out.push(e?);
                    }
                }
                Ok(None) => break,
                Err(kurrentdb::Error::ResourceNotFound) => break,
                Err(e) => return Err(fail(e)),
            }
        }
        Ok(out)
    }

    async fn read_all(
        &self,
        from_position: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let options = ReadAllOptions::default()
            .position(read_from(from_position))
            .forwards()
            .max_count(limit)
            .filter(neulbi_filter());
        // Inclusive start, but never before it (a position between records reads from the
        // next one).
        self.read_all_where(&options, |e, _| e.position >= from_position)
            .await
    }

    async fn read_all_backward(
        &self,
        before_position: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        if limit == 0 || before_position == 0 {
            return Ok(Vec::new());
        }
        let from = match before_position {
            u64::MAX => StreamPosition::End,
            p => StreamPosition::Position(Position {
                commit: p,
                prepare: p,
            }),
        };
        // One more than asked, in case the server counts the start position in.
        let options = ReadAllOptions::default()
            .position(from)
            .backwards()
            .max_count(limit.saturating_add(1))
            .filter(neulbi_filter());
        self.read_all_where(&options, |e, kept| {
            e.position < before_position && kept < limit
        })
        .await
    }

    fn positions(&self) -> Positions {
        Positions::Ordered
    }

    async fn head_position(&self) -> Result<Option<u64>, StoreError> {
        head_of(&self.inner.client).await
    }

    fn subscribe_all(
        &self,
        from_position: u64,
    ) -> BoxStream<'static, Result<RecordedEvent, StoreError>> {
        let client = self.inner.client.clone();
        struct State {
            sub: Option<kurrentdb::Subscription>,
            next: u64,
            failed: bool,
        }
        let state = State {
            sub: None,
            next: from_position,
            failed: false,
        };
        stream::unfold(state, move |mut st| {
            let client = client.clone();
            async move {
                if st.failed {
                    return None;
                }
                let sub = match &mut st.sub {
                    Some(sub) => sub,
                    None => {
                        let options = SubscribeToAllOptions::default()
                            .position(subscribe_after(st.next))
                            .filter(neulbi_filter());
                        st.sub.insert(client.subscribe_to_all(&options).await)
                    }
                };
                loop {
                    match sub.next_subscription_event().await {
                        Ok(SubscriptionEvent::EventAppeared(e)) => match decode_resolved(&e) {
                            // "Ordered, no duplicates": an event at or before the last one
                            // delivered (a resubscription's overlap) is dropped.
                            Some(Ok(e)) if e.position < st.next => {}
                            Some(Ok(e)) => {
                                st.next = e.position + 1;
                                return Some((Ok(e), st));
                            }
                            Some(Err(e)) => {
                                st.failed = true;
                                return Some((Err(e), st));
                            }
                            None => {}
                        },
                        Ok(_) => {}
                        Err(e) => {
                            st.failed = true;
                            return Some((Err(map_error("$all", ExpectedVersion::Any, e)), st));
                        }
                    }
                }
            }
        })
        .boxed()
    }

    fn head_changes(&self) -> watch::Receiver<Option<u64>> {
        self.inner.head.subscribe()
    }

    async fn ping(&self) -> Result<(), StoreError> {
        head_of(&self.inner.client).await.map(|_| ())
    }

    async fn close(&self) {
        *self.inner.closed.write().await = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Metadata;
    use serde_json::json;

    #[test]
    fn expectations_map_to_stream_states() {
        assert_eq!(stream_state(ExpectedVersion::Any), StreamState::Any);
        assert_eq!(
            stream_state(ExpectedVersion::NoStream),
            StreamState::NoStream
        );
        assert_eq!(
            stream_state(ExpectedVersion::Exact(0)),
            StreamState::StreamRevision(0)
        );
        assert_eq!(
            stream_state(ExpectedVersion::Exact(u64::MAX - 1)),
            StreamState::StreamRevision(u64::MAX - 1)
        );
    }

    #[test]
    fn checkpoints_are_commit_prepare_positions() {
        assert_eq!(read_from(0), StreamPosition::Start);
        assert_eq!(
            read_from(4711),
            StreamPosition::Position(Position {
                commit: 4711,
                prepare: 4711
            })
        );
        // Subscriptions are exclusive on the server: start after the position before.
        assert_eq!(subscribe_after(0), StreamPosition::Start);
        assert_eq!(
            subscribe_after(4711),
            StreamPosition::Position(Position {
                commit: 4710,
                prepare: 4710
            })
        );
        // Resuming from "last + 1" never lands at or before the last event.
        let last = Position {
            commit: 9000,
            prepare: 9000,
        };
        let at = neulbi_position(last).expect("implicit transaction");
        let StreamPosition::Position(resume) = subscribe_after(at + 1) else {
            panic!("a position")
        };
        assert!(
            resume >= last
                && resume
                    < Position {
                        commit: 9001,
                        prepare: 9001
                    }
        );
        let StreamPosition::Position(read) = read_from(at + 1) else {
            panic!("a position")
        };
        assert!(read > last);
    }

    #[test]
    fn an_explicit_transaction_position_is_refused() {
        let err = neulbi_position(Position {
            commit: 500,
            prepare: 420,
        })
        .expect_err("prepare apart from commit");
        assert!(
            matches!(err, StoreError::Corrupt { position: 500, .. }),
            "{err}"
        );
    }

    #[test]
    fn wrong_expected_version_maps_to_the_conflict() {
        let err = map_error(
            "room-x",
            ExpectedVersion::Exact(5),
            kurrentdb::Error::WrongExpectedVersion {
                expected: StreamState::StreamRevision(5),
                current: CurrentRevision::Current(0),
            },
        );
        assert!(err.is_conflict());
        assert!(
            matches!(
                &err,
                StoreError::WrongExpectedVersion {
                    stream,
                    expected: ExpectedVersion::Exact(5),
                    actual: Some(0),
                } if stream == "room-x"
            ),
            "{err}"
        );
        let err = map_error(
            "room-y",
            ExpectedVersion::Exact(0),
            kurrentdb::Error::WrongExpectedVersion {
                expected: StreamState::StreamRevision(0),
                current: CurrentRevision::NoStream,
            },
        );
        assert!(
            matches!(err, StoreError::WrongExpectedVersion { actual: None, .. }),
            "{err}"
        );
    }

    #[test]
    fn other_client_errors_map_to_typed_store_errors() {
        let deleted = map_error(
            "room-z",
            ExpectedVersion::Any,
            kurrentdb::Error::ResourceDeleted,
        );
        assert!(
            matches!(&deleted, StoreError::StreamDeleted { stream } if stream == "room-z"),
            "{deleted}"
        );
        // The server marks a deleted stream in the gRPC status; the client's own mapping of
        // that status is what reaches us.
        let mut status = tonic_status();
        status
            .metadata_mut()
            .insert("exception", "stream-deleted".parse().expect("ascii"));
        assert!(matches!(
            map_error(
                "room-z",
                ExpectedVersion::Any,
                kurrentdb::Error::from_grpc(status)
            ),
            StoreError::StreamDeleted { .. }
        ));
        for transient in [
            kurrentdb::Error::ConnectionClosed,
            kurrentdb::Error::DeadlineExceeded,
            kurrentdb::Error::ServerError("boom".into()),
            kurrentdb::Error::NotLeaderException(kurrentdb::Endpoint {
                host: "node2".into(),
                port: 2113,
            }),
        ] {
            assert!(matches!(
                map_error("s", ExpectedVersion::Any, transient),
                StoreError::Unavailable(_)
            ));
        }
        assert!(matches!(
            map_error("s", ExpectedVersion::Any, kurrentdb::Error::AccessDenied),
            StoreError::Config(_)
        ));
        assert!(matches!(
            map_error(
                "s",
                ExpectedVersion::Any,
                kurrentdb::Error::UnsupportedFeature
            ),
            StoreError::Config(_)
        ));
    }

    /// A gRPC status as the server sends it with a failed call, built through the client's
    /// own conversion (the client re-exports no tonic, so go through its error type).
    fn tonic_status() -> kurrentdb_tonic::Status {
        kurrentdb_tonic::Status::new(kurrentdb_tonic::Code::FailedPrecondition, "deleted")
    }

    fn sample() -> EventData {
        EventData {
            event_id: Uuid::now_v7(),
            event_type: "MessagePosted".into(),
            schema_version: 2,
            data: json!({ "body": { "$sealed": "abc" }, "n": 1 }),
            metadata: Metadata {
                correlation_id: Some(Uuid::now_v7()),
                causation_id: Some(Uuid::now_v7()),
                user_id: Some(Uuid::now_v7()),
                traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
            },
            recorded_at: None,
        }
    }

    fn stored<'a>(
        stream: &'a str,
        e: &'a EventData,
        data: &'a [u8],
        meta: &'a [u8],
        position: Position,
    ) -> StoredEvent<'a> {
        StoredEvent {
            stream_id: stream,
            id: e.event_id,
            revision: 3,
            event_type: &e.event_type,
            data,
            custom_metadata: meta,
            position,
            created: DateTime::<Utc>::from_timestamp(1_750_000_000, 123_456_789).expect("time"),
        }
    }

    #[test]
    fn metadata_round_trips_through_the_event_metadata() {
        let e = sample();
        let meta = serde_json::to_vec(&EventMetadata::of(&e)).expect("json");
        let text = String::from_utf8(meta.clone()).expect("utf8");
        for key in [
            "$correlationId",
            "$causationId",
            "userId",
            "traceparent",
            "schemaVersion",
        ] {
            assert!(text.contains(key), "{text}");
        }
        assert!(
            !text.contains("recordedAt"),
            "only copies carry their commit time"
        );
        // The client takes the same id, data and metadata (it hides its fields; it must
        // accept them).
        encode(&e).expect("client event");
        let data = serde_json::to_vec(&e.data).expect("json");
        let stream = format!("room-{}", Uuid::now_v7());
        let at = Position {
            commit: 1234,
            prepare: 1234,
        };
        let back = decode(stored(&stream, &e, &data, &meta, at)).expect("decode");
        assert_eq!(back.position, 1234);
        assert_eq!(back.version, 3);
        assert_eq!(back.stream.to_string(), stream);
        assert_eq!(back.event_id, e.event_id);
        assert_eq!(back.event_type, e.event_type);
        assert_eq!(back.schema_version, 2);
        assert_eq!(back.data, e.data);
        assert_eq!(back.metadata, e.metadata);
        // The server's time, cut to the microseconds the other backends keep.
        assert_eq!(back.recorded_at.timestamp_subsec_nanos(), 123_456_000);

        // A copied event keeps its original commit time.
        let mut copied = sample();
        let original = DateTime::<Utc>::from_timestamp_micros(1_600_000_000_000_001).expect("t");
        copied.recorded_at = Some(original);
        let meta = serde_json::to_vec(&EventMetadata::of(&copied)).expect("json");
        let back = decode(stored(&stream, &copied, &data, &meta, at)).expect("decode");
        assert_eq!(back.recorded_at, original);
    }

    #[test]
    fn malformed_events_are_typed_corruption() {
        let e = sample();
        let data = serde_json::to_vec(&e.data).expect("json");
        let meta = serde_json::to_vec(&EventMetadata::of(&e)).expect("json");
        let at = Position {
            commit: 77,
            prepare: 77,
        };
        let room = format!("room-{}", Uuid::now_v7());
        for (stream, data, meta) in [
            ("$stats-127.0.0.1:2113", &data[..], &meta[..]),
            (&room[..], b"{not json".as_slice(), &meta[..]),
            (&room[..], &data[..], b"{}".as_slice()),
            (&room[..], &data[..], b"".as_slice()),
        ] {
            let err = decode(stored(stream, &e, data, meta, at)).expect_err("corrupt");
            assert!(
                matches!(err, StoreError::Corrupt { position: 77, .. }),
                "{err}"
            );
        }
    }

    #[test]
    fn connection_strings_for_nodes_clusters_and_tls() {
        for url in [
            "kurrentdb://admin:changeit@localhost:2113?tls=false",
            "kurrentdb://admin:changeit@node1:2113,node2:2113,node3:2113?tls=true&tlsVerifyCert=true",
            "esdb+discover://admin:changeit@cluster.example.com:2113?tlsCaFile=/etc/neulbi/ca.pem",
            "esdb://localhost:2113?tls=false",
            "kurrentdb+discover://cluster.example.com:2113?nodePreference=leader",
        ] {
            assert!(crate::is_kurrent_url(url), "{url}");
            parse_settings(url).unwrap_or_else(|e| panic!("{url}: {e}"));
        }
        assert!(!crate::is_kurrent_url("postgres://u@h/db"));
        assert!(!crate::is_kurrent_url("sqlite://data/neulbi.db"));
        let err =
            parse_settings("kurrentdb://admin:hunter2@localhost:notaport").expect_err("bad port");
        assert!(matches!(err, StoreError::Config(_)), "{err}");
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }

    #[test]
    fn the_filter_names_every_neulbi_stream_kind() {
        let filter = format!("{:?}", neulbi_filter());
        for prefix in ["user-", "room-", "call-", "system-"] {
            assert!(filter.contains(prefix), "{filter}");
        }
    }
}
