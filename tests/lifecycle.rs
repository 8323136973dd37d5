//! Full-lifecycle scenarios: updates, tags, Retain, adoption, drift, Events, the AWS call budget.
//! Real reconcile, in-memory API server (tower-test), Proton emulator over HTTP on 127.0.0.1.

mod support;

use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::time::Duration;

use eac_controller::aws::budget::CallBudget;
use eac_controller::connection::api::{
    ADOPT_ANNOTATION, ConnectionState, DeletionPolicy, EnvironmentAccountConnectionStatus,
    INTENT_ANNOTATION, TAG_NAME, TAG_NAMESPACE, TAG_UID,
};
use proton_emulator::Faults;
use support::{Env, condition, eager_settings, spec};

const UID: &str = "0b9c6f1e-7d2a-4c55-9f0e-1a2b3c4d5e6f";
const CREATE: &str = "CreateEnvironmentAccountConnection";
const UPDATE: &str = "UpdateEnvironmentAccountConnection";
const TAG: &str = "TagResource";
const UNTAG: &str = "UntagResource";
const LIST_TAGS: &str = "ListTagsForResource";
const DELETE: &str = "DeleteEnvironmentAccountConnection";
const CODEBUILD: &str = "arn:aws:iam::444455556666:role/codebuild";
const COMPONENT: &str = "arn:aws:iam::444455556666:role/component";

async fn created(env: &Env, name: &str) -> String {
    env.api.create(name, UID, spec("prod"));
    env.reconcile(name).await.unwrap();
    env.proton().connections()[0].id.clone()
}

#[tokio::test]
async fn changing_role_arns_updates_the_connection_once() {
    let env = Env::start().await;
    let id = created(&env, "prod").await;

    env.api.edit("prod", |o| {
        o.spec.role_arn = Some("arn:aws:iam::444455556666:role/new-env".into());
        o.spec.codebuild_role_arn = Some(CODEBUILD.into());
        o.spec.component_role_arn = Some(COMPONENT.into());
    });
    env.reconcile("prod").await.unwrap();

    assert_eq!(env.calls(UPDATE), 1);
    assert_eq!(env.calls(CREATE), 1, "no second connection");
    let c = &env.proton().connections()[0];
    assert_eq!(c.id, id);
    assert_eq!(
        c.role_arn.as_deref(),
        Some("arn:aws:iam::444455556666:role/new-env")
    );
    assert_eq!(c.codebuild_role_arn.as_deref(), Some(CODEBUILD));
    let status = env.api.get("prod").unwrap().status.unwrap();
    assert_eq!(
        status.role_arn.as_deref(),
        Some("arn:aws:iam::444455556666:role/new-env")
    );
    assert_eq!(status.codebuild_role_arn.as_deref(), Some(CODEBUILD));
    assert_eq!(status.component_role_arn.as_deref(), Some(COMPONENT));
    assert_eq!(status.observed_generation, Some(2));
    assert!(env.api.event_reasons().contains(&"Updated".to_string()));

    // Removing one is an update too.
    env.api.edit("prod", |o| o.spec.component_role_arn = None);
    env.reconcile("prod").await.unwrap();
    assert_eq!(env.calls(UPDATE), 2);
    assert_eq!(env.proton().connections()[0].component_role_arn, None);
    assert_eq!(
        env.api
            .get("prod")
            .unwrap()
            .status
            .unwrap()
            .component_role_arn,
        None
    );
}

#[tokio::test]
async fn role_arns_changed_out_of_band_are_set_back() {
    let env = Env::start().await;
    let id = created(&env, "prod").await;
    // Someone edits the connection behind the controller's back (through the API).
    let client = support_client(&env).await;
    #[allow(deprecated)]
    client
        .update_environment_account_connection()
        .id(&id)
        .role_arn("arn:aws:iam::444455556666:role/intruder")
        .send()
        .await
        .unwrap();

    env.resync("prod").await.unwrap();

    assert_eq!(
        env.proton().connections()[0].role_arn.as_deref(),
        Some("arn:aws:iam::444455556666:role/proton-env")
    );
}

#[tokio::test]
async fn spec_tags_and_ownership_tags_are_kept_and_only_the_difference_is_sent() {
    let env = Env::start().await;
    env.api.create("prod", UID, {
        let mut s = spec("prod");
        s.tags = BTreeMap::from([
            ("team".into(), "payments".into()),
            ("tier".into(), "gold".into()),
        ]);
        s
    });
    env.reconcile("prod").await.unwrap();
    let c = &env.proton().connections()[0];
    assert_eq!(c.tags.get("team").map(String::as_str), Some("payments"));
    for key in [TAG_UID, TAG_NAMESPACE, TAG_NAME] {
        assert!(c.tags.contains_key(key), "{key}");
    }
    assert_eq!(env.calls(TAG), 0, "Create carried the tags");
    assert_eq!(env.calls(LIST_TAGS), 0, "tags sent with Create are known");

    // An out-of-band tag the spec never had must survive.
    let client = support_client(&env).await;
    #[allow(deprecated)]
    client
        .tag_resource()
        .resource_arn(&c.arn)
        .tags(
            aws_sdk_proton::types::Tag::builder()
                .key("cost-center")
                .value("42")
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();

    let tags_before = env.calls(TAG);
    env.api.edit("prod", |o| {
        o.spec.tags.insert("team".into(), "billing".into());
        o.spec.tags.remove("tier");
    });
    env.reconcile("prod").await.unwrap();

    let tags = &env.proton().connections()[0].tags;
    assert_eq!(tags.get("team").map(String::as_str), Some("billing"));
    assert!(
        !tags.contains_key("tier"),
        "removed from the spec, so untagged"
    );
    assert_eq!(
        tags.get("cost-center").map(String::as_str),
        Some("42"),
        "not ours: left alone"
    );
    assert!(tags.contains_key(TAG_UID));
    assert_eq!(
        env.calls(TAG) - tags_before,
        1,
        "one TagResource for the changed value"
    );
    assert_eq!(env.calls(UNTAG), 1, "one UntagResource for the removed key");
    let status = env.api.get("prod").unwrap().status.unwrap();
    assert_eq!(status.applied_tag_keys, vec!["team".to_string()]);
    assert!(env.api.event_reasons().contains(&"TagsUpdated".to_string()));
}

#[tokio::test]
async fn retain_keeps_the_connection_and_removes_the_ownership_tags() {
    let env = Env::start().await;
    env.api.create("prod", UID, {
        let mut s = spec("prod");
        s.deletion_policy = DeletionPolicy::Retain;
        s.tags = BTreeMap::from([("team".into(), "payments".into())]);
        s
    });
    env.reconcile("prod").await.unwrap();

    env.api.delete("prod");
    env.reconcile("prod").await.unwrap();

    assert!(env.api.get("prod").is_none(), "resource released");
    let conns = env.proton().connections();
    assert_eq!(conns.len(), 1, "connection kept");
    assert_eq!(env.calls(DELETE), 0);
    for key in [TAG_UID, TAG_NAMESPACE, TAG_NAME] {
        assert!(
            !conns[0].tags.contains_key(key),
            "{key} removed so another resource may adopt it"
        );
    }
    assert_eq!(
        conns[0].tags.get("team").map(String::as_str),
        Some("payments")
    );
    assert!(env.api.event_reasons().contains(&"Retained".to_string()));
}

#[tokio::test]
async fn adoption_takes_over_an_existing_connection_without_create() {
    let env = Env::start().await;
    let existing = existing_connection(&env, "prod", "111122223333").await;

    create_adopting(&env, "prod", &existing);
    env.reconcile("prod").await.unwrap();

    assert_eq!(env.calls(CREATE), 1, "only the setup's own Create");
    let status = env.api.get("prod").unwrap().status.unwrap();
    assert_eq!(status.id.as_deref(), Some(existing.as_str()));
    assert_eq!(status.status, Some(ConnectionState::Pending));
    let c = &env.proton().connections()[0];
    assert_eq!(
        c.tags.get(TAG_UID).map(String::as_str),
        Some(UID),
        "ownership tags applied"
    );
    assert_eq!(
        c.role_arn.as_deref(),
        Some("arn:aws:iam::444455556666:role/proton-env")
    );
    assert!(env.api.event_reasons().contains(&"Adopted".to_string()));
}

#[tokio::test]
async fn adoption_of_a_connection_for_another_environment_is_refused() {
    let env = Env::start().await;
    let existing = existing_connection(&env, "staging", "111122223333").await;
    let tags_before = env.proton().connections()[0].tags.clone();

    create_adopting(&env, "prod", &existing);
    env.reconcile("prod").await.unwrap();

    let obj = env.api.get("prod").unwrap();
    let stalled = condition(&obj, "Stalled").unwrap();
    assert_eq!(
        (stalled.0.as_str(), stalled.1.as_str()),
        ("True", "AdoptionMismatch")
    );
    assert!(stalled.2.contains("environmentName"), "{}", stalled.2);
    assert_eq!(env.calls(CREATE), 1, "nothing created");
    assert_eq!(
        env.calls(UPDATE) + env.calls(TAG) + env.calls(UNTAG),
        0,
        "nothing changed in Proton"
    );
    assert_eq!(env.proton().connections()[0].tags, tags_before);
}

#[tokio::test]
async fn a_connection_deleted_out_of_band_is_reported_and_recreated_once() {
    let env = Env::start().await;
    let id = created(&env, "prod").await;
    assert!(env.proton().delete_out_of_band(&id));

    env.resync("prod").await.unwrap();

    let conns = env.proton().connections();
    assert_eq!(conns.len(), 1);
    assert_ne!(conns[0].id, id);
    assert_eq!(
        conns[0].client_token.as_deref(),
        Some(format!("{UID}-r1").as_str())
    );
    let status = env.api.get("prod").unwrap().status.unwrap();
    assert_eq!(status.id.as_deref(), Some(conns[0].id.as_str()));
    assert_eq!(status.recreations, 1);
    let reasons = env.api.event_reasons();
    assert!(reasons.contains(&"NotFound".to_string()), "{reasons:?}");
    assert!(reasons.contains(&"Recreated".to_string()), "{reasons:?}");
    // The NotFound report reached the status before the re-creation.
    let reported = env.api.requests().iter().any(|r| {
        r.path.ends_with("/status")
            && r.status_written()["conditions"]
                .as_array()
                .is_some_and(|c| {
                    c.iter()
                        .any(|c| c["type"] == "Ready" && c["reason"] == "NotFound")
                })
    });
    assert!(reported);

    // A repeat of the same recovery (the status write after re-creation lost) is idempotent.
    env.resync("prod").await.unwrap();
    assert_eq!(env.proton().connections().len(), 1);
    assert_eq!(env.calls(CREATE), 2);
}

#[tokio::test]
async fn a_lost_status_write_after_recreation_does_not_make_a_second_connection() {
    let mut env = Env::start().await;
    let id = created(&env, "prod").await;
    assert!(env.proton().delete_out_of_band(&id));
    // The NotFound report is written, the status write after the re-creation is lost.
    env.ctx.expire_checkpoints();
    let obj = env.api.get("prod").unwrap();
    env.reconcile("prod").await.unwrap();
    let recreated = env.proton().connections()[0].id.clone();
    // Simulate the crash: put the old status back, as if the last write never happened, and
    // start a new controller (the one that wrote would wait for its write to show).
    env.api.edit("prod", |o| o.status = obj.status.clone());
    env.restart();
    env.resync("prod").await.unwrap();

    let conns = env.proton().connections();
    assert_eq!(conns.len(), 1, "same derived token, same connection");
    assert_eq!(conns[0].id, recreated);
}

#[tokio::test]
async fn events_are_not_repeated_for_the_same_state() {
    let env = Env::start().await;
    let id = created(&env, "prod").await;
    env.proton().accept(&id).unwrap();
    for _ in 0..3 {
        env.resync("prod").await.unwrap();
    }
    let reasons = env.api.event_reasons();
    assert_eq!(reasons, vec!["Created", "Connected"]);
}

#[tokio::test]
async fn fifty_resources_converge_under_emulator_throttling_within_the_budget() {
    let rate = 5;
    let burst = 1;
    let settings = eac_controller::connection::decide::Settings {
        resync: Duration::from_secs(600),
        pending_poll: Duration::from_secs(30),
        ..eager_settings()
    };
    let env = Env::start_with(
        settings,
        CallBudget::new(
            NonZeroU32::new(rate).unwrap(),
            NonZeroU32::new(burst).unwrap(),
            0.5,
        ),
    )
    .await;
    env.proton().set_faults(Faults {
        throttle_rps: Some(5),
        ..Faults::default()
    });
    env.count_proton_calls_from_now().await;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(eac_controller::connection::controller::run(
        env.ctx.clone(),
        eac_controller::connection::controller::WatchScope::default(),
        4,
        async move {
            let _ = stop_rx.await;
        },
        eac_controller::http::Readiness::default(),
    ));
    let names: Vec<String> = (0..50).map(|i| format!("env-{i:02}")).collect();
    let started = std::time::Instant::now();
    for (i, name) in names.iter().enumerate() {
        env.api.create(
            name,
            &format!("00000000-0000-4000-8000-{i:012}"),
            spec(name),
        );
    }
    env.api
        .wait_until(
            "every resource with a connection",
            Duration::from_secs(60),
            |api| {
                names.iter().all(|n| {
                    api.get(n)
                        .and_then(|o| o.status)
                        .is_some_and(|s| s.id.is_some())
                })
            },
        )
        .await;
    let counts = env.proton().calls();
    println!(
        "50 resources converged in {:.1}s: {} calls, {} throttled, peak {} req/s (budget {rate}/s, burst {burst})",
        started.elapsed().as_secs_f64(),
        counts.total(),
        counts.throttled,
        counts.peak_requests_per_second
    );
    assert_eq!(env.proton().connections().len(), 50);
    assert!(
        counts.peak_requests_per_second <= u64::from(rate + burst),
        "peak {} req/s exceeds the budget {rate}/s + burst {burst}",
        counts.peak_requests_per_second
    );
    let _ = stop_tx.send(());
    running.await.unwrap();
}

#[tokio::test]
async fn a_throttled_call_pauses_every_caller() {
    let env = Env::start_with(eager_settings(), CallBudget::unlimited()).await;
    env.api.create("a", UID, spec("a"));
    env.api
        .create("b", "11111111-2222-4333-8444-555555555555", spec("b"));
    env.proton().fail_next(CREATE, "ThrottlingException", 1);
    let throttled_by = tokio::time::Instant::now();
    env.reconcile("a").await.unwrap();
    assert_eq!(
        condition(&env.api.get("a").unwrap(), "Synced").unwrap().1,
        "Throttled"
    );

    // b's Create is not sent during the cooldown: b comes back when it is over.
    let creates = env.calls(CREATE);
    env.reconcile("b").await.unwrap();
    assert_eq!(
        env.calls(CREATE),
        creates,
        "nobody calls during the cooldown"
    );
    let wait = env.comes_back_in("b");
    // The pause is a second from the throttle, whenever this reconcile of b ran.
    assert!(
        tokio::time::Instant::now() + wait >= throttled_by + Duration::from_secs(1)
            && wait <= Duration::from_secs(1),
        "{wait:?}"
    );
    tokio::time::sleep(wait).await;
    env.resync("b").await.unwrap();
    assert_eq!(
        env.api.get("b").unwrap().status.unwrap().status,
        Some(ConnectionState::Pending)
    );
}

/// A resource `name` for environment "prod" carrying the adopt annotation for `id`.
fn create_adopting(env: &Env, name: &str, id: &str) {
    env.api.create(name, UID, spec("prod"));
    env.api.edit(name, |o| {
        o.metadata.annotations = Some(BTreeMap::from([(
            ADOPT_ANNOTATION.to_string(),
            id.to_string(),
        )]));
    });
}

/// A connection made directly in Proton (not by a resource), as adoption would find it.
async fn existing_connection(env: &Env, environment: &str, management: &str) -> String {
    let client = support_client(env).await;
    #[allow(deprecated)]
    let out = client
        .create_environment_account_connection()
        .environment_name(environment)
        .management_account_id(management)
        .role_arn("arn:aws:iam::444455556666:role/old")
        .client_token("made-by-hand")
        .send()
        .await
        .unwrap();
    out.environment_account_connection.unwrap().id
}

async fn support_client(env: &Env) -> aws_sdk_proton::Client {
    support::proton_client(&env.emulator.url(), "AKIDTEST")
}

#[tokio::test]
async fn deleting_after_a_lost_recreation_status_write_orphans_nothing() {
    let mut env = Env::start().await;
    let id = created(&env, "prod").await;
    assert!(env.proton().delete_out_of_band(&id));
    env.resync("prod").await.unwrap();
    assert_eq!(env.proton().connections().len(), 1, "re-created");
    // The status write after the re-creation is lost (the controller died before it): the
    // status is the one written before the re-creation's Create, which still names no
    // connection.
    let writes: Vec<_> = env
        .api
        .requests()
        .into_iter()
        .filter(|r| r.path.ends_with("/status"))
        .map(|r| r.status_written())
        .collect();
    let before_create: EnvironmentAccountConnectionStatus =
        serde_json::from_value(writes[writes.len() - 2].clone()).unwrap();
    assert_eq!(before_create.id, None);
    assert_eq!(before_create.recreations, 1);
    assert!(before_create.create_sent_at.is_some());
    env.api
        .edit("prod", |o| o.status = Some(before_create.clone()));
    env.restart();

    env.api.delete("prod");
    env.resync("prod").await.unwrap();

    assert!(
        env.proton().connections().is_empty(),
        "the re-created connection is found by its uid tag and deleted"
    );
    assert!(env.api.get("prod").is_none());
}

/// A cluster rebuilt from Git (or a restore without the status): the resource comes back with
/// a new uid, and its Create meets the connection the resource of this name made before, tagged
/// with the old uid. The controller takes nothing over: the report names that connection and
/// how to take it over, and that recovery, followed as written, works.
#[tokio::test]
async fn a_resource_back_with_a_new_uid_is_pointed_to_its_former_connection_and_can_adopt_it() {
    const OLD_UID: &str = "5e1f0c2a-0d3b-4e4f-8a5b-6c7d8e9f0a1b";
    let env = Env::start().await;
    let client = support_client(&env).await;
    let tag = |key: &str, value: &str| {
        aws_sdk_proton::types::Tag::builder()
            .key(key)
            .value(value)
            .build()
            .unwrap()
    };
    let s = spec("prod");
    #[allow(deprecated)]
    let old = client
        .create_environment_account_connection()
        .environment_name(&s.environment_name)
        .management_account_id(&s.management_account_id)
        .role_arn(s.role_arn.clone().unwrap())
        .client_token(OLD_UID)
        .tags(tag(TAG_UID, OLD_UID))
        .tags(tag(TAG_NAMESPACE, support::NS))
        .tags(tag(TAG_NAME, "prod"))
        .send()
        .await
        .unwrap()
        .environment_account_connection
        .unwrap();

    env.api.create("prod", UID, spec("prod"));
    env.reconcile("prod").await.unwrap();
    let obj = env.api.get("prod").unwrap();
    let (stalled, reason, message) = condition(&obj, "Stalled").unwrap();
    assert_eq!((stalled.as_str(), reason.as_str()), ("True", "Conflict"));
    let untag = format!("aws proton untag-resource --resource-arn {}", old.arn);
    let adopt = format!("{ADOPT_ANNOTATION}={}", old.id);
    for part in [old.id.as_str(), OLD_UID, &untag, &adopt] {
        assert!(message.contains(part), "{part:?} in {message}");
    }
    assert_eq!(obj.status.unwrap().id, None);
    assert_eq!(env.proton().connections().len(), 1, "nothing created");
    assert_eq!(env.calls(TAG) + env.calls(UPDATE), 0, "nothing taken over");

    // The recovery as the message gives it.
    untag_ownership(&client, &old.arn).await;
    annotate_and_adopt(&env, &old.id).await;
}

/// A Velero restore without the status: the object comes back with a new uid but with its
/// annotations and finalizer, so with the intent annotation its predecessor wrote before its
/// Create (an hour ago). Its Create, a "replay" under the new uid, meets the predecessor's
/// connection; the search finds nothing of the new uid's, so the stale record goes (status and
/// annotation), and the recovery the report gives works.
#[tokio::test]
async fn a_restore_without_the_status_drops_the_former_intent_and_can_adopt() {
    let env = Env::start().await;
    let (before, annotations) = predecessor_an_hour_old(&env).await;
    let old_id = before.status.clone().unwrap().id.unwrap();

    let obj = restored_without_the_status(&env, &before, &annotations).await;
    let (stalled, reason, message) = condition(&obj, "Stalled").unwrap();
    assert_eq!((stalled.as_str(), reason.as_str()), ("True", "Conflict"));
    assert!(message.contains(&old_id), "{message}");
    let status = obj.status.unwrap();
    assert_eq!((status.id, status.create_sent_at), (None, None));
    let annotations = obj.metadata.annotations.unwrap_or_default();
    assert!(
        !annotations.contains_key(INTENT_ANNOTATION),
        "the former intent is dropped: {annotations:?}"
    );

    let client = support_client(&env).await;
    let arn = env.proton().connections()[0].arn.clone();
    untag_ownership(&client, &arn).await;
    annotate_and_adopt(&env, &old_id).await;
}

/// The last step of the recovery the Conflict's report gives: `adopt-id` annotated, and the
/// resource takes the connection over (recorded, tagged with its uid, no other made).
async fn annotate_and_adopt(env: &Env, id: &str) {
    env.api.edit("prod", |o| {
        o.metadata
            .annotations
            .get_or_insert_default()
            .insert(ADOPT_ANNOTATION.to_string(), id.to_string());
    });
    env.reconcile("prod").await.unwrap();
    adopted(env, id);
}

/// `prod` has taken connection `id` over: recorded, tagged with its uid, and no other made.
fn adopted(env: &Env, id: &str) {
    let status = env.api.get("prod").unwrap().status.unwrap();
    assert_eq!(status.id.as_deref(), Some(id), "adopted");
    let c = &env.proton().connections()[0];
    assert_eq!(c.tags.get(TAG_UID).map(String::as_str), Some(UID));
    assert_eq!(env.proton().connections().len(), 1);
}

/// The same restore, from Git with `adopt-id` kept (and the predecessor's connection untagged,
/// as the recovery asks): once the Conflict's search drops the stale record, the resource comes
/// back within seconds to adopt, not at the Conflict's retry. A copy the watch brings from
/// before the annotation's removal (the status write's) is not taken as the record again: the
/// resource adopts, with no Create from the former intent.
#[tokio::test]
async fn a_restore_that_keeps_adopt_id_adopts_within_seconds_of_dropping_the_former_intent() {
    let env = Env::start().await;
    let (before, mut annotations) = predecessor_an_hour_old(&env).await;
    let old_id = before.status.clone().unwrap().id.unwrap();
    annotations.insert(ADOPT_ANNOTATION.to_string(), old_id.clone());
    let client = support_client(&env).await;
    let arn = env.proton().connections()[0].arn.clone();
    untag_ownership(&client, &arn).await;

    let dropped = restored_without_the_status(&env, &before, &annotations).await;
    let (_, reason, _) = condition(&dropped, "Stalled").unwrap();
    assert_eq!(reason, "Conflict");
    assert!(!kube::ResourceExt::annotations(&dropped).contains_key(INTENT_ANNOTATION));
    let back_in = env.comes_back_in("prod");
    assert!(
        back_in <= Duration::from_secs(2),
        "back to adopt within seconds, not at the Conflict's retry: {back_in:?}"
    );
    let creates = env.calls(CREATE);

    // The watch brings the status write's copy, from before the annotation's removal.
    let mut stale = dropped.clone();
    stale.metadata.annotations.get_or_insert_default().insert(
        INTENT_ANNOTATION.to_string(),
        annotations[INTENT_ANNOTATION].clone(),
    );
    env.ctx.expire_checkpoints();
    env.reconcile_copy(stale).await.unwrap();
    adopted(&env, &old_id);
    assert_eq!(
        env.calls(CREATE),
        creates,
        "no Create from the former intent"
    );
}

/// A resource reconciled to its connection under another uid, and its annotations with the
/// intent it wrote before its Create made an hour old: what a backup taken then restores.
async fn predecessor_an_hour_old(
    env: &Env,
) -> (
    eac_controller::connection::api::EnvironmentAccountConnection,
    BTreeMap<String, String>,
) {
    const OLD_UID: &str = "5e1f0c2a-0d3b-4e4f-8a5b-6c7d8e9f0a1b";
    env.api.create("prod", OLD_UID, spec("prod"));
    env.reconcile("prod").await.unwrap();
    let before = env.api.get("prod").unwrap();
    let mut annotations = before.metadata.annotations.clone().unwrap();
    let intent = annotations.get_mut(INTENT_ANNOTATION).expect("the intent");
    let mut parsed: serde_json::Value = serde_json::from_str(intent).unwrap();
    let an_hour_ago = jiff::Timestamp::now() - jiff::SignedDuration::from_hours(1);
    parsed["sentAt"] = serde_json::json!(an_hour_ago.to_string());
    *intent = parsed.to_string();
    (before, annotations)
}

/// The cluster is lost; the backup is restored without the status: `before` under a new uid,
/// with `annotations` and its finalizer, and reconciled once.
async fn restored_without_the_status(
    env: &Env,
    before: &eac_controller::connection::api::EnvironmentAccountConnection,
    annotations: &BTreeMap<String, String>,
) -> eac_controller::connection::api::EnvironmentAccountConnection {
    env.api.force_delete("prod");
    env.api.create("prod", UID, spec("prod"));
    env.api.edit("prod", |o| {
        o.metadata.annotations = Some(annotations.clone());
        o.metadata.finalizers = before.metadata.finalizers.clone();
    });
    env.reconcile("prod").await.unwrap();
    env.api.get("prod").unwrap()
}

/// `aws proton untag-resource --tag-keys` of the three ownership tags, as the Conflict's report
/// gives it: what someone who knows the old resource is gone does before adopting.
async fn untag_ownership(client: &aws_sdk_proton::Client, arn: &str) {
    #[allow(deprecated)]
    client
        .untag_resource()
        .resource_arn(arn)
        .tag_keys(TAG_UID)
        .tag_keys(TAG_NAMESPACE)
        .tag_keys(TAG_NAME)
        .send()
        .await
        .unwrap();
}
