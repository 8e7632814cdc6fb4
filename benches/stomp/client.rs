//! A minimal STOMP 1.2 client over WebSocket (tokio-tungstenite) for the load generator,
//! framing with the server's own codec. It speaks to any STOMP-over-WebSocket server: the
//! CONNECT headers (bearer token or login/passcode, host) are the caller's.

use anyhow::{Context, bail};
use futures::{SinkExt, StreamExt};
use neulbi::edge::stomp::codec::{Decoder, Limits, encode};
use neulbi::edge::stomp::frame::{Command, Frame, Version};
use std::collections::VecDeque;
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

/// Headers a client adds to CONNECT (credentials, `host`).
pub type Creds = std::sync::Arc<Vec<(String, String)>>;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// How long a handshake step (CONNECT, SUBSCRIBE) may take.
const STEP_TIMEOUT: Duration = Duration::from_secs(30);

/// One STOMP session over one WebSocket.
pub struct Conn {
    ws: Ws,
    decoder: Decoder,
    frames: VecDeque<Frame>,
}

/// What the socket produced.
pub enum Incoming {
    /// A frame.
    Frame(Frame),
    /// Heart-beats only (or a control message).
    Nothing,
    /// The server closed the connection.
    Closed,
}

fn limits() -> Limits {
    Limits {
        max_frame_bytes: 1 << 20,
        max_body: 1 << 20,
        ..Limits::default()
    }
}

impl Conn {
    /// Opens the WebSocket and sends CONNECT with `creds` and `heart_beat` ("cx,cy"); waits
    /// for CONNECTED.
    pub async fn connect(url: &str, creds: &Creds, heart_beat: &str) -> anyhow::Result<Conn> {
        // Nagle off, as browsers do for WebSockets: otherwise a frame written while the
        // previous one is unacknowledged waits for the server's delayed ACK (~40 ms).
        let handshake = tokio_tungstenite::connect_async_with_config(url, None, true);
        let (ws, _) = tokio::time::timeout(STEP_TIMEOUT, handshake)
            .await
            .context("WebSocket handshake timed out")?
            .with_context(|| format!("WebSocket handshake with {url}"))?;
        let mut conn = Conn {
            ws,
            decoder: Decoder::new(limits()),
            frames: VecDeque::new(),
        };
        let mut connect = Frame::new(Command::Connect)
            .header("accept-version", "1.2")
            .header("heart-beat", heart_beat);
        for (k, v) in creds.iter() {
            connect = connect.header(k.clone(), v.clone());
        }
        conn.send(&connect).await?;
        let frame = conn.expect_frame().await?;
        match frame.command {
            Command::Connected => {
                conn.decoder.set_version(Version::V1_2);
                Ok(conn)
            }
            _ => bail!("CONNECT refused: {}", describe(&frame)),
        }
    }

    /// SUBSCRIBE with a receipt and `extra` headers; waits for the RECEIPT (frames before it
    /// are dropped).
    pub async fn subscribe(
        &mut self,
        destination: &str,
        id: &str,
        extra: &[(String, String)],
    ) -> anyhow::Result<()> {
        let mut frame = Frame::new(Command::Subscribe)
            .header("id", id)
            .header("destination", destination)
            .header("ack", "auto")
            .header("receipt", format!("sub-{id}"));
        for (k, v) in extra {
            frame = frame.header(k.clone(), v.clone());
        }
        self.send(&frame).await?;
        loop {
            let frame = self.expect_frame().await?;
            match frame.command {
                Command::Receipt => return Ok(()),
                Command::Error => bail!("SUBSCRIBE {destination} refused: {}", describe(&frame)),
                _ => {}
            }
        }
    }

    async fn expect_frame(&mut self) -> anyhow::Result<Frame> {
        let deadline = tokio::time::Instant::now() + STEP_TIMEOUT;
        loop {
            match tokio::time::timeout_at(deadline, self.next()).await {
                Err(_) => bail!("no answer within {STEP_TIMEOUT:?}"),
                Ok(Incoming::Frame(f)) => return Ok(f),
                Ok(Incoming::Nothing) => {}
                Ok(Incoming::Closed) => bail!("the server closed the connection"),
            }
        }
    }

    /// Sends one frame (flushed).
    pub async fn send(&mut self, frame: &Frame) -> anyhow::Result<()> {
        self.feed(frame).await?;
        self.flush().await
    }

    /// Queues one frame without flushing.
    pub async fn feed(&mut self, frame: &Frame) -> anyhow::Result<()> {
        let mut bytes = Vec::with_capacity(256 + frame.body.len());
        encode(frame, Version::V1_2, &mut bytes).context("encoding a frame")?;
        let text = String::from_utf8(bytes).context("frames are text")?;
        self.ws
            .feed(Message::text(text))
            .await
            .context("WebSocket send")
    }

    /// Flushes queued frames.
    pub async fn flush(&mut self) -> anyhow::Result<()> {
        self.ws.flush().await.context("WebSocket flush")
    }

    /// Sends a heart-beat (one EOL).
    pub async fn heartbeat(&mut self) -> anyhow::Result<()> {
        self.ws
            .send(Message::text("\n"))
            .await
            .context("heart-beat send")
    }

    /// Heart-beats received since the last call.
    pub fn take_heartbeats(&mut self) -> u64 {
        self.decoder.take_heartbeats()
    }

    /// The next frame, or what else the socket produced. Cancel-safe.
    pub async fn next(&mut self) -> Incoming {
        if let Some(f) = self.frames.pop_front() {
            return Incoming::Frame(f);
        }
        let bytes = match self.ws.next().await {
            Some(Ok(Message::Text(t))) => t.as_bytes().to_vec(),
            Some(Ok(Message::Binary(b))) => b.to_vec(),
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return Incoming::Closed,
            Some(Ok(_)) => return Incoming::Nothing,
        };
        let mut out = Vec::new();
        if self.decoder.feed(&bytes, &mut out).is_err() {
            return Incoming::Closed;
        }
        self.frames.extend(out);
        match self.frames.pop_front() {
            Some(f) => Incoming::Frame(f),
            None => Incoming::Nothing,
        }
    }

    /// Sends DISCONNECT and closes the socket (best effort).
    pub async fn close(mut self) {
        let _ = self.send(&Frame::new(Command::Disconnect)).await;
        let _ = tokio::time::timeout(Duration::from_secs(1), self.ws.close(None)).await;
    }
}

/// An ERROR frame's message header and body, for error reports.
pub fn describe(frame: &Frame) -> String {
    format!(
        "{} {} {}",
        frame.command.as_str(),
        frame.get("message").unwrap_or_default(),
        String::from_utf8_lossy(&frame.body)
    )
}
