//! A video call in real browsers: headless Chromium (playwright-core) runs the web client for
//! the demo client and the demo counselor against a `neulbi serve` of this build, inside a
//! private network namespace with only loopback up (`tests/e2e/call-browser.mjs` creates it
//! with `unshare -n`, and fails rather than skips when that is not permitted). Ringing, the
//! incoming-call dialog, both remote videos decoding, a reaction each way, in-call chat, mute,
//! and hang-up with the call's entry in the room.

use crate::support;

use std::time::Duration;

#[actix_rt::test]
async fn demo_client_and_counselor_hold_a_video_call_in_the_browser() {
    // The script bounds itself at 120 s and then ends everything it started (server and
    // browsers); the limit here is only a backstop above that.
    support::node::run_ok(
        "call-browser.mjs",
        &[("NEULBI_BIN", env!("CARGO_BIN_EXE_neulbi"))],
        Duration::from_secs(130),
    )
    .await;
}
