//! Archives applied units in batches: one statement for many units, not one per unit.

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use super::Inner;
use crate::queue::{self, Success};

/// Collects successes and writes them together.
pub struct Completer {
    pool: PgPool,
    pending: Mutex<Vec<Success>>,
    ready: tokio::sync::Notify,
}

/// Flush once this many units are waiting, or after [`FLUSH_EVERY`].
const BATCH: usize = 128;
const FLUSH_EVERY: Duration = Duration::from_millis(5);

impl Completer {
    /// An empty completer.
    pub fn new(pool: PgPool) -> Self {
        Completer {
            pool,
            pending: Mutex::new(Vec::new()),
            ready: tokio::sync::Notify::new(),
        }
    }

    /// Queues one applied unit.
    pub async fn push(&self, success: Success) {
        let len = {
            let mut pending = self.pending.lock().await;
            pending.push(success);
            pending.len()
        };
        if len >= BATCH {
            self.ready.notify_one();
        }
    }

    /// Writes everything queued; retries a failed write so no success is forgotten.
    pub async fn flush(&self) -> Result<(), queue::Error> {
        let batch = std::mem::take(&mut *self.pending.lock().await);
        if batch.is_empty() {
            return Ok(());
        }
        let mut delay = Duration::from_millis(50);
        loop {
            match queue::succeed_batch(&self.pool, &batch).await {
                Ok(lost) => {
                    for lease in lost {
                        tracing::warn!(%lease, "applied unit had lost its lease; another worker may apply it again");
                    }
                    return Ok(());
                }
                Err(error) => {
                    tracing::warn!(%error, "recording applied units failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}

/// Flushes on a short timer or when a batch is full, until `stop`.
pub async fn run(inner: Arc<Inner>, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = inner.completer.ready.notified() => {}
            _ = tokio::time::sleep(FLUSH_EVERY) => {}
            _ = stop.cancelled() => break,
        }
        let _ = inner.completer.flush().await;
    }
    let _ = inner.completer.flush().await;
}
