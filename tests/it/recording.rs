//! Recording what was applied: a recording statement that fails never turns into a second
//! PATCH, one unrecordable unit does not hold up the others, and a graceful stop records what
//! was applied and gives the rest back without spending an attempt, whatever the unit was
//! doing (split, sending bodies over 512 kB, waiting for the request budget).
//!
//! Every verdict about delivery comes from the emulator's PATCH history.

use std::time::Duration;

use pdq::emulator::{AttributeLimits, CreatedConversation, EmulatorConfig, Faults};
use pdq::metrics::Condition;
use pdq::queue::Locators;
use pdq::worker::{Api, Budget, Worker, WorkerConfig};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::app::{fast, job, values_sent, TestApp};
use crate::helpers::wait_until;

const PATCH: &str = "PATCH /api/v2/conversations/{cid}/participants/{pid}/attributes";

/// Makes every insert into `pdq.finished_jobs` fail as a full disk does (SQLSTATE 53100), or
/// only the insert of job `only`.
async fn refuse_finishing(app: &TestApp, only: Option<i64>) {
    let condition = only.map_or("true".to_owned(), |id| format!("new.id = {id}"));
    sqlx::query(&format!(
        "create function public.refuse_finishing() returns trigger language plpgsql as $$
         begin
             if {condition} then
                 raise exception 'could not extend file \"base/16384/16999\": No space left on device'
                     using errcode = '53100';
             end if;
             return new;
         end $$"
    ))
    .execute(&app.db.pool)
    .await
    .unwrap();
    sqlx::query(
        "create trigger refuse_finishing before insert on pdq.finished_jobs
         for each row execute function public.refuse_finishing()",
    )
    .execute(&app.db.pool)
    .await
    .unwrap();
}

async fn allow_finishing(app: &TestApp) {
    sqlx::query("drop trigger refuse_finishing on pdq.finished_jobs")
        .execute(&app.db.pool)
        .await
        .unwrap();
}

/// Serves the worker's `/healthz` on a free local port; returns its URL.
async fn serve_healthz(worker: &Worker) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/healthz", listener.local_addr().unwrap());
    let router = pdq::metrics::router(worker.metrics(), worker.health());
    tokio::spawn(async move { axum::serve(listener, router).await });
    url
}

async fn healthz(url: &str) -> (u16, String) {
    let response = reqwest::get(url).await.unwrap();
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

/// How many PATCHes carried each target's `n`.
fn sends(app: &TestApp, targets: &[(Uuid, Uuid)]) -> Vec<usize> {
    targets
        .iter()
        .map(|&(cid, pid)| values_sent(app, cid, pid, "n").len())
        .collect()
}

/// `(state, attempts)` of the jobs still queued, by id.
async fn queued(app: &TestApp) -> Vec<(i64, String, i32)> {
    sqlx::query_as("select id, state::text, attempts from pdq.jobs order by id")
        .fetch_all(&app.db.pool)
        .await
        .unwrap()
}

/// A worker whose API client times out after `timeout`.
fn worker_with_timeout(app: &TestApp, timeout: Duration, config: WorkerConfig) -> Worker {
    let api = Api::new(app.client("pdq-demo-secret", timeout));
    Worker::new(app.db.pool.clone(), api, config)
}

#[tokio::test]
async fn while_recording_fails_applied_units_are_held_not_resent_and_claiming_stops() {
    let app = TestApp::new(EmulatorConfig::default()).await;
    let targets = app.customers_with_one_job(6).await;
    refuse_finishing(&app, None).await;
    // A short lease: an applied unit that is not held any more would run again within seconds.
    let worker = app.worker(WorkerConfig {
        lease: Duration::from_secs(2),
        ..fast()
    });
    let health = worker.health();
    let url = serve_healthz(&worker).await;
    let stop = CancellationToken::new();
    let running = tokio::spawn(worker.clone().run(stop.clone()));
    assert!(
        wait_until(Duration::from_secs(10), || async {
            sends(&app, &targets).iter().all(|&n| n >= 1)
        })
        .await,
        "every job is applied once: {:?}",
        sends(&app, &targets)
    );
    assert!(
        wait_until(Duration::from_secs(5), || async {
            health.has(Condition::Recording)
        })
        .await,
        "the recording failure shows in /healthz"
    );
    // A job inserted now is not claimed while nothing can be recorded.
    let (late_c, late_p) = app.customer_conversation();
    app.enqueue(job(Locators::ids(late_c.id, late_p), json!({"n": "late"})))
        .await;
    // Several leases long: without the hold, each unit would be taken back and sent again.
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(sends(&app, &targets), vec![1; 6], "nothing is sent twice");
    assert!(
        values_sent(&app, late_c.id, late_p, "n").is_empty(),
        "no claim while recording fails"
    );
    let (status, body) = healthz(&url).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("recording failing"), "{body}");
    assert!(body.contains("could not extend file"), "{body}");
    assert!(body.contains("claiming has stopped"), "{body}");

    allow_finishing(&app).await;
    assert!(
        wait_until(Duration::from_secs(20), || async {
            app.db.count("pdq.jobs").await == 0
        })
        .await,
        "everything is recorded and the late job applied: {:?}",
        queued(&app).await
    );
    assert!(
        wait_until(Duration::from_secs(5), || async { !health.is_unhealthy() }).await,
        "{}",
        health.reason()
    );
    assert_eq!(healthz(&url).await.0, 200);
    stop.cancel();
    running.await.unwrap().unwrap();
    assert_eq!(sends(&app, &targets), vec![1; 6], "each job PATCHed once");
    assert_eq!(values_sent(&app, late_c.id, late_p, "n"), vec!["late"]);
    assert_eq!(app.db.count("pdq.finished_jobs").await, 7);
    app.db.drop_database().await;
}

#[tokio::test]
async fn one_job_that_cannot_be_recorded_does_not_hold_up_the_others() {
    let app = TestApp::new(EmulatorConfig::default()).await;
    let targets = app.customers_with_one_job(16).await;
    let ids: Vec<i64> = sqlx::query_scalar("select id from pdq.jobs order by id")
        .fetch_all(&app.db.pool)
        .await
        .unwrap();
    let bad = ids[5];
    refuse_finishing(&app, Some(bad)).await;
    let worker = app.worker(WorkerConfig {
        lease: Duration::from_secs(2),
        executors: 8,
        ..fast()
    });
    let health = worker.health();
    let url = serve_healthz(&worker).await;
    let stop = CancellationToken::new();
    let running = tokio::spawn(worker.clone().run(stop.clone()));
    assert!(
        wait_until(Duration::from_secs(10), || async {
            app.db.count("pdq.finished_jobs").await == 15
        })
        .await,
        "the other jobs are recorded: {:?}",
        queued(&app).await
    );
    // The unrecordable job is held, not claimed or sent again, and named in /healthz.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(sends(&app, &targets), vec![1; 16], "nothing is sent twice");
    assert!(health.has(Condition::Recording), "{}", health.reason());
    let (status, body) = healthz(&url).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains(&format!("job {bad}")), "{body}");
    assert!(body.contains("could not extend file"), "{body}");
    // Claiming goes on meanwhile.
    let (c, p) = app.customer_conversation();
    app.enqueue(job(Locators::ids(c.id, p), json!({"n": "meanwhile"})))
        .await;
    assert!(
        wait_until(Duration::from_secs(10), || async {
            app.db.count("pdq.finished_jobs").await == 16
        })
        .await,
        "a job inserted meanwhile is applied and recorded"
    );
    assert_eq!(values_sent(&app, c.id, p, "n"), vec!["meanwhile"]);

    allow_finishing(&app).await;
    assert!(
        wait_until(Duration::from_secs(15), || async {
            app.db.count("pdq.jobs").await == 0
        })
        .await,
        "the held job is recorded once it can be: {:?}",
        queued(&app).await
    );
    assert!(
        wait_until(Duration::from_secs(5), || async { !health.is_unhealthy() }).await,
        "{}",
        health.reason()
    );
    stop.cancel();
    running.await.unwrap().unwrap();
    assert_eq!(sends(&app, &targets), vec![1; 16], "each job PATCHed once");
    app.db.drop_database().await;
}

#[tokio::test]
async fn a_stop_during_a_split_records_the_applied_jobs_and_gives_back_the_rest() {
    let app = TestApp::new(EmulatorConfig::default()).await;
    let (c, pid) = app.customer_conversation();
    // Within pdq's 256-character bound, over the emulator's (guessed) 255: the API refuses it.
    let refused_key = "x".repeat(256);
    for attributes in [
        json!({"a": "1"}),
        json!({ refused_key.as_str(): "refused" }),
        json!({"b": "3"}),
        json!({"c": "4"}),
    ] {
        app.enqueue(job(Locators::ids(c.id, pid), attributes)).await;
    }
    app.emulator.set_faults(Faults {
        latency_ms: 300,
        ..Faults::default()
    });
    // A grace shorter than a request plus its margin: once the stop is asked, nothing leaves.
    let first = app.worker(WorkerConfig {
        lease: Duration::from_secs(4),
        shutdown_grace: Duration::from_secs(1),
        ..fast()
    });
    let stop = CancellationToken::new();
    let running = tokio::spawn(first.run(stop.clone()));
    assert!(
        wait_until(Duration::from_secs(10), || async {
            !values_sent(&app, c.id, pid, "a").is_empty()
        })
        .await,
        "the split sends the first job alone"
    );
    stop.cancel();
    running.await.unwrap().unwrap();
    assert_eq!(values_sent(&app, c.id, pid, "b"), Vec::<String>::new());
    let left = queued(&app).await;
    assert!(!left.is_empty());
    for (id, state, attempts) in &left {
        assert_eq!(state, "pending", "job {id} is given back: {left:?}");
        assert_eq!(*attempts, 0, "job {id} keeps its attempt: {left:?}");
    }
    assert_eq!(
        app.db.count("pdq.inflight").await,
        0,
        "the participant is free"
    );

    app.emulator.set_faults(Faults::default());
    let second = app.worker(fast());
    assert!(
        app.run_until_drained(&second, Duration::from_secs(20))
            .await
    );
    for (key, value) in [("a", "1"), ("b", "3"), ("c", "4")] {
        assert_eq!(values_sent(&app, c.id, pid, key), vec![value], "{key}");
    }
    assert_eq!(app.db.count("pdq.finished_jobs").await, 3);
    let dead = app.dead_reasons().await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].0, "bad_request");
    app.db.drop_database().await;
}

/// A budget of this process only, one request per second.
fn one_per_second() -> Budget {
    Budget {
        per_minute: 60,
        shared: false,
        ..Budget::default()
    }
}

#[tokio::test]
async fn a_stop_while_the_patch_waits_for_the_budget_gives_the_unit_back() {
    let app = TestApp::new(EmulatorConfig::default()).await;
    let (c, pid) = app.customer_conversation();
    // By purpose: the conversation GET takes the first request slot, the PATCH waits about a
    // second for the next one.
    app.enqueue(job(
        Locators::conversation(c.id).purpose("customer"),
        json!({"n": "1"}),
    ))
    .await;
    app.emulator.set_faults(Faults {
        latency_ms: 200,
        ..Faults::default()
    });
    // The wait ends inside the grace, too late for a request and its margin.
    let first = worker_with_timeout(
        &app,
        Duration::from_secs(1),
        WorkerConfig {
            executors: 1,
            budget: one_per_second(),
            lease: Duration::from_secs(4),
            shutdown_grace: Duration::from_millis(1_800),
            ..fast()
        },
    );
    let stop = CancellationToken::new();
    let running = tokio::spawn(first.run(stop.clone()));
    assert!(
        wait_until(Duration::from_secs(10), || async {
            app.emulator
                .request_log()
                .iter()
                .any(|r| r.route.starts_with("GET /api/v2/conversations/"))
        })
        .await
    );
    stop.cancel();
    running.await.unwrap().unwrap();
    assert_eq!(app.emulator.count(PATCH, None), 0, "nothing was sent");
    let left = queued(&app).await;
    assert_eq!(left.len(), 1);
    assert_eq!(
        (left[0].1.as_str(), left[0].2),
        ("pending", 0),
        "given back, attempt kept"
    );

    app.emulator.set_faults(Faults::default());
    let second = app.worker(fast());
    assert!(
        app.run_until_drained(&second, Duration::from_secs(20))
            .await
    );
    assert_eq!(values_sent(&app, c.id, pid, "n"), vec!["1"]);
    app.db.drop_database().await;
}

/// An emulator without a key limit and one customer with three jobs by purpose of 100 keys
/// with 2,000-character values each: about 600 kB merged, two request bodies.
async fn one_large_update() -> (TestApp, CreatedConversation, Uuid) {
    let app = TestApp::new(EmulatorConfig {
        attribute_limits: AttributeLimits {
            max_keys: None,
            ..AttributeLimits::default()
        },
        ..EmulatorConfig::default()
    })
    .await;
    let (c, pid) = app.customer_conversation();
    for j in 0..3 {
        let mut attributes = serde_json::Map::new();
        for k in 0..100 {
            attributes.insert(
                format!("k{j}-{k:03}"),
                json!(format!("{j}{k:03}").repeat(500)),
            );
        }
        app.enqueue(job(
            Locators::conversation(c.id).purpose("customer"),
            attributes.into(),
        ))
        .await;
    }
    (app, c, pid)
}

#[tokio::test]
async fn a_stop_before_the_bodies_of_a_large_update_gives_it_back_whole() {
    let (app, c, pid) = one_large_update().await;
    app.emulator.set_faults(Faults {
        latency_ms: 200,
        ..Faults::default()
    });
    // The first body's slot comes about 0.8 s after the stop and the second's a second later:
    // the first alone would fit in the grace, both do not.
    let first = worker_with_timeout(
        &app,
        Duration::from_secs(1),
        WorkerConfig {
            executors: 1,
            budget: one_per_second(),
            lease: Duration::from_secs(4),
            shutdown_grace: Duration::from_millis(3_300),
            ..fast()
        },
    );
    let stop = CancellationToken::new();
    let running = tokio::spawn(first.run(stop.clone()));
    assert!(
        wait_until(Duration::from_secs(10), || async {
            app.emulator
                .request_log()
                .iter()
                .any(|r| r.route.starts_with("GET /api/v2/conversations/"))
        })
        .await
    );
    stop.cancel();
    running.await.unwrap().unwrap();
    assert_eq!(
        app.emulator.count(PATCH, None),
        0,
        "no body of a unit that could not send them all"
    );
    let left = queued(&app).await;
    assert_eq!(left.len(), 3);
    for (id, state, attempts) in &left {
        assert_eq!((state.as_str(), *attempts), ("pending", 0), "job {id}");
    }

    app.emulator.set_faults(Faults::default());
    let second = app.worker(fast());
    assert!(
        app.run_until_drained(&second, Duration::from_secs(20))
            .await
    );
    let patches = app.emulator.patch_history(c.id, pid);
    assert_eq!(patches.len(), 2, "600 kB in two PATCHes, each sent once");
    let mut keys: Vec<&String> = patches.iter().flat_map(|p| p.attributes.keys()).collect();
    let total = keys.len();
    keys.sort();
    keys.dedup();
    assert_eq!(
        (total, keys.len()),
        (300, 300),
        "every key sent exactly once"
    );
    app.db.drop_database().await;
}

#[tokio::test]
async fn a_stop_between_the_bodies_of_a_large_update_sends_no_body_twice() {
    let (app, c, pid) = one_large_update().await;
    // One request a second: the GET, then the bodies. A stop right after the first body
    // reached the API leaves a grace (1.2 s) shorter than a wait for another request slot.
    let first = worker_with_timeout(
        &app,
        Duration::from_secs(1),
        WorkerConfig {
            executors: 1,
            budget: one_per_second(),
            lease: Duration::from_secs(4),
            shutdown_grace: Duration::from_millis(1_200),
            ..fast()
        },
    );
    let stop = CancellationToken::new();
    let running = tokio::spawn(first.run(stop.clone()));
    assert!(
        wait_until(Duration::from_secs(15), || async {
            app.emulator.count(PATCH, None) > 0
        })
        .await
    );
    stop.cancel();
    running.await.unwrap().unwrap();

    let second = app.worker(fast());
    assert!(
        app.run_until_drained(&second, Duration::from_secs(20))
            .await
    );
    let patches = app.emulator.patch_history(c.id, pid);
    let mut keys: Vec<&String> = patches.iter().flat_map(|p| p.attributes.keys()).collect();
    let total = keys.len();
    keys.sort();
    keys.dedup();
    assert_eq!(
        (patches.len(), total, keys.len()),
        (2, 300, 300),
        "the bodies of one unit go out back to back: a stop after the first sends no body twice"
    );
    app.db.drop_database().await;
}
