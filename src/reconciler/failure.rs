//! What follows a reconcile that failed on Kubernetes, the same for every kind: the failure is
//! counted, the object waits out its backoff, the log says so once per try, and a new error is
//! announced in an Event (the status may be what cannot be written). AWS errors never get
//! here: a decision reports them in the status.

use std::sync::Arc;
use std::time::Duration;

use kube::Resource;
use kube::runtime::controller::Action;
use tracing::warn;

use super::after_outage;
use super::note::Note;
use super::tracked::{KubeFailure, Met, Tracker};
use crate::recorder::Recorder;

/// Counts the failure of `obj`'s reconcile (`error`; `kube`: the Kubernetes call's own error,
/// when a call failed rather than, say, the object's metadata), holds `obj` for its backoff (with `triggers`, so a
/// change to them cuts the wait short) and returns the requeue. A failure whose call the API
/// server never answered is marked, so the outage's end retries it at once
/// ([`after_outage`]).
pub fn backed_off<K, T, M>(
    obj: Arc<K>,
    tracker: &Tracker<T, M>,
    recorder: &Recorder,
    triggers: T,
    error: &dyn std::fmt::Display,
    kube: Option<&kube::Error>,
    resync: Duration,
) -> Action
where
    K: Resource<DynamicType = ()> + Send + Sync + 'static,
    T: PartialEq,
    M: Default,
{
    let uid = obj.meta().uid.clone().unwrap_or_default();
    let generation = obj.meta().generation.unwrap_or_default();
    let message = error.to_string();
    let met = match kube {
        Some(e) if after_outage::unanswered(e) => Met::Unanswered,
        Some(e) if crate::api_answers::refused_while_starting(e) => Met::RefusedAsStarting,
        _ => Met::Refused,
    };
    let KubeFailure {
        failures,
        wait,
        news,
    } = tracker.kube_failure(&uid, generation, triggers, &message, met, resync);
    // Outside the reconcile's span: the object is named here.
    warn!(
        kind = %K::kind(&()),
        namespace = obj.meta().namespace.as_deref().unwrap_or_default(),
        name = obj.meta().name.as_deref().unwrap_or_default(),
        error = %message,
        failures,
        retry_in_secs = wait.as_secs_f64(),
        "reconcile failed"
    );
    if news {
        let note = Note::warning("KubernetesError", message);
        let recorder = recorder.clone();
        tokio::spawn(async move { recorder.announce(&*obj, &note).await });
    }
    Action::requeue(wait)
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::ConfigMap;
    use k8s_openapi::api::events::v1::Event;
    use kube::Client;

    use super::*;

    fn config_map() -> Arc<ConfigMap> {
        let mut o = ConfigMap::default();
        o.metadata.name = Some("cm".into());
        o.metadata.namespace = Some("ns".into());
        o.metadata.uid = Some("uid-1".into());
        o.metadata.generation = Some(3);
        Arc::new(o)
    }

    fn refused(code: u16) -> kube::Error {
        kube::Error::Api(Box::new(
            kube::core::Status::failure("refused", "Refused").with_code(code),
        ))
    }

    /// The glue every kind relies on: the failure is counted and held with its triggers, a
    /// call the API server never answered is marked for its return and one it refused is not,
    /// and a new error is announced, about the object, with its message.
    #[tokio::test]
    async fn a_failure_backs_off_is_marked_only_when_unanswered_and_is_announced() {
        let (service, mut handle) = tower_test::mock::pair::<
            http::Request<kube::client::Body>,
            http::Response<kube::client::Body>,
        >();
        let recorder = Recorder::new(Client::new(service, "default"), crate::recorder::reporter());
        let tracker: Tracker<u64, ()> = Tracker::default();
        let resync = Duration::from_secs(600);

        let forbidden = refused(403);
        let action = backed_off(
            config_map(),
            &tracker,
            &recorder,
            7,
            &"status write of ns/cm failed: forbidden",
            Some(&forbidden),
            resync,
        );
        assert_ne!(action, Action::await_change(), "it comes back");
        {
            let now = tokio::time::Instant::now();
            let tracked = tracker.lock();
            let t = tracked.get("uid-1").expect("tracked");
            assert_eq!(t.failures(3), 1);
            let held = t.quiet(3, &7, now).unwrap_or_default();
            assert!(
                held > Duration::from_millis(500) && held <= Duration::from_millis(1250),
                "held for the first backoff, a second +/- 25 %: {held:?}"
            );
            assert!(
                t.quiet(3, &8, now).is_none(),
                "a change to its triggers ends the wait"
            );
        }
        assert!(
            tracker
                .due_after(after_outage::Away::ApiServer, after_outage::Look::Told)
                .is_empty(),
            "a 403 was an answer: it keeps its backoff through a return"
        );

        let (request, respond) = handle.next_request().await.expect("the Event's POST");
        assert_eq!(request.method(), http::Method::POST);
        assert_eq!(
            request.uri().path(),
            "/apis/events.k8s.io/v1/namespaces/ns/events"
        );
        let body = http_body_util::BodyExt::collect(request.into_body())
            .await
            .expect("the Event's body")
            .to_bytes();
        let event: Event = serde_json::from_slice(&body).expect("an Event");
        assert_eq!(event.reason.as_deref(), Some("KubernetesError"));
        assert_eq!(event.type_.as_deref(), Some("Warning"));
        assert_eq!(
            event.note.as_deref(),
            Some("status write of ns/cm failed: forbidden")
        );
        assert_eq!(
            event.regarding.as_ref().and_then(|r| r.uid.as_deref()),
            Some("uid-1")
        );
        respond.send_response(
            http::Response::builder()
                .status(201)
                .body(kube::client::Body::from(body.to_vec()))
                .expect("a response"),
        );

        // The next reconcile begins after that return, and its write gets no answer.
        tracker.lock().began("uid-1");
        let unavailable = refused(503);
        backed_off(
            config_map(),
            &tracker,
            &recorder,
            7,
            &"status write of ns/cm failed: unavailable",
            Some(&unavailable),
            resync,
        );
        assert_eq!(
            tracker
                .due_after(after_outage::Away::ApiServer, after_outage::Look::Told)
                .len(),
            1,
            "a 503 means the API server was away: its return retries this at once"
        );

        // Away again, then refused as a server still starting refuses everyone (a 403 before
        // its return is told, its RBAC caches not filled): it still waits for that return.
        tracker.lock().began("uid-1");
        for error in [refused(503), refused(403)] {
            backed_off(
                config_map(),
                &tracker,
                &recorder,
                7,
                &format!("status write of ns/cm failed: {error}"),
                Some(&error),
                resync,
            );
        }
        assert_eq!(
            tracker
                .due_after(after_outage::Away::ApiServer, after_outage::Look::Told)
                .len(),
            1,
            "a 403 after the API server was away is its start's: the return retries this at once"
        );
    }
}
