//! The chart of 429s and pauses reads counters that a real worker records with its heartbeat.

use std::time::Duration;

use pdq::emulator::{ConversationSpec, EmulatorConfig};
use pdq::queue::Locators;
use serde_json::json;

use crate::app::{fast, job, TestApp};
use crate::helpers::wait_until;

#[tokio::test]
async fn a_running_worker_records_its_counters_per_minute() {
    let app = TestApp::new(EmulatorConfig::default()).await;
    let conversation = app
        .emulator
        .create_conversation(ConversationSpec::voice().customer("Jane"));
    for i in 0..3 {
        app.enqueue(job(
            Locators::conversation(conversation.id),
            json!({ "step": i.to_string() }),
        ))
        .await;
    }
    let worker = app.worker(fast());
    let stop = tokio_util::sync::CancellationToken::new();
    let running = tokio::spawn(worker.run(stop.clone()));
    let pool = app.db.pool.clone();
    let sampled = wait_until(Duration::from_secs(20), || {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, bool>(
                "select exists (select 1 from pdq.worker_samples where api_requests_total > 0)",
            )
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    })
    .await;
    stop.cancel();
    running.await.unwrap().unwrap();
    assert!(
        sampled,
        "the heartbeat records the API requests in pdq.worker_samples"
    );
    let (requests, rate_limited): (Option<i64>, Option<i64>) =
        sqlx::query_as("select api_requests_total, rate_limited_total from pdq.workers")
            .fetch_one(&app.db.pool)
            .await
            .unwrap();
    assert!(requests.unwrap_or(0) >= 2, "a lookup and a PATCH at least");
    assert_eq!(
        rate_limited,
        Some(0),
        "no 429 from an emulator without limits"
    );
    app.db.drop_database().await;
}
