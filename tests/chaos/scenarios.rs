//! The scenarios of lost leases, outages and hostile producers, judged by the ledger.

use std::time::{Duration, Instant};

use pdq::emulator::Faults;
use sqlx::postgres::PgPoolOptions;
use uuid::Uuid;

use crate::helpers::{wait_until, TestDb};
use crate::ledger::VALUE_KEY;
use crate::reliability::Scenario;
use crate::{
    drain, drain_timeout, emulator_with, insert_round, long_mode, produce, setup, spawn_worker,
    spawn_worker_with, Verdict, WorkerOptions, API_OUTAGE, HOSTILE_PRODUCER, LOGIN_OUTAGE,
    LOST_LEASE,
};

/// Who holds a job's lease now (`None` when pending or gone).
async fn locked_by(db: &TestDb, id: i64) -> Option<String> {
    sqlx::query_scalar("select locked_by from pdq.jobs where id = $1")
        .bind(id)
        .fetch_optional(&db.pool)
        .await
        .unwrap()
        .flatten()
}

/// Worker 1 claims `seq=1` of a participant but waits for its request budget; it is stopped
/// (SIGSTOP) past its lease; `seq=2` is inserted; worker 2 rescues the lease and applies both;
/// worker 1 is resumed. It must not PATCH `seq=1` any more: the final value stays `seq=2`.
#[tokio::test]
async fn a_worker_resumed_after_losing_its_lease_never_patches_an_older_value() {
    let scenario = Scenario::start(LOST_LEASE);
    let db = TestDb::with_connections(4).await;
    let (emulator, targets) = emulator_with(2, 0).await;
    let (blocker, target) = (targets[0], targets[1]);
    // One executor and 6 requests a minute: after the blocker's PATCH, the next one may go only
    // 10 s later, so the claimed `seq=1` waits, lease held, inside the worker.
    let paced = WorkerOptions {
        executors: 1,
        lease_secs: 6,
        request_timeout_ms: 2_500,
        rate_limit: 6,
        local_budget: true,
    };
    let mut first = spawn_worker_with(&db, &emulator, &paced);
    first.ready().await;
    let mut jobs = insert_round(&db.pool, &[blocker], 1, None).await;
    let first_insert = Instant::now();
    let blocker_sent = wait_until(Duration::from_secs(10), || async {
        !emulator.patches().is_empty()
    })
    .await;
    let blocker_at = Instant::now();
    let old = insert_round(&db.pool, &[target], 1, None).await;
    let old_id = old[0].id;
    jobs.extend(old);
    let worker_id = first.worker_id();
    let claimed = wait_until(Duration::from_secs(5), || async {
        locked_by(&db, old_id).await.as_deref() == Some(worker_id.as_str())
    })
    .await;
    first.signal("-STOP");
    // What the stopped worker holds besides seq=1 (verified unsent below) is all it may have
    // applied without recording: the duplicates the stop allows.
    let held_besides: i64 =
        sqlx::query_scalar("select count(*) from pdq.jobs where locked_by = $1 and id <> $2")
            .bind(&worker_id)
            .bind(old_id)
            .fetch_one(&db.pool)
            .await
            .unwrap_or(0);
    let unsent = !emulator
        .patches()
        .iter()
        .any(|p| p.participant_id == target.1);
    jobs.extend(insert_round(&db.pool, &[target], 2, None).await);
    let rescuer = WorkerOptions {
        lease_secs: 6,
        request_timeout_ms: 2_500,
        ..WorkerOptions::default()
    };
    let mut second = spawn_worker_with(&db, &emulator, &rescuer);
    second.ready().await;
    let newer_applied = wait_until(Duration::from_secs(30), || async {
        emulator.patches().iter().any(|p| {
            p.participant_id == target.1
                && p.attributes.get(VALUE_KEY).map(String::as_str) == Some("0002")
        })
    })
    .await;
    first.signal("-CONT");
    // The stopped worker's request slot comes back 10 s after the blocker's PATCH: it then
    // confirms its lease, finds it lost and logs so. Awaited (bounded), not slept.
    let resume_window = Duration::from_secs(14);
    let lease_lost_logged = wait_until(
        resume_window
            .saturating_sub(blocker_at.elapsed())
            .max(Duration::from_secs(3))
            + Duration::from_secs(5),
        || async { first.log_text().contains("lease lost") },
    )
    .await;
    let drained = drain(&db, first_insert, drain_timeout()).await;
    first.stop();
    second.stop();
    let mut verdict = Verdict::of(&db, &emulator, jobs, drained).await;
    verdict.allow_duplicates(held_besides, "jobs the stopped worker held besides seq=1");
    verdict.check(
        lease_lost_logged,
        "the resumed worker noticed its lease was lost",
    );
    verdict.notes = format!(
        "the resumed worker {} 'lease lost'",
        if lease_lost_logged {
            "logged"
        } else {
            "did not log"
        }
    );
    verdict.check(
        blocker_sent,
        "precondition: the blocker's PATCH spent the paced worker's slot",
    );
    verdict.check(
        claimed && unsent,
        "precondition: seq=1 claimed and waiting in the stopped worker",
    );
    verdict.check(newer_applied, "the rescuing worker applied seq=2");
    verdict.conclude(&scenario);
    db.drop_database().await;
}

/// The emulator stops listening (connections refused, open ones dropped) while updates keep
/// arriving with `max_attempts` 3: an outage is not the updates' fault, so none is
/// dead-lettered, and all are applied once the API is back.
#[tokio::test]
async fn an_api_outage_delays_updates_but_dead_letters_none() {
    let scenario = Scenario::start(API_OUTAGE);
    let (db, emulator, targets) = setup(if long_mode() { 200 } else { 40 }).await;
    let outage = Duration::from_secs(if long_mode() { 60 } else { 12 });
    let rounds = if long_mode() { 30 } else { 10 };
    let mut worker = spawn_worker(&db, &emulator);
    worker.ready().await;
    let producing = produce(
        &db,
        &targets,
        1..=rounds,
        Duration::from_millis(100),
        Some(3),
    );
    let chaos = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let from = chrono::Utc::now();
        emulator.outage(outage).await;
        (from, chrono::Utc::now())
    };
    let ((jobs, first_insert), (down_from, down_at)) = tokio::join!(producing, chaos);
    let drained = drain(&db, first_insert, outage + drain_timeout()).await;
    worker.stop();
    let mut verdict = Verdict::of(&db, &emulator, jobs, drained).await;
    // Connections dropped mid-request: a PATCH applied in the request timeout before the
    // listener closed may have lost its answer and be sent again.
    let in_flight = chrono::Duration::milliseconds(600);
    verdict.allow_duplicates(
        crate::updates_carried(&emulator, |p| {
            p.at >= down_from - in_flight && p.at <= down_at + in_flight
        }),
        "updates carried by PATCHes applied while the connections were dropped",
    );
    verdict.notes = format!("API down for {} s", outage.as_secs());
    verdict.check(
        verdict.dead.is_empty(),
        format!("no dead letters: {:?}", verdict.dead),
    );
    verdict.conclude(&scenario);
    db.drop_database().await;
}

/// Tokens are revoked and the login endpoint answers 503 for a while: the workers need a new
/// token during the outage. No update is dead-lettered (`max_attempts` 3), all are applied.
#[tokio::test]
async fn a_login_outage_with_revoked_tokens_dead_letters_none() {
    let scenario = Scenario::start(LOGIN_OUTAGE);
    let (db, emulator, targets) = setup(if long_mode() { 200 } else { 40 }).await;
    let outage_secs = if long_mode() { 60 } else { 12 };
    let rounds = if long_mode() { 30 } else { 10 };
    let mut worker = spawn_worker(&db, &emulator);
    worker.ready().await;
    let (mut jobs, first_insert) = produce(&db, &targets, 1..=1, Duration::ZERO, Some(3)).await;
    let logged_in = wait_until(Duration::from_secs(10), || async {
        emulator.patches().len() >= targets.len()
    })
    .await;
    emulator.set_faults(Faults {
        latency_ms: 3,
        login_outage_secs: outage_secs,
        ..Faults::default()
    });
    emulator.revoke_tokens();
    let (more, _) = produce(
        &db,
        &targets,
        2..=rounds,
        Duration::from_millis(100),
        Some(3),
    )
    .await;
    jobs.extend(more);
    let drained = drain(
        &db,
        first_insert,
        Duration::from_secs(outage_secs) + drain_timeout(),
    )
    .await;
    worker.stop();
    let refused_logins = emulator.count("POST /oauth/token", Some(503));
    let mut verdict = Verdict::of(&db, &emulator, jobs, drained).await;
    verdict.notes = format!("login down for {outage_secs} s; {refused_logins} logins refused");
    verdict.check(
        logged_in,
        "precondition: the worker had a token before the outage",
    );
    verdict.check(
        refused_logins > 0,
        "the worker needed a token during the outage",
    );
    verdict.check(
        verdict.dead.is_empty(),
        format!("no dead letters: {:?}", verdict.dead),
    );
    verdict.conclude(&scenario);
    db.drop_database().await;
}

/// How the database answered a hostile row.
fn refused(result: Result<sqlx::postgres::PgQueryResult, sqlx::Error>) -> Result<String, String> {
    match result {
        Ok(_) => Err("accepted".to_owned()),
        Err(error) => match error.as_database_error() {
            Some(db) if db.code().as_deref() == Some("42501") => Ok("permission denied".to_owned()),
            // `id` is generated always: no caller may choose it.
            Some(db) if db.code().as_deref() == Some("428C9") => Ok("id is generated".to_owned()),
            Some(db) => match db.constraint() {
                Some(constraint) => Ok(format!("constraint {constraint}")),
                None => Err(format!("refused without a named constraint: {db}")),
            },
            None => Err(format!("failed: {error}")),
        },
    }
}

/// A login role for the test, dropped (also when the test panics) when this goes.
struct LoginRole {
    name: String,
    server: String,
}

impl LoginRole {
    async fn create(db: &TestDb, member_of: &str) -> LoginRole {
        let name = format!("pdq_hostile_{}", &Uuid::new_v4().simple().to_string()[..12]);
        sqlx::query(&format!("create role {name} login in role {member_of}"))
            .execute(&db.pool)
            .await
            .unwrap();
        LoginRole {
            name,
            server: db.server.clone(),
        }
    }
}

impl Drop for LoginRole {
    fn drop(&mut self) {
        let (name, server) = (self.name.clone(), self.server.clone());
        // Drop runs inside the test's runtime: a thread of its own may block on another one.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async {
                use sqlx::Connection;
                let options = pdq::db::connect_options(&server).map_err(std::io::Error::other)?;
                let mut admin = sqlx::PgConnection::connect_with(&options)
                    .await
                    .map_err(std::io::Error::other)?;
                sqlx::query(&format!("drop role if exists {name}"))
                    .execute(&mut admin)
                    .await
                    .map_err(std::io::Error::other)?;
                Ok::<(), std::io::Error>(())
            })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("could not drop the test role {}", self.name);
        }
    }
}

/// A login role in `pdq_producer` writes rows that would poison the queue; each must be
/// refused (permission or named constraint), and the live updates it inserts around them must
/// all be applied.
#[tokio::test]
async fn hostile_producer_rows_are_refused_and_live_traffic_around_them_applies() {
    let scenario = Scenario::start(HOSTILE_PRODUCER);
    let (db, emulator, targets) = setup(20).await;
    let role = LoginRole::create(&db, "pdq_producer").await;
    let producer = PgPoolOptions::new()
        .max_connections(2)
        .connect_with(db.options.clone().username(&role.name))
        .await
        .unwrap();
    let mut worker = spawn_worker(&db, &emulator);
    worker.ready().await;
    let mut jobs = insert_round(&producer, &targets, 1, None).await;
    let first_insert = Instant::now();
    let archived = wait_until(Duration::from_secs(10), || async {
        db.count("pdq.finished_jobs").await > 0
    })
    .await;
    let archived_id: i64 = sqlx::query_scalar("select coalesce(max(id), 0) from pdq.finished_jobs")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    let hostile: [(&str, &str); 5] = [
        ("expires_at 'infinity'", "insert into pdq.jobs (conversation_id, participant_id, attributes, expires_at) values ($1, $2, '{\"hostile\": \"1\"}', 'infinity')"),
        ("run_at '-infinity'", "insert into pdq.jobs (conversation_id, participant_id, attributes, run_at) values ($1, $2, '{\"hostile\": \"2\"}', '-infinity')"),
        ("attempts 2147483647", "insert into pdq.jobs (conversation_id, participant_id, attributes, attempts) values ($1, $2, '{\"hostile\": \"3\"}', 2147483647)"),
        ("the id of an archived job", "insert into pdq.jobs (id, conversation_id, participant_id, attributes) values ($3, $1, $2, '{\"hostile\": \"4\"}')"),
        ("state 'running', locked_until 'infinity'", "insert into pdq.jobs (conversation_id, participant_id, attributes, state, lease_token, locked_until) values ($1, $2, '{\"hostile\": \"5\"}', 'running', gen_random_uuid(), 'infinity')"),
    ];
    let mut answers = Vec::new();
    for (n, (what, sql)) in hostile.iter().enumerate() {
        let (cid, pid) = targets[n % targets.len()];
        let mut query = sqlx::query(sql).bind(cid).bind(pid);
        if sql.contains("$3") {
            query = query.bind(archived_id);
        }
        answers.push((*what, refused(query.execute(&producer).await)));
        jobs.extend(insert_round(&producer, &targets, n + 2, None).await);
    }
    let drained = drain(
        &db,
        first_insert,
        Duration::from_secs(if long_mode() { 60 } else { 20 }),
    )
    .await;
    worker.stop();
    producer.close().await;
    let mut verdict = Verdict::of(&db, &emulator, jobs, drained).await;
    verdict.notes = answers
        .iter()
        .map(|(what, answer)| match answer {
            Ok(how) => format!("{what}: refused ({how})"),
            Err(how) => format!("{what}: {how}"),
        })
        .collect::<Vec<_>>()
        .join("; ");
    verdict.check(
        archived && archived_id > 0,
        "precondition: a job was archived",
    );
    for (what, answer) in &answers {
        verdict.check(
            answer.is_ok(),
            format!("hostile row with {what} refused: {answer:?}"),
        );
    }
    verdict.check(
        verdict.dead.is_empty(),
        format!("no dead letters: {:?}", verdict.dead),
    );
    verdict.conclude(&scenario);
    drop(role);
    db.drop_database().await;
}
