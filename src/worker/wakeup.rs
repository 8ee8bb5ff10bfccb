//! Wake-ups: `LISTEN pdq_jobs`, with a reconnect loop and a check of its own connection. The
//! claimer also polls, so a lost notification delays a job by at most the poll interval.
//!
//! A wake-up channel can look fine and never fire: `LISTEN` through a transaction pooler
//! succeeds on whichever server connection the pooler lends, and the notifications go
//! nowhere. [`Wakeups`] notices it from the claimer's side (jobs the poll found that a
//! notification should have announced) and says so once.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
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

/// How often the listener checks that its connection still answers (a silent connection
/// would otherwise swallow every notification without an error).
const CHECK_EVERY: Duration = Duration::from_secs(10);

/// Polls that find jobs inserted after the queue was seen empty, with no notification since,
/// before the channel is said to be silent.
const MISSES_BEFORE_WARNING: u32 = 3;

/// What the listener heard and what the claimer found, to tell a channel that never fires.
#[derive(Debug, Default)]
pub(super) struct Wakeups {
    /// `LISTEN` is in force on a connection.
    listening: AtomicBool,
    /// Notifications received so far.
    heard: AtomicU64,
    silence: Mutex<Silence>,
}

#[derive(Debug, Default)]
struct Silence {
    /// `heard` when a claim last found nothing while listening.
    empty_at: Option<u64>,
    /// Polls in a row that found jobs a notification should have announced.
    missed: u32,
    /// The warning was given.
    warned: bool,
}

/// What the worker says about a channel that never fires.
pub(super) const SILENT: &str = "wake-ups never arrive: jobs are found by the poll only \
    (LISTEN through a transaction pooler?); pickup waits for the poll interval. Give the \
    listener a direct connection (--listen-url) or poll on purpose (--wakeup poll)";

impl Wakeups {
    fn set_listening(&self, listening: bool) {
        self.listening.store(listening, Ordering::Release);
        self.silence.lock().unwrap().empty_at = None;
    }

    /// A notification arrived: the channel works. Returns true when it had been said to be
    /// silent.
    fn heard(&self) -> bool {
        self.heard.fetch_add(1, Ordering::AcqRel);
        let mut silence = self.silence.lock().unwrap();
        silence.missed = 0;
        let was_silent = silence.warned;
        silence.warned = false;
        was_silent
    }

    /// A claim returned; `found`: it claimed units, `by_poll`: the poll (not a notification)
    /// started it. Returns true when the channel is now found silent (once, until a
    /// notification arrives).
    pub(super) fn claimed(&self, found: bool, by_poll: bool) -> bool {
        let listening = self.listening.load(Ordering::Acquire);
        let heard = self.heard.load(Ordering::Acquire);
        let mut silence = self.silence.lock().unwrap();
        if !listening {
            silence.empty_at = None;
            return false;
        }
        if !found {
            silence.empty_at = Some(heard);
            return false;
        }
        let missed = by_poll && silence.empty_at == Some(heard);
        silence.empty_at = None;
        if !missed {
            return false;
        }
        silence.missed += 1;
        if silence.missed >= MISSES_BEFORE_WARNING && !silence.warned {
            silence.warned = true;
            return true;
        }
        false
    }
}

/// Wakes the claimer on every notification until `stop`; `bound` limits each call on the
/// listener's connection (connecting, `LISTEN`, the periodic check).
pub(super) async fn listen(
    pool: PgPool,
    wakeups: Arc<Wakeups>,
    wake: Arc<Notify>,
    health: Arc<crate::metrics::Health>,
    bound: Duration,
    stop: CancellationToken,
) {
    let mut delay = RELISTEN_FIRST;
    while !stop.is_cancelled() {
        let mut listener = match tokio::time::timeout(bound, connect(&pool)).await {
            Ok(Ok(listener)) => {
                delay = RELISTEN_FIRST;
                listener
            }
            failed => {
                let error = match failed {
                    Ok(Err(error)) => error.to_string(),
                    _ => format!("no answer within {} s", bound.as_secs_f64()),
                };
                tracing::warn!(%error, "LISTEN failed; polling until it works");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = stop.cancelled() => return,
                }
                delay = (delay * 2).min(RELISTEN_MAX);
                continue;
            }
        };
        wakeups.set_listening(true);
        // Anything inserted while we were not listening is found by this wake-up.
        wake.notify_one();
        loop {
            tokio::select! {
                received = tokio::time::timeout(CHECK_EVERY, listener.try_recv()) => match received {
                    Ok(Ok(Some(_))) => {
                        if wakeups.heard() {
                            tracing::info!("wake-ups arrive again");
                            health.clear_note(crate::metrics::Note::Wakeups);
                        }
                        wake.notify_one();
                    }
                    Ok(Ok(None)) => {
                        wake.notify_one();
                    }
                    Ok(Err(error)) => {
                        tracing::warn!(%error, "notification connection lost; reconnecting");
                        break;
                    }
                    Err(_) => {
                        // A simple query: no prepared statement a pooler could not keep.
                        let check = sqlx::Executor::execute(&mut listener, "select 1");
                        if !matches!(tokio::time::timeout(bound, check).await, Ok(Ok(_))) {
                            tracing::warn!(
                                "the notification connection does not answer; reconnecting"
                            );
                            break;
                        }
                    }
                },
                _ = stop.cancelled() => return,
            }
        }
        wakeups.set_listening(false);
        drop(listener);
    }
}

async fn connect(pool: &PgPool) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(CHANNEL).await?;
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_channel_is_silent_after_polls_find_jobs_no_notification_announced() {
        let wakeups = Wakeups::default();
        // Not listening: nothing to say.
        assert!(!wakeups.claimed(false, true));
        assert!(!wakeups.claimed(true, true));
        wakeups.set_listening(true);
        // Three times the queue was empty and then the poll found a job: silent, said once.
        for round in 0..MISSES_BEFORE_WARNING {
            assert!(!wakeups.claimed(false, true));
            let said = wakeups.claimed(true, true);
            assert_eq!(said, round + 1 == MISSES_BEFORE_WARNING, "round {round}");
        }
        assert!(!wakeups.claimed(false, true));
        assert!(!wakeups.claimed(true, true), "said once");
        // A notification: the channel works, the count starts again.
        assert!(wakeups.heard());
        assert!(!wakeups.claimed(false, true));
        assert!(!wakeups.claimed(true, true));
        // Jobs found after a notification, or by a refill while busy, are no miss.
        wakeups.heard();
        assert!(!wakeups.claimed(false, true));
        wakeups.heard();
        assert!(!wakeups.claimed(true, true));
        assert!(!wakeups.claimed(true, false));
        assert_eq!(wakeups.silence.lock().unwrap().missed, 0);
    }
}
