//! One trace from a SEND to the other person's socket, as an operator's tracing backend sees
//! it: the node runs as its own process exporting OTLP/HTTP to a receiver inside this test,
//! which decodes the real OTLP protobuf (`opentelemetry-proto`). Then `neulbi trace` finds the
//! same trace's events in the log.

use crate::support;

use crate::support::binary::{neulbi, serve, sigterm};
use crate::support::http::post_json;
use actix_web::{App, HttpResponse, HttpServer, web};
use neulbi_domain::RoomId;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use prost::Message;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One exported span with what the assertions need.
#[derive(Debug, Clone)]
struct Span {
    name: String,
    trace: String,
    id: String,
    parent: String,
    attributes: Vec<(String, String)>,
    /// Every string the span carries: attribute and event values, event names.
    strings: Vec<String>,
    resource: Vec<(String, String)>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn text(value: &Option<AnyValue>) -> String {
    match value.as_ref().and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn pairs(attributes: &[KeyValue]) -> Vec<(String, String)> {
    attributes
        .iter()
        .map(|kv| (kv.key.clone(), text(&kv.value)))
        .collect()
}

type Received = Arc<Mutex<Vec<Span>>>;

async fn receive_traces(body: web::Bytes, received: web::Data<Received>) -> HttpResponse {
    let Ok(request) = ExportTraceServiceRequest::decode(body) else {
        return HttpResponse::BadRequest().finish();
    };
    let mut spans = received.lock().expect("lock");
    for rs in request.resource_spans {
        let resource = rs
            .resource
            .map(|r| pairs(&r.attributes))
            .unwrap_or_default();
        for ss in rs.scope_spans {
            for s in ss.spans {
                let attributes = pairs(&s.attributes);
                let mut strings: Vec<String> = attributes.iter().map(|(_, v)| v.clone()).collect();
                for e in &s.events {
                    strings.push(e.name.clone());
                    strings.extend(pairs(&e.attributes).into_iter().map(|(_, v)| v));
                }
                strings.push(s.name.clone());
                spans.push(Span {
                    name: s.name,
                    trace: hex(&s.trace_id),
                    id: hex(&s.span_id),
                    parent: hex(&s.parent_span_id),
                    attributes,
                    strings,
                    resource: resource.clone(),
                });
            }
        }
    }
    HttpResponse::Ok()
        .content_type("application/x-protobuf")
        .body(ExportTraceServiceResponse::default().encode_to_vec())
}

/// An OTLP/HTTP receiver on a loopback port; traces are decoded, metrics accepted.
fn receiver() -> (SocketAddr, Received, actix_web::dev::ServerHandle) {
    let received: Received = Arc::default();
    let data = web::Data::new(received.clone());
    let server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .app_data(web::PayloadConfig::new(16 * 1024 * 1024))
            .route("/v1/traces", web::post().to(receive_traces))
            .route("/v1/metrics", web::post().to(HttpResponse::Ok))
    })
    .workers(1)
    .bind("127.0.0.1:0")
    .expect("bind the OTLP receiver");
    let addr = server.addrs()[0];
    let server = server.run();
    let handle = server.handle();
    actix_rt::spawn(server);
    (addr, received, handle)
}

fn attr<'a>(span: &'a Span, key: &str) -> Option<&'a str> {
    span.attributes
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

#[actix_rt::test]
async fn a_chat_message_is_one_trace_from_send_to_delivery_and_neulbi_trace_lists_it() {
    let (otlp, received, receiver_handle) = receiver();
    let dir = tempfile::tempdir().expect("temp dir");
    let endpoint = format!("http://{otlp}");
    let (mut child, addr) = serve(
        dir.path(),
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
            ("OTEL_METRIC_EXPORT_INTERVAL", "500"),
            ("NEULBI_LOG", "info"),
        ],
    )
    .await;

    let (client_token, client) = support::stomp::signup(addr, "traced.client@example.com").await;
    let (_, counselor) = support::stomp::signup(addr, "traced.counselor@example.com").await;
    let granted = neulbi(dir.path())
        .args(["users", "grant-counselor", &counselor.to_string()])
        .output()
        .expect("grant counselor");
    assert!(
        granted.status.success(),
        "{}",
        String::from_utf8_lossy(&granted.stderr)
    );
    let login = post_json(
        addr,
        "/auth/login",
        &serde_json::json!({ "email": "traced.counselor@example.com", "password": "a long password" }),
        &[],
    )
    .await;
    assert_eq!(login.status, 200, "{}", login.body);
    let counselor_token = login.json()["access_token"]
        .as_str()
        .expect("token")
        .to_owned();
    let opened = post_json(
        addr,
        "/rooms",
        &serde_json::json!({ "counselor_id": counselor.to_string() }),
        &[("Authorization", &format!("Bearer {client_token}"))],
    )
    .await;
    assert!(matches!(opened.status, 200 | 201), "{}", opened.body);
    let room: RoomId = opened.json()["room_id"]
        .as_str()
        .expect("room id")
        .parse()
        .expect("room id");

    let mut listener = support::stomp::Client::connect(addr, &counselor_token).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        // The counselor may subscribe once the room's read model lists them.
        let answer = listener.subscribe(room, "s1").await;
        if answer.command.to_string() == "RECEIPT" {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{answer:?}");
        listener = support::stomp::Client::connect(addr, &counselor_token).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut poster = support::stomp::Client::connect(addr, &client_token).await;
    poster.post(room, "a traced hello").await;
    let message = listener.next_json().await;
    assert!(message.to_string().contains("a traced hello"), "{message}");

    // The SEND's trace: wait until its delivery span arrived, then check the chain.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let (send, trace) = loop {
        let spans = received.lock().expect("lock").clone();
        if let Some(send) = spans.iter().find(|s| s.name == "stomp.send") {
            let trace: Vec<Span> = spans
                .iter()
                .filter(|s| s.trace == send.trace)
                .cloned()
                .collect();
            let projected = trace
                .iter()
                .filter(|s| s.name == "project")
                .filter_map(|s| attr(s, "projector"))
                .collect::<Vec<_>>();
            if trace.iter().any(|s| s.name == "deliver")
                && projected.contains(&"rooms")
                && projected.contains(&"audit")
            {
                break (send.clone(), trace);
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "incomplete trace: {:#?}",
            spans.iter().map(|s| &s.name).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let named = |name: &str| -> Vec<&Span> { trace.iter().filter(|s| s.name == name).collect() };
    // SEND → command → append; the projectors and the delivery continue from the command.
    assert!(
        send.parent.is_empty() || send.parent == "0000000000000000",
        "{send:?}"
    );
    let commands = named("command");
    let command = commands
        .iter()
        .find(|c| c.parent == send.id && attr(c, "aggregate") == Some("room"))
        .unwrap_or_else(|| panic!("no room command under the SEND: {trace:#?}"));
    let append = named("append")
        .into_iter()
        .find(|a| a.parent == command.id)
        .unwrap_or_else(|| panic!("no append under the command: {trace:#?}"));
    let group: u64 = attr(append, "group_size")
        .and_then(|g| g.parse().ok())
        .unwrap_or_else(|| panic!("append without group_size: {append:?}"));
    assert!(group >= 1, "{append:?}");
    for p in named("project") {
        assert_eq!(p.parent, command.id, "{p:?}");
        assert_eq!(attr(p, "event_type"), Some("MessagePosted"), "{p:?}");
    }
    let deliveries = named("deliver");
    assert!(!deliveries.is_empty());
    for d in &deliveries {
        assert_eq!(d.parent, command.id, "{d:?}");
        assert_eq!(attr(d, "transport"), Some("websocket"), "{d:?}");
    }
    // Who sent it: the node, named as configured.
    let resource = &send.resource;
    let has = |k: &str| resource.iter().any(|(key, v)| key == k && !v.is_empty());
    assert!(
        resource
            .iter()
            .any(|(k, v)| k == "service.name" && v == "neulbi"),
        "{resource:?}"
    );
    assert!(
        has("service.version") && has("service.instance.id"),
        "{resource:?}"
    );

    // Ids only: no message text, e-mail address or token in any exported span.
    let all = received.lock().expect("lock").clone();
    assert!(all.len() > 10, "{}", all.len());
    for s in &all {
        for value in &s.strings {
            for secret in [
                "a traced hello",
                "traced.client@example.com",
                "traced.counselor@example.com",
                client_token.as_str(),
                counselor_token.as_str(),
                "a long password",
            ] {
                assert!(
                    !value.contains(secret),
                    "{} carries {secret:?}: {value}",
                    s.name
                );
            }
        }
    }

    // The durable half: the log's events of that trace, readable without a tracing backend.
    let out = neulbi(dir.path())
        .args(["trace", &send.trace])
        .output()
        .expect("neulbi trace");
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}{listing}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = listing.lines().skip(1).collect();
    assert_eq!(lines.len(), 1, "{listing}");
    assert!(
        lines[0].contains(&format!("room-{room}")) && lines[0].contains("MessagePosted"),
        "{listing}"
    );
    assert!(lines[0].contains(&client.to_string()), "{listing}");
    assert!(lines[0].contains(&command.id), "{listing}");
    let json = neulbi(dir.path())
        .args(["trace", &send.trace, "--json"])
        .output()
        .expect("neulbi trace --json");
    let row: serde_json::Value = serde_json::from_slice(&json.stdout).expect("one JSON object");
    assert_eq!(row["event_type"], "MessagePosted");
    // An unknown trace and a malformed id are clear errors.
    let unknown = neulbi(dir.path())
        .args(["trace", "0123456789abcdef0123456789abcdef"])
        .output()
        .expect("neulbi trace");
    assert!(!unknown.status.success());
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("no event carries trace"));
    let bad = neulbi(dir.path())
        .args(["trace", "not-a-trace"])
        .output()
        .expect("neulbi trace");
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("32 hex digits"));

    sigterm(&child);
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .expect("join")
        .expect("wait");
    assert!(status.success(), "{status}");
    drop((listener, poster));
    receiver_handle.stop(false).await;
}
