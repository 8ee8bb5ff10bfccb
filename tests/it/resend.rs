//! A unit whose earlier PATCH may have landed unseen (an error or no answer after it was sent,
//! a lease rescued from a worker that died) reads the participant before sending again: when
//! every value it would send is there already, it is recorded as applied without a second
//! PATCH. Every verdict is read from the emulator's PATCH history.

use std::time::Duration;

use pdq::emulator::{EmulatorConfig, Faults};
use pdq::queue::Locators;
use pdq::worker::{UnitOutcome, Worker};
use serde_json::json;
use uuid::Uuid;

use crate::app::{fast, job, run_in, values_sent, TestApp};

/// How many times the conversation was read (`GET /api/v2/conversations/{id}`).
fn conversation_reads(app: &TestApp) -> usize {
    app.emulator
        .request_log()
        .iter()
        .filter(|r| r.route == "GET /api/v2/conversations/{id}")
        .count()
}

async fn archived_as_applied(app: &TestApp, id: i64) -> bool {
    sqlx::query_scalar("select exists (select 1 from pdq.finished_jobs where id = $1)")
        .bind(id)
        .fetch_one(&app.db.pool)
        .await
        .unwrap()
}

/// A job `{"tier": "gold"}` whose first attempt met `faults`, the faults gone afterwards;
/// returns the app, the participant, the worker, the job id and the first attempt's outcomes.
async fn first_attempt_under(
    faults: Faults,
) -> (TestApp, (Uuid, Uuid), Worker, i64, Vec<UnitOutcome>) {
    let app = TestApp::new(EmulatorConfig::default()).await;
    let (c, pid) = app.customer_conversation();
    let worker = app.worker(fast());
    let id = app
        .enqueue(job(Locators::ids(c.id, pid), json!({"tier": "gold"})))
        .await;
    app.emulator.set_faults(faults);
    let outcomes = worker.process_next().await.unwrap();
    app.emulator.set_faults(Faults::default());
    (app, (c.id, pid), worker, id, outcomes)
}

#[tokio::test]
async fn a_retry_whose_value_landed_behind_a_503_is_not_sent_again() {
    let (app, (cid, pid), worker, id, outcomes) = first_attempt_under(Faults {
        apply_then_error_rate: 1.0,
        error_statuses: vec![503],
        ..Faults::default()
    })
    .await;
    assert!(
        matches!(outcomes.as_slice(), [UnitOutcome::Retried { .. }]),
        "{outcomes:?}"
    );
    run_in(&app, id, 0).await;
    let reads = conversation_reads(&app);
    app.drain(&worker, Duration::from_secs(10)).await;
    assert_eq!(
        values_sent(&app, cid, pid, "tier"),
        vec!["gold"],
        "the value the API applied behind its 503 is not sent a second time"
    );
    assert_eq!(conversation_reads(&app), reads + 1, "one read settled it");
    assert!(archived_as_applied(&app, id).await);
    let landed: Option<i64> = sqlx::query_scalar(
        "select seq from pdq.applied_keys where key = 'tier' and target like '%' || $1",
    )
    .bind(pid.to_string())
    .fetch_optional(&app.db.pool)
    .await
    .unwrap();
    assert_eq!(
        landed,
        Some(id),
        "recorded as landed, so older values stay out"
    );
    app.db.drop_database().await;
}

#[tokio::test]
async fn a_retry_whose_value_did_not_land_is_sent() {
    let (app, (cid, pid), worker, id, _) = first_attempt_under(Faults {
        error_rate: 1.0,
        error_statuses: vec![503],
        ..Faults::default()
    })
    .await;
    assert!(values_sent(&app, cid, pid, "tier").is_empty());
    run_in(&app, id, 0).await;
    app.drain(&worker, Duration::from_secs(10)).await;
    assert_eq!(values_sent(&app, cid, pid, "tier"), vec!["gold"]);
    assert!(archived_as_applied(&app, id).await);
    app.db.drop_database().await;
}

#[tokio::test]
async fn a_rescued_unit_sends_only_when_some_value_is_missing() {
    let app = TestApp::new(EmulatorConfig::default()).await;
    let (c, pid) = app.customer_conversation();
    let worker = app.worker(fast());
    // The values a worker that died after its PATCH had sent: on the participant already.
    let first = app
        .enqueue(job(
            Locators::ids(c.id, pid),
            json!({"tier": "gold", "case": "42"}),
        ))
        .await;
    app.drain(&worker, Duration::from_secs(10)).await;
    let again = app
        .enqueue(job(
            Locators::ids(c.id, pid),
            json!({"tier": "gold", "case": "42"}),
        ))
        .await;
    let partly = app
        .enqueue(job(Locators::ids(c.id, pid), json!({"case": "43"})))
        .await;
    assert!(first < again && again < partly);
    // As a lease rescue leaves a job: attempted, and maybe sent.
    let rescued = |id: i64| {
        sqlx::query(
            "update pdq.jobs set maybe_sent = true, attempts = 1, first_attempt_at = now()
             where id = $1",
        )
        .bind(id)
        .execute(&app.db.pool)
    };
    rescued(again).await.unwrap();
    run_in(&app, partly, 3_600).await;
    for _ in 0..50 {
        if worker.process_next().await.unwrap().is_empty() {
            break;
        }
    }
    assert!(archived_as_applied(&app, again).await);
    assert_eq!(
        values_sent(&app, c.id, pid, "tier"),
        vec!["gold"],
        "every value of the rescued unit is there: nothing sent again"
    );
    rescued(partly).await.unwrap();
    run_in(&app, partly, 0).await;
    app.drain(&worker, Duration::from_secs(10)).await;
    assert_eq!(
        values_sent(&app, c.id, pid, "case"),
        vec!["42", "43"],
        "a rescued unit with a value missing sends it"
    );
    app.db.drop_database().await;
}
