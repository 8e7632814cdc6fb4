//! One contract for every `BlobStore` backend: the local filesystem and S3 (against a real
//! S3-compatible server, moto, started by the test).

use crate::support;

use crate::support::moto::Moto;
use neulbi::blob::fs::FsBlobStore;
use neulbi::blob::s3::S3BlobStore;
use neulbi::blob::{BlobError, BlobStore};
use std::time::{Duration, SystemTime};

async fn contract(store: &dyn BlobStore) {
    assert!(store.list().await.expect("list").is_empty());
    assert_eq!(store.get("a.jpg").await.expect("get"), None);

    store
        .put("a.jpg", b"one".to_vec(), "image/jpeg")
        .await
        .expect("put");
    assert_eq!(
        store.get("a.jpg").await.expect("get").as_deref(),
        Some(&b"one"[..])
    );
    store
        .put("a.jpg", b"two".to_vec(), "image/jpeg")
        .await
        .expect("replace");
    assert_eq!(
        store.get("a.jpg").await.expect("get").as_deref(),
        Some(&b"two"[..])
    );
    store
        .put("b-t.jpg", vec![0; 70_000], "image/jpeg")
        .await
        .expect("put b");

    let mut listed = store.list().await.expect("list");
    listed.sort_by(|x, y| x.key.cmp(&y.key));
    let keys: Vec<&str> = listed.iter().map(|b| b.key.as_str()).collect();
    assert_eq!(keys, ["a.jpg", "b-t.jpg"]);
    let now = SystemTime::now();
    for blob in &listed {
        let age = now.duration_since(blob.modified).unwrap_or_default();
        assert!(age < Duration::from_secs(120), "{blob:?}");
    }

    store.delete("a.jpg").await.expect("delete");
    assert_eq!(store.get("a.jpg").await.expect("get"), None);
    store.delete("a.jpg").await.expect("deleting again is fine");
    assert_eq!(store.list().await.expect("list").len(), 1);

    for bad in ["../escape", "a/b", ".hidden", ""] {
        assert!(matches!(
            store.put(bad, b"x".to_vec(), "image/jpeg").await,
            Err(BlobError::InvalidKey)
        ));
        assert!(matches!(store.get(bad).await, Err(BlobError::InvalidKey)));
        assert!(matches!(
            store.delete(bad).await,
            Err(BlobError::InvalidKey)
        ));
        assert!(matches!(store.url(bad).await, Err(BlobError::InvalidKey)));
    }
    assert!(store.url("b-t.jpg").await.expect("url").contains("b-t.jpg"));
}

#[tokio::test]
async fn filesystem_backend_meets_the_contract() {
    let dir = tempfile::tempdir().expect("dir");
    let store = FsBlobStore::open(dir.path().join("images"), "http://node.test/").expect("open");
    contract(&store).await;
    assert!(store.served_by_node());
    assert_eq!(
        store.url("b-t.jpg").await.expect("url"),
        "http://node.test/images/b-t.jpg"
    );
    // Nothing outside the directory was touched.
    let entries: Vec<_> = std::fs::read_dir(dir.path()).expect("dir").collect();
    assert_eq!(entries.len(), 1);
}

#[tokio::test]
async fn s3_backend_meets_the_contract_and_presigns() {
    let moto = Moto::start();
    let store = S3BlobStore::new(&moto.settings("contract")).expect("client");
    store.ensure_bucket().await.expect("bucket");
    contract(&store).await;
    assert!(!store.served_by_node());

    let url = store.url("b-t.jpg").await.expect("url");
    assert!(url.contains("X-Amz-Signature="), "{url}");
    assert!(url.contains("X-Amz-Expires=300"), "{url}");
    let path = url
        .strip_prefix(&moto.endpoint())
        .expect("path-style URL at the endpoint");
    assert!(path.starts_with("/contract/b-t.jpg?"), "{path}");
    let fetched = support::raw::request(moto.addr, "GET", path, &[], b"").await;
    assert_eq!(fetched.status, 200);
    assert_eq!(fetched.body.len(), 70_000);
}

#[tokio::test]
async fn s3_backend_reports_an_unreachable_server_as_unavailable() {
    let mut moto = Moto::start();
    let store = S3BlobStore::new(&moto.settings("down")).expect("client");
    store.ensure_bucket().await.expect("bucket");
    moto.stop();
    let started = std::time::Instant::now();
    assert!(matches!(
        store.put("a.jpg", b"x".to_vec(), "image/jpeg").await,
        Err(BlobError::Unavailable(_))
    ));
    assert!(matches!(store.list().await, Err(BlobError::Unavailable(_))));
    assert!(started.elapsed() < Duration::from_secs(30));
}

#[test]
fn s3_backend_needs_credentials() {
    let settings = neulbi::blob::S3Settings::default();
    assert!(matches!(
        S3BlobStore::new(&settings),
        Err(BlobError::Config(_))
    ));
}
