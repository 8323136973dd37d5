//! What a reconcile starts from: the resource, its cached status and what the controller kept
//! about it, gathered once before the first step.

use std::sync::Mutex;
use std::time::Duration;

use kube::ResourceExt;
use kube::api::Api;
use tokio::time::Instant;

use super::context::Context;
use super::error::Error;
use super::triggers::Triggers;
use crate::connection::api::{
    EnvironmentAccountConnection, EnvironmentAccountConnectionStatus as Status, FINALIZER,
    INTENT_ANNOTATION,
};
use crate::connection::decide::{self, Intent, Memory, Note, Problem, Progress};
use crate::mapping::AwsIdentity;
use crate::reconciler;

/// What a reconcile starts from.
pub(super) struct Facts {
    /// The resource's namespace in the API.
    pub(super) api: Api<EnvironmentAccountConnection>,
    pub(super) object: String,
    pub(super) namespace: String,
    pub(super) name: String,
    pub(super) uid: String,
    pub(super) generation: i64,
    pub(super) triggers: Triggers,
    pub(super) finalizers: Vec<String>,
    /// The status in the watch cache.
    pub(super) stored: Option<Status>,
    /// The status to reconcile from (see [`decide::effective_status`]).
    pub(super) status: Status,
    /// The cache does not show this controller's last status write yet (see
    /// [`Memory::written`]): the reconcile waits for the watch.
    pub(super) behind_own_status: bool,
    pub(super) quiet: Option<Duration>,
    /// A nudge made it due: its connection was just accepted or rejected here.
    pub(super) nudged: bool,
    pub(super) failures: u32,
    /// Nothing is kept about the resource yet: first seen in this term of leadership.
    pub(super) first_sight: bool,
    /// The intent-to-create annotation as it stands (as read, or as written by this reconcile).
    pub(super) intent_annotation: Mutex<Option<String>>,
    /// Events to publish once the reconcile is over, in order.
    pub(super) notes: Mutex<Vec<Note>>,
    /// Whose credentials the resource's AWS calls are made with.
    pub(super) identity: AwsIdentity,
    /// Why its namespace has no credentials, if so.
    pub(super) credentials_problem: Option<Problem>,
    /// Why the intent annotation is not taken as the controller's record, if so.
    pub(super) intent_problem: Option<Problem>,
    /// What the last reconcile learned before it was deferred, to go on from.
    pub(super) resumed: Option<Progress>,
    pub(super) deleting: bool,
}

impl Facts {
    /// An Event to publish when the reconcile is over.
    pub(super) fn note(&self, note: &Note) {
        self.notes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(note.clone());
    }

    pub(super) fn fetch(obj: &EnvironmentAccountConnection, ctx: &Context) -> Result<Facts, Error> {
        let reconciler::Named {
            object,
            namespace,
            uid,
            generation,
        } = reconciler::Named::of(obj)?;
        let triggers = ctx.triggers_of(obj);
        let credentials = triggers.credentials.clone();
        let deleting = obj.metadata.deletion_timestamp.is_some();
        let stored = obj.status.clone();
        let annotation = obj.annotations().get(INTENT_ANNOTATION).map(String::as_str);

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
        tracked.began(&uid);
        let mut entry = tracked.get_mut(&uid);
        if let Some(t) = entry.as_deref_mut() {
            // Still the copy our own write replaced? Any other copy shows the write, or later.
            let behind = !deleting
                && t.kind.written_over.is_some()
                && t.kind.written_over == obj.metadata.resource_version;
            if behind {
                return Err(Error::StaleCache(object));
            }
            t.kind.written_over = None;
        }
        let annotation = match entry.as_deref_mut() {
            Some(t) => {
                t.kind
                    .memory
                    .catch_up(stored.as_ref(), obj.metadata.resource_version.as_deref());
                t.kind.memory.intent_to_take(annotation)
            }
            None => annotation,
        };
        let intent = annotation.and_then(Intent::parse);
        let intent_problem = intent
            .as_ref()
            .and_then(|i| i.distrust(obj.spec.region.as_deref(), jiff::Timestamp::now()));
        let intent = intent.filter(|_| intent_problem.is_none());
        let mut behind_own_status = false;
        let has_finalizer = obj.finalizers().iter().any(|f| f == FINALIZER);
        let (status, quiet, failures, resumed, nudged) = match entry {
            Some(t) => {
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
            // One not taken is not the controller's to remove as obsolete either: it stays, and
            // is reported, until whoever wrote it removes it.
            intent_annotation: Mutex::new(
                annotation
                    .filter(|_| intent_problem.is_none())
                    .map(str::to_string),
            ),
            notes: Mutex::default(),
            identity: credentials
                .as_ref()
                .map(|r| r.identity.clone())
                .unwrap_or_default(),
            credentials_problem: credentials.err().map(|e| e.problem()),
            intent_problem,
            resumed,
            deleting,
        })
    }

    pub(super) fn resource<'a>(
        &'a self,
        obj: &'a EnvironmentAccountConnection,
    ) -> decide::Resource<'a> {
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
            nudged: self.nudged,
            credentials_problem: self.credentials_problem.as_ref(),
            intent_problem: self.intent_problem.as_ref(),
            default_region: self
                .triggers
                .credentials
                .as_ref()
                .ok()
                .and_then(|r| r.default_region.as_deref()),
        }
    }
}

/// Whether a reconcile whose cached copy does not show this controller's last status write
/// waits for the watch. One with nothing new since its last reconcile (most often the watch
/// bringing this controller's own finalizer patch, ahead of its status write) has nothing to do
/// until it is due; any other waits: acting on the older status could repeat a Create, or
/// release a resource whose connection the cache does not show yet.
pub(super) fn waits_for_own_status(
    quiet: Option<Duration>,
    has_finalizer: bool,
    deleting: bool,
) -> bool {
    quiet.is_none() || !has_finalizer || deleting
}
