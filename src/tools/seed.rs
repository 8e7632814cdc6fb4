//! `neulbi dev seed`: a realistic synthetic history (counselors with published profiles,
//! clients, rooms full of messages and read markers, calls) for demos and benchmarks.
//!
//! Events are built from the domain's own types and encoded by the same codec the actors
//! use, then appended through the store (so personal fields are sealed) in batches per
//! stream, many streams at a time: seeding a million events takes seconds, not hours.

use crate::actors::codec;
use crate::store::{EventData, ExpectedVersion, Metadata, SharedStore};
use chrono::{DateTime, Duration, Utc};
use futures::StreamExt;
use neulbi_domain::call_session::{CallEvent, CallPolicy};
use neulbi_domain::chat_room::RoomEvent;
use neulbi_domain::user::UserEvent;
use neulbi_domain::{
    CallId, DomainEvent, MessageId, Personal, Role, RoomId, StreamKind, StreamName, UserId,
};
use uuid::Uuid;

/// How much history to generate.
#[derive(Debug, Clone, Copy)]
pub struct SeedSpec {
    /// Counselors (each publishes a directory profile).
    pub counselors: usize,
    /// Clients.
    pub clients: usize,
    /// Rooms, each between a random client and counselor.
    pub rooms: usize,
    /// Messages in all, spread over the rooms.
    pub messages: usize,
    /// Calls, each in a random room, from request to end.
    pub calls: usize,
    /// Makes the history reproducible (same ids aside).
    pub seed: u64,
}

/// A small deterministic generator (xorshift64*): reproducible histories, no extra crate.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % (n.max(1) as u64)).unwrap_or(0)
    }
}

const PHRASES: [&str; 8] = [
    "안녕하세요, 요즘 잠을 잘 못 자요.",
    "지난번 이야기 이후로 조금 나아졌어요.",
    "How have you been feeling since our last session?",
    "회사 일 때문에 스트레스가 많아요.",
    "Let's try the breathing exercise again this week.",
    "가족과 대화하는 게 어려워요.",
    "That sounds really hard. Tell me more.",
    "오늘 상담 감사합니다.",
];
const NAMES: [&str; 8] = [
    "민준", "서연", "도윤", "하은", "지호", "수아", "Alex", "Jordan",
];

fn encode_all<E: DomainEvent>(events: &[E], actor: Option<UserId>) -> Vec<EventData> {
    let meta = Metadata {
        user_id: actor.map(|u| u.as_uuid()),
        ..Metadata::default()
    };
    events
        .iter()
        .filter_map(|e| codec::encode(e, &meta).ok())
        .collect()
}

/// One stream's worth of events, appended in chunks.
struct Job {
    stream: StreamName,
    events: Vec<EventData>,
}

async fn run(store: &SharedStore, job: Job) -> anyhow::Result<usize> {
    let mut version: Option<u64> = None;
    let n = job.events.len();
    let mut events = job.events.into_iter().peekable();
    while events.peek().is_some() {
        let chunk: Vec<EventData> = events.by_ref().take(100).collect();
        let len = chunk.len() as u64;
        let expected = ExpectedVersion::from_current(version);
        store.append(&job.stream, expected, chunk).await?;
        version = Some(version.map_or(len - 1, |v| v + len));
    }
    Ok(n)
}

/// Generates and appends the history; `progress(events_so_far, total)` after each stream.
pub async fn seed(
    store: &SharedStore,
    spec: SeedSpec,
    mut progress: impl FnMut(u64, u64),
) -> anyhow::Result<u64> {
    let mut rng = Rng(spec.seed.max(1));
    let start: DateTime<Utc> = Utc::now() - Duration::days(30);
    let mut clock = 0i64;
    let mut tick = |secs: i64| {
        clock += secs;
        start + Duration::seconds(clock)
    };
    let counselors: Vec<UserId> = (0..spec.counselors.max(1))
        .map(|_| UserId(Uuid::now_v7()))
        .collect();
    let clients: Vec<UserId> = (0..spec.clients.max(1))
        .map(|_| UserId(Uuid::now_v7()))
        .collect();
    let mut jobs = Vec::new();
    for (i, &u) in counselors.iter().chain(clients.iter()).enumerate() {
        let counselor = i < counselors.len();
        let nick = format!("{}{}", NAMES[rng.below(NAMES.len())], i);
        let mut events = vec![UserEvent::Registered {
            user_id: u,
            provider: "local".into(),
            subject: Personal::new(u, format!("seed-{u}")),
            email: Personal::new(u, format!("seed{i}@example.test")),
            nickname: Personal::new(u, nick),
            role: if counselor {
                Role::Counselor
            } else {
                Role::Client
            },
            at: tick(1),
        }];
        if counselor {
            events.push(UserEvent::CounselorProfilePublished {
                headline: Personal::new(u, "마음 건강 상담 · Counseling".into()),
                bio: Personal::new(u, PHRASES[rng.below(PHRASES.len())].into()),
                at: tick(1),
            });
        }
        jobs.push(Job {
            stream: StreamName::new(StreamKind::User, u.as_uuid()),
            events: encode_all(&events, Some(u)),
        });
    }
    let rooms = spec.rooms.max(1);
    let mut room_members = Vec::with_capacity(rooms);
    for r in 0..rooms {
        let room = RoomId(Uuid::now_v7());
        let client = clients[rng.below(clients.len())];
        let counselor = counselors[rng.below(counselors.len())];
        room_members.push((room, client, counselor));
        let mut events = vec![RoomEvent::Opened {
            room_id: room,
            client,
            counselor,
            at: tick(1),
        }];
        let count = spec.messages / rooms + usize::from(r < spec.messages % rooms);
        for m in 0..count {
            let author = if rng.below(2) == 0 { client } else { counselor };
            let message_id = MessageId(Uuid::now_v7());
            events.push(RoomEvent::MessagePosted {
                message_id,
                author,
                body: Personal::new(author, PHRASES[rng.below(PHRASES.len())].into()),
                client_message_id: Some(format!("seed-{m}")),
                at: tick(3),
            });
            if m % 10 == 9 {
                let reader = if author == client { counselor } else { client };
                events.push(RoomEvent::MessageRead {
                    reader,
                    up_to: message_id,
                    at: tick(1),
                });
            }
        }
        jobs.push(Job {
            stream: StreamName::new(StreamKind::Room, room.as_uuid()),
            events: encode_all(&events, Some(client)),
        });
    }
    for _ in 0..spec.calls {
        let (room, client, counselor) = room_members[rng.below(room_members.len())];
        let call = CallId(Uuid::now_v7());
        let started = tick(5);
        let secs = 300 + rng.below(3000) as i64;
        let ended = started + Duration::seconds(secs);
        let events = vec![
            CallEvent::Requested {
                call_id: call,
                room_id: room,
                requested_by: client,
                invitees: vec![counselor],
                policy: CallPolicy::default(),
                at: started,
            },
            CallEvent::Accepted {
                by: counselor,
                at: started,
            },
            CallEvent::ParticipantJoined {
                user_id: client,
                at: started,
            },
            CallEvent::ParticipantJoined {
                user_id: counselor,
                at: started,
            },
            CallEvent::ParticipantLeft {
                user_id: client,
                at: ended,
            },
            CallEvent::ParticipantLeft {
                user_id: counselor,
                at: ended,
            },
            CallEvent::Ended {
                reason: "all_left".into(),
                duration_secs: u64::try_from(secs).unwrap_or(0),
                at: ended,
            },
        ];
        jobs.push(Job {
            stream: StreamName::new(StreamKind::Call, call.as_uuid()),
            events: encode_all(&events, Some(client)),
        });
    }
    let total: u64 = jobs.iter().map(|j| j.events.len() as u64).sum();
    let mut done = 0u64;
    let mut running =
        futures::stream::iter(jobs.into_iter().map(|job| run(store, job))).buffer_unordered(64);
    while let Some(n) = running.next().await {
        done += n? as u64;
        progress(done, total);
    }
    Ok(done)
}
