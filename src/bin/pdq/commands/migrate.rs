//! `pdq migrate`: create or upgrade the `pdq` schema.

use std::process::ExitCode;

use super::Database;
use crate::exit::Exit;

/// Applies pending migrations and says how many it applied.
pub async fn run(db: &Database, json: bool) -> anyhow::Result<ExitCode> {
    let applied = pdq::db::migrate_counting(&db.options()?)
        .await
        .map_err(|error| {
            let error = anyhow::Error::new(error);
            match Exit::of(&error) {
                Exit::Refused => error.context(
                    "pdq migrate needs the owner of the database, or CREATE on it: run it as \
                     that role",
                ),
                _ => error,
            }
        })?;
    let version = pdq::db::MIGRATOR
        .iter()
        .map(|m| m.version)
        .max()
        .unwrap_or(0);
    if json {
        crate::output::json(&serde_json::json!({
            "up_to_date": true,
            "applied": applied,
            "schema_version": version,
        }))?;
    } else if applied.is_empty() {
        println!("pdq schema is up to date (version {version}): nothing to apply");
    } else {
        println!(
            "applied {} migration(s): the pdq schema is now at version {version}",
            applied.len()
        );
    }
    Ok(ExitCode::SUCCESS)
}
