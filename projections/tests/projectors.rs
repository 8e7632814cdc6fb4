//! The projectors against a real SQLite log, with nothing of the node above them: events are
//! decided by the domain, encoded and sealed as the node would, appended to the log, and
//! projected by this crate's runtime. Checks exactly-once application (two projecting pools,
//! a rebuild swapping tables under a running projector), sealed read models (no plaintext in
//! any file) and erasure (a destroyed key makes every copy unreadable).

use async_trait::async_trait;
use chacha20poly1305::XChaCha20Poly1305;
use chacha20poly1305::aead::{KeyInit, OsRng};
use chrono::Utc;
use neulbi_domain::chat_room::{ChatRoomDecider, RoomCommand};
use neulbi_domain::user::{UserCommand, UserDecider};
use neulbi_domain::{Actor, Context, Decider, MessageId, Role, RoomId, StreamName, UserId};
use neulbi_projections::db::read_model_url;
use neulbi_projections::{self as projections, ReadDb, queries, rebuild, runtime};
use neulbi_store::sqlite::SqliteStore;
use neulbi_store::{
    CryptoStore, DataKey, DataKeys, Direction, ExpectedVersion, Metadata, SharedStore, StoreError,
    StoreLimits, codec,
};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use uuid::Uuid;

/// Data keys in memory: created on first write, destroyed on erasure.
#[derive(Default)]
struct Keys(Mutex<HashMap<Uuid, Option<DataKey>>>);

impl Keys {
    fn destroy(&self, owner: Uuid) {
        self.0.lock().expect("keys").insert(owner, None);
    }
}

#[async_trait]
impl DataKeys for Keys {
    async fn for_write(&self, owner: Uuid) -> Result<Option<DataKey>, StoreError> {
        let mut keys = self.0.lock().expect("keys");
        Ok(keys
            .entry(owner)
            .or_insert_with(|| {
                Some(DataKey {
                    id: Uuid::now_v7(),
                    cipher: XChaCha20Poly1305::new(&XChaCha20Poly1305::generate_key(&mut OsRng)),
                })
            })
            .clone())
    }

    async fn for_read(&self, owner: Uuid) -> Result<Option<DataKey>, StoreError> {
        Ok(self.0.lock().expect("keys").get(&owner).cloned().flatten())
    }
}

/// A log in a temporary directory, its read models beside it, and a seeded room.
struct World {
    dir: tempfile::TempDir,
    url: String,
    store: SharedStore,
    keys: Arc<Keys>,
    db: ReadDb,
    client: UserId,
    counselor: UserId,
    room: Uuid,
}

const SECRET: &str = "client-secret-body-7f3a";

impl World {
    async fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}", dir.path().join("neulbi.db").display());
        let log: SharedStore = Arc::new(
            SqliteStore::open(&url, StoreLimits::default(), true)
                .await
                .expect("log"),
        );
        let keys = Arc::new(Keys::default());
        // The node's encrypting front: seals on append, opens on read.
        let store: SharedStore = Arc::new(CryptoStore::new(log, keys.clone()));
        let db = Self::pool(&url, &keys).await;
        let mut w = Self {
            dir,
            url,
            store,
            keys,
            db,
            client: UserId(Uuid::now_v7()),
            counselor: UserId(Uuid::now_v7()),
            room: Uuid::now_v7(),
        };
        w.seed().await;
        w
    }

    async fn pool(url: &str, keys: &Arc<Keys>) -> ReadDb {
        let keys: Arc<dyn DataKeys> = keys.clone();
        ReadDb::connect(&read_model_url(url))
            .await
            .expect("read models")
            .with_keys(Some(keys))
    }

    /// Decides `command` on the stream's current state and appends the events through the
    /// encrypting store, as the node's actors do.
    async fn run<D: Decider>(&self, id: Uuid, command: D::Command, ctx: Context) {
        let stream = StreamName::new(D::KIND, id);
        let stored = self
            .store
            .read_stream(&stream, 0, Direction::Forward, 10_000)
            .await
            .expect("read stream");
        let mut state = D::State::default();
        for e in &stored {
            let event: D::Event = codec::decode(e).expect("decode");
            state = D::evolve(state, &event);
        }
        let events = D::decide(&state, command, &ctx).expect("decide");
        let data = events
            .iter()
            .map(|e| codec::encode(e, &Metadata::default()).expect("encode"))
            .collect::<Vec<_>>();
        let expected = ExpectedVersion::from_current(stored.last().map(|e| e.version));
        self.store
            .append(&stream, expected, data)
            .await
            .expect("append");
    }

    fn as_user(user: UserId, role: Role) -> Context {
        Context::new(Actor::user(user, role), Utc::now())
    }

    async fn seed(&mut self) {
        for (id, email, role) in [
            (self.client, "client@example.kr", Role::Client),
            (self.counselor, "counselor@example.kr", Role::Counselor),
        ] {
            let register = UserCommand::Register {
                user_id: id,
                provider: "local".into(),
                subject: email.into(),
                email: email.into(),
                nickname: format!("nick-{email}"),
                role,
            };
            self.run::<UserDecider>(id.0, register, Context::new(Actor::system(), Utc::now()))
                .await;
        }
        let open = RoomCommand::Open {
            room_id: RoomId(self.room),
            client: self.client,
            counselor: self.counselor,
        };
        self.run::<ChatRoomDecider>(self.room, open, Self::as_user(self.client, Role::Client))
            .await;
        self.post(self.client, Role::Client, SECRET).await;
    }

    async fn post(&self, author: UserId, role: Role, body: &str) {
        let post = RoomCommand::PostMessage {
            message_id: MessageId(Uuid::now_v7()),
            body: body.into(),
            client_message_id: None,
        };
        self.run::<ChatRoomDecider>(self.room, post, Self::as_user(author, role))
            .await;
    }

    /// The rooms read model as both members and the room's history see it.
    async fn snapshot(&self) -> String {
        let client = queries::my_rooms(&self.db, &self.client.to_string())
            .await
            .expect("client rooms");
        let counselor = queries::my_rooms(&self.db, &self.counselor.to_string())
            .await
            .expect("counselor rooms");
        let history = queries::messages(&self.db, &self.room.to_string(), None, 500)
            .await
            .expect("history");
        format!("{client:?}\n{counselor:?}\n{:?}", history.items)
    }

    async fn counts(&self) -> (i64, i64) {
        let rooms = queries::my_rooms(&self.db, &self.client.to_string())
            .await
            .expect("rooms");
        (rooms[0].message_count, rooms[0].unread_count)
    }
}

#[tokio::test]
async fn read_models_hold_tokens_that_open_until_the_key_is_destroyed() {
    let w = World::new().await;
    w.post(w.counselor, Role::Counselor, "counselor-reply")
        .await;
    runtime::catch_up(&w.store, &w.db).await.expect("catch up");
    assert_eq!(
        w.counts().await,
        (2, 1),
        "two messages, one unread for the client"
    );
    let history = queries::messages(&w.db, &w.room.to_string(), None, 10)
        .await
        .expect("history");
    let bodies: Vec<_> = history.items.iter().map(|m| m.body.clone()).collect();
    assert_eq!(
        bodies,
        [Some("counselor-reply".to_owned()), Some(SECRET.to_owned())]
    );

    // No file of the log or the read models holds the body in the clear.
    for entry in std::fs::read_dir(w.dir.path()).expect("dir") {
        let path = entry.expect("entry").path();
        let bytes = std::fs::read(&path).expect("file");
        assert!(
            !bytes.windows(SECRET.len()).any(|b| b == SECRET.as_bytes()),
            "{} holds the plaintext",
            path.display()
        );
    }

    // Destroying the client's key erases their copy everywhere at once; the reply stays.
    w.keys.destroy(w.client.0);
    let history = queries::messages(&w.db, &w.room.to_string(), None, 10)
        .await
        .expect("history");
    let bodies: Vec<_> = history.items.iter().map(|m| m.body.clone()).collect();
    assert_eq!(bodies, [Some("counselor-reply".to_owned()), None]);
}

#[tokio::test]
async fn two_projecting_pools_apply_each_event_once() {
    let w = World::new().await;
    for i in 0..40 {
        w.post(w.counselor, Role::Counselor, &format!("m{i}")).await;
    }
    let other = World::pool(&w.url, &w.keys).await;
    let (a, b) = tokio::join!(
        runtime::catch_up(&w.store, &w.db),
        runtime::catch_up(&w.store, &other)
    );
    a.expect("pool a");
    b.expect("pool b");
    assert_eq!(w.counts().await, (41, 40), "each message counted once");
}

#[tokio::test]
async fn a_rebuild_under_a_running_projector_equals_the_live_tables() {
    let w = Arc::new(World::new().await);
    runtime::catch_up(&w.store, &w.db).await.expect("catch up");
    let before = w.snapshot().await;
    let def = projections::by_name("rooms").expect("rooms");
    let report = rebuild::rebuild(&w.store, &w.db, def, |_, _| {})
        .await
        .expect("rebuild");
    assert!(report.events > 0);
    assert_eq!(
        w.snapshot().await,
        before,
        "a rebuild reproduces the live tables"
    );

    let live = {
        let w = w.clone();
        tokio::spawn(async move {
            for _ in 0..20 {
                runtime::catch_up(&w.store, &w.db).await.expect("live");
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        })
    };
    for i in 0..30 {
        w.post(w.client, Role::Client, &format!("during rebuild {i}"))
            .await;
        if i == 10 {
            rebuild::rebuild(&w.store, &w.db, def, |_, _| {})
                .await
                .expect("rebuild under load");
        }
    }
    live.await.expect("live projector");
    runtime::catch_up(&w.store, &w.db).await.expect("final");
    let after = w.snapshot().await;
    rebuild::rebuild(&w.store, &w.db, def, |_, _| {})
        .await
        .expect("fresh rebuild");
    assert_eq!(
        w.snapshot().await,
        after,
        "live tables equal a fresh rebuild"
    );
    let counselor = queries::my_rooms(&w.db, &w.counselor.to_string())
        .await
        .expect("rooms");
    assert_eq!(counselor[0].message_count, 31);
    assert_eq!(counselor[0].unread_count, 31, "exact after the swaps");
}

#[tokio::test]
async fn projectors_at_one_checkpoint_share_one_decoded_batch() {
    let w = World::new().await;
    let shared = runtime::SharedBatch::default();
    let (first, n) = shared
        .read(&w.store, 0, runtime::BATCH)
        .await
        .expect("read");
    assert!(n > 0 && n == first.len(), "the seeded events: {n}");
    // The next projector at the same checkpoint gets the same decoded events, not a copy.
    let (again, m) = shared
        .read(&w.store, 0, runtime::BATCH)
        .await
        .expect("read");
    assert!(Arc::ptr_eq(&first, &again));
    assert_eq!(m, n);
    // A narrowed read takes its prefix of the shared batch...
    let (one, k) = shared.read(&w.store, 0, 1).await.expect("read");
    assert!(Arc::ptr_eq(&first, &one));
    assert_eq!(k, 1);
    // ...and a commit after the batch is read by the projector that gets there first.
    w.post(w.client, Role::Client, "after the batch").await;
    let (next, after) = shared
        .read(&w.store, n as u64, runtime::BATCH)
        .await
        .expect("read");
    assert!(!Arc::ptr_eq(&first, &next));
    assert!(after > 0);
    assert_eq!(next[0].event.position, n as u64);
    // The log's events, in order, whichever reader decoded them.
    let direct = runtime::read_batch(&w.store, 0, runtime::BATCH)
        .await
        .expect("read");
    let positions =
        |b: &[projections::Projected]| b.iter().map(|p| p.event.position).collect::<Vec<_>>();
    assert_eq!(positions(&first), positions(&direct[..n]));
    // A narrowed read that misses is not shared: the next full read starts over.
    let fresh = runtime::SharedBatch::default();
    let (narrow, _) = fresh.read(&w.store, 0, 1).await.expect("read");
    let (full, len) = fresh.read(&w.store, 0, runtime::BATCH).await.expect("read");
    assert!(!Arc::ptr_eq(&narrow, &full));
    assert_eq!(len, direct.len());
}
