//! End-to-end erasure on both backends: seed a person with a profile, logins and messages;
//! erase them; then scan the database for their personal data (none may remain), replay the
//! streams (they still fold), and check that the other participant's data is intact.

use crate::support;

use crate::support::Backend;
use crate::support::scenario::{COUNSELOR_TEXT, EMAIL, IP, NICKNAME, SECRETS, as_user, seed};
use chrono::Utc;
use neulbi::actors::{ActorError, Registry, RegistryConfig, codec};
use neulbi::privacy::erasure::erase_user;
use neulbi::projections::db::read_model_url;
use neulbi::projections::{ReadDb, runtime};
use neulbi::store::{Direction, Metadata, Storage};
use neulbi_domain::chat_room::{ChatRoomDecider, RoomEvent};
use neulbi_domain::user::{UserCommand, UserDecider};
use neulbi_domain::{Actor, Context, Decider, DomainError, Role, StreamKind, StreamName};

/// Every byte of the database as text: files for SQLite, table contents for PostgreSQL
/// (the raw files of a whole PostgreSQL server are scanned by
/// `sealed_read_models_leave_no_plaintext_on_disk`).
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
    // The read models hold sealed copies only, even before the erasure; the scan finds
    // plain text that is not personal (the room's id), so it would find plaintext copies.
    let before = database_text(&b).await;
    assert!(
        before.contains(&s.room.to_string()),
        "the scan can find plain text"
    );
    assert!(
        !before.contains(SECRETS[1]),
        "no plaintext copy in the {} read models",
        b.name
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
        Context::new(Actor::operator(), Utc::now()),
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

/// Every byte the database server keeps on disk: the whole data directory (for PostgreSQL
/// after a `CHECKPOINT`, so tables, dead row versions and `pg_wal` are all on disk).
async fn raw_bytes(pg: Option<&support::pg::TempPostgres>, data_dir: &std::path::Path) -> Vec<u8> {
    let mut out = Vec::new();
    match pg {
        Some(pg) => {
            use sqlx::Connection;
            let mut c = sqlx::PgConnection::connect(&pg.url())
                .await
                .expect("connect");
            sqlx::query("CHECKPOINT")
                .execute(&mut c)
                .await
                .expect("checkpoint");
            support::read_tree(&pg.data_dir(), &mut out);
        }
        None => support::read_tree(data_dir, &mut out),
    }
    assert!(out.len() > 10_000, "the scan reads the database files");
    out
}

/// Waits until every projector has applied the whole log.
async fn projected(app: &support::app::TestApp) {
    for _ in 0..400 {
        let status = runtime::status(&app.state.store, &app.state.read)
            .await
            .expect("status");
        if status.iter().all(|s| s.lag == 0) {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    panic!("the projectors did not catch up");
}

/// Issue 14: a person who signed up, published a counselor profile and chatted, then erased
/// themselves with `DELETE /users/me`, leaves no e-mail, nickname, profile text or message
/// text anywhere in the server's files — PostgreSQL's tables, dead row versions and WAL, or
/// the SQLite log and read-model files with their WALs. Read models keep personal values
/// sealed under the owner's key, so destroying the key is enough everywhere; the API still
/// shows them, opened, while the person exists.
async fn sealed_read_models_leave_no_plaintext_on_disk(pg: Option<support::pg::TempPostgres>) {
    use crate::support::http::{post_json, request};
    use neulbi_domain::chat_room::RoomCommand;
    use neulbi_domain::{MessageId, UserId};

    const C_EMAIL: &str = "eunji.sealed.counselor@example.kr";
    const C_NICK: &str = "은지-봉인된-닉네임";
    const C_HEADLINE: &str = "sealed-headline-불안-상담";
    const C_BIO: &str = "sealed-bio-twelve-years-of-practice";
    const C_TEXTS: [&str; 2] = ["sealed-counselor-says-hello", "상담사-비밀-메시지-두번째"];
    const CLIENT_EMAIL: &str = "client.stays.sealed@example.kr";
    const CLIENT_TEXT: &str = "client-text-kept-but-sealed";

    let dir = tempfile::tempdir().expect("data dir");
    let app = support::app::TestApp::start(|c| {
        c.data_dir = dir.path().to_owned();
        if let Some(pg) = &pg {
            c.database_url = Some(pg.url());
        }
    })
    .await;
    let addr = app.addr;
    let authed = |method: &'static str, path: String, token: String| async move {
        request(
            addr,
            method,
            &path,
            &[("Authorization", &format!("Bearer {token}"))],
            "",
        )
        .await
    };

    // The counselor signs up with a nickname of their own, is granted the role, signs in again
    // and publishes a directory profile.
    let r = post_json(
        addr,
        "/auth/signup",
        &serde_json::json!({ "email": C_EMAIL, "password": "a long password", "nickname": C_NICK }),
        &[],
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let token = r.json()["access_token"].as_str().expect("token").to_owned();
    let me = authed("GET", "/users/me".into(), token).await.json();
    let counselor_id = UserId(me["id"].as_str().expect("id").parse().expect("uuid"));
    app.state
        .users
        .execute(
            counselor_id.as_uuid(),
            UserCommand::GrantCounselorRole,
            Context::new(Actor::operator(), Utc::now()),
            Metadata::default(),
        )
        .await
        .expect("grant");
    let r = post_json(
        addr,
        "/auth/login",
        &serde_json::json!({ "email": C_EMAIL, "password": "a long password" }),
        &[],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let counselor = support::app::Person {
        id: counselor_id,
        token: r.json()["access_token"].as_str().expect("token").to_owned(),
    };
    let r = request(
        addr,
        "PUT",
        "/users/me/counselor-profile",
        &[
            ("Authorization", &counselor.bearer()),
            ("Content-Type", "application/json"),
        ],
        &serde_json::json!({ "headline": C_HEADLINE, "bio": C_BIO }).to_string(),
    )
    .await;
    assert!(matches!(r.status, 200 | 204), "{}: {}", r.status, r.body);

    // A client (not erased) chats with them.
    let client = app.client(CLIENT_EMAIL).await;
    let room = app.open_room(&client, &counselor).await;
    let room_id: uuid::Uuid = room.parse().expect("uuid");
    for (author, role, text) in [
        (counselor.id, Role::Counselor, C_TEXTS[0]),
        (client.id, Role::Client, CLIENT_TEXT),
        (counselor.id, Role::Counselor, C_TEXTS[1]),
    ] {
        let post = RoomCommand::PostMessage {
            message_id: MessageId(uuid::Uuid::now_v7()),
            body: text.into(),
            client_message_id: None,
        };
        app.state
            .rooms
            .execute(room_id, post, as_user(author, role), Metadata::default())
            .await
            .expect("post");
    }
    projected(&app).await;

    // The API opens the sealed values for everyone who may see them.
    let directory = request(addr, "GET", "/counselors", &[], "").await.json();
    let mine = |d: &serde_json::Value| {
        d["items"]
            .as_array()
            .expect("items")
            .iter()
            .find(|c| c["user_id"] == counselor_id.to_string())
            .cloned()
    };
    let entry = mine(&directory).expect("listed");
    assert_eq!(
        (&entry["nickname"], &entry["headline"], &entry["bio"]),
        (
            &serde_json::json!(C_NICK),
            &serde_json::json!(C_HEADLINE),
            &serde_json::json!(C_BIO)
        ),
        "{directory}"
    );
    let history = authed(
        "GET",
        format!("/rooms/{room}/messages"),
        client.token.clone(),
    )
    .await
    .json();
    let bodies: Vec<&str> = history["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|m| m["body"].as_str())
        .collect();
    assert_eq!(bodies, [C_TEXTS[1], CLIENT_TEXT, C_TEXTS[0]], "{history}");
    let rooms = authed("GET", "/users/me/rooms".into(), client.token.clone())
        .await
        .json();
    assert_eq!(rooms["items"][0]["last_message_preview"], C_TEXTS[1]);

    // Nothing personal is on disk in the clear, even before the erasure.
    let personal: Vec<&str> = [
        C_EMAIL,
        C_NICK,
        C_HEADLINE,
        C_BIO,
        CLIENT_EMAIL,
        CLIENT_TEXT,
    ]
    .into_iter()
    .chain(C_TEXTS)
    .collect();
    let bytes = raw_bytes(pg.as_ref(), dir.path()).await;
    assert!(
        support::contains_bytes(&bytes, room.as_bytes())
            && support::contains_bytes(&bytes, b"MessagePosted"),
        "the scan finds plain text that is not personal (a room id, an event type)"
    );
    for needle in &personal {
        assert!(
            !support::contains_bytes(&bytes, needle.as_bytes()),
            "{needle:?} is on disk in the clear before the erasure"
        );
    }

    // The counselor erases themself.
    let r = authed("DELETE", "/users/me".into(), counselor.token.clone()).await;
    assert_eq!(r.status, 204, "{}", r.body);
    projected(&app).await;

    // The API shows them as erased, as before read models were sealed; the client's data
    // stays readable.
    let directory = request(addr, "GET", "/counselors", &[], "").await.json();
    assert_eq!(mine(&directory), None, "{directory}");
    let history = authed(
        "GET",
        format!("/rooms/{room}/messages"),
        client.token.clone(),
    )
    .await
    .json();
    let bodies: Vec<Option<&str>> = history["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|m| m["body"].as_str())
        .collect();
    assert_eq!(bodies, [None, Some(CLIENT_TEXT), None], "{history}");
    let rooms = authed("GET", "/users/me/rooms".into(), client.token.clone())
        .await
        .json();
    assert_eq!(
        rooms["items"][0]["last_message_preview"],
        serde_json::Value::Null
    );
    let profile = neulbi::projections::queries::user(&app.state.read, &counselor.id.to_string())
        .await
        .expect("profile")
        .expect("row");
    assert!(profile.erased && profile.nickname.is_none());

    let bytes = raw_bytes(pg.as_ref(), dir.path()).await;
    assert!(
        support::contains_bytes(&bytes, room.as_bytes()),
        "the scan still reads"
    );
    for needle in &personal {
        assert!(
            !support::contains_bytes(&bytes, needle.as_bytes()),
            "{needle:?} is on disk in the clear after the erasure"
        );
    }
    app.stop().await;
}

#[actix_rt::test]
async fn postgres_sealed_read_models_leave_no_plaintext_on_disk() {
    sealed_read_models_leave_no_plaintext_on_disk(Some(support::pg::TempPostgres::start())).await;
}

#[actix_rt::test]
async fn sqlite_sealed_read_models_leave_no_plaintext_on_disk() {
    sealed_read_models_leave_no_plaintext_on_disk(None).await;
}
