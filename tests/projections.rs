//! Read models over real backends: the scenario projects into exact counts and pages, an
//! erasure scrubs the read models, a rebuild equals the live tables, and concurrent
//! projectors (two nodes) still apply every event exactly once.

use crate::support::Backend;
use crate::support::scenario::{COUNSELOR_TEXT, SECRETS, Seeded, as_user, seed};
use neulbi::actors::{Registry, RegistryConfig};
use neulbi::projections::db::read_model_url;
use neulbi::projections::queries;
use neulbi::projections::{self, ReadDb, rebuild, runtime};
use neulbi::store::{Metadata, SharedStore};
use neulbi_domain::chat_room::{ChatRoomDecider, RoomCommand};
use neulbi_domain::user::{UserCommand, UserDecider};
use neulbi_domain::{MessageId, Role};
use uuid::Uuid;

struct World {
    b: Backend,
    db: ReadDb,
    users: Registry<UserDecider>,
    rooms: Registry<ChatRoomDecider>,
    s: Seeded,
}

async fn world(b: Backend) -> World {
    let db = ReadDb::connect(&read_model_url(&b.url))
        .await
        .expect("read db")
        .with_keys(b.store.data_keys());
    let users = Registry::new(b.store.clone(), RegistryConfig::default());
    let rooms = Registry::new(b.store.clone(), RegistryConfig::default());
    let s = seed(&users, &rooms).await;
    World {
        b,
        db,
        users,
        rooms,
        s,
    }
}

/// Everything the rooms read model answers for both members, as comparable text.
async fn snapshot(db: &ReadDb, w: &Seeded) -> String {
    let client = queries::my_rooms(db, &w.client.to_string())
        .await
        .expect("client rooms");
    let counselor = queries::my_rooms(db, &w.counselor.to_string())
        .await
        .expect("counselor rooms");
    let history = queries::messages(db, &w.room.to_string(), None, 200)
        .await
        .expect("history");
    format!("{client:?}\n{counselor:?}\n{:?}", history.items)
}

async fn read_models_answer_the_scenario(b: Backend) {
    let w = world(b).await;
    runtime::catch_up(&w.b.store, &w.db)
        .await
        .expect("catch up");
    let client = w.s.client.to_string();
    let rooms = queries::my_rooms(&w.db, &client).await.expect("my rooms");
    assert_eq!(rooms.len(), 1);
    assert_eq!(rooms[0].message_count, 4);
    assert_eq!(rooms[0].unread_count, 1, "the counselor's one reply");
    assert_eq!(
        rooms[0].last_message_preview.as_deref(),
        Some(COUNSELOR_TEXT)
    );
    let counselor_rooms = queries::my_rooms(&w.db, &w.s.counselor.to_string())
        .await
        .expect("rooms");
    assert_eq!(counselor_rooms[0].unread_count, 3);

    // Paging: newest first, stable cursors.
    let room = w.s.room.to_string();
    let first = queries::messages(&w.db, &room, None, 3)
        .await
        .expect("page 1");
    assert_eq!(
        first.items.iter().map(|m| m.seq).collect::<Vec<_>>(),
        vec![4, 3, 2]
    );
    let cursor = first.next_cursor.expect("more pages");
    let second = queries::messages(&w.db, &room, Some(&cursor), 3)
        .await
        .expect("page 2");
    assert_eq!(
        second.items.iter().map(|m| m.seq).collect::<Vec<_>>(),
        vec![1]
    );
    assert_eq!(second.items[0].body.as_deref(), Some(SECRETS[0]));
    assert!(second.next_cursor.is_none());
    assert!(matches!(
        queries::messages(&w.db, &room, Some("garbage"), 3).await,
        Err(projections::ProjectionError::InvalidCursor(_))
    ));

    // The counselor reads up to the last message: unread drops to zero.
    let last = queries::messages(&w.db, &room, None, 1)
        .await
        .expect("last")
        .items[0]
        .message_id
        .clone();
    let read = RoomCommand::MarkRead {
        up_to: MessageId(Uuid::parse_str(&last).expect("uuid")),
    };
    w.rooms
        .execute(
            w.s.room,
            read,
            as_user(w.s.counselor, Role::Counselor),
            Metadata::default(),
        )
        .await
        .expect("read");
    runtime::catch_up(&w.b.store, &w.db)
        .await
        .expect("catch up");
    let counselor_rooms = queries::my_rooms(&w.db, &w.s.counselor.to_string())
        .await
        .expect("rooms");
    assert_eq!(counselor_rooms[0].unread_count, 0);

    // Directory and audit.
    let publish = UserCommand::PublishCounselorProfile {
        headline: "청소년 상담".into(),
        bio: "10 years of practice".into(),
    };
    w.users
        .execute(
            w.s.counselor.0,
            publish,
            as_user(w.s.counselor, Role::Counselor),
            Metadata::default(),
        )
        .await
        .expect("publish");
    runtime::catch_up(&w.b.store, &w.db)
        .await
        .expect("catch up");
    let directory = queries::counselors(&w.db, 10, None)
        .await
        .expect("directory");
    assert_eq!(directory.len(), 1);
    assert_eq!(directory[0].headline, "청소년 상담");
    assert_eq!(directory[0].nickname.as_deref(), Some("상담사"));
    assert_eq!(directory[0].bio, "10 years of practice");
    // A photo's thumbnail key is listed with the counselor (sealed in the table, opened here),
    // and gone once the photo is removed.
    let photo = UserCommand::ChangeProfileImage {
        image_key: "images/photo-full.webp".into(),
        thumbnail_key: "images/photo-thumb.webp".into(),
    };
    w.users
        .execute(
            w.s.counselor.0,
            photo,
            as_user(w.s.counselor, Role::Counselor),
            Metadata::default(),
        )
        .await
        .expect("photo");
    runtime::catch_up(&w.b.store, &w.db)
        .await
        .expect("catch up");
    let listed = queries::counselors(&w.db, 10, None)
        .await
        .expect("directory");
    assert_eq!(
        listed[0].thumbnail_key.as_deref(),
        Some("images/photo-thumb.webp")
    );
    // The sweeper's read model holds both keys of the photo (sealed), as of the log's head.
    let referenced = queries::image_keys(&w.db).await.expect("image keys");
    let head =
        w.b.store
            .head_position()
            .await
            .expect("head")
            .map(|h| h + 1);
    assert_eq!(Some(referenced.position), head);
    let mut keys: Vec<String> = referenced.keys.into_iter().collect();
    keys.sort();
    assert_eq!(keys, ["images/photo-full.webp", "images/photo-thumb.webp"]);
    // A search opens the sealed fields and matches every word, in any case.
    for (search, hits) in [
        ("청소년", 1),
        ("YEARS 상담사", 1),
        ("years adults", 0),
        ("  ", 1),
    ] {
        let found = queries::counselors(&w.db, 10, Some(search))
            .await
            .expect("search");
        assert_eq!(found.len(), hits, "search {search:?}");
    }

    // The tables themselves hold only sealed tokens: no plaintext, and without the keys the
    // same rows read as absent.
    let stored: Vec<String> = sqlx::query_scalar(
        "SELECT coalesce(nickname, '') || coalesce(headline, '') || coalesce(bio, '') FROM rm_counselors \
         UNION ALL SELECT coalesce(nickname, '') || coalesce(email, '') || coalesce(thumbnail, '') FROM rm_users \
         UNION ALL SELECT coalesce(body, '') FROM rm_messages \
         UNION ALL SELECT coalesce(last_message_preview, '') FROM rm_rooms \
         UNION ALL SELECT image || thumbnail FROM rm_images",
    )
    .fetch_all(&w.db.pool)
    .await
    .expect("raw read models");
    let stored = stored.join("\n");
    assert!(stored.contains("\"sealed\""), "tokens are stored");
    for plain in [
        "상담사",
        "청소년",
        "10 years",
        "photo-thumb",
        "photo-full",
        SECRETS[0],
        SECRETS[1],
        COUNSELOR_TEXT,
    ] {
        assert!(!stored.contains(plain), "{plain:?} is stored in the clear");
    }
    let keyless = w.db.clone().with_keys(None);
    let blind = queries::counselors(&keyless, 10, None)
        .await
        .expect("directory");
    assert_eq!(
        (blind[0].nickname.as_deref(), blind[0].headline.as_str()),
        (None, "")
    );
    let audit = queries::audit_of_user(&w.db, &client).await.expect("audit");
    assert!(
        audit
            .iter()
            .any(|a| a.event_type == "MessagePosted"
                && a.actor_id.as_deref() == Some(client.as_str()))
    );
    assert!(audit.iter().any(|a| a.event_type == "Registered"));

    let status = runtime::status(&w.b.store, &w.db).await.expect("status");
    assert!(status.iter().all(|s| s.lag == 0), "{status:?}");
}

async fn rebuild_equals_live_and_swaps_under_a_running_projector(b: Backend) {
    let w = world(b).await;
    runtime::catch_up(&w.b.store, &w.db)
        .await
        .expect("catch up");
    let before = snapshot(&w.db, &w.s).await;
    let def = projections::by_name("rooms").expect("rooms");
    let mut calls = 0;
    let report = rebuild::rebuild(&w.b.store, &w.db, def, |_, _| calls += 1)
        .await
        .expect("rebuild");
    assert!(report.events > 0 && calls > 0);
    assert_eq!(
        snapshot(&w.db, &w.s).await,
        before,
        "a rebuild reproduces the live tables"
    );
    // The indexes a rebuild left for later are there, named for the rebuild's generation.
    // A start after the swap finds them and builds no second copy under the plain names.
    runtime::ensure_schema(&w.db, def, &projections::Names::new("", w.db.dialect))
        .await
        .expect("ensure schema");
    let indexes: Vec<String> = match w.db.dialect {
        projections::db::Dialect::Sqlite => {
            sqlx::query_scalar(
                "SELECT name FROM sqlite_master WHERE type = 'index' AND name LIKE 'rm_%' \
                 AND tbl_name IN ('rm_rooms', 'rm_room_members', 'rm_messages')",
            )
            .fetch_all(&w.db.pool)
            .await
        }
        projections::db::Dialect::Postgres => {
            // (Primary keys' indexes are the constraints', named by PostgreSQL.)
            sqlx::query_scalar(
                "SELECT indexname::text FROM pg_indexes WHERE indexname NOT LIKE '%pkey%' \
                 AND tablename IN ('rm_rooms', 'rm_room_members', 'rm_messages')",
            )
            .fetch_all(&w.db.pool)
            .await
        }
    }
    .expect("indexes");
    let schema = def.schema().expect("schema");
    for idx in &schema.indexes {
        let named: Vec<_> = indexes.iter().filter(|name| idx.is_named(name)).collect();
        assert_eq!(
            named.len(),
            1,
            "{} once after the swap: {indexes:?}",
            idx.name
        );
        assert!(
            named[0].contains(projections::GENERATION),
            "{} is the rebuild's: {indexes:?}",
            idx.name
        );
    }
    assert_eq!(
        indexes.len(),
        schema.indexes.len(),
        "no index left of the last generation or the shadow: {indexes:?}"
    );

    // Now rebuild while more messages arrive and the live projector keeps running.
    let store: SharedStore = w.b.store.clone();
    let db = w.db.clone();
    let live = actix_rt::spawn(async move {
        for _ in 0..20 {
            runtime::catch_up(&store, &db).await.expect("live catch up");
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    });
    for i in 0..30 {
        let post = RoomCommand::PostMessage {
            message_id: MessageId(Uuid::now_v7()),
            body: format!("during rebuild {i}"),
            client_message_id: None,
        };
        w.rooms
            .execute(
                w.s.room,
                post,
                as_user(w.s.client, Role::Client),
                Metadata::default(),
            )
            .await
            .expect("post");
        if i == 10 {
            rebuild::rebuild(&w.b.store, &w.db, def, |_, _| {})
                .await
                .expect("rebuild under load");
        }
    }
    live.await.expect("live projector");
    runtime::catch_up(&w.b.store, &w.db)
        .await
        .expect("final catch up");
    let after = snapshot(&w.db, &w.s).await;
    rebuild::rebuild(&w.b.store, &w.db, def, |_, _| {})
        .await
        .expect("fresh rebuild");
    assert_eq!(
        snapshot(&w.db, &w.s).await,
        after,
        "live tables equal a fresh rebuild"
    );
    let rooms = queries::my_rooms(&w.db, &w.s.counselor.to_string())
        .await
        .expect("rooms");
    assert_eq!(rooms[0].message_count, 34);
    assert_eq!(rooms[0].unread_count, 33, "exact unread count after swaps");
}

async fn two_projecting_nodes_apply_each_event_once(b: Backend) {
    let w = world(b).await;
    for i in 0..40 {
        let post = RoomCommand::PostMessage {
            message_id: MessageId(Uuid::now_v7()),
            body: format!("m{i}"),
            client_message_id: None,
        };
        w.rooms
            .execute(
                w.s.room,
                post,
                as_user(w.s.counselor, Role::Counselor),
                Metadata::default(),
            )
            .await
            .expect("post");
    }
    let other = ReadDb::connect(&read_model_url(&w.b.url))
        .await
        .expect("second node's pool")
        .with_keys(w.b.store.data_keys());
    let (a, b2) = futures::join!(
        runtime::catch_up(&w.b.store, &w.db),
        runtime::catch_up(&w.b.store, &other)
    );
    a.expect("node a");
    b2.expect("node b");
    let rooms = queries::my_rooms(&w.db, &w.s.client.to_string())
        .await
        .expect("rooms");
    assert_eq!(rooms[0].message_count, 44);
    assert_eq!(
        rooms[0].unread_count, 41,
        "1 + 40 counselor messages, each counted once"
    );
}

macro_rules! both {
    ($($case:ident),*) => {
        mod sqlite { $( #[actix_rt::test] async fn $case() { super::$case(crate::support::Backend::sqlite().await).await; } )* }
        mod postgres { $( #[actix_rt::test] async fn $case() { super::$case(crate::support::Backend::postgres().await).await; } )* }
    };
}

both!(
    read_models_answer_the_scenario,
    rebuild_equals_live_and_swaps_under_a_running_projector,
    two_projecting_nodes_apply_each_event_once
);

/// The `rooms` tables of `db`, sorted, as comparable text.
async fn rooms_dump(db: &ReadDb) -> (Vec<String>, Vec<String>, Vec<String>) {
    let mut rooms: Vec<String> = sqlx::query_scalar(
        "SELECT room_id || ':' || message_count || ':' || coalesce(last_message_id, '') || ':' \
         || coalesce(closed_at, '') FROM rm_rooms",
    )
    .fetch_all(&db.pool)
    .await
    .expect("rooms");
    let mut members: Vec<String> = sqlx::query_scalar(
        "SELECT room_id || ':' || user_id || ':' || unread_count || ':' || last_read_seq || ':' \
         || coalesce(left_at, '') FROM rm_room_members",
    )
    .fetch_all(&db.pool)
    .await
    .expect("members");
    let mut messages: Vec<String> = sqlx::query_scalar(
        "SELECT lower(hex(room_id)) || ':' || seq || ':' || lower(hex(message_id)) || ':' || coalesce(body, '') \
         FROM rm_messages",
    )
    .fetch_all(&db.pool)
    .await
    .expect("messages");
    rooms.sort();
    members.sort();
    messages.sort();
    (rooms, members, messages)
}

/// Posts `n` messages (`"{text} {i}"`) to `room` as its counselor; returns their ids.
async fn post_as_counselor(
    rooms: &Registry<ChatRoomDecider>,
    room: Uuid,
    counselor: neulbi_domain::UserId,
    text: &str,
    n: usize,
) -> Vec<MessageId> {
    let mut posted = Vec::with_capacity(n);
    for i in 0..n {
        let message_id = MessageId(Uuid::now_v7());
        let post = RoomCommand::PostMessage {
            message_id,
            body: format!("{text} {i}"),
            client_message_id: None,
        };
        rooms
            .execute(
                room,
                post,
                as_user(counselor, Role::Counselor),
                Metadata::default(),
            )
            .await
            .expect("post");
        posted.push(message_id);
    }
    posted
}

/// Live batches of any size, and rebuilds that keep any number of rooms in memory between
/// their batches, give the same read model — also around what the fold hands to statements
/// of their own (a read marker older than its tail, an erasure) and what it folds (a leave,
/// a close).
#[actix_rt::test]
async fn batch_boundaries_do_not_change_the_read_models() {
    use neulbi::tools::seed::{SeedSpec, seed};
    use neulbi_domain::UserId;
    let b = Backend::sqlite().await;
    let spec = SeedSpec {
        counselors: 2,
        clients: 6,
        rooms: 7,
        messages: 400,
        calls: 3,
        seed: 3,
    };
    seed(&b.store, spec, |_, _| {}).await.expect("seed");
    // A client leaves one room and the counselor goes on writing there; another room closes.
    let opened: Vec<(Uuid, serde_json::Value)> = b
        .store
        .read_all(0, 10_000)
        .await
        .expect("log")
        .into_iter()
        .filter(|e| e.event_type == "Opened")
        .map(|e| (e.stream.id(), e.data))
        .collect();
    let member = |data: &serde_json::Value, role: &str| {
        UserId(
            data[role]
                .as_str()
                .and_then(|s| s.parse().ok())
                .expect("member id"),
        )
    };
    let rooms: Registry<ChatRoomDecider> =
        Registry::new(b.store.clone(), RegistryConfig::default());
    let (left_room, data) = &opened[0];
    let (client, counselor) = (member(data, "client"), member(data, "counselor"));
    rooms
        .execute(
            *left_room,
            RoomCommand::Leave,
            as_user(client, Role::Client),
            Metadata::default(),
        )
        .await
        .expect("leave");
    post_as_counselor(&rooms, *left_room, counselor, "after the leave", 5).await;
    let (closed_room, data) = &opened[1];
    rooms
        .execute(
            *closed_room,
            RoomCommand::Close,
            as_user(member(data, "counselor"), Role::Counselor),
            Metadata::default(),
        )
        .await
        .expect("close");
    // A read marker for a message further back than the fold's tail of each room.
    let (read_room, data) = &opened[2];
    let (client, counselor) = (member(data, "client"), member(data, "counselor"));
    let posted = post_as_counselor(&rooms, *read_room, counselor, "unread", 20).await;
    let read = rooms
        .execute(
            *read_room,
            RoomCommand::MarkRead { up_to: posted[1] },
            as_user(client, Role::Client),
            Metadata::default(),
        )
        .await
        .expect("read an old message");
    assert_eq!(read.events.len(), 1, "the read marker is in the log");
    // A member of another room erased: bodies and previews of theirs blanked.
    let users: Registry<UserDecider> = Registry::new(b.store.clone(), RegistryConfig::default());
    let erased = member(&opened[3].1, "client");
    users
        .execute(
            erased.as_uuid(),
            UserCommand::Erase,
            as_user(erased, Role::Client),
            Metadata::default(),
        )
        .await
        .expect("erase");
    seed(&b.store, SeedSpec { seed: 4, ..spec }, |_, _| {})
        .await
        .expect("more after the leave");

    let mut dumps = Vec::new();
    let def = projections::by_name("rooms").expect("rooms");
    for (i, batch) in [1usize, 7, 5000].into_iter().enumerate() {
        let dir = tempfile::tempdir().expect("dir");
        let db = ReadDb::connect(&format!(
            "sqlite://{}/r{i}.db?mode=rwc",
            dir.path().display()
        ))
        .await
        .expect("db");
        project_all(&b.store, &db, def, "rooms", batch).await;
        dumps.push((format!("live batches of {batch}"), rooms_dump(&db).await));
    }
    for (i, (batch, keep, readers)) in [
        (7usize, 1usize, 2usize),
        (7, 3, 3),
        (1, 50_000, 2),
        (5000, 50_000, 2),
        (7, 50_000, 1),
    ]
    .into_iter()
    .enumerate()
    {
        let dir = tempfile::tempdir().expect("dir");
        let db = ReadDb::connect(&format!(
            "sqlite://{}/b{i}.db?mode=rwc",
            dir.path().display()
        ))
        .await
        .expect("db");
        let options = rebuild::RebuildOptions {
            batch,
            keep,
            readers,
        };
        let report = rebuild::rebuild_with(&b.store, &db, def, options, |_, _| {})
            .await
            .expect("rebuild");
        assert!(report.events > 800, "{report:?}");
        dumps.push((
            format!("rebuild in batches of {batch} keeping {keep} rooms, {readers} readers"),
            rooms_dump(&db).await,
        ));
    }
    let (first, expected) = &dumps[0];
    assert_eq!(expected.2.len(), 825);
    assert!(
        expected.1.iter().any(|m| !m.ends_with(':')),
        "the leave is in the read model: {:?}",
        expected.1
    );
    // The old read marker: 18 of the 20 messages after it are unread.
    let reader = format!("{read_room}:{client}:18:");
    assert!(
        expected.1.iter().any(|m| m.starts_with(&reader)),
        "{reader} in {:?}",
        expected.1
    );
    let blanked = expected.2.iter().filter(|m| m.ends_with(':')).count();
    assert!(blanked > 0, "the erased member's bodies are blanked");
    // Only theirs: the counselor of the erased member's room keeps their words.
    let erased_room = format!("{}:", opened[3].0.simple());
    let kept = expected
        .2
        .iter()
        .filter(|m| m.starts_with(&erased_room) && !m.ends_with(':'))
        .count();
    assert!(kept > 0, "the other member's bodies stay: {:?}", expected.2);
    for (how, dump) in &dumps[1..] {
        assert_eq!(dump, expected, "{how} differs from {first}");
    }
}

/// Projects `key` of `def` into `db` until it is caught up, `batch` events at a time.
async fn project_all(
    store: &SharedStore,
    db: &ReadDb,
    def: &'static projections::ProjectorDef,
    key: &str,
    batch: usize,
) {
    let names = projections::Names::new("", db.dialect);
    runtime::ensure_schema(db, def, &names)
        .await
        .expect("schema");
    while runtime::step(store, db, def, &names, key, batch)
        .await
        .expect("step")
        != runtime::Batch::CaughtUp
    {}
}

/// A live batch touching more rooms than one read of the tables holds (a batch's rooms are
/// read a few dozen per statement) folds them as batches of one event do: rooms first seen
/// in the batch, and rooms the tables already hold.
#[actix_rt::test]
async fn a_batch_of_many_rooms_folds_as_single_events_do() {
    use neulbi::tools::seed::{SeedSpec, seed};
    use neulbi_domain::UserId;
    let b = Backend::sqlite().await;
    let spec = SeedSpec {
        counselors: 3,
        clients: 30,
        rooms: 75,
        messages: 300,
        calls: 0,
        seed: 5,
    };
    seed(&b.store, spec, |_, _| {}).await.expect("seed");
    let def = projections::by_name("rooms").expect("rooms");
    let dir = tempfile::tempdir().expect("dir");
    let connect = |name: &str| {
        let url = format!("sqlite://{}/{name}.db?mode=rwc", dir.path().display());
        async move { ReadDb::connect(&url).await.expect("db") }
    };
    let (single, batched) = (connect("single").await, connect("batched").await);
    project_all(&b.store, &single, def, "rooms", 1).await;
    project_all(&b.store, &batched, def, "rooms", 5000).await;
    // One more message in every room: the next batch finds all 75 in the tables.
    let rooms: Registry<ChatRoomDecider> =
        Registry::new(b.store.clone(), RegistryConfig::default());
    let opened: Vec<(Uuid, UserId)> = b
        .store
        .read_all(0, 10_000)
        .await
        .expect("log")
        .into_iter()
        .filter(|e| e.event_type == "Opened")
        .filter_map(|e| {
            let counselor = e.data["counselor"].as_str()?.parse().ok()?;
            Some((e.stream.id(), UserId(counselor)))
        })
        .collect();
    assert_eq!(opened.len(), 75);
    for (room, counselor) in &opened {
        post_as_counselor(&rooms, *room, *counselor, "again", 1).await;
    }
    project_all(&b.store, &single, def, "rooms", 1).await;
    project_all(&b.store, &batched, def, "rooms", 5000).await;
    let expected = rooms_dump(&single).await;
    assert_eq!(expected.0.len(), 75, "{:?}", expected.0);
    assert_eq!(expected.2.len(), 375, "every message once");
    assert_eq!(rooms_dump(&batched).await, expected);
}

/// A projector loop that knows its checkpoint skips reading it, and one that is wrong about
/// it (another node or a swap moved it) loses the race and reads it again.
#[actix_rt::test]
async fn a_step_from_a_stale_checkpoint_is_raced_and_the_next_reads_it() {
    let w = world(Backend::sqlite().await).await;
    let def = projections::by_name("rooms").expect("rooms");
    let names = projections::Names::new("", w.db.dialect);
    let shared = runtime::SharedBatch::default();
    runtime::ensure_schema(&w.db, def, &names)
        .await
        .expect("schema");
    let mut at = runtime::Step::from_database(2);
    let first = runtime::step_shared(&shared, &w.b.store, &w.db, def, &names, "rooms", &mut at)
        .await
        .expect("step");
    assert_eq!(first, runtime::Batch::Applied(2));
    assert_eq!(
        at.from,
        Some(2),
        "the step knows where it left the checkpoint"
    );
    // Wrong about it: nothing is applied, and the step forgets what it thought.
    let mut stale = runtime::Step {
        limit: 2,
        from: Some(1),
    };
    let raced = runtime::step_shared(&shared, &w.b.store, &w.db, def, &names, "rooms", &mut stale)
        .await
        .expect("step");
    assert_eq!(raced, runtime::Batch::Raced);
    assert_eq!(stale.from, None);
    let (position, _) = runtime::checkpoint(&w.db, "rooms")
        .await
        .expect("checkpoint")
        .expect("a row");
    assert_eq!(position, 2, "the raced step moved nothing");
    // Read again from the database, it goes on where the checkpoint is.
    let next = runtime::step_shared(&shared, &w.b.store, &w.db, def, &names, "rooms", &mut stale)
        .await
        .expect("step");
    assert_eq!(next, runtime::Batch::Applied(2));
    assert_eq!(stale.from, Some(4));
}

/// A log written before message bodies were personal (schema v1, plain text in the log)
/// still projects every body — sealed with its author's key on the way in, never copied in
/// the clear.
#[actix_rt::test]
async fn a_v1_log_projects_its_plain_bodies_sealed() {
    let b = Backend::sqlite().await;
    neulbi::tools::transfer::import(
        &b.store,
        std::io::Cursor::new(include_str!("fixtures/v1-room-log.ndjson")),
        |_| {},
    )
    .await
    .expect("import");
    let db = ReadDb::connect(&read_model_url(&b.url))
        .await
        .expect("read db")
        .with_keys(b.store.data_keys());
    runtime::catch_up(&b.store, &db).await.expect("project");
    let page = queries::messages(&db, "0190c3e4-0000-7000-8000-00000000aa01", None, 10)
        .await
        .expect("history");
    assert!(
        page.items
            .iter()
            .any(|m| m.body.as_deref() == Some("v1 plain body from 2025")),
        "{:?}",
        page.items
    );
    let stored: Vec<Option<String>> = sqlx::query_scalar("SELECT body FROM rm_messages")
        .fetch_all(&db.pool)
        .await
        .expect("raw bodies");
    assert!(!stored.is_empty());
    assert!(
        stored
            .iter()
            .flatten()
            .all(|body| body.contains("\"sealed\"") && !body.contains("plain body")),
        "{stored:?}"
    );
}

/// Upgrading from read models that held plaintext (`users` and `rooms` version 1): the
/// first start drops and rebuilds them, and on SQLite no byte of the old plaintext stays in
/// the read-model file or its WAL.
#[actix_rt::test]
async fn upgrading_from_plaintext_read_models_leaves_none_behind() {
    let w = world(Backend::sqlite().await).await;
    runtime::catch_up(&w.b.store, &w.db)
        .await
        .expect("catch up");
    // What version 1 stored: plaintext columns.
    const OLD: [&str; 3] = [
        "old-plaintext-nickname-v1",
        "old.plaintext.v1@example.kr",
        "old-plaintext-body-v1",
    ];
    sqlx::query("UPDATE rm_users SET nickname = $1, email = $2")
        .bind(OLD[0])
        .bind(OLD[1])
        .execute(&w.db.pool)
        .await
        .expect("v1 users");
    sqlx::query("UPDATE rm_messages SET body = $1")
        .bind(OLD[2])
        .execute(&w.db.pool)
        .await
        .expect("v1 messages");
    sqlx::query("UPDATE rm_rooms SET last_message_preview = $1")
        .bind(OLD[2])
        .execute(&w.db.pool)
        .await
        .expect("v1 rooms");
    sqlx::query("UPDATE projection_checkpoints SET version = 1 WHERE name IN ('users', 'rooms')")
        .execute(&w.db.pool)
        .await
        .expect("v1 checkpoints");

    runtime::prepare(&w.db).await.expect("upgrade");
    runtime::catch_up(&w.b.store, &w.db).await.expect("rebuild");

    let url = read_model_url(&w.b.url);
    let path = url
        .trim_start_matches("sqlite://")
        .split('?')
        .next()
        .expect("path")
        .to_owned();
    let mut bytes = Vec::new();
    for suffix in ["", "-wal", "-shm"] {
        if let Ok(b) = std::fs::read(format!("{path}{suffix}")) {
            bytes.extend(b);
        }
    }
    let has = |needle: &str| bytes.windows(needle.len()).any(|w| w == needle.as_bytes());
    assert!(has(&w.s.room.to_string()), "the scan reads the read models");
    for old in OLD {
        assert!(!has(old), "{old:?} survived the upgrade");
    }
    let rooms = queries::my_rooms(&w.db, &w.s.counselor.to_string())
        .await
        .expect("rooms");
    assert_eq!(
        rooms[0].last_message_preview.as_deref(),
        Some(COUNSELOR_TEXT),
        "rebuilt and opened"
    );
}
