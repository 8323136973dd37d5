//! The connection kind's controller: its watch and the triggers beside it (account mappings,
//! namespaces, what an outage stopped, the poller, nudges), wired into a kube-runtime controller
//! that runs [`reconcile`] and keeps the per-resource state
//! in step with the watch.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::FutureExt;
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::controller::Controller;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use tokio_util::task::AbortOnDropHandle;
use tracing::debug;

use crate::connection::api::EnvironmentAccountConnection;
use crate::http::Readiness;
use crate::mapping::{Accounts, UnmappedNamespaces};
use crate::reconciler::nudge::Why;
use crate::reconciler::{self, after_outage};

pub use crate::connection::cached::{intent_is_history, slim, trigger_hash};
pub use crate::connection::context::Context;
pub use crate::connection::error::Error;
pub use crate::connection::reconcile::{error_policy, reconcile};

pub use crate::recorder::{FIELD_MANAGER, reporter};

/// What to watch.
#[derive(Clone, Debug, Default)]
pub struct WatchScope {
    /// One namespace, or all.
    pub namespace: Option<String>,
    /// Only resources matching this label selector (sharding).
    pub label_selector: Option<String>,
    /// Watch `AccountMapping`s and Namespaces, and act in each namespace with its mapped role.
    pub account_mappings: bool,
    /// With account mappings: what a namespace no mapping selects acts with.
    pub unmapped_namespaces: UnmappedNamespaces,
}

/// Keeps per-resource state and readiness in step with the watch: forgets resources that leave
/// it (deleted, force-deleted, relabelled out of the selector, gone while this pod was standby),
/// and marks the watch healthy or failing.
fn follow_watch(
    ctx: &Context,
    store: &Store<EnvironmentAccountConnection>,
    readiness: &Readiness,
    mappings_known: &AtomicBool,
    event: &Result<watcher::Event<EnvironmentAccountConnection>, watcher::Error>,
) {
    if let Ok(event) = event {
        ctx.undecided.follow(store, event);
    }
    match event {
        Ok(watcher::Event::Delete(obj)) => {
            readiness.succeeded();
            if let Some(uid) = obj.uid() {
                ctx.forget(&uid);
            }
        }
        Ok(watcher::Event::Init) => {
            // kube-runtime says a list begins before it asks for a page, or once a streamed
            // one has answered: counted at its first object or its end (see `lists_answered`),
            // and no answer of the API server's (the answer to the request is: `watch_starts`).
            ctx.list_begun.store(true, Ordering::Relaxed);
        }
        Ok(watcher::Event::InitApply(_)) => {
            list_answered(ctx);
            readiness.succeeded();
        }
        Ok(watcher::Event::InitDone) => {
            list_answered(ctx);
            let cached = store.state();
            let live: HashSet<String> = cached.iter().filter_map(|o| o.uid()).collect();
            ctx.retain_only(&live);
            // Only now does the cache hold what the relist found and nothing else (what it
            // showed new or changed went in as it came; what it did not show goes at its end),
            // so only now may a reconcile go on from it. A relist may skip the version a write
            // made before it began: waiting for that version could then last forever. A write
            // made since (a reconcile of what it showed new or changed, as it came) may come
            // after it: that one is waited for, as any write is.
            let this_list = ctx.lists_answered.load(Ordering::Relaxed);
            let mut wake = Vec::new();
            let mut tracked = ctx.tracked();
            for obj in &cached {
                let Some(t) = obj.uid().and_then(|uid| tracked.get_mut(&uid)) else {
                    continue;
                };
                let memory = &mut t.kind.memory;
                memory.catch_up(
                    obj.status.as_ref(),
                    obj.metadata.resource_version.as_deref(),
                );
                if memory
                    .written
                    .as_ref()
                    .is_some_and(|w| w.during_list < this_list)
                {
                    memory.written = None;
                }
                if memory.written.is_none() && std::mem::take(&mut t.kind.awaits_watch) {
                    wake.push(ObjectRef::from_obj(obj.as_ref()));
                }
            }
            drop(tracked);
            for object in wake {
                ctx.nudge.requeue(object);
            }
            // Ready once nothing stands in the way of a reconcile: the mappings too (`run`).
            if mappings_known.load(Ordering::Relaxed) {
                readiness.synced();
            }
        }
        Ok(watcher::Event::Apply(obj)) => {
            readiness.succeeded();
            // The cache has caught up with what this controller wrote: stop remembering it.
            let Some(uid) = obj.uid() else { return };
            let mut tracked = ctx.tracked();
            let Some(t) = tracked.get_mut(&uid) else {
                return;
            };
            t.kind.memory.catch_up(
                obj.status.as_ref(),
                obj.metadata.resource_version.as_deref(),
            );
            let wake = t.kind.memory.written.is_none() && std::mem::take(&mut t.kind.awaits_watch);
            drop(tracked);
            if wake {
                // The cache now holds this copy (the store is written before this runs).
                ctx.nudge.requeue(ObjectRef::from_obj(obj));
            }
        }
        Err(_) => readiness.failed(),
    }
}

/// Counts the list under way as answered, once.
fn list_answered(ctx: &Context) {
    if ctx.list_begun.swap(false, Ordering::Relaxed) {
        ctx.lists_answered.fetch_add(1, Ordering::Relaxed);
    }
}

/// Runs the controller until `shutdown` resolves. While it runs, the `eac_connections` gauge is
/// counted from its watch cache.
pub async fn run(
    ctx: Arc<Context>,
    scope: WatchScope,
    concurrency: u16,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
    readiness: Readiness,
) {
    let api: Api<EnvironmentAccountConnection> = match &scope.namespace {
        Some(ns) => Api::namespaced(ctx.client.clone(), ns),
        None => Api::all(ctx.client.clone()),
    };
    // The initial state is streamed (see `reconciler::watch::streamed_or_listed`); where it is
    // listed instead, in pages (`reconciler::watch::PAGE`): kube's client drops `resourceVersion=0`
    // (`any_semantic`) from a list that asks for a page, so each page is of the most recent
    // state, a page at a time, not every object from the watch cache at once.
    let mut config = watcher::Config::default().any_semantic();
    if let Some(selector) = &scope.label_selector {
        config = config.labels(selector);
    }
    ctx.forget_all();
    let shutdown = shutdown.shared();
    if scope.account_mappings {
        ctx.set_accounts(Accounts::waiting());
    }
    // Undoes what follows however this ends, the wait for the mappings included (a term of
    // leadership lost then, a shutdown): a standby holds no cache.
    let mut started = Started {
        ctx: ctx.clone(),
        tasks: Vec::new(),
        account_mappings: scope.account_mappings,
    };
    // Not ready until the watch has synced and the mappings are known.
    readiness.leading();
    let mappings_known = Arc::new(AtomicBool::new(!scope.account_mappings));
    let (follow_ctx, follow_ready, known) =
        (ctx.clone(), readiness.clone(), mappings_known.clone());
    // Told by the watch, not asked of the cache: kube-runtime's `Store::wait_until_ready` keeps
    // one waiter (a oneshot, whose last poller alone is woken), and its controller is one.
    let listed = Arc::new(AtomicBool::new(false));
    let listed_at = listed.clone();
    let (store, triggers) = reconciler::watch::triggers(
        reconciler::watch::Watched {
            api,
            config,
            returns: readiness.api_answers().returns(),
        },
        slim,
        move |store, event| {
            follow_watch(&follow_ctx, store, &follow_ready, &known, event);
            if let Ok(watcher::Event::InitDone) = event {
                listed_at.store(true, Ordering::Relaxed);
            }
        },
        trigger_hash,
        reconciler::watch::Relisted::InPlace,
        " (is the CRD environmentaccountconnections.proton.eac.dev installed and may the controller list and watch it?)",
    );
    ctx.metrics.count_connections_from(Some(store.clone()));
    ctx.use_cache(Some(store.clone()));
    let mut triggers = Box::pin(triggers);
    // Nothing is reconciled before the mappings are known; the resources' watch lists
    // meanwhile (`passed_while`).
    let (accounts, moved, followers, listed_meanwhile) = if scope.account_mappings {
        let answers = readiness.api_answers();
        let followed = reconciler::watch::passed_while(
            &mut triggers,
            crate::mapping::controller::follow(
                &ctx.client,
                &answers,
                scope.unmapped_namespaces,
                shutdown.clone(),
            ),
        )
        .await;
        match followed {
            Some((Some((accounts, moved, followers)), passed)) => {
                (accounts, moved, followers, passed)
            }
            // Stopped before the mappings were known: nothing was reconciled.
            _ => return,
        }
    } else {
        (
            Accounts::disabled(),
            futures::channel::mpsc::unbounded().1,
            Vec::new(),
            Vec::new(),
        )
    };
    started.tasks.extend(followers);
    ctx.set_accounts(accounts);
    let routine = ((f64::from(concurrency) * ctx.poll_share).floor() as usize).max(1);
    *ctx.routine_workers
        .lock()
        .unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(tokio::sync::Semaphore::new(routine)));
    mappings_known.store(true, Ordering::Relaxed);
    // Synced while the mappings were read: ready now (unless the watch has failed since).
    if listed.load(Ordering::Relaxed) {
        readiness.listed();
    }
    let expiring = ctx.clone();
    let undecided = ctx.undecided.clone();
    let nudged = ctx.nudge.attach(
        store.clone(),
        Arc::new(move |uid: &str, _| expiring.tracked.expire(uid)),
        Some(Arc::new(move |id: &str| undecided.find(id))),
    );
    ctx.polls.set_running(true);
    let postponing = ctx.clone();
    started.spawn(ctx.polls.clone().run(
        ctx.proton.clone(),
        ctx.settings.clone(),
        ctx.nudge.clone(),
        Arc::new(move |uid: &str, due| postponing.tracked.postpone(uid, due)),
        ctx.metrics.clone(),
    ));
    started.spawn(ctx.timetable.clone().run(ctx.nudge.clone()));
    started.spawn(ctx.proton.clone().probe_while_away());
    let returning = ctx.clone();
    let retried = after_outage::retried(
        after_outage::Returns::of(&readiness, &ctx.proton),
        store.clone(),
        move |away, look| returning.tracked.due_after(away, look),
    );
    let cache = store.clone();
    let moving = ctx.clone();
    let moved = futures::StreamExt::flat_map(moved, move |namespaces| {
        nudge_policies_in(&moving, &namespaces);
        futures::stream::iter(resources_in(&cache, &namespaces))
    });
    let results = Controller::for_stream(triggers, store)
        .with_config(kube::runtime::controller::Config::default().concurrency(concurrency))
        // A mapping or a namespace's labels changed: the resources whose credentials changed.
        .reconcile_on(moved)
        // A connection the management side here just accepted or rejected: read it now.
        .reconcile_on(nudged)
        // The API server or Proton answers again: what its outage stopped, now.
        .reconcile_on(retried)
        // What the watch passed while the mappings were read.
        .reconcile_on(futures::stream::iter(listed_meanwhile))
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx.clone());
    reconciler::watch::drain(results, "EnvironmentAccountConnection").await;
    drop(started);
}

/// The policies in `namespaces` (whose credentials just changed) read again now, as their
/// connections do: one that failed or was refused with the old credentials (no mapping yet, the
/// wrong account) would otherwise wait out its backoff or its poll.
fn nudge_policies_in(ctx: &Context, namespaces: &std::collections::BTreeSet<String>) {
    let nudged = ctx.policies.objects_where(Why::Credentials, |p| {
        p.metadata
            .namespace
            .as_ref()
            .is_some_and(|ns| namespaces.contains(ns))
    });
    if nudged > 0 {
        debug!(
            nudged,
            "policies in namespaces whose credentials changed: read again now"
        );
    }
}

/// The cached resources in `namespaces` (whose credentials just changed), to reconcile.
fn resources_in(
    cache: &Store<EnvironmentAccountConnection>,
    namespaces: &std::collections::BTreeSet<String>,
) -> Vec<ObjectRef<EnvironmentAccountConnection>> {
    reconciler::watch::refs_where(cache, |o| {
        o.metadata
            .namespace
            .as_ref()
            .is_some_and(|ns| namespaces.contains(ns))
    })
}

/// What [`run`] started, stopped however `run` ends: when it returns, and when its future is
/// dropped (a lost lease stops reconciling at once, see `runner`). Otherwise a standby would go
/// on polling AWS, queueing reconciles and writing the mappings' status.
struct Started {
    ctx: Arc<Context>,
    /// Aborted when dropped.
    tasks: Vec<AbortOnDropHandle<()>>,
    account_mappings: bool,
}

impl Started {
    fn spawn(&mut self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        self.tasks.push(AbortOnDropHandle::new(tokio::spawn(task)));
    }
}

impl Drop for Started {
    fn drop(&mut self) {
        self.tasks.clear();
        let ctx = &self.ctx;
        ctx.timetable.clear();
        ctx.polls.set_running(false);
        ctx.nudge.detach();
        // It holds cached copies: the cache is dropped with the controller.
        ctx.undecided.clear();
        if self.account_mappings {
            ctx.set_accounts(Accounts::waiting());
        }
        ctx.metrics.count_connections_from(None);
        ctx.use_cache(None);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::time::Instant;

    use super::*;
    use crate::offline::eac;

    /// A reconcile of what a relist showed new or changed runs as the relist comes: its write
    /// comes after the relist's copy, and is waited for after the relist's end. A write made
    /// before the API server answered the relist is not (the relist may have skipped its
    /// version: another writer's since), nor one made before it began; and the resource that
    /// waited for a forgotten one is woken, the other not.
    #[tokio::test]
    async fn a_write_made_once_a_relist_is_answered_is_waited_for_after_it_and_earlier_ones_are_not()
     {
        use crate::connection::decide::Written;
        use watcher::Event::{Init, InitApply, InitDone};
        let ctx = Context::offline();
        let (store, mut writer) = kube::runtime::reflector::store::<EnvironmentAccountConnection>();
        let readiness = Readiness::new(Duration::ZERO);
        let known = AtomicBool::new(true);
        let mut follow = |event: watcher::Event<EnvironmentAccountConnection>| {
            writer.apply_watcher_event(&event);
            follow_watch(&ctx, &store, &readiness, &known, &Ok(event));
        };
        let written = |uid: &str| {
            let mut tracked = ctx.tracked();
            let kept = &mut tracked.entry(uid).kind;
            let status = crate::connection::api::EnvironmentAccountConnectionStatus {
                id: Some(format!("id-{uid}")),
                ..Default::default()
            };
            let during = ctx.lists_answered.load(Ordering::Relaxed);
            kept.memory.written =
                Some(Written::new(&status, Some("99".into())).during_list(during));
            kept.awaits_watch = true;
        };
        let remembered = |uid: &str| {
            ctx.tracked()
                .get_mut(uid)
                .is_some_and(|t| t.kind.memory.written.is_some())
        };
        let awaits = |uid: &str| {
            ctx.tracked()
                .get_mut(uid)
                .is_some_and(|t| t.kind.awaits_watch)
        };
        for event in [
            Init,
            InitApply(eac("a")),
            InitApply(eac("b")),
            InitApply(eac("c")),
            InitDone,
        ] {
            follow(event);
        }
        written("a");
        follow(Init);
        written("b");
        follow(InitApply(eac("a")));
        written("c");
        for event in [InitApply(eac("b")), InitApply(eac("c")), InitDone] {
            follow(event);
        }
        assert!(
            !remembered("a") && !awaits("a"),
            "written before the relist: forgotten, woken"
        );
        assert!(
            !remembered("b") && !awaits("b"),
            "written after it began, before it was answered: forgotten, woken"
        );
        assert!(
            remembered("c") && awaits("c"),
            "written once it was answered: still waited for"
        );
    }

    #[tokio::test]
    async fn what_leaves_the_watch_is_forgotten_and_watch_failures_make_the_pod_unready() {
        let ctx = Context::offline();
        let later = Instant::now() + Duration::from_secs(600);
        for uid in ["a", "b", "c"] {
            ctx.tracked().entry(uid);
            ctx.timetable.set(uid, uid, "ns", later);
        }
        let (store, mut writer) = kube::runtime::reflector::store::<EnvironmentAccountConnection>();
        let readiness = Readiness::new(Duration::ZERO);
        readiness.leading();
        let known = AtomicBool::new(false);

        // Deleted while watched.
        follow_watch(
            &ctx,
            &store,
            &readiness,
            &known,
            &Ok(watcher::Event::Delete(eac("a"))),
        );
        assert_eq!(ctx.tracked_resources(), 2);
        assert_eq!(
            ctx.comes_back_in("a"),
            None,
            "a deleted resource never comes back"
        );

        // A relist that no longer contains "b" (deleted while the watch was down, or while
        // this pod was a standby): forgotten once the list is complete.
        let relist = |writer: &mut kube::runtime::reflector::store::Writer<_>| {
            for event in [
                watcher::Event::Init,
                watcher::Event::InitApply(eac("c")),
                watcher::Event::InitDone,
            ] {
                writer.apply_watcher_event(&event);
                follow_watch(&ctx, &store, &readiness, &known, &Ok(event));
            }
        };
        relist(&mut writer);
        assert_eq!(ctx.tracked_resources(), 1);
        assert!(ctx.tracked().contains_key("c"));
        assert_eq!(ctx.timetable.len(), 1);
        assert!(ctx.comes_back_in("c").is_some());
        assert!(
            !readiness.get(),
            "synced, but the mappings are not known yet"
        );
        known.store(true, Ordering::Relaxed);
        relist(&mut writer);
        assert!(readiness.get(), "synced");

        let failure = watcher::Error::NoResourceVersion;
        follow_watch(&ctx, &store, &readiness, &known, &Err(failure));
        assert!(!readiness.get(), "a failing watch is reported");
    }
}
