//! No personal data in logs or spans: run a whole scenario (registration, login, room,
//! messages, HTTP requests with secrets in the query string, erasure) with every log level
//! and span event captured, then search the capture for the scenario's personal data.

use crate::support;

use crate::support::Backend;
use crate::support::capture::Capture;
use crate::support::scenario::{COUNSELOR_TEXT, EMAIL, IP, NICKNAME, SECRETS, as_user, seed};
use neulbi::actors::{Registry, RegistryConfig};
use neulbi::config::Config;
use neulbi::privacy::erasure::erase_user;
use neulbi::startup::Application;
use neulbi::store::{Metadata, Storage};
use neulbi_domain::Role;
use neulbi_domain::chat_room::ChatRoomDecider;
use neulbi_domain::user::UserDecider;

#[actix_rt::test]
async fn a_full_scenario_logs_no_personal_data() {
    let capture = Capture::install();

    let b = Backend::sqlite().await;
    let Storage {
        events,
        keys,
        database,
        ..
    } = b.storage(false).await;
    let users = Registry::<UserDecider>::new(events.clone(), RegistryConfig::default());
    let rooms = Registry::<ChatRoomDecider>::new(events.clone(), RegistryConfig::default());
    let s = seed(&users, &rooms).await;

    // The HTTP edge too: a request whose query string carries a secret.
    let dir = tempfile::tempdir().expect("dir");
    let config = Config {
        listen: "127.0.0.1:0".parse().expect("addr"),
        data_dir: dir.path().to_owned(),
        ..Config::default()
    };
    let app = Application::build(&config).await.expect("app");
    let addr = app.local_addr();
    let handle = app.handle();
    actix_rt::spawn(app.run_until_stopped());
    assert_eq!(support::http::wait_ready(addr).await.status, 200);
    let secret_query = format!("/readyz?email={EMAIL}&code=login-code-123");
    assert_eq!(support::http::get(addr, &secret_query).await.status, 200);
    handle.stop(true).await;

    erase_user(
        &users,
        &keys,
        &database,
        s.client,
        as_user(s.client, Role::Client),
        Metadata::default(),
    )
    .await
    .expect("erase");
    events.close().await;

    let text = capture.text();
    assert!(
        text.contains("append") && text.contains("command") && text.contains("request"),
        "spans were captured"
    );
    for needle in [
        EMAIL,
        NICKNAME,
        IP,
        SECRETS[0],
        SECRETS[1],
        SECRETS[2],
        COUNSELOR_TEXT,
        "login-code-123",
        "counselor@example.kr",
    ] {
        assert!(!text.contains(needle), "{needle:?} leaked into the logs");
    }
}
