//! The connection kind's steps carried out (each one Kubernetes or AWS call), and the end of a
//! reconcile: its status written, its next visit set.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::time::Duration;

use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::controller::Action;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::context::{Context, RESUME_GRACE, Resume};
use super::error::Error;
use super::facts::Facts;
use super::writes::{add_finalizer, kube_error, remove_finalizer, write_status};
use crate::aws::budget::CallClass;
use crate::aws::proton::{CREATE, ProtonError, StepCalls, Ticket};
use crate::aws::reach::Trial;
use crate::compact_id::CompactId;
use crate::connection::api::{
    ADOPTION_ALLOWED, ADOPTION_NAMESPACE_LABEL, ConnectionState, EnvironmentAccountConnection,
    EnvironmentAccountConnectionStatus as Status, FINALIZER,
};
use crate::connection::decide::{self, Note, Outcome, Progress, Run, Step};
use crate::connection::polls::Waiting;
use crate::reconciler::nudge::Why;
use crate::reconciler::{self};

/// Carries out the connection kind's steps, with what a reconcile holds between them.
pub(super) struct StepExecutor<'a> {
    pub(super) ctx: &'a Context,
    pub(super) obj: &'a EnvironmentAccountConnection,
    pub(super) facts: &'a Facts,
    /// The finalizers as this reconcile left them.
    pub(super) finalizers: Vec<String>,
    /// A Create whose slot was taken before its intent was written.
    pub(super) create_admitted: bool,
    /// The worker slot of a routine read, held to the end of the reconcile.
    pub(super) routine_slot: Option<tokio::sync::OwnedSemaphorePermit>,
    /// The turn of the Create's region, if it does not answer: taken before the Create's slot
    /// and intent, held through the Create (see [`crate::aws::proton::Proton::hold_trial`]).
    pub(super) create_trial: Option<Trial<'a>>,
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
        if class != CallClass::Work && step.is_aws() && self.routine_slot.is_none() {
            match ctx.routine_slot() {
                Ok(slot) => self.routine_slot = slot,
                // Routine reads already hold their share of the workers: come back.
                Err(()) => return Ok(Err(ProtonError::deferred("routine read", None))),
            }
        }
        let records_intent = matches!(step, Step::Record(recorded) if recorded.before_create);
        let finalizer_alone = Step::AddFinalizer { intent: None };
        let mut step = step;
        // An intent to create is written only for a Create that may be sent: first the turn of
        // its region (if it does not answer, one call goes there at a time), then its slot in
        // the budget, both held through the Create.
        if records_intent || matches!(step, Step::AddFinalizer { intent: Some(_) }) {
            // A turn still held from an earlier intent (one that went stale before its Create)
            // is given back first: it would refuse this one.
            self.create_trial = None;
            let refused = match ctx.proton.hold_trial(run.region(), CREATE) {
                Ok(trial) => {
                    self.create_trial = Some(trial);
                    let slot = Ticket {
                        identity: &self.facts.identity,
                        key: &self.facts.uid,
                        class: CallClass::Work,
                        admitted: false,
                        trial: None,
                        calls: &StepCalls::default(),
                    };
                    ctx.proton.admit(&slot, CREATE).await.err()
                }
                Err(refused) => {
                    if records_intent {
                        ctx.proton.not_sent(&refused);
                    }
                    Some(refused)
                }
            };
            match refused {
                None => self.create_admitted = true,
                Some(refused) => {
                    self.create_trial = None;
                    if records_intent {
                        return Ok(Err(refused));
                    }
                    // The finalizer goes alone (it waits for no turn or budget); the intent is
                    // recorded, and the Create's turn and slot taken, when the Create may go.
                    step = &finalizer_alone;
                }
            }
        }
        let ticket = Ticket {
            identity: &self.facts.identity,
            key: &self.facts.uid,
            class,
            admitted: self.create_admitted && matches!(step, Step::Create { .. }),
            trial: self
                .create_trial
                .as_ref()
                .filter(|_| matches!(step, Step::Create { .. })),
            calls: &StepCalls::default(),
        };
        // Boxed: a reconcile holds one step at a time, and the calls are most of its size.
        let result = Box::pin(execute(
            ctx,
            self.obj,
            self.facts,
            &mut self.finalizers,
            run,
            &ticket,
            step,
        ))
        .await?;
        // Held only while the Create is the next step.
        if !(matches!(result, Ok(Outcome::IntentRecorded)) || records_intent && result.is_ok()) {
            self.create_trial = None;
        }
        if let (Step::Create { request, .. }, Ok(Outcome::Connection(created))) = (step, &result) {
            if created.state == ConnectionState::Pending
                && let Some(cached) = ctx
                    .newest(self.obj)
                    .filter(|c| c.metadata.uid == self.obj.metadata.uid)
            {
                ctx.undecided.created(&created.id, cached);
            }
            nudge_policies(ctx, &request.management_account_id, run.region());
        }
        match &result {
            Err(e) if e.is_late() => {
                info!(
                    "the Create was not sent: its intent is older than the settle window; writing it again first"
                );
            }
            Err(e) if e.class == crate::aws::proton::ErrorClass::Deferred => {}
            // Not sent: the reconcile's end says so, once.
            Err(e) if e.is_unreached() => debug!(error = %e, "proton call not sent"),
            Err(e) => warn!(error = %e, class = ?e.class, "proton call failed"),
            Ok(_) if class != CallClass::Work && matches!(step, Step::Get { .. }) => {
                note_read(ctx, &self.facts.uid, class);
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
pub(super) fn nudge_policies(ctx: &Context, management_account: &str, region: &str) {
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
pub(super) async fn execute(
    ctx: &Context,
    obj: &EnvironmentAccountConnection,
    facts: &Facts,
    finalizers: &mut Vec<String>,
    run: &Run<'_>,
    ticket: &Ticket<'_>,
    step: &Step,
) -> Result<Result<Outcome, ProtonError>, Error> {
    let proton = &ctx.proton;
    let region = run.region();
    let outcome = match step {
        Step::AddFinalizer { intent } => {
            // The intent to create goes with the finalizer: the executor took the Create's turn
            // and slot for it (see `StepExecutor::execute`).
            let intent = intent.as_ref();
            // An API server drops an empty map, but a client may hold one: either way the key
            // can be added to it.
            let annotated = obj.metadata.annotations.is_some();
            match add_finalizer(
                &facts.api,
                &facts.name,
                &facts.uid,
                finalizers,
                intent,
                annotated,
            )
            .await
            {
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
                ctx.tracked().entry(&facts.uid).kind.memory.intent_written();
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
            .find_owned(
                ticket,
                region,
                environment_name,
                (&facts.uid, &facts.namespace, &facts.name),
            )
            .await
            .map(Outcome::Found),
        Step::ListTags { arn } => proton
            .list_tags(ticket, region, arn)
            .await
            .map(Outcome::Tags),
        Step::Create {
            request, region, ..
        } => proton
            .create(ticket, region, request, run.create_send_by())
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
        | Step::Nothing => Err(ProtonError::final_step(step.name())),
    };
    Ok(outcome)
}

/// Ends the reconcile on its final step.
pub(super) async fn finish(
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
            // Only a request seen waiting: an adopted or observed connection, or one found again
            // for a resource re-created without its status, would count its whole age.
            if settled.status.status == Some(ConnectionState::Connected)
                && facts.status.status == Some(ConnectionState::Pending)
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
            let held = ctx.tracked().failed(
                &facts.uid,
                facts.generation,
                facts.triggers.hash_of(),
                reported.problem.reason,
                Instant::now() + reported.requeue,
            );
            if held.passed_by {
                info!("AWS answered again while this reconcile ran: trying again now");
            }
            Ok((come_back(ctx, facts, held.due), reported.problem.reason))
        }
        Step::RemoveFinalizer => {
            remove_finalizer(&facts.api, &facts.name, &facts.uid, finalizers)
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
pub(super) fn recorded_pending(
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
pub(super) fn hand_polls_over(
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
pub(super) fn note_read(ctx: &Context, uid: &str, class: CallClass) {
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
pub(super) fn come_back(ctx: &Context, facts: &Facts, due: Instant) -> Action {
    ctx.timetable
        .set(&facts.uid, &facts.name, &facts.namespace, due);
    Action::await_change()
}

/// Notes when the resource is next due, so a trigger before then changes nothing; returns when.
pub(super) fn checkpoint(ctx: &Context, facts: &Facts, requeue: Duration) -> Instant {
    let due = Instant::now() + requeue;
    let mut tracked = ctx.tracked();
    let t = tracked.entry(&facts.uid);
    t.hold(facts.generation, facts.triggers.hash_of(), due);
    due
}
