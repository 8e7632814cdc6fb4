//! The profile-image service: upload, replace, remove, URLs and erasure.
//!
//! Order of work on upload: store both blobs, append `ProfileImageChanged`, then delete the
//! blobs of the image it replaced (found in the stream just before the new event, so two
//! concurrent uploads each delete exactly what they replaced). A crash between the steps
//! leaves only blobs no event references, which the sweeper ([`super::sweeper`]) deletes
//! after a grace period.

use super::picture::{OUTPUT_CONTENT_TYPE, OUTPUT_EXTENSION, PictureLimits, Processed};
use super::{BlobBackend, BlobError, ImageSettings, SharedBlobStore};
use crate::actors::{ActorError, Registry, codec};
use crate::store::{Direction, Metadata, SharedStore, StoreError};
use neulbi_domain::user::{UserCommand, UserDecider, UserEvent, UserState};
use neulbi_domain::{Actor, Context, Role, StreamKind, StreamName, UserId};
use std::path::Path;
use std::sync::Arc;
use thiserror::Error;
use tracing::Instrument;
use uuid::Uuid;

/// Why an image operation failed.
#[derive(Debug, Error)]
pub enum ImagesError {
    /// The blob store failed (usually: unreachable).
    #[error(transparent)]
    Blob(#[from] BlobError),
    /// The user aggregate refused or could not run the command.
    #[error(transparent)]
    Actor(#[from] ActorError),
    /// Reading the log failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Profile images over one blob store and the event log.
pub struct Images {
    blobs: SharedBlobStore,
    store: SharedStore,
    settings: ImageSettings,
}

impl Images {
    /// Opens the configured backend: files under `<data_dir>/images`, or the S3 bucket
    /// (created if missing, so a fresh S3-compatible server works out of the box).
    pub async fn open(
        settings: &ImageSettings,
        data_dir: &Path,
        public_url: &str,
        store: SharedStore,
    ) -> Result<Self, BlobError> {
        let blobs: SharedBlobStore = match settings.backend {
            BlobBackend::Fs => Arc::new(super::fs::FsBlobStore::open(
                data_dir.join("images"),
                public_url,
            )?),
            BlobBackend::S3 => {
                let s3 = super::s3::S3BlobStore::new(&settings.s3)?;
                if let Err(e) = s3.ensure_bucket().await {
                    // The node still starts; uploads answer 503 until the store is back.
                    tracing::warn!(error = %e, "S3 bucket check failed");
                }
                Arc::new(s3)
            }
        };
        Ok(Self::new(blobs, store, settings.clone()))
    }

    /// The service over an explicit backend (tests).
    pub fn new(blobs: SharedBlobStore, store: SharedStore, settings: ImageSettings) -> Self {
        Self {
            blobs,
            store,
            settings,
        }
    }

    /// The blob backend.
    pub fn blobs(&self) -> &SharedBlobStore {
        &self.blobs
    }

    /// The settings in force.
    pub fn settings(&self) -> &ImageSettings {
        &self.settings
    }

    /// The bounds of the decoding pipeline.
    pub fn limits(&self) -> PictureLimits {
        PictureLimits {
            max_pixels: self.settings.max_pixels,
            max_side: self.settings.max_side,
            thumbnail_side: self.settings.thumbnail_side,
        }
    }

    /// Stores `processed` under fresh random keys and makes it `user`'s profile image, then
    /// deletes the image it replaced. Returns the new `(image, thumbnail)` keys.
    pub async fn upload(
        &self,
        users: &Registry<UserDecider>,
        user: UserId,
        role: Role,
        processed: Processed,
    ) -> Result<(String, String), ImagesError> {
        let id = Uuid::new_v4().simple();
        let image_key = format!("{id}.{OUTPUT_EXTENSION}");
        let thumb_key = format!("{id}-t.{OUTPUT_EXTENSION}");
        let span = tracing::info_span!("image_upload", user_id = %user);
        async {
            if let Err(e) = self.put_both(&image_key, &thumb_key, processed).await {
                self.delete_quietly(&[&image_key, &thumb_key]).await;
                return Err(e.into());
            }
            let command = UserCommand::ChangeProfileImage {
                image_key: image_key.clone(),
                thumbnail_key: thumb_key.clone(),
            };
            let outcome = match users
                .execute(user.as_uuid(), command, ctx(user, role), metadata(user))
                .await
            {
                Ok(outcome) => outcome,
                Err(e) => {
                    self.delete_quietly(&[&image_key, &thumb_key]).await;
                    return Err(e.into());
                }
            };
            if let Some(version) = outcome.version {
                self.delete_replaced(user, version).await;
            }
            tracing::info!("profile image changed");
            Ok((image_key, thumb_key))
        }
        .instrument(span)
        .await
    }

    /// Removes `user`'s profile image and deletes its blobs. Removing none is a no-op.
    pub async fn remove(
        &self,
        users: &Registry<UserDecider>,
        user: UserId,
        role: Role,
    ) -> Result<(), ImagesError> {
        let span = tracing::info_span!("image_remove", user_id = %user);
        async {
            let outcome = users
                .execute(
                    user.as_uuid(),
                    UserCommand::RemoveProfileImage,
                    ctx(user, role),
                    metadata(user),
                )
                .await?;
            if !outcome.events.is_empty()
                && let Some(version) = outcome.version
            {
                self.delete_replaced(user, version).await;
            }
            Ok(())
        }
        .instrument(span)
        .await
    }

    /// Browser URLs `(image, thumbnail)` of the user's current profile image, if any.
    pub async fn urls(&self, state: &UserState) -> Result<Option<(String, String)>, BlobError> {
        let Some((image, thumb)) = state.profile_image() else {
            return Ok(None);
        };
        self.urls_for(image, thumb).await.map(Some)
    }

    /// Browser URLs `(image, thumbnail)` of the given keys.
    pub async fn urls_for(&self, image: &str, thumb: &str) -> Result<(String, String), BlobError> {
        Ok((self.blobs.url(image).await?, self.blobs.url(thumb).await?))
    }

    /// The browser URL of a thumbnail key from a read model (a list's photo); `None` when it
    /// cannot be made (logged: a list still shows its names without photos).
    pub async fn thumbnail_url(&self, key: &str) -> Option<String> {
        match self.blobs.url(key).await {
            Ok(url) => Some(url),
            Err(error) => {
                tracing::warn!(%error, "thumbnail URL unavailable");
                None
            }
        }
    }

    /// Every image key `user`'s stream ever referenced, read before an erasure shreds them.
    pub async fn keys_of(&self, user: UserId) -> Result<Vec<String>, ImagesError> {
        let stream = StreamName::new(StreamKind::User, user.as_uuid());
        let mut keys = Vec::new();
        let mut from = 0;
        loop {
            let page = self
                .store
                .read_stream(&stream, from, Direction::Forward, 500)
                .await?;
            let Some(last) = page.last() else { break };
            from = last.version + 1;
            for recorded in &page {
                if let Ok(UserEvent::ProfileImageChanged {
                    image, thumbnail, ..
                }) = codec::decode::<UserEvent>(recorded)
                {
                    keys.extend(image.value().cloned());
                    keys.extend(thumbnail.value().cloned());
                }
            }
        }
        Ok(keys)
    }

    /// Deletes the given blobs (after an erasure); failures are left to the sweeper.
    pub async fn delete_keys(&self, keys: &[String]) {
        let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
        self.delete_quietly(&refs).await;
    }

    async fn put_both(
        &self,
        image_key: &str,
        thumb_key: &str,
        processed: Processed,
    ) -> Result<(), BlobError> {
        self.blobs
            .put(image_key, processed.image, OUTPUT_CONTENT_TYPE)
            .await?;
        self.blobs
            .put(thumb_key, processed.thumbnail, OUTPUT_CONTENT_TYPE)
            .await
    }

    /// Deletes the blobs of the image event just before `version` in `user`'s stream, if
    /// the latest image-related event there set one.
    async fn delete_replaced(&self, user: UserId, version: u64) {
        match self.image_before(user, version).await {
            Ok(Some(keys)) => {
                let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
                self.delete_quietly(&refs).await;
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "finding the replaced image failed"),
        }
    }

    async fn image_before(
        &self,
        user: UserId,
        version: u64,
    ) -> Result<Option<Vec<String>>, ImagesError> {
        let stream = StreamName::new(StreamKind::User, user.as_uuid());
        let Some(mut from) = version.checked_sub(1) else {
            return Ok(None);
        };
        loop {
            let page = self
                .store
                .read_stream(&stream, from, Direction::Backward, 100)
                .await?;
            for recorded in &page {
                match codec::decode::<UserEvent>(recorded).map_err(ActorError::from)? {
                    UserEvent::ProfileImageChanged {
                        image, thumbnail, ..
                    } => {
                        return Ok(Some(
                            [image.value().cloned(), thumbnail.value().cloned()]
                                .into_iter()
                                .flatten()
                                .collect(),
                        ));
                    }
                    UserEvent::ProfileImageRemoved { .. }
                    | UserEvent::Deactivated { .. }
                    | UserEvent::Registered { .. } => return Ok(None),
                    _ => {}
                }
            }
            match page.last().and_then(|r| r.version.checked_sub(1)) {
                Some(next) => from = next,
                None => return Ok(None),
            }
        }
    }

    async fn delete_quietly(&self, keys: &[&str]) {
        for key in keys {
            if let Err(e) = self.blobs.delete(key).await {
                // The sweeper retries later; the key is random, so logging it reveals nothing.
                tracing::warn!(error = %e, "deleting an image blob failed");
            }
        }
    }
}

fn ctx(user: UserId, role: Role) -> Context {
    Context::new(Actor::user(user, role), chrono::Utc::now())
}

fn metadata(user: UserId) -> Metadata {
    Metadata::acting(user.as_uuid())
}
