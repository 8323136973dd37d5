//! The `ConnectionAcceptancePolicy` CRD generated from `src/policy/api.rs`, checked the way
//! its users meet it: no drift between the types and the committed YAML (`crds/`, the chart,
//! `deploy/crd/`), names and printer columns, descriptions for `kubectl explain`, and a schema
//! (plus CEL) that refuses bad manifests as the API server would at `kubectl apply` time.

use std::path::{Path, PathBuf};

use eac_controller::policy::api::{ConnectionAcceptancePolicy, crd_yaml};
use kube::CustomResourceExt;
use serde_json::{Value, json};

const CRD_FILES: [&str; 3] = [
    "crds/connectionacceptancepolicies.yaml",
    "charts/eac-controller/crds/connectionacceptancepolicies.yaml",
    "deploy/crd/connectionacceptancepolicies.yaml",
];

fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

fn open_api_schema() -> Value {
    let crd = ConnectionAcceptancePolicy::crd();
    let schema = crd.spec.versions[0]
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .expect("the CRD has an openAPIV3Schema");
    serde_json::to_value(schema).expect("the schema serializes to JSON")
}

#[test]
fn committed_crd_yaml_matches_the_rust_types() {
    let generated = crd_yaml().expect("the CRD renders as YAML");
    for file in CRD_FILES {
        let on_disk = std::fs::read_to_string(repo_path(file)).unwrap_or_else(|e| {
            panic!("cannot read {file} ({e}): run scripts/generate-crds.sh to create it")
        });
        assert!(
            on_disk == generated,
            "{file} is out of date with src/policy/api.rs: run scripts/generate-crds.sh and commit the result"
        );
    }
}

#[test]
fn the_deploy_kustomization_lists_the_crd() {
    let text = std::fs::read_to_string(repo_path("deploy/crd/kustomization.yaml")).unwrap();
    assert!(
        text.contains("- connectionacceptancepolicies.yaml"),
        "deploy/crd/kustomization.yaml must list the CRD:\n{text}"
    );
}

#[test]
fn names_scope_and_status_subresource() {
    let crd = ConnectionAcceptancePolicy::crd();
    assert_eq!(
        crd.metadata.name.as_deref(),
        Some("connectionacceptancepolicies.proton.eac.dev")
    );
    assert_eq!(crd.spec.group, "proton.eac.dev");
    assert_eq!(crd.spec.scope, "Namespaced");
    let names = &crd.spec.names;
    assert_eq!(names.kind, "ConnectionAcceptancePolicy");
    assert_eq!(names.short_names, Some(vec!["cap".to_owned()]));
    assert_eq!(names.categories, Some(vec!["proton".to_owned()]));
    let version = &crd.spec.versions[0];
    assert_eq!(version.name, "v1alpha1");
    assert!(
        version
            .subresources
            .as_ref()
            .and_then(|s| s.status.as_ref())
            .is_some(),
        "status subresource: the controller's writes cannot touch the spec"
    );
}

#[test]
fn kubectl_get_shows_the_printer_columns() {
    let crd = ConnectionAcceptancePolicy::crd();
    let columns: Vec<(String, String, String)> = crd.spec.versions[0]
        .additional_printer_columns
        .as_deref()
        .unwrap_or_default()
        .iter()
        .map(|c| (c.name.to_uppercase(), c.json_path.clone(), c.type_.clone()))
        .collect();
    let expected = [
        ("MANAGEMENT ACCOUNT", ".spec.managementAccountId", "string"),
        ("UNMATCHED", ".spec.unmatched", "string"),
        ("ACCEPTED", ".status.acceptedCount", "integer"),
        ("REJECTED", ".status.rejectedCount", "integer"),
        ("PENDING", ".status.leftPendingCount", "integer"),
        (
            "READY",
            r#".status.conditions[?(@.type=="Ready")].status"#,
            "string",
        ),
        ("AGE", ".metadata.creationTimestamp", "date"),
    ]
    .map(|(n, p, t)| (n.to_owned(), p.to_owned(), t.to_owned()));
    assert_eq!(columns, expected);
}

fn undocumented(node: &Value, path: &str, out: &mut Vec<String>) {
    let Some(properties) = node.get("properties").and_then(Value::as_object) else {
        return;
    };
    for (name, property) in properties {
        let here = format!("{path}.{name}");
        if property
            .get("description")
            .and_then(Value::as_str)
            .is_none_or(|d| d.trim().is_empty())
        {
            out.push(here.clone());
        }
        if here == ".status.conditions" {
            continue;
        }
        undocumented(property, &here, out);
        if let Some(items) = property.get("items") {
            undocumented(items, &format!("{here}[]"), out);
        }
    }
}

#[test]
fn kubectl_explain_documents_every_field() {
    let mut missing = Vec::new();
    undocumented(&open_api_schema(), "", &mut missing);
    assert_eq!(missing, Vec::<String>::new());
}

// ---------------------------------------------------------------------------------------------
// The schema refuses bad manifests

/// A Kubernetes structural schema as JSON Schema draft 4, validating as the API server does:
/// `nullable` admits null, `x-kubernetes-list-type: set` refuses repeats, unknown fields are
/// refused; CEL rules are checked separately.
fn to_json_schema(node: &Value) -> Value {
    let Value::Object(map) = node else {
        return node.clone();
    };
    let mut out = serde_json::Map::new();
    for (key, value) in map {
        if key == "x-kubernetes-list-type" && value == "set" {
            out.insert("uniqueItems".into(), Value::Bool(true));
            continue;
        }
        if key.starts_with("x-kubernetes-") || key == "nullable" {
            continue;
        }
        let converted = match key.as_str() {
            "properties" => Value::Object(
                value
                    .as_object()
                    .expect("properties is an object")
                    .iter()
                    .map(|(name, schema)| (name.clone(), to_json_schema(schema)))
                    .collect(),
            ),
            "items" | "additionalProperties" => to_json_schema(value),
            _ => value.clone(),
        };
        out.insert(key.clone(), converted);
    }
    if map.get("nullable") == Some(&Value::Bool(true))
        && let Some(Value::String(type_)) = out.get("type").cloned()
    {
        out.insert("type".into(), json!([type_, "null"]));
    }
    if out.contains_key("properties") && !out.contains_key("additionalProperties") {
        out.insert("additionalProperties".into(), Value::Bool(false));
    }
    Value::Object(out)
}

fn validator() -> jsonschema::Validator {
    let mut schema = open_api_schema();
    let properties = schema["properties"].as_object_mut().unwrap();
    properties.insert("apiVersion".into(), json!({"type": "string"}));
    properties.insert("kind".into(), json!({"type": "string"}));
    properties.insert("metadata".into(), json!({"type": "object"}));
    jsonschema::options()
        .with_draft(jsonschema::Draft::Draft4)
        .build(&to_json_schema(&schema))
        .expect("the CRD schema compiles as JSON Schema")
}

fn manifest(spec: Value) -> Value {
    json!({
        "apiVersion": "proton.eac.dev/v1alpha1",
        "kind": "ConnectionAcceptancePolicy",
        "metadata": {"name": "accept-prod", "namespace": "platform"},
        "spec": spec,
    })
}

fn valid_spec() -> Value {
    json!({
        "managementAccountId": "111122223333",
        "region": "eu-west-1",
        "environmentAccountIds": ["444455556666", "777788889999"],
        "environmentNames": ["prod-*", "team-?-dev", "staging"],
        "unmatched": "Reject",
    })
}

/// Schema errors (pointer, keyword) plus CEL refusals (as "cel: message").
fn refusals(m: &Value) -> Vec<String> {
    let mut out: Vec<String> = validator()
        .iter_errors(m)
        .map(|e| format!("{} {}", e.instance_path(), e.kind().keyword()))
        .collect();
    if out.is_empty() {
        let resource: ConnectionAcceptancePolicy =
            serde_json::from_value(m.clone()).expect("a schema-valid manifest deserializes");
        if let Err(errors) = resource.validate_cel() {
            out.push(format!("cel: {errors}"));
        }
    }
    out
}

#[test]
fn valid_policies_are_accepted() {
    let minimal = json!({
        "managementAccountId": "111122223333",
        "environmentAccountIds": ["444455556666"],
    });
    assert_eq!(refusals(&manifest(minimal)), Vec::<String>::new());
    assert_eq!(refusals(&manifest(valid_spec())), Vec::<String>::new());
    let at_limits = json!({
        "managementAccountId": "111122223333",
        "environmentAccountIds": (0..100).map(|i| format!("{:012}", 100_000_000_000u64 + i)).collect::<Vec<_>>(),
        "environmentNames": (0..100).map(|i| format!("{i}{}", "x".repeat(97))).collect::<Vec<_>>(),
    });
    assert_eq!(refusals(&manifest(at_limits)), Vec::<String>::new());
}

#[test]
fn bad_policies_are_refused_at_apply_time() {
    let with = |key: &str, value: Value| {
        let mut spec = valid_spec();
        spec[key] = value;
        spec
    };
    let without = |key: &str| {
        let mut spec = valid_spec();
        spec.as_object_mut().unwrap().remove(key);
        spec
    };
    #[rustfmt::skip]
    let cases: Vec<(&str, Value, &str)> = vec![
        ("no management account", without("managementAccountId"), "required"),
        ("no environment accounts", without("environmentAccountIds"), "required"),
        ("management account of 11 digits", with("managementAccountId", json!("11112222333")), "/spec/managementAccountId pattern"),
        ("management account as a number", with("managementAccountId", json!(111122223333u64)), "/spec/managementAccountId type"),
        ("empty account list", with("environmentAccountIds", json!([])), "/spec/environmentAccountIds minItems"),
        ("account with letters", with("environmentAccountIds", json!(["44445555666x"])), "/spec/environmentAccountIds/0 pattern"),
        ("repeated account", with("environmentAccountIds", json!(["444455556666", "444455556666"])), "/spec/environmentAccountIds uniqueItems"),
        ("101 accounts", with("environmentAccountIds", json!((0..101).map(|i| format!("{:012}", i)).collect::<Vec<_>>())), "/spec/environmentAccountIds maxItems"),
        ("empty name list", with("environmentNames", json!([])), "/spec/environmentNames minItems"),
        ("name with a space", with("environmentNames", json!(["prod eu"])), "/spec/environmentNames/0 pattern"),
        ("name with a dot", with("environmentNames", json!(["prod.eu"])), "/spec/environmentNames/0 pattern"),
        ("pattern starting with -", with("environmentNames", json!(["-prod"])), "/spec/environmentNames/0 pattern"),
        ("regular expression", with("environmentNames", json!(["prod-.*"])), "/spec/environmentNames/0 pattern"),
        ("empty name", with("environmentNames", json!([""])), "/spec/environmentNames/0 minLength"),
        ("name of 101 characters", with("environmentNames", json!(["x".repeat(101)])), "/spec/environmentNames/0 maxLength"),
        ("repeated name", with("environmentNames", json!(["prod", "prod"])), "/spec/environmentNames uniqueItems"),
        ("unknown unmatched option", with("unmatched", json!("Accept")), "/spec/unmatched enum"),
        ("bad region", with("region", json!("EU-west-1")), "/spec/region pattern"),
        ("unknown field", with("rejectUnmatched", json!(true)), "/spec additionalProperties"),
        ("only a star", with("environmentNames", json!(["prod", "*"])), "cel: "),
        ("only stars", with("environmentNames", json!(["**"])), "cel: "),
    ];
    for (name, spec, expected) in cases {
        let refused = refusals(&manifest(spec));
        assert!(
            refused.iter().any(|r| r.contains(expected)),
            "{name}: expected a refusal containing {expected:?}, got {refused:?}"
        );
    }
}

#[test]
fn the_star_rule_explains_itself() {
    let mut spec = valid_spec();
    spec["environmentNames"] = json!(["*"]);
    let refused = refusals(&manifest(spec));
    assert!(
        refused
            .iter()
            .any(|r| r.contains("leave environmentNames out")),
        "{refused:?}"
    );
}

#[test]
fn the_unmatched_option_defaults_to_leave() {
    let spec = &open_api_schema()["properties"]["spec"];
    assert_eq!(spec["properties"]["unmatched"]["default"], "Leave");
    assert_eq!(
        spec["properties"]["unmatched"]["enum"],
        json!(["Leave", "Reject"])
    );
    let mut required: Vec<&str> = spec["required"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    required.sort_unstable();
    assert_eq!(required, ["environmentAccountIds", "managementAccountId"]);
}

#[test]
fn eac_controller_crd_prints_either_kind() {
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_eac-controller"))
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    assert_eq!(
        run(&["crd", "connectionacceptancepolicies"]),
        crd_yaml().unwrap()
    );
    assert!(
        run(&["crd"]).ends_with(&format!("---\n{}", crd_yaml().unwrap())),
        "without a kind: every CRD, this one last"
    );
    assert_eq!(
        run(&["crd", "environmentaccountconnections"]),
        eac_controller::connection::api::crd_yaml().unwrap()
    );
}
