//! Crypto-shredding over real backends: personal fields never reach the database in plain
//! text, and destroying one user's key erases exactly that user's fields.

use crate::support::Backend;
use neulbi::store::{self, Direction, EventData, ExpectedVersion};
use neulbi_domain::{StreamKind, StreamName};
use serde_json::json;
use uuid::Uuid;

fn personal(owner: Uuid, value: &str) -> serde_json::Value {
    json!({ "$personal": { "owner": owner, "value": value } })
}

async fn raw_data(b: &Backend) -> String {
    use sqlx::Connection;
    let rows: Vec<String> = if b.name == "sqlite" {
        let mut c = sqlx::SqliteConnection::connect(&b.url)
            .await
            .expect("connect");
        sqlx::query_scalar("SELECT data FROM events")
            .fetch_all(&mut c)
            .await
            .expect("rows")
    } else {
        let mut c = sqlx::PgConnection::connect(&b.url).await.expect("connect");
        sqlx::query_scalar("SELECT data FROM events")
            .fetch_all(&mut c)
            .await
            .expect("rows")
    };
    rows.join("\n")
}

async fn erasure_is_per_owner(b: Backend) {
    let storage = b.storage(false).await;
    let (alice, bob) = (Uuid::now_v7(), Uuid::now_v7());
    let room = StreamName::new(StreamKind::Room, Uuid::now_v7());
    let events = vec![
        EventData::new(
            "MessagePosted",
            json!({ "author": alice, "body": personal(alice, "alice-secret-감사합니다") }),
        ),
        EventData::new(
            "MessagePosted",
            json!({ "author": bob, "body": personal(bob, "bob-secret-message") }),
        ),
    ];
    storage
        .events
        .append(&room, ExpectedVersion::NoStream, events)
        .await
        .expect("append");

    let raw = raw_data(&b).await;
    assert!(
        !raw.contains("alice-secret") && !raw.contains("bob-secret"),
        "plaintext in the log: {raw}"
    );
    assert!(raw.contains(&alice.to_string()), "ids stay clear");

    let read = storage
        .events
        .read_stream(&room, 0, Direction::Forward, 10)
        .await
        .expect("read");
    assert_eq!(
        read[0].data["body"],
        personal(alice, "alice-secret-감사합니다")
    );

    storage.keys.destroy(alice).await.expect("destroy");
    // A second instance (another node, or after restart) sees the erasure too.
    let other = b.open_again().await;
    for s in [&storage.events, &other] {
        let read = s.read_all(0, 10).await.expect("read after erasure");
        assert_eq!(
            read[0].data["body"],
            json!({ "$personal": { "owner": alice, "erased": true } })
        );
        assert_eq!(read[0].data["author"], json!(alice), "structure replays");
        assert_eq!(
            read[1].data["body"],
            personal(bob, "bob-secret-message"),
            "bob is untouched"
        );
    }

    // Personal data of an erased user is never written again, even by a late command.
    let late = EventData::new(
        "MessagePosted",
        json!({ "body": personal(alice, "too-late") }),
    );
    storage
        .events
        .append(&room, ExpectedVersion::Exact(1), vec![late])
        .await
        .expect("late append");
    assert!(!raw_data(&b).await.contains("too-late"));
    storage
        .keys
        .destroy(alice)
        .await
        .expect("destroying twice is fine");
    other.close().await;
}

async fn tampered_ciphertext_is_a_typed_error(b: Backend) {
    let alice = Uuid::now_v7();
    let room = StreamName::new(StreamKind::Room, Uuid::now_v7());
    let e = EventData::new("MessagePosted", json!({ "body": personal(alice, "hello") }));
    b.store
        .append(&room, ExpectedVersion::NoStream, vec![e])
        .await
        .expect("append");
    b.execute_raw("UPDATE events SET data = replace(data, '\"sealed\":\"', '\"sealed\":\"AAAA')")
        .await;
    // Another instance reads the row (this one still holds its commit in memory).
    let reader = b.open_again().await;
    let err = reader.read_all(0, 10).await.expect_err("tampered");
    assert!(
        matches!(err, store::StoreError::Corrupt { position: 0, .. }),
        "{err}"
    );
    reader.close().await;
}

#[tokio::test]
async fn sqlite_erasure_is_per_owner() {
    erasure_is_per_owner(Backend::sqlite().await).await;
}

#[tokio::test]
async fn postgres_erasure_is_per_owner() {
    erasure_is_per_owner(Backend::postgres().await).await;
}

#[tokio::test]
async fn sqlite_tampered_ciphertext_is_a_typed_error() {
    tampered_ciphertext_is_a_typed_error(Backend::sqlite().await).await;
}

#[tokio::test]
async fn postgres_tampered_ciphertext_is_a_typed_error() {
    tampered_ciphertext_is_a_typed_error(Backend::postgres().await).await;
}
