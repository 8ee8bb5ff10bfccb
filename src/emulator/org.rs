//! The in-memory organization ([`Org`]): configuration, OAuth clients and tokens, rate-limit
//! windows, conversations, the request log and the PATCH history; and [`Shared`], the handle
//! every route and [`super::EmulatorHandle`] hold, which takes the organization's one lock
//! inside its methods.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use rand::rngs::SmallRng;
use rand::SeedableRng;
use serde::Serialize;
use uuid::Uuid;

use super::config::{EmulatorConfig, RateLimit, RateLimitScope};
use super::faults::Faults;
use super::state::{AppliedPatch, ConversationRec, PatchRecord};

/// Whether the emulator accepts connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Listening {
    /// The listener is open.
    Serving,
    /// The listener is closed (connections refused, open ones dropped) until this instant,
    /// or until told to serve again (`None`).
    Stopped(Option<Instant>),
}

/// An issued access token.
#[derive(Debug, Clone)]
pub(crate) struct TokenRec {
    /// The client it was issued to.
    pub(crate) client_id: String,
    /// When it stops working.
    pub(crate) expires_at: Instant,
    /// Revoked by `DELETE /api/v2/tokens/me` or the admin API.
    pub(crate) revoked: bool,
}

/// Requests by route and status.
#[derive(Debug, Clone, Serialize)]
pub struct RequestCount {
    /// Method and route template (`PATCH /api/v2/conversations/{id}/participants/{id}/attributes`).
    pub route: String,
    /// HTTP status (0 for a reset or a hang).
    pub status: u16,
    /// How many.
    pub count: u64,
}

/// One request in the log.
#[derive(Debug, Clone, Serialize)]
pub struct RequestRecord {
    /// Arrival time.
    pub at: DateTime<Utc>,
    /// Method and route template.
    pub route: String,
    /// HTTP status (0 for a reset or a hang).
    pub status: u16,
    /// The OAuth client, when the token was valid.
    pub client_id: Option<String>,
}

/// Everything the emulator keeps.
pub(crate) struct Org {
    pub(super) config: EmulatorConfig,
    pub(super) storm_until: Option<Instant>,
    pub(super) clients: HashMap<String, String>,
    pub(super) tokens: HashMap<String, TokenRec>,
    pub(super) windows: HashMap<String, (Instant, u32)>,
    pub(super) conversations: HashMap<Uuid, ConversationRec>,
    pub(super) counts: HashMap<(String, u16), u64>,
    pub(super) log: VecDeque<RequestRecord>,
    pub(super) rng: SmallRng,
    pub(super) organization_id: Uuid,
    pub(super) patches: VecDeque<AppliedPatch>,
    pub(super) next_patch: u64,
    pub(super) login_outage_until: Option<Instant>,
    pub(super) listening: tokio::sync::watch::Sender<Listening>,
}

/// The organization behind its lock. Every method takes the lock and releases it before
/// returning, so no guard outlives a call (nor crosses an `.await`).
pub(crate) struct Shared {
    org: Mutex<Org>,
}

/// The rate-limit headers for one response.
#[derive(Debug, Clone, Copy)]
pub(crate) struct WindowInfo {
    /// Requests counted in the window, this one included.
    pub(crate) count: u32,
    /// The window's limit.
    pub(crate) allowed: u32,
    /// Seconds until the window resets.
    pub(crate) reset_secs: u64,
}

impl Shared {
    /// A handle on a fresh organization from `config`.
    pub(crate) fn new(config: EmulatorConfig) -> Shared {
        Shared {
            org: Mutex::new(Org::new(config)),
        }
    }

    /// Runs `f` on the locked organization. `f` is synchronous, so the guard is released
    /// before any `.await` of the caller.
    pub(crate) fn with<R>(&self, f: impl FnOnce(&mut Org) -> R) -> R {
        let mut org = self.org.lock().expect("emulator state lock");
        f(&mut org)
    }

    /// Counts and logs one finished request.
    pub(crate) fn record(&self, route: &str, status: u16, client_id: Option<String>) {
        self.with(|org| org.record(route, status, client_id));
    }

    /// Request counts by route and status.
    pub(crate) fn counts(&self) -> Vec<RequestCount> {
        self.with(|org| org.counts())
    }

    /// The most recent requests, oldest first.
    pub(crate) fn request_log(&self) -> Vec<RequestRecord> {
        self.with(|org| org.log.iter().cloned().collect())
    }

    /// A participant's attributes as stored now.
    pub(crate) fn attributes(&self, cid: Uuid, pid: Uuid) -> Option<BTreeMap<String, String>> {
        self.with(|org| org.attributes(cid, pid))
    }

    /// The applied PATCHes with `seq` above `after`, oldest first, at most `limit`.
    pub(crate) fn patches_after(&self, after: u64, limit: usize) -> Vec<AppliedPatch> {
        self.with(|org| org.patches_after(after, limit))
    }

    /// The PATCHes a participant received, oldest first (empty when unknown).
    pub(crate) fn history(&self, cid: Uuid, pid: Uuid) -> Vec<PatchRecord> {
        self.with(|org| {
            org.conversations
                .get(&cid)
                .and_then(|c| c.participants.iter().find(|p| p.id == pid))
                .map(|p| p.history.iter().cloned().collect())
                .unwrap_or_default()
        })
    }

    /// Accepts another OAuth client (or replaces its secret).
    pub(crate) fn add_client(&self, id: String, secret: String) {
        self.with(|org| org.clients.insert(id, secret));
    }

    /// Revokes every token issued so far.
    pub(crate) fn revoke_all(&self) {
        self.with(Org::revoke_all);
    }

    /// Adds a conversation.
    pub(crate) fn insert_conversation(&self, id: Uuid, conversation: ConversationRec) {
        self.with(|org| org.conversations.insert(id, conversation));
    }

    /// Ends a conversation (every participant disconnects); false when unknown.
    pub(crate) fn end_conversation(&self, id: Uuid) -> bool {
        self.with(|org| org.conversations.get_mut(&id).map(|c| c.end()).is_some())
    }

    /// Disconnects one participant; false when unknown.
    pub(crate) fn disconnect(&self, cid: Uuid, pid: Uuid) -> bool {
        self.with(|org| {
            let Some(participant) = org
                .conversations
                .get_mut(&cid)
                .and_then(|c| c.participant_mut(pid))
            else {
                return false;
            };
            participant
                .ended
                .get_or_insert((Utc::now(), Instant::now()));
            true
        })
    }

    /// Sets a conversation's external tag, remembering the previous one; false when unknown.
    pub(crate) fn set_tag(&self, id: Uuid, tag: &str) -> bool {
        self.with(|org| {
            let Some(conversation) = org.conversations.get_mut(&id) else {
                return false;
            };
            conversation.previous_tag = Some((Instant::now(), conversation.tag.take()));
            conversation.tag = Some(tag.to_owned());
            true
        })
    }

    /// Makes every request on a conversation answer 403 (or not); false when unknown.
    pub(crate) fn set_forbidden(&self, id: Uuid, forbidden: bool) -> bool {
        self.with(|org| {
            org.conversations
                .get_mut(&id)
                .map(|c| c.forbidden = forbidden)
                .is_some()
        })
    }

    /// Opens or closes the listener.
    pub(crate) fn set_listening(&self, state: Listening) {
        self.with(|org| org.listening.send_replace(state));
    }

    /// Follows the listener's wanted state.
    pub(crate) fn subscribe_listening(&self) -> tokio::sync::watch::Receiver<Listening> {
        self.with(|org| org.listening.subscribe())
    }

    /// The injected faults.
    pub(crate) fn faults(&self) -> Faults {
        self.with(|org| org.config.faults.clone())
    }

    /// Replaces the injected faults (a storm and a login outage start now).
    pub(crate) fn set_faults(&self, faults: Faults) {
        self.with(|org| {
            org.config.faults = faults;
            org.restart_storm();
        });
    }

    /// Changes the injected faults in one step; a storm and a login outage start again only
    /// when `change` says so (it set `storm_secs` or `login_outage_secs`).
    pub(crate) fn change_faults<E>(
        &self,
        change: impl FnOnce(&Faults) -> Result<(Faults, bool), E>,
    ) -> Result<Faults, E> {
        self.with(|org| {
            let (faults, restart) = change(&org.config.faults)?;
            org.config.faults = faults.clone();
            if restart {
                org.restart_storm();
            }
            Ok(faults)
        })
    }

    /// Replaces the request budget (`None` = unlimited).
    pub(crate) fn set_rate_limit(&self, limit: Option<RateLimit>) {
        self.with(|org| org.config.rate_limit = limit);
    }

    /// Changes the configuration in place.
    pub(crate) fn configure(&self, change: impl FnOnce(&mut EmulatorConfig)) {
        self.with(|org| change(&mut org.config));
    }

    /// Forgets conversations, tokens, counts and faults; keeps clients and limits.
    pub(crate) fn reset(&self) {
        self.with(|org| {
            org.conversations.clear();
            org.tokens.clear();
            org.windows.clear();
            org.counts.clear();
            org.log.clear();
            org.patches.clear();
            org.config.faults = Faults::default();
            org.storm_until = None;
            org.login_outage_until = None;
        });
    }
}

impl Org {
    /// A fresh organization from `config`.
    pub(crate) fn new(config: EmulatorConfig) -> Org {
        let clients = config
            .clients
            .iter()
            .map(|c| (c.id.clone(), c.secret.clone()))
            .collect();
        let storm_until = storm_deadline(&config);
        let login_outage_until = login_outage_deadline(&config);
        Org {
            patches: VecDeque::new(),
            next_patch: 1,
            login_outage_until,
            listening: tokio::sync::watch::Sender::new(Listening::Serving),
            rng: SmallRng::seed_from_u64(config.seed),
            storm_until,
            clients,
            tokens: HashMap::new(),
            windows: HashMap::new(),
            conversations: HashMap::new(),
            counts: HashMap::new(),
            log: VecDeque::new(),
            organization_id: Uuid::from_u128(0x0a0a0a0a_0000_4000_8000_000000000001),
            config,
        }
    }

    /// Issues a token to `client_id`.
    pub(crate) fn issue_token(&mut self, client_id: &str) -> (String, u64) {
        let now = Instant::now();
        if self.tokens.len() > 10_000 {
            self.tokens.retain(|_, t| t.expires_at > now && !t.revoked);
        }
        let token = format!("{}{}", Uuid::new_v4().simple(), Uuid::new_v4().simple());
        let lifetime = self.config.token_lifetime_secs;
        self.tokens.insert(
            token.clone(),
            TokenRec {
                client_id: client_id.to_owned(),
                expires_at: now + Duration::from_secs(lifetime),
                revoked: false,
            },
        );
        (token, lifetime)
    }

    /// The client a bearer token belongs to, if it is valid now.
    pub(crate) fn check_token(&self, token: &str) -> Option<String> {
        let record = self.tokens.get(token)?;
        (!record.revoked && record.expires_at > Instant::now()).then(|| record.client_id.clone())
    }

    /// Revokes every token issued so far.
    pub(crate) fn revoke_all(&mut self) {
        for token in self.tokens.values_mut() {
            token.revoked = true;
        }
    }

    /// Counts one request against the budget of `token` / `client`; `Err(retry_after)` past it.
    pub(crate) fn count_request(
        &mut self,
        token: &str,
        client: &str,
    ) -> Result<WindowInfo, (u64, WindowInfo)> {
        let Some(limit) = self.config.rate_limit else {
            return Ok(WindowInfo {
                count: 0,
                allowed: u32::MAX,
                reset_secs: 60,
            });
        };
        let key = match limit.scope {
            RateLimitScope::Token => token,
            RateLimitScope::Client => client,
        };
        let info = advance_window(&mut self.windows, key, limit);
        if info.count > info.allowed {
            Err((info.reset_secs.max(1), info))
        } else {
            Ok(info)
        }
    }

    /// Counts and logs one finished request.
    pub(crate) fn record(&mut self, route: &str, status: u16, client_id: Option<String>) {
        *self.counts.entry((route.to_owned(), status)).or_default() += 1;
        if self.config.request_log_cap == 0 {
            return;
        }
        if self.log.len() >= self.config.request_log_cap {
            self.log.pop_front();
        }
        self.log.push_back(RequestRecord {
            at: Utc::now(),
            route: route.to_owned(),
            status,
            client_id,
        });
    }

    /// Request counts by route and status.
    pub(crate) fn counts(&self) -> Vec<RequestCount> {
        let mut counts: Vec<RequestCount> = self
            .counts
            .iter()
            .map(|((route, status), count)| RequestCount {
                route: route.clone(),
                status: *status,
                count: *count,
            })
            .collect();
        counts.sort_by(|a, b| (&a.route, a.status).cmp(&(&b.route, b.status)));
        counts
    }

    /// A participant's attributes as stored now.
    pub(crate) fn attributes(&self, cid: Uuid, pid: Uuid) -> Option<BTreeMap<String, String>> {
        let conversation = self.conversations.get(&cid)?;
        let participant = conversation.participants.iter().find(|p| p.id == pid)?;
        Some(participant.attributes.clone())
    }

    /// Applies the faults' storm and login-outage settings from now on.
    pub(crate) fn restart_storm(&mut self) {
        self.storm_until = storm_deadline(&self.config);
        self.login_outage_until = login_outage_deadline(&self.config);
    }

    /// True while the login endpoint is out.
    pub(crate) fn login_out(&self) -> bool {
        self.login_outage_until
            .is_some_and(|until| until > Instant::now())
    }

    /// Appends an applied PATCH to the organization-wide history; returns its `seq`.
    pub(crate) fn record_patch(
        &mut self,
        conversation_id: Uuid,
        participant_id: Uuid,
        attributes: BTreeMap<String, String>,
    ) -> u64 {
        let seq = self.next_patch;
        self.next_patch += 1;
        if self.config.patch_log_cap == 0 {
            return seq;
        }
        if self.patches.len() >= self.config.patch_log_cap {
            self.patches.pop_front();
        }
        self.patches.push_back(AppliedPatch {
            seq,
            at: Utc::now(),
            conversation_id,
            participant_id,
            attributes,
            status: 202,
        });
        seq
    }

    /// Records the status the client really got for the applied PATCH `seq`.
    pub(crate) fn set_patch_status(&mut self, seq: u64, status: u16) {
        let first = self.patches.front().map_or(0, |p| p.seq);
        if let Some(patch) = seq
            .checked_sub(first)
            .and_then(|index| self.patches.get_mut(index as usize))
        {
            patch.status = status;
        }
    }

    /// The applied PATCHes with `seq` above `after`, oldest first, at most `limit`.
    pub(crate) fn patches_after(&self, after: u64, limit: usize) -> Vec<AppliedPatch> {
        let first = self.patches.front().map_or(0, |p| p.seq);
        let skip = (after + 1).saturating_sub(first) as usize;
        self.patches
            .iter()
            .skip(skip)
            .take(limit)
            .cloned()
            .collect()
    }
}

fn storm_deadline(config: &EmulatorConfig) -> Option<Instant> {
    (config.faults.storm_secs > 0)
        .then(|| Instant::now() + Duration::from_secs(config.faults.storm_secs))
}

fn login_outage_deadline(config: &EmulatorConfig) -> Option<Instant> {
    (config.faults.login_outage_secs > 0)
        .then(|| Instant::now() + Duration::from_secs(config.faults.login_outage_secs))
}

fn advance_window(
    windows: &mut HashMap<String, (Instant, u32)>,
    key: &str,
    limit: RateLimit,
) -> WindowInfo {
    let now = Instant::now();
    let window = Duration::from_secs(limit.window_secs.max(1));
    if windows.len() > 10_000 {
        windows.retain(|_, (start, _)| now.duration_since(*start) < window);
    }
    let entry = windows.entry(key.to_owned()).or_insert((now, 0));
    if now.duration_since(entry.0) >= window {
        *entry = (now, 0);
    }
    entry.1 += 1;
    let left = window.saturating_sub(now.duration_since(entry.0));
    WindowInfo {
        count: entry.1,
        allowed: limit.requests,
        reset_secs: left.as_secs() + u64::from(left.subsec_nanos() > 0),
    }
}
