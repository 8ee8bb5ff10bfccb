//! The overview's data, shared by everyone watching: `pdq status` and the chart series cost a
//! few table scans at a million jobs, so the console keeps the last answer for a few seconds
//! and refreshes it in the background while someone looks (the page says "as of" when).

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Younger than this, a snapshot is served as it is.
pub(crate) const FRESH: Duration = Duration::from_secs(5);
/// Older than this, a snapshot is not served: the request reads the database itself.
pub(crate) const STALE_AT_MOST: Duration = Duration::from_secs(60);

/// One value of type `T` per key, with its age and a single background refresh at a time.
pub(crate) struct Snapshots<K, T> {
    values: Mutex<HashMap<K, (Instant, Arc<T>)>>,
    refreshing: AtomicBool,
}

impl<K, T> Default for Snapshots<K, T> {
    fn default() -> Self {
        Snapshots {
            values: Mutex::new(HashMap::new()),
            refreshing: AtomicBool::new(false),
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
                if !self.refreshing.swap(true, Ordering::AcqRel) {
                    let this = self.clone();
                    tokio::spawn(async move {
                        if let Ok(value) = load().await {
                            this.put(key, value);
                        }
                        this.refreshing.store(false, Ordering::Release);
                    });
                }
                return Ok(value);
            }
        }
        let value = load().await?;
        Ok(self.put(key, value))
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
    use std::sync::atomic::AtomicU32;

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
}
