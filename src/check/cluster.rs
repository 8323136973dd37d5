//! The Kubernetes side of `check`: the API server and its version, the CRDs, and the
//! controller's own permissions.

use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, PostParams};
use kube::{Client, CustomResourceExt};

use super::{Finding, Scope};
use crate::connection::api::EnvironmentAccountConnection;
use crate::mapping::AccountMapping;
use crate::policy::ConnectionAcceptancePolicy;

/// The Kubernetes minor versions the project builds for and tests on (k8s-openapi's `v1_33`
/// feature; the e2e workflow runs 1.33, 1.36 and 1.37).
pub const SUPPORTED_MINORS: std::ops::RangeInclusive<u32> = 33..=37;

/// The API server answers, and runs a version the project supports. `Err` when it does not
/// answer (nothing else on the cluster can be checked then).
pub async fn version(client: &Client) -> Result<Finding, Finding> {
    match client.apiserver_version().await {
        Err(e) => Err(Finding::fail(
            "Kubernetes API",
            format!("no answer: {e}"),
            "check KUBECONFIG (or the in-cluster service account) and that the API server is reachable",
        )),
        Ok(info) => Ok(verdict_on_version(
            &info.major,
            &info.minor,
            &info.git_version,
        )),
    }
}

/// The verdict on a server version (`minor` may carry a suffix, as `36+` on some distributions).
pub fn verdict_on_version(major: &str, minor: &str, git_version: &str) -> Finding {
    const CHECK: &str = "Kubernetes API";
    let minor_number: Option<u32> = minor
        .trim_end_matches(|c: char| !c.is_ascii_digit())
        .parse()
        .ok();
    let supported = format!(
        "supported: 1.{} to 1.{}",
        SUPPORTED_MINORS.start(),
        SUPPORTED_MINORS.end()
    );
    match (major, minor_number) {
        ("1", Some(m)) if SUPPORTED_MINORS.contains(&m) => {
            Finding::pass(CHECK, format!("{git_version} ({supported})"))
        }
        ("1", Some(m)) if m > *SUPPORTED_MINORS.end() => Finding::warn(
            CHECK,
            format!("{git_version} is newer than the versions tested ({supported})"),
            "it likely works; report anything that does not",
        ),
        _ => Finding::fail(
            CHECK,
            format!("{git_version} is not supported ({supported})"),
            "upgrade the cluster (the CRDs use CEL validation rules and selectable fields)",
        ),
    }
}

/// The CRDs the controller needs: installed, established, and with the schema this binary
/// generates (a CRD left from an older release is named as stale).
pub async fn crds(client: &Client, scope: &Scope) -> Vec<Finding> {
    let mut wanted = vec![EnvironmentAccountConnection::crd()];
    if scope.account_mappings {
        wanted.push(AccountMapping::crd());
    }
    if scope.acceptance_policies {
        wanted.push(ConnectionAcceptancePolicy::crd());
    }
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let mut found = Vec::new();
    for generated in wanted {
        let name = generated.metadata.name.clone().unwrap_or_default();
        let installed = api.get_opt(&name).await;
        found.push(judge_crd(&name, &generated, installed));
    }
    found
}

const APPLY_CRDS: &str = "kubectl apply --server-side -f crds/ (from this release), or `eac-controller crd | kubectl apply --server-side -f -`; the Helm chart installs them on install but not on upgrade";

/// The verdict on one CRD as the API server holds it.
pub fn judge_crd(
    name: &str,
    generated: &CustomResourceDefinition,
    installed: Result<Option<CustomResourceDefinition>, kube::Error>,
) -> Finding {
    let check = format!("CRD {name}");
    let installed = match installed {
        Err(e) => {
            return Finding::fail(
                check,
                format!("cannot be read: {e}"),
                "let the controller's identity get customresourcedefinitions, or run the check as a cluster admin",
            );
        }
        Ok(None) => return Finding::fail(check, "not installed", APPLY_CRDS),
        Ok(Some(crd)) => crd,
    };
    let established = installed
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| {
            c.iter()
                .any(|c| c.type_ == "Established" && c.status == "True")
        });
    if !established {
        return Finding::fail(
            check,
            "installed but not established (its names conflict, or the API server has not served it yet)",
            format!("kubectl describe crd {name}"),
        );
    }
    let stale: Vec<String> = generated
        .spec
        .versions
        .iter()
        .filter_map(|want| {
            let have = installed.spec.versions.iter().find(|v| v.name == want.name);
            match have {
                None => Some(format!("{} (not served)", want.name)),
                Some(have) => first_difference(
                    &normalized(&have.schema).unwrap_or_default(),
                    &normalized(&want.schema).unwrap_or_default(),
                    "",
                )
                .map(|at| format!("{} (first at {at})", want.name)),
            }
        })
        .collect();
    if !stale.is_empty() {
        return Finding::fail(
            check,
            format!(
                "stale: the installed schema differs from the one this binary generates (a CRD from another release): {}",
                stale.join(", ")
            ),
            APPLY_CRDS,
        );
    }
    Finding::pass(check, "installed, established, schema current")
}

/// Where two JSON values first differ, as a JSON pointer (`/` for the whole value).
fn first_difference(
    have: &serde_json::Value,
    want: &serde_json::Value,
    at: &str,
) -> Option<String> {
    use serde_json::Value;
    match (have, want) {
        (Value::Object(h), Value::Object(w)) => {
            let mut keys: Vec<&String> = h.keys().chain(w.keys()).collect();
            keys.sort();
            keys.dedup();
            keys.into_iter().find_map(|k| {
                let path = format!("{at}/{k}");
                match (h.get(k), w.get(k)) {
                    (Some(a), Some(b)) => first_difference(a, b, &path),
                    _ => Some(path),
                }
            })
        }
        (Value::Array(h), Value::Array(w)) if h.len() == w.len() => h
            .iter()
            .zip(w)
            .enumerate()
            .find_map(|(i, (a, b))| first_difference(a, b, &format!("{at}/{i}"))),
        (a, b) if a == b => None,
        _ => Some(if at.is_empty() {
            "/".to_string()
        } else {
            at.to_string()
        }),
    }
}

/// The schema's plain-bool members, which Go's `omitempty` drops when false.
const FALSE_OMITTED: [&str; 6] = [
    "exclusiveMaximum",
    "exclusiveMinimum",
    "uniqueItems",
    "nullable",
    "x-kubernetes-embedded-resource",
    "x-kubernetes-int-or-string",
];

/// A schema as JSON, with what the API server does not keep (empty lists and maps, nulls, the
/// plain bools that are false: Go's `omitempty`) left out on both sides, so a schema read back
/// compares equal to the one applied.
fn normalized<T: serde::Serialize>(schema: &T) -> Option<serde_json::Value> {
    fn strip(v: serde_json::Value) -> Option<serde_json::Value> {
        use serde_json::Value;
        match v {
            Value::Null => None,
            Value::Object(map) => {
                let map: serde_json::Map<String, Value> = map
                    .into_iter()
                    .filter(|(k, v)| {
                        !(FALSE_OMITTED.contains(&k.as_str()) && *v == Value::Bool(false))
                    })
                    .filter_map(|(k, v)| strip(v).map(|v| (k, v)))
                    .collect();
                (!map.is_empty()).then_some(Value::Object(map))
            }
            Value::Array(items) => {
                let items: Vec<Value> = items.into_iter().filter_map(strip).collect();
                (!items.is_empty()).then_some(Value::Array(items))
            }
            other => Some(other),
        }
    }
    serde_json::to_value(schema).ok().and_then(strip)
}

/// One permission the controller needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Permission {
    pub verb: &'static str,
    pub group: &'static str,
    pub resource: &'static str,
    pub subresource: Option<&'static str>,
    /// None: cluster-wide (or a cluster-scoped resource).
    pub namespace: Option<String>,
    pub name: Option<String>,
}

impl Permission {
    fn new(verb: &'static str, group: &'static str, resource: &'static str) -> Permission {
        Permission {
            verb,
            group,
            resource,
            subresource: None,
            namespace: None,
            name: None,
        }
    }

    fn sub(mut self, subresource: &'static str) -> Permission {
        self.subresource = Some(subresource);
        self
    }

    fn within(mut self, namespace: Option<&str>) -> Permission {
        self.namespace = namespace.map(str::to_string);
        self
    }

    fn named(mut self, name: Option<&str>) -> Permission {
        self.name = name.map(str::to_string);
        self
    }

    /// What the resource is called in `kubectl auth can-i` and in a Role.
    fn resource_name(&self) -> String {
        let group = if self.group.is_empty() {
            String::new()
        } else {
            format!(".{}", self.group)
        };
        match self.subresource {
            Some(sub) => format!("{}{group}/{sub}", self.resource),
            None => format!("{}{group}", self.resource),
        }
    }

    /// Where: a namespace, or the cluster.
    fn place(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("namespace {ns}"),
            None => "cluster-wide".to_string(),
        }
    }
}

/// Every permission the controller needs with these flags (what the chart's RBAC grants).
pub fn needed(scope: &Scope) -> Vec<Permission> {
    const GROUP: &str = "proton.eac.dev";
    let ns = scope.namespace.as_deref();
    let mut all = Vec::new();
    for verb in ["get", "list", "watch", "patch"] {
        all.push(Permission::new(verb, GROUP, "environmentaccountconnections").within(ns));
    }
    all.push(
        Permission::new("patch", GROUP, "environmentaccountconnections")
            .sub("status")
            .within(ns),
    );
    all.push(Permission::new("create", "events.k8s.io", "events").within(ns));
    if scope.namespace_opt_in {
        all.push(Permission::new("get", "", "namespaces").named(ns));
    }
    if scope.account_mappings {
        for verb in ["list", "watch"] {
            all.push(Permission::new(verb, GROUP, "accountmappings"));
        }
        all.push(Permission::new("patch", GROUP, "accountmappings").sub("status"));
        for verb in ["list", "watch"] {
            all.push(Permission::new(verb, "", "namespaces"));
        }
    }
    if scope.acceptance_policies {
        for verb in ["get", "list", "watch"] {
            all.push(Permission::new(verb, GROUP, "connectionacceptancepolicies").within(ns));
        }
        all.push(
            Permission::new("patch", GROUP, "connectionacceptancepolicies")
                .sub("status")
                .within(ns),
        );
    }
    if let Some((namespace, name)) = &scope.lease {
        all.push(
            Permission::new("create", "coordination.k8s.io", "leases").within(Some(namespace)),
        );
        for verb in ["get", "update"] {
            all.push(
                Permission::new(verb, "coordination.k8s.io", "leases")
                    .within(Some(namespace))
                    .named(Some(name)),
            );
        }
    }
    all
}

/// Asks the API server, for each permission, whether the controller's identity has it
/// (SelfSubjectAccessReview: nothing is changed). One line per resource and place.
pub async fn access(client: &Client, scope: &Scope) -> Vec<Finding> {
    let api: Api<SelfSubjectAccessReview> = Api::all(client.clone());
    let mut answers = Vec::new();
    for permission in needed(scope) {
        let review = SelfSubjectAccessReview {
            spec: SelfSubjectAccessReviewSpec {
                resource_attributes: Some(ResourceAttributes {
                    verb: Some(permission.verb.to_string()),
                    group: Some(permission.group.to_string()),
                    resource: Some(permission.resource.to_string()),
                    subresource: permission.subresource.map(str::to_string),
                    namespace: permission.namespace.clone(),
                    name: permission.name.clone(),
                    ..ResourceAttributes::default()
                }),
                ..SelfSubjectAccessReviewSpec::default()
            },
            ..SelfSubjectAccessReview::default()
        };
        let answer = api
            .create(&PostParams::default(), &review)
            .await
            .map(|r| r.status.is_some_and(|s| s.allowed))
            .map_err(|e| e.to_string());
        answers.push((permission, answer));
    }
    judge_access(answers)
}

/// A permission and the API server's answer (allowed, or why it could not be asked).
pub type Answer = (Permission, Result<bool, String>);

/// Groups the answers by resource and place: one line each, naming what is missing.
pub fn judge_access(answers: Vec<Answer>) -> Vec<Finding> {
    let mut groups: Vec<(String, String, Vec<Answer>)> = Vec::new();
    for (permission, answer) in answers {
        let key = (permission.resource_name(), permission.place());
        match groups
            .iter_mut()
            .find(|(r, p, _)| (r, p) == (&key.0, &key.1))
        {
            Some((_, _, list)) => list.push((permission, answer)),
            None => groups.push((key.0, key.1, vec![(permission, answer)])),
        }
    }
    groups
        .into_iter()
        .map(|(resource, place, list)| {
            let check = format!("RBAC {resource} ({place})");
            let verbs = |keep: &dyn Fn(&Result<bool, String>) -> bool| {
                list.iter()
                    .filter(|(_, a)| keep(a))
                    .map(|(p, _)| p.verb)
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            if let Some((_, Err(e))) = list.iter().find(|(_, a)| a.is_err()) {
                return Finding::fail(
                    check,
                    format!("cannot ask the API server: {e}"),
                    "SelfSubjectAccessReview is allowed to every authenticated identity; check the API server and its authorizer",
                );
            }
            let missing = verbs(&|a| a == &Ok(false));
            if missing.is_empty() {
                Finding::pass(check, format!("allowed: {}", verbs(&|_| true)))
            } else {
                let (p, _) = &list[0];
                let namespace = p
                    .namespace
                    .as_deref()
                    .map(|ns| format!(" -n {ns}"))
                    .unwrap_or_default();
                Finding::fail(
                    check,
                    format!("not allowed: {missing}"),
                    format!(
                        "grant them to the controller's identity (the Helm chart's and deploy/'s RBAC do); see `kubectl auth can-i --list{namespace}` as that identity"
                    ),
                )
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::Verdict;

    fn scope() -> Scope {
        Scope {
            namespace: Some("team-a".into()),
            account_mappings: false,
            acceptance_policies: false,
            namespace_opt_in: true,
            lease: None,
            region: "us-east-1".into(),
        }
    }

    #[test]
    fn versions_in_range_pass_newer_warn_older_fail() {
        assert_eq!(
            verdict_on_version("1", "36", "v1.36.2").verdict,
            Verdict::Pass
        );
        assert_eq!(
            verdict_on_version("1", "33+", "v1.33.1").verdict,
            Verdict::Pass
        );
        assert_eq!(
            verdict_on_version("1", "38", "v1.38.0").verdict,
            Verdict::Warn
        );
        assert_eq!(
            verdict_on_version("1", "32", "v1.32.9").verdict,
            Verdict::Fail
        );
        assert_eq!(
            verdict_on_version("2", "0", "v2.0.0").verdict,
            Verdict::Fail
        );
    }

    #[test]
    fn the_permissions_follow_the_flags() {
        let base = needed(&scope());
        assert!(base.iter().all(|p| p.resource != "accountmappings"));
        assert!(
            base.iter()
                .any(|p| p.resource == "namespaces" && p.name.as_deref() == Some("team-a"))
        );
        assert!(
            base.iter()
                .filter(|p| p.resource == "environmentaccountconnections")
                .all(|p| p.namespace.as_deref() == Some("team-a"))
        );
        let all = needed(&Scope {
            namespace: None,
            account_mappings: true,
            acceptance_policies: true,
            lease: Some(("eac".into(), "eac-controller".into())),
            ..scope()
        });
        for resource in ["accountmappings", "connectionacceptancepolicies", "leases"] {
            assert!(all.iter().any(|p| p.resource == resource), "{resource}");
        }
        assert!(
            all.iter()
                .filter(|p| p.resource == "environmentaccountconnections")
                .all(|p| p.namespace.is_none()),
            "cluster-wide without --namespace"
        );
    }

    #[test]
    fn missing_permissions_are_named_per_resource() {
        let p = |verb| Permission::new(verb, "proton.eac.dev", "environmentaccountconnections");
        let found = judge_access(vec![
            (p("get"), Ok(true)),
            (p("patch"), Ok(false)),
            (
                Permission::new("create", "events.k8s.io", "events"),
                Ok(true),
            ),
        ]);
        assert_eq!(found.len(), 2);
        assert_eq!(found[0].verdict, Verdict::Fail);
        assert_eq!(found[0].detail, "not allowed: patch");
        assert!(
            found[0]
                .check
                .contains("environmentaccountconnections.proton.eac.dev (cluster-wide)")
        );
        assert_eq!(found[1].verdict, Verdict::Pass);
    }

    fn strip_empty_required(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(map) => {
                map.retain(|_, v| !matches!(v, serde_json::Value::Array(a) if a.is_empty()));
                map.values_mut().for_each(strip_empty_required);
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(strip_empty_required),
            _ => {}
        }
    }

    #[test]
    fn a_crd_is_judged_missing_unestablished_stale_or_current() {
        let generated = EnvironmentAccountConnection::crd();
        let name = "environmentaccountconnections.proton.eac.dev";
        assert_eq!(judge_crd(name, &generated, Ok(None)).verdict, Verdict::Fail);
        let mut installed = generated.clone();
        assert!(
            judge_crd(name, &generated, Ok(Some(installed.clone())))
                .detail
                .contains("not established")
        );
        installed.status = serde_json::from_value(serde_json::json!({
            "conditions": [{"type": "Established", "status": "True", "reason": "InitialNamesAccepted", "message": ""}]
        }))
        .ok();
        assert_eq!(
            judge_crd(name, &generated, Ok(Some(installed.clone()))).verdict,
            Verdict::Pass
        );
        // Go's omitempty drops empty lists: a schema read back without them is still current.
        let mut read_back = serde_json::to_value(&installed).unwrap();
        strip_empty_required(&mut read_back);
        let read_back: CustomResourceDefinition = serde_json::from_value(read_back).unwrap();
        assert_eq!(
            judge_crd(name, &generated, Ok(Some(read_back))).verdict,
            Verdict::Pass
        );
        let mut stale = installed;
        if let Some(schema) = stale.spec.versions[0].schema.as_mut() {
            schema.open_api_v3_schema = None;
        }
        let finding = judge_crd(name, &generated, Ok(Some(stale)));
        assert_eq!(finding.verdict, Verdict::Fail);
        assert!(finding.detail.starts_with("stale"), "{}", finding.detail);
    }
}
