//! OAuth client credentials: one token per process, renewed before expiry, single-flight.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use secrecy::{ExposeSecret, SecretString};
use tokio::sync::Mutex;
use url::Url;

use reqwest::header::{HeaderMap, LOCATION};

use super::error::{parse_retry_after, TransportKind, TOKEN_ENDPOINT};
use super::model::{OAuthError, TokenResponse};
use super::Error;

/// A cached bearer token.
#[derive(Clone)]
pub struct Token {
    secret: SecretString,
    expires_at: Instant,
    lifetime: Duration,
}

impl Token {
    /// The bearer value (only for the Authorization header).
    pub fn expose(&self) -> &str {
        self.secret.expose_secret()
    }
}

/// Fetches and caches the token; concurrent callers wait for one renewal.
pub struct TokenCache {
    http: reqwest::Client,
    token_url: Url,
    client_id: String,
    client_secret: SecretString,
    margin: Duration,
    current: Mutex<Option<Token>>,
    renewals: AtomicU64,
}

impl TokenCache {
    /// A cache for these credentials.
    pub fn new(
        http: reqwest::Client,
        login_base: &Url,
        client_id: String,
        client_secret: SecretString,
        margin: Duration,
    ) -> Self {
        let token_url = login_base.join("/oauth/token").expect("valid base URL");
        TokenCache {
            http,
            token_url,
            client_id,
            client_secret,
            margin,
            current: Mutex::new(None),
            renewals: AtomicU64::new(0),
        }
    }

    /// A valid token, renewed first when it expires within the margin.
    pub async fn token(&self) -> Result<Token, Error> {
        let mut current = self.current.lock().await;
        if let Some(token) = current.as_ref() {
            // Renew `margin` early, but never more than a quarter of a short token's lifetime.
            let margin = self.margin.min(token.lifetime / 4);
            if token.expires_at > Instant::now() + margin {
                return Ok(token.clone());
            }
        }
        let token = self.fetch().await?;
        *current = Some(token.clone());
        Ok(token)
    }

    /// Drops `failed` (a token the API refused) so the next call renews; a token already
    /// replaced by another caller is left alone, so many 401s cause one renewal.
    pub async fn invalidate(&self, failed: &Token) {
        let mut current = self.current.lock().await;
        if current
            .as_ref()
            .is_some_and(|t| t.expose() == failed.expose())
        {
            *current = None;
        }
    }

    /// How many tokens were fetched.
    pub fn renewals(&self) -> u64 {
        self.renewals.load(Ordering::Relaxed)
    }

    async fn fetch(&self) -> Result<Token, Error> {
        let response = self
            .http
            .post(self.token_url.clone())
            .basic_auth(&self.client_id, Some(self.client_secret.expose_secret()))
            .form(&[("grant_type", "client_credentials")])
            .send()
            .await
            .map_err(|e| transport(TOKEN_ENDPOINT, &e))?;
        let status = response.status().as_u16();
        if (300..400).contains(&status) {
            return Err(redirected(TOKEN_ENDPOINT, status, response.headers()));
        }
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        let body = response
            .bytes()
            .await
            .map_err(|e| transport(TOKEN_ENDPOINT, &e))?;
        if status != 200 {
            let error = serde_json::from_slice::<OAuthError>(&body)
                .unwrap_or_default()
                .kept();
            return Err(Error::OAuth {
                status,
                error,
                retry_after,
            });
        }
        let parsed: TokenResponse =
            serde_json::from_slice(&body).map_err(|e| Error::NotGenesys {
                endpoint: TOKEN_ENDPOINT,
                detail: format!("token response is not OAuth JSON: {e}"),
            })?;
        self.renewals.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(expires_in = parsed.expires_in, "obtained an OAuth token");
        let lifetime = Duration::from_secs(parsed.expires_in.unwrap_or(86_400)).min(MAX_LIFETIME);
        Ok(Token {
            secret: SecretString::from(parsed.access_token),
            expires_at: Instant::now() + lifetime,
            lifetime,
        })
    }
}

/// A token is renewed after a day at the latest, whatever `expires_in` said (and an absurd
/// `expires_in` cannot overflow the clock).
const MAX_LIFETIME: Duration = Duration::from_secs(86_400);

/// A reqwest failure as a transport error: the kind, and the root cause's own words (never the
/// URL, never a header).
pub fn transport(endpoint: &'static str, error: &reqwest::Error) -> Error {
    let causes = causes(error);
    let mentions = |needles: &[&str]| {
        causes.iter().any(|cause| {
            let cause = cause.to_ascii_lowercase();
            needles.iter().any(|needle| cause.contains(needle))
        })
    };
    let kind = if error.is_timeout() {
        TransportKind::Timeout
    } else if mentions(&[
        "dns error",
        "failed to lookup address",
        "name or service not known",
        "name resolution",
        "no address associated",
        "nodename nor servname",
    ]) {
        TransportKind::Dns
    } else if mentions(&["tls", "certificate", "handshake", "rustls"]) {
        TransportKind::Tls
    } else if error.is_connect() {
        TransportKind::Connect
    } else {
        TransportKind::Other
    };
    let detail = causes
        .last()
        .cloned()
        .unwrap_or_else(|| "no detail".to_owned());
    Error::Transport {
        endpoint,
        kind,
        detail: without_url(&detail),
    }
}

/// The texts of `error` and its sources, outermost first.
fn causes(error: &reqwest::Error) -> Vec<String> {
    let mut texts = vec![error.to_string()];
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        texts.push(cause.to_string());
        source = cause.source();
    }
    texts
}

/// reqwest's own text names the URL ("error sending request for url (…)"); keep only the rest.
fn without_url(text: &str) -> String {
    match text.split_once(" for url (") {
        Some((head, _)) => head.to_owned(),
        None => text.to_owned(),
    }
}

/// A 3xx answer as an error naming the status and the host of its `Location` (not the path or
/// query, which may carry anything).
pub fn redirected(endpoint: &'static str, status: u16, headers: &HeaderMap) -> Error {
    let location_host = headers
        .get(LOCATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| Url::parse(value).ok())
        .and_then(|url| {
            let host = url.host_str()?.to_owned();
            Some(match url.port() {
                Some(port) => format!("{host}:{port}"),
                None => host,
            })
        })
        .or_else(|| {
            headers
                .contains_key(LOCATION)
                .then(|| "the same host".to_owned())
        });
    Error::Redirected {
        endpoint,
        status,
        location_host,
    }
}
