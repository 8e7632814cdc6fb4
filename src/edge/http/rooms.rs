//! `/rooms`: a client opens a counseling room with a counselor, members mark messages read
//! and close the room. Every write is a command to the room actor, which checks membership;
//! this file only checks what the room aggregate cannot see (that the counselor is one).

use super::{ApiError, uuid_field};
use crate::auth::{AuthService, AuthUser};
use crate::projections::queries;
use crate::state::AppState;
use actix_web::http::StatusCode;
use actix_web::{HttpResponse, web};
use neulbi_domain::chat_room::RoomCommand;
use neulbi_domain::{MessageId, Role, RoomId, UserId};
use serde::Deserialize;
use serde_json::json;
use tracing::Instrument;
use uuid::Uuid;

/// Registers the room routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/rooms", web::post().to(open))
        .route("/rooms/{room_id}/read", web::post().to(mark_read))
        .route("/rooms/{room_id}/close", web::post().to(close));
}

/// Body of `POST /rooms`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OpenBody {
    /// The counselor to talk to.
    counselor_id: String,
}

/// Body of `POST /rooms/{id}/read`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReadBody {
    /// The newest message the reader has seen.
    up_to: String,
}

/// `POST /rooms` `{"counselor_id"}`: a client opens a room with an active counselor (201), or
/// gets the room the two already have open (200), so a double click opens one room.
async fn open(
    user: AuthUser,
    state: web::Data<AppState>,
    auth: web::Data<AuthService>,
    body: web::Json<OpenBody>,
) -> Result<HttpResponse, ApiError> {
    if user.role != Role::Client {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "only clients open rooms with a counselor",
        ));
    }
    let counselor = UserId::from_uuid(uuid_field(
        &body.counselor_id,
        "invalid_counselor_id",
        "counselor_id",
    )?);
    // The user aggregate, not the read model: a counselor who was just granted the role or
    // just deactivated is seen as they are now.
    let target = auth.load_user(counselor.as_uuid()).await?;
    if !(target.is_active() && target.is_counselor()) {
        return Err(ApiError::not_found("no such counselor"));
    }
    let me = user.user_id.to_string();
    let existing = queries::my_rooms(&state.read, &me)
        .await?
        .into_iter()
        .find(|r| r.counselor_id == counselor.to_string() && r.closed_at.is_none());
    if let Some(room) = existing {
        let body = room_json(
            &room.room_id,
            &room.client_id,
            &room.counselor_id,
            room.opened_at,
        );
        return Ok(HttpResponse::Ok()
            .insert_header(("Location", format!("/rooms/{}", room.room_id)))
            .json(body));
    }
    let room = RoomId::from_uuid(Uuid::now_v7());
    let command = RoomCommand::Open {
        room_id: room,
        client: user.user_id,
        counselor,
    };
    let (ctx, metadata) = user.command_context();
    let opened_at = ctx.now;
    state
        .rooms
        .execute(room.as_uuid(), command, ctx, metadata)
        .instrument(tracing::info_span!("open_room", room_id = %room, user_id = %user.user_id))
        .await?;
    let body = room_json(
        &room.to_string(),
        &user.user_id.to_string(),
        &counselor.to_string(),
        opened_at,
    );
    Ok(HttpResponse::Created()
        .insert_header(("Location", format!("/rooms/{room}")))
        .json(body))
}

/// The answer of `POST /rooms`, the same for a new room and one the two already had.
fn room_json(
    room: &str,
    client: &str,
    counselor: &str,
    opened_at: chrono::DateTime<chrono::Utc>,
) -> serde_json::Value {
    json!({
        "room_id": room,
        "client_id": client,
        "counselor_id": counselor,
        "opened_at": opened_at,
    })
}

/// `POST /rooms/{id}/read` `{"up_to": message id}`: moves my read marker (members only; the
/// room actor refuses others with 403 and unknown messages with 422). 204.
async fn mark_read(
    user: AuthUser,
    state: web::Data<AppState>,
    path: web::Path<String>,
    body: web::Json<ReadBody>,
) -> Result<HttpResponse, ApiError> {
    let room = uuid_field(&path, "invalid_room_id", "the room id")?;
    let up_to = MessageId::from_uuid(uuid_field(&body.up_to, "invalid_message_id", "up_to")?);
    let (ctx, metadata) = user.command_context();
    state
        .rooms
        .execute(room, RoomCommand::MarkRead { up_to }, ctx, metadata)
        .instrument(tracing::info_span!("mark_read", room_id = %room, user_id = %user.user_id))
        .await?;
    Ok(HttpResponse::NoContent().finish())
}

/// `POST /rooms/{id}/close`: a member ends the conversation; closing twice is fine. 204.
async fn close(
    user: AuthUser,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let room = uuid_field(&path, "invalid_room_id", "the room id")?;
    let (ctx, metadata) = user.command_context();
    state
        .rooms
        .execute(room, RoomCommand::Close, ctx, metadata)
        .instrument(tracing::info_span!("close_room", room_id = %room, user_id = %user.user_id))
        .await?;
    Ok(HttpResponse::NoContent().finish())
}
