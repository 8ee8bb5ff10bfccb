//! The emulator's settings: every behaviour the API facts mark UNVERIFIED is a knob here, with
//! the documented default.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::faults::Faults;

/// An OAuth client the emulator accepts (client credentials grant).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClientSpec {
    /// Client id.
    pub id: String,
    /// Client secret.
    pub secret: String,
}

/// A request budget (`inin-ratelimit-*`, 429 past it).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct RateLimit {
    /// Requests per window.
    pub requests: u32,
    /// Window length in seconds (fixed windows).
    pub window_secs: u64,
    /// Count per token (the documented default) or per OAuth client.
    #[serde(default)]
    pub scope: RateLimitScope,
}

/// What a rate-limit budget is counted per.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RateLimitScope {
    /// Per access token (`client.credentials.token.rate.per.minute`).
    #[default]
    Token,
    /// Per OAuth client, across its tokens.
    Client,
}

/// The answer to an attributes PATCH on an ended conversation or disconnected participant.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum EndedBehaviour {
    /// 409 `conflict` (default).
    #[default]
    Conflict,
    /// 400 `bad.request`.
    BadRequest,
    /// 202, stored but invisible to analytics.
    Accepted,
}

/// The answer to a `null` attribute value.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum NullPolicy {
    /// 400 `invalid.value` (default).
    #[default]
    Reject,
    /// Store an empty string.
    StoreEmpty,
    /// Remove the key.
    DeleteKey,
}

/// Per-participant attribute limits (REST limits are undocumented; `None` turns one off).
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct AttributeLimits {
    /// Longest key, in characters.
    pub max_key_chars: Option<usize>,
    /// Longest value, in characters.
    pub max_value_chars: Option<usize>,
    /// Most keys per participant.
    pub max_keys: Option<usize>,
}

impl Default for AttributeLimits {
    fn default() -> Self {
        AttributeLimits {
            max_key_chars: Some(255),
            max_value_chars: Some(2_000),
            max_keys: Some(100),
        }
    }
}

/// Everything configurable.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct EmulatorConfig {
    /// Where to listen (port 0 picks a free port).
    pub bind: SocketAddr,
    /// Seed for fault injection, so runs repeat.
    pub seed: u64,
    /// Accepted OAuth clients.
    pub clients: Vec<ClientSpec>,
    /// Token lifetime in seconds (`expires_in`).
    pub token_lifetime_secs: u64,
    /// Status for bad client credentials (401, or 400 as some clients report).
    pub bad_credentials_status: u16,
    /// The request budget (`None` = unlimited).
    pub rate_limit: Option<RateLimit>,
    /// Injected faults.
    pub faults: Faults,
    /// PATCH on an ended conversation or disconnected participant.
    pub ended_conversation: EndedBehaviour,
    /// `null` values.
    pub null_value: NullPolicy,
    /// Request body limit in bytes (413 past it).
    pub max_request_bytes: usize,
    /// Attribute limits (400 `bad.request` past them).
    pub attribute_limits: AttributeLimits,
    /// `GET /api/v2/conversations` with a client-credentials token: 400 (true) or an empty list.
    pub list_requires_user: bool,
    /// Analytics sees changes this long after they happen.
    pub analytics_delay_ms: u64,
    /// An empty analytics result carries `"conversations": []` (true) or omits it (false).
    pub analytics_empty_array: bool,
    /// A GET shows a participant's previous attributes for this long after a PATCH.
    pub visibility_delay_ms: u64,
    /// The tutorial's `PATCH …/participants/{id}` with `attributes`: 400 (true) or ignored.
    pub reject_tutorial_patch: bool,
    /// PATCHes remembered per participant.
    pub history_cap: usize,
    /// Requests remembered in the request log.
    pub request_log_cap: usize,
    /// Applied PATCHes remembered in the organization-wide history (oldest dropped first).
    pub patch_log_cap: usize,
    /// Serve `/admin/…`.
    pub admin: bool,
    /// When set, every `/admin/…` request must carry `Authorization: Bearer <token>` (401
    /// otherwise). `pdq emulator` requires one off loopback.
    pub admin_token: Option<String>,
    /// The organization tokens belong to.
    pub organization_name: String,
}

impl Default for EmulatorConfig {
    fn default() -> Self {
        EmulatorConfig {
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            seed: 1,
            clients: vec![ClientSpec {
                id: super::DEMO_CLIENT_ID.to_owned(),
                secret: super::DEMO_CLIENT_SECRET.to_owned(),
            }],
            token_lifetime_secs: 86_400,
            bad_credentials_status: 401,
            rate_limit: Some(RateLimit {
                requests: 300,
                window_secs: 60,
                scope: RateLimitScope::Token,
            }),
            faults: Faults::default(),
            ended_conversation: EndedBehaviour::Conflict,
            null_value: NullPolicy::Reject,
            max_request_bytes: 512_000,
            attribute_limits: AttributeLimits::default(),
            list_requires_user: true,
            analytics_delay_ms: 0,
            analytics_empty_array: false,
            visibility_delay_ms: 0,
            reject_tutorial_patch: true,
            history_cap: 1_000,
            request_log_cap: 100_000,
            patch_log_cap: 200_000,
            admin: true,
            admin_token: None,
            organization_name: "pdq emulator org".to_owned(),
        }
    }
}
