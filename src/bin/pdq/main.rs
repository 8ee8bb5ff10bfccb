//! The `pdq` binary: parse the command line, set up logging, dispatch. No business logic here.

mod cli;
mod commands;
#[cfg(test)]
mod config_doc;
#[cfg(test)]
mod deploy_check;
mod exit;
mod exposed;
mod genesys_args;
mod output;
mod telemetry;

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches};

use cli::{Cli, Command};

#[tokio::main]
async fn main() -> ExitCode {
    quiet_on_closed_pipe();
    let command = explain(Cli::command());
    let matches = command.get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(error) => error.exit(),
    };
    // The demo shows progress and its report; its log lines only with -v.
    let quiet = matches!(&cli.command, Command::Demo(args) if !args.verbose);
    telemetry::init(cli.log_format, if quiet { "error" } else { "info" });
    exposed::warn(&matches);
    let json = cli.json;
    match dispatch(cli).await {
        Ok(code) => code,
        Err(error) => {
            let exit = exit::Exit::of(&error);
            let mut message = exit::describe(&error);
            if exit == exit::Exit::Schema && !message.contains("pdq migrate") {
                message.push_str(" (the pdq schema is missing: run `pdq migrate`)");
            }
            eprintln!("error: {message}");
            if json {
                let body = serde_json::json!({ "error": message, "exit_code": exit.code() });
                let _ = output::json(&body);
            }
            exit.status()
        }
    }
}

/// A reader that stops early (`pdq jobs list | head -1`) closes stdout: the print that then
/// fails ends the process quietly with success, as the reader asked, instead of a panic.
fn quiet_on_closed_pipe() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or("");
        if message.starts_with("failed printing to stdout") && message.contains("Broken pipe") {
            std::process::exit(0);
        }
        default(info);
    }));
}

/// Adds the exit-code table to every help page, and shows an environment variable's value
/// only when it is set (an unset one would read `[env: X=]`).
fn explain(command: clap::Command) -> clap::Command {
    command
        .after_help(exit::table())
        .mut_args(|arg| {
            let unset = arg
                .get_env()
                .is_some_and(|name| std::env::var_os(name).is_none());
            match unset {
                true => arg.hide_env_values(true),
                false => arg,
            }
        })
        .mut_subcommands(explain)
}

async fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    let url = match &cli.database_url_file {
        Some(path) => Some(commands::read_secret_file(path, "database URL")?),
        None => cli.database_url,
    };
    let db = commands::Database::new(url).with_connections(cli.db_connections);
    let json = cli.json;
    match cli.command {
        Command::Migrate(args) => commands::migrate::run(&db, args, json).await,
        Command::Enqueue(args) => commands::enqueue::run(&db, args, json).await,
        Command::Status(args) => commands::status::run(&db, args, json).await,
        Command::Dlq(command) => commands::dlq::run(&db, command, json).await,
        Command::Jobs(command) => commands::jobs::run(&db, command, json).await,
        Command::Budget(command) => commands::budget::run(&db, command, json).await,
        Command::Run(args) => commands::run::run(&db, *args, shutdown_signal()).await,
        Command::Emulator(args) => commands::emulator::run(*args, shutdown_signal()).await,
        Command::Demo(args) => commands::demo::run(&db, args, json).await,
        Command::Doctor(args) => commands::doctor::run(&db, *args, json).await,
        Command::Healthcheck(args) => commands::healthcheck::run(args).await,
        Command::Roles(args) => commands::roles::run(&db, args).await,
        Command::Completions(args) => commands::completions::run(args),
        Command::Man(args) => commands::man::run(args),
        Command::Console(args) => commands::console::run(&db, args, shutdown_signal()).await,
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
        tracing::info!("stop requested (SIGINT or SIGTERM): shutting down");
        cancel.cancel();
    });
    token
}
