//! Many environment accounts from one controller: AccountMappings pick the IAM role a
//! namespace's resources act with. The real reconcile against the in-memory API server and the
//! Proton emulator over HTTP on 127.0.0.1 (which serves STS AssumeRole on the same port).

mod support;

use std::collections::BTreeMap;

use eac_controller::mapping::{AccountMapping, AccountMappingSpec, Accounts};
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::runtime::reflector;
use kube::runtime::watcher;
use support::{Env, NS, condition, spec};

const UID: &str = "3c2b1a09-8f7e-4d6c-9b5a-4f3e2d1c0b9a";

fn selecting(labels: &[(&str, &str)], role: &str) -> AccountMappingSpec {
    AccountMappingSpec {
        namespace_selector: LabelSelector {
            match_labels: Some(
                labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            match_expressions: None,
        },
        role_arn: role.into(),
        external_id: None,
        region: None,
    }
}

fn namespace(name: &str, labels: &[(&str, &str)]) -> Namespace {
    let mut ns = Namespace::default();
    ns.metadata.name = Some(name.into());
    ns.metadata.labels = Some(
        labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<BTreeMap<_, _>>(),
    );
    ns
}

/// The stores the controller's watches would fill, filled by hand.
fn accounts(mappings: &[(&str, AccountMappingSpec)], namespaces: &[Namespace]) -> Accounts {
    let (mapping_store, mut mapping_writer) = reflector::store::<AccountMapping>();
    let (namespace_store, mut namespace_writer) = reflector::store::<Namespace>();
    // As a watcher's first list delivers them.
    mapping_writer.apply_watcher_event(&watcher::Event::Init);
    for (name, spec) in mappings {
        let mapping = AccountMapping::new(name, spec.clone());
        mapping_writer.apply_watcher_event(&watcher::Event::InitApply(mapping));
    }
    mapping_writer.apply_watcher_event(&watcher::Event::InitDone);
    namespace_writer.apply_watcher_event(&watcher::Event::Init);
    for ns in namespaces {
        namespace_writer.apply_watcher_event(&watcher::Event::InitApply(ns.clone()));
    }
    namespace_writer.apply_watcher_event(&watcher::Event::InitDone);
    Accounts::from_stores(mapping_store, namespace_store)
}

#[tokio::test]
async fn a_namespace_matched_by_two_mappings_gets_no_aws_call_and_says_which() {
    let env = Env::start().await;
    env.ctx.set_accounts(accounts(
        &[
            (
                "payments",
                selecting(
                    &[("team", "payments")],
                    "arn:aws:iam::111111111111:role/eac",
                ),
            ),
            (
                "everything",
                selecting(&[], "arn:aws:iam::222222222222:role/eac"),
            ),
        ],
        &[namespace(NS, &[("team", "payments")])],
    ));
    env.api.create("prod", UID, spec("prod"));

    env.reconcile("prod").await.unwrap();

    let obj = env.api.get("prod").unwrap();
    let synced = condition(&obj, "Synced").unwrap();
    assert_eq!(
        (synced.0.as_str(), synced.1.as_str()),
        ("False", "AmbiguousAccountMapping")
    );
    assert!(synced.2.contains("everything, payments"), "{}", synced.2);
    assert_eq!(condition(&obj, "Stalled").unwrap().0, "True");
    assert_eq!(env.total_calls(), 0, "not even GetCallerIdentity");
    assert!(env.proton().connections().is_empty());
    assert!(
        env.api
            .event_reasons()
            .contains(&"AmbiguousAccountMapping".to_string())
    );
}

#[tokio::test]
async fn an_unmapped_namespace_is_refused_when_the_controller_says_so() {
    let env = Env::start().await;
    env.ctx.set_accounts(
        accounts(
            &[(
                "payments",
                selecting(
                    &[("team", "payments")],
                    "arn:aws:iam::111111111111:role/eac",
                ),
            )],
            &[namespace(NS, &[("team", "search")])],
        )
        .with_unmapped(eac_controller::mapping::UnmappedNamespaces::Refuse),
    );
    env.api.create("prod", UID, spec("prod"));

    env.reconcile("prod").await.unwrap();

    let obj = env.api.get("prod").unwrap();
    let synced = condition(&obj, "Synced").unwrap();
    assert_eq!(
        (synced.0.as_str(), synced.1.as_str()),
        ("False", "NoAccountMapping")
    );
    assert!(
        synced.2.contains("--unmapped-namespaces refuse"),
        "{}",
        synced.2
    );
    assert_eq!(
        env.total_calls(),
        0,
        "nothing in the controller's own account"
    );

    // Refused even when no mapping exists at all.
    let env = Env::start().await;
    env.ctx.set_accounts(
        accounts(&[], &[namespace(NS, &[])])
            .with_unmapped(eac_controller::mapping::UnmappedNamespaces::Refuse),
    );
    env.api.create("prod", UID, spec("prod"));
    env.reconcile("prod").await.unwrap();
    assert_eq!(
        condition(&env.api.get("prod").unwrap(), "Synced")
            .unwrap()
            .1,
        "NoAccountMapping"
    );
    assert_eq!(env.total_calls(), 0);
}

#[tokio::test]
async fn an_unmapped_namespace_acts_with_the_controllers_own_credentials() {
    let env = Env::start().await;
    env.ctx.set_accounts(accounts(
        &[(
            "payments",
            selecting(
                &[("team", "payments")],
                "arn:aws:iam::111111111111:role/eac",
            ),
        )],
        &[namespace(NS, &[("team", "search")])],
    ));
    env.api.create("prod", UID, spec("prod"));

    env.reconcile("prod").await.unwrap();

    let status = env.api.get("prod").unwrap().status.unwrap();
    assert_eq!(
        status.environment_account_id.as_deref(),
        Some("444455556666"),
        "the emulator's default account, as without any mapping"
    );
    assert_eq!(env.proton().connections().len(), 1);
}

#[tokio::test]
async fn a_namespace_the_watch_has_not_shown_yet_is_retried_soon_without_an_aws_call() {
    let env = Env::start().await;
    env.ctx.set_accounts(accounts(
        &[(
            "payments",
            selecting(
                &[("team", "payments")],
                "arn:aws:iam::111111111111:role/eac",
            ),
        )],
        &[],
    ));
    env.api.create("prod", UID, spec("prod"));

    env.reconcile("prod").await.unwrap();

    let obj = env.api.get("prod").unwrap();
    assert_eq!(condition(&obj, "Synced").unwrap().1, "NamespaceNotFound");
    assert_eq!(condition(&obj, "Stalled").unwrap().0, "False");
    assert!(env.comes_back_in("prod") < std::time::Duration::from_secs(5));
    assert_eq!(env.total_calls(), 0);
}

/// The whole controller: it reads the mappings and namespaces through its own watches, and a
/// change to either reconciles the affected resources at once (not at their next resync).
#[tokio::test]
async fn the_running_controller_follows_mapping_and_namespace_label_changes_at_once() {
    use std::time::Duration;

    let env = overlapping_mappings().await;
    env.api.create("prod", UID, spec("prod"));
    let (stop, task) = run_with_mappings(&env);

    // The admin sees the overlap on the mappings themselves.
    env.api
        .wait_until(
            "Overlapping on both mappings",
            Duration::from_secs(20),
            |api| {
                ["payments", "production"].iter().all(|m| {
                    api.object(&format!(
                        "/apis/proton.eac.dev/v1alpha1/accountmappings/{m}"
                    ))
                    .is_some_and(|o| o["status"]["conditions"][0]["reason"] == "Overlapping")
                })
            },
        )
        .await;
    let payments = env
        .api
        .object("/apis/proton.eac.dev/v1alpha1/accountmappings/payments")
        .unwrap();
    assert_eq!(payments["status"]["accountId"], "111111111111");
    assert_eq!(payments["status"]["overlapping"], serde_json::json!([NS]));
    env.api
        .wait_until("AmbiguousAccountMapping", Duration::from_secs(20), |api| {
            api.get("prod")
                .and_then(|o| condition(&o, "Synced"))
                .is_some_and(|c| c.1 == "AmbiguousAccountMapping")
        })
        .await;
    assert_eq!(env.total_calls(), 0);

    // The cluster admin takes the namespace out of both mappings: unmapped, so the controller's
    // own credentials; the resource is reconciled at once, not an hour later.
    env.api.namespace(NS, &[("team", "platform")]);
    wait_for_connection(&env).await;
    assert_eq!(env.proton().connections().len(), 1);
    // The namespace left both mappings: each selects nothing now, and says so.
    env.api
        .wait_until(
            "no namespaces on the mappings",
            Duration::from_secs(20),
            |api| {
                api.object("/apis/proton.eac.dev/v1alpha1/accountmappings/payments")
                    .is_some_and(|o| {
                        o["status"]["namespaceCount"] == 0
                            && o["status"]["conditions"][0]["reason"] == "Mapped"
                    })
            },
        )
        .await;

    let _ = stop.send(());
    let _ = task.await;
}

/// The controller with a production resync (nothing happens just because a resource came due),
/// and namespace NS matched by two mappings: `payments` (account 111111111111) by its team and
/// `production` (222222222222) by its tier.
async fn overlapping_mappings() -> Env {
    use std::time::Duration;

    let settings = eac_controller::connection::decide::Settings {
        resync: Duration::from_secs(3600),
        pending_poll: Duration::from_secs(3600),
        ..support::eager_settings()
    };
    let env = Env::start_with(
        settings,
        eac_controller::aws::budget::CallBudget::unlimited(),
    )
    .await;
    env.api
        .namespace(NS, &[("team", "payments"), ("tier", "prod")]);
    env.api.account_mapping(
        "payments",
        &selecting(
            &[("team", "payments")],
            "arn:aws:iam::111111111111:role/eac",
        ),
    );
    env.api.account_mapping(
        "production",
        &selecting(&[("tier", "prod")], "arn:aws:iam::222222222222:role/eac"),
    );
    env
}

/// An emulator whose payments role requires an external id; any other well-formed role can be
/// assumed.
async fn env_with_roles() -> Env {
    let emulator = proton_emulator::EmulatorConfig {
        roles: vec![
            "arn:aws:iam::111111111111:role/eac,external-id=payments-7f3a"
                .parse()
                .unwrap(),
        ],
        ..Default::default()
    };
    Env::start_full(
        support::eager_settings(),
        eac_controller::aws::budget::CallBudget::unlimited(),
        emulator,
    )
    .await
}

#[tokio::test]
async fn a_mapped_namespace_gets_its_connection_in_the_roles_account() {
    let env = env_with_roles().await;
    env.ctx.set_accounts(accounts(
        &[(
            "payments",
            AccountMappingSpec {
                external_id: Some("payments-7f3a".into()),
                region: Some("eu-west-1".into()),
                ..selecting(
                    &[("team", "payments")],
                    "arn:aws:iam::111111111111:role/eac",
                )
            },
        )],
        &[namespace(NS, &[("team", "payments")])],
    ));
    env.api.create("prod", UID, spec("prod"));

    env.reconcile("prod").await.unwrap();

    let status = env.api.get("prod").unwrap().status.unwrap();
    assert_eq!(
        status.environment_account_id.as_deref(),
        Some("111111111111")
    );
    assert_eq!(
        status.region.as_deref(),
        Some("eu-west-1"),
        "the mapping's region"
    );
    let conns = env.proton().connections();
    assert_eq!(conns.len(), 1);
    assert_eq!(conns[0].environment_account_id, "111111111111");
    assert_eq!(conns[0].region, "eu-west-1");
    assert!(conns[0].arn.contains(":111111111111:"), "{}", conns[0].arn);
    assert_eq!(env.calls("AssumeRole"), 1, "one session for the role");

    // Deleted with the role's credentials too (only its environment account may delete it).
    env.api.delete("prod");
    env.resync("prod").await.unwrap();
    assert!(env.api.get("prod").is_none());
    assert!(env.proton().connections().is_empty());
    assert_eq!(env.calls("AssumeRole"), 1, "the session is reused");
}

#[tokio::test]
async fn a_role_that_cannot_be_assumed_is_reported_and_nothing_is_done_in_proton() {
    let env = env_with_roles().await;
    env.ctx.set_accounts(accounts(
        &[(
            "payments",
            // No external id: the role's trust policy refuses.
            selecting(
                &[("team", "payments")],
                "arn:aws:iam::111111111111:role/eac",
            ),
        )],
        &[namespace(NS, &[("team", "payments")])],
    ));
    env.api.create("prod", UID, spec("prod"));

    env.reconcile("prod").await.unwrap();

    let obj = env.api.get("prod").unwrap();
    let synced = condition(&obj, "Synced").unwrap();
    assert_eq!(
        (synced.0.as_str(), synced.1.as_str()),
        ("False", "AssumeRoleFailed")
    );
    assert!(
        synced.2.contains("arn:aws:iam::111111111111:role/eac"),
        "{}",
        synced.2
    );
    assert_eq!(condition(&obj, "Stalled").unwrap().0, "True");
    assert_eq!(
        env.total_calls(),
        env.calls("AssumeRole"),
        "no Proton call, only the refused AssumeRole"
    );
    assert!(env.proton().connections().is_empty());
}

#[tokio::test]
async fn a_namespace_moved_to_another_account_leaves_its_pinned_connection_alone() {
    let env = env_with_roles().await;
    env.ctx.set_accounts(accounts(
        &[(
            "search",
            selecting(&[("team", "search")], "arn:aws:iam::222222222222:role/eac"),
        )],
        &[namespace(NS, &[("team", "search")])],
    ));
    env.api.create("prod", UID, spec("prod"));
    env.reconcile("prod").await.unwrap();
    assert_eq!(
        env.api
            .get("prod")
            .unwrap()
            .status
            .unwrap()
            .environment_account_id
            .as_deref(),
        Some("222222222222")
    );

    // The admin maps the namespace to another account.
    env.ctx.set_accounts(accounts(
        &[(
            "search",
            selecting(&[("team", "search")], "arn:aws:iam::333333333333:role/eac"),
        )],
        &[namespace(NS, &[("team", "search")])],
    ));
    let mutations = env.mutating_calls();
    env.resync("prod").await.unwrap();
    let obj = env.api.get("prod").unwrap();
    assert_eq!(condition(&obj, "Synced").unwrap().1, "AccountMismatch");
    assert_eq!(
        env.mutating_calls(),
        mutations,
        "nothing re-created elsewhere"
    );
    assert_eq!(env.proton().connections().len(), 1);
}

#[tokio::test]
async fn credentials_the_service_calls_expired_are_replaced_by_a_new_assume_role() {
    let env = env_with_roles().await;
    env.ctx.set_accounts(accounts(
        &[(
            "search",
            selecting(&[("team", "search")], "arn:aws:iam::222222222222:role/eac"),
        )],
        &[namespace(NS, &[("team", "search")])],
    ));
    env.api.create("prod", UID, spec("prod"));
    env.reconcile("prod").await.unwrap();
    assert_eq!(env.calls("AssumeRole"), 1);
    // CONNECTED, so its next read is a Get (a PENDING one's poll tries the shared List first,
    // and the Get after a refused List would already run with a new session).
    let id = env.api.get("prod").unwrap().status.unwrap().id.unwrap();
    env.proton().accept(&id).unwrap();
    env.resync("prod").await.unwrap();
    assert_eq!(env.calls("AssumeRole"), 1);

    // The service's clock runs past the session's expiry (the controller's does not).
    env.proton()
        .advance_clock(std::time::Duration::from_secs(2 * 3600));
    env.resync("prod").await.unwrap();
    let obj = env.api.get("prod").unwrap();
    assert_eq!(condition(&obj, "Synced").unwrap().1, "CredentialsExpired");
    // Not Stalled: the session was dropped, the next try signs with fresh credentials.
    assert_eq!(condition(&obj, "Stalled").unwrap().0, "False");
    // The next attempt assumes the role again, and works.
    env.resync("prod").await.unwrap();
    assert_eq!(env.calls("AssumeRole"), 2);
    let obj = env.api.get("prod").unwrap();
    let synced = condition(&obj, "Synced").unwrap();
    assert_eq!(synced.0, "True", "{synced:?}");
    assert_eq!(env.proton().connections().len(), 1);
}

/// A Create first takes its slot and its credentials; a mapped role's AssumeRole can take long
/// (STS retrying for about 90 s), and the role's cached credentials can be dropped meanwhile by
/// another resource's call (an ExpiredToken). Past the window its intent opened the Create is not
/// sent: a deletion's search for it counts on that window. Over HTTP against the emulator, with
/// STS 1.5 s slow.
#[tokio::test]
async fn a_create_whose_role_took_past_its_window_is_not_sent() {
    use eac_controller::aws::budget::CallClass;
    use eac_controller::aws::credentials::{AwsIdentity, RoleIdentity};
    use eac_controller::aws::proton::{CreateRequest, StepCalls, Ticket};
    use std::time::Duration;

    let env = Env::start().await;
    env.proton().set_faults(proton_emulator::Faults {
        sts_latency: Duration::from_millis(1_500),
        ..Default::default()
    });
    let proton = eac_controller::aws::proton::Proton::with_static_credentials(
        eac_controller::aws::proton::ProtonSettings {
            default_region: "us-east-1".into(),
            endpoint: Some(env.emulator.url()),
            sts_endpoint: None,
            timeout: Duration::from_secs(10),
        },
        eac_controller::aws::budget::CallBudget::unlimited(),
        eac_controller::metrics::Metrics::new(),
    );
    let identity = AwsIdentity::Role(std::sync::Arc::new(RoleIdentity {
        role_arn: "arn:aws:iam::222222222222:role/eac".into(),
        external_id: None,
    }));
    let calls = StepCalls::default();
    let ticket = Ticket {
        identity: &identity,
        key: UID,
        class: CallClass::Work,
        admitted: false,
        trial: None,
        calls: &calls,
    };
    let request = CreateRequest {
        client_token: UID.into(),
        environment_name: "prod".into(),
        management_account_id: "111122223333".into(),
        roles: Default::default(),
        tags: Default::default(),
    };
    let within =
        |d: Duration| Some(jiff::Timestamp::now() + jiff::SignedDuration::try_from(d).unwrap());

    // The window ends 1 s from now; the role's credentials come 1.5 s from now.
    let late = proton
        .create(
            &ticket,
            "us-east-1",
            &request,
            within(Duration::from_secs(1)),
        )
        .await
        .unwrap_err();
    assert!(late.is_late(), "{late}");
    assert_eq!(env.calls("AssumeRole"), 1, "the credentials were asked for");
    assert_eq!(
        env.calls("CreateEnvironmentAccountConnection"),
        0,
        "not sent"
    );

    // Without a window (no intent on record), nothing is sent either.
    let none = proton
        .create(&ticket, "us-east-1", &request, None)
        .await
        .unwrap_err();
    assert!(none.is_late(), "{none}");
    assert_eq!(
        env.calls("CreateEnvironmentAccountConnection"),
        0,
        "not sent"
    );

    // A window still open: sent (the credentials are cached now).
    let created = proton
        .create(
            &ticket,
            "us-east-1",
            &request,
            within(Duration::from_secs(60)),
        )
        .await
        .unwrap();
    assert!(created.arn.contains(":222222222222:"), "{}", created.arn);
    assert_eq!(env.calls("CreateEnvironmentAccountConnection"), 1);
    assert_eq!(env.calls("AssumeRole"), 1);
}

/// README's quickstart, both sides in one cluster and one controller: the environment account
/// (the controller's own credentials) requests a connection from management account
/// 111122223333; a policy in namespace proton-management, mapped to a role in that account,
/// accepts it; the connection becomes CONNECTED with no manual AWS call. The management account
/// is a real second identity here: the emulator knows its role, so the environment account could
/// not have accepted.
#[tokio::test]
async fn the_quickstart_demo_both_sides_with_a_mapped_management_role() {
    use eac_controller::policy::api::{ConnectionAcceptancePolicy, ConnectionAcceptancePolicySpec};
    use eac_controller::policy::controller as policies;
    use kube::ResourceExt;

    const MGMT_ROLE: &str = "arn:aws:iam::111122223333:role/proton-management";
    let emulator = proton_emulator::EmulatorConfig {
        roles: vec![MGMT_ROLE.parse().unwrap()],
        ..Default::default()
    };
    let env = Env::start_full(
        support::eager_settings(),
        eac_controller::aws::budget::CallBudget::unlimited(),
        emulator,
    )
    .await;
    env.ctx.set_accounts(accounts(
        &[(
            "management",
            selecting(&[("proton.eac.dev/side", "management")], MGMT_ROLE),
        )],
        &[
            namespace(NS, &[]),
            namespace(
                "proton-management",
                &[("proton.eac.dev/side", "management")],
            ),
        ],
    ));
    let demo: Vec<serde_yaml::Value> = serde_yaml::Deserializer::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/deploy/examples/demo.yaml"
        ))
        .unwrap(),
    )
    .map(|d| serde::Deserialize::deserialize(d).unwrap())
    .collect();
    let of_kind = |kind: &str| {
        demo.iter()
            .find(|d| d["kind"].as_str() == Some(kind))
            .unwrap_or_else(|| panic!("deploy/examples/demo.yaml has no {kind}"))
            .clone()
    };
    let mapping: AccountMapping = serde_yaml::from_value(of_kind("AccountMapping")).unwrap();
    assert_eq!(
        mapping.spec,
        selecting(&[("proton.eac.dev/side", "management")], MGMT_ROLE)
    );
    let policy: ConnectionAcceptancePolicy =
        serde_yaml::from_value(of_kind("ConnectionAcceptancePolicy")).unwrap();
    assert_eq!(policy.namespace().as_deref(), Some("proton-management"));
    let connection: eac_controller::connection::api::EnvironmentAccountConnection =
        serde_yaml::from_value(of_kind("EnvironmentAccountConnection")).unwrap();
    assert_eq!(connection.namespace().as_deref(), Some(NS));

    env.api.create("demo-eu", UID, connection.spec.clone());
    env.reconcile("demo-eu").await.unwrap();
    let requested = env.api.get("demo-eu").unwrap().status.unwrap();
    assert_eq!(
        requested.environment_account_id.as_deref(),
        Some("444455556666")
    );

    let policy_ctx = std::sync::Arc::new(
        policy_context(&env, support::eager_settings()).with_accounts(env.ctx.accounts_handle()),
    );
    let spec: ConnectionAcceptancePolicySpec = policy.spec.clone();
    env.api.create_object(
        "proton-management",
        "accept-demo",
        "uid-accept-demo",
        ConnectionAcceptancePolicy::new("accept-demo", spec),
    );
    let stored = env
        .api
        .get_object::<ConnectionAcceptancePolicy>("proton-management", "accept-demo")
        .unwrap();
    policies::reconcile(std::sync::Arc::new(stored), policy_ctx)
        .await
        .unwrap();
    assert_eq!(env.calls("AcceptEnvironmentAccountConnection"), 1);
    assert_eq!(
        env.calls("AssumeRole"),
        1,
        "the policy acted as the management account"
    );

    env.resync("demo-eu").await.unwrap();
    let connected = env.api.get("demo-eu").unwrap();
    assert_eq!(
        connected.status.as_ref().unwrap().status,
        Some(eac_controller::connection::api::ConnectionState::Connected)
    );
    assert_eq!(condition(&connected, "Ready").unwrap().0, "True");
}

/// Until the mappings can be listed (CRD missing, RBAC), nothing is reconciled: no resource acts
/// with the controller's own credentials because its mapping was not read.
#[tokio::test]
async fn nothing_is_reconciled_until_the_mappings_can_be_listed() {
    use std::time::Duration;

    let env = Env::start().await;
    env.api.namespace(NS, &[("team", "payments")]);
    env.api.deny(Some(http::Method::GET), "/accountmappings");
    env.api.create("prod", UID, spec("prod"));
    let (stop, task) = run_with_mappings(&env);
    // The watch of AccountMappings is refused, and retried.
    env.api
        .wait_until(
            "two refused lists of AccountMappings",
            Duration::from_secs(20),
            |api| {
                api.requests()
                    .iter()
                    .filter(|r| r.path.ends_with("/accountmappings") && r.code == 403)
                    .count()
                    >= 2
            },
        )
        .await;
    let obj = env.api.get("prod").unwrap();
    assert!(
        obj.metadata.finalizers.unwrap_or_default().is_empty(),
        "not even the finalizer"
    );
    assert_eq!(env.total_calls(), 0);

    // RBAC fixed: the mappings are read (none), and the resource is reconciled.
    env.api.allow_all();
    wait_for_connection(&env).await;
    let _ = stop.send(());
    let _ = task.await;
}

/// A lost lease drops the controller's future while it runs: the watches of the mappings and
/// the namespaces it started close with it (a standby neither watches them nor writes the
/// mappings' status).
#[tokio::test]
async fn a_controller_dropped_while_it_runs_closes_its_mapping_and_namespace_watches() {
    use std::time::Duration;

    let env = Env::start().await;
    env.api.namespace(NS, &[("team", "payments")]);
    env.api.create("prod", UID, spec("prod"));
    let (_stop, task) = run_with_mappings(&env);
    wait_for_connection(&env).await;
    let open = |api: &support::FakeApi| {
        api.open_watches("accountmappings") + api.open_watches("namespaces")
    };
    assert!(
        env.api.open_watches("accountmappings") == 1 && env.api.open_watches("namespaces") == 1,
        "one watch of each while it runs: {} of mappings, {} of namespaces",
        env.api.open_watches("accountmappings"),
        env.api.open_watches("namespaces")
    );

    task.abort();
    assert!(task.await.is_err_and(|e| e.is_cancelled()));

    support::poll_until(
        "the watches of mappings and namespaces closed (1 when none is open)",
        Duration::from_secs(10),
        || f64::from(u8::from(open(&env.api) == 0)),
        1.0,
    )
    .await;
}

/// The resources are listed while the mappings are read; a controller stopped then (a term of
/// leadership lost, a shutdown) leaves no cache behind: a standby holds none.
#[tokio::test]
async fn a_controller_dropped_while_it_waits_for_the_mappings_leaves_no_cache_behind() {
    use std::time::Duration;

    let env = Env::start().await;
    env.api.namespace(NS, &[("team", "payments")]);
    env.api.create("prod", UID, spec("prod"));
    // The mappings cannot be read: it waits for them.
    env.api.deny(Some(http::Method::GET), "/accountmappings");
    let (_stop, task) = run_with_mappings(&env);
    let counted = |ctx: &eac_controller::connection::controller::Context| {
        ctx.metrics
            .encode()
            .lines()
            .any(|l| l.starts_with("eac_connections{") && l.ends_with(" 1"))
    };
    support::poll_until(
        "the resource listed while the mappings are refused (1 when counted from the cache)",
        Duration::from_secs(10),
        || f64::from(u8::from(counted(&env.ctx))),
        1.0,
    )
    .await;
    assert_eq!(
        env.calls("CreateEnvironmentAccountConnection"),
        0,
        "nothing reconciled yet"
    );

    task.abort();
    assert!(task.await.is_err_and(|e| e.is_cancelled()));
    assert!(!counted(&env.ctx), "the cache went with the controller");
}

/// Creates policy `accept` in `namespace`: management account 111122223333 accepts the requests
/// of environment account 444455556666 and leaves the others.
fn create_accept_policy(env: &Env, namespace: &str) {
    use eac_controller::policy::api::{
        ConnectionAcceptancePolicy, ConnectionAcceptancePolicySpec, UnmatchedRequests,
    };
    env.api.create_object(
        namespace,
        "accept",
        "uid-accept",
        ConnectionAcceptancePolicy::new(
            "accept",
            ConnectionAcceptancePolicySpec {
                management_account_id: "111122223333".into(),
                region: None,
                environment_account_ids: vec!["444455556666".into()],
                environment_names: None,
                unmatched: UnmatchedRequests::Leave,
            },
        ),
    );
}

/// Waits until `prod`'s status names its connection.
async fn wait_for_connection(env: &Env) {
    env.api
        .wait_until(
            "prod's status to name its connection",
            std::time::Duration::from_secs(20),
            |api| {
                api.get("prod")
                    .and_then(|o| o.status)
                    .is_some_and(|s| s.id.is_some())
            },
        )
        .await;
}

/// The whole controller as `run` wires it, with account mappings on, until `stop` fires.
/// The management side's context, with a Proton port of its own to `env`'s emulator.
fn policy_context(
    env: &Env,
    settings: eac_controller::connection::decide::Settings,
) -> eac_controller::policy::controller::Context {
    let metrics = eac_controller::metrics::Metrics::new();
    let proton = eac_controller::aws::proton::Proton::with_static_credentials(
        eac_controller::aws::proton::ProtonSettings {
            default_region: "us-east-1".into(),
            endpoint: Some(env.emulator.url()),
            sts_endpoint: None,
            timeout: std::time::Duration::from_secs(10),
        },
        eac_controller::aws::budget::CallBudget::unlimited(),
        metrics.clone(),
    );
    eac_controller::policy::controller::Context::new(
        env.api.client(),
        proton,
        settings,
        metrics,
        eac_controller::policy::controller::reporter(),
    )
}

/// The management side's controller over every namespace, until the task is aborted.
fn run_policies(
    ctx: std::sync::Arc<eac_controller::policy::controller::Context>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(eac_controller::policy::controller::run(
        ctx,
        None,
        2,
        futures::future::pending(),
        eac_controller::http::Readiness::default(),
    ))
}

fn run_with_mappings(
    env: &Env,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    use eac_controller::connection::controller::{self, WatchScope};
    use eac_controller::http::Readiness;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(controller::run(
        env.ctx.clone(),
        WatchScope {
            account_mappings: true,
            ..WatchScope::default()
        },
        2,
        async move {
            let _ = stopped.await;
        },
        Readiness::default(),
    ));
    (stop, task)
}

/// Waits until `name` says its namespace is matched by two mappings.
async fn wait_ambiguous(env: &Env, name: &str) {
    env.api
        .wait_until(
            &format!("{name} to say AmbiguousAccountMapping"),
            std::time::Duration::from_secs(20),
            |api| {
                api.get(name)
                    .and_then(|o| condition(&o, "Synced"))
                    .is_some_and(|c| c.1 == "AmbiguousAccountMapping")
            },
        )
        .await;
}

/// Only a namespace whose credentials changed has its resources reconciled: a watch of the
/// mappings or namespaces that fails (an API-server outage, a compaction) or a label change that
/// moves no namespace to other credentials reconciles nothing. Before, each of these reconciled
/// every resource the controller holds: at 10,000 resources, 10,000 reconciles for every failed
/// watch retry during an outage.
#[tokio::test]
async fn failed_watches_and_changes_that_move_no_namespace_reconcile_nothing() {
    use eac_controller::connection::api::EnvironmentAccountConnection;
    use std::time::Duration;

    // Matched by both mappings: each resource is reconciled once, says so, and waits for an
    // admin (no AWS call, no retry), so every later reconcile is one this test caused.
    let env = overlapping_mappings().await;
    env.api.namespace("other", &[("team", "other")]);
    // One more resource, alone in a namespace matched by both too, to move on purpose.
    const AMBIGUOUS: &[(&str, &str)] = &[("team", "payments"), ("tier", "prod")];
    env.api.namespace("elsewhere", AMBIGUOUS);
    env.api.account_mapping(
        "everything",
        &selecting(&[("all", "yes")], "arn:aws:iam::333333333333:role/eac"),
    );
    env.api.create_object(
        "elsewhere",
        "mover",
        "uid-mover",
        EnvironmentAccountConnection::new("mover", spec("mover")),
    );
    const N: usize = 12;
    for i in 0..N {
        env.api.create(
            &format!("r{i}"),
            &format!("uid-{i:04}"),
            spec(&format!("r{i}")),
        );
    }
    let (stop, task) = run_with_mappings(&env);
    for i in 0..N {
        wait_ambiguous(&env, &format!("r{i}")).await;
    }
    // The mover's condition names the mappings that match its namespace.
    let mover_names = |api: &support::FakeApi, everything: bool| {
        api.get_object::<EnvironmentAccountConnection>("elsewhere", "mover")
            .and_then(|o| condition(&o, "Synced"))
            .is_some_and(|c| {
                c.1 == "AmbiguousAccountMapping" && c.2.contains("everything") == everything
            })
    };
    env.api
        .wait_until("the mover ambiguous", Duration::from_secs(20), |api| {
            mover_names(api, false)
        })
        .await;
    let open = |api: &support::FakeApi| {
        api.open_watches("accountmappings") == 1 && api.open_watches("namespaces") == 1
    };
    env.api
        .wait_until(
            "the mapping and namespace watches open",
            Duration::from_secs(20),
            open,
        )
        .await;

    // What moving one namespace with one resource costs: that resource's reconciles.
    let before = env.reconciles();
    env.api
        .namespace("elsewhere", &[AMBIGUOUS, &[("all", "yes")]].concat());
    env.api
        .wait_until(
            "the mover matched by three",
            Duration::from_secs(20),
            |api| mover_names(api, true),
        )
        .await;
    let one_move = env.reconciles() - before;

    let before = env.reconciles();
    // The history is compacted: every watch ends with 410 Gone and lists again.
    env.api.expire_watches();
    // The API server stops and comes back: the watches fail and start again.
    env.api.down();
    env.api
        .wait_until(
            "the mapping and namespace watches refused while down",
            Duration::from_secs(20),
            |api| api.refused_to("accountmappings") > 0 && api.refused_to("namespaces") > 0,
        )
        .await;
    env.api.up();
    env.api
        .wait_until(
            "the mapping and namespace watches open again",
            Duration::from_secs(20),
            open,
        )
        .await;
    // Labels change where no mapping looks, and where both still match.
    env.api
        .namespace("other", &[("team", "other"), ("cost-centre", "42")]);
    env.api.namespace(
        NS,
        &[
            ("team", "payments"),
            ("tier", "prod"),
            ("owner", "platform"),
        ],
    );
    // A change that moves one namespace, after all of the above and through the same path (the
    // namespace watch, the comparison of credentials, the reconciles it asks for).
    env.api.namespace("elsewhere", AMBIGUOUS);
    env.api
        .wait_until(
            "the mover matched by two again",
            Duration::from_secs(20),
            |api| mover_names(api, false),
        )
        .await;
    assert_eq!(
        env.reconciles() - before,
        one_move,
        "only the moved resource was reconciled ({one_move} reconciles); the {N} others were not"
    );
    assert_eq!(env.total_calls(), 0);

    let _ = stop.send(());
    let _ = task.await;
}

/// A mapping deleted moves the namespaces it selected: their resources are reconciled at once,
/// and the mappings that remain say what they select now.
#[tokio::test]
async fn a_deleted_mapping_reconciles_the_namespaces_it_selected_at_once() {
    deleted_mapping(false).await;
}

/// The same, the mapping deleted while the API server was down and its history compacted
/// before it came back: the watch sees no DELETED event, only a relist without the mapping.
#[tokio::test]
async fn a_mapping_deleted_during_an_outage_reconciles_the_namespaces_it_selected_on_the_return() {
    deleted_mapping(true).await;
}

async fn deleted_mapping(during_outage: bool) {
    use std::time::Duration;

    let env = overlapping_mappings().await;
    env.api.create("prod", UID, spec("prod"));
    let (stop, task) = run_with_mappings(&env);
    wait_ambiguous(&env, "prod").await;

    if during_outage {
        env.api.down();
        env.api.delete_account_mapping("production");
        env.api.expire_watches();
        env.api
            .wait_until(
                "the mapping watch refused while down",
                Duration::from_secs(20),
                |api| api.refused_to("accountmappings") > 0,
            )
            .await;
        env.api.up();
    } else {
        env.api.delete_account_mapping("production");
    }
    wait_for_connection(&env).await;
    let conns = env.proton().connections();
    assert_eq!(conns.len(), 1);
    assert_eq!(
        conns[0].environment_account_id, "111111111111",
        "made with the mapping that remains"
    );
    env.api
        .wait_until(
            "the remaining mapping no longer overlapping",
            Duration::from_secs(20),
            |api| {
                api.object("/apis/proton.eac.dev/v1alpha1/accountmappings/payments")
                    .is_some_and(|o| {
                        o["status"]["conditions"][0]["reason"] == "Mapped"
                            && o["status"]["namespaceCount"] == 1
                    })
            },
        )
        .await;

    let _ = stop.send(());
    let _ = task.await;
}

/// A mapping's status write that fails is made again soon, though nothing changes after it (as
/// when the watches resume after an outage: no event, no relist).
#[tokio::test]
async fn a_failed_mapping_status_write_is_made_again_without_another_change() {
    use std::time::Duration;

    let env = Env::start_with(
        support::eager_settings(),
        eac_controller::aws::budget::CallBudget::unlimited(),
    )
    .await;
    env.api.namespace(NS, &[("team", "payments")]);
    env.api.account_mapping(
        "payments",
        &selecting(
            &[("team", "payments")],
            "arn:aws:iam::111111111111:role/eac",
        ),
    );
    let (stop, task) = run_with_mappings(&env);
    let count = |api: &support::FakeApi| {
        api.object("/apis/proton.eac.dev/v1alpha1/accountmappings/payments")
            .map(|o| o["status"]["namespaceCount"].clone())
    };
    env.api
        .wait_until(
            "the mapping selecting one namespace",
            Duration::from_secs(20),
            |api| count(api) == Some(serde_json::json!(1)),
        )
        .await;

    env.api.deny(
        Some(http::Method::PATCH),
        "/accountmappings/payments/status",
    );
    env.api.namespace(NS, &[("team", "search")]);
    env.api
        .wait_until("the status write refused", Duration::from_secs(20), |api| {
            api.requests()
                .iter()
                .any(|r| r.path.ends_with("/accountmappings/payments/status") && r.code == 403)
        })
        .await;
    env.api.allow_all();
    env.api
        .wait_until(
            "the status written within 10 s, nothing else having changed",
            Duration::from_secs(10),
            |api| count(api) == Some(serde_json::json!(0)),
        )
        .await;

    let _ = stop.send(());
    let _ = task.await;
}

/// A policy refused with the old credentials (its namespace not mapped yet: the controller's own
/// account is not the policy's management account) is read again as soon as a label maps its
/// namespace to the management role, not after its requeue (about a minute) or its poll.
#[tokio::test]
async fn a_policy_whose_namespace_a_mapping_takes_in_reads_again_at_once() {
    use std::sync::Arc;
    use std::time::Duration;

    use eac_controller::policy::api::ConnectionAcceptancePolicy;
    use eac_controller::reconciler::nudge::Nudge;

    const MGMT_ROLE: &str = "arn:aws:iam::111122223333:role/proton-management";
    const MGMT_NS: &str = "proton-management";
    let settings = eac_controller::connection::decide::Settings {
        resync: Duration::from_secs(600),
        pending_poll: Duration::from_secs(600),
        ..support::eager_settings()
    };
    let mut env = Env::start_full(
        settings.clone(),
        eac_controller::aws::budget::CallBudget::unlimited(),
        proton_emulator::EmulatorConfig {
            roles: vec![MGMT_ROLE.parse().unwrap()],
            ..Default::default()
        },
    )
    .await;
    let (connections, policy_nudge) = (Nudge::default(), Nudge::default());
    env.restart_with_nudges(connections.clone(), policy_nudge.clone());
    env.api.namespace(MGMT_NS, &[]);
    env.api.account_mapping(
        "management",
        &selecting(&[("proton.eac.dev/side", "management")], MGMT_ROLE),
    );
    let policy_ctx = Arc::new(
        policy_context(&env, settings)
            .with_accounts(env.ctx.accounts_handle())
            .with_nudges(connections, policy_nudge),
    );
    create_accept_policy(&env, MGMT_NS);
    let (stop, task) = run_with_mappings(&env);
    let policies_run = run_policies(policy_ctx);
    let reason = |api: &support::FakeApi| {
        api.get_object::<ConnectionAcceptancePolicy>(MGMT_NS, "accept")
            .and_then(|p| p.status)
            .and_then(|s| s.condition("Ready").map(|c| c.reason.clone()))
    };
    env.api
        .wait_until(
            "the policy refused: its namespace acts as the controller's own account",
            Duration::from_secs(20),
            |api| reason(api).as_deref() == Some("AccountMismatch"),
        )
        .await;

    env.api
        .namespace(MGMT_NS, &[("proton.eac.dev/side", "management")]);
    env.api
        .wait_until(
            "the policy read again as the management account within 3 s of the label",
            Duration::from_secs(3),
            |api| reason(api).as_deref() == Some("Applied"),
        )
        .await;
    assert_eq!(env.calls("AssumeRole"), 1, "as the management role");
    policies_run.abort();
    let _ = stop.send(());
    let _ = task.await;
}

/// A policy is not reconciled before the connection side has read the account mappings (at
/// every start and every term of leadership): it would report `AccountMappingsNotRead`, a
/// status write and a Warning, and a second write once they are read. Its watch lists
/// meanwhile, and it is reconciled as soon as they are.
#[tokio::test]
async fn a_policy_waits_for_the_account_mappings_before_its_first_reconcile() {
    use std::sync::Arc;
    use std::time::Duration;

    use eac_controller::policy::api::ConnectionAcceptancePolicy;

    const MGMT_ROLE: &str = "arn:aws:iam::111122223333:role/proton-management";
    const MGMT_NS: &str = "proton-management";
    let env = Env::start_full(
        support::eager_settings(),
        eac_controller::aws::budget::CallBudget::unlimited(),
        proton_emulator::EmulatorConfig {
            roles: vec![MGMT_ROLE.parse().unwrap()],
            ..Default::default()
        },
    )
    .await;
    env.api
        .namespace(MGMT_NS, &[("proton.eac.dev/side", "management")]);
    env.api.account_mapping(
        "management",
        &selecting(&[("proton.eac.dev/side", "management")], MGMT_ROLE),
    );
    create_accept_policy(&env, MGMT_NS);
    env.api.deny(Some(http::Method::GET), "/accountmappings");
    let policy_ctx = Arc::new(
        policy_context(&env, support::eager_settings()).with_accounts(env.ctx.accounts_handle()),
    );
    // As `runner::Controllers::run` does before starting either side.
    env.ctx
        .set_accounts(eac_controller::mapping::Accounts::waiting());
    let (stop, task) = run_with_mappings(&env);
    let policies_run = run_policies(policy_ctx);
    env.api
        .wait_until(
            "the policies listed, and two refused lists of AccountMappings",
            Duration::from_secs(20),
            |api| {
                let requests = api.requests();
                let policies_listed = requests
                    .iter()
                    .any(|r| r.path.ends_with("/connectionacceptancepolicies") && r.code == 200);
                let refused = requests
                    .iter()
                    .filter(|r| r.path.ends_with("/accountmappings") && r.code == 403)
                    .count();
                policies_listed && refused >= 2
            },
        )
        .await;
    let status = |api: &support::FakeApi| {
        api.get_object::<ConnectionAcceptancePolicy>(MGMT_NS, "accept")
            .and_then(|p| p.status)
    };
    assert!(
        status(&env.api).is_none(),
        "no status written before the mappings are read: {:?}",
        status(&env.api)
    );
    assert!(env.api.events().is_empty(), "{:?}", env.api.events());
    assert_eq!(env.total_calls(), 0, "no AWS call");

    env.api.allow_all();
    env.api
        .wait_until(
            "the policy reconciled as the management account once the mappings are read",
            Duration::from_secs(20),
            |api| {
                status(api)
                    .and_then(|s| s.condition("Ready").map(|c| c.reason.clone()))
                    .as_deref()
                    == Some("Applied")
            },
        )
        .await;
    let not_read: Vec<_> = env
        .api
        .events()
        .into_iter()
        .filter(|e| e["reason"] == "AccountMappingsNotRead")
        .collect();
    assert!(not_read.is_empty(), "{not_read:?}");
    assert_eq!(env.calls("AssumeRole"), 1, "as the management role");
    policies_run.abort();
    let _ = stop.send(());
    let _ = task.await;
}

/// A tenant's policy (its namespace unmapped, so it acts with the controller's own credentials,
/// of another account) names the management account of a team whose namespace a mapping
/// gives that account's role, and matches a request made to it; it is paused, so it makes no
/// call, and no resource asked for the controller's own account either. The team's policy,
/// which rejects what none of its group matches, must still reject the request: the
/// controller's own account is asked for, and the tenant's policy is no part of the group.
#[tokio::test]
async fn a_tenants_policy_naming_another_teams_account_does_not_shield_its_requests() {
    #![allow(deprecated)]
    use std::sync::Arc;
    use std::time::Duration;

    use eac_controller::connection::api::PAUSED_ANNOTATION;
    use eac_controller::policy::api::{
        ConnectionAcceptancePolicy, ConnectionAcceptancePolicySpec, UnmatchedRequests,
    };
    use kube::ResourceExt;

    const MGMT: &str = "111122223333";
    const MGMT_ROLE: &str = "arn:aws:iam::111122223333:role/proton-management";
    const MGMT_NS: &str = "proton-management";
    const TENANT_NS: &str = "tenant";
    const REQUESTER: &str = "999900001111";
    let settings = eac_controller::connection::decide::Settings {
        resync: Duration::from_secs(600),
        pending_poll: Duration::from_secs(600),
        ..support::eager_settings()
    };
    let env = Env::start_full(
        settings.clone(),
        eac_controller::aws::budget::CallBudget::unlimited(),
        proton_emulator::EmulatorConfig {
            roles: vec![MGMT_ROLE.parse().unwrap()],
            accounts: [("AKIDREQUESTER".to_string(), REQUESTER.to_string())].into(),
            ..Default::default()
        },
    )
    .await;
    let request = support::proton_client(&env.emulator.url(), "AKIDREQUESTER")
        .create_environment_account_connection()
        .environment_name("payments")
        .management_account_id(MGMT)
        .client_token("token-payments")
        .send()
        .await
        .expect("the environment account requests a connection");
    let id = request
        .environment_account_connection()
        .map(|c| c.id().to_string())
        .expect("the request");
    env.api
        .namespace(MGMT_NS, &[("proton.eac.dev/side", "management")]);
    env.api.namespace(TENANT_NS, &[]);
    env.api.account_mapping(
        "management",
        &selecting(&[("proton.eac.dev/side", "management")], MGMT_ROLE),
    );
    let policy = |accounts: &[&str], unmatched| {
        ConnectionAcceptancePolicy::new(
            "p",
            ConnectionAcceptancePolicySpec {
                management_account_id: MGMT.into(),
                region: None,
                environment_account_ids: accounts.iter().map(|a| a.to_string()).collect(),
                environment_names: None,
                unmatched,
            },
        )
    };
    let mut shield = policy(&[REQUESTER], UnmatchedRequests::Leave);
    shield
        .annotations_mut()
        .insert(PAUSED_ANNOTATION.into(), "true".into());
    env.api
        .create_object(TENANT_NS, "shield", "uid-shield", shield);
    env.api.create_object(
        MGMT_NS,
        "reject-rest",
        "uid-reject-rest",
        policy(&["121212121212"], UnmatchedRequests::Reject),
    );
    let policy_ctx =
        Arc::new(policy_context(&env, settings).with_accounts(env.ctx.accounts_handle()));
    let (stop, task) = run_with_mappings(&env);
    let policies_run = run_policies(policy_ctx);
    let state = |env: &Env| {
        env.proton()
            .connections()
            .into_iter()
            .find(|c| c.id == id)
            .map(|c| c.status)
    };
    let rejected = tokio::time::timeout(Duration::from_secs(20), async {
        while state(&env).as_deref() != Some("REJECTED") {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(
        rejected.is_ok(),
        "the request made to {MGMT} rejected by its team's policy within 20 s; it is {:?}; \
         the team's policy: {:?}",
        state(&env),
        env.api
            .get_object::<ConnectionAcceptancePolicy>(MGMT_NS, "reject-rest")
            .and_then(|p| p.status)
    );
    policies_run.abort();
    let _ = stop.send(());
    let _ = task.await;
}
