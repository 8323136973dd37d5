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
//! - A request matched by *no* policy of the same management account and region (from the watch
//!   cache, paused policies included) is *unmatched*. It is rejected by every active policy of
//!   the group with `unmatched: Reject`, after a re-read shows it still PENDING; otherwise it is
//!   left PENDING and reported (status `leftPending`, one Warning Event per request) by every
//!   policy of the group, unless an active policy of the group rejects such requests.
//! - A request matched by another policy (not this one) is that policy's to accept: left alone.
//! - Accept answered ConflictException (no longer PENDING) or ResourceNotFound: someone else
//!   decided, or the request was withdrawn; nothing to record, no error.
//! - What was decided is remembered while a (lagging) List still shows it PENDING, so nothing is
//!   decided twice; requests left pending are announced once (remembered, and the status lists
//!   the newest 20).

use std::collections::{BTreeSet, VecDeque};
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
}

/// A policy in the cluster (this one included), as the watch cache shows it: what the
/// "matched by no policy" rule looks at.
#[derive(Clone, Debug)]
pub struct Peer<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    pub spec: &'a Spec,
    pub paused: bool,
}

/// What the controller keeps about a policy between reconciles.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Memory {
    /// Requests whose LeftPending Warning was published (every one, not only the 20 listed).
    pub announced: BTreeSet<String>,
    /// The last reconcile stopped with decisions left to make: the next one is work, at once.
    pub backlog: bool,
    /// Requests this policy decided (or found decided by someone else) that a List may still
    /// show as PENDING for a while (List is eventually consistent): not decided again while they
    /// are listed.
    pub decided: BTreeSet<String>,
    /// The List of a reconcile whose next call was deferred: the next reconcile decides from it
    /// instead of listing again, so the slot booked for the policy goes to the deferred
    /// decision (else every slot would go to a new List, and no decision would ever be made
    /// while the budget is busy).
    pub listed: Option<Listed>,
    /// The generation last settled, and when it first was: a new or changed policy lists often
    /// at first, then less often (see [`poll_interval`]).
    pub applied: Option<(i64, jiff::Timestamp)>,
}

/// A List kept across a deferral, valid for the generation it was made for until `until`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listed {
    pub generation: i64,
    pub until: jiff::Timestamp,
    pub requests: Vec<Connection>,
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
    /// More decisions were due than one reconcile makes.
    truncated: bool,
    deferred: Option<(CallClass, Option<Duration>)>,
    problem: Option<Problem>,
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
            truncated: false,
            deferred: None,
            problem: None,
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
            match carried {
                Some(listed) => {
                    let requests = listed.requests.clone();
                    self.next_memory.listed = None;
                    self.listed = Some(requests.clone());
                    self.plan_for(requests);
                }
                None => {
                    return Step::List {
                        region: self.region.clone(),
                    };
                }
            }
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
                self.next_memory.listed = None;
                self.listed = Some(listed.clone());
                self.plan_for(listed);
            }
            (Step::Accept { id }, Ok(Outcome::Connection(c))) if c.id == *id => {
                self.plan.pop_front();
                if c.state == ConnectionState::Connected {
                    self.accepted.push(decision(&c));
                    self.tally.accepted += 1;
                } else {
                    // Accepted without becoming CONNECTED: someone else answered first.
                    self.settled_elsewhere.insert(c.id.clone());
                }
            }
            (Step::Get { id }, Ok(Outcome::Connection(c))) if c.id == *id => {
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
                self.plan.pop_front();
                if c.state == ConnectionState::Rejected {
                    self.rejected.push(decision(&c));
                    self.tally.rejected += 1;
                } else {
                    self.settled_elsewhere.insert(c.id);
                }
            }
            (Step::Accept { id } | Step::Get { id } | Step::Reject { id }, Err(e))
                if matches!(e.class, ErrorClass::Conflict | ErrorClass::NotFound) =>
            {
                // No longer PENDING (someone else decided), or withdrawn: not ours to decide.
                self.plan.pop_front();
                self.settled_elsewhere.insert(id.clone());
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

    /// From the listed requests to the decisions to make.
    fn plan_for(&mut self, listed: Vec<Connection>) {
        // What is still listed of what was decided before: List lags behind the decisions.
        self.next_memory.decided = listed
            .iter()
            .filter(|c| self.memory.decided.contains(&c.id))
            .map(|c| c.id.clone())
            .collect();
        let mine: Vec<Connection> = listed
            .into_iter()
            .filter(|c| {
                c.state == ConnectionState::Pending
                    && c.management_account_id == self.p.spec.management_account_id
                    && !self.memory.decided.contains(&c.id)
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
        // Accepts first (oldest request first), then rejections; at most MAX_DECISIONS.
        let mut plan: Vec<Planned> = self.plan.drain(..).collect();
        plan.sort_by_key(order);
        if plan.len() > MAX_DECISIONS {
            plan.truncate(MAX_DECISIONS);
            self.truncated = true;
        }
        self.plan = plan.into();
        self.requests = Some(mine);
    }

    /// The policies that decide the same requests as this one: same management account and
    /// (resolved) region.
    fn group(&self) -> impl Iterator<Item = &Peer<'a>> {
        self.peers.iter().filter(|peer| {
            peer.spec.management_account_id == self.p.spec.management_account_id
                && region_of(peer.spec, self.settings) == self.region
        })
    }

    /// Whether any policy of the group (this one included, paused ones included) matches.
    fn matched_by_any(&self, request: &Connection) -> bool {
        matching::matches_request(self.p.spec, request)
            || self
                .group()
                .any(|peer| matching::matches_request(peer.spec, request))
    }

    /// Whether unmatched requests are rejected by some active policy of the group.
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
    fn remember_decided(&mut self) {
        let ids: Vec<String> = self
            .accepted
            .iter()
            .chain(&self.rejected)
            .map(|d| d.id.clone())
            .chain(self.settled_elsewhere.iter().cloned())
            .collect();
        self.next_memory.decided.extend(ids);
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
            let left: Vec<(String, String, String)> = self
                .left_pending()
                .into_iter()
                .map(|c| {
                    (
                        c.id.clone(),
                        c.environment_account_id.clone(),
                        c.environment_name.clone(),
                    )
                })
                .collect();
            let mut announced = BTreeSet::new();
            for (id, account, environment) in left {
                if !self.memory.announced.contains(&id) && !listed_before.contains(id.as_str()) {
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
        status.conditions = conditions::build(
            &self.p.status.conditions,
            &[
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
                Want::new(SYNCED, true, "ReconcileSuccess", "the policy is applied"),
                Want::new(STALLED, false, "Reconciled", ""),
            ],
            self.p.generation,
            now,
        );
        let events = self.decision_events();
        self.next_memory.backlog = self.truncated;
        self.remember_decided();
        let since = match self.memory.applied {
            Some((generation, at)) if generation == self.p.generation => at,
            _ => now,
        };
        self.next_memory.applied = Some((self.p.generation, since));
        let requeue = if self.truncated {
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
        status.observed_generation = Some(self.p.generation);
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
        self.remember_decided();
        let requeue = retry_after(
            problem.retry,
            self.p.failures.saturating_add(1),
            self.settings.resync,
            self.jitter,
        );
        Step::Report(Box::new(Reported {
            status,
            problem,
            events,
            requeue,
        }))
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
        self.remember_decided();
        let requeue = booked.unwrap_or_else(|| {
            let base = match class {
                CallClass::Work => Duration::from_secs(1),
                _ => Duration::from_secs(2),
            };
            base.mul_f64(0.5 + self.jitter.clamp(0.0, 1.0))
        });
        self.next_memory.listed = self.listed.clone().map(|requests| Listed {
            generation: self.p.generation,
            until: now
                .checked_add(
                    jiff::SignedDuration::try_from(requeue + LISTED_GRACE)
                        .unwrap_or(jiff::SignedDuration::ZERO),
                )
                .unwrap_or(now),
            requests,
        });
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
