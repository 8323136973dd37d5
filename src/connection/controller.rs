//! The Kubernetes side: runs a [`decide::Run`] against the API server and the Proton port,
//! writes status and Events, and wires everything into a kube-runtime controller.
//!
//! A reconcile reads as four steps: fetch (what the resource and the controller's memory say),
//! decide (ask the run for the next step), execute (one Kubernetes or AWS call), record (hand the
//! answer back to the run), until the run's step is final.

use std::collections::HashSet;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::Reporter;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use serde_json::json;
use tokio::time::Instant;
use tokio_util::task::AbortOnDropHandle;
use tracing::{debug, info, info_span, warn};

use crate::aws::budget::CallClass;
use crate::aws::proton::{Proton, ProtonError, Retry, StepCalls, Ticket};
use crate::compact_id::CompactId;
use crate::connection::api::{
    ADOPT_ANNOTATION, ADOPTION_ALLOWED, ADOPTION_NAMESPACE_LABEL, ConnectionState,
    EnvironmentAccountConnection, EnvironmentAccountConnectionStatus as Status, FINALIZER,
    INTENT_ANNOTATION, PAUSED_ANNOTATION,
};
use crate::connection::decide::{
    self, Intent, Memory, Note, Outcome, Problem, Progress, Run, Settings, Step, Written,
};
use crate::connection::polls::{Polls, Waiting};
use crate::connection::undecided::Undecided;
use crate::http::Readiness;
use crate::mapping::{Accounts, AwsIdentity, MappingError, Resolved, UnmappedNamespaces};
use crate::metrics::Metrics;
use crate::policy::ConnectionAcceptancePolicy;
use crate::reconciler::nudge::{Nudge, Why};
use crate::reconciler::timetable::Timetable;
use crate::reconciler::{
    self, after_outage,
    tracked::{Guard, Tracker},
};
use crate::recorder::Recorder;

pub use crate::recorder::{FIELD_MANAGER, reporter};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{step} of {object} failed: {source}")]
    Kube {
        step: &'static str,
        object: String,
        #[source]
        source: kube::Error,
    },
    #[error("{0} has no {1}")]
    MissingMetadata(String, &'static str),
    /// The watch cache is behind the server (a write of ours it has not shown yet): this
    /// reconcile stops before acting on the stale copy and runs again on the fresh one.
    #[error("the cached copy of {0} is behind the server")]
    StaleCache(String),
}

impl Error {
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube { .. } => "kube_error",
            Error::MissingMetadata(..) => "invalid_object",
            Error::StaleCache(_) => "stale_cache",
        }
    }
}

/// How soon a reconcile that stopped on a stale cached copy runs again, if nothing wakes it
/// sooner (the watch wakes one waiting for this controller's own status write as soon as it
/// brings it: see `awaits_watch`).
const STALE_CACHE_RETRY: Duration = Duration::from_secs(1);

/// What the connection kind keeps about one resource between reconciles, beside what every kind
/// keeps ([`crate::reconciler::tracked`]).
#[derive(Clone, Debug, Default)]
struct Kept {
    memory: Memory,
    /// The last routine read (poll or resync) and when, for the effective-interval metric.
    last_read: Option<(CallClass, Instant)>,
    /// What the last reconcile learned before its next call was deferred. Boxed: few resources
    /// hold one, and every resource's entry would otherwise be the size of it.
    resume: Option<Box<Resume>>,
    /// The resourceVersion of the cached copy the last metadata write (the finalizer, with the
    /// intent) was made from. While the cache still shows that copy it is behind our own write:
    /// a reconcile then waits for the watch instead of repeating the write (which the API
    /// server would refuse, costing a refused patch and a re-read each time).
    written_over: Option<String>,
    /// A reconcile stopped to wait for the cache to show this controller's last status write:
    /// the watch event that shows it queues the resource again at once, instead of leaving it
    /// to the retry a second later (a nudge, a woken poll or a deletion waits no longer than
    /// the watch does).
    awaits_watch: bool,
}

/// A deferred reconcile's [`Progress`], and what it holds for: the next reconcile goes on from
/// it only if the resource is as it was (generation, annotations, credentials, deletion, the
/// recorded connection) and its booked slot has not gone stale.
#[derive(Clone, Debug)]
struct Resume {
    generation: i64,
    triggers: Triggers,
    deleting: bool,
    status_id: Option<String>,
    until: Instant,
    progress: Progress,
}

/// How long past its due time a deferred reconcile's progress is kept: as long as the call
/// budget keeps an unclaimed booking, so a reconcile held up by busy workers still finds both.
const RESUME_GRACE: Duration = Duration::from_secs(60);

/// Everything a reconcile needs; shared by all workers.
pub struct Context {
    pub client: Client,
    pub proton: Proton,
    pub settings: Settings,
    pub metrics: Metrics,
    recorder: Recorder,
    /// Checkpoints hold the triggers' hash, not the triggers: a mapping's name and region would
    /// otherwise be copied into every resource's entry.
    tracked: Tracker<u64, Kept>,
    /// Share of the workers that routine reads (polls, resyncs) may occupy at once.
    poll_share: f64,
    /// Workers routine reads may hold, while the controller runs (None: no limit).
    routine_workers: Mutex<Option<Arc<tokio::sync::Semaphore>>>,
    /// Which credentials each namespace's resources act with (the account mappings); shared
    /// with the management side.
    accounts: Arc<Mutex<Accounts>>,
    /// This controller, for the management side to nudge (a connection it just accepted).
    nudge: Nudge<EnvironmentAccountConnection>,
    /// The management side, to nudge when a connection here requests an account it decides for.
    policies: Nudge<ConnectionAcceptancePolicy>,
    /// The watch cache, while the controller runs.
    cache: Mutex<Option<Store<EnvironmentAccountConnection>>>,
    /// The fast polls of PENDING connections, made from the shared list while it runs.
    polls: Arc<Polls>,
    /// The cached resources a management account may still decide, by connection id (for the
    /// management side here to nudge).
    undecided: Arc<Undecided>,
    /// When each resource's reconcile comes back.
    timetable: Arc<Timetable>,
    /// See [`STALE_CACHE_RETRY`].
    stale_cache_retry: Duration,
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
            accounts: Arc::new(Mutex::new(Accounts::disabled())),
            nudge: Nudge::default(),
            policies: Nudge::default(),
            cache: Mutex::default(),
            polls: Arc::default(),
            undecided: Arc::default(),
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
    fn newest(
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
        *self.accounts.lock().unwrap_or_else(|p| p.into_inner()) = accounts;
    }

    /// The account mappings as this controller follows them, for the management side.
    pub fn accounts_handle(&self) -> Arc<Mutex<Accounts>> {
        self.accounts.clone()
    }

    fn resolve_credentials(&self, namespace: &str) -> Result<Resolved, MappingError> {
        let accounts = self
            .accounts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        accounts.resolve(namespace)
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
    fn routine_slot(&self) -> Result<Option<tokio::sync::OwnedSemaphorePermit>, ()> {
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

    fn tracked(&self) -> Guard<'_, u64, Kept> {
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

/// One reconcile of one resource.
pub async fn reconcile(
    obj: Arc<EnvironmentAccountConnection>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    // The copy kube-runtime took when it queued this reconcile may have been replaced since.
    let obj = ctx.newest(&obj).unwrap_or(obj);
    let span = info_span!(
        "reconcile",
        namespace = obj.namespace().unwrap_or_default(),
        resource = obj.name_any(),
        uid = obj.uid().unwrap_or_default(),
        generation = obj.metadata.generation.unwrap_or_default()
    );
    reconciler::measured(
        span,
        Box::pin(reconcile_inner(&obj, &ctx)),
        Error::metric_label,
        |label, took| ctx.metrics.reconciled(label, took),
    )
    .await
}

/// After a failed reconcile (a Kubernetes error: AWS errors end in a reported status). Backs off
/// exponentially per resource, and reports a new error in an Event (the status may be what
/// cannot be written).
pub fn error_policy(
    obj: Arc<EnvironmentAccountConnection>,
    error: &Error,
    ctx: Arc<Context>,
) -> Action {
    if let Error::StaleCache(_) = error {
        // Not a failure: the watch brings the fresh copy. Its event reruns the reconcile when
        // it changes what triggers one; the requeue covers the rest (a copy that only shows
        // this controller's status write, an event that came in while this one ran).
        debug!(error = %error, "reconcile stopped on a stale cached copy");
        return Action::requeue(ctx.stale_cache_retry);
    }
    let kube = match error {
        Error::Kube { source, .. } => Some(source),
        _ => None,
    };
    let triggers = Triggers::of(&obj, &ctx).hash_of();
    reconciler::failure::backed_off(
        obj,
        &ctx.tracked,
        &ctx.recorder,
        triggers,
        error,
        kube,
        ctx.settings.resync,
    )
}

/// The `proton.eac.dev/adopt-id` annotation, trimmed, if not empty.
fn adopt_annotation(obj: &EnvironmentAccountConnection) -> Option<String> {
    obj.annotations()
        .get(ADOPT_ANNOTATION)
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// Whether the `proton.eac.dev/paused` annotation says `"true"`.
fn paused_annotation(obj: &EnvironmentAccountConnection) -> bool {
    obj.annotations()
        .get(PAUSED_ANNOTATION)
        .is_some_and(|v| v.trim() == "true")
}

/// What a reconcile acts on besides the spec: a change to one is worth a reconcile even before
/// the resource is due: the annotations it reads, and the credentials its namespace resolves to.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Triggers {
    adopt_id: Option<String>,
    paused: bool,
    credentials: Result<Resolved, MappingError>,
}

impl Triggers {
    /// What a checkpoint keeps of them: equal triggers hash alike, and a changed one (a new
    /// mapping, annotation, ...) all but surely not.
    fn hash_of(&self) -> u64 {
        let mut h = DefaultHasher::new();
        self.hash(&mut h);
        h.finish()
    }

    fn of(obj: &EnvironmentAccountConnection, ctx: &Context) -> Triggers {
        Triggers {
            adopt_id: adopt_annotation(obj),
            paused: paused_annotation(obj),
            credentials: ctx.resolve_credentials(&obj.namespace().unwrap_or_default()),
        }
    }
}

/// What a reconcile starts from.
struct Facts {
    /// The resource's namespace in the API.
    api: Api<EnvironmentAccountConnection>,
    object: String,
    namespace: String,
    name: String,
    uid: String,
    generation: i64,
    triggers: Triggers,
    finalizers: Vec<String>,
    /// The status in the watch cache.
    stored: Option<Status>,
    /// The status to reconcile from (see [`decide::effective_status`]).
    status: Status,
    /// The cache does not show this controller's last status write yet (see
    /// [`Memory::written`]): the reconcile waits for the watch.
    behind_own_status: bool,
    quiet: Option<Duration>,
    /// A nudge made it due: its connection was just accepted or rejected here.
    nudged: bool,
    failures: u32,
    /// Nothing is kept about the resource yet: first seen in this term of leadership.
    first_sight: bool,
    /// The intent-to-create annotation as it stands (as read, or as written by this reconcile).
    intent_annotation: Mutex<Option<String>>,
    /// Events to publish once the reconcile is over, in order.
    notes: Mutex<Vec<Note>>,
    /// Whose credentials the resource's AWS calls are made with.
    identity: AwsIdentity,
    /// Why its namespace has no credentials, if so.
    credentials_problem: Option<Problem>,
    /// What the last reconcile learned before it was deferred, to go on from.
    resumed: Option<Progress>,
    deleting: bool,
}

impl Facts {
    /// An Event to publish when the reconcile is over.
    fn note(&self, note: &Note) {
        self.notes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(note.clone());
    }

    fn fetch(obj: &EnvironmentAccountConnection, ctx: &Context) -> Result<Facts, Error> {
        let object = format!("{}/{}", obj.namespace().unwrap_or_default(), obj.name_any());
        let namespace = obj
            .namespace()
            .ok_or_else(|| Error::MissingMetadata(object.clone(), "namespace"))?;
        let uid = obj
            .uid()
            .ok_or_else(|| Error::MissingMetadata(object.clone(), "uid"))?;
        let generation = obj.metadata.generation.unwrap_or_default();
        let triggers = Triggers::of(obj, ctx);
        let credentials = triggers.credentials.clone();
        let deleting = obj.metadata.deletion_timestamp.is_some();
        let stored = obj.status.clone();
        let intent = obj
            .annotations()
            .get(INTENT_ANNOTATION)
            .and_then(|a| Intent::parse(a));

        let mut tracked = ctx.tracked();
        // A newer copy may have reached the cache after this reconcile took its copy, and the
        // watch then forgot the status it shows as written (under this lock): the older copy
        // without that memory would look as if nothing had been done. Such a reconcile starts
        // again on the newer copy.
        if ctx
            .newest(obj)
            .is_some_and(|n| n.metadata.resource_version != obj.metadata.resource_version)
        {
            return Err(Error::StaleCache(object));
        }
        let first_sight = !tracked.contains_key(&uid);
        if let Some(t) = tracked.get_mut(&uid) {
            // Still the copy our own write replaced? Any other copy shows the write, or later.
            let behind = !deleting
                && t.kind.written_over.is_some()
                && t.kind.written_over == obj.metadata.resource_version;
            if behind {
                return Err(Error::StaleCache(object));
            }
            t.kind.written_over = None;
        }
        let mut behind_own_status = false;
        let has_finalizer = obj.finalizers().iter().any(|f| f == FINALIZER);
        let (status, quiet, failures, resumed, nudged) = match tracked.get_mut(&uid) {
            Some(t) => {
                t.kind
                    .memory
                    .catch_up(stored.as_ref(), obj.metadata.resource_version.as_deref());
                behind_own_status = t.kind.memory.written.is_some();
                let now = Instant::now();
                let quiet = match deleting {
                    true => None,
                    false => t.quiet(generation, &triggers.hash_of(), now),
                };
                if behind_own_status && waits_for_own_status(quiet, has_finalizer, deleting) {
                    // Stops before taking the nudge or the deferred progress: the reconcile the
                    // watch wakes needs both.
                    t.kind.awaits_watch = true;
                    return Err(Error::StaleCache(object));
                }
                t.kind.awaits_watch = false;
                let status =
                    decide::effective_status(stored.as_ref(), intent.as_ref(), &t.kind.memory);
                let failures = t.failures(generation);
                // Taken only by a reconcile that may call AWS: one held back (quiet) leaves it.
                let resumed = match quiet {
                    Some(_) => None,
                    None => t
                        .kind
                        .resume
                        .take()
                        .filter(|r| {
                            r.generation == generation
                                && r.triggers == triggers
                                && r.deleting == deleting
                                && r.status_id == status.id
                                && r.until > now
                        })
                        .map(|r| r.progress),
                };
                let nudged = quiet.is_none() && t.take_nudged();
                (status, quiet, failures, resumed, nudged)
            }
            None => (
                decide::effective_status(stored.as_ref(), intent.as_ref(), &Memory::default()),
                None,
                0,
                None,
                false,
            ),
        };
        drop(tracked);
        Ok(Facts {
            api: Api::namespaced(ctx.client.clone(), &namespace),
            object,
            name: obj.name_any(),
            namespace,
            uid,
            generation,
            triggers,
            finalizers: obj.finalizers().to_vec(),
            stored,
            status,
            behind_own_status,
            quiet,
            nudged,
            failures,
            first_sight,
            intent_annotation: Mutex::new(obj.annotations().get(INTENT_ANNOTATION).cloned()),
            notes: Mutex::default(),
            identity: credentials
                .as_ref()
                .map(|r| r.identity.clone())
                .unwrap_or_default(),
            credentials_problem: credentials.err().map(|e| Problem {
                reason: e.reason(),
                message: e.to_string(),
                // The namespace may just not be in the watch yet; the rest needs an admin.
                retry: match e {
                    MappingError::UnknownNamespace(_) | MappingError::NotRead => Retry::Backoff,
                    _ => Retry::Terminal,
                },
            }),
            resumed,
            deleting,
        })
    }

    fn resource<'a>(&'a self, obj: &'a EnvironmentAccountConnection) -> decide::Resource<'a> {
        decide::Resource {
            uid: &self.uid,
            namespace: &self.namespace,
            name: &self.name,
            generation: self.generation,
            spec: &obj.spec,
            status: &self.status,
            deleting: self.deleting,
            has_finalizer: self.finalizers.iter().any(|f| f == FINALIZER),
            adopt_id: self.triggers.adopt_id.as_deref(),
            paused: self.triggers.paused,
            quiet: self.quiet,
            failures: self.failures,
            first_sight: self.first_sight,
            credentials_problem: self.credentials_problem.as_ref(),
            default_region: self
                .triggers
                .credentials
                .as_ref()
                .ok()
                .and_then(|r| r.default_region.as_deref()),
        }
    }
}

async fn reconcile_inner(
    obj: &EnvironmentAccountConnection,
    ctx: &Context,
) -> Result<(Action, &'static str), Error> {
    let facts = Facts::fetch(obj, ctx)?;
    if facts.behind_own_status {
        return behind_own_status(ctx, &facts);
    }
    // Events go out once the reconcile is over, so they are not on the way to the status write
    // (and are published even if that write fails).
    let result = steps(obj, ctx, &facts).await;
    let notes = std::mem::take(&mut *facts.notes.lock().unwrap_or_else(|p| p.into_inner()));
    for note in &notes {
        ctx.recorder.announce(obj, note).await;
    }
    result
}

/// Whether a reconcile whose cached copy does not show this controller's last status write
/// waits for the watch. One with nothing new since its last reconcile (most often the watch
/// bringing this controller's own finalizer patch, ahead of its status write) has nothing to do
/// until it is due; any other waits: acting on the older status could repeat a Create, or
/// release a resource whose connection the cache does not show yet.
fn waits_for_own_status(quiet: Option<Duration>, has_finalizer: bool, deleting: bool) -> bool {
    quiet.is_none() || !has_finalizer || deleting
}

/// A reconcile behind this controller's status write with nothing to do (see
/// [`waits_for_own_status`]).
fn behind_own_status(ctx: &Context, facts: &Facts) -> Result<(Action, &'static str), Error> {
    match facts.quiet {
        Some(requeue) => {
            debug!("the cache is behind this controller's status write; nothing changed since");
            Ok((come_back(ctx, facts, Instant::now() + requeue), "quiet"))
        }
        None => Err(Error::StaleCache(facts.object.clone())),
    }
}

/// fetch (done) -> the shared loop (decide -> execute -> record) -> finish.
async fn steps(
    obj: &EnvironmentAccountConnection,
    ctx: &Context,
    facts: &Facts,
) -> Result<(Action, &'static str), Error> {
    let mut run = Run::new(facts.resource(obj), &ctx.settings, rand::random());
    if let Some(progress) = facts.resumed.clone() {
        debug!(observed = ?progress.observed, "going on from the deferred reconcile's reads");
        run.resume(progress);
    }
    let mut executor = StepExecutor {
        ctx,
        obj,
        facts,
        finalizers: facts.finalizers.clone(),
        create_admitted: false,
        routine_slot: None,
    };
    let step = reconciler::drive::drive(&mut run, &mut executor).await?;
    let carry = run.carry_over();
    finish(ctx, obj, facts, &executor.finalizers, step, carry).await
}

/// Carries out the connection kind's steps, with what a reconcile holds between them.
struct StepExecutor<'a> {
    ctx: &'a Context,
    obj: &'a EnvironmentAccountConnection,
    facts: &'a Facts,
    /// The finalizers as this reconcile left them.
    finalizers: Vec<String>,
    /// A Create whose slot was taken before its intent was written.
    create_admitted: bool,
    /// The worker slot of a routine read, held to the end of the reconcile.
    routine_slot: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl reconciler::drive::Executor<Run<'_>> for StepExecutor<'_> {
    type Error = Error;

    async fn execute(
        &mut self,
        run: &Run<'_>,
        step: &Step,
    ) -> Result<Result<Outcome, ProtonError>, Error> {
        let ctx = self.ctx;
        let class = run.class_of(step);
        let ticket = Ticket {
            identity: &self.facts.identity,
            key: &self.facts.uid,
            class,
            admitted: self.create_admitted && matches!(step, Step::Create { .. }),
            calls: &StepCalls::default(),
        };
        if class != CallClass::Work && step.is_aws() && self.routine_slot.is_none() {
            match ctx.routine_slot() {
                Ok(slot) => self.routine_slot = slot,
                // Routine reads already hold their share of the workers: come back.
                Err(()) => return Ok(Err(ProtonError::deferred("routine read", None))),
            }
        }
        if let Step::Record(recorded) = step
            && recorded.before_create
        {
            // The Create's slot first: no announcement of a Create the budget has no room for.
            if let Err(deferred) = ctx
                .proton
                .admit(&ticket, "CreateEnvironmentAccountConnection")
                .await
            {
                return Ok(Err(deferred));
            }
            self.create_admitted = true;
        }
        // Boxed: a reconcile holds one step at a time, and the calls are most of its size.
        let result = Box::pin(execute(
            ctx,
            self.obj,
            self.facts,
            &mut self.finalizers,
            run.region(),
            &ticket,
            step,
        ))
        .await?;
        if matches!(result, Ok(Outcome::IntentRecorded)) {
            self.create_admitted = true;
        }
        if let (Step::Create { request, .. }, Ok(Outcome::Connection(_))) = (step, &result) {
            nudge_policies(ctx, &request.management_account_id, run.region());
        }
        match &result {
            Err(e) if e.class == crate::aws::proton::ErrorClass::Deferred => {}
            Err(e) => warn!(error = %e, class = ?e.class, "proton call failed"),
            Ok(_) if ticket.class != CallClass::Work && matches!(step, Step::Get { .. }) => {
                note_read(ctx, &self.facts.uid, ticket.class);
            }
            Ok(_) => {}
        }
        Ok(result)
    }

    fn noted(&mut self, note: Note) {
        info!(reason = note.reason, note = %note.note, "proton changed");
        self.facts.note(&note);
    }
}

/// A connection here just requested `management_account` in `region`: the policies here that
/// decide for it list now, instead of at their next poll. Requests from elsewhere keep the poll.
fn nudge_policies(ctx: &Context, management_account: &str, region: &str) {
    let nudged = ctx.policies.objects_where(Why::Happened, |p| {
        p.spec.management_account_id == management_account
            && crate::policy::decide::region_of(&p.spec, &ctx.settings) == region
    });
    if nudged > 0 {
        debug!(
            nudged,
            management_account, region, "policies here decide for the new request: asked now"
        );
    }
}

/// Executes one step that is not final. Kubernetes failures end the reconcile (`Err`); AWS
/// answers, errors included, go back to the run.
async fn execute(
    ctx: &Context,
    obj: &EnvironmentAccountConnection,
    facts: &Facts,
    finalizers: &mut Vec<String>,
    region: &str,
    ticket: &Ticket<'_>,
    step: &Step,
) -> Result<Result<Outcome, ProtonError>, Error> {
    let proton = &ctx.proton;
    let outcome = match step {
        Step::AddFinalizer { intent } => {
            // The intent to create goes with the finalizer only if the Create has its slot in
            // the call budget; else the finalizer goes alone (it waits for no budget).
            let intent = match intent {
                Some(intent) => {
                    let create = Ticket {
                        class: CallClass::Work,
                        ..*ticket
                    };
                    ctx.proton
                        .admit(&create, "CreateEnvironmentAccountConnection")
                        .await
                        .ok()
                        .map(|()| intent)
                }
                None => None,
            };
            // An API server drops an empty map, but a client may hold one: either way the key
            // can be added to it.
            let annotated = obj.metadata.annotations.is_some();
            match add_finalizer(&facts.api, &facts.name, finalizers, intent, annotated).await {
                Ok(()) => {
                    ctx.tracked().entry(&facts.uid).kind.written_over =
                        obj.metadata.resource_version.clone();
                }
                // The guard failed. If the live object already carries our finalizer, the cached
                // copy is behind an earlier reconcile's writes (its status too): acting on it
                // would repeat them, so this reconcile stops and runs again on the fresh copy.
                Err(kube::Error::Api(s)) if s.code == 422 => {
                    let live = facts.api.get(&facts.name).await.map_err(kube_error(
                        "re-reading after a refused finalizer patch",
                        &facts.object,
                    ))?;
                    let ours = live.metadata.uid.as_deref() == Some(facts.uid.as_str())
                        && live.metadata.deletion_timestamp.is_none()
                        && live.finalizers().iter().any(|f| f == FINALIZER);
                    if !ours {
                        return Err(kube_error("adding the finalizer", &facts.object)(
                            kube::Error::Api(s),
                        ));
                    }
                    return Err(Error::StaleCache(facts.object.clone()));
                }
                Err(e) => return Err(kube_error("adding the finalizer", &facts.object)(e)),
            }
            if let Some(intent) = intent {
                *facts
                    .intent_annotation
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = Some(intent.to_annotation());
            }
            finalizers.push(FINALIZER.to_string());
            Ok(if intent.is_some() {
                Outcome::IntentRecorded
            } else {
                Outcome::Done
            })
        }
        Step::ReadAdoptionPolicy => {
            let namespaces: Api<k8s_openapi::api::core::v1::Namespace> =
                Api::all(ctx.client.clone());
            let ns = namespaces.get(&facts.namespace).await.map_err(kube_error(
                "reading the namespace's adoption label",
                &facts.object,
            ))?;
            let allowed = ns
                .labels()
                .get(ADOPTION_NAMESPACE_LABEL)
                .map(String::as_str)
                == Some(ADOPTION_ALLOWED);
            Ok(Outcome::AdoptionAllowed(allowed))
        }
        Step::Record(recorded) => {
            write_status(ctx, facts, &recorded.status).await?;
            for note in &recorded.events {
                facts.note(note);
            }
            Ok(Outcome::Done)
        }
        Step::WhoAmI => proton
            .caller_account(&facts.identity)
            .await
            .map(Outcome::Account),
        // A poll of a connection recorded as PENDING: answered from the shared list if it can
        // (not after a nudge: the connection is known to have changed).
        Step::Get { id }
            if ticket.class == CallClass::Poll
                && !facts.nudged
                && facts.status.status == Some(ConnectionState::Pending)
                && facts.status.id.as_ref() == Some(id) =>
        {
            let recorded = recorded_pending(&obj.spec, &facts.status, id);
            proton
                .poll(ticket, region, &recorded)
                .await
                .map(Outcome::Connection)
        }
        Step::Get { id } => proton
            .get(ticket, region, id)
            .await
            .map(Outcome::Connection),
        Step::Lookup {
            environment_name,
            management_account_id,
        } => proton
            .lookup(ticket, region, environment_name, management_account_id)
            .await
            .map(Outcome::Listed),
        Step::FindOwned { environment_name } => proton
            .find_owned(ticket, region, environment_name, &facts.uid)
            .await
            .map(Outcome::Found),
        Step::ListTags { arn } => proton
            .list_tags(ticket, region, arn)
            .await
            .map(Outcome::Tags),
        Step::Create {
            request, region, ..
        } => proton
            .create(ticket, region, request)
            .await
            .map(Outcome::Connection),
        Step::Update { id, roles } => proton
            .update(ticket, region, id, roles)
            .await
            .map(Outcome::Connection),
        Step::Tag { arn, tags } => proton
            .tag(ticket, region, arn, tags)
            .await
            .map(|()| Outcome::Done),
        Step::Untag { arn, keys, .. } => proton
            .untag(ticket, region, arn, keys)
            .await
            .map(|()| Outcome::Done),
        Step::Delete { id } => proton
            .delete(ticket, region, id)
            .await
            .map(|()| Outcome::Done),
        Step::Settle(_)
        | Step::Report(_)
        | Step::RemoveFinalizer
        | Step::Idle { .. }
        | Step::Defer { .. }
        | Step::Nothing => unreachable_final(step),
    };
    Ok(outcome)
}

/// Final steps are handled by [`finish`]; answering one here would be a bug in the loop.
fn unreachable_final(step: &Step) -> Result<Outcome, ProtonError> {
    Err(ProtonError {
        operation: "reconcile",
        class: crate::aws::proton::ErrorClass::Other,
        code: "InternalError".into(),
        message: format!("{} is not executed as an intermediate step", step.name()),
        retry_in: None,
    })
}

/// Ends the reconcile on its final step.
async fn finish(
    ctx: &Context,
    obj: &EnvironmentAccountConnection,
    facts: &Facts,
    finalizers: &[String],
    step: Step,
    carry: Option<Progress>,
) -> Result<(Action, &'static str), Error> {
    match step {
        Step::Settle(settled) => {
            write_status(ctx, facts, &settled.status).await?;
            if settled.status.status == Some(ConnectionState::Connected)
                && facts.status.status != Some(ConnectionState::Connected)
                && let Some(requested) = settled
                    .status
                    .requested_at
                    .as_deref()
                    .and_then(|t| t.parse::<jiff::Timestamp>().ok())
            {
                let waited = jiff::Timestamp::now().duration_since(requested);
                ctx.metrics
                    .connected_after(Duration::try_from(waited).unwrap_or_default());
            }
            for note in &settled.events {
                facts.note(note);
            }
            let requeue = hand_polls_over(ctx, obj, facts, &settled.status, settled.requeue)
                .unwrap_or(settled.requeue);
            let due = Instant::now() + requeue;
            let mut tracked = ctx.tracked();
            let t = tracked.entry(&facts.uid);
            t.succeeded();
            t.hold(facts.generation, facts.triggers.hash_of(), due);
            drop(tracked);
            Ok((come_back(ctx, facts, due), "settled"))
        }
        Step::Report(reported) => {
            warn!(reason = reported.problem.reason, message = %reported.problem.message, retry_in_secs = reported.requeue.as_secs_f64(), "reconcile ended on a problem");
            ctx.polls.release(&facts.uid);
            write_status(ctx, facts, &reported.status).await?;
            if let Some(note) = &reported.event {
                facts.note(note);
            }
            let due = Instant::now() + reported.requeue;
            let mut tracked = ctx.tracked();
            let t = tracked.entry(&facts.uid);
            t.fail(facts.generation);
            t.hold(facts.generation, facts.triggers.hash_of(), due);
            drop(tracked);
            Ok((come_back(ctx, facts, due), reported.problem.reason))
        }
        Step::RemoveFinalizer => {
            remove_finalizer(&facts.api, &facts.name, finalizers)
                .await
                .map_err(kube_error("removing the finalizer", &facts.object))?;
            ctx.forget(&facts.uid);
            info!("finalizer removed; the resource is released");
            Ok((Action::await_change(), "released"))
        }
        Step::Idle { requeue } => {
            debug!(
                wait_secs = requeue.as_secs(),
                "nothing changed since the last reconcile"
            );
            let due = checkpoint(ctx, facts, requeue);
            Ok((come_back(ctx, facts, due), "quiet"))
        }
        Step::Defer {
            class,
            requeue,
            status,
        } => {
            let status_id = match &status {
                Some(status) => {
                    write_status(ctx, facts, status).await?;
                    status.id.clone()
                }
                None => facts.status.id.clone(),
            };
            ctx.metrics.budget_deferred(class, requeue);
            ctx.polls.release(&facts.uid);
            debug!(
                class = class.as_str(),
                wait_secs = requeue.as_secs_f64(),
                kept = carry.is_some(),
                "no room in the AWS call budget now; coming back"
            );
            let due = checkpoint(ctx, facts, requeue);
            if facts.nudged
                && let Some(t) = ctx.tracked().get_mut(&facts.uid)
            {
                t.keep_nudged();
            }
            if let Some(progress) = carry {
                let mut tracked = ctx.tracked();
                tracked.entry(&facts.uid).kind.resume = Some(Box::new(Resume {
                    generation: facts.generation,
                    triggers: facts.triggers.clone(),
                    deleting: facts.deleting,
                    status_id,
                    until: Instant::now() + requeue + RESUME_GRACE,
                    progress,
                }));
            }
            Ok((come_back(ctx, facts, due), "deferred"))
        }
        _ => {
            ctx.forget(&facts.uid);
            Ok((Action::await_change(), "ignored"))
        }
    }
}

/// A PENDING connection as the status records it, for a list to be compared with.
fn recorded_pending(
    spec: &crate::connection::api::EnvironmentAccountConnectionSpec,
    status: &Status,
    id: &str,
) -> crate::aws::proton::Connection {
    crate::aws::proton::Connection {
        id: id.to_string(),
        arn: status.arn.clone().unwrap_or_default(),
        state: ConnectionState::Pending,
        environment_name: spec.environment_name.clone(),
        management_account_id: spec.management_account_id.clone(),
        environment_account_id: status.environment_account_id.clone().unwrap_or_default(),
        roles: crate::aws::proton::RoleArns {
            role_arn: status.role_arn.clone(),
            codebuild_role_arn: status.codebuild_role_arn.clone(),
            component_role_arn: status.component_role_arn.clone(),
        },
        requested_at: status.requested_at.clone().unwrap_or_default(),
        last_modified_at: status.last_modified_at.clone().unwrap_or_default(),
    }
}

/// Leaves the resource's next polls to the poller while its connection is PENDING and polled
/// fast (see [`crate::connection::polls`]); returns when its reconcile comes back, or None
/// when the reconcile makes its next poll itself.
fn hand_polls_over(
    ctx: &Context,
    obj: &EnvironmentAccountConnection,
    facts: &Facts,
    status: &Status,
    requeue: Duration,
) -> Option<Duration> {
    // The same jitter for a resource each time, from its uid.
    let jitter = {
        let mut h = DefaultHasher::new();
        facts.uid.hash(&mut h);
        (h.finish() % 1_000) as f64 / 1_000.0
    };
    let backstop = decide::listed_polls_until(status, requeue, &ctx.settings, jitter);
    let (Some(backstop), Some(id), Some(region)) = (backstop, &status.id, &status.region) else {
        ctx.polls.release(&facts.uid);
        return None;
    };
    let now = Instant::now();
    let waiting = Waiting {
        name: obj.name_any().into(),
        namespace: facts.namespace.as_str().into(),
        identity: facts.identity.clone(),
        region: region.as_str().into(),
        id: CompactId::of(id),
        listed_as: crate::aws::proton::listed_as(&recorded_pending(&obj.spec, status, id)),
        requested_at: status.requested_at.as_deref().and_then(|t| t.parse().ok()),
        jitter,
        polled: now,
        due: now + requeue,
        until: now + backstop,
    };
    ctx.polls.take(&facts.uid, waiting).then_some(backstop)
}

/// Measures the interval between two routine reads of the same connection.
fn note_read(ctx: &Context, uid: &str, class: CallClass) {
    let now = Instant::now();
    let previous = {
        let mut tracked = ctx.tracked();
        let t = tracked.entry(uid);
        t.kind.last_read.replace((class, now))
    };
    if let Some((previous_class, at)) = previous
        && previous_class == class
    {
        ctx.metrics.read_interval(class, now - at);
    }
}

/// The reconcile comes back at `due` (its checkpoint's), whatever else queues it meanwhile (see
/// [`Timetable`]).
fn come_back(ctx: &Context, facts: &Facts, due: Instant) -> Action {
    ctx.timetable
        .set(&facts.uid, &facts.name, &facts.namespace, due);
    Action::await_change()
}

/// Notes when the resource is next due, so a trigger before then changes nothing; returns when.
fn checkpoint(ctx: &Context, facts: &Facts, requeue: Duration) -> Instant {
    let due = Instant::now() + requeue;
    let mut tracked = ctx.tracked();
    let t = tracked.entry(&facts.uid);
    t.hold(facts.generation, facts.triggers.hash_of(), due);
    due
}

/// Server-side apply of the status subresource, only when it differs from what is recorded.
/// What was written is remembered until the watch cache shows it; what could not be written is
/// remembered so the connection it names is not lost track of.
async fn write_status(ctx: &Context, facts: &Facts, status: &Status) -> Result<(), Error> {
    let unchanged = {
        let tracked = ctx.tracked();
        match tracked
            .get(&facts.uid)
            .and_then(|t| t.kind.memory.written.as_ref())
        {
            Some(written) => written.is(status),
            None => facts.stored.as_ref().unwrap_or(&Status::default()) == status,
        }
    };
    if unchanged {
        return Ok(());
    }
    let result = reconciler::status::apply_status(&facts.api, &facts.name, status).await;
    {
        let mut tracked = ctx.tracked();
        let memory = &mut tracked.entry(&facts.uid).kind.memory;
        match &result {
            Ok(version) => {
                memory.written = Some(Written::new(status, version.clone()));
                memory.unwritten = None;
            }
            Err(_) => memory.unwritten = Some(Box::new(status.clone())),
        }
    }
    match result {
        Ok(_) => {
            if status.id.is_none() && status.create_sent_at.is_none() {
                drop_stale_intent(facts).await;
            }
            Ok(())
        }
        Err(source) => Err(Error::Kube {
            step: "writing the status",
            object: facts.object.clone(),
            source,
        }),
    }
}

/// The status now says no Create is in flight and no connection exists (a Create was refused
/// outright): the intent annotation written with the finalizer is obsolete, and is removed so
/// it does not make a deletion search for a connection that cannot exist. Guarded by its value;
/// a failure only costs that search.
async fn drop_stale_intent(facts: &Facts) {
    let current = facts
        .intent_annotation
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take();
    let current = match current {
        Some(value) => Some(value),
        // Not in the cache (see `intent_is_history`): as the API server has it, if at all.
        None if intent_is_history(facts.stored.as_ref()) => {
            match facts.api.get_opt(&facts.name).await {
                Ok(found) => found.and_then(|o| o.annotations().get(INTENT_ANNOTATION).cloned()),
                Err(e) => {
                    debug!(error = %e, "could not read the intent annotation to remove it");
                    None
                }
            }
        }
        None => None,
    };
    let Some(value) = current else {
        return;
    };
    let path = format!(
        "/metadata/annotations/{}",
        INTENT_ANNOTATION.replace('~', "~0").replace('/', "~1")
    );
    let ops = json!([
        {"op": "test", "path": path, "value": value},
        {"op": "remove", "path": path},
    ]);
    let Ok(patch) = serde_json::from_value::<json_patch::Patch>(ops) else {
        return;
    };
    if let Err(e) = facts
        .api
        .patch(
            &facts.name,
            &PatchParams::default(),
            &Patch::<()>::Json(patch),
        )
        .await
    {
        debug!(error = %e, "could not remove the obsolete intent annotation");
    }
}

/// Names the step and the object in a Kubernetes error.
fn kube_error(step: &'static str, object: &str) -> impl FnOnce(kube::Error) -> Error {
    let object = object.to_string();
    move |source| Error::Kube {
        step,
        object,
        source,
    }
}

/// Adds the finalizer with a guarded JSON patch: it fails (422, and is retried) if the list
/// changed under us, instead of overwriting someone else's finalizer. The intent to create, if
/// any, goes in the same patch.
async fn add_finalizer(
    api: &Api<EnvironmentAccountConnection>,
    name: &str,
    current: &[String],
    intent: Option<&Intent>,
    annotated: bool,
) -> Result<(), kube::Error> {
    let mut ops = if current.is_empty() {
        vec![
            json!({"op": "test", "path": "/metadata/finalizers", "value": null}),
            json!({"op": "add", "path": "/metadata/finalizers", "value": [FINALIZER]}),
        ]
    } else {
        vec![
            json!({"op": "test", "path": "/metadata/finalizers", "value": current}),
            json!({"op": "add", "path": "/metadata/finalizers/-", "value": FINALIZER}),
        ]
    };
    if let Some(intent) = intent {
        let value = intent.to_annotation();
        if annotated {
            let key = INTENT_ANNOTATION.replace('~', "~0").replace('/', "~1");
            ops.push(json!({"op": "add", "path": format!("/metadata/annotations/{key}"), "value": value}));
        } else {
            // No annotations yet: create the map, guarded so nobody else's are overwritten.
            ops.push(json!({"op": "test", "path": "/metadata/annotations", "value": null}));
            ops.push(json!({"op": "add", "path": "/metadata/annotations", "value": {INTENT_ANNOTATION: value}}));
        }
    }
    let ops = serde_json::Value::Array(ops);
    let patch: json_patch::Patch = serde_json::from_value(ops).map_err(kube::Error::SerdeError)?;
    api.patch(name, &PatchParams::default(), &Patch::<()>::Json(patch))
        .await
        .map(|_| ())
}

async fn remove_finalizer(
    api: &Api<EnvironmentAccountConnection>,
    name: &str,
    current: &[String],
) -> Result<(), kube::Error> {
    let Some(index) = current.iter().position(|f| f == FINALIZER) else {
        return Ok(());
    };
    let path = format!("/metadata/finalizers/{index}");
    let ops = json!([
        {"op": "test", "path": path, "value": FINALIZER},
        {"op": "remove", "path": path},
    ]);
    let patch: json_patch::Patch = serde_json::from_value(ops).map_err(kube::Error::SerdeError)?;
    match api
        .patch(name, &PatchParams::default(), &Patch::<()>::Json(patch))
        .await
    {
        Ok(_) => Ok(()),
        // The object is already gone: nothing holds it any more.
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e),
    }
}

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

/// What makes a change worth a reconcile: the spec (generation; deletion bumps it too), the
/// finalizers (a stripped one is put back at once) and the adopt annotation. The controller's
/// own status writes change none of these, so they wake nothing.
pub fn trigger_hash(obj: &EnvironmentAccountConnection) -> Option<u64> {
    let mut h = DefaultHasher::new();
    obj.metadata.generation.hash(&mut h);
    obj.metadata.deletion_timestamp.is_some().hash(&mut h);
    obj.finalizers().hash(&mut h);
    obj.annotations().get(ADOPT_ANNOTATION).hash(&mut h);
    obj.annotations().get(PAUSED_ANNOTATION).hash(&mut h);
    Some(h.finish())
}

/// Drops from a watched object what the controller never reads (see
/// [`reconciler::watch::slim_metadata`]; the annotations kept are the controller's own), the
/// intent to create once the status records a connection (see [`intent_is_history`]), and the
/// spare room deserializing left in the status's lists (two conditions held room for four).
pub fn slim(obj: &mut EnvironmentAccountConnection) {
    reconciler::watch::slim_metadata(
        &mut obj.metadata,
        &[ADOPT_ANNOTATION, INTENT_ANNOTATION, PAUSED_ANNOTATION],
    );
    if intent_is_history(obj.status.as_ref())
        && let Some(annotations) = obj.metadata.annotations.as_mut()
        && annotations.remove(INTENT_ANNOTATION).is_some()
    {
        reconciler::watch::release_if_empty(annotations);
    }
    if let Some(status) = obj.status.as_mut() {
        status.conditions.shrink_to_fit();
        status.applied_tag_keys.shrink_to_fit();
    }
}

/// Whether the intent-to-create annotation is history for a resource with this status, so the
/// watch cache does not keep it (its one key costs a map node of about half a KiB per resource).
///
/// It is once the status records a connection: the Create it announced was answered and its
/// connection is on record, so no connection of it can be lost. A later status without one is
/// written by the controller itself and carries its own pins: a re-creation records its own time
/// of sending before its Create (later than the annotation's, which changes nothing), and a
/// connection seen missing keeps none in flight. While such a status is not yet in the cache the
/// reconcile starts from it without the annotation; the cache's next copy has no connection and
/// keeps the annotation again. Removing the obsolete annotation reads it from the API server.
pub fn intent_is_history(status: Option<&Status>) -> bool {
    status.is_some_and(|s| s.id.is_some())
}

/// Keeps per-resource state and readiness in step with the watch: forgets resources that leave
/// it (deleted, force-deleted, relabelled out of the selector, gone while this pod was standby),
/// and marks the watch healthy or failing.
fn follow_watch(
    ctx: &Context,
    store: &Store<EnvironmentAccountConnection>,
    readiness: &Readiness,
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
        Ok(watcher::Event::InitDone) => {
            let cached = store.state();
            let live: HashSet<String> = cached.iter().filter_map(|o| o.uid()).collect();
            ctx.retain_only(&live);
            // Only now does the cache hold what the relist found (kube-runtime's store swaps
            // it in whole), so only now may a reconcile go on from it. A relist may skip the
            // version a write made: waiting for that version could then last forever.
            let mut wake = Vec::new();
            let mut tracked = ctx.tracked();
            for obj in &cached {
                let Some(t) = obj.uid().and_then(|uid| tracked.get_mut(&uid)) else {
                    continue;
                };
                t.kind.memory.catch_up(
                    obj.status.as_ref(),
                    obj.metadata.resource_version.as_deref(),
                );
                t.kind.memory.written = None;
                if std::mem::take(&mut t.kind.awaits_watch) {
                    wake.push(ObjectRef::from_obj(obj.as_ref()));
                }
            }
            drop(tracked);
            for object in wake {
                ctx.nudge.requeue(object);
            }
            readiness.synced();
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
        Ok(_) => {
            readiness.succeeded();
        }
        Err(_) => readiness.failed(),
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
    // listed instead, a list from the watch cache (`any_semantic`) ignores the page size, so none
    // is asked for.
    let mut config = watcher::Config::default().any_semantic();
    if let Some(selector) = &scope.label_selector {
        config = config.labels(selector);
    }
    ctx.forget_all();
    let shutdown = shutdown.shared();
    if scope.account_mappings {
        ctx.set_accounts(Accounts::waiting());
    }
    let (accounts, moved, followers) = if scope.account_mappings {
        match crate::mapping::controller::follow(
            &ctx.client,
            scope.unmapped_namespaces,
            shutdown.clone(),
        )
        .await
        {
            Some(followed) => followed,
            // Stopped before the mappings were known: nothing was reconciled.
            None => return,
        }
    } else {
        (
            Accounts::disabled(),
            futures::channel::mpsc::unbounded().1,
            Vec::new(),
        )
    };
    let mut started = Started {
        ctx: ctx.clone(),
        tasks: followers,
        account_mappings: scope.account_mappings,
    };
    ctx.set_accounts(accounts);
    let routine = ((f64::from(concurrency) * ctx.poll_share).floor() as usize).max(1);
    *ctx.routine_workers
        .lock()
        .unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(tokio::sync::Semaphore::new(routine)));
    readiness.leading();
    let (follow_ctx, follow_ready) = (ctx.clone(), readiness.clone());
    let (store, triggers) = reconciler::watch::triggers(
        api,
        config,
        slim,
        move |store, event| follow_watch(&follow_ctx, store, &follow_ready, event),
        trigger_hash,
        " (is the CRD environmentaccountconnections.proton.eac.dev installed and may the controller list and watch it?)",
    );
    ctx.metrics.count_connections_from(Some(store.clone()));
    ctx.use_cache(Some(store.clone()));
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
    let returning = ctx.clone();
    let retried = after_outage::retried(
        readiness.returns(),
        store.clone(),
        move || returning.tracked.due_after_return(),
        "EnvironmentAccountConnection",
    );
    let cache = store.clone();
    let moving = ctx.clone();
    let moved = futures::StreamExt::flat_map(moved, move |namespaces| {
        nudge_policies_in(&moving, &namespaces);
        futures::stream::iter(resources_in(&cache, &namespaces))
    });
    let results = Controller::for_stream(triggers, store)
        .with_config(kube::runtime::controller::Config::default().concurrency(concurrency))
        // The controller backs its trigger stream off too: the same short backoff.
        .trigger_backoff(reconciler::watch::WatchBackoff::default())
        // A mapping or a namespace's labels changed: the resources whose credentials changed.
        .reconcile_on(moved)
        // A connection the management side here just accepted or rejected: read it now.
        .reconcile_on(nudged)
        // The API server answers again: what its outage stopped, now.
        .reconcile_on(retried)
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
    use super::*;
    use std::collections::BTreeMap;

    fn eac(uid: &str) -> EnvironmentAccountConnection {
        let mut o = EnvironmentAccountConnection::new(uid, Default::default());
        o.metadata.namespace = Some("ns".into());
        o.metadata.uid = Some(uid.into());
        o.metadata.generation = Some(1);
        o
    }

    #[test]
    fn the_watch_cache_keeps_only_what_the_controller_reads() {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry;
        let mut o = eac("a");
        o.metadata.managed_fields = Some(vec![ManagedFieldsEntry::default(); 3]);
        o.metadata.labels = Some(BTreeMap::from([("shard".into(), "a".into())]));
        o.metadata.annotations = Some(BTreeMap::from([
            (
                "kubectl.kubernetes.io/last-applied-configuration".into(),
                "{\"a whole manifest\": true}".into(),
            ),
            (ADOPT_ANNOTATION.into(), "id-1".into()),
            (INTENT_ANNOTATION.into(), "{}".into()),
        ]));
        o.metadata.finalizers = Some(vec![FINALIZER.into()]);
        let spec = o.spec.clone();
        slim(&mut o);
        assert_eq!(o.metadata.managed_fields, None);
        assert_eq!(o.metadata.labels, None);
        let annotations = o.annotations();
        assert_eq!(
            annotations.keys().collect::<Vec<_>>(),
            [ADOPT_ANNOTATION, INTENT_ANNOTATION]
        );
        assert_eq!(annotations[ADOPT_ANNOTATION], "id-1");
        assert_eq!(annotations[INTENT_ANNOTATION], "{}");
        assert_eq!(o.metadata.finalizers, Some(vec![FINALIZER.to_string()]));
        assert_eq!(o.spec, spec);
        assert_eq!(o.metadata.uid.as_deref(), Some("a"));
    }

    #[test]
    fn a_cached_object_with_only_others_annotations_still_has_annotations() {
        let mut o = eac("a");
        o.metadata.annotations = Some(BTreeMap::from([(
            "kubectl.kubernetes.io/last-applied-configuration".into(),
            "{\"a whole manifest\": true}".into(),
        )]));
        slim(&mut o);
        // The intent annotation is then added to the map, not the map created (which a guard
        // against overwriting others' annotations would refuse).
        assert_eq!(o.metadata.annotations, Some(BTreeMap::new()));
        let mut bare = eac("b");
        slim(&mut bare);
        assert_eq!(bare.metadata.annotations, None);
    }

    #[test]
    fn the_cache_keeps_the_intent_to_create_only_until_the_status_records_a_connection() {
        let intent =
            r#"{"region":"us-east-1","account":"444455556666","sentAt":"2026-12-05T00:00:00Z"}"#;
        let annotated = |status: Option<Status>| {
            let mut o = eac("a");
            o.metadata.annotations = Some(BTreeMap::from([
                (INTENT_ANNOTATION.into(), intent.to_string()),
                (PAUSED_ANNOTATION.into(), "true".into()),
            ]));
            o.status = status;
            slim(&mut o);
            o.metadata.annotations.unwrap_or_default()
        };
        let sent = Status {
            create_sent_at: Some("2026-12-05T00:00:00Z".into()),
            ..Default::default()
        };
        for unanswered in [None, Some(Status::default()), Some(sent)] {
            assert_eq!(
                annotated(unanswered.clone())
                    .get(INTENT_ANNOTATION)
                    .map(String::as_str),
                Some(intent),
                "{unanswered:?}"
            );
        }
        let recorded = Some(Status {
            id: Some("conn-1".into()),
            ..Default::default()
        });
        let kept = annotated(recorded.clone());
        assert_eq!(kept.get(INTENT_ANNOTATION), None);
        assert_eq!(
            kept.get(PAUSED_ANNOTATION).map(String::as_str),
            Some("true")
        );
        // Only the intent: the map stays, empty (the finalizer patch adds to it).
        let mut o = eac("b");
        o.metadata.annotations = Some(BTreeMap::from([(INTENT_ANNOTATION.into(), intent.into())]));
        o.status = recorded;
        slim(&mut o);
        assert_eq!(o.metadata.annotations, Some(BTreeMap::new()));
    }

    #[test]
    fn a_cached_object_keeps_no_spare_room_in_its_lists() {
        let mut o = eac("a");
        let mut conditions = Vec::with_capacity(8);
        conditions.push(k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
            type_: "Ready".into(),
            status: "True".into(),
            reason: "Connected".into(),
            message: String::new(),
            last_transition_time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                jiff::Timestamp::UNIX_EPOCH,
            ),
            observed_generation: Some(1),
        });
        o.status = Some(Status {
            conditions,
            ..Default::default()
        });
        let mut finalizers = Vec::with_capacity(4);
        finalizers.push(FINALIZER.to_string());
        o.metadata.finalizers = Some(finalizers);
        slim(&mut o);
        let status = o
            .status
            .as_ref()
            .map(|s| (s.conditions.len(), s.conditions.capacity()));
        assert_eq!(status, Some((1, 1)));
        assert_eq!(o.metadata.finalizers.map(|f| f.capacity()), Some(1));
    }

    #[test]
    fn only_spec_deletion_finalizers_and_the_adopt_annotation_trigger_a_reconcile() {
        let base = eac("a");
        let same = |f: &dyn Fn(&mut EnvironmentAccountConnection)| {
            let mut o = base.clone();
            f(&mut o);
            trigger_hash(&o) == trigger_hash(&base)
        };
        assert!(
            same(&|o| o.status = Some(Status::default())),
            "own status write"
        );
        assert!(same(&|o| o.metadata.resource_version = Some("9".into())));
        assert!(same(&|o| {
            o.metadata.annotations = Some(BTreeMap::from([("note".into(), "x".into())]))
        }));
        assert!(!same(&|o| o.metadata.generation = Some(2)), "spec change");
        assert!(!same(
            &|o| o.metadata.finalizers = Some(vec![FINALIZER.into()])
        ));
        assert!(!same(&|o| {
            o.metadata.deletion_timestamp = Some(
                k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::UNIX_EPOCH),
            )
        }));
        assert!(!same(&|o| {
            o.metadata.annotations = Some(BTreeMap::from([(ADOPT_ANNOTATION.into(), "id".into())]))
        }));
    }

    fn context() -> Context {
        let metrics = Metrics::new();
        Context::new(
            crate::offline::client(),
            crate::offline::proton(&metrics),
            crate::offline::settings(),
            metrics,
            reporter(),
        )
    }

    #[tokio::test]
    async fn what_leaves_the_watch_is_forgotten_and_watch_failures_make_the_pod_unready() {
        let ctx = context();
        let later = Instant::now() + Duration::from_secs(600);
        for uid in ["a", "b", "c"] {
            ctx.tracked().entry(uid);
            ctx.timetable.set(uid, uid, "ns", later);
        }
        let (store, mut writer) = kube::runtime::reflector::store::<EnvironmentAccountConnection>();
        let readiness = Readiness::new(Duration::ZERO);
        readiness.leading();

        // Deleted while watched.
        follow_watch(
            &ctx,
            &store,
            &readiness,
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
        for event in [
            watcher::Event::Init,
            watcher::Event::InitApply(eac("c")),
            watcher::Event::InitDone,
        ] {
            writer.apply_watcher_event(&event);
            follow_watch(&ctx, &store, &readiness, &Ok(event));
        }
        assert_eq!(ctx.tracked_resources(), 1);
        assert!(ctx.tracked().contains_key("c"));
        assert_eq!(ctx.timetable.len(), 1);
        assert!(ctx.comes_back_in("c").is_some());
        assert!(readiness.get(), "synced");

        let failure = watcher::Error::NoResourceVersion;
        follow_watch(&ctx, &store, &readiness, &Err(failure));
        assert!(!readiness.get(), "a failing watch is reported");
    }

    /// kube-runtime moves each reconcile it runs into its map of running reconciles and out
    /// again: what it moves must stay small, and what a reconcile holds inline (its largest
    /// step's state) too. Unboxed, these were 41 KiB and 20 KiB.
    #[tokio::test]
    async fn a_reconcile_future_is_small_and_its_calls_are_boxed() {
        let ctx = Arc::new(context());
        let obj = Arc::new(eac("u"));
        let queued = reconcile(obj.clone(), ctx.clone());
        assert!(
            std::mem::size_of_val(&queued) <= 1024,
            "what kube-runtime moves: {} bytes",
            std::mem::size_of_val(&queued)
        );
        let inner = reconcile_inner(&obj, &ctx);
        assert!(
            std::mem::size_of_val(&inner) <= 12 * 1024,
            "one reconcile's state: {} bytes",
            std::mem::size_of_val(&inner)
        );
    }
}
