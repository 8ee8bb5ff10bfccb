//! The ledger: judges a scenario from the API side. It reads the emulator's history of applied
//! PATCHes and `pdq.dead_letters` (the only table of the worker's it consults), never the
//! worker's own bookkeeping of what it applied.
//!
//! Each job carries a marker, an attribute only it carries among its participant's jobs
//! (`roundN` = `x`), and a value under [`VALUE_KEY`] that grows with its insertion order. A job
//! is applied when a PATCH to its participant carried its marker; the number of PATCHes that
//! carried a marker beyond the first is the duplicate count; a PATCH whose value is older than
//! one applied to the participant before it is stale.

use std::collections::{BTreeMap, BTreeSet};

use pdq::emulator::AppliedPatch;
use uuid::Uuid;

use crate::helpers::TestDb;

/// The attribute whose value grows with each job of a participant (`0001`, `0002`, …).
pub const VALUE_KEY: &str = "seq";

/// One job a scenario inserted.
#[derive(Debug, Clone)]
pub struct Job {
    /// `pdq.jobs.id`; a larger id is a newer job.
    pub id: i64,
    /// The conversation the PATCH must reach.
    pub conversation_id: Uuid,
    /// The participant the PATCH must reach.
    pub participant_id: Uuid,
    /// The attributes the job writes.
    pub attributes: BTreeMap<String, String>,
    /// The (key, value) only this job of its participant carries.
    pub marker: (String, String),
    /// In `pdq.dead_letters`.
    pub dead: bool,
    /// The dead letter's reason, when it is one.
    pub reason: Option<String>,
    /// The reasons the scenario expects this job may be dead-lettered with (none: it must be
    /// applied).
    pub may_die: &'static [&'static str],
}

impl Job {
    fn participant(&self) -> (Uuid, Uuid) {
        (self.conversation_id, self.participant_id)
    }

    fn carried_by(&self, patch: &AppliedPatch) -> bool {
        patch.attributes.get(&self.marker.0) == Some(&self.marker.1)
    }
}

/// What the history says about a scenario's jobs.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Ledger {
    /// Jobs the scenario inserted.
    pub jobs: usize,
    /// Jobs whose marker reached the API in at least one applied PATCH.
    pub applied: usize,
    /// Jobs never sent because a newer job of the participant wrote all their keys.
    pub superseded: usize,
    /// Jobs in `pdq.dead_letters` (and never applied).
    pub dead: usize,
    /// Jobs neither applied, superseded nor dead-lettered.
    pub lost: usize,
    /// Jobs dead-lettered with a reason the scenario does not expect for them.
    pub unexpected_dead: usize,
    /// Applied PATCHes that carried a marker already applied before.
    pub duplicates: usize,
    /// Applied PATCHes whose value is older than a value already applied to the participant.
    pub stale: usize,
    /// Participants whose final value is not that of their newest job not dead-lettered.
    pub wrong_final: usize,
    /// Applied PATCHes to the scenario's participants.
    pub patches: usize,
    /// The first few problems, for the failure message.
    pub problems: Vec<String>,
}

const PROBLEMS_SHOWN: usize = 8;

impl Ledger {
    fn problem(&mut self, text: String) {
        if self.problems.len() < PROBLEMS_SHOWN {
            self.problems.push(text);
        }
    }
}

/// Judges `jobs` against the emulator's applied `patches` (in the order applied).
pub fn judge(jobs: &[Job], patches: &[AppliedPatch]) -> Ledger {
    let mut ledger = Ledger {
        jobs: jobs.len(),
        ..Ledger::default()
    };
    let mut by_participant: BTreeMap<(Uuid, Uuid), Vec<&Job>> = BTreeMap::new();
    for job in jobs {
        by_participant
            .entry(job.participant())
            .or_default()
            .push(job);
    }
    for (participant, mut own) in by_participant {
        own.sort_by_key(|job| job.id);
        let history: Vec<&AppliedPatch> = patches
            .iter()
            .filter(|p| (p.conversation_id, p.participant_id) == participant)
            .collect();
        ledger.patches += history.len();
        count_jobs(&mut ledger, &own, &history);
        check_order(&mut ledger, participant, &own, &history);
    }
    ledger
}

/// Applied, superseded, dead, lost and duplicates for one participant's jobs.
fn count_jobs(ledger: &mut Ledger, own: &[&Job], history: &[&AppliedPatch]) {
    let applied_ids: BTreeSet<i64> = own
        .iter()
        .filter(|job| history.iter().any(|p| job.carried_by(p)))
        .map(|job| job.id)
        .collect();
    for job in own {
        if job.dead {
            let reason = job.reason.as_deref().unwrap_or("?");
            if !job.may_die.contains(&reason) {
                ledger.unexpected_dead += 1;
                ledger.problem(format!(
                    "dead-lettered as {reason}: job {} ({}={}), expected {}",
                    job.id,
                    job.marker.0,
                    job.marker.1,
                    if job.may_die.is_empty() {
                        "applied".to_owned()
                    } else {
                        format!("applied or dead-lettered as {:?}", job.may_die)
                    }
                ));
            }
        }
        let carried = history.iter().filter(|p| job.carried_by(p)).count();
        ledger.duplicates += carried.saturating_sub(1);
        if carried > 0 {
            ledger.applied += 1;
        } else if job.dead {
            ledger.dead += 1;
        } else if superseded(job, own, &applied_ids) {
            ledger.superseded += 1;
        } else {
            ledger.lost += 1;
            ledger.problem(format!(
                "lost: job {} ({}={}) for participant {}",
                job.id, job.marker.0, job.marker.1, job.participant_id
            ));
        }
    }
}

/// Every key of `job` is written by a newer applied job of the same participant.
fn superseded(job: &Job, own: &[&Job], applied_ids: &BTreeSet<i64>) -> bool {
    job.attributes.keys().all(|key| {
        own.iter().any(|newer| {
            newer.id > job.id
                && applied_ids.contains(&newer.id)
                && newer.attributes.contains_key(key)
        })
    })
}

/// Stale PATCHes and the final value for one participant.
fn check_order(
    ledger: &mut Ledger,
    participant: (Uuid, Uuid),
    own: &[&Job],
    history: &[&AppliedPatch],
) {
    let age: BTreeMap<&str, i64> = own
        .iter()
        .filter_map(|job| Some((job.attributes.get(VALUE_KEY)?.as_str(), job.id)))
        .collect();
    let mut newest_applied: Option<(i64, &str)> = None;
    let mut last_value: Option<&str> = None;
    for patch in history {
        let Some(value) = patch.attributes.get(VALUE_KEY).map(String::as_str) else {
            continue;
        };
        last_value = Some(value);
        let Some(&id) = age.get(value) else {
            continue;
        };
        match newest_applied {
            Some((newest, shown)) if id < newest => {
                ledger.stale += 1;
                ledger.problem(format!(
                    "stale: PATCH #{} wrote {VALUE_KEY}={value} to participant {} after {shown} was applied",
                    patch.seq, participant.1
                ));
            }
            _ => newest_applied = Some((id, value)),
        }
    }
    let expected = own
        .iter()
        .rev()
        .find(|job| !job.dead)
        .and_then(|job| job.attributes.get(VALUE_KEY));
    if let Some(expected) = expected {
        if last_value != Some(expected.as_str()) {
            ledger.wrong_final += 1;
            ledger.problem(format!(
                "final value: participant {} shows {VALUE_KEY}={last_value:?}, its newest job wrote {expected}",
                participant.1
            ));
        }
    }
}

/// Marks the jobs found in `pdq.dead_letters`; returns the dead letters among them by reason.
pub async fn mark_dead(db: &TestDb, jobs: &mut [Job]) -> BTreeMap<String, i64> {
    let ids: Vec<i64> = jobs.iter().map(|job| job.id).collect();
    let rows: Vec<(i64, String)> =
        sqlx::query_as("select id, reason from pdq.dead_letters where id = any($1)")
            .bind(&ids)
            .fetch_all(&db.pool)
            .await
            .unwrap();
    let dead: BTreeMap<i64, String> = rows.into_iter().collect();
    let mut by_reason = BTreeMap::new();
    for job in jobs.iter_mut() {
        if let Some(reason) = dead.get(&job.id) {
            job.dead = true;
            job.reason = Some(reason.clone());
            *by_reason.entry(reason.clone()).or_insert(0) += 1;
        }
    }
    by_reason
}

#[cfg(test)]
mod tests {
    use super::*;

    const C: Uuid = Uuid::from_u128(1);
    const P: Uuid = Uuid::from_u128(2);
    const Q: Uuid = Uuid::from_u128(3);

    /// Job `n` of participant `p`: `seq` = n, marker `round{n}` = x.
    fn job(id: i64, p: Uuid, n: u32) -> Job {
        let marker = (format!("round{n}"), "x".to_owned());
        Job {
            id,
            conversation_id: C,
            participant_id: p,
            attributes: BTreeMap::from([(VALUE_KEY.to_owned(), format!("{n:04}")), marker.clone()]),
            marker,
            dead: false,
            reason: None,
            may_die: &[],
        }
    }

    /// A job that writes only the value, marked by it.
    fn value_only(id: i64, p: Uuid, n: u32) -> Job {
        let value = format!("{n:04}");
        Job {
            id,
            conversation_id: C,
            participant_id: p,
            attributes: BTreeMap::from([(VALUE_KEY.to_owned(), value.clone())]),
            marker: (VALUE_KEY.to_owned(), value),
            dead: false,
            reason: None,
            may_die: &[],
        }
    }

    fn patch(seq: u64, p: Uuid, newest: u32, rounds: &[u32]) -> AppliedPatch {
        let mut attributes = BTreeMap::from([(VALUE_KEY.to_owned(), format!("{newest:04}"))]);
        for n in rounds {
            attributes.insert(format!("round{n}"), "x".to_owned());
        }
        AppliedPatch {
            seq,
            at: chrono::Utc::now(),
            conversation_id: C,
            participant_id: p,
            attributes,
            status: 202,
        }
    }

    #[test]
    fn a_clean_history_balances() {
        let jobs = [job(1, P, 1), job(2, P, 2), job(3, Q, 1)];
        let history = [
            patch(1, P, 1, &[1]),
            patch(2, Q, 1, &[1]),
            patch(3, P, 2, &[2]),
        ];
        let ledger = judge(&jobs, &history);
        assert_eq!(
            (ledger.applied, ledger.lost, ledger.duplicates, ledger.stale),
            (3, 0, 0, 0)
        );
        assert_eq!((ledger.wrong_final, ledger.patches), (0, 3));
        assert!(ledger.problems.is_empty());
    }

    #[test]
    fn a_coalesced_patch_applies_every_marker_it_carries() {
        let jobs = [job(1, P, 1), job(2, P, 2), job(3, P, 3)];
        let ledger = judge(&jobs, &[patch(1, P, 3, &[1, 2, 3])]);
        assert_eq!((ledger.applied, ledger.lost, ledger.duplicates), (3, 0, 0));
    }

    #[test]
    fn a_job_missing_from_the_history_is_lost_unless_dead_lettered() {
        let mut jobs = vec![job(1, P, 1), job(2, P, 2), job(3, P, 3)];
        let history = [patch(1, P, 1, &[1]), patch(2, P, 3, &[3])];
        let ledger = judge(&jobs, &history);
        assert_eq!((ledger.applied, ledger.lost, ledger.dead), (2, 1, 0));
        assert!(
            ledger.problems[0].contains("round2"),
            "{:?}",
            ledger.problems
        );
        jobs[1].dead = true;
        jobs[1].reason = Some("not_found".to_owned());
        let ledger = judge(&jobs, &history);
        assert_eq!((ledger.applied, ledger.lost, ledger.dead), (2, 0, 1));
        assert_eq!(
            ledger.unexpected_dead, 1,
            "a job expected applied was dead-lettered"
        );
        jobs[1].may_die = &["not_found"];
        assert_eq!(judge(&jobs, &history).unexpected_dead, 0);
    }

    #[test]
    fn a_job_whose_keys_a_newer_applied_job_wrote_is_superseded_not_lost() {
        let jobs = [value_only(1, P, 1), value_only(2, P, 2)];
        let history = [patch(1, P, 2, &[])];
        let ledger = judge(&jobs, &history);
        assert_eq!((ledger.applied, ledger.superseded, ledger.lost), (1, 1, 0));
        let unique_key = [job(1, P, 1), job(2, P, 2)];
        let ledger = judge(&unique_key, &[patch(1, P, 2, &[2])]);
        assert_eq!(
            (ledger.superseded, ledger.lost),
            (0, 1),
            "a key only the missing job writes never reached the API"
        );
    }

    #[test]
    fn a_marker_sent_twice_counts_one_duplicate_and_is_not_stale_when_newest() {
        let jobs = [job(1, P, 1), job(2, P, 2)];
        let history = [
            patch(1, P, 1, &[1]),
            patch(2, P, 2, &[2]),
            patch(3, P, 2, &[2]),
        ];
        let ledger = judge(&jobs, &history);
        assert_eq!(
            (ledger.duplicates, ledger.stale, ledger.wrong_final),
            (1, 0, 0)
        );
    }

    #[test]
    fn an_older_value_after_a_newer_one_is_stale_and_leaves_the_wrong_final_value() {
        let jobs = [job(1, P, 1), job(2, P, 2)];
        let history = [patch(1, P, 2, &[1, 2]), patch(2, P, 1, &[1])];
        let ledger = judge(&jobs, &history);
        assert_eq!(
            (
                ledger.applied,
                ledger.duplicates,
                ledger.stale,
                ledger.wrong_final
            ),
            (2, 1, 1, 1)
        );
        assert!(ledger.problems.iter().any(|p| p.starts_with("stale")));
        assert!(ledger.problems.iter().any(|p| p.starts_with("final value")));
    }

    #[test]
    fn the_final_value_is_the_newest_job_not_dead_lettered() {
        let mut jobs = vec![job(1, P, 1), job(2, P, 2)];
        jobs[1].dead = true;
        jobs[1].reason = Some("expired".to_owned());
        jobs[1].may_die = &["expired"];
        let ledger = judge(&jobs, &[patch(1, P, 1, &[1])]);
        assert_eq!((ledger.wrong_final, ledger.dead, ledger.lost), (0, 1, 0));
        jobs[1].dead = false;
        let ledger = judge(&jobs, &[patch(1, P, 1, &[1])]);
        assert_eq!((ledger.wrong_final, ledger.lost), (1, 1));
    }

    #[test]
    fn other_participants_patches_do_not_count() {
        let jobs = [job(1, P, 1)];
        let ledger = judge(&jobs, &[patch(1, Q, 1, &[1])]);
        assert_eq!((ledger.applied, ledger.lost, ledger.patches), (0, 1, 0));
    }
}
