//! Producers isolated from each other, tested by logging in as each: a producer reads and asks
//! about only its own jobs (queued, applied, dead-lettered), cannot claim another producer's
//! identity, shares it only through a group, and has idempotency keys of its own.

use pdq::queue::lease::{ClaimOptions, DeadLetterRecord, Success};
use pdq::queue::{self, DeadReason};
use sqlx::PgPool;
use uuid::Uuid;

use crate::helpers::TestDb;
use crate::roles::{finish, is_permission_denied, LoginRole};

/// Inserts a job the way the SQL contract (docs/sql-contract.md) does; returns its id (None: skipped).
async fn insert(pool: &PgPool, key: Option<&str>) -> Option<i64> {
    sqlx::query_scalar(
        "insert into pdq.jobs (conversation_id, attributes, idempotency_key)
         values ($1, '{\"tier\": \"gold\"}', $2)
         on conflict (idempotency_key) do nothing
         returning id",
    )
    .bind(Uuid::new_v4())
    .bind(key)
    .fetch_optional(pool)
    .await
    .unwrap()
}

/// The ids `pool`'s role reads from pdq.jobs.
async fn visible_ids(pool: &PgPool) -> Vec<i64> {
    sqlx::query_scalar("select id from pdq.jobs order by id")
        .fetch_all(pool)
        .await
        .unwrap()
}

/// `pdq.job_status(id)` as `pool`'s role: (job_id, state), None when no row.
async fn status_by_id(pool: &PgPool, id: i64) -> Option<(i64, String)> {
    sqlx::query_as("select job_id, state from pdq.job_status($1::bigint)")
        .bind(id)
        .fetch_optional(pool)
        .await
        .unwrap()
}

/// `pdq.job_status(key)` as `pool`'s role: (job_id, idempotency_key, state).
async fn status_by_key(pool: &PgPool, key: &str) -> Option<(i64, Option<String>, String)> {
    sqlx::query_as("select job_id, idempotency_key, state from pdq.job_status($1::text)")
        .bind(key)
        .fetch_optional(pool)
        .await
        .unwrap()
}

/// Claims every queued job as the worker: applies the first unit, dead-letters the others.
async fn work_off(worker: &PgPool) {
    let units = queue::lease::claim(
        worker,
        &ClaimOptions {
            units: 100,
            ..ClaimOptions::default()
        },
    )
    .await
    .unwrap();
    let mut units = units.into_iter();
    let first = units.next().expect("a unit to apply");
    let done = Success::of(&first, Uuid::new_v4(), Uuid::new_v4());
    assert!(queue::lease::succeed_batch(worker, &[done])
        .await
        .unwrap()
        .is_empty());
    let record = DeadLetterRecord::new(DeadReason::NotFound, "conversation gone");
    for unit in units {
        queue::lease::dead_letter(worker, &unit.fence(), None, &record, true)
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn a_producer_reads_and_asks_about_only_its_own_jobs() {
    let db = TestDb::new().await;
    let a = LoginRole::new(&db, "pdq_producer").await;
    let b = LoginRole::new(&db, "pdq_producer").await;
    let operator = LoginRole::new(&db, "pdq_operator").await;
    let worker = LoginRole::new(&db, "pdq_worker").await;

    let a_job = insert(&a.pool, Some("alice@example.com-order-1"))
        .await
        .unwrap();
    let b_job = insert(&b.pool, Some("bob@example.com-order-7"))
        .await
        .unwrap();
    let b_queued = insert(&b.pool, None).await.unwrap();

    // What each reads from pdq.jobs.
    assert_eq!(visible_ids(&a.pool).await, vec![a_job]);
    assert_eq!(visible_ids(&b.pool).await, vec![b_job, b_queued]);
    let keys: Vec<Option<String>> = sqlx::query_scalar("select idempotency_key from pdq.jobs")
        .fetch_all(&a.pool)
        .await
        .unwrap();
    assert_eq!(keys, vec![Some("alice@example.com-order-1".to_owned())]);
    assert_eq!(
        visible_ids(&operator.pool).await,
        vec![a_job, b_job, b_queued],
        "operators see every job"
    );
    // The recorded producer is the inserting role, and no producer may write it.
    let producers: Vec<(i64, Option<String>)> =
        sqlx::query_as("select id, producer from pdq.jobs order by id")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(
        producers,
        vec![
            (a_job, Some(a.name.clone())),
            (b_job, Some(b.name.clone())),
            (b_queued, Some(b.name.clone())),
        ]
    );
    let forged = sqlx::query(
        "insert into pdq.jobs (conversation_id, attributes, producer)
         values (gen_random_uuid(), '{\"a\": \"b\"}', $1)",
    )
    .bind(&b.name)
    .execute(&a.pool)
    .await;
    assert!(is_permission_denied(&forged), "{forged:?}");

    // Queued: each asks about its own, another's id is unknown to it.
    assert_eq!(
        status_by_id(&a.pool, a_job).await,
        Some((a_job, "pending".to_owned()))
    );
    for id in [b_job, b_queued] {
        assert_eq!(status_by_id(&a.pool, id).await, None, "job {id}");
    }
    assert_eq!(
        status_by_key(&a.pool, "bob@example.com-order-7").await,
        None
    );
    assert_eq!(status_by_id(&b.pool, a_job).await, None);

    // Applied and dead-lettered (by the worker role): still each its own.
    work_off(&worker.pool).await;
    assert_eq!(
        db.count("pdq.finished_jobs").await + db.count("pdq.dead_letters").await,
        3
    );
    let archived: i64 = sqlx::query_scalar(
        "select count(*) from (select producer from pdq.finished_jobs
                               union all select producer from pdq.dead_letters) p
         where producer is null",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(archived, 0, "archived jobs keep their producer");
    let a_state = status_by_id(&a.pool, a_job).await.expect("A's own job");
    assert!(
        ["applied", "dead_lettered"].contains(&a_state.1.as_str()),
        "{a_state:?}"
    );
    for id in [b_job, b_queued] {
        assert_eq!(status_by_id(&a.pool, id).await, None, "archived job {id}");
        assert!(status_by_id(&b.pool, id).await.is_some(), "B's job {id}");
        assert!(status_by_id(&operator.pool, id).await.is_some());
    }
    assert_eq!(
        status_by_key(&a.pool, "bob@example.com-order-7").await,
        None
    );
    assert!(status_by_key(&b.pool, "bob@example.com-order-7")
        .await
        .is_some());

    // A requeued dead letter stays its producer's.
    let dead: Vec<i64> = sqlx::query_scalar("select id from pdq.dead_letters")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    let requeued: i64 = sqlx::query_scalar("select pdq.requeue_dead_letters($1)")
        .bind(&dead)
        .fetch_one(&operator.pool)
        .await
        .unwrap();
    assert_eq!(requeued, dead.len() as i64);
    let orphans: i64 = sqlx::query_scalar("select count(*) from pdq.jobs where producer is null")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(orphans, 0);
    let b_requeued: i64 = sqlx::query_scalar("select count(*) from pdq.jobs where producer = $1")
        .bind(&b.name)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(visible_ids(&b.pool).await.len() as i64, b_requeued);
    let a_visible = visible_ids(&a.pool).await;
    let a_queued: i64 = sqlx::query_scalar("select count(*) from pdq.jobs where producer = $1")
        .bind(&a.name)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(a_visible.len() as i64, a_queued, "{a_visible:?}");
    finish(db, vec![a, b, operator, worker]).await;
}

#[tokio::test]
async fn logins_of_one_upstream_system_share_its_identity_through_a_group() {
    let db = TestDb::new().await;
    let group = format!("pdq_t_{}", Uuid::new_v4().simple());
    sqlx::query(&format!("create role {group} nologin in role pdq_producer"))
        .execute(&db.pool)
        .await
        .unwrap();
    let first = LoginRole::new(&db, &group).await;
    let second = LoginRole::new(&db, &group).await;
    let other = LoginRole::new(&db, "pdq_producer").await;

    let job = insert(&first.pool, Some("crm-17")).await.unwrap();
    assert_eq!(visible_ids(&second.pool).await, vec![job]);
    assert_eq!(
        status_by_key(&second.pool, "crm-17").await.map(|s| s.0),
        Some(job)
    );
    assert_eq!(
        insert(&second.pool, Some("crm-17")).await,
        None,
        "the group's key, repeated by another of its logins, is a no-op"
    );
    assert!(visible_ids(&other.pool).await.is_empty());
    assert_eq!(status_by_id(&other.pool, job).await, None);
    let recorded: String = sqlx::query_scalar("select producer from pdq.jobs where id = $1")
        .bind(job)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(recorded, group);

    finish(db, vec![first, second, other]).await;
    let server = crate::helpers::database_url();
    let admin = PgPool::connect(&server).await.unwrap();
    sqlx::query(&format!("drop role if exists {group}"))
        .execute(&admin)
        .await
        .unwrap();
}

#[tokio::test]
async fn two_producers_with_the_same_idempotency_key_each_get_their_job() {
    let db = TestDb::new().await;
    let a = LoginRole::new(&db, "pdq_producer").await;
    let b = LoginRole::new(&db, "pdq_producer").await;
    let key = "order-42-shipped";

    // A takes B's next key first: B's update must still be enqueued.
    let a_job = insert(&a.pool, Some(key)).await.expect("A's job");
    let b_job = insert(&b.pool, Some(key))
        .await
        .expect("B's job, not a no-op");
    assert_ne!(a_job, b_job);
    assert_eq!(db.count("pdq.jobs").await, 2, "both jobs exist");
    // Repeats are no-ops for each (the SQL contract), also without ON CONFLICT.
    assert_eq!(insert(&a.pool, Some(key)).await, None);
    assert_eq!(insert(&b.pool, Some(key)).await, None);
    let plain: Option<i64> = sqlx::query_scalar(
        "insert into pdq.jobs (external_tag, attributes, idempotency_key)
         values ('ORDER-42', '{\"orderStatus\": \"shipped\"}', $1) returning id",
    )
    .bind(key)
    .fetch_optional(&b.pool)
    .await
    .unwrap();
    assert_eq!(plain, None);
    let through_function: Option<i64> = sqlx::query_scalar(
        "select pdq.enqueue(attributes => '{\"vip\": \"yes\"}', external_tag => 'ORDER-42',
                            idempotency_key => $1)",
    )
    .bind(key)
    .fetch_one(&b.pool)
    .await
    .unwrap();
    assert_eq!(
        through_function,
        Some(b_job),
        "the queued job of B's own key"
    );
    assert_eq!(db.count("pdq.jobs").await, 2);

    // Each asks by the key and gets its own job.
    assert_eq!(
        status_by_key(&a.pool, key).await,
        Some((a_job, Some(key.to_owned()), "pending".to_owned()))
    );
    assert_eq!(
        status_by_key(&b.pool, key).await,
        Some((b_job, Some(key.to_owned()), "pending".to_owned()))
    );

    // Once A's job is gone, a third producer's same key is carried in pdq.jobs again.
    let worker = LoginRole::new(&db, "pdq_worker").await;
    let units = queue::lease::claim(
        &worker.pool,
        &ClaimOptions {
            units: 10,
            ..ClaimOptions::default()
        },
    )
    .await
    .unwrap();
    let done: Vec<Success> = units
        .iter()
        .map(|u| Success::of(u, Uuid::new_v4(), Uuid::new_v4()))
        .collect();
    queue::lease::succeed_batch(&worker.pool, &done)
        .await
        .unwrap();
    assert_eq!(
        status_by_key(&b.pool, key).await.map(|s| (s.0, s.2)),
        Some((b_job, "applied".to_owned()))
    );
    let c = LoginRole::new(&db, "pdq_producer").await;
    let c_job = insert(&c.pool, Some(key)).await.expect("C's job");
    let carried: Option<String> =
        sqlx::query_scalar("select idempotency_key from pdq.jobs where id = $1")
            .bind(c_job)
            .fetch_one(&c.pool)
            .await
            .unwrap();
    assert_eq!(carried.as_deref(), Some(key));
    assert_eq!(
        insert(&a.pool, Some(key)).await,
        None,
        "A's key is still known"
    );
    finish(db, vec![a, b, c, worker]).await;
}

/// Whether `name` may log in to `db`'s database.
async fn connects(db: &TestDb, name: &str) -> Result<(), sqlx::Error> {
    use sqlx::Connection;
    let conn = sqlx::PgConnection::connect_with(&db.options.clone().username(name)).await?;
    conn.close().await
}

#[tokio::test]
async fn pdq_roles_lock_down_lets_only_pdq_groups_connect() {
    let db = TestDb::new().await;
    let producer = LoginRole::new(&db, "pdq_producer").await;
    let stranger = format!("pdq_t_{}", Uuid::new_v4().simple());
    sqlx::query(&format!("create role {stranger} login"))
        .execute(&db.pool)
        .await
        .unwrap();
    connects(&db, &stranger)
        .await
        .expect("any login may connect before the lock-down");

    let printed = std::process::Command::new(env!("CARGO_BIN_EXE_pdq"))
        .args(["roles", "--lock-down"])
        .env("DATABASE_URL", db.url())
        .output()
        .unwrap();
    assert!(printed.status.success());
    let sql = String::from_utf8_lossy(&printed.stdout);
    assert!(
        sql.contains("revoke connect on database %I from public"),
        "{sql}"
    );
    connects(&db, &stranger)
        .await
        .expect("printing changes nothing");

    let applied = std::process::Command::new(env!("CARGO_BIN_EXE_pdq"))
        .args(["roles", "--lock-down", "--apply"])
        .env("DATABASE_URL", db.url())
        .output()
        .unwrap();
    assert!(
        applied.status.success(),
        "{}",
        String::from_utf8_lossy(&applied.stderr)
    );
    let refused = connects(&db, &stranger).await;
    let code = refused
        .as_ref()
        .err()
        .and_then(|e| e.as_database_error())
        .and_then(|e| e.code())
        .map(|c| c.into_owned());
    assert_eq!(
        code.as_deref(),
        Some("42501"),
        "a login with no pdq role cannot connect (so cannot LISTEN or NOTIFY): {refused:?}"
    );
    connects(&db, &producer.name)
        .await
        .expect("a producer still connects");
    assert!(insert(&producer.pool, Some("after-lock-down"))
        .await
        .is_some());

    let server = crate::helpers::database_url();
    finish(db, vec![producer]).await;
    let admin = PgPool::connect(&server).await.unwrap();
    sqlx::query(&format!("drop role if exists {stranger}"))
        .execute(&admin)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_superusers_keys_stay_its_own_when_producer_roles_come_and_go() {
    let db = TestDb::new().await;
    let superuser: bool =
        sqlx::query_scalar("select rolsuper from pg_roles where rolname = current_user")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert!(superuser, "the tests connect as a superuser");
    let me: String = sqlx::query_scalar("select current_user::text")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    let first = insert(&db.pool, Some("order-1")).await;
    assert!(first.is_some());
    // A producer login whose name sorts before every other role, created while the superuser
    // inserts: the superuser's identity (and the namespace of its keys) must not follow it.
    let early = format!("pdq_0{}", Uuid::new_v4().simple());
    sqlx::raw_sql(&format!("create role {early} login in role pdq_producer"))
        .execute(&db.pool)
        .await
        .unwrap();
    let identity: String = sqlx::query_scalar("select pdq.producer_identity()")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    let repeat = insert(&db.pool, Some("order-1")).await;
    sqlx::raw_sql(&format!("drop role {early}"))
        .execute(&db.pool)
        .await
        .unwrap();
    assert_eq!(identity, me, "a superuser is its own producer identity");
    assert_eq!(repeat, None, "the repeated key made no second job");
    db.drop_database().await;
}
