//! After an API-server outage, what it stopped is tried again as soon as the API server answers,
//! not at the end of a backoff that grew through the outage.
//!
//! A reconcile the API server did not answer backs off like any failure (a second, doubling, up to
//! five minutes: see `retry`): through a 30 s outage an object caught mid-reconcile (its status
//! write refused after its connection was made, say) fails four or five times, and would wait up
//! to 20 s after the return; through a longer one, up to five minutes. The objects are few (those
//! whose reconcile was under way) and the controller's concurrency bounds how many go at once.

use std::collections::HashSet;

use futures::{Stream, StreamExt};
use kube::Resource;
use kube::runtime::reflector::{ObjectRef, Store};
use tracing::info;

use crate::compact_id::CompactId;

/// Whether a failed call means the API server did not answer (unreachable, 5xx), rather than
/// that it refused (4xx).
pub fn unanswered(error: &kube::Error) -> bool {
    match error {
        kube::Error::Api(status) => status.code >= 500,
        _ => true,
    }
}

/// The cached objects to reconcile at each of the API server's `returns` (see
/// `http::Readiness::returns`): those `due` makes due again (the tracker's
/// `due_after_return`).
pub fn retried<K>(
    returns: tokio::sync::watch::Receiver<u64>,
    store: Store<K>,
    due: impl Fn() -> HashSet<CompactId> + Send + 'static,
    kind: &'static str,
) -> impl Stream<Item = ObjectRef<K>> + Send + 'static
where
    K: Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
{
    futures::stream::unfold(returns, |mut returns| async move {
        returns.changed().await.ok()?;
        Some(((), returns))
    })
    .flat_map(move |()| futures::stream::iter(cached(&store, &due(), kind)))
}

/// The cached objects among `due`, by reference.
fn cached<K>(store: &Store<K>, due: &HashSet<CompactId>, kind: &'static str) -> Vec<ObjectRef<K>>
where
    K: Resource<DynamicType = ()> + Clone,
{
    if due.is_empty() {
        return Vec::new();
    }
    let objects: Vec<ObjectRef<K>> = store
        .state_filter(|o| {
            o.meta()
                .uid
                .as_deref()
                .is_some_and(|uid| due.contains(&CompactId::of(uid)))
        })
        .iter()
        .map(|o| ObjectRef::from_obj(o.as_ref()))
        .collect();
    info!(
        kind,
        objects = objects.len(),
        "the Kubernetes API server answers again: trying again at once what its outage stopped"
    );
    objects
}
