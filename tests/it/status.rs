//! `pdq status` over known database states: a paused budget, a blocked participant, scheduled
//! and retrying jobs, live and stale workers.

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use pdq::emulator::{Emulator, EmulatorConfig};
use pdq::genesys::GenesysClient;
use pdq::queue::budget::{self, PauseReason};
use pdq::queue::lease::ClaimOptions;
use pdq::queue::workers::{self, Heartbeat, WorkerState};
use pdq::queue::{self, Locators, NewJob, Priority};
use pdq::worker::{Api, Budget, Worker, WorkerConfig};
use secrecy::SecretString;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::helpers::{wait_until, TestDb};

const RETRY_ERROR: &str = "no active conversation has external tag ORDER-43";

fn new_job(conversation: Uuid, participant: Uuid, priority: Priority, n: u32) -> NewJob {
    NewJob {
        locators: Locators::ids(conversation, participant),
        attributes: json!({ "n": n.to_string() }),
        priority: Some(priority),
        ..NewJob::default()
    }
}

fn heartbeat(name: &str, per_minute: u32) -> Heartbeat {
    Heartbeat {
        id: Uuid::new_v4(),
        name: name.to_owned(),
        host: "host-a".to_owned(),
        pid: 4242,
        version: "0.0.0-test".to_owned(),
        executors: 8,
        state: WorkerState::Running,
        pause_reason: None,
        budget_name: Some("edge-client".to_owned()),
        budget_per_minute: per_minute,
        api_requests_last_minute: None,
    }
}

/// The known state the tests read:
/// - live: 2 due (one of them blocked), 1 scheduled later, 1 waiting for its retry;
/// - backfill: 1 due;
/// - applied 1 / 2 / 3 jobs in the last 1 / 5 / 15 minutes, one dead letter 3 minutes ago;
/// - the budget `edge-client` paused for a minute by a 429, limit 20/min;
/// - a live worker `pdq-live`, a stale `pdq-stale`, and one silent for two hours.
///
/// Returns the id of the job waiting for its retry.
async fn known_state(db: &TestDb) -> i64 {
    let pool = &db.pool;
    let (blocked_conversation, blocked_participant) = (Uuid::new_v4(), Uuid::new_v4());
    let retrying = queue::enqueue(
        pool,
        &new_job(blocked_conversation, blocked_participant, Priority::Live, 1),
    )
    .await
    .unwrap()
    .unwrap();
    let unit = queue::lease::claim(pool, &ClaimOptions::default())
        .await
        .unwrap()
        .remove(0);
    assert_eq!(unit.head().id, retrying);
    let error = json!({ "failure": "conversation_not_found", "detail": RETRY_ERROR });
    queue::lease::retry(pool, &unit.fence(), Duration::from_secs(600), &error, true)
        .await
        .unwrap();
    // A newer job of the same participant is due, but waits behind the retry.
    queue::enqueue(
        pool,
        &new_job(blocked_conversation, blocked_participant, Priority::Live, 2),
    )
    .await
    .unwrap();
    queue::enqueue(
        pool,
        &new_job(Uuid::new_v4(), Uuid::new_v4(), Priority::Live, 3),
    )
    .await
    .unwrap();
    queue::enqueue(
        pool,
        &NewJob {
            run_at: Some(chrono::Utc::now() + chrono::Duration::hours(1)),
            ..new_job(Uuid::new_v4(), Uuid::new_v4(), Priority::Live, 4)
        },
    )
    .await
    .unwrap();
    queue::enqueue(
        pool,
        &new_job(Uuid::new_v4(), Uuid::new_v4(), Priority::Backfill, 5),
    )
    .await
    .unwrap();
    // The oldest due job has been due for 3 minutes.
    sqlx::query(
        "update pdq.jobs set run_at = now() - interval '3 minutes', created_at = now() - interval '3 minutes'
         where id = (select max(id) from pdq.jobs where priority = 'live' and run_at <= now()
                     and participant_key not like $1)",
    )
    .bind(format!("c:{blocked_conversation}%"))
    .execute(pool)
    .await
    .unwrap();

    for (id, ago) in [
        (9001, "20 seconds"),
        (9002, "3 minutes"),
        (9003, "10 minutes"),
    ] {
        sqlx::query(
            "insert into pdq.finished_jobs (id, conversation_id, participant_id, attributes,
                 priority, created_at, run_at, attempts, finished_at)
             values ($1, gen_random_uuid(), gen_random_uuid(), '{\"a\":\"b\"}', 'live',
                 now() - interval '1 hour', now() - interval '1 hour', 1,
                 now() - $2::interval)",
        )
        .bind(id as i64)
        .bind(ago)
        .execute(pool)
        .await
        .unwrap();
    }
    sqlx::query(
        "insert into pdq.dead_letters (id, conversation_id, participant_id, attributes, priority,
             run_at, max_attempts, created_at, attempts, reason, dead_at)
         values (9004, gen_random_uuid(), gen_random_uuid(), '{\"a\":\"b\"}', 'live', now(), 20,
             now(), 1, 'conversation_ended', now() - interval '3 minutes')",
    )
    .execute(pool)
    .await
    .unwrap();

    budget::pause(
        pool,
        "edge-client",
        Duration::from_secs(60),
        PauseReason::RateLimited,
    )
    .await
    .unwrap();

    workers::beat(pool, &heartbeat("pdq-live", 20))
        .await
        .unwrap();
    let stale = heartbeat("pdq-stale", 20);
    workers::beat(pool, &stale).await.unwrap();
    let forgotten = heartbeat("pdq-forgotten", 20);
    workers::beat(pool, &forgotten).await.unwrap();
    for (id, ago) in [(stale.id, "5 minutes"), (forgotten.id, "2 hours")] {
        sqlx::query("update pdq.workers set last_seen_at = now() - $2::interval where id = $1")
            .bind(id)
            .bind(ago)
            .execute(pool)
            .await
            .unwrap();
    }
    retrying
}

#[tokio::test]
async fn status_reports_queue_budget_workers_and_blocked_participants() {
    let db = TestDb::new().await;
    let retrying = known_state(&db).await;
    let pruned = workers::prune(&db.pool, workers::FORGET_AFTER)
        .await
        .unwrap();
    assert_eq!(pruned, 1, "the worker silent for two hours is pruned");

    let status = queue::status(&db.pool).await.unwrap();

    let live = &status.priorities[0];
    assert_eq!(
        (
            live.priority.as_str(),
            live.due,
            live.scheduled,
            live.retrying,
            live.running
        ),
        ("live", 2, 1, 1, 0)
    );
    let age = live.oldest_due_age_secs.unwrap();
    assert!((179.0..200.0).contains(&age), "oldest due age {age}");
    let backfill = &status.priorities[1];
    assert_eq!((backfill.priority.as_str(), backfill.due), ("backfill", 1));

    let t = &status.throughput;
    assert_eq!(
        (t.applied.last_1m, t.applied.last_5m, t.applied.last_15m),
        (1, 2, 3)
    );
    assert_eq!(
        (
            t.dead_lettered.last_1m,
            t.dead_lettered.last_5m,
            t.dead_lettered.last_15m
        ),
        (0, 1, 1)
    );
    assert_eq!(t.rate_per_minute, 1.0);
    assert_eq!(t.backlog, 4, "3 due and 1 retrying");
    // The ETA runs at the smoothed rate (1 + 2 e^-0.6 + e^-2) / sum of e^-k/5 for k < 15.
    let smoothed = pdq::queue::smoothed([(0, 1), (3, 2), (10, 1)].into_iter());
    assert!((t.smoothed_rate_per_minute - smoothed).abs() < 1e-9);
    assert!((smoothed - 0.42597).abs() < 1e-4, "{smoothed}");
    assert_eq!(t.eta_secs, Some(4.0 / smoothed * 60.0));

    assert_eq!(status.budget_use.len(), 1);
    let budget = &status.budget_use[0];
    assert_eq!(budget.name, "edge-client");
    assert_eq!(budget.limit_per_minute, Some(20));
    assert_eq!(
        budget.used_last_minute, 2,
        "one applied job and one retried attempt in the last minute"
    );
    assert!(budget.paused_until.is_some());
    assert_eq!(budget.pause_reason.as_deref(), Some("rate_limited"));
    assert!(budget.paused_why.as_deref().unwrap().contains("429"));

    let states: Vec<(&str, &str)> = status
        .workers
        .iter()
        .map(|w| (w.name.as_str(), w.state.as_str()))
        .collect();
    assert_eq!(states, [("pdq-live", "running"), ("pdq-stale", "gone")]);

    assert_eq!(status.blocked_total, 1);
    let blocked = &status.blocked_participants[0];
    assert_eq!(blocked.job_id, retrying);
    assert_eq!(blocked.job_state, "retrying");
    assert_eq!(blocked.due_behind, 1);
    let hint = blocked.hint(status.generated_at);
    assert!(
        hint.starts_with(&format!("job {retrying} waits for its retry at ")),
        "{hint}"
    );
    assert!(hint.contains("1 of 20 attempts used"), "{hint}");
    assert!(hint.contains(RETRY_ERROR), "{hint}");

    assert_eq!(status.verdict.state, "paused");
    assert!(status.verdict.summary.contains("edge-client"));
    assert!(status.verdict.summary.contains("429"));
    assert_eq!(budget.used_means, queue::USED_ESTIMATED);

    // Once workers report their calls, the budget's use is their sum.
    for (name, calls) in [("pdq-a", 12), ("pdq-b", 5)] {
        let beat = Heartbeat {
            api_requests_last_minute: Some(calls),
            ..heartbeat(name, 20)
        };
        workers::beat(&db.pool, &beat).await.unwrap();
    }
    let status = queue::status(&db.pool).await.unwrap();
    assert_eq!(status.budget_use[0].used_last_minute, 17);
    assert_eq!(status.budget_use[0].used_means, queue::USED_BY_WORKERS);
    db.drop_database().await;
}

#[tokio::test]
async fn verdict_names_a_missing_worker_a_stall_and_progress() {
    let db = TestDb::new().await;
    queue::enqueue(
        &db.pool,
        &new_job(Uuid::new_v4(), Uuid::new_v4(), Priority::Live, 1),
    )
    .await
    .unwrap();
    let status = queue::status(&db.pool).await.unwrap();
    assert_eq!(status.verdict.state, "no_workers");
    assert!(status.verdict.summary.contains("pdq run"));

    workers::beat(&db.pool, &heartbeat("pdq-1", 0))
        .await
        .unwrap();
    let status = queue::status(&db.pool).await.unwrap();
    assert_eq!(status.verdict.state, "stalled", "{:?}", status.verdict);

    let mut paused = heartbeat("pdq-1", 0);
    paused.state = WorkerState::Paused;
    paused.pause_reason = Some("paused (configuration): the client secret was refused".into());
    sqlx::query("delete from pdq.workers")
        .execute(&db.pool)
        .await
        .unwrap();
    workers::beat(&db.pool, &paused).await.unwrap();
    let status = queue::status(&db.pool).await.unwrap();
    assert_eq!(status.verdict.state, "paused");
    assert!(status.verdict.summary.contains("client secret was refused"));
    db.drop_database().await;
}

fn pdq(db: &TestDb, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pdq"))
        .args(args)
        .env("DATABASE_URL", db.url())
        .env("RUST_LOG", "warn")
        .output()
        .expect("run pdq")
}

#[tokio::test]
async fn status_prints_one_screen_and_json_with_the_same_fields() {
    let db = TestDb::new().await;
    let retrying = known_state(&db).await;

    let human = pdq(&db, &["status"]);
    assert!(human.status.success(), "{human:?}");
    let text = String::from_utf8(human.stdout).unwrap();
    assert!(text.lines().count() <= 40, "one screen:\n{text}");
    assert!(
        !text.contains('\x1b'),
        "no escape codes when piped:\n{text}"
    );
    for expected in [
        "budget edge-client paused until",
        "QUEUE     DUE  SCHEDULED  RETRYING  RUNNING  OLDEST DUE  APPLIED/MIN  ETA",
        "3m0",
        "applied        1      2      3",
        "dead-lettered  0      1      1",
        // (1 + 2 e^-0.6 + e^-2) / sum of e^-k/5 for k < 15 = 0.426/min: ETA 4 / 0.426 min.
        "rate 1/min last minute, 0.4/min smoothed (15 min, weighted to the latest); backlog 4 \
         (due, retrying, running); ETA 9m23s at the smoothed rate",
        "live behind: the oldest due live job has waited 3m0",
        "20/min",
        "429 Too Many Requests",
        "pdq-stale",
        "gone",
        "blocked participants: 1",
        &format!("job {retrying} waits for its retry at "),
        RETRY_ERROR,
        "conversation_ended 1",
    ] {
        assert!(text.contains(expected), "{expected:?} missing in:\n{text}");
    }

    let json = pdq(&db, &["status", "--json"]);
    assert!(json.status.success(), "{json:?}");
    let status: Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(status["verdict"]["state"], "paused");
    assert_eq!(status["priorities"][0]["priority"], "live");
    assert_eq!(status["priorities"][0]["due"], 2);
    assert_eq!(status["priorities"][0]["scheduled"], 1);
    assert_eq!(status["priorities"][0]["retrying"], 1);
    assert_eq!(status["throughput"]["applied"]["last_15m"], 3);
    let eta = status["throughput"]["eta_secs"].as_f64().unwrap();
    assert!((eta - 563.4).abs() < 1.0, "{eta}");
    assert_eq!(status["live_behind"]["due"], 2);
    assert_eq!(status["live_behind"]["threshold_secs"], 60.0);
    // Live: two applied, one dead letter in the window (all live); backfill: none.
    let live_rate = status["priorities"][0]["applied_per_minute"]
        .as_f64()
        .unwrap();
    assert!((live_rate - 0.3213).abs() < 0.001, "{live_rate}");
    assert_eq!(status["priorities"][1]["applied_per_minute"], 0.0);
    assert_eq!(status["priorities"][1]["eta_secs"], Value::Null);
    // A higher threshold: not behind.
    let calm = pdq(&db, &["status", "--json", "--live-behind-secs", "600"]);
    let calm: Value = serde_json::from_slice(&calm.stdout).unwrap();
    assert_eq!(calm["live_behind"], Value::Null);
    assert_eq!(status["budget_use"][0]["limit_per_minute"], 20);
    assert_eq!(status["budget_use"][0]["pause_reason"], "rate_limited");
    assert_eq!(status["workers"][1]["state"], "gone");
    assert_eq!(status["blocked_participants"][0]["job_id"], retrying);
    assert_eq!(status["blocked_participants"][0]["last_error"], RETRY_ERROR);
    db.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_watch_redraws_until_interrupted() {
    let db = TestDb::new().await;
    let mut child = Command::new(env!("CARGO_BIN_EXE_pdq"))
        .args(["status", "--watch", "--interval", "1", "--json"])
        .env("DATABASE_URL", db.url())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("run pdq");
    let stdout = child.stdout.take().unwrap();
    let (sent, frames) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout).lines().take(10) {
            let Ok(line) = line else { break };
            if sent.send(line).is_err() {
                break;
            }
        }
    });
    let next = |frames: &std::sync::mpsc::Receiver<String>| {
        frames.recv_timeout(Duration::from_secs(15)).ok()
    };
    // A frame after the first one and an insert shows the new backfill job: it redraws.
    let first = tokio::task::block_in_place(|| next(&frames)).expect("a first frame");
    queue::enqueue(
        &db.pool,
        &new_job(Uuid::new_v4(), Uuid::new_v4(), Priority::Backfill, 1),
    )
    .await
    .unwrap();
    let mut later = Vec::new();
    while later.len() < 9 {
        let Some(frame) = tokio::task::block_in_place(|| next(&frames)) else {
            break;
        };
        let frame: Value = serde_json::from_str(&frame).unwrap();
        let due = frame["priorities"][1]["due"].clone();
        later.push(due.clone());
        if due == 1 {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let first: Value = serde_json::from_str(&first).unwrap();
    assert_eq!(first["priorities"][1]["due"], 0);
    assert_eq!(later.last(), Some(&Value::from(1)), "{later:?}");
    db.drop_database().await;
}

#[tokio::test]
async fn a_running_worker_keeps_a_heartbeat_and_marks_itself_stopped() {
    let db = TestDb::with_connections(12).await;
    let emulator = Emulator::start(EmulatorConfig::default()).await.unwrap();
    let mut settings = emulator.client_settings();
    // A refused secret: the probe that lifts a configuration pause keeps failing.
    settings.client_secret = SecretString::from("not-the-secret".to_owned());
    let api = Api::new(GenesysClient::new(settings).unwrap());
    let worker = Worker::new(
        db.pool.clone(),
        api,
        WorkerConfig {
            executors: 3,
            budget: Budget {
                per_minute: 120,
                name: "hb-client".to_owned(),
                ..Budget::default()
            },
            worker_id: "pdq-heartbeat-test".to_owned(),
            ..WorkerConfig::default()
        },
    );
    let health = worker.health();
    let stop = CancellationToken::new();
    let running = tokio::spawn(worker.run(stop.clone()));

    let listed = |state: &'static str| {
        let pool = db.pool.clone();
        move || {
            let pool = pool.clone();
            async move {
                workers::list(&pool)
                    .await
                    .unwrap()
                    .iter()
                    .any(|w| w.name == "pdq-heartbeat-test" && w.state == state)
            }
        }
    };
    assert!(wait_until(Duration::from_secs(5), listed("running")).await);
    let row = workers::list(&db.pool).await.unwrap().remove(0);
    assert_eq!(row.pid, std::process::id() as i32);
    assert_eq!(row.executors, 3);
    assert_eq!(row.budget_name.as_deref(), Some("hb-client"));
    assert_eq!(row.budget_per_minute, Some(120));
    assert_eq!(row.version, env!("CARGO_PKG_VERSION"));
    assert!(!row.host.is_empty());
    assert_eq!(row.api_requests_last_minute, Some(0), "no call was made");

    health.fail("the client secret was refused");
    assert!(wait_until(Duration::from_secs(8), listed("paused")).await);
    let row = workers::list(&db.pool).await.unwrap().remove(0);
    assert!(row
        .pause_reason
        .as_deref()
        .unwrap()
        .contains("the client secret was refused"));
    let status = queue::status(&db.pool).await.unwrap();
    assert_eq!(status.budget_use[0].limit_per_minute, Some(120));

    stop.cancel();
    running.await.unwrap().unwrap();
    let row = workers::list(&db.pool).await.unwrap().remove(0);
    assert_eq!(row.state, "stopped");
    assert!(row.stopped_at.is_some());
    db.drop_database().await;
}
