//! What every reconcile of a connection shares: the clients, the settings, and what the
//! controller keeps about each resource between reconciles.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kube::runtime::events::Reporter;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, ResourceExt};
use tokio::time::Instant;

use super::triggers::Triggers;
use crate::aws::budget::CallClass;
use crate::aws::proton::Proton;
use crate::compact_id::CompactId;
use crate::connection::api::EnvironmentAccountConnection;
use crate::connection::decide::{Memory, Progress, Settings};
use crate::connection::polls::Polls;
use crate::connection::undecided::Undecided;
use crate::mapping::{Accounts, MappingError, Resolved, SharedAccounts};
use crate::metrics::Metrics;
use crate::policy::ConnectionAcceptancePolicy;
use crate::reconciler::nudge::Nudge;
use crate::reconciler::timetable::Timetable;
use crate::reconciler::tracked::{Guard, Tracker};
use crate::recorder::Recorder;

/// How soon a reconcile that stopped on a stale cached copy runs again, if nothing wakes it
/// sooner (the watch wakes one waiting for this controller's own status write as soon as it
/// brings it: see `awaits_watch`).
pub(super) const STALE_CACHE_RETRY: Duration = Duration::from_secs(1);

/// What the connection kind keeps about one resource between reconciles, beside what every kind
/// keeps ([`crate::reconciler::tracked`]).
#[derive(Clone, Debug, Default)]
pub(super) struct Kept {
    pub(super) memory: Memory,
    /// The last routine read (poll or resync) and when, for the effective-interval metric.
    pub(super) last_read: Option<(CallClass, Instant)>,
    /// What the last reconcile learned before its next call was deferred. Boxed: few resources
    /// hold one, and every resource's entry would otherwise be the size of it.
    pub(super) resume: Option<Box<Resume>>,
    /// The resourceVersion of the cached copy the last metadata write (the finalizer, with the
    /// intent) was made from. While the cache still shows that copy it is behind our own write:
    /// a reconcile then waits for the watch instead of repeating the write (which the API
    /// server would refuse, costing a refused patch and a re-read each time).
    pub(super) written_over: Option<String>,
    /// A reconcile stopped to wait for the cache to show this controller's last status write:
    /// the watch event that shows it queues the resource again at once, instead of leaving it
    /// to the retry a second later (a nudge, a woken poll or a deletion waits no longer than
    /// the watch does).
    pub(super) awaits_watch: bool,
}

/// A deferred reconcile's [`Progress`], and what it holds for: the next reconcile goes on from
/// it only if the resource is as it was (generation, annotations, credentials, deletion, the
/// recorded connection) and its booked slot has not gone stale.
#[derive(Clone, Debug)]
pub(super) struct Resume {
    pub(super) generation: i64,
    pub(super) triggers: Triggers,
    pub(super) deleting: bool,
    pub(super) status_id: Option<String>,
    pub(super) until: Instant,
    pub(super) progress: Progress,
}

/// How long past its due time a deferred reconcile's progress is kept: as long as the call
/// budget keeps an unclaimed booking, so a reconcile held up by busy workers still finds both.
pub(super) const RESUME_GRACE: Duration = Duration::from_secs(60);

/// Everything a reconcile needs; shared by all workers.
pub struct Context {
    pub client: Client,
    pub proton: Proton,
    pub settings: Settings,
    pub metrics: Metrics,
    pub(super) recorder: Recorder,
    /// Checkpoints hold the triggers' hash, not the triggers: a mapping's name and region would
    /// otherwise be copied into every resource's entry.
    pub(super) tracked: Tracker<u64, Kept>,
    /// Share of the workers that routine reads (polls, resyncs) may occupy at once.
    pub(super) poll_share: f64,
    /// Workers routine reads may hold, while the controller runs (None: no limit).
    pub(super) routine_workers: Mutex<Option<Arc<tokio::sync::Semaphore>>>,
    /// Which credentials each namespace's resources act with (the account mappings); shared
    /// with the management side.
    pub(super) accounts: SharedAccounts,
    /// This controller, for the management side to nudge (a connection it just accepted).
    pub(super) nudge: Nudge<EnvironmentAccountConnection>,
    /// The management side, to nudge when a connection here requests an account it decides for.
    pub(super) policies: Nudge<ConnectionAcceptancePolicy>,
    /// The watch cache, while the controller runs.
    pub(super) cache: Mutex<Option<Store<EnvironmentAccountConnection>>>,
    /// The fast polls of PENDING connections, made from the shared list while it runs.
    pub(super) polls: Arc<Polls>,
    /// The cached resources a management account may still decide, by connection id (for the
    /// management side here to nudge).
    pub(super) undecided: Arc<Undecided>,
    /// How many lists of the resources' watch the API server has answered (the first and each
    /// relist), counted at each one's first object or its end: after the server took the list's
    /// snapshot, so a status written since comes after the list in the watch.
    pub(super) lists_answered: std::sync::atomic::AtomicU64,
    /// A list has begun (`Init`) and is not counted in `lists_answered` yet.
    pub(super) list_begun: std::sync::atomic::AtomicBool,
    /// When each resource's reconcile comes back.
    pub(super) timetable: Arc<Timetable>,
    /// See [`STALE_CACHE_RETRY`].
    pub(super) stale_cache_retry: Duration,
}

impl Context {
    pub fn new(
        client: Client,
        proton: Proton,
        settings: Settings,
        metrics: Metrics,
        reporter: Reporter,
    ) -> Self {
        Context {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            proton,
            settings,
            metrics,
            tracked: Tracker::default(),
            poll_share: 0.5,
            routine_workers: Mutex::default(),
            accounts: SharedAccounts::default(),
            nudge: Nudge::default(),
            policies: Nudge::default(),
            cache: Mutex::default(),
            polls: Arc::default(),
            undecided: Arc::default(),
            lists_answered: std::sync::atomic::AtomicU64::new(0),
            list_begun: std::sync::atomic::AtomicBool::new(false),
            timetable: Arc::default(),
            stale_cache_retry: STALE_CACHE_RETRY,
        }
    }

    /// The watch cache a reconcile reads the newest copy of its resource from (set by `run`
    /// while it runs; tests set their own).
    pub fn use_cache(&self, cache: Option<Store<EnvironmentAccountConnection>>) {
        *self.cache.lock().unwrap_or_else(|p| p.into_inner()) = cache;
    }

    /// The newest cached copy of `obj`, if the cache holds one.
    pub(super) fn newest(
        &self,
        obj: &EnvironmentAccountConnection,
    ) -> Option<Arc<EnvironmentAccountConnection>> {
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache
            .as_ref()
            .and_then(|c| c.get(&ObjectRef::from_obj(obj)))
    }

    /// The account mappings to resolve namespaces with (set while the controller runs).
    pub fn set_accounts(&self, accounts: Accounts) {
        self.accounts.set(accounts);
    }

    /// The account mappings as this controller follows them, for the management side.
    pub fn accounts_handle(&self) -> SharedAccounts {
        self.accounts.clone()
    }

    /// What a reconcile of `obj` acts on besides its spec, as of now.
    pub(super) fn triggers_of(&self, obj: &EnvironmentAccountConnection) -> Triggers {
        Triggers::of(
            obj,
            self.resolve_credentials(&obj.namespace().unwrap_or_default()),
        )
    }

    fn resolve_credentials(&self, namespace: &str) -> Result<Resolved, MappingError> {
        self.accounts.get().resolve(namespace)
    }

    /// The handles both sides of one process nudge each other through: this controller's own,
    /// and the management side's.
    pub fn with_nudges(
        mut self,
        connections: Nudge<EnvironmentAccountConnection>,
        policies: Nudge<ConnectionAcceptancePolicy>,
    ) -> Self {
        self.nudge = connections;
        self.policies = policies;
        self
    }

    /// A reconcile that stopped on a stale cached copy runs again after `retry` if nothing wakes
    /// it sooner (tests lengthen it, to see what wakes it).
    pub fn with_stale_cache_retry(mut self, retry: Duration) -> Self {
        self.stale_cache_retry = retry;
        self
    }

    /// Routine reads may occupy at most this share of the workers (as of the AWS call budget),
    /// so polls never hold the workers new and changed resources need.
    pub fn with_poll_share(mut self, share: f64) -> Self {
        self.poll_share = share;
        self
    }

    /// A worker slot for a routine read, if one is free.
    pub(super) fn routine_slot(&self) -> Result<Option<tokio::sync::OwnedSemaphorePermit>, ()> {
        let slots = self
            .routine_workers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        match slots {
            None => Ok(None),
            Some(slots) => slots.try_acquire_owned().map(Some).map_err(|_| ()),
        }
    }

    pub(super) fn tracked(&self) -> Guard<'_, u64, Kept> {
        self.tracked.lock()
    }

    /// Sees the number of tracked resources change.
    pub fn tracked_changes(&self) -> tokio::sync::watch::Receiver<usize> {
        self.tracked.changes()
    }

    /// Makes every resource due now, as if each one's requeue time had come (tests, and a
    /// forced resync).
    pub fn expire_checkpoints(&self) {
        self.tracked.expire_checkpoints();
    }

    /// Treats the resource as already seen in this term (its first read is not spread out):
    /// what a forced resync of one resource wants.
    pub fn mark_seen(&self, uid: &str) {
        self.tracked().entry(uid);
    }

    /// How many resources the controller keeps state for.
    pub fn tracked_resources(&self) -> usize {
        self.tracked().len()
    }

    /// How long until the resource's reconcile comes back, if it is to (see [`Timetable`]).
    pub fn comes_back_in(&self, uid: &str) -> Option<Duration> {
        self.timetable.comes_back_in(uid, Instant::now())
    }

    /// The resource is gone: drop what was kept about it (and its booking in the budget).
    pub fn forget(&self, uid: &str) {
        self.tracked.remove(uid);
        self.timetable.remove(uid);
        self.polls.release(uid);
        self.proton.forget(uid);
    }

    /// Drops what is kept about resources that are no longer in the watch cache.
    pub fn retain_only(&self, live: &HashSet<String>) {
        let ids: HashSet<CompactId> = live.iter().map(|uid| CompactId::of(uid)).collect();
        self.tracked.retain_only(&ids);
        self.timetable.retain(|uid| ids.contains(uid));
        self.polls.retain(&ids);
        // The management side's bookings in the shared budget are its own to drop.
        self.proton
            .retain(|key| live.contains(key) || crate::aws::budget::is_shared_key(key));
    }

    /// Forgets everything (a new term of leadership: another leader may have written since).
    pub fn forget_all(&self) {
        self.tracked.clear();
        self.undecided.clear();
        self.timetable.clear();
        self.polls.set_running(false);
        self.proton.retain(|_| false);
    }
}

#[cfg(test)]
impl Context {
    /// A context whose calls go nowhere, with production-like settings (see [`crate::offline`]).
    pub(super) fn offline() -> Context {
        let metrics = Metrics::new();
        Context::new(
            crate::offline::client(),
            crate::offline::proton(&metrics),
            crate::offline::settings(),
            metrics,
            crate::recorder::reporter(),
        )
    }
}
