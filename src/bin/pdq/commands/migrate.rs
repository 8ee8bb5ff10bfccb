//! `pdq migrate`: create or upgrade the `pdq` schema.

use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use pdq::db::MigrateSettings;

use super::Database;
use crate::exit::Exit;

/// How long migrate waits for the locks it needs.
#[derive(Debug, Args)]
pub struct MigrateArgs {
    /// Wait at most this long for a lock per attempt (so a worker statement queues at most
    /// this long behind a migration waiting for, say, a producer's open transaction).
    #[arg(long, env = "PDQ_MIGRATE_LOCK_TIMEOUT_MS", default_value_t = 2_000, value_name = "MS",
          value_parser = clap::value_parser!(u64).range(1..=600_000))]
    pub lock_timeout_ms: u64,
    /// Attempts before giving up (each rolls back and names the session in its way).
    #[arg(long, env = "PDQ_MIGRATE_ATTEMPTS", default_value_t = 10, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub attempts: u32,
}

/// Applies pending migrations, says how many it applied, then says which of pdq's groups, if
/// any, got no grants.
pub async fn run(db: &Database, args: MigrateArgs, json: bool) -> anyhow::Result<ExitCode> {
    let options = db.options()?;
    let settings = MigrateSettings {
        lock_timeout: Duration::from_millis(args.lock_timeout_ms),
        attempts: args.attempts,
        ..MigrateSettings::default()
    };
    let applied = pdq::db::migrate_with(&options, &pdq::db::MIGRATOR.migrations, &settings)
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
    let pool = pdq::db::connect(options, 1).await?;
    let missing = pdq::queue::roles::missing_groups(&pool).await?;
    pool.close().await;
    for group in &missing {
        eprintln!(
            "warning: role {group} does not exist and this login may not create roles, so the \
             migrations granted it nothing: have a role administrator run `CREATE ROLE {group} \
             NOLOGIN`, then grant it its rights (docs/sql-contract.md, Roles) or migrate a fresh database"
        );
    }
    if json {
        crate::output::json(&serde_json::json!({
            "up_to_date": true,
            "applied": applied,
            "schema_version": version,
            "missing_groups": missing,
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
