//! Postgres as users run it: a failover to a synchronous or an asynchronous standby, and the
//! workers' connections blackholed, each while updates keep arriving, judged by the ledger.
//!
//! The workers reach Postgres through a [`Proxy`] (a virtual IP, a NAT); the clusters are
//! private (`tests/it/clusters.rs`). Ports: 25450–25453 (synchronous failover), 25455–25458
//! (asynchronous), 25460–25462 (blackhole), all on 127.0.0.1.

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pdq::emulator::EmulatorHandle;
use sqlx::Connection;
use uuid::Uuid;

use crate::clusters::Cluster;
use crate::helpers::{wait_until, TestDb};
use crate::ledger::{self, Job};
use crate::proxy::Proxy;
use crate::reliability::Scenario;
use crate::{
    drain, drain_timeout, emulator_with, long_mode, queue_len, round_job, setup, try_insert_round,
    Verdict, WorkerProcess, WORKER_LOG_FILTER,
};

/// Scenario names, as the README table shows them.
pub const FAILOVER_SYNC: &str =
    "failover to a synchronous standby mid-drain (primary stopped -m immediate, standby promoted, address moved)";
pub const FAILOVER_ASYNC: &str =
    "failover to an asynchronous standby 1 s behind, mid-drain (same steps)";
pub const BLACKHOLE: &str =
    "the workers' Postgres connections blackholed (no reset) mid-drain, then restored";

/// The bounds the workers run with here (README: Running against your Postgres, Silent
/// connections): a claim is abandoned after 1 s, any other call after 2 + 5 s.
const CLAIM_TIMEOUT_SECS: &str = "1";
const STATEMENT_TIMEOUT_SECS: &str = "2";
const LEASE_SECS: u64 = 5;

/// What `pdq run` logs at start when the primary has asynchronous standbys.
const ASYNC_WARNING: &str = "replicates asynchronously";

/// `pdq run` against `url` (8 executors, no rate limit, a 5 s lease, 500 ms requests, the
/// short database bounds above), `/healthz` on `metrics_port` when given.
fn spawn_worker_at(
    url: &str,
    emulator: &EmulatorHandle,
    metrics_port: Option<u16>,
) -> WorkerProcess {
    let dir = std::env::temp_dir().join("pdq-chaos-logs");
    std::fs::create_dir_all(&dir).expect("log directory");
    let log = dir.join(format!("failover-{}.log", Uuid::new_v4().simple()));
    let file = std::fs::File::create(&log).expect("log file");
    let metrics = format!("127.0.0.1:{}", metrics_port.unwrap_or(0));
    let child = Command::new(env!("CARGO_BIN_EXE_pdq"))
        .args(["run", "--executors", "8", "--rate-limit", "0"])
        .args(["--lease-secs", &LEASE_SECS.to_string()])
        .args(["--shutdown-grace-secs", "2"])
        .args(["--claim-timeout-secs", CLAIM_TIMEOUT_SECS])
        .args(["--statement-timeout-secs", STATEMENT_TIMEOUT_SECS])
        .args(["--metrics-addr", &metrics])
        .env("DATABASE_URL", url)
        .envs(emulator.client_env())
        .env("GENESYS_REQUEST_TIMEOUT_MS", "500")
        .env("RUST_LOG", WORKER_LOG_FILTER)
        .stdout(Stdio::null())
        .stderr(Stdio::from(file))
        .spawn()
        .expect("pdq binary");
    WorkerProcess { child, log }
}

/// Whether the process still runs (it did not exit or crash).
fn alive(worker: &mut WorkerProcess) -> bool {
    matches!(worker.child.try_wait(), Ok(None))
}

/// Runs blocking work (pg_ctl) without stalling the proxy, the emulator and the producer.
fn blocking<T>(work: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(work)
}

/// One round of the producer.
struct Round {
    /// Its jobs when the INSERT returned; `None` when it failed (it may have committed).
    jobs: Option<Vec<Job>>,
    /// The INSERT returned after the address moved: it committed on the promoted standby.
    after_switch: bool,
}

/// The most rounds a producer inserts (each adds an attribute to its participant, which
/// takes 100 at most), and the longest it produces.
const MAX_ROUNDS: usize = 90;
const MAX_PRODUCING: Duration = Duration::from_secs(90);

/// Inserts one job per participant each `gap` through `pool` until `after` rounds returned
/// after the address moved, riding out the failover: an INSERT that fails or takes over 3 s
/// is given up (its round is recorded as failed) and the next round goes on. Returns the
/// rounds and when the first insert started.
async fn produce_through(
    pool: sqlx::PgPool,
    participants: Vec<(Uuid, Uuid)>,
    after: usize,
    gap: Duration,
    switched: Arc<AtomicBool>,
) -> (Vec<Round>, Instant) {
    let first = Instant::now();
    let mut done: Vec<Round> = Vec::new();
    for round in 1..=MAX_ROUNDS {
        let inserting = try_insert_round(&pool, &participants, round, None);
        let jobs = tokio::time::timeout(Duration::from_secs(3), inserting)
            .await
            .ok()
            .and_then(Result::ok);
        done.push(Round {
            jobs,
            after_switch: switched.load(Ordering::SeqCst),
        });
        let returned_after = done
            .iter()
            .filter(|r| r.after_switch && r.jobs.is_some())
            .count();
        if returned_after >= after || first.elapsed() > MAX_PRODUCING {
            break;
        }
        tokio::time::sleep(gap).await;
    }
    (done, first)
}

/// A job as the promoted standby holds it, before any worker reaches it.
#[derive(Debug, Clone)]
struct Held {
    id: i64,
    conversation_id: Uuid,
    participant_id: Uuid,
    round: usize,
    /// `pending` or `running` (in `pdq.jobs`), `applied` (`pdq.finished_jobs`) or `dead`.
    state: String,
}

/// A row of [`holdings`]: id, conversation, participant, attributes, state.
type HeldRow = (i64, Option<Uuid>, Option<Uuid>, serde_json::Value, String);

/// Every job the database on `port` holds, by (participant, round).
async fn holdings(port: u16, database: &str) -> BTreeMap<(Uuid, usize), Held> {
    let url = format!("postgres://postgres@127.0.0.1:{port}/{database}");
    let options = pdq::db::connect_options(&url).unwrap();
    let mut conn = sqlx::PgConnection::connect_with(&options)
        .await
        .expect("the promoted standby answers");
    let rows: Vec<HeldRow> = sqlx::query_as(
        "select id, conversation_id, participant_id, attributes, state from pdq.jobs
         union all
         select id, conversation_id, participant_id, attributes, 'applied' from pdq.finished_jobs
         union all
         select id, conversation_id, participant_id, attributes, 'dead' from pdq.dead_letters",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    let _ = conn.close().await;
    rows.into_iter()
        .filter_map(|(id, cid, pid, attributes, state)| {
            let round = attributes
                .as_object()?
                .keys()
                .find_map(|key| key.strip_prefix("round")?.parse().ok())?;
            let (conversation_id, participant_id) = (cid?, pid?);
            Some((
                (participant_id, round),
                Held {
                    id,
                    conversation_id,
                    participant_id,
                    round,
                    state,
                },
            ))
        })
        .collect()
}

/// `(running, pending)` jobs of the queue, `None` while it cannot answer.
async fn running_and_pending(db: &TestDb) -> Option<(i64, i64)> {
    sqlx::query_as(
        "select count(*) filter (where state = 'running'), count(*) filter (where state = 'pending')
         from pdq.jobs",
    )
    .fetch_one(&db.pool)
    .await
    .ok()
}

const REPLICATION_HBA: &str = "local all all trust\nhost all all 127.0.0.1/32 trust\n\
                               host replication all 127.0.0.1/32 trust\n";

/// The ports of one failover scenario.
struct Ports {
    primary: u16,
    standby: u16,
    /// The workers' and the producer's address (a virtual IP).
    address: u16,
    /// The standby's link to the primary (asynchronous scenario only).
    link: u16,
}

/// Primary + streaming standby (synchronous when `synchronous`, else asynchronous through a
/// link that stalls 1 s before the primary dies), two workers and a producer through a
/// moving address; mid-drain the primary is stopped (immediate), the standby promoted, the
/// address moved. Judged by the ledger; with an asynchronous standby, loss and reordering are
/// Postgres's contract and only what pdq promises is judged (README: Running against your
/// Postgres, Replication and failover).
async fn failover(synchronous: bool) {
    let name = if synchronous {
        FAILOVER_SYNC
    } else {
        FAILOVER_ASYNC
    };
    let scenario = Scenario::start(name);
    let ports = match synchronous {
        true => Ports {
            primary: 25450,
            standby: 25451,
            address: 25452,
            link: 25453,
        },
        false => Ports {
            primary: 25455,
            standby: 25456,
            address: 25457,
            link: 25458,
        },
    };
    let started = blocking(|| {
        Cluster::start(
            ports.primary,
            "wal_level = replica\nmax_wal_senders = 4",
            REPLICATION_HBA,
            |_| {},
        )
    });
    let Some(mut primary) = started else {
        panic!(
            "the Postgres server binaries (/usr/lib/postgresql/*/bin) are needed for this scenario"
        );
    };
    let address = Proxy::start(ports.address, ports.primary).await;
    let db = TestDb::on_server(&address.url("postgres"), 4).await;
    let standby = blocking(|| Cluster::standby_of(&primary, ports.standby));
    let primary_admin = pdq::db::connect(pdq::db::connect_options(&primary.url()).unwrap(), 1)
        .await
        .unwrap();
    let mut link = None;
    let replicating = if synchronous {
        sqlx::query("alter system set synchronous_standby_names = '*'")
            .execute(&primary_admin)
            .await
            .unwrap();
        sqlx::query("select pg_reload_conf()")
            .execute(&primary_admin)
            .await
            .unwrap();
        wait_until(Duration::from_secs(20), || async {
            sqlx::query_scalar::<_, i64>(
                "select count(*) from pg_stat_replication where sync_state = 'sync'",
            )
            .fetch_one(&primary_admin)
            .await
            .unwrap_or(0)
                == 1
        })
        .await
    } else {
        // The standby streams through a link the scenario can stall, so it is a known time
        // behind when the primary dies (as after a network partition).
        link = Some(Proxy::start(ports.link, ports.primary).await);
        let standby_admin = pdq::db::connect(pdq::db::connect_options(&standby.url()).unwrap(), 1)
            .await
            .unwrap();
        sqlx::query(&format!(
            "alter system set primary_conninfo = 'host=127.0.0.1 port={} user=postgres application_name=standby'",
            ports.link
        ))
        .execute(&standby_admin)
        .await
        .unwrap();
        sqlx::query("select pg_reload_conf()")
            .execute(&standby_admin)
            .await
            .unwrap();
        let through_link = wait_until(Duration::from_secs(20), || async {
            sqlx::query_scalar::<_, i64>(
                "select count(*) from pg_stat_wal_receiver where status = 'streaming' and sender_port = $1",
            )
            .bind(i32::from(ports.link))
            .fetch_one(&standby_admin)
            .await
            .unwrap_or(0)
                == 1
        })
        .await;
        standby_admin.close().await;
        let asynchronous: i64 = sqlx::query_scalar(
            "select count(*) from pg_stat_replication where sync_state = 'async'",
        )
        .fetch_one(&primary_admin)
        .await
        .unwrap();
        through_link && asynchronous == 1
    };
    primary_admin.close().await;
    assert!(
        replicating,
        "precondition: the standby replicates {}",
        if synchronous {
            "synchronously"
        } else {
            "asynchronously through the link"
        }
    );

    // Rounds before the failover and after it.
    let (participants, before, after) = if long_mode() {
        (200, 20, 30)
    } else {
        (40, 12, 12)
    };
    let gap = Duration::from_millis(100);
    let (emulator, targets) = emulator_with(participants, 20).await;
    let mut workers: Vec<WorkerProcess> = (0..2)
        .map(|_| spawn_worker_at(&db.url(), &emulator, None))
        .collect();
    for worker in &workers {
        worker.ready().await;
    }
    let switched = Arc::new(AtomicBool::new(false));
    let producer = tokio::spawn(produce_through(
        db.pool.clone(),
        targets.clone(),
        after,
        gap,
        switched.clone(),
    ));

    // Mid-drain: a moment units are running and jobs wait.
    tokio::time::sleep(gap * before).await;
    let busy = wait_until(Duration::from_secs(10), || async {
        running_and_pending(&db)
            .await
            .is_some_and(|(running, pending)| running > 0 && pending > 0)
    })
    .await;
    let lag = Duration::from_secs(1);
    if let Some(link) = link.take() {
        link.blackhole();
        tokio::time::sleep(lag).await;
        // Cut: the WAL the link held never reaches the standby. (Left blackholed, the
        // primary's WAL sender would block on it and the immediate stop wait 5 s for it.)
        drop(link);
    }
    let stopped = Instant::now();
    blocking(|| primary.stop());
    blocking(|| standby.promote());
    let held = holdings(standby.port, &db.name).await;
    switched.store(true, Ordering::SeqCst);
    let switch_at = chrono::Utc::now();
    address.switch(standby.port);
    let moved_after = stopped.elapsed();
    let (produced, first_insert) = producer.await.expect("the producer");
    let drained = drain(&db, first_insert, drain_timeout()).await;
    let survived = workers.iter_mut().all(alive);
    let warned = workers
        .iter()
        .filter(|w| w.log_text().contains(ASYNC_WARNING))
        .count();
    for worker in &mut workers {
        worker.stop();
    }

    // The jobs whose INSERT returned, and those of failed INSERTs the promoted standby holds
    // (they had committed): every one of them is the ledger's.
    let failed_rounds: BTreeSet<usize> = produced
        .iter()
        .enumerate()
        .filter(|(_, r)| r.jobs.is_none())
        .map(|(n, _)| n + 1)
        .collect();
    let mut jobs: Vec<Job> = Vec::new();
    let mut present: Vec<Job> = Vec::new();
    let mut missing = 0;
    let mut after_switch = 0;
    for round in &produced {
        for job in round.jobs.iter().flatten() {
            let round_no: usize = job.marker.0["round".len()..].parse().unwrap();
            let kept = held
                .get(&(job.participant_id, round_no))
                .is_some_and(|h| h.id == job.id);
            if round.after_switch {
                after_switch += 1;
                present.push(job.clone());
            } else if kept {
                present.push(job.clone());
            } else {
                missing += 1;
            }
            jobs.push(job.clone());
        }
    }
    let recovered: Vec<Job> = held
        .values()
        .filter(|h| failed_rounds.contains(&h.round))
        .map(|h| round_job(h.id, h.conversation_id, h.participant_id, h.round))
        .collect();
    jobs.extend(recovered.iter().cloned());
    present.extend(recovered.iter().cloned());
    let committed = jobs.len() - recovered.len();

    // The jobs running on the promoted standby: their units wait a lease (the lease table is
    // unlogged, the promoted standby starts with it empty).
    let running_then: Vec<&Held> = held.values().filter(|h| h.state == "running").collect();
    let running_ids: BTreeSet<i64> = running_then.iter().map(|h| h.id).collect();
    let patches = emulator.patches();
    // Claims and finishes commit without waiting for the standby (by design: a lost one only
    // means the unit runs again), so jobs applied before the failover may be held unfinished
    // there and sent once more: the only duplicates a failover allows.
    let unfinished: BTreeSet<i64> = held
        .values()
        .filter(|h| h.state == "pending" || h.state == "running")
        .map(|h| h.id)
        .collect();
    let resendable = jobs
        .iter()
        .filter(|job| unfinished.contains(&job.id))
        .filter(|job| {
            patches.iter().any(|p| {
                p.at <= switch_at
                    && p.participant_id == job.participant_id
                    && p.attributes.get(&job.marker.0) == Some(&job.marker.1)
            })
        })
        .count();
    let waits: Vec<f64> = jobs
        .iter()
        .filter(|job| running_ids.contains(&job.id))
        .filter_map(|job| {
            let sent = patches
                .iter()
                .filter(|p| p.at > switch_at && p.participant_id == job.participant_id)
                .find(|p| p.attributes.get(&job.marker.0) == Some(&job.marker.1))?;
            Some((sent.at - switch_at).num_milliseconds() as f64 / 1000.0)
        })
        .collect();
    let wait_range = match (
        waits.iter().copied().reduce(f64::min),
        waits.iter().copied().reduce(f64::max),
    ) {
        (Some(least), Some(most)) if most - least < 0.1 => format!("{most:.1} s"),
        (Some(least), Some(most)) => format!("{least:.1}–{most:.1} s"),
        _ => "never".to_owned(),
    };

    let mut present_marked = present.clone();
    let present_dead = ledger::mark_dead(&db, &mut present_marked).await;
    let on_promoted = ledger::judge(&present_marked, &patches);
    let mut verdict = Verdict::of(&db, &emulator, jobs, drained).await;
    let replication = if synchronous {
        "the promoted standby lacked none".to_owned()
    } else {
        format!("the standby, {} s behind, lacked {missing}", lag.as_secs())
    };
    verdict.notes = format!(
        "{committed} INSERTs returned, {} failed ({} had committed); \
         {replication}; address moved {:.1} s after the stop; its {} running jobs were sent \
         {wait_range} later (lease {LEASE_SECS} s)",
        failed_rounds.len(),
        recovered.len(),
        moved_after.as_secs_f64(),
        running_then.len(),
    );
    verdict.check(
        busy,
        "precondition: units running and jobs waiting at the failover",
    );
    verdict.check(survived, "no worker exited");
    verdict.check(
        after_switch > 0,
        "the producer's INSERTs succeeded again after the failover",
    );
    verdict.check(
        on_promoted.lost == 0 && on_promoted.unexpected_dead == 0,
        format!(
            "every job the promoted standby held or took is applied: {} lost, {} dead \
             ({present_dead:?}), first problems {:?}",
            on_promoted.lost, on_promoted.unexpected_dead, on_promoted.problems
        ),
    );
    if synchronous {
        verdict.allow_duplicates(
            resendable as i64,
            "applied before, unfinished on the promoted standby",
        );
        verdict.check(
            missing == 0,
            format!("{missing} committed jobs missing on the promoted standby"),
        );
        // Units were running on the primary at the stop (`busy`); whether the promoted standby
        // still shows any depends on claims, which commit with synchronous_commit off.
        verdict.check(warned == 0, "no worker warned about asynchronous standbys");
    } else {
        verdict.loss_allowed = Some("async");
        verdict.allow_duplicates(0, "the standby may lack records of applied jobs");
        verdict.check(
            warned == workers.len(),
            format!(
                "every worker warned at start that the primary replicates asynchronously \
                 ({warned} did)"
            ),
        );
    }
    verdict.conclude(&scenario);
    db.drop_database().await;
    drop(address);
    drop(standby);
    drop(primary);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_to_a_synchronous_standby_mid_drain_loses_nothing() {
    failover(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_to_an_asynchronous_standby_applies_everything_the_promoted_primary_holds() {
    failover(false).await;
}

/// `/healthz` of the worker on `port`: its status (0 when it does not answer within 1 s) and
/// its first line.
async fn healthz(port: u16) -> (u16, String) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    match client
        .get(format!("http://127.0.0.1:{port}/healthz"))
        .send()
        .await
    {
        Ok(response) => {
            let status = response.status().as_u16();
            let body = response.text().await.unwrap_or_default();
            (status, body.lines().next().unwrap_or_default().to_owned())
        }
        Err(_) => (0, String::new()),
    }
}

/// Two workers reach Postgres through a proxy that, mid-drain, swallows everything on every
/// connection, open or new, without a reset, for a while (8 s; 30 s in long mode), then
/// delivers what it held. The producer reaches Postgres directly and keeps inserting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blackholed_database_connection_mid_drain_turns_healthz_red_and_loses_nothing() {
    let scenario = Scenario::start(BLACKHOLE);
    let (db, emulator, targets) = setup(if long_mode() { 100 } else { 40 }).await;
    let silence = Duration::from_secs(if long_mode() { 30 } else { 8 });
    // The producing spans the blackhole; 60 rounds (a participant takes 100 attributes).
    let rounds = 60;
    let gap = (silence + Duration::from_secs(4)) / rounds as u32;
    let mut server = url::Url::parse(&db.url()).expect("the test database's URL");
    assert!(
        matches!(server.host_str(), Some("127.0.0.1" | "localhost")),
        "the test Postgres must be on loopback for the proxy"
    );
    let proxy = Proxy::start(25460, server.port().unwrap_or(5432)).await;
    server.set_host(Some("127.0.0.1")).unwrap();
    server.set_port(Some(proxy.port)).unwrap();
    let metrics = [25461, 25462];
    let mut workers: Vec<WorkerProcess> = metrics
        .iter()
        .map(|port| spawn_worker_at(server.as_str(), &emulator, Some(*port)))
        .collect();
    for worker in &workers {
        worker.ready().await;
    }
    let all_green = || async {
        for port in metrics {
            if healthz(port).await.0 != 200 {
                return false;
            }
        }
        true
    };
    let green_before = wait_until(Duration::from_secs(10), all_green).await;
    let producing = crate::produce(&db, &targets, 1..=rounds, gap, None);
    let chaos = async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let running: i64 =
            sqlx::query_scalar("select count(*) from pdq.jobs where state = 'running'")
                .fetch_one(&db.pool)
                .await
                .unwrap();
        proxy.blackhole();
        let from = Instant::now();
        // When each worker's /healthz first said 503, and what.
        let mut red: Vec<Option<(Duration, String)>> = vec![None; metrics.len()];
        while from.elapsed() < silence {
            for (n, port) in metrics.iter().enumerate() {
                if red[n].is_none() {
                    let (status, reason) = healthz(*port).await;
                    if status == 503 {
                        red[n] = Some((from.elapsed(), reason));
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let queued = queue_len(&db).await.unwrap_or(0);
        proxy.restore();
        let restored = Instant::now();
        (running, red, queued, restored)
    };
    let ((jobs, first_insert), (running_before, red, queued, restored)) =
        tokio::join!(producing, chaos);
    let green_after = wait_until(Duration::from_secs(60), all_green).await;
    let green_in = restored.elapsed();
    let drained = drain(&db, first_insert, silence + drain_timeout()).await;
    let survived = workers.iter_mut().all(alive);
    for worker in &mut workers {
        worker.stop();
    }
    let mut verdict = Verdict::of(&db, &emulator, jobs, drained).await;
    verdict.allow_duplicates(
        running_before + 2 * i64::from(pdq::queue::lease::DEFAULT_CLAIM_BATCH),
        "running when it began, plus a claim batch per worker",
    );
    let reds: Vec<String> = red
        .iter()
        .map(|r| match r {
            Some((after, _)) => format!("{:.1} s", after.as_secs_f64()),
            None => "never".to_owned(),
        })
        .collect();
    let reason = red
        .iter()
        .flatten()
        .map(|(_, reason)| reason.split(':').next().unwrap_or_default().to_owned())
        .next()
        .unwrap_or_default();
    verdict.notes = format!(
        "silent {} s (claim timeout {CLAIM_TIMEOUT_SECS} s, statement timeout \
         {STATEMENT_TIMEOUT_SECS} s); {queued} jobs queued at its end; /healthz 503 after {} \
         ({reason}), 200 again {:.1} s after the restore",
        silence.as_secs(),
        reds.join(" and "),
        green_in.as_secs_f64(),
    );
    verdict.check(
        green_before,
        "precondition: /healthz 200 before the blackhole",
    );
    verdict.check(
        red.iter().all(Option::is_some),
        format!("every worker's /healthz turned 503 during the blackhole: {reds:?}"),
    );
    verdict.check(green_after, "every worker's /healthz 200 again after it");
    verdict.check(queued > 0, "jobs waited during the blackhole (mid-drain)");
    verdict.check(survived, "no worker exited");
    verdict.conclude(&scenario);
    db.drop_database().await;
    drop(proxy);
}
