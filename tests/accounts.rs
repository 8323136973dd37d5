//! Many environment accounts from one controller: AccountMappings pick the IAM role a
//! namespace's resources act with. The real reconcile against the in-memory API server and the
//! Proton emulator over HTTP on 127.0.0.1 (which serves STS AssumeRole on the same port).

mod support;

use std::collections::BTreeMap;

use eac_controller::accounts::{AccountMapping, AccountMappingSpec, Accounts};
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

    let action = env.reconcile("prod").await.unwrap();

    let obj = env.api.get("prod").unwrap();
    assert_eq!(condition(&obj, "Synced").unwrap().1, "NamespaceNotFound");
    assert_eq!(condition(&obj, "Stalled").unwrap().0, "False");
    assert!(support::requeue_of(&action) < std::time::Duration::from_secs(5));
    assert_eq!(env.total_calls(), 0);
}

/// The whole controller: it reads the mappings and namespaces through its own watches, and a
/// change to either reconciles the affected resources at once (not at their next resync).
#[tokio::test]
async fn the_running_controller_follows_mapping_and_namespace_label_changes_at_once() {
    use eac_controller::controller::{self, WatchScope};
    use eac_controller::http::Readiness;
    use std::time::Duration;

    // A production resync: nothing may happen just because a resource came due.
    let settings = eac_controller::decide::Settings {
        resync: Duration::from_secs(3600),
        pending_poll: Duration::from_secs(3600),
        ..support::eager_settings()
    };
    let env = Env::start_with(settings, eac_controller::budget::CallBudget::unlimited()).await;
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
    env.api.create("prod", UID, spec("prod"));
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
    env.api
        .wait_until("a connection", Duration::from_secs(20), |api| {
            api.get("prod")
                .and_then(|o| o.status)
                .is_some_and(|s| s.id.is_some())
        })
        .await;
    assert_eq!(env.proton().connections().len(), 1);

    let _ = stop.send(());
    let _ = task.await;
}
