//! Decision-table tests of the pure reconcile (`src/connection/decide/`).
//!
//! Every test is synchronous and does no I/O. A reconcile is driven the way the controller drives
//! it: `Run::next` names a step, the test answers it, and `Run::record` gives the answer its
//! meaning. AWS steps are answered by a tiny in-memory Proton (`Fake`) with the raw answer a call
//! would get (a connection, tags, an error); Kubernetes steps are answered as the API server
//! would. The fake interprets nothing: what a NotFound, a replayed Create or a conflict means is
//! decided by the code under test. Tables are kept one row a line (`#[rustfmt::skip]`).

use std::time::Duration;

use eac_controller::aws::proton::{
    Connection, CreateRequest, ErrorClass, Namesake, Owned, ProtonError, Retry, RoleArns, Tags,
};
use eac_controller::conditions::{READY, STALLED, SYNCED};
use eac_controller::connection::api::{
    ConnectionState, DeletionPolicy, EnvironmentAccountConnectionSpec as Spec,
    EnvironmentAccountConnectionStatus as Status, MAX_TAGS, ManagementPolicy, TAG_NAME,
    TAG_NAMESPACE, TAG_UID,
};
use eac_controller::connection::decide::{
    AdoptionPolicy, Intent, MAX_STEPS, Memory, Note, Observed, Origin, Outcome, Problem, Progress,
    Recorded, Reported, Resource, Run, Settings, Settled, Step, Written, client_token,
    desired_tags, effective_status, event_for, listed_polls_until, ownership_tags, retry_after,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

// ---------------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------------

const UID: &str = "8d7e0c55-2b1f-4c9a-9a51-3f0d2f6e7a10";
const OTHER_UID: &str = "another-uid";
const NAMESPACE: &str = "platform";
const NAME: &str = "prod-eu";
const ENV: &str = "prod-eu";
const MGMT: &str = "111122223333";
const ENV_ACCOUNT: &str = "444455556666";
const OTHER_ACCOUNT: &str = "777788889999";
const ID: &str = "2f6c1a7e-5b1d-4c3e-9f00-0123456789ab";
const ARN: &str = "arn:aws:proton:eu-west-1:444455556666:environment-account-connection/2f6c1a7e-5b1d-4c3e-9f00-0123456789ab";
const ADOPT_ID: &str = "7a7a7a7a-0000-4000-8000-00000000adop";
const ROLE: &str = "arn:aws:iam::444455556666:role/proton-env";
const ROLE_2: &str = "arn:aws:iam::444455556666:role/proton-env-v2";
const CODEBUILD: &str = "arn:aws:iam::444455556666:role/proton-codebuild";
const COMPONENT: &str = "arn:aws:iam::444455556666:role/proton-component";
const DEFAULT_REGION: &str = "eu-west-1";
const REQUESTED_AT: &str = "2026-11-21T10:00:00Z";
const MODIFIED_AT: &str = "2026-11-21T10:05:00Z";
const UPDATED_AT: &str = "2026-11-21T10:09:00Z";
const RESYNC: Duration = Duration::from_secs(600);
const PENDING_POLL: Duration = Duration::from_secs(30);
/// The controller's default: a 30 s call timeout plus 30 s of List lag.
const CREATE_SETTLE: Duration = Duration::from_secs(60);
/// The middle of the jitter range: every backoff is exactly its un-jittered value.
const JITTER: f64 = 0.5;

const PENDING: ConnectionState = ConnectionState::Pending;
const CONNECTED: ConnectionState = ConnectionState::Connected;
const REJECTED: ConnectionState = ConnectionState::Rejected;
const STATES: [ConnectionState; 3] = [PENDING, CONNECTED, REJECTED];

/// `2026-11-21T10:00:00Z` plus `secs`.
fn at(secs: i64) -> jiff::Timestamp {
    jiff::Timestamp::from_second(1_795_255_200 + secs).unwrap()
}

/// When the recorded conditions last flipped.
fn t0() -> jiff::Timestamp {
    at(60)
}

/// "Now" for most tests: ten minutes after the connection was requested.
fn now() -> jiff::Timestamp {
    at(600)
}

fn later(t: jiff::Timestamp, d: Duration) -> jiff::Timestamp {
    t.checked_add(jiff::SignedDuration::try_from(d).unwrap())
        .unwrap()
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn settings() -> Settings {
    Settings {
        resync: RESYNC,
        pending_poll: PENDING_POLL,
        default_region: DEFAULT_REGION.into(),
        allowed_regions: Vec::new(),
        adoption: AdoptionPolicy::NamespaceOptIn,
        create_settle: CREATE_SETTLE,
    }
}

fn tags(pairs: &[(&str, &str)]) -> Tags {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn ownership() -> Tags {
    tags(&[(TAG_UID, UID), (TAG_NAMESPACE, NAMESPACE), (TAG_NAME, NAME)])
}

/// Spec tags plus ownership tags.
fn with_ownership(pairs: &[(&str, &str)]) -> Tags {
    let mut t = tags(pairs);
    t.extend(ownership());
    t
}

fn spec() -> Spec {
    Spec {
        environment_name: ENV.into(),
        management_account_id: MGMT.into(),
        role_arn: Some(ROLE.into()),
        tags: tags(&[("team", "payments")]),
        ..Spec::default()
    }
}

fn roles(role: Option<&str>, codebuild: Option<&str>, component: Option<&str>) -> RoleArns {
    RoleArns {
        role_arn: role.map(str::to_string),
        codebuild_role_arn: codebuild.map(str::to_string),
        component_role_arn: component.map(str::to_string),
    }
}

/// The connection Proton reports for the recorded id, in sync with `spec()`.
fn conn(state: ConnectionState) -> Connection {
    Connection {
        id: ID.into(),
        arn: ARN.into(),
        state,
        environment_name: ENV.into(),
        management_account_id: MGMT.into(),
        environment_account_id: ENV_ACCOUNT.into(),
        roles: roles(Some(ROLE), None, None),
        requested_at: REQUESTED_AT.into(),
        last_modified_at: MODIFIED_AT.into(),
    }
}

/// The connection named by the adopt annotation.
fn adoptee(state: ConnectionState) -> Connection {
    Connection {
        id: ADOPT_ID.into(),
        arn: format!(
            "arn:aws:proton:eu-west-1:{ENV_ACCOUNT}:environment-account-connection/{ADOPT_ID}"
        ),
        ..conn(state)
    }
}

fn cond(
    type_: &str,
    status: bool,
    reason: &str,
    message: &str,
    generation: i64,
    since: jiff::Timestamp,
) -> Condition {
    Condition {
        type_: type_.into(),
        status: if status { "True" } else { "False" }.into(),
        reason: reason.into(),
        message: message.into(),
        last_transition_time: Time(since),
        observed_generation: Some(generation),
    }
}

/// A status as an earlier reconcile left it: the connection in `state`, generation `applied`
/// reconciled successfully.
fn recorded(state: ConnectionState, applied: i64) -> Status {
    let (ready, ready_reason, stalled, stalled_reason) = match state {
        CONNECTED => (true, "Connected", false, "Reconciled"),
        PENDING => (false, "Pending", false, "Reconciled"),
        REJECTED => (false, "Rejected", true, "Rejected"),
    };
    Status {
        observed_generation: Some(applied),
        id: Some(ID.into()),
        arn: Some(ARN.into()),
        status: Some(state),
        environment_account_id: Some(ENV_ACCOUNT.into()),
        region: Some(DEFAULT_REGION.into()),
        create_sent_at: None,
        requested_at: Some(REQUESTED_AT.into()),
        last_modified_at: Some(MODIFIED_AT.into()),
        role_arn: Some(ROLE.into()),
        codebuild_role_arn: None,
        component_role_arn: None,
        applied_tag_keys: vec!["team".into()],
        recreations: 0,
        conditions: vec![
            cond(READY, ready, ready_reason, "recorded", applied, t0()),
            cond(
                SYNCED,
                true,
                "ReconcileSuccess",
                "the spec is applied in Proton",
                applied,
                t0(),
            ),
            cond(STALLED, stalled, stalled_reason, "", applied, t0()),
        ],
    }
}

fn status_pending() -> Status {
    recorded(PENDING, 1)
}

fn status_connected() -> Status {
    recorded(CONNECTED, 1)
}

fn status_rejected() -> Status {
    recorded(REJECTED, 1)
}

/// The intent to create, written at `sent` for a resource that never had a connection: region
/// and account pinned, a Create possibly in flight.
fn intent(generation: i64, sent: jiff::Timestamp) -> Status {
    let message = format!("creating the connection in {DEFAULT_REGION} (account {ENV_ACCOUNT})");
    Status {
        observed_generation: Some(generation),
        environment_account_id: Some(ENV_ACCOUNT.into()),
        region: Some(DEFAULT_REGION.into()),
        create_sent_at: Some(sent.to_string()),
        conditions: vec![
            cond(READY, false, "Creating", &message, generation, sent),
            cond(SYNCED, false, "Creating", &message, generation, sent),
            cond(STALLED, false, "Reconciling", "", generation, sent),
        ],
        ..Status::default()
    }
}

/// The finalizer patch of a new resource, carrying the intent to create.
fn finalizer_with_intent(sent: jiff::Timestamp) -> Step {
    Step::AddFinalizer {
        intent: Some(Intent {
            region: DEFAULT_REGION.into(),
            account: ENV_ACCOUNT.into(),
            sent_at: sent.to_string(),
        }),
    }
}

/// An intent written 30 s ago whose Create's answer never reached the status.
fn creating() -> Status {
    intent(1, at(570))
}

/// What a resource looks like at the start of a reconcile.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Before {
    NoStatus,
    Creating,
    Pending,
    Connected,
    Rejected,
}

impl Before {
    const ALL: [Before; 5] = [
        Before::NoStatus,
        Before::Creating,
        Before::Pending,
        Before::Connected,
        Before::Rejected,
    ];

    fn status(self) -> Status {
        match self {
            Before::NoStatus => Status::default(),
            Before::Creating => creating(),
            Before::Pending => status_pending(),
            Before::Connected => status_connected(),
            Before::Rejected => status_rejected(),
        }
    }

    fn has_id(self) -> bool {
        !matches!(self, Before::NoStatus | Before::Creating)
    }
}

/// The Kubernetes side of a test: everything `decide::Resource` borrows, owned.
#[derive(Clone, Debug)]
struct Case {
    uid: String,
    generation: i64,
    spec: Spec,
    status: Status,
    deleting: bool,
    finalizer: bool,
    adopt: Option<String>,
    quiet: Option<Duration>,
    failures: u32,
    first_sight: bool,
    paused: bool,
    nudged: bool,
    /// Why the intent annotation is not taken (`Intent::distrust`).
    intent_problem: Option<Problem>,
    jitter: f64,
    settings: Settings,
    /// The namespace's `proton.eac.dev/adoption=allowed` label, as ReadAdoptionPolicy reads it.
    namespace_allows_adoption: bool,
}

impl Case {
    /// A live resource at generation 1, finalized, never reconciled.
    fn new() -> Self {
        Case {
            uid: UID.into(),
            generation: 1,
            spec: spec(),
            status: Status::default(),
            deleting: false,
            finalizer: true,
            adopt: None,
            quiet: None,
            failures: 0,
            first_sight: false,
            paused: false,
            nudged: false,
            intent_problem: None,
            jitter: JITTER,
            settings: settings(),
            namespace_allows_adoption: true,
        }
    }
    fn status(mut self, status: Status) -> Self {
        self.status = status;
        self
    }
    fn generation(mut self, generation: i64) -> Self {
        self.generation = generation;
        self
    }
    fn deleting(mut self) -> Self {
        self.deleting = true;
        self
    }
    fn without_finalizer(mut self) -> Self {
        self.finalizer = false;
        self
    }
    fn adopt(mut self, id: &str) -> Self {
        self.adopt = Some(id.into());
        self
    }
    /// Adopting, with adoption allowed everywhere.
    fn adopting(self) -> Self {
        self.adopt(ADOPT_ID)
            .settings_with(|s| s.adoption = AdoptionPolicy::Everywhere)
    }
    fn paused(mut self) -> Self {
        self.paused = true;
        self
    }
    fn observe(self) -> Self {
        self.spec_with(|s| s.management_policy = ManagementPolicy::Observe)
    }
    fn quiet(mut self, requeue: Duration) -> Self {
        self.quiet = Some(requeue);
        self
    }
    fn retain(self) -> Self {
        self.spec_with(|s| s.deletion_policy = DeletionPolicy::Retain)
    }
    /// Generation 2 with `role_arn` changed to ROLE_2.
    fn new_role(self) -> Self {
        self.generation(2)
            .spec_with(|s| s.role_arn = Some(ROLE_2.into()))
    }
    fn spec_with(mut self, f: impl FnOnce(&mut Spec)) -> Self {
        f(&mut self.spec);
        self
    }
    fn settings_with(mut self, f: impl FnOnce(&mut Settings)) -> Self {
        f(&mut self.settings);
        self
    }
    fn res(&self) -> Resource<'_> {
        Resource {
            uid: &self.uid,
            namespace: NAMESPACE,
            name: NAME,
            generation: self.generation,
            spec: &self.spec,
            status: &self.status,
            deleting: self.deleting,
            has_finalizer: self.finalizer,
            adopt_id: self.adopt.as_deref(),
            quiet: self.quiet,
            failures: self.failures,
            first_sight: self.first_sight,
            nudged: self.nudged,
            paused: self.paused,
            credentials_problem: None,
            intent_problem: self.intent_problem.as_ref(),
            default_region: None,
        }
    }
    fn run(&self) -> Run<'_> {
        Run::new(self.res(), &self.settings, self.jitter)
    }
}

fn release_step(arn: &str) -> Step {
    Step::Untag {
        arn: arn.into(),
        keys: vec![TAG_UID.into(), TAG_NAMESPACE.into(), TAG_NAME.into()],
        retain: true,
    }
}

fn find_step() -> Step {
    Step::FindOwned {
        environment_name: ENV.into(),
    }
}

/// The Create the decision must ask for: token, spec, roles and tags, in the default region.
fn create_step(case: &Case, token: &str, recreation: u32, replay: bool) -> Step {
    let mut tags = case.spec.tags.clone();
    tags.extend(ownership());
    Step::Create {
        request: CreateRequest {
            client_token: token.into(),
            environment_name: case.spec.environment_name.clone(),
            management_account_id: case.spec.management_account_id.clone(),
            roles: RoleArns {
                role_arn: case.spec.role_arn.clone(),
                codebuild_role_arn: case.spec.codebuild_role_arn.clone(),
                component_role_arn: case.spec.component_role_arn.clone(),
            },
            tags,
        },
        region: DEFAULT_REGION.into(),
        recreation,
        replay,
    }
}

fn condition<'a>(status: &'a Status, type_: &str) -> &'a Condition {
    status
        .condition(type_)
        .unwrap_or_else(|| panic!("no {type_} condition in {status:?}"))
}

/// (status, reason) of a condition, for compact assertions.
fn cond_of<'a>(status: &'a Status, type_: &str) -> (&'a str, &'a str) {
    let c = condition(status, type_);
    (c.status.as_str(), c.reason.as_str())
}

// ---------------------------------------------------------------------------------------------
// An in-memory Proton, and the driver
// ---------------------------------------------------------------------------------------------

/// One connection and its tags. Answers each AWS step with what Proton would return, raw.
#[derive(Clone, Debug)]
struct Fake {
    conn: Option<Connection>,
    tags: Tags,
    /// The client token the connection was created with: a Create with it returns the
    /// connection as it is; any other Create for the same environment is a ConflictException.
    token: Option<String>,
    /// State a new connection starts in.
    create_state: ConnectionState,
    /// The account the credentials act as.
    account: String,
    /// Errors answered instead, once each: (step name, class, AWS message).
    errors: Vec<(&'static str, ErrorClass, String)>,
    /// Errors answered as they are, once each: (step name, error).
    answered: Vec<(&'static str, ProtonError)>,
    /// An answer of the wrong kind, for one step name.
    wrong: Option<(&'static str, Outcome)>,
    /// What an Update does to the connection.
    on_update: fn(&mut Connection, &RoleArns),
    /// How long one step takes to be answered: (step name, duration).
    slow: Option<(&'static str, Duration)>,
    /// How long the next such step waits before it can be sent (for its credentials: the
    /// mapped role's AssumeRole), once: (step name, duration).
    unsent_for: Option<(&'static str, Duration)>,
    calls: Vec<&'static str>,
}

fn apply_update(c: &mut Connection, roles: &RoleArns) {
    c.roles = roles.clone();
    c.last_modified_at = UPDATED_AT.into();
}

impl Fake {
    fn empty() -> Self {
        Fake {
            conn: None,
            tags: Tags::new(),
            token: None,
            create_state: PENDING,
            account: ENV_ACCOUNT.into(),
            errors: Vec::new(),
            answered: Vec::new(),
            wrong: None,
            on_update: apply_update,
            slow: None,
            unsent_for: None,
            calls: Vec::new(),
        }
    }

    /// Holds `connection`, created by this resource's first Create.
    fn with(connection: Connection, tags: Tags) -> Self {
        Fake {
            conn: Some(connection),
            tags,
            token: Some(UID.into()),
            ..Fake::empty()
        }
    }

    /// Holds the recorded connection in `state`, tagged as `spec()` wants.
    fn recorded(state: ConnectionState) -> Self {
        Fake::with(conn(state), with_ownership(&[("team", "payments")]))
    }

    /// In step with `before`: holding the recorded connection, or empty (a Create makes one in
    /// `state`).
    fn for_before(before: Before, state: ConnectionState) -> Self {
        if before.has_id() {
            Fake::recorded(state)
        } else {
            Fake::empty().state(state)
        }
    }

    /// In step with the case's status, the connection CONNECTED.
    fn for_case(case: &Case) -> Self {
        if case.status.id.is_some() {
            Fake::recorded(CONNECTED)
        } else {
            Fake::empty()
        }
    }

    /// Holds another resource's connection for the same environment.
    fn taken() -> Self {
        let mut c = conn(CONNECTED);
        c.id = "someone-elses".into();
        c.arn = format!("arn:aws:proton:eu-west-1:{ENV_ACCOUNT}:environment-account-connection/x");
        Fake {
            token: Some(OTHER_UID.into()),
            ..Fake::with(c, tags(&[(TAG_UID, OTHER_UID)]))
        }
    }

    fn fail(mut self, step: &'static str, class: ErrorClass, message: &str) -> Self {
        self.errors.push((step, class, message.into()));
        self
    }

    /// The credentials for `step` could not be had: AssumeRole failed with `class`, and the
    /// request was never sent.
    fn fail_to_assume_role(mut self, step: &'static str, class: ErrorClass) -> Self {
        let error = ProtonError {
            operation: "AssumeRole",
            class,
            code: format!("{class:?}"),
            message: "STS did not answer".into(),
            retry_in: None,
        };
        self.answered.push((step, error));
        self
    }

    /// `step` is not sent: its region does not answer and another call there waits already.
    fn fail_unreached(mut self, step: &'static str, operation: &'static str) -> Self {
        self.answered
            .push((step, ProtonError::unreached(operation, "eu-west-1")));
        self
    }

    /// `step` is refused because the credentials that signed it expired.
    fn fail_expired(mut self, step: &'static str, operation: &'static str) -> Self {
        let error = ProtonError {
            operation,
            class: ErrorClass::from_code("ExpiredTokenException"),
            code: "ExpiredTokenException".into(),
            message: "The security token included in the request is expired".into(),
            retry_in: None,
        };
        self.answered.push((step, error));
        self
    }

    fn throttle(self, step: &'static str) -> Self {
        self.fail(step, ErrorClass::Throttled, "Rate exceeded")
    }

    fn account(mut self, account: &str) -> Self {
        self.account = account.into();
        self
    }

    fn state(mut self, state: ConnectionState) -> Self {
        self.create_state = state;
        self
    }

    fn count(&self, call: &str) -> usize {
        self.calls.iter().filter(|c| **c == call).count()
    }

    fn answer(&mut self, step: &Step) -> Result<Outcome, ProtonError> {
        self.calls.push(step.name());
        if let Some(i) = self.answered.iter().position(|(s, _)| *s == step.name()) {
            return Err(self.answered.remove(i).1);
        }
        if let Some(i) = self.errors.iter().position(|(s, ..)| *s == step.name()) {
            let (_, class, message) = self.errors.remove(i);
            return Err(aws_error(step, class, &message));
        }
        if let Some((name, outcome)) = &self.wrong
            && *name == step.name()
        {
            return Ok(outcome.clone());
        }
        let not_found = || {
            Err(aws_error(
                step,
                ErrorClass::NotFound,
                "connection not found",
            ))
        };
        let arn_matches = |arn: &str| self.conn.as_ref().is_some_and(|c| c.arn == arn);
        match step {
            Step::WhoAmI => Ok(Outcome::Account(self.account.clone())),
            Step::Get { id } => match &self.conn {
                Some(c) if c.id == *id => Ok(Outcome::Connection(c.clone())),
                _ => not_found(),
            },
            Step::FindOwned { environment_name } => {
                let tag = |key| self.tags.get(key).map(String::as_str);
                Ok(match &self.conn {
                    Some(c) if c.environment_name == *environment_name => match tag(TAG_UID) {
                        Some(UID) => Outcome::Found(Owned::Found(c.clone(), self.tags.clone())),
                        Some(owner)
                            if tag(TAG_NAMESPACE) == Some(NAMESPACE)
                                && tag(TAG_NAME) == Some(NAME) =>
                        {
                            Outcome::Found(Owned::Namesake(Namesake {
                                id: c.id.clone(),
                                arn: c.arn.clone(),
                                owner: owner.to_string(),
                            }))
                        }
                        _ => Outcome::Found(Owned::Nothing),
                    },
                    _ => Outcome::Found(Owned::Nothing),
                })
            }
            Step::Lookup {
                environment_name,
                management_account_id,
            } => {
                // A List summary: no CodeBuild role.
                let listed = self
                    .conn
                    .clone()
                    .filter(|c| {
                        c.environment_name == *environment_name
                            && c.management_account_id == *management_account_id
                    })
                    .map(|mut c| {
                        c.roles.codebuild_role_arn = None;
                        c
                    });
                Ok(Outcome::Listed(listed.into_iter().collect()))
            }
            Step::ListTags { arn } if arn_matches(arn) => Ok(Outcome::Tags(self.tags.clone())),
            Step::Create {
                request, region, ..
            } => {
                if let Some(c) = &self.conn {
                    if self.token.as_deref() == Some(request.client_token.as_str()) {
                        return Ok(Outcome::Connection(c.clone()));
                    }
                    if c.environment_name == request.environment_name {
                        let message = "a connection already exists for this environment";
                        return Err(aws_error(step, ErrorClass::Conflict, message));
                    }
                }
                let id = format!("conn-{}", request.client_token);
                let c = Connection {
                    arn: format!(
                        "arn:aws:proton:{region}:{}:environment-account-connection/{id}",
                        self.account
                    ),
                    id,
                    state: self.create_state,
                    environment_name: request.environment_name.clone(),
                    management_account_id: request.management_account_id.clone(),
                    environment_account_id: self.account.clone(),
                    roles: request.roles.clone(),
                    requested_at: REQUESTED_AT.into(),
                    last_modified_at: REQUESTED_AT.into(),
                };
                self.conn = Some(c.clone());
                self.tags = request.tags.clone();
                self.token = Some(request.client_token.clone());
                Ok(Outcome::Connection(c))
            }
            Step::Update { id, roles } => match &mut self.conn {
                Some(c) if c.id == *id => {
                    (self.on_update)(c, roles);
                    Ok(Outcome::Connection(c.clone()))
                }
                _ => not_found(),
            },
            Step::Tag { arn, tags } if arn_matches(arn) => {
                let mut after = self.tags.clone();
                after.extend(tags.clone());
                if after.len() > MAX_TAGS {
                    // As Proton: a resource carries at most 50 tags.
                    return Err(aws_error(
                        step,
                        ErrorClass::Validation,
                        "a resource can have at most 50 tags",
                    ));
                }
                self.tags = after;
                Ok(Outcome::Done)
            }
            Step::Untag { arn, keys, .. } if arn_matches(arn) => {
                self.tags.retain(|k, _| !keys.contains(k));
                Ok(Outcome::Done)
            }
            Step::Delete { id } if self.conn.as_ref().is_some_and(|c| c.id == *id) => {
                self.conn = None;
                self.tags.clear();
                self.token = None;
                Ok(Outcome::Done)
            }
            Step::ListTags { .. } | Step::Tag { .. } | Step::Untag { .. } | Step::Delete { .. } => {
                not_found()
            }
            other => panic!("{} is not an AWS call", other.name()),
        }
    }
}

fn aws_error(step: &Step, class: ErrorClass, message: &str) -> ProtonError {
    ProtonError {
        operation: operation(step),
        class,
        code: format!("{class:?}"),
        message: message.into(),
        retry_in: None,
    }
}

fn operation(step: &Step) -> &'static str {
    match step {
        Step::WhoAmI => "GetCallerIdentity",
        Step::Get { .. } => "GetEnvironmentAccountConnection",
        Step::FindOwned { .. } | Step::Lookup { .. } => "ListEnvironmentAccountConnections",
        Step::ListTags { .. } => "ListTagsForResource",
        Step::Create { .. } => "CreateEnvironmentAccountConnection",
        Step::Update { .. } => "UpdateEnvironmentAccountConnection",
        Step::Tag { .. } => "TagResource",
        Step::Untag { .. } => "UntagResource",
        Step::Delete { .. } => "DeleteEnvironmentAccountConnection",
        other => panic!("{} is not an AWS call", other.name()),
    }
}

/// One reconcile: every step, the Events `record` returned, and what the run knew at the end.
#[derive(Debug)]
struct Trace {
    steps: Vec<Step>,
    notes: Vec<Note>,
    observed: Observed,
    region: String,
}

impl Trace {
    /// The step names, space-separated.
    fn path(&self) -> String {
        path(&self.steps)
    }
    fn last(&self) -> &Step {
        self.steps.last().expect("no steps")
    }
    fn settled(&self) -> &Settled {
        match self.last() {
            Step::Settle(s) => s,
            _ => panic!("expected Settle, got {}", self.path()),
        }
    }
    fn reported(&self) -> &Reported {
        match self.last() {
            Step::Report(r) => r,
            _ => panic!("expected Report, got {}", self.path()),
        }
    }
    fn recorded(&self) -> &Recorded {
        match self.step("Record") {
            Step::Record(r) => r,
            _ => unreachable!(),
        }
    }
    /// The first step of that name.
    fn step(&self, name: &str) -> &Step {
        self.steps
            .iter()
            .find(|s| s.name() == name)
            .unwrap_or_else(|| panic!("no {name} in {}", self.path()))
    }
    fn origin(&self) -> Option<Origin> {
        match &self.observed {
            Observed::Connection { origin, .. } => Some(*origin),
            _ => None,
        }
    }
}

fn path(steps: &[Step]) -> String {
    steps.iter().map(Step::name).collect::<Vec<_>>().join(" ")
}

/// Runs one reconcile as the controller does, and writes back what the controller would write
/// (statuses, the finalizer).
fn reconcile(case: &mut Case, proton: &mut Fake, now: jiff::Timestamp) -> Trace {
    let mut clock = now;
    let mut steps: Vec<Step> = Vec::new();
    let mut notes = Vec::new();
    let mut written = None;
    let mut finalized = false;
    let mut annotated: Option<Intent> = None;
    let (observed, region) = {
        let mut run = case.run();
        loop {
            assert!(steps.len() <= 2 * MAX_STEPS, "runaway: {}", path(&steps));
            let step = run.next(clock);
            let who_am_i_first =
                !step.is_aws() || step == Step::WhoAmI || steps.contains(&Step::WhoAmI);
            assert!(who_am_i_first, "{} before WhoAmI", step.name());
            steps.push(step.clone());
            if step.is_final() {
                break;
            }
            let answer = match &step {
                Step::AddFinalizer { intent } => {
                    finalized = true;
                    match intent {
                        // The controller writes the intent as an annotation, and reads it back
                        // into the status it reconciles from.
                        Some(intent) => {
                            annotated = Some(intent.clone());
                            Ok(Outcome::IntentRecorded)
                        }
                        None => Ok(Outcome::Done),
                    }
                }
                Step::ReadAdoptionPolicy => {
                    Ok(Outcome::AdoptionAllowed(case.namespace_allows_adoption))
                }
                // A Record is the controller's write, but one before a Create is not made when
                // the Create would not be sent (see `Fake::fail_unreached`).
                Step::Record(r) => match proton.answered.iter().position(|(s, _)| *s == "Record") {
                    Some(i) => Err(proton.answered.remove(i).1),
                    None => {
                        written = Some(r.status.clone());
                        Ok(Outcome::Done)
                    }
                },
                call => {
                    if let Some((name, took)) = proton.unsent_for
                        && name == call.name()
                    {
                        proton.unsent_for = None;
                        clock = later(clock, took);
                    }
                    // As the executor does (`Proton::create`): no Create goes after the end
                    // of the window its intent opened.
                    let late = matches!(call, Step::Create { .. })
                        && run.create_send_by().is_none_or(|by| clock >= by);
                    if late {
                        notes.extend(run.record(&step, Err(ProtonError::late(operation(call)))));
                        continue;
                    }
                    if let Some((name, took)) = proton.slow
                        && name == call.name()
                    {
                        clock = later(clock, took);
                    }
                    proton.answer(call)
                }
            };
            notes.extend(run.record(&step, answer));
        }
        (run.observed().clone(), run.region().to_string())
    };
    case.finalizer |= finalized;
    if let Some(intent) = &annotated {
        intent.apply(&mut case.status);
    }
    if let Some(status) = written {
        case.status = status;
    }
    match steps.last() {
        Some(Step::Settle(s)) => case.status = s.status.clone(),
        Some(Step::Report(r)) => case.status = r.status.clone(),
        Some(Step::RemoveFinalizer) => case.finalizer = false,
        _ => {}
    }
    Trace {
        steps,
        notes,
        observed,
        region,
    }
}

/// The first step of a reconcile, and the one after WhoAmI if that came first (answered with
/// the account the connections are pinned to).
fn first_steps(case: &Case) -> Vec<Step> {
    let mut run = case.run();
    let first = run.next(now());
    if first != Step::WhoAmI {
        return vec![first];
    }
    run.record(&first, Ok(Outcome::Account(ENV_ACCOUNT.into())));
    vec![first, run.next(now())]
}

// ---------------------------------------------------------------------------------------------
// The first steps of a reconcile; creating
// ---------------------------------------------------------------------------------------------

#[test]
fn the_first_step_of_a_reconcile_follows_deletion_finalizer_record_policy_and_adoption() {
    let mut checked = 0;
    for before in Before::ALL {
        for spec_changed in [false, true] {
            for deleting in [false, true] {
                for finalizer in [false, true] {
                    for policy in [DeletionPolicy::Delete, DeletionPolicy::Retain] {
                        for adopt in [None, Some(ADOPT_ID)] {
                            let mut case = Case::new()
                                .status(before.status())
                                .generation(if spec_changed { 2 } else { 1 })
                                .spec_with(|s| s.deletion_policy = policy);
                            case.deleting = deleting;
                            case.finalizer = finalizer;
                            case.adopt = adopt.map(str::to_string);
                            let retain = policy == DeletionPolicy::Retain;
                            let aws = |step| vec![Step::WhoAmI, step];
                            let intent_step = || {
                                Step::Record(Box::new(Recorded {
                                    status: intent(case.generation, now()),
                                    events: vec![],
                                    before_create: true,
                                }))
                            };

                            let expected = match (deleting, finalizer, before) {
                                // Never finalized: not ours to clean up.
                                (true, false, _) => vec![Step::Nothing],
                                // Never sent a Create and holds no connection: released
                                // without a single AWS call.
                                (true, true, Before::NoStatus) => vec![Step::RemoveFinalizer],
                                // A Create may be in flight: find its connection by uid tag.
                                (true, true, Before::Creating) => aws(find_step()),
                                (true, true, _) if retain => aws(release_step(ARN)),
                                // Delete policy with a recorded id: delete straight away.
                                (true, true, _) => aws(Step::Delete { id: ID.into() }),
                                // The finalizer comes before anything else; for a first Create it
                                // carries the intent (so the account is asked first).
                                (false, false, Before::NoStatus) if adopt.is_none() => {
                                    vec![Step::WhoAmI, finalizer_with_intent(now())]
                                }
                                (false, false, _) => vec![Step::AddFinalizer { intent: None }],
                                // A recorded id wins over the adopt annotation.
                                (false, true, b) if b.has_id() => aws(Step::Get { id: ID.into() }),
                                // Adoption asks the namespace first, before any AWS call.
                                (false, true, Before::NoStatus) if adopt.is_some() => {
                                    vec![Step::ReadAdoptionPolicy]
                                }
                                (false, true, Before::NoStatus) => aws(intent_step()),
                                // The intent is fresh: the Create is sent again, as a replay;
                                // once a connection was requested, adopt-id is history.
                                (false, true, _) => aws(create_step(&case, UID, 0, true)),
                            };
                            assert_eq!(
                                first_steps(&case),
                                expected,
                                "before={before:?} spec_changed={spec_changed} deleting={deleting} finalizer={finalizer} policy={policy:?} adopt={adopt:?}"
                            );
                            checked += 1;
                        }
                    }
                }
            }
        }
    }
    assert_eq!(checked, 160);
}

#[test]
fn a_new_resource_gets_whoami_then_the_finalizer_with_the_intent_then_the_create() {
    let mut case = Case::new().without_finalizer();
    let mut proton = Fake::empty();
    let trace = reconcile(&mut case, &mut proton, now());
    // One write before the Create: the finalizer and the intent (region, account, time) together.
    assert_eq!(trace.path(), "WhoAmI AddFinalizer Create Settle");
    assert_eq!(proton.calls, ["WhoAmI", "Create"]);
    assert!(case.finalizer);
    assert_eq!(trace.steps[1], finalizer_with_intent(now()));
    assert_eq!(trace.steps[2], create_step(&case, UID, 0, false));

    // When the finalizer is already there (a Create deferred before), the intent is a status
    // write of its own.
    let mut case = Case::new();
    let trace = reconcile(&mut case, &mut Fake::empty(), now());
    assert_eq!(trace.path(), "WhoAmI Record Create Settle");
    assert_eq!(
        trace.recorded(),
        &Recorded {
            status: intent(1, now()),
            events: vec![],
            before_create: true,
        },
        "region and account pinned, a Create in flight, Ready/Synced False Creating"
    );
    let created = format!("created connection conn-{UID} in {DEFAULT_REGION}");
    assert_eq!(trace.notes, [Note::normal("Created", created)]);
    let s = &trace.settled().status;
    assert_eq!(s.id.as_deref(), Some(format!("conn-{UID}").as_str()));
    assert_eq!(s.create_sent_at, None, "the Create's answer is on record");
    assert_eq!(s.region.as_deref(), Some(DEFAULT_REGION));

    // The account pinned is the one the credentials act as.
    let mut case = Case::new();
    let trace = reconcile(&mut case, &mut Fake::empty().account(OTHER_ACCOUNT), now());
    assert_eq!(trace.path(), "WhoAmI Record Create Settle");
    let pinned = &trace.recorded().status.environment_account_id;
    assert_eq!(pinned.as_deref(), Some(OTHER_ACCOUNT));
    let pinned = &trace.settled().status.environment_account_id;
    assert_eq!(pinned.as_deref(), Some(OTHER_ACCOUNT));
}

#[test]
fn a_new_resource_is_created_with_uid_token_spec_tags_ownership_tags_and_roles() {
    let case = Case::new().spec_with(|s| {
        s.codebuild_role_arn = Some(CODEBUILD.into());
        s.component_role_arn = Some(COMPONENT.into());
        s.tags = tags(&[("team", "payments"), ("cost-center", "42")]);
    });
    let trace = reconcile(&mut case.clone(), &mut Fake::empty(), now());
    let Step::Create {
        request,
        region,
        recreation: 0,
        replay: false,
    } = trace.step("Create")
    else {
        panic!("expected a first Create: {:?}", trace.step("Create"));
    };
    assert_eq!(region, DEFAULT_REGION);
    assert_eq!(request.client_token, UID);
    assert_eq!(request.environment_name, ENV);
    assert_eq!(request.management_account_id, MGMT);
    assert_eq!(
        request.roles,
        roles(Some(ROLE), Some(CODEBUILD), Some(COMPONENT))
    );
    let expected = with_ownership(&[("team", "payments"), ("cost-center", "42")]);
    assert_eq!(request.tags, expected);
    assert_eq!(desired_tags(&case.res()), expected);
    assert_eq!(ownership_tags(&case.res()), ownership());

    // A spec without roles or tags still carries the ownership tags.
    let mut bare = Case::new().spec_with(|s| {
        s.role_arn = None;
        s.tags.clear();
    });
    let trace = reconcile(&mut bare, &mut Fake::empty(), now());
    let Step::Create { request, .. } = trace.step("Create") else {
        unreachable!()
    };
    assert_eq!(request.roles, RoleArns::default());
    assert_eq!(request.tags, ownership());
}

#[test]
fn a_fresh_intent_is_not_rewritten_before_a_retried_create_and_a_stale_one_is() {
    // (name, create_sent_at on record, rewritten first)
    #[rustfmt::skip]
    let table = [
        ("sent 30 s ago", at(570).to_string(), false),
        ("sent 59 s ago", at(541).to_string(), false),
        ("sent exactly create_settle ago", at(540).to_string(), true),
        ("sent an hour ago", at(-3000).to_string(), true),
        ("unreadable time", "yesterday".to_string(), true),
    ];
    for (name, sent, rewritten) in table {
        let mut status = creating();
        status.create_sent_at = Some(sent);
        let mut case = Case::new().status(status);
        // The lost Create did make the connection.
        let trace = reconcile(&mut case, &mut Fake::recorded(PENDING), now());
        let expected = match rewritten {
            true => "WhoAmI Record Create ListTags Settle",
            false => "WhoAmI Create ListTags Settle",
        };
        assert_eq!(trace.path(), expected, "{name}");
        let create = trace.step("Create");
        assert_eq!(
            create,
            &create_step(&case, UID, 0, true),
            "{name}: a replay"
        );
        if rewritten {
            let r = &trace.recorded().status;
            assert_eq!(r.create_sent_at, Some(now().to_string()), "{name}");
            assert_eq!(r.region.as_deref(), Some(DEFAULT_REGION), "{name}");
            assert_eq!(
                r.environment_account_id.as_deref(),
                Some(ENV_ACCOUNT),
                "{name}"
            );
        }
        assert_eq!(trace.settled().status.id.as_deref(), Some(ID), "{name}");
        assert_eq!(trace.settled().status.create_sent_at, None, "{name}");
    }
}

/// A Create can wait for its credentials (the mapped role's AssumeRole, retried for up to about
/// 90 s) after its intent was written. Past the window the intent opened it is not sent, since a
/// deletion's search counts on that window: the intent is written again, then the same Create
/// goes, once.
#[test]
fn a_create_whose_credentials_outlast_its_intents_window_writes_the_intent_again_first() {
    // (name, intent on record, how long the credentials took, path)
    #[rustfmt::skip]
    let table = [
        ("new, within the window", None, secs(59), "WhoAmI AddFinalizer Create Settle"),
        ("new, at its end", None, secs(60), "WhoAmI AddFinalizer Create Record Create Settle"),
        ("new, 90 s of STS retries", None, secs(90), "WhoAmI AddFinalizer Create Record Create Settle"),
        ("retried, within what is left", Some(at(570)), secs(29), "WhoAmI Create ListTags Settle"),
        ("retried, past what is left", Some(at(570)), secs(30), "WhoAmI Create Record Create ListTags Settle"),
    ];
    for (name, intent_at, took, path) in table {
        let mut case = match intent_at {
            None => Case::new().without_finalizer(),
            Some(t) => Case::new().status(intent(1, t)),
        };
        let mut proton = Fake::empty();
        proton.unsent_for = Some(("Create", took));
        let trace = reconcile(&mut case, &mut proton, now());
        assert_eq!(trace.path(), path, "{name}");
        let sent = proton.calls.iter().filter(|c| **c == "Create").count();
        assert_eq!(sent, 1, "{name}: one Create sent");
        let creates: Vec<&Step> = trace
            .steps
            .iter()
            .filter(|s| s.name() == "Create")
            .collect();
        assert!(
            creates.iter().all(|c| c == &creates[0]),
            "{name}: the same request"
        );
        if path.contains("Record") {
            let rewritten = &trace.recorded().status;
            assert_eq!(
                rewritten.create_sent_at,
                Some(later(now(), took).to_string()),
                "{name}: the intent written again when the Create can go"
            );
        }
        let s = &trace.settled().status;
        assert_eq!(
            s.id.as_deref(),
            Some(format!("conn-{UID}").as_str()),
            "{name}"
        );
    }
}

#[test]
fn a_replayed_create_reads_the_tags_and_a_first_create_knows_the_tags_it_sent() {
    // The lost Create sent team=payments; the spec says team=platform now. A replay returns the
    // connection as first created, so its tags are read, not assumed.
    let mut case = Case::new()
        .status(creating())
        .generation(2)
        .spec_with(|s| s.tags = tags(&[("team", "platform")]));
    let mut proton = Fake::recorded(PENDING);
    let trace = reconcile(&mut case, &mut proton, now());
    assert_eq!(trace.path(), "WhoAmI Create ListTags Tag Settle");
    let tag = Step::Tag {
        arn: ARN.into(),
        tags: tags(&[("team", "platform")]),
    };
    assert_eq!(trace.steps[3], tag);
    assert_eq!(trace.origin(), Some(Origin::Created { recreation: 0 }));
    assert_eq!(proton.tags, with_ownership(&[("team", "platform")]));

    let trace = reconcile(&mut Case::new(), &mut Fake::empty(), now());
    assert_eq!(trace.path(), "WhoAmI Record Create Settle");
    let Observed::Connection {
        tags: Some(known),
        origin: Origin::Created { recreation: 0 },
        ..
    } = &trace.observed
    else {
        panic!("expected a created connection: {:?}", trace.observed);
    };
    assert_eq!(known, &with_ownership(&[("team", "payments")]));
    assert_eq!(trace.settled().status.applied_tag_keys, ["team"]);
}

// ---------------------------------------------------------------------------------------------
// A connection deleted out of band
// ---------------------------------------------------------------------------------------------

#[test]
fn a_vanished_connection_is_reported_not_found_then_recreated_with_a_derived_token() {
    // (re-creations on record, expected token, expected re-creation)
    let table = [
        (0u32, format!("{UID}-r1"), 1u32),
        (1, format!("{UID}-r2"), 2),
        (4, format!("{UID}-r5"), 5),
    ];
    for (before, token, recreation) in table {
        for state in STATES {
            let what = format!("{state:?} after {before} re-creations");
            let mut status = recorded(state, 1);
            status.recreations = before;
            let mut case = Case::new().status(status);
            let mut proton = Fake::empty();
            let trace = reconcile(&mut case, &mut proton, now());
            assert_eq!(trace.path(), "WhoAmI Get Record Create Settle", "{what}");

            let vanished = trace.recorded();
            let s = &vanished.status;
            let old = (&s.id, &s.arn, &s.status, &s.role_arn);
            assert_eq!(
                old,
                (&None, &None, &None, &None),
                "{what}: nothing of it is kept"
            );
            assert!(s.applied_tag_keys.is_empty(), "{what}");
            assert_eq!(s.recreations, recreation, "{what}");
            assert_eq!(s.create_sent_at, Some(now().to_string()), "{what}");
            assert_eq!(
                s.region.as_deref(),
                Some(DEFAULT_REGION),
                "{what}: pin kept"
            );
            assert_eq!(
                s.environment_account_id.as_deref(),
                Some(ENV_ACCOUNT),
                "{what}"
            );
            assert_eq!(cond_of(s, READY), ("False", "NotFound"), "{what}");
            assert_eq!(cond_of(s, SYNCED), ("False", "NotFound"), "{what}");
            assert_eq!(cond_of(s, STALLED), ("False", "Retrying"), "{what}");
            assert!(condition(s, READY).message.contains(ID), "{what}");
            let note = format!(
                "connection {ID} no longer exists in Proton (deleted outside the controller); re-creating it"
            );
            assert_eq!(vanished.events, [Note::warning("NotFound", note)], "{what}");

            let create = create_step(&case, &token, recreation, false);
            assert_eq!(trace.steps[3], create, "{what}");
            assert_eq!(trace.notes[0].reason, "Recreated", "{what}");
            let settled = &trace.settled().status;
            assert_eq!(settled.recreations, recreation, "{what}");
            assert_eq!(settled.id, Some(format!("conn-{token}")), "{what}");

            // The next reconcile reads the new connection back and keeps the count.
            let trace = reconcile(&mut case, &mut proton, now());
            assert_eq!(trace.path(), "WhoAmI Get Settle", "{what}");
            assert_eq!(trace.settled().status.recreations, recreation, "{what}");
        }
    }
}

/// Once a connection was requested or re-created, the adopt annotation is history: a vanished
/// adopted connection is re-created like any other.
#[test]
fn a_vanished_adopted_connection_is_recreated_once_its_id_is_on_record() {
    let mut status = status_connected();
    status.id = Some(ADOPT_ID.into());
    status.arn = Some(adoptee(CONNECTED).arn);
    let mut case = Case::new().status(status).adopt(ADOPT_ID);
    let trace = reconcile(&mut case, &mut Fake::empty(), now());
    let recreate = create_step(&case, &format!("{UID}-r1"), 1, false);
    assert_eq!(trace.step("Create"), &recreate, "{}", trace.path());
    assert_eq!(trace.settled().status.recreations, 1);
}

// ---------------------------------------------------------------------------------------------
// Pinned region and account
// ---------------------------------------------------------------------------------------------

#[test]
fn the_region_is_pinned_by_the_status_then_the_arn_and_only_a_new_resource_uses_spec_or_default() {
    let pinned = |region: Option<&str>, arn: &str| {
        let mut s = status_connected();
        s.region = region.map(str::to_string);
        s.arn = Some(arn.into());
        s
    };
    let legacy = pinned(None, &ARN.replace("eu-west-1", "us-west-2"));
    let no_region = pinned(None, "arn:aws:proton::444455556666:x");
    let new = Status::default;
    // (name, status, spec region, default region, expected region)
    #[rustfmt::skip]
    let table = [
        ("new, no spec region", new(), None, DEFAULT_REGION, DEFAULT_REGION),
        ("new, spec region", new(), Some("us-east-1"), DEFAULT_REGION, "us-east-1"),
        ("pinned, default changed", pinned(Some("eu-central-1"), ARN), None, "ap-south-1", "eu-central-1"),
        ("pinned, spec differs", pinned(Some("eu-central-1"), ARN), Some("us-east-1"), DEFAULT_REGION, "eu-central-1"),
        ("pinned before the Create", creating(), Some("us-east-1"), "ap-south-1", DEFAULT_REGION),
        ("recorded before regions were pinned: the ARN's", legacy, None, DEFAULT_REGION, "us-west-2"),
        ("no pin, an ARN without region", no_region, Some("us-east-1"), DEFAULT_REGION, "us-east-1"),
    ];
    for (name, status, spec_region, default, expected) in table {
        let case = Case::new()
            .status(status)
            .spec_with(|s| s.region = spec_region.map(str::to_string))
            .settings_with(|s| s.default_region = default.into());
        assert_eq!(case.run().region(), expected, "{name}");
        let mut proton = Fake::for_case(&case);
        if let (Some(c), Some(arn)) = (&mut proton.conn, &case.status.arn) {
            c.arn = arn.clone();
        }
        let trace = reconcile(&mut case.clone(), &mut proton, now());
        assert_eq!(trace.region, expected, "{name}");
        if let Some(Step::Create { region, .. }) = trace.steps.iter().find(|s| s.is_mutation()) {
            assert_eq!(region, expected, "{name}: the Create goes there");
        }
        let region = trace.settled().status.region.clone();
        assert_eq!(
            region.as_deref(),
            Some(expected),
            "{name}: pinned from now on"
        );
    }
}

#[test]
fn a_region_outside_the_allowed_regions_is_refused_without_calling_aws() {
    let allow = |regions: &[&str]| {
        let regions: Vec<String> = regions.iter().map(|r| r.to_string()).collect();
        Case::new().settings_with(|s| s.allowed_regions = regions)
    };
    let us_east = |s: &mut Spec| s.region = Some("us-east-1".into());
    // (name, case, expected steps)
    #[rustfmt::skip]
    let table = [
        ("new resource, spec region refused", allow(&[DEFAULT_REGION]).spec_with(us_east), "Report"),
        ("new resource, default region refused", allow(&["us-east-1"]), "Report"),
        ("pinned to a region no longer allowed", allow(&["us-east-1"]).status(status_connected()), "Report"),
        ("deleting in a refused region", allow(&["us-east-1"]).status(status_connected()).deleting(), "Report"),
        ("deleting, never sent a Create", allow(&["us-east-1"]).deleting(), "RemoveFinalizer"),
        ("allowed", allow(&["us-east-1", DEFAULT_REGION]), "WhoAmI Record Create Settle"),
    ];
    for (name, mut case, expected) in table {
        let was_finalized = case.finalizer;
        let mut proton = Fake::for_case(&case);
        let trace = reconcile(&mut case, &mut proton, now());
        assert_eq!(trace.path(), expected, "{name}");
        if expected != "Report" {
            continue;
        }
        assert_eq!(proton.calls, Vec::<&str>::new(), "{name}: no AWS call");
        assert_eq!(case.finalizer, was_finalized, "{name}: finalizer kept");
        let r = trace.reported();
        assert_eq!(r.problem.reason, "RegionNotAllowed", "{name}");
        assert_eq!(r.problem.retry, Retry::Terminal, "{name}");
        let allowed = case.settings.allowed_regions.join(", ");
        let message = &r.problem.message;
        let names_both = message.contains(&trace.region) && message.contains(&allowed);
        assert!(names_both, "{name}: {message}");
        assert_eq!(
            cond_of(&r.status, STALLED),
            ("True", "RegionNotAllowed"),
            "{name}"
        );
    }
}

#[test]
fn a_connection_pinned_to_another_account_is_never_changed_only_reported() {
    // The credentials now act as OTHER_ACCOUNT; every connection is pinned to ENV_ACCOUNT.
    let connected = || Case::new().status(status_connected());
    // (name, case)
    #[rustfmt::skip]
    let table = [
        ("settled connection", connected()),
        ("role changed in the spec (would Update)", connected().new_role()),
        ("fresh intent (would Create)", Case::new().status(creating())),
        ("stale intent (would rewrite it)", Case::new().status(intent(1, at(0)))),
        ("deleting, Delete policy", connected().deleting()),
        ("deleting, Retain policy", connected().deleting().retain()),
        ("deleting while a Create may be in flight", Case::new().status(creating()).deleting()),
    ];
    for (name, mut case) in table {
        let mut proton = Fake::for_case(&case).account(OTHER_ACCOUNT);
        let trace = reconcile(&mut case, &mut proton, now());
        assert_eq!(trace.path(), "WhoAmI Report", "{name}");
        assert_eq!(proton.calls, ["WhoAmI"], "{name}: nothing else reaches AWS");
        assert!(case.finalizer, "{name}: the finalizer stays");
        let r = trace.reported();
        assert_eq!(r.problem.reason, "AccountMismatch", "{name}");
        let message = &r.problem.message;
        let names_both = message.contains(ENV_ACCOUNT) && message.contains(OTHER_ACCOUNT);
        assert!(names_both, "{name}: {message}");
        assert_eq!(
            cond_of(&r.status, SYNCED),
            ("False", "AccountMismatch"),
            "{name}"
        );
        assert_eq!(
            cond_of(&r.status, STALLED),
            ("True", "AccountMismatch"),
            "{name}"
        );
        let pin = r.status.environment_account_id.as_deref();
        assert_eq!(pin, Some(ENV_ACCOUNT), "{name}: the pin is not moved");
        let event = r.event.as_ref().map(|n| (n.reason, n.warning));
        assert_eq!(event, Some(("AccountMismatch", true)), "{name}");
    }
}

// ---------------------------------------------------------------------------------------------
// Quiet, deletion
// ---------------------------------------------------------------------------------------------

#[test]
fn a_quiet_resource_is_left_idle_without_calling_aws() {
    let wait = secs(420);
    let connected = || Case::new().status(status_connected());
    // (name, case, expected steps)
    #[rustfmt::skip]
    let table = [
        ("settled, not due yet", connected().quiet(wait), "Idle"),
        ("a Create in flight, not due yet", Case::new().status(creating()).quiet(wait), "Idle"),
        ("finalizer stripped: restored without AWS", connected().without_finalizer().quiet(wait), "AddFinalizer Idle"),
        ("deletion is never quiet", connected().deleting().quiet(wait), "WhoAmI Delete RemoveFinalizer"),
    ];
    for (name, mut case, expected) in table {
        let mut proton = Fake::recorded(CONNECTED);
        let trace = reconcile(&mut case, &mut proton, now());
        assert_eq!(trace.path(), expected, "{name}");
        if trace.last().name() == "Idle" {
            assert_eq!(trace.last(), &Step::Idle { requeue: wait }, "{name}");
            assert_eq!(proton.calls, Vec::<&str>::new(), "{name}");
            assert!(case.finalizer, "{name}");
        }
    }
}

#[test]
fn deletion_deletes_or_releases_and_then_lets_the_resource_go() {
    let del = |status: Status| Case::new().status(status).deleting();
    let owned = || Fake::recorded(CONNECTED);
    let gone = Fake::empty;
    let mut no_arn = status_connected();
    no_arn.arn = None;
    let mut gone_while_creating = status_connected();
    gone_while_creating.create_sent_at = Some(at(570).to_string());
    // (name, case, proton, expected steps, connection left in Proton)
    #[rustfmt::skip]
    let table = [
        ("Delete, id recorded", del(status_connected()), owned(), "WhoAmI Delete RemoveFinalizer", false),
        ("Delete, PENDING", del(status_pending()), owned(), "WhoAmI Delete RemoveFinalizer", false),
        ("Delete, REJECTED", del(status_rejected()), owned(), "WhoAmI Delete RemoveFinalizer", false),
        ("Delete, already gone (NotFound)", del(status_connected()), gone(), "WhoAmI Delete RemoveFinalizer", false),
        ("Delete, gone, Create in flight", del(gone_while_creating), gone(), "WhoAmI Delete FindOwned Settle", false),
        ("Delete after a crash", del(creating()), owned(), "WhoAmI FindOwned Delete RemoveFinalizer", false),
        ("Delete, never sent a Create", del(Status::default()), owned(), "RemoveFinalizer", true),
        ("Retain, id recorded", del(status_connected()).retain(), owned(), "WhoAmI Untag RemoveFinalizer", true),
        ("Retain, already gone", del(status_connected()).retain(), gone(), "WhoAmI Untag RemoveFinalizer", false),
        ("Retain, no ARN recorded", del(no_arn).retain(), owned(), "WhoAmI FindOwned Untag RemoveFinalizer", true),
        ("Retain after a crash", del(creating()).retain(), owned(), "WhoAmI FindOwned Untag RemoveFinalizer", true),
        ("never finalized", del(status_connected()).without_finalizer(), owned(), "Nothing", true),
    ];
    for (name, mut case, mut proton, expected, kept) in table {
        let trace = reconcile(&mut case, &mut proton, now());
        assert_eq!(trace.path(), expected, "{name}");
        assert_eq!(proton.conn.is_some(), kept, "{name}");
        assert_eq!(proton.count("Get"), 0, "{name}: no Get on deletion");
        let released = matches!(trace.last(), Step::RemoveFinalizer | Step::Nothing);
        assert_eq!(case.finalizer, !released, "{name}");
        if kept && expected.contains("Untag") {
            // Retain strips exactly the three ownership tags.
            assert_eq!(trace.step("Untag"), &release_step(ARN), "{name}");
            assert_eq!(proton.tags, tags(&[("team", "payments")]), "{name}");
        }
    }
}

#[test]
fn a_resource_deleted_while_a_create_may_be_in_flight_waits_for_it_then_goes() {
    // The window is twice create_settle (120 s) after the recorded Create.
    // (seconds since create_sent_at, Some(requeue) while waiting, None once released)
    let table = [
        (0, Some(5)),
        (30, Some(5)),
        (116, Some(4)),
        (119, Some(1)),
        (120, None),
        (3600, None),
    ];
    for (age, wait) in table {
        let sent = at(600 - age);
        let mut case = Case::new().status(intent(1, sent)).deleting();
        let mut proton = Fake::empty();
        let trace = reconcile(&mut case, &mut proton, now());
        let what = format!("{age} s after the Create");
        assert_eq!(proton.calls, ["WhoAmI", "FindOwned"], "{what}");
        let Some(wait) = wait else {
            assert_eq!(trace.last(), &Step::RemoveFinalizer, "{what}");
            continue;
        };
        let settled = trace.settled();
        assert_eq!(settled.requeue, secs(wait), "{what}");
        assert!((secs(1)..=secs(5)).contains(&settled.requeue), "{what}");
        assert_eq!(settled.events, [], "{what}");
        assert!(case.finalizer, "{what}: not released yet");
        let s = &settled.status;
        assert_eq!(cond_of(s, READY), ("False", "Deleting"), "{what}");
        assert_eq!(cond_of(s, SYNCED), ("False", "Deleting"), "{what}");
        assert_eq!(cond_of(s, STALLED), ("False", "Reconciling"), "{what}");
        let message = &condition(s, READY).message;
        let until = at(720 - age).to_string();
        let both = message.contains(&sent.to_string()) && message.contains(&until);
        assert!(both, "{what}: {message}");
        assert_eq!(s.create_sent_at, Some(sent.to_string()), "{what}");
    }
}

// ---------------------------------------------------------------------------------------------
// Create answered ConflictException
// ---------------------------------------------------------------------------------------------

#[test]
fn a_replayed_create_that_conflicts_finds_the_resources_own_connection_and_converges_it() {
    // The lost Create made the connection with the old spec; the replay, with the new spec,
    // is refused (strict idempotency). The connection is found by its uid tag.
    let mut case = Case::new()
        .status(creating())
        .new_role()
        .spec_with(|s| s.tags = tags(&[("team", "platform")]));
    let mut proton = Fake::recorded(CONNECTED).fail(
        "Create",
        ErrorClass::Conflict,
        "client token already used with different parameters",
    );
    let trace = reconcile(&mut case, &mut proton, now());
    assert_eq!(trace.path(), "WhoAmI Create FindOwned Update Tag Settle");
    assert_eq!(trace.origin(), Some(Origin::Found));
    let s = &trace.settled().status;
    assert_eq!(s.id.as_deref(), Some(ID));
    assert_eq!(s.role_arn.as_deref(), Some(ROLE_2));
    assert_eq!(s.create_sent_at, None);
    assert_eq!(proton.tags, with_ownership(&[("team", "platform")]));

    // A first Create (never sent before) that conflicts created nothing, and nothing of ours
    // can exist: reported at once after a look for a namesake (none here), and no Create is
    // recorded as in flight.
    let trace = reconcile(&mut Case::new(), &mut Fake::taken(), now());
    assert_eq!(trace.path(), "WhoAmI Record Create FindOwned Report");
    let r = trace.reported();
    assert_eq!(
        (r.problem.reason, r.problem.retry),
        ("Conflict", Retry::Terminal)
    );
    assert_eq!(r.status.create_sent_at, None);
}

/// The recorded connection answered NotFound once though it still exists (an endpoint or a
/// proxy that said so for a moment). Its re-creation is refused with a Conflict: the recorded
/// connection holds the environment. It is found by its uid tag and recorded again, instead of
/// being forgotten (and never deleted with the resource).
#[test]
fn a_re_creation_refused_by_the_connection_that_vanished_for_a_moment_finds_it_again() {
    let mut case = Case::new().status(status_connected());
    let mut proton =
        Fake::recorded(CONNECTED).fail("Get", ErrorClass::NotFound, "connection not found");
    let trace = reconcile(&mut case, &mut proton, now());
    assert_eq!(trace.path(), "WhoAmI Get Record Create FindOwned Settle");
    assert_eq!(trace.origin(), Some(Origin::Found));
    let s = &trace.settled().status;
    assert_eq!(s.id.as_deref(), Some(ID));
    assert_eq!(s.status, Some(CONNECTED));
    assert_eq!(s.create_sent_at, None);
    assert_eq!(cond_of(s, READY), ("True", "Connected"));

    // The next reconcile reads it back by its id, as before the NotFound.
    let trace = reconcile(&mut case, &mut proton, now());
    assert_eq!(trace.path(), "WhoAmI Get Settle");
    assert_eq!(proton.count("Create"), 1);

    // The search itself throttled, or the re-creation's Create (nothing searched yet): the
    // record of the re-creation's Create stays, so the resource deleted then searches before it
    // goes, finds the connection and deletes it.
    for (throttled, path) in [
        ("FindOwned", "WhoAmI Get Record Create FindOwned Report"),
        ("Create", "WhoAmI Get Record Create Report"),
    ] {
        let mut case = Case::new().status(status_connected());
        let mut proton = Fake::recorded(CONNECTED)
            .fail("Get", ErrorClass::NotFound, "connection not found")
            .throttle(throttled);
        let trace = reconcile(&mut case, &mut proton, now());
        assert_eq!(trace.path(), path);
        let r = trace.reported();
        assert_eq!(r.status.id, None, "{throttled}");
        assert!(
            r.status.create_sent_at.is_some(),
            "{throttled}: {:?}",
            r.status
        );
        case.status = r.status.clone();
        let mut case = case.deleting();
        let trace = reconcile(&mut case, &mut proton, now());
        assert_eq!(
            trace.path(),
            "WhoAmI FindOwned Delete RemoveFinalizer",
            "{throttled}"
        );
        assert!(
            proton.conn.is_none(),
            "{throttled}: deleted, not left behind"
        );
    }
}

/// The recorded connection vanished for real, and another resource's connection holds the
/// environment: the re-creation is refused. Once the window is over the report settles as
/// Stalled and stays so at every resync, with no search and no Event again (no flapping between
/// Stalled and Retrying).
#[test]
fn a_re_creation_blocked_by_another_connection_settles_stalled_and_stays_so() {
    let mut case = Case::new().status(status_connected());
    let mut proton = Fake::taken();
    let trace = reconcile(&mut case, &mut proton, now());
    assert_eq!(trace.path(), "WhoAmI Get Record Create FindOwned Report");
    assert_eq!(trace.reported().problem.retry, Retry::Backoff);
    let mut clock = later(now(), CREATE_SETTLE * 2 + secs(1));
    let trace = reconcile(&mut case, &mut proton, clock);
    assert_eq!(trace.path(), "WhoAmI Record Create FindOwned Report");
    assert_eq!(trace.reported().problem.retry, Retry::Terminal);
    assert_eq!(case.status.create_sent_at, None);
    let searches = proton.count("FindOwned");
    for resync in 0..2 {
        clock = later(clock, RESYNC);
        let trace = reconcile(&mut case, &mut proton, clock);
        assert_eq!(
            trace.path(),
            "WhoAmI Record Create Report",
            "resync {resync}"
        );
        let r = trace.reported();
        assert_eq!(r.problem.retry, Retry::Terminal, "resync {resync}");
        assert_eq!(r.event, None, "resync {resync}");
        assert_eq!(
            cond_of(&r.status, STALLED),
            ("True", "Conflict"),
            "resync {resync}"
        );
    }
    assert_eq!(proton.count("FindOwned"), searches);
}

/// Endpoints refuse a client token reused with other parameters differently: a Conflict, a
/// ValidationException (`Idempotent parameter mismatch`), or a code of their own. A replay
/// after a crash and a spec edit finds its connection by the uid tag whichever it is; a first
/// Create refused so reports it at once (nothing of this resource's can exist).
#[test]
fn a_replay_refused_as_invalid_or_with_an_unknown_code_looks_for_its_connection_first() {
    for (class, message) in [
        (ErrorClass::Validation, "Idempotent parameter mismatch"),
        (
            ErrorClass::Other,
            "IdempotentParameterMismatch: token reused",
        ),
    ] {
        let mut case = Case::new()
            .status(creating())
            .spec_with(|s| s.tags = tags(&[("team", "platform")]));
        let mut proton = Fake::recorded(CONNECTED).fail("Create", class, message);
        let trace = reconcile(&mut case, &mut proton, now());
        assert_eq!(
            trace.path(),
            "WhoAmI Create FindOwned Tag Settle",
            "{class:?}"
        );
        assert_eq!(trace.settled().status.id.as_deref(), Some(ID), "{class:?}");

        let mut proton = Fake::empty().fail("Create", class, message);
        let trace = reconcile(&mut Case::new(), &mut proton, now());
        assert_eq!(trace.path(), "WhoAmI Record Create Report", "{class:?}");
        assert_eq!(trace.reported().problem.reason, class.reason(), "{class:?}");
    }
}

/// The cluster was rebuilt from Git (or the resource restored without its status): a new uid,
/// and its Create meets the connection the resource of this name made before, which holds the
/// environment. It is not taken over; the report names it and says how to take it over.
#[test]
fn a_create_refused_for_a_namesakes_connection_names_it_and_takes_nothing_over() {
    let mut proton = Fake::taken();
    proton.tags = tags(&[
        (TAG_UID, OTHER_UID),
        (TAG_NAMESPACE, NAMESPACE),
        (TAG_NAME, NAME),
    ]);
    let tags_before = proton.tags.clone();
    let mut case = Case::new();
    let trace = reconcile(&mut case, &mut proton, now());
    assert_eq!(trace.path(), "WhoAmI Record Create FindOwned Report");
    let r = trace.reported();
    assert_eq!(
        (r.problem.reason, r.problem.retry),
        ("Conflict", Retry::Terminal)
    );
    let message = &r.problem.message;
    for part in [
        "someone-elses",
        OTHER_UID,
        "platform/prod-eu",
        "aws proton untag-resource --resource-arn arn:aws:proton:",
        "proton.eac.dev/adopt-id=someone-elses",
    ] {
        assert!(message.contains(part), "{part:?} in {message}");
    }
    assert_eq!(r.status.id, None);
    assert_eq!(r.status.create_sent_at, None);
    assert_eq!(proton.tags, tags_before, "nothing taken over");
    assert_eq!(proton.count("Tag") + proton.count("Update"), 0);
    assert_eq!(
        trace.reported().event.as_ref().map(|e| e.reason),
        Some("Conflict")
    );

    // Its retries (at the resync period) search no more for this generation: the report
    // stands, word for word, so nothing is announced again.
    let message = message.clone();
    let trace = reconcile(&mut case, &mut proton, later(now(), secs(600)));
    assert_eq!(trace.path(), "WhoAmI Record Create Report");
    assert_eq!(trace.reported().problem.message, message);
    assert_eq!(trace.reported().event, None);
    assert_eq!(proton.count("FindOwned"), 1);

    // Another resource's connection (another name) is not named.
    let trace = reconcile(&mut Case::new(), &mut Fake::taken(), now());
    assert!(!trace.reported().problem.message.contains("someone-elses"));
}

#[test]
fn a_replayed_create_blocked_by_another_connection_is_retried_within_the_window_then_terminal() {
    let message =
        "CreateEnvironmentAccountConnection: a connection already exists for this environment";
    // (name, how long the Create took to answer, retry, Stalled)
    #[rustfmt::skip]
    let table = [
        ("answered at once: ours may not be listed yet", secs(0), Retry::Backoff, "False"),
        ("answered after 2 x create_settle since create_sent_at", secs(100), Retry::Terminal, "True"),
    ];
    for (name, took, retry, stalled) in table {
        let mut case = Case::new().status(creating());
        let mut proton = Fake::taken();
        proton.slow = Some(("Create", took));
        let trace = reconcile(&mut case, &mut proton, now());
        assert_eq!(trace.path(), "WhoAmI Create FindOwned Report", "{name}");
        let r = trace.reported();
        let problem = Problem {
            reason: "Conflict",
            message: message.into(),
            retry,
        };
        assert_eq!(r.problem, problem, "{name}");
        assert_eq!(condition(&r.status, STALLED).status, stalled, "{name}");
        assert_eq!(
            r.status.id, None,
            "{name}: the other connection is not taken"
        );
        // Within the window ours may still show up: the record stays. After it, the search
        // found nothing of ours, so no Create of this resource made anything: the record goes
        // (and with it the intent annotation), and the resource may adopt.
        let recorded = r.status.create_sent_at.is_some();
        assert_eq!(recorded, retry == Retry::Backoff, "{name}");
    }
}

/// A resource that asks to adopt but carries a record of Creates (an intent restored with it, or
/// one of its own a crash left): once a Conflict's search proves those Creates made nothing, the
/// record goes and the adoption follows at once, not at the Conflict's retry (a minute, growing
/// to the resync period).
#[test]
fn a_resource_asking_to_adopt_adopts_at_once_once_its_record_of_creates_is_dropped() {
    for asks in [false, true] {
        let mut case = Case::new().status(creating());
        if asks {
            case = case.adopting();
        }
        // The environment is held by the connection to adopt, made out of band (untagged).
        let mut proton = Fake {
            token: Some(OTHER_UID.into()),
            ..Fake::with(adoptee(CONNECTED), Tags::new())
        };
        proton.slow = Some(("Create", secs(100)));
        let trace = reconcile(&mut case, &mut proton, now());
        assert_eq!(
            trace.path(),
            "WhoAmI Create FindOwned Report",
            "asks: {asks}"
        );
        let r = trace.reported();
        assert_eq!(r.problem.reason, "Conflict", "asks: {asks}");
        assert_eq!(
            r.status.create_sent_at, None,
            "asks: {asks}: the record goes"
        );
        let requeue = r.requeue;
        if !asks {
            assert!(requeue >= secs(45), "the Conflict's retry: {requeue:?}");
            continue;
        }
        assert!(requeue <= secs(2), "back at once to adopt: {requeue:?}");
        // After failures in a row (a drop that does not hold, say) it backs off as a passing
        // fault does, still before the Conflict's retry.
        let mut again = Case::new().status(creating()).adopting();
        again.failures = 3;
        let trace = reconcile(&mut again, &mut proton.clone(), now());
        assert_eq!(trace.path(), "WhoAmI Create FindOwned Report");
        let r = trace.reported();
        assert_eq!(
            (r.problem.reason, r.problem.retry),
            ("Conflict", Retry::Terminal)
        );
        assert_eq!(r.status.create_sent_at, None, "the record goes again");
        let backed_off = r.requeue;
        assert!(
            (secs(6)..=secs(10)).contains(&backed_off),
            "the fourth failure in a row: {backed_off:?}"
        );
        case.failures += 1;
        let trace = reconcile(&mut case, &mut proton, later(now(), secs(101)));
        assert_eq!(
            trace.settled().status.id.as_deref(),
            Some(ADOPT_ID),
            "{}",
            trace.path()
        );
        assert_eq!(proton.count("Create"), 1, "no Create after the drop");
    }
}

/// The window runs from the last Create that may have made something: a replay refused with a
/// conflict made nothing, so the retries do not keep the window open.
#[test]
fn a_replayed_create_blocked_by_another_connection_is_eventually_reported_stalled() {
    let mut case = Case::new().status(creating());
    let mut proton = Fake::taken();
    let mut clock = now();
    for attempt in 0..30 {
        let trace = reconcile(&mut case, &mut proton, clock);
        let r = trace.reported();
        if r.problem.retry == Retry::Terminal {
            assert_eq!(condition(&r.status, STALLED).status, "True");
            return;
        }
        assert_eq!(r.problem.reason, "Conflict", "attempt {attempt}");
        case.failures += 1;
        clock = later(clock, r.requeue);
    }
    panic!("still retrying with Backoff at {clock}, long after the window");
}

// ---------------------------------------------------------------------------------------------
// Guards: a change not applied, a reconcile that does not settle, a wrong answer
// ---------------------------------------------------------------------------------------------

#[test]
fn a_change_proton_accepts_but_does_not_apply_is_reported_not_applied_and_not_repeated() {
    let mut case = Case::new().status(status_connected()).new_role();
    let mut proton = Fake::recorded(CONNECTED);
    proton.on_update = |_, _| {};
    let trace = reconcile(&mut case, &mut proton, now());
    assert_eq!(trace.path(), "WhoAmI Get Update Report");
    assert_eq!(proton.count("Update"), 1, "sent once");
    let r = trace.reported();
    assert_eq!(
        (r.problem.reason, r.problem.retry),
        ("NotApplied", Retry::Terminal)
    );
    let message = &r.problem.message;
    let named = message.contains("UpdateEnvironmentAccountConnection (role ARNs)");
    assert!(named, "{message}");
    assert_eq!(cond_of(&r.status, STALLED), ("True", "NotApplied"));
}

#[test]
fn a_reconcile_that_never_settles_gives_up_after_max_steps() {
    // Every Update answers with another connection id and the old roles: each Update differs,
    // so the not-applied guard never fires.
    let mut case = Case::new().status(status_connected()).new_role();
    let mut proton = Fake::recorded(CONNECTED);
    proton.on_update = |c, _| c.id.push('+');
    let trace = reconcile(&mut case, &mut proton, now());
    assert_eq!(trace.steps.len(), MAX_STEPS + 1, "{}", trace.path());
    assert_eq!(proton.count("Update"), MAX_STEPS - 2);
    let r = trace.reported();
    assert_eq!(
        (r.problem.reason, r.problem.retry),
        ("Unsettled", Retry::Backoff)
    );
    assert!(r.problem.message.contains(&MAX_STEPS.to_string()));
}

#[test]
fn an_answer_of_the_wrong_kind_is_reported_not_trusted() {
    let connection = Outcome::Connection(conn(CONNECTED));
    let deleting = Case::new().status(creating()).deleting();
    // (name, case, step answered wrongly, the wrong answer, steps)
    #[rustfmt::skip]
    let table = [
        ("WhoAmI answered with tags", Case::new(), "WhoAmI", Outcome::Tags(Tags::new()), "WhoAmI Report"),
        ("Get answered Done", Case::new().status(status_connected()), "Get", Outcome::Done, "WhoAmI Get Report"),
        ("Create answered with a search", Case::new(), "Create", Outcome::Found(Owned::Nothing), "WhoAmI Record Create Report"),
        ("FindOwned answered with a bare connection", deleting, "FindOwned", connection, "WhoAmI FindOwned Report"),
    ];
    for (name, mut case, step, wrong, expected) in table {
        let mut proton = Fake::for_case(&case);
        proton.wrong = Some((step, wrong));
        let trace = reconcile(&mut case, &mut proton, now());
        assert_eq!(trace.path(), expected, "{name}");
        let r = trace.reported();
        let problem = (r.problem.reason, r.problem.retry);
        assert_eq!(problem, ("InternalError", Retry::Backoff), "{name}");
        let message = &r.problem.message;
        assert!(message.contains(step), "{name}: {message}");
        if step == "Create" {
            let in_flight = r.status.create_sent_at.clone();
            assert_eq!(
                in_flight,
                Some(now().to_string()),
                "{name}: may have been created"
            );
        }
    }
}

#[test]
fn only_proton_changes_count_as_mutations_and_only_final_steps_end_a_reconcile() {
    let settle = Step::Settle(Box::new(Settled {
        status: Status::default(),
        requeue: RESYNC,
        events: vec![],
    }));
    let report = Step::Report(Box::new(Reported {
        status: Status::default(),
        problem: Problem::terminal("AdoptionMismatch", "x"),
        event: None,
        requeue: RESYNC,
    }));
    let record = Step::Record(Box::new(Recorded {
        status: intent(1, now()),
        events: vec![],
        before_create: true,
    }));
    let update = Step::Update {
        id: ID.into(),
        roles: roles(Some(ROLE_2), None, None),
    };
    let tag = Step::Tag {
        arn: ARN.into(),
        tags: tags(&[("team", "platform")]),
    };
    // (step, mutation, AWS call, final)
    #[rustfmt::skip]
    let table = [
        (Step::AddFinalizer { intent: None }, false, false, false),
        (Step::ReadAdoptionPolicy, false, false, false),
        (record, false, false, false),
        (Step::WhoAmI, false, true, false),
        (Step::Get { id: ID.into() }, false, true, false),
        (find_step(), false, true, false),
        (Step::ListTags { arn: ARN.into() }, false, true, false),
        (create_step(&Case::new(), UID, 0, false), true, true, false),
        (update, true, true, false),
        (tag, true, true, false),
        (release_step(ARN), true, true, false),
        (Step::Delete { id: ID.into() }, true, true, false),
        (settle, false, false, true),
        (report, false, false, true),
        (Step::RemoveFinalizer, false, false, true),
        (Step::Idle { requeue: RESYNC }, false, false, true),
        (Step::Nothing, false, false, true),
    ];
    for (step, mutation, aws, last) in table {
        let kinds = (step.is_mutation(), step.is_aws(), step.is_final());
        assert_eq!(kinds, (mutation, aws, last), "{}", step.name());
    }
}

// ---------------------------------------------------------------------------------------------
// After Get: role drift, tags
// ---------------------------------------------------------------------------------------------

#[test]
fn after_get_the_next_step_depends_on_state_spec_change_and_role_drift() {
    for state in STATES {
        for spec_changed in [false, true] {
            for drift in [false, true] {
                let mut case = Case::new()
                    .status(recorded(state, 1))
                    .generation(if spec_changed { 2 } else { 1 });
                if drift {
                    case.spec.role_arn = Some(ROLE_2.into());
                }
                let trace = reconcile(&mut case, &mut Fake::recorded(state), now());
                let what = format!("{state:?} spec_changed={spec_changed} drift={drift}");
                let expected = match (state, drift, spec_changed) {
                    // A REJECTED connection accepts no change: it only settles.
                    (REJECTED, _, _) | (_, false, false) => "WhoAmI Get Settle",
                    (_, true, _) => "WhoAmI Get Update",
                    (_, false, true) => "WhoAmI Get ListTags",
                };
                assert_eq!(path(&trace.steps[..3]), expected, "{what}");
                assert_eq!(trace.steps[1], Step::Get { id: ID.into() }, "{what}");
                match &trace.steps[2] {
                    Step::Update { id, roles: r } => {
                        let wanted = roles(Some(ROLE_2), None, None);
                        assert_eq!((id.as_str(), r), (ID, &wanted), "{what}")
                    }
                    Step::ListTags { arn } => assert_eq!(arn, ARN, "{what}"),
                    _ => {}
                }
            }
        }
    }
}

#[test]
fn role_drift_is_corrected_with_the_spec_roles() {
    let r = roles;
    // (name, spec roles, Proton's roles, Update expected)
    #[rustfmt::skip]
    let table = [
        ("all equal", r(Some(ROLE), Some(CODEBUILD), Some(COMPONENT)), r(Some(ROLE), Some(CODEBUILD), Some(COMPONENT)), false),
        ("roleArn changed", r(Some(ROLE_2), None, None), r(Some(ROLE), None, None), true),
        ("roleArn unset in spec: Proton's kept", r(None, None, None), r(Some(ROLE), None, None), false),
        ("roleArn set in spec, none in Proton", r(Some(ROLE), None, None), r(None, None, None), true),
        ("codebuild added", r(Some(ROLE), Some(CODEBUILD), None), r(Some(ROLE), None, None), true),
        ("codebuild removed from the spec", r(Some(ROLE), None, None), r(Some(ROLE), Some(CODEBUILD), None), true),
        ("codebuild changed", r(Some(ROLE), Some(ROLE_2), None), r(Some(ROLE), Some(CODEBUILD), None), true),
        ("component added", r(Some(ROLE), None, Some(COMPONENT)), r(Some(ROLE), None, None), true),
        ("component removed from the spec", r(Some(ROLE), None, None), r(Some(ROLE), None, Some(COMPONENT)), true),
        ("roleArn unset, component removed", r(None, None, None), r(Some(ROLE), None, Some(COMPONENT)), true),
    ];
    for (name, wanted, actual, update) in table {
        for state in STATES {
            let mut case = Case::new().status(recorded(state, 1)).spec_with(|s| {
                s.role_arn = wanted.role_arn.clone();
                s.codebuild_role_arn = wanted.codebuild_role_arn.clone();
                s.component_role_arn = wanted.component_role_arn.clone();
            });
            let mut proton = Fake::recorded(state);
            proton.conn.as_mut().unwrap().roles = actual.clone();
            let trace = reconcile(&mut case, &mut proton, now());
            if update && state != REJECTED {
                assert_eq!(
                    trace.path(),
                    "WhoAmI Get Update Settle",
                    "{name} ({state:?})"
                );
                let step = Step::Update {
                    id: ID.into(),
                    roles: wanted.clone(),
                };
                assert_eq!(trace.steps[2], step, "{name} ({state:?})");
            } else {
                assert_eq!(trace.path(), "WhoAmI Get Settle", "{name} ({state:?})");
            }
        }
    }
}

#[test]
fn a_role_update_is_followed_by_settle_with_the_new_roles() {
    let mut case = Case::new().status(status_connected()).new_role();
    let trace = reconcile(&mut case, &mut Fake::recorded(CONNECTED), now());
    assert_eq!(trace.path(), "WhoAmI Get Update ListTags Settle");
    let note = format!(
        "updated the role ARNs of connection {ID}: roleArn={ROLE_2}, codebuildRoleArn=-, componentRoleArn=-"
    );
    assert_eq!(trace.notes, [Note::normal("Updated", note)]);
    let s = &trace.settled().status;
    assert_eq!(s.role_arn.as_deref(), Some(ROLE_2));
    assert_eq!(s.last_modified_at.as_deref(), Some(UPDATED_AT));
    assert_eq!(s.observed_generation, Some(2));
}

#[test]
fn an_idle_resource_costs_one_get_per_resync() {
    for state in STATES {
        let mut case = Case::new().status(recorded(state, 1));
        let mut proton = Fake::recorded(state);
        let trace = reconcile(&mut case, &mut proton, now());
        assert_eq!(trace.path(), "WhoAmI Get Settle", "{state:?}");
        // WhoAmI is answered from the controller's cache: one Proton call.
        assert_eq!(proton.calls, ["WhoAmI", "Get"], "{state:?}");
        assert_eq!(trace.notes, [], "{state:?}");
    }
}

#[test]
fn a_new_generation_lists_tags_then_tags_and_untags_only_what_differs() {
    let mut status = status_connected();
    status.applied_tag_keys = vec!["cost-center".into(), "gone-already".into(), "team".into()];
    let mut case = Case::new().status(status).generation(2).spec_with(|s| {
        s.tags = tags(&[("team", "platform"), ("env", "prod"), ("unchanged", "yes")])
    });
    let on_connection = [
        ("team", "payments"),
        ("cost-center", "42"),
        ("unchanged", "yes"),
    ];
    let mut on_connection = with_ownership(&on_connection);
    on_connection.insert("owner-oob".into(), "alice".into());
    let mut proton = Fake::with(conn(CONNECTED), on_connection);
    let trace = reconcile(&mut case, &mut proton, now());
    assert_eq!(trace.path(), "WhoAmI Get ListTags Tag Untag Settle");
    assert_eq!(trace.steps[2], Step::ListTags { arn: ARN.into() });
    let tag = Step::Tag {
        arn: ARN.into(),
        tags: tags(&[("team", "platform"), ("env", "prod")]),
    };
    assert_eq!(trace.steps[3], tag, "only the missing or different pairs");
    let untag = Step::Untag {
        arn: ARN.into(),
        keys: vec!["cost-center".into()],
        retain: false,
    };
    assert_eq!(
        trace.steps[4], untag,
        "applied before, gone from the spec, still there"
    );
    let applied = &trace.settled().status.applied_tag_keys;
    assert_eq!(applied, &["env", "team", "unchanged"]);
    let expected = [
        ("team", "platform"),
        ("env", "prod"),
        ("unchanged", "yes"),
        ("owner-oob", "alice"),
    ];
    assert_eq!(
        proton.tags,
        with_ownership(&expected),
        "the out-of-band tag is still there"
    );

    // The next reconcile is idle again.
    let trace = reconcile(&mut case, &mut proton, now());
    assert_eq!(trace.path(), "WhoAmI Get Settle");
}

/// Keys renamed on a connection near Proton's 50 tags: adding the new ones first would pass the
/// limit (the TagResource refused, for a spec the CRD accepts), so the old ones go first. Away
/// from the limit the order stays: tags added, then removed.
#[test]
fn renamed_tag_keys_near_the_limit_are_removed_before_the_new_ones_are_added() {
    let old: Vec<(String, String)> = (0..40).map(|i| (format!("k{i:02}"), "v".into())).collect();
    let renamed: Vec<(String, String)> = (0..40)
        .map(|i| match i {
            0..10 => (format!("new{i:02}"), "v".into()),
            _ => (format!("k{i:02}"), "v".into()),
        })
        .collect();
    let as_tags = |pairs: &[(String, String)]| -> Tags { pairs.iter().cloned().collect() };
    let mut status = status_connected();
    status.applied_tag_keys = old.iter().map(|(k, _)| k.clone()).collect();
    let mut case = Case::new()
        .status(status)
        .generation(2)
        .spec_with(|s| s.tags = as_tags(&renamed));
    let on_connection: Vec<(&str, &str)> =
        old.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut proton = Fake::with(conn(CONNECTED), with_ownership(&on_connection));
    assert_eq!(proton.tags.len(), 43);
    let trace = reconcile(&mut case, &mut proton, now());
    assert_eq!(trace.path(), "WhoAmI Get ListTags Untag Tag Settle");
    let mut expected = as_tags(&renamed);
    expected.extend(ownership_tags(&case.res()));
    assert_eq!(proton.tags, expected);
    assert_eq!(cond_of(&case.status, SYNCED), ("True", "ReconcileSuccess"));

    // Three keys renamed on 40: 46 at most, the usual order.
    let mut status = status_connected();
    status.applied_tag_keys = old.iter().map(|(k, _)| k.clone()).collect();
    let few: Vec<(String, String)> = (0..40)
        .map(|i| match i {
            0..3 => (format!("new{i:02}"), "v".into()),
            _ => (format!("k{i:02}"), "v".into()),
        })
        .collect();
    let mut case = Case::new()
        .status(status)
        .generation(2)
        .spec_with(|s| s.tags = as_tags(&few));
    let mut proton = Fake::with(conn(CONNECTED), with_ownership(&on_connection));
    let trace = reconcile(&mut case, &mut proton, now());
    assert_eq!(trace.path(), "WhoAmI Get ListTags Tag Untag Settle");
}

#[test]
fn tag_differences_are_computed_against_spec_ownership_and_applied_keys() {
    let untag = |keys: &[&str]| {
        let keys = keys.iter().map(|k| k.to_string()).collect();
        Some(Step::Untag {
            arn: ARN.into(),
            keys,
            retain: false,
        })
    };
    let tag = |pairs: &[(&str, &str)]| {
        Some(Step::Tag {
            arn: ARN.into(),
            tags: tags(pairs),
        })
    };
    let mine = with_ownership;
    let team = &[("team", "payments")][..];
    // (name, spec tags, applied keys on record, tags on the connection, step after ListTags
    // or None to settle)
    #[rustfmt::skip]
    let table = [
        ("in sync", tags(team), vec!["team"], mine(team), None),
        ("value changed", tags(&[("team", "platform")]), vec!["team"], mine(team), tag(&[("team", "platform")])),
        ("key added", tags(&[("team", "payments"), ("env", "prod")]), vec!["team"], mine(team), tag(&[("env", "prod")])),
        ("ownership tags removed out of band are put back", tags(team), vec!["team"],
            tags(&[("team", "payments"), (TAG_NAME, NAME)]), tag(&[(TAG_UID, UID), (TAG_NAMESPACE, NAMESPACE)])),
        ("applied key left the spec", tags(&[]), vec!["team"], mine(team), untag(&["team"])),
        ("applied key left the spec, already off the connection", tags(&[]), vec!["team"], ownership(), None),
        ("out-of-band tag never in the spec is left alone", tags(team), vec!["team"],
            mine(&[("team", "payments"), ("owner-oob", "alice")]), None),
        ("only the applied key that left the spec is removed", tags(team), vec!["team", "env"],
            mine(&[("team", "payments"), ("env", "prod")]), untag(&["env"])),
        ("missing tags come before removals", tags(&[("env", "prod")]), vec!["team"], mine(team), tag(&[("env", "prod")])),
    ];
    for (name, spec_tags, applied, on_connection, expected) in table {
        let mut status = status_connected();
        status.applied_tag_keys = applied.iter().map(|k| k.to_string()).collect();
        let mut case = Case::new()
            .status(status)
            .generation(2)
            .spec_with(|s| s.tags = spec_tags.clone());
        let mut proton = Fake::with(conn(CONNECTED), on_connection);
        let trace = reconcile(&mut case, &mut proton, now());
        assert_eq!(trace.steps[2], Step::ListTags { arn: ARN.into() }, "{name}");
        match expected {
            Some(step) => assert_eq!(trace.steps[3], step, "{name}"),
            None => {
                assert_eq!(trace.path(), "WhoAmI Get ListTags Settle", "{name}");
                let spec_keys: Vec<String> = spec_tags.keys().cloned().collect();
                assert_eq!(trace.settled().status.applied_tag_keys, spec_keys, "{name}");
            }
        }
    }
}

#[test]
fn tags_are_not_managed_on_a_rejected_connection() {
    let mut status = status_rejected();
    status.applied_tag_keys = vec!["team".into(), "old".into()];
    let mut case = Case::new()
        .status(status)
        .generation(2)
        .spec_with(|s| s.tags = tags(&[("env", "prod")]));
    let trace = reconcile(&mut case, &mut Fake::recorded(REJECTED), now());
    assert_eq!(trace.path(), "WhoAmI Get Settle");
    let applied = &trace.settled().status.applied_tag_keys;
    assert_eq!(applied, &["team", "old"], "kept as they were");
}

// ---------------------------------------------------------------------------------------------
// Adoption
// ---------------------------------------------------------------------------------------------

#[test]
fn adoption_follows_the_controller_policy_and_the_namespace_opt_in() {
    use AdoptionPolicy::{Disabled, Everywhere, NamespaceOptIn};
    let not_labelled = "a cluster admin has not allowed adoption in namespace platform (label proton.eac.dev/adoption=allowed)";
    let disabled = "adoption is disabled on this controller (--adoption disabled)";
    let adopting = "WhoAmI Get ListTags Tag Settle";
    let labelled = format!("ReadAdoptionPolicy {adopting}");
    // (name, policy, namespace labelled, expected steps, refusal)
    #[rustfmt::skip]
    let table = [
        ("opt-in, namespace not labelled", NamespaceOptIn, false, "ReadAdoptionPolicy Report", Some(not_labelled)),
        ("opt-in, namespace labelled", NamespaceOptIn, true, labelled.as_str(), None),
        ("everywhere: the label is not read", Everywhere, false, adopting, None),
        ("disabled, whatever the label", Disabled, true, "Report", Some(disabled)),
    ];
    for (name, policy, label, expected, refusal) in table {
        let mut case = Case::new()
            .adopt(ADOPT_ID)
            .settings_with(|s| s.adoption = policy);
        case.namespace_allows_adoption = label;
        let mut proton = Fake::with(adoptee(CONNECTED), Tags::new());
        let trace = reconcile(&mut case, &mut proton, now());
        assert_eq!(trace.path(), expected, "{name}");
        let Some(refusal) = refusal else {
            let get = Step::Get {
                id: ADOPT_ID.into(),
            };
            assert_eq!(trace.step("Get"), &get, "{name}");
            assert_eq!(
                trace.settled().status.id.as_deref(),
                Some(ADOPT_ID),
                "{name}"
            );
            continue;
        };
        assert_eq!(proton.calls, Vec::<&str>::new(), "{name}: not even a Get");
        let r = trace.reported();
        assert_eq!(r.problem.reason, "AdoptionNotAllowed", "{name}");
        assert!(
            r.problem.message.contains(refusal),
            "{name}: {}",
            r.problem.message
        );
        let stalled = cond_of(&r.status, STALLED);
        assert_eq!(stalled, ("True", "AdoptionNotAllowed"), "{name}");
    }
}

#[test]
fn adoption_checks_environment_management_account_and_owner() {
    let connected = adoptee(CONNECTED);
    let other_env = Connection {
        environment_name: "staging".into(),
        ..connected.clone()
    };
    let other_mgmt = Connection {
        management_account_id: "999988887777".into(),
        ..connected.clone()
    };
    let both = Connection {
        environment_name: "staging".into(),
        ..other_mgmt.clone()
    };
    // Readable as its management account, but another account's connection.
    let other_owner = Connection {
        environment_account_id: "777788889999".into(),
        ..connected.clone()
    };
    let foreign = tags(&[(TAG_UID, OTHER_UID), ("team", "payments")]);
    let none = Tags::new;
    let env = "environmentName is \"staging\" in Proton but \"prod-eu\" in the spec";
    let mgmt = "managementAccountId is \"999988887777\" in Proton but \"111122223333\" in the spec";
    let owner = "owned by another resource (tag proton.eac.dev/uid=another-uid)";
    let account = "its environment account is \"777788889999\" in Proton, but the credentials here act as account \"444455556666\"";
    let mismatch = |fragments: &[&'static str]| Some(("AdoptionMismatch", fragments.to_vec()));
    // (name, the connection the annotation names, its tags, problem (reason, fragments) or
    // None to settle)
    #[rustfmt::skip]
    let table = [
        ("environment differs", Some(other_env), none(), mismatch(&[env])),
        ("management account differs", Some(other_mgmt), none(), mismatch(&[mgmt])),
        ("both differ", Some(both), none(), mismatch(&[env, mgmt])),
        ("environment account differs", Some(other_owner), none(), mismatch(&[account])),
        ("owned by another resource", Some(connected.clone()), foreign.clone(), mismatch(&[owner])),
        ("owned by another resource, REJECTED", Some(adoptee(REJECTED)), foreign, mismatch(&[owner])),
        ("does not exist", None, none(), Some(("AdoptionNotFound", vec!["does not exist"]))),
        ("matches, untagged", Some(connected.clone()), tags(&[("team", "payments")]), None),
        ("matches, owned by this resource", Some(connected), with_ownership(&[]), None),
    ];
    for (name, connection, on_connection, expected) in table {
        let mut case = Case::new().adopting();
        let mut proton = match connection {
            Some(c) => Fake::with(c, on_connection),
            None => Fake::empty(),
        };
        let trace = reconcile(&mut case, &mut proton, now());
        let Some((reason, fragments)) = expected else {
            assert_eq!(
                trace.settled().status.id.as_deref(),
                Some(ADOPT_ID),
                "{name}"
            );
            continue;
        };
        let r = trace.reported();
        assert_eq!(
            (r.problem.reason, r.problem.retry),
            (reason, Retry::Terminal),
            "{name}"
        );
        let message = &r.problem.message;
        for fragment in [ADOPT_ID].iter().chain(&fragments) {
            assert!(
                message.contains(fragment),
                "{name}: {message:?} lacks {fragment:?}"
            );
        }
        let changed = trace.steps.iter().any(Step::is_mutation);
        assert!(!changed, "{name}: nothing changed");
        assert_eq!(r.status.id, None, "{name}: not recorded");
        assert_eq!(cond_of(&r.status, READY), ("False", reason), "{name}");
    }
}

#[test]
fn an_adopted_connection_is_tagged_as_ours_and_reported_once() {
    let mut case = Case::new().adopting();
    let mut proton = Fake::with(adoptee(CONNECTED), tags(&[("legacy", "x")]));
    let trace = reconcile(&mut case, &mut proton, now());
    assert_eq!(trace.path(), "WhoAmI Get ListTags Tag Settle");
    let tag = Step::Tag {
        arn: adoptee(CONNECTED).arn,
        tags: with_ownership(&[("team", "payments")]),
    };
    assert_eq!(trace.steps[3], tag);
    assert_eq!(trace.origin(), Some(Origin::Adopted));
    let first = trace.settled();
    assert_eq!(first.status.id.as_deref(), Some(ADOPT_ID));
    assert_eq!(first.status.status, Some(CONNECTED));
    let events = [
        Note::normal("Adopted", format!("adopted existing connection {ADOPT_ID}")),
        Note::normal("Connected", format!("connection {ADOPT_ID} is CONNECTED")),
    ];
    assert_eq!(first.events, events);
    let legacy = proton.tags.get("legacy").map(String::as_str);
    assert_eq!(legacy, Some("x"), "out-of-band tag kept");

    // Later reconciles read it back by the recorded id: no second Adopted, no ListTags.
    let trace = reconcile(&mut case, &mut proton, now());
    assert_eq!(trace.path(), "WhoAmI Get Settle");
    assert_eq!(trace.origin(), Some(Origin::Recorded));
    assert_eq!(trace.settled().events, []);
}

#[test]
fn adoption_checks_the_owner_tag_before_changing_anything() {
    // Roles differ from the spec, and the connection belongs to another resource: its tags are
    // read (and the uid tag checked) before any Update.
    for state in STATES {
        let mut case = Case::new()
            .adopting()
            .spec_with(|s| s.codebuild_role_arn = Some(CODEBUILD.into()));
        let mut proton = Fake::with(adoptee(state), tags(&[(TAG_UID, OTHER_UID)]));
        let trace = reconcile(&mut case, &mut proton, now());
        assert_eq!(trace.path(), "WhoAmI Get ListTags Report", "{state:?}");
        let reason = trace.reported().problem.reason;
        assert_eq!(reason, "AdoptionMismatch", "{state:?}");
        assert_eq!(proton.count("Update"), 0, "{state:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// Settle: status, conditions, requeue, events
// ---------------------------------------------------------------------------------------------

#[test]
fn settle_records_every_status_field() {
    let mut case = Case::new()
        .status(status_pending())
        .spec_with(|s| s.codebuild_role_arn = Some(CODEBUILD.into()));
    let mut c = conn(CONNECTED);
    c.roles = roles(Some(ROLE), Some(CODEBUILD), None);
    c.last_modified_at = "2026-11-21T10:07:00Z".into();
    let mut proton = Fake::with(c, with_ownership(&[("team", "payments")]));
    let trace = reconcile(&mut case, &mut proton, now());
    let connected = format!("connection {ID} is CONNECTED");
    let expected = Status {
        observed_generation: Some(1),
        id: Some(ID.into()),
        arn: Some(ARN.into()),
        status: Some(CONNECTED),
        environment_account_id: Some(ENV_ACCOUNT.into()),
        region: Some(DEFAULT_REGION.into()),
        create_sent_at: None,
        requested_at: Some(REQUESTED_AT.into()),
        last_modified_at: Some("2026-11-21T10:07:00Z".into()),
        role_arn: Some(ROLE.into()),
        codebuild_role_arn: Some(CODEBUILD.into()),
        component_role_arn: None,
        applied_tag_keys: vec!["team".into()],
        recreations: 0,
        conditions: vec![
            cond(READY, true, "Connected", &connected, 1, now()),
            cond(
                SYNCED,
                true,
                "ReconcileSuccess",
                "the spec is applied in Proton",
                1,
                t0(),
            ),
            cond(STALLED, false, "Reconciled", "", 1, t0()),
        ],
    };
    assert_eq!(trace.settled().status, expected);
    assert_eq!(trace.settled().requeue, RESYNC);
}

#[test]
fn conditions_follow_the_connection_state() {
    let waiting = "waiting for management account 111122223333 to accept it";
    let rejected = "management account 111122223333 rejected connection";
    // (state, Ready, Ready reason, Stalled, Stalled reason, message fragment)
    #[rustfmt::skip]
    let table = [
        (PENDING, "False", "Pending", "False", "Reconciled", waiting),
        (CONNECTED, "True", "Connected", "False", "Reconciled", "is CONNECTED"),
        (REJECTED, "False", "Rejected", "True", "Rejected", rejected),
    ];
    for (state, ready, ready_reason, stalled, stalled_reason, fragment) in table {
        for before in Before::ALL {
            for generation in [1, 2] {
                let mut case = Case::new().status(before.status()).generation(generation);
                let trace = reconcile(&mut case, &mut Fake::for_before(before, state), now());
                let s = &trace.settled().status;
                let what = format!("{state:?} before={before:?} generation={generation}");
                let id = s.id.clone().unwrap_or_default();
                assert_eq!(s.status, Some(state), "{what}");
                assert_eq!(s.observed_generation, Some(generation), "{what}");
                let types: Vec<&str> = s.conditions.iter().map(|c| c.type_.as_str()).collect();
                assert_eq!(types, [READY, SYNCED, STALLED], "{what}");
                assert_eq!(cond_of(s, READY), (ready, ready_reason), "{what}");
                let message = &condition(s, READY).message;
                let says = message.contains(fragment) && message.contains(&id);
                assert!(says, "{what}: {message}");
                assert_eq!(cond_of(s, STALLED), (stalled, stalled_reason), "{what}");
                assert_eq!(cond_of(s, SYNCED), ("True", "ReconcileSuccess"), "{what}");
                for c in &s.conditions {
                    assert_eq!(
                        c.observed_generation,
                        Some(generation),
                        "{what}: {}",
                        c.type_
                    );
                }
            }
        }
    }
}

#[test]
fn transition_times_are_kept_while_a_condition_does_not_flip() {
    let times = |before: Status, state, when| {
        let mut case = Case::new().status(before);
        let trace = reconcile(&mut case, &mut Fake::recorded(state), when);
        let s = trace.settled().status.clone();
        [READY, SYNCED, STALLED].map(|t| condition(&s, t).last_transition_time.clone())
    };
    // Recorded PENDING at t0; now CONNECTED: Ready flips (now), Synced/Stalled keep t0.
    let flipped = times(status_pending(), CONNECTED, now());
    assert_eq!(flipped, [Time(now()), Time(t0()), Time(t0())]);
    // Recorded CONNECTED, now REJECTED: Ready and Stalled flip.
    let flipped = times(status_connected(), REJECTED, now());
    assert_eq!(flipped, [Time(now()), Time(t0()), Time(now())]);
    // Sub-second clocks are cut to whole seconds, as the API server would store them.
    let fractional = now().checked_add(jiff::SignedDuration::from_millis(750));
    let flipped = times(status_pending(), CONNECTED, fractional.unwrap());
    assert_eq!(flipped, [Time(now()), Time(t0()), Time(t0())]);
}

#[test]
fn settling_twice_in_the_same_state_yields_the_recorded_status_and_no_events() {
    for state in STATES {
        let mut case = Case::new();
        let mut proton = Fake::empty().state(state);
        let first = reconcile(&mut case, &mut proton, now()).settled().clone();

        let trace = reconcile(&mut case, &mut proton, at(4200));
        assert_eq!(trace.path(), "WhoAmI Get Settle", "{state:?}");
        let second = trace.settled();
        assert_eq!(
            second.status, first.status,
            "{state:?}: the controller writes nothing"
        );
        assert_eq!(second.events, [], "{state:?}");
    }
}

#[test]
fn requeue_is_the_resync_period_except_for_pending_which_starts_fast_and_backs_off_with_age() {
    // (state, requested_at, seconds after 10:00:00, resync, expected requeue)
    #[rustfmt::skip]
    let table = [
        // A new PENDING connection is polled every 2 s, so an acceptance shows at once...
        (PENDING, REQUESTED_AT, 0, RESYNC, secs(2)),
        (PENDING, REQUESTED_AT, 20, RESYNC, secs(2)),
        // ...then every tenth of its age...
        (PENDING, REQUESTED_AT, 100, RESYNC, secs(10)),
        // ...up to --pending-poll.
        (PENDING, REQUESTED_AT, 300, RESYNC, PENDING_POLL),
        (PENDING, REQUESTED_AT, 3000, RESYNC, PENDING_POLL),
        (PENDING, REQUESTED_AT, 86_400, RESYNC, PENDING_POLL),
        // Clock skew: a request "in the future" is young.
        (PENDING, "2026-11-21T11:00:00Z", 0, RESYNC, secs(2)),
        // An unreadable timestamp is treated as young.
        (PENDING, "not a time", 86_400, RESYNC, secs(2)),
        // Never slower than the resync period (a drift is found as soon as resync says).
        (PENDING, REQUESTED_AT, 86_400, secs(10), secs(10)),
        (PENDING, REQUESTED_AT, 0, secs(1), secs(1)),
        (CONNECTED, REQUESTED_AT, 0, RESYNC, RESYNC),
        (CONNECTED, REQUESTED_AT, 86_400, RESYNC, RESYNC),
        (REJECTED, REQUESTED_AT, 0, RESYNC, RESYNC),
    ];
    for (state, requested_at, after, resync, expected) in table {
        let mut case = Case::new()
            .status(recorded(state, 1))
            .settings_with(|s| s.resync = resync);
        let mut proton = Fake::recorded(state);
        proton.conn.as_mut().unwrap().requested_at = requested_at.into();
        let requeue = reconcile(&mut case, &mut proton, at(after))
            .settled()
            .requeue;
        let what = format!("{state:?} requested {requested_at}, {after}s later, resync {resync:?}");
        assert_eq!(requeue, expected, "{what}");
    }

    // Backing off is monotonic and bounded.
    let mut last = Duration::ZERO;
    for after in (0..20_000).step_by(250) {
        let mut case = Case::new().status(status_pending());
        let requeue = reconcile(&mut case, &mut Fake::recorded(PENDING), at(after))
            .settled()
            .requeue;
        let bounded = requeue >= last && requeue >= secs(2) && requeue <= PENDING_POLL;
        assert!(bounded, "{after}s: {requeue:?}");
        last = requeue;
    }
    assert_eq!(last, PENDING_POLL);

    // Every interval is jittered by +/-10 %.
    for (jitter, expected) in [(0.0, 540), (0.5, 600), (0.99, 658)] {
        let mut case = Case::new().status(status_connected());
        case.jitter = jitter;
        let mut proton = Fake::recorded(CONNECTED);
        let requeue = reconcile(&mut case, &mut proton, now()).settled().requeue;
        assert_eq!(requeue.as_secs(), expected, "jitter {jitter}");
    }
}

#[test]
fn events_announce_state_transitions_once() {
    use Before as B;
    let (connected, rejected) = (("Connected", false), ("Rejected", true));
    let adopted = ("Adopted", false);
    // (name, status before, adopted, state now, the Events (reason, warning))
    #[rustfmt::skip]
    let table = [
        ("created PENDING", B::NoStatus, false, PENDING, vec![]),
        ("created and accepted at once", B::NoStatus, false, CONNECTED, vec![connected]),
        ("a replayed Create finds it CONNECTED", B::Creating, false, CONNECTED, vec![connected]),
        ("still PENDING", B::Pending, false, PENDING, vec![]),
        ("PENDING -> CONNECTED", B::Pending, false, CONNECTED, vec![connected]),
        ("PENDING -> REJECTED", B::Pending, false, REJECTED, vec![rejected]),
        ("still CONNECTED", B::Connected, false, CONNECTED, vec![]),
        ("still REJECTED", B::Rejected, false, REJECTED, vec![]),
        ("adopted PENDING", B::NoStatus, true, PENDING, vec![adopted]),
        ("adopted CONNECTED", B::NoStatus, true, CONNECTED, vec![adopted, connected]),
        ("adopted REJECTED", B::NoStatus, true, REJECTED, vec![adopted, rejected]),
    ];
    for (name, before, adopt, state, expected) in table {
        let mut case = Case::new().status(before.status());
        let mut proton = Fake::for_before(before, state);
        if adopt {
            case = case.adopting();
            proton = Fake::with(adoptee(state), with_ownership(&[("team", "payments")]));
        }
        let trace = reconcile(&mut case, &mut proton, now());
        let settled = trace.settled();
        let got: Vec<_> = settled
            .events
            .iter()
            .map(|n| (n.reason, n.warning))
            .collect();
        assert_eq!(got, expected, "{name}");
        let id = settled.status.id.clone().unwrap();
        for n in &settled.events {
            assert!(n.note.contains(&id), "{name}: {}", n.note);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Errors: status, news, retry
// ---------------------------------------------------------------------------------------------

/// (class, AWS message, condition reason)
#[rustfmt::skip]
fn error_table() -> Vec<(ErrorClass, &'static str, &'static str)> {
    vec![
        (ErrorClass::Throttled, "Rate exceeded", "Throttled"),
        (ErrorClass::Transient, "Internal failure", "AwsServerError"),
        (ErrorClass::Unanswered, "could not reach Proton: connection refused", "AwsUnavailable"),
        (ErrorClass::AccessDenied, "User is not authorized to perform this action", "AccessDenied"),
        (ErrorClass::Validation, "roleArn is not a valid ARN", "InvalidSpec"),
        (ErrorClass::QuotaExceeded, "Too many environment account connections", "QuotaExceeded"),
        (ErrorClass::Conflict, "Connection is being deleted", "Conflict"),
        (ErrorClass::NotFound, "Environment prod-eu not found", "NotFound"),
        (ErrorClass::Unsupported, "Unknown operation", "UnsupportedByEndpoint"),
        (ErrorClass::Other, "Something odd", "AwsError"),
    ]
}

#[test]
fn each_error_class_is_reported_in_the_conditions_with_the_aws_message() {
    for (class, message, reason) in error_table() {
        for before in Before::ALL {
            // A resource without a connection fails on its first Create, one with a connection
            // on the Get. (A NotFound on the Get means the connection vanished: tested above;
            // a replayed Create is tested with the conflicts.)
            if before == Before::Creating || (before.has_id() && class == ErrorClass::NotFound) {
                continue;
            }
            let failing = if before.has_id() { "Get" } else { "Create" };
            let mut case = Case::new().status(before.status());
            let mut proton = Fake::for_before(before, CONNECTED).fail(failing, class, message);
            let trace = reconcile(&mut case, &mut proton, now());
            let what = format!("{class:?} on {failing}, before={before:?}");
            let r = trace.reported();
            let full = format!("{}: {message}", operation(trace.step(failing)));
            let retry = class.retry();
            let problem = Problem {
                reason,
                message: full.clone(),
                retry,
            };
            assert_eq!(r.problem, problem, "{what}");
            assert_eq!(
                r.event,
                Some(Note::warning(reason, full.clone())),
                "{what}: news"
            );
            assert_eq!(
                r.requeue,
                retry_after(retry, 1, settings().resync, JITTER),
                "{what}"
            );

            let s = &r.status;
            assert_eq!(s.observed_generation, Some(1), "{what}");
            assert_eq!(s.id, before.status().id, "{what}: record kept");
            assert_eq!(s.status, before.status().status, "{what}: record kept");
            assert_eq!(cond_of(s, SYNCED), ("False", reason), "{what}");
            assert_eq!(condition(s, SYNCED).message, full, "{what}");
            if retry != Retry::Backoff {
                assert_eq!(cond_of(s, STALLED), ("True", reason), "{what}");
                assert_eq!(cond_of(s, READY), ("False", reason), "{what}");
                assert_eq!(condition(s, READY).message, full, "{what}");
            } else {
                assert_eq!(cond_of(s, STALLED), ("False", "Retrying"), "{what}");
                // A passing fault says nothing about the connection: Ready stays as it was
                // (for a new resource, as the intent left it).
                let was = match before.has_id() {
                    true => before.status(),
                    false => intent(1, now()),
                };
                assert_eq!(
                    condition(s, READY),
                    condition(&was, READY),
                    "{what}: Ready kept"
                );
            }
        }
    }
}

#[test]
fn a_first_create_refused_outright_is_no_longer_recorded_as_in_flight() {
    // (class, proves that nothing was created)
    #[rustfmt::skip]
    let table = [
        (ErrorClass::Throttled, true),
        (ErrorClass::AccessDenied, true),
        (ErrorClass::Validation, true),
        (ErrorClass::QuotaExceeded, true),
        (ErrorClass::Conflict, true),
        (ErrorClass::Unsupported, true),
        (ErrorClass::Transient, false),
        (ErrorClass::Unanswered, false),
        (ErrorClass::Other, false),
        (ErrorClass::NotFound, false),
    ];
    for (class, refused) in table {
        let mut case = Case::new();
        let trace = reconcile(
            &mut case,
            &mut Fake::empty().fail("Create", class, "no"),
            now(),
        );
        let s = &trace.reported().status;
        let expected = (!refused).then(|| now().to_string());
        assert_eq!(s.create_sent_at, expected, "{class:?}");
        assert_eq!(
            s.region.as_deref(),
            Some(DEFAULT_REGION),
            "{class:?}: still pinned"
        );
        // So deleting it needs no search when nothing can exist.
        let release = match refused {
            true => vec![Step::RemoveFinalizer],
            false => vec![Step::WhoAmI, find_step()],
        };
        assert_eq!(first_steps(&case.clone().deleting()), release, "{class:?}");

        // A replay: the Create whose answer never came may still have made the connection, so
        // the record goes back to it; a stale intent rewritten for this Create goes back too if
        // the Create was refused, and stays rewritten if it may have made something.
        // (A replay refused as invalid is searched for, a token reused with other parameters,
        // but keeps its record whatever the search finds: that refusal proves a connection was
        // made with the token once.)
        if class != ErrorClass::Conflict {
            let stale = if refused { at(0) } else { now() };
            for (sent, kept) in [(at(570), Some(at(570))), (at(0), Some(stale))] {
                let mut case = Case::new().status(intent(1, sent));
                let mut proton = Fake::empty().fail("Create", class, "no");
                let trace = reconcile(&mut case, &mut proton, now());
                let in_flight = trace.reported().status.create_sent_at.clone();
                assert_eq!(
                    in_flight,
                    kept.map(|t| t.to_string()),
                    "{class:?}, replay sent {sent}"
                );
            }
        }
    }
}

/// A SerializationException is an endpoint short of a call (terminal, `UnsupportedByEndpoint`),
/// but unlike an operation it does not know it does not prove the Create made nothing: a server
/// of the awsJson protocol answers it also for an answer it could not write, after it acted. The
/// Create stays recorded as in flight, and deleting the resource searches for it.
#[test]
fn a_create_answered_serialization_exception_may_have_made_its_connection() {
    for (code, in_flight) in [
        ("SerializationException", true),
        ("UnknownOperationException", false),
    ] {
        let mut case = Case::new();
        let mut proton = Fake::empty();
        proton.answered.push((
            "Create",
            ProtonError {
                operation: "CreateEnvironmentAccountConnection",
                class: ErrorClass::Unsupported,
                code: code.into(),
                message: "no".into(),
                retry_in: None,
            },
        ));
        let trace = reconcile(&mut case, &mut proton, now());
        let s = &trace.reported().status;
        assert_eq!(
            cond_of(s, STALLED),
            ("True", "UnsupportedByEndpoint"),
            "{code}"
        );
        assert_eq!(
            s.create_sent_at,
            in_flight.then(|| now().to_string()),
            "{code}"
        );
        let release = match in_flight {
            true => vec![Step::WhoAmI, find_step()],
            false => vec![Step::RemoveFinalizer],
        };
        assert_eq!(first_steps(&case.clone().deleting()), release, "{code}");
    }
}

/// A Create whose credentials could not be had (the mapped role's AssumeRole failed, even for
/// a passing fault that could have been answered later) was never sent, nor was one held back
/// as its region does not answer (another call there waiting already), and one refused for
/// expired credentials was not carried out: neither is recorded as in flight, so deleting the
/// resource needs no search (which with a role that is gone may never succeed: a namespace and
/// its IAM role torn down together).
#[test]
fn a_create_never_sent_or_refused_for_its_credentials_is_not_recorded_as_in_flight() {
    type Made = fn() -> Fake;
    let fakes: [(&str, Made); 5] = [
        ("AssumeRole timed out", || {
            Fake::empty().fail_to_assume_role("Create", ErrorClass::Unanswered)
        }),
        ("AssumeRole failed", || {
            Fake::empty().fail_to_assume_role("Create", ErrorClass::Other)
        }),
        ("AssumeRole refused", || {
            Fake::empty().fail_to_assume_role("Create", ErrorClass::AccessDenied)
        }),
        ("expired credentials", || {
            Fake::empty().fail_expired("Create", "CreateEnvironmentAccountConnection")
        }),
        ("not sent: the region does not answer", || {
            Fake::empty().fail_unreached("Create", "CreateEnvironmentAccountConnection")
        }),
    ];
    for (class, fake) in fakes {
        let mut case = Case::new();
        let trace = reconcile(&mut case, &mut fake(), now());
        let s = &trace.reported().status;
        assert_eq!(s.create_sent_at, None, "{class:?}");
        assert_eq!(
            first_steps(&case.clone().deleting()),
            vec![Step::RemoveFinalizer],
            "{class:?}"
        );
        // A Create whose answer never came before stays on record.
        let mut case = Case::new().status(intent(1, at(570)));
        let trace = reconcile(&mut case, &mut fake(), now());
        assert_eq!(
            trace.reported().status.create_sent_at,
            Some(at(570).to_string()),
            "{class:?}"
        );
    }
}

/// The intent recorded before a Create is stale: a new one is written first, unless the Create
/// would not be sent (its region does not answer and another call there waits already). Then
/// nothing is written but the problem, and the last intent stays on record.
#[test]
fn no_intent_is_written_for_a_create_that_would_not_be_sent() {
    let stale = at(0);
    let mut case = Case::new().status(intent(1, stale));
    let mut proton = Fake::empty().fail_unreached("Record", "CreateEnvironmentAccountConnection");
    let trace = reconcile(&mut case, &mut proton, now());
    assert!(
        trace
            .steps
            .iter()
            .any(|s| matches!(s, Step::Record(r) if r.before_create)),
        "a new intent was due: {}",
        trace.path()
    );
    let reported = trace.reported();
    assert_eq!(
        reported.problem.reason,
        "AwsUnavailable",
        "{}",
        trace.path()
    );
    assert_eq!(reported.status.create_sent_at, Some(stale.to_string()));
    assert_eq!(proton.count("Create"), 0, "{}", trace.path());
    assert!(
        reported.problem.message.contains("not sent"),
        "{}",
        reported.problem.message
    );
}

#[test]
fn a_passing_fault_does_not_make_a_connected_resource_flap() {
    let mut case = Case::new().status(status_connected());
    let trace = reconcile(
        &mut case,
        &mut Fake::recorded(CONNECTED).throttle("Get"),
        now(),
    );
    let ready = condition(&trace.reported().status, READY);
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("True", "Connected")
    );
    assert_eq!(ready.last_transition_time, Time(t0()));
}

#[test]
fn the_same_error_twice_is_news_only_once() {
    for (class, message, _) in error_table() {
        if class == ErrorClass::NotFound {
            continue;
        }
        let mut case = Case::new().status(status_connected());
        let fail = |message: &str| Fake::recorded(CONNECTED).fail("Get", class, message);
        let first = reconcile(&mut case, &mut fail(message), now());
        assert!(first.reported().event.is_some(), "{class:?}");
        let second = reconcile(&mut case, &mut fail(message), at(900));
        assert_eq!(second.reported().event, None, "{class:?}: repeated");
        let unchanged = second.reported().status == first.reported().status;
        assert!(unchanged, "{class:?}: nothing to write the second time");

        // Another message is news again.
        let third = reconcile(&mut case, &mut fail("again, differently"), at(960));
        assert!(third.reported().event.is_some(), "{class:?}");
    }

    // Another class is news, and so is the same error after a success.
    let mut case = Case::new().status(status_connected());
    let throttled = || Fake::recorded(CONNECTED).throttle("Get");
    reconcile(&mut case, &mut throttled(), now());
    let transient = Fake::recorded(CONNECTED).fail("Get", ErrorClass::Transient, "Rate exceeded");
    let other_class = reconcile(&mut case, &mut transient.clone(), at(700));
    assert!(other_class.reported().event.is_some(), "another class");
    reconcile(&mut case, &mut Fake::recorded(CONNECTED), at(800)).settled();
    let after_success = reconcile(&mut case, &mut throttled(), at(900));
    assert!(after_success.reported().event.is_some(), "after a success");
}

#[test]
fn a_long_aws_message_repeated_is_not_news() {
    // Condition messages are cut to 1 KiB; the comparison must not see that cut as a change.
    let long = format!("1 validation error detected: {}", "x".repeat(3000));
    let mut case = Case::new().status(status_connected());
    let fail = || Fake::recorded(CONNECTED).fail("Get", ErrorClass::Validation, &long);
    let first = reconcile(&mut case, &mut fail(), now());
    assert!(first.reported().event.is_some());
    assert!(condition(&case.status, SYNCED).message.len() < long.len());
    let second = reconcile(&mut case, &mut fail(), at(900));
    assert_eq!(
        second.reported().event,
        None,
        "the same long error twice is reported once"
    );
}

#[test]
fn a_connection_learned_in_this_reconcile_is_recorded_even_though_a_later_step_failed() {
    // A replayed Create returns the connection; the ListTags after it is throttled.
    for recreation in [0u32, 3] {
        let mut status = creating();
        status.recreations = recreation;
        status.region = Some("us-west-2".into());
        let mut case = Case::new().status(status);
        let mut c = conn(PENDING);
        c.id = "new-connection".into();
        c.arn = "arn:aws:proton:us-west-2:444455556666:environment-account-connection/new".into();
        let mut proton = Fake::with(c.clone(), ownership()).throttle("ListTags");
        proton.token = Some(client_token(UID, recreation));
        let trace = reconcile(&mut case, &mut proton, now());
        let what = format!("re-creation {recreation}");
        assert_eq!(trace.path(), "WhoAmI Create ListTags Report", "{what}");
        let s = &trace.reported().status;
        assert_eq!(s.id.as_deref(), Some("new-connection"), "{what}");
        assert_eq!(s.arn.as_deref(), Some(c.arn.as_str()), "{what}");
        assert_eq!(s.status, Some(PENDING), "{what}");
        assert_eq!(
            s.environment_account_id.as_deref(),
            Some(ENV_ACCOUNT),
            "{what}"
        );
        assert_eq!(s.region.as_deref(), Some("us-west-2"), "{what}");
        assert_eq!(s.requested_at.as_deref(), Some(REQUESTED_AT), "{what}");
        assert_eq!(s.last_modified_at.as_deref(), Some(MODIFIED_AT), "{what}");
        assert_eq!(s.role_arn.as_deref(), Some(ROLE), "{what}");
        assert_eq!(s.recreations, recreation, "{what}");
        assert_eq!(s.create_sent_at, None, "{what}: the answer is on record");
        assert_eq!(condition(s, SYNCED).status, "False", "{what}");
        // The next reconcile reads it back instead of creating another one.
        let get = Step::Get {
            id: "new-connection".into(),
        };
        assert_eq!(first_steps(&case), [Step::WhoAmI, get], "{what}");
    }

    // A connection read back is recorded as read too.
    let mut case = Case::new().status(status_connected()).generation(2);
    let mut proton = Fake::recorded(CONNECTED).throttle("ListTags");
    proton.conn.as_mut().unwrap().last_modified_at = "2026-11-21T10:08:00Z".into();
    let trace = reconcile(&mut case, &mut proton, now());
    let modified = trace.reported().status.last_modified_at.clone();
    assert_eq!(modified.as_deref(), Some("2026-11-21T10:08:00Z"));

    // An adopted one is not: it was not verified yet.
    let mut case = Case::new().adopting();
    let mut proton = Fake::with(adoptee(CONNECTED), Tags::new()).throttle("ListTags");
    let trace = reconcile(&mut case, &mut proton, now());
    let s = &trace.reported().status;
    assert_eq!((&s.id, &s.status), (&None, &None));
}

#[test]
fn retries_back_off_exponentially_per_class_with_jitter_and_a_cap() {
    let resync = |n| Settings {
        resync: secs(n),
        ..settings()
    };
    let (backoff, slow, terminal) = (Retry::Backoff, Retry::Slow, Retry::Terminal);
    // (name, retry, resync seconds, attempt, un-jittered delay in seconds)
    #[rustfmt::skip]
    let table = [
        ("backoff, first", backoff, 600, 1, 1),
        ("backoff, attempt 0 counts as the first", backoff, 600, 0, 1),
        ("backoff, doubling", backoff, 600, 2, 2),
        ("backoff, doubling", backoff, 600, 3, 4),
        ("backoff, doubling", backoff, 600, 9, 256),
        ("backoff, capped", backoff, 600, 10, 300),
        ("backoff, capped", backoff, 600, 40, 300),
        ("backoff, capped", backoff, 600, u32::MAX, 300),
        ("slow, first", slow, 600, 1, 30),
        ("slow, doubling", slow, 600, 2, 60),
        ("slow, doubling", slow, 600, 5, 480),
        ("slow, capped", slow, 600, 6, 600),
        ("slow, capped whatever the resync", slow, 3600, u32::MAX, 600),
        ("terminal, first", terminal, 600, 1, 60),
        ("terminal, doubling", terminal, 600, 3, 240),
        ("terminal, capped at the resync", terminal, 600, 5, 600),
        ("terminal, capped at the resync", terminal, 600, u32::MAX, 600),
        ("terminal, long resync", terminal, 3600, 7, 3600),
        ("terminal, long resync", terminal, 3600, u32::MAX, 3600),
        ("terminal, never below a minute", terminal, 30, 1, 60),
        ("terminal, never below a minute", terminal, 30, 9, 60),
    ];
    for (name, retry, resync_secs, attempt, full) in table {
        let what = format!("{name}: attempt {attempt}, resync {resync_secs}s");
        let delay = |jitter: f64| retry_after(retry, attempt, resync(resync_secs).resync, jitter);
        let (low, high) = (
            Duration::from_millis(full * 750),
            Duration::from_millis(full * 1250),
        );
        assert_eq!(delay(0.5), secs(full), "{what}");
        assert_eq!(delay(0.0), low, "{what}: -25 %");
        assert_eq!(delay(1.0), high, "{what}: +25 %");
        for jitter in [0.1, 0.25, 0.75, 0.999_999] {
            let d = delay(jitter);
            assert!(d >= low && d <= high, "{what}, jitter {jitter}: {d:?}");
        }
        // Out-of-range jitter is clamped; a jitter that is not a number is the middle.
        assert_eq!(delay(-3.0), low, "{what}");
        assert_eq!(delay(7.0), high, "{what}");
        assert_eq!(delay(f64::NAN), secs(full), "{what}");
        assert_eq!(delay(f64::INFINITY), secs(full), "{what}");
    }
    // Growth is monotonic for a fixed jitter.
    for retry in [backoff, slow, terminal] {
        let mut last = Duration::ZERO;
        for attempt in 1..40 {
            let d = retry_after(retry, attempt, settings().resync, 0.3);
            assert!(d >= last, "{retry:?} attempt {attempt}");
            last = d;
        }
    }
}

#[test]
fn a_report_waits_longer_the_more_reconciles_failed_in_a_row() {
    // (consecutive failures before this one, expected wait in seconds)
    let table = [(0u32, 1u64), (1, 2), (3, 8), (8, 256), (100, 300)];
    for (failures, wait) in table {
        let mut case = Case::new().status(status_connected());
        case.failures = failures;
        let trace = reconcile(
            &mut case,
            &mut Fake::recorded(CONNECTED).throttle("Get"),
            now(),
        );
        assert_eq!(
            trace.reported().requeue,
            secs(wait),
            "after {failures} failures"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// What the controller remembers between reconciles
// ---------------------------------------------------------------------------------------------

#[test]
fn the_controllers_own_write_is_awaited_until_the_cache_shows_it() {
    let behind = creating();
    let written = status_connected();
    let remembered = Memory {
        written: Some(Written::new(&written, Some("7".into()))),
        unwritten: None,
        ..Memory::default()
    };
    // What is kept of the write is its version and a hash, not the status.
    assert!(remembered.written.as_ref().unwrap().is(&written));
    assert!(!remembered.written.as_ref().unwrap().is(&behind));
    let mut memory = remembered.clone();
    assert!(
        memory.catch_up(Some(&behind), Some("6")),
        "an older copy: kept"
    );
    assert!(memory.catch_up(None, None), "not in the cache yet: kept");
    assert!(
        !memory.catch_up(Some(&behind), Some("7")),
        "the copy of the version the write made shows it"
    );
    assert_eq!(memory, Memory::default());
    let mut memory = remembered.clone();
    assert!(
        !memory.catch_up(Some(&written), Some("9")),
        "a copy with the same status shows it, whatever its version"
    );
    let mut unversioned = Memory {
        written: Some(Written::new(&written, None)),
        unwritten: None,
        ..Memory::default()
    };
    assert!(
        unversioned.catch_up(Some(&behind), None),
        "no version on either side: only an equal status shows it"
    );
    assert!(!unversioned.catch_up(Some(&written), None));

    // The status to reconcile from is the cached one: a reconcile starts only once the cache
    // shows the write (the controller waits for the watch until then).
    assert_eq!(effective_status(Some(&behind), None, &remembered), behind);
    assert_eq!(effective_status(None, None, &remembered), Status::default());
}

#[test]
fn a_connection_learned_but_not_written_is_never_created_again() {
    let mut stored = creating();
    stored.applied_tag_keys = vec!["owner".into()];
    let mut learned = status_pending();
    learned.recreations = 2;
    learned.applied_tag_keys = vec!["team".into(), "env".into()];
    learned.create_sent_at = Some(at(300).to_string());
    learned.observed_generation = Some(7);
    let memory = Memory {
        written: None,
        unwritten: Some(Box::new(learned.clone())),
        ..Memory::default()
    };

    let s = effective_status(Some(&stored), None, &memory);
    let expected = Status {
        id: learned.id.clone(),
        arn: learned.arn.clone(),
        status: learned.status,
        region: learned.region.clone(),
        environment_account_id: learned.environment_account_id.clone(),
        requested_at: learned.requested_at.clone(),
        last_modified_at: learned.last_modified_at.clone(),
        role_arn: learned.role_arn.clone(),
        recreations: 2,
        applied_tag_keys: vec!["env".into(), "owner".into(), "team".into()],
        ..stored.clone()
    };
    assert_eq!(
        s, expected,
        "the connection overlaid; conditions, generation, createSentAt kept"
    );

    // createSentAt counts only once really written.
    let bare = Status::default();
    assert_eq!(
        effective_status(Some(&bare), None, &memory).create_sent_at,
        None
    );
    // An unwritten status without a connection (an intent whose write failed) is not durable.
    let unwritten_intent = Memory {
        written: None,
        unwritten: Some(Box::new(intent(1, now()))),
        ..Memory::default()
    };
    assert_eq!(effective_status(Some(&bare), None, &unwritten_intent), bare);
    // The same connection already stored: the stored status wins.
    let mut same = status_connected();
    same.last_modified_at = Some(UPDATED_AT.into());
    assert_eq!(effective_status(Some(&same), None, &memory), same);

    // Kept until the cache holds the connection.
    let mut m = memory.clone();
    assert!(m.catch_up(Some(&stored), None), "not stored yet");
    assert!(!m.catch_up(Some(&same), None), "stored");
    let mut m = unwritten_intent;
    assert!(!m.catch_up(Some(&bare), None), "nothing worth keeping");

    // Reconciling from it reads the connection back instead of sending a Create again.
    let case = Case::new().status(s);
    assert_eq!(
        first_steps(&case),
        [Step::WhoAmI, Step::Get { id: ID.into() }]
    );
}

// ---------------------------------------------------------------------------------------------
// Events of mutating steps, client tokens
// ---------------------------------------------------------------------------------------------

#[test]
fn every_mutating_step_is_announced_by_an_event() {
    let case = Case::new();
    let created = |id: &str| {
        let mut c = conn(PENDING);
        c.id = id.into();
        Outcome::Connection(c)
    };
    let connected = Outcome::Connection(conn(CONNECTED));
    let recreate = create_step(&case, &client_token(UID, 2), 2, false);
    let update = Step::Update {
        id: ID.into(),
        roles: roles(Some(ROLE), None, Some(COMPONENT)),
    };
    let tag = Step::Tag {
        arn: ARN.into(),
        tags: tags(&[("team", "platform"), ("env", "prod")]),
    };
    let untag = Step::Untag {
        arn: ARN.into(),
        keys: vec!["cost-center".into(), "old".into()],
        retain: false,
    };
    let note = |reason, text: String| Some(Note::normal(reason, text));
    let recreated = format!(
        "re-created connection as c-2 in {DEFAULT_REGION} (re-creation 2) after it was deleted outside the controller"
    );
    let updated = format!(
        "updated the role ARNs of connection {ID}: roleArn={ROLE}, codebuildRoleArn=-, componentRoleArn={COMPONENT}"
    );
    let retained = format!(
        "kept connection {ARN} in Proton (deletionPolicy: Retain) and removed the ownership tags"
    );
    let created_note = format!("created connection c-1 in {DEFAULT_REGION}");
    // (step, its raw answer, the Event expected)
    #[rustfmt::skip]
    let table = [
        (create_step(&case, UID, 0, false), created("c-1"), note("Created", created_note)),
        (recreate, created("c-2"), note("Recreated", recreated)),
        (update, connected.clone(), note("Updated", updated)),
        (tag, Outcome::Done, note("TagsUpdated", "tagged connection with env, team".into())),
        (untag, Outcome::Done, note("TagsUpdated", "untagged cost-center, old from the connection".into())),
        (release_step(ARN), Outcome::Done, note("Retained", retained)),
        (Step::Delete { id: ID.into() }, Outcome::Done, note("Deleted", format!("deleted connection {ID}"))),
        (Step::AddFinalizer { intent: None }, Outcome::Done, None),
        (Step::ReadAdoptionPolicy, Outcome::AdoptionAllowed(true), None),
        (Step::WhoAmI, Outcome::Account(ENV_ACCOUNT.into()), None),
        (Step::Get { id: ID.into() }, connected, None),
        (find_step(), Outcome::Found(Owned::Nothing), None),
        (Step::ListTags { arn: ARN.into() }, Outcome::Tags(ownership()), None),
    ];
    for (step, outcome, expected) in table {
        assert_eq!(event_for(&step, &outcome), expected, "{}", step.name());
    }
}

#[test]
fn client_tokens_are_the_uid_then_derived_and_always_fit_proton() {
    #[rustfmt::skip]
    let table = [
        (UID, 0, UID.to_string()),
        (UID, 1, format!("{UID}-r1")),
        (UID, 12, format!("{UID}-r12")),
        (UID, u32::MAX, format!("{UID}-r4294967295")),
        ("", 0, String::new()),
        ("", 1, "-r1".into()),
        ("a b\tc\u{e9}\n", 0, "abc".into()),
        ("a b", 3, "ab-r3".into()),
    ];
    for (uid, recreation, expected) in table {
        assert_eq!(
            client_token(uid, recreation),
            expected,
            "{uid:?} #{recreation}"
        );
    }

    // Whatever goes in, Proton's `^[!-~]*$`, max 64, comes out, and each re-creation of the
    // same resource gets a token of its own.
    let uids = [
        UID.to_string(),
        "u".repeat(60),
        "u".repeat(64),
        "v".repeat(200),
        format!("{}ü", "w".repeat(70)),
    ];
    for uid in &uids {
        let mut seen = std::collections::BTreeSet::new();
        for recreation in (0..50).chain([1_000, 65_535, u32::MAX]) {
            let token = client_token(uid, recreation);
            let what = format!("{uid:.10}... #{recreation}: {token:?}");
            assert!(!token.is_empty() && token.len() <= 64, "{what}");
            assert!(token.chars().all(|c| ('!'..='~').contains(&c)), "{what}");
            assert!(seen.insert(token.clone()), "{what} repeats");
            assert_eq!(
                client_token(uid, recreation),
                token,
                "{what}: deterministic"
            );
            let suffix = format!("-r{recreation}");
            assert!(recreation == 0 || token.ends_with(&suffix), "{what}");
        }
    }
    // A uid of exactly 64 characters is used as is for the first connection.
    assert_eq!(client_token(&"u".repeat(64), 0), "u".repeat(64));
    assert_eq!(client_token(&"v".repeat(200), 0), "v".repeat(64));
}

// ---------------------------------------------------------------------------------------------
// Observe-only and pause
// ---------------------------------------------------------------------------------------------

/// An observer takes up the environment's connection (or the annotation's) only where adoption
/// is allowed, reads it in full, and in no case sends a mutation, adds a finalizer or records an
/// intent to create.
#[test]
#[rustfmt::skip]
fn an_observer_follows_an_existing_connection_and_never_changes_anything() {
    use AdoptionPolicy::*;
    let not_labelled = "a cluster admin has not allowed adoption in namespace platform (label proton.eac.dev/adoption=allowed)";
    // (what, policy, namespace label, annotation, Proton holds, path, Ready reason, Synced reason)
    type Row<'a> = (&'a str, AdoptionPolicy, bool, Option<&'a str>, Option<Connection>, &'a str, &'a str, &'a str);
    let rows: [Row; 8] = [
        ("by environment, opted in", NamespaceOptIn, true, None, Some(conn(PENDING)), "ReadAdoptionPolicy WhoAmI Lookup Get Settle", "Pending", "Observing"),
        ("by environment, everywhere", Everywhere, false, None, Some(conn(CONNECTED)), "WhoAmI Lookup Get Settle", "Connected", "Observing"),
        ("by annotation", Everywhere, false, Some(ADOPT_ID), Some(adoptee(CONNECTED)), "WhoAmI Get Settle", "Connected", "Observing"),
        ("not opted in", NamespaceOptIn, false, None, Some(conn(CONNECTED)), "ReadAdoptionPolicy Report", "AdoptionNotAllowed", "AdoptionNotAllowed"),
        ("disabled", Disabled, true, Some(ADOPT_ID), Some(adoptee(CONNECTED)), "Report", "AdoptionNotAllowed", "AdoptionNotAllowed"),
        ("nothing to follow yet", Everywhere, false, None, None, "WhoAmI Lookup Settle", "NotFound", "NotFound"),
        ("the annotation names nothing", Everywhere, false, Some(ADOPT_ID), None, "WhoAmI Get Settle", "NotFound", "NotFound"),
        ("another environment's connection", Everywhere, false, Some(ADOPT_ID), Some(Connection { environment_name: "other".into(), ..adoptee(CONNECTED) }), "WhoAmI Get Report", "ObserveMismatch", "ObserveMismatch"),
    ];
    for (what, policy, label, annotation, held, expected, ready, synced) in rows {
        let mut case = Case::new().observe().without_finalizer().settings_with(|s| s.adoption = policy);
        case.namespace_allows_adoption = label;
        case.adopt = annotation.map(str::to_string);
        let mut proton = match &held {
            Some(c) => Fake::with(c.clone(), tags(&[(TAG_UID, OTHER_UID)])),
            None => Fake::empty(),
        };
        let trace = reconcile(&mut case, &mut proton, now());
        assert_eq!(trace.path(), expected, "{what}");
        assert!(!trace.steps.iter().any(|s| s.is_mutation() || matches!(s, Step::AddFinalizer { .. } | Step::Record(_))), "{what}: {}", trace.path());
        assert!(!case.finalizer, "{what}: an observer holds no finalizer");
        assert_eq!(cond_of(&case.status, READY).1, ready, "{what}");
        assert_eq!(cond_of(&case.status, SYNCED).1, synced, "{what}");
        assert!(case.status.create_sent_at.is_none(), "{what}");
        if synced == "AdoptionNotAllowed" && !label && policy == NamespaceOptIn {
            let message = &condition(&case.status, SYNCED).message;
            assert!(message.starts_with("managementPolicy is Observe") && message.contains(not_labelled), "{what}: {message}");
        }
        if synced == "Observing" {
            let c = held.as_ref().unwrap();
            assert_eq!(case.status.id.as_deref(), Some(c.id.as_str()), "{what}");
            assert_eq!(cond_of(&case.status, SYNCED).0, "True", "{what}");
            assert!(trace.settled().events.iter().any(|n| n.reason == "Observing"), "{what}: {:?}", trace.settled().events);
        }
    }
}

#[test]
fn an_observer_reports_drift_without_correcting_it_and_reads_once_per_resync() {
    let mut status = status_connected();
    status.applied_tag_keys.clear();
    let mut case = Case::new()
        .observe()
        .without_finalizer()
        .status(status)
        .new_role();
    // Proton has other roles and none of the spec's tags: nothing is sent to change that.
    let mut proton = Fake::with(
        Connection {
            roles: roles(Some(ROLE), Some(CODEBUILD), None),
            ..conn(CONNECTED)
        },
        Tags::new(),
    );
    let trace = reconcile(&mut case, &mut proton, now());
    assert_eq!(trace.path(), "WhoAmI Get Settle");
    assert_eq!(case.status.codebuild_role_arn.as_deref(), Some(CODEBUILD));
    assert_eq!(case.status.role_arn.as_deref(), Some(ROLE));
    assert_eq!(cond_of(&case.status, READY), ("True", "Connected"));
    assert_eq!(cond_of(&case.status, SYNCED), ("True", "Observing"));
    assert_eq!(trace.settled().requeue, RESYNC);
    // Settled and unchanged: the next reconcile is a resync read (its budget class), and the
    // status it renders is identical (no write).
    let before = case.status.clone();
    let run = case.run();
    assert_eq!(
        run.class_of(&Step::Get { id: ID.into() }),
        eac_controller::aws::budget::CallClass::Resync
    );
    let trace = reconcile(&mut case, &mut proton, later(now(), RESYNC));
    assert_eq!(trace.path(), "WhoAmI Get Settle");
    assert_eq!(case.status, before);
    assert_eq!(trace.settled().events, []);
}

/// A PENDING connection's read is a poll, which the poll share may hold back for a minute when
/// hundreds wait; made due by a nudge (the policy here decided its request), it is work: the
/// decision is seen at once.
#[test]
fn a_nudged_read_is_work_not_a_poll() {
    use eac_controller::aws::budget::CallClass;
    let get = Step::Get { id: ID.into() };
    let mut case = Case::new().status(status_pending());
    assert_eq!(case.run().class_of(&get), CallClass::Poll);
    case.nudged = true;
    assert_eq!(case.run().class_of(&get), CallClass::Work);
    let mut case = Case::new().status(status_connected());
    assert_eq!(case.run().class_of(&get), CallClass::Resync);
    case.nudged = true;
    assert_eq!(case.run().class_of(&get), CallClass::Work);
}

#[test]
fn an_observed_connection_that_vanishes_is_forgotten_and_looked_up_again() {
    let mut case = Case::new()
        .observe()
        .without_finalizer()
        .status(status_connected())
        .settings_with(|s| s.adoption = AdoptionPolicy::Everywhere);
    let mut proton = Fake::empty();
    let trace = reconcile(&mut case, &mut proton, now());
    assert_eq!(trace.path(), "WhoAmI Get Settle", "never re-created");
    assert!(case.status.id.is_none());
    assert_eq!(cond_of(&case.status, READY), ("False", "NotFound"));
    let events = &trace.settled().events;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].reason, "NotFound");
    // Someone creates a new one: the next look finds it by the environment.
    let mut created = conn(PENDING);
    created.id = "a-new-one".into();
    let mut proton = Fake::with(created, Tags::new());
    let trace = reconcile(&mut case, &mut proton, later(now(), RESYNC));
    assert_eq!(trace.path(), "WhoAmI Lookup Get Settle");
    assert_eq!(
        trace.step("Lookup"),
        &Step::Lookup {
            environment_name: ENV.into(),
            management_account_id: MGMT.into(),
        }
    );
    assert_eq!(case.status.id.as_deref(), Some("a-new-one"));
}

#[test]
fn deleting_an_observer_never_calls_aws() {
    for status in [Status::default(), status_connected(), creating()] {
        for finalizer in [false, true] {
            let mut case = Case::new().observe().status(status.clone()).deleting();
            case.finalizer = finalizer;
            let mut proton = Fake::recorded(CONNECTED);
            let trace = reconcile(&mut case, &mut proton, now());
            let expected = if finalizer {
                "RemoveFinalizer"
            } else {
                "Nothing"
            };
            assert_eq!(trace.path(), expected);
            assert!(proton.calls.is_empty());
            assert!(proton.conn.is_some(), "the connection stays");
        }
    }
}

/// Paused: no AWS call in any state, live or being deleted; `Synced` says so once, and the
/// resource is released on deletion only when no connection of its can exist.
#[test]
fn a_paused_resource_makes_no_aws_call_in_any_state() {
    let mut checked = 0;
    for before in Before::ALL {
        for deleting in [false, true] {
            for finalizer in [false, true] {
                for generation in [1, 2] {
                    let mut case = Case::new()
                        .status(before.status())
                        .generation(generation)
                        .paused();
                    case.deleting = deleting;
                    case.finalizer = finalizer;
                    let mut proton = Fake::for_before(before, CONNECTED);
                    let trace = reconcile(&mut case, &mut proton, now());
                    let what = format!(
                        "{before:?} deleting={deleting} finalizer={finalizer} generation={generation}"
                    );
                    assert!(proton.calls.is_empty(), "{what}: {:?}", proton.calls);
                    let expected = match (deleting, finalizer, before) {
                        (true, false, _) => "Nothing",
                        (true, true, Before::NoStatus) => "RemoveFinalizer",
                        _ => "Settle",
                    };
                    assert_eq!(trace.path(), expected, "{what}");
                    if expected == "Settle" {
                        assert_eq!(cond_of(&case.status, SYNCED), ("False", "Paused"), "{what}");
                        let events = &trace.settled().events;
                        assert_eq!(events.len(), 1, "{what}");
                        assert_eq!(events[0].reason, "Paused");
                        // Ready keeps what it said.
                        if let Some(ready) = before.status().condition(READY) {
                            assert_eq!(condition(&case.status, READY), ready, "{what}");
                        }
                        // Still paused: nothing new to say or write.
                        let again = reconcile(&mut case.clone(), &mut proton, later(now(), RESYNC));
                        assert_eq!(again.settled().events, [], "{what}");
                        assert_eq!(again.settled().status, case.status, "{what}");
                    }
                    checked += 1;
                }
            }
        }
    }
    assert_eq!(checked, 40);
}

/// An intent annotation the controller would not have written (a tenant's: a time years ahead,
/// another region than the spec's) is reported, and nothing is done in any state without a
/// recorded connection, live or being deleted: no AWS call, no finalizer added or removed. Once
/// a connection is recorded the intent is history, and not read. Removed, it is no longer there.
#[test]
fn an_intent_not_as_the_controller_writes_it_stops_everything_until_it_is_removed() {
    let forged = Intent {
        region: DEFAULT_REGION.into(),
        account: ENV_ACCOUNT.into(),
        sent_at: "9999-01-01T00:00:00Z".into(),
    };
    let problem = forged.distrust(None, now()).expect("a time years ahead");
    let mut checked = 0;
    for before in Before::ALL {
        for deleting in [false, true] {
            for finalizer in [false, true] {
                let mut case = Case::new().status(before.status());
                case.deleting = deleting;
                case.finalizer = finalizer;
                case.intent_problem = Some(problem.clone());
                let mut proton = Fake::for_before(before, CONNECTED);
                let trace = reconcile(&mut case, &mut proton, now());
                let what = format!("{before:?} deleting={deleting} finalizer={finalizer}");
                if before.has_id() {
                    assert!(!trace.path().contains("Report"), "{what}: {}", trace.path());
                    checked += 1;
                    continue;
                }
                assert!(proton.calls.is_empty(), "{what}: {:?}", proton.calls);
                assert_eq!(trace.path(), "Report", "{what}");
                assert_eq!(
                    trace.reported().problem.reason,
                    "IntentNotTrusted",
                    "{what}"
                );
                assert_eq!(
                    case.finalizer, finalizer,
                    "{what}: the finalizer stays as it was"
                );
                assert_eq!(
                    cond_of(&case.status, SYNCED),
                    ("False", "IntentNotTrusted"),
                    "{what}"
                );
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 20);

    // Removed: a live resource is reconciled as any other.
    let mut case = Case::new();
    case.intent_problem = Some(problem);
    reconcile(&mut case, &mut Fake::empty(), now());
    case.intent_problem = None;
    let trace = reconcile(&mut case, &mut Fake::empty(), later(now(), secs(1)));
    assert!(trace.path().contains("Create"), "{}", trace.path());
}

/// A spec edit (generation 2) whose Update is throttled: Ready stays True for generation 1, and
/// the status's observedGeneration stays 1 (kstatus, Argo CD and `kubectl wait` read the edit as
/// not applied yet), while Synced tells why, for generation 2. Pausing then keeps it so.
#[test]
fn an_edit_held_up_by_a_passing_fault_is_not_reported_ready_even_when_paused_then() {
    let ready_generation = |s: &Status| condition(s, READY).observed_generation;
    let mut case = Case::new().status(status_connected()).new_role();
    let mut proton = Fake::recorded(CONNECTED).throttle("Update");
    let trace = reconcile(&mut case, &mut proton, now());
    assert_eq!(trace.path(), "WhoAmI Get Update Report");
    let s = &trace.reported().status;
    assert_eq!(cond_of(s, READY), ("True", "Connected"));
    assert_eq!(ready_generation(s), Some(1));
    assert_eq!(s.observed_generation, Some(1));
    assert_eq!(cond_of(s, SYNCED), ("False", "Throttled"));
    assert_eq!(condition(s, SYNCED).observed_generation, Some(2));

    case.status = s.clone();
    let mut case = case.paused();
    reconcile(&mut case, &mut proton, later(now(), secs(5)));
    assert_eq!(cond_of(&case.status, SYNCED), ("False", "Paused"));
    assert_eq!(cond_of(&case.status, READY), ("True", "Connected"));
    assert_eq!(ready_generation(&case.status), Some(1));
    assert_eq!(case.status.observed_generation, Some(1));

    // Applied once resumed: Ready for generation 2.
    case.paused = false;
    let trace = reconcile(&mut case, &mut proton, later(now(), secs(10)));
    assert!(trace.path().ends_with("Settle"), "{}", trace.path());
    assert_eq!(ready_generation(&case.status), Some(2));
    assert_eq!(case.status.observed_generation, Some(2));
}

#[test]
fn resuming_a_paused_resource_picks_up_where_it_stopped() {
    let mut case = Case::new().status(status_connected()).new_role().paused();
    let mut proton = Fake::recorded(CONNECTED);
    reconcile(&mut case, &mut proton, now());
    assert_eq!(cond_of(&case.status, SYNCED), ("False", "Paused"));
    assert!(proton.calls.is_empty());
    case.paused = false;
    let trace = reconcile(&mut case, &mut proton, later(now(), secs(5)));
    assert_eq!(trace.path(), "WhoAmI Get Update ListTags Settle");
    assert_eq!(cond_of(&case.status, SYNCED), ("True", "ReconcileSuccess"));
    assert_eq!(case.status.role_arn.as_deref(), Some(ROLE_2));
}

// ---------------------------------------------------------------------------------------------
// A reconcile cut short by the call budget: what it learned is carried to the next one
// ---------------------------------------------------------------------------------------------

/// What kills at start-up leave: the connection recorded (id, PENDING), no conditions, no
/// observedGeneration. Nothing is settled, so its first read is work, and so are its tags.
fn half_written() -> Status {
    Status {
        conditions: Vec::new(),
        observed_generation: None,
        ..status_pending()
    }
}

fn deferred(retry_in: Option<Duration>) -> ProtonError {
    ProtonError::deferred("ListTagsForResource", retry_in)
}

/// Runs one reconcile of `case` by hand: WhoAmI, then the Get, whose tags are deferred.
fn read_then_deferred(case: &Case) -> Option<Progress> {
    let mut run = case.run();
    assert_eq!(run.next(now()), Step::WhoAmI);
    run.record(&Step::WhoAmI, Ok(Outcome::Account(ENV_ACCOUNT.into())));
    let get = run.next(now());
    assert_eq!(get, Step::Get { id: ID.into() });
    run.record(&get, Ok(Outcome::Connection(conn(PENDING))));
    let list = run.next(now());
    assert_eq!(list, Step::ListTags { arn: ARN.into() });
    run.record(&list, Err(deferred(Some(secs(2)))));
    let Step::Defer { requeue, .. } = run.next(now()) else {
        panic!("the run is deferred")
    };
    assert_eq!(requeue, secs(2), "back when its slot is booked");
    run.carry_over()
}

#[test]
fn a_deferred_reconcile_carries_the_connection_it_read_to_the_next_one() {
    let case = Case::new().status(half_written());
    let progress = read_then_deferred(&case).expect("the connection read is carried over");
    assert_eq!(progress.account.as_deref(), Some(ENV_ACCOUNT));
    assert!(matches!(
        &progress.observed,
        Observed::Connection { connection, tags: None, origin: Origin::Recorded } if *connection == conn(PENDING)
    ));

    // The next reconcile spends its booked slot on the call it was refused, and settles.
    let mut run = case.run();
    run.resume(progress);
    let list = run.next(now());
    assert_eq!(
        list,
        Step::ListTags { arn: ARN.into() },
        "no second WhoAmI or Get"
    );
    run.record(
        &list,
        Ok(Outcome::Tags(with_ownership(&[("team", "payments")]))),
    );
    let Step::Settle(settled) = run.next(now()) else {
        panic!("settles on its next slot")
    };
    assert_eq!(
        cond_of(&settled.status, SYNCED),
        ("True", "ReconcileSuccess")
    );
    assert_eq!(settled.status.observed_generation, Some(1));
    assert_eq!(run.carry_over(), None, "a settled run carries nothing");
}

#[test]
fn a_deferral_before_anything_was_read_carries_nothing() {
    let case = Case::new().status(half_written());
    let mut run = case.run();
    assert_eq!(run.next(now()), Step::WhoAmI);
    run.record(&Step::WhoAmI, Ok(Outcome::Account(ENV_ACCOUNT.into())));
    let get = run.next(now());
    run.record(&get, Err(deferred(None)));
    assert!(matches!(run.next(now()), Step::Defer { .. }));
    assert_eq!(run.carry_over(), None);
}

#[test]
fn a_problem_is_not_carried_over() {
    let case = Case::new().status(half_written());
    let mut run = case.run();
    run.record(&Step::WhoAmI, Ok(Outcome::Account(ENV_ACCOUNT.into())));
    let get = run.next(now());
    run.record(&get, Ok(Outcome::Connection(conn(PENDING))));
    let list = run.next(now());
    run.record(
        &list,
        Err(aws_error(&list, ErrorClass::Transient, "internal error")),
    );
    assert!(matches!(run.next(now()), Step::Report(_)));
    assert_eq!(run.carry_over(), None, "only a deferral is resumed");
}

#[test]
fn progress_that_does_not_match_the_recorded_connection_is_not_resumed() {
    let case = Case::new().status(half_written());
    let progress = read_then_deferred(&case).unwrap();
    // Meanwhile the status names another connection: the read is about the wrong one.
    let mut other = half_written();
    other.id = Some("another-connection".into());
    let moved = Case::new().status(other);
    let mut run = moved.run();
    run.resume(progress.clone());
    assert_eq!(run.next(now()), Step::WhoAmI, "starts from scratch");
    run.record(&Step::WhoAmI, Ok(Outcome::Account(ENV_ACCOUNT.into())));
    assert_eq!(
        run.next(now()),
        Step::Get {
            id: "another-connection".into()
        }
    );

    // A run that already learned something keeps what it learned.
    let mut run = case.run();
    run.record(&Step::WhoAmI, Ok(Outcome::Account(ENV_ACCOUNT.into())));
    let get = run.next(now());
    let mut newer = conn(PENDING);
    newer.last_modified_at = UPDATED_AT.into();
    run.record(&get, Ok(Outcome::Connection(newer.clone())));
    run.resume(progress);
    assert!(matches!(
        run.observed(),
        Observed::Connection { connection, .. } if *connection == newer
    ));
}

/// Kills at start-up under a busy budget: a replayed Create is refused (the lost one made the
/// connection with the spec before an edit) and the search for the connection is deferred. The
/// next reconcile must spend its slot on that search, not on the same refused Create: sent
/// again, it was refused again and the search deferred again, for as long as the budget stayed
/// busy (seen as a resource never settling in `tests/crash.rs`).
#[test]
fn a_replayed_create_refused_then_deferred_goes_on_with_the_search() {
    let case = Case::new().status(creating()).new_role();
    let mut run = case.run();
    assert_eq!(run.next(now()), Step::WhoAmI);
    run.record(&Step::WhoAmI, Ok(Outcome::Account(ENV_ACCOUNT.into())));
    let create = run.next(now());
    assert_eq!(create.name(), "Create");
    let refusal = aws_error(
        &create,
        ErrorClass::Conflict,
        "client token already used with different parameters",
    );
    run.record(&create, Err(refusal.clone()));
    let find = run.next(now());
    assert_eq!(find.name(), "FindOwned");
    run.record(
        &find,
        Err(ProtonError::deferred(
            "ListEnvironmentAccountConnections",
            Some(secs(2)),
        )),
    );
    assert!(matches!(run.next(now()), Step::Defer { .. }));
    let progress = run.carry_over().expect("the refusal is carried over");
    assert_eq!(progress.observed, Observed::CreateConflict);
    assert_eq!(progress.conflict, Some(refusal));

    let mut run = case.run();
    run.resume(progress.clone());
    assert_eq!(
        run.next(now()).name(),
        "FindOwned",
        "no second WhoAmI or Create"
    );

    // Nothing of ours listed yet: the refusal is what is reported, as in one run.
    run.record(&find, Ok(Outcome::Found(Owned::Nothing)));
    let Step::Report(reported) = run.next(now()) else {
        panic!("reported")
    };
    assert_eq!(reported.problem.reason, "Conflict");

    // Without the refusal it stands for, a conflict is not resumed.
    let mut run = case.run();
    run.resume(Progress {
        conflict: None,
        ..progress
    });
    assert_eq!(run.next(now()), Step::WhoAmI, "starts from scratch");
}

#[test]
fn a_vanished_connection_is_carried_over_to_its_recreation() {
    let case = Case::new().status(status_connected());
    let mut run = case.run();
    run.record(&Step::WhoAmI, Ok(Outcome::Account(ENV_ACCOUNT.into())));
    let get = run.next(now());
    assert_eq!(get, Step::Get { id: ID.into() });
    run.record(
        &get,
        Err(aws_error(
            &get,
            ErrorClass::NotFound,
            "connection not found",
        )),
    );
    // Re-creating it starts with recording the intent, whose Create slot is deferred.
    let record = run.next(now());
    assert_eq!(record.name(), "Record");
    run.record(&record, Err(deferred(Some(secs(3)))));
    assert!(matches!(run.next(now()), Step::Defer { .. }));
    let progress = run.carry_over().expect("the NotFound is carried over");
    assert_eq!(
        progress.observed,
        Observed::Gone {
            id: Some(ID.into())
        }
    );

    let mut run = case.run();
    run.resume(progress);
    let Step::Record(recorded) = run.next(now()) else {
        panic!("goes on to record the re-creation without reading the connection again")
    };
    assert!(recorded.before_create);
    assert_eq!(recorded.status.recreations, 1);
}

/// While a PENDING connection is polled faster than the slowest poll, its polls may be left to
/// the shared list (the poller) until its reconcile comes back at the slowest poll interval,
/// jittered; otherwise its own requeue polls.
#[test]
fn fast_polls_of_a_pending_connection_are_left_to_the_list_until_the_slowest_poll() {
    let s = settings();
    let pending = status_pending();
    for (requeue, jitter, expected) in [
        (secs(2), 0.5, Some(PENDING_POLL)),
        (secs(2), 0.0, Some(PENDING_POLL.mul_f64(0.9))),
        (secs(26), 0.99, Some(PENDING_POLL.mul_f64(1.098))),
        // Already at the slowest interval (or within its jitter): the requeue polls.
        (PENDING_POLL, 0.5, None),
        (secs(28), 0.0, None),
        (PENDING_POLL.mul_f64(1.05), 0.5, None),
    ] {
        assert_eq!(
            listed_polls_until(&pending, requeue, &s, jitter),
            expected,
            "requeue {requeue:?}, jitter {jitter}"
        );
    }
    let mut no_id = status_pending();
    no_id.id = None;
    for (status, what) in [
        (status_connected(), "CONNECTED"),
        (no_id, "no connection recorded"),
    ] {
        assert_eq!(
            listed_polls_until(&status, secs(2), &s, 0.5),
            None,
            "{what}: nothing for the list to answer"
        );
    }
    // A pending_poll longer than the resync period is capped by it, as the polls are.
    let short_resync = Settings {
        resync: secs(20),
        ..settings()
    };
    assert_eq!(
        listed_polls_until(&pending, secs(2), &short_resync, 0.5),
        Some(secs(20))
    );
}
