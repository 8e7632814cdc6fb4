//! The STOMP frame: a command, ordered headers and a (possibly binary) body. No I/O here; the
//! byte-level rules (escaping, EOLs, bodies, limits) live in [`super::codec`].

use std::fmt;
use std::str::FromStr;

/// A STOMP protocol version, because escaping and EOL rules differ between them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Version {
    /// STOMP 1.0: no header escaping, LF line ends only.
    V1_0,
    /// STOMP 1.1: `\n`, `\c`, `\\` escapes, LF line ends only.
    V1_1,
    /// STOMP 1.2: 1.1 escapes plus `\r`; a CR may precede each LF.
    V1_2,
}

impl Version {
    /// Every version, newest first, so negotiation can pick the highest shared one.
    pub const ALL_DESC: [Version; 3] = [Version::V1_2, Version::V1_1, Version::V1_0];

    /// The value used in `accept-version` and `version` headers.
    pub fn as_str(self) -> &'static str {
        match self {
            Version::V1_0 => "1.0",
            Version::V1_1 => "1.1",
            Version::V1_2 => "1.2",
        }
    }

    /// Parses an `accept-version` entry; unknown versions are `None` (they are ignored).
    pub fn parse(value: &str) -> Option<Version> {
        match value.trim() {
            "1.0" => Some(Version::V1_0),
            "1.1" => Some(Version::V1_1),
            "1.2" => Some(Version::V1_2),
            _ => None,
        }
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Every STOMP 1.2 command, client and server side, so the rest of the code matches on a
/// closed set rather than strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Command {
    /// Client: open a session.
    Connect,
    /// Client: open a session (1.1+ alias of CONNECT that proxies can tell from HTTP).
    Stomp,
    /// Client: post to a destination.
    Send,
    /// Client: subscribe to a destination.
    Subscribe,
    /// Client: cancel a subscription.
    Unsubscribe,
    /// Client: acknowledge a message.
    Ack,
    /// Client: reject a message.
    Nack,
    /// Client: begin a transaction.
    Begin,
    /// Client: commit a transaction.
    Commit,
    /// Client: abort a transaction.
    Abort,
    /// Client: close the session gracefully.
    Disconnect,
    /// Server: the session is open.
    Connected,
    /// Server: a message for a subscription.
    Message,
    /// Server: a requested receipt.
    Receipt,
    /// Server: something went wrong; the connection closes after it.
    Error,
}

impl Command {
    /// Every command, for tests and tools that enumerate the protocol.
    pub const ALL: [Command; 15] = [
        Command::Connect,
        Command::Stomp,
        Command::Send,
        Command::Subscribe,
        Command::Unsubscribe,
        Command::Ack,
        Command::Nack,
        Command::Begin,
        Command::Commit,
        Command::Abort,
        Command::Disconnect,
        Command::Connected,
        Command::Message,
        Command::Receipt,
        Command::Error,
    ];
}

impl Command {
    /// The command as written on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Command::Connect => "CONNECT",
            Command::Stomp => "STOMP",
            Command::Send => "SEND",
            Command::Subscribe => "SUBSCRIBE",
            Command::Unsubscribe => "UNSUBSCRIBE",
            Command::Ack => "ACK",
            Command::Nack => "NACK",
            Command::Begin => "BEGIN",
            Command::Commit => "COMMIT",
            Command::Abort => "ABORT",
            Command::Disconnect => "DISCONNECT",
            Command::Connected => "CONNECTED",
            Command::Message => "MESSAGE",
            Command::Receipt => "RECEIPT",
            Command::Error => "ERROR",
        }
    }

    /// CONNECT, STOMP and CONNECTED headers are never escaped (for 1.0 compatibility).
    pub fn escapes_headers(self) -> bool {
        !matches!(self, Command::Connect | Command::Stomp | Command::Connected)
    }

    /// Only SEND, MESSAGE and ERROR may carry a body.
    pub fn allows_body(self) -> bool {
        matches!(self, Command::Send | Command::Message | Command::Error)
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A command name that is not STOMP; the codec reports it as an error value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown STOMP command")]
pub struct UnknownCommand;

impl FromStr for Command {
    type Err = UnknownCommand;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "CONNECT" => Command::Connect,
            "STOMP" => Command::Stomp,
            "SEND" => Command::Send,
            "SUBSCRIBE" => Command::Subscribe,
            "UNSUBSCRIBE" => Command::Unsubscribe,
            "ACK" => Command::Ack,
            "NACK" => Command::Nack,
            "BEGIN" => Command::Begin,
            "COMMIT" => Command::Commit,
            "ABORT" => Command::Abort,
            "DISCONNECT" => Command::Disconnect,
            "CONNECTED" => Command::Connected,
            "MESSAGE" => Command::Message,
            "RECEIPT" => Command::Receipt,
            "ERROR" => Command::Error,
            _ => return Err(UnknownCommand),
        })
    }
}

/// One STOMP frame. Headers keep their order and repeats, because STOMP says the first
/// occurrence of a repeated header wins and the rest must be kept for proxies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The command.
    pub command: Command,
    /// Headers in wire order, unescaped.
    pub headers: Vec<(String, String)>,
    /// The body: arbitrary bytes (text is UTF-8 by convention, not by rule).
    pub body: Vec<u8>,
}

impl Frame {
    /// A frame without headers or body, to be extended with [`Frame::header`].
    pub fn new(command: Command) -> Self {
        Self {
            command,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// Appends a header (builder style).
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Sets the body (builder style); the encoder adds `content-length` when missing.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    /// The value of the first header named `name`, as STOMP's repeat rule requires.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_round_trip_through_their_names() {
        for c in Command::ALL {
            assert_eq!(c.as_str().parse::<Command>(), Ok(c));
        }
        assert_eq!("send".parse::<Command>(), Err(UnknownCommand));
    }

    #[test]
    fn first_repeated_header_wins() {
        let f = Frame::new(Command::Send)
            .header("foo", "1")
            .header("foo", "2");
        assert_eq!(f.get("foo"), Some("1"));
        assert_eq!(f.get("bar"), None);
    }

    #[test]
    fn versions_parse_and_order() {
        assert_eq!(Version::parse(" 1.1"), Some(Version::V1_1));
        assert_eq!(Version::parse("2.0"), None);
        assert!(Version::V1_2 > Version::V1_0);
    }
}
