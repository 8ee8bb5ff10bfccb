//! Hostile producers: rows that used to wedge or crash the worker, idempotency keys under races
//! and after pruning, and the smaller holes in the SQL contract.

use std::process::Command;
use std::time::Duration;

use pdq::queue::lease::{ClaimOptions, DeadLetterRecord};
use pdq::queue::{self, DeadLetterFilter, DeadReason, NewJob};
use serde_json::json;
use sqlx::{Connection, PgConnection, PgPool};
use uuid::Uuid;

use crate::helpers::TestDb;
use crate::roles::{finish, is_permission_denied, LoginRole};

fn job() -> NewJob {
    NewJob {
        locators: queue::Locators::ids(Uuid::new_v4(), Uuid::new_v4()),
        attributes: json!({"tier": "gold"}),
        ..NewJob::default()
    }
}

fn keyed(key: &str) -> NewJob {
    NewJob {
        idempotency_key: Some(key.to_owned()),
        ..job()
    }
}

async fn claim_all(pool: &PgPool) -> Vec<queue::Unit> {
    let options = ClaimOptions {
        units: 1_000,
        ..ClaimOptions::default()
    };
    queue::lease::claim(pool, &options).await.unwrap()
}

fn success(unit: &queue::Unit) -> queue::lease::Success {
    queue::lease::Success {
        fence: unit.fence(),
        conversation_id: unit.head().locators.conversation_id,
        participant_id: unit.head().locators.participant_id,
        key_versions: unit.key_versions(),
        superseded: Vec::new(),
    }
}

/// How many jobs, queued or applied, carry `key`.
async fn jobs_with_key(pool: &PgPool, key: &str) -> i64 {
    sqlx::query_scalar(
        "select (select count(*) from pdq.jobs where idempotency_key = $1)
              + (select count(*) from pdq.finished_jobs where idempotency_key = $1)",
    )
    .bind(key)
    .fetch_one(pool)
    .await
    .unwrap()
}

const KEYED_INSERT: &str = "insert into pdq.jobs (conversation_id, attributes, idempotency_key)
    values (gen_random_uuid(), '{\"a\": \"b\"}', $1) on conflict (idempotency_key) do nothing";

#[tokio::test]
async fn a_producer_may_insert_only_the_contract_columns() {
    let db = TestDb::new().await;
    let producer = LoginRole::new(&db, "pdq_producer").await;
    let contract = "insert into pdq.jobs (conversation_id, external_tag, participant_id,
        participant_purpose, participant_external_contact_id, participant_name, attributes,
        priority, run_at, expires_at, idempotency_key, max_attempts)
        values (gen_random_uuid(), null, null, 'agent', null, null, '{\"a\": \"b\"}', 'backfill',
                now(), now() + interval '1 hour', 'contract-1', 5)";
    sqlx::query(contract).execute(&producer.pool).await.unwrap();
    for (column, value) in [
        ("attempts", "2147483647"),
        ("state", "'running'"),
        ("locked_until", "'infinity'"),
        ("lease_token", "gen_random_uuid()"),
        ("created_at", "now()"),
        ("first_attempt_at", "now()"),
    ] {
        let result = sqlx::query(&format!(
            "insert into pdq.jobs (conversation_id, attributes, {column})
             values (gen_random_uuid(), '{{\"a\": \"b\"}}', {value})"
        ))
        .execute(&producer.pool)
        .await;
        assert!(
            is_permission_denied(&result),
            "a producer must not set {column}: {result:?}"
        );
    }
    assert_eq!(db.count("pdq.jobs").await, 1);
    let overriding = sqlx::query(
        "insert into pdq.jobs (id, conversation_id, attributes) overriding system value
         values (1, gen_random_uuid(), '{\"a\": \"b\"}')",
    )
    .execute(&producer.pool)
    .await;
    assert!(is_permission_denied(&overriding), "{overriding:?}");
    let id = sqlx::query(
        "insert into pdq.jobs (id, conversation_id, attributes)
         values (1, gen_random_uuid(), '{\"a\": \"b\"}')",
    )
    .execute(&producer.pool)
    .await;
    assert!(id.is_err(), "a producer must not set id: {id:?}");
    let explicit_id = sqlx::query(
        "insert into pdq.jobs (id, conversation_id, attributes)
         values (1, gen_random_uuid(), '{\"a\": \"b\"}')",
    )
    .execute(&db.pool)
    .await;
    assert!(
        explicit_id.is_err(),
        "job ids come from the sequence only, whoever inserts"
    );
    finish(db, vec![producer]).await;
}

#[tokio::test]
async fn non_finite_or_unreadable_times_and_a_deadline_before_run_at_are_refused_by_name() {
    let db = TestDb::new().await;
    let cases = [
        ("run_at", "'-infinity'", "run_at_must_be_finite"),
        ("run_at", "'infinity'", "run_at_must_be_finite"),
        ("expires_at", "'infinity'", "expires_at_must_be_finite"),
        ("expires_at", "'-infinity'", "expires_at_must_be_finite"),
        ("expires_at", "now()", "expires_at_must_be_after_run_at"),
        (
            "expires_at",
            "now() - interval '1 minute'",
            "expires_at_must_be_after_run_at",
        ),
        ("attempts", "-1", "attempts_must_not_be_negative"),
        // Finite for Postgres, but past what any client (and the worker) can read.
        (
            "run_at",
            "'10000-01-01 00:00:00+00'",
            "run_at_must_be_before_the_year_10000",
        ),
        (
            "expires_at",
            "'290000-01-01'",
            "expires_at_must_be_before_the_year_10000",
        ),
    ];
    for (column, value, constraint) in cases {
        let error = sqlx::query(&format!(
            "insert into pdq.jobs (conversation_id, attributes, {column})
             values (gen_random_uuid(), '{{\"a\": \"b\"}}', {value})"
        ))
        .execute(&db.pool)
        .await
        .expect_err(constraint);
        let refused = error.as_database_error().and_then(|e| e.constraint());
        assert_eq!(refused, Some(constraint), "{column} = {value}: {error}");
        assert_ne!(
            queue::constraint_meaning(constraint),
            queue::constraint_meaning("unknown"),
            "{constraint} has a meaning for producers"
        );
    }
    // A deadline after run_at is fine, and a retry may later move run_at up to the deadline.
    let deadline = NewJob {
        expires_at: Some(chrono::Utc::now() + chrono::Duration::seconds(30)),
        ..job()
    };
    queue::enqueue(&db.pool, &deadline).await.unwrap().unwrap();
    let unit = claim_all(&db.pool).await.remove(0);
    queue::lease::retry(
        &db.pool,
        &unit.fence(),
        Duration::from_secs(30),
        &json!({}),
        true,
    )
    .await
    .unwrap();
    db.drop_database().await;
}

/// Enqueues two jobs, applies the first and dead-letters the second; returns their ids.
async fn archive_two(db: &TestDb) -> (i64, i64) {
    let record = DeadLetterRecord::new(DeadReason::NotFound, "gone");
    let first = queue::enqueue(&db.pool, &job()).await.unwrap().unwrap();
    let second = queue::enqueue(&db.pool, &job()).await.unwrap().unwrap();
    for unit in claim_all(&db.pool).await {
        if unit.head().id == first {
            let left = queue::lease::succeed_batch(&db.pool, &[success(&unit)]).await;
            assert!(left.unwrap().is_empty(), "job {first} archived");
        } else {
            assert_eq!(unit.head().id, second);
            queue::lease::dead_letter(&db.pool, &unit.fence(), None, &record, true)
                .await
                .unwrap();
        }
    }
    (first, second)
}

#[tokio::test]
async fn archiving_never_collides_after_the_id_sequence_restarts() {
    let db = TestDb::new().await;
    crate::helpers::let_ids_repeat(&db.pool).await;
    let before = archive_two(&db).await;
    sqlx::query("truncate pdq.jobs restart identity")
        .execute(&db.pool)
        .await
        .unwrap();
    let after = archive_two(&db).await;
    assert_eq!(
        before, after,
        "the restarted sequence handed out the same ids"
    );
    assert_eq!(db.count("pdq.finished_jobs").await, 2);
    assert_eq!(db.count("pdq.dead_letters").await, 2);

    // Both dead letters with one id stay visible and are requeued as separate jobs.
    let shown = queue::dlq::show(&db.pool, after.1).await.unwrap().unwrap();
    assert_eq!(shown.id, after.1);
    let filter = DeadLetterFilter {
        ids: vec![after.1],
        ..DeadLetterFilter::default()
    };
    assert_eq!(queue::dlq::list(&db.pool, &filter).await.unwrap().len(), 2);
    let requeued = queue::dlq::requeue(&db.pool, &filter, false).await.unwrap();
    assert_eq!(requeued, 2);

    // Start-up moves the sequence past every id in use.
    let highest = queue::advance_job_ids(&db.pool).await.unwrap();
    assert!(highest >= after.1);
    sqlx::query("truncate pdq.jobs restart identity")
        .execute(&db.pool)
        .await
        .unwrap();
    let highest = queue::advance_job_ids(&db.pool).await.unwrap();
    assert_eq!(highest, after.1.max(after.0));
    let next = queue::enqueue(&db.pool, &job()).await.unwrap().unwrap();
    assert!(next > highest, "new id {next} after {highest}");
    assert_eq!(
        queue::advance_job_ids(&db.pool).await.unwrap(),
        next,
        "never moves backwards"
    );
    let again = queue::enqueue(&db.pool, &job()).await.unwrap().unwrap();
    assert_eq!(again, next + 1);
    db.drop_database().await;
}

#[tokio::test]
async fn a_key_inserted_while_its_job_is_being_archived_is_not_enqueued_again() {
    let db = TestDb::new().await;
    let id = queue::enqueue(&db.pool, &keyed("order-7"))
        .await
        .unwrap()
        .unwrap();
    // A finish in progress: the job is deleted and archived, not yet committed.
    let mut finisher = PgConnection::connect_with(&db.options).await.unwrap();
    let mut finishing = finisher.begin().await.unwrap();
    sqlx::query(
        "with done as (delete from pdq.jobs where id = $1 returning *)
         insert into pdq.finished_jobs (id, conversation_id, attributes, priority,
             idempotency_key, created_at, run_at, attempts)
         select id, conversation_id, attributes, priority, idempotency_key, created_at, run_at, 1
         from done",
    )
    .bind(id)
    .execute(&mut *finishing)
    .await
    .unwrap();

    let pool = db.pool.clone();
    let producer = tokio::spawn(async move {
        sqlx::query(KEYED_INSERT)
            .bind("order-7")
            .execute(&pool)
            .await
            .map(|r| r.rows_affected())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    finishing.commit().await.unwrap();
    let inserted = tokio::time::timeout(Duration::from_secs(10), producer)
        .await
        .expect("the producer's insert ends")
        .unwrap()
        .unwrap();
    assert_eq!(inserted, 0, "the repeated key is a no-op");
    assert_eq!(jobs_with_key(&db.pool, "order-7").await, 1);
    db.drop_database().await;
}

#[tokio::test]
async fn concurrent_inserts_of_one_key_while_finishes_run_yield_one_job() {
    let db = TestDb::with_connections(12).await;
    let keys: Vec<String> = (0..40).map(|i| format!("burst-{i}")).collect();
    let finisher_pool = db.pool.clone();
    let stop = tokio_util::sync::CancellationToken::new();
    let finisher_stop = stop.clone();
    let finisher = tokio::spawn(async move {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while !finisher_stop.is_cancelled() && tokio::time::Instant::now() < deadline {
            let units = claim_all(&finisher_pool).await;
            let done: Vec<_> = units.iter().map(success).collect();
            queue::lease::succeed_batch(&finisher_pool, &done)
                .await
                .unwrap();
        }
    });
    for key in &keys {
        let attempts = (0..6).map(|_| {
            let pool = db.pool.clone();
            let key = key.clone();
            tokio::spawn(async move {
                sqlx::query(KEYED_INSERT)
                    .bind(&key)
                    .execute(&pool)
                    .await
                    .unwrap();
                queue::enqueue(&pool, &keyed(&key)).await.unwrap();
            })
        });
        for attempt in attempts.collect::<Vec<_>>() {
            attempt.await.unwrap();
        }
    }
    stop.cancel();
    finisher.await.unwrap();
    for key in &keys {
        assert_eq!(jobs_with_key(&db.pool, key).await, 1, "{key}");
    }
    db.drop_database().await;
}

#[tokio::test]
async fn a_key_stays_known_after_its_finished_job_was_pruned_until_the_horizon() {
    let db = TestDb::new().await;
    let first = queue::enqueue(&db.pool, &keyed("order-9")).await.unwrap();
    assert!(first.is_some());
    let unit = claim_all(&db.pool).await.remove(0);
    queue::lease::succeed_batch(&db.pool, &[success(&unit)])
        .await
        .unwrap();
    let pruned = queue::prune(&db.pool, queue::Retained::FinishedJobs, Duration::ZERO, 100)
        .await
        .unwrap();
    assert_eq!(pruned, 1);

    sqlx::query(KEYED_INSERT)
        .bind("order-9")
        .execute(&db.pool)
        .await
        .unwrap();
    assert_eq!(
        queue::enqueue(&db.pool, &keyed("order-9")).await.unwrap(),
        None
    );
    assert_eq!(
        db.count("pdq.jobs").await,
        0,
        "an applied key stays applied"
    );

    // A queued key is returned, and kept however old it is.
    let queued = queue::enqueue(&db.pool, &keyed("order-10")).await.unwrap();
    assert_eq!(
        queue::enqueue(&db.pool, &keyed("order-10")).await.unwrap(),
        queued
    );

    // Within the horizon nothing is forgotten; past it the applied key is, the queued one not.
    let horizon = queue::DEFAULT_IDEMPOTENCY_KEY_HORIZON;
    assert!(horizon >= Duration::from_secs(7 * 86_400));
    assert_eq!(
        queue::prune(&db.pool, queue::Retained::IdempotencyKeys, horizon, 100)
            .await
            .unwrap(),
        0
    );
    sqlx::query("update pdq.idempotency_keys set created_at = now() - interval '31 days'")
        .execute(&db.pool)
        .await
        .unwrap();
    assert_eq!(
        queue::prune(&db.pool, queue::Retained::IdempotencyKeys, horizon, 100)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        queue::enqueue(&db.pool, &keyed("order-10")).await.unwrap(),
        queued
    );
    let again = queue::enqueue(&db.pool, &keyed("order-9")).await.unwrap();
    assert!(again.is_some(), "past the horizon the key is new again");
    db.drop_database().await;
}

#[tokio::test]
async fn protected_prefixes_match_whatever_the_case() {
    let db = TestDb::new().await;
    for key in [
        "Context.firstName",
        "CONTEXT.x",
        "DialerContactId",
        "conversationdetails.a",
    ] {
        let bad = NewJob {
            attributes: json!({ key: "v" }),
            ..job()
        };
        match queue::enqueue(&db.pool, &bad).await {
            Err(queue::Error::Refused { constraint, .. }) => assert_eq!(
                constraint, "attribute_keys_must_not_use_a_protected_prefix",
                "{key}"
            ),
            other => panic!("{key} must be refused: {other:?}"),
        }
    }
    assert_eq!(db.count("pdq.jobs").await, 0);
    db.drop_database().await;
}

#[tokio::test]
async fn a_nul_character_is_refused_with_a_named_rule_and_exit_code_3() {
    let db = TestDb::new().await;
    let output = Command::new(env!("CARGO_BIN_EXE_pdq"))
        .args([
            "enqueue",
            "--conversation-id",
            "6f1c2d3e-0000-4000-8000-000000000001",
            "--attributes",
            r#"{"note": "a\u0000b"}"#,
        ])
        .env("DATABASE_URL", db.url())
        .env("RUST_LOG", "warn")
        .output()
        .expect("run pdq");
    assert_eq!(output.status.code(), Some(3), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("attributes_must_not_contain_nul"),
        "{stderr}"
    );

    let nul_key = NewJob {
        attributes: json!({ "a\u{0}": "b" }),
        ..job()
    };
    let nul_tag = NewJob {
        locators: queue::Locators::external_tag("ORDER\u{0}1"),
        ..job()
    };
    for (bad, rule) in [
        (nul_key, "attributes_must_not_contain_nul"),
        (nul_tag, "text_must_not_contain_nul"),
    ] {
        match queue::enqueue(&db.pool, &bad).await {
            Err(queue::Error::Refused {
                constraint,
                meaning,
            }) => {
                assert_eq!(constraint, rule);
                assert_ne!(meaning, queue::constraint_meaning("unknown"));
            }
            other => panic!("{rule}: {other:?}"),
        }
        let many = queue::enqueue_many(&db.pool, &[job(), bad]).await;
        assert!(
            matches!(many, Err(queue::Error::Refused { .. })),
            "{many:?}"
        );
    }
    assert_eq!(db.count("pdq.jobs").await, 0);
    db.drop_database().await;
}

#[tokio::test]
async fn dead_letters_are_pruned_after_their_retention_and_never_before() {
    let db = TestDb::new().await;
    for _ in 0..3 {
        queue::enqueue(&db.pool, &job()).await.unwrap();
    }
    let record = DeadLetterRecord::new(DeadReason::NotFound, "gone");
    for unit in claim_all(&db.pool).await {
        queue::lease::dead_letter(&db.pool, &unit.fence(), None, &record, true)
            .await
            .unwrap();
    }
    sqlx::query(
        "update pdq.dead_letters set dead_at = now() - interval '31 days'
         where id in (select id from pdq.dead_letters order by id limit 2)",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let retention = queue::DEFAULT_DEAD_LETTER_RETENTION;
    assert_eq!(retention, Duration::from_secs(30 * 86_400));
    assert_eq!(
        queue::prune(&db.pool, queue::Retained::DeadLetters, retention, 1)
            .await
            .unwrap(),
        1,
        "at most limit rows per call"
    );
    assert_eq!(
        queue::prune(&db.pool, queue::Retained::DeadLetters, retention, 100)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        queue::prune(&db.pool, queue::Retained::DeadLetters, retention, 100)
            .await
            .unwrap(),
        0
    );
    let left: i64 = sqlx::query_scalar(
        "select count(*) from pdq.dead_letters where dead_at > now() - interval '1 day'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(left, 1, "the young dead letter is kept");
    assert_eq!(db.count("pdq.dead_letters").await, 1);
    db.drop_database().await;
}
