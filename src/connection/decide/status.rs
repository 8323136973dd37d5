//! Status rendering: the `status` the controller writes for each way a reconcile can end or pause.
//!
//! Every function here starts from the recorded status, so whatever is not about this moment
//! (the pinned region and account, the re-creation count, condition transition times) carries
//! over unchanged, and an unchanged state renders an identical status (and costs no write).

use crate::aws::proton::Connection;
use crate::conditions::{self, READY, STALLED, SYNCED, Want};
use crate::connection::api::{ConnectionState, EnvironmentAccountConnectionStatus as Status};

use super::{Problem, Resource};

/// Copies what Proton reports about the connection into `status`, and pins its account.
fn record_connection(status: &mut Status, c: &Connection, region: &str) {
    status.id = Some(c.id.clone());
    status.arn = Some(c.arn.clone());
    status.status = Some(c.state);
    status.environment_account_id = Some(c.environment_account_id.clone());
    status.region = Some(region.to_string());
    status.requested_at = Some(c.requested_at.clone());
    status.last_modified_at = Some(c.last_modified_at.clone());
    status.role_arn = c.roles.role_arn.clone();
    status.codebuild_role_arn = c.roles.codebuild_role_arn.clone();
    status.component_role_arn = c.roles.component_role_arn.clone();
    // The answer of the Create is on record: nothing is in flight any more.
    status.create_sent_at = None;
}

/// The status once the connection is in step with the spec.
pub fn settled(
    r: &Resource,
    recorded: &Status,
    c: &Connection,
    region: &str,
    recreations: u32,
    applied_tag_keys: Vec<String>,
    now: jiff::Timestamp,
) -> Status {
    let synced = Want::new(
        SYNCED,
        true,
        "ReconcileSuccess",
        "the spec is applied in Proton",
    );
    let mut status = with_connection(r, recorded, c, region, synced, now);
    status.applied_tag_keys = applied_tag_keys;
    status.recreations = recreations;
    status
}

/// The status of an observe-only resource following `c`: what Proton reports, with `synced`
/// saying it is only observed.
pub fn observed(
    r: &Resource,
    recorded: &Status,
    c: &Connection,
    region: &str,
    synced: Want,
    now: jiff::Timestamp,
) -> Status {
    with_connection(r, recorded, c, region, synced, now)
}

/// The status of an observe-only resource with no connection to follow: nothing of an earlier
/// one is kept, so the next look starts afresh.
pub fn observed_missing(
    r: &Resource,
    recorded: &Status,
    message: &str,
    now: jiff::Timestamp,
) -> Status {
    let mut status = recorded.clone();
    forget_connection(&mut status);
    status.observed_generation = Some(r.generation);
    status.conditions = conditions::build(
        &recorded.conditions,
        &[
            Want::new(READY, false, "NotFound", message),
            Want::new(SYNCED, false, "NotFound", message),
            Want::new(STALLED, false, "Waiting", ""),
        ],
        r.generation,
        now,
    );
    status
}

/// The status of a paused resource: `Synced` says it is paused; the rest stays as it was.
pub fn paused(r: &Resource, recorded: &Status, message: &str, now: jiff::Timestamp) -> Status {
    let kept = |type_: &'static str, default: Want| match recorded.condition(type_) {
        Some(prev) => Want {
            type_,
            status: prev.status == "True",
            reason: prev.reason.clone(),
            message: prev.message.clone(),
        },
        None => default,
    };
    let mut status = recorded.clone();
    status.conditions = conditions::build(
        &recorded.conditions,
        &[
            kept(READY, Want::new(READY, false, "Paused", message)),
            Want::new(SYNCED, false, "Paused", message),
            kept(STALLED, Want::new(STALLED, false, "Paused", "")),
        ],
        // The conditions speak for the generation they were written for; pausing applies
        // nothing of a newer one.
        recorded.observed_generation.unwrap_or(r.generation),
        now,
    );
    status
}

/// Nothing of a connection that no longer exists is true any more; the pins stay.
fn forget_connection(status: &mut Status) {
    status.id = None;
    status.arn = None;
    status.status = None;
    status.requested_at = None;
    status.last_modified_at = None;
    status.role_arn = None;
    status.codebuild_role_arn = None;
    status.component_role_arn = None;
    status.applied_tag_keys.clear();
}

/// `c` as Proton reports it, with the conditions its state implies and `synced`.
fn with_connection(
    r: &Resource,
    recorded: &Status,
    c: &Connection,
    region: &str,
    synced: Want,
    now: jiff::Timestamp,
) -> Status {
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
    let mut status = recorded.clone();
    record_connection(&mut status, c, region);
    status.observed_generation = Some(r.generation);
    status.conditions = conditions::build(
        &recorded.conditions,
        &[ready, synced, stalled],
        r.generation,
        now,
    );
    status
}

/// The status written before a Create is sent: it pins the region and account and records that
/// a Create may be in flight, so neither a crash nor a changed default region can lose track of
/// the connection. `vanished` names the recorded connection that was found deleted, if that is
/// why a connection is being created again.
pub fn intent(
    r: &Resource,
    recorded: &Status,
    region: &str,
    account: &str,
    recreation: u32,
    vanished: Option<&str>,
    now: jiff::Timestamp,
) -> Status {
    let mut status = recorded.clone();
    if vanished.is_some() {
        forget_connection(&mut status);
    }
    status.region = Some(region.to_string());
    status.environment_account_id = Some(account.to_string());
    status.recreations = recreation;
    status.create_sent_at = Some(whole_seconds(now).to_string());
    status.observed_generation = Some(r.generation);
    let retrying = vanished.is_none()
        && recorded
            .condition(SYNCED)
            .is_some_and(|c| c.observed_generation == Some(r.generation));
    if retrying {
        // A retry of this generation's Create: the conditions keep saying why it is retried
        // (so the same problem is not announced again when it recurs).
        return status;
    }
    let wanted = match vanished {
        Some(id) => {
            let message = format!(
                "connection {id} no longer exists in Proton (deleted outside the controller); re-creating it in {region}"
            );
            [
                Want::new(READY, false, "NotFound", message.clone()),
                Want::new(SYNCED, false, "NotFound", message),
                Want::new(STALLED, false, "Retrying", ""),
            ]
        }
        None => {
            let message = format!("creating the connection in {region} (account {account})");
            [
                Want::new(READY, false, "Creating", message.clone()),
                Want::new(SYNCED, false, "Creating", message),
                Want::new(STALLED, false, "Reconciling", ""),
            ]
        }
    };
    status.conditions = conditions::build(&recorded.conditions, &wanted, r.generation, now);
    status
}

/// The status of a resource being deleted that waits for a Create that may still complete.
pub fn awaiting_create(
    r: &Resource,
    recorded: &Status,
    until: jiff::Timestamp,
    now: jiff::Timestamp,
) -> Status {
    let mut status = recorded.clone();
    status.observed_generation = Some(r.generation);
    let message = format!(
        "deleting: no connection found yet, but a Create sent at {} may still complete; searching until {}",
        recorded.create_sent_at.as_deref().unwrap_or("-"),
        whole_seconds(until)
    );
    status.conditions = conditions::build(
        &recorded.conditions,
        &[
            Want::new(READY, false, "Deleting", message.clone()),
            Want::new(SYNCED, false, "Deleting", message),
            Want::new(STALLED, false, "Reconciling", ""),
        ],
        r.generation,
        now,
    );
    status
}

/// The status of a reconcile cut short (its next call deferred) after it learned about the
/// connection: the connection is recorded, the conditions stay as they were.
pub fn progress(recorded: &Status, (c, region, recreations): (&Connection, &str, u32)) -> Status {
    let mut status = recorded.clone();
    record_connection(&mut status, c, region);
    status.recreations = recreations;
    status
}

/// The status after a reconcile ended on `problem`, and whether that problem is news (worth an
/// Event: the same error twice in a row is reported once). A connection this reconcile learned
/// about (`learned`, with its region) is recorded, so one created just before the failure is
/// never lost track of.
pub fn after_problem(
    r: &Resource,
    recorded: &Status,
    learned: Option<(&Connection, &str, u32)>,
    problem: &Problem,
    now: jiff::Timestamp,
) -> (Status, bool) {
    let mut status = recorded.clone();
    if let Some((c, region, recreations)) = learned {
        record_connection(&mut status, c, region);
        status.recreations = recreations;
    }
    status.observed_generation =
        conditions::observed_generation_after(recorded.observed_generation, problem, r.generation);

    let (conditions, news) =
        conditions::after_problem(&recorded.conditions, problem, "Creating", r.generation, now);
    status.conditions = conditions;
    (status, news)
}

/// Kubernetes keeps whole seconds; anything finer would make every status differ.
pub(crate) fn whole_seconds(t: jiff::Timestamp) -> jiff::Timestamp {
    jiff::Timestamp::from_second(t.as_second()).unwrap_or(t)
}
