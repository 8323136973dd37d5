//! Publishes Kubernetes Events (events.k8s.io/v1) about resources.
//!
//! kube-runtime's `Recorder` keeps every Event it published for six minutes, to turn repeats
//! into series, and scans that cache on every publish: at thousands of resources that is memory
//! held for nothing and a global lock on every Event. The controller never repeats an Event (a
//! transition or a new error is announced once: see `decide`), so it needs no series and keeps
//! nothing.

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::runtime::events::Reporter;
use kube::{Client, Resource};

use crate::reconciler::note::Note;

/// What an Event says it did.
const ACTION: &str = "Reconcile";

/// The longest note the API server takes (`NoteLengthLimit`, in bytes): a longer one is refused
/// with 422. An error's text can pass it: kube formats an API error with the server's message
/// twice, and a 403's message names the identity, the resource and the namespace.
pub const NOTE_LIMIT: usize = 1024;

/// The longest object name (a DNS subdomain).
const NAME_LIMIT: usize = 253;

/// Field manager of every server-side-apply write the controller makes (status, finalizers),
/// whichever kind it writes.
pub const FIELD_MANAGER: &str = "eac-controller";

/// The reporter identity of Events: the controller name plus the pod.
pub fn reporter() -> Reporter {
    Reporter {
        controller: "eac-controller".into(),
        instance: std::env::var("POD_NAME").ok(),
    }
}

#[derive(Clone)]
pub struct Recorder {
    client: Client,
    reporter: Reporter,
}

impl Recorder {
    pub fn new(client: Client, reporter: Reporter) -> Self {
        Recorder { client, reporter }
    }

    /// Publishes `note` about `obj`.
    /// Publishes, and logs a failure: an Event is a courtesy, and losing one must not fail the
    /// reconcile that made it.
    pub async fn announce<K>(&self, obj: &K, note: &Note)
    where
        K: Resource<DynamicType = ()>,
    {
        if let Err(e) = self.publish(obj, note).await {
            tracing::warn!(error = %e, reason = note.reason, "could not publish event");
        }
    }

    pub async fn publish<K>(&self, obj: &K, note: &Note) -> Result<(), kube::Error>
    where
        K: Resource<DynamicType = ()>,
    {
        let regarding = obj.object_ref(&());
        let event = self.event(&regarding, note, jiff::Timestamp::now());
        let namespace = regarding.namespace.as_deref().unwrap_or("default");
        Api::<Event>::namespaced(self.client.clone(), namespace)
            .create(&PostParams::default(), &event)
            .await
            .map(|_| ())
    }

    fn event(&self, regarding: &ObjectReference, note: &Note, now: jiff::Timestamp) -> Event {
        let object = regarding
            .name
            .as_deref()
            .unwrap_or(&self.reporter.controller);
        Event {
            metadata: ObjectMeta {
                name: Some(event_name(object, now)),
                namespace: regarding.namespace.clone(),
                ..ObjectMeta::default()
            },
            action: Some(ACTION.into()),
            reason: Some(note.reason.into()),
            note: Some(fitted_note(&note.note)),
            type_: Some(if note.warning { "Warning" } else { "Normal" }.into()),
            event_time: Some(MicroTime(now)),
            regarding: Some(regarding.clone()),
            reporting_controller: Some(self.reporter.controller.clone()),
            reporting_instance: Some(
                self.reporter
                    .instance
                    .clone()
                    .unwrap_or_else(|| self.reporter.controller.clone()),
            ),
            ..Event::default()
        }
    }
}

/// The note as the API server takes it: cut on a character boundary to end within
/// [`NOTE_LIMIT`] bytes, "..." included.
fn fitted_note(note: &str) -> String {
    if note.len() <= NOTE_LIMIT {
        return note.to_string();
    }
    format!("{}...", crate::conditions::prefix(note, NOTE_LIMIT - 3))
}

/// Unique per Event, readable in `kubectl get events`: the object's name and the time. The name
/// is cut so that the whole stays a DNS subdomain (253 characters, no label ending in `-`).
fn event_name(object: &str, now: jiff::Timestamp) -> String {
    let suffix = format!(".{:x}", now.as_nanosecond());
    let keep = NAME_LIMIT.saturating_sub(suffix.len());
    let mut object = object.get(..keep.min(object.len())).unwrap_or("event");
    object = object.trim_end_matches(['-', '.']);
    format!("{object}{suffix}")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A recorder offline (publishing nowhere), reporting from `instance`.
    fn recorder(instance: Option<&str>) -> Recorder {
        Recorder::new(
            crate::offline::client(),
            Reporter {
                controller: "eac-controller".into(),
                instance: instance.map(str::to_string),
            },
        )
    }

    /// The API server refuses a note over 1 KiB and a name over 253 characters (422): the Event
    /// explaining a long error would be lost.
    #[tokio::test]
    async fn an_event_stays_within_what_the_api_server_takes() {
        let recorder = recorder(None);
        // Cut 17 characters short (the dot and the time), right after the '-'.
        let long_name = format!("{}-{}", "a".repeat(235), "b".repeat(17));
        assert_eq!(long_name.len(), 253);
        let regarding = ObjectReference {
            name: Some(long_name.clone()),
            namespace: Some("platform".into()),
            ..ObjectReference::default()
        };
        let now = jiff::Timestamp::from_second(1_795_255_200).unwrap();
        let text = format!("{}é{}", "x".repeat(1000), "y".repeat(2000));
        let e = recorder.event(&regarding, &Note::warning("KubernetesError", text), now);
        let note = e.note.unwrap();
        assert!(note.len() <= NOTE_LIMIT, "{}", note.len());
        assert!(note.starts_with(&"x".repeat(1000)) && note.ends_with("..."));
        let name = e.metadata.name.unwrap();
        assert!(name.len() <= NAME_LIMIT, "{}", name.len());
        assert!(name.starts_with(&format!("{}.", "a".repeat(235))), "{name}");
        assert!(!name.contains("-."), "a label ends in '-': {name}");

        let short = recorder.event(&regarding, &Note::normal("Created", "ok"), now);
        assert_eq!(
            short.note.as_deref(),
            Some("ok"),
            "a short note is kept whole"
        );
    }

    #[tokio::test]
    async fn an_event_names_its_object_controller_instance_and_kind() {
        let recorder = recorder(Some("pod-a"));
        let regarding = ObjectReference {
            name: Some("prod".into()),
            namespace: Some("platform".into()),
            uid: Some("u".into()),
            ..ObjectReference::default()
        };
        let now = jiff::Timestamp::from_second(1_795_255_200).unwrap();
        let e = recorder.event(&regarding, &Note::warning("Throttled", "slow down"), now);
        assert_eq!(e.metadata.namespace.as_deref(), Some("platform"));
        assert!(e.metadata.name.unwrap().starts_with("prod."));
        assert_eq!(e.type_.as_deref(), Some("Warning"));
        assert_eq!(e.reason.as_deref(), Some("Throttled"));
        assert_eq!(e.note.as_deref(), Some("slow down"));
        assert_eq!(e.reporting_controller.as_deref(), Some("eac-controller"));
        assert_eq!(e.reporting_instance.as_deref(), Some("pod-a"));
        assert_eq!(e.regarding, Some(regarding));
        assert_eq!(e.action.as_deref(), Some(ACTION));
    }
}
