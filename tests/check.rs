//! `eac-controller check` against the in-memory API server (tower-test; CRDs, RBAC answered by
//! SelfSubjectAccessReview from the same denials that refuse real requests) and the Proton
//! emulator over HTTP: a good installation passes every check; each way of breaking one fails
//! the check that names it, with what to do.

mod support;

use std::time::Duration;

use eac_controller::aws::budget::CallBudget;
use eac_controller::aws::proton::{Proton, ProtonSettings};
use eac_controller::check::{self, Finding, Report, Scope, Verdict};
use eac_controller::connection::api::EnvironmentAccountConnection;
use eac_controller::mapping::{AccountMapping, AccountMappingSpec};
use eac_controller::metrics::Metrics;
use eac_controller::policy::ConnectionAcceptancePolicy;
use kube::CustomResourceExt;
use serde_json::json;
use support::{Env, FakeApi, spec};

const CRDS: &str = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions";

fn scope(mappings: bool) -> Scope {
    Scope {
        namespace: None,
        account_mappings: mappings,
        acceptance_policies: true,
        namespace_opt_in: true,
        lease: Some(("eac".into(), "eac-controller".into())),
        region: "us-east-1".into(),
    }
}

/// The generated CRD as the API server holds it once it is served.
fn install(api: &FakeApi, mut crd: serde_json::Value) {
    let name = crd["metadata"]["name"].as_str().unwrap().to_string();
    crd["status"] = json!({
        "conditions": [{"type": "Established", "status": "True", "reason": "InitialNamesAccepted", "message": "the initial names have been accepted"}],
        "acceptedNames": {"kind": crd["spec"]["names"]["kind"], "plural": crd["spec"]["names"]["plural"]},
    });
    api.put_object(&format!("{CRDS}/{name}"), crd);
}

fn install_all(api: &FakeApi) {
    for crd in [
        EnvironmentAccountConnection::crd(),
        AccountMapping::crd(),
        ConnectionAcceptancePolicy::crd(),
    ] {
        install(api, serde_json::to_value(crd).unwrap());
    }
}

async fn report(env: &Env, mappings: bool) -> Report {
    check::run(
        Ok(env.api.client()),
        Ok(env.ctx.proton.clone()),
        &scope(mappings),
    )
    .await
}

fn finding<'a>(report: &'a Report, check: &str) -> &'a Finding {
    report
        .checks
        .iter()
        .find(|f| f.check == check)
        .unwrap_or_else(|| panic!("no check {check:?} in\n{}", report.text()))
}

fn failed(report: &Report) -> Vec<&str> {
    report
        .checks
        .iter()
        .filter(|f| f.verdict == Verdict::Fail)
        .map(|f| f.check.as_str())
        .collect()
}

#[tokio::test]
async fn a_good_installation_passes_every_check() {
    let env = Env::start().await;
    install_all(&env.api);
    env.api
        .create("prod", "00000000-0000-4000-8000-000000000001", spec("prod"));
    env.reconcile("prod").await.unwrap();

    let report = report(&env, false).await;
    println!("{}", report.text());
    assert!(report.ok, "{}", report.text());
    assert_eq!(failed(&report), Vec::<&str>::new());
    assert_eq!(finding(&report, "Kubernetes API").verdict, Verdict::Pass);
    assert!(finding(&report, "Kubernetes API").detail.contains("v1.36"));
    for crd in [
        "CRD environmentaccountconnections.proton.eac.dev",
        "CRD connectionacceptancepolicies.proton.eac.dev",
        "RBAC environmentaccountconnections.proton.eac.dev/status (cluster-wide)",
        "RBAC leases.coordination.k8s.io (namespace eac)",
        "AWS credentials",
        "Proton endpoint (us-east-1)",
        "Pinned accounts",
    ] {
        assert_eq!(finding(&report, crd).verdict, Verdict::Pass, "{crd}");
    }
    assert!(
        finding(&report, "Pinned accounts")
            .detail
            .starts_with("1 resource(s) pinned"),
        "the created connection was pinned and is checked"
    );
    assert!(
        !report
            .checks
            .iter()
            .any(|f| f.check.contains("accountmappings")),
        "mappings off: not checked"
    );
    assert_eq!(
        env.calls("CreateEnvironmentAccountConnection"),
        1,
        "check creates nothing"
    );
}

#[tokio::test]
async fn a_missing_or_stale_crd_is_named_with_the_command_that_fixes_it() {
    let env = Env::start().await;
    install(
        &env.api,
        serde_json::to_value(ConnectionAcceptancePolicy::crd()).unwrap(),
    );
    // Installed from another release: a field this binary has is missing from the schema. The
    // AccountMapping CRD is not installed at all.
    let mut stale = serde_json::to_value(EnvironmentAccountConnection::crd()).unwrap();
    stale["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
        .as_object_mut()
        .unwrap()
        .remove("deletionPolicy");
    install(&env.api, stale);

    let report = report(&env, true).await;
    println!("{}", report.text());
    assert!(!report.ok);
    let eac = finding(&report, "CRD environmentaccountconnections.proton.eac.dev");
    assert_eq!(eac.verdict, Verdict::Fail);
    assert!(eac.detail.starts_with("stale"), "{}", eac.detail);
    let mapping = finding(&report, "CRD accountmappings.proton.eac.dev");
    assert_eq!(mapping.detail, "not installed");
    assert!(
        mapping
            .fix
            .as_deref()
            .unwrap()
            .contains("kubectl apply --server-side -f crds/")
    );
}

#[tokio::test]
async fn a_missing_permission_is_named_by_verb_resource_and_place() {
    let env = Env::start().await;
    install_all(&env.api);
    // The status subresource was left out of the controller's Role.
    env.api.deny(
        Some(http::Method::PATCH),
        "/environmentaccountconnections/status",
    );
    env.api
        .deny(Some(http::Method::PUT), "/leases/eac-controller");

    let report = report(&env, false).await;
    println!("{}", report.text());
    assert_eq!(
        failed(&report),
        vec![
            "RBAC environmentaccountconnections.proton.eac.dev/status (cluster-wide)",
            "RBAC leases.coordination.k8s.io (namespace eac)",
        ]
    );
    let status = finding(
        &report,
        "RBAC environmentaccountconnections.proton.eac.dev/status (cluster-wide)",
    );
    assert_eq!(status.detail, "not allowed: patch");
    let lease = finding(&report, "RBAC leases.coordination.k8s.io (namespace eac)");
    assert_eq!(lease.detail, "not allowed: update");
    assert!(
        lease
            .fix
            .as_deref()
            .unwrap()
            .contains("kubectl auth can-i --list -n eac")
    );
}

#[tokio::test]
async fn resources_pinned_to_another_account_are_named_before_they_meet_account_mismatch() {
    let env = Env::start().await;
    install_all(&env.api);
    env.api
        .create("prod", "00000000-0000-4000-8000-000000000001", spec("prod"));
    env.reconcile("prod").await.unwrap();
    // Created by an installation with other credentials.
    env.api.edit("prod", |o| {
        o.status.as_mut().unwrap().environment_account_id = Some("999988887777".into());
    });

    let report = report(&env, false).await;
    println!("{}", report.text());
    let pinned = finding(&report, "Pinned accounts");
    assert_eq!(pinned.verdict, Verdict::Fail);
    assert!(
        pinned
            .detail
            .contains("(pinned to 999988887777, would act in 444455556666)"),
        "{}",
        pinned.detail
    );
}

#[tokio::test]
async fn a_role_that_cannot_be_assumed_and_an_unreachable_endpoint_fail() {
    // The emulator knows one role, and refuses AssumeRole of any other.
    let emulator = proton_emulator::EmulatorConfig {
        roles: vec!["arn:aws:iam::111111111111:role/eac".parse().unwrap()],
        require_registered_roles: true,
        ..Default::default()
    };
    let env = Env::start_full(support::eager_settings(), CallBudget::unlimited(), emulator).await;
    install_all(&env.api);
    let mapping = AccountMapping::new(
        "payments",
        AccountMappingSpec {
            namespace_selector: serde_json::from_value(
                json!({"matchLabels": {"team": "payments"}}),
            )
            .unwrap(),
            role_arn: "arn:aws:iam::222233334444:role/not-there".into(),
            external_id: None,
            region: None,
        },
    );
    env.api.account_mapping("payments", &mapping.spec);

    let report = report(&env, true).await;
    println!("{}", report.text());
    let role = finding(&report, "AccountMapping payments");
    assert_eq!(role.verdict, Verdict::Fail);
    assert!(role.detail.contains("cannot be assumed"), "{}", role.detail);

    // A Proton endpoint nobody listens on.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let proton = Proton::with_static_credentials(
        ProtonSettings {
            default_region: "us-east-1".into(),
            endpoint: Some(url.clone()),
            sts_endpoint: Some(url),
            timeout: Duration::from_secs(2),
        },
        CallBudget::unlimited(),
        Metrics::new(),
    );
    let report = check::run(Ok(env.api.client()), Ok(proton), &scope(false)).await;
    println!("{}", report.text());
    assert_eq!(finding(&report, "AWS credentials").verdict, Verdict::Fail);
    let endpoint = finding(&report, "Proton endpoint (us-east-1)");
    assert_eq!(endpoint.verdict, Verdict::Fail);
    assert!(
        endpoint
            .fix
            .as_deref()
            .unwrap()
            .contains("--proton-endpoint")
    );
}

#[tokio::test]
async fn no_cluster_is_one_failure_and_the_aws_checks_still_run() {
    let env = Env::start().await;
    let report = check::run(
        Err("cannot load a Kubernetes configuration (tried KUBECONFIG=/nope)".into()),
        Ok(env.ctx.proton.clone()),
        &scope(false),
    )
    .await;
    assert_eq!(failed(&report), vec!["Kubernetes API"]);
    assert_eq!(finding(&report, "AWS credentials").verdict, Verdict::Pass);
    let json: serde_json::Value = serde_json::from_str(&report.json()).unwrap();
    assert_eq!(json["ok"], false);
}
