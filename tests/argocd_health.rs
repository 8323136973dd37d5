//! The Argo CD health check shipped with the chart
//! (`charts/eac-controller/argocd/health.lua`), run the way Argo CD runs it:
//! the live object converted from JSON to a Lua table and set as the global
//! `obj`, the script's returned table read for `status` and `message`.
//! Argo CD embeds gopher-lua (Lua 5.1), so mlua is built with `lua51`.

use mlua::{Lua, LuaSerdeExt, Table};
use serde_json::{Value, json};

const HEALTH_LUA: &str = include_str!("../charts/eac-controller/argocd/health.lua");
const ARGOCD_CM: &str = include_str!("../charts/eac-controller/argocd/argocd-cm.yaml");
const ARGOCD_KEY: &str =
    "resource.customizations.health.proton.eac.dev_EnvironmentAccountConnection";

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
    let value = cm["data"][ARGOCD_KEY]
        .as_str()
        .unwrap_or_else(|| panic!("argocd-cm.yaml has no data key {ARGOCD_KEY}"));
    assert_eq!(
        value, HEALTH_LUA,
        "argocd-cm.yaml's health check differs from health.lua: regenerate the snippet"
    );
}
