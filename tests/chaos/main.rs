//! Chaos: the real `pdq run` binary as separate processes, killed, stopped and starved while
//! updates keep arriving; then the ledger (from the emulator's PATCH history and
//! `pdq.dead_letters`, see [`ledger`]) must balance. Short by default (CI); `PDQ_CHAOS=long`
//! for release checks.

mod bad_input;
mod cluster;
#[path = "../it/clusters.rs"]
mod clusters;
mod failover;
#[path = "../it/helpers.rs"]
mod helpers;
mod ledger;
mod proxy;
mod reliability;
mod scenarios;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pdq::emulator::{ConversationSpec, Emulator, EmulatorConfig, EmulatorHandle, Faults};
use uuid::Uuid;

use helpers::{wait_until, TestDb};
use ledger::{Job, Ledger, VALUE_KEY};
use reliability::{Row, Scenario, Stats};

/// Scenario names, as the reliability table (docs/reliability.md) shows them.
const KILL_9: &str = "kill -9 ×3 of a worker holding units, restarted";
const KILL_AND_TERM: &str = "3 workers: one kill -9 while holding units, one SIGTERM";
const LOST_LEASE: &str = "worker stopped past its lease (SIGSTOP), then resumed";
const POSTGRES_CRASH: &str = "Postgres crash (stop -m immediate) mid-drain";
const API_FAULTS: &str = "API faults: 10% 5xx, 5% resets, 2% hangs, 3% applied-then-dropped, 3% applied-then-5xx, 429 storm, token revocation";
const API_OUTAGE: &str = "API down (connections refused), max_attempts 3";
const LOGIN_OUTAGE: &str = "login endpoint 503 with tokens revoked, max_attempts 3";
const CONVERSATIONS_ENDING: &str = "conversations ending mid-run";
const HOSTILE_PRODUCER: &str = "hostile rows from a pdq_producer login, live traffic around them";
const BACKFILL: &str = "big backfill in one INSERT while live updates arrive";

fn long_mode() -> bool {
    std::env::var("PDQ_CHAOS").is_ok_and(|v| v == "long")
}

/// How a `pdq run` child is started.
#[derive(Debug, Clone)]
struct WorkerOptions {
    executors: u32,
    lease_secs: u64,
    request_timeout_ms: u64,
    /// Requests per minute (0 = unlimited).
    rate_limit: u32,
    local_budget: bool,
}

impl Default for WorkerOptions {
    fn default() -> Self {
        WorkerOptions {
            executors: 8,
            lease_secs: 5,
            request_timeout_ms: 500,
            rate_limit: 0,
            local_budget: false,
        }
    }
}

/// A `pdq run` child process whose log goes to a file.
struct WorkerProcess {
    child: Child,
    log: PathBuf,
}

/// The log lines a scenario relies on: start-up, lease recovery and lease loss.
const WORKER_LOG_FILTER: &str = "warn,pdq::commands::run=info,pdq::worker::maintenance=info";

fn spawn_worker(db: &TestDb, emulator: &EmulatorHandle) -> WorkerProcess {
    spawn_worker_with(db, emulator, &WorkerOptions::default())
}

fn spawn_worker_with(
    db: &TestDb,
    emulator: &EmulatorHandle,
    options: &WorkerOptions,
) -> WorkerProcess {
    let dir = std::env::temp_dir().join("pdq-chaos-logs");
    std::fs::create_dir_all(&dir).expect("log directory");
    let log = dir.join(format!("{}-{}.log", db.name, Uuid::new_v4().simple()));
    let file = std::fs::File::create(&log).expect("log file");
    let mut command = Command::new(env!("CARGO_BIN_EXE_pdq"));
    command
        .args(["run", "--executors", &options.executors.to_string()])
        .args(["--rate-limit", &options.rate_limit.to_string()])
        .args(["--lease-secs", &options.lease_secs.to_string()])
        .args([
            "--shutdown-grace-secs",
            &options
                .request_timeout_ms
                .div_ceil(1_000)
                .max(2)
                .to_string(),
        ])
        .args(["--metrics-addr", "127.0.0.1:0"])
        .env("DATABASE_URL", db.url())
        .envs(emulator.client_env())
        .env(
            "GENESYS_REQUEST_TIMEOUT_MS",
            options.request_timeout_ms.to_string(),
        )
        .env("RUST_LOG", WORKER_LOG_FILTER)
        .stdout(Stdio::null())
        .stderr(Stdio::from(file));
    if options.local_budget {
        command.arg("--local-budget");
    }
    WorkerProcess {
        child: command.spawn().expect("pdq binary"),
        log,
    }
}

impl WorkerProcess {
    /// The id it records in `locked_by`.
    fn worker_id(&self) -> String {
        format!("pdq-{}", self.child.id())
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until it logs that it runs (so no scenario clock counts process start).
    async fn ready(&self) {
        let started = wait_until(Duration::from_secs(30), || async {
            self.log_text().contains("pdq worker running")
        })
        .await;
        assert!(started, "the worker started: {}", self.log_text());
    }

    fn signal(&self, signal: &str) {
        let _ = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status();
    }

    /// SIGKILL and reap.
    fn kill(&mut self) {
        self.signal("-KILL");
        let _ = self.child.wait();
    }

    /// SIGTERM and reap.
    fn stop(&mut self) {
        self.signal("-TERM");
        let _ = self.child.wait();
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.signal("-CONT");
            self.kill();
        }
        if !std::thread::panicking() {
            let _ = std::fs::remove_file(&self.log);
        }
    }
}

/// Inserts one job per participant for each of `rounds`, `gap` apart. Job N of a participant
/// writes `seq` = N (zero-padded) and its marker `roundN` = `x`. Returns the jobs and when the
/// first insert started.
async fn produce(
    db: &TestDb,
    participants: &[(Uuid, Uuid)],
    rounds: std::ops::RangeInclusive<usize>,
    gap: Duration,
    max_attempts: Option<i32>,
) -> (Vec<Job>, Instant) {
    let first = Instant::now();
    let mut jobs = Vec::new();
    for round in rounds {
        jobs.extend(insert_round(&db.pool, participants, round, max_attempts).await);
        tokio::time::sleep(gap).await;
    }
    (jobs, first)
}

/// One job per participant for `round`; returns them with their ids.
async fn insert_round(
    pool: &sqlx::PgPool,
    participants: &[(Uuid, Uuid)],
    round: usize,
    max_attempts: Option<i32>,
) -> Vec<Job> {
    try_insert_round(pool, participants, round, max_attempts)
        .await
        .unwrap()
}

/// [`insert_round`], giving the error back (a producer riding out a failover).
async fn try_insert_round(
    pool: &sqlx::PgPool,
    participants: &[(Uuid, Uuid)],
    round: usize,
    max_attempts: Option<i32>,
) -> Result<Vec<Job>, sqlx::Error> {
    let (cids, pids): (Vec<Uuid>, Vec<Uuid>) = participants.iter().copied().unzip();
    // Only `id` comes back: a producer may read no other column. Rows are inserted, and get
    // their ids, in the order of the participants.
    let mut ids: Vec<i64> = sqlx::query_scalar(
        "insert into pdq.jobs (conversation_id, participant_id, attributes, max_attempts)
         select c, p, jsonb_build_object('seq', lpad($3::text, 4, '0'), 'round' || $3::text, 'x'),
                coalesce($4, 20)
         from unnest($1::uuid[], $2::uuid[]) with ordinality as t(c, p, n)
         order by n
         returning id",
    )
    .bind(cids)
    .bind(pids)
    .bind(round as i32)
    .bind(max_attempts)
    .fetch_all(pool)
    .await?;
    ids.sort_unstable();
    assert_eq!(ids.len(), participants.len());
    Ok(ids
        .into_iter()
        .zip(participants)
        .map(|(id, (cid, pid))| round_job(id, *cid, *pid, round))
        .collect())
}

/// The ledger's view of the job `insert_round` writes for `round`.
fn round_job(id: i64, conversation_id: Uuid, participant_id: Uuid, round: usize) -> Job {
    let marker = (format!("round{round}"), "x".to_owned());
    Job {
        id,
        conversation_id,
        participant_id,
        attributes: BTreeMap::from([
            (VALUE_KEY.to_owned(), format!("{round:04}")),
            marker.clone(),
        ]),
        marker,
        dead: false,
        reason: None,
        may_die: &[],
    }
}

/// `count(*)` of the queue, `None` while the database cannot answer (e.g. during a crash).
async fn queue_len(db: &TestDb) -> Option<i64> {
    sqlx::query_scalar("select count(*) from pdq.jobs")
        .fetch_one(&db.pool)
        .await
        .ok()
}

/// How long from `since` (the first insert) until the queue was empty and stayed empty for a
/// second; `None` if that did not happen within `timeout`.
async fn drain(db: &TestDb, since: Instant, timeout: Duration) -> Option<Duration> {
    let deadline = Instant::now() + timeout;
    let mut empty_since: Option<Instant> = None;
    loop {
        let now = Instant::now();
        match queue_len(db).await {
            Some(0) => {
                let at = *empty_since.get_or_insert(now);
                if now - at >= Duration::from_secs(1) {
                    return Some(at - since);
                }
            }
            _ => empty_since = None,
        }
        if now >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn drain_timeout() -> Duration {
    Duration::from_secs(if long_mode() { 180 } else { 60 })
}

/// Jobs claimed more than once (recovered after a crash or a lost lease), applied or dead.
async fn jobs_attempted_twice(db: &TestDb) -> i64 {
    sqlx::query_scalar(
        "select (select count(*) from pdq.finished_jobs where attempts > 1)
              + (select count(*) from pdq.dead_letters where attempts > 1)",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap()
}

/// What a worker logs (at info, `pdq::worker::maintenance`) when it puts the jobs of an
/// expired lease back in the queue.
const RESCUE_LOG: &str = "whose worker lost its lease";

/// How many times these workers logged that they recovered the jobs of an expired lease.
fn rescues_logged(workers: &[WorkerProcess]) -> usize {
    workers
        .iter()
        .map(|w| w.log_text().matches(RESCUE_LOG).count())
        .sum()
}

/// What a killed worker held when it was killed.
#[derive(Debug, Clone, Copy, Default)]
struct Held {
    /// Units (`pdq.inflight` rows in its name).
    units: i64,
    /// Jobs (`pdq.jobs` rows locked in its name): only these can have been applied without
    /// being recorded, so they bound the duplicates the kill allows.
    jobs: i64,
}

/// How many jobs `pdq.jobs` shows locked by `worker_id`.
async fn jobs_locked_by(db: &TestDb, worker_id: &str) -> i64 {
    sqlx::query_scalar("select count(*) from pdq.jobs where locked_by = $1")
        .bind(worker_id)
        .fetch_one(&db.pool)
        .await
        .unwrap_or(0)
}

/// Kills `worker` (SIGKILL) at a moment it holds units: it is stopped (SIGSTOP) first, and
/// killed once `pdq.inflight` shows units in its name while it cannot finish them; otherwise it
/// is resumed and tried again. Returns what it held when killed (0 units: never, killed at the
/// timeout).
async fn kill_while_holding_units(
    db: &TestDb,
    worker: &mut WorkerProcess,
    timeout: Duration,
) -> Held {
    let id = worker.worker_id();
    let deadline = Instant::now() + timeout;
    loop {
        worker.signal("-STOP");
        // A commit already on its way lands before we look.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let held: i64 =
            sqlx::query_scalar("select count(*) from pdq.inflight where locked_by = $1")
                .bind(&id)
                .fetch_one(&db.pool)
                .await
                .unwrap_or(0);
        if held > 0 || Instant::now() >= deadline {
            let jobs = jobs_locked_by(db, &id).await;
            worker.kill();
            return Held { units: held, jobs };
        }
        worker.signal("-CONT");
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
}

/// How many updates (markers `roundN`) the applied PATCHes matching `which` carried: each may
/// be sent once more by a worker that did not learn it was applied.
fn updates_carried(
    emulator: &EmulatorHandle,
    which: impl Fn(&pdq::emulator::AppliedPatch) -> bool,
) -> i64 {
    emulator
        .patches()
        .iter()
        .filter(|p| which(p))
        .map(|p| {
            p.attributes
                .keys()
                .filter(|k| k.starts_with("round"))
                .count() as i64
        })
        .sum()
}

/// A scenario's measurements, judged against the guarantee.
struct Verdict {
    ledger: Ledger,
    dead: BTreeMap<String, i64>,
    stuck: i64,
    drain: Option<Duration>,
    /// The most duplicates the scenario's faults allow: one per job that a killed or stopped
    /// process held, or that a dropped connection or a lost answer carried (0 without such a
    /// fault). Counted, never switched off.
    duplicates_allowed: usize,
    /// Where the bound comes from.
    duplicates_because: String,
    notes: String,
    /// Scenario-specific guarantees that did not hold.
    failures: Vec<String>,
    /// Why Postgres itself may lose or reorder committed jobs here (an asynchronous standby
    /// promoted): lost, stale and duplicate PATCHes are then measured, not judged, and the
    /// row's result says so.
    loss_allowed: Option<&'static str>,
}

impl Verdict {
    /// Judges `jobs` (dead-lettered ones marked) from the emulator's history.
    async fn of(
        db: &TestDb,
        emulator: &EmulatorHandle,
        mut jobs: Vec<Job>,
        drain: Option<Duration>,
    ) -> Verdict {
        let dead = ledger::mark_dead(db, &mut jobs).await;
        let ledger = ledger::judge(&jobs, &emulator.patches());
        Verdict {
            ledger,
            dead,
            stuck: queue_len(db).await.unwrap_or(-1),
            drain,
            duplicates_allowed: 0,
            duplicates_because: "no fault allows any".to_owned(),
            notes: String::new(),
            failures: Vec::new(),
            loss_allowed: None,
        }
    }

    /// Allows up to `bound` duplicates, because of `cause`.
    fn allow_duplicates(&mut self, bound: i64, cause: impl Into<String>) {
        self.duplicates_allowed = bound.max(0) as usize;
        self.duplicates_because = cause.into();
    }

    fn check(&mut self, holds: bool, guarantee: impl Into<String>) {
        if !holds {
            self.failures.push(guarantee.into());
        }
    }

    /// Records the row (failed or not), then fails the test if a guarantee did not hold.
    fn conclude(mut self, scenario: &Scenario) {
        let l = self.ledger.clone();
        let judged = self.loss_allowed.is_none();
        self.check(!judged || l.lost == 0, format!("{} jobs lost", l.lost));
        self.check(
            !judged || l.stale == 0,
            format!("{} stale PATCHes", l.stale),
        );
        self.check(
            !judged || l.wrong_final == 0,
            format!("{} participants end on an older value", l.wrong_final),
        );
        self.check(
            l.unexpected_dead == 0,
            format!(
                "{} jobs dead-lettered with a reason the scenario does not expect",
                l.unexpected_dead
            ),
        );
        self.check(
            !judged || l.duplicates <= self.duplicates_allowed,
            format!(
                "{} duplicate PATCHes, more than the {} the faults allow ({})",
                l.duplicates, self.duplicates_allowed, self.duplicates_because
            ),
        );
        self.check(self.drain.is_some(), "the queue did not drain");
        self.check(
            self.stuck == 0,
            format!("{} jobs stuck in the queue", self.stuck),
        );
        let allowed = match judged {
            true => self.duplicates_allowed.to_string(),
            false => "not judged".to_owned(),
        };
        let notes = format!(
            "{} PATCHes; {} superseded; duplicates allowed {allowed} ({}); {}",
            l.patches, l.superseded, self.duplicates_because, self.notes
        );
        let result = match self.failures.is_empty() {
            true => Ok(()),
            false => Err(self.failures.join("; ")),
        };
        scenario.record(&Row {
            scenario: scenario.name,
            result: result.clone(),
            caveat: self.loss_allowed.map(|why| format!("loss allowed: {why}")),
            stats: Some(Stats {
                jobs: l.jobs as i64,
                applied: Some(l.applied as i64),
                lost: l.lost as i64,
                stale: Some(l.stale as i64),
                duplicates: Some(l.duplicates as i64),
                dead: self.dead.clone(),
                stuck: Some(self.stuck),
                drain: self.drain,
            }),
            notes,
        });
        if let Err(reason) = result {
            panic!(
                "{}: {reason}\nledger: {l:?}\ndead letters: {:?}",
                scenario.name, self.dead
            );
        }
    }
}

async fn setup(participants: usize) -> (TestDb, EmulatorHandle, Vec<(Uuid, Uuid)>) {
    let db = TestDb::with_connections(4).await;
    let (emulator, targets) = emulator_with(participants, 3).await;
    (db, emulator, targets)
}

/// An emulator without a rate limit, answering after `latency_ms`, with one live conversation
/// per participant; returns it and the (conversation, customer) pairs.
async fn emulator_with(
    participants: usize,
    latency_ms: u64,
) -> (EmulatorHandle, Vec<(Uuid, Uuid)>) {
    let emulator = Emulator::start(EmulatorConfig {
        rate_limit: None,
        ..EmulatorConfig::default()
    })
    .await
    .unwrap();
    emulator.set_faults(Faults {
        latency_ms,
        ..Faults::default()
    });
    let targets = (0..participants)
        .map(|_| {
            let c = emulator.create_conversation(ConversationSpec::voice().customer("X"));
            (c.id, c.participant("customer").unwrap())
        })
        .collect();
    (emulator, targets)
}

#[tokio::test]
async fn kill_9_of_a_worker_holding_units_three_times_loses_nothing() {
    let scenario = Scenario::start(KILL_9);
    let (db, emulator, targets) = setup(if long_mode() { 200 } else { 40 }).await;
    let rounds = if long_mode() { 60 } else { 30 };
    let mut worker = spawn_worker(&db, &emulator);
    worker.ready().await;
    let mut done = Vec::new();
    let producing = produce(&db, &targets, 1..=rounds, Duration::from_millis(100), None);
    let chaos = async {
        let mut held = Vec::new();
        for _ in 0..3 {
            // Let it apply some first, so the kill also hits PATCHes in flight and batches of
            // finishes not yet committed, not only fresh claims.
            tokio::time::sleep(Duration::from_millis(700)).await;
            held.push(kill_while_holding_units(&db, &mut worker, Duration::from_secs(15)).await);
            let next = spawn_worker(&db, &emulator);
            done.push(std::mem::replace(&mut worker, next));
            worker.ready().await;
        }
        held
    };
    let ((jobs, first_insert), held) = tokio::join!(producing, chaos);
    let drained = drain(&db, first_insert, drain_timeout()).await;
    worker.stop();
    done.push(worker);
    let recovered = jobs_attempted_twice(&db).await;
    let mut verdict = Verdict::of(&db, &emulator, jobs, drained).await;
    let held_jobs: i64 = held.iter().map(|h| h.jobs).sum();
    verdict.allow_duplicates(held_jobs, "jobs the killed workers held");
    let rescues = rescues_logged(&done);
    let units: Vec<i64> = held.iter().map(|h| h.units).collect();
    verdict.notes = format!(
        "victims held {units:?} units ({held_jobs} jobs) when killed; {recovered} jobs claimed \
         again after the kills; {rescues} lease recoveries logged"
    );
    verdict.check(
        rescues > 0,
        "the killed workers' leases were recovered (logged)",
    );
    verdict.check(
        held.iter().all(|h| h.units > 0),
        format!("every kill hit a worker holding units: {units:?}"),
    );
    verdict.check(
        recovered > 0,
        "the killed workers' units were recovered (attempts > 1)",
    );
    verdict.conclude(&scenario);
    db.drop_database().await;
}

#[tokio::test]
async fn workers_killed_and_stopped_while_others_drain_lose_nothing() {
    let scenario = Scenario::start(KILL_AND_TERM);
    let (db, emulator, targets) = setup(if long_mode() { 200 } else { 40 }).await;
    let rounds = if long_mode() { 60 } else { 20 };
    let mut workers: Vec<WorkerProcess> = (0..3).map(|_| spawn_worker(&db, &emulator)).collect();
    for worker in &workers {
        worker.ready().await;
    }
    let producing = produce(&db, &targets, 1..=rounds, Duration::from_millis(100), None);
    let chaos = async {
        tokio::time::sleep(Duration::from_millis(600)).await;
        let held = kill_while_holding_units(&db, &mut workers[0], Duration::from_secs(15)).await;
        tokio::time::sleep(Duration::from_millis(400)).await;
        workers[1].signal("-TERM");
        held
    };
    let ((jobs, first_insert), held) = tokio::join!(producing, chaos);
    let drained = drain(&db, first_insert, drain_timeout()).await;
    for worker in &mut workers {
        worker.stop();
    }
    let recovered = jobs_attempted_twice(&db).await;
    let mut verdict = Verdict::of(&db, &emulator, jobs, drained).await;
    // The SIGTERMed worker records what it applied and gives the rest back: no duplicates.
    verdict.allow_duplicates(held.jobs, "jobs the killed worker held");
    let rescues = rescues_logged(&workers);
    verdict.notes = format!(
        "the killed worker held {} units ({} jobs); {recovered} jobs claimed again after the \
         kill; {rescues} lease recoveries logged",
        held.units, held.jobs
    );
    verdict.check(
        rescues > 0,
        "the killed worker's leases were recovered (logged)",
    );
    verdict.check(held.units > 0, "the kill hit a worker holding units");
    verdict.check(
        recovered > 0,
        "the killed worker's units were recovered (attempts > 1)",
    );
    verdict.conclude(&scenario);
    db.drop_database().await;
}

#[tokio::test]
async fn conversations_ending_while_updates_queue_dead_letter_only_theirs() {
    let scenario = Scenario::start(CONVERSATIONS_ENDING);
    let (db, emulator, targets) = setup(if long_mode() { 200 } else { 40 }).await;
    let rounds = if long_mode() { 30 } else { 10 };
    let mut worker = spawn_worker(&db, &emulator);
    worker.ready().await;
    let ending: Vec<(Uuid, Uuid)> = targets[..targets.len() / 4].to_vec();
    let producing = produce(&db, &targets, 1..=rounds, Duration::from_millis(100), None);
    let chaos = async {
        // About halfway through the producing, so each ended conversation has updates both
        // applied before its end and queued after it.
        tokio::time::sleep(Duration::from_millis(rounds as u64 * 45)).await;
        for (cid, _) in &ending {
            emulator.end_conversation(*cid);
        }
    };
    let ((mut jobs, first_insert), ()) = tokio::join!(producing, chaos);
    let drained = drain(&db, first_insert, drain_timeout()).await;
    worker.stop();
    let ended = |job: &Job| ending.iter().any(|(cid, _)| *cid == job.conversation_id);
    for job in jobs.iter_mut().filter(|j| ended(j)) {
        job.may_die = &["conversation_ended"];
    }
    let others: Vec<Job> = jobs.iter().filter(|j| !ended(j)).cloned().collect();
    let mut verdict = Verdict::of(&db, &emulator, jobs, drained).await;
    let mut others_marked = others.clone();
    let others_dead = ledger::mark_dead(&db, &mut others_marked).await;
    let rest = ledger::judge(&others_marked, &emulator.patches());
    verdict.notes = format!(
        "{} of {} jobs of live conversations applied",
        rest.applied,
        others.len()
    );
    verdict.check(
        others_dead.is_empty() && rest.applied == others.len(),
        format!(
            "the rest unaffected: {others_dead:?}, {} applied",
            rest.applied
        ),
    );
    verdict.check(
        verdict.dead.keys().all(|r| r == "conversation_ended"),
        format!(
            "dead letters only as conversation_ended: {:?}",
            verdict.dead
        ),
    );
    verdict.check(
        verdict
            .dead
            .get("conversation_ended")
            .is_some_and(|n| *n > 0),
        "the updates queued after the end are dead-lettered",
    );
    verdict.conclude(&scenario);
    db.drop_database().await;
}

fn mixed_faults() -> Faults {
    Faults {
        latency_ms: 3,
        error_rate: 0.10,
        reset_rate: 0.05,
        hang_rate: 0.02,
        hang_ms: 2_000,
        apply_then_reset_rate: 0.03,
        apply_then_error_rate: 0.03,
        ..Faults::default()
    }
}

#[tokio::test]
async fn api_faults_storms_and_revoked_tokens_delay_jobs_but_lose_none() {
    let scenario = Scenario::start(API_FAULTS);
    let (db, emulator, targets) = setup(if long_mode() { 200 } else { 40 }).await;
    let rounds = if long_mode() { 60 } else { 15 };
    emulator.set_faults(mixed_faults());
    let mut worker = spawn_worker(&db, &emulator);
    worker.ready().await;
    let producing = produce(&db, &targets, 1..=rounds, Duration::from_millis(100), None);
    let chaos = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        emulator.revoke_tokens();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let storm = if long_mode() { 30 } else { 3 };
        emulator.set_faults(Faults {
            storm_secs: storm,
            storm_retry_after_secs: 1,
            ..Faults::default()
        });
        tokio::time::sleep(Duration::from_secs(storm)).await;
        emulator.set_faults(mixed_faults());
    };
    let ((jobs, first_insert), ()) = tokio::join!(producing, chaos);
    let drained = drain(&db, first_insert, drain_timeout()).await;
    worker.stop();
    let ambiguous = emulator
        .patches()
        .iter()
        .filter(|p| p.status != 202)
        .count();
    let mut verdict = Verdict::of(&db, &emulator, jobs, drained).await;
    verdict.allow_duplicates(
        updates_carried(&emulator, |p| p.status != 202),
        "updates carried by PATCHes applied but answered with an error or a dropped connection",
    );
    verdict.notes =
        format!("{ambiguous} PATCHes applied but answered with an error or a dropped connection");
    verdict.check(ambiguous > 0, "the applied-then-failed faults fired");
    verdict.check(
        verdict.dead.is_empty(),
        "no dead letters: every failure was transient",
    );
    verdict.conclude(&scenario);
    db.drop_database().await;
}

#[tokio::test]
async fn a_postgres_crash_mid_drain_delays_jobs_and_workers_reconnect_alone() {
    let scenario = Scenario::start(POSTGRES_CRASH);
    let Some(cluster) = cluster::PrivateCluster::start() else {
        panic!("the Postgres server binaries (pg_config --bindir) are needed for this scenario");
    };
    let db = TestDb::on_server(&cluster.url(), 4).await;
    let (emulator, targets) = emulator_with(if long_mode() { 5_000 } else { 1_500 }, 20).await;
    let mut worker = spawn_worker(&db, &emulator);
    worker.ready().await;
    let (jobs, first_insert) = produce(&db, &targets, 1..=1, Duration::ZERO, None).await;
    // Mid-drain: once a tenth of the updates reached the API.
    let tenth = targets.len() / 10;
    let draining = wait_until(Duration::from_secs(30), || async {
        emulator.patches().len() >= tenth
    })
    .await;
    let remaining_before = queue_len(&db).await.unwrap_or(0);
    // Only jobs running at the crash can have been applied without being recorded (plus one
    // claim batch that may start between this count and the crash).
    let running_before: i64 =
        sqlx::query_scalar("select count(*) from pdq.jobs where state = 'running'")
            .fetch_one(&db.pool)
            .await
            .unwrap_or(0);
    let crashed = cluster.crash_and_recover();
    let drained = drain(&db, first_insert, drain_timeout()).await;
    worker.stop();
    let mut verdict = Verdict::of(&db, &emulator, jobs, drained).await;
    verdict.allow_duplicates(
        running_before + i64::from(pdq::queue::lease::DEFAULT_CLAIM_BATCH),
        "jobs running when Postgres crashed, plus one claim batch",
    );
    verdict.notes = format!(
        "{remaining_before} jobs queued and {running_before} running when Postgres crashed"
    );
    verdict.check(draining, "precondition: the drain had started");
    verdict.check(crashed, "crash and recover the private cluster");
    verdict.check(remaining_before > 0, "the crash happened mid-drain");
    verdict.conclude(&scenario);
    db.drop_database().await;
    drop(cluster);
}

fn rss_mb(child: &Child) -> f64 {
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap_or_default();
    let kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0.0);
    kb / 1024.0
}

#[tokio::test]
async fn a_big_backfill_leaves_live_updates_fast_and_worker_memory_flat() {
    let scenario = Scenario::start(BACKFILL);
    let (db, emulator, targets) = setup(20).await;
    let backfill = if long_mode() { 1_000_000 } else { 100_000 };
    sqlx::query(
        "insert into pdq.jobs (conversation_id, participant_id, attributes, priority)
         select gen_random_uuid(), gen_random_uuid(), jsonb_build_object('n', i::text), 'backfill'
         from generate_series(1, $1) as i",
    )
    .bind(backfill as i64)
    .execute(&db.pool)
    .await
    .unwrap();
    let log = std::env::temp_dir()
        .join("pdq-chaos-logs")
        .join(format!("{}-backfill.log", db.name));
    std::fs::create_dir_all(log.parent().unwrap()).expect("log directory");
    let child = Command::new(env!("CARGO_BIN_EXE_pdq"))
        .args([
            "run",
            "--executors",
            "16",
            "--rate-limit",
            "1200",
            "--backfill-share",
            "0.5",
        ])
        .args(["--metrics-addr", "127.0.0.1:0"])
        .env("DATABASE_URL", db.url())
        .envs(emulator.client_env())
        .env("RUST_LOG", WORKER_LOG_FILTER)
        .stdout(Stdio::null())
        .stderr(Stdio::from(std::fs::File::create(&log).expect("log file")))
        .spawn()
        .unwrap();
    let mut worker = WorkerProcess { child, log };
    worker.ready().await;
    // Each backfill row names a conversation the emulator does not know: one 404 from the API.
    let backfill_answered = || {
        emulator
            .request_counts()
            .iter()
            .filter(|c| c.status == 404)
            .map(|c| c.count)
            .sum::<u64>()
    };
    // Steady state: the backfill is being worked (awaited, not slept).
    let working = wait_until(Duration::from_secs(30), || async {
        backfill_answered() >= 10
    })
    .await;
    assert!(
        working,
        "the worker started on the backfill: {}",
        worker.log_text()
    );
    let rss_start = rss_mb(&worker.child);
    let backfill_dead = || async {
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "select reason, count(*) from pdq.dead_letters where priority = 'backfill' group by 1",
        )
        .fetch_all(&db.pool)
        .await
        .unwrap();
        rows.into_iter().collect::<BTreeMap<String, i64>>()
    };
    let backfill_before = backfill_answered();
    let started = Instant::now();
    let seconds = if long_mode() { 60 } else { 12 };
    let mut latencies = Vec::new();
    let mut live_jobs = Vec::new();
    for round in 0..seconds * 2 {
        let (cid, pid) = targets[round % targets.len()];
        let value = format!("live-{round}");
        // From just before the INSERT is sent: the in-process emulator shares this clock, so
        // the latency cannot come out negative.
        let sent = chrono::Utc::now();
        let id: i64 = sqlx::query_scalar("insert into pdq.jobs (conversation_id, participant_id, attributes) values ($1, $2, jsonb_build_object('live', $3::text)) returning id")
            .bind(cid)
            .bind(pid)
            .bind(&value)
            .fetch_one(&db.pool)
            .await
            .unwrap();
        live_jobs.push(Job {
            id,
            conversation_id: cid,
            participant_id: pid,
            attributes: BTreeMap::from([("live".to_owned(), value.clone())]),
            marker: ("live".to_owned(), value.clone()),
            dead: false,
            reason: None,
            may_die: &[],
        });
        let find = || {
            emulator
                .patches()
                .into_iter()
                .find(|p| p.participant_id == pid && p.attributes.get("live") == Some(&value))
        };
        let seen = wait_until(Duration::from_secs(5), || async { find().is_some() }).await;
        assert!(seen, "live update {round} applied");
        let latency = find().unwrap().at - sent;
        assert!(latency >= chrono::Duration::zero(), "{latency:?}");
        latencies.push(latency.to_std().expect("non-negative"));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let rss_end = rss_mb(&worker.child);
    let backfill_done = (backfill_answered() - backfill_before) as i64;
    worker.stop();
    let dead_by_reason = backfill_dead().await;
    latencies.sort();
    let p99 = latencies[latencies.len() * 99 / 100];
    let backfill_rate = backfill_done as f64 / elapsed;
    let mut live_marked = live_jobs.clone();
    let live_dead = ledger::mark_dead(&db, &mut live_marked).await;
    let live = ledger::judge(&live_marked, &emulator.patches());
    let accounted = queue_len(&db).await.unwrap_or(0)
        + db.count("pdq.finished_jobs").await
        + db.count("pdq.dead_letters").await;
    let vanished = backfill as i64 + live_jobs.len() as i64 - accounted;
    let mut failures = Vec::new();
    let mut check = |holds: bool, what: String| {
        if !holds {
            failures.push(what);
        }
    };
    check(
        vanished == 0,
        format!("{vanished} rows neither pending, applied nor dead-lettered"),
    );
    check(
        live.applied == live_jobs.len() && live_dead.is_empty() && live.stale == 0,
        format!("every live update applied once in order: {live:?}"),
    );
    // One token interval at 1,200/min is 50 ms; the long mode's bar allows pickup and the HTTP
    // round trip. The short mode (a few dozen samples on a shared CI machine, where p99 is the
    // slowest one) only catches starvation, which costs seconds to minutes; the latency itself
    // is measured by the worker benchmark's live-latency figure.
    let bar = Duration::from_millis(if long_mode() { 500 } else { 2_000 });
    check(p99 < bar, format!("live p99 {p99:?} (bar {bar:?})"));
    check(
        (8.5..=11.5).contains(&backfill_rate),
        format!(
            "backfill within 15 % of its share (10/s) of the 20/s budget: {backfill_rate:.1}/s"
        ),
    );
    check(
        dead_by_reason.keys().all(|r| r == "not_found"),
        format!(
            "backfill rows for unknown conversations dead-letter as not_found: {dead_by_reason:?}"
        ),
    );
    check(
        rss_start > 0.0 && rss_end > 0.0,
        format!("worker memory measured (/proc readable): {rss_start} → {rss_end} MB"),
    );
    check(
        rss_end < rss_start * 1.5 + 8.0,
        format!("worker memory stays flat: {rss_start:.1} → {rss_end:.1} MB"),
    );
    let result = match failures.is_empty() {
        true => Ok(()),
        false => Err(failures.join("; ")),
    };
    scenario.record(&Row {
        scenario: BACKFILL,
        result: result.clone(),
        caveat: None,
        stats: Some(Stats {
            jobs: backfill as i64 + live_jobs.len() as i64,
            applied: Some(live.applied as i64),
            lost: vanished + live.lost as i64,
            stale: Some(live.stale as i64),
            duplicates: Some(live.duplicates as i64),
            dead: dead_by_reason,
            stuck: None,
            drain: None,
        }),
        notes: format!(
            "{backfill} backfill rows; {} live updates, insert to PATCH: p50 {:.0} ms, p99 {:.0} ms; \
             {backfill_done} backfill rows done at {backfill_rate:.1}/s of a 20/s budget (share 50 %); \
             worker RSS {rss_start:.1} → {rss_end:.1} MB",
            live_jobs.len(),
            latencies[latencies.len() / 2].as_secs_f64() * 1000.0,
            p99.as_secs_f64() * 1000.0,
        ),
    });
    if let Err(reason) = result {
        panic!("{BACKFILL}: {reason}");
    }
    db.drop_database().await;
}
