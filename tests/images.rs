//! Profile images over HTTP, black-box: upload, replace, remove and serve on the filesystem
//! backend and on S3 (moto), every kind of bad input, concurrent uploads, the sweeper, and
//! erasure deleting the blobs. The sweeper is also driven directly on both log backends,
//! with the `images` projector run by hand: it follows the read model (and reads no
//! events), and never trusts a read model that trails the log.

use crate::support;

use crate::support::Backend;
use crate::support::http::{post_json, request};
use crate::support::raw::{self, RawResponse, multipart};
use crate::support::scenario::{as_user, system};
use futures::stream::BoxStream;
use neulbi::actors::{Registry, RegistryConfig};
use neulbi::blob::fs::FsBlobStore;
use neulbi::blob::{ImageSettings, SharedBlobStore, SweepError, Sweeper};
use neulbi::config::Config;
use neulbi::privacy::erasure::erase_user;
use neulbi::projections::db::read_model_url;
use neulbi::projections::{ProjectionError, ReadDb, runtime};
use neulbi::startup::Application;
use neulbi::store::{
    AppendResult, Direction, EventData, EventStore, ExpectedVersion, Metadata, Positions,
    RecordedEvent, SharedStore, Storage, StoreError,
};
use neulbi_domain::user::{UserCommand, UserDecider};
use neulbi_domain::{Role, StreamKind, StreamName, UserId};
use serde_json::json;
use std::io::Cursor;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};
use uuid::Uuid;

struct App {
    addr: std::net::SocketAddr,
    app_images: actix_web::web::Data<neulbi::blob::Images>,
    state: actix_web::web::Data<neulbi::state::AppState>,
    handle: actix_web::dev::ServerHandle,
    dir: tempfile::TempDir,
}

impl App {
    fn blob_dir(&self) -> PathBuf {
        self.dir.path().join("images")
    }

    fn blob_files(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.blob_dir())
            .map(|d| {
                d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    /// A sweeper over this node's blobs and read models, as `serve` runs it.
    fn sweeper(&self) -> Sweeper {
        Sweeper::new(
            self.app_images.blobs().clone(),
            self.state.store.clone(),
            self.state.read.clone(),
            self.app_images.settings(),
        )
    }

    async fn image_events(&self, user: UserId) -> usize {
        let stream = StreamName::new(StreamKind::User, user.as_uuid());
        self.state
            .store
            .read_stream(&stream, 0, Direction::Forward, 1000)
            .await
            .expect("read")
            .iter()
            .filter(|e| e.event_type.starts_with("ProfileImage"))
            .count()
    }
}

async fn spawn_with(tweak: impl FnOnce(&mut Config)) -> App {
    let dir = tempfile::tempdir().expect("dir");
    let mut config = Config {
        listen: "127.0.0.1:0".parse().expect("addr"),
        data_dir: dir.path().to_owned(),
        ..Config::default()
    };
    config.images.max_upload_bytes = 256 * 1024;
    config.images.max_pixels = 4_000_000;
    config.images.sweep_interval_secs = 0;
    tweak(&mut config);
    let app = Application::build(&config).await.expect("app");
    let (addr, handle, state, app_images) =
        (app.local_addr(), app.handle(), app.state(), app.images());
    actix_rt::spawn(app.run_until_stopped());
    App {
        addr,
        app_images,
        state,
        handle,
        dir,
    }
}

async fn signup(addr: std::net::SocketAddr, email: &str) -> (String, UserId) {
    let r = post_json(
        addr,
        "/auth/signup",
        &json!({ "email": email, "password": "a long password", "nickname": "pic" }),
        &[],
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let token = r.json()["access_token"].as_str().expect("token").to_owned();
    let me = me(addr, &token).await;
    let id: Uuid = me["id"].as_str().expect("id").parse().expect("uuid");
    (token, UserId(id))
}

async fn me(addr: std::net::SocketAddr, token: &str) -> serde_json::Value {
    let r = request(
        addr,
        "GET",
        "/users/me",
        &[("Authorization", &format!("Bearer {token}"))],
        "",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()
}

async fn upload_parts(
    addr: std::net::SocketAddr,
    token: &str,
    parts: &[(&str, &str, &str, &[u8])],
) -> RawResponse {
    let (body, content_type) = multipart(parts);
    raw::request(
        addr,
        "POST",
        "/users/me/image",
        &[
            ("Authorization", &format!("Bearer {token}")),
            ("Content-Type", &content_type),
        ],
        &body,
    )
    .await
}

async fn upload(addr: std::net::SocketAddr, token: &str, bytes: &[u8]) -> RawResponse {
    upload_parts(addr, token, &[("image", "me.png", "image/png", bytes)]).await
}

fn encode(w: u32, h: u32, format: image::ImageFormat) -> Vec<u8> {
    let img = image::DynamicImage::ImageRgb8(image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([(x % 256) as u8, (y % 256) as u8, 90])
    }));
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, format).expect("encode");
    out.into_inner()
}

/// A JPEG carrying an EXIF segment with a GPS-looking marker right after SOI.
fn jpeg_with_exif(marker: &[u8]) -> Vec<u8> {
    let jpeg = encode(300, 200, image::ImageFormat::Jpeg);
    let mut payload = b"Exif\0\0".to_vec();
    payload.extend_from_slice(marker);
    let len = u16::try_from(payload.len() + 2).expect("short segment");
    let mut out = jpeg[..2].to_vec();
    out.extend_from_slice(&[0xFF, 0xE1]);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&payload);
    out.extend_from_slice(&jpeg[2..]);
    out
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A tiny real PNG whose IHDR claims `w`×`h` pixels (with a valid CRC).
fn png_claiming(w: u32, h: u32) -> Vec<u8> {
    let mut png = encode(8, 8, image::ImageFormat::Png);
    // Signature (8) + length (4), then "IHDR" + width + height at 12..20.
    png[16..20].copy_from_slice(&w.to_be_bytes());
    png[20..24].copy_from_slice(&h.to_be_bytes());
    let crc = crc32(&png[12..29]);
    png[29..33].copy_from_slice(&crc.to_be_bytes());
    png
}

fn assert_error(r: &RawResponse, status: u16, code: &str) {
    assert_eq!(r.status, status, "{}", String::from_utf8_lossy(&r.body));
    let body = r.json();
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(body["error"]["message"].is_string(), "{body}");
}

fn path_of(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    rest.find('/').map_or("/", |i| &rest[i..])
}

#[actix_rt::test]
async fn upload_replace_serve_and_remove_on_the_filesystem() {
    let app = spawn_with(|_| {}).await;
    let (token, user) = signup(app.addr, "pic.fs@example.com").await;
    assert!(me(app.addr, &token).await["image"].is_null());

    let marker = b"GPS-SECRET-37.5665N-126.9780E";
    let r = upload(app.addr, &token, &jpeg_with_exif(marker)).await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let first = me(app.addr, &token).await["image"].clone();
    assert_eq!(first, r.json()["image"]);
    let url = first["url"].as_str().expect("url");
    assert!(
        url.starts_with("http://127.0.0.1:") && url.contains("/images/"),
        "{url}"
    );

    let served = raw::request(app.addr, "GET", path_of(url), &[], b"").await;
    assert_eq!(served.status, 200);
    assert_eq!(served.header("content-type").as_deref(), Some("image/jpeg"));
    assert!(
        served
            .header("cache-control")
            .expect("cache")
            .contains("max-age")
    );
    assert_eq!(
        served.header("x-content-type-options").as_deref(),
        Some("nosniff")
    );
    assert!(
        !served.body.windows(marker.len()).any(|w| w == marker),
        "EXIF survived"
    );
    assert!(
        !served.body.windows(4).any(|w| w == b"Exif"),
        "EXIF segment survived"
    );
    let decoded = image::load_from_memory(&served.body).expect("a JPEG");
    assert_eq!((decoded.width(), decoded.height()), (300, 200));
    let thumb = raw::request(
        app.addr,
        "GET",
        path_of(first["thumbnail_url"].as_str().expect("thumb")),
        &[],
        b"",
    )
    .await;
    let thumb = image::load_from_memory(&thumb.body).expect("thumbnail");
    assert_eq!((thumb.width(), thumb.height()), (256, 256));
    assert_eq!(app.blob_files().len(), 2);

    // Replacing deletes the old blobs once the new event is committed.
    let r = upload(app.addr, &token, &encode(40, 40, image::ImageFormat::Png)).await;
    assert_eq!(r.status, 201);
    let old = raw::request(app.addr, "GET", path_of(url), &[], b"").await;
    assert_eq!(old.status, 404);
    assert_eq!(old.json()["error"]["code"], "not_found");
    assert_eq!(app.blob_files().len(), 2);
    // WebP and GIF are accepted too.
    for format in [image::ImageFormat::WebP, image::ImageFormat::Gif] {
        let r = upload(app.addr, &token, &encode(20, 30, format)).await;
        assert_eq!(
            r.status,
            201,
            "{format:?}: {}",
            String::from_utf8_lossy(&r.body)
        );
    }
    assert_eq!(app.blob_files().len(), 2);

    let r = raw::request(
        app.addr,
        "DELETE",
        "/users/me/image",
        &[("Authorization", &format!("Bearer {token}"))],
        b"",
    )
    .await;
    assert_eq!(r.status, 204);
    assert!(me(app.addr, &token).await["image"].is_null());
    assert!(app.blob_files().is_empty());
    assert_eq!(app.image_events(user).await, 5);

    // Unknown keys and path tricks are plain 404s in the JSON shape.
    for path in ["/images/nope.jpg", "/images/..%2Fneulbi.db"] {
        let r = raw::request(app.addr, "GET", path, &[], b"").await;
        assert_error(&r, 404, "not_found");
    }
    // No token: 401 in the JSON shape.
    let (body, ct) = multipart(&[("image", "a.png", "image/png", b"x")]);
    let r = raw::request(
        app.addr,
        "POST",
        "/users/me/image",
        &[("Content-Type", &ct)],
        &body,
    )
    .await;
    assert_eq!(r.status, 401);
    assert!(r.json()["error"]["code"].is_string());
    app.handle.stop(true).await;
}

#[actix_rt::test]
async fn bad_uploads_are_refused_and_leave_nothing_behind() {
    let app = spawn_with(|_| {}).await;
    let (token, user) = signup(app.addr, "pic.bad@example.com").await;
    let png = encode(64, 64, image::ImageFormat::Png);

    // Not an image, even when it says it is.
    let r = upload(app.addr, &token, b"just some text, not a picture").await;
    assert_error(&r, 415, "unsupported_image_type");
    // A polyglot that starts as HTML and carries a PNG inside.
    let mut html_first = b"<html><script>alert(1)</script>".to_vec();
    html_first.extend_from_slice(&png);
    let r = upload(app.addr, &token, &html_first).await;
    assert_error(&r, 415, "unsupported_image_type");
    // PNG magic bytes in front of something else.
    let mut fake = png[..8].to_vec();
    fake.extend_from_slice(b"<?php system($_GET['c']); ?>");
    let r = upload(app.addr, &token, &fake).await;
    assert_error(&r, 422, "invalid_image");
    // Truncated.
    let r = upload(app.addr, &token, &png[..png.len() / 2]).await;
    assert_error(&r, 422, "invalid_image");
    let jpeg = encode(64, 64, image::ImageFormat::Jpeg);
    let r = upload(app.addr, &token, &jpeg[..jpeg.len() / 3]).await;
    assert_error(&r, 422, "invalid_image");
    // A header claiming 30000×30000 pixels: refused from the header, before any allocation.
    let r = upload(app.addr, &token, &png_claiming(30_000, 30_000)).await;
    assert_error(&r, 422, "image_too_large");
    // Over the size limit.
    let mut big = png.clone();
    big.resize(300 * 1024, 0);
    let r = upload(app.addr, &token, &big).await;
    assert_error(&r, 413, "too_large");
    // The image under another part name, or no parts at all.
    let r = upload_parts(app.addr, &token, &[("avatar", "a.png", "image/png", &png)]).await;
    assert_error(&r, 400, "missing_part");
    let r = upload_parts(app.addr, &token, &[]).await;
    assert_error(&r, 400, "missing_part");
    // Not multipart at all.
    let r = raw::request(
        app.addr,
        "POST",
        "/users/me/image",
        &[
            ("Authorization", &format!("Bearer {token}")),
            ("Content-Type", "image/png"),
        ],
        &png,
    )
    .await;
    assert_error(&r, 400, "invalid_multipart");

    assert_eq!(app.image_events(user).await, 0);
    assert!(app.blob_files().is_empty(), "{:?}", app.blob_files());
    assert!(me(app.addr, &token).await["image"].is_null());

    // A polyglot that is a valid PNG with a script and a zip appended: accepted, but what is
    // stored is a re-encoded picture without the payload.
    let mut trailing = png.clone();
    trailing.extend_from_slice(b"<script>alert(document.cookie)</script>PK\x03\x04payload");
    let r = upload(app.addr, &token, &trailing).await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    for file in app.blob_files() {
        let bytes = std::fs::read(app.blob_dir().join(file)).expect("blob");
        assert!(!bytes.windows(8).any(|w| w == b"<script>"));
        assert!(!bytes.windows(4).any(|w| w == b"PK\x03\x04"));
    }
    app.handle.stop(true).await;
}

#[actix_rt::test]
async fn concurrent_uploads_one_wins_and_nothing_leaks() {
    let app = spawn_with(|_| {}).await;
    let (token, user) = signup(app.addr, "pic.race@example.com").await;
    let (a, b) = (
        encode(120, 80, image::ImageFormat::Png),
        encode(80, 120, image::ImageFormat::Png),
    );
    for _ in 0..3 {
        let (ra, rb) = tokio::join!(upload(app.addr, &token, &a), upload(app.addr, &token, &b));
        assert_eq!((ra.status, rb.status), (201, 201));
        let current = me(app.addr, &token).await["image"].clone();
        assert!(
            current == ra.json()["image"] || current == rb.json()["image"],
            "{current}"
        );
        // Exactly the current image and its thumbnail remain.
        let files = app.blob_files();
        assert_eq!(files.len(), 2, "{files:?}");
        for url in [&current["url"], &current["thumbnail_url"]] {
            let key = url.as_str().expect("url").rsplit('/').next().expect("key");
            assert!(files.iter().any(|f| f == key), "{key} not in {files:?}");
        }
    }
    assert_eq!(app.image_events(user).await, 6);
    app.handle.stop(true).await;
}

#[actix_rt::test]
async fn sweeper_deletes_only_old_unreferenced_blobs() {
    let app = spawn_with(|_| {}).await;
    let (token, _) = signup(app.addr, "pic.sweep@example.com").await;
    let r = upload(app.addr, &token, &encode(50, 50, image::ImageFormat::Png)).await;
    assert_eq!(r.status, 201);
    // A crash between "store blob" and "append event" leaves an orphan.
    app.app_images
        .blobs()
        .put("orphan.jpg", b"left behind".to_vec(), "image/jpeg")
        .await
        .expect("put");
    let report = app.sweeper().sweep(SystemTime::now()).await.expect("sweep");
    assert_eq!(
        (report.referenced, report.deleted, report.spared),
        (2, 0, 1)
    );
    let later =
        SystemTime::now() + Duration::from_secs(app.app_images.settings().sweep_grace_secs + 1);
    let report = app.sweeper().sweep(later).await.expect("sweep");
    assert_eq!(
        (report.referenced, report.deleted, report.spared),
        (2, 1, 0)
    );
    assert_eq!(app.blob_files().len(), 2);
    assert!(!app.blob_files().contains(&"orphan.jpg".to_owned()));
    app.handle.stop(true).await;
}

#[actix_rt::test]
async fn erasure_deletes_the_users_images() {
    let app = spawn_with(|_| {}).await;
    let (token, _) = signup(app.addr, "pic.erase@example.com").await;
    let (other_token, _) = signup(app.addr, "pic.keep@example.com").await;
    for t in [&token, &other_token] {
        let r = upload(app.addr, t, &encode(50, 50, image::ImageFormat::Png)).await;
        assert_eq!(r.status, 201);
    }
    assert_eq!(app.blob_files().len(), 4);
    let r = request(
        app.addr,
        "DELETE",
        "/users/me",
        &[("Authorization", &format!("Bearer {token}"))],
        "",
    )
    .await;
    assert_eq!(r.status, 204, "{}", r.body);
    assert_eq!(app.blob_files().len(), 2);
    assert!(me(app.addr, &other_token).await["image"].is_object());
    // The sweep agrees: the erased user references nothing, the other user keeps theirs.
    let far = SystemTime::now() + Duration::from_secs(10 * 86_400);
    let report = app.sweeper().sweep(far).await.expect("sweep");
    assert_eq!((report.referenced, report.deleted), (2, 0));
    app.handle.stop(true).await;
}

#[actix_rt::test]
async fn operator_erasure_from_the_cli_deletes_the_images_too() {
    let app = spawn_with(|_| {}).await;
    let (token, user) = signup(app.addr, "pic.cli@example.com").await;
    let r = upload(app.addr, &token, &encode(50, 50, image::ImageFormat::Png)).await;
    assert_eq!(r.status, 201);
    assert_eq!(app.blob_files().len(), 2);
    let config = Config {
        data_dir: app.dir.path().to_owned(),
        ..Config::default()
    };
    let storage = neulbi::store::open_storage(&config.database_url(), config.store_limits(), false)
        .await
        .expect("storage");
    let mut out = Vec::new();
    neulbi::cli::users_erase_with_images(&storage, &config, &user.to_string(), true, &mut out)
        .await
        .expect("erase");
    assert!(String::from_utf8_lossy(&out).contains("erased"));
    assert!(app.blob_files().is_empty(), "{:?}", app.blob_files());
    // Without --yes nothing happens.
    let refused =
        neulbi::cli::users_erase_with_images(&storage, &config, &user.to_string(), false, &mut out)
            .await;
    assert!(refused.is_err());
    storage.events.close().await;
    app.handle.stop(true).await;
}

#[actix_rt::test]
async fn s3_backend_end_to_end_and_unavailable_is_503_without_an_event() {
    let mut moto = support::moto::Moto::start();
    let settings = moto.settings("neulbi-images-test");
    let app = spawn_with(move |c| {
        c.images.backend = neulbi::blob::BlobBackend::S3;
        c.images.s3 = settings;
    })
    .await;
    let (token, user) = signup(app.addr, "pic.s3@example.com").await;
    let r = upload(app.addr, &token, &encode(90, 60, image::ImageFormat::Png)).await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let image = me(app.addr, &token).await["image"].clone();
    let url = image["url"].as_str().expect("url");
    assert!(url.starts_with(&moto.endpoint()), "{url}");
    assert!(url.contains("X-Amz-Signature="), "{url}");
    let fetched = raw::request(moto.addr, "GET", path_of(url), &[], b"").await;
    assert_eq!(fetched.status, 200);
    let decoded = image::load_from_memory(&fetched.body).expect("jpeg");
    assert_eq!((decoded.width(), decoded.height()), (90, 60));
    // The node does not serve S3 blobs itself.
    let key = path_of(url)
        .split('?')
        .next()
        .and_then(|p| p.rsplit('/').next())
        .expect("key");
    let r = raw::request(app.addr, "GET", &format!("/images/{key}"), &[], b"").await;
    assert_error(&r, 404, "not_found");
    // Replacing deletes the old object.
    let r = upload(app.addr, &token, &encode(30, 30, image::ImageFormat::Png)).await;
    assert_eq!(r.status, 201);
    assert_eq!(app.app_images.blobs().list().await.expect("list").len(), 2);
    assert_eq!(app.image_events(user).await, 2);

    moto.stop();
    let r = upload(app.addr, &token, &encode(30, 30, image::ImageFormat::Png)).await;
    assert_error(&r, 503, "unavailable");
    assert_eq!(app.image_events(user).await, 2, "no event appended");
    app.handle.stop(true).await;
}

/// A TCP relay in front of an S3 server that can stall: while stalled, it accepts
/// connections and swallows requests without ever answering (a hung storage endpoint).
struct StallingRelay {
    addr: std::net::SocketAddr,
    stalled: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl StallingRelay {
    async fn start(upstream: std::net::SocketAddr) -> Self {
        use std::sync::atomic::Ordering;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind relay");
        let addr = listener.local_addr().expect("addr");
        let stalled = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = std::sync::Arc::clone(&stalled);
        actix_rt::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let flag = std::sync::Arc::clone(&flag);
                actix_rt::spawn(async move {
                    let Ok(outbound) = tokio::net::TcpStream::connect(upstream).await else {
                        return;
                    };
                    let (mut ri, mut wi) = inbound.into_split();
                    let (mut ro, mut wo) = outbound.into_split();
                    let up_flag = std::sync::Arc::clone(&flag);
                    let up = async move {
                        let mut buf = vec![0u8; 16 * 1024];
                        while let Ok(n) = ri.read(&mut buf).await {
                            if n == 0 {
                                break;
                            }
                            // Stalled: the request goes nowhere, and nothing ever answers.
                            while up_flag.load(Ordering::SeqCst) {
                                tokio::time::sleep(Duration::from_millis(50)).await;
                            }
                            if wo.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    };
                    let down = async move {
                        let mut buf = vec![0u8; 16 * 1024];
                        while let Ok(n) = ro.read(&mut buf).await {
                            if n == 0 || wi.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    };
                    tokio::join!(up, down);
                });
            }
        });
        Self { addr, stalled }
    }
}

#[actix_rt::test]
async fn a_stalled_s3_bounds_the_upload_with_a_503_and_records_nothing() {
    let moto = support::moto::Moto::start();
    let relay = StallingRelay::start(moto.addr).await;
    let mut settings = moto.settings("neulbi-images-stall");
    settings.endpoint = Some(format!("http://{}", relay.addr));
    settings.timeout_secs = 2;
    let app = spawn_with(move |c| {
        c.images.backend = neulbi::blob::BlobBackend::S3;
        c.images.s3 = settings;
    })
    .await;
    let (token, user) = signup(app.addr, "pic.stall@example.com").await;
    let r = upload(app.addr, &token, &encode(40, 40, image::ImageFormat::Png)).await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));

    relay
        .stalled
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let started = std::time::Instant::now();
    let r = upload(app.addr, &token, &encode(30, 30, image::ImageFormat::Png)).await;
    let took = started.elapsed();
    assert_error(&r, 503, "unavailable");
    // A bound on the hang (the configured 2 s per S3 call, a retry or two), not a benchmark.
    assert!(
        took < Duration::from_secs(15),
        "the upload hung for {took:?}"
    );
    assert_eq!(
        app.image_events(user).await,
        1,
        "no event for the failed upload"
    );

    // The endpoint recovers: uploads work again.
    relay
        .stalled
        .store(false, std::sync::atomic::Ordering::SeqCst);
    let r = upload(app.addr, &token, &encode(20, 20, image::ImageFormat::Png)).await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    app.handle.stop(true).await;
}

/// The log as a sweeper sees it, counting every read of events: a sweep needs the head's
/// position and nothing else from the log.
struct CountingStore {
    inner: SharedStore,
    event_reads: AtomicUsize,
}

impl CountingStore {
    fn new(inner: SharedStore) -> Arc<Self> {
        Arc::new(Self {
            inner,
            event_reads: AtomicUsize::new(0),
        })
    }

    fn read(&self) {
        self.event_reads.fetch_add(1, Ordering::SeqCst);
    }

    fn event_reads(&self) -> usize {
        self.event_reads.load(Ordering::SeqCst)
    }
}

#[async_trait::async_trait]
impl EventStore for CountingStore {
    async fn append(
        &self,
        stream: &StreamName,
        expected: ExpectedVersion,
        events: Vec<EventData>,
    ) -> Result<AppendResult, StoreError> {
        self.inner.append(stream, expected, events).await
    }

    async fn read_stream(
        &self,
        stream: &StreamName,
        from_version: u64,
        direction: Direction,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.read();
        self.inner
            .read_stream(stream, from_version, direction, limit)
            .await
    }

    async fn read_all(&self, from: u64, limit: usize) -> Result<Vec<RecordedEvent>, StoreError> {
        self.read();
        self.inner.read_all(from, limit).await
    }

    async fn read_all_backward(
        &self,
        before: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.read();
        self.inner.read_all_backward(before, limit).await
    }

    async fn read_all_sealed(
        &self,
        from: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.read();
        self.inner.read_all_sealed(from, limit).await
    }

    fn data_keys(&self) -> Option<Arc<dyn neulbi::store::DataKeys>> {
        self.inner.data_keys()
    }

    fn positions(&self) -> Positions {
        self.inner.positions()
    }

    async fn head_position(&self) -> Result<Option<u64>, StoreError> {
        self.inner.head_position().await
    }

    fn subscribe_all(&self, from: u64) -> BoxStream<'static, Result<RecordedEvent, StoreError>> {
        self.read();
        self.inner.subscribe_all(from)
    }

    fn head_changes(&self) -> tokio::sync::watch::Receiver<Option<u64>> {
        self.inner.head_changes()
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.inner.ping().await
    }

    async fn close(&self) {
        self.inner.close().await
    }
}

/// A log, its read models and a blob directory, with no projector running: each test
/// projects by hand ([`runtime::catch_up`]), so it decides how far the read model trails.
struct Direct {
    storage: Storage,
    read: ReadDb,
    users: Registry<UserDecider>,
    blobs: SharedBlobStore,
    _dir: tempfile::TempDir,
    _backend: Backend,
}

async fn direct(b: Backend) -> Direct {
    let storage = b.storage(false).await;
    let read = ReadDb::connect(&read_model_url(&b.url))
        .await
        .expect("read db")
        .with_keys(Some(storage.keys.clone()));
    runtime::prepare(&read).await.expect("read-model tables");
    let users = Registry::new(storage.events.clone(), RegistryConfig::default());
    let dir = tempfile::tempdir().expect("dir");
    let blobs: SharedBlobStore = Arc::new(
        FsBlobStore::open(dir.path().join("images"), "http://node.test").expect("blob dir"),
    );
    Direct {
        storage,
        read,
        users,
        blobs,
        _dir: dir,
        _backend: b,
    }
}

impl Direct {
    async fn register(&self) -> UserId {
        let id = UserId(Uuid::now_v7());
        let email = format!("{id}@example.com");
        let register = UserCommand::Register {
            user_id: id,
            provider: "local".into(),
            subject: email.clone(),
            email,
            nickname: "pic".into(),
            role: Role::Client,
        };
        self.users
            .execute(id.0, register, system(), Metadata::default())
            .await
            .expect("register");
        id
    }

    async fn run(&self, user: UserId, command: UserCommand) {
        self.users
            .execute(
                user.0,
                command,
                as_user(user, Role::Client),
                Metadata::default(),
            )
            .await
            .expect("command");
    }

    /// Stores `{name}.jpg` and `{name}-t.jpg` and records them as `user`'s image, like an
    /// upload, but deletes nothing it replaces: here only the sweeper deletes.
    async fn set_image(&self, user: UserId, name: &str) {
        let (image, thumbnail) = (format!("{name}.jpg"), format!("{name}-t.jpg"));
        for key in [&image, &thumbnail] {
            self.blobs
                .put(key, b"jpeg".to_vec(), "image/jpeg")
                .await
                .expect("put");
        }
        self.run(
            user,
            UserCommand::ChangeProfileImage {
                image_key: image,
                thumbnail_key: thumbnail,
            },
        )
        .await;
    }

    async fn project(&self) {
        runtime::catch_up(&self.storage.events, &self.read)
            .await
            .expect("project");
    }

    fn sweeper(&self, store: SharedStore, read: ReadDb, wait_secs: u64) -> Sweeper {
        let settings = ImageSettings {
            sweep_wait_secs: wait_secs,
            ..ImageSettings::default()
        };
        Sweeper::new(self.blobs.clone(), store, read, &settings)
    }

    async fn blob_keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = self
            .blobs
            .list()
            .await
            .expect("list")
            .into_iter()
            .map(|b| b.key)
            .collect();
        keys.sort();
        keys
    }
}

/// Past every grace period.
fn far() -> SystemTime {
    SystemTime::now() + Duration::from_secs(10 * 86_400)
}

async fn sweep_follows_the_read_model_not_the_log(b: Backend) {
    let w = direct(b).await;
    let [replaced, removed, deactivated, erased, kept] = [
        w.register().await,
        w.register().await,
        w.register().await,
        w.register().await,
        w.register().await,
    ];
    w.set_image(replaced, "a1").await;
    w.set_image(replaced, "a2").await;
    w.set_image(removed, "b1").await;
    w.run(removed, UserCommand::RemoveProfileImage).await;
    w.set_image(deactivated, "c1").await;
    w.run(deactivated, UserCommand::Deactivate).await;
    w.set_image(erased, "d1").await;
    erase_user(
        &w.users,
        &w.storage.keys,
        &w.storage.database,
        erased,
        as_user(erased, Role::Client),
        Metadata::default(),
    )
    .await
    .expect("erase");
    w.set_image(kept, "e1").await;
    w.blobs
        .put("orphan.jpg", b"left behind".to_vec(), "image/jpeg")
        .await
        .expect("put");
    w.project().await;

    let log = CountingStore::new(w.storage.events.clone());
    let sweeper = w.sweeper(log.clone(), w.read.clone(), 5);
    let report = sweeper.sweep(SystemTime::now()).await.expect("sweep");
    assert_eq!(
        (report.referenced, report.deleted, report.spared),
        (4, 0, 9),
        "within the grace period nothing goes"
    );
    let report = sweeper.sweep(far()).await.expect("sweep");
    assert_eq!(
        (report.referenced, report.deleted, report.spared),
        (4, 9, 0)
    );
    assert_eq!(
        w.blob_keys().await,
        ["a2-t.jpg", "a2.jpg", "e1-t.jpg", "e1.jpg"],
        "only the current images of active users remain"
    );
    assert_eq!(
        log.event_reads(),
        0,
        "a sweep reads the read model, not the log"
    );

    // Without data keys every stored key would read as erased, i.e. unreferenced: the sweep
    // refuses instead of deleting everything.
    let keyless = w.sweeper(log.clone(), w.read.clone().with_keys(None), 5);
    let refused = keyless.sweep(far()).await;
    assert!(
        matches!(
            refused,
            Err(SweepError::ReadModel(ProjectionError::Keyless))
        ),
        "{refused:?}"
    );
    assert_eq!(w.blob_keys().await.len(), 4);
}

async fn sweep_never_trusts_a_trailing_read_model(b: Backend) {
    let w = direct(b).await;
    let user = w.register().await;
    w.set_image(user, "a1").await;
    w.project().await;
    // Recorded but not projected: the read model still names a1 only.
    w.set_image(user, "a2").await;
    w.blobs
        .put("orphan.jpg", b"left behind".to_vec(), "image/jpeg")
        .await
        .expect("put");
    let all = ["a1-t.jpg", "a1.jpg", "a2-t.jpg", "a2.jpg", "orphan.jpg"];

    let impatient = w.sweeper(w.storage.events.clone(), w.read.clone(), 0);
    match impatient.sweep(far()).await {
        Err(SweepError::Behind { position, needed }) => {
            assert!(position < needed, "{position} < {needed}");
        }
        other => panic!("a trailing read model must stop the sweep: {other:?}"),
    }
    assert_eq!(w.blob_keys().await, all, "nothing deleted");

    // A sweep that may wait sees the projector catch up, then trusts the read model.
    let patient = w.sweeper(w.storage.events.clone(), w.read.clone(), 30);
    let (report, ()) = tokio::join!(patient.sweep(far()), async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        w.project().await;
    });
    let report = report.expect("sweep after catching up");
    assert_eq!((report.referenced, report.deleted), (2, 3));
    assert_eq!(w.blob_keys().await, ["a2-t.jpg", "a2.jpg"]);
}

macro_rules! both {
    ($($case:ident),*) => {
        mod sqlite { $( #[actix_rt::test] async fn $case() { super::$case(crate::support::Backend::sqlite().await).await; } )* }
        mod postgres { $( #[actix_rt::test] async fn $case() { super::$case(crate::support::Backend::postgres().await).await; } )* }
    };
}

both!(
    sweep_follows_the_read_model_not_the_log,
    sweep_never_trusts_a_trailing_read_model
);
