//! The worker's view of the Genesys Cloud API: the three calls it makes, with every error
//! already classified for the outcome table.

use std::fmt;
use std::time::Duration;

use serde_json::{Map, Value};
use uuid::Uuid;

use crate::genesys::{self, Failure, GenesysClient, RateLimitInfo};

/// Calls the API for the worker.
#[derive(Clone)]
pub struct Api {
    client: GenesysClient,
}

/// What every response carries.
#[derive(Debug, Clone)]
pub struct CallMeta {
    /// HTTP status.
    pub status: u16,
    /// The `inin-ratelimit-*` headers.
    pub rate_limit: Option<RateLimitInfo>,
    /// How long the call took.
    pub elapsed: Duration,
}

/// A conversation as resolution needs it.
#[derive(Debug, Clone)]
pub struct ConversationView {
    /// `endTime` is set.
    pub ended: bool,
    /// Its participants.
    pub participants: Vec<ParticipantView>,
}

/// A participant as resolution needs it.
#[derive(Debug, Clone)]
pub struct ParticipantView {
    /// The participant id.
    pub id: Uuid,
    /// Its purpose (`customer`, `agent`, …).
    pub purpose: Option<String>,
    /// Its name.
    pub name: Option<String>,
    /// Its external contact id.
    pub external_contact_id: Option<String>,
    /// Still in the conversation.
    pub live: bool,
    /// Its participant attributes as the API holds them now.
    pub attributes: std::collections::BTreeMap<String, String>,
}

/// A failed call, classified, with the API's own words kept for the dead letter.
#[derive(Debug, Clone)]
pub struct CallError {
    /// How the outcome table treats it.
    pub failure: Failure,
    /// HTTP status, when there was a response.
    pub status: Option<u16>,
    /// The error body's `code`.
    pub code: Option<String>,
    /// The error body's `message`.
    pub message: Option<String>,
    /// The error body's `contextId`.
    pub context_id: Option<String>,
    /// `ININ-Correlation-Id`.
    pub correlation_id: Option<String>,
    /// The whole error body.
    pub body: Option<Value>,
    /// `Retry-After`.
    pub retry_after: Option<Duration>,
    /// What the response carried (rate-limit headers, status), for the pacer.
    pub meta: CallMeta,
    /// What an operator should check ([`genesys::Error::advice`]).
    pub advice: Option<String>,
    description: String,
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.description)
    }
}

impl Api {
    /// Wraps a configured client.
    pub fn new(client: GenesysClient) -> Api {
        Api { client }
    }

    /// `GET /api/v2/conversations/{id}`.
    pub(crate) async fn conversation(
        &self,
        id: Uuid,
    ) -> Result<(ConversationView, CallMeta), CallError> {
        let response = self.client.get_conversation(id).await.map_err(classify)?;
        let conversation = &response.value;
        let view = ConversationView {
            ended: conversation.is_ended(),
            participants: conversation
                .participants
                .iter()
                .filter_map(|p| {
                    Some(ParticipantView {
                        id: p.id.as_deref()?.parse().ok()?,
                        purpose: p.purpose.clone(),
                        name: p.name.clone(),
                        external_contact_id: p.external_contact_id.clone(),
                        live: p.is_live(),
                        attributes: p.attributes.clone(),
                    })
                })
                .collect(),
        };
        Ok((view, meta_of(&response)))
    }

    /// The attributes PATCH (the generic endpoint).
    pub(crate) async fn patch(
        &self,
        conversation_id: Uuid,
        participant_id: Uuid,
        attributes: &Map<String, Value>,
    ) -> Result<CallMeta, CallError> {
        let response = self
            .client
            .patch_participant_attributes(conversation_id, participant_id, attributes)
            .await
            .map_err(classify)?;
        Ok(meta_of(&response))
    }

    /// The active conversations carrying `tag` (analytics details query).
    pub(crate) async fn find_by_tag(&self, tag: &str) -> Result<(Vec<Uuid>, CallMeta), CallError> {
        let response = self
            .client
            .find_active_conversations_by_external_tag(tag)
            .await
            .map_err(classify)?;
        let ids = response
            .value
            .iter()
            .filter_map(|c| c.conversation_id.as_deref()?.parse().ok())
            .collect();
        Ok((ids, meta_of(&response)))
    }

    /// Gets a token (used to find out whether a worker paused on its configuration may resume).
    pub(crate) async fn check_credentials(&self) -> Result<(), CheckError> {
        self.client.probe_token().await.map_err(CheckError::Token)
    }

    /// Gets one conversation to find out whether a worker paused on a 403 may resume: `Err`
    /// while the API refuses it for a permission (401/403) or gives no verdict (no response,
    /// 429, 5xx); any other answer, a 404 too, means the permission is back.
    pub(crate) async fn check_conversation(&self, id: Uuid) -> Result<(), CheckError> {
        verdict(self.conversation(id).await.map(|_| ()))
    }

    /// Looks a tag up, as [`Api::check_conversation`] does a conversation.
    pub(crate) async fn check_tag(&self, tag: &str) -> Result<(), CheckError> {
        verdict(self.find_by_tag(tag).await.map(|_| ()))
    }

    /// The longest one API request may take.
    pub(crate) fn request_timeout(&self) -> Duration {
        self.client.request_timeout()
    }

    /// OAuth token renewals so far.
    pub(crate) fn token_renewals(&self) -> u64 {
        self.client.token_renewals()
    }
}

/// Why a paused worker's check of its configuration did not pass: it stays paused.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CheckError {
    /// The token request failed (credentials refused, login host unreachable); said with the
    /// error's advice, as `/healthz` says it.
    #[error("{}", .0.with_advice())]
    Token(genesys::Error),
    /// The API still refuses the call that paused the worker, or gave no verdict; said with
    /// the error's advice.
    #[error("{}", match &.0.advice {
        Some(advice) => format!("{}. {advice}", .0),
        None => .0.to_string(),
    })]
    Call(Box<CallError>),
}

fn verdict(result: Result<(), CallError>) -> Result<(), CheckError> {
    match result {
        Ok(()) => Ok(()),
        Err(error) if matches!(error.failure, Failure::Permanent(_)) => Ok(()),
        Err(error) => Err(CheckError::Call(Box::new(error))),
    }
}

fn meta_of<T>(response: &genesys::ApiResponse<T>) -> CallMeta {
    CallMeta {
        status: response.status,
        rate_limit: response.rate_limit.clone(),
        elapsed: response.elapsed,
    }
}

/// Keeps what the dead letter needs of a client error, with its class.
fn classify(error: genesys::Error) -> CallError {
    let status = error.status();
    CallError {
        failure: error.class(),
        status,
        code: error.code().map(str::to_owned),
        message: error.message().map(str::to_owned),
        context_id: error.context_id().map(str::to_owned),
        correlation_id: error.correlation_id().map(str::to_owned),
        body: error.body_json(),
        retry_after: error.retry_after(),
        meta: CallMeta {
            status: status.unwrap_or(0),
            rate_limit: error.rate_limit().cloned(),
            elapsed: Duration::ZERO,
        },
        advice: error.advice(),
        description: error.to_string(),
    }
}
