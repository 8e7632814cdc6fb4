//! `auth` benchmark: access-token verifications per second on one core (Neulbi's EdDSA path,
//! with ES256 and RS256 verified by the same library as peers), and the latency of a refresh
//! rotation (`grant_type=refresh_token` minus HTTP: rotate the stored token, fold the user,
//! sign a new access token) on SQLite and PostgreSQL.
//!
//! Full run:   cargo bench --bench auth   (options after `--`: --secs N, --backends sqlite,postgres)
//! Smoke run:  cargo test --bench auth    (a fraction of a second per cell; used by .ci/run)

#[allow(dead_code)]
#[path = "../tests/support/pg.rs"]
mod pg;

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use neulbi::actors::codec;
use neulbi::auth::jwt::{AccessClaims, TokenIssuer};
use neulbi::auth::keys::{KeyRing, generate_private_pem};
use neulbi::auth::{AuthService, AuthSettings};
use neulbi::store::{self, ExpectedVersion, Metadata, StoreLimits};
use neulbi_domain::user::UserEvent;
use neulbi_domain::{Personal, Role, StreamKind, StreamName, UserId};
use std::time::{Duration, Instant};
use uuid::Uuid;

struct Options {
    secs: f64,
    backends: Vec<String>,
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
    let mut o = Options {
        secs: if full { 3.0 } else { 0.2 },
        backends: vec!["sqlite".into(), "postgres".into()],
    };
    if let Some(v) = value("--secs") {
        o.secs = v.parse().expect("--secs takes a number");
    }
    if let Some(v) = value("--backends") {
        o.backends = v.split(',').map(str::to_owned).collect();
    }
    o
}

/// Calls `f` as often as it can for `secs` on this thread; returns calls per second.
fn per_second(secs: f64, mut f: impl FnMut()) -> f64 {
    let deadline = Duration::from_secs_f64(secs);
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < deadline {
        for _ in 0..64 {
            f();
        }
        n += 64;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

fn peer(alg: Algorithm, public_pem: &str, token: &str) -> impl FnMut() {
    let key = match alg {
        Algorithm::ES256 => DecodingKey::from_ec_pem(public_pem.as_bytes()),
        _ => DecodingKey::from_rsa_pem(public_pem.as_bytes()),
    }
    .expect("peer key");
    let mut validation = Validation::new(alg);
    validation.set_audience(&["neulbi-api"]);
    validation.set_issuer(&["http://bench"]);
    let token = token.to_owned();
    move || {
        let header = jsonwebtoken::decode_header(&token).expect("header");
        assert!(header.kid.is_some());
        jsonwebtoken::decode::<AccessClaims>(&token, &key, &validation).expect("peer verifies");
    }
}

fn verification_rows(secs: f64) -> Vec<(String, f64)> {
    let ring = KeyRing::from_pem(&generate_private_pem().expect("pem"), None).expect("ring");
    let issuer = TokenIssuer::new("http://bench", "neulbi-api", 600);
    let now = chrono::Utc::now().timestamp();
    let claims = issuer.claims(
        Uuid::now_v7().to_string(),
        "web",
        "",
        Some(Role::Client),
        now,
    );
    let token = issuer.sign(&ring, &claims).expect("sign");
    let ours = per_second(secs, || {
        issuer.verify(&ring, &token).expect("verifies");
    });
    let tokens = include_str!("keys/tokens.txt");
    let token_of = |alg: &str| {
        tokens
            .lines()
            .find_map(|l| l.strip_prefix(alg).map(str::trim))
            .expect("peer token")
            .to_owned()
    };
    let es = per_second(
        secs,
        peer(
            Algorithm::ES256,
            include_str!("keys/es256.pub"),
            &token_of("ES256 "),
        ),
    );
    let rs = per_second(
        secs,
        peer(
            Algorithm::RS256,
            include_str!("keys/rs256.pub"),
            &token_of("RS256 "),
        ),
    );
    vec![
        ("neulbi EdDSA (Ed25519)".into(), ours),
        ("peer ES256 (P-256)".into(), es),
        ("peer RS256 (2048-bit)".into(), rs),
    ]
}

/// p50 and p99 of sequential refresh rotations on `url`, in microseconds, and how many ran.
async fn rotation_latency(url: &str, secs: f64) -> (u64, u64, usize) {
    let storage = store::open_storage(url, StoreLimits::default(), true)
        .await
        .expect("storage");
    let settings = AuthSettings::default();
    let auth = AuthService::open(&settings, &storage, "http://bench")
        .await
        .expect("auth");
    let user = UserId::from_uuid(Uuid::now_v7());
    let registered = UserEvent::Registered {
        user_id: user,
        provider: "local".into(),
        subject: Personal::new(user, user.to_string()),
        email: Personal::new(user, "bench@example.com".into()),
        nickname: Personal::new(user, "Bench".into()),
        role: Role::Client,
        at: chrono::Utc::now(),
    };
    storage
        .events
        .append(
            &StreamName::new(StreamKind::User, user.as_uuid()),
            ExpectedVersion::NoStream,
            vec![codec::encode(&registered, &Metadata::default()).expect("encode")],
        )
        .await
        .expect("append");
    let mut token = auth
        .tokens()
        .issue_refresh(&user.to_string(), "web", "", None)
        .await
        .expect("issue")
        .token;
    let mut lat = Vec::new();
    let deadline = Duration::from_secs_f64(secs);
    let start = Instant::now();
    while start.elapsed() < deadline || lat.len() < 5 {
        let t = Instant::now();
        let r = auth.refresh(&token).await.expect("rotation");
        lat.push(u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX));
        token = r.refresh_token.expect("new refresh token");
    }
    storage.events.close().await;
    lat.sort_unstable();
    let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
    (pct(0.50), pct(0.99), lat.len())
}

fn main() {
    let o = options();
    println!("auth benchmark ({} s per cell)\n", o.secs);
    println!("access-token verification, one core");
    println!(
        "{:<28} {:>14} {:>10}",
        "algorithm", "verifies/s", "vs neulbi"
    );
    let rows = verification_rows(o.secs);
    let ours = rows[0].1;
    for (name, rate) in &rows {
        println!("{name:<28} {rate:>14.0} {:>9.2}x", rate / ours);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    println!("\nrefresh rotation (sequential; rotate + fold user + sign)");
    println!(
        "{:<12} {:>10} {:>10} {:>10}",
        "backend", "p50 µs", "p99 µs", "rotations"
    );
    rt.block_on(async {
        for backend in &o.backends {
            let (p50, p99, n) = match backend.as_str() {
                "sqlite" => {
                    let dir = tempfile::tempdir().expect("temp dir");
                    let url = format!("sqlite://{}", dir.path().join("bench.db").display());
                    rotation_latency(&url, o.secs).await
                }
                "postgres" => {
                    // Durable settings, as in production.
                    let server =
                        pg::TempPostgres::start_with("-c fsync=on -c synchronous_commit=on");
                    rotation_latency(&server.url(), o.secs).await
                }
                other => panic!("unknown backend {other:?} (sqlite, postgres)"),
            };
            println!("{backend:<12} {p50:>10} {p99:>10} {n:>10}");
        }
    });
}
