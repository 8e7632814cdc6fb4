//! A seeded scenario with recognisable personal data: a client and a counselor, a login, a
//! room and messages. Used by the erasure and leak tests.

use chrono::Utc;
use neulbi::actors::Registry;
use neulbi::store::Metadata;
use neulbi_domain::chat_room::{ChatRoomDecider, RoomCommand};
use neulbi_domain::user::{UserCommand, UserDecider};
use neulbi_domain::{Actor, Context, MessageId, Role, RoomId, UserId};
use uuid::Uuid;

/// The client's email.
pub const EMAIL: &str = "minji.kim.erase@example.kr";
/// The client's nickname.
pub const NICKNAME: &str = "민지-지워질-이름";
/// The client's message texts.
pub const SECRETS: [&str; 3] = [
    "내담자-비밀-하나",
    "client-secret-two",
    "client-secret-three",
];
/// The client's login IP.
pub const IP: &str = "203.0.113.77";
/// The counselor's reply.
pub const COUNSELOR_TEXT: &str = "counselor-reply-stays";

pub fn system() -> Context {
    Context::new(Actor::system(), Utc::now())
}

pub fn as_user(user: UserId, role: Role) -> Context {
    Context::new(Actor::user(user, role), Utc::now())
}

pub struct Seeded {
    pub client: UserId,
    pub counselor: UserId,
    pub room: Uuid,
}

pub async fn seed(users: &Registry<UserDecider>, rooms: &Registry<ChatRoomDecider>) -> Seeded {
    let client = UserId(Uuid::now_v7());
    let counselor = UserId(Uuid::now_v7());
    let m = Metadata::default;
    let register = |id: UserId, email: &str, nick: &str, role: Role| UserCommand::Register {
        user_id: id,
        provider: "local".into(),
        subject: email.into(),
        email: email.into(),
        nickname: nick.into(),
        role,
    };
    users
        .execute(
            client.0,
            register(client, EMAIL, NICKNAME, Role::Client),
            system(),
            m(),
        )
        .await
        .expect("register client");
    users
        .execute(
            counselor.0,
            register(counselor, "counselor@example.kr", "상담사", Role::Counselor),
            system(),
            m(),
        )
        .await
        .expect("register counselor");
    let login = UserCommand::RecordLogin {
        provider: "local".into(),
        ip: Some(IP.into()),
        user_agent: Some("Mozilla/5.0 erasure-test".into()),
    };
    users
        .execute(client.0, login, as_user(client, Role::Client), m())
        .await
        .expect("login");

    let room = Uuid::now_v7();
    let open = RoomCommand::Open {
        room_id: RoomId(room),
        client,
        counselor,
    };
    rooms
        .execute(room, open, as_user(client, Role::Client), m())
        .await
        .expect("open");
    for text in SECRETS {
        let post = RoomCommand::PostMessage {
            message_id: MessageId(Uuid::now_v7()),
            body: text.into(),
            client_message_id: None,
        };
        rooms
            .execute(room, post, as_user(client, Role::Client), m())
            .await
            .expect("client posts");
    }
    let reply = RoomCommand::PostMessage {
        message_id: MessageId(Uuid::now_v7()),
        body: COUNSELOR_TEXT.into(),
        client_message_id: None,
    };
    rooms
        .execute(room, reply, as_user(counselor, Role::Counselor), m())
        .await
        .expect("counselor posts");
    Seeded {
        client,
        counselor,
        room,
    }
}
