//! Conversations: the GET, the attributes PATCH and its media variants, the tutorial's wrong
//! PATCH, external tags, and the list endpoint that needs a user.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::Utc;
use serde_json::{json, Map, Value};
use uuid::Uuid;

use super::config::{EmulatorConfig, EndedBehaviour, NullPolicy};
use super::error::ApiError;
use super::org::{Org, Shared};
use super::state::PatchRecord;

/// Parses an id path segment (400 `invalid.id` for a non-UUID).
pub(crate) fn parse_id(text: &str) -> Result<Uuid, ApiError> {
    text.parse().map_err(|_| {
        ApiError::new(
            400,
            "invalid.id",
            "A non-UUID value was specified for an ID field.",
        )
    })
}

/// `GET /api/v2/conversations/{id}`.
pub(crate) async fn get(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    shared.with(|org| {
        let delay = Duration::from_millis(org.config.visibility_delay_ms);
        let conversation = org.conversations.get(&id).ok_or_else(ApiError::not_found)?;
        conversation.check_access()?;
        Ok(Json(conversation.to_json(delay)).into_response())
    })
}

/// `GET /api/v2/conversations`: the logged-in user's conversations; a client-credentials
/// token has no user.
pub(crate) async fn list(State(shared): State<Arc<Shared>>) -> Result<Response, ApiError> {
    if shared.with(|org| org.config.list_requires_user) {
        return Err(ApiError::bad_request(
            "This request requires a user context. Client credentials cannot be used for requests to this resource.",
        ));
    }
    Ok(
        Json(json!({ "entities": [], "pageSize": 25, "pageNumber": 1, "total": 0 }))
            .into_response(),
    )
}

/// `PATCH /api/v2/conversations/{cid}/participants/{pid}/attributes`: 202, empty body.
pub(crate) async fn patch_attributes(
    State(shared): State<Arc<Shared>>,
    Path((cid, pid)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let (_, applied) = apply_patch(&shared, &cid, &pid, &headers, &body, true)?;
    Ok(applied.mark(StatusCode::ACCEPTED.into_response()))
}

/// Marks a response whose request was applied as the history entry `seq` (0: nothing recorded),
/// so a fault that fires after the handler can record the status the client really got.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PatchApplied(pub(crate) u64);

impl PatchApplied {
    fn mark(self, mut response: Response) -> Response {
        response.extensions_mut().insert(self);
        response
    }
}

/// The media variants (`calls`, `callbacks`, `emails`, `messages`, `cobrowsesessions`):
/// 202 with the participant's whole attribute map.
pub(crate) async fn patch_media_attributes(
    State(shared): State<Arc<Shared>>,
    Path((media, cid, pid)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let body_required = match media.as_str() {
        "calls" | "callbacks" | "emails" => true,
        "messages" | "cobrowsesessions" => false,
        _ => return Err(ApiError::not_found()),
    };
    let (attributes, applied) = apply_patch(&shared, &cid, &pid, &headers, &body, body_required)?;
    Ok(applied.mark(
        (
            StatusCode::ACCEPTED,
            Json(json!({ "attributes": attributes })),
        )
            .into_response(),
    ))
}

/// The tutorial's `PATCH /api/v2/conversations/{cid}/participants/{pid}`: its body is a
/// `MediaParticipantRequest`, which has no `attributes`.
pub(crate) async fn patch_participant(
    State(shared): State<Arc<Shared>>,
    Path((cid, pid)): Path<(String, String)>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let (cid, pid) = (parse_id(&cid)?, parse_id(&pid)?);
    let request: Map<String, Value> = parse_object(&body)?;
    const FIELDS: [&str; 8] = [
        "wrapup",
        "state",
        "recording",
        "muted",
        "confined",
        "held",
        "wrapupSkipped",
        "resumeTime",
    ];
    shared.with(|org| {
        if let Some(unknown) = request.keys().find(|k| !FIELDS.contains(&k.as_str())) {
            if org.config.reject_tutorial_patch || unknown != "attributes" {
                return Err(ApiError::new(
                    400,
                    "invalid.property",
                    format!(
                "Value [{unknown}] is not a valid property for object [MediaParticipantRequest]"
            ),
                ));
            }
        }
        let conversation = org
            .conversations
            .get_mut(&cid)
            .ok_or_else(ApiError::not_found)?;
        conversation.check_access()?;
        let participant = conversation
            .participant_mut(pid)
            .ok_or_else(ApiError::not_found)?;
        if request.get("state").and_then(Value::as_str) == Some("disconnected") {
            participant
                .ended
                .get_or_insert((Utc::now(), Instant::now()));
        }
        Ok(StatusCode::ACCEPTED.into_response())
    })
}

/// `PUT /api/v2/conversations/{id}/tags` with `{"externalTag": "…"}`: 202.
pub(crate) async fn put_tags(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let request = parse_object(&body)?;
    let Some(tag) = request.get("externalTag").and_then(Value::as_str) else {
        return Err(ApiError::bad_request("externalTag is required"));
    };
    shared.with(|org| {
        let conversation = org
            .conversations
            .get_mut(&id)
            .ok_or_else(ApiError::not_found)?;
        conversation.check_access()?;
        conversation.previous_tag = Some((Instant::now(), conversation.tag.take()));
        conversation.tag = Some(tag.to_owned());
        Ok((StatusCode::ACCEPTED, Json(Value::String(tag.to_owned()))).into_response())
    })
}

fn parse_object(body: &Bytes) -> Result<Map<String, Value>, ApiError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(ApiError::bad_request(
            "The request could not be understood by the server due to malformed syntax.",
        )),
    }
}

/// Validates and merges a PATCH; returns the participant's attributes afterwards and the
/// PATCH's place in the organization-wide history.
fn apply_patch(
    shared: &Shared,
    cid: &str,
    pid: &str,
    headers: &HeaderMap,
    body: &Bytes,
    body_required: bool,
) -> Result<(BTreeMap<String, String>, PatchApplied), ApiError> {
    let (cid, pid) = (parse_id(cid)?, parse_id(pid)?);
    shared.with(|org| {
        let max = org.config.max_request_bytes;
        if body.len() > max {
            return Err(ApiError::new(
                413,
                "request.entity.too.large",
                format!("The request is over the size limit. Maximum bytes: {max}"),
            ));
        }
        let update = if body.is_empty() && !body_required {
            BTreeMap::new()
        } else {
            check_content_type(headers)?;
            parse_attributes(&parse_object(body)?, &org.config)?
        };
        merge(org, cid, pid, update)
    })
}

fn check_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if content_type.starts_with("application/json") {
        Ok(())
    } else {
        Err(ApiError::new(415, "unsupported.media.type", format!(
            "Unsupported Media Type - Unsupported or incorrect media type, such as an incorrect Content-Type value in the header. [{content_type}]"
        )))
    }
}

/// `{"attributes": {…}}` → the string map to merge (`None` values mean "delete").
fn parse_attributes(
    request: &Map<String, Value>,
    config: &EmulatorConfig,
) -> Result<BTreeMap<String, Option<String>>, ApiError> {
    let attributes = match request.get("attributes") {
        None => return Ok(BTreeMap::new()),
        Some(Value::Object(map)) => map,
        Some(_) => {
            return Err(ApiError::bad_request(
                "attributes must be an object of strings",
            ))
        }
    };
    let mut parsed = BTreeMap::new();
    for (key, value) in attributes {
        let value = match (value, config.null_value) {
            (Value::String(text), _) => Some(text.clone()),
            (Value::Null, NullPolicy::StoreEmpty) => Some(String::new()),
            (Value::Null, NullPolicy::DeleteKey) => None,
            (other, _) => {
                return Err(ApiError::new(400, "invalid.value", format!(
                    "Value [{other}] is not valid for field type [String]. Allowable values are: string values"
                )))
            }
        };
        check_limits(key, value.as_deref(), config)?;
        parsed.insert(key.clone(), value);
    }
    Ok(parsed)
}

fn check_limits(key: &str, value: Option<&str>, config: &EmulatorConfig) -> Result<(), ApiError> {
    let limits = config.attribute_limits;
    if limits
        .max_key_chars
        .is_some_and(|max| key.chars().count() > max)
    {
        return Err(ApiError::bad_request(format!(
            "attribute key [{key}] is too long"
        )));
    }
    if limits
        .max_value_chars
        .is_some_and(|max| value.is_some_and(|v| v.chars().count() > max))
    {
        return Err(ApiError::bad_request(format!(
            "the value of attribute [{key}] is too long"
        )));
    }
    Ok(())
}

type Update = BTreeMap<String, Option<String>>;

fn merge(
    org: &mut Org,
    cid: Uuid,
    pid: Uuid,
    update: Update,
) -> Result<(BTreeMap<String, String>, PatchApplied), ApiError> {
    let ended_behaviour = org.config.ended_conversation;
    let (cap, max_keys) = (org.config.history_cap, org.config.attribute_limits.max_keys);
    let conversation = org
        .conversations
        .get_mut(&cid)
        .ok_or_else(ApiError::not_found)?;
    conversation.check_access()?;
    let conversation_ended = conversation.ended.is_some();
    let participant = conversation
        .participant_mut(pid)
        .ok_or_else(ApiError::not_found)?;
    if conversation_ended || participant.ended.is_some() {
        match ended_behaviour {
            EndedBehaviour::Conflict => {
                return Err(ApiError::new(
                    409,
                    "conflict",
                    "The request conflicts with the current state of the target resource.",
                ))
            }
            EndedBehaviour::BadRequest => {
                return Err(ApiError::bad_request(
                    "The conversation is no longer active.",
                ))
            }
            EndedBehaviour::Accepted => {}
        }
    }
    let mut merged = participant.attributes.clone();
    for (key, value) in &update {
        match value {
            Some(value) => merged.insert(key.clone(), value.clone()),
            None => merged.remove(key),
        };
    }
    if max_keys.is_some_and(|max| merged.len() > max) {
        return Err(ApiError::bad_request(
            "too many attributes on this participant",
        ));
    }
    let previous = std::mem::replace(&mut participant.attributes, merged);
    participant.previous = Some((Instant::now(), previous));
    let attributes: BTreeMap<String, String> = update
        .into_iter()
        .map(|(k, v)| (k, v.unwrap_or_default()))
        .collect();
    if cap > 0 {
        if participant.history.len() >= cap {
            participant.history.pop_front();
        }
        participant.history.push_back(PatchRecord {
            at: Utc::now(),
            attributes: attributes.clone(),
        });
    }
    let now = participant.attributes.clone();
    let seq = org.record_patch(cid, pid, attributes);
    Ok((now, PatchApplied(seq)))
}
