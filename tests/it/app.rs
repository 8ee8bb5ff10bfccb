//! A test application shared by the worker tests: a fresh database, the in-process emulator,
//! and pdq's real client and worker on top.

use std::time::{Duration, Instant};

use pdq::emulator::{
    ConversationSpec, CreatedConversation, Emulator, EmulatorConfig, EmulatorHandle,
};
use pdq::genesys::GenesysClient;
use pdq::queue::{self, Locators, NewJob};
use pdq::worker::{Api, Backoff, Budget, Worker, WorkerConfig};
use secrecy::SecretString;
use serde_json::json;
use uuid::Uuid;

use crate::helpers::TestDb;

/// A database and an emulator for one test.
pub(crate) struct TestApp {
    /// The test's database.
    pub(crate) db: TestDb,
    /// The emulator the worker calls.
    pub(crate) emulator: EmulatorHandle,
}

impl TestApp {
    /// Starts an emulator (without its rate limit) and creates a database.
    pub(crate) async fn new(config: EmulatorConfig) -> TestApp {
        let emulator = Emulator::start(EmulatorConfig {
            rate_limit: None,
            ..config
        })
        .await
        .unwrap();
        TestApp {
            db: TestDb::with_connections(16).await,
            emulator,
        }
    }

    /// A client of the emulator as `pdq-demo` with `secret`.
    pub(crate) fn client(&self, secret: &str, timeout: Duration) -> GenesysClient {
        let mut settings = self.emulator.client_settings();
        settings.client_secret = SecretString::from(secret.to_owned());
        settings.request_timeout = timeout;
        GenesysClient::new(settings).unwrap()
    }

    /// A worker with the right credentials and a 500 ms request timeout.
    pub(crate) fn worker(&self, config: WorkerConfig) -> Worker {
        let api = Api::new(self.client("pdq-demo-secret", Duration::from_millis(500)));
        Worker::new(self.db.pool.clone(), api, config)
    }

    /// A voice conversation with one customer ("X") in the emulator, and that customer's id.
    pub(crate) fn customer_conversation(&self) -> (CreatedConversation, Uuid) {
        let conversation = self
            .emulator
            .create_conversation(ConversationSpec::voice().customer("X"));
        let customer = conversation.participant("customer").unwrap();
        (conversation, customer)
    }

    /// `n` customer conversations, each with one job `{"n": "<i>"}` enqueued for its customer;
    /// returns their `(conversation, customer)` ids in order.
    pub(crate) async fn customers_with_one_job(&self, n: usize) -> Vec<(Uuid, Uuid)> {
        let mut targets = Vec::with_capacity(n);
        for i in 0..n {
            let (c, pid) = self.customer_conversation();
            self.enqueue(job(Locators::ids(c.id, pid), json!({ "n": i.to_string() })))
                .await;
            targets.push((c.id, pid));
        }
        targets
    }

    /// Enqueues one job; returns its id.
    pub(crate) async fn enqueue(&self, job: NewJob) -> i64 {
        queue::enqueue(&self.db.pool, &job).await.unwrap().unwrap()
    }

    /// Drives the worker step by step until nothing is due, within `timeout`.
    pub(crate) async fn drain(&self, worker: &Worker, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.db.count("pdq.jobs").await > 0 {
            assert!(
                Instant::now() < deadline,
                "queue did not drain in {timeout:?}"
            );
            if worker.process_next().await.unwrap().is_empty() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }

    /// `(reason, http_status, error_code)` of every dead letter, oldest first.
    /// Runs `worker` as `pdq run` does until the queue is empty or `timeout` passes, then
    /// shuts it down; returns whether the queue drained.
    pub(crate) async fn run_until_drained(&self, worker: &Worker, timeout: Duration) -> bool {
        let stop = tokio_util::sync::CancellationToken::new();
        let running = tokio::spawn(worker.clone().run(stop.clone()));
        let drained =
            crate::helpers::wait_until(timeout, || async { self.db.count("pdq.jobs").await == 0 })
                .await;
        stop.cancel();
        running.await.unwrap().unwrap();
        drained
    }

    pub(crate) async fn dead_reasons(&self) -> Vec<(String, Option<i32>, Option<String>)> {
        sqlx::query_as("select reason, http_status, error_code from pdq.dead_letters order by id")
            .fetch_all(&self.db.pool)
            .await
            .unwrap()
    }
}

/// A worker configuration with short delays for tests.
pub(crate) fn fast() -> WorkerConfig {
    WorkerConfig {
        executors: 4,
        poll_interval: Duration::from_millis(100),
        backoff: Backoff {
            base: Duration::from_millis(20),
            cap: Duration::from_millis(300),
        },
        budget: Budget {
            per_minute: 0,
            ..Budget::default()
        },
        lookup_window: Duration::from_millis(600),
        seed: Some(7),
        ..WorkerConfig::default()
    }
}

/// A job with these locators and attributes, everything else default.
pub(crate) fn job(locators: Locators, attributes: serde_json::Value) -> NewJob {
    NewJob {
        locators,
        attributes,
        ..NewJob::default()
    }
}

/// The values the emulator received for `key` on one participant, in arrival order.
pub(crate) fn values_sent(app: &TestApp, cid: Uuid, pid: Uuid, key: &str) -> Vec<String> {
    app.emulator
        .patch_history(cid, pid)
        .into_iter()
        .filter_map(|patch| patch.attributes.get(key).cloned())
        .collect()
}

/// Moves a pending job's `run_at` to `secs` from now (negative: in the past).
pub(crate) async fn run_in(app: &TestApp, id: i64, secs: i64) {
    let moved = sqlx::query(
        "update pdq.jobs set run_at = now() + $2 * interval '1 second'
         where id = $1 and state = 'pending'",
    )
    .bind(id)
    .bind(secs)
    .execute(&app.db.pool)
    .await
    .unwrap();
    assert_eq!(moved.rows_affected(), 1, "job {id} is pending");
}
