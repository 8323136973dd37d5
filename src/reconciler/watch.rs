//! The watch that feeds every kind's kube-runtime controller, built once: list and watch with
//! kube-runtime's default backoff, drop what the controller never reads before it is cached,
//! keep the cache, let the kind follow every event (to prune what it keeps), and pass on only
//! the changes worth a reconcile (the kind's trigger hash: never the controller's own status
//! writes).

use futures::{Stream, StreamExt};
use kube::Resource;
use kube::api::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use serde::de::DeserializeOwned;
use tracing::debug;

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
        .default_backoff()
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
