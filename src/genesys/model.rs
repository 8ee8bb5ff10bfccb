//! The API's JSON bodies (camelCase, unknown fields ignored).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// `ErrorBody`: what every `/api/v2` error carries (all fields optional).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ErrorBody {
    /// Human message.
    pub message: Option<String>,
    /// Machine code, e.g. `not.found`.
    pub code: Option<String>,
    /// HTTP status.
    pub status: Option<u16>,
    /// Equals the `ININ-Correlation-Id`.
    pub context_id: Option<String>,
    /// The message with `{placeholders}`.
    pub message_with_params: Option<String>,
    /// Values of the placeholders (e.g. `permissions`).
    pub message_params: Option<BTreeMap<String, String>>,
    /// Field-level details.
    #[serde(default)]
    pub details: Vec<Value>,
    /// Nested errors.
    #[serde(default)]
    pub errors: Vec<Value>,
}

impl ErrorBody {
    /// The body as pdq keeps it: each text at most [`super::MAX_RAW_BYTES`] bytes (cut on a
    /// character boundary) and without NUL characters, whatever the API sent.
    pub fn kept(mut self) -> ErrorBody {
        let keep = |text: &mut Option<String>| {
            if let Some(value) = text {
                *value = super::text::kept(value, super::MAX_RAW_BYTES);
            }
        };
        keep(&mut self.message);
        keep(&mut self.code);
        keep(&mut self.context_id);
        keep(&mut self.message_with_params);
        if let Some(params) = self.message_params.take() {
            self.message_params = Some(
                params
                    .into_iter()
                    .map(|(key, value)| {
                        let clean = |t: &str| super::text::kept(t, super::MAX_RAW_BYTES);
                        (clean(&key), clean(&value))
                    })
                    .collect(),
            );
        }
        self.details.iter_mut().for_each(super::text::scrub_json);
        self.errors.iter_mut().for_each(super::text::scrub_json);
        self
    }
}

/// The OAuth error shape of `/oauth/token`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct OAuthError {
    /// e.g. `invalid_client`.
    pub error: Option<String>,
    /// Explanation.
    pub description: Option<String>,
    /// Explanation (standard field).
    pub error_description: Option<String>,
}

impl OAuthError {
    /// The error as pdq keeps it (see [`ErrorBody::kept`]).
    pub fn kept(mut self) -> OAuthError {
        for text in [
            &mut self.error,
            &mut self.description,
            &mut self.error_description,
        ]
        .into_iter()
        .flatten()
        {
            *text = super::text::kept(text, super::MAX_RAW_BYTES);
        }
        self
    }
}

/// A token from `/oauth/token`.
#[derive(Debug, Clone, Deserialize)]
pub struct TokenResponse {
    /// The bearer token.
    pub access_token: String,
    /// Seconds until it expires.
    pub expires_in: Option<u64>,
}

/// `Conversation` (the fields pdq reads).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Conversation {
    /// Conversation id.
    pub id: Option<String>,
    /// External tag.
    pub external_tag: Option<String>,
    /// Set once the conversation has ended.
    pub end_time: Option<String>,
    /// Participants.
    #[serde(default)]
    pub participants: Vec<Participant>,
}

impl Conversation {
    /// `endTime` is set: the conversation is over.
    pub fn is_ended(&self) -> bool {
        self.end_time.is_some()
    }
}

/// `Participant` (the fields pdq reads).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Participant {
    /// Participant id.
    pub id: Option<String>,
    /// Name.
    pub name: Option<String>,
    /// `customer`, `agent`, `external`, …
    pub purpose: Option<String>,
    /// External contact id.
    pub external_contact_id: Option<String>,
    /// Set once the participant left.
    pub end_time: Option<String>,
    /// Participant data.
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
    /// Voice communications.
    #[serde(default)]
    pub calls: Vec<Communication>,
    /// Callbacks.
    #[serde(default)]
    pub callbacks: Vec<Communication>,
    /// Legacy chats.
    #[serde(default)]
    pub chats: Vec<Communication>,
    /// Emails.
    #[serde(default)]
    pub emails: Vec<Communication>,
    /// Messages.
    #[serde(default)]
    pub messages: Vec<Communication>,
    /// Co-browse sessions.
    #[serde(default)]
    pub cobrowsesessions: Vec<Communication>,
    /// Screen shares.
    #[serde(default)]
    pub screenshares: Vec<Communication>,
    /// Video.
    #[serde(default)]
    pub videos: Vec<Communication>,
    /// Social expressions.
    #[serde(default)]
    pub social_expressions: Vec<Communication>,
}

/// One communication of a participant.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Communication {
    /// Communication id.
    pub id: Option<String>,
    /// `connected`, `disconnected`, `terminated`, …
    pub state: Option<String>,
}

impl Participant {
    /// Live: no `endTime`, and a communication that is not disconnected or terminated (a
    /// participant without communications counts as live).
    pub fn is_live(&self) -> bool {
        if self.end_time.is_some() {
            return false;
        }
        let all: Vec<&Communication> = [
            &self.calls,
            &self.callbacks,
            &self.chats,
            &self.emails,
            &self.messages,
            &self.cobrowsesessions,
            &self.screenshares,
            &self.videos,
            &self.social_expressions,
        ]
        .into_iter()
        .flatten()
        .collect();
        all.is_empty()
            || all
                .iter()
                .any(|c| !matches!(c.state.as_deref(), Some("disconnected" | "terminated")))
    }
}

/// `AnalyticsConversationQueryResponse` (conversations absent or empty when nothing matched).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AnalyticsQueryResponse {
    /// Matching conversations.
    #[serde(default)]
    pub conversations: Vec<AnalyticsConversation>,
    /// Total matches.
    pub total_hits: Option<u64>,
}

/// `AnalyticsConversationWithoutAttributes` (the fields pdq reads).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AnalyticsConversation {
    /// Conversation id.
    pub conversation_id: Option<String>,
    /// Conversation start.
    pub conversation_start: Option<String>,
    /// Conversation end, once ended.
    pub conversation_end: Option<String>,
    /// External tag.
    pub external_tag: Option<String>,
}

/// `TokenInfo` from `GET /api/v2/tokens/me` (the fields pdq shows).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenInfo {
    /// The organization.
    pub organization: Option<NamedEntity>,
    /// The OAuth client.
    #[serde(rename = "OAuthClient")]
    pub oauth_client: Option<NamedEntity>,
}

/// `{id, name}`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct NamedEntity {
    /// Id.
    pub id: Option<String>,
    /// Name.
    pub name: Option<String>,
}

/// The analytics details query for active conversations with an external tag.
pub fn active_by_external_tag_query(tag: &str, now: chrono::DateTime<chrono::Utc>) -> Value {
    let start = (now - chrono::Duration::days(2)).format("%Y-%m-%dT%H:%M:%S%.3fZ");
    let end = (now + chrono::Duration::hours(1)).format("%Y-%m-%dT%H:%M:%S%.3fZ");
    serde_json::json!({
        "interval": format!("{start}/{end}"),
        "order": "desc",
        "orderBy": "conversationStart",
        "paging": { "pageSize": 25, "pageNumber": 1 },
        "conversationFilters": [{
            "type": "and",
            "predicates": [
                { "type": "dimension", "dimension": "externalTag", "operator": "matches", "value": tag },
                { "type": "dimension", "dimension": "conversationEnd", "operator": "notExists" }
            ]
        }]
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_and_ended_are_read_from_the_documented_shapes() {
        let live: Conversation = serde_json::from_str(
            r#"{"id":"4f7a1e2d-0000-4000-8000-00000000c0de","externalTag":"ORDER-42",
                "participants":[{"id":"8e2b3c1a-0000-4000-8000-0000000000a1","purpose":"customer",
                "attributes":{"crmCaseId":"CASE-123"},
                "calls":[{"id":"c6e6b1f4-0000-4000-8000-000000000001","state":"connected"}]}],
                "recordingState":"NONE"}"#,
        )
        .unwrap();
        assert!(!live.is_ended());
        assert!(live.participants[0].is_live());
        let ended: Conversation = serde_json::from_str(
            r#"{"id":"x","endTime":"2026-11-24T10:05:00.000Z","participants":[
                {"id":"p","purpose":"customer","endTime":"2026-11-24T10:05:00.000Z",
                 "calls":[{"state":"disconnected"}]},
                {"id":"q","purpose":"agent","messages":[{"state":"disconnected"}]}]}"#,
        )
        .unwrap();
        assert!(ended.is_ended());
        assert!(!ended.participants[0].is_live());
        assert!(
            !ended.participants[1].is_live(),
            "all communications disconnected"
        );
    }

    #[test]
    fn an_empty_analytics_result_parses_in_both_shapes() {
        let absent: AnalyticsQueryResponse = serde_json::from_str(r#"{"totalHits":0}"#).unwrap();
        let empty: AnalyticsQueryResponse =
            serde_json::from_str(r#"{"conversations":[]}"#).unwrap();
        assert!(absent.conversations.is_empty() && empty.conversations.is_empty());
    }
}
