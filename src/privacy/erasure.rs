//! Erasing a person: the right to be forgotten, in an append-only log.
//!
//! The order is chosen so that a crash at any step is repaired by running the erasure again
//! (every step is idempotent): first the `Erased` event (the durable record that the person
//! asked, and the point after which the aggregate refuses every command), then the key (after
//! which every personal field of theirs reads as erased, on every node within the key-cache
//! time), then the places that held plaintext outside the log.

use super::KeyStore;
use crate::actors::{ActorError, Registry};
use crate::store::{Database, Metadata};
use neulbi_domain::user::{UserCommand, UserDecider};
use neulbi_domain::{Context, UserId};
use tracing::Instrument;

/// What an erasure did, for the operator's output and the API response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErasureReport {
    /// The erased user.
    pub user_id: UserId,
    /// False when the user had already been erased (the call repaired or confirmed it).
    pub newly_erased: bool,
}

/// Erases `user` on behalf of `ctx.actor` (the user themself, or an operator).
pub async fn erase_user(
    users: &Registry<UserDecider>,
    keys: &KeyStore,
    database: &Database,
    user: UserId,
    ctx: Context,
    metadata: Metadata,
) -> Result<ErasureReport, ActorError> {
    let span = tracing::info_span!("erase_user", user_id = %user);
    async {
        let outcome = users
            .execute(user.as_uuid(), UserCommand::Erase, ctx, metadata)
            .await?;
        keys.destroy(user.as_uuid()).await?;
        // Sign-in rows (keyed identity hashes, refresh tokens, login codes) name the user:
        // deleted, so the person can neither sign in as the erased account nor be found.
        crate::auth::forget_user(database, user.as_uuid()).await?;
        scrub_free_space(database).await?;
        tracing::info!(newly_erased = !outcome.events.is_empty(), "user erased");
        Ok(ErasureReport {
            user_id: user,
            newly_erased: !outcome.events.is_empty(),
        })
    }
    .instrument(span)
    .await
}

/// Makes sure deleted bytes do not linger in the database files: SQLite runs with
/// `secure_delete`, and a truncating checkpoint drops old page images from the WAL.
pub(crate) async fn scrub_free_space(database: &Database) -> Result<(), crate::store::StoreError> {
    if let Database::Sqlite(pool) = database {
        let truncated =
            crate::store::sqlite::truncate_wal(crate::store::sqlite::TRUNCATE_WAIT, || {
                sqlx::query_scalar::<_, i64>(crate::store::sqlite::TRUNCATE_CHECKPOINT)
                    .fetch_one(pool)
            })
            .await?;
        if !truncated {
            // The erasure itself stands; running it again scrubs again.
            return Err(crate::store::StoreError::Unavailable(
                "the WAL could not be emptied of old page images (a checkpoint kept running); erase again".into(),
            ));
        }
    }
    Ok(())
}

/// The blob keys of every profile image `user` ever had, read while they are still readable
/// (before [`erase_user`] shreds them), so the caller can delete the blobs after the erasure.
/// A read failure yields none: the sweeper deletes the blobs of an erased user later anyway,
/// since no readable event references them.
pub async fn image_keys_before_erasure(images: &crate::blob::Images, user: UserId) -> Vec<String> {
    match images.keys_of(user).await {
        Ok(keys) => keys,
        Err(e) => {
            tracing::warn!(error = %e, "reading image keys before erasure failed");
            Vec::new()
        }
    }
}
