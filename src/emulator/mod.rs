//! A local emulator of the Genesys Cloud endpoints pdq uses, faithful to the real API's paths,
//! JSON shapes, status codes, error bodies and rate-limit headers (see `docs/genesys-api.md`).
//!
//! Login and API are served on one base URL: point a client's API *and* login base URLs at
//! [`EmulatorHandle::base_url`]. Tests and the demo start it in-process on a random port;
//! `pdq emulator` serves it on a fixed port for users' CI.

mod admin;
mod analytics;
mod api;
mod config;
mod conversations;
mod error;
mod faults;
mod listener;
mod oauth;
mod org;
mod state;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, patch, post, put};
use axum::Router;
use secrecy::SecretString;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::genesys::GenesysSettings;

pub use config::{
    AttributeLimits, ClientSpec, EmulatorConfig, EndedBehaviour, NullPolicy, RateLimit,
    RateLimitScope,
};
use error::ApiError;
pub use error::Error;
pub use faults::{Faults, FaultsError};
pub use org::{RequestCount, RequestRecord};
pub use state::{
    AppliedPatch, ConversationSpec, CreatedConversation, CreatedParticipant, ParticipantSpec,
    PatchRecord,
};

use org::{Listening, Shared};

/// The demo OAuth client id the emulator accepts by default.
pub const DEMO_CLIENT_ID: &str = "pdq-demo";
/// The demo OAuth client secret.
pub const DEMO_CLIENT_SECRET: &str = "pdq-demo-secret";

/// The whole HTTP API (testable with `tower::ServiceExt::oneshot`).
fn router(shared: Arc<Shared>) -> Router {
    let api = Router::new()
        .route("/api/v2/conversations", get(conversations::list))
        .route("/api/v2/conversations/{id}", get(conversations::get))
        .route(
            "/api/v2/conversations/{id}/tags",
            put(conversations::put_tags),
        )
        .route(
            "/api/v2/conversations/{cid}/participants/{pid}",
            patch(conversations::patch_participant),
        )
        .route(
            "/api/v2/conversations/{cid}/participants/{pid}/attributes",
            patch(conversations::patch_attributes),
        )
        .route(
            "/api/v2/conversations/{media}/{cid}/participants/{pid}/attributes",
            patch(conversations::patch_media_attributes),
        )
        .route(
            "/api/v2/analytics/conversations/details/query",
            post(analytics::query),
        )
        .route(
            "/api/v2/tokens/me",
            get(oauth::token_info)
                .head(oauth::token_check)
                .delete(oauth::token_revoke),
        )
        .route_layer(axum::middleware::from_fn_with_state(
            shared.clone(),
            api::layer,
        ));
    let login = Router::new()
        .route("/oauth/token", post(oauth::token))
        .route_layer(axum::middleware::from_fn_with_state(
            shared.clone(),
            api::login_layer,
        ));
    let admin_on = shared.with(|org| org.config.admin);
    // A liveness probe that needs no credentials (container healthchecks), apart from the
    // admin API, which may need a token.
    let health = Router::new().route("/healthz", get(|| async { "ok\n" }));
    let mut app = api.merge(login).merge(health);
    if admin_on {
        app = app.merge(
            admin::routes().route_layer(axum::middleware::from_fn_with_state(
                shared.clone(),
                admin::token_layer,
            )),
        );
    }
    app.layer(DefaultBodyLimit::disable()).with_state(shared)
}

/// Starts emulators.
pub struct Emulator;

impl Emulator {
    /// Binds `config.bind` (default `127.0.0.1:0`) and serves until the last handle is dropped
    /// or [`EmulatorHandle::shutdown`] is called.
    pub async fn start(config: EmulatorConfig) -> Result<EmulatorHandle, Error> {
        let addr = config.bind;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| Error::Bind { addr, source })?;
        let local = listener
            .local_addr()
            .map_err(|source| Error::Bind { addr, source })?;
        let shared = Arc::new(Shared::new(config));
        let stop = CancellationToken::new();
        let control = shared.subscribe_listening();
        let (bound, listening) = watch::channel(true);
        let server = listener::Server {
            app: router(shared.clone()),
            addr: local,
            stop: stop.clone(),
            control,
            bound,
        };
        tokio::spawn(server.serve(listener));
        Ok(EmulatorHandle {
            inner: Arc::new(HandleInner {
                base_url: format!("http://{local}"),
                shared,
                stop,
                listening,
            }),
        })
    }
}

/// A running emulator: its base URL and typed admin operations.
#[derive(Clone)]
pub struct EmulatorHandle {
    inner: Arc<HandleInner>,
}

struct HandleInner {
    base_url: String,
    shared: Arc<Shared>,
    stop: CancellationToken,
    listening: watch::Receiver<bool>,
}

impl Drop for HandleInner {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl EmulatorHandle {
    /// `http://127.0.0.1:PORT`: the login and the API base URL.
    pub fn base_url(&self) -> String {
        self.inner.base_url.clone()
    }

    /// pdq's client settings for this emulator, as the demo client ([`DEMO_CLIENT_ID`]).
    pub fn client_settings(&self) -> GenesysSettings {
        GenesysSettings::builder()
            .api_url(self.base_url())
            .client_id(DEMO_CLIENT_ID)
            .client_secret(SecretString::from(DEMO_CLIENT_SECRET))
            .build()
            .expect("a loopback base URL and the demo credentials are valid settings")
    }

    /// The environment that points a `pdq` process at this emulator as the demo client
    /// (`GENESYS_API_URL`, `GENESYS_CLIENT_ID`, `GENESYS_CLIENT_SECRET`).
    pub fn client_env(&self) -> [(&'static str, String); 3] {
        [
            ("GENESYS_API_URL", self.base_url()),
            ("GENESYS_CLIENT_ID", DEMO_CLIENT_ID.to_owned()),
            ("GENESYS_CLIENT_SECRET", DEMO_CLIENT_SECRET.to_owned()),
        ]
    }

    fn shared(&self) -> &Shared {
        &self.inner.shared
    }

    /// Accepts another OAuth client.
    pub fn add_client(&self, id: &str, secret: &str) {
        self.shared().add_client(id.to_owned(), secret.to_owned());
    }

    /// Creates a conversation; returns its ids.
    pub fn create_conversation(&self, spec: ConversationSpec) -> CreatedConversation {
        admin::create_conversation(self.shared(), spec)
    }

    /// Ends a conversation (every participant disconnects); false when unknown.
    pub fn end_conversation(&self, id: Uuid) -> bool {
        self.shared().end_conversation(id)
    }

    /// Disconnects one participant; false when unknown.
    pub fn disconnect_participant(&self, cid: Uuid, pid: Uuid) -> bool {
        self.shared().disconnect(cid, pid)
    }

    /// Sets a conversation's external tag; false when unknown.
    pub fn set_external_tag(&self, id: Uuid, tag: &str) -> bool {
        self.shared().set_tag(id, tag)
    }

    /// A participant's attributes as stored now.
    pub fn attributes_of(&self, cid: Uuid, pid: Uuid) -> Option<BTreeMap<String, String>> {
        self.shared().attributes(cid, pid)
    }

    /// The PATCHes a participant received, oldest first, with arrival times.
    pub fn patch_history(&self, cid: Uuid, pid: Uuid) -> Vec<PatchRecord> {
        self.shared().history(cid, pid)
    }

    /// Every applied attributes PATCH, in the order applied (up to `patch_log_cap`).
    pub fn patches(&self) -> Vec<AppliedPatch> {
        self.patches_after(0, usize::MAX)
    }

    /// The applied PATCHes whose `seq` is above `after`, oldest first, at most `limit`.
    pub fn patches_after(&self, after: u64, limit: usize) -> Vec<AppliedPatch> {
        self.shared().patches_after(after, limit)
    }

    /// Makes every request on a conversation answer 403 `not.authorized` (or not); false when
    /// unknown.
    pub fn set_forbidden(&self, id: Uuid, forbidden: bool) -> bool {
        self.shared().set_forbidden(id, forbidden)
    }

    /// Closes the listener (new connections are refused) and drops open connections, until
    /// [`EmulatorHandle::start_listening`].
    pub async fn stop_listening(&self) {
        self.shared().set_listening(Listening::Stopped(None));
        self.wait_listening(false).await;
    }

    /// Listens again on the same address; returns once connections are accepted.
    pub async fn start_listening(&self) {
        self.shared().set_listening(Listening::Serving);
        self.wait_listening(true).await;
    }

    /// Stops listening for `duration`, then listens again on the same address by itself.
    pub async fn outage(&self, duration: Duration) {
        self.shared()
            .set_listening(Listening::Stopped(Some(Instant::now() + duration)));
        self.wait_listening(false).await;
    }

    /// True while the listener is open.
    pub fn is_listening(&self) -> bool {
        *self.inner.listening.borrow()
    }

    async fn wait_listening(&self, listening: bool) {
        let mut receiver = self.inner.listening.clone();
        let _ = tokio::time::timeout(
            Duration::from_secs(10),
            receiver.wait_for(|now| *now == listening),
        )
        .await;
    }

    /// Requests by route and status.
    pub fn request_counts(&self) -> Vec<RequestCount> {
        self.shared().counts()
    }

    /// How many requests of `route` (e.g. `PATCH /api/v2/conversations/{cid}/participants/{pid}/attributes`)
    /// got `status` (any status with `None`).
    pub fn count(&self, route: &str, status: Option<u16>) -> u64 {
        self.request_counts()
            .iter()
            .filter(|c| c.route == route && status.is_none_or(|s| s == c.status))
            .map(|c| c.count)
            .sum()
    }

    /// The most recent requests.
    pub fn request_log(&self) -> Vec<RequestRecord> {
        self.shared().request_log()
    }

    /// The injected faults (`GET /admin/faults`).
    pub fn faults(&self) -> Faults {
        self.shared().faults()
    }

    /// Replaces the injected faults (a storm starts now).
    pub fn set_faults(&self, faults: Faults) {
        self.shared().set_faults(faults);
    }

    /// Changes only the fault fields `patch` (a JSON object) gives, as `PATCH /admin/faults`
    /// does; returns the whole fault set.
    pub fn merge_faults(&self, patch: &serde_json::Value) -> Result<Faults, FaultsError> {
        let restart = ["storm_secs", "login_outage_secs"]
            .iter()
            .any(|field| patch.get(field).is_some());
        self.shared()
            .change_faults(|current| current.merged(patch).map(|merged| (merged, restart)))
    }

    /// Replaces the request budget (`None` = unlimited).
    pub fn set_rate_limit(&self, limit: Option<RateLimit>) {
        self.shared().set_rate_limit(limit);
    }

    /// Changes the configuration in place (ended-conversation answer, delays, limits…).
    pub fn configure(&self, change: impl FnOnce(&mut EmulatorConfig)) {
        self.shared().configure(change);
    }

    /// Revokes every token issued so far.
    pub fn revoke_tokens(&self) {
        self.shared().revoke_all();
    }

    /// Forgets conversations, tokens, counts and faults; keeps clients and limits.
    pub fn reset(&self) {
        self.shared().reset();
    }

    /// Stops serving.
    pub async fn shutdown(self) {
        self.inner.stop.cancel();
    }
}
