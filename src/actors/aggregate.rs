//! One actix actor per live aggregate: it holds the folded state and the stream version, and
//! processes its commands strictly one at a time.

use super::{ActorError, codec};
use crate::store::{Direction, ExpectedVersion, Metadata, SharedStore};
use crate::telemetry::metrics::{label, metrics};
use actix::prelude::*;
use neulbi_domain::{Context as CommandContext, Decider, DomainEvent, StreamName};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;
use tracing::Instrument;

/// How many events one hydration read fetches.
const HYDRATE_PAGE: usize = 512;

/// What a successful command produced.
pub struct CommandOutcome<D: Decider> {
    /// The events appended (empty when the command changed nothing).
    pub events: Vec<D::Event>,
    /// The stream's version after the command (`None`: the stream still does not exist).
    pub version: Option<u64>,
    /// The global position of the last appended event, if any were appended.
    pub last_position: Option<u64>,
    /// The aggregate's state after the command.
    pub state: D::State,
}

// Written by hand: a derive would demand `D: Debug` of the marker type.
impl<D: Decider> std::fmt::Debug for CommandOutcome<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommandOutcome")
            .field("events", &self.events)
            .field("version", &self.version)
            .field("last_position", &self.last_position)
            .field("state", &self.state)
            .finish()
    }
}

/// The message that carries a command to its aggregate. The reply travels on a oneshot so
/// callers can use `try_send` (and get "busy" on a full mailbox) yet still await the answer.
pub struct Execute<D: Decider> {
    /// The command to decide; `None` only reads the state (caught up with the stream first,
    /// so appends made by other nodes are seen).
    pub command: Option<D::Command>,
    /// Who asks, and when.
    pub ctx: CommandContext,
    /// Correlation, causation and trace context for the resulting events.
    pub metadata: Metadata,
    /// Where the outcome goes.
    pub reply: oneshot::Sender<Result<CommandOutcome<D>, ActorError>>,
    /// The caller's span, so the command's work nests under the request that caused it.
    pub span: tracing::Span,
}

impl<D: Decider> Message for Execute<D> {
    type Result = ();
}

/// The actor owning one stream.
pub struct AggregateActor<D: Decider> {
    store: SharedStore,
    stream: StreamName,
    state: D::State,
    version: Option<u64>,
    hydrated: bool,
    last_active: Instant,
    idle_timeout: Duration,
    depth: Arc<AtomicUsize>,
}

impl<D: Decider> AggregateActor<D> {
    /// An actor for `stream`; it hydrates lazily on its first command. `depth` counts the
    /// commands sent to it and not yet answered; the actor lowers it after each answer.
    pub fn new(
        store: SharedStore,
        stream: StreamName,
        idle_timeout: Duration,
        depth: Arc<AtomicUsize>,
    ) -> Self {
        Self {
            depth,
            store,
            stream,
            state: D::State::default(),
            version: None,
            hydrated: false,
            last_active: Instant::now(),
            idle_timeout,
        }
    }
}

impl<D: Decider> Actor for AggregateActor<D>
where
    D::Command: Clone,
{
    type Context = actix::Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        metrics()
            .actors_active
            .add(1, &[label("kind", D::KIND.prefix())]);
        let every = (self.idle_timeout / 4).max(Duration::from_millis(10));
        ctx.run_interval(every, |act, ctx| {
            if act.last_active.elapsed() >= act.idle_timeout {
                tracing::debug!(stream = %act.stream, "passivating idle aggregate");
                metrics()
                    .passivations
                    .add(1, &[label("kind", D::KIND.prefix())]);
                ctx.stop();
            }
        });
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        metrics()
            .actors_active
            .add(-1, &[label("kind", D::KIND.prefix())]);
    }
}

impl<D: Decider> Handler<Execute<D>> for AggregateActor<D>
where
    D::Command: Clone,
{
    type Result = AtomicResponse<Self, ()>;

    fn handle(&mut self, msg: Execute<D>, _ctx: &mut Self::Context) -> Self::Result {
        self.last_active = Instant::now();
        let Execute {
            command,
            ctx,
            metadata,
            reply,
            span,
        } = msg;
        let span = tracing::info_span!(parent: &span, "command", aggregate = %D::KIND, stream = %self.stream);
        let is_query = command.is_none();
        let work = run::<D>(
            self.store.clone(),
            self.stream,
            Loaded {
                state: self.state.clone(),
                version: self.version,
                hydrated: self.hydrated,
            },
            command,
            ctx,
            metadata,
        )
        .instrument(span);
        AtomicResponse::new(Box::pin(work.into_actor(self).map(
            move |(loaded, result), act, _| {
                act.state = loaded.state;
                act.version = loaded.version;
                act.hydrated = loaded.hydrated;
                act.last_active = Instant::now();
                act.depth.fetch_sub(1, Ordering::AcqRel);
                if !is_query {
                    count_command::<D>(&result);
                }
                let _ = reply.send(result);
            },
        )))
    }
}

/// Counts one command by outcome, and the events it committed by type (both bounded sets:
/// the decider's event names and four outcomes).
fn count_command<D: Decider>(result: &Result<CommandOutcome<D>, ActorError>) {
    let m = metrics();
    let kind = label("kind", D::KIND.prefix());
    let outcome = match result {
        Ok(o) => {
            for e in &o.events {
                m.events_committed
                    .add(1, &[kind.clone(), label("type", e.event_type())]);
            }
            if o.events.is_empty() {
                "unchanged"
            } else {
                "ok"
            }
        }
        Err(ActorError::Domain(_)) => "rejected",
        Err(ActorError::Conflict(_)) => "conflict",
        Err(_) => "error",
    };
    m.commands.add(1, &[kind, label("outcome", outcome)]);
}

/// The actor's state as carried through one command.
struct Loaded<S> {
    state: S,
    version: Option<u64>,
    hydrated: bool,
}

async fn run<D: Decider>(
    store: SharedStore,
    stream: StreamName,
    mut loaded: Loaded<D::State>,
    command: Option<D::Command>,
    ctx: CommandContext,
    metadata: Metadata,
) -> (Loaded<D::State>, Result<CommandOutcome<D>, ActorError>)
where
    D::Command: Clone,
{
    // The acting user goes into every event's metadata: the audit trail is built from it.
    // So is the trace: projectors and deliveries, on any node, continue it from the event.
    let metadata = Metadata {
        user_id: metadata.user_id.or(ctx.actor.user_id.map(|u| u.as_uuid())),
        traceparent: metadata
            .traceparent
            .or_else(crate::telemetry::current_traceparent),
        ..metadata
    };
    if !loaded.hydrated || command.is_none() {
        if let Err(e) = catch_up::<D>(&store, &stream, &mut loaded).await {
            return (loaded, Err(e));
        }
        loaded.hydrated = true;
    }
    let Some(command) = command else {
        let outcome = CommandOutcome {
            events: Vec::new(),
            version: loaded.version,
            last_position: None,
            state: loaded.state.clone(),
        };
        return (loaded, Ok(outcome));
    };
    for attempt in 0..2 {
        let events = match D::decide(&loaded.state, command.clone(), &ctx) {
            Ok(events) => events,
            Err(e) => return (loaded, Err(e.into())),
        };
        if events.is_empty() {
            let outcome = CommandOutcome {
                events,
                version: loaded.version,
                last_position: None,
                state: loaded.state.clone(),
            };
            return (loaded, Ok(outcome));
        }
        let data = match events
            .iter()
            .map(|e| codec::encode(e, &metadata))
            .collect::<Result<Vec<_>, _>>()
        {
            Ok(d) => d,
            Err(e) => return (loaded, Err(e.into())),
        };
        let expected = ExpectedVersion::from_current(loaded.version);
        match store.append(&stream, expected, data).await {
            Ok(result) => {
                for e in &events {
                    loaded.state = D::evolve(std::mem::take(&mut loaded.state), e);
                }
                loaded.version = Some(result.next_expected_version);
                let outcome = CommandOutcome {
                    events,
                    version: loaded.version,
                    last_position: Some(result.last_position),
                    state: loaded.state.clone(),
                };
                return (loaded, Ok(outcome));
            }
            Err(e) if e.is_conflict() && attempt == 0 => {
                // Another node appended first: fold in what it wrote, then decide again.
                tracing::debug!(%stream, "version conflict; reloading and retrying once");
                if let Err(e) = catch_up::<D>(&store, &stream, &mut loaded).await {
                    return (loaded, Err(e));
                }
            }
            Err(e) if e.is_conflict() => {
                return (loaded, Err(ActorError::Conflict(stream.to_string())));
            }
            Err(e) => return (loaded, Err(e.into())),
        }
    }
    (loaded, Err(ActorError::Conflict(stream.to_string())))
}

/// Folds every event after the loaded version into the state.
async fn catch_up<D: Decider>(
    store: &SharedStore,
    stream: &StreamName,
    loaded: &mut Loaded<D::State>,
) -> Result<(), ActorError> {
    loop {
        let from = loaded.version.map_or(0, |v| v + 1);
        let page = store
            .read_stream(stream, from, Direction::Forward, HYDRATE_PAGE)
            .await?;
        let n = page.len();
        for recorded in &page {
            let event: D::Event = codec::decode(recorded)?;
            loaded.state = D::evolve(std::mem::take(&mut loaded.state), &event);
            loaded.version = Some(recorded.version);
        }
        if n < HYDRATE_PAGE {
            return Ok(());
        }
    }
}
