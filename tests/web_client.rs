//! The browser side in headless Chromium (playwright-core): the whole product journey of the
//! web client (tests/e2e/web-journey.mjs: sign-up, search, chat both ways with unread badges
//! and read markers, the network dropped and back, history paging, a profile photo, a video
//! call, call history, English and back, the export, erasure, sign-out everywhere), with
//! axe-core on every page, at a desktop and at a 360 × 740 phone viewport; and STOMP over
//! every SockJS transport a browser can use, with the vendored clients.

use crate::support;

use crate::support::app::TestApp;
use std::time::Duration;

/// One journey at `viewport`. The script starts its own `neulbi serve` of this build in a
/// private network namespace and bounds itself at 170 s; the limit here is a backstop.
async fn journey(viewport: &str) {
    support::node::run_ok(
        "web-journey.mjs",
        &[
            ("NEULBI_BIN", env!("CARGO_BIN_EXE_neulbi")),
            ("VIEWPORT", viewport),
        ],
        Duration::from_secs(190),
    )
    .await;
}

#[actix_rt::test]
async fn the_whole_journey_at_a_desktop_viewport() {
    journey("desktop").await;
}

#[actix_rt::test]
async fn the_whole_journey_at_a_phone_viewport() {
    journey("phone").await;
}

#[actix_rt::test]
async fn stomp_over_every_sockjs_transport_in_the_browser() {
    let app = TestApp::start(|_| {}).await;
    let alice = app.client("alice.browser@example.com").await;
    let bob = app.counselor("bob.browser@example.com").await;
    let room = app.open_room(&alice, &bob).await;
    app.wait_member(&room, &alice).await;
    app.wait_member(&room, &bob).await;
    let url = format!("http://{}", app.addr);
    support::node::run_ok(
        "sockjs-browser.mjs",
        &[
            ("NEULBI_URL", &url),
            ("ROOM", &room),
            ("ALICE_TOKEN", &alice.token),
            ("BOB_TOKEN", &bob.token),
        ],
        Duration::from_secs(120),
    )
    .await;
    app.handle.stop(true).await;
}
