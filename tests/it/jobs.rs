//! Finding jobs wherever they are: `pdq.job_status`, `pdq jobs list|show|cancel`, and the
//! opt-in `pdq_outcomes` notifications.

use std::process::{Command, Output};
use std::time::Duration;

use pdq::queue::jobs::{self, JobFilter, JobState};
use pdq::queue::lease::{ClaimOptions, DeadLetterRecord};
use pdq::queue::{self, ApiRefusal, DeadLetterFilter, DeadReason, NewJob};
use pdq::queue::{Locators, Unit};
use serde_json::{json, Value};
use sqlx::postgres::PgListener;
use uuid::Uuid;

use crate::helpers::TestDb;
use crate::roles::{finish, is_permission_denied, LoginRole};

fn pdq(db: &TestDb, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pdq"))
        .args(args)
        .env("DATABASE_URL", db.url())
        .env("RUST_LOG", "warn")
        .output()
        .expect("run pdq")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn job(locators: Locators, key: Option<&str>) -> NewJob {
    NewJob {
        locators,
        attributes: json!({"orderStatus": "shipped"}),
        idempotency_key: key.map(str::to_owned),
        max_attempts: Some(5),
        ..NewJob::default()
    }
}

async fn enqueue(db: &TestDb, locators: Locators, key: Option<&str>) -> i64 {
    queue::enqueue(&db.pool, &job(locators, key))
        .await
        .unwrap()
        .expect("a new job")
}

/// Claims exactly one unit (the test arranges for one due participant).
async fn claim_one(db: &TestDb) -> Unit {
    let options = ClaimOptions {
        units: 1,
        worker_id: "worker-a".into(),
        ..ClaimOptions::default()
    };
    let mut units = queue::lease::claim(&db.pool, &options).await.unwrap();
    assert_eq!(units.len(), 1, "one unit due");
    units.remove(0)
}

fn server_error() -> Value {
    json!({
        "at": "2026-11-25T15:00:07Z", "attempt": 1, "failure": "server_error", "status": 503,
        "correlation_id": "corr-503", "message": "the API answered 503 Service Unavailable",
    })
}

async fn retry_later(db: &TestDb, unit: &Unit) {
    queue::lease::retry(
        &db.pool,
        &unit.fence(),
        Duration::from_secs(120),
        &server_error(),
        true,
    )
    .await
    .unwrap();
}

fn not_found() -> DeadLetterRecord {
    DeadLetterRecord {
        api: ApiRefusal {
            http_status: Some(404),
            error_code: Some("not.found".into()),
            error_message: Some("Conversation not found".into()),
            context_id: Some("ctx-1".into()),
            correlation_id: Some("corr-404".into()),
            error_body: Some(json!({"status": 404, "code": "not.found",
                                    "message": "Conversation not found", "contextId": "ctx-1"})),
        },
        ..DeadLetterRecord::new(DeadReason::NotFound, "the conversation does not exist")
    }
}

async fn apply(db: &TestDb, unit: &Unit, conversation: Uuid, participant: Uuid) {
    let done = queue::lease::Success::of(unit, conversation, participant);
    assert!(queue::lease::succeed_batch(&db.pool, &[done])
        .await
        .unwrap()
        .is_empty());
}

/// Dead-letters a job, requeues it and applies the requeued job; returns (original, requeued).
async fn dead_letter_requeue_and_apply(db: &TestDb, key: &str) -> (i64, i64) {
    let (cid, pid) = (Uuid::new_v4(), Uuid::new_v4());
    let first = enqueue(db, Locators::ids(cid, pid), Some(key)).await;
    let unit = claim_one(db).await;
    queue::lease::dead_letter(&db.pool, &unit.fence(), None, &not_found(), true)
        .await
        .unwrap();
    let requeue = DeadLetterFilter {
        ids: vec![first],
        ..DeadLetterFilter::default()
    };
    assert_eq!(
        queue::dlq::requeue(&db.pool, &requeue, false)
            .await
            .unwrap(),
        1
    );
    let unit = claim_one(db).await;
    let second = unit.head().id;
    assert_ne!(second, first);
    apply(db, &unit, cid, pid).await;
    (first, second)
}

#[tokio::test]
async fn job_status_reports_each_state_with_times_and_reason() {
    let db = TestDb::new().await;
    let (cid, pid) = (Uuid::new_v4(), Uuid::new_v4());
    let id = enqueue(&db, Locators::ids(cid, pid), Some("order-43")).await;

    let pending = jobs::job_status_by_key(&db.pool, "order-43")
        .await
        .unwrap()
        .unwrap();
    assert_eq!((pending.job_id, pending.state), (id, JobState::Pending));
    assert_eq!((pending.attempts, pending.reason.as_deref()), (0, None));

    let unit = claim_one(&db).await;
    let running = jobs::job_status(&db.pool, id).await.unwrap().unwrap();
    assert_eq!((running.state, running.attempts), (JobState::Running, 1));

    retry_later(&db, &unit).await;
    let retrying = jobs::job_status(&db.pool, id).await.unwrap().unwrap();
    assert_eq!(retrying.state, JobState::Pending);
    assert_eq!(retrying.reason.as_deref(), Some("server_error"));
    assert_eq!(retrying.http_status, Some(503));
    assert_eq!(retrying.correlation_id.as_deref(), Some("corr-503"));
    assert_eq!(
        retrying.detail.as_deref(),
        Some("the API answered 503 Service Unavailable")
    );
    assert!(retrying.run_at.unwrap() > retrying.last_attempt_at.unwrap());

    sqlx::query("update pdq.jobs set run_at = now()")
        .execute(&db.pool)
        .await
        .unwrap();
    let unit = claim_one(&db).await;
    queue::lease::dead_letter(&db.pool, &unit.fence(), None, &not_found(), true)
        .await
        .unwrap();
    let dead = jobs::job_status_by_key(&db.pool, "order-43")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(dead.state, JobState::DeadLettered);
    assert_eq!(dead.reason.as_deref(), Some("not_found"));
    assert_eq!(
        dead.detail.as_deref(),
        Some("the conversation does not exist")
    );
    assert_eq!((dead.http_status, dead.attempts), (Some(404), 2));
    assert_eq!(dead.correlation_id.as_deref(), Some("corr-404"));
    assert!(dead.finished_at.is_some());

    let (first, second) = dead_letter_requeue_and_apply(&db, "order-44").await;
    let applied = jobs::job_status_by_key(&db.pool, "order-44")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        applied.state,
        JobState::Applied,
        "the requeued job was applied"
    );
    assert_eq!((applied.job_id, applied.current_job_id), (first, second));
    assert_eq!(applied.requeues, 1);
    assert!(applied.finished_at.is_some());
    let by_new_id = jobs::job_status(&db.pool, second).await.unwrap().unwrap();
    assert_eq!(by_new_id.idempotency_key.as_deref(), Some("order-44"));

    assert!(jobs::job_status(&db.pool, 999_999).await.unwrap().is_none());
    assert!(jobs::job_status_by_key(&db.pool, "never")
        .await
        .unwrap()
        .is_none());
    db.drop_database().await;
}

#[tokio::test]
async fn jobs_show_prints_the_whole_story_as_text() {
    let db = TestDb::new().await;
    let (first, second) = dead_letter_requeue_and_apply(&db, "order-45").await;

    let show = pdq(&db, &["jobs", "show", &first.to_string()]);
    assert!(show.status.success(), "{show:?}");
    let text = stdout(&show);
    for expected in [
        &format!("job {first} dead_lettered (not_found)"),
        "idempotency key  order-45",
        "attempts         1 of 5",
        "lease            last held by worker-a",
        "detail           the conversation does not exist",
        "API error        HTTP 404, code not.found, Conversation not found",
        "correlation id   corr-404",
        "context id       ctx-1",
        r#"error body       {"code":"not.found","contextId":"ctx-1""#,
        "requeue history",
        &format!("as job {second}"),
        &format!("job {second} applied"),
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
    for debug in ["Some(", "None", "{ ", "Purpose("] {
        assert!(!text.contains(debug), "Debug output {debug:?} in:\n{text}");
    }

    // A retrying job: the last error as a sentence, and who held the lease.
    let (cid, pid) = (Uuid::new_v4(), Uuid::new_v4());
    let id = enqueue(&db, Locators::ids(cid, pid), None).await;
    let unit = claim_one(&db).await;
    let running = stdout(&pdq(&db, &["jobs", "show", &id.to_string()]));
    assert!(
        running.contains("lease            held by worker-a until"),
        "{running}"
    );
    retry_later(&db, &unit).await;
    let retrying = stdout(&pdq(&db, &["jobs", "show", &id.to_string()]));
    assert!(
        retrying.contains(
            "last error       attempt 1 at 2026-11-25T15:00:07Z: server_error (HTTP 503, \
             correlation id corr-503): the API answered 503 Service Unavailable"
        ),
        "{retrying}"
    );

    let json_show = pdq(&db, &["jobs", "show", "--key", "order-45", "--json"]);
    let shown: Value = serde_json::from_str(&stdout(&json_show)).unwrap();
    assert_eq!(shown["job"]["state"], "dead_lettered");
    assert_eq!(shown["job"]["requeued_as"], second);
    assert_eq!(shown["history"][1]["state"], "applied");
    assert!(shown["history"][1]["resolved_conversation_id"].is_string());

    let missing = pdq(&db, &["jobs", "show", "987654"]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no job with id 987654"));
    db.drop_database().await;
}

#[tokio::test]
async fn blocked_jobs_are_listed_with_the_job_they_wait_for() {
    let db = TestDb::new().await;
    let participant = Locators::external_tag("ORDER-7");
    let retrying = enqueue(&db, participant.clone(), None).await;
    let unit = claim_one(&db).await;
    retry_later(&db, &unit).await;
    let blocked = enqueue(&db, participant.clone(), None).await;
    let free = enqueue(&db, Locators::external_tag("ORDER-8"), None).await;
    let scheduled = queue::enqueue(
        &db.pool,
        &NewJob {
            run_at: Some(chrono::Utc::now() + chrono::TimeDelta::hours(1)),
            ..job(participant, None)
        },
    )
    .await
    .unwrap()
    .unwrap();

    let filter = JobFilter {
        blocked: true,
        ..JobFilter::default()
    };
    let listed = jobs::list(&db.pool, &filter).await.unwrap();
    let ids: Vec<(i64, Option<i64>)> = listed.iter().map(|r| (r.id, r.blocked_by)).collect();
    assert_eq!(
        ids,
        vec![(blocked, Some(retrying))],
        "not {free} nor {scheduled}"
    );

    let table = stdout(&pdq(&db, &["jobs", "list", "--external-tag", "ORDER-7"]));
    let line = |id: i64| {
        table
            .lines()
            .find(|l| l.starts_with(&format!("{id} ")))
            .unwrap_or_else(|| panic!("no row for {id} in:\n{table}"))
            .to_owned()
    };
    assert!(
        line(blocked).contains(&format!("blocked by job {retrying}")),
        "{table}"
    );
    assert!(line(retrying).contains("retry in "), "{table}");
    assert!(line(retrying).contains("after server_error"), "{table}");
    assert!(line(scheduled).contains("scheduled in 59m"), "{table}");
    assert!(
        !table.lines().any(|l| l.starts_with(&format!("{free} "))),
        "{table}"
    );

    let json_list = pdq(&db, &["jobs", "list", "--blocked", "--json"]);
    let listed: Value = serde_json::from_str(&stdout(&json_list)).unwrap();
    assert_eq!(listed[0]["id"], blocked);
    assert_eq!(listed[0]["blocked_by"], retrying);
    assert_eq!(listed.as_array().unwrap().len(), 1);

    // Once the retry is due, the job behind it goes along in the same unit: no longer blocked.
    sqlx::query("update pdq.jobs set run_at = now() where id = $1")
        .bind(retrying)
        .execute(&db.pool)
        .await
        .unwrap();
    assert!(jobs::list(&db.pool, &filter).await.unwrap().is_empty());
    db.drop_database().await;
}

#[tokio::test]
async fn cancel_records_pending_jobs_and_never_touches_running_ones() {
    let db = TestDb::new().await;
    let running = enqueue(&db, Locators::external_tag("ORDER-1"), None).await;
    claim_one(&db).await;
    let pending = enqueue(&db, Locators::external_tag("ORDER-2"), Some("cancel-me")).await;
    let other = enqueue(&db, Locators::external_tag("ORDER-3"), None).await;

    let unguarded = pdq(&db, &["jobs", "cancel"]);
    assert!(!unguarded.status.success());
    assert!(String::from_utf8_lossy(&unguarded.stderr).contains("or --all"));
    assert_eq!(
        db.count("pdq.jobs").await,
        3,
        "nothing cancelled without a filter"
    );

    let (a, b) = (running.to_string(), pending.to_string());
    let output = pdq(
        &db,
        &[
            "jobs",
            "cancel",
            &a,
            &b,
            "--note",
            "wrong campaign",
            "--json",
        ],
    );
    assert!(!output.status.success(), "a named job was not cancelled");
    let report: Value = serde_json::from_str(&stdout(&output)).unwrap();
    assert_eq!(
        report["cancelled"],
        json!([{"job_id": pending, "idempotency_key": "cancel-me"}])
    );
    assert_eq!(report["not_cancelled"][0]["job_id"], running);
    assert_eq!(report["not_cancelled"][0]["state"], "running");
    let why = report["not_cancelled"][0]["why"].as_str().unwrap();
    assert!(why.contains("can only finish or be retried"), "{why}");

    let left: Vec<i64> = sqlx::query_scalar("select id from pdq.jobs order by id")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert_eq!(left, vec![running, other]);
    let (by, note): (String, Option<String>) =
        sqlx::query_as("select cancelled_by, note from pdq.cancelled_jobs where id = $1")
            .bind(pending)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(
        (by.as_str(), note.as_deref()),
        ("postgres", Some("wrong campaign"))
    );

    let status = jobs::job_status_by_key(&db.pool, "cancel-me")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.state, JobState::Cancelled);
    assert_eq!(status.reason.as_deref(), Some("cancelled"));
    assert!(status.detail.unwrap().contains("wrong campaign"));
    let again = queue::enqueue(
        &db.pool,
        &job(Locators::external_tag("X"), Some("cancel-me")),
    )
    .await
    .unwrap();
    assert_eq!(again, None, "a cancelled key stays used");

    let by_tag = pdq(&db, &["jobs", "cancel", "--external-tag", "ORDER-3"]);
    assert!(by_tag.status.success(), "{by_tag:?}");
    assert_eq!(
        stdout(&by_tag).trim(),
        format!("cancelled 1 job(s): {other}")
    );
    let shown = stdout(&pdq(&db, &["jobs", "show", &other.to_string()]));
    assert!(shown.contains(&format!("job {other} cancelled")), "{shown}");
    assert!(shown.contains("cancelled        "), "{shown}");
    assert!(shown.contains("by postgres"), "{shown}");

    // Cancelled jobs hold customer data: they go with the dead letters' retention.
    sqlx::query("update pdq.cancelled_jobs set cancelled_at = now() - interval '2 days'")
        .execute(&db.pool)
        .await
        .unwrap();
    queue::prune(
        &db.pool,
        queue::Retained::DeadLetters,
        Duration::from_secs(86_400),
        100,
    )
    .await
    .unwrap();
    assert_eq!(db.count("pdq.cancelled_jobs").await, 0);
    db.drop_database().await;
}

async fn next_outcome(listener: &mut PgListener) -> Option<Value> {
    match tokio::time::timeout(Duration::from_millis(500), listener.recv()).await {
        Ok(notification) => Some(serde_json::from_str(notification.unwrap().payload()).unwrap()),
        Err(_) => None,
    }
}

async fn outcome_triggers(db: &TestDb) -> i64 {
    sqlx::query_scalar("select count(*) from pg_trigger where tgname like '%notify_outcomes'")
        .fetch_one(&db.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn outcome_notifications_are_opt_in_and_carry_ids_and_outcome_only() {
    let db = TestDb::new().await;
    let mut listener = PgListener::connect_with(&db.pool).await.unwrap();
    listener.listen("pdq_outcomes").await.unwrap();
    let (cid, pid) = (Uuid::new_v4(), Uuid::new_v4());

    assert!(!jobs::notify_outcomes(&db.pool).await.unwrap());
    assert_eq!(
        outcome_triggers(&db).await,
        0,
        "off: no trigger on the hot path"
    );
    enqueue(&db, Locators::ids(cid, pid), Some("quiet")).await;
    apply(&db, &claim_one(&db).await, cid, pid).await;
    assert_eq!(next_outcome(&mut listener).await, None);

    jobs::set_notify_outcomes(&db.pool, true).await.unwrap();
    assert_eq!(outcome_triggers(&db).await, 3);
    let applied = enqueue(&db, Locators::ids(cid, pid), Some("k-applied")).await;
    apply(&db, &claim_one(&db).await, cid, pid).await;
    assert_eq!(
        next_outcome(&mut listener).await,
        Some(json!({"job_id": applied, "outcome": "applied"}))
    );
    let (first, second) = dead_letter_requeue_and_apply(&db, "k-dead").await;
    assert_eq!(
        next_outcome(&mut listener).await,
        Some(json!({"job_id": first, "outcome": "dead_lettered", "reason": "not_found"}))
    );
    assert_eq!(
        next_outcome(&mut listener).await,
        Some(json!({"job_id": second, "origin_job_id": first, "outcome": "applied"})),
        "the requeued job names the job it came from"
    );
    let cancelled = enqueue(&db, Locators::ids(cid, pid), Some("k-cancel")).await;
    let filter = JobFilter {
        ids: vec![cancelled],
        ..JobFilter::default()
    };
    jobs::cancel(&db.pool, &filter, None).await.unwrap();
    assert_eq!(
        next_outcome(&mut listener).await,
        Some(json!({"job_id": cancelled, "outcome": "cancelled"}))
    );

    jobs::set_notify_outcomes(&db.pool, false).await.unwrap();
    assert_eq!(outcome_triggers(&db).await, 0);
    enqueue(&db, Locators::ids(cid, pid), Some("quiet-again")).await;
    apply(&db, &claim_one(&db).await, cid, pid).await;
    assert_eq!(next_outcome(&mut listener).await, None);
    drop(listener);
    db.drop_database().await;
}

#[tokio::test]
async fn producers_ask_job_status_and_only_operators_cancel() {
    let db = TestDb::new().await;
    let producer = LoginRole::new(&db, "pdq_producer").await;
    let operator = LoginRole::new(&db, "pdq_operator").await;
    let worker = LoginRole::new(&db, "pdq_worker").await;
    let id = queue::enqueue(
        &producer.pool,
        &job(Locators::external_tag("T"), Some("p-1")),
    )
    .await
    .unwrap()
    .unwrap();

    let by_key = jobs::job_status_by_key(&producer.pool, "p-1")
        .await
        .unwrap();
    assert_eq!(by_key.unwrap().job_id, id);
    let by_id = jobs::job_status(&producer.pool, id).await.unwrap();
    assert_eq!(by_id.unwrap().state, JobState::Pending);
    for (pool, role) in [(&producer.pool, "producer"), (&worker.pool, "worker")] {
        for statement in [
            "select * from pdq.cancel_jobs(array[1::bigint])",
            "select * from pdq.cancelled_jobs",
            "update pdq.settings set notify_outcomes = true",
        ] {
            let result = sqlx::query(statement).execute(pool).await;
            assert!(
                is_permission_denied(&result),
                "{role}: {statement}: {result:?}"
            );
        }
    }
    let result = sqlx::query("select * from pdq.job_records")
        .execute(&producer.pool)
        .await;
    assert!(is_permission_denied(&result), "{result:?}");

    jobs::job_status(&operator.pool, id).await.unwrap().unwrap();
    assert_eq!(
        jobs::list(&operator.pool, &JobFilter::default())
            .await
            .unwrap()
            .len(),
        1
    );
    let filter = JobFilter {
        ids: vec![id],
        ..JobFilter::default()
    };
    let cancelled = jobs::cancel(&operator.pool, &filter, Some("duplicate"))
        .await
        .unwrap();
    assert_eq!(cancelled.len(), 1);
    let by: String = sqlx::query_scalar("select cancelled_by from pdq.cancelled_jobs")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(by, operator.name, "who cancelled is the operator's login");
    jobs::set_notify_outcomes(&operator.pool, true)
        .await
        .unwrap();
    assert_eq!(outcome_triggers(&db).await, 3);

    // The worker still archives with the triggers on (they run with their owner's rights).
    let (cid, pid) = (Uuid::new_v4(), Uuid::new_v4());
    // The producer's own job: a producer is answered about its own jobs only.
    queue::enqueue(&producer.pool, &job(Locators::ids(cid, pid), Some("w-1")))
        .await
        .unwrap()
        .unwrap();
    let options = ClaimOptions {
        units: 1,
        ..ClaimOptions::default()
    };
    let unit = queue::lease::claim(&worker.pool, &options)
        .await
        .unwrap()
        .remove(0);
    let done = queue::lease::Success::of(&unit, cid, pid);
    assert!(queue::lease::succeed_batch(&worker.pool, &[done])
        .await
        .unwrap()
        .is_empty());
    let status = jobs::job_status_by_key(&producer.pool, "w-1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.state, JobState::Applied);
    finish(db, vec![producer, operator, worker]).await;
}

#[tokio::test]
async fn jobs_show_names_the_coalesced_patch_and_the_newest_of_records_sharing_an_id() {
    let db = TestDb::new().await;
    crate::helpers::let_ids_repeat(&db.pool).await;
    let (cid, pid) = (Uuid::new_v4(), Uuid::new_v4());
    let first = enqueue(&db, Locators::ids(cid, pid), None).await;
    enqueue(&db, Locators::ids(cid, pid), None).await;
    let unit = claim_one(&db).await;
    assert_eq!(unit.jobs.len(), 2, "coalesced");
    apply(&db, &unit, cid, pid).await;
    let applied = stdout(&pdq(&db, &["jobs", "show", &first.to_string()]));
    assert!(
        applied.contains("in one PATCH with 1 other job(s)"),
        "{applied}"
    );
    assert!(
        applied.contains(&format!(
            "resolved to      conversation {cid}, participant {pid}"
        )),
        "{applied}"
    );

    // A restarted id sequence hands out `first` again: the queued job is the newest record.
    sqlx::query("truncate pdq.jobs restart identity")
        .execute(&db.pool)
        .await
        .unwrap();
    let again = enqueue(&db, Locators::external_tag("ORDER-9"), Some("again")).await;
    assert_eq!(again, first);
    let shown = stdout(&pdq(&db, &["jobs", "show", &first.to_string()]));
    assert!(
        shown.starts_with(&format!("job {first} pending")),
        "{shown}"
    );
    assert!(
        shown.contains(&format!("1 older record(s) share id {first}")),
        "{shown}"
    );
    let status = jobs::job_status(&db.pool, first).await.unwrap().unwrap();
    assert_eq!(status.state, JobState::Pending);
    assert_eq!(status.idempotency_key.as_deref(), Some("again"));
    db.drop_database().await;
}

#[tokio::test]
async fn each_requeued_dead_letter_records_the_job_it_became_even_when_ids_repeat() {
    let db = TestDb::new().await;
    crate::helpers::let_ids_repeat(&db.pool).await;
    for key in ["old", "new"] {
        enqueue(&db, Locators::external_tag("ORDER-5"), Some(key)).await;
        let unit = claim_one(&db).await;
        queue::lease::dead_letter(&db.pool, &unit.fence(), None, &not_found(), true)
            .await
            .unwrap();
        sqlx::query("truncate pdq.jobs restart identity")
            .execute(&db.pool)
            .await
            .unwrap();
    }
    queue::advance_job_ids(&db.pool).await.unwrap();
    let requeue = DeadLetterFilter {
        ids: vec![1],
        ..DeadLetterFilter::default()
    };
    assert_eq!(
        queue::dlq::requeue(&db.pool, &requeue, false)
            .await
            .unwrap(),
        2
    );
    let links: Vec<(String, i64)> = sqlx::query_as(
        "select idempotency_key, requeued_as from pdq.dead_letters order by dead_at",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let queued: Vec<i64> = sqlx::query_scalar("select id from pdq.jobs order by id")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert_eq!(
        links,
        vec![("old".to_owned(), queued[0]), ("new".to_owned(), queued[1])]
    );
    for (key, id) in [("old", queued[0]), ("new", queued[1])] {
        let status = jobs::job_status_by_key(&db.pool, key)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (status.state, status.current_job_id),
            (JobState::Pending, id)
        );
    }
    db.drop_database().await;
}
