//! `neulbi dev bench-fixture`: users, rooms and access tokens for a STOMP load test, made in
//! seconds rather than through minutes of argon2 sign-ups.
//!
//! Users are registered and rooms opened through the actors (so the events, the read model
//! of room members that SUBSCRIBE checks, and the privacy keys are exactly what real sign-ups
//! and room openings produce); tokens are minted with the node's signing key. The users have
//! no password and no identity row: they can chat with the tokens written here, not sign in.
//!
//! A room has exactly two members (a client and a counselor), so the fan-out room's
//! subscribers are many sessions of its two members, as when people keep several tabs open.

use crate::actors::Registry;
use crate::auth::AuthService;
use crate::auth::service::WEB_CLIENT_ID;
use crate::store::Metadata;
use anyhow::Context as _;
use futures::StreamExt;
use neulbi_domain::chat_room::{ChatRoomDecider, RoomCommand};
use neulbi_domain::user::{UserCommand, UserDecider};
use neulbi_domain::{Actor, Context, Role, RoomId, UserId};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Commands in flight at once while creating the fixture.
const CONCURRENCY: usize = 64;

/// What to create.
#[derive(Debug, Clone, Copy)]
pub struct FixtureSpec {
    /// Two-member rooms (one client, one counselor each) for the conversation scenarios.
    pub rooms: usize,
    /// Sessions subscribed to the fan-out room (sessions of its two members).
    pub subscribers: usize,
    /// Lifetime of the minted access tokens, in seconds (longer than a sign-in's, so a long
    /// load test does not see them expire).
    pub token_ttl_secs: u64,
}

/// One member of a room and an access token for them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Participant {
    /// The user id.
    pub user: Uuid,
    /// An access JWT (`Authorization: Bearer` on CONNECT).
    pub token: String,
}

/// A room and its two members (client first, then counselor).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FixtureRoom {
    /// The room id (`/topic/rooms.{id}`).
    pub id: Uuid,
    /// The client and the counselor.
    pub participants: Vec<Participant>,
}

/// The fan-out room: one sender, many subscribing sessions.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Fanout {
    /// The room id.
    pub room: Uuid,
    /// One token per subscribing session (the two members' tokens, alternating).
    pub subscribers: Vec<String>,
    /// The token of the member who sends.
    pub sender: String,
}

/// What the load generator reads (`--out FILE.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Fixture {
    /// The conversation rooms.
    pub rooms: Vec<FixtureRoom>,
    /// The fan-out room.
    pub fanout: Fanout,
}

fn system() -> Context {
    Context::new(Actor::system(), chrono::Utc::now())
}

async fn register(users: &Registry<UserDecider>, n: usize, role: Role) -> anyhow::Result<UserId> {
    let id = UserId::from_uuid(Uuid::now_v7());
    let kind = if role == Role::Counselor {
        "counselor"
    } else {
        "client"
    };
    let command = UserCommand::Register {
        user_id: id,
        provider: "bench".into(),
        subject: id.to_string(),
        email: format!("bench-{kind}-{n}@example.test"),
        nickname: format!("{kind}{n}"),
        role,
    };
    let metadata = Metadata {
        user_id: Some(id.as_uuid()),
        ..Metadata::default()
    };
    users
        .execute(id.as_uuid(), command, system(), metadata)
        .await
        .with_context(|| format!("registering bench {kind} {n}"))?;
    Ok(id)
}

/// Registers a client and a counselor and opens a room for them.
async fn open_room(
    users: &Registry<UserDecider>,
    rooms: &Registry<ChatRoomDecider>,
    n: usize,
) -> anyhow::Result<(RoomId, UserId, UserId)> {
    let client = register(users, n, Role::Client).await?;
    let counselor = register(users, n, Role::Counselor).await?;
    let room = RoomId::from_uuid(Uuid::now_v7());
    let open = RoomCommand::Open {
        room_id: room,
        client,
        counselor,
    };
    let ctx = Context::new(Actor::user(client, Role::Client), chrono::Utc::now());
    let metadata = Metadata {
        user_id: Some(client.as_uuid()),
        ..Metadata::default()
    };
    rooms
        .execute(room.as_uuid(), open, ctx, metadata)
        .await
        .with_context(|| format!("opening bench room {n}"))?;
    Ok((room, client, counselor))
}

/// Creates `spec.rooms` conversation rooms plus the fan-out room and mints a token for every
/// member. Must run inside an actix system (the actors start on the current arbiter).
pub async fn create(
    users: &Registry<UserDecider>,
    rooms: &Registry<ChatRoomDecider>,
    auth: &AuthService,
    spec: FixtureSpec,
) -> anyhow::Result<Fixture> {
    let issuer = auth.issuer().with_ttl(spec.token_ttl_secs.max(1));
    let ring = auth.key_ring();
    let now = chrono::Utc::now().timestamp();
    let mint = |user: UserId, role: Role| -> anyhow::Result<Participant> {
        let claims = issuer.claims(user.to_string(), WEB_CLIENT_ID, "", Some(role), now);
        let token = issuer
            .sign(&ring, &claims)
            .map_err(|e| anyhow::anyhow!("signing a bench token: {e}"))?;
        Ok(Participant {
            user: user.as_uuid(),
            token,
        })
    };
    // Room 0 of the stream below is the fan-out room.
    let mut opened: Vec<(usize, (RoomId, UserId, UserId))> = futures::stream::iter(
        (0..=spec.rooms).map(|n| async move { open_room(users, rooms, n).await.map(|r| (n, r)) }),
    )
    .buffer_unordered(CONCURRENCY)
    .collect::<Vec<_>>()
    .await
    .into_iter()
    .collect::<anyhow::Result<_>>()?;
    opened.sort_by_key(|(n, _)| *n);
    let mut out = Vec::with_capacity(spec.rooms);
    let mut fanout = None;
    for (n, (room, client, counselor)) in opened {
        let participants = vec![
            mint(client, Role::Client)?,
            mint(counselor, Role::Counselor)?,
        ];
        if n == 0 {
            let subscribers = (0..spec.subscribers)
                .map(|i| participants[i % 2].token.clone())
                .collect();
            fanout = Some(Fanout {
                room: room.as_uuid(),
                subscribers,
                sender: participants[0].token.clone(),
            });
        } else {
            out.push(FixtureRoom {
                id: room.as_uuid(),
                participants,
            });
        }
    }
    let fanout = fanout.context("the fan-out room was not opened")?;
    Ok(Fixture { rooms: out, fanout })
}

/// The `dev bench-fixture` command: opens the store named by `config`, creates the fixture
/// and writes it to `out` as JSON. Tokens name the issuer `serve` will use with the same
/// configuration (its public URL, derived from `listen` when unset), so run `serve` with the
/// same `NEULBI_LISTEN` / `NEULBI_PUBLIC_URL` and data dir afterwards.
pub async fn write(
    config: &crate::config::Config,
    spec: FixtureSpec,
    out: &std::path::Path,
) -> anyhow::Result<Fixture> {
    let storage = config.open_storage(true).await?;
    let result = async {
        let users = Registry::new(storage.events.clone(), config.registry_config());
        let rooms = Registry::new(storage.events.clone(), config.registry_config());
        let auth = AuthService::open(&config.auth, &storage, &config.public_url(config.listen))
            .await
            .context("opening the signing keys")?;
        let fixture = create(&users, &rooms, &auth, spec).await?;
        let json = serde_json::to_vec(&fixture)?;
        std::fs::write(out, json).with_context(|| format!("writing {}", out.display()))?;
        Ok(fixture)
    }
    .await;
    storage.events.close().await;
    result
}
