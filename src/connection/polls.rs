//! The fast polls of PENDING connections, made without a reconcile each.
//!
//! A new PENDING connection is polled every 2 s at first, then less often (see
//! `decide::rules`). One reconcile per poll cost each resource a run of the whole controller
//! (scheduling, the watch cache, the decision) every few seconds, so with thousands waiting the
//! controller's CPU grew with the number of connections times the length of the wait, although
//! the shared list of PENDING connections answered nearly every poll without an AWS call. So a
//! resource in that phase hands its polls to [`Polls`] until its reconcile comes back at the
//! slowest poll interval (`decide::listed_polls_until`): when one is due, the poller asks the
//! shared list ([`crate::aws::proton::Proton::listed_unchanged`]), which answers every poll due
//! at once, and wakes only the resources whose connection the list no longer shows as recorded
//! (accepted, rejected, changed or gone). Those are read with a Get by their reconcile, as a
//! nudged poll is.
//!
//! The reconcile stays the backstop. A list the budget defers, or that is throttled or fails
//! for a moment, makes the polls wait for the next list; a list refused (the account may not
//! list) wakes the resources to poll with their Get; and a resource the poller dropped is still
//! polled when its reconcile comes back.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kube::runtime::reflector::ObjectRef;
use tokio::sync::Notify;
use tokio::time::Instant;
use tracing::debug;

use crate::aws::budget::CallClass;
use crate::aws::credentials::AwsIdentity;
use crate::aws::proton::{ErrorClass, PollAnswer, Proton, ProtonError};
use crate::compact_id::CompactId;
use crate::connection::api::EnvironmentAccountConnection;
use crate::connection::decide::{Settings, jittered, pending_interval_since};
use crate::interned::Interned;
use crate::metrics::Metrics;
use crate::reconciler::nudge::Nudge;

/// Polls due within this much of each other are made together.
const GATHER: Duration = Duration::from_millis(100);

/// How long a poll the budget had no room for waits when the budget booked nothing.
const BUSY_WAIT: Duration = Duration::from_secs(1);

/// Gives a resource's reconcile a later due time: its next poll's (see [`Polls::make_due`]).
pub type HandBack = Arc<dyn Fn(&str, Instant) + Send + Sync>;

/// A resource whose polls the poller makes.
#[derive(Clone, Debug)]
pub struct Waiting {
    /// Its name, and its namespace (shared by every resource of the namespace, see
    /// [`Polls::take`]): all a nudge needs, in a third of an `ObjectRef`'s room.
    pub name: Box<str>,
    pub namespace: Arc<str>,
    pub identity: AwsIdentity,
    /// Shared by every resource of the region (see [`Polls::take`]).
    pub region: Arc<str>,
    /// The connection's id, and what was recorded of it as a list shows it.
    pub id: CompactId,
    pub listed_as: u64,
    /// When the connection was requested, if the status says (read once, not at each poll).
    pub requested_at: Option<jiff::Timestamp>,
    pub jitter: f64,
    /// When it was last polled (read, or shown by a list), for the effective-interval metric.
    pub polled: Instant,
    /// When its next poll is due.
    pub due: Instant,
    /// When its reconcile comes back (and polls again itself).
    pub until: Instant,
}

impl Waiting {
    /// The resource, as a nudge names it (kube-runtime matches objects by name and namespace).
    fn object(&self) -> ObjectRef<EnvironmentAccountConnection> {
        ObjectRef::new(&self.name).within(&self.namespace)
    }
}

#[derive(Default)]
struct State {
    /// While the controller runs.
    running: bool,
    /// Boxed: the table then holds a pointer per slot (it keeps spare slots), not a `Waiting`.
    by_uid: HashMap<CompactId, Box<Waiting>>,
    /// (due, uid), the next first.
    due: BTreeSet<(Instant, CompactId)>,
    /// The regions and namespaces of the resources taken, each kept once.
    shared: Interned,
}

/// The resources whose fast polls are made from the shared list, and when each is due.
#[derive(Default)]
pub struct Polls {
    state: Mutex<State>,
    changed: Notify,
}

/// A poll taken out when due: the resource's uid, and what it waits for.
/// Boxed as kept: polls fall due by the thousand at once (all that wait for the next list),
/// and moving each out of its box and back would copy and allocate them all.
type Due = (CompactId, Box<Waiting>);

/// What became of the polls due at one moment.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Made {
    /// Shown by the list as recorded: seen, and due again later.
    pub unchanged: usize,
    /// Woken: their reconcile reads them with a Get.
    pub woken: usize,
    /// The budget had no room, or the list failed for a while: due again later.
    pub deferred: usize,
    /// The last list is too recent to list again (see [`crate::aws::pending`]): due at the next.
    pub spaced: usize,
}

impl Polls {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The controller starts (`true`) or stops: nothing is taken while it is stopped, and what
    /// was taken goes (the next term's reconciles poll for themselves first).
    pub fn set_running(&self, running: bool) {
        let mut state = self.lock();
        state.running = running;
        state.by_uid.clear();
        state.due.clear();
        state.shared.clear();
        drop(state);
        self.changed.notify_one();
    }

    /// Takes a resource's polls until its reconcile comes back; false when the poller is not
    /// running (the reconcile must poll itself).
    pub fn take(&self, uid: &str, mut waiting: Waiting) -> bool {
        let mut state = self.lock();
        if !state.running {
            return false;
        }
        waiting.region = state.shared.share(&waiting.region);
        waiting.namespace = state.shared.share(&waiting.namespace);
        let (uid, due) = (CompactId::of(uid), waiting.due);
        if let Some(old) = state.by_uid.insert(uid.clone(), Box::new(waiting)) {
            state.due.remove(&(old.due, uid.clone()));
        }
        let first = state.due.first().is_none_or(|(next, _)| due < *next);
        state.due.insert((due, uid));
        drop(state);
        if first {
            self.changed.notify_one();
        }
        true
    }

    /// The resource's reconcile polls for itself again (it settled otherwise, or it is gone).
    pub fn release(&self, uid: &str) {
        let mut state = self.lock();
        let uid = CompactId::of(uid);
        if let Some(old) = state.by_uid.remove(&uid) {
            state.due.remove(&(old.due, uid));
        }
    }

    /// Keeps only the resources still in the watch cache.
    pub fn retain(&self, live: &HashSet<CompactId>) {
        let mut state = self.lock();
        state.by_uid.retain(|uid, _| live.contains(uid));
        state.due.retain(|(_, uid)| live.contains(uid));
        let state = &mut *state;
        state.shared.retain_used(
            state
                .by_uid
                .values()
                .flat_map(|w| [&*w.region, &*w.namespace]),
        );
    }

    /// When the next poll is due.
    fn next_due(&self) -> Option<Instant> {
        self.lock().due.first().map(|(due, _)| *due)
    }

    /// Takes out the polls due by `now` (and those due within [`GATHER`] of it).
    fn take_due(&self, now: Instant) -> Vec<Due> {
        let mut state = self.lock();
        let mut taken = Vec::new();
        while let Some((due, _)) = state.due.first()
            && *due <= now + GATHER
        {
            let Some((_, uid)) = state.due.pop_first() else {
                break;
            };
            if let Some(w) = state.by_uid.remove(&uid) {
                taken.push((uid, w));
            }
        }
        taken
    }

    /// Puts back a poll made (or deferred), due again at `due`; unless its reconcile comes
    /// back first (false: it polls then), or a reconcile took it again meanwhile.
    fn put_back(&self, uid: CompactId, mut waiting: Box<Waiting>, due: Instant) -> bool {
        if due >= waiting.until {
            return false;
        }
        let mut state = self.lock();
        if state.running && !state.by_uid.contains_key(&uid) {
            waiting.due = due;
            state.due.insert((due, uid.clone()));
            state.by_uid.insert(uid, waiting);
        }
        true
    }

    /// Makes every poll due by `now`: one list per set of credentials and region answers them
    /// all; what it does not show as recorded is woken through `nudge`, and a resource whose
    /// reconcile comes back before its next poll is due is given that poll's time through
    /// `hand_back` (its reconcile then waits for it).
    pub async fn make_due(
        &self,
        proton: &Proton,
        settings: &Settings,
        nudge: &Nudge<EnvironmentAccountConnection>,
        hand_back: &(dyn Fn(&str, Instant) + Send + Sync),
        metrics: &Metrics,
        now: Instant,
    ) -> Made {
        let mut groups: HashMap<(AwsIdentity, Arc<str>), Vec<Due>> = HashMap::new();
        for (uid, w) in self.take_due(now) {
            groups
                .entry((w.identity.clone(), w.region.clone()))
                .or_default()
                .push((uid, w));
        }
        let mut made = Made::default();
        for ((identity, region), polls) in groups {
            let asked: Vec<(CompactId, u64)> = polls
                .iter()
                .map(|(_, w)| (w.id.clone(), w.listed_as))
                .collect();
            let answer = proton.listed_unchanged(&identity, &region, &asked).await;
            let at = Instant::now();
            let wall = jiff::Timestamp::now();
            match answer {
                Ok(answers) => {
                    for ((uid, mut w), answer) in polls.into_iter().zip(answers) {
                        match answer {
                            PollAnswer::AsRecorded => {
                                made.unchanged += 1;
                                metrics.read_interval(CallClass::Poll, at - w.polled);
                                w.polled = at;
                                let next = jittered(
                                    pending_interval_since(w.requested_at, settings, wall),
                                    w.jitter,
                                );
                                // Its reconcile comes back before its next poll is due: it
                                // polls at that poll's time, not sooner.
                                if !self.put_back(uid.clone(), w, at + next) {
                                    hand_back(&uid.to_string(), at + next);
                                }
                            }
                            PollAnswer::Wait(until) => {
                                made.spaced += 1;
                                self.put_back(uid, w, until);
                            }
                            PollAnswer::Otherwise => {
                                made.woken += usize::from(nudge.one(w.object(), &uid.to_string()));
                            }
                        }
                    }
                }
                Err(e) if waits_for_the_next_list(&e) => {
                    let wait = e.retry_in.unwrap_or(BUSY_WAIT);
                    debug!(error = %e, %region, "PENDING connections not listed now; their polls wait");
                    // A list the budget had no room for counts as a reconcile's deferred poll
                    // does: EacAwsBudgetSaturated reads the budget's saturation from it, and
                    // while the controller runs most polls are the poller's lists.
                    if e.class == ErrorClass::Deferred {
                        metrics.budget_deferred(CallClass::Poll, wait);
                    }
                    for (uid, w) in polls {
                        made.deferred += 1;
                        self.put_back(uid, w, at + wait);
                    }
                }
                // Refused (IAM without ListEnvironmentAccountConnections, say): each resource
                // polls with its own Get, as without the list.
                Err(e) => {
                    debug!(error = %e, %region, "listing PENDING connections refused; their reconciles poll");
                    for (uid, w) in polls {
                        made.woken += usize::from(nudge.one(w.object(), &uid.to_string()));
                    }
                }
            }
        }
        made
    }

    /// Makes the polls as they fall due, while the controller runs.
    pub async fn run(
        self: Arc<Self>,
        proton: Proton,
        settings: Settings,
        nudge: Nudge<EnvironmentAccountConnection>,
        hand_back: HandBack,
        metrics: Metrics,
    ) {
        loop {
            let changed = self.changed.notified();
            match self.next_due() {
                Some(due) if due <= Instant::now() => {
                    let made = self
                        .make_due(
                            &proton,
                            &settings,
                            &nudge,
                            hand_back.as_ref(),
                            &metrics,
                            Instant::now(),
                        )
                        .await;
                    debug!(?made, "PENDING polls made from the list");
                }
                Some(due) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(due) => {}
                        _ = changed => {}
                    }
                }
                None => changed.await,
            }
        }
    }
}

/// Whether a failed list makes its polls wait for the next list rather than wake their
/// resources to read with a Get each: no room in the budget, throttling, a passing fault, or a
/// call that failed in the client (credentials that could not be loaded), where a Get each would
/// fare no better. A refusal (IAM without ListEnvironmentAccountConnections, say) leaves each
/// poll to its Get.
fn waits_for_the_next_list(e: &ProtonError) -> bool {
    e.failed_in_client()
        || matches!(
            e.class,
            ErrorClass::Deferred
                | ErrorClass::Throttled
                | ErrorClass::Transient
                | ErrorClass::Unanswered
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn waiting(name: &str, due: Instant, until: Instant) -> Waiting {
        Waiting {
            name: name.into(),
            namespace: "ns".into(),
            identity: AwsIdentity::Own,
            region: "us-east-1".into(),
            id: CompactId::of(&format!("id-{name}")),
            listed_as: 1,
            requested_at: None,
            jitter: 0.5,
            polled: due,
            due,
            until,
        }
    }

    fn len(polls: &Polls) -> usize {
        polls.lock().by_uid.len()
    }

    fn due_uids(polls: &Polls, now: Instant) -> Vec<String> {
        polls
            .take_due(now)
            .into_iter()
            .map(|(uid, _)| uid.to_string())
            .collect()
    }

    /// The poller's list, deferred by a full poll share, counts among the deferred polls
    /// (`eac_aws_deferred_total{class="poll"}`), as a reconcile's deferred poll does: while the
    /// controller runs most polls are the poller's, and the budget-saturation alert reads it.
    #[tokio::test]
    async fn a_list_the_budget_defers_counts_as_a_deferred_poll() {
        use std::num::NonZeroU32;

        use crate::aws::budget::{Admission, CallBudget};
        use crate::aws::proton::ProtonSettings;
        let metrics = Metrics::new();
        let budget = CallBudget::new(
            NonZeroU32::new(10).unwrap(),
            NonZeroU32::new(2).unwrap(),
            0.5,
        );
        let now = Instant::now();
        // Others' polls book the share a minute ahead.
        for i in 0..300 {
            let _ = budget.admit(&format!("p{i}"), CallClass::Poll, now);
        }
        assert!(matches!(
            budget.admit("probe", CallClass::Poll, now),
            Admission::Later(_)
        ));
        let proton = Proton::with_static_credentials(
            ProtonSettings {
                default_region: "us-east-1".into(),
                endpoint: Some("http://127.0.0.1:9".into()),
                sts_endpoint: None,
                timeout: Duration::from_secs(1),
            },
            budget,
            metrics.clone(),
        );
        let polls = Polls::default();
        polls.set_running(true);
        assert!(polls.take("a", waiting("a", now, now + Duration::from_secs(60))));
        let made = polls
            .make_due(
                &proton,
                &crate::offline::settings(),
                &Nudge::default(),
                &|_, _| {},
                &metrics,
                now,
            )
            .await;
        assert_eq!(made.deferred, 1, "{made:?}");
        assert!(
            metrics
                .encode()
                .contains("eac_aws_deferred_total{class=\"poll\"} 1"),
            "{}",
            metrics.encode()
        );
    }

    /// A list that would fail alike for each poll's Get makes the polls wait; a refusal, or an
    /// error of no known kind, wakes them to read with their Get.
    #[test]
    fn a_list_failed_as_a_get_would_makes_its_polls_wait_and_a_refused_one_wakes_them() {
        use aws_sdk_proton::error::SdkError;
        use aws_sdk_proton::operation::list_environment_account_connections::ListEnvironmentAccountConnectionsError as ListError;
        use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
        use aws_smithy_runtime_api::client::result::ConnectorError;

        const LIST: &str = "ListEnvironmentAccountConnections";
        let error = |class, code: &str| ProtonError {
            operation: LIST,
            class,
            code: code.into(),
            message: "m".into(),
            retry_in: None,
        };
        let (no_credentials, _) = ProtonError::from_sdk(
            LIST,
            SdkError::<ListError, HttpResponse>::dispatch_failure(ConnectorError::other(
                "no credentials".into(),
                None,
            )),
        );
        assert!(no_credentials.failed_in_client(), "{no_credentials:?}");
        let cases = [
            (error(ErrorClass::Deferred, "Deferred"), true),
            (error(ErrorClass::Throttled, "ThrottlingException"), true),
            (
                error(ErrorClass::Transient, "InternalServerException"),
                true,
            ),
            (error(ErrorClass::Unanswered, "Timeout"), true),
            (ProtonError::unreached(LIST, "us-east-1"), true),
            (no_credentials, true),
            (
                error(ErrorClass::AccessDenied, "AccessDeniedException"),
                false,
            ),
            (error(ErrorClass::Validation, "ValidationException"), false),
            (
                error(ErrorClass::Unsupported, "UnknownOperationException"),
                false,
            ),
            (error(ErrorClass::Other, "SomethingNew"), false),
        ];
        for (e, waits) in cases {
            assert_eq!(waits_for_the_next_list(&e), waits, "{e:?}");
        }
    }

    #[test]
    fn nothing_is_taken_while_the_controller_is_not_running() {
        let polls = Polls::default();
        let t0 = Instant::now();
        let w = waiting("a", t0, t0 + Duration::from_secs(30));
        assert!(!polls.take("a", w.clone()), "its reconcile polls itself");
        polls.set_running(true);
        assert!(polls.take("a", w.clone()));
        polls.set_running(false);
        assert!(len(&polls) == 0, "a stopped controller drops what it took");
        assert!(!polls.take("a", w));
    }

    #[test]
    fn polls_fall_due_in_order_and_those_close_together_go_together() {
        let polls = Polls::default();
        polls.set_running(true);
        let t0 = Instant::now();
        let until = t0 + Duration::from_secs(30);
        polls.take("late", waiting("late", t0 + Duration::from_secs(5), until));
        polls.take("b", waiting("b", t0 + Duration::from_millis(2_050), until));
        polls.take("a", waiting("a", t0 + Duration::from_secs(2), until));
        assert_eq!(polls.next_due(), Some(t0 + Duration::from_secs(2)));
        assert!(due_uids(&polls, t0).is_empty(), "none due yet");
        assert_eq!(
            due_uids(&polls, t0 + Duration::from_secs(2)),
            ["a", "b"],
            "b is due 50 ms later: made with a"
        );
        assert_eq!(len(&polls), 1);
        assert_eq!(due_uids(&polls, t0 + Duration::from_secs(5)), ["late"]);
    }

    #[test]
    fn a_poll_made_is_due_again_unless_its_reconcile_comes_first_or_took_it_again() {
        let polls = Polls::default();
        polls.set_running(true);
        let t0 = Instant::now();
        let until = t0 + Duration::from_secs(30);
        polls.take("a", waiting("a", t0, until));
        let (uid, w) = polls.take_due(t0).pop().unwrap();
        assert!(polls.put_back(uid, w.clone(), t0 + Duration::from_secs(2)));
        assert_eq!(polls.next_due(), Some(t0 + Duration::from_secs(2)));

        let (uid, w) = polls.take_due(t0 + Duration::from_secs(2)).pop().unwrap();
        polls.put_back(uid, w.clone(), until);
        assert!(
            len(&polls) == 0,
            "its reconcile comes back by then, and polls"
        );

        // A reconcile took the resource again while its poll was being made: that one holds.
        polls.take("a", waiting("a", t0 + Duration::from_secs(9), until));
        assert!(polls.put_back(CompactId::of("a"), w, t0 + Duration::from_secs(3)));
        assert_eq!(polls.next_due(), Some(t0 + Duration::from_secs(9)));
        assert_eq!(len(&polls), 1);
    }

    #[test]
    fn a_resource_released_or_gone_is_no_longer_polled() {
        let polls = Polls::default();
        polls.set_running(true);
        let t0 = Instant::now();
        let until = t0 + Duration::from_secs(30);
        for uid in ["a", "b", "c"] {
            polls.take(uid, waiting(uid, t0, until));
        }
        polls.release("a");
        polls.retain(&[CompactId::of("c")].into_iter().collect());
        assert_eq!(due_uids(&polls, t0), ["c"]);
        // Taken again with another due time: only the new one counts.
        polls.take("c", waiting("c", t0 + Duration::from_secs(4), until));
        polls.take("c", waiting("c", t0 + Duration::from_secs(2), until));
        assert_eq!(due_uids(&polls, t0 + Duration::from_secs(10)), ["c"]);
        assert!(len(&polls) == 0);
    }
}
