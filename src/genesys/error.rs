//! `genesys::Error`: every way a call can fail, with the API's own words kept, and its
//! [`Failure`] class (the outcome table's one classification).

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::model::{ErrorBody, OAuthError};
use crate::queue::DeadReason;

/// The longest wait a server's `Retry-After` (seconds or HTTP date) or `inin-ratelimit-reset`
/// can impose: 180 s, where the official Genesys Cloud SDKs give up waiting. A longer value is
/// a misbehaving proxy or server, not a reason to stop the fleet for hours; the worker waits
/// this long, then one probe request asks again.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(180);

/// The token endpoint's name in errors (and how [`Error::class`] recognises its failures).
pub const TOKEN_ENDPOINT: &str = "POST /oauth/token";

/// The `inin-ratelimit-*` headers of a response.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RateLimitInfo {
    /// `inin-ratelimit-count`: requests used in the current window.
    pub count: Option<u64>,
    /// `inin-ratelimit-allowed`: the window's limit.
    pub allowed: Option<u64>,
    /// `inin-ratelimit-reset`: seconds until the window resets (at most
    /// [`MAX_RETRY_AFTER`]).
    pub reset_secs: Option<u64>,
}

impl RateLimitInfo {
    /// The wait until the window resets, capped at [`MAX_RETRY_AFTER`].
    pub fn reset(&self) -> Option<Duration> {
        self.reset_secs
            .map(|secs| cap_wait(Duration::from_secs(secs)))
    }
}

/// Why an attempt failed, as the worker's outcome table sees it: the one classification of
/// failures. [`Error::class`] gives it for a failed call; the worker raises the kinds no call
/// reports ([`Failure::Busy`], [`Failure::NotYetVisible`], a [`Failure::Permanent`] resolution).
#[derive(Debug, Clone, PartialEq)]
pub enum Failure {
    /// 429: the server asked to wait (`Retry-After`), every executor slows down.
    RateLimited {
        /// The server's `Retry-After`, if any.
        retry_after: Option<Duration>,
    },
    /// 408, 5xx, a timeout or reset of a call about one conversation: try again later.
    Transient,
    /// Not the job's fault: Genesys Cloud or the way to it is down (DNS, connect and TLS
    /// failures on any call, a token endpoint answering 5xx or unreachable), or most calls fail
    /// across conversations. The fleet pauses like after a 429; no attempt is spent.
    Outage,
    /// Another unit holds the participant this unit resolved to: try again shortly, free.
    Busy,
    /// A lookup found nothing yet (analytics lags live data); retry inside the lookup window.
    NotYetVisible {
        /// When the lookup window closes.
        window_ends: DateTime<Utc>,
        /// The reason to dead-letter with once the window has closed.
        reason: DeadReason,
    },
    /// The setup is wrong: credentials (a 401 after the one renewal the client tries), the
    /// base URL, a permission every request needs, a proxy or redirect between pdq and the API.
    Configuration,
    /// A 403 that concerns this conversation only.
    Forbidden,
    /// This request can never succeed (400, 404, 409, 413, 415, an unresolvable participant…).
    Permanent(DeadReason),
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
        /// The call that failed (`GET conversation`, `POST /oauth/token`…), without ids.
        endpoint: &'static str,
        /// What was wrong with it.
        detail: String,
    },
    /// No response: DNS, connect, TLS, timeout, reset.
    #[error("{endpoint}: {kind}: {detail}")]
    Transport {
        /// The call that failed (`GET conversation`, `POST /oauth/token`…), without ids.
        endpoint: &'static str,
        /// DNS, connect, TLS, timeout or other.
        kind: TransportKind,
        /// The root cause's text (no URL, no secret).
        detail: String,
    },
    /// The server answered with a redirect; pdq never follows one (a PATCH must not be turned
    /// into a GET, nor a body or token sent to another host).
    #[error(
        "{endpoint} answered {status} (a redirect to {}): pdq does not follow redirects; \
         check the base URL or proxy",
        .location_host.as_deref().unwrap_or("no location")
    )]
    Redirected {
        /// The call that failed (`GET conversation`, `POST /oauth/token`…), without ids.
        endpoint: &'static str,
        /// The 3xx status.
        status: u16,
        /// The host the `Location` header names (never its path or query).
        location_host: Option<String>,
    },
    /// A success status the endpoint never sends (the attributes PATCH answers 202 only): the
    /// answer came from something else, and the update is not known to be applied.
    #[error(
        "{endpoint}: the attributes endpoint answered {status}, not {expected}: check the base \
         URL or proxy"
    )]
    UnexpectedSuccess {
        /// The call that failed (`GET conversation`, `POST /oauth/token`…), without ids.
        endpoint: &'static str,
        /// The status received.
        status: u16,
        /// The status the endpoint answers.
        expected: u16,
    },
    /// The client is misconfigured (unknown region, missing credentials, bad URL).
    #[error("configuration: {0}")]
    Settings(super::SettingsError),
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
    /// The body as text: its first [`super::MAX_RAW_BYTES`] bytes, cut on a character
    /// boundary, invalid UTF-8 and NUL characters replaced by U+FFFD.
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
    /// The host name did not resolve.
    Dns,
    /// The connection could not be made.
    Connect,
    /// The TLS handshake failed (certificate, protocol).
    Tls,
    /// The request timed out.
    Timeout,
    /// Anything else (reset, malformed response).
    Other,
}

impl std::fmt::Display for TransportKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TransportKind::Dns => "the host name did not resolve",
            TransportKind::Connect => "could not connect",
            TransportKind::Tls => "the TLS handshake failed",
            TransportKind::Timeout => "no answer in time",
            TransportKind::Other => "the connection failed",
        })
    }
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
    pub fn class(&self) -> Failure {
        match self {
            Error::Http(http) => match http.status {
                429 => Failure::RateLimited {
                    retry_after: http.retry_after,
                },
                401 => Failure::Configuration,
                403 if is_missing_permission(&http.body) => Failure::Configuration,
                403 => Failure::Forbidden,
                408 | 500..=599 => Failure::Transient,
                status => Failure::Permanent(reason_for(status)),
            },
            Error::OAuth {
                status,
                retry_after,
                ..
            } => match status {
                429 => Failure::RateLimited {
                    retry_after: *retry_after,
                },
                408 | 500..=599 => Failure::Outage,
                _ => Failure::Configuration,
            },
            Error::Transport { endpoint, kind, .. } => match kind {
                TransportKind::Dns | TransportKind::Connect | TransportKind::Tls => Failure::Outage,
                _ if *endpoint == TOKEN_ENDPOINT => Failure::Outage,
                TransportKind::Timeout | TransportKind::Other => Failure::Transient,
            },
            Error::NotGenesys { .. }
            | Error::Redirected { .. }
            | Error::UnexpectedSuccess { .. }
            | Error::Settings(_) => Failure::Configuration,
        }
    }

    /// The HTTP status, when there was a response.
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Http(http) => Some(http.status),
            Error::OAuth { status, .. }
            | Error::Redirected { status, .. }
            | Error::UnexpectedSuccess { status, .. } => Some(*status),
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
                    .map(|mut value| {
                        super::text::scrub_json(&mut value);
                        value
                    })
                    .unwrap_or_else(|_| serde_json::Value::String(http.raw.clone())),
            ),
            Error::OAuth { error, .. } => serde_json::to_value(error).ok(),
            _ => None,
        }
    }

    /// What an operator should check or change, for the errors a setup problem causes (wrong
    /// credentials, a missing permission, a conversation out of the client's reach).
    pub fn advice(&self) -> Option<String> {
        if self.code() == Some("invalid_client") {
            return Some(
                "The client id is unknown or the secret is wrong: check GENESYS_CLIENT_ID / \
                 GENESYS_CLIENT_SECRET, and that the OAuth client uses the Client Credentials \
                 grant in this region's organization"
                    .to_owned(),
            );
        }
        match self.status() {
            Some(403) => {
                let permission = self
                    .missing_permission()
                    .unwrap_or_else(|| "a permission".into());
                Some(format!(
                    "The OAuth client lacks {permission}: client-credentials access comes from \
                     the client's roles and their divisions (scopes do not apply); add a role \
                     granting it on the conversation's division"
                ))
            }
            Some(404) => Some(
                "The conversation does not exist, or is in a division the client's roles do not \
                 cover"
                    .to_owned(),
            ),
            _ => None,
        }
    }

    /// The error, followed by its [`advice`](Error::advice) when it has some.
    pub fn with_advice(&self) -> String {
        match self.advice() {
            Some(advice) => format!("{self}. {advice}"),
            None => self.to_string(),
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

/// The dead-letter reason for a permanent HTTP status.
fn reason_for(status: u16) -> DeadReason {
    match status {
        400 => DeadReason::BadRequest,
        404 => DeadReason::NotFound,
        409 => DeadReason::Conflict,
        413 => DeadReason::PayloadTooLarge,
        415 => DeadReason::UnsupportedMediaType,
        _ => DeadReason::Rejected,
    }
}

fn is_missing_permission(body: &Option<ErrorBody>) -> bool {
    matches!(
        body.as_ref().and_then(|b| b.code.as_deref()),
        Some("missing.permissions" | "missing.any.permissions")
    )
}

/// Parses `Retry-After`: integer seconds, or an HTTP date; capped at [`MAX_RETRY_AFTER`].
/// Never panics, whatever the text.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // Too many digits for a u64 is still "a very long wait", not "no header".
        let seconds = value.parse::<u64>().unwrap_or(u64::MAX);
        return Some(cap_wait(Duration::from_secs(seconds)));
    }
    let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    let wait = at
        .with_timezone(&chrono::Utc)
        .signed_duration_since(chrono::Utc::now())
        .to_std()
        .unwrap_or_default();
    Some(cap_wait(wait))
}

/// `wait`, at most [`MAX_RETRY_AFTER`].
pub fn cap_wait(wait: Duration) -> Duration {
    wait.min(MAX_RETRY_AFTER)
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
        use Failure::*;
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
            (http(401, Some("bad.credentials")), Configuration),
            (http(403, Some("missing.permissions")), Configuration),
            (http(403, Some("missing.any.permissions")), Configuration),
            (http(403, Some("not.authorized")), Forbidden),
            (
                http(400, Some("invalid.value")),
                Permanent(DeadReason::BadRequest),
            ),
            (
                http(404, Some("not.found")),
                Permanent(DeadReason::NotFound),
            ),
            (http(409, Some("conflict")), Permanent(DeadReason::Conflict)),
            (http(413, None), Permanent(DeadReason::PayloadTooLarge)),
            (http(415, None), Permanent(DeadReason::UnsupportedMediaType)),
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

    fn transport(endpoint: &'static str, kind: TransportKind) -> Error {
        Error::Transport {
            endpoint,
            kind,
            detail: "Connection refused (os error 111)".into(),
        }
    }

    fn oauth(status: u16, code: &str) -> Error {
        Error::OAuth {
            status,
            error: OAuthError {
                error: Some(code.into()),
                ..OAuthError::default()
            },
            retry_after: Some(Duration::from_secs(4)),
        }
    }

    #[test]
    fn outages_are_told_apart_from_a_failed_request() {
        use Failure::*;
        use TransportKind::*;
        let api = "GET conversation";
        let table = [
            (transport(api, Dns), Outage),
            (transport(api, Connect), Outage),
            (transport(api, Tls), Outage),
            (transport(api, Timeout), Transient),
            (transport(api, Other), Transient),
            (transport(TOKEN_ENDPOINT, Dns), Outage),
            (transport(TOKEN_ENDPOINT, Timeout), Outage),
            (transport(TOKEN_ENDPOINT, Other), Outage),
            (oauth(500, "server_error"), Outage),
            (oauth(503, "temporarily_unavailable"), Outage),
            (oauth(408, "timeout"), Outage),
            (
                oauth(429, "too_many_requests"),
                RateLimited {
                    retry_after: Some(Duration::from_secs(4)),
                },
            ),
            (oauth(401, "invalid_client"), Configuration),
            (oauth(400, "unauthorized_client"), Configuration),
            (http(503, None), Transient),
            (
                Error::Redirected {
                    endpoint: api,
                    status: 303,
                    location_host: Some("proxy.example".into()),
                },
                Configuration,
            ),
            (
                Error::UnexpectedSuccess {
                    endpoint: api,
                    status: 200,
                    expected: 202,
                },
                Configuration,
            ),
        ];
        for (error, class) in table {
            assert_eq!(error.class(), class, "{error}");
        }
    }

    #[test]
    fn error_texts_are_plain_sentences() {
        let texts = [
            transport("GET conversation", TransportKind::Connect).to_string(),
            transport("GET conversation", TransportKind::Dns).to_string(),
            transport("GET conversation", TransportKind::Tls).to_string(),
            transport("GET conversation", TransportKind::Timeout).to_string(),
            transport("GET conversation", TransportKind::Other).to_string(),
            Error::Redirected {
                endpoint: "PATCH participant attributes",
                status: 307,
                location_host: Some("elsewhere.example:8443".into()),
            }
            .to_string(),
            Error::UnexpectedSuccess {
                endpoint: "PATCH participant attributes",
                status: 200,
                expected: 202,
            }
            .to_string(),
            oauth(503, "temporarily_unavailable").to_string(),
            http(404, Some("not.found")).to_string(),
        ];
        for text in &texts {
            let words: Vec<&str> = text.split(|c: char| !c.is_alphanumeric()).collect();
            for debug in ["Connect", "Dns", "Tls", "Timeout", "Other", "Some", "None"] {
                assert!(
                    !words.contains(&debug),
                    "{debug:?} (Debug output) in {text:?}"
                );
            }
            assert!(!text.contains('{'), "Debug output in {text:?}");
        }
        assert_eq!(
            texts[0],
            "GET conversation: could not connect: Connection refused (os error 111)"
        );
        assert!(texts[5].contains("307") && texts[5].contains("elsewhere.example:8443"));
        assert_eq!(
            texts[6],
            "PATCH participant attributes: the attributes endpoint answered 200, not 202: check \
             the base URL or proxy"
        );
    }

    #[test]
    fn retry_after_and_window_resets_are_capped() {
        assert_eq!(parse_retry_after("86400"), Some(MAX_RETRY_AFTER));
        assert_eq!(
            parse_retry_after("18446744073709551615"),
            Some(MAX_RETRY_AFTER)
        );
        assert_eq!(
            parse_retry_after("99999999999999999999999999"),
            Some(MAX_RETRY_AFTER)
        );
        assert_eq!(parse_retry_after("180"), Some(Duration::from_secs(180)));
        assert_eq!(parse_retry_after("-5"), None);
        assert_eq!(parse_retry_after(""), None);
        let next_year = (chrono::Utc::now() + chrono::Duration::days(365)).to_rfc2822();
        assert_eq!(parse_retry_after(&next_year), Some(MAX_RETRY_AFTER));
        let far = "Fri, 31 Dec 9999 23:59:59 GMT";
        assert_eq!(parse_retry_after(far), Some(MAX_RETRY_AFTER));
        let past = "Thu, 01 Jan 1970 00:00:00 GMT";
        assert_eq!(parse_retry_after(past), Some(Duration::ZERO));
        let reset = RateLimitInfo {
            reset_secs: Some(u64::MAX),
            ..RateLimitInfo::default()
        };
        assert_eq!(reset.reset(), Some(MAX_RETRY_AFTER));
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

    #[test]
    fn setup_errors_carry_advice_and_others_none() {
        let bad_client = oauth(401, "invalid_client");
        let advice = bad_client.advice().expect("advice for invalid_client");
        assert!(advice.contains("GENESYS_CLIENT_SECRET"), "{advice}");
        assert_eq!(bad_client.with_advice(), format!("{bad_client}. {advice}"));
        let forbidden = Error::Http(Box::new(HttpFailure {
            endpoint: "x",
            status: 403,
            body: Some(ErrorBody {
                code: Some("missing.permissions".into()),
                message_params: Some(
                    [(
                        "permissions".to_owned(),
                        "conversation:participant:wrapup".to_owned(),
                    )]
                    .into_iter()
                    .collect(),
                ),
                ..ErrorBody::default()
            }),
            raw: String::new(),
            correlation_id: None,
            retry_after: None,
            rate_limit: None,
        }));
        let advice = forbidden.advice().expect("advice for a 403");
        assert!(
            advice.contains("conversation:participant:wrapup"),
            "{advice}"
        );
        assert!(http(404, Some("not.found")).advice().is_some());
        assert_eq!(http(503, None).advice(), None);
        assert_eq!(http(503, None).with_advice(), http(503, None).to_string());
    }
}
