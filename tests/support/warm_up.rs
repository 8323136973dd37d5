//! A restarted kube-apiserver's first moments, as its clients meet them: it answers before it is
//! ready, and some answers are refusals.
//!
//! - Its authorizer's RBAC caches (roles and bindings, listed from etcd after the port opens)
//!   are empty for a moment: every request of a service account is refused 403, the reason
//!   "informers not synced" (kubernetes/kubernetes#101422, #121635).
//! - The storage of a custom resource is made on the first request for it after the start
//!   (apiextensions' `getOrCreateServingInfoFor`), and its watch cache then lists the whole
//!   collection from etcd. Until that is done, a watch, and a list that is not a page without a
//!   selector, is answered 429 with `Retry-After: 1` ("storage is (re)initializing": KEP-4568,
//!   on by default since 1.31, locked on since 1.34; the wait is 1 s for a cache that was just
//!   made). Gets and writes go to etcd and are answered.
//!
//! Built-in kinds (Namespaces, Leases) have their caches made at the start: they are small
//! here and taken as ready once the authorizer is.
//!
//! The durations are estimates for 2 shared cores, not measurements: see [`WarmUp::KUBE_APISERVER`].

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::ApiCost;

/// How long a restarted API server's warm-up lasts.
#[derive(Clone, Copy, Debug)]
pub struct WarmUp {
    /// From the start until the authorizer allows anyone.
    pub authorizer: Duration,
    /// A custom resource's watch cache, from the first request for it: this...
    pub cache: Duration,
    /// ...and this per KiB of the collection's objects (read from etcd and decoded).
    pub cache_per_kib: Duration,
}

impl WarmUp {
    /// A small cluster's RBAC (a few hundred roles and bindings) is read in well under a
    /// second; a custom resource's objects are read from etcd and decoded at the price the cost
    /// model puts on a page from etcd (`ApiCost::of_etcd_read`: its read price, 40 us a KiB):
    /// 10,000 resources of 3.7 KiB (kubectl's, with the controller's finalizer and status) in
    /// about 1.5 s.
    pub const KUBE_APISERVER: WarmUp = WarmUp {
        authorizer: Duration::from_millis(500),
        cache: Duration::from_millis(100),
        cache_per_kib: ApiCost::KUBE_APISERVER.list_per_kib,
    };
}

/// A refusal of the warm-up: the status code, its reason and message.
pub struct Refusal {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
}

/// The warm-up since one start.
pub struct Warming {
    model: WarmUp,
    since: Instant,
    /// When each custom resource's watch cache is filled, by plural, once asked for.
    caches: HashMap<String, Instant>,
    /// Each custom resource's collection, in bytes of JSON, by plural: what its cache reads.
    bytes: HashMap<String, usize>,
}

impl Warming {
    /// The warm-up of a start now, with the size of each custom resource's collection.
    pub fn new(model: WarmUp, bytes: HashMap<String, usize>) -> Self {
        Warming {
            model,
            since: Instant::now(),
            caches: HashMap::new(),
            bytes,
        }
    }

    /// Whether the watch cache of the custom resource `plural` is filling now: a list it lets
    /// through is served from etcd.
    pub fn filling(&self, plural: &str) -> bool {
        self.caches
            .get(plural)
            .is_some_and(|filled| Instant::now() < *filled)
    }

    /// The refusal, if any, of a request now. `custom` is the plural of the custom resource it
    /// is for, if it is for one; `cached` tells
    /// whether the request would be served from the watch cache (a watch, or a list that is not
    /// a page without a selector).
    pub fn refusal(&mut self, path: &str, custom: Option<&str>, cached: bool) -> Option<Refusal> {
        let now = Instant::now();
        if now < self.since + self.model.authorizer {
            return Some(Refusal {
                code: 403,
                reason: "Forbidden",
                message: format!(
                    "{path} is forbidden: User \"system:serviceaccount:eac:eac-controller\" cannot do this: RBAC: informers not synced"
                ),
            });
        }
        let plural = custom?;
        let model = self.model;
        let bytes = self.bytes.get(plural).copied().unwrap_or(0);
        let filled = *self.caches.entry(plural.to_string()).or_insert_with(|| {
            now + model.cache + model.cache_per_kib.mul_f64(bytes as f64 / 1024.0)
        });
        (cached && now < filled).then(|| Refusal {
            code: 429,
            reason: "TooManyRequests",
            message: "storage is (re)initializing".to_string(),
        })
    }
}
