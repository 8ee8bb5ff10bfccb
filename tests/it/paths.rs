//! Paths of the worker that only an end-to-end run exercises: 403 pauses, a second 401,
//! rate-limit windows, lookups, coalescing limits, leases, shutdown, the CLI's own endpoints.

use std::time::{Duration, Instant};

use pdq::emulator::{ConversationSpec, EmulatorConfig, Faults};
use pdq::metrics::Health;
use pdq::queue::{Locators, NewJob};
use pdq::worker::{Api, Worker, WorkerConfig};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::app::{fast, job, values_sent, TestApp};
use crate::helpers::wait_until;

const PATCH: &str = "PATCH /api/v2/conversations/{cid}/participants/{pid}/attributes";
const GET_CONVERSATION: &str = "GET /api/v2/conversations/{id}";

/// Samples `health` every 10 ms for `span`; returns how many samples were healthy.
async fn healthy_samples(health: &Health, span: Duration) -> usize {
    let until = Instant::now() + span;
    let mut healthy = 0;
    while Instant::now() < until {
        if !health.is_unhealthy() {
            healthy += 1;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    healthy
}

#[tokio::test]
async fn a_missing_permission_pauses_without_flapping_and_resumes_once_granted() {
    let app = TestApp::new(EmulatorConfig::default()).await;
    let (c, pid) = app.customer_conversation();
    app.enqueue(job(Locators::ids(c.id, pid), json!({"tier": "gold"})))
        .await;
    app.emulator.set_faults(Faults {
        missing_permissions: true,
        ..Faults::default()
    });
    let worker = app.worker(fast());
    let health = worker.health();
    let stop = CancellationToken::new();
    let running = tokio::spawn(worker.clone().run(stop.clone()));
    assert!(
        wait_until(Duration::from_secs(5), || async { health.is_paused() }).await,
        "the worker pauses"
    );
    assert!(
        health.reason().contains("missing.permissions"),
        "{}",
        health.reason()
    );
    // Probes come 2-4 s and 6-9 s after the pause: both must find the permission missing.
    let healthy = healthy_samples(&health, Duration::from_millis(10_000)).await;
    assert_eq!(
        healthy, 0,
        "/healthz flapped while the permission was missing"
    );
    assert_eq!(
        app.emulator.count(PATCH, Some(403)),
        1,
        "a paused worker sends no further PATCH"
    );
    let probes = app.emulator.count(GET_CONVERSATION, Some(403));
    assert!(probes >= 2, "{probes} probes of the refused conversation");
    assert_eq!(app.db.count("pdq.dead_letters").await, 0);

    app.emulator.set_faults(Faults::default());
    let applied = wait_until(Duration::from_secs(20), || async {
        app.db.count("pdq.jobs").await == 0
    })
    .await;
    stop.cancel();
    running.await.unwrap().unwrap();
    assert!(applied, "applied once the permission was granted");
    assert!(!health.is_unhealthy(), "{}", health.reason());
    assert_eq!(values_sent(&app, c.id, pid, "tier"), vec!["gold"]);
    assert_eq!(app.db.count("pdq.dead_letters").await, 0);
    app.db.drop_database().await;
}

/// Refuses the first `refused` of `targets` (a division the client cannot see), runs a worker
/// with one executor and waits until the fifth 403 in a row has paused it.
async fn paused_by_refused_conversations(
    app: &TestApp,
    targets: &[(uuid::Uuid, uuid::Uuid)],
    refused: usize,
) -> (
    std::sync::Arc<Health>,
    CancellationToken,
    tokio::task::JoinHandle<Result<(), pdq::worker::RunError>>,
) {
    for (cid, _) in targets.iter().take(refused) {
        assert!(app.emulator.set_forbidden(*cid, true));
    }
    let worker = app.worker(WorkerConfig {
        executors: 1,
        ..fast()
    });
    let health = worker.health();
    let stop = CancellationToken::new();
    let running = tokio::spawn(worker.clone().run(stop.clone()));
    assert!(
        wait_until(Duration::from_secs(10), || async { health.is_paused() }).await,
        "the fifth 403 in a row pauses the worker"
    );
    (health, stop, running)
}

#[tokio::test]
async fn five_refused_conversations_in_a_row_pause_the_worker_until_access_returns() {
    let app = TestApp::new(EmulatorConfig::default()).await;
    let targets = app.customers_with_one_job(7).await;
    let (health, stop, running) = paused_by_refused_conversations(&app, &targets, 7).await;
    let not_authorized = (
        "forbidden".to_owned(),
        Some(403),
        Some("not.authorized".to_owned()),
    );
    assert_eq!(app.dead_reasons().await, vec![not_authorized.clone(); 4]);
    let healthy = healthy_samples(&health, Duration::from_millis(10_000)).await;
    assert_eq!(healthy, 0, "/healthz flapped while access was refused");
    assert!(
        app.emulator.count(GET_CONVERSATION, Some(403)) >= 2,
        "the probes asked for the refused conversation"
    );
    assert_eq!(app.emulator.count(PATCH, Some(403)), 5);
    assert_eq!(app.db.count("pdq.jobs").await, 3);

    for (cid, _) in &targets {
        app.emulator.set_forbidden(*cid, false);
    }
    let applied = wait_until(Duration::from_secs(20), || async {
        app.db.count("pdq.jobs").await == 0
    })
    .await;
    stop.cancel();
    running.await.unwrap().unwrap();
    assert!(applied, "the rest applied once access returned");
    assert!(!health.is_unhealthy(), "{}", health.reason());
    assert_eq!(app.dead_reasons().await, vec![not_authorized; 4]);
    assert_eq!(app.db.count("pdq.finished_jobs").await, 3);
    for (i, (cid, pid)) in targets.into_iter().enumerate().skip(4) {
        assert_eq!(values_sent(&app, cid, pid, "n"), vec![i.to_string()]);
    }
    app.db.drop_database().await;
}

/// Five conversations that stay refused for good (a producer aiming at conversations of a
/// division the OAuth client cannot see) pause the worker; its checks keep finding the refused
/// conversation refused, so only an operator can lift the pause. After `pdq budget resume`
/// the refused jobs are dead-lettered one by one and the others are applied.
#[tokio::test]
async fn an_operator_resume_lifts_a_pause_that_refused_conversations_would_hold_forever() {
    let app = TestApp::new(EmulatorConfig::default()).await;
    let targets = app.customers_with_one_job(7).await;
    let (health, stop, running) = paused_by_refused_conversations(&app, &targets, 5).await;
    assert!(
        wait_until(Duration::from_secs(10), || async {
            app.emulator.count(GET_CONVERSATION, Some(403)) >= 1
        })
        .await,
        "the check asks for the refused conversation"
    );
    assert!(health.is_paused(), "the check found it still refused");
    assert_eq!(app.db.count("pdq.finished_jobs").await, 0);

    let resumed = pdq::queue::budget::resume(&app.db.pool, None, "an operator")
        .await
        .unwrap();
    assert!(resumed.is_empty(), "no budget was paused, only the worker");
    let done = wait_until(Duration::from_secs(20), || async {
        app.db.count("pdq.jobs").await == 0
    })
    .await;
    stop.cancel();
    running.await.unwrap().unwrap();
    assert!(done, "every job ended after the operator's resume");
    assert!(!health.is_unhealthy(), "{}", health.reason());
    let not_authorized = (
        "forbidden".to_owned(),
        Some(403),
        Some("not.authorized".to_owned()),
    );
    assert_eq!(app.dead_reasons().await, vec![not_authorized; 5]);
    for (i, (cid, pid)) in targets.into_iter().enumerate() {
        let sent = values_sent(&app, cid, pid, "n");
        match i {
            0..=4 => assert!(sent.is_empty(), "refused target {i} shows {sent:?}"),
            _ => assert_eq!(sent, vec![i.to_string()]),
        }
    }
    app.db.drop_database().await;
}

#[tokio::test]
async fn one_401_renews_the_token_and_a_second_401_after_renewal_pauses() {
    let app = TestApp::new(EmulatorConfig {
        token_lifetime_secs: 3_600,
        ..EmulatorConfig::default()
    })
    .await;
    let (c, pid) = app.customer_conversation();
    let worker = app.worker(fast());
    app.enqueue(job(Locators::ids(c.id, pid), json!({"n": "1"})))
        .await;
    app.drain(&worker, Duration::from_secs(10)).await;
    // A revoked token: one 401, one renewal, the same PATCH again.
    app.emulator.revoke_tokens();
    app.enqueue(job(Locators::ids(c.id, pid), json!({"n": "2"})))
        .await;
    app.drain(&worker, Duration::from_secs(10)).await;
    assert_eq!(app.emulator.count(PATCH, Some(401)), 1);
    assert_eq!(app.emulator.count("POST /oauth/token", Some(200)), 2);
    assert_eq!(values_sent(&app, c.id, pid, "n"), vec!["1", "2"]);

    // Tokens the API refuses as soon as they are issued: the 401 after the renewal pauses.
    app.emulator
        .configure(|config| config.token_lifetime_secs = 0);
    app.emulator.revoke_tokens();
    app.enqueue(job(Locators::ids(c.id, pid), json!({"n": "3"})))
        .await;
    let outcomes = worker.process_next().await.unwrap();
    assert_eq!(outcomes, vec![pdq::worker::UnitOutcome::Paused]);
    let health = worker.health();
    assert!(health.is_paused(), "a second 401 pauses the worker");
    assert_eq!(
        app.emulator.count(PATCH, Some(401)),
        3,
        "one renewal, then no third try"
    );
    assert_eq!(app.db.count("pdq.dead_letters").await, 0);
    let attempts: i32 = sqlx::query_scalar("select max(attempts) from pdq.jobs")
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    assert_eq!(attempts, 0, "a pause spends no attempt");

    app.emulator
        .configure(|config| config.token_lifetime_secs = 3_600);
    let stop = CancellationToken::new();
    let running = tokio::spawn(worker.clone().run(stop.clone()));
    let applied = wait_until(Duration::from_secs(20), || async {
        app.db.count("pdq.jobs").await == 0
    })
    .await;
    stop.cancel();
    running.await.unwrap().unwrap();
    assert!(applied, "resumed once tokens were accepted again");
    assert!(!health.is_unhealthy(), "{}", health.reason());
    assert_eq!(values_sent(&app, c.id, pid, "n"), vec!["1", "2", "3"]);
    assert_eq!(
        app.emulator.count(PATCH, Some(401)) % 2,
        1,
        "after the first revocation, 401s only came in pairs (one renewal each)"
    );
    app.db.drop_database().await;
}

#[tokio::test]
async fn an_exhausted_rate_limit_window_pauses_the_worker_before_any_429() {
    let app = TestApp::new(EmulatorConfig::default()).await;
    app.emulator.set_rate_limit(Some(pdq::emulator::RateLimit {
        requests: 5,
        window_secs: 2,
        scope: pdq::emulator::RateLimitScope::Token,
    }));
    let targets = app.customers_with_one_job(12).await;
    let worker = app.worker(WorkerConfig {
        executors: 1,
        ..fast()
    });
    let drained = app
        .run_until_drained(&worker, Duration::from_secs(30))
        .await;
    assert!(drained);
    assert_eq!(
        app.emulator.count(PATCH, Some(429)),
        0,
        "the worker stopped at count == allowed instead of running into 429s"
    );
    assert_eq!(app.emulator.count(PATCH, Some(202)), 12);
    let patches: Vec<_> = app
        .emulator
        .request_log()
        .into_iter()
        .filter(|r| r.route == PATCH)
        .collect();
    // Twelve requests at five per two-second window need at least two waits for a new window.
    let span = patches[11].at - patches[0].at;
    assert!(span >= chrono::Duration::milliseconds(2_000), "{span}");
    assert!(worker.pacer().pauses() >= 2);
    for (i, (cid, pid)) in targets.into_iter().enumerate() {
        assert_eq!(values_sent(&app, cid, pid, "n"), vec![i.to_string()]);
    }
    app.db.drop_database().await;
}

#[tokio::test]
async fn a_job_whose_every_attempt_fails_is_dead_lettered_as_retries_exhausted() {
    let app = TestApp::new(EmulatorConfig::default()).await;
    let (c, pid) = app.customer_conversation();
    app.enqueue(NewJob {
        max_attempts: Some(3),
        ..job(Locators::ids(c.id, pid), json!({"n": "1"}))
    })
    .await;
    app.emulator.set_faults(Faults {
        error_rate: 1.0,
        error_statuses: vec![500],
        ..Faults::default()
    });
    let worker = app.worker(fast());
    app.drain(&worker, Duration::from_secs(15)).await;
    let dead = app.dead_reasons().await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].0, "retries_exhausted");
    assert_eq!(dead[0].1, Some(500));
    assert_eq!(app.emulator.count(PATCH, Some(500)), 3, "three attempts");
    assert_eq!(app.emulator.count(PATCH, None), 3, "and not one more");
    let attempts: i32 = sqlx::query_scalar("select attempts from pdq.dead_letters")
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    assert_eq!(attempts, 3);
    app.db.drop_database().await;
}

#[tokio::test]
async fn a_tag_that_analytics_shows_only_after_its_lag_is_found_and_applied() {
    let app = TestApp::new(EmulatorConfig {
        analytics_delay_ms: 1_500,
        ..EmulatorConfig::default()
    })
    .await;
    let created = chrono::Utc::now();
    let c = app.emulator.create_conversation(
        ConversationSpec::voice()
            .customer("X")
            .external_tag("LATE-1"),
    );
    let pid = c.participant("customer").unwrap();
    app.enqueue(job(Locators::external_tag("LATE-1"), json!({"k": "v"})))
        .await;
    let worker = app.worker(WorkerConfig {
        lookup_window: Duration::from_secs(10),
        ..fast()
    });
    app.drain(&worker, Duration::from_secs(15)).await;
    assert_eq!(app.db.count("pdq.dead_letters").await, 0);
    assert_eq!(values_sent(&app, c.id, pid, "k"), vec!["v"]);
    let queries = app.emulator.count(ANALYTICS, Some(200));
    assert!(queries >= 2, "the first lookups found nothing: {queries}");
    let arrived = app.emulator.patch_history(c.id, pid)[0].at;
    assert!(arrived - created >= chrono::Duration::milliseconds(1_500));
    app.db.drop_database().await;
}

const ANALYTICS: &str = "POST /api/v2/analytics/conversations/details/query";

#[tokio::test]
async fn a_tag_on_two_active_conversations_is_dead_lettered_as_ambiguous() {
    let app = TestApp::new(EmulatorConfig::default()).await;
    let first = app.emulator.create_conversation(
        ConversationSpec::voice()
            .customer("X")
            .external_tag("TWICE"),
    );
    let second = app.emulator.create_conversation(
        ConversationSpec::voice()
            .customer("Y")
            .external_tag("TWICE"),
    );
    app.enqueue(job(Locators::external_tag("TWICE"), json!({"k": "v"})))
        .await;
    let worker = app.worker(fast());
    app.drain(&worker, Duration::from_secs(10)).await;
    assert_eq!(
        app.dead_reasons().await,
        vec![("conversation_ambiguous".to_owned(), None, None)]
    );
    assert_eq!(app.emulator.count(PATCH, None), 0, "nothing was sent");
    for c in [first, second] {
        let pid = c.participant("customer").unwrap();
        assert!(app.emulator.attributes_of(c.id, pid).unwrap().is_empty());
    }
    app.db.drop_database().await;
}

#[tokio::test]
async fn an_expired_job_inside_a_merged_unit_is_dead_lettered_and_the_rest_sent_in_one_patch() {
    let app = TestApp::new(EmulatorConfig::default()).await;
    let (c, pid) = app.customer_conversation();
    app.enqueue(job(Locators::ids(c.id, pid), json!({"a": "1"})))
        .await;
    let late = app
        .enqueue(NewJob {
            run_at: Some(chrono::Utc::now() - chrono::Duration::seconds(2)),
            expires_at: Some(chrono::Utc::now() - chrono::Duration::seconds(1)),
            ..job(Locators::ids(c.id, pid), json!({"b": "2", "a": "late"}))
        })
        .await;
    app.enqueue(job(Locators::ids(c.id, pid), json!({"c": "3"})))
        .await;
    let worker = app.worker(fast());
    let outcomes = worker.process_next().await.unwrap();
    assert_eq!(outcomes.len(), 1, "{outcomes:?}");
    assert!(
        matches!(
            outcomes[0],
            pdq::worker::UnitOutcome::Applied { jobs: 2, .. }
        ),
        "{outcomes:?}"
    );
    let patches = app.emulator.patch_history(c.id, pid);
    assert_eq!(patches.len(), 1, "one PATCH for the two live jobs");
    let sent: Vec<(&str, &str)> = patches[0]
        .attributes
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(sent, vec![("a", "1"), ("c", "3")]);
    let dead: Vec<(i64, String)> = sqlx::query_as("select id, reason from pdq.dead_letters")
        .fetch_all(&app.db.pool)
        .await
        .unwrap();
    assert_eq!(dead, vec![(late, "expired".to_owned())]);
    app.drain(&worker, Duration::from_secs(5)).await;
    assert_eq!(app.db.count("pdq.finished_jobs").await, 2);
    app.db.drop_database().await;
}

/// The attempt limit (and the deadline) of one job of a coalesced unit binds that job alone:
/// the job beside it, with attempts to spare, is retried and applied, not dead-lettered with it.
#[tokio::test]
async fn one_job_running_out_of_attempts_in_a_merged_unit_takes_only_itself_to_the_dead_letters() {
    let app = TestApp::new(EmulatorConfig::default()).await;
    let (c, pid) = app.customer_conversation();
    let fragile = app
        .enqueue(NewJob {
            max_attempts: Some(1),
            ..job(Locators::ids(c.id, pid), json!({"a": "fragile"}))
        })
        .await;
    app.enqueue(job(Locators::ids(c.id, pid), json!({"b": "patient"})))
        .await;
    app.emulator.set_faults(Faults {
        error_rate: 1.0,
        error_statuses: vec![503],
        ..Faults::default()
    });
    let worker = app.worker(fast());
    let outcomes = worker.process_next().await.unwrap();
    assert_eq!(outcomes.len(), 1, "one unit of both jobs: {outcomes:?}");
    let dead: Vec<(i64, String)> = sqlx::query_as("select id, reason from pdq.dead_letters")
        .fetch_all(&app.db.pool)
        .await
        .unwrap();
    assert_eq!(dead, vec![(fragile, "retries_exhausted".to_owned())]);
    app.emulator.set_faults(Faults::default());
    app.drain(&worker, Duration::from_secs(10)).await;
    assert_eq!(values_sent(&app, c.id, pid, "b"), vec!["patient"]);
    assert_eq!(values_sent(&app, c.id, pid, "a"), Vec::<String>::new());
    app.db.drop_database().await;
}

#[tokio::test]
async fn max_coalesce_jobs_share_one_patch_and_the_next_one_gets_its_own() {
    let app = TestApp::new(EmulatorConfig::default()).await;
    let at_limit = app
        .emulator
        .create_conversation(ConversationSpec::voice().customer("X"));
    let over_limit = app
        .emulator
        .create_conversation(ConversationSpec::voice().customer("Y"));
    let (a, b) = (
        at_limit.participant("customer").unwrap(),
        over_limit.participant("customer").unwrap(),
    );
    for i in 1..=3 {
        app.enqueue(job(
            Locators::ids(at_limit.id, a),
            json!({ "n": i.to_string() }),
        ))
        .await;
    }
    for i in 1..=4 {
        app.enqueue(job(
            Locators::ids(over_limit.id, b),
            json!({ "n": i.to_string() }),
        ))
        .await;
    }
    let worker = app.worker(WorkerConfig {
        max_coalesce: 3,
        ..fast()
    });
    app.drain(&worker, Duration::from_secs(10)).await;
    assert_eq!(values_sent(&app, at_limit.id, a, "n"), vec!["3"]);
    assert_eq!(values_sent(&app, over_limit.id, b, "n"), vec!["3", "4"]);
    assert_eq!(app.db.count("pdq.finished_jobs").await, 7);
    app.db.drop_database().await;
}

#[tokio::test]
async fn a_live_worker_renews_the_lease_of_a_unit_that_outlives_it() {
    let app = TestApp::new(EmulatorConfig::default()).await;
    let c = app.emulator.create_conversation(
        ConversationSpec::voice()
            .customer("X")
            .external_tag("SLOW-1"),
    );
    let pid = c.participant("customer").unwrap();
    // Three calls (tag lookup, conversation GET, PATCH) of 1.2 s each, 2 s apart at 30 requests
    // a minute: the lookups alone outlast the 3 s lease (a PATCH renews its lease itself).
    app.enqueue(job(Locators::external_tag("SLOW-1"), json!({"k": "v"})))
        .await;
    app.emulator.set_faults(Faults {
        latency_ms: 1_200,
        ..Faults::default()
    });
    let config = WorkerConfig {
        lease: Duration::from_secs(3),
        lookup_window: Duration::from_secs(10),
        budget: pdq::worker::Budget {
            per_minute: 30,
            shared: false,
            ..pdq::worker::Budget::default()
        },
        ..fast()
    };
    let slow = |id: &str| {
        let api = Api::new(app.client("pdq-demo-secret", Duration::from_millis(1_400)));
        Worker::new(
            app.db.pool.clone(),
            api,
            WorkerConfig {
                worker_id: id.into(),
                ..config.clone()
            },
        )
    };
    let (first, second) = (slow("first"), slow("second"));
    let stop = CancellationToken::new();
    let running = tokio::spawn(first.clone().run(stop.clone()));
    // The second worker starts once the first holds the unit: it takes it only if the lease
    // runs out.
    assert!(
        wait_until(Duration::from_secs(5), || async {
            app.db.count("pdq.inflight").await > 0
        })
        .await
    );
    let rival = tokio::spawn(second.clone().run(stop.clone()));
    let drained = wait_until(Duration::from_secs(20), || async {
        app.db.count("pdq.jobs").await == 0
    })
    .await;
    stop.cancel();
    running.await.unwrap().unwrap();
    rival.await.unwrap().unwrap();
    assert!(drained);
    assert_eq!(values_sent(&app, c.id, pid, "k"), vec!["v"]);
    assert_eq!(app.emulator.count(ANALYTICS, None), 1, "looked up once");
    assert_eq!(app.emulator.count(GET_CONVERSATION, None), 1, "read once");
    assert_eq!(app.emulator.count(PATCH, None), 1, "sent once");
    assert_eq!(first.metrics().outcome_count("lease_lost"), 0);
    assert_eq!(first.metrics().outcome_count("applied"), 1);
    assert_eq!(second.metrics().outcome_count("applied"), 0);
    app.db.drop_database().await;
}

#[tokio::test]
async fn shutdown_lets_the_unit_in_flight_finish_and_sends_nothing_more() {
    let app = TestApp::new(EmulatorConfig::default()).await;
    let targets = app.customers_with_one_job(5).await;
    let api = Api::new(app.client("pdq-demo-secret", Duration::from_millis(2_500)));
    let worker = Worker::new(
        app.db.pool.clone(),
        api,
        WorkerConfig {
            executors: 1,
            shutdown_grace: Duration::from_secs(3),
            ..fast()
        },
    );
    app.emulator.set_faults(Faults {
        latency_ms: 2_000,
        ..Faults::default()
    });
    let stop = CancellationToken::new();
    let running = tokio::spawn(worker.clone().run(stop.clone()));
    assert!(
        wait_until(Duration::from_secs(5), || async {
            app.db.count("pdq.inflight").await > 0
        })
        .await
    );
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(
        app.emulator.count(PATCH, None),
        0,
        "the PATCH is on the wire"
    );
    let asked = Instant::now();
    stop.cancel();
    running.await.unwrap().unwrap();
    let took = asked.elapsed();
    assert!(took < Duration::from_secs(3), "within the grace: {took:?}");
    assert_eq!(
        app.emulator.count(PATCH, Some(202)),
        1,
        "the PATCH in flight completed"
    );
    assert_eq!(
        app.db.count("pdq.finished_jobs").await,
        1,
        "and was recorded before exit"
    );
    assert_eq!(app.db.count("pdq.jobs").await, 4);
    let held: i64 = sqlx::query_scalar("select count(*) from pdq.jobs where locked_by is not null")
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    assert_eq!(held, 0, "the units not started were given back");
    assert_eq!(app.db.count("pdq.inflight").await, 0);
    let sent: Vec<usize> = (0..targets.len())
        .filter(|&i| !values_sent(&app, targets[i].0, targets[i].1, "n").is_empty())
        .collect();
    assert_eq!(sent.len(), 1, "{sent:?}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        app.emulator.count(PATCH, None),
        1,
        "nothing sent after the stop"
    );
    app.db.drop_database().await;
}

#[tokio::test]
async fn merged_updates_over_512_kb_are_split_into_patches_under_the_limit() {
    let app = TestApp::new(EmulatorConfig {
        attribute_limits: pdq::emulator::AttributeLimits {
            max_keys: None,
            ..pdq::emulator::AttributeLimits::default()
        },
        ..EmulatorConfig::default()
    })
    .await;
    let (c, pid) = app.customer_conversation();
    // Three jobs of 100 keys with 2,000-character values: about 600 kB merged.
    let mut expected = std::collections::BTreeMap::new();
    for j in 0..3 {
        let mut attributes = serde_json::Map::new();
        for k in 0..100 {
            let key = format!("k{j}-{k:03}");
            let value = format!("{j}{k:03}").repeat(500);
            expected.insert(key.clone(), value.clone());
            attributes.insert(key, json!(value));
        }
        app.enqueue(job(Locators::ids(c.id, pid), attributes.into()))
            .await;
    }
    let worker = app.worker(fast());
    let outcomes = worker.process_next().await.unwrap();
    assert!(
        matches!(
            outcomes.as_slice(),
            [pdq::worker::UnitOutcome::Applied { jobs: 3, .. }]
        ),
        "{outcomes:?}"
    );
    app.drain(&worker, Duration::from_secs(5)).await;
    assert_eq!(
        app.emulator.count(PATCH, Some(413)),
        0,
        "no body over the limit"
    );
    let patches = app.emulator.patch_history(c.id, pid);
    assert_eq!(patches.len(), 2, "600 kB in two PATCHes");
    for patch in &patches {
        let body = serde_json::to_vec(&json!({ "attributes": patch.attributes })).unwrap();
        assert!(body.len() <= 512_000, "{} bytes", body.len());
    }
    assert_eq!(app.emulator.attributes_of(c.id, pid).unwrap(), expected);
    assert_eq!(app.db.count("pdq.finished_jobs").await, 3);
    app.db.drop_database().await;
}

#[tokio::test]
async fn pdq_demo_exits_zero_and_reports_what_it_applied() {
    let output = tokio::task::spawn_blocking(|| {
        std::process::Command::new(env!("CARGO_BIN_EXE_pdq"))
            .args(["demo", "--json", "--timeout-secs", "120"])
            .env("DATABASE_URL", crate::helpers::database_url())
            .env("RUST_LOG", "warn")
            .output()
            .expect("run pdq demo")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    let report: serde_json::Value =
        serde_json::from_str(&stdout).expect("stdout is one JSON document");
    let number = |key: &str| {
        report[key]
            .as_i64()
            .unwrap_or_else(|| panic!("{key}: {report}"))
    };
    assert!(number("enqueued") > 0, "{report}");
    assert!(number("applied") > 0, "{report}");
    assert_eq!(number("lost"), 0, "{report}");
    assert_eq!(number("not_visible"), 0, "{report}");
    assert_eq!(number("pending"), 0, "{report}");
    assert_eq!(
        number("applied") + number("dead_lettered"),
        number("enqueued"),
        "{report}"
    );
    assert!(number("attribute_patches") > 0, "{report}");
}

/// A `pdq run` child process; killed when dropped.
struct RunningPdq {
    child: std::process::Child,
    log: std::path::PathBuf,
    addr: std::net::SocketAddr,
}

impl RunningPdq {
    fn spawn(app: &TestApp) -> RunningPdq {
        // A free port: bound, read and released (the child binds it right after).
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let log = std::env::temp_dir().join(format!("pdq-paths-{}.log", uuid::Uuid::new_v4()));
        let file = std::fs::File::create(&log).unwrap();
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_pdq"))
            .args(["run", "--executors", "2"])
            .args(["--metrics-addr", &addr.to_string()])
            .env("DATABASE_URL", app.db.url())
            .envs(app.emulator.client_env())
            .env("RUST_LOG", "info")
            .stdout(std::process::Stdio::null())
            .stderr(file)
            .spawn()
            .expect("pdq run");
        RunningPdq { child, log, addr }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn get(&self, path: &str) -> (u16, String) {
        let response = reqwest::get(format!("http://{}{path}", self.addr))
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.text().await.unwrap())
    }

    /// SIGTERM, then waits (bounded) for the exit; returns whether it exited cleanly.
    async fn terminate(mut self) -> bool {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.success();
            }
            if Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for RunningPdq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

#[tokio::test]
async fn pdq_run_serves_metrics_and_a_healthz_that_turns_red_on_a_missing_permission() {
    let app = TestApp::new(EmulatorConfig::default()).await;
    let (c, pid) = app.customer_conversation();
    app.enqueue(job(Locators::ids(c.id, pid), json!({"n": "1"})))
        .await;
    let pdq = RunningPdq::spawn(&app);
    let started = wait_until(Duration::from_secs(30), || async {
        pdq.log_text().contains("pdq worker running")
    })
    .await;
    assert!(started, "{}", pdq.log_text());
    assert!(
        wait_until(Duration::from_secs(10), || async {
            app.db.count("pdq.jobs").await == 0
        })
        .await
    );
    assert_eq!(values_sent(&app, c.id, pid, "n"), vec!["1"]);
    assert_eq!(pdq.get("/healthz").await, (200, "ok\n".to_owned()));
    let (status, metrics) = pdq.get("/metrics").await;
    assert_eq!(status, 200);
    for line in [
        "pdq_jobs_total{outcome=\"applied\",reason=\"\"} 1",
        "pdq_api_responses_total{status=\"202\"} 1",
        "# TYPE pdq_queue_depth gauge",
    ] {
        assert!(metrics.contains(line), "{line} missing from:\n{metrics}");
    }

    app.emulator.set_faults(Faults {
        missing_permissions: true,
        ..Faults::default()
    });
    app.enqueue(job(Locators::ids(c.id, pid), json!({"n": "2"})))
        .await;
    let red = wait_until(Duration::from_secs(10), || async {
        pdq.get("/healthz").await.0 == 503
    })
    .await;
    assert!(red, "/healthz turns red");
    let (_, reason) = pdq.get("/healthz").await;
    assert!(reason.contains("paused (configuration)"), "{reason}");
    assert!(reason.contains("missing.permissions"), "{reason}");
    let (_, metrics) = pdq.get("/metrics").await;
    assert!(
        metrics.contains("pdq_api_responses_total{status=\"403\"} 1"),
        "{metrics}"
    );
    assert!(pdq.terminate().await, "pdq run exits cleanly on SIGTERM");
    assert_eq!(app.db.count("pdq.dead_letters").await, 0);
    app.db.drop_database().await;
}
