//! Worker benchmark: the real `pdq run` binary against the emulator (in this process) and a
//! fresh database. Drain time until the queue is empty at 1 and at 32 executors (with the
//! worker's start-up measured separately), pickup latency, live latency under a backfill, API
//! calls per update, worker RSS, and (with `--utilization`) rate-limit utilisation over two
//! minutes.
//!
//! `cargo bench --bench worker [-- --utilization]` (or `-- --drain-only`, `-- --utilization-only`).
//! Every mode appends its line to `bench/results.jsonl`.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use common::{median, ms, percentile, BenchDb};
use pdq::emulator::{
    ConversationSpec, Emulator, EmulatorConfig, EmulatorHandle, RateLimit, RateLimitScope,
};
use serde_json::{json, Value};
use uuid::Uuid;

const PATCH: &str = "PATCH /api/v2/conversations/{cid}/participants/{pid}/attributes";

/// The executor counts the drain is measured at.
const DRAIN_EXECUTORS: [usize; 2] = [1, 32];

/// The longest a drain may take before the benchmark fails instead of reporting.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(600);

#[tokio::main]
async fn main() {
    let full = common::full_run();
    let runs = if full { 3 } else { 1 };
    let drain_jobs = if full { 20_000 } else { 300 };
    let steady_secs = if full { 10 } else { 1 };
    let utilization_secs = if full { 120 } else { 5 };

    if std::env::args().any(|a| a == "--utilization-only") {
        let figures = utilization_figures(1, utilization_secs).await;
        common::print_figures("worker benchmark, utilisation only (1 run)", &figures);
        common::record("worker", "utilization-only", figures);
        return;
    }
    if std::env::args().any(|a| a == "--drain-only") {
        let figures = drain_figures(drain_jobs, runs).await;
        common::print_figures(
            &format!("worker benchmark, drain only (median of {runs} runs)"),
            &figures,
        );
        common::record("worker", "drain-only", figures);
        return;
    }
    let mut figures = drain_figures(drain_jobs, runs).await;
    let (mut p50s, mut p95s, mut p99s) = (vec![], vec![], vec![]);
    let (mut live_p50s, mut live_p99s, mut backfill_rates) = (vec![], vec![], vec![]);
    for _ in 0..runs {
        let (p50, p95, p99) = pickup(steady_secs).await;
        p50s.push(p50);
        p95s.push(p95);
        p99s.push(p99);
        let under = live_under_backfill(if full { 20_000 } else { 500 }, steady_secs).await;
        live_p50s.push(under.live_p50_ms);
        live_p99s.push(under.live_p99_ms);
        backfill_rates.push(under.backfill_per_s);
    }
    let (mut rss_64, mut singles, mut bursts) = (vec![], vec![], vec![]);
    for _ in 0..runs {
        rss_64.push(drain(drain_jobs, 64).await.peak_rss_mb);
        let (single, burst) = calls_per_update().await;
        singles.push(single);
        bursts.push(burst);
    }
    let more = json!({
        "pickup_p50_ms": median(&mut p50s),
        "pickup_p95_ms": median(&mut p95s),
        "pickup_p99_ms": median(&mut p99s),
        "pickup_p50_ms_min_max": common::min_max(&p50s),
        "live_under_backfill_p50_ms": median(&mut live_p50s),
        "live_under_backfill_p99_ms": median(&mut live_p99s),
        "live_under_backfill_p99_ms_min_max": common::min_max(&live_p99s),
        "live_under_backfill_backfill_per_s": median(&mut backfill_rates),
        "calls_per_update_both_ids": median(&mut singles),
        "calls_per_update_bursts_of_10": median(&mut bursts),
        "calls_per_update_bursts_of_10_min_max": common::min_max(&bursts),
        "worker_peak_rss_mb_64_executors": median(&mut rss_64),
        "worker_peak_rss_mb_64_executors_min_max": common::min_max(&rss_64),
    });
    common::merge(&mut figures, more);
    let mode = if std::env::args().any(|a| a == "--utilization") {
        common::merge(
            &mut figures,
            utilization_figures(runs, utilization_secs).await,
        );
        "suite+utilization"
    } else {
        "suite"
    };
    common::print_figures(
        &format!("worker benchmark (median of {runs} runs)"),
        &figures,
    );
    common::record("worker", mode, figures);
}

/// `runs` drains of `jobs` jobs at each of [`DRAIN_EXECUTORS`], interleaved; per executor
/// count the drain time until the queue is empty and the jobs/s it makes, the worker's start-up
/// (spawn to first claim) and its peak RSS, as medians with min–max.
async fn drain_figures(jobs: usize, runs: usize) -> Value {
    let mut drains = Vec::new();
    for _ in 0..runs {
        for executors in DRAIN_EXECUTORS {
            drains.push((executors, drain(jobs, executors).await));
        }
    }
    let mut figures = json!({ "runs": runs, "drain_jobs": jobs });
    for executors in DRAIN_EXECUTORS {
        let ours: Vec<&Drain> = drains
            .iter()
            .filter(|(e, _)| *e == executors)
            .map(|(_, d)| d)
            .collect();
        let mut seconds: Vec<f64> = ours
            .iter()
            .map(|d| (d.first_claim_to_empty.as_secs_f64() * 1000.0).round() / 1000.0)
            .collect();
        let mut rates: Vec<f64> = ours
            .iter()
            .map(|d| (jobs as f64 / d.first_claim_to_empty.as_secs_f64()).round())
            .collect();
        let mut start_ms: Vec<f64> = ours.iter().map(|d| ms(d.spawn_to_first_claim)).collect();
        let mut rss: Vec<f64> = ours.iter().map(|d| d.peak_rss_mb).collect();
        let suffix = if executors == 1 {
            "1_executor".to_owned()
        } else {
            format!("{executors}_executors")
        };
        common::merge(
            &mut figures,
            json!({
                format!("drain_to_empty_s_{suffix}"): median(&mut seconds),
                format!("drain_to_empty_s_{suffix}_min_max"): common::min_max(&seconds),
                format!("drain_to_empty_jobs_per_s_{suffix}"): median(&mut rates),
                format!("drain_to_empty_jobs_per_s_{suffix}_min_max"): common::min_max(&rates),
                format!("worker_start_to_first_claim_ms_{suffix}"): median(&mut start_ms),
                format!("worker_start_to_first_claim_ms_{suffix}_min_max"): common::min_max(&start_ms),
                format!("worker_peak_rss_mb_{suffix}"): median(&mut rss),
            }),
        );
    }
    figures
}

/// Share of a 3,000/min budget used over `secs` seconds (median of `runs`, min–max) and the
/// 429s seen in all runs.
async fn utilization_figures(runs: usize, secs: u64) -> Value {
    let (mut shares, mut too_many) = (vec![], 0);
    for _ in 0..runs {
        let (share, rejected) = utilization(secs).await;
        shares.push(share);
        too_many += rejected;
    }
    json!({
        "rate_utilisation_window_s": secs,
        "rate_utilisation_runs": runs,
        "rate_utilisation_3000_per_min": median(&mut shares),
        "rate_utilisation_min_max": common::min_max(&shares),
        "rate_utilisation_429s_all_runs": too_many,
    })
}

async fn emulator(rate_limit: Option<RateLimit>) -> EmulatorHandle {
    let config = EmulatorConfig {
        rate_limit,
        request_log_cap: 0,
        history_cap: 4,
        ..EmulatorConfig::default()
    };
    Emulator::start(config).await.unwrap()
}

/// `pdq run` against the emulator, with its own metrics port.
fn spawn_worker(
    db: &BenchDb,
    emulator: &EmulatorHandle,
    executors: usize,
    rate_limit: u32,
) -> Child {
    Command::new(env!("CARGO_BIN_EXE_pdq"))
        .args([
            "run",
            "--executors",
            &executors.to_string(),
            "--rate-limit",
            &rate_limit.to_string(),
        ])
        // The system picks the port: a fixed range would meet outgoing connections' ports.
        .args(["--metrics-addr", "127.0.0.1:0"])
        .env("DATABASE_URL", db.url())
        .envs(emulator.client_env())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("pdq binary")
}

fn peak_rss_mb(child: &Child) -> f64 {
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap_or_default();
    let kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    (kb / 1024.0 * 10.0).round() / 10.0
}

fn stop(mut child: Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
}

/// Enqueues one job per participant of `targets` in one statement.
async fn enqueue(db: &BenchDb, targets: &[(Uuid, Uuid)], priority: &str) {
    let (cids, pids): (Vec<Uuid>, Vec<Uuid>) = targets.iter().copied().unzip();
    sqlx::query(
        "insert into pdq.jobs (conversation_id, participant_id, attributes, priority)
         select c, p, jsonb_build_object('orderStatus', 'shipped'), $3
         from unnest($1::uuid[], $2::uuid[]) as t(c, p)",
    )
    .bind(cids)
    .bind(pids)
    .bind(priority)
    .execute(&db.pool)
    .await
    .unwrap();
}

fn targets(emulator: &EmulatorHandle, n: usize) -> Vec<(Uuid, Uuid)> {
    (0..n)
        .map(|_| {
            let c = emulator.create_conversation(ConversationSpec::voice().customer("X"));
            (c.id, c.participant("customer").unwrap())
        })
        .collect()
}

/// Polls `select count(*) from pdq.jobs` every 10 ms until it is 0 and returns the database's
/// clock at that poll; fails the benchmark after [`DRAIN_TIMEOUT`] rather than report a figure.
async fn until_empty(db: &BenchDb) -> DateTime<Utc> {
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    loop {
        let (pending, at): (i64, DateTime<Utc>) =
            sqlx::query_as("select count(*), clock_timestamp() from pdq.jobs")
                .fetch_one(&db.pool)
                .await
                .unwrap();
        if pending == 0 {
            return at;
        }
        assert!(
            Instant::now() < deadline,
            "{pending} jobs still queued after {DRAIN_TIMEOUT:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// One drain, timed on the database's clock.
struct Drain {
    /// From spawning `pdq run` to its first claim (the earliest `first_attempt_at` of the
    /// jobs): process start, connecting, schema check.
    spawn_to_first_claim: Duration,
    /// From the first claim until `select count(*) from pdq.jobs` is 0: every finish committed.
    first_claim_to_empty: Duration,
    /// The worker's peak RSS.
    peak_rss_mb: f64,
}

/// Drains `n` jobs (ids known, no rate limit) that were all inserted, and due, before the worker
/// started. Every PATCH must have arrived exactly once.
async fn drain(n: usize, executors: usize) -> Drain {
    let db = BenchDb::create(4).await;
    let emulator = emulator(None).await;
    let work = targets(&emulator, n);
    enqueue(&db, &work, "live").await;
    let spawned_at = db_now(&db).await;
    let worker = spawn_worker(&db, &emulator, executors, 0);
    let empty_at = until_empty(&db).await;
    let rss = peak_rss_mb(&worker);
    stop(worker);
    let first_claim_at: DateTime<Utc> =
        sqlx::query_scalar("select min(first_attempt_at) from pdq.finished_jobs")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(
        emulator.count(PATCH, Some(202)) as usize,
        n,
        "every job applied once"
    );
    db.drop().await;
    Drain {
        spawn_to_first_claim: (first_claim_at - spawned_at).to_std().unwrap_or_default(),
        first_claim_to_empty: (empty_at - first_claim_at).to_std().unwrap_or_default(),
        peak_rss_mb: rss,
    }
}

async fn db_now(db: &BenchDb) -> DateTime<Utc> {
    sqlx::query_scalar("select clock_timestamp()")
        .fetch_one(&db.pool)
        .await
        .unwrap()
}

/// Inserts 100 jobs/s for `secs` seconds; returns p50/p95/p99 from just before INSERT to the PATCH
/// arriving at the emulator.
async fn pickup(secs: u64) -> (f64, f64, f64) {
    let db = BenchDb::create(4).await;
    let emulator = emulator(None).await;
    let work = targets(&emulator, (secs * 100) as usize);
    let worker = spawn_worker(&db, &emulator, 32, 0);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut sent = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    for target in &work {
        tick.tick().await;
        sent.push((*target, chrono::Utc::now()));
        enqueue(&db, std::slice::from_ref(target), "live").await;
    }
    until_empty(&db).await;
    stop(worker);
    let mut latencies: Vec<Duration> = sent
        .iter()
        .filter_map(|((cid, pid), at)| {
            let arrived = emulator.patch_history(*cid, *pid).first()?.at;
            (arrived - *at).to_std().ok()
        })
        .collect();
    db.drop().await;
    (
        ms(percentile(&mut latencies, 50.0)),
        ms(percentile(&mut latencies, 95.0)),
        ms(percentile(&mut latencies, 99.0)),
    )
}

/// What a live update sees while a big backfill drains under a rate limit.
struct LiveUnderBackfill {
    live_p50_ms: f64,
    live_p99_ms: f64,
    backfill_per_s: f64,
}

/// With `backfill` jobs pending under a 1,200/min budget (backfill share 0.5), inserts four live
/// updates a second for `secs` seconds; returns their latency from just before the INSERT to
/// the PATCH arriving, and the backfill's rate meanwhile. One token interval is 50 ms.
async fn live_under_backfill(backfill: usize, secs: u64) -> LiveUnderBackfill {
    let db = BenchDb::create(4).await;
    let emulator = emulator(None).await;
    let backlog = targets(&emulator, backfill);
    enqueue(&db, &backlog, "backfill").await;
    let live = targets(&emulator, (secs * 4) as usize);
    let worker = spawn_worker(&db, &emulator, 16, 1_200);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let started = Instant::now();
    let backfill_before = emulator.count(PATCH, Some(202));
    let mut sent = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    for target in &live {
        tick.tick().await;
        sent.push((*target, chrono::Utc::now()));
        enqueue(&db, std::slice::from_ref(target), "live").await;
    }
    let all_seen = Instant::now() + Duration::from_secs(10);
    while Instant::now() < all_seen
        && live
            .iter()
            .any(|(cid, pid)| emulator.patch_history(*cid, *pid).is_empty())
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let patched = emulator.count(PATCH, Some(202)) - backfill_before;
    stop(worker);
    let mut latencies: Vec<Duration> = sent
        .iter()
        .map(|((cid, pid), at)| {
            let arrived = emulator
                .patch_history(*cid, *pid)
                .first()
                .expect("every live update applied")
                .at;
            (arrived - *at).to_std().unwrap_or_default()
        })
        .collect();
    db.drop().await;
    LiveUnderBackfill {
        live_p50_ms: ms(percentile(&mut latencies, 50.0)),
        live_p99_ms: ms(percentile(&mut latencies, 99.0)),
        backfill_per_s: (patched.saturating_sub(live.len() as u64) as f64 / elapsed * 10.0).round()
            / 10.0,
    }
}

/// API calls per applied update: one job per participant, then bursts of ten per participant.
async fn calls_per_update() -> (f64, f64) {
    let mut ratios = Vec::new();
    for burst in [1, 10] {
        let db = BenchDb::create(4).await;
        let emulator = emulator(None).await;
        let work = targets(&emulator, 200);
        let repeated: Vec<(Uuid, Uuid)> = work
            .iter()
            .flat_map(|t| std::iter::repeat_n(*t, burst))
            .collect();
        enqueue(&db, &repeated, "live").await;
        let worker = spawn_worker(&db, &emulator, 32, 0);
        until_empty(&db).await;
        stop(worker);
        let calls: u64 = emulator
            .request_counts()
            .iter()
            .filter(|c| c.route.contains("/api/v2/"))
            .map(|c| c.count)
            .sum();
        ratios.push((calls as f64 / repeated.len() as f64 * 1000.0).round() / 1000.0);
        db.drop().await;
    }
    (ratios[0], ratios[1])
}

/// Share of a 3,000/min budget used over `secs` seconds, and the 429s seen.
async fn utilization(secs: u64) -> (f64, u64) {
    let db = BenchDb::create(4).await;
    let limit = RateLimit {
        requests: 3_000,
        window_secs: 60,
        scope: RateLimitScope::Token,
    };
    let emulator = emulator(Some(limit)).await;
    let work = targets(&emulator, (secs * 60) as usize);
    enqueue(&db, &work, "backfill").await;
    let worker = spawn_worker(&db, &emulator, 32, 3_000);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = emulator.count(PATCH, Some(202));
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let applied = emulator.count(PATCH, Some(202)) - before;
    stop(worker);
    let too_many: u64 = emulator
        .request_counts()
        .iter()
        .filter(|c| c.status == 429)
        .map(|c| c.count)
        .sum();
    db.drop().await;
    let budget = 3_000.0 * secs as f64 / 60.0;
    (
        (applied as f64 / budget * 1000.0).round() / 1000.0,
        too_many,
    )
}
