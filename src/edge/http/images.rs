//! Profile images over HTTP: `POST /users/me/image` (multipart, field `image`),
//! `DELETE /users/me/image`, and `GET /images/{key}` for the filesystem backend.

use super::ApiError;
use crate::auth::AuthUser;
use crate::blob::images::ImagesError;
use crate::blob::picture::{self, PictureError};
use crate::blob::{BlobError, Images, validate_key};
use crate::state::AppState;
use actix_multipart::Multipart;
use actix_web::http::StatusCode;
use actix_web::{HttpResponse, web};
use futures::StreamExt;
use serde_json::json;

/// Registers the image routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/users/me/image", web::post().to(upload))
        .route("/users/me/image", web::delete().to(remove))
        .route("/images/{key}", web::get().to(serve));
}

impl From<BlobError> for ApiError {
    fn from(e: BlobError) -> Self {
        // Backend details stay in the log; the client learns only that it may retry.
        tracing::error!(error = %e, "image storage failure");
        ApiError::unavailable("image storage is unavailable; retry later")
    }
}

impl From<ImagesError> for ApiError {
    fn from(e: ImagesError) -> Self {
        match e {
            ImagesError::Blob(b) => b.into(),
            ImagesError::Actor(a) => a.into(),
            ImagesError::Store(s) => s.into(),
        }
    }
}

impl From<PictureError> for ApiError {
    fn from(e: PictureError) -> Self {
        match e {
            PictureError::UnsupportedType => ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_image_type",
                e.to_string(),
            ),
            PictureError::TooManyPixels { .. } => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "image_too_large",
                e.to_string(),
            ),
            PictureError::Corrupt => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_image",
                e.to_string(),
            ),
        }
    }
}

fn bad_multipart(e: impl std::fmt::Display) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "invalid_multipart", e.to_string())
}

fn too_large(max: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "too_large",
        format!("the image must be at most {max} bytes"),
    )
}

/// Reads the `image` part, keeping at most `max` bytes. Parts over the limit are read to the
/// end (up to a bound) and dropped, so the client gets a clean 413 instead of a reset.
async fn read_image_part(payload: &mut Multipart, max: usize) -> Result<Vec<u8>, ApiError> {
    let drain_cap = max.saturating_mul(2).saturating_add(1024 * 1024);
    let (mut image, mut over, mut seen) = (None, false, 0usize);
    while let Some(field) = payload.next().await {
        let mut field = field.map_err(bad_multipart)?;
        let wanted = image.is_none() && field.name() == Some("image");
        let mut buf = Vec::new();
        while let Some(chunk) = field.next().await {
            let chunk = chunk.map_err(bad_multipart)?;
            seen = seen.saturating_add(chunk.len());
            if seen > drain_cap {
                return Err(too_large(max));
            }
            if !wanted || over {
                continue;
            }
            if buf.len() + chunk.len() > max {
                over = true;
                buf = Vec::new();
                continue;
            }
            buf.extend_from_slice(&chunk);
        }
        if wanted && !over {
            image = Some(buf);
        }
    }
    if over {
        return Err(too_large(max));
    }
    image.ok_or_else(|| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "missing_part",
            "the multipart body has no `image` part",
        )
    })
}

/// `POST /users/me/image`: checks, cleans and stores the picture, then makes it the
/// profile image. 201 with the new URLs.
async fn upload(
    user: AuthUser,
    state: web::Data<AppState>,
    images: web::Data<Images>,
    mut payload: Multipart,
) -> Result<HttpResponse, ApiError> {
    let bytes = read_image_part(&mut payload, images.settings().max_upload_bytes).await?;
    let limits = images.limits();
    let processed = web::block(move || picture::process(&bytes, limits))
        .await
        .map_err(|_| ApiError::unavailable("image processing failed; retry later"))??;
    let (image, thumb) = images
        .upload(&state.users, user.user_id, user.role, processed)
        .await?;
    // The image is committed by now: a URL that cannot be made is `null`, not an error.
    let image = match images.urls_for(&image, &thumb).await {
        Ok((url, thumbnail_url)) => json!({ "url": url, "thumbnail_url": thumbnail_url }),
        Err(e) => {
            tracing::warn!(error = %e, "profile image URL unavailable");
            serde_json::Value::Null
        }
    };
    Ok(HttpResponse::Created()
        .insert_header(("Cache-Control", "no-store"))
        .json(json!({ "image": image })))
}

/// `DELETE /users/me/image`: removes the profile image and its blobs. 204.
async fn remove(
    user: AuthUser,
    state: web::Data<AppState>,
    images: web::Data<Images>,
) -> Result<HttpResponse, ApiError> {
    images.remove(&state.users, user.user_id, user.role).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// `GET /images/{key}`: a blob of the filesystem backend. Keys are random and never reused,
/// so the bytes under one never change and browsers may cache them.
async fn serve(
    key: web::Path<String>,
    images: web::Data<Images>,
) -> Result<HttpResponse, ApiError> {
    let key = key.into_inner();
    if !images.blobs().served_by_node() || validate_key(&key).is_err() {
        return Err(ApiError::not_found("no such image"));
    }
    let Some(bytes) = images.blobs().get(&key).await? else {
        return Err(ApiError::not_found("no such image"));
    };
    Ok(HttpResponse::Ok()
        .content_type(picture::OUTPUT_CONTENT_TYPE)
        .insert_header(("Cache-Control", "private, max-age=86400, immutable"))
        .insert_header(("X-Content-Type-Options", "nosniff"))
        .insert_header(("Content-Security-Policy", "default-src 'none'"))
        .body(bytes))
}

/// The `image` member of profile responses: URLs of the current image, or `null`.
pub async fn profile_image_json(
    images: &Images,
    state: &neulbi_domain::user::UserState,
) -> serde_json::Value {
    match images.urls(state).await {
        Ok(Some((url, thumbnail_url))) => json!({ "url": url, "thumbnail_url": thumbnail_url }),
        Ok(None) => serde_json::Value::Null,
        Err(e) => {
            tracing::warn!(error = %e, "profile image URL unavailable");
            serde_json::Value::Null
        }
    }
}
