//! `pdq status`: is it working, and if not, why — on one screen.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use chrono::{DateTime, Utc};
use pdq::queue::{human_duration, QueueStatus};
use sqlx::PgPool;

use super::Database;
use crate::cli::StatusArgs;
use crate::output;

/// Prints the status once, or redraws it every `--interval` seconds with `--watch`.
pub async fn run(db: &Database, args: StatusArgs, json: bool) -> anyhow::Result<ExitCode> {
    let pool = db.pool().await?;
    if !args.watch {
        let status = pdq::queue::status_with(&pool, args.live_behind_secs as f64).await?;
        match json {
            true => output::json(&status)?,
            false => print_status(&status),
        }
        return Ok(ExitCode::SUCCESS);
    }
    let behind = args.live_behind_secs as f64;
    watch(&pool, Duration::from_secs(args.interval), behind, json).await
}

/// Redraws until Ctrl-C; a failed read is shown and retried at the next tick.
async fn watch(
    pool: &PgPool,
    interval: Duration,
    live_behind_secs: f64,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let terminal = std::io::stdout().is_terminal();
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    loop {
        let status = pdq::queue::status_with(pool, live_behind_secs).await;
        match (&status, json) {
            (Ok(status), true) => println!("{}", serde_json::to_string(status)?),
            (Ok(status), false) => {
                if terminal {
                    print!("\x1b[2J\x1b[H");
                }
                print_status(status);
                if !terminal {
                    println!("\n---");
                }
            }
            (Err(error), _) => eprintln!("error: {error} (retrying in {}s)", interval.as_secs()),
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = &mut interrupted => return Ok(ExitCode::SUCCESS),
        }
    }
}

fn print_status(status: &QueueStatus) {
    let now = status.generated_at;
    println!(
        "pdq status at {}\n{}",
        now.format("%Y-%m-%d %H:%M:%S UTC"),
        output::visible(&status.verdict.summary)
    );
    if let Some(behind) = &status.live_behind {
        if status.verdict.state != "behind" {
            println!("live behind: {}", behind.summary());
        }
    }

    println!();
    print_queue(status);
    println!();
    print_throughput(status);
    println!();
    print_budgets(status);
    println!();
    print_workers(status);
    print_blocked(status);
    print_dead_letters(status);
}

/// Jobs by priority and state.
fn print_queue(status: &QueueStatus) {
    let queue: Vec<Vec<String>> = status
        .priorities
        .iter()
        .map(|p| {
            vec![
                p.priority.clone(),
                p.due.to_string(),
                p.scheduled.to_string(),
                p.retrying.to_string(),
                p.running.to_string(),
                p.oldest_due_age_secs.map_or("-".to_owned(), human_duration),
                format!("{:.1}", p.applied_per_minute),
                p.eta_secs.map_or("-".to_owned(), human_duration),
            ]
        })
        .collect();
    output::table(
        &[
            "QUEUE",
            "DUE",
            "SCHEDULED",
            "RETRYING",
            "RUNNING",
            "OLDEST DUE",
            "APPLIED/MIN",
            "ETA",
        ],
        &queue,
    );
}

/// Finished jobs over the last 1, 5 and 15 minutes, the rate and the ETA of the backlog.
fn print_throughput(status: &QueueStatus) {
    let t = &status.throughput;
    let windows = |label: &str, w: &pdq::queue::Windows| {
        vec![
            label.to_owned(),
            w.last_1m.to_string(),
            w.last_5m.to_string(),
            w.last_15m.to_string(),
        ]
    };
    output::table(
        &["FINISHED", "1 MIN", "5 MIN", "15 MIN"],
        &[
            windows("applied", &t.applied),
            windows("dead-lettered", &t.dead_lettered),
        ],
    );
    println!(
        "rate {:.0}/min last minute, {:.1}/min smoothed (15 min, weighted to the latest); \
         backlog {} (due, retrying, running); ETA {} at the smoothed rate",
        t.rate_per_minute,
        t.smoothed_rate_per_minute,
        t.backlog,
        t.eta_secs.map_or("-".to_owned(), human_duration)
    );
}

/// Each request budget: its limit, its use in the last minute and its pause.
fn print_budgets(status: &QueueStatus) {
    let now = status.generated_at;
    if status.budget_use.is_empty() {
        println!("budget: none in use (no shared budget and no live worker)");
    } else {
        let budgets: Vec<Vec<String>> = status
            .budget_use
            .iter()
            .map(|b| {
                vec![
                    b.name.clone(),
                    match b.limit_per_minute {
                        None => "? (no live worker)".to_owned(),
                        Some(0) => "unlimited".to_owned(),
                        Some(n) => format!("{n}/min"),
                    },
                    b.used_last_minute.to_string(),
                    b.paused_until.map_or("-".to_owned(), |at| until(at, now)),
                    match (&b.paused_why, &b.pause_reason) {
                        (Some(why), Some(code)) => format!("{why} [{code}]"),
                        (Some(why), None) => why.clone(),
                        _ => "-".to_owned(),
                    },
                ]
            })
            .collect();
        output::table(
            &["BUDGET", "LIMIT", "USED 1 MIN", "PAUSED UNTIL", "WHY"],
            &budgets,
        );
        let estimated = status
            .budget_use
            .iter()
            .any(|b| b.used_means == pdq::queue::USED_ESTIMATED);
        println!(
            "(used: {})",
            match estimated {
                true => "estimated from the database: PATCHes only, no worker reports its calls",
                false => "API requests in the last minute, as the workers report them",
            }
        );
        if status.budget_use.iter().any(|b| b.paused_until.is_some()) {
            println!("lift a pause with: pdq budget resume [--name NAME]");
        }
    }
}

/// The workers' heartbeats.
fn print_workers(status: &QueueStatus) {
    let now = status.generated_at;
    if status.workers.is_empty() {
        println!("workers: none has sent a heartbeat (is `pdq run` started?)");
    } else {
        let workers: Vec<Vec<String>> = status
            .workers
            .iter()
            .map(|w| {
                vec![
                    w.name.clone(),
                    w.host.clone(),
                    w.pid.to_string(),
                    w.version.clone(),
                    w.state.clone(),
                    format!("{} ago", human_duration(w.last_seen_secs_ago)),
                    human_duration(
                        (w.stopped_at.unwrap_or(now) - w.started_at).num_seconds() as f64
                    ),
                    w.executors.to_string(),
                    w.pause_reason.as_deref().map_or("-".to_owned(), |r| {
                        shorten(r.lines().next().unwrap_or(r), 60)
                    }),
                ]
            })
            .collect();
        output::table(
            &[
                "WORKER",
                "HOST",
                "PID",
                "VERSION",
                "STATE",
                "LAST SEEN",
                "UP",
                "EXECUTORS",
                "REASON",
            ],
            &workers,
        );
    }
    if status.workers.iter().any(|w| w.pause_reason.is_some()) {
        println!("a paused worker tries again at once after: pdq budget resume");
    }
    for worker in status.workers.iter().filter(|w| w.is_alive()) {
        if let Some(notice) = &worker.notice {
            for line in notice.lines() {
                println!("{}: {}", worker.name, output::visible(line));
            }
        }
    }
}

/// Participants whose due jobs wait behind one that cannot run yet.
fn print_blocked(status: &QueueStatus) {
    let now = status.generated_at;
    if status.blocked_total > 0 {
        println!("\nblocked participants: {}", status.blocked_total);
        for b in &status.blocked_participants {
            println!(
                "  {} ({} due, waiting {})\n    {}",
                output::visible(&b.participant_key),
                b.due_behind,
                human_duration(b.waiting_secs),
                output::visible(&b.hint(now))
            );
        }
        let hidden = status.blocked_total - status.blocked_participants.len() as i64;
        if hidden > 0 {
            println!("  … and {hidden} more");
        }
    }
}

/// Dead letters waiting, by reason.
fn print_dead_letters(status: &QueueStatus) {
    if !status.dead_letters.is_empty() {
        let dead: Vec<String> = status
            .dead_letters
            .iter()
            .map(|r| format!("{} {}", output::visible(&r.reason), r.jobs))
            .collect();
        println!(
            "\ndead letters (not requeued): {} — see pdq dlq list",
            dead.join(", ")
        );
    }
}

fn until(at: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let left = (at - now).num_milliseconds().max(0) as f64 / 1000.0;
    format!("{} (in {})", at.format("%H:%M:%S"), human_duration(left))
}

fn shorten(text: &str, max: usize) -> String {
    match text.chars().count() > max {
        true => format!("{}…", text.chars().take(max - 1).collect::<String>()),
        false => text.to_owned(),
    }
}
