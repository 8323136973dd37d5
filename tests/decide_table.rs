//! Decision-table tests of the pure reconcile decision (`src/decide.rs`).
//!
//! Every test is synchronous and does no I/O: it builds a resource from small owned fixtures,
//! asks `decide` (or one of its helpers) for an answer, and compares it with the table. A tiny
//! in-memory Proton (`FakeProton`) replays the controller's step loop where a whole reconcile
//! matters ("one Get per resync", "finalizer before Create").

use std::time::Duration;

use eac_controller::api::{
    ConnectionState, DeletionPolicy, EnvironmentAccountConnectionSpec as Spec,
    EnvironmentAccountConnectionStatus as Status, TAG_NAME, TAG_NAMESPACE, TAG_UID,
};
use eac_controller::conditions::{READY, STALLED, SYNCED};
use eac_controller::decide::{
    self, Failure, Note, Observed, Origin, Problem, Resource, Settings, Settled, Step,
    client_token, decide, event_for, retry_after, status_after_problem, status_vanished,
    vanished_note,
};
use eac_controller::proton::{
    Connection, CreateRequest, ErrorClass, ProtonError, Retry, RoleArns, Tags,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

// ---------------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------------

const UID: &str = "8d7e0c55-2b1f-4c9a-9a51-3f0d2f6e7a10";
const NAMESPACE: &str = "platform";
const NAME: &str = "prod-eu";
const ENV: &str = "prod-eu";
const MGMT: &str = "111122223333";
const ENV_ACCOUNT: &str = "444455556666";
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
const RESYNC: Duration = Duration::from_secs(600);
const PENDING_POLL: Duration = Duration::from_secs(30);

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

fn settings() -> Settings {
    Settings {
        resync: RESYNC,
        pending_poll: PENDING_POLL,
        default_region: DEFAULT_REGION.into(),
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

fn ownership_keys() -> Vec<String> {
    let mut keys = vec![
        TAG_UID.to_string(),
        TAG_NAMESPACE.to_string(),
        TAG_NAME.to_string(),
    ];
    keys.sort();
    keys
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

/// A status as an earlier reconcile left it: the connection in `state`, generation
/// `applied` reconciled successfully.
fn recorded(state: ConnectionState, applied: i64) -> Status {
    let (ready, ready_reason, stalled, stalled_reason) = match state {
        ConnectionState::Connected => (true, "Connected", false, "Reconciled"),
        ConnectionState::Pending => (false, "Pending", false, "Reconciled"),
        ConnectionState::Rejected => (false, "Rejected", true, "Rejected"),
    };
    Status {
        observed_generation: Some(applied),
        id: Some(ID.into()),
        arn: Some(ARN.into()),
        status: Some(state),
        environment_account_id: Some(ENV_ACCOUNT.into()),
        region: Some(DEFAULT_REGION.into()),
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
    recorded(ConnectionState::Pending, 1)
}

fn status_connected() -> Status {
    recorded(ConnectionState::Connected, 1)
}

fn status_rejected() -> Status {
    recorded(ConnectionState::Rejected, 1)
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
    fn retain(self) -> Self {
        self.spec_with(|s| s.deletion_policy = DeletionPolicy::Retain)
    }
    fn spec_with(mut self, f: impl FnOnce(&mut Spec)) -> Self {
        f(&mut self.spec);
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
        }
    }
    fn decide(&self, observed: &Observed) -> Step {
        self.decide_at(observed, now())
    }
    fn decide_at(&self, observed: &Observed, now: jiff::Timestamp) -> Step {
        decide(&self.res(), observed, &settings(), now)
    }
}

fn observed(connection: Connection, tags: Option<Tags>, origin: Origin) -> Observed {
    Observed::Connection {
        connection,
        tags,
        origin,
    }
}

/// Read back with the recorded id; tags not listed yet.
fn got(state: ConnectionState) -> Observed {
    observed(conn(state), None, Origin::Recorded)
}

fn settled(step: Step) -> Settled {
    match step {
        Step::Settle(s) => s,
        other => panic!("expected Settle, got {other:?}"),
    }
}

fn failure(step: Step) -> Failure {
    match step {
        Step::Fail(f) => f,
        other => panic!("expected Fail, got {other:?}"),
    }
}

fn condition<'a>(status: &'a Status, type_: &str) -> &'a Condition {
    status
        .condition(type_)
        .unwrap_or_else(|| panic!("no {type_} condition in {status:?}"))
}

fn release_step(arn: &str) -> Step {
    Step::Untag {
        arn: arn.into(),
        keys: vec![TAG_UID.into(), TAG_NAMESPACE.into(), TAG_NAME.into()],
        retain: true,
    }
}

/// The Create that `decide` must ask for: token, spec, roles and tags.
fn create_step(case: &Case, token: &str, recreation: u32) -> Step {
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
        recreation,
    }
}

fn name_of(step: &Step) -> &'static str {
    match step {
        Step::AddFinalizer => "AddFinalizer",
        Step::Get { .. } => "Get",
        Step::FindOwned { .. } => "FindOwned",
        Step::ListTags { .. } => "ListTags",
        Step::Create { .. } => "Create",
        Step::Update { .. } => "Update",
        Step::Tag { .. } => "Tag",
        Step::Untag { .. } => "Untag",
        Step::Delete { .. } => "Delete",
        Step::RemoveFinalizer => "RemoveFinalizer",
        Step::Settle(_) => "Settle",
        Step::Fail(_) => "Fail",
        Step::Nothing => "Nothing",
    }
}

fn names(steps: &[Step]) -> Vec<&'static str> {
    steps.iter().map(name_of).collect()
}

/// Tag table row: name, spec tags, applied keys on record, tags on the connection, the step
/// expected after ListTags (None: settle).
type TagRow = (&'static str, Tags, Vec<&'static str>, Tags, Option<Step>);
/// Adoption table row: name, what Get returned, the failure expected (reason, message
/// fragments) or None to proceed.
type AdoptionRow = (
    &'static str,
    Observed,
    Option<(&'static str, Vec<&'static str>)>,
);
/// Event table row: name, status before, origin, state now, the events (reason, warning).
type TransitionRow = (
    &'static str,
    Status,
    Origin,
    ConnectionState,
    Vec<(&'static str, bool)>,
);
/// `event_for` table row: step, its result, the Event expected (reason, note).
type StepEventRow = (Step, Observed, Option<(&'static str, String)>);

// ---------------------------------------------------------------------------------------------
// An in-memory Proton and the controller's step loop
// ---------------------------------------------------------------------------------------------

/// One connection and its tags; executes steps the way `src/controller.rs` folds them into
/// `Observed`.
#[derive(Clone, Debug)]
struct FakeProton {
    conn: Option<Connection>,
    tags: Tags,
    /// State a new connection starts in.
    create_state: ConnectionState,
    calls: Vec<&'static str>,
}

impl FakeProton {
    fn empty() -> Self {
        FakeProton {
            conn: None,
            tags: Tags::new(),
            create_state: ConnectionState::Pending,
            calls: Vec::new(),
        }
    }

    fn with(connection: Connection, tags: Tags) -> Self {
        FakeProton {
            conn: Some(connection),
            tags,
            ..FakeProton::empty()
        }
    }

    fn exec(&mut self, step: &Step, observed: &Observed, recorded_id: Option<&str>) -> Observed {
        self.calls.push(name_of(step));
        let (known_tags, origin) = match observed {
            Observed::Connection { tags, origin, .. } => (tags.clone(), *origin),
            _ => (None, Origin::Recorded),
        };
        let connection = |this: &Self| this.conn.clone().expect("no connection in the fake");
        match step {
            Step::Get { id } => match &self.conn {
                Some(c) if c.id == *id => observed_for(
                    c.clone(),
                    None,
                    if recorded_id == Some(id.as_str()) {
                        Origin::Recorded
                    } else {
                        Origin::Adopted
                    },
                ),
                _ => Observed::Gone {
                    id: Some(id.clone()),
                },
            },
            Step::FindOwned { environment_name } => match &self.conn {
                Some(c)
                    if c.environment_name == *environment_name
                        && self.tags.get(TAG_UID).map(String::as_str) == Some(UID) =>
                {
                    observed_for(c.clone(), Some(self.tags.clone()), Origin::Found)
                }
                _ => Observed::Gone { id: None },
            },
            Step::ListTags { .. } => {
                observed_for(connection(self), Some(self.tags.clone()), origin)
            }
            Step::Create {
                request,
                recreation,
            } => {
                let id = format!("conn-{}", request.client_token);
                let c = Connection {
                    id: id.clone(),
                    arn: format!(
                        "arn:aws:proton:eu-west-1:{ENV_ACCOUNT}:environment-account-connection/{id}"
                    ),
                    state: self.create_state,
                    environment_name: request.environment_name.clone(),
                    management_account_id: request.management_account_id.clone(),
                    environment_account_id: ENV_ACCOUNT.into(),
                    roles: request.roles.clone(),
                    requested_at: REQUESTED_AT.into(),
                    last_modified_at: REQUESTED_AT.into(),
                };
                self.conn = Some(c.clone());
                self.tags = request.tags.clone();
                observed_for(
                    c,
                    Some(request.tags.clone()),
                    Origin::Created {
                        recreation: *recreation,
                    },
                )
            }
            Step::Update { roles, .. } => {
                let c = self.conn.as_mut().expect("no connection in the fake");
                c.roles = roles.clone();
                c.last_modified_at = "2026-11-21T10:09:00Z".into();
                observed_for(c.clone(), known_tags, origin)
            }
            Step::Tag { tags, .. } => {
                self.tags.extend(tags.clone());
                let mut now_tags = known_tags.unwrap_or_default();
                now_tags.extend(tags.clone());
                observed_for(connection(self), Some(now_tags), origin)
            }
            Step::Untag { keys, retain, .. } => {
                self.tags.retain(|k, _| !keys.contains(k));
                if *retain {
                    Observed::Released
                } else {
                    let mut now_tags = known_tags.unwrap_or_default();
                    now_tags.retain(|k, _| !keys.contains(k));
                    observed_for(connection(self), Some(now_tags), origin)
                }
            }
            Step::Delete { .. } => {
                self.conn = None;
                self.tags.clear();
                Observed::Released
            }
            other => panic!("{other:?} is not a Proton call"),
        }
    }
}

fn observed_for(connection: Connection, tags: Option<Tags>, origin: Origin) -> Observed {
    Observed::Connection {
        connection,
        tags,
        origin,
    }
}

/// Runs one reconcile the way the controller does, until a final step. Returns every step.
fn reconcile(case: &mut Case, proton: &mut FakeProton, now: jiff::Timestamp) -> Vec<Step> {
    let mut observed = Observed::Nothing;
    let mut steps = Vec::new();
    for _ in 0..16 {
        let step = case.decide_at(&observed, now);
        steps.push(step.clone());
        match &step {
            Step::AddFinalizer => case.finalizer = true,
            Step::Settle(_) | Step::Fail(_) | Step::RemoveFinalizer | Step::Nothing => {
                return steps;
            }
            call => observed = proton.exec(call, &observed, case.status.id.as_deref()),
        }
    }
    panic!("the reconcile did not settle: {:?}", names(&steps));
}

/// Writes the settled status as the controller would (the next reconcile reads it back).
fn apply_settled(case: &mut Case, steps: &[Step]) -> Settled {
    let last = settled(steps.last().cloned().expect("no steps"));
    case.status = last.status.clone();
    last
}

// ---------------------------------------------------------------------------------------------
// The first step of a reconcile
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq)]
enum Before {
    NoStatus,
    Pending,
    Connected,
    Rejected,
}

impl Before {
    const ALL: [Before; 4] = [
        Before::NoStatus,
        Before::Pending,
        Before::Connected,
        Before::Rejected,
    ];

    fn status(self) -> Status {
        match self {
            Before::NoStatus => Status::default(),
            Before::Pending => status_pending(),
            Before::Connected => status_connected(),
            Before::Rejected => status_rejected(),
        }
    }
}

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
                            let recorded_id = before != Before::NoStatus;
                            let retain = policy == DeletionPolicy::Retain;

                            let expected = match (deleting, finalizer, recorded_id) {
                                // Never finalized: not ours to clean up.
                                (true, false, _) => Step::Nothing,
                                (true, true, true) if retain => release_step(ARN),
                                // Delete policy with a recorded id: delete straight away, no Get.
                                (true, true, true) => Step::Delete { id: ID.into() },
                                // The id never reached the status: look the connection up by tag.
                                (true, true, false) => Step::FindOwned {
                                    environment_name: ENV.into(),
                                },
                                // The finalizer comes before anything else.
                                (false, false, _) => Step::AddFinalizer,
                                (false, true, true) => Step::Get { id: ID.into() },
                                (false, true, false) => match adopt {
                                    Some(a) => Step::Get { id: a.into() },
                                    None => create_step(&case, UID, 0),
                                },
                            };
                            let step = case.decide(&Observed::Nothing);
                            assert_eq!(
                                step, expected,
                                "before={before:?} spec_changed={spec_changed} deleting={deleting} finalizer={finalizer} policy={policy:?} adopt={adopt:?}"
                            );
                            checked += 1;
                        }
                    }
                }
            }
        }
    }
    assert_eq!(checked, 128);
}

#[test]
fn the_finalizer_is_added_before_the_first_create() {
    let mut case = Case::new().without_finalizer();
    let mut proton = FakeProton::empty();
    let steps = reconcile(&mut case, &mut proton, now());
    assert_eq!(names(&steps), ["AddFinalizer", "Create", "Settle"]);
    assert_eq!(proton.calls, ["Create"]);

    // Whatever Proton has already said, a resource without the finalizer gets it first.
    let case = Case::new().without_finalizer().status(status_connected());
    for obs in [
        Observed::Nothing,
        got(ConnectionState::Connected),
        Observed::Gone {
            id: Some(ID.into()),
        },
    ] {
        assert_eq!(case.decide(&obs), Step::AddFinalizer, "{obs:?}");
    }
}

#[test]
fn a_new_resource_is_created_with_uid_token_spec_tags_ownership_tags_and_roles() {
    let case = Case::new().spec_with(|s| {
        s.codebuild_role_arn = Some(CODEBUILD.into());
        s.component_role_arn = Some(COMPONENT.into());
        s.tags = tags(&[("team", "payments"), ("cost-center", "42")]);
    });
    let Step::Create {
        request,
        recreation,
    } = case.decide(&Observed::Nothing)
    else {
        panic!("expected Create");
    };
    assert_eq!(recreation, 0);
    assert_eq!(request.client_token, UID);
    assert_eq!(request.environment_name, ENV);
    assert_eq!(request.management_account_id, MGMT);
    assert_eq!(
        request.roles,
        roles(Some(ROLE), Some(CODEBUILD), Some(COMPONENT))
    );
    assert_eq!(
        request.tags,
        tags(&[
            ("team", "payments"),
            ("cost-center", "42"),
            (TAG_UID, UID),
            (TAG_NAMESPACE, NAMESPACE),
            (TAG_NAME, NAME),
        ])
    );
    assert_eq!(decide::ownership_tags(&case.res()), ownership());
    assert_eq!(decide::desired_tags(&case.res()), request.tags);

    // A spec without roles or tags still carries the ownership tags.
    let bare = Case::new().spec_with(|s| {
        s.role_arn = None;
        s.tags.clear();
    });
    let Step::Create { request, .. } = bare.decide(&Observed::Nothing) else {
        panic!("expected Create");
    };
    assert_eq!(request.roles, RoleArns::default());
    assert_eq!(request.tags, ownership());
}

#[test]
fn a_connection_deleted_out_of_band_is_recreated_with_a_token_derived_from_the_uid() {
    // (recreations on record, expected token, expected recreation)
    let table = [
        (0u32, format!("{UID}-r1"), 1u32),
        (1, format!("{UID}-r2"), 2),
        (4, format!("{UID}-r5"), 5),
    ];
    for (before, token, recreation) in table {
        for state in [
            ConnectionState::Pending,
            ConnectionState::Connected,
            ConnectionState::Rejected,
        ] {
            let mut status = recorded(state, 1);
            status.recreations = before;
            let case = Case::new().status(status);
            let step = case.decide(&Observed::Gone {
                id: Some(ID.into()),
            });
            assert_eq!(
                step,
                create_step(&case, &token, recreation),
                "{state:?} after {before} re-creations"
            );
            let Step::Create { request, .. } = step else {
                unreachable!()
            };
            assert!(request.client_token.len() <= 64);
            assert!(request.client_token.chars().all(|c| c.is_ascii_graphic()));
        }
    }
}

#[test]
fn a_recreated_connection_settles_with_its_recreation_count_and_keeps_it_afterwards() {
    let mut case = Case::new().status(status_connected());
    // The recorded connection is gone; the fake holds nothing.
    let mut proton = FakeProton::empty();
    let mut observed = Observed::Nothing;
    let mut steps = Vec::new();
    loop {
        let step = case.decide(&observed);
        steps.push(step.clone());
        if matches!(step, Step::Settle(_)) {
            break;
        }
        observed = proton.exec(&step, &observed, case.status.id.as_deref());
    }
    assert_eq!(names(&steps), ["Get", "Create", "Settle"]);
    let Step::Create {
        request,
        recreation: 1,
    } = &steps[1]
    else {
        panic!("expected the first re-creation, got {:?}", steps[1]);
    };
    assert_eq!(request.client_token, format!("{UID}-r1"));
    let first = apply_settled(&mut case, &steps);
    assert_eq!(first.status.recreations, 1);
    assert_eq!(
        first.status.id.as_deref(),
        Some(format!("conn-{UID}-r1").as_str())
    );

    // The next reconcile reads the new connection back and keeps the count.
    let steps = reconcile(&mut case, &mut proton, now());
    assert_eq!(names(&steps), ["Get", "Settle"]);
    assert_eq!(settled(steps[1].clone()).status.recreations, 1);
}

#[test]
fn a_recorded_connection_is_read_with_the_recorded_id_even_when_an_adopt_annotation_is_set() {
    let case = Case::new().status(status_connected()).adopt(ADOPT_ID);
    assert_eq!(case.decide(&Observed::Nothing), Step::Get { id: ID.into() });
}

// ---------------------------------------------------------------------------------------------
// Deletion
// ---------------------------------------------------------------------------------------------

#[test]
fn deletion_deletes_or_releases_and_then_lets_the_resource_go() {
    let found = |state| {
        observed(
            conn(state),
            Some(with_ownership(&[("team", "payments")])),
            Origin::Found,
        )
    };
    let mut no_arn = status_connected();
    no_arn.arn = None;
    // (name, case, observed, expected)
    let table: Vec<(&str, Case, Observed, Step)> = vec![
        (
            "Delete, id recorded: Delete with no Get",
            Case::new().status(status_connected()).deleting(),
            Observed::Nothing,
            Step::Delete { id: ID.into() },
        ),
        (
            "Delete, PENDING recorded",
            Case::new().status(status_pending()).deleting(),
            Observed::Nothing,
            Step::Delete { id: ID.into() },
        ),
        (
            "Delete, REJECTED recorded",
            Case::new().status(status_rejected()).deleting(),
            Observed::Nothing,
            Step::Delete { id: ID.into() },
        ),
        (
            "Delete, no id: find it by its uid tag",
            Case::new().deleting(),
            Observed::Nothing,
            Step::FindOwned {
                environment_name: ENV.into(),
            },
        ),
        (
            "Delete, found by tag",
            Case::new().deleting(),
            found(ConnectionState::Pending),
            Step::Delete { id: ID.into() },
        ),
        (
            "Delete, nothing found",
            Case::new().deleting(),
            Observed::Gone { id: None },
            Step::RemoveFinalizer,
        ),
        (
            "Delete, deleted",
            Case::new().status(status_connected()).deleting(),
            Observed::Released,
            Step::RemoveFinalizer,
        ),
        (
            "Delete, recorded connection already gone: look for a re-creation once",
            Case::new().status(status_connected()).deleting(),
            Observed::Gone {
                id: Some(ID.into()),
            },
            Step::FindOwned {
                environment_name: ENV.into(),
            },
        ),
        (
            "Delete, the search found nothing either: release",
            Case::new().status(status_connected()).deleting(),
            Observed::Gone { id: None },
            Step::RemoveFinalizer,
        ),
        (
            "Retain, id recorded: untag the ownership keys",
            Case::new().status(status_connected()).deleting().retain(),
            Observed::Nothing,
            release_step(ARN),
        ),
        (
            "Retain, REJECTED recorded",
            Case::new().status(status_rejected()).deleting().retain(),
            Observed::Nothing,
            release_step(ARN),
        ),
        (
            "Retain, id but no ARN recorded: find it",
            Case::new().status(no_arn).deleting().retain(),
            Observed::Nothing,
            Step::FindOwned {
                environment_name: ENV.into(),
            },
        ),
        (
            "Retain, no id: find it",
            Case::new().deleting().retain(),
            Observed::Nothing,
            Step::FindOwned {
                environment_name: ENV.into(),
            },
        ),
        (
            "Retain, found by tag",
            Case::new().deleting().retain(),
            found(ConnectionState::Connected),
            release_step(ARN),
        ),
        (
            "Retain, released",
            Case::new().status(status_connected()).deleting().retain(),
            Observed::Released,
            Step::RemoveFinalizer,
        ),
        (
            "Retain, recorded connection already gone: look for a re-creation once",
            Case::new().status(status_connected()).deleting().retain(),
            Observed::Gone {
                id: Some(ID.into()),
            },
            Step::FindOwned {
                environment_name: ENV.into(),
            },
        ),
        (
            "Retain, nothing found",
            Case::new().deleting().retain(),
            Observed::Gone { id: None },
            Step::RemoveFinalizer,
        ),
    ];
    for (name, case, obs, expected) in table {
        assert_eq!(case.decide(&obs), expected, "{name}");
    }
}

#[test]
fn a_resource_being_deleted_without_the_finalizer_is_left_alone_whatever_was_observed() {
    for before in Before::ALL {
        for policy in [DeletionPolicy::Delete, DeletionPolicy::Retain] {
            for obs in [
                Observed::Nothing,
                got(ConnectionState::Connected),
                Observed::Gone { id: None },
                Observed::Released,
            ] {
                let case = Case::new()
                    .status(before.status())
                    .deleting()
                    .without_finalizer()
                    .spec_with(|s| s.deletion_policy = policy);
                assert_eq!(
                    case.decide(&obs),
                    Step::Nothing,
                    "{before:?} {policy:?} {obs:?}"
                );
            }
        }
    }
}

#[test]
fn retain_untags_exactly_the_three_ownership_keys() {
    let case = Case::new().status(status_connected()).deleting().retain();
    let Step::Untag {
        arn,
        mut keys,
        retain,
    } = case.decide(&Observed::Nothing)
    else {
        panic!("expected Untag");
    };
    assert_eq!(arn, ARN);
    assert!(retain);
    keys.sort();
    assert_eq!(keys, ownership_keys());
}

#[test]
fn deleting_whole_reconciles_end_with_the_finalizer_removed() {
    // (name, case, proton, expected steps, expected calls, connection left in Proton)
    let owned = || {
        FakeProton::with(
            conn(ConnectionState::Connected),
            with_ownership(&[("team", "payments")]),
        )
    };
    let table: Vec<(&str, Case, FakeProton, Vec<&str>, bool)> = vec![
        (
            "Delete with a recorded id",
            Case::new().status(status_connected()).deleting(),
            owned(),
            vec!["Delete", "RemoveFinalizer"],
            false,
        ),
        (
            "Delete after a crash before the status write",
            Case::new().deleting(),
            owned(),
            vec!["FindOwned", "Delete", "RemoveFinalizer"],
            false,
        ),
        (
            "Delete of a resource whose Create never succeeded",
            Case::new().deleting(),
            FakeProton::empty(),
            vec!["FindOwned", "RemoveFinalizer"],
            false,
        ),
        (
            "Retain with a recorded id",
            Case::new().status(status_connected()).deleting().retain(),
            owned(),
            vec!["Untag", "RemoveFinalizer"],
            true,
        ),
        (
            "Retain after a crash before the status write",
            Case::new().deleting().retain(),
            owned(),
            vec!["FindOwned", "Untag", "RemoveFinalizer"],
            true,
        ),
    ];
    for (name, mut case, mut proton, expected, kept) in table {
        let steps = reconcile(&mut case, &mut proton, now());
        assert_eq!(names(&steps), expected, "{name}");
        assert_eq!(proton.conn.is_some(), kept, "{name}");
        assert!(!proton.calls.contains(&"Get"), "{name}: no Get on deletion");
        if kept {
            assert_eq!(
                proton.tags,
                tags(&[("team", "payments")]),
                "{name}: only ownership tags removed"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// After Get: role drift, tags, settle
// ---------------------------------------------------------------------------------------------

#[test]
fn after_get_the_next_step_depends_on_state_spec_change_and_role_drift() {
    for state in [
        ConnectionState::Pending,
        ConnectionState::Connected,
        ConnectionState::Rejected,
    ] {
        for spec_changed in [false, true] {
            for drift in [false, true] {
                let case = Case::new()
                    .status(recorded(state, 1))
                    .generation(if spec_changed { 2 } else { 1 })
                    .spec_with(|s| {
                        if drift {
                            s.role_arn = Some(ROLE_2.into());
                        }
                    });
                let step = case.decide(&got(state));
                let expected = match (state, drift, spec_changed) {
                    // A REJECTED connection accepts no change: it only settles.
                    (ConnectionState::Rejected, _, _) => "Settle",
                    (_, true, _) => "Update",
                    (_, false, true) => "ListTags",
                    (_, false, false) => "Settle",
                };
                assert_eq!(
                    name_of(&step),
                    expected,
                    "{state:?} spec_changed={spec_changed} drift={drift}: {step:?}"
                );
                match step {
                    Step::Update { id, roles: r } => {
                        assert_eq!(id, ID);
                        assert_eq!(r, roles(Some(ROLE_2), None, None));
                    }
                    Step::ListTags { arn } => assert_eq!(arn, ARN),
                    _ => {}
                }
            }
        }
    }
}

#[test]
fn role_drift_is_corrected_with_the_spec_roles() {
    let r = |role: Option<&str>, cb: Option<&str>, comp: Option<&str>| roles(role, cb, comp);
    // (name, spec roles, Proton's roles, Update expected)
    let table = [
        (
            "all equal",
            r(Some(ROLE), Some(CODEBUILD), Some(COMPONENT)),
            r(Some(ROLE), Some(CODEBUILD), Some(COMPONENT)),
            false,
        ),
        (
            "roleArn changed",
            r(Some(ROLE_2), None, None),
            r(Some(ROLE), None, None),
            true,
        ),
        (
            "roleArn unset in spec: Proton's is kept",
            r(None, None, None),
            r(Some(ROLE), None, None),
            false,
        ),
        (
            "roleArn set in spec, none in Proton",
            r(Some(ROLE), None, None),
            r(None, None, None),
            true,
        ),
        (
            "codebuild added",
            r(Some(ROLE), Some(CODEBUILD), None),
            r(Some(ROLE), None, None),
            true,
        ),
        (
            "codebuild removed from the spec",
            r(Some(ROLE), None, None),
            r(Some(ROLE), Some(CODEBUILD), None),
            true,
        ),
        (
            "codebuild changed",
            r(Some(ROLE), Some(ROLE_2), None),
            r(Some(ROLE), Some(CODEBUILD), None),
            true,
        ),
        (
            "component added",
            r(Some(ROLE), None, Some(COMPONENT)),
            r(Some(ROLE), None, None),
            true,
        ),
        (
            "component removed from the spec",
            r(Some(ROLE), None, None),
            r(Some(ROLE), None, Some(COMPONENT)),
            true,
        ),
        (
            "roleArn unset, component removed",
            r(None, None, None),
            r(Some(ROLE), None, Some(COMPONENT)),
            true,
        ),
    ];
    for (name, wanted, actual, update) in table {
        for state in [
            ConnectionState::Pending,
            ConnectionState::Connected,
            ConnectionState::Rejected,
        ] {
            let case = Case::new().status(recorded(state, 1)).spec_with(|s| {
                s.role_arn = wanted.role_arn.clone();
                s.codebuild_role_arn = wanted.codebuild_role_arn.clone();
                s.component_role_arn = wanted.component_role_arn.clone();
            });
            let mut c = conn(state);
            c.roles = actual.clone();
            let step = case.decide(&observed(c, None, Origin::Recorded));
            if update && state != ConnectionState::Rejected {
                assert_eq!(
                    step,
                    Step::Update {
                        id: ID.into(),
                        roles: wanted.clone()
                    },
                    "{name} ({state:?})"
                );
            } else {
                assert!(
                    matches!(step, Step::Settle(_)),
                    "{name} ({state:?}): {step:?}"
                );
            }
        }
    }
}

#[test]
fn a_role_update_is_followed_by_settle_with_the_new_roles() {
    let mut case = Case::new()
        .status(status_connected())
        .generation(2)
        .spec_with(|s| s.role_arn = Some(ROLE_2.into()));
    let mut proton = FakeProton::with(
        conn(ConnectionState::Connected),
        with_ownership(&[("team", "payments")]),
    );
    let steps = reconcile(&mut case, &mut proton, now());
    assert_eq!(names(&steps), ["Get", "Update", "ListTags", "Settle"]);
    let s = settled(steps[3].clone());
    assert_eq!(s.status.role_arn.as_deref(), Some(ROLE_2));
    assert_eq!(
        s.status.last_modified_at.as_deref(),
        Some("2026-11-21T10:09:00Z")
    );
    assert_eq!(s.status.observed_generation, Some(2));
}

#[test]
fn an_idle_connected_resource_costs_one_get_per_resync() {
    for state in [
        ConnectionState::Connected,
        ConnectionState::Pending,
        ConnectionState::Rejected,
    ] {
        let mut case = Case::new().status(recorded(state, 1));
        let mut proton = FakeProton::with(conn(state), with_ownership(&[("team", "payments")]));
        let steps = reconcile(&mut case, &mut proton, now());
        assert_eq!(names(&steps), ["Get", "Settle"], "{state:?}");
        assert_eq!(proton.calls, ["Get"], "{state:?}");
    }
    // Decided directly: Settle straight after Get, tags never asked for.
    let case = Case::new().status(status_connected());
    assert!(matches!(
        case.decide(&got(ConnectionState::Connected)),
        Step::Settle(_)
    ));
}

#[test]
fn a_new_generation_lists_tags_then_tags_and_untags_only_what_differs() {
    let mut status = status_connected();
    status.applied_tag_keys = vec!["cost-center".into(), "gone-already".into(), "team".into()];
    let mut case = Case::new().status(status).generation(2).spec_with(|s| {
        s.tags = tags(&[("team", "platform"), ("env", "prod"), ("unchanged", "yes")])
    });
    let on_connection = {
        let mut t = tags(&[
            ("team", "payments"),
            ("cost-center", "42"),
            ("unchanged", "yes"),
            ("owner-oob", "alice"),
        ]);
        t.extend(ownership());
        t
    };
    let mut proton = FakeProton::with(conn(ConnectionState::Connected), on_connection);
    let steps = reconcile(&mut case, &mut proton, now());
    assert_eq!(names(&steps), ["Get", "ListTags", "Tag", "Untag", "Settle"]);
    assert_eq!(steps[1], Step::ListTags { arn: ARN.into() });
    assert_eq!(
        steps[2],
        Step::Tag {
            arn: ARN.into(),
            tags: tags(&[("team", "platform"), ("env", "prod")]),
        },
        "only the missing or different pairs"
    );
    assert_eq!(
        steps[3],
        Step::Untag {
            arn: ARN.into(),
            keys: vec!["cost-center".into()],
            retain: false,
        },
        "only keys applied before, gone from the spec and still on the connection"
    );
    let s = apply_settled(&mut case, &steps);
    assert_eq!(s.status.applied_tag_keys, ["env", "team", "unchanged"]);
    // The out-of-band tag is still there.
    let mut expected = tags(&[
        ("team", "platform"),
        ("env", "prod"),
        ("unchanged", "yes"),
        ("owner-oob", "alice"),
    ]);
    expected.extend(ownership());
    assert_eq!(proton.tags, expected);

    // The next reconcile is idle again.
    proton.calls.clear();
    let steps = reconcile(&mut case, &mut proton, now());
    assert_eq!(names(&steps), ["Get", "Settle"]);
}

#[test]
fn tag_differences_are_computed_against_spec_ownership_and_applied_keys() {
    // (name, spec tags, applied keys on record, tags on the connection, expected step after ListTags)
    let untag = |keys: &[&str]| Step::Untag {
        arn: ARN.into(),
        keys: keys.iter().map(|k| k.to_string()).collect(),
        retain: false,
    };
    let tag = |pairs: &[(&str, &str)]| Step::Tag {
        arn: ARN.into(),
        tags: tags(pairs),
    };
    let table: Vec<TagRow> = vec![
        (
            "in sync",
            tags(&[("team", "payments")]),
            vec!["team"],
            with_ownership(&[("team", "payments")]),
            None,
        ),
        (
            "value changed",
            tags(&[("team", "platform")]),
            vec!["team"],
            with_ownership(&[("team", "payments")]),
            Some(tag(&[("team", "platform")])),
        ),
        (
            "key added",
            tags(&[("team", "payments"), ("env", "prod")]),
            vec!["team"],
            with_ownership(&[("team", "payments")]),
            Some(tag(&[("env", "prod")])),
        ),
        (
            "ownership tags removed out of band are put back",
            tags(&[("team", "payments")]),
            vec!["team"],
            tags(&[("team", "payments"), (TAG_NAME, NAME)]),
            Some(tag(&[(TAG_UID, UID), (TAG_NAMESPACE, NAMESPACE)])),
        ),
        (
            "applied key left the spec",
            tags(&[]),
            vec!["team"],
            with_ownership(&[("team", "payments")]),
            Some(untag(&["team"])),
        ),
        (
            "applied key left the spec but is already off the connection",
            tags(&[]),
            vec!["team"],
            ownership(),
            None,
        ),
        (
            "out-of-band tag never in the spec is left alone",
            tags(&[("team", "payments")]),
            vec!["team"],
            with_ownership(&[("team", "payments"), ("owner-oob", "alice")]),
            None,
        ),
        (
            "tag with the same key as an applied one but still in the spec is kept",
            tags(&[("team", "payments")]),
            vec!["team", "env"],
            with_ownership(&[("team", "payments"), ("env", "prod")]),
            Some(untag(&["env"])),
        ),
        (
            "missing tags come before removals",
            tags(&[("env", "prod")]),
            vec!["team"],
            with_ownership(&[("team", "payments")]),
            Some(tag(&[("env", "prod")])),
        ),
    ];
    for (name, spec_tags, applied, on_connection, expected) in table {
        let mut status = status_connected();
        status.applied_tag_keys = applied.iter().map(|k| k.to_string()).collect();
        let case = Case::new()
            .status(status)
            .generation(2)
            .spec_with(|s| s.tags = spec_tags.clone());
        assert_eq!(
            case.decide(&got(ConnectionState::Connected)),
            Step::ListTags { arn: ARN.into() },
            "{name}"
        );
        let step = case.decide(&observed(
            conn(ConnectionState::Connected),
            Some(on_connection),
            Origin::Recorded,
        ));
        match expected {
            Some(e) => assert_eq!(step, e, "{name}"),
            None => {
                let s = settled(step);
                let spec_keys: Vec<String> = spec_tags.keys().cloned().collect();
                assert_eq!(s.status.applied_tag_keys, spec_keys, "{name}");
            }
        }
    }
}

#[test]
fn tags_are_not_managed_on_a_rejected_connection() {
    let mut status = status_rejected();
    status.applied_tag_keys = vec!["team".into(), "old".into()];
    let case = Case::new()
        .status(status)
        .generation(2)
        .spec_with(|s| s.tags = tags(&[("env", "prod")]));
    let s = settled(case.decide(&got(ConnectionState::Rejected)));
    assert_eq!(
        s.status.applied_tag_keys,
        ["team", "old"],
        "kept as they were"
    );
}

#[test]
fn after_a_create_the_tags_sent_are_known_so_no_list_tags_is_needed() {
    for spec_changed in [false, true] {
        let mut case = Case::new().generation(if spec_changed { 3 } else { 1 });
        let mut proton = FakeProton::empty();
        let steps = reconcile(&mut case, &mut proton, now());
        assert_eq!(names(&steps), ["Create", "Settle"]);
        assert_eq!(proton.calls, ["Create"]);
        let s = settled(steps[1].clone());
        assert_eq!(s.status.applied_tag_keys, ["team"]);
    }
}

// ---------------------------------------------------------------------------------------------
// Adoption
// ---------------------------------------------------------------------------------------------

fn adopted(c: Connection, tags: Option<Tags>) -> Observed {
    observed(c, tags, Origin::Adopted)
}

fn adoptee(state: ConnectionState) -> Connection {
    Connection {
        id: ADOPT_ID.into(),
        arn: format!(
            "arn:aws:proton:eu-west-1:{ENV_ACCOUNT}:environment-account-connection/{ADOPT_ID}"
        ),
        ..conn(state)
    }
}

#[test]
fn adoption_checks_environment_management_account_and_owner() {
    let other_env = Connection {
        environment_name: "staging".into(),
        ..adoptee(ConnectionState::Connected)
    };
    let other_mgmt = Connection {
        management_account_id: "999988887777".into(),
        ..adoptee(ConnectionState::Connected)
    };
    let both = Connection {
        environment_name: "staging".into(),
        management_account_id: "999988887777".into(),
        ..adoptee(ConnectionState::Connected)
    };
    let other_owner = tags(&[(TAG_UID, "another-uid"), ("team", "payments")]);
    // (name, observed, Some(message fragments) for a failure, or None to proceed)
    let table: Vec<AdoptionRow> = vec![
        (
            "environment differs",
            adopted(other_env, None),
            Some((
                "AdoptionMismatch",
                vec!["environmentName is \"staging\" in Proton but \"prod-eu\" in the spec"],
            )),
        ),
        (
            "management account differs",
            adopted(other_mgmt, None),
            Some((
                "AdoptionMismatch",
                vec![
                    "managementAccountId is \"999988887777\" in Proton but \"111122223333\" in the spec",
                ],
            )),
        ),
        (
            "both differ",
            adopted(both, None),
            Some((
                "AdoptionMismatch",
                vec!["environmentName", "managementAccountId"],
            )),
        ),
        (
            "owned by another resource",
            adopted(
                adoptee(ConnectionState::Connected),
                Some(other_owner.clone()),
            ),
            Some((
                "AdoptionMismatch",
                vec![
                    "owned by another resource",
                    "proton.eac.dev/uid=another-uid",
                ],
            )),
        ),
        (
            "owned by another resource, REJECTED",
            adopted(adoptee(ConnectionState::Rejected), Some(other_owner)),
            Some(("AdoptionMismatch", vec!["owned by another resource"])),
        ),
        (
            "not found",
            Observed::Gone {
                id: Some(ADOPT_ID.into()),
            },
            Some(("AdoptionNotFound", vec![ADOPT_ID, "does not exist"])),
        ),
        (
            "matches, tags unknown",
            adopted(adoptee(ConnectionState::Connected), None),
            None,
        ),
        (
            "matches, untagged",
            adopted(
                adoptee(ConnectionState::Connected),
                Some(tags(&[("team", "payments")])),
            ),
            None,
        ),
        (
            "matches, owned by this resource",
            adopted(
                adoptee(ConnectionState::Connected),
                Some(with_ownership(&[("team", "payments")])),
            ),
            None,
        ),
    ];
    for (name, obs, expected) in table {
        let case = Case::new().adopt(ADOPT_ID);
        let step = case.decide(&obs);
        match expected {
            Some((reason, fragments)) => {
                let f = failure(step);
                assert_eq!(f.reason, reason, "{name}");
                assert!(f.message.contains(ADOPT_ID), "{name}: {}", f.message);
                for fragment in fragments {
                    assert!(
                        f.message.contains(fragment),
                        "{name}: {:?} lacks {fragment:?}",
                        f.message
                    );
                }
            }
            None => assert!(!matches!(step, Step::Fail(_)), "{name}: {step:?}"),
        }
    }
}

#[test]
fn an_adopted_connection_is_tagged_as_ours_and_reported_once() {
    let mut case = Case::new().adopt(ADOPT_ID);
    let mut proton = FakeProton::with(
        adoptee(ConnectionState::Connected),
        tags(&[("legacy", "x")]),
    );
    let steps = reconcile(&mut case, &mut proton, now());
    assert_eq!(names(&steps), ["Get", "ListTags", "Tag", "Settle"]);
    assert_eq!(
        steps[2],
        Step::Tag {
            arn: adoptee(ConnectionState::Connected).arn,
            tags: with_ownership(&[("team", "payments")]),
        }
    );
    let first = apply_settled(&mut case, &steps);
    assert_eq!(first.status.id.as_deref(), Some(ADOPT_ID));
    assert_eq!(first.status.status, Some(ConnectionState::Connected));
    let reasons: Vec<&str> = first.events.iter().map(|n| n.reason).collect();
    assert_eq!(reasons, ["Adopted", "Connected"]);
    assert_eq!(
        first.events[0].note,
        format!("adopted existing connection {ADOPT_ID}")
    );
    assert!(!first.events[0].warning);
    assert_eq!(
        proton.tags.get("legacy").map(String::as_str),
        Some("x"),
        "out-of-band tag kept"
    );

    // Later reconciles read it back by the recorded id: no second Adopted, no ListTags.
    let steps = reconcile(&mut case, &mut proton, now());
    assert_eq!(names(&steps), ["Get", "Settle"]);
    assert_eq!(settled(steps[1].clone()).events, []);
}

#[test]
fn adoption_checks_the_owner_tag_before_changing_anything() {
    // Roles differ from the spec, and the connection may belong to another resource: its tags
    // must be read (and the uid tag checked) before any Update.
    for state in [
        ConnectionState::Pending,
        ConnectionState::Connected,
        ConnectionState::Rejected,
    ] {
        let case = Case::new()
            .adopt(ADOPT_ID)
            .spec_with(|s| s.codebuild_role_arn = Some(CODEBUILD.into()));
        let c = adoptee(state);
        let step = case.decide(&adopted(c.clone(), None));
        assert_eq!(step, Step::ListTags { arn: c.arn.clone() }, "{state:?}");
        let foreign = tags(&[(TAG_UID, "another-uid")]);
        assert_eq!(
            failure(case.decide(&adopted(c, Some(foreign)))).reason,
            "AdoptionMismatch",
            "{state:?}"
        );
    }

    let mut case = Case::new()
        .adopt(ADOPT_ID)
        .spec_with(|s| s.codebuild_role_arn = Some(CODEBUILD.into()));
    let mut proton = FakeProton::with(
        adoptee(ConnectionState::Connected),
        tags(&[(TAG_UID, "another-uid")]),
    );
    let steps = reconcile(&mut case, &mut proton, now());
    assert_eq!(names(&steps), ["Get", "ListTags", "Fail"]);
    assert!(!proton.calls.contains(&"Update"));
}

#[test]
fn a_vanished_adopted_connection_is_recreated_once_its_id_is_on_record() {
    let mut status = status_connected();
    status.id = Some(ADOPT_ID.into());
    let case = Case::new().status(status).adopt(ADOPT_ID);
    let step = case.decide(&Observed::Gone {
        id: Some(ADOPT_ID.into()),
    });
    assert_eq!(step, create_step(&case, &format!("{UID}-r1"), 1));
}

// ---------------------------------------------------------------------------------------------
// Settle: status, conditions, requeue, events
// ---------------------------------------------------------------------------------------------

#[test]
fn settle_records_every_status_field() {
    let case = Case::new()
        .status(status_pending())
        .spec_with(|s| s.codebuild_role_arn = Some(CODEBUILD.into()));
    let mut c = conn(ConnectionState::Connected);
    c.roles = roles(Some(ROLE), Some(CODEBUILD), None);
    c.last_modified_at = "2026-11-21T10:07:00Z".into();
    let s = settled(case.decide(&observed(c, None, Origin::Recorded)));
    let expected = Status {
        observed_generation: Some(1),
        id: Some(ID.into()),
        arn: Some(ARN.into()),
        status: Some(ConnectionState::Connected),
        environment_account_id: Some(ENV_ACCOUNT.into()),
        region: Some(DEFAULT_REGION.into()),
        requested_at: Some(REQUESTED_AT.into()),
        last_modified_at: Some("2026-11-21T10:07:00Z".into()),
        role_arn: Some(ROLE.into()),
        codebuild_role_arn: Some(CODEBUILD.into()),
        component_role_arn: None,
        applied_tag_keys: vec!["team".into()],
        recreations: 0,
        conditions: vec![
            cond(
                READY,
                true,
                "Connected",
                &format!("connection {ID} is CONNECTED"),
                1,
                now(),
            ),
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
    assert_eq!(s.status, expected);
    assert_eq!(s.requeue, RESYNC);
}

#[test]
fn the_region_is_the_spec_region_or_the_controller_default() {
    for (region, expected) in [(None, DEFAULT_REGION), (Some("us-east-1"), "us-east-1")] {
        let case = Case::new()
            .status(status_connected())
            .spec_with(|s| s.region = region.map(str::to_string));
        let s = settled(case.decide(&got(ConnectionState::Connected)));
        assert_eq!(s.status.region.as_deref(), Some(expected));
    }
}

#[test]
fn conditions_follow_the_connection_state() {
    // (state, Ready, Ready reason, Stalled, Stalled reason, message fragment)
    let table = [
        (
            ConnectionState::Pending,
            false,
            "Pending",
            false,
            "Reconciled",
            "waiting for management account 111122223333 to accept it",
        ),
        (
            ConnectionState::Connected,
            true,
            "Connected",
            false,
            "Reconciled",
            "is CONNECTED",
        ),
        (
            ConnectionState::Rejected,
            false,
            "Rejected",
            true,
            "Rejected",
            "management account 111122223333 rejected connection",
        ),
    ];
    for (state, ready, ready_reason, stalled, stalled_reason, fragment) in table {
        for before in Before::ALL {
            for spec_changed in [false, true] {
                let generation = if spec_changed { 2 } else { 1 };
                let case = Case::new().status(before.status()).generation(generation);
                let obs = observed(
                    conn(state),
                    Some(with_ownership(&[("team", "payments")])),
                    Origin::Recorded,
                );
                let s = settled(case.decide(&obs)).status;
                let what = format!("{state:?} before={before:?} spec_changed={spec_changed}");
                assert_eq!(s.status, Some(state), "{what}");
                assert_eq!(s.observed_generation, Some(generation), "{what}");
                let types: Vec<&str> = s.conditions.iter().map(|c| c.type_.as_str()).collect();
                assert_eq!(types, [READY, SYNCED, STALLED], "{what}");
                let r = condition(&s, READY);
                assert_eq!(
                    (r.status == "True", r.reason.as_str()),
                    (ready, ready_reason),
                    "{what}"
                );
                assert!(
                    r.message.contains(fragment) && r.message.contains(ID),
                    "{what}: {}",
                    r.message
                );
                let st = condition(&s, STALLED);
                assert_eq!(
                    (st.status == "True", st.reason.as_str()),
                    (stalled, stalled_reason),
                    "{what}"
                );
                let sy = condition(&s, SYNCED);
                assert_eq!(
                    (sy.status.as_str(), sy.reason.as_str()),
                    ("True", "ReconcileSuccess"),
                    "{what}"
                );
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
    // Recorded PENDING at t0; now CONNECTED: Ready flips (now), Synced/Stalled keep t0.
    let case = Case::new().status(status_pending());
    let s = settled(case.decide(&got(ConnectionState::Connected))).status;
    assert_eq!(condition(&s, READY).last_transition_time, Time(now()));
    assert_eq!(condition(&s, SYNCED).last_transition_time, Time(t0()));
    assert_eq!(condition(&s, STALLED).last_transition_time, Time(t0()));

    // Recorded CONNECTED, now REJECTED: Ready stays False->... flips from True, Stalled flips.
    let case = Case::new().status(status_connected());
    let s = settled(case.decide(&got(ConnectionState::Rejected))).status;
    assert_eq!(condition(&s, READY).last_transition_time, Time(now()));
    assert_eq!(condition(&s, STALLED).last_transition_time, Time(now()));
    assert_eq!(condition(&s, SYNCED).last_transition_time, Time(t0()));

    // Sub-second clocks are cut to whole seconds, as the API server would store them.
    let fractional = now()
        .checked_add(jiff::SignedDuration::from_millis(750))
        .unwrap();
    let case = Case::new().status(status_pending());
    let s = settled(case.decide_at(&got(ConnectionState::Connected), fractional)).status;
    assert_eq!(condition(&s, READY).last_transition_time, Time(now()));
}

#[test]
fn settling_twice_in_the_same_state_yields_the_recorded_status_and_no_events() {
    for state in [
        ConnectionState::Pending,
        ConnectionState::Connected,
        ConnectionState::Rejected,
    ] {
        let mut case = Case::new();
        let mut proton = FakeProton::empty();
        proton.create_state = state;
        let steps = reconcile(&mut case, &mut proton, now());
        let first = apply_settled(&mut case, &steps);

        let later = now()
            .checked_add(jiff::SignedDuration::from_secs(3600))
            .unwrap();
        let steps = reconcile(&mut case, &mut proton, later);
        assert_eq!(names(&steps), ["Get", "Settle"], "{state:?}");
        let second = settled(steps[1].clone());
        assert_eq!(
            second.status, first.status,
            "{state:?}: the controller writes nothing"
        );
        assert_eq!(second.status, case.status, "{state:?}");
        assert_eq!(second.events, [], "{state:?}");
    }
}

#[test]
fn requeue_is_the_resync_period_except_for_pending_which_backs_off_with_age() {
    // (state, requested_at, seconds after 10:00:00, expected requeue)
    let table: Vec<(ConnectionState, &str, i64, Duration)> = vec![
        (ConnectionState::Pending, REQUESTED_AT, 0, PENDING_POLL),
        (ConnectionState::Pending, REQUESTED_AT, 60, PENDING_POLL),
        (ConnectionState::Pending, REQUESTED_AT, 300, PENDING_POLL),
        (
            ConnectionState::Pending,
            REQUESTED_AT,
            600,
            Duration::from_secs(60),
        ),
        (
            ConnectionState::Pending,
            REQUESTED_AT,
            3000,
            Duration::from_secs(300),
        ),
        (ConnectionState::Pending, REQUESTED_AT, 6000, RESYNC),
        (ConnectionState::Pending, REQUESTED_AT, 86_400, RESYNC),
        // Clock skew: a request "in the future" is young.
        (
            ConnectionState::Pending,
            "2026-11-21T11:00:00Z",
            0,
            PENDING_POLL,
        ),
        // An unreadable timestamp is treated as young.
        (ConnectionState::Pending, "not a time", 86_400, PENDING_POLL),
        (ConnectionState::Connected, REQUESTED_AT, 0, RESYNC),
        (ConnectionState::Connected, REQUESTED_AT, 86_400, RESYNC),
        (ConnectionState::Rejected, REQUESTED_AT, 0, RESYNC),
        (ConnectionState::Rejected, REQUESTED_AT, 86_400, RESYNC),
    ];
    for (state, requested_at, after, expected) in table {
        let case = Case::new().status(recorded(state, 1));
        let mut c = conn(state);
        c.requested_at = requested_at.into();
        let s = settled(case.decide_at(&observed(c, None, Origin::Recorded), at(after)));
        assert_eq!(
            s.requeue, expected,
            "{state:?} requested {requested_at}, {after}s later"
        );
    }

    // Backing off is monotonic and bounded.
    let case = Case::new().status(status_pending());
    let mut last = Duration::ZERO;
    for after in (0..20_000).step_by(250) {
        let s = settled(case.decide_at(&got(ConnectionState::Pending), at(after)));
        assert!(
            s.requeue >= last && s.requeue >= PENDING_POLL && s.requeue <= RESYNC,
            "{after}s: {:?}",
            s.requeue
        );
        last = s.requeue;
    }
    assert_eq!(last, RESYNC);
}

#[test]
fn a_poll_interval_longer_than_the_resync_period_wins() {
    let case = Case::new().status(status_pending());
    let short = Settings {
        resync: Duration::from_secs(10),
        pending_poll: PENDING_POLL,
        default_region: DEFAULT_REGION.into(),
    };
    for after in [0, 600, 86_400] {
        let s = settled(decide(
            &case.res(),
            &got(ConnectionState::Pending),
            &short,
            at(after),
        ));
        assert_eq!(s.requeue, PENDING_POLL);
    }
}

#[test]
fn events_announce_state_transitions_once() {
    // (name, status before, origin, state now, expected (reason, warning) list)
    let table: Vec<TransitionRow> = vec![
        (
            "created PENDING",
            Status::default(),
            Origin::Created { recreation: 0 },
            ConnectionState::Pending,
            vec![],
        ),
        (
            "created and accepted at once",
            Status::default(),
            Origin::Created { recreation: 0 },
            ConnectionState::Connected,
            vec![("Connected", false)],
        ),
        (
            "still PENDING",
            status_pending(),
            Origin::Recorded,
            ConnectionState::Pending,
            vec![],
        ),
        (
            "PENDING -> CONNECTED",
            status_pending(),
            Origin::Recorded,
            ConnectionState::Connected,
            vec![("Connected", false)],
        ),
        (
            "PENDING -> REJECTED",
            status_pending(),
            Origin::Recorded,
            ConnectionState::Rejected,
            vec![("Rejected", true)],
        ),
        (
            "still CONNECTED",
            status_connected(),
            Origin::Recorded,
            ConnectionState::Connected,
            vec![],
        ),
        (
            "still REJECTED",
            status_rejected(),
            Origin::Recorded,
            ConnectionState::Rejected,
            vec![],
        ),
        (
            "re-created after CONNECTED, PENDING again",
            status_connected(),
            Origin::Created { recreation: 1 },
            ConnectionState::Pending,
            vec![],
        ),
        (
            "adopted PENDING",
            Status::default(),
            Origin::Adopted,
            ConnectionState::Pending,
            vec![("Adopted", false)],
        ),
        (
            "adopted CONNECTED",
            Status::default(),
            Origin::Adopted,
            ConnectionState::Connected,
            vec![("Adopted", false), ("Connected", false)],
        ),
        (
            "adopted REJECTED",
            Status::default(),
            Origin::Adopted,
            ConnectionState::Rejected,
            vec![("Adopted", false), ("Rejected", true)],
        ),
    ];
    for (name, status, origin, state, expected) in table {
        let case = Case::new().status(status);
        let mut c = conn(state);
        if origin == Origin::Adopted {
            c = adoptee(state);
        }
        let obs = observed(c, Some(with_ownership(&[("team", "payments")])), origin);
        let events = settled(case.decide(&obs)).events;
        let got: Vec<(&str, bool)> = events.iter().map(|n| (n.reason, n.warning)).collect();
        assert_eq!(got, expected, "{name}");
        for n in &events {
            assert!(n.note.contains(&obs_id(&obs)), "{name}: {}", n.note);
        }
    }
}

fn obs_id(obs: &Observed) -> String {
    match obs {
        Observed::Connection { connection, .. } => connection.id.clone(),
        _ => String::new(),
    }
}

// ---------------------------------------------------------------------------------------------
// Out-of-band deletion reported
// ---------------------------------------------------------------------------------------------

#[test]
fn a_vanished_connection_is_reported_not_found_with_its_record_kept() {
    let case = Case::new().status(status_connected());
    let s = status_vanished(&case.res(), ID, now());
    assert_eq!(
        s.id.as_deref(),
        Some(ID),
        "the old id stays until the re-creation is on record"
    );
    assert_eq!(s.status, Some(ConnectionState::Connected));
    let ready = condition(&s, READY);
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "NotFound")
    );
    assert!(ready.message.contains(ID));
    assert_eq!(ready.last_transition_time, Time(now()));
    let synced = condition(&s, SYNCED);
    assert_eq!(
        (synced.status.as_str(), synced.reason.as_str()),
        ("False", "NotFound")
    );
    let stalled = condition(&s, STALLED);
    assert_eq!(stalled.status, "False");
    assert_eq!(stalled.last_transition_time, Time(t0()));
    let note = vanished_note(ID);
    assert_eq!(note.reason, "NotFound");
    assert!(note.warning && note.note.contains(ID));
}

// ---------------------------------------------------------------------------------------------
// Errors: status, news, retry
// ---------------------------------------------------------------------------------------------

fn proton_error(class: ErrorClass, code: &str, message: &str) -> ProtonError {
    ProtonError {
        operation: "GetEnvironmentAccountConnection",
        class,
        code: code.into(),
        message: message.into(),
    }
}

/// (class, code, message, reason, terminal for the generation (Stalled), Ready kept when it existed)
fn error_table() -> Vec<(
    ErrorClass,
    &'static str,
    &'static str,
    &'static str,
    bool,
    bool,
)> {
    vec![
        (
            ErrorClass::Throttled,
            "ThrottlingException",
            "Rate exceeded",
            "Throttled",
            false,
            true,
        ),
        (
            ErrorClass::Transient,
            "InternalServerException",
            "Internal failure",
            "AwsUnavailable",
            false,
            true,
        ),
        (
            ErrorClass::AccessDenied,
            "AccessDeniedException",
            "User is not authorized to perform proton:GetEnvironmentAccountConnection",
            "AccessDenied",
            true,
            false,
        ),
        (
            ErrorClass::Validation,
            "ValidationException",
            "roleArn is not a valid ARN",
            "InvalidSpec",
            true,
            false,
        ),
        (
            ErrorClass::QuotaExceeded,
            "ServiceQuotaExceededException",
            "Too many environment account connections",
            "QuotaExceeded",
            true,
            false,
        ),
        (
            ErrorClass::Conflict,
            "ConflictException",
            "Connection is being deleted",
            "Conflict",
            true,
            false,
        ),
        (
            ErrorClass::NotFound,
            "ResourceNotFoundException",
            "Environment prod-eu not found",
            "NotFound",
            true,
            false,
        ),
        (
            ErrorClass::Other,
            "WeirdException",
            "Something odd",
            "AwsError",
            false,
            true,
        ),
    ]
}

#[test]
fn each_error_class_is_reported_in_the_conditions_with_the_aws_message() {
    for (class, code, message, reason, terminal, ready_kept) in error_table() {
        let error = proton_error(class, code, message);
        let problem = Problem::from(&error);
        assert_eq!(problem.reason, reason, "{code}");
        assert_eq!(
            problem.message,
            format!("GetEnvironmentAccountConnection: {message}"),
            "{code}"
        );
        assert_eq!(problem.retry, class.retry(), "{code}");

        for before in Before::ALL {
            let case = Case::new().status(before.status());
            let (s, news) = status_after_problem(
                &case.res(),
                &Observed::Nothing,
                &problem,
                &settings(),
                now(),
            );
            let what = format!("{code} before={before:?}");
            assert!(news, "{what}: first time is news");
            assert_eq!(s.observed_generation, Some(1), "{what}");
            assert_eq!(s.id, case.status.id, "{what}: record kept");
            assert_eq!(s.status, case.status.status, "{what}: record kept");

            let synced = condition(&s, SYNCED);
            assert_eq!(
                (synced.status.as_str(), synced.reason.as_str()),
                ("False", reason),
                "{what}"
            );
            assert!(
                synced.message.contains(message),
                "{what}: {}",
                synced.message
            );

            let stalled = condition(&s, STALLED);
            assert_eq!(stalled.status == "True", terminal, "{what}: Stalled");
            if terminal {
                assert_eq!(stalled.reason, reason, "{what}");
                assert!(stalled.message.contains(message), "{what}");
            } else {
                assert_eq!(stalled.reason, "Retrying", "{what}");
            }

            let ready = condition(&s, READY);
            match (ready_kept, case.status.condition(READY)) {
                (true, Some(prev)) => {
                    assert_eq!(ready.status, prev.status, "{what}: Ready kept");
                    assert_eq!(ready.reason, prev.reason, "{what}: Ready kept");
                    assert_eq!(ready.message, prev.message, "{what}: Ready kept");
                    assert_eq!(
                        ready.last_transition_time, prev.last_transition_time,
                        "{what}"
                    );
                }
                (true, None) => {
                    assert_eq!(
                        (ready.status.as_str(), ready.reason.as_str()),
                        ("False", "Creating"),
                        "{what}"
                    );
                    assert!(ready.message.contains(message), "{what}");
                }
                (false, _) => {
                    assert_eq!(
                        (ready.status.as_str(), ready.reason.as_str()),
                        ("False", reason),
                        "{what}"
                    );
                    assert!(ready.message.contains(message), "{what}");
                }
            }
        }
    }
}

#[test]
fn a_passing_fault_does_not_make_a_connected_resource_flap() {
    let case = Case::new().status(status_connected());
    let problem = Problem::from(&proton_error(
        ErrorClass::Throttled,
        "ThrottlingException",
        "Rate exceeded",
    ));
    let (s, _) = status_after_problem(
        &case.res(),
        &Observed::Nothing,
        &problem,
        &settings(),
        now(),
    );
    let ready = condition(&s, READY);
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("True", "Connected")
    );
    assert_eq!(ready.last_transition_time, Time(t0()));
}

#[test]
fn the_same_error_twice_is_news_only_once() {
    for (class, code, message, ..) in error_table() {
        let problem = Problem::from(&proton_error(class, code, message));
        let mut case = Case::new().status(status_connected());
        let (first, news) = status_after_problem(
            &case.res(),
            &Observed::Nothing,
            &problem,
            &settings(),
            now(),
        );
        assert!(news, "{code}");
        case.status = first.clone();
        let (second, news) = status_after_problem(
            &case.res(),
            &Observed::Nothing,
            &problem,
            &settings(),
            at(900),
        );
        assert!(!news, "{code}: repeated");
        assert_eq!(second, first, "{code}: nothing to write the second time");

        // Another message or another class is news again.
        let other_message = Problem {
            message: format!("{} (again, differently)", problem.message),
            ..problem.clone()
        };
        assert!(
            status_after_problem(
                &case.res(),
                &Observed::Nothing,
                &other_message,
                &settings(),
                now()
            )
            .1,
            "{code}"
        );
        let other_class = Problem {
            reason: "SomethingElse",
            ..problem.clone()
        };
        assert!(
            status_after_problem(
                &case.res(),
                &Observed::Nothing,
                &other_class,
                &settings(),
                now()
            )
            .1,
            "{code}"
        );
    }

    // A success in between makes the same error news again.
    let problem = Problem::from(&proton_error(
        ErrorClass::Throttled,
        "ThrottlingException",
        "Rate exceeded",
    ));
    let case = Case::new().status(status_connected());
    assert!(
        status_after_problem(
            &case.res(),
            &Observed::Nothing,
            &problem,
            &settings(),
            now()
        )
        .1
    );
}

#[test]
fn a_long_aws_message_repeated_is_not_news() {
    // Condition messages are cut to 1 KiB; the comparison must not see that cut as a change.
    let long = format!("1 validation error detected: {}", "x".repeat(3000));
    let problem = Problem::from(&proton_error(
        ErrorClass::Validation,
        "ValidationException",
        &long,
    ));
    let mut case = Case::new().status(status_connected());
    let (first, news) = status_after_problem(
        &case.res(),
        &Observed::Nothing,
        &problem,
        &settings(),
        now(),
    );
    assert!(news);
    assert!(condition(&first, SYNCED).message.len() < long.len());
    case.status = first;
    let (_, news) = status_after_problem(
        &case.res(),
        &Observed::Nothing,
        &problem,
        &settings(),
        now(),
    );
    assert!(!news, "the same long error twice is reported once");
}

#[test]
fn a_decision_failure_is_terminal() {
    let case = Case::new().adopt(ADOPT_ID);
    let f = failure(case.decide(&Observed::Gone {
        id: Some(ADOPT_ID.into()),
    }));
    let problem = Problem::from(&f);
    assert_eq!(problem.retry, Retry::Terminal);
    assert_eq!(problem.reason, "AdoptionNotFound");
    let (s, news) = status_after_problem(
        &case.res(),
        &Observed::Gone {
            id: Some(ADOPT_ID.into()),
        },
        &problem,
        &settings(),
        now(),
    );
    assert!(news);
    assert_eq!(s.id, None);
    assert_eq!(condition(&s, STALLED).status, "True");
    assert_eq!(condition(&s, READY).reason, "AdoptionNotFound");
    assert_eq!(condition(&s, SYNCED).message, f.message);
}

#[test]
fn a_connection_created_in_this_reconcile_is_recorded_even_though_a_later_step_failed() {
    let problem = Problem::from(&proton_error(
        ErrorClass::Throttled,
        "ThrottlingException",
        "Rate exceeded",
    ));
    for recreation in [0u32, 3] {
        let mut c = conn(ConnectionState::Pending);
        c.id = "new-connection".into();
        c.arn =
            "arn:aws:proton:eu-west-1:444455556666:environment-account-connection/new-connection"
                .into();
        c.roles = roles(Some(ROLE), Some(CODEBUILD), None);
        let case = Case::new().spec_with(|s| s.region = Some("us-west-2".into()));
        let obs = observed(
            c.clone(),
            Some(with_ownership(&[("team", "payments")])),
            Origin::Created { recreation },
        );
        let (s, _) = status_after_problem(&case.res(), &obs, &problem, &settings(), now());
        assert_eq!(s.id.as_deref(), Some("new-connection"));
        assert_eq!(s.arn.as_deref(), Some(c.arn.as_str()));
        assert_eq!(s.status, Some(ConnectionState::Pending));
        assert_eq!(s.environment_account_id.as_deref(), Some(ENV_ACCOUNT));
        assert_eq!(s.region.as_deref(), Some("us-west-2"));
        assert_eq!(s.requested_at.as_deref(), Some(REQUESTED_AT));
        assert_eq!(s.last_modified_at.as_deref(), Some(MODIFIED_AT));
        assert_eq!(s.role_arn.as_deref(), Some(ROLE));
        assert_eq!(s.codebuild_role_arn.as_deref(), Some(CODEBUILD));
        assert_eq!(s.recreations, recreation);
        assert_eq!(s.observed_generation, Some(1));
        assert_eq!(condition(&s, SYNCED).status, "False");

        // The next reconcile reads it back instead of creating another one.
        let next = Case::new().status(s);
        assert_eq!(
            next.decide(&Observed::Nothing),
            Step::Get {
                id: "new-connection".into()
            }
        );
    }

    // A connection found or read back is recorded too; an adopted one is not (it was not
    // verified yet).
    let case = Case::new().status(status_connected());
    let mut c = conn(ConnectionState::Connected);
    c.last_modified_at = "2026-11-21T10:08:00Z".into();
    let (s, _) = status_after_problem(
        &case.res(),
        &observed(c, None, Origin::Recorded),
        &problem,
        &settings(),
        now(),
    );
    assert_eq!(s.last_modified_at.as_deref(), Some("2026-11-21T10:08:00Z"));

    let case = Case::new().adopt(ADOPT_ID);
    let (s, _) = status_after_problem(
        &case.res(),
        &adopted(adoptee(ConnectionState::Connected), None),
        &problem,
        &settings(),
        now(),
    );
    assert_eq!(s.id, None);
    assert_eq!(s.status, None);
}

#[test]
fn retries_back_off_exponentially_with_jitter_and_a_cap() {
    let backoff = Problem {
        reason: "Throttled",
        message: "Rate exceeded".into(),
        retry: Retry::Backoff,
    };
    let s = settings();
    // (attempt, un-jittered delay)
    let table = [
        (0u32, 1u64),
        (1, 1),
        (2, 2),
        (3, 4),
        (4, 8),
        (5, 16),
        (6, 32),
        (7, 64),
        (8, 128),
        (9, 256),
        (10, 300),
        (11, 300),
        (17, 300),
        (40, 300),
        (u32::MAX, 300),
    ];
    for (attempt, secs) in table {
        let full = Duration::from_secs(secs);
        let low = retry_after(&backoff, attempt, &s, 0.0);
        let high = retry_after(&backoff, attempt, &s, 0.999_999);
        assert_eq!(
            low,
            full / 2,
            "attempt {attempt}: the lower bound is half the delay"
        );
        assert!(
            high < full && high >= full.mul_f64(0.999),
            "attempt {attempt}: {high:?}"
        );
        for jitter in [0.1, 0.25, 0.5, 0.75, 0.9] {
            let d = retry_after(&backoff, attempt, &s, jitter);
            assert!(
                d >= low && d <= high,
                "attempt {attempt} jitter {jitter}: {d:?}"
            );
        }
        // Out-of-range jitter is clamped.
        assert_eq!(retry_after(&backoff, attempt, &s, -3.0), low);
        assert_eq!(retry_after(&backoff, attempt, &s, 7.0), full);
    }
    // Growth is monotonic for a fixed jitter.
    let mut last = Duration::ZERO;
    for attempt in 1..30 {
        let d = retry_after(&backoff, attempt, &s, 0.5);
        assert!(d >= last);
        last = d;
    }
}

#[test]
fn access_denied_is_retried_slowly_and_terminal_errors_wait_for_the_resync() {
    for (class, code, message, ..) in error_table() {
        let problem = Problem::from(&proton_error(class, code, message));
        let d = retry_after(&problem, 1, &settings(), 0.5);
        let d_later = retry_after(&problem, 12, &settings(), 0.5);
        match class.retry() {
            Retry::Backoff => {
                assert!(d < Duration::from_secs(2), "{code}: {d:?}");
                assert!(d_later > d, "{code}");
            }
            Retry::Slow => {
                assert_eq!(class, ErrorClass::AccessDenied);
                assert_eq!(d, Duration::from_secs(300), "{code}");
                assert_eq!(d_later, d, "{code}: no growth");
            }
            Retry::Terminal => {
                assert_eq!(d, RESYNC, "{code}");
                assert_eq!(d_later, RESYNC, "{code}");
            }
        }
    }
    // Slow never exceeds the resync period, and never drops below a second.
    let slow = Problem {
        reason: "AccessDenied",
        message: String::new(),
        retry: Retry::Slow,
    };
    for (resync, expected) in [(600, 300), (120, 120), (0, 1)] {
        let s = Settings {
            resync: Duration::from_secs(resync),
            ..settings()
        };
        assert_eq!(
            retry_after(&slow, 1, &s, 0.0),
            Duration::from_secs(expected),
            "resync {resync}s"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Events of mutating steps, client tokens
// ---------------------------------------------------------------------------------------------

#[test]
fn every_mutating_step_is_announced_by_an_event() {
    let created = |id: &str| {
        let mut c = conn(ConnectionState::Pending);
        c.id = id.into();
        observed(c, None, Origin::Created { recreation: 0 })
    };
    let case = Case::new();
    let Step::Create { request, .. } = case.decide(&Observed::Nothing) else {
        panic!("expected Create");
    };
    // (step, result, Some((reason, note)) or None)
    let table: Vec<StepEventRow> = vec![
        (
            Step::Create {
                request: request.clone(),
                recreation: 0,
            },
            created("c-1"),
            Some(("Created", "created connection c-1".into())),
        ),
        (
            Step::Create {
                request: request.clone(),
                recreation: 2,
            },
            created("c-2"),
            Some((
                "Recreated",
                "re-created connection as c-2 (re-creation 2) after it was deleted outside the controller".into(),
            )),
        ),
        (
            Step::Update {
                id: ID.into(),
                roles: roles(Some(ROLE), None, Some(COMPONENT)),
            },
            got(ConnectionState::Connected),
            Some((
                "Updated",
                format!("updated the role ARNs of connection {ID}: roleArn={ROLE}, codebuildRoleArn=-, componentRoleArn={COMPONENT}"),
            )),
        ),
        (
            Step::Tag {
                arn: ARN.into(),
                tags: tags(&[("team", "platform"), ("env", "prod")]),
            },
            got(ConnectionState::Connected),
            Some(("TagsUpdated", "tagged connection with env, team".into())),
        ),
        (
            Step::Untag {
                arn: ARN.into(),
                keys: vec!["cost-center".into(), "old".into()],
                retain: false,
            },
            got(ConnectionState::Connected),
            Some(("TagsUpdated", "untagged cost-center, old from the connection".into())),
        ),
        (
            release_step(ARN),
            Observed::Released,
            Some((
                "Retained",
                format!("kept connection {ARN} in Proton (deletionPolicy: Retain) and removed the ownership tags"),
            )),
        ),
        (
            Step::Delete { id: ID.into() },
            Observed::Released,
            Some(("Deleted", format!("deleted connection {ID}"))),
        ),
        (Step::AddFinalizer, Observed::Nothing, None),
        (Step::Get { id: ID.into() }, got(ConnectionState::Connected), None),
        (
            Step::FindOwned {
                environment_name: ENV.into(),
            },
            Observed::Gone { id: None },
            None,
        ),
        (Step::ListTags { arn: ARN.into() }, got(ConnectionState::Connected), None),
        (Step::RemoveFinalizer, Observed::Nothing, None),
        (Step::Nothing, Observed::Nothing, None),
        (
            Step::Fail(Failure {
                reason: "AdoptionMismatch",
                message: "x".into(),
            }),
            Observed::Nothing,
            None,
        ),
        (
            settle_step_for_event_table(),
            got(ConnectionState::Connected),
            None,
        ),
    ];
    for (step, result, expected) in table {
        let note = event_for(&step, &result);
        match expected {
            Some((reason, text)) => {
                assert_eq!(
                    note,
                    Some(Note {
                        reason,
                        note: text,
                        warning: false
                    }),
                    "{}",
                    name_of(&step)
                );
            }
            None => assert_eq!(note, None, "{}", name_of(&step)),
        }
    }
}

fn settle_step_for_event_table() -> Step {
    Case::new()
        .status(status_connected())
        .decide(&got(ConnectionState::Connected))
}

#[test]
fn client_tokens_are_the_uid_then_derived_and_always_fit_proton() {
    let table: Vec<(&str, u32, String)> = vec![
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
    let long_uids = [
        "u".repeat(60),
        "u".repeat(64),
        "v".repeat(200),
        format!("{}ü", "w".repeat(70)),
    ];
    for uid in [UID.to_string()].iter().chain(long_uids.iter()) {
        let mut seen = std::collections::BTreeSet::new();
        for recreation in (0..50).chain([1_000, 65_535, u32::MAX]) {
            let token = client_token(uid, recreation);
            assert!(!token.is_empty() || uid.is_empty());
            assert!(
                token.len() <= 64,
                "{uid} #{recreation}: {} chars",
                token.len()
            );
            assert!(token.chars().all(|c| ('!'..='~').contains(&c)), "{token:?}");
            assert!(
                seen.insert(token.clone()),
                "{uid:.10}... #{recreation}: token {token} repeats"
            );
            assert_eq!(client_token(uid, recreation), token, "deterministic");
            if recreation > 0 {
                assert!(token.ends_with(&format!("-r{recreation}")), "{token}");
            }
        }
    }
    // A uid of exactly 64 characters is used as is for the first connection.
    assert_eq!(client_token(&"u".repeat(64), 0), "u".repeat(64));
    assert_eq!(client_token(&"v".repeat(200), 0), "v".repeat(64));
}

#[test]
fn only_proton_changes_count_as_mutations_and_a_repeated_one_is_reported_not_applied() {
    let create = Case::new().decide(&Observed::Nothing);
    // (step, mutation, operation named by the failure)
    let table: Vec<(Step, bool, &str)> = vec![
        (create, true, "CreateEnvironmentAccountConnection"),
        (
            Step::Update {
                id: ID.into(),
                roles: roles(Some(ROLE_2), None, None),
            },
            true,
            "UpdateEnvironmentAccountConnection",
        ),
        (
            Step::Tag {
                arn: ARN.into(),
                tags: tags(&[("team", "platform")]),
            },
            true,
            "TagResource",
        ),
        (
            Step::Untag {
                arn: ARN.into(),
                keys: vec!["team".into()],
                retain: false,
            },
            true,
            "UntagResource",
        ),
        (release_step(ARN), true, "UntagResource"),
        (
            Step::Delete { id: ID.into() },
            true,
            "DeleteEnvironmentAccountConnection",
        ),
        (Step::AddFinalizer, false, ""),
        (Step::Get { id: ID.into() }, false, ""),
        (
            Step::FindOwned {
                environment_name: ENV.into(),
            },
            false,
            "",
        ),
        (Step::ListTags { arn: ARN.into() }, false, ""),
        (Step::RemoveFinalizer, false, ""),
        (Step::Nothing, false, ""),
        (settle_step_for_event_table(), false, ""),
    ];
    for (step, mutation, operation) in table {
        assert_eq!(step.is_mutation(), mutation, "{}", name_of(&step));
        if mutation {
            let f = decide::not_applied(&step);
            assert_eq!(f.reason, "NotApplied", "{}", name_of(&step));
            assert!(
                f.message.contains(operation),
                "{}: {}",
                name_of(&step),
                f.message
            );
            assert_eq!(Problem::from(&f).retry, Retry::Terminal);
        }
    }
}
