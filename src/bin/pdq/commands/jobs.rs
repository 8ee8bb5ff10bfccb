//! `pdq jobs list|show|cancel`: jobs wherever they are, one job's story, cancelling.

mod story;

use std::process::ExitCode;

use anyhow::bail;
use chrono::Utc;
use clap::{Args, Subcommand};
use pdq::queue::jobs::{self, JobFilter, JobRecord, JobState};
use uuid::Uuid;

use super::Database;
use crate::exit::{Exit, Failed};
use crate::output;

/// Job commands.
#[derive(Debug, Subcommand)]
pub enum JobsCommand {
    /// List jobs, newest first: queued, running, applied, dead-lettered and cancelled.
    List {
        /// Which jobs.
        #[command(flatten)]
        select: JobSelectArgs,
        /// Only jobs in this state: pending, running, applied, dead_lettered or cancelled.
        #[arg(long)]
        state: Vec<JobState>,
        /// At most this many rows.
        #[arg(long, default_value_t = 50)]
        limit: i64,
    },
    /// Show one job's whole story: attempts and errors, lease, outcome, the API's answer and
    /// the requeue history.
    Show {
        /// The job id.
        #[arg(required_unless_present = "key", conflicts_with = "key")]
        id: Option<i64>,
        /// The job with this idempotency key.
        #[arg(long)]
        key: Option<String>,
    },
    /// Cancel pending jobs (a running job can only finish or be retried). Each cancellation is
    /// recorded in pdq.cancelled_jobs with who and when.
    Cancel {
        /// Which jobs.
        #[command(flatten)]
        select: JobSelectArgs,
        /// Every pending job (cancel needs ids, a filter or this).
        #[arg(long)]
        all: bool,
        /// Why, kept with the cancellation.
        #[arg(long)]
        note: Option<String>,
        /// At most this many jobs, the newest first (every match when not given).
        #[arg(long, value_parser = clap::value_parser!(i64).range(1..))]
        limit: Option<i64>,
    },
}

/// Which jobs a command means.
#[derive(Debug, Args)]
pub struct JobSelectArgs {
    /// These job ids.
    pub ids: Vec<i64>,
    /// The job with this idempotency key.
    #[arg(long)]
    pub key: Option<String>,
    /// Jobs for this conversation (as inserted or as resolved).
    #[arg(long)]
    pub conversation_id: Option<Uuid>,
    /// Jobs with this external tag.
    #[arg(long)]
    pub external_tag: Option<String>,
    /// Due pending jobs that wait for an older job of their participant (running, or waiting
    /// for a retry).
    #[arg(long)]
    pub blocked: bool,
}

impl JobSelectArgs {
    fn filter(&self) -> JobFilter {
        JobFilter {
            ids: self.ids.clone(),
            idempotency_key: self.key.clone(),
            conversation_id: self.conversation_id,
            external_tag: self.external_tag.clone(),
            blocked: self.blocked,
            ..JobFilter::default()
        }
    }
}

/// Runs one job command.
pub async fn run(db: &Database, command: JobsCommand, json: bool) -> anyhow::Result<ExitCode> {
    let pool = db.pool().await?;
    match command {
        JobsCommand::List {
            select,
            state,
            limit,
        } => {
            let filter = JobFilter {
                states: state,
                limit: Some(limit),
                ..select.filter()
            };
            let records = jobs::list(&pool, &filter).await?;
            if json {
                output::json(&records)?;
            } else {
                print_list(&records);
            }
            Ok(ExitCode::SUCCESS)
        }
        JobsCommand::Show { id, key } => {
            let records = match (id, &key) {
                (Some(id), _) => jobs::records(&pool, id).await?,
                (None, Some(key)) => jobs::records_by_key(&pool, key).await?,
                (None, None) => bail!("name a job id or --key"),
            };
            let Some(newest) = records.first() else {
                let message = match id {
                    Some(id) => format!("no job with id {id} (never queued, or pruned)"),
                    None => {
                        format!("no job with idempotency key {key:?} (never queued, or pruned)")
                    }
                };
                return Err(Failed::error(Exit::NotFound, message));
            };
            let history = jobs::requeue_chain(&pool, newest).await?;
            let others = &records[1..];
            if json {
                output::json(&serde_json::json!({
                    "job": newest, "history": history, "other_records": others,
                }))?;
            } else {
                print!("{}", story::render(newest, &history, others, Utc::now()));
            }
            Ok(ExitCode::SUCCESS)
        }
        JobsCommand::Cancel {
            select,
            all,
            note,
            limit,
        } => {
            if !select_narrowed(&select) && !all {
                return Err(Failed::error(
                    Exit::Usage,
                    "name job ids, a filter (--key, --conversation-id, --external-tag, --blocked) \
                     or --all",
                ));
            }
            let filter = JobFilter {
                limit,
                ..select.filter()
            };
            let matching = jobs::count_cancellable(&pool, &filter).await?;
            match limit {
                Some(limit) if limit < matching => eprintln!(
                    "cancelling {limit} of {matching} matching pending job(s) (--limit {limit}), \
                     the newest first"
                ),
                _ => eprintln!("cancelling {matching} matching pending job(s)"),
            }
            let cancelled = jobs::cancel(&pool, &filter, note.as_deref()).await?;
            let mut refused = Vec::new();
            for &id in &select.ids {
                if !cancelled.iter().any(|c| c.job_id == id) {
                    let state = jobs::records(&pool, id).await?.first().map(|r| r.state);
                    refused.push((id, state));
                }
            }
            story::print_cancelled(&cancelled, &refused, json)?;
            Ok(if refused.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}

fn select_narrowed(select: &JobSelectArgs) -> bool {
    select.filter().is_narrowed()
}

fn print_list(records: &[JobRecord]) {
    let now = Utc::now();
    let rows: Vec<Vec<String>> = records
        .iter()
        .map(|r| {
            vec![
                r.id.to_string(),
                r.state.to_string(),
                r.priority.clone(),
                story::conversation_cell(r),
                r.attempts.to_string(),
                r.created_at.format("%Y-%m-%d %H:%M:%S").to_string(),
                story::situation(r, now),
            ]
        })
        .collect();
    let header = [
        "ID",
        "STATE",
        "PRIORITY",
        "CONVERSATION",
        "ATTEMPTS",
        "CREATED",
        "NOW",
    ];
    output::table(&header, &rows);
}
