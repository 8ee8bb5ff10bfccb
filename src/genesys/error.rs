//! `genesys::Error`: every way a call can fail, with the API's own words kept, and its class.

use std::time::Duration;

use super::model::{ErrorBody, OAuthError};

/// The `inin-ratelimit-*` headers of a response.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RateLimitInfo {
    /// `inin-ratelimit-count`: requests used in the current window.
    pub count: Option<u64>,
    /// `inin-ratelimit-allowed`: the window's limit.
    pub allowed: Option<u64>,
    /// `inin-ratelimit-reset`: seconds until the window resets.
    pub reset_secs: Option<u64>,
}

/// How the worker's outcome table treats an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Retry with backoff (408, 5xx, connect errors, timeouts, resets).
    Transient,
    /// 429: wait for `Retry-After`.
    RateLimited {
        /// The server's `Retry-After`.
        retry_after: Option<Duration>,
    },
    /// 401 after the one renewal the client already tried.
    Unauthorized,
    /// This request can never succeed (400, 404, 409, 413, 415, a 403 on one resource…).
    Permanent,
    /// The setup is wrong: credentials, base URL, a permission every request needs.
    Configuration,
}

/// A failed call to Genesys Cloud.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The API answered with an error status.
    #[error("{} answered {}{}", .0.endpoint, .0.status, describe(&.0.body))]
    Http(Box<HttpFailure>),
    /// The token endpoint refused the client credentials or failed.
    #[error("token request answered {status}: {}", oauth_text(.error))]
    OAuth {
        /// HTTP status.
        status: u16,
        /// The OAuth error body.
        error: OAuthError,
        /// `Retry-After`, if any.
        retry_after: Option<Duration>,
    },
    /// A response that is not what Genesys Cloud sends (wrong base URL, a proxy page…).
    #[error("{endpoint}: the response does not look like Genesys Cloud ({detail}); check the region or base URL")]
    NotGenesys {
        /// Which call.
        endpoint: &'static str,
        /// What was wrong with it.
        detail: String,
    },
    /// No response: connect error, timeout, reset.
    #[error("{endpoint}: {kind:?} error: {detail}")]
    Transport {
        /// Which call.
        endpoint: &'static str,
        /// Connect, timeout or other.
        kind: TransportKind,
        /// The underlying error's text.
        detail: String,
    },
    /// The client is misconfigured (unknown region, missing credentials, bad URL).
    #[error("configuration: {0}")]
    Settings(String),
}

/// An error response from the API.
#[derive(Debug)]
pub struct HttpFailure {
    /// Which call (route template, no ids).
    pub endpoint: &'static str,
    /// HTTP status.
    pub status: u16,
    /// The parsed `ErrorBody`, when the body was one.
    pub body: Option<ErrorBody>,
    /// The body as text (truncated to 2 KB).
    pub raw: String,
    /// `ININ-Correlation-Id`.
    pub correlation_id: Option<String>,
    /// `Retry-After`.
    pub retry_after: Option<Duration>,
    /// The rate-limit headers.
    pub rate_limit: Option<RateLimitInfo>,
}

/// Which kind of transport failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportKind {
    /// The connection could not be made.
    Connect,
    /// The request timed out.
    Timeout,
    /// Anything else (reset, malformed response).
    Other,
}

fn describe(body: &Option<ErrorBody>) -> String {
    match body {
        Some(b) => format!(
            ": {} ({})",
            b.message.as_deref().unwrap_or(""),
            b.code.as_deref().unwrap_or("no code")
        ),
        None => String::new(),
    }
}

fn oauth_text(error: &OAuthError) -> String {
    let what = error.error.as_deref().unwrap_or("error");
    let why = error
        .description
        .as_deref()
        .or(error.error_description.as_deref())
        .unwrap_or("");
    format!("{what} {why}").trim().to_owned()
}

impl Error {
    /// How the outcome table treats this error.
    pub fn class(&self) -> ErrorClass {
        match self {
            Error::Http(http) => match http.status {
                429 => ErrorClass::RateLimited {
                    retry_after: http.retry_after,
                },
                401 => ErrorClass::Unauthorized,
                403 if is_missing_permission(&http.body) => ErrorClass::Configuration,
                408 | 500..=599 => ErrorClass::Transient,
                _ => ErrorClass::Permanent,
            },
            Error::OAuth {
                status,
                retry_after,
                ..
            } => match status {
                429 => ErrorClass::RateLimited {
                    retry_after: *retry_after,
                },
                408 | 500..=599 => ErrorClass::Transient,
                _ => ErrorClass::Configuration,
            },
            Error::Transport { .. } => ErrorClass::Transient,
            Error::NotGenesys { .. } | Error::Settings(_) => ErrorClass::Configuration,
        }
    }

    /// The HTTP status, when there was a response.
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Http(http) => Some(http.status),
            Error::OAuth { status, .. } => Some(*status),
            _ => None,
        }
    }

    fn body(&self) -> Option<&ErrorBody> {
        match self {
            Error::Http(http) => http.body.as_ref(),
            _ => None,
        }
    }

    /// The error body's `code` (or the OAuth `error`).
    pub fn code(&self) -> Option<&str> {
        match self {
            Error::OAuth { error, .. } => error.error.as_deref(),
            _ => self.body()?.code.as_deref(),
        }
    }

    /// The error body's `message`.
    pub fn message(&self) -> Option<&str> {
        match self {
            Error::OAuth { error, .. } => error.description.as_deref(),
            _ => self.body()?.message.as_deref(),
        }
    }

    /// The error body's `contextId`.
    pub fn context_id(&self) -> Option<&str> {
        self.body()?.context_id.as_deref()
    }

    /// The `ININ-Correlation-Id` response header.
    pub fn correlation_id(&self) -> Option<&str> {
        match self {
            Error::Http(http) => http.correlation_id.as_deref(),
            _ => None,
        }
    }

    /// `Retry-After`.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Error::Http(http) => http.retry_after,
            Error::OAuth { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// The rate-limit headers of the response.
    pub fn rate_limit(&self) -> Option<&RateLimitInfo> {
        match self {
            Error::Http(http) => http.rate_limit.as_ref(),
            _ => None,
        }
    }

    /// The error body as JSON (for dead letters): parsed when it was JSON, else the text.
    pub fn body_json(&self) -> Option<serde_json::Value> {
        match self {
            Error::Http(http) if !http.raw.is_empty() => Some(
                serde_json::from_str(&http.raw)
                    .unwrap_or_else(|_| serde_json::Value::String(http.raw.clone())),
            ),
            Error::OAuth { error, .. } => serde_json::to_value(error).ok(),
            _ => None,
        }
    }

    /// The permission a 403 says is missing, if it names one.
    pub fn missing_permission(&self) -> Option<String> {
        let body = self.body()?;
        if let Some(permissions) = body
            .message_params
            .as_ref()
            .and_then(|p| p.get("permissions"))
        {
            return Some(permissions.clone());
        }
        let message = body.message.as_deref()?;
        let (_, tail) = message.split_once("permission(s):")?;
        Some(tail.trim().to_owned())
    }
}

fn is_missing_permission(body: &Option<ErrorBody>) -> bool {
    matches!(
        body.as_ref().and_then(|b| b.code.as_deref()),
        Some("missing.permissions" | "missing.any.permissions")
    )
}

/// Parses `Retry-After`: integer seconds, or an HTTP date.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    Some(
        (at.with_timezone(&chrono::Utc) - chrono::Utc::now())
            .to_std()
            .unwrap_or_default(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn http(status: u16, code: Option<&str>) -> Error {
        Error::Http(Box::new(HttpFailure {
            endpoint: "test",
            status,
            body: code.map(|c| ErrorBody {
                code: Some(c.to_owned()),
                ..ErrorBody::default()
            }),
            raw: String::new(),
            correlation_id: None,
            retry_after: Some(Duration::from_secs(9)),
            rate_limit: None,
        }))
    }

    #[test]
    fn classification_follows_the_outcome_table() {
        use ErrorClass::*;
        let rate = RateLimited {
            retry_after: Some(Duration::from_secs(9)),
        };
        let table = [
            (http(429, Some("too.many.requests.retry.after")), rate),
            (http(408, None), Transient),
            (http(500, None), Transient),
            (http(502, None), Transient),
            (http(503, None), Transient),
            (http(504, None), Transient),
            (http(401, Some("bad.credentials")), Unauthorized),
            (http(403, Some("missing.permissions")), Configuration),
            (http(403, Some("missing.any.permissions")), Configuration),
            (http(403, Some("not.authorized")), Permanent),
            (http(400, Some("invalid.value")), Permanent),
            (http(404, Some("not.found")), Permanent),
            (http(409, Some("conflict")), Permanent),
            (http(413, None), Permanent),
            (http(415, None), Permanent),
        ];
        for (error, class) in table {
            assert_eq!(error.class(), class, "{error}");
        }
        let bad_client = Error::OAuth {
            status: 401,
            error: OAuthError {
                error: Some("invalid_client".into()),
                ..OAuthError::default()
            },
            retry_after: None,
        };
        assert_eq!(bad_client.class(), Configuration);
        let not_genesys = Error::NotGenesys {
            endpoint: "x",
            detail: "HTML".into(),
        };
        assert_eq!(not_genesys.class(), Configuration);
        let timeout = Error::Transport {
            endpoint: "x",
            kind: TransportKind::Timeout,
            detail: "timed out".into(),
        };
        assert_eq!(timeout.class(), Transient);
    }

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        assert_eq!(parse_retry_after("42"), Some(Duration::from_secs(42)));
        let later = (chrono::Utc::now() + chrono::Duration::seconds(30)).to_rfc2822();
        let parsed = parse_retry_after(&later).unwrap();
        assert!(parsed > Duration::from_secs(25) && parsed <= Duration::from_secs(30));
        assert_eq!(parse_retry_after("soon"), None);
    }

    #[test]
    fn a_403_names_the_missing_permission() {
        let body: ErrorBody = serde_json::from_str(
            r#"{"message":"Unable to perform the requested action. You are missing the following permission(s): conversation:communication:view","code":"missing.permissions","status":403}"#,
        )
        .unwrap();
        let error = Error::Http(Box::new(HttpFailure {
            endpoint: "x",
            status: 403,
            body: Some(body),
            raw: String::new(),
            correlation_id: None,
            retry_after: None,
            rate_limit: None,
        }));
        assert_eq!(
            error.missing_permission().as_deref(),
            Some("conversation:communication:view")
        );
    }
}
