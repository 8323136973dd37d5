//! Which step comes next, from the resource and what this reconcile has observed.

use std::time::Duration;

use crate::aws::budget::CallClass;
use crate::aws::proton::{Connection, CreateRequest, ErrorClass, Namesake, Retry, RoleArns, Tags};
use crate::conditions::{self, SYNCED};
use crate::connection::api::{
    ADOPT_ANNOTATION, ConnectionState, DeletionPolicy, MAX_TAGS, ManagementPolicy,
    PAUSED_ANNOTATION, TAG_NAME, TAG_NAMESPACE, TAG_UID,
};

use super::events;
use super::observing;
use super::rules::{
    jittered, may_take_over, mismatches, not_due, region_not_allowed, requeue_after,
};
use super::status;
use super::{
    Intent, Observed, Origin, Problem, Recorded, Resource, Run, Settings, Settled, Step,
    client_token, desired_tags,
};

/// The region of the resource's connection: where it was pinned (the status, or the ARN of a
/// connection recorded before regions were pinned), else where a new one goes.
pub(super) fn region_of(r: &Resource, settings: &Settings) -> String {
    if let Some(region) = &r.status.region {
        return region.clone();
    }
    if let Some(region) = r.status.arn.as_deref().and_then(arn_region) {
        return region.to_string();
    }
    r.spec
        .region
        .as_deref()
        .or(r.default_region)
        .unwrap_or(&settings.default_region)
        .to_string()
}

/// `arn:PARTITION:proton:REGION:ACCOUNT:...` -> REGION.
fn arn_region(arn: &str) -> Option<&str> {
    arn.split(':').nth(3).filter(|r| !r.is_empty())
}

pub(super) fn decide(run: &Run, now: jiff::Timestamp) -> Step {
    if let Some(problem) = &run.problem {
        return run.report(problem.clone(), now);
    }
    // A record of the controller's that a tenant wrote: acting on it could search AWS for
    // years, or go to another region than the spec's. Nothing is done, and nothing let go,
    // until it is removed. Once a connection is recorded the intent is history, and not read.
    if let Some(problem) = run.r.intent_problem
        && run.status.id.is_none()
    {
        return run.report(problem.clone(), now);
    }
    if let Some((class, at)) = run.deferred {
        return Step::Defer {
            class,
            requeue: at.unwrap_or_else(|| deferral(class, run.settings, run.jitter)),
            status: run
                .learned()
                .map(|learned| Box::new(status::progress(&run.status, learned))),
        };
    }
    let step = if run.r.deleting {
        deletion(run, now)
    } else {
        upkeep(run, now)
    };
    // Nothing is done in AWS, and no intent to create is recorded, before the controller knows
    // which account it acts as, and that account is the one the connection was pinned to.
    let pins = matches!(
        step,
        Step::Record(_) | Step::AddFinalizer { intent: Some(_) }
    );
    if step.is_aws() || pins {
        if let Some(problem) = run.r.credentials_problem {
            return run.report(problem.clone(), now);
        }
        let Some(account) = &run.account else {
            return Step::WhoAmI;
        };
        if let Some(pinned) = &run.status.environment_account_id
            && pinned != account
        {
            return run.report(
                Problem::terminal(
                    "AccountMismatch",
                    format!(
                        "the connection belongs to account {pinned}, but the controller's credentials act as account {account}; nothing is created, changed or deleted until they match"
                    ),
                ),
                now,
            );
        }
    }
    step
}

/// Not being deleted: make Proton match the spec.
fn upkeep(run: &Run, now: jiff::Timestamp) -> Step {
    let r = &run.r;
    if r.paused {
        return paused(run, now);
    }
    if r.spec.management_policy == ManagementPolicy::Observe {
        return observing::upkeep(run, now);
    }
    if !run.has_finalizer {
        return add_finalizer(run, now);
    }
    if let Some(step) = not_due(run) {
        return step;
    }
    if !run.settings.region_allowed(&run.region) {
        return run.report(region_not_allowed(run), now);
    }
    match &run.observed {
        Observed::Nothing => match (&run.status.id, r.adopt_id) {
            (Some(id), _) => Step::Get { id: id.clone() },
            // Adoption is for a resource that never had a connection of its own: once one was
            // requested (or re-created after it vanished), the annotation is history.
            (None, Some(adopt))
                if run.status.create_sent_at.is_none() && run.status.recreations == 0 =>
            {
                match adoption_allowed(run) {
                    None => Step::ReadAdoptionPolicy,
                    Some(Ok(())) => Step::Get {
                        id: adopt.to_string(),
                    },
                    Some(Err(problem)) => run.report(problem, now),
                }
            }
            (None, _) => create(run, None, now),
        },
        Observed::Gone { id: Some(id) } if run.status.id.as_deref() == Some(id.as_str()) => {
            // The recorded connection was deleted behind the controller's back.
            create(run, Some(id), now)
        }
        Observed::Gone { id: Some(id) } if r.adopt_id == Some(id.as_str()) => run.report(
            Problem::terminal(
                "AdoptionNotFound",
                format!(
                    "annotation proton.eac.dev/adopt-id names connection {id}, which does not exist"
                ),
            ),
            now,
        ),
        // A connection found in this reconcile vanished before it was recorded.
        Observed::Gone { id: Some(id) } => run.report(
            Problem {
                reason: "NotFound",
                message: format!("connection {id} disappeared while it was being reconciled"),
                retry: Retry::Backoff,
            },
            now,
        ),
        Observed::CreateConflict => Step::FindOwned {
            environment_name: r.spec.environment_name.clone(),
        },
        Observed::Gone { id: None } => {
            // Create said Conflict and no connection of ours is listed. Within the settle
            // window ours may just not be listed yet (List is eventually consistent): retry
            // soon; after it, another connection holds the environment.
            let error = run.conflict.as_ref();
            let mut problem = error.map(Problem::from).unwrap_or_else(|| {
                Problem::terminal("Conflict", "no connection of this resource was found")
            });
            if let Some(namesake) = &run.namesake {
                // The hint first: a long message is cut at the end.
                problem.message = format!(
                    "{} (Proton: {})",
                    namesake_hint(r, namesake),
                    problem.message
                );
            }
            if create_may_be_in_flight(run, now).is_some() {
                problem.retry = Retry::Backoff;
                return run.report(problem, now);
            }
            // A Conflict proves the Create made nothing; a refusal of a token reused with other
            // parameters proves a connection was made with it once (found or not).
            match error.map(|e| e.class) {
                Some(ErrorClass::Conflict) => run.report_nothing_of_ours(problem, now),
                _ => run.report(problem, now),
            }
        }
        Observed::Connection {
            connection,
            tags,
            origin,
        } => sync(run, connection, tags.as_ref(), *origin, now),
        Observed::Released => Step::Nothing,
    }
}

/// What to say of a connection in the environment tagged for a resource of this namespace and
/// name under another uid. It is not taken over: the uid tag is what keeps one resource from
/// taking another's connection, and a resource of this name in another cluster that shares the
/// account would have made it just the same. Whoever knows it is this resource's says so.
fn namesake_hint(r: &Resource, n: &Namesake) -> String {
    format!(
        "connection {id} in this environment is tagged for a resource named {namespace}/{name} \
         with another uid ({owner:?}): one of this name before this one (its cluster rebuilt, or \
         restored without its status), or one in another cluster. If it is this resource's, \
         remove its ownership tags (aws proton untag-resource --resource-arn {arn} --tag-keys \
         {TAG_UID} {TAG_NAMESPACE} {TAG_NAME}) and annotate this resource \
         {ADOPT_ANNOTATION}={id} (where adoption is allowed)",
        id = n.id,
        arn = n.arn,
        owner = n.owner,
        namespace = r.namespace,
        name = r.name,
    )
}

/// Paused by annotation: no AWS call; the status says so (written once), and the resource is
/// looked at again only when something changes (the resync is a safety net that costs nothing).
fn paused(run: &Run, now: jiff::Timestamp) -> Step {
    let r = &run.r;
    let message = if r.deleting {
        format!(
            "annotation {PAUSED_ANNOTATION} is \"true\": the connection is neither deleted nor released, and the resource stays until the annotation is removed"
        )
    } else {
        format!(
            "annotation {PAUSED_ANNOTATION} is \"true\": no AWS call is made for this resource until it is removed"
        )
    };
    let news = run
        .status
        .condition(SYNCED)
        .is_none_or(|c| c.reason != "Paused");
    Step::Settle(Box::new(Settled {
        status: status::paused(r, &run.status, &message, now),
        requeue: jittered(run.settings.resync, run.jitter),
        events: news
            .then(|| events::Note::normal("Paused", message))
            .into_iter()
            .collect(),
    }))
}

/// The finalizer, with the intent to create when the next thing is a first Create (the account
/// must be known for that: WhoAmI first).
fn add_finalizer(run: &Run, now: jiff::Timestamp) -> Step {
    let r = &run.r;
    let creates_next = r.quiet.is_none()
        && run.status.id.is_none()
        && run.status.create_sent_at.is_none()
        && run.status.recreations == 0
        && r.adopt_id.is_none()
        && matches!(run.observed, Observed::Nothing)
        && run.settings.region_allowed(&run.region);
    if !creates_next {
        return Step::AddFinalizer { intent: None };
    }
    let Some(account) = &run.account else {
        return Step::WhoAmI;
    };
    Step::AddFinalizer {
        intent: Some(Intent {
            region: run.region.clone(),
            account: account.clone(),
            sent_at: status::whole_seconds(now).to_string(),
        }),
    }
}

/// Whether the resource may adopt: None while the namespace's opt-in has not been read.
fn adoption_allowed(run: &Run) -> Option<Result<(), Problem>> {
    may_take_over(run, "annotation proton.eac.dev/adopt-id is set")
}

/// Create the resource's connection: first record the intent (pinning region and account),
/// then send the Create with the token of this re-creation.
fn create(run: &Run, vanished: Option<&str>, now: jiff::Timestamp) -> Step {
    let r = &run.r;
    let recreation = match vanished {
        Some(_) => run.status.recreations + 1,
        None => run.status.recreations,
    };
    let account = run.account.as_deref().unwrap_or_default();
    let intent_fresh = vanished.is_none()
        && run.status.region.as_deref() == Some(run.region.as_str())
        && run.status.environment_account_id.as_deref() == Some(account)
        && run.create_send_by().is_some_and(|by| now < by);
    if !intent_fresh {
        // WhoAmI comes first: a Create needs the account to pin.
        if run.account.is_none() {
            return Step::WhoAmI;
        }
        let status = status::intent(
            r,
            &run.status,
            &run.region,
            account,
            recreation,
            vanished,
            now,
        );
        let events = vanished.map(events::vanished).into_iter().collect();
        return Step::Record(Box::new(Recorded {
            status,
            events,
            before_create: true,
        }));
    }
    Step::Create {
        request: CreateRequest {
            client_token: client_token(r.uid, recreation),
            environment_name: r.spec.environment_name.clone(),
            management_account_id: r.spec.management_account_id.clone(),
            roles: desired_roles(r),
            tags: desired_tags(r),
        },
        region: run.region.clone(),
        recreation,
        replay: run.replay,
    }
}

/// While a Create sent earlier may still bring a connection into a List: until when.
fn create_may_be_in_flight(run: &Run, now: jiff::Timestamp) -> Option<jiff::Timestamp> {
    let sent: jiff::Timestamp = run.status.create_sent_at.as_deref()?.parse().ok()?;
    // A Create is sent at most one settle window after the recorded time (the intent is
    // written again before a later one), and shows in List at most one window after it is sent.
    let window = jiff::SignedDuration::try_from(run.settings.create_settle.saturating_mul(2))
        .unwrap_or(jiff::SignedDuration::MAX);
    let until = sent.saturating_add(window).ok()?;
    (now < until).then_some(until)
}

fn desired_roles(r: &Resource) -> RoleArns {
    RoleArns {
        role_arn: r.spec.role_arn.clone(),
        codebuild_role_arn: r.spec.codebuild_role_arn.clone(),
        component_role_arn: r.spec.component_role_arn.clone(),
    }
}

/// Whether Proton's roles differ from the spec. `roleArn` is compared only when the spec sets
/// it (Proton requires one on every connection, so "none" cannot be asked for); the CodeBuild and
/// component roles are compared exactly, so removing one from the spec clears it.
fn roles_drifted(r: &Resource, observed: &RoleArns) -> bool {
    let desired = desired_roles(r);
    (desired.role_arn.is_some() && desired.role_arn != observed.role_arn)
        || desired.codebuild_role_arn != observed.codebuild_role_arn
        || desired.component_role_arn != observed.component_role_arn
}

/// Whether the current generation was fully applied by an earlier reconcile.
pub(super) fn generation_applied(run: &Run) -> bool {
    conditions::is_true(&run.status.conditions, SYNCED, Some(run.r.generation))
}

fn sync(
    run: &Run,
    c: &Connection,
    tags: Option<&Tags>,
    origin: Origin,
    now: jiff::Timestamp,
) -> Step {
    let r = &run.r;
    if origin == Origin::Adopted {
        let mut mismatches = mismatches(r, c);
        // A connection is the environment account's: one these credentials can read but do not
        // own (they act as its management account) is not theirs to change or delete.
        if let Some(account) = &run.account
            && c.environment_account_id != *account
        {
            mismatches.push(format!(
                "its environment account is {:?} in Proton, but the credentials here act as account {account:?}",
                c.environment_account_id
            ));
        }
        if !mismatches.is_empty() {
            return run.report(
                Problem::terminal(
                    "AdoptionMismatch",
                    format!(
                        "cannot adopt connection {}: {}",
                        c.id,
                        mismatches.join("; ")
                    ),
                ),
                now,
            );
        }
        // Ownership is judged by the uid tag: read the tags before anything can be changed.
        let Some(tags) = tags else {
            return Step::ListTags { arn: c.arn.clone() };
        };
        if let Some(owner) = tags.get(TAG_UID)
            && owner != r.uid
        {
            return run.report(
                Problem::terminal(
                    "AdoptionMismatch",
                    format!(
                        "cannot adopt connection {}: it is owned by another resource (tag {TAG_UID}={owner})",
                        c.id
                    ),
                ),
                now,
            );
        }
    }
    // A REJECTED connection accepts no changes; it stays as the record of the answer.
    if c.state != ConnectionState::Rejected {
        if roles_drifted(r, &c.roles) {
            return Step::Update {
                id: c.id.clone(),
                roles: desired_roles(r),
            };
        }
        // Tags are read only when something may have changed: a new generation, a connection
        // not yet fully applied, or one that was just created, found or adopted. An idle
        // resource costs one Get per resync.
        let check_tags = !generation_applied(run) || origin != Origin::Recorded;
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
            let removed: Vec<String> = run
                .status
                .applied_tag_keys
                .iter()
                .filter(|k| !desired.contains_key(*k) && tags.contains_key(*k))
                .cloned()
                .collect();
            // Tags are added before the removed ones go, unless together they would pass
            // Proton's limit (keys renamed on a connection near it): the TagResource would be
            // refused, for a spec the CRD accepts.
            let new_keys = missing.keys().filter(|k| !tags.contains_key(*k)).count();
            let removed_first = tags.len() + new_keys > MAX_TAGS && !removed.is_empty();
            if !missing.is_empty() && !removed_first {
                return Step::Tag {
                    arn: c.arn.clone(),
                    tags: missing,
                };
            }
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
        run.status.applied_tag_keys.clone()
    } else {
        r.spec.tags.keys().cloned().collect()
    };
    let status = status::settled(
        r,
        &run.status,
        c,
        &run.region,
        origin.recreations(&run.status),
        applied_tag_keys,
        now,
    );
    let mut events = Vec::new();
    if origin == Origin::Adopted && run.status.id.as_deref() != Some(c.id.as_str()) {
        events.push(events::Note::normal(
            "Adopted",
            format!("adopted existing connection {}", c.id),
        ));
    }
    events.extend(events::state_change(run.status.status, c));
    Step::Settle(Box::new(Settled {
        status,
        requeue: requeue_after(c, run.settings, now, run.jitter),
        events,
    }))
}

/// How long a call the budget had no room for (and booked nothing) waits: resync reads come
/// back after a tenth of the resync period, jittered, so a busy budget stretches their interval.
fn deferral(class: CallClass, settings: &Settings, jitter: f64) -> Duration {
    let base = match class {
        CallClass::Resync => {
            (settings.resync / 10).clamp(Duration::from_secs(1), Duration::from_secs(60))
        }
        _ => Duration::from_secs(1),
    };
    base.mul_f64(0.5 + jitter.clamp(0.0, 1.0))
}

/// Being deleted: delete (or retain) the connection, then let the resource go. Nothing is
/// released while a connection of the resource may exist that the controller cannot see yet.
fn deletion(run: &Run, now: jiff::Timestamp) -> Step {
    if !run.has_finalizer {
        return Step::Nothing;
    }
    // An observed connection is never deleted: the resource just goes.
    if run.r.spec.management_policy == ManagementPolicy::Observe {
        return Step::RemoveFinalizer;
    }
    let status = &run.status;
    // Never sent a Create and holds no connection: nothing in AWS can be ours.
    if status.id.is_none() && status.create_sent_at.is_none() {
        return Step::RemoveFinalizer;
    }
    if run.r.paused {
        return paused(run, now);
    }
    if !run.settings.region_allowed(&run.region) {
        return run.report(region_not_allowed(run), now);
    }
    let retain = run.r.spec.deletion_policy == DeletionPolicy::Retain;
    let find = || Step::FindOwned {
        environment_name: run.r.spec.environment_name.clone(),
    };
    match &run.observed {
        Observed::Nothing => match (&status.id, &status.arn) {
            (Some(_), Some(arn)) if retain => release(arn.clone()),
            (Some(id), _) if !retain => Step::Delete { id: id.clone() },
            // The id never reached the status (or the ARN is missing): find the connection by
            // its uid tag, so a crash between Create and the status write orphans nothing.
            _ => find(),
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
        // The recorded connection is gone. Only a Create still in flight can have made another.
        Observed::Gone { id: Some(_) } if status.create_sent_at.is_some() => find(),
        Observed::Gone { id: None } => match create_may_be_in_flight(run, now) {
            Some(until) => {
                let wait = Duration::try_from(until.duration_since(now))
                    .unwrap_or_default()
                    .clamp(Duration::from_secs(1), Duration::from_secs(5));
                Step::Settle(Box::new(Settled {
                    status: status::awaiting_create(&run.r, status, until, now),
                    requeue: wait,
                    events: Vec::new(),
                }))
            }
            None => Step::RemoveFinalizer,
        },
        Observed::Gone { .. } | Observed::Released => Step::RemoveFinalizer,
        // Not reachable on deletion (no Create is sent); search like any unrecorded connection.
        Observed::CreateConflict => find(),
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
