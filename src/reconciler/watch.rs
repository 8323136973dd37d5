//! The watch that feeds every kind's kube-runtime controller, built once: list and watch with
//! kube-runtime's default backoff, drop what the controller never reads before it is cached,
//! keep the cache, let the kind follow every event (to prune what it keeps), and pass on only
//! the changes worth a reconcile (the kind's trigger hash: never the controller's own status
//! writes).

use std::time::Duration;

use futures::{Stream, StreamExt};
use kube::Resource;
use kube::api::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::utils::Backoff;
use kube::runtime::{WatchStreamExt, watcher};
use serde::de::DeserializeOwned;
use tracing::debug;

/// The backoff of every watch after a failure: 250 ms doubling to at most 2 s, jittered by
/// +/-25 %, back to 250 ms once the watch works again.
///
/// Why not client-go's 800 ms to 30 s (kube-runtime's default): after a 10 s API-server outage
/// that schedule leaves the next try up to 25 s away, and nothing new is reconciled meanwhile.
/// Its long cap protects an API server from thousands of clients retrying together; here one
/// leader retries its few watches (resources, policies, mappings, namespaces), so a try every 2 s
/// at worst costs the API server a refused request each, and the jitter keeps the controller's
/// watches (and its standby's Lease calls) from arriving together. A working watch resets it.
pub struct WatchBackoff {
    next: Duration,
}

impl WatchBackoff {
    pub const FIRST: Duration = Duration::from_millis(250);
    pub const MAX: Duration = Duration::from_secs(2);
}

impl Default for WatchBackoff {
    fn default() -> Self {
        WatchBackoff { next: Self::FIRST }
    }
}

impl Iterator for WatchBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let wait = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        Some(wait.mul_f64(0.75 + 0.5 * rand::random::<f64>()))
    }
}

impl Backoff for WatchBackoff {
    fn reset(&mut self) {
        self.next = Self::FIRST;
    }
}

/// The cache of `api`'s objects and the stream of those that changed in a way `trigger` sees.
pub fn triggers<K>(
    api: Api<K>,
    config: watcher::Config,
    slim: impl FnMut(&mut K) + Send + 'static,
    follow: impl FnMut(&Store<K>, &Result<watcher::Event<K>, watcher::Error>) + Send + 'static,
    trigger: impl Fn(&K) -> Option<u64> + Send + 'static,
) -> (
    Store<K>,
    impl Stream<Item = Result<K, watcher::Error>> + Send + 'static,
)
where
    K: Resource<DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let (store, writer) = reflector::store();
    let followed = store.clone();
    let mut follow = follow;
    let stream = watcher(api, config)
        .backoff(WatchBackoff::default())
        .modify(slim)
        .reflect(writer)
        .inspect(move |event| follow(&followed, event))
        .applied_objects()
        .predicate_filter(trigger, Default::default());
    (store, stream)
}

/// Logs what a kube-runtime controller reports about each reconcile (the reconciles log and
/// count themselves; this is the controller's own view, at debug level).
pub async fn drain<S, T, E>(results: S, kind: &'static str)
where
    S: Stream<Item = Result<T, E>>,
    T: std::fmt::Debug,
    E: std::fmt::Display,
{
    results
        .for_each(|result| async move {
            match result {
                Ok(object) => debug!(kind, object = ?object, "reconciled"),
                Err(e) => debug!(kind, error = %e, "controller event"),
            }
        })
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_watch_backoff_doubles_to_two_seconds_and_starts_again_after_a_success() {
        let mut b = WatchBackoff::default();
        let waits: Vec<Duration> = (0..8).map(|_| b.next().unwrap()).collect();
        let bounds = |base: f64| (base * 0.75, base * 1.25);
        for (wait, base) in waits.iter().zip([0.25, 0.5, 1.0, 2.0, 2.0, 2.0, 2.0, 2.0]) {
            let (low, high) = bounds(base);
            assert!((low..=high).contains(&wait.as_secs_f64()), "{waits:?}");
        }
        // After a 10 s outage the watch has tried within the last 2.5 s at most.
        b.reset();
        assert!(b.next().unwrap() <= Duration::from_millis(313));
    }
}
