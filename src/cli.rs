//! The command line: argument types (clap) and the log tools. Commands write their output to
//! the writer they are given, so they are testable and the library never prints on its own.

use crate::store::{Direction, RecordedEvent, SharedStore};
use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use futures::StreamExt;
use neulbi_domain::StreamName;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;

/// Neulbi: real-time counseling over an event-sourced actor system.
#[derive(Debug, Parser)]
#[command(name = "neulbi", version, about, long_about = None)]
pub struct Cli {
    /// Config file (TOML); defaults to ./neulbi.toml when present.
    #[arg(long, global = true, env = "NEULBI_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Database URL, overriding config and NEULBI_DATABASE_URL.
    #[arg(long, global = true, value_name = "URL")]
    pub database_url: Option<String>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server (HTTP API, web client); stops gracefully on SIGTERM or Ctrl-C.
    Serve(ServeArgs),
    /// Apply pending database migrations and exit.
    Migrate,
    /// Read the event log.
    #[command(subcommand)]
    Events(EventsCommand),
    /// Operator actions on users.
    #[command(subcommand)]
    Users(UsersCommand),
}

/// Operator actions on users.
#[derive(Debug, Subcommand)]
pub enum UsersCommand {
    /// Erase a user (right to be forgotten): their personal data becomes unreadable for good.
    Erase {
        /// The user's id (a UUID).
        user_id: String,
        /// Confirm: erasure cannot be undone.
        #[arg(long)]
        yes: bool,
    },
}

/// Options of `serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on, overriding config and NEULBI_LISTEN.
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
}

/// The log-reading tools.
#[derive(Debug, Subcommand)]
pub enum EventsCommand {
    /// Print the events of one stream (e.g. room-0190c3e4-...).
    Read {
        /// The stream name, KIND-UUID with KIND one of user, room, call.
        stream: String,
        /// First version to print (newest first with --backward).
        #[arg(long)]
        from: Option<u64>,
        /// Most events to print.
        #[arg(long, default_value_t = 1000)]
        limit: usize,
        /// Newest first.
        #[arg(long)]
        backward: bool,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Print the last events of the whole log, optionally following new ones.
    Tail {
        /// How many of the latest events to print first.
        #[arg(long, short = 'n', default_value_t = 20)]
        last: u64,
        /// Keep printing events as they are committed, until interrupted.
        #[arg(long, short = 'f')]
        follow: bool,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// Formats one event as a table row or a JSON line.
pub fn format_event(e: &RecordedEvent, json: bool) -> anyhow::Result<String> {
    if json {
        return Ok(serde_json::to_string(e)?);
    }
    Ok(format!(
        "{:>8}  {}  v{:<4} {:<28} {}  {}",
        e.position,
        e.stream,
        e.version,
        format!("{}@{}", e.event_type, e.schema_version),
        e.recorded_at.format("%Y-%m-%dT%H:%M:%S%.3fZ"),
        e.data
    ))
}

/// `neulbi users erase ID --yes`: runs the erasure as an operator.
pub async fn users_erase(
    storage: &crate::store::Storage,
    user_id: &str,
    yes: bool,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    use neulbi_domain::{Actor, Context, Role, UserId};
    let user: UserId = user_id
        .parse()
        .map_err(|_| anyhow::anyhow!("invalid user id {user_id:?}: expected a UUID"))?;
    if !yes {
        anyhow::bail!("erasure cannot be undone; pass --yes to erase user {user}");
    }
    let users = crate::actors::Registry::new(
        storage.events.clone(),
        crate::actors::RegistryConfig::default(),
    );
    let ctx = Context::new(
        Actor {
            user_id: None,
            role: Role::Operator,
        },
        chrono::Utc::now(),
    );
    let report = crate::privacy::erasure::erase_user(
        &users,
        &storage.keys,
        &storage.database,
        user,
        ctx,
        crate::store::Metadata::default(),
    )
    .await?;
    if report.newly_erased {
        writeln!(out, "user {user} erased")?;
    } else {
        writeln!(out, "user {user} was already erased; its key is destroyed")?;
    }
    Ok(())
}

/// `neulbi events read STREAM`.
pub async fn events_read(
    store: &SharedStore,
    stream: &str,
    from: Option<u64>,
    limit: usize,
    backward: bool,
    json: bool,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let name: StreamName = stream
        .parse()
        .with_context(|| format!("invalid stream name {stream:?}"))?;
    let (direction, from) = if backward {
        (Direction::Backward, from.unwrap_or(u64::MAX))
    } else {
        (Direction::Forward, from.unwrap_or(0))
    };
    let events = store.read_stream(&name, from, direction, limit).await?;
    if events.is_empty() && !json {
        anyhow::bail!("stream {name} has no events in that range");
    }
    for e in &events {
        writeln!(out, "{}", format_event(e, json)?)?;
    }
    Ok(())
}

/// `neulbi events tail [--follow]`.
pub async fn events_tail(
    store: &SharedStore,
    last: u64,
    follow: bool,
    json: bool,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let from = match store.head_position().await? {
        Some(head) => (head + 1).saturating_sub(last),
        None => 0,
    };
    if follow {
        let mut events = store.subscribe_all(from);
        while let Some(e) = events.next().await {
            writeln!(out, "{}", format_event(&e?, json)?)?;
            out.flush()?;
        }
        return Ok(());
    }
    let limit = usize::try_from(last).unwrap_or(usize::MAX);
    for e in store.read_all(from, limit).await? {
        writeln!(out, "{}", format_event(&e, json)?)?;
    }
    Ok(())
}
