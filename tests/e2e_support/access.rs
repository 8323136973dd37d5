//! Who talks to the API server, and through what: kubeconfigs for ServiceAccounts with chosen
//! rights (a controller without `status` rights, a tenant with `edit`), and a TCP relay in front
//! of the API server that a test can cut, to take one controller off the network.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{ClusterRole, PolicyRule, Role, RoleBinding, RoleRef, Subject};
use kube::Api;
use kube::api::{ObjectMeta, Patch, PatchParams, PostParams};
use kube::config::{AuthInfo, Kubeconfig, NamedAuthInfo};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

use super::{FIELD_MANAGER, TestNamespace};

/// A rule on EnvironmentAccountConnections (or a subresource).
pub fn eac_rule(resources: &[&str], verbs: &[&str]) -> PolicyRule {
    PolicyRule {
        api_groups: Some(vec!["proton.eac.dev".into()]),
        resources: Some(resources.iter().map(|r| r.to_string()).collect()),
        verbs: verbs.iter().map(|v| v.to_string()).collect(),
        ..PolicyRule::default()
    }
}

/// What a controller limited to one namespace needs, as the chart grants it (no more, so a
/// test would see a call that needs more): list/watch/get/patch on the resource, patch on its
/// status (unless `status_writes` is false), creating Events, Leases.
pub fn controller_rules(status_writes: bool) -> Vec<PolicyRule> {
    let mut rules = vec![
        eac_rule(
            &["environmentaccountconnections"],
            &["get", "list", "watch", "patch"],
        ),
        PolicyRule {
            api_groups: Some(vec!["events.k8s.io".into()]),
            resources: Some(vec!["events".into()]),
            verbs: vec!["create".into()],
            ..PolicyRule::default()
        },
        PolicyRule {
            api_groups: Some(vec!["coordination.k8s.io".into()]),
            resources: Some(vec!["leases".into()]),
            verbs: vec!["get".into(), "create".into(), "update".into()],
            ..PolicyRule::default()
        },
    ];
    if status_writes {
        rules.push(eac_rule(
            &["environmentaccountconnections/status"],
            &["patch"],
        ));
    }
    // The management side (on by default): read the policies, write their status.
    rules.push(eac_rule(
        &["connectionacceptancepolicies"],
        &["get", "list", "watch"],
    ));
    rules.push(eac_rule(
        &["connectionacceptancepolicies/status"],
        &["patch"],
    ));
    rules
}

impl TestNamespace {
    /// A ServiceAccount in this namespace with `rules` (a Role), and a kubeconfig that acts as
    /// it. With `cluster_role`, the account is bound to that ClusterRole in this namespace too
    /// (e.g. the built-in `edit`).
    pub async fn service_account_kubeconfig(
        &self,
        account: &str,
        rules: Vec<PolicyRule>,
        cluster_role: Option<&str>,
    ) -> PathBuf {
        let apply = PatchParams::apply(FIELD_MANAGER).force();
        let meta = |name: &str| ObjectMeta {
            name: Some(name.into()),
            namespace: Some(self.name.clone()),
            ..ObjectMeta::default()
        };
        let subject = Subject {
            kind: "ServiceAccount".into(),
            name: account.into(),
            namespace: Some(self.name.clone()),
            ..Subject::default()
        };
        Api::<ServiceAccount>::namespaced(self.client.clone(), &self.name)
            .patch(
                account,
                &apply,
                &Patch::Apply(ServiceAccount {
                    metadata: meta(account),
                    ..ServiceAccount::default()
                }),
            )
            .await
            .unwrap_or_else(|e| panic!("cannot create ServiceAccount {account}: {e}"));
        let mut bindings = vec![];
        let rules_given = rules.clone();
        if !rules.is_empty() {
            Api::<Role>::namespaced(self.client.clone(), &self.name)
                .patch(
                    account,
                    &apply,
                    &Patch::Apply(Role {
                        metadata: meta(account),
                        rules: Some(rules),
                    }),
                )
                .await
                .unwrap_or_else(|e| panic!("cannot create Role {account}: {e}"));
            bindings.push((format!("{account}-role"), "Role", account.to_string()));
        }
        if let Some(role) = cluster_role {
            bindings.push((format!("{account}-{role}"), "ClusterRole", role.to_string()));
        }
        for (name, kind, role) in bindings {
            Api::<RoleBinding>::namespaced(self.client.clone(), &self.name)
                .patch(
                    &name,
                    &apply,
                    &Patch::Apply(RoleBinding {
                        metadata: meta(&name),
                        role_ref: RoleRef {
                            api_group: "rbac.authorization.k8s.io".into(),
                            kind: kind.into(),
                            name: role,
                        },
                        subjects: Some(vec![subject.clone()]),
                    }),
                )
                .await
                .unwrap_or_else(|e| panic!("cannot create RoleBinding {name}: {e}"));
        }
        // Each rule in force before the kubeconfig is handed out (a cluster role's, which the
        // caller knows, is the caller's to wait for).
        for rule in rules_given.iter() {
            let group = rule
                .api_groups
                .iter()
                .flatten()
                .next()
                .map_or("", String::as_str);
            if let (Some(resource), Some(verb)) =
                (rule.resources.iter().flatten().next(), rule.verbs.first())
            {
                self.wait_until_allowed(account, verb, group, resource)
                    .await;
            }
        }
        let token = Api::<ServiceAccount>::namespaced(self.client.clone(), &self.name)
            .create_token_request(
                account,
                &PostParams::default(),
                &TokenRequest {
                    spec: TokenRequestSpec {
                        audiences: vec![],
                        expiration_seconds: Some(3600),
                        ..TokenRequestSpec::default()
                    },
                    ..TokenRequest::default()
                },
            )
            .await
            .unwrap_or_else(|e| panic!("cannot get a token for {account}: {e}"))
            .status
            .map(|s| s.token)
            .unwrap_or_else(|| panic!("the TokenRequest for {account} came back without a token"));
        let path = self.log_dir().join(format!("kubeconfig-{account}"));
        write_kubeconfig(&self.kubeconfig, &path, |config| {
            let user = format!("{}-{account}", self.name);
            config.auth_infos = vec![NamedAuthInfo {
                name: user.clone(),
                auth_info: Some(AuthInfo {
                    token: Some(token.into()),
                    ..AuthInfo::default()
                }),
                ..NamedAuthInfo::default()
            }];
            for context in &mut config.contexts {
                if let Some(c) = context.context.as_mut() {
                    c.user = Some(user.clone());
                }
            }
        });
        path
    }

    /// Waits until the API server's authorizer lets the ServiceAccount `account` of this
    /// namespace `verb` `resource` (`name/subresource` for a subresource) of API group `group`
    /// here. A binding reaches the authorizer's cache a moment after it is written, and a
    /// ClusterRole aggregated into `edit` only once the controller-manager has folded it in: a
    /// request made before then is refused. Asked with a SubjectAccessReview, which the same
    /// authorizer answers; gives up after 30 s, naming what it waited for.
    pub async fn wait_until_allowed(&self, account: &str, verb: &str, group: &str, resource: &str) {
        let (resource, subresource) = match resource.split_once('/') {
            Some((r, s)) => (r, Some(s.to_string())),
            None => (resource, None),
        };
        let user = format!("system:serviceaccount:{}:{account}", self.name);
        let review = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: Some(user.clone()),
                groups: Some(vec![
                    "system:serviceaccounts".into(),
                    format!("system:serviceaccounts:{}", self.name),
                    "system:authenticated".into(),
                ]),
                resource_attributes: Some(ResourceAttributes {
                    namespace: Some(self.name.clone()),
                    verb: Some(verb.into()),
                    group: Some(group.into()),
                    resource: Some(resource.into()),
                    subresource,
                    ..ResourceAttributes::default()
                }),
                ..SubjectAccessReviewSpec::default()
            },
            ..SubjectAccessReview::default()
        };
        let what = format!(
            "{user} allowed to {verb} {resource} ({group}) in {}",
            self.name
        );
        let reviews = Api::<SubjectAccessReview>::all(self.client.clone());
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let answer = reviews.create(&PostParams::default(), &review).await;
            if matches!(&answer, Ok(r) if r.status.as_ref().is_some_and(|s| s.allowed)) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out after 30 s waiting for {what}; last answer: {answer:?}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }

    /// The aggregated-style ClusterRole that lets `edit` users manage EnvironmentAccountConnections
    /// (as the chart installs it), so a tenant bound to `edit` can apply resources.
    pub async fn ensure_edit_aggregation(&self) {
        let role = ClusterRole {
            metadata: ObjectMeta {
                name: Some("eac-e2e-edit".into()),
                labels: Some(
                    [
                        (
                            "rbac.authorization.k8s.io/aggregate-to-edit".to_string(),
                            "true".to_string(),
                        ),
                        // Cluster-scoped, kept across tests: removed with the other leftovers.
                        (super::NAMESPACE_LABEL.to_string(), "true".to_string()),
                    ]
                    .into(),
                ),
                ..ObjectMeta::default()
            },
            rules: Some(vec![eac_rule(
                &["environmentaccountconnections"],
                &[
                    "get", "list", "watch", "create", "update", "patch", "delete",
                ],
            )]),
            ..ClusterRole::default()
        };
        Api::<ClusterRole>::all(self.client.clone())
            .patch(
                "eac-e2e-edit",
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(role),
            )
            .await
            .unwrap_or_else(|e| panic!("cannot apply ClusterRole eac-e2e-edit: {e}"));
    }

    /// A kubeconfig like the test's, but reaching the API server through `relay`.
    pub fn relayed_kubeconfig(&self, relay: &Relay, name: &str) -> PathBuf {
        let path = self.log_dir().join(format!("kubeconfig-relayed-{name}"));
        write_kubeconfig(&self.kubeconfig, &path, |config| {
            for cluster in &mut config.clusters {
                let Some(c) = cluster.cluster.as_mut() else {
                    continue;
                };
                let Some(server) = c.server.as_deref().and_then(|s| url::Url::parse(s).ok()) else {
                    continue;
                };
                // TLS still checks the API server's certificate for its real name.
                if c.tls_server_name.is_none() {
                    c.tls_server_name = server
                        .host_str()
                        .map(|h| h.trim_matches(['[', ']']).to_string());
                }
                c.server = Some(format!("{}://{}", server.scheme(), relay.addr));
            }
        });
        path
    }

    /// The API server's address, from the test's kubeconfig.
    pub async fn api_server_addr(&self) -> SocketAddr {
        let url = &self.config.cluster_url;
        let host = url.host().unwrap_or("127.0.0.1");
        let port = url
            .port_u16()
            .unwrap_or(if url.scheme_str() == Some("http") {
                80
            } else {
                443
            });
        tokio::net::lookup_host((host.trim_matches(['[', ']']), port))
            .await
            .ok()
            .and_then(|mut addrs| addrs.next())
            .unwrap_or_else(|| panic!("cannot resolve the API server {url}"))
    }
}

/// Reads the kubeconfig at `from`, lets `change` edit it, writes it to `to`. Relative file
/// references (certificates) are made absolute so the copy works from anywhere.
fn write_kubeconfig(from: &Path, to: &Path, change: impl FnOnce(&mut Kubeconfig)) {
    let mut config = Kubeconfig::read_from(from)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", from.display()));
    let base = from.parent().unwrap_or(Path::new("/"));
    let absolute = |p: &mut Option<String>| {
        if let Some(path) = p.as_mut()
            && Path::new(path).is_relative()
        {
            *path = base.join(&*path).display().to_string();
        }
    };
    for c in config
        .clusters
        .iter_mut()
        .filter_map(|c| c.cluster.as_mut())
    {
        absolute(&mut c.certificate_authority);
    }
    for a in config
        .auth_infos
        .iter_mut()
        .filter_map(|a| a.auth_info.as_mut())
    {
        absolute(&mut a.client_certificate);
        absolute(&mut a.client_key);
    }
    change(&mut config);
    let text = serde_yaml::to_string(&config)
        .unwrap_or_else(|e| panic!("cannot serialize a kubeconfig: {e}"));
    std::fs::write(to, text).unwrap_or_else(|e| panic!("cannot write {}: {e}", to.display()));
}

/// A TCP relay to one address. While cut, it forwards nothing: open connections go silent and
/// new ones are accepted but never answered, as on a partitioned network (no RST, no FIN).
pub struct Relay {
    pub addr: SocketAddr,
    cut: Arc<AtomicBool>,
    changed: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    pub async fn start(target: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("cannot bind the relay: {e}"));
        let addr = listener.local_addr().expect("a bound address");
        let cut = Arc::new(AtomicBool::new(false));
        let changed = Arc::new(Notify::new());
        let (cut_in, changed_in) = (cut.clone(), changed.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((inbound, _)) = listener.accept().await else {
                    return;
                };
                let (cut, changed) = (cut_in.clone(), changed_in.clone());
                tokio::spawn(async move {
                    if cut.load(Ordering::SeqCst) {
                        // Accepted, never answered: hold it open until the relay is dropped.
                        let _held = inbound;
                        return std::future::pending::<()>().await;
                    }
                    let Ok(outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    pipe(inbound, outbound, cut, changed).await;
                });
            }
        });
        Relay {
            addr,
            cut,
            changed,
            task,
        }
    }

    /// Stops forwarding, on open connections and new ones.
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        self.changed.notify_waiters();
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Copies both ways until either side closes or the relay is cut; once cut, the connection is
/// held open and silent.
async fn pipe(inbound: TcpStream, outbound: TcpStream, cut: Arc<AtomicBool>, changed: Arc<Notify>) {
    let (mut in_read, mut in_write) = inbound.into_split();
    let (mut out_read, mut out_write) = outbound.into_split();
    let copy = async {
        tokio::select! {
            _ = tokio::io::copy(&mut in_read, &mut out_write) => {}
            _ = tokio::io::copy(&mut out_read, &mut in_write) => {}
        }
    };
    let cut_now = async {
        loop {
            let notified = changed.notified();
            if cut.load(Ordering::SeqCst) {
                return;
            }
            notified.await;
        }
    };
    let was_cut = tokio::select! {
        _ = copy => false,
        _ = cut_now => true,
    };
    if was_cut {
        // Partitioned: keep both ends open and say nothing.
        let _held = (in_read, in_write, out_read, out_write);
        std::future::pending::<()>().await;
    } else {
        let _ = in_write.shutdown().await;
    }
}
