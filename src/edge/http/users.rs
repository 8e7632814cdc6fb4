//! `/users/me`: the signed-in person's profile, a counselor's directory profile, and erasing
//! the account.

use super::ApiError;
use super::auth::clear_cookie;
use crate::auth::{AuthService, AuthUser};
use crate::state::AppState;
use actix_web::{HttpResponse, web};
use serde_json::json;
use tracing::Instrument;

/// Registers the `/users/me` routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/users/me", web::get().to(me))
        .route("/users/me", web::delete().to(erase_me))
        .route("/users/me", web::patch().to(update_me))
        .route(
            "/users/me/counselor-profile",
            web::put().to(publish_counselor_profile),
        );
}

/// `GET /users/me`: the profile, from the user aggregate.
async fn me(
    user: AuthUser,
    auth: web::Data<AuthService>,
    images: web::Data<crate::blob::Images>,
) -> Result<HttpResponse, ApiError> {
    let state = auth.load_user(user.user_id.as_uuid()).await?;
    if !state.is_active() {
        return Err(crate::auth::AuthError::AccountClosed.into());
    }
    let profile = state
        .counselor_profile()
        .map(|p| json!({ "headline": p.headline, "bio": p.bio, "published_at": p.published_at }));
    let image = super::images::profile_image_json(&images, &state).await;
    Ok(HttpResponse::Ok()
        .insert_header(("Cache-Control", "no-store"))
        .json(json!({
            "id": user.user_id,
            "provider": state.provider(),
            "email": state.email(),
            "nickname": state.nickname(),
            "role": state.role(),
            "registered_at": state.registered_at(),
            "last_login_at": state.last_login_at(),
            "login_count": state.login_count(),
            "counselor_profile": profile,
            "image": image,
            // So the page can say the limit before an upload is refused.
            "limits": { "image_max_bytes": images.settings().max_upload_bytes },
        })))
}

/// `DELETE /users/me`: erases the person (right to be forgotten) as themself; their refresh
/// tokens, sign-in identities and profile images are deleted with them. 204.
async fn erase_me(
    user: AuthUser,
    state: web::Data<AppState>,
    auth: web::Data<AuthService>,
    images: web::Data<crate::blob::Images>,
) -> Result<HttpResponse, ApiError> {
    let span = tracing::info_span!("erase_me", user_id = %user.user_id);
    async {
        // Image keys are personal: read them before the erasure shreds them, delete after.
        let keys = crate::privacy::erasure::image_keys_before_erasure(&images, user.user_id).await;
        auth.erase(&state.users, user.user_id, user.role).await?;
        images.delete_keys(&keys).await;
        Ok::<_, ApiError>(())
    }
    .instrument(span)
    .await?;
    Ok(clear_cookie(&auth, HttpResponse::NoContent()))
}

/// A counselor's directory entry.
#[derive(serde::Deserialize)]
struct CounselorProfileBody {
    headline: String,
    #[serde(default)]
    bio: String,
}

/// `PUT /users/me/counselor-profile`: a counselor publishes (or replaces) their directory
/// profile; the user aggregate refuses anyone else (403).
async fn publish_counselor_profile(
    user: AuthUser,
    state: web::Data<AppState>,
    body: web::Json<CounselorProfileBody>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let command = neulbi_domain::user::UserCommand::PublishCounselorProfile {
        headline: body.headline,
        bio: body.bio,
    };
    let (ctx, metadata) = user.command_context();
    state
        .users
        .execute(user.user_id.as_uuid(), command, ctx, metadata)
        .instrument(tracing::info_span!("publish_counselor_profile", user_id = %user.user_id))
        .await?;
    Ok(HttpResponse::NoContent().finish())
}

/// The fields of my profile a person may change themself.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ProfileBody {
    nickname: String,
}

/// `PATCH /users/me`: changes my display name; the user aggregate checks it (1..=40
/// characters after trimming; 422 otherwise). 204.
async fn update_me(
    user: AuthUser,
    state: web::Data<AppState>,
    body: web::Json<ProfileBody>,
) -> Result<HttpResponse, ApiError> {
    let command = neulbi_domain::user::UserCommand::UpdateProfile {
        nickname: body.into_inner().nickname,
    };
    let (ctx, metadata) = user.command_context();
    state
        .users
        .execute(user.user_id.as_uuid(), command, ctx, metadata)
        .instrument(tracing::info_span!("update_profile", user_id = %user.user_id))
        .await?;
    Ok(HttpResponse::NoContent().finish())
}
