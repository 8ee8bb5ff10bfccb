//! Least privilege, tested by logging in as each role.

use std::time::Duration;

use pdq::queue::lease::{ClaimOptions, DeadLetterRecord};
use pdq::queue::{self, DeadLetterFilter, DeadReason, NewJob};
use serde_json::json;
use sqlx::postgres::{PgListener, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgPool};
use uuid::Uuid;

use crate::helpers::TestDb;

/// A login role created for one test, member of one of pdq's roles, with a pool that logs in
/// as it. Roles are cluster-wide, so every test makes its own.
pub struct LoginRole {
    /// The role's name (`pdq_t_…`).
    pub name: String,
    /// Connections logged in as the role.
    pub pool: PgPool,
}

impl LoginRole {
    /// Creates a login role in `group` and connects as it (trust authentication).
    pub async fn new(db: &TestDb, group: &str) -> LoginRole {
        let name = format!("pdq_t_{}", Uuid::new_v4().simple());
        sqlx::query(&format!("create role {name} login in role {group}"))
            .execute(&db.pool)
            .await
            .expect("create login role");
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .connect_with(db.options.clone().username(&name))
            .await
            .expect("log in as the test role");
        LoginRole { name, pool }
    }
}

/// Drops the database, then the test's login roles (they hold no rights outside it).
pub async fn finish(db: TestDb, roles: Vec<LoginRole>) {
    for role in &roles {
        role.pool.close().await;
    }
    let server = db.server.clone();
    db.drop_database().await;
    let mut admin = PgConnection::connect_with(&pdq::db::connect_options(&server).unwrap())
        .await
        .unwrap();
    for role in roles {
        sqlx::query(&format!("drop role if exists {}", role.name))
            .execute(&mut admin)
            .await
            .unwrap();
    }
    let _ = admin.close().await;
}

/// Whether Postgres refused the statement for want of a privilege (SQLSTATE 42501).
pub fn is_permission_denied(result: &Result<sqlx::postgres::PgQueryResult, sqlx::Error>) -> bool {
    match result {
        Err(error) => error
            .as_database_error()
            .and_then(|e| e.code())
            .is_some_and(|code| code == "42501"),
        Ok(_) => false,
    }
}

async fn run(pool: &PgPool, statement: &str) -> Result<sqlx::postgres::PgQueryResult, sqlx::Error> {
    sqlx::query(statement).execute(pool).await
}

async fn assert_refused(pool: &PgPool, role: &str, statements: &[&str]) {
    for statement in statements {
        let result = run(pool, statement).await;
        assert!(
            is_permission_denied(&result),
            "{role} must not run {statement}: {result:?}"
        );
    }
}

fn job() -> NewJob {
    NewJob {
        locators: queue::Locators::ids(Uuid::new_v4(), Uuid::new_v4()),
        attributes: json!({"tier": "gold"}),
        ..NewJob::default()
    }
}

#[tokio::test]
async fn the_worker_role_runs_the_worker_and_nothing_more() {
    let db = TestDb::new().await;
    let worker = LoginRole::new(&db, "pdq_worker").await;
    let w = &worker.pool;
    for _ in 0..3 {
        queue::enqueue(&db.pool, &job()).await.unwrap();
    }

    // Everything the worker does, done as the worker role.
    let mut listener = PgListener::connect_with(w).await.unwrap();
    listener.listen("pdq_jobs").await.unwrap();
    queue::advance_job_ids(w).await.unwrap();
    queue::budget::reserve(w, "budget", 2, Duration::from_millis(10))
        .await
        .unwrap();
    queue::budget::pause(
        w,
        "budget",
        Duration::from_millis(10),
        queue::budget::PauseReason::RateLimited,
    )
    .await
    .unwrap();
    let options = ClaimOptions {
        units: 3,
        ..ClaimOptions::default()
    };
    let mut units = queue::lease::claim(w, &options).await.unwrap();
    assert_eq!(units.len(), 3);
    let (first, second, third) = (units.remove(0), units.remove(0), units.remove(0));
    queue::lease::renew_leases(w, &[first.lease], Duration::from_secs(60))
        .await
        .unwrap();
    let target = queue::lease::target_key(Uuid::new_v4(), Uuid::new_v4());
    let held = queue::lease::hold_target(w, first.lease, &target, &first.key_versions())
        .await
        .unwrap();
    assert!(
        matches!(held, queue::lease::TargetHold::Held { .. }),
        "{held:?}"
    );
    let done = queue::lease::Success {
        fence: first.fence(),
        conversation_id: Some(Uuid::new_v4()),
        participant_id: Some(Uuid::new_v4()),
        key_versions: first.key_versions(),
        superseded: vec![Vec::new(); first.jobs.len()],
    };
    assert!(queue::lease::succeed_batch(w, &[done])
        .await
        .unwrap()
        .is_empty());
    let record = DeadLetterRecord::new(DeadReason::NotFound, "gone");
    queue::lease::dead_letter(w, &second.fence(), None, &record, true)
        .await
        .unwrap();
    queue::lease::release(w, &third.fence()).await.unwrap();
    queue::lease::rescue_expired_leases(w).await.unwrap();
    for retained in [
        queue::Retained::FinishedJobs,
        queue::Retained::AppliedKeys,
        queue::Retained::DeadLetters,
        queue::Retained::IdempotencyKeys,
    ] {
        queue::prune(w, retained, Duration::from_secs(86_400), 10)
            .await
            .unwrap();
    }
    run(w, "select prefix from pdq.protected_key_prefixes")
        .await
        .unwrap();
    run(w, "select version from pdq._sqlx_migrations")
        .await
        .unwrap();

    assert_refused(
        w,
        "pdq_worker",
        &[
            "delete from pdq.protected_key_prefixes",
            "insert into pdq.protected_key_prefixes values ('x', 'y')",
            "update pdq._sqlx_migrations set description = 'rewritten'",
            "delete from pdq._sqlx_migrations",
            "delete from pdq.dead_letters",
            "update pdq.dead_letters set reason = 'x'",
            "insert into pdq.jobs (conversation_id, attributes) values (gen_random_uuid(), '{\"a\": \"b\"}')",
            "select pdq.enqueue(attributes => '{\"a\": \"b\"}', conversation_id => gen_random_uuid())",
            "select pdq.requeue_dead_letters(array[1::bigint])",
            "select key from pdq.idempotency_keys",
            "delete from pdq.idempotency_keys",
        ],
    )
    .await;
    assert_eq!(db.count("pdq.protected_key_prefixes").await, 4);
    assert_eq!(db.count("pdq.dead_letters").await, 1);
    finish(db, vec![worker]).await;
}

#[tokio::test]
async fn the_operator_role_reads_requeues_and_purges_but_cannot_enqueue() {
    let db = TestDb::new().await;
    let operator = LoginRole::new(&db, "pdq_operator").await;
    let o = &operator.pool;
    for _ in 0..2 {
        queue::enqueue(&db.pool, &job()).await.unwrap();
    }
    let units = queue::lease::claim(&db.pool, &ClaimOptions::default())
        .await
        .unwrap();
    let record = DeadLetterRecord::new(DeadReason::NotFound, "gone");
    for unit in &units {
        queue::lease::dead_letter(&db.pool, &unit.fence(), None, &record, true)
            .await
            .unwrap();
    }

    queue::status(o).await.unwrap();
    let letters = queue::dlq::list(o, &DeadLetterFilter::default())
        .await
        .unwrap();
    assert_eq!(letters.len(), 2);
    let requeue = DeadLetterFilter {
        ids: vec![letters[0].id],
        ..DeadLetterFilter::default()
    };
    assert_eq!(queue::dlq::requeue(o, &requeue, false).await.unwrap(), 1);
    assert_eq!(db.count("pdq.jobs").await, 1, "requeued as a new job");
    let purge = DeadLetterFilter {
        ids: vec![letters[1].id],
        ..DeadLetterFilter::default()
    };
    assert_eq!(queue::dlq::purge(o, &purge).await.unwrap(), 1);
    for table in [
        "jobs",
        "finished_jobs",
        "inflight",
        "idempotency_keys",
        "_sqlx_migrations",
    ] {
        run(o, &format!("select count(*) from pdq.{table}"))
            .await
            .unwrap();
    }

    assert_refused(
        o,
        "pdq_operator",
        &[
            "insert into pdq.jobs (conversation_id, attributes) values (gen_random_uuid(), '{\"a\": \"b\"}')",
            "update pdq.jobs set attempts = 0",
            "delete from pdq.jobs",
            "update pdq.dead_letters set requeued_at = null",
            "delete from pdq.finished_jobs",
            "delete from pdq.protected_key_prefixes",
            "select pdq.prune_dead_letters(interval '0', 10)",
            "select pdq.advance_job_ids()",
        ],
    )
    .await;
    finish(db, vec![operator]).await;
}

#[tokio::test]
async fn the_producer_role_may_only_enqueue() {
    let db = TestDb::new().await;
    let producer = LoginRole::new(&db, "pdq_producer").await;
    let p = &producer.pool;
    let id = queue::enqueue(p, &job()).await.unwrap();
    assert!(id.is_some(), "pdq.enqueue works for producers");
    let keyed = NewJob {
        idempotency_key: Some("k-0".into()),
        ..job()
    };
    let first = queue::enqueue(p, &keyed).await.unwrap();
    assert_eq!(queue::enqueue(p, &keyed).await.unwrap(), first);
    run(p, "insert into pdq.jobs (conversation_id, attributes, idempotency_key) values (gen_random_uuid(), '{\"a\": \"b\"}', 'k-1') on conflict (idempotency_key) do nothing returning id")
        .await
        .unwrap();
    assert_refused(
        p,
        "pdq_producer",
        &[
            "select attributes from pdq.jobs",
            "update pdq.jobs set priority = 'live'",
            "delete from pdq.jobs",
            "select count(*) from pdq.finished_jobs",
            "select count(*) from pdq.dead_letters",
            "select count(*) from pdq.idempotency_keys",
            "delete from pdq.protected_key_prefixes",
            "select pdq.requeue_dead_letters(array[1::bigint])",
            "select pdq.prune_dead_letters(interval '0', 10)",
            "select pdq.prune_idempotency_keys(interval '0', 10)",
            "select pdq.advance_job_ids()",
        ],
    )
    .await;
    assert_eq!(db.count("pdq.jobs").await, 3);
    finish(db, vec![producer]).await;
}

#[tokio::test]
async fn a_producer_cannot_shadow_the_functions_the_checks_use() {
    let db = TestDb::new().await;
    let producer = LoginRole::new(&db, "pdq_producer").await;
    sqlx::query(&format!(
        "grant usage, create on schema public to {}",
        producer.name
    ))
    .execute(&db.pool)
    .await
    .unwrap();
    let mut conn = producer.pool.acquire().await.unwrap();
    for statement in [
        "create function public.jsonb_typeof(jsonb) returns text language sql as $$ select 'string' $$",
        "create function public.btrim(text) returns text language sql as $$ select 'x' $$",
        "set search_path = public, pg_catalog",
    ] {
        sqlx::query(statement).execute(&mut *conn).await.unwrap();
    }
    let shadowed: String = sqlx::query_scalar("select jsonb_typeof('1'::jsonb)")
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    assert_eq!(
        shadowed, "string",
        "the session really resolves the shadows"
    );
    for (attributes, constraint) in [
        (r#"{"a": 1}"#, "attribute_values_must_be_strings"),
        (r#"{" ": "v"}"#, "attribute_keys_must_not_be_empty"),
    ] {
        let error = sqlx::query(
            "insert into pdq.jobs (conversation_id, attributes) values (gen_random_uuid(), $1::jsonb)",
        )
        .bind(attributes)
        .execute(&mut *conn)
        .await
        .expect_err(attributes);
        let refused = error.as_database_error().and_then(|e| e.constraint());
        assert_eq!(refused, Some(constraint), "{attributes}: {error}");
    }
    drop(conn);
    assert_eq!(db.count("pdq.jobs").await, 0);
    finish(db, vec![producer]).await;
}
