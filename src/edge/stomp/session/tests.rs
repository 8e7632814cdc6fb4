//! The session's protocol rules, one scenario each: given frames and time, then frames.

use super::*;
use uuid::Uuid;

const ROOM: RoomId = RoomId::from_uuid(Uuid::from_u128(7));
const USER: UserId = UserId::from_uuid(Uuid::from_u128(42));

fn t0() -> Instant {
    Instant::now()
}

fn drain(s: &mut Session) -> Vec<Output> {
    std::iter::from_fn(|| s.poll_output()).collect()
}

fn frames(outputs: &[Output]) -> Vec<&Frame> {
    outputs
        .iter()
        .filter_map(|o| match o {
            Output::Frame(f) => Some(f),
            _ => None,
        })
        .collect()
}

fn connect_frame(versions: &str) -> Frame {
    Frame::new(Command::Connect)
        .header("accept-version", versions)
        .header("host", "neulbi")
        .header("Authorization", "Bearer tok")
}

/// A connected 1.2 session without heart-beats.
fn connected(now: Instant) -> Session {
    let mut s = Session::new(SessionConfig::default(), now);
    s.handle_frame(connect_frame("1.2"), now);
    assert_eq!(
        drain(&mut s),
        vec![Output::Authenticate(BearerToken("tok".into()))]
    );
    s.authenticated(Ok(USER), now);
    drain(&mut s);
    s
}

fn room_topic() -> String {
    Destination::RoomTopic(ROOM).to_wire()
}

fn subscribed(now: Instant, id: &str, ack: &str) -> Session {
    let mut s = connected(now);
    s.handle_frame(
        Frame::new(Command::Subscribe)
            .header("id", id)
            .header("destination", room_topic())
            .header("ack", ack),
        now,
    );
    drain(&mut s);
    s.authorized(id, Ok(()), now);
    drain(&mut s);
    s
}

fn is_error_then_close(outputs: &[Output], message: &str) {
    let [Output::Frame(f), Output::Close(_)] = outputs else {
        panic!("expected ERROR then close, got {outputs:?}");
    };
    assert_eq!(f.command, Command::Error);
    assert_eq!(f.get("message"), Some(message));
}

#[test]
fn negotiates_the_highest_shared_version() {
    let now = t0();
    for (offer, expected) in [("1.0,1.1,1.2", "1.2"), ("1.1,1.0", "1.1"), ("1.0", "1.0")] {
        let mut s = Session::new(SessionConfig::default(), now);
        s.handle_frame(connect_frame(offer), now);
        drain(&mut s);
        s.authenticated(Ok(USER), now);
        let out = drain(&mut s);
        assert_eq!(frames(&out)[0].command, Command::Connected);
        assert_eq!(frames(&out)[0].get("version"), Some(expected));
        assert_eq!(s.version().map(Version::as_str), Some(expected));
    }
    let mut s = Session::new(SessionConfig::default(), now);
    s.handle_frame(
        Frame::new(Command::Connect).header("Authorization", "Bearer tok"),
        now,
    );
    drain(&mut s);
    s.authenticated(Ok(USER), now);
    assert_eq!(
        s.version(),
        Some(Version::V1_0),
        "no accept-version means 1.0"
    );
}

#[test]
fn no_shared_version_is_an_error_naming_ours() {
    let now = t0();
    let mut s = Session::new(SessionConfig::default(), now);
    s.handle_frame(connect_frame("2.0,3.1"), now);
    let out = drain(&mut s);
    assert_eq!(frames(&out)[0].command, Command::Error);
    assert_eq!(frames(&out)[0].get("version"), Some("1.2,1.1,1.0"));
    assert_eq!(out.last(), Some(&Output::Close(CloseReason::ProtocolError)));
    assert!(s.is_closed());
}

#[test]
fn connect_requires_a_bearer_token() {
    let now = t0();
    for auth in [None, Some("Basic abc"), Some("Bearer "), Some("Bearer")] {
        let mut s = Session::new(SessionConfig::default(), now);
        let mut f = Frame::new(Command::Stomp).header("accept-version", "1.2");
        if let Some(a) = auth {
            f = f.header("authorization", a);
        }
        s.handle_frame(f, now);
        is_error_then_close(&drain(&mut s), "authentication required");
    }
}

#[test]
fn a_refused_token_is_an_error() {
    let now = t0();
    let mut s = Session::new(SessionConfig::default(), now);
    s.handle_frame(connect_frame("1.2"), now);
    drain(&mut s);
    s.authenticated(Err(Refusal("invalid token".into())), now);
    is_error_then_close(&drain(&mut s), "invalid token");
    assert_eq!(s.user(), None);
}

#[test]
fn token_is_redacted_in_debug() {
    assert_eq!(
        format!("{:?}", Output::Authenticate(BearerToken("secret".into()))),
        "Authenticate(BearerToken(..))"
    );
}

#[test]
fn frames_before_connect_or_while_authenticating_are_errors() {
    let now = t0();
    let mut s = Session::new(SessionConfig::default(), now);
    s.handle_frame(Frame::new(Command::Send).header("receipt", "r1"), now);
    let out = drain(&mut s);
    is_error_then_close(&out, "expected CONNECT");
    assert_eq!(frames(&out)[0].get("receipt-id"), Some("r1"));

    let mut s = Session::new(SessionConfig::default(), now);
    s.handle_frame(connect_frame("1.2"), now);
    drain(&mut s);
    s.handle_frame(Frame::new(Command::Disconnect), now);
    is_error_then_close(&drain(&mut s), "frame before CONNECTED");
}

#[test]
fn connect_receipt_follows_connected() {
    let now = t0();
    let mut s = Session::new(SessionConfig::default(), now);
    s.handle_frame(connect_frame("1.2").header("receipt", "c"), now);
    drain(&mut s);
    s.authenticated(Ok(USER), now);
    let out = drain(&mut s);
    let f = frames(&out);
    assert_eq!(f[0].command, Command::Connected);
    assert_eq!(f[1].get("receipt-id"), Some("c"));
}

#[test]
fn heartbeats_are_negotiated_and_sent() {
    let now = t0();
    let config = SessionConfig {
        heartbeat_send: Duration::from_millis(5000),
        heartbeat_receive: Duration::from_millis(4000),
        ..SessionConfig::default()
    };
    let mut s = Session::new(config, now);
    // The client can send every 10s and wants to hear from us every 1s.
    s.handle_frame(connect_frame("1.2").header("heart-beat", "10000,1000"), now);
    drain(&mut s);
    s.authenticated(Ok(USER), now);
    let out = drain(&mut s);
    assert_eq!(frames(&out)[0].get("heart-beat"), Some("5000,4000"));
    // We send every max(5000, 1000) = 5s.
    assert_eq!(s.poll_timeout(), Some(now + Duration::from_secs(5)));
    s.handle_timeout(now + Duration::from_secs(5));
    assert_eq!(drain(&mut s), vec![Output::Heartbeat]);
    // The client must send every max(10000, 4000) = 10s; silence past twice that closes.
    s.handle_activity(now + Duration::from_secs(15));
    s.handle_timeout(now + Duration::from_secs(34));
    assert!(!s.is_closed());
    s.handle_timeout(now + Duration::from_secs(35));
    assert!(s.is_closed());
    assert_eq!(
        drain(&mut s).last(),
        Some(&Output::Close(CloseReason::TimedOut))
    );
}

#[test]
fn huge_heartbeat_values_are_capped_not_overflowed() {
    let now = t0();
    let mut s = Session::new(SessionConfig::default(), now);
    s.handle_frame(
        connect_frame("1.2").header("heart-beat", "18446744073709551615,18446744073709551615"),
        now,
    );
    s.authenticated(Ok(USER), now);
    drain(&mut s);
    let day = Duration::from_millis(MAX_HEARTBEAT_MS);
    assert_eq!(s.poll_timeout(), Some(now + day));
    s.handle_timeout(now + day * 3);
    assert!(s.is_closed(), "silent for more than twice the interval");
    let mut s = Session::new(SessionConfig::default(), now);
    s.handle_frame(connect_frame("1.2").header("heart-beat", "x,-1"), now);
    s.authenticated(Ok(USER), now);
    assert_eq!(s.poll_timeout(), None, "malformed means none");
}

#[test]
fn zero_heartbeats_switch_them_off() {
    let now = t0();
    let mut s = connected(now);
    assert_eq!(s.poll_timeout(), None);
    s.handle_timeout(now + Duration::from_secs(3600));
    assert!(drain(&mut s).is_empty());
    assert!(!s.is_closed());
}

#[test]
fn a_connection_without_connect_times_out() {
    let now = t0();
    let mut s = Session::new(SessionConfig::default(), now);
    assert_eq!(s.poll_timeout(), Some(now + Duration::from_secs(10)));
    s.handle_timeout(now + Duration::from_secs(10));
    assert_eq!(drain(&mut s), vec![Output::Close(CloseReason::TimedOut)]);
}

#[test]
fn subscribe_asks_for_authorization_before_delivering() {
    let now = t0();
    let mut s = connected(now);
    s.handle_frame(
        Frame::new(Command::Subscribe)
            .header("id", "sub-0")
            .header("destination", room_topic())
            .header("receipt", "r"),
        now,
    );
    assert_eq!(
        drain(&mut s),
        vec![Output::Authorize {
            subscription: "sub-0".into(),
            room: ROOM,
            user: USER
        }]
    );
    let delivery = Delivery {
        topic: Topic::Room(ROOM),
        message_id: "m1".into(),
        position: 1,
        body: b"{}".to_vec(),
        content_type: "application/json",
        traceparent: None,
    };
    s.deliver(&delivery, now);
    assert!(drain(&mut s).is_empty(), "nothing before authorization");
    s.authorized("sub-0", Ok(()), now);
    let out = drain(&mut s);
    assert_eq!(
        out[0],
        Output::Subscribed {
            subscription: "sub-0".into(),
            topic: Topic::Room(ROOM)
        }
    );
    assert_eq!(frames(&out)[0].get("receipt-id"), Some("r"));
    s.deliver(&delivery, now);
    let out = drain(&mut s);
    let m = frames(&out)[0];
    assert_eq!(m.command, Command::Message);
    assert_eq!(m.get("subscription"), Some("sub-0"));
    assert_eq!(m.get("message-id"), Some("m1"));
    assert_eq!(m.get("destination"), Some(room_topic().as_str()));
    assert_eq!(m.get("ack"), None, "auto mode needs no ack id");
    assert_eq!(m.body, b"{}");
}

#[test]
fn an_outsider_is_refused() {
    let now = t0();
    let mut s = connected(now);
    s.handle_frame(
        Frame::new(Command::Subscribe)
            .header("id", "0")
            .header("destination", room_topic()),
        now,
    );
    drain(&mut s);
    s.authorized("0", Err(Refusal("not a member of this room".into())), now);
    is_error_then_close(&drain(&mut s), "not a member of this room");
}

#[test]
fn subscribe_validates_its_headers() {
    let now = t0();
    let cases = [
        (
            Frame::new(Command::Subscribe).header("id", "1"),
            "SUBSCRIBE without destination",
        ),
        (
            Frame::new(Command::Subscribe).header("destination", room_topic()),
            "SUBSCRIBE without id",
        ),
        (
            Frame::new(Command::Subscribe)
                .header("id", "1")
                .header("destination", room_topic())
                .header("ack", "sometimes"),
            "unknown ack mode",
        ),
        (
            Frame::new(Command::Subscribe)
                .header("id", "1")
                .header("destination", "/queue/other"),
            "cannot subscribe to this destination",
        ),
    ];
    for (frame, message) in cases {
        let mut s = connected(now);
        s.handle_frame(frame, now);
        is_error_then_close(&drain(&mut s), message);
    }
    let mut s = subscribed(now, "1", "auto");
    s.handle_frame(
        Frame::new(Command::Subscribe)
            .header("id", "1")
            .header("destination", room_topic()),
        now,
    );
    is_error_then_close(&drain(&mut s), "subscription id already in use");
}

#[test]
fn subscriptions_per_session_are_limited() {
    let now = t0();
    let config = SessionConfig {
        max_subscriptions: 2,
        ..SessionConfig::default()
    };
    let mut s = Session::new(config, now);
    s.handle_frame(connect_frame("1.2"), now);
    s.authenticated(Ok(USER), now);
    drain(&mut s);
    for id in ["a", "b", "c"] {
        s.handle_frame(
            Frame::new(Command::Subscribe)
                .header("id", id)
                .header("destination", room_topic()),
            now,
        );
    }
    // The two pending authorizations are dropped with the session.
    is_error_then_close(&drain(&mut s), "too many subscriptions");
}

#[test]
fn client_ack_modes_carry_an_ack_id() {
    let now = t0();
    for mode in ["client", "client-individual"] {
        let mut s = subscribed(now, "s", mode);
        s.deliver(
            &Delivery {
                topic: Topic::Room(ROOM),
                message_id: "m".into(),
                position: 1,
                body: Vec::new(),
                content_type: "application/json",
                traceparent: None,
            },
            now,
        );
        let out = drain(&mut s);
        assert_eq!(frames(&out)[0].get("ack"), Some("m-1"));
        s.handle_frame(
            Frame::new(Command::Ack)
                .header("id", "m-1")
                .header("receipt", "a"),
            now,
        );
        assert_eq!(frames(&drain(&mut s))[0].get("receipt-id"), Some("a"));
    }
}

#[test]
fn unsubscribe_stops_deliveries() {
    let now = t0();
    let mut s = subscribed(now, "s", "auto");
    s.handle_frame(
        Frame::new(Command::Unsubscribe)
            .header("id", "s")
            .header("receipt", "u"),
        now,
    );
    let out = drain(&mut s);
    assert_eq!(
        out[0],
        Output::Unsubscribed {
            subscription: "s".into(),
            topic: Topic::Room(ROOM)
        }
    );
    assert_eq!(frames(&out)[0].get("receipt-id"), Some("u"));
    s.deliver(
        &Delivery {
            topic: Topic::Room(ROOM),
            message_id: "m".into(),
            position: 1,
            body: Vec::new(),
            content_type: "application/json",
            traceparent: None,
        },
        now,
    );
    assert!(drain(&mut s).is_empty());
}

#[test]
fn send_posts_and_receipts_only_after_the_append() {
    let now = t0();
    let mut s = connected(now);
    s.handle_frame(
        Frame::new(Command::Send)
            .header("destination", Destination::RoomSend(ROOM).to_wire())
            .header("receipt", "r9")
            .header("client-message-id", "c1")
            .body("hello"),
        now,
    );
    assert_eq!(
        drain(&mut s),
        vec![Output::Post {
            room: ROOM,
            user: USER,
            body: "hello".into(),
            client_message_id: Some("c1".into()),
            receipt: Some("r9".into()),
            confirm: true,
        }]
    );
    s.posted(Some("r9".into()), true, Ok(()), now);
    let out = drain(&mut s);
    assert_eq!(frames(&out)[0].command, Command::Receipt);
    assert_eq!(frames(&out)[0].get("receipt-id"), Some("r9"));
}

#[test]
fn a_refused_post_is_an_error_with_the_receipt_id() {
    let now = t0();
    let mut s = connected(now);
    s.posted(
        Some("r".into()),
        true,
        Err(Refusal("only members may post".into())),
        now,
    );
    let out = drain(&mut s);
    is_error_then_close(&out, "only members may post");
    assert_eq!(frames(&out)[0].get("receipt-id"), Some("r"));
}

#[test]
fn send_validates_destination_body_and_transaction() {
    let now = t0();
    let send =
        || Frame::new(Command::Send).header("destination", Destination::RoomSend(ROOM).to_wire());
    for (frame, message) in [
        (
            Frame::new(Command::Send).header("destination", room_topic()),
            "cannot send to this destination",
        ),
        (send().body(vec![0xff]), "message body is not UTF-8"),
        (send().header("transaction", "t"), "unknown transaction"),
        (Frame::new(Command::Commit), "COMMIT without transaction"),
        (Frame::new(Command::Message), "server frame sent by client"),
        (connect_frame("1.2"), "already connected"),
    ] {
        let mut s = connected(now);
        s.handle_frame(frame, now);
        is_error_then_close(&drain(&mut s), message);
    }
}

#[test]
fn sends_are_rate_limited_with_a_burst() {
    let now = t0();
    let config = SessionConfig {
        send_burst: 3,
        sends_per_second: 2,
        ..SessionConfig::default()
    };
    let mut s = Session::new(config, now);
    s.handle_frame(connect_frame("1.2"), now);
    s.authenticated(Ok(USER), now);
    drain(&mut s);
    let send = || {
        Frame::new(Command::Send)
            .header("destination", Destination::RoomSend(ROOM).to_wire())
            .body("x")
    };
    for _ in 0..3 {
        s.handle_frame(send(), now);
    }
    // Half a second refills one token.
    let later = now + Duration::from_millis(500);
    s.handle_frame(send(), later);
    let posts = drain(&mut s);
    assert_eq!(posts.len(), 4, "{posts:?}");
    assert!(posts.iter().all(|o| matches!(o, Output::Post { .. })));
    s.handle_frame(send(), later);
    is_error_then_close(&drain(&mut s), "sending too fast");
}

#[test]
fn disconnect_sends_its_receipt_then_closes() {
    let now = t0();
    let mut s = connected(now);
    s.handle_frame(
        Frame::new(Command::Disconnect).header("receipt", "bye"),
        now,
    );
    let out = drain(&mut s);
    assert_eq!(frames(&out)[0].get("receipt-id"), Some("bye"));
    assert_eq!(out.last(), Some(&Output::Close(CloseReason::Disconnected)));
    s.handle_frame(Frame::new(Command::Send), now);
    assert!(drain(&mut s).is_empty(), "a closed session ignores input");
}

#[test]
fn a_slow_consumer_is_disconnected() {
    let now = t0();
    let config = SessionConfig {
        max_outbound: 3,
        ..SessionConfig::default()
    };
    let mut s = Session::new(config, now);
    s.handle_frame(connect_frame("1.2"), now);
    s.authenticated(Ok(USER), now);
    s.handle_frame(
        Frame::new(Command::Subscribe)
            .header("id", "s")
            .header("destination", room_topic()),
        now,
    );
    s.authorized("s", Ok(()), now);
    let d = Delivery {
        topic: Topic::Room(ROOM),
        message_id: "m".into(),
        position: 1,
        body: Vec::new(),
        content_type: "application/json",
        traceparent: None,
    };
    for _ in 0..10 {
        s.deliver(&d, now);
    }
    let out = drain(&mut s);
    assert!(out.len() <= 3, "{out:?}");
    assert_eq!(out.last(), Some(&Output::Close(CloseReason::SlowConsumer)));
}

#[test]
fn decode_errors_become_error_frames() {
    let now = t0();
    let mut s = connected(now);
    s.handle_decode_error(&DecodeError::FrameTooLarge(10), now);
    is_error_then_close(&drain(&mut s), "malformed frame: frame exceeds 10 bytes");
}

#[test]
fn stomp_1_0_subscriptions_may_omit_the_id() {
    let now = t0();
    let mut s = Session::new(SessionConfig::default(), now);
    s.handle_frame(
        Frame::new(Command::Connect).header("Authorization", "Bearer t"),
        now,
    );
    s.authenticated(Ok(USER), now);
    drain(&mut s);
    s.handle_frame(
        Frame::new(Command::Subscribe).header("destination", room_topic()),
        now,
    );
    let out = drain(&mut s);
    assert!(
        matches!(&out[0], Output::Authorize { subscription, .. } if *subscription == room_topic())
    );
}

fn msg(topic: Topic, id: &str, position: u64) -> Delivery {
    Delivery {
        topic,
        message_id: id.into(),
        position,
        body: id.as_bytes().to_vec(),
        content_type: "application/json",
        traceparent: None,
    }
}

fn send_to(destination: Destination) -> Frame {
    Frame::new(Command::Send).header("destination", destination.to_wire())
}

const MSG: &str = "00000000-0000-0000-0000-0000000000aa";

#[test]
fn commit_performs_buffered_frames_in_order_and_receipts_after_the_last_append() {
    let now = t0();
    let mut s = connected(now);
    s.handle_frame(
        Frame::new(Command::Begin)
            .header("transaction", "t1")
            .header("receipt", "b"),
        now,
    );
    s.handle_frame(
        send_to(Destination::RoomSend(ROOM))
            .header("transaction", "t1")
            .header("receipt", "s1")
            .body("one"),
        now,
    );
    s.handle_frame(
        send_to(Destination::RoomRead(ROOM))
            .header("transaction", "t1")
            .header("message-id", MSG),
        now,
    );
    let out = drain(&mut s);
    let receipts: Vec<_> = frames(&out).iter().map(|f| f.get("receipt-id")).collect();
    assert_eq!(
        receipts,
        [Some("b"), Some("s1")],
        "buffered, nothing performed"
    );
    assert!(!out.iter().any(Output::is_request), "{out:?}");
    s.handle_frame(
        Frame::new(Command::Commit)
            .header("transaction", "t1")
            .header("receipt", "c"),
        now,
    );
    assert_eq!(
        drain(&mut s),
        vec![
            Output::Post {
                room: ROOM,
                user: USER,
                body: "one".into(),
                client_message_id: None,
                receipt: Some("c".into()),
                confirm: false,
            },
            Output::MarkRead {
                room: ROOM,
                user: USER,
                up_to: MSG.parse().expect("id"),
                receipt: Some("c".into()),
                confirm: true,
            },
        ]
    );
    s.posted(Some("c".into()), false, Ok(()), now);
    assert!(
        drain(&mut s).is_empty(),
        "no RECEIPT before the last append"
    );
    s.posted(Some("c".into()), true, Ok(()), now);
    let out = drain(&mut s);
    assert_eq!(frames(&out)[0].get("receipt-id"), Some("c"));
    // The transaction is gone after COMMIT.
    s.handle_frame(Frame::new(Command::Abort).header("transaction", "t1"), now);
    is_error_then_close(&drain(&mut s), "unknown transaction");
}

#[test]
fn a_refused_send_in_a_commit_errors_and_drops_the_rest() {
    let now = t0();
    let mut s = connected(now);
    s.handle_frame(Frame::new(Command::Begin).header("transaction", "t"), now);
    for body in ["a", "b"] {
        s.handle_frame(
            send_to(Destination::RoomSend(ROOM))
                .header("transaction", "t")
                .body(body),
            now,
        );
    }
    s.handle_frame(
        Frame::new(Command::Commit)
            .header("transaction", "t")
            .header("receipt", "c"),
        now,
    );
    assert!(matches!(
        s.poll_output(),
        Some(Output::Post { confirm: false, .. })
    ));
    s.posted(
        Some("c".into()),
        false,
        Err(Refusal("room is closed".into())),
        now,
    );
    let out = drain(&mut s);
    is_error_then_close(&out, "room is closed");
    assert_eq!(frames(&out)[0].get("receipt-id"), Some("c"));
}

#[test]
fn abort_discards_and_disconnect_aborts() {
    let now = t0();
    let mut s = connected(now);
    s.handle_frame(Frame::new(Command::Begin).header("transaction", "t"), now);
    s.handle_frame(
        send_to(Destination::RoomSend(ROOM))
            .header("transaction", "t")
            .body("x"),
        now,
    );
    s.handle_frame(
        Frame::new(Command::Abort)
            .header("transaction", "t")
            .header("receipt", "a"),
        now,
    );
    let out = drain(&mut s);
    assert_eq!(frames(&out)[0].get("receipt-id"), Some("a"));
    assert!(!out.iter().any(Output::is_request), "{out:?}");

    let mut s = connected(now);
    s.handle_frame(Frame::new(Command::Begin).header("transaction", "t"), now);
    s.handle_frame(
        send_to(Destination::RoomSend(ROOM))
            .header("transaction", "t")
            .body("x"),
        now,
    );
    s.handle_frame(Frame::new(Command::Disconnect), now);
    assert_eq!(
        drain(&mut s),
        vec![Output::Close(CloseReason::Disconnected)]
    );
    assert!(s.transactions.is_empty());
}

#[test]
fn transactions_are_bounded_and_checked() {
    let now = t0();
    let config = SessionConfig {
        max_transactions: 1,
        max_transaction_frames: 1,
        ..SessionConfig::default()
    };
    let begin = |tx: &str| Frame::new(Command::Begin).header("transaction", tx);
    let fresh = || {
        let mut s = Session::new(config.clone(), now);
        s.handle_frame(connect_frame("1.2"), now);
        s.authenticated(Ok(USER), now);
        drain(&mut s);
        s
    };
    let mut s = fresh();
    s.handle_frame(begin("t"), now);
    s.handle_frame(begin("t"), now);
    is_error_then_close(&drain(&mut s), "transaction already open");
    let mut s = fresh();
    s.handle_frame(begin("t"), now);
    s.handle_frame(begin("u"), now);
    is_error_then_close(&drain(&mut s), "too many open transactions");
    let mut s = fresh();
    s.handle_frame(begin("t"), now);
    let tx_send = || {
        send_to(Destination::RoomSend(ROOM))
            .header("transaction", "t")
            .body("x")
    };
    s.handle_frame(tx_send(), now);
    s.handle_frame(tx_send(), now);
    is_error_then_close(&drain(&mut s), "too many frames in the transaction");
    let mut s = fresh();
    s.handle_frame(Frame::new(Command::Begin), now);
    is_error_then_close(&drain(&mut s), "BEGIN without transaction");
    let mut s = fresh();
    s.handle_frame(
        Frame::new(Command::Ack)
            .header("id", "x")
            .header("transaction", "nope"),
        now,
    );
    is_error_then_close(&drain(&mut s), "unknown transaction");
}

#[test]
fn transactional_acks_apply_at_commit() {
    let now = t0();
    let mut s = subscribed(now, "s", "client-individual");
    s.deliver(&msg(Topic::Room(ROOM), "m", 1), now);
    drain(&mut s);
    s.handle_frame(Frame::new(Command::Begin).header("transaction", "t"), now);
    s.handle_frame(
        Frame::new(Command::Ack)
            .header("id", "m-1")
            .header("transaction", "t"),
        now,
    );
    assert_eq!(s.subscriptions["s"].unacked.len(), 1, "not yet");
    s.handle_frame(
        Frame::new(Command::Commit)
            .header("transaction", "t")
            .header("receipt", "c"),
        now,
    );
    assert_eq!(frames(&drain(&mut s))[0].get("receipt-id"), Some("c"));
    assert!(s.subscriptions["s"].unacked.is_empty());
}

fn ack_ids(out: &[Output]) -> Vec<String> {
    frames(out)
        .iter()
        .filter_map(|f| f.get("ack").map(str::to_owned))
        .collect()
}

#[test]
fn client_ack_is_cumulative_and_client_individual_is_not() {
    let now = t0();
    let mut s = subscribed(now, "s", "client");
    for (i, id) in ["a", "b", "c"].into_iter().enumerate() {
        s.deliver(&msg(Topic::Room(ROOM), id, i as u64), now);
    }
    let ids = ack_ids(&drain(&mut s));
    assert_eq!(ids, ["a-1", "b-2", "c-3"]);
    s.handle_frame(Frame::new(Command::Ack).header("id", "b-2"), now);
    assert!(drain(&mut s).is_empty());
    let left: Vec<_> = s.subscriptions["s"]
        .unacked
        .iter()
        .map(|u| u.ack_id.clone())
        .collect();
    assert_eq!(left, ["c-3"], "a and b acknowledged together");
    s.handle_frame(
        Frame::new(Command::Ack)
            .header("id", "a-1")
            .header("receipt", "r"),
        now,
    );
    let out = drain(&mut s);
    is_error_then_close(&out, "unknown ack id");
    assert_eq!(frames(&out)[0].get("receipt-id"), Some("r"));

    let mut s = subscribed(now, "s", "client-individual");
    for (i, id) in ["a", "b"].into_iter().enumerate() {
        s.deliver(&msg(Topic::Room(ROOM), id, i as u64), now);
    }
    drain(&mut s);
    s.handle_frame(Frame::new(Command::Ack).header("id", "b-2"), now);
    s.handle_frame(Frame::new(Command::Ack).header("id", "a-1"), now);
    assert!(drain(&mut s).is_empty(), "both were still open");
    assert!(s.subscriptions["s"].unacked.is_empty());
}

#[test]
fn nack_redelivers_once() {
    let now = t0();
    let mut s = subscribed(now, "s", "client-individual");
    s.deliver(&msg(Topic::Room(ROOM), "a", 1), now);
    drain(&mut s);
    s.handle_frame(Frame::new(Command::Nack).header("id", "a-1"), now);
    let out = drain(&mut s);
    let again = frames(&out)[0];
    assert_eq!(again.command, Command::Message);
    assert_eq!(again.get("message-id"), Some("a"));
    assert_eq!(again.get(REDELIVERED_HEADER), Some("true"));
    assert_eq!(again.get("ack"), Some("a-2"));
    assert_eq!(again.body, b"a");
    s.handle_frame(Frame::new(Command::Nack).header("id", "a-2"), now);
    assert!(drain(&mut s).is_empty(), "a redelivery is not redelivered");
    assert!(s.subscriptions["s"].unacked.is_empty());
    s.handle_frame(Frame::new(Command::Nack).header("id", "zzz"), now);
    is_error_then_close(&drain(&mut s), "unknown ack id");
}

#[test]
fn auto_mode_has_nothing_to_ack() {
    let now = t0();
    let mut s = subscribed(now, "s", "auto");
    s.deliver(&msg(Topic::Room(ROOM), "a", 1), now);
    drain(&mut s);
    s.handle_frame(Frame::new(Command::Ack).header("id", "a-1"), now);
    is_error_then_close(&drain(&mut s), "unknown ack id");
    let mut s = subscribed(now, "s", "auto");
    s.handle_frame(Frame::new(Command::Ack), now);
    is_error_then_close(&drain(&mut s), "ACK without id");
}

#[test]
fn stomp_1_1_acks_by_message_id_and_subscription() {
    let now = t0();
    let mut s = Session::new(SessionConfig::default(), now);
    s.handle_frame(connect_frame("1.1"), now);
    s.authenticated(Ok(USER), now);
    s.handle_frame(
        Frame::new(Command::Subscribe)
            .header("id", "s")
            .header("destination", room_topic())
            .header("ack", "client"),
        now,
    );
    s.authorized("s", Ok(()), now);
    drain(&mut s);
    s.deliver(&msg(Topic::Room(ROOM), "a", 1), now);
    let out = drain(&mut s);
    assert_eq!(frames(&out)[0].get("ack"), None, "1.1 acks by message-id");
    s.handle_frame(
        Frame::new(Command::Ack)
            .header("message-id", "a")
            .header("subscription", "s")
            .header("receipt", "r"),
        now,
    );
    assert_eq!(frames(&drain(&mut s))[0].get("receipt-id"), Some("r"));
    s.handle_frame(Frame::new(Command::Ack).header("message-id", "a"), now);
    is_error_then_close(&drain(&mut s), "ACK without message-id and subscription");
}

#[test]
fn a_client_that_never_acks_is_a_slow_consumer() {
    let now = t0();
    let config = SessionConfig {
        max_unacked: 2,
        ..SessionConfig::default()
    };
    let mut s = Session::new(config, now);
    s.handle_frame(connect_frame("1.2"), now);
    s.authenticated(Ok(USER), now);
    s.handle_frame(
        Frame::new(Command::Subscribe)
            .header("id", "s")
            .header("destination", room_topic())
            .header("ack", "client"),
        now,
    );
    s.authorized("s", Ok(()), now);
    drain(&mut s);
    s.deliver(&msg(Topic::Room(ROOM), "a", 1), now);
    s.deliver(&msg(Topic::Room(ROOM), "b", 2), now);
    assert_eq!(drain(&mut s).len(), 2);
    s.deliver(&msg(Topic::Room(ROOM), "c", 3), now);
    let out = drain(&mut s);
    let [Output::Frame(f), Output::Close(CloseReason::SlowConsumer)] = out.as_slice() else {
        panic!("{out:?}");
    };
    assert_eq!(f.get("message"), Some("too many unacknowledged messages"));
}

#[test]
fn the_user_queue_resolves_to_the_connected_user_only() {
    let now = t0();
    let mut s = connected(now);
    s.handle_frame(
        Frame::new(Command::Subscribe)
            .header("id", "q")
            .header("destination", "/user/queue/rooms")
            .header("receipt", "r"),
        now,
    );
    let out = drain(&mut s);
    assert_eq!(
        out[0],
        Output::Subscribed {
            subscription: "q".into(),
            topic: Topic::UserRooms(USER)
        }
    );
    assert_eq!(frames(&out)[0].get("receipt-id"), Some("r"));
    s.deliver(&msg(Topic::UserRooms(USER), "p", 1), now);
    let out = drain(&mut s);
    assert_eq!(
        frames(&out)[0].get("destination"),
        Some("/user/queue/rooms")
    );
    let other = UserId::from_uuid(Uuid::from_u128(43));
    s.deliver(&msg(Topic::UserRooms(other), "p", 2), now);
    assert!(drain(&mut s).is_empty());
    for destination in [
        format!("/user/{other}/queue/rooms"),
        "/user/queue/other".to_owned(),
    ] {
        let mut s = connected(now);
        s.handle_frame(
            Frame::new(Command::Subscribe)
                .header("id", "q")
                .header("destination", destination),
            now,
        );
        is_error_then_close(
            &drain(&mut s),
            "only /user/queue/rooms and /user/queue/calls (the connected user's own queues) may be subscribed",
        );
    }
}

fn subscribe_since(s: &mut Session, now: Instant) {
    s.handle_frame(
        Frame::new(Command::Subscribe)
            .header("id", "s")
            .header("destination", room_topic())
            .header(SINCE_HEADER, MSG)
            .header("receipt", "r"),
        now,
    );
    drain(s);
    s.authorized("s", Ok(()), now);
}

#[test]
fn catch_up_replays_then_merges_held_live_deliveries_without_gap_or_duplicate() {
    let now = t0();
    let mut s = connected(now);
    subscribe_since(&mut s, now);
    assert_eq!(
        drain(&mut s),
        vec![
            Output::Subscribed {
                subscription: "s".into(),
                topic: Topic::Room(ROOM)
            },
            Output::CatchUp {
                subscription: "s".into(),
                room: ROOM,
                since: MSG.parse().expect("id"),
                limit: SessionConfig::default().max_catch_up,
            },
        ]
    );
    // Live deliveries while the history is read are held back.
    s.deliver(&msg(Topic::Room(ROOM), "m5", 5), now);
    s.deliver(&msg(Topic::Room(ROOM), "m7", 7), now);
    assert!(drain(&mut s).is_empty());
    let history = CatchUp {
        messages: vec![
            msg(Topic::Room(ROOM), "m3", 3),
            msg(Topic::Room(ROOM), "m4", 4),
            msg(Topic::Room(ROOM), "m5", 5),
        ],
        floor: 2,
    };
    s.caught_up("s", Ok(history), now);
    let out = drain(&mut s);
    let ids: Vec<_> = frames(&out)
        .iter()
        .map(|f| f.get("message-id").or(f.get("receipt-id")))
        .collect();
    assert_eq!(
        ids,
        [Some("m3"), Some("m4"), Some("m5"), Some("m7"), Some("r")]
    );
    // The feed may still bring what the history held: skipped; newer ones flow.
    s.deliver(&msg(Topic::Room(ROOM), "m5", 5), now);
    assert!(drain(&mut s).is_empty());
    s.deliver(&msg(Topic::Room(ROOM), "m8", 8), now);
    assert_eq!(frames(&drain(&mut s))[0].get("message-id"), Some("m8"));
}

#[test]
fn a_refused_catch_up_is_an_error_with_the_receipt_id() {
    let now = t0();
    let mut s = connected(now);
    subscribe_since(&mut s, now);
    drain(&mut s);
    s.caught_up("s", Err(Refusal("too many".into())), now);
    let out = drain(&mut s);
    is_error_then_close(&out, "too many");
    assert_eq!(frames(&out)[0].get("receipt-id"), Some("r"));
    let mut s = connected(now);
    s.handle_frame(
        Frame::new(Command::Subscribe)
            .header("id", "s")
            .header("destination", room_topic())
            .header(SINCE_HEADER, "yesterday"),
        now,
    );
    is_error_then_close(&drain(&mut s), "since-message-id is not a message id");
}

#[test]
fn read_markers_take_the_message_id_from_a_header_or_the_body() {
    let now = t0();
    let up_to: MessageId = MSG.parse().expect("id");
    for frame in [
        send_to(Destination::RoomRead(ROOM)).header("message-id", MSG),
        send_to(Destination::RoomRead(ROOM)).body(format!(" {MSG}\n")),
    ] {
        let mut s = connected(now);
        s.handle_frame(frame.header("receipt", "r"), now);
        assert_eq!(
            drain(&mut s),
            vec![Output::MarkRead {
                room: ROOM,
                user: USER,
                up_to,
                receipt: Some("r".into()),
                confirm: true
            }]
        );
    }
    for (frame, message) in [
        (
            send_to(Destination::RoomRead(ROOM)),
            "a read marker needs a message-id",
        ),
        (
            send_to(Destination::RoomRead(ROOM)).header("message-id", "nope"),
            "message-id is not a message id",
        ),
    ] {
        let mut s = connected(now);
        s.handle_frame(frame, now);
        is_error_then_close(&drain(&mut s), message);
    }
}

#[test]
fn sessions_sharing_a_limiter_share_the_users_budget() {
    let now = t0();
    let config = SessionConfig {
        send_burst: 3,
        sends_per_second: 1,
        ..SessionConfig::default()
    };
    let open = || {
        let mut s = Session::new(config.clone(), now);
        s.handle_frame(connect_frame("1.2"), now);
        s.authenticated(Ok(USER), now);
        drain(&mut s);
        s
    };
    let (mut a, mut b) = (open(), open());
    let send = || send_to(Destination::RoomSend(ROOM)).body("x");
    a.handle_frame(send(), now);
    b.handle_frame(send(), now);
    a.handle_frame(send(), now);
    assert_eq!(drain(&mut a).len() + drain(&mut b).len(), 3);
    b.handle_frame(send(), now);
    is_error_then_close(&drain(&mut b), "sending too fast");
}

#[test]
fn shutdown_sends_error_and_closes() {
    let now = t0();
    let mut s = subscribed(now, "s", "auto");
    s.handle_shutdown(now);
    let out = drain(&mut s);
    let [Output::Frame(f), Output::Close(CloseReason::ServerShutdown)] = out.as_slice() else {
        panic!("{out:?}");
    };
    assert_eq!(f.get("message"), Some("server shutting down"));
    s.handle_shutdown(now);
    assert!(drain(&mut s).is_empty());
}
