//! Decision-table tests of the management side's pure reconcile (`src/policy/decide.rs`).
//!
//! Synchronous, no I/O. A reconcile is driven as the controller drives it: `Run::next` names a
//! step, a tiny in-memory Proton (`Fake`) answers it with the raw answer a call would get, and
//! `Run::record` gives the answer its meaning. The fake interprets nothing: what a conflict or a
//! NotFound means is decided by the code under test.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use eac_controller::aws::budget::CallClass;
use eac_controller::aws::proton::{Connection, ErrorClass, ProtonError, RoleArns};
use eac_controller::conditions::{READY, STALLED, SYNCED};
use eac_controller::connection::api::ConnectionState;
use eac_controller::connection::decide::{AdoptionPolicy, Note, Settings};
use eac_controller::policy::api::{
    ConnectionAcceptancePolicySpec as Spec, ConnectionAcceptancePolicyStatus as Status,
    PendingRequest, STATUS_LIST_LIMIT, UnmatchedRequests,
};
use eac_controller::policy::decide::{
    Acts, MAX_DECISIONS, Memory, Outcome, Peer, Policy, Reported, Run, Settled, Step, Tally,
};

// ---------------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------------

const MGMT: &str = "111122223333";
const OTHER_MGMT: &str = "121212121212";
/// Environment accounts: the policy under test accepts A; its peer accepts B; the peer in
/// another region accepts C; nobody accepts D.
const A: &str = "444455556666";
const B: &str = "555566667777";
const C: &str = "666677778888";
const D: &str = "999900001111";
const REGION: &str = "us-east-1";
const OTHER_REGION: &str = "eu-west-1";
const POLL: Duration = Duration::from_secs(30);
const JITTER: f64 = 0.5;

const PENDING: ConnectionState = ConnectionState::Pending;
const CONNECTED: ConnectionState = ConnectionState::Connected;
const REJECTED: ConnectionState = ConnectionState::Rejected;

fn at(secs: i64) -> jiff::Timestamp {
    jiff::Timestamp::from_second(1_795_255_200 + secs).unwrap()
}

fn rfc(secs: i64) -> String {
    at(secs).to_string()
}

fn settings() -> Settings {
    Settings {
        resync: Duration::from_secs(600),
        pending_poll: POLL,
        default_region: REGION.into(),
        allowed_regions: Vec::new(),
        adoption: AdoptionPolicy::Everywhere,
        create_settle: Duration::from_secs(60),
    }
}

/// The policy under test: accepts A's requests for `prod-*` environments.
fn spec(unmatched: UnmatchedRequests) -> Spec {
    Spec {
        management_account_id: MGMT.into(),
        region: None,
        environment_account_ids: vec![A.into()],
        environment_names: Some(vec!["prod-*".into()]),
        unmatched,
    }
}

/// The other policy of the same group: accepts B's requests, any name.
fn peer_spec(unmatched: UnmatchedRequests) -> Spec {
    Spec {
        management_account_id: MGMT.into(),
        region: None,
        environment_account_ids: vec![B.into()],
        environment_names: None,
        unmatched,
    }
}

/// A policy of another group (another region): accepts C's requests there.
fn other_region_spec() -> Spec {
    Spec {
        management_account_id: MGMT.into(),
        region: Some(OTHER_REGION.into()),
        environment_account_ids: vec![C.into()],
        environment_names: None,
        unmatched: UnmatchedRequests::Reject,
    }
}

fn request(id: &str, account: &str, environment: &str, state: ConnectionState) -> Connection {
    request_at(id, account, environment, state, 0)
}

fn request_at(
    id: &str,
    account: &str,
    environment: &str,
    state: ConnectionState,
    requested: i64,
) -> Connection {
    Connection {
        id: id.into(),
        arn: format!("arn:aws:proton:{REGION}:{account}:environment-account-connection/{id}"),
        state,
        environment_name: environment.into(),
        management_account_id: MGMT.into(),
        environment_account_id: account.into(),
        roles: RoleArns::default(),
        requested_at: rfc(requested),
        last_modified_at: rfc(requested),
    }
}

fn error(class: ErrorClass, code: &str) -> ProtonError {
    ProtonError {
        operation: "AcceptEnvironmentAccountConnection",
        class,
        code: code.into(),
        message: format!("{code} from the fake"),
        retry_in: None,
    }
}

/// What a scenario starts from.
#[derive(Clone)]
struct Given {
    spec: Spec,
    generation: i64,
    status: Status,
    paused: bool,
    quiet: Option<Duration>,
    failures: u32,
    memory: Memory,
    /// The other policies of the cluster: (spec, paused).
    peers: Vec<(Spec, bool)>,
    settings: Settings,
    /// When the reconcile runs (seconds, as [`at`] counts them).
    now: i64,
}

impl Given {
    fn new(spec: Spec) -> Given {
        Given {
            spec,
            generation: 1,
            status: Status::default(),
            paused: false,
            quiet: None,
            failures: 0,
            memory: Memory::default(),
            peers: Vec::new(),
            settings: settings(),
            now: 2_000,
        }
    }

    fn peer(mut self, spec: Spec, paused: bool) -> Given {
        self.peers.push((spec, paused));
        self
    }
}

/// A tiny Proton: the management account's view of connection requests. List answers every
/// connection it holds (as today's emulator does, whatever `requestedBy` and `statuses` say), so
/// the filtering is the decision's.
#[derive(Clone, Default)]
struct Fake {
    account: String,
    connections: BTreeMap<String, Connection>,
    /// Applied right after List answers: someone else decides (or withdraws) in between.
    after_list: Vec<(String, Option<ConnectionState>)>,
    /// Errors by step name, answered instead of the call (each used once).
    failures: BTreeMap<&'static str, Vec<ProtonError>>,
    /// Calls by step name answered as usual before its failures are.
    passes: BTreeMap<&'static str, usize>,
    /// Errors answered to every call for one request, by call ("Accept c-1").
    broken: BTreeMap<String, ProtonError>,
    calls: Vec<String>,
    clock: i64,
}

impl Fake {
    fn with(requests: &[Connection]) -> Fake {
        Fake {
            account: MGMT.into(),
            connections: requests.iter().map(|c| (c.id.clone(), c.clone())).collect(),
            clock: 1_000,
            ..Fake::default()
        }
    }

    fn fail(&mut self, step: &'static str, e: ProtonError) {
        self.failures.entry(step).or_default().push(e);
    }

    fn answer(&mut self, step: &Step) -> Result<Outcome, ProtonError> {
        let label = match step {
            Step::WhoAmI => "WhoAmI".to_string(),
            Step::List { region } => format!("List {region}"),
            Step::Accept { id } => format!("Accept {id}"),
            Step::Get { id } => format!("Get {id}"),
            Step::Reject { id } => format!("Reject {id}"),
            other => panic!("not an AWS step: {other:?}"),
        };
        if let Some(e) = self.broken.get(&label) {
            self.calls.push(label);
            return Err(e.clone());
        }
        self.calls.push(label);
        let passing = self.passes.get_mut(step.name()).filter(|n| **n > 0);
        if let Some(n) = passing {
            *n -= 1;
        } else if let Some(queue) = self.failures.get_mut(step.name())
            && !queue.is_empty()
        {
            return Err(queue.remove(0));
        }
        self.clock += 1;
        let now = rfc(self.clock);
        let not_found = || ProtonError {
            operation: "op",
            class: ErrorClass::NotFound,
            code: "ResourceNotFoundException".into(),
            message: "not found".into(),
            retry_in: None,
        };
        let conflict = |c: &Connection| ProtonError {
            operation: "op",
            class: ErrorClass::Conflict,
            code: "ConflictException".into(),
            message: format!("{} is {}", c.id, c.state.as_str()),
            retry_in: None,
        };
        match step {
            Step::WhoAmI => Ok(Outcome::Account(self.account.clone())),
            Step::List { .. } => {
                let listed = self.connections.values().cloned().collect();
                for (id, change) in std::mem::take(&mut self.after_list) {
                    match change {
                        Some(state) => {
                            if let Some(c) = self.connections.get_mut(&id) {
                                c.state = state;
                            }
                        }
                        None => {
                            self.connections.remove(&id);
                        }
                    }
                }
                Ok(Outcome::Requests(listed))
            }
            Step::Get { id } => self
                .connections
                .get(id)
                .cloned()
                .map(|c| Outcome::Connection(Box::new(c)))
                .ok_or_else(not_found),
            Step::Accept { id } | Step::Reject { id } => {
                let accept = matches!(step, Step::Accept { .. });
                let c = self.connections.get_mut(id).ok_or_else(not_found)?;
                let allowed = if accept {
                    c.state == PENDING
                } else {
                    c.state != REJECTED
                };
                if !allowed {
                    return Err(conflict(c));
                }
                c.state = if accept { CONNECTED } else { REJECTED };
                c.last_modified_at = now;
                Ok(Outcome::Connection(Box::new(c.clone())))
            }
            _ => unreachable!(),
        }
    }
}

/// How a reconcile ended.
struct Ended {
    step: Step,
    tally: Tally,
    memory: Memory,
    /// (step, budget class) of every Proton step, in order.
    classes: Vec<(String, CallClass)>,
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

    fn status(&self) -> &Status {
        match &self.step {
            Step::Settle(s) => &s.status,
            Step::Report(r) => &r.status,
            Step::Defer {
                status: Some(s), ..
            } => s,
            other => panic!("no status in {other:?}"),
        }
    }

    fn events(&self) -> Vec<(&'static str, bool)> {
        let notes: &[Note] = match &self.step {
            Step::Settle(s) => &s.events,
            Step::Report(r) => &r.events,
            Step::Defer { events, .. } => events,
            _ => &[],
        };
        notes.iter().map(|n| (n.reason, n.warning)).collect()
    }
}

/// Runs one reconcile to its final step against the fake.
fn run(given: &Given, fake: &mut Fake) -> Ended {
    let peers: Vec<Peer> = given
        .peers
        .iter()
        .enumerate()
        .map(|(i, (spec, paused))| Peer {
            namespace: "team",
            name: ["peer-0", "peer-1", "peer-2", "peer-3"][i],
            spec,
            paused: *paused,
            acts: Acts::Yes,
        })
        .collect();
    let policy = Policy {
        uid: "uid-1",
        namespace: "platform",
        name: "accept-prod",
        generation: given.generation,
        spec: &given.spec,
        status: &given.status,
        paused: given.paused,
        quiet: given.quiet,
        failures: given.failures,
        credentials: None,
    };
    let mut run = Run::new(policy, &peers, &given.settings, &given.memory, JITTER);
    let mut classes = Vec::new();
    for _ in 0..1_000 {
        let step = run.next(at(given.now));
        if step.is_final() {
            return Ended {
                step,
                tally: run.tally(),
                memory: run.memory().clone(),
                classes,
            };
        }
        // WhoAmI is STS (cached), outside the Proton call budget.
        if step != Step::WhoAmI {
            classes.push((step.name().to_string(), run.class_of(&step)));
        }
        let answer = fake.answer(&step);
        run.record(&step, answer);
    }
    panic!("the reconcile did not end");
}

fn condition(status: &Status, type_: &str) -> (String, String) {
    let c = status
        .condition(type_)
        .unwrap_or_else(|| panic!("no {type_} condition in {status:#?}"));
    (c.status.clone(), c.reason.clone())
}

fn ids(list: &[impl HasId]) -> Vec<&str> {
    list.iter().map(HasId::id).collect()
}

trait HasId {
    fn id(&self) -> &str;
}
impl HasId for PendingRequest {
    fn id(&self) -> &str {
        &self.id
    }
}
impl HasId for eac_controller::policy::api::Decision {
    fn id(&self) -> &str {
        &self.id
    }
}

// ---------------------------------------------------------------------------------------------
// The table: request state x who matches x the policy's option x the peer's option
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Matched {
    /// The policy under test (account A, name prod-*).
    ThisPolicy,
    /// The peer of the same group (account B).
    Peer,
    /// Account A but another name: the policy's account, not its names.
    NameOnly,
    /// Only a policy of another region (account C): no policy of this group.
    OtherGroupOnly,
    /// Nobody (account D).
    Nobody,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PeerPolicy {
    None,
    Leave,
    Reject,
    PausedReject,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    Accepted,
    Rejected,
    LeftPending,
    /// No call about it, not in the status.
    Untouched,
}

fn requester(m: Matched) -> (&'static str, &'static str) {
    match m {
        Matched::ThisPolicy => (A, "prod-eu"),
        Matched::Peer => (B, "anything"),
        Matched::NameOnly => (A, "dev"),
        Matched::OtherGroupOnly => (C, "prod-eu"),
        Matched::Nobody => (D, "prod-eu"),
    }
}

/// The rule, written out: what should happen to one listed request.
fn expected(
    state: ConnectionState,
    matched: Matched,
    unmatched: UnmatchedRequests,
    peer: PeerPolicy,
) -> Expect {
    if state != PENDING {
        return Expect::Untouched;
    }
    let peer_matches = matched == Matched::Peer && peer != PeerPolicy::None;
    match matched {
        Matched::ThisPolicy => Expect::Accepted,
        _ if peer_matches => Expect::Untouched,
        _ if unmatched == UnmatchedRequests::Reject => Expect::Rejected,
        // Another active policy of the group rejects unmatched requests: they are on their way
        // out, not left pending.
        _ if peer == PeerPolicy::Reject => Expect::Untouched,
        _ => Expect::LeftPending,
    }
}

#[test]
fn every_request_state_matching_option_and_peer_combination() {
    let states = [PENDING, CONNECTED, REJECTED];
    let matches = [
        Matched::ThisPolicy,
        Matched::Peer,
        Matched::NameOnly,
        Matched::OtherGroupOnly,
        Matched::Nobody,
    ];
    let options = [UnmatchedRequests::Leave, UnmatchedRequests::Reject];
    let peers = [
        PeerPolicy::None,
        PeerPolicy::Leave,
        PeerPolicy::Reject,
        PeerPolicy::PausedReject,
    ];
    let mut rows = 0;
    for state in states {
        for matched in matches {
            for unmatched in options {
                for peer in peers {
                    rows += 1;
                    let case =
                        format!("{state:?} {matched:?} unmatched={unmatched:?} peer={peer:?}");
                    let mut given = Given::new(spec(unmatched)).peer(other_region_spec(), false);
                    given = match peer {
                        PeerPolicy::None => given,
                        PeerPolicy::Leave => given.peer(peer_spec(UnmatchedRequests::Leave), false),
                        PeerPolicy::Reject => {
                            given.peer(peer_spec(UnmatchedRequests::Reject), false)
                        }
                        PeerPolicy::PausedReject => {
                            given.peer(peer_spec(UnmatchedRequests::Reject), true)
                        }
                    };
                    let (account, environment) = requester(matched);
                    let id = "c0000000-0000-4000-8000-000000000001";
                    let mut fake = Fake::with(&[request(id, account, environment, state)]);
                    let ended = run(&given, &mut fake);
                    let settled = ended.settled();
                    let status = &settled.status;
                    let aws: Vec<&str> = fake.calls.iter().map(String::as_str).collect();
                    let want = expected(state, matched, unmatched, peer);
                    match want {
                        Expect::Accepted => {
                            assert_eq!(
                                aws,
                                ["WhoAmI", "List us-east-1", &format!("Accept {id}")],
                                "{case}"
                            );
                            assert_eq!(ids(&status.accepted), [id], "{case}");
                            assert_eq!(status.accepted_count, 1, "{case}");
                            assert_eq!(fake.connections[id].state, CONNECTED, "{case}");
                            assert_eq!(ended.events(), [("Accepted", false)], "{case}");
                        }
                        Expect::Rejected => {
                            assert_eq!(
                                aws,
                                [
                                    "WhoAmI",
                                    "List us-east-1",
                                    &format!("Get {id}"),
                                    &format!("Reject {id}")
                                ],
                                "{case}"
                            );
                            assert_eq!(ids(&status.rejected), [id], "{case}");
                            assert_eq!(status.rejected_count, 1, "{case}");
                            assert_eq!(fake.connections[id].state, REJECTED, "{case}");
                            assert_eq!(ended.events(), [("Rejected", false)], "{case}");
                        }
                        Expect::LeftPending => {
                            assert_eq!(aws, ["WhoAmI", "List us-east-1"], "{case}");
                            assert_eq!(ids(&status.left_pending), [id], "{case}");
                            assert_eq!(status.left_pending_count, 1, "{case}");
                            assert_eq!(ended.events(), [("LeftPending", true)], "{case}");
                            assert_eq!(ended.tally.left_pending, 1, "{case}");
                        }
                        Expect::Untouched => {
                            assert_eq!(aws, ["WhoAmI", "List us-east-1"], "{case}");
                            assert!(status.left_pending.is_empty(), "{case}");
                            assert_eq!(status.left_pending_count, 0, "{case}");
                            assert_eq!(ended.events(), [], "{case}");
                            assert_eq!(fake.connections[id].state, state, "{case}");
                        }
                    }
                    if want != Expect::Accepted {
                        assert!(status.accepted.is_empty(), "{case}");
                    }
                    if want != Expect::Rejected {
                        assert!(status.rejected.is_empty(), "{case}");
                    }
                    // Whatever was decided, the policy is in effect.
                    assert_eq!(
                        condition(status, READY),
                        ("True".into(), "Applied".into()),
                        "{case}"
                    );
                    assert_eq!(condition(status, SYNCED).0, "True", "{case}");
                    assert_eq!(condition(status, STALLED).0, "False", "{case}");
                    assert_eq!(status.observed_generation, Some(1), "{case}");
                    assert_eq!(status.region.as_deref(), Some(REGION), "{case}");
                }
            }
        }
    }
    assert_eq!(rows, 3 * 5 * 2 * 4);
}

#[test]
fn a_request_matched_by_any_policy_of_the_group_is_never_rejected() {
    // Two rejecting policies, each matching half of the requests: everything is matched by one
    // of them, so nothing is rejected by either; each accepts its own.
    let mine = request_at("c-a", A, "prod-1", PENDING, 1);
    let theirs = request_at("c-b", B, "x", PENDING, 2);
    let stranger = request_at("c-d", D, "prod-1", PENDING, 3);
    let given = Given::new(spec(UnmatchedRequests::Reject))
        .peer(peer_spec(UnmatchedRequests::Reject), false);
    let mut fake = Fake::with(&[mine, theirs, stranger]);
    let ended = run(&given, &mut fake);
    let status = &ended.settled().status;
    assert_eq!(ids(&status.accepted), ["c-a"]);
    assert_eq!(ids(&status.rejected), ["c-d"]);
    assert_eq!(
        fake.connections["c-b"].state, PENDING,
        "the peer's request is the peer's"
    );
    assert!(
        !fake.calls.iter().any(|c| c.ends_with("c-b")),
        "{:?}",
        fake.calls
    );
    // And seen from the peer: it accepts its own, and rejects nothing of ours.
    let peer = Given::new(peer_spec(UnmatchedRequests::Reject))
        .peer(spec(UnmatchedRequests::Reject), false);
    let mut fake = Fake::with(&[
        request_at("c-a2", A, "prod-2", PENDING, 1),
        request_at("c-b2", B, "x", PENDING, 2),
    ]);
    let ended = run(&peer, &mut fake);
    assert_eq!(ids(&ended.settled().status.accepted), ["c-b2"]);
    assert_eq!(fake.connections["c-a2"].state, PENDING);
}

#[test]
fn a_request_matched_by_two_policies_is_accepted_once_and_the_late_one_records_nothing() {
    let both = request("c-1", A, "prod-eu", PENDING);
    let mut fake = Fake::with(&[both]);
    let given = Given::new(spec(UnmatchedRequests::Leave)).peer(
        Spec {
            environment_account_ids: vec![A.into()],
            ..peer_spec(UnmatchedRequests::Leave)
        },
        false,
    );
    // The other policy accepted it between this reconcile's List and its Accept.
    fake.after_list.push(("c-1".into(), Some(CONNECTED)));
    let ended = run(&given, &mut fake);
    let status = &ended.settled().status;
    assert!(status.accepted.is_empty());
    assert_eq!(status.accepted_count, 0);
    assert_eq!(ended.events(), []);
    assert_eq!(
        condition(status, SYNCED).0,
        "True",
        "a conflict is not an error"
    );
}

#[test]
fn requests_to_another_management_account_are_never_touched() {
    // Today's emulator lists every connection of the region; the decision keeps only those made
    // to the policy's management account.
    let mut elsewhere = request("c-x", A, "prod-eu", PENDING);
    elsewhere.management_account_id = OTHER_MGMT.into();
    let mut stranger = request("c-y", D, "prod-eu", PENDING);
    stranger.management_account_id = OTHER_MGMT.into();
    let mut fake = Fake::with(&[elsewhere, stranger]);
    let ended = run(&Given::new(spec(UnmatchedRequests::Reject)), &mut fake);
    assert_eq!(fake.calls, ["WhoAmI", "List us-east-1"]);
    let status = &ended.settled().status;
    assert!(status.accepted.is_empty() && status.rejected.is_empty());
    assert_eq!(status.left_pending_count, 0);
}

// ---------------------------------------------------------------------------------------------
// Races: someone else decides between the List and the call
// ---------------------------------------------------------------------------------------------

#[test]
fn races_between_the_list_and_the_decision() {
    struct Row {
        name: &'static str,
        unmatched: UnmatchedRequests,
        account: &'static str,
        change: Option<ConnectionState>,
        calls: &'static [&'static str],
        final_state: Option<ConnectionState>,
    }
    #[rustfmt::skip]
    let rows = [
        Row { name: "accept: rejected meanwhile", unmatched: UnmatchedRequests::Leave, account: A, change: Some(REJECTED), calls: &["Accept c-1"], final_state: Some(REJECTED) },
        Row { name: "accept: accepted meanwhile", unmatched: UnmatchedRequests::Leave, account: A, change: Some(CONNECTED), calls: &["Accept c-1"], final_state: Some(CONNECTED) },
        Row { name: "accept: withdrawn meanwhile", unmatched: UnmatchedRequests::Leave, account: A, change: None, calls: &["Accept c-1"], final_state: None },
        Row { name: "reject: accepted meanwhile", unmatched: UnmatchedRequests::Reject, account: D, change: Some(CONNECTED), calls: &["Get c-1"], final_state: Some(CONNECTED) },
        Row { name: "reject: rejected meanwhile", unmatched: UnmatchedRequests::Reject, account: D, change: Some(REJECTED), calls: &["Get c-1"], final_state: Some(REJECTED) },
        Row { name: "reject: withdrawn meanwhile", unmatched: UnmatchedRequests::Reject, account: D, change: None, calls: &["Get c-1"], final_state: None },
    ];
    for row in rows {
        let mut fake = Fake::with(&[request("c-1", row.account, "prod-eu", PENDING)]);
        fake.after_list.push(("c-1".into(), row.change));
        let ended = run(&Given::new(spec(row.unmatched)), &mut fake);
        assert_eq!(&fake.calls[2..], row.calls, "{}", row.name);
        assert_eq!(
            fake.connections.get("c-1").map(|c| c.state),
            row.final_state,
            "{}: a connection no longer PENDING is never changed",
            row.name
        );
        let status = &ended.settled().status;
        assert!(
            status.accepted.is_empty() && status.rejected.is_empty(),
            "{}",
            row.name
        );
        assert!(status.left_pending.is_empty(), "{}", row.name);
        assert_eq!(ended.events(), [], "{}", row.name);
        assert_eq!(condition(status, SYNCED).0, "True", "{}", row.name);
    }
}

#[test]
fn a_reject_answered_with_a_conflict_records_nothing() {
    let mut fake = Fake::with(&[request("c-1", D, "prod-eu", PENDING)]);
    fake.fail("Reject", {
        let mut e = error(ErrorClass::Conflict, "ConflictException");
        e.operation = "RejectEnvironmentAccountConnection";
        e
    });
    let ended = run(&Given::new(spec(UnmatchedRequests::Reject)), &mut fake);
    let status = &ended.settled().status;
    assert!(status.rejected.is_empty());
    assert_eq!(condition(status, SYNCED).0, "True");
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

#[test]
fn a_passing_fault_ends_the_reconcile_and_is_reported_with_its_class() {
    #[rustfmt::skip]
    let rows = [
        (ErrorClass::Throttled, "ThrottlingException", "Throttled", Duration::from_secs(1)),
        (ErrorClass::Transient, "InternalServerException", "AwsServerError", Duration::from_secs(1)),
        (ErrorClass::Unanswered, "Timeout", "AwsUnavailable", Duration::from_secs(1)),
    ];
    for (class, code, reason, requeue) in rows {
        // Two requests: the first accepted, the second's Accept fails.
        let mut fake = Fake::with(&[
            request_at("c-1", A, "prod-1", PENDING, 1),
            request_at("c-2", A, "prod-2", PENDING, 2),
        ]);
        fake.calls.clear();
        let mut given = Given::new(spec(UnmatchedRequests::Leave));
        // It was in effect before: a passing fault leaves Ready as it was.
        given.status = run(&given, &mut Fake::with(&[])).settled().status.clone();
        fake.failures.insert("Accept", vec![]);
        // Fail the second Accept only.
        let mut first = true;
        let ended = {
            let peers: Vec<Peer> = Vec::new();
            let policy = Policy {
                uid: "u",
                namespace: "platform",
                name: "p",
                generation: 1,
                spec: &given.spec,
                status: &given.status,
                paused: false,
                quiet: None,
                failures: 0,
                credentials: None,
            };
            let memory = Memory::default();
            let settings = settings();
            let mut r = Run::new(policy, &peers, &settings, &memory, JITTER);
            loop {
                let step = r.next(at(3_000));
                if step.is_final() {
                    break (step, r.memory().clone(), r.tally());
                }
                let answer = match &step {
                    Step::Accept { .. } if !first => Err(error(class, code)),
                    Step::Accept { .. } => {
                        first = false;
                        fake.answer(&step)
                    }
                    _ => fake.answer(&step),
                };
                r.record(&step, answer);
            }
        };
        let (step, memory, tally) = ended;
        let Step::Report(reported) = step else {
            panic!("{code}: expected a report, got {step:?}");
        };
        let status = &reported.status;
        assert_eq!(reported.problem.reason, reason, "{code}");
        assert_eq!(
            condition(status, SYNCED),
            ("False".into(), reason.into()),
            "{code}"
        );
        assert_eq!(condition(status, STALLED).0, "False", "{code}");
        assert_eq!(
            condition(status, READY),
            ("True".into(), "Applied".into()),
            "{code}: Ready kept"
        );
        assert!(
            status.condition(SYNCED).unwrap().message.contains(code),
            "{code}: the AWS message is shown"
        );
        // The decision made before the failure is recorded, and announced.
        assert_eq!(ids(&status.accepted), ["c-1"], "{code}");
        assert_eq!(tally.accepted, 1, "{code}");
        let reasons: Vec<&str> = reported.events.iter().map(|n| n.reason).collect();
        assert_eq!(reasons, ["Accepted", reason], "{code}");
        assert!(
            memory.backlog,
            "{code}: the rest is work for the next reconcile"
        );
        let jittered = (reported.requeue.as_secs_f64() / requeue.as_secs_f64() - 1.0).abs();
        assert!(jittered < 1e-9, "{code}: {:?}", reported.requeue);
    }
}

#[test]
fn a_passing_fault_that_keeps_coming_for_one_request_holds_up_no_other() {
    #[rustfmt::skip]
    let rows = [
        ("Accept", UnmatchedRequests::Leave, ErrorClass::Transient, "InternalServerException", "AwsServerError"),
        ("Accept", UnmatchedRequests::Leave, ErrorClass::Unanswered, "Timeout", "AwsUnavailable"),
        ("Accept", UnmatchedRequests::Leave, ErrorClass::Other, "InternalFailure", "AwsError"),
        ("Get", UnmatchedRequests::Reject, ErrorClass::Other, "InternalFailure", "AwsError"),
        ("Reject", UnmatchedRequests::Reject, ErrorClass::Transient, "InternalServerException", "AwsServerError"),
    ];
    for (step, unmatched, class, code, reason) in rows {
        let label = format!("{step} {code}");
        let account = if step == "Accept" { A } else { D };
        // The oldest request, first in every plan, fails each time; the two after it are fine.
        let mut fake = requests_from(account, 3);
        fake.broken
            .insert(format!("{step} c-1"), error(class, code));
        let given = Given::new(spec(unmatched));
        let first = run(&given, &mut fake);
        assert_eq!(first.reported().problem.reason, reason, "{label}");
        assert!(
            first
                .reported()
                .problem
                .message
                .starts_with("connection c-1: "),
            "{label}: the request is named: {}",
            first.reported().problem.message
        );
        assert_eq!(
            first.memory.set_back,
            BTreeSet::from(["c-1".to_string()]),
            "{label}"
        );

        // The next reconcile decides the others first, then meets the fault again.
        fake.calls.clear();
        let next = after(&given, &first, 1);
        let second = run(&next, &mut fake);
        let expected: &[&str] = match step {
            "Accept" => &["Accept c-2", "Accept c-3", "Accept c-1"],
            "Get" => &["Get c-2", "Reject c-2", "Get c-3", "Reject c-3", "Get c-1"],
            _ => &[
                "Get c-2",
                "Reject c-2",
                "Get c-3",
                "Reject c-3",
                "Get c-1",
                "Reject c-1",
            ],
        };
        assert_eq!(decisions(&fake), expected, "{label}");
        assert_eq!(second.reported().problem.reason, reason, "{label}");
        let decided = if step == "Accept" {
            ids(&second.status().accepted)
        } else {
            ids(&second.status().rejected)
        };
        assert_eq!(decided, ["c-3", "c-2"], "{label}: the others are decided");

        // Once AWS takes it, it is decided and no longer set back.
        fake.broken.clear();
        fake.calls.clear();
        let third = run(&after(&next, &second, 1), &mut fake);
        assert_eq!(condition(third.status(), READY).0, "True", "{label}");
        assert!(third.memory.set_back.is_empty(), "{label}");
    }
}

#[test]
fn the_backoff_for_one_requests_fault_stops_at_the_poll_while_aws_answers_the_rest() {
    let poll_at_most = POLL.mul_f64(1.1);
    // Many failed reconciles behind it: the plain backoff would be minutes.
    let failing = 12;
    let grown = |given: &Given, fake: &mut Fake| run(given, fake).reported().requeue;

    // One request's passing fault, the List and the other request answered: a poll.
    let mut fake = requests_from(A, 2);
    fake.broken.insert(
        "Accept c-1".into(),
        error(ErrorClass::Transient, "InternalServerException"),
    );
    let given = Given {
        failures: failing,
        ..Given::new(spec(UnmatchedRequests::Leave))
    };
    let requeue = grown(&given, &mut fake);
    assert!(requeue <= poll_at_most, "{requeue:?}");

    // The only request, failing: the List was answered, so it is still the request's fault.
    let mut alone = requests_from(A, 1);
    alone.broken.insert(
        "Accept c-1".into(),
        error(ErrorClass::Other, "InternalFailure"),
    );
    let requeue = grown(&given, &mut alone);
    assert!(requeue <= poll_at_most, "{requeue:?}");

    // AWS answers nothing (the List fails): the backoff grows as for any outage.
    let mut down = requests_from(A, 2);
    down.fail("List", error(ErrorClass::Unanswered, "Timeout"));
    let requeue = grown(&given, &mut down);
    assert!(requeue > Duration::from_secs(200), "{requeue:?}");

    // A reconcile going on from the last one's List (cut at MAX_DECISIONS) whose first call
    // fails: nothing was answered, so nothing says the fault is the request's alone.
    let mut cut = requests_from(A, MAX_DECISIONS as i64 + 2);
    let round = run(&Given::new(spec(UnmatchedRequests::Leave)), &mut cut);
    assert!(round.memory.listed.is_some(), "the List is carried");
    cut.fail(
        "Accept",
        error(ErrorClass::Transient, "InternalServerException"),
    );
    cut.calls.clear();
    let next = Given {
        failures: failing,
        ..after(&given, &round, 1)
    };
    let requeue = grown(&next, &mut cut);
    assert!(
        !cut.calls.iter().any(|c| c.starts_with("List")),
        "{:?}",
        cut.calls
    );
    assert!(requeue > Duration::from_secs(200), "{requeue:?}");

    // Throttling is the account's: it grows too, answered calls or not.
    let mut throttled = requests_from(A, 2);
    throttled.broken.insert(
        "Accept c-2".into(),
        error(ErrorClass::Throttled, "ThrottlingException"),
    );
    let requeue = grown(&given, &mut throttled);
    assert!(requeue > POLL * 2, "{requeue:?}");

    // A first fault backs off less than a poll: unchanged.
    let first = Given {
        failures: 0,
        ..given.clone()
    };
    let requeue = grown(&first, &mut fake);
    assert!(requeue <= Duration::from_millis(1250), "{requeue:?}");
}

#[test]
fn a_throttled_or_unsent_request_is_not_set_back() {
    // Throttling is the account's, and a call not sent as its region does not answer says
    // nothing of the request: the oldest request still goes first once it passes.
    let unsent = ProtonError::unreached("AcceptEnvironmentAccountConnection", REGION);
    for (e, reason) in [
        (
            error(ErrorClass::Throttled, "ThrottlingException"),
            "Throttled",
        ),
        (unsent, "AwsUnavailable"),
    ] {
        let mut fake = requests_from(A, 2);
        fake.broken.insert("Accept c-1".into(), e);
        let given = Given::new(spec(UnmatchedRequests::Leave));
        let first = run(&given, &mut fake);
        assert_eq!(first.reported().problem.reason, reason);
        assert!(first.memory.set_back.is_empty(), "{reason}");
        fake.broken.clear();
        fake.calls.clear();
        let _ = run(&after(&given, &first, 1), &mut fake);
        assert_eq!(decisions(&fake), ["Accept c-1", "Accept c-2"], "{reason}");
    }
}

/// `n` PENDING requests from `account` for `prod-1`, `prod-2`, ... (ids `c-1`, ...), the oldest
/// first.
fn requests_from(account: &str, n: i64) -> Fake {
    let requests: Vec<Connection> = (1..=n)
        .map(|i| request_at(&format!("c-{i}"), account, &format!("prod-{i}"), PENDING, i))
        .collect();
    Fake::with(&requests)
}

/// The next scenario, from where `ended` left it, `later` seconds after `given`.
fn after(given: &Given, ended: &Ended, later: i64) -> Given {
    Given {
        status: ended.status().clone(),
        memory: ended.memory.clone(),
        now: given.now + later,
        ..given.clone()
    }
}

fn decisions(fake: &Fake) -> Vec<&str> {
    fake.calls
        .iter()
        .map(String::as_str)
        .filter(|c| !c.starts_with("List") && !c.starts_with("WhoAmI"))
        .collect()
}

#[test]
fn a_decision_aws_refuses_holds_up_no_other_request_and_is_tried_again_on_its_own_backoff() {
    #[rustfmt::skip]
    let rows = [
        ("Accept", UnmatchedRequests::Leave, ErrorClass::AccessDenied, "AccessDeniedException", "AccessDenied", 30),
        ("Accept", UnmatchedRequests::Leave, ErrorClass::Validation, "ValidationException", "InvalidSpec", 60),
        ("Accept", UnmatchedRequests::Leave, ErrorClass::QuotaExceeded, "ServiceQuotaExceededException", "QuotaExceeded", 60),
        ("Accept", UnmatchedRequests::Leave, ErrorClass::Unsupported, "UnknownOperationException", "UnsupportedByEndpoint", 60),
        ("Reject", UnmatchedRequests::Reject, ErrorClass::AccessDenied, "AccessDeniedException", "AccessDenied", 30),
        ("Get", UnmatchedRequests::Reject, ErrorClass::AccessDenied, "AccessDeniedException", "AccessDenied", 30),
    ];
    for (step, unmatched, class, code, reason, wait) in rows {
        let label = format!("{step} {code}");
        // Accepted by the policy (A, prod-*), or rejected by it (D: nobody's).
        let account = if step == "Accept" { A } else { D };
        let mut fake = requests_from(account, 3);
        fake.fail(step, error(class, code));
        let given = Given::new(spec(unmatched));
        let first = run(&given, &mut fake);

        // c-1 was refused; c-2 and c-3 are decided all the same, in the same reconcile.
        let settled = first.settled();
        let decided = if step == "Accept" {
            ids(&settled.status.accepted)
        } else {
            ids(&settled.status.rejected)
        };
        assert_eq!(decided, ["c-3", "c-2"], "{label}: newest first");
        let ready = settled.status.condition(READY).unwrap();
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", reason),
            "{label}"
        );
        assert!(
            ready.message.starts_with("connection c-1: "),
            "{label}: {}",
            ready.message
        );
        assert!(
            ready.message.contains(code),
            "{label}: the AWS message is shown"
        );
        assert_eq!(
            condition(&settled.status, STALLED),
            ("True".into(), reason.into()),
            "{label}"
        );
        assert_eq!(
            condition(&settled.status, SYNCED).0,
            "True",
            "{label}: the policy is applied"
        );
        let warnings: Vec<_> = first.events().into_iter().filter(|(_, w)| *w).collect();
        assert_eq!(warnings, [(reason, true)], "{label}: announced once");
        // The policy polls as a healthy one does: new requests are not held up either.
        assert_eq!(settled.requeue, Duration::from_secs(2), "{label}");
        let refused = &first.memory.refused["c-1"];
        assert_eq!(refused.attempts, 1, "{label}");
        assert_eq!(refused.retry_at, at(given.now + wait), "{label}");

        // Before its own retry is due: not tried, nothing new to say or write, still not Ready.
        fake.calls.clear();
        let quiet = after(&given, &first, wait - 1);
        let second = run(&quiet, &mut fake);
        assert_eq!(decisions(&fake), Vec::<&str>::new(), "{label}");
        assert_eq!(second.status(), first.status(), "{label}: nothing to write");
        assert_eq!(second.events(), [], "{label}");
        assert_eq!(second.memory.refused, first.memory.refused, "{label}");

        // Due again: a new request goes first, then the refused one, which AWS now takes.
        fake.connections.insert(
            "c-4".into(),
            request_at("c-4", account, "prod-4", PENDING, 4),
        );
        fake.calls.clear();
        let due = after(&quiet, &second, 1);
        let third = run(&due, &mut fake);
        let expected: &[&str] = if step == "Accept" {
            &["Accept c-4", "Accept c-1"]
        } else {
            &["Get c-4", "Reject c-4", "Get c-1", "Reject c-1"]
        };
        assert_eq!(decisions(&fake), expected, "{label}");
        assert_eq!(condition(third.status(), READY).0, "True", "{label}");
        assert_eq!(condition(third.status(), STALLED).0, "False", "{label}");
        assert!(third.memory.refused.is_empty(), "{label}");
    }
}

#[test]
fn a_decision_refused_for_two_requests_and_never_taken_is_tried_for_no_more_in_that_reconcile() {
    // A permission missing for every request: two refusals a reconcile, not one per request.
    let denied = || error(ErrorClass::AccessDenied, "AccessDeniedException");
    let mut fake = requests_from(A, 3);
    for _ in 0..3 {
        fake.fail("Accept", denied());
    }
    let given = Given::new(spec(UnmatchedRequests::Leave));
    let first = run(&given, &mut fake);
    assert_eq!(decisions(&fake), ["Accept c-1", "Accept c-2"]);
    let settled = first.settled();
    assert_eq!(settled.requeue, Duration::from_secs(2), "polls as usual");
    assert_eq!(
        condition(&settled.status, READY),
        ("False".into(), "AccessDenied".into())
    );
    assert_eq!(
        first.memory.refused.keys().collect::<Vec<_>>(),
        ["c-1", "c-2"]
    );
    assert_eq!(first.events(), [("AccessDenied", true)]);

    // The next poll tries the one not tried, first; refused too: the same to say, nothing to
    // write, no Event.
    fake.calls.clear();
    let next = after(&given, &first, 2);
    let second = run(&next, &mut fake);
    assert_eq!(decisions(&fake), ["Accept c-3"]);
    assert_eq!(second.status(), first.status());
    assert_eq!(second.events(), []);

    // Once the permission is there, each is taken when its own retry is due.
    fake.calls.clear();
    let later = after(&next, &second, 28);
    let third = run(&later, &mut fake);
    assert_eq!(decisions(&fake), ["Accept c-1", "Accept c-2"]);
    assert_eq!(
        condition(third.status(), READY).0,
        "False",
        "c-3 is still refused"
    );
    fake.calls.clear();
    let fourth = run(&after(&later, &third, 2), &mut fake);
    assert_eq!(decisions(&fake), ["Accept c-3"]);
    assert_eq!(condition(fourth.status(), READY).0, "True");
    assert!(fourth.memory.refused.is_empty());
}

/// More requests than one reconcile decides, and the permission missing: the policy comes back
/// at the next poll, not at once for the rest (two more refusals each time, a thousand requests a
/// thousand calls back to back).
#[test]
fn a_missing_permission_with_a_backlog_waits_for_the_next_poll() {
    let denied = || error(ErrorClass::AccessDenied, "AccessDeniedException");
    let mut fake = requests_from(A, 120);
    for _ in 0..120 {
        fake.fail("Accept", denied());
    }
    let given = Given::new(spec(UnmatchedRequests::Leave));
    let first = run(&given, &mut fake);
    assert_eq!(decisions(&fake), ["Accept c-1", "Accept c-2"]);
    assert_eq!(
        first.settled().requeue,
        Duration::from_secs(2),
        "the next poll, not at once"
    );
    assert!(!first.memory.backlog, "the next List is a poll");

    // Accept refused, and rejections left out besides: those go at once, the accepts at the
    // next poll.
    let requests: Vec<Connection> = (1..=130)
        .map(|i| {
            let from = if i <= 100 { A } else { B };
            request_at(&format!("c-{i}"), from, &format!("prod-{i}"), PENDING, i)
        })
        .collect();
    let mut fake = Fake::with(&requests);
    for _ in 0..100 {
        fake.fail("Accept", denied());
    }
    let first = run(&Given::new(spec(UnmatchedRequests::Reject)), &mut fake);
    assert_eq!(
        first.settled().requeue,
        Duration::ZERO,
        "the rejections left out go at once"
    );

    // With the permission there, the backlog brings it back at once.
    let mut fake = requests_from(A, 120);
    let first = run(&given, &mut fake);
    assert_eq!(decisions(&fake).len(), 50);
    assert_eq!(first.settled().requeue, Duration::ZERO, "the rest at once");
    assert!(first.memory.backlog);
}

#[test]
fn refusals_after_the_operation_succeeded_do_not_stop_it_for_the_other_requests() {
    // One request accepted, then two refused: the permission is there, so the last is tried.
    let mut fake = requests_from(A, 4);
    fake.passes.insert("Accept", 1);
    for _ in 0..2 {
        fake.fail(
            "Accept",
            error(ErrorClass::AccessDenied, "AccessDeniedException"),
        );
    }
    let ended = run(&Given::new(spec(UnmatchedRequests::Leave)), &mut fake);
    assert_eq!(
        decisions(&fake),
        ["Accept c-1", "Accept c-2", "Accept c-3", "Accept c-4"]
    );
    assert_eq!(ids(&ended.status().accepted), ["c-4", "c-1"]);
    assert_eq!(
        ended.memory.refused.keys().collect::<Vec<_>>(),
        ["c-2", "c-3"]
    );
}

#[test]
fn a_request_refused_while_rejecting_is_accepted_at_once_once_a_policy_change_matches_it() {
    let mut fake = Fake::with(&[request_at("d-1", D, "prod-1", PENDING, 1)]);
    fake.fail(
        "Reject",
        error(ErrorClass::AccessDenied, "AccessDeniedException"),
    );
    let given = Given::new(spec(UnmatchedRequests::Reject));
    let first = run(&given, &mut fake);
    assert_eq!(decisions(&fake), ["Get d-1", "Reject d-1"]);
    assert!(first.memory.refused.contains_key("d-1"));

    // The admin adds D to the policy (generation 2): d-1 is to be accepted, now.
    fake.calls.clear();
    let mut changed = after(&given, &first, 2);
    changed.generation = 2;
    changed.spec.environment_account_ids.push(D.into());
    let second = run(&changed, &mut fake);
    assert_eq!(decisions(&fake), ["Accept d-1"]);
    assert_eq!(condition(second.status(), READY).0, "True");

    // A spec change starts a refusal's count again too, for the same decision.
    let mut fake = Fake::with(&[request_at("c-1", A, "prod-1", PENDING, 1)]);
    fake.fail(
        "Accept",
        error(ErrorClass::AccessDenied, "AccessDeniedException"),
    );
    let first = run(&given, &mut fake);
    assert!(first.memory.refused.contains_key("c-1"));
    fake.calls.clear();
    let mut changed = after(&given, &first, 2);
    changed.generation = 2;
    run(&changed, &mut fake);
    assert_eq!(decisions(&fake), ["Accept c-1"]);
}

#[test]
fn a_refused_request_no_longer_pending_is_no_longer_reported() {
    let mut fake = requests_from(A, 3);
    fake.fail(
        "Accept",
        error(ErrorClass::AccessDenied, "AccessDeniedException"),
    );
    let given = Given::new(spec(UnmatchedRequests::Leave));
    let first = run(&given, &mut fake);
    assert_eq!(condition(first.status(), READY).0, "False");

    // Accepted by hand (or withdrawn) before its retry is due.
    fake.connections.remove("c-1");
    fake.calls.clear();
    let second = run(&after(&given, &first, 5), &mut fake);
    assert_eq!(decisions(&fake), Vec::<&str>::new());
    assert_eq!(
        condition(second.status(), READY),
        ("True".into(), "Applied".into())
    );
    assert!(second.memory.refused.is_empty());
}

#[test]
fn the_same_error_twice_is_announced_once() {
    let given = Given::new(spec(UnmatchedRequests::Leave));
    let mut fake = Fake::with(&[]);
    fake.fail(
        "List",
        error(ErrorClass::AccessDenied, "AccessDeniedException"),
    );
    let first = run(&given, &mut fake);
    assert_eq!(first.events(), [("AccessDenied", true)]);
    let again = Given {
        status: first.status().clone(),
        failures: 1,
        ..given
    };
    fake.fail(
        "List",
        error(ErrorClass::AccessDenied, "AccessDeniedException"),
    );
    let second = run(&again, &mut fake);
    assert_eq!(second.events(), []);
    assert_eq!(second.status(), first.status(), "nothing new to write");
    assert_eq!(
        second.reported().requeue,
        Duration::from_secs(60),
        "backs off: 30 s, then 60 s"
    );
}

#[test]
fn credentials_of_another_account_make_no_list_and_no_decision() {
    let mut fake = Fake::with(&[request("c-1", A, "prod-eu", PENDING)]);
    fake.account = "777788889999".into();
    let ended = run(&Given::new(spec(UnmatchedRequests::Reject)), &mut fake);
    assert_eq!(fake.calls, ["WhoAmI"]);
    let status = &ended.reported().status;
    assert_eq!(
        condition(status, SYNCED),
        ("False".into(), "AccountMismatch".into())
    );
    assert_eq!(condition(status, STALLED).0, "True");
    assert!(
        status
            .condition(SYNCED)
            .unwrap()
            .message
            .contains("777788889999")
    );
}

#[test]
fn a_region_the_controller_may_not_act_in_makes_no_call() {
    let mut given = Given::new(Spec {
        region: Some(OTHER_REGION.into()),
        ..spec(UnmatchedRequests::Leave)
    });
    given.settings.allowed_regions = vec![REGION.into()];
    let mut fake = Fake::with(&[]);
    let ended = run(&given, &mut fake);
    assert!(fake.calls.is_empty());
    assert_eq!(
        condition(ended.status(), SYNCED),
        ("False".into(), "RegionNotAllowed".into())
    );
}

#[test]
fn a_spec_the_schema_should_have_refused_makes_no_call() {
    let given = Given::new(Spec {
        environment_account_ids: vec!["12345".into()],
        ..spec(UnmatchedRequests::Reject)
    });
    let mut fake = Fake::with(&[request("c-1", D, "prod-eu", PENDING)]);
    let ended = run(&given, &mut fake);
    assert!(fake.calls.is_empty());
    assert_eq!(
        condition(ended.status(), STALLED),
        ("True".into(), "InvalidSpec".into())
    );
}

// ---------------------------------------------------------------------------------------------
// Quiet when idle, idempotent across restarts
// ---------------------------------------------------------------------------------------------

#[test]
fn an_idle_policy_costs_one_list_and_renders_the_same_status() {
    let requests = [
        request_at("c-1", A, "prod-1", PENDING, 1),
        request_at("c-2", D, "prod-2", PENDING, 2),
    ];
    let mut fake = Fake::with(&requests);
    let given = Given::new(spec(UnmatchedRequests::Leave));
    let first = run(&given, &mut fake);
    assert_eq!(first.events(), [("Accepted", false), ("LeftPending", true)]);
    // The next poll: the accepted one is CONNECTED (no longer listed as PENDING), the other is
    // still left pending, already announced.
    let next = Given {
        status: first.status().clone(),
        memory: first.memory.clone(),
        ..given.clone()
    };
    fake.calls.clear();
    let second = run(&next, &mut fake);
    assert_eq!(fake.calls, ["WhoAmI", "List us-east-1"]);
    assert_eq!(
        second.status(),
        first.status(),
        "an identical status: no write"
    );
    assert_eq!(second.events(), []);
    assert_eq!(second.tally, Tally::default());
    assert_eq!(
        second.settled().requeue,
        eac_controller::policy::decide::FIRST_POLL,
        "a policy applied just now lists again in 2 s (as a new PENDING connection is polled)"
    );
    // Ten minutes after the generation was applied: the poll interval.
    let mut settled_long_ago = second.memory.clone();
    settled_long_ago.applied = Some((1, at(2_000 - 600)));
    let third = run(
        &Given {
            memory: settled_long_ago,
            ..next.clone()
        },
        &mut fake,
    );
    assert_eq!(
        third.settled().requeue,
        POLL,
        "the next List after the poll interval"
    );
    assert_eq!(
        eac_controller::policy::decide::poll_interval(Duration::from_secs(60), POLL),
        Duration::from_secs(6),
        "a tenth of the age in between"
    );
    assert_eq!(
        second.classes,
        [("List".to_string(), CallClass::Poll)],
        "the periodic List is a poll"
    );
    // A restart forgets the memory: what the status lists is not announced again.
    let restarted = Given {
        status: first.status().clone(),
        ..given
    };
    let third = run(&restarted, &mut fake);
    assert_eq!(third.events(), []);
    assert_eq!(third.status(), first.status());
}

#[test]
fn the_list_of_a_new_changed_or_failing_policy_is_work() {
    let mut fake = Fake::with(&[]);
    let given = Given::new(spec(UnmatchedRequests::Leave));
    let first = run(&given, &mut fake);
    assert_eq!(
        first.classes,
        [("List".to_string(), CallClass::Work)],
        "new"
    );
    let settled = Given {
        status: first.status().clone(),
        ..given.clone()
    };
    assert_eq!(run(&settled, &mut fake).classes[0].1, CallClass::Poll);
    let changed = Given {
        generation: 2,
        ..settled.clone()
    };
    assert_eq!(
        run(&changed, &mut fake).classes[0].1,
        CallClass::Work,
        "changed"
    );
    let failing = Given {
        failures: 1,
        ..settled.clone()
    };
    assert_eq!(
        run(&failing, &mut fake).classes[0].1,
        CallClass::Work,
        "failing"
    );
    let backlog = Given {
        memory: Memory {
            backlog: true,
            ..Memory::default()
        },
        ..settled
    };
    assert_eq!(
        run(&backlog, &mut fake).classes[0].1,
        CallClass::Work,
        "backlog"
    );
}

#[test]
fn a_quiet_policy_is_idle_without_any_call() {
    let mut given = Given::new(spec(UnmatchedRequests::Leave));
    given.quiet = Some(Duration::from_secs(12));
    let mut fake = Fake::with(&[request("c-1", A, "prod-eu", PENDING)]);
    let ended = run(&given, &mut fake);
    assert_eq!(
        ended.step,
        Step::Idle {
            requeue: Duration::from_secs(12)
        }
    );
    assert!(fake.calls.is_empty());
}

#[test]
fn accepting_again_after_a_restart_changes_nothing() {
    // The first process accepted c-1 and died before its status write: the new one lists it
    // CONNECTED (not PENDING) and makes no call about it.
    let mut fake = Fake::with(&[request("c-1", A, "prod-eu", CONNECTED)]);
    let ended = run(&Given::new(spec(UnmatchedRequests::Reject)), &mut fake);
    assert_eq!(fake.calls, ["WhoAmI", "List us-east-1"]);
    assert!(ended.settled().status.accepted.is_empty());
}

#[test]
fn a_paused_policy_makes_no_call_and_says_so_once() {
    let mut given = Given::new(spec(UnmatchedRequests::Reject));
    given.status = run(&given, &mut Fake::with(&[])).status().clone();
    given.paused = true;
    let mut fake = Fake::with(&[request("c-1", D, "prod-eu", PENDING)]);
    let ended = run(&given, &mut fake);
    assert!(fake.calls.is_empty());
    let status = ended.status();
    assert_eq!(condition(status, SYNCED), ("False".into(), "Paused".into()));
    assert_eq!(condition(status, READY).0, "True", "Ready keeps its value");
    assert_eq!(ended.events(), [("Paused", false)]);
    let again = Given {
        status: status.clone(),
        ..given
    };
    assert_eq!(run(&again, &mut fake).events(), []);
}

// ---------------------------------------------------------------------------------------------
// Bounded status, counts, announcements
// ---------------------------------------------------------------------------------------------

#[test]
fn status_lists_are_bounded_newest_first_and_counts_cover_everything() {
    let accepted: Vec<Connection> = (0..25)
        .map(|i| request_at(&format!("a-{i:02}"), A, &format!("prod-{i}"), PENDING, i))
        .collect();
    let unmatched: Vec<Connection> = (0..30)
        .map(|i| request_at(&format!("d-{i:02}"), D, "prod-x", PENDING, 100 + i))
        .collect();
    let all: Vec<Connection> = accepted.iter().chain(&unmatched).cloned().collect();
    let mut fake = Fake::with(&all);
    let ended = run(&Given::new(spec(UnmatchedRequests::Leave)), &mut fake);
    let status = ended.status();
    assert_eq!(status.accepted_count, 25);
    assert_eq!(status.accepted.len(), STATUS_LIST_LIMIT);
    // Newest decision first: the last accepted (the newest request) leads.
    assert_eq!(status.accepted[0].id, "a-24");
    assert_eq!(status.left_pending_count, 30);
    assert_eq!(status.left_pending.len(), STATUS_LIST_LIMIT);
    assert_eq!(status.left_pending[0].id, "d-29", "newest request first");
    assert_eq!(ended.tally.left_pending, 30, "each one announced once");
    assert_eq!(
        ended.memory.announced.len(),
        30,
        "all remembered, not only the 20 listed"
    );
    // Serialized, the status stays small whatever the backlog.
    let json = serde_json::to_string(status).unwrap();
    assert!(json.len() < 12_000, "{} bytes", json.len());

    // The next reconcile: nothing new, nothing announced again, counts unchanged.
    let next = Given {
        status: status.clone(),
        memory: ended.memory.clone(),
        ..Given::new(spec(UnmatchedRequests::Leave))
    };
    let again = run(&next, &mut fake);
    assert_eq!(again.status(), status);
    assert_eq!(again.events(), []);

    // A restart: nothing in memory, and the status lists 20 of the 30. The 10 it counts beyond
    // them were announced too: none is announced again.
    let restarted = Given {
        status: status.clone(),
        ..Given::new(spec(UnmatchedRequests::Leave))
    };
    let after_restart = run(&restarted, &mut fake);
    assert_eq!(after_restart.status(), status);
    assert_eq!(after_restart.events(), [], "nothing announced again");
    assert_eq!(after_restart.memory.announced.len(), 30);

    // A request that came while the controller was down is announced: it is newer than the
    // last one listed, and so is not one of those counted beyond them.
    let mut with_new = unmatched.clone();
    with_new.push(request_at("d-new", D, "prod-y", PENDING, 50));
    let mut fake = Fake::with(&with_new);
    let after_restart = run(&restarted, &mut fake);
    assert_eq!(after_restart.events(), [("LeftPending", true)]);
    assert_eq!(after_restart.status().left_pending_count, 31);

    // The spec changed while it was down: what the status says was for another spec.
    let mut fake = Fake::with(&unmatched);
    let changed = Given {
        generation: 2,
        ..restarted.clone()
    };
    let after_restart = run(&changed, &mut fake);
    assert_eq!(after_restart.tally.left_pending, 10, "the ten not listed");
}

#[test]
fn a_request_that_stops_being_pending_leaves_the_report_and_counts() {
    let mut fake = Fake::with(&[request("d-1", D, "prod-eu", PENDING)]);
    let given = Given::new(spec(UnmatchedRequests::Leave));
    let first = run(&given, &mut fake);
    assert_eq!(first.status().left_pending_count, 1);
    // Someone accepts it by hand.
    fake.connections.get_mut("d-1").unwrap().state = CONNECTED;
    let next = Given {
        status: first.status().clone(),
        memory: first.memory.clone(),
        ..given
    };
    let second = run(&next, &mut fake);
    assert_eq!(second.status().left_pending_count, 0);
    assert!(second.status().left_pending.is_empty());
    assert!(second.memory.announced.is_empty(), "nothing kept about it");
}

#[test]
fn many_decisions_are_made_in_rounds_and_the_next_round_comes_at_once_from_the_same_list() {
    let requests: Vec<Connection> = (0..(MAX_DECISIONS as i64 + 5))
        .map(|i| request_at(&format!("a-{i:03}"), A, "prod-x", PENDING, i))
        .collect();
    let mut fake = Fake::with(&requests);
    let given = Given::new(spec(UnmatchedRequests::Leave));
    let first = run(&given, &mut fake);
    assert_eq!(first.status().accepted_count, MAX_DECISIONS as u64);
    assert_eq!(first.settled().requeue, Duration::ZERO);
    assert!(first.memory.backlog);
    let next = Given {
        status: first.status().clone(),
        memory: first.memory.clone(),
        ..given
    };
    let second = run(&next, &mut fake);
    // It goes on from the first round's List (every page of it), not listing again.
    assert_eq!(second.classes[0], ("Accept".to_string(), CallClass::Work));
    let lists = second.classes.iter().filter(|(call, _)| call == "List");
    assert_eq!(lists.count(), 0, "{:?}", second.classes);
    assert_eq!(second.status().accepted_count, MAX_DECISIONS as u64 + 5);
    assert!(!second.memory.backlog);
    assert!(fake.connections.values().all(|c| c.state == CONNECTED));
}

#[test]
fn a_call_the_budget_defers_ends_the_reconcile_with_the_decisions_made() {
    let mut fake = Fake::with(&[
        request_at("c-1", A, "prod-1", PENDING, 1),
        request_at("c-2", A, "prod-2", PENDING, 2),
        request_at("d-1", D, "prod-3", PENDING, 3),
    ]);
    let mut deferred = error(ErrorClass::Deferred, "Deferred");
    deferred.retry_in = Some(Duration::from_millis(700));
    // The first Accept goes, the second is deferred.
    fake.failures.insert("Accept", vec![]);
    let given = Given::new(spec(UnmatchedRequests::Leave));
    let peers: Vec<Peer> = Vec::new();
    let settings = settings();
    let memory = Memory::default();
    let policy = Policy {
        uid: "u",
        namespace: "platform",
        name: "p",
        generation: 1,
        spec: &given.spec,
        status: &given.status,
        paused: false,
        quiet: None,
        failures: 0,
        credentials: None,
    };
    let mut r = Run::new(policy.clone(), &peers, &settings, &memory, JITTER);
    let mut accepts = 0;
    let step = loop {
        let step = r.next(at(3_000));
        if step.is_final() {
            break step;
        }
        let answer = match &step {
            Step::Accept { .. } if accepts == 1 => Err(deferred.clone()),
            Step::Accept { .. } => {
                accepts += 1;
                fake.answer(&step)
            }
            _ => fake.answer(&step),
        };
        r.record(&step, answer);
    };
    let Step::Defer {
        class,
        requeue,
        status: Some(status),
        events,
    } = step
    else {
        panic!("expected a deferral with a status, got {step:?}");
    };
    assert_eq!(class, CallClass::Work);
    assert_eq!(
        requeue,
        Duration::from_millis(700),
        "back when the slot is booked"
    );
    assert_eq!(ids(&status.accepted), ["c-1"]);
    assert!(
        status.left_pending.is_empty(),
        "left-pending requests are reported by a complete reconcile"
    );
    let reasons: Vec<&str> = events.iter().map(|n| n.reason).collect();
    assert_eq!(reasons, ["Accepted"]);
    assert!(r.memory().backlog);
    assert!(r.memory().announced.is_empty());

    // The next reconcile goes on from that List: the slot booked for the policy goes to the
    // decision that was deferred, not to a new List (which would be deferred again and again
    // while the budget is busy).
    let memory = r.memory().clone();
    assert!(memory.listed.is_some(), "the List is kept");
    let lists_before = fake.calls.iter().filter(|c| c.starts_with("List")).count();
    let policy = Policy {
        status: &status,
        ..policy
    };
    let mut r = Run::new(policy.clone(), &peers, &settings, &memory, JITTER);
    let mut steps = Vec::new();
    let step = loop {
        let step = r.next(at(3_001));
        if step.is_final() {
            break step;
        }
        steps.push(step.name());
        let answer = fake.answer(&step);
        r.record(&step, answer);
    };
    assert_eq!(steps, ["WhoAmI", "Accept"], "no List: {steps:?}");
    let Step::Settle(settled) = step else {
        panic!("settles: {step:?}")
    };
    assert_eq!(ids(&settled.status.accepted), ["c-2", "c-1"]);
    assert_eq!(
        fake.calls.iter().filter(|c| c.starts_with("List")).count(),
        lists_before
    );
    assert_eq!(r.memory().listed, None, "used once");

    // A List kept for another generation, or past its time, is not used.
    for (generation, now) in [(2, at(3_001)), (1, at(3_100))] {
        let policy = Policy {
            generation,
            ..policy.clone()
        };
        let mut r = Run::new(policy, &peers, &settings, &memory, JITTER);
        let mut step = r.next(now);
        if step == Step::WhoAmI {
            r.record(&step, fake.answer(&Step::WhoAmI));
            step = r.next(now);
        }
        assert_eq!(step.name(), "List", "generation {generation}");
    }
}

#[test]
fn a_lagging_list_does_not_make_a_request_decided_twice() {
    // List is eventually consistent: right after the Accept, it may still show the request
    // PENDING. The policy remembers what it decided while the List shows it.
    let mut fake = Fake::with(&[
        request_at("c-1", A, "prod-1", PENDING, 1),
        request_at("d-1", D, "prod-2", PENDING, 2),
    ]);
    let given = Given::new(spec(UnmatchedRequests::Reject));
    let first = run(&given, &mut fake);
    assert_eq!(first.tally.accepted + first.tally.rejected, 2);
    assert_eq!(
        first
            .memory
            .decided
            .keys()
            .map(String::as_str)
            .collect::<Vec<_>>(),
        ["c-1", "d-1"]
    );
    // The List still shows both PENDING.
    for id in ["c-1", "d-1"] {
        fake.connections.get_mut(id).unwrap().state = PENDING;
    }
    fake.calls.clear();
    let next = Given {
        status: first.status().clone(),
        memory: first.memory.clone(),
        ..given.clone()
    };
    let second = run(&next, &mut fake);
    assert_eq!(
        fake.calls,
        ["WhoAmI", "List us-east-1"],
        "nothing decided twice"
    );
    assert_eq!(second.status(), first.status());
    assert_eq!(second.events(), []);
    // Once the List stops showing them, they are forgotten.
    fake.connections.clear();
    let third = run(
        &Given {
            status: second.status().clone(),
            memory: second.memory.clone(),
            ..given
        },
        &mut fake,
    );
    assert!(third.memory.decided.is_empty());
}
