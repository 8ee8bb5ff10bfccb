//! `pdq migrate`: create or upgrade the `pdq` schema.

use std::process::ExitCode;

use super::Database;

/// Applies pending migrations.
pub async fn run(db: &Database, json: bool) -> anyhow::Result<ExitCode> {
    pdq::db::migrate(&db.options()?).await?;
    let version = pdq::db::MIGRATOR
        .iter()
        .map(|m| m.version)
        .max()
        .unwrap_or(0);
    if json {
        crate::output::json(&serde_json::json!({ "up_to_date": true, "schema_version": version }))?;
    } else {
        println!("pdq schema is up to date (version {version})");
    }
    Ok(ExitCode::SUCCESS)
}
