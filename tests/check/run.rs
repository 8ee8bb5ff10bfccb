//! Runs one seed's plan: a fresh database, the in-process emulator (seeded), several `pdq run`
//! children; the producer inserts the workload and makes the operator's actions while the
//! fault schedule plays; then a quiet period waits (bounded) until the queue settles, and the
//! evidence for the checker is collected.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use pdq::emulator::{
    ConversationSpec, Emulator, EmulatorConfig, EmulatorHandle, Faults, ParticipantSpec,
    DEMO_CLIENT_ID,
};
use pdq::queue::budget::{self, PauseReason};
use tokio::sync::RwLock;
use uuid::Uuid;

use crate::cluster::PrivateCluster;
use crate::helpers::TestDb;
use crate::judge::{marker_of, Evidence, FinalState, Refused, Update, Window};
use crate::plan::{Action, Fault, FaultKind, JobSpec, Locator, Plan, CONVERSATIONS};
use crate::procs::{Worker, REQUEST_TIMEOUT_MS};

/// The longest the quiet period waits for the queue to settle.
const QUIET_BOUND: Duration = Duration::from_secs(45);
/// The queue must stay empty this long to count as settled.
const SETTLED_FOR: Duration = Duration::from_millis(400);

/// One conversation of the run.
#[derive(Debug, Clone)]
pub struct Conversation {
    /// Its id.
    pub id: Uuid,
    /// Its customer (every job's participant).
    pub customer: Uuid,
    /// Its external tag.
    pub tag: String,
    /// The customer's name.
    pub name: String,
    /// The customer's external contact id.
    pub contact: String,
}

/// What a run produced: the evidence and how it went.
pub struct RunResult {
    /// For the checker.
    pub evidence: Evidence,
    /// The queue settled within the bound.
    pub settled: bool,
    /// Wall time of the whole seed (setup to teardown).
    pub elapsed: Duration,
    /// Faults injected, by kind (including operator actions).
    pub injected: BTreeMap<&'static str, usize>,
    /// Worker logs (kept on failure).
    pub logs: Vec<std::path::PathBuf>,
}

/// Runs `plan`.
pub async fn run(plan: &Plan) -> RunResult {
    let started = Instant::now();
    // A run that crashes Postgres gets a private cluster (the port range 25470–25479).
    let cluster = plan
        .faults_of(FaultKind::PostgresCrash)
        .next()
        .map(|_| Arc::new(PrivateCluster::start_in(25_470).expect("a private cluster (initdb)")));
    let db = match &cluster {
        Some(cluster) => TestDb::on_server(&cluster.url(), 6).await,
        None => TestDb::with_connections(6).await,
    };
    // Held for reading by each insert and operator action, for writing by a crash: no insert
    // is in flight when Postgres goes down, so each one's outcome is known.
    let crash_guard = RwLock::new(());
    let emulator = Emulator::start(EmulatorConfig {
        seed: plan.seed,
        rate_limit: None,
        ..EmulatorConfig::default()
    })
    .await
    .expect("emulator");
    emulator.set_faults(base_faults());
    let conversations: Vec<Conversation> = (0..CONVERSATIONS)
        .map(|i| {
            let (tag, name, contact) = (
                format!("tag-{}-{i}", plan.seed),
                format!("Customer {i}"),
                format!("contact-{i}"),
            );
            let created = emulator.create_conversation(
                ConversationSpec::voice()
                    .external_tag(&tag)
                    .participant(ParticipantSpec {
                        purpose: "customer".to_owned(),
                        name: Some(name.clone()),
                        external_contact_id: Some(contact.clone()),
                        ani: Some("tel:+15551234567".to_owned()),
                        ..ParticipantSpec::default()
                    })
                    .agent(),
            );
            Conversation {
                id: created.id,
                customer: created.participant("customer").expect("a customer"),
                tag,
                name,
                contact,
            }
        })
        .collect();
    let url = db.url();
    let mut workers: Vec<Worker> = (0..plan.workers)
        .map(|i| Worker::spawn(&url, &emulator, &format!("seed{}-w{i}", plan.seed)))
        .collect();
    for worker in &workers {
        assert!(
            worker.ready(Duration::from_secs(30)).await,
            "a worker started: {}",
            worker.log_text()
        );
    }
    let t0 = Instant::now();
    let producing = produce(plan, &db, &conversations, t0, &crash_guard);
    let chaos = play_faults(
        plan,
        &db,
        &emulator,
        &conversations,
        &mut workers,
        t0,
        (cluster.clone(), &crash_guard),
    );
    let ((updates, refused, mut windows), (fault_windows, logs)) = tokio::join!(producing, chaos);
    windows.extend(fault_windows);
    let settled = settle(&db).await;
    for worker in &mut workers {
        worker.terminate(Duration::from_secs(4)).await;
    }
    let mut all_logs = logs;
    all_logs.extend(workers.iter().map(Worker::keep_log));
    let finals = final_states(&db).await;
    let keys: Vec<String> = updates.iter().filter_map(|u| u.key.clone()).collect();
    let jobs_per_key: BTreeMap<String, i64> = sqlx::query_as::<_, (String, i64)>(
        "select idempotency_key, count(distinct id) from pdq.job_records
         where idempotency_key = any($1) group by 1",
    )
    .bind(&keys)
    .fetch_all(&db.pool)
    .await
    .expect("keys")
    .into_iter()
    .collect();
    let mut injected: BTreeMap<&'static str, usize> = BTreeMap::new();
    for window in &windows {
        *injected.entry(window.kind.name()).or_default() += 1;
    }
    if plan.jobs.iter().any(|j| j.long_value) {
        *injected.entry(FaultKind::RefusedValue.name()).or_default() += 1;
    }
    for (_, action) in &plan.actions {
        let name = match action {
            Action::Cancel => "operator_cancel",
            Action::Requeue { force: true } => "operator_requeue_force",
            Action::Requeue { force: false } => "operator_requeue",
            Action::BudgetPause { .. } => "operator_budget_pause",
            Action::SequenceReset => continue,
        };
        *injected.entry(name).or_default() += 1;
    }
    let evidence = Evidence {
        updates,
        refused,
        finals,
        history: emulator.patches(),
        windows,
        jobs_per_key,
    };
    drop(workers);
    if std::env::var_os("PDQ_CHECK_KEEP_DB").is_some() && cluster.is_none() {
        eprintln!("kept database {} (PDQ_CHECK_KEEP_DB)", db.name);
        std::mem::forget(db);
    } else {
        db.drop_database().await;
    }
    RunResult {
        evidence,
        settled,
        elapsed: started.elapsed(),
        injected,
        logs: all_logs,
    }
}

/// The emulator's faults outside the fault windows: a little latency.
fn base_faults() -> Faults {
    Faults {
        latency_ms: 2,
        ..Faults::default()
    }
}

/// The emulator's faults during an API window of `kind`.
fn window_faults(kind: FaultKind, length: Duration) -> Faults {
    let base = base_faults();
    match kind {
        FaultKind::ServerErrors => Faults {
            error_rate: 0.3,
            ..base
        },
        FaultKind::RateLimitStorm => Faults {
            storm_secs: length.as_secs().max(1),
            storm_retry_after_secs: 1,
            ..base
        },
        FaultKind::Hangs => Faults {
            hang_rate: 0.3,
            hang_ms: REQUEST_TIMEOUT_MS * 3,
            // Applied after the sender gave up, but within the quiet time pdq keeps after an
            // unanswered PATCH (twice the request timeout from when it gave up).
            late_apply_rate: 0.15,
            late_apply_ms: REQUEST_TIMEOUT_MS * 3 / 2,
            ..base
        },
        FaultKind::Resets => Faults {
            reset_rate: 0.2,
            ..base
        },
        FaultKind::AppliedThenDropped => Faults {
            apply_then_reset_rate: 0.2,
            ..base
        },
        FaultKind::AppliedThenError => Faults {
            apply_then_error_rate: 0.2,
            error_statuses: vec![503],
            ..base
        },
        FaultKind::LatencySpike => Faults {
            latency_ms: 50,
            latency_jitter_ms: REQUEST_TIMEOUT_MS * 2,
            ..base
        },
        _ => base,
    }
}

/// Sleeps until `at_ms` after `t0`.
async fn until(t0: Instant, at_ms: u64) {
    let at = t0 + Duration::from_millis(at_ms);
    let now = Instant::now();
    if at > now {
        tokio::time::sleep(at - now).await;
    }
}

/// The dead-letter reasons the schedule explains for a job.
fn allowed_reasons(plan: &Plan, spec: &JobSpec) -> BTreeSet<&'static str> {
    let mut allowed = BTreeSet::new();
    if spec.expires_in_ms.is_some() {
        allowed.insert("expired");
    }
    if spec.long_value {
        allowed.extend(["bad_request", "payload_too_large"]);
    }
    let hits = |kind: FaultKind| plan.faults_of(kind).any(|f| f.target == spec.conversation);
    if hits(FaultKind::ConversationEnds) || hits(FaultKind::ParticipantLeaves) {
        // A PATCH there is answered 409: when the GET that explains it fails too, the reason
        // stays `conflict`.
        allowed.extend(["conversation_ended", "participant_disconnected", "conflict"]);
    }
    if hits(FaultKind::Forbidden) {
        allowed.insert("forbidden");
    }
    if spec.max_attempts.is_some() && !plan.faults.is_empty() {
        allowed.insert("retries_exhausted");
    }
    allowed
}

/// Inserts the workload and runs the operator's actions; returns the jobs, the inserts that
/// made none, and the windows of the actions that count as faults (sequence resets).
async fn produce(
    plan: &Plan,
    db: &TestDb,
    conversations: &[Conversation],
    t0: Instant,
    crash_guard: &RwLock<()>,
) -> (Vec<Update>, Vec<Refused>, Vec<Window>) {
    enum Step<'a> {
        Insert(&'a JobSpec),
        Act(Action),
    }
    let mut steps: Vec<(u64, usize, Step)> = plan
        .jobs
        .iter()
        .map(|j| (j.at_ms, 0, Step::Insert(j)))
        .chain(plan.actions.iter().map(|(at, a)| (*at, 1, Step::Act(*a))))
        .collect();
    steps.sort_by_key(|(at, order, _)| (*at, *order));
    let (mut updates, mut refused, mut windows) = (Vec::new(), Vec::new(), Vec::new());
    let mut epoch = 0u32;
    let mut resumes = Vec::new();
    for (at, _, step) in steps {
        until(t0, at).await;
        let _up = crash_guard.read().await;
        match step {
            Step::Insert(spec) => {
                let conversation = &conversations[spec.conversation];
                match insert(db, spec, conversation).await {
                    Ok(Some(id)) => updates.push(Update {
                        n: spec.n,
                        id,
                        place: (epoch, id),
                        forced: None,
                        participant: (conversation.id, conversation.customer),
                        attributes: spec.attributes(),
                        allowed: allowed_reasons(plan, spec),
                        cancelled: false,
                        key: spec.idempotency_key.clone(),
                    }),
                    Ok(None) => refused.push(Refused {
                        n: spec.n,
                        key: spec.idempotency_key.clone(),
                        error: None,
                    }),
                    Err(error) => refused.push(Refused {
                        n: spec.n,
                        key: spec.idempotency_key.clone(),
                        error: Some(error.to_string()),
                    }),
                }
            }
            Step::Act(Action::Cancel) => cancel_one(db, &mut updates).await,
            Step::Act(Action::Requeue { force }) => {
                requeue_one(db, &mut updates, force, epoch).await
            }
            Step::Act(Action::BudgetPause { ms }) => {
                let pool = db.pool.clone();
                let pause = Duration::from_millis(ms);
                let _ = budget::pause(&pool, DEMO_CLIENT_ID, pause, PauseReason::Operator).await;
                resumes.push(tokio::spawn(async move {
                    tokio::time::sleep(pause).await;
                    let _ = budget::resume(&pool, Some(DEMO_CLIENT_ID), "check").await;
                }));
            }
            Step::Act(Action::SequenceReset) => {
                let now = Utc::now();
                sqlx::query("select setval(pg_get_serial_sequence('pdq.jobs', 'id'), 1, false)")
                    .execute(&db.pool)
                    .await
                    .expect("setval");
                epoch += 1;
                windows.push(Window {
                    kind: FaultKind::SequenceReset,
                    start: now,
                    end: now,
                });
            }
        }
    }
    for resume in resumes {
        let _ = resume.await;
    }
    (updates, refused, windows)
}

/// One INSERT as a producer writes it; `None` when its idempotency key made it a no-op.
async fn insert(
    db: &TestDb,
    spec: &JobSpec,
    conversation: &Conversation,
) -> Result<Option<i64>, sqlx::Error> {
    let (mut cid, mut tag, mut pid, mut purpose, mut contact, mut name) =
        (None, None, None, None, None, None);
    match spec.locator {
        Locator::Ids => (cid, pid) = (Some(conversation.id), Some(conversation.customer)),
        Locator::Purpose => (cid, purpose) = (Some(conversation.id), Some("customer")),
        Locator::Name => (cid, name) = (Some(conversation.id), Some(conversation.name.as_str())),
        Locator::ExternalContact => {
            (cid, contact) = (Some(conversation.id), Some(conversation.contact.as_str()))
        }
        Locator::Tag => tag = Some(conversation.tag.as_str()),
    }
    let attributes = serde_json::to_value(spec.attributes()).expect("attributes");
    let ahead = spec.run_ahead_ms.unwrap_or(0) as f64;
    sqlx::query_scalar(
        "insert into pdq.jobs (conversation_id, external_tag, participant_id, participant_purpose,
             participant_external_contact_id, participant_name, attributes, priority, run_at,
             expires_at, idempotency_key, max_attempts)
         values ($1, $2, $3, $4, $5, $6, $7, $8, now() + $9 * interval '1 millisecond',
             now() + ($9 + $10) * interval '1 millisecond', $11, coalesce($12, 20))
         returning id",
    )
    .bind(cid)
    .bind(tag)
    .bind(pid)
    .bind(purpose)
    .bind(contact)
    .bind(name)
    .bind(attributes)
    .bind(if spec.backfill { "backfill" } else { "live" })
    .bind(ahead)
    .bind(spec.expires_in_ms.map(|ms| ms as f64))
    .bind(&spec.idempotency_key)
    .bind(spec.max_attempts)
    .fetch_optional(&db.pool)
    .await
}

/// Cancels the newest pending job (a job scheduled ahead first), if any.
async fn cancel_one(db: &TestDb, updates: &mut [Update]) {
    let Ok(Some((id, attributes))) = sqlx::query_as::<_, (i64, serde_json::Value)>(
        "select id, attributes from pdq.jobs where state = 'pending'
         order by run_at desc, id desc limit 1",
    )
    .fetch_optional(&db.pool)
    .await
    else {
        return;
    };
    let cancelled: Vec<i64> =
        sqlx::query_scalar("select job_id from pdq.cancel_jobs(array[$1]::bigint[], 'check')")
            .bind(id)
            .fetch_all(&db.pool)
            .await
            .unwrap_or_default();
    if cancelled.contains(&id) {
        let n = marker_of(&attributes);
        if let Some(update) = updates.iter_mut().find(|u| Some(u.n) == n) {
            update.cancelled = true;
        }
    }
}

/// Requeues the oldest dead letter of the run (one whose id no other live dead letter shares).
async fn requeue_one(db: &TestDb, updates: &mut [Update], force: bool, epoch: u32) {
    let Ok(Some((id, attributes))) = sqlx::query_as::<_, (i64, serde_json::Value)>(
        "select d.id, d.attributes from pdq.dead_letters d
         where d.requeued_at is null
           and (select count(*) from pdq.dead_letters e
                where e.id = d.id and e.requeued_at is null) = 1
         order by d.dead_at limit 1",
    )
    .fetch_optional(&db.pool)
    .await
    else {
        return;
    };
    let at = Utc::now();
    if sqlx::query("select pdq.requeue_dead_letters(array[$1]::bigint[], $2)")
        .bind(id)
        .bind(force)
        .execute(&db.pool)
        .await
        .is_err()
    {
        return;
    }
    let new_id: Option<i64> = sqlx::query_scalar(
        "select requeued_as from pdq.dead_letters where id = $1 and attributes = $2
         and requeued_as is not null",
    )
    .bind(id)
    .bind(&attributes)
    .fetch_optional(&db.pool)
    .await
    .ok()
    .flatten()
    .flatten();
    let n = marker_of(&attributes);
    if let (Some(update), Some(new_id), true) =
        (updates.iter_mut().find(|u| Some(u.n) == n), new_id, force)
    {
        update.forced = Some((at, (epoch, new_id)));
    }
}

/// A worker slot's event.
#[derive(Debug, Clone, Copy)]
enum Event {
    Start(Fault),
    End(Fault),
    /// Start a new worker in this slot.
    Restart(usize),
    /// See whether a SIGTERMed worker has exited (then restart it).
    Reap(usize, Fault, DateTime<Utc>),
}

/// Plays the fault schedule; returns the windows as they happened and the logs of the
/// workers replaced on the way. Every fault has ended when it returns.
async fn play_faults(
    plan: &Plan,
    db: &TestDb,
    emulator: &EmulatorHandle,
    conversations: &[Conversation],
    workers: &mut [Worker],
    t0: Instant,
    (cluster, crash_guard): (Option<Arc<PrivateCluster>>, &RwLock<()>),
) -> (Vec<Window>, Vec<std::path::PathBuf>) {
    let mut events: Vec<(u64, Event)> = Vec::new();
    for fault in &plan.faults {
        if fault.kind == FaultKind::SequenceReset || fault.kind == FaultKind::RefusedValue {
            continue;
        }
        events.push((fault.start_ms, Event::Start(*fault)));
        if fault.end_ms > fault.start_ms || fault.kind == FaultKind::Stop {
            events.push((fault.end_ms, Event::End(*fault)));
        }
    }
    let mut windows = Vec::new();
    let mut open: HashMap<(u64, u8), DateTime<Utc>> = HashMap::new();
    let mut logs = Vec::new();
    let url = db.url();
    let mut spawned = 0;
    let mut stopped_slots: HashMap<u64, usize> = HashMap::new();
    while !events.is_empty() {
        events.sort_by_key(|(at, _)| *at);
        let (at, event) = events.remove(0);
        until(t0, at).await;
        let now = Utc::now();
        let key = |f: &Fault| (f.start_ms, f.kind as u8);
        match event {
            Event::Start(fault) => {
                let conversation = &conversations[fault.target % conversations.len()];
                match fault.kind {
                    FaultKind::ApiOutage => {
                        let length = Duration::from_millis(fault.end_ms - fault.start_ms);
                        emulator.outage(length).await;
                        open.insert(key(&fault), now);
                    }
                    kind if is_api(kind) => {
                        let length = Duration::from_millis(fault.end_ms - fault.start_ms);
                        emulator.set_faults(window_faults(kind, length));
                        open.insert(key(&fault), now);
                    }
                    FaultKind::Forbidden => {
                        emulator.set_forbidden(conversation.id, true);
                        open.insert(key(&fault), now);
                    }
                    FaultKind::ConversationEnds => {
                        emulator.end_conversation(conversation.id);
                        windows.push(instant(fault.kind, now));
                    }
                    FaultKind::ParticipantLeaves => {
                        emulator.disconnect_participant(conversation.id, conversation.customer);
                        windows.push(instant(fault.kind, now));
                    }
                    FaultKind::Kill => {
                        if let Some(slot) = pick_running(workers, fault.target) {
                            workers[slot].kill();
                            windows.push(instant(fault.kind, Utc::now()));
                            events.push((at + 300, Event::Restart(slot)));
                        }
                    }
                    FaultKind::Stop => {
                        if let Some(slot) = pick_running(workers, fault.target) {
                            workers[slot].signal("-STOP");
                            workers[slot].stopped = true;
                            stopped_slots.insert(fault.start_ms, slot);
                            open.insert(key(&fault), Utc::now());
                        }
                    }
                    FaultKind::Term => {
                        if let Some(slot) = pick_running(workers, fault.target) {
                            workers[slot].signal("-TERM");
                            events.push((at + 50, Event::Reap(slot, fault, Utc::now())));
                        }
                    }
                    FaultKind::PostgresCrash => {
                        if let Some(cluster) = cluster.clone() {
                            let _down = crash_guard.write().await;
                            let start = Utc::now();
                            let recovered =
                                tokio::task::spawn_blocking(move || cluster.crash_and_recover())
                                    .await
                                    .unwrap_or(false);
                            assert!(recovered, "Postgres restarted after the crash");
                            windows.push(Window {
                                kind: fault.kind,
                                start,
                                end: Utc::now(),
                            });
                        }
                    }
                    FaultKind::TerminateBackends => {
                        let _ = sqlx::query(
                            "select pg_terminate_backend(pid) from pg_stat_activity
                             where datname = current_database() and application_name = 'pdq'
                               and pid <> pg_backend_pid()",
                        )
                        .execute(&db.pool)
                        .await;
                        windows.push(instant(fault.kind, now));
                    }
                    FaultKind::RecordingFails => {
                        let _ = sqlx::raw_sql(
                            "create or replace function public.check_recording_fails()
                             returns trigger language plpgsql as $$
                             begin
                                 raise exception 'could not extend file' using errcode = '53100';
                             end $$;
                             create trigger check_recording_fails
                                 before insert on pdq.finished_jobs
                                 for each statement execute function public.check_recording_fails();",
                        )
                        .execute(&db.pool)
                        .await;
                        open.insert(key(&fault), now);
                    }
                    _ => {}
                }
            }
            Event::End(fault) => {
                let Some(start) = open.remove(&key(&fault)) else {
                    continue;
                };
                match fault.kind {
                    FaultKind::ApiOutage => {
                        emulator.start_listening().await;
                    }
                    kind if is_api(kind) => emulator.set_faults(base_faults()),
                    FaultKind::Forbidden => {
                        emulator.set_forbidden(conversations[fault.target].id, false);
                    }
                    FaultKind::Stop => {
                        if let Some(slot) = stopped_slots.remove(&fault.start_ms) {
                            workers[slot].signal("-CONT");
                            workers[slot].stopped = false;
                        }
                    }
                    FaultKind::RecordingFails => {
                        let _ = sqlx::raw_sql(
                            "drop trigger if exists check_recording_fails on pdq.finished_jobs",
                        )
                        .execute(&db.pool)
                        .await;
                    }
                    _ => {}
                }
                windows.push(Window {
                    kind: fault.kind,
                    start,
                    end: Utc::now(),
                });
            }
            Event::Restart(slot) => {
                spawned += 1;
                let fresh = Worker::spawn(&url, emulator, &format!("seed{}-r{spawned}", plan.seed));
                let old = std::mem::replace(&mut workers[slot], fresh);
                logs.push(old.keep_log());
                drop(old);
                let _ = workers[slot].ready(Duration::from_secs(30)).await;
            }
            Event::Reap(slot, fault, start) => {
                let exited = workers[slot].exited();
                let waited = Utc::now() - start;
                if exited || waited > chrono::Duration::seconds(4) {
                    workers[slot].kill();
                    windows.push(Window {
                        kind: fault.kind,
                        start,
                        end: Utc::now(),
                    });
                    events.push((at, Event::Restart(slot)));
                } else {
                    events.push((at + 50, Event::Reap(slot, fault, start)));
                }
            }
        }
    }
    (windows, logs)
}

fn is_api(kind: FaultKind) -> bool {
    matches!(
        kind,
        FaultKind::ServerErrors
            | FaultKind::RateLimitStorm
            | FaultKind::Hangs
            | FaultKind::Resets
            | FaultKind::AppliedThenDropped
            | FaultKind::AppliedThenError
            | FaultKind::LatencySpike
    )
}

fn instant(kind: FaultKind, at: DateTime<Utc>) -> Window {
    Window {
        kind,
        start: at,
        end: at,
    }
}

/// The slot `target` picks among the workers running and not stopped.
fn pick_running(workers: &[Worker], target: usize) -> Option<usize> {
    let running: Vec<usize> = (0..workers.len())
        .filter(|i| !workers[*i].stopped)
        .collect();
    (!running.is_empty()).then(|| running[target % running.len()])
}

/// The quiet period: waits until `pdq.jobs` is empty and stays so; false at the bound.
async fn settle(db: &TestDb) -> bool {
    let deadline = Instant::now() + QUIET_BOUND;
    let mut empty_since: Option<Instant> = None;
    while Instant::now() < deadline {
        let queued: Option<i64> = sqlx::query_scalar("select count(*) from pdq.jobs")
            .fetch_one(&db.pool)
            .await
            .ok();
        match queued {
            Some(0) => {
                let since = *empty_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= SETTLED_FOR {
                    return true;
                }
            }
            _ => empty_since = None,
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// Each job's final state in pdq's tables, by the marker in its attributes.
async fn final_states(db: &TestDb) -> HashMap<u64, FinalState> {
    let mut finals: HashMap<u64, FinalState> = HashMap::new();
    let dead: Vec<(serde_json::Value, String)> =
        sqlx::query_as("select attributes, reason from pdq.dead_letters where requeued_at is null")
            .fetch_all(&db.pool)
            .await
            .expect("dead letters");
    for (attributes, reason) in dead {
        if let Some(n) = marker_of(&attributes) {
            finals.entry(n).or_default().dead = Some(reason);
        }
    }
    let cancelled: Vec<serde_json::Value> =
        sqlx::query_scalar("select attributes from pdq.cancelled_jobs")
            .fetch_all(&db.pool)
            .await
            .expect("cancelled jobs");
    for attributes in cancelled {
        if let Some(n) = marker_of(&attributes) {
            finals.entry(n).or_default().cancelled = true;
        }
    }
    let queued: Vec<(serde_json::Value, String)> =
        sqlx::query_as("select attributes, state from pdq.jobs")
            .fetch_all(&db.pool)
            .await
            .expect("jobs");
    for (attributes, state) in queued {
        if let Some(n) = marker_of(&attributes) {
            finals.entry(n).or_default().queued = Some(state);
        }
    }
    let archived: Vec<(serde_json::Value, Vec<String>)> =
        sqlx::query_as("select attributes, coalesce(superseded_keys, '{}') from pdq.finished_jobs")
            .fetch_all(&db.pool)
            .await
            .expect("finished jobs");
    for (attributes, superseded) in archived {
        if let Some(n) = marker_of(&attributes) {
            finals.entry(n).or_default().archived = Some(superseded);
        }
    }
    finals
}
