//! The emulator answers as `docs/genesys-api.md` says: raw JSON and headers, asserted
//! without pdq's own client types (so a mistake shared by client and emulator fails here).

use std::time::Duration;

use pdq::emulator::{
    ConversationSpec, Emulator, EmulatorConfig, Faults, RateLimit, RateLimitScope,
};
use reqwest::{Client, Response, StatusCode};
use serde_json::{json, Value};

async fn start(config: EmulatorConfig) -> (pdq::emulator::EmulatorHandle, Client) {
    let emulator = Emulator::start(config).await.unwrap();
    (emulator, Client::new())
}

async fn token(client: &Client, base: &str) -> String {
    let response = client
        .post(format!("{base}/oauth/token"))
        .basic_auth("pdq-demo", Some("pdq-demo-secret"))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    response.json::<Value>().await.unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn assert_api_headers(response: &Response) {
    for name in [
        "inin-ratelimit-count",
        "inin-ratelimit-allowed",
        "inin-ratelimit-reset",
        "inin-correlation-id",
    ] {
        assert!(
            response.headers().contains_key(name),
            "{name} missing on {}",
            response.status()
        );
    }
}

async fn error_body(response: Response, status: u16, code: &str) -> Value {
    assert_eq!(response.status().as_u16(), status);
    assert_api_headers(&response);
    let correlation = response.headers()["inin-correlation-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], code, "{body}");
    assert_eq!(body["status"], status);
    assert_eq!(
        body["contextId"],
        correlation.as_str(),
        "contextId equals the correlation id"
    );
    assert_eq!(body["details"], json!([]));
    assert_eq!(body["errors"], json!([]));
    assert!(body["message"].is_string());
    body
}

#[tokio::test]
async fn token_success_and_invalid_client_have_the_oauth_shapes() {
    let (emulator, client) = start(EmulatorConfig::default()).await;
    let base = emulator.base_url();
    let ok: Value = client
        .post(format!("{base}/oauth/token"))
        .basic_auth("pdq-demo", Some("pdq-demo-secret"))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(ok["access_token"].as_str().is_some_and(|t| !t.is_empty()));
    assert_eq!(ok["token_type"], "bearer");
    assert_eq!(ok["expires_in"], 86_400);

    for (id, secret, description) in [
        ("nobody", "x", "client not found"),
        ("pdq-demo", "wrong", "authentication failed"),
    ] {
        let refused = client
            .post(format!("{base}/oauth/token"))
            .basic_auth(id, Some(secret))
            .form(&[("grant_type", "client_credentials")])
            .send()
            .await
            .unwrap();
        assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
        let body: Value = refused.json().await.unwrap();
        assert_eq!(
            body,
            json!({"error": "invalid_client", "description": description, "error_description": description})
        );
    }
}

#[tokio::test]
async fn missing_expired_and_revoked_tokens_get_401_with_the_error_body() {
    let config = EmulatorConfig {
        token_lifetime_secs: 1,
        ..EmulatorConfig::default()
    };
    let (emulator, client) = start(config).await;
    let base = emulator.base_url();
    let created = emulator.create_conversation(ConversationSpec::voice().customer("Jane"));
    let url = format!("{base}/api/v2/conversations/{}", created.id);
    let missing = client.get(&url).send().await.unwrap();
    error_body(missing, 401, "authentication.required").await;

    let short = token(&client, &base).await;
    assert_eq!(
        client
            .get(&url)
            .bearer_auth(&short)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let expired = client.get(&url).bearer_auth(&short).send().await.unwrap();
    error_body(expired, 401, "bad.credentials").await;

    emulator.configure(|c| c.token_lifetime_secs = 3_600);
    let fresh = token(&client, &base).await;
    emulator.revoke_tokens();
    let revoked = client.get(&url).bearer_auth(&fresh).send().await.unwrap();
    error_body(revoked, 401, "bad.credentials").await;
}

#[tokio::test]
async fn get_shows_live_and_ended_conversations_and_404s_unknown_ids() {
    let (emulator, client) = start(EmulatorConfig::default()).await;
    let base = emulator.base_url();
    let bearer = token(&client, &base).await;
    let created = emulator.create_conversation(
        ConversationSpec::voice()
            .customer("Jane Doe")
            .agent()
            .external_tag("ORDER-42"),
    );
    let url = format!("{base}/api/v2/conversations/{}", created.id);
    let live: Value = client
        .get(&url)
        .bearer_auth(&bearer)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(live["id"], created.id.to_string());
    assert_eq!(live["externalTag"], "ORDER-42");
    assert!(
        live.get("endTime").is_none(),
        "a live conversation has no endTime"
    );
    let customer = &live["participants"][0];
    assert_eq!(customer["purpose"], "customer");
    assert_eq!(customer["name"], "Jane Doe");
    assert_eq!(customer["calls"][0]["state"], "connected");
    assert_eq!(live["participants"][1]["purpose"], "agent");
    assert_eq!(
        live["selfUri"],
        format!("/api/v2/conversations/{}", created.id)
    );

    emulator.end_conversation(created.id);
    let ended: Value = client
        .get(&url)
        .bearer_auth(&bearer)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(ended["endTime"].is_string());
    for participant in ended["participants"].as_array().unwrap() {
        assert!(participant["endTime"].is_string());
        assert_eq!(participant["calls"][0]["state"], "terminated");
    }

    let unknown = client
        .get(format!(
            "{base}/api/v2/conversations/{}",
            uuid::Uuid::new_v4()
        ))
        .bearer_auth(&bearer)
        .send()
        .await
        .unwrap();
    let body = error_body(unknown, 404, "not.found").await;
    assert_eq!(body["message"], "The requested resource was not found.");
    let listed = client
        .get(format!("{base}/api/v2/conversations"))
        .bearer_auth(&bearer)
        .send()
        .await
        .unwrap();
    let body = error_body(listed, 400, "bad.request").await;
    assert!(body["message"].as_str().unwrap().contains("user context"));
}

#[tokio::test]
async fn patch_merges_string_attributes_and_refuses_everything_else() {
    let (emulator, client) = start(EmulatorConfig::default()).await;
    let base = emulator.base_url();
    let bearer = token(&client, &base).await;
    let created = emulator.create_conversation(ConversationSpec::voice().customer("Jane").agent());
    let (cid, pid) = (created.id, created.participant("customer").unwrap());
    let url = format!("{base}/api/v2/conversations/{cid}/participants/{pid}/attributes");
    let patch = |body: Value| client.patch(&url).bearer_auth(&bearer).json(&body).send();

    let first = patch(json!({"attributes": {"crmCaseId": "CASE-123", "tier": "silver"}}))
        .await
        .unwrap();
    assert_eq!(first.status(), StatusCode::ACCEPTED);
    assert_api_headers(&first);
    assert!(
        first.bytes().await.unwrap().is_empty(),
        "202 with an empty body"
    );
    patch(json!({"attributes": {"tier": "gold"}}))
        .await
        .unwrap();
    let conversation: Value = client
        .get(format!("{base}/api/v2/conversations/{cid}"))
        .bearer_auth(&bearer)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        conversation["participants"][0]["attributes"],
        json!({"crmCaseId": "CASE-123", "tier": "gold"})
    );

    error_body(
        patch(json!({"attributes": {"n": 1}})).await.unwrap(),
        400,
        "invalid.value",
    )
    .await;
    error_body(
        patch(json!({"attributes": {"n": true}})).await.unwrap(),
        400,
        "invalid.value",
    )
    .await;
    error_body(patch(json!(["x"])).await.unwrap(), 400, "bad.request").await;
    let huge = json!({"attributes": {"big": "x".repeat(600_000)}});
    error_body(patch(huge).await.unwrap(), 413, "request.entity.too.large").await;
    let unknown = client
        .patch(format!(
            "{base}/api/v2/conversations/{cid}/participants/{}/attributes",
            uuid::Uuid::new_v4()
        ))
        .bearer_auth(&bearer)
        .json(&json!({"attributes": {"a": "b"}}))
        .send()
        .await
        .unwrap();
    error_body(unknown, 404, "not.found").await;

    let media = client
        .patch(format!(
            "{base}/api/v2/conversations/calls/{cid}/participants/{pid}/attributes"
        ))
        .bearer_auth(&bearer)
        .json(&json!({"attributes": {"via": "calls"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(media.status(), StatusCode::ACCEPTED);
    let echoed: Value = media.json().await.unwrap();
    assert_eq!(
        echoed,
        json!({"attributes": {"crmCaseId": "CASE-123", "tier": "gold", "via": "calls"}})
    );

    let tutorial = client
        .patch(format!(
            "{base}/api/v2/conversations/{cid}/participants/{pid}"
        ))
        .bearer_auth(&bearer)
        .json(&json!({"attributes": {"a": "b"}}))
        .send()
        .await
        .unwrap();
    let body = error_body(tutorial, 400, "invalid.property").await;
    assert!(body["message"]
        .as_str()
        .unwrap()
        .contains("MediaParticipantRequest"));

    emulator.end_conversation(cid);
    error_body(
        patch(json!({"attributes": {"late": "yes"}})).await.unwrap(),
        409,
        "conflict",
    )
    .await;
    let history = emulator.patch_history(cid, pid);
    assert_eq!(history.len(), 3, "only accepted PATCHes are recorded");
}

#[tokio::test]
async fn analytics_finds_live_conversations_by_tag_and_not_ended_ones() {
    let config = EmulatorConfig {
        analytics_delay_ms: 300,
        ..EmulatorConfig::default()
    };
    let (emulator, client) = start(config).await;
    let base = emulator.base_url();
    let bearer = token(&client, &base).await;
    let live = emulator.create_conversation(
        ConversationSpec::voice()
            .customer("A")
            .external_tag("ORDER-42"),
    );
    let ended = emulator.create_conversation(
        ConversationSpec::voice()
            .customer("B")
            .external_tag("ORDER-42"),
    );
    emulator.end_conversation(ended.id);
    let query = |interval: &str| {
        json!({
            "interval": interval,
            "order": "desc", "orderBy": "conversationStart",
            "paging": {"pageSize": 25, "pageNumber": 1},
            "conversationFilters": [{"type": "and", "predicates": [
                {"type": "dimension", "dimension": "externalTag", "operator": "matches", "value": "ORDER-42"},
                {"type": "dimension", "dimension": "conversationEnd", "operator": "notExists"}]}]
        })
    };
    let now = chrono::Utc::now();
    let today = format!(
        "{}/{}",
        (now - chrono::Duration::days(1)).to_rfc3339(),
        (now + chrono::Duration::hours(1)).to_rfc3339()
    );
    let url = format!("{base}/api/v2/analytics/conversations/details/query");
    let run = |body: Value| client.post(&url).bearer_auth(&bearer).json(&body).send();

    let lagging: Value = run(query(&today)).await.unwrap().json().await.unwrap();
    assert_eq!(lagging, json!({"totalHits": 0}), "analytics lags live data");
    tokio::time::sleep(Duration::from_millis(350)).await;
    let found: Value = run(query(&today)).await.unwrap().json().await.unwrap();
    assert_eq!(found["totalHits"], 1);
    let conversation = &found["conversations"][0];
    assert_eq!(conversation["conversationId"], live.id.to_string());
    assert_eq!(conversation["externalTag"], "ORDER-42");
    assert!(conversation.get("conversationEnd").is_none());
    assert!(
        conversation["participants"][0].get("attributes").is_none(),
        "no attributes in the details query"
    );
    assert_eq!(conversation["participants"][0]["purpose"], "customer");

    let tomorrow = now + chrono::Duration::days(1);
    let later = format!(
        "{}/{}",
        tomorrow.to_rfc3339(),
        (tomorrow + chrono::Duration::hours(1)).to_rfc3339()
    );
    let none: Value = run(query(&later)).await.unwrap().json().await.unwrap();
    assert_eq!(
        none["totalHits"], 0,
        "only conversations that started on a day the interval touches"
    );
    error_body(
        run(json!({"paging": {"pageSize": 5}})).await.unwrap(),
        400,
        "bad.request",
    )
    .await;
}

#[tokio::test]
async fn the_301st_request_in_a_minute_gets_429_with_retry_after() {
    let (emulator, client) = start(EmulatorConfig::default()).await;
    let base = emulator.base_url();
    let bearer = token(&client, &base).await;
    let url = format!("{base}/api/v2/tokens/me");
    for n in 1..=300 {
        let response = client.get(&url).bearer_auth(&bearer).send().await.unwrap();
        assert_eq!(response.status(), 200, "request {n}");
        assert_eq!(
            response.headers()["inin-ratelimit-count"],
            n.to_string().as_str()
        );
        assert_eq!(response.headers()["inin-ratelimit-allowed"], "300");
    }
    let limited = client.get(&url).bearer_auth(&bearer).send().await.unwrap();
    let retry_after: u64 = limited.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .expect("integer seconds");
    assert!((1..=60).contains(&retry_after));
    let body = error_body(limited, 429, "too.many.requests.retry.after").await;
    assert_eq!(
        body["message"],
        format!("Rate limit exceeded the maximum. Retry the request in [{retry_after}] seconds")
    );
    let per_client = RateLimit {
        requests: 2,
        window_secs: 60,
        scope: RateLimitScope::Client,
    };
    emulator.set_rate_limit(Some(per_client));
    let second_token = token(&client, &base).await;
    for _ in 0..2 {
        assert_eq!(
            client
                .get(&url)
                .bearer_auth(&second_token)
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
    }
    let third = client.get(&url).bearer_auth(&bearer).send().await.unwrap();
    assert_eq!(
        third.status(),
        429,
        "a per-client budget spans the client's tokens"
    );
}

#[tokio::test]
async fn faults_are_observable_by_a_client() {
    let (emulator, _) = start(EmulatorConfig::default()).await;
    let base = emulator.base_url();
    let client = Client::builder()
        .timeout(Duration::from_millis(400))
        .build()
        .unwrap();
    let bearer = token(&client, &base).await;
    let url = format!("{base}/api/v2/tokens/me");
    emulator.set_faults(Faults {
        error_rate: 1.0,
        error_statuses: vec![503],
        ..Faults::default()
    });
    error_body(
        client.get(&url).bearer_auth(&bearer).send().await.unwrap(),
        503,
        "service.unavailable",
    )
    .await;
    emulator.set_faults(Faults {
        reset_rate: 1.0,
        ..Faults::default()
    });
    let reset = client
        .get(&url)
        .bearer_auth(&bearer)
        .send()
        .await
        .unwrap_err();
    assert!(!reset.is_timeout(), "a reset is not a timeout: {reset}");
    emulator.set_faults(Faults {
        hang_rate: 1.0,
        ..Faults::default()
    });
    let hung = client
        .get(&url)
        .bearer_auth(&bearer)
        .send()
        .await
        .unwrap_err();
    assert!(hung.is_timeout(), "{hung}");
    emulator.set_faults(Faults {
        storm_secs: 30,
        storm_retry_after_secs: 7,
        ..Faults::default()
    });
    let storm = client.get(&url).bearer_auth(&bearer).send().await.unwrap();
    assert_eq!(storm.headers()["retry-after"], "7");
    error_body(storm, 429, "too.many.requests.retry.after").await;
    emulator.set_faults(Faults::default());
    assert_eq!(
        client
            .get(&url)
            .bearer_auth(&bearer)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test]
async fn admin_api_creates_ends_and_reads_and_can_be_switched_off() {
    let (emulator, client) = start(EmulatorConfig::default()).await;
    let base = emulator.base_url();
    let created: Value = client
        .post(format!("{base}/admin/conversations"))
        .json(&json!({"media": "message", "externalTag": "T-1", "participants": [{"purpose": "customer", "name": "Ann"}]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let (cid, pid) = (
        created["id"].as_str().unwrap(),
        created["participants"][0]["id"].as_str().unwrap(),
    );
    let ended = client
        .post(format!("{base}/admin/conversations/{cid}/end"))
        .send()
        .await
        .unwrap();
    assert_eq!(ended.status(), StatusCode::NO_CONTENT);
    let attributes: Value = client
        .get(format!(
            "{base}/admin/conversations/{cid}/participants/{pid}/attributes"
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(attributes, json!({}));

    let hidden = EmulatorConfig {
        admin: false,
        ..EmulatorConfig::default()
    };
    let (quiet, _) = start(hidden).await;
    let response = client
        .post(format!("{}/admin/reset", quiet.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn official_sdk_style_flow_works_end_to_end() {
    let (emulator, client) = start(EmulatorConfig::default()).await;
    let base = emulator.base_url();
    let created = emulator.create_conversation(ConversationSpec::voice().customer("Jane").agent());
    // The SDKs: Basic-auth token request with a form body, then Bearer calls.
    let login = client
        .post(format!("{base}/oauth/token"))
        .header("Authorization", "Basic cGRxLWRlbW86cGRxLWRlbW8tc2VjcmV0")
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body("grant_type=client_credentials")
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), 200);
    let bearer = login.json::<Value>().await.unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let me: Value = client
        .get(format!("{base}/api/v2/tokens/me"))
        .bearer_auth(&bearer)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(me["OAuthClient"]["id"], "pdq-demo");
    assert!(me["organization"]["id"].is_string());
    let tags = client
        .put(format!("{base}/api/v2/conversations/{}/tags", created.id))
        .bearer_auth(&bearer)
        .json(&json!({"externalTag": "CASE-9"}))
        .send()
        .await
        .unwrap();
    assert_eq!(tags.status(), StatusCode::ACCEPTED);
    let customer = created.participant("customer").unwrap();
    let patched = client
        .patch(format!(
            "{base}/api/v2/conversations/{}/participants/{customer}/attributes",
            created.id
        ))
        .bearer_auth(&bearer)
        .header("Accept", "application/json")
        .json(&json!({"attributes": {"caseId": "CASE-9"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(patched.status(), StatusCode::ACCEPTED);
    assert_eq!(
        emulator.attributes_of(created.id, customer).unwrap()["caseId"],
        "CASE-9"
    );
    let found: Value = client
        .post(format!(
            "{base}/api/v2/analytics/conversations/details/query"
        ))
        .bearer_auth(&bearer)
        .json(&pdq::genesys::model::active_by_external_tag_query(
            "CASE-9",
            chrono::Utc::now(),
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        found["conversations"][0]["conversationId"],
        created.id.to_string()
    );
}

#[tokio::test]
async fn a_late_request_is_applied_after_its_client_gave_up_and_after_a_later_one() {
    let (emulator, client) = start(EmulatorConfig::default()).await;
    let base = emulator.base_url();
    let bearer = token(&client, &base).await;
    let created = emulator.create_conversation(ConversationSpec::voice().customer("Jane"));
    let (cid, pid) = (created.id, created.participant("customer").unwrap());
    let url = format!("{base}/api/v2/conversations/{cid}/participants/{pid}/attributes");
    let patch = |value: &str| {
        client
            .patch(&url)
            .bearer_auth(&bearer)
            .timeout(std::time::Duration::from_millis(200))
            .json(&json!({"attributes": {"case": value}}))
            .send()
    };
    emulator.set_faults(Faults {
        late_apply_rate: 1.0,
        late_apply_ms: 600,
        hang_ms: 5_000,
        ..Faults::default()
    });
    let gave_up = patch("late").await.unwrap_err();
    assert!(gave_up.is_timeout(), "no answer: {gave_up}");
    assert_eq!(
        emulator
            .attributes_of(cid, pid)
            .and_then(|a| a.get("case").cloned()),
        None,
        "not applied yet when its client gave up"
    );
    emulator.set_faults(Faults::default());
    assert_eq!(patch("later").await.unwrap().status(), 202);
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    assert_eq!(
        emulator.attributes_of(cid, pid).unwrap()["case"],
        "late",
        "the late request landed over the later one"
    );
    let seen: Vec<(String, u16)> = emulator
        .patches()
        .iter()
        .map(|p| (p.attributes["case"].clone(), p.status))
        .collect();
    assert_eq!(
        seen,
        [("later".to_owned(), 202), ("late".to_owned(), 0)],
        "the late one is recorded when applied, with no answer given"
    );
}

#[tokio::test]
async fn apply_then_drop_and_apply_then_5xx_apply_the_patch_the_client_never_hears_of() {
    let (emulator, client) = start(EmulatorConfig::default()).await;
    let base = emulator.base_url();
    let bearer = token(&client, &base).await;
    let created = emulator.create_conversation(ConversationSpec::voice().customer("Jane"));
    let (cid, pid) = (created.id, created.participant("customer").unwrap());
    let url = format!("{base}/api/v2/conversations/{cid}/participants/{pid}/attributes");
    let patch = |value: &str| {
        client
            .patch(&url)
            .bearer_auth(&bearer)
            .json(&json!({"attributes": {"case": value}}))
            .send()
    };
    emulator.set_faults(Faults {
        apply_then_reset_rate: 1.0,
        ..Faults::default()
    });
    let dropped = patch("dropped").await.unwrap_err();
    assert!(!dropped.is_timeout(), "closed, not hung: {dropped}");
    assert_eq!(
        emulator.attributes_of(cid, pid).unwrap()["case"],
        "dropped",
        "applied although the client got no answer"
    );
    emulator.set_faults(Faults {
        apply_then_error_rate: 1.0,
        error_statuses: vec![503],
        ..Faults::default()
    });
    error_body(patch("errored").await.unwrap(), 503, "service.unavailable").await;
    assert_eq!(emulator.attributes_of(cid, pid).unwrap()["case"], "errored");
    emulator.set_faults(Faults::default());
    assert_eq!(patch("clean").await.unwrap().status(), 202);

    let history = emulator.patches();
    let seen: Vec<(&str, u16)> = history
        .iter()
        .map(|p| (p.attributes["case"].as_str(), p.status))
        .collect();
    assert_eq!(
        seen,
        [("dropped", 0), ("errored", 503), ("clean", 202)],
        "every applied PATCH, in order, with the status the client really got"
    );
    assert!(history
        .iter()
        .all(|p| p.conversation_id == cid && p.participant_id == pid));
    assert!(history
        .windows(2)
        .all(|w| w[0].seq < w[1].seq && w[0].at <= w[1].at));

    let over_admin: Value = client
        .get(format!("{base}/admin/patches?after={}", history[0].seq))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let statuses: Vec<&Value> = over_admin
        .as_array()
        .unwrap()
        .iter()
        .map(|p| &p["status"])
        .collect();
    assert_eq!(statuses, [&json!(503), &json!(202)]);
    assert_eq!(over_admin[0]["conversationId"], json!(cid));
    assert_eq!(over_admin[0]["participantId"], json!(pid));
    assert_eq!(over_admin[0]["attributes"], json!({"case": "errored"}));
}

#[tokio::test]
async fn refused_patches_are_not_in_the_history_and_faults_before_the_handler_apply_nothing() {
    let (emulator, client) = start(EmulatorConfig::default()).await;
    let base = emulator.base_url();
    let bearer = token(&client, &base).await;
    let created = emulator.create_conversation(ConversationSpec::voice().customer("Jane"));
    let (cid, pid) = (created.id, created.participant("customer").unwrap());
    let url = format!("{base}/api/v2/conversations/{cid}/participants/{pid}/attributes");
    emulator.set_faults(Faults {
        error_rate: 1.0,
        ..Faults::default()
    });
    let refused = client
        .patch(&url)
        .bearer_auth(&bearer)
        .json(&json!({"attributes": {"case": "x"}}))
        .send()
        .await
        .unwrap();
    assert!(refused.status().is_server_error());
    assert!(emulator.patches().is_empty());
    assert_eq!(emulator.attributes_of(cid, pid).unwrap().get("case"), None);
}

#[tokio::test]
async fn a_forbidden_conversation_and_missing_permissions_answer_403() {
    let (emulator, client) = start(EmulatorConfig::default()).await;
    let base = emulator.base_url();
    let bearer = token(&client, &base).await;
    let hidden = emulator.create_conversation(ConversationSpec::voice().customer("Jane"));
    let open = emulator.create_conversation(ConversationSpec::voice().customer("Joe"));
    let patch_url = |c: &pdq::emulator::CreatedConversation| {
        format!(
            "{base}/api/v2/conversations/{}/participants/{}/attributes",
            c.id,
            c.participant("customer").unwrap()
        )
    };
    let patch = |url: String| {
        client
            .patch(url)
            .bearer_auth(&bearer)
            .json(&json!({"attributes": {"case": "x"}}))
            .send()
    };
    assert!(emulator.set_forbidden(hidden.id, true));
    error_body(
        patch(patch_url(&hidden)).await.unwrap(),
        403,
        "not.authorized",
    )
    .await;
    let get = client
        .get(format!("{base}/api/v2/conversations/{}", hidden.id))
        .bearer_auth(&bearer)
        .send()
        .await
        .unwrap();
    error_body(get, 403, "not.authorized").await;
    assert_eq!(patch(patch_url(&open)).await.unwrap().status(), 202);
    let allowed = client
        .put(format!("{base}/admin/conversations/{}/access", hidden.id))
        .json(&json!({"forbidden": false}))
        .send()
        .await
        .unwrap();
    assert_eq!(allowed.status(), StatusCode::NO_CONTENT);
    assert_eq!(patch(patch_url(&hidden)).await.unwrap().status(), 202);

    emulator.set_faults(Faults {
        missing_permissions: true,
        ..Faults::default()
    });
    let body = error_body(
        patch(patch_url(&open)).await.unwrap(),
        403,
        "missing.permissions",
    )
    .await;
    assert_eq!(
        body["messageParams"]["permissions"],
        "conversation:communication:view"
    );
    assert!(body["messageWithParams"]
        .as_str()
        .unwrap()
        .contains("{permissions}"));
    let me = client
        .get(format!("{base}/api/v2/tokens/me"))
        .bearer_auth(&bearer)
        .send()
        .await
        .unwrap();
    assert_eq!(me.status(), 200, "tokens/me needs no permission");
    let no_token = client
        .patch(patch_url(&open))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(no_token.status(), 401, "authentication comes first");
    assert_eq!(
        emulator.patches().len(),
        2,
        "only the two accepted PATCHes were applied"
    );
}

#[tokio::test]
async fn a_login_outage_answers_503_on_the_token_endpoint_only() {
    let (emulator, client) = start(EmulatorConfig::default()).await;
    let base = emulator.base_url();
    let bearer = token(&client, &base).await;
    emulator.set_faults(Faults {
        login_outage_secs: 1,
        ..Faults::default()
    });
    let login = || {
        client
            .post(format!("{base}/oauth/token"))
            .basic_auth("pdq-demo", Some("pdq-demo-secret"))
            .form(&[("grant_type", "client_credentials")])
            .send()
    };
    let out = login().await.unwrap();
    assert_eq!(out.status(), 503);
    let correlation = out.headers()["inin-correlation-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let body: Value = out.json().await.unwrap();
    assert_eq!(body["code"], "service.unavailable");
    assert_eq!(body["contextId"], correlation.as_str());
    let api = client
        .get(format!("{base}/api/v2/tokens/me"))
        .bearer_auth(&bearer)
        .send()
        .await
        .unwrap();
    assert_eq!(api.status(), 200, "the API keeps serving valid tokens");
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    assert_eq!(login().await.unwrap().status(), 200, "the outage ends");
}

#[tokio::test]
async fn an_outage_refuses_connections_then_the_same_port_serves_again() {
    let (emulator, client) = start(EmulatorConfig::default()).await;
    let base = emulator.base_url();
    let url = format!("{base}/api/v2/tokens/me");
    let bearer = token(&client, &base).await;
    let call = || client.get(&url).bearer_auth(&bearer).send();
    assert_eq!(call().await.unwrap().status(), 200, "a pooled connection");

    emulator.stop_listening().await;
    assert!(!emulator.is_listening());
    let refused = call().await.unwrap_err();
    assert!(refused.is_connect(), "refused: {refused}");
    emulator.start_listening().await;
    assert_eq!(call().await.unwrap().status(), 200, "same base URL again");

    emulator.outage(Duration::from_millis(400)).await;
    assert!(call().await.unwrap_err().is_connect());
    let back =
        crate::helpers::wait_until(Duration::from_secs(3), || async { call().await.is_ok() }).await;
    assert!(back, "listening again after the outage, by itself");

    let admin = client
        .post(format!("{base}/admin/outage"))
        .json(&json!({"secs": 0.5}))
        .send()
        .await
        .unwrap();
    assert_eq!(admin.status(), StatusCode::ACCEPTED);
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert!(call().await.unwrap_err().is_connect(), "admin outage");
    let back =
        crate::helpers::wait_until(Duration::from_secs(3), || async { call().await.is_ok() }).await;
    assert!(back);
}

#[tokio::test]
async fn the_emulator_command_takes_the_new_fault_flags() {
    use std::io::{BufRead, BufReader};
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_pdq"))
        .args([
            "emulator",
            "--port",
            &port.to_string(),
            "--missing-permissions",
        ])
        .args([
            "--login-outage-secs",
            "30",
            "--apply-then-reset-rate",
            "0.25",
        ])
        .args(["--apply-then-error-rate", "0.5"])
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let ready = tokio::task::spawn_blocking(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .any(|line| line == "ready")
    });
    let ready = tokio::time::timeout(Duration::from_secs(20), ready).await;
    let base = format!("http://127.0.0.1:{port}");
    let client = Client::new();
    let faults = async {
        client
            .get(format!("{base}/admin/faults"))
            .send()
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap()
    };
    let faults = match ready {
        Ok(Ok(true)) => faults.await,
        other => {
            let _ = child.kill();
            panic!("the emulator did not start: {other:?}");
        }
    };
    let login = client
        .post(format!("{base}/oauth/token"))
        .basic_auth("pdq-demo", Some("pdq-demo-secret"))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap()
        .status();
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
    assert_eq!(faults["missing_permissions"], true);
    assert_eq!(faults["login_outage_secs"], 30);
    assert_eq!(faults["apply_then_reset_rate"], 0.25);
    assert_eq!(faults["apply_then_error_rate"], 0.5);
    assert_eq!(login, 503, "the login outage runs from the start");
}
