//! The rules both ways of keeping a connection share (managed by the controller, or only
//! observed): when a resource is due, where it may act, whether it may take up a connection it
//! did not create, how a connection taken up by id must match the spec, and when it is read
//! again.

use std::time::Duration;

use crate::aws::budget::CallClass;
use crate::aws::proton::Connection;
use crate::connection::api::{ConnectionState, EnvironmentAccountConnectionStatus as Status};

use super::{AdoptionPolicy, Observed, Problem, Resource, Run, Settings, Step};

/// Nothing to do yet: the resource is not due (`Idle` until it is), or this is the first sight
/// of a settled resource after a start or a change of leader, whose first read comes at a random
/// moment of its interval so they are not all read at once (new or changed ones go first).
pub(super) fn not_due(run: &Run) -> Option<Step> {
    let r = &run.r;
    if let Some(requeue) = r.quiet {
        return Some(Step::Idle { requeue });
    }
    if r.first_sight
        && let Some(class) = run.routine
        && matches!(run.observed, Observed::Nothing)
    {
        let interval = match class {
            CallClass::Poll => run.settings.pending_poll.min(run.settings.resync),
            _ => run.settings.resync,
        };
        return Some(Step::Idle {
            requeue: interval.mul_f64(run.jitter.clamp(0.0, 1.0)),
        });
    }
    None
}

pub(super) fn region_not_allowed(run: &Run) -> Problem {
    Problem::terminal(
        "RegionNotAllowed",
        format!(
            "region {} is not among the regions the controller may act in ({}); nothing is done there",
            run.region,
            run.settings.allowed_regions.join(", ")
        ),
    )
}

/// Whether the resource may take up a connection it did not create (adopting it, or observing
/// it), `what` saying which: None while the namespace's opt-in has not been read.
pub(super) fn may_take_over(run: &Run, what: &str) -> Option<Result<(), Problem>> {
    let refused = |why: String| {
        Err(Problem::terminal(
            "AdoptionNotAllowed",
            format!("{what}, but {why}; nothing was changed in Proton"),
        ))
    };
    match run.settings.adoption {
        AdoptionPolicy::Everywhere => Some(Ok(())),
        AdoptionPolicy::Disabled => Some(refused(
            "adoption is disabled on this controller (--adoption disabled)".into(),
        )),
        AdoptionPolicy::NamespaceOptIn => match run.adoption_allowed? {
            true => Some(Ok(())),
            false => Some(refused(format!(
                "a cluster admin has not allowed adoption in namespace {} (label {}={})",
                run.r.namespace,
                crate::connection::api::ADOPTION_NAMESPACE_LABEL,
                crate::connection::api::ADOPTION_ALLOWED
            ))),
        },
    }
}

/// How a connection taken up by id (adopted or observed) differs from the spec in what cannot
/// change: its environment and management account.
pub(super) fn mismatches(r: &Resource, c: &Connection) -> Vec<String> {
    let mut found = Vec::new();
    if c.environment_name != r.spec.environment_name {
        found.push(format!(
            "environmentName is {:?} in Proton but {:?} in the spec",
            c.environment_name, r.spec.environment_name
        ));
    }
    if c.management_account_id != r.spec.management_account_id {
        found.push(format!(
            "managementAccountId is {:?} in Proton but {:?} in the spec",
            c.management_account_id, r.spec.management_account_id
        ));
    }
    found
}

/// When a settled connection is next read. PENDING is polled fast at first (every 2 s, or
/// `pending_poll` if shorter), then less often the longer the answer takes (a tenth of the
/// connection's age), up to `pending_poll` and never beyond the resync period; anything else is
/// read once per resync period. Every interval is jittered by +/-10 % so resources created
/// together do not stay in step.
pub(super) fn requeue_after(
    c: &Connection,
    settings: &Settings,
    now: jiff::Timestamp,
    jitter: f64,
) -> Duration {
    let interval = if c.state == ConnectionState::Pending {
        pending_interval(&c.requested_at, settings, now)
    } else {
        settings.resync
    };
    jittered(interval, jitter)
}

/// How often a PENDING connection requested at `requested_at` is polled at `now`, before
/// jitter (see [`requeue_after`]).
pub fn pending_interval(requested_at: &str, settings: &Settings, now: jiff::Timestamp) -> Duration {
    pending_interval_since(requested_at.parse().ok(), settings, now)
}

/// [`pending_interval`] of a request time already read (none: unknown, polled fast).
pub fn pending_interval_since(
    requested_at: Option<jiff::Timestamp>,
    settings: &Settings,
    now: jiff::Timestamp,
) -> Duration {
    let age = requested_at.map(|t| age(t, now)).unwrap_or_default();
    let cap = settings.pending_poll.min(settings.resync);
    let fast = FAST_POLL.min(cap);
    (age / 10).clamp(fast, cap)
}

/// Whether the polls of a settled resource, next due after `requeue`, may be left to the
/// shared list of PENDING connections until its reconcile comes back, and when that is: while
/// its connection is PENDING and polled faster than the slowest poll (`pending_poll`, jittered
/// by `jitter`). The list answers each such poll without a reconcile, and wakes the resource
/// only when it no longer shows the connection as recorded. None: the resource's own requeue
/// makes its next poll.
pub fn listed_polls_until(
    status: &Status,
    requeue: Duration,
    settings: &Settings,
    jitter: f64,
) -> Option<Duration> {
    let cap = settings.pending_poll.min(settings.resync);
    // Below the least the slowest poll is jittered to: polled faster than it, not merely
    // jittered below it.
    let fast = requeue < cap.mul_f64(0.9);
    (status.status == Some(ConnectionState::Pending) && status.id.is_some() && fast)
        .then(|| jittered(cap, jitter))
}

/// `interval` +/-10 %, by `jitter` in [0, 1).
pub fn jittered(interval: Duration, jitter: f64) -> Duration {
    let jitter = if jitter.is_finite() {
        jitter.clamp(0.0, 1.0)
    } else {
        0.5
    };
    interval.mul_f64(0.9 + 0.2 * jitter)
}

/// The first poll of a new PENDING connection.
pub const FAST_POLL: Duration = Duration::from_secs(2);

pub(super) fn age(at: jiff::Timestamp, now: jiff::Timestamp) -> Duration {
    Duration::try_from(now.duration_since(at)).unwrap_or_default()
}
