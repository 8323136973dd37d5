//! The AccountMapping kind's wiring: follows the mappings and the namespaces' labels (what
//! decides which credentials a namespace acts with), and keeps every mapping's status in step,
//! writing only what changed.

use std::hash::{DefaultHasher, Hash, Hasher};

use futures::{StreamExt, TryStreamExt};
use kube::api::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use tokio_util::task::AbortOnDropHandle;
use tracing::{info, warn};

use super::{AccountMapping, Accounts};

/// Keeps every AccountMapping's status (account, namespaces, overlaps) in step with the
/// mappings and namespaces, writing only what changed; once now, then after every change.
async fn write_mapping_statuses(
    client: Client,
    mappings: Store<AccountMapping>,
    namespaces: Store<k8s_openapi::api::core::v1::Namespace>,
    mut ticks: futures::channel::mpsc::UnboundedReceiver<()>,
) {
    let api: Api<AccountMapping> = Api::all(client);
    loop {
        let all = mappings.state();
        let ns = namespaces.state();
        let named: Vec<(String, &super::AccountMappingSpec)> =
            all.iter().map(|m| (m.name_any(), &m.spec)).collect();
        let specs: Vec<(&str, &super::AccountMappingSpec)> =
            named.iter().map(|(n, s)| (n.as_str(), *s)).collect();
        let labelled: Vec<(String, std::collections::BTreeMap<String, String>)> = ns
            .iter()
            .map(|n| (n.name_any(), n.labels().clone()))
            .collect();
        let labels: Vec<(&str, &std::collections::BTreeMap<String, String>)> =
            labelled.iter().map(|(n, l)| (n.as_str(), l)).collect();
        for mapping in &all {
            let name = mapping.name_any();
            let status = super::status::status_of(
                &name,
                mapping.metadata.generation.unwrap_or_default(),
                &specs,
                &labels,
                mapping.status.as_ref(),
                jiff::Timestamp::now(),
            );
            if mapping.status.as_ref() == Some(&status) {
                continue;
            }
            if let Err(e) = crate::reconciler::status::apply_status(&api, &name, &status).await {
                warn!(mapping = %name, error = %e, "could not write the AccountMapping's status");
            }
        }
        // A burst of changes is one pass.
        if ticks.next().await.is_none() {
            return;
        }
        while ticks.try_recv().is_ok() {}
    }
}

/// Watches the account mappings and the namespaces' labels. Returns once both are known (so no
/// resource is ever reconciled with the controller's own credentials because its mapping was
/// not read yet), with a stream that ticks on every change that can move a namespace to other
/// credentials. None if `shutdown` came first.
pub async fn follow(
    client: &Client,
    shutdown: impl std::future::Future<Output = ()>,
) -> Option<(
    Accounts,
    futures::channel::mpsc::UnboundedReceiver<()>,
    Vec<AbortOnDropHandle<()>>,
)> {
    use crate::reconciler::watch::streamed_or_listed;
    use k8s_openapi::api::core::v1::Namespace;

    let (tick, changes) = futures::channel::mpsc::unbounded();
    let (status_tick, status_ticks) = futures::channel::mpsc::unbounded();
    let namespace_status_tick = status_tick.clone();
    let (mappings, mapping_writer) = reflector::store::<AccountMapping>();
    let (namespaces, namespace_writer) = reflector::store::<Namespace>();
    let config = watcher::Config::default().any_semantic();
    let mapping_ticks = tick.clone();
    let follow_mappings =
        streamed_or_listed(Api::<AccountMapping>::all(client.clone()), config.clone())
            .backoff(crate::reconciler::watch::WatchBackoff::default())
            .modify(|m| m.metadata.managed_fields = None)
            .reflect(mapping_writer)
            .inspect_err(|e| warn!(error = %e, "watching AccountMappings failed; retrying"))
            .applied_objects()
            .predicate_filter(
                |m: &AccountMapping| {
                    let mut h = DefaultHasher::new();
                    serde_json::to_string(&m.spec)
                        .unwrap_or_default()
                        .hash(&mut h);
                    Some(h.finish())
                },
                Default::default(),
            )
            .for_each(move |_| {
                let _ = mapping_ticks.unbounded_send(());
                let _ = status_tick.unbounded_send(());
                futures::future::ready(())
            });
    let follow_namespaces = streamed_or_listed(Api::<Namespace>::all(client.clone()), config)
        .backoff(crate::reconciler::watch::WatchBackoff::default())
        // Only the labels are read.
        .modify(|ns| {
            ns.metadata.managed_fields = None;
            ns.metadata.annotations = None;
            ns.spec = None;
            ns.status = None;
        })
        .reflect(namespace_writer)
        .inspect_err(|e| warn!(error = %e, "watching Namespaces failed; retrying"))
        .applied_objects()
        .predicate_filter(
            |ns: &Namespace| {
                let mut h = DefaultHasher::new();
                ns.labels().hash(&mut h);
                Some(h.finish())
            },
            Default::default(),
        )
        .for_each(move |_| {
            let _ = tick.unbounded_send(());
            let _ = namespace_status_tick.unbounded_send(());
            futures::future::ready(())
        });
    // Stopped when dropped: by the caller, or with this future if it is dropped first.
    let followers = vec![
        AbortOnDropHandle::new(tokio::spawn(follow_mappings)),
        AbortOnDropHandle::new(tokio::spawn(follow_namespaces)),
    ];
    let ready = async {
        let _ = mappings.wait_until_ready().await;
        let _ = namespaces.wait_until_ready().await;
    };
    // Nothing is reconciled until both are listed: say so, with the likely fix, while it lasts.
    let nagging = async {
        let mut every = tokio::time::interval(std::time::Duration::from_secs(30));
        every.tick().await;
        loop {
            every.tick().await;
            tracing::error!(
                "still waiting to list AccountMappings and Namespaces, so nothing is reconciled: is the AccountMapping CRD installed (kubectl apply -f crds/) and may the controller list both? --account-mappings=false turns mappings off"
            );
        }
    };
    tokio::select! {
        _ = nagging => None,
        _ = ready => {
            info!(mappings = mappings.state().len(), "account mappings known");
            let mut followers = followers;
            followers.push(AbortOnDropHandle::new(tokio::spawn(write_mapping_statuses(
                client.clone(),
                mappings.clone(),
                namespaces.clone(),
                status_ticks,
            ))));
            Some((Accounts::from_stores(mappings, namespaces), changes, followers))
        }
        _ = shutdown => None,
    }
}
