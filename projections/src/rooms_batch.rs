//! The `rooms` projector's batch path: a batch of events is folded in memory (room counters,
//! member unread counts, new message rows) and written with a few multi-row statements,
//! because per-event statements cap a rebuild at a few ten thousand events per second.
//!
//! Only `Opened`, `MessagePosted` and `MessageRead` are folded; any other event that
//! touches the tables (leave, close, erasure) flushes the fold first and then applies
//! directly, so the order of effects is the log's order.
//!
//! A rebuild carries one fold across its batches (`Rooms::rebuild_batch`): message rows are
//! written every batch, rooms and members once at the end or when the fold holds more
//! rooms than the rebuild allows.

use super::db::{Dialect, Sql, sql};
use super::{Names, ProjectionError, micros};
use neulbi_domain::chat_room::RoomEvent;
use sqlx::{AnyConnection, Row};
use std::collections::HashMap;
use std::sync::Arc;

/// Rows per multi-row statement (SQLite allows 32,766 parameters per statement).
const CHUNK: usize = 100;

#[derive(Debug, Clone)]
struct RoomRow {
    client: String,
    counselor: String,
    opened_at: i64,
    closed_at: Option<i64>,
    message_count: i64,
    last_id: Option<String>,
    last_author: Option<String>,
    preview: Option<String>,
    last_at: Option<i64>,
}

#[derive(Debug, Clone)]
struct MemberRow {
    unread: i64,
    last_read_seq: i64,
    left_at: Option<i64>,
}

struct MessageRow {
    room: String,
    seq: i64,
    id: String,
    author: String,
    body: Option<String>,
    at: i64,
}

/// Statements of the batch path, bound to table names.
pub(super) struct BatchSql {
    room: Sql,
    members: Sql,
    seq_of: Sql,
    others_after: Sql,
    rooms_table: String,
    members_table: String,
    messages_table: String,
}

impl BatchSql {
    pub(super) fn new(n: &Names) -> Self {
        let t = &["rm_rooms", "rm_room_members", "rm_messages"];
        Self {
            room: n.render(
                "SELECT client_id, counselor_id, opened_at, closed_at, message_count, last_message_id, last_message_author, \
                 last_message_preview, last_message_at FROM {rm_rooms} WHERE room_id = $1",
                t,
            ),
            members: n.render(
                "SELECT user_id, unread_count, last_read_seq, left_at FROM {rm_room_members} WHERE room_id = $1",
                t,
            ),
            seq_of: n.render("SELECT seq FROM {rm_messages} WHERE room_id = $1 AND message_id = $2", t),
            others_after: n.render(
                "SELECT COUNT(*) FROM {rm_messages} WHERE room_id = $1 AND seq > $2 AND author_id <> $3",
                t,
            ),
            rooms_table: n.table("rm_rooms"),
            members_table: n.table("rm_room_members"),
            messages_table: n.table("rm_messages"),
        }
    }
}

/// The in-memory fold of one batch.
#[derive(Default)]
pub(super) struct Fold {
    rooms: HashMap<String, Option<RoomRow>>,
    members: HashMap<String, HashMap<String, MemberRow>>,
    messages: Vec<MessageRow>,
    /// Messages of this fold by room: (seq, message id, author).
    pending: HashMap<String, Vec<(i64, String, String)>>,
}

impl Fold {
    async fn load(
        &mut self,
        tx: &mut AnyConnection,
        q: &BatchSql,
        room: &str,
    ) -> Result<(), ProjectionError> {
        if self.rooms.contains_key(room) {
            return Ok(());
        }
        let row = sqlx::query(sql(&q.room))
            .bind(room)
            .fetch_optional(&mut *tx)
            .await?;
        let row = match row {
            Some(r) => Some(RoomRow {
                client: r.try_get(0)?,
                counselor: r.try_get(1)?,
                opened_at: r.try_get(2)?,
                closed_at: r.try_get(3)?,
                message_count: r.try_get(4)?,
                last_id: r.try_get(5)?,
                last_author: r.try_get(6)?,
                preview: r.try_get(7)?,
                last_at: r.try_get(8)?,
            }),
            None => None,
        };
        let mut members = HashMap::new();
        for r in sqlx::query(sql(&q.members))
            .bind(room)
            .fetch_all(&mut *tx)
            .await?
        {
            members.insert(
                r.try_get::<String, _>(0)?,
                MemberRow {
                    unread: r.try_get(1)?,
                    last_read_seq: r.try_get(2)?,
                    left_at: r.try_get(3)?,
                },
            );
        }
        self.rooms.insert(room.to_owned(), row);
        self.members.insert(room.to_owned(), members);
        Ok(())
    }

    /// Folds one room event in; returns false for events the fold does not handle.
    pub(super) async fn add(
        &mut self,
        tx: &mut AnyConnection,
        q: &BatchSql,
        room: &str,
        event: &RoomEvent,
    ) -> Result<bool, ProjectionError> {
        match event {
            RoomEvent::Opened {
                client,
                counselor,
                at,
                ..
            } => {
                self.load(tx, q, room).await?;
                let slot = self.rooms.entry(room.to_owned()).or_default();
                if slot.is_none() {
                    *slot = Some(RoomRow {
                        client: client.to_string(),
                        counselor: counselor.to_string(),
                        opened_at: micros(*at),
                        closed_at: None,
                        message_count: 0,
                        last_id: None,
                        last_author: None,
                        preview: None,
                        last_at: None,
                    });
                }
                let members = self.members.entry(room.to_owned()).or_default();
                for m in [client, counselor] {
                    members.entry(m.to_string()).or_insert(MemberRow {
                        unread: 0,
                        last_read_seq: 0,
                        left_at: None,
                    });
                }
                Ok(true)
            }
            RoomEvent::MessagePosted {
                message_id,
                author,
                body,
                at,
                ..
            } => {
                self.load(tx, q, room).await?;
                let Some(Some(r)) = self.rooms.get_mut(room) else {
                    // A message for a room never opened: nothing to attach it to (as the
                    // per-event path, whose UPDATE matches no row).
                    return Ok(true);
                };
                r.message_count += 1;
                let seq = r.message_count;
                let author = author.to_string();
                let body = body.value().cloned();
                r.last_id = Some(message_id.to_string());
                r.last_author = Some(author.clone());
                r.preview = body.clone();
                r.last_at = Some(micros(*at));
                if let Some(members) = self.members.get_mut(room) {
                    for (user, m) in members.iter_mut() {
                        if *user != author && m.left_at.is_none() {
                            m.unread += 1;
                        }
                    }
                }
                self.pending.entry(room.to_owned()).or_default().push((
                    seq,
                    message_id.to_string(),
                    author.clone(),
                ));
                self.messages.push(MessageRow {
                    room: room.to_owned(),
                    seq,
                    id: message_id.to_string(),
                    author,
                    body,
                    at: micros(*at),
                });
                Ok(true)
            }
            RoomEvent::MessageRead { reader, up_to, .. } => {
                self.load(tx, q, room).await?;
                let reader = reader.to_string();
                let up_to = up_to.to_string();
                let pending = self.pending.get(room);
                let seq = match pending.and_then(|p| p.iter().find(|(_, id, _)| *id == up_to)) {
                    Some((seq, _, _)) => Some(*seq),
                    None => {
                        sqlx::query_scalar::<_, i64>(sql(&q.seq_of))
                            .bind(room)
                            .bind(&up_to)
                            .fetch_optional(&mut *tx)
                            .await?
                    }
                };
                let Some(seq) = seq else { return Ok(true) };
                let current = self
                    .members
                    .get(room)
                    .and_then(|m| m.get(&reader))
                    .map(|m| m.last_read_seq);
                if current.is_none_or(|c| c >= seq) {
                    return Ok(true);
                }
                // The highest seq the table holds: the fold's own messages are the last ones.
                let written = match self.rooms.get(room) {
                    Some(Some(r)) => r.message_count - pending.map_or(0, |p| p.len() as i64),
                    _ => i64::MAX,
                };
                // Messages after `seq` that the table holds (none when all are in the fold).
                let stored: i64 = if seq >= written {
                    0
                } else {
                    sqlx::query_scalar(sql(&q.others_after))
                        .bind(room)
                        .bind(seq)
                        .bind(&reader)
                        .fetch_one(&mut *tx)
                        .await?
                };
                let in_fold = pending.map_or(0, |p| {
                    p.iter()
                        .filter(|(s, _, a)| *s > seq && *a != reader)
                        .count()
                });
                if let Some(m) = self.members.get_mut(room).and_then(|m| m.get_mut(&reader)) {
                    m.last_read_seq = seq;
                    m.unread = stored + in_fold as i64;
                }
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// Writes the fold and starts a new one.
    pub(super) async fn flush(
        &mut self,
        tx: &mut AnyConnection,
        q: &BatchSql,
        dialect: Dialect,
    ) -> Result<(), ProjectionError> {
        let rooms: Vec<(String, RoomRow)> = self
            .rooms
            .drain()
            .filter_map(|(id, r)| r.map(|r| (id, r)))
            .collect();
        for chunk in rooms.chunks(CHUNK) {
            let stmt = multi_row(
                &format!(
                    "INSERT INTO {} (room_id, client_id, counselor_id, opened_at, closed_at, message_count, last_message_id, \
                     last_message_author, last_message_preview, last_message_at) VALUES ",
                    q.rooms_table
                ),
                10,
                chunk.len(),
                dialect,
                " ON CONFLICT (room_id) DO UPDATE SET closed_at = excluded.closed_at, message_count = excluded.message_count, \
                 last_message_id = excluded.last_message_id, last_message_author = excluded.last_message_author, \
                 last_message_preview = excluded.last_message_preview, last_message_at = excluded.last_message_at",
            );
            let mut query = sqlx::query(sql(&stmt));
            for (id, r) in chunk {
                query = query
                    .bind(id.clone())
                    .bind(r.client.clone())
                    .bind(r.counselor.clone())
                    .bind(r.opened_at)
                    .bind(r.closed_at)
                    .bind(r.message_count)
                    .bind(r.last_id.clone())
                    .bind(r.last_author.clone())
                    .bind(r.preview.clone())
                    .bind(r.last_at);
            }
            query.execute(&mut *tx).await?;
        }
        let members: Vec<(String, String, MemberRow)> = self
            .members
            .drain()
            .flat_map(|(room, ms)| ms.into_iter().map(move |(u, m)| (room.clone(), u, m)))
            .collect();
        for chunk in members.chunks(CHUNK) {
            let stmt = multi_row(
                &format!(
                    "INSERT INTO {} (room_id, user_id, unread_count, last_read_seq, left_at) VALUES ",
                    q.members_table
                ),
                5,
                chunk.len(),
                dialect,
                " ON CONFLICT (room_id, user_id) DO UPDATE SET unread_count = excluded.unread_count, \
                 last_read_seq = excluded.last_read_seq, left_at = excluded.left_at",
            );
            let mut query = sqlx::query(sql(&stmt));
            for (room, user, m) in chunk {
                query = query
                    .bind(room.clone())
                    .bind(user.clone())
                    .bind(m.unread)
                    .bind(m.last_read_seq)
                    .bind(m.left_at);
            }
            query.execute(&mut *tx).await?;
        }
        self.flush_messages(tx, q, dialect).await
    }

    /// Rooms whose state the fold holds.
    pub(super) fn rooms_held(&self) -> usize {
        self.rooms.len()
    }

    /// Writes the fold's new messages only; the rooms and members stay in the fold.
    pub(super) async fn flush_messages(
        &mut self,
        tx: &mut AnyConnection,
        q: &BatchSql,
        dialect: Dialect,
    ) -> Result<(), ProjectionError> {
        let messages = std::mem::take(&mut self.messages);
        for chunk in messages.chunks(CHUNK) {
            let stmt = multi_row(
                &format!(
                    "INSERT INTO {} (room_id, seq, message_id, author_id, body, posted_at) VALUES ",
                    q.messages_table
                ),
                6,
                chunk.len(),
                dialect,
                "",
            );
            let mut query = sqlx::query(sql(&stmt));
            for m in chunk {
                query = query
                    .bind(m.room.clone())
                    .bind(m.seq)
                    .bind(m.id.clone())
                    .bind(m.author.clone())
                    .bind(m.body.clone())
                    .bind(m.at);
            }
            query.execute(&mut *tx).await?;
        }
        self.pending.clear();
        Ok(())
    }
}

/// `prefix (..$1..$cols), (...), ... suffix` with numbered placeholders on PostgreSQL, and
/// anonymous `?` ones on SQLite: SQLite treats `$n` as a name, and looking a named
/// parameter up walks the statement's list of names, so binding the hundreds of `$n` of a
/// multi-row statement cost time quadratic in its size (7% of a rebuild's CPU).
fn multi_row(prefix: &str, cols: usize, rows: usize, dialect: Dialect, suffix: &str) -> Sql {
    let mut s = String::with_capacity(prefix.len() + rows * cols * 6 + suffix.len());
    s.push_str(prefix);
    let mut n = 1;
    for r in 0..rows {
        if r > 0 {
            s.push(',');
        }
        s.push('(');
        for c in 0..cols {
            if c > 0 {
                s.push(',');
            }
            match dialect {
                Dialect::Sqlite => s.push('?'),
                Dialect::Postgres => {
                    s.push('$');
                    s.push_str(&n.to_string());
                    n += 1;
                }
            }
        }
        s.push(')');
    }
    s.push_str(suffix);
    Arc::from(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_row_placeholders_follow_the_dialect() {
        assert_eq!(
            &*multi_row(
                "INSERT INTO t (a, b) VALUES ",
                2,
                2,
                Dialect::Postgres,
                " X"
            ),
            "INSERT INTO t (a, b) VALUES ($1,$2),($3,$4) X"
        );
        assert_eq!(
            &*multi_row("INSERT INTO t (a, b) VALUES ", 2, 2, Dialect::Sqlite, ""),
            "INSERT INTO t (a, b) VALUES (?,?),(?,?)"
        );
    }
}
