//! The acceptance decision: pure, synchronous, no I/O.
//!
//! Like the connection side (`crate::connection::decide`), a reconcile of one policy is a [`Run`]:
//! [`Run::next`] names the one next [`Step`] from the policy, every policy of the cluster, what
//! the controller remembers and what this reconcile learned so far; the controller executes it
//! (one AWS call) and hands the raw answer to [`Run::record`]; again, until the step is final.
//!
//! The rules, all decided here:
//! - Requests are the PENDING connections listed with `requestedBy=MANAGEMENT_ACCOUNT` in the
//!   policy's region whose `managementAccountId` is the policy's.
//! - This policy accepts the requests it matches (environment account and name).
//! - The *group* of a policy: the policies of the watch cache with the same management account
//!   and region, a valid spec, and credentials the controller could act with for that account
//!   ([`Acts`], found by the controller; one known to act as another account, or with no
//!   credentials, is no part of it: a tenant naming another team's account neither shields nor
//!   silences that team's requests).
//! - A request matched by *no* policy of the group (paused ones included) is *unmatched*. It is
//!   rejected by every active policy of the group with `unmatched: Reject`, after a re-read
//!   shows it still PENDING, and only while the group in the cache is the one the plan was made
//!   from (else [`Outcome::PoliciesChanged`]: the reconcile ends and the next, at once, plans
//!   again); otherwise it is left PENDING and reported (status `leftPending`, one Warning Event
//!   per request) by every policy of the group, unless an active policy of the group rejects
//!   such requests (one whose credentials are not known yet included).
//! - A request matched by another policy (not this one) is that policy's to accept: left alone.
//!   No Accept is sent once this policy changed in the cache (edited, paused, deleted) since the
//!   plan was made ([`Outcome::PoliciesChanged`] again).
//! - Accept answered ConflictException or ResourceNotFound: someone else decided, or the request
//!   was withdrawn; nothing to record, no error.
//! - What was decided is remembered while a (lagging) List still shows it PENDING, until a List
//!   taken the call timeout plus List's lag after the decision, so nothing is decided twice, and
//!   a request a Conflict left PENDING is decided again after that; requests left pending are
//!   announced once (remembered, and the status lists the newest 20).
//! - A decision AWS refuses for one request (AccessDenied, a ValidationException, a quota) holds
//!   up no other: the request is tried again on a backoff of its own, after the others, and the
//!   policy is not Ready meanwhile ([`Refused`]). An operation refused twice and never taken in
//!   a reconcile is taken as refused for every request: it is tried for no more in it.
//! - A passing fault (throttled, AWS unavailable, a server error, an error of no known kind) ends
//!   the reconcile, as it most likely is not the request's alone; the request that AWS was
//!   unavailable for (a call not sent as its region does not answer aside), or answered a
//!   server error or an unknown error, is then
//!   decided after the others until it is decided
//!   ([`Memory::set_back`]), so one request that AWS keeps failing does not hold up the rest;
//!   and while AWS answers the reconcile's other calls, the policy's backoff for that fault
//!   stops growing at its poll interval, so requests made outside the cluster wait no longer.
//! - A namespace without credentials is reported (conditions, one Event), and nothing is called.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use super::api::{
    ConnectionAcceptancePolicySpec as Spec, ConnectionAcceptancePolicyStatus as Status, Decision,
    PendingRequest, STATUS_LIST_LIMIT, UnmatchedRequests,
};
use super::matching;
use crate::aws::budget::CallClass;
use crate::aws::proton::{Connection, ErrorClass, ProtonError, Retry};
use crate::conditions::{self, READY, STALLED, SYNCED, Want};
use crate::connection::api::{ConnectionState, PAUSED_ANNOTATION};
use crate::connection::decide::Settings;
use crate::reconciler::note::Note;
use crate::reconciler::retry::{Problem, retry_after};

/// At most this many Accept / Reject decisions per reconcile; the rest follow at once in the
/// next one (the status shows progress in between).
pub const MAX_DECISIONS: usize = 50;

/// What the decision knows about the policy at the start of a reconcile.
#[derive(Clone, Debug)]
pub struct Policy<'a> {
    pub uid: &'a str,
    pub namespace: &'a str,
    pub name: &'a str,
    pub generation: i64,
    pub spec: &'a Spec,
    /// The status to reconcile from (the recorded one, or what this controller wrote since).
    pub status: &'a Status,
    /// The `proton.eac.dev/paused` annotation is `"true"`: no AWS call.
    pub paused: bool,
    /// Nothing changed since the last reconcile and it is not due yet: how long until it is.
    pub quiet: Option<Duration>,
    /// Consecutive failed reconciles so far, for the backoff.
    pub failures: u32,
    /// Why its namespace has no credentials (see [`crate::mapping`]): reported, no AWS call.
    pub credentials: Option<&'a Problem>,
}

/// Another policy of the cluster, as the watch cache shows it: what the "matched by no policy"
/// rule looks at.
#[derive(Clone, Debug)]
pub struct Peer<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    pub spec: &'a Spec,
    pub paused: bool,
    /// Whether its namespace's credentials act as its `managementAccountId`.
    pub acts: Acts,
}

/// Whether the controller could act for a policy: the credentials its namespace resolves to act
/// as the management account it names. One that never could (another account, no credentials)
/// neither keeps a request from being rejected nor keeps the group from reporting it: else
/// whoever may write a policy in any namespace could shield or silence another team's requests
/// by naming their account.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Acts {
    Yes,
    No,
    /// Not known yet (the controller's own account not asked yet, the namespace not in the
    /// watch yet, mappings that overlap or cannot be read while an admin changes them): it is
    /// counted in, as it most likely acts in a moment; a rejection cannot be undone.
    Unknown,
}

/// What the controller keeps about a policy between reconciles.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Memory {
    /// Requests whose LeftPending Warning was published (every one, not only the 20 listed).
    pub announced: BTreeSet<String>,
    /// The last reconcile stopped with decisions left to make: the next one is work, at once.
    pub backlog: bool,
    /// Requests this policy decided (or found decided by someone else), and when: a List may
    /// still show them PENDING for a while (List is eventually consistent), so they are not
    /// decided again while they are listed, until a List taken [`Settings::create_settle`] (the
    /// call timeout plus List's lag) after the decision. A ConflictException does not prove the
    /// request left PENDING (Proton also answers it for a conflicting operation): one such a
    /// List still shows is decided again.
    pub decided: BTreeMap<String, jiff::Timestamp>,
    /// The List of a reconcile whose next call was deferred: the next reconcile decides from it
    /// instead of listing again, so the slot booked for the policy goes to the deferred
    /// decision (else every slot would go to a new List, and no decision would ever be made
    /// while the budget is busy).
    pub listed: Option<Listed>,
    /// The generation last settled, and when it first was: a new or changed policy lists often
    /// at first, then less often (see [`poll_interval`]).
    pub applied: Option<(i64, jiff::Timestamp)>,
    /// Requests whose decision AWS refused (see [`Refused`]), while they are still this
    /// policy's to decide.
    pub refused: BTreeMap<String, Refused>,
    /// Requests whose decision met a passing fault that ended a reconcile (AWS unavailable, a
    /// server error, an error of no known kind; not throttling, the account's), while they are still this
    /// policy's to decide: planned after the others. A fault that comes back for one request only (Proton failing
    /// on one odd connection) would else end every reconcile before the requests after it.
    pub set_back: BTreeSet<String>,
}

/// A decision AWS refused for one request, with an answer that retrying soon will not change
/// (AccessDenied, a ValidationException, a quota): the request is tried again on a backoff of
/// its own, after the policy's other requests, which are decided meanwhile. An IAM policy
/// scoped by resource, or one odd request, must not hold up every other request of the
/// account. The policy is not Ready while one is refused. A refusal counts for the decision and
/// the generation it was met with: one to make otherwise (the policy changed) starts afresh.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refused {
    pub problem: Problem,
    /// Refused accepting (else rejecting: the re-read or the Reject).
    pub accepting: bool,
    pub generation: i64,
    /// Refusals in a row, for the backoff.
    pub attempts: u32,
    /// Not tried again before.
    pub retry_at: jiff::Timestamp,
}

/// A List kept across a deferral, valid for the generation it was made for until `until`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listed {
    pub generation: i64,
    pub until: jiff::Timestamp,
    /// When it was listed: what was decided since may still show PENDING in it.
    pub taken: jiff::Timestamp,
    pub requests: Vec<Connection>,
    /// Kept because the reconcile was cut at [`MAX_DECISIONS`], not deferred: a nudge drops it
    /// (the next reconcile lists, and sees what the nudge was for). One kept across a deferral
    /// stays: the slot the budget booked goes to the decision it was booked for, not to a List.
    pub cut: bool,
}

/// How long past its due time a deferred reconcile's List is kept: as long as the call budget
/// keeps an unclaimed booking.
const LISTED_GRACE: Duration = Duration::from_secs(60);

/// The one next thing to do.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    /// Which account the controller's credentials act as (STS, cached).
    WhoAmI,
    /// `ListEnvironmentAccountConnections` (`requestedBy=MANAGEMENT_ACCOUNT`, PENDING, all pages).
    List { region: String },
    /// `AcceptEnvironmentAccountConnection`.
    Accept { id: String },
    /// `GetEnvironmentAccountConnection`: is the request still PENDING before it is rejected?
    Get { id: String },
    /// `RejectEnvironmentAccountConnection`.
    Reject { id: String },
    /// Done: write the status (if it changed), publish the Events, look again after `requeue`.
    Settle(Box<Settled>),
    /// Ended on a problem: write the status, publish an Event if it is news, retry later.
    Report(Box<Reported>),
    /// The call budget has no room now: come back after `requeue`; `status`: the decisions made
    /// before, to record.
    Defer {
        class: CallClass,
        requeue: Duration,
        status: Option<Box<Status>>,
        events: Vec<Note>,
    },
    /// Nothing is due: look again after `requeue`.
    Idle { requeue: Duration },
}

impl Step {
    pub fn is_final(&self) -> bool {
        matches!(
            self,
            Step::Settle(_) | Step::Report(_) | Step::Defer { .. } | Step::Idle { .. }
        )
    }

    /// Short name for logs and tests.
    pub fn name(&self) -> &'static str {
        match self {
            Step::WhoAmI => "WhoAmI",
            Step::List { .. } => "List",
            Step::Accept { .. } => "Accept",
            Step::Get { .. } => "Get",
            Step::Reject { .. } => "Reject",
            Step::Settle(_) => "Settle",
            Step::Report(_) => "Report",
            Step::Defer { .. } => "Defer",
            Step::Idle { .. } => "Idle",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Settled {
    pub status: Status,
    pub events: Vec<Note>,
    pub requeue: Duration,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Reported {
    pub status: Status,
    pub problem: Problem,
    /// Events of the decisions made before the problem, then the problem's if it is news.
    pub events: Vec<Note>,
    pub requeue: Duration,
}

/// The raw answer to a step that succeeded.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// WhoAmI: the account id.
    Account(String),
    /// List: the PENDING requests made to the caller's account.
    Requests(Vec<Connection>),
    /// Accept, Get, Reject.
    Connection(Box<Connection>),
    /// Reject or Accept, not sent: the policies of the group changed since the reconcile began
    /// (one may match the request now), or for an Accept this policy did (edited, paused,
    /// deleted). Neither can be undone, so the reconcile ends here and the next one, due at
    /// once, decides from the policies as they are.
    PoliciesChanged,
}

/// Decisions made in one reconcile, for the metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    pub accepted: u64,
    pub rejected: u64,
    /// Requests reported as left pending for the first time.
    pub left_pending: u64,
}

/// A decision still to make.
#[derive(Clone, Debug, PartialEq)]
enum Planned {
    Accept(Connection),
    /// `checked`: a re-read showed it still PENDING.
    Reject {
        request: Connection,
        checked: bool,
    },
}

impl Planned {
    fn id(&self) -> &str {
        match self {
            Planned::Accept(request) | Planned::Reject { request, .. } => &request.id,
        }
    }
}

/// One reconcile of one policy.
#[derive(Clone, Debug)]
pub struct Run<'a> {
    p: Policy<'a>,
    peers: &'a [Peer<'a>],
    settings: &'a Settings,
    memory: &'a Memory,
    jitter: f64,
    region: String,
    account: Option<String>,
    /// The PENDING requests to this policy's management account, once listed.
    requests: Option<Vec<Connection>>,
    /// What the List returned (or the deferred reconcile's List this one goes on from).
    listed: Option<Vec<Connection>>,
    plan: VecDeque<Planned>,
    /// Decisions this reconcile made, in order.
    accepted: Vec<Decision>,
    rejected: Vec<Decision>,
    /// Requests that left PENDING or vanished while being decided on (someone else decided).
    settled_elsewhere: BTreeSet<String>,
    /// When the List this reconcile decides from was taken.
    listed_at: Option<jiff::Timestamp>,
    /// More decisions were due than one reconcile makes.
    truncated: bool,
    deferred: Option<(CallClass, Option<Duration>)>,
    problem: Option<Problem>,
    /// Refusals (see [`Refused`]) this reconcile met, by operation, and the operations that
    /// succeeded: an operation refused twice that never succeeded is most likely refused for
    /// every request (a permission missing), so it is tried for no other in this reconcile.
    refusals: BTreeMap<&'static str, u32>,
    succeeded: BTreeSet<&'static str>,
    /// The decisions left out of this reconcile's plan (more than [`MAX_DECISIONS`]): whether
    /// there were accepts, and rejections, among them.
    cut: Cut,
    /// The operations given up for the rest of this reconcile (see [`Run::refused`]).
    given_up: Cut,
    /// AWS answered a List or a decision in this reconcile (an error of its own included).
    answered: bool,
    /// The reconcile ended on a passing fault that set its request back ([`Memory::set_back`]).
    request_fault: bool,
    /// The time of the latest [`Run::next`]: when an answer came.
    clock: jiff::Timestamp,
    tally: Tally,
    next_memory: Memory,
}

impl<'a> Run<'a> {
    pub fn new(
        p: Policy<'a>,
        peers: &'a [Peer<'a>],
        settings: &'a Settings,
        memory: &'a Memory,
        jitter: f64,
    ) -> Run<'a> {
        let region = region_of(p.spec, settings);
        Run {
            p,
            peers,
            settings,
            memory,
            jitter,
            region,
            account: None,
            requests: None,
            listed: None,
            plan: VecDeque::new(),
            accepted: Vec::new(),
            rejected: Vec::new(),
            settled_elsewhere: BTreeSet::new(),
            listed_at: None,
            truncated: false,
            deferred: None,
            problem: None,
            refusals: BTreeMap::new(),
            succeeded: BTreeSet::new(),
            cut: Cut::default(),
            given_up: Cut::default(),
            answered: false,
            request_fault: false,
            clock: jiff::Timestamp::UNIX_EPOCH,
            tally: Tally::default(),
            next_memory: memory.clone(),
        }
    }

    /// The region every AWS call of this reconcile goes to.
    pub fn region(&self) -> &str {
        &self.region
    }

    /// The decisions made so far, for the metrics.
    pub fn tally(&self) -> Tally {
        self.tally
    }

    /// What to keep about the policy once the reconcile is over.
    pub fn memory(&self) -> &Memory {
        &self.next_memory
    }

    /// The budget class of an AWS step: decisions, and the List of a new, changed or failing
    /// policy, are work; the periodic List of a settled policy is a poll.
    pub fn class_of(&self, step: &Step) -> CallClass {
        match step {
            Step::List { .. } if self.routine() => CallClass::Poll,
            _ => CallClass::Work,
        }
    }

    fn routine(&self) -> bool {
        !self.memory.backlog
            && self.p.failures == 0
            && conditions::is_true(&self.p.status.conditions, SYNCED, Some(self.p.generation))
    }

    /// The next step.
    pub fn next(&mut self, now: jiff::Timestamp) -> Step {
        self.clock = now;
        // Nothing changed (spec, pause) and it is not due: a relist costs nothing.
        if let Some(requeue) = self.p.quiet
            && self.requests.is_none()
            && self.account.is_none()
        {
            return Step::Idle { requeue };
        }
        if self.p.paused {
            return self.paused(now);
        }
        let invalid = matching::invalid(self.p.spec);
        if !invalid.is_empty() {
            return self.report(
                Problem::terminal(
                    "InvalidSpec",
                    format!("the policy is not valid: {}", invalid.join("; ")),
                ),
                now,
            );
        }
        if !self.settings.region_allowed(&self.region) {
            return self.report(
                Problem::terminal(
                    "RegionNotAllowed",
                    format!(
                        "region {} is not among the regions the controller may act in ({}); nothing is decided there",
                        self.region,
                        self.settings.allowed_regions.join(", ")
                    ),
                ),
                now,
            );
        }
        if let Some(problem) = self.p.credentials {
            return self.report(problem.clone(), now);
        }
        if let Some((class, booked)) = self.deferred {
            return self.defer(class, booked, now);
        }
        if let Some(problem) = self.problem.clone() {
            return self.report(problem, now);
        }
        let Some(account) = &self.account else {
            return Step::WhoAmI;
        };
        if *account != self.p.spec.management_account_id {
            return self.report(
                Problem::terminal(
                    "AccountMismatch",
                    format!(
                        "the controller's credentials act as account {account}, not as management account {}: no request is listed or decided",
                        self.p.spec.management_account_id
                    ),
                ),
                now,
            );
        }
        if self.requests.is_none() {
            let carried = self
                .memory
                .listed
                .as_ref()
                .filter(|l| l.generation == self.p.generation && now < l.until);
            let (listed, taken) = match (&self.listed, carried) {
                // Listed by this reconcile, just now.
                (Some(listed), _) => (listed.clone(), now),
                (None, Some(carried)) => {
                    self.next_memory.listed = None;
                    self.listed = Some(carried.requests.clone());
                    (carried.requests.clone(), carried.taken)
                }
                (None, None) => {
                    return Step::List {
                        region: self.region.clone(),
                    };
                }
            };
            self.listed_at = Some(taken);
            self.plan_for(listed, taken, now);
        }
        match self.plan.front() {
            Some(Planned::Accept(request)) => Step::Accept {
                id: request.id.clone(),
            },
            Some(Planned::Reject {
                request,
                checked: false,
            }) => Step::Get {
                id: request.id.clone(),
            },
            Some(Planned::Reject {
                request,
                checked: true,
            }) => Step::Reject {
                id: request.id.clone(),
            },
            None => self.settle(now),
        }
    }

    /// Folds the answer to `step` into what is known.
    pub fn record(&mut self, step: &Step, result: Result<Outcome, ProtonError>) {
        let result = match result {
            Err(e) if e.class == ErrorClass::Deferred => {
                let class = self.class_of(step);
                self.deferred = Some((class, e.retry_in));
                return;
            }
            other => other,
        };
        match (step, result) {
            (Step::WhoAmI, Ok(Outcome::Account(account))) => self.account = Some(account),
            (Step::List { .. }, Ok(Outcome::Requests(listed))) => {
                // Planned at the next step, which knows the time.
                self.next_memory.listed = None;
                self.listed = Some(listed);
                self.answered = true;
            }
            (Step::Accept { id }, Ok(Outcome::Connection(c))) if c.id == *id => {
                self.answered = true;
                self.plan.pop_front();
                self.succeeded.insert(step.name());
                if c.state == ConnectionState::Connected {
                    self.accepted.push(decision(&c));
                    self.tally.accepted += 1;
                } else {
                    // Accepted without becoming CONNECTED: someone else answered first.
                    self.settled_elsewhere.insert(c.id.clone());
                }
            }
            (Step::Get { id }, Ok(Outcome::Connection(c))) if c.id == *id => {
                self.answered = true;
                self.succeeded.insert(step.name());
                if c.state == ConnectionState::Pending {
                    if let Some(Planned::Reject { checked, .. }) = self.plan.front_mut() {
                        *checked = true;
                    }
                } else {
                    self.plan.pop_front();
                    self.settled_elsewhere.insert(c.id);
                }
            }
            (Step::Reject { id }, Ok(Outcome::Connection(c))) if c.id == *id => {
                self.answered = true;
                self.plan.pop_front();
                self.succeeded.insert(step.name());
                if c.state == ConnectionState::Rejected {
                    self.rejected.push(decision(&c));
                    self.tally.rejected += 1;
                } else {
                    self.settled_elsewhere.insert(c.id);
                }
            }
            (Step::Accept { .. } | Step::Reject { .. }, Ok(Outcome::PoliciesChanged)) => {
                self.plan.clear();
                self.truncated = true;
                // Planned anew at once, from the policies as they are now.
                self.given_up = Cut::default();
            }
            (Step::Accept { id } | Step::Get { id } | Step::Reject { id }, Err(e))
                if matches!(e.class, ErrorClass::Conflict | ErrorClass::NotFound) =>
            {
                // No longer PENDING (someone else decided), or withdrawn: not ours to decide.
                self.answered = true;
                self.plan.pop_front();
                self.settled_elsewhere.insert(id.clone());
            }
            (Step::Accept { id } | Step::Get { id } | Step::Reject { id }, Err(e))
                if e.class.retry() != Retry::Backoff =>
            {
                self.answered = true;
                self.plan.pop_front();
                self.refused(step.name(), id, &e);
            }
            (Step::Accept { id } | Step::Get { id } | Step::Reject { id }, Err(e)) => {
                // Throttling is the account's, never one request's; nor is a region that does
                // not answer (the call was not even sent).
                if e.class != ErrorClass::Throttled && !e.is_unreached() {
                    self.next_memory.set_back.insert(id.clone());
                    self.request_fault = true;
                }
                let mut problem = Problem::from(&e);
                problem.message = format!("connection {id}: {}", problem.message);
                self.problem = Some(problem);
            }
            (_, Err(e)) => self.problem = Some(Problem::from(&e)),
            (step, Ok(outcome)) => {
                self.problem = Some(Problem {
                    reason: "AwsError",
                    message: format!("unexpected answer to {}: {outcome:?}", step.name()),
                    retry: Retry::Backoff,
                });
            }
        }
    }

    /// Records that AWS refused `operation` for request `id` (see [`Refused`]); the reconcile
    /// goes on with the next decision. Once `operation` was refused twice in this reconcile and
    /// never succeeded, it is most likely refused for every request (a permission missing): it
    /// is tried for no other request in this reconcile, so a missing permission costs two calls
    /// a reconcile, not one per request. Those not tried come first in the next.
    fn refused(&mut self, operation: &'static str, id: &str, e: &ProtonError) {
        let mut problem = Problem::from(e);
        problem.message = format!("connection {id}: {}", problem.message);
        let accepting = operation == "Accept";
        let attempts = self
            .next_memory
            .refused
            .get(id)
            .map_or(0, |r| r.attempts)
            .saturating_add(1);
        let wait = retry_after(problem.retry, attempts, self.settings.resync, self.jitter);
        let retry_at = jiff::SignedDuration::try_from(wait)
            .ok()
            .and_then(|wait| self.clock.checked_add(wait).ok())
            .unwrap_or(jiff::Timestamp::MAX);
        self.next_memory.refused.insert(
            id.to_string(),
            Refused {
                problem,
                accepting,
                generation: self.p.generation,
                attempts,
                retry_at,
            },
        );
        let times = self.refusals.entry(operation).or_default();
        *times += 1;
        if *times >= 2 && !self.succeeded.contains(operation) {
            self.plan
                .retain(|p| matches!(p, Planned::Accept(_)) != accepting);
            // A plan cut short at MAX_DECISIONS would bring the policy back at once for the
            // rest, and two more refusals each time: a missing permission and a thousand
            // requests would be a thousand calls back to back. Those of this operation wait for
            // the next poll.
            self.given_up.mark(accepting);
        }
    }

    /// From the listed requests to the decisions to make.
    fn plan_for(&mut self, listed: Vec<Connection>, taken: jiff::Timestamp, now: jiff::Timestamp) {
        // What is still listed of what was decided before, no longer than List may lag behind
        // the decision: a List taken (a List carried over deferrals may be old) that long after
        // it still showing it PENDING means it is PENDING.
        let lag = jiff::SignedDuration::try_from(self.settings.create_settle)
            .unwrap_or(jiff::SignedDuration::MAX);
        let recent = |at: &jiff::Timestamp| taken.duration_since(*at) < lag;
        self.next_memory.decided = listed
            .iter()
            .filter_map(|c| {
                let at = self.memory.decided.get(&c.id).filter(|at| recent(at))?;
                Some((c.id.clone(), *at))
            })
            .collect();
        let mine: Vec<Connection> = listed
            .into_iter()
            .filter(|c| {
                c.state == ConnectionState::Pending
                    && c.management_account_id == self.p.spec.management_account_id
                    && !self.next_memory.decided.contains_key(&c.id)
            })
            .collect();
        let rejects = self.p.spec.unmatched == UnmatchedRequests::Reject;
        for request in &mine {
            if matching::matches_request(self.p.spec, request) {
                self.plan.push_back(Planned::Accept(request.clone()));
            } else if rejects && !self.matched_by_any(request) {
                self.plan.push_back(Planned::Reject {
                    request: request.clone(),
                    checked: false,
                });
            }
        }
        // Accepts first (oldest request first), then rejections, then the refused ones due
        // again (those not due yet wait); at most MAX_DECISIONS. A refusal is kept while its
        // request is still this policy's to decide.
        let refused_before = std::mem::take(&mut self.next_memory.refused);
        let (mut plan, mut again) = (Vec::new(), Vec::new());
        for planned in self.plan.drain(..) {
            let accepting = matches!(planned, Planned::Accept(_));
            let refused = refused_before
                .get(planned.id())
                .filter(|r| r.accepting == accepting && r.generation == self.p.generation);
            match refused {
                None => plan.push(planned),
                Some(refused) => {
                    self.next_memory
                        .refused
                        .insert(planned.id().to_string(), refused.clone());
                    if refused.retry_at <= now {
                        again.push(planned);
                    }
                }
            }
        }
        // A request set back is still this policy's to decide while it is planned.
        let set_back = &self.memory.set_back;
        self.next_memory.set_back = plan
            .iter()
            .chain(&again)
            .map(|p| p.id())
            .filter(|id| set_back.contains(*id))
            .map(str::to_string)
            .collect();
        plan.sort_by_key(|p| (set_back.contains(p.id()), order(p)));
        again.sort_by_key(order);
        plan.extend(again);
        if plan.len() > MAX_DECISIONS {
            for left_out in plan.drain(MAX_DECISIONS..) {
                self.cut.mark(matches!(left_out, Planned::Accept(_)));
            }
            self.truncated = true;
        }
        self.plan = plan.into();
        self.requests = Some(mine);
    }

    /// The other policies that decide the same requests as this one: same management account
    /// and (resolved) region, a valid spec, and credentials that are not known to act as
    /// another account (the region is this one's, so it is allowed).
    fn group(&self) -> impl Iterator<Item = &Peer<'a>> {
        self.peers.iter().filter(|peer| {
            in_group(
                peer.spec,
                peer.acts,
                self.p.spec,
                &self.region,
                self.settings,
            )
        })
    }

    /// Whether any policy of the group (this one included, paused ones included) matches.
    fn matched_by_any(&self, request: &Connection) -> bool {
        matching::matches_request(self.p.spec, request)
            || self
                .group()
                .any(|peer| matching::matches_request(peer.spec, request))
    }

    /// Whether unmatched requests are rejected by some active policy of the group (one not
    /// known to act yet included: it is, in a moment, at start-up, and reporting the requests
    /// it is about to reject would be a Warning for nothing).
    fn group_rejects(&self) -> bool {
        self.p.spec.unmatched == UnmatchedRequests::Reject
            || self
                .group()
                .any(|peer| !peer.paused && peer.spec.unmatched == UnmatchedRequests::Reject)
    }

    /// The requests this reconcile leaves PENDING unmatched, newest first.
    fn left_pending(&self) -> Vec<&Connection> {
        let Some(requests) = &self.requests else {
            return Vec::new();
        };
        let planned_rejects: BTreeSet<&str> = self
            .plan
            .iter()
            .filter_map(|p| match p {
                Planned::Reject { request, .. } => Some(request.id.as_str()),
                Planned::Accept(_) => None,
            })
            .collect();
        let decided: BTreeSet<&str> = self
            .rejected
            .iter()
            .chain(&self.accepted)
            .map(|d| d.id.as_str())
            .collect();
        // A group that rejects unmatched requests leaves none pending on purpose: those not
        // rejected yet are on their way (here, or by another policy of the group).
        if self.group_rejects() {
            return Vec::new();
        }
        let mut left: Vec<&Connection> = requests
            .iter()
            .filter(|c| {
                !self.matched_by_any(c)
                    && !decided.contains(c.id.as_str())
                    && !planned_rejects.contains(c.id.as_str())
                    && !self.settled_elsewhere.contains(&c.id)
            })
            .collect();
        left.sort_by(|a, b| {
            b.requested_at
                .cmp(&a.requested_at)
                .then_with(|| a.id.cmp(&b.id))
        });
        left
    }

    /// The status with this reconcile's decisions (and, once listed, the requests left
    /// pending); conditions are the caller's.
    fn with_decisions(&self) -> Status {
        self.with_decisions_and(self.requests.is_some())
    }

    /// [`Self::with_decisions`], with the requests left pending only if `left` (a reconcile cut
    /// short keeps the recorded ones: they are announced when a reconcile completes).
    fn with_decisions_and(&self, left: bool) -> Status {
        let recorded = self.p.status;
        let mut status = recorded.clone();
        status.region = Some(self.region.clone());
        status.accepted_count = recorded.accepted_count + self.accepted.len() as u64;
        status.rejected_count = recorded.rejected_count + self.rejected.len() as u64;
        status.accepted = newest_first(&self.accepted, &recorded.accepted);
        status.rejected = newest_first(&self.rejected, &recorded.rejected);
        if left {
            let left = self.left_pending();
            status.left_pending_count = left.len() as u64;
            status.left_pending = left
                .into_iter()
                .take(STATUS_LIST_LIMIT)
                .map(|c| PendingRequest {
                    id: c.id.clone(),
                    environment_account_id: c.environment_account_id.clone(),
                    environment_name: c.environment_name.clone(),
                    requested_at: c.requested_at.clone(),
                })
                .collect();
        }
        status
    }

    /// Remembers what this reconcile decided, or found decided, so a lagging List does not make
    /// it decide again.
    fn remember_decided(&mut self, now: jiff::Timestamp) {
        let ids: Vec<String> = self
            .accepted
            .iter()
            .chain(&self.rejected)
            .map(|d| d.id.clone())
            .chain(self.settled_elsewhere.iter().cloned())
            .collect();
        for id in &ids {
            self.next_memory.refused.remove(id);
            self.next_memory.set_back.remove(id);
        }
        self.next_memory
            .decided
            .extend(ids.into_iter().map(|id| (id, now)));
    }

    /// The Events of this reconcile's decisions, and of requests left pending for the first
    /// time; updates what is remembered as announced.
    fn decision_events(&mut self) -> Vec<Note> {
        let mut events: Vec<Note> = self
            .accepted
            .iter()
            .map(|d| {
                Note::normal(
                    "Accepted",
                    format!(
                        "accepted connection {} from environment account {} for environment {}",
                        d.id, d.environment_account_id, d.environment_name
                    ),
                )
            })
            .collect();
        events.extend(self.rejected.iter().map(|d| {
            Note::normal(
                "Rejected",
                format!(
                    "rejected connection {} from environment account {} for environment {}: no policy for management account {} in {} matches it",
                    d.id, d.environment_account_id, d.environment_name,
                    self.p.spec.management_account_id, self.region
                ),
            )
        }));
        if self.requests.is_some() {
            let listed_before: BTreeSet<&str> = self
                .p
                .status
                .left_pending
                .iter()
                .map(|r| r.id.as_str())
                .collect();
            let left: Vec<(String, String, String, String)> = self
                .left_pending()
                .into_iter()
                .map(|c| {
                    (
                        c.id.clone(),
                        c.environment_account_id.clone(),
                        c.environment_name.clone(),
                        c.requested_at.clone(),
                    )
                })
                .collect();
            // After a restart nothing is remembered, and the status lists only the newest
            // requests left pending: the others it counts, older than its last, were announced
            // too (as many as it counts, while the spec is the one it describes).
            let recorded = &self.p.status;
            let mut unlisted = match recorded.left_pending.last() {
                Some(last)
                    if self.memory.announced.is_empty()
                        && recorded
                            .condition(SYNCED)
                            .and_then(|c| c.observed_generation)
                            == Some(self.p.generation) =>
                {
                    let count = recorded.left_pending_count;
                    let beyond = count.saturating_sub(recorded.left_pending.len() as u64);
                    Some((last, beyond))
                }
                _ => None,
            };
            let mut announced = BTreeSet::new();
            for (id, account, environment, requested_at) in left {
                let counted_before = match &mut unlisted {
                    Some((last, beyond)) if *beyond > 0 => {
                        let older = (requested_at.as_str(), std::cmp::Reverse(id.as_str()))
                            < (
                                last.requested_at.as_str(),
                                std::cmp::Reverse(last.id.as_str()),
                            );
                        if older {
                            *beyond -= 1;
                        }
                        older
                    }
                    _ => false,
                };
                if !self.memory.announced.contains(&id)
                    && !listed_before.contains(id.as_str())
                    && !counted_before
                {
                    self.tally.left_pending += 1;
                    events.push(Note::warning(
                        "LeftPending",
                        format!(
                            "connection {id} from environment account {account} for environment {environment} matches no policy for management account {} in {}; it is left PENDING (accept it by hand, add a policy that matches it, or set unmatched: Reject)",
                            self.p.spec.management_account_id, self.region
                        ),
                    ));
                }
                announced.insert(id);
            }
            self.next_memory.announced = announced;
        }
        events
    }

    fn settle(&mut self, now: jiff::Timestamp) -> Step {
        let mut status = self.with_decisions();
        status.observed_generation = Some(self.p.generation);
        let interval = self.settings.pending_poll;
        self.remember_decided(now);
        let refusal = self.refusal();
        let (ready, stalled) = match &refusal {
            // The other requests are decided as usual, and this is said until AWS accepts
            // the decision or the request is no longer this policy's to decide.
            Some(refused) => (
                Want::new(READY, false, refused.reason, refused.message.clone()),
                Want::new(STALLED, true, refused.reason, refused.message.clone()),
            ),
            None => (
                Want::new(
                    READY,
                    true,
                    "Applied",
                    format!(
                        "PENDING requests to management account {} in {} are decided every {}",
                        self.p.spec.management_account_id,
                        self.region,
                        humantime::format_duration(interval)
                    ),
                ),
                Want::new(STALLED, false, "Reconciled", ""),
            ),
        };
        status.conditions = conditions::build(
            &self.p.status.conditions,
            &[
                ready,
                Want::new(SYNCED, true, "ReconcileSuccess", "the policy is applied"),
                stalled,
            ],
            self.p.generation,
            now,
        );
        let mut events = self.decision_events();
        // Announced once: compared with the condition as stored (long messages are cut).
        if let Some(refused) = refusal
            && let Some(ready) = status.condition(READY)
            && self.p.status.condition(READY).is_none_or(|before| {
                before.status != ready.status
                    || before.reason != ready.reason
                    || before.message != ready.message
            })
        {
            events.push(Note::warning(refused.reason, refused.message));
        }
        // Back at once for what was left out, unless it is all of operations given up.
        let backlog = self.truncated
            && ((self.cut.accepts && !self.given_up.accepts)
                || (self.cut.rejects && !self.given_up.rejects)
                || self.cut == Cut::default());
        self.next_memory.backlog = backlog;
        let since = match self.memory.applied {
            Some((generation, at)) if generation == self.p.generation => at,
            _ => now,
        };
        self.next_memory.applied = Some((self.p.generation, since));
        let requeue = if backlog {
            self.keep_list(Duration::ZERO, now, true);
            Duration::ZERO
        } else {
            let age = Duration::try_from(now.duration_since(since)).unwrap_or_default();
            jittered(poll_interval(age, interval), self.jitter)
        };
        Step::Settle(Box::new(Settled {
            status,
            events,
            requeue,
        }))
    }

    /// What the policy says while AWS refuses a decision (see [`Refused`]): the first refused
    /// request's refusal.
    fn refusal(&self) -> Option<Problem> {
        // The same while the same request is the first refused: no count, which would make
        // each new refusal a status write and a Warning.
        let (_, first) = self.next_memory.refused.iter().next()?;
        Some(Problem {
            message: format!(
                "{}; each request AWS refuses is tried again later, the policy's other requests are decided meanwhile",
                first.problem.message
            ),
            ..first.problem.clone()
        })
    }

    fn paused(&mut self, now: jiff::Timestamp) -> Step {
        let message = format!(
            "annotation {PAUSED_ANNOTATION} is \"true\": no request is listed, accepted or rejected for this policy until it is removed (it still counts as matching for the other policies)"
        );
        let recorded = self.p.status;
        let kept = |type_: &'static str, default: Want| match recorded.condition(type_) {
            Some(prev) => Want {
                type_,
                status: prev.status == "True",
                reason: prev.reason.clone(),
                message: prev.message.clone(),
            },
            None => default,
        };
        let news = recorded
            .condition(SYNCED)
            .is_none_or(|c| c.reason != "Paused");
        let mut status = recorded.clone();
        status.conditions = conditions::build(
            &recorded.conditions,
            &[
                kept(READY, Want::new(READY, false, "Paused", message.clone())),
                Want::new(SYNCED, false, "Paused", message.clone()),
                kept(STALLED, Want::new(STALLED, false, "Paused", "")),
            ],
            recorded.observed_generation.unwrap_or(self.p.generation),
            now,
        );
        Step::Settle(Box::new(Settled {
            status,
            events: news
                .then(|| Note::normal("Paused", message))
                .into_iter()
                .collect(),
            requeue: jittered(self.settings.resync, self.jitter),
        }))
    }

    fn report(&mut self, problem: Problem, now: jiff::Timestamp) -> Step {
        let recorded = self.p.status;
        let mut status = self.with_decisions();
        status.observed_generation = conditions::observed_generation_after(
            recorded.observed_generation,
            &problem,
            self.p.generation,
        );
        let (conditions, news) = conditions::after_problem(
            &recorded.conditions,
            &problem,
            "Retrying",
            self.p.generation,
            now,
        );
        status.conditions = conditions;
        let mut events = self.decision_events();
        if news {
            events.push(Note::warning(problem.reason, problem.message.clone()));
        }
        // Decisions left undone are work for the next reconcile.
        self.next_memory.backlog = self.requests.is_some() && !self.plan.is_empty();
        self.remember_decided(now);
        let mut requeue = retry_after(
            problem.retry,
            self.p.failures.saturating_add(1),
            self.settings.resync,
            self.jitter,
        );
        // AWS answered the rest of this reconcile: the fault is most likely the request's, and
        // a backoff grown on it would keep requests made outside the cluster (which no
        // connection of this cluster nudges the policy for) waiting up to minutes, not a poll.
        if self.request_fault && self.answered {
            requeue = requeue.min(jittered(self.settings.pending_poll, self.jitter));
        }
        Step::Report(Box::new(Reported {
            status,
            problem,
            events,
            requeue,
        }))
    }

    /// Keeps this reconcile's List for the next one, due in `requeue`: a reconcile that ends
    /// with requests left to decide (deferred, or cut at [`MAX_DECISIONS`]) goes on from it
    /// instead of listing every page again.
    fn keep_list(&mut self, requeue: Duration, now: jiff::Timestamp, cut: bool) {
        let taken = self.listed_at.unwrap_or(now);
        self.next_memory.listed = self.listed.clone().map(|requests| Listed {
            generation: self.p.generation,
            taken,
            until: now
                .checked_add(
                    jiff::SignedDuration::try_from(requeue + LISTED_GRACE)
                        .unwrap_or(jiff::SignedDuration::ZERO),
                )
                .unwrap_or(now),
            requests,
            cut,
        });
    }

    fn defer(&mut self, class: CallClass, booked: Option<Duration>, now: jiff::Timestamp) -> Step {
        let decided = !self.accepted.is_empty() || !self.rejected.is_empty();
        let status = decided.then(|| Box::new(self.with_decisions_and(false)));
        // Only the decisions' Events: requests left pending are announced once a reconcile
        // completes (the status keeps the recorded ones until then).
        let requests = self.requests.take();
        let events = self.decision_events();
        self.requests = requests;
        self.next_memory.backlog = self.memory.backlog || decided;
        self.remember_decided(now);
        let requeue = booked.unwrap_or_else(|| {
            let base = match class {
                CallClass::Work => Duration::from_secs(1),
                _ => Duration::from_secs(2),
            };
            base.mul_f64(0.5 + self.jitter.clamp(0.0, 1.0))
        });
        self.keep_list(requeue, now, false);
        Step::Defer {
            class,
            requeue,
            status,
            events,
        }
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
        self.record(step, answer);
        None
    }
}

/// Whether a policy with `spec`, whose namespace's credentials `acts`, is of the group of a
/// policy with `of` acting in `region`: same management account and region, a valid spec, and
/// credentials not known to act as another account.
pub fn in_group(spec: &Spec, acts: Acts, of: &Spec, region: &str, settings: &Settings) -> bool {
    acts != Acts::No
        && spec.management_account_id == of.management_account_id
        && region_of(spec, settings) == region
        && matching::invalid(spec).is_empty()
}

/// The region a policy acts in.
pub fn region_of(spec: &Spec, settings: &Settings) -> String {
    spec.region
        .clone()
        .unwrap_or_else(|| settings.default_region.clone())
}

fn decision(c: &Connection) -> Decision {
    Decision {
        id: c.id.clone(),
        environment_account_id: c.environment_account_id.clone(),
        environment_name: c.environment_name.clone(),
        decided_at: c.last_modified_at.clone(),
    }
}

/// This reconcile's decisions (the latest first) before the recorded ones, at most the limit.
fn newest_first(new: &[Decision], recorded: &[Decision]) -> Vec<Decision> {
    let mut out: Vec<Decision> = new.iter().rev().cloned().collect();
    out.sort_by(|a, b| b.decided_at.cmp(&a.decided_at));
    for d in recorded {
        if !out.iter().any(|o| o.id == d.id) {
            out.push(d.clone());
        }
    }
    out.truncate(STATUS_LIST_LIMIT);
    out
}

/// Accepts before rejections, the oldest request first.
fn order(p: &Planned) -> (u8, String, String) {
    match p {
        Planned::Accept(c) => (0, c.requested_at.clone(), c.id.clone()),
        Planned::Reject { request, .. } => (1, request.requested_at.clone(), request.id.clone()),
    }
}

/// `interval` +/-10 %, by `jitter` in [0, 1).
/// The first List interval of a new or changed policy.
pub const FIRST_POLL: Duration = Duration::from_secs(2);

/// How long until a settled policy lists again, `age` after its generation was first settled:
/// every 2 s at first (a request made just before or after the policy is decided within
/// seconds), then a tenth of the age, up to `--pending-poll`, as a new PENDING connection is
/// polled.
pub fn poll_interval(age: Duration, pending_poll: Duration) -> Duration {
    (age / 10).clamp(FIRST_POLL.min(pending_poll), pending_poll)
}

fn jittered(interval: Duration, jitter: f64) -> Duration {
    let jitter = if jitter.is_finite() {
        jitter.clamp(0.0, 1.0)
    } else {
        0.5
    };
    interval.mul_f64(0.9 + 0.2 * jitter)
}

/// Which operations: accepts, rejections.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Cut {
    accepts: bool,
    rejects: bool,
}

impl Cut {
    fn mark(&mut self, accepting: bool) {
        if accepting {
            self.accepts = true;
        } else {
            self.rejects = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aws::proton::RoleArns;
    use crate::connection::decide::AdoptionPolicy;

    const MGMT: &str = "111122223333";
    /// Accepted by the policy under test.
    const MINE: &str = "444455556666";
    /// Matched only by the peer.
    const X: &str = "999900001111";
    const REGION: &str = "us-east-1";
    const SETTLE: Duration = Duration::from_secs(60);

    fn at(secs: i64) -> jiff::Timestamp {
        jiff::Timestamp::from_second(1_795_255_200 + secs).unwrap_or(jiff::Timestamp::UNIX_EPOCH)
    }

    fn settings() -> Settings {
        Settings {
            resync: Duration::from_secs(600),
            pending_poll: Duration::from_secs(30),
            default_region: REGION.into(),
            allowed_regions: Vec::new(),
            adoption: AdoptionPolicy::Everywhere,
            create_settle: SETTLE,
        }
    }

    fn spec(accounts: &[&str], unmatched: UnmatchedRequests) -> Spec {
        Spec {
            management_account_id: MGMT.into(),
            region: None,
            environment_account_ids: accounts.iter().map(|a| a.to_string()).collect(),
            environment_names: None,
            unmatched,
        }
    }

    fn request(id: &str, account: &str, state: ConnectionState) -> Connection {
        Connection {
            id: id.into(),
            arn: format!("arn:aws:proton:{REGION}:{account}:environment-account-connection/{id}"),
            state,
            environment_name: format!("env-{id}"),
            management_account_id: MGMT.into(),
            environment_account_id: account.into(),
            roles: RoleArns::default(),
            requested_at: at(0).to_string(),
            last_modified_at: at(0).to_string(),
        }
    }

    fn conflict() -> ProtonError {
        ProtonError {
            operation: "AcceptEnvironmentAccountConnection",
            class: ErrorClass::Conflict,
            code: "ConflictException".into(),
            message: "another operation is in progress".into(),
            retry_in: None,
        }
    }

    /// What a reconcile starts from.
    struct Given {
        spec: Spec,
        status: Status,
        memory: Memory,
        credentials: Option<Problem>,
        /// (spec, paused, acts)
        peers: Vec<(Spec, bool, Acts)>,
        settings: Settings,
    }

    impl Given {
        fn new(spec: Spec) -> Given {
            Given {
                spec,
                status: Status::default(),
                memory: Memory::default(),
                credentials: None,
                peers: Vec::new(),
                settings: settings(),
            }
        }

        fn peer(mut self, spec: Spec, paused: bool, acts: Acts) -> Given {
            self.peers.push((spec, paused, acts));
            self
        }
    }

    /// How a reconcile ended, and the AWS steps it took ("Accept c-1", ...).
    struct Ended {
        step: Step,
        memory: Memory,
        calls: Vec<String>,
    }

    impl Ended {
        fn settled(&self) -> &Settled {
            match &self.step {
                Step::Settle(s) => s,
                other => panic!("expected Settle, got {other:?}"),
            }
        }

        fn reported(&self) -> &Reported {
            match &self.step {
                Step::Report(r) => r,
                other => panic!("expected Report, got {other:?}"),
            }
        }
    }

    /// Runs one reconcile at `now`; `answer` plays Proton (WhoAmI is answered here).
    fn run(
        given: &Given,
        now: jiff::Timestamp,
        mut answer: impl FnMut(&Step) -> Result<Outcome, ProtonError>,
    ) -> Ended {
        let peers: Vec<Peer> = given
            .peers
            .iter()
            .map(|(spec, paused, acts)| Peer {
                namespace: "ns-b",
                name: "peer",
                spec,
                paused: *paused,
                acts: *acts,
            })
            .collect();
        let policy = Policy {
            uid: "uid-1",
            namespace: "ns-a",
            name: "policy",
            generation: 1,
            spec: &given.spec,
            status: &given.status,
            paused: false,
            quiet: None,
            failures: 0,
            credentials: given.credentials.as_ref(),
        };
        let mut r = Run::new(policy, &peers, &given.settings, &given.memory, 0.5);
        let mut calls = Vec::new();
        for _ in 0..100 {
            let step = r.next(now);
            if step.is_final() {
                return Ended {
                    step,
                    memory: r.memory().clone(),
                    calls,
                };
            }
            let result = match &step {
                Step::WhoAmI => Ok(Outcome::Account(MGMT.into())),
                other => {
                    calls.push(match other {
                        Step::List { .. } => "List".to_string(),
                        Step::Accept { id } => format!("Accept {id}"),
                        Step::Get { id } => format!("Get {id}"),
                        Step::Reject { id } => format!("Reject {id}"),
                        _ => other.name().to_string(),
                    });
                    answer(other)
                }
            };
            r.record(&step, result);
        }
        panic!("the reconcile did not end");
    }

    /// Proton holding `requests`: List shows them, Get reads them, Accept and Reject decide.
    fn proton(
        requests: &[Connection],
    ) -> impl FnMut(&Step) -> Result<Outcome, ProtonError> + use<> {
        let mut held: BTreeMap<String, Connection> =
            requests.iter().map(|c| (c.id.clone(), c.clone())).collect();
        move |step| match step {
            Step::List { .. } => Ok(Outcome::Requests(held.values().cloned().collect())),
            Step::Get { id } => held
                .get(id)
                .map(|c| Outcome::Connection(Box::new(c.clone())))
                .ok_or_else(conflict),
            Step::Accept { id } | Step::Reject { id } => {
                let c = held.get_mut(id).ok_or_else(conflict)?;
                c.state = match step {
                    Step::Accept { .. } => ConnectionState::Connected,
                    _ => ConnectionState::Rejected,
                };
                Ok(Outcome::Connection(Box::new(c.clone())))
            }
            other => panic!("not an AWS step: {other:?}"),
        }
    }

    fn warnings(events: &[Note]) -> Vec<&'static str> {
        events
            .iter()
            .filter(|n| n.warning)
            .map(|n| n.reason)
            .collect()
    }

    /// One reconcile of a policy accepting MINE, beside one peer, with a request from X pending.
    fn beside_a_peer(unmatched: UnmatchedRequests, peer: Spec, paused: bool, acts: Acts) -> Ended {
        let given = Given::new(spec(&[MINE], unmatched)).peer(peer, paused, acts);
        run(
            &given,
            at(100),
            proton(&[request("x-1", X, ConnectionState::Pending)]),
        )
    }

    #[test]
    fn a_policy_the_controller_cannot_act_for_does_not_shield_a_request_from_rejection() {
        // A tenant of another namespace (mapped to another account) names this management
        // account and matches X: its own reconcile stops on AccountMismatch, so it must not
        // keep X from being rejected either.
        let ended = beside_a_peer(
            UnmatchedRequests::Reject,
            spec(&[X], UnmatchedRequests::Leave),
            false,
            Acts::No,
        );
        assert_eq!(ended.calls, ["List", "Get x-1", "Reject x-1"]);
        assert_eq!(ended.settled().status.rejected_count, 1);
    }

    #[test]
    fn a_rejecting_policy_the_controller_cannot_act_for_does_not_silence_the_report() {
        let ended = beside_a_peer(
            UnmatchedRequests::Leave,
            spec(&["121212121212"], UnmatchedRequests::Reject),
            false,
            Acts::No,
        );
        let settled = ended.settled();
        assert_eq!(settled.status.left_pending_count, 1);
        assert_eq!(warnings(&settled.events), ["LeftPending"]);
    }

    /// At start-up (the controller's own account not asked yet), while a namespace is not in the
    /// watch yet, or while an admin's mappings overlap: it shields the requests it matches (a
    /// rejection cannot be undone), and if it rejects unmatched requests the others do not
    /// report them (it will, in a moment: a Warning would be for nothing).
    #[test]
    fn a_policy_not_known_to_act_yet_still_shields_its_requests_and_stands_in_for_rejecting() {
        let ended = beside_a_peer(
            UnmatchedRequests::Reject,
            spec(&[X], UnmatchedRequests::Leave),
            false,
            Acts::Unknown,
        );
        assert_eq!(ended.calls, ["List"], "a rejection cannot be undone");
        let ended = beside_a_peer(
            UnmatchedRequests::Leave,
            spec(&["121212121212"], UnmatchedRequests::Reject),
            false,
            Acts::Unknown,
        );
        assert_eq!(ended.settled().status.left_pending_count, 0);
        assert!(warnings(&ended.settled().events).is_empty());
    }

    #[test]
    fn a_paused_policy_that_acts_still_shields_and_an_invalid_one_does_not() {
        let ended = beside_a_peer(
            UnmatchedRequests::Reject,
            spec(&[X], UnmatchedRequests::Leave),
            true,
            Acts::Yes,
        );
        assert_eq!(ended.calls, ["List"]);
        // It would match X, but is refused: its own reconcile decides nothing.
        let invalid_spec = spec(&[X, "not-an-account"], UnmatchedRequests::Leave);
        let ended = beside_a_peer(UnmatchedRequests::Reject, invalid_spec, false, Acts::Yes);
        assert_eq!(ended.calls, ["List", "Get x-1", "Reject x-1"]);
    }

    #[test]
    fn no_reject_is_sent_once_the_policies_changed_during_the_reconcile() {
        // The executor answers a Reject with PoliciesChanged, without sending it, when the
        // group in the watch cache is no longer the one the plan was made from.
        let given = Given::new(spec(&[MINE], UnmatchedRequests::Reject));
        let mut aws = proton(&[
            request("x-1", X, ConnectionState::Pending),
            request("x-2", X, ConnectionState::Pending),
        ]);
        let ended = run(&given, at(100), |step| match step {
            Step::Reject { .. } => Ok(Outcome::PoliciesChanged),
            other => aws(other),
        });
        assert_eq!(ended.calls, ["List", "Get x-1", "Reject x-1"]);
        let settled = ended.settled();
        assert_eq!(settled.status.rejected_count, 0);
        assert_eq!(settled.requeue, Duration::ZERO, "decided again at once");
        assert!(ended.memory.backlog, "the next List is work");
        assert!(ended.memory.decided.is_empty(), "nothing was decided");
    }

    #[test]
    fn no_accept_is_sent_once_the_policy_changed_during_the_reconcile() {
        // The executor answers an Accept with PoliciesChanged, without sending it, when the
        // policy in the watch cache was edited, paused or deleted since the plan was made.
        let given = Given::new(spec(&[MINE], UnmatchedRequests::Leave));
        let mut aws = proton(&[
            request("c-1", MINE, ConnectionState::Pending),
            request("c-2", MINE, ConnectionState::Pending),
        ]);
        let mut accepts = 0;
        let ended = run(&given, at(100), |step| match step {
            Step::Accept { .. } if accepts == 1 => Ok(Outcome::PoliciesChanged),
            Step::Accept { .. } => {
                accepts += 1;
                aws(step)
            }
            other => aws(other),
        });
        assert_eq!(ended.calls, ["List", "Accept c-1", "Accept c-2"]);
        let settled = ended.settled();
        assert_eq!(settled.status.accepted_count, 1, "c-1 only");
        assert_eq!(settled.requeue, Duration::ZERO, "decided again at once");
        assert!(ended.memory.backlog, "the next List is work");
        assert_eq!(
            ended.memory.decided.keys().collect::<Vec<_>>(),
            ["c-1"],
            "c-2 was not decided"
        );
    }

    #[test]
    fn a_request_still_pending_after_a_conflict_is_decided_again_once_the_list_lag_is_over() {
        // ConflictException does not prove the request left PENDING.
        let pending = [request("c-1", MINE, ConnectionState::Pending)];
        let mut given = Given::new(spec(&[MINE], UnmatchedRequests::Leave));
        let first = run(&given, at(100), |step| match step {
            Step::Accept { .. } => Err(conflict()),
            other => proton(&pending)(other),
        });
        assert_eq!(first.calls, ["List", "Accept c-1"]);
        given.memory = first.memory.clone();
        given.status = first.settled().status.clone();
        // Within the lag, a List that still shows it may lag behind someone else's decision.
        let within = run(&given, at(100) + SETTLE / 2, proton(&pending));
        assert_eq!(within.calls, ["List"]);
        given.memory = within.memory.clone();
        let after = run(&given, at(101) + SETTLE, proton(&pending));
        assert_eq!(after.calls, ["List", "Accept c-1"]);
        assert_eq!(after.settled().status.accepted_count, 1);
    }

    /// A List carried over deferrals may be older than a decision made since: it still shows
    /// the request PENDING, however long after the decision it is planned from, and that says
    /// nothing; only a List taken the lag after the decision does.
    #[test]
    fn a_list_carried_over_deferrals_from_before_a_decision_does_not_make_it_decided_again() {
        let pending = vec![request("c-1", MINE, ConnectionState::Pending)];
        let mut given = Given::new(spec(&[MINE], UnmatchedRequests::Leave));
        given.memory.decided.insert("c-1".into(), at(100));
        let carried = |taken: jiff::Timestamp| Listed {
            generation: 1,
            until: at(10_000),
            taken,
            requests: pending.clone(),
            cut: false,
        };
        given.memory.listed = Some(carried(at(50)));
        let later = at(100) + SETTLE * 3;
        let old = run(&given, later, |step| panic!("no call: {step:?}"));
        assert!(old.calls.is_empty(), "{:?}", old.calls);
        assert_eq!(old.settled().status.accepted_count, 0);
        given.memory.listed = Some(carried(at(101) + SETTLE));
        let fresh = run(&given, later, proton(&pending));
        assert_eq!(fresh.calls, ["Accept c-1"]);
    }

    #[test]
    fn a_namespace_without_credentials_makes_ready_false_once_and_calls_nothing() {
        let mut given = Given::new(spec(&[MINE], UnmatchedRequests::Leave));
        let applied = run(&given, at(100), proton(&[]));
        given.status = applied.settled().status.clone();
        assert_eq!(
            given.status.condition(READY).map(|c| c.status.as_str()),
            Some("True")
        );
        given.credentials = Some(crate::mapping::MappingError::Unmapped("ns-a".into()).problem());
        let refused = run(&given, at(200), |step| panic!("no call: {step:?}"));
        let reported = refused.reported();
        let ready = reported.status.condition(READY);
        assert_eq!(
            ready.map(|c| (c.status.as_str(), c.reason.as_str())),
            Some(("False", "NoAccountMapping"))
        );
        assert_eq!(warnings(&reported.events), ["NoAccountMapping"]);
        given.status = reported.status.clone();
        let again = run(&given, at(300), |step| panic!("no call: {step:?}"));
        assert_eq!(again.reported().status, given.status, "nothing to write");
        assert_eq!(warnings(&again.reported().events), Vec::<&str>::new());
    }
}
