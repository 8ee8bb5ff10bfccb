//! A console served on loopback over a scratch database seeded into a known state.

#![allow(dead_code)]

use std::net::SocketAddr;

use chrono::{Duration, Utc};
use pdq::console::{self, ConsoleConfig};
use pdq::queue::console::WorkerCounters;
use pdq::queue::{self, Locators, NewJob, Priority};
use secrecy::SecretString;
use serde_json::json;
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::helpers::TestDb;

/// A console serving one database.
pub struct Served {
    /// The base URL (`http://127.0.0.1:PORT`).
    pub base: String,
    /// The address it listens on.
    pub addr: SocketAddr,
    stop: CancellationToken,
}

impl Served {
    /// Serves `pool` on `listen` (port 0 picks one) with `config`.
    pub async fn start(pool: PgPool, listen: SocketAddr, config: ConsoleConfig) -> Served {
        let listener = tokio::net::TcpListener::bind(listen).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let serving = stop.clone();
        tokio::spawn(async move {
            console::serve(listener, pool, config, serving)
                .await
                .expect("console serves");
        });
        Served {
            base: format!("http://127.0.0.1:{}", addr.port()),
            addr,
            stop,
        }
    }

    /// A URL on the console.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The console's pool as `pdq console` opens it: read-only unless writes are allowed.
pub async fn console_pool(db: &TestDb, allow_writes: bool) -> PgPool {
    PgPoolOptions::new()
        .max_connections(4)
        .connect_with(console::connect_options(db.options.clone(), allow_writes))
        .await
        .unwrap()
}

/// A console on loopback over `db`.
pub async fn serve(db: &TestDb, allow_writes: bool) -> Served {
    Served::start(
        console_pool(db, allow_writes).await,
        "127.0.0.1:0".parse().unwrap(),
        ConsoleConfig {
            allow_writes,
            token: None,
            refresh_secs: 0,
            // The pages are checked against a known state: wait for its figures.
            first_read_wait: std::time::Duration::from_secs(30),
            ..ConsoleConfig::default()
        },
    )
    .await
}

/// A token for tests (never printed).
pub fn token() -> SecretString {
    SecretString::from(format!("t-{}", Uuid::new_v4().simple()))
}

/// What [`seed`] put in the database.
pub struct Seeded {
    /// The conversation of the seeded jobs.
    pub conversation: Uuid,
    /// Its participant.
    pub participant: Uuid,
    /// Pending jobs, oldest first.
    pub pending: Vec<i64>,
    /// The pending job with idempotency key `order-1001`.
    pub keyed: i64,
    /// Applied jobs.
    pub applied: Vec<i64>,
    /// Dead letters: `conversation_ended` ×2, `not_found`, `retries_exhausted`.
    pub dead: Vec<i64>,
    /// The dead letter whose key `tier` a newer job already applied.
    pub superseded: i64,
}

/// Seeds a known state: pending live and backfill jobs, applied jobs over the last hour, four
/// dead letters with API error bodies, a worker's heartbeat and a paused budget.
pub async fn seed(pool: &PgPool) -> Seeded {
    let conversation = Uuid::new_v4();
    let participant = Uuid::new_v4();
    let ids = Locators::ids(conversation, participant);
    let mut pending = Vec::new();
    for (i, priority) in [
        Priority::Live,
        Priority::Live,
        Priority::Live,
        Priority::Backfill,
        Priority::Backfill,
    ]
    .into_iter()
    .enumerate()
    {
        let job = NewJob {
            locators: Locators::conversation(Uuid::new_v4()),
            attributes: json!({ "tier": format!("gold-{i}") }),
            priority: Some(priority),
            idempotency_key: (i == 0).then(|| "order-1001".to_owned()),
            ..NewJob::default()
        };
        pending.push(queue::enqueue(pool, &job).await.unwrap().unwrap());
    }
    let tagged = NewJob {
        locators: Locators::external_tag("tag-abc"),
        attributes: json!({ "case": "42" }),
        ..NewJob::default()
    };
    pending.push(queue::enqueue(pool, &tagged).await.unwrap().unwrap());
    let keyed = pending[0];

    // Jobs for the seeded conversation, archived as applied and dead-lettered.
    let mut archived = Vec::new();
    for _ in 0..9 {
        let job = NewJob {
            locators: ids.clone(),
            attributes: json!({ "tier": "silver", "note": "seeded" }),
            ..NewJob::default()
        };
        archived.push(queue::enqueue(pool, &job).await.unwrap().unwrap());
    }
    let now = Utc::now();
    let applied: Vec<i64> = archived[..5].to_vec();
    for (i, id) in applied.iter().enumerate() {
        let finished = now - Duration::minutes(5 + 10 * i as i64);
        sqlx::query(
            "with moved as (delete from pdq.jobs where id = $1 returning *)
             insert into pdq.finished_jobs (id, conversation_id, participant_id, attributes,
                 priority, idempotency_key, created_at, run_at, attempts, first_attempt_at,
                 finished_at, resolved_conversation_id, resolved_participant_id,
                 coalesced_with, locked_by, seq)
             select id, conversation_id, participant_id, attributes, priority,
                 idempotency_key, $2 - interval '30 seconds', $2 - interval '30 seconds', 1,
                 $2 - interval '20 seconds', $2, conversation_id, participant_id, $3,
                 'worker-a', id
             from moved",
        )
        .bind(id)
        .bind(finished)
        .bind(if i == 0 { 2 } else { 1 })
        .execute(pool)
        .await
        .unwrap();
    }
    let dead: Vec<i64> = archived[5..].to_vec();
    let reasons = [
        ("conversation_ended", 400, "conversation.ended"),
        ("conversation_ended", 400, "conversation.ended"),
        ("not_found", 404, "not.found"),
        ("retries_exhausted", 503, "service.unavailable"),
    ];
    for (i, (id, (reason, status, code))) in dead.iter().zip(reasons).enumerate() {
        let body = json!({
            "message": format!("seeded failure {i}"),
            "code": code,
            "status": status,
            "contextId": format!("ctx-{i}"),
        });
        sqlx::query(
            "with moved as (delete from pdq.jobs where id = $1 returning *)
             insert into pdq.dead_letters (id, conversation_id, participant_id, attributes,
                 priority, run_at, idempotency_key, max_attempts, created_at, attempts,
                 first_attempt_at, last_attempt_at, reason, detail, http_status, error_code,
                 error_message, context_id, correlation_id, error_body,
                 resolved_conversation_id, resolved_participant_id, dead_at, locked_by, seq)
             select id, conversation_id, participant_id, attributes, priority, run_at,
                 idempotency_key, max_attempts, created_at, 3, $2 - interval '1 minute', $2,
                 $3, $4, $5, $6, $4, $7, $8, $9, conversation_id, participant_id, $2,
                 'worker-a', id
             from moved",
        )
        .bind(id)
        .bind(now - Duration::minutes(2 + 7 * i as i64))
        .bind(reason)
        .bind(format!("seeded failure {i}"))
        .bind(status)
        .bind(code)
        .bind(format!("ctx-{i}"))
        .bind(format!("corr-{i}"))
        .bind(&body)
        .execute(pool)
        .await
        .unwrap();
    }
    // A newer value of `tier` was applied for the participant after dead letter 0.
    let superseded = dead[0];
    sqlx::query("insert into pdq.applied_keys (target, key, seq) values ($1, 'tier', $2)")
        .bind(format!("c:{conversation}/p:{participant}"))
        .bind(dead[0] + 1_000)
        .execute(pool)
        .await
        .unwrap();

    // A worker that reports 429s, and a budget paused by one.
    let worker = Uuid::new_v4();
    sqlx::query(
        "insert into pdq.workers (id, name, host, pid, version, executors, state, pause_reason,
             budget_name, budget_per_minute, api_requests_last_minute)
         values ($1, 'worker-a', 'host-1', 4242, '0.1.0', 16, 'paused',
             'rate limited: 429 from Genesys Cloud', 'pdq-client', 300, 120)",
    )
    .bind(worker)
    .execute(pool)
    .await
    .unwrap();
    let counters = WorkerCounters {
        api_requests: 500,
        rate_limited: 7,
        limiter_pauses: 2,
        oldest_due_live_secs: Some(75.0),
        oldest_due_backfill_secs: Some(30.0),
    };
    queue::console::record_worker_counters(pool, worker, counters)
        .await
        .unwrap();
    sqlx::query(
        "insert into pdq.rate_budgets (name, paused_until, pause_reason)
         values ('pdq-client', now() + interval '10 minutes', 'rate_limited')",
    )
    .execute(pool)
    .await
    .unwrap();
    Seeded {
        conversation,
        participant,
        pending,
        keyed,
        applied,
        dead,
        superseded,
    }
}

/// How many rows `sql` counts.
pub async fn count(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}
