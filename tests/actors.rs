//! The actor runtime over real stores: commands go through decide → append → evolve, rejected
//! commands append nothing, full mailboxes say "busy", idle actors passivate and rehydrate,
//! and two nodes writing the same room end with a consistent stream.

use crate::support::Backend;
use chrono::Utc;
use neulbi::actors::{ActorError, Registry, RegistryConfig};
use neulbi::store::{Direction, Metadata, SharedStore};
use neulbi_domain::chat_room::{ChatRoomDecider, RoomCommand, RoomEvent};
use neulbi_domain::{
    Actor, Context, DomainError, MessageId, Role, RoomId, StreamKind, StreamName, UserId,
};
use std::collections::HashSet;
use std::time::Duration;
use uuid::Uuid;

const CLIENT: UserId = UserId(Uuid::from_u128(1));
const COUNSELOR: UserId = UserId(Uuid::from_u128(2));
const OUTSIDER: UserId = UserId(Uuid::from_u128(3));

fn ctx(user: UserId) -> Context {
    let role = if user == COUNSELOR {
        Role::Counselor
    } else {
        Role::Client
    };
    Context::new(Actor::user(user, role), Utc::now())
}

fn post(body: &str, client_message_id: &str) -> RoomCommand {
    RoomCommand::PostMessage {
        message_id: MessageId(Uuid::now_v7()),
        body: body.into(),
        client_message_id: Some(client_message_id.into()),
    }
}

async fn open_room(reg: &Registry<ChatRoomDecider>) -> Uuid {
    let id = Uuid::now_v7();
    let open = RoomCommand::Open {
        room_id: RoomId(id),
        client: CLIENT,
        counselor: COUNSELOR,
    };
    reg.execute(id, open, ctx(CLIENT), Metadata::default())
        .await
        .expect("open room");
    id
}

async fn room_events(store: &SharedStore, id: Uuid) -> Vec<neulbi::store::RecordedEvent> {
    store
        .read_stream(
            &StreamName::new(StreamKind::Room, id),
            0,
            Direction::Forward,
            10_000,
        )
        .await
        .expect("read room")
}

#[actix_rt::test]
async fn commands_append_events_and_rejections_append_nothing() {
    let b = Backend::sqlite().await;
    let reg = Registry::<ChatRoomDecider>::new(b.store.clone(), RegistryConfig::default());
    let id = open_room(&reg).await;

    let meta = Metadata {
        correlation_id: Some(Uuid::now_v7()),
        ..Metadata::default()
    };
    let out = reg
        .execute(id, post("hello", "c1"), ctx(CLIENT), meta.clone())
        .await
        .expect("post");
    assert_eq!(out.version, Some(1));
    assert!(
        matches!(out.events.as_slice(), [RoomEvent::MessagePosted { author, .. }] if *author == CLIENT)
    );
    assert_eq!(out.state.message_count(), 1);

    let err = reg
        .execute(id, post("hi", "x"), ctx(OUTSIDER), Metadata::default())
        .await
        .expect_err("outsider");
    assert!(
        matches!(err, ActorError::Domain(DomainError::Forbidden(_))),
        "{err}"
    );

    // A resend with the same client message id is acknowledged without a second event.
    let again = reg
        .execute(id, post("hello", "c1"), ctx(CLIENT), Metadata::default())
        .await
        .expect("resend");
    assert!(again.events.is_empty());
    assert_eq!(again.version, Some(1));

    let stored = room_events(&b.store, id).await;
    assert_eq!(
        stored
            .iter()
            .map(|e| e.event_type.as_str())
            .collect::<Vec<_>>(),
        vec!["Opened", "MessagePosted"]
    );
    let expected = Metadata {
        user_id: Some(CLIENT.as_uuid()),
        ..meta
    };
    assert_eq!(
        stored[1].metadata, expected,
        "metadata, with the acting user, travels into the log"
    );

    let err = reg
        .execute(
            Uuid::now_v7(),
            post("x", "y"),
            ctx(CLIENT),
            Metadata::default(),
        )
        .await
        .expect_err("unopened");
    assert!(
        matches!(err, ActorError::Domain(DomainError::NotFound(_))),
        "{err}"
    );
}

#[actix_rt::test]
async fn idle_actors_passivate_and_rehydrate_from_the_log() {
    let b = Backend::sqlite().await;
    let config = RegistryConfig {
        mailbox_capacity: 16,
        idle_timeout: Duration::from_millis(100),
    };
    let reg = Registry::<ChatRoomDecider>::new(b.store.clone(), config);
    let id = open_room(&reg).await;
    reg.execute(id, post("one", "1"), ctx(CLIENT), Metadata::default())
        .await
        .expect("post");
    assert_eq!(reg.live_actors(), 1);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(reg.live_actors(), 0, "the idle actor stopped");
    // A fresh actor hydrates: it knows the message count, the version and the used client ids.
    let out = reg
        .execute(id, post("two", "2"), ctx(COUNSELOR), Metadata::default())
        .await
        .expect("post");
    assert_eq!(out.version, Some(2));
    assert_eq!(out.state.message_count(), 2);
    let resend = reg
        .execute(id, post("one", "1"), ctx(CLIENT), Metadata::default())
        .await
        .expect("resend");
    assert!(resend.events.is_empty());
}

#[actix_rt::test]
async fn a_full_mailbox_answers_busy_and_loses_nothing_acknowledged() {
    let b = Backend::sqlite().await;
    let config = RegistryConfig {
        mailbox_capacity: 1,
        idle_timeout: Duration::from_secs(60),
    };
    let reg = Registry::<ChatRoomDecider>::new(b.store.clone(), config);
    let id = open_room(&reg).await;
    let sends = (0..50).map(|i| {
        reg.execute(
            id,
            post("flood", &format!("f{i}")),
            ctx(CLIENT),
            Metadata::default(),
        )
    });
    let results = futures::future::join_all(sends).await;
    let busy = results
        .iter()
        .filter(|r| matches!(r, Err(ActorError::Busy)))
        .count();
    let ok = results.iter().filter(|r| r.is_ok()).count();
    assert!(
        busy > 0,
        "a mailbox of one must overflow under 50 concurrent commands"
    );
    assert_eq!(
        ok + busy,
        50,
        "every command is either acknowledged or refused as busy"
    );
    assert_eq!(room_events(&b.store, id).await.len(), 1 + ok);
}

#[actix_rt::test]
async fn two_nodes_writing_one_room_lose_no_command() {
    const PER_WRITER: usize = 15;
    const WRITERS_PER_NODE: usize = 3;
    let b = Backend::postgres().await;
    let node_a = Registry::<ChatRoomDecider>::new(b.store.clone(), RegistryConfig::default());
    let store_b = b.open_again().await;
    let node_b = Registry::<ChatRoomDecider>::new(store_b.clone(), RegistryConfig::default());
    let id = open_room(&node_a).await;

    let writer = |reg: &'static Registry<ChatRoomDecider>, name: String| async move {
        let mut conflicts = 0;
        for i in 0..PER_WRITER {
            let cid = format!("{name}-{i}");
            let user = if i % 2 == 0 { CLIENT } else { COUNSELOR };
            // A client resends with the same client message id until acknowledged.
            loop {
                match reg
                    .execute(id, post(&cid, &cid), ctx(user), Metadata::default())
                    .await
                {
                    Ok(_) => break,
                    Err(ActorError::Conflict(_) | ActorError::Busy) => conflicts += 1,
                    Err(e) => panic!("unexpected error: {e}"),
                }
            }
        }
        conflicts
    };
    let node_a: &'static Registry<ChatRoomDecider> = Box::leak(Box::new(node_a));
    let node_b: &'static Registry<ChatRoomDecider> = Box::leak(Box::new(node_b));
    let mut tasks = Vec::new();
    for w in 0..WRITERS_PER_NODE {
        tasks.push(writer(node_a, format!("a{w}")));
        tasks.push(writer(node_b, format!("b{w}")));
    }
    futures::future::join_all(tasks).await;

    let stored = room_events(&b.store, id).await;
    let versions: Vec<u64> = stored.iter().map(|e| e.version).collect();
    assert_eq!(versions, (0..stored.len() as u64).collect::<Vec<_>>());
    let bodies: Vec<String> = stored
        .iter()
        .filter(|e| e.event_type == "MessagePosted")
        .map(|e| {
            e.data["client_message_id"]
                .as_str()
                .expect("client id")
                .to_owned()
        })
        .collect();
    let unique: HashSet<&String> = bodies.iter().collect();
    assert_eq!(
        bodies.len(),
        2 * WRITERS_PER_NODE * PER_WRITER,
        "one event per command"
    );
    assert_eq!(unique.len(), bodies.len(), "no command applied twice");
    store_b.close().await;
}
