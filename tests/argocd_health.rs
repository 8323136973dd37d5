//! The Argo CD health check shipped with the chart
//! (`charts/eac-controller/argocd/health.lua`), run the way Argo CD runs it:
//! the live object converted from JSON to a Lua table and set as the global
//! `obj`, the script's returned table read for `status` and `message`.
//! Argo CD embeds gopher-lua (Lua 5.1), so mlua is built with `lua51`.

use mlua::{Lua, LuaSerdeExt, Table};
use serde_json::{Value, json};

const HEALTH_LUA: &str = include_str!("../charts/eac-controller/argocd/health.lua");
const ARGOCD_CM: &str = include_str!("../charts/eac-controller/argocd/argocd-cm.yaml");
/// The argocd-cm keys, one for each kind, all with the same script.
const ARGOCD_KEYS: [&str; 3] = [
    "resource.customizations.health.proton.eac.dev_EnvironmentAccountConnection",
    "resource.customizations.health.proton.eac.dev_ConnectionAcceptancePolicy",
    "resource.customizations.health.proton.eac.dev_AccountMapping",
];

/// Argo CD's status values for `hs.status`.
const ARGO_STATUSES: [&str; 6] = [
    "Healthy",
    "Progressing",
    "Degraded",
    "Suspended",
    "Missing",
    "Unknown",
];

fn health(obj: &Value) -> (String, String) {
    let lua = Lua::new();
    // JSON null becomes nil, as in Argo CD's conversion of unstructured objects.
    let options = mlua::serde::SerializeOptions::new()
        .serialize_none_to_null(false)
        .serialize_unit_to_null(false);
    let value = lua
        .to_value_with(obj, options)
        .expect("object converts to Lua");
    lua.globals().set("obj", value).expect("set obj");
    let hs: Table = lua
        .load(HEALTH_LUA)
        .set_name("health.lua")
        .eval()
        .expect("health.lua runs and returns a table");
    let status: String = hs.get("status").expect("hs.status is a string");
    let message: String = hs.get("message").expect("hs.message is a string");
    assert!(
        ARGO_STATUSES.contains(&status.as_str()),
        "unknown Argo CD health status {status:?}"
    );
    (status, message)
}

fn condition(type_: &str, status: &str, reason: &str, message: &str, generation: i64) -> Value {
    json!({
        "type": type_,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": "2026-11-21T10:05:00Z",
        "observedGeneration": generation,
    })
}

/// A resource at `generation` with the given status (or none).
fn eac(generation: i64, status: Option<Value>) -> Value {
    let mut obj = json!({
        "apiVersion": "proton.eac.dev/v1alpha1",
        "kind": "EnvironmentAccountConnection",
        "metadata": {
            "name": "prod-eu",
            "namespace": "platform",
            "uid": "6f0c7a4e-3d7c-4a43-9a39-2d0f1f3f8b11",
            "generation": generation,
            "creationTimestamp": "2026-11-21T10:00:00Z",
            "finalizers": ["proton.eac.dev/finalizer"],
        },
        "spec": {
            "environmentName": "prod-eu",
            "managementAccountId": "111122223333",
            "roleArn": "arn:aws:iam::444455556666:role/proton-env",
            "deletionPolicy": "Delete",
        },
    });
    if let Some(status) = status {
        obj["status"] = status;
    }
    obj
}

fn status(connection_status: &str, generation: i64, conditions: Vec<Value>) -> Value {
    json!({
        "observedGeneration": generation,
        "id": "2f6c1e7a-6c1b-4c34-8d9e-0c2b7b1f5a10",
        "arn": "arn:aws:proton:eu-west-1:444455556666:environment-account-connection/2f6c1e7a-6c1b-4c34-8d9e-0c2b7b1f5a10",
        "status": connection_status,
        "environmentAccountId": "444455556666",
        "requestedAt": "2026-11-21T10:00:00Z",
        "lastModifiedAt": "2026-11-21T10:05:00Z",
        "conditions": conditions,
    })
}

#[test]
fn connected_and_ready_is_healthy() {
    let obj = eac(
        3,
        Some(status(
            "CONNECTED",
            3,
            vec![
                condition("Ready", "True", "Connected", "Connection is CONNECTED", 3),
                condition("Synced", "True", "ReconcileSuccess", "", 3),
                condition("Stalled", "False", "ReconcileSuccess", "", 3),
            ],
        )),
    );
    assert_eq!(
        health(&obj),
        ("Healthy".into(), "Connection is CONNECTED".into())
    );
}

#[test]
fn stalled_is_degraded_with_the_stalled_message() {
    let message = "User: arn:aws:sts::444455556666:assumed-role/eac/x is not authorized to perform: \
                   proton:CreateEnvironmentAccountConnection";
    let obj = eac(
        1,
        Some(status(
            "",
            1,
            vec![
                condition("Ready", "False", "AccessDenied", "Creating failed", 1),
                condition("Synced", "False", "AccessDenied", message, 1),
                condition("Stalled", "True", "AccessDenied", message, 1),
            ],
        )),
    );
    assert_eq!(health(&obj), ("Degraded".into(), message.into()));
}

#[test]
fn rejected_is_degraded() {
    let obj = eac(
        2,
        Some(status(
            "REJECTED",
            2,
            vec![
                condition(
                    "Ready",
                    "False",
                    "Rejected",
                    "The management account 111122223333 rejected the connection",
                    2,
                ),
                condition("Synced", "True", "ReconcileSuccess", "", 2),
                condition("Stalled", "False", "Rejected", "", 2),
            ],
        )),
    );
    assert_eq!(
        health(&obj),
        (
            "Degraded".into(),
            "The management account 111122223333 rejected the connection".into()
        )
    );

    // REJECTED with no conditions at all still reads as Degraded.
    let bare = eac(
        2,
        Some(json!({ "observedGeneration": 2, "status": "REJECTED" })),
    );
    assert_eq!(health(&bare).0, "Degraded");
}

#[test]
fn deleting_is_progressing() {
    let mut obj = eac(
        3,
        Some(status(
            "CONNECTED",
            3,
            vec![
                condition("Ready", "False", "Deleting", "", 3),
                condition("Synced", "True", "ReconcileSuccess", "", 3),
                condition("Stalled", "False", "ReconcileSuccess", "", 3),
            ],
        )),
    );
    obj["metadata"]["deletionTimestamp"] = json!("2026-11-22T08:00:00Z");
    assert_eq!(health(&obj), ("Progressing".into(), "Deleting".into()));

    // Deleting wins even before the controller has noticed (still Ready=True).
    let mut fresh = eac(
        3,
        Some(status(
            "CONNECTED",
            3,
            vec![condition(
                "Ready",
                "True",
                "Connected",
                "Connection is CONNECTED",
                3,
            )],
        )),
    );
    fresh["metadata"]["deletionTimestamp"] = json!("2026-11-22T08:00:00Z");
    let (state, message) = health(&fresh);
    assert_eq!(state, "Progressing");
    assert!(message.starts_with("Deleting"), "{message}");
}

#[test]
fn no_status_is_progressing() {
    let (state, message) = health(&eac(1, None));
    assert_eq!(state, "Progressing");
    assert!(!message.is_empty());

    // A status with nothing in it yet (and a JSON null conditions list).
    let empty = eac(1, Some(json!({ "conditions": null })));
    assert_eq!(health(&empty).0, "Progressing");
}

#[test]
fn pending_is_progressing_with_the_ready_message() {
    let obj = eac(
        1,
        Some(status(
            "PENDING",
            1,
            vec![
                condition(
                    "Ready",
                    "False",
                    "Pending",
                    "Waiting for management account 111122223333 to accept the connection",
                    1,
                ),
                condition("Synced", "True", "ReconcileSuccess", "", 1),
                condition("Stalled", "False", "ReconcileSuccess", "", 1),
            ],
        )),
    );
    assert_eq!(
        health(&obj),
        (
            "Progressing".into(),
            "Waiting for management account 111122223333 to accept the connection".into()
        )
    );

    // PENDING without conditions still says what it waits for.
    let bare = eac(
        1,
        Some(json!({ "observedGeneration": 1, "status": "PENDING" })),
    );
    let (state, message) = health(&bare);
    assert_eq!(state, "Progressing");
    assert!(message.contains("accept"), "{message}");
}

#[test]
fn stale_generation_is_progressing_even_if_ready() {
    // The spec changed (generation 4) but the status still describes generation 3.
    let obj = eac(
        4,
        Some(status(
            "CONNECTED",
            3,
            vec![condition(
                "Ready",
                "True",
                "Connected",
                "Connection is CONNECTED",
                3,
            )],
        )),
    );
    let (state, message) = health(&obj);
    assert_eq!(state, "Progressing");
    assert!(message.contains("generation 4"), "{message}");
}

#[test]
fn argocd_cm_snippet_is_exactly_health_lua() {
    let cm: serde_yaml::Value = serde_yaml::from_str(ARGOCD_CM).expect("argocd-cm.yaml parses");
    assert_eq!(cm["kind"].as_str(), Some("ConfigMap"));
    assert_eq!(cm["metadata"]["name"].as_str(), Some("argocd-cm"));
    for key in ARGOCD_KEYS {
        let value = cm["data"][key]
            .as_str()
            .unwrap_or_else(|| panic!("argocd-cm.yaml has no data key {key}"));
        assert_eq!(
            value, HEALTH_LUA,
            "argocd-cm.yaml's {key} differs from health.lua: regenerate the snippet"
        );
    }
}

/// An AccountMapping as the controller writes its status (`mapping::status::status_of`).
fn mapping(generation: i64, status: &eac_controller::mapping::api::AccountMappingStatus) -> Value {
    json!({
        "apiVersion": "proton.eac.dev/v1alpha1",
        "kind": "AccountMapping",
        "metadata": {"name": "payments", "generation": generation},
        "spec": {
            "namespaceSelector": {"matchLabels": {"team": "payments"}},
            "roleArn": "arn:aws:iam::111111111111:role/eac",
        },
        "status": serde_json::to_value(status).expect("the status serializes"),
    })
}

#[test]
fn a_mapping_is_healthy_when_its_namespaces_are_its_alone_and_degraded_when_they_overlap() {
    use eac_controller::mapping::AccountMappingSpec;
    use eac_controller::mapping::status::status_of;
    use std::collections::BTreeMap;

    let spec = |key: &str, value: &str, account: &str| -> AccountMappingSpec {
        serde_json::from_value(json!({
            "namespaceSelector": {"matchLabels": {key: value}},
            "roleArn": format!("arn:aws:iam::{account}:role/eac"),
        }))
        .expect("a mapping spec")
    };
    let (payments, prod) = (
        spec("team", "payments", "111111111111"),
        spec("tier", "prod", "222222222222"),
    );
    let labels = BTreeMap::from([
        ("team".to_string(), "payments".to_string()),
        ("tier".to_string(), "prod".to_string()),
    ]);
    let namespaces = [("pay-prod", &labels)];
    let now = jiff::Timestamp::from_second(1_800_000_000).expect("a time");

    let alone = status_of(
        "payments",
        1,
        &[("payments", &payments)],
        &namespaces,
        None,
        now,
    );
    assert_eq!(health(&mapping(1, &alone)).0, "Healthy");

    let both = [("payments", &payments), ("prod", &prod)];
    let overlapping = status_of("payments", 1, &both, &namespaces, Some(&alone), now);
    let (state, message) = health(&mapping(1, &overlapping));
    assert_eq!(state, "Degraded", "{message}");
    assert!(
        message.contains("prod"),
        "names the other mapping: {message}"
    );

    // Its spec changed since: the status is of the generation before.
    assert_eq!(health(&mapping(2, &overlapping)).0, "Progressing");
}

/// A ConnectionAcceptancePolicy: `Ready`, `Synced` and `Stalled`, as a connection's, and no
/// `status.status`.
fn policy(generation: i64, conditions: Vec<Value>) -> Value {
    json!({
        "apiVersion": "proton.eac.dev/v1alpha1",
        "kind": "ConnectionAcceptancePolicy",
        "metadata": {"name": "accept", "namespace": "proton-management", "generation": generation},
        "spec": {"managementAccountId": "111122223333", "environmentAccountIds": ["444455556666"]},
        "status": {
            "observedGeneration": generation,
            "acceptedCount": 0,
            "rejectedCount": 0,
            "leftPendingCount": 0,
            "conditions": conditions,
        },
    })
}

#[test]
fn a_policy_is_healthy_when_applied_and_degraded_when_it_can_decide_nothing() {
    let applied = policy(
        1,
        vec![
            condition("Ready", "True", "Applied", "1 accepted", 1),
            condition("Synced", "True", "Applied", "", 1),
            condition("Stalled", "False", "Applied", "", 1),
        ],
    );
    assert_eq!(health(&applied), ("Healthy".into(), "1 accepted".into()));

    let mismatch = "the controller's credentials act as account 444455556666, not as management account 111122223333: no request is listed or decided";
    let refused = policy(
        1,
        vec![
            condition("Ready", "False", "AccountMismatch", mismatch, 1),
            condition("Synced", "False", "AccountMismatch", mismatch, 1),
            condition("Stalled", "True", "AccountMismatch", mismatch, 1),
        ],
    );
    assert_eq!(health(&refused), ("Degraded".into(), mismatch.into()));

    assert_eq!(
        health(&policy(1, vec![])).0,
        "Progressing",
        "not reconciled yet"
    );
}

/// A spec edit that a passing fault (throttling, a 5xx) kept from being applied: the conditions
/// as the controller renders them (`conditions::after_problem`) keep Ready True for the
/// generation it was observed for, so the edit shows as Progressing, with Synced's message,
/// until it is applied; not Healthy.
#[test]
fn an_edit_a_passing_fault_kept_from_being_applied_is_progressing() {
    use eac_controller::aws::error::Retry;
    use eac_controller::conditions::{
        READY, SYNCED, Want, after_problem, build, observed_generation_after,
    };
    use eac_controller::reconciler::retry::Problem;

    let now = jiff::Timestamp::from_second(1_790_000_000).unwrap();
    let connected = build(
        &[],
        &[
            Want::new(READY, true, "Connected", "Connection is CONNECTED"),
            Want::new(SYNCED, true, "ReconcileSuccess", ""),
        ],
        3,
        now,
    );
    let throttled = Problem {
        reason: "Throttled",
        message: "Proton throttled the request; retrying".into(),
        retry: Retry::Backoff,
    };
    let (conditions, _) = after_problem(&connected, &throttled, "Creating", 4, now);
    let conditions = serde_json::to_value(&conditions).unwrap();
    let observed = observed_generation_after(Some(3), &throttled, 4);
    assert_eq!(observed, Some(3));
    let obj = eac(
        4,
        Some(json!({
            "observedGeneration": observed,
            "id": "2f6c1e7a-6c1b-4c34-8d9e-0c2b7b1f5a10",
            "status": "CONNECTED",
            "conditions": conditions,
        })),
    );
    let (state, message) = health(&obj);
    assert_eq!(state, "Progressing", "{message}");
    assert!(message.contains("generation 4"), "{message}");
    assert!(message.contains("throttled"), "{message}");

    // Even where the status's own generation were current, Ready of generation 3 is not
    // Healthy for generation 4.
    let mut obj = obj;
    obj["status"]["observedGeneration"] = json!(4);
    let (state, message) = health(&obj);
    assert_eq!(state, "Progressing", "{message}");
    assert!(message.contains("throttled"), "{message}");

    // Once applied, Ready is observed for generation 4: Healthy.
    let applied = build(
        &connected,
        &[
            Want::new(READY, true, "Connected", "Connection is CONNECTED"),
            Want::new(SYNCED, true, "ReconcileSuccess", ""),
        ],
        4,
        now,
    );
    let obj = eac(
        4,
        Some(json!({
            "observedGeneration": 4,
            "status": "CONNECTED",
            "conditions": serde_json::to_value(&applied).unwrap(),
        })),
    );
    assert_eq!(health(&obj).0, "Healthy");
}
