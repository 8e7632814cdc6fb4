//! One running Neulbi node per test, on 127.0.0.1 with an ephemeral port and a temp data dir,
//! plus the people a chat test needs: clients, counselors and a room between them.

use super::http::post_json;
use super::stomp::signup;
use neulbi::config::Config;
use neulbi::startup::{Application, Stopper};
use neulbi::state::AppState;
use neulbi::store::Metadata;
use neulbi_domain::chat_room::RoomCommand;
use neulbi_domain::user::UserCommand;
use neulbi_domain::{Actor, Context, Role, RoomId, UserId};
use serde_json::json;
use std::net::SocketAddr;
use std::time::Duration;

/// A node serving in the background of the test.
pub struct TestApp {
    pub addr: SocketAddr,
    pub state: actix_web::web::Data<AppState>,
    /// The sign-in service (token epochs, issuer) of this node.
    pub auth: actix_web::web::Data<neulbi::auth::AuthService>,
    pub handle: actix_web::dev::ServerHandle,
    /// Stops like SIGTERM does: open STOMP connections are closed first.
    pub stopper: Stopper,
    /// The plain-HTTP listener redirecting to HTTPS, when TLS is configured with one.
    pub redirect: Option<SocketAddr>,
    _dir: tempfile::TempDir,
}

/// A signed-up person with a fresh access token.
pub struct Person {
    pub id: UserId,
    pub token: String,
}

impl Person {
    /// The `Authorization` header value for this person's requests.
    pub fn bearer(&self) -> String {
        format!("Bearer {}", self.token)
    }
}

impl TestApp {
    /// Starts a node with the embedded defaults; `tune` adjusts the config first.
    pub async fn start(tune: impl FnOnce(&mut Config)) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = Config {
            listen: "127.0.0.1:0".parse().expect("addr"),
            data_dir: dir.path().to_owned(),
            ..Config::default()
        };
        tune(&mut config);
        let app = Application::build(&config).await.expect("app");
        let redirect = app.redirect_addr();
        let (addr, handle, state, stopper, auth) = (
            app.local_addr(),
            app.handle(),
            app.state(),
            app.stopper(),
            app.auth(),
        );
        actix_rt::spawn(app.run_until_stopped());
        Self {
            addr,
            state,
            auth,
            handle,
            stopper,
            redirect,
            _dir: dir,
        }
    }

    /// The node's data directory (SQLite files, key file, images).
    pub fn data_dir(&self) -> &std::path::Path {
        self._dir.path()
    }

    /// Stops the node gracefully, closing open STOMP connections first.
    pub async fn stop(&self) {
        self.stopper.stop(true).await;
    }

    /// Signs up a client with a local account.
    pub async fn client(&self, email: &str) -> Person {
        let (token, id) = signup(self.addr, email).await;
        Person { id, token }
    }

    /// Signs up a person, grants them the counselor role as an operator, and signs them in
    /// again so their token carries the role.
    pub async fn counselor(&self, email: &str) -> Person {
        let (_, id) = signup(self.addr, email).await;
        let operator = Context::new(Actor::operator(), chrono::Utc::now());
        self.state
            .users
            .execute(
                id.as_uuid(),
                UserCommand::GrantCounselorRole,
                operator,
                Metadata::default(),
            )
            .await
            .expect("grant counselor");
        let r = post_json(
            self.addr,
            "/auth/login",
            &json!({ "email": email, "password": "a long password" }),
            &[],
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.body);
        let token = r.json()["access_token"].as_str().expect("token").to_owned();
        Person { id, token }
    }

    /// `client` opens a room with `counselor` over HTTP; returns the room id.
    pub async fn open_room(&self, client: &Person, counselor: &Person) -> String {
        let r = post_json(
            self.addr,
            "/rooms",
            &json!({ "counselor_id": counselor.id.to_string() }),
            &[("Authorization", &client.bearer())],
        )
        .await;
        assert!(matches!(r.status, 200 | 201), "{}: {}", r.status, r.body);
        r.json()["room_id"].as_str().expect("room id").to_owned()
    }

    /// Opens a room between any two users through the room actor (no role check, unlike
    /// `POST /rooms`) and waits until the read model lists both.
    pub async fn open_room_direct(&self, client: UserId, counselor: UserId) -> RoomId {
        let room = RoomId::from_uuid(uuid::Uuid::now_v7());
        let open = RoomCommand::Open {
            room_id: room,
            client,
            counselor,
        };
        let ctx = Context::new(Actor::user(client, Role::Client), chrono::Utc::now());
        self.state
            .rooms
            .execute(room.as_uuid(), open, ctx, Metadata::default())
            .await
            .expect("open");
        for user in [client, counselor] {
            self.wait_member_id(&room.to_string(), user).await;
        }
        room
    }

    /// The events of call `call`'s stream: type and data, in order.
    pub async fn call_events(&self, call: &str) -> Vec<(String, serde_json::Value)> {
        let stream = neulbi_domain::StreamName::new(
            neulbi_domain::StreamKind::Call,
            call.parse().expect("call id"),
        );
        self.state
            .store
            .read_stream(&stream, 0, neulbi::store::Direction::Forward, 1000)
            .await
            .expect("read")
            .into_iter()
            .map(|e| (e.event_type, e.data))
            .collect()
    }

    /// Waits until the read models list `person` as a member of `room` (the projection
    /// trails the log by a few milliseconds), for at most 10 s.
    pub async fn wait_member(&self, room: &str, person: &Person) {
        self.wait_member_id(room, person.id).await;
    }

    async fn wait_member_id(&self, room: &str, user: UserId) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let user = user.to_string();
        while !neulbi::projections::queries::is_member(&self.state.read, room, &user)
            .await
            .expect("query")
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{user} never became a member of {room}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A key-encryption key file in `dir` that every node of one deployment shares (a node with
/// another KEK is refused); returns its `file:` spec.
pub fn shared_kek(dir: &std::path::Path) -> String {
    let kek = dir.join("shared.kek");
    let material = [
        uuid::Uuid::new_v4().into_bytes(),
        uuid::Uuid::new_v4().into_bytes(),
    ]
    .concat();
    std::fs::write(
        &kek,
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, material),
    )
    .expect("write kek");
    format!("file:{}", kek.display())
}

/// The configuration of node `name` of one deployment on the PostgreSQL at `url`.
pub fn shared_node(url: &str, kek: &str, name: &'static str) -> impl FnOnce(&mut Config) + use<> {
    let (url, kek) = (url.to_owned(), kek.to_owned());
    move |c: &mut Config| {
        c.database_url = Some(url);
        c.keys.kek = Some(kek);
        // One deployment: both nodes issue and accept tokens for the same public URL.
        c.public_url = Some("http://neulbi.test".into());
        c.calls.node = name.into();
    }
}
