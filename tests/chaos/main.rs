//! Chaos: the real `pdq run` binary as separate processes, killed and restarted while updates
//! keep arriving; then the ledger must balance. Short by default (CI); `PDQ_CHAOS=long` for
//! release checks.

mod bad_input;
mod cluster;
#[path = "../it/helpers.rs"]
mod helpers;
mod reliability;

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pdq::emulator::{ConversationSpec, Emulator, EmulatorConfig, EmulatorHandle, Faults};
use uuid::Uuid;

use helpers::{wait_until, TestDb};

fn long_mode() -> bool {
    std::env::var("PDQ_CHAOS").is_ok_and(|v| v == "long")
}

fn spawn_worker(db: &TestDb, emulator: &EmulatorHandle) -> Child {
    let mut command = Command::new(env!("CARGO_BIN_EXE_pdq"));
    command
        .args([
            "run",
            "--executors",
            "8",
            "--rate-limit",
            "0",
            "--lease-secs",
            "5",
        ])
        .args([
            "--shutdown-grace-secs",
            "2",
            "--metrics-addr",
            "127.0.0.1:0",
        ])
        .env("DATABASE_URL", db.url())
        .env("GENESYS_API_URL", emulator.base_url())
        .env("GENESYS_CLIENT_ID", "pdq-demo")
        .env("GENESYS_CLIENT_SECRET", "pdq-demo-secret")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .env("GENESYS_REQUEST_TIMEOUT_MS", "500");
    command.spawn().expect("pdq binary")
}

fn signal(child: &Child, signal: &str) {
    let _ = Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status();
}

/// Inserts `rounds` rounds of one update per participant, `gap` apart, each carrying a
/// sequence number that grows per participant.
async fn produce(db: &TestDb, participants: &[(Uuid, Uuid)], rounds: usize, gap: Duration) {
    for round in 1..=rounds {
        let (cids, pids): (Vec<Uuid>, Vec<Uuid>) = participants.iter().copied().unzip();
        sqlx::query(
            "insert into pdq.jobs (conversation_id, participant_id, attributes)
             select c, p, jsonb_build_object('seq', lpad($3::text, 4, '0'), 'round' || $3::text, 'x')
             from unnest($1::uuid[], $2::uuid[]) as t(c, p)",
        )
        .bind(cids)
        .bind(pids)
        .bind(round as i32)
        .execute(&db.pool)
        .await
        .unwrap();
        tokio::time::sleep(gap).await;
    }
}

/// The ledger after a scenario.
#[derive(Debug)]
struct Ledger {
    jobs: i64,
    applied: i64,
    dead: BTreeMap<String, i64>,
    lost: i64,
    stuck: i64,
    out_of_order: usize,
    stale_values: usize,
    duplicate_patches: usize,
}

async fn ledger(
    db: &TestDb,
    emulator: &EmulatorHandle,
    participants: &[(Uuid, Uuid)],
    jobs: i64,
) -> Ledger {
    let applied = db.count("pdq.finished_jobs").await;
    let dead: Vec<(String, i64)> =
        sqlx::query_as("select reason, count(*) from pdq.dead_letters group by 1")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    let dead_total: i64 = dead.iter().map(|(_, n)| n).sum();
    let stuck = db.count("pdq.jobs").await;
    let (mut out_of_order, mut stale_values, mut duplicate_patches) = (0, 0, 0);
    for (cid, pid) in participants {
        let history = emulator.patch_history(*cid, *pid);
        let seqs: Vec<&String> = history
            .iter()
            .filter_map(|p| p.attributes.get("seq"))
            .collect();
        out_of_order += seqs.windows(2).filter(|w| w[0] > w[1]).count();
        duplicate_patches += seqs.windows(2).filter(|w| w[0] == w[1]).count();
        let newest: Option<String> = sqlx::query_scalar(
            "select max(attributes->>'seq') from pdq.finished_jobs where conversation_id = $1 and participant_id = $2",
        )
        .bind(cid)
        .bind(pid)
        .fetch_one(&db.pool)
        .await
        .unwrap();
        let shown = emulator
            .attributes_of(*cid, *pid)
            .unwrap_or_default()
            .get("seq")
            .cloned();
        if newest.is_some() && shown != newest {
            stale_values += 1;
        }
    }
    Ledger {
        jobs,
        applied,
        lost: jobs - applied - dead_total - stuck,
        dead: dead.into_iter().collect(),
        stuck,
        out_of_order,
        stale_values,
        duplicate_patches,
    }
}

fn report(name: &'static str, ledger: &Ledger, elapsed: Duration) {
    reliability::record(&reliability::Row {
        scenario: name,
        jobs: ledger.jobs,
        lost: ledger.lost,
        duplicates: ledger.duplicate_patches,
        dead: ledger.dead.clone(),
        drain: Some(elapsed),
        notes: format!(
            "{} applied; {} out of order; {} stale values; {} stuck",
            ledger.applied, ledger.out_of_order, ledger.stale_values, ledger.stuck
        ),
    });
    assert_eq!(ledger.lost, 0, "{name}: nothing lost: {ledger:?}");
    assert_eq!(ledger.stuck, 0, "{name}: nothing stuck: {ledger:?}");
    assert_eq!(
        ledger.out_of_order, 0,
        "{name}: insertion order per participant: {ledger:?}"
    );
    assert_eq!(
        ledger.stale_values, 0,
        "{name}: no value older than the newest applied update: {ledger:?}"
    );
}

async fn setup(participants: usize) -> (TestDb, EmulatorHandle, Vec<(Uuid, Uuid)>) {
    let db = TestDb::with_connections(4).await;
    let (emulator, targets) = emulator_with(participants, 3).await;
    (db, emulator, targets)
}

/// An emulator without a rate limit, answering after `latency_ms`, with one live conversation
/// per participant; returns it and the (conversation, customer) pairs.
async fn emulator_with(
    participants: usize,
    latency_ms: u64,
) -> (EmulatorHandle, Vec<(Uuid, Uuid)>) {
    let emulator = Emulator::start(EmulatorConfig {
        rate_limit: None,
        ..EmulatorConfig::default()
    })
    .await
    .unwrap();
    emulator.set_faults(Faults {
        latency_ms,
        ..Faults::default()
    });
    let targets = (0..participants)
        .map(|_| {
            let c = emulator.create_conversation(ConversationSpec::voice().customer("X"));
            (c.id, c.participant("customer").unwrap())
        })
        .collect();
    (emulator, targets)
}

async fn settle(db: &TestDb) {
    let drained = wait_until(Duration::from_secs(90), || async {
        db.count("pdq.jobs").await == 0
    })
    .await;
    assert!(drained, "the queue drains after the chaos");
}

#[tokio::test]
async fn kill_9_of_a_worker_mid_drain_three_times_loses_nothing() {
    let (db, emulator, targets) = setup(if long_mode() { 200 } else { 40 }).await;
    let rounds = if long_mode() { 60 } else { 20 };
    let started = Instant::now();
    let mut worker = spawn_worker(&db, &emulator);
    let producing = produce(&db, &targets, rounds, Duration::from_millis(100));
    let chaos = async {
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_millis(500)).await;
            signal(&worker, "-KILL");
            let _ = worker.wait();
            worker = spawn_worker(&db, &emulator);
        }
    };
    tokio::join!(producing, chaos);
    settle(&db).await;
    signal(&worker, "-TERM");
    let _ = worker.wait();
    let ledger = ledger(&db, &emulator, &targets, (targets.len() * rounds) as i64).await;
    report(
        "kill -9 ×3 mid-drain, restarted",
        &ledger,
        started.elapsed(),
    );
    assert_eq!(ledger.applied, ledger.jobs, "every update applied");
    db.drop_database().await;
}

#[tokio::test]
async fn workers_killed_and_stopped_while_others_drain_lose_nothing() {
    let (db, emulator, targets) = setup(if long_mode() { 200 } else { 40 }).await;
    let rounds = if long_mode() { 60 } else { 20 };
    let started = Instant::now();
    let mut workers: Vec<Child> = (0..3).map(|_| spawn_worker(&db, &emulator)).collect();
    let producing = produce(&db, &targets, rounds, Duration::from_millis(100));
    let chaos = async {
        tokio::time::sleep(Duration::from_millis(600)).await;
        signal(&workers[0], "-KILL");
        tokio::time::sleep(Duration::from_millis(400)).await;
        signal(&workers[1], "-TERM");
    };
    tokio::join!(producing, chaos);
    settle(&db).await;
    for worker in &mut workers {
        signal(worker, "-TERM");
        let _ = worker.wait();
    }
    let ledger = ledger(&db, &emulator, &targets, (targets.len() * rounds) as i64).await;
    report(
        "3 workers: one kill -9, one SIGTERM",
        &ledger,
        started.elapsed(),
    );
    assert_eq!(ledger.applied, ledger.jobs);
    db.drop_database().await;
}

#[tokio::test]
async fn conversations_ending_while_updates_queue_dead_letter_only_theirs() {
    let (db, emulator, targets) = setup(if long_mode() { 200 } else { 40 }).await;
    let rounds = if long_mode() { 30 } else { 10 };
    let started = Instant::now();
    let mut worker = spawn_worker(&db, &emulator);
    let ending: Vec<(Uuid, Uuid)> = targets[..targets.len() / 4].to_vec();
    let producing = produce(&db, &targets, rounds, Duration::from_millis(100));
    let chaos = async {
        // About halfway through the producing, so each ended conversation has updates both
        // applied before its end and queued after it.
        tokio::time::sleep(Duration::from_millis(rounds as u64 * 45)).await;
        for (cid, _) in &ending {
            emulator.end_conversation(*cid);
        }
    };
    tokio::join!(producing, chaos);
    settle(&db).await;
    signal(&worker, "-TERM");
    let ledger = ledger(&db, &emulator, &targets, (targets.len() * rounds) as i64).await;
    let _ = worker.wait();
    report("conversations ending mid-run", &ledger, started.elapsed());
    let dead_ids: Vec<Uuid> =
        sqlx::query_scalar("select distinct conversation_id from pdq.dead_letters")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert!(
        dead_ids
            .iter()
            .all(|id| ending.iter().any(|(cid, _)| cid == id)),
        "only ended conversations"
    );
    assert!(
        ledger.dead.keys().all(|r| r == "conversation_ended"),
        "{:?}",
        ledger.dead
    );
    assert!(ledger
        .dead
        .get("conversation_ended")
        .is_some_and(|n| *n > 0));
    let applied_others: i64 = sqlx::query_scalar(
        "select count(*) from pdq.finished_jobs where not (conversation_id = any($1))",
    )
    .bind(ending.iter().map(|(c, _)| *c).collect::<Vec<_>>())
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        applied_others,
        ((targets.len() - ending.len()) * rounds) as i64,
        "the rest unaffected"
    );
    db.drop_database().await;
}

#[tokio::test]
async fn api_faults_storms_and_revoked_tokens_delay_jobs_but_lose_none() {
    let (db, emulator, targets) = setup(if long_mode() { 200 } else { 40 }).await;
    let rounds = if long_mode() { 60 } else { 15 };
    emulator.set_faults(Faults {
        latency_ms: 3,
        error_rate: 0.10,
        reset_rate: 0.05,
        hang_rate: 0.02,
        hang_ms: 2_000,
        ..Faults::default()
    });
    let started = Instant::now();
    let mut worker = spawn_worker(&db, &emulator);
    let producing = produce(&db, &targets, rounds, Duration::from_millis(100));
    let chaos = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        emulator.revoke_tokens();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let storm = if long_mode() { 30 } else { 3 };
        emulator.set_faults(Faults {
            storm_secs: storm,
            storm_retry_after_secs: 1,
            ..Faults::default()
        });
        tokio::time::sleep(Duration::from_secs(storm)).await;
        emulator.set_faults(Faults {
            latency_ms: 3,
            error_rate: 0.10,
            reset_rate: 0.05,
            hang_rate: 0.02,
            hang_ms: 2_000,
            ..Faults::default()
        });
    };
    tokio::join!(producing, chaos);
    settle(&db).await;
    signal(&worker, "-TERM");
    let _ = worker.wait();
    let ledger = ledger(&db, &emulator, &targets, (targets.len() * rounds) as i64).await;
    report(
        "API faults: 10% 5xx, 5% resets, 2% hangs, 429 storm, token revocation",
        &ledger,
        started.elapsed(),
    );
    assert_eq!(
        ledger.applied, ledger.jobs,
        "every update applied despite the faults"
    );
    db.drop_database().await;
}

#[tokio::test]
async fn a_postgres_restart_mid_drain_delays_jobs_and_workers_reconnect_alone() {
    let Some(cluster) = cluster::PrivateCluster::start() else {
        panic!("the Postgres server binaries (pg_config --bindir) are needed for this scenario");
    };
    let db = TestDb::on_server(&cluster.url(), 4).await;
    let (emulator, targets) = emulator_with(if long_mode() { 5_000 } else { 1_500 }, 20).await;
    produce(&db, &targets, 1, Duration::ZERO).await;
    let started = Instant::now();
    let mut worker = spawn_worker(&db, &emulator);
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let remaining_before = db.count("pdq.jobs").await;
    assert!(cluster.restart(), "restart the private cluster");
    settle(&db).await;
    signal(&worker, "-TERM");
    let _ = worker.wait();
    assert!(remaining_before > 0, "the restart happened mid-drain");
    let ledger = ledger(&db, &emulator, &targets, targets.len() as i64).await;
    report("Postgres restarted mid-drain", &ledger, started.elapsed());
    assert_eq!(ledger.applied, ledger.jobs);
    db.drop_database().await;
    drop(cluster);
}

fn rss_mb(child: &Child) -> f64 {
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap_or_default();
    let kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0.0);
    kb / 1024.0
}

#[tokio::test]
async fn a_big_backfill_leaves_live_updates_fast_and_worker_memory_flat() {
    let (db, emulator, targets) = setup(20).await;
    let backfill = if long_mode() { 1_000_000 } else { 100_000 };
    sqlx::query(
        "insert into pdq.jobs (conversation_id, participant_id, attributes, priority)
         select gen_random_uuid(), gen_random_uuid(), jsonb_build_object('n', i::text), 'backfill'
         from generate_series(1, $1) as i",
    )
    .bind(backfill as i64)
    .execute(&db.pool)
    .await
    .unwrap();
    let mut worker = Command::new(env!("CARGO_BIN_EXE_pdq"))
        .args([
            "run",
            "--executors",
            "16",
            "--rate-limit",
            "1200",
            "--backfill-share",
            "0.5",
        ])
        .args(["--metrics-addr", "127.0.0.1:0"])
        .env("DATABASE_URL", db.url())
        .env("GENESYS_API_URL", emulator.base_url())
        .env("GENESYS_CLIENT_ID", "pdq-demo")
        .env("GENESYS_CLIENT_SECRET", "pdq-demo-secret")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_start = rss_mb(&worker);
    let backfill_count = || async {
        let count: i64 =
            sqlx::query_scalar("select count(*) from pdq.dead_letters where priority = 'backfill'")
                .fetch_one(&db.pool)
                .await
                .unwrap();
        count
    };
    let backfill_before = backfill_count().await;
    let started = Instant::now();
    let seconds = if long_mode() { 60 } else { 12 };
    let mut latencies = Vec::new();
    for round in 0..seconds * 2 {
        let (cid, pid) = targets[round % targets.len()];
        let value = format!("live-{round}");
        sqlx::query("insert into pdq.jobs (conversation_id, participant_id, attributes) values ($1, $2, jsonb_build_object('live', $3::text))")
            .bind(cid)
            .bind(pid)
            .bind(&value)
            .execute(&db.pool)
            .await
            .unwrap();
        // From the commit on: a slow WAL flush on a busy disk delays the producer, not the
        // worker, which sees the row only once it is committed.
        let committed = chrono::Utc::now();
        let seen = wait_until(Duration::from_secs(5), || async {
            emulator
                .patch_history(cid, pid)
                .iter()
                .any(|p| p.attributes.get("live") == Some(&value))
        })
        .await;
        assert!(seen, "live update {round} applied");
        let at = emulator
            .patch_history(cid, pid)
            .into_iter()
            .find(|p| p.attributes.get("live") == Some(&value))
            .unwrap()
            .at;
        latencies.push((at - committed).to_std().unwrap_or_default());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let rss_end = rss_mb(&worker);
    let backfill_done = backfill_count().await - backfill_before;
    signal(&worker, "-TERM");
    let _ = worker.wait();
    latencies.sort();
    let p99 = latencies[latencies.len() * 99 / 100];
    let backfill_rate = backfill_done as f64 / elapsed;
    let live_count = latencies.len() as i64;
    let accounted = db.count("pdq.jobs").await
        + db.count("pdq.finished_jobs").await
        + db.count("pdq.dead_letters").await;
    let lost = backfill as i64 + live_count - accounted;
    reliability::record(&reliability::Row {
        scenario: "big backfill in one INSERT while live updates arrive",
        jobs: backfill as i64 + live_count,
        lost,
        duplicates: 0,
        dead: BTreeMap::from([("not_found (backfill targets)".to_owned(), backfill_done)]),
        drain: None,
        notes: format!(
            "{backfill} backfill rows pending; {live_count} live updates, commit to PATCH: p50 {:.0} ms, p99 {:.0} ms; \
             backfill {backfill_rate:.1}/s of a 20/s budget (share 50 %); worker RSS {rss_start:.1} → {rss_end:.1} MB",
            latencies[latencies.len() / 2].as_secs_f64() * 1000.0,
            p99.as_secs_f64() * 1000.0,
        ),
    });
    assert_eq!(
        lost, 0,
        "every backfill and live job is pending, applied or dead-lettered"
    );
    // One token interval at 1,200/min is 50 ms; the bar allows pickup and the HTTP round trip.
    assert!(p99 < Duration::from_millis(500), "live p99 {p99:?}");
    assert!(
        (5.0..=15.0).contains(&backfill_rate),
        "backfill near its share (10/s) of the 20/s budget, leaving room for live: {backfill_rate}"
    );
    assert!(
        rss_end < rss_start * 1.5 + 8.0,
        "worker memory stays flat: {rss_start} → {rss_end}"
    );
    db.drop_database().await;
}
