//! What operators see in `pdq status`: whether pdq is working and, if not, why.
//!
//! Per priority the jobs due now, scheduled later, waiting for a retry and running; throughput
//! over the last 1, 5 and 15 minutes with a rate and an ETA; the shared budgets with their
//! limit, use and pause reason; the workers' heartbeats; participants blocked behind a job that
//! waits for its retry.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;

use super::budget::BudgetState;
use super::workers::{self, WorkerRow};
use super::Error;

/// Jobs by state and priority.
#[derive(Debug, Clone, sqlx::FromRow, Serialize)]
pub struct DepthRow {
    /// `pending`, `scheduled` (pending with a future `run_at`) or `running`.
    pub state: String,
    /// `live` or `backfill`.
    pub priority: String,
    /// How many jobs.
    pub jobs: i64,
}

/// Dead letters (not requeued) by reason.
#[derive(Debug, Clone, sqlx::FromRow, Serialize)]
pub struct DeadReasonCount {
    /// The reason category.
    pub reason: String,
    /// How many dead letters.
    pub jobs: i64,
}

/// The queue of one priority.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow, Serialize)]
pub struct PriorityDepth {
    /// `live` or `backfill`.
    pub priority: String,
    /// Pending jobs whose `run_at` has come.
    pub due: i64,
    /// Pending jobs never attempted whose `run_at` is still ahead (the producer scheduled them).
    pub scheduled: i64,
    /// Pending jobs attempted before whose retry time is still ahead.
    pub retrying: i64,
    /// Jobs in flight.
    pub running: i64,
    /// Seconds since the `run_at` of the oldest due job, if any.
    pub oldest_due_age_secs: Option<f64>,
    /// Jobs applied per minute, exponentially weighted over the last 15 minutes (a minute
    /// ago weighs most; see [`SMOOTHING_MINUTES`]).
    #[sqlx(skip)]
    pub applied_per_minute: f64,
    /// `due + retrying + running` at the smoothed rate of finished jobs (applied or
    /// dead-lettered) of this priority, in seconds (none while none finished lately).
    #[sqlx(skip)]
    pub eta_secs: Option<f64>,
}

/// The time constant of the smoothed rates, in minutes: the count of `k` minutes ago weighs
/// `exp(-k / SMOOTHING_MINUTES)`.
pub const SMOOTHING_MINUTES: f64 = 5.0;

/// A due live job older than this makes live "behind" unless told otherwise, in seconds.
pub const DEFAULT_LIVE_BEHIND_SECS: f64 = 60.0;

/// Live jobs wait longer than the threshold: the oldest due one is older.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LiveBehind {
    /// Seconds the oldest due live job has waited.
    pub oldest_due_age_secs: f64,
    /// The threshold, in seconds.
    pub threshold_secs: f64,
    /// Live jobs due now.
    pub due: i64,
}

impl LiveBehind {
    /// One line: `the oldest due live job has waited 15m02s (threshold 1m00s; 12 live jobs due)`.
    pub fn summary(&self) -> String {
        format!(
            "the oldest due live job has waited {} (threshold {}; {} live jobs due)",
            human_duration(self.oldest_due_age_secs),
            human_duration(self.threshold_secs),
            self.due
        )
    }
}

/// Counts over the last 1, 5 and 15 minutes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Windows {
    /// In the last minute.
    pub last_1m: i64,
    /// In the last 5 minutes.
    pub last_5m: i64,
    /// In the last 15 minutes.
    pub last_15m: i64,
}

/// Recent throughput and how long the backlog will take.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Throughput {
    /// Jobs applied.
    pub applied: Windows,
    /// Jobs dead-lettered.
    pub dead_lettered: Windows,
    /// Jobs finished (applied or dead-lettered) per minute, over the last minute.
    pub rate_per_minute: f64,
    /// Jobs finished per minute, exponentially weighted over the last 15 minutes (see
    /// [`SMOOTHING_MINUTES`]): the ETA's rate, which does not swing with one minute.
    pub smoothed_rate_per_minute: f64,
    /// Jobs left that can run now or soon: due, waiting for a retry and running.
    pub backlog: i64,
    /// `backlog` at `smoothed_rate_per_minute`, in seconds (none while nothing finishes).
    pub eta_secs: Option<f64>,
}

/// A shared API budget: limit, use and pause.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BudgetUse {
    /// The budget's name (one per OAuth client).
    pub name: String,
    /// Requests per minute, as configured on the live workers that use it (none without one;
    /// 0 = unlimited).
    pub limit_per_minute: Option<i64>,
    /// Requests sent in the last minute (see `used_means`).
    pub used_last_minute: i64,
    /// What `used_last_minute` counts.
    pub used_means: &'static str,
    /// The pause in force, if any.
    pub paused_until: Option<DateTime<Utc>>,
    /// Why it is paused, in words (`pause_reason` explained).
    pub paused_why: Option<String>,
    /// The stored reason code (`rate_limited`, `window_spent`, `outage`, `operator`).
    pub pause_reason: Option<String>,
}

/// `used_last_minute` as the live workers of the budget report it in their heartbeats.
pub const USED_BY_WORKERS: &str = "API requests in the last minute, summed over the heartbeats \
                                   of the live workers that use this budget";

/// `used_last_minute` estimated from the database when no live worker reports it.
pub const USED_ESTIMATED: &str = "estimated from the database: PATCH requests in the last minute \
                                  for applied jobs (a coalesced PATCH counts once), dead-lettered \
                                  and retried attempts; conversation lookups are not counted";

/// A participant whose due jobs wait behind an older job of theirs that cannot run yet.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow, Serialize)]
pub struct BlockedParticipant {
    /// The participant (`c:<conversation>/r:customer`, …).
    pub participant_key: String,
    /// The job in front.
    pub job_id: i64,
    /// `retrying` (waits for its retry time) or `running`.
    pub job_state: String,
    /// When the job in front may run again (retrying) or its lease ends (running).
    pub until: Option<DateTime<Utc>>,
    /// Attempts the job in front has made.
    pub attempts: i32,
    /// Its attempt limit.
    pub max_attempts: i32,
    /// The worker holding it (running).
    pub locked_by: Option<String>,
    /// Its last error, as text.
    pub last_error: Option<String>,
    /// Due jobs of this participant waiting behind it.
    pub due_behind: i64,
    /// Seconds the oldest of them has been due.
    pub waiting_secs: f64,
}

impl BlockedParticipant {
    /// One line that says why: `job 17 waits for its retry at 10:42:03 (…; last error: …)`.
    pub fn hint(&self, now: DateTime<Utc>) -> String {
        let at = |t: Option<DateTime<Utc>>| {
            t.map_or("?".to_owned(), |t| {
                let left = (t - now).num_milliseconds().max(0) as f64 / 1000.0;
                format!("{} (in {})", t.format("%H:%M:%S"), human_duration(left))
            })
        };
        let mut hint = match self.job_state.as_str() {
            "running" => format!(
                "job {} is running on {} (lease until {})",
                self.job_id,
                self.locked_by.as_deref().unwrap_or("?"),
                at(self.until)
            ),
            _ => format!(
                "job {} waits for its retry at {}, {} of {} attempts used",
                self.job_id,
                at(self.until),
                self.attempts,
                self.max_attempts
            ),
        };
        if let Some(error) = &self.last_error {
            let mut error: String = error.chars().take(HINT_ERROR_CHARS).collect();
            if error.len() < self.last_error.as_deref().map_or(0, str::len) {
                error.push('…');
            }
            hint.push_str(&format!("; last error: {error}"));
        }
        hint
    }
}

/// How much of the last error a hint quotes.
const HINT_ERROR_CHARS: usize = 100;

/// The one-line answer to "is it working?".
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Verdict {
    /// `working`, `idle`, `paused`, `stalled` or `no_workers`.
    pub state: &'static str,
    /// Why, in words.
    pub summary: String,
}

/// A snapshot of the queue.
#[derive(Debug, Clone, Serialize)]
pub struct QueueStatus {
    /// When the snapshot was taken (database clock).
    pub generated_at: DateTime<Utc>,
    /// Is it working, and if not, why.
    pub verdict: Verdict,
    /// Set while live jobs are behind (the oldest due one waited past the threshold).
    pub live_behind: Option<LiveBehind>,
    /// Per priority: due, scheduled, retrying, running and the oldest due job's age.
    pub priorities: Vec<PriorityDepth>,
    /// Applied and dead-lettered in the last 1/5/15 minutes, rate and ETA.
    pub throughput: Throughput,
    /// The shared budgets: limit, use in the last minute, pause and why.
    pub budget_use: Vec<BudgetUse>,
    /// The workers' heartbeats (stale ones as `gone`).
    pub workers: Vec<WorkerRow>,
    /// Participants blocked behind a job that cannot run yet (at most five).
    pub blocked_participants: Vec<BlockedParticipant>,
    /// How many participants are blocked in all.
    pub blocked_total: i64,
    /// Jobs by state and priority (`pending`, `scheduled`, `running`).
    pub depth: Vec<DepthRow>,
    /// Age in seconds of the oldest job that is due and waiting, if any.
    pub oldest_pending_age_secs: Option<f64>,
    /// Jobs applied in the last minute.
    pub applied_last_minute: i64,
    /// Jobs applied in the last hour.
    pub applied_last_hour: i64,
    /// Dead letters (not requeued) by reason.
    pub dead_letters: Vec<DeadReasonCount>,
    /// The shared API budgets as stored: pause in force and its reason, next slot.
    pub budgets: Vec<BudgetState>,
}

/// At most this many blocked participants are listed.
pub const BLOCKED_SHOWN: i64 = 5;

/// Reads the queue's status, live counting as behind past [`DEFAULT_LIVE_BEHIND_SECS`].
pub async fn status(pool: &PgPool) -> Result<QueueStatus, Error> {
    status_with(pool, DEFAULT_LIVE_BEHIND_SECS).await
}

/// Reads the queue's status; a due live job older than `live_behind_secs` makes live behind.
pub async fn status_with(pool: &PgPool, live_behind_secs: f64) -> Result<QueueStatus, Error> {
    let generated_at: DateTime<Utc> = sqlx::query_scalar("select now()").fetch_one(pool).await?;
    let depth = sqlx::query_as(
        "select case when state = 'pending' and run_at > now() then 'scheduled' else state end
                    as state,
                priority, count(*) as jobs
         from pdq.jobs group by 1, 2 order by 1, 2",
    )
    .fetch_all(pool)
    .await?;
    let mut priorities: Vec<PriorityDepth> = sqlx::query_as(PRIORITIES_SQL).fetch_all(pool).await?;
    let oldest = super::gauges::oldest_due(pool).await?;
    let minutes: Vec<MinuteRow> = sqlx::query_as(MINUTES_SQL).fetch_all(pool).await?;
    for p in &mut priorities {
        p.oldest_due_age_secs = oldest
            .iter()
            .find(|(priority, _)| *priority == p.priority)
            .and_then(|(_, age)| *age);
        let priority = p.priority.clone();
        let mine = minutes.iter().filter(move |m| m.priority == priority);
        p.applied_per_minute = smoothed(mine.clone().map(|m| (m.minutes_ago, m.applied)));
        let finished = smoothed(mine.map(|m| (m.minutes_ago, m.applied + m.dead)));
        let left = p.due + p.retrying + p.running;
        p.eta_secs = (finished > 0.0).then(|| left as f64 / finished * 60.0);
    }
    let live_behind = priorities
        .iter()
        .find(|p| p.priority == "live")
        .and_then(|live| {
            let age = live.oldest_due_age_secs?;
            (live.due > 0 && age > live_behind_secs).then_some(LiveBehind {
                oldest_due_age_secs: age,
                threshold_secs: live_behind_secs,
                due: live.due,
            })
        });
    let oldest_pending_age_secs = priorities
        .iter()
        .filter_map(|p| p.oldest_due_age_secs)
        .reduce(f64::max);
    let recent: RecentRow = sqlx::query_as(RECENT_SQL).fetch_one(pool).await?;
    let dead_letters = sqlx::query_as(
        "select reason, count(*) as jobs from pdq.dead_letters
         where requeued_at is null group by reason order by jobs desc, reason",
    )
    .fetch_all(pool)
    .await?;
    let budgets = super::budget::states(pool).await?;
    let workers = workers::list(pool).await?;
    let blocked_participants = sqlx::query_as(&format!("{BLOCKED_SQL} limit $1"))
        .bind(BLOCKED_SHOWN)
        .fetch_all(pool)
        .await?;
    let blocked_total: i64 = sqlx::query_scalar(&format!("select count(*) from ({BLOCKED_SQL}) b"))
        .fetch_one(pool)
        .await?;

    let finished_last_minute = recent.applied_1m + recent.dead_1m;
    let backlog: i64 = priorities
        .iter()
        .map(|p| p.due + p.retrying + p.running)
        .sum();
    let rate_per_minute = finished_last_minute as f64;
    let smoothed_rate_per_minute =
        smoothed(minutes.iter().map(|m| (m.minutes_ago, m.applied + m.dead)));
    let throughput = Throughput {
        applied: Windows {
            last_1m: recent.applied_1m,
            last_5m: recent.applied_5m,
            last_15m: recent.applied_15m,
        },
        dead_lettered: Windows {
            last_1m: recent.dead_1m,
            last_5m: recent.dead_5m,
            last_15m: recent.dead_15m,
        },
        rate_per_minute,
        smoothed_rate_per_minute,
        backlog,
        eta_secs: (smoothed_rate_per_minute > 0.0)
            .then(|| backlog as f64 / smoothed_rate_per_minute * 60.0),
    };
    let estimated = recent.patches_1m.round() as i64 + recent.dead_1m + recent.retried_1m;
    let budget_use = budget_use(&budgets, &workers, estimated);
    let verdict = verdict(
        generated_at,
        &priorities,
        &throughput,
        &budget_use,
        &workers,
        live_behind.as_ref(),
    );
    Ok(QueueStatus {
        generated_at,
        verdict,
        live_behind,
        priorities,
        throughput,
        budget_use,
        workers,
        blocked_participants,
        blocked_total,
        depth,
        oldest_pending_age_secs,
        applied_last_minute: recent.applied_1m,
        applied_last_hour: recent.applied_60m,
        dead_letters,
        budgets,
    })
}

const PRIORITIES_SQL: &str = "
select p.priority,
       count(j.id) filter (where j.state = 'pending' and j.run_at <= now()) as due,
       count(j.id) filter (where j.state = 'pending' and j.run_at > now()
                                 and j.first_attempt_at is null) as scheduled,
       count(j.id) filter (where j.state = 'pending' and j.run_at > now()
                                 and j.first_attempt_at is not null) as retrying,
       count(j.id) filter (where j.state = 'running') as running,
       null::float8 as oldest_due_age_secs
from (values (0, 'live'), (1, 'backfill')) as p(rank, priority)
left join pdq.jobs j on j.priority = p.priority
group by p.rank, p.priority
order by p.rank";

/// Jobs applied and dead-lettered per priority in each of the last 15 whole minutes before
/// now (0: the last 60 seconds), through the indexes on `finished_at` and `dead_at`.
const MINUTES_SQL: &str = "
select priority, minutes_ago,
       count(*) filter (where applied)::int8 as applied,
       count(*) filter (where not applied)::int8 as dead
from (
    select priority, floor(extract(epoch from now() - finished_at) / 60)::int4 as minutes_ago,
           true as applied
    from pdq.finished_jobs where finished_at > now() - interval '15 minutes'
    union all
    select priority, floor(extract(epoch from now() - dead_at) / 60)::int4, false
    from pdq.dead_letters where dead_at > now() - interval '15 minutes'
) m
group by 1, 2";

#[derive(Debug, Clone, sqlx::FromRow)]
struct MinuteRow {
    priority: String,
    minutes_ago: i32,
    applied: i64,
    dead: i64,
}

/// A per-minute rate, exponentially weighted over the last 15 minutes from counts by minutes
/// ago (missing minutes count 0): the count of `k` minutes ago weighs
/// `exp(-k / SMOOTHING_MINUTES)`.
pub fn smoothed(counts: impl Iterator<Item = (i32, i64)>) -> f64 {
    let weight = |k: i32| (-f64::from(k) / SMOOTHING_MINUTES).exp();
    let total: f64 = (0..15).map(weight).sum();
    let sum: f64 = counts
        .filter(|(k, _)| (0..15).contains(k))
        .map(|(k, n)| weight(k) * n as f64)
        .sum();
    sum / total
}

#[derive(sqlx::FromRow)]
struct RecentRow {
    applied_1m: i64,
    applied_5m: i64,
    applied_15m: i64,
    applied_60m: i64,
    dead_1m: i64,
    dead_5m: i64,
    dead_15m: i64,
    patches_1m: f64,
    retried_1m: i64,
}

const RECENT_SQL: &str = "
with f as (
    select finished_at, coalesced_with from pdq.finished_jobs
    where finished_at > now() - interval '1 hour'
), d as (
    select dead_at from pdq.dead_letters where dead_at > now() - interval '15 minutes'
)
select (select count(*) from f where finished_at > now() - interval '1 minute') as applied_1m,
       (select count(*) from f where finished_at > now() - interval '5 minutes') as applied_5m,
       (select count(*) from f where finished_at > now() - interval '15 minutes') as applied_15m,
       (select count(*) from f) as applied_60m,
       (select count(*) from d where dead_at > now() - interval '1 minute') as dead_1m,
       (select count(*) from d where dead_at > now() - interval '5 minutes') as dead_5m,
       (select count(*) from d) as dead_15m,
       (select coalesce(sum(1.0 / greatest(coalesced_with, 1)), 0)::float8 from f
        where finished_at > now() - interval '1 minute') as patches_1m,
       (select count(*) from pdq.jobs where state = 'pending' and attempts > 0
          and last_attempt_at > now() - interval '1 minute') as retried_1m";

/// Participants whose due jobs wait behind an older job of theirs that is running or waits
/// for its retry (the claim lets only a participant's oldest job start), longest waiting first.
const BLOCKED_SQL: &str = "
select b.participant_key, b.job_id, b.job_state, b.until, b.attempts, b.max_attempts,
       b.locked_by, b.last_error, w.due_behind, w.waiting_secs
from (
    select distinct on (o.participant_key) o.participant_key, o.id as job_id,
           case when o.state = 'running' then 'running' else 'retrying' end as job_state,
           case when o.state = 'running' then o.locked_until else o.run_at end as until,
           o.attempts, o.max_attempts, o.locked_by,
           coalesce(o.last_error ->> 'message', o.last_error ->> 'detail',
                    o.last_error ->> 'failure', o.last_error ->> 'reason',
                    o.last_error::text) as last_error
    from pdq.jobs o
    where (o.state = 'running'
           or (o.state = 'pending' and o.run_at > now() and o.first_attempt_at is not null))
      and exists (select 1 from pdq.jobs j
                  where j.participant_key = o.participant_key and j.id > o.id
                    and j.state = 'pending' and j.run_at <= now())
    order by o.participant_key, o.id
) b
cross join lateral (
    select count(*) as due_behind,
           coalesce(extract(epoch from now() - min(j.run_at)), 0)::float8 as waiting_secs
    from pdq.jobs j
    where j.participant_key = b.participant_key and j.id > b.job_id
      and j.state = 'pending' and j.run_at <= now()
) w
order by (b.job_state = 'running'), w.waiting_secs desc, b.participant_key";

/// Each stored budget and each budget a live worker uses, with its limit and use.
fn budget_use(budgets: &[BudgetState], workers: &[WorkerRow], estimated: i64) -> Vec<BudgetUse> {
    let mut names: Vec<String> = budgets.iter().map(|b| b.name.clone()).collect();
    for worker in workers.iter().filter(|w| w.is_alive()) {
        if let Some(name) = &worker.budget_name {
            if !names.contains(name) {
                names.push(name.clone());
            }
        }
    }
    names.sort();
    names
        .into_iter()
        .map(|name| {
            let stored = budgets.iter().find(|b| b.name == name);
            let users: Vec<&WorkerRow> = workers
                .iter()
                .filter(|w| w.is_alive() && w.budget_name.as_deref() == Some(name.as_str()))
                .collect();
            let limit_per_minute = users
                .iter()
                .filter_map(|w| w.budget_per_minute)
                .max()
                .map(i64::from);
            let reported: Vec<i64> = users
                .iter()
                .filter_map(|w| w.api_requests_last_minute.map(i64::from))
                .collect();
            let (used_last_minute, used_means) = match reported.is_empty() {
                true => (estimated, USED_ESTIMATED),
                false => (reported.iter().sum(), USED_BY_WORKERS),
            };
            let paused_until = stored.and_then(|b| b.paused_until);
            let pause_reason = stored.and_then(|b| paused_until.and(b.pause_reason.clone()));
            BudgetUse {
                limit_per_minute,
                used_last_minute,
                used_means,
                paused_until,
                paused_why: pause_reason
                    .as_deref()
                    .map(explain_pause)
                    .or_else(|| paused_until.map(|_| "paused (no reason recorded)".to_owned())),
                pause_reason,
                name,
            }
        })
        .collect()
}

/// A budget pause reason in words.
pub fn explain_pause(reason: &str) -> String {
    match reason {
        "rate_limited" => "429 Too Many Requests from Genesys Cloud (its Retry-After)".to_owned(),
        "window_spent" => {
            "the API's rate-limit window is used up (inin-ratelimit headers)".to_owned()
        }
        "outage" => "Genesys Cloud or the way to it is down (probing)".to_owned(),
        "operator" => "paused by an operator".to_owned(),
        other => other.to_owned(),
    }
}

fn verdict(
    now: DateTime<Utc>,
    priorities: &[PriorityDepth],
    throughput: &Throughput,
    budgets: &[BudgetUse],
    workers: &[WorkerRow],
    live_behind: Option<&LiveBehind>,
) -> Verdict {
    let due: i64 = priorities.iter().map(|p| p.due).sum();
    let running: i64 = priorities.iter().map(|p| p.running).sum();
    let waiting: i64 = priorities.iter().map(|p| p.scheduled + p.retrying).sum();
    let alive: Vec<&WorkerRow> = workers.iter().filter(|w| w.is_alive()).collect();
    if let Some(paused) = budgets.iter().find(|b| b.paused_until.is_some()) {
        let until = paused.paused_until.unwrap_or(now);
        let left = (until - now).num_milliseconds().max(0) as f64 / 1000.0;
        return Verdict {
            state: "paused",
            summary: format!(
                "budget {} paused until {} (in {}): {}",
                paused.name,
                until.format("%H:%M:%S UTC"),
                human_duration(left),
                paused.paused_why.as_deref().unwrap_or("no reason recorded")
            ),
        };
    }
    if !alive.is_empty() && alive.iter().all(|w| w.state == "paused") {
        let reason = alive
            .iter()
            .find_map(|w| w.pause_reason.clone())
            .unwrap_or_else(|| "no reason given".to_owned());
        return Verdict {
            state: "paused",
            summary: format!("every worker is paused: {}", first_line(&reason)),
        };
    }
    if alive.is_empty() && due + running + waiting > 0 {
        let last = workers
            .iter()
            .map(|w| w.last_seen_secs_ago)
            .reduce(f64::min)
            .map_or("no worker has ever sent a heartbeat".to_owned(), |ago| {
                format!("last heartbeat {} ago", human_duration(ago))
            });
        return Verdict {
            state: "no_workers",
            summary: format!(
                "no live worker ({last}): {} jobs wait; start `pdq run`",
                due + running + waiting
            ),
        };
    }
    if due > 0 && throughput.rate_per_minute == 0.0 {
        return Verdict {
            state: "stalled",
            summary: format!("{due} jobs are due but none finished in the last minute"),
        };
    }
    if let Some(behind) = live_behind {
        return Verdict {
            state: "behind",
            summary: format!(
                "live behind: {}; {:.0} jobs/min",
                behind.summary(),
                throughput.smoothed_rate_per_minute
            ),
        };
    }
    if due + running == 0 {
        return Verdict {
            state: "idle",
            summary: match waiting {
                0 => "idle: nothing to do".to_owned(),
                n => format!(
                    "idle: nothing due now; {n} jobs scheduled later or waiting for a retry"
                ),
            },
        };
    }
    Verdict {
        state: "working",
        summary: format!(
            "working: {:.0} jobs/min; backlog {} drains in about {}",
            throughput.smoothed_rate_per_minute,
            throughput.backlog,
            throughput.eta_secs.map_or("?".to_owned(), human_duration)
        ),
    }
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or(text)
}

/// Seconds as operators read them: `42s`, `3m12s`, `2h05m`, `3d04h`.
pub fn human_duration(secs: f64) -> String {
    let secs = if secs.is_finite() { secs.max(0.0) } else { 0.0 };
    let s = secs.round() as u64;
    match s {
        0..=59 => format!("{s}s"),
        60..=3_599 => format!("{}m{:02}s", s / 60, s % 60),
        3_600..=86_399 => format!("{}h{:02}m", s / 3_600, s % 3_600 / 60),
        _ => format!("{}d{:02}h", s / 86_400, s % 86_400 / 3_600),
    }
}

/// Pending jobs (due or scheduled), for the queue-depth gauge.
pub async fn pending_count(pool: &PgPool) -> Result<u64, Error> {
    let count: i64 = sqlx::query_scalar("select count(*) from pdq.jobs where state = 'pending'")
        .fetch_one(pool)
        .await?;
    Ok(count as u64)
}

#[cfg(test)]
mod tests {
    use super::human_duration;

    #[test]
    fn durations_read_like_a_clock() {
        assert_eq!(human_duration(0.4), "0s");
        assert_eq!(human_duration(42.0), "42s");
        assert_eq!(human_duration(192.0), "3m12s");
        assert_eq!(human_duration(7_500.0), "2h05m");
        assert_eq!(human_duration(273_600.0), "3d04h");
        assert_eq!(human_duration(f64::NAN), "0s");
    }
}
