//! `POST /oauth/token` (client credentials) and `GET|HEAD|DELETE /api/v2/tokens/me`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use base64::Engine;
use serde_json::json;

use super::api::Caller;
use super::org::Shared;

/// Issues a token for valid client credentials (HTTP Basic + `grant_type=client_credentials`).
pub(crate) async fn token(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: String,
) -> Response {
    let grant = url::form_urlencoded::parse(body.as_bytes())
        .find(|(key, _)| key == "grant_type")
        .map(|(_, value)| value.into_owned());
    shared.with(|org| {
    let bad_status = org.config.bad_credentials_status;
    let Some((id, secret)) = basic_credentials(&headers) else {
        return oauth_error(
            bad_status,
            "invalid_client",
            "client credentials are required (HTTP Basic)",
        );
    };
    if grant.as_deref() != Some("client_credentials") {
        return oauth_error(
            400,
            "unsupported_grant_type",
            "grant_type must be client_credentials",
        );
    }
    match org.clients.get(&id) {
        None => oauth_error(bad_status, "invalid_client", "client not found"),
        Some(expected) if *expected != secret => {
            oauth_error(bad_status, "invalid_client", "authentication failed")
        }
        Some(_) => {
            let (token, expires_in) = org.issue_token(&id);
            Json(json!({ "access_token": token, "token_type": "bearer", "expires_in": expires_in }))
                .into_response()
        }
    }
    })
}

fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get("authorization")?.to_str().ok()?;
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (id, secret) = text.split_once(':')?;
    Some((id.to_owned(), secret.to_owned()))
}

fn oauth_error(status: u16, error: &str, description: &str) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::UNAUTHORIZED);
    let body =
        json!({ "error": error, "description": description, "error_description": description });
    (status, Json(body)).into_response()
}

/// `GET /api/v2/tokens/me`: the token's organization and OAuth client.
pub(crate) async fn token_info(
    State(shared): State<Arc<Shared>>,
    Extension(caller): Extension<Caller>,
) -> Response {
    shared.with(|org| {
        let organization =
            json!({ "id": org.organization_id, "name": org.config.organization_name });
        Json(json!({
            "organization": organization,
            "homeOrganization": organization,
            "authorizedScope": [],
            "OAuthClient": { "id": caller.client_id, "name": caller.client_id,
                             "organization": { "id": org.organization_id } },
        }))
        .into_response()
    })
}

/// `HEAD /api/v2/tokens/me`: 200 while the token is valid (the layer answers 401 otherwise).
pub(crate) async fn token_check() -> StatusCode {
    StatusCode::OK
}

/// `DELETE /api/v2/tokens/me`: revokes the caller's token.
pub(crate) async fn token_revoke(
    State(shared): State<Arc<Shared>>,
    Extension(caller): Extension<Caller>,
) -> StatusCode {
    shared.with(|org| {
        if let Some(token) = org.tokens.get_mut(&caller.token) {
            token.revoked = true;
        }
    });
    StatusCode::NO_CONTENT
}
