//! The `neulbi` binary: parses the command line and runs one command.

use clap::Parser;
use neulbi::cli::{self, Cli, Command, EventsCommand, UsersCommand};
use neulbi::config::Config;
use neulbi::startup::Application;
use neulbi::{store, telemetry};
use std::io::Write;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = actix_web::rt::System::new().block_on(run(cli));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
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
    telemetry::init(&config.log, config.log_format);
    match cli.command {
        Command::Serve(args) => {
            if let Some(listen) = args.listen {
                config.listen = listen;
            }
            let app = Application::build(&config).await?;
            tracing::info!(addr = %app.local_addr(), "listening");
            // The one line a person running `serve` needs: where to point the browser.
            println!("Neulbi is ready at {}/", app.public_url());
            let _ = std::io::stdout().flush();
            app.run_until_stopped().await
        }
        Command::Migrate => {
            let url = config.database_url();
            let s = store::open(&url, config.store_limits(), true).await?;
            s.close().await;
            println!("migrations applied to {}", store::redact_url(&url));
            Ok(())
        }
        Command::Events(cmd) => {
            if let EventsCommand::Read { stream, .. } = &cmd {
                // Refuse a malformed name before touching the database.
                stream
                    .parse::<neulbi_domain::StreamName>()
                    .map_err(|e| anyhow::anyhow!("invalid stream name {stream:?}: {e}"))?;
            }
            let s = store::open(&config.database_url(), config.store_limits(), true).await?;
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
            };
            s.close().await;
            result
        }
        Command::Users(UsersCommand::Erase { user_id, yes }) => {
            let storage =
                store::open_storage(&config.database_url(), config.store_limits(), true).await?;
            let mut out = std::io::stdout().lock();
            let result = cli::users_erase(&storage, &user_id, yes, &mut out).await;
            storage.events.close().await;
            result
        }
    }
}
