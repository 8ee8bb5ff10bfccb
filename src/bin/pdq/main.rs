//! The `pdq` binary: parse the command line, set up logging, dispatch. No business logic here.

mod cli;
mod commands;
mod genesys_args;
mod output;
mod telemetry;

use std::process::ExitCode;

use clap::Parser;

use cli::{Cli, Command};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init(cli.log_format);
    match dispatch(cli).await {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    let db = commands::Database::new(cli.database_url);
    let json = cli.json;
    match cli.command {
        Command::Migrate => commands::migrate::run(&db).await,
        Command::Enqueue(args) => commands::enqueue::run(&db, args, json).await,
        Command::Status(args) => commands::status::run(&db, args, json).await,
        Command::Dlq(command) => commands::dlq::run(&db, command, json).await,
        Command::Jobs(command) => commands::jobs::run(&db, command, json).await,
        Command::Budget(command) => commands::budget::run(&db, command, json).await,
        Command::Run(args) => commands::run::run(&db, *args, shutdown_signal()).await,
        Command::Emulator(args) => commands::emulator::run(*args, shutdown_signal()).await,
        Command::Demo(args) => commands::demo::run(&db, args, json).await,
        Command::Doctor(args) => commands::doctor::run(*args, json).await,
    }
}

/// A token cancelled on SIGINT or SIGTERM.
fn shutdown_signal() -> tokio_util::sync::CancellationToken {
    let token = tokio_util::sync::CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
        tracing::info!("stop requested");
        cancel.cancel();
    });
    token
}
