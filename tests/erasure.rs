//! End-to-end erasure on both backends: seed a person with a profile, logins and messages;
//! erase them; then scan the database for their personal data (none may remain), replay the
//! streams (they still fold), and check that the other participant's data is intact.

mod support;

use chrono::Utc;
use neulbi::actors::{ActorError, Registry, RegistryConfig, codec};
use neulbi::privacy::erasure::erase_user;
use neulbi::projections::db::read_model_url;
use neulbi::projections::{ReadDb, runtime};
use neulbi::store::{Direction, Metadata, Storage};
use neulbi_domain::chat_room::{ChatRoomDecider, RoomEvent};
use neulbi_domain::user::{UserCommand, UserDecider};
use neulbi_domain::{Actor, Context, Decider, DomainError, Role, StreamKind, StreamName};
use support::Backend;
use support::scenario::{COUNSELOR_TEXT, EMAIL, IP, NICKNAME, SECRETS, as_user, seed};

/// Every byte of the database as text: files for SQLite, table contents for PostgreSQL.
async fn database_text(b: &Backend) -> String {
    use sqlx::Connection;
    if b.name == "sqlite" {
        let path = b.url.trim_start_matches("sqlite://");
        let mut text = String::new();
        let read = path.strip_suffix(".db").unwrap_or(path).to_owned() + "-read.db";
        for file in [path, &read] {
            for suffix in ["", "-wal", "-shm"] {
                if let Ok(bytes) = std::fs::read(format!("{file}{suffix}")) {
                    text.push_str(&String::from_utf8_lossy(&bytes));
                }
            }
        }
        text
    } else {
        let mut c = sqlx::PgConnection::connect(&b.url).await.expect("connect");
        let events: Vec<String> =
            sqlx::query_scalar("SELECT data || metadata || stream || event_type FROM events")
                .fetch_all(&mut c)
                .await
                .expect("events");
        let keys: Vec<String> = sqlx::query_scalar(
            "SELECT owner::text || coalesce(encode(key, 'escape'), '') FROM neulbi_keys.data_keys",
        )
        .fetch_all(&mut c)
        .await
        .expect("keys");
        let read_models: Vec<String> = sqlx::query_scalar(
            "SELECT coalesce(string_agg(coalesce(body, ''), ' '), '') FROM rm_messages \
             UNION ALL SELECT coalesce(string_agg(coalesce(last_message_preview, ''), ' '), '') FROM rm_rooms \
             UNION ALL SELECT coalesce(string_agg(coalesce(nickname, '') || coalesce(email, ''), ' '), '') FROM rm_users",
        )
        .fetch_all(&mut c)
        .await
        .expect("read models");
        events.join("\n") + &keys.join("\n") + &read_models.join("\n")
    }
}

async fn erasure_leaves_no_personal_data(b: Backend) {
    let Storage {
        events,
        keys,
        database,
        ..
    } = b.storage(false).await;
    let users = Registry::<UserDecider>::new(events.clone(), RegistryConfig::default());
    let rooms = Registry::<ChatRoomDecider>::new(events.clone(), RegistryConfig::default());
    let s = seed(&users, &rooms).await;
    // The read models hold plaintext copies before the erasure.
    let read = ReadDb::connect(&read_model_url(&b.url))
        .await
        .expect("read models");
    runtime::catch_up(&events, &read).await.expect("project");
    assert!(
        database_text(&b).await.contains(SECRETS[1]),
        "the scan can find plaintext"
    );

    // Bad input first: someone else cannot erase the client, and nothing is appended.
    let head = events.head_position().await.expect("head");
    let forged = erase_user(
        &users,
        &keys,
        &database,
        s.client,
        as_user(s.counselor, Role::Counselor),
        Metadata::default(),
    )
    .await;
    assert!(
        matches!(forged, Err(ActorError::Domain(DomainError::Forbidden(_)))),
        "{forged:?}"
    );
    assert_eq!(events.head_position().await.expect("head"), head);

    let report = erase_user(
        &users,
        &keys,
        &database,
        s.client,
        as_user(s.client, Role::Client),
        Metadata::default(),
    )
    .await
    .expect("erase");
    assert!(report.newly_erased);
    let again = erase_user(
        &users,
        &keys,
        &database,
        s.client,
        Context::new(
            Actor {
                user_id: None,
                role: Role::Operator,
            },
            Utc::now(),
        ),
        Metadata::default(),
    )
    .await
    .expect("erasing twice is fine");
    assert!(!again.newly_erased);

    runtime::catch_up(&events, &read)
        .await
        .expect("project the erasure");
    let text = database_text(&b).await;
    for needle in [EMAIL, NICKNAME, IP, SECRETS[0], SECRETS[1], SECRETS[2]] {
        assert!(
            !text.contains(needle),
            "{needle:?} is still in the {} database",
            b.name
        );
    }

    // The log still replays: the user folds to an erased state, the room keeps its counts,
    // and the counselor's message is readable.
    let user_stream = StreamName::new(StreamKind::User, s.client.0);
    let recorded = events
        .read_stream(&user_stream, 0, Direction::Forward, 100)
        .await
        .expect("user stream");
    let decoded: Vec<_> = recorded
        .iter()
        .map(|r| codec::decode::<<UserDecider as Decider>::Event>(r).expect("decode"))
        .collect();
    let state = UserDecider::fold(&decoded);
    assert!(state.is_erased());
    assert_eq!(state.email(), None);
    assert_eq!(state.nickname(), None);
    assert_eq!(state.login_count(), 1);

    let room_stream = StreamName::new(StreamKind::Room, s.room);
    let recorded = events
        .read_stream(&room_stream, 0, Direction::Forward, 100)
        .await
        .expect("room stream");
    let decoded: Vec<RoomEvent> = recorded
        .iter()
        .map(|r| codec::decode(r).expect("decode"))
        .collect();
    let room = ChatRoomDecider::fold(&decoded);
    assert_eq!(room.message_count(), 4);
    let bodies: Vec<Option<&String>> = decoded
        .iter()
        .filter_map(|e| match e {
            RoomEvent::MessagePosted { body, .. } => Some(body.value()),
            _ => None,
        })
        .collect();
    assert_eq!(
        bodies[..3],
        [None, None, None],
        "the client's bodies read as erased"
    );
    assert_eq!(
        bodies[3].map(String::as_str),
        Some(COUNSELOR_TEXT),
        "the counselor's body is intact"
    );

    // The erased user can do nothing more; the counselor carries on.
    let err = users
        .execute(
            s.client.0,
            UserCommand::UpdateProfile {
                nickname: "back".into(),
            },
            as_user(s.client, Role::Client),
            Metadata::default(),
        )
        .await
        .expect_err("erased");
    assert!(
        matches!(err, ActorError::Domain(DomainError::Conflict(_))),
        "{err}"
    );
    events.close().await;
}

#[actix_rt::test]
async fn sqlite_erasure_leaves_no_personal_data() {
    erasure_leaves_no_personal_data(Backend::sqlite().await).await;
}

#[actix_rt::test]
async fn postgres_erasure_leaves_no_personal_data() {
    erasure_leaves_no_personal_data(Backend::postgres().await).await;
}

#[actix_rt::test]
async fn key_loss_for_one_user_affects_no_other() {
    let b = Backend::sqlite().await;
    let Storage { events, keys, .. } = b.storage(false).await;
    let users = Registry::<UserDecider>::new(events.clone(), RegistryConfig::default());
    let rooms = Registry::<ChatRoomDecider>::new(events.clone(), RegistryConfig::default());
    let s = seed(&users, &rooms).await;
    // The counselor's key is lost (not an erasure: no event), e.g. by an operator mistake.
    keys.destroy(s.counselor.0).await.expect("destroy");
    let recorded = events
        .read_stream(
            &StreamName::new(StreamKind::Room, s.room),
            0,
            Direction::Forward,
            100,
        )
        .await
        .expect("read");
    let decoded: Vec<RoomEvent> = recorded
        .iter()
        .map(|r| codec::decode(r).expect("decode"))
        .collect();
    let bodies: Vec<Option<String>> = decoded
        .iter()
        .filter_map(|e| match e {
            RoomEvent::MessagePosted { body, .. } => Some(body.value().cloned()),
            _ => None,
        })
        .collect();
    assert_eq!(
        bodies,
        vec![
            Some(SECRETS[0].into()),
            Some(SECRETS[1].into()),
            Some(SECRETS[2].into()),
            None
        ]
    );
    events.close().await;
}
