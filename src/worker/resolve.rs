//! Finding the conversation and participant a job names (by id, external tag, purpose, external
//! contact id or name), with a short cache per conversation read.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use uuid::Uuid;

use chrono::Utc;

use super::api::{CallError, ConversationView, ParticipantView};
use super::calls::Calls;
use super::outcome::FailedAttempt;
use crate::genesys::Failure;
use crate::queue::{DeadReason, Locators, Unit};

/// Where an update goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    /// The conversation the PATCH goes to.
    pub conversation_id: Uuid,
    /// The participant whose attributes it writes.
    pub participant_id: Uuid,
}

/// How a job names its participant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParticipantLocator {
    /// By id: no lookup needed.
    Id(Uuid),
    /// The live participant with this purpose.
    Purpose(String),
    /// The live participant with this external contact id.
    ExternalContactId(String),
    /// The live participant with this name.
    Name(String),
}

impl ParticipantLocator {
    /// The participant locator among a job's locators (`customer` purpose when it names none).
    pub fn of(locators: &Locators) -> ParticipantLocator {
        if let Some(id) = locators.participant_id {
            ParticipantLocator::Id(id)
        } else if let Some(id) = &locators.participant_external_contact_id {
            ParticipantLocator::ExternalContactId(id.clone())
        } else if let Some(name) = &locators.participant_name {
            ParticipantLocator::Name(name.clone())
        } else {
            let purpose = locators
                .participant_purpose
                .as_deref()
                .unwrap_or("customer");
            ParticipantLocator::Purpose(purpose.to_owned())
        }
    }

    fn matches(&self, participant: &ParticipantView) -> bool {
        let eq = |a: &Option<String>, b: &str| a.as_deref() == Some(b);
        match self {
            ParticipantLocator::Id(id) => participant.id == *id,
            ParticipantLocator::Purpose(p) => eq(&participant.purpose, p),
            ParticipantLocator::ExternalContactId(x) => eq(&participant.external_contact_id, x),
            ParticipantLocator::Name(n) => eq(&participant.name, n),
        }
    }
}

/// Picks the participant a locator names in a conversation, or says why it cannot.
pub fn pick_participant(
    conversation: &ConversationView,
    locator: &ParticipantLocator,
) -> Result<Uuid, DeadReason> {
    if conversation.ended {
        return Err(DeadReason::ConversationEnded);
    }
    let matching: Vec<&ParticipantView> = conversation
        .participants
        .iter()
        .filter(|p| locator.matches(p))
        .collect();
    let live: Vec<&&ParticipantView> = matching.iter().filter(|p| p.live).collect();
    match (live.as_slice(), matching.is_empty()) {
        ([only], _) => Ok(only.id),
        ([], true) => Err(DeadReason::ParticipantNotFound),
        ([], false) => Err(DeadReason::ParticipantDisconnected),
        _ => Err(DeadReason::ParticipantAmbiguous),
    }
}

/// Conversations read recently, shared by the jobs that hit the same conversation.
pub struct ConversationCache {
    ttl: Duration,
    entries: Mutex<HashMap<Uuid, (Instant, ConversationView)>>,
}

impl ConversationCache {
    /// A cache whose entries live for `ttl`.
    pub fn new(ttl: Duration) -> Self {
        ConversationCache {
            ttl,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// A fresh copy of the conversation, if one was read within the TTL.
    pub fn get(&self, id: Uuid) -> Option<ConversationView> {
        let entries = self.entries.lock().unwrap();
        entries
            .get(&id)
            .filter(|(at, _)| at.elapsed() < self.ttl)
            .map(|(_, view)| view.clone())
    }

    /// Remembers a conversation just read.
    pub fn put(&self, id: Uuid, view: ConversationView) {
        let mut entries = self.entries.lock().unwrap();
        if entries.len() > 10_000 {
            entries.retain(|_, (at, _)| at.elapsed() < self.ttl);
        }
        entries.insert(id, (Instant::now(), view));
    }

    /// Forgets a conversation (after a write was refused, say).
    pub fn forget(&self, id: Uuid) {
        self.entries.lock().unwrap().remove(&id);
    }
}

/// Finds where the unit's update goes: the conversation (by id, or by external tag through
/// analytics) and the participant (by id, or picked from a fresh or cached read).
pub(super) async fn resolve(calls: &mut Calls<'_>, unit: &Unit) -> Result<Target, FailedAttempt> {
    let head = unit.head();
    let conversation_id = match (head.locators.conversation_id, &head.locators.external_tag) {
        (Some(id), _) => id,
        (None, Some(tag)) => find_by_tag(calls, unit, tag).await?,
        (None, None) => {
            return Err(FailedAttempt::permanent(
                DeadReason::BadRequest,
                "job names no conversation",
            ))
        }
    };
    let locator = ParticipantLocator::of(&head.locators);
    if let ParticipantLocator::Id(participant_id) = locator {
        return Ok(Target {
            conversation_id,
            participant_id,
        });
    }
    let view = match calls.inner.cache.get(conversation_id) {
        Some(view) => view,
        None => {
            let view = calls
                .conversation(conversation_id)
                .await
                .map_err(FailedAttempt::from_call)?;
            calls.inner.cache.put(conversation_id, view.clone());
            view
        }
    };
    let participant_id = pick_participant(&view, &locator).map_err(|reason| {
        FailedAttempt::permanent(reason, unresolved(&locator, reason, conversation_id))
    })?;
    Ok(Target {
        conversation_id,
        participant_id,
    })
}

/// The one active conversation carrying `tag`; none yet retries inside the lookup window.
async fn find_by_tag(calls: &mut Calls<'_>, unit: &Unit, tag: &str) -> Result<Uuid, FailedAttempt> {
    let found = calls
        .find_by_tag(tag)
        .await
        .map_err(FailedAttempt::from_call)?;
    match found.as_slice() {
        [only] => Ok(*only),
        [] => {
            let first = unit
                .jobs
                .iter()
                .filter_map(|j| j.first_attempt_at)
                .min()
                .unwrap_or_else(Utc::now);
            let window =
                chrono::Duration::from_std(calls.inner.config.lookup_window).unwrap_or_default();
            Err(FailedAttempt {
                failure: Failure::NotYetVisible {
                    window_ends: first + window,
                    reason: DeadReason::ConversationNotFound,
                },
                detail: format!("no active conversation has external tag {tag}"),
                api: None,
                target: None,
            })
        }
        many => Err(FailedAttempt::permanent(
            DeadReason::ConversationAmbiguous,
            format!(
                "{} active conversations have external tag {tag}",
                many.len()
            ),
        )),
    }
}

/// A 400 or 409 from the PATCH usually means the conversation or participant is gone: one GET
/// tells which, so the dead letter says `conversation_ended` rather than a bare status.
pub(super) async fn explain_refusal(
    calls: &mut Calls<'_>,
    target: Target,
    error: CallError,
) -> FailedAttempt {
    let mut failed = FailedAttempt::from_call(error);
    if !matches!(failed.api.as_ref().and_then(|e| e.status), Some(400 | 409)) {
        return failed;
    }
    calls.inner.cache.forget(target.conversation_id);
    if let Ok(view) = calls.conversation(target.conversation_id).await {
        let locator = ParticipantLocator::Id(target.participant_id);
        if let Err(reason @ (DeadReason::ConversationEnded | DeadReason::ParticipantDisconnected)) =
            pick_participant(&view, &locator)
        {
            failed.failure = Failure::Permanent(reason);
        }
    }
    failed
}

/// Why a participant locator found no single live participant, in words.
fn unresolved(locator: &ParticipantLocator, reason: DeadReason, conversation_id: Uuid) -> String {
    let who = match locator {
        ParticipantLocator::Id(id) => format!("participant {id}"),
        ParticipantLocator::Purpose(purpose) => format!("the participant with purpose {purpose}"),
        ParticipantLocator::ExternalContactId(id) => {
            format!("the participant with external contact id {id}")
        }
        ParticipantLocator::Name(name) => format!("the participant named {name}"),
    };
    match reason {
        DeadReason::ConversationEnded => {
            format!("conversation {conversation_id} has ended (looking for {who})")
        }
        DeadReason::ParticipantDisconnected => {
            format!("{who} has left conversation {conversation_id}")
        }
        DeadReason::ParticipantAmbiguous => {
            format!("several live participants match {who} in conversation {conversation_id}")
        }
        _ => format!("no live participant matches {who} in conversation {conversation_id}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn participant(purpose: &str, live: bool) -> ParticipantView {
        ParticipantView {
            id: Uuid::new_v4(),
            purpose: Some(purpose.to_owned()),
            name: None,
            external_contact_id: None,
            live,
            attributes: Default::default(),
        }
    }

    fn conversation(participants: Vec<ParticipantView>) -> ConversationView {
        ConversationView {
            ended: false,
            participants,
        }
    }

    #[test]
    fn picks_the_single_live_participant_with_the_purpose() {
        let customer = participant("customer", true);
        let view = conversation(vec![participant("agent", true), customer.clone()]);
        let locator = ParticipantLocator::Purpose("customer".into());
        assert_eq!(pick_participant(&view, &locator), Ok(customer.id));
    }

    #[test]
    fn explains_why_no_participant_fits() {
        let purpose = ParticipantLocator::Purpose("customer".into());
        let none = conversation(vec![participant("agent", true)]);
        assert_eq!(
            pick_participant(&none, &purpose),
            Err(DeadReason::ParticipantNotFound)
        );
        let two = conversation(vec![
            participant("customer", true),
            participant("customer", true),
        ]);
        assert_eq!(
            pick_participant(&two, &purpose),
            Err(DeadReason::ParticipantAmbiguous)
        );
        let gone = conversation(vec![participant("customer", false)]);
        assert_eq!(
            pick_participant(&gone, &purpose),
            Err(DeadReason::ParticipantDisconnected)
        );
        let ended = ConversationView {
            ended: true,
            ..conversation(vec![participant("customer", true)])
        };
        assert_eq!(
            pick_participant(&ended, &purpose),
            Err(DeadReason::ConversationEnded)
        );
    }

    #[test]
    fn a_transferred_customer_resolves_to_the_live_leg() {
        let live = participant("customer", true);
        let view = conversation(vec![participant("customer", false), live.clone()]);
        let locator = ParticipantLocator::Purpose("customer".into());
        assert_eq!(pick_participant(&view, &locator), Ok(live.id));
    }
}
