//! Conversations as the emulator stores them ([`ConversationRec`], [`ParticipantRec`] with their
//! attributes and PATCH history), the specs that create them, and their JSON rendering.

use std::collections::{BTreeMap, VecDeque};
use std::time::Instant;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use uuid::Uuid;

/// Genesys timestamps: `2026-11-24T10:00:00.000Z`.
pub(crate) fn timestamp(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

/// A participant to create.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ParticipantSpec {
    /// Fixed id (random when absent).
    pub id: Option<Uuid>,
    /// `customer`, `agent`, `external`, `acd`, `ivr`, …
    pub purpose: String,
    /// Display name.
    pub name: Option<String>,
    /// External contact id.
    pub external_contact_id: Option<String>,
    /// ANI (`tel:+1555…`).
    pub ani: Option<String>,
    /// DNIS.
    pub dnis: Option<String>,
    /// Attributes it starts with.
    pub attributes: BTreeMap<String, String>,
}

/// A conversation to create (admin API, `--scenario` files, tests).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ConversationSpec {
    /// Fixed id (random when absent).
    pub id: Option<Uuid>,
    /// `voice` (calls), `message`, `email`, `callback`, `chat`, `cobrowse`.
    pub media: String,
    /// `inbound` or `outbound`.
    pub direction: String,
    /// The external tag.
    pub external_tag: Option<String>,
    /// Start time (default now).
    pub start_time: Option<DateTime<Utc>>,
    /// Participants (default: a customer and an agent).
    pub participants: Vec<ParticipantSpec>,
}

impl Default for ConversationSpec {
    fn default() -> Self {
        ConversationSpec {
            id: None,
            media: "voice".to_owned(),
            direction: "inbound".to_owned(),
            external_tag: None,
            start_time: None,
            participants: Vec::new(),
        }
    }
}

impl ConversationSpec {
    /// A voice conversation with no participants yet.
    pub fn voice() -> Self {
        ConversationSpec::default()
    }

    /// A conversation of another media type (`message`, `email`, …).
    pub fn media(media: &str) -> Self {
        ConversationSpec {
            media: media.to_owned(),
            ..ConversationSpec::default()
        }
    }

    /// Adds a customer participant.
    pub fn customer(self, name: &str) -> Self {
        self.participant(ParticipantSpec {
            purpose: "customer".to_owned(),
            name: Some(name.to_owned()),
            ani: Some("tel:+15551234567".to_owned()),
            dnis: Some("tel:+18005550100".to_owned()),
            ..ParticipantSpec::default()
        })
    }

    /// Adds an agent participant.
    pub fn agent(self) -> Self {
        self.participant(ParticipantSpec {
            purpose: "agent".to_owned(),
            ..ParticipantSpec::default()
        })
    }

    /// Adds any participant.
    pub fn participant(mut self, participant: ParticipantSpec) -> Self {
        self.participants.push(participant);
        self
    }

    /// Sets the external tag.
    pub fn external_tag(mut self, tag: &str) -> Self {
        self.external_tag = Some(tag.to_owned());
        self
    }
}

/// The ids of a created conversation.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreatedConversation {
    /// Conversation id.
    pub id: Uuid,
    /// Participants in creation order.
    pub participants: Vec<CreatedParticipant>,
}

/// One created participant.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreatedParticipant {
    /// Participant id.
    pub id: Uuid,
    /// Purpose.
    pub purpose: String,
}

impl CreatedConversation {
    /// The first participant with `purpose`.
    pub fn participant(&self, purpose: &str) -> Option<Uuid> {
        self.participants
            .iter()
            .find(|p| p.purpose == purpose)
            .map(|p| p.id)
    }
}

/// One PATCH as the emulator received it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PatchRecord {
    /// Arrival time.
    pub at: DateTime<Utc>,
    /// The attributes in the request.
    pub attributes: BTreeMap<String, String>,
}

/// One applied attributes PATCH in the organization-wide history, in the order applied.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AppliedPatch {
    /// Position in the history (1, 2, …; never reused, also after the oldest are dropped).
    pub seq: u64,
    /// When it was applied.
    pub at: DateTime<Utc>,
    /// The conversation.
    pub conversation_id: Uuid,
    /// The participant.
    pub participant_id: Uuid,
    /// The attributes in the request (a `null` that deleted a key shows as `""`).
    pub attributes: BTreeMap<String, String>,
    /// The status the client got: 202, or the server error of an "apply, then 5xx" fault, or
    /// 0 when an "apply, then drop the connection" fault closed the connection instead.
    pub status: u16,
}

/// A stored participant.
#[derive(Debug, Clone)]
pub(crate) struct ParticipantRec {
    pub(super) id: Uuid,
    pub(super) spec: ParticipantSpec,
    pub(super) communication_id: Uuid,
    pub(super) start: DateTime<Utc>,
    pub(super) ended: Option<(DateTime<Utc>, Instant)>,
    pub(super) attributes: BTreeMap<String, String>,
    pub(super) previous: Option<(Instant, BTreeMap<String, String>)>,
    pub(super) history: VecDeque<PatchRecord>,
}

/// A stored conversation.
#[derive(Debug, Clone)]
pub(crate) struct ConversationRec {
    pub(super) id: Uuid,
    pub(super) media: String,
    pub(super) direction: String,
    pub(super) tag: Option<String>,
    pub(super) previous_tag: Option<(Instant, Option<String>)>,
    pub(super) start: DateTime<Utc>,
    pub(super) created: Instant,
    pub(super) ended: Option<(DateTime<Utc>, Instant)>,
    pub(super) division: Uuid,
    pub(super) participants: Vec<ParticipantRec>,
    /// Requests on this conversation are answered 403 `not.authorized`.
    pub(super) forbidden: bool,
}

impl ConversationRec {
    /// Builds a conversation from a spec.
    pub(crate) fn new(spec: ConversationSpec) -> ConversationRec {
        let start = spec.start_time.unwrap_or_else(Utc::now);
        let participants = spec
            .participants
            .into_iter()
            .map(|p| ParticipantRec {
                id: p.id.unwrap_or_else(Uuid::new_v4),
                communication_id: Uuid::new_v4(),
                start,
                ended: None,
                attributes: p.attributes.clone(),
                previous: None,
                history: VecDeque::new(),
                spec: p,
            })
            .collect();
        ConversationRec {
            id: spec.id.unwrap_or_else(Uuid::new_v4),
            media: spec.media,
            direction: spec.direction,
            tag: spec.external_tag,
            previous_tag: None,
            start,
            created: Instant::now(),
            ended: None,
            division: Uuid::from_u128(0xd1d1d1d1_0000_4000_8000_000000000001),
            participants,
            forbidden: false,
        }
    }

    /// The ids for the caller.
    pub(crate) fn created(&self) -> CreatedConversation {
        CreatedConversation {
            id: self.id,
            participants: self
                .participants
                .iter()
                .map(|p| CreatedParticipant {
                    id: p.id,
                    purpose: p.spec.purpose.clone(),
                })
                .collect(),
        }
    }

    /// Ends the conversation and every participant.
    pub(crate) fn end(&mut self) {
        let now = (Utc::now(), Instant::now());
        self.ended.get_or_insert(now);
        for participant in &mut self.participants {
            participant.ended.get_or_insert(now);
        }
    }

    /// 403 `not.authorized` when the caller may not touch this conversation.
    pub(crate) fn check_access(&self) -> Result<(), super::ApiError> {
        if self.forbidden {
            Err(super::ApiError::not_authorized())
        } else {
            Ok(())
        }
    }

    /// The participant with `id`.
    pub(crate) fn participant_mut(&mut self, id: Uuid) -> Option<&mut ParticipantRec> {
        self.participants.iter_mut().find(|p| p.id == id)
    }

    /// The list a participant's communications go in (`calls`, `messages`, …).
    pub(crate) fn media_list(&self) -> &'static str {
        match self.media.as_str() {
            "message" | "messages" => "messages",
            "email" | "emails" => "emails",
            "callback" | "callbacks" => "callbacks",
            "chat" | "chats" => "chats",
            "cobrowse" | "cobrowsesessions" => "cobrowsesessions",
            _ => "calls",
        }
    }

    /// The `Conversation` JSON, showing attributes as they were `visibility` ago.
    pub(crate) fn to_json(&self, visibility: std::time::Duration) -> Value {
        let participants: Vec<Value> = self
            .participants
            .iter()
            .map(|p| participant_json(p, self, visibility))
            .collect();
        let mut body = json!({
            "id": self.id,
            "startTime": timestamp(self.start),
            "participants": participants,
            "recordingState": "NONE",
            "divisions": [{ "division": { "id": self.division,
                "selfUri": format!("/api/v2/authorization/divisions/{}", self.division) },
                "entities": [] }],
            "selfUri": format!("/api/v2/conversations/{}", self.id),
        });
        if let Some(tag) = &self.tag {
            body["externalTag"] = json!(tag);
        }
        if let Some((end, _)) = self.ended {
            body["endTime"] = json!(timestamp(end));
        }
        body
    }
}

fn participant_json(
    p: &ParticipantRec,
    c: &ConversationRec,
    visibility: std::time::Duration,
) -> Value {
    let state = match (p.ended, c.media_list()) {
        (Some(_), "calls" | "callbacks" | "chats") => "terminated",
        (Some(_), _) => "disconnected",
        (None, _) => "connected",
    };
    let mut communication = json!({ "id": p.communication_id, "state": state,
        "direction": c.direction, "held": false, "connectedTime": timestamp(p.start) });
    if let Some((end, _)) = p.ended {
        communication["disconnectedTime"] = json!(timestamp(end));
        communication["disconnectType"] = json!("endpoint");
    }
    let attributes = match &p.previous {
        Some((at, before)) if at.elapsed() < visibility => before,
        _ => &p.attributes,
    };
    let mut body = json!({ "id": p.id, "startTime": timestamp(p.start), "purpose": p.spec.purpose,
        "attributes": attributes, "wrapupRequired": false });
    body[c.media_list()] = json!([communication]);
    let optional = [
        ("name", &p.spec.name),
        ("externalContactId", &p.spec.external_contact_id),
        ("ani", &p.spec.ani),
        ("dnis", &p.spec.dnis),
    ];
    for (key, value) in optional {
        if let Some(value) = value {
            body[key] = json!(value);
        }
    }
    if let Some(ani) = &p.spec.ani {
        body["address"] = json!(ani);
    }
    if p.spec.purpose == "agent" {
        body["userId"] = json!(Uuid::from_u128(0x0c0ffee0_0000_4000_8000_000000000abc));
        body["queueId"] = json!(Uuid::from_u128(0x9a9a9a9a_0000_4000_8000_000000000001));
    }
    if let Some((end, _)) = p.ended {
        body["endTime"] = json!(timestamp(end));
    }
    body
}
