//! `pdq dlq list|show|requeue|purge`.

use std::process::ExitCode;

use pdq::queue::{dlq, DeadLetter, DeadLetterFilter};
use serde_json::Value;

use super::Database;
use crate::cli::{DlqCommand, DlqFilterArgs};
use crate::exit::{Exit, Failed};
use crate::output::{self, cell};

/// Runs one dead-letter command.
pub async fn run(db: &Database, command: DlqCommand, json: bool) -> anyhow::Result<ExitCode> {
    let pool = db.pool().await?;
    match command {
        DlqCommand::List(args) => {
            let letters = dlq::list(
                &pool,
                &DeadLetterFilter {
                    limit: Some(args.limit.unwrap_or(LIST_LIMIT)),
                    ..filter(&args)
                },
            )
            .await?;
            if json {
                output::json(&letters)?;
            } else {
                let rows: Vec<Vec<String>> = letters
                    .iter()
                    .map(|d| {
                        vec![
                            d.id.to_string(),
                            d.dead_at.format("%Y-%m-%d %H:%M:%S").to_string(),
                            d.reason.to_string(),
                            cell(&d.api.http_status),
                            cell(&d.api.error_code),
                            cell(&d.locators.conversation_id.or(d.resolved_conversation_id)),
                            d.attempts.to_string(),
                        ]
                    })
                    .collect();
                let header = [
                    "ID",
                    "DEAD AT",
                    "REASON",
                    "HTTP",
                    "CODE",
                    "CONVERSATION",
                    "ATTEMPTS",
                ];
                output::table(&header, &rows);
            }
        }
        DlqCommand::Show { id } => match dlq::show(&pool, id).await? {
            Some(letter) => show(&letter, json)?,
            None => {
                return Err(Failed::error(
                    Exit::NotFound,
                    format!("no dead letter with id {id}"),
                ))
            }
        },
        DlqCommand::Requeue { filter, force } => {
            let filter = guarded_filter(&filter)?;
            let matching = dlq::count(
                &pool,
                &DeadLetterFilter {
                    include_requeued: false,
                    ..filter.clone()
                },
            )
            .await?;
            announce("requeueing", matching, filter.limit);
            let count = dlq::requeue(&pool, &filter, force).await?;
            report(json, "requeued", count, matching)?;
        }
        DlqCommand::Purge(args) => {
            let filter = guarded_filter(&args)?;
            let matching = dlq::count(&pool, &filter).await?;
            announce("purging", matching, filter.limit);
            let count = dlq::purge(&pool, &filter).await?;
            report(json, "purged", count, matching)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn filter(args: &DlqFilterArgs) -> DeadLetterFilter {
    DeadLetterFilter {
        ids: args.ids.clone(),
        reason: args.reason,
        since: args.since,
        until: args.until,
        conversation_id: args.conversation_id,
        include_requeued: args.include_requeued,
        limit: args.limit,
    }
}

/// How many rows `pdq dlq list` shows unless `--limit` says otherwise.
const LIST_LIMIT: i64 = 50;

/// Says, before a write, how many dead letters it will touch (on stderr, so `--json` output
/// stays one document).
fn announce(verb: &str, matching: i64, limit: Option<i64>) {
    match limit {
        Some(limit) if limit < matching => eprintln!(
            "{verb} {limit} of {matching} matching dead letter(s) (--limit {limit}), the newest first"
        ),
        _ => eprintln!("{verb} {matching} matching dead letter(s)"),
    }
}

/// Requeue and purge act on many rows: they need ids, a filter, or an explicit --all.
fn guarded_filter(args: &DlqFilterArgs) -> anyhow::Result<DeadLetterFilter> {
    let narrowed = !args.ids.is_empty()
        || args.reason.is_some()
        || args.since.is_some()
        || args.until.is_some()
        || args.conversation_id.is_some();
    if !narrowed && !args.all {
        return Err(Failed::error(
            Exit::Usage,
            "name job ids, a filter (--reason, --since, --until, --conversation-id) or --all",
        ));
    }
    Ok(filter(args))
}

fn report(json: bool, verb: &str, count: u64, matching: i64) -> anyhow::Result<()> {
    if json {
        output::json(&serde_json::json!({ verb: count, "matched": matching }))?;
    } else {
        println!("{verb} {count} dead letter(s)");
    }
    Ok(())
}

/// One dead letter: its fields as `name: value` lines, or one JSON object whose `detail` is the
/// structured error (the worker stores it as JSON text).
fn show(letter: &DeadLetter, json: bool) -> anyhow::Result<()> {
    let mut value = serde_json::to_value(letter)?;
    if let Some(Value::String(detail)) = value.get("detail") {
        if let Ok(parsed @ Value::Object(_)) = serde_json::from_str::<Value>(detail) {
            value["detail"] = parsed;
        }
    }
    if json {
        return output::json(&value);
    }
    let Value::Object(fields) = value else {
        return output::json(&value);
    };
    for (name, field) in fields {
        match field {
            Value::Null => {}
            Value::String(text) => println!("{name}: {}", crate::output::visible(&text)),
            other => println!("{name}: {other}"),
        }
    }
    Ok(())
}
