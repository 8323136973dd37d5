//! What a reconcile acts on besides the spec: the annotations it reads and the credentials its
//! namespace resolves to.

use std::hash::{DefaultHasher, Hash, Hasher};

use kube::ResourceExt;

use crate::conditions::SYNCED;
use crate::connection::api::{
    ADOPT_ANNOTATION, EnvironmentAccountConnection, INTENT_ANNOTATION, is_paused,
};
use crate::connection::decide::INTENT_NOT_TRUSTED;
use crate::mapping::{MappingError, Resolved};

/// The `proton.eac.dev/adopt-id` annotation, trimmed, if not empty.
pub(super) fn adopt_annotation(obj: &EnvironmentAccountConnection) -> Option<String> {
    obj.annotations()
        .get(ADOPT_ANNOTATION)
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// The intent annotation of a resource that reports it not trusted (`IntentNotTrusted`): its
/// removal or correction is worth a reconcile at once (the report is retried only at the
/// resync). Of no other resource: the controller's own intent comes and goes (the watch cache
/// drops it once a connection is recorded), and that is no change.
pub(super) fn refused_intent(obj: &EnvironmentAccountConnection) -> Option<&str> {
    let refused = obj
        .status
        .as_ref()
        .and_then(|s| s.condition(SYNCED))
        .is_some_and(|c| c.reason == INTENT_NOT_TRUSTED);
    if !refused {
        return None;
    }
    obj.annotations().get(INTENT_ANNOTATION).map(String::as_str)
}

/// What a reconcile acts on besides the spec: a change to one is worth a reconcile even before
/// the resource is due: the annotations it reads, and the credentials its namespace resolves to.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) struct Triggers {
    pub(super) adopt_id: Option<String>,
    pub(super) paused: bool,
    /// See [`refused_intent`].
    pub(super) refused_intent: Option<String>,
    pub(super) credentials: Result<Resolved, MappingError>,
}

impl Triggers {
    /// What a checkpoint keeps of them: equal triggers hash alike, and a changed one (a new
    /// mapping, annotation, ...) all but surely not.
    pub(super) fn hash_of(&self) -> u64 {
        let mut h = DefaultHasher::new();
        self.hash(&mut h);
        h.finish()
    }

    /// The triggers of `obj`, whose namespace resolves to `credentials`.
    pub(super) fn of(
        obj: &EnvironmentAccountConnection,
        credentials: Result<Resolved, MappingError>,
    ) -> Triggers {
        Triggers {
            adopt_id: adopt_annotation(obj),
            paused: is_paused(obj.annotations()),
            refused_intent: refused_intent(obj).map(str::to_string),
            credentials,
        }
    }
}
