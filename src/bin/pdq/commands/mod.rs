//! One module per subcommand, each a short `run` over library calls.

pub mod budget;
pub mod console;
pub mod demo;
pub mod dlq;
pub mod doctor;
pub mod emulator;
pub mod enqueue;
pub mod jobs;
pub mod migrate;
pub mod run;
pub mod status;

use anyhow::Context;
use sqlx::postgres::PgConnectOptions;
use sqlx::PgPool;

/// Where the database is, from `--database-url` or `DATABASE_URL`.
pub struct Database {
    url: Option<String>,
}

impl Database {
    /// Wraps the URL the command line gave, if any.
    pub fn new(url: Option<String>) -> Self {
        Database { url }
    }

    /// True when a database URL was given.
    pub fn is_set(&self) -> bool {
        self.url.is_some()
    }

    /// Connect options, or a clear error when no URL was given.
    pub fn options(&self) -> anyhow::Result<PgConnectOptions> {
        let url = self
            .url
            .as_deref()
            .context("no database: set DATABASE_URL or pass --database-url postgres://…")?;
        Ok(pdq::db::connect_options(url)?)
    }

    /// A small pool for operator commands.
    pub async fn pool(&self) -> anyhow::Result<PgPool> {
        Ok(pdq::db::connect(self.options()?, 2).await?)
    }
}
