//! What a reconcile acts on besides the spec: the annotations it reads and the credentials its
//! namespace resolves to.

use std::hash::{DefaultHasher, Hash, Hasher};

use kube::ResourceExt;

use crate::connection::api::{ADOPT_ANNOTATION, EnvironmentAccountConnection, PAUSED_ANNOTATION};
use crate::mapping::{MappingError, Resolved};

/// The `proton.eac.dev/adopt-id` annotation, trimmed, if not empty.
pub(super) fn adopt_annotation(obj: &EnvironmentAccountConnection) -> Option<String> {
    obj.annotations()
        .get(ADOPT_ANNOTATION)
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// Whether the `proton.eac.dev/paused` annotation says `"true"`.
pub(super) fn paused_annotation(obj: &EnvironmentAccountConnection) -> bool {
    obj.annotations()
        .get(PAUSED_ANNOTATION)
        .is_some_and(|v| v.trim() == "true")
}

/// What a reconcile acts on besides the spec: a change to one is worth a reconcile even before
/// the resource is due: the annotations it reads, and the credentials its namespace resolves to.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) struct Triggers {
    pub(super) adopt_id: Option<String>,
    pub(super) paused: bool,
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
            paused: paused_annotation(obj),
            credentials,
        }
    }
}
