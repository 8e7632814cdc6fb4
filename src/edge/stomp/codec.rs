//! Sans-IO STOMP codec: an incremental [`Decoder`] that takes bytes in any chunking and yields
//! [`Frame`]s, and [`encode`] for the way back. The decoder never buffers more than
//! [`Limits::max_frame_bytes`], so a client cannot grow server memory by never finishing a
//! frame; every malformed input is a [`DecodeError`], never a panic.

use super::frame::{Command, Frame, Version};

/// Bounds on what one client frame may cost. All are client-controlled sizes, so all are capped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Bytes of one frame from its command to its terminating NUL (bytes buffered at most).
    pub max_frame_bytes: usize,
    /// Headers in one frame.
    pub max_headers: usize,
    /// Bytes of one command or header line.
    pub max_header_line: usize,
    /// Bytes of one body.
    pub max_body: usize,
}

impl Default for Limits {
    /// Chat messages are at most 4,000 characters; these leave room for headers and UTF-8.
    fn default() -> Self {
        Self {
            max_frame_bytes: 64 * 1024,
            max_headers: 32,
            max_header_line: 4 * 1024,
            max_body: 32 * 1024,
        }
    }
}

/// Why bytes could not be decoded. After an error the decoder stays failed, because the stream
/// can no longer be framed reliably; the session answers with ERROR and closes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The frame would exceed [`Limits::max_frame_bytes`].
    #[error("frame exceeds {0} bytes")]
    FrameTooLarge(usize),
    /// The body exceeds [`Limits::max_body`].
    #[error("body exceeds {0} bytes")]
    BodyTooLarge(usize),
    /// More than [`Limits::max_headers`] headers.
    #[error("more than {0} headers")]
    TooManyHeaders(usize),
    /// A command or header line exceeds [`Limits::max_header_line`].
    #[error("header line exceeds {0} bytes")]
    HeaderLineTooLong(usize),
    /// The command is not a STOMP command.
    #[error("unknown command")]
    UnknownCommand,
    /// A header line has no colon.
    #[error("header without a colon")]
    MissingColon,
    /// A header uses an escape the version does not define (a fatal error per the spec).
    #[error("invalid escape sequence in header")]
    InvalidEscape,
    /// Command or header is not UTF-8.
    #[error("command or header is not UTF-8")]
    InvalidUtf8,
    /// `content-length` is not a non-negative integer.
    #[error("invalid content-length")]
    InvalidContentLength,
    /// The byte after a `content-length` body is not NUL.
    #[error("body is not terminated by NUL")]
    MissingNul,
    /// A CR not followed by LF where an EOL was expected.
    #[error("stray carriage return")]
    StrayCarriageReturn,
    /// A body on a command that may not have one.
    #[error("{0} frames may not have a body")]
    BodyNotAllowed(&'static str),
}

/// Why a frame could not be encoded: some header text cannot be expressed on the wire.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// A header that cannot be escaped (STOMP 1.0, CONNECT/CONNECTED) holds LF, CR or, in a
    /// name, a colon.
    #[error("header cannot be written without escaping")]
    Unencodable,
}

/// Where the decoder is inside the current frame.
#[derive(Debug)]
enum Stage {
    /// Between frames: skipping heart-beat EOLs.
    Idle,
    /// The command line is read; reading headers.
    Headers {
        command: Command,
        headers: Vec<(String, String)>,
    },
    /// Headers are read; reading the body.
    Body {
        command: Command,
        headers: Vec<(String, String)>,
        content_length: Option<usize>,
    },
}

/// What [`Decoder::step`] found.
enum Step {
    Frame(Frame),
    NeedMore,
}

/// An incremental STOMP decoder. Feed it bytes as they arrive; it returns whole frames.
#[derive(Debug)]
pub struct Decoder {
    limits: Limits,
    version: Option<Version>,
    /// Bytes of the current frame not yet consumed (never more than `max_frame_bytes`).
    buf: Vec<u8>,
    /// Offset in `buf` up to which the current frame has been parsed.
    pos: usize,
    /// Offset in `buf` from which to resume searching for a delimiter (avoids rescans).
    scan: usize,
    stage: Stage,
    failed: Option<DecodeError>,
    /// Heart-beat EOLs seen since the last [`Decoder::take_heartbeats`], for liveness.
    heartbeats: u64,
}

impl Decoder {
    /// A decoder before version negotiation: it accepts CR-LF (for the CONNECT frame of a 1.2
    /// client) and decodes 1.2 escapes on frames other than CONNECT/STOMP.
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            version: None,
            buf: Vec::new(),
            pos: 0,
            scan: 0,
            stage: Stage::Idle,
            failed: None,
            heartbeats: 0,
        }
    }

    /// Switches to the negotiated version's rules for the frames that follow.
    pub fn set_version(&mut self, version: Version) {
        self.version = Some(version);
    }

    /// Bytes currently buffered; never above [`Limits::max_frame_bytes`].
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// How many heart-beat EOLs arrived since the last call, then resets the count.
    pub fn take_heartbeats(&mut self) -> u64 {
        std::mem::take(&mut self.heartbeats)
    }

    /// Decodes `input`, appending every completed frame to `out`. Returns the first error; the
    /// frames decoded before it are still in `out`.
    pub fn feed(&mut self, mut input: &[u8], out: &mut Vec<Frame>) -> Result<(), DecodeError> {
        if let Some(err) = &self.failed {
            return Err(err.clone());
        }
        loop {
            loop {
                match self.step() {
                    Ok(Step::Frame(frame)) => out.push(frame),
                    Ok(Step::NeedMore) => break,
                    Err(err) => {
                        self.failed = Some(err.clone());
                        self.buf = Vec::new();
                        return Err(err);
                    }
                }
            }
            if input.is_empty() {
                return Ok(());
            }
            let room = self.limits.max_frame_bytes.saturating_sub(self.buf.len());
            if room == 0 {
                let err = DecodeError::FrameTooLarge(self.limits.max_frame_bytes);
                self.failed = Some(err.clone());
                self.buf = Vec::new();
                return Err(err);
            }
            let take = room.min(input.len());
            self.buf.extend_from_slice(&input[..take]);
            input = &input[take..];
        }
    }

    /// Whether a CR may precede LF: STOMP 1.2, and before negotiation (a 1.2 CONNECT).
    fn cr_allowed(&self) -> bool {
        !matches!(self.version, Some(Version::V1_0 | Version::V1_1))
    }

    /// Advances through the buffer as far as it allows.
    fn step(&mut self) -> Result<Step, DecodeError> {
        loop {
            // The stage is taken out and put back when more bytes are needed; after an error
            // the decoder is failed for good, so what is left behind does not matter.
            match std::mem::replace(&mut self.stage, Stage::Idle) {
                Stage::Idle => {
                    // Heart-beats are bare EOLs between frames.
                    while self.pos < self.buf.len() {
                        match self.buf[self.pos] {
                            b'\n' => {
                                self.pos += 1;
                                self.heartbeats += 1;
                            }
                            b'\r' if self.cr_allowed() => match self.buf.get(self.pos + 1) {
                                Some(b'\n') => {
                                    self.pos += 2;
                                    self.heartbeats += 1;
                                }
                                Some(_) => return Err(DecodeError::StrayCarriageReturn),
                                None => break,
                            },
                            _ => break,
                        }
                    }
                    self.consume();
                    let cr = self.cr_allowed();
                    if self.buf.first().is_none_or(|&b| cr && b == b'\r') {
                        return Ok(Step::NeedMore);
                    }
                    let Some(line) = self.line()? else {
                        return Ok(Step::NeedMore);
                    };
                    let text = std::str::from_utf8(&line).map_err(|_| DecodeError::InvalidUtf8)?;
                    let command = text
                        .parse::<Command>()
                        .map_err(|_| DecodeError::UnknownCommand)?;
                    self.stage = Stage::Headers {
                        command,
                        headers: Vec::new(),
                    };
                }
                Stage::Headers {
                    command,
                    mut headers,
                } => {
                    let Some(line) = self.line()? else {
                        self.stage = Stage::Headers { command, headers };
                        return Ok(Step::NeedMore);
                    };
                    if line.is_empty() {
                        let content_length = self.content_length(&headers)?;
                        self.stage = Stage::Body {
                            command,
                            headers,
                            content_length,
                        };
                        continue;
                    }
                    if headers.len() >= self.limits.max_headers {
                        return Err(DecodeError::TooManyHeaders(self.limits.max_headers));
                    }
                    headers.push(self.header(command, &line)?);
                    self.stage = Stage::Headers { command, headers };
                }
                Stage::Body {
                    command,
                    headers,
                    content_length,
                } => {
                    let end = match content_length {
                        Some(n) => {
                            let end = self.pos + n;
                            match self.buf.get(end) {
                                Some(0) => Some(end),
                                Some(_) => return Err(DecodeError::MissingNul),
                                None => None,
                            }
                        }
                        None => match self.buf[self.scan..].iter().position(|&b| b == 0) {
                            Some(i) => Some(self.scan + i),
                            None => {
                                self.scan = self.buf.len();
                                if self.buf.len() - self.pos > self.limits.max_body {
                                    return Err(DecodeError::BodyTooLarge(self.limits.max_body));
                                }
                                None
                            }
                        },
                    };
                    let Some(end) = end else {
                        self.stage = Stage::Body {
                            command,
                            headers,
                            content_length,
                        };
                        return Ok(Step::NeedMore);
                    };
                    if end - self.pos > self.limits.max_body {
                        return Err(DecodeError::BodyTooLarge(self.limits.max_body));
                    }
                    let body = self.buf[self.pos..end].to_vec();
                    if !body.is_empty() && !command.allows_body() {
                        return Err(DecodeError::BodyNotAllowed(command.as_str()));
                    }
                    self.pos = end + 1;
                    self.consume();
                    return Ok(Step::Frame(Frame {
                        command,
                        headers,
                        body,
                    }));
                }
            }
        }
    }

    /// The first `content-length`, checked against the limits before the body arrives.
    fn content_length(&self, headers: &[(String, String)]) -> Result<Option<usize>, DecodeError> {
        let Some((_, value)) = headers.iter().find(|(n, _)| n == "content-length") else {
            return Ok(None);
        };
        let n = value
            .trim()
            .parse::<usize>()
            .map_err(|_| DecodeError::InvalidContentLength)?;
        if n > self.limits.max_body {
            return Err(DecodeError::BodyTooLarge(self.limits.max_body));
        }
        if self.pos.saturating_add(n).saturating_add(1) > self.limits.max_frame_bytes {
            return Err(DecodeError::FrameTooLarge(self.limits.max_frame_bytes));
        }
        Ok(Some(n))
    }

    /// One header line, split at its first colon and unescaped per version and command.
    fn header(&self, command: Command, line: &[u8]) -> Result<(String, String), DecodeError> {
        let escaped = command.escapes_headers() && !matches!(self.version, Some(Version::V1_0));
        let cr_escape = !matches!(self.version, Some(Version::V1_1));
        let colon = line
            .iter()
            .position(|&b| b == b':')
            .ok_or(DecodeError::MissingColon)?;
        let decode = |raw: &[u8]| {
            if escaped {
                unescape(raw, cr_escape)
            } else {
                String::from_utf8(raw.to_vec()).map_err(|_| DecodeError::InvalidUtf8)
            }
        };
        Ok((decode(&line[..colon])?, decode(&line[colon + 1..])?))
    }

    /// Drops the consumed prefix of the buffer.
    fn consume(&mut self) {
        self.buf.drain(..self.pos);
        self.scan = self.scan.saturating_sub(self.pos);
        self.pos = 0;
    }

    /// The next complete line (without its EOL), or `None` if it has not fully arrived.
    fn line(&mut self) -> Result<Option<Vec<u8>>, DecodeError> {
        let from = self.scan.max(self.pos);
        let Some(i) = self.buf[from..].iter().position(|&b| b == b'\n') else {
            self.scan = self.buf.len();
            if self.buf.len() - self.pos > self.limits.max_header_line {
                return Err(DecodeError::HeaderLineTooLong(self.limits.max_header_line));
            }
            return Ok(None);
        };
        let end = from + i;
        let mut line = &self.buf[self.pos..end];
        if self.cr_allowed()
            && let Some(stripped) = line.strip_suffix(b"\r")
        {
            line = stripped;
        }
        if line.len() > self.limits.max_header_line {
            return Err(DecodeError::HeaderLineTooLong(self.limits.max_header_line));
        }
        let line = line.to_vec();
        self.pos = end + 1;
        self.scan = self.pos;
        Ok(Some(line))
    }
}

/// Undoes STOMP 1.1/1.2 header escaping; `cr` enables 1.2's `\r`.
fn unescape(raw: &[u8], cr: bool) -> Result<String, DecodeError> {
    let mut out = Vec::with_capacity(raw.len());
    let mut bytes = raw.iter();
    while let Some(&b) = bytes.next() {
        if b != b'\\' {
            out.push(b);
            continue;
        }
        match bytes.next() {
            Some(b'n') => out.push(b'\n'),
            Some(b'c') => out.push(b':'),
            Some(b'\\') => out.push(b'\\'),
            Some(b'r') if cr => out.push(b'\r'),
            _ => return Err(DecodeError::InvalidEscape),
        }
    }
    String::from_utf8(out).map_err(|_| DecodeError::InvalidUtf8)
}

/// Writes `text` escaped for `version` (1.1 has no `\r` escape; a CR is written as is).
fn escape(text: &str, version: Version, out: &mut Vec<u8>) {
    for &b in text.as_bytes() {
        match b {
            b'\n' => out.extend_from_slice(b"\\n"),
            b':' => out.extend_from_slice(b"\\c"),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\r' if version == Version::V1_2 => out.extend_from_slice(b"\\r"),
            _ => out.push(b),
        }
    }
}

/// Appends `frame` in `version`'s wire form to `out`. A non-empty body without a
/// `content-length` header gets one, so binary bodies (with NULs) survive.
pub fn encode(frame: &Frame, version: Version, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    let escaped = frame.command.escapes_headers() && version != Version::V1_0;
    let start = out.len();
    out.extend_from_slice(frame.command.as_str().as_bytes());
    out.push(b'\n');
    for (name, value) in &frame.headers {
        if escaped {
            escape(name, version, out);
            out.push(b':');
            escape(value, version, out);
        } else {
            let bad = |s: &str| s.bytes().any(|b| b == b'\n' || b == b'\r');
            if bad(name) || bad(value) || name.contains(':') {
                out.truncate(start);
                return Err(EncodeError::Unencodable);
            }
            out.extend_from_slice(name.as_bytes());
            out.push(b':');
            out.extend_from_slice(value.as_bytes());
        }
        out.push(b'\n');
    }
    if !frame.body.is_empty() && frame.get("content-length").is_none() {
        out.extend_from_slice(format!("content-length:{}\n", frame.body.len()).as_bytes());
    }
    out.push(b'\n');
    out.extend_from_slice(&frame.body);
    out.push(0);
    Ok(())
}

/// A heart-beat: one EOL, sent when no frame went out for the negotiated interval.
pub const HEARTBEAT: &[u8] = b"\n";

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn decode_all(version: Option<Version>, bytes: &[u8]) -> Result<Vec<Frame>, DecodeError> {
        let mut d = Decoder::new(Limits::default());
        if let Some(v) = version {
            d.set_version(v);
        }
        let mut out = Vec::new();
        d.feed(bytes, &mut out).map(|()| out)
    }

    fn one(version: Option<Version>, bytes: &[u8]) -> Frame {
        let frames = decode_all(version, bytes).expect("decodes");
        assert_eq!(frames.len(), 1, "{frames:?}");
        frames.into_iter().next().expect("one frame")
    }

    #[test]
    fn decodes_a_connect_frame() {
        let f = one(None, b"CONNECT\naccept-version:1.2\nhost:neulbi\n\n\0");
        assert_eq!(f.command, Command::Connect);
        assert_eq!(f.get("accept-version"), Some("1.2"));
        assert_eq!(f.get("host"), Some("neulbi"));
        assert!(f.body.is_empty());
    }

    #[test]
    fn connect_headers_are_never_unescaped() {
        let f = one(None, b"CONNECT\npasscode:a\\cb\n\n\0");
        assert_eq!(f.get("passcode"), Some("a\\cb"));
        let mut out = Vec::new();
        encode(
            &Frame::new(Command::Connected).header("server", "a\\b"),
            Version::V1_2,
            &mut out,
        )
        .expect("encodes");
        assert_eq!(out, b"CONNECTED\nserver:a\\b\n\n\0");
    }

    #[test]
    fn unescapes_per_version() {
        let raw = b"SEND\ndestination:a\\cb\\n\\\\c\n\n\0";
        assert_eq!(
            one(Some(Version::V1_2), raw).get("destination"),
            Some("a:b\n\\c")
        );
        assert_eq!(
            one(Some(Version::V1_1), raw).get("destination"),
            Some("a:b\n\\c")
        );
        assert_eq!(
            one(Some(Version::V1_0), raw).get("destination"),
            Some("a\\cb\\n\\\\c")
        );
        let cr = b"SEND\nx:a\\rb\n\n\0";
        assert_eq!(one(Some(Version::V1_2), cr).get("x"), Some("a\rb"));
        assert_eq!(
            decode_all(Some(Version::V1_1), cr),
            Err(DecodeError::InvalidEscape)
        );
        assert_eq!(
            decode_all(Some(Version::V1_2), b"SEND\nx:a\\t\n\n\0"),
            Err(DecodeError::InvalidEscape)
        );
        assert_eq!(
            decode_all(Some(Version::V1_2), b"SEND\nx:a\\\n\n\0"),
            Err(DecodeError::InvalidEscape)
        );
    }

    #[test]
    fn escapes_per_version() {
        let f = Frame::new(Command::Message).header("k:1", "a\nb\r\\");
        let mut out = Vec::new();
        encode(&f, Version::V1_2, &mut out).expect("encodes");
        assert_eq!(out, b"MESSAGE\nk\\c1:a\\nb\\r\\\\\n\n\0");
        out.clear();
        encode(&f, Version::V1_1, &mut out).expect("encodes");
        assert_eq!(out, b"MESSAGE\nk\\c1:a\\nb\r\\\\\n\n\0");
        out.clear();
        assert_eq!(
            encode(&f, Version::V1_0, &mut out),
            Err(EncodeError::Unencodable)
        );
        assert!(out.is_empty());
    }

    #[test]
    fn colon_splits_at_the_first_one_only() {
        let f = one(Some(Version::V1_0), b"SEND\nx:a:b\n\n\0");
        assert_eq!(f.get("x"), Some("a:b"));
    }

    #[test]
    fn content_length_bodies_may_hold_nul() {
        let f = one(
            Some(Version::V1_2),
            b"SEND\ndestination:/q\ncontent-length:3\n\na\0b\0",
        );
        assert_eq!(f.body, b"a\0b");
    }

    #[test]
    fn nul_terminated_bodies() {
        let f = one(Some(Version::V1_2), b"SEND\ndestination:/q\n\nhello\0");
        assert_eq!(f.body, b"hello");
    }

    #[test]
    fn content_length_must_be_followed_by_nul() {
        assert_eq!(
            decode_all(Some(Version::V1_2), b"SEND\ncontent-length:1\n\nab\0"),
            Err(DecodeError::MissingNul)
        );
        assert_eq!(
            decode_all(Some(Version::V1_2), b"SEND\ncontent-length:-1\n\n\0"),
            Err(DecodeError::InvalidContentLength)
        );
    }

    #[test]
    fn heartbeats_between_frames_are_skipped_and_counted() {
        let mut d = Decoder::new(Limits::default());
        d.set_version(Version::V1_2);
        let mut out = Vec::new();
        d.feed(b"\n\r\n\nSEND\n\n\0\n\nSEND\n\n\0\r\n", &mut out)
            .expect("decodes");
        assert_eq!(out.len(), 2);
        assert_eq!(d.take_heartbeats(), 6);
        assert_eq!(d.take_heartbeats(), 0);
        assert_eq!(d.buffered(), 0);
    }

    #[test]
    fn crlf_only_in_1_2() {
        let raw = b"SEND\r\nx:y\r\n\r\n\0";
        let f = one(Some(Version::V1_2), raw);
        assert_eq!(f.get("x"), Some("y"));
        assert_eq!(
            decode_all(Some(Version::V1_1), raw),
            Err(DecodeError::UnknownCommand)
        );
        assert_eq!(
            decode_all(Some(Version::V1_2), b"\rSEND\n\n\0"),
            Err(DecodeError::StrayCarriageReturn)
        );
        assert_eq!(
            decode_all(Some(Version::V1_1), b"\rSEND\n\n\0"),
            Err(DecodeError::UnknownCommand),
            "a CR before a 1.1 frame is part of its command, not a wait for LF"
        );
    }

    #[test]
    fn unknown_command_is_an_error() {
        assert_eq!(
            decode_all(None, b"HELLO\n\n\0"),
            Err(DecodeError::UnknownCommand)
        );
    }

    #[test]
    fn missing_colon_and_bad_utf8_are_errors() {
        assert_eq!(
            decode_all(None, b"SEND\nnocolon\n\n\0"),
            Err(DecodeError::MissingColon)
        );
        assert_eq!(
            decode_all(None, b"SEND\nx:\xff\n\n\0"),
            Err(DecodeError::InvalidUtf8)
        );
    }

    #[test]
    fn body_only_where_allowed() {
        assert_eq!(
            decode_all(None, b"SUBSCRIBE\nid:1\n\nx\0"),
            Err(DecodeError::BodyNotAllowed("SUBSCRIBE"))
        );
    }

    #[test]
    fn limits_are_enforced() {
        let limits = Limits {
            max_frame_bytes: 64,
            max_headers: 2,
            max_header_line: 16,
            max_body: 8,
        };
        let run = |bytes: &[u8]| {
            let mut d = Decoder::new(limits);
            let mut out = Vec::new();
            let r = d.feed(bytes, &mut out);
            assert!(d.buffered() <= limits.max_frame_bytes);
            r
        };
        assert_eq!(
            run(b"SEND\na:1\nb:2\nc:3\n\n\0"),
            Err(DecodeError::TooManyHeaders(2))
        );
        assert_eq!(
            run(b"SEND\nxxxxxxxxxxxxxxxxxxxxx:1\n\n\0"),
            Err(DecodeError::HeaderLineTooLong(16))
        );
        assert_eq!(
            run(b"SEND\nxxxxxxxxxxxxxxxxxxxxxxxxxxxx"),
            Err(DecodeError::HeaderLineTooLong(16))
        );
        assert_eq!(
            run(b"SEND\ncontent-length:9\n\n"),
            Err(DecodeError::BodyTooLarge(8))
        );
        assert_eq!(run(b"SEND\n\n123456789"), Err(DecodeError::BodyTooLarge(8)));
        assert_eq!(
            run(&[b'\n'; 1000]),
            Ok(()),
            "heart-beats never fill the buffer"
        );
        let small = Limits {
            max_frame_bytes: 32,
            ..limits
        };
        let mut d = Decoder::new(small);
        let mut out = Vec::new();
        assert_eq!(
            d.feed(b"SEND\na:1234567890\nb:1234567890\n\n1234", &mut out),
            Err(DecodeError::FrameTooLarge(32))
        );
        let mut d = Decoder::new(small);
        assert_eq!(
            d.feed(b"SEND\na:1234567890\ncontent-length:8\n\n", &mut out),
            Err(DecodeError::FrameTooLarge(32)),
            "a declared length past the frame limit fails before the body arrives"
        );
    }

    #[test]
    fn a_failed_decoder_stays_failed() {
        let mut d = Decoder::new(Limits::default());
        let mut out = Vec::new();
        assert!(d.feed(b"NOPE\n", &mut out).is_err());
        assert_eq!(
            d.feed(b"SEND\n\n\0", &mut out),
            Err(DecodeError::UnknownCommand)
        );
        assert!(out.is_empty());
    }

    #[test]
    fn byte_at_a_time_gives_the_same_frames() {
        let raw =
            b"SEND\r\ndestination:/app/x\r\ncontent-length:2\r\n\r\n\0\0\0\nMESSAGE\nk:v\n\nhi\0";
        let mut d = Decoder::new(Limits::default());
        let mut out = Vec::new();
        for b in raw {
            d.feed(std::slice::from_ref(b), &mut out).expect("decodes");
        }
        assert_eq!(out, decode_all(None, raw).expect("decodes"));
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].body, b"\0\0");
    }

    fn command() -> impl Strategy<Value = Command> {
        prop::sample::select(Command::ALL.to_vec())
    }

    fn version() -> impl Strategy<Value = Version> {
        prop::sample::select(Version::ALL_DESC.to_vec())
    }

    fn frame() -> impl Strategy<Value = Frame> {
        (
            command(),
            prop::collection::vec(("[a-z:\\\\\n\r-]{1,8}", "[ -~\n\r\\\\é]{0,12}"), 0..6),
            prop::collection::vec(any::<u8>(), 0..64),
        )
            .prop_map(|(command, headers, body)| Frame {
                command,
                headers: headers
                    .into_iter()
                    .filter(|(n, _)| n != "content-length")
                    .collect(),
                body: if command.allows_body() {
                    body
                } else {
                    Vec::new()
                },
            })
    }

    /// Splits `bytes` at the given cut points, in order.
    fn chunks(bytes: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
        let mut points: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
        points.sort_unstable();
        let mut out = Vec::new();
        let mut last = 0;
        for p in points.into_iter().chain([bytes.len()]) {
            out.push(bytes[last..p].to_vec());
            last = p;
        }
        out
    }

    proptest! {
        #[test]
        fn any_bytes_in_any_chunking_never_panic_nor_overbuffer(
            bytes in prop::collection::vec(any::<u8>(), 0..2048),
            cuts in prop::collection::vec(any::<usize>(), 0..16),
            v in prop::option::of(version()),
        ) {
            let limits = Limits { max_frame_bytes: 256, max_headers: 4, max_header_line: 64, max_body: 128 };
            let mut d = Decoder::new(limits);
            if let Some(v) = v { d.set_version(v); }
            let mut out = Vec::new();
            for chunk in chunks(&bytes, &cuts) {
                let r = d.feed(&chunk, &mut out);
                prop_assert!(d.buffered() <= limits.max_frame_bytes);
                if r.is_err() { break; }
            }
            for f in &out {
                prop_assert!(f.body.len() <= limits.max_body);
                prop_assert!(f.headers.len() <= limits.max_headers);
            }
        }

        #[test]
        fn stomp_like_bytes_never_panic(
            parts in prop::collection::vec(prop::sample::select(vec![
                &b"SEND"[..], b"CONNECT", b"MESSAGE", b"\n", b"\r\n", b"\r", b"\0", b":", b"\\",
                b"\\c", b"\\n", b"\\r", b"content-length:", b"3", b"99999999999999999999", b"x",
            ]), 0..64),
            cuts in prop::collection::vec(any::<usize>(), 0..8),
        ) {
            let bytes = parts.concat();
            let limits = Limits { max_frame_bytes: 128, max_headers: 4, max_header_line: 32, max_body: 64 };
            let mut d = Decoder::new(limits);
            d.set_version(Version::V1_2);
            let mut out = Vec::new();
            for chunk in chunks(&bytes, &cuts) {
                let r = d.feed(&chunk, &mut out);
                prop_assert!(d.buffered() <= limits.max_frame_bytes);
                if r.is_err() { break; }
            }
        }

        #[test]
        fn encode_then_decode_round_trips(
            frames in prop::collection::vec(frame(), 1..4),
            v in version(),
            cuts in prop::collection::vec(any::<usize>(), 0..8),
            heartbeats in 0usize..3,
        ) {
            let mut bytes = Vec::new();
            let mut expected = Vec::new();
            for f in &frames {
                if encode(f, v, &mut bytes).is_err() {
                    continue;
                }
                bytes.extend(std::iter::repeat_n(b'\n', heartbeats));
                let mut f = f.clone();
                if !f.body.is_empty() {
                    f.headers.push(("content-length".into(), f.body.len().to_string()));
                }
                expected.push(f);
            }
            let mut d = Decoder::new(Limits::default());
            d.set_version(v);
            let mut out = Vec::new();
            for chunk in chunks(&bytes, &cuts) {
                d.feed(&chunk, &mut out).map_err(|e| TestCaseError::fail(e.to_string()))?;
            }
            prop_assert_eq!(out, expected);
            prop_assert_eq!(d.buffered(), 0);
        }
    }
}
