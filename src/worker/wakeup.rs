//! Wake-ups: `LISTEN pdq_jobs`, with a reconnect loop. The claimer also polls, so a lost
//! notification delays a job by at most the poll interval.

use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::PgListener;
use sqlx::PgPool;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// The channel the insert trigger notifies.
pub const CHANNEL: &str = "pdq_jobs";

/// The first wait before a failed `LISTEN` is tried again (the claimer polls meanwhile).
const RELISTEN_FIRST: Duration = Duration::from_millis(100);

/// The longest wait between two `LISTEN` attempts.
const RELISTEN_MAX: Duration = Duration::from_secs(10);

/// Wakes the claimer on every notification until `stop`.
pub async fn listen(pool: PgPool, wake: Arc<Notify>, stop: CancellationToken) {
    let mut delay = RELISTEN_FIRST;
    while !stop.is_cancelled() {
        let mut listener = match connect(&pool).await {
            Ok(listener) => {
                delay = RELISTEN_FIRST;
                listener
            }
            Err(error) => {
                tracing::warn!(%error, "LISTEN failed; polling until it works");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = stop.cancelled() => return,
                }
                delay = (delay * 2).min(RELISTEN_MAX);
                continue;
            }
        };
        // Anything inserted while we were not listening is found by this wake-up.
        wake.notify_one();
        loop {
            tokio::select! {
                received = listener.try_recv() => match received {
                    Ok(Some(_)) => wake.notify_one(),
                    Ok(None) => {
                        wake.notify_one();
                    }
                    Err(error) => {
                        tracing::warn!(%error, "notification connection lost; reconnecting");
                        break;
                    }
                },
                _ = stop.cancelled() => return,
            }
        }
    }
}

async fn connect(pool: &PgPool) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(CHANNEL).await?;
    Ok(listener)
}
