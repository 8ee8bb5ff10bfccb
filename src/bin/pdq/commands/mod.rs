//! One module per subcommand, each a short `run` over library calls.

pub mod budget;
pub mod completions;
pub mod console;
pub mod demo;
pub mod dlq;
pub mod doctor;
pub mod emulator;
pub mod enqueue;
pub mod healthcheck;
pub mod jobs;
pub mod man;
pub mod migrate;
pub mod roles;
pub mod run;
pub mod status;

use sqlx::postgres::PgConnectOptions;
use sqlx::PgPool;

/// Where the database is, from `--database-url` or `DATABASE_URL`.
pub struct Database {
    url: Option<String>,
    connections: Option<u32>,
}

impl Database {
    /// Wraps the URL the command line gave, if any.
    pub fn new(url: Option<String>) -> Self {
        Database {
            url,
            connections: None,
        }
    }

    /// The pool size `--db-connections` asked for, if any.
    pub fn with_connections(self, connections: Option<u32>) -> Self {
        Database {
            connections,
            ..self
        }
    }

    /// The pool size to use: `--db-connections`, else `default`.
    pub fn connections(&self, default: u32) -> u32 {
        self.connections.unwrap_or(default)
    }

    /// The URL given, if any.
    pub fn url(&self) -> Option<&str> {
        self.url.as_deref()
    }

    /// True when a database URL was given.
    pub fn is_set(&self) -> bool {
        self.url.is_some()
    }

    /// Connect options, or a clear error when no URL was given.
    pub fn options(&self) -> anyhow::Result<PgConnectOptions> {
        let url = self.url.as_deref().ok_or_else(|| {
            crate::exit::Failed::error(
                crate::exit::Exit::Usage,
                "no database: set DATABASE_URL or pass --database-url postgres://…",
            )
        })?;
        Ok(pdq::db::connect_options(url)?)
    }

    /// A small pool for operator commands.
    pub async fn pool(&self) -> anyhow::Result<PgPool> {
        let size = self.connections(pdq::db::DEFAULT_CLI_CONNECTIONS);
        Ok(pdq::db::connect(self.options()?, size).await?)
    }
}

/// Writes generated text to stdout; a reader that stops early (`| head`) is not an error.
pub fn print_bytes(bytes: &[u8]) -> anyhow::Result<std::process::ExitCode> {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(bytes).and_then(|()| stdout.flush()) {
        Err(error) if error.kind() != std::io::ErrorKind::BrokenPipe => Err(error.into()),
        _ => Ok(std::process::ExitCode::SUCCESS),
    }
}

/// A secret kept in a file (`*_FILE` variables): its text without one trailing newline; a
/// missing or empty file is a usage error that names the file, never its content.
pub fn read_secret_file(path: &std::path::Path, what: &str) -> anyhow::Result<String> {
    use crate::exit::{Exit, Failed};
    let text = std::fs::read_to_string(path).map_err(|error| {
        Failed::error(
            Exit::Usage,
            format!("cannot read the {what} file {}: {error}", path.display()),
        )
    })?;
    let value = text.strip_suffix('\n').unwrap_or(&text);
    let value = value.strip_suffix('\r').unwrap_or(value);
    if value.is_empty() {
        return Err(Failed::error(
            Exit::Usage,
            format!("the {what} file {} is empty", path.display()),
        ));
    }
    Ok(value.to_owned())
}
