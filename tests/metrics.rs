//! Metrics as operators see them: `/metrics` on its own listener, valid for `promtool`, free of
//! ids and personal data, and scraped by a real Prometheus that answers every PromQL
//! expression of the shipped dashboards and alert rules (`observability/`) with data, so no
//! panel is silently empty because a metric was renamed.

use crate::support;

use crate::support::app::TestApp;
use crate::support::http::{get, post_json, request};
use crate::support::prometheus::promtool;
use neulbi_domain::RoomId;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

fn observability() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("observability")
}

fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
}

/// Every `"expr"` string in a Grafana dashboard, wherever it sits.
fn exprs(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("expr", serde_json::Value::String(e)) => out.push(e.clone()),
                    _ => exprs(v, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| exprs(v, out)),
        _ => {}
    }
}

/// An alert's `expr` is `QUERY OP NUMBER` (the rules file's convention); the query alone.
fn alert_query(expr: &str) -> String {
    let mut parts = expr.trim().rsplitn(3, ' ');
    let (number, op, query) = (parts.next(), parts.next(), parts.next());
    let (Some(number), Some(op), Some(query)) = (number, op, query) else {
        panic!("alert expression not of the form QUERY OP NUMBER: {expr}");
    };
    assert!(
        number.parse::<f64>().is_ok() && [">", "<", ">=", "<=", "==", "!="].contains(&op),
        "alert expression not of the form QUERY OP NUMBER: {expr}"
    );
    query.to_owned()
}

/// The rule files' one-line `expr:` values.
fn rule_exprs(rules: &str) -> Vec<String> {
    rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("expr:"))
        .map(|e| e.trim().to_owned())
        .collect()
}

/// A UUID anywhere in `text` (metrics must never carry one: a series per room or person).
fn has_uuid(text: &str) -> bool {
    let hex = |s: &str| s.chars().all(|c| c.is_ascii_hexdigit());
    text.split(|c: char| !(c.is_ascii_hexdigit() || c == '-'))
        .any(|w| {
            let parts: Vec<&str> = w.split('-').collect();
            parts.len() == 5
                && parts.iter().map(|p| p.len()).eq([8, 4, 4, 4, 12])
                && parts.iter().all(|p| hex(p))
        })
}

/// Chat, sign-ins and reads: what a node does on a quiet day.
async fn traffic(app: &TestApp) -> (String, String) {
    let client = app.client("metrics-client@example.com").await;
    let counselor = app.counselor("metrics-counselor@example.com").await;
    let room: RoomId = app
        .open_room(&client, &counselor)
        .await
        .parse()
        .expect("room id");
    app.wait_member(&room.to_string(), &counselor).await;
    let wrong = post_json(
        app.addr,
        "/auth/login",
        &serde_json::json!({ "email": "metrics-client@example.com", "password": "not it at all" }),
        &[],
    )
    .await;
    assert_eq!(wrong.status, 401, "{}", wrong.body);
    let mut listener = support::stomp::Client::connect(app.addr, &counselor.token).await;
    let subscribed = listener.subscribe(room, "s1").await;
    assert_eq!(subscribed.command.to_string(), "RECEIPT", "{subscribed:?}");
    let mut poster = support::stomp::Client::connect(app.addr, &client.token).await;
    for i in 0..3 {
        poster.post(room, &format!("metrics message {i}")).await;
        let delivered = listener.next_json().await;
        assert!(
            delivered.to_string().contains("metrics message"),
            "{delivered}"
        );
    }
    let rooms = request(
        app.addr,
        "GET",
        &format!("/rooms/{room}/messages"),
        &[("Authorization", &client.bearer())],
        "",
    )
    .await;
    assert_eq!(rooms.status, 200, "{}", rooms.body);
    assert_eq!(get(app.addr, "/no/such/page").await.status, 404);
    // Keep the sessions open while Prometheus scrapes: the gauges then read non-zero.
    std::mem::forget((listener, poster));
    (client.id.to_string(), room.to_string())
}

#[actix_rt::test]
async fn prometheus_scrapes_the_node_and_every_dashboard_and_alert_query_has_data() {
    let metrics_addr = free_addr();
    let app = TestApp::start(|c| c.metrics_listen = Some(metrics_addr)).await;
    let (user, room) = traffic(&app).await;

    // /metrics is on its own listener only, with the probes and nothing else.
    assert_eq!(get(app.addr, "/metrics").await.status, 404);
    assert_eq!(get(metrics_addr, "/healthz").await.status, 200);
    assert_eq!(get(metrics_addr, "/readyz").await.status, 200);
    assert_eq!(get(metrics_addr, "/counselors").await.status, 404);
    let scraped = get(metrics_addr, "/metrics").await;
    assert_eq!(scraped.status, 200, "{}", scraped.body);
    assert!(
        scraped
            .headers
            .to_ascii_lowercase()
            .contains("text/plain; version=0.0.4"),
        "{}",
        scraped.headers
    );
    let body = scraped.body;
    for series in [
        "neulbi_store_appends_total{backend=\"sqlite\",outcome=\"ok\"}",
        "neulbi_store_append_duration_seconds_bucket{backend=\"sqlite\"",
        "neulbi_commands_total{kind=\"room\",outcome=\"ok\"}",
        "neulbi_events_committed_total{kind=\"room\",type=\"MessagePosted\"} 3",
        "neulbi_stomp_sessions{transport=\"websocket\"} 2",
        "neulbi_stomp_deliveries_total",
        "neulbi_stomp_receipt_duration_seconds_count",
        "neulbi_sign_ins_total{outcome=\"failed\",provider=\"password\"} 1",
        "neulbi_http_requests_total{method=\"POST\",route=\"/auth/login\",status=\"401\"} 1",
        "neulbi_http_requests_total{method=\"GET\",route=\"unmatched\",status=\"404\"}",
        "neulbi_projector_position{projector=\"rooms\"}",
        "neulbi_http_requests_total{method=\"GET\",route=\"/rooms/{room_id}/messages\",status=\"200\"} 1",
    ] {
        assert!(body.contains(series), "missing {series} in:\n{body}");
    }
    // Route patterns, never raw paths; no ids, no e-mail addresses.
    assert!(!body.contains("/no/such/page"), "{body}");
    assert!(!body.contains(&user) && !body.contains(&room), "{body}");
    assert!(!has_uuid(&body), "{body}");
    assert!(!body.contains("example.com"), "{body}");
    let (ok, out) = promtool(&["check", "metrics"], Some(&body));
    assert!(ok, "promtool check metrics: {out}");

    let rules_file = observability().join("prometheus/rules/neulbi.rules.yml");
    let (ok, out) = promtool(&["check", "rules", &rules_file.to_string_lossy()], None);
    assert!(ok, "promtool check rules: {out}");

    let dir = tempfile::tempdir().expect("temp dir");
    let prom = support::prometheus::start(
        dir.path(),
        metrics_addr,
        Duration::from_secs(1),
        &rules_file,
    )
    .await;
    // A few scrapes, so rates over a window have two samples and the rules have run.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let scrapes = prom.query("count_over_time(up{job=\"neulbi\"}[1m])").await;
        let n = scrapes
            .first()
            .and_then(|r| r["value"][1].as_str())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0);
        if n >= 4.0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "Prometheus did not scrape the node"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let up = prom.query("up{job=\"neulbi\"}").await;
    assert_eq!(up[0]["value"][1], "1", "{up:?}");
    let delivered = prom.query("neulbi_stomp_deliveries_total").await;
    let n: f64 = delivered[0]["value"][1]
        .as_str()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    assert!(n >= 3.0, "{delivered:?}");

    let mut queries = Vec::new();
    let dashboards =
        std::fs::read_dir(observability().join("grafana/dashboards")).expect("dashboards folder");
    let mut dashboard_count = 0;
    for entry in dashboards {
        let path = entry.expect("entry").path();
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        dashboard_count += 1;
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).expect("read dashboard"))
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let mut found = Vec::new();
        exprs(&json, &mut found);
        assert!(!found.is_empty(), "{} has no queries", path.display());
        for e in found {
            let e = e
                .replace("$__rate_interval", "1m")
                .replace("$instance", ".*");
            assert!(
                !e.contains('$'),
                "unsupported variable in {}: {e}",
                path.display()
            );
            queries.push((path.display().to_string(), e));
        }
    }
    assert!(dashboard_count >= 4, "expected the four dashboards");
    let rules = std::fs::read_to_string(&rules_file).expect("read rules");
    let alerts = rule_exprs(&rules);
    assert!(alerts.len() >= 10, "{alerts:?}");
    for e in &alerts {
        queries.push(("alert".into(), alert_query(e)));
    }
    let mut empty = Vec::new();
    for (source, q) in &queries {
        if prom.query(q).await.is_empty() {
            empty.push(format!("{source}: {q}"));
        }
    }
    assert!(
        empty.is_empty(),
        "queries without data:\n{}",
        empty.join("\n")
    );

    // Every alert rule evaluates without error, and none fires on this healthy node.
    let rules = prom.api("/api/v1/rules").await;
    let mut evaluated = 0;
    for group in rules["data"]["groups"].as_array().expect("groups") {
        for rule in group["rules"].as_array().expect("rules") {
            assert_eq!(rule["health"], "ok", "{rule}");
            assert_ne!(rule["state"], "firing", "{rule}");
            evaluated += 1;
        }
    }
    assert_eq!(evaluated, alerts.len());
    drop(prom);
    app.stop().await;
}

#[actix_rt::test]
async fn without_a_metrics_listener_metrics_share_the_main_port() {
    let app = TestApp::start(|_| {}).await;
    let r = get(app.addr, "/metrics").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        r.body.contains("# TYPE neulbi_stomp_sessions gauge"),
        "{}",
        r.body
    );
    app.stop().await;
}

#[test]
fn alert_rules_fire_on_trouble_and_stay_quiet_on_a_healthy_node() {
    // promtool's rule unit tests (observability/prometheus/tests): synthetic series in, the
    // alerts that must (and must not) fire out.
    let tests = observability().join("prometheus/tests/neulbi.rules.test.yml");
    let (ok, out) = promtool(&["test", "rules", &tests.to_string_lossy()], None);
    assert!(ok, "promtool test rules: {out}");
}

#[test]
fn alert_queries_are_split_from_their_threshold() {
    assert_eq!(alert_query("up{job=\"neulbi\"} == 0"), "up{job=\"neulbi\"}");
    assert_eq!(
        alert_query("max by (projector) (neulbi_projector_lag_events) > 1000"),
        "max by (projector) (neulbi_projector_lag_events)"
    );
    assert!(has_uuid("room 0192f0c4-7a55-7cc2-9a3b-0123456789ab here"));
    assert!(!has_uuid(
        "neulbi_store_appends_total{backend=\"sqlite\"} 12"
    ));
}

#[test]
#[should_panic(expected = "QUERY OP NUMBER")]
fn an_alert_without_a_threshold_is_refused() {
    alert_query("sum(rate(neulbi_stomp_errors_total[5m]))");
}
