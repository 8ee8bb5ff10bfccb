//! `pdq budget resume`: lift a pause of the shared API budget by hand, and let workers paused
//! on a configuration problem try again.

use std::process::ExitCode;

use pdq::queue::budget;

use super::Database;
use crate::cli::BudgetCommand;
use crate::output;

/// Runs one budget command.
pub async fn run(db: &Database, command: BudgetCommand, json: bool) -> anyhow::Result<ExitCode> {
    let pool = db.pool().await?;
    match command {
        BudgetCommand::Resume { name } => {
            let by = std::env::var("USER")
                .ok()
                .filter(|user| !user.trim().is_empty())
                .map_or_else(
                    || "pdq budget resume".to_owned(),
                    |user| format!("{user} (pdq budget resume)"),
                );
            let cleared = budget::resume(&pool, name.as_deref(), &by).await?;
            if json {
                output::json(&cleared)?;
                return Ok(ExitCode::SUCCESS);
            }
            if cleared.is_empty() {
                match name {
                    Some(name) => println!(
                        "budget {name} is not paused; workers using it that paused on a \
                         configuration problem try again now"
                    ),
                    None => println!(
                        "no budget is paused; workers that paused on a configuration problem \
                         try again now"
                    ),
                }
            }
            let now = chrono::Utc::now();
            for state in &cleared {
                let ahead = chrono::Duration::from_std(budget::MAX_SCHEDULE_AHEAD)?;
                let schedule = match state.next_slot > now + ahead {
                    true => format!(
                        "; its next request slot was {}, repaired to now",
                        state.next_slot.to_rfc3339()
                    ),
                    false => String::new(),
                };
                println!(
                    "resumed budget {}: it was paused until {} ({}){schedule}",
                    state.name,
                    state
                        .paused_until
                        .filter(|at| *at > now)
                        .map_or("-".to_owned(), |at| at.to_rfc3339()),
                    state
                        .pause_reason
                        .as_deref()
                        .unwrap_or("no reason recorded"),
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
