//! The admin API (`/admin/…`, JSON) for tests, demos and users' CI. Every route has a typed
//! twin on [`super::EmulatorHandle`].

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use uuid::Uuid;

use super::config::{ClientSpec, RateLimit};
use super::faults::{Faults, FaultsError};
use super::org::Shared;
use super::state::{ConversationRec, ConversationSpec};

/// The `/admin` routes.
pub(crate) fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/admin/conversations", post(create))
        .route("/admin/conversations/{id}/end", post(end))
        .route("/admin/conversations/{id}/tag", put(tag))
        .route(
            "/admin/conversations/{id}/participants/{pid}/disconnect",
            post(disconnect),
        )
        .route(
            "/admin/conversations/{id}/participants/{pid}/attributes",
            get(attributes),
        )
        .route(
            "/admin/conversations/{id}/participants/{pid}/history",
            get(history),
        )
        .route("/admin/conversations/{id}/access", put(access))
        .route("/admin/patches", get(patches))
        .route("/admin/outage", post(outage))
        .route("/admin/requests", get(requests))
        .route("/admin/requests/log", get(request_log))
        .route(
            "/admin/faults",
            get(faults).put(set_faults).patch(merge_faults),
        )
        .route("/admin/rate-limit", put(set_rate_limit))
        .route("/admin/tokens/revoke", post(revoke))
        .route("/admin/clients", post(add_client))
        .route("/admin/reset", post(reset))
}

/// Refuses an `/admin/…` request without the configured admin token (`Authorization: Bearer
/// <token>`, compared in constant time); lets every request through when none is configured.
pub(crate) async fn token_layer(
    State(shared): State<Arc<Shared>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    use subtle::ConstantTimeEq;
    let Some(expected) = shared.with(|org| org.config.admin_token.clone()) else {
        return next.run(request).await;
    };
    let given = request
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .unwrap_or_default();
    match bool::from(given.as_bytes().ct_eq(expected.as_bytes())) {
        true => next.run(request).await,
        false => (
            StatusCode::UNAUTHORIZED,
            Json(json!({ "message": "the admin API needs Authorization: Bearer <admin token>" })),
        )
            .into_response(),
    }
}

/// Creates a conversation in the organization; returns its ids.
pub(crate) fn create_conversation(
    shared: &Shared,
    spec: ConversationSpec,
) -> super::CreatedConversation {
    let conversation = ConversationRec::new(spec);
    let created = conversation.created();
    shared.insert_conversation(created.id, conversation);
    created
}

async fn create(State(shared): State<Arc<Shared>>, Json(spec): Json<ConversationSpec>) -> Response {
    (
        StatusCode::CREATED,
        Json(create_conversation(&shared, spec)),
    )
        .into_response()
}

fn found(ok: bool) -> StatusCode {
    if ok {
        StatusCode::NO_CONTENT
    } else {
        StatusCode::NOT_FOUND
    }
}

async fn end(State(shared): State<Arc<Shared>>, Path(id): Path<Uuid>) -> StatusCode {
    found(shared.end_conversation(id))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TagBody {
    external_tag: String,
}

async fn tag(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<Uuid>,
    Json(body): Json<TagBody>,
) -> StatusCode {
    found(shared.set_tag(id, &body.external_tag))
}

async fn disconnect(
    State(shared): State<Arc<Shared>>,
    Path((id, pid)): Path<(Uuid, Uuid)>,
) -> StatusCode {
    found(shared.disconnect(id, pid))
}

async fn attributes(
    State(shared): State<Arc<Shared>>,
    Path((id, pid)): Path<(Uuid, Uuid)>,
) -> Response {
    match shared.attributes(id, pid) {
        Some(map) => Json(map).into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn history(
    State(shared): State<Arc<Shared>>,
    Path((id, pid)): Path<(Uuid, Uuid)>,
) -> Response {
    Json(shared.history(id, pid)).into_response()
}

#[derive(Deserialize)]
struct AccessBody {
    forbidden: bool,
}

async fn access(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<Uuid>,
    Json(body): Json<AccessBody>,
) -> StatusCode {
    found(shared.set_forbidden(id, body.forbidden))
}

#[derive(Deserialize)]
struct PatchesQuery {
    #[serde(default)]
    after: u64,
    limit: Option<usize>,
}

/// `GET /admin/patches?after=SEQ&limit=N`: applied PATCHes in the order applied.
async fn patches(State(shared): State<Arc<Shared>>, Query(query): Query<PatchesQuery>) -> Response {
    let limit = query.limit.unwrap_or(10_000);
    Json(shared.patches_after(query.after, limit)).into_response()
}

#[derive(Deserialize)]
struct OutageBody {
    secs: f64,
}

/// `POST /admin/outage {"secs": N}`: answers 202, then closes the listener for N seconds.
async fn outage(State(shared): State<Arc<Shared>>, Json(body): Json<OutageBody>) -> StatusCode {
    if !(body.secs.is_finite() && body.secs > 0.0) {
        return StatusCode::BAD_REQUEST;
    }
    let duration = std::time::Duration::from_secs_f64(body.secs.min(86_400.0));
    tokio::spawn(async move {
        // Lets this response go out before the connections are dropped.
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let until = std::time::Instant::now() + duration;
        shared.set_listening(super::Listening::Stopped(Some(until)));
    });
    StatusCode::ACCEPTED
}

async fn requests(State(shared): State<Arc<Shared>>) -> Response {
    Json(shared.counts()).into_response()
}

async fn request_log(State(shared): State<Arc<Shared>>) -> Response {
    Json(shared.request_log()).into_response()
}

async fn faults(State(shared): State<Arc<Shared>>) -> Response {
    Json(shared.faults()).into_response()
}

/// A 400 with a JSON body: `{"error": "…"}`, plus the unknown and known fields when the
/// body named fields no fault set has.
fn refused(error: impl std::fmt::Display, fields: Option<(&[String], &[String])>) -> Response {
    let mut body = json!({ "error": error.to_string() });
    if let Some((unknown, known)) = fields {
        body["unknown_fields"] = json!(unknown);
        body["known_fields"] = json!(known);
    }
    (StatusCode::BAD_REQUEST, Json(body)).into_response()
}

fn faults_refused(error: FaultsError) -> Response {
    match &error {
        FaultsError::UnknownFields { unknown, known } => {
            refused(&error, Some((unknown.as_slice(), known.as_slice())))
        }
        _ => refused(&error, None),
    }
}

/// The body as JSON, or why it is not.
fn json_body(body: &[u8]) -> Result<serde_json::Value, String> {
    serde_json::from_slice(body).map_err(|error| format!("the body is not JSON: {error}"))
}

/// `PUT /admin/faults`: replaces the whole fault set (fields not given take their defaults);
/// a storm and a login outage start now.
async fn set_faults(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let body = match json_body(&body) {
        Ok(body) => body,
        Err(message) => return refused(message, None),
    };
    match Faults::from_json(&body) {
        Ok(faults) => {
            shared.set_faults(faults);
            StatusCode::NO_CONTENT.into_response()
        }
        Err(error) => faults_refused(error),
    }
}

/// `PATCH /admin/faults`: changes only the fields given and answers the whole fault set; a
/// storm or a login outage starts again only when its field is given.
async fn merge_faults(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let body = match json_body(&body) {
        Ok(body) => body,
        Err(message) => return refused(message, None),
    };
    let restart = ["storm_secs", "login_outage_secs"]
        .iter()
        .any(|field| body.get(field).is_some());
    match shared.change_faults(|current| current.merged(&body).map(|merged| (merged, restart))) {
        Ok(faults) => Json(faults).into_response(),
        Err(error) => faults_refused(error),
    }
}

async fn set_rate_limit(
    State(shared): State<Arc<Shared>>,
    Json(limit): Json<Option<RateLimit>>,
) -> StatusCode {
    shared.set_rate_limit(limit);
    StatusCode::NO_CONTENT
}

async fn revoke(State(shared): State<Arc<Shared>>) -> StatusCode {
    shared.revoke_all();
    StatusCode::NO_CONTENT
}

async fn add_client(
    State(shared): State<Arc<Shared>>,
    Json(client): Json<ClientSpec>,
) -> StatusCode {
    shared.add_client(client.id, client.secret);
    StatusCode::NO_CONTENT
}

async fn reset(State(shared): State<Arc<Shared>>) -> Response {
    shared.reset();
    Json(json!({ "reset": true })).into_response()
}
