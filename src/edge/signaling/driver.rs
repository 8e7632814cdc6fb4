//! The thin async side of a signaling connection: reads the socket, feeds the sans-IO
//! [`Session`], runs the [`Action`]s it returns against the call actor and the media layer,
//! and relays media events and the call's recorded events back to the client.

use super::Signaling;
use super::hub::{CallHub, CallNews, Listener};
use super::protocol::{ParticipantInfo, ServerMessage};
use super::session::{Action, CallAction, Session};
use crate::actors::ActorError;
use crate::auth::AuthService;
use crate::auth::epochs::{Revocation, RevocationKind};
use crate::edge::stomp::broker::Broker;
use crate::media::{ConnectionState, MediaError, MediaEvent, Participant};
use crate::state::AppState;
use actix_web::{HttpRequest, HttpResponse, web};
use actix_ws::Message;
use neulbi_domain::call_session::{CallCommand, CallEvent, CallState, Presence, REASON_HANGUP};
use neulbi_domain::{Actor, Context, DomainError, MessageId, Role, UserId};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tracing::Instrument;
use uuid::Uuid;

/// Call events queued for one connection before it is dropped as too slow.
const NEWS_QUEUE: usize = 256;
/// Media events queued for one connection.
const MEDIA_QUEUE: usize = 64;

/// Registers `/rtc`.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/rtc", web::get().to(upgrade));
}

async fn upgrade(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<AppState>,
    auth: Option<web::Data<AuthService>>,
    broker: Option<web::Data<Broker>>,
    signaling: Option<web::Data<Signaling>>,
) -> Result<HttpResponse, actix_web::Error> {
    let (Some(auth), Some(broker), Some(signaling)) = (auth, broker, signaling) else {
        return Ok(HttpResponse::ServiceUnavailable().finish());
    };
    if !crate::edge::stomp::websocket::origin_allowed(
        &req,
        &state.public_url,
        &signaling.allowed_origins,
    ) {
        return Ok(HttpResponse::Forbidden().finish());
    }
    let (response, ws, stream) = actix_ws::handle(&req, body)?;
    // The session answers a message over its limit with a typed error; only one far over
    // it (4×) is cut off by the WebSocket layer itself, which bounds memory per connection.
    let stream = stream.max_frame_size(signaling.settings.session().max_message_bytes * 4);
    let conn = Connection {
        ws,
        state,
        auth,
        hub: broker.call_hub(),
        shutdown: broker.shutdown_signal(),
        signaling,
        session: Session::new(Default::default(), Instant::now()),
        user: None,
        revocation: None,
        call: None,
    };
    actix_web::rt::spawn(
        conn.run(stream)
            .instrument(tracing::info_span!("rtc_connection")),
    );
    Ok(response)
}

/// A request for the media layer.
enum MediaOp {
    Answer(String),
    Candidate(String, Option<String>, Option<u16>),
    RestartIce,
}

/// What a connection holds while it is in a call.
struct InCall {
    call: Uuid,
    participant: Participant,
    listener: Listener,
    news: mpsc::Receiver<Arc<CallNews>>,
    media: mpsc::Receiver<MediaEvent>,
    /// Set once the user left or the call ended: closing the socket then is no drop.
    done: bool,
}

struct Connection {
    ws: actix_ws::Session,
    state: web::Data<AppState>,
    auth: web::Data<AuthService>,
    hub: Arc<CallHub>,
    shutdown: tokio::sync::watch::Receiver<bool>,
    signaling: web::Data<Signaling>,
    session: Session,
    user: Option<(UserId, Role)>,
    /// Once signed in, resolves if the token used is revoked (then the connection ends).
    revocation: Option<Revocation>,
    call: Option<InCall>,
}

impl Connection {
    async fn run(mut self, mut stream: actix_ws::MessageStream) {
        let _open = SignalingGauge::open();
        self.session = Session::new(self.signaling.settings.session(), Instant::now());
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            let actions = tokio::select! {
                message = stream.recv() => match message {
                    Some(Ok(Message::Text(text))) => {
                        self.session.handle_text(&text, Instant::now())
                    }
                    Some(Ok(Message::Binary(_) | Message::Continuation(_))) => {
                        self.session.handle_binary(Instant::now())
                    }
                    Some(Ok(Message::Ping(payload))) => {
                        if self.ws.pong(&payload).await.is_err() {
                            break;
                        }
                        Vec::new()
                    }
                    Some(Ok(Message::Pong(_) | Message::Nop)) => Vec::new(),
                    Some(Ok(Message::Close(_)) | Err(_)) | None => break,
                },
                input = recv_call(&mut self.call) => match input {
                    CallInput::Media(event) => self.on_media(event).await,
                    CallInput::News(news) => self.on_news(&news).await,
                    // The hub dropped this connection (too slow): it cannot follow the call.
                    CallInput::Behind => {
                        self.session.close("too_slow", "the connection fell behind the call".into())
                    }
                },
                _ = tick.tick() => self.session.tick(Instant::now()),
                _ = self.shutdown.changed() => {
                    self.session.close("server_shutdown", "the server is shutting down".into())
                }
                kind = revoked(&mut self.revocation) => {
                    self.revocation = None;
                    let _span = tracing::info_span!("rtc.revoked", kind = ?kind).entered();
                    match kind {
                        RevocationKind::AccountClosed => {
                            self.session.close("account_closed", "the account was closed".into())
                        }
                        RevocationKind::SignInAgain => self.session.close(
                            "token_revoked",
                            "access revoked; sign in again".into(),
                        ),
                    }
                }
            };
            if !self.perform(actions).await {
                break;
            }
        }
        self.finish().await;
    }

    /// Runs actions (and the ones their outcomes produce); false once the socket must close.
    async fn perform(&mut self, actions: Vec<Action>) -> bool {
        let mut queue: VecDeque<Action> = actions.into();
        while let Some(action) = queue.pop_front() {
            let more = match action {
                Action::Send(message) => {
                    if self.ws.text(message.to_json()).await.is_err() {
                        return false;
                    }
                    Vec::new()
                }
                Action::Close => {
                    let _ = self.ws.clone().close(None).await;
                    return false;
                }
                Action::Verify { token } => {
                    let result = self.verify(&token).await;
                    self.session.verified(result.map(|(u, _)| u.as_uuid()))
                }
                Action::Join { call_id } => {
                    let result = self.join(call_id).await;
                    self.session.joined(result)
                }
                Action::Answer { sdp } => self.media_op(MediaOp::Answer(sdp)).await,
                Action::Candidate {
                    candidate,
                    sdp_mid,
                    sdp_mline_index,
                } => {
                    self.media_op(MediaOp::Candidate(candidate, sdp_mid, sdp_mline_index))
                        .await
                }
                Action::RestartIce => self.media_op(MediaOp::RestartIce).await,
                Action::Call(action) => self.call_action(action).await,
            };
            queue.extend(more);
        }
        true
    }

    async fn verify(&mut self, token: &str) -> Result<(UserId, Role), String> {
        let refused = || "invalid or expired access token".to_owned();
        let claims = self.auth.verify_access(token).await.map_err(|e| match e {
            crate::auth::AuthError::TokenRevoked => e.to_string(),
            _ => refused(),
        })?;
        let role = claims.role.ok_or("a service token cannot join calls")?;
        let user = claims.sub.parse::<UserId>().map_err(|_| refused())?;
        self.user = Some((user, role));
        self.revocation = Some(self.auth.epochs().revocation(user, claims.user_version));
        Ok((user, role))
    }

    fn ctx(&self) -> Option<(Context, crate::store::Metadata)> {
        let (user, role) = self.user?;
        Some((
            Context::new(Actor::user(user, role), chrono::Utc::now()),
            crate::store::Metadata::acting(user.as_uuid()),
        ))
    }

    /// Enters `call`: the actor decides, the media node is claimed, the hub and the media
    /// layer are joined. `Err` carries the message to send instead (an error or a redirect).
    async fn join(&mut self, call: Uuid) -> Result<ServerMessage, ServerMessage> {
        let Some((ctx, metadata)) = self.ctx() else {
            return Err(error("unauthenticated", "sign in first".into(), "join"));
        };
        let user = ctx.actor.user_id.map(|u| u.as_uuid()).unwrap_or_default();
        let node = self.signaling.settings.node.clone();
        let calls = &self.state.calls;
        let current = calls
            .state(call)
            .await
            .map_err(|e| actor_error(e, "join"))?;
        if !current.is_party(UserId::from_uuid(user)) {
            // Not a party, or no such call: the same answer, so ids cannot be probed.
            return Err(error("not_found", "no such call".into(), "join"));
        }
        if current.media_node().is_some_and(|n| n != node) {
            return Err(redirect(&current));
        }
        let outcome = calls
            .execute(call, CallCommand::Join, ctx, metadata.clone())
            .await
            .map_err(|e| actor_error(e, "join"))?;
        let rejoined = outcome
            .events
            .iter()
            .any(|e| matches!(e, CallEvent::ParticipantRejoined { .. }));
        match calls
            .execute(
                call,
                CallCommand::AssignMediaNode {
                    node,
                    url: self.signaling.settings.node_url.clone(),
                },
                ctx,
                metadata,
            )
            .await
        {
            Ok(_) => {}
            Err(ActorError::Domain(DomainError::Conflict(_))) => {
                let state = calls
                    .state(call)
                    .await
                    .map_err(|e| actor_error(e, "join"))?;
                if state.media_node().is_some() {
                    return Err(redirect(&state));
                }
            }
            Err(e) => return Err(actor_error(e, "join")),
        }
        // Listen before the media joins, so no event after the join is missed.
        let (listener, news) = self.hub.register(call, NEWS_QUEUE);
        let (media_tx, media) = mpsc::channel(MEDIA_QUEUE);
        let participant = match self.signaling.sfu.join(call, user, media_tx).await {
            Ok(p) => p,
            Err(e) => {
                self.hub.unregister(call, listener);
                tracing::warn!(error = %e, "media join failed");
                return Err(error(
                    "media_unavailable",
                    "the call's media could not start on this node; try again".into(),
                    "join",
                ));
            }
        };
        self.call = Some(InCall {
            call,
            participant,
            listener,
            news,
            media,
            done: false,
        });
        Ok(ServerMessage::Joined {
            call_id: call,
            participants: participants(&outcome.state),
            ice_servers: self.signaling.ice_servers(user),
            rejoined,
        })
    }

    async fn media_op(&mut self, op: MediaOp) -> Vec<Action> {
        let Some(in_call) = &self.call else {
            return Vec::new();
        };
        let participant = in_call.participant.clone();
        let (re, result) = match op {
            MediaOp::Answer(sdp) => ("answer", participant.apply_answer(sdp).await),
            MediaOp::Candidate(candidate, mid, index) => (
                "candidate",
                participant.add_ice_candidate(candidate, mid, index).await,
            ),
            MediaOp::RestartIce => ("restart_ice", participant.restart_ice().await),
        };
        match result {
            Ok(()) => Vec::new(),
            Err(e) => {
                if matches!(e, MediaError::InvalidDescription(_)) && re == "answer" {
                    // The media layer keeps its offer waiting: a corrected answer may follow.
                    self.session.answer_refused();
                }
                let code = match e {
                    MediaError::NoOfferOutstanding => "no_offer",
                    MediaError::InvalidDescription(_) => "invalid_sdp",
                    MediaError::InvalidCandidate(_) => "invalid_candidate",
                    MediaError::Gone => "not_in_call",
                    MediaError::Settings(_) | MediaError::PeerConnection(_) => "media_error",
                };
                vec![Action::Send(error(code, e.to_string(), re))]
            }
        }
    }

    async fn call_action(&mut self, action: CallAction) -> Vec<Action> {
        let (Some((ctx, metadata)), Some(call)) = (self.ctx(), self.call.as_ref().map(|c| c.call))
        else {
            return Vec::new();
        };
        let (command, re) = match action {
            CallAction::Media {
                audio_muted,
                video_off,
                screen_sharing,
            } => (
                CallCommand::SetMediaState {
                    audio_muted,
                    video_off,
                    screen_sharing,
                },
                "media",
            ),
            CallAction::Chat { body } => (
                CallCommand::PostMessage {
                    message_id: MessageId::from_uuid(Uuid::now_v7()),
                    body,
                },
                "chat",
            ),
            CallAction::Emoji { emoji } => (CallCommand::SendEmoji { emoji }, "emoji"),
            CallAction::Leave => (CallCommand::Leave, "leave"),
            CallAction::Hangup => (
                CallCommand::End {
                    reason: REASON_HANGUP.to_owned(),
                },
                "hangup",
            ),
        };
        let leaving = matches!(re, "leave" | "hangup");
        // Each call command starts its own trace, linked to the long-lived connection.
        let span = tracing::info_span!(parent: None, "call_command", command = re, call_id = %call);
        span.follows_from(tracing::Span::current());
        let result = self
            .state
            .calls
            .execute(call, command, ctx, metadata)
            .instrument(span)
            .await;
        match result {
            Ok(outcome) if leaving => {
                // This connection stops following the call now, so the one who hung up (or
                // left last) hears the end here rather than from the feed.
                let ended = outcome.events.iter().find_map(|e| match e {
                    CallEvent::Ended {
                        reason,
                        duration_secs,
                        ..
                    } => Some(ServerMessage::Ended {
                        reason: reason.clone(),
                        duration_secs: *duration_secs,
                    }),
                    _ => None,
                });
                if ended.is_some() {
                    self.signaling.sfu.end_call(call).await;
                }
                self.leave_call().await;
                ended.map(Action::Send).into_iter().collect()
            }
            Ok(_) => Vec::new(),
            Err(e) => vec![Action::Send(actor_error(e, re))],
        }
    }

    async fn on_media(&mut self, event: MediaEvent) -> Vec<Action> {
        match event {
            MediaEvent::Offer { sdp } => self.session.offer_sent(sdp),
            MediaEvent::Candidate {
                candidate,
                sdp_mid,
                sdp_mline_index,
            } => vec![Action::Send(ServerMessage::Candidate {
                candidate,
                sdp_mid,
                sdp_mline_index,
            })],
            MediaEvent::PublisherStalled { participant } => {
                self.report_media(participant, true).await;
                Vec::new()
            }
            MediaEvent::PublisherResumed { participant } => {
                self.report_media(participant, false).await;
                Vec::new()
            }
            MediaEvent::Connection(ConnectionState::Failed) => {
                // ICE failed (network change, NAT rebinding): offer fresh credentials; the
                // browser answers and the media comes back on the same tracks.
                self.media_op(MediaOp::RestartIce).await
            }
            MediaEvent::Connection(_) | MediaEvent::TrackPublished { .. } => Vec::new(),
        }
    }

    /// Records a stall or recovery seen by the media layer; every connection of the call
    /// may report the same one, and the aggregate records it once.
    async fn report_media(&self, publisher: Uuid, stalled: bool) {
        let Some(call) = self.call.as_ref().map(|c| c.call) else {
            return;
        };
        let ctx = Context::new(Actor::system(), chrono::Utc::now());
        let command = CallCommand::ReportMedia {
            user_id: UserId::from_uuid(publisher),
            stalled,
        };
        if let Err(e) = self
            .state
            .calls
            .execute(call, command, ctx, Default::default())
            .await
        {
            tracing::debug!(error = %e, "media report not recorded");
        }
    }

    async fn on_news(&mut self, news: &CallNews) -> Vec<Action> {
        let message = match &news.event {
            CallEvent::ParticipantJoined { user_id, .. } => participant("joined", *user_id),
            CallEvent::ParticipantLeft { user_id, .. } => participant("left", *user_id),
            CallEvent::ParticipantDropped { user_id, .. } => participant("dropped", *user_id),
            CallEvent::ParticipantRejoined { user_id, .. } => participant("rejoined", *user_id),
            CallEvent::MediaStateChanged {
                user_id,
                audio_muted,
                video_off,
                screen_sharing,
                ..
            } => ServerMessage::Media {
                user_id: user_id.as_uuid(),
                audio_muted: *audio_muted,
                video_off: *video_off,
                screen_sharing: *screen_sharing,
            },
            CallEvent::MediaStalled { user_id, .. } => ServerMessage::MediaStalled {
                user_id: user_id.as_uuid(),
            },
            CallEvent::MediaResumed { user_id, .. } => ServerMessage::MediaResumed {
                user_id: user_id.as_uuid(),
            },
            CallEvent::InCallMessagePosted {
                message_id,
                author,
                body,
                at,
            } => ServerMessage::Chat {
                id: message_id.as_uuid(),
                user_id: author.as_uuid(),
                body: body.value().cloned().unwrap_or_default(),
                at: at.to_rfc3339(),
            },
            CallEvent::EmojiSent { by, emoji, at } => ServerMessage::Emoji {
                user_id: by.as_uuid(),
                emoji: emoji.clone(),
                at: at.to_rfc3339(),
            },
            CallEvent::Ended {
                reason,
                duration_secs,
                ..
            } => {
                let ended = ServerMessage::Ended {
                    reason: reason.clone(),
                    duration_secs: *duration_secs,
                };
                if let Some(in_call) = &self.call {
                    self.signaling.sfu.end_call(in_call.call).await;
                }
                self.leave_call().await;
                return vec![Action::Send(ended)];
            }
            CallEvent::Requested { .. }
            | CallEvent::Accepted { .. }
            | CallEvent::Declined { .. }
            | CallEvent::MediaNodeAssigned { .. } => return Vec::new(),
        };
        vec![Action::Send(message)]
    }

    /// Leaves the media and the hub after a leave, a hang-up or the end of the call.
    async fn leave_call(&mut self) {
        if let Some(mut in_call) = self.call.take() {
            in_call.done = true;
            self.hub.unregister(in_call.call, in_call.listener);
            in_call.participant.leave().await;
        }
        self.session.left_call();
    }

    /// The socket is gone. A participant who did not leave is *dropped*: their place (and
    /// their tracks in the others' connections) is kept for the grace period.
    async fn finish(mut self) {
        let Some(in_call) = self.call.take() else {
            return;
        };
        self.hub.unregister(in_call.call, in_call.listener);
        if in_call.done {
            return;
        }
        in_call.participant.disconnect().await;
        let Some((user, _)) = self.user else {
            return;
        };
        let ctx = Context::new(Actor::system(), chrono::Utc::now());
        let drop = CallCommand::Drop { user_id: user };
        match self
            .state
            .calls
            .execute(in_call.call, drop, ctx, Default::default())
            .await
        {
            Ok(outcome) if !outcome.events.is_empty() => {
                let grace = outcome.state.policy().map_or(60, |p| p.grace_secs);
                spawn_grace_timer(
                    self.state.clone(),
                    in_call.call,
                    user,
                    grace,
                    in_call.participant,
                );
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "could not record the dropped participant"),
        }
    }
}

/// Removes a dropped participant who did not come back once the grace period is over (a
/// no-op if they did: the decision checks the time and their presence itself).
fn spawn_grace_timer(
    state: web::Data<AppState>,
    call: Uuid,
    user: UserId,
    secs: u32,
    media: Participant,
) {
    actix_web::rt::spawn(
        async move {
            // A moment past the deadline, so the decision at "now" sees it as passed.
            tokio::time::sleep(Duration::from_secs(u64::from(secs)) + Duration::from_millis(50))
                .await;
            let ctx = Context::new(Actor::system(), chrono::Utc::now());
            let command = CallCommand::GraceExpired { user_id: user };
            match state
                .calls
                .execute(call, command, ctx, Default::default())
                .await
            {
                // Gone for good: their tracks leave the others' connections. (After a rejoin
                // this handle is stale and `leave` does nothing.)
                Ok(outcome) if !outcome.events.is_empty() => media.leave().await,
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "grace timer: could not remove the participant")
                }
            }
        }
        .instrument(tracing::info_span!("grace_timer", call_id = %call)),
    );
}

/// What a connection in a call hears besides its socket.
enum CallInput {
    Media(MediaEvent),
    News(Arc<CallNews>),
    Behind,
}

/// Waits for the signed-in token's revocation; forever before sign-in.
async fn revoked(revocation: &mut Option<Revocation>) -> RevocationKind {
    match revocation.as_mut() {
        Some(signal) => signal.await,
        None => std::future::pending().await,
    }
}

async fn recv_call(call: &mut Option<InCall>) -> CallInput {
    let Some(in_call) = call.as_mut() else {
        return std::future::pending().await;
    };
    let done = in_call.done;
    tokio::select! {
        Some(event) = in_call.media.recv() => CallInput::Media(event),
        news = in_call.news.recv(), if !done => match news {
            Some(news) => CallInput::News(news),
            None => CallInput::Behind,
        },
        else => std::future::pending().await,
    }
}

fn participants(state: &CallState) -> Vec<ParticipantInfo> {
    state
        .participants()
        .iter()
        .map(|p| ParticipantInfo {
            user_id: p.user_id.as_uuid(),
            connected: p.presence == Presence::Connected,
            audio_muted: p.media.audio_muted,
            video_off: p.media.video_off,
            screen_sharing: p.media.screen_sharing,
            stalled: p.media.stalled,
        })
        .collect()
}

fn participant(event: &'static str, user: UserId) -> ServerMessage {
    ServerMessage::Participant {
        event,
        user_id: user.as_uuid(),
    }
}

/// Sends the client to the node that holds the call's media: its name, and its own
/// signaling URL when it recorded one with the assignment.
fn redirect(call: &CallState) -> ServerMessage {
    ServerMessage::Redirect {
        node: call.media_node().unwrap_or_default().to_owned(),
        url: call.media_url().map(str::to_owned),
    }
}

fn error(code: &'static str, message: String, re: &'static str) -> ServerMessage {
    ServerMessage::Error {
        code,
        message,
        re: Some(re),
        fatal: false,
    }
}

/// A refused command as a signaling error: the domain's code and text (safe to show);
/// infrastructure failures as `unavailable`, logged.
fn actor_error(e: ActorError, re: &'static str) -> ServerMessage {
    match e {
        ActorError::Domain(d) => error(d.code(), d.to_string(), re),
        ActorError::Busy => error("busy", "the call is busy; retry".into(), re),
        other => {
            tracing::warn!(error = %other, "call command failed");
            error(
                "unavailable",
                "the call could not be reached; retry".into(),
                re,
            )
        }
    }
}

/// Counts a signaling session open for as long as it lives, however it ends.
struct SignalingGauge;

impl SignalingGauge {
    fn open() -> Self {
        crate::telemetry::metrics::metrics()
            .signaling_sessions
            .add(1, &[]);
        Self
    }
}

impl Drop for SignalingGauge {
    fn drop(&mut self) {
        crate::telemetry::metrics::metrics()
            .signaling_sessions
            .add(-1, &[]);
    }
}
