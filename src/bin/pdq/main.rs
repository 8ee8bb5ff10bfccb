//! The `pdq` binary: parse the command line, set up logging, dispatch. No business logic here.

mod cli;
mod commands;
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
        Command::Status => commands::status::run(&db, json).await,
        Command::Dlq(command) => commands::dlq::run(&db, command, json).await,
    }
}
