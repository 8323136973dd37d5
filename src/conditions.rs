//! kstatus-style conditions: `Ready`, `Synced`, `Stalled`.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::aws::error::Retry;
use crate::reconciler::retry::Problem;

pub const READY: &str = "Ready";
pub const SYNCED: &str = "Synced";
pub const STALLED: &str = "Stalled";

/// One condition as the controller wants it; the transition time is filled in by [`build`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Want {
    pub type_: &'static str,
    pub status: bool,
    pub reason: String,
    pub message: String,
}

impl Want {
    pub fn new(
        type_: &'static str,
        status: bool,
        reason: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Want {
            type_,
            status,
            reason: reason.into(),
            message: message.into(),
        }
    }
}

/// Builds the conditions, keeping each `lastTransitionTime` unless its status flips, so an
/// unchanged state produces an identical status (and no write).
pub fn build(
    previous: &[Condition],
    wanted: &[Want],
    generation: i64,
    now: jiff::Timestamp,
) -> Vec<Condition> {
    wanted
        .iter()
        .map(|w| {
            let status = if w.status { "True" } else { "False" };
            let since = previous
                .iter()
                .find(|c| c.type_ == w.type_ && c.status == status)
                .map(|c| c.last_transition_time.clone())
                .unwrap_or_else(|| Time(whole_seconds(now)));
            Condition {
                type_: w.type_.to_string(),
                status: status.to_string(),
                reason: w.reason.clone(),
                message: truncate(&w.message, 1024),
                last_transition_time: since,
                observed_generation: Some(generation),
            }
        })
        .collect()
}

/// The conditions after a reconcile ended on `problem`, for every kind, and whether the problem
/// is news (worth an Event: the same error twice in a row is announced once).
///
/// Synced is False with the problem's reason. Stalled is True for what retrying will not fix;
/// AccessDenied (retried slowly) counts as that too, since only a fix made elsewhere (IAM) ends
/// it. A passing fault (throttling, a 5xx) says nothing about the object, so Ready keeps its
/// last value and nothing flaps; with no Ready yet it is False with `not_ready_yet` as reason.
/// Ready kept so also keeps the generation it was observed for: a Ready True of an earlier
/// generation must not vouch for a spec edit the fault kept from being applied (`kubectl wait`
/// and Argo CD read it as out of date, as the API conventions mean it; for kstatus see
/// [`observed_generation_after`]).
/// Anything else means the spec is not (and will not soon be) in effect: Ready False.
pub fn after_problem(
    recorded: &[Condition],
    problem: &Problem,
    not_ready_yet: &str,
    generation: i64,
    now: jiff::Timestamp,
) -> (Vec<Condition>, bool) {
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
    let previous_ready = recorded.iter().find(|c| c.type_ == READY);
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
            not_ready_yet,
            format!("waiting to retry: {}", problem.message),
        ),
        _ => Want::new(READY, false, problem.reason, problem.message.clone()),
    };
    let mut conditions = build(recorded, &[ready, synced, stalled], generation, now);
    if problem.retry == Retry::Backoff {
        keep_generation(&mut conditions, recorded, READY);
    }
    // Compared with the message as stored (conditions cut long messages), not the raw one.
    let stored_message = conditions
        .iter()
        .find(|c| c.type_ == SYNCED)
        .map(|c| c.message.as_str());
    let news = recorded.iter().find(|c| c.type_ == SYNCED).is_none_or(|c| {
        c.status != "False"
            || c.reason != problem.reason
            || Some(c.message.as_str()) != stored_message
    });
    (conditions, news)
}

/// The condition `type_`, kept as it was in `previous`, also keeps the generation it was observed
/// for there (a condition `previous` lacks is left alone).
fn keep_generation(conditions: &mut [Condition], previous: &[Condition], type_: &str) {
    if let Some(prev) = previous.iter().find(|c| c.type_ == type_)
        && let Some(kept) = conditions.iter_mut().find(|c| c.type_ == type_)
    {
        kept.observed_generation = prev.observed_generation;
    }
}

/// `status.observedGeneration` after a reconcile that ended on `problem`. A passing fault brought
/// nothing of a newer generation into effect, so it stays where it was: kstatus (and so Flux)
/// reads a spec edit that a throttled or failed call holds up as still in progress, as Argo CD's
/// health check does. Anything else was decided for this generation.
pub fn observed_generation_after(
    recorded: Option<i64>,
    problem: &Problem,
    generation: i64,
) -> Option<i64> {
    if problem.retry == Retry::Backoff {
        recorded
    } else {
        Some(generation)
    }
}

/// True when the condition is present with status True (and, if given, for this generation).
pub fn is_true(conditions: &[Condition], type_: &str, generation: Option<i64>) -> bool {
    conditions.iter().any(|c| {
        c.type_ == type_
            && c.status == "True"
            && generation.is_none_or(|g| c.observed_generation == Some(g))
    })
}

/// Kubernetes serialises times to whole seconds; keeping more would make every status differ.
fn whole_seconds(t: jiff::Timestamp) -> jiff::Timestamp {
    jiff::Timestamp::from_second(t.as_second()).unwrap_or(t)
}

/// Condition messages are capped at 32 KiB by the API server; keep them short and readable.
fn truncate(s: &str, max: usize) -> String {
    // A message cut before is left as it is: cut again where the first cut fell inside a
    // character, it would change (and be announced again) though nothing did.
    if s.len() <= max || (s.len() <= max + 3 && s.ends_with("...")) {
        return s.to_string();
    }
    format!("{}...", prefix(s, max))
}

/// The longest start of `s` of at most `max` bytes that ends on a character boundary.
pub fn prefix(s: &str, max: usize) -> &str {
    let mut end = max.min(s.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(secs: i64) -> jiff::Timestamp {
        jiff::Timestamp::from_second(secs).unwrap()
    }

    #[test]
    fn transition_time_kept_while_status_unchanged() {
        let first = build(
            &[],
            &[Want::new(READY, false, "Pending", "waiting")],
            1,
            t(100),
        );
        let second = build(
            &first,
            &[Want::new(READY, false, "Pending", "still waiting")],
            2,
            t(200),
        );
        assert_eq!(second[0].last_transition_time, Time(t(100)));
        assert_eq!(second[0].observed_generation, Some(2));
        let third = build(
            &second,
            &[Want::new(READY, true, "Connected", "ok")],
            2,
            t(300),
        );
        assert_eq!(third[0].last_transition_time, Time(t(300)));
    }

    /// A passing fault after a spec edit: Ready stays as it was, for the generation it was
    /// observed for, while Synced and Stalled speak for the new one. Anything else makes Ready
    /// False for the new generation.
    #[test]
    fn a_passing_fault_keeps_ready_for_the_generation_it_was_observed_for() {
        let connected = build(
            &[],
            &[
                Want::new(READY, true, "Connected", "ok"),
                Want::new(SYNCED, true, "ReconcileSuccess", ""),
            ],
            1,
            t(100),
        );
        let throttled = Problem {
            reason: "Throttled",
            message: "slow down".into(),
            retry: Retry::Backoff,
        };
        let (after, news) = after_problem(&connected, &throttled, "Creating", 2, t(200));
        assert!(news);
        assert!(is_true(&after, READY, Some(1)));
        assert!(!is_true(&after, READY, Some(2)), "{after:?}");
        assert_eq!(after[0].last_transition_time, Time(t(100)));
        let synced = after.iter().find(|c| c.type_ == SYNCED).unwrap();
        assert_eq!(
            (synced.status.as_str(), synced.observed_generation),
            ("False", Some(2))
        );

        // The status's own observedGeneration stays too, for kstatus.
        assert_eq!(observed_generation_after(Some(1), &throttled, 2), Some(1));
        assert_eq!(observed_generation_after(None, &throttled, 2), None);

        let refused = Problem::terminal("InvalidSpec", "no");
        assert_eq!(observed_generation_after(Some(1), &refused, 2), Some(2));
        let (after, _) = after_problem(&connected, &refused, "Creating", 2, t(200));
        let ready = after.iter().find(|c| c.type_ == READY).unwrap();
        assert_eq!(
            (ready.status.as_str(), ready.observed_generation),
            ("False", Some(2))
        );
    }

    #[test]
    fn is_true_respects_generation() {
        let c = build(
            &[],
            &[Want::new(SYNCED, true, "ReconcileSuccess", "")],
            3,
            t(1),
        );
        assert!(is_true(&c, SYNCED, Some(3)));
        assert!(!is_true(&c, SYNCED, Some(4)));
        assert!(is_true(&c, SYNCED, None));
        assert!(!is_true(&c, READY, None));
    }

    #[test]
    fn long_messages_are_cut_on_a_char_boundary() {
        // The cut at 1024 bytes falls inside a character.
        let long = format!("a{}", "é".repeat(1000));
        let c = build(&[], &[Want::new(SYNCED, false, "AwsError", long)], 1, t(1));
        assert!(c[0].message.len() <= 1027);
        assert!(c[0].message.ends_with("..."));
        // A message as stored, given again (a report repeated word for word), stays the same.
        let again = build(
            &c,
            &[Want::new(SYNCED, false, "AwsError", c[0].message.clone())],
            1,
            t(2),
        );
        assert_eq!(again[0].message, c[0].message);
    }
}
