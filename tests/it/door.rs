//! What comes in at the door: error bodies the API sends (any bytes), producer texts (bounded
//! by named rules), the rate-budget row an operator may write, the outcome notification's
//! payload, the limits of the write commands and the demo's verdict.

use std::collections::HashMap;
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{patch, post};
use axum::{Json, Router};
use pdq::emulator::EmulatorConfig;
use pdq::genesys::{GenesysClient, GenesysSettings};
use pdq::queue::jobs;
use pdq::queue::{self, budget, Locators, NewJob};
use pdq::worker::{Api, Worker};
use secrecy::SecretString;
use serde_json::{json, Value};
use sqlx::postgres::PgListener;
use sqlx::PgPool;
use uuid::Uuid;

use crate::app::{fast, job, TestApp};
use crate::helpers::{wait_until, TestDb};
use crate::roles::{finish, LoginRole};

fn pdq_as(url: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pdq"))
        .args(args)
        .env("DATABASE_URL", url)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run pdq")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The constraint a statement was refused by (any SQLSTATE), or a description of what happened.
fn refused_by(result: Result<sqlx::postgres::PgQueryResult, sqlx::Error>) -> String {
    match result {
        Ok(_) => "accepted".to_owned(),
        Err(error) => match error.as_database_error() {
            Some(db) => db
                .constraint()
                .map(str::to_owned)
                .unwrap_or_else(|| format!("no constraint: {db}")),
            None => format!("not a database error: {error}"),
        },
    }
}

// ---------------------------------------------------------------------------------------------
// Item: error bodies. A tiny fake API answers each participant its own way.

/// What the fake API answers a PATCH for a participant: a status and a body.
type Answers = Arc<HashMap<Uuid, (u16, Vec<u8>)>>;

#[derive(Clone)]
struct Fake {
    answers: Answers,
    patches: Arc<Mutex<Vec<(Uuid, u16)>>>,
}

async fn token() -> Json<Value> {
    Json(json!({"access_token": "fake-token", "token_type": "bearer", "expires_in": 86_400}))
}

async fn attributes(State(fake): State<Fake>, Path((_cid, pid)): Path<(Uuid, Uuid)>) -> Response {
    let (status, body) = fake.answers.get(&pid).cloned().unwrap_or((202, Vec::new()));
    fake.patches.lock().unwrap().push((pid, status));
    let status = StatusCode::from_u16(status).unwrap();
    (status, [("content-type", "application/json")], body).into_response()
}

/// Serves the token endpoint and the attributes PATCH on 127.0.0.1; returns its base URL.
async fn fake_api(fake: Fake) -> String {
    let app = Router::new()
        .route("/oauth/token", post(token))
        .route(
            "/api/v2/conversations/{cid}/participants/{pid}/attributes",
            patch(attributes),
        )
        .with_state(fake);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

fn fake_client(url: &str) -> GenesysClient {
    let settings = GenesysSettings::builder()
        .api_url(url)
        .login_url(url)
        .client_id("fake-client")
        .client_secret(SecretString::from("fake-secret".to_owned()))
        .request_timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    GenesysClient::new(settings).unwrap()
}

/// A dead letter's participant, reason, status, message and body.
type DeadRow = (Uuid, String, Option<i32>, Option<String>, Option<Value>);

#[tokio::test]
async fn an_error_body_cut_inside_a_character_is_kept_and_the_worker_lives_on() {
    let db = TestDb::with_connections(16).await;
    // Byte 2,048 of this body is the second byte of "é": `String::truncate(2_048)` panicked.
    let cut = format!(
        "{}é, and the rest of a localized message",
        "a".repeat(2_047)
    );
    assert!(!cut.is_char_boundary(2_048));
    let kept = "a".repeat(2_047);
    let (refused, retried, nul, fine) = (
        Uuid::new_v4(),
        Uuid::new_v4(),
        Uuid::new_v4(),
        Uuid::new_v4(),
    );
    let answers: HashMap<Uuid, (u16, Vec<u8>)> = [
        (refused, (400, cut.clone().into_bytes())),
        (retried, (503, cut.clone().into_bytes())),
        (
            nul,
            (
                400,
                br#"{"message":"bad\u0000name","code":"bad.request","status":400}"#.to_vec(),
            ),
        ),
    ]
    .into_iter()
    .collect();
    let fake = Fake {
        answers: Arc::new(answers),
        patches: Arc::default(),
    };
    let url = fake_api(fake.clone()).await;
    let cid = Uuid::new_v4();
    for (pid, attempts) in [(refused, 5), (retried, 2), (nul, 5)] {
        queue::enqueue(
            &db.pool,
            &NewJob {
                max_attempts: Some(attempts),
                ..job(Locators::ids(cid, pid), json!({"name": "Zoë"}))
            },
        )
        .await
        .unwrap();
    }
    let last = queue::enqueue(&db.pool, &job(Locators::ids(cid, fine), json!({"k": "v"})))
        .await
        .unwrap()
        .unwrap();

    let worker = Worker::new(db.pool.clone(), Api::new(fake_client(&url)), fast());
    let stop = tokio_util::sync::CancellationToken::new();
    let running = tokio::spawn(worker.clone().run(stop.clone()));
    let drained = wait_until(Duration::from_secs(20), || async {
        db.count("pdq.jobs").await == 0
    })
    .await;
    stop.cancel();
    let ended = running.await;
    assert!(drained, "every job was recorded");
    assert!(matches!(ended, Ok(Ok(()))), "the worker ran on: {ended:?}");

    let dead: Vec<DeadRow> = sqlx::query_as(
        "select participant_id, reason, http_status, error_message, error_body
         from pdq.dead_letters",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let find = |pid: Uuid| dead.iter().find(|d| d.0 == pid).cloned().unwrap();
    let (_, reason, status, _, body) = find(refused);
    assert_eq!((reason.as_str(), status), ("bad_request", Some(400)));
    assert_eq!(
        body,
        Some(Value::String(kept.clone())),
        "the body, cut before the é"
    );
    let (_, reason, status, _, body) = find(retried);
    assert_eq!((reason.as_str(), status), ("retries_exhausted", Some(503)));
    assert_eq!(body, Some(Value::String(kept)), "retried, then kept");
    let (_, reason, _, message, body) = find(nul);
    assert_eq!(reason, "bad_request");
    assert_eq!(message.as_deref(), Some("bad\u{FFFD}name"));
    assert_eq!(body.unwrap()["message"], "bad\u{FFFD}name");
    let applied: i64 = sqlx::query_scalar("select count(*) from pdq.finished_jobs where id = $1")
        .bind(last)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(applied, 1, "the job after them was applied");
    let patches = fake.patches.lock().unwrap().clone();
    assert_eq!(patches.iter().filter(|(p, _)| *p == retried).count(), 2);
    assert_eq!(
        patches
            .iter()
            .filter(|(p, s)| *p == fine && *s == 202)
            .count(),
        1
    );
    db.drop_database().await;
}

// ---------------------------------------------------------------------------------------------
// Item: producer texts are bounded at the door.

fn insert_sql(column: &str) -> String {
    format!(
        "insert into pdq.jobs (conversation_id, {column}, attributes) \
         values ('6f1c2d3e-0000-4000-8000-000000000001', $1, '{{\"k\": \"v\"}}')"
    )
}

#[tokio::test]
async fn every_producer_text_is_bounded_at_the_door_by_a_named_rule() {
    let db = TestDb::new().await;
    let producer = LoginRole::new(&db, "pdq_producer").await;
    let p = &producer.pool;
    let cases = [
        (
            "idempotency_key",
            200,
            "idempotency_key_must_be_at_most_200_characters",
        ),
        (
            "participant_purpose",
            256,
            "participant_locator_must_be_at_most_256_characters",
        ),
        (
            "participant_external_contact_id",
            256,
            "participant_locator_must_be_at_most_256_characters",
        ),
        (
            "participant_name",
            256,
            "participant_locator_must_be_at_most_256_characters",
        ),
    ];
    for (column, limit, rule) in cases {
        // Characters, not bytes: the limit in "é" is accepted, one more is refused.
        let at = "é".repeat(limit);
        let over = "é".repeat(limit + 1);
        let ok = sqlx::query(&insert_sql(column)).bind(&at).execute(p).await;
        assert_eq!(refused_by(ok), "accepted", "{column} of {limit} characters");
        let result = sqlx::query(&insert_sql(column))
            .bind(&over)
            .execute(p)
            .await;
        assert_eq!(refused_by(result), rule, "{column} over {limit}");
    }
    let tag = |t: &str| {
        sqlx::query("insert into pdq.jobs (external_tag, attributes) values ($1, '{\"k\": \"v\"}')")
            .bind(t.to_owned())
    };
    assert_eq!(
        refused_by(tag(&"t".repeat(256)).execute(p).await),
        "accepted"
    );
    assert_eq!(
        refused_by(tag(&"t".repeat(257)).execute(p).await),
        "external_tag_must_be_at_most_256_characters"
    );
    let attributes = |key: String| {
        sqlx::query(
            "insert into pdq.jobs (conversation_id, attributes)
             values ('6f1c2d3e-0000-4000-8000-000000000001', $1)",
        )
        .bind(json!({ key: "v", "short": "v" }))
    };
    assert_eq!(
        refused_by(attributes("k".repeat(256)).execute(p).await),
        "accepted"
    );
    assert_eq!(
        refused_by(attributes("k".repeat(257)).execute(p).await),
        "attribute_keys_must_be_at_most_256_characters"
    );

    // The repro: a 9,000-byte key (and one that does not compress, which would otherwise fail
    // on the key table's index with Postgres' own error) is refused with the rule's name.
    let random: String = (0..3_000)
        .map(|i| char::from(b'!' + ((i * 7_919 + i / 13) % 90) as u8))
        .collect();
    for key in ["k".repeat(9_000), random] {
        let result = sqlx::query(&insert_sql("idempotency_key"))
            .bind(&key)
            .execute(p)
            .await;
        assert_eq!(
            refused_by(result),
            "idempotency_key_must_be_at_most_200_characters"
        );
        let through_enqueue = sqlx::query("select pdq.enqueue(attributes => '{\"k\":\"v\"}', external_tag => 'T', idempotency_key => $1)")
            .bind(&key)
            .execute(p)
            .await;
        assert_eq!(
            refused_by(through_enqueue),
            "idempotency_key_must_be_at_most_200_characters"
        );
    }

    // The library and `pdq enqueue` give the same names before sending.
    let long_key = NewJob {
        idempotency_key: Some("k".repeat(201)),
        ..job(Locators::external_tag("T"), json!({"k": "v"}))
    };
    match queue::enqueue(p, &long_key).await {
        Err(queue::Error::Refused { constraint, .. }) => {
            assert_eq!(constraint, "idempotency_key_must_be_at_most_200_characters")
        }
        other => panic!("refused: {other:?}"),
    }
    let cli = pdq_as(
        &db.url(),
        &[
            "enqueue",
            "--external-tag",
            &"t".repeat(300),
            "--attr",
            "k=v",
        ],
    );
    assert_eq!(cli.status.code(), Some(3), "{cli:?}");
    assert!(
        text(&cli.stderr).contains("external_tag_must_be_at_most_256_characters"),
        "{}",
        text(&cli.stderr)
    );
    let help = pdq_as(&db.url(), &["enqueue", "--help"]);
    assert!(text(&help.stdout).contains("at most 200 characters"));
    finish(db, vec![producer]).await;
}

#[tokio::test]
async fn rows_queued_before_the_bounds_are_dead_lettered_naming_the_rule() {
    let db = TestDb::new().await;
    // The database as it was before the bounds: undo the migration, queue over-long rows.
    for statement in [
        "alter table pdq.jobs drop constraint idempotency_key_must_be_at_most_200_characters,
             drop constraint external_tag_must_be_at_most_256_characters,
             drop constraint participant_locator_must_be_at_most_256_characters,
             drop constraint attribute_keys_must_be_at_most_256_characters",
        "drop trigger jobs_bound_idempotency_key on pdq.jobs",
        "delete from pdq._sqlx_migrations where version = 20261202000200",
    ] {
        sqlx::query(statement).execute(&db.pool).await.unwrap();
    }
    let long_key = queue::enqueue(
        &db.pool,
        &job(Locators::external_tag("T"), json!({"k": "v"})),
    )
    .await
    .unwrap()
    .unwrap();
    sqlx::query("update pdq.jobs set idempotency_key = repeat('k', 9000) where id = $1")
        .bind(long_key)
        .execute(&db.pool)
        .await
        .unwrap();
    let long_tag: i64 = sqlx::query_scalar(
        "insert into pdq.jobs (external_tag, attributes) values (repeat('t', 300), '{\"k\":\"v\"}')
         returning id",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    let fine = queue::enqueue(
        &db.pool,
        &job(Locators::external_tag("T"), json!({"k": "v"})),
    )
    .await
    .unwrap()
    .unwrap();

    pdq::db::migrate(&db.options).await.unwrap();
    let queued: Vec<i64> = sqlx::query_scalar("select id from pdq.jobs order by id")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert_eq!(queued, vec![fine]);
    let dead: Vec<(i64, String, String)> =
        sqlx::query_as("select id, reason, detail from pdq.dead_letters order by id")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(dead.len(), 2);
    assert_eq!(dead[0].0, long_key);
    assert!(dead[0]
        .2
        .contains("idempotency_key_must_be_at_most_200_characters"));
    assert_eq!(dead[1].0, long_tag);
    assert!(dead[1]
        .2
        .contains("external_tag_must_be_at_most_256_characters"));
    assert!(dead.iter().all(|d| d.1 == "rejected"));
    let unvalidated: i64 = sqlx::query_scalar(
        "select count(*) from pg_constraint where conrelid = 'pdq.jobs'::regclass
         and conname like '%_must_be_at_most_%' and not convalidated",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(unvalidated, 0, "the rules hold for every row");
    db.drop_database().await;
}

// ---------------------------------------------------------------------------------------------
// Issue 23 item 4: the payload of pdq_outcomes.

async fn next_payload(listener: &mut PgListener) -> Option<String> {
    match tokio::time::timeout(Duration::from_secs(5), listener.recv()).await {
        Ok(notification) => Some(notification.unwrap().payload().to_owned()),
        Err(_) => None,
    }
}

#[tokio::test]
async fn an_outcome_notification_carries_ids_and_the_outcome_and_no_customer_data() {
    let app = TestApp::new(EmulatorConfig::default()).await;
    let db = &app.db;
    jobs::set_notify_outcomes(&db.pool, true).await.unwrap();
    let mut listener = PgListener::connect_with(&db.pool).await.unwrap();
    listener.listen("pdq_outcomes").await.unwrap();
    let (c, pid) = app.customer_conversation();
    let key = format!("order-4711-jane.doe@example.com-{}", "x".repeat(150));
    let applied = app
        .enqueue(NewJob {
            idempotency_key: Some(key.clone()),
            ..job(
                Locators::ids(c.id, pid),
                json!({"email": "jane.doe@example.com"}),
            )
        })
        .await;
    let worker = app.worker(fast());
    app.drain(&worker, Duration::from_secs(10)).await;
    let payload = next_payload(&mut listener).await.expect("a notification");
    assert_eq!(
        serde_json::from_str::<Value>(&payload).unwrap(),
        json!({"job_id": applied, "outcome": "applied"})
    );
    let lost = app
        .enqueue(NewJob {
            idempotency_key: Some("order-4712-card-4111111111111111".into()),
            ..job(
                Locators::ids(c.id, Uuid::new_v4()),
                json!({"card": "4111111111111111"}),
            )
        })
        .await;
    app.drain(&worker, Duration::from_secs(10)).await;
    let payload = next_payload(&mut listener).await.expect("a notification");
    assert!(!payload.contains("4111"), "{payload}");
    assert_eq!(
        serde_json::from_str::<Value>(&payload).unwrap(),
        json!({"job_id": lost, "outcome": "dead_lettered", "reason": "not_found"})
    );
    let filter = queue::DeadLetterFilter {
        ids: vec![lost],
        ..queue::DeadLetterFilter::default()
    };
    assert_eq!(
        queue::dlq::requeue(&db.pool, &filter, false).await.unwrap(),
        1
    );
    app.drain(&worker, Duration::from_secs(10)).await;
    let payload: Value = serde_json::from_str(&next_payload(&mut listener).await.unwrap()).unwrap();
    assert_eq!(payload["origin_job_id"], lost, "{payload}");
    assert_eq!(payload["outcome"], "dead_lettered");
    for allowed in payload.as_object().unwrap().keys() {
        assert!(
            ["job_id", "origin_job_id", "outcome", "reason"].contains(&allowed.as_str()),
            "{payload}"
        );
    }
    drop(listener);
    app.db.drop_database().await;
}

// ---------------------------------------------------------------------------------------------
// Item: the rate-budget row an operator may write.

async fn budget_row(pool: &PgPool) {
    budget::ensure(pool, "pdq-demo").await.unwrap();
}

#[tokio::test]
async fn an_operator_cannot_store_a_budget_value_no_worker_can_read() {
    let db = TestDb::new().await;
    budget_row(&db.pool).await;
    let operator = LoginRole::new(&db, "pdq_operator").await;
    let cases = [
        (
            "next_slot = 'infinity'",
            "next_slot_must_be_finite_and_before_the_year_10000",
        ),
        (
            "next_slot = '-infinity'",
            "next_slot_must_be_finite_and_before_the_year_10000",
        ),
        (
            "next_slot = '20000-01-01'",
            "next_slot_must_be_finite_and_before_the_year_10000",
        ),
        (
            "paused_until = 'infinity'",
            "paused_until_must_be_finite_and_before_the_year_10000",
        ),
        (
            "updated_at = '-infinity'",
            "updated_at_must_be_finite_and_before_the_year_10000",
        ),
        (
            "resumed_at = 'infinity'",
            "resumed_at_must_be_finite_and_before_the_year_10000",
        ),
        (
            "pause_reason = 'Paused; see me'",
            "pause_reason_must_be_a_lowercase_word",
        ),
        (
            "resumed_by = e'ops\\x1b]52;c;AAAA\\x07'",
            "resumed_by_must_be_at_most_256_printable_characters",
        ),
        (
            "resumed_by = repeat('o', 257)",
            "resumed_by_must_be_at_most_256_printable_characters",
        ),
    ];
    for (set, rule) in cases {
        let result = sqlx::query(&format!("update pdq.rate_budgets set {set}"))
            .execute(&operator.pool)
            .await;
        assert_eq!(refused_by(result), rule, "{set}");
    }
    let fine = sqlx::query("update pdq.rate_budgets set pause_reason = 'operator'")
        .execute(&operator.pool)
        .await;
    assert_eq!(refused_by(fine), "accepted");
    finish(db, vec![operator]).await;
}

#[tokio::test]
async fn a_far_future_budget_row_never_stalls_a_worker_and_resume_repairs_it() {
    let db = TestDb::new().await;
    budget_row(&db.pool).await;
    let operator = LoginRole::new(&db, "pdq_operator").await;
    sqlx::query(
        "update pdq.rate_budgets set next_slot = '9999-12-31', paused_until = '9999-12-31',
             pause_reason = 'operator'",
    )
    .execute(&operator.pool)
    .await
    .unwrap();
    let states = budget::states(&operator.pool).await.unwrap();
    assert!(states[0].paused_until.is_some(), "shown as paused");
    let status = pdq_as(&operator_url(&db, &operator), &["status", "--json"]);
    assert!(status.status.success(), "{status:?}");

    // The worker's reservation waits at most MAX_SCHEDULE_AHEAD, whatever the row says.
    let before = std::time::Instant::now();
    let slots = budget::reserve(&db.pool, "pdq-demo", 1, Duration::from_millis(200))
        .await
        .unwrap();
    let limit = budget::MAX_SCHEDULE_AHEAD + Duration::from_secs(5);
    assert!(slots[0] <= before + limit, "{:?}", slots[0] - before);

    let resumed = pdq_as(&operator_url(&db, &operator), &["budget", "resume"]);
    assert!(resumed.status.success(), "{resumed:?}");
    let said = text(&resumed.stdout);
    assert!(said.contains("resumed budget pdq-demo"), "{said}");
    let (behind, paused): (bool, bool) =
        sqlx::query_as("select next_slot <= now(), paused_until > now() from pdq.rate_budgets")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert!(behind && !paused, "repaired: next_slot now, no pause");
    finish(db, vec![operator]).await;
}

fn operator_url(db: &TestDb, operator: &LoginRole) -> String {
    let url = url::Url::parse(&db.url()).unwrap();
    let mut url = url.clone();
    url.set_username(&operator.name).unwrap();
    url.set_password(None).unwrap();
    url.to_string()
}

#[tokio::test]
async fn stored_times_no_client_can_decode_never_crash_a_reader_and_resume_repairs_them() {
    let db = TestDb::new().await;
    budget_row(&db.pool).await;
    let operator = LoginRole::new(&db, "pdq_operator").await;
    // A database whose rules are not in force (dropped by hand, or older than them).
    sqlx::query(
        "alter table pdq.rate_budgets
             drop constraint next_slot_must_be_finite_and_before_the_year_10000,
             drop constraint paused_until_must_be_finite_and_before_the_year_10000,
             drop constraint resumed_at_must_be_finite_and_before_the_year_10000",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    for row in [
        "next_slot = 'infinity', paused_until = 'infinity', resumed_at = '-infinity'",
        "next_slot = '200000-01-01', paused_until = '-infinity', resumed_at = '290000-01-01'",
    ] {
        sqlx::query(&format!("update pdq.rate_budgets set {row}"))
            .execute(&operator.pool)
            .await
            .unwrap();
        budget::states(&operator.pool).await.unwrap();
        budget::state(&db.pool, "pdq-demo").await.unwrap().unwrap();
        let status = pdq_as(&operator_url(&db, &operator), &["status"]);
        assert!(status.status.success(), "{row}: {status:?}");
        budget::pause(
            &db.pool,
            "pdq-demo",
            Duration::from_secs(1),
            budget::PauseReason::Outage,
        )
        .await
        .unwrap();
        let before = std::time::Instant::now();
        let slots = budget::reserve(&db.pool, "pdq-demo", 2, Duration::from_millis(10))
            .await
            .unwrap();
        assert!(slots[1] <= before + budget::MAX_SCHEDULE_AHEAD + Duration::from_secs(5));
        sqlx::query(&format!("update pdq.rate_budgets set {row}"))
            .execute(&operator.pool)
            .await
            .unwrap();
        let cleared = budget::resume(&operator.pool, None, "ops\u{1b}[2J")
            .await
            .unwrap();
        assert_eq!(cleared.len(), 1, "{row}: counted as paused");
        let (finite, by): (bool, String) = sqlx::query_as(
            "select isfinite(next_slot) and isfinite(paused_until) and next_slot <= now()
                    and paused_until <= now(), resumed_by
             from pdq.rate_budgets",
        )
        .fetch_one(&db.pool)
        .await
        .unwrap();
        assert!(finite, "{row}: repaired");
        assert_eq!(by, "ops [2J", "control characters are not kept");
    }
    finish(db, vec![operator]).await;
}

// ---------------------------------------------------------------------------------------------
// Item: write commands honour --limit and say how many rows they touch first.

async fn dead_letters(db: &TestDb, n: i64) {
    sqlx::query(
        "insert into pdq.dead_letters (id, conversation_id, attributes, priority, run_at,
             max_attempts, created_at, attempts, reason, dead_at)
         select i, gen_random_uuid(), '{\"k\": \"v\"}', 'live', now(), 5, now(), 1, 'not_found',
             now() - i * interval '1 second'
         from generate_series(1, $1) as i",
    )
    .bind(n)
    .execute(&db.pool)
    .await
    .unwrap();
    sqlx::query("select setval(pg_get_serial_sequence('pdq.jobs', 'id'), 1000)")
        .execute(&db.pool)
        .await
        .unwrap();
}

#[tokio::test]
async fn requeue_purge_and_cancel_touch_at_most_limit_rows_and_say_how_many_first() {
    let db = TestDb::new().await;
    dead_letters(&db, 25).await;
    let url = db.url();

    let requeued = pdq_as(&url, &["dlq", "requeue", "--all", "--limit", "10"]);
    assert!(requeued.status.success(), "{requeued:?}");
    assert!(
        text(&requeued.stderr).contains("requeueing 10 of 25 matching dead letter(s)"),
        "{}",
        text(&requeued.stderr)
    );
    assert!(text(&requeued.stdout).contains("requeued 10 dead letter(s)"));
    assert_eq!(db.count("pdq.jobs").await, 10);
    let newest: Vec<i64> =
        sqlx::query_scalar("select requeued_from from pdq.jobs order by requeued_from")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(
        newest,
        (1..=10).collect::<Vec<i64>>(),
        "the newest first, as list shows"
    );

    let purged = pdq_as(&url, &["dlq", "purge", "--all", "--limit", "4", "--json"]);
    assert!(purged.status.success(), "{purged:?}");
    assert!(text(&purged.stderr).contains("purging 4 of 15 matching dead letter(s)"));
    let body: Value = serde_json::from_slice(&purged.stdout).unwrap();
    assert_eq!(body, json!({"purged": 4, "matched": 15}));
    assert_eq!(db.count("pdq.dead_letters").await, 21);

    let everything = pdq_as(&url, &["dlq", "purge", "--reason", "not_found"]);
    assert!(text(&everything.stderr).contains("purging 11 matching dead letter(s)"));
    assert_eq!(
        db.count("pdq.dead_letters where requeued_at is null").await,
        0
    );

    let cancelled = pdq_as(&url, &["jobs", "cancel", "--all", "--limit", "3"]);
    assert!(cancelled.status.success(), "{cancelled:?}");
    assert!(
        text(&cancelled.stderr).contains("cancelling 3 of 10 matching pending job(s)"),
        "{}",
        text(&cancelled.stderr)
    );
    assert_eq!(db.count("pdq.jobs").await, 7);
    assert_eq!(db.count("pdq.cancelled_jobs").await, 3);

    for refused in [
        &["dlq", "requeue", "--all", "--limit", "0"][..],
        &["jobs", "cancel", "--all", "--limit", "-1"][..],
    ] {
        let output = pdq_as(&url, refused);
        assert_eq!(output.status.code(), Some(2), "{refused:?}: {output:?}");
    }
    assert_eq!(
        db.count("pdq.jobs").await,
        7,
        "a refused limit touches nothing"
    );
    db.drop_database().await;
}

// ---------------------------------------------------------------------------------------------
// Item: the demo's verdict.

#[tokio::test]
async fn the_demo_fails_and_says_so_when_jobs_are_still_pending_at_its_timeout() {
    let output = pdq_as(
        &crate::helpers::database_url(),
        &["demo", "--timeout-secs", "0", "--no-console"],
    );
    let said = text(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(1),
        "{said}\n{}",
        text(&output.stderr)
    );
    assert!(said.contains("INCOMPLETE"), "{said}");
    assert!(said.contains("still pending"), "{said}");
    assert!(
        !said.contains("every accepted update was applied"),
        "{said}"
    );
}
