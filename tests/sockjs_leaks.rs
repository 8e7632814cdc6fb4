//! Nothing secret of a SockJS session reaches the logs: not the access token sent inside
//! `xhr_send`, not the session id (it works like a bearer secret), at trace level. Its own
//! binary, because the capture is the process-wide subscriber.

use crate::support::app::TestApp;
use crate::support::capture::Capture;
use crate::support::http::request;
use crate::support::stomp::signup;

#[actix_rt::test]
async fn a_sockjs_session_logs_no_token_or_session_id() {
    let capture = Capture::install();
    let app = TestApp::start(|_| {}).await;
    let (addr, handle) = (app.addr, app.handle.clone());

    let (token, _) = signup(addr, "leaky.sockjs@example.com").await;
    let session = uuid::Uuid::new_v4().simple().to_string();
    let poll = format!("/chat/042/{session}/xhr");
    let send = format!("/chat/042/{session}/xhr_send");
    assert_eq!(request(addr, "POST", &poll, &[], "").await.status, 200);
    let connect = format!("CONNECT\naccept-version:1.2\nAuthorization:Bearer {token}\n\n\0");
    let body = serde_json::to_string(&[connect]).expect("json");
    assert_eq!(request(addr, "POST", &send, &[], &body).await.status, 204);
    let r = request(addr, "POST", &poll, &[], "").await;
    assert!(r.body.contains("CONNECTED"), "{}", r.body);
    handle.stop(true).await;

    let logs = capture.text();
    assert!(
        logs.contains("/chat/{server}/{session}/{transport}"),
        "the server's request spans were not captured"
    );
    for (name, secret) in [("token", token.as_str()), ("session id", session.as_str())] {
        if let Some(at) = logs.find(secret) {
            let from = logs[..at].rfind('\n').map_or(0, |n| n + 1);
            let line = &logs[from..logs[at..].find('\n').map_or(logs.len(), |n| at + n)];
            panic!(
                "logs contain the {name}: {}",
                line.replace(secret, "<SECRET>")
            );
        }
    }
}
