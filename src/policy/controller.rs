//! The Kubernetes side of the management account: runs a [`super::decide::Run`] per policy against the
//! Proton port, writes the status (server-side apply, only when it changed) and Events, and wires
//! it all into a kube-runtime controller whose watch cache also feeds the "matched by no policy"
//! rule with every policy of the cluster.

use std::collections::{BTreeSet, HashSet};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
use kube::api::Api;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::Reporter;
use kube::runtime::reflector::Store;
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use tokio::time::Instant;
use tracing::{debug, info, info_span, warn};

use super::api::{ConnectionAcceptancePolicy, ConnectionAcceptancePolicyStatus as Status};
use super::decide::{Acts, Memory, Outcome, Peer, Policy, Run, Step, in_group, region_of};
use crate::aws::proton::{Proton, ProtonError, StepCalls, Ticket};
use crate::compact_id::CompactId;
use crate::connection::api::EnvironmentAccountConnection;
use crate::connection::api::{PAUSED_ANNOTATION, is_paused};
use crate::connection::decide::Settings;
use crate::http::Readiness;
use crate::mapping::{Accounts, AwsIdentity, MappingError, SharedAccounts};
use crate::metrics::Metrics;
use crate::reconciler::note::Note;
use crate::reconciler::nudge::{Nudge, Why};
use crate::reconciler::{
    self, after_outage,
    tracked::{Guard, Tracker},
};
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
    #[error("policy {0}")]
    MissingMetadata(#[from] crate::reconciler::MissingMetadata),
}

impl Error {
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube { .. } => "kube_error",
            Error::MissingMetadata(..) => "invalid_object",
        }
    }
}

/// What the policy kind keeps about one policy between reconciles, beside what every kind keeps
/// ([`crate::reconciler::tracked`]; its triggers are the pause annotation).
#[derive(Clone, Debug, Default)]
struct Kept {
    memory: Memory,
    /// The last status written, until the watch cache shows it.
    written: Option<Box<Status>>,
    /// The status a failed write wanted (decisions made in AWS must not be forgotten).
    unwritten: Option<Box<Status>>,
}

impl Kept {
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
    tracked: Tracker<bool, Kept>,
    /// Every policy in the watch cache, while the controller runs (the rule for requests that
    /// match no policy looks at all of them).
    policies: Mutex<Option<Store<ConnectionAcceptancePolicy>>>,
    /// Which credentials each namespace acts with, as the connection side follows them.
    accounts: SharedAccounts,
    /// This controller, for the connection side to nudge (a request it just made).
    nudge: Nudge<ConnectionAcceptancePolicy>,
    /// The connection side, to nudge when a connection it holds was just decided.
    connections: Nudge<EnvironmentAccountConnection>,
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
            policies: Mutex::default(),
            accounts: SharedAccounts::default(),
            nudge: Nudge::default(),
            connections: Nudge::default(),
        }
    }

    /// The handles both sides of one process nudge each other through: the connection side's,
    /// and this controller's own.
    pub fn with_nudges(
        mut self,
        connections: Nudge<EnvironmentAccountConnection>,
        policies: Nudge<ConnectionAcceptancePolicy>,
    ) -> Self {
        self.connections = connections;
        self.nudge = policies;
        self
    }

    /// Policies act with the credentials their namespace is mapped to, as connections do.
    pub fn with_accounts(mut self, accounts: SharedAccounts) -> Self {
        self.accounts = accounts;
        self
    }

    fn tracked(&self) -> Guard<'_, bool, Kept> {
        self.tracked.lock()
    }

    /// Decides from the policies in this store (the controller's watch cache; tests set their
    /// own). Without one, a policy sees only itself.
    pub fn use_store(&self, store: Option<Store<ConnectionAcceptancePolicy>>) {
        *self.policies.lock().unwrap_or_else(|p| p.into_inner()) = store;
    }

    fn all_policies(&self) -> Vec<Arc<ConnectionAcceptancePolicy>> {
        self.cached_policies().unwrap_or_default()
    }

    /// Every policy of the watch cache; `None` without a cache (a reconcile run on its own).
    fn cached_policies(&self) -> Option<Vec<Arc<ConnectionAcceptancePolicy>>> {
        self.policies
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(Store::state)
    }

    /// Makes every policy due now (tests, and a forced resync).
    pub fn expire_checkpoints(&self) {
        self.tracked.expire_checkpoints();
    }

    /// How many policies the controller keeps state for.
    pub fn tracked_policies(&self) -> usize {
        self.tracked().len()
    }

    fn forget(&self, uid: &str) {
        self.tracked.remove(uid);
        self.proton.forget(&budget_key(uid));
    }

    fn retain_only(&self, live: &HashSet<String>) {
        self.tracked
            .retain_only(&live.iter().map(|uid| CompactId::of(uid)).collect());
    }

    fn forget_all(&self) {
        self.tracked.clear();
    }
}

fn budget_key(uid: &str) -> String {
    crate::aws::budget::policy_key(uid)
}

/// One reconcile of one policy.
pub async fn reconcile(
    obj: Arc<ConnectionAcceptancePolicy>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    let span = info_span!(
        "reconcile_policy",
        namespace = obj.namespace().unwrap_or_default(),
        policy = obj.name_any(),
        uid = obj.uid().unwrap_or_default(),
        generation = obj.metadata.generation.unwrap_or_default()
    );
    reconciler::measured(
        span,
        Box::pin(reconcile_inner(&obj, &ctx)),
        Error::metric_label,
        |label, took| ctx.metrics.acceptance_reconciled(label, took),
    )
    .await
}

/// After a failed reconcile (a Kubernetes error: AWS errors end in a reported status): backs off
/// per policy, and reports a new error in an Event.
pub fn error_policy(
    obj: Arc<ConnectionAcceptancePolicy>,
    error: &Error,
    ctx: Arc<Context>,
) -> Action {
    let kube = match error {
        Error::Kube { source, .. } => Some(source),
        _ => None,
    };
    // A reconcile begins by keeping its policy: one not kept went while it ran (its status
    // write refused because it is gone), and is not made up again to back off.
    if let Some(uid) = obj.uid()
        && !ctx.tracked().contains_key(&uid)
    {
        debug!(error = %error, "the policy went while it was reconciled");
        return Action::await_change();
    }
    let paused = is_paused(obj.annotations());
    reconciler::failure::backed_off(
        obj,
        &ctx.tracked,
        &ctx.recorder,
        paused,
        error,
        kube,
        ctx.settings.resync,
    )
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
        let reconciler::Named {
            object,
            namespace,
            uid,
            generation,
        } = reconciler::Named::of(obj)?;
        let paused = is_paused(obj.annotations());
        let stored = obj.status.as_ref();
        let mut tracked = ctx.tracked();
        tracked.began(&uid);
        let (recorded, durable, quiet, failures, memory) = match tracked.get_mut(&uid) {
            Some(t) => {
                t.kind.catch_up(stored);
                let durable = t
                    .kind
                    .written
                    .as_deref()
                    .or(stored)
                    .cloned()
                    .unwrap_or_default();
                let recorded = t
                    .kind
                    .unwritten
                    .as_deref()
                    .cloned()
                    .unwrap_or(durable.clone());
                let now = Instant::now();
                let quiet = t.quiet(generation, &paused, now);
                let failures = t.failures(generation);
                (recorded, durable, quiet, failures, t.kind.memory.clone())
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
    let accounts = ctx.accounts.get();
    // Without credentials the run reports why (conditions, one Event) and calls nothing.
    let (identity, credentials) = match accounts.resolve(&facts.namespace) {
        Ok(resolved) => (resolved.identity, None),
        Err(e) => (AwsIdentity::default(), Some(e.problem())),
    };
    let all = ctx.all_policies();
    // Whether a policy acting with the controller's own credentials is for this account needs
    // that account: asked (once, then cached) when one of them names it, even if no resource
    // or policy of the controller's own has asked yet. Else such a policy, a paused one in an
    // unmapped namespace say, would count in the group for good.
    if ctx.proton.known_account(&AwsIdentity::Own).is_none()
        && all.iter().any(|p| {
            p.spec.management_account_id == obj.spec.management_account_id
                && p.metadata.uid != obj.metadata.uid
                && accounts
                    .resolve(p.metadata.namespace.as_deref().unwrap_or_default())
                    .is_ok_and(|r| r.identity == AwsIdentity::Own)
        })
        && let Err(e) = ctx.proton.caller_account(&AwsIdentity::Own).await
    {
        debug!(error = %e, "could not learn the controller's own account; its policies count as unknown");
    }
    let peers = peers_of(ctx, &accounts, &all, obj);
    let group = group_key(&peers, obj, &all, &ctx.settings);
    let peers: Vec<Peer> = peers.into_iter().map(|(_, peer)| peer).collect();
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
        credentials: credentials.as_ref(),
    };
    let mut run = Run::new(policy, &peers, &ctx.settings, &facts.memory, rand::random());
    let key = budget_key(&facts.uid);
    let mut executor = StepExecutor {
        ctx,
        identity: &identity,
        key: &key,
        check_and_reject: StepCalls::default(),
        this: obj,
        group,
    };
    let step = match reconciler::drive::drive(&mut run, &mut executor).await {
        Ok(step) => step,
        Err(never) => match never {},
    };
    let tally = run.tally();
    ctx.metrics
        .acceptance_decisions(tally.accepted, tally.rejected, tally.left_pending);
    let memory = run.memory().clone();
    finish(ctx, &facts, step, memory).await
}

/// Whether the controller could act for a policy of `namespace` that names
/// `management_account_id` (see [`Acts`]).
fn acts(ctx: &Context, accounts: &Accounts, namespace: &str, management_account_id: &str) -> Acts {
    match accounts.resolve(namespace) {
        Ok(resolved) => match ctx.proton.known_account(&resolved.identity) {
            Some(account) if account == management_account_id => Acts::Yes,
            Some(_) => Acts::No,
            None => Acts::Unknown,
        },
        // Not read or not in the watch yet, or mappings that overlap or cannot be read while an
        // admin changes them (tenants cannot write mappings or namespaces): it may well have
        // credentials in a moment, and a rejection cannot be undone.
        Err(
            MappingError::UnknownNamespace(_)
            | MappingError::NotRead
            | MappingError::Ambiguous { .. }
            | MappingError::InvalidSelector { .. },
        ) => Acts::Unknown,
        Err(MappingError::Unmapped(_)) => Acts::No,
    }
}

/// Every other policy of the cache, with what the decision sees of it.
fn peers_of<'p>(
    ctx: &Context,
    accounts: &Accounts,
    all: &'p [Arc<ConnectionAcceptancePolicy>],
    this: &ConnectionAcceptancePolicy,
) -> Vec<(&'p ConnectionAcceptancePolicy, Peer<'p>)> {
    all.iter()
        .filter(|p| p.metadata.uid != this.metadata.uid)
        .map(|p| {
            let namespace = p.metadata.namespace.as_deref().unwrap_or_default();
            let peer = Peer {
                namespace,
                name: p.metadata.name.as_deref().unwrap_or_default(),
                spec: &p.spec,
                paused: is_paused(p.annotations()),
                // Only a policy for the same account can be in this one's group.
                acts: if p.spec.management_account_id == this.spec.management_account_id {
                    acts(ctx, accounts, namespace, &p.spec.management_account_id)
                } else {
                    Acts::No
                },
            };
            (p.as_ref(), peer)
        })
        .collect()
}

/// What a Reject must not outlast: this policy (uid, generation, pause) and the policies of its
/// group among `peers` (the decision's own filter, [`in_group`], so a policy that is no part of
/// it, say a tenant's naming another team's account, cannot hold up its Rejects by changing).
/// A Reject is sent only while this is what the reconcile began with. (Whether a member's
/// credentials are known yet does not count: known or not, it shields the same.)
fn group_key(
    peers: &[(&ConnectionAcceptancePolicy, Peer)],
    this: &ConnectionAcceptancePolicy,
    all: &[Arc<ConnectionAcceptancePolicy>],
    settings: &Settings,
) -> BTreeSet<(String, i64, bool)> {
    let region = region_of(&this.spec, settings);
    let entry = |p: &ConnectionAcceptancePolicy| {
        (
            p.metadata.uid.clone().unwrap_or_default(),
            p.metadata.generation.unwrap_or_default(),
            is_paused(p.annotations()),
        )
    };
    peers
        .iter()
        .filter(|(_, peer)| in_group(peer.spec, peer.acts, &this.spec, &region, settings))
        .map(|(p, _)| entry(p))
        .chain(
            all.iter()
                .filter(|p| p.metadata.uid == this.metadata.uid)
                .map(|p| entry(p)),
        )
        .collect()
}

/// [`group_key`] from the cache as it is (`all`).
fn group_of(
    ctx: &Context,
    accounts: &Accounts,
    all: &[Arc<ConnectionAcceptancePolicy>],
    this: &ConnectionAcceptancePolicy,
) -> BTreeSet<(String, i64, bool)> {
    group_key(
        &peers_of(ctx, accounts, all, this),
        this,
        all,
        &ctx.settings,
    )
}

/// Whether the cache (`all`) still holds `this` policy as a reconcile began with it: the same
/// uid, generation and pause.
fn as_it_was(this: &ConnectionAcceptancePolicy, all: &[Arc<ConnectionAcceptancePolicy>]) -> bool {
    all.iter().any(|p| {
        p.metadata.uid == this.metadata.uid
            && p.metadata.generation == this.metadata.generation
            && is_paused(p.annotations()) == is_paused(this.annotations())
    })
}

/// Carries out a policy's steps: one AWS call each; every answer goes back to the run.
struct StepExecutor<'a> {
    ctx: &'a Context,
    identity: &'a crate::mapping::AwsIdentity,
    key: &'a str,
    /// The calls of a Reject and of the re-read just before it, counted as one step's: the
    /// re-read is made again whenever the Reject comes back, so a Reject told to come back books
    /// a slot for the re-read too (see [`crate::aws::budget`]); else, with the budget at its
    /// edge, every slot went to the re-read and the Reject never went.
    check_and_reject: StepCalls,
    /// The policy, and its group as the reconcile began (see [`group_key`]).
    this: &'a ConnectionAcceptancePolicy,
    group: BTreeSet<(String, i64, bool)>,
}

impl reconciler::drive::Executor<Run<'_>> for StepExecutor<'_> {
    type Error = std::convert::Infallible;

    async fn execute(
        &mut self,
        run: &Run<'_>,
        step: &Step,
    ) -> Result<Result<Outcome, ProtonError>, Self::Error> {
        let ctx = self.ctx;
        // An Accept cannot be undone either: it is made only while this policy is as the plan
        // was made from it (not edited, paused or deleted meanwhile).
        if matches!(step, Step::Accept { .. })
            && let Some(all) = ctx.cached_policies()
            && !as_it_was(self.this, &all)
        {
            info!("the policy changed during the reconcile: no Accept, deciding again");
            return Ok(Ok(Outcome::PoliciesChanged));
        }
        // The peers the decision was made from may be minutes old by now (up to 50 decisions):
        // a policy added or changed since may match this request.
        if matches!(step, Step::Reject { .. }) && {
            group_of(ctx, &ctx.accounts.get(), &ctx.all_policies(), self.this) != self.group
        } {
            info!(
                "the policies of the group changed during the reconcile: no Reject, deciding again"
            );
            return Ok(Ok(Outcome::PoliciesChanged));
        }
        let single = StepCalls::default();
        let calls = match step {
            Step::Get { .. } => {
                self.check_and_reject = StepCalls::default();
                &self.check_and_reject
            }
            Step::Reject { .. } => &self.check_and_reject,
            _ => &single,
        };
        let ticket = Ticket {
            identity: self.identity,
            key: self.key,
            class: run.class_of(step),
            admitted: false,
            trial: None,
            calls,
        };
        let result = execute(ctx, run.region(), &ticket, step).await;
        if let (Step::Accept { id } | Step::Reject { id }, Ok(Outcome::Connection(_))) =
            (step, &result)
        {
            // A resource here holding the connection sees the answer now, not at its next poll.
            ctx.connections.found(id);
        }
        if let Err(e) = &result
            && e.class != crate::aws::proton::ErrorClass::Deferred
        {
            warn!(error = %e, class = ?e.class, "proton call failed");
        }
        Ok(result)
    }
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
        // Final steps are handled by `finish`.
        Step::Settle(_) | Step::Report(_) | Step::Defer { .. } | Step::Idle { .. } => {
            Err(ProtonError::final_step(step.name()))
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
    let (status, events, mut requeue, label, failed) = match step {
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
        // Forgotten while it ran (deleted, or missing from a relist): nothing is made up again
        // (the watch brings it back if it still exists), nor is a booking its run made kept.
        if let Some(t) = tracked.get_mut(&facts.uid) {
            let nudged = t.nudged_since_began();
            let kept = &mut t.kind.memory;
            *kept = after_run(kept, memory, nudged);
            let wanted = Instant::now() + requeue;
            if failed {
                let held =
                    tracked.failed(&facts.uid, facts.generation, facts.paused, label, wanted);
                if held.passed_by {
                    info!("AWS answered again while this reconcile ran: trying again now");
                    requeue = Duration::ZERO;
                }
            } else {
                tracked
                    .entry(&facts.uid)
                    .hold(facts.generation, facts.paused, wanted);
            }
        } else {
            drop(tracked);
            ctx.proton.forget(&budget_key(&facts.uid));
        }
    }
    let written = match &status {
        Some(status) => write_status(ctx, facts, status).await,
        None => Ok(()),
    };
    if let Err(Error::Kube {
        source: kube::Error::Api(refused),
        ..
    }) = &written
        && (refused.code == 404 || refused.code == 422 && replaced(facts).await)
    {
        // Deleted while it was reconciled (and perhaps applied again under its name: the write,
        // guarded by the uid, is refused then): nothing to write to or announce on. What it
        // decided is logged.
        ctx.forget(&facts.uid);
        for note in &events {
            info!(reason = note.reason, note = %note.note, "decided by a policy deleted while it was reconciled");
        }
        return Ok((Action::await_change(), "gone"));
    }
    // Settled only once its status is written: a write that keeps failing (RBAC without the
    // status subresource, an outage) backs off further each time, as a connection's does, and
    // does not List again every second or two.
    if written.is_ok()
        && label == "settled"
        && let Some(t) = ctx.tracked().get_mut(&facts.uid)
    {
        // Not made up again if the policy went (and was forgotten) while the write was made.
        t.succeeded();
    }
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

/// Whether the policy's name is another object's now, or nobody's: a status write refused with
/// 422 is then the uid's guard (see [`reconciler::status::write_status`]), not an invalid status.
async fn replaced(facts: &Facts) -> bool {
    match facts.api.get_opt(&facts.name).await {
        Ok(found) => found.and_then(|p| p.metadata.uid).as_deref() != Some(facts.uid.as_str()),
        Err(_) => false,
    }
}

/// The status subresource written (see [`reconciler::status::write_status`]), only when it
/// differs from what is recorded.
async fn write_status(ctx: &Context, facts: &Facts, status: &Status) -> Result<(), Error> {
    if facts.durable == *status {
        let mut tracked = ctx.tracked();
        if let Some(t) = tracked.get_mut(&facts.uid) {
            t.kind.unwritten = None;
        }
        return Ok(());
    }
    let result =
        reconciler::status::write_status(&facts.api, &facts.name, &facts.uid, status).await;
    let mut tracked = ctx.tracked();
    // None: the policy went while the status was written.
    let t = tracked.get_mut(&facts.uid);
    match result {
        Ok(_) => {
            if let Some(t) = t {
                t.kind.written = Some(Box::new(status.clone()));
                t.kind.unwritten = None;
            }
            Ok(())
        }
        Err(source) => {
            if let Some(t) = t {
                t.kind.unwritten = Some(Box::new(status.clone()));
            }
            Err(Error::Kube {
                step: "writing the status",
                object: facts.object.clone(),
                source,
            })
        }
    }
}

/// Publishes about the policy the facts describe (the Event names it by kind, namespace, name
/// and uid).
async fn publish_ref(ctx: &Context, facts: &Facts, note: &Note) {
    let mut obj = ConnectionAcceptancePolicy::new(&facts.name, Default::default());
    obj.metadata.namespace = Some(facts.namespace.clone());
    obj.metadata.uid = Some(facts.uid.clone());
    ctx.recorder.announce(&obj, note).await;
}

/// What makes a change worth a reconcile: the spec (generation) and the pause annotation. The
/// controller's own status writes change neither.
pub fn trigger_hash(obj: &ConnectionAcceptancePolicy) -> Option<u64> {
    let mut h = DefaultHasher::new();
    obj.metadata.generation.hash(&mut h);
    is_paused(obj.annotations()).hash(&mut h);
    Some(h.finish())
}

/// Drops from a watched policy what the controller never reads.
pub fn slim(obj: &mut ConnectionAcceptancePolicy) {
    reconciler::watch::slim_metadata(&mut obj.metadata, &[PAUSED_ANNOTATION]);
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
                t.kind.catch_up(obj.status.as_ref());
            }
        }
        Ok(watcher::Event::Init) | Err(_) => {}
    }
}

/// Runs the management side until `shutdown` resolves (or the future is dropped, when
/// leadership is lost). `namespace`: watch only this one (else all).
pub async fn run(
    ctx: Arc<Context>,
    namespace: Option<String>,
    concurrency: u16,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
    readiness: Readiness,
) {
    let api: Api<ConnectionAcceptancePolicy> = match &namespace {
        Some(ns) => Api::namespaced(ctx.client.clone(), ns),
        None => Api::all(ctx.client.clone()),
    };
    ctx.forget_all();
    let follow_ctx = ctx.clone();
    let (store, triggers) = reconciler::watch::triggers(
        reconciler::watch::Watched {
            api,
            config: watcher::Config::default().any_semantic(),
            returns: readiness.api_answers().returns(),
        },
        slim,
        move |store, event| follow_watch(&follow_ctx, store, event),
        trigger_hash,
        reconciler::watch::Relisted::Whole,
        " (is the CRD connectionacceptancepolicies.proton.eac.dev installed and may the controller list and watch it? --acceptance-policies=false turns the management side off)",
    );
    ctx.use_store(Some(store.clone()));
    let attached = Attached(ctx.clone());
    info!("management side started: watching ConnectionAcceptancePolicies");
    let expiring = ctx.clone();
    let nudged = ctx.nudge.attach(
        store.clone(),
        Arc::new(move |uid: &str, why| nudged(&expiring, uid, why)),
        None,
    );
    let returning = ctx.clone();
    let retried = after_outage::retried(
        after_outage::Returns::of(&readiness, &ctx.proton),
        store.clone(),
        move |away, look| returning.tracked.due_after(away, look),
    );
    // Nothing is reconciled before the connection side has read the account mappings: each
    // policy would report AccountMappingsNotRead (a status write and a Warning at every start
    // and every term of leadership). The policies' watch lists meanwhile.
    let shutdown = shutdown.shared();
    let mut triggers = Box::pin(triggers);
    let known = async {
        tokio::select! {
            () = ctx.accounts.known() => true,
            () = shutdown.clone() => false,
        }
    };
    let Some((true, listed_meanwhile)) =
        reconciler::watch::passed_while(&mut triggers, known).await
    else {
        return;
    };
    let results = Controller::for_stream(triggers, store)
        .with_config(kube::runtime::controller::Config::default().concurrency(concurrency))
        // What the watch passed while the mappings were read.
        .reconcile_on(futures::stream::iter(listed_meanwhile))
        // A connection here just requested an account this policy decides for: list now.
        .reconcile_on(nudged)
        // The API server or Proton answers again: what its outage stopped, now.
        .reconcile_on(retried)
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx.clone());
    reconciler::watch::drain(results, "ConnectionAcceptancePolicy").await;
    drop(attached);
}

/// What is kept of a policy once a reconcile ends: the run's memory, but for what a nudge
/// while it ran changed (see [`nudged`]), which the run's copy, taken before, would undo: a
/// restart of the quick polls, and no List kept for the next reconcile.
fn after_run(kept: &Memory, run: Memory, nudged: bool) -> Memory {
    let applied = match (kept.applied, run.applied) {
        (Some((kept_generation, nudged_at)), Some((generation, since)))
            if kept_generation == generation && nudged_at > since =>
        {
            Some((generation, nudged_at))
        }
        (_, applied) => applied,
    };
    let listed = run.listed.filter(|l| !(nudged && l.cut));
    Memory {
        applied,
        listed,
        ..run
    }
}

/// Makes policy `uid` due now, for `why`. A request was just made: list now, and often for a
/// while (List is eventually consistent, and may not show it yet), as after a spec change. Other
/// credentials show their account's requests at once: list now, then at the usual interval.
fn nudged(ctx: &Context, uid: &str, why: Why) {
    if let Some(t) = ctx.tracked().get_mut(uid) {
        // A List kept from before cannot show the new request, nor what other credentials see:
        // one kept for the next round of decisions is dropped (see `Listed::cut`).
        if t.kind.memory.listed.as_ref().is_some_and(|l| l.cut) {
            t.kind.memory.listed = None;
        }
        if why == Why::Happened
            && let Some((generation, _)) = t.kind.memory.applied
        {
            t.kind.memory.applied = Some((generation, jiff::Timestamp::now()));
        }
    }
    ctx.tracked.expire(uid);
}

/// Undoes what [`run`] attached however it ends: when it returns, and when its future is
/// dropped (a lost lease stops reconciling at once, see `runner`), so a standby neither keeps
/// the watch cache nor takes nudges.
struct Attached(Arc<Context>);

impl Drop for Attached {
    fn drop(&mut self) {
        self.0.nudge.detach();
        self.0.use_store(None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mapping::UnmappedNamespaces;
    use crate::offline;
    use crate::policy::api::ConnectionAcceptancePolicySpec;

    #[test]
    fn a_nudge_during_a_reconcile_keeps_the_quick_polls_it_restarted_and_drops_a_list_kept_for_the_next_round()
     {
        let at = |s: i64| jiff::Timestamp::from_second(1_795_255_200 + s).unwrap_or_default();
        let listed = |cut| crate::policy::decide::Listed {
            generation: 1,
            until: at(60),
            taken: at(0),
            requests: Vec::new(),
            cut,
        };
        let run = Memory {
            applied: Some((1, at(0))),
            backlog: true,
            listed: Some(listed(true)),
            ..Memory::default()
        };
        // Nudged while the run went on: the later start stands, the run's List kept for its
        // next round is not (it may not show what the nudge was for), the rest is the run's.
        let nudged = Memory {
            applied: Some((1, at(500))),
            ..Memory::default()
        };
        let kept = after_run(&nudged, run.clone(), true);
        assert_eq!(kept.applied, Some((1, at(500))));
        assert_eq!(kept.listed, None);
        assert!(kept.backlog);
        // A List kept across a deferral stays: the booked slot goes to the deferred decision.
        let deferred = Memory {
            listed: Some(listed(false)),
            ..run.clone()
        };
        let kept = after_run(&nudged, deferred, true);
        assert_eq!(kept.listed, Some(listed(false)));
        // Not nudged, or another generation: the run's.
        assert_eq!(after_run(&run, run.clone(), false), run);
        let other = Memory {
            applied: Some((2, at(900))),
            ..Memory::default()
        };
        assert_eq!(
            after_run(&other, run.clone(), false).applied,
            Some((1, at(0)))
        );
    }

    fn context() -> Context {
        let metrics = Metrics::new();
        Context::new(
            offline::client(),
            offline::proton(&metrics),
            offline::settings(),
            metrics,
            reporter(),
        )
    }

    #[tokio::test]
    async fn a_request_made_here_restarts_the_fast_polls_and_a_credentials_move_does_not_and_a_cut_list_is_dropped()
     {
        let ctx = context();
        let long_ago = jiff::Timestamp::now() - jiff::SignedDuration::from_hours(2);
        let until = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(60);
        let listed = |cut| crate::policy::decide::Listed {
            generation: 1,
            until,
            taken: long_ago,
            requests: Vec::new(),
            cut,
        };
        for (uid, cut) in [("requested", true), ("moved", true), ("deferred", false)] {
            let mut tracked = ctx.tracked();
            let t = tracked.entry(uid);
            t.kind.memory.applied = Some((1, long_ago));
            t.kind.memory.listed = Some(listed(cut));
            t.hold(1, false, Instant::now() + Duration::from_secs(600));
        }
        nudged(&ctx, "requested", Why::Happened);
        nudged(&ctx, "moved", Why::Credentials);
        nudged(&ctx, "deferred", Why::Happened);
        let tracked = ctx.tracked();
        let (requested, moved) = (
            tracked.get("requested").unwrap(),
            tracked.get("moved").unwrap(),
        );
        for t in [requested, moved] {
            assert_eq!(t.quiet(1, &false, Instant::now()), None, "due now");
        }
        let applied = |t: &crate::reconciler::tracked::Tracked<bool, Kept>| {
            t.kind.memory.applied.map(|(_, at)| at)
        };
        assert!(
            applied(requested).is_some_and(|at| at > long_ago),
            "polls often again: List may lag behind the request"
        );
        assert_eq!(
            applied(moved),
            Some(long_ago),
            "the usual interval: another account's view shows at once"
        );
        for t in [requested, moved] {
            assert!(
                t.kind.memory.listed.is_none(),
                "a List kept for the next round is not gone on from after a nudge"
            );
        }
        assert_eq!(
            tracked.get("deferred").unwrap().kind.memory.listed,
            Some(listed(false)),
            "a List kept across a deferral stays: the booked slot goes to the deferred decision"
        );
    }

    /// Whether a policy of a namespace can act for an account: a mapped role's account is known
    /// from its ARN; what an admin is changing (mappings that overlap) is not known yet, and so
    /// still shields (a rejection cannot be undone); a namespace refused credentials never acts.
    #[tokio::test]
    async fn what_a_namespaces_mappings_say_of_whether_its_policies_act() {
        use crate::mapping::decide::fixtures::{accounts, mapping};
        const ROLE: &str = "arn:aws:iam::111122223333:role/proton-management";
        const OTHER: &str = "arn:aws:iam::121212121212:role/proton-management";
        let ctx = context();
        let (management, overlap) = (
            mapping(&[("side", "management")], ROLE),
            mapping(&[("side", "management"), ("team", "b")], OTHER),
        );
        let accounts = accounts(
            &[("management", &management), ("overlap", &overlap)],
            &[
                ("mgmt", &[("side", "management")]),
                ("both", &[("side", "management"), ("team", "b")]),
                ("tenant", &[]),
            ],
            UnmappedNamespaces::Refuse,
        );
        let of = |namespace: &str, account: &str| acts(&ctx, &accounts, namespace, account);
        assert_eq!(of("mgmt", "111122223333"), Acts::Yes);
        assert_eq!(of("mgmt", "121212121212"), Acts::No, "another account's");
        assert_eq!(
            of("both", "111122223333"),
            Acts::Unknown,
            "overlapping mappings"
        );
        assert_eq!(
            of("tenant", "111122223333"),
            Acts::No,
            "refused credentials"
        );
        assert_eq!(
            of("unseen", "111122223333"),
            Acts::Unknown,
            "not watched yet"
        );
    }

    #[tokio::test]
    async fn a_reject_waits_for_any_change_of_the_groups_policies_and_only_of_them() {
        let ctx = context();
        // The controller's own account not known yet: every policy may act (Unknown).
        let accounts = Accounts::disabled();
        let policy = |uid: &str, account: &str, generation: i64, paused: bool| {
            let mut p = ConnectionAcceptancePolicy::new(
                uid,
                ConnectionAcceptancePolicySpec {
                    management_account_id: account.into(),
                    environment_account_ids: vec!["444455556666".into()],
                    ..Default::default()
                },
            );
            p.metadata.uid = Some(uid.into());
            p.metadata.generation = Some(generation);
            if paused {
                p.metadata.annotations = Some(
                    [(PAUSED_ANNOTATION.to_string(), "true".to_string())]
                        .into_iter()
                        .collect(),
                );
            }
            Arc::new(p)
        };
        const M1: &str = "111122223333";
        let this = policy("a", M1, 1, false);
        let began = vec![this.clone(), policy("b", M1, 1, false)];
        let group = |all: &[Arc<ConnectionAcceptancePolicy>]| group_of(&ctx, &accounts, all, &this);
        let start = group(&began);
        let with = |extra: Arc<ConnectionAcceptancePolicy>| {
            let mut all = vec![this.clone()];
            all.push(extra);
            group(&all)
        };
        assert_ne!(start, with(policy("b", M1, 2, false)), "changed");
        assert_ne!(start, with(policy("b", M1, 1, true)), "paused");
        assert_ne!(start, group(std::slice::from_ref(&this)), "deleted");
        let mut added = began.clone();
        added.push(policy("c", M1, 1, false));
        assert_ne!(start, group(&added), "added");
        let mut elsewhere = began.clone();
        elsewhere.push(policy("d", "121212121212", 1, false));
        assert_eq!(start, group(&elsewhere), "another account's group");
        let mut written = (*began[1]).clone();
        written.status = Some(Status::default());
        assert_eq!(start, with(Arc::new(written)), "a status write");
        let mut invalid = (*policy("b", M1, 2, false)).clone();
        invalid.spec.environment_account_ids.clear();
        assert_ne!(start, with(Arc::new(invalid.clone())), "b became invalid");
        let mut from_invalid = vec![this.clone(), Arc::new(invalid.clone())];
        let invalid_group = group(&from_invalid);
        invalid.metadata.generation = Some(3);
        from_invalid[1] = Arc::new(invalid);
        assert_eq!(
            invalid_group,
            group(&from_invalid),
            "an invalid policy, no part of the group, changed"
        );

        // Namespaces no mapping selects are refused: no other policy can act, so none is of
        // the group, and a tenant's policy naming this account cannot hold up its Rejects by
        // changing (its own entry aside).
        let (mappings, _) = kube::runtime::reflector::store();
        let (namespaces, _) = kube::runtime::reflector::store();
        let refusing =
            Accounts::from_stores(mappings, namespaces).with_unmapped(UnmappedNamespaces::Refuse);
        let of = |all: &[Arc<ConnectionAcceptancePolicy>]| group_of(&ctx, &refusing, all, &this);
        let tenant = of(&began);
        assert_eq!(tenant.len(), 1, "{tenant:?}");
        assert_eq!(tenant, of(&[this.clone(), policy("b", M1, 2, true)]));
        assert_ne!(tenant, of(&[policy("a", M1, 2, false)]), "this one changed");
    }

    #[test]
    fn an_accept_waits_for_no_change_but_this_policys_own() {
        let mut this =
            ConnectionAcceptancePolicy::new("a", ConnectionAcceptancePolicySpec::default());
        this.metadata.uid = Some("a".into());
        this.metadata.generation = Some(1);
        let with = |edit: &dyn Fn(&mut ConnectionAcceptancePolicy)| {
            let mut now = this.clone();
            edit(&mut now);
            as_it_was(&this, &[Arc::new(now)])
        };
        assert!(with(&|_| ()));
        assert!(
            with(&|p| p.status = Some(Status::default())),
            "a status write"
        );
        assert!(!with(&|p| p.metadata.generation = Some(2)), "edited");
        assert!(
            !with(&|p| {
                p.metadata.annotations = Some(
                    [(PAUSED_ANNOTATION.to_string(), "true".to_string())]
                        .into_iter()
                        .collect(),
                );
            }),
            "paused"
        );
        assert!(
            !with(&|p| p.metadata.uid = Some("b".into())),
            "replaced under its name"
        );
        assert!(!as_it_was(&this, &[]), "deleted");
    }

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
        assert!(is_paused(o.annotations()));
    }
}
