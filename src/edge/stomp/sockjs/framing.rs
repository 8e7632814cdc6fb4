//! SockJS frames (`o`, `h`, `a[...]`, `c[code,"reason"]`), the JSON escaping the protocol
//! asks of servers, the per-transport wrappings, and the parsers of client payloads. Pure
//! functions only, so every rule here is tested without a socket.

use serde_json::Value;

/// One frame from server to client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// The session is open.
    Open,
    /// Keeps idle connections alive through proxies.
    Heartbeat,
    /// Messages, in order.
    Messages(Vec<String>),
    /// The session is closed for this reason.
    Close(u16, String),
}

impl Frame {
    /// `c[3000,"Go away!"]`: the application ended the session.
    pub fn go_away() -> Self {
        Self::Close(3000, "Go away!".into())
    }

    /// `c[2010,"Another connection still open"]`: one receiver per session.
    pub fn another_connection() -> Self {
        Self::Close(2010, "Another connection still open".into())
    }

    /// `c[1002,"Connection interrupted"]`: a receiver vanished mid-response.
    pub fn interrupted() -> Self {
        Self::Close(1002, "Connection interrupted".into())
    }

    /// The frame as sent on the wire, before any transport wrapping.
    pub fn encode(&self) -> String {
        match self {
            Self::Open => "o".into(),
            Self::Heartbeat => "h".into(),
            Self::Messages(messages) => {
                let mut out = String::from("a[");
                for (i, m) in messages.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&quote(m));
                }
                out.push(']');
                out
            }
            Self::Close(code, reason) => format!("c[{code},{}]", quote(reason)),
        }
    }
}

/// Whether a character must be sent as `\uXXXX`: some browsers drop or mangle these in
/// transports (sockjs-protocol's `escapable_by_server`).
fn must_escape(c: char) -> bool {
    matches!(c,
        '\u{0}'..='\u{1f}'
        | '\u{200c}'..='\u{200f}'
        | '\u{2028}'..='\u{202f}'
        | '\u{2060}'..='\u{206f}'
        | '\u{fff0}'..='\u{ffff}')
}

/// A JSON string literal with the characters SockJS clients cannot take raw escaped.
pub fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if must_escape(c) => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// How a receiving transport wraps each frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wrap {
    /// `xhr` and `xhr_streaming`: the frame and a newline.
    Xhr,
    /// `eventsource`: one `data:` event.
    EventSource,
    /// `htmlfile`: a script calling `p(frame)`.
    HtmlFile,
    /// `jsonp`: `callback(frame)`.
    Jsonp,
}

impl Wrap {
    /// The bytes of `frame` for this transport; `callback` was validated by
    /// [`valid_callback`].
    pub fn frame(self, frame: &Frame, callback: &str) -> String {
        let raw = frame.encode();
        match self {
            Self::Xhr => format!("{raw}\n"),
            Self::EventSource => format!("data: {raw}\r\n\r\n"),
            Self::HtmlFile => format!("<script>\np({});\n</script>\r\n", quote(&raw)),
            Self::Jsonp => format!("/**/{callback}({});\r\n", quote(&raw)),
        }
    }
}

/// The 2 KiB of `h` that makes old browsers start delivering an XHR stream.
pub fn xhr_streaming_prelude() -> String {
    let mut s = "h".repeat(2048);
    s.push('\n');
    s
}

/// The blank line Opera needs before the first event.
pub const EVENTSOURCE_PRELUDE: &str = "\r\n";

/// The `htmlfile` page head, padded past 1 KiB so the browser starts rendering.
pub fn htmlfile_prelude(callback: &str) -> String {
    let mut page = format!(
        r#"<!doctype html>
<html><head>
  <meta http-equiv="X-UA-Compatible" content="IE=edge" />
  <meta http-equiv="Content-Type" content="text/html; charset=UTF-8" />
</head><body><h2>Don't panic!</h2>
  <script>
    document.domain = document.domain;
    var c = parent.{callback};
    c.start();
    function p(d) {{c.message(d);}};
    window.onload = function() {{c.stop();}};
  </script>"#
    );
    let pad = 1025usize.saturating_sub(page.len());
    page.push_str(&" ".repeat(pad));
    page.push_str("\r\n\r\n");
    page
}

/// A JSONP/htmlfile callback name: letters, digits, `-`, `_` and `.` only, so it cannot
/// inject script.
pub fn valid_callback(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 256
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// A server or session id from the URL: non-empty and without dots.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty() && !id.contains('.') && !id.contains('/')
}

/// Why a client payload was refused (the texts are the protocol's).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    /// Nothing was sent.
    #[error("Payload expected.")]
    Expected,
    /// Not a JSON array of strings (or one string).
    #[error("Broken JSON encoding.")]
    BrokenJson,
}

/// Parses what `xhr_send` or a SockJS websocket message carries: a JSON array of strings or
/// one JSON string. An empty body is [`PayloadError::Expected`].
pub fn parse_messages(body: &[u8]) -> Result<Vec<String>, PayloadError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(PayloadError::Expected);
    }
    match serde_json::from_slice::<Value>(body).map_err(|_| PayloadError::BrokenJson)? {
        Value::String(s) => Ok(vec![s]),
        Value::Array(items) => items
            .into_iter()
            .map(|v| match v {
                Value::String(s) => Ok(s),
                _ => Err(PayloadError::BrokenJson),
            })
            .collect(),
        _ => Err(PayloadError::BrokenJson),
    }
}

/// Parses a `jsonp_send` body: a form with the payload in `d`, or the payload itself.
pub fn parse_jsonp_send(body: &[u8], form_encoded: bool) -> Result<Vec<String>, PayloadError> {
    if !form_encoded {
        return parse_messages(body);
    }
    let d = form_urlencoded::parse(body)
        .find(|(k, _)| k == "d")
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default();
    parse_messages(d.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_encode_as_the_protocol_says() {
        assert_eq!(Frame::Open.encode(), "o");
        assert_eq!(Frame::Heartbeat.encode(), "h");
        assert_eq!(Frame::go_away().encode(), r#"c[3000,"Go away!"]"#);
        assert_eq!(
            Frame::another_connection().encode(),
            r#"c[2010,"Another connection still open"]"#
        );
        assert_eq!(
            Frame::Messages(vec!["a".into(), "b\"\\".into()]).encode(),
            r#"a["a","b\"\\"]"#
        );
        assert_eq!(Frame::Messages(vec![]).encode(), "a[]");
    }

    #[test]
    fn server_escapes_the_unicode_ranges_browsers_mangle() {
        assert_eq!(quote("  \u{0}\n\r "), r#""  \u0000\n\r ""#);
        assert_eq!(
            quote("\u{200c}\u{2028}\u{2060}\u{fff0}\u{ffff}"),
            r#""\u200c\u2028\u2060\ufff0\uffff""#
        );
        assert_eq!(quote("안녕 ☃"), "\"안녕 ☃\"");
        // Every escaped string is valid JSON that decodes to the original.
        let all: String = (1u32..0x1_0000).filter_map(char::from_u32).collect();
        let back: String = serde_json::from_str(&quote(&all)).expect("valid JSON");
        assert_eq!(back, all);
    }

    #[test]
    fn transports_wrap_frames() {
        let f = Frame::Messages(vec!["x".into()]);
        assert_eq!(Wrap::Xhr.frame(&f, ""), "a[\"x\"]\n");
        assert_eq!(Wrap::EventSource.frame(&f, ""), "data: a[\"x\"]\r\n\r\n");
        assert_eq!(
            Wrap::HtmlFile.frame(&f, ""),
            "<script>\np(\"a[\\\"x\\\"]\");\n</script>\r\n"
        );
        assert_eq!(Wrap::Jsonp.frame(&Frame::Open, "cb"), "/**/cb(\"o\");\r\n");
        assert_eq!(xhr_streaming_prelude().len(), 2049);
        assert!(htmlfile_prelude("cb").len() > 1024);
        assert!(htmlfile_prelude("cb").contains("var c = parent.cb;"));
    }

    #[test]
    fn callbacks_and_ids_are_validated() {
        assert!(valid_callback("callback"));
        assert!(valid_callback("a.b-c_1"));
        for bad in ["", " ", "*", "abc(", "a;b", "</script>"] {
            assert!(!valid_callback(bad), "{bad:?}");
        }
        assert!(valid_id("000"));
        assert!(valid_id("abcdefgh_i-j "));
        for bad in ["", ".", "a.", "a/b"] {
            assert!(!valid_id(bad), "{bad:?}");
        }
    }

    #[test]
    fn payloads_parse_or_give_the_protocol_errors() {
        assert_eq!(
            parse_messages(br#"["a","b"]"#),
            Ok(vec!["a".into(), "b".into()])
        );
        assert_eq!(parse_messages(br#""a""#), Ok(vec!["a".into()]));
        assert_eq!(parse_messages(b"[]"), Ok(vec![]));
        assert_eq!(parse_messages(b""), Err(PayloadError::Expected));
        assert_eq!(parse_messages(b"[\"x"), Err(PayloadError::BrokenJson));
        assert_eq!(parse_messages(b"[1]"), Err(PayloadError::BrokenJson));
        assert_eq!(parse_messages(b"{}"), Err(PayloadError::BrokenJson));
        assert_eq!(
            parse_jsonp_send(b"d=%5B%22x%22%5D", true),
            Ok(vec!["x".into()])
        );
        for empty in [&b""[..], b"d=", b"p=p"] {
            assert_eq!(parse_jsonp_send(empty, true), Err(PayloadError::Expected));
        }
        assert_eq!(
            parse_jsonp_send(b"d=%5B%22x", true),
            Err(PayloadError::BrokenJson)
        );
        assert_eq!(
            parse_jsonp_send(br#"["%61bc"]"#, false),
            Ok(vec!["%61bc".into()])
        );
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_parse_to_messages_or_an_error(body in proptest::collection::vec(proptest::num::u8::ANY, 0..256)) {
            for parsed in [
                parse_messages(&body),
                parse_jsonp_send(&body, true),
                parse_jsonp_send(&body, false),
            ] {
                if let Err(e) = parsed {
                    let text = e.to_string();
                    proptest::prop_assert!(text == "Payload expected." || text == "Broken JSON encoding.");
                }
            }
        }

        #[test]
        fn json_like_bodies_parse_to_what_they_say_or_an_error(body in r#"[\[\]",a-z\\u0-9d=% {}]{0,64}"#) {
            match parse_messages(body.as_bytes()) {
                Ok(messages) => {
                    // What was accepted is exactly the JSON's strings.
                    let value: serde_json::Value = serde_json::from_str(&body).expect("accepted JSON");
                    let expected: Vec<String> = match value {
                        Value::String(s) => vec![s],
                        Value::Array(items) => items.into_iter().filter_map(|v| v.as_str().map(str::to_owned)).collect(),
                        other => panic!("accepted {other}"),
                    };
                    proptest::prop_assert_eq!(messages, expected);
                }
                Err(PayloadError::Expected) => proptest::prop_assert!(body.trim().is_empty()),
                Err(PayloadError::BrokenJson) => {}
            }
            let _ = parse_jsonp_send(body.as_bytes(), true);
        }

        #[test]
        fn any_strings_round_trip_through_frames(msgs in proptest::collection::vec(".*", 0..4)) {
            let encoded = Frame::Messages(msgs.clone()).encode();
            let back: Vec<String> = serde_json::from_str(&encoded[1..]).expect("a[...] is JSON");
            proptest::prop_assert_eq!(back, msgs.clone());
            let sent = serde_json::to_vec(&msgs).expect("json");
            proptest::prop_assert_eq!(parse_messages(&sent), Ok(msgs));
        }
    }
}
