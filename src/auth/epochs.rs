//! Revocation at once: per-user token epochs, fed from the log on every node.
//!
//! An access token is a signed statement that stays valid until it expires, so a role change,
//! a closed account or "sign out everywhere" would otherwise leave old tokens working for up to
//! their lifetime. Every access token of a person carries `user_version`: the version of their
//! user stream when it was issued (the issuer has just read or appended that stream). Every
//! event in [`ACCESS_REVOKING_EVENTS`] sets the person's *epoch* to its own stream version; a
//! token is accepted only if `user_version >= epoch`. Versions, unlike clocks, order a token
//! and a revocation exactly: a token issued in the same millisecond right after the bump read
//! the stream after it and carries its version, one issued right before does not. No node's
//! clock takes part in the decision.
//!
//! The epochs live in memory ([`TokenEpochs`]), so checking costs a map lookup, not a database
//! read. Every node follows the log's live feed (PostgreSQL's LISTEN/NOTIFY wakes other nodes
//! at once; a 1 s poll backs it up) and rebuilds the recent epochs from the log at start-up.
//! An epoch is dropped once its event is older than the longest an access token issued before
//! it can live (TTL + verification leeway + a margin for clock differences), since such tokens
//! are refused as expired anyway; memory is bounded by the revocations of one token lifetime.
//!
//! Open STOMP and signaling sessions ask for a [`Revocation`] future that resolves when their
//! token is revoked, so they are cut within the feed's delay too.

use crate::store::{RecordedEvent, SharedStore, StoreError};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use neulbi_domain::user::{ACCESS_REVOKING_EVENTS, ACCOUNT_CLOSING_EVENTS};
use neulbi_domain::{StreamKind, UserId};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::sync::watch;
use tracing::Instrument;

/// Tolerated clock difference between nodes, added to how long an epoch is kept.
const CLOCK_MARGIN: Duration = Duration::from_secs(60);
/// Events read per page while rebuilding at start-up.
const PAGE: usize = 512;
/// The pause before resubscribing to the live feed after it failed.
const FEED_RETRY: Duration = Duration::from_secs(1);

/// Why a person's earlier tokens were revoked, as far as a session needs to tell them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RevocationKind {
    /// The account was deactivated or erased.
    AccountClosed,
    /// The role changed or the person signed out everywhere: signing in again works.
    SignInAgain,
}

/// One person's epoch: tokens with an older `user_version` are refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Epoch {
    /// The stream version of the latest revoking event.
    pub version: u64,
    /// When that event was recorded (decides when the epoch may be forgotten).
    pub recorded_at: DateTime<Utc>,
    /// What kind of event it was.
    pub kind: RevocationKind,
}

impl Epoch {
    /// True if a token issued at `user_version` (`None`: a token from before versions were
    /// carried, which counts as older than any epoch) is revoked by this epoch.
    pub fn revokes(&self, user_version: Option<u64>) -> bool {
        user_version.is_none_or(|v| v < self.version)
    }
}

#[derive(Default)]
struct Inner {
    epochs: HashMap<UserId, Epoch>,
    /// Per person with a live session on this node, the channel that tells it of new epochs.
    watchers: HashMap<UserId, watch::Sender<Option<Epoch>>>,
    /// `watchers.len()` after the last sweep of unwatched entries.
    swept_at: usize,
}

/// The in-memory epochs of one node; shared by the sign-in service (every token check) and
/// the open sessions (their [`Revocation`]s).
pub struct TokenEpochs {
    inner: Mutex<Inner>,
    keep: chrono::Duration,
}

/// Resolves once the token a session was opened with is revoked; never otherwise.
pub type Revocation = Pin<Box<dyn Future<Output = RevocationKind> + Send + 'static>>;

impl TokenEpochs {
    /// Epochs for access tokens that live `access_ttl` and are checked with `leeway`.
    pub fn new(access_ttl: Duration, leeway: Duration) -> Self {
        let keep = access_ttl + leeway + CLOCK_MARGIN;
        Self {
            inner: Mutex::default(),
            keep: chrono::Duration::from_std(keep).unwrap_or(chrono::Duration::MAX),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Each update is a single insert or remove, so the maps stay consistent after a panic.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The person's current epoch, if one is remembered.
    pub fn epoch(&self, user: UserId) -> Option<Epoch> {
        self.lock().epochs.get(&user).copied()
    }

    /// The epoch that refuses a token of `user` issued at `user_version`, if any.
    pub fn revoked(&self, user: UserId, user_version: Option<u64>) -> Option<Epoch> {
        self.epoch(user).filter(|e| e.revokes(user_version))
    }

    /// How many epochs are remembered (for tests and metrics).
    pub fn len(&self) -> usize {
        self.lock().epochs.len()
    }

    /// True if no epoch is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Raises the person's epoch to `epoch` (a lower or equal one changes nothing, so the
    /// feed and a local shortcut may both report the same event) and tells their sessions.
    /// Epochs too old to matter are dropped on the way, which bounds memory.
    pub fn bump(&self, user: UserId, epoch: Epoch, now: DateTime<Utc>) {
        let cutoff = now - self.keep;
        if epoch.recorded_at < cutoff {
            return;
        }
        let mut inner = self.lock();
        let current = inner.epochs.get(&user).copied();
        if current.is_some_and(|c| c.version >= epoch.version) {
            return;
        }
        let _span = tracing::info_span!(
            "token_epoch.bump",
            user_id = %user,
            version = epoch.version,
            kind = ?epoch.kind
        )
        .entered();
        inner.epochs.retain(|_, e| e.recorded_at >= cutoff);
        inner.epochs.insert(user, epoch);
        if let Some(watcher) = inner.watchers.get(&user) {
            watcher.send_replace(Some(epoch));
        }
        tracing::debug!(epochs = inner.epochs.len(), "access tokens revoked");
    }

    /// Applies one event of the log: a revoking user event raises its person's epoch.
    pub fn observe(&self, event: &RecordedEvent, now: DateTime<Utc>) {
        if let Some((user, epoch)) = epoch_of(event) {
            self.bump(user, epoch, now);
        }
    }

    /// A future that resolves when a token of `user` issued at `user_version` is revoked
    /// (at once if it already is). Dropping it is the only clean-up a session needs.
    pub fn revocation(&self, user: UserId, user_version: Option<u64>) -> Revocation {
        let mut receiver = {
            let mut inner = self.lock();
            if inner.watchers.len() >= 2 * inner.swept_at.max(64) {
                inner.watchers.retain(|_, w| w.receiver_count() > 0);
                inner.swept_at = inner.watchers.len();
            }
            let current = inner.epochs.get(&user).copied();
            inner
                .watchers
                .entry(user)
                .or_insert_with(|| watch::channel(current).0)
                .subscribe()
        };
        Box::pin(async move {
            loop {
                let seen = *receiver.borrow_and_update();
                if let Some(epoch) = seen.filter(|e| e.revokes(user_version)) {
                    return epoch.kind;
                }
                if receiver.changed().await.is_err() {
                    // The epochs are gone (the node is stopping): nothing will revoke it.
                    std::future::pending::<()>().await;
                }
            }
        })
    }

    /// Rebuilds the recent epochs from the log, then follows its live feed on the deliveries
    /// lane for as long as `self` lives. Returns once the rebuild is done, so a node that
    /// serves afterwards refuses tokens revoked before it started. `store` should be the raw
    /// backend: only stream names, types, versions and times are read.
    pub async fn follow(self: &Arc<Self>, store: SharedStore) -> Result<(), StoreError> {
        let span = tracing::info_span!("token_epoch.rebuild");
        let head = self.rebuild(&store).instrument(span).await?;
        let from = head.map_or(0, |h| h + 1);
        crate::lanes::spawn(
            crate::lanes::Lane::Deliveries,
            feed(store, from, Arc::downgrade(self)),
        );
        Ok(())
    }

    /// Reads the log backwards from its head until the events are older than any epoch that
    /// still matters; returns the head it started from.
    async fn rebuild(&self, store: &SharedStore) -> Result<Option<u64>, StoreError> {
        let Some(head) = store.head_position().await? else {
            return Ok(None);
        };
        let now = Utc::now();
        // Positions follow commit order while `recorded_at` comes from each node's clock:
        // read one margin further back than strictly needed.
        let stop_before =
            now - self.keep - chrono::Duration::from_std(CLOCK_MARGIN).unwrap_or_default();
        let mut before = head + 1;
        let mut read = 0usize;
        loop {
            // Newest first; positions need not be contiguous (KurrentDB).
            let page = store.read_all_backward(before, PAGE).await?;
            let Some(oldest) = page.last() else { break };
            before = oldest.position;
            read += page.len();
            for event in &page {
                self.observe(event, now);
            }
            let oldest = page.iter().map(|e| e.recorded_at).min();
            if oldest.is_some_and(|t| t < stop_before) || before == 0 {
                break;
            }
        }
        tracing::info!(events = read, epochs = self.len(), "token epochs rebuilt");
        Ok(Some(head))
    }
}

/// The person and epoch a recorded event sets, if it is a revoking user event.
fn epoch_of(event: &RecordedEvent) -> Option<(UserId, Epoch)> {
    if event.stream.kind() != StreamKind::User
        || !ACCESS_REVOKING_EVENTS.contains(&event.event_type.as_str())
    {
        return None;
    }
    let kind = if ACCOUNT_CLOSING_EVENTS.contains(&event.event_type.as_str()) {
        RevocationKind::AccountClosed
    } else {
        RevocationKind::SignInAgain
    };
    Some((
        UserId::from_uuid(event.stream.id()),
        Epoch {
            version: event.version,
            recorded_at: event.recorded_at,
            kind,
        },
    ))
}

/// Follows the log from `from`; after a feed error it resubscribes from the next position
/// (after a pause), so a database hiccup delays revocations instead of losing them.
async fn feed(store: SharedStore, mut from: u64, epochs: Weak<TokenEpochs>) {
    loop {
        let mut events = store.subscribe_all(from);
        while let Some(next) = events.next().await {
            let Some(epochs) = epochs.upgrade() else {
                return;
            };
            match next {
                Ok(event) => {
                    from = event.position + 1;
                    epochs.observe(&event, Utc::now());
                }
                Err(error) => {
                    tracing::warn!(%error, "token epochs: live feed failed; resubscribing");
                    break;
                }
            }
        }
        if epochs.strong_count() == 0 {
            return;
        }
        tokio::time::sleep(FEED_RETRY).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;
    use uuid::Uuid;

    fn user(n: u128) -> UserId {
        UserId::from_uuid(Uuid::from_u128(n))
    }

    fn epoch(version: u64, recorded_at: DateTime<Utc>) -> Epoch {
        Epoch {
            version,
            recorded_at,
            kind: RevocationKind::SignInAgain,
        }
    }

    fn epochs() -> TokenEpochs {
        TokenEpochs::new(Duration::from_secs(600), Duration::from_secs(30))
    }

    #[test]
    fn a_token_from_before_the_epoch_is_refused_and_one_from_after_is_not() {
        let epochs = epochs();
        let now = Utc::now();
        assert!(epochs.revoked(user(1), Some(1)).is_none(), "no epoch yet");
        epochs.bump(user(1), epoch(4, now), now);
        // The boundary: a token issued on a read of version 3 predates the event at 4; one
        // issued after it (even in the same millisecond) read version 4 or later.
        assert!(epochs.revoked(user(1), Some(3)).is_some());
        assert!(epochs.revoked(user(1), Some(4)).is_none());
        assert!(epochs.revoked(user(1), Some(9)).is_none());
        assert!(epochs.revoked(user(1), None).is_some(), "unversioned = old");
        assert!(
            epochs.revoked(user(2), Some(0)).is_none(),
            "others unaffected"
        );
    }

    #[test]
    fn epochs_only_rise_and_old_ones_are_forgotten() {
        let epochs = epochs();
        let now = Utc::now();
        epochs.bump(user(1), epoch(4, now), now);
        epochs.bump(user(1), epoch(2, now), now);
        assert_eq!(epochs.epoch(user(1)).map(|e| e.version), Some(4));
        // Older than TTL + leeway + margin: every token it could refuse has expired.
        let long_ago = now - chrono::Duration::seconds(600 + 30 + 61);
        epochs.bump(user(2), epoch(7, long_ago), now);
        assert!(epochs.epoch(user(2)).is_none());
        // A later bump sweeps epochs that aged out meanwhile.
        let later = now + chrono::Duration::seconds(600 + 30 + 61);
        epochs.bump(user(3), epoch(1, later), later);
        assert!(epochs.epoch(user(1)).is_none());
        assert_eq!(epochs.len(), 1);
    }

    #[tokio::test]
    async fn a_session_learns_of_its_revocation_and_only_of_its_own() {
        let epochs = epochs();
        let now = Utc::now();
        let mut mine = epochs.revocation(user(1), Some(2));
        let mut newer = epochs.revocation(user(1), Some(5));
        let mut theirs = epochs.revocation(user(2), Some(2));
        assert!((&mut mine).now_or_never().is_none());
        epochs.bump(
            user(1),
            Epoch {
                kind: RevocationKind::AccountClosed,
                ..epoch(3, now)
            },
            now,
        );
        assert_eq!(
            tokio::time::timeout(Duration::from_secs(1), &mut mine).await,
            Ok(RevocationKind::AccountClosed)
        );
        assert!(
            (&mut newer).now_or_never().is_none(),
            "issued after the bump"
        );
        assert!((&mut theirs).now_or_never().is_none());
        // Already revoked when asked: resolves at once.
        assert!(epochs.revocation(user(1), Some(1)).now_or_never().is_some());
    }

    fn recorded(kind: StreamKind, id: u128, event_type: &str, version: u64) -> RecordedEvent {
        RecordedEvent {
            position: 7,
            stream: neulbi_domain::StreamName::new(kind, Uuid::from_u128(id)),
            version,
            event_id: Uuid::now_v7(),
            event_type: event_type.into(),
            schema_version: 1,
            data: serde_json::json!({}),
            metadata: crate::store::Metadata::default(),
            recorded_at: Utc::now(),
        }
    }

    #[test]
    fn only_revoking_user_events_move_epochs() {
        let epochs = epochs();
        let now = Utc::now();
        for harmless in [
            recorded(StreamKind::User, 1, "LoggedIn", 3),
            recorded(StreamKind::User, 1, "ProfileUpdated", 4),
            // A room or call event of the same name is not about a person's access.
            recorded(StreamKind::Room, 1, "Erased", 5),
        ] {
            epochs.observe(&harmless, now);
        }
        assert!(epochs.is_empty());
        epochs.observe(&recorded(StreamKind::User, 1, "RoleGranted", 5), now);
        assert_eq!(
            epochs.epoch(user(1)).map(|e| (e.version, e.kind)),
            Some((5, RevocationKind::SignInAgain))
        );
        epochs.observe(
            &recorded(StreamKind::User, 1, "SignedOutEverywhere", 6),
            now,
        );
        epochs.observe(&recorded(StreamKind::User, 1, "Deactivated", 8), now);
        assert_eq!(
            epochs.epoch(user(1)).map(|e| (e.version, e.kind)),
            Some((8, RevocationKind::AccountClosed))
        );
        epochs.observe(&recorded(StreamKind::User, 2, "Erased", 2), now);
        assert_eq!(
            epochs.epoch(user(2)).map(|e| e.kind),
            Some(RevocationKind::AccountClosed)
        );
    }

    #[test]
    fn unwatched_channels_are_swept() {
        let epochs = epochs();
        for n in 0..1000 {
            drop(epochs.revocation(user(n), Some(1)));
        }
        assert!(epochs.lock().watchers.len() <= 128);
    }
}
