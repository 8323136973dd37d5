//! What the watch cache keeps of a resource, and which changes to it are worth a reconcile.

use std::hash::{DefaultHasher, Hash, Hasher};

use kube::ResourceExt;

use crate::connection::api::{
    ADOPT_ANNOTATION, EnvironmentAccountConnection, EnvironmentAccountConnectionStatus as Status,
    INTENT_ANNOTATION, PAUSED_ANNOTATION,
};
use crate::reconciler::{self};

/// What makes a change worth a reconcile: the spec (generation; deletion bumps it too), the
/// finalizers (a stripped one is put back at once), the adopt and paused annotations, and an
/// intent annotation the resource reports not trusted. The controller's own status writes
/// change none of these, so they wake nothing (but the one that reports an intent not trusted,
/// once).
pub fn trigger_hash(obj: &EnvironmentAccountConnection) -> Option<u64> {
    let mut h = DefaultHasher::new();
    obj.metadata.generation.hash(&mut h);
    obj.metadata.deletion_timestamp.is_some().hash(&mut h);
    obj.finalizers().hash(&mut h);
    obj.annotations().get(ADOPT_ANNOTATION).hash(&mut h);
    obj.annotations().get(PAUSED_ANNOTATION).hash(&mut h);
    super::triggers::refused_intent(obj).hash(&mut h);
    Some(h.finish())
}

/// Drops from a watched object what the controller never reads (see
/// [`reconciler::watch::slim_metadata`]; the annotations kept are the controller's own), the
/// intent to create once the status records a connection (see [`intent_is_history`]), and the
/// spare room deserializing left in the status's lists (two conditions held room for four).
pub fn slim(obj: &mut EnvironmentAccountConnection) {
    reconciler::watch::slim_metadata(
        &mut obj.metadata,
        &[ADOPT_ANNOTATION, INTENT_ANNOTATION, PAUSED_ANNOTATION],
    );
    if intent_is_history(obj.status.as_ref())
        && let Some(annotations) = obj.metadata.annotations.as_mut()
        && annotations.remove(INTENT_ANNOTATION).is_some()
    {
        reconciler::watch::release_if_empty(annotations);
    }
    if let Some(status) = obj.status.as_mut() {
        status.conditions.shrink_to_fit();
        status.applied_tag_keys.shrink_to_fit();
    }
}

/// Whether the intent-to-create annotation is history for a resource with this status, so the
/// watch cache does not keep it (its one key costs a map node of about half a KiB per resource).
///
/// It is once the status records a connection: the Create it announced was answered and its
/// connection is on record, so no connection of it can be lost. A later status without one is
/// written by the controller itself and carries its own pins: a re-creation records its own time
/// of sending before its Create (later than the annotation's, which changes nothing), and a
/// connection seen missing keeps none in flight. While such a status is not yet in the cache the
/// reconcile starts from it without the annotation; the cache's next copy has no connection and
/// keeps the annotation again. Removing the obsolete annotation reads it from the API server.
pub fn intent_is_history(status: Option<&Status>) -> bool {
    status.is_some_and(|s| s.id.is_some())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::connection::api::FINALIZER;
    use crate::offline::eac;

    #[test]
    fn the_watch_cache_keeps_only_what_the_controller_reads() {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry;
        let mut o = eac("a");
        o.metadata.managed_fields = Some(vec![ManagedFieldsEntry::default(); 3]);
        o.metadata.labels = Some(BTreeMap::from([("shard".into(), "a".into())]));
        o.metadata.annotations = Some(BTreeMap::from([
            (
                "kubectl.kubernetes.io/last-applied-configuration".into(),
                "{\"a whole manifest\": true}".into(),
            ),
            (ADOPT_ANNOTATION.into(), "id-1".into()),
            (INTENT_ANNOTATION.into(), "{}".into()),
        ]));
        o.metadata.finalizers = Some(vec![FINALIZER.into()]);
        let spec = o.spec.clone();
        slim(&mut o);
        assert_eq!(o.metadata.managed_fields, None);
        assert_eq!(o.metadata.labels, None);
        let annotations = o.annotations();
        assert_eq!(
            annotations.keys().collect::<Vec<_>>(),
            [ADOPT_ANNOTATION, INTENT_ANNOTATION]
        );
        assert_eq!(annotations[ADOPT_ANNOTATION], "id-1");
        assert_eq!(annotations[INTENT_ANNOTATION], "{}");
        assert_eq!(o.metadata.finalizers, Some(vec![FINALIZER.to_string()]));
        assert_eq!(o.spec, spec);
        assert_eq!(o.metadata.uid.as_deref(), Some("a"));
    }

    #[test]
    fn a_cached_object_with_only_others_annotations_still_has_annotations() {
        let mut o = eac("a");
        o.metadata.annotations = Some(BTreeMap::from([(
            "kubectl.kubernetes.io/last-applied-configuration".into(),
            "{\"a whole manifest\": true}".into(),
        )]));
        slim(&mut o);
        // The intent annotation is then added to the map, not the map created (which a guard
        // against overwriting others' annotations would refuse).
        assert_eq!(o.metadata.annotations, Some(BTreeMap::new()));
        let mut bare = eac("b");
        slim(&mut bare);
        assert_eq!(bare.metadata.annotations, None);
    }

    #[test]
    fn the_cache_keeps_the_intent_to_create_only_until_the_status_records_a_connection() {
        let intent =
            r#"{"region":"us-east-1","account":"444455556666","sentAt":"2026-12-05T00:00:00Z"}"#;
        let annotated = |status: Option<Status>| {
            let mut o = eac("a");
            o.metadata.annotations = Some(BTreeMap::from([
                (INTENT_ANNOTATION.into(), intent.to_string()),
                (PAUSED_ANNOTATION.into(), "true".into()),
            ]));
            o.status = status;
            slim(&mut o);
            o.metadata.annotations.unwrap_or_default()
        };
        let sent = Status {
            create_sent_at: Some("2026-12-05T00:00:00Z".into()),
            ..Default::default()
        };
        for unanswered in [None, Some(Status::default()), Some(sent)] {
            assert_eq!(
                annotated(unanswered.clone())
                    .get(INTENT_ANNOTATION)
                    .map(String::as_str),
                Some(intent),
                "{unanswered:?}"
            );
        }
        let recorded = Some(Status {
            id: Some("conn-1".into()),
            ..Default::default()
        });
        let kept = annotated(recorded.clone());
        assert_eq!(kept.get(INTENT_ANNOTATION), None);
        assert_eq!(
            kept.get(PAUSED_ANNOTATION).map(String::as_str),
            Some("true")
        );
        // Only the intent: the map stays, empty (the finalizer patch adds to it).
        let mut o = eac("b");
        o.metadata.annotations = Some(BTreeMap::from([(INTENT_ANNOTATION.into(), intent.into())]));
        o.status = recorded;
        slim(&mut o);
        assert_eq!(o.metadata.annotations, Some(BTreeMap::new()));
    }

    #[test]
    fn a_cached_object_keeps_no_spare_room_in_its_lists() {
        let mut o = eac("a");
        let mut conditions = Vec::with_capacity(8);
        conditions.push(k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
            type_: "Ready".into(),
            status: "True".into(),
            reason: "Connected".into(),
            message: String::new(),
            last_transition_time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                jiff::Timestamp::UNIX_EPOCH,
            ),
            observed_generation: Some(1),
        });
        o.status = Some(Status {
            conditions,
            ..Default::default()
        });
        let mut finalizers = Vec::with_capacity(4);
        finalizers.push(FINALIZER.to_string());
        o.metadata.finalizers = Some(finalizers);
        slim(&mut o);
        let status = o
            .status
            .as_ref()
            .map(|s| (s.conditions.len(), s.conditions.capacity()));
        assert_eq!(status, Some((1, 1)));
        assert_eq!(o.metadata.finalizers.map(|f| f.capacity()), Some(1));
    }

    #[test]
    fn only_spec_deletion_finalizers_and_the_adopt_annotation_trigger_a_reconcile() {
        let base = eac("a");
        let same = |f: &dyn Fn(&mut EnvironmentAccountConnection)| {
            let mut o = base.clone();
            f(&mut o);
            trigger_hash(&o) == trigger_hash(&base)
        };
        assert!(
            same(&|o| o.status = Some(Status::default())),
            "own status write"
        );
        assert!(same(&|o| o.metadata.resource_version = Some("9".into())));
        assert!(same(&|o| {
            o.metadata.annotations = Some(BTreeMap::from([("note".into(), "x".into())]))
        }));
        assert!(!same(&|o| o.metadata.generation = Some(2)), "spec change");
        assert!(!same(
            &|o| o.metadata.finalizers = Some(vec![FINALIZER.into()])
        ));
        assert!(!same(&|o| {
            o.metadata.deletion_timestamp = Some(
                k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::UNIX_EPOCH),
            )
        }));
        assert!(!same(&|o| {
            o.metadata.annotations = Some(BTreeMap::from([(ADOPT_ANNOTATION.into(), "id".into())]))
        }));
    }

    /// The intent annotation wakes nothing while the controller takes it (its own comes and
    /// goes), and its removal wakes a resource that reports it not trusted: the report is
    /// retried only at the resync.
    #[test]
    fn an_intent_wakes_a_reconcile_only_where_it_is_reported_not_trusted() {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
        let with_intent = |o: &mut EnvironmentAccountConnection| {
            o.metadata.annotations = Some(BTreeMap::from([(
                INTENT_ANNOTATION.into(),
                r#"{"region":"eu-west-1","account":"111122223333","sentAt":"9999-01-01T00:00:00Z"}"#
                    .into(),
            )]))
        };
        let reporting = |reason: &str| {
            let mut o = eac("a");
            o.status = Some(Status {
                conditions: vec![Condition {
                    type_: crate::conditions::SYNCED.into(),
                    status: "False".into(),
                    reason: reason.into(),
                    message: String::new(),
                    last_transition_time: Time(jiff::Timestamp::UNIX_EPOCH),
                    observed_generation: Some(1),
                }],
                ..Status::default()
            });
            o
        };
        for (reason, wakes) in [
            ("Creating", false),
            (crate::connection::decide::INTENT_NOT_TRUSTED, true),
        ] {
            let without = reporting(reason);
            let mut with = without.clone();
            with_intent(&mut with);
            assert_eq!(
                trigger_hash(&with) != trigger_hash(&without),
                wakes,
                "{reason}: the annotation removed"
            );
        }
    }
}
