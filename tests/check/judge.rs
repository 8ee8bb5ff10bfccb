//! The checker: judges one run from what the API received (the emulator's history of applied
//! PATCHes) and each job's final state, against the guarantee.
//!
//! Every value a job writes starts with its marker `u{n}`, so each value in the history names
//! the job it came from. Jobs are ordered by their place: the sequence epoch (bumped by each id
//! sequence reset) and then the job id; a forced requeue gives a job a new place. The checks:
//!
//! - every job ends applied (for each of its keys, its value or a newer job's value reached
//!   its participant), dead-lettered with a reason the schedule explains, or cancelled by the
//!   schedule; nothing pending, running or lost after the quiet period;
//! - per participant and key, the values received never go back to an older job's (stale),
//!   and the last one is the newest job's that was not dead-lettered or cancelled (or whose
//!   value landed anyway);
//! - a value received twice needs a fault around the first send that allows it: its answer
//!   lost (an error or no answer after it was applied), the API out or slow as it was sent, or
//!   its sender killed, frozen or cut off by a Postgres crash before it could record it (a
//!   database fault that holds the recording up extends that time); duplicates are counted per
//!   fault kind;
//! - a repeated idempotency key made exactly one job, and the refused repeat was never sent.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::{DateTime, Duration, Utc};
use pdq::emulator::AppliedPatch;
use uuid::Uuid;

use crate::plan::FaultKind;

/// A job's place: (sequence epoch, job id).
pub type Place = (u32, i64);

/// One accepted insert (a job), as the run recorded it.
#[derive(Debug, Clone)]
pub struct Update {
    /// Its marker number.
    pub n: u64,
    /// The id the INSERT returned.
    pub id: i64,
    /// Its place when inserted.
    pub place: Place,
    /// A forced requeue's time and the new place (PATCHes before it are judged by the old one).
    pub forced: Option<(DateTime<Utc>, Place)>,
    /// (conversation, customer) every locator resolves to.
    pub participant: (Uuid, Uuid),
    /// The attributes it writes.
    pub attributes: BTreeMap<String, String>,
    /// The dead-letter reasons the schedule explains for it.
    pub allowed: BTreeSet<&'static str>,
    /// The schedule cancelled it (`pdq.cancel_jobs` returned it).
    pub cancelled: bool,
    /// Its idempotency key.
    pub key: Option<String>,
}

impl Update {
    /// Its place for a PATCH applied at `at`.
    fn place_at(&self, at: DateTime<Utc>) -> Place {
        match self.forced {
            Some((when, place)) if at >= when => place,
            _ => self.place,
        }
    }

    /// Its place at the end of the run.
    fn final_place(&self) -> Place {
        self.forced.map_or(self.place, |(_, place)| place)
    }
}

/// An insert that made no job: a repeated idempotency key (skipped), or a refused row.
#[derive(Debug, Clone)]
pub struct Refused {
    /// Its marker number.
    pub n: u64,
    /// Its idempotency key.
    pub key: Option<String>,
    /// The database's error, when it was refused rather than skipped.
    pub error: Option<String>,
}

/// Where a job is at the end, from pdq's tables (found by its marker).
#[derive(Debug, Clone, Default)]
pub struct FinalState {
    /// In `pdq.dead_letters` (not requeued): the reason.
    pub dead: Option<String>,
    /// In `pdq.cancelled_jobs`.
    pub cancelled: bool,
    /// Still in `pdq.jobs`: its state.
    pub queued: Option<String>,
    /// In `pdq.finished_jobs`: the keys pdq says it left out as superseded.
    pub archived: Option<Vec<String>>,
}

/// A fault as it really happened (wall-clock times, the emulator's clock).
#[derive(Debug, Clone, Copy)]
pub struct Window {
    /// What it was.
    pub kind: FaultKind,
    /// When it started.
    pub start: DateTime<Utc>,
    /// When it ended.
    pub end: DateTime<Utc>,
}

/// What a run leaves for the checker.
#[derive(Debug, Clone, Default)]
pub struct Evidence {
    /// The accepted jobs.
    pub updates: Vec<Update>,
    /// The inserts that made no job.
    pub refused: Vec<Refused>,
    /// Each job's final state, by marker number.
    pub finals: HashMap<u64, FinalState>,
    /// The emulator's applied PATCHes, in the order applied.
    pub history: Vec<AppliedPatch>,
    /// The faults as they happened.
    pub windows: Vec<Window>,
    /// Per idempotency key the run used: how many jobs pdq holds with it (`pdq.job_records`).
    pub jobs_per_key: BTreeMap<String, i64>,
}

/// One broken promise.
#[derive(Debug, Clone, PartialEq)]
pub struct Violation {
    /// What went wrong, in a sentence.
    pub what: String,
    /// The marker numbers of the jobs involved.
    pub jobs: Vec<u64>,
    /// The participant whose history shows it.
    pub participant: Option<(Uuid, Uuid)>,
}

/// The checker's verdict on one run.
#[derive(Debug, Clone, Default)]
pub struct Verdict {
    /// Broken promises (empty: the run kept the guarantee).
    pub violations: Vec<Violation>,
    /// Jobs judged.
    pub jobs: usize,
    /// Jobs applied (their values or newer ones reached the API).
    pub applied: usize,
    /// Dead letters by reason.
    pub dead: BTreeMap<String, usize>,
    /// Jobs cancelled by the schedule.
    pub cancelled: usize,
    /// Values received more than once, by the fault kind that allowed each.
    pub duplicates: BTreeMap<&'static str, usize>,
    /// Applied PATCHes to the run's participants.
    pub patches: usize,
}

/// The marker number in a value (`u12` or `u12-…`).
pub fn marker(value: &str) -> Option<u64> {
    let digits = value.strip_prefix('u')?;
    let end = digits.find('-').unwrap_or(digits.len());
    digits[..end].parse().ok()
}

/// The marker number of a job's attributes (every value carries the same one).
pub fn marker_of(attributes: &serde_json::Value) -> Option<u64> {
    attributes
        .as_object()?
        .values()
        .find_map(|v| v.as_str().and_then(marker))
}

/// How long before a fault a PATCH may have been in flight when it hit.
fn in_flight() -> Duration {
    Duration::milliseconds(crate::procs::REQUEST_TIMEOUT_MS as i64 + 300)
}

/// Judges a run.
pub fn judge(evidence: &Evidence) -> Verdict {
    let mut verdict = Verdict {
        jobs: evidence.updates.len(),
        ..Verdict::default()
    };
    let by_n: HashMap<u64, &Update> = evidence.updates.iter().map(|u| (u.n, u)).collect();
    // One emulator per run: every PATCH it applied belongs to the run.
    let history: Vec<&AppliedPatch> = evidence.history.iter().collect();
    verdict.patches = history.len();
    // (marker, key) → the PATCHes that carried that value, in order.
    let mut carried: HashMap<u64, Vec<&AppliedPatch>> = HashMap::new();
    let mut landed: BTreeSet<(u64, String)> = BTreeSet::new();
    for patch in &history {
        let mut markers = BTreeSet::new();
        for (key, value) in &patch.attributes {
            let Some(n) = marker(value) else { continue };
            match by_n.get(&n) {
                Some(update)
                    if update.participant == (patch.conversation_id, patch.participant_id) =>
                {
                    landed.insert((n, key.clone()));
                    markers.insert(n);
                }
                Some(update) => verdict.violations.push(Violation {
                    what: format!(
                        "PATCH #{} wrote {key}={} to participant {}, but that job targets {}",
                        patch.seq,
                        short(value),
                        patch.participant_id,
                        update.participant.1
                    ),
                    jobs: vec![n],
                    participant: Some((patch.conversation_id, patch.participant_id)),
                }),
                None => verdict.violations.push(Violation {
                    what: format!(
                        "PATCH #{} wrote {key}={}, a value of no accepted job (a repeated \
                         idempotency key's or a refused insert's)",
                        patch.seq,
                        short(value)
                    ),
                    jobs: vec![n],
                    participant: Some((patch.conversation_id, patch.participant_id)),
                }),
            }
        }
        for n in markers {
            carried.entry(n).or_default().push(patch);
        }
    }
    check_outcomes(evidence, &history, &by_n, &mut verdict);
    check_order(evidence, &history, &by_n, &landed, &mut verdict);
    check_duplicates(evidence, &carried, &mut verdict);
    check_idempotency(evidence, &mut verdict);
    verdict
}

/// Applied, dead-lettered with an explained reason, or cancelled by the schedule.
fn check_outcomes(
    evidence: &Evidence,
    history: &[&AppliedPatch],
    by_n: &HashMap<u64, &Update>,
    verdict: &mut Verdict,
) {
    for update in &evidence.updates {
        let state = evidence.finals.get(&update.n).cloned().unwrap_or_default();
        let applied = update.attributes.keys().all(|key| {
            history.iter().any(|p| {
                (p.conversation_id, p.participant_id) == update.participant
                    && p.attributes
                        .get(key)
                        .and_then(|v| marker(v))
                        .and_then(|m| by_n.get(&m))
                        .is_some_and(|other| {
                            other.participant == update.participant
                                && other.place_at(p.at) >= update.place_at(p.at)
                        })
            })
        });
        if applied {
            verdict.applied += 1;
        }
        if let Some(reason) = &state.dead {
            *verdict.dead.entry(reason.clone()).or_default() += 1;
            if !update.allowed.contains(reason.as_str()) {
                verdict.violations.push(Violation {
                    what: format!(
                        "job {} (u{}) dead-lettered as {reason}, which the schedule does not \
                         explain (explained: {:?})",
                        update.id, update.n, update.allowed
                    ),
                    jobs: vec![update.n],
                    participant: Some(update.participant),
                });
            }
        }
        if state.cancelled {
            verdict.cancelled += 1;
            if !update.cancelled {
                verdict.violations.push(Violation {
                    what: format!(
                        "job {} (u{}) cancelled, but not by the schedule",
                        update.id, update.n
                    ),
                    jobs: vec![update.n],
                    participant: Some(update.participant),
                });
            }
        }
        if let Some(queued) = &state.queued {
            verdict.violations.push(Violation {
                what: format!(
                    "job {} (u{}) still {queued} after the quiet period",
                    update.id, update.n
                ),
                jobs: vec![update.n],
                participant: Some(update.participant),
            });
        } else if !applied && state.dead.is_none() && !state.cancelled {
            let pdq_says = match &state.archived {
                Some(keys) if !keys.is_empty() => {
                    format!("pdq archived it as applied with superseded keys {keys:?}")
                }
                Some(_) => "pdq archived it as applied".to_owned(),
                None => "pdq holds no record of it".to_owned(),
            };
            verdict.violations.push(Violation {
                what: format!(
                    "lost: job {} (u{}) writing {:?} never reached the API, nor did a newer \
                     job's value for each of its keys; {pdq_says}",
                    update.id,
                    update.n,
                    update.attributes.keys().collect::<Vec<_>>()
                ),
                jobs: vec![update.n],
                participant: Some(update.participant),
            });
        }
    }
}

/// No stale write per participant and key; the final value is the newest live job's.
fn check_order(
    evidence: &Evidence,
    history: &[&AppliedPatch],
    by_n: &HashMap<u64, &Update>,
    landed: &BTreeSet<(u64, String)>,
    verdict: &mut Verdict,
) {
    let mut writers: BTreeMap<((Uuid, Uuid), &str), Vec<&Update>> = BTreeMap::new();
    for update in &evidence.updates {
        for key in update.attributes.keys() {
            writers
                .entry((update.participant, key.as_str()))
                .or_default()
                .push(update);
        }
    }
    for ((participant, key), updates) in writers {
        let mut newest: Option<(Place, u64)> = None;
        let mut last: Option<u64> = None;
        // Per job, the place its value of `key` had when it last landed: a job dead-lettered or
        // cancelled after its value landed counts with that place, not with one a later forced
        // requeue gave it (the requeued job never sent it again).
        let mut landed_at: HashMap<u64, Place> = HashMap::new();
        for patch in history
            .iter()
            .filter(|p| (p.conversation_id, p.participant_id) == participant)
        {
            let Some(n) = patch.attributes.get(key).and_then(|v| marker(v)) else {
                continue;
            };
            let Some(update) = by_n.get(&n).filter(|u| u.participant == participant) else {
                continue;
            };
            last = Some(n);
            let place = update.place_at(patch.at);
            landed_at.insert(n, place);
            match newest {
                Some((seen, shown)) if place < seen => verdict.violations.push(Violation {
                    what: format!(
                        "stale: PATCH #{} wrote {key}=u{n} (job {}) after u{shown}, a newer \
                         job's value, was applied",
                        patch.seq, update.id
                    ),
                    jobs: vec![n, shown],
                    participant: Some(participant),
                }),
                _ => newest = Some((place, n)),
            }
        }
        let expected = updates
            .iter()
            .filter_map(|u| {
                let state = evidence.finals.get(&u.n).cloned().unwrap_or_default();
                if state.dead.is_none() && !state.cancelled {
                    Some((u.final_place(), u))
                } else if landed.contains(&(u.n, key.to_owned())) {
                    Some((landed_at.get(&u.n).copied().unwrap_or(u.place), u))
                } else {
                    None
                }
            })
            .max_by_key(|(place, _)| *place)
            .map(|(_, u)| u);
        if let Some(expected) = expected {
            if last != Some(expected.n) {
                verdict.violations.push(Violation {
                    what: format!(
                        "final value: participant {} ends with {key}={}, the newest job not \
                         dead-lettered or cancelled (job {}) wrote u{}",
                        participant.1,
                        last.map_or("nothing".to_owned(), |n| format!("u{n}")),
                        expected.id,
                        expected.n
                    ),
                    jobs: last.into_iter().chain([expected.n]).collect(),
                    participant: Some(participant),
                });
            }
        }
    }
}

/// How long after a PATCH was applied its sender may still not have recorded it when nothing
/// holds the database up: the completer's batching and a busy debug build on two cores.
fn recording_margin() -> Duration {
    Duration::milliseconds(2_500)
}

/// The latest a PATCH applied at `at` may stay unrecorded by its sender: the margin, extended
/// by every database fault that begins before it (the sender holds the unit and records it once
/// the fault ends).
fn recording_deadline(windows: &[Window], at: DateTime<Utc>) -> DateTime<Utc> {
    let mut deadline = at + recording_margin();
    loop {
        let later = windows
            .iter()
            .filter(|w| w.kind.delays_recording() && w.start <= deadline)
            .map(|w| w.end + recording_margin())
            .filter(|end| *end > deadline)
            .max();
        match later {
            Some(end) => deadline = end,
            None => return deadline,
        }
    }
}

/// The fault that explains `again` carrying a value `before` already applied, if any: the
/// answer to `before` was lost (an error or no answer after it was applied, recorded in its
/// status), the API was out or slow around `before`, or the process that sent `before` was
/// killed, frozen or lost its database before it could record it. A frozen worker may also be
/// the one sending `again`, when the freeze spans `before` and it sent as it woke.
fn duplicate_cause(
    windows: &[Window],
    before: &AppliedPatch,
    again: &AppliedPatch,
) -> Option<&'static str> {
    if before.status == 0 || again.status == 0 {
        let late = windows.iter().any(|w| {
            w.kind == FaultKind::Hangs
                && w.start - in_flight() <= before.at
                && before.at <= w.end + in_flight() * 3
        });
        return Some(if late {
            FaultKind::Hangs.name()
        } else {
            FaultKind::AppliedThenDropped.name()
        });
    }
    if before.status != 202 {
        return Some(FaultKind::AppliedThenError.name());
    }
    let deadline = recording_deadline(windows, before.at);
    windows
        .iter()
        .filter(|w| w.kind.allows_duplicates() && w.start <= again.at)
        .find(|w| match w.kind {
            FaultKind::ApiOutage | FaultKind::LatencySpike => {
                w.start - in_flight() <= before.at && before.at <= w.end + in_flight() * 2
            }
            FaultKind::Stop => {
                (w.start <= deadline && w.end >= before.at - in_flight())
                    || (w.start <= before.at && again.at <= w.end + in_flight())
            }
            _ => w.start <= deadline && w.end >= before.at - in_flight(),
        })
        .map(|w| w.kind.name())
}

/// Each value received again needs a fault around the first send that allows it.
fn check_duplicates(
    evidence: &Evidence,
    carried: &HashMap<u64, Vec<&AppliedPatch>>,
    verdict: &mut Verdict,
) {
    let mut markers: Vec<&u64> = carried.keys().collect();
    markers.sort();
    for n in markers {
        let patches = &carried[n];
        for pair in patches.windows(2) {
            let (before, again) = (pair[0], pair[1]);
            match duplicate_cause(&evidence.windows, before, again) {
                Some(kind) => *verdict.duplicates.entry(kind).or_default() += 1,
                None => verdict.violations.push(Violation {
                    what: format!(
                        "duplicate: u{n} applied by PATCH #{} and again by #{} ({} ms later) \
                         with no crash, kill, freeze or lost answer around the first",
                        before.seq,
                        again.seq,
                        (again.at - before.at).num_milliseconds()
                    ),
                    jobs: vec![*n],
                    participant: Some((again.conversation_id, again.participant_id)),
                }),
            }
        }
    }
}

/// A repeated key made exactly one job.
fn check_idempotency(evidence: &Evidence, verdict: &mut Verdict) {
    let mut accepted: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for update in &evidence.updates {
        if let Some(key) = &update.key {
            accepted.entry(key).or_default().push(update.n);
        }
    }
    for (key, ns) in &accepted {
        if ns.len() > 1 {
            verdict.violations.push(Violation {
                what: format!("idempotency key {key} made {} jobs", ns.len()),
                jobs: ns.clone(),
                participant: None,
            });
        }
    }
    for refused in &evidence.refused {
        let Some(key) = &refused.key else { continue };
        if refused.error.is_none() && !accepted.contains_key(key.as_str()) {
            verdict.violations.push(Violation {
                what: format!(
                    "the insert of u{} with key {key} was skipped, but no job holds that key",
                    refused.n
                ),
                jobs: vec![refused.n],
                participant: None,
            });
        }
    }
    for (key, count) in &evidence.jobs_per_key {
        if *count != 1 {
            verdict.violations.push(Violation {
                what: format!("pdq holds {count} jobs with idempotency key {key}"),
                jobs: accepted.get(key.as_str()).cloned().unwrap_or_default(),
                participant: None,
            });
        }
    }
}

fn short(value: &str) -> String {
    match value.char_indices().nth(24) {
        Some((end, _)) => format!("{}…", &value[..end]),
        None => value.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const C: Uuid = Uuid::from_u128(1);
    const P: Uuid = Uuid::from_u128(2);
    const Q: Uuid = Uuid::from_u128(3);

    fn update(n: u64, p: Uuid, keys: &[&str]) -> Update {
        Update {
            n,
            id: n as i64,
            place: (0, n as i64),
            forced: None,
            participant: (C, p),
            attributes: keys
                .iter()
                .map(|k| ((*k).to_owned(), format!("u{n}")))
                .collect(),
            allowed: BTreeSet::new(),
            cancelled: false,
            key: None,
        }
    }

    fn at(ms: i64) -> DateTime<Utc> {
        DateTime::<Utc>::from_timestamp_millis(1_800_000_000_000 + ms).unwrap()
    }

    fn patch(seq: u64, ms: i64, p: Uuid, values: &[(&str, u64)]) -> AppliedPatch {
        AppliedPatch {
            seq,
            at: at(ms),
            conversation_id: C,
            participant_id: p,
            attributes: values
                .iter()
                .map(|(k, n)| ((*k).to_owned(), format!("u{n}")))
                .collect(),
            status: 202,
        }
    }

    fn evidence(updates: Vec<Update>, history: Vec<AppliedPatch>) -> Evidence {
        Evidence {
            updates,
            history,
            ..Evidence::default()
        }
    }

    fn whats(verdict: &Verdict) -> Vec<String> {
        verdict.violations.iter().map(|v| v.what.clone()).collect()
    }

    #[test]
    fn markers_name_their_job() {
        assert_eq!(marker("u12"), Some(12));
        assert_eq!(marker("u7-xxxx"), Some(7));
        assert_eq!(marker("x7"), None);
        assert_eq!(marker_of(&serde_json::json!({"a": "u3"})), Some(3));
    }

    #[test]
    fn a_clean_run_with_coalescing_and_superseding_passes() {
        let e = evidence(
            vec![
                update(1, P, &["a"]),
                update(2, P, &["a", "b"]),
                update(3, P, &["b"]),
                update(4, Q, &["a"]),
            ],
            vec![
                patch(1, 0, P, &[("a", 2), ("b", 3)]),
                patch(2, 10, Q, &[("a", 4)]),
            ],
        );
        let verdict = judge(&e);
        assert!(verdict.violations.is_empty(), "{:?}", whats(&verdict));
        assert_eq!((verdict.applied, verdict.patches), (4, 2));
    }

    #[test]
    fn a_job_neither_applied_nor_dead_is_lost() {
        let e = evidence(
            vec![update(1, P, &["a", "b"]), update(2, P, &["a"])],
            vec![patch(1, 0, P, &[("a", 2)])],
        );
        let verdict = judge(&e);
        assert!(
            whats(&verdict).iter().any(|w| w.starts_with("lost: job 1")),
            "{:?}",
            whats(&verdict)
        );
    }

    #[test]
    fn a_superseding_job_that_died_leaves_the_older_value_lost() {
        // Issue 19 item 1: the older job was left out for a newer one that never landed.
        let mut e = evidence(vec![update(1, P, &["k"]), update(2, P, &["k"])], vec![]);
        let mut allowed = BTreeSet::new();
        allowed.insert("expired");
        e.updates[1].allowed = allowed;
        e.finals.insert(
            2,
            FinalState {
                dead: Some("expired".into()),
                ..FinalState::default()
            },
        );
        e.finals.insert(
            1,
            FinalState {
                archived: Some(vec!["k".into()]),
                ..FinalState::default()
            },
        );
        let verdict = judge(&e);
        let w = whats(&verdict);
        assert!(
            w.iter()
                .any(|w| w.starts_with("lost: job 1") && w.contains("superseded")),
            "{w:?}"
        );
        assert!(w.iter().any(|w| w.starts_with("final value")), "{w:?}");
    }

    #[test]
    fn an_unexplained_dead_letter_and_a_foreign_cancel_are_violations() {
        let mut e = evidence(vec![update(1, P, &["k"]), update(2, Q, &["k"])], vec![]);
        e.finals.insert(
            1,
            FinalState {
                dead: Some("retries_exhausted".into()),
                ..FinalState::default()
            },
        );
        e.finals.insert(
            2,
            FinalState {
                cancelled: true,
                ..FinalState::default()
            },
        );
        let w = whats(&judge(&e));
        assert!(
            w.iter()
                .any(|w| w.contains("dead-lettered as retries_exhausted")),
            "{w:?}"
        );
        assert!(
            w.iter()
                .any(|w| w.contains("cancelled, but not by the schedule")),
            "{w:?}"
        );
        e.updates[0].allowed.insert("retries_exhausted");
        e.updates[1].cancelled = true;
        assert!(judge(&e).violations.is_empty());
    }

    #[test]
    fn an_older_value_after_a_newer_one_is_stale() {
        let e = evidence(
            vec![update(1, P, &["k"]), update(2, P, &["k"])],
            vec![patch(1, 0, P, &[("k", 2)]), patch(2, 10, P, &[("k", 1)])],
        );
        let w = whats(&judge(&e));
        assert!(w.iter().any(|w| w.starts_with("stale: PATCH #2")), "{w:?}");
        assert!(w.iter().any(|w| w.starts_with("final value")), "{w:?}");
    }

    #[test]
    fn a_value_that_landed_before_its_job_was_requeued_and_died_keeps_its_old_place() {
        // Job 1 landed, then job 2 (newer); then job 1 was requeued with --force (place 9) and
        // dead-lettered before it sent again: job 2's value is the newest that landed.
        let mut e = evidence(
            vec![update(1, P, &["k"]), update(2, P, &["k"])],
            vec![patch(1, 0, P, &[("k", 1)]), patch(2, 100, P, &[("k", 2)])],
        );
        e.updates[0].forced = Some((at(150), (0, 9)));
        e.updates[0].allowed.insert("conversation_ended");
        e.finals.insert(
            1,
            FinalState {
                dead: Some("conversation_ended".into()),
                ..FinalState::default()
            },
        );
        e.finals.insert(
            2,
            FinalState {
                archived: Some(vec![]),
                ..FinalState::default()
            },
        );
        let verdict = judge(&e);
        assert!(verdict.violations.is_empty(), "{:?}", whats(&verdict));
    }

    #[test]
    fn a_forced_requeue_makes_the_value_newest_from_then_on() {
        let mut e = evidence(
            vec![update(1, P, &["k"]), update(2, P, &["k"])],
            vec![patch(1, 0, P, &[("k", 2)]), patch(2, 100, P, &[("k", 1)])],
        );
        e.updates[0].forced = Some((at(50), (0, 9)));
        let verdict = judge(&e);
        assert!(verdict.violations.is_empty(), "{:?}", whats(&verdict));
        e.updates[0].forced = Some((at(150), (0, 9)));
        assert!(whats(&judge(&e)).iter().any(|w| w.starts_with("stale")));
    }

    #[test]
    fn a_sequence_reset_keeps_later_jobs_newer() {
        let mut e = evidence(
            vec![update(1, P, &["k"]), update(2, P, &["k"])],
            vec![patch(1, 0, P, &[("k", 1)]), patch(2, 10, P, &[("k", 2)])],
        );
        e.updates[0].place = (0, 50);
        e.updates[1].place = (1, 3);
        assert!(judge(&e).violations.is_empty());
    }

    #[test]
    fn duplicates_need_a_fault_between_the_sends() {
        let mut e = evidence(
            vec![update(1, P, &["k"])],
            vec![patch(1, 0, P, &[("k", 1)]), patch(2, 3_000, P, &[("k", 1)])],
        );
        let w = whats(&judge(&e));
        assert!(w.iter().any(|w| w.starts_with("duplicate: u1")), "{w:?}");
        e.windows.push(Window {
            kind: FaultKind::RecordingFails,
            start: at(100),
            end: at(900),
        });
        assert_eq!(
            judge(&e).violations.len(),
            1,
            "a recording failure allows none"
        );
        e.windows.push(Window {
            kind: FaultKind::Kill,
            start: at(200),
            end: at(200),
        });
        let verdict = judge(&e);
        assert!(verdict.violations.is_empty());
        assert_eq!(verdict.duplicates.get("kill_9"), Some(&1));
        e.windows.clear();
        e.windows.push(Window {
            kind: FaultKind::Kill,
            start: at(2_800),
            end: at(2_800),
        });
        assert_eq!(
            judge(&e).violations.len(),
            1,
            "a kill after the first send was recorded explains nothing"
        );
        e.windows.push(Window {
            kind: FaultKind::RecordingFails,
            start: at(1_000),
            end: at(2_000),
        });
        assert!(
            judge(&e).violations.is_empty(),
            "a recording failure held the record up until the kill"
        );
        e.windows.clear();
        e.windows.push(Window {
            kind: FaultKind::LatencySpike,
            start: at(1_500),
            end: at(2_500),
        });
        assert_eq!(
            judge(&e).violations.len(),
            1,
            "a latency spike after the first send explains nothing"
        );
        e.windows.clear();
        e.history[0].status = 0;
        assert_eq!(judge(&e).duplicates.get("applied_then_dropped"), Some(&1));
        e.history[0].status = 202;
        e.windows.push(Window {
            kind: FaultKind::Kill,
            start: at(3_500),
            end: at(3_500),
        });
        assert_eq!(
            judge(&e).violations.len(),
            1,
            "a kill after the resend explains nothing"
        );
    }

    #[test]
    fn a_repeated_key_makes_one_job_and_its_repeat_is_never_sent() {
        let mut e = evidence(
            vec![update(1, P, &["k"])],
            vec![patch(1, 0, P, &[("k", 1)])],
        );
        e.updates[0].key = Some("key-1".into());
        e.refused.push(Refused {
            n: 2,
            key: Some("key-1".into()),
            error: None,
        });
        e.jobs_per_key.insert("key-1".into(), 1);
        assert!(judge(&e).violations.is_empty());
        e.history.push(patch(2, 10, P, &[("k", 2)]));
        e.jobs_per_key.insert("key-1".into(), 2);
        let w = whats(&judge(&e));
        assert!(
            w.iter().any(|w| w.contains("a value of no accepted job")),
            "{w:?}"
        );
        assert!(w.iter().any(|w| w.contains("pdq holds 2 jobs")), "{w:?}");
    }

    #[test]
    fn a_value_landing_on_another_participant_is_a_violation() {
        let e = evidence(
            vec![update(1, P, &["k"])],
            vec![patch(1, 0, Q, &[("k", 1)])],
        );
        let w = whats(&judge(&e));
        assert!(
            w.iter().any(|w| w.contains("but that job targets")),
            "{w:?}"
        );
    }
}
