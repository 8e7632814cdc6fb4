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
    /// Key-encryption keys and access-token signing keys: status and rotation.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Read models: status and rebuild.
    #[command(subcommand)]
    Projections(ProjectionsCommand),
    /// Who did what, when, from which request and trace.
    Audit {
        /// What to audit.
        #[arg(value_enum)]
        kind: AuditKind,
        /// Its id (a UUID); not for `security`.
        id: Option<String>,
        /// `security` only: from when (RFC 3339, or an age such as `24h`, `7d`); default 24h.
        #[arg(long)]
        since: Option<String>,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// The events of the log that carry one trace (W3C trace id, 32 hex digits), in order with
    /// their streams, positions and timings: the durable half of a trace, no tracing backend
    /// needed. Events carry a trace while spans are exported (`OTEL_EXPORTER_OTLP_ENDPOINT`).
    Trace {
        /// The trace id, as a tracing UI shows it.
        trace_id: String,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// An aggregate's state as it was at a point in the log.
    Replay {
        /// The stream, e.g. room-0190c3e4-....
        stream: String,
        /// A log position, or an RFC 3339 time; the current state if omitted.
        #[arg(long)]
        at: Option<String>,
    },
    /// Exit 0 if this node answers `/readyz` (for container health checks; no curl needed).
    Healthcheck,
    /// Development helpers.
    #[command(subcommand)]
    Dev(DevCommand),
}

/// What `neulbi audit` looks at.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum AuditKind {
    /// Everything a user did, and everything done to their account.
    User,
    /// A chat room's history.
    Room,
    /// A call's history.
    Call,
    /// Security events of every account: sign-ins, failed sign-ins, refresh-token reuse,
    /// role grants, deactivations, erasures, sign-outs everywhere.
    Security,
}

/// The start of `neulbi audit security --since`: an RFC 3339 time, or an age (`90m`, `24h`,
/// `7d`) before `now`.
pub fn parse_since(
    text: Option<&str>,
    now: chrono::DateTime<chrono::Utc>,
) -> anyhow::Result<chrono::DateTime<chrono::Utc>> {
    let text = text.unwrap_or("24h").trim();
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(text) {
        return Ok(t.with_timezone(&chrono::Utc));
    }
    let (number, unit) = text.split_at(text.len().saturating_sub(1));
    let n: i64 = number.parse().map_err(|_| {
        anyhow::anyhow!("--since {text:?}: expected an RFC 3339 time or an age such as 24h")
    })?;
    let age = match unit {
        "m" => chrono::Duration::minutes(n),
        "h" => chrono::Duration::hours(n),
        "d" => chrono::Duration::days(n),
        _ => anyhow::bail!("--since {text:?}: the age unit must be m, h or d"),
    };
    Ok(now - age)
}

/// Read-model maintenance.
#[derive(Debug, Subcommand)]
pub enum ProjectionsCommand {
    /// Each projector's position and lag behind the log.
    Status {
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Rebuild a read model from position 0 into shadow tables, then swap them in; a running
    /// server keeps answering from the old tables meanwhile.
    Rebuild {
        /// The projector (see `projections status`).
        name: String,
    },
}

/// Development helpers.
#[derive(Debug, Subcommand)]
pub enum DevCommand {
    /// Generate a realistic synthetic history.
    Seed {
        /// Counselors (each with a published profile).
        #[arg(long, default_value_t = 20)]
        counselors: usize,
        /// Clients.
        #[arg(long, default_value_t = 200)]
        clients: usize,
        /// Chat rooms.
        #[arg(long, default_value_t = 300)]
        rooms: usize,
        /// Messages in all.
        #[arg(long, default_value_t = 10_000)]
        messages: usize,
        /// Calls.
        #[arg(long, default_value_t = 100)]
        calls: usize,
        /// Random seed.
        #[arg(long, default_value_t = 42)]
        seed: u64,
    },
    /// Users, rooms and access tokens for a STOMP load test (benches/stomp_load.rs), written
    /// as JSON. Run `serve` afterwards with the same data dir and listen address.
    BenchFixture {
        /// Two-member conversation rooms.
        #[arg(long, default_value_t = 500)]
        rooms: usize,
        /// Sessions subscribed to the fan-out room.
        #[arg(long, default_value_t = 1000)]
        subscribers: usize,
        /// Lifetime of the minted access tokens, in seconds.
        #[arg(long, default_value_t = 3600)]
        token_ttl_secs: u64,
        /// Where to write the JSON.
        #[arg(long)]
        out: std::path::PathBuf,
    },
}

/// Key management.
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// How the stored keys are wrapped: rows per key-encryption key (KEK), plaintext rows
    /// left by older versions, destroyed data keys.
    Status {
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Rewrap every stored key under the current KEK (`NEULBI_KEK` / `[keys] kek`),
    /// unwrapping with the previous ones (`NEULBI_KEK_PREVIOUS`). Nodes that hold both KEKs
    /// keep serving throughout; afterwards the previous KEK can be dropped.
    RotateKek,
    /// Sign new access tokens with a fresh key. The old key stays in the JWKS and keeps
    /// verifying until the tokens it signed have expired; every node switches within a minute.
    RotateSigning,
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
    /// Make a user a counselor, so clients can open rooms with them and they can publish a
    /// directory profile (an operator's decision; recorded as `RoleGranted`).
    GrantCounselor {
        /// The user's id (a UUID).
        user_id: String,
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
    /// Write the whole log as NDJSON (personal fields stay sealed).
    Export {
        /// Output file; standard output if omitted.
        #[arg(long, short)]
        out: Option<PathBuf>,
    },
    /// Import an NDJSON export; refuses to touch streams that already exist.
    Import {
        /// The file written by `events export`.
        file: PathBuf,
    },
    /// Copy the whole log from one backend to another, empty one (e.g. SQLite to
    /// PostgreSQL or KurrentDB), then verify event counts and a checksum per stream.
    /// Personal fields move sealed; data keys and read models stay in their database.
    Copy {
        /// Source log URL: sqlite://PATH, postgres://..., kurrentdb://... or esdb[+discover]://...
        #[arg(long, value_name = "URL")]
        from: String,
        /// Target log URL, of any of the same kinds; it must hold no event yet.
        #[arg(long, value_name = "URL")]
        to: String,
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
    let (user, users, ctx) = as_operator_on(storage, user_id)?;
    if !yes {
        anyhow::bail!("erasure cannot be undone; pass --yes to erase user {user}");
    }
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

/// What an operator's command on one user needs: the parsed id, a user registry over the
/// store, and an operator's context.
fn as_operator_on(
    storage: &crate::store::Storage,
    user_id: &str,
) -> anyhow::Result<(
    neulbi_domain::UserId,
    crate::actors::Registry<neulbi_domain::user::UserDecider>,
    neulbi_domain::Context,
)> {
    use neulbi_domain::UserId;
    let user: UserId = user_id
        .parse()
        .map_err(|_| anyhow::anyhow!("invalid user id {user_id:?}: expected a UUID"))?;
    let users = crate::actors::Registry::new(
        storage.events.clone(),
        crate::actors::RegistryConfig::default(),
    );
    Ok((user, users, operator_at(chrono::Utc::now())))
}

/// The context of a command an operator gives through the CLI.
fn operator_at(now: chrono::DateTime<chrono::Utc>) -> neulbi_domain::Context {
    neulbi_domain::Context::new(neulbi_domain::Actor::operator(), now)
}

/// `neulbi users grant-counselor ID`: appends `RoleGranted` as an operator.
pub async fn users_grant_counselor(
    storage: &crate::store::Storage,
    user_id: &str,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let (user, users, ctx) = as_operator_on(storage, user_id)?;
    let outcome = users
        .execute(
            user.as_uuid(),
            neulbi_domain::user::UserCommand::GrantCounselorRole,
            ctx,
            crate::store::Metadata::default(),
        )
        .await
        .with_context(|| format!("granting the counselor role to {user}"))?;
    if outcome.events.is_empty() {
        writeln!(out, "user {user} already is a counselor")?;
    } else {
        writeln!(out, "user {user} is now a counselor")?;
    }
    Ok(())
}

/// `neulbi users erase ID --yes` with the node's configuration: like [`users_erase`], and
/// also deletes the person's profile-image blobs (keys read before the erasure shreds them).
/// Without `--yes` or with a bad id it fails exactly as [`users_erase`] does.
pub async fn users_erase_with_images(
    storage: &crate::store::Storage,
    config: &crate::config::Config,
    user_id: &str,
    yes: bool,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let parsed = user_id
        .parse::<neulbi_domain::UserId>()
        .ok()
        .filter(|_| yes);
    let Some(user) = parsed else {
        return users_erase(storage, user_id, yes, out).await;
    };
    let images =
        crate::blob::Images::open(&config.images, &config.data_dir, "", storage.events.clone())
            .await
            .context("opening the image store")?;
    let keys = crate::privacy::erasure::image_keys_before_erasure(&images, user).await;
    users_erase(storage, user_id, yes, out).await?;
    images.delete_keys(&keys).await;
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
    // The last `last` events, walked back from the head (positions may have gaps).
    let limit = usize::try_from(last).unwrap_or(usize::MAX);
    let head = store.head_position().await?;
    let recent = match head {
        Some(head) if limit > 0 => store.read_all_backward(head + 1, limit).await?,
        _ => Vec::new(),
    };
    let from = match (recent.last(), head) {
        (Some(oldest), _) => oldest.position,
        (None, Some(head)) => head + 1,
        (None, None) => 0,
    };
    if follow {
        let mut events = store.subscribe_all(from);
        while let Some(e) = events.next().await {
            writeln!(out, "{}", format_event(&e?, json)?)?;
            out.flush()?;
        }
        return Ok(());
    }
    for e in recent.iter().rev() {
        writeln!(out, "{}", format_event(e, json)?)?;
    }
    Ok(())
}

/// A progress bar on the terminal (hidden when stderr is not one).
pub fn progress_bar(total: u64, what: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(total);
    let style = indicatif::ProgressStyle::with_template(
        "{msg} [{bar:40}] {pos}/{len} ({per_sec}, eta {eta})",
    )
    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
    .progress_chars("=> ");
    bar.set_style(style);
    bar.set_message(what.to_owned());
    bar
}

/// `neulbi keys status`.
pub async fn keys_status(
    storage: &crate::store::Storage,
    json: bool,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let status = crate::privacy::rewrap::status(&storage.database, &storage.kek).await?;
    if json {
        writeln!(out, "{}", serde_json::to_string(&status)?)?;
        return Ok(());
    }
    writeln!(out, "current KEK: {}", status.current_kek)?;
    writeln!(out, "{:<16} {:<40} {:>8}", "TABLE", "WRAPPED BY", "ROWS")?;
    for (table, t) in &status.tables {
        for (kek, n) in &t.wrapped {
            writeln!(out, "{table:<16} {kek:<40} {n:>8}")?;
        }
        if t.plaintext > 0 {
            writeln!(out, "{table:<16} {:<40} {:>8}", "(plaintext)", t.plaintext)?;
        }
        if t.destroyed > 0 {
            writeln!(out, "{table:<16} {:<40} {:>8}", "(destroyed)", t.destroyed)?;
        }
    }
    let others: Vec<String> = status
        .keks_in_use()
        .into_keys()
        .filter(|k| *k != status.current_kek)
        .collect();
    if others.is_empty() {
        writeln!(out, "every stored key is wrapped by the current KEK")?;
    } else {
        writeln!(
            out,
            "still wrapped by {}: run `neulbi keys rotate-kek` before dropping it",
            others.join(", ")
        )?;
    }
    Ok(())
}

/// `neulbi keys rotate-kek`: rewraps every stored key under the current KEK and records the
/// rotation in the security journal.
pub async fn keys_rotate_kek(
    storage: &crate::store::Storage,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let current = storage.kek.current_id().to_owned();
    let before = crate::privacy::rewrap::status(&storage.database, &storage.kek).await?;
    let from: Vec<String> = before
        .keks_in_use()
        .into_keys()
        .filter(|k| *k != current)
        .collect();
    let bar = progress_bar(0, "rewrapping");
    let n = crate::privacy::rewrap::rewrap(&storage.database, &storage.kek, &bar)
        .await
        .context("rewrapping the stored keys")?;
    bar.finish_and_clear();
    let status = crate::privacy::rewrap::status(&storage.database, &storage.kek).await?;
    writeln!(
        out,
        "rewrapped {n} keys under {current}; {} rows remain under other KEKs",
        status
            .keks_in_use()
            .iter()
            .filter(|(k, _)| **k != status.current_kek)
            .map(|(_, n)| n)
            .sum::<u64>()
    )?;
    if n > 0 {
        record_rotation(
            storage,
            neulbi_domain::system::KeyKind::Kek,
            from,
            current,
            n,
        )
        .await?;
    }
    Ok(())
}

/// `neulbi keys rotate-signing`: adds a signing key (the previous ones retire) and records the
/// rotation in the security journal.
pub async fn keys_rotate_signing(
    storage: &crate::store::Storage,
    config: &crate::config::Config,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    if config.auth.signing_key_pem.is_some() {
        anyhow::bail!(
            "signing keys come from NEULBI_AUTH_SIGNING_KEY; rotate them there (put the old \
             key in NEULBI_AUTH_VERIFY_KEYS until its tokens have expired)"
        );
    }
    use crate::auth::keys::KeyRing;
    let grace = crate::auth::keys::grace_secs(config.auth.access_token_ttl_secs);
    let before = KeyRing::current(&storage.database, &storage.kek, grace)
        .await
        .context("reading the signing keys")?
        .map(|r| r.signing_kid().to_owned());
    let ring = KeyRing::rotate(&storage.database, &storage.kek, grace)
        .await
        .context("rotating the signing key")?;
    writeln!(
        out,
        "new tokens are signed with {}; the previous keys verify for {grace} s more",
        ring.signing_kid()
    )?;
    let to = ring.signing_kid().to_owned();
    let from = before.into_iter().collect();
    record_rotation(
        storage,
        neulbi_domain::system::KeyKind::Signing,
        from,
        to,
        1,
    )
    .await
}

/// Appends `KeysRotated` to today's security journal, as an operator.
async fn record_rotation(
    storage: &crate::store::Storage,
    what: neulbi_domain::system::KeyKind,
    from: Vec<String>,
    to: String,
    rows: u64,
) -> anyhow::Result<()> {
    use neulbi_domain::system::{SystemCommand, SystemDecider, journal_for};
    let journal = crate::actors::Registry::<SystemDecider>::new(
        storage.events.clone(),
        crate::actors::RegistryConfig::default(),
    );
    let now = chrono::Utc::now();
    journal
        .execute(
            journal_for(now),
            SystemCommand::RecordKeyRotation {
                what,
                from,
                to,
                rows,
            },
            operator_at(now),
            crate::store::Metadata::default(),
        )
        .await
        .context("the keys were rotated, but recording it in the security journal failed")?;
    Ok(())
}

/// `neulbi projections status`.
pub fn print_status(
    rows: &[crate::projections::runtime::Status],
    json: bool,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(rows)?)?;
        return Ok(());
    }
    writeln!(
        out,
        "{:<8} {:>12} {:>10}  description",
        "name", "position", "lag"
    )?;
    for r in rows {
        writeln!(
            out,
            "{:<8} {:>12} {:>10}  {}",
            r.name, r.position, r.lag, r.description
        )?;
    }
    for r in rows {
        if let Some(s) = &r.stalled {
            let since = chrono::DateTime::from_timestamp_micros(s.since)
                .map_or_else(|| s.since.to_string(), |t| t.to_rfc3339());
            writeln!(
                out,
                "STALLED {} at position {} since {since} ({} failures): {}",
                r.name, s.position, s.failures, s.error
            )?;
        }
    }
    Ok(())
}

/// `neulbi audit ...` output.
pub fn print_audit(
    rows: &[crate::projections::queries::AuditEntry],
    json: bool,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    if json {
        for r in rows {
            writeln!(out, "{}", serde_json::to_string(r)?)?;
        }
        return Ok(());
    }
    writeln!(
        out,
        "{:>8}  {:<24} {:<44} {:<26} {:<36} {:<36} {:<32} detail",
        "position", "time", "stream", "event", "actor", "request", "trace"
    )?;
    for r in rows {
        let trace = r
            .traceparent
            .as_deref()
            .and_then(|t| t.split('-').nth(1))
            .unwrap_or("-");
        writeln!(
            out,
            "{:>8}  {:<24} {:<44} {:<26} {:<36} {:<36} {:<32} {}",
            r.position,
            r.recorded_at.format("%Y-%m-%dT%H:%M:%S%.3fZ"),
            format!("{} v{}", r.stream, r.version),
            r.event_type,
            r.actor_id.as_deref().unwrap_or("system"),
            r.correlation_id.as_deref().unwrap_or("-"),
            trace,
            r.detail.as_deref().unwrap_or("")
        )?;
    }
    Ok(())
}

/// Checks a W3C trace id (32 lowercase hex digits, not all zero) and returns it lowercased.
pub fn parse_trace_id(id: &str) -> anyhow::Result<String> {
    let id = id.trim().to_ascii_lowercase();
    if id.len() != 32 || !id.chars().all(|c| c.is_ascii_hexdigit()) || id.chars().all(|c| c == '0')
    {
        anyhow::bail!("invalid trace id {id:?}: expected 32 hex digits (not all zero)");
    }
    Ok(id)
}

/// `neulbi trace ID`: the trace's events, with the time since the first one.
pub fn print_trace(
    rows: &[crate::projections::queries::AuditEntry],
    json: bool,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    if json {
        return print_audit(rows, true, out);
    }
    let Some(first) = rows.first() else {
        return Ok(());
    };
    writeln!(
        out,
        "{:>8}  {:<24} {:>9}  {:<44} {:<26} {:<36} span",
        "position", "time", "+ms", "stream", "event", "actor"
    )?;
    for r in rows {
        let span = r
            .traceparent
            .as_deref()
            .and_then(|t| t.split('-').nth(2))
            .unwrap_or("-");
        writeln!(
            out,
            "{:>8}  {:<24} {:>9.1}  {:<44} {:<26} {:<36} {}",
            r.position,
            r.recorded_at.format("%Y-%m-%dT%H:%M:%S%.3fZ"),
            (r.recorded_at - first.recorded_at)
                .num_microseconds()
                .unwrap_or(0) as f64
                / 1e3,
            format!("{} v{}", r.stream, r.version),
            r.event_type,
            r.actor_id.as_deref().unwrap_or("system"),
            span
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{parse_since, parse_trace_id};

    #[test]
    fn trace_ids_are_32_hex_digits_and_not_all_zero() {
        assert_eq!(
            parse_trace_id(" 4BF92F3577B34DA6A3CE929D0E0E4736 ").expect("valid"),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        for bad in [
            "",
            "4bf92f3577b34da6a3ce929d0e0e473",
            "4bf92f3577b34da6a3ce929d0e0e4736a",
            "4bf92f3577b34da6a3ce929d0e0e473g",
            "00000000000000000000000000000000",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            let err = parse_trace_id(bad).expect_err(bad).to_string();
            assert!(err.contains("32 hex digits"), "{err}");
        }
    }
    use chrono::{TimeZone, Utc};

    #[test]
    fn since_takes_a_time_or_an_age() {
        let now = Utc
            .with_ymd_and_hms(2026, 11, 29, 12, 0, 0)
            .single()
            .expect("time");
        let at = |s: Option<&str>| parse_since(s, now).expect("parses");
        assert_eq!(at(None), now - chrono::Duration::hours(24));
        assert_eq!(at(Some("90m")), now - chrono::Duration::minutes(90));
        assert_eq!(at(Some("7d")), now - chrono::Duration::days(7));
        assert_eq!(
            at(Some("2026-11-01T00:00:00+09:00")),
            Utc.with_ymd_and_hms(2026, 10, 31, 15, 0, 0)
                .single()
                .expect("time")
        );
        for bad in ["soon", "7w", "", "h", "-"] {
            let err = parse_since(Some(bad), now).expect_err(bad).to_string();
            assert!(err.contains("--since"), "{bad}: {err}");
        }
    }
}
