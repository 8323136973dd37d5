//! The `AccountMapping` resource: which IAM role the resources of which namespaces act with.
//!
//! Cluster-scoped and meant for the cluster admin: a namespace tenant must not be able to pick the
//! account their connections are made in. The chart grants tenants no access to it.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::{CustomResource, CustomResourceExt, KubeSchema};
use serde::{Deserialize, Serialize};

/// Maps namespaces (by label) to an IAM role in an environment account.
///
/// The controller reconciles every `EnvironmentAccountConnection` in a matching namespace with
/// temporary credentials of this role (STS AssumeRole, cached and refreshed before they expire),
/// so one controller serves many environment accounts. A namespace matched by no mapping uses
/// the controller's own credentials; one matched by two is refused (nothing is done in AWS).
#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
#[kube(
    group = "proton.eac.dev",
    version = "v1alpha1",
    kind = "AccountMapping",
    plural = "accountmappings",
    singular = "accountmapping",
    shortname = "eacmap",
    category = "proton",
    cel,
    status = "AccountMappingStatus",
    doc = "Maps namespaces to the IAM role whose account their EnvironmentAccountConnections are made in. Cluster-scoped: for the cluster admin.",
    printcolumn = r#"{"name":"Account","type":"string","jsonPath":".status.accountId"}"#,
    printcolumn = r#"{"name":"Role","type":"string","jsonPath":".spec.roleArn"}"#,
    printcolumn = r#"{"name":"Namespaces","type":"integer","jsonPath":".status.namespaceCount"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Region","type":"string","jsonPath":".spec.region"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct AccountMappingSpec {
    /// The namespaces whose resources act with this role (`matchLabels` / `matchExpressions`,
    /// as everywhere in Kubernetes). `{}` selects every namespace.
    #[x_kube(validation = Rule::new("!has(self.matchExpressions) || self.matchExpressions.all(e, e.operator in ['In', 'NotIn', 'Exists', 'DoesNotExist'])").message("matchExpressions operators are In, NotIn, Exists or DoesNotExist"))]
    #[x_kube(validation = Rule::new("!has(self.matchExpressions) || self.matchExpressions.all(e, (e.operator in ['In', 'NotIn']) == (has(e.values) && size(e.values) > 0))").message("In and NotIn need values; Exists and DoesNotExist take none"))]
    pub namespace_selector: LabelSelector,

    /// IAM role to assume, e.g. `arn:aws:iam::444455556666:role/eac-controller`. Its account is
    /// the environment account of the connections made with it. Its trust policy must allow the
    /// controller's own identity (e.g. its IRSA role) to assume it.
    #[schemars(
        length(min = 20, max = 2048),
        regex(
            pattern = r"^arn:(aws|aws-cn|aws-us-gov):iam::\d{12}:role/([\w+=,.@-]{1,512}[/:])*([\w+=,.@-]{1,64})$"
        )
    )]
    pub role_arn: String,

    /// External ID the role's trust policy requires, if any (2-1224 characters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 2, max = 1224), regex(pattern = r"^[\w+=,.@:/-]*$"))]
    pub external_id: Option<String>,

    /// Region of new connections in these namespaces whose spec names none (instead of the
    /// controller's `--region`). Existing connections stay where they were pinned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 32), regex(pattern = r"^[a-z]{2}(-[a-z]+)+-\d$"))]
    pub region: Option<String>,
}

/// What the controller sees of a mapping, written by the controller.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AccountMappingStatus {
    /// The account of the role: where the connections of the selected namespaces are made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account_id: Option<String>,
    /// How many namespaces the selector selects now.
    #[serde(default)]
    // kube-apiserver warns on a format it does not know (`uint32`, `uint64`) when the CRD is
    // applied; int64 is one it knows, and `minimum: 0` stays.
    #[schemars(extend("format" = "int64"))]
    pub namespace_count: u32,
    /// Up to 20 of them, sorted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
    /// Namespaces another mapping selects too: their resources get no credentials until the
    /// selectors are disjoint (up to 20, sorted).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub overlapping: Vec<String>,
    /// `Ready`: True when the selector is valid and every namespace it selects is selected by
    /// no other mapping.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>,
}

/// The CRD as YAML.
pub fn crd_yaml() -> Result<String, serde_yaml::Error> {
    serde_yaml::to_string(&AccountMapping::crd())
}
