//! SockJS sessions of the HTTP transports: the registry keyed by session id, the lifecycle
//! rules (first receiver gets `o`, one receiver at a time, closed sessions answer with their
//! close frame until they expire, a vanished receiver interrupts the session) as a pure state
//! machine over simulated time, and the channel an application reads and writes through.

use super::framing::Frame;
use crate::edge::stomp::driver::{Transport, TransportClosed};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// Batches of client messages an application has not read yet, per session; a client that
/// sends faster than the application reads waits (and then fails) instead of growing memory.
pub const INBOUND_BATCHES: usize = 4;

/// One batch of client messages for the application. `taken`, when present, is signalled
/// (dropped) once the application has handled every message of the batch and asks for more,
/// so `xhr_send` can answer after the application acted on what it sent (the protocol's test
/// services echo before the next poll, as sockjs-node does synchronously).
#[derive(Debug, Default)]
pub struct Inbound {
    /// The messages, in the order the client sent them.
    pub messages: Vec<String>,
    /// Dropped when the batch has been handled.
    pub taken: Option<oneshot::Sender<()>>,
}

impl Inbound {
    /// A batch nobody waits on (the WebSocket transport reads the next one anyway).
    pub fn new(messages: Vec<String>) -> Self {
        Self {
            messages,
            taken: None,
        }
    }

    /// A batch and the receiver that resolves once the application has handled it.
    pub fn tracked(messages: Vec<String>) -> (Self, oneshot::Receiver<()>) {
        let (tx, rx) = oneshot::channel();
        (
            Self {
                messages,
                taken: Some(tx),
            },
            rx,
        )
    }
}

/// What a receiving request does on a session, decided by [`Lifecycle::attach`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attach {
    /// First receiver of a new session: send `o`, then (streaming) keep receiving.
    Open,
    /// Receive messages.
    Receive,
    /// Another receiver is attached; [`Session::attach`] waits briefly for it to go (a client
    /// that just dropped its request may not have been noticed yet), then refuses.
    Busy,
    /// Answer with this close frame and end (closed session, or a receiver is attached).
    Refuse(Frame),
}

/// How long a receiving request waits for the previous receiver's disconnect to be noticed
/// before it is refused with "Another connection still open".
pub const RECEIVER_GRACE: Duration = Duration::from_millis(500);

/// The lifecycle of one session, free of I/O and clocks.
#[derive(Debug, Clone)]
pub struct Lifecycle {
    opened: bool,
    closed: Option<Frame>,
    attached: bool,
    idle_since: Instant,
}

impl Lifecycle {
    /// A session created at `now`, with no receiver yet.
    pub fn new(now: Instant) -> Self {
        Self {
            opened: false,
            closed: None,
            attached: false,
            idle_since: now,
        }
    }

    /// A receiving request arrives. Only [`Attach::Open`] and [`Attach::Receive`] attach it.
    pub fn attach(&mut self) -> Attach {
        if !self.opened {
            self.opened = true;
            self.attached = true;
            return Attach::Open;
        }
        if let Some(frame) = &self.closed {
            return Attach::Refuse(frame.clone());
        }
        if self.attached {
            return Attach::Busy;
        }
        self.attached = true;
        Attach::Receive
    }

    /// The attached receiver is gone at `now`; `interrupted` when the client vanished
    /// mid-response. Returns whether that interruption closed the session.
    pub fn detach(&mut self, now: Instant, interrupted: bool) -> bool {
        self.attached = false;
        self.idle_since = now;
        if interrupted && self.closed.is_none() {
            self.closed = Some(Frame::interrupted());
            return true;
        }
        false
    }

    /// The application ended the session; the first close reason sticks. Returns it.
    pub fn close(&mut self) -> Frame {
        self.closed.get_or_insert_with(Frame::go_away).clone()
    }

    /// Whether the session is closed.
    pub fn is_closed(&self) -> bool {
        self.closed.is_some()
    }

    /// How long until the session expires if nothing attaches (`None`: it has expired).
    /// An attached session is checked again after a full `delay`.
    pub fn expires_in(&self, now: Instant, delay: Duration) -> Option<Duration> {
        if self.attached {
            return Some(delay);
        }
        delay
            .checked_sub(now.saturating_duration_since(self.idle_since))
            .filter(|left| !left.is_zero())
    }
}

/// One HTTP-transport session: its lifecycle and both ends of the application's channel.
pub struct Session {
    lifecycle: Mutex<Lifecycle>,
    inbound: Mutex<Option<mpsc::Sender<Inbound>>>,
    /// The application's outbound messages; holding the lock is being the one receiver.
    pub outbound: Arc<tokio::sync::Mutex<mpsc::Receiver<String>>>,
    /// Woken when a receiver detaches, for a request waiting in [`Attach::Busy`].
    detached: tokio::sync::Notify,
}

impl Session {
    /// A new session and the [`Channel`] its application uses; `capacity` bounds the
    /// messages queued for the client.
    pub fn new(now: Instant, capacity: usize) -> (Arc<Self>, Channel) {
        let (in_tx, in_rx) = mpsc::channel(INBOUND_BATCHES);
        let (out_tx, out_rx) = mpsc::channel(capacity.max(1));
        let session = Arc::new(Self {
            lifecycle: Mutex::new(Lifecycle::new(now)),
            inbound: Mutex::new(Some(in_tx)),
            outbound: Arc::new(tokio::sync::Mutex::new(out_rx)),
            detached: tokio::sync::Notify::new(),
        });
        (session, Channel::new(in_rx, out_tx))
    }

    /// The lifecycle, also after a panic elsewhere (it holds no invariant a panic can break).
    pub fn lifecycle(&self) -> MutexGuard<'_, Lifecycle> {
        self.lifecycle.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Attaches a receiving request: while another receiver is attached, waits up to `grace`
    /// for it to detach, then refuses with "Another connection still open". Never
    /// [`Attach::Busy`].
    pub async fn attach(&self, grace: Duration) -> Attach {
        let deadline = tokio::time::Instant::now() + grace;
        loop {
            let detached = self.detached.notified();
            tokio::pin!(detached);
            // Registered before the check, so a detach in between is not missed.
            detached.as_mut().enable();
            let attach = self.lifecycle().attach();
            if attach != Attach::Busy {
                return attach;
            }
            if tokio::time::timeout_at(deadline, detached).await.is_err() {
                return Attach::Refuse(Frame::another_connection());
            }
        }
    }

    /// The attached receiver is gone at `now` (see [`Lifecycle::detach`]); wakes a request
    /// waiting to attach. Returns whether the session was interrupted.
    pub fn detach(&self, now: Instant, interrupted: bool) -> bool {
        let closed = self.lifecycle().detach(now, interrupted);
        self.detached.notify_waiters();
        closed
    }

    /// The sender of client messages, while the session and its application are live.
    pub fn inbound(&self) -> Option<mpsc::Sender<Inbound>> {
        self.inbound
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .filter(|tx| !tx.is_closed())
    }

    /// Ends the application: its `recv` returns `None` once queued messages are read.
    pub fn end_application(&self) {
        self.inbound
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
    }
}

/// Counts open sessions (HTTP and websocket) against the per-node limit.
#[derive(Debug, Default)]
pub struct Slots {
    open: AtomicUsize,
    max: usize,
}

/// One counted session; the count drops with it.
#[derive(Debug)]
pub struct Slot(Arc<Slots>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The node's session limit is reached.
#[derive(Debug, thiserror::Error)]
#[error("too many SockJS sessions")]
pub struct Full;

impl Slots {
    /// At most `max` sessions at a time.
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            open: AtomicUsize::new(0),
            max,
        })
    }

    /// Takes a slot, or fails when all are taken.
    pub fn take(self: &Arc<Self>) -> Result<Slot, Full> {
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .map(|_| Slot(self.clone()))
            .map_err(|_| Full)
    }

    /// Sessions open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }
}

/// Sessions by (service base, session id), each with its slot.
type Sessions = HashMap<(&'static str, String), (Arc<Session>, Slot)>;

/// The HTTP-transport sessions of one node, keyed by service and session id.
#[derive(Default)]
pub struct Registry {
    sessions: Mutex<Sessions>,
}

impl Registry {
    fn map(&self) -> MutexGuard<'_, Sessions> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The live session `id` of `service`.
    pub fn get(&self, service: &'static str, id: &str) -> Option<Arc<Session>> {
        self.map()
            .get(&(service, id.to_owned()))
            .map(|(s, _)| s.clone())
    }

    /// The session `id`, created with `make` (which takes a slot) when it does not exist.
    /// Returns whether it was created.
    pub fn get_or_create<E>(
        &self,
        service: &'static str,
        id: &str,
        make: impl FnOnce() -> Result<(Arc<Session>, Slot), E>,
    ) -> Result<(Arc<Session>, bool), E> {
        let mut map = self.map();
        if let Some((s, _)) = map.get(&(service, id.to_owned())) {
            return Ok((s.clone(), false));
        }
        let (session, slot) = make()?;
        map.insert((service, id.to_owned()), (session.clone(), slot));
        Ok((session, true))
    }

    /// Forgets `session` (if it is still the one registered under `id`) and ends its
    /// application.
    pub fn remove(&self, service: &'static str, id: &str, session: &Arc<Session>) {
        let mut map = self.map();
        let key = (service, id.to_owned());
        if map.get(&key).is_some_and(|(s, _)| Arc::ptr_eq(s, session)) {
            map.remove(&key);
        }
        drop(map);
        session.end_application();
    }

    /// Sessions registered now.
    pub fn len(&self) -> usize {
        self.map().len()
    }

    /// Whether no session is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The application's side of a session: each client message in, each outbound message out.
/// Implements [`Transport`] so the STOMP driver runs over any SockJS transport unchanged.
pub struct Channel {
    inbound: mpsc::Receiver<Inbound>,
    pending: VecDeque<String>,
    /// The signal of the batch `pending` came from; dropped when the app asks past it.
    taken: Option<oneshot::Sender<()>>,
    outbound: Option<mpsc::Sender<String>>,
    label: &'static str,
}

impl Channel {
    /// A channel over the two queues.
    pub fn new(inbound: mpsc::Receiver<Inbound>, outbound: mpsc::Sender<String>) -> Self {
        Self {
            inbound,
            pending: VecDeque::new(),
            taken: None,
            outbound: Some(outbound),
            label: "sockjs-http",
        }
    }

    /// The same channel carried by a SockJS WebSocket (the metrics' `transport` label).
    pub fn over_websocket(mut self) -> Self {
        self.label = "sockjs-websocket";
        self
    }
}

#[async_trait::async_trait(?Send)]
impl Transport for Channel {
    async fn recv(&mut self) -> Option<Vec<u8>> {
        loop {
            if let Some(message) = self.pending.pop_front() {
                return Some(message.into_bytes());
            }
            // Asking past the last message means the batch has been handled.
            self.taken = None;
            // Cancel-safe: a batch is either left in the queue or already in `pending`.
            let batch = self.inbound.recv().await?;
            self.pending.extend(batch.messages);
            self.taken = batch.taken;
        }
    }

    async fn send(&mut self, bytes: Vec<u8>) -> Result<(), TransportClosed> {
        // SockJS carries text; STOMP frames of this server are UTF-8.
        let text = String::from_utf8(bytes).map_err(|_| TransportClosed)?;
        let outbound = self.outbound.as_ref().ok_or(TransportClosed)?;
        // Waits while the client's queue is full; the driver's write timeout then ends a
        // client that does not poll as a slow consumer.
        outbound.send(text).await.map_err(|_| TransportClosed)
    }

    async fn close(&mut self) {
        // Receivers see the end of the queue and answer with the close frame.
        self.outbound = None;
        self.taken = None;
        self.inbound.close();
    }

    fn label(&self) -> &'static str {
        self.label
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_receiver_opens_then_one_at_a_time() {
        let t0 = Instant::now();
        let mut l = Lifecycle::new(t0);
        assert_eq!(l.attach(), Attach::Open);
        assert_eq!(l.attach(), Attach::Busy);
        assert!(!l.detach(t0, false));
        assert_eq!(l.attach(), Attach::Receive);
        l.detach(t0, false);
    }

    #[test]
    fn closed_sessions_answer_with_their_close_frame_until_they_expire() {
        let t0 = Instant::now();
        let delay = Duration::from_secs(5);
        let mut l = Lifecycle::new(t0);
        assert_eq!(
            l.attach(),
            Attach::Open,
            "o comes first even if already closed"
        );
        l.detach(t0, false);
        assert_eq!(l.close(), Frame::go_away());
        assert_eq!(l.attach(), Attach::Refuse(Frame::go_away()));
        assert_eq!(
            l.attach(),
            Attach::Refuse(Frame::go_away()),
            "again and again"
        );
        assert_eq!(
            l.expires_in(t0 + Duration::from_secs(2), delay),
            Some(Duration::from_secs(3))
        );
        assert_eq!(l.expires_in(t0 + delay, delay), None);
    }

    #[test]
    fn a_vanished_receiver_interrupts_and_an_attached_one_keeps_alive() {
        let t0 = Instant::now();
        let delay = Duration::from_secs(5);
        let mut l = Lifecycle::new(t0);
        l.attach();
        assert_eq!(
            l.expires_in(t0 + Duration::from_secs(60), delay),
            Some(delay)
        );
        let t1 = t0 + Duration::from_secs(60);
        assert!(l.detach(t1, true), "the interruption closes the session");
        assert_eq!(l.attach(), Attach::Refuse(Frame::interrupted()));
        assert_eq!(l.close(), Frame::interrupted(), "the first reason sticks");
        assert_eq!(l.expires_in(t1 + delay, delay), None);
    }

    #[test]
    fn slots_bound_the_sessions_of_a_node() {
        let slots = Slots::new(2);
        let a = slots.take().expect("first");
        let _b = slots.take().expect("second");
        assert!(slots.take().is_err());
        drop(a);
        assert_eq!(slots.open(), 1);
        assert!(slots.take().is_ok());
    }

    #[tokio::test]
    async fn the_channel_carries_messages_and_closes() {
        let (session, mut channel) = Session::new(Instant::now(), 1);
        let tx = session.inbound().expect("live");
        tx.send(Inbound::new(vec!["a".into(), "b".into()]))
            .await
            .expect("send");
        assert_eq!(channel.recv().await, Some(b"a".to_vec()));
        assert_eq!(channel.recv().await, Some(b"b".to_vec()));
        channel.send(b"x".to_vec()).await.expect("queued");
        // The queue holds one message: the next send waits for a receiver.
        let full = tokio::time::timeout(Duration::from_millis(50), channel.send(b"y".to_vec()));
        assert!(full.await.is_err(), "bounded");
        assert!(channel.send(vec![0xff]).await.is_err(), "not text");
        let mut rx = session.outbound.clone().lock_owned().await;
        assert_eq!(rx.recv().await.as_deref(), Some("x"));
        channel.close().await;
        assert_eq!(rx.recv().await, None);
        drop(tx);
        session.end_application();
        assert_eq!(channel.recv().await, None);
    }

    #[tokio::test]
    async fn a_tracked_batch_is_signalled_once_the_application_asks_past_it() {
        let (session, mut channel) = Session::new(Instant::now(), 4);
        let tx = session.inbound().expect("live");
        let (batch, mut taken) = Inbound::tracked(vec!["a".into(), "b".into()]);
        tx.send(batch).await.expect("send");
        assert_eq!(channel.recv().await, Some(b"a".to_vec()));
        assert_eq!(channel.recv().await, Some(b"b".to_vec()));
        // The last message is read but not yet handled: no signal.
        assert!(matches!(
            taken.try_recv(),
            Err(oneshot::error::TryRecvError::Empty)
        ));
        // Handling it (an echo) and asking for more signals the sender.
        channel.send(b"b".to_vec()).await.expect("queued");
        let next = tokio::time::timeout(Duration::from_millis(50), channel.recv());
        assert!(next.await.is_err(), "nothing more to read");
        assert!(matches!(
            taken.try_recv(),
            Err(oneshot::error::TryRecvError::Closed)
        ));
    }

    #[tokio::test]
    async fn a_second_receiver_waits_for_the_first_to_go_then_is_refused() {
        let (session, _channel) = Session::new(Instant::now(), 1);
        assert_eq!(session.attach(Duration::ZERO).await, Attach::Open);
        // Nobody leaves: refused after the grace.
        let grace = Duration::from_millis(30);
        assert_eq!(
            session.attach(grace).await,
            Attach::Refuse(Frame::another_connection())
        );
        // The first receiver leaves while the second waits: the second attaches.
        let waiting = {
            let session = session.clone();
            tokio::spawn(async move { session.attach(Duration::from_secs(10)).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished(), "waits while the first is attached");
        assert!(!session.detach(Instant::now(), false));
        assert_eq!(waiting.await.expect("joined"), Attach::Receive);
    }
}
