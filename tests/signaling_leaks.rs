//! No token or personal data in logs or spans during a call: a whole signaling session (auth
//! with a bearer token, join, in-call chat, a reaction, hang-up, a refused token) runs with
//! every level and span event of the server captured, then the capture is searched. Its own
//! binary, because the subscriber is global.

use crate::support::app::TestApp;
use crate::support::capture::Capture;
use crate::support::http::post_json;
use crate::support::rtc::Rtc;
use serde_json::json;

const SECRET_TEXT: &str = "in-call-secret-words";
const EMAIL: &str = "leaky.caller@example.com";

#[actix_rt::test]
async fn a_call_logs_no_token_or_chat_text() {
    // The test's own WebSocket client and the WebRTC stack see neither tokens nor chat; they
    // are left out so the capture holds the server's own records.
    let capture = Capture::install_with(
        "trace,tungstenite=off,tokio_tungstenite=off,rtc=warn,rtc_ice=warn,rtc_dtls=warn,\
         rtc_sctp=warn,rtc_srtp=warn,rtc_interceptor=warn,webrtc=warn,turn=warn",
    );

    let app = TestApp::start(|_| {}).await;
    let client = app.client(EMAIL).await;
    let counselor = app.counselor("leaky.counselor@example.com").await;
    let room = app.open_room(&client, &counselor).await;
    let r = post_json(
        app.addr,
        &format!("/rooms/{room}/calls"),
        &json!({}),
        &[("Authorization", &client.bearer())],
    )
    .await;
    let call = r.json()["call_id"].as_str().expect("call").to_owned();
    post_json(
        app.addr,
        &format!("/calls/{call}/accept"),
        &json!({}),
        &[("Authorization", &counselor.bearer())],
    )
    .await;
    let mut a = Rtc::connect(app.addr, &client.token).await;
    a.join(&call).await;
    let mut b = Rtc::connect(app.addr, &counselor.token).await;
    b.join(&call).await;
    a.send(json!({"type": "chat", "body": SECRET_TEXT})).await;
    assert_eq!(b.expect("chat").await["body"], SECRET_TEXT);
    a.send(json!({"type": "emoji", "emoji": "👍"})).await;
    b.expect("emoji").await;
    let mut forged = Rtc::open(app.addr).await;
    forged
        .send(json!({"type": "auth", "token": format!("{}x", client.token)}))
        .await;
    assert_eq!(forged.expect_error().await, "unauthorized");
    a.send(json!({"type": "hangup"})).await;
    b.expect("ended").await;
    app.stop().await;

    let logs = capture.text();
    assert!(
        logs.contains("rtc_connection"),
        "the signaling spans were not captured"
    );
    for (name, secret) in [
        ("token", client.token.as_str()),
        ("counselor token", counselor.token.as_str()),
        ("chat text", SECRET_TEXT),
        ("email", EMAIL),
    ] {
        if let Some(at) = logs.find(secret) {
            let from = logs[..at].rfind('\n').map_or(0, |n| n + 1);
            let line = &logs[from..logs[at..].find('\n').map_or(logs.len(), |n| at + n)];
            panic!(
                "logs contain the {name}: {}",
                line.replace(secret, "<SECRET>")
            );
        }
    }
    let signature = client.token.rsplit('.').next().expect("jwt");
    assert!(
        !logs.contains(signature),
        "logs contain the token's signature"
    );
}
