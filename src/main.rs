//! The `neulbi` binary: parses the command line and runs one command.

use clap::Parser;
use neulbi::cli::{
    self, AuditKind, Cli, Command, DevCommand, EventsCommand, KeysCommand, ProjectionsCommand,
    UsersCommand,
};
use neulbi::config::Config;
use neulbi::projections::{self, ReadDb};
use neulbi::startup::Application;
use neulbi::{store, telemetry};
use std::io::Write;
use std::process::ExitCode;

/// mimalloc instead of the system allocator: the chat path allocates many small short-lived
/// buffers across threads, where glibc's malloc spent ~12% of the server's CPU (perf, STOMP
/// load bench; docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = actix_web::rt::System::new().block_on(run(cli));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            telemetry::held_stderr::release();
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let mut config = Config::load(cli.config.as_deref())?;
    if let Some(url) = cli.database_url {
        config.database_url = Some(url);
    }
    if matches!(cli.command, Command::Serve(_)) {
        // The URL to open comes first; the start-up log follows it.
        telemetry::held_stderr::hold();
    }
    let _telemetry = telemetry::init(&config.log, config.log_format);
    match cli.command {
        Command::Serve(args) => {
            if let Some(listen) = args.listen {
                config.listen = listen;
            }
            let app = Application::build(&config).await?;
            // The one line a person running `serve` needs: where to point the browser.
            println!("Neulbi is ready at {}/", app.public_url());
            let _ = std::io::stdout().flush();
            telemetry::held_stderr::release();
            tracing::info!(addr = %app.local_addr(), metrics = %app.metrics_addr(), "listening");
            app.run_until_stopped().await
        }
        Command::Migrate => {
            let url = config.database_url();
            let s = config.open_storage(true).await?.events;
            s.close().await;
            println!("migrations applied to {}", store::redact_url(&url));
            Ok(())
        }
        Command::Events(cmd) => {
            // A copy opens its own two logs, not the configured one.
            if let EventsCommand::Copy { from, to } = &cmd {
                return copy(&config, from, to).await;
            }
            if let EventsCommand::Read { stream, .. } = &cmd {
                // Refuse a malformed name before touching the database.
                stream
                    .parse::<neulbi_domain::StreamName>()
                    .map_err(|e| anyhow::anyhow!("invalid stream name {stream:?}: {e}"))?;
            }
            let s = config.open_storage(true).await?.events;
            let mut out = std::io::stdout().lock();
            let result = match cmd {
                EventsCommand::Read {
                    stream,
                    from,
                    limit,
                    backward,
                    json,
                } => cli::events_read(&s, &stream, from, limit, backward, json, &mut out).await,
                EventsCommand::Tail { last, follow, json } => {
                    cli::events_tail(&s, last, follow, json, &mut out).await
                }
                EventsCommand::Export { out: file } => export(&config, file).await,
                EventsCommand::Import { file } => import(&config, &file).await,
                EventsCommand::Copy { .. } => Ok(()),
            };
            s.close().await;
            result
        }
        Command::Projections(cmd) => {
            let s = config.open_storage(true).await?.events;
            let db =
                ReadDb::connect_for_batch(&projections::db::read_model_url(&config.state_url()))
                    .await?;
            let mut out = std::io::stdout().lock();
            let result = match cmd {
                ProjectionsCommand::Status { json } => {
                    let rows = projections::runtime::status(&s, &db).await?;
                    cli::print_status(&rows, json, &mut out)
                }
                ProjectionsCommand::Rebuild { name } => {
                    let def = projections::by_name(&name)?;
                    let bar =
                        cli::progress_bar(s.head_position().await?.map_or(0, |h| h + 1), def.name);
                    let report = projections::rebuild::rebuild(&s, &db, def, |at, head| {
                        bar.set_length(head);
                        bar.set_position(at);
                    })
                    .await?;
                    bar.finish_and_clear();
                    writeln!(
                        out,
                        "rebuilt {}: {} events in {:.1} s ({:.0} events/s)",
                        def.name,
                        report.events,
                        report.secs,
                        report.events as f64 / report.secs.max(1e-9)
                    )
                    .map_err(Into::into)
                }
            };
            s.close().await;
            result
        }
        Command::Audit {
            kind,
            id,
            since,
            json,
        } => {
            let uuid = match (&kind, &id) {
                (AuditKind::Security, Some(_)) => {
                    anyhow::bail!("`audit security` takes no id; use --since")
                }
                (AuditKind::Security, None) => None,
                (_, None) => anyhow::bail!("an id (a UUID) is required"),
                (_, Some(id)) => Some(
                    id.parse::<uuid::Uuid>()
                        .map_err(|_| anyhow::anyhow!("invalid id {id:?}: expected a UUID"))?,
                ),
            };
            let from = match kind {
                AuditKind::Security => {
                    Some(cli::parse_since(since.as_deref(), chrono::Utc::now())?)
                }
                _ => None,
            };
            let s = config.open_storage(true).await?.events;
            let db = ReadDb::connect(&projections::db::read_model_url(&config.state_url())).await?;
            // The audit trail is a read model: bring it up to date first.
            projections::runtime::catch_up(&s, &db).await?;
            let rows = match (kind, uuid, from) {
                (AuditKind::User, Some(uuid), _) => {
                    projections::queries::audit_of_user(&db, &uuid.to_string()).await?
                }
                (AuditKind::Room, Some(uuid), _) => {
                    projections::queries::audit_of_stream(&db, &format!("room-{uuid}")).await?
                }
                (AuditKind::Call, Some(uuid), _) => {
                    projections::queries::audit_of_stream(&db, &format!("call-{uuid}")).await?
                }
                (_, _, from) => {
                    let from = from.unwrap_or_else(chrono::Utc::now);
                    projections::queries::audit_security(&db, from).await?
                }
            };
            s.close().await;
            if rows.is_empty() {
                match id {
                    Some(id) => anyhow::bail!("nothing recorded for {id}"),
                    None => {
                        eprintln!("no security events in that period");
                        return Ok(());
                    }
                }
            }
            cli::print_audit(&rows, json, &mut std::io::stdout().lock())
        }
        Command::Healthcheck => {
            let addr = neulbi::tools::healthcheck::probe_addr(&config)?;
            neulbi::tools::healthcheck::check(addr).await
        }
        Command::Trace { trace_id, json } => {
            let id = cli::parse_trace_id(&trace_id)?;
            let s = config.open_storage(true).await?.events;
            let db = ReadDb::connect(&projections::db::read_model_url(&config.state_url())).await?;
            // The trail is a read model: bring it up to date first.
            projections::runtime::catch_up(&s, &db).await?;
            let rows = projections::queries::audit_of_trace(&db, &id).await?;
            s.close().await;
            if rows.is_empty() {
                anyhow::bail!(
                    "no event carries trace {id} (events carry traces only while spans are \
                     exported: OTEL_EXPORTER_OTLP_ENDPOINT)"
                );
            }
            cli::print_trace(&rows, json, &mut std::io::stdout().lock())
        }
        Command::Replay { stream, at } => {
            let name: neulbi_domain::StreamName = stream
                .parse()
                .map_err(|e| anyhow::anyhow!("invalid stream name {stream:?}: {e}"))?;
            let at: neulbi::tools::replay::At = match at {
                Some(a) => a.parse().map_err(|e: String| anyhow::anyhow!(e))?,
                None => neulbi::tools::replay::At::Now,
            };
            let s = config.open_storage(true).await?.events;
            let r = neulbi::tools::replay::replay(&s, &name, at).await;
            s.close().await;
            let r = r?;
            if r.events == 0 {
                anyhow::bail!("stream {name} has no events at that point");
            }
            let mut out = std::io::stdout().lock();
            writeln!(
                out,
                "{name} after {} events (version {}, position {}):",
                r.events,
                r.version.unwrap_or(0),
                r.position.unwrap_or(0)
            )?;
            writeln!(out, "{}", r.state)?;
            Ok(())
        }
        Command::Dev(DevCommand::Seed {
            counselors,
            clients,
            rooms,
            messages,
            calls,
            seed,
        }) => {
            let s = config.open_storage(true).await?.events;
            let spec = neulbi::tools::seed::SeedSpec {
                counselors,
                clients,
                rooms,
                messages,
                calls,
                seed,
            };
            let bar = cli::progress_bar(0, "seeding");
            let started = std::time::Instant::now();
            let n = neulbi::tools::seed::seed(&s, spec, |done, total| {
                bar.set_length(total);
                bar.set_position(done);
            })
            .await;
            bar.finish_and_clear();
            s.close().await;
            let n = n?;
            println!(
                "seeded {n} events in {:.1} s",
                started.elapsed().as_secs_f64()
            );
            Ok(())
        }
        Command::Dev(DevCommand::BenchFixture {
            rooms,
            subscribers,
            token_ttl_secs,
            out,
        }) => {
            let spec = neulbi::tools::bench_fixture::FixtureSpec {
                rooms,
                subscribers,
                token_ttl_secs,
            };
            let f = neulbi::tools::bench_fixture::write(&config, spec, &out).await?;
            println!("{} rooms written to {}", f.rooms.len(), out.display());
            Ok(())
        }
        Command::Users(UsersCommand::Erase { user_id, yes }) => {
            let storage = config.open_storage(true).await?;
            let mut out = std::io::stdout().lock();
            let result =
                cli::users_erase_with_images(&storage, &config, &user_id, yes, &mut out).await;
            storage.events.close().await;
            result
        }
        Command::Keys(command) => {
            let storage = config.open_storage(true).await?;
            let mut out = std::io::stdout().lock();
            let result = match command {
                KeysCommand::Status { json } => cli::keys_status(&storage, json, &mut out).await,
                KeysCommand::RotateKek => cli::keys_rotate_kek(&storage, &mut out).await,
                KeysCommand::RotateSigning => {
                    cli::keys_rotate_signing(&storage, &config, &mut out).await
                }
            };
            storage.events.close().await;
            result
        }
        Command::Users(UsersCommand::GrantCounselor { user_id }) => {
            let storage = config.open_storage(true).await?;
            let mut out = std::io::stdout().lock();
            let result = cli::users_grant_counselor(&storage, &user_id, &mut out).await;
            storage.events.close().await;
            result
        }
    }
}

async fn export(config: &Config, file: Option<std::path::PathBuf>) -> anyhow::Result<()> {
    let storage = config.open_storage(true).await?;
    let n = match file {
        Some(path) => {
            let f = std::fs::File::create(&path)
                .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", path.display()))?;
            let mut w = std::io::BufWriter::new(f);
            neulbi::tools::transfer::export(&storage.raw, &mut w, |_| {}).await?
        }
        None => {
            let mut w = std::io::BufWriter::new(std::io::stdout().lock());
            neulbi::tools::transfer::export(&storage.raw, &mut w, |_| {}).await?
        }
    };
    storage.events.close().await;
    eprintln!("exported {n} events");
    Ok(())
}

/// `neulbi events copy --from URL --to URL`: a progress bar on a terminal, otherwise a
/// counter line on stderr every 10,000 events, then one summary line on stdout.
async fn copy(config: &Config, from: &str, to: &str) -> anyhow::Result<()> {
    use neulbi::tools::transfer::CopyProgress;
    use std::io::IsTerminal;
    let open = |url: &str, role: &'static str| {
        let url = url.to_owned();
        async move {
            store::open_storage_with(
                &url,
                config.store_limits(),
                true,
                &config.keys,
                &config.data_dir,
            )
            .await
            .map_err(|e| anyhow::anyhow!("{role} {}: {e}", store::redact_url(&url)))
        }
    };
    let source = open(from, "source").await?;
    let target = match open(to, "target").await {
        Ok(t) => t,
        Err(e) => {
            source.raw.close().await;
            return Err(e);
        }
    };
    // With gap-free positions the source's head says how many events there are.
    let total = match source.raw.positions() {
        store::Positions::GapFree => source.raw.head_position().await?.map(|h| h + 1),
        store::Positions::Ordered => None,
    };
    let tty = std::io::stderr().is_terminal();
    let bar = match total {
        Some(total) => cli::progress_bar(total, "copying"),
        None => indicatif::ProgressBar::new_spinner().with_message("copying"),
    };
    if !tty {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let of = total.map(|t| format!("/{t}")).unwrap_or_default();
    // Without a terminal: a line every 10,000 events and one when each phase ends.
    let mut printed = (0u64, "");
    let mut latest = (0u64, "");
    let result = neulbi::tools::transfer::copy(&source.raw, &target.raw, |p| {
        let (what, n) = match p {
            CopyProgress::Copied(n) => ("copied", n),
            CopyProgress::Verified(n) => ("verified", n),
        };
        if tty {
            bar.set_message(what);
            bar.set_position(n);
            return;
        }
        if latest.1 != what && !latest.1.is_empty() && latest != printed {
            eprintln!("events copy: {} {}{of} events", latest.1, latest.0);
            printed = latest;
        }
        latest = (n, what);
        if printed.1 != what || n >= printed.0 + 10_000 {
            eprintln!("events copy: {what} {n}{of} events");
            printed = latest;
        }
    })
    .await;
    if !tty && latest != printed {
        eprintln!("events copy: {} {}{of} events", latest.1, latest.0);
    }
    bar.finish_and_clear();
    source.raw.close().await;
    target.raw.close().await;
    let report = result?;
    println!(
        "copied {} events in {} streams from {} to {}; counts and checksums match",
        report.events,
        report.streams,
        store::redact_url(from),
        store::redact_url(to)
    );
    Ok(())
}

async fn import(config: &Config, path: &std::path::Path) -> anyhow::Result<()> {
    let storage = config.open_storage(true).await?;
    let result = import_into(&storage.raw, path).await;
    storage.raw.close().await;
    result
}

async fn import_into(
    store: &neulbi::store::SharedStore,
    path: &std::path::Path,
) -> anyhow::Result<()> {
    let open = || -> anyhow::Result<std::io::BufReader<std::fs::File>> {
        let f = std::fs::File::open(path)
            .map_err(|e| anyhow::anyhow!("cannot open {}: {e}", path.display()))?;
        Ok(std::io::BufReader::new(f))
    };
    let total = neulbi::tools::transfer::check(store, open()?).await?;
    let bar = cli::progress_bar(total, "importing");
    let n = neulbi::tools::transfer::import(store, open()?, |n| bar.set_position(n)).await?;
    bar.finish_and_clear();
    println!("imported {n} events");
    Ok(())
}
