//! `pdq status`: the queue at a glance.

use std::process::ExitCode;

use super::Database;
use crate::output;

/// Prints depth by state and priority, oldest pending age, throughput and dead letters.
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
    Ok(ExitCode::SUCCESS)
}
