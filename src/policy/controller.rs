//! The Kubernetes side of the management account: runs a [`super::decide::Run`] per policy against the
//! Proton port, writes the status (server-side apply, only when it changed) and Events, and wires
//! it all into a kube-runtime controller whose watch cache also feeds the "matched by no policy"
//! rule with every policy of the cluster.

use std::collections::{HashMap, HashSet};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::Reporter;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use serde_json::json;
use tokio::time::Instant;
use tracing::{Instrument, debug, info, info_span, warn};

use super::api::{ConnectionAcceptancePolicy, ConnectionAcceptancePolicyStatus as Status};
use super::decide::{Memory, Outcome, Peer, Policy, Run, Step};
use crate::aws::proton::{Proton, ProtonError, Retry, Ticket};
use crate::connection::api::PAUSED_ANNOTATION;
use crate::connection::decide::{Note, Settings, retry_after};
use crate::mapping::{Accounts, MappingError};
use crate::metrics::Metrics;
use crate::recorder::Recorder;

pub use crate::recorder::{FIELD_MANAGER, reporter};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{step} of policy {object} failed: {source}")]
    Kube {
        step: &'static str,
        object: String,
        #[source]
        source: kube::Error,
    },
    #[error("policy {0} has no {1}")]
    MissingMetadata(String, &'static str),
    /// Its namespace has no credentials (see [`crate::mapping`]): nothing is asked of AWS.
    #[error("policy {object}: {source}")]
    Credentials {
        object: String,
        #[source]
        source: MappingError,
    },
}

impl Error {
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube { .. } => "kube_error",
            Error::MissingMetadata(..) => "invalid_object",
            Error::Credentials { .. } => "no_credentials",
        }
    }
}

/// What the controller keeps about one policy between reconciles. Dropped when the policy leaves
/// the watch cache, and when this controller stops leading.
#[derive(Clone, Debug, Default)]
struct Tracked {
    memory: Memory,
    /// The last status written, until the watch cache shows it.
    written: Option<Box<Status>>,
    /// The status a failed write wanted (decisions made in AWS must not be forgotten).
    unwritten: Option<Box<Status>>,
    /// Generation and pause of the last reconcile, and when the policy is due again.
    checkpoint: Option<(i64, bool, Instant)>,
    failures: u32,
    failed_generation: i64,
    last_kube_error: Option<String>,
}

impl Tracked {
    fn fail(&mut self, generation: i64) -> u32 {
        if self.failed_generation != generation {
            self.failures = 0;
            self.failed_generation = generation;
        }
        self.failures = self.failures.saturating_add(1);
        self.failures
    }

    /// Forgets the written status once the cache shows it.
    fn catch_up(&mut self, stored: Option<&Status>) {
        if stored.is_some() && self.written.as_deref() == stored {
            self.written = None;
        }
    }
}

/// Everything a reconcile of a policy needs; shared by all workers.
pub struct Context {
    pub client: Client,
    pub proton: Proton,
    pub settings: Settings,
    pub metrics: Metrics,
    recorder: Recorder,
    tracked: Mutex<HashMap<String, Tracked>>,
    /// Every policy in the watch cache, while the controller runs (the rule for requests that
    /// match no policy looks at all of them).
    policies: Mutex<Option<Store<ConnectionAcceptancePolicy>>>,
    /// Which credentials each namespace acts with, as the connection side follows them.
    accounts: Arc<Mutex<Accounts>>,
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
            tracked: Mutex::default(),
            policies: Mutex::default(),
            accounts: Arc::new(Mutex::new(Accounts::disabled())),
        }
    }

    /// Policies act with the credentials their namespace is mapped to, as connections do.
    pub fn with_accounts(mut self, accounts: Arc<Mutex<Accounts>>) -> Self {
        self.accounts = accounts;
        self
    }

    fn tracked(&self) -> std::sync::MutexGuard<'_, HashMap<String, Tracked>> {
        self.tracked.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Decides from the policies in this store (the controller's watch cache; tests set their
    /// own). Without one, a policy sees only itself.
    pub fn use_store(&self, store: Option<Store<ConnectionAcceptancePolicy>>) {
        *self.policies.lock().unwrap_or_else(|p| p.into_inner()) = store;
    }

    fn all_policies(&self) -> Vec<Arc<ConnectionAcceptancePolicy>> {
        self.policies
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(Store::state)
            .unwrap_or_default()
    }

    /// Makes every policy due now (tests, and a forced resync).
    pub fn expire_checkpoints(&self) {
        let now = Instant::now();
        for t in self.tracked().values_mut() {
            if let Some((_, _, due)) = &mut t.checkpoint {
                *due = now;
            }
        }
    }

    /// How many policies the controller keeps state for.
    pub fn tracked_policies(&self) -> usize {
        self.tracked().len()
    }

    fn forget(&self, uid: &str) {
        self.tracked().remove(uid);
        self.proton.forget(&budget_key(uid));
    }

    fn retain_only(&self, live: &HashSet<String>) {
        self.tracked().retain(|uid, _| live.contains(uid));
    }

    fn forget_all(&self) {
        self.tracked().clear();
    }
}

fn budget_key(uid: &str) -> String {
    crate::aws::budget::policy_key(uid)
}

/// Whether the `proton.eac.dev/paused` annotation says `"true"`.
fn paused(obj: &ConnectionAcceptancePolicy) -> bool {
    obj.annotations()
        .get(PAUSED_ANNOTATION)
        .is_some_and(|v| v.trim() == "true")
}

/// One reconcile of one policy.
pub async fn reconcile(
    obj: Arc<ConnectionAcceptancePolicy>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    let started = std::time::Instant::now();
    let span = info_span!(
        "reconcile_policy",
        namespace = obj.namespace().unwrap_or_default(),
        policy = obj.name_any(),
        uid = obj.uid().unwrap_or_default(),
        generation = obj.metadata.generation.unwrap_or_default()
    );
    let result = reconcile_inner(&obj, &ctx).instrument(span).await;
    let label = match &result {
        Ok((_, outcome)) => *outcome,
        Err(e) => e.metric_label(),
    };
    ctx.metrics.acceptance_reconciled(label, started.elapsed());
    result.map(|(action, _)| action)
}

/// After a failed reconcile (a Kubernetes error: AWS errors end in a reported status): backs off
/// per policy, and reports a new error in an Event.
pub fn error_policy(
    obj: Arc<ConnectionAcceptancePolicy>,
    error: &Error,
    ctx: Arc<Context>,
) -> Action {
    let uid = obj.uid().unwrap_or_default();
    let generation = obj.metadata.generation.unwrap_or_default();
    let message = error.to_string();
    let (failures, news, wait) = {
        let mut tracked = ctx.tracked();
        let t = tracked.entry(uid).or_default();
        let failures = t.fail(generation);
        let wait = retry_after(Retry::Backoff, failures, &ctx.settings, rand::random());
        t.checkpoint = Some((generation, paused(&obj), Instant::now() + wait));
        let news = t.last_kube_error.as_deref() != Some(message.as_str());
        t.last_kube_error = Some(message.clone());
        (failures, news, wait)
    };
    warn!(error = %error, failures, retry_in_secs = wait.as_secs_f64(), "policy reconcile failed");
    if news {
        let note = Note::warning("KubernetesError", message);
        let ctx = ctx.clone();
        tokio::spawn(async move { publish(&ctx, &obj, &note).await });
    }
    Action::requeue(wait)
}

/// What a reconcile starts from.
struct Facts {
    api: Api<ConnectionAcceptancePolicy>,
    object: String,
    namespace: String,
    name: String,
    uid: String,
    generation: i64,
    paused: bool,
    /// What to reconcile from: a failed write's status (its decisions were made in AWS), else
    /// the last write if the cache has not shown it yet, else the stored status.
    recorded: Status,
    /// What the API server holds (as far as this controller knows): the last write, else the
    /// stored status. A status equal to it is not written again.
    durable: Status,
    quiet: Option<Duration>,
    failures: u32,
    memory: Memory,
}

impl Facts {
    fn fetch(obj: &ConnectionAcceptancePolicy, ctx: &Context) -> Result<Facts, Error> {
        let object = format!("{}/{}", obj.namespace().unwrap_or_default(), obj.name_any());
        let namespace = obj
            .namespace()
            .ok_or_else(|| Error::MissingMetadata(object.clone(), "namespace"))?;
        let uid = obj
            .uid()
            .ok_or_else(|| Error::MissingMetadata(object.clone(), "uid"))?;
        let generation = obj.metadata.generation.unwrap_or_default();
        let paused = paused(obj);
        let stored = obj.status.as_ref();
        let mut tracked = ctx.tracked();
        let (recorded, durable, quiet, failures, memory) = match tracked.get_mut(&uid) {
            Some(t) => {
                t.catch_up(stored);
                let durable = t.written.as_deref().or(stored).cloned().unwrap_or_default();
                let recorded = t.unwritten.as_deref().cloned().unwrap_or(durable.clone());
                let now = Instant::now();
                let quiet = match &t.checkpoint {
                    Some((g, p, due)) if *g == generation && *p == paused && *due > now => {
                        Some(*due - now)
                    }
                    _ => None,
                };
                let failures = if t.failed_generation == generation {
                    t.failures
                } else {
                    0
                };
                (recorded, durable, quiet, failures, t.memory.clone())
            }
            None => (
                stored.cloned().unwrap_or_default(),
                stored.cloned().unwrap_or_default(),
                None,
                0,
                Memory::default(),
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
            paused,
            recorded,
            durable,
            quiet,
            failures,
            memory,
        })
    }
}

async fn reconcile_inner(
    obj: &ConnectionAcceptancePolicy,
    ctx: &Context,
) -> Result<(Action, &'static str), Error> {
    let facts = Facts::fetch(obj, ctx)?;
    let accounts = ctx
        .accounts
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let identity = accounts
        .resolve(&facts.namespace)
        .map_err(|source| Error::Credentials {
            object: facts.object.clone(),
            source,
        })?
        .identity;
    let all = ctx.all_policies();
    let peers: Vec<Peer> = all
        .iter()
        .filter(|p| {
            p.namespace().as_deref() != Some(facts.namespace.as_str()) || p.name_any() != facts.name
        })
        .map(|p| Peer {
            namespace: p.metadata.namespace.as_deref().unwrap_or_default(),
            name: p.metadata.name.as_deref().unwrap_or_default(),
            spec: &p.spec,
            paused: paused(p),
        })
        .collect();
    let policy = Policy {
        uid: &facts.uid,
        namespace: &facts.namespace,
        name: &facts.name,
        generation: facts.generation,
        spec: &obj.spec,
        status: &facts.recorded,
        paused: facts.paused,
        quiet: facts.quiet,
        failures: facts.failures,
    };
    let mut run = Run::new(policy, &peers, &ctx.settings, &facts.memory, rand::random());
    let key = budget_key(&facts.uid);
    let step = loop {
        let step = run.next(jiff::Timestamp::now());
        debug!(step = step.name(), ?step, "next step");
        if step.is_final() {
            break step;
        }
        let ticket = Ticket {
            identity: &identity,
            key: &key,
            class: run.class_of(&step),
            admitted: false,
        };
        let result = execute(ctx, run.region(), &ticket, &step).await;
        if let Err(e) = &result
            && e.class != crate::aws::proton::ErrorClass::Deferred
        {
            warn!(error = %e, class = ?e.class, "proton call failed");
        }
        run.record(&step, result);
    };
    let tally = run.tally();
    ctx.metrics
        .acceptance_decisions(tally.accepted, tally.rejected, tally.left_pending);
    let memory = run.memory().clone();
    finish(ctx, &facts, step, memory).await
}

/// Executes one AWS step; every answer, errors included, goes back to the run.
async fn execute(
    ctx: &Context,
    region: &str,
    ticket: &Ticket<'_>,
    step: &Step,
) -> Result<Outcome, ProtonError> {
    let proton = &ctx.proton;
    match step {
        Step::WhoAmI => proton
            .caller_account(ticket.identity)
            .await
            .map(Outcome::Account),
        Step::List { region } => proton
            .list_requests(ticket, region)
            .await
            .map(Outcome::Requests),
        Step::Accept { id } => proton
            .accept(ticket, region, id)
            .await
            .map(|c| Outcome::Connection(Box::new(c))),
        Step::Get { id } => proton
            .get(ticket, region, id)
            .await
            .map(|c| Outcome::Connection(Box::new(c))),
        Step::Reject { id } => proton
            .reject(ticket, region, id)
            .await
            .map(|c| Outcome::Connection(Box::new(c))),
        Step::Settle(_) | Step::Report(_) | Step::Defer { .. } | Step::Idle { .. } => {
            Err(ProtonError {
                operation: "reconcile",
                class: crate::aws::proton::ErrorClass::Other,
                code: "InternalError".into(),
                message: format!("{} is not executed as an intermediate step", step.name()),
                retry_in: None,
            })
        }
    }
}

/// Ends the reconcile on its final step: the status (if it changed), then the Events.
async fn finish(
    ctx: &Context,
    facts: &Facts,
    step: Step,
    memory: Memory,
) -> Result<(Action, &'static str), Error> {
    let (status, events, requeue, label, failed) = match step {
        Step::Settle(settled) => (
            Some(settled.status),
            settled.events,
            settled.requeue,
            "settled",
            false,
        ),
        Step::Report(reported) => {
            warn!(reason = reported.problem.reason, message = %reported.problem.message, retry_in_secs = reported.requeue.as_secs_f64(), "policy reconcile ended on a problem");
            (
                Some(reported.status),
                reported.events,
                reported.requeue,
                reported.problem.reason,
                true,
            )
        }
        Step::Defer {
            class,
            requeue,
            status,
            events,
        } => {
            ctx.metrics.budget_deferred(class, requeue);
            (status.map(|s| *s), events, requeue, "deferred", false)
        }
        Step::Idle { requeue } => (None, Vec::new(), requeue, "quiet", false),
        Step::WhoAmI
        | Step::List { .. }
        | Step::Accept { .. }
        | Step::Get { .. }
        | Step::Reject { .. } => (None, Vec::new(), Duration::from_secs(1), "ignored", false),
    };
    {
        let mut tracked = ctx.tracked();
        let t = tracked.entry(facts.uid.clone()).or_default();
        t.memory = memory;
        if failed {
            t.fail(facts.generation);
        } else if label == "settled" {
            t.failures = 0;
            t.last_kube_error = None;
        }
        t.checkpoint = Some((facts.generation, facts.paused, Instant::now() + requeue));
    }
    let written = match &status {
        Some(status) => write_status(ctx, facts, status).await,
        None => Ok(()),
    };
    // Events go out whether or not the status could be written: the decisions were made.
    for note in &events {
        if note.warning {
            warn!(reason = note.reason, note = %note.note, "policy event");
        } else {
            info!(reason = note.reason, note = %note.note, "policy event");
        }
        publish_ref(ctx, facts, note).await;
    }
    written?;
    Ok((Action::requeue(requeue), label))
}

/// Server-side apply of the status subresource, only when it differs from what is recorded.
async fn write_status(ctx: &Context, facts: &Facts, status: &Status) -> Result<(), Error> {
    if facts.durable == *status {
        let mut tracked = ctx.tracked();
        if let Some(t) = tracked.get_mut(&facts.uid) {
            t.unwritten = None;
        }
        return Ok(());
    }
    let patch = json!({
        "apiVersion": "proton.eac.dev/v1alpha1",
        "kind": "ConnectionAcceptancePolicy",
        "status": status,
    });
    let result = facts
        .api
        .patch_status(
            &facts.name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(patch),
        )
        .await;
    let mut tracked = ctx.tracked();
    let t = tracked.entry(facts.uid.clone()).or_default();
    match result {
        Ok(_) => {
            t.written = Some(Box::new(status.clone()));
            t.unwritten = None;
            Ok(())
        }
        Err(source) => {
            t.unwritten = Some(Box::new(status.clone()));
            Err(Error::Kube {
                step: "writing the status",
                object: facts.object.clone(),
                source,
            })
        }
    }
}

async fn publish(ctx: &Context, obj: &ConnectionAcceptancePolicy, note: &Note) {
    if let Err(e) = ctx.recorder.publish(obj, note).await {
        warn!(error = %e, reason = note.reason, "could not publish event");
    }
}

/// Publishes about the policy the facts describe (the Event names it by kind, namespace, name
/// and uid).
async fn publish_ref(ctx: &Context, facts: &Facts, note: &Note) {
    let mut obj = ConnectionAcceptancePolicy::new(&facts.name, Default::default());
    obj.metadata.namespace = Some(facts.namespace.clone());
    obj.metadata.uid = Some(facts.uid.clone());
    publish(ctx, &obj, note).await;
}

/// What makes a change worth a reconcile: the spec (generation) and the pause annotation. The
/// controller's own status writes change neither.
pub fn trigger_hash(obj: &ConnectionAcceptancePolicy) -> Option<u64> {
    let mut h = DefaultHasher::new();
    obj.metadata.generation.hash(&mut h);
    paused(obj).hash(&mut h);
    Some(h.finish())
}

/// Drops from a watched policy what the controller never reads.
pub fn slim(obj: &mut ConnectionAcceptancePolicy) {
    obj.metadata.managed_fields = None;
    obj.metadata.labels = None;
    if let Some(annotations) = obj.metadata.annotations.as_mut() {
        annotations.retain(|key, _| key == PAUSED_ANNOTATION);
    }
}

fn follow_watch(
    ctx: &Context,
    store: &Store<ConnectionAcceptancePolicy>,
    event: &Result<watcher::Event<ConnectionAcceptancePolicy>, watcher::Error>,
) {
    match event {
        Ok(watcher::Event::Delete(obj)) => {
            if let Some(uid) = obj.uid() {
                ctx.forget(&uid);
            }
        }
        Ok(watcher::Event::InitDone) => {
            let live: HashSet<String> = store.state().iter().filter_map(|o| o.uid()).collect();
            ctx.retain_only(&live);
        }
        Ok(watcher::Event::Apply(obj) | watcher::Event::InitApply(obj)) => {
            if let Some(uid) = obj.uid()
                && let Some(t) = ctx.tracked().get_mut(&uid)
            {
                t.catch_up(obj.status.as_ref());
            }
        }
        Ok(watcher::Event::Init) => {}
        Err(e) => warn!(
            error = %e,
            "watching ConnectionAcceptancePolicies failed; retrying with backoff (is the CRD connectionacceptancepolicies.proton.eac.dev installed and may the controller list and watch it? --acceptance-policies=false turns the management side off)"
        ),
    }
}

/// Runs the management side until `shutdown` resolves (or the future is dropped, when
/// leadership is lost). `namespace`: watch only this one (else all).
pub async fn run(
    ctx: Arc<Context>,
    namespace: Option<String>,
    concurrency: u16,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let api: Api<ConnectionAcceptancePolicy> = match &namespace {
        Some(ns) => Api::namespaced(ctx.client.clone(), ns),
        None => Api::all(ctx.client.clone()),
    };
    ctx.forget_all();
    let (store, writer) = reflector::store();
    ctx.use_store(Some(store.clone()));
    let (follow_ctx, follow_store) = (ctx.clone(), store.clone());
    let triggers = watcher(api, watcher::Config::default().any_semantic())
        .default_backoff()
        .modify(slim)
        .reflect(writer)
        .inspect(move |event| follow_watch(&follow_ctx, &follow_store, event))
        .applied_objects()
        .predicate_filter(trigger_hash, Default::default());
    info!("management side started: watching ConnectionAcceptancePolicies");
    Controller::for_stream(triggers, store)
        .with_config(kube::runtime::controller::Config::default().concurrency(concurrency))
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx.clone())
        .for_each(|result| async move {
            match result {
                Ok((object, _)) => debug!(object = %object, "policy reconciled"),
                Err(e) => debug!(error = %e, "policy controller event"),
            }
        })
        .await;
    ctx.use_store(None);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_spec_and_the_pause_trigger_a_reconcile() {
        let base = ConnectionAcceptancePolicy::new("p", Default::default());
        let same = |f: &dyn Fn(&mut ConnectionAcceptancePolicy)| {
            let mut o = base.clone();
            f(&mut o);
            trigger_hash(&o) == trigger_hash(&base)
        };
        assert!(same(&|o| o.status = Some(Status::default())));
        assert!(same(&|o| o.metadata.resource_version = Some("7".into())));
        assert!(!same(&|o| o.metadata.generation = Some(2)));
        assert!(!same(&|o| {
            o.metadata.annotations = Some(
                [(PAUSED_ANNOTATION.to_string(), "true".to_string())]
                    .into_iter()
                    .collect(),
            )
        }));
    }

    #[test]
    fn the_watch_cache_keeps_only_the_pause_annotation() {
        let mut o = ConnectionAcceptancePolicy::new("p", Default::default());
        o.metadata.labels = Some([("a".to_string(), "b".to_string())].into_iter().collect());
        o.metadata.annotations = Some(
            [
                (PAUSED_ANNOTATION.to_string(), "true".to_string()),
                (
                    "kubectl.kubernetes.io/last-applied-configuration".to_string(),
                    "{}".to_string(),
                ),
            ]
            .into_iter()
            .collect(),
        );
        slim(&mut o);
        assert_eq!(o.metadata.labels, None);
        assert_eq!(o.annotations().len(), 1);
        assert!(paused(&o));
    }
}
