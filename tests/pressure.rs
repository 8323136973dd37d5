//! Under pressure, faults and hostile input: persistent Kubernetes errors, a changed default
//! region or account, a stripped finalizer, a tenant adopting what is not theirs, resources
//! leaving the watch, a failing watch, and exactly-once under strict idempotency and List lag.
//! Real reconcile, in-memory API server (tower-test), Proton emulator over HTTP on 127.0.0.1.

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use eac_controller::aws::budget::CallBudget;
use eac_controller::connection::api::{ADOPT_ANNOTATION, ConnectionState, FINALIZER, TAG_UID};
use eac_controller::connection::controller::{self, WatchScope};
use eac_controller::connection::decide::{AdoptionPolicy, Settings};
use eac_controller::http::Readiness;
use eac_controller::reconciler::watch::PAGE;
use proton_emulator::{EmulatorConfig, Faults, Idempotency};
use support::{Env, condition, eager_settings, patient, reconcile_until, requeue_of, spec};

const UID: &str = "0b9c6f1e-7d2a-4c55-9f0e-1a2b3c4d5e6f";
const CREATE: &str = "CreateEnvironmentAccountConnection";
const GET: &str = "GetEnvironmentAccountConnection";
const UPDATE: &str = "UpdateEnvironmentAccountConnection";
const TAG: &str = "TagResource";
const LIST: &str = "ListEnvironmentAccountConnections";
const LIST_TAGS: &str = "ListTagsForResource";
const DELETE: &str = "DeleteEnvironmentAccountConnection";
const LIMIT: Duration = Duration::from_secs(20);

/// Polls a condition that changes inside the controller, with a deadline.
async fn eventually(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits for the controller's PENDING gauge, counted from its watch cache at each scrape, to
/// read `n`.
async fn pending_gauge_reaches(env: &Env, n: usize, what: &str) {
    let series = format!("eac_connections{{status=\"PENDING\"}} {n}");
    eventually(what, LIMIT, || env.ctx.metrics.encode().contains(&series)).await;
}

/// The whole controller as `run` wires it, until the returned sender is dropped or fired.
fn run_controller(
    env: &Env,
    scope: WatchScope,
    readiness: Readiness,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(controller::run(
        env.ctx.clone(),
        scope,
        2,
        async move {
            let _ = stop_rx.await;
        },
        readiness,
    ));
    (stop_tx, task)
}

// ---------------------------------------------------------------------------------------------
// 1. Backoff for Kubernetes errors
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_persistent_403_on_the_status_backs_off_exponentially_and_never_repeats_a_create() {
    let env = Env::start_with(patient(), CallBudget::unlimited()).await;
    env.api.create("prod", UID, spec("prod"));
    // The ServiceAccount may patch the resource but not its status subresource.
    env.api.deny(
        Some(http::Method::PATCH),
        "/environmentaccountconnections/prod/status",
    );

    let mut waits = Vec::new();
    for _ in 0..8 {
        let obj = Arc::new(env.api.get("prod").unwrap());
        let err = env
            .resync("prod")
            .await
            .expect_err("the status write is forbidden");
        assert!(
            err.to_string().contains("403") || err.to_string().contains("forbidden"),
            "{err}"
        );
        let action = controller::error_policy(obj, &err, env.ctx.clone());
        waits.push(requeue_of(&action));
    }

    assert_eq!(
        env.calls(CREATE),
        1,
        "created once; every retry reads the connection it remembers instead"
    );
    for pair in waits.windows(2) {
        assert!(
            pair[1] >= pair[0].mul_f64(1.2),
            "each wait grows (jitter included): {waits:?}"
        );
    }
    // What the real API server showed as 55 attempts in 40 s: now the attempts that fit.
    let mut elapsed = Duration::ZERO;
    let attempts_in_40s = 1 + waits
        .iter()
        .take_while(|w| {
            elapsed += **w;
            elapsed <= Duration::from_secs(40)
        })
        .count();
    assert!(
        attempts_in_40s <= 8,
        "{attempts_in_40s} attempts in 40 s: {waits:?}"
    );
    assert!(
        waits.iter().all(|w| *w <= Duration::from_secs(375)),
        "capped: {waits:?}"
    );

    // The error is reported once as an Event, not once per attempt.
    env.api
        .wait_until("the KubernetesError event", LIMIT, |api| {
            api.event_reasons().iter().any(|r| r == "KubernetesError")
        })
        .await;
    let reported = env
        .api
        .event_reasons()
        .iter()
        .filter(|r| *r == "KubernetesError")
        .count();
    assert_eq!(reported, 1);

    // Once RBAC is fixed, the next attempt records the connection.
    env.api.allow_all();
    env.resync("prod").await.unwrap();
    assert_eq!(env.calls(CREATE), 1);
    let status = env.api.get("prod").unwrap().status.unwrap();
    assert_eq!(status.id, Some(env.proton().connections()[0].id.clone()));
}

/// A real API server words a 403 with the object's name and namespace, and kube's error repeats
/// the server's message: with a long name the error is longer than the 1 KiB a real server takes
/// in an Event's note (the fake refuses longer ones as it does, with 422). The Event explaining
/// the failure is still published, its note cut to fit.
#[tokio::test]
async fn the_event_of_a_long_error_is_cut_to_what_the_api_server_takes() {
    let env = Env::start_with(patient(), CallBudget::unlimited()).await;
    let name = format!("payments-{}", "eu-west-1-".repeat(24))
        .trim_end_matches('-')
        .to_string();
    assert!(name.len() <= 253, "{}", name.len());
    env.api.create(&name, UID, spec(&name));
    env.api.deny(
        Some(http::Method::PATCH),
        &format!("/environmentaccountconnections/{name}/status"),
    );
    let obj = Arc::new(env.api.get(&name).unwrap());
    let err = env
        .resync(&name)
        .await
        .expect_err("the status write is forbidden");
    assert!(
        err.to_string().len() > 1024,
        "the error alone is over the limit ({} bytes), or this test proves nothing",
        err.to_string().len()
    );
    controller::error_policy(obj, &err, env.ctx.clone());
    env.api
        .wait_until("the KubernetesError event", LIMIT, |api| {
            api.event_reasons().iter().any(|r| r == "KubernetesError")
        })
        .await;
    let notes: Vec<String> = env
        .api
        .events()
        .iter()
        .filter(|e| e["reason"] == "KubernetesError")
        .map(|e| e["note"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(notes.len(), 1, "{notes:?}");
    assert!(notes[0].len() <= 1024, "{}", notes[0].len());
    assert!(notes[0].contains("is forbidden"), "{}", notes[0]);
}

#[tokio::test]
async fn a_spec_change_starts_the_backoff_again() {
    let env = Env::start_with(patient(), CallBudget::unlimited()).await;
    env.api.create("prod", UID, spec("prod"));
    env.api.deny(
        Some(http::Method::PATCH),
        "/environmentaccountconnections/prod/status",
    );
    let mut last = Duration::ZERO;
    for _ in 0..5 {
        let obj = Arc::new(env.api.get("prod").unwrap());
        let err = env.resync("prod").await.unwrap_err();
        last = requeue_of(&controller::error_policy(obj, &err, env.ctx.clone()));
    }
    assert!(last >= Duration::from_secs(12), "{last:?}");

    env.api.edit("prod", |o| {
        o.spec.role_arn = Some("arn:aws:iam::444455556666:role/v2".into())
    });
    let obj = Arc::new(env.api.get("prod").unwrap());
    let err = env.reconcile("prod").await.unwrap_err();
    let first = requeue_of(&controller::error_policy(obj, &err, env.ctx.clone()));
    assert!(first <= Duration::from_millis(1250), "{first:?}");
}

// ---------------------------------------------------------------------------------------------
// 3. Region and account pinned at creation
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_changed_default_region_never_moves_or_recreates_a_connection() {
    let mut env = Env::start().await;
    env.api.create("prod", UID, spec("prod"));
    env.reconcile("prod").await.unwrap();
    let id = env.proton().connections()[0].id.clone();
    assert_eq!(env.proton().connections()[0].region, "us-east-1");

    // The controller restarts with --region eu-west-1.
    env.restart_in_region("eu-west-1");
    env.proton().accept(&id).unwrap();
    env.resync("prod").await.unwrap();

    let status = env.api.get("prod").unwrap().status.unwrap();
    assert_eq!(status.region.as_deref(), Some("us-east-1"), "the pin holds");
    assert_eq!(status.id.as_deref(), Some(id.as_str()));
    assert_eq!(status.status, Some(ConnectionState::Connected));
    assert_eq!(env.calls(CREATE), 1, "nothing re-created in the new region");
    assert_eq!(env.proton().connections().len(), 1);

    // A new resource goes to the new default region.
    env.api.create(
        "staging",
        "11111111-2222-4333-8444-555555555555",
        spec("staging"),
    );
    env.reconcile("staging").await.unwrap();
    let staging = env.api.get("staging").unwrap().status.unwrap();
    assert_eq!(staging.region.as_deref(), Some("eu-west-1"));
    let regions: Vec<String> = env
        .proton()
        .connections()
        .into_iter()
        .map(|c| c.region)
        .collect();
    assert_eq!(regions, ["us-east-1", "eu-west-1"]);
}

#[tokio::test]
async fn credentials_of_another_account_change_nothing_and_say_so() {
    let mut env = Env::start().await;
    env.api.create("prod", UID, spec("prod"));
    env.reconcile("prod").await.unwrap();
    // The controller restarts with credentials that act as another account than the one the
    // connection was created in (the emulator answers 444455556666; the pin says otherwise).
    env.restart();
    env.api.edit("prod", |o| {
        if let Some(s) = o.status.as_mut() {
            s.environment_account_id = Some("999988887777".into());
        }
    });
    let mutating = env.mutating_calls();
    let gets = env.calls(GET);

    env.resync("prod").await.unwrap();

    let obj = env.api.get("prod").unwrap();
    let synced = condition(&obj, "Synced").unwrap();
    assert_eq!(
        (synced.0.as_str(), synced.1.as_str()),
        ("False", "AccountMismatch")
    );
    assert!(
        synced.2.contains("999988887777") && synced.2.contains("444455556666"),
        "{}",
        synced.2
    );
    assert_eq!(
        env.mutating_calls(),
        mutating,
        "nothing created, changed or deleted"
    );
    assert_eq!(env.calls(GET), gets, "not even read in the wrong account");

    // Deleting it does not delete (or orphan) the connection either: the finalizer stays.
    env.api.delete("prod");
    env.resync("prod").await.unwrap();
    assert_eq!(env.mutating_calls(), mutating);
    let obj = env.api.get("prod").expect("still held by the finalizer");
    assert_eq!(condition(&obj, "Synced").unwrap().1, "AccountMismatch");
    assert_eq!(env.proton().connections().len(), 1);
}

#[tokio::test]
async fn a_region_outside_the_allowed_ones_is_refused_before_any_aws_call() {
    let settings = Settings {
        allowed_regions: vec!["us-east-1".into()],
        ..eager_settings()
    };
    let env = Env::start_with(settings, CallBudget::unlimited()).await;
    let mut s = spec("prod");
    s.region = Some("ap-south-1".into());
    env.api.create("prod", UID, s);

    env.reconcile("prod").await.unwrap();

    let obj = env.api.get("prod").unwrap();
    let stalled = condition(&obj, "Stalled").unwrap();
    assert_eq!(
        (stalled.0.as_str(), stalled.1.as_str()),
        ("True", "RegionNotAllowed")
    );
    assert!(stalled.2.contains("ap-south-1"), "{}", stalled.2);
    assert_eq!(env.total_calls(), 0);
}

// ---------------------------------------------------------------------------------------------
// 4. A stripped finalizer
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_stripped_finalizer_is_put_back_without_calling_aws() {
    let env = Env::start_with(patient(), CallBudget::unlimited()).await;
    env.api.create("prod", UID, spec("prod"));
    env.reconcile("prod").await.unwrap();
    let calls = env.total_calls();

    env.api.edit("prod", |o| o.metadata.finalizers = None);
    env.reconcile("prod").await.unwrap();

    let obj = env.api.get("prod").unwrap();
    assert_eq!(obj.metadata.finalizers, Some(vec![FINALIZER.to_string()]));
    assert_eq!(env.total_calls(), calls, "not due: no AWS call");
}

#[tokio::test]
async fn the_running_controller_restores_a_stripped_finalizer_at_once() {
    let env = Env::start_with(patient(), CallBudget::unlimited()).await;
    let (stop, task) = run_controller(&env, WatchScope::default(), Readiness::default());
    env.api.create("prod", UID, spec("prod"));
    env.api
        .wait_for("prod", "a connection", LIMIT, |o| {
            o.and_then(|o| o.status.as_ref())
                .is_some_and(|s| s.id.is_some())
        })
        .await;

    env.api.edit("prod", |o| o.metadata.finalizers = None);
    let started = tokio::time::Instant::now();
    env.api
        .wait_for("prod", "the finalizer back", Duration::from_secs(2), |o| {
            o.is_some_and(|o| o.finalizers().iter().any(|f| f == FINALIZER))
        })
        .await;
    println!("finalizer restored in {:?}", started.elapsed());
    let _ = stop.send(());
    task.await.unwrap();
}

/// A reconcile that read a resource, then found the name taken by another (deleted and applied
/// again, as `kubectl replace --force` or a GitOps tool's replace does, while the reconcile
/// waited for a slot in the AWS budget): nothing of the old one lands on the new one, neither
/// its finalizer nor its intent to create nor a connection; the new one gets its own.
#[tokio::test]
async fn a_reconcile_of_a_resource_replaced_under_the_same_name_writes_nothing_to_its_successor() {
    const OLD: &str = "0b9c6f1e-7d2a-4c55-9f0e-00000000000a";
    let env = Env::start_with(patient(), CallBudget::unlimited()).await;
    env.api.create("prod", OLD, spec("prod"));
    let old = env.api.get("prod").unwrap();
    env.api.delete("prod");
    assert!(env.api.get("prod").is_none(), "no finalizer yet: gone");
    env.api.create("prod", UID, spec("prod"));

    let outcome = controller::reconcile(Arc::new(old), env.ctx.clone()).await;

    assert!(outcome.is_err(), "{outcome:?}");
    let now = env.api.get("prod").unwrap();
    assert_eq!(now.metadata.uid.as_deref(), Some(UID));
    assert_eq!(now.metadata.finalizers, None, "the old one's finalizer");
    assert_eq!(now.metadata.annotations, None, "the old one's intent");
    assert_eq!(now.status, None);
    assert!(env.proton().connections().is_empty(), "no Create");

    env.reconcile("prod").await.unwrap();
    let conns = env.proton().connections();
    assert_eq!(conns.len(), 1);
    assert_eq!(conns[0].client_token.as_deref(), Some(UID));
    let status = env.api.get("prod").unwrap().status.unwrap();
    assert_eq!(status.id.as_deref(), Some(conns[0].id.as_str()));
}

use kube::ResourceExt;

// ---------------------------------------------------------------------------------------------
// 5. Tenants and adoption
// ---------------------------------------------------------------------------------------------

fn adopting(env: &Env, name: &str, id: &str) {
    env.api.create(name, UID, spec("prod"));
    env.api.edit(name, |o| {
        o.metadata.annotations = Some(BTreeMap::from([(
            ADOPT_ANNOTATION.to_string(),
            id.to_string(),
        )]));
    });
}

#[tokio::test]
async fn a_tenant_cannot_adopt_unless_a_cluster_admin_opted_the_namespace_in() {
    let settings = Settings {
        adoption: AdoptionPolicy::NamespaceOptIn,
        ..eager_settings()
    };
    let env = Env::start_with(settings, CallBudget::unlimited()).await;
    env.api.namespace(support::NS, &[("team", "payments")]);
    let theirs = env.foreign_connection("prod").await;
    let before = env.proton().connections();
    let calls = env.total_calls();

    adopting(&env, "mine", &theirs);
    env.reconcile("mine").await.unwrap();

    let obj = env.api.get("mine").unwrap();
    let synced = condition(&obj, "Synced").unwrap();
    assert_eq!(
        (synced.0.as_str(), synced.1.as_str()),
        ("False", "AdoptionNotAllowed")
    );
    assert!(
        synced.2.contains("proton.eac.dev/adoption=allowed"),
        "{}",
        synced.2
    );
    assert_eq!(env.total_calls(), calls, "Proton was not even asked");
    assert_eq!(
        env.proton().connections(),
        before,
        "nothing changed in Proton"
    );
    assert!(obj.status.unwrap().id.is_none());

    // Deleting the refused resource leaves their connection alone.
    env.api.delete("mine");
    env.resync("mine").await.unwrap();
    assert!(env.api.get("mine").is_none());
    assert_eq!(env.proton().connections(), before);

    // The cluster admin opts the namespace in: adoption works there.
    env.api
        .namespace(support::NS, &[("proton.eac.dev/adoption", "allowed")]);
    adopting(&env, "adopter", &theirs);
    env.reconcile("adopter").await.unwrap();
    let status = env.api.get("adopter").unwrap().status.unwrap();
    assert_eq!(status.id.as_deref(), Some(theirs.as_str()));
}

#[tokio::test]
async fn adoption_can_be_disabled_everywhere() {
    let settings = Settings {
        adoption: AdoptionPolicy::Disabled,
        ..eager_settings()
    };
    let env = Env::start_with(settings, CallBudget::unlimited()).await;
    env.api
        .namespace(support::NS, &[("proton.eac.dev/adoption", "allowed")]);
    let theirs = env.foreign_connection("prod").await;
    adopting(&env, "mine", &theirs);
    env.reconcile("mine").await.unwrap();
    let obj = env.api.get("mine").unwrap();
    assert_eq!(condition(&obj, "Synced").unwrap().1, "AdoptionNotAllowed");
    assert_eq!(env.calls(GET), 0);
}

// ---------------------------------------------------------------------------------------------
// 7. Nothing kept per resource outlives it in the watch cache
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn state_kept_per_resource_goes_when_the_resource_leaves_the_watch() {
    let env = Env::start_with(patient(), CallBudget::unlimited()).await;
    let scope = WatchScope {
        namespace: None,
        label_selector: Some("shard=a".into()),
        account_mappings: false,
        ..WatchScope::default()
    };
    let (stop, task) = run_controller(&env, scope, Readiness::default());
    let mut tracked = env.ctx.tracked_changes();
    for (i, name) in ["kept", "forced", "moved"].iter().enumerate() {
        env.api.create(
            name,
            &format!("00000000-0000-4000-8000-00000000000{i}"),
            spec(name),
        );
        env.api.edit(name, |o| {
            o.metadata.labels = Some(BTreeMap::from([("shard".into(), "a".into())]));
        });
    }
    for name in ["kept", "forced", "moved"] {
        env.api
            .wait_for(name, "a connection", LIMIT, |o| {
                o.and_then(|o| o.status.as_ref())
                    .is_some_and(|s| s.id.is_some())
            })
            .await;
    }
    tokio::time::timeout(LIMIT, tracked.wait_for(|n| *n == 3))
        .await
        .expect("three tracked")
        .unwrap();
    // Counted from the watch cache at the scrape: the last status write may not be in it yet.
    pending_gauge_reaches(&env, 3, "the gauge to count the three PENDING").await;

    // Force-deleted (finalizer stripped), and relabelled out of this controller's shard.
    env.api.edit("forced", |o| o.metadata.finalizers = None);
    env.api.force_delete("forced");
    env.api.edit("moved", |o| {
        o.metadata.labels = Some(BTreeMap::from([("shard".into(), "b".into())]));
    });

    tokio::time::timeout(LIMIT, tracked.wait_for(|n| *n == 1))
        .await
        .expect("only the resource still watched is tracked")
        .unwrap();
    pending_gauge_reaches(&env, 1, "the gauge to follow the watch cache").await;
    let _ = stop.send(());
    task.await.unwrap();
    assert!(
        !env.ctx.metrics.encode().contains("eac_connections"),
        "a controller that stopped exports no per-status gauge"
    );
}

// ---------------------------------------------------------------------------------------------
// 8. Readiness follows the watch
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn readiness_goes_false_while_the_watch_fails_and_comes_back_with_it() {
    let env = Env::start_with(patient(), CallBudget::unlimited()).await;
    let readiness = Readiness::new(Duration::ZERO);
    let (stop, task) = run_controller(&env, WatchScope::default(), readiness.clone());
    env.api.create("prod", UID, spec("prod"));
    env.api
        .wait_for("prod", "a connection", LIMIT, |o| {
            o.and_then(|o| o.status.as_ref())
                .is_some_and(|s| s.id.is_some())
        })
        .await;
    eventually("ready", LIMIT, || readiness.get()).await;

    // RBAC on the resource is withdrawn, and the watch is expired: every relist is refused.
    env.api
        .deny(Some(http::Method::GET), "/environmentaccountconnections");
    env.api.expire_watches();
    eventually("not ready", LIMIT, || !readiness.get()).await;
    let why = readiness.check().unwrap_err();
    assert!(why.contains("failed"), "{why}");

    env.api.allow_all();
    eventually("ready again", Duration::from_secs(60), || readiness.get()).await;
    let _ = stop.send(());
    task.await.unwrap();
}

/// Starts the controller with a resource there before it and one applied after it is ready;
/// returns the requests to the EnvironmentAccountConnection collection, as "METHOD kind" counts.
async fn start_with_one_before_and_one_after(env: &Env) -> BTreeMap<String, u64> {
    env.api.create("before", UID, spec("before"));
    let readiness = Readiness::new(Duration::from_secs(5));
    let (stop, task) = run_controller(env, WatchScope::default(), readiness.clone());
    eventually("ready", LIMIT, || readiness.get()).await;
    env.api.create(
        "after",
        "0b9c6f1e-7d2a-4c55-9f0e-00000000aft2",
        spec("after"),
    );
    for name in ["before", "after"] {
        env.api
            .wait_for(name, "a connection", LIMIT, |o| {
                o.and_then(|o| o.status.as_ref())
                    .is_some_and(|s| s.id.is_some())
            })
            .await;
    }
    let _ = stop.send(());
    task.await.unwrap();
    env.api
        .request_counts()
        .into_iter()
        .filter(|(k, _)| k == "GET list" || k == "GET watch")
        .collect()
}

#[tokio::test]
async fn the_watch_streams_its_initial_state_instead_of_listing() {
    let env = Env::start_with(patient(), CallBudget::unlimited()).await;
    let requests = start_with_one_before_and_one_after(&env).await;
    assert_eq!(requests.get("GET list"), None, "{requests:?}");
    assert!(requests.contains_key("GET watch"), "{requests:?}");
    assert!(
        env.api
            .requests()
            .iter()
            .any(|r| r.path.ends_with("/environmentaccountconnections")
                && r.query.contains("sendInitialEvents=true")),
        "the watch asked for its initial state as events"
    );
}

#[tokio::test]
async fn where_the_api_server_refuses_to_stream_a_watch_s_initial_state_it_is_listed() {
    let env = Env::start_with(patient(), CallBudget::unlimited()).await;
    // kube-apiserver 1.33: the WatchList feature is off, such a watch is answered 422.
    env.api.watch_list_off();
    let requests = start_with_one_before_and_one_after(&env).await;
    assert!(env.api.answered(422) >= 1, "the streamed watch was refused");
    assert!(requests.contains_key("GET list"), "{requests:?}");
    assert!(requests.contains_key("GET watch"), "{requests:?}");
    // In pages of the controller's size, each of the most recent state (not every object from
    // the watch cache at once, which `resourceVersion=0` would ask for).
    let lists: Vec<String> = env
        .api
        .requests()
        .into_iter()
        .filter(|r| {
            r.method == http::Method::GET
                && r.path.ends_with("/environmentaccountconnections")
                && !r.query.contains("watch=")
        })
        .map(|r| r.query)
        .collect();
    let page = format!("limit={PAGE}");
    assert!(
        !lists.is_empty()
            && lists
                .iter()
                .all(|q| { q.split('&').any(|p| p == page) && !q.contains("resourceVersion=0") }),
        "the lists ask for pages of {PAGE}, not the cache's every object: {lists:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// 9 and 10. Exactly once under strict idempotency and List lag; tags read after a replay
// ---------------------------------------------------------------------------------------------

/// Under strict idempotency, prod's Create succeeds, the status write after it is lost, and the
/// process dies: the next controller does not know the connection exists.
async fn crashed_after_its_create() -> Env {
    let emulator = EmulatorConfig {
        idempotency: Idempotency::Strict,
        ..EmulatorConfig::default()
    };
    let env = Env::start_full(eager_settings(), CallBudget::unlimited(), emulator).await;
    env.api.create("prod", UID, spec("prod"));
    env.api.fail_status_writes(1);
    assert!(env.reconcile("prod").await.is_err());
    env
}

#[tokio::test]
async fn a_spec_edit_after_a_crash_converges_the_same_connection_under_strict_idempotency() {
    let mut env = crashed_after_its_create().await;
    env.restart();
    // Meanwhile the spec changes: the retried Create carries other parameters.
    env.api.edit("prod", |o| {
        o.spec.role_arn = Some("arn:aws:iam::444455556666:role/v2".into());
        o.spec.tags.insert("tier".into(), "gold".into());
    });

    env.reconcile("prod").await.unwrap();

    let conns = env.proton().connections();
    assert_eq!(conns.len(), 1, "exactly one connection");
    let c = &conns[0];
    assert_eq!(
        c.role_arn.as_deref(),
        Some("arn:aws:iam::444455556666:role/v2")
    );
    assert_eq!(c.tags.get("tier").map(String::as_str), Some("gold"));
    let status = env.api.get("prod").unwrap().status.unwrap();
    assert_eq!(status.id.as_deref(), Some(c.id.as_str()));
    assert_eq!(
        condition(&env.api.get("prod").unwrap(), "Synced")
            .unwrap()
            .0,
        "True"
    );
    assert_eq!(
        env.calls(CREATE),
        2,
        "the replay was refused (Conflict) ..."
    );
    assert_eq!(
        env.calls(LIST),
        1,
        "... so the connection was found by its uid tag ..."
    );
    assert_eq!(
        (env.calls(UPDATE), env.calls(TAG)),
        (1, 1),
        "... and converged"
    );
}

/// The same crash and edit under a call budget of 5 a second with no burst (`--aws-calls-per-
/// second 5 --aws-burst 1`): each call after another has to come back 200 ms later. The search
/// for the connection is two calls (a List, then its tags); the second was deferred, and the
/// next reconcile spent its booked slot on the List again, every time, so the resource never
/// settled (found as a rare timeout of the start-up crash test, where other work kept the budget
/// at its edge). Now the booking covers the calls the search repeats.
#[tokio::test]
async fn a_search_of_two_calls_gets_through_a_budget_with_room_for_one_at_a_time() {
    let mut env = crashed_after_its_create().await;
    env.restart_with_budget(CallBudget::new(
        std::num::NonZeroU32::new(5).unwrap(),
        std::num::NonZeroU32::new(1).unwrap(),
        0.5,
    ));
    env.api.edit("prod", |o| {
        o.spec.role_arn = Some("arn:aws:iam::444455556666:role/v2".into());
    });

    // Each reconcile goes as far as the budget lets it and comes back when told.
    let env = &env;
    reconcile_until(
        10,
        || synced(env),
        || {
            format!(
                "not Synced: {} Lists, {} ListTags, status {:?}",
                env.calls(LIST),
                env.calls(LIST_TAGS),
                env.api.get("prod").and_then(|o| o.status)
            )
        },
        || async {
            env.resync("prod").await.unwrap();
            env.comes_back_in("prod")
        },
    )
    .await;
    let conns = env.proton().connections();
    assert_eq!(conns.len(), 1, "exactly one connection");
    assert_eq!(
        env.api
            .get("prod")
            .and_then(|o| o.status)
            .and_then(|s| s.id),
        Some(conns[0].id.clone())
    );
    assert!(
        env.calls(LIST) <= 2,
        "the search's List at most twice: once, and once more after its ListTags was deferred: {}",
        env.calls(LIST)
    );
}

fn synced(env: &Env) -> bool {
    env.api
        .get("prod")
        .and_then(|o| condition(&o, "Synced"))
        .is_some_and(|(status, _, _)| status == "True")
}

#[tokio::test]
async fn tags_are_read_after_a_create_answered_by_token_replay() {
    let mut env = Env::start().await;
    env.api.create("prod", UID, spec("prod"));
    env.api.fail_status_writes(1);
    assert!(env.reconcile("prod").await.is_err());
    env.restart();
    env.api.edit("prod", |o| {
        o.spec.tags.insert("tier".into(), "gold".into());
    });

    // Lenient idempotency: the replay returns the connection as first created, without "tier".
    env.reconcile("prod").await.unwrap();

    assert_eq!(env.calls(LIST_TAGS), 1, "the tags were read, not assumed");
    assert_eq!(env.calls(TAG), 1);
    let c = &env.proton().connections()[0];
    assert_eq!(c.tags.get("tier").map(String::as_str), Some("gold"));
    assert_eq!(c.tags.get(TAG_UID).map(String::as_str), Some(UID));
}

#[tokio::test]
async fn deleting_while_a_created_connection_is_not_listed_yet_waits_for_it_and_deletes_it() {
    let emulator = EmulatorConfig {
        list_lag: Duration::from_secs(60),
        ..EmulatorConfig::default()
    };
    let mut env = Env::start_full(eager_settings(), CallBudget::unlimited(), emulator).await;
    env.api.create("prod", UID, spec("prod"));
    env.api.fail_status_writes(1);
    assert!(env.reconcile("prod").await.is_err());
    env.restart();

    env.api.delete("prod");
    env.reconcile("prod").await.unwrap();

    // List does not show it yet: the resource is kept, and says why.
    let obj = env
        .api
        .get("prod")
        .expect("kept while the Create may still appear");
    assert_eq!(condition(&obj, "Ready").unwrap().1, "Deleting");
    assert_eq!(env.calls(DELETE), 0);
    assert_eq!(env.proton().connections().len(), 1);

    // The List catches up.
    env.proton().advance_clock(Duration::from_secs(61));
    env.resync("prod").await.unwrap();

    assert!(env.proton().connections().is_empty(), "no orphan");
    assert!(env.api.get("prod").is_none());
}

#[tokio::test]
async fn deleting_after_a_create_that_timed_out_still_deletes_the_connection() {
    let mut env = Env::start_timed(
        eager_settings(),
        CallBudget::unlimited(),
        EmulatorConfig::default(),
        Duration::from_millis(500),
    )
    .await;
    env.proton().set_faults(Faults {
        latency: Duration::from_millis(800),
        ..Faults::default()
    });
    env.api.create("prod", UID, spec("prod"));

    // The Create completes in Proton, but its answer comes after the client gave up.
    env.reconcile("prod").await.unwrap();
    let obj = env.api.get("prod").unwrap();
    assert_eq!(condition(&obj, "Synced").unwrap().1, "AwsUnavailable");
    assert!(
        obj.status.unwrap().create_sent_at.is_some(),
        "kept: it may exist"
    );
    assert_eq!(env.proton().connections().len(), 1);
    env.proton().set_faults(Faults::default());
    env.restart();

    env.api.delete("prod");
    env.resync("prod").await.unwrap();

    assert!(
        env.proton().connections().is_empty(),
        "found by its uid tag and deleted"
    );
    assert!(env.api.get("prod").is_none());
}

#[tokio::test]
async fn a_finalizer_list_that_changed_under_the_controller_is_not_overwritten() {
    let env = Env::start_with(patient(), CallBudget::unlimited()).await;
    env.api.create("prod", UID, spec("prod"));
    // The controller's cache still has the object without finalizers; meanwhile someone else
    // added theirs.
    let stale = Arc::new(env.api.get("prod").unwrap());
    env.api.edit("prod", |o| {
        o.metadata.finalizers = Some(vec!["example.com/other".into()])
    });

    let err = controller::reconcile(stale, env.ctx.clone())
        .await
        .expect_err("the guarded patch is refused");
    assert!(
        err.to_string().contains("422") || err.to_string().contains("test"),
        "{err}"
    );
    assert_eq!(env.api.answered(422), 1);
    assert_eq!(
        env.api.get("prod").unwrap().metadata.finalizers,
        Some(vec!["example.com/other".to_string()]),
        "theirs is kept"
    );
    assert_eq!(
        env.calls(CREATE),
        0,
        "nothing is created without our finalizer"
    );

    env.resync("prod").await.unwrap();
    assert_eq!(
        env.api.get("prod").unwrap().metadata.finalizers,
        Some(vec!["example.com/other".to_string(), FINALIZER.to_string()])
    );
    assert_eq!(env.calls(CREATE), 1);
}

// ---------------------------------------------------------------------------------------------
// 11. Nothing lost on deferral: a start with half-written resources under a busy budget
// ---------------------------------------------------------------------------------------------

/// What kills at start-up leave behind: resources whose status names their connection (id,
/// PENDING) but carries no conditions and no observedGeneration, so none of them is settled and
/// every first read is work. The controller restarts with a budget smaller than the reads they
/// all want at once. Each resource needs exactly two calls (Get, then ListTags: its generation
/// was never applied); a deferred reconcile keeps what it read and spends its booked slot on the
/// call it was refused, so all of them settle within the time the budget needs for those calls.
#[tokio::test]
async fn half_written_resources_all_settle_under_a_budget_smaller_than_their_reads() {
    const N: u32 = 20;
    const RATE: u32 = 10;
    const BURST: u32 = 5;
    let mut env = Env::start_with(patient(), CallBudget::unlimited()).await;
    let names: Vec<String> = (0..N).map(|i| format!("env-{i:02}")).collect();
    for (i, name) in names.iter().enumerate() {
        env.api.create(
            name,
            &format!("5e771e00-0000-4000-8000-{i:012}"),
            spec(name),
        );
        env.reconcile(name).await.unwrap();
    }
    assert_eq!(env.calls(CREATE), u64::from(N));
    for name in &names {
        env.api.edit(name, |o| {
            let status = o.status.as_mut().expect("created");
            assert!(status.id.is_some() && status.status == Some(ConnectionState::Pending));
            status.conditions.clear();
            status.observed_generation = None;
        });
    }
    env.restart_with_budget(CallBudget::new(
        std::num::NonZeroU32::new(RATE).unwrap(),
        std::num::NonZeroU32::new(BURST).unwrap(),
        0.5,
    ));
    env.count_proton_calls_from_now().await;

    // 2N calls, BURST at once and RATE a second after that; plus one second for a deferred
    // reconcile's timer (at most 1.5 s of jittered deferral when no slot is booked) and one for
    // the status writes.
    let needed = f64::from(2 * N - BURST) / f64::from(RATE);
    let bound = Duration::from_secs_f64(needed + 2.5);
    let started = tokio::time::Instant::now();
    let (stop, task) = run_controller(&env, WatchScope::default(), Readiness::default());
    env.api
        .wait_until(
            &format!("all {N} half-written resources Synced within {bound:?}"),
            bound,
            |api| {
                names.iter().all(|n| {
                    api.get(n).is_some_and(|o| {
                        condition(&o, "Synced").is_some_and(|c| c.0 == "True")
                            && o.status.as_ref().and_then(|s| s.observed_generation) == Some(1)
                    })
                })
            },
        )
        .await;
    let took = started.elapsed();
    let _ = stop.send(());
    task.await.unwrap();
    println!(
        "{N} half-written resources settled in {:.1} s (budget {RATE}/s, burst {BURST}: {needed:.1} s of calls): {} Gets, {} ListTags",
        took.as_secs_f64(),
        env.calls(GET),
        env.calls(LIST_TAGS)
    );
    assert_eq!(env.calls(CREATE), 0, "nothing is created again");
    assert_eq!(
        env.calls(LIST_TAGS),
        u64::from(N),
        "each resource's tags are read once"
    );
    // A PENDING connection is polled again 2 s after it settles: allow those, nothing more.
    assert!(
        env.calls(GET) <= u64::from(2 * N),
        "a deferred reconcile does not read its connection again: {} Gets for {N} resources",
        env.calls(GET)
    );
}

// ---------------------------------------------------------------------------------------------
// 12. Back within seconds of an API-server outage
// ---------------------------------------------------------------------------------------------

/// The API server stops for 10 s (every request refused, the watch ended) and comes back. The
/// watches retry with a backoff capped at 2 s, so a resource applied right after the outage has
/// its connection, and /readyz says ready again, within 5 s.
#[tokio::test]
async fn a_resource_applied_after_a_10_s_api_server_outage_is_served_within_5_s() {
    let env = Env::start_with(patient(), CallBudget::unlimited()).await;
    let readiness = Readiness::new(Duration::from_secs(5));
    let (stop, task) = run_controller(&env, WatchScope::default(), readiness.clone());
    env.api.create("before", UID, spec("before"));
    env.api
        .wait_for("before", "a connection before the outage", LIMIT, |o| {
            o.and_then(|o| o.status.as_ref())
                .is_some_and(|s| s.id.is_some())
        })
        .await;
    eventually("ready before the outage", LIMIT, || readiness.get()).await;

    env.api.down();
    eventually(
        "not ready once the watch has failed for --watch-failure-timeout",
        LIMIT,
        || !readiness.get(),
    )
    .await;
    // The rest of a 10 s outage (a real one, in real time: the backoff runs on the clock).
    tokio::time::sleep(Duration::from_secs(5)).await;
    env.api.up();
    let back = tokio::time::Instant::now();
    env.api.create(
        "after",
        "0b9c6f1e-7d2a-4c55-9f0e-00000000aft1",
        spec("after"),
    );
    env.api
        .wait_for(
            "after",
            "a connection within 5 s of the API server's return",
            Duration::from_secs(5),
            |o| {
                o.and_then(|o| o.status.as_ref())
                    .is_some_and(|s| s.id.is_some())
            },
        )
        .await;
    let served = back.elapsed();
    eventually(
        "ready within 5 s of the return",
        Duration::from_secs(5),
        || readiness.get(),
    )
    .await;
    println!(
        "after a 10 s outage: the new resource had its connection {:.2} s and /readyz was ready {:.2} s after the API server came back",
        served.as_secs_f64(),
        back.elapsed().as_secs_f64()
    );
    let _ = stop.send(());
    task.await.unwrap();
}
