//! Controller scenarios: the real reconcile against an in-memory API server (tower-test) and the
//! Proton emulator over HTTP on 127.0.0.1. One scenario per test, named after what the user sees.

mod support;

use eac_controller::connection::api::{
    ConnectionState, FINALIZER, INTENT_ANNOTATION, TAG_NAME, TAG_NAMESPACE, TAG_UID,
};
use kube::ResourceExt;
use support::{Env, condition, spec};

const UID: &str = "0b9c6f1e-7d2a-4c55-9f0e-1a2b3c4d5e6f";
const CREATE: &str = "CreateEnvironmentAccountConnection";
const GET: &str = "GetEnvironmentAccountConnection";
const DELETE: &str = "DeleteEnvironmentAccountConnection";
const LIST: &str = "ListEnvironmentAccountConnections";
const LIST_TAGS: &str = "ListTagsForResource";

#[tokio::test]
async fn a_new_resource_gets_a_pending_connection_and_a_full_status() {
    let env = Env::start().await;
    env.api.create("prod", UID, spec("prod"));

    env.reconcile("prod").await.unwrap();

    let obj = env.api.get("prod").unwrap();
    assert!(
        obj.metadata
            .finalizers
            .as_ref()
            .unwrap()
            .contains(&FINALIZER.to_string())
    );
    let conns = env.proton().connections();
    assert_eq!(conns.len(), 1);
    let c = &conns[0];
    assert_eq!(
        c.client_token.as_deref(),
        Some(UID),
        "clientToken must be the uid"
    );
    assert_eq!(c.tags.get(TAG_UID).map(String::as_str), Some(UID));
    assert_eq!(
        c.tags.get(TAG_NAMESPACE).map(String::as_str),
        Some("platform")
    );
    assert_eq!(c.tags.get(TAG_NAME).map(String::as_str), Some("prod"));
    assert_eq!(
        c.role_arn.as_deref(),
        Some("arn:aws:iam::444455556666:role/proton-env")
    );

    let status = obj.status.clone().unwrap();
    assert_eq!(status.id.as_deref(), Some(c.id.as_str()));
    assert_eq!(status.arn.as_deref(), Some(c.arn.as_str()));
    assert_eq!(status.status, Some(ConnectionState::Pending));
    assert_eq!(
        status.environment_account_id.as_deref(),
        Some("444455556666")
    );
    assert_eq!(status.observed_generation, Some(1));
    assert!(
        status
            .requested_at
            .as_deref()
            .is_some_and(|t| t.ends_with('Z'))
    );
    assert!(status.last_modified_at.is_some());
    assert_eq!(condition(&obj, "Ready").unwrap().0, "False");
    assert_eq!(condition(&obj, "Ready").unwrap().1, "Pending");
    assert_eq!(condition(&obj, "Synced").unwrap().0, "True");
    assert_eq!(condition(&obj, "Stalled").unwrap().0, "False");
    assert_eq!(env.calls(CREATE), 1);
    assert_eq!(env.api.event_reasons(), vec!["Created"]);
}

#[tokio::test]
async fn the_finalizer_and_the_intent_to_create_are_one_write_before_the_create() {
    let env = Env::start().await;
    env.api.create("prod", UID, spec("prod"));
    env.reconcile("prod").await.unwrap();

    let writes: Vec<_> = env
        .api
        .requests()
        .into_iter()
        .filter(|r| r.path.contains("/environmentaccountconnections/"))
        .collect();
    // One guarded patch adds the finalizer and the intent to create (region and account pinned,
    // when it was sent); only after the Create, the status with the id.
    assert_eq!(writes.len(), 2, "{writes:#?}");
    assert_eq!(writes[0].method, http::Method::PATCH);
    assert!(!writes[0].path.ends_with("/status"));
    assert_eq!(
        writes[0].body[0],
        serde_json::json!({"op": "test", "path": "/metadata/uid", "value": UID}),
        "the patch applies to this object only"
    );
    assert_eq!(writes[0].body[2]["value"][0], FINALIZER);
    let obj = env.api.get("prod").unwrap();
    let intent: serde_json::Value = serde_json::from_str(
        obj.annotations()
            .get(INTENT_ANNOTATION)
            .expect("the intent annotation"),
    )
    .unwrap();
    assert_eq!(intent["region"], "us-east-1");
    assert_eq!(intent["account"], "444455556666");
    assert!(intent["sentAt"].is_string(), "{intent}");
    let done = &writes[1].status_written();
    assert!(writes[1].path.ends_with("/status"));
    assert!(done["id"].is_string(), "{done}");
    assert_eq!(done["region"], "us-east-1");
    assert_eq!(done["environmentAccountId"], "444455556666");
    assert!(
        done.get("createSentAt").is_none(),
        "nothing in flight once the id is on record: {done}"
    );
    assert_eq!(env.calls(CREATE), 1);
}

#[tokio::test]
async fn a_crash_between_create_and_status_write_still_yields_one_connection() {
    let mut env = Env::start().await;
    env.api.create("prod", UID, spec("prod"));
    // The intent is written (with the finalizer), the Create succeeds, the status write after
    // it is lost...
    env.api.fail_status_writes(1);
    assert!(
        env.reconcile("prod").await.is_err(),
        "the status write failed"
    );
    let obj = env.api.get("prod").unwrap();
    assert!(obj.status.is_none());
    assert!(obj.annotations().contains_key(INTENT_ANNOTATION));
    // ... and the process dies: nothing it knew survives.
    env.restart();
    env.reconcile("prod").await.unwrap();

    assert_eq!(
        env.calls(CREATE),
        2,
        "the new process sends Create again, with the same token"
    );
    let conns = env.proton().connections();
    assert_eq!(
        conns.len(),
        1,
        "the same client token returns the same connection"
    );
    let status = env.api.get("prod").unwrap().status.unwrap();
    assert_eq!(status.id.as_deref(), Some(conns[0].id.as_str()));
    assert_eq!(
        env.calls(LIST_TAGS),
        1,
        "a replayed Create says nothing about the tags: they are read"
    );
}

/// The intent to create is an annotation, which a tenant with `edit` can write, unlike the
/// status. One whose time is years ahead would keep a deletion searching AWS every few seconds
/// for as long (a Create "may still be in flight"): it is not taken. The resource says why, once,
/// and nothing is done or let go until the annotation is removed; then the Create sent before
/// is found again by its token.
#[tokio::test]
async fn an_intent_a_tenant_wrote_is_reported_and_not_acted_on() {
    let mut env = Env::start().await;
    env.api.create("prod", UID, spec("prod"));
    // The intent is written, the Create sent, the status write lost: the intent is the record.
    env.api.fail_status_writes(1);
    assert!(env.reconcile("prod").await.is_err());
    env.restart();
    let forged = serde_json::json!({
        "region": "us-east-1", "account": "444455556666", "sentAt": "9999-01-01T00:00:00Z"
    });
    env.api.edit("prod", |o| {
        o.annotations_mut()
            .insert(INTENT_ANNOTATION.into(), forged.to_string());
    });
    env.api.delete("prod");
    let calls = |env: &Env| [CREATE, GET, LIST, LIST_TAGS, DELETE].map(|op| env.calls(op));
    let before = calls(&env);
    let requests_before = env.api.requests().len();
    for _ in 0..3 {
        env.resync("prod").await.unwrap();
    }
    assert_eq!(
        calls(&env),
        before,
        "no AWS call on a record the controller did not write"
    );
    let writes: Vec<_> = env.api.requests()[requests_before..]
        .iter()
        .filter(|r| r.method != http::Method::GET && !r.path.contains("/events"))
        .map(|r| r.path.clone())
        .collect();
    assert_eq!(writes.len(), 1, "the status, once: {writes:?}");
    assert!(writes[0].ends_with("/status"), "{writes:?}");
    let obj = env.api.get("prod").expect("not let go");
    assert!(obj.finalizers().iter().any(|f| f == FINALIZER));
    let (status, reason, message) = condition(&obj, "Synced").expect("Synced");
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "IntentNotTrusted")
    );
    assert!(message.contains("ahead of now"), "{message}");
    env.api
        .wait_until("the IntentNotTrusted event", PATIENCE, |api| {
            api.event_reasons().iter().any(|r| r == "IntentNotTrusted")
        })
        .await;
    assert_eq!(
        env.api
            .event_reasons()
            .iter()
            .filter(|r| *r == "IntentNotTrusted")
            .count(),
        1,
        "said once"
    );
}

/// Removing an intent reported not trusted is a change: the next reconcile acts at once, not at
/// the resync the report is retried at.
#[tokio::test]
async fn removing_an_intent_reported_not_trusted_is_acted_on_at_once() {
    let env = Env::start().await;
    env.api.create("live", UID, spec("live"));
    let forged = serde_json::json!({
        "region": "us-east-1", "account": "444455556666", "sentAt": "9999-01-01T00:00:00Z"
    });
    env.api.edit("live", |o| {
        o.annotations_mut()
            .insert(INTENT_ANNOTATION.into(), forged.to_string());
    });
    env.reconcile("live").await.unwrap();
    let obj = env.api.get("live").unwrap();
    let (_, reason, _) = condition(&obj, "Synced").expect("Synced");
    assert_eq!(reason, "IntentNotTrusted");
    assert_eq!(env.calls(CREATE), 0);
    // Not due before the resync: a reconcile woken by anything else is quiet.
    env.reconcile("live").await.unwrap();
    assert_eq!(env.calls(CREATE), 0);

    env.api.edit("live", |o| {
        o.annotations_mut().remove(INTENT_ANNOTATION);
    });
    env.reconcile("live").await.unwrap();
    assert_eq!(env.calls(CREATE), 1, "created at once");
    let status = env.api.get("live").unwrap().status.unwrap();
    assert!(status.id.is_some());
}

#[tokio::test]
async fn a_connection_known_before_a_failed_status_write_is_never_created_again() {
    let env = Env::start().await;
    env.api.create("prod", UID, spec("prod"));
    env.api.skip_then_fail_status_writes(1, 3);
    for _ in 0..4 {
        let _ = env.resync("prod").await;
    }

    assert_eq!(
        env.calls(CREATE),
        1,
        "the controller remembers the connection it created"
    );
    let conns = env.proton().connections();
    let status = env.api.get("prod").unwrap().status.unwrap();
    assert_eq!(status.id.as_deref(), Some(conns[0].id.as_str()));
}

#[tokio::test]
async fn a_stale_cached_copy_stops_the_reconcile_instead_of_repeating_its_writes() {
    let env = Env::start().await;
    env.api.create("prod", UID, spec("prod"));
    // The copy a lagging watch cache would still hold: no finalizer, no status.
    let stale = std::sync::Arc::new(env.api.get("prod").unwrap());
    env.reconcile("prod").await.unwrap();
    let settled = env.api.get("prod").unwrap();
    let (requests, calls) = (env.api.requests().len(), env.total_calls());
    env.ctx.expire_checkpoints();

    // The controller wrote its finalizer over exactly this copy: it knows the cache is behind
    // its own write without asking the API server.
    let error = eac_controller::connection::controller::reconcile(stale.clone(), env.ctx.clone())
        .await
        .expect_err("the reconcile stops on the copy its own write replaced");
    assert!(
        matches!(
            error,
            eac_controller::connection::controller::Error::StaleCache(_)
        ),
        "{error}"
    );
    assert_eq!(
        env.api.requests().len(),
        requests,
        "no request: not the refused patch, not a re-read"
    );
    assert_eq!(
        env.total_calls(),
        calls,
        "nothing is sent to AWS from the stale copy"
    );
    // Not a failure: no backoff, no Event; it runs again as soon as the fresh copy is there.
    let action = eac_controller::connection::controller::error_policy(
        stale.clone(),
        &error,
        env.ctx.clone(),
    );
    assert_eq!(
        support::requeue_of(&action),
        std::time::Duration::from_secs(1)
    );
    assert_eq!(env.api.event_reasons(), vec!["Created"]);

    // A new term of leadership knows nothing of earlier writes: the guarded patch is refused
    // (422), the re-read shows the finalizer, and the reconcile stops the same way.
    env.ctx.forget_all();
    let error = eac_controller::connection::controller::reconcile(stale, env.ctx.clone())
        .await
        .expect_err("the guarded finalizer patch is refused (422) on the stale copy");
    assert!(
        matches!(
            error,
            eac_controller::connection::controller::Error::StaleCache(_)
        ),
        "{error}"
    );
    assert_eq!(env.api.answered(422), 1);
    assert_eq!(env.calls(CREATE), 1);
    assert_eq!(env.api.get("prod").unwrap().status, settled.status);
    env.resync("prod")
        .await
        .expect("the fresh copy reconciles cleanly");
    assert_eq!(env.calls(CREATE), 1);
    assert_eq!(env.api.answered(422), 1);
}

#[tokio::test]
async fn a_copy_that_does_not_show_the_controllers_own_status_write_waits_for_the_watch() {
    use eac_controller::connection::controller::{Error, reconcile};
    use std::sync::Arc;
    use std::time::Duration;
    let env = Env::start_with(
        support::patient(),
        eac_controller::aws::budget::CallBudget::unlimited(),
    )
    .await;
    env.api.create("prod", UID, spec("prod"));
    env.reconcile("prod").await.unwrap();
    let written = env.api.get("prod").unwrap();
    assert!(written.status.as_ref().is_some_and(|s| s.id.is_some()));
    // The copy between the finalizer patch and the status write, as a lagging watch brings it
    // after the status write: the finalizer and the intent, no status. The controller keeps
    // only the version and a hash of what it wrote, so it cannot reconcile from it.
    let mut between = written.clone();
    between.status = None;
    between.metadata.resource_version = Some("2".into());
    let between = Arc::new(between);
    let (requests, calls) = (env.api.requests().len(), env.total_calls());

    // Nothing new since the reconcile that wrote (the watch bringing the controller's own
    // finalizer patch): nothing to do until the resource is due.
    reconcile(between.clone(), env.ctx.clone())
        .await
        .expect("nothing to do yet");
    assert!(env.comes_back_in("prod") > Duration::from_secs(1));

    // Due: it waits for the watch rather than act on a status that names no connection.
    env.ctx.expire_checkpoints();
    let error = reconcile(between.clone(), env.ctx.clone())
        .await
        .expect_err("it waits for the copy that shows its status write");
    assert!(matches!(error, Error::StaleCache(_)), "{error}");

    // Being deleted: releasing the resource from this copy would lose the connection.
    let mut deleting = (*between).clone();
    deleting.metadata.deletion_timestamp = Some(
        k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::now()),
    );
    let error = reconcile(Arc::new(deleting), env.ctx.clone())
        .await
        .expect_err("it waits for the copy that shows its status write");
    assert!(matches!(error, Error::StaleCache(_)), "{error}");

    assert_eq!(
        env.api.requests().len(),
        requests,
        "no request to the API server"
    );
    assert_eq!(env.total_calls(), calls, "no AWS call");
    assert_eq!(env.proton().connections().len(), 1);

    // The copy of the version the write made: the reconcile goes on from it.
    env.resync("prod").await.unwrap();
    assert!(env.total_calls() > calls, "the resync reads the connection");
    assert_eq!(env.calls(CREATE), 1);
    assert_eq!(env.api.get("prod").unwrap().status, written.status);
}

/// A running controller whose watch lags behind its own status write (CONNECTED, after a woken
/// read), then nudged again: the nudged reconcile waits for the watch. Waits as long as the
/// watch lags, and no longer: the retry after a stale copy is an hour here, so only the watch
/// can wake it. A relisted watch ends the wait too, even when someone else has written the
/// status since (the write's version and status are then never seen).
async fn nudged_while_the_watch_lags_behind_the_status_write(
    relist_after_a_foreign_status_write: bool,
) {
    use eac_controller::reconciler::nudge::Nudge;
    use kube::runtime::reflector::ObjectRef;
    use std::time::Duration;
    let mut env = Env::start_with(
        support::patient(),
        eac_controller::aws::budget::CallBudget::unlimited(),
    )
    .await;
    let nudge = Nudge::default();
    env.restart_with(|ctx| {
        ctx.with_nudges(nudge.clone(), Nudge::default())
            .with_stale_cache_retry(Duration::from_secs(3600))
    });
    let running = env.run_controller(2);
    env.api.create("prod", UID, spec("prod"));
    env.api
        .wait_for("prod", "its PENDING connection recorded", PATIENCE, |o| {
            o.and_then(|o| o.status.as_ref())
                .is_some_and(|s| s.status == Some(ConnectionState::Pending))
        })
        .await;
    let prod = ObjectRef::new("prod").within(support::NS);

    env.api.hold_watch_events();
    env.proton()
        .accept(&env.proton().connections()[0].id)
        .unwrap();
    assert!(nudge.one(prod.clone(), UID), "the controller runs");
    env.api
        .wait_for("prod", "CONNECTED, read after the nudge", PATIENCE, |o| {
            o.and_then(|o| o.status.as_ref())
                .is_some_and(|s| s.status == Some(ConnectionState::Connected))
        })
        .await;
    let waits = env.metric(STALE);
    assert!(nudge.one(prod, UID));
    env.wait_for_metric(STALE, waits + 1.0, PATIENCE).await;
    let gets = env.calls(GET);
    assert_eq!(env.calls(CREATE), 1);

    if relist_after_a_foreign_status_write {
        env.api.edit("prod", |o| {
            if let Some(s) = o.status.as_mut() {
                s.last_modified_at = Some("written by someone else".into());
            }
        });
        env.api.expire_watches();
    } else {
        env.api.release_watch_events();
    }
    env.wait_for_calls(GET, gets + 1, PATIENCE).await;
    assert_eq!(
        env.metric(STALE),
        waits + 1.0,
        "it ran once the watch caught up, not before"
    );
    assert_eq!(env.calls(CREATE), 1);
    running.abort();
}

const STALE: &str = "eac_reconcile_total{result=\"stale_cache\"}";
const PATIENCE: std::time::Duration = std::time::Duration::from_secs(20);

#[tokio::test]
async fn a_reconcile_waiting_for_the_watch_runs_as_soon_as_the_watch_shows_the_write() {
    nudged_while_the_watch_lags_behind_the_status_write(false).await;
}

#[tokio::test]
async fn a_relist_ends_the_wait_even_if_it_never_shows_the_write() {
    nudged_while_the_watch_lags_behind_the_status_write(true).await;
}

#[tokio::test]
async fn a_reconcile_handed_an_older_copy_than_the_cache_holds_acts_on_the_newer_one() {
    use kube::runtime::{reflector, watcher};
    let env = Env::start().await;
    env.api.create("prod", UID, spec("prod"));
    env.reconcile("prod").await.unwrap();
    let newer = env.api.get("prod").unwrap();
    // The copy between the finalizer patch and the status write (finalizer and intent, no
    // status), as kube-runtime may hand it to a reconcile it queued just before the watch
    // brought the newer one (and the controller then forgot the status it had written).
    let mut older = newer.clone();
    older.status = None;
    older.metadata.resource_version = Some("2".into());
    let (cache, mut writer) = reflector::store();
    writer.apply_watcher_event(&watcher::Event::Apply(newer.clone()));
    env.ctx.use_cache(Some(cache));
    env.resync("prod").await.unwrap();
    let requests = env.api.requests().len();
    let calls = env.total_calls();

    env.ctx.expire_checkpoints();
    eac_controller::connection::controller::reconcile(std::sync::Arc::new(older), env.ctx.clone())
        .await
        .expect("it reconciles the newer copy");
    assert_eq!(
        env.calls(CREATE),
        1,
        "the connection recorded in the newer copy is not created again"
    );
    assert_eq!(
        env.total_calls(),
        calls + 1,
        "one read of the connection, as the newer copy's poll"
    );
    assert_eq!(
        env.api.requests().len(),
        requests,
        "no write: the newer copy is up to date"
    );
    assert_eq!(env.api.get("prod").unwrap().status, newer.status);
}

#[tokio::test]
async fn acceptance_makes_the_resource_connected_and_ready() {
    let env = Env::start().await;
    env.api.create("prod", UID, spec("prod"));
    env.reconcile("prod").await.unwrap();
    let id = env.proton().connections()[0].id.clone();

    env.proton().accept(&id).unwrap();
    env.resync("prod").await.unwrap();

    let obj = env.api.get("prod").unwrap();
    assert_eq!(
        obj.status.as_ref().unwrap().status,
        Some(ConnectionState::Connected)
    );
    assert_eq!(condition(&obj, "Ready").unwrap().0, "True");
    assert_eq!(condition(&obj, "Ready").unwrap().1, "Connected");
    assert_eq!(env.calls(CREATE), 1);
    assert_eq!(env.api.event_reasons(), vec!["Created", "Connected"]);
}

#[tokio::test]
async fn rejection_is_reported_as_stalled() {
    let env = Env::start().await;
    env.api.create("prod", UID, spec("prod"));
    env.reconcile("prod").await.unwrap();
    let id = env.proton().connections()[0].id.clone();

    env.proton().reject(&id).unwrap();
    env.resync("prod").await.unwrap();

    let obj = env.api.get("prod").unwrap();
    assert_eq!(
        obj.status.as_ref().unwrap().status,
        Some(ConnectionState::Rejected)
    );
    assert_eq!(condition(&obj, "Ready").unwrap().0, "False");
    assert_eq!(condition(&obj, "Ready").unwrap().1, "Rejected");
    assert_eq!(condition(&obj, "Stalled").unwrap().0, "True");
    assert_eq!(
        env.api.event_reasons().last().map(String::as_str),
        Some("Rejected")
    );

    // A REJECTED connection costs one Get per resync and nothing else.
    let before = env.total_calls();
    let writes = env.api.resource_writes();
    env.resync("prod").await.unwrap();
    assert_eq!(env.total_calls() - before, 1);
    assert_eq!(env.calls(GET), 2);
    assert_eq!(env.api.resource_writes(), writes);
}

#[tokio::test]
async fn an_idle_connected_resource_costs_one_get_and_no_write() {
    let env = Env::start().await;
    env.api.create("prod", UID, spec("prod"));
    env.reconcile("prod").await.unwrap();
    env.proton()
        .accept(&env.proton().connections()[0].id)
        .unwrap();
    env.resync("prod").await.unwrap();

    let calls = env.total_calls();
    let writes = env.api.resource_writes();
    let events = env.api.event_reasons().len();
    env.resync("prod").await.unwrap();

    assert_eq!(env.total_calls() - calls, 1);
    assert_eq!(env.calls(GET), 2);
    assert_eq!(
        env.api.resource_writes(),
        writes,
        "nothing changed, nothing written"
    );
    assert_eq!(env.api.event_reasons().len(), events);
}

#[tokio::test]
async fn a_reconcile_triggered_by_the_controllers_own_status_write_does_nothing() {
    let env = Env::start_with(
        eac_controller::connection::decide::Settings {
            resync: std::time::Duration::from_secs(600),
            pending_poll: std::time::Duration::from_secs(30),
            ..support::eager_settings()
        },
        eac_controller::aws::budget::CallBudget::unlimited(),
    )
    .await;
    env.api.create("prod", UID, spec("prod"));
    env.reconcile("prod").await.unwrap();
    let calls = env.total_calls();
    let requests = env.api.requests().len();

    // The status write wakes the watch; the resulting reconcile must cost nothing.
    env.reconcile("prod").await.unwrap();

    assert_eq!(env.total_calls(), calls);
    assert_eq!(env.api.requests().len(), requests);
    let back = env.comes_back_in("prod");
    assert!(
        back > std::time::Duration::from_secs(1),
        "still comes back when due: {back:?}"
    );
}

#[tokio::test]
async fn deleting_the_resource_deletes_the_connection_then_releases_it() {
    let env = Env::start().await;
    env.api.create("prod", UID, spec("prod"));
    env.reconcile("prod").await.unwrap();

    env.api.delete("prod");
    env.reconcile("prod").await.unwrap();

    assert!(env.proton().connections().is_empty());
    assert!(
        env.api.get("prod").is_none(),
        "finalizer removed, resource gone"
    );
    assert_eq!(env.calls(DELETE), 1);
    assert_eq!(env.calls(LIST), 0, "the recorded id is enough");
    assert_eq!(env.api.event_reasons(), vec!["Created", "Deleted"]);
}

#[tokio::test]
async fn deleting_when_the_connection_is_already_gone_releases_the_resource() {
    let env = Env::start().await;
    env.api.create("prod", UID, spec("prod"));
    env.reconcile("prod").await.unwrap();
    let id = env.proton().connections()[0].id.clone();
    assert!(env.proton().delete_out_of_band(&id));

    env.api.delete("prod");
    env.reconcile("prod").await.unwrap();

    assert!(env.api.get("prod").is_none(), "NotFound counts as deleted");
}

#[tokio::test]
async fn deleting_when_the_id_never_reached_the_status_finds_and_deletes_the_connection() {
    let mut env = Env::start().await;
    env.api.create("prod", UID, spec("prod"));
    // Another connection in the same environment that is not ours must survive.
    env.api
        .create("other", "11111111-2222-3333-4444-555555555555", {
            let mut s = spec("prod");
            s.management_account_id = "999988887777".into();
            s
        });
    env.reconcile("other").await.unwrap();
    env.api.fail_status_writes(1);
    assert!(env.reconcile("prod").await.is_err());
    assert!(env.api.get("prod").unwrap().status.is_none());
    assert_eq!(env.proton().connections().len(), 2);
    env.restart();

    env.api.delete("prod");
    env.resync("prod").await.unwrap();

    let left = env.proton().connections();
    assert_eq!(left.len(), 1, "ours is deleted");
    assert_eq!(
        left[0].management_account_id, "999988887777",
        "theirs is kept"
    );
    assert!(env.api.get("prod").is_none());
    assert_eq!(env.calls(LIST), 1);
}

#[tokio::test]
async fn a_resource_whose_create_never_succeeded_is_released_on_delete() {
    let env = Env::start().await;
    env.api.create("prod", UID, spec("prod"));
    env.proton().fail_next(CREATE, "ValidationException", 1);
    env.reconcile("prod").await.unwrap();
    assert!(env.proton().connections().is_empty());

    env.api.delete("prod");
    env.resync("prod").await.unwrap();

    assert!(env.api.get("prod").is_none());
    assert_eq!(env.calls(DELETE), 0, "nothing to delete");
    assert_eq!(
        env.calls(LIST),
        0,
        "a Create refused outright made nothing: no search is needed"
    );
}

#[tokio::test]
async fn a_resource_that_never_sent_a_create_is_released_without_calling_aws() {
    // A call budget with no room now: the finalizer goes on (it waits for no budget), but the
    // Create is deferred, so no intent is written and no Create is sent.
    let budget = eac_controller::aws::budget::CallBudget::new(
        std::num::NonZeroU32::new(1).unwrap(),
        std::num::NonZeroU32::new(1).unwrap(),
        0.5,
    );
    let now = tokio::time::Instant::now();
    for i in 0..30 {
        let _ = budget.admit(
            &format!("other-{i}"),
            eac_controller::aws::budget::CallClass::Work,
            now,
        );
    }
    let env = Env::start_with(support::eager_settings(), budget).await;
    env.api.create("prod", UID, spec("prod"));
    env.reconcile("prod").await.unwrap();
    let obj = env.api.get("prod").unwrap();
    assert!(obj.finalizers().iter().any(|f| f == FINALIZER));
    assert!(!obj.annotations().contains_key(INTENT_ANNOTATION));
    assert_eq!(env.calls(CREATE), 0);
    let before = env.total_calls();

    env.api.delete("prod");
    env.reconcile("prod").await.unwrap();

    assert!(env.api.get("prod").is_none());
    assert_eq!(env.total_calls(), before, "not a single AWS call");
}

#[tokio::test]
async fn throttling_is_reported_then_retried_to_success() {
    let env = Env::start().await;
    env.api.create("prod", UID, spec("prod"));
    env.proton().fail_next(CREATE, "ThrottlingException", 2);

    env.reconcile("prod").await.unwrap();
    let obj = env.api.get("prod").unwrap();
    let synced = condition(&obj, "Synced").unwrap();
    assert_eq!(
        (synced.0.as_str(), synced.1.as_str()),
        ("False", "Throttled")
    );
    assert_eq!(
        condition(&obj, "Stalled").unwrap().0,
        "False",
        "throttling is not terminal"
    );

    // Each throttle pauses every caller for a second; the controller comes back after it.
    env.resync_through_deferrals("prod", 5).await;
    env.resync_through_deferrals("prod", 5).await;

    let obj = env.api.get("prod").unwrap();
    assert_eq!(
        obj.status.as_ref().unwrap().status,
        Some(ConnectionState::Pending)
    );
    assert_eq!(condition(&obj, "Synced").unwrap().0, "True");
    assert_eq!(env.proton().connections().len(), 1);
    // The same error twice in a row is one Event.
    let reasons = env.api.event_reasons();
    assert_eq!(
        reasons.iter().filter(|r| *r == "Throttled").count(),
        1,
        "{reasons:?}"
    );
}

#[tokio::test]
async fn a_terminal_error_stalls_the_resource_with_the_aws_message() {
    let env = Env::start().await;
    env.api.create("first", UID, spec("prod"));
    env.reconcile("first").await.unwrap();
    // A second resource for the same environment and management account: Proton refuses it.
    env.api.create(
        "second",
        "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee",
        spec("prod"),
    );

    env.reconcile("second").await.unwrap();

    let obj = env.api.get("second").unwrap();
    let synced = condition(&obj, "Synced").unwrap();
    assert_eq!(
        (synced.0.as_str(), synced.1.as_str()),
        ("False", "Conflict")
    );
    assert!(
        synced.2.contains("already exists"),
        "the AWS message is shown: {}",
        synced.2
    );
    assert_eq!(condition(&obj, "Stalled").unwrap().0, "True");
    assert_eq!(condition(&obj, "Ready").unwrap().1, "Conflict");
    assert_eq!(env.proton().connections().len(), 1);

    // Retried at the next resync; the same error is not announced twice.
    env.resync("second").await.unwrap();
    let conflicts = env
        .api
        .event_reasons()
        .iter()
        .filter(|r| *r == "Conflict")
        .count();
    assert_eq!(conflicts, 1);
}

/// A Proton-compatible endpoint short of a call (it does not know the operation, or cannot read
/// the request as the SDK writes it) stalls the resource with the endpoint named as the fix, and
/// is retried as a terminal error: in a minute at first, not in a second (an unknown error) or
/// half a minute (AccessDenied). An operation the endpoint does not know made nothing: deleting
/// the resource needs no search. A SerializationException may be an answer the endpoint could
/// not write after it acted: deleting searches.
#[tokio::test]
async fn an_endpoint_short_of_a_call_stalls_the_resource_and_is_retried_as_terminal() {
    for (code, searches) in [
        ("UnknownOperationException", false),
        ("SerializationException", true),
    ] {
        // A Create's window of 2 s (the emulator lists what it holds at once): a search made on
        // delete is conclusive that soon after the Create.
        let settings = eac_controller::connection::decide::Settings {
            create_settle: std::time::Duration::from_secs(2),
            ..support::eager_settings()
        };
        let env = Env::start_with(
            settings,
            eac_controller::aws::budget::CallBudget::unlimited(),
        )
        .await;
        env.api.create("prod", UID, spec("prod"));
        env.proton().fail_next(CREATE, code, 100);

        env.reconcile("prod").await.unwrap();

        let obj = env.api.get("prod").unwrap();
        let synced = condition(&obj, "Synced").unwrap();
        assert_eq!(
            (synced.0.as_str(), synced.1.as_str()),
            ("False", "UnsupportedByEndpoint"),
            "{code}"
        );
        assert!(
            synced.2.starts_with(
                "CreateEnvironmentAccountConnection: the endpoint does not serve this call as AWS Proton does ("
            ) && synced.2.contains("see --proton-endpoint): "),
            "{code}: {}",
            synced.2
        );
        let stalled = condition(&obj, "Stalled").unwrap();
        assert_eq!(
            (stalled.0.as_str(), stalled.1.as_str()),
            ("True", "UnsupportedByEndpoint"),
            "{code}"
        );
        let back = env.comes_back_in("prod");
        assert!(
            // A minute less a quarter of jitter; AccessDenied's first wait is 37.5 s at most.
            back >= std::time::Duration::from_secs(40),
            "{code}: retried as a terminal error, in {back:?}"
        );
        assert!(env.proton().connections().is_empty(), "{code}");

        env.api.delete("prod");
        support::reconcile_until(
            3,
            || env.api.get("prod").is_none(),
            || {
                format!(
                    "{code}: not released: {:?}",
                    env.api.get("prod").map(|o| o.status)
                )
            },
            || async {
                env.resync("prod").await.unwrap();
                match env.api.get("prod") {
                    // Searching until the Create's window has passed.
                    Some(_) => env.comes_back_in("prod"),
                    None => std::time::Duration::ZERO,
                }
            },
        )
        .await;
        assert_eq!(
            (env.calls(LIST) > 0, env.calls(DELETE)),
            (searches, 0),
            "{code}: searched for on delete (until the Create's window passed) only if it may have made a connection (none here)"
        );
    }
}

#[tokio::test]
async fn access_denied_is_reported_and_not_hot_looped() {
    let env = Env::start().await;
    env.api.create("prod", UID, spec("prod"));
    let mut faults = proton_emulator::Faults::default();
    faults.deny.insert(CREATE.to_string());
    env.proton().set_faults(faults);

    env.reconcile("prod").await.unwrap();

    let obj = env.api.get("prod").unwrap();
    assert_eq!(condition(&obj, "Synced").unwrap().1, "AccessDenied");
    assert_eq!(condition(&obj, "Ready").unwrap().1, "AccessDenied");
    // The watch event of our own status write must not cause another attempt before the
    // slow retry interval.
    let before = env.calls(CREATE);
    env.reconcile("prod").await.unwrap();
    assert_eq!(env.calls(CREATE), before);
    let back = env.comes_back_in("prod");
    assert!(
        back >= std::time::Duration::from_secs(20),
        "IAM is fixed elsewhere: retried slowly, in {back:?}"
    );
}

/// The whole controller as `eac-controller run` wires it (kube-runtime Controller, watch,
/// workers), against the in-memory API server, which serves list and watch too.
#[tokio::test]
async fn the_running_controller_drives_a_resource_through_its_lifecycle() {
    let settings = eac_controller::connection::decide::Settings {
        resync: std::time::Duration::from_secs(600),
        pending_poll: std::time::Duration::from_millis(200),
        ..support::eager_settings()
    };
    let env = Env::start_with(
        settings,
        eac_controller::aws::budget::CallBudget::unlimited(),
    )
    .await;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let readiness = eac_controller::http::Readiness::default();
    let running = tokio::spawn(eac_controller::connection::controller::run(
        env.ctx.clone(),
        eac_controller::connection::controller::WatchScope::default(),
        2,
        async move {
            let _ = stop_rx.await;
        },
        readiness.clone(),
    ));
    let limit = std::time::Duration::from_secs(20);

    env.api.create("prod", UID, spec("prod"));
    env.api
        .wait_for("prod", "a PENDING connection", limit, |o| {
            o.and_then(|o| o.status.as_ref())
                .is_some_and(|s| s.status == Some(ConnectionState::Pending))
        })
        .await;

    let id = env.proton().connections()[0].id.clone();
    env.proton().accept(&id).unwrap();
    env.api
        .wait_for("prod", "Ready=True", limit, |o| {
            o.is_some_and(|o| condition(o, "Ready").is_some_and(|c| c.0 == "True"))
        })
        .await;
    assert_eq!(
        env.calls(CREATE),
        1,
        "the watch events of our own writes created nothing"
    );
    assert!(readiness.get(), "{:?}", readiness.check());
    let metrics = env.ctx.metrics.encode();
    for series in [
        "eac_connections{status=\"CONNECTED\"} 1",
        "eac_reconcile_total{result=\"settled\"}",
        "eac_aws_requests_total{operation=\"GetEnvironmentAccountConnection\",outcome=\"success\"}",
    ] {
        assert!(metrics.contains(series), "missing {series} in\n{metrics}");
    }

    env.api.delete("prod");
    env.api
        .wait_for("prod", "the resource to be released", limit, |o| {
            o.is_none()
        })
        .await;
    assert!(env.proton().connections().is_empty());

    let _ = stop_tx.send(());
    tokio::time::timeout(limit, running)
        .await
        .expect("the controller stops on shutdown")
        .unwrap();
}

/// The benchmark's clock for "got its id": the fake API server notes the moment a resource's
/// status first shows an id, once, as it stores the write; readers go on from where they left.
#[test]
fn the_fake_api_server_notes_when_each_resource_first_shows_an_id() {
    let api = support::FakeApi::default();
    api.create("a", "uid-a", spec("a"));
    api.create("b", "uid-b", spec("b"));
    let (none, from) = api.ids_given_since(0);
    assert!(none.is_empty(), "no status yet: {none:?}");
    let with_id = |id: &str| {
        let id = id.to_string();
        move |o: &mut eac_controller::connection::api::EnvironmentAccountConnection| {
            o.status.get_or_insert_with(Default::default).id = Some(id);
        }
    };
    api.edit("a", with_id("c-1"));
    api.edit("a", with_id("c-2"));
    let (given, from) = api.ids_given_since(from);
    assert_eq!(
        given.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
        ["a"],
        "once per resource, however often its status is written"
    );
    api.edit("b", with_id("c-3"));
    let (later, _) = api.ids_given_since(from);
    assert_eq!(
        later.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
        ["b"]
    );
    assert!(later[0].1 >= given[0].1);
}

/// The fake answers a list of the most recent state in pages, continuing after the last key of
/// the page before (as a kube-apiserver does from etcd, or from its cache's snapshots since
/// 1.34). (A list from its watch cache, `resourceVersion=0`, is answered whole whatever the page
/// size, as kube-apiserver does; kube's client drops that version when it asks for a page.)
#[tokio::test]
async fn the_fake_answers_a_most_recent_list_in_pages() {
    let api = support::FakeApi::default();
    for i in 0..5 {
        let name = format!("paged-{i}");
        api.create(
            &name,
            &format!("00000000-0000-0000-0000-00000000000{i}"),
            spec(&name),
        );
    }
    let eacs: kube::Api<eac_controller::connection::api::EnvironmentAccountConnection> =
        kube::Api::namespaced(api.client(), support::NS);
    let (mut names, mut token, mut pages, mut versions) = (Vec::new(), None, 0, Vec::new());
    loop {
        let mut params = kube::api::ListParams::default().limit(2);
        params.continue_token = token;
        let page = eacs.list(&params).await.expect("a page");
        pages += 1;
        assert!(page.items.len() <= 2, "at most the page size");
        names.extend(page.items.iter().map(|o| o.name_any()));
        versions.push(page.metadata.resource_version.clone());
        token = page.metadata.continue_;
        if token.is_none() {
            break;
        }
        if pages == 1 {
            // Made between pages, before the cursor: a watch from the list's version shows it.
            api.create(
                "paged-0a",
                "00000000-0000-0000-0000-0000000000aa",
                spec("paged-0a"),
            );
        }
    }
    assert!(
        versions.iter().all(|v| *v == versions[0]),
        "every page at the first page's version: {versions:?}"
    );
    assert_eq!(pages, 3);
    assert_eq!(
        names,
        (0..5).map(|i| format!("paged-{i}")).collect::<Vec<_>>(),
        "each once, in key order"
    );
    let whole = eacs
        .list(&kube::api::ListParams::default().match_any())
        .await
        .expect("a list");
    assert_eq!(
        whole.items.len(),
        6,
        "from the cache: whole, the one made between pages too"
    );
}
