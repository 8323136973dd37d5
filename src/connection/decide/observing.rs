//! Observe-only resources (`spec.managementPolicy: Observe`): the controller follows an existing
//! connection and reports it, and never creates, updates, tags or deletes anything.
//!
//! The connection followed is the one the adopt annotation names, else the environment's
//! connection to the spec's management account (found by listing). Taking up a connection the
//! resource did not create reveals another team's connection, so it needs the same cluster-admin
//! opt-in as adoption.

use crate::aws::proton::{Connection, Retry};
use crate::conditions::{SYNCED, Want};

use super::rules::{
    jittered, may_take_over, mismatches, not_due, region_not_allowed, requeue_after,
};
use super::{Observed, Origin, Problem, Run, Settled, Step, events, status};

pub(super) fn upkeep(run: &Run, now: jiff::Timestamp) -> Step {
    let r = &run.r;
    if let Some(step) = not_due(run) {
        return step;
    }
    if !run.settings.region_allowed(&run.region) {
        return run.report(region_not_allowed(run), now);
    }
    match &run.observed {
        Observed::Nothing => {
            // The connection on record is followed without asking again; a different one (the
            // annotation changed) or a first one needs the opt-in.
            let recorded = run.status.id.as_deref();
            if let Some(id) = recorded
                && r.adopt_id.is_none_or(|adopt| adopt == id)
            {
                return Step::Get { id: id.to_string() };
            }
            take_up(run, now)
        }
        // A List summary: read the connection in full.
        Observed::Connection {
            connection,
            origin: Origin::Listed,
            ..
        } => Step::Get {
            id: connection.id.clone(),
        },
        Observed::Connection {
            connection, origin, ..
        } => report_connection(run, connection, *origin, now),
        // The recorded connection is gone: nothing is kept of it, and the next look searches
        // afresh (by the annotation, or the environment).
        Observed::Gone { id } => missing(run, id.as_deref(), now),
        Observed::CreateConflict | Observed::Released => run.report(
            Problem {
                reason: "InternalError",
                message:
                    "an observe-only resource reached a state only a managed one has; retrying"
                        .into(),
                retry: Retry::Backoff,
            },
            now,
        ),
    }
}

/// Find the connection to follow: the annotation's, or the environment's.
fn take_up(run: &Run, now: jiff::Timestamp) -> Step {
    let r = &run.r;
    let what = match r.adopt_id {
        Some(id) => format!(
            "managementPolicy is Observe and annotation proton.eac.dev/adopt-id names connection {id}"
        ),
        None => format!(
            "managementPolicy is Observe (the connection of environment {} to management account {})",
            r.spec.environment_name, r.spec.management_account_id
        ),
    };
    match may_take_over(run, &what) {
        None => Step::ReadAdoptionPolicy,
        Some(Err(problem)) => run.report(problem, now),
        Some(Ok(())) => match r.adopt_id {
            Some(id) => Step::Get { id: id.to_string() },
            None => Step::Lookup {
                environment_name: r.spec.environment_name.clone(),
                management_account_id: r.spec.management_account_id.clone(),
            },
        },
    }
}

fn report_connection(run: &Run, c: &Connection, origin: Origin, now: jiff::Timestamp) -> Step {
    let r = &run.r;
    if origin == Origin::Adopted {
        let mismatches = mismatches(r, c);
        if !mismatches.is_empty() {
            return run.report(
                Problem::terminal(
                    "ObserveMismatch",
                    format!(
                        "connection {} is not this resource's: {}",
                        c.id,
                        mismatches.join("; ")
                    ),
                ),
                now,
            );
        }
    }
    let synced = Want::new(
        SYNCED,
        true,
        "Observing",
        format!(
            "observe-only: connection {} is followed and never changed by the controller",
            c.id
        ),
    );
    let status = status::observed(r, &run.status, c, &run.region, synced, now);
    let mut events = Vec::new();
    if run.status.id.as_deref() != Some(c.id.as_str()) {
        events.push(events::Note::normal(
            "Observing",
            format!("observing connection {} ({})", c.id, c.state.as_str()),
        ));
    }
    events.extend(events::state_change(run.status.status, c));
    Step::Settle(Box::new(Settled {
        status,
        requeue: requeue_after(c, run.settings, now, run.jitter),
        events,
    }))
}

/// No connection to follow: reported (not an error of the controller's: someone else may still
/// create it), and looked for again at the next resync.
fn missing(run: &Run, id: Option<&str>, now: jiff::Timestamp) -> Step {
    let r = &run.r;
    let message = match (id, r.adopt_id) {
        (Some(id), Some(adopt)) if id == adopt => {
            format!("connection {id} (annotation proton.eac.dev/adopt-id) does not exist")
        }
        (Some(id), _) => format!(
            "connection {id} no longer exists; looking for the environment's connection again at the next resync"
        ),
        (None, _) => format!(
            "no connection of environment {} to management account {} exists in {} for this account yet",
            r.spec.environment_name, r.spec.management_account_id, run.region
        ),
    };
    let news = run.status.id.is_some()
        || run
            .status
            .condition(SYNCED)
            .is_none_or(|c| c.reason != "NotFound" || c.message != message);
    let status = status::observed_missing(r, &run.status, &message, now);
    Step::Settle(Box::new(Settled {
        status,
        requeue: jittered(run.settings.resync, run.jitter),
        events: news
            .then(|| events::Note::warning("NotFound", message))
            .into_iter()
            .collect(),
    }))
}
