//! The overview's data, shared by everyone watching: `pdq status` and the chart series cost a
//! few table scans at a million jobs (about a second), so the console keeps the last answer,
//! refreshes it in the background while someone looks (the page says "as of" when), and never
//! makes a request wait for a whole read: the first one renders without the figures still
//! being read and the page's refresh shows them.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Younger than this, a snapshot is served as it is.
pub(crate) const FRESH: Duration = Duration::from_secs(5);
/// How often a request waiting for another's read looks for its answer.
const POLL: Duration = Duration::from_millis(5);
/// Older than this, a snapshot is not served: the request reads the database itself (with
/// [`Snapshots::get`]) or renders without it (with [`Snapshots::get_within`]).
pub(crate) const STALE_AT_MOST: Duration = Duration::from_secs(600);

/// One value of type `T` per key, with its age and a single background refresh at a time.
pub(crate) struct Snapshots<K, T> {
    values: Mutex<HashMap<K, (Instant, Arc<T>)>>,
    /// The keys being read right now (one read per key at a time).
    reading: Mutex<HashSet<K>>,
    /// Why the last background refresh of a key failed (cleared by a successful read).
    failures: Mutex<HashMap<K, String>>,
}

impl<K, T> Default for Snapshots<K, T> {
    fn default() -> Self {
        Snapshots {
            values: Mutex::new(HashMap::new()),
            reading: Mutex::new(HashSet::new()),
            failures: Mutex::new(HashMap::new()),
        }
    }
}

/// How old the snapshot of a key is, and why it could not be refreshed, if it could not.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Freshness {
    /// Time since the snapshot was read.
    pub age: Duration,
    /// The error of the last refresh, while refreshing fails.
    pub failing: Option<String>,
}

impl<K, T> Snapshots<K, T>
where
    K: std::hash::Hash + Eq + Clone + Send + Sync + 'static,
    T: Send + Sync + 'static,
{
    /// The value for `key`: a fresh snapshot as it is; a stale one (but younger than
    /// [`STALE_AT_MOST`]) while `load` refreshes it in the background; otherwise `load`'s answer.
    pub(crate) async fn get<F, Fut, E>(self: &Arc<Self>, key: K, load: F) -> Result<Arc<T>, E>
    where
        F: Fn() -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
        E: std::fmt::Display,
    {
        let known = self.values.lock().unwrap().get(&key).cloned();
        if let Some((at, value)) = known {
            let age = at.elapsed();
            if age < FRESH {
                return Ok(value);
            }
            if age < STALE_AT_MOST {
                if self.start_reading(&key) {
                    let this = self.clone();
                    tokio::spawn(async move {
                        match load().await {
                            Ok(value) => {
                                this.put(key.clone(), value);
                            }
                            Err(error) => this.failed(&key, error.to_string()),
                        }
                        this.done_reading(&key);
                    });
                }
                return Ok(value);
            }
        }
        let value = load().await?;
        Ok(self.put(key, value))
    }

    /// Like [`get`](Self::get), but a request never waits longer than `wait` for a read: with
    /// no usable snapshot, `load` runs in the background and `None` means "not read yet" (the
    /// value is there for a later request). A read that fails within `wait` is an error.
    pub(crate) async fn get_within<F, Fut, E>(
        self: &Arc<Self>,
        key: K,
        load: F,
        wait: Duration,
    ) -> Result<Option<Arc<T>>, E>
    where
        F: Fn() -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
        E: Send + std::fmt::Display + 'static,
    {
        let known = self.values.lock().unwrap().get(&key).cloned();
        if known.is_some_and(|(at, _)| at.elapsed() < STALE_AT_MOST) {
            return self.get(key, load).await.map(Some);
        }
        let until = Instant::now() + wait;
        if !self.start_reading(&key) {
            // Another request is reading: look again until `wait` is over.
            while Instant::now() < until {
                tokio::time::sleep(POLL).await;
                if let Some((at, value)) = self.values.lock().unwrap().get(&key).cloned() {
                    if at.elapsed() < STALE_AT_MOST {
                        return Ok(Some(value));
                    }
                }
            }
            return Ok(None);
        }
        let this = self.clone();
        let mut read = tokio::spawn(async move {
            let answer = load().await.map(|value| this.put(key.clone(), value));
            if let Err(error) = &answer {
                this.failed(&key, error.to_string());
            }
            this.done_reading(&key);
            answer
        });
        match tokio::time::timeout(wait, &mut read).await {
            Ok(Ok(answer)) => answer.map(Some),
            Ok(Err(_)) | Err(_) => Ok(None),
        }
    }

    /// The age of `key`'s snapshot and whether refreshing it fails (`None`: never read).
    pub(crate) fn freshness(&self, key: &K) -> Option<Freshness> {
        let age = self.values.lock().unwrap().get(key)?.0.elapsed();
        let failing = self.failures.lock().unwrap().get(key).cloned();
        Some(Freshness { age, failing })
    }

    fn failed(&self, key: &K, error: String) {
        self.failures.lock().unwrap().insert(key.clone(), error);
    }

    /// Marks `key` as being read; false when a read of it is already going on.
    fn start_reading(&self, key: &K) -> bool {
        self.reading.lock().unwrap().insert(key.clone())
    }

    fn done_reading(&self, key: &K) {
        self.reading.lock().unwrap().remove(key);
    }

    fn put(&self, key: K, value: T) -> Arc<T> {
        self.failures.lock().unwrap().remove(&key);
        let value = Arc::new(value);
        self.values
            .lock()
            .unwrap()
            .insert(key, (Instant::now(), value.clone()));
        value
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test]
    async fn a_fresh_snapshot_is_served_without_reading_again() {
        let snapshots: Arc<Snapshots<u8, u32>> = Arc::default();
        let reads = Arc::new(AtomicU32::new(0));
        let load = {
            let reads = reads.clone();
            move || {
                let reads = reads.clone();
                async move { Ok::<_, &str>(reads.fetch_add(1, Ordering::SeqCst) + 1) }
            }
        };
        assert_eq!(*snapshots.get(0, load.clone()).await.unwrap(), 1);
        assert_eq!(*snapshots.get(0, load.clone()).await.unwrap(), 1);
        assert_eq!(*snapshots.get(1, load).await.unwrap(), 2, "keys are apart");
        assert_eq!(reads.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_slow_first_read_does_not_hold_the_request_and_serves_the_next() {
        let snapshots: Arc<Snapshots<(), u32>> = Arc::default();
        let slow = || async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            Ok::<_, &str>(7)
        };
        let started = Instant::now();
        let first = snapshots
            .get_within((), slow, Duration::from_millis(20))
            .await
            .unwrap();
        assert!(first.is_none(), "the read is still going");
        assert!(started.elapsed() < Duration::from_millis(250));
        let second = snapshots
            .get_within((), slow, Duration::from_millis(20))
            .await
            .unwrap();
        assert!(
            second.is_none(),
            "a second request does not start another read"
        );
        tokio::time::sleep(Duration::from_millis(400)).await;
        let later = snapshots
            .get_within((), slow, Duration::from_millis(20))
            .await
            .unwrap();
        assert_eq!(later.as_deref(), Some(&7), "the background read is served");
    }

    #[tokio::test]
    async fn a_snapshot_says_how_old_it_is_and_that_its_refresh_fails() {
        let snapshots: Arc<Snapshots<u8, u32>> = Arc::default();
        assert_eq!(snapshots.freshness(&0), None, "never read");
        snapshots.put(0, 5);
        // As if read 90 s ago, before a quiet spell.
        let ninety = Duration::from_secs(90);
        if let Some(entry) = snapshots.values.lock().unwrap().get_mut(&0) {
            entry.0 = Instant::now().checked_sub(ninety).unwrap();
        }
        let stale = snapshots.freshness(&0).unwrap();
        assert!(stale.age >= ninety, "{stale:?}");
        assert_eq!(stale.failing, None);
        // The stale value is served while a refresh runs; that refresh fails.
        let failing = || async { Err::<u32, _>("connection refused") };
        assert_eq!(*snapshots.get(0, failing).await.unwrap(), 5);
        let mut seen = None;
        for _ in 0..100 {
            seen = snapshots.freshness(&0).and_then(|f| f.failing);
            if seen.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(seen.as_deref(), Some("connection refused"));
        assert!(
            snapshots.freshness(&0).unwrap().age >= ninety,
            "still the old one"
        );
        // A read that works clears the failure and the age.
        let working = || async { Ok::<_, &str>(6) };
        assert_eq!(
            snapshots
                .get_within(1, working, Duration::from_secs(5))
                .await
                .unwrap()
                .as_deref(),
            Some(&6)
        );
        snapshots.put(0, 7);
        let fresh = snapshots.freshness(&0).unwrap();
        assert_eq!(fresh.failing, None);
        assert!(fresh.age < ninety);
    }

    #[tokio::test]
    async fn a_quick_read_or_its_error_comes_back_at_once() {
        let snapshots: Arc<Snapshots<u8, u32>> = Arc::default();
        let quick = || async { Ok::<_, &str>(3) };
        let got = snapshots
            .get_within(0, quick, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(got.as_deref(), Some(&3));
        let failing = || async { Err::<u32, _>("down") };
        let error = snapshots
            .get_within(1, failing, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert_eq!(error, "down");
    }
}
