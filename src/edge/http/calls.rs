//! Calls over HTTP: a member of an open room rings the others (`POST /rooms/{id}/calls`), an
//! invitee accepts or declines, a party hangs up, and the room's call entries are listed. The
//! media session itself is joined over `/rtc`. Every rule is the call aggregate's; this file
//! asks the room's actor (the authority) who the room's members are and starts the ring timer.

use super::{ApiError, uuid_field};
use crate::auth::AuthUser;
use crate::projections::queries;
use crate::state::AppState;
use actix_web::{HttpResponse, web};
use neulbi_domain::call_session::{CallCommand, CallState, REASON_HANGUP};
use neulbi_domain::{Actor, CallId, Context, RoomId};
use serde::Deserialize;
use serde_json::json;
use tracing::Instrument;
use uuid::Uuid;

/// Registers the call routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/rooms/{room_id}/calls", web::post().to(start))
        .route("/rooms/{room_id}/calls", web::get().to(room_calls))
        .route("/calls/{call_id}", web::get().to(show))
        .route("/calls/{call_id}/accept", web::post().to(accept))
        .route("/calls/{call_id}/decline", web::post().to(decline))
        .route("/calls/{call_id}/end", web::post().to(end));
}

/// Body of `POST /calls/{id}/end` (optional).
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct EndBody {
    /// Why (`hangup` when absent).
    reason: Option<String>,
}

/// `POST /rooms/{id}/calls`: rings the room's other members (201 with the call). Only a
/// member of an open room may; the invitees get a `ringing` push on `/user/queue/calls`.
async fn start(
    user: AuthUser,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let room = RoomId::from_uuid(uuid_field(&path, "invalid_room_id", "the room id")?);
    // The room's actor, not the read model: a room opened a moment ago already counts.
    let room_state = state.rooms.state(room.as_uuid()).await?;
    let members = if room_state.is_closed() {
        Vec::new()
    } else {
        room_state.members()
    };
    let invitees = members
        .iter()
        .copied()
        .filter(|&m| m != user.user_id)
        .collect();
    let call = CallId::from_uuid(Uuid::now_v7());
    let policy = state.call_settings.policy();
    let command = CallCommand::Request {
        call_id: call,
        room_id: room,
        invitees,
        room_members: members,
        policy,
    };
    let (ctx, metadata) = user.command_context();
    let outcome = state
        .calls
        .execute(call.as_uuid(), command, ctx, metadata)
        .instrument(tracing::info_span!("request_call", call_id = %call, room_id = %room))
        .await?;
    spawn_ring_timer(state.clone(), call.as_uuid(), policy.ring_timeout_secs);
    Ok(HttpResponse::Created()
        .insert_header(("Location", format!("/calls/{call}")))
        .json(call_json(call.as_uuid(), &outcome.state)))
}

/// Ends the call unanswered once the ring timeout passes (a no-op if it was answered). The
/// decision checks the time itself, so a timer that fires early or twice changes nothing.
fn spawn_ring_timer(state: web::Data<AppState>, call: Uuid, secs: u32) {
    actix_web::rt::spawn(
        async move {
            tokio::time::sleep(std::time::Duration::from_secs(u64::from(secs))).await;
            let ctx = Context::new(Actor::system(), chrono::Utc::now());
            if let Err(error) = state
                .calls
                .execute(call, CallCommand::RingTimeout, ctx, Default::default())
                .await
            {
                tracing::warn!(%error, "ring timer: the call could not be timed out");
            }
        }
        .instrument(tracing::info_span!("ring_timer", call_id = %call)),
    );
}

/// `GET /rooms/{id}/calls`: the room's calls, newest first (members only).
async fn room_calls(
    user: AuthUser,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let room = RoomId::from_uuid(uuid_field(&path, "invalid_room_id", "the room id")?);
    let room_state = state.rooms.state(room.as_uuid()).await?;
    if !room_state.was_member(user.user_id) {
        return Err(ApiError::not_found("no such room"));
    }
    let items = queries::room_calls(&state.read, &room.to_string()).await?;
    Ok(HttpResponse::Ok().json(json!({ "items": items })))
}

/// `GET /calls/{id}`: the call as its actor knows it (parties only; others get 404).
async fn show(
    user: AuthUser,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let call = uuid_field(&path, "invalid_call_id", "the call id")?;
    let call_state = state.calls.state(call).await?;
    if !call_state.is_party(user.user_id) {
        return Err(ApiError::not_found("no such call"));
    }
    Ok(HttpResponse::Ok().json(call_json(call, &call_state)))
}

/// `POST /calls/{id}/accept`: an invitee picks up (then joins over `/rtc`).
async fn accept(
    user: AuthUser,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    command(user, state, &path, CallCommand::Accept, "accept_call").await
}

/// `POST /calls/{id}/decline`: an invitee refuses.
async fn decline(
    user: AuthUser,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    command(user, state, &path, CallCommand::Decline, "decline_call").await
}

/// `POST /calls/{id}/end` `{"reason"?}`: a party hangs up (or cancels a ringing call).
async fn end(
    user: AuthUser,
    state: web::Data<AppState>,
    path: web::Path<String>,
    body: Option<web::Json<EndBody>>,
) -> Result<HttpResponse, ApiError> {
    let reason = body
        .and_then(|b| b.into_inner().reason)
        .unwrap_or_else(|| REASON_HANGUP.to_owned());
    command(user, state, &path, CallCommand::End { reason }, "end_call").await
}

async fn command(
    user: AuthUser,
    state: web::Data<AppState>,
    path: &str,
    command: CallCommand,
    span: &'static str,
) -> Result<HttpResponse, ApiError> {
    let call = uuid_field(path, "invalid_call_id", "the call id")?;
    let (ctx, metadata) = user.command_context();
    let outcome = state
        .calls
        .execute(call, command, ctx, metadata)
        .instrument(tracing::info_span!("call_command", command = span, call_id = %call))
        .await?;
    Ok(HttpResponse::Ok().json(call_json(call, &outcome.state)))
}

/// The call as the API shows it: ids, phase, times and media flags; no personal data.
pub fn call_json(call: Uuid, state: &CallState) -> serde_json::Value {
    let phase = match state.phase() {
        neulbi_domain::call_session::CallPhase::Idle => "none",
        neulbi_domain::call_session::CallPhase::Requested => "ringing",
        neulbi_domain::call_session::CallPhase::Accepted => "accepted",
        neulbi_domain::call_session::CallPhase::Declined => "declined",
        neulbi_domain::call_session::CallPhase::Ended => "ended",
    };
    let participants: Vec<_> = state
        .participants()
        .iter()
        .map(|p| {
            json!({
                "user_id": p.user_id,
                "connected": p.presence == neulbi_domain::call_session::Presence::Connected,
                "audio_muted": p.media.audio_muted,
                "video_off": p.media.video_off,
                "screen_sharing": p.media.screen_sharing,
                "stalled": p.media.stalled,
            })
        })
        .collect();
    json!({
        "call_id": call,
        "room_id": state.room_id(),
        "requested_by": state.requested_by(),
        "invitees": state.invitees(),
        "accepted_by": state.accepted_by(),
        "declined_by": state.declined_by(),
        "status": phase,
        "requested_at": state.requested_at(),
        "ring_timeout_secs": state.policy().map(|p| p.ring_timeout_secs),
        "participants": participants,
        "media_node": state.media_node(),
        "started_at": state.first_joined_at(),
        "ended_at": state.ended_at(),
        "end_reason": state.end_reason(),
        "duration_secs": state.duration_secs(),
    })
}
