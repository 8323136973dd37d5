//! Observe-only resources and the pause annotation: the real reconcile against the in-memory API
//! server (tower-test) and the Proton emulator over HTTP on 127.0.0.1.

mod support;

use std::collections::BTreeMap;

use eac_controller::aws::budget::CallBudget;
use eac_controller::connection::api::{
    ADOPT_ANNOTATION, ConnectionState, EnvironmentAccountConnectionSpec, ManagementPolicy,
    PAUSED_ANNOTATION,
};
use eac_controller::connection::controller::trigger_hash;
use eac_controller::connection::decide::{AdoptionPolicy, Settings};
use kube::ResourceExt;
use support::{Env, condition, eager_settings, spec};

const UID: &str = "5e1f0c2a-8a4b-4e0d-9c61-7f2d3b4a5c6d";
const CREATE: &str = "CreateEnvironmentAccountConnection";
const LIST: &str = "ListEnvironmentAccountConnections";

fn observing(environment: &str) -> EnvironmentAccountConnectionSpec {
    EnvironmentAccountConnectionSpec {
        management_policy: ManagementPolicy::Observe,
        ..spec(environment)
    }
}

fn opted_in(env: &Env) {
    env.api
        .namespace(support::NS, &[("proton.eac.dev/adoption", "allowed")]);
}

fn annotate(env: &Env, name: &str, key: &str, value: Option<&str>) {
    env.api.edit(name, |o| {
        let annotations = o.metadata.annotations.get_or_insert_with(BTreeMap::new);
        match value {
            Some(v) => annotations.insert(key.to_string(), v.to_string()),
            None => annotations.remove(key),
        };
    });
}

#[tokio::test]
async fn an_observer_follows_a_foreign_connection_makes_no_mutating_call_and_leaves_it_on_delete() {
    let env = Env::start().await;
    opted_in(&env);
    let theirs = env.foreign_connection("prod").await;
    let before = env.proton().connections();
    let mutations = env.mutating_calls();

    env.api.create("watcher", UID, observing("prod"));
    env.reconcile("watcher").await.unwrap();

    let obj = env.api.get("watcher").unwrap();
    let status = obj.status.clone().unwrap();
    assert_eq!(status.id.as_deref(), Some(theirs.as_str()));
    assert_eq!(status.status, Some(ConnectionState::Pending));
    assert_eq!(
        status.role_arn.as_deref(),
        Some("arn:aws:iam::444455556666:role/theirs"),
        "Proton's roles, not the spec's"
    );
    assert_eq!(condition(&obj, "Synced").unwrap().1, "Observing");
    assert!(
        obj.finalizers().is_empty(),
        "an observer holds no finalizer"
    );
    assert!(
        !obj.annotations()
            .contains_key(eac_controller::connection::api::INTENT_ANNOTATION)
    );
    assert_eq!(env.calls(LIST), 1, "found by its environment");
    assert!(env.api.event_reasons().contains(&"Observing".to_string()));

    // Acceptance shows; the spec's roles and tags are never pushed.
    env.proton().accept(&theirs).unwrap();
    env.resync("watcher").await.unwrap();
    let obj = env.api.get("watcher").unwrap();
    assert_eq!(
        obj.status.as_ref().unwrap().status,
        Some(ConnectionState::Connected)
    );
    assert_eq!(condition(&obj, "Ready").unwrap().0, "True");
    assert_eq!(env.mutating_calls(), mutations);

    // Deleting the observer: no finalizer held it, nothing is deleted in Proton.
    env.api.delete("watcher");
    env.resync("watcher").await.unwrap();
    assert!(env.api.get("watcher").is_none());
    assert_eq!(env.mutating_calls(), mutations);
    let after = env.proton().connections();
    assert_eq!(after.len(), before.len());
    assert_eq!(after[0].id, theirs);
}

#[tokio::test]
async fn an_observer_needs_the_adoption_opt_in_and_never_creates_what_is_missing() {
    let settings = Settings {
        adoption: AdoptionPolicy::NamespaceOptIn,
        ..eager_settings()
    };
    let env = Env::start_with(settings, CallBudget::unlimited()).await;
    env.api.namespace(support::NS, &[]);
    let theirs = env.foreign_connection("prod").await;

    env.api.create("watcher", UID, observing("prod"));
    env.api.edit("watcher", |o| {
        o.metadata.annotations = Some(BTreeMap::from([(
            ADOPT_ANNOTATION.to_string(),
            theirs.clone(),
        )]));
    });
    env.reconcile("watcher").await.unwrap();
    let obj = env.api.get("watcher").unwrap();
    assert_eq!(condition(&obj, "Synced").unwrap().1, "AdoptionNotAllowed");
    assert!(obj.status.unwrap().id.is_none());
    assert_eq!(
        env.total_calls(),
        1,
        "only the tenant's own Create (foreign_connection)"
    );

    // Allowed, but for an environment with no connection: reported, nothing created.
    opted_in(&env);
    env.api.create(
        "other",
        "6f2a1d3b-9b5c-4f1e-8d72-8a3e4c5b6d7e",
        observing("staging"),
    );
    env.reconcile("other").await.unwrap();
    let obj = env.api.get("other").unwrap();
    assert_eq!(condition(&obj, "Ready").unwrap().1, "NotFound");
    assert_eq!(env.calls(CREATE), 1, "the foreign one only");
    assert_eq!(env.mutating_calls(), 1);
}

#[tokio::test]
async fn a_paused_resource_makes_no_call_until_the_annotation_is_removed() {
    let env = Env::start().await;
    env.api.create("prod", UID, spec("prod"));
    annotate(&env, "prod", PAUSED_ANNOTATION, Some("true"));

    env.reconcile("prod").await.unwrap();
    env.resync("prod").await.unwrap();
    let obj = env.api.get("prod").unwrap();
    assert_eq!(env.total_calls(), 0, "not even GetCallerIdentity");
    let synced = condition(&obj, "Synced").unwrap();
    assert_eq!((synced.0.as_str(), synced.1.as_str()), ("False", "Paused"));
    assert!(synced.2.contains(PAUSED_ANNOTATION), "{}", synced.2);
    assert_eq!(env.api.event_reasons(), vec!["Paused"], "announced once");

    // Resumed: the connection is created as usual.
    annotate(&env, "prod", PAUSED_ANNOTATION, None);
    env.reconcile("prod").await.unwrap();
    let obj = env.api.get("prod").unwrap();
    assert_eq!(env.calls(CREATE), 1);
    assert!(obj.status.as_ref().unwrap().id.is_some());
    assert_eq!(condition(&obj, "Synced").unwrap().1, "ReconcileSuccess");

    // Paused again and deleted: the connection is neither deleted nor forgotten; the resource
    // waits for the pause to end.
    annotate(&env, "prod", PAUSED_ANNOTATION, Some("true"));
    let calls = env.total_calls();
    env.api.delete("prod");
    env.resync("prod").await.unwrap();
    assert!(env.api.get("prod").is_some(), "held by its finalizer");
    assert_eq!(env.total_calls(), calls);
    assert_eq!(env.proton().connections().len(), 1);
    annotate(&env, "prod", PAUSED_ANNOTATION, None);
    env.resync("prod").await.unwrap();
    assert!(env.api.get("prod").is_none());
    assert!(
        env.proton().connections().is_empty(),
        "deleted once resumed"
    );
}

#[test]
fn pausing_wakes_the_controller_and_the_watch_cache_keeps_the_value() {
    let mut obj =
        eac_controller::connection::api::EnvironmentAccountConnection::new("prod", spec("prod"));
    let plain = trigger_hash(&obj);
    obj.metadata.annotations = Some(BTreeMap::from([(
        PAUSED_ANNOTATION.to_string(),
        "true".to_string(),
    )]));
    assert_ne!(trigger_hash(&obj), plain, "pausing is worth a reconcile");
    let mut slimmed = obj.clone();
    eac_controller::connection::controller::slim(&mut slimmed);
    assert_eq!(
        slimmed
            .annotations()
            .get(PAUSED_ANNOTATION)
            .map(String::as_str),
        Some("true"),
        "the watch cache keeps the value"
    );
}

#[tokio::test]
async fn only_true_pauses() {
    let env = Env::start().await;
    env.api.create("prod", UID, spec("prod"));
    annotate(&env, "prod", PAUSED_ANNOTATION, Some("yes"));
    env.reconcile("prod").await.unwrap();
    assert_eq!(env.calls(CREATE), 1);
}

/// The watch cache no longer holds the intent to create once the status records the connection
/// (`slim`). A resource switched to observing whose connection then vanishes writes a status with
/// no connection and nothing in flight: the obsolete annotation is still removed from the API
/// server, read from there since the cache does not have it.
#[tokio::test]
async fn an_obsolete_intent_the_cache_dropped_is_still_removed_from_the_api_server() {
    use eac_controller::connection::api::INTENT_ANNOTATION;
    use eac_controller::connection::controller::{reconcile, slim};

    let env = Env::start().await;
    env.api.create("prod", UID, spec("prod"));
    env.reconcile("prod").await.unwrap();
    let id = env.api.get("prod").unwrap().status.unwrap().id.unwrap();
    assert!(
        env.api
            .get("prod")
            .unwrap()
            .annotations()
            .contains_key(INTENT_ANNOTATION)
    );
    env.api.edit("prod", |o| {
        o.spec.management_policy = ManagementPolicy::Observe
    });
    assert!(env.proton().delete_out_of_band(&id));

    let mut cached = env.api.get("prod").unwrap();
    slim(&mut cached);
    assert!(
        !cached.annotations().contains_key(INTENT_ANNOTATION),
        "the cache's copy records the connection, so it holds no intent"
    );
    reconcile(std::sync::Arc::new(cached), env.ctx.clone())
        .await
        .unwrap();

    let obj = env.api.get("prod").unwrap();
    assert_eq!(obj.status.as_ref().unwrap().id, None);
    assert_eq!(obj.status.as_ref().unwrap().create_sent_at, None);
    assert_eq!(condition(&obj, "Synced").unwrap().1, "NotFound");
    assert!(
        !obj.annotations().contains_key(INTENT_ANNOTATION),
        "{:?}",
        obj.annotations()
    );
    assert_eq!(env.calls(CREATE), 1, "an observer creates nothing");
}

/// A resource deleted and applied again under the same name while a reconcile of the old one
/// ran (an observer holds no finalizer; a tenant may strip one) gets nothing of the old one's
/// status: the status write tests the uid, and the API server refuses it (422). By name alone
/// the new resource got the connection the observer found, took it for its own, and would have
/// updated, retagged and deleted it.
#[tokio::test]
async fn a_status_write_does_not_land_on_a_resource_applied_again_under_the_same_name() {
    const SUCCESSOR: &str = "7a2e0d4b-1c3f-4b5a-8d6e-9f0a1b2c3d4e";
    let env = Env::start().await;
    opted_in(&env);
    let theirs = env.foreign_connection("prod").await;
    let tags_before = env.proton().connections()[0].tags.clone();
    env.api.create("watcher", UID, observing("prod"));
    let observer = env.api.get("watcher").unwrap();
    // Deleted (nothing holds it) and applied again, managed, before the observer's reconcile
    // writes what it found.
    env.api.force_delete("watcher");
    env.api.create("watcher", SUCCESSOR, spec("prod"));

    let refused = env.reconcile_copy(observer).await;
    assert!(refused.is_err(), "the write was refused: {refused:?}");
    let writes: Vec<_> = env
        .api
        .requests()
        .into_iter()
        .filter(|r| r.path.ends_with("/status"))
        .collect();
    assert_eq!(
        writes.iter().map(|w| w.code).collect::<Vec<_>>(),
        vec![422],
        "the observer's one status write, refused"
    );
    assert_eq!(writes[0].status_written()["id"], theirs.as_str());
    let successor = env.api.get("watcher").unwrap();
    assert_eq!(successor.uid().as_deref(), Some(SUCCESSOR));
    assert!(
        successor
            .status
            .as_ref()
            .and_then(|s| s.id.as_ref())
            .is_none(),
        "nothing of the observer's status: {:?}",
        successor.status
    );

    // The successor's own reconcile asks for its own connection, which Proton refuses (one per
    // environment and management account); theirs is neither taken, retagged nor deleted.
    env.reconcile("watcher").await.unwrap();
    let successor = env.api.get("watcher").unwrap();
    assert_eq!(successor.status.as_ref().and_then(|s| s.id.clone()), None);
    assert_eq!(condition(&successor, "Ready").unwrap().1, "Conflict");
    env.api.delete("watcher");
    env.resync("watcher").await.unwrap();
    assert!(env.api.get("watcher").is_none(), "released");
    let connections = env.proton().connections();
    let kept = connections
        .iter()
        .find(|c| c.id == theirs)
        .expect("theirs is kept");
    assert_eq!(kept.tags, tags_before, "theirs is not retagged");
}
