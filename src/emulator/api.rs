//! The layer every `/api/v2` request passes: correlation id, faults, bearer token, rate limit,
//! permissions, and the `ININ-Correlation-Id` and `inin-ratelimit-*` headers on every response.
//! Most faults fire before the handler; the "apply, then …" faults fire after it, so the
//! request took effect but the client never learns so.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{MatchedPath, Request, State};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::conversations::PatchApplied;
use super::error::ApiError;
use super::faults::Injected;
use super::org::{Org, Shared, WindowInfo};

/// The authenticated caller.
#[derive(Debug, Clone)]
pub(crate) struct Caller {
    /// The OAuth client.
    pub(crate) client_id: String,
    /// The bearer token.
    pub(crate) token: String,
}

/// Closes the request's connection without a response (a connection reset).
#[derive(Debug, Clone)]
pub(crate) struct ConnectionKill(pub(crate) CancellationToken);

/// The `/api/v2` middleware.
pub(crate) async fn layer(
    State(shared): State<Arc<Shared>>,
    mut request: Request,
    next: Next,
) -> Response {
    let correlation = Uuid::new_v4().to_string();
    let route = route_label(&request);
    let kill = request.extensions().get::<ConnectionKill>().cloned();
    let after = match inject_faults(&shared, kill.clone(), &route, &correlation).await {
        Ok(after) => after,
        Err(response) => return response,
    };
    let token = bearer(&request);
    let admitted = admit(&shared, token.as_deref(), &route);
    let (caller, window) = match admitted {
        Ok(pair) => pair,
        Err((error, window)) => {
            let response = finish(error.into_response(), &correlation, window);
            shared.record(&route, response.status().as_u16(), None);
            return response;
        }
    };
    let client_id = caller.client_id.clone();
    request.extensions_mut().insert(caller);
    if after == Some(Injected::LateApply) {
        return apply_late(
            shared,
            request,
            next,
            route,
            client_id,
            &correlation,
            window,
        )
        .await;
    }
    let response = finish(next.run(request).await, &correlation, window);
    let applied = response.extensions().get::<PatchApplied>().copied();
    match after {
        Some(Injected::ResetAfter) => {
            shared.with(|org| {
                if let Some(PatchApplied(seq)) = applied {
                    org.set_patch_status(seq, 0);
                }
                org.record(&route, 0, Some(client_id));
            });
            drop_connection(kill, &correlation).await
        }
        Some(Injected::ErrorAfter(status)) => {
            shared.with(|org| {
                if let Some(PatchApplied(seq)) = applied {
                    org.set_patch_status(seq, status);
                }
                org.record(&route, status, Some(client_id));
            });
            let error = ApiError::server_error(status).into_response();
            finish(error, &correlation, window)
        }
        _ => {
            shared.record(&route, response.status().as_u16(), Some(client_id));
            response
        }
    }
}

/// Serves `request` later, in a task of its own that outlives the client's wait, and leaves
/// the client unanswered for the hang time (then a 504, if it is still waiting). The applied
/// PATCH is recorded with status 0: its answer never reached the client.
async fn apply_late(
    shared: Arc<Shared>,
    request: Request,
    next: Next,
    route: String,
    client_id: String,
    correlation: &str,
    window: Option<WindowInfo>,
) -> Response {
    let (late_ms, hang_ms) =
        shared.with(|org| (org.config.faults.late_apply_ms, org.config.faults.hang_ms));
    let later = shared.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(late_ms)).await;
        let response = next.run(request).await;
        let applied = response.extensions().get::<PatchApplied>().copied();
        later.with(|org| {
            if let Some(PatchApplied(seq)) = applied {
                org.set_patch_status(seq, 0);
            }
            org.record(&route, 0, Some(client_id));
        });
    });
    tokio::time::sleep(Duration::from_millis(hang_ms)).await;
    finish(
        ApiError::server_error(504).into_response(),
        correlation,
        window,
    )
}

/// Closes the connection without a response (a 500 where the connection cannot be reached).
async fn drop_connection(kill: Option<ConnectionKill>, correlation: &str) -> Response {
    match kill {
        Some(kill) => {
            kill.0.cancel();
            std::future::pending::<Response>().await
        }
        None => finish(
            ApiError::server_error(500).into_response(),
            correlation,
            None,
        ),
    }
}

/// The correlation header and error `contextId` for `/oauth/token` too.
pub(crate) async fn login_layer(
    State(shared): State<Arc<Shared>>,
    request: Request,
    next: Next,
) -> Response {
    let correlation = Uuid::new_v4().to_string();
    let route = route_label(&request);
    let (include, outage) = shared.with(|org| (org.config.faults.include_oauth, org.login_out()));
    if outage {
        shared.record(&route, 503, None);
        let mut error = ApiError::server_error(503);
        error.context_id = correlation.clone();
        let mut response = error.into_response();
        response.extensions_mut().remove::<ApiError>();
        response
            .headers_mut()
            .insert("inin-correlation-id", header(&correlation));
        return response;
    }
    if include {
        let kill = request.extensions().get::<ConnectionKill>().cloned();
        if let Err(response) = inject_faults(&shared, kill, &route, &correlation).await {
            return response;
        }
    }
    let mut response = next.run(request).await;
    response
        .headers_mut()
        .insert("inin-correlation-id", header(&correlation));
    shared.record(&route, response.status().as_u16(), None);
    response
}

fn route_label(request: &Request) -> String {
    let path = request.extensions().get::<MatchedPath>().map_or_else(
        || request.uri().path().to_owned(),
        |p| p.as_str().to_owned(),
    );
    format!("{} {}", request.method(), path)
}

fn bearer(request: &Request) -> Option<String> {
    let value = request.headers().get("authorization")?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_owned())
}

/// Authenticates, counts the request against the budget and checks the role's permissions.
fn admit(
    shared: &Shared,
    token: Option<&str>,
    route: &str,
) -> Result<(Caller, Option<WindowInfo>), (ApiError, Option<WindowInfo>)> {
    shared.with(|org| admit_locked(org, token, route))
}

fn admit_locked(
    org: &mut Org,
    token: Option<&str>,
    route: &str,
) -> Result<(Caller, Option<WindowInfo>), (ApiError, Option<WindowInfo>)> {
    let idle = org.config.rate_limit.map(|l| WindowInfo {
        count: 0,
        allowed: l.requests,
        reset_secs: l.window_secs,
    });
    let Some(token) = token else {
        let error = ApiError::new(
            401,
            "authentication.required",
            "No authentication bearer token specified in authorization header.",
        );
        return Err((error, idle));
    };
    let Some(client_id) = org.check_token(token) else {
        return Err((
            ApiError::new(401, "bad.credentials", "Invalid login credentials."),
            idle,
        ));
    };
    if let Some(until) = org.storm_until {
        if until > std::time::Instant::now() {
            let retry = org.config.faults.storm_retry_after_secs.max(1);
            return Err((ApiError::too_many_requests(retry), idle));
        }
    }
    let missing_permissions =
        org.config.faults.missing_permissions && !route.ends_with("/api/v2/tokens/me");
    match org.count_request(token, &client_id) {
        Ok(window) if missing_permissions => Err((
            ApiError::missing_permissions(required_permission(route)),
            Some(window),
        )),
        Ok(window) => Ok((
            Caller {
                client_id,
                token: token.to_owned(),
            },
            Some(window),
        )),
        Err((retry_after, window)) => Err((ApiError::too_many_requests(retry_after), Some(window))),
    }
}

/// The permission a route needs, for the `missing.permissions` message.
fn required_permission(route: &str) -> &'static str {
    if route.contains("/analytics/") {
        "analytics:conversationDetail:view"
    } else {
        "conversation:communication:view"
    }
}

/// Sleeps the latency and fires the faults that come before the handler (`Err` with the
/// response to send instead); `Ok` with a fault that fires after the handler, if any.
async fn inject_faults(
    shared: &Shared,
    kill: Option<ConnectionKill>,
    route: &str,
    correlation: &str,
) -> Result<Option<Injected>, Response> {
    let rolled = shared.with(|org| {
        if !org.config.faults.any() {
            return None;
        }
        let faults = org.config.faults.clone();
        let (latency, injected) = faults.roll(&mut org.rng);
        Some((latency, injected, faults.hang_ms))
    });
    let Some((latency, injected, hang_ms)) = rolled else {
        return Ok(None);
    };
    if latency > 0 {
        tokio::time::sleep(Duration::from_millis(latency)).await;
    }
    match injected {
        Injected::None => Ok(None),
        after @ (Injected::ResetAfter | Injected::ErrorAfter(_) | Injected::LateApply) => {
            Ok(Some(after))
        }
        Injected::Error(status) => {
            shared.record(route, status, None);
            let response = ApiError::server_error(status).into_response();
            Err(finish(response, correlation, None))
        }
        Injected::Reset => {
            shared.record(route, 0, None);
            Err(drop_connection(kill, correlation).await)
        }
        Injected::Hang => {
            shared.record(route, 0, None);
            tokio::time::sleep(Duration::from_millis(hang_ms)).await;
            Err(finish(
                ApiError::server_error(504).into_response(),
                correlation,
                None,
            ))
        }
    }
}

/// Adds the headers every API response carries and the `contextId` of an error body.
fn finish(mut response: Response, correlation: &str, window: Option<WindowInfo>) -> Response {
    if let Some(mut error) = response.extensions_mut().remove::<ApiError>() {
        if error.context_id.is_empty() {
            error.context_id = correlation.to_owned();
            let mut rendered = error.into_response();
            rendered.extensions_mut().remove::<ApiError>();
            response = rendered;
        }
    }
    let headers = response.headers_mut();
    headers.insert("inin-correlation-id", header(correlation));
    let window = window.unwrap_or(WindowInfo {
        count: 0,
        allowed: u32::MAX,
        reset_secs: 60,
    });
    headers.insert("inin-ratelimit-count", header(&window.count.to_string()));
    headers.insert(
        "inin-ratelimit-allowed",
        header(&window.allowed.to_string()),
    );
    headers.insert(
        "inin-ratelimit-reset",
        header(&window.reset_secs.to_string()),
    );
    response
}

fn header(value: &str) -> HeaderValue {
    HeaderValue::from_str(value).expect("header-safe value")
}
