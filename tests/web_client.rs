//! The browser side in headless Chromium (playwright-core): the web client, where the demo
//! client finds the demo counselor, opens a room and chats with them live (markup stays
//! text); and STOMP over every SockJS transport a browser can use, with the vendored clients.

mod support;

use std::time::Duration;
use support::app::TestApp;

#[actix_rt::test]
async fn demo_client_and_counselor_chat_in_the_browser() {
    let app = TestApp::start(|_| {}).await;
    // The directory lists the demo counselor once its profile is projected.
    support::http::wait_ready(app.addr).await;
    let url = format!("http://{}", app.addr);
    support::node::run_ok(
        "web-chat.mjs",
        &[("NEULBI_URL", &url)],
        Duration::from_secs(90),
    )
    .await;
    app.handle.stop(true).await;
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
