//! Paths of the worker that only an end-to-end run exercises.

use std::time::{Duration, Instant};

use pdq::emulator::{ConversationSpec, EmulatorConfig, Faults};
use pdq::metrics::Health;
use pdq::queue::Locators;
use pdq::worker::WorkerConfig;
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
    let c = app
        .emulator
        .create_conversation(ConversationSpec::voice().customer("X"));
    let pid = c.participant("customer").unwrap();
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
    // Probes come about 2 s and 6 s after the pause: both must find the permission missing.
    let healthy = healthy_samples(&health, Duration::from_millis(9_000)).await;
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

#[tokio::test]
async fn five_refused_conversations_in_a_row_pause_the_worker_until_access_returns() {
    let app = TestApp::new(EmulatorConfig::default()).await;
    let mut targets = Vec::new();
    for i in 0..7 {
        let c = app
            .emulator
            .create_conversation(ConversationSpec::voice().customer("X"));
        let pid = c.participant("customer").unwrap();
        assert!(app.emulator.set_forbidden(c.id, true));
        app.enqueue(job(Locators::ids(c.id, pid), json!({ "n": i.to_string() })))
            .await;
        targets.push((c.id, pid));
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
    let not_authorized = (
        "forbidden".to_owned(),
        Some(403),
        Some("not.authorized".to_owned()),
    );
    assert_eq!(app.dead_reasons().await, vec![not_authorized.clone(); 4]);
    let healthy = healthy_samples(&health, Duration::from_millis(9_000)).await;
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
