//! The AccountMapping kind's wiring: follows the mappings and the namespaces' labels (what
//! decides which credentials a namespace acts with), and keeps every mapping's status in step,
//! writing only what changed.

use std::collections::BTreeSet;
use std::hash::{DefaultHasher, Hash, Hasher};

use futures::StreamExt;
use futures::channel::mpsc::{UnboundedReceiver, UnboundedSender, unbounded};
use kube::api::Api;
use kube::runtime::reflector::Store;
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use tokio_util::task::AbortOnDropHandle;
use tracing::{debug, info, warn};

use super::decide::Credentials;
use super::{AccountMapping, Accounts, UnmappedNamespaces};

/// How soon a pass whose status write failed is made again, if nothing changes before.
const STATUS_RETRY: std::time::Duration = std::time::Duration::from_secs(5);

/// Keeps every AccountMapping's status (account, namespaces, overlaps) in step with the
/// mappings and namespaces, writing only what changed; once now, then after every change, and
/// again soon after a write failed (a watch that resumes after an outage shows no change).
async fn write_mapping_statuses(
    client: Client,
    mappings: Store<AccountMapping>,
    namespaces: Store<k8s_openapi::api::core::v1::Namespace>,
    mut ticks: UnboundedReceiver<()>,
) {
    let api: Api<AccountMapping> = Api::all(client);
    loop {
        let mut failed = false;
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
            let uid = mapping.uid().unwrap_or_default();
            if let Err(e) =
                crate::reconciler::status::write_status(&api, &name, &uid, &status).await
            {
                failed = true;
                warn!(mapping = %name, error = %e, "could not write the AccountMapping's status; trying again in 5 s");
            }
        }
        let next = match failed {
            true => tokio::time::timeout(STATUS_RETRY, ticks.next())
                .await
                .unwrap_or(Some(())),
            false => ticks.next().await,
        };
        if next.is_none() {
            return;
        }
        // A burst of changes is one pass.
        while ticks.try_recv().is_ok() {}
    }
}

/// Where a change of the mappings or namespaces is told: the statuses' writer and the
/// credentials' comparison each get a tick (a burst of them is one pass).
#[derive(Clone)]
struct Ticks {
    credentials: UnboundedSender<()>,
    statuses: UnboundedSender<()>,
}

impl Ticks {
    fn send(&self) {
        let _ = self.credentials.unbounded_send(());
        let _ = self.statuses.unbounded_send(());
    }
}

/// The cache of `api`'s objects, and the task that ticks whenever they change in a way `hash`
/// sees, one goes away, or a relist replaced them. Never for a failed watch: the cache did not
/// change, and during an API-server outage a watch fails every 2 s.
fn followed<K>(
    api: Api<K>,
    answers: &crate::api_answers::Answers,
    slim: impl FnMut(&mut K) + Send + 'static,
    hash: impl Fn(&K) -> u64 + Send + 'static,
    ticks: Ticks,
    hint: &'static str,
) -> (
    Store<K>,
    impl std::future::Future<Output = ()> + Send + 'static,
)
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let removed = ticks.clone();
    let (store, changed) = crate::reconciler::watch::triggers(
        crate::reconciler::watch::Watched {
            api,
            config: watcher::Config::default().any_semantic(),
            returns: answers.returns(),
        },
        slim,
        move |_, event| {
            if let Ok(watcher::Event::Delete(_) | watcher::Event::InitDone) = event {
                removed.send();
            }
        },
        move |o| Some(hash(o)),
        crate::reconciler::watch::Relisted::Whole,
        hint,
    );
    let task = changed.for_each(move |changed| {
        if changed.is_ok() {
            ticks.send();
        }
        futures::future::ready(())
    });
    (store, task)
}

/// After each burst of changes to the mappings or namespaces, tells `moved` the namespaces whose
/// resources now act with other credentials than after the last (`last`: when the watches were
/// first known), so that only their resources are reconciled.
async fn follow_credentials(
    accounts: Accounts,
    mut last: Credentials,
    mut ticks: UnboundedReceiver<()>,
    moved: UnboundedSender<BTreeSet<String>>,
) {
    while ticks.next().await.is_some() {
        while ticks.try_recv().is_ok() {}
        let now = accounts.resolve_all();
        let namespaces = super::decide::moved(&last, &now);
        last = now;
        if namespaces.is_empty() {
            continue;
        }
        info!(
            namespaces = namespaces.len(),
            "credentials changed; reconciling the resources of these namespaces"
        );
        debug!(namespaces = ?namespaces, "credentials changed");
        if moved.unbounded_send(namespaces).is_err() {
            return;
        }
    }
}

/// Watches the account mappings and the namespaces' labels. Returns once both are known (so no
/// resource is ever reconciled with the controller's own credentials because its mapping was
/// not read yet), with the [`Accounts`] they decide (namespaces no mapping selects acting as
/// `unmapped` says) and a stream of the namespaces whose credentials a later change moved. None
/// if `shutdown` came first.
pub async fn follow(
    client: &Client,
    answers: &crate::api_answers::Answers,
    unmapped: UnmappedNamespaces,
    shutdown: impl std::future::Future<Output = ()>,
) -> Option<(
    Accounts,
    UnboundedReceiver<BTreeSet<String>>,
    Vec<AbortOnDropHandle<()>>,
)> {
    use k8s_openapi::api::core::v1::Namespace;

    let (credential_tick, credential_ticks) = unbounded();
    let (status_tick, status_ticks) = unbounded();
    let ticks = Ticks {
        credentials: credential_tick,
        statuses: status_tick,
    };
    let (mappings, follow_mappings) = followed(
        Api::<AccountMapping>::all(client.clone()),
        answers,
        |m: &mut AccountMapping| m.metadata.managed_fields = None,
        |m: &AccountMapping| {
            let mut h = DefaultHasher::new();
            serde_json::to_string(&m.spec)
                .unwrap_or_default()
                .hash(&mut h);
            h.finish()
        },
        ticks.clone(),
        " (is the CRD accountmappings.proton.eac.dev installed and may the controller list and watch it? --account-mappings=false turns mappings off)",
    );
    let (namespaces, follow_namespaces) = followed(
        Api::<Namespace>::all(client.clone()),
        answers,
        // Only the labels are read.
        |ns: &mut Namespace| {
            ns.metadata.managed_fields = None;
            ns.metadata.annotations = None;
            ns.spec = None;
            ns.status = None;
        },
        |ns: &Namespace| {
            let mut h = DefaultHasher::new();
            ns.labels().hash(&mut h);
            h.finish()
        },
        ticks,
        " (may the controller list and watch namespaces? --account-mappings=false turns mappings off)",
    );
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
            let accounts = Accounts::from_stores(mappings.clone(), namespaces.clone())
                .with_unmapped(unmapped);
            // Taken before any resource is reconciled: a change from now on is compared.
            let known = accounts.resolve_all();
            let (moved, moves) = unbounded();
            let mut followers = followers;
            followers.push(AbortOnDropHandle::new(tokio::spawn(write_mapping_statuses(
                client.clone(),
                mappings,
                namespaces,
                status_ticks,
            ))));
            followers.push(AbortOnDropHandle::new(tokio::spawn(follow_credentials(
                accounts.clone(),
                known,
                credential_ticks,
                moved,
            ))));
            Some((accounts, moves, followers))
        }
        _ = shutdown => None,
    }
}
