//! The profile images users currently have, for the blob sweeper
//! (the root crate's `blob::sweeper`): one row per user whose state references an image, gone once
//! the image is removed or the account deactivated or erased, so the sweeper reads what is
//! referenced instead of folding the whole log on every run.
//!
//! A dedicated projector rather than a column of `users`: the sweeper waits for this
//! projector's checkpoint before it deletes anything, and a projector that only touches
//! image events catches up at once; adding it also left the `users` read model (and its
//! version) alone, so upgrading rebuilds nothing that serves pages.
//!
//! Keys are personal (they name a person's blobs) and stored as the sealed tokens copied
//! from the log ([`neulbi_store::sealed`]); [`super::queries::image_keys`] opens them.

use super::db::{Sql, sql};
use super::{Decoded, Names, ProjectionError, Projector, ProjectorDef};
use async_trait::async_trait;
use neulbi_domain::user::UserEvent;
use neulbi_store::RecordedEvent;
use sqlx::AnyConnection;
use std::sync::Arc;

/// The `images` projector.
pub static DEF: ProjectorDef = ProjectorDef {
    name: "images",
    description: "profile-image blob keys users reference (for the image sweeper)",
    version: 1,
    schema: include_str!("../../migrations/read_models/images.sql"),
    bind,
    rebuild_indexes: None,
};

struct Images {
    set: Sql,
    clear: Sql,
}

fn bind(n: &Names) -> Arc<dyn Projector> {
    let t = &["rm_images"];
    Arc::new(Images {
        set: n.render(
            "INSERT INTO {rm_images} (user_id, image, thumbnail) VALUES ($1, $2, $3) \
             ON CONFLICT (user_id) DO UPDATE SET image = excluded.image, thumbnail = excluded.thumbnail",
            t,
        ),
        clear: n.render("DELETE FROM {rm_images} WHERE user_id = $1", t),
    })
}

#[async_trait]
impl Projector for Images {
    async fn apply(
        &self,
        tx: &mut AnyConnection,
        e: &RecordedEvent,
        decoded: &Decoded,
    ) -> Result<(), ProjectionError> {
        let Decoded::User(event) = decoded else {
            return Ok(());
        };
        let id = e.stream.id().to_string();
        match event {
            UserEvent::ProfileImageChanged {
                image, thumbnail, ..
            } => match (image.value(), thumbnail.value()) {
                (Some(image), Some(thumbnail)) => {
                    sqlx::query(sql(&self.set))
                        .bind(&id)
                        .bind(image.clone())
                        .bind(thumbnail.clone())
                        .execute(&mut *tx)
                        .await?;
                }
                // A key that reached the projectors erased references nothing readable.
                _ => self.clear(tx, &id).await?,
            },
            // The user's state holds no image after any of these.
            UserEvent::ProfileImageRemoved { .. }
            | UserEvent::Deactivated { .. }
            | UserEvent::Erased { .. } => self.clear(tx, &id).await?,
            UserEvent::Registered { .. }
            | UserEvent::ProfileUpdated { .. }
            | UserEvent::RoleGranted { .. }
            | UserEvent::CounselorProfilePublished { .. }
            | UserEvent::LoggedIn { .. }
            | UserEvent::SignedOutEverywhere { .. }
            | UserEvent::SignInFailed { .. }
            | UserEvent::RefreshTokenReused { .. } => {}
        }
        Ok(())
    }
}

impl Images {
    async fn clear(&self, tx: &mut AnyConnection, id: &str) -> Result<(), ProjectionError> {
        sqlx::query(sql(&self.clear))
            .bind(id)
            .execute(&mut *tx)
            .await?;
        Ok(())
    }
}
