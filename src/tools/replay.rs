//! `neulbi replay STREAM --at POSITION|TIME`: an aggregate's state as it was at a point in
//! the log, folded by the same domain code that decides commands today (upcasters included).

use crate::actors::codec;
use crate::store::{Direction, RecordedEvent, SharedStore};
use chrono::{DateTime, Utc};
use neulbi_domain::call_session::CallSessionDecider;
use neulbi_domain::chat_room::ChatRoomDecider;
use neulbi_domain::user::UserDecider;
use neulbi_domain::{Decider, StreamKind, StreamName};
use std::str::FromStr;

/// Where in history to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum At {
    /// Include events up to this global position.
    Position(u64),
    /// Include events committed at or before this time.
    Time(DateTime<Utc>),
    /// Everything (the current state).
    Now,
}

impl FromStr for At {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Ok(p) = s.parse::<u64>() {
            return Ok(Self::Position(p));
        }
        DateTime::parse_from_rfc3339(s)
            .map(|t| Self::Time(t.with_timezone(&Utc)))
            .map_err(|_| {
                format!(
                    "{s:?} is neither a log position nor an RFC 3339 time (2026-11-25T10:00:00Z)"
                )
            })
    }
}

impl At {
    fn includes(&self, e: &RecordedEvent) -> bool {
        match self {
            Self::Position(p) => e.position <= *p,
            Self::Time(t) => e.recorded_at <= *t,
            Self::Now => true,
        }
    }
}

/// The replayed state, rendered for a terminal.
#[derive(Debug)]
pub struct Replayed {
    /// How many events were folded.
    pub events: usize,
    /// The version of the last folded event (`None`: the stream did not exist yet).
    pub version: Option<u64>,
    /// The position of the last folded event.
    pub position: Option<u64>,
    /// The state, pretty-printed.
    pub state: String,
}

fn fold<D: Decider>(events: &[RecordedEvent]) -> anyhow::Result<String> {
    let decoded = events
        .iter()
        .map(codec::decode::<D::Event>)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(format!("{:#?}", D::fold(&decoded)))
}

/// Replays `stream` up to `at`.
pub async fn replay(store: &SharedStore, stream: &StreamName, at: At) -> anyhow::Result<Replayed> {
    let mut events = Vec::new();
    let mut from = 0;
    loop {
        let page = store
            .read_stream(stream, from, Direction::Forward, 1000)
            .await?;
        let n = page.len();
        let done = page.iter().any(|e| !at.includes(e));
        events.extend(page.into_iter().take_while(|e| at.includes(e)));
        if done || n < 1000 {
            break;
        }
        from += 1000;
    }
    let state = match stream.kind() {
        StreamKind::User => fold::<UserDecider>(&events)?,
        StreamKind::Room => fold::<ChatRoomDecider>(&events)?,
        StreamKind::Call => fold::<CallSessionDecider>(&events)?,
        StreamKind::System => fold::<neulbi_domain::system::SystemDecider>(&events)?,
    };
    Ok(Replayed {
        events: events.len(),
        version: events.last().map(|e| e.version),
        position: events.last().map(|e| e.position),
        state,
    })
}
