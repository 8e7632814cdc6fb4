//! The `rooms` projector's batch path: a batch of events is folded in memory (room counters,
//! member unread counts, new message rows) and written with a few multi-row statements,
//! because per-event statements cap a rebuild at a few ten thousand events per second.
//!
//! Every room event is folded except a read marker for a message older than the room's
//! remembered tail ([`TAIL`]); it, and a user's erasure, are applied on their own after the
//! fold has written what they touch, so the order of effects is the log's order.
//!
//! A rebuild carries one fold across its batches (`Rooms::rebuild_batch`): message rows are
//! written every batch, rooms and members when the fold holds more rooms than the rebuild
//! allows (the least recently touched go) and once at the end. Nothing in the fold reads
//! the message table, so a rebuild appends message rows with no index to keep up to date.

use super::db::{Dialect, Sql, sql, undecodable};
use super::rows::insert_rows;
use super::{Names, ProjectionError, micros};
use neulbi_domain::chat_room::RoomEvent;
use neulbi_domain::ids::{MessageId, UserId};
use sqlx::{AnyConnection, Row};
use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use uuid::Uuid;

/// Messages per room the fold remembers (the newest): a read marker names one of the last
/// few messages, and these answer it without reading the message table.
pub(super) const TAIL: usize = 16;

/// Ids are kept as UUIDs (16 bytes, no allocation) and turned into text when written.
#[derive(Debug, Clone)]
struct RoomRow {
    client: UserId,
    counselor: UserId,
    opened_at: i64,
    closed_at: Option<i64>,
    message_count: i64,
    last_id: Option<MessageId>,
    last_author: Option<UserId>,
    preview: Option<String>,
    last_at: Option<i64>,
}

#[derive(Debug, Clone)]
struct MemberRow {
    unread: i64,
    last_read_seq: i64,
    left_at: Option<i64>,
}

/// One of a room's last messages.
#[derive(Debug, Clone, Copy)]
struct Recent {
    seq: i64,
    id: MessageId,
    author: UserId,
}

/// What the fold holds of one room.
#[derive(Debug, Default)]
struct RoomState {
    /// `None` for a room never opened (messages to it have nothing to attach to).
    row: Option<RoomRow>,
    members: HashMap<UserId, MemberRow>,
    /// The room's newest messages, oldest first, ending at `message_count`: a suffix of its
    /// history (those before the fold loaded the room are in the table).
    recent: VecDeque<Recent>,
    /// The fold's tick when an event last touched the room.
    touched: u64,
}

struct MessageRow {
    room: Uuid,
    seq: i64,
    id: MessageId,
    author: UserId,
    body: Option<String>,
    at: i64,
}

/// Rooms a batch reads with one statement per table ([`Fold::preload`]): a statement per room
/// and table was a round trip to the database each, two per room a live batch touches (at
/// 2,000 messages/s, ~3,800 statements/s and most of the read model's worker switches).
const LOAD_CHUNK: usize = 32;

/// Statements of the batch path, bound to table names.
pub(super) struct BatchSql {
    room: Sql,
    members: Sql,
    /// `room` for [`LOAD_CHUNK`] rooms at once, with the room id first.
    rooms_in: Sql,
    /// `members` for [`LOAD_CHUNK`] rooms at once.
    members_in: Sql,
    rooms_table: String,
    members_table: String,
    messages_table: String,
}

impl BatchSql {
    pub(super) fn new(n: &Names) -> Self {
        let t = &["rm_rooms", "rm_room_members", "rm_messages"];
        let ids = (1..=LOAD_CHUNK)
            .map(|i| format!("${i}"))
            .collect::<Vec<_>>()
            .join(", ");
        Self {
            rooms_in: n.render(
                &format!(
                    "SELECT room_id, client_id, counselor_id, opened_at, closed_at, message_count, last_message_id, \
                     last_message_author, last_message_preview, last_message_at FROM {{rm_rooms}} WHERE room_id IN ({ids})"
                ),
                t,
            ),
            members_in: n.render(
                &format!(
                    "SELECT room_id, user_id, unread_count, last_read_seq, left_at FROM {{rm_room_members}} \
                     WHERE room_id IN ({ids})"
                ),
                t,
            ),
            room: n.render(
                "SELECT room_id, client_id, counselor_id, opened_at, closed_at, message_count, last_message_id, \
                 last_message_author, last_message_preview, last_message_at FROM {rm_rooms} WHERE room_id = $1",
                t,
            ),
            members: n.render(
                "SELECT room_id, user_id, unread_count, last_read_seq, left_at FROM {rm_room_members} WHERE room_id = $1",
                t,
            ),
            rooms_table: n.table("rm_rooms"),
            members_table: n.table("rm_room_members"),
            messages_table: n.table("rm_messages"),
        }
    }
}

/// The in-memory fold of one batch (or of a whole rebuild).
#[derive(Default)]
pub(super) struct Fold {
    rooms: HashMap<Uuid, RoomState>,
    /// Message rows not yet written.
    messages: Vec<MessageRow>,
    tick: u64,
}

impl Fold {
    /// The room's state, read from the tables the first time the fold sees it.
    async fn load(
        &mut self,
        tx: &mut AnyConnection,
        q: &BatchSql,
        room: Uuid,
    ) -> Result<&mut RoomState, ProjectionError> {
        let state = match self.rooms.entry(room) {
            Entry::Occupied(held) => held.into_mut(),
            Entry::Vacant(slot) => slot.insert(read_room(tx, q, room).await?),
        };
        state.touched = self.tick;
        Ok(state)
    }

    /// Reads the rooms of `rooms` the fold does not hold yet, [`LOAD_CHUNK`] per statement
    /// and table, as [`Fold::load`] would one by one: a batch's rooms then cost two
    /// statements per chunk instead of two per room.
    pub(super) async fn preload(
        &mut self,
        tx: &mut AnyConnection,
        q: &BatchSql,
        rooms: impl IntoIterator<Item = Uuid>,
    ) -> Result<(), ProjectionError> {
        let mut missing: Vec<Uuid> = rooms
            .into_iter()
            .filter(|r| !self.rooms.contains_key(r))
            .collect();
        missing.sort_unstable();
        missing.dedup();
        if missing.len() < 2 {
            // One room: `load` reads it with the single-room statements when it is touched.
            return Ok(());
        }
        for chunk in missing.chunks(LOAD_CHUNK) {
            for (room, state) in read_rooms(tx, q, chunk).await? {
                self.rooms.insert(room, state);
            }
        }
        Ok(())
    }

    /// Starts a new batch of a carried fold (the eviction order).
    pub(super) fn tick(&mut self) {
        self.tick += 1;
    }

    /// Folds one room event in; returns false for an event the fold cannot answer, which the
    /// caller applies on its own after [`Fold::settle`].
    pub(super) async fn add(
        &mut self,
        tx: &mut AnyConnection,
        q: &BatchSql,
        room: Uuid,
        event: &RoomEvent,
    ) -> Result<bool, ProjectionError> {
        match event {
            RoomEvent::Opened {
                client,
                counselor,
                at,
                ..
            } => {
                let state = self.load(tx, q, room).await?;
                if state.row.is_none() {
                    state.row = Some(RoomRow {
                        client: *client,
                        counselor: *counselor,
                        opened_at: micros(*at),
                        closed_at: None,
                        message_count: 0,
                        last_id: None,
                        last_author: None,
                        preview: None,
                        last_at: None,
                    });
                }
                for m in [client, counselor] {
                    state.members.entry(*m).or_insert(MemberRow {
                        unread: 0,
                        last_read_seq: 0,
                        left_at: None,
                    });
                }
            }
            RoomEvent::MessagePosted {
                message_id,
                author,
                body,
                at,
                ..
            } => {
                let state = self.load(tx, q, room).await?;
                let Some(r) = state.row.as_mut() else {
                    // A message for a room never opened: nothing to attach it to (as the
                    // per-event path, whose UPDATE matches no row).
                    return Ok(true);
                };
                r.message_count += 1;
                let seq = r.message_count;
                let body = body.value().cloned();
                r.last_id = Some(*message_id);
                r.last_author = Some(*author);
                r.preview.clone_from(&body);
                r.last_at = Some(micros(*at));
                for (user, m) in state.members.iter_mut() {
                    if user != author && m.left_at.is_none() {
                        m.unread += 1;
                    }
                }
                if state.recent.len() == TAIL {
                    state.recent.pop_front();
                }
                state.recent.push_back(Recent {
                    seq,
                    id: *message_id,
                    author: *author,
                });
                self.messages.push(MessageRow {
                    room,
                    seq,
                    id: *message_id,
                    author: *author,
                    body,
                    at: micros(*at),
                });
            }
            RoomEvent::MessageRead { reader, up_to, .. } => {
                let state = self.load(tx, q, room).await?;
                let Some(at) = state.recent.iter().position(|m| m.id == *up_to) else {
                    // Older than the tail (or no message of the room): the table answers.
                    return Ok(false);
                };
                let seq = state.recent[at].seq;
                // Every message after `seq` is in the tail: it is a suffix of the history.
                let unread = state
                    .recent
                    .iter()
                    .skip(at + 1)
                    .filter(|m| m.author != *reader)
                    .count() as i64;
                if let Some(m) = state.members.get_mut(reader)
                    && m.last_read_seq < seq
                {
                    m.last_read_seq = seq;
                    m.unread = unread;
                }
            }
            RoomEvent::MemberLeft { user_id, at } => {
                let state = self.load(tx, q, room).await?;
                if let Some(m) = state.members.get_mut(user_id) {
                    m.left_at = Some(micros(*at));
                    m.unread = 0;
                }
            }
            RoomEvent::Closed { at, .. } => {
                let state = self.load(tx, q, room).await?;
                if let Some(r) = state.row.as_mut() {
                    r.closed_at = Some(micros(*at));
                }
            }
        }
        Ok(true)
    }

    /// Writes everything and starts a new fold.
    pub(super) async fn flush(
        &mut self,
        tx: &mut AnyConnection,
        q: &BatchSql,
        dialect: Dialect,
    ) -> Result<(), ProjectionError> {
        self.flush_messages(tx, q, dialect).await?;
        write_rooms(tx, q, dialect, self.rooms.iter()).await?;
        self.rooms.clear();
        Ok(())
    }

    /// Writes the new messages and `room`'s rows and forgets the room, so a statement of its
    /// own can change them (the room is read again when an event next touches it).
    pub(super) async fn settle(
        &mut self,
        tx: &mut AnyConnection,
        q: &BatchSql,
        dialect: Dialect,
        room: Uuid,
    ) -> Result<(), ProjectionError> {
        self.flush_messages(tx, q, dialect).await?;
        if let Some((id, state)) = self.rooms.remove_entry(&room) {
            write_rooms(tx, q, dialect, std::iter::once((&id, &state))).await?;
        }
        Ok(())
    }

    /// When the fold holds more than `keep` rooms: writes and forgets all but the half most
    /// recently touched (those are read again when an event next touches them; the ones kept
    /// are written when they go in turn, or at the end).
    pub(super) async fn evict(
        &mut self,
        tx: &mut AnyConnection,
        q: &BatchSql,
        dialect: Dialect,
        keep: usize,
    ) -> Result<(), ProjectionError> {
        if self.rooms.len() <= keep {
            return Ok(());
        }
        let stay = keep / 2;
        if stay == 0 {
            return self.flush(tx, q, dialect).await;
        }
        let mut ticks: Vec<u64> = self.rooms.values().map(|r| r.touched).collect();
        let at = ticks.len() - stay;
        let (_, oldest_kept, _) = ticks.select_nth_unstable(at);
        let oldest_kept = *oldest_kept;
        // Rooms touched in the same tick as the cut go together (so at most `stay` remain).
        let gone: Vec<(Uuid, RoomState)> = self
            .rooms
            .extract_if(|_, r| r.touched <= oldest_kept)
            .collect();
        write_rooms(tx, q, dialect, gone.iter().map(|(id, state)| (id, state))).await
    }

    /// Writes the fold's new messages only; the rooms and members stay in the fold.
    pub(super) async fn flush_messages(
        &mut self,
        tx: &mut AnyConnection,
        q: &BatchSql,
        dialect: Dialect,
    ) -> Result<(), ProjectionError> {
        let messages = std::mem::take(&mut self.messages);
        let into = format!(
            "INSERT INTO {} (room_id, seq, message_id, author_id, body, posted_at) VALUES ",
            q.messages_table
        );
        insert_rows(tx, dialect, &into, 6, "", &messages, |query, m| {
            query
                .bind(m.room.as_bytes().as_slice())
                .bind(m.seq)
                .bind(m.id.0.as_bytes().as_slice())
                .bind(m.author.0.as_bytes().as_slice())
                .bind(m.body.as_deref())
                .bind(m.at)
        })
        .await
    }
}

/// A room's row and members as the tables hold them (the fold's starting point for it).
async fn read_room(
    tx: &mut AnyConnection,
    q: &BatchSql,
    room: Uuid,
) -> Result<RoomState, ProjectionError> {
    let room = room.to_string();
    let row = sqlx::query(sql(&q.room))
        .bind(&room)
        .fetch_optional(&mut *tx)
        .await?;
    let row = row.map(|r| room_row(&r)).transpose()?.map(|(_, row)| row);
    let mut members = HashMap::new();
    for r in sqlx::query(sql(&q.members))
        .bind(&room)
        .fetch_all(&mut *tx)
        .await?
    {
        let (_, user, member) = member_row(&r)?;
        members.insert(user, member);
    }
    Ok(RoomState {
        row,
        members,
        ..RoomState::default()
    })
}

/// The rows of up to [`LOAD_CHUNK`] rooms, every one of `rooms` in the answer (a room the
/// tables do not hold has no row and no members, as [`read_room`] answers).
async fn read_rooms(
    tx: &mut AnyConnection,
    q: &BatchSql,
    rooms: &[Uuid],
) -> Result<HashMap<Uuid, RoomState>, ProjectionError> {
    let Some(last) = rooms.last() else {
        return Ok(HashMap::new());
    };
    // Always LOAD_CHUNK ids (the last repeated), so each statement is prepared once.
    let ids: Vec<String> = rooms
        .iter()
        .chain(std::iter::repeat(last))
        .take(LOAD_CHUNK)
        .map(Uuid::to_string)
        .collect();
    let mut states: HashMap<Uuid, RoomState> =
        rooms.iter().map(|r| (*r, RoomState::default())).collect();
    let mut query = sqlx::query(sql(&q.rooms_in));
    for id in &ids {
        query = query.bind(id);
    }
    for r in query.fetch_all(&mut *tx).await? {
        let (room, row) = room_row(&r)?;
        if let Some(state) = states.get_mut(&room) {
            state.row = Some(row);
        }
    }
    let mut query = sqlx::query(sql(&q.members_in));
    for id in &ids {
        query = query.bind(id);
    }
    for r in query.fetch_all(&mut *tx).await? {
        let (room, user, member) = member_row(&r)?;
        if let Some(state) = states.get_mut(&room) {
            state.members.insert(user, member);
        }
    }
    Ok(states)
}

/// A room's row as the room statements select it (`room_id` first).
fn room_row(r: &sqlx::any::AnyRow) -> Result<(Uuid, RoomRow), ProjectionError> {
    let row = RoomRow {
        client: UserId(id_in(r, 1)?),
        counselor: UserId(id_in(r, 2)?),
        opened_at: r.try_get(3)?,
        closed_at: r.try_get(4)?,
        message_count: r.try_get(5)?,
        last_id: optional_id_in(r, 6)?.map(MessageId),
        last_author: optional_id_in(r, 7)?.map(UserId),
        preview: r.try_get(8)?,
        last_at: r.try_get(9)?,
    };
    Ok((id_in(r, 0)?, row))
}

/// A member's row as the member statements select it (`room_id`, `user_id` first).
fn member_row(r: &sqlx::any::AnyRow) -> Result<(Uuid, UserId, MemberRow), ProjectionError> {
    let member = MemberRow {
        unread: r.try_get(2)?,
        last_read_seq: r.try_get(3)?,
        left_at: r.try_get(4)?,
    };
    Ok((id_in(r, 0)?, UserId(id_in(r, 1)?), member))
}

/// The id in column `i` (text in the tables).
fn id_in(row: &sqlx::any::AnyRow, i: usize) -> Result<Uuid, ProjectionError> {
    let text: String = row.try_get(i)?;
    parse_id(&text, i)
}

/// The id in column `i`, which may be NULL.
fn optional_id_in(row: &sqlx::any::AnyRow, i: usize) -> Result<Option<Uuid>, ProjectionError> {
    let text: Option<String> = row.try_get(i)?;
    text.map(|t| parse_id(&t, i)).transpose()
}

/// An id read back as text (column `i`), as a UUID.
pub(super) fn parse_id(text: &str, i: usize) -> Result<Uuid, ProjectionError> {
    Uuid::parse_str(text).map_err(|e| undecodable(i, e))
}

/// Upserts the room and member rows of `rooms`.
async fn write_rooms<'a>(
    tx: &mut AnyConnection,
    q: &BatchSql,
    dialect: Dialect,
    rooms: impl Iterator<Item = (&'a Uuid, &'a RoomState)>,
) -> Result<(), ProjectionError> {
    let mut opened: Vec<(&Uuid, &RoomRow)> = Vec::new();
    let mut members: Vec<(&Uuid, &UserId, &MemberRow)> = Vec::new();
    for (id, state) in rooms {
        if let Some(row) = &state.row {
            opened.push((id, row));
        }
        members.extend(state.members.iter().map(|(u, m)| (id, u, m)));
    }
    let into = format!(
        "INSERT INTO {} (room_id, client_id, counselor_id, opened_at, closed_at, message_count, last_message_id, \
         last_message_author, last_message_preview, last_message_at) VALUES ",
        q.rooms_table
    );
    let upsert = " ON CONFLICT (room_id) DO UPDATE SET closed_at = excluded.closed_at, message_count = excluded.message_count, \
         last_message_id = excluded.last_message_id, last_message_author = excluded.last_message_author, \
         last_message_preview = excluded.last_message_preview, last_message_at = excluded.last_message_at";
    insert_rows(tx, dialect, &into, 10, upsert, &opened, |query, (id, r)| {
        query
            .bind(id.to_string())
            .bind(r.client.to_string())
            .bind(r.counselor.to_string())
            .bind(r.opened_at)
            .bind(r.closed_at)
            .bind(r.message_count)
            .bind(r.last_id.map(|m| m.to_string()))
            .bind(r.last_author.map(|a| a.to_string()))
            .bind(r.preview.as_deref())
            .bind(r.last_at)
    })
    .await?;
    let into = format!(
        "INSERT INTO {} (room_id, user_id, unread_count, last_read_seq, left_at) VALUES ",
        q.members_table
    );
    let upsert = " ON CONFLICT (room_id, user_id) DO UPDATE SET unread_count = excluded.unread_count, \
         last_read_seq = excluded.last_read_seq, left_at = excluded.left_at";
    insert_rows(
        tx,
        dialect,
        &into,
        5,
        upsert,
        &members,
        |query, (room, user, m)| {
            query
                .bind(room.to_string())
                .bind(user.to_string())
                .bind(m.unread)
                .bind(m.last_read_seq)
                .bind(m.left_at)
        },
    )
    .await
}
