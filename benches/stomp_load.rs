//! `stomp_load`: a STOMP-over-WebSocket load generator, and Neulbi side by side with RabbitMQ
//! Web-STOMP under the same load shapes:
//!
//! - **a** conversations: R rooms × 2 participants, both sending (the counseling shape);
//! - **b** fan-out: one room, S subscribing sessions, one sender;
//! - **c** idle: N connections that only exchange heart-beats (memory per connection);
//! - **d** = a with a RECEIPT requested on every SEND (Neulbi answers after the durable append).
//!
//! Each sender keeps `--window` messages in flight (sent, not yet delivered back to its own
//! subscription), so the load is closed-loop and equal for both servers. Bodies carry the
//! sender, a sequence number and the send time; receivers compute send→receive latency.
//!
//! Full run:   cargo build --release --bin neulbi && cargo bench --bench stomp_load
//!             (options after `--`: --servers neulbi,rabbitmq[,rabbitmq-durable]
//!             --scenarios a,b,c,d --secs 10 --warmup 2 --rooms 500 --subscribers 1000
//!             --idle 10000 --idle-hold 15 --window 4 --fanout-window 16 --rate MSGS_PER_S
//!             --timeline; raise `ulimit -n` to 20000 for 10,000 idle connections)
//! Paced cell: cargo bench --bench stomp_load -- --paced-10k   (a and d, 500 rooms × 2 at
//!             5 msg/s = 10,000 deliveries/s, 60 s after a 5 s warm-up)
//! Growth:     cargo bench --bench stomp_load -- --scenarios a --rooms 100,1000,5000
//!             (everything once per room count, a fresh server each time)
//! Any server: --servers custom --url ws://HOST/PATH --login L --passcode P [--host H]
//!             [--subscribe '/topic/rooms.{room}'] [--send '/topic/rooms.{room}'] [--pid PID]
//!             (or --fixture FILE.json from `neulbi dev bench-fixture` for bearer tokens)
//! Smoke run:  cargo test --bench stomp_load   (Neulbi in process, tiny sizes, a few seconds)
//!
//! All traffic stays on 127.0.0.1; every server the bench starts is stopped when it ends.

#[path = "stomp/client.rs"]
mod client;
#[path = "stomp/servers.rs"]
mod servers;

use anyhow::{Context, bail};
use client::{Conn, Creds, Incoming};
use neulbi::edge::stomp::frame::{Command, Frame};
use neulbi::tools::bench_fixture::{Fixture, FixtureSpec};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// After the senders are done, a receiver leaves once nothing arrived for this long (µs).
const QUIET_US: u64 = 500_000;
/// Connections opened at once while setting up a scenario.
const CONNECT_CONCURRENCY: usize = 128;
/// A text a counseling message could be; the measurement marker is prepended.
const PAYLOAD: &str =
    "안녕하세요, 요즘 잠을 잘 못 자요. How have you been feeling since our last session?";

#[derive(Clone)]
struct Options {
    full: bool,
    servers: Vec<String>,
    scenarios: Vec<String>,
    secs: f64,
    warmup: f64,
    rooms: usize,
    /// Each run's room count: `--rooms 100,1000,5000` runs everything once per count (the
    /// growth curve), one server started per count.
    room_counts: Vec<usize>,
    subscribers: usize,
    idle: usize,
    idle_hold: f64,
    window: usize,
    fanout_window: usize,
    /// Messages per second per sender (0: as fast as the window allows).
    rate: f64,
    /// Print deliveries and the worst latency of every second.
    timeline: bool,
    custom: Custom,
}

/// A STOMP server given on the command line.
#[derive(Default, Clone)]
struct Custom {
    url: Option<String>,
    login: Option<String>,
    passcode: Option<String>,
    host: Option<String>,
    subscribe: Option<String>,
    send: Option<String>,
    pid: Option<u32>,
    fixture: Option<String>,
}

fn options() -> Options {
    let args: Vec<String> = std::env::args().collect();
    // `cargo bench` passes --bench; `cargo test --bench` does not: that is the smoke run.
    let full = args.iter().any(|a| a == "--bench");
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let list = |v: String| v.split(',').map(str::to_owned).collect::<Vec<_>>();
    let num = |flag: &str, default: f64| {
        value(flag).map_or(default, |v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{flag} takes a number"))
        })
    };
    // `--paced-10k`: the sustained cell of 10,000 deliveries/s (500 rooms × 2 senders × 5
    // messages/s), with and without receipts, for 60 s: a backlog shows only after ~10 s.
    let paced_10k = args.iter().any(|a| a == "--paced-10k");
    let mut o = if full {
        Options {
            full,
            servers: list("neulbi,rabbitmq".into()),
            scenarios: list(if paced_10k { "a,d" } else { "a,b,c,d" }.into()),
            secs: num("--secs", if paced_10k { 60.0 } else { 10.0 }),
            warmup: num("--warmup", if paced_10k { 5.0 } else { 2.0 }),
            rooms: 500,
            room_counts: vec![500],
            subscribers: num("--subscribers", 1000.0) as usize,
            idle: num("--idle", 10_000.0) as usize,
            idle_hold: num("--idle-hold", 15.0),
            window: num("--window", 4.0) as usize,
            fanout_window: num("--fanout-window", 16.0) as usize,
            rate: num("--rate", if paced_10k { 5.0 } else { 0.0 }),
            timeline: args.iter().any(|a| a == "--timeline"),
            custom: Custom::default(),
        }
    } else {
        Options {
            full,
            servers: list("neulbi-inprocess".into()),
            scenarios: list("a,b,c,d".into()),
            secs: num("--secs", 1.5),
            warmup: num("--warmup", 0.3),
            rooms: 8,
            room_counts: vec![8],
            subscribers: num("--subscribers", 20.0) as usize,
            idle: num("--idle", 50.0) as usize,
            idle_hold: num("--idle-hold", 1.0),
            window: num("--window", 2.0) as usize,
            fanout_window: num("--fanout-window", 4.0) as usize,
            rate: num("--rate", 0.0),
            timeline: args.iter().any(|a| a == "--timeline"),
            custom: Custom::default(),
        }
    };
    if let Some(v) = value("--rooms") {
        o.room_counts = list(v)
            .iter()
            .map(|n| n.parse().expect("--rooms takes numbers"))
            .collect();
    }
    if let Some(v) = value("--servers") {
        o.servers = list(v);
    }
    if let Some(v) = value("--scenarios") {
        o.scenarios = list(v);
    }
    o.custom = Custom {
        url: value("--url"),
        login: value("--login"),
        passcode: value("--passcode"),
        host: value("--host"),
        subscribe: value("--subscribe"),
        send: value("--send"),
        pid: value("--pid").map(|p| p.parse().expect("--pid takes a number")),
        fixture: value("--fixture"),
    };
    o
}

/// Microseconds on one clock shared by every task of the run.
#[derive(Clone, Copy)]
struct Clock(Instant);

impl Clock {
    fn us(&self) -> u64 {
        u64::try_from(self.0.elapsed().as_micros()).unwrap_or(u64::MAX)
    }
}

/// One room as the load generator sees it: destinations and who connects.
struct RoomPlan {
    subscribe: String,
    send: String,
    /// Connect headers of each member session; `true` if it sends.
    members: Vec<(Creds, bool)>,
}

/// A server with everything needed to drive it.
struct Target {
    name: String,
    url: String,
    pid: Option<u32>,
    /// Conversation rooms (scenarios a, d).
    rooms: Vec<RoomPlan>,
    /// The fan-out room (scenario b).
    fanout: RoomPlan,
    /// Credentials for idle connections, used round-robin (scenario c).
    idle: Vec<Creds>,
    /// Headers added to every SUBSCRIBE (e.g. RabbitMQ's durable path).
    extra_subscribe: Creds,
    /// Headers added to every SEND.
    extra_send: Creds,
}

fn bearer(token: &str) -> Creds {
    Arc::new(vec![
        ("host".into(), "localhost".into()),
        ("Authorization".into(), format!("Bearer {token}")),
    ])
}

fn login(login: &str, passcode: &str, host: &str) -> Creds {
    Arc::new(vec![
        ("host".into(), host.into()),
        ("login".into(), login.into()),
        ("passcode".into(), passcode.into()),
    ])
}

/// Destinations from `pattern` with `{room}` replaced.
fn dest(pattern: &str, room: &str) -> String {
    pattern.replace("{room}", room)
}

/// The plan for a server that knows the fixture's users (Neulbi, or a server taking its
/// tokens).
fn plan_from_fixture(
    fixture: &Fixture,
    subscribe: &str,
    send: &str,
) -> (Vec<RoomPlan>, RoomPlan, Vec<Creds>) {
    let rooms: Vec<RoomPlan> = fixture
        .rooms
        .iter()
        .map(|r| RoomPlan {
            subscribe: dest(subscribe, &r.id.to_string()),
            send: dest(send, &r.id.to_string()),
            members: r
                .participants
                .iter()
                .map(|p| (bearer(&p.token), true))
                .collect(),
        })
        .collect();
    let room = fixture.fanout.room.to_string();
    let mut members: Vec<(Creds, bool)> = fixture
        .fanout
        .subscribers
        .iter()
        .map(|t| (bearer(t), false))
        .collect();
    members.push((bearer(&fixture.fanout.sender), true));
    let fanout = RoomPlan {
        subscribe: dest(subscribe, &room),
        send: dest(send, &room),
        members,
    };
    let idle = fixture
        .rooms
        .iter()
        .flat_map(|r| r.participants.iter().map(|p| bearer(&p.token)))
        .collect();
    (rooms, fanout, idle)
}

/// The plan for a server with one shared login (RabbitMQ, a custom server).
fn plan_with_login(
    o: &Options,
    creds: Creds,
    subscribe: &str,
    send: &str,
) -> (Vec<RoomPlan>, RoomPlan, Vec<Creds>) {
    let room = |name: String, members: Vec<(Creds, bool)>| RoomPlan {
        subscribe: dest(subscribe, &name),
        send: dest(send, &name),
        members,
    };
    let rooms = (0..o.rooms)
        .map(|i| {
            room(
                format!("bench{i}"),
                vec![(creds.clone(), true), (creds.clone(), true)],
            )
        })
        .collect();
    let mut members: Vec<(Creds, bool)> =
        (0..o.subscribers).map(|_| (creds.clone(), false)).collect();
    members.push((creds.clone(), true));
    (rooms, room("fanout".into(), members), vec![creds])
}

/// What one connection measured.
#[derive(Default)]
struct ConnStats {
    sent: u64,
    received: u64,
    in_window: u64,
    latencies_us: Vec<u32>,
    receipt_us: Vec<u32>,
    errors: Vec<String>,
    /// Per second of the run: deliveries and the worst latency (µs), for `--timeline`.
    per_sec: Vec<(u64, u32)>,
}

impl ConnStats {
    fn note_second(&mut self, now_us: u64, latency_us: u32) {
        let i = usize::try_from(now_us / 1_000_000).unwrap_or(usize::MAX);
        if i >= 3600 {
            return;
        }
        if self.per_sec.len() <= i {
            self.per_sec.resize(i + 1, (0, 0));
        }
        self.per_sec[i].0 += 1;
        self.per_sec[i].1 = self.per_sec[i].1.max(latency_us);
    }
}

struct Timing {
    clock: Clock,
    warm_us: u64,
    end_us: u64,
    drain_us: u64,
}

struct Sender {
    id: u32,
    dest: String,
    window: usize,
    receipts: bool,
    /// Microseconds between sends (0: no pacing).
    interval_us: u64,
    /// Headers added to every SEND.
    extra: Creds,
}

fn marker(body: &[u8]) -> Option<(u32, u64, u64)> {
    let start = body.windows(4).position(|w| w == b"#lt:")? + 4;
    let rest = &body[start..];
    let end = rest.iter().position(|&b| b == b'#')?;
    let text = std::str::from_utf8(&rest[..end]).ok()?;
    let mut parts = text.split(':');
    let conn = parts.next()?.parse().ok()?;
    let seq = parts.next()?.parse().ok()?;
    let t = parts.next()?.parse().ok()?;
    Some((conn, seq, t))
}

/// Drives one subscribed connection: sends (if it is a sender) with a window of messages in
/// flight until the end, and counts what arrives until the drain deadline.
async fn drive(
    mut conn: Conn,
    sender: Option<Sender>,
    t: Arc<Timing>,
    senders_left: Arc<AtomicUsize>,
) -> ConnStats {
    let mut s = ConnStats::default();
    let mut inflight = 0usize;
    let mut seq = 0u64;
    let mut receipts = std::collections::HashMap::new();
    let mut done_sending = sender.is_none();
    let mut last_frame = 0u64;
    // Paced senders start spread over one interval so they do not send in lockstep.
    let mut next_send = sender
        .as_ref()
        .map_or(0, |s| (u64::from(s.id) * 7919) % s.interval_us.max(1));
    loop {
        let now = t.clock.us();
        if let Some(snd) = &sender {
            if !done_sending && now < t.end_us {
                let mut fed = false;
                while inflight < snd.window && (snd.interval_us == 0 || now >= next_send) {
                    next_send += snd.interval_us;
                    let sent_at = t.clock.us();
                    let mut f = Frame::new(Command::Send)
                        .header("destination", snd.dest.as_str())
                        .header("content-type", "text/plain;charset=utf-8")
                        .body(format!("#lt:{}:{seq}:{sent_at}# {PAYLOAD}", snd.id));
                    for (k, v) in snd.extra.iter() {
                        f = f.header(k.clone(), v.clone());
                    }
                    if snd.receipts {
                        f = f
                            .header("receipt", seq.to_string())
                            .header("client-message-id", format!("{}-{seq}", snd.id));
                        receipts.insert(seq, sent_at);
                    }
                    if let Err(e) = conn.feed(&f).await {
                        s.errors.push(format!("{e:#}"));
                        break;
                    }
                    fed = true;
                    inflight += 1;
                    seq += 1;
                    s.sent += 1;
                }
                if fed && let Err(e) = conn.flush().await {
                    s.errors.push(format!("{e:#}"));
                }
                if !s.errors.is_empty() {
                    done_sending = true;
                    senders_left.fetch_sub(1, Ordering::AcqRel);
                }
            } else if !done_sending && (now >= t.drain_us || (inflight == 0 && receipts.is_empty()))
            {
                done_sending = true;
                senders_left.fetch_sub(1, Ordering::AcqRel);
            }
        }
        if done_sending {
            // Receivers stay until every sender is done and nothing arrived for a moment
            // (other subscribers may lag behind the sender's own copy), or the deadline.
            let all_done = senders_left.load(Ordering::Acquire) == 0;
            if now >= t.drain_us || (all_done && now >= t.end_us && now >= last_frame + QUIET_US) {
                break;
            }
        }
        let mut wait = 50_000;
        if let Some(snd) = &sender
            && snd.interval_us > 0
            && !done_sending
        {
            wait = next_send.saturating_sub(now).clamp(1_000, 50_000);
        }
        let next = tokio::time::timeout(Duration::from_micros(wait), conn.next()).await;
        let frame = match next {
            Err(_) | Ok(Incoming::Nothing) => continue,
            Ok(Incoming::Closed) => {
                s.errors.push("the server closed the connection".into());
                if !done_sending {
                    senders_left.fetch_sub(1, Ordering::AcqRel);
                }
                return s;
            }
            Ok(Incoming::Frame(f)) => f,
        };
        let now = t.clock.us();
        last_frame = now;
        match frame.command {
            Command::Message => {
                s.received += 1;
                let Some((from, _seq, sent_at)) = marker(&frame.body) else {
                    continue;
                };
                if now >= t.warm_us && now <= t.end_us {
                    s.in_window += 1;
                }
                let latency = u32::try_from(now.saturating_sub(sent_at)).unwrap_or(u32::MAX);
                if sent_at >= t.warm_us && now <= t.end_us {
                    s.latencies_us.push(latency);
                }
                s.note_second(now, latency);
                if let Some(snd) = &sender
                    && from == snd.id
                {
                    inflight = inflight.saturating_sub(1);
                }
            }
            Command::Receipt => {
                let id = frame.get("receipt-id").and_then(|r| r.parse::<u64>().ok());
                if let Some(sent_at) = id.and_then(|id| receipts.remove(&id))
                    && sent_at >= t.warm_us
                    && now <= t.end_us
                {
                    s.receipt_us
                        .push(u32::try_from(now.saturating_sub(sent_at)).unwrap_or(u32::MAX));
                }
            }
            Command::Error => {
                s.errors.push(client::describe(&frame));
                if !done_sending {
                    senders_left.fetch_sub(1, Ordering::AcqRel);
                }
                return s;
            }
            _ => {}
        }
    }
    conn.close().await;
    s
}

/// Connects and subscribes, retrying a refused SUBSCRIBE (a read model still catching up).
async fn open_subscribed(
    url: String,
    creds: Creds,
    destination: String,
    id: String,
    extra: Creds,
) -> anyhow::Result<Conn> {
    let mut last = None;
    for _ in 0..20 {
        let mut conn = Conn::connect(&url, &creds, "0,0").await?;
        match conn.subscribe(&destination, &id, &extra).await {
            Ok(()) => return Ok(conn),
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Err(last.expect("at least one attempt"))
}

/// Runs `f` over `items` with at most `limit` at once, in order of completion.
async fn bounded<T, F, Fut, R>(items: Vec<T>, limit: usize, f: F) -> Vec<R>
where
    F: Fn(T) -> Fut,
    Fut: std::future::Future<Output = R>,
{
    use futures::StreamExt;
    futures::stream::iter(items.into_iter().map(f))
        .buffer_unordered(limit)
        .collect()
        .await
}

/// A result row.
struct Row {
    scenario: String,
    server: String,
    conns: usize,
    deliveries_per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
    receipt_p50_ms: Option<f64>,
    receipt_p99_ms: Option<f64>,
    rss_before_kib: Option<u64>,
    rss_during_kib: Option<u64>,
    kib_per_conn: Option<f64>,
    /// CPU seconds the server used during the load phase.
    server_cpu_s: Option<f64>,
    notes: String,
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    f64::from(sorted[i.min(sorted.len() - 1)]) / 1000.0
}

/// Samples the server's RSS every 250 ms until `stop`; the maximum.
fn rss_sampler(pid: Option<u32>, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<Option<u64>> {
    tokio::spawn(async move {
        let mut max = None;
        while !stop.load(Ordering::Acquire) {
            if let Some(kib) = pid.and_then(servers::rss_kib) {
                max = Some(max.map_or(kib, |m: u64| m.max(kib)));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        max
    })
}

/// Scenarios a, b, d: connect every member, load for `secs`, collect.
async fn run_active(o: &Options, target: &Target, scenario: &str) -> anyhow::Result<Row> {
    let (rooms, window, receipts): (Vec<&RoomPlan>, usize, bool) = match scenario {
        "a" => (target.rooms.iter().collect(), o.window, false),
        "d" => (target.rooms.iter().collect(), o.window, true),
        "b" => (vec![&target.fanout], o.fanout_window, false),
        other => bail!("unknown scenario {other}"),
    };
    let rss_before = target.pid.and_then(servers::rss_kib);
    let mut jobs = Vec::new();
    for (r, room) in rooms.iter().enumerate() {
        for (m, (creds, sends)) in room.members.iter().enumerate() {
            jobs.push((
                r,
                m,
                room.subscribe.clone(),
                room.send.clone(),
                creds.clone(),
                *sends,
            ));
        }
    }
    let started = Instant::now();
    let url = target.url.clone();
    let extra = target.extra_subscribe.clone();
    let opened = bounded(
        jobs,
        CONNECT_CONCURRENCY,
        |(r, m, sub, send, creds, sends)| {
            let (url, extra) = (url.clone(), extra.clone());
            async move {
                let conn = open_subscribed(url, creds, sub, format!("s{r}-{m}"), extra).await;
                conn.map(|c| (c, send, sends))
            }
        },
    )
    .await;
    let mut conns = Vec::with_capacity(opened.len());
    for c in opened {
        conns.push(c.context("opening a session")?);
    }
    eprintln!(
        "  {scenario} {}: {} sessions subscribed in {:.1} s",
        target.name,
        conns.len(),
        started.elapsed().as_secs_f64()
    );
    let n = conns.len();
    let clock = Clock(Instant::now());
    let secs_us = (o.secs * 1e6) as u64;
    let timing = Arc::new(Timing {
        clock,
        warm_us: (o.warmup * 1e6) as u64,
        end_us: secs_us,
        drain_us: secs_us + 5_000_000,
    });
    let senders = conns.iter().filter(|(_, _, s)| *s).count();
    let senders_left = Arc::new(AtomicUsize::new(senders));
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = rss_sampler(target.pid, stop.clone());
    let cpu_before = target.pid.and_then(servers::cpu_secs);
    let mut tasks = Vec::with_capacity(n);
    for (i, (conn, send, sends)) in conns.into_iter().enumerate() {
        let sender = sends.then(|| Sender {
            id: u32::try_from(i).unwrap_or(u32::MAX),
            dest: send,
            window,
            receipts,
            interval_us: if o.rate > 0.0 {
                (1e6 / o.rate) as u64
            } else {
                0
            },
            extra: target.extra_send.clone(),
        });
        tasks.push(tokio::spawn(drive(
            conn,
            sender,
            timing.clone(),
            senders_left.clone(),
        )));
    }
    let mut all = ConnStats::default();
    for t in tasks {
        let s = t.await.context("a connection task panicked")?;
        all.sent += s.sent;
        all.received += s.received;
        all.in_window += s.in_window;
        all.latencies_us.extend(s.latencies_us);
        all.receipt_us.extend(s.receipt_us);
        all.errors.extend(s.errors);
        if all.per_sec.len() < s.per_sec.len() {
            all.per_sec.resize(s.per_sec.len(), (0, 0));
        }
        for (a, b) in all.per_sec.iter_mut().zip(&s.per_sec) {
            a.0 += b.0;
            a.1 = a.1.max(b.1);
        }
    }
    stop.store(true, Ordering::Release);
    if o.timeline {
        for (sec, (n, worst)) in all.per_sec.iter().enumerate() {
            eprintln!(
                "    {scenario} {} second {sec}: {n} deliveries, worst {:.1} ms",
                target.name,
                f64::from(*worst) / 1000.0
            );
        }
    }
    let cpu = cpu_before
        .zip(target.pid.and_then(servers::cpu_secs))
        .map(|(a, b)| b - a);
    let rss_during = sampler.await.ok().flatten();
    all.latencies_us.sort_unstable();
    all.receipt_us.sort_unstable();
    let per_message: u64 = if scenario == "b" {
        rooms[0].members.len() as u64
    } else {
        2
    };
    let expected = all.sent * per_message;
    let measured = o.secs - o.warmup;
    let mut notes = format!("sent {}, delivered {}/{}", all.sent, all.received, expected);
    if !all.errors.is_empty() {
        notes.push_str(&format!(
            "; {} errors, first: {}",
            all.errors.len(),
            all.errors[0]
        ));
    }
    let has_receipts = receipts;
    Ok(Row {
        scenario: scenario.into(),
        server: target.name.clone(),
        conns: n,
        deliveries_per_sec: all.in_window as f64 / measured,
        p50_ms: percentile(&all.latencies_us, 0.50),
        p99_ms: percentile(&all.latencies_us, 0.99),
        receipt_p50_ms: has_receipts.then(|| percentile(&all.receipt_us, 0.50)),
        receipt_p99_ms: has_receipts.then(|| percentile(&all.receipt_us, 0.99)),
        rss_before_kib: rss_before,
        rss_during_kib: rss_during,
        kib_per_conn: None,
        server_cpu_s: cpu,
        notes,
    })
}

/// Scenario c: `idle` connections that only exchange heart-beats for `idle_hold` seconds.
async fn run_idle(o: &Options, target: &Target) -> anyhow::Result<Row> {
    let pid = target.pid;
    let settle = || async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        pid.and_then(servers::rss_kib)
    };
    let rss_before = settle().await;
    let cpu_before = pid.and_then(servers::cpu_secs);
    let started = Instant::now();
    let url = target.url.clone();
    let jobs: Vec<Creds> = (0..o.idle)
        .map(|i| target.idle[i % target.idle.len()].clone())
        .collect();
    let opened = bounded(jobs, CONNECT_CONCURRENCY, |creds| {
        let url = url.clone();
        async move { Conn::connect(&url, &creds, "10000,10000").await }
    })
    .await;
    let mut conns = Vec::with_capacity(opened.len());
    let mut failures = Vec::new();
    for c in opened {
        match c {
            Ok(c) => conns.push(c),
            Err(e) => failures.push(format!("{e:#}")),
        }
    }
    eprintln!(
        "  c {}: {} idle sessions in {:.1} s ({} failed)",
        target.name,
        conns.len(),
        started.elapsed().as_secs_f64(),
        failures.len()
    );
    if conns.is_empty() {
        bail!(
            "no idle connection opened: {}",
            failures.first().cloned().unwrap_or_default()
        );
    }
    let hold = Duration::from_secs_f64(o.idle_hold);
    let tasks: Vec<_> = conns
        .into_iter()
        .map(|mut conn| {
            tokio::spawn(async move {
                let end = tokio::time::Instant::now() + hold;
                let mut beat = tokio::time::interval(Duration::from_secs(10));
                beat.tick().await;
                loop {
                    tokio::select! {
                        _ = tokio::time::sleep_until(end) => break,
                        _ = beat.tick() => {
                            if conn.heartbeat().await.is_err() {
                                return (false, conn.take_heartbeats());
                            }
                        }
                        incoming = conn.next() => {
                            if let Incoming::Closed = incoming {
                                return (false, conn.take_heartbeats());
                            }
                        }
                    }
                }
                // The server's RSS was read before `end`; now the socket may close.
                let beats = conn.take_heartbeats();
                conn.close().await;
                (true, beats)
            })
        })
        .collect();
    // Measure while all are open, a moment before the hold ends.
    tokio::time::sleep(hold.saturating_sub(Duration::from_millis(300))).await;
    let rss_during = pid.and_then(servers::rss_kib);
    let cpu = cpu_before
        .zip(pid.and_then(servers::cpu_secs))
        .map(|(a, b)| b - a);
    let mut alive = 0;
    let mut beats = 0;
    for t in tasks {
        let (ok, b) = t.await.context("an idle task panicked")?;
        alive += usize::from(ok);
        beats += b;
    }
    let n = alive.max(1);
    let per_conn = match (rss_before, rss_during) {
        (Some(b), Some(d)) => Some(d.saturating_sub(b) as f64 / n as f64),
        _ => None,
    };
    let mut notes = format!("{alive} alive at the end, {beats} server heart-beats");
    if let Some(f) = failures.first() {
        notes.push_str(&format!(
            "; {} failed to connect, first: {f}",
            failures.len()
        ));
    }
    Ok(Row {
        scenario: "c".into(),
        server: target.name.clone(),
        conns: alive,
        deliveries_per_sec: f64::NAN,
        p50_ms: f64::NAN,
        p99_ms: f64::NAN,
        receipt_p50_ms: None,
        receipt_p99_ms: None,
        rss_before_kib: rss_before,
        rss_during_kib: rss_during,
        kib_per_conn: per_conn,
        server_cpu_s: cpu,
        notes,
    })
}

fn fmt_opt(v: Option<f64>, digits: usize) -> String {
    match v {
        Some(x) if x.is_finite() => format!("{x:.digits$}"),
        _ => "-".into(),
    }
}

fn mib(kib: Option<u64>) -> Option<f64> {
    kib.map(|k| k as f64 / 1024.0)
}

fn print_table(rows: &[Row]) {
    println!();
    println!(
        "| scenario | server | sessions | deliveries/s | p50 ms | p99 ms | receipt p50/p99 ms | RSS before MiB | RSS during MiB | KiB/idle conn | server CPU s | notes |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|");
    for r in rows {
        let receipts = match (r.receipt_p50_ms, r.receipt_p99_ms) {
            (Some(a), Some(b)) => format!("{} / {}", fmt_opt(Some(a), 2), fmt_opt(Some(b), 2)),
            _ => "-".into(),
        };
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.scenario,
            r.server,
            r.conns,
            fmt_opt(Some(r.deliveries_per_sec), 0),
            fmt_opt(Some(r.p50_ms), 2),
            fmt_opt(Some(r.p99_ms), 2),
            receipts,
            fmt_opt(mib(r.rss_before_kib), 1),
            fmt_opt(mib(r.rss_during_kib), 1),
            fmt_opt(r.kib_per_conn, 1),
            fmt_opt(r.server_cpu_s, 1),
            r.notes
        );
    }
    // Ratios Neulbi / each peer per scenario.
    let find = |s: &str, name: &str| rows.iter().find(|r| r.scenario == s && r.server == name);
    let mut peers: Vec<&str> = rows
        .iter()
        .map(|r| r.server.as_str())
        .filter(|n| *n != "neulbi")
        .collect();
    peers.dedup();
    let mut header = false;
    for (s, peer) in ["a", "b", "c", "d"]
        .iter()
        .flat_map(|s| peers.iter().map(move |p| (*s, *p)))
    {
        let (Some(n), Some(r)) = (find(s, "neulbi"), find(s, peer)) else {
            continue;
        };
        if !header {
            println!();
            println!(
                "| scenario | peer | Neulbi/peer deliveries/s | p99 (Neulbi/peer) | RSS during (Neulbi/peer) | KiB/idle conn (Neulbi/peer) |"
            );
            println!("|---|---|---:|---:|---:|---:|");
            header = true;
        }
        let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) if a.is_finite() && b.is_finite() && b > 0.0 => {
                format!("{:.2}×", a / b)
            }
            _ => "-".into(),
        };
        println!(
            "| {s} | {peer} | {} | {} | {} | {} |",
            ratio(Some(n.deliveries_per_sec), Some(r.deliveries_per_sec)),
            ratio(Some(n.p99_ms), Some(r.p99_ms)),
            ratio(mib(n.rss_during_kib), mib(r.rss_during_kib)),
            ratio(n.kib_per_conn, r.kib_per_conn),
        );
    }
}

fn fixture_spec(o: &Options) -> FixtureSpec {
    FixtureSpec {
        rooms: o.rooms,
        subscribers: o.subscribers,
        token_ttl_secs: 3600,
    }
}

async fn run_target(o: &Options, target: &Target, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    for s in &o.scenarios {
        let row = if s == "c" {
            run_idle(o, target).await
        } else {
            run_active(o, target, s).await
        }
        .with_context(|| format!("scenario {s} against {}", target.name))?;
        if s == "c" {
            eprintln!(
                "  c {}: {} KiB per idle connection; {}",
                target.name,
                fmt_opt(row.kib_per_conn, 1),
                row.notes
            );
        } else {
            eprintln!(
                "  {s} {}: {:.0} deliveries/s, p99 {:.2} ms; {}",
                target.name, row.deliveries_per_sec, row.p99_ms, row.notes
            );
        }
        rows.push(row);
        // Let closed sockets and the server settle between scenarios.
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    Ok(())
}

fn describe_machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_owned())
        })
        .unwrap_or_default();
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| m.lines().next().map(str::to_owned))
        .unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{cpus} CPUs ({cpu}), {mem}")
}

fn main() -> anyhow::Result<()> {
    let o = options();
    eprintln!(
        "stomp_load ({}): servers {:?}, scenarios {:?}, {} s per scenario ({} s warm-up), {} rooms, {} fan-out subscribers, {} idle; {}",
        if o.full { "full" } else { "smoke" },
        o.servers,
        o.scenarios,
        o.secs,
        o.warmup,
        o.rooms,
        o.subscribers,
        o.idle,
        describe_machine()
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    let mut rows = Vec::new();
    for &rooms in &o.room_counts {
        let o = Options { rooms, ..o.clone() };
        run_servers(&o, &runtime, &mut rows)?;
    }
    drop(runtime);
    print_table(&rows);
    if !o.full {
        smoke_checks(&o, &rows);
    }
    Ok(())
}

/// Runs every scenario against every server of `o`, one server at a time.
fn run_servers(
    o: &Options,
    runtime: &tokio::runtime::Runtime,
    rows: &mut Vec<Row>,
) -> anyhow::Result<()> {
    for server in o.servers.clone() {
        match server.as_str() {
            "neulbi-inprocess" => {
                let (app, fixture) = servers::InProcess::start(fixture_spec(o))?;
                let (rooms, fanout, idle) =
                    plan_from_fixture(&fixture, "/topic/rooms.{room}", "/app/rooms.{room}.send");
                let target = Target {
                    name: "neulbi".into(),
                    url: format!("ws://{}/chat/websocket", app.addr),
                    // The load generator shares the process: RSS is not the server's alone.
                    pid: None,
                    rooms,
                    fanout,
                    idle,
                    extra_subscribe: Creds::default(),
                    extra_send: Creds::default(),
                };
                let result = runtime.block_on(run_target(o, &target, rows));
                drop(app);
                result?;
            }
            "neulbi" => {
                let binary = servers::neulbi_binary()?;
                let (server, fixture) = servers::NeulbiProcess::start(&binary, fixture_spec(o))?;
                let (rooms, fanout, idle) =
                    plan_from_fixture(&fixture, "/topic/rooms.{room}", "/app/rooms.{room}.send");
                let target = Target {
                    name: "neulbi".into(),
                    url: format!("ws://{}/chat/websocket", server.addr),
                    pid: Some(server.pid()),
                    rooms,
                    fanout,
                    idle,
                    extra_subscribe: Creds::default(),
                    extra_send: Creds::default(),
                };
                let result = runtime.block_on(run_target(o, &target, rows));
                if result.is_err() {
                    eprintln!("neulbi log tail:\n{}", server.log());
                }
                drop(server);
                result?;
            }
            "rabbitmq" | "rabbitmq-durable" => {
                let broker = servers::Rabbit::start()?;
                let creds = login("guest", "guest", "/");
                let (rooms, fanout, idle) =
                    plan_with_login(o, creds, "/topic/rooms.{room}", "/topic/rooms.{room}");
                // The durable variant: each subscription gets a durable queue and every
                // message is persistent, so a SEND's RECEIPT (a publisher confirm) follows the
                // write to disk, as Neulbi's follows the durable append.
                let durable = server == "rabbitmq-durable";
                let pairs = |p: &[(&str, &str)]| -> Creds {
                    Arc::new(p.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect())
                };
                let target = Target {
                    name: server.clone(),
                    url: broker.url(),
                    pid: Some(broker.pid),
                    rooms,
                    fanout,
                    idle,
                    extra_subscribe: if durable {
                        pairs(&[("durable", "true"), ("auto-delete", "false")])
                    } else {
                        Creds::default()
                    },
                    extra_send: if durable {
                        pairs(&[("persistent", "true")])
                    } else {
                        Creds::default()
                    },
                };
                let result = runtime.block_on(run_target(o, &target, rows));
                drop(broker);
                result?;
            }
            "custom" => {
                let c = &o.custom;
                let url = c.url.clone().context("--servers custom needs --url")?;
                let subscribe = c.subscribe.clone().unwrap_or("/topic/rooms.{room}".into());
                let send = c.send.clone().unwrap_or_else(|| subscribe.clone());
                let (rooms, fanout, idle) = match &c.fixture {
                    Some(path) => {
                        let fixture: Fixture =
                            serde_json::from_slice(&std::fs::read(path).context("--fixture")?)?;
                        plan_from_fixture(&fixture, &subscribe, &send)
                    }
                    None => {
                        let creds = login(
                            c.login.as_deref().unwrap_or("guest"),
                            c.passcode.as_deref().unwrap_or("guest"),
                            c.host.as_deref().unwrap_or("/"),
                        );
                        plan_with_login(o, creds, &subscribe, &send)
                    }
                };
                let target = Target {
                    name: "custom".into(),
                    url,
                    pid: c.pid,
                    rooms,
                    fanout,
                    idle,
                    extra_subscribe: Creds::default(),
                    extra_send: Creds::default(),
                };
                runtime.block_on(run_target(o, &target, rows))?;
            }
            other => bail!("unknown server {other}"),
        }
    }
    Ok(())
}

/// The smoke run guards that the bench still works: messages flow, receipts come back.
fn smoke_checks(o: &Options, rows: &[Row]) {
    for r in rows {
        match r.scenario.as_str() {
            "a" | "b" | "d" => assert!(
                r.deliveries_per_sec > 0.0 && r.p99_ms.is_finite() && !r.notes.contains("errors"),
                "scenario {} delivered nothing or failed: {}",
                r.scenario,
                r.notes
            ),
            "c" => assert_eq!(r.conns, o.idle, "idle connections dropped: {}", r.notes),
            _ => {}
        }
        if r.scenario == "d" {
            assert!(
                r.receipt_p99_ms.is_some_and(f64::is_finite),
                "no RECEIPT came back: {}",
                r.notes
            );
        }
    }
}
