//! The Genesys Cloud Platform API client: OAuth client credentials, the conversation GET, the
//! participant-attributes PATCH and the analytics lookup by external tag.
//!
//! It knows HTTP and JSON, nothing about queues. Every error keeps the API's `ErrorBody`,
//! `ININ-Correlation-Id` and rate-limit headers, and says how the worker should treat it
//! ([`Failure`]).

mod auth;
mod error;
pub mod model;
pub mod region;
mod settings;
pub mod text;

use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::header::{HeaderMap, ACCEPT, AUTHORIZATION};
use reqwest::Method;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use url::Url;
use uuid::Uuid;

pub use error::{
    cap_wait, parse_retry_after, Error, Failure, HttpFailure, RateLimitInfo, TransportKind,
    MAX_RETRY_AFTER,
};
pub use settings::{is_loopback, GenesysSettings, GenesysSettingsBuilder, SettingsError};

use auth::{redirected, transport, TokenCache};
use model::{AnalyticsConversation, AnalyticsQueryResponse, Conversation, ErrorBody, TokenInfo};

/// A successful response.
#[derive(Debug, Clone)]
pub struct ApiResponse<T> {
    /// The parsed body.
    pub value: T,
    /// HTTP status.
    pub status: u16,
    /// `ININ-Correlation-Id`.
    pub correlation_id: Option<String>,
    /// The `inin-ratelimit-*` headers.
    pub rate_limit: Option<RateLimitInfo>,
    /// How long the call took.
    pub elapsed: Duration,
}

/// The API client: cheap to clone, one connection pool and one token for all clones.
#[derive(Clone)]
pub struct GenesysClient {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    api_base: Url,
    auth: TokenCache,
    request_timeout: Duration,
}

impl GenesysClient {
    /// Builds the client (rustls, certificate verification on, timeouts from the settings,
    /// redirects never followed: a 3xx is an error, for the token request too).
    ///
    /// Trusted roots: the built-in Mozilla roots *and* the system store (or `SSL_CERT_FILE` /
    /// `SSL_CERT_DIR`), so a company's TLS-inspecting proxy works once its CA is installed.
    /// Proxies come from `HTTPS_PROXY` / `HTTP_PROXY` / `ALL_PROXY` / `NO_PROXY` (never disabled).
    pub fn new(settings: GenesysSettings) -> Result<Self, Error> {
        let http = reqwest::Client::builder()
            .tls_built_in_webpki_certs(true)
            .tls_built_in_native_certs(true)
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(settings.connect_timeout)
            .timeout(settings.request_timeout)
            .https_only(!is_loopback(&settings.api_base) || !is_loopback(&settings.login_base))
            .user_agent(concat!("pdq/", env!("CARGO_PKG_VERSION")))
            .pool_max_idle_per_host(256)
            .build()
            .map_err(|e| SettingsError::HttpClient(e.to_string()))?;
        let auth = TokenCache::new(
            http.clone(),
            &settings.login_base,
            settings.client_id,
            settings.client_secret,
            settings.token_renew_margin,
        );
        Ok(GenesysClient {
            inner: Arc::new(Inner {
                http,
                api_base: settings.api_base,
                auth,
                request_timeout: settings.request_timeout,
            }),
        })
    }

    /// `GET /api/v2/conversations/{id}`.
    pub async fn get_conversation(&self, id: Uuid) -> Result<ApiResponse<Conversation>, Error> {
        let path = format!("/api/v2/conversations/{id}");
        let response = self
            .send(Method::GET, "GET conversation", &path, None)
            .await?;
        parse(response, "GET conversation")
    }

    /// `PATCH /api/v2/conversations/{cid}/participants/{pid}/attributes` with
    /// `{"attributes": {…}}`; the API answers 202 with an empty body, and only a 202 means
    /// applied (any other success is [`Error::UnexpectedSuccess`]).
    pub async fn patch_participant_attributes(
        &self,
        conversation_id: Uuid,
        participant_id: Uuid,
        attributes: &Map<String, Value>,
    ) -> Result<ApiResponse<()>, Error> {
        let path = format!(
            "/api/v2/conversations/{conversation_id}/participants/{participant_id}/attributes"
        );
        let body = serde_json::json!({ "attributes": attributes });
        let response = self
            .send(
                Method::PATCH,
                "PATCH participant attributes",
                &path,
                Some(&body),
            )
            .await?;
        if response.status != 202 {
            return Err(Error::UnexpectedSuccess {
                endpoint: "PATCH participant attributes",
                status: response.status,
                expected: 202,
            });
        }
        Ok(response.map(|_| ()))
    }

    /// Active conversations whose external tag is `tag` (analytics details query with
    /// `externalTag matches` and `conversationEnd notExists`).
    pub async fn find_active_conversations_by_external_tag(
        &self,
        tag: &str,
    ) -> Result<ApiResponse<Vec<AnalyticsConversation>>, Error> {
        let body = model::active_by_external_tag_query(tag, chrono::Utc::now());
        let path = "/api/v2/analytics/conversations/details/query";
        let response = self
            .send(
                Method::POST,
                "POST conversation details query",
                path,
                Some(&body),
            )
            .await?;
        let parsed: ApiResponse<AnalyticsQueryResponse> =
            parse(response, "POST conversation details query")?;
        Ok(parsed.map_value(|r| r.conversations))
    }

    /// `GET /api/v2/tokens/me`: the token's organization and OAuth client.
    pub async fn token_info(&self) -> Result<ApiResponse<TokenInfo>, Error> {
        let response = self
            .send(Method::GET, "GET tokens/me", "/api/v2/tokens/me", None)
            .await?;
        parse(response, "GET tokens/me")
    }

    /// Obtains a token (or reuses the cached one): checks the credentials.
    pub async fn probe_token(&self) -> Result<(), Error> {
        self.inner.auth.token().await.map(|_| ())
    }

    /// The longest any one request may take (connect included) before it is abandoned.
    pub fn request_timeout(&self) -> Duration {
        self.inner.request_timeout
    }

    /// How many OAuth tokens were fetched.
    pub fn token_renewals(&self) -> u64 {
        self.inner.auth.renewals()
    }

    /// Sends one API request with the cached token; on 401 renews the token once and retries
    /// once.
    async fn send(
        &self,
        method: Method,
        endpoint: &'static str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<ApiResponse<bytes::Bytes>, Error> {
        let url = self
            .inner
            .api_base
            .join(path)
            .map_err(SettingsError::ApiUrl)?;
        let mut renewed = false;
        loop {
            let token = self.inner.auth.token().await?;
            let started = Instant::now();
            let mut request = self
                .inner
                .http
                .request(method.clone(), url.clone())
                .header(AUTHORIZATION, format!("Bearer {}", token.expose()))
                .header(ACCEPT, "application/json");
            if let Some(body) = body {
                request = request.json(body);
            }
            let response = request.send().await.map_err(|e| transport(endpoint, &e))?;
            let status = response.status().as_u16();
            let headers = response.headers().clone();
            let bytes = response
                .bytes()
                .await
                .map_err(|e| transport(endpoint, &e))?;
            let elapsed = started.elapsed();
            let correlation_id = header(&headers, "inin-correlation-id");
            tracing::debug!(
                endpoint,
                status,
                correlation.id = correlation_id.as_deref(),
                elapsed_ms = elapsed.as_millis() as u64,
                "api call"
            );
            if status == 401 && !renewed {
                self.inner.auth.invalidate(&token).await;
                renewed = true;
                continue;
            }
            let rate_limit = rate_limit_of(&headers);
            if (300..400).contains(&status) {
                return Err(redirected(endpoint, status, &headers));
            }
            if !(200..300).contains(&status) {
                return Err(http_error(
                    endpoint,
                    status,
                    &headers,
                    &bytes,
                    correlation_id,
                    rate_limit,
                ));
            }
            return Ok(ApiResponse {
                value: bytes,
                status,
                correlation_id,
                rate_limit,
                elapsed,
            });
        }
    }
}

impl<T> ApiResponse<T> {
    fn map_value<U>(self, f: impl FnOnce(T) -> U) -> ApiResponse<U> {
        ApiResponse {
            value: f(self.value),
            status: self.status,
            correlation_id: self.correlation_id,
            rate_limit: self.rate_limit,
            elapsed: self.elapsed,
        }
    }

    fn map<U>(self, f: impl FnOnce(T) -> U) -> ApiResponse<U> {
        self.map_value(f)
    }
}

fn parse<T: DeserializeOwned>(
    response: ApiResponse<bytes::Bytes>,
    endpoint: &'static str,
) -> Result<ApiResponse<T>, Error> {
    let value = serde_json::from_slice(&response.value).map_err(|e| Error::NotGenesys {
        endpoint,
        // serde's message may quote the body's text.
        detail: text::kept(
            &format!("body is not the expected JSON: {e}"),
            MAX_RAW_BYTES,
        ),
    })?;
    Ok(response.map_value(|_| value))
}

fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    headers.get(name)?.to_str().ok().map(str::to_owned)
}

fn rate_limit_of(headers: &HeaderMap) -> Option<RateLimitInfo> {
    let number = |name: &str| header(headers, name)?.trim().parse::<u64>().ok();
    let info = RateLimitInfo {
        count: number("inin-ratelimit-count"),
        allowed: number("inin-ratelimit-allowed"),
        reset_secs: number("inin-ratelimit-reset").map(|s| s.min(MAX_RETRY_AFTER.as_secs())),
    };
    (info != RateLimitInfo::default()).then_some(info)
}

/// How much of an error body is kept as text ([`HttpFailure::raw`]), in bytes.
pub const MAX_RAW_BYTES: usize = 2_048;

fn http_error(
    endpoint: &'static str,
    status: u16,
    headers: &HeaderMap,
    bytes: &[u8],
    correlation_id: Option<String>,
    rate_limit: Option<RateLimitInfo>,
) -> Error {
    let body: Option<ErrorBody> = serde_json::from_slice(bytes).ok().map(ErrorBody::kept);
    let raw = text::kept(&String::from_utf8_lossy(bytes), MAX_RAW_BYTES);
    let looks_like_html = raw.trim_start().starts_with('<');
    if body.is_none() && looks_like_html && status != 429 && status < 500 {
        return Error::NotGenesys {
            endpoint,
            detail: format!("status {status} with an HTML body"),
        };
    }
    Error::Http(Box::new(HttpFailure {
        endpoint,
        status,
        body,
        raw,
        correlation_id,
        retry_after: header(headers, "retry-after").and_then(|v| parse_retry_after(&v)),
        rate_limit,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn failure(status: u16, bytes: &[u8]) -> Error {
        http_error(
            "PATCH participant attributes",
            status,
            &HeaderMap::new(),
            bytes,
            None,
            None,
        )
    }

    #[test]
    fn a_body_cut_inside_a_multi_byte_character_keeps_every_whole_character() {
        // Byte 2,048 is the second byte of "é".
        let text = format!("{}é and more", "a".repeat(2_047));
        let Error::Http(http) = failure(400, text.as_bytes()) else {
            panic!("an HTTP failure");
        };
        assert_eq!(http.raw, "a".repeat(2_047));
        let json = format!(
            r#"{{"message":"{}","code":"bad.request"}}"#,
            "é".repeat(1_500)
        );
        let error = failure(400, json.as_bytes());
        assert_eq!(error.code(), Some("bad.request"));
        assert!(error.message().unwrap().len() <= MAX_RAW_BYTES);
        assert!(error.body_json().is_some());
    }

    #[test]
    fn nul_characters_from_the_network_never_reach_what_is_kept() {
        let error = failure(
            400,
            br#"{"message":"a\u0000b","code":"x\u0000","details":[{"d":"\u0000"}]}"#,
        );
        assert_eq!(error.message(), Some("a\u{FFFD}b"));
        assert!(!error.body_json().unwrap().to_string().contains("\\u0000"));
        let Error::Http(http) = failure(500, b"raw\0text") else {
            panic!("an HTTP failure");
        };
        assert_eq!(http.raw, "raw\u{FFFD}text");
    }

    proptest! {
        #[test]
        fn any_error_body_is_kept_without_a_panic(
            bytes in proptest::collection::vec(any::<u8>(), 0..4_200),
            status in prop_oneof![Just(400u16), Just(404), Just(409), Just(429), Just(500), Just(503)],
        ) {
            let error = failure(status, &bytes);
            let _ = error.to_string();
            let _ = error.with_advice();
            for text in [error.message(), error.code(), error.context_id()].into_iter().flatten() {
                prop_assert!(text.len() <= MAX_RAW_BYTES && !text.contains('\0'));
            }
            if let Some(body) = error.body_json() {
                prop_assert!(!body.to_string().contains("\\u0000"));
            }
            if let Error::Http(http) = &error {
                prop_assert!(http.raw.len() <= MAX_RAW_BYTES);
                prop_assert!(!http.raw.contains('\0'));
                let lossy = String::from_utf8_lossy(&bytes).replace('\0', "\u{FFFD}");
                prop_assert!(lossy.starts_with(&http.raw));
            }
        }

        #[test]
        fn any_json_error_body_is_kept_without_a_panic(
            message in any::<String>(),
            filler in 0usize..2_100,
        ) {
            let body = serde_json::json!({
                "message": format!("{}{message}", "x".repeat(filler)),
                "code": message.clone(),
                "messageParams": { message.clone(): message.clone() },
            });
            let error = failure(400, body.to_string().as_bytes());
            prop_assert!(error.message().is_some_and(|m| m.len() <= MAX_RAW_BYTES && !m.contains('\0')));
            if let Some(body) = error.body_json() {
                prop_assert!(!body.to_string().contains("\\u0000"));
            }
        }
    }
}
