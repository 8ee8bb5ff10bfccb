//! Only values that landed supersede: a newer job that never lands leaves the older value in
//! place, the history of landed values outlives anything older that can still arrive, and a
//! job id sequence that goes backwards never turns a new update into a silent drop. Every
//! verdict is read from the emulator's PATCH history.

use std::time::Duration;

use pdq::emulator::{EmulatorConfig, Faults};
use pdq::queue::{self, DeadLetterFilter, Locators, NewJob, Retained};
use pdq::worker::{UnitOutcome, Worker};
use serde_json::json;
use uuid::Uuid;

use crate::app::{fast, job, run_in, values_sent, TestApp};
use crate::helpers::wait_until;

/// Puts a pending job in the state a 503 leaves it in: attempted once, waiting for its retry
/// `secs` from now.
async fn waiting_for_retry(app: &TestApp, id: i64, secs: i64) {
    sqlx::query(
        "update pdq.jobs set attempts = 1, first_attempt_at = now(), last_attempt_at = now(),
             run_at = now() + $2 * interval '1 second',
             last_error = '{\"failure\": \"transient\", \"http_status\": 503}'
         where id = $1 and state = 'pending'",
    )
    .bind(id)
    .bind(secs)
    .execute(&app.db.pool)
    .await
    .unwrap();
}

async fn is_queued(app: &TestApp, id: i64) -> bool {
    sqlx::query_scalar("select exists (select 1 from pdq.jobs where id = $1)")
        .bind(id)
        .fetch_one(&app.db.pool)
        .await
        .unwrap()
}

async fn dead_reason(app: &TestApp, id: i64) -> Option<String> {
    sqlx::query_scalar("select reason from pdq.dead_letters where id = $1")
        .bind(id)
        .fetch_optional(&app.db.pool)
        .await
        .unwrap()
}

/// Runs claims until job `id` has left the queue (applied or dead-lettered).
async fn process_until_gone(app: &TestApp, worker: &Worker, id: i64) {
    for _ in 0..200 {
        if !is_queued(app, id).await {
            return;
        }
        if worker.process_next().await.unwrap().is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    panic!("job {id} did not leave the queue");
}

/// Job `B0` (ids) waits for its retry after a 503; then, in one transaction, `A` names the
/// participant by purpose (`k=from-A`) and `B` names it by ids (`b`'s attributes and options).
/// Returns `(b0, a, b)`. `B` sits behind `B0`, so `A` runs first.
async fn older_by_purpose_newer_by_ids(
    app: &TestApp,
    cid: Uuid,
    pid: Uuid,
    b: NewJob,
) -> (i64, i64, i64) {
    let b0 = app
        .enqueue(job(Locators::ids(cid, pid), json!({"other": "b0"})))
        .await;
    waiting_for_retry(app, b0, 3_600).await;
    let mut tx = app.db.pool.begin().await.unwrap();
    let a = queue::enqueue(
        &mut *tx,
        &job(
            Locators::conversation(cid).purpose("customer"),
            json!({"k": "from-A"}),
        ),
    )
    .await
    .unwrap()
    .unwrap();
    let b = queue::enqueue(&mut *tx, &b).await.unwrap().unwrap();
    tx.commit().await.unwrap();
    assert!(a < b);
    (b0, a, b)
}

#[tokio::test]
async fn an_older_value_reaches_the_api_when_the_newer_job_expires() {
    let app = TestApp::new(EmulatorConfig::default()).await;
    let (c, pid) = app.customer_conversation();
    let newer = NewJob {
        expires_at: Some(chrono::Utc::now() + chrono::Duration::seconds(60)),
        ..job(Locators::ids(c.id, pid), json!({"k": "from-B"}))
    };
    let (b0, a, b) = older_by_purpose_newer_by_ids(&app, c.id, pid, newer).await;
    let worker = app.worker(fast());
    process_until_gone(&app, &worker, a).await;
    // B's deadline passes while B0 waits for its retry (the stored times moved back).
    sqlx::query(
        "update pdq.jobs set run_at = now() - interval '2 seconds',
             expires_at = now() - interval '1 second'
         where id = $1",
    )
    .bind(b)
    .execute(&app.db.pool)
    .await
    .unwrap();
    run_in(&app, b0, 0).await;
    app.drain(&worker, Duration::from_secs(10)).await;
    assert_eq!(dead_reason(&app, b).await.as_deref(), Some("expired"));
    assert_eq!(values_sent(&app, c.id, pid, "k"), vec!["from-A"]);
    assert_eq!(values_sent(&app, c.id, pid, "other"), vec!["b0"]);
    app.db.drop_database().await;
}

#[tokio::test]
async fn an_older_value_reaches_the_api_when_the_newer_job_is_refused_alone() {
    let app = TestApp::new(EmulatorConfig::default()).await;
    let (c, pid) = app.customer_conversation();
    let too_long = "x".repeat(2_100);
    let newer = job(Locators::ids(c.id, pid), json!({ "k": too_long }));
    let (b0, a, b) = older_by_purpose_newer_by_ids(&app, c.id, pid, newer).await;
    let worker = app.worker(fast());
    process_until_gone(&app, &worker, a).await;
    run_in(&app, b0, 0).await;
    app.drain(&worker, Duration::from_secs(10)).await;
    assert!(dead_reason(&app, b).await.is_some(), "B was refused");
    assert_eq!(dead_reason(&app, b0).await, None, "B0 was applied");
    assert_eq!(values_sent(&app, c.id, pid, "k"), vec!["from-A"]);
    assert_eq!(
        app.emulator.attributes_of(c.id, pid).unwrap().get("k"),
        Some(&"from-A".to_owned())
    );
    app.db.drop_database().await;
}

#[tokio::test]
async fn an_older_value_reaches_the_api_when_the_newer_job_is_cancelled() {
    let app = TestApp::new(EmulatorConfig::default()).await;
    let (c, pid) = app.customer_conversation();
    let newer = job(Locators::ids(c.id, pid), json!({"k": "from-B"}));
    let (b0, a, b) = older_by_purpose_newer_by_ids(&app, c.id, pid, newer).await;
    let worker = app.worker(fast());
    process_until_gone(&app, &worker, a).await;
    let cancelled: Vec<i64> =
        sqlx::query_scalar("select job_id from pdq.cancel_jobs(array[$1]::bigint[], 'wrong')")
            .bind(b)
            .fetch_all(&app.db.pool)
            .await
            .unwrap();
    assert_eq!(cancelled, vec![b]);
    run_in(&app, b0, 0).await;
    app.drain(&worker, Duration::from_secs(10)).await;
    assert_eq!(values_sent(&app, c.id, pid, "k"), vec!["from-A"]);
    app.db.drop_database().await;
}

#[tokio::test]
async fn a_newer_job_not_yet_attempted_lets_the_older_value_go_first_and_then_wins() {
    let app = TestApp::new(EmulatorConfig::default()).await;
    let (c, pid) = app.customer_conversation();
    let newer = job(Locators::ids(c.id, pid), json!({"k": "from-B"}));
    let (b0, a, _) = older_by_purpose_newer_by_ids(&app, c.id, pid, newer).await;
    let worker = app.worker(fast());
    process_until_gone(&app, &worker, a).await;
    run_in(&app, b0, 0).await;
    app.drain(&worker, Duration::from_secs(10)).await;
    assert_eq!(values_sent(&app, c.id, pid, "k"), vec!["from-A", "from-B"]);
    app.db.drop_database().await;
}

/// `A` (purpose, `k=from-A`, scheduled an hour ahead) and `B` (ids, `k=from-B`, two attempts)
/// in one transaction; `B`'s first attempt gets a 503 and waits for its retry; then `A` falls
/// due. Returns `(a, b)` with `A`'s first run done: it must have waited, sending nothing.
async fn older_due_while_newer_waits_for_its_retry(
    app: &TestApp,
    worker: &Worker,
    cid: Uuid,
    pid: Uuid,
) -> (i64, i64) {
    let mut tx = app.db.pool.begin().await.unwrap();
    let a = queue::enqueue(
        &mut *tx,
        &NewJob {
            run_at: Some(chrono::Utc::now() + chrono::Duration::hours(1)),
            ..job(
                Locators::conversation(cid).purpose("customer"),
                json!({"k": "from-A"}),
            )
        },
    )
    .await
    .unwrap()
    .unwrap();
    let b = queue::enqueue(
        &mut *tx,
        &NewJob {
            max_attempts: Some(2),
            ..job(Locators::ids(cid, pid), json!({"k": "from-B"}))
        },
    )
    .await
    .unwrap()
    .unwrap();
    tx.commit().await.unwrap();
    app.emulator.set_faults(Faults {
        error_rate: 1.0,
        error_statuses: vec![503],
        ..Faults::default()
    });
    let outcomes = worker.process_next().await.unwrap();
    assert!(
        matches!(outcomes.as_slice(), [UnitOutcome::Retried { .. }]),
        "{outcomes:?}"
    );
    app.emulator.set_faults(Faults::default());
    run_in(app, b, 3_600).await;
    run_in(app, a, 0).await;
    let outcomes = worker.process_next().await.unwrap();
    assert!(
        matches!(outcomes.as_slice(), [UnitOutcome::Retried { .. }]),
        "A waits for B: {outcomes:?}"
    );
    assert!(is_queued(app, a).await, "A was not archived");
    let attempts: i32 = sqlx::query_scalar("select attempts from pdq.jobs where id = $1")
        .bind(a)
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    assert_eq!(attempts, 0, "waiting spends no attempt");
    assert!(values_sent(app, cid, pid, "k").is_empty());
    (a, b)
}

#[tokio::test]
async fn an_older_value_waits_for_a_newer_attempted_job_and_lands_when_its_retries_run_out() {
    let app = TestApp::new(EmulatorConfig::default()).await;
    let (c, pid) = app.customer_conversation();
    let worker = app.worker(fast());
    let (a, b) = older_due_while_newer_waits_for_its_retry(&app, &worker, c.id, pid).await;
    run_in(&app, a, 3_600).await;
    run_in(&app, b, 0).await;
    app.emulator.set_faults(Faults {
        error_rate: 1.0,
        error_statuses: vec![503],
        ..Faults::default()
    });
    process_until_gone(&app, &worker, b).await;
    assert_eq!(
        dead_reason(&app, b).await.as_deref(),
        Some("retries_exhausted")
    );
    app.emulator.set_faults(Faults::default());
    run_in(&app, a, 0).await;
    app.drain(&worker, Duration::from_secs(10)).await;
    assert_eq!(values_sent(&app, c.id, pid, "k"), vec!["from-A"]);
    app.db.drop_database().await;
}

#[tokio::test]
async fn an_older_value_waits_for_a_newer_attempted_job_and_is_left_out_once_it_lands() {
    let app = TestApp::new(EmulatorConfig::default()).await;
    let (c, pid) = app.customer_conversation();
    let worker = app.worker(fast());
    let (a, b) = older_due_while_newer_waits_for_its_retry(&app, &worker, c.id, pid).await;
    run_in(&app, a, 3_600).await;
    run_in(&app, b, 0).await;
    process_until_gone(&app, &worker, b).await;
    run_in(&app, a, 0).await;
    app.drain(&worker, Duration::from_secs(10)).await;
    assert_eq!(values_sent(&app, c.id, pid, "k"), vec!["from-B"]);
    let superseded: Option<Vec<String>> =
        sqlx::query_scalar("select superseded_keys from pdq.finished_jobs where id = $1")
            .bind(a)
            .fetch_one(&app.db.pool)
            .await
            .unwrap();
    assert_eq!(superseded, Some(vec!["k".to_owned()]));
    app.db.drop_database().await;
}

/// Moves every stored time of queued and applied jobs, landed values and dead letters `days`
/// back (a queued job's `run_at` stays: it is when it is due).
async fn days_pass(app: &TestApp, days: i32) {
    for statement in [
        "update pdq.jobs set created_at = created_at - $1 * interval '1 day'",
        "update pdq.applied_keys set applied_at = applied_at - $1 * interval '1 day'",
        "update pdq.finished_jobs set finished_at = finished_at - $1 * interval '1 day',
             created_at = created_at - $1 * interval '1 day'",
        "update pdq.dead_letters set dead_at = dead_at - $1 * interval '1 day',
             created_at = created_at - $1 * interval '1 day'",
    ] {
        sqlx::query(statement)
            .bind(days)
            .execute(&app.db.pool)
            .await
            .unwrap();
    }
}

/// What the worker prunes with the default seven days' retention of applied jobs.
async fn prune_applied(app: &TestApp) {
    let week = Duration::from_secs(7 * 86_400);
    for what in [Retained::FinishedJobs, Retained::AppliedKeys] {
        queue::prune(&app.db.pool, what, week, 10_000)
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn a_dead_letter_requeued_after_the_applied_jobs_were_pruned_keeps_the_newer_value() {
    let app = TestApp::new(EmulatorConfig::default()).await;
    let (c, pid) = app.customer_conversation();
    let old = app
        .enqueue(NewJob {
            run_at: Some(chrono::Utc::now() - chrono::Duration::seconds(2)),
            expires_at: Some(chrono::Utc::now() - chrono::Duration::seconds(1)),
            ..job(Locators::ids(c.id, pid), json!({"tier": "old"}))
        })
        .await;
    let new = app
        .enqueue(job(Locators::ids(c.id, pid), json!({"tier": "new"})))
        .await;
    let worker = app.worker(fast());
    app.drain(&worker, Duration::from_secs(10)).await;
    assert_eq!(dead_reason(&app, old).await.as_deref(), Some("expired"));
    assert_eq!(values_sent(&app, c.id, pid, "tier"), vec!["new"]);

    days_pass(&app, 8).await;
    prune_applied(&app).await;
    assert_eq!(
        app.db.count("pdq.finished_jobs").await,
        0,
        "applied jobs pruned"
    );

    let dropped = queue::console::requeue_would_drop(&app.db.pool, &[old])
        .await
        .unwrap();
    let dropped: Vec<(i64, String, i64)> = dropped
        .into_iter()
        .map(|d| (d.dead_letter_id, d.key, d.newer_seq))
        .collect();
    assert_eq!(dropped, vec![(old, "tier".to_owned(), new)]);
    let filter = DeadLetterFilter {
        ids: vec![old],
        ..DeadLetterFilter::default()
    };
    assert_eq!(
        queue::dlq::requeue(&app.db.pool, &filter, false)
            .await
            .unwrap(),
        1
    );
    app.drain(&worker, Duration::from_secs(10)).await;
    assert_eq!(values_sent(&app, c.id, pid, "tier"), vec!["new"]);
    assert_eq!(
        app.emulator.attributes_of(c.id, pid).unwrap().get("tier"),
        Some(&"new".to_owned())
    );

    // Nothing older can arrive any more: the history goes with the next prune.
    prune_applied(&app).await;
    assert_eq!(app.db.count("pdq.applied_keys").await, 0);
    app.db.drop_database().await;
}

#[tokio::test]
async fn a_job_scheduled_far_ahead_keeps_the_history_of_newer_values_until_it_runs() {
    let app = TestApp::new(EmulatorConfig::default()).await;
    let (c, pid) = app.customer_conversation();
    let later = app
        .enqueue(NewJob {
            run_at: Some(chrono::Utc::now() + chrono::Duration::days(30)),
            ..job(Locators::ids(c.id, pid), json!({"tier": "old"}))
        })
        .await;
    let new = app
        .enqueue(job(Locators::ids(c.id, pid), json!({"tier": "new"})))
        .await;
    let worker = app.worker(fast());
    process_until_gone(&app, &worker, new).await;
    days_pass(&app, 8).await;
    prune_applied(&app).await;
    assert_eq!(app.db.count("pdq.applied_keys").await, 1, "history kept");
    run_in(&app, later, 0).await;
    app.drain(&worker, Duration::from_secs(10)).await;
    assert_eq!(values_sent(&app, c.id, pid, "tier"), vec!["new"]);
    app.db.drop_database().await;
}

/// The job id sequence, as a logical replica or a restore without sequences leaves it.
const RESET_SEQUENCE: &str = "select setval('pdq.jobs_id_seq', 1, false)";

/// Applies `status` = `s1`, `s2`, `s3` to one participant, one PATCH each.
async fn three_statuses(app: &TestApp, worker: &Worker, cid: Uuid, pid: Uuid) {
    for status in ["s1", "s2", "s3"] {
        let id = app
            .enqueue(job(Locators::ids(cid, pid), json!({ "status": status })))
            .await;
        process_until_gone(app, worker, id).await;
    }
    assert_eq!(values_sent(app, cid, pid, "status"), vec!["s1", "s2", "s3"]);
}

#[tokio::test]
async fn an_update_inserted_after_the_id_sequence_went_back_is_sent_and_wins() {
    let app = TestApp::new(EmulatorConfig::default()).await;
    let (c, pid) = app.customer_conversation();
    let worker = app.worker(fast());
    three_statuses(&app, &worker, c.id, pid).await;
    let name: String = sqlx::query_scalar("select pg_get_serial_sequence('pdq.jobs', 'id')")
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    assert_eq!(name, "pdq.jobs_id_seq");
    sqlx::query(RESET_SEQUENCE)
        .execute(&app.db.pool)
        .await
        .unwrap();
    let after = app
        .enqueue(job(
            Locators::ids(c.id, pid),
            json!({"status": "after-failover"}),
        ))
        .await;
    assert!(
        after > 3,
        "the insert that met the reset took an id after the three recorded ones: {after}"
    );
    let second = app
        .enqueue(job(
            Locators::ids(c.id, pid),
            json!({"status": "after-failover-2"}),
        ))
        .await;
    process_until_gone(&app, &worker, after).await;
    assert_eq!(
        values_sent(&app, c.id, pid, "status"),
        vec!["s1", "s2", "s3", "after-failover-2"],
        "both new updates went out in one PATCH, the newer value last"
    );
    assert!(!is_queued(&app, second).await);
    let third = app
        .enqueue(job(
            Locators::ids(c.id, pid),
            json!({"status": "after-failover-3"}),
        ))
        .await;
    process_until_gone(&app, &worker, third).await;
    assert_eq!(
        values_sent(&app, c.id, pid, "status").last().unwrap(),
        "after-failover-3"
    );
    assert_eq!(
        app.emulator.attributes_of(c.id, pid).unwrap().get("status"),
        Some(&"after-failover-3".to_owned())
    );
    app.db.drop_database().await;
}

#[tokio::test]
async fn an_update_by_purpose_inserted_after_the_id_sequence_went_back_is_sent() {
    let app = TestApp::new(EmulatorConfig::default()).await;
    let (c, pid) = app.customer_conversation();
    let worker = app.worker(fast());
    three_statuses(&app, &worker, c.id, pid).await;
    sqlx::query(RESET_SEQUENCE)
        .execute(&app.db.pool)
        .await
        .unwrap();
    let after = app
        .enqueue(job(
            Locators::conversation(c.id).purpose("customer"),
            json!({"status": "after-failover"}),
        ))
        .await;
    process_until_gone(&app, &worker, after).await;
    assert_eq!(
        values_sent(&app, c.id, pid, "status"),
        vec!["s1", "s2", "s3", "after-failover"]
    );
    app.db.drop_database().await;
}

#[tokio::test]
async fn a_running_worker_moves_a_reset_id_sequence_past_every_recorded_id() {
    let app = TestApp::new(EmulatorConfig::default()).await;
    let (c, pid) = app.customer_conversation();
    let worker = app.worker(fast());
    let stop = tokio_util::sync::CancellationToken::new();
    let running = tokio::spawn(worker.clone().run(stop.clone()));
    for status in ["s1", "s2", "s3"] {
        app.enqueue(job(Locators::ids(c.id, pid), json!({ "status": status })))
            .await;
        assert!(
            wait_until(Duration::from_secs(10), || async {
                app.db.count("pdq.jobs").await == 0
            })
            .await
        );
    }
    // A landed value whose job record is gone (a restore of the history alone).
    sqlx::query("insert into pdq.applied_keys (target, key, seq) values ('c:x/p:y', 'k', 5000)")
        .execute(&app.db.pool)
        .await
        .unwrap();
    sqlx::query(RESET_SEQUENCE)
        .execute(&app.db.pool)
        .await
        .unwrap();
    app.enqueue(job(
        Locators::ids(c.id, pid),
        json!({"status": "after-failover"}),
    ))
    .await;
    let moved = wait_until(Duration::from_secs(15), || async {
        let position: i64 = sqlx::query_scalar("select last_value from pdq.jobs_id_seq")
            .fetch_one(&app.db.pool)
            .await
            .unwrap();
        position >= 5_000
    })
    .await;
    assert!(
        moved,
        "the worker moved the sequence past every recorded id"
    );
    assert!(
        wait_until(Duration::from_secs(10), || async {
            app.db.count("pdq.jobs").await == 0
        })
        .await
    );
    let next = app
        .enqueue(job(Locators::ids(c.id, pid), json!({"status": "next"})))
        .await;
    assert!(next > 5_000, "{next}");
    assert!(
        wait_until(Duration::from_secs(10), || async {
            app.db.count("pdq.jobs").await == 0
        })
        .await
    );
    stop.cancel();
    running.await.unwrap().unwrap();
    assert_eq!(
        values_sent(&app, c.id, pid, "status"),
        vec!["s1", "s2", "s3", "after-failover", "next"]
    );
    app.db.drop_database().await;
}

#[tokio::test]
async fn an_insert_after_the_sequence_went_back_takes_an_id_after_every_recorded_one() {
    let app = TestApp::new(EmulatorConfig::default()).await;
    let (c, pid) = app.customer_conversation();
    let worker = app.worker(fast());
    three_statuses(&app, &worker, c.id, pid).await;
    let before = app
        .enqueue(job(Locators::ids(c.id, pid), json!({"status": "before"})))
        .await;
    waiting_for_retry(&app, before, 3_600).await;
    let healthy = queue::check_job_ids(&app.db.pool).await.unwrap();
    assert!(!healthy.moved, "{healthy:?}");
    sqlx::query(RESET_SEQUENCE)
        .execute(&app.db.pool)
        .await
        .unwrap();
    let after = app
        .enqueue(job(
            Locators::ids(c.id, pid),
            json!({"status": "after-failover"}),
        ))
        .await;
    assert!(
        after > before,
        "the insert that met the reset took an id after every recorded one: {after} <= {before}"
    );
    let resets: Vec<queue::IdReset> = queue::take_unreported_resets(&app.db.pool).await.unwrap();
    assert_eq!(
        resets.len(),
        1,
        "the insert recorded the reset once: {resets:?}"
    );
    assert!(resets[0].moved_to >= before, "{resets:?}");
    assert!(
        queue::take_unreported_resets(&app.db.pool)
            .await
            .unwrap()
            .is_empty(),
        "a reset is reported once"
    );
    let check = queue::check_job_ids(&app.db.pool).await.unwrap();
    assert!(!check.moved, "the insert already moved it: {check:?}");
    let next = app
        .enqueue(job(Locators::ids(c.id, pid), json!({"other": "next"})))
        .await;
    assert!(next > before, "{next}");
    run_in(&app, before, 0).await;
    app.drain(&worker, Duration::from_secs(10)).await;
    assert!(!is_queued(&app, after).await && !is_queued(&app, before).await);
    let sent = values_sent(&app, c.id, pid, "status");
    assert_eq!(
        sent.last().map(String::as_str),
        Some("after-failover"),
        "the job inserted after the reset is the newest: {sent:?}"
    );
    app.db.drop_database().await;
}

#[tokio::test]
async fn an_update_inserted_after_the_sequence_went_back_is_sent_when_an_older_higher_id_lands_first(
) {
    let app = TestApp::new(EmulatorConfig::default()).await;
    let (c, pid) = app.customer_conversation();
    let worker = app.worker(fast());
    three_statuses(&app, &worker, c.id, pid).await;
    let before = app
        .enqueue(job(Locators::ids(c.id, pid), json!({"status": "before"})))
        .await;
    waiting_for_retry(&app, before, 3_600).await;
    assert!(!queue::check_job_ids(&app.db.pool).await.unwrap().moved);
    sqlx::query(RESET_SEQUENCE)
        .execute(&app.db.pool)
        .await
        .unwrap();
    let after = app
        .enqueue(NewJob {
            run_at: Some(chrono::Utc::now() + chrono::Duration::hours(1)),
            ..job(
                Locators::conversation(c.id).purpose("customer"),
                json!({"status": "after-failover"}),
            )
        })
        .await;
    // The job queued before the reset lands after the new one was inserted.
    run_in(&app, before, 0).await;
    process_until_gone(&app, &worker, before).await;
    run_in(&app, after, 0).await;
    process_until_gone(&app, &worker, after).await;
    assert_eq!(
        values_sent(&app, c.id, pid, "status"),
        vec!["s1", "s2", "s3", "before", "after-failover"]
    );
    app.db.drop_database().await;
}

/// A newer job by purpose left as a 503 answered to its PATCH leaves it (the API may have applied
/// it): pending for a retry an hour away, maybe sent, holding the participant it resolved to.
/// Then the older job, naming that participant by ids, becomes due and must wait. Returns
/// `(older, newer)`.
async fn older_ids_due_while_newer_purpose_maybe_landed(
    app: &TestApp,
    worker: &Worker,
    cid: Uuid,
    pid: Uuid,
) -> (i64, i64) {
    let older = app
        .enqueue(NewJob {
            run_at: Some(chrono::Utc::now() + chrono::Duration::hours(1)),
            ..job(Locators::ids(cid, pid), json!({"k": "from-older"}))
        })
        .await;
    let newer = app
        .enqueue(job(
            Locators::conversation(cid).purpose("customer"),
            json!({"k": "from-newer"}),
        ))
        .await;
    waiting_for_retry(app, newer, 3_600).await;
    sqlx::query("update pdq.jobs set maybe_sent = true, resolved_key = $2 where id = $1")
        .bind(newer)
        .bind(queue::lease::target_key(cid, pid))
        .execute(&app.db.pool)
        .await
        .unwrap();
    run_in(app, older, 0).await;
    for _ in 0..3 {
        let outcomes = worker.process_next().await.unwrap();
        assert!(
            matches!(outcomes.as_slice(), [UnitOutcome::Retried { .. }]),
            "the older job waits: {outcomes:?}"
        );
        run_in(app, older, 0).await;
    }
    assert!(
        values_sent(app, cid, pid, "k").is_empty(),
        "no older value while a newer one may have landed"
    );
    (older, newer)
}

#[tokio::test]
async fn an_older_job_by_ids_waits_for_a_newer_job_by_purpose_that_may_have_landed() {
    let app = TestApp::new(EmulatorConfig::default()).await;
    let (c, pid) = app.customer_conversation();
    let worker = app.worker(fast());
    let (older, newer) =
        older_ids_due_while_newer_purpose_maybe_landed(&app, &worker, c.id, pid).await;
    run_in(&app, newer, 0).await;
    app.drain(&worker, Duration::from_secs(10)).await;
    assert!(!is_queued(&app, older).await);
    assert_eq!(
        values_sent(&app, c.id, pid, "k"),
        vec!["from-newer"],
        "the newer job is sent again, the older value is left out"
    );
    app.db.drop_database().await;
}

#[tokio::test]
async fn an_older_job_by_ids_lands_when_the_newer_job_by_purpose_dies_without_landing() {
    let app = TestApp::new(EmulatorConfig::default()).await;
    let (c, pid) = app.customer_conversation();
    let worker = app.worker(fast());
    let (older, newer) =
        older_ids_due_while_newer_purpose_maybe_landed(&app, &worker, c.id, pid).await;
    let cancelled: Vec<i64> =
        sqlx::query_scalar("select job_id from pdq.cancel_jobs(array[$1]::bigint[], 'gone')")
            .bind(newer)
            .fetch_all(&app.db.pool)
            .await
            .unwrap();
    assert_eq!(cancelled, vec![newer]);
    app.drain(&worker, Duration::from_secs(10)).await;
    assert!(!is_queued(&app, older).await);
    assert_eq!(
        values_sent(&app, c.id, pid, "k"),
        vec!["from-older"],
        "once the newer job is gone, the older value is sent"
    );
    app.db.drop_database().await;
}

#[tokio::test]
async fn a_split_sends_no_job_alone_with_a_value_older_than_one_that_landed() {
    let app = TestApp::new(EmulatorConfig::default()).await;
    let (c, pid) = app.customer_conversation();
    assert!(app.emulator.set_external_tag(c.id, "order-7"));
    let worker = app.worker(fast());
    let later = Some(chrono::Utc::now() + chrono::Duration::hours(1));
    let first = app
        .enqueue(NewJob {
            run_at: later,
            ..job(
                Locators::external_tag("order-7"),
                json!({"g": "from-first"}),
            )
        })
        .await;
    let landed = app
        .enqueue(job(Locators::ids(c.id, pid), json!({"g": "from-ids"})))
        .await;
    let refused = app
        .enqueue(NewJob {
            run_at: later,
            ..job(
                Locators::external_tag("order-7"),
                json!({"g": "x".repeat(2_100)}),
            )
        })
        .await;
    process_until_gone(&app, &worker, landed).await;
    run_in(&app, first, 0).await;
    run_in(&app, refused, 0).await;
    app.drain(&worker, Duration::from_secs(10)).await;
    assert_eq!(
        dead_reason(&app, refused).await.as_deref(),
        Some("bad_request")
    );
    assert_eq!(
        values_sent(&app, c.id, pid, "g"),
        vec!["from-ids"],
        "the first job, sent alone in the split, leaves out the key a newer value landed for"
    );
    let superseded: Option<Vec<String>> =
        sqlx::query_scalar("select superseded_keys from pdq.finished_jobs where id = $1")
            .bind(first)
            .fetch_one(&app.db.pool)
            .await
            .unwrap();
    assert_eq!(superseded, Some(vec!["g".to_owned()]));
    app.db.drop_database().await;
}

/// A newer job's value landed, but pdq never learned it (its answer was lost and the job was
/// then cancelled): only `pdq.uncertain_values` remembers it. `landed_unseen` says whether the
/// API really holds it. Returns the values the API received for `k`.
async fn older_job_after_an_unconfirmed_newer_value(landed_unseen: bool) -> Vec<String> {
    let app = TestApp::new(EmulatorConfig::default()).await;
    let (c, pid) = app.customer_conversation();
    let worker = app.worker(fast());
    let older = app
        .enqueue(NewJob {
            run_at: Some(chrono::Utc::now() + chrono::Duration::hours(1)),
            ..job(Locators::ids(c.id, pid), json!({"k": "from-older"}))
        })
        .await;
    let target = queue::lease::target_key(c.id, pid);
    if landed_unseen {
        let newer = app
            .enqueue(job(
                Locators::conversation(c.id).purpose("customer"),
                json!({"k": "from-newer"}),
            ))
            .await;
        process_until_gone(&app, &worker, newer).await;
        sqlx::query("delete from pdq.applied_keys where target = $1")
            .bind(&target)
            .execute(&app.db.pool)
            .await
            .unwrap();
    }
    sqlx::query(
        "insert into pdq.uncertain_values (target, key, seq, value)
         values ($1, 'k', $2 + 1, 'from-newer')",
    )
    .bind(&target)
    .bind(older)
    .execute(&app.db.pool)
    .await
    .unwrap();
    run_in(&app, older, 0).await;
    app.drain(&worker, Duration::from_secs(10)).await;
    let sent = values_sent(&app, c.id, pid, "k");
    app.db.drop_database().await;
    sent
}

#[tokio::test]
async fn an_older_value_is_left_out_when_the_api_holds_a_newer_value_that_landed_unseen() {
    assert_eq!(
        older_job_after_an_unconfirmed_newer_value(true).await,
        vec!["from-newer"],
        "the worker read the participant and left the older value out"
    );
}

#[tokio::test]
async fn an_older_value_is_sent_when_the_unconfirmed_newer_value_never_landed() {
    assert_eq!(
        older_job_after_an_unconfirmed_newer_value(false).await,
        vec!["from-older"]
    );
}
