//! Finds or starts the actor of an aggregate, and delivers commands to it with a bounded
//! mailbox.

use super::ActorError;
use super::aggregate::{AggregateActor, CommandOutcome, Execute};
use crate::store::{Metadata, SharedStore};
use crate::telemetry::metrics::{label, metrics};
use actix::prelude::*;
use neulbi_domain::{Context as CommandContext, Decider, StreamName};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::oneshot;
use uuid::Uuid;

/// Tuning of the actor runtime; defaults suit a single node.
#[derive(Debug, Clone, Copy)]
pub struct RegistryConfig {
    /// Commands that may wait in one aggregate's mailbox before callers get "busy".
    pub mailbox_capacity: usize,
    /// An aggregate with no command for this long is stopped to free memory.
    pub idle_timeout: Duration,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        Self {
            mailbox_capacity: 64,
            idle_timeout: Duration::from_secs(300),
        }
    }
}

/// All live actors of one aggregate kind on this node.
pub struct Registry<D: Decider> {
    store: SharedStore,
    config: RegistryConfig,
    actors: Mutex<HashMap<Uuid, Entry<D>>>,
}

/// A live actor and its mailbox depth. actix bounds a mailbox per *sender*, and every caller
/// holds its own sender, so the registry keeps the one count that bounds them all.
struct Entry<D: Decider> {
    addr: Addr<AggregateActor<D>>,
    depth: Arc<AtomicUsize>,
}

impl<D: Decider> Clone for Entry<D> {
    fn clone(&self) -> Self {
        Self {
            addr: self.addr.clone(),
            depth: self.depth.clone(),
        }
    }
}

impl<D: Decider> Registry<D>
where
    D::Command: Clone,
{
    /// A registry whose actors read and append through `store`.
    pub fn new(store: SharedStore, config: RegistryConfig) -> Self {
        Self {
            store,
            config,
            actors: Mutex::new(HashMap::new()),
        }
    }

    /// Sends `command` to aggregate `id` and waits for the outcome. Must run inside an actix
    /// system (the actor is started on the current arbiter).
    pub async fn execute(
        &self,
        id: Uuid,
        command: D::Command,
        ctx: CommandContext,
        metadata: Metadata,
    ) -> Result<CommandOutcome<D>, ActorError> {
        self.send(id, Some(command), ctx, metadata).await
    }

    /// The aggregate's current state as its actor (the authority) knows it, caught up with the
    /// stream first: what a rule that spans aggregates checks (is this user a member of that
    /// room?) where a read model may still trail the log. Goes through the mailbox, so it
    /// answers "busy" like a command.
    pub async fn state(&self, id: Uuid) -> Result<D::State, ActorError> {
        let ctx = CommandContext::new(neulbi_domain::Actor::system(), chrono::Utc::now());
        let outcome = self.send(id, None, ctx, Metadata::default()).await?;
        Ok(outcome.state)
    }

    async fn send(
        &self,
        id: Uuid,
        command: Option<D::Command>,
        ctx: CommandContext,
        metadata: Metadata,
    ) -> Result<CommandOutcome<D>, ActorError> {
        // A passivated actor may stop between lookup and delivery; one fresh start covers it.
        for _ in 0..2 {
            let Entry { addr, depth } = self.address(id);
            let kind = [label("kind", D::KIND.prefix())];
            let queued = depth.fetch_add(1, Ordering::AcqRel);
            metrics().mailbox_depth.record(queued as u64, &kind);
            if queued >= self.config.mailbox_capacity {
                depth.fetch_sub(1, Ordering::AcqRel);
                metrics().busy_refusals.add(1, &kind);
                return Err(ActorError::Busy);
            }
            let (reply, answer) = oneshot::channel();
            let msg = Execute {
                command: command.clone(),
                ctx,
                metadata: metadata.clone(),
                reply,
                span: tracing::Span::current(),
            };
            match addr.try_send(msg) {
                Ok(()) => match answer.await {
                    Ok(result) => return result,
                    Err(_) => self.forget(id, &addr),
                },
                Err(SendError::Full(_)) => {
                    depth.fetch_sub(1, Ordering::AcqRel);
                    metrics().busy_refusals.add(1, &kind);
                    return Err(ActorError::Busy);
                }
                Err(SendError::Closed(_)) => self.forget(id, &addr),
            }
        }
        Err(ActorError::Unavailable)
    }

    /// How many actors are alive (not passivated) right now.
    pub fn live_actors(&self) -> usize {
        let mut actors = self.lock();
        actors.retain(|_, a| a.addr.connected());
        actors.len()
    }

    fn address(&self, id: Uuid) -> Entry<D> {
        let mut actors = self.lock();
        if let Some(entry) = actors.get(&id).filter(|a| a.addr.connected()) {
            return entry.clone();
        }
        if actors.len() >= 1024 && actors.len().is_power_of_two() {
            actors.retain(|_, a| a.addr.connected());
        }
        let stream = StreamName::new(D::KIND, id);
        let store = self.store.clone();
        let RegistryConfig {
            mailbox_capacity,
            idle_timeout,
        } = self.config;
        let depth = Arc::new(AtomicUsize::new(0));
        let actor_depth = depth.clone();
        let addr = AggregateActor::<D>::create(move |ctx| {
            ctx.set_mailbox_capacity(mailbox_capacity);
            AggregateActor::new(store, stream, idle_timeout, actor_depth)
        });
        let entry = Entry { addr, depth };
        actors.insert(id, entry.clone());
        entry
    }

    fn forget(&self, id: Uuid, addr: &Addr<AggregateActor<D>>) {
        let mut actors = self.lock();
        if actors.get(&id).is_some_and(|a| a.addr == *addr) {
            actors.remove(&id);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Entry<D>>> {
        // A panic while holding this lock cannot leave the map inconsistent (single inserts
        // and removals), so a poisoned lock is still usable.
        self.actors.lock().unwrap_or_else(|p| p.into_inner())
    }
}
