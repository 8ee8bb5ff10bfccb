//! `pdq migrate`: create or upgrade the `pdq` schema.

use std::process::ExitCode;

use super::Database;

/// Applies pending migrations.
pub async fn run(db: &Database) -> anyhow::Result<ExitCode> {
    pdq::db::migrate(&db.options()?).await?;
    println!("pdq schema is up to date");
    Ok(ExitCode::SUCCESS)
}
