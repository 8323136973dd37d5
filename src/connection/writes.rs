//! The Kubernetes writes of a reconcile: the status (only when it changed), the finalizer with
//! the intent to create, and the intent once it is obsolete.

use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use tracing::debug;

use super::cached::intent_is_history;
use super::context::Context;
use super::error::Error;
use super::facts::Facts;
use crate::connection::api::{
    EnvironmentAccountConnection, EnvironmentAccountConnectionStatus as Status, FINALIZER,
    INTENT_ANNOTATION,
};
use crate::connection::decide::{Intent, Written};
use crate::reconciler::{self};

/// The status subresource written (see [`reconciler::status::write_status`]), only when it
/// differs from what is recorded.
/// What was written is remembered until the watch cache shows it; what could not be written is
/// remembered so the connection it names is not lost track of.
pub(super) async fn write_status(
    ctx: &Context,
    facts: &Facts,
    status: &Status,
) -> Result<(), Error> {
    let unchanged = {
        let tracked = ctx.tracked();
        match tracked
            .get(&facts.uid)
            .and_then(|t| t.kind.memory.written.as_ref())
        {
            Some(written) => written.is(status),
            None => facts.stored.as_ref().unwrap_or(&Status::default()) == status,
        }
    };
    if unchanged {
        return Ok(());
    }
    let result =
        reconciler::status::write_status(&facts.api, &facts.name, &facts.uid, status).await;
    {
        let mut tracked = ctx.tracked();
        let memory = &mut tracked.entry(&facts.uid).kind.memory;
        match &result {
            Ok(version) => {
                memory.written = Some(
                    Written::new(status, version.clone()).during_list(
                        ctx.lists_answered
                            .load(std::sync::atomic::Ordering::Relaxed),
                    ),
                );
                memory.unwritten = None;
            }
            Err(_) => memory.unwritten = Some(Box::new(status.clone())),
        }
    }
    match result {
        Ok(_) => {
            if status.id.is_none() && status.create_sent_at.is_none() {
                drop_stale_intent(ctx, facts).await;
            }
            Ok(())
        }
        Err(source) => Err(Error::Kube {
            step: "writing the status",
            object: facts.object.clone(),
            source,
        }),
    }
}

/// The status now says no Create is in flight and no connection exists (a Create was refused
/// outright): the intent annotation written with the finalizer is obsolete, and is removed so
/// it does not make a deletion search for a connection that cannot exist. Guarded by its value;
/// a failure only costs that search.
pub(super) async fn drop_stale_intent(ctx: &Context, facts: &Facts) {
    let current = facts
        .intent_annotation
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take();
    let current = match current {
        Some(value) => Some(value),
        // Not in the cache (see `intent_is_history`): as the API server has it, if at all.
        None if intent_is_history(facts.stored.as_ref()) => {
            match facts.api.get_opt(&facts.name).await {
                Ok(found) => found.and_then(|o| o.annotations().get(INTENT_ANNOTATION).cloned()),
                Err(e) => {
                    debug!(error = %e, "could not read the intent annotation to remove it");
                    None
                }
            }
        }
        None => None,
    };
    let Some(value) = current else {
        return;
    };
    let path = format!(
        "/metadata/annotations/{}",
        INTENT_ANNOTATION.replace('~', "~0").replace('/', "~1")
    );
    let ops = json!([
        this_object(&facts.uid),
        {"op": "test", "path": path, "value": value},
        {"op": "remove", "path": path},
    ]);
    let Ok(patch) = serde_json::from_value::<json_patch::Patch>(ops) else {
        return;
    };
    if let Err(e) = facts
        .api
        .patch(
            &facts.name,
            &PatchParams::default(),
            &Patch::<()>::Json(patch),
        )
        .await
    {
        debug!(error = %e, "could not remove the obsolete intent annotation");
        return;
    }
    ctx.tracked().entry(&facts.uid).kind.memory.dropped_intent = Some(value);
}

/// Names the step and the object in a Kubernetes error.
pub(super) fn kube_error(step: &'static str, object: &str) -> impl FnOnce(kube::Error) -> Error {
    let object = object.to_string();
    move |source| Error::Kube {
        step,
        object,
        source,
    }
}

/// The first operation of every JSON patch the controller makes: the patch applies only to the
/// object the reconcile read (`uid`), never to one created under the same name since (deleted
/// and applied again, as `kubectl replace --force` or a GitOps tool's replace does) while the
/// reconcile waited, for a slot in the AWS budget say. Else the old object's finalizer and
/// intent to create would land on the new one, and with them the old object's connection. A
/// failed test is refused with 422.
fn this_object(uid: &str) -> serde_json::Value {
    json!({"op": "test", "path": "/metadata/uid", "value": uid})
}

/// Adds the finalizer with a guarded JSON patch: it fails (422, and is retried) if the list
/// changed under us, instead of overwriting someone else's finalizer, or if the object is no
/// longer the one with `uid`. The intent to create, if any, goes in the same patch.
pub(super) async fn add_finalizer(
    api: &Api<EnvironmentAccountConnection>,
    name: &str,
    uid: &str,
    current: &[String],
    intent: Option<&Intent>,
    annotated: bool,
) -> Result<(), kube::Error> {
    let mut ops = vec![this_object(uid)];
    ops.extend(if current.is_empty() {
        vec![
            json!({"op": "test", "path": "/metadata/finalizers", "value": null}),
            json!({"op": "add", "path": "/metadata/finalizers", "value": [FINALIZER]}),
        ]
    } else {
        vec![
            json!({"op": "test", "path": "/metadata/finalizers", "value": current}),
            json!({"op": "add", "path": "/metadata/finalizers/-", "value": FINALIZER}),
        ]
    });
    if let Some(intent) = intent {
        let value = intent.to_annotation();
        if annotated {
            let key = INTENT_ANNOTATION.replace('~', "~0").replace('/', "~1");
            ops.push(json!({"op": "add", "path": format!("/metadata/annotations/{key}"), "value": value}));
        } else {
            // No annotations yet: create the map, guarded so nobody else's are overwritten.
            ops.push(json!({"op": "test", "path": "/metadata/annotations", "value": null}));
            ops.push(json!({"op": "add", "path": "/metadata/annotations", "value": {INTENT_ANNOTATION: value}}));
        }
    }
    let ops = serde_json::Value::Array(ops);
    let patch: json_patch::Patch = serde_json::from_value(ops).map_err(kube::Error::SerdeError)?;
    api.patch(name, &PatchParams::default(), &Patch::<()>::Json(patch))
        .await
        .map(|_| ())
}

/// Removes the finalizer, guarded by its place in the list and by the object's `uid`.
pub(super) async fn remove_finalizer(
    api: &Api<EnvironmentAccountConnection>,
    name: &str,
    uid: &str,
    current: &[String],
) -> Result<(), kube::Error> {
    let Some(index) = current.iter().position(|f| f == FINALIZER) else {
        return Ok(());
    };
    let path = format!("/metadata/finalizers/{index}");
    let ops = json!([
        this_object(uid),
        {"op": "test", "path": path, "value": FINALIZER},
        {"op": "remove", "path": path},
    ]);
    let patch: json_patch::Patch = serde_json::from_value(ops).map_err(kube::Error::SerdeError)?;
    match api
        .patch(name, &PatchParams::default(), &Patch::<()>::Json(patch))
        .await
    {
        Ok(_) => Ok(()),
        // The object is already gone: nothing holds it any more.
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e),
    }
}
