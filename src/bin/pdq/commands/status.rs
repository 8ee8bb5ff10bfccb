//! `pdq status`: the queue at a glance.

use std::process::ExitCode;

use super::Database;
use crate::output;

/// Prints depth by state and priority, oldest pending age, throughput, dead letters and the
/// shared budgets (a pause in force, its reason, the next request slot).
pub async fn run(db: &Database, json: bool) -> anyhow::Result<ExitCode> {
    let status = pdq::queue::status(&db.pool().await?).await?;
    if json {
        output::json(&status)?;
        return Ok(ExitCode::SUCCESS);
    }
    let depth: Vec<Vec<String>> = status
        .depth
        .iter()
        .map(|r| vec![r.state.clone(), r.priority.clone(), r.jobs.to_string()])
        .collect();
    output::table(&["STATE", "PRIORITY", "JOBS"], &depth);
    let age = status
        .oldest_pending_age_secs
        .map_or("-".to_owned(), |s| format!("{s:.1}s"));
    println!("\noldest pending: {age}");
    println!(
        "applied: {} in the last minute, {} in the last hour",
        status.applied_last_minute, status.applied_last_hour
    );
    let dead: Vec<Vec<String>> = status
        .dead_letters
        .iter()
        .map(|r| vec![r.reason.clone(), r.jobs.to_string()])
        .collect();
    println!();
    output::table(&["DEAD LETTER REASON", "JOBS"], &dead);
    let budgets: Vec<Vec<String>> = status
        .budgets
        .iter()
        .map(|b| {
            vec![
                b.name.clone(),
                b.paused_until.map_or("-".to_owned(), |at| at.to_rfc3339()),
                b.paused_until
                    .and(b.pause_reason.clone())
                    .unwrap_or_else(|| "-".to_owned()),
                b.next_slot.to_rfc3339(),
            ]
        })
        .collect();
    println!();
    output::table(&["BUDGET", "PAUSED UNTIL", "REASON", "NEXT SLOT"], &budgets);
    if status.budgets.iter().any(|b| b.paused_until.is_some()) {
        println!("\nlift a pause with: pdq budget resume [--name NAME]");
    }
    Ok(ExitCode::SUCCESS)
}
