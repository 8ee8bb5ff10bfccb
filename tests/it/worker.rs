//! The worker end to end: real Postgres, the in-process emulator, pdq's real client.

use std::time::{Duration, Instant};

use pdq::emulator::{ConversationSpec, EmulatorConfig, Faults, ParticipantSpec};
use pdq::queue::{self, DeadReason, Locators, NewJob};
use pdq::worker::{Api, Budget, Worker, WorkerConfig};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::app::{fast, job, values_sent, TestApp};
use crate::helpers::wait_until;

#[tokio::test]
async fn every_locator_kind_applies_and_is_visible_on_the_emulator() {
    let app = TestApp::new(EmulatorConfig::default()).await;
    let conversation = app.emulator.create_conversation(
        ConversationSpec::voice()
            .participant(ParticipantSpec {
                purpose: "customer".into(),
                name: Some("Jane Doe".into()),
                external_contact_id: Some("crm-77".into()),
                ..ParticipantSpec::default()
            })
            .agent()
            .external_tag("ORDER-42"),
    );
    let (cid, customer, agent) = (
        conversation.id,
        conversation.participant("customer").unwrap(),
        conversation.participant("agent").unwrap(),
    );
    let jobs = [
        job(Locators::ids(cid, agent), json!({"byId": "yes"})),
        job(
            Locators::conversation(cid).purpose("customer"),
            json!({"byPurpose": "yes"}),
        ),
        job(
            Locators::conversation(cid).external_contact_id("crm-77"),
            json!({"byContact": "yes"}),
        ),
        job(
            Locators::conversation(cid).name("Jane Doe"),
            json!({"byName": "yes"}),
        ),
        job(Locators::external_tag("ORDER-42"), json!({"byTag": "yes"})),
    ];
    for new in jobs {
        app.enqueue(new).await;
    }
    let worker = app.worker(fast());
    app.drain(&worker, Duration::from_secs(10)).await;

    assert_eq!(
        app.emulator.attributes_of(cid, agent).unwrap()["byId"],
        "yes"
    );
    let customer_attributes = app.emulator.attributes_of(cid, customer).unwrap();
    for key in ["byPurpose", "byContact", "byName", "byTag"] {
        assert_eq!(customer_attributes[key], "yes", "{key}");
    }
    assert_eq!(app.db.count("pdq.finished_jobs").await, 5);
    assert_eq!(app.db.count("pdq.dead_letters").await, 0);
    let resolved: Vec<(Option<Uuid>, Option<Uuid>)> = sqlx::query_as(
        "select resolved_conversation_id, resolved_participant_id from pdq.finished_jobs",
    )
    .fetch_all(&app.db.pool)
    .await
    .unwrap();
    assert!(resolved.iter().all(|(c, p)| *c == Some(cid) && p.is_some()));
    app.db.drop_database().await;
}

#[tokio::test]
async fn both_ids_cost_one_call_and_a_burst_coalesces_into_one_patch() {
    let app = TestApp::new(EmulatorConfig::default()).await;
    let conversation = app
        .emulator
        .create_conversation(ConversationSpec::voice().customer("Jane").agent());
    let (cid, pid) = (
        conversation.id,
        conversation.participant("customer").unwrap(),
    );
    for i in 1..=10 {
        let new = job(Locators::ids(cid, pid), json!({ "step": i.to_string() }));
        app.enqueue(new).await;
    }
    let worker = app.worker(fast());
    app.drain(&worker, Duration::from_secs(10)).await;
    let patches = app.emulator.patch_history(cid, pid);
    assert_eq!(patches.len(), 1, "ten queued updates, one PATCH");
    assert_eq!(
        app.emulator.attributes_of(cid, pid).unwrap()["step"],
        "10",
        "the newest value wins"
    );
    let route = "PATCH /api/v2/conversations/{cid}/participants/{pid}/attributes";
    assert_eq!(app.emulator.count(route, None), 1);
    assert_eq!(
        app.emulator.count("GET /api/v2/conversations/{id}", None),
        0,
        "no GET with both ids"
    );
    app.db.drop_database().await;
}

#[tokio::test]
async fn permanent_failures_are_dead_lettered_with_the_reason_and_the_api_code() {
    let app = TestApp::new(EmulatorConfig::default()).await;
    let live = app
        .emulator
        .create_conversation(ConversationSpec::voice().customer("A").agent());
    let ended = app
        .emulator
        .create_conversation(ConversationSpec::voice().customer("B").agent());
    app.emulator.end_conversation(ended.id);
    let twins = app
        .emulator
        .create_conversation(ConversationSpec::voice().customer("C").customer("D"));
    let cases = [
        job(Locators::ids(live.id, Uuid::new_v4()), json!({"k": "404"})),
        job(
            Locators::ids(ended.id, ended.participant("customer").unwrap()),
            json!({"k": "409"}),
        ),
        job(
            Locators::conversation(twins.id).purpose("customer"),
            json!({"k": "twins"}),
        ),
        job(Locators::external_tag("NO-SUCH-TAG"), json!({"k": "tag"})),
        NewJob {
            run_at: Some(chrono::Utc::now() - chrono::Duration::seconds(2)),
            expires_at: Some(chrono::Utc::now() - chrono::Duration::seconds(1)),
            ..job(
                Locators::ids(live.id, live.participant("customer").unwrap()),
                json!({"k": "late"}),
            )
        },
    ];
    for new in cases {
        app.enqueue(new).await;
    }
    let worker = app.worker(fast());
    app.drain(&worker, Duration::from_secs(15)).await;
    let dead = app.dead_reasons().await;
    let expected = vec![
        (
            "not_found".to_owned(),
            Some(404),
            Some("not.found".to_owned()),
        ),
        (
            "conversation_ended".to_owned(),
            Some(409),
            Some("conflict".to_owned()),
        ),
        ("participant_ambiguous".to_owned(), None, None),
        ("conversation_not_found".to_owned(), None, None),
        ("expired".to_owned(), None, None),
    ];
    assert_eq!(dead, expected);
    assert_eq!(
        app.emulator
            .attributes_of(live.id, live.participant("customer").unwrap())
            .unwrap()
            .len(),
        0
    );
    app.db.drop_database().await;
}

#[tokio::test]
async fn server_errors_resets_and_hangs_are_retried_until_everything_applies() {
    let app = TestApp::new(EmulatorConfig::default()).await;
    app.emulator.set_faults(Faults {
        error_rate: 0.2,
        reset_rate: 0.1,
        hang_rate: 0.05,
        hang_ms: 2_000,
        ..Faults::default()
    });
    let mut targets = Vec::new();
    for i in 0..30 {
        let c = app
            .emulator
            .create_conversation(ConversationSpec::voice().customer("X").agent());
        let pid = c.participant("customer").unwrap();
        app.enqueue(job(Locators::ids(c.id, pid), json!({ "n": i.to_string() })))
            .await;
        targets.push((c.id, pid));
    }
    let worker = app.worker(fast());
    app.drain(&worker, Duration::from_secs(60)).await;
    assert_eq!(app.db.count("pdq.dead_letters").await, 0);
    for (cid, pid) in targets {
        assert_eq!(app.emulator.attributes_of(cid, pid).unwrap().len(), 1);
    }
    let faults: u64 = app
        .emulator
        .request_counts()
        .iter()
        .filter(|c| c.status == 0 || c.status >= 500)
        .map(|c| c.count)
        .sum();
    assert!(faults > 0, "faults were injected and survived");
    app.db.drop_database().await;
}

#[tokio::test]
async fn a_429_storm_pauses_every_executor_until_retry_after_and_nothing_fails() {
    let app = TestApp::new(EmulatorConfig::default()).await;
    app.customers_with_one_job(20).await;
    app.emulator.set_faults(Faults {
        storm_secs: 2,
        storm_retry_after_secs: 1,
        ..Faults::default()
    });
    let worker = app.worker(WorkerConfig {
        executors: 8,
        ..fast()
    });
    let drained = app
        .run_until_drained(&worker, Duration::from_secs(20))
        .await;
    assert!(drained);
    assert_eq!(app.db.count("pdq.dead_letters").await, 0);
    assert_eq!(app.db.count("pdq.finished_jobs").await, 20);
    let log = app.emulator.request_log();
    let limited: Vec<_> = log.iter().filter(|r| r.status == 429).collect();
    assert!(!limited.is_empty());
    assert!(
        limited.len() <= 8 + 4,
        "429s stay bounded: {}",
        limited.len()
    );
    // After a 429 (Retry-After: 1 s), nothing arrives until that second has passed, except
    // requests that were already on the wire.
    for first in &limited {
        let early = log
            .iter()
            .filter(|r| r.at > first.at + chrono::Duration::milliseconds(50))
            .filter(|r| r.at < first.at + chrono::Duration::milliseconds(1_000))
            .count();
        assert!(early <= 8, "{early} requests inside a Retry-After window");
    }
    app.db.drop_database().await;
}

#[tokio::test]
async fn token_expiry_and_revocation_mid_run_renew_the_token_and_fail_nothing() {
    let app = TestApp::new(EmulatorConfig {
        token_lifetime_secs: 1,
        ..EmulatorConfig::default()
    })
    .await;
    let worker = app.worker(fast());
    let mut targets = Vec::new();
    for round in 0..3 {
        for i in 0..5 {
            let (c, pid) = app.customer_conversation();
            app.enqueue(job(
                Locators::ids(c.id, pid),
                json!({ "n": format!("{round}-{i}") }),
            ))
            .await;
            targets.push((c.id, pid));
        }
        app.drain(&worker, Duration::from_secs(10)).await;
        app.emulator.revoke_tokens();
        tokio::time::sleep(Duration::from_millis(600)).await;
    }
    assert_eq!(app.db.count("pdq.dead_letters").await, 0);
    assert_eq!(app.db.count("pdq.finished_jobs").await, 15);
    assert!(worker.metrics().token_renewals() >= 3);
    app.db.drop_database().await;
}

#[tokio::test]
async fn bad_credentials_pause_the_worker_dead_letter_nothing_and_resume_once_fixed() {
    let app = TestApp::new(EmulatorConfig::default()).await;
    app.customers_with_one_job(10).await;
    let api = Api::new(app.client("rotated-secret", Duration::from_millis(500)));
    let worker = Worker::new(app.db.pool.clone(), api, fast());
    let health = worker.health();
    let stop = CancellationToken::new();
    let running = tokio::spawn(worker.run(stop.clone()));
    assert!(
        wait_until(Duration::from_secs(5), || async { health.is_unhealthy() }).await,
        "worker pauses"
    );
    assert!(
        health.reason().contains("invalid_client"),
        "{}",
        health.reason()
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        app.db.count("pdq.dead_letters").await,
        0,
        "zero dead letters"
    );
    let attempts: i32 = sqlx::query_scalar("select coalesce(max(attempts), 0) from pdq.jobs")
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    assert_eq!(attempts, 0, "a paused worker spends no attempts");

    app.emulator.add_client("pdq-demo", "rotated-secret");
    let drained = wait_until(Duration::from_secs(20), || async {
        app.db.count("pdq.jobs").await == 0
    })
    .await;
    stop.cancel();
    running.await.unwrap().unwrap();
    assert!(drained, "all jobs applied after the credentials were fixed");
    assert!(!health.is_unhealthy());
    assert_eq!(app.db.count("pdq.finished_jobs").await, 10);
    assert_eq!(app.db.count("pdq.dead_letters").await, 0);
    app.db.drop_database().await;
}

#[tokio::test]
async fn a_live_job_overtakes_twenty_thousand_pending_backfill_jobs_under_a_rate_limit() {
    let app = TestApp::new(EmulatorConfig::default()).await;
    sqlx::query(
        "insert into pdq.jobs (conversation_id, participant_id, attributes, priority)
         select gen_random_uuid(), gen_random_uuid(), jsonb_build_object('n', i::text), 'backfill'
         from generate_series(1, 20000) i",
    )
    .execute(&app.db.pool)
    .await
    .unwrap();
    let config = WorkerConfig {
        executors: 8,
        budget: Budget {
            per_minute: 600,
            backfill_share: 0.5,
            shared: true,
            name: "test".into(),
        },
        ..fast()
    };
    let interval = Duration::from_millis(100);
    let worker = app.worker(config);
    let stop = CancellationToken::new();
    let running = tokio::spawn(worker.run(stop.clone()));
    tokio::time::sleep(Duration::from_millis(1_500)).await;

    let live = app
        .emulator
        .create_conversation(ConversationSpec::voice().customer("VIP"));
    let pid = live.participant("customer").unwrap();
    let inserted = chrono::Utc::now();
    app.enqueue(job(Locators::ids(live.id, pid), json!({"vip": "yes"})))
        .await;
    let applied = wait_until(Duration::from_secs(5), || async {
        !app.emulator.patch_history(live.id, pid).is_empty()
    })
    .await;
    stop.cancel();
    running.await.unwrap().unwrap();
    assert!(applied);
    let arrived = app.emulator.patch_history(live.id, pid)[0].at;
    let latency = (arrived - inserted).to_std().unwrap();
    assert!(
        latency < interval * 10,
        "live latency {latency:?} with a {interval:?} token interval"
    );
    app.db.drop_database().await;
}

#[tokio::test]
async fn two_workers_share_one_budget_through_postgres() {
    let app = TestApp::new(EmulatorConfig::default()).await;
    app.customers_with_one_job(60).await;
    let budget = Budget {
        per_minute: 600,
        backfill_share: 1.0,
        shared: true,
        name: "shared-test".into(),
    };
    let config = WorkerConfig {
        executors: 4,
        budget,
        ..fast()
    };
    let stop = CancellationToken::new();
    let first = tokio::spawn(app.worker(config.clone()).run(stop.clone()));
    let second = tokio::spawn(
        app.worker(WorkerConfig {
            worker_id: "second".into(),
            ..config
        })
        .run(stop.clone()),
    );
    let started = Instant::now();
    let drained = wait_until(Duration::from_secs(20), || async {
        app.db.count("pdq.jobs").await == 0
    })
    .await;
    let elapsed = started.elapsed();
    stop.cancel();
    first.await.unwrap().unwrap();
    second.await.unwrap().unwrap();
    assert!(drained);
    // 60 requests at 10/s take about 6 s together; two independent budgets would take 3 s.
    assert!(
        elapsed >= Duration::from_millis(5_000),
        "combined rate over budget: {elapsed:?}"
    );
    let log = app.emulator.request_log();
    let patches: Vec<_> = log
        .iter()
        .filter(|r| r.route.starts_with("PATCH"))
        .collect();
    // Any 30 consecutive requests span at least ~3 s (jitter allowed); two budgets would need 1.5 s.
    for window in patches.windows(30) {
        let span = window[29].at - window[0].at;
        assert!(
            span >= chrono::Duration::milliseconds(2_600),
            "30 requests within {span}"
        );
    }
    assert_eq!(app.db.count("pdq.finished_jobs").await, 60);
    app.db.drop_database().await;
}

#[tokio::test]
async fn a_worker_whose_lease_ran_out_sends_no_patch() {
    let app = TestApp::new(EmulatorConfig::default()).await;
    let (c, pid) = app.customer_conversation();
    // By purpose: the conversation GET comes first, and it outlasts the lease.
    app.enqueue(job(
        Locators::conversation(c.id).purpose("customer"),
        json!({"seq": "1"}),
    ))
    .await;
    app.emulator.set_faults(Faults {
        latency_ms: 2_500,
        ..Faults::default()
    });
    let api = Api::new(app.client("pdq-demo-secret", Duration::from_secs(4)));
    let config = WorkerConfig {
        lease: Duration::from_secs(2),
        ..fast()
    };
    let worker = Worker::new(app.db.pool.clone(), api, config);
    let outcomes = worker.process_next().await.unwrap();
    assert_eq!(outcomes, vec![pdq::worker::UnitOutcome::LeaseLost]);
    assert!(
        app.emulator.patch_history(c.id, pid).is_empty(),
        "no PATCH after the lease ran out"
    );
    // The unit comes back after its lease and is applied by a worker that holds it.
    app.emulator.set_faults(Faults::default());
    tokio::time::sleep(Duration::from_millis(500)).await;
    queue::lease::rescue_expired_leases(&app.db.pool)
        .await
        .unwrap();
    app.drain(&app.worker(fast()), Duration::from_secs(10))
        .await;
    assert_eq!(values_sent(&app, c.id, pid, "seq"), vec!["1"]);
    app.db.drop_database().await;
}

#[tokio::test]
async fn jobs_naming_one_participant_by_tag_and_by_ids_apply_in_insertion_order() {
    let app = TestApp::new(EmulatorConfig::default()).await;
    let mut targets = Vec::new();
    for i in 0..4 {
        let tag = format!("ORDER-{i}");
        let c = app
            .emulator
            .create_conversation(ConversationSpec::voice().customer("X").external_tag(&tag));
        let pid = c.participant("customer").unwrap();
        app.enqueue(job(
            Locators::external_tag(&tag),
            json!({"orderStatus": "packed"}),
        ))
        .await;
        app.enqueue(job(
            Locators::ids(c.id, pid),
            json!({"orderStatus": "shipped"}),
        ))
        .await;
        targets.push((c.id, pid));
    }
    app.emulator.set_faults(Faults {
        latency_ms: 300,
        ..Faults::default()
    });
    let worker = app.worker(WorkerConfig {
        executors: 8,
        ..fast()
    });
    let drained = app
        .run_until_drained(&worker, Duration::from_secs(20))
        .await;
    assert!(drained);
    for (cid, pid) in targets {
        let attributes = app.emulator.attributes_of(cid, pid).unwrap();
        assert_eq!(
            attributes.get("orderStatus").map(String::as_str),
            Some("shipped"),
            "the newer insert wins: {:?}",
            values_sent(&app, cid, pid, "orderStatus")
        );
        let sent = values_sent(&app, cid, pid, "orderStatus");
        assert_ne!(sent.last().map(String::as_str), Some("packed"), "{sent:?}");
    }
    app.db.drop_database().await;
}

#[tokio::test]
async fn a_requeued_dead_letter_does_not_overwrite_a_newer_value_unless_forced() {
    let app = TestApp::new(EmulatorConfig::default()).await;
    let (c, pid) = app.customer_conversation();
    let silver = NewJob {
        run_at: Some(chrono::Utc::now() - chrono::Duration::seconds(10)),
        expires_at: Some(chrono::Utc::now() - chrono::Duration::seconds(1)),
        ..job(
            Locators::ids(c.id, pid),
            json!({"tier": "silver", "note": "a"}),
        )
    };
    app.enqueue(silver).await;
    app.enqueue(job(Locators::ids(c.id, pid), json!({"tier": "gold"})))
        .await;
    let worker = app.worker(fast());
    app.drain(&worker, Duration::from_secs(10)).await;
    assert_eq!(app.dead_reasons().await[0].0, "expired");
    assert_eq!(values_sent(&app, c.id, pid, "tier"), vec!["gold"]);

    let all = queue::DeadLetterFilter {
        reason: Some(DeadReason::Expired),
        ..queue::DeadLetterFilter::default()
    };
    let would_drop: Vec<String> = sqlx::query_scalar(
        "select key from pdq.requeue_would_drop(array(select id from pdq.dead_letters))",
    )
    .fetch_all(&app.db.pool)
    .await
    .unwrap();
    assert_eq!(would_drop, vec!["tier"]);
    assert_eq!(
        queue::dlq::requeue(&app.db.pool, &all, false)
            .await
            .unwrap(),
        1
    );
    app.drain(&worker, Duration::from_secs(10)).await;
    let attributes = app.emulator.attributes_of(c.id, pid).unwrap();
    assert_eq!(attributes.get("tier").map(String::as_str), Some("gold"));
    assert_eq!(
        attributes.get("note").map(String::as_str),
        Some("a"),
        "the other key is sent"
    );
    let dropped: Option<Vec<String>> = sqlx::query_scalar(
        "select superseded_keys from pdq.finished_jobs where superseded_keys is not null",
    )
    .fetch_one(&app.db.pool)
    .await
    .unwrap();
    assert_eq!(
        dropped,
        Some(vec!["tier".to_owned()]),
        "what was dropped is recorded"
    );

    // Forced, the requeued value wins as if just inserted.
    sqlx::query("update pdq.dead_letters set requeued_at = null")
        .execute(&app.db.pool)
        .await
        .unwrap();
    assert_eq!(
        queue::dlq::requeue(&app.db.pool, &all, true).await.unwrap(),
        1
    );
    app.drain(&worker, Duration::from_secs(10)).await;
    let attributes = app.emulator.attributes_of(c.id, pid).unwrap();
    assert_eq!(attributes.get("tier").map(String::as_str), Some("silver"));
    app.db.drop_database().await;
}

#[tokio::test]
async fn a_refused_job_in_a_coalesced_unit_dead_letters_only_itself() {
    let app = TestApp::new(EmulatorConfig::default()).await;
    let (c, pid) = app.customer_conversation();
    // Within pdq's 256-character bound, over the emulator's (guessed) 255: the API refuses it.
    let too_long = "x".repeat(256);
    for attributes in [
        json!({"a": "1"}),
        json!({ too_long.as_str(): "refused" }),
        json!({"b": "3"}),
    ] {
        app.enqueue(job(Locators::ids(c.id, pid), attributes)).await;
    }
    let worker = app.worker(fast());
    let outcomes = worker.process_next().await.unwrap();
    assert_eq!(
        outcomes,
        vec![pdq::worker::UnitOutcome::Split {
            applied: 2,
            dead_lettered: 1,
            retried: 0
        }]
    );
    let attributes = app.emulator.attributes_of(c.id, pid).unwrap();
    assert_eq!(attributes.get("a").map(String::as_str), Some("1"));
    assert_eq!(attributes.get("b").map(String::as_str), Some("3"));
    assert_eq!(app.db.count("pdq.finished_jobs").await, 2);
    let dead = app.dead_reasons().await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].0, "bad_request");
    assert_eq!(dead[0].1, Some(400));
    assert_eq!(app.db.count("pdq.jobs").await, 0);
    assert_eq!(
        app.db.count("pdq.inflight").await,
        0,
        "the participant is free again"
    );
    app.db.drop_database().await;
}

#[tokio::test]
async fn an_outage_of_the_api_and_its_login_host_spends_no_attempt_and_dead_letters_nothing() {
    let app = TestApp::new(EmulatorConfig::default()).await;
    let mut targets = Vec::new();
    for i in 0..12 {
        let (c, pid) = app.customer_conversation();
        let update = NewJob {
            max_attempts: Some(3),
            ..job(Locators::ids(c.id, pid), json!({ "n": i.to_string() }))
        };
        app.enqueue(update).await;
        targets.push((c.id, pid));
    }
    // Every call fails with a server error, the login host too (tokens revoked first).
    app.emulator.revoke_tokens();
    app.emulator.set_faults(Faults {
        error_rate: 1.0,
        error_statuses: vec![503],
        include_oauth: true,
        ..Faults::default()
    });
    let worker = app.worker(WorkerConfig {
        executors: 4,
        ..fast()
    });
    let health = worker.health();
    let stop = CancellationToken::new();
    let running = tokio::spawn(worker.clone().run(stop.clone()));
    assert!(
        wait_until(Duration::from_secs(10), || async {
            health.has(pdq::metrics::Condition::Outage)
        })
        .await,
        "the outage shows in /healthz"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(app.db.count("pdq.dead_letters").await, 0);
    // The login host comes back, the API still fails on every conversation.
    app.emulator.set_faults(Faults {
        error_rate: 1.0,
        error_statuses: vec![500, 502, 503],
        ..Faults::default()
    });
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        app.db.count("pdq.dead_letters").await,
        0,
        "no attempt burnt"
    );
    app.emulator.set_faults(Faults::default());
    let drained = wait_until(Duration::from_secs(60), || async {
        app.db.count("pdq.jobs").await == 0
    })
    .await;
    stop.cancel();
    running.await.unwrap().unwrap();
    assert!(drained);
    assert_eq!(app.db.count("pdq.dead_letters").await, 0);
    for (i, (cid, pid)) in targets.into_iter().enumerate() {
        assert_eq!(values_sent(&app, cid, pid, "n"), vec![i.to_string()]);
    }
    assert!(!health.is_unhealthy(), "{}", health.reason());
    app.db.drop_database().await;
}

#[tokio::test]
async fn claims_that_keep_failing_turn_healthz_red_with_the_reason() {
    let app = TestApp::new(EmulatorConfig::default()).await;
    let worker = app.worker(fast());
    let health = worker.health();
    let stop = CancellationToken::new();
    let running = tokio::spawn(worker.clone().run(stop.clone()));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!health.is_unhealthy());
    sqlx::query("alter table pdq.jobs rename to jobs_elsewhere")
        .execute(&app.db.pool)
        .await
        .unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || async {
            health.has(pdq::metrics::Condition::Claims)
        })
        .await,
        "failing claims show in /healthz"
    );
    assert!(health.reason().contains("claims"), "{}", health.reason());
    sqlx::query("alter table pdq.jobs_elsewhere rename to jobs")
        .execute(&app.db.pool)
        .await
        .unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || async { !health.is_unhealthy() }).await,
        "healthy again: {}",
        health.reason()
    );
    stop.cancel();
    running.await.unwrap().unwrap();
    app.db.drop_database().await;
}

#[tokio::test]
async fn shutdown_ends_within_the_grace_and_a_bound_while_postgres_hangs() {
    let app = TestApp::new(EmulatorConfig::default()).await;
    app.customers_with_one_job(40).await;
    app.emulator.set_faults(Faults {
        latency_ms: 200,
        ..Faults::default()
    });
    let worker = app.worker(WorkerConfig {
        shutdown_grace: Duration::from_secs(1),
        ..fast()
    });
    let stop = CancellationToken::new();
    let running = tokio::spawn(worker.clone().run(stop.clone()));
    assert!(
        wait_until(Duration::from_secs(10), || async {
            app.db.count("pdq.finished_jobs").await > 0
        })
        .await
    );
    // Another session takes every pdq table: each statement of the worker now waits.
    let mut blocker = app.db.pool.begin().await.unwrap();
    sqlx::query("lock table pdq.jobs, pdq.inflight, pdq.finished_jobs in access exclusive mode")
        .execute(&mut *blocker)
        .await
        .unwrap();
    let asked = std::time::Instant::now();
    stop.cancel();
    let ended = tokio::time::timeout(Duration::from_secs(15), running).await;
    assert!(ended.is_ok(), "SIGTERM hung while Postgres did not answer");
    assert!(asked.elapsed() < Duration::from_secs(15));
    blocker.rollback().await.unwrap();
    app.db.drop_database().await;
}
