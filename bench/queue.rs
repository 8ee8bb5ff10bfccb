//! Queue-only benchmark (no HTTP): claim + finish throughput with K concurrent claimers, and
//! the cost of one claim with 10k and with 1M pending rows.
//!
//! `cargo bench --bench queue` (append `-- --claimers 8 --batch 64` to change the shape).

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{median, ms, percentile, BenchDb};
use pdq::queue::{self, ClaimOptions, Success};

const RUNS: usize = 3;

#[tokio::main]
async fn main() {
    let full = common::full_run();
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
    let figures = serde_json::json!({
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
    println!("queue benchmark ({claimers} claimers, batches of {batch}, median of {RUNS} runs)");
    for (name, value) in figures.as_object().unwrap() {
        println!("  {name:<40} {value}");
    }
    if full {
        common::record("queue", figures);
    }
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
                let units = queue::claim(&pool, &options).await.unwrap();
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
                queue::succeed_batch(&pool, &finished).await.unwrap();
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
