//! The worker's two health answers over HTTP: liveness (`/livez`: the process works, its main
//! loop ticks) and readiness (`/readyz`, and `/healthz` as before: it can do its job), in each
//! state: starting, a long pause with live jobs behind (ready no, alive yes), working again,
//! a main loop that stopped, a stopped task.

use std::sync::Arc;
use std::time::Duration;

use pdq::metrics::{Condition, Health, Metrics};
use pdq::queue::{Locators, NewJob, Priority};
use pdq::worker::{Api, Worker};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::app::{fast, TestApp};
use crate::helpers::wait_until;

/// Serves `/metrics` and the health answers on a free local port; returns `http://addr`.
async fn serve(metrics: Arc<Metrics>, health: Arc<Health>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let router = pdq::metrics::router(metrics, health);
    tokio::spawn(async move { axum::serve(listener, router).await });
    base
}

async fn get(base: &str, path: &str) -> (u16, String) {
    let response = reqwest::get(format!("{base}{path}")).await.unwrap();
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

#[tokio::test]
async fn a_long_pause_with_live_jobs_behind_is_not_ready_but_alive_and_recovers() {
    let app = TestApp::new(Default::default()).await;
    let (conversation, customer) = app.customer_conversation();
    // A live job due for ten minutes: live is behind at the first gauge sample.
    let id = app
        .enqueue(NewJob {
            locators: Locators::ids(conversation.id, customer),
            attributes: json!({ "tier": "gold" }),
            priority: Some(Priority::Live),
            run_at: Some(chrono::Utc::now() - chrono::Duration::minutes(10)),
            ..NewJob::default()
        })
        .await;
    sqlx::query("update pdq.jobs set created_at = now() - interval '10 minutes' where id = $1")
        .bind(id)
        .execute(&app.db.pool)
        .await
        .unwrap();

    // A worker whose secret is refused: paused (configuration) as `pdq run` starts it.
    let api = Api::new(app.client("wrong-secret", Duration::from_millis(500)));
    let refused = Worker::new(app.db.pool.clone(), api, fast());
    let base = serve(refused.metrics(), refused.health()).await;
    assert_eq!(get(&base, "/livez").await, (200, "starting\n".into()));
    assert_eq!(get(&base, "/readyz").await, (200, "ok\n".into()));
    assert_eq!(get(&base, "/healthz").await, (200, "ok\n".into()));
    refused
        .health()
        .fail("the API refuses the client credentials (invalid_client)");
    let stop = CancellationToken::new();
    let running = tokio::spawn(refused.clone().run(stop.clone()));
    let behind = wait_until(Duration::from_secs(20), || async {
        get(&base, "/readyz").await.1.contains("live behind")
    })
    .await;
    let (status, ready) = get(&base, "/readyz").await;
    assert!(behind, "readiness never named live behind: {ready}");
    assert_eq!(status, 503);
    assert!(
        ready.contains("paused (configuration): the API refuses"),
        "{ready}"
    );
    assert!(
        ready.contains("the oldest due live job has waited 10m"),
        "{ready}"
    );
    assert_eq!(
        get(&base, "/healthz").await,
        (503, ready.clone()),
        "/healthz is readiness"
    );
    // Paused and behind, the process works: liveness stays green.
    assert_eq!(get(&base, "/livez").await, (200, "alive\n".into()));
    let metrics = get(&base, "/metrics").await.1;
    for line in [
        "pdq_ready 0",
        "pdq_live_behind 1",
        "pdq_live_behind_threshold_seconds 60",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "{line} missing:\n{metrics}"
        );
    }
    stop.cancel();
    running.await.unwrap().unwrap();
    assert_eq!(app.db.count("pdq.jobs").await, 1, "job {id} waited");

    // A worker that can work applies the job; live is no longer behind, readiness is green.
    let worker = app.worker(fast());
    let base = serve(worker.metrics(), worker.health()).await;
    let stop = CancellationToken::new();
    let running = tokio::spawn(worker.clone().run(stop.clone()));
    let green = wait_until(Duration::from_secs(20), || async {
        app.db.count("pdq.jobs").await == 0 && get(&base, "/readyz").await.0 == 200
    })
    .await;
    let ready = get(&base, "/readyz").await;
    let live = get(&base, "/livez").await;
    stop.cancel();
    running.await.unwrap().unwrap();
    assert!(green, "{ready:?}");
    assert_eq!(ready, (200, "ok\n".into()));
    assert_eq!(live, (200, "alive\n".into()));
    // The ten-minute wait lands in the hour buckets, not only in +Inf. (Until the applied path
    // passes the job's priority, the observation is exported as `priority="unknown"`.)
    let metrics = worker.metrics().render_with(&worker.health());
    let series = match metrics.contains("pdq_enqueue_to_applied_seconds_count{priority=\"live\"} 1")
    {
        true => "live",
        false => "unknown",
    };
    let bucket = |le: &str| {
        format!("pdq_enqueue_to_applied_seconds_bucket{{priority=\"{series}\",le=\"{le}\"}}")
    };
    assert!(
        metrics.contains(&format!("{} 0", bucket("600"))),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!("{} 1", bucket("1800"))),
        "{metrics}"
    );
    app.db.drop_database().await;
}

#[tokio::test]
async fn liveness_fails_when_the_main_loop_stops_ticking_or_a_task_stops() {
    let health = Arc::new(Health::default());
    let base = serve(Arc::new(Metrics::default()), health.clone()).await;
    // Never ticked, and the bound is over.
    health.set_liveness_bound(Duration::ZERO);
    tokio::time::sleep(Duration::from_millis(5)).await;
    let (status, body) = get(&base, "/livez").await;
    assert_eq!(status, 503);
    assert!(body.starts_with("main loop not running"), "{body}");
    assert_eq!(get(&base, "/readyz").await, (200, "ok\n".into()), "apart");
    // Ticked, then no more.
    health.tick();
    tokio::time::sleep(Duration::from_millis(5)).await;
    let (status, body) = get(&base, "/livez").await;
    assert_eq!(status, 503);
    assert!(
        body.starts_with("main loop stuck: its last tick was"),
        "{body}"
    );
    // Ticking within the bound.
    health.set_liveness_bound(Duration::from_secs(3600));
    health.tick();
    assert_eq!(get(&base, "/livez").await, (200, "alive\n".into()));
    // A task stopped: the process is exiting, neither alive nor ready.
    health.set(Condition::Task, "a worker task panicked: boom");
    let (status, body) = get(&base, "/livez").await;
    assert_eq!(
        (status, body.as_str()),
        (503, "task stopped: a worker task panicked: boom\n")
    );
    let (status, body) = get(&base, "/readyz").await;
    assert_eq!(status, 503);
    assert!(body.contains("task stopped"), "{body}");
}
