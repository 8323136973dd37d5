//! The status write every kind makes: the status subresource replaced by a JSON patch under the
//! controller's field manager (the controller alone writes its objects' status), guarded by the
//! object's uid. Each kind decides whether its status changed; this only writes.

use kube::Resource;
use kube::api::{Api, Patch, PatchParams};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::recorder::FIELD_MANAGER;

/// Writes `status` to the object `name` if it is still the one with `uid`; returns the
/// resourceVersion the object has after it. An object replaced under the same name while a
/// reconcile of the old one ran (deleted and applied again: an observer has no finalizer to hold
/// it, and a tenant may strip a finalizer) refuses the write with 422, so nothing the old one
/// learned (the id of the connection it adopted) lands on the new one: by name alone, the new
/// one would take that connection for its own.
pub async fn write_status<K, S>(
    api: &Api<K>,
    name: &str,
    uid: &str,
    status: &S,
) -> Result<Option<String>, kube::Error>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
    S: Serialize,
{
    let ops = json!([
        {"op": "test", "path": "/metadata/uid", "value": uid},
        {"op": "add", "path": "/status", "value": status},
    ]);
    let patch: json_patch::Patch = serde_json::from_value(ops).map_err(kube::Error::SerdeError)?;
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.to_string()),
        ..PatchParams::default()
    };
    api.patch_status(name, &params, &Patch::<()>::Json(patch))
        .await
        .map(|o| o.meta().resource_version.clone())
}
