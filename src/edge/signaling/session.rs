//! One signaling connection as a sans-IO state machine: text messages and time go in,
//! [`Action`]s come out (messages to send, checks and commands for the driver to run). The
//! driver reports what those produced (`verified`, `joined`, `offer_sent`, ...). No sockets,
//! clocks or actors inside, so every rule is tested with plain values and simulated time.

use super::protocol::{self, ClientMessage, ProtocolError, ServerMessage};
use std::time::{Duration, Instant};
use uuid::Uuid;

/// Limits and timers of one connection.
#[derive(Debug, Clone, Copy)]
pub struct SessionConfig {
    /// Time allowed between the upgrade and a valid `auth`.
    pub auth_timeout: Duration,
    /// Largest accepted message, in bytes.
    pub max_message_bytes: usize,
    /// Messages per second a client may send on average.
    pub rate_per_sec: u32,
    /// Messages a client may send at once before the rate applies.
    pub burst: u32,
    /// Refused messages (bad or over the rate) in a row before the connection is closed.
    pub max_strikes: u32,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            auth_timeout: Duration::from_secs(10),
            max_message_bytes: 96 * 1024,
            rate_per_sec: 50,
            burst: 100,
            max_strikes: 50,
        }
    }
}

/// What the driver must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Send a message.
    Send(ServerMessage),
    /// Verify this access token, then call [`Session::verified`].
    Verify {
        /// The token.
        token: String,
    },
    /// Enter this call (actor command, media join), then call [`Session::joined`].
    Join {
        /// The call.
        call_id: Uuid,
    },
    /// Give the answer to the media layer.
    Answer {
        /// The SDP.
        sdp: String,
    },
    /// Give a client candidate to the media layer.
    Candidate {
        /// The candidate line.
        candidate: String,
        /// Media section id.
        sdp_mid: Option<String>,
        /// Media section index.
        sdp_mline_index: Option<u16>,
    },
    /// Restart ICE (the media layer sends a new offer).
    RestartIce,
    /// A command to the call actor on the user's behalf.
    Call(CallAction),
    /// Close the connection (after sending what came before).
    Close,
}

/// Commands the session asks of the call actor once in a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallAction {
    /// Microphone, camera and screen share.
    Media {
        /// Microphone muted.
        audio_muted: bool,
        /// Camera off.
        video_off: bool,
        /// Sharing the screen.
        screen_sharing: bool,
    },
    /// In-call chat.
    Chat {
        /// The text.
        body: String,
    },
    /// A reaction.
    Emoji {
        /// The emoji.
        emoji: String,
    },
    /// Leave the call.
    Leave,
    /// End it for everyone.
    Hangup,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for `auth` until the deadline.
    Connecting { deadline: Instant },
    /// The token is being checked.
    Verifying,
    /// Signed in, not in a call.
    Ready { user: Uuid },
    /// A join is under way.
    Joining { user: Uuid, call: Uuid },
    /// In a call.
    InCall { user: Uuid, call: Uuid },
    /// Closing; everything is ignored.
    Closed,
}

/// One connection's protocol state.
#[derive(Debug)]
pub struct Session {
    config: SessionConfig,
    phase: Phase,
    /// Token bucket: available messages and when it was last filled.
    tokens: f64,
    filled_at: Instant,
    strikes: u32,
    /// True while the server's latest offer waits for the client's answer.
    offer_outstanding: bool,
    /// The media section ids (`a=mid:`) of the latest offer, in order: a candidate must
    /// name one of them.
    mids: Vec<String>,
}

impl Session {
    /// A session that must see `auth` within the configured timeout from `now`.
    pub fn new(config: SessionConfig, now: Instant) -> Self {
        Self {
            phase: Phase::Connecting {
                deadline: now + config.auth_timeout,
            },
            tokens: f64::from(config.burst.max(1)),
            filled_at: now,
            strikes: 0,
            offer_outstanding: false,
            mids: Vec::new(),
            config,
        }
    }

    /// The signed-in user, once verified.
    pub fn user(&self) -> Option<Uuid> {
        match self.phase {
            Phase::Ready { user } | Phase::Joining { user, .. } | Phase::InCall { user, .. } => {
                Some(user)
            }
            _ => None,
        }
    }

    /// The call the session is in (or joining).
    pub fn call(&self) -> Option<Uuid> {
        match self.phase {
            Phase::Joining { call, .. } | Phase::InCall { call, .. } => Some(call),
            _ => None,
        }
    }

    /// True once the session is in a call's media session.
    pub fn in_call(&self) -> bool {
        matches!(self.phase, Phase::InCall { .. })
    }

    /// True once the session decided to close.
    pub fn is_closed(&self) -> bool {
        self.phase == Phase::Closed
    }

    /// When [`Session::tick`] must be called next, if ever.
    pub fn deadline(&self) -> Option<Instant> {
        match self.phase {
            Phase::Connecting { deadline } => Some(deadline),
            _ => None,
        }
    }

    /// Time passed: closes a connection that did not authenticate in time.
    pub fn tick(&mut self, now: Instant) -> Vec<Action> {
        match self.phase {
            Phase::Connecting { deadline } if now >= deadline => self.fatal(
                "auth_timeout",
                "no auth message in time; send {\"type\":\"auth\",\"token\":...} first".into(),
                None,
            ),
            _ => Vec::new(),
        }
    }

    /// A binary message: the protocol is JSON text only.
    pub fn handle_binary(&mut self, now: Instant) -> Vec<Action> {
        if self.is_closed() {
            return Vec::new();
        }
        if !self.take_token(now) {
            return self.refuse("rate_limited", "too many messages; slow down".into(), None);
        }
        self.refuse(
            "malformed",
            "messages are JSON text, not binary".into(),
            None,
        )
    }

    /// One text message from the client.
    pub fn handle_text(&mut self, text: &str, now: Instant) -> Vec<Action> {
        if self.is_closed() {
            return Vec::new();
        }
        if !self.take_token(now) {
            return self.refuse("rate_limited", "too many messages; slow down".into(), None);
        }
        let message = match protocol::parse(text, self.config.max_message_bytes) {
            Ok(m) => m,
            Err(e @ ProtocolError::TooLarge { .. }) => {
                return self.refuse(e.code(), e.to_string(), None);
            }
            Err(e) => {
                // Before authentication nothing but a well-formed `auth` is worth a reply.
                if matches!(self.phase, Phase::Connecting { .. }) {
                    return self.fatal(e.code(), e.to_string(), None);
                }
                return self.refuse(e.code(), e.to_string(), None);
            }
        };
        self.handle(message)
    }

    fn handle(&mut self, message: ClientMessage) -> Vec<Action> {
        let re = Some(message.kind());
        match (self.phase, message) {
            (_, ClientMessage::Ping) => self.ok(vec![Action::Send(ServerMessage::Pong)]),
            (Phase::Connecting { .. }, ClientMessage::Auth { token }) => {
                self.phase = Phase::Verifying;
                self.ok(vec![Action::Verify { token }])
            }
            (Phase::Connecting { .. } | Phase::Verifying, _) => self.fatal(
                "unauthenticated",
                "the first message must be auth".into(),
                re,
            ),
            (_, ClientMessage::Auth { .. }) => {
                self.refuse("already_authenticated", "already signed in".into(), re)
            }
            (Phase::Ready { user }, ClientMessage::Join { call_id }) => {
                self.phase = Phase::Joining {
                    user,
                    call: call_id,
                };
                self.ok(vec![Action::Join { call_id }])
            }
            (Phase::Joining { .. } | Phase::InCall { .. }, ClientMessage::Join { .. }) => self
                .refuse(
                    "already_in_call",
                    "this connection is already in a call; open another for another call".into(),
                    re,
                ),
            (_, ClientMessage::Offer { .. }) => self.refuse(
                "server_is_offerer",
                "the server makes every offer; answer its offers and ask restart_ice to renegotiate"
                    .into(),
                re,
            ),
            (Phase::InCall { .. }, message) => self.in_call_message(message, re),
            (_, _) => self.refuse("not_in_call", "join a call first".into(), re),
        }
    }

    fn in_call_message(&mut self, message: ClientMessage, re: Option<&'static str>) -> Vec<Action> {
        let action = match message {
            ClientMessage::Answer { sdp } => {
                if !self.offer_outstanding {
                    return self.refuse(
                        "no_offer",
                        "there is no offer to answer; wait for the server's offer".into(),
                        re,
                    );
                }
                self.offer_outstanding = false;
                Action::Answer { sdp }
            }
            ClientMessage::Candidate {
                candidate,
                sdp_mid,
                sdp_mline_index,
            } => {
                let unknown_mid = sdp_mid.as_ref().is_some_and(|m| !self.mids.contains(m));
                let unknown_index =
                    sdp_mline_index.is_some_and(|i| usize::from(i) >= self.mids.len());
                if unknown_mid || unknown_index {
                    return self.refuse(
                        "invalid_candidate",
                        "the candidate names a media section the offer does not have".into(),
                        re,
                    );
                }
                Action::Candidate {
                    candidate,
                    sdp_mid,
                    sdp_mline_index,
                }
            }
            ClientMessage::RestartIce => Action::RestartIce,
            ClientMessage::Media {
                audio_muted,
                video_off,
                screen_sharing,
            } => Action::Call(CallAction::Media {
                audio_muted,
                video_off,
                screen_sharing,
            }),
            ClientMessage::Chat { body } => Action::Call(CallAction::Chat { body }),
            ClientMessage::Emoji { emoji } => Action::Call(CallAction::Emoji { emoji }),
            ClientMessage::Leave => Action::Call(CallAction::Leave),
            ClientMessage::Hangup => Action::Call(CallAction::Hangup),
            // Handled before a call's messages are looked at.
            ClientMessage::Auth { .. }
            | ClientMessage::Join { .. }
            | ClientMessage::Offer { .. }
            | ClientMessage::Ping => return Vec::new(),
        };
        self.ok(vec![action])
    }

    /// The outcome of [`Action::Verify`].
    pub fn verified(&mut self, result: Result<Uuid, String>) -> Vec<Action> {
        if self.phase != Phase::Verifying {
            return Vec::new();
        }
        match result {
            Ok(user) => {
                self.phase = Phase::Ready { user };
                vec![Action::Send(ServerMessage::Welcome {
                    v: protocol::VERSION,
                    user_id: user,
                })]
            }
            Err(message) => self.fatal("unauthorized", message, Some("auth")),
        }
    }

    /// The outcome of [`Action::Join`]: `Ok` carries the `joined` message to send; an error
    /// is sent as it is and the session is ready for another join.
    pub fn joined(&mut self, result: Result<ServerMessage, ServerMessage>) -> Vec<Action> {
        let Phase::Joining { user, call } = self.phase else {
            return Vec::new();
        };
        match result {
            Ok(message) => {
                self.phase = Phase::InCall { user, call };
                vec![Action::Send(message)]
            }
            Err(message) => {
                self.phase = Phase::Ready { user };
                vec![Action::Send(message)]
            }
        }
    }

    /// The media layer made an offer: send it and expect an answer.
    pub fn offer_sent(&mut self, sdp: String) -> Vec<Action> {
        if !self.in_call() {
            return Vec::new();
        }
        self.offer_outstanding = true;
        self.mids = sdp
            .lines()
            .filter_map(|l| l.trim_end().strip_prefix("a=mid:"))
            .map(str::to_owned)
            .collect();
        vec![Action::Send(ServerMessage::Offer { sdp })]
    }

    /// The media layer refused the answer; its offer still waits for a corrected one.
    pub fn answer_refused(&mut self) {
        if self.in_call() {
            self.offer_outstanding = true;
        }
    }

    /// The call is over (ended for everyone, or this user left): back to ready.
    pub fn left_call(&mut self) {
        if let Phase::InCall { user, .. } | Phase::Joining { user, .. } = self.phase {
            self.phase = Phase::Ready { user };
            self.offer_outstanding = false;
        }
    }

    /// The server is closing the connection (shutdown, account closed).
    pub fn close(&mut self, code: &'static str, message: String) -> Vec<Action> {
        if self.is_closed() {
            return Vec::new();
        }
        self.fatal(code, message, None)
    }

    fn take_token(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.filled_at).as_secs_f64();
        self.filled_at = now;
        let burst = f64::from(self.config.burst.max(1));
        self.tokens = (self.tokens + elapsed * f64::from(self.config.rate_per_sec)).min(burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    fn ok(&mut self, actions: Vec<Action>) -> Vec<Action> {
        self.strikes = 0;
        actions
    }

    /// A typed error; the connection goes on unless the client keeps misbehaving.
    fn refuse(
        &mut self,
        code: &'static str,
        message: String,
        re: Option<&'static str>,
    ) -> Vec<Action> {
        self.strikes += 1;
        if self.strikes >= self.config.max_strikes {
            return self.fatal(
                "too_many_errors",
                format!("{} refused messages in a row; closing", self.strikes),
                re,
            );
        }
        vec![Action::Send(ServerMessage::Error {
            code,
            message,
            re,
            fatal: false,
        })]
    }

    fn fatal(
        &mut self,
        code: &'static str,
        message: String,
        re: Option<&'static str>,
    ) -> Vec<Action> {
        self.phase = Phase::Closed;
        vec![
            Action::Send(ServerMessage::Error {
                code,
                message,
                re,
                fatal: true,
            }),
            Action::Close,
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const USER: Uuid = Uuid::from_u128(1);
    const CALL: Uuid = Uuid::from_u128(2);

    fn codes(actions: &[Action]) -> Vec<&'static str> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Send(ServerMessage::Error { code, .. }) => Some(*code),
                _ => None,
            })
            .collect()
    }

    fn closes(actions: &[Action]) -> bool {
        actions.contains(&Action::Close)
    }

    /// A session signed in as USER at `t0`.
    fn ready(t0: Instant) -> Session {
        let mut s = Session::new(SessionConfig::default(), t0);
        assert_eq!(
            s.handle_text(r#"{"type":"auth","token":"tok"}"#, t0),
            vec![Action::Verify {
                token: "tok".into()
            }]
        );
        let welcome = s.verified(Ok(USER));
        assert!(matches!(
            welcome[..],
            [Action::Send(ServerMessage::Welcome { .. })]
        ));
        s
    }

    /// A session in CALL.
    fn in_call(t0: Instant) -> Session {
        let mut s = ready(t0);
        let join = format!(r#"{{"type":"join","call_id":"{CALL}"}}"#);
        assert_eq!(
            s.handle_text(&join, t0),
            vec![Action::Join { call_id: CALL }]
        );
        s.joined(Ok(ServerMessage::Pong));
        assert!(s.in_call());
        s
    }

    #[test]
    fn auth_must_come_first() {
        let t0 = Instant::now();
        let mut s = Session::new(SessionConfig::default(), t0);
        let actions = s.handle_text(
            r#"{"type":"join","call_id":"00000000-0000-0000-0000-000000000002"}"#,
            t0,
        );
        assert_eq!(codes(&actions), vec!["unauthenticated"]);
        assert!(closes(&actions));
        assert!(
            s.handle_text(r#"{"type":"ping"}"#, t0).is_empty(),
            "closed sessions are silent"
        );
    }

    #[test]
    fn garbage_before_auth_closes() {
        let t0 = Instant::now();
        let mut s = Session::new(SessionConfig::default(), t0);
        let actions = s.handle_text("GET / HTTP/1.1", t0);
        assert_eq!(codes(&actions), vec!["malformed"]);
        assert!(closes(&actions));
    }

    #[test]
    fn no_auth_in_time_closes() {
        let t0 = Instant::now();
        let mut s = Session::new(SessionConfig::default(), t0);
        assert!(s.tick(t0 + Duration::from_secs(9)).is_empty());
        let actions = s.tick(t0 + Duration::from_secs(10));
        assert_eq!(codes(&actions), vec!["auth_timeout"]);
        assert!(closes(&actions));
    }

    #[test]
    fn a_forged_or_expired_token_closes() {
        let t0 = Instant::now();
        let mut s = Session::new(SessionConfig::default(), t0);
        s.handle_text(r#"{"type":"auth","token":"forged"}"#, t0);
        let actions = s.verified(Err("invalid or expired access token".into()));
        assert_eq!(codes(&actions), vec!["unauthorized"]);
        assert!(closes(&actions));
    }

    #[test]
    fn a_signed_in_session_joins_and_a_refused_join_leaves_it_ready() {
        let t0 = Instant::now();
        let mut s = ready(t0);
        assert_eq!(s.user(), Some(USER));
        let join = format!(r#"{{"type":"join","call_id":"{CALL}"}}"#);
        s.handle_text(&join, t0);
        assert_eq!(s.call(), Some(CALL));
        let refusal = ServerMessage::Error {
            code: "forbidden",
            message: "not yours".into(),
            re: Some("join"),
            fatal: false,
        };
        assert_eq!(s.joined(Err(refusal.clone())), vec![Action::Send(refusal)]);
        assert!(!s.in_call());
        assert_eq!(
            s.handle_text(&join, t0),
            vec![Action::Join { call_id: CALL }]
        );
    }

    #[test]
    fn call_messages_need_a_call() {
        let t0 = Instant::now();
        let mut s = ready(t0);
        for text in [
            r#"{"type":"answer","sdp":"v=0"}"#,
            r#"{"type":"candidate","candidate":"x"}"#,
            r#"{"type":"chat","body":"hi"}"#,
            r#"{"type":"emoji","emoji":"👍"}"#,
            r#"{"type":"leave"}"#,
        ] {
            let actions = s.handle_text(text, t0);
            assert_eq!(codes(&actions), vec!["not_in_call"], "{text}");
            assert!(!closes(&actions));
        }
    }

    #[test]
    fn an_answer_without_an_offer_is_refused() {
        let t0 = Instant::now();
        let mut s = in_call(t0);
        let answer = r#"{"type":"answer","sdp":"v=0"}"#;
        assert_eq!(codes(&s.handle_text(answer, t0)), vec!["no_offer"]);
        s.offer_sent("offer-sdp".into());
        assert_eq!(
            s.handle_text(answer, t0),
            vec![Action::Answer { sdp: "v=0".into() }]
        );
        assert_eq!(
            codes(&s.handle_text(answer, t0)),
            vec!["no_offer"],
            "answered once"
        );
    }

    #[test]
    fn candidates_must_name_a_section_of_the_offer() {
        let t0 = Instant::now();
        let mut s = in_call(t0);
        s.offer_sent("v=0\r\nm=audio 9\r\na=mid:0\r\nm=video 9\r\na=mid:1\r\n".into());
        let line = "candidate:1 1 udp 1 127.0.0.1 9 typ host";
        let ok = format!(
            r#"{{"type":"candidate","candidate":"{line}","sdp_mid":"1","sdp_mline_index":1}}"#
        );
        assert!(matches!(
            s.handle_text(&ok, t0)[..],
            [Action::Candidate { .. }]
        ));
        for bad in [
            format!(r#"{{"type":"candidate","candidate":"{line}","sdp_mid":"7"}}"#),
            format!(r#"{{"type":"candidate","candidate":"{line}","sdp_mline_index":2}}"#),
        ] {
            assert_eq!(
                codes(&s.handle_text(&bad, t0)),
                vec!["invalid_candidate"],
                "{bad}"
            );
        }
    }

    #[test]
    fn client_offers_are_refused_with_the_reason() {
        let t0 = Instant::now();
        let mut s = in_call(t0);
        assert_eq!(
            codes(&s.handle_text(r#"{"type":"offer","sdp":"v=0"}"#, t0)),
            vec!["server_is_offerer"]
        );
    }

    #[test]
    fn in_call_messages_become_actions() {
        let t0 = Instant::now();
        let mut s = in_call(t0);
        assert_eq!(
            s.handle_text(
                r#"{"type":"media","audio_muted":true,"video_off":true}"#,
                t0
            ),
            vec![Action::Call(CallAction::Media {
                audio_muted: true,
                video_off: true,
                screen_sharing: false
            })]
        );
        assert_eq!(
            s.handle_text(r#"{"type":"emoji","emoji":"👏"}"#, t0),
            vec![Action::Call(CallAction::Emoji {
                emoji: "👏".into()
            })]
        );
        assert_eq!(
            s.handle_text(r#"{"type":"restart_ice"}"#, t0),
            vec![Action::RestartIce]
        );
        assert_eq!(
            s.handle_text(r#"{"type":"hangup"}"#, t0),
            vec![Action::Call(CallAction::Hangup)]
        );
        s.left_call();
        assert!(!s.in_call() && s.user() == Some(USER));
    }

    #[test]
    fn bad_input_is_an_error_and_the_session_goes_on() {
        let t0 = Instant::now();
        let mut s = in_call(t0);
        for (text, code) in [
            ("{", "malformed"),
            (r#"{"type":"warp"}"#, "unknown_type"),
            (r#"{"type":"candidate"}"#, "invalid"),
            (
                r#"{"type":"auth","token":"again"}"#,
                "already_authenticated",
            ),
        ] {
            let actions = s.handle_text(text, t0);
            assert_eq!(codes(&actions), vec![code], "{text}");
            assert!(!closes(&actions));
        }
        assert_eq!(codes(&s.handle_binary(t0)), vec!["malformed"]);
        assert!(s.in_call());
        assert_eq!(
            s.handle_text(r#"{"type":"ping"}"#, t0),
            vec![Action::Send(ServerMessage::Pong)]
        );
    }

    #[test]
    fn oversized_messages_are_refused() {
        let t0 = Instant::now();
        let config = SessionConfig {
            max_message_bytes: 100,
            ..SessionConfig::default()
        };
        let mut s = Session::new(config, t0);
        let big = format!(r#"{{"type":"auth","token":"{}"}}"#, "x".repeat(200));
        assert_eq!(codes(&s.handle_text(&big, t0)), vec!["too_large"]);
    }

    #[test]
    fn a_flood_is_rate_limited_then_closed() {
        let t0 = Instant::now();
        let mut s = in_call(t0);
        let config = SessionConfig::default();
        let ping = r#"{"type":"ping"}"#;
        // The burst is spent (one token went to auth, one to join)...
        let mut limited = 0;
        let mut closed = false;
        for _ in 0..(config.burst + config.max_strikes + 10) {
            let actions = s.handle_text(ping, t0);
            if codes(&actions).contains(&"rate_limited") {
                limited += 1;
            }
            if closes(&actions) {
                closed = true;
                break;
            }
        }
        assert!(limited > 0, "a flood is refused");
        assert!(closed, "a client that keeps flooding is closed");
    }

    #[test]
    fn the_rate_refills_with_time() {
        let t0 = Instant::now();
        let mut s = in_call(t0);
        let ping = r#"{"type":"ping"}"#;
        while !codes(&s.handle_text(ping, t0)).contains(&"rate_limited") {}
        let later = t0 + Duration::from_secs(1);
        assert_eq!(
            s.handle_text(ping, later),
            vec![Action::Send(ServerMessage::Pong)]
        );
    }
}
