//! Envelope encryption over real backends (SQLite, a throwaway PostgreSQL, moto's KMS): every
//! key the database holds (data keys, signing keys, the lookup secret) is stored wrapped by a
//! key-encryption key that is not in the database; a copy of the database shows none of them;
//! plaintext keys of older versions are wrapped on start; a KEK rotation rewraps everything
//! while nodes holding both KEKs keep working; a missing KEK is refused at start.

use crate::support;

use crate::support::moto::Moto;
use crate::support::pg::TempPostgres;
use base64::Engine;
use neulbi::auth::identities::stored_secret;
use neulbi::auth::keys::KeyRing;
use neulbi::privacy::rewrap;
use neulbi::privacy::{KeySettings, WrapContext};
use neulbi::store::{Database, Direction, EventData, ExpectedVersion, Storage, StoreLimits};
use neulbi_domain::{StreamKind, StreamName};
use serde_json::json;
use std::path::PathBuf;
use uuid::Uuid;

/// A database under test with a directory for its key files.
struct Db {
    url: String,
    dir: tempfile::TempDir,
    pg: Option<TempPostgres>,
}

impl Db {
    fn sqlite() -> Self {
        let dir = tempfile::tempdir().expect("dir");
        let url = format!("sqlite://{}", dir.path().join("neulbi.db").display());
        Self { url, dir, pg: None }
    }

    fn postgres() -> Self {
        let pg = TempPostgres::start();
        Self {
            url: pg.url(),
            dir: tempfile::tempdir().expect("dir"),
            pg: Some(pg),
        }
    }

    async fn open(&self, keys: &KeySettings, migrate: bool) -> Result<Storage, String> {
        neulbi::store::open_storage_with(
            &self.url,
            StoreLimits::default(),
            migrate,
            keys,
            self.dir.path(),
        )
        .await
        .map_err(|e| e.to_string())
    }

    /// A local KEK file `name` holding 32 bytes of `fill`, as a spec.
    fn kek(&self, name: &str, fill: u8) -> String {
        let path = self.dir.path().join(name);
        std::fs::write(
            &path,
            base64::engine::general_purpose::STANDARD.encode([fill; 32]),
        )
        .expect("write kek");
        format!("file:{}", path.display())
    }

    /// Every byte the database server keeps on disk: the SQLite files, or PostgreSQL's whole
    /// data directory (tables and `pg_wal`) after a `CHECKPOINT`.
    async fn raw_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match &self.pg {
            None => {
                for name in ["neulbi.db", "neulbi.db-wal", "neulbi.db-shm"] {
                    if let Ok(bytes) = std::fs::read(self.dir.path().join(name)) {
                        out.extend(bytes);
                    }
                }
            }
            Some(pg) => {
                use sqlx::Connection;
                let mut c = sqlx::PgConnection::connect(&self.url)
                    .await
                    .expect("connect");
                sqlx::query("CHECKPOINT")
                    .execute(&mut c)
                    .await
                    .expect("checkpoint");
                support::read_tree(&pg.data_dir(), &mut out);
            }
        }
        assert!(out.len() > 10_000, "the scan reads the database files");
        out
    }
}

fn personal(owner: Uuid, value: &str) -> serde_json::Value {
    json!({ "$personal": { "owner": owner, "value": value } })
}

/// Appends a message with a personal body per owner; returns the stream.
async fn write_personal(storage: &Storage, owners: &[Uuid]) -> StreamName {
    let room = StreamName::new(StreamKind::Room, Uuid::now_v7());
    let events = owners
        .iter()
        .map(|o| {
            EventData::new(
                "MessagePosted",
                json!({ "author": o, "body": personal(*o, &format!("secret of {o}")) }),
            )
        })
        .collect();
    storage
        .events
        .append(&room, ExpectedVersion::NoStream, events)
        .await
        .expect("append");
    room
}

/// The personal bodies read back, as the node sees them.
async fn bodies(storage: &Storage, room: &StreamName) -> Vec<serde_json::Value> {
    storage
        .events
        .read_stream(room, 0, Direction::Forward, 100)
        .await
        .expect("read")
        .into_iter()
        .map(|e| e.data["body"].clone())
        .collect()
}

type Row = (String, Option<String>, Option<Vec<u8>>, Option<String>);

async fn fetch(db: &Database, sql: &'static str) -> Vec<Row> {
    match db {
        Database::Sqlite(p) => sqlx::query_as(sql).fetch_all(p).await.expect("rows"),
        Database::Postgres(p) => sqlx::query_as(sql).fetch_all(p).await.expect("rows"),
    }
}

fn data_keys_sql(db: &Database) -> &'static str {
    match db {
        Database::Sqlite(_) => {
            "SELECT CAST(owner AS TEXT), CAST(key_id AS TEXT), wrapped, kek_id FROM data_keys"
        }
        Database::Postgres(_) => {
            "SELECT CAST(owner AS TEXT), CAST(key_id AS TEXT), wrapped, kek_id \
             FROM neulbi_keys.data_keys"
        }
    }
}

/// Every stored key in the clear, unwrapped through the node's own ring: what must not be
/// found in any copy of the database.
async fn plaintext_keys(storage: &Storage) -> Vec<Vec<u8>> {
    let db = &storage.database;
    let mut out = Vec::new();
    for (owner, key_id, wrapped, kek) in fetch(db, data_keys_sql(db)).await {
        let ctx = WrapContext::DataKey {
            owner: owner.parse().expect("owner"),
            key_id: key_id.expect("key id").parse().expect("key id"),
        };
        let key = storage
            .kek
            .unwrap(&kek.expect("kek id"), &ctx, &wrapped.expect("wrapped"))
            .await
            .expect("unwrap data key");
        out.push(key.to_vec());
    }
    let signing = fetch(
        db,
        "SELECT CAST(generation AS TEXT), CAST(NULL AS TEXT), wrapped, kek_id FROM auth_signing_keys",
    )
    .await;
    for (generation, _, wrapped, kek) in signing {
        let ctx = WrapContext::Signing {
            generation: generation.parse().expect("generation"),
        };
        let der = storage
            .kek
            .unwrap(&kek.expect("kek id"), &ctx, &wrapped.expect("wrapped"))
            .await
            .expect("unwrap signing key");
        // The 32-byte Ed25519 seed sits at the end of the PKCS#8 DER.
        out.push(der[der.len() - 32..].to_vec());
    }
    out
}

/// Creates keys of every kind: data keys for `owners`, the first signing key and the
/// identity-lookup secret (returned in the clear).
async fn create_keys(storage: &Storage, owners: &[Uuid]) -> (StreamName, Vec<u8>) {
    let room = write_personal(storage, owners).await;
    KeyRing::load_or_create(&storage.database, &storage.kek, 600)
        .await
        .expect("signing key");
    let secret = stored_secret(&storage.database, &storage.kek, "identity_lookup")
        .await
        .expect("secret");
    (room, secret.to_vec())
}

async fn every_key_is_stored_wrapped(db: Db) {
    let storage = db.open(&KeySettings::default(), true).await.expect("open");
    let owners = [Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7()];
    let (room, secret) = create_keys(&storage, &owners).await;
    let status = rewrap::status(&storage.database, &storage.kek)
        .await
        .expect("status");
    let current = storage.kek.current_id().to_owned();
    assert!(current.starts_with("local:"), "{current}");
    assert_eq!(status.plaintext(), 0, "{status:?}");
    assert_eq!(status.keks_in_use().get(&current), Some(&5), "{status:?}");
    assert!(
        db.dir.path().join("neulbi.kek").exists(),
        "the default KEK file is created beside the data"
    );

    let mut secrets = plaintext_keys(&storage).await;
    assert_eq!(secrets.len(), 4, "three data keys and a signing key");
    secrets.push(secret);
    assert_eq!(
        bodies(&storage, &room).await[0],
        personal(owners[0], &format!("secret of {}", owners[0]))
    );
    storage.events.close().await;
    drop(storage);

    let raw = db.raw_bytes().await;
    for s in &secrets {
        assert_eq!(s.len(), 32);
        assert!(
            !support::contains_bytes(&raw, s),
            "a key in the clear on disk"
        );
    }
    // The scan is able to find what it looks for: the key ids are stored in the clear.
    let reopened = db.open(&KeySettings::default(), false).await.expect("open");
    let (_, key_id, _, _) = fetch(&reopened.database, data_keys_sql(&reopened.database))
        .await
        .remove(0);
    let key_id = key_id.expect("key id");
    let raw = db.raw_bytes().await;
    let id_bytes: Vec<u8> = if db.pg.is_some() {
        Uuid::parse_str(&key_id).expect("uuid").as_bytes().to_vec()
    } else {
        key_id.into_bytes()
    };
    assert!(
        support::contains_bytes(&raw, &id_bytes),
        "the scan sees the key rows"
    );
    reopened.events.close().await;
}

#[tokio::test]
async fn sqlite_stores_every_key_wrapped() {
    every_key_is_stored_wrapped(Db::sqlite()).await;
}

#[tokio::test]
async fn postgres_stores_every_key_wrapped() {
    every_key_is_stored_wrapped(Db::postgres()).await;
}

async fn plaintext_of_an_older_version_is_wrapped_on_start(db: Db) {
    let storage = db.open(&KeySettings::default(), true).await.expect("open");
    let owners = [Uuid::now_v7(), Uuid::now_v7()];
    let (room, secret) = create_keys(&storage, &owners).await;
    let keys = plaintext_keys(&storage).await;
    // Put the rows back as a version before envelope encryption wrote them.
    let sql: [&str; 3] = match &storage.database {
        Database::Sqlite(_) => [
            "UPDATE data_keys SET key = $1, wrapped = NULL, kek_id = NULL WHERE owner = $2",
            "UPDATE auth_signing_keys SET private_der = $1, wrapped = NULL, kek_id = NULL",
            "UPDATE auth_secrets SET value = $1, wrapped = NULL, kek_id = NULL",
        ],
        Database::Postgres(_) => [
            "UPDATE neulbi_keys.data_keys SET key = $1, wrapped = NULL, kek_id = NULL WHERE owner = $2::uuid",
            "UPDATE auth_signing_keys SET private_der = $1, wrapped = NULL, kek_id = NULL",
            "UPDATE auth_secrets SET value = $1, wrapped = NULL, kek_id = NULL",
        ],
    };
    let rows = fetch(&storage.database, data_keys_sql(&storage.database)).await;
    let der: Vec<u8> = {
        let (generation, _, wrapped, kek) = fetch(
            &storage.database,
            "SELECT CAST(generation AS TEXT), CAST(NULL AS TEXT), wrapped, kek_id FROM auth_signing_keys",
        )
        .await
        .remove(0);
        storage
            .kek
            .unwrap(
                &kek.expect("kek"),
                &WrapContext::Signing {
                    generation: generation.parse().expect("gen"),
                },
                &wrapped.expect("wrapped"),
            )
            .await
            .expect("der")
            .to_vec()
    };
    macro_rules! legacy {
        ($p:expr) => {{
            for (i, (owner, ..)) in rows.iter().enumerate() {
                sqlx::query(sql[0])
                    .bind(keys[i].clone())
                    .bind(owner)
                    .execute($p)
                    .await
                    .expect("legacy data key");
            }
            sqlx::query(sql[1])
                .bind(der.clone())
                .execute($p)
                .await
                .expect("legacy signing key");
            sqlx::query(sql[2])
                .bind(secret.clone())
                .execute($p)
                .await
                .expect("legacy secret");
        }};
    }
    match &storage.database {
        Database::Sqlite(p) => legacy!(p),
        Database::Postgres(p) => legacy!(p),
    }
    let before = rewrap::status(&storage.database, &storage.kek)
        .await
        .expect("status");
    assert_eq!(before.plaintext(), 4, "{before:?}");
    // A node of this version still reads the unmigrated rows.
    storage.events.close().await;
    drop(storage);
    let reading = db.open(&KeySettings::default(), false).await.expect("open");
    assert_eq!(
        bodies(&reading, &room).await[1],
        personal(owners[1], &format!("secret of {}", owners[1]))
    );
    reading.events.close().await;
    drop(reading);

    // Start-up with migrations wraps them.
    let migrated = db.open(&KeySettings::default(), true).await.expect("open");
    let after = rewrap::status(&migrated.database, &migrated.kek)
        .await
        .expect("status");
    assert_eq!(after.plaintext(), 0, "{after:?}");
    assert_eq!(
        after.keks_in_use().get(migrated.kek.current_id()),
        Some(&4),
        "{after:?}"
    );
    assert_eq!(
        bodies(&migrated, &room).await[0],
        personal(owners[0], &format!("secret of {}", owners[0]))
    );
    let again = stored_secret(&migrated.database, &migrated.kek, "identity_lookup")
        .await
        .expect("secret");
    assert_eq!(again.to_vec(), secret, "the same secret, now wrapped");
    KeyRing::load_or_create(&migrated.database, &migrated.kek, 600)
        .await
        .expect("signing key opens");
    migrated.events.close().await;
    drop(migrated);
    if db.pg.is_none() {
        // SQLite runs with secure_delete: the old cells are zeroed, and closing checkpoints
        // the WAL. (PostgreSQL keeps dead tuples and WAL until they age out; docs say so.)
        let raw = db.raw_bytes().await;
        for k in keys.iter().chain([&secret]) {
            assert!(
                !support::contains_bytes(&raw, k),
                "a migrated key left in the clear"
            );
        }
    }
}

#[tokio::test]
async fn sqlite_plaintext_of_an_older_version_is_wrapped_on_start() {
    plaintext_of_an_older_version_is_wrapped_on_start(Db::sqlite()).await;
}

#[tokio::test]
async fn postgres_plaintext_of_an_older_version_is_wrapped_on_start() {
    plaintext_of_an_older_version_is_wrapped_on_start(Db::postgres()).await;
}

/// Runs a rotation from `old` to `new` and checks the nodes on the way.
async fn rotate(db: &Db, old: &str, new: &str, keys: &KeySettings) {
    let owners = [Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7()];
    let with = |kek: &str, previous: Vec<String>| KeySettings {
        kek: Some(kek.to_owned()),
        previous,
        ..keys.clone()
    };
    let first = db.open(&with(old, vec![]), true).await.expect("open old");
    let (room, secret) = create_keys(&first, &owners).await;
    let old_id = first.kek.current_id().to_owned();
    first.events.close().await;
    drop(first);

    // Step 1: nodes get the new KEK as current and the old one as previous.
    let both = db
        .open(&with(new, vec![old.to_owned()]), true)
        .await
        .expect("open both");
    let new_id = both.kek.current_id().to_owned();
    assert_ne!(new_id, old_id);
    let later = Uuid::now_v7();
    let room2 = write_personal(&both, &[later]).await;
    let status = rewrap::status(&both.database, &both.kek)
        .await
        .expect("status");
    assert!(status.keks_in_use().contains_key(&old_id), "{status:?}");
    assert_eq!(
        status.keks_in_use().get(&new_id),
        Some(&1),
        "a new key is wrapped by the new KEK: {status:?}"
    );
    assert_eq!(
        bodies(&both, &room).await[2],
        personal(owners[2], &format!("secret of {}", owners[2]))
    );

    // Step 2: rewrap everything.
    let bar = indicatif::ProgressBar::hidden();
    let n = rewrap::rewrap(&both.database, &both.kek, &bar)
        .await
        .expect("rewrap");
    assert_eq!(n, 5, "three data keys, a signing key and the secret");
    let status = rewrap::status(&both.database, &both.kek)
        .await
        .expect("status");
    assert_eq!(
        status.keks_in_use().into_keys().collect::<Vec<_>>(),
        vec![new_id.clone()],
        "{status:?}"
    );
    assert_eq!(
        rewrap::rewrap(&both.database, &both.kek, &bar)
            .await
            .expect("again"),
        0,
        "idempotent"
    );
    both.events.close().await;
    drop(both);

    // Step 3: the old KEK can go.
    let only_new = db.open(&with(new, vec![]), true).await.expect("open new");
    assert_eq!(
        bodies(&only_new, &room).await[0],
        personal(owners[0], &format!("secret of {}", owners[0]))
    );
    assert_eq!(
        bodies(&only_new, &room2).await[0],
        personal(later, &format!("secret of {later}"))
    );
    let again = stored_secret(&only_new.database, &only_new.kek, "identity_lookup")
        .await
        .expect("secret");
    assert_eq!(again.to_vec(), secret);
    only_new.events.close().await;
    drop(only_new);

    // A node with only the old KEK is refused at start, naming what it lacks.
    let err = db
        .open(&with(old, vec![]), false)
        .await
        .err()
        .expect("refused");
    assert!(err.contains(&new_id) && err.contains("NEULBI_KEK"), "{err}");
}

#[tokio::test]
async fn sqlite_kek_rotation_rewraps_everything_while_both_keys_open_it() {
    let db = Db::sqlite();
    let (a, b) = (db.kek("a.kek", 1), db.kek("b.kek", 2));
    rotate(&db, &a, &b, &KeySettings::default()).await;
}

#[tokio::test]
async fn postgres_kek_rotation_rewraps_everything_while_both_keys_open_it() {
    let db = Db::postgres();
    let (a, b) = (db.kek("a.kek", 1), db.kek("b.kek", 2));
    rotate(&db, &a, &b, &KeySettings::default()).await;
}

/// KMS settings pointing at moto, and a fresh KMS key there.
async fn kms(moto: &Moto) -> (KeySettings, String) {
    let settings = KeySettings {
        kms_endpoint: Some(moto.endpoint()),
        kms_region: "us-east-1".into(),
        kms_access_key_id: Some("testing".into()),
        kms_secret_access_key: Some("testing".into()),
        ..KeySettings::default()
    };
    let conf = aws_sdk_kms::Config::builder()
        .behavior_version(aws_sdk_kms::config::BehaviorVersion::latest())
        .region(aws_sdk_kms::config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_kms::config::Credentials::new(
            "testing", "testing", None, None, "test",
        ))
        .endpoint_url(moto.endpoint())
        .build();
    let client = aws_sdk_kms::Client::from_conf(conf);
    let key = client.create_key().send().await.expect("create KMS key");
    let id = key.key_metadata().expect("metadata").key_id().to_owned();
    (settings, format!("kms:{id}"))
}

async fn kms_wraps_and_rotates(db: Db) {
    let moto = Moto::start();
    let (settings, first) = kms(&moto).await;
    let (_, second) = kms(&moto).await;
    let local = db.kek("local.kek", 9);
    // Local → KMS, then KMS → another KMS key.
    rotate(&db, &local, &first, &settings).await;
    let storage = db
        .open(
            &KeySettings {
                kek: Some(first.clone()),
                ..settings.clone()
            },
            true,
        )
        .await
        .expect("open kms");
    assert!(storage.kek.current_id().starts_with("kms:"));
    // A KMS-wrapped data key copied onto another owner's row does not open.
    let rows = fetch(&storage.database, data_keys_sql(&storage.database)).await;
    let (_, key_id, wrapped, kek) = rows[0].clone();
    let stolen = storage
        .kek
        .unwrap(
            &kek.expect("kek"),
            &WrapContext::DataKey {
                owner: Uuid::now_v7(),
                key_id: key_id.expect("key id").parse().expect("uuid"),
            },
            &wrapped.expect("wrapped"),
        )
        .await;
    assert!(stolen.is_err(), "the KMS encryption context binds the key");
    storage.events.close().await;
    drop(storage);
    // A rotation between two KMS keys.
    let both = db
        .open(
            &KeySettings {
                kek: Some(second.clone()),
                previous: vec![first.clone()],
                ..settings.clone()
            },
            true,
        )
        .await
        .expect("open second");
    let bar = indicatif::ProgressBar::hidden();
    let n = rewrap::rewrap(&both.database, &both.kek, &bar)
        .await
        .expect("rewrap");
    assert!(n >= 5, "{n}");
    let status = rewrap::status(&both.database, &both.kek)
        .await
        .expect("status");
    assert_eq!(
        status.keks_in_use().into_keys().collect::<Vec<_>>(),
        vec![second.clone()]
    );
    both.events.close().await;
}

#[tokio::test]
async fn sqlite_kms_wraps_keys_and_rotates_through_moto() {
    kms_wraps_and_rotates(Db::sqlite()).await;
}

#[tokio::test]
async fn postgres_kms_wraps_keys_and_rotates_through_moto() {
    kms_wraps_and_rotates(Db::postgres()).await;
}

#[tokio::test]
async fn a_lost_key_file_is_refused_at_start_and_no_decoy_is_left() {
    let db = Db::sqlite();
    let storage = db.open(&KeySettings::default(), true).await.expect("open");
    create_keys(&storage, &[Uuid::now_v7()]).await;
    storage.events.close().await;
    drop(storage);
    let file: PathBuf = db.dir.path().join("neulbi.kek");
    std::fs::remove_file(&file).expect("lose the key file");
    let err = db
        .open(&KeySettings::default(), true)
        .await
        .err()
        .expect("refused");
    assert!(err.contains("restore the key file"), "{err}");
    assert!(!file.exists(), "no freshly generated decoy key file");
}
