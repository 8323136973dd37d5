//! The status write every kind makes: server-side apply on the status subresource, under the
//! controller's one field manager, forced (the controller alone owns its objects' status). Each
//! kind decides whether its status changed; this only writes.

use kube::Resource;
use kube::api::{Api, Patch, PatchParams};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::recorder::FIELD_MANAGER;

/// Applies `status` to the object `name`. Returns the resourceVersion the object has after it.
pub async fn apply_status<K, S>(
    api: &Api<K>,
    name: &str,
    status: &S,
) -> Result<Option<String>, kube::Error>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
    S: Serialize,
{
    let patch = json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    api.patch_status(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(patch),
    )
    .await
    .map(|o| o.meta().resource_version.clone())
}
