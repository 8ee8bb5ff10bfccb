//! Console benchmark: the time to render each page of `pdq console` with 1,000,000 pending
//! jobs, 100,000 dead letters and 100,000 jobs applied over the last day, measured over
//! loopback HTTP (median and p90 of repeated requests, and the first request of each page on
//! its own), and how many sequential scans the page queries made on the big tables. The
//! overview shows `pdq status`'s figures from a shared snapshot that is read in the background
//! (from the console's start, then while someone watches): a request never waits more than
//! 50 ms for a read, and renders without the figures while they are being read. The bench
//! records how many overview requests did, and how long one read of the figures takes.
//!
//! `cargo bench --bench console` appends its line to `bench/results.jsonl`; under `cargo test`
//! it runs a tiny smoke size and records nothing.

mod common;

use std::time::{Duration, Instant};

use common::{ms, percentile, BenchDb};
use pdq::console::{self, ConsoleConfig};
use sqlx::PgPool;

/// Requests per page (the first, untimed, warms the plans).
const REQUESTS: usize = 15;

#[tokio::main]
async fn main() {
    let full = common::full_run();
    let (pending, dead, applied) = if full {
        (1_000_000, 100_000, 100_000)
    } else {
        (2_000, 200, 200)
    };
    let requests = if full { REQUESTS } else { 3 };
    let db = BenchDb::create(8).await;
    let seeded = Instant::now();
    seed(&db.pool, pending, dead, applied).await;
    println!(
        "seeded {pending} pending, {dead} dead letters, {applied} applied in {:.1} s",
        seeded.elapsed().as_secs_f64()
    );

    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .connect_with(console::connect_options(db.options.clone(), false))
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let stop = tokio_util::sync::CancellationToken::new();
    let serving = stop.clone();
    let config = ConsoleConfig {
        refresh_secs: 0,
        ..ConsoleConfig::default()
    };
    tokio::spawn(console::serve(listener, pool, config, serving));

    let some: (i64, String, uuid::Uuid) = sqlx::query_as(
        "select id, idempotency_key, conversation_id from pdq.jobs
         where id = (select min(id) + (max(id) - min(id)) / 2 from pdq.jobs)",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    let (job_id, key, conversation) = some;
    let (dead_id, dead_conversation, dead_cursor): (i64, uuid::Uuid, String) = sqlx::query_as(
        "select id, conversation_id,
                (extract(epoch from dead_at) * 1000000)::bigint::text || '.' || id
         from pdq.dead_letters order by dead_at desc, id desc offset $1 limit 1",
    )
    .bind(dead / 2)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    let pages: Vec<(&str, String)> = vec![
        ("overview_hour", "/".to_owned()),
        ("overview_day", "/?range=day".to_owned()),
        ("jobs_newest", "/jobs".to_owned()),
        ("jobs_pending", "/jobs?state=pending".to_owned()),
        ("jobs_page_in_the_middle", format!("/jobs?before={job_id}")),
        ("jobs_by_key", format!("/jobs?key={key}")),
        (
            "jobs_by_conversation",
            format!("/jobs?conversation={conversation}"),
        ),
        ("job_story", format!("/jobs/{job_id}")),
        ("dead_letters_newest", "/dlq".to_owned()),
        ("dead_letters_by_reason", "/dlq?reason=not_found".to_owned()),
        (
            "dead_letters_page_in_the_middle",
            format!("/dlq?after={dead_cursor}"),
        ),
        (
            "dead_letters_by_conversation",
            format!("/dlq?conversation={dead_conversation}"),
        ),
        ("dead_letter", format!("/dlq/{dead_id}")),
    ];
    let client = reqwest::Client::new();
    let scans_before = seq_scans(&db.pool).await;
    let mut figures = serde_json::json!({
        "pending_jobs": pending,
        "dead_letters": dead,
        "applied_jobs_last_day": applied,
        "requests_per_page": requests,
    });
    let mut slowest = 0.0f64;
    let mut without_figures = 0;
    for (name, path) in &pages {
        let mut samples = Vec::with_capacity(requests);
        let mut first = Duration::ZERO;
        for i in 0..=requests {
            let started = Instant::now();
            let answer = client.get(format!("{base}{path}")).send().await.unwrap();
            let status = answer.status();
            let body = answer.text().await.unwrap();
            assert!(status.is_success(), "{path}: {status}: {body}");
            if name.starts_with("overview") && body.contains("verdict-pending") {
                without_figures += 1;
            }
            match i {
                0 => first = started.elapsed(),
                _ => samples.push(started.elapsed()),
            }
        }
        let median = ms(percentile(&mut samples, 50.0));
        let p90 = ms(percentile(&mut samples, 90.0));
        slowest = slowest.max(median);
        common::merge(
            &mut figures,
            serde_json::json!({
                format!("{name}_median_ms"): median,
                format!("{name}_p90_ms"): p90,
                format!("{name}_first_ms"): ms(first),
            }),
        );
    }
    let scans_after = seq_scans(&db.pool).await;
    let read = Instant::now();
    pdq::queue::status(&db.pool).await.unwrap();
    common::merge(
        &mut figures,
        serde_json::json!({
            "overview_requests_without_figures": without_figures,
            "status_read_ms": ms(read.elapsed()),
        }),
    );
    let scans: serde_json::Map<String, serde_json::Value> = scans_after
        .iter()
        .map(|(table, after)| {
            let before = scans_before
                .iter()
                .find(|(t, _)| t == table)
                .map_or(0, |(_, n)| *n);
            (format!("seq_scans_{table}"), (after - before).into())
        })
        .collect();
    common::merge(&mut figures, serde_json::Value::Object(scans));
    common::merge(
        &mut figures,
        serde_json::json!({ "slowest_page_median_ms": slowest }),
    );
    common::print_figures(
        &format!("console benchmark: page render over loopback (median of {requests})"),
        &figures,
    );
    common::record("console", "pages", figures);
    stop.cancel();
    tokio::time::sleep(Duration::from_millis(50)).await;
    db.drop().await;
}

/// Sequential scans so far on the tables the console reads.
async fn seq_scans(pool: &PgPool) -> Vec<(String, i64)> {
    sqlx::query_as(
        "select relname::text, seq_scan from pg_stat_user_tables
         where schemaname = 'pdq'
           and relname in ('jobs', 'dead_letters', 'finished_jobs', 'cancelled_jobs')
         order by relname",
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

/// Pending jobs, dead letters and applied jobs, set-based.
async fn seed(pool: &PgPool, pending: i64, dead: i64, applied: i64) {
    sqlx::query(
        "insert into pdq.jobs (conversation_id, participant_id, attributes, priority, run_at,
             idempotency_key)
         select gen_random_uuid(), gen_random_uuid(),
                jsonb_build_object('tier', 'gold', 'n', i::text),
                case when i % 4 = 0 then 'backfill' else 'live' end,
                now() - (i % 3600) * interval '1 second', 'bench-' || i
         from generate_series(1, $1) as i",
    )
    .bind(pending)
    .execute(pool)
    .await
    .unwrap();
    let reasons = [
        "conversation_ended",
        "not_found",
        "retries_exhausted",
        "participant_not_found",
        "expired",
    ];
    sqlx::query(
        "insert into pdq.dead_letters (id, conversation_id, participant_id, attributes,
             priority, run_at, max_attempts, created_at, attempts, reason, detail,
             http_status, error_code, error_message, correlation_id, error_body, dead_at)
         select 50000000 + i, gen_random_uuid(), gen_random_uuid(),
                jsonb_build_object('tier', 'gold'), 'live', now() - interval '31 days', 20,
                now() - interval '31 days', 3, ($2::text[])[1 + i % 5], 'bench failure',
                404, 'not.found', 'bench failure', 'corr-' || i,
                jsonb_build_object('message', 'bench failure', 'code', 'not.found'),
                now() - (i * interval '25 seconds')
         from generate_series(1, $1) as i",
    )
    .bind(dead)
    .bind(&reasons[..])
    .execute(pool)
    .await
    .unwrap();
    sqlx::query(
        "insert into pdq.finished_jobs (id, conversation_id, participant_id, attributes,
             priority, created_at, run_at, attempts, first_attempt_at, finished_at,
             coalesced_with)
         select 60000000 + i, gen_random_uuid(), gen_random_uuid(),
                jsonb_build_object('tier', 'gold'),
                case when i % 4 = 0 then 'backfill' else 'live' end,
                now() - interval '1 day', now() - (i * interval '800 milliseconds'), 1,
                now() - (i * interval '800 milliseconds') + interval '200 milliseconds',
                now() - (i * interval '800 milliseconds') + interval '300 milliseconds', 1
         from generate_series(1, $1) as i",
    )
    .bind(applied)
    .execute(pool)
    .await
    .unwrap();
    sqlx::query("analyze").execute(pool).await.unwrap();
}
