//! Archives applied units in batches: one statement for many units, not one per unit.
//!
//! Applied-but-unrecorded units are the ones a crash would send again, so their number is
//! bounded: an executor that applied a unit waits here while [`MAX_UNRECORDED`] units are
//! already waiting, and every statement records at most [`STATEMENT_UNITS`] units (its cost is
//! linear in its size).

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::{Mutex, Notify};
use tokio_util::sync::CancellationToken;

use super::Inner;
use crate::queue::lease::Success;
use crate::queue::{self};

/// Collects successes and writes them together.
pub struct Completer {
    pool: PgPool,
    pending: Mutex<Vec<Success>>,
    ready: Notify,
    recorded: Notify,
}

/// Flush once this many units are waiting, or after [`FLUSH_EVERY`].
const BATCH: usize = 128;
/// At most this many units per finishing statement.
pub const STATEMENT_UNITS: usize = 256;
/// At most this many applied units wait to be recorded; further executors wait.
pub const MAX_UNRECORDED: usize = 1_024;

/// The longest an applied unit waits for others to share its recording statement.
const FLUSH_EVERY: Duration = Duration::from_millis(5);

/// The first wait before recording applied units is tried again after a database error.
const RECORD_RETRY_FIRST: Duration = Duration::from_millis(50);

/// The longest wait between two tries to record applied units.
const RECORD_RETRY_MAX: Duration = Duration::from_secs(5);

impl Completer {
    /// An empty completer.
    pub fn new(pool: PgPool) -> Self {
        Completer {
            pool,
            pending: Mutex::new(Vec::new()),
            ready: Notify::new(),
            recorded: Notify::new(),
        }
    }

    /// Queues one applied unit; waits first while the backlog is at its bound.
    pub async fn push(&self, success: Success) {
        loop {
            let recorded = self.recorded.notified();
            {
                let mut pending = self.pending.lock().await;
                if pending.len() < MAX_UNRECORDED {
                    pending.push(success);
                    if pending.len() >= BATCH {
                        self.ready.notify_one();
                    }
                    return;
                }
            }
            self.ready.notify_one();
            recorded.await;
        }
    }

    /// Writes everything queued, [`STATEMENT_UNITS`] units per statement; retries a failed
    /// write so no success is forgotten.
    pub async fn flush(&self) -> Result<(), queue::Error> {
        let batch = std::mem::take(&mut *self.pending.lock().await);
        for chunk in batch.chunks(STATEMENT_UNITS) {
            self.record(chunk).await;
        }
        self.recorded.notify_waiters();
        Ok(())
    }

    /// Records one chunk, retrying (with a delay doubling from [`RECORD_RETRY_FIRST`] up to
    /// [`RECORD_RETRY_MAX`]) until Postgres takes it: the updates are already applied.
    async fn record(&self, chunk: &[Success]) {
        let mut delay = RECORD_RETRY_FIRST;
        loop {
            match queue::lease::succeed_batch(&self.pool, chunk).await {
                Ok(lost) => {
                    for lease in lost {
                        tracing::warn!(%lease, "an applied unit had lost its lease; another worker may apply it again");
                    }
                    return;
                }
                Err(error) => {
                    tracing::warn!(%error, "recording applied units failed: {error}; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(RECORD_RETRY_MAX);
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
