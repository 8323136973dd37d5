//! The watch that feeds every kind's kube-runtime controller, built once: list and watch with
//! kube-runtime's default backoff, drop what the controller never reads before it is cached,
//! keep the cache, let the kind follow every event (to prune what it keeps), and pass on only
//! the changes worth a reconcile (the kind's trigger hash: never the controller's own status
//! writes).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Resource;
use kube::api::Api;
use kube::runtime::reflector::store::Writer;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::utils::Backoff;
use kube::runtime::{WatchStreamExt, watcher};
use serde::de::DeserializeOwned;
use tracing::{debug, info, warn};

use crate::compact_id::CompactId;
use crate::repeated::Repeated;

/// The backoff of every watch after a failure: 250 ms doubling to at most 2 s, jittered by
/// +/-25 %, back to 250 ms once the watch works again.
///
/// Why not client-go's 800 ms to 30 s (kube-runtime's default): after a 10 s API-server outage
/// that schedule leaves the next try up to 25 s away, and nothing new is reconciled meanwhile.
/// Its long cap protects an API server from thousands of clients retrying together; here one
/// leader retries its few watches (resources, policies, mappings, namespaces), so a try every 2 s
/// at worst costs the API server a refused request each, and the jitter keeps the controller's
/// watches (and its standby's Lease calls) from arriving together. A working watch resets it,
/// and so does the first failure the API server answers after failures it left unanswered (see
/// [`Returns`]). A watch waiting in it tries at once when the API server answers any of the
/// controller's calls after leaving them unanswered for a second or more
/// ([`crate::api_answers::Answers`]): before, its first try after an outage came up to 2.5 s
/// after the return.
pub struct WatchBackoff {
    next: Duration,
    /// Set when the API server answered again: the next wait is the first one.
    returned: Arc<AtomicBool>,
    /// Set while the watch's last event was only the start of a list (`Init`), which
    /// kube-runtime says before it asks for a page: no sign the watch works, so no reset.
    begun_only: Arc<AtomicBool>,
}

impl WatchBackoff {
    pub const FIRST: Duration = Duration::from_millis(250);
    pub const MAX: Duration = Duration::from_secs(2);
}

impl Default for WatchBackoff {
    fn default() -> Self {
        WatchBackoff {
            next: Self::FIRST,
            returned: Arc::default(),
            begun_only: Arc::default(),
        }
    }
}

impl Iterator for WatchBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        if self.returned.swap(false, Ordering::Relaxed) {
            self.next = Self::FIRST;
        }
        let wait = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        Some(wait.mul_f64(0.75 + 0.5 * rand::random::<f64>()))
    }
}

impl Backoff for WatchBackoff {
    fn reset(&mut self) {
        if !self.begun_only.load(Ordering::Relaxed) {
            self.next = Self::FIRST;
        }
    }
}

/// What every kind's watch cache drops from an object's metadata before caching it: managed
/// fields (the largest part of most objects), labels, owner references, `generateName`,
/// `selfLink`, and the annotations other than `kept` (e.g. kubectl's last-applied-configuration,
/// a copy of the whole manifest). An object that had only others keeps an empty map: whether an
/// object has annotations decides how one is patched in. Finalizers lose the spare room
/// deserializing left them.
pub fn slim_metadata(meta: &mut ObjectMeta, kept: &[&str]) {
    meta.managed_fields = None;
    meta.labels = None;
    meta.owner_references = None;
    meta.generate_name = None;
    meta.self_link = None;
    if let Some(annotations) = meta.annotations.as_mut() {
        annotations.retain(|key, _| kept.contains(&key.as_str()));
        release_if_empty(annotations);
    }
    if let Some(finalizers) = meta.finalizers.as_mut() {
        finalizers.shrink_to_fit();
    }
}

/// A map emptied by `retain` or `remove` still holds its node (about half a KiB for one of
/// strings); a new empty map holds nothing.
pub fn release_if_empty<K, V>(map: &mut std::collections::BTreeMap<K, V>) {
    if map.is_empty() {
        *map = std::collections::BTreeMap::new();
    }
}

/// How a watch's cache takes a relist.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Relisted {
    /// In place ([`Cached`]): what it shows new or changed at once, and passed on as it comes;
    /// one copy of each object throughout. For kinds whose objects are reconciled each on its
    /// own, and many (the resources).
    InPlace,
    /// Whole at its end, as kube-runtime's cache does, what it shows changed passed on then: for
    /// kinds read together (policies, whose rules look at each other; mappings, which decide
    /// namespaces together), where a cache half old and half new would hold a state that never
    /// was. They are few: two copies for a moment cost little.
    Whole,
}

/// What a watch lists and watches, and what tells it of the API server's returns (see
/// [`WatchBackoff`]).
pub struct Watched<K: Resource> {
    pub api: Api<K>,
    pub config: watcher::Config,
    /// `crate::api_answers::Answers::returns` of the client `api` calls with.
    pub returns: tokio::sync::watch::Receiver<u64>,
}

/// The cache of `watched`'s objects and the stream of those that changed in a way `trigger` sees.
/// The watch's failures are logged here (`hint`: what to check if they last), the first in a row
/// and every tenth at warn, and told to `follow`; they are not passed on: a kube-runtime
/// controller would hold its trigger stream after each with a backoff of its own, which the
/// watch's return does not reset (see [`Returns`]).
pub fn triggers<K>(
    watched: Watched<K>,
    slim: impl FnMut(&mut K) + Send + 'static,
    follow: impl FnMut(&Store<K>, &Result<watcher::Event<K>, watcher::Error>) + Send + 'static,
    trigger: impl Fn(&K) -> Option<u64> + Send + 'static,
    relisted: Relisted,
    hint: &'static str,
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
    let writer = Writer::default();
    let store = writer.as_reader();
    let (followed, live) = (store.clone(), store.clone());
    let mut follow = follow;
    let mut failures = Repeated::default();
    let mut cached = Cached::new(writer, relisted);
    let mut changes = TriggerChanges::new(trigger);
    let Watched {
        api,
        config,
        returns,
    } = watched;
    let stream = backed_off(streamed_or_listed(api, config), returns)
        .modify(slim)
        .flat_map(move |event| {
            let (news, event) = cached.write(event);
            futures::stream::iter(news.into_iter().chain(std::iter::once(event)))
        })
        .inspect(move |event| {
            logged::<K>(&mut failures, event, hint);
            follow(&followed, event)
        })
        .flat_map(move |event| {
            let (passed, released) = changes.pass(event, || {
                live.state()
                    .iter()
                    .filter_map(|o| o.meta().uid.clone())
                    .collect()
            });
            // Copied from the cache one at a time, as the controller takes them (one gone
            // since is skipped).
            let cached = live.clone();
            let released = futures::stream::iter(released).filter_map(move |r| {
                futures::future::ready(cached.get(&r).map(|o| Ok(as_request((*o).clone()))))
            });
            futures::stream::iter(passed.map(Ok)).chain(released)
        });
    (store, stream)
}

/// Writes the watch's events into the cache its kube-runtime controller reads, as kube-runtime's
/// `reflect` does, but for a relist of a kind whose objects are reconciled each on its own
/// ([`Relisted::InPlace`]: the resources), which goes into the cache in place.
///
/// kube-runtime's cache takes a relist whole at its end: it builds a second map of every object
/// the relist shows and swaps it in. Until then it holds two copies of everything (at 10,000
/// resources 26 MiB more, the controller's peak without leader election), and what the relist
/// shows new or changed is not in the cache: its controller reconciles the cached copy, so a
/// resource created during an API-server outage was not found (dropped), one changed then was
/// reconciled from its old spec, until the relist's end, which a real API server marks with a
/// bookmark on its once-a-second timer after a relist that takes seconds at 10,000.
///
/// In place, what a relist shows new or changed (another uid or resourceVersion than cached)
/// goes into the cache at once, and comes on first as a change (`Apply`: passed on as any change
/// is), then as the relist's. An unchanged object keeps its cached copy: the relist's is
/// dropped as it passes. What the relist did not show is taken out of the cache at its end.
/// The first list goes in as kube-runtime's does (the cache is empty, and kube-runtime holds
/// every request until it is first ready).
struct Cached<K: Resource<DynamicType = ()> + Clone + 'static> {
    writer: Writer<K>,
    live: Store<K>,
    in_place: bool,
    /// A list has ended once: the cache is ready, and what follows a relist.
    listed: bool,
    /// The objects the relist under way has shown.
    seen: HashSet<CompactId>,
}

/// What one event of the watch comes on as: a change to put before it, and the event.
type Written<K> = (
    Option<Result<watcher::Event<K>, watcher::Error>>,
    Result<watcher::Event<K>, watcher::Error>,
);

impl<K: Resource<DynamicType = ()> + Clone + 'static> Cached<K> {
    fn new(writer: Writer<K>, relisted: Relisted) -> Self {
        Cached {
            live: writer.as_reader(),
            writer,
            in_place: relisted == Relisted::InPlace,
            listed: false,
            seen: HashSet::new(),
        }
    }

    /// Puts `event` in the cache.
    fn write(&mut self, event: Result<watcher::Event<K>, watcher::Error>) -> Written<K> {
        let Ok(e) = &event else {
            return (None, event);
        };
        if !(self.in_place && self.listed) {
            self.writer.apply_watcher_event(e);
            self.listed |= matches!(e, watcher::Event::InitDone);
            return (None, event);
        }
        match e {
            // Again from the start (a relist cut short by an error starts again so).
            watcher::Event::Init => self.seen.clear(),
            watcher::Event::InitApply(obj) => {
                self.seen.insert(key(obj));
                if self.differs(obj) {
                    let news = watcher::Event::Apply(obj.clone());
                    self.writer.apply_watcher_event(&news);
                    return (Some(Ok(news)), event);
                }
            }
            watcher::Event::InitDone => {
                let seen = std::mem::take(&mut self.seen);
                for gone in self.live.state() {
                    if !seen.contains(&key(gone.as_ref())) {
                        self.writer
                            .apply_watcher_event(&watcher::Event::Delete((*gone).clone()));
                    }
                }
            }
            watcher::Event::Apply(_) | watcher::Event::Delete(_) => {
                self.writer.apply_watcher_event(e)
            }
        }
        (None, event)
    }

    /// Whether the cache has no copy of `obj`, or another version.
    fn differs(&self, obj: &K) -> bool {
        self.live
            .get(&ObjectRef::from_obj(obj))
            .is_none_or(|cached| {
                let (a, b) = (cached.meta(), obj.meta());
                a.uid != b.uid || a.resource_version != b.resource_version
            })
    }
}

/// What tells `obj` from every other object a relist shows: its uid, which the API server gives
/// every object (or, without one, its name).
fn key<K: Resource<DynamicType = ()>>(obj: &K) -> CompactId {
    match obj.meta().uid.as_deref() {
        Some(uid) => CompactId::of(uid),
        None => CompactId::Other(ObjectRef::from_obj(obj).to_string().into()),
    }
}

/// The watch's events, each failure followed by a wait ([`WatchBackoff`]), but for the end of
/// a compacted history ([`Relists`]), and the wait after the API server's first answer at its
/// return is the first one ([`Returns`]).
fn backed_off<K>(
    events: impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send,
    api_returns: tokio::sync::watch::Receiver<u64>,
) -> impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send
where
    K: Resource<DynamicType = ()> + Send,
{
    let mut relists = Relists::default();
    let backoff = WatchBackoff::default();
    let mut returns = Returns::new(&backoff);
    let events = events
        .filter(move |event| futures::future::ready(!relists.at_once::<K>(event)))
        .inspect(move |event| returns.see(event));
    woken_backoff(events, backoff, api_returns, K::kind(&()).to_string())
}

/// kube-runtime's `StreamBackoff` (after a failure, waits `backoff`'s next wait before it asks
/// `events` for more, or ends if it has none; a success resets it), but a wait ends early at a
/// return of the API server that `returns` tells after the failure
/// ([`crate::api_answers::Answers`]).
fn woken_backoff<T, E, B>(
    events: impl Stream<Item = Result<T, E>> + Send,
    backoff: B,
    returns: tokio::sync::watch::Receiver<u64>,
    kind: String,
) -> impl Stream<Item = Result<T, E>> + Send
where
    T: Send,
    E: Send,
    B: Backoff + Send,
{
    // The wait before the next try; `None` inside once the backoff has given up.
    let start = (
        Box::pin(events),
        backoff,
        returns,
        kind,
        Some(None::<Duration>),
    );
    futures::stream::unfold(
        start,
        |(mut events, mut backoff, mut returns, kind, wait)| async move {
            let wait = wait?;
            if let Some(wait) = wait {
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    Ok(()) = returns.changed() => {
                        debug!(%kind, "the API server answers again; the watch tries at once");
                    }
                }
            }
            let event = events.next().await?;
            let wait = match &event {
                Ok(_) => {
                    backoff.reset();
                    Some(None)
                }
                Err(_) => {
                    // A return from here on ends the wait; one before came while this try was
                    // under way.
                    returns.borrow_and_update();
                    backoff.next().map(Some)
                }
            };
            Some((event, (events, backoff, returns, kind, wait)))
        },
    )
}

/// Tells the watch's backoff when the API server answers again after failures it left
/// unanswered (refused connections, 5xx): through an outage the waits grew to their 2 s cap, and
/// a restarted kube-apiserver's first answers are refusals (403 until its authorizer's caches are
/// filled; 429 for a moment from a CRD's fresh watch cache, once the client's own retry gave up).
/// Waiting the cap after each would add seconds to the return; they are waited after as a first
/// failure is (250 ms, doubling).
///
/// Once between two events that work: a server whose failures alternate between answered and
/// not (an etcd outage answering 500 and 504, an overload answering 429 and 504) is waited after
/// with the backoff grown as usual.
///
/// And it tells the backoff not to take a list's start (`Init`) for a working watch: where the
/// watch lists rather than streams, kube-runtime says it before each try, and the backoff would
/// never grow through an outage (a try every 250 ms).
struct Returns {
    away: bool,
    /// The backoff was restarted since the watch last worked.
    restarted: bool,
    returned: Arc<AtomicBool>,
    begun_only: Arc<AtomicBool>,
}

impl Returns {
    fn new(backoff: &WatchBackoff) -> Self {
        Returns {
            away: false,
            restarted: false,
            returned: backoff.returned.clone(),
            begun_only: backoff.begun_only.clone(),
        }
    }

    fn see<K>(&mut self, event: &Result<watcher::Event<K>, watcher::Error>) {
        let begun_only = matches!(event, Ok(watcher::Event::Init));
        self.begun_only.store(begun_only, Ordering::Relaxed);
        match event {
            Ok(watcher::Event::Init) => {}
            Ok(_) => {
                self.away = false;
                self.restarted = false;
            }
            Err(e) if unanswered(e) => self.away = true,
            Err(_) => {
                if std::mem::take(&mut self.away) && !std::mem::replace(&mut self.restarted, true) {
                    self.returned.store(true, Ordering::Relaxed);
                }
            }
        }
    }
}

/// Whether a watch failure means the API server did not answer.
fn unanswered(error: &watcher::Error) -> bool {
    match error {
        watcher::Error::InitialListFailed(e)
        | watcher::Error::WatchStartFailed(e)
        | watcher::Error::WatchFailed(e) => crate::api_answers::unanswered(e),
        watcher::Error::WatchError(status) => matches!(status.code, 502..=504),
        watcher::Error::NoResourceVersion => false,
    }
}

/// Takes the 410 Gone that ends a watch whose history was compacted out of the stream before
/// the backoff sees it: kube-runtime lists again at the next poll, and that is no failure to
/// wait after. A restarted API server answers every resumed watch so, right after the watch's
/// tries through the outage have grown the backoff to its 2 s cap: without this the relist
/// waited up to 2.5 s more. Not a second time within [`Relists::AT_ONCE_AGAIN`]: a server that
/// ends each watch so would otherwise be listed in a loop.
#[derive(Default)]
struct Relists {
    last: Option<std::time::Instant>,
}

impl Relists {
    const AT_ONCE_AGAIN: Duration = Duration::from_secs(10);

    fn at_once<K: Resource<DynamicType = ()>>(
        &mut self,
        event: &Result<watcher::Event<K>, watcher::Error>,
    ) -> bool {
        let Err(e) = event else { return false };
        if !expired(e) {
            return false;
        }
        let now = std::time::Instant::now();
        if self
            .last
            .is_some_and(|last| now.duration_since(last) < Self::AT_ONCE_AGAIN)
        {
            return false;
        }
        self.last = Some(now);
        debug!(kind = %K::kind(&()), error = %e, "the watch's history was compacted; listing again at once");
        true
    }
}

/// Logs a failure of the watch of `K`: the first in a row and every tenth at warn, the others at
/// debug (through an API-server outage a watch fails every 2 s). Its return shows in `/readyz`
/// and the log of [`crate::watch_starts`]: a watch that resumes shows no event here until
/// something changes.
fn logged<K: Resource<DynamicType = ()>>(
    failures: &mut Repeated,
    event: &Result<watcher::Event<K>, watcher::Error>,
    hint: &str,
) {
    let kind = K::kind(&());
    match event {
        Ok(_) => {
            failures.succeeded();
        }
        // The history the watch resumed from was compacted (410 Gone): it lists again, as it
        // does every few minutes in a live cluster. Not a failure, and not the start of a row
        // that would hide a real one (a 403 on the list that follows) until its tenth try.
        // (Most never come here: see `Relists`.)
        Err(e) if expired(e) => {
            debug!(%kind, error = %e, "the watch's history was compacted; listing again");
        }
        Err(e) => match failures.failed() {
            (failed, true) => {
                warn!(%kind, failed_tries = failed, error = %e, "the watch failed; retrying with backoff{hint}")
            }
            (failed, false) => {
                debug!(%kind, failed_tries = failed, error = %e, "the watch failed; retrying with backoff{hint}")
            }
        },
    }
}

/// Reads a watch's `triggers` until `ready` resolves, keeping a reference to each object they
/// pass, so the watch lists beside what `ready` waits for, not after it (on a real API server a
/// streamed list ends about a second after its objects, a second more at every start and every
/// term of leadership). What it passed is to be reconciled once ready (`reconcile_on`:
/// kube-runtime holds it until its cache has the first list). `None` if the triggers end first
/// (a watch's do not).
pub async fn passed_while<K, E, T>(
    triggers: &mut (impl Stream<Item = Result<K, E>> + Unpin),
    ready: impl std::future::Future<Output = T>,
) -> Option<(T, Vec<ObjectRef<K>>)>
where
    K: Resource<DynamicType = ()>,
{
    let mut passed = Vec::new();
    let listing = async {
        while let Some(next) = triggers.next().await {
            if let Ok(object) = next {
                passed.push(ObjectRef::from_obj(&object));
            }
        }
    };
    let ready = tokio::select! {
        ready = ready => ready,
        () = listing => return None,
    };
    Some((ready, passed))
}

/// The cached objects `wanted` picks, by reference (to reconcile them).
pub fn refs_where<K>(store: &Store<K>, wanted: impl Fn(&K) -> bool) -> Vec<ObjectRef<K>>
where
    K: Resource<DynamicType = ()> + Clone,
{
    store
        .state_filter(|o| wanted(o))
        .iter()
        .map(|o| ObjectRef::from_obj(o.as_ref()))
        .collect()
}

/// Whether the watch ended because the history it resumed from was compacted (410 Gone, sent in
/// the stream as the API server does): kube-runtime lists again after it. Not a 410 that refuses
/// a watch's start (a proxy's): kube-runtime retries the same version then, which may never work,
/// and that is a failure like any other.
fn expired(error: &watcher::Error) -> bool {
    matches!(error, watcher::Error::WatchError(status) if status.code == 410)
}

/// The watch of `api`, its initial state streamed as events (`sendInitialEvents`, the WatchList
/// feature of kube-apiserver, on by default from 1.34), or listed with `config` in pages of
/// [`PAGE`] where the API server refuses that (1.33 has it off and answers 422), or in pages where its watch cache for
/// the kind is not ready ([`paged`]): from then on this watch lists.
///
/// Why stream: a list with `resourceVersion=0` (served from the API server's watch cache, cheap
/// for it) ignores the page size and answers every object at once. At 10,000 resources that is
/// one answer of tens of MiB, held as text and then decoded whole, managed fields and all,
/// before the watch cache's slimming sees the first object: most of the controller's peak memory
/// at a start or a relist. Streamed, each object is decoded and slimmed on its own.
///
/// The 429s a watch without a selector meets come here (the client does not wait them out:
/// `runner::ButWatchesShed`), and [`Switch::on`] says what to do about each.
fn streamed_or_listed<K>(
    api: Api<K>,
    config: watcher::Config,
) -> impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    let selected = config.label_selector.is_some() || config.field_selector.is_some();
    let start = Watching {
        stream: watcher(api.clone(), config.clone().streaming_lists()).boxed(),
        api,
        config,
        lists: Lists::Streamed,
        initial: true,
        own_list: false,
        waits: None,
    };
    futures::stream::unfold(start, move |mut w| async move {
        loop {
            let next = w.stream.next().await?;
            match &next {
                Ok(watcher::Event::InitDone) => {
                    w.initial = false;
                    w.own_list = w.lists != Lists::Streamed;
                }
                Err(e) if expired(e) || matches!(e, watcher::Error::NoResourceVersion) => {
                    w.initial = true
                }
                _ => {}
            }
            let Err(watcher::Error::WatchStartFailed(kube::Error::Api(status))) = &next else {
                return Some(w.pass(next));
            };
            match Switch::on(status, w.initial, w.lists, w.own_list, selected) {
                Some(Switch::ToLists) => {
                    info!(
                        reason = %status.message,
                        "the API server does not stream a watch's initial state (WatchList is off); listing instead"
                    );
                    w.lists = Lists::Whole;
                    w.stream = watcher(w.api.clone(), w.config.clone().page_size(PAGE)).boxed();
                    continue;
                }
                Some(Switch::ToPages) => {
                    info!(
                        kind = %K::kind(&()),
                        reason = %status.message,
                        "the API server's watch cache for the kind is not ready (as after its start); listing in pages instead"
                    );
                    w.lists = Lists::Paged;
                    w.initial = true;
                    w.stream = watcher(w.api.clone(), paged(w.config.clone())).boxed();
                    continue;
                }
                Some(Switch::Wait(asked)) => {
                    let now = Instant::now();
                    let waits = w.waits.get_or_insert_with(|| Waits::new(now));
                    if let Some(wait) = waits.next(asked, now) {
                        debug!(kind = %K::kind(&()), reason = %status.message, wait_ms = wait.as_millis() as u64, "the API server asks the watch to wait");
                        tokio::time::sleep(wait).await;
                        continue;
                    }
                }
                None => {}
            }
            return Some(w.pass(next));
        }
    })
}

impl<K: Resource + Clone + 'static> Watching<K> {
    /// Passes `next` on. A failure but a 429 ends what follows the watch's own list: a watch
    /// resuming after it (after an outage, a restart, a 410) no longer resumes from that list.
    fn pass(
        mut self,
        next: Result<watcher::Event<K>, watcher::Error>,
    ) -> (Result<watcher::Event<K>, watcher::Error>, Self) {
        if let Err(e) = &next {
            self.waits = None;
            if !matches!(e, watcher::Error::WatchStartFailed(kube::Error::Api(s)) if s.code == 429)
            {
                self.own_list = false;
            }
        }
        (next, self)
    }
}

/// Where [`streamed_or_listed`] is.
struct Watching<K: Resource + Clone + 'static> {
    stream: futures::stream::BoxStream<'static, Result<watcher::Event<K>, watcher::Error>>,
    api: Api<K>,
    config: watcher::Config,
    lists: Lists,
    /// Whether the watch is listing (its first list, or a relist after its history ended):
    /// only then is a refused start a streamed list's.
    initial: bool,
    /// The watch resumes from a list it made (not streamed), and has not failed since but for
    /// a 429: the watch cache that answers it began before that list. (So a cache that stays
    /// not ready is waited for, not listed again and again: the watch lists again only after
    /// another failure, which its backoff follows.)
    own_list: bool,
    /// The waits the API server asked for, in a row.
    waits: Option<Waits>,
}

/// How a watch lists its initial state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Lists {
    /// As events of the watch (`sendInitialEvents`).
    Streamed,
    /// With the watch's own config, in pages of [`PAGE`] (where the server does not stream
    /// lists).
    Whole,
    /// In pages of the most recent state ([`paged`]).
    Paged,
}

/// The waits of a watch the API server asks to wait (429), in a row: at most
/// [`Waits::AT_MOST`] in all, after which the refusal counts as a failure (logged, told to
/// `/readyz`), and the watch's backoff takes over. A refused start comes back within
/// milliseconds; a 429 more than [`Waits::APART`] after the last wait ended follows a watch that
/// started (and ended since, as watches do after minutes), and begins a new row.
struct Waits {
    since: Instant,
    last_ended: Instant,
}

impl Waits {
    const AT_MOST: Duration = Duration::from_secs(5);
    const APART: Duration = Duration::from_secs(1);

    fn new(now: Instant) -> Self {
        Waits {
            since: now,
            last_ended: now,
        }
    }

    /// How long to wait when `asked` to, `now`: `None` once the row has waited its most.
    fn next(&mut self, asked: Duration, now: Instant) -> Option<Duration> {
        if now.saturating_duration_since(self.last_ended) > Self::APART {
            self.since = now;
        }
        let left = Self::AT_MOST.saturating_sub(now.duration_since(self.since));
        let wait = asked.min(left);
        if wait.is_zero() {
            return None;
        }
        self.last_ended = now + wait;
        Some(wait)
    }
}

/// The wait for a watch cache to catch up with the version of a list made since it began.
const CACHE_WAIT: Duration = Duration::from_millis(250);

/// What a watch does about the API server's refusal of its start.
#[derive(Debug, PartialEq, Eq)]
enum Switch {
    /// Lists with its own config, in pages of [`PAGE`], from then on (the server does not
    /// stream lists).
    ToLists,
    /// Lists now, in pages ([`paged`]), and from then on.
    ToPages,
    /// Waits this long and tries again, no failure.
    Wait(Duration),
}

impl Switch {
    /// What the API server's refusal `status` of a watch's start says to do. `initial`: the
    /// watch is listing (a streamed list's start), else it resumes; `lists`: how it lists;
    /// `fresh`: it resumes from its own list (see `Watching::own_list`); `selected`: it has a
    /// selector
    /// (the client waits out its 429s: no page of it is served from etcd meanwhile).
    ///
    /// A watch cache that is not ready answers 429 (KEP-4568): to a streamed list, and to a
    /// watch that resumes. A streamed list lists in pages instead, at once: the cache's server
    /// serves them from etcd meanwhile, and they end with their last page, not a second after
    /// the `Retry-After` and another on the bookmark timer. A resumed watch's history is gone
    /// from a cache being (re)built (once ready, it answers 410): it lists again in pages at
    /// once; but one that resumes from a list it just made waits for the cache, which began
    /// before that list (at the first request for the kind, refused) and serves the watch once
    /// it has caught up. A 429 that does not come from the cache (API Priority and Fairness
    /// shedding load) is waited out as the server asks: a relist is the last thing an overloaded
    /// server needs.
    fn on(
        status: &kube::core::Status,
        initial: bool,
        lists: Lists,
        fresh: bool,
        selected: bool,
    ) -> Option<Switch> {
        let streamed = lists == Lists::Streamed;
        match status.code {
            422 | 400 if initial && streamed => Some(Switch::ToLists),
            429 if selected => None,
            429 if initial => streamed.then_some(Switch::ToPages),
            429 if cache_not_ready(status) && fresh => Some(Switch::Wait(CACHE_WAIT)),
            429 if cache_not_ready(status) => Some(Switch::ToPages),
            429 => Some(Switch::Wait(retry_after(status))),
            _ => None,
        }
    }
}

/// The wait a 429 asks for (`Retry-After`, 1 s if it says none), 10 s at most.
fn retry_after(status: &kube::core::Status) -> Duration {
    let asked = status.details.as_ref().map_or(0, |d| d.retry_after_seconds);
    Duration::from_secs(u64::from(asked.clamp(1, 10)))
}

/// Whether a 429 is the one of a watch cache being (re)built (after the API server's start, or
/// when the cache lost its own watch of etcd), not API Priority and Fairness shedding load. The
/// text is kube-apiserver's (`storage is (re)initializing`, the cacher's since 1.31).
fn cache_not_ready(status: &kube::core::Status) -> bool {
    status.message.contains("(re)initializing")
}

/// `config` listing the most recent state in pages of [`PAGE`]: what a kube-apiserver whose watch
/// cache for the kind is not ready yet serves at once (from etcd: KEP-4568 answers a watch, and
/// any list but a page without a selector, 429 meanwhile), and, once it is, from its cache (1.34
/// on) or from etcd, a page at a time either way. Not `resourceVersion=0` (any version): the
/// cache would answer every object at once, whatever the page size. A streamed watch answered
/// 429 waits `Retry-After` (1 s) and would then end its initial state a second after its objects
/// (the bookmark timer); the pages end with their last.
fn paged(config: watcher::Config) -> watcher::Config {
    watcher::Config {
        list_semantic: watcher::ListSemantic::MostRecent,
        page_size: Some(PAGE),
        ..config
    }
}

/// Objects per page of a list. A page is held whole twice over while it is read (its text, then
/// its objects decoded), the largest transient of a relist. At 10,000 resources of 3.7 KiB
/// (benchmark part 5) the relist after an API-server outage peaked 8 MiB over the controller's
/// steady resident set with kube-runtime's and client-go's 500, 6 with 250; with glibc's mmap
/// threshold fixed too (`main.rs`), 5 with 500 and 3 with 250. The requests it adds (40 pages
/// instead of 20 at 10,000) served the new resource as soon; pages of 100 a second later.
pub const PAGE: u32 = 250;

/// Passes on the objects whose trigger hash changed since the watch last showed them (or that
/// have none), and the watch's errors.
///
/// kube-runtime's `predicate_filter` does the same, but keys its memory by name, namespace and
/// uid (three strings each) and forgets nothing until an hour has passed; this one keeps a uid
/// (compactly) and a hash per object, and forgets an object when the watch says it is gone
/// (deleted, or missing from a relist).
///
/// What a relist shows changed is passed once the relist is over, not as it comes, unless it
/// came first as a change ([`Relisted::InPlace`]): a cache that takes a relist whole (kube-runtime's
/// store, [`Relisted::Whole`]) swaps it in at its end, and the controller reconciles the cached
/// copy, so a request passed before would find
/// no object (one created during an API-server outage: dropped as not found, and never passed
/// again) or the copy from before the relist (one changed then: reconciled from the old spec).
/// The first list needs no such wait: kube-runtime holds every request until its store is first
/// ready. What is held is a reference, not a copy: a relist after a long outage may show every
/// object changed. Errors are not passed on (see [`triggers`]).
struct TriggerChanges<K: Resource, F> {
    trigger: F,
    last: HashMap<CompactId, u64>,
    /// A list has ended once: the store is ready, and a relist's changes wait for its end.
    listed: bool,
    /// Changes a relist showed, passed at its end.
    held: Vec<ObjectRef<K>>,
}

/// What one event of the watch passes on: an object now, and the references of the objects a
/// relist that just ended held back, to read from the cache.
type Passed<K> = (Option<K>, Vec<ObjectRef<K>>);

impl<K: Resource<DynamicType = ()>, F: Fn(&K) -> Option<u64>> TriggerChanges<K, F> {
    fn new(trigger: F) -> Self {
        TriggerChanges {
            trigger,
            last: HashMap::new(),
            listed: false,
            held: Vec::new(),
        }
    }

    fn pass(
        &mut self,
        event: Result<watcher::Event<K>, watcher::Error>,
        live: impl FnOnce() -> HashSet<String>,
    ) -> Passed<K> {
        let (changed, relisted) = match event {
            Ok(watcher::Event::Apply(obj)) => (obj, false),
            Ok(watcher::Event::InitApply(obj)) => (obj, true),
            Ok(watcher::Event::Delete(obj)) => {
                if let Some(uid) = obj.meta().uid.as_ref() {
                    self.last.remove(&CompactId::of(uid));
                }
                return (None, Vec::new());
            }
            Ok(watcher::Event::InitDone) => {
                let live: HashSet<CompactId> = live().iter().map(|u| CompactId::of(u)).collect();
                self.last.retain(|uid, _| live.contains(uid));
                self.listed = true;
                // A relist cut short by an error starts again with `Init` and keeps these: their
                // hashes are recorded, so the next list would not pass them again.
                return (None, std::mem::take(&mut self.held));
            }
            Ok(watcher::Event::Init) | Err(_) => return (None, Vec::new()),
        };
        if let (Some(hash), Some(uid)) = ((self.trigger)(&changed), changed.meta().uid.as_ref())
            && self.last.insert(CompactId::of(uid), hash) == Some(hash)
        {
            return (None, Vec::new());
        }
        if relisted && self.listed {
            self.held.push(ObjectRef::from_obj(&changed));
            return (None, Vec::new());
        }
        (Some(as_request(changed)), Vec::new())
    }
}

/// A passed object only names what to reconcile: kube-runtime makes its request from it (an
/// `ObjectRef`, kept twice while queued or requeued, in its scheduler's map and delay queue) and
/// reconciles the cached copy, matched by name and namespace. Its uid and resourceVersion would
/// only be kept copies, so they are left out.
fn as_request<K: Resource>(mut obj: K) -> K {
    let meta = obj.meta_mut();
    meta.uid = None;
    meta.resource_version = None;
    obj
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
    use k8s_openapi::api::core::v1::ConfigMap;

    fn status(code: u16) -> Box<kube::core::Status> {
        Box::new(kube::core::Status::failure("x", "X").with_code(code))
    }

    #[test]
    fn a_watch_lists_instead_where_the_server_streams_no_list_and_in_pages_where_its_cache_is_not_ready()
     {
        let refused =
            |code: u16, message: &str| kube::core::Status::failure(message, "X").with_code(code);
        let initializing = refused(429, "storage is (re)initializing");
        let mut shedding = refused(429, "Too many requests, please try again later.");
        let off = refused(422, "sendInitialEvents is forbidden");
        let (listing, resuming) = (true, false);
        let (fresh, old) = (true, false);
        let (plain, selected) = (false, true);
        let on = Switch::on;
        let second = Some(Switch::Wait(Duration::from_secs(1)));

        // A streamed list refused: by a server without WatchList, by a cache not ready, by a
        // server shedding load (a paged list is what it copes with best).
        let streamed = Lists::Streamed;
        assert_eq!(
            on(&off, listing, streamed, old, plain),
            Some(Switch::ToLists)
        );
        assert_eq!(
            on(&refused(400, "x"), listing, streamed, old, plain),
            Some(Switch::ToLists)
        );
        assert_eq!(
            on(&initializing, listing, streamed, old, plain),
            Some(Switch::ToPages)
        );
        assert_eq!(
            on(&shedding, listing, streamed, old, plain),
            Some(Switch::ToPages)
        );
        // A resumed watch, however it lists: a cache being rebuilt has lost its history (but
        // for the list just made); an overload is waited out as asked, with no relist.
        for lists in [Lists::Streamed, Lists::Whole, Lists::Paged] {
            assert_eq!(
                on(&initializing, resuming, lists, old, plain),
                Some(Switch::ToPages),
                "{lists:?}"
            );
            assert_eq!(
                on(&shedding, resuming, lists, old, plain),
                second,
                "{lists:?}"
            );
            assert_eq!(
                on(&shedding, resuming, lists, fresh, plain),
                second,
                "{lists:?}"
            );
            assert_eq!(on(&off, resuming, lists, old, plain), None, "{lists:?}");
        }
        for lists in [Lists::Whole, Lists::Paged] {
            assert_eq!(
                on(&initializing, resuming, lists, fresh, plain),
                Some(Switch::Wait(CACHE_WAIT)),
                "from its own list: {lists:?}"
            );
            assert_eq!(on(&off, listing, lists, old, plain), None, "switched once");
        }
        shedding.details = Some(kube::core::response::StatusDetails {
            name: String::new(),
            group: String::new(),
            kind: String::new(),
            uid: String::new(),
            causes: Vec::new(),
            retry_after_seconds: 3,
        });
        assert_eq!(
            on(&shedding, resuming, Lists::Paged, old, plain),
            Some(Switch::Wait(Duration::from_secs(3))),
            "as long as it asks"
        );
        // With a selector a page is not served from etcd either: the client waits.
        for (initial, fresh) in [(listing, old), (resuming, old), (resuming, fresh)] {
            assert_eq!(
                on(&initializing, initial, Lists::Streamed, fresh, selected),
                None
            );
        }
        // Other refusals are the watch's failures.
        for code in [403, 404, 410, 500, 503] {
            assert_eq!(
                on(&refused(code, "x"), listing, streamed, old, plain),
                None,
                "{code}"
            );
        }
    }

    #[test]
    fn the_waits_a_server_asks_for_last_5_s_in_a_row_and_a_later_429_begins_a_new_row() {
        let t0 = Instant::now();
        let second = Duration::from_secs(1);
        let mut waits = Waits::new(t0);
        let mut now = t0;
        let mut waited = Vec::new();
        while let Some(wait) = waits.next(second, now) {
            waited.push(wait);
            // The refused start comes back a few milliseconds after the wait.
            now += wait + Duration::from_millis(5);
        }
        assert_eq!(waited.len(), 5, "{waited:?}");
        assert!(waited[4] < second, "the last is cut to the 5 s: {waited:?}");
        // A 10 s wait asked at once is cut to 5 s.
        let mut waits = Waits::new(now);
        assert_eq!(
            waits.next(Duration::from_secs(10), now),
            Some(Waits::AT_MOST)
        );
        // The watch started after a wait, and a 429 minutes later (its next start): a new row.
        let mut waits = Waits::new(t0);
        let mut now = t0;
        for _ in 0..4 {
            now += waits.next(second, now).unwrap_or_default();
        }
        now += Duration::from_secs(300);
        assert_eq!(waits.next(second, now), Some(second), "a new row");
        for _ in 0..4 {
            now += second;
            assert_eq!(waits.next(second, now), Some(second));
        }
        now += second;
        assert_eq!(waits.next(second, now), None, "its fifth second was waited");
    }

    #[test]
    fn a_compacted_history_starts_no_row_of_failures() {
        let gone = || watcher::Error::WatchError(status(410));
        let gone_at_start = watcher::Error::WatchStartFailed(kube::Error::Api(status(410)));
        let forbidden = watcher::Error::WatchStartFailed(kube::Error::Api(status(403)));
        assert!(expired(&gone()));
        assert!(
            !expired(&gone_at_start),
            "kube-runtime retries the same version"
        );
        assert!(!expired(&forbidden));

        let mut failures = Repeated::default();
        logged::<ConfigMap>(&mut failures, &Err(gone()), "");
        assert_eq!(failures.succeeded(), None, "a relist is no failure");
        logged::<ConfigMap>(&mut failures, &Err(gone()), "");
        logged::<ConfigMap>(&mut failures, &Err(forbidden), "");
        assert_eq!(
            failures.failed(),
            (2, false),
            "the refusal after a relist was the first of its row (warned)"
        );
        logged::<ConfigMap>(&mut failures, &Err(gone_at_start), "");
        assert_eq!(failures.failed(), (4, false), "a refused start counts");
    }

    #[test]
    fn the_first_refusal_after_an_outage_is_waited_after_as_a_first_failure() {
        let refused_connection = || {
            watcher::Error::WatchStartFailed(kube::Error::Service(Box::new(std::io::Error::from(
                std::io::ErrorKind::ConnectionRefused,
            ))))
        };
        let starting = || watcher::Error::WatchStartFailed(kube::Error::Api(status(403)));
        let first = |wait: Duration| {
            wait >= WatchBackoff::FIRST.mul_f64(0.75) && wait <= WatchBackoff::FIRST.mul_f64(1.25)
        };
        let capped = |wait: Duration| wait >= WatchBackoff::MAX.mul_f64(0.75);

        let mut backoff = WatchBackoff::default();
        let mut returns = Returns::new(&backoff);
        let mut wait = Duration::ZERO;
        for _ in 0..6 {
            returns.see::<ConfigMap>(&Err(refused_connection()));
            wait = backoff.next().unwrap_or_default();
        }
        assert!(
            capped(wait),
            "an outage grows the wait to its cap: {wait:?}"
        );
        returns.see::<ConfigMap>(&Err(starting()));
        wait = backoff.next().unwrap_or_default();
        assert!(first(wait), "the server is back: {wait:?}");
        returns.see::<ConfigMap>(&Err(starting()));
        wait = backoff.next().unwrap_or_default();
        assert!(
            wait > WatchBackoff::FIRST.mul_f64(1.25),
            "refused again: it grows from there: {wait:?}"
        );
        // Unanswered and refused in turn (an overloaded server): restarted once, then it grows.
        for _ in 0..4 {
            returns.see::<ConfigMap>(&Err(refused_connection()));
            backoff.next();
            returns.see::<ConfigMap>(&Err(starting()));
            wait = backoff.next().unwrap_or_default();
        }
        assert!(capped(wait), "alternating failures grow it: {wait:?}");
        // A list's start before each try (where the watch lists) is no sign it works.
        returns.see::<ConfigMap>(&Ok(watcher::Event::Init));
        backoff.reset();
        wait = backoff.next().unwrap_or_default();
        assert!(capped(wait), "not reset by a list's start: {wait:?}");
        // Once the watch works, a later outage's return restarts it again.
        returns.see::<ConfigMap>(&Ok(watcher::Event::InitDone));
        backoff.reset();
        for _ in 0..6 {
            returns.see::<ConfigMap>(&Err(refused_connection()));
            backoff.next();
        }
        returns.see::<ConfigMap>(&Err(starting()));
        wait = backoff.next().unwrap_or_default();
        assert!(first(wait), "a new return: {wait:?}");
        // A server that only ever refuses never restarts the backoff.
        let mut backoff = WatchBackoff::default();
        let mut returns = Returns::new(&backoff);
        for _ in 0..6 {
            returns.see::<ConfigMap>(&Err(starting()));
            wait = backoff.next().unwrap_or_default();
        }
        assert!(capped(wait), "refusals alone grow it: {wait:?}");
    }

    fn object(uid: &str, generation: i64) -> ConfigMap {
        let mut o = ConfigMap::default();
        o.metadata.name = Some(format!("n-{uid}"));
        o.metadata.uid = Some(uid.to_string());
        o.metadata.generation = Some(generation);
        o.metadata.resource_version = Some(format!("{generation}"));
        o
    }

    /// The names of the objects `event` passes on.
    fn passed_all(
        changes: &mut TriggerChanges<ConfigMap, impl Fn(&ConfigMap) -> Option<u64>>,
        event: watcher::Event<ConfigMap>,
        live: &[&str],
    ) -> Vec<String> {
        let live: HashSet<String> = live.iter().map(|s| s.to_string()).collect();
        let (now, released) = changes.pass(Ok(event), || live);
        now.into_iter()
            .map(|o| {
                assert_eq!(
                    (o.metadata.uid, o.metadata.resource_version),
                    (None, None),
                    "a request names the object, nothing more"
                );
                o.metadata.name.unwrap_or_default()
            })
            .chain(released.into_iter().map(|r| r.name))
            .collect()
    }

    /// The one object `event` passes on, if any.
    fn passed(
        changes: &mut TriggerChanges<ConfigMap, impl Fn(&ConfigMap) -> Option<u64>>,
        event: watcher::Event<ConfigMap>,
        live: &[&str],
    ) -> Option<String> {
        let mut all = passed_all(changes, event, live);
        assert!(all.len() <= 1, "{all:?}");
        all.pop()
    }

    #[test]
    fn what_a_relist_shows_changed_passes_at_its_end_once_the_store_holds_it() {
        use watcher::Event::{Init, InitApply, InitDone};
        let mut c = TriggerChanges::new(|o: &ConfigMap| o.metadata.generation.map(|g| g as u64));
        // The first list: at once (kube-runtime holds requests until its store is first ready).
        assert_eq!(passed(&mut c, Init, &[]), None);
        assert_eq!(
            passed(&mut c, InitApply(object("a", 1)), &[]),
            Some("n-a".into())
        );
        assert_eq!(passed(&mut c, InitDone, &["a"]), None);
        // A relist (after a 410, an outage): a changed and a new object, and an unchanged one,
        // cut short by an error and started again.
        assert_eq!(passed(&mut c, Init, &[]), None);
        assert_eq!(passed(&mut c, InitApply(object("a", 2)), &[]), None);
        assert!(
            c.pass(Err(watcher::Error::NoResourceVersion), HashSet::new)
                .0
                .is_none()
        );
        assert_eq!(passed(&mut c, Init, &[]), None);
        assert_eq!(passed(&mut c, InitApply(object("a", 2)), &[]), None);
        assert_eq!(passed(&mut c, InitApply(object("b", 1)), &[]), None);
        assert_eq!(
            passed_all(&mut c, InitDone, &["a", "b"]),
            ["n-a", "n-b"],
            "each passed once, at the end"
        );
        assert_eq!(
            passed_all(&mut c, InitDone, &["a", "b"]),
            Vec::<String>::new()
        );
    }

    /// The watch's pipeline from the decoded events on: each event, with what a relist shows
    /// new put in the cache first, into the cache, then filtered. Returns what was passed, each
    /// with the generation the cache held for it when it was passed (what its reconcile reads).
    fn through_the_cache(
        relisted: Relisted,
        events: Vec<watcher::Event<ConfigMap>>,
    ) -> Vec<(String, Option<i64>)> {
        let writer = Writer::<ConfigMap>::default();
        let store = writer.as_reader();
        let mut cached = Cached::new(writer, relisted);
        let mut changes =
            TriggerChanges::new(|o: &ConfigMap| o.metadata.generation.map(|g| g as u64));
        let mut passed = Vec::new();
        for event in events {
            let (news, event) = cached.write(Ok(event));
            for event in news.into_iter().chain(std::iter::once(event)) {
                let live = || {
                    store
                        .state()
                        .iter()
                        .filter_map(|o| o.metadata.uid.clone())
                        .collect()
                };
                let (now, released) = changes.pass(event, live);
                let names = now
                    .into_iter()
                    .map(|o| o.metadata.name.unwrap_or_default())
                    .chain(released.into_iter().map(|r| r.name));
                for name in names {
                    let cached = store
                        .get(&ObjectRef::<ConfigMap>::new(&name))
                        .and_then(|c| c.metadata.generation);
                    passed.push((name, cached));
                }
            }
        }
        passed
    }

    /// A first list, then a relist (after a 410, an outage) showing a changed object, an
    /// unchanged one and a new one, cut short by an error and started again; then a change,
    /// and a relist showing a new version whose hash is not news (a status write).
    fn a_relist_and_another() -> Vec<watcher::Event<ConfigMap>> {
        use watcher::Event::{Apply, Init, InitApply, InitDone};
        let mut a3 = object("a", 3);
        a3.metadata.resource_version = Some("30".into());
        vec![
            Init,
            InitApply(object("a", 1)),
            InitApply(object("b", 1)),
            InitDone,
            Init,
            InitApply(object("a", 2)),
            InitApply(object("b", 1)),
            InitApply(object("c", 1)),
            Init,
            InitApply(object("a", 2)),
            InitApply(object("b", 1)),
            InitApply(object("c", 1)),
            InitDone,
            Apply(object("a", 3)),
            Init,
            InitApply(a3),
            InitApply(object("b", 1)),
            InitApply(object("c", 1)),
            InitDone,
        ]
    }

    /// In place, each change passes as it comes; taken whole, at the end of the relist (cut short
    /// and started again), once the cache holds it. The same passes, each when the cache holds it.
    #[test]
    fn what_a_relist_shows_new_or_changed_passes_once_with_the_cache_holding_it() {
        for relisted in [Relisted::InPlace, Relisted::Whole] {
            let passed = through_the_cache(relisted, a_relist_and_another());
            let at = |name: &str, generation: i64| (format!("n-{name}"), Some(generation));
            // The first list's are passed before the cache has them: kube-runtime's controller
            // holds them until the cache is first ready.
            let before_ready = |name: &str| (format!("n-{name}"), None);
            assert_eq!(
                passed,
                [
                    before_ready("a"),
                    before_ready("b"),
                    at("a", 2),
                    at("c", 1),
                    at("a", 3)
                ],
                "{relisted:?}"
            );
        }
    }

    #[test]
    fn a_relist_in_place_keeps_one_copy_of_each_object_and_drops_what_it_did_not_show_at_its_end() {
        use watcher::Event::{Init, InitApply, InitDone};
        let writer = Writer::<ConfigMap>::default();
        let store = writer.as_reader();
        let mut cached = Cached::new(writer, Relisted::InPlace);
        let mut events = |event: Result<watcher::Event<ConfigMap>, watcher::Error>| {
            let (news, event) = cached.write(event);
            news.into_iter()
                .chain(std::iter::once(event))
                .map(|e| match e {
                    Ok(watcher::Event::Apply(o)) => format!("Apply {}", o.metadata.uid.unwrap()),
                    Ok(watcher::Event::InitApply(o)) => {
                        format!("InitApply {}", o.metadata.uid.unwrap())
                    }
                    Ok(other) => format!("{other:?}"),
                    Err(_) => "failed".to_string(),
                })
                .collect::<Vec<_>>()
        };
        let copy = |name: &str| store.get(&ObjectRef::new(&format!("n-{name}")));
        let uids = || {
            let mut uids: Vec<String> = store
                .state()
                .iter()
                .filter_map(|o| o.metadata.uid.clone())
                .collect();
            uids.sort();
            uids
        };
        assert_eq!(events(Ok(Init)), ["Init"]);
        for name in ["a", "b", "d"] {
            assert_eq!(
                events(Ok(InitApply(object(name, 1)))),
                [format!("InitApply {name}")],
                "the first list"
            );
        }
        assert!(
            uids().is_empty(),
            "the first list goes in whole, at its end"
        );
        assert_eq!(events(Ok(InitDone)), ["InitDone"]);
        assert_eq!(uids(), ["a", "b", "d"]);
        let (a, d) = (copy("a"), copy("d"));

        // A relist, cut short by an error and started again.
        assert_eq!(events(Ok(Init)), ["Init"]);
        assert_eq!(
            events(Ok(InitApply(object("d", 1)))),
            ["InitApply d"],
            "unchanged"
        );
        assert_eq!(events(Err(watcher::Error::NoResourceVersion)), ["failed"]);
        assert_eq!(events(Ok(Init)), ["Init"]);
        assert_eq!(
            events(Ok(InitApply(object("a", 1)))),
            ["InitApply a"],
            "unchanged"
        );
        assert_eq!(
            events(Ok(InitApply(object("b", 2)))),
            ["Apply b", "InitApply b"],
            "another version"
        );
        assert_eq!(copy("b").and_then(|b| b.metadata.generation), Some(2));
        let mut recreated = object("b", 3);
        recreated.metadata.uid = Some("b2".into());
        assert_eq!(
            events(Ok(InitApply(recreated))),
            ["Apply b2", "InitApply b2"],
            "the same name, another uid"
        );
        assert_eq!(
            events(Ok(InitApply(object("c", 1)))),
            ["Apply c", "InitApply c"],
            "new"
        );
        assert_eq!(
            uids(),
            ["a", "b2", "c", "d"],
            "what the relist did not show (d, shown only before it started again) stays until its end"
        );
        assert_eq!(events(Ok(InitDone)), ["InitDone"]);
        assert_eq!(uids(), ["a", "b2", "c"], "and goes at its end");
        assert!(
            copy("a")
                .zip(a)
                .is_some_and(|(now, before)| Arc::ptr_eq(&now, &before)),
            "an unchanged object keeps its cached copy: none was made"
        );
        assert!(d.is_some());

        // A relist that shows nothing empties the cache; the next shows what is new again.
        assert_eq!(events(Ok(Init)), ["Init"]);
        assert_eq!(events(Ok(InitDone)), ["InitDone"]);
        assert!(uids().is_empty());
        assert_eq!(events(Ok(Init)), ["Init"]);
        assert_eq!(
            events(Ok(InitApply(object("a", 1)))),
            ["Apply a", "InitApply a"]
        );
        assert_eq!(events(Ok(InitDone)), ["InitDone"]);
        assert_eq!(uids(), ["a"]);
    }

    #[tokio::test(start_paused = true)]
    async fn after_an_outage_a_compacted_history_is_listed_again_without_waiting_out_the_backoff() {
        let refused = || -> Result<watcher::Event<ConfigMap>, watcher::Error> {
            Err(watcher::Error::WatchStartFailed(kube::Error::Api(status(
                503,
            ))))
        };
        // Three refused tries through the outage, then the restarted server's 410, then the
        // relist.
        let events = futures::stream::iter([
            refused(),
            refused(),
            refused(),
            Err(watcher::Error::WatchError(status(410))),
            Ok(watcher::Event::Init),
        ]);
        let mut watch = std::pin::pin!(backed_off(events, tokio::sync::watch::channel(0).1));
        for _ in 0..3 {
            assert!(matches!(watch.next().await, Some(Err(_))));
        }
        let returned = tokio::time::Instant::now();
        assert!(matches!(watch.next().await, Some(Ok(watcher::Event::Init))));
        let waited = returned.elapsed();
        // The third refusal's wait (1 s +/- 25 %), and no second one after the 410 (2 s more).
        assert!(waited <= Duration::from_millis(1_250), "{waited:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_after_a_failure_ends_when_the_api_server_answers_again_after_it() {
        let (tries, events) = futures::channel::mpsc::unbounded::<Result<u32, &'static str>>();
        let (answers, returns) = tokio::sync::watch::channel(0u64);
        let mut watch = std::pin::pin!(woken_backoff(
            events,
            WatchBackoff::default(),
            returns,
            "Test".into()
        ));
        tries.unbounded_send(Err("refused")).unwrap();
        assert_eq!(watch.next().await, Some(Err("refused")));

        // A return told while the next try is under way (the answer to that try, or to another
        // call meanwhile) leaves the wait after its failure as it is: the try came after it.
        let under_way = tokio::time::timeout(Duration::from_secs(1), watch.next()).await;
        assert!(
            under_way.is_err(),
            "the first wait is over, the try under way"
        );
        answers.send_modify(|n| *n += 1);
        tries.unbounded_send(Err("refused")).unwrap();
        assert_eq!(watch.next().await, Some(Err("refused")));
        let failed = tokio::time::Instant::now();
        tries.unbounded_send(Err("refused")).unwrap();
        assert_eq!(watch.next().await, Some(Err("refused")));
        let waited = failed.elapsed();
        assert!(
            waited >= Duration::from_millis(375),
            "the second wait (500 ms +/- 25 %): {waited:?}"
        );

        // A return told during a wait (1 s +/- 25 %) ends it.
        let failed = tokio::time::Instant::now();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            answers.send_modify(|n| *n += 1);
            // Kept until the watch has tried: a dropped sender tells no more returns.
            tokio::time::sleep(Duration::from_secs(60)).await;
        });
        tries.unbounded_send(Ok(1)).unwrap();
        assert_eq!(watch.next().await, Some(Ok(1)));
        assert_eq!(failed.elapsed(), Duration::from_millis(100));
    }

    #[tokio::test(start_paused = true)]
    async fn a_backoff_that_ends_ends_the_watch_after_its_failure() {
        struct Ends;
        impl Iterator for Ends {
            type Item = Duration;
            fn next(&mut self) -> Option<Duration> {
                None
            }
        }
        impl Backoff for Ends {
            fn reset(&mut self) {}
        }
        let events = futures::stream::iter([Err::<u32, _>("refused"), Ok(1)]);
        let returns = tokio::sync::watch::channel(0u64).1;
        let watch = woken_backoff(events, Ends, returns, "Test".into());
        assert_eq!(watch.collect::<Vec<_>>().await, [Err("refused")]);
    }

    #[test]
    fn a_compacted_history_is_listed_again_at_once_but_not_in_a_loop() {
        let gone = || -> Result<watcher::Event<ConfigMap>, watcher::Error> {
            Err(watcher::Error::WatchError(status(410)))
        };
        let mut relists = Relists::default();
        assert!(!relists.at_once(&Ok(watcher::Event::<ConfigMap>::Init)));
        assert!(
            !relists.at_once::<ConfigMap>(&Err(watcher::Error::WatchStartFailed(
                kube::Error::Api(status(410))
            )))
        );
        assert!(relists.at_once(&gone()), "taken out before the backoff");
        assert!(
            !relists.at_once(&gone()),
            "a second within 10 s waits for the backoff"
        );
        relists.last = relists.last.map(|t| t - Relists::AT_ONCE_AGAIN);
        assert!(relists.at_once(&gone()));
    }

    #[test]
    fn only_a_changed_trigger_passes_and_a_gone_object_is_forgotten() {
        use watcher::Event::{Apply, Delete, Init, InitApply, InitDone};
        let mut c = TriggerChanges::new(|o: &ConfigMap| o.metadata.generation.map(|g| g as u64));
        assert_eq!(
            passed(&mut c, Apply(object("a", 1)), &[]),
            Some("n-a".into())
        );
        assert_eq!(
            passed(&mut c, Apply(object("a", 1)), &[]),
            None,
            "unchanged"
        );
        assert_eq!(
            passed(&mut c, Apply(object("b", 1)), &[]),
            Some("n-b".into())
        );
        assert_eq!(
            passed(&mut c, Apply(object("a", 2)), &[]),
            Some("n-a".into())
        );
        // Deleted and made again under the same uid (as a test might): news again.
        assert_eq!(passed(&mut c, Delete(object("a", 2)), &[]), None);
        assert_eq!(
            passed(&mut c, Apply(object("a", 2)), &[]),
            Some("n-a".into())
        );
        // A relist: what did not change does not pass; what is missing from it is forgotten.
        assert_eq!(passed(&mut c, Init, &[]), None);
        assert_eq!(passed(&mut c, InitApply(object("a", 2)), &[]), None);
        assert_eq!(passed(&mut c, InitDone, &["a"]), None);
        assert_eq!(c.last.len(), 1, "b left with the relist");
        assert_eq!(
            passed(&mut c, Apply(object("b", 1)), &[]),
            Some("n-b".into())
        );
        // No hash, or no uid: always passes.
        let mut none = TriggerChanges::new(|_: &ConfigMap| None);
        assert_eq!(
            passed(&mut none, Apply(object("a", 1)), &[]),
            Some("n-a".into())
        );
        assert_eq!(
            passed(&mut none, Apply(object("a", 1)), &[]),
            Some("n-a".into())
        );
        let mut no_uid = object("", 1);
        no_uid.metadata.uid = None;
        assert_eq!(
            passed(&mut c, Apply(no_uid.clone()), &[]),
            Some("n-".into())
        );
        assert_eq!(passed(&mut c, Apply(no_uid), &[]), Some("n-".into()));
    }

    #[test]
    fn a_watch_error_is_not_passed_on() {
        let mut c = TriggerChanges::new(|_: &ConfigMap| Some(1));
        let e = watcher::Error::NoResourceVersion;
        assert!(matches!(c.pass(Err(e), HashSet::new), (None, v) if v.is_empty()));
    }

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
