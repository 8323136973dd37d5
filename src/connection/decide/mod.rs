//! The reconcile decision: pure, synchronous, no I/O.
//!
//! A reconcile is a [`Run`]: [`Run::next`] names the one next [`Step`] from the resource and what
//! this reconcile has learned so far; the controller executes it and hands the raw result back to
//! [`Run::record`], which folds it into what is known ([`Observed`]); and again, until the step is
//! final (settle, report a problem, release, idle). Everything the controller does, and every
//! meaning it gives to an answer (a NotFound, a replayed Create, a conflict), is decided here and
//! tested as a table without Kubernetes or AWS.
//!
//! - `next`: which step comes next;
//! - `observe`: what an answer means (the fold);
//! - `status`: the status written for each outcome;
//! - `events`: the text of Events;
//! - `rules`: what managed and observed connections share (due, region, take-over, re-reads);
//! - `memory`: what the controller keeps between reconciles, and the status it reconciles from.

mod events;
mod memory;
mod next;
mod observe;
mod observing;
mod rules;
mod status;

use std::time::Duration;

use crate::aws::budget::CallClass;
use crate::aws::proton::{Connection, CreateRequest, Namesake, Owned, ProtonError, RoleArns, Tags};
use crate::connection::api::{
    EnvironmentAccountConnectionSpec as Spec, EnvironmentAccountConnectionStatus as Status,
    TAG_NAME, TAG_NAMESPACE, TAG_UID,
};

pub use crate::reconciler::retry::{Problem, retry_after};
pub use events::{Note, event_for};
pub use memory::{INTENT_NOT_TRUSTED, Intent, Memory, Written, effective_status};
pub use observe::{Observed, Origin, Progress};
pub use rules::{jittered, listed_polls_until, pending_interval, pending_interval_since};

/// Who may adopt existing connections with the `proton.eac.dev/adopt-id` annotation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum AdoptionPolicy {
    /// Only in namespaces a cluster admin labelled `proton.eac.dev/adoption=allowed`.
    #[default]
    NamespaceOptIn,
    /// In every namespace (clusters without untrusted tenants).
    Everywhere,
    /// Nowhere.
    Disabled,
}

/// Controller-wide settings the decision depends on.
#[derive(Clone, Debug)]
pub struct Settings {
    /// How often a settled resource is looked at again.
    pub resync: Duration,
    /// The longest interval between polls of a PENDING connection (they start at
    /// [`rules::FAST_POLL`] and grow with its age; at most `resync`).
    pub pending_poll: Duration,
    /// Region of new connections whose spec names none.
    pub default_region: String,
    /// Regions the cluster admin allows; empty: any.
    pub allowed_regions: Vec<String>,
    pub adoption: AdoptionPolicy,
    /// How long after a Create was sent its connection may still appear in a List: the AWS call
    /// timeout plus List's eventual-consistency delay. Deletion searches for twice this long
    /// after the last recorded Create (see [`Status::create_sent_at`]).
    pub create_settle: Duration,
}

impl Settings {
    pub fn region_allowed(&self, region: &str) -> bool {
        self.allowed_regions.is_empty() || self.allowed_regions.iter().any(|r| r == region)
    }
}

/// What the decision knows about the Kubernetes resource at the start of a reconcile.
#[derive(Clone, Debug)]
pub struct Resource<'a> {
    pub uid: &'a str,
    pub namespace: &'a str,
    pub name: &'a str,
    pub generation: i64,
    pub spec: &'a Spec,
    /// The status to reconcile from: the recorded one, or what this controller wrote or learned
    /// since (see [`effective_status`]).
    pub status: &'a Status,
    pub deleting: bool,
    pub has_finalizer: bool,
    /// The `proton.eac.dev/adopt-id` annotation, trimmed, if not empty.
    pub adopt_id: Option<&'a str>,
    /// Set when nothing changed since the last settled reconcile and it is not due yet: how long
    /// until it is. Only a stripped finalizer is then put back.
    pub quiet: Option<Duration>,
    /// Consecutive failed reconciles so far, for the backoff.
    pub failures: u32,
    /// The controller sees this resource for the first time since it started leading.
    pub first_sight: bool,
    /// Made due by a nudge: what it waits for has happened (its request was decided here, say).
    /// Its reads are then work, not a routine poll the poll share may hold back for a minute.
    pub nudged: bool,
    /// The `proton.eac.dev/paused` annotation is `"true"`: no AWS call at all.
    pub paused: bool,
    /// Why the resource's namespace has no credentials (an ambiguous or unreadable account
    /// mapping): reported instead of any AWS call.
    pub credentials_problem: Option<&'a Problem>,
    /// Why the `proton.eac.dev/create-intent` annotation is not taken as the controller's own
    /// record (see [`Intent::distrust`]): reported instead of anything else, the annotation
    /// left out of `status`.
    pub intent_problem: Option<&'a Problem>,
    /// Region of a new connection whose spec names none, set by the namespace's account
    /// mapping (else the controller's default).
    pub default_region: Option<&'a str>,
}

/// The one next thing to do.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    // Kubernetes
    /// Add the finalizer (before anything can be created), with the intent to create when a
    /// Create comes next: one write instead of two.
    AddFinalizer { intent: Option<Intent> },
    /// Read the namespace's labels: has the cluster admin allowed adoption there?
    ReadAdoptionPolicy,
    /// Write this status now and go on (the intent to create, a vanished connection).
    Record(Box<Recorded>),

    // AWS
    /// Which account the controller's credentials act as (STS GetCallerIdentity, cached).
    WhoAmI,
    /// `GetEnvironmentAccountConnection`.
    Get { id: String },
    /// List the environment's connections and keep the one tagged with this resource's uid.
    FindOwned { environment_name: String },
    /// List the environment's connections to the management account: the one to observe.
    Lookup {
        environment_name: String,
        management_account_id: String,
    },
    /// `ListTagsForResource`.
    ListTags { arn: String },
    /// `CreateEnvironmentAccountConnection` in `region`. `replay`: a Create with this token may
    /// have been sent before, so the answer may be an existing connection.
    Create {
        request: CreateRequest,
        region: String,
        recreation: u32,
        replay: bool,
    },
    /// `UpdateEnvironmentAccountConnection`.
    Update { id: String, roles: RoleArns },
    /// `TagResource` with only the tags that differ.
    Tag { arn: String, tags: Tags },
    /// `UntagResource` with only the keys to remove; `retain`: releasing on deletion.
    Untag {
        arn: String,
        keys: Vec<String>,
        retain: bool,
    },
    /// `DeleteEnvironmentAccountConnection`.
    Delete { id: String },

    // Final
    /// Done: write the status (if it changed), publish the Events, look again after `requeue`.
    Settle(Box<Settled>),
    /// Ended on a problem: write the status, publish an Event if it is news, retry after `requeue`.
    Report(Box<Reported>),
    /// Remove the finalizer: the resource may go.
    RemoveFinalizer,
    /// Nothing is due: look again after `requeue`.
    Idle { requeue: Duration },
    /// The call budget has no room for this class of call now: come back after `requeue`
    /// (a slot may be booked then). `status`: what this reconcile learned before (a connection
    /// just created), to record so it is not asked for again.
    Defer {
        class: crate::aws::budget::CallClass,
        requeue: Duration,
        status: Option<Box<Status>>,
    },
    /// Not ours to act on (being deleted and never finalized).
    Nothing,
}

/// A status to write in the middle of a reconcile.
#[derive(Clone, Debug, PartialEq)]
pub struct Recorded {
    pub status: Status,
    pub events: Vec<Note>,
    /// The write announces a Create: the Create's slot in the call budget is taken before the
    /// write, so a Create the budget has no room for is neither sent nor announced.
    pub before_create: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Settled {
    pub status: Status,
    pub requeue: Duration,
    /// State transitions worth an Event.
    pub events: Vec<Note>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Reported {
    pub status: Status,
    pub problem: Problem,
    /// The Event, when the problem is news.
    pub event: Option<Note>,
    pub requeue: Duration,
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

    /// Whether the step calls AWS.
    pub fn is_aws(&self) -> bool {
        self.is_mutation()
            || matches!(
                self,
                Step::WhoAmI
                    | Step::Get { .. }
                    | Step::FindOwned { .. }
                    | Step::Lookup { .. }
                    | Step::ListTags { .. }
            )
    }

    /// Whether the reconcile ends with this step.
    pub fn is_final(&self) -> bool {
        matches!(
            self,
            Step::Settle(_)
                | Step::Report(_)
                | Step::RemoveFinalizer
                | Step::Idle { .. }
                | Step::Defer { .. }
                | Step::Nothing
        )
    }

    /// Short name for logs and tests.
    pub fn name(&self) -> &'static str {
        match self {
            Step::AddFinalizer { .. } => "AddFinalizer",
            Step::ReadAdoptionPolicy => "ReadAdoptionPolicy",
            Step::Record(_) => "Record",
            Step::WhoAmI => "WhoAmI",
            Step::Get { .. } => "Get",
            Step::FindOwned { .. } => "FindOwned",
            Step::Lookup { .. } => "Lookup",
            Step::ListTags { .. } => "ListTags",
            Step::Create { .. } => "Create",
            Step::Update { .. } => "Update",
            Step::Tag { .. } => "Tag",
            Step::Untag { .. } => "Untag",
            Step::Delete { .. } => "Delete",
            Step::Settle(_) => "Settle",
            Step::Report(_) => "Report",
            Step::RemoveFinalizer => "RemoveFinalizer",
            Step::Idle { .. } => "Idle",
            Step::Defer { .. } => "Defer",
            Step::Nothing => "Nothing",
        }
    }
}

/// The raw answer to a step that succeeded, before it is given a meaning.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// A Kubernetes write, or Tag / Untag / Delete.
    Done,
    /// AddFinalizer wrote the intent to create too.
    IntentRecorded,
    /// WhoAmI: the account id.
    Account(String),
    /// ReadAdoptionPolicy.
    AdoptionAllowed(bool),
    /// Get, Create, Update.
    Connection(Connection),
    /// FindOwned: the connection carrying this resource's uid tag, with its tags; else one a
    /// resource of this namespace and name made, if any.
    Found(Owned),
    /// Lookup: the environment's connections to the management account (List summaries).
    Listed(Vec<Connection>),
    /// ListTags.
    Tags(Tags),
}

/// A reconcile gives up after this many steps (and is retried with backoff).
pub const MAX_STEPS: usize = 24;

/// One reconcile of one resource, from its first step to its final one.
#[derive(Clone, Debug)]
pub struct Run<'a> {
    r: Resource<'a>,
    settings: &'a Settings,
    /// Random number in [0, 1) for the backoff's jitter.
    jitter: f64,
    /// The status as it stands now: the resource's, then what this reconcile wrote.
    status: Status,
    has_finalizer: bool,
    /// Where the connection is or will be; fixed for the whole reconcile.
    region: String,
    observed: Observed,
    account: Option<String>,
    adoption_allowed: Option<bool>,
    /// A Create with the current token may have been sent before this reconcile.
    replay: bool,
    /// Create answered ConflictException: the error, reported if our connection is not found.
    conflict: Option<ProtonError>,
    /// The search after a refused Create found none of ours, but this namesake's (named in
    /// the report).
    namesake: Option<Namesake>,
    /// A call the budget had no room for: its class, and when a slot is booked (if one is).
    deferred: Option<(CallClass, Option<Duration>)>,
    /// When this reconcile only reads a settled connection: poll (PENDING) or resync.
    routine: Option<CallClass>,
    /// Mutations already sent: asking for one again means Proton accepted it without applying
    /// it, and repeating it would only loop.
    sent: Vec<Step>,
    steps: usize,
    problem: Option<Problem>,
}

impl<'a> Run<'a> {
    pub fn new(r: Resource<'a>, settings: &'a Settings, jitter: f64) -> Run<'a> {
        let region = next::region_of(&r, settings);
        let routine = if r.nudged { None } else { routine_read(&r) };
        Run {
            status: r.status.clone(),
            has_finalizer: r.has_finalizer,
            replay: r.status.create_sent_at.is_some() && r.status.id.is_none(),
            r,
            settings,
            jitter,
            region,
            observed: Observed::Nothing,
            account: None,
            adoption_allowed: None,
            conflict: None,
            namesake: None,
            deferred: None,
            routine,
            sent: Vec::new(),
            steps: 0,
            problem: None,
        }
    }

    /// The region every AWS call of this reconcile goes to.
    pub fn region(&self) -> &str {
        &self.region
    }

    /// Until when a Create may be sent: one settle window after the intent on record (a
    /// deletion's search counts on it; see [`Settings::create_settle`]). None: no intent, or
    /// its time cannot be read.
    pub fn create_send_by(&self) -> Option<jiff::Timestamp> {
        let at: jiff::Timestamp = self.status.create_sent_at.as_deref()?.parse().ok()?;
        let settle = jiff::SignedDuration::try_from(self.settings.create_settle).ok()?;
        at.checked_add(settle).ok()
    }

    /// What is known so far.
    pub fn observed(&self) -> &Observed {
        &self.observed
    }

    /// The budget class of an AWS step: mutations, and every read that is not the routine read
    /// of a settled connection (a first observation, a deletion, a change), are work.
    pub fn class_of(&self, step: &Step) -> CallClass {
        match (step, self.routine) {
            (Step::Get { .. } | Step::ListTags { .. }, Some(routine)) => routine,
            _ => CallClass::Work,
        }
    }

    /// The next step.
    pub fn next(&mut self, now: jiff::Timestamp) -> Step {
        self.steps += 1;
        let mut step = if self.steps > MAX_STEPS {
            self.report(
                Problem {
                    reason: "Unsettled",
                    message: format!(
                        "the reconcile did not settle within {MAX_STEPS} steps; retrying later"
                    ),
                    retry: crate::aws::proton::Retry::Backoff,
                },
                now,
            )
        } else {
            next::decide(self, now)
        };
        if step.is_mutation() {
            if self.sent.contains(&step) {
                step = self.report(not_applied(&step), now);
            } else {
                self.sent.push(step.clone());
            }
        }
        step
    }

    /// What this reconcile learned before its next call was deferred, for the next reconcile
    /// to go on from ([`Run::resume`]): None unless the run was deferred after reading
    /// something worth keeping.
    pub fn carry_over(&self) -> Option<Progress> {
        self.deferred?;
        Progress::keeps(&self.observed).then(|| Progress {
            observed: self.observed.clone(),
            account: self.account.clone(),
            adoption_allowed: self.adoption_allowed,
            conflict: self.conflict.clone(),
        })
    }

    /// Goes on from what the last reconcile learned before it was deferred, so its booked slot
    /// is spent on the call it was refused, not on reading the connection again. The caller
    /// vouches that nothing changed since (generation, annotations, credentials, deletion and
    /// the recorded id); a connection read or created as the resource's own that is not the
    /// recorded one, or a run that already learned something, is not resumed.
    pub fn resume(&mut self, progress: Progress) {
        if !matches!(self.observed, Observed::Nothing) || !Progress::keeps(&progress.observed) {
            return;
        }
        let consistent = match &progress.observed {
            Observed::Connection {
                connection, origin, ..
            } => match origin {
                // Taken up by id or by List: the recorded id says nothing about it.
                Origin::Adopted | Origin::Listed => true,
                Origin::Recorded | Origin::Created { .. } | Origin::Found => {
                    self.status.id.as_deref() == Some(connection.id.as_str())
                }
            },
            Observed::Gone { id } => id.is_some() && self.status.id == *id,
            // Only with the refusal it stands for (the problem reported if nothing is found).
            Observed::CreateConflict => progress.conflict.is_some(),
            _ => false,
        };
        if !consistent {
            return;
        }
        if matches!(progress.observed, Observed::CreateConflict) {
            self.conflict = progress.conflict;
        }
        self.observed = progress.observed;
        self.account = self.account.take().or(progress.account);
        self.adoption_allowed = self.adoption_allowed.or(progress.adoption_allowed);
    }

    /// Folds the answer to `step` into what is known. Returns the Event the change deserves.
    pub fn record(&mut self, step: &Step, result: Result<Outcome, ProtonError>) -> Option<Note> {
        observe::record(self, step, result)
    }

    /// The connection this reconcile learned about (not an unchecked adoption), with its
    /// region and re-creation count, to record even if the reconcile ends early.
    pub(super) fn learned(&self) -> Option<(&Connection, &str, u32)> {
        match &self.observed {
            Observed::Connection {
                connection, origin, ..
            } if !matches!(origin, Origin::Adopted | Origin::Listed) => Some((
                connection,
                self.region.as_str(),
                origin.recreations(&self.status),
            )),
            _ => None,
        }
    }

    /// The final step for `problem`: status, Event if news, and the backoff.
    fn report(&self, problem: Problem, now: jiff::Timestamp) -> Step {
        self.report_from(&self.status, problem, now)
    }

    /// [`Run::report`], after a search found no connection of this resource's while no Create
    /// of its may still be in flight: the Creates recorded made nothing, so their record goes
    /// (and with it the intent annotation, which a restore may have brought back from a former
    /// resource of this name), and the resource may adopt. One that asks to (`adopt-id`) comes
    /// back for it as after a passing fault (a second, doubling with each failure in a row):
    /// its annotation did not change, so nothing else would bring it back before the
    /// Conflict's retry (a minute, growing to the resync period).
    fn report_nothing_of_ours(&self, problem: Problem, now: jiff::Timestamp) -> Step {
        let mut status = self.status.clone();
        status.create_sent_at = None;
        let adopts_next = self.r.adopt_id.is_some() && status.recreations == 0;
        let mut step = self.report_from(&status, problem, now);
        if adopts_next && let Step::Report(reported) = &mut step {
            let soon = retry_after(
                crate::aws::proton::Retry::Backoff,
                self.r.failures.saturating_add(1),
                self.settings.resync,
                self.jitter,
            );
            reported.requeue = reported.requeue.min(soon);
        }
        step
    }

    fn report_from(&self, current: &Status, problem: Problem, now: jiff::Timestamp) -> Step {
        let learned = self.learned();
        let (status, news) = status::after_problem(&self.r, current, learned, &problem, now);
        let event = news.then(|| Note::warning(problem.reason, problem.message.clone()));
        let requeue = retry_after(
            problem.retry,
            self.r.failures.saturating_add(1),
            self.settings.resync,
            self.jitter,
        );
        Step::Report(Box::new(Reported {
            status,
            problem,
            event,
            requeue,
        }))
    }
}

impl crate::reconciler::drive::Decision for Run<'_> {
    type Step = Step;
    type Outcome = Outcome;

    fn next_step(&mut self, now: jiff::Timestamp) -> Step {
        self.next(now)
    }

    fn is_final(step: &Step) -> bool {
        step.is_final()
    }

    fn fold(&mut self, step: &Step, answer: Result<Outcome, ProtonError>) -> Option<Note> {
        self.record(step, answer)
    }
}

/// Whether this reconcile only reads a settled connection, and of which class: the connection
/// is recorded, its spec applied, nothing in flight, nothing being deleted.
fn routine_read(r: &Resource) -> Option<CallClass> {
    // An observed connection has no finalizer: nothing is done on deletion.
    let settled = !r.deleting
        && (r.has_finalizer
            || r.spec.management_policy == crate::connection::api::ManagementPolicy::Observe)
        && r.status.id.is_some()
        && r.status.create_sent_at.is_none()
        && crate::conditions::is_true(
            &r.status.conditions,
            crate::conditions::SYNCED,
            Some(r.generation),
        );
    let class = match r.status.status {
        Some(crate::connection::api::ConnectionState::Pending) => CallClass::Poll,
        _ => CallClass::Resync,
    };
    settled.then_some(class)
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

/// The failure for a mutation Proton accepted but did not apply (asked for twice in one reconcile).
fn not_applied(step: &Step) -> Problem {
    let what = match step {
        Step::Update { .. } => "UpdateEnvironmentAccountConnection (role ARNs)",
        Step::Tag { .. } => "TagResource",
        Step::Untag { .. } => "UntagResource",
        Step::Create { .. } => "CreateEnvironmentAccountConnection",
        Step::Delete { .. } => "DeleteEnvironmentAccountConnection",
        _ => "the change",
    };
    Problem::terminal(
        "NotApplied",
        format!(
            "Proton accepted {what} but still reports the old values; not repeating it until the spec changes or the next resync"
        ),
    )
}
