//! How a job names its conversation and participant: the locator columns of `pdq.jobs`.

use serde::{Deserialize, Serialize};
use sqlx::FromRow;
use uuid::Uuid;

/// The conversation locator (an id or an external tag) and at most one participant locator,
/// as the producer inserted them. No participant locator means the `customer` participant.
#[derive(Debug, Clone, Default, PartialEq, Eq, FromRow, Serialize, Deserialize)]
pub struct Locators {
    /// The conversation, when the producer knew it.
    pub conversation_id: Option<Uuid>,
    /// Otherwise the conversation's external tag.
    pub external_tag: Option<String>,
    /// The participant, when the producer knew it.
    pub participant_id: Option<Uuid>,
    /// Or the participant's purpose (`customer` when no locator is given).
    pub participant_purpose: Option<String>,
    /// Or the participant's external contact id.
    pub participant_external_contact_id: Option<String>,
    /// Or the participant's name.
    pub participant_name: Option<String>,
}

impl Locators {
    /// Both ids known: the update needs no lookup.
    pub fn ids(conversation_id: Uuid, participant_id: Uuid) -> Locators {
        Locators {
            conversation_id: Some(conversation_id),
            participant_id: Some(participant_id),
            ..Locators::default()
        }
    }

    /// A conversation by id; the participant defaults to its customer.
    pub fn conversation(conversation_id: Uuid) -> Locators {
        Locators {
            conversation_id: Some(conversation_id),
            ..Locators::default()
        }
    }

    /// A live conversation by its external tag; the participant defaults to its customer.
    pub fn external_tag(tag: impl Into<String>) -> Locators {
        Locators {
            external_tag: Some(tag.into()),
            ..Locators::default()
        }
    }

    /// The same conversation, the participant with this purpose.
    pub fn purpose(self, purpose: impl Into<String>) -> Locators {
        Locators {
            participant_purpose: Some(purpose.into()),
            ..self
        }
    }

    /// The same conversation, the participant with this external contact id.
    pub fn external_contact_id(self, id: impl Into<String>) -> Locators {
        Locators {
            participant_external_contact_id: Some(id.into()),
            ..self
        }
    }

    /// The same conversation, the participant with this name.
    pub fn name(self, name: impl Into<String>) -> Locators {
        Locators {
            participant_name: Some(name.into()),
            ..self
        }
    }
}
