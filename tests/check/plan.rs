//! The seeded plan of one run: the workload (which jobs are inserted when, with which locators,
//! priorities, deadlines and idempotency keys, and the operator's actions) and the fault
//! schedule (API and process faults, each with a start and an end). Everything comes from one
//! small PRNG seeded with the run's seed, so a seed names one plan exactly.

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// Conversations in a run; each has a customer (the participant every job targets) and an agent.
pub const CONVERSATIONS: usize = 10;
/// The keys jobs write (a job writes one or two of them).
pub const KEYS: [&str; 3] = ["alpha", "beta", "gamma"];
/// The emulator refuses (400) attribute values longer than this.
pub const MAX_VALUE_CHARS: usize = 2_000;
/// Inserts happen in `[0, PRODUCE_MS)` from the start.
pub const PRODUCE_MS: u64 = 3_000;

/// How a job names its participant (every locator resolves to the conversation's customer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Locator {
    /// `conversation_id` and `participant_id`.
    Ids,
    /// `conversation_id` and `participant_purpose = 'customer'`.
    Purpose,
    /// `conversation_id` and `participant_name`.
    Name,
    /// `conversation_id` and `participant_external_contact_id`.
    ExternalContact,
    /// `external_tag` (the conversation's), purpose left to its default.
    Tag,
}

/// One insert the producer makes.
#[derive(Debug, Clone)]
pub struct JobSpec {
    /// The insert's number: every value the job writes starts with `u{n}`, its marker.
    pub n: u64,
    /// When it is inserted, in milliseconds from the start.
    pub at_ms: u64,
    /// Which conversation's customer it updates.
    pub conversation: usize,
    /// How it names the customer.
    pub locator: Locator,
    /// The keys it writes.
    pub keys: Vec<&'static str>,
    /// One of its values is over [`MAX_VALUE_CHARS`]: the API refuses it (400).
    pub long_value: bool,
    /// `priority = 'backfill'`.
    pub backfill: bool,
    /// `run_at` this far ahead.
    pub run_ahead_ms: Option<u64>,
    /// `expires_at` this long after `run_at`.
    pub expires_in_ms: Option<u64>,
    /// Its idempotency key (a key may be repeated on purpose by a later insert).
    pub idempotency_key: Option<String>,
    /// A small `max_attempts` (default 20 otherwise).
    pub max_attempts: Option<i32>,
}

impl JobSpec {
    /// The attributes it writes.
    pub fn attributes(&self) -> std::collections::BTreeMap<String, String> {
        self.keys
            .iter()
            .enumerate()
            .map(|(i, key)| {
                let mut value = format!("u{}", self.n);
                if self.long_value && i == 0 {
                    value.push('-');
                    value.push_str(&"x".repeat(MAX_VALUE_CHARS + 100));
                }
                ((*key).to_owned(), value)
            })
            .collect()
    }
}

/// An operator's action, run by the producer between inserts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Action {
    /// `pdq.cancel_jobs` on the newest job still pending (scheduled ahead first).
    Cancel,
    /// `pdq.requeue_dead_letters` on the oldest dead letter of the run, with or without force.
    Requeue {
        /// Give it a new place (its value becomes the newest).
        force: bool,
    },
    /// An operator pause of the shared budget for this long, then `resume`.
    BudgetPause {
        /// How long before the resume.
        ms: u64,
    },
    /// `setval` of the job id sequence back to 1 (a restore, a failover).
    SequenceReset,
}

/// What one fault does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// 30 % of API requests answered 500/502/503/504.
    ServerErrors,
    /// Every API request answered 429 (Retry-After 1 s).
    RateLimitStorm,
    /// 30 % of requests never answered within the request timeout.
    Hangs,
    /// 20 % of connections closed before the request is served.
    Resets,
    /// 20 % of requests served (applied), then the connection closed without the answer.
    AppliedThenDropped,
    /// 20 % of requests served (applied), then answered 503.
    AppliedThenError,
    /// Latency up to twice the request timeout.
    LatencySpike,
    /// The API stops listening (connections refused, open ones dropped).
    ApiOutage,
    /// One conversation answers 403 `not.authorized`.
    Forbidden,
    /// One conversation ends (for good).
    ConversationEnds,
    /// One conversation's customer leaves (for good).
    ParticipantLeaves,
    /// `kill -9` of a worker (a new one is started shortly after).
    Kill,
    /// SIGSTOP of a worker past its lease, then SIGCONT.
    Stop,
    /// SIGTERM of a worker mid-work (a new one is started once it exited).
    Term,
    /// `pg_terminate_backend` of every worker session.
    TerminateBackends,
    /// A trigger on `pdq.finished_jobs` raises `53100 could not extend file`.
    RecordingFails,
    /// The job id sequence is set back to 1 (an operator action, listed with the faults).
    SequenceReset,
    /// One job's value is over the API's limit (a 400 for that job alone).
    RefusedValue,
    /// Postgres stops at once (`pg_ctl stop -m immediate`, as in a power cut) and starts again
    /// through crash recovery; the run uses a private cluster.
    PostgresCrash,
}

impl FaultKind {
    /// Its name in reports and in the summary line.
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::ServerErrors => "server_errors",
            FaultKind::RateLimitStorm => "rate_limit_storm",
            FaultKind::Hangs => "hangs",
            FaultKind::Resets => "resets",
            FaultKind::AppliedThenDropped => "applied_then_dropped",
            FaultKind::AppliedThenError => "applied_then_error",
            FaultKind::LatencySpike => "latency_spike",
            FaultKind::ApiOutage => "api_outage",
            FaultKind::Forbidden => "forbidden_conversation",
            FaultKind::ConversationEnds => "conversation_ends",
            FaultKind::ParticipantLeaves => "participant_leaves",
            FaultKind::Kill => "kill_9",
            FaultKind::Stop => "sigstop_past_lease",
            FaultKind::Term => "sigterm",
            FaultKind::TerminateBackends => "pg_terminate_backend",
            FaultKind::RecordingFails => "recording_fails",
            FaultKind::SequenceReset => "sequence_reset",
            FaultKind::RefusedValue => "refused_value",
            FaultKind::PostgresCrash => "postgres_crash",
        }
    }

    /// A PATCH may be applied without its sender learning so (a process frozen or killed
    /// mid-request, a connection dropped): the guarantee allows sending it again.
    pub fn allows_duplicates(self) -> bool {
        matches!(
            self,
            FaultKind::Kill
                | FaultKind::Stop
                | FaultKind::PostgresCrash
                | FaultKind::ApiOutage
                | FaultKind::AppliedThenDropped
                | FaultKind::AppliedThenError
                | FaultKind::LatencySpike
        )
    }

    /// Keeps a worker from recording what it applied while it lasts (the worker holds the unit
    /// and records it afterwards).
    pub fn delays_recording(self) -> bool {
        matches!(
            self,
            FaultKind::RecordingFails | FaultKind::TerminateBackends | FaultKind::PostgresCrash
        )
    }

    /// Set through the emulator's fault settings (one window at a time).
    fn api_window(self) -> bool {
        matches!(
            self,
            FaultKind::ServerErrors
                | FaultKind::RateLimitStorm
                | FaultKind::Hangs
                | FaultKind::Resets
                | FaultKind::AppliedThenDropped
                | FaultKind::AppliedThenError
                | FaultKind::LatencySpike
                | FaultKind::ApiOutage
        )
    }
}

/// One scheduled fault.
#[derive(Debug, Clone, Copy)]
pub struct Fault {
    /// What it does.
    pub kind: FaultKind,
    /// When it starts, in milliseconds from the start.
    pub start_ms: u64,
    /// When it ends (equal to the start for an instant fault).
    pub end_ms: u64,
    /// The conversation (conversation faults) or the worker slot (process faults) it hits.
    pub target: usize,
}

/// Everything one seed does.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The seed.
    pub seed: u64,
    /// Workers started at the beginning.
    pub workers: usize,
    /// The inserts, in the order made.
    pub jobs: Vec<JobSpec>,
    /// Operator actions with their times (milliseconds from the start).
    pub actions: Vec<(u64, Action)>,
    /// The faults, by start.
    pub faults: Vec<Fault>,
}

impl Plan {
    /// The plan of `seed`.
    pub fn of(seed: u64) -> Plan {
        let mut rng = SmallRng::seed_from_u64(seed);
        let faults = schedule(&mut rng);
        let doomed = doomed(&faults);
        let mut jobs = workload(&mut rng, &doomed);
        if faults.iter().any(|f| f.kind == FaultKind::RefusedValue) {
            let pick = rng.gen_range(0..jobs.len());
            jobs[pick].long_value = true;
        }
        let mut actions = Vec::new();
        for _ in 0..rng.gen_range(1..=3) {
            actions.push((rng.gen_range(300..PRODUCE_MS), Action::Cancel));
        }
        for _ in 0..rng.gen_range(0..=2) {
            let force = rng.gen_bool(0.5);
            actions.push((rng.gen_range(1_200..PRODUCE_MS), Action::Requeue { force }));
        }
        if rng.gen_bool(0.4) {
            let ms = rng.gen_range(200..800);
            actions.push((rng.gen_range(200..2_000), Action::BudgetPause { ms }));
        }
        for fault in &faults {
            if fault.kind == FaultKind::SequenceReset {
                actions.push((fault.start_ms, Action::SequenceReset));
            }
        }
        actions.sort_by_key(|(at, _)| *at);
        let mut plan = Plan {
            seed,
            workers: rng.gen_range(2..=3),
            jobs,
            actions,
            faults,
        };
        plan.add_extras(seed);
        plan
    }

    /// What later versions of the generator add, drawn from a stream of their own so that
    /// every earlier draw of a seed (and so its regression case) stays as it was: maybe a
    /// Postgres crash, and pairs of jobs to one participant shaped to meet the faults that
    /// leave a value uncertain.
    fn add_extras(&mut self, seed: u64) {
        let mut rng = SmallRng::seed_from_u64(seed ^ 0x05ee_d0fe_87a5);
        if rng.gen_bool(0.25) {
            let start = rng.gen_range(600..2_500);
            self.faults.push(Fault {
                kind: FaultKind::PostgresCrash,
                start_ms: start,
                end_ms: start,
                target: 0,
            });
            self.faults.sort_by_key(|f| f.start_ms);
        }
        let doomed = doomed(&self.faults);
        let windows: Vec<Fault> = self
            .faults
            .iter()
            .filter(|f| {
                matches!(
                    f.kind,
                    FaultKind::AppliedThenError
                        | FaultKind::AppliedThenDropped
                        | FaultKind::Hangs
                        | FaultKind::LatencySpike
                )
            })
            .copied()
            .collect();
        let locator = |rng: &mut SmallRng, conversation: usize| {
            let pick = [
                Locator::Ids,
                Locator::Purpose,
                Locator::Name,
                Locator::ExternalContact,
                Locator::Tag,
            ][rng.gen_range(0..5)];
            if pick == Locator::Tag && doomed.contains(&conversation) {
                Locator::Ids
            } else {
                pick
            }
        };
        for window in windows {
            for _ in 0..rng.gen_range(2..=4) {
                let conversation = rng.gen_range(0..CONVERSATIONS);
                let keys = vec![KEYS[rng.gen_range(0..KEYS.len())]];
                let at_ms = rng.gen_range(window.start_ms..window.end_ms.max(window.start_ms + 1));
                let older = JobSpec {
                    n: self.jobs.len() as u64 + 1,
                    at_ms,
                    conversation,
                    locator: locator(&mut rng, conversation),
                    keys: keys.clone(),
                    long_value: false,
                    backfill: rng.gen_bool(0.3),
                    run_ahead_ms: None,
                    expires_in_ms: None,
                    idempotency_key: None,
                    max_attempts: None,
                };
                let mut newer = JobSpec {
                    n: older.n + 1,
                    at_ms: at_ms + rng.gen_range(5..400),
                    locator: locator(&mut rng, conversation),
                    backfill: rng.gen_bool(0.3),
                    ..older.clone()
                };
                if window.kind != FaultKind::Hangs {
                    // The older job waits ahead; the newer one is sent first, and may leave
                    // (out of attempts, expired) with its value uncertain on the API.
                    let mut ahead = older.clone();
                    ahead.run_ahead_ms = Some(rng.gen_range(1_000..2_200));
                    self.jobs.push(ahead);
                    newer.at_ms = at_ms + rng.gen_range(5..60);
                    match rng.gen_range(0..3) {
                        0 => newer.max_attempts = Some(1),
                        1 => newer.max_attempts = Some(2),
                        _ => newer.expires_in_ms = Some(rng.gen_range(300..900)),
                    }
                } else {
                    // The older job's PATCH may go unanswered and land late; the newer one is
                    // due soon after.
                    self.jobs.push(older);
                }
                self.jobs.push(newer);
            }
        }
    }

    /// The faults of one kind.
    pub fn faults_of(&self, kind: FaultKind) -> impl Iterator<Item = &Fault> {
        self.faults.iter().filter(move |f| f.kind == kind)
    }
}

/// The conversations that end or lose their customer during the run.
fn doomed(faults: &[Fault]) -> Vec<usize> {
    faults
        .iter()
        .filter(|f| {
            matches!(
                f.kind,
                FaultKind::ConversationEnds | FaultKind::ParticipantLeaves
            )
        })
        .map(|f| f.target)
        .collect()
}

/// The fault schedule: API windows one after another, a few process faults, conversation
/// faults, maybe a sequence reset and a refused value.
fn schedule(rng: &mut SmallRng) -> Vec<Fault> {
    const API: [FaultKind; 8] = [
        FaultKind::ServerErrors,
        FaultKind::RateLimitStorm,
        FaultKind::Hangs,
        FaultKind::Resets,
        FaultKind::AppliedThenDropped,
        FaultKind::AppliedThenError,
        FaultKind::LatencySpike,
        FaultKind::ApiOutage,
    ];
    const PROCESS: [FaultKind; 5] = [
        FaultKind::Kill,
        FaultKind::Stop,
        FaultKind::Term,
        FaultKind::TerminateBackends,
        FaultKind::RecordingFails,
    ];
    let mut faults = Vec::new();
    let mut at = rng.gen_range(100..500);
    for _ in 0..rng.gen_range(1..=3) {
        let kind = API[rng.gen_range(0..API.len())];
        let length = match kind {
            FaultKind::ApiOutage | FaultKind::RateLimitStorm => rng.gen_range(300..1_000),
            _ => rng.gen_range(400..1_200),
        };
        if at + length > PRODUCE_MS {
            break;
        }
        faults.push(Fault {
            kind,
            start_ms: at,
            end_ms: at + length,
            target: 0,
        });
        at += length + rng.gen_range(100..600);
    }
    for _ in 0..rng.gen_range(1..=3) {
        let kind = PROCESS[rng.gen_range(0..PROCESS.len())];
        let start = rng.gen_range(300..2_500);
        let end = match kind {
            FaultKind::Stop => start + crate::procs::LEASE_SECS * 1_000 + 1_500,
            FaultKind::RecordingFails => start + rng.gen_range(500..1_500),
            _ => start,
        };
        faults.push(Fault {
            kind,
            start_ms: start,
            end_ms: end,
            target: rng.gen_range(0..3),
        });
    }
    let mut hit: Vec<usize> = Vec::new();
    for _ in 0..rng.gen_range(0..=2) {
        let kind = [
            FaultKind::Forbidden,
            FaultKind::ConversationEnds,
            FaultKind::ParticipantLeaves,
        ][rng.gen_range(0..3)];
        let target = rng.gen_range(0..CONVERSATIONS);
        if hit.contains(&target) {
            continue;
        }
        hit.push(target);
        let start = rng.gen_range(400..2_500);
        let end = match kind {
            FaultKind::Forbidden => start + rng.gen_range(300..1_000),
            _ => start,
        };
        faults.push(Fault {
            kind,
            start_ms: start,
            end_ms: end,
            target,
        });
    }
    if rng.gen_bool(0.3) {
        let start = rng.gen_range(800..2_500);
        faults.push(Fault {
            kind: FaultKind::SequenceReset,
            start_ms: start,
            end_ms: start,
            target: 0,
        });
    }
    if rng.gen_bool(0.4) {
        faults.push(Fault {
            kind: FaultKind::RefusedValue,
            start_ms: 0,
            end_ms: 0,
            target: 0,
        });
    }
    debug_assert!(faults
        .iter()
        .filter(|f| f.kind.api_window())
        .all(|f| f.end_ms <= PRODUCE_MS));
    faults.sort_by_key(|f| f.start_ms);
    faults
}

/// The inserts: steady traffic over [`PRODUCE_MS`], bursts to one participant, repeated
/// idempotency keys, jobs scheduled ahead and jobs with deadlines.
fn workload(rng: &mut SmallRng, doomed: &[usize]) -> Vec<JobSpec> {
    let total = rng.gen_range(120..=260);
    let mut times: Vec<u64> = (0..total).map(|_| rng.gen_range(0..PRODUCE_MS)).collect();
    times.sort_unstable();
    let mut jobs: Vec<JobSpec> = Vec::with_capacity(total + 40);
    let mut keys_used: Vec<String> = Vec::new();
    let mut i = 0;
    while i < times.len() {
        let at_ms = times[i];
        let conversation = rng.gen_range(0..CONVERSATIONS);
        let burst = if rng.gen_bool(0.05) {
            rng.gen_range(3..=8)
        } else {
            1
        };
        for _ in 0..burst {
            let n = jobs.len() as u64 + 1;
            let mut locator = match rng.gen_range(0..10) {
                0..=3 => Locator::Ids,
                4..=5 => Locator::Purpose,
                6 => Locator::Name,
                7 => Locator::ExternalContact,
                _ => Locator::Tag,
            };
            // A tag lookup of an ended conversation waits out the lookup window (60 s).
            if locator == Locator::Tag && doomed.contains(&conversation) {
                locator = Locator::Purpose;
            }
            let mut keys: Vec<&'static str> = KEYS
                .iter()
                .copied()
                .filter(|_| rng.gen_bool(0.45))
                .collect();
            if keys.is_empty() {
                keys.push(KEYS[rng.gen_range(0..KEYS.len())]);
            }
            let idempotency_key = if rng.gen_bool(0.2) {
                if !keys_used.is_empty() && rng.gen_bool(0.35) {
                    Some(keys_used[rng.gen_range(0..keys_used.len())].clone())
                } else {
                    let key = format!("key-{n}");
                    keys_used.push(key.clone());
                    Some(key)
                }
            } else {
                None
            };
            jobs.push(JobSpec {
                n,
                at_ms,
                conversation,
                locator,
                keys,
                long_value: false,
                backfill: rng.gen_bool(0.15),
                run_ahead_ms: rng.gen_bool(0.08).then(|| rng.gen_range(300..2_000)),
                expires_in_ms: rng.gen_bool(0.08).then(|| rng.gen_range(200..2_500)),
                idempotency_key,
                max_attempts: rng.gen_bool(0.08).then(|| rng.gen_range(2..=3)),
            });
        }
        i += 1;
    }
    jobs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_names_one_plan() {
        let (a, b) = (Plan::of(7), Plan::of(7));
        assert_eq!(format!("{:?}", a.jobs), format!("{:?}", b.jobs));
        assert_eq!(format!("{:?}", a.faults), format!("{:?}", b.faults));
        assert_eq!(a.actions, b.actions);
        assert_ne!(
            format!("{:?}", Plan::of(8).faults),
            format!("{:?}", a.faults)
        );
    }

    #[test]
    fn every_fault_kind_shows_up_in_a_few_dozen_seeds() {
        let kinds: std::collections::BTreeSet<&str> = (0..60)
            .flat_map(|seed| Plan::of(seed).faults)
            .map(|f| f.kind.name())
            .collect();
        assert_eq!(kinds.len(), 19, "{kinds:?}");
    }

    #[test]
    fn api_windows_never_overlap_and_end_before_the_quiet_period() {
        for seed in 0..200 {
            let plan = Plan::of(seed);
            let windows: Vec<&Fault> = plan.faults.iter().filter(|f| f.kind.api_window()).collect();
            for pair in windows.windows(2) {
                assert!(pair[0].end_ms <= pair[1].start_ms, "seed {seed}");
            }
            assert!(windows.iter().all(|f| f.end_ms <= PRODUCE_MS));
            assert!(plan.jobs.len() >= 120);
        }
    }
}
