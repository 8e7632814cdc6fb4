//! Read-model endpoints for the signed-in person: my rooms, a room's message history, my
//! calls, and the export of my own data (the right of access that goes with erasure).

use super::ApiError;
use crate::auth::AuthUser;
use crate::projections::queries;
use crate::state::AppState;
use crate::store::Direction;
use actix_web::{HttpResponse, web};
use neulbi_domain::{StreamKind, StreamName};
use serde::Deserialize;
use serde_json::json;

/// Registers the read-model routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/users/me/rooms", web::get().to(my_rooms))
        .route("/users/me/calls", web::get().to(my_calls))
        .route("/users/me/export", web::get().to(export_me))
        .route("/rooms/{room_id}/messages", web::get().to(room_messages));
}

/// `GET /users/me/rooms`: my rooms, most recently active first, with unread counts.
async fn my_rooms(
    user: AuthUser,
    state: web::Data<AppState>,
    images: web::Data<crate::blob::Images>,
) -> Result<HttpResponse, ApiError> {
    let mut items = queries::my_rooms(&state.read, &user.user_id.to_string()).await?;
    for r in &mut items {
        if let Some(key) = &r.peer_thumbnail_key {
            r.peer_photo_url = images.thumbnail_url(key).await;
        }
    }
    Ok(HttpResponse::Ok()
        .insert_header(("Cache-Control", "no-store"))
        .json(json!({ "items": items })))
}

/// `GET /users/me/calls`: calls I made or received, newest first.
async fn my_calls(user: AuthUser, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let items = queries::calls(&state.read, &user.user_id.to_string()).await?;
    Ok(HttpResponse::Ok()
        .insert_header(("Cache-Control", "no-store"))
        .json(json!({ "items": items })))
}

/// Query string of the message history.
#[derive(Debug, Deserialize)]
pub struct HistoryQuery {
    /// The `next_cursor` of the previous page.
    pub before: Option<String>,
    /// Page size (1..=200, default 50).
    pub limit: Option<i64>,
}

/// `GET /rooms/{room_id}/messages`: a room's messages, newest first, members only.
async fn room_messages(
    user: AuthUser,
    state: web::Data<AppState>,
    path: web::Path<String>,
    q: web::Query<HistoryQuery>,
) -> Result<HttpResponse, ApiError> {
    let room = super::uuid_field(&path, "invalid_room_id", "the room id")?;
    // Not a member and no such room look the same: room ids are not disclosed.
    if !queries::is_member(&state.read, &room.to_string(), &user.user_id.to_string()).await? {
        return Err(ApiError::not_found("no such room"));
    }
    let page = queries::messages(
        &state.read,
        &room.to_string(),
        q.before.as_deref(),
        q.limit.unwrap_or(50),
    )
    .await?;
    Ok(HttpResponse::Ok()
        .insert_header(("Cache-Control", "no-store"))
        .json(page))
}

/// `GET /users/me/export`: everything Neulbi holds about me, as JSON: my account's events
/// (opened), my profile, my rooms, the messages I wrote, my calls, and the audit trail of
/// what I did.
async fn export_me(user: AuthUser, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let id = user.user_id.to_string();
    let stream = StreamName::new(StreamKind::User, user.user_id.as_uuid());
    let mut account = Vec::new();
    let mut from = 0;
    loop {
        let page = state
            .store
            .read_stream(&stream, from, Direction::Forward, 1000)
            .await?;
        let n = page.len();
        account.extend(page);
        if n < 1000 {
            break;
        }
        from += 1000;
    }
    let rooms = queries::my_rooms(&state.read, &id).await?;
    let mut messages = Vec::new();
    for r in &rooms {
        let mut before: Option<String> = None;
        loop {
            let page = queries::messages(
                &state.read,
                &r.room_id,
                before.as_deref(),
                queries::MAX_PAGE,
            )
            .await?;
            messages.extend(page.items.into_iter().filter(|m| m.author_id == id).map(|m| {
                json!({ "room_id": r.room_id, "message_id": m.message_id, "body": m.body, "posted_at": m.posted_at })
            }));
            match page.next_cursor {
                Some(c) => before = Some(c),
                None => break,
            }
        }
    }
    let calls = queries::calls(&state.read, &id).await?;
    let audit = queries::audit_of_user(&state.read, &id).await?;
    let profile = queries::user(&state.read, &id).await?;
    Ok(HttpResponse::Ok()
        .insert_header(("Cache-Control", "no-store"))
        .insert_header((
            "Content-Disposition",
            "attachment; filename=\"neulbi-export.json\"",
        ))
        .json(json!({
            "user_id": id,
            "exported_at": chrono::Utc::now(),
            "profile": profile,
            "account_events": account,
            "rooms": rooms,
            "messages": messages,
            "calls": calls,
            "audit": audit,
        })))
}
