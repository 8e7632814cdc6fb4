//! Chat rooms: "my rooms" per user (last message, unread count) and the paged message
//! history of each room.
//!
//! Message bodies are stored as sealed tokens copied from the log
//! ([`neulbi_store::sealed`]); `last_message_preview` holds the last body's token, cut to
//! a preview when a query opens it.

use super::db::{Sql, sql};
use super::rooms_batch::{BatchSql, Fold, parse_id};
use super::{Decoded, Names, Projected, ProjectionError, Projector, ProjectorDef, micros};
use async_trait::async_trait;
use neulbi_domain::chat_room::RoomEvent;
use neulbi_domain::user::UserEvent;
use neulbi_store::RecordedEvent;
use sqlx::AnyConnection;
use std::sync::Arc;

/// How much of the last message the room list shows.
pub const PREVIEW_CHARS: usize = 80;

/// The `rooms` projector.
pub static DEF: ProjectorDef = ProjectorDef {
    name: "rooms",
    description: "my rooms (last message, unread counts) and room message history",
    // 2: bodies and the last message are sealed tokens instead of plaintext.
    // 3: the history's key is the unique index `rm_messages_by_seq`, built after a rebuild.
    // 4: no index by author or by message id.
    // 5: the message table's ids are 16 bytes.
    version: 5,
    schema: include_str!("../../migrations/read_models/rooms.sql"),
    bind,
    // The fold never reads the message table; an event it cannot answer (an erasure, a read
    // marker older than its tail) builds them all.
    rebuild_indexes: Some(&[]),
};

struct Rooms {
    names: Names,
    /// Set once a rebuild has built every index of its shadow tables.
    indexed: std::sync::atomic::AtomicBool,
    batch: BatchSql,
    /// A rebuild's fold, kept across its batches ([`Projector::rebuild_batch`]).
    carried: std::sync::Mutex<Fold>,
    open: Sql,
    member: Sql,
    count: Sql,
    post_room: Sql,
    post_message: Sql,
    unread: Sql,
    seq_of: Sql,
    read: Sql,
    left: Sql,
    closed: Sql,
    rooms_of: Sql,
    erase_bodies: Sql,
    erase_previews: Sql,
}

fn bind(n: &Names) -> Arc<dyn Projector> {
    let t = &["rm_rooms", "rm_room_members", "rm_messages"];
    Arc::new(Rooms {
        names: n.clone(),
        indexed: std::sync::atomic::AtomicBool::new(false),
        batch: BatchSql::new(n),
        carried: std::sync::Mutex::default(),
        open: n.render(
            "INSERT INTO {rm_rooms} (room_id, client_id, counselor_id, opened_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (room_id) DO NOTHING",
            t,
        ),
        member: n.render(
            "INSERT INTO {rm_room_members} (room_id, user_id) VALUES ($1, $2) ON CONFLICT (room_id, user_id) DO NOTHING",
            t,
        ),
        count: n.render("SELECT message_count FROM {rm_rooms} WHERE room_id = $1", t),
        post_room: n.render(
            "UPDATE {rm_rooms} SET message_count = $1, last_message_id = $2, last_message_author = $3, \
             last_message_preview = $4, last_message_at = $5 WHERE room_id = $6",
            t,
        ),
        post_message: n.render(
            "INSERT INTO {rm_messages} (room_id, seq, message_id, author_id, body, posted_at) VALUES ($1, $2, $3, $4, $5, $6)",
            t,
        ),
        unread: n.render(
            "UPDATE {rm_room_members} SET unread_count = unread_count + 1 \
             WHERE room_id = $1 AND user_id <> $2 AND left_at IS NULL",
            t,
        ),
        // Read markers only move forward, so the newest messages are the likely ones: the
        // room's key is walked back from its end.
        seq_of: n.render(
            "SELECT seq FROM {rm_messages} WHERE room_id = $1 AND message_id = $2 ORDER BY seq DESC LIMIT 1",
            t,
        ),
        // $2 and $3 are the room and reader as text, $4 and $5 as the message table's bytes.
        read: n.render(
            "UPDATE {rm_room_members} SET last_read_seq = $1, \
             unread_count = (SELECT COUNT(*) FROM {rm_messages} m WHERE m.room_id = $4 AND m.seq > $1 AND m.author_id <> $5) \
             WHERE room_id = $2 AND user_id = $3 AND last_read_seq < $1",
            t,
        ),
        left: n.render(
            "UPDATE {rm_room_members} SET left_at = $1, unread_count = 0 WHERE room_id = $2 AND user_id = $3",
            t,
        ),
        closed: n.render("UPDATE {rm_rooms} SET closed_at = $1 WHERE room_id = $2", t),
        // Authors are members of the rooms they wrote in (membership rows outlive a leave):
        // an erasure blanks their messages room by room.
        rooms_of: n.render("SELECT room_id FROM {rm_room_members} WHERE user_id = $1", t),
        erase_bodies: n.render(
            "UPDATE {rm_messages} SET body = NULL WHERE room_id = $1 AND author_id = $2",
            t,
        ),
        erase_previews: n.render(
            "UPDATE {rm_rooms} SET last_message_preview = NULL WHERE last_message_author = $1",
            t,
        ),
    })
}

impl Rooms {
    /// Folds `events` in log order; an event the fold cannot answer is applied on its own
    /// once the fold has written what it touches, so effects keep the log's order.
    async fn fold_all(
        &self,
        tx: &mut AnyConnection,
        fold: &mut Fold,
        events: &[Projected],
        rebuilding: bool,
    ) -> Result<(), ProjectionError> {
        let dialect = self.names.dialect();
        let rooms = events.iter().filter_map(|p| match p.decoded {
            Decoded::Room(_) => Some(p.event.stream.id()),
            _ => None,
        });
        fold.preload(tx, &self.batch, rooms).await?;
        for Projected { event: e, decoded } in events {
            match decoded {
                Decoded::Room(event) => {
                    let room = e.stream.id();
                    if fold.add(tx, &self.batch, room, event).await? {
                        continue;
                    }
                    fold.settle(tx, &self.batch, dialect, room).await?;
                }
                // An erasure blanks rows of any room: all of them are written and read again.
                Decoded::User(UserEvent::Erased { .. }) => {
                    fold.flush(tx, &self.batch, dialect).await?;
                }
                _ => continue,
            }
            if rebuilding {
                self.build_deferred_indexes(tx).await?;
            }
            self.apply(tx, e, decoded).await?;
        }
        Ok(())
    }

    /// Builds the indexes a rebuild left for the swap ([`ProjectorDef::rebuild_indexes`]):
    /// the per-event statements (an erasure's walk through the author's rooms, a read
    /// marker's lookup in its room) need them.
    async fn build_deferred_indexes(&self, tx: &mut AnyConnection) -> Result<(), ProjectionError> {
        use std::sync::atomic::Ordering;
        if self.indexed.load(Ordering::Acquire) {
            return Ok(());
        }
        let statements = DEF.schema()?.create_indexes(&self.names);
        crate::runtime::run_all(tx, statements).await?;
        self.indexed.store(true, Ordering::Release);
        Ok(())
    }

    /// The fold a rebuild carries from batch to batch.
    fn carried(&self) -> std::sync::MutexGuard<'_, Fold> {
        self.carried
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The start of a message, as the room list shows it (cut when the query opens it: the read
/// model keeps the whole sealed body).
pub(super) fn preview(body: &str) -> String {
    body.chars().take(PREVIEW_CHARS).collect()
}

#[async_trait]
impl Projector for Rooms {
    async fn apply_batch(
        &self,
        tx: &mut AnyConnection,
        events: &[Projected],
    ) -> Result<(), ProjectionError> {
        let mut fold = Fold::default();
        self.fold_all(tx, &mut fold, events, false).await?;
        fold.flush(tx, &self.batch, self.names.dialect()).await
    }

    async fn rebuild_batch(
        &self,
        tx: &mut AnyConnection,
        events: &[Projected],
        keep: usize,
    ) -> Result<(), ProjectionError> {
        // Taken out for the batch (a failed batch fails the rebuild, and its fold with it).
        let mut fold = std::mem::take(&mut *self.carried());
        fold.tick();
        self.fold_all(tx, &mut fold, events, true).await?;
        // Message rows go out every batch; rooms and members stay in memory up to `keep`.
        let dialect = self.names.dialect();
        fold.flush_messages(tx, &self.batch, dialect).await?;
        fold.evict(tx, &self.batch, dialect, keep).await?;
        *self.carried() = fold;
        Ok(())
    }

    async fn finish_rebuild(&self, tx: &mut AnyConnection) -> Result<(), ProjectionError> {
        let mut fold = std::mem::take(&mut *self.carried());
        fold.flush(tx, &self.batch, self.names.dialect()).await
    }

    async fn apply(
        &self,
        tx: &mut AnyConnection,
        e: &RecordedEvent,
        decoded: &Decoded,
    ) -> Result<(), ProjectionError> {
        let room = e.stream.id().to_string();
        match decoded {
            Decoded::Room(RoomEvent::Opened {
                client,
                counselor,
                at,
                ..
            }) => {
                sqlx::query(sql(&self.open))
                    .bind(&room)
                    .bind(client.to_string())
                    .bind(counselor.to_string())
                    .bind(micros(*at))
                    .execute(&mut *tx)
                    .await?;
                for m in [client, counselor] {
                    sqlx::query(sql(&self.member))
                        .bind(&room)
                        .bind(m.to_string())
                        .execute(&mut *tx)
                        .await?;
                }
            }
            Decoded::Room(RoomEvent::MessagePosted {
                message_id,
                author,
                body,
                at,
                ..
            }) => {
                let count: Option<i64> = sqlx::query_scalar(sql(&self.count))
                    .bind(&room)
                    .fetch_optional(&mut *tx)
                    .await?;
                let seq = count.unwrap_or(0) + 1;
                let body = body.value().cloned();
                sqlx::query(sql(&self.post_room))
                    .bind(seq)
                    .bind(message_id.to_string())
                    .bind(author.to_string())
                    .bind(body.clone())
                    .bind(micros(*at))
                    .bind(&room)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(sql(&self.post_message))
                    .bind(e.stream.id().as_bytes().as_slice())
                    .bind(seq)
                    .bind(message_id.as_uuid().as_bytes().as_slice())
                    .bind(author.as_uuid().as_bytes().as_slice())
                    .bind(body)
                    .bind(micros(*at))
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(sql(&self.unread))
                    .bind(&room)
                    .bind(author.to_string())
                    .execute(&mut *tx)
                    .await?;
            }
            Decoded::Room(RoomEvent::MessageRead { reader, up_to, .. }) => {
                let seq: Option<i64> = sqlx::query_scalar(sql(&self.seq_of))
                    .bind(e.stream.id().as_bytes().as_slice())
                    .bind(up_to.as_uuid().as_bytes().as_slice())
                    .fetch_optional(&mut *tx)
                    .await?;
                if let Some(seq) = seq {
                    sqlx::query(sql(&self.read))
                        .bind(seq)
                        .bind(&room)
                        .bind(reader.to_string())
                        .bind(e.stream.id().as_bytes().as_slice())
                        .bind(reader.as_uuid().as_bytes().as_slice())
                        .execute(&mut *tx)
                        .await?;
                }
            }
            Decoded::Room(RoomEvent::MemberLeft { user_id, at }) => {
                sqlx::query(sql(&self.left))
                    .bind(micros(*at))
                    .bind(&room)
                    .bind(user_id.to_string())
                    .execute(&mut *tx)
                    .await?;
            }
            Decoded::Room(RoomEvent::Closed { at, .. }) => {
                sqlx::query(sql(&self.closed))
                    .bind(micros(*at))
                    .bind(&room)
                    .execute(&mut *tx)
                    .await?;
            }
            Decoded::User(UserEvent::Erased { .. }) => {
                // The log already reads erased; the plaintext copies here must go too.
                let user = e.stream.id().to_string();
                let rooms: Vec<String> = sqlx::query_scalar(sql(&self.rooms_of))
                    .bind(&user)
                    .fetch_all(&mut *tx)
                    .await?;
                for room in rooms {
                    let room = parse_id(&room, 0)?;
                    sqlx::query(sql(&self.erase_bodies))
                        .bind(room.as_bytes().as_slice())
                        .bind(e.stream.id().as_bytes().as_slice())
                        .execute(&mut *tx)
                        .await?;
                }
                sqlx::query(sql(&self.erase_previews))
                    .bind(&user)
                    .execute(&mut *tx)
                    .await?;
            }
            _ => {}
        }
        Ok(())
    }
}
