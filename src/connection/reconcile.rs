//! One reconcile of one resource: fetch (what the resource and the controller's memory say),
//! decide (ask the run for the next step), execute (one Kubernetes or AWS call), record (hand
//! the answer back to the run), until the run's step is final; and what follows a failed one.

use std::sync::Arc;

use kube::ResourceExt;
use kube::runtime::controller::Action;
use tokio::time::Instant;
use tracing::{debug, info_span};

use super::context::Context;
use super::error::Error;
use super::execute::{StepExecutor, come_back, finish};
use super::facts::Facts;
use crate::connection::api::EnvironmentAccountConnection;
use crate::connection::decide::Run;
use crate::reconciler::{self};

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
    let triggers = ctx.triggers_of(&obj).hash_of();
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

pub(super) async fn reconcile_inner(
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

/// A reconcile behind this controller's status write with nothing to do (see
/// [`super::facts::waits_for_own_status`]).
pub(super) fn behind_own_status(
    ctx: &Context,
    facts: &Facts,
) -> Result<(Action, &'static str), Error> {
    match facts.quiet {
        Some(requeue) => {
            debug!("the cache is behind this controller's status write; nothing changed since");
            Ok((come_back(ctx, facts, Instant::now() + requeue), "quiet"))
        }
        None => Err(Error::StaleCache(facts.object.clone())),
    }
}

/// fetch (done) -> the shared loop (decide -> execute -> record) -> finish.
pub(super) async fn steps(
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
        create_trial: None,
        routine_slot: None,
    };
    let step = reconciler::drive::drive(&mut run, &mut executor).await?;
    // A Create's turn is not held through the end's writes.
    executor.create_trial = None;
    let carry = run.carry_over();
    finish(ctx, obj, facts, &executor.finalizers, step, carry).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::offline::eac;

    /// kube-runtime moves each reconcile it runs into its map of running reconciles and out
    /// again: what it moves must stay small, and what a reconcile holds inline (its largest
    /// step's state) too. Unboxed, these were 41 KiB and 20 KiB.
    #[tokio::test]
    async fn a_reconcile_future_is_small_and_its_calls_are_boxed() {
        let ctx = Arc::new(Context::offline());
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
