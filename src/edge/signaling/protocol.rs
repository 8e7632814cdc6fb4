//! The `/rtc` signaling message schema: one JSON object per WebSocket text message, with a
//! `type` and a protocol version `v`. Parsing happens here, at the edge, into typed values;
//! anything malformed becomes a [`ProtocolError`] that the session answers with a typed
//! `error` message (the connection and the call go on).
//!
//! The schema is documented in `docs/architecture.md` (Signaling); keep the two in step.

use serde::{Deserialize, Serialize};
use thiserror::Error;
use uuid::Uuid;

/// The protocol version this server speaks. A client sends it in `v`; a message without `v`
/// is taken as this version, a message with another one is refused.
pub const VERSION: u32 = 1;

/// Longest SDP accepted, in bytes. Browser offers with a few tracks are 5–15 KB.
pub const MAX_SDP_BYTES: usize = 64 * 1024;
/// Longest ICE candidate line, in bytes.
pub const MAX_CANDIDATE_BYTES: usize = 1024;
/// Longest token, in bytes.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// What a client may send. Unknown fields are ignored (forward compatibility); unknown types
/// are an error the client can read.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientMessage {
    /// The first message: the access token (never in the URL).
    Auth {
        /// A bearer access token.
        token: String,
    },
    /// Enter the media session of an accepted call.
    Join {
        /// The call.
        call_id: Uuid,
    },
    /// The answer to the server's latest offer.
    Answer {
        /// The SDP answer.
        sdp: String,
    },
    /// A client offer. The server is always the offerer, so this is refused with a typed
    /// error that says so.
    Offer {
        /// The SDP offer.
        sdp: String,
    },
    /// A trickled ICE candidate of the client.
    Candidate {
        /// The `candidate:` line (empty for end-of-candidates).
        candidate: String,
        /// The media section id it belongs to.
        #[serde(default)]
        sdp_mid: Option<String>,
        /// The media section index it belongs to.
        #[serde(default)]
        sdp_mline_index: Option<u16>,
    },
    /// Ask for an ICE restart (network changed): the server sends a new offer.
    RestartIce,
    /// My microphone, camera and screen share.
    Media {
        /// Microphone muted.
        #[serde(default)]
        audio_muted: bool,
        /// Camera off.
        #[serde(default)]
        video_off: bool,
        /// Sharing my screen.
        #[serde(default)]
        screen_sharing: bool,
    },
    /// In-call chat.
    Chat {
        /// The text.
        body: String,
    },
    /// A reaction over the video.
    Emoji {
        /// One of the palette.
        emoji: String,
    },
    /// Leave the call (it goes on for the others).
    Leave,
    /// End the call for everyone.
    Hangup,
    /// Keep-alive; answered with `pong`.
    Ping,
}

impl ClientMessage {
    /// The message's `type`, for spans and errors (never its content).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Auth { .. } => "auth",
            Self::Join { .. } => "join",
            Self::Answer { .. } => "answer",
            Self::Offer { .. } => "offer",
            Self::Candidate { .. } => "candidate",
            Self::RestartIce => "restart_ice",
            Self::Media { .. } => "media",
            Self::Chat { .. } => "chat",
            Self::Emoji { .. } => "emoji",
            Self::Leave => "leave",
            Self::Hangup => "hangup",
            Self::Ping => "ping",
        }
    }
}

/// One participant as the others see them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ParticipantInfo {
    /// Who.
    pub user_id: Uuid,
    /// Connected (`false` while dropped and within the grace period).
    pub connected: bool,
    /// Microphone muted.
    pub audio_muted: bool,
    /// Camera off.
    pub video_off: bool,
    /// Sharing their screen.
    pub screen_sharing: bool,
    /// Their media stopped reaching the server.
    pub stalled: bool,
}

/// An ICE server a client should use (STUN, or TURN with short-lived credentials).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IceServer {
    /// `stun:` / `turn:` / `turns:` URLs.
    pub urls: Vec<String>,
    /// TURN username (`expiry:user` in the TURN REST style).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// TURN password (HMAC of the username).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

/// What the server sends.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    /// The token was accepted.
    Welcome {
        /// Protocol version.
        v: u32,
        /// The signed-in user.
        user_id: Uuid,
    },
    /// The client is in the call; the server's offer follows.
    Joined {
        /// The call.
        call_id: Uuid,
        /// Everyone in the media session, the client included.
        participants: Vec<ParticipantInfo>,
        /// ICE servers for the client's peer connection.
        ice_servers: Vec<IceServer>,
        /// True when the client came back within the grace period and keeps its place.
        rejoined: bool,
    },
    /// The server's SDP offer (first, or renegotiation, or ICE restart).
    Offer {
        /// The SDP offer.
        sdp: String,
    },
    /// A trickled ICE candidate of the server.
    Candidate {
        /// The `candidate:` line.
        candidate: String,
        /// The media section id.
        sdp_mid: Option<String>,
        /// The media section index.
        sdp_mline_index: Option<u16>,
    },
    /// Someone's presence changed (`joined`, `left`, `dropped`, `rejoined`).
    Participant {
        /// What happened.
        event: &'static str,
        /// Who.
        user_id: Uuid,
    },
    /// Someone's microphone, camera or screen share changed.
    Media {
        /// Whose.
        user_id: Uuid,
        /// Microphone muted.
        audio_muted: bool,
        /// Camera off.
        video_off: bool,
        /// Sharing their screen.
        screen_sharing: bool,
    },
    /// Someone's media stopped reaching the server (their client should restart ICE).
    MediaStalled {
        /// Whose.
        user_id: Uuid,
    },
    /// Someone's media came back.
    MediaResumed {
        /// Whose.
        user_id: Uuid,
    },
    /// A message in the in-call chat.
    Chat {
        /// The message's id.
        id: Uuid,
        /// Who wrote it.
        user_id: Uuid,
        /// The text.
        body: String,
        /// When (RFC 3339).
        at: String,
    },
    /// A reaction.
    Emoji {
        /// Who reacted.
        user_id: Uuid,
        /// The emoji.
        emoji: String,
        /// When (RFC 3339).
        at: String,
    },
    /// The call is over.
    Ended {
        /// Why.
        reason: String,
        /// Seconds from the first join.
        duration_secs: u64,
    },
    /// The call's media runs on another node: connect there.
    Redirect {
        /// That node's name.
        node: String,
        /// Its signaling URL, when known.
        url: Option<String>,
    },
    /// A request failed; the connection goes on unless `fatal`.
    Error {
        /// A stable machine-readable code.
        code: &'static str,
        /// A human-readable message, safe to show.
        message: String,
        /// The `type` of the message it answers, if any.
        #[serde(skip_serializing_if = "Option::is_none")]
        re: Option<&'static str>,
        /// True when the server closes the connection after this.
        fatal: bool,
    },
    /// Answer to `ping`.
    Pong,
}

impl ServerMessage {
    /// The JSON text sent on the socket, with the version field.
    pub fn to_json(&self) -> String {
        let mut value = serde_json::to_value(self).unwrap_or_else(
            |_| serde_json::json!({"type": "error", "code": "internal", "message": "unencodable"}),
        );
        if let Some(object) = value.as_object_mut() {
            object.insert("v".into(), VERSION.into());
        }
        value.to_string()
    }
}

/// Why a client message was refused before it reached any rule.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ProtocolError {
    /// Not a JSON object (or not UTF-8).
    #[error("the message is not a JSON object: {0}")]
    Malformed(String),
    /// `type` is missing or unknown.
    #[error("unknown message type {0:?}")]
    UnknownType(String),
    /// A known type with missing or mistyped fields.
    #[error("invalid {kind} message: {reason}")]
    Invalid {
        /// The message's type.
        kind: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// `v` names a version this server does not speak.
    #[error("protocol version {0} is not supported (this server speaks {VERSION})")]
    Version(u64),
    /// Larger than the configured limit.
    #[error("message of {size} bytes is over the limit of {limit}")]
    TooLarge {
        /// The message's size.
        size: usize,
        /// The limit.
        limit: usize,
    },
}

impl ProtocolError {
    /// The `code` of the `error` message.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Malformed(_) => "malformed",
            Self::UnknownType(_) => "unknown_type",
            Self::Invalid { .. } => "invalid",
            Self::Version(_) => "unsupported_version",
            Self::TooLarge { .. } => "too_large",
        }
    }
}

/// The known `type` names, for telling "unknown type" from "bad fields".
const KNOWN: &[&str] = &[
    "auth",
    "join",
    "answer",
    "offer",
    "candidate",
    "restart_ice",
    "media",
    "chat",
    "emoji",
    "leave",
    "hangup",
    "ping",
];

/// Parses one text message of at most `limit` bytes.
pub fn parse(text: &str, limit: usize) -> Result<ClientMessage, ProtocolError> {
    if text.len() > limit {
        return Err(ProtocolError::TooLarge {
            size: text.len(),
            limit,
        });
    }
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| ProtocolError::Malformed(e.to_string()))?;
    let object = value
        .as_object()
        .ok_or_else(|| ProtocolError::Malformed("expected an object".into()))?;
    match object.get("v") {
        None => {}
        Some(v) => match v.as_u64() {
            Some(n) if n == u64::from(VERSION) => {}
            Some(n) => return Err(ProtocolError::Version(n)),
            None => return Err(ProtocolError::Malformed("`v` must be a number".into())),
        },
    }
    let kind = match object.get("type").and_then(|t| t.as_str()) {
        Some(t) => t,
        None => return Err(ProtocolError::UnknownType(String::new())),
    };
    let Some(&known) = KNOWN.iter().find(|k| **k == kind) else {
        // Never echo an unbounded client string back.
        return Err(ProtocolError::UnknownType(kind.chars().take(32).collect()));
    };
    let message: ClientMessage =
        serde_json::from_value(value).map_err(|e| ProtocolError::Invalid {
            kind: known,
            reason: e.to_string(),
        })?;
    check_sizes(&message)?;
    Ok(message)
}

fn check_sizes(message: &ClientMessage) -> Result<(), ProtocolError> {
    let too_long = |kind: &'static str, field: &str, len: usize, max: usize| {
        if len > max {
            Err(ProtocolError::Invalid {
                kind,
                reason: format!("{field} is longer than {max} bytes"),
            })
        } else {
            Ok(())
        }
    };
    match message {
        ClientMessage::Auth { token } => too_long("auth", "token", token.len(), MAX_TOKEN_BYTES),
        ClientMessage::Answer { sdp } => too_long("answer", "sdp", sdp.len(), MAX_SDP_BYTES),
        ClientMessage::Offer { sdp } => too_long("offer", "sdp", sdp.len(), MAX_SDP_BYTES),
        ClientMessage::Candidate {
            candidate, sdp_mid, ..
        } => {
            too_long(
                "candidate",
                "candidate",
                candidate.len(),
                MAX_CANDIDATE_BYTES,
            )?;
            too_long(
                "candidate",
                "sdp_mid",
                sdp_mid.as_ref().map_or(0, String::len),
                64,
            )
        }
        ClientMessage::Emoji { emoji } => too_long("emoji", "emoji", emoji.len(), 32),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const LIMIT: usize = 64 * 1024;

    #[test]
    fn every_known_type_parses() {
        let call = Uuid::from_u128(7);
        let cases = [
            (
                r#"{"type":"auth","token":"t"}"#,
                ClientMessage::Auth { token: "t".into() },
            ),
            (
                &*format!(r#"{{"v":1,"type":"join","call_id":"{call}"}}"#),
                ClientMessage::Join { call_id: call },
            ),
            (
                r#"{"type":"answer","sdp":"v=0"}"#,
                ClientMessage::Answer { sdp: "v=0".into() },
            ),
            (
                r#"{"type":"candidate","candidate":"candidate:1 1 udp 1 127.0.0.1 9 typ host","sdp_mid":"0","sdp_mline_index":0}"#,
                ClientMessage::Candidate {
                    candidate: "candidate:1 1 udp 1 127.0.0.1 9 typ host".into(),
                    sdp_mid: Some("0".into()),
                    sdp_mline_index: Some(0),
                },
            ),
            (r#"{"type":"restart_ice"}"#, ClientMessage::RestartIce),
            (
                r#"{"type":"media","audio_muted":true}"#,
                ClientMessage::Media {
                    audio_muted: true,
                    video_off: false,
                    screen_sharing: false,
                },
            ),
            (
                r#"{"type":"chat","body":"hi"}"#,
                ClientMessage::Chat { body: "hi".into() },
            ),
            (
                r#"{"type":"emoji","emoji":"👍"}"#,
                ClientMessage::Emoji {
                    emoji: "👍".into()
                },
            ),
            (r#"{"type":"leave"}"#, ClientMessage::Leave),
            (r#"{"type":"hangup","extra":1}"#, ClientMessage::Hangup),
            (r#"{"type":"ping"}"#, ClientMessage::Ping),
        ];
        for (text, expected) in cases {
            assert_eq!(parse(text, LIMIT), Ok(expected), "{text}");
        }
    }

    #[test]
    fn bad_messages_get_typed_errors() {
        let code = |text: &str| parse(text, LIMIT).map_err(|e| e.code());
        assert_eq!(code("not json"), Err("malformed"));
        assert_eq!(code("[1,2]"), Err("malformed"));
        assert_eq!(code(r#"{"token":"x"}"#), Err("unknown_type"));
        assert_eq!(code(r#"{"type":"teleport"}"#), Err("unknown_type"));
        assert_eq!(code(r#"{"type":"join","call_id":"nope"}"#), Err("invalid"));
        assert_eq!(code(r#"{"type":"answer"}"#), Err("invalid"));
        assert_eq!(code(r#"{"v":2,"type":"ping"}"#), Err("unsupported_version"));
        assert_eq!(code(r#"{"v":"1","type":"ping"}"#), Err("malformed"));
        let huge = format!(
            r#"{{"type":"answer","sdp":"{}"}}"#,
            "a".repeat(MAX_SDP_BYTES + 1)
        );
        assert_eq!(
            parse(&huge, 1024 * 1024).map_err(|e| e.code()),
            Err("invalid")
        );
        assert_eq!(parse(&huge, 1024).map_err(|e| e.code()), Err("too_large"));
    }

    #[test]
    fn a_foreign_schema_version_is_refused_as_such() {
        // Found by the property test below: `v` is checked before the other fields.
        let refused = parse(r#"{"type":"auth","v":2}"#, LIMIT).map_err(|e| e.code());
        assert_eq!(refused.err(), Some("unsupported_version"));
    }

    #[test]
    fn server_messages_carry_the_version() {
        let json = ServerMessage::Pong.to_json();
        let value: serde_json::Value = serde_json::from_str(&json).expect("json");
        assert_eq!(value["type"], "pong");
        assert_eq!(value["v"], VERSION);
    }

    proptest! {
        /// Any text gives a message or a typed error, never a panic.
        #[test]
        fn any_text_parses_or_errs(text in ".{0,512}") {
            let _ = parse(&text, LIMIT);
        }

        /// Any JSON object with a known type gives a message or a typed error.
        #[test]
        fn any_object_with_a_known_type_parses_or_errs(
            kind in prop::sample::select(KNOWN.to_vec()),
            key in "[a-z_]{1,12}",
            value in prop_oneof![
                Just(serde_json::Value::Null),
                any::<bool>().prop_map(serde_json::Value::from),
                any::<i64>().prop_map(serde_json::Value::from),
                ".{0,64}".prop_map(serde_json::Value::from),
            ],
        ) {
            let mut object = serde_json::Map::new();
            object.insert("type".into(), kind.into());
            let names_version = key == "v";
            object.insert(key, value);
            let text = serde_json::Value::Object(object).to_string();
            match parse(&text, LIMIT) {
                Ok(message) => prop_assert_eq!(message.kind(), kind),
                // A `v` that is not this schema's version is refused as such.
                Err(e) => prop_assert!(
                    matches!(e.code(), "invalid" | "malformed")
                        || (names_version && e.code() == "unsupported_version"),
                    "{} for {}", e.code(), text
                ),
            }
        }

        /// Over the limit is always `too_large`, whatever the content.
        #[test]
        fn over_the_limit_is_too_large(extra in 1usize..256) {
            let text = format!(r#"{{"type":"chat","body":"{}"}}"#, "x".repeat(100 + extra));
            let limit = text.len() - extra;
            prop_assert_eq!(parse(&text, limit).map_err(|e| e.code()), Err("too_large"));
        }
    }
}
