//! `pdq migrate` cannot be stalled: its lock is one only the schema's owner can take, it waits
//! for the locks its DDL needs at most a lock timeout at a time (so the workers never queue
//! behind it for longer), retries a bounded number of times, and names the session in its way.

use std::borrow::Cow;
use std::process::Command;
use std::time::{Duration, Instant};

use pdq::db::MigrateSettings;
use pdq::queue::lease::ClaimOptions;
use sqlx::migrate::{Migration, MigrationType};
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgConnection, PgPool};
use uuid::Uuid;

use crate::helpers::TestDb;
use crate::roles::{finish, LoginRole};

/// A login role that holds no pdq role at all.
async fn plain_login(db: &TestDb) -> LoginRole {
    let name = format!("pdq_t_{}", Uuid::new_v4().simple());
    sqlx::query(&format!("create role {name} login"))
        .execute(&db.pool)
        .await
        .unwrap();
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .connect_with(db.options.clone().username(&name))
        .await
        .unwrap();
    LoginRole { name, pool }
}

/// Whether `pool`'s role may take the lock migrate takes.
async fn may_take_the_migrate_lock(pool: &PgPool) -> bool {
    let mut tx = pool.begin().await.unwrap();
    let taken = sqlx::query("lock table pdq._sqlx_migrations in exclusive mode nowait")
        .execute(&mut *tx)
        .await;
    let _ = tx.rollback().await;
    match taken {
        Ok(_) => true,
        Err(error) => {
            let code = error.as_database_error().and_then(|e| e.code());
            assert_eq!(code.as_deref(), Some("42501"), "{error}");
            false
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_login_or_a_producer_cannot_stall_migrate() {
    let db = TestDb::new().await;
    let plain = plain_login(&db).await;
    let producer = LoginRole::new(&db, "pdq_producer").await;
    let operator = LoginRole::new(&db, "pdq_operator").await;
    let worker = LoginRole::new(&db, "pdq_worker").await;
    for role in [&plain, &producer, &operator, &worker] {
        assert!(
            !may_take_the_migrate_lock(&role.pool).await,
            "{} may take the migrate lock",
            role.name
        );
    }
    // The plain login holds the advisory key an older migrate took, by its session and by an
    // open transaction; the producer has an open transaction that inserted a job and tries
    // for the key too.
    let mut plain_conn = PgConnection::connect_with(&db.options.clone().username(&plain.name))
        .await
        .unwrap();
    for statement in [
        "select pg_advisory_lock(hashtext('pdq.migrate'))",
        "begin",
        "select pg_advisory_xact_lock(hashtext('pdq.migrate'))",
    ] {
        sqlx::query(statement)
            .execute(&mut plain_conn)
            .await
            .unwrap();
    }
    let mut producer_conn =
        PgConnection::connect_with(&db.options.clone().username(&producer.name))
            .await
            .unwrap();
    for statement in [
        "begin",
        "insert into pdq.jobs (conversation_id, attributes) values (gen_random_uuid(), '{\"a\": \"b\"}')",
        "select pg_try_advisory_xact_lock(hashtext('pdq.migrate'))",
    ] {
        sqlx::query(statement)
            .execute(&mut producer_conn)
            .await
            .unwrap();
    }
    let held = vec![plain_conn, producer_conn];
    let url = db.url();
    let started = Instant::now();
    let migrate = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_pdq"))
            .arg("migrate")
            .env("DATABASE_URL", url)
            .env("RUST_LOG", "warn")
            .output()
            .expect("run pdq")
    });
    let out = tokio::time::timeout(Duration::from_secs(60), migrate)
        .await
        .expect("pdq migrate hung")
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    for conn in held {
        let _ = conn.close().await;
    }
    finish(db, vec![plain, producer, operator, worker]).await;
}

/// Every migration of this binary and one more that alters `pdq.jobs`.
fn with_an_upgrade_of_jobs() -> Vec<Migration> {
    let mut migrations: Vec<Migration> = pdq::db::MIGRATOR.iter().cloned().collect();
    migrations.push(Migration::new(
        99_990_000_000_001,
        Cow::Borrowed("an upgrade that alters jobs"),
        MigrationType::Simple,
        Cow::Borrowed("alter table pdq.jobs add column upgraded integer;"),
        false,
    ));
    migrations
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_producers_open_transaction_is_named_and_the_workers_never_queue_behind_migrate() {
    let db = TestDb::new().await;
    let producer = LoginRole::new(&db, "pdq_producer").await;
    let worker = LoginRole::new(&db, "pdq_worker").await;
    // The producer inserts and leaves its transaction open (ROW EXCLUSIVE on pdq.jobs).
    let mut open = PgConnection::connect_with(
        &db.options
            .clone()
            .username(&producer.name)
            .application_name("crm-sync"),
    )
    .await
    .unwrap();
    let producer_pid: i32 = sqlx::query_scalar("select pg_backend_pid()")
        .fetch_one(&mut open)
        .await
        .unwrap();
    sqlx::query("begin").execute(&mut open).await.unwrap();
    sqlx::query(
        "insert into pdq.jobs (conversation_id, attributes) values (gen_random_uuid(), '{\"a\": \"b\"}')",
    )
    .execute(&mut open)
    .await
    .unwrap();

    let settings = MigrateSettings {
        lock_timeout: Duration::from_millis(300),
        attempts: 3,
        pause: Duration::from_millis(200),
    };
    let migrations = with_an_upgrade_of_jobs();
    let started = Instant::now();
    let done = std::sync::atomic::AtomicBool::new(false);
    let migrate = async {
        let result = tokio::time::timeout(
            Duration::from_secs(30),
            pdq::db::migrate_with(&db.options, &migrations, &settings),
        )
        .await;
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        result.expect("migrate waited forever")
    };
    // Meanwhile the worker's claims answer within about one lock timeout.
    let claiming = async {
        let mut slowest = Duration::ZERO;
        let mut claims = 0;
        while !done.load(std::sync::atomic::Ordering::Relaxed) && claims < 500 {
            let asked = Instant::now();
            let claimed = tokio::time::timeout(
                Duration::from_secs(10),
                pdq::queue::lease::claim(&worker.pool, &ClaimOptions::default()),
            )
            .await
            .expect("a worker's claim queued behind migrate")
            .unwrap();
            assert!(claimed.is_empty());
            slowest = slowest.max(asked.elapsed());
            claims += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        (slowest, claims)
    };
    let (result, (slowest, claims)) = tokio::join!(migrate, claiming);
    let took = started.elapsed();
    let error = result.expect_err("migrate cannot alter jobs under an open transaction");
    let message = error.to_string();
    for said in [
        format!("pid {producer_pid}"),
        producer.name.clone(),
        "crm-sync".to_owned(),
        "idle in transaction".to_owned(),
        "3 attempts".to_owned(),
    ] {
        assert!(message.contains(&said), "{said:?} in {message}");
    }
    assert!(took < Duration::from_secs(10), "{took:?}");
    assert!(claims >= 3, "{claims} claims");
    assert!(
        slowest < Duration::from_secs(2),
        "a claim waited {slowest:?} behind migrate"
    );
    let upgraded: bool = sqlx::query_scalar(
        "select exists (select 1 from information_schema.columns
         where table_schema = 'pdq' and table_name = 'jobs' and column_name = 'upgraded')",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert!(!upgraded, "a failed run applies nothing");

    // Once the producer commits, the same upgrade goes through.
    sqlx::query("commit").execute(&mut open).await.unwrap();
    let _ = open.close().await;
    pdq::db::migrate_with(&db.options, &migrations, &settings)
        .await
        .unwrap();
    let upgraded: bool = sqlx::query_scalar(
        "select exists (select 1 from information_schema.columns
         where table_schema = 'pdq' and table_name = 'jobs' and column_name = 'upgraded')",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert!(upgraded);
    finish(db, vec![producer, worker]).await;
}
