//! Runs one STOMP connection over any [`Transport`]: bytes from the client into the codec,
//! time into the session, deliveries from the [`Broker`], and the session's effects back out.
//! The raw WebSocket and every SockJS transport share this loop; they differ only in how
//! bytes move, which is all a [`Transport`] does.

use super::broker::{Broker, ConnId};
use super::codec::{self, Decoder};
use super::connection::{ChatBackend, Connection, Effect, InFlight, Router};
use super::frame::{Command, Frame, Version};
use super::session::{CloseReason, Session, Topic};
use super::websocket::StompConfig;
use crate::telemetry::metrics::{label, metrics};
use std::collections::VecDeque;
use std::time::{Duration, Instant};
use tracing::Instrument;

/// How long one write may wait for a client that does not read before it is dropped.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a transport could not carry a write; the connection ends.
#[derive(Debug, thiserror::Error)]
#[error("the transport is closed")]
pub struct TransportClosed;

/// Moves bytes between one client and the driver. `recv` must be cancel-safe: the driver
/// polls it alongside deliveries and timers.
#[async_trait::async_trait(?Send)]
pub trait Transport {
    /// The next chunk of client bytes (any framing of STOMP frames); `None` once the client
    /// went away.
    async fn recv(&mut self) -> Option<Vec<u8>>;
    /// Writes one encoded STOMP frame or heart-beat EOL.
    async fn send(&mut self, bytes: Vec<u8>) -> Result<(), TransportClosed>;
    /// Closes the client side; called once, after the last write.
    async fn close(&mut self);
    /// The transport's name in metrics (`websocket`, `sockjs-websocket`, `sockjs-http`).
    fn label(&self) -> &'static str;
}

/// One connection's routes in the broker; counts its joins for the subscriptions gauge.
struct BrokerRoute<'a> {
    broker: &'a Broker,
    conn: ConnId,
    joined: std::cell::Cell<i64>,
}

impl Router for BrokerRoute<'_> {
    fn join(&self, topic: Topic) {
        self.broker.join(self.conn, topic);
        self.joined.set(self.joined.get() + 1);
        metrics().stomp_subscriptions.add(1, &[]);
    }

    fn leave(&self, topic: Topic) {
        self.broker.leave(self.conn, topic);
        self.joined.set(self.joined.get() - 1);
        metrics().stomp_subscriptions.add(-1, &[]);
    }
}

/// Counts a session open for as long as it lives, however the driver ends.
struct SessionGauge(&'static str);

impl SessionGauge {
    fn open(transport: &'static str) -> Self {
        metrics()
            .stomp_sessions
            .add(1, &[label("transport", transport)]);
        Self(transport)
    }
}

impl Drop for SessionGauge {
    fn drop(&mut self) {
        metrics()
            .stomp_sessions
            .add(-1, &[label("transport", self.0)]);
    }
}

/// Client frames decoded and queued while a write is in flight before the driver stops
/// reading; the socket's buffers then hold the rest (the client's own backpressure).
const MAX_QUEUED_FRAMES: usize = 32;

/// Most receipts one session times at once; beyond it a SEND is not timed (never refused).
const TIMED_RECEIPTS: usize = 1024;

/// When each SEND asking for a receipt arrived, to time its RECEIPT.
#[derive(Default)]
struct ReceiptTimer(std::collections::HashMap<String, Instant>);

impl ReceiptTimer {
    fn sent(&mut self, frame: &Frame) {
        if frame.command == Command::Send
            && self.0.len() < TIMED_RECEIPTS
            && let Some(id) = frame.get("receipt")
        {
            self.0.insert(id.to_owned(), Instant::now());
        }
    }

    fn written(&mut self, frame: &Frame) {
        let m = metrics();
        match frame.command {
            Command::Message => m.stomp_deliveries.add(1, &[]),
            Command::Receipt => {
                if let Some(at) = frame.get("receipt-id").and_then(|id| self.0.remove(id)) {
                    m.receipt_duration.record(at.elapsed().as_secs_f64(), &[]);
                }
            }
            _ => {}
        }
    }
}

/// The `reason` label of a session that ended in an error, or `None` for a normal end.
fn error_reason(reason: CloseReason) -> Option<&'static str> {
    match reason {
        CloseReason::ProtocolError => Some("protocol"),
        CloseReason::TimedOut => Some("timeout"),
        CloseReason::SlowConsumer => Some("slow_consumer"),
        CloseReason::AccountClosed => Some("account_closed"),
        CloseReason::AccessRevoked => Some("access_revoked"),
        CloseReason::Disconnected | CloseReason::ServerShutdown => None,
    }
}

/// Runs one connection until the session, the client or the broker ends it (the broker's
/// shutdown signal included: the client then gets ERROR "server shutting down").
pub async fn drive<T: Transport, B: ChatBackend>(
    mut transport: T,
    backend: B,
    broker: &Broker,
    config: StompConfig,
) {
    let (conn_id, mut deliveries) = broker.register(config.session.max_outbound);
    let router = BrokerRoute {
        broker,
        conn: conn_id,
        joined: std::cell::Cell::new(0),
    };
    let _open = SessionGauge::open(transport.label());
    let mut receipts = ReceiptTimer::default();
    let mut shutdown = broker.shutdown_signal();
    let mut stopping = false;
    // Once connected, resolves if the token it connected with is revoked meanwhile (role
    // change, sign-out everywhere, closed account), on this node or any other.
    let mut revocation: Option<crate::auth::epochs::Revocation> = None;
    let mut revoked = false;
    let mut session_config = config.session.clone();
    // One SEND budget per user across every session on this node.
    session_config.send_limiter = broker.send_limiter();
    let mut conn = Connection::new(Session::new(session_config, Instant::now()));
    let mut decoder = Decoder::new(config.limits);
    // Client frames decoded but not yet handled: one at a time, each settled (its write
    // finished) before the next, so replies keep their order.
    let mut frames = VecDeque::new();
    let mut decode_error = None;
    // The post (or read marker) this connection is waiting for; deliveries, heart-beats and
    // timers go on meanwhile, and the client's next frames wait behind it.
    let mut in_flight: Option<InFlight<'_>> = None;
    // The client closed its side: no more reading; the loop ends once nothing is pending.
    let mut client_gone = false;
    'run: loop {
        if client_gone && in_flight.is_none() && frames.is_empty() {
            break 'run;
        }
        let deadline = conn.session.poll_timeout();
        let timer = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
                None => std::future::pending().await,
            }
        };
        // Bytes are read while a write is in flight too (heart-beats count as activity), up to
        // a few queued frames; then the client waits.
        let reading = !client_gone && decode_error.is_none() && frames.len() < MAX_QUEUED_FRAMES;
        // A traced delivery's span: entered while the session takes it, instrumenting the
        // socket writes that follow (never held entered across an await).
        let mut delivering: Option<tracing::Span> = None;
        tokio::select! {
            bytes = transport.recv(), if reading => {
                let Some(bytes) = bytes else {
                    // What the client sent before it left is still done (a SEND followed
                    // by a hang-up gets posted), then the loop ends.
                    client_gone = true;
                    continue 'run;
                };
                conn.session.handle_activity(Instant::now());
                let mut decoded = Vec::new();
                if let Err(error) = decoder.feed(&bytes, &mut decoded) {
                    decode_error = Some(error);
                }
                frames.extend(decoded);
            }
            result = async {
                match in_flight.as_mut() {
                    Some(write) => write.future.as_mut().await,
                    None => std::future::pending().await,
                }
            }, if in_flight.is_some() => {
                if let Some(write) = in_flight.take() {
                    conn.finish(write, result, Instant::now());
                }
            }
            delivery = deliveries.recv() => match delivery {
                Some(delivery) => {
                    if let Some(traceparent) = delivery.traceparent.as_deref() {
                        let span = tracing::info_span!(
                            parent: None,
                            "deliver",
                            position = delivery.position,
                            transport = transport.label()
                        );
                        crate::telemetry::continue_trace(&span, Some(traceparent));
                        delivering = Some(span);
                    }
                    let _entered = delivering.as_ref().map(|s| s.enter());
                    conn.session.deliver(&delivery, Instant::now());
                }
                None => conn.session.handle_overflow(Instant::now()),
            },
            () = timer => conn.session.handle_timeout(Instant::now()),
            Ok(_) = shutdown.wait_for(|stop| *stop), if !stopping => {
                stopping = true;
                conn.session.handle_shutdown(Instant::now());
            }
            kind = async {
                match revocation.as_mut() {
                    Some(signal) => signal.await,
                    None => std::future::pending().await,
                }
            }, if revocation.is_some() && !revoked => {
                // A finished future must not be polled again.
                revoked = true;
                let _span = tracing::info_span!("stomp.revoked", kind = ?kind).entered();
                match kind {
                    crate::auth::epochs::RevocationKind::AccountClosed => {
                        conn.session.handle_account_closed(Instant::now());
                    }
                    crate::auth::epochs::RevocationKind::SignInAgain => {
                        conn.session.handle_access_revoked(Instant::now());
                    }
                }
            }
        }
        loop {
            let (effects, started) = conn
                .settle(&backend, &router, Instant::now, in_flight.is_some())
                .await;
            if started.is_some() {
                in_flight = started;
            }
            if revocation.is_none()
                && conn.session.user().is_some()
                && let Some(identity) = conn.identity()
            {
                revocation = Some(backend.revocation(identity));
            }
            if let Some(version) = conn.session.version() {
                decoder.set_version(version);
            }
            for effect in effects {
                let bytes = match effect {
                    Effect::Write(frame) => {
                        receipts.written(&frame);
                        let mut out = Vec::new();
                        let version = conn.session.version().unwrap_or(Version::V1_0);
                        if codec::encode(&frame, version, &mut out).is_err() {
                            tracing::warn!(command = %frame.command, "STOMP: unencodable frame");
                            break 'run;
                        }
                        out
                    }
                    Effect::Heartbeat => b"\n".to_vec(),
                    Effect::Close(reason) => {
                        tracing::debug!(?reason, "STOMP session closed");
                        if reason == CloseReason::SlowConsumer {
                            metrics().slow_consumers.add(1, &[]);
                        }
                        if let Some(r) = error_reason(reason) {
                            metrics().stomp_errors.add(1, &[label("reason", r)]);
                        }
                        break 'run;
                    }
                };
                let send = tokio::time::timeout(WRITE_TIMEOUT, transport.send(bytes));
                let sent = match &delivering {
                    Some(span) => send.instrument(span.clone()).await,
                    None => send.await,
                };
                if !matches!(sent, Ok(Ok(()))) {
                    break 'run;
                }
            }
            if in_flight.is_some() {
                // The next frame is handled once this write has finished.
                break;
            }
            match frames.pop_front() {
                Some(frame) => {
                    // The command only: headers and bodies may carry tokens and messages.
                    let _frame =
                        tracing::debug_span!("stomp.frame", command = %frame.command).entered();
                    receipts.sent(&frame);
                    conn.session.handle_frame(frame, Instant::now());
                }
                None => match decode_error.take() {
                    Some(error) => conn.session.handle_decode_error(&error, Instant::now()),
                    None => break,
                },
            }
        }
    }
    broker.unregister(conn_id);
    metrics().stomp_subscriptions.add(-router.joined.get(), &[]);
    // The client is going away either way; one that does not read cannot hold the task.
    let _ = tokio::time::timeout(WRITE_TIMEOUT, transport.close()).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::epochs::Revocation;
    use crate::edge::stomp::connection::Identity;
    use crate::edge::stomp::session::{CatchUp, Delivery, Destination, Refusal};
    use neulbi_domain::{MessageId, Role, RoomId, UserId};
    use std::cell::Cell;
    use std::rc::Rc;
    use std::sync::Arc;
    use tokio::sync::{Semaphore, mpsc};
    use uuid::Uuid;

    const ROOM: RoomId = RoomId::from_uuid(Uuid::from_u128(1));

    /// A client at the end of two channels.
    struct Pipe {
        inbound: mpsc::UnboundedReceiver<Vec<u8>>,
        outbound: mpsc::UnboundedSender<Vec<u8>>,
    }

    #[async_trait::async_trait(?Send)]
    impl Transport for Pipe {
        async fn recv(&mut self) -> Option<Vec<u8>> {
            self.inbound.recv().await
        }
        async fn send(&mut self, bytes: Vec<u8>) -> Result<(), TransportClosed> {
            self.outbound.send(bytes).map_err(|_| TransportClosed)
        }
        async fn close(&mut self) {}
        fn label(&self) -> &'static str {
            "test"
        }
    }

    /// Lets anyone in and holds every post until the test hands out a permit: an append
    /// waiting for its fsync.
    #[derive(Clone)]
    struct SlowLog {
        durable: Arc<Semaphore>,
        started: Rc<Cell<usize>>,
        finished: Rc<Cell<usize>>,
    }

    impl Default for SlowLog {
        /// No permits: every post waits until the test adds one.
        fn default() -> Self {
            Self {
                durable: Arc::new(Semaphore::new(0)),
                started: Rc::default(),
                finished: Rc::default(),
            }
        }
    }

    #[async_trait::async_trait(?Send)]
    impl ChatBackend for SlowLog {
        async fn verify(&self, _: &str) -> Result<Identity, Refusal> {
            Ok(Identity {
                user: UserId::from_uuid(Uuid::from_u128(2)),
                role: Role::Client,
                user_version: None,
            })
        }
        async fn may_read(&self, _: UserId, _: RoomId) -> Result<(), Refusal> {
            Ok(())
        }
        async fn post(
            &self,
            _: Identity,
            _: RoomId,
            _: String,
            _: Option<String>,
        ) -> Result<(), Refusal> {
            self.started.set(self.started.get() + 1);
            match self.durable.acquire().await {
                Ok(permit) => permit.forget(),
                Err(_) => return Err(Refusal("closed".into())),
            }
            self.finished.set(self.finished.get() + 1);
            Ok(())
        }
        async fn mark_read(&self, _: Identity, _: RoomId, _: MessageId) -> Result<(), Refusal> {
            Ok(())
        }
        async fn history_after(
            &self,
            _: RoomId,
            _: MessageId,
            _: usize,
        ) -> Result<CatchUp, Refusal> {
            Err(Refusal("no history here".into()))
        }
        fn revocation(&self, _: Identity) -> Revocation {
            Box::pin(std::future::pending())
        }
    }

    fn frame(command: &str, headers: &[(&str, &str)], body: &str) -> Vec<u8> {
        let mut out = format!("{command}\n");
        for (k, v) in headers {
            out.push_str(&format!("{k}:{v}\n"));
        }
        out.push('\n');
        out.push_str(body);
        out.push('\0');
        out.into_bytes()
    }

    /// CONNECTs and waits for CONNECTED.
    async fn connect(
        client: &mpsc::UnboundedSender<Vec<u8>>,
        out: &mut mpsc::UnboundedReceiver<Vec<u8>>,
    ) {
        client
            .send(frame(
                "CONNECT",
                &[("accept-version", "1.2"), ("Authorization", "Bearer t")],
                "",
            ))
            .ok();
        assert!(next_frame(out).await.starts_with("CONNECTED\n"));
    }

    async fn next_frame(out: &mut mpsc::UnboundedReceiver<Vec<u8>>) -> String {
        let bytes = tokio::time::timeout(Duration::from_secs(5), out.recv())
            .await
            .expect("a frame within 5 s")
            .expect("the driver is running");
        String::from_utf8(bytes).expect("text frames")
    }

    #[tokio::test]
    async fn deliveries_are_written_while_the_connections_own_send_awaits_the_append() {
        let broker = Broker::default();
        let backend = SlowLog::default();
        let durable = backend.durable.clone();
        let (client, inbound) = mpsc::unbounded_channel();
        let (outbound, mut out) = mpsc::unbounded_channel();
        let pipe = Pipe { inbound, outbound };
        let topic = Destination::RoomTopic(ROOM).to_wire();
        let send_to = Destination::RoomSend(ROOM).to_wire();
        let script = async {
            connect(&client, &mut out).await;
            client
                .send(frame(
                    "SUBSCRIBE",
                    &[("id", "0"), ("destination", &topic), ("receipt", "s")],
                    "",
                ))
                .ok();
            assert!(next_frame(&mut out).await.contains("receipt-id:s"));
            // Two SENDs in one chunk: the second waits behind the first's append.
            let mut both = frame(
                "SEND",
                &[("destination", &send_to), ("receipt", "p")],
                "one",
            );
            both.extend(frame(
                "SEND",
                &[("destination", &send_to), ("receipt", "q")],
                "two",
            ));
            client.send(both).ok();
            while backend.started.get() == 0 {
                tokio::task::yield_now().await;
            }
            broker.publish(Arc::new(Delivery {
                topic: Topic::Room(ROOM),
                message_id: "from-someone-else".into(),
                position: 7,
                body: b"{}".to_vec(),
                content_type: "application/json",
                traceparent: None,
            }));
            let message = next_frame(&mut out).await;
            assert!(
                message.starts_with("MESSAGE\n"),
                "the delivery is written before the RECEIPT: {message}"
            );
            assert_eq!(backend.started.get(), 1, "one write at a time");
            durable.add_permits(1);
            assert!(next_frame(&mut out).await.contains("receipt-id:p"));
            durable.add_permits(1);
            assert!(next_frame(&mut out).await.contains("receipt-id:q"));
            assert_eq!(backend.started.get(), 2);
            drop(client);
        };
        tokio::join!(
            drive(pipe, backend.clone(), &broker, StompConfig::default()),
            script
        );
    }

    #[tokio::test]
    async fn a_send_followed_by_a_hang_up_is_still_posted() {
        let broker = Broker::default();
        let backend = SlowLog::default();
        let durable = backend.durable.clone();
        let (client, inbound) = mpsc::unbounded_channel();
        let (outbound, mut out) = mpsc::unbounded_channel();
        let send_to = Destination::RoomSend(ROOM).to_wire();
        let script = async {
            connect(&client, &mut out).await;
            let mut bytes = frame("SEND", &[("destination", &send_to)], "bye");
            bytes.extend(frame("DISCONNECT", &[], ""));
            client.send(bytes).ok();
            // The client hangs up while its SEND waits for the log.
            drop(client);
            tokio::time::timeout(Duration::from_secs(5), async {
                while backend.started.get() == 0 {
                    tokio::task::yield_now().await;
                }
            })
            .await
            .expect("the post was started");
            durable.add_permits(1);
        };
        let driven = async {
            tokio::time::timeout(
                Duration::from_secs(5),
                drive(
                    Pipe { inbound, outbound },
                    backend.clone(),
                    &broker,
                    StompConfig::default(),
                ),
            )
            .await
            .expect("the driver ends once the post is done");
        };
        tokio::join!(driven, script);
        assert_eq!(backend.finished.get(), 1, "the SEND was posted");
    }
}
