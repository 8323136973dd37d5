//! The reconcile decision: pure, synchronous, no I/O.
//!
//! A reconcile is a short loop: [`decide`] looks at the resource and at what Proton has reported so
//! far in this reconcile ([`Observed`]) and names the one next [`Step`]; the controller executes it,
//! folds the result into `Observed`, and asks again, until the answer is to settle (write the
//! status and requeue), to fail, or to let the resource go. Everything the controller does is
//! therefore decided here and tested as a table, without Kubernetes or AWS.

use std::time::Duration;

use crate::api::{
    ConnectionState, DeletionPolicy, EnvironmentAccountConnectionSpec as Spec,
    EnvironmentAccountConnectionStatus as Status, TAG_NAME, TAG_NAMESPACE, TAG_UID,
};
use crate::conditions::{self, READY, STALLED, SYNCED, Want};
use crate::proton::{Connection, CreateRequest, ProtonError, Retry, RoleArns, Tags};

/// Controller-wide settings the decision depends on.
#[derive(Clone, Debug)]
pub struct Settings {
    /// How often a settled resource is looked at again.
    pub resync: Duration,
    /// How often a PENDING connection is polled at first (it backs off towards `resync`).
    pub pending_poll: Duration,
    /// Region used when the spec names none.
    pub default_region: String,
}

/// What the decision needs to know about the Kubernetes resource.
#[derive(Clone, Debug)]
pub struct Resource<'a> {
    pub uid: &'a str,
    pub namespace: &'a str,
    pub name: &'a str,
    pub generation: i64,
    pub spec: &'a Spec,
    /// The last recorded status (default when none was ever written).
    pub status: &'a Status,
    pub deleting: bool,
    pub has_finalizer: bool,
    /// The `proton.eac.dev/adopt-id` annotation.
    pub adopt_id: Option<&'a str>,
}

/// How the connection in [`Observed::Connection`] came to be known in this reconcile.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// Read back with the id recorded in the status.
    Recorded,
    /// Returned by Create; `recreation` 0 is the first connection of the resource.
    Created { recreation: u32 },
    /// Read with the id of the adopt annotation.
    Adopted,
    /// Found by listing the environment's connections and matching the uid tag.
    Found,
}

/// What Proton has reported so far in this reconcile.
// One value lives per reconcile; boxing the connection would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq)]
pub enum Observed {
    /// Nothing asked yet.
    Nothing,
    Connection {
        connection: Connection,
        /// The connection's tags, once listed (or as just sent with Create).
        tags: Option<Tags>,
        origin: Origin,
    },
    /// The connection looked up does not exist: `id` is the id asked for (None: a search by
    /// environment and uid tag found nothing).
    Gone { id: Option<String> },
    /// On deletion: the connection was deleted, or retained and released.
    Released,
}

/// The one next thing to do.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    /// Add the finalizer (before anything can be created).
    AddFinalizer,
    /// `GetEnvironmentAccountConnection`.
    Get { id: String },
    /// List the environment's connections and keep the one tagged with this resource's uid.
    FindOwned { environment_name: String },
    /// `ListTagsForResource`.
    ListTags { arn: String },
    /// `CreateEnvironmentAccountConnection`.
    Create {
        request: CreateRequest,
        recreation: u32,
    },
    /// `UpdateEnvironmentAccountConnection`.
    Update { id: String, roles: RoleArns },
    /// `TagResource` with only the tags that differ.
    Tag { arn: String, tags: Tags },
    /// `UntagResource` with only the keys to remove.
    Untag {
        arn: String,
        keys: Vec<String>,
        retain: bool,
    },
    /// `DeleteEnvironmentAccountConnection` (NotFound counts as deleted).
    Delete { id: String },
    /// Remove the finalizer: the resource may go.
    RemoveFinalizer,
    /// Done: write `status` if it differs from the recorded one, look again after `requeue`.
    Settle(Settled),
    /// The spec cannot be carried out as it stands.
    Fail(Failure),
    /// Not ours to act on (being deleted and never finalized).
    Nothing,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Settled {
    pub status: Status,
    pub requeue: Duration,
    /// State transitions worth an Event (reason, note).
    pub events: Vec<Note>,
}

/// A failure the decision itself finds (not an AWS error).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub reason: &'static str,
    pub message: String,
}

/// An Event to publish: reason, note, and whether it is a warning.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Note {
    pub reason: &'static str,
    pub note: String,
    pub warning: bool,
}

impl Note {
    fn normal(reason: &'static str, note: String) -> Self {
        Note {
            reason,
            note,
            warning: false,
        }
    }
    fn warning(reason: &'static str, note: String) -> Self {
        Note {
            reason,
            note,
            warning: true,
        }
    }
}

/// The client token for a resource's n-th connection: the uid itself for the first, so a
/// retried or repeated Create returns the same connection; a derived token for each re-creation
/// after an out-of-band delete, so a repeat of the same recovery is idempotent too.
pub fn client_token(uid: &str, recreation: u32) -> String {
    // Proton: `^[!-~]*$`, at most 64 characters. A Kubernetes uid always fits; keep the promise
    // for anything else too, shortening the uid rather than the suffix so that every
    // re-creation keeps a token of its own.
    let suffix = if recreation == 0 {
        String::new()
    } else {
        format!("-r{recreation}")
    };
    let uid: String = uid
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(64 - suffix.len())
        .collect();
    uid + &suffix
}

/// The tags the controller uses to recognise its own connections.
pub fn ownership_tags(r: &Resource) -> Tags {
    Tags::from([
        (TAG_UID.to_string(), r.uid.to_string()),
        (TAG_NAMESPACE.to_string(), r.namespace.to_string()),
        (TAG_NAME.to_string(), r.name.to_string()),
    ])
}

/// Spec tags plus ownership tags: what the connection must carry.
pub fn desired_tags(r: &Resource) -> Tags {
    let mut tags = r.spec.tags.clone();
    tags.extend(ownership_tags(r));
    tags
}

fn desired_roles(spec: &Spec) -> RoleArns {
    RoleArns {
        role_arn: spec.role_arn.clone(),
        codebuild_role_arn: spec.codebuild_role_arn.clone(),
        component_role_arn: spec.component_role_arn.clone(),
    }
}

/// Whether Proton's roles differ from the spec. `roleArn` is compared only when the spec sets
/// it (Proton requires one on every connection, so "none" cannot be asked for); the CodeBuild and
/// component roles are compared exactly, so removing one from the spec clears it.
fn roles_drifted(spec: &Spec, observed: &RoleArns) -> bool {
    let desired = desired_roles(spec);
    (desired.role_arn.is_some() && desired.role_arn != observed.role_arn)
        || desired.codebuild_role_arn != observed.codebuild_role_arn
        || desired.component_role_arn != observed.component_role_arn
}

/// Whether the current generation was fully applied by an earlier reconcile.
fn generation_applied(r: &Resource) -> bool {
    conditions::is_true(&r.status.conditions, SYNCED, Some(r.generation))
}

/// The next step for this resource.
pub fn decide(
    r: &Resource,
    observed: &Observed,
    settings: &Settings,
    now: jiff::Timestamp,
) -> Step {
    if r.deleting {
        return decide_deletion(r, observed);
    }
    if !r.has_finalizer {
        return Step::AddFinalizer;
    }
    match observed {
        Observed::Nothing => match (&r.status.id, r.adopt_id) {
            (Some(id), _) => Step::Get { id: id.clone() },
            (None, Some(adopt)) => Step::Get {
                id: adopt.to_string(),
            },
            (None, None) => create(r, r.status.recreations),
        },
        Observed::Gone { id } => {
            if r.status.id.is_none() && r.adopt_id.is_some() && id.as_deref() == r.adopt_id {
                return Step::Fail(Failure {
                    reason: "AdoptionNotFound",
                    message: format!(
                        "annotation proton.eac.dev/adopt-id names connection {}, which does not exist",
                        id.as_deref().unwrap_or_default()
                    ),
                });
            }
            // The recorded connection was deleted behind the controller's back.
            create(r, r.status.recreations + 1)
        }
        Observed::Connection {
            connection,
            tags,
            origin,
        } => decide_sync(r, connection, tags.as_ref(), *origin, settings, now),
        Observed::Released => Step::Nothing,
    }
}

fn create(r: &Resource, recreation: u32) -> Step {
    Step::Create {
        request: CreateRequest {
            client_token: client_token(r.uid, recreation),
            environment_name: r.spec.environment_name.clone(),
            management_account_id: r.spec.management_account_id.clone(),
            roles: desired_roles(r.spec),
            tags: desired_tags(r),
        },
        recreation,
    }
}

fn decide_sync(
    r: &Resource,
    c: &Connection,
    tags: Option<&Tags>,
    origin: Origin,
    settings: &Settings,
    now: jiff::Timestamp,
) -> Step {
    if origin == Origin::Adopted {
        let mut mismatches = Vec::new();
        if c.environment_name != r.spec.environment_name {
            mismatches.push(format!(
                "environmentName is {:?} in Proton but {:?} in the spec",
                c.environment_name, r.spec.environment_name
            ));
        }
        if c.management_account_id != r.spec.management_account_id {
            mismatches.push(format!(
                "managementAccountId is {:?} in Proton but {:?} in the spec",
                c.management_account_id, r.spec.management_account_id
            ));
        }
        if !mismatches.is_empty() {
            return Step::Fail(Failure {
                reason: "AdoptionMismatch",
                message: format!(
                    "cannot adopt connection {}: {}",
                    c.id,
                    mismatches.join("; ")
                ),
            });
        }
        // Ownership is judged by the uid tag: read the tags before anything can be changed.
        let Some(tags) = tags else {
            return Step::ListTags { arn: c.arn.clone() };
        };
        if let Some(owner) = tags.get(TAG_UID)
            && owner != r.uid
        {
            return Step::Fail(Failure {
                reason: "AdoptionMismatch",
                message: format!(
                    "cannot adopt connection {}: it is owned by another resource (tag {TAG_UID}={owner})",
                    c.id
                ),
            });
        }
    }
    // A REJECTED connection accepts no changes; it stays as the record of the answer.
    if c.state != ConnectionState::Rejected {
        if roles_drifted(r.spec, &c.roles) {
            return Step::Update {
                id: c.id.clone(),
                roles: desired_roles(r.spec),
            };
        }
        // Tags are read only when something may have changed: a new generation, a connection
        // not yet fully applied, or one that was just found or adopted. An idle resource costs
        // one Get per resync.
        let check_tags = !generation_applied(r) || origin != Origin::Recorded;
        if check_tags {
            let Some(tags) = tags else {
                return Step::ListTags { arn: c.arn.clone() };
            };
            let desired = desired_tags(r);
            let missing: Tags = desired
                .iter()
                .filter(|(k, v)| tags.get(*k) != Some(*v))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            if !missing.is_empty() {
                return Step::Tag {
                    arn: c.arn.clone(),
                    tags: missing,
                };
            }
            let removed: Vec<String> = r
                .status
                .applied_tag_keys
                .iter()
                .filter(|k| !desired.contains_key(*k) && tags.contains_key(*k))
                .cloned()
                .collect();
            if !removed.is_empty() {
                return Step::Untag {
                    arn: c.arn.clone(),
                    keys: removed,
                    retain: false,
                };
            }
        }
    }
    // Tags are not managed on a REJECTED connection, so what was applied stays as it was.
    let applied_tag_keys = if c.state == ConnectionState::Rejected {
        r.status.applied_tag_keys.clone()
    } else {
        r.spec.tags.keys().cloned().collect()
    };
    settle(r, c, origin, applied_tag_keys, settings, now)
}

fn settle(
    r: &Resource,
    c: &Connection,
    origin: Origin,
    applied_tag_keys: Vec<String>,
    settings: &Settings,
    now: jiff::Timestamp,
) -> Step {
    let recreations = match origin {
        Origin::Created { recreation } => recreation,
        _ => r.status.recreations,
    };
    let (ready, stalled) = match c.state {
        ConnectionState::Connected => (
            Want::new(
                READY,
                true,
                "Connected",
                format!("connection {} is CONNECTED", c.id),
            ),
            Want::new(STALLED, false, "Reconciled", ""),
        ),
        ConnectionState::Pending => (
            Want::new(
                READY,
                false,
                "Pending",
                format!(
                    "connection {} is waiting for management account {} to accept it",
                    c.id, c.management_account_id
                ),
            ),
            Want::new(STALLED, false, "Reconciled", ""),
        ),
        ConnectionState::Rejected => {
            let message = format!(
                "management account {} rejected connection {}; delete and re-create the resource to request a new connection",
                c.management_account_id, c.id
            );
            (
                Want::new(READY, false, "Rejected", message.clone()),
                Want::new(STALLED, true, "Rejected", message),
            )
        }
    };
    let synced = Want::new(
        SYNCED,
        true,
        "ReconcileSuccess",
        "the spec is applied in Proton",
    );
    let status = Status {
        observed_generation: Some(r.generation),
        id: Some(c.id.clone()),
        arn: Some(c.arn.clone()),
        status: Some(c.state),
        environment_account_id: Some(c.environment_account_id.clone()),
        region: Some(
            r.spec
                .region
                .clone()
                .unwrap_or_else(|| settings.default_region.clone()),
        ),
        requested_at: Some(c.requested_at.clone()),
        last_modified_at: Some(c.last_modified_at.clone()),
        role_arn: c.roles.role_arn.clone(),
        codebuild_role_arn: c.roles.codebuild_role_arn.clone(),
        component_role_arn: c.roles.component_role_arn.clone(),
        applied_tag_keys,
        recreations,
        conditions: conditions::build(
            &r.status.conditions,
            &[ready, synced, stalled],
            r.generation,
            now,
        ),
    };

    let mut events = Vec::new();
    if origin == Origin::Adopted && r.status.id.as_deref() != Some(c.id.as_str()) {
        events.push(Note::normal(
            "Adopted",
            format!("adopted existing connection {}", c.id),
        ));
    }
    if r.status.status != Some(c.state) {
        match c.state {
            ConnectionState::Connected => events.push(Note::normal(
                "Connected",
                format!("connection {} is CONNECTED", c.id),
            )),
            ConnectionState::Rejected => events.push(Note::warning(
                "Rejected",
                format!(
                    "management account {} rejected connection {}",
                    c.management_account_id, c.id
                ),
            )),
            ConnectionState::Pending => {}
        }
    }

    Step::Settle(Settled {
        status,
        requeue: requeue_after(c, settings, now),
        events,
    })
}

/// PENDING is polled fast at first, then less often the longer the answer takes (a tenth of the
/// connection's age), never slower than the resync period.
fn requeue_after(c: &Connection, settings: &Settings, now: jiff::Timestamp) -> Duration {
    if c.state != ConnectionState::Pending {
        return settings.resync;
    }
    let age = c
        .requested_at
        .parse::<jiff::Timestamp>()
        .ok()
        .and_then(|t| Duration::try_from(now.duration_since(t)).ok())
        .unwrap_or_default();
    (age / 10).clamp(
        settings.pending_poll,
        settings.resync.max(settings.pending_poll),
    )
}

fn decide_deletion(r: &Resource, observed: &Observed) -> Step {
    if !r.has_finalizer {
        return Step::Nothing;
    }
    let retain = r.spec.deletion_policy == DeletionPolicy::Retain;
    match observed {
        Observed::Nothing => match (&r.status.id, &r.status.arn) {
            (Some(_), Some(arn)) if retain => release(arn.clone()),
            (Some(id), _) if !retain => Step::Delete { id: id.clone() },
            // The id never reached the status (or the ARN is missing): find the connection by
            // its uid tag, so a crash between Create and the status write orphans nothing.
            _ => Step::FindOwned {
                environment_name: r.spec.environment_name.clone(),
            },
        },
        Observed::Connection { connection, .. } => {
            if retain {
                release(connection.arn.clone())
            } else {
                Step::Delete {
                    id: connection.id.clone(),
                }
            }
        }
        // The recorded connection is gone, but a re-creation whose id never reached the status
        // may exist: search by the uid tag once before letting go.
        Observed::Gone { id: Some(_) } => Step::FindOwned {
            environment_name: r.spec.environment_name.clone(),
        },
        Observed::Gone { id: None } | Observed::Released => Step::RemoveFinalizer,
    }
}

/// Retain: strip the ownership tags so another resource may adopt the connection.
fn release(arn: String) -> Step {
    Step::Untag {
        arn,
        keys: vec![TAG_UID.into(), TAG_NAMESPACE.into(), TAG_NAME.into()],
        retain: true,
    }
}

/// The Event announcing a step that succeeded, if it deserves one.
pub fn event_for(step: &Step, result: &Observed) -> Option<Note> {
    let id = match result {
        Observed::Connection { connection, .. } => connection.id.clone(),
        _ => String::new(),
    };
    match step {
        Step::Create { recreation: 0, .. } => {
            Some(Note::normal("Created", format!("created connection {id}")))
        }
        Step::Create { recreation, .. } => Some(Note::normal(
            "Recreated",
            format!(
                "re-created connection as {id} (re-creation {recreation}) after it was deleted outside the controller"
            ),
        )),
        Step::Update { id, roles } => Some(Note::normal(
            "Updated",
            format!(
                "updated the role ARNs of connection {id}: roleArn={}, codebuildRoleArn={}, componentRoleArn={}",
                roles.role_arn.as_deref().unwrap_or("-"),
                roles.codebuild_role_arn.as_deref().unwrap_or("-"),
                roles.component_role_arn.as_deref().unwrap_or("-"),
            ),
        )),
        Step::Tag { tags, .. } => Some(Note::normal(
            "TagsUpdated",
            format!(
                "tagged connection with {}",
                tags.keys().cloned().collect::<Vec<_>>().join(", ")
            ),
        )),
        Step::Untag {
            keys,
            retain: false,
            ..
        } => Some(Note::normal(
            "TagsUpdated",
            format!("untagged {} from the connection", keys.join(", ")),
        )),
        Step::Untag {
            arn, retain: true, ..
        } => Some(Note::normal(
            "Retained",
            format!(
                "kept connection {arn} in Proton (deletionPolicy: Retain) and removed the ownership tags"
            ),
        )),
        Step::Delete { id } => Some(Note::normal("Deleted", format!("deleted connection {id}"))),
        _ => None,
    }
}

/// The status reporting that the recorded connection vanished out of band (written before it
/// is re-created, so the loss is on record even if the re-creation fails).
pub fn status_vanished(r: &Resource, id: &str, now: jiff::Timestamp) -> Status {
    let mut status = r.status.clone();
    let message = format!(
        "connection {id} no longer exists in Proton (deleted outside the controller); re-creating it"
    );
    let wanted = [
        Want::new(READY, false, "NotFound", message.clone()),
        Want::new(SYNCED, false, "NotFound", message),
        Want::new(STALLED, false, "Retrying", ""),
    ];
    status.conditions = conditions::build(&r.status.conditions, &wanted, r.generation, now);
    status
}

/// The Event for a connection that vanished out of band.
pub fn vanished_note(id: &str) -> Note {
    Note::warning(
        "NotFound",
        format!(
            "connection {id} no longer exists in Proton (deleted outside the controller); re-creating it"
        ),
    )
}

/// An error the reconcile ended on: an AWS call that failed, or a decision-level failure.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub reason: &'static str,
    pub message: String,
    pub retry: Retry,
}

impl From<&ProtonError> for Problem {
    fn from(e: &ProtonError) -> Self {
        Problem {
            reason: e.class.reason(),
            message: format!("{}: {}", e.operation, e.message),
            retry: e.class.retry(),
        }
    }
}

impl From<&Failure> for Problem {
    fn from(f: &Failure) -> Self {
        Problem {
            reason: f.reason,
            message: f.message.clone(),
            retry: Retry::Terminal,
        }
    }
}

/// The status after a reconcile ended on `problem`, and whether that problem is news (worth an
/// Event: the same error twice in a row is reported once). Whatever this reconcile learned about
/// the connection is kept, so a connection created just before the failure is never lost track of.
pub fn status_after_problem(
    r: &Resource,
    observed: &Observed,
    problem: &Problem,
    settings: &Settings,
    now: jiff::Timestamp,
) -> (Status, bool) {
    let mut status = r.status.clone();
    if let Observed::Connection {
        connection: c,
        origin,
        ..
    } = observed
        && *origin != Origin::Adopted
    {
        status.id = Some(c.id.clone());
        status.arn = Some(c.arn.clone());
        status.status = Some(c.state);
        status.environment_account_id = Some(c.environment_account_id.clone());
        status.requested_at = Some(c.requested_at.clone());
        status.last_modified_at = Some(c.last_modified_at.clone());
        status.role_arn = c.roles.role_arn.clone();
        status.codebuild_role_arn = c.roles.codebuild_role_arn.clone();
        status.component_role_arn = c.roles.component_role_arn.clone();
        status.region = Some(
            r.spec
                .region
                .clone()
                .unwrap_or_else(|| settings.default_region.clone()),
        );
        if let Origin::Created { recreation } = origin {
            status.recreations = *recreation;
        }
    }
    status.observed_generation = Some(r.generation);

    // AccessDenied (retried slowly) is reported as terminal too: only a fix made elsewhere
    // (IAM) ends it.
    let terminal = problem.retry != Retry::Backoff;
    let synced = Want::new(SYNCED, false, problem.reason, problem.message.clone());
    let stalled = if terminal {
        Want::new(STALLED, true, problem.reason, problem.message.clone())
    } else {
        Want::new(
            STALLED,
            false,
            "Retrying",
            format!("retrying: {}", problem.message),
        )
    };
    // A passing fault (throttling, a 5xx) says nothing about the connection: Ready keeps its
    // last value so a CONNECTED resource does not flap. Anything else means the spec is not
    // (and will not soon be) in effect.
    let previous_ready = r.status.condition(READY);
    let ready = match (problem.retry, previous_ready) {
        (Retry::Backoff, Some(prev)) => Want {
            type_: READY,
            status: prev.status == "True",
            reason: prev.reason.clone(),
            message: prev.message.clone(),
        },
        (Retry::Backoff, None) => Want::new(
            READY,
            false,
            "Creating",
            format!("waiting to retry: {}", problem.message),
        ),
        _ => Want::new(READY, false, problem.reason, problem.message.clone()),
    };
    status.conditions = conditions::build(
        &r.status.conditions,
        &[ready, synced, stalled],
        r.generation,
        now,
    );

    // Compared with the message as stored (conditions cut long messages), not the raw one.
    let previous_synced = r.status.condition(SYNCED);
    let stored_message = status.condition(SYNCED).map(|c| c.message.as_str());
    let news = previous_synced.is_none_or(|c| {
        c.status != "False"
            || c.reason != problem.reason
            || Some(c.message.as_str()) != stored_message
    });
    (status, news)
}

/// How long to wait before retrying after `problem`; `attempt` counts consecutive failures of
/// this resource (1 for the first). `jitter` is a number in [0, 1) supplied by the caller.
pub fn retry_after(problem: &Problem, attempt: u32, settings: &Settings, jitter: f64) -> Duration {
    const BASE: Duration = Duration::from_secs(1);
    const CAP: Duration = Duration::from_secs(300);
    const SLOW: Duration = Duration::from_secs(300);
    match problem.retry {
        Retry::Backoff => {
            let exp = BASE
                .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
                .min(CAP);
            // Full jitter on the upper half keeps a herd of resources from retrying in step.
            let jitter = if jitter.is_finite() {
                jitter.clamp(0.0, 1.0)
            } else {
                0.5
            };
            exp.mul_f64(0.5 + 0.5 * jitter)
        }
        Retry::Slow => SLOW.min(settings.resync.max(BASE)),
        Retry::Terminal => settings.resync,
    }
}

impl Step {
    /// Whether the step changes something in Proton.
    pub fn is_mutation(&self) -> bool {
        matches!(
            self,
            Step::Create { .. }
                | Step::Update { .. }
                | Step::Tag { .. }
                | Step::Untag { .. }
                | Step::Delete { .. }
        )
    }
}

/// The failure for a mutation Proton accepted but did not apply (asked for twice in one reconcile).
pub fn not_applied(step: &Step) -> Failure {
    let what = match step {
        Step::Update { .. } => "UpdateEnvironmentAccountConnection (role ARNs)",
        Step::Tag { .. } => "TagResource",
        Step::Untag { .. } => "UntagResource",
        Step::Create { .. } => "CreateEnvironmentAccountConnection",
        Step::Delete { .. } => "DeleteEnvironmentAccountConnection",
        _ => "the change",
    };
    Failure {
        reason: "NotApplied",
        message: format!(
            "Proton accepted {what} but still reports the old values; not repeating it until the spec changes or the next resync"
        ),
    }
}
