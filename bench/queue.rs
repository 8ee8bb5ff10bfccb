//! Queue-only benchmark (no HTTP): claim + finish throughput with K concurrent claimers, the
//! cost of one claim with 10k and with 1M pending rows, and the cost of one finish statement
//! (`queue::lease::succeed_batch`) of 1,000 and of 10,000 units.
//!
//! `cargo bench --bench queue` (append `-- --claimers 8 --batch 64` to change the shape, or
//! `-- --finish-only` for the finish statement alone). Every mode appends its line to
//! `bench/results.jsonl`.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{median, ms, percentile, BenchDb};
use pdq::queue::lease::{ClaimOptions, Success};
use pdq::queue::{self, Unit};

const RUNS: usize = 3;

/// Units finished (untimed) before the measured statement, so its plan is prepared already.
const WARM_UP_UNITS: usize = 10;

#[tokio::main]
async fn main() {
    let full = common::full_run();
    let finish_sizes = if full { [1_000, 10_000] } else { [100, 1_000] };
    let finish_runs = if full { RUNS } else { 1 };
    if std::env::args().any(|a| a == "--finish-only") {
        let figures = finish_figures(finish_sizes, finish_runs).await;
        common::print_figures(
            &format!("queue benchmark, finish statement only (median of {finish_runs} runs)"),
            &figures,
        );
        common::record("queue", "finish-only", figures);
        return;
    }
    let claimers = arg("--claimers").unwrap_or(8);
    let batch = arg("--batch").unwrap_or(64) as u32;
    let (small, large) = if full {
        (10_000, 1_000_000)
    } else {
        (500, 2_000)
    };

    let mut rates = Vec::new();
    let mut enqueue_rates = Vec::new();
    let mut small_claims = Vec::new();
    for _ in 0..RUNS {
        let db = BenchDb::create(claimers as u32 + 2).await;
        enqueue_rates.push(enqueue(&db, small, "live").await);
        let (rate, mut latencies) = drain(&db, claimers, batch, small).await;
        rates.push(rate);
        small_claims.push(ms(percentile(&mut latencies, 50.0)));
        db.drop().await;
    }

    let db = BenchDb::create(claimers as u32 + 2).await;
    let large_enqueue = enqueue(&db, large, "backfill").await;
    sqlx::query("vacuum analyze pdq.jobs")
        .execute(&db.pool)
        .await
        .unwrap();
    let mut large_claims = Vec::new();
    let mut large_rates = Vec::new();
    for _ in 0..RUNS {
        let (rate, mut latencies) = drain(&db, claimers, batch, small).await;
        large_rates.push(rate);
        large_claims.push(ms(percentile(&mut latencies, 50.0)));
    }
    db.drop().await;

    let (small_claim, large_claim) = (median(&mut small_claims), median(&mut large_claims));
    let mut figures = serde_json::json!({
        "claimers": claimers, "batch": batch,
        "enqueue_rows_per_s_10k": median(&mut enqueue_rates).round(),
        "enqueue_rows_per_s_1m": large_enqueue.round(),
        "claim_finish_jobs_per_s_10k": median(&mut rates).round(),
        "claim_finish_jobs_per_s_at_1m_pending": median(&mut large_rates).round(),
        "claim_finish_jobs_per_s_10k_min_max": common::min_max(&rates).map(f64::round),
        "claim_finish_jobs_per_s_1m_min_max": common::min_max(&large_rates).map(f64::round),
        "claim_p50_ms_10k": small_claim,
        "claim_p50_ms_1m": large_claim,
        "claim_cost_ratio_1m_vs_10k": (large_claim / small_claim * 100.0).round() / 100.0,
        "runs": RUNS,
    });
    let finish = finish_figures(finish_sizes, finish_runs).await;
    common::merge(&mut figures, finish);
    common::print_figures(
        &format!(
            "queue benchmark ({claimers} claimers, batches of {batch}, median of {RUNS} runs)"
        ),
        &figures,
    );
    common::record("queue", "suite", figures);
}

/// The finish statement at `sizes` (small, large): ms per statement and µs per unit (median of
/// `runs`, min–max), and how the cost per unit grows from the small to the large size (1.0 is
/// linear).
async fn finish_figures(sizes: [usize; 2], runs: usize) -> serde_json::Value {
    let mut figures = serde_json::json!({ "finish_statement_units": sizes, "finish_runs": runs });
    let mut per_unit = Vec::new();
    for units in sizes {
        let mut statement_ms: Vec<f64> = Vec::new();
        for _ in 0..runs {
            statement_ms.push(ms(finish_statement(units).await));
        }
        let mut unit_us: Vec<f64> = statement_ms
            .iter()
            .map(|ms| (ms * 1000.0 / units as f64 * 100.0).round() / 100.0)
            .collect();
        let unit_us_median = median(&mut unit_us);
        per_unit.push(unit_us_median);
        figures[format!("finish_statement_ms_{units}_units")] = median(&mut statement_ms).into();
        figures[format!("finish_statement_ms_{units}_units_min_max")] =
            common::min_max(&statement_ms).to_vec().into();
        figures[format!("finish_us_per_unit_{units}_units")] = unit_us_median.into();
    }
    figures[format!("finish_us_per_unit_ratio_{}_vs_{}", sizes[1], sizes[0])] =
        ((per_unit[1] / per_unit[0] * 100.0).round() / 100.0).into();
    figures
}

/// Times one `queue::lease::succeed_batch` of `units` claimed units of one job each. Every job names
/// both ids and two keys, so the statement also writes `pdq.applied_keys`. A fresh database
/// with a single connection; the statement is prepared by a small untimed finish first.
async fn finish_statement(units: usize) -> Duration {
    let db = BenchDb::create(1).await;
    enqueue(&db, units + WARM_UP_UNITS, "live").await;
    sqlx::query("analyze pdq.jobs")
        .execute(&db.pool)
        .await
        .unwrap();
    let options = ClaimOptions {
        units: 1_000,
        max_coalesce: 1,
        lease: Duration::from_secs(3_600),
        worker_id: "bench-finish".to_owned(),
    };
    let mut claimed: Vec<Unit> = Vec::new();
    while claimed.len() < units + WARM_UP_UNITS {
        let batch = queue::lease::claim(&db.pool, &options).await.unwrap();
        assert!(!batch.is_empty(), "every enqueued job is claimable");
        claimed.extend(batch);
    }
    let done: Vec<Success> = claimed
        .iter()
        .map(|unit| {
            let locators = &unit.head().locators;
            Success::of(
                unit,
                locators.conversation_id.expect("both ids"),
                locators.participant_id.expect("both ids"),
            )
        })
        .collect();
    let (warm_up, measured) = done.split_at(WARM_UP_UNITS);
    assert!(queue::lease::succeed_batch(&db.pool, warm_up)
        .await
        .unwrap()
        .is_empty());
    let started = Instant::now();
    let lost = queue::lease::succeed_batch(&db.pool, measured)
        .await
        .unwrap();
    let elapsed = started.elapsed();
    assert!(lost.is_empty(), "every lease was still held");
    let (pending, applied_keys): (i64, i64) = sqlx::query_as(
        "select (select count(*) from pdq.jobs), (select count(*) from pdq.applied_keys)",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(pending, 0, "every job finished");
    let keys: usize = done.iter().map(|s| s.key_versions.len()).sum();
    assert_eq!(applied_keys as usize, keys, "every applied key recorded");
    db.drop().await;
    elapsed
}

fn arg(name: &str) -> Option<usize> {
    let args: Vec<String> = std::env::args().collect();
    let at = args.iter().position(|a| a == name)?;
    args.get(at + 1)?.parse().ok()
}

/// Enqueues `n` jobs for distinct participants in one statement; returns rows/s.
async fn enqueue(db: &BenchDb, n: usize, priority: &str) -> f64 {
    let started = Instant::now();
    sqlx::query(
        "insert into pdq.jobs (conversation_id, participant_id, attributes, priority)
         select gen_random_uuid(), gen_random_uuid(),
                jsonb_build_object('orderStatus', 'shipped', 'n', i::text), $2
         from generate_series(1, $1) as i",
    )
    .bind(n as i64)
    .bind(priority)
    .execute(&db.pool)
    .await
    .unwrap();
    n as f64 / started.elapsed().as_secs_f64()
}

/// Claims and finishes `jobs` jobs with `claimers` concurrent claimers; returns jobs/s and the
/// latency of every claim statement.
async fn drain(db: &BenchDb, claimers: usize, batch: u32, jobs: usize) -> (f64, Vec<Duration>) {
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for worker in 0..claimers {
        let (pool, latencies, done) = (db.pool.clone(), latencies.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            let options = ClaimOptions {
                units: batch,
                worker_id: format!("bench-{worker}"),
                ..ClaimOptions::default()
            };
            while done.load(std::sync::atomic::Ordering::Relaxed) < jobs {
                let claim_started = Instant::now();
                let units = queue::lease::claim(&pool, &options).await.unwrap();
                latencies.lock().unwrap().push(claim_started.elapsed());
                if units.is_empty() {
                    break;
                }
                let finished: Vec<Success> = units
                    .iter()
                    .map(|u| Success {
                        fence: u.fence(),
                        conversation_id: u.head().locators.conversation_id,
                        participant_id: u.head().locators.participant_id,
                        key_versions: u.key_versions(),
                        superseded: Vec::new(),
                    })
                    .collect();
                queue::lease::succeed_batch(&pool, &finished).await.unwrap();
                let n: usize = units.iter().map(|u| u.jobs.len()).sum();
                done.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let elapsed = started.elapsed().as_secs_f64();
    let finished = done.load(std::sync::atomic::Ordering::Relaxed);
    let latencies = latencies.lock().unwrap().clone();
    (finished as f64 / elapsed, latencies)
}
