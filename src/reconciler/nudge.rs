//! How one kind tells another's controller that something it waits for just happened in the same
//! cluster, so it does not wait for its next poll: a connection requested a management account
//! that a policy here decides for; a policy accepted a connection a resource here holds.
//!
//! The target controller attaches its watch cache and the stream its kube-runtime controller
//! reconciles on (`Controller::reconcile_on`) while it runs; a nudge makes the matching objects
//! due now (past their checkpoints) and queues them. Nothing is nudged while the target is not
//! running (a standby, a management side turned off): the poll still covers it.

use std::sync::{Arc, Mutex};

use futures::channel::mpsc::{UnboundedReceiver, UnboundedSender, unbounded};
use kube::Resource;
use kube::runtime::reflector::{ObjectRef, Store};

/// Why a nudge makes an object due.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Why {
    /// What it waits for happened here (a request made, a connection decided): AWS may not show
    /// it at once (List is eventually consistent).
    Happened,
    /// The credentials it acts with changed (a mapping, a namespace's labels): AWS shows the
    /// other account's view at once.
    Credentials,
}

/// Makes an object of the target kind due now (by uid, and why), past its checkpoint.
pub type Expire = Arc<dyn Fn(&str, Why) + Send + Sync>;

/// Finds a cached object of the target kind by a key its kind indexes (a connection's id), so a
/// nudge need not scan the cache.
pub type Find<K> = Arc<dyn Fn(&str) -> Option<Arc<K>> + Send + Sync>;

struct Target<K: Resource<DynamicType = ()> + 'static> {
    store: Store<K>,
    queue: UnboundedSender<ObjectRef<K>>,
    expire: Expire,
    find: Option<Find<K>>,
}

impl<K: Resource<DynamicType = ()> + 'static> Target<K> {
    /// Makes a cached object due now and queues it; false if the controller stopped.
    fn now(&self, object: &K, why: Why) -> bool {
        if let Some(uid) = object.meta().uid.as_deref() {
            (self.expire)(uid, why);
        }
        self.queue
            .unbounded_send(ObjectRef::from_obj(object))
            .is_ok()
    }
}

/// A handle on a controller of kind `K`, shared by whoever may nudge it.
pub struct Nudge<K: Resource<DynamicType = ()> + 'static> {
    target: Arc<Mutex<Option<Target<K>>>>,
}

impl<K: Resource<DynamicType = ()> + 'static> Clone for Nudge<K> {
    fn clone(&self) -> Self {
        Nudge {
            target: self.target.clone(),
        }
    }
}

impl<K: Resource<DynamicType = ()> + 'static> Default for Nudge<K> {
    fn default() -> Self {
        Nudge {
            target: Arc::default(),
        }
    }
}

impl<K> Nudge<K>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    /// The target controller starts: nudges go to the returned stream (for `reconcile_on`).
    pub fn attach(
        &self,
        store: Store<K>,
        expire: Expire,
        find: Option<Find<K>>,
    ) -> UnboundedReceiver<ObjectRef<K>> {
        let (queue, nudged) = unbounded();
        *self.target.lock().unwrap_or_else(|p| p.into_inner()) = Some(Target {
            store,
            queue,
            expire,
            find,
        });
        nudged
    }

    /// The target controller stopped.
    pub fn detach(&self) {
        *self.target.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// Reconciles `object` (uid `uid`) now; false if the target is not running.
    pub fn one(&self, object: ObjectRef<K>, uid: &str) -> bool {
        let target = self.target.lock().unwrap_or_else(|p| p.into_inner());
        let Some(target) = target.as_ref() else {
            return false;
        };
        (target.expire)(uid, Why::Happened);
        target.queue.unbounded_send(object).is_ok()
    }

    /// Reconciles `object` now, as it stands: it is due already, and was not nudged by anything
    /// it waits for (a reconcile that stopped to wait for the watch, which has caught up).
    pub fn requeue(&self, object: ObjectRef<K>) {
        let target = self.target.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(target) = target.as_ref() {
            let _ = target.queue.unbounded_send(object);
        }
    }

    /// Reconciles now the cached object the target's index finds by `key`; false if none (or the
    /// target is not running).
    pub fn found(&self, key: &str) -> bool {
        let target = self.target.lock().unwrap_or_else(|p| p.into_inner());
        let Some(target) = target.as_ref() else {
            return false;
        };
        target
            .find
            .as_ref()
            .and_then(|find| find(key))
            .is_some_and(|object| target.now(&object, Why::Happened))
    }

    /// Reconciles now every cached object `wanted` picks, for `why`; returns how many.
    pub fn objects_where(&self, why: Why, wanted: impl Fn(&K) -> bool) -> usize {
        let target = self.target.lock().unwrap_or_else(|p| p.into_inner());
        let Some(target) = target.as_ref() else {
            return 0;
        };
        target
            .store
            .state_filter(|o| wanted(o))
            .iter()
            .filter(|object| target.now(object, why))
            .count()
    }
}
