//! The Kubernetes side: runs the step loop of [`crate::decide`] against the API server and the
//! Proton port, writes status and Events, and wires everything into a kube-runtime controller.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use serde_json::json;
use tokio::time::Instant;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::api::{
    ADOPT_ANNOTATION, EnvironmentAccountConnection, EnvironmentAccountConnectionStatus, FINALIZER,
    TAG_UID,
};
use crate::decide::{self, Note, Observed, Origin, Problem, Settings, Step};
use crate::metrics::Metrics;
use crate::proton::{Proton, ProtonError};

/// Field manager of the controller's server-side-apply status writes.
pub const FIELD_MANAGER: &str = "eac-controller";
/// A reconcile that has not settled after this many steps is cut short (and retried later).
const MAX_STEPS: usize = 16;

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
}

impl Error {
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube { .. } => "kube_error",
            Error::MissingMetadata(..) => "invalid_object",
        }
    }
}

/// What about a resource can make it due at once: anything else that changes (the controller's
/// own status writes, relists) does not.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Shape {
    generation: i64,
    deleting: bool,
    adopt_id: Option<String>,
}

/// When a resource is next due, and its shape then: a reconcile triggered while the shape is
/// unchanged and the resource is not yet due costs nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Checkpoint {
    shape: Shape,
    due: Instant,
    /// Consecutive failed reconciles, for the backoff.
    failures: u32,
}

/// Everything a reconcile needs; shared by all workers.
pub struct Context {
    pub client: Client,
    pub proton: Proton,
    pub settings: Settings,
    pub metrics: Metrics,
    recorder: Recorder,
    checkpoints: Mutex<HashMap<String, Checkpoint>>,
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
            checkpoints: Mutex::default(),
        }
    }

    /// Makes every resource due now, as if each one's requeue time had come (tests, and a
    /// forced resync).
    pub fn expire_checkpoints(&self) {
        let now = Instant::now();
        for c in self.checkpoints().values_mut() {
            c.due = now;
        }
    }

    /// The resource is gone: drop what was kept about it.
    fn forget(&self, uid: &str) {
        self.checkpoints().remove(uid);
        self.metrics.forget(uid);
    }

    fn checkpoints(&self) -> std::sync::MutexGuard<'_, HashMap<String, Checkpoint>> {
        self.checkpoints.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The reporter identity of Events: the controller name plus the pod.
pub fn reporter() -> Reporter {
    Reporter {
        controller: "eac-controller".into(),
        instance: std::env::var("POD_NAME").ok(),
    }
}

/// One reconcile of one resource.
pub async fn reconcile(
    obj: Arc<EnvironmentAccountConnection>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    let started = std::time::Instant::now();
    let span = info_span!(
        "reconcile",
        namespace = obj.namespace().unwrap_or_default(),
        resource = obj.name_any(),
        uid = obj.uid().unwrap_or_default(),
        generation = obj.metadata.generation.unwrap_or_default()
    );
    let result = reconcile_inner(&obj, &ctx).instrument(span).await;
    let label = match &result {
        Ok((_, outcome)) => *outcome,
        Err(e) => e.metric_label(),
    };
    ctx.metrics.reconciled(label, started.elapsed());
    result.map(|(action, _)| action)
}

/// After a failed reconcile (a Kubernetes error: AWS errors are handled inside).
pub fn error_policy(
    obj: Arc<EnvironmentAccountConnection>,
    error: &Error,
    ctx: Arc<Context>,
) -> Action {
    warn!(error = %error, "reconcile failed");
    let uid = obj.uid().unwrap_or_default();
    let failures = {
        let mut checkpoints = ctx.checkpoints();
        match checkpoints.get_mut(&uid) {
            Some(c) => {
                c.failures += 1;
                c.due = Instant::now();
                c.failures
            }
            None => 1,
        }
    };
    let problem = Problem {
        reason: "KubernetesError",
        message: error.to_string(),
        retry: crate::proton::Retry::Backoff,
    };
    Action::requeue(decide::retry_after(
        &problem,
        failures,
        &ctx.settings,
        rand::random(),
    ))
}

async fn reconcile_inner(
    obj: &EnvironmentAccountConnection,
    ctx: &Context,
) -> Result<(Action, &'static str), Error> {
    let object = format!("{}/{}", obj.namespace().unwrap_or_default(), obj.name_any());
    let namespace = obj
        .namespace()
        .ok_or_else(|| Error::MissingMetadata(object.clone(), "namespace"))?;
    let uid = obj
        .uid()
        .ok_or_else(|| Error::MissingMetadata(object.clone(), "uid"))?;
    let name = obj.name_any();
    let generation = obj.metadata.generation.unwrap_or_default();
    let deleting = obj.metadata.deletion_timestamp.is_some();
    let adopt_id = obj
        .annotations()
        .get(ADOPT_ANNOTATION)
        .map(|s| s.trim().to_string());

    let shape = Shape {
        generation,
        deleting,
        adopt_id: adopt_id.clone(),
    };
    if let Some(wait) = still_quiet(ctx, &uid, &shape) {
        debug!(
            wait_secs = wait.as_secs(),
            "nothing changed since the last reconcile"
        );
        return Ok((Action::requeue(wait), "quiet"));
    }

    let recorded = obj.status.clone().unwrap_or_default();
    let mut resource = decide::Resource {
        uid: &uid,
        namespace: &namespace,
        name: &name,
        generation,
        spec: &obj.spec,
        status: &recorded,
        deleting,
        has_finalizer: obj.finalizers().iter().any(|f| f == FINALIZER),
        adopt_id: adopt_id.as_deref().filter(|s| !s.is_empty()),
    };
    let api: Api<EnvironmentAccountConnection> = Api::namespaced(ctx.client.clone(), &namespace);
    let region = obj.spec.region.as_deref();
    let mut observed = Observed::Nothing;
    let mut finalizers = obj.finalizers().to_vec();

    // Mutations already sent in this reconcile: asking for the same one again means Proton
    // accepted it without applying it, and repeating it would only loop.
    let mut sent: Vec<Step> = Vec::new();
    for _ in 0..MAX_STEPS {
        let mut step = decide::decide(&resource, &observed, &ctx.settings, now());
        debug!(?step, "next step");
        if step.is_mutation() {
            if sent.contains(&step) {
                step = Step::Fail(decide::not_applied(&step));
            } else {
                sent.push(step.clone());
            }
        }
        let result =
            match &step {
                Step::AddFinalizer => {
                    add_finalizer(&api, &name, &finalizers)
                        .await
                        .map_err(kube_error("adding the finalizer", &object))?;
                    finalizers.push(FINALIZER.to_string());
                    resource.has_finalizer = true;
                    continue;
                }
                Step::RemoveFinalizer => {
                    remove_finalizer(&api, &name, &finalizers)
                        .await
                        .map_err(kube_error("removing the finalizer", &object))?;
                    ctx.forget(&uid);
                    info!("finalizer removed; the resource is released");
                    return Ok((Action::await_change(), "released"));
                }
                Step::Nothing => {
                    ctx.forget(&uid);
                    return Ok((Action::await_change(), "ignored"));
                }
                Step::Settle(settled) => {
                    write_status(&api, &name, &recorded, &settled.status, &object).await?;
                    for note in &settled.events {
                        publish(ctx, obj, note).await;
                    }
                    ctx.metrics.connection_state(&uid, settled.status.status);
                    remember(ctx, &uid, &shape, settled.requeue, 0);
                    return Ok((Action::requeue(settled.requeue), "settled"));
                }
                Step::Fail(failure) => {
                    let problem = Problem::from(failure);
                    let wait =
                        report_problem(ctx, obj, &resource, &observed, &problem, &object, &shape)
                            .await?;
                    return Ok((Action::requeue(wait), failure.reason));
                }
                Step::Get { id } => {
                    ctx.proton
                        .get(region, id)
                        .await
                        .map(|connection| Observed::Connection {
                            connection,
                            tags: None,
                            origin: if recorded.id.as_deref() == Some(id.as_str()) {
                                Origin::Recorded
                            } else {
                                Origin::Adopted
                            },
                        })
                }
                Step::FindOwned { environment_name } => {
                    find_owned(&ctx.proton, region, environment_name, &uid).await
                }
                Step::ListTags { arn } => ctx
                    .proton
                    .list_tags(region, arn)
                    .await
                    .map(|t| with_tags(&observed, Some(t))),
                Step::Create {
                    request,
                    recreation,
                } => ctx.proton.create(region, request).await.map(|connection| {
                    Observed::Connection {
                        connection,
                        tags: Some(request.tags.clone()),
                        origin: Origin::Created {
                            recreation: *recreation,
                        },
                    }
                }),
                Step::Update { id, roles } => {
                    ctx.proton
                        .update(region, id, roles)
                        .await
                        .map(|connection| match &observed {
                            Observed::Connection { tags, origin, .. } => Observed::Connection {
                                connection,
                                tags: tags.clone(),
                                origin: *origin,
                            },
                            _ => Observed::Connection {
                                connection,
                                tags: None,
                                origin: Origin::Recorded,
                            },
                        })
                }
                Step::Tag { arn, tags } => ctx.proton.tag(region, arn, tags).await.map(|()| {
                    let mut now_tags = current_tags(&observed);
                    now_tags.extend(tags.clone());
                    with_tags(&observed, Some(now_tags))
                }),
                Step::Untag { arn, keys, retain } => {
                    ctx.proton.untag(region, arn, keys).await.map(|()| {
                        if *retain {
                            Observed::Released
                        } else {
                            let mut now_tags = current_tags(&observed);
                            now_tags.retain(|k, _| !keys.contains(k));
                            with_tags(&observed, Some(now_tags))
                        }
                    })
                }
                // NotFound falls through to the common handling below: the recorded connection is
                // gone, and the decision searches once for a re-creation before releasing.
                Step::Delete { id } => ctx
                    .proton
                    .delete(region, id)
                    .await
                    .map(|()| Observed::Released),
            };

        match result {
            Ok(next) => {
                if let Some(note) = decide::event_for(&step, &next) {
                    info!(reason = note.reason, note = %note.note, "proton changed");
                    publish(ctx, obj, &note).await;
                }
                observed = next;
            }
            Err(e) if e.is_not_found() && !matches!(step, Step::Create { .. }) => {
                let missing = step_target_id(&step, &observed, &recorded);
                if !deleting && missing.is_some() && missing == recorded.id {
                    let id = missing.clone().unwrap_or_default();
                    warn!(connection = %id, "connection deleted outside the controller");
                    let status = decide::status_vanished(&resource, &id, now());
                    // Announced once: a retry that finds it still missing writes nothing new.
                    if write_status(&api, &name, &recorded, &status, &object).await? {
                        publish(ctx, obj, &decide::vanished_note(&id)).await;
                    }
                }
                observed = Observed::Gone { id: missing };
            }
            Err(e) => {
                let problem = Problem::from(&e);
                warn!(error = %e, class = ?e.class, "proton call failed");
                let wait =
                    report_problem(ctx, obj, &resource, &observed, &problem, &object, &shape)
                        .await?;
                return Ok((Action::requeue(wait), e.class.reason()));
            }
        }
    }
    warn!(steps = MAX_STEPS, "reconcile did not settle; will retry");
    let wait = Duration::from_secs(30);
    remember(ctx, &uid, &shape, wait, 1);
    Ok((Action::requeue(wait), "unsettled"))
}

/// The id a failed step was about, to tell "the recorded connection vanished" apart.
fn step_target_id(
    step: &Step,
    observed: &Observed,
    recorded: &EnvironmentAccountConnectionStatus,
) -> Option<String> {
    match step {
        Step::Get { id } | Step::Update { id, .. } | Step::Delete { id } => Some(id.clone()),
        Step::ListTags { .. } | Step::Tag { .. } | Step::Untag { .. } => match observed {
            Observed::Connection { connection, .. } => Some(connection.id.clone()),
            _ => recorded.id.clone(),
        },
        _ => None,
    }
}

fn current_tags(observed: &Observed) -> crate::proton::Tags {
    match observed {
        Observed::Connection { tags: Some(t), .. } => t.clone(),
        _ => Default::default(),
    }
}

fn with_tags(observed: &Observed, tags: Option<crate::proton::Tags>) -> Observed {
    match observed {
        Observed::Connection {
            connection, origin, ..
        } => Observed::Connection {
            connection: connection.clone(),
            tags,
            origin: *origin,
        },
        other => other.clone(),
    }
}

/// Lists the environment's connections and keeps the one carrying this resource's uid tag.
async fn find_owned(
    proton: &Proton,
    region: Option<&str>,
    environment_name: &str,
    uid: &str,
) -> Result<Observed, ProtonError> {
    for connection in proton
        .list_for_environment(region, environment_name)
        .await?
    {
        let tags = match proton.list_tags(region, &connection.arn).await {
            Ok(tags) => tags,
            // Deleted between the List and now: not ours to find.
            Err(e) if e.is_not_found() => continue,
            Err(e) => return Err(e),
        };
        if tags.get(TAG_UID).map(String::as_str) == Some(uid) {
            return Ok(Observed::Connection {
                connection,
                tags: Some(tags),
                origin: Origin::Found,
            });
        }
    }
    Ok(Observed::Gone { id: None })
}

fn now() -> jiff::Timestamp {
    jiff::Timestamp::now()
}

fn still_quiet(ctx: &Context, uid: &str, shape: &Shape) -> Option<Duration> {
    let checkpoints = ctx.checkpoints();
    let c = checkpoints.get(uid)?;
    let now = Instant::now();
    (c.shape == *shape && c.due > now).then(|| c.due - now)
}

fn previous_failures(ctx: &Context, uid: &str) -> u32 {
    ctx.checkpoints().get(uid).map_or(0, |c| c.failures)
}

fn remember(ctx: &Context, uid: &str, shape: &Shape, wait: Duration, failures: u32) {
    ctx.checkpoints().insert(
        uid.to_string(),
        Checkpoint {
            shape: shape.clone(),
            due: Instant::now() + wait,
            failures,
        },
    );
}

/// Ends a reconcile on `problem`: writes the status, publishes an Event if the problem is news,
/// and notes when the resource is next due. Returns that wait.
async fn report_problem(
    ctx: &Context,
    obj: &EnvironmentAccountConnection,
    resource: &decide::Resource<'_>,
    observed: &Observed,
    problem: &Problem,
    object: &str,
    shape: &Shape,
) -> Result<Duration, Error> {
    let (status, news) =
        decide::status_after_problem(resource, observed, problem, &ctx.settings, now());
    let api: Api<EnvironmentAccountConnection> =
        Api::namespaced(ctx.client.clone(), resource.namespace);
    write_status(&api, resource.name, resource.status, &status, object).await?;
    if news {
        let note = Note {
            reason: problem.reason,
            note: problem.message.clone(),
            warning: true,
        };
        publish(ctx, obj, &note).await;
    }
    ctx.metrics.connection_state(resource.uid, status.status);
    let failures = previous_failures(ctx, resource.uid) + 1;
    let wait = decide::retry_after(problem, failures, &ctx.settings, rand::random());
    remember(ctx, resource.uid, shape, wait, failures);
    Ok(wait)
}

/// Server-side apply of the status subresource, only when it differs from the recorded one.
/// Returns whether anything was written.
async fn write_status(
    api: &Api<EnvironmentAccountConnection>,
    name: &str,
    recorded: &EnvironmentAccountConnectionStatus,
    status: &EnvironmentAccountConnectionStatus,
    object: &str,
) -> Result<bool, Error> {
    if recorded == status {
        return Ok(false);
    }
    let patch = json!({
        "apiVersion": "proton.eac.dev/v1alpha1",
        "kind": "EnvironmentAccountConnection",
        "status": status,
    });
    api.patch_status(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(patch),
    )
    .await
    .map(|_| true)
    .map_err(kube_error("writing the status", object))
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

/// Adds the finalizer with a guarded JSON patch: it fails (and is retried) if the list changed
/// under us, instead of overwriting someone else's finalizer.
async fn add_finalizer(
    api: &Api<EnvironmentAccountConnection>,
    name: &str,
    current: &[String],
) -> Result<(), kube::Error> {
    let ops = if current.is_empty() {
        json!([
            {"op": "test", "path": "/metadata/finalizers", "value": null},
            {"op": "add", "path": "/metadata/finalizers", "value": [FINALIZER]},
        ])
    } else {
        json!([
            {"op": "test", "path": "/metadata/finalizers", "value": current},
            {"op": "add", "path": "/metadata/finalizers/-", "value": FINALIZER},
        ])
    };
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

async fn publish(ctx: &Context, obj: &EnvironmentAccountConnection, note: &Note) {
    let event = Event {
        type_: if note.warning {
            EventType::Warning
        } else {
            EventType::Normal
        },
        reason: note.reason.to_string(),
        note: Some(note.note.clone()),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &obj.object_ref(&())).await {
        // An Event is a courtesy; losing one must not fail the reconcile.
        warn!(error = %e, reason = note.reason, "could not publish event");
    }
}

/// What to watch.
#[derive(Clone, Debug, Default)]
pub struct WatchScope {
    /// One namespace, or all.
    pub namespace: Option<String>,
    /// Only resources matching this label selector (sharding).
    pub label_selector: Option<String>,
}

/// Runs the controller until `shutdown` resolves.
pub async fn run(
    ctx: Arc<Context>,
    scope: WatchScope,
    concurrency: u16,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
    ready: Option<tokio::sync::watch::Sender<bool>>,
) {
    let api: Api<EnvironmentAccountConnection> = match &scope.namespace {
        Some(ns) => Api::namespaced(ctx.client.clone(), ns),
        None => Api::all(ctx.client.clone()),
    };
    let mut config = watcher::Config::default().any_semantic();
    if let Some(selector) = &scope.label_selector {
        config = config.labels(selector);
    }
    let controller = Controller::new(api, config)
        .with_config(kube::runtime::controller::Config::default().concurrency(concurrency));
    let store = controller.store();
    if let Some(ready) = ready {
        tokio::spawn(async move {
            // Readiness: the watch cache has synced once. The store's ready signal is re-polled
            // on a short tick because its wake-up was seen to be missed when awaited from another
            // task (kube-runtime 5 DelayedInit); once set, a poll answers at once.
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            loop {
                tokio::select! {
                    result = store.wait_until_ready() => {
                        if result.is_ok() {
                            let _ = ready.send(true);
                        }
                        return;
                    }
                    _ = tick.tick() => {}
                }
            }
        });
    }
    controller
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            match result {
                Ok((object, _)) => debug!(object = %object, "reconciled"),
                Err(e) => debug!(error = %e, "controller event"),
            }
        })
        .await;
}
