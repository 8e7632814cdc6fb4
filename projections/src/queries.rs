//! Queries over the read models, shared by the HTTP API and the CLI.
//!
//! Personal values (nicknames, headlines, bios, message bodies and previews) are stored
//! sealed ([`neulbi_store::sealed`]); each query opens its page with one key lookup per
//! owner, so an erased person's values read as absent (`None`, or empty text where the
//! field is not optional) exactly like the scrubbed rows did before.

use super::ProjectionError;
use super::db::ReadDb;
use chrono::{DateTime, Utc};
use neulbi_store::sealed::PageKeys;
use serde::Serialize;
use sqlx::Row;
use std::collections::HashSet;
use tracing::Instrument;

/// The keys to open a page of sealed values, one lookup per owner (through the key cache).
async fn page_keys<'a>(
    db: &ReadDb,
    tokens: impl IntoIterator<Item = &'a str>,
) -> Result<PageKeys, ProjectionError> {
    let tokens: Vec<&str> = tokens.into_iter().collect();
    let span = tracing::debug_span!("open_sealed", values = tokens.len());
    PageKeys::load(db.keys.as_deref(), tokens)
        .instrument(span)
        .await
        .map_err(ProjectionError::Store)
}

fn time(micros: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(micros).unwrap_or_default()
}

fn opt_time(micros: Option<i64>) -> Option<DateTime<Utc>> {
    micros.map(time)
}

/// Most rows any list query returns.
pub const MAX_PAGE: i64 = 200;

/// A page of results with an opaque cursor for the next page (stable: it names a position in
/// an append-only sequence, not an offset).
#[derive(Debug, Serialize)]
pub struct Page<T> {
    /// The rows, newest first.
    pub items: Vec<T>,
    /// Pass as `before` to get the next (older) page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// A user's profile as others may see it.
#[derive(Debug, Serialize, PartialEq)]
pub struct UserProfile {
    /// The user id.
    pub user_id: String,
    /// `None` once erased.
    pub nickname: Option<String>,
    /// `client` or `counselor`.
    pub role: String,
    /// When they joined.
    pub registered_at: DateTime<Utc>,
    /// Whether the account was erased.
    pub erased: bool,
}

/// One user's profile.
pub async fn user(db: &ReadDb, user_id: &str) -> Result<Option<UserProfile>, ProjectionError> {
    let row = sqlx::query(
        "SELECT user_id, nickname, role, registered_at, erased_at FROM rm_users WHERE user_id = $1",
    )
    .bind(user_id)
    .fetch_optional(&db.pool)
    .await?;
    let Some(r) = row else { return Ok(None) };
    let nickname: Option<String> = r.try_get(1)?;
    let keys = page_keys(db, nickname.as_deref()).await?;
    Ok(Some(UserProfile {
        user_id: r.try_get(0)?,
        nickname: keys.open(nickname.as_deref())?,
        role: r.try_get(2)?,
        registered_at: time(r.try_get(3)?),
        erased: r.try_get::<Option<i64>, _>(4)?.is_some(),
    }))
}

/// A published counselor in the directory.
#[derive(Debug, Serialize, PartialEq)]
pub struct Counselor {
    /// The counselor's user id.
    pub user_id: String,
    /// Display name.
    pub nickname: Option<String>,
    /// One-line summary.
    pub headline: String,
    /// Longer introduction.
    pub bio: String,
    /// When the profile was (last) published.
    pub published_at: DateTime<Utc>,
    /// The blob key of their photo's thumbnail; the edge turns it into `photo_url`.
    #[serde(skip)]
    pub thumbnail_key: Option<String>,
    /// Where the browser loads the thumbnail (set by the edge).
    pub photo_url: Option<String>,
}

/// Most directory entries a search looks through: names and profiles are sealed in the read
/// model, so a search opens them and matches here rather than in SQL.
pub const MAX_SEARCHED: i64 = 5000;

/// The counselor directory, most recently published first; with `search`, only those whose
/// name, headline or bio contains every word of it (case-insensitive).
pub async fn counselors(
    db: &ReadDb,
    limit: i64,
    search: Option<&str>,
) -> Result<Vec<Counselor>, ProjectionError> {
    let limit = limit.clamp(1, MAX_PAGE);
    let words: Vec<String> = search
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_lowercase)
        .collect();
    let rows = sqlx::query(
        "SELECT c.user_id, c.nickname, c.headline, c.bio, c.published_at, u.thumbnail FROM rm_counselors c \
         LEFT JOIN rm_users u ON u.user_id = c.user_id ORDER BY c.published_at DESC LIMIT $1",
    )
    .bind(if words.is_empty() { limit } else { MAX_SEARCHED })
    .fetch_all(&db.pool)
    .await?;
    let mut items = rows
        .into_iter()
        .map(|r| {
            Ok(Counselor {
                user_id: r.try_get(0)?,
                nickname: r.try_get(1)?,
                headline: r.try_get(2)?,
                bio: r.try_get(3)?,
                published_at: time(r.try_get(4)?),
                thumbnail_key: r.try_get(5)?,
                photo_url: None,
            })
        })
        .collect::<Result<Vec<_>, ProjectionError>>()?;
    let keys = page_keys(
        db,
        items.iter().flat_map(|c| {
            [
                c.nickname.as_deref(),
                Some(c.headline.as_str()),
                Some(c.bio.as_str()),
                c.thumbnail_key.as_deref(),
            ]
            .into_iter()
            .flatten()
        }),
    )
    .await?;
    for c in &mut items {
        c.nickname = keys.open(c.nickname.as_deref())?;
        c.headline = keys.open(Some(&c.headline))?.unwrap_or_default();
        c.bio = keys.open(Some(&c.bio))?.unwrap_or_default();
        c.thumbnail_key = keys.open(c.thumbnail_key.as_deref())?;
    }
    if !words.is_empty() {
        items.retain(|c| {
            let text = format!(
                "{} {} {}",
                c.nickname.as_deref().unwrap_or_default(),
                c.headline,
                c.bio
            )
            .to_lowercase();
            words.iter().all(|w| text.contains(w.as_str()))
        });
        items.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
    }
    Ok(items)
}

/// One entry of a user's room list.
#[derive(Debug, Serialize, PartialEq)]
pub struct MyRoom {
    /// The room.
    pub room_id: String,
    /// The client member.
    pub client_id: String,
    /// The counselor member.
    pub counselor_id: String,
    /// Messages posted so far.
    pub message_count: i64,
    /// Messages by others this user has not read.
    pub unread_count: i64,
    /// The last message's id (`None` if none): a read marker up to it clears the badge.
    pub last_message_id: Option<String>,
    /// The start of the last message (`None` if none, or erased).
    pub last_message_preview: Option<String>,
    /// When the last message was posted.
    pub last_message_at: Option<DateTime<Utc>>,
    /// When the room was opened.
    pub opened_at: DateTime<Utc>,
    /// When it was closed, if it was.
    pub closed_at: Option<DateTime<Utc>>,
    /// How far the other members have read (the highest message `seq` any of them marked
    /// read; 0 for none): the read marker under my messages.
    pub peer_read_seq: i64,
    /// The other member (the counselor for a client, the client for a counselor).
    pub peer_id: String,
    /// Their display name, if known and not erased.
    pub peer_nickname: Option<String>,
    /// The blob key of their photo's thumbnail; the edge turns it into `peer_photo_url`.
    #[serde(skip)]
    pub peer_thumbnail_key: Option<String>,
    /// Where the browser loads their thumbnail (set by the edge).
    pub peer_photo_url: Option<String>,
}

/// The rooms `user_id` is a member of, most recently active first.
pub async fn my_rooms(db: &ReadDb, user_id: &str) -> Result<Vec<MyRoom>, ProjectionError> {
    let rows = sqlx::query(
        "SELECT r.room_id, r.client_id, r.counselor_id, r.message_count, m.unread_count, r.last_message_preview, \
         r.last_message_at, r.opened_at, r.closed_at, \
         (SELECT COALESCE(MAX(o.last_read_seq), 0) FROM rm_room_members o WHERE o.room_id = m.room_id AND o.user_id <> m.user_id), \
         u.nickname, r.last_message_id, u.thumbnail \
         FROM rm_room_members m JOIN rm_rooms r ON r.room_id = m.room_id \
         LEFT JOIN rm_users u ON u.user_id = CASE WHEN r.client_id = m.user_id THEN r.counselor_id ELSE r.client_id END \
         WHERE m.user_id = $1 AND m.left_at IS NULL \
         ORDER BY COALESCE(r.last_message_at, r.opened_at) DESC LIMIT 500",
    )
    .bind(user_id)
    .fetch_all(&db.pool)
    .await?;
    let mut items = rows
        .into_iter()
        .map(|r| {
            Ok(MyRoom {
                room_id: r.try_get(0)?,
                client_id: r.try_get(1)?,
                counselor_id: r.try_get(2)?,
                message_count: r.try_get(3)?,
                unread_count: r.try_get(4)?,
                last_message_preview: r.try_get(5)?,
                last_message_at: opt_time(r.try_get(6)?),
                opened_at: time(r.try_get(7)?),
                closed_at: opt_time(r.try_get(8)?),
                peer_read_seq: r.try_get(9)?,
                peer_id: String::new(),
                peer_nickname: r.try_get(10)?,
                last_message_id: r.try_get(11)?,
                peer_thumbnail_key: r.try_get(12)?,
                peer_photo_url: None,
            })
        })
        .collect::<Result<Vec<_>, ProjectionError>>()?;
    // The read model keeps the whole last body, sealed; the preview is cut once opened.
    let keys = page_keys(
        db,
        items.iter().flat_map(|r| {
            [
                r.last_message_preview.as_deref(),
                r.peer_nickname.as_deref(),
                r.peer_thumbnail_key.as_deref(),
            ]
            .into_iter()
            .flatten()
        }),
    )
    .await?;
    for r in &mut items {
        r.last_message_preview = keys
            .open(r.last_message_preview.as_deref())?
            .map(|body| super::rooms::preview(&body));
        r.peer_nickname = keys.open(r.peer_nickname.as_deref())?;
        r.peer_thumbnail_key = keys.open(r.peer_thumbnail_key.as_deref())?;
        r.peer_id = if r.client_id == user_id {
            r.counselor_id.clone()
        } else {
            r.client_id.clone()
        };
    }
    Ok(items)
}

/// Whether `user_id` is a current member of `room_id` (for authorizing history reads).
pub async fn is_member(db: &ReadDb, room_id: &str, user_id: &str) -> Result<bool, ProjectionError> {
    let n: Option<i64> = sqlx::query_scalar(
        "SELECT 1 FROM rm_room_members WHERE room_id = $1 AND user_id = $2 AND left_at IS NULL",
    )
    .bind(room_id)
    .bind(user_id)
    .fetch_optional(&db.pool)
    .await?;
    Ok(n.is_some())
}

/// The current members of `room_id` (for routing room-list pushes to them).
pub async fn room_members(db: &ReadDb, room_id: &str) -> Result<Vec<String>, ProjectionError> {
    let members: Vec<String> = sqlx::query_scalar(
        "SELECT user_id FROM rm_room_members WHERE room_id = $1 AND left_at IS NULL LIMIT 16",
    )
    .bind(room_id)
    .fetch_all(&db.pool)
    .await?;
    Ok(members)
}

/// One message of a room's history.
#[derive(Debug, Serialize, PartialEq)]
pub struct Message {
    /// 1-based sequence number within the room.
    pub seq: i64,
    /// The message id.
    pub message_id: String,
    /// The author.
    pub author_id: String,
    /// The text (`None` once the author was erased).
    pub body: Option<String>,
    /// When it was posted.
    pub posted_at: DateTime<Utc>,
}

/// The id stored as 16 bytes in column `i`, as text.
fn id_text(row: &sqlx::any::AnyRow, i: usize) -> Result<String, ProjectionError> {
    let bytes: Vec<u8> = row.try_get(i)?;
    uuid::Uuid::from_slice(&bytes)
        .map(|id| id.to_string())
        .map_err(|e| super::db::undecodable(i, e))
}

/// A page of a room's messages, newest first, older than the cursor `before`.
pub async fn messages(
    db: &ReadDb,
    room_id: &str,
    before: Option<&str>,
    limit: i64,
) -> Result<Page<Message>, ProjectionError> {
    let before: i64 = match before {
        Some(c) => c
            .parse()
            .ok()
            .filter(|s: &i64| *s > 0)
            .ok_or_else(|| ProjectionError::InvalidCursor(c.chars().take(40).collect()))?,
        None => i64::MAX,
    };
    let limit = limit.clamp(1, MAX_PAGE);
    // The message table keeps ids as 16 bytes; what is not a UUID names no room.
    let Ok(room) = uuid::Uuid::parse_str(room_id) else {
        return Ok(Page {
            items: Vec::new(),
            next_cursor: None,
        });
    };
    let rows = sqlx::query(
        "SELECT seq, message_id, author_id, body, posted_at FROM rm_messages \
         WHERE room_id = $1 AND seq < $2 ORDER BY seq DESC LIMIT $3",
    )
    .bind(room.as_bytes().as_slice())
    .bind(before)
    .bind(limit + 1)
    .fetch_all(&db.pool)
    .await?;
    let mut items = rows
        .into_iter()
        .map(|r| {
            Ok(Message {
                seq: r.try_get(0)?,
                message_id: id_text(&r, 1)?,
                author_id: id_text(&r, 2)?,
                body: r.try_get(3)?,
                posted_at: time(r.try_get(4)?),
            })
        })
        .collect::<Result<Vec<_>, ProjectionError>>()?;
    let keys = page_keys(db, items.iter().filter_map(|m| m.body.as_deref())).await?;
    for m in &mut items {
        m.body = keys.open(m.body.as_deref())?;
    }
    let next_cursor = if items.len() as i64 > limit {
        items.truncate(usize::try_from(limit).unwrap_or(0));
        items.last().map(|m| m.seq.to_string())
    } else {
        None
    };
    Ok(Page { items, next_cursor })
}

/// One call in someone's history.
#[derive(Debug, Serialize, PartialEq)]
pub struct Call {
    /// The call.
    pub call_id: String,
    /// The room it belongs to.
    pub room_id: String,
    /// Who called.
    pub requested_by: String,
    /// Who was called.
    pub invitee: String,
    /// requested, accepted, declined, in_progress or ended.
    pub status: String,
    /// When it was requested.
    pub requested_at: DateTime<Utc>,
    /// When the first participant joined.
    pub started_at: Option<DateTime<Utc>>,
    /// Length in seconds, once ended.
    pub duration_secs: Option<i64>,
    /// Why it ended (`hangup`, `no_answer`, ...), once ended.
    pub end_reason: Option<String>,
    /// When it ended.
    pub ended_at: Option<DateTime<Utc>>,
    /// Who joined.
    pub participants: Vec<String>,
}

/// The calls `user_id` made or received, newest first.
pub async fn calls(db: &ReadDb, user_id: &str) -> Result<Vec<Call>, ProjectionError> {
    calls_where(
        db,
        "SELECT call_id, room_id, requested_by, invitee, status, requested_at, started_at, duration_secs, end_reason, ended_at \
         FROM rm_calls WHERE requested_by = $1 OR invitee = $1 ORDER BY requested_at DESC LIMIT 200",
        user_id,
    )
    .await
}

/// The calls of room `room_id`, newest first (the room's call entries).
pub async fn room_calls(db: &ReadDb, room_id: &str) -> Result<Vec<Call>, ProjectionError> {
    calls_where(
        db,
        "SELECT call_id, room_id, requested_by, invitee, status, requested_at, started_at, duration_secs, end_reason, ended_at \
         FROM rm_calls WHERE room_id = $1 ORDER BY requested_at DESC LIMIT 200",
        room_id,
    )
    .await
}

async fn calls_where(
    db: &ReadDb,
    query: &'static str,
    value: &str,
) -> Result<Vec<Call>, ProjectionError> {
    let rows = sqlx::query(query).bind(value).fetch_all(&db.pool).await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let call_id: String = r.try_get(0)?;
        let participants: Vec<String> = sqlx::query_scalar(
            "SELECT user_id FROM rm_call_participants WHERE call_id = $1 ORDER BY first_joined_at",
        )
        .bind(&call_id)
        .fetch_all(&db.pool)
        .await?;
        out.push(Call {
            call_id,
            room_id: r.try_get(1)?,
            requested_by: r.try_get(2)?,
            invitee: r.try_get(3)?,
            status: r.try_get(4)?,
            requested_at: time(r.try_get(5)?),
            started_at: opt_time(r.try_get(6)?),
            duration_secs: r.try_get(7)?,
            end_reason: r.try_get(8)?,
            ended_at: opt_time(r.try_get(9)?),
            participants,
        });
    }
    Ok(out)
}

/// One line of the audit trail.
#[derive(Debug, Serialize, PartialEq)]
pub struct AuditEntry {
    /// Global log position.
    pub position: i64,
    /// The stream written.
    pub stream: String,
    /// The event's version in it.
    pub version: i64,
    /// The event type.
    pub event_type: String,
    /// Who acted (absent for system actions).
    pub actor_id: Option<String>,
    /// The request that caused it.
    pub correlation_id: Option<String>,
    /// The W3C trace context.
    pub traceparent: Option<String>,
    /// When it was committed.
    pub recorded_at: DateTime<Utc>,
    /// For security events: the method, role or keys involved (never a personal value).
    pub detail: Option<String>,
}

/// Everything a user did or had done to their account, oldest first.
pub async fn audit_of_user(db: &ReadDb, user_id: &str) -> Result<Vec<AuditEntry>, ProjectionError> {
    audit_where(
        db,
        "WHERE actor_id = $1 OR stream = $2",
        user_id,
        &format!("user-{user_id}"),
    )
    .await
}

/// Security events of every account since `from`, oldest first (at most 10,000).
pub async fn audit_security(
    db: &ReadDb,
    from: chrono::DateTime<chrono::Utc>,
) -> Result<Vec<AuditEntry>, ProjectionError> {
    let list = |types: &[&str]| {
        types
            .iter()
            .map(|t| format!("'{t}'"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let users = list(&neulbi_domain::user::SECURITY_EVENTS);
    let journal = list(&neulbi_domain::system::SECURITY_EVENTS);
    let q = format!(
        "SELECT {AUDIT_COLUMNS} FROM rm_audit \
         WHERE ((event_type IN ({users}) AND stream LIKE 'user-%') \
             OR (event_type IN ({journal}) AND stream LIKE 'system-%')) \
           AND recorded_at >= $1 ORDER BY position LIMIT 10000"
    );
    let rows = sqlx::query(sqlx::AssertSqlSafe(q))
        .bind(from.timestamp_micros())
        .fetch_all(&db.pool)
        .await?;
    rows.iter().map(audit_entry).collect()
}

/// The columns `AUDIT_COLUMNS` selects, as an entry.
fn audit_entry(r: &sqlx::any::AnyRow) -> Result<AuditEntry, ProjectionError> {
    Ok(AuditEntry {
        position: r.try_get(0)?,
        stream: r.try_get(1)?,
        version: r.try_get(2)?,
        event_type: r.try_get(3)?,
        actor_id: r.try_get(4)?,
        correlation_id: r.try_get(5)?,
        traceparent: r.try_get(6)?,
        recorded_at: time(r.try_get(7)?),
        detail: r.try_get(8)?,
    })
}

/// What every audit query selects, in [`audit_entry`]'s order.
const AUDIT_COLUMNS: &str = "position, stream, version, event_type, actor_id, correlation_id, traceparent, recorded_at, detail";

/// The events that carry trace `trace_id` (32 lowercase hex digits), in log order.
pub async fn audit_of_trace(
    db: &ReadDb,
    trace_id: &str,
) -> Result<Vec<AuditEntry>, ProjectionError> {
    // A prefix range on the indexed column: `00-{id}-` up to `00-{id}.` ('.' follows '-').
    audit_where(
        db,
        "WHERE traceparent >= $1 AND traceparent < $2",
        &format!("00-{trace_id}-"),
        &format!("00-{trace_id}."),
    )
    .await
}

/// The history of one stream, oldest first.
pub async fn audit_of_stream(
    db: &ReadDb,
    stream: &str,
) -> Result<Vec<AuditEntry>, ProjectionError> {
    audit_where(db, "WHERE stream = $1 OR stream = $2", stream, stream).await
}

async fn audit_where(
    db: &ReadDb,
    filter: &'static str,
    a: &str,
    b: &str,
) -> Result<Vec<AuditEntry>, ProjectionError> {
    let q = format!(
        "SELECT {AUDIT_COLUMNS} FROM rm_audit {filter} \
         ORDER BY position LIMIT 10000"
    );
    let rows = sqlx::query(sqlx::AssertSqlSafe(q))
        .bind(a)
        .bind(b)
        .fetch_all(&db.pool)
        .await?;
    rows.iter().map(audit_entry).collect()
}

/// The blob keys current profile images reference, with how much of the log they reflect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageKeys {
    /// The `images` projector's checkpoint (the next log position it will apply) as of the
    /// same snapshot as `keys`; 0 if it never ran.
    pub position: u64,
    /// Every image and thumbnail key a user's current state references, opened. The keys
    /// of an owner erased in the meantime are left out: they reference nothing any more.
    pub keys: HashSet<String>,
}

/// Every blob key current profile images reference (the image sweeper's question). Fails
/// without data keys rather than reading every key as erased, which would tell the sweeper
/// that nothing is referenced.
pub async fn image_keys(db: &ReadDb) -> Result<ImageKeys, ProjectionError> {
    if db.keys.is_none() {
        return Err(ProjectionError::Keyless);
    }
    // One statement, so one snapshot: the checkpoint moves in the same transaction as the
    // rows, so these rows are exactly the log's state up to `position`, even when a rebuild
    // swaps the table or a version change empties it between two statements.
    let rows = sqlx::query(
        "SELECT c.position, i.image, i.thumbnail FROM projection_checkpoints c \
         LEFT JOIN rm_images i ON 1 = 1 WHERE c.name = $1",
    )
    .bind(super::images::DEF.name)
    .fetch_all(&db.pool)
    .await?;
    let mut position = 0;
    let mut sealed = Vec::with_capacity(rows.len() * 2);
    for r in &rows {
        position = u64::try_from(r.try_get::<i64, _>(0)?).unwrap_or(0);
        for column in [1, 2] {
            sealed.extend(r.try_get::<Option<String>, _>(column)?);
        }
    }
    let keys = page_keys(db, sealed.iter().map(String::as_str)).await?;
    let mut opened = HashSet::with_capacity(sealed.len());
    for token in &sealed {
        opened.extend(keys.open(Some(token))?);
    }
    Ok(ImageKeys {
        position,
        keys: opened,
    })
}
