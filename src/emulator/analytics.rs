//! `POST /api/v2/analytics/conversations/details/query`: the interval start-day rule,
//! conversation and segment filters, paging, no attributes, and a configurable indexing lag.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, NaiveDate, Utc};
use serde_json::{json, Value};

use super::error::ApiError;
use super::org::Shared;
use super::state::{timestamp, ConversationRec, ParticipantRec};

/// What analytics knows of a conversation after the indexing delay.
struct Indexed<'a> {
    conversation: &'a ConversationRec,
    ended: Option<DateTime<Utc>>,
    tag: Option<&'a str>,
}

impl<'a> Indexed<'a> {
    fn of(conversation: &'a ConversationRec, delay: Duration) -> Option<Indexed<'a>> {
        if conversation.created.elapsed() < delay {
            return None;
        }
        let ended = conversation
            .ended
            .filter(|(_, at)| at.elapsed() >= delay)
            .map(|(end, _)| end);
        let tag = match &conversation.previous_tag {
            Some((at, before)) if at.elapsed() < delay => before.as_deref(),
            _ => conversation.tag.as_deref(),
        };
        Some(Indexed {
            conversation,
            ended,
            tag,
        })
    }
}

/// Runs a details query.
pub(crate) async fn query(
    State(shared): State<Arc<Shared>>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let request: Value = serde_json::from_slice(&body).map_err(|_| {
        ApiError::bad_request(
            "The request could not be understood by the server due to malformed syntax.",
        )
    })?;
    let (first_day, last_day) = interval_days(request.get("interval"))?;
    let (page_size, page_number) = paging(request.get("paging"))?;
    let descending = request.get("order").and_then(Value::as_str) == Some("desc");
    shared.with(|org| {
        let delay = Duration::from_millis(org.config.analytics_delay_ms);
        let mut matches: Vec<Indexed> = org
            .conversations
            .values()
            .filter_map(|c| Indexed::of(c, delay))
            .filter(|c| (first_day..=last_day).contains(&c.conversation.start.date_naive()))
            .filter(|c| {
                filters_match(request.get("conversationFilters"), |p| {
                    conversation_predicate(c, p)
                })
            })
            .filter(|c| {
                filters_match(request.get("segmentFilters"), |p| {
                    c.conversation
                        .participants
                        .iter()
                        .any(|part| segment_predicate(part, p))
                })
            })
            .collect();
        matches.sort_by_key(|c| (c.conversation.start, c.conversation.id));
        if descending {
            matches.reverse();
        }
        let total = matches.len();
        let page: Vec<Value> = matches
            .iter()
            .skip(page_size * (page_number - 1))
            .take(page_size)
            .map(render)
            .collect();
        let mut response = json!({ "totalHits": total });
        if !page.is_empty() || org.config.analytics_empty_array {
            response["conversations"] = json!(page);
        }
        Ok(Json(response).into_response())
    })
}

fn interval_days(interval: Option<&Value>) -> Result<(NaiveDate, NaiveDate), ApiError> {
    let invalid = || {
        ApiError::new(
            400,
            "invalid.date",
            "Dates must be specified as ISO-8601 strings. For example: yyyy-MM-ddTHH:mm:ss.SSSZ",
        )
    };
    let text = interval
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::bad_request("interval is required"))?;
    let (start, end) = text.split_once('/').ok_or_else(invalid)?;
    let parse = |s: &str| {
        DateTime::parse_from_rfc3339(s)
            .map(|d| d.with_timezone(&Utc))
            .map_err(|_| invalid())
    };
    let (start, end) = (parse(start)?, parse(end)?);
    if end <= start {
        return Err(ApiError::bad_request(
            "interval end must be after its start",
        ));
    }
    // Days touched by [start, end): the end instant itself is excluded.
    let last = (end - chrono::Duration::milliseconds(1)).date_naive();
    Ok((start.date_naive(), last))
}

fn paging(paging: Option<&Value>) -> Result<(usize, usize), ApiError> {
    let field = |name: &str, default: u64| {
        paging
            .and_then(|p| p.get(name))
            .and_then(Value::as_u64)
            .unwrap_or(default)
    };
    let (size, number) = (field("pageSize", 25), field("pageNumber", 1));
    if size == 0 || size > 100 || number == 0 {
        return Err(ApiError::bad_request(
            "paging.pageSize must be 1–100 and pageNumber at least 1",
        ));
    }
    Ok((size as usize, number as usize))
}

/// Every filter must match; within one, predicates and clauses combine by its `type`.
fn filters_match(filters: Option<&Value>, predicate: impl Fn(&Value) -> bool + Copy) -> bool {
    let Some(filters) = filters.and_then(Value::as_array) else {
        return true;
    };
    filters
        .iter()
        .all(|filter| group_matches(filter, predicate))
}

fn group_matches(group: &Value, predicate: impl Fn(&Value) -> bool + Copy) -> bool {
    let any = group.get("type").and_then(Value::as_str) == Some("or");
    let mut results = group
        .get("predicates")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(predicate)
        .chain(
            group
                .get("clauses")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .map(|clause| group_matches(clause, predicate)),
        );
    if any {
        results.any(|r| r)
    } else {
        results.all(|r| r)
    }
}

fn operator(predicate: &Value) -> &str {
    predicate
        .get("operator")
        .and_then(Value::as_str)
        .unwrap_or("matches")
}

fn compare(actual: Option<&str>, predicate: &Value) -> bool {
    match operator(predicate) {
        "exists" => actual.is_some(),
        "notExists" => actual.is_none(),
        _ => actual.is_some() && actual == predicate.get("value").and_then(Value::as_str),
    }
}

fn conversation_predicate(c: &Indexed, predicate: &Value) -> bool {
    let id = c.conversation.id.to_string();
    let end = c.ended.map(timestamp);
    match predicate.get("dimension").and_then(Value::as_str) {
        Some("externalTag") => compare(c.tag, predicate),
        Some("conversationId") => compare(Some(&id), predicate),
        Some("conversationEnd") => compare(end.as_deref(), predicate),
        _ => false,
    }
}

fn segment_predicate(p: &ParticipantRec, predicate: &Value) -> bool {
    let field = match predicate.get("dimension").and_then(Value::as_str) {
        Some("ani") => p.spec.ani.as_deref(),
        Some("dnis") => p.spec.dnis.as_deref(),
        Some("purpose") => Some(p.spec.purpose.as_str()),
        Some("externalContactId") => p.spec.external_contact_id.as_deref(),
        Some("participantName") => p.spec.name.as_deref(),
        _ => return false,
    };
    compare(field, predicate)
}

fn render(c: &Indexed) -> Value {
    let conversation = c.conversation;
    let media_type = match conversation.media_list() {
        "messages" => "message",
        "emails" => "email",
        "callbacks" => "callback",
        "chats" => "chat",
        "cobrowsesessions" => "cobrowse",
        _ => "voice",
    };
    let participants: Vec<Value> = conversation
        .participants
        .iter()
        .map(|p| {
            let mut segment =
                json!({ "segmentStart": timestamp(p.start), "segmentType": "interact" });
            if let Some((end, _)) = p.ended {
                segment["segmentEnd"] = json!(timestamp(end));
            }
            let mut session = json!({ "sessionId": p.communication_id, "mediaType": media_type,
                "direction": conversation.direction, "segments": [segment] });
            for (key, value) in [("ani", &p.spec.ani), ("dnis", &p.spec.dnis)] {
                if let Some(value) = value {
                    session[key] = json!(value);
                }
            }
            let mut participant =
                json!({ "participantId": p.id, "purpose": p.spec.purpose, "sessions": [session] });
            if let Some(name) = &p.spec.name {
                participant["participantName"] = json!(name);
            }
            if let Some(id) = &p.spec.external_contact_id {
                participant["externalContactId"] = json!(id);
            }
            participant
        })
        .collect();
    let mut body = json!({
        "conversationId": conversation.id,
        "conversationStart": timestamp(conversation.start),
        "originatingDirection": conversation.direction,
        "divisionIds": [conversation.division],
        "participants": participants,
    });
    if let Some(end) = c.ended {
        body["conversationEnd"] = json!(timestamp(end));
    }
    if let Some(tag) = c.tag {
        body["externalTag"] = json!(tag);
    }
    body
}
