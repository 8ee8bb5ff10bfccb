//! What the API answered when it refused a job: the columns a dead letter keeps of the answer.

use serde::Serialize;
use sqlx::FromRow;

/// The API's answer to a refused request, as pdq stores it with a dead letter (all empty when
/// the job failed before any answer, e.g. `expired` or `participant_not_found`).
#[derive(Debug, Clone, Default, PartialEq, FromRow, Serialize)]
pub struct ApiRefusal {
    /// The HTTP status.
    pub http_status: Option<i32>,
    /// The error body's `code` (`not.found`, `conversation.ended`, …).
    pub error_code: Option<String>,
    /// The error body's `message`.
    pub error_message: Option<String>,
    /// The error body's `contextId`.
    pub context_id: Option<String>,
    /// The `ININ-Correlation-Id` response header.
    pub correlation_id: Option<String>,
    /// The whole error body.
    pub error_body: Option<serde_json::Value>,
}
