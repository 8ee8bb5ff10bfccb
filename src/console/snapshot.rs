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
}

impl<K, T> Default for Snapshots<K, T> {
    fn default() -> Self {
        Snapshots {
            values: Mutex::new(HashMap::new()),
            reading: Mutex::new(HashSet::new()),
        }
    }
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
                        if let Ok(value) = load().await {
                            this.put(key.clone(), value);
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
        E: Send + 'static,
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
            this.done_reading(&key);
            answer
        });
        match tokio::time::timeout(wait, &mut read).await {
            Ok(Ok(answer)) => answer.map(Some),
            Ok(Err(_)) | Err(_) => Ok(None),
        }
    }

    /// Marks `key` as being read; false when a read of it is already going on.
    fn start_reading(&self, key: &K) -> bool {
        self.reading.lock().unwrap().insert(key.clone())
    }

    fn done_reading(&self, key: &K) {
        self.reading.lock().unwrap().remove(key);
    }

    fn put(&self, key: K, value: T) -> Arc<T> {
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
                async move { Ok::<_, ()>(reads.fetch_add(1, Ordering::SeqCst) + 1) }
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
            Ok::<_, ()>(7)
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
