//! The Genesys client against odd answers from a tiny local server: redirects, successes that
//! are not the API's, unreachable hosts, token-endpoint failures and unbounded `Retry-After`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, post};
use axum::Router;
use pdq::genesys::{Error, Failure, GenesysClient, GenesysSettings};
use serde_json::{json, Map};
use uuid::Uuid;

const TOKEN: &str = "edge-test-bearer-token";

/// Serves `router` on 127.0.0.1 (a free port); returns its base URL.
async fn serve(router: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    format!("http://{address}")
}

/// A server whose token endpoint works and every other route answers `api`.
async fn genesys_like(api: Router) -> String {
    let token = post(|| async {
        axum::Json(json!({"access_token": TOKEN, "token_type": "bearer", "expires_in": 3600}))
    });
    serve(api.route("/oauth/token", token)).await
}

/// A second server (another host and port) that counts the requests it gets.
async fn counting_target() -> (String, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    let router = Router::new().fallback(any(move |headers: HeaderMap| {
        let counter = counter.clone();
        async move {
            counter.fetch_add(1, Ordering::SeqCst);
            let authorized = headers.contains_key(header::AUTHORIZATION);
            (StatusCode::OK, format!("landed (authorized: {authorized})"))
        }
    }));
    let base = serve(router).await;
    (base.replace("127.0.0.1", "localhost"), hits)
}

fn client(base: &str) -> GenesysClient {
    let settings = GenesysSettings::builder()
        .api_url(base)
        .client_id("edge-client")
        .client_secret("edge-secret".to_owned().into())
        .build()
        .unwrap();
    GenesysClient::new(settings).unwrap()
}

fn redirect(status: StatusCode, location: String) -> Response {
    (status, [(header::LOCATION, location)], "").into_response()
}

async fn patch(client: &GenesysClient) -> Result<(), Error> {
    let mut attributes = Map::new();
    attributes.insert("tier".into(), json!("gold"));
    client
        .patch_participant_attributes(Uuid::new_v4(), Uuid::new_v4(), &attributes)
        .await
        .map(|_| ())
}

fn assert_configuration(result: Result<(), Error>, expect_in_text: &[&str]) {
    let error = result.expect_err("must not count as applied");
    assert_eq!(error.class(), Failure::Configuration, "{error}");
    let text = error.to_string();
    for needle in expect_in_text {
        assert!(text.contains(needle), "{needle:?} missing from {text:?}");
    }
    assert!(!text.contains(TOKEN), "the token leaked: {text}");
    assert!(!text.contains("edge-secret"), "the secret leaked: {text}");
}

#[tokio::test]
async fn a_patch_answered_by_303_is_a_configuration_error_and_is_not_followed() {
    let (target, hits) = counting_target().await;
    let location = format!("{target}/elsewhere");
    let api = Router::new().fallback(any(move || {
        let location = location.clone();
        async move { redirect(StatusCode::SEE_OTHER, location) }
    }));
    let base = genesys_like(api).await;
    assert_configuration(patch(&client(&base)).await, &["303", "localhost"]);
    assert_eq!(hits.load(Ordering::SeqCst), 0, "the redirect was followed");
}

#[tokio::test]
async fn a_patch_answered_by_307_to_another_host_is_not_followed() {
    let (target, hits) = counting_target().await;
    let location = format!("{target}/api/v2/elsewhere");
    let api = Router::new().fallback(any(move || {
        let location = location.clone();
        async move { redirect(StatusCode::TEMPORARY_REDIRECT, location) }
    }));
    let base = genesys_like(api).await;
    assert_configuration(patch(&client(&base)).await, &["307", "localhost"]);
    assert_eq!(
        hits.load(Ordering::SeqCst),
        0,
        "body and token went elsewhere"
    );
}

#[tokio::test]
async fn a_patch_answered_by_200_html_is_not_applied() {
    let api = Router::new().fallback(any(|| async {
        (
            [(header::CONTENT_TYPE, "text/html")],
            "<html><body>Proxy login</body></html>",
        )
    }));
    let base = genesys_like(api).await;
    assert_configuration(patch(&client(&base)).await, &["200", "not 202"]);
}

#[tokio::test]
async fn a_patch_answered_by_204_or_an_empty_200_is_not_applied() {
    for status in [StatusCode::NO_CONTENT, StatusCode::OK] {
        let api = Router::new().fallback(any(move || async move { status }));
        let base = genesys_like(api).await;
        let text = status.as_u16().to_string();
        assert_configuration(patch(&client(&base)).await, &[&text, "not 202"]);
    }
}

#[tokio::test]
async fn a_get_answered_by_html_or_204_is_not_genesys() {
    for html in [true, false] {
        let api = Router::new().fallback(any(move || async move {
            match html {
                true => (
                    [(header::CONTENT_TYPE, "text/html")],
                    "<html>Sign in to the proxy</html>",
                )
                    .into_response(),
                false => StatusCode::NO_CONTENT.into_response(),
            }
        }));
        let base = genesys_like(api).await;
        let client = client(&base);
        let got = client.get_conversation(Uuid::new_v4()).await.map(|_| ());
        assert_configuration(got, &["does not look like Genesys Cloud"]);
        let found = client
            .find_active_conversations_by_external_tag("ORDER-1")
            .await
            .map(|_| ());
        assert_configuration(found, &["does not look like Genesys Cloud"]);
    }
}

#[tokio::test]
async fn a_redirecting_token_endpoint_is_not_followed() {
    let (target, hits) = counting_target().await;
    let location = format!("{target}/oauth/token");
    let router = Router::new().fallback(any(move || {
        let location = location.clone();
        async move { redirect(StatusCode::TEMPORARY_REDIRECT, location) }
    }));
    let base = serve(router).await;
    assert_configuration(client(&base).probe_token().await, &["307", "localhost"]);
    assert_eq!(
        hits.load(Ordering::SeqCst),
        0,
        "the credentials went elsewhere"
    );
}

fn assert_class(result: Result<(), Error>, class: Failure) -> Error {
    let error = result.expect_err("must fail");
    assert_eq!(error.class(), class, "{error}");
    let text = error.to_string();
    assert!(!text.contains("edge-secret"), "the secret leaked: {text}");
    error
}

#[tokio::test]
async fn an_unreachable_host_is_an_outage() {
    let unused = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let refused = client(&format!("http://127.0.0.1:{unused}"));
    let error = assert_class(
        refused.get_conversation(Uuid::new_v4()).await.map(|_| ()),
        Failure::Outage,
    );
    assert!(error.to_string().contains("could not connect"), "{error}");
    // `.invalid` never resolves (RFC 2606): a DNS failure, or a resolver failure, both outages.
    let unresolvable = client("https://pdq-test.invalid");
    let error = assert_class(unresolvable.probe_token().await, Failure::Outage);
    let text = error.to_string();
    assert!(
        text.contains("did not resolve") || text.contains("could not connect"),
        "{text}"
    );
    assert_class(patch(&unresolvable).await, Failure::Outage);
}

#[tokio::test]
async fn a_failing_token_endpoint_is_an_outage_and_bad_credentials_are_configuration() {
    let down = Router::new().route(
        "/oauth/token",
        post(|| async { (StatusCode::SERVICE_UNAVAILABLE, "upstream unavailable") }),
    );
    let base = serve(down).await;
    assert_class(client(&base).probe_token().await, Failure::Outage);
    assert_class(patch(&client(&base)).await, Failure::Outage);

    let refused = Router::new().route(
        "/oauth/token",
        post(|| async {
            (
                StatusCode::UNAUTHORIZED,
                axum::Json(json!({"error": "invalid_client", "description": "client not found"})),
            )
        }),
    );
    let base = serve(refused).await;
    let error = assert_class(client(&base).probe_token().await, Failure::Configuration);
    assert_eq!(error.code(), Some("invalid_client"));
}

#[tokio::test]
async fn an_unbounded_retry_after_is_capped() {
    for value in [
        "86400",
        "18446744073709551615",
        "Fri, 31 Dec 9999 23:59:59 GMT",
    ] {
        let api = Router::new().fallback(any(move || async move {
            (
                StatusCode::TOO_MANY_REQUESTS,
                [
                    ("retry-after", value),
                    ("inin-ratelimit-count", "300"),
                    ("inin-ratelimit-allowed", "300"),
                    ("inin-ratelimit-reset", "18446744073709551615"),
                ],
                axum::Json(json!({"status": 429, "code": "too.many.requests", "message": "slow"})),
            )
        }));
        let base = genesys_like(api).await;
        let error = patch(&client(&base)).await.expect_err("429");
        let Failure::RateLimited { retry_after } = error.class() else {
            panic!("{error}")
        };
        assert_eq!(retry_after, Some(pdq::genesys::MAX_RETRY_AFTER), "{value}");
        let reset = error.rate_limit().and_then(|r| r.reset());
        assert_eq!(reset, Some(pdq::genesys::MAX_RETRY_AFTER), "{value}");
    }
}

#[tokio::test]
async fn a_shared_rate_limit_pause_is_capped_shown_and_lifted_by_an_operator() {
    use pdq::queue::budget::{self, PauseReason};
    use pdq::worker::{Budget, Pacer};
    use std::time::Duration;

    let db = crate::helpers::TestDb::new().await;
    let pacer = Pacer::new(
        &Budget {
            name: "edge-client".into(),
            ..Budget::default()
        },
        Some(db.pool.clone()),
    );
    pacer
        .observe(429, None, Some(Duration::from_secs(86_400)))
        .await;
    let cap = pdq::genesys::MAX_RETRY_AFTER.as_secs() as f64;
    let (left, reason): (f64, Option<String>) = sqlx::query_as(
        "select extract(epoch from paused_until - now())::float8, pause_reason
         from pdq.rate_budgets where name = 'edge-client'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert!(left > cap - 10.0 && left <= cap, "paused for {left} s");
    assert_eq!(reason.as_deref(), Some("rate_limited"));

    // Whatever a caller passes, the shared pause stays within the cap (no interval overflow).
    budget::pause(&db.pool, "other", Duration::MAX, PauseReason::Outage)
        .await
        .unwrap();
    let status = pdq::queue::status(&db.pool).await.unwrap();
    let names: Vec<&str> = status.budgets.iter().map(|b| b.name.as_str()).collect();
    assert_eq!(names, ["edge-client", "other"]);
    let other = &status.budgets[1];
    assert_eq!(other.pause_reason.as_deref(), Some("outage"));
    let until = other.paused_until.expect("paused");
    assert!(until <= chrono::Utc::now() + chrono::Duration::seconds(181));

    let cleared = budget::resume(&db.pool, Some("edge-client"), "an operator")
        .await
        .unwrap();
    assert_eq!(cleared.len(), 1);
    assert_eq!(cleared[0].pause_reason.as_deref(), Some("rate_limited"));
    let state = budget::state(&db.pool, "edge-client")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(state.paused_until, None);
    assert_eq!(state.resumed_by.as_deref(), Some("an operator"));
    assert!(state.next_slot <= chrono::Utc::now());
    let still = budget::state(&db.pool, "other").await.unwrap().unwrap();
    assert!(
        still.paused_until.is_some(),
        "only the named budget resumed"
    );
    let again = budget::resume(&db.pool, Some("edge-client"), "an operator")
        .await
        .unwrap();
    assert!(again.is_empty(), "nothing left to resume");
    db.drop_database().await;
}

#[tokio::test]
async fn pdq_status_shows_a_budget_pause_and_pdq_budget_resume_clears_it() {
    use pdq::queue::budget::{self, PauseReason};
    use std::process::Command;
    use std::time::Duration;

    let db = crate::helpers::TestDb::new().await;
    budget::pause(
        &db.pool,
        "edge-client",
        Duration::from_secs(120),
        PauseReason::RateLimited,
    )
    .await
    .unwrap();
    let pdq = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_pdq"))
            .args(args)
            .env("DATABASE_URL", db.url())
            .env("RUST_LOG", "warn")
            .output()
            .expect("run pdq")
    };
    let status = pdq(&["status", "--json"]);
    assert!(status.status.success(), "{status:?}");
    let json: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(json["budgets"][0]["name"], "edge-client");
    assert_eq!(json["budgets"][0]["pause_reason"], "rate_limited");
    assert!(json["budgets"][0]["paused_until"].is_string(), "{json}");
    let human = String::from_utf8_lossy(&pdq(&["status"]).stdout).into_owned();
    assert!(
        human.contains("PAUSED UNTIL") && human.contains("rate_limited"),
        "{human}"
    );

    let resumed = pdq(&["budget", "resume"]);
    assert!(resumed.status.success(), "{resumed:?}");
    let text = String::from_utf8_lossy(&resumed.stdout).into_owned();
    assert!(
        text.contains("resumed budget edge-client") && text.contains("rate_limited"),
        "{text}"
    );
    let status = pdq(&["status", "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert!(json["budgets"][0]["paused_until"].is_null(), "{json}");
    let nothing = pdq(&["budget", "resume", "--name", "edge-client"]);
    assert!(nothing.status.success());
    assert!(String::from_utf8_lossy(&nothing.stdout).contains("not paused"));
    db.drop_database().await;
}
