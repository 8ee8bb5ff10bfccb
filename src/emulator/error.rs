//! Genesys-shaped error responses (`ErrorBody`).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

/// An error the emulator answers with, rendered as the API's `ErrorBody`.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{status} {code}: {message}")]
pub(crate) struct ApiError {
    /// HTTP status.
    pub(crate) status: StatusCode,
    /// `code`, e.g. `not.found`.
    pub(crate) code: &'static str,
    /// `message`.
    pub(crate) message: String,
    /// `contextId` (the correlation id), filled in by the API layer.
    pub(crate) context_id: String,
    /// `Retry-After` for 429s.
    pub(crate) retry_after: Option<u64>,
    /// More fields of the body (`messageWithParams`, `messageParams`).
    pub(crate) extra: Option<Box<serde_json::Map<String, serde_json::Value>>>,
}

impl ApiError {
    /// An error with a status, code and message.
    pub(crate) fn new(status: u16, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            code,
            message: message.into(),
            context_id: String::new(),
            retry_after: None,
            extra: None,
        }
    }

    /// 403 `not.authorized`: the client may not act on this resource (e.g. its division).
    pub(crate) fn not_authorized() -> ApiError {
        ApiError::new(
            403,
            "not.authorized",
            "You are not authorized to perform the requested action.",
        )
    }

    /// 403 `missing.permissions`: the client's role lacks `permissions`.
    pub(crate) fn missing_permissions(permissions: &str) -> ApiError {
        let mut error = ApiError::new(
            403,
            "missing.permissions",
            format!("Unable to perform the requested action. You are missing the following permission(s): {permissions}"),
        );
        let mut extra = serde_json::Map::new();
        extra.insert(
            "messageWithParams".to_owned(),
            json!("Unable to perform the requested action. You are missing the following permission(s): {permissions}"),
        );
        extra.insert(
            "messageParams".to_owned(),
            json!({ "permissions": permissions }),
        );
        error.extra = Some(Box::new(extra));
        error
    }

    /// 404 `not.found`.
    pub(crate) fn not_found() -> ApiError {
        ApiError::new(404, "not.found", "The requested resource was not found.")
    }

    /// 400 `bad.request`.
    pub(crate) fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(400, "bad.request", message)
    }

    /// 429 with the normalized body.
    pub(crate) fn too_many_requests(retry_after: u64) -> ApiError {
        let mut error = ApiError::new(
            429,
            "too.many.requests.retry.after",
            format!(
                "Rate limit exceeded the maximum. Retry the request in [{retry_after}] seconds"
            ),
        );
        error.retry_after = Some(retry_after);
        error
    }

    /// The server error injected for `status`.
    pub(crate) fn server_error(status: u16) -> ApiError {
        match status {
            503 => ApiError::new(503, "service.unavailable", "Service Unavailable"),
            504 => ApiError::new(504, "request.timeout", "The request timed out."),
            502 => ApiError::new(502, "bad.gateway", "Bad Gateway"),
            other => ApiError::new(
                other,
                "internal.server.error",
                "The server encountered an unexpected condition which prevented it from fulfilling the request.",
            ),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({
            "message": self.message,
            "code": self.code,
            "status": self.status.as_u16(),
            "contextId": self.context_id,
            "details": [],
            "errors": [],
        });
        if let (Some(object), Some(extra)) = (body.as_object_mut(), &self.extra) {
            object.extend(extra.as_ref().clone());
        }
        let mut response = (self.status, Json(body)).into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert("retry-after", seconds.to_string().parse().expect("digits"));
        }
        response.extensions_mut().insert(self);
        response
    }
}

/// The emulator failed to start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The address could not be bound.
    #[error("cannot listen on {addr}")]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}
